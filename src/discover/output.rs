//! The `.circuit` file a discovery writes: the input file's settings (paths rewritten to be
//! relative to the output's folder), then the found circuit, heads grouped by layer, each kept
//! component's score and exact cost of removal as a trailing comment, and
//! `expect faithfulness >= F`. The text is put through `circuit fmt`'s formatter, and
//! [`verify`] re-resolves it and checks it compiles to the very plan that was evaluated.

use std::collections::BTreeMap;
use std::path::{Component as PathComponent, Path, PathBuf};

use super::candidates::{downstream_rank, upstream_rank, Candidate};
use super::error::DiscoverError;
use super::Discovery;
use crate::attribute::{Component, Granularity};
use crate::measure::Session;
use crate::resolve::bound::{Downstream, HeadId, Upstream};
use crate::resolve::{resolve_source, RealEnvironment, ResolveOptions};
use crate::syntax::ast::{DatasetExpr, File, ItemKind, Trivia};

/// The name of the circuit a discovery writes.
pub const FOUND: &str = "found";

/// The file's text. `input` is the input `.circuit` file's text and folder; `out_dir` the
/// folder the output is written to (paths in settings are rewritten relative to it).
pub fn circuit_file(
    discovery: &Discovery,
    input_text: &str,
    input_dir: &Path,
    out_dir: &Path,
    command: &str,
) -> miette::Result<String> {
    let settings = settings_text(input_text, input_dir, out_dir)?;
    let mut text = String::new();
    for line in header(discovery, command) {
        text.push_str(&format!("# {line}\n"));
    }
    text.push_str(&settings);
    text.push('\n');
    text.push_str(&circuit_text(discovery));
    crate::syntax::format_source("found.circuit", &text).map_err(miette::Report::new)
}

fn header(d: &Discovery, command: &str) -> Vec<String> {
    let mut lines = vec![
        format!("Found by `{command}`."),
        format!(
            "{} candidates ({}), ranked by {}; {}",
            d.candidates.len(),
            d.granularity.name(),
            d.rank.name(),
            match d.prefix_k {
                Some(k) => format!(
                    "the top {k} reach faithfulness {:.4};",
                    d.prefix_faithfulness
                ),
                None => format!(
                    "target {} out of reach, the best prefix evaluated reaches {:.4};",
                    crate::report::num(d.target),
                    d.prefix_faithfulness
                ),
            }
        ),
        format!(
            "pruned from the output backwards to {} components: faithfulness {:.4}.",
            d.found.len(),
            d.faithfulness
        ),
        format!(
            "{} exact evaluations{}; curve CPR {:.4}, CMD {:.4}.",
            d.evaluations,
            d.single_ablations
                .map_or(String::new(), |n| format!(" (after {n} single ablations)")),
            d.curve.cpr,
            d.curve.cmd
        ),
        format!(
            "Comments: the {} score{} and the exact cost of removal",
            d.rank.name(),
            if d.rank.in_metric_units() {
                " in faithfulness units"
            } else {
                ""
            }
        ),
        "(faithfulness of `found` minus that without the component).".to_string(),
    ];
    if d.always.iter().any(|i| d.found.contains(i)) {
        lines.push(format!(
            "`unscored`: {} gives MLPs no score; they were in every prefix.",
            d.rank.name()
        ));
    }
    lines
}

/// The settings items of the input file, formatted, with file paths relative to `out_dir`.
fn settings_text(input_text: &str, input_dir: &Path, out_dir: &Path) -> miette::Result<String> {
    let parsed =
        crate::syntax::parse_str("input.circuit", input_text).map_err(miette::Report::new)?;
    let rebase = |value: &str| -> String {
        let written = Path::new(value);
        if written.is_absolute() {
            return value.to_string();
        }
        let target = input_dir.join(written);
        relative_path(out_dir, &target)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| target.to_string_lossy().into_owned())
    };
    let mut items = Vec::new();
    for item in parsed.items {
        let mut item = item;
        match &mut item.kind {
            ItemKind::Model(lit) => {
                // A built-in name resolves without the file system; a folder is rebased.
                if !crate::model::builtin::is_builtin(&lit.value) {
                    lit.value = rebase(&lit.value);
                }
            }
            ItemKind::Dataset { source, .. } => {
                if let DatasetExpr::File(lit) = source {
                    lit.value = rebase(&lit.value);
                }
            }
            ItemKind::Reference { .. }
            | ItemKind::AblateNodes { .. }
            | ItemKind::AblateEdges { .. }
            | ItemKind::Metric(_)
            | ItemKind::Align(_) => {}
            ItemKind::Group { .. } | ItemKind::Circuit(_) => continue,
        }
        // Comments above a setting described the input's circuits; same-line ones stay.
        item.trivia = Trivia {
            trailing: item.trivia.trailing.take(),
            ..Trivia::default()
        };
        items.push(item);
    }
    let file = File {
        items,
        end_comments: Vec::new(),
        blank_before_end: false,
        crlf: false,
        span: 0..0,
    };
    Ok(crate::syntax::format_file(&file))
}

