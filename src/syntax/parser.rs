//! pest → AST, and pest errors → miette diagnostics.

use pest::iterators::Pair;
use pest::Parser as _;

use super::ast::*;
use super::comments;
use super::diagnostic::{Diagnostics, SourceDiagnostic, SourceFile};

/// The pest parser generated from `grammar/circuit.pest`.
#[derive(pest_derive::Parser)]
#[grammar = "../grammar/circuit.pest"]
pub struct CircuitParser;

/// Deepest parenthesis nesting accepted in expressions (keeps recursion bounded).
pub const MAX_NESTING: usize = 32;
/// Most operators accepted in one expression (keeps trees shallow).
pub const MAX_OPERATORS: usize = 64;

/// Parses a whole file. On failure the diagnostics carry `source`.
pub fn parse(source: &SourceFile) -> Result<File, Diagnostics> {
    let text: &str = &source.text;
    let mut diags = Diagnostics::new();
    if let Some(err) = comments::check_nesting(text, MAX_NESTING) {
        diags.push(err);
        return Err(diags.finish(source));
    }
    pest::set_error_detail(true);
    let pairs = match CircuitParser::parse(Rule::file, text) {
        Ok(pairs) => pairs,
        Err(err) => {
            diags.push(pest_error_to_diagnostic(&err, text));
            return Err(diags.finish(source));
        }
    };
    let mut builder = Builder {
        text,
        errors: Vec::new(),
    };
    let file_pair = pairs
        .into_iter()
        .next()
        .expect("the file rule always yields one pair");
    let mut file = builder.file(file_pair);
    if !builder.errors.is_empty() {
        for e in builder.errors {
            diags.push(e);
        }
        return Err(diags.finish(source));
    }
    let found = comments::scan(text);
    comments::attach(&mut file, found, text);
    Ok(file)
}

/// Parses `text` under `name` (convenience for tests and tools).
pub fn parse_str(name: &str, text: &str) -> Result<File, Diagnostics> {
    parse(&SourceFile::new(name, text))
}

struct Builder<'t> {
    text: &'t str,
    errors: Vec<SourceDiagnostic>,
}

fn span_of(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    s.start()..s.end()
}

fn ident(pair: Pair<Rule>) -> Ident {
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(&pair),
    }
}

fn is_keyword_pair(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::kw_model
            | Rule::kw_dataset
            | Rule::kw_reference
            | Rule::kw_ablate
            | Rule::kw_metric
            | Rule::kw_align
            | Rule::kw_heads
            | Rule::kw_circuit
            | Rule::kw_extends
            | Rule::kw_edge
            | Rule::kw_mlp
            | Rule::kw_drop
            | Rule::kw_expect
            | Rule::kw_by
            | Rule::kw_and
            | Rule::kw_mlps
            | Rule::kw_edges
            | Rule::kw_first
    )
}

/// The meaningful children of a pair (keywords dropped).
fn children(pair: Pair<Rule>) -> Vec<Pair<Rule>> {
    pair.into_inner()
        .filter(|p| !is_keyword_pair(p.as_rule()))
        .collect()
}

