//! Rendering results: text, JSON, markdown, diff, SVG pictures ([`svg`]) and HTML pages
//! ([`html`]).
//!
//! Every report states what was in force: the aggregation order, the ablation kind, the edge
//! ablation, the reference set, the scope, the metric, and the model and dataset hashes.

pub mod diff;
pub mod graph_json;
pub mod html;
pub mod png;
pub mod scores;
pub mod svg;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::measure::evaluate::Evaluation;
use crate::measure::file::{FileRun, Provenance};
use crate::measure::{
    mean, metric_name, IllConditioned, Quantiles, Scores, ALL_METRICS,
    ILL_CONDITIONED_STANDARD_ERRORS,
};
use crate::resolve::bound::{BoundCircuit, Metric, SettingName, Settings};

/// The sentence every report carries, because the order changes the number.
pub const AGGREGATION: &str =
    "metric averaged over prompts first, then normalized: (m(C) - m(empty)) / (m(full) - m(empty))";

/// The settings in force, as reports print them.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SettingsReport {
    pub metric: &'static str,
    pub ablation: &'static str,
    pub edge_ablation: &'static str,
    pub scope: &'static str,
    pub reference: String,
    pub alignment: &'static str,
    pub aggregation: &'static str,
}

impl SettingsReport {
    pub fn new(settings: &Settings, provenance: &Provenance) -> SettingsReport {
        SettingsReport {
            metric: metric_name(settings.metric),
            ablation: settings.ablation.name(),
            edge_ablation: settings.edge_ablation.name(),
            scope: settings.scope.name(),
            reference: format!(
                "{} ({} prompts)",
                provenance.reference, provenance.n_reference
            ),
            alignment: settings.alignment.name(),
            aggregation: AGGREGATION,
        }
    }
}

/// A metric's prompt means for the three runs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunMeans {
    pub full: f64,
    pub circuit: f64,
    pub empty: f64,
}

/// What a circuit contains, counted.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Contents {
    pub heads: usize,
    pub mlps: usize,
    pub qk_edges: usize,
    pub path_edges: usize,
}

/// One circuit's results.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CircuitReport {
    pub name: String,
    /// The file's metric.
    pub metric: &'static str,
    /// The file's metric for the three runs and the faithfulness that follows. Flattened, so the
    /// JSON keeps `full`, `circuit`, `empty`, `faithfulness`, `ratio`, `per_prompt_faithfulness`
    /// as fields of the circuit, in that order.
    #[serde(flatten)]
    pub scores: Scores,
    /// Every metric's means, for expectations and diffs.
    pub metrics: BTreeMap<&'static str, RunMeans>,
    pub contents: Contents,
}

/// How a report quotes what it prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Plain text: values as they are.
    Text,
    /// Markdown: paths and hashes in backticks.
    Markdown,
}

/// A whole file's report.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileReport {
    pub file: String,
    pub provenance: Provenance,
    pub settings: SettingsReport,
    pub notes: Vec<String>,
    pub circuits: Vec<CircuitReport>,
}

fn circuit_report(
    circuit: &BoundCircuit,
    evaluation: &Evaluation,
    metric: Metric,
) -> CircuitReport {
    let scores = evaluation
        .scores(&circuit.name, metric)
        .expect("every evaluated circuit has results");
    let per_circuit = evaluation
        .circuit(&circuit.name)
        .expect("every evaluated circuit has results");
    let metrics = ALL_METRICS
        .iter()
        .map(|&m| {
            (
                metric_name(m),
                RunMeans {
                    full: mean(&evaluation.full[&m]),
                    circuit: mean(&per_circuit[&m]),
                    empty: mean(&evaluation.empty[&m]),
                },
            )
        })
        .collect();
    CircuitReport {
        name: circuit.name.clone(),
        metric: metric_name(metric),
        scores,
        metrics,
        contents: Contents {
            heads: circuit.kept_heads().len(),
            mlps: circuit.mlps.len(),
            qk_edges: circuit.qk_edges.len(),
            path_edges: circuit.path_edges.len(),
        },
    }
}

impl FileReport {
    pub fn new(file: &str, settings: &Settings, run: &FileRun) -> FileReport {
        FileReport {
            file: file.to_string(),
            provenance: run.provenance.clone(),
            settings: SettingsReport::new(settings, &run.provenance),
            notes: run.notes.clone(),
            circuits: run
                .circuits
                .iter()
                .map(|c| circuit_report(c, &run.evaluation, settings.metric))
                .collect(),
        }
    }

    /// The settings block every rendering prints, as `(label, value)` rows: model and dataset
    /// with their hashes, the reference set, the ablation, the metric and the aggregation order.
    /// `style` decides how paths and hashes are quoted and whether alignment has its own row.
    pub fn setting_rows(&self, style: Style) -> Vec<(&'static str, String)> {
        let p = &self.provenance;
        let s = &self.settings;
        let code = |text: &str| match style {
            Style::Text => text.to_string(),
            Style::Markdown => format!("`{text}`"),
        };
        let mut rows = vec![
            (
                "model",
                format!(
                    "{} (weights sha256 {})",
                    code(&p.model),
                    code(short(&p.model_sha256))
                ),
            ),
            (
                "dataset",
                format!(
                    "{} ({} prompts, sha256 {})",
                    code(&p.dataset),
                    p.n_prompts,
                    code(short(&p.dataset_sha256))
                ),
            ),
            ("reference", s.reference.clone()),
        ];
        match style {
            Style::Text => rows.push((
                "ablation",
                format!(
                    "{} by {}, edges by {}, aligned by {}",
                    s.scope, s.ablation, s.edge_ablation, s.alignment
                ),
            )),
            Style::Markdown => {
                rows.push((
                    "ablation",
                    format!(
                        "{} by {}, edges by {}",
                        s.scope, s.ablation, s.edge_ablation
                    ),
                ));
                rows.push(("alignment", s.alignment.to_string()));
            }
        }
        rows.push(("metric", format!("{} at END", s.metric)));
        rows.push(("aggregation", s.aggregation.to_string()));
        if !p.overrides.is_empty() {
            let set: Vec<String> = p.overrides.iter().map(|o| format!("--set {o}")).collect();
            rows.push(("overridden", code(&set.join(" "))));
        }
        rows
    }