/// `to` relative to the folder `from`, lexically: both made absolute against the working
/// directory and `..` folded, symlinks *not* followed (a file that says `../../shared/x` means
/// the path as written, wherever a link in between points on this machine).
fn relative_path(from: &Path, to: &Path) -> Option<PathBuf> {
    let normal = |p: &Path| -> Option<Vec<std::ffi::OsString>> {
        let absolute = std::path::absolute(p).ok()?;
        let mut parts: Vec<std::ffi::OsString> = Vec::new();
        for c in absolute.components() {
            match c {
                PathComponent::ParentDir => {
                    parts.pop();
                }
                PathComponent::CurDir => {}
                other => parts.push(other.as_os_str().to_os_string()),
            }
        }
        Some(parts)
    };
    let (a, b) = (normal(from)?, normal(to)?);
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c);
    }
    Some(if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    })
}

/// A number in comments: four decimals, `-0.0000` written `0.0000`.
fn short(x: f64) -> String {
    let s = format!("{x:.4}");
    if s == "-0.0000" {
        "0.0000".to_string()
    } else {
        s
    }
}

fn score_comment(d: &Discovery, c: &Candidate) -> String {
    match c.score {
        Some(s) => {
            let s = if d.rank.in_metric_units() {
                s / (d.full - d.empty)
            } else {
                s
            };
            format!("score {}", short(s))
        }
        None => "unscored".to_string(),
    }
}

/// The `circuit found { ... }` block.
fn circuit_text(d: &Discovery) -> String {
    if d.granularity == Granularity::PathEdges {
        return path_circuit_text(d);
    }
    // Per layer: head node statements (one per head, its positions in token order), QK edges,
    // then the layer's MLP.
    let mut heads: BTreeMap<HeadId, Vec<usize>> = BTreeMap::new();
    let mut edges: BTreeMap<HeadId, Vec<usize>> = BTreeMap::new();
    let mut mlps: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in &d.found {
        let c = &d.candidates[i];
        match (&c.component, &c.key) {
            (Component::Head(h), None) => heads.entry(*h).or_default().push(i),
            (Component::Head(h), Some(_)) => edges.entry(*h).or_default().push(i),
            (Component::Mlp(l), _) => mlps.entry(*l).or_default().push(i),
            (Component::Path { .. }, _) => {}
        }
    }
    let by_query = |v: &mut Vec<usize>| {
        v.sort_by_key(|&i| {
            let c = &d.candidates[i];
            (
                d.positions.rank(&c.query),
                c.key.as_deref().map(|k| d.positions.rank(k)),
            )
        })
    };
    let node_line = |statement: String, members: &[usize]| statement_line(d, statement, members);
    let layers: std::collections::BTreeSet<usize> = heads
        .keys()
        .chain(edges.keys())
        .map(|h| h.layer)
        .chain(mlps.keys().copied())
        .collect();
    let at = |members: &[usize]| positions_text(d, members);
    let mut out = format!("circuit {FOUND} {{\n");
    for layer in layers {
        out.push_str(&format!("  # layer {layer}\n"));
        for (h, members) in heads.iter_mut().filter(|(h, _)| h.layer == layer) {
            by_query(members);
            out.push_str(&node_line(format!("{h} @ {}", at(members)), members));
        }
        for (_, members) in edges.iter_mut().filter(|(h, _)| h.layer == layer) {
            by_query(members);
            for &i in members.iter() {
                let c = &d.candidates[i];
                out.push_str(&node_line(c.circuit_text(&d.positions), &[i]));
            }
        }
        if let Some(members) = mlps.get_mut(&layer) {
            by_query(members);
            out.push_str(&node_line(
                format!("mlp {layer} @ {}", at(members)),
                members,
            ));
        }
    }
    out.push_str(&format!(
        "  expect faithfulness >= {}\n}}\n",
        expected_floor(d)
    ));
    out
}