impl Builder<'_> {
    fn error(&mut self, span: Span, message: String, label: &str) {
        self.errors.push(
            SourceDiagnostic::error("circuit::parse::number", message).with_label(span, label),
        );
    }

    /// Trims whitespace and comments that pest may include at the end of a pair's span when
    /// an optional tail is absent.
    fn trimmed(&self, pair: &Pair<Rule>) -> Span {
        let span = span_of(pair);
        span.start..comments::trim_end(self.text, span.start, span.end)
    }

    fn file(&mut self, pair: Pair<Rule>) -> File {
        let span = 0..self.text.len();
        let mut items = Vec::new();
        for child in pair.into_inner() {
            if child.as_rule() == Rule::EOI {
                continue;
            }
            let item_span = self.trimmed(&child);
            let kind = self.item(child);
            items.push(Item {
                kind,
                trivia: Trivia::default(),
                span: item_span,
            });
        }
        File {
            items,
            end_comments: Vec::new(),
            blank_before_end: false,
            crlf: self
                .text
                .find('\n')
                .is_some_and(|i| self.text[..i].ends_with('\r')),
            span,
        }
    }

    fn item(&mut self, pair: Pair<Rule>) -> ItemKind {
        let rule = pair.as_rule();
        let mut parts = children(pair).into_iter();
        match rule {
            Rule::model_setting => ItemKind::Model(string_lit(parts.next().unwrap())),
            Rule::dataset_setting => {
                let name = ident(parts.next().unwrap());
                let src = parts.next().unwrap();
                let source = match src.as_rule() {
                    Rule::string => DatasetExpr::File(string_lit(src)),
                    _ => self.generator(src),
                };
                ItemKind::Dataset { name, source }
            }
            Rule::reference_setting => {
                let target = parts.next().unwrap();
                let target_span = span_of(&target);
                let mut inner = target.into_inner();
                let dataset = ident(inner.next().unwrap());
                let part = inner.next().map(|p| match p.as_str() {
                    "corrupt" => ReferencePart::Corrupt,
                    _ => ReferencePart::Clean,
                });
                ItemKind::Reference {
                    dataset,
                    part,
                    span: target_span,
                }
            }
            Rule::ablate_setting => {
                let what = parts.next().unwrap();
                match what.as_rule() {
                    Rule::edge_ablation => {
                        let method = children(what).pop().unwrap();
                        ItemKind::AblateEdges {
                            method: match method.as_str() {
                                "knockout" => EdgeMethod::Knockout,
                                _ => EdgeMethod::Mean,
                            },
                        }
                    }
                    _ => {
                        let mut inner = children(what).into_iter();
                        let scope_pair = inner.next().unwrap();
                        // `heads` alone has one keyword child; `heads and mlps` has three.
                        let scope = if scope_pair.into_inner().count() > 1 {
                            ScopeKw::HeadsAndMlps
                        } else {
                            ScopeKw::Heads
                        };
                        let method = match inner.next().unwrap().as_str() {
                            "zero" => NodeMethod::Zero,
                            "resample" => NodeMethod::Resample,
                            _ => NodeMethod::Mean,
                        };
                        ItemKind::AblateNodes { scope, method }
                    }
                }
            }
            Rule::metric_setting => {
                let name = parts.next().unwrap();
                ItemKind::Metric(
                    MetricName::from_keyword(name.as_str())
                        .expect("the grammar lists every metric"),
                )
            }
            Rule::align_setting => ItemKind::Align(match parts.next().unwrap().as_str() {
                "label" => AlignMode::Label,
                _ => AlignMode::Position,
            }),
            Rule::group_def => {
                let name = ident(parts.next().unwrap());
                let heads = self.head_list(parts.next().unwrap());
                ItemKind::Group { name, heads }
            }
            Rule::circuit_def => {
                let mut first = parts.next().unwrap();
                let edge_complete = first.as_rule() == Rule::edge_complete;
                if edge_complete {
                    first = parts.next().unwrap();
                }
                let name = ident(first);
                let mut base = None;
                let mut body = Vec::new();
                for p in parts {
                    match p.as_rule() {
                        Rule::extends_clause => {
                            base = Some(ident(children(p).pop().unwrap()));
                        }
                        _ => {
                            let st_span = self.trimmed(&p);
                            let kind = self.statement(p);
                            body.push(Statement {
                                kind,
                                trivia: Trivia::default(),
                                span: st_span,
                            });
                        }
                    }
                }
                ItemKind::Circuit(Circuit {
                    edge_complete,
                    name,
                    base,
                    open_comment: None,
                    body,
                    end_comments: Vec::new(),
                    blank_before_end: false,
                })
            }
            other => unreachable!("not an item rule: {other:?}"),
        }
    }

    fn generator(&mut self, pair: Pair<Rule>) -> DatasetExpr {
        let mut parts = pair.into_inner();
        let name = ident(parts.next().unwrap());
        let params = parts
            .map(|p| {
                let span = span_of(&p);
                let mut kv = p.into_inner();
                let key = ident(kv.next().unwrap());
                let value_pair = kv.next().unwrap();
                let value = match value_pair.as_rule() {
                    Rule::string => Literal::Str(string_lit(value_pair).value),
                    Rule::boolean => Literal::Bool(value_pair.as_str() == "true"),
                    _ => Literal::Number(value_pair.as_str().to_string()),
                };
                Param { key, value, span }
            })
            .collect();
        DatasetExpr::Generator { name, params }
    }

    fn index(&mut self, pair: Pair<Rule>) -> usize {
        match pair.as_str().parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                self.error(
                    span_of(&pair),
                    format!("the index {} is too large", pair.as_str()),
                    "too large",
                );
                0
            }
        }
    }

    fn selector(&mut self, pair: Pair<Rule>) -> Selector {
        let span = span_of(&pair);
        let inner = pair.into_inner().next().unwrap();
        match inner.as_rule() {
            Rule::wildcard => Selector::All(span),
            Rule::index_range => {
                let mut ends = inner.into_inner();
                let a = self.index(ends.next().unwrap());
                let b = self.index(ends.next().unwrap());
                Selector::Range(a, b, span)
            }
            _ => Selector::Index(self.index(inner), span),
        }
    }

    fn heads_atom(&mut self, pair: Pair<Rule>) -> HeadsAtom {
        match pair.as_rule() {
            Rule::head_spec => {
                let span = span_of(&pair);
                let mut sels = pair.into_inner();
                let layer = self.selector(sels.next().unwrap());
                let head = self.selector(sels.next().unwrap());
                HeadsAtom::Spec { layer, head, span }
            }
            _ => HeadsAtom::Group(ident(pair.into_inner().next().unwrap())),
        }
    }

    fn head_list(&mut self, pair: Pair<Rule>) -> Vec<HeadsAtom> {
        pair.into_inner().map(|p| self.heads_atom(p)).collect()
    }

    fn component(&mut self, pair: Pair<Rule>) -> Component {
        match pair.as_rule() {
            Rule::embed => Component::Embed(self.trimmed(&pair)),
            Rule::mlp_ref => {
                let span = self.trimmed(&pair);
                let sel = children(pair).pop().unwrap();
                Component::Mlp(self.selector(sel), span)
            }
            _ => Component::Heads(self.heads_atom(pair)),
        }
    }

    fn statement(&mut self, pair: Pair<Rule>) -> StatementKind {
        let rule = pair.as_rule();
        let mut parts = children(pair).into_iter();
        match rule {
            Rule::head_node => {
                let heads = self.head_list(parts.next().unwrap());
                let positions = parts.next().map(|p| self.positions(p));
                StatementKind::HeadNode { heads, positions }
            }
            Rule::mlp_node => {
                let layers = parts
                    .next()
                    .unwrap()
                    .into_inner()
                    .map(|p| self.selector(p))
                    .collect();
                let positions = parts.next().map(|p| self.positions(p));
                StatementKind::MlpNode { layers, positions }
            }
            Rule::qk_edge => {
                let heads = self.head_list(parts.next().unwrap());
                let pairs = parts
                    .map(|p| {
                        let span = self.trimmed(&p);
                        let mut kq = p.into_inner();
                        let key = self.position_item(kq.next().unwrap());
                        let query = self.position_item(kq.next().unwrap());
                        QkPair { key, query, span }
                    })
                    .collect();
                StatementKind::QkEdge { heads, pairs }
            }
            Rule::path_edge => {
                let from = parts
                    .next()
                    .unwrap()
                    .into_inner()
                    .map(|p| self.component(p))
                    .collect();
                let to_pair = parts.next().unwrap();
                let to_span = self.trimmed(&to_pair);
                let to = match to_pair.as_rule() {
                    Rule::logits => Downstream::Logits(to_span),
                    Rule::mlp_ref => {
                        let sel = children(to_pair).pop().unwrap();
                        Downstream::Mlp(self.selector(sel), to_span)
                    }
                    _ => {
                        let mut inner = to_pair.into_inner();
                        let heads = self.heads_atom(inner.next().unwrap());
                        let input = match inner.next().unwrap().as_str() {
                            "q" => HeadInputKw::Q,
                            "k" => HeadInputKw::K,
                            _ => HeadInputKw::V,
                        };
                        Downstream::HeadInput {
                            heads,
                            input,
                            span: to_span,
                        }
                    }
                };
                let positions = parts.next().map(|p| self.positions(p));
                StatementKind::PathEdge {
                    from,
                    to,
                    positions,
                }
            }
            Rule::drop_stmt => StatementKind::Drop(
                parts
                    .next()
                    .unwrap()
                    .into_inner()
                    .map(|p| self.component(p))
                    .collect(),
            ),
            Rule::expect_stmt => {
                let lhs = self.expr(parts.next().unwrap());
                let comparison = match parts.next().unwrap().as_str() {
                    "<" => CmpOp::Lt,
                    "<=" => CmpOp::Le,
                    ">" => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                let rhs = self.expr(parts.next().unwrap());
                StatementKind::Expect {
                    lhs,
                    comparison,
                    rhs,
                }
            }
            other => unreachable!("not a statement rule: {other:?}"),
        }
    }

    fn positions(&mut self, pair: Pair<Rule>) -> Positions {
        let span = self.trimmed(&pair);
        let inner: Vec<_> = pair.into_inner().collect();
        if inner.len() == 1 && inner[0].as_rule() == Rule::all_positions {
            return Positions::All(span);
        }
        Positions::Items(
            inner.into_iter().map(|p| self.position_item(p)).collect(),
            span,
        )
    }

    fn position_item(&mut self, pair: Pair<Rule>) -> PositionItem {
        let span = self.trimmed(&pair);
        if pair.as_rule() == Rule::all_positions {
            return PositionItem::Every(span);
        }
        let first = pair.clone().into_inner().next();
        if let Some(up_to) = first.filter(|p| p.as_rule() == Rule::up_to) {
            let end = up_to.into_inner().next().unwrap();
            return PositionItem::UpTo(self.position(end), span);
        }
        let mut ends: Vec<Position> = pair.into_inner().map(|p| self.position(p)).collect();
        if ends.len() == 2 {
            let b = ends.pop().unwrap();
            let a = ends.pop().unwrap();
            PositionItem::Range(a, b, span)
        } else {
            PositionItem::One(ends.pop().unwrap())
        }
    }

    fn position(&mut self, pair: Pair<Rule>) -> Position {
        let span = self.trimmed(&pair);
        let mut parts = pair.into_inner();
        let anchor_pair = parts.next().unwrap();
        let anchor = match anchor_pair.as_rule() {
            Rule::end_anchor => Anchor::End,
            Rule::bos_anchor => Anchor::Bos,
            Rule::first_of => {
                let label = children(anchor_pair).pop().unwrap();
                Anchor::Label {
                    name: ident(label.into_inner().next().unwrap()),
                    first: true,
                }
            }
            _ => Anchor::Label {
                name: ident(anchor_pair.into_inner().next().unwrap()),
                first: false,
            },
        };
        let offset = match parts.next() {
            None => 0,
            Some(off) => {
                let off_span = span_of(&off);
                let mut sign_and_value = off.into_inner();
                let negative = sign_and_value.next().unwrap().as_str() == "-";
                let digits = sign_and_value.next().unwrap().as_str();
                match digits.parse::<i64>() {
                    Ok(v) if negative => -v,
                    Ok(v) => v,
                    Err(_) => {
                        self.error(
                            off_span,
                            format!("the offset {digits} is too large"),
                            "too large",
                        );
                        0
                    }
                }
            }
        };
        Position {
            anchor,
            offset,
            span,
        }
    }

    fn expr(&mut self, pair: Pair<Rule>) -> Expr {
        let span = self.trimmed(&pair);
        let operators = pair.as_str().matches(['+', '-', '*']).count();
        if operators > MAX_OPERATORS {
            self.errors.push(
                SourceDiagnostic::error(
                    "circuit::parse::too_complex",
                    format!("this expression has more than {MAX_OPERATORS} operators"),
                )
                .with_label(span.clone(), "too long")
                .with_help("split the expectation into several `expect` statements"),
            );
            return Expr::Number {
                text: "0".into(),
                value: 0.0,
                span,
            };
        }
        self.sum(pair)
    }

    /// `expr = term (add_op term)*`, folded left-associatively.
    fn sum(&mut self, pair: Pair<Rule>) -> Expr {
        let mut parts = pair.into_inner();
        let mut acc = self.product(parts.next().unwrap());
        while let Some(op) = parts.next() {
            let rhs = self.product(parts.next().unwrap());
            let op = if op.as_str() == "+" {
                BinOp::Add
            } else {
                BinOp::Sub
            };
            let span = acc.span().start..rhs.span().end;
            acc = Expr::Binary {
                op,
                lhs: Box::new(acc),
                rhs: Box::new(rhs),
                span,
            };
        }
        acc
    }

    fn product(&mut self, pair: Pair<Rule>) -> Expr {
        let mut parts = pair.into_inner();
        let mut acc = self.factor(parts.next().unwrap());
        while parts.next().is_some() {
            let rhs = self.factor(parts.next().unwrap());
            let span = acc.span().start..rhs.span().end;
            acc = Expr::Binary {
                op: BinOp::Mul,
                lhs: Box::new(acc),
                rhs: Box::new(rhs),
                span,
            };
        }
        acc
    }

    fn factor(&mut self, pair: Pair<Rule>) -> Expr {
        let mut negs = Vec::new();
        let mut primary = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::neg => negs.push(span_of(&p).start),
                _ => primary = Some(p),
            }
        }
        let primary = primary.expect("a factor always has a primary");
        let mut e = match primary.as_rule() {
            Rule::number => {
                let text = primary.as_str().to_string();
                Expr::Number {
                    value: text.parse().unwrap_or(f64::INFINITY),
                    text,
                    span: span_of(&primary),
                }
            }
            Rule::quantity => {
                let span = span_of(&primary);
                let mut names: Vec<Ident> = primary.into_inner().map(ident).collect();
                let name = names.pop().unwrap();
                Expr::Quantity {
                    qualifier: names.pop(),
                    name,
                    span,
                }
            }
            _ => {
                // A parenthesized expression: the parentheses widen the span only.
                // A parenthesized expression: the tree keeps no parentheses (the formatter
                // puts back exactly those the tree needs).
                self.sum(primary)
            }
        };
        for start in negs.into_iter().rev() {
            let span = start..e.span().end;
            e = Expr::Neg {
                operand: Box::new(e),
                span,
            };
        }
        e
    }
}

