//! `circuit scores`: the ranked table, the JSON, and the heat map of head × query slot
//! ([`heat_map`]).

use std::fmt::Write as _;

use super::svg::{escape, number, text_width};
use super::SettingsReport;
use crate::attribute::run::ScoreReport;
use crate::attribute::{Component, Entry, Method};
use crate::measure::metric_name;

/// The units sentence every score report carries.
fn units(report: &ScoreReport) -> String {
    if report.set.method == Method::Exact {
        format!(
            "score: exact {m}(component ablated alone) - {m}({base}), in {m} units; faithfulness units divide it by m(full) - m(empty) = {}",
            num(report.full - report.empty),
            m = metric_name(report.metric),
            base = if report.circuit.is_some() { "circuit" } else { "full" },
        )
    } else if report.set.method.in_metric_units() {
        let estimate = match &report.circuit {
            None => "{m}(component ablated alone) - {m}(full)".to_string(),
            Some(name) => format!("{{m}}({name} with the component ablated too) - {{m}}({name})"),
        };
        format!(
            "score: first-order estimate of {}, in {m} units; faithfulness units divide it by m(full) - m(empty) = {}",
            estimate.replace("{m}", metric_name(report.metric)),
            num(report.full - report.empty),
            m = metric_name(report.metric),
        )
    } else if report.set.method == Method::Attention {
        "score: attention weight A[q,k], averaged over the prompts that have the slot pair"
            .to_string()
    } else {
        "score: A[q,k] * |v[k] W_O|, averaged over the prompts that have the slot pair (no metric units)".to_string()
    }
}

/// `the full model` or `circuit NAME (its ablations in place)`.
fn relative_to(report: &ScoreReport) -> String {
    match &report.circuit {
        None => "the full model".to_string(),
        Some(name) => format!("circuit {name} (its ablations in place)"),
    }
}

fn num(x: f64) -> String {
    format!("{x:.4}")
}

fn method_text(method: Method) -> String {
    match method {
        Method::EapIg { steps } => format!("eap-ig (m = {steps})"),
        m => m.name().to_string(),
    }
}

/// The ranked table: the `top` scores by |score|.
pub fn to_text(report: &ScoreReport, settings: &SettingsReport, top: usize) -> String {
    let set = &report.set;
    let ranking = set.ranking();
    let shown = &ranking[..top.min(ranking.len())];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} scores of {}, relative to {}",
        method_text(set.method),
        set.granularity.name(),
        relative_to(report)
    );
    let _ = writeln!(
        out,
        "  {} prompts; metric {} (full {}, empty {}); ablation {} ({}); scope {}",
        set.n_prompts,
        settings.metric,
        num(report.full),
        num(report.empty),
        settings.ablation,
        settings.reference,
        settings.scope,
    );
    let _ = writeln!(out, "  {}", units(report));
    let _ = writeln!(
        out,
        "  ranked by |score|: top {} of {}",
        shown.len(),
        ranking.len()
    );
    out.push('\n');
    let names: Vec<String> = shown
        .iter()
        .map(|&i| set.entries[i].circuit_text())
        .collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(9).max(9);
    let metric_units = set.method.in_metric_units();
    let _ = write!(
        out,
        "{:>4}  {:<width$}  {:>10}",
        "rank", "component", "score"
    );
    if metric_units {
        let _ = write!(out, "  {:>12}", "faithfulness");
    }
    let _ = writeln!(out, "  {:>7}", "prompts");
    for (rank, (&i, name)) in shown.iter().zip(&names).enumerate() {
        let e = &set.entries[i];
        let _ = write!(out, "{:>4}  {:<width$}  {:>10.4}", rank + 1, name, e.score);
        if metric_units {
            match report.faithfulness_units(e.score) {
                Some(f) => {
                    let _ = write!(out, "  {f:>12.4}");
                }
                None => {
                    let _ = write!(out, "  {:>12}", "-");
                }
            }
        }
        let _ = writeln!(out, "  {:>7}", e.n_prompts);
    }
    out
}

#[derive(serde::Serialize)]
struct JsonScore<'a> {
    component: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    query: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    circuit: String,
    score: f64,
    faithfulness: Option<f64>,
    n_prompts: usize,
}

fn json_score<'a>(report: &ScoreReport, e: &'a Entry) -> JsonScore<'a> {
    let (kind, layer, head, component, to) = match e.component {
        Component::Head(h) => (
            if e.key.is_some() { "qk_edge" } else { "head" },
            Some(h.layer),
            Some(h.head),
            h.to_string(),
            None,
        ),
        Component::Mlp(l) => ("mlp", Some(l), None, format!("mlp {l}"), None),
        Component::Path { from, to } => (
            "path_edge",
            None,
            None,
            from.to_string(),
            Some(to.to_string()),
        ),
    };
    JsonScore {
        component,
        kind,
        layer,
        head,
        to,
        query: &e.query,
        key: e.key.as_deref(),
        circuit: e.circuit_text(),
        score: e.score,
        faithfulness: report.faithfulness_units(e.score),
        n_prompts: e.n_prompts,
    }
}