    /// Pretty JSON with a trailing newline. Deterministic: fields in declaration order, maps
    /// sorted, floats in shortest round-trip form.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a report serializes");
        text.push('\n');
        text
    }

    /// Plain-text tables, one per circuit.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.file);
        let rows = self.setting_rows(Style::Text);
        let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        for (label, value) in rows {
            let _ = writeln!(out, "  {label:<width$} {value}");
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        for c in &self.circuits {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "circuit {} ({} heads, {} mlps, {} qk edges, {} path edges)",
                c.name,
                c.contents.heads,
                c.contents.mlps,
                c.contents.qk_edges,
                c.contents.path_edges
            );
            let _ = writeln!(
                out,
                "  {:<12} {:>12} {:>12} {:>12}",
                "metric", "full", "circuit", "empty"
            );
            for (name, m) in &c.metrics {
                let marker = if *name == c.metric { "*" } else { " " };
                let _ = writeln!(
                    out,
                    "{marker} {:<12} {:>12} {:>12} {:>12}",
                    name,
                    num(m.full),
                    num(m.circuit),
                    num(m.empty)
                );
            }
            let _ = writeln!(
                out,
                "  faithfulness {}   ratio {}",
                opt(c.scores.faithfulness),
                opt(c.scores.ratio)
            );
            match &c.scores.per_prompt_faithfulness {
                Some(q) => {
                    let _ = writeln!(out, "  per prompt   {}", quantiles_text(q));
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  per prompt   undefined (full and empty agree on every prompt)"
                    );
                }
            }
            if let Some(warning) = &c.scores.ill_conditioned {
                let _ = writeln!(out, "  warning: {}", ill_conditioned_text(warning));
            }
        }
        out
    }

    /// A markdown section per file with one table row per circuit.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## `{}`\n", self.file);
        let _ = writeln!(out, "| setting | value |\n| --- | --- |");
        for (label, value) in self.setting_rows(Style::Markdown) {
            let _ = writeln!(out, "| {label} | {value} |");
        }
        let _ = writeln!(out);
        for note in &self.notes {
            let _ = writeln!(out, "> note: {note}\n");
        }
        let _ = writeln!(
            out,
            "| circuit | {m} full | {m} circuit | {m} empty | faithfulness | ratio | per-prompt min / median / max |",
            m = self.settings.metric
        );
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
        for c in &self.circuits {
            let quantiles = c
                .scores
                .per_prompt_faithfulness
                .as_ref()
                .map(|q| format!("{} / {} / {}", num(q.min), num(q.median), num(q.max)))
                .unwrap_or_else(|| "–".to_string());
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} | {} |",
                c.name,
                num(c.scores.full),
                num(c.scores.circuit),
                num(c.scores.empty),
                opt(c.scores.faithfulness),
                opt(c.scores.ratio),
                quantiles
            );
        }
        let warnings: Vec<_> = self
            .circuits
            .iter()
            .filter_map(|c| Some((&c.name, c.scores.ill_conditioned.as_ref()?)))
            .collect();
        if !warnings.is_empty() {
            let _ = writeln!(out);
        }
        for (name, warning) in warnings {
            let _ = writeln!(
                out,
                "> warning: `{name}`: {}\n",
                ill_conditioned_text(warning)
            );
        }
        out
    }
}

/// The ill-conditioned warning, the same words in text and markdown.
fn ill_conditioned_text(w: &IllConditioned) -> String {
    format!(
        "faithfulness is ill-conditioned: it divides by m(full) - m(empty) = {}, which is within \
         {} standard errors ({} each) of zero over the prompts, so its size and sign are noise; \
         read the per-prompt median, or use more prompts or a metric that separates full from empty",
        num(w.gap),
        ILL_CONDITIONED_STANDARD_ERRORS,
        num(w.gap_standard_error)
    )
}

/// Numbers in text and markdown: four decimals (JSON keeps full precision).
pub fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "undefined".to_string()
    }
}

/// A five-number summary as the reports print it: `min … q25 … median … q75 … max … (n = …)`.
pub fn quantiles_text(q: &Quantiles) -> String {
    format!(
        "min {}  q25 {}  median {}  q75 {}  max {}  (n = {})",
        num(q.min),
        num(q.q25),
        num(q.median),
        num(q.q75),
        num(q.max),
        q.n_prompts
    )
}

/// An optional number as reports write it: four decimals, or `undefined`.
pub fn opt(x: Option<f64>) -> String {
    x.map(num).unwrap_or_else(|| "undefined".to_string())
}

/// The first 12 hex digits of a sha256, as reports print hashes.
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