fn string_lit(pair: Pair<Rule>) -> StringLit {
    let span = span_of(&pair);
    let value = pair
        .into_inner()
        .next()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    StringLit { value, span }
}

// -------------------------------------------------------------------------------------------
// pest errors → diagnostics

/// How a rule is named in "expected ..." messages.
pub fn readable_rule(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::file => "a setting, `heads` group or `circuit`",
        Rule::ident | Rule::keyword => "a name",
        Rule::uint => "an integer",
        Rule::number | Rule::signed_number => "a number",
        Rule::string | Rule::string_inner => "a string in double quotes",
        Rule::kw_model | Rule::model_setting => "`model`",
        Rule::kw_dataset | Rule::dataset_setting => "`dataset`",
        Rule::kw_reference | Rule::reference_setting => "`reference`",
        Rule::kw_ablate | Rule::ablate_setting => "`ablate`",
        Rule::kw_metric | Rule::metric_setting => "`metric`",
        Rule::kw_align | Rule::align_setting => "`align`",
        Rule::kw_heads | Rule::group_def | Rule::scope | Rule::node_ablation => "`heads`",
        Rule::kw_circuit | Rule::circuit_def => "`circuit`",
        Rule::edge_complete => "`edge-complete`",
        Rule::embed => "`embed`",
        Rule::kw_extends | Rule::extends_clause => "`extends`",
        Rule::kw_edge | Rule::qk_edge | Rule::path_edge => "`edge`",
        Rule::kw_mlp | Rule::mlp_node | Rule::mlp_ref => "`mlp`",
        Rule::kw_drop | Rule::drop_stmt => "`drop`",
        Rule::kw_expect | Rule::expect_stmt => "`expect`",
        Rule::kw_by => "`by`",
        Rule::kw_and => "`and`",
        Rule::kw_mlps => "`mlps`",
        Rule::kw_edges | Rule::edge_ablation => "`edges`",
        Rule::kw_first | Rule::first_of => "`first(LABEL)`",
        Rule::generator_call | Rule::dotted_name => "a generator like `seqcont.numerals`",
        Rule::param => "a parameter like `n = 64`",
        Rule::boolean => "`true` or `false`",
        Rule::reference_target => "a dataset name",
        Rule::reference_part => "`corrupt` or `clean`",
        Rule::node_method => "`mean`, `zero` or `resample`",
        Rule::edge_method => "`mean` or `knockout`",
        Rule::metric_name => "a metric (`logit_diff`, `prob`, `logprob`, `kl`, `accuracy`)",
        Rule::align_mode => "`position` or `label`",
        Rule::head_list | Rule::head_node => "a head like `9.1` or a group name",
        Rule::head_spec => "a head like `9.1`",
        Rule::selector => "an index, a range like `0..3`, or `*`",
        Rule::wildcard | Rule::all_positions => "`*`",
        Rule::index_range => "a range like `0..3`",
        Rule::group_ref => "a group name",
        Rule::layer_list => "an MLP layer",
        Rule::qk_pair => "`KEY -> QUERY`",
        Rule::up_to => "a range like `..S1`",
        Rule::component_list => "a head, a group, `mlp L` or `embed`",
        Rule::logits => "`logits`",
        Rule::head_input_ref => "a head input like `9.1.q`",
        Rule::head_input => "`q`, `k` or `v`",
        Rule::comparison => "a comparison (`<`, `<=`, `>`, `>=`)",
        Rule::positions => "positions",
        Rule::position_item | Rule::position => {
            "a position (`S1`, `END`, `BOS`, `S1+1`, `first(S1)`)"
        }
        Rule::end_anchor => "`END`",
        Rule::bos_anchor => "`BOS`",
        Rule::label => "a position label",
        Rule::offset | Rule::offset_sign => "an offset like `+1`",
        Rule::expr | Rule::term | Rule::factor => "an expression",
        Rule::add_op => "`+` or `-`",
        Rule::mul_op => "`*`",
        Rule::neg => "`-`",
        Rule::quantity => "a quantity (`faithfulness`, `ratio`, a metric, `CIRCUIT.faithfulness`)",
        _ => "a statement",
    }
}