/// The JSON report, field by field in its order.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    method: &'static str,
    steps: Option<usize>,
    granularity: &'static str,
    relative_to: String,
    settings: &'a SettingsReport,
    provenance: &'a crate::measure::file::Provenance,
    n_prompts: usize,
    metric_full: f64,
    metric_empty: f64,
    units: String,
    slots: &'a [String],
    n_scores: usize,
    scores: ShownScores<'a>,
}

/// The shown scores, each made as it is serialized (none are held all at once).
struct ShownScores<'a> {
    report: &'a ScoreReport,
    shown: &'a [usize],
}

impl serde::Serialize for ShownScores<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entries = &self.report.set.entries;
        serializer.collect_seq(
            self.shown
                .iter()
                .map(|&i| json_score(self.report, &entries[i])),
        )
    }
}

/// Every score (or the `top` by |score|), ranked, with what it is relative to. Deterministic.
/// Serialized from typed structs, each score made as it is written, not through a
/// `serde_json::Value`: a `Value` of the 512,736 path-edge scores of GPT-2 small took 750 MB
/// more than the scores themselves (peak RSS of `circuit scores --format json` 3.2× the
/// weight bytes, against 1.7× for the text table).
pub fn to_json(report: &ScoreReport, settings: &SettingsReport, top: Option<usize>) -> String {
    let mut text = Vec::new();
    write_json(&mut text, report, settings, top).expect("writing to memory does not fail");
    String::from_utf8(text).expect("serde_json writes UTF-8")
}

