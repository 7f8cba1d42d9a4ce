//! The canonical layout of a `.circuit` file (`circuit fmt`).
//!
//! One statement per line, two-space indentation inside circuits, single spaces around `=`,
//! `@`, `->`, `by` and comparison operators, `, ` between list items, no spaces inside
//! positions (`S1+1`), minimal parentheses in expressions. Comments are kept where
//! [`super::comments`] attached them; runs of blank lines collapse to one; a circuit is always
//! surrounded by blank lines. Formatting is idempotent and changes no syntax tree (up to spans).

use super::ast::*;
use super::diagnostic::{Diagnostics, SourceFile};

/// Formats a parsed file.
pub fn format_file(file: &File) -> String {
    let out = format_lf(file);
    if file.crlf {
        out.replace('\n', "\r\n")
    } else {
        out
    }
}

/// The canonical text with `\n` line breaks.
fn format_lf(file: &File) -> String {
    let mut out = String::new();
    for (i, item) in file.items.iter().enumerate() {
        if i > 0 && item.trivia.blank_before {
            out.push('\n');
        }
        for c in &item.trivia.leading {
            out.push_str(&c.text);
            out.push('\n');
        }
        match &item.kind {
            ItemKind::Circuit(circuit) => format_circuit(&mut out, circuit, &item.trivia),
            kind => {
                out.push_str(&item_line(kind));
                push_trailing(&mut out, &item.trivia);
            }
        }
    }
    if !file.end_comments.is_empty() {
        if file.blank_before_end && !file.items.is_empty() {
            out.push('\n');
        }
        for c in &file.end_comments {
            out.push_str(&c.text);
            out.push('\n');
        }
    }
    out
}

/// Parses and formats `text`.
pub fn format_source(name: &str, text: &str) -> Result<String, Diagnostics> {
    let file = super::parser::parse(&SourceFile::new(name, text))?;
    Ok(format_file(&file))
}

fn push_trailing(out: &mut String, trivia: &Trivia) {
    if let Some(c) = &trivia.trailing {
        out.push_str("  ");
        out.push_str(&c.text);
    }
    out.push('\n');
}

fn format_circuit(out: &mut String, circuit: &Circuit, trivia: &Trivia) {
    if circuit.edge_complete {
        out.push_str("edge-complete ");
    }
    out.push_str("circuit ");
    out.push_str(&circuit.name.name);
    if let Some(base) = &circuit.base {
        out.push_str(" extends ");
        out.push_str(&base.name);
    }
    out.push_str(" {");
    if let Some(c) = &circuit.open_comment {
        out.push_str("  ");
        out.push_str(&c.text);
    }
    out.push('\n');
    for (i, st) in circuit.body.iter().enumerate() {
        if i > 0 && st.trivia.blank_before {
            out.push('\n');
        }
        for c in &st.trivia.leading {
            out.push_str("  ");
            out.push_str(&c.text);
            out.push('\n');
        }
        out.push_str("  ");
        out.push_str(&statement_line(&st.kind));
        push_trailing(out, &st.trivia);
    }
    if !circuit.end_comments.is_empty() {
        if circuit.blank_before_end && !circuit.body.is_empty() {
            out.push('\n');
        }
        for c in &circuit.end_comments {
            out.push_str("  ");
            out.push_str(&c.text);
            out.push('\n');
        }
    }
    out.push('}');
    push_trailing(out, trivia);
}

/// One top-level statement other than a circuit, on one line.
pub fn item_line(kind: &ItemKind) -> String {
    match kind {
        ItemKind::Model(s) => format!("model {}", quoted(&s.value)),
        ItemKind::Dataset { name, source } => {
            let src = match source {
                DatasetExpr::File(s) => quoted(&s.value),
                DatasetExpr::Generator { name, params } if params.is_empty() => name.name.clone(),
                DatasetExpr::Generator { name, params } => {
                    let ps: Vec<String> = params
                        .iter()
                        .map(|p| format!("{} = {}", p.key.name, literal(&p.value)))
                        .collect();
                    format!("{}({})", name.name, ps.join(", "))
                }
            };
            format!("dataset {} = {src}", name.name)
        }
        ItemKind::Reference { dataset, part, .. } => match part {
            None => format!("reference {}", dataset.name),
            Some(ReferencePart::Corrupt) => format!("reference {}.corrupt", dataset.name),
            Some(ReferencePart::Clean) => format!("reference {}.clean", dataset.name),
        },
        ItemKind::AblateNodes { scope, method } => {
            let scope = match scope {
                ScopeKw::Heads => "heads",
                ScopeKw::HeadsAndMlps => "heads and mlps",
            };
            let method = match method {
                NodeMethod::Mean => "mean",
                NodeMethod::Zero => "zero",
                NodeMethod::Resample => "resample",
            };
            format!("ablate {scope} by {method}")
        }
        ItemKind::AblateEdges { method } => format!(
            "ablate edges by {}",
            match method {
                EdgeMethod::Mean => "mean",
                EdgeMethod::Knockout => "knockout",
            }
        ),
        ItemKind::Metric(m) => format!("metric {}", m.keyword()),
        ItemKind::Align(a) => format!(
            "align by {}",
            match a {
                AlignMode::Position => "position",
                AlignMode::Label => "label",
            }
        ),
        ItemKind::Group { name, heads } => format!("heads {} = {}", name.name, head_list(heads)),
        ItemKind::Circuit(c) => {
            let mut out = String::new();
            format_circuit(&mut out, c, &Trivia::default());
            out.trim_end().to_string()
        }
    }
}