/// Literal tokens worth listing in "expected ..." (keywords and operators are named by rules).
const PUNCTUATION: &[&str] = &["@", "{", "}", ",", "->", ":", "=", "(", ")", ".", ".."];

/// The offset of the next token at or after `offset` (whitespace and comments skipped).
fn skip_trivia(text: &str, mut offset: usize) -> usize {
    let bytes = text.as_bytes();
    while offset < bytes.len() {
        match bytes[offset] {
            b' ' | b'\t' | b'\r' | b'\n' => offset += 1,
            b'#' => {
                while offset < bytes.len() && bytes[offset] != b'\n' {
                    offset += 1;
                }
            }
            _ => break,
        }
    }
    offset
}

/// What the input holds at `offset`: a word, one character, or the end of the file.
fn found_at(text: &str, offset: usize) -> (String, Span) {
    let rest = &text[offset..];
    let Some(first) = rest.chars().next() else {
        return ("end of file".to_string(), offset..offset);
    };
    let word_len: usize = if first.is_alphanumeric() || first == '_' {
        rest.char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map(|(i, _)| i)
            .unwrap_or(rest.len())
    } else {
        first.len_utf8()
    };
    let word = &rest[..word_len];
    let shown = match word {
        "\n" | "\r" => "end of line".to_string(),
        w => format!("`{}`", w.escape_debug()),
    };
    (shown, offset..offset + word_len)
}