/// [`to_json`], written into `out` as it is made (`circuit scores --format json` streams it into
/// its output file: the text of 512,736 path-edge scores is 136 MB).
pub fn write_json(
    out: &mut dyn std::io::Write,
    report: &ScoreReport,
    settings: &SettingsReport,
    top: Option<usize>,
) -> std::io::Result<()> {
    let set = &report.set;
    let ranking = set.ranking();
    let shown = &ranking[..top.unwrap_or(usize::MAX).min(ranking.len())];
    let steps = match set.method {
        Method::EapIg { steps } => Some(steps),
        _ => None,
    };
    let value = JsonReport {
        method: set.method.name(),
        steps,
        granularity: set.granularity.name(),
        relative_to: relative_to(report),
        settings,
        provenance: &report.provenance,
        n_prompts: set.n_prompts,
        metric_full: report.full,
        metric_empty: report.empty,
        units: units(report),
        slots: &set.slots,
        n_scores: ranking.len(),
        scores: ShownScores { report, shown },
    };
    serde_json::to_writer_pretty(&mut *out, &value).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

/// A diverging colour for `value` in `[-max, max]`: blue below 0, white at 0, red above.
fn diverging(value: f64, max: f64) -> String {
    let t = if max > 0.0 {
        (value / max).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    // White to #b2182b (positive) or #2166ac (negative).
    let (r, g, b) = if t >= 0.0 {
        (178.0, 24.0, 43.0)
    } else {
        (33.0, 102.0, 172.0)
    };
    let mix = |c: f64| (255.0 + (c - 255.0) * t.abs()).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(r), mix(g), mix(b))
}

/// One panel of the heat map: its title, its row labels and its cells (row, column, value).
type Panel = (String, Vec<String>, Vec<(usize, usize, f64)>);

/// `--svg`: node scores as a heat map, rows layer.head (then MLPs), columns query slots, a
/// diverging scale centred on 0, each cell's value in its `<title>`. For QK-edge scores, one
/// key × query panel per head among the `panels` heads with the largest |score|.
pub fn heat_map(report: &ScoreReport, title: &str, panels: usize) -> String {
    let set = &report.set;
    let slots = &set.slots;
    let is_edges = set.entries.iter().any(|e| e.key.is_some());
    // Panels: (row label, rows of cells); a cell is (row, column, value).
    let mut grids: Vec<Panel> = Vec::new();
    if is_edges {
        let mut by_head: std::collections::BTreeMap<Component, f64> = Default::default();
        for e in &set.entries {
            *by_head.entry(e.component).or_insert(0.0) += e.score.abs();
        }
        let mut heads: Vec<(Component, f64)> = by_head.into_iter().collect();
        heads.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (component, _) in heads.into_iter().take(panels) {
            let cells = set
                .entries
                .iter()
                .filter(|e| e.component == component)
                .filter_map(|e| {
                    let q = slots.iter().position(|s| *s == e.query)?;
                    let k = slots.iter().position(|s| Some(s) == e.key.as_ref())?;
                    Some((q, k, e.score))
                })
                .collect();
            grids.push((format!("head {}", component.name()), slots.clone(), cells));
        }
    } else {
        let mut rows: Vec<Component> = set.entries.iter().map(|e| e.component).collect();
        rows.dedup();
        let labels: Vec<String> = rows.iter().map(Component::name).collect();
        let cells = set
            .entries
            .iter()
            .filter_map(|e| {
                let r = rows.iter().position(|c| *c == e.component)?;
                let c = slots.iter().position(|s| *s == e.query)?;
                Some((r, c, e.score))
            })
            .collect();
        grids.push(("node scores".to_string(), labels, cells));
    }
    let max = set
        .entries
        .iter()
        .map(|e| e.score.abs())
        .fold(0.0, f64::max);
    let cell = 22.0;
    let font = 10.0;
    let row_label_width = grids
        .iter()
        .flat_map(|g| g.1.iter())
        .map(|l| text_width(l, font))
        .fold(40.0, f64::max)
        + 8.0;
    let col_label_height = slots
        .iter()
        .map(|s| text_width(s, font))
        .fold(20.0, f64::max)
        * 0.75
        + 10.0;
    let panel_width = row_label_width + cell * slots.len() as f64 + 20.0;
    let top = 58.0;
    let panel_height = |g: &Panel| 20.0 + col_label_height + cell * g.1.len() as f64 + 20.0;
    let height = top + grids.iter().map(panel_height).fold(0.0, f64::max) + 50.0;
    let width = (panel_width * grids.len() as f64).max(420.0) + 20.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}" font-family="sans-serif">"#,
        number(width),
        number(height),
        number(width),
        number(height)
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="38" font-size="11">{} scores of {} ({}), {} prompts; metric {}; colour scale ±{}</text>"#,
        escape(&method_text(set.method)),
        escape(set.granularity.name()),
        if is_edges {
            "rows: query slot, columns: key slot"
        } else {
            "rows: component, columns: query slot"
        },
        set.n_prompts,
        escape(metric_name(report.metric)),
        escape(&format!("{max:.4}")),
    );
    for (p, (name, rows, cells)) in grids.iter().enumerate() {
        let x0 = 10.0 + panel_width * p as f64;
        let y0 = top;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="12" font-weight="bold">{}</text>"#,
            number(x0),
            number(y0 + 12.0),
            escape(name)
        );
        let grid_x = x0 + row_label_width;
        let grid_y = y0 + 20.0 + col_label_height;
        for (c, slot) in slots.iter().enumerate() {
            let x = grid_x + cell * (c as f64 + 0.5);
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" font-size="{}" transform="rotate(-50 {} {})">{}</text>"#,
                number(x),
                number(grid_y - 4.0),
                number(font),
                number(x),
                number(grid_y - 4.0),
                escape(slot)
            );
        }
        let row_names: &[String] = if is_edges { slots } else { rows };
        for (r, label) in row_names.iter().enumerate() {
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" font-size="{}" text-anchor="end">{}</text>"#,
                number(grid_x - 4.0),
                number(grid_y + cell * (r as f64 + 0.7)),
                number(font),
                escape(label)
            );
        }
        for &(r, c, value) in cells {
            let _ = writeln!(
                svg,
                r##"<rect x="{}" y="{}" width="{}" height="{}" fill="{}" stroke="#ddd" stroke-width="0.5"><title>{}</title></rect>"##,
                number(grid_x + cell * c as f64),
                number(grid_y + cell * r as f64),
                number(cell),
                number(cell),
                diverging(value, max),
                escape(&format!(
                    "{} {} {}: {value:.6}",
                    name,
                    row_names[r],
                    if is_edges {
                        format!("key {}", slots[c])
                    } else {
                        format!("@ {}", slots[c])
                    }
                ))
            );
        }
    }
    // Legend: -max .. 0 .. +max.
    let ly = height - 30.0;
    for i in 0..=40 {
        let v = max * (i as f64 / 20.0 - 1.0);
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="5" height="10" fill="{}"/>"#,
            number(30.0 + 5.0 * i as f64),
            number(ly),
            diverging(v, max)
        );
    }
    for (i, text) in [
        (0, format!("{:.3}", -max)),
        (20, "0".to_string()),
        (40, format!("{max:.3}")),
    ] {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="9" text-anchor="middle">{}</text>"#,
            number(32.5 + 5.0 * i as f64),
            number(ly + 22.0),
            escape(&text)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