/// A statement of the found circuit with its members' scores and costs as a trailing comment
/// (per position when it has several).
fn statement_line(d: &Discovery, statement: String, members: &[usize]) -> String {
    let notes: Vec<String> = members
        .iter()
        .map(|&i| {
            let c = &d.candidates[i];
            let at = if members.len() > 1 {
                format!("{}: ", d.positions.text(&c.query))
            } else {
                String::new()
            };
            let cost = short(d.costs.get(&i).copied().unwrap_or(f64::NAN));
            format!("{at}{}, cost {cost}", score_comment(d, c))
        })
        .collect();
    format!("  {statement}  # {}\n", notes.join("; "))
}

/// A statement's positions, in token order (`members` sorted so).
fn positions_text(d: &Discovery, members: &[usize]) -> String {
    let positions: Vec<String> = members
        .iter()
        .map(|&i| d.positions.text(&d.candidates[i].query))
        .collect();
    positions.join(", ")
}

/// The `edge-complete circuit found { ... }` block: one `edge FROM -> TO @ POSITIONS` line per
/// kept (upstream, input) pair, grouped by the layer of the input (the logits last), inputs in
/// forward order and, into one input, upstream components in forward order.
fn path_circuit_text(d: &Discovery) -> String {
    let n_layers = d.n_layers;
    type Key = ((usize, usize, usize), (usize, usize, usize));
    let mut by_input: BTreeMap<Key, (Upstream, Downstream, Vec<usize>)> = BTreeMap::new();
    for &i in &d.found {
        if let Component::Path { from, to } = d.candidates[i].component {
            let key = (downstream_rank(to, n_layers), upstream_rank(from));
            by_input
                .entry(key)
                .or_insert((from, to, Vec::new()))
                .2
                .push(i);
        }
    }
    let mut out = format!("edge-complete circuit {FOUND} {{\n");
    let mut section = None;
    for (from, to, members) in by_input.values_mut() {
        let heading = match to {
            Downstream::Head(h, _) => format!("into layer {}", h.layer),
            Downstream::Mlp(l) => format!("into layer {l}"),
            Downstream::Logits => "into the logits".to_string(),
        };
        if section.as_ref() != Some(&heading) {
            out.push_str(&format!("  # {heading}\n"));
            section = Some(heading);
        }
        members.sort_by_key(|&i| d.positions.rank(&d.candidates[i].query));
        let statement = format!("edge {from} -> {to} @ {}", positions_text(d, members));
        out.push_str(&statement_line(d, statement, members));
    }
    out.push_str(&format!(
        "  expect faithfulness >= {}\n}}\n",
        expected_floor(d)
    ));
    out
}

/// What the file expects: the target, or under `--best-effort` the faithfulness reached,
/// rounded down to three decimals (so that `circuit test` passes on the same numbers).
pub fn expected_floor(d: &Discovery) -> String {
    if d.reached {
        crate::report::num(d.target)
    } else {
        let floor = (d.faithfulness * 1000.0).floor() / 1000.0;
        format!("{floor:.3}")
    }
}

/// Re-resolves the written text (from `out_dir`) and checks that its circuit compiles, in this
/// session, to the plan of the circuit that was evaluated.
pub fn verify(
    session: &Session,
    discovery: &Discovery,
    text: &str,
    out_dir: &Path,
) -> miette::Result<()> {
    let resolved = resolve_source(
        "found.circuit",
        text,
        out_dir,
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .map_err(miette::Report::new)?;
    let written = resolved
        .file
        .circuits
        .iter()
        .find(|c| c.name == FOUND)
        .ok_or(DiscoverError::WrittenDiffers)?;
    let a = session.compile(written)?;
    let b = session.compile(&discovery.circuit)?;
    let s = &resolved.file.settings;
    let t = session.settings();
    let same_settings = (s.ablation, s.edge_ablation, s.scope, s.metric, s.alignment)
        == (t.ablation, t.edge_ablation, t.scope, t.metric, t.alignment);
    if a.content_key() != b.content_key() || !same_settings {
        return Err(DiscoverError::WrittenDiffers.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_rebased_lexically_without_following_links() {
        let rel = |from: &str, to: &str| relative_path(Path::new(from), Path::new(to)).unwrap();
        assert_eq!(
            rel(
                "/r/circuits/stories260K/found",
                "/r/circuits/stories260K/../../../shared/models/m"
            ),
            PathBuf::from("../../../../shared/models/m")
        );
        assert_eq!(rel("/r/a", "/r/a/d.jsonl"), PathBuf::from("d.jsonl"));
        assert_eq!(
            rel("/r/a/found", "/r/a/./d.jsonl"),
            PathBuf::from("../d.jsonl")
        );
        assert_eq!(rel("/r/a", "/r/a"), PathBuf::from("."));
    }
}
