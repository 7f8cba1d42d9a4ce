//! Shared helpers for the language tests: a fake environment and span checks.
#![allow(dead_code)]

use std::path::Path;

use circuit::data::DatasetSource;
use circuit::model::{ModelConfig, ModelSource};
use circuit::resolve::{resolve_source, Environment, ResolveOptions, Resolved};
use circuit::syntax::ast::*;
use circuit::syntax::Diagnostics;

/// Models come from committed config.json folders; datasets have hand-written label sets, so
/// snapshots do not depend on the data stage.
pub struct FakeEnvironment;

impl Environment for FakeEnvironment {
    fn model_config(&self, source: &ModelSource) -> Result<ModelConfig, String> {
        match source {
            ModelSource::Dir(dir) if !dir.is_dir() => {
                Err(format!("the model folder {} does not exist", dir.display()))
            }
            ModelSource::Dir(dir) => ModelConfig::from_dir(dir).map_err(|e| e.to_string()),
            ModelSource::Builtin(name) => Err(format!("no built-in model {name} in tests")),
        }
    }

    fn dataset_labels(&self, source: &DatasetSource) -> Result<Vec<String>, String> {
        match source {
            DatasetSource::Builtin { name, .. }
                if [
                    "seqcont.numerals",
                    "seqcont.number_words",
                    "seqcont.months",
                    "seqcont.days",
                    "seqcont.letters",
                ]
                .contains(&name.as_str()) =>
            {
                Ok(["S1", "S2", "S3", "S4"].map(String::from).to_vec())
            }
            DatasetSource::Builtin { name, .. } if name == "ioi" => {
                Ok(["IO", "S1", "S2"].map(String::from).to_vec())
            }
            DatasetSource::Builtin { name, .. } => {
                Err(format!("unknown built-in dataset `{name}`"))
            }
            DatasetSource::File(path) => {
                Err(format!("no JSONL datasets in tests ({})", path.display()))
            }
        }
    }
}

/// The committed GPT-2 small config folder, relative to the crate root.
pub const GPT2_SMALL: &str = "tests/fixtures/configs/gpt2-small";

/// Resolves text as if it were a file in `base_dir` (relative to the crate root).
pub fn resolve_in(base_dir: &str, name: &str, text: &str) -> Result<Resolved, Diagnostics> {
    resolve_source(
        name,
        text,
        Path::new(base_dir),
        &FakeEnvironment,
        &ResolveOptions::default(),
    )
}

fn inside(child: &Span, parent: &Span, what: &str) {
    assert!(
        parent.start <= child.start && child.end <= parent.end && child.start <= child.end,
        "{what} span {child:?} is not inside its parent {parent:?}"
    );
}

/// Every span lies in the file, and every child's span inside its parent's.
pub fn check_spans(file: &File, text: &str) {
    let whole = 0..text.len();
    inside(&file.span, &whole, "file");
    for c in &file.end_comments {
        inside(&c.span, &whole, "comment");
    }
    let trimmed = |span: &Span| {
        let slice = &text[span.clone()];
        assert!(
            !slice.ends_with(char::is_whitespace) && !slice.starts_with(char::is_whitespace),
            "span {span:?} has untrimmed whitespace: {slice:?}"
        );
    };
    for item in &file.items {
        inside(&item.span, &file.span, "item");
        trimmed(&item.span);
        if let ItemKind::Circuit(c) = &item.kind {
            c.body.iter().for_each(|st| trimmed(&st.span));
        }
        for c in item.trivia.leading.iter().chain(&item.trivia.trailing) {
            inside(&c.span, &whole, "comment");
            assert!(
                text[c.span.clone()].starts_with('#'),
                "comment span misses its #"
            );
        }
        let s = &item.span;
        match &item.kind {
            ItemKind::Model(lit) => inside(&lit.span, s, "string"),
            ItemKind::Dataset { name, source } => {
                inside(&name.span, s, "dataset name");
                match source {
                    DatasetExpr::File(lit) => inside(&lit.span, s, "path"),
                    DatasetExpr::Generator { name, params } => {
                        inside(&name.span, s, "generator");
                        for p in params {
                            inside(&p.span, s, "param");
                            inside(&p.key.span, &p.span, "param key");
                        }
                    }
                }
            }
            ItemKind::Reference { dataset, span, .. } => {
                inside(span, s, "reference");
                inside(&dataset.span, span, "reference dataset");
            }
            ItemKind::Group { name, heads } => {
                inside(&name.span, s, "group name");
                heads.iter().for_each(|h| check_atom(h, s));
            }
            ItemKind::Circuit(c) => {
                inside(&c.name.span, s, "circuit name");
                if let Some(b) = &c.base {
                    inside(&b.span, s, "base");
                }
                for st in &c.body {
                    inside(&st.span, s, "statement");
                    check_statement(st);
                    for c in st.trivia.leading.iter().chain(&st.trivia.trailing) {
                        assert!(text[c.span.clone()].starts_with('#'));
                    }
                }
            }
            _ => {}
        }
    }
    for pair in file.items.windows(2) {
        assert!(pair[0].span.end <= pair[1].span.start, "items overlap");
    }
}

