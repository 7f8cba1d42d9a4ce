//! The syntax tree of a `.circuit` file, with byte spans into the source.
//!
//! Spans are skipped when the tree is serialized, so two trees can be compared "up to spans" by
//! comparing their JSON values ([`File::without_spans`]); the formatter's round-trip tests rely
//! on that.

use serde::Serialize;

/// A byte range in the source text.
pub type Span = std::ops::Range<usize>;

/// A `#` comment, text including the `#`, trailing whitespace removed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comment {
    pub text: String,
    #[serde(skip)]
    pub span: Span,
}

/// Comments and blank lines around a statement, kept so that `circuit fmt` is lossless.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Trivia {
    /// Whether at least one blank line precedes the statement (or its leading comments).
    pub blank_before: bool,
    /// Comment lines directly above the statement, and comments written inside it.
    pub leading: Vec<Comment>,
    /// A comment on the same line, after the statement.
    pub trailing: Option<Comment>,
}

/// A name as written, with its span.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ident {
    pub name: String,
    #[serde(skip)]
    pub span: Span,
}

/// A string literal's contents (without quotes), with the span of the whole literal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StringLit {
    pub value: String,
    #[serde(skip)]
    pub span: Span,
}

/// A parsed file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct File {
    pub items: Vec<Item>,
    /// Comments after the last item.
    pub end_comments: Vec<Comment>,
    /// Whether a blank line separates the last item from `end_comments`.
    pub blank_before_end: bool,
    /// Whether the file's lines end in CRLF (its first line break is `\r\n`): `fmt` writes
    /// it back with CRLF.
    #[serde(skip)]
    pub crlf: bool,
    #[serde(skip)]
    pub span: Span,
}

impl File {
    /// The tree as JSON without spans: equal for two files that differ only in layout.
    pub fn without_spans(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the syntax tree always serializes")
    }
}

