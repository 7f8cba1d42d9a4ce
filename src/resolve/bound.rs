//! The bound circuit: what a `.circuit` file means once every name is checked against a model's
//! config and a dataset's labels. This is the contract between `resolve` (which builds it) and
//! `plan` (which compiles it, per prompt, into ablation masks). It carries no syntax: groups,
//! wildcards and `extends` chains are already expanded.

use std::collections::BTreeMap;

use crate::data::positions::{Position, PositionItem, PositionSet};
use crate::data::DatasetSource;
use crate::model::{Component, HeadInput, ModelSource, ResidualTopology};

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
    /// The `--set KEY=VALUE` overrides applied over the file's own settings (already in the
    /// fields above), as written, for reports' provenance.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
}

/// A QK edge: through `head`, information moves from key position(s) to the query position(s).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct QkEdge {
    pub head: HeadId,
    pub keys: PositionItem,
    pub queries: PositionItem,
    pub span: Span,
}

/// As the language writes it: `edge 9.1: S1 -> END`.
impl std::fmt::Display for QkEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "edge {}: {} -> {}",
            self.head,
            self.keys.display_name(),
            self.queries.display_name()
        )
    }
}

/// An upstream component whose output a path edge carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Upstream {
    Head(HeadId),
    Mlp(usize),
    /// The input embedding (token + learned position embedding): a source only in
    /// edge-complete circuits; elsewhere it is always kept.
    Embed,
}

/// Components are written as the language writes them: `4.4`, `mlp 2`. Diagnostics, plan errors
/// and `circuit diff` all use this spelling.
impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Head(h) => write!(f, "{h}"),
            Upstream::Mlp(l) => write!(f, "mlp {l}"),
            Upstream::Embed => f.write_str("embed"),
        }
    }
}

/// A downstream input a path edge enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Downstream {
    Head(HeadId, HeadInput),
    Mlp(usize),
    Logits,
}

impl Upstream {
    /// The block of the forward that writes this output.
    pub fn component(self) -> Component {
        match self {
            Upstream::Head(h) => Component::Attention(h.layer),
            Upstream::Mlp(layer) => Component::Mlp(layer),
            Upstream::Embed => Component::Embed,
        }
    }
}

/// Inputs are written as the language writes them: `9.1.q`, `mlp 3`, `logits`.
impl std::fmt::Display for Downstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Downstream::Head(h, input) => {
                let input = match input {
                    HeadInput::Q => "q",
                    HeadInput::K => "k",
                    HeadInput::V => "v",
                };
                write!(f, "{h}.{input}")
            }
            Downstream::Mlp(l) => write!(f, "mlp {l}"),
            Downstream::Logits => f.write_str("logits"),
        }
    }
}

impl Downstream {
    /// The block of the forward that reads this input.
    pub fn component(self) -> Component {
        match self {
            Downstream::Head(h, _) => Component::Attention(h.layer),
            Downstream::Mlp(layer) => Component::Mlp(layer),
            Downstream::Logits => Component::Unembed,
        }
    }

    /// Whether the residual stream this input reads contains `from`'s output, i.e. whether a
    /// path edge from `from` to here goes forward, in a model wired as `topology`.
    pub fn reads(self, from: Upstream, topology: ResidualTopology) -> bool {
        topology.reads(self.component(), from.component())
    }
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
    /// `edge-complete circuit`: the circuit is its path edges only. Every head and MLP computes
    /// on its own inputs, and every downstream input (each head's q, k and v, each MLP's input,
    /// the logits) reads the outputs of the upstream components (the embedding included) whose
    /// edge is kept and the reference values of all others. `heads`, `mlps` and `qk_edges` are
    /// empty (the resolver refuses node statements and QK edges in such a circuit).
    pub edge_complete: bool,
    /// Heads named by node statements, each with the query positions where its output `z` is
    /// kept with every key. A head is also kept at the queries of its QK edges (an edge implies
    /// its node); a head in neither is ablated at every position.
    pub heads: BTreeMap<HeadId, PositionSet>,
    /// MLPs in the circuit, each with the positions where its output is kept (only matters
    /// under [`Scope::HeadsAndMlps`]).
    pub mlps: BTreeMap<usize, PositionSet>,
    /// QK edges. Each keeps its head at its queries; at a query position where a head has
    /// edges, only those edges' key positions' terms are kept.
    pub qk_edges: Vec<QkEdge>,
    pub path_edges: Vec<PathEdge>,
    pub expectations: Vec<Expectation>,
    pub span: Span,
}

impl BoundCircuit {
    /// Every slot label the circuit's statements name.
    pub fn labels(&self) -> std::collections::BTreeSet<&str> {
        let sets = self.heads.values().chain(self.mlps.values());
        let edges = self.qk_edges.iter().flat_map(|e| [&e.keys, &e.queries]);
        sets.flat_map(PositionSet::labels)
            .chain(edges.flat_map(PositionItem::labels))
            .chain(self.path_edges.iter().flat_map(|e| e.positions.labels()))
            .collect()
    }

