//! What changed between two versions of a `.circuit` file: settings, and per circuit the heads,
//! positions, MLPs and edges added or removed, with the metric deltas.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{num, CircuitReport};
use crate::data::positions::{PositionItem, PositionSet};
use crate::resolve::bound::{BoundCircuit, BoundFile, PathEdge, QkEdge};

/// How a position set is written: `*` or `S1, END-1, S2..S4`.
pub fn positions_text(set: &PositionSet) -> String {
    match set {
        PositionSet::All => "*".to_string(),
        PositionSet::Items(items) => items
            .iter()
            .map(PositionItem::display_name)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn path_text(e: &PathEdge) -> String {
    let at = match &e.positions {
        PositionSet::All => String::new(),
        set => format!(" @ {}", positions_text(set)),
    };
    format!("edge {} -> {}{at}", e.from, e.to)
}

/// The statements a circuit amounts to, one line each, order-independent.
fn statements(c: &BoundCircuit) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (head, positions) in &c.heads {
        out.insert(format!("{head} @ {}", positions_text(positions)));
    }
    for (layer, positions) in &c.mlps {
        out.insert(format!("mlp {layer} @ {}", positions_text(positions)));
    }
    out.extend(c.qk_edges.iter().map(QkEdge::to_string));
    out.extend(c.path_edges.iter().map(path_text));
    out
}

/// One circuit's change.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CircuitChange {
    pub name: String,
    /// `added`, `removed`, `changed` or `unchanged`.
    pub status: &'static str,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Settings lines that differ, `(name, before, after)`.
pub fn settings_changes(a: &BoundFile, b: &BoundFile) -> Vec<(String, String, String)> {
    let (x, y) = (&a.settings, &b.settings);
    let mut out = Vec::new();
    let mut check = |name: &str, before: String, after: String| {
        if before != after {
            out.push((name.to_string(), before, after));
        }
    };
    check("model", x.model.display_name(), y.model.display_name());
    check(
        "dataset",
        crate::measure::file::dataset_name(&x.dataset),
        crate::measure::file::dataset_name(&y.dataset),
    );
    // The enum-valued settings compare by their debug names.
    macro_rules! check_by_debug {
        ($($name:literal => $field:ident),* $(,)?) => {
            $(check($name, format!("{:?}", x.$field), format!("{:?}", y.$field));)*
        };
    }
    check_by_debug!(
        "reference" => reference,
        "ablation" => ablation,
        "edge ablation" => edge_ablation,
        "scope" => scope,
        "metric" => metric,
        "alignment" => alignment,
    );
    out
}

/// Per circuit (names of both files, in the order of `b` then circuits only in `a`), the
/// statements added and removed.
pub fn circuit_changes(a: &BoundFile, b: &BoundFile) -> Vec<CircuitChange> {
    let mut out = Vec::new();
    for cb in &b.circuits {
        match a.circuits.iter().find(|ca| ca.name == cb.name) {
            None => out.push(CircuitChange {
                name: cb.name.clone(),
                status: "added",
                added: statements(cb).into_iter().collect(),
                removed: vec![],
            }),
            Some(ca) => {
                let (sa, sb) = (statements(ca), statements(cb));
                let added: Vec<String> = sb.difference(&sa).cloned().collect();
                let removed: Vec<String> = sa.difference(&sb).cloned().collect();
                let status = if added.is_empty() && removed.is_empty() {
                    "unchanged"
                } else {
                    "changed"
                };
                out.push(CircuitChange {
                    name: cb.name.clone(),
                    status,
                    added,
                    removed,
                });
            }
        }
    }
    for ca in &a.circuits {
        if !b.circuits.iter().any(|cb| cb.name == ca.name) {
            out.push(CircuitChange {
                name: ca.name.clone(),
                status: "removed",
                added: vec![],
                removed: statements(ca).into_iter().collect(),
            });
        }
    }
    out
}

/// A metric's change as reports write it: `0.1000 -> 0.2000 (+0.1000)`.
pub fn delta(before: Option<f64>, after: Option<f64>) -> String {
    match (before, after) {
        (Some(x), Some(y)) => format!("{} -> {} ({:+.4})", num(x), num(y), y - x),
        (None, Some(y)) => format!("(none) -> {}", num(y)),
        (Some(x), None) => format!("{} -> (none)", num(x)),
        (None, None) => "undefined".to_string(),
    }
}

/// The text of `circuit diff`: settings changes, then per circuit its statement changes and,
/// when both sides were evaluated, the metric deltas.
pub fn render(
    a_name: &str,
    b_name: &str,
    settings: &[(String, String, String)],
    changes: &[CircuitChange],
    before: &[CircuitReport],
    after: &[CircuitReport],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "--- {a_name}\n+++ {b_name}");
    for (name, x, y) in settings {
        let _ = writeln!(out, "setting {name}: {x} -> {y}");
    }
    for change in changes {
        let _ = writeln!(out, "\ncircuit {} ({})", change.name, change.status);
        for line in &change.removed {
            let _ = writeln!(out, "  - {line}");
        }
        for line in &change.added {
            let _ = writeln!(out, "  + {line}");
        }
        let b = before.iter().find(|r| r.name == change.name);
        let a = after.iter().find(|r| r.name == change.name);
        match (b, a) {
            (Some(b), Some(a)) => {
                let _ = writeln!(
                    out,
                    "  faithfulness {}",
                    delta(b.scores.faithfulness, a.scores.faithfulness)
                );
                let _ = writeln!(
                    out,
                    "  ratio        {}",
                    delta(b.scores.ratio, a.scores.ratio)
                );
                let _ = writeln!(
                    out,
                    "  {:<12} {}",
                    a.metric,
                    delta(Some(b.scores.circuit), Some(a.scores.circuit))
                );
            }
            (None, Some(a)) => {
                let _ = writeln!(out, "  faithfulness {}", delta(None, a.scores.faithfulness));
            }
            (Some(b), None) => {
                let _ = writeln!(out, "  faithfulness {}", delta(b.scores.faithfulness, None));
            }
            (None, None) => {}
        }
    }
    out
}
