//! The bound circuit: what a `.circuit` file means once every name is checked against a model's
//! config and a dataset's labels. This is the contract between `resolve` (which builds it) and
//! `plan` (which compiles it, per prompt, into ablation masks). It carries no syntax: groups,
//! wildcards and `extends` chains are already expanded.

use std::collections::BTreeMap;

use crate::data::positions::{Position, PositionItem, PositionSet};
use crate::data::DatasetSource;
use crate::model::{HeadInput, ModelSource};

/// A byte range in the source file, for pointing reports back at the text.
pub type Span = std::ops::Range<usize>;

/// An attention head, zero-based as TransformerLens writes it (`9.1` = layer 9, head 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct HeadId {
    pub layer: usize,
    pub head: usize,
}

impl std::fmt::Display for HeadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.layer, self.head)
    }
}

/// What node ablation replaces an ablated value with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AblationKind {
    /// The mean over the reference prompts at the same token position (default).
    Mean,
    Zero,
    /// The value on the paired reference prompt.
    Resample,
}

/// How QK edges that are not kept are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeAblation {
    /// Each dropped term `A[q,k]·v[k]` is replaced by its reference mean (default; agrees
    /// exactly with node ablation when every edge or no edge is kept).
    EdgeMean,
    /// Dropped (q, k) pairs get score −∞ before the softmax (attention knockout).
    Knockout,
}

/// Which components are ablated when outside the circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Attention heads only; MLPs always keep their values (as in IOI).
    Heads,
    /// Heads and MLPs (as in the sequence-continuation work).
    HeadsAndMlps,
}

/// The per-prompt metric at END.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Answer logit minus distractor logit.
    LogitDiff,
    /// Probability of the answer.
    Prob,
    /// Log-probability of the answer.
    Logprob,
    /// KL(full model's next-token distribution ‖ the circuit's).
    Kl,
    /// 1 when the answer is the top-1 token, else 0.
    Accuracy,
}

/// Which prompts reference statistics (means, resample partners) are taken over.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum ReferenceSet {
    /// The dataset's own reference ("corrupted") prompts (default).
    Corrupt,
    /// The evaluated prompts themselves.
    Clean,
    /// Another dataset's clean prompts.
    Dataset(DatasetSource),
}

/// How reference statistics are matched to evaluated prompts' positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Alignment {
    /// By token index; reference and evaluated prompts must have equal token lengths.
    Position,
    /// By label: the statistic at a labelled position is taken at the same label in the
    /// reference prompts.
    Label,
}

/// Settings in force for every circuit of a file; every report prints them.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Settings {
    pub model: ModelSource,
    pub dataset: DatasetSource,
    pub reference: ReferenceSet,
    pub ablation: AblationKind,
    pub edge_ablation: EdgeAblation,
    pub scope: Scope,
    pub metric: Metric,
    pub alignment: Alignment,
}

/// A QK edge: through `head`, information moves from key position(s) to the query position(s).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct QkEdge {
    pub head: HeadId,
    pub keys: PositionItem,
    pub queries: PositionItem,
    pub span: Span,
}

/// An upstream component whose output a path edge carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Upstream {
    Head(HeadId),
    Mlp(usize),
}

/// A downstream input a path edge enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Downstream {
    Head(HeadId, HeadInput),
    Mlp(usize),
    Logits,
}

/// A path edge: `from`'s output reaches `to`'s input (at `positions`, default every position).
/// A downstream input named by any path edge sees only the upstream components whose edge is
/// kept; every other upstream component in scope reaches it as its reference mean.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PathEdge {
    pub from: Upstream,
    pub to: Downstream,
    pub positions: PositionSet,
    pub span: Span,
}

/// A quantity an expectation can read from a circuit's results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// (m(C) − m(empty)) / (m(full) − m(empty)), metric averaged over prompts first.
    Faithfulness,
    /// m(C) / m(full): the "% of full model" of the sequence-continuation work.
    Ratio,
    /// A metric's prompt-averaged value for the circuit.
    Metric(Metric),
    /// A metric's prompt-averaged value for the full model.
    Full(Metric),
    /// A metric's prompt-averaged value for the empty circuit.
    Empty(Metric),
}

/// An arithmetic expression over numbers and circuits' quantities.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum ValueExpr {
    Number(f64),
    /// `circuit` is `None` for the circuit the expectation belongs to.
    Quantity {
        circuit: Option<String>,
        quantity: Quantity,
    },
    Add(Box<ValueExpr>, Box<ValueExpr>),
    Sub(Box<ValueExpr>, Box<ValueExpr>),
    Mul(Box<ValueExpr>, Box<ValueExpr>),
    Neg(Box<ValueExpr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Comparison {
    Lt,
    Le,
    Gt,
    Ge,
}

/// `expect lhs op rhs`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Expectation {
    pub lhs: ValueExpr,
    pub comparison: Comparison,
    pub rhs: ValueExpr,
    /// The expectation's text as written, for test output.
    pub text: String,
    pub span: Span,
}

/// One named circuit with everything expanded.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BoundCircuit {
    pub name: String,
    /// Heads in the circuit, each with the query positions where its output `z` is kept.
    /// A head absent from this map is ablated at every position.
    pub heads: BTreeMap<HeadId, PositionSet>,
    /// MLPs in the circuit, each with the positions where its output is kept (only matters
    /// under [`Scope::HeadsAndMlps`]).
    pub mlps: BTreeMap<usize, PositionSet>,
    /// QK edges. At a query position where a kept head has edges, only those key positions'
    /// terms are kept; an edge at a query position where its head is not kept has no effect
    /// (the resolver warns).
    pub qk_edges: Vec<QkEdge>,
    pub path_edges: Vec<PathEdge>,
    pub expectations: Vec<Expectation>,
    pub span: Span,
}

/// A whole `.circuit` file, resolved.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BoundFile {
    pub settings: Settings,
    /// In file order.
    pub circuits: Vec<BoundCircuit>,
}

impl Settings {
    /// The files and folders these settings read: the model folder, the dataset and the
    /// reference dataset files (built-ins read nothing). Outputs must not land on them.
    pub fn input_paths(&self) -> Vec<std::path::PathBuf> {
        let mut paths = Vec::new();
        if let ModelSource::Dir(dir) = &self.model {
            paths.push(dir.clone());
        }
        if let DatasetSource::File(file) = &self.dataset {
            paths.push(file.clone());
        }
        if let ReferenceSet::Dataset(DatasetSource::File(file)) = &self.reference {
            paths.push(file.clone());
        }
        paths
    }
}

/// A single position as a one-element set: a convenience for tests and the plan.
pub fn single(position: Position) -> PositionSet {
    PositionSet::Items(vec![PositionItem::One(position)])
}