    /// Every head the circuit keeps somewhere: those of node statements and those of QK edges.
    pub fn kept_heads(&self) -> std::collections::BTreeSet<HeadId> {
        let from_edges = self.qk_edges.iter().map(|e| e.head);
        self.heads.keys().copied().chain(from_edges).collect()
    }
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

/// The names settings go by in the language, in reports and in JSON: the serde spelling of each
/// fieldless enum (`edge_mean`, `heads_and_mlps`, `logit_diff`), so there is one spelling to keep.
pub trait SettingName: serde::Serialize + Copy {
    fn name(self) -> &'static str {
        unit_variant_name(&self)
    }
}

impl SettingName for AblationKind {}
impl SettingName for EdgeAblation {}
impl SettingName for Scope {}
impl SettingName for Metric {}
impl SettingName for Alignment {}

/// The serde name of a fieldless enum variant, caught by a serializer that accepts nothing else.
fn unit_variant_name<T: serde::Serialize>(value: &T) -> &'static str {
    match value.serialize(VariantName) {
        Ok(name) => name,
        // Only the fieldless enums above implement `SettingName`; any other shape is a bug here.
        Err(NotAUnitVariant) => {
            unreachable!("SettingName is implemented for a fieldless enum only")
        }
    }
}

/// A serializer whose only output is the name of a unit variant.
struct VariantName;

#[derive(Debug)]
struct NotAUnitVariant;

impl std::fmt::Display for NotAUnitVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a unit variant")
    }
}

impl std::error::Error for NotAUnitVariant {}

impl serde::ser::Error for NotAUnitVariant {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        NotAUnitVariant
    }
}

/// Every serializer method but `serialize_unit_variant` refuses.
macro_rules! refuse {
    ($($method:ident($($arg:ty),*) -> $out:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$out, NotAUnitVariant> {
            Err(NotAUnitVariant)
        })*
    };
}

impl serde::Serializer for VariantName {
    type Ok = &'static str;
    type Error = NotAUnitVariant;
    type SerializeSeq = serde::ser::Impossible<&'static str, NotAUnitVariant>;
    type SerializeTuple = serde::ser::Impossible<&'static str, NotAUnitVariant>;
    type SerializeTupleStruct = serde::ser::Impossible<&'static str, NotAUnitVariant>;
    type SerializeTupleVariant = serde::ser::Impossible<&'static str, NotAUnitVariant>;
    type SerializeMap = serde::ser::Impossible<&'static str, NotAUnitVariant>;
    type SerializeStruct = serde::ser::Impossible<&'static str, NotAUnitVariant>;
    type SerializeStructVariant = serde::ser::Impossible<&'static str, NotAUnitVariant>;

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<&'static str, NotAUnitVariant> {
        Ok(variant)
    }

    refuse! {
        serialize_bool(bool) -> &'static str;
        serialize_i8(i8) -> &'static str;
        serialize_i16(i16) -> &'static str;
        serialize_i32(i32) -> &'static str;
        serialize_i64(i64) -> &'static str;
        serialize_u8(u8) -> &'static str;
        serialize_u16(u16) -> &'static str;
        serialize_u32(u32) -> &'static str;
        serialize_u64(u64) -> &'static str;
        serialize_f32(f32) -> &'static str;
        serialize_f64(f64) -> &'static str;
        serialize_char(char) -> &'static str;
        serialize_str(&str) -> &'static str;
        serialize_bytes(&[u8]) -> &'static str;
        serialize_none() -> &'static str;
        serialize_unit() -> &'static str;
        serialize_unit_struct(&'static str) -> &'static str;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: ?Sized + serde::Serialize>(
        self,
        _: &T,
    ) -> Result<&'static str, NotAUnitVariant> {
        Err(NotAUnitVariant)
    }

    fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<&'static str, NotAUnitVariant> {
        Err(NotAUnitVariant)
    }

    fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<&'static str, NotAUnitVariant> {
        Err(NotAUnitVariant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_names_are_the_serde_spellings() {
        assert_eq!(EdgeAblation::EdgeMean.name(), "edge_mean");
        assert_eq!(Scope::HeadsAndMlps.name(), "heads_and_mlps");
        assert_eq!(Metric::LogitDiff.name(), "logit_diff");
        assert_eq!(AblationKind::Resample.name(), "resample");
        assert_eq!(Alignment::Label.name(), "label");
        for m in [
            Metric::LogitDiff,
            Metric::Prob,
            Metric::Logprob,
            Metric::Kl,
            Metric::Accuracy,
        ] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
    }

    #[test]
    fn components_are_written_as_the_language_writes_them() {
        let h = HeadId { layer: 9, head: 1 };
        assert_eq!(Upstream::Head(h).to_string(), "9.1");
        assert_eq!(Upstream::Mlp(2).to_string(), "mlp 2");
        assert_eq!(Downstream::Head(h, HeadInput::Q).to_string(), "9.1.q");
        assert_eq!(Downstream::Mlp(3).to_string(), "mlp 3");
        assert_eq!(Downstream::Logits.to_string(), "logits");
    }
}