fn check_atom(atom: &HeadsAtom, parent: &Span) {
    inside(&atom.span(), parent, "heads");
    if let HeadsAtom::Spec { layer, head, span } = atom {
        inside(&layer.span(), span, "layer");
        inside(&head.span(), span, "head");
    }
}

fn check_positions(p: &Positions, parent: &Span) {
    inside(&p.span(), parent, "positions");
    if let Positions::Items(items, span) = p {
        for item in items {
            check_item(item, span);
        }
    }
}

fn check_item(item: &PositionItem, parent: &Span) {
    inside(&item.span(), parent, "position item");
    match item {
        PositionItem::One(p) => check_position(p, &item.span()),
        PositionItem::Range(a, b, s) => {
            check_position(a, s);
            check_position(b, s);
        }
        PositionItem::UpTo(b, s) => check_position(b, s),
        PositionItem::Every(_) => {}
    }
}

fn check_position(p: &Position, parent: &Span) {
    inside(&p.span, parent, "position");
    if let Anchor::Label { name, .. } = &p.anchor {
        inside(&name.span, &p.span, "label");
    }
}

fn check_expr(e: &Expr, parent: &Span) {
    inside(&e.span(), parent, "expression");
    match e {
        Expr::Binary { lhs, rhs, span, .. } => {
            check_expr(lhs, span);
            check_expr(rhs, span);
        }
        Expr::Neg { operand, span } => check_expr(operand, span),
        Expr::Quantity {
            qualifier,
            name,
            span,
        } => {
            inside(&name.span, span, "quantity name");
            if let Some(q) = qualifier {
                inside(&q.span, span, "qualifier");
            }
        }
        Expr::Number { .. } => {}
    }
}

fn check_statement(st: &Statement) {
    let s = &st.span;
    match &st.kind {
        StatementKind::HeadNode { heads, positions } => {
            heads.iter().for_each(|h| check_atom(h, s));
            if let Some(p) = positions {
                check_positions(p, s);
            }
        }
        StatementKind::MlpNode { layers, positions } => {
            layers.iter().for_each(|l| inside(&l.span(), s, "layer"));
            if let Some(p) = positions {
                check_positions(p, s);
            }
        }
        StatementKind::QkEdge { heads, pairs } => {
            heads.iter().for_each(|h| check_atom(h, s));
            for p in pairs {
                inside(&p.span, s, "pair");
                check_item(&p.key, &p.span);
                check_item(&p.query, &p.span);
            }
        }
        StatementKind::PathEdge {
            from,
            to,
            positions,
        } => {
            from.iter().for_each(|c| inside(&c.span(), s, "component"));
            inside(&to.span(), s, "downstream");
            if let Some(p) = positions {
                check_positions(p, s);
            }
        }
        StatementKind::Drop(items) => items.iter().for_each(|c| inside(&c.span(), s, "component")),
        StatementKind::Expect { lhs, rhs, .. } => {
            check_expr(lhs, s);
            check_expr(rhs, s);
            assert!(lhs.span().end <= rhs.span().start);
        }
    }
}

/// Every model is GPT-2 small's shape, whatever the file names (for files using built-ins).
pub struct AnyModelEnvironment;

impl Environment for AnyModelEnvironment {
    fn model_config(&self, _source: &ModelSource) -> Result<ModelConfig, String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(GPT2_SMALL);
        ModelConfig::from_dir(&dir).map_err(|e| e.to_string())
    }
    fn dataset_labels(&self, source: &DatasetSource) -> Result<Vec<String>, String> {
        FakeEnvironment.dataset_labels(source)
    }
}

/// Resolves with [`AnyModelEnvironment`], panicking with the rendered diagnostics on failure.
pub fn resolve_ok(text: &str) -> Resolved {
    resolve_source(
        "t.circuit",
        text,
        Path::new("base"),
        &AnyModelEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_or_else(|d| panic!("does not resolve:\n{}", d.render_plain(100)))
}

/// Resolves with [`AnyModelEnvironment`], expecting failure.
pub fn resolve_err(text: &str) -> Diagnostics {
    match resolve_source(
        "t.circuit",
        text,
        Path::new("base"),
        &AnyModelEnvironment,
        &ResolveOptions::default(),
    ) {
        Ok(_) => panic!("should not resolve:\n{text}"),
        Err(d) => d,
    }
}
