//! Every fixture under tests/fixtures/{ok,err} against an insta snapshot of what the user
//! sees: the rendered diagnostics (no colour, 100 columns) and, for files that resolve, a
//! summary of the bound circuits and the formatted text. Span invariants are checked too.

mod language_support;

use std::path::{Path, PathBuf};

use circuit::data::positions::{PositionItem, PositionSet};
use circuit::resolve::bound::{BoundFile, ValueExpr};
use circuit::syntax::{format_file, parse, SourceFile};
use language_support::{check_spans, resolve_in};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "circuit"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn set(s: &PositionSet) -> String {
    match s {
        PositionSet::All => "*".to_string(),
        PositionSet::Items(items) => items
            .iter()
            .map(PositionItem::display_name)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn value(v: &ValueExpr) -> String {
    match v {
        ValueExpr::Number(x) => format!("{x}"),
        ValueExpr::Quantity { circuit, quantity } => match circuit {
            Some(c) => format!("{c}:{quantity:?}"),
            None => format!("{quantity:?}"),
        },
        ValueExpr::Add(a, b) => format!("({} + {})", value(a), value(b)),
        ValueExpr::Sub(a, b) => format!("({} - {})", value(a), value(b)),
        ValueExpr::Mul(a, b) => format!("({} * {})", value(a), value(b)),
        ValueExpr::Neg(a) => format!("-{}", value(a)),
    }
}

/// A compact, complete description of a bound file.
fn summary(file: &BoundFile) -> String {
    let s = &file.settings;
    let mut out = format!(
        "model: {}\ndataset: {:?}\nreference: {:?}\nablation: {:?}, edges: {:?}, scope: {:?}, metric: {:?}, alignment: {:?}\n",
        s.model.display_name(),
        s.dataset,
        s.reference,
        s.ablation,
        s.edge_ablation,
        s.scope,
        s.metric,
        s.alignment
    );
    for c in &file.circuits {
        let form = if c.edge_complete {
            " (edge-complete)"
        } else {
            ""
        };
        out.push_str(&format!("circuit {}{form}:\n", c.name));
        for (h, p) in &c.heads {
            out.push_str(&format!("  head {h} @ {}\n", set(p)));
        }
        for (l, p) in &c.mlps {
            out.push_str(&format!("  mlp {l} @ {}\n", set(p)));
        }
        for e in &c.qk_edges {
            out.push_str(&format!(
                "  qk {}: {} -> {}\n",
                e.head,
                e.keys.display_name(),
                e.queries.display_name()
            ));
        }
        for e in &c.path_edges {
            out.push_str(&format!(
                "  path {:?} -> {:?} @ {}\n",
                e.from,
                e.to,
                set(&e.positions)
            ));
        }
        for x in &c.expectations {
            out.push_str(&format!(
                "  expect `{}`: {} {:?} {}\n",
                x.text,
                value(&x.lhs),
                x.comparison,
                value(&x.rhs)
            ));
        }
    }
    out
}

fn relative_dir(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.parent()
        .unwrap()
        .strip_prefix(root)
        .unwrap()
        .display()
        .to_string()
}

fn run(kind: &str, path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let name = format!(
        "{}/{}",
        relative_dir(path),
        path.file_name().unwrap().to_str().unwrap()
    );
    let mut out = String::new();
    if let Ok(file) = parse(&SourceFile::new(name.clone(), text.clone())) {
        check_spans(&file, &text);
    }
    // Resolution runs with the crate root as working directory, so paths stay relative.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    match resolve_in(&relative_dir(path), &name, &text) {
        Ok(resolved) => {
            assert_eq!(kind, "ok", "{name} should not resolve");
            for d in &resolved.warnings.items {
                assert!(d.help.is_some(), "{} in {name} has no help line", d.code);
            }
            out.push_str("== diagnostics ==\n");
            out.push_str(&resolved.warnings.render_plain(100));
            out.push_str("== bound ==\n");
            out.push_str(&summary(&resolved.file));
            let formatted = format_file(&parse(&SourceFile::new(name.clone(), text)).unwrap());
            out.push_str("== formatted ==\n");
            out.push_str(&formatted);
        }
        Err(diagnostics) => {
            assert_eq!(
                kind,
                "err",
                "{name} should resolve:\n{}",
                diagnostics.render_plain(100)
            );
            assert!(diagnostics.has_errors());
            for d in &diagnostics.items {
                assert!(d.code.starts_with("circuit::"), "{}", d.code);
                if d.code.starts_with("circuit::resolve::") {
                    assert!(d.help.is_some(), "{} in {name} has no help line", d.code);
                }
                for label in &d.labels {
                    assert!(label.span.end <= text.len(), "label outside the file");
                }
            }
            out.push_str(&diagnostics.render_plain(100));
        }
    }
    out
}

#[test]
fn ok_fixtures_resolve_and_match_snapshots() {
    for path in fixtures("ok") {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        insta::assert_snapshot!(format!("ok__{stem}"), run("ok", &path));
    }
}

#[test]
fn err_fixtures_fail_and_match_snapshots() {
    for path in fixtures("err") {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        insta::assert_snapshot!(format!("err__{stem}"), run("err", &path));
    }
}
