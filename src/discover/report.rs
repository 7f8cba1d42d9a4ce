//! What `circuit discover` prints: the search, the curve, the found circuit (text), or the same
//! as JSON (fields in a fixed order, floats in shortest round-trip form).

use serde_json::{json, Value};

use super::Discovery;
use crate::measure::file::Provenance;
use crate::measure::metric_name;
use crate::report::{num, SettingsReport};

fn kept_rows(d: &Discovery) -> Vec<(String, Option<f64>, f64)> {
    let mut rows: Vec<(usize, String, Option<f64>, f64)> = d
        .found
        .iter()
        .map(|&i| {
            let c = &d.candidates[i];
            let score = c.score.map(|s| {
                if d.rank.in_metric_units() {
                    s / (d.full - d.empty)
                } else {
                    s
                }
            });
            (i, c.circuit_text(&d.positions), score, d.costs[&i])
        })
        .collect();
    rows.sort_by(|a, b| b.3.total_cmp(&a.3).then(a.0.cmp(&b.0)));
    rows.into_iter().map(|(_, t, s, c)| (t, s, c)).collect()
}

/// The text report; `circuit_text` is the found file's text (shown when no `-o` is given).
pub fn to_text(
    d: &Discovery,
    settings: &SettingsReport,
    provenance: &Provenance,
    file: &str,
    written: Option<&str>,
    circuit_text: &str,
) -> String {
    let mut out = format!("circuit discover {file}\n");
    out.push_str(&format!(
        "  model {} · dataset {} ({} prompts) · metric {}\n",
        provenance.model,
        provenance.dataset,
        provenance.n_prompts,
        metric_name(d.metric)
    ));
    out.push_str(&format!(
        "  ablate {} by {} · edges by {} · align by {} · reference {}\n",
        settings.scope,
        settings.ablation,
        settings.edge_ablation,
        settings.alignment,
        settings.reference
    ));
    let mut search = format!(
        "  {} candidates ({}), ranked by {}",
        d.candidates.len(),
        d.granularity.name(),
        d.rank.name()
    );
    if let Some(base) = &d.base {
        search.push_str(&format!(", inside `{base}`"));
    }
    out.push_str(&search);
    out.push('\n');
    let e = &d.excluded;
    if e.below_threshold > 0 {
        out.push_str(&format!(
            "  {} QK edges left out: mean attention below {}\n",
            e.below_threshold,
            num(d.attention_threshold.unwrap_or(0.0))
        ));
    }
    if e.outside_base > 0 {
        out.push_str(&format!(
            "  {} candidates left out: not kept by `{}`\n",
            e.outside_base,
            d.base.as_deref().unwrap_or("")
        ));
    }
    if e.unwritable > 0 {
        out.push_str(&format!(
            "  {} candidates left out: their slots cannot be written as positions ({})\n",
            e.unwritable,
            d.positions
                .unwritable
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !d.always.is_empty() {
        out.push_str(&format!(
            "  {} unscored candidates (MLPs under {}) in every prefix\n",
            d.always.len(),
            d.rank.name()
        ));
    }
    out.push_str(&format!(
        "\nfaithfulness against size (target {}):\n",
        num(d.target)
    ));
    out.push_str("  top %      k  faithfulness\n");
    for p in &d.curve.points {
        out.push_str(&format!(
            "  {:>5}  {:>5}  {:>12.4}\n",
            format!("{}", p.fraction * 100.0),
            p.k,
            p.faithfulness
        ));
    }
    out.push_str(&format!(
        "  CPR {:.4}  CMD {:.4}\n\n",
        d.curve.cpr, d.curve.cmd
    ));
    match d.prefix_k {
        Some(k) => out.push_str(&format!(
            "smallest prefix reaching {}: top {k}, faithfulness {:.4}\n",
            num(d.target),
            d.prefix_faithfulness
        )),
        None => out.push_str(&format!(
            "target {} out of reach (--best-effort): best prefix evaluated {:.4}\n",
            num(d.target),
            d.prefix_faithfulness
        )),
    }
    out.push_str(&format!(
        "pruned from the output backwards: {} components, faithfulness {:.4}\n",
        d.found.len(),
        d.faithfulness
    ));
    match d.single_ablations {
        Some(n) => out.push_str(&format!(
            "exact evaluations: {} (and {n} single ablations by the scan that ranked them)\n\n",
            d.evaluations
        )),
        None => out.push_str(&format!("exact evaluations: {}\n\n", d.evaluations)),
    }
    out.push_str(&format!(
        "kept, by exact cost of removal (score{}):\n",
        if d.rank.in_metric_units() {
            " in faithfulness units"
        } else {
            ""
        }
    ));
    for (text, score, cost) in kept_rows(d) {
        let score = score.map_or("unscored".to_string(), |s| format!("{s:.4}"));
        out.push_str(&format!("  {text:<28}  score {score:>9}  cost {cost:.4}\n"));
    }
    match written {
        Some(path) => out.push_str(&format!("\nwrote {path}\n")),
        None => {
            out.push('\n');
            out.push_str(circuit_text);
        }
    }
    out
}

/// The JSON report.
pub fn to_json(
    d: &Discovery,
    settings: &SettingsReport,
    provenance: &Provenance,
    file: &str,
    written: Option<&str>,
    circuit_text: &str,
) -> String {
    let kept: Vec<Value> = kept_rows(d)
        .into_iter()
        .map(|(text, score, cost)| json!({"component": text, "score": score, "cost": cost}))
        .collect();
    let curve: Vec<Value> = d
        .curve
        .points
        .iter()
        .map(|p| json!({"fraction": p.fraction, "k": p.k, "faithfulness": p.faithfulness}))
        .collect();
    let value = json!({
        "file": file,
        "settings": settings,
        "provenance": provenance,
        "rank": d.rank.name(),
        "granularity": d.granularity.name(),
        "target": d.target,
        "attention_threshold": d.attention_threshold,
        "base": d.base,
        "candidates": d.candidates.len(),
        "excluded": {
            "below_threshold": d.excluded.below_threshold,
            "outside_base": d.excluded.outside_base,
            "unwritable": d.excluded.unwritable,
        },
        "unscored": d.always.len(),
        "curve": curve,
        "cpr": d.curve.cpr,
        "cmd": d.curve.cmd,
        "prefix_k": d.prefix_k,
        "prefix_faithfulness": d.prefix_faithfulness,
        "reached": d.reached,
        "faithfulness": d.faithfulness,
        "components": d.found.len(),
        "kept": kept,
        "exact_evaluations": d.evaluations,
        "single_ablations": d.single_ablations,
        "written": written,
        "circuit_text": circuit_text,
    });
    let mut text = serde_json::to_string_pretty(&value).expect("JSON values serialize");
    text.push('\n');
    text
}