fn join_alternatives(items: &[String]) -> String {
    match items.len() {
        0 => "something else".to_string(),
        1 => items[0].clone(),
        n => format!("{} or {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// Converts a pest error into a diagnostic with a byte span, readable rule names and a hint.
pub fn pest_error_to_diagnostic(err: &pest::error::Error<Rule>, text: &str) -> SourceDiagnostic {
    let mut offset = match err.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<String> = Vec::new();
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &err.variant {
        for rule in positives {
            expected.push(readable_rule(*rule).to_string());
        }
    }
    // pest's rule positives name everything but punctuation; the detailed parse attempts add
    // the punctuation tokens that were tried at the same position.
    if let Some(attempts) = err.parse_attempts() {
        // pest's classic position only counts rules; a missing `:` or `->` after a complete
        // head list fails further on, on a literal. Prefer that furthest position when it
        // names something useful.
        let punctuation: Vec<String> = attempts
            .expected_tokens()
            .into_iter()
            .map(|t| t.to_string())
            .filter(|t| PUNCTUATION.contains(&t.as_str()))
            .map(|t| format!("`{t}`"))
            .collect();
        if attempts.max_position > offset && !punctuation.is_empty() {
            offset = attempts.max_position;
            expected = punctuation;
            for stack in attempts.call_stacks() {
                if let Some(rule) = stack.deepest.get_rule() {
                    // Only rules that can follow a complete item are worth naming here; the
                    // enclosing list rules would repeat what was already parsed.
                    if matches!(
                        rule,
                        Rule::offset | Rule::comparison | Rule::add_op | Rule::mul_op
                    ) {
                        expected.push(readable_rule(*rule).to_string());
                    }
                }
            }
        } else if attempts.max_position == offset {
            expected.extend(punctuation);
        }
    }
    // `..` can start a position (`..S1`); where a position is expected, naming it says that.
    let position_named = [Rule::positions, Rule::position_item, Rule::position]
        .iter()
        .any(|r| expected.iter().any(|e| e == readable_rule(*r)));
    if position_named {
        expected.retain(|e| e != "`..`");
    }
    offset = skip_trivia(text, offset.min(text.len()));
    // Keywords appear both as rules and as literals; show each once, in a stable order.
    expected.sort();
    expected.dedup();
    while offset < text.len() && !text.is_char_boundary(offset) {
        offset += 1;
    }
    let (found, span) = found_at(text, offset);
    let message = format!("expected {}, found {found}", join_alternatives(&expected));
    let label = format!("expected {}", join_alternatives(&expected));
    let mut diagnostic =
        SourceDiagnostic::error("circuit::parse::syntax", message).with_label(span, label);
    if let Some(help) = syntax_hint(&expected, &found) {
        diagnostic = diagnostic.with_help(help);
    }
    diagnostic
}

fn syntax_hint(expected: &[String], found: &str) -> Option<String> {
    let has = |s: &str| expected.iter().any(|e| e == s);
    if !found.is_ascii() {
        return Some(format!(
            "names are ASCII: a letter or `_`, then letters, digits and `_`; {found} has a character outside ASCII"
        ));
    }
    if found == "end of file" && has("`}`") {
        return Some("a circuit's body ends with `}`".to_string());
    }
    if has("`@`") && !has("`:`") {
        return Some("a node names heads, then `@`, then positions: `9.1 @ END`".to_string());
    }
    if has("`:`") || has("`->`") {
        return Some(
            "edges are `edge HEAD: KEY -> QUERY` (QK edge) or `edge FROM -> TO` (path edge, TO is `9.1.q`, `mlp 3` or `logits`)"
                .to_string(),
        );
    }
    if found.starts_with("`\"") || found == "`\\\"`" {
        return None;
    }
    if expected.iter().any(|e| e.contains("`circuit`")) && found.starts_with('`') {
        return Some(
            "top-level statements are model, dataset, reference, ablate, metric, align, heads and circuit"
                .to_string(),
        );
    }
    None
}