/// One circuit statement, on one line, without indentation or comments.
pub fn statement_line(kind: &StatementKind) -> String {
    match kind {
        StatementKind::HeadNode { heads, positions } => {
            with_positions(head_list(heads), positions.as_ref())
        }
        StatementKind::MlpNode { layers, positions } => {
            let ls: Vec<String> = layers.iter().map(selector).collect();
            with_positions(format!("mlp {}", ls.join(", ")), positions.as_ref())
        }
        StatementKind::QkEdge { heads, pairs } => {
            let ps: Vec<String> = pairs
                .iter()
                .map(|p| format!("{} -> {}", position_item(&p.key), position_item(&p.query)))
                .collect();
            format!("edge {}: {}", head_list(heads), ps.join(", "))
        }
        StatementKind::PathEdge {
            from,
            to,
            positions,
        } => {
            let fs: Vec<String> = from.iter().map(component).collect();
            let to = match to {
                Downstream::HeadInput { heads, input, .. } => format!(
                    "{}.{}",
                    heads_atom(heads),
                    match input {
                        HeadInputKw::Q => "q",
                        HeadInputKw::K => "k",
                        HeadInputKw::V => "v",
                    }
                ),
                Downstream::Mlp(sel, _) => format!("mlp {}", selector(sel)),
                Downstream::Logits(_) => "logits".to_string(),
            };
            with_positions(
                format!("edge {} -> {to}", fs.join(", ")),
                positions.as_ref(),
            )
        }
        StatementKind::Drop(items) => {
            let is: Vec<String> = items.iter().map(component).collect();
            format!("drop {}", is.join(", "))
        }
        StatementKind::Expect {
            lhs,
            comparison,
            rhs,
        } => format!("expect {}", expectation_text(lhs, *comparison, rhs)),
    }
}

/// `lhs OP rhs` in canonical form (the text reports show for an expectation).
pub fn expectation_text(lhs: &Expr, comparison: CmpOp, rhs: &Expr) -> String {
    format!("{} {} {}", expr(lhs), comparison.symbol(), expr(rhs))
}

fn with_positions(head: String, positions: Option<&Positions>) -> String {
    match positions {
        None => head,
        Some(p) => format!("{head} @ {}", positions_text(p)),
    }
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

fn literal(l: &Literal) -> String {
    match l {
        Literal::Number(n) => n.clone(),
        Literal::Str(s) => quoted(s),
        Literal::Bool(b) => b.to_string(),
    }
}

pub fn selector(s: &Selector) -> String {
    match s {
        Selector::Index(i, _) => i.to_string(),
        Selector::Range(a, b, _) => format!("{a}..{b}"),
        Selector::All(_) => "*".to_string(),
    }
}

pub fn heads_atom(h: &HeadsAtom) -> String {
    match h {
        HeadsAtom::Spec { layer, head, .. } => format!("{}.{}", selector(layer), selector(head)),
        HeadsAtom::Group(id) => id.name.clone(),
    }
}

fn head_list(heads: &[HeadsAtom]) -> String {
    heads.iter().map(heads_atom).collect::<Vec<_>>().join(", ")
}

fn component(c: &Component) -> String {
    match c {
        Component::Heads(h) => heads_atom(h),
        Component::Mlp(sel, _) => format!("mlp {}", selector(sel)),
        Component::Embed(_) => "embed".to_string(),
    }
}

pub fn position(p: &Position) -> String {
    let anchor = match &p.anchor {
        Anchor::End => "END".to_string(),
        Anchor::Bos => "BOS".to_string(),
        Anchor::Label { name, first: true } => format!("first({})", name.name),
        Anchor::Label { name, first: false } => name.name.clone(),
    };
    match p.offset {
        0 => anchor,
        o => format!("{anchor}{o:+}"),
    }
}

pub fn position_item(item: &PositionItem) -> String {
    match item {
        PositionItem::One(p) => position(p),
        PositionItem::Range(a, b, _) => format!("{}..{}", position(a), position(b)),
        PositionItem::UpTo(b, _) => format!("..{}", position(b)),
        PositionItem::Every(_) => "*".to_string(),
    }
}

pub fn positions_text(p: &Positions) -> String {
    match p {
        Positions::All(_) => "*".to_string(),
        Positions::Items(items, _) => items
            .iter()
            .map(position_item)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn precedence(e: &Expr) -> u8 {
    match e {
        Expr::Binary {
            op: BinOp::Add | BinOp::Sub,
            ..
        } => 1,
        Expr::Binary { op: BinOp::Mul, .. } => 2,
        Expr::Neg { .. } => 3,
        Expr::Number { .. } | Expr::Quantity { .. } => 4,
    }
}

/// An expression with the parentheses its tree needs and no others.
pub fn expr(e: &Expr) -> String {
    match e {
        Expr::Number { text, .. } => text.clone(),
        Expr::Quantity {
            qualifier, name, ..
        } => match qualifier {
            Some(q) => format!("{}.{}", q.name, name.name),
            None => name.name.clone(),
        },
        Expr::Binary { op, lhs, rhs, .. } => {
            let own = precedence(e);
            let symbol = match op {
                BinOp::Add => "+",
                BinOp::Sub => "-",
                BinOp::Mul => "*",
            };
            format!(
                "{} {symbol} {}",
                parenthesized(lhs, own),
                parenthesized(rhs, own + 1)
            )
        }
        Expr::Neg { operand, .. } => format!("-{}", parenthesized(operand, 3)),
    }
}

fn parenthesized(e: &Expr, min_precedence: u8) -> String {
    if precedence(e) < min_precedence {
        format!("({})", expr(e))
    } else {
        expr(e)
    }
}