/// A top-level statement with its comments.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Item {
    pub kind: ItemKind,
    pub trivia: Trivia,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ItemKind {
    /// `model "NAME-OR-PATH"`.
    Model(StringLit),
    /// `dataset NAME = SOURCE`.
    Dataset { name: Ident, source: DatasetExpr },
    /// `reference DATASET[.corrupt|.clean]`.
    Reference {
        dataset: Ident,
        part: Option<ReferencePart>,
        #[serde(skip)]
        span: Span,
    },
    /// `ablate heads [and mlps] by METHOD`.
    AblateNodes { scope: ScopeKw, method: NodeMethod },
    /// `ablate edges by METHOD`.
    AblateEdges { method: EdgeMethod },
    /// `metric NAME`.
    Metric(MetricName),
    /// `align by position|label`.
    Align(AlignMode),
    /// `heads NAME = HEADS`.
    Group { name: Ident, heads: Vec<HeadsAtom> },
    /// `circuit NAME [extends BASE] { ... }`.
    Circuit(Circuit),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum DatasetExpr {
    /// A JSONL file, relative to the `.circuit` file's folder.
    File(StringLit),
    /// A built-in generator: `seqcont.numerals(n = 64)`.
    Generator { name: Ident, params: Vec<Param> },
}

/// `key = value` in a generator call.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Param {
    pub key: Ident,
    pub value: Literal,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Literal {
    /// A number as written (`64`, `-0.5`, `1e3`).
    Number(String),
    Str(String),
    Bool(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ReferencePart {
    Corrupt,
    Clean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ScopeKw {
    Heads,
    HeadsAndMlps,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NodeMethod {
    Mean,
    Zero,
    Resample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EdgeMethod {
    Mean,
    Knockout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MetricName {
    LogitDiff,
    Prob,
    Logprob,
    Kl,
    Accuracy,
}

impl MetricName {
    /// The keyword as written in a file.
    pub fn keyword(self) -> &'static str {
        match self {
            MetricName::LogitDiff => "logit_diff",
            MetricName::Prob => "prob",
            MetricName::Logprob => "logprob",
            MetricName::Kl => "kl",
            MetricName::Accuracy => "accuracy",
        }
    }

    /// Every metric, in the order the docs list them.
    pub const ALL: [MetricName; 5] = [
        MetricName::LogitDiff,
        MetricName::Prob,
        MetricName::Logprob,
        MetricName::Kl,
        MetricName::Accuracy,
    ];

    pub fn from_keyword(word: &str) -> Option<MetricName> {
        MetricName::ALL.into_iter().find(|m| m.keyword() == word)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AlignMode {
    Position,
    Label,
}

/// An index, an inclusive range or `*` (for layers and heads).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Selector {
    Index(usize, #[serde(skip)] Span),
    Range(usize, usize, #[serde(skip)] Span),
    All(#[serde(skip)] Span),
}

impl Selector {
    pub fn span(&self) -> Span {
        match self {
            Selector::Index(_, s) | Selector::Range(_, _, s) | Selector::All(s) => s.clone(),
        }
    }
}

/// A head (`9.1`), a set of heads (`9.*`, `0..3.*`), or a group's name.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum HeadsAtom {
    Spec {
        layer: Selector,
        head: Selector,
        #[serde(skip)]
        span: Span,
    },
    Group(Ident),
}

impl HeadsAtom {
    pub fn span(&self) -> Span {
        match self {
            HeadsAtom::Spec { span, .. } => span.clone(),
            HeadsAtom::Group(id) => id.span.clone(),
        }
    }
}

/// A head set or `mlp LAYERS`, as named by path edges and `drop`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Component {
    Heads(HeadsAtom),
    Mlp(Selector, #[serde(skip)] Span),
    /// `embed`: the input embedding, a source only in edge-complete circuits.
    Embed(#[serde(skip)] Span),
}

impl Component {
    pub fn span(&self) -> Span {
        match self {
            Component::Heads(h) => h.span(),
            Component::Mlp(_, s) | Component::Embed(s) => s.clone(),
        }
    }
}

/// Where a path edge enters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Downstream {
    HeadInput {
        heads: HeadsAtom,
        input: HeadInputKw,
        #[serde(skip)]
        span: Span,
    },
    Mlp(Selector, #[serde(skip)] Span),
    Logits(#[serde(skip)] Span),
}

impl Downstream {
    pub fn span(&self) -> Span {
        match self {
            Downstream::HeadInput { span, .. } => span.clone(),
            Downstream::Mlp(_, s) | Downstream::Logits(s) => s.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum HeadInputKw {
    Q,
    K,
    V,
}

/// What a position is measured from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Anchor {
    End,
    Bos,
    /// A slot label; `first` selects the slot's first token instead of its last.
    Label {
        name: Ident,
        first: bool,
    },
}

/// An anchor and a token offset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Position {
    pub anchor: Anchor,
    pub offset: i64,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum PositionItem {
    One(Position),
    Range(Position, Position, #[serde(skip)] Span),
    /// `..S1`: from the prompt's first token through the position.
    UpTo(Position, #[serde(skip)] Span),
    /// `*` as a QK edge's keys: every token of the prompt.
    Every(#[serde(skip)] Span),
}

impl PositionItem {
    pub fn span(&self) -> Span {
        match self {
            PositionItem::One(p) => p.span.clone(),
            PositionItem::Range(_, _, s) | PositionItem::UpTo(_, s) | PositionItem::Every(s) => {
                s.clone()
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Positions {
    All(#[serde(skip)] Span),
    Items(Vec<PositionItem>, #[serde(skip)] Span),
}

impl Positions {
    pub fn span(&self) -> Span {
        match self {
            Positions::All(s) | Positions::Items(_, s) => s.clone(),
        }
    }
}

/// `[edge-complete] circuit NAME [extends BASE] { ... }`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Circuit {
    /// `edge-complete circuit …`: the circuit is its path edges only (docs/semantics.md, section 8).
    pub edge_complete: bool,
    pub name: Ident,
    pub base: Option<Ident>,
    /// A comment on the line of the opening `{`.
    pub open_comment: Option<Comment>,
    pub body: Vec<Statement>,
    /// Comments after the last statement, before `}`.
    pub end_comments: Vec<Comment>,
    pub blank_before_end: bool,
}

/// A statement in a circuit's body, with its comments.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Statement {
    pub kind: StatementKind,
    pub trivia: Trivia,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum StatementKind {
    /// `HEADS [@ POSITIONS]`.
    HeadNode {
        heads: Vec<HeadsAtom>,
        positions: Option<Positions>,
    },
    /// `mlp LAYERS [@ POSITIONS]`.
    MlpNode {
        layers: Vec<Selector>,
        positions: Option<Positions>,
    },
    /// `edge HEADS: KEY -> QUERY, ...`.
    QkEdge {
        heads: Vec<HeadsAtom>,
        pairs: Vec<QkPair>,
    },
    /// `edge FROM, ... -> TO [@ POSITIONS]`.
    PathEdge {
        from: Vec<Component>,
        to: Downstream,
        positions: Option<Positions>,
    },
    /// `drop COMPONENTS`.
    Drop(Vec<Component>),
    /// `expect LHS OP RHS`.
    Expect {
        lhs: Expr,
        comparison: CmpOp,
        rhs: Expr,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QkPair {
    pub key: PositionItem,
    pub query: PositionItem,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
}

/// An arithmetic expression in an `expect`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Expr {
    /// A number as written, and its value.
    Number {
        text: String,
        value: f64,
        #[serde(skip)]
        span: Span,
    },
    /// `faithfulness`, `logit_diff`, `base.faithfulness`, `full.logit_diff`: unchecked names,
    /// bound by the resolver.
    Quantity {
        qualifier: Option<Ident>,
        name: Ident,
        #[serde(skip)]
        span: Span,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
        #[serde(skip)]
        span: Span,
    },
    Neg {
        operand: Box<Expr>,
        #[serde(skip)]
        span: Span,
    },
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Number { span, .. }
            | Expr::Quantity { span, .. }
            | Expr::Binary { span, .. }
            | Expr::Neg { span, .. } => span.clone(),
        }
    }
}
