//! Attribution: a score for every head and MLP at every position, every QK edge and every path
//! edge, from the gradients of the file's metric (`circuit scores`).
//!
//! The definitions are in docs/semantics.md ("Attribution scores"), formula by formula; this
//! module computes them. Every score is built in three steps:
//! 1. the clean forward and the gradients of `M = mean_p metric_p` at it
//!    ([`crate::model::backward`]); for `eap-ig` the gradients at `m` points between the
//!    reference input embedding and the clean one, averaged;
//! 2. per prompt and token, the score of each component: `(õ − o) · ∂M/∂o` for the gradient
//!    methods (õ the component's ablated value under the file's settings, read from
//!    [`ReferenceValues`], as the ablation itself reads it), or the cheap attention scores;
//! 3. aggregation over prompts per *slot* (the token's label as `align by label` names it:
//!    `END`, `S4`, `S1+1`, `start+2`), in prompt order, in f64.
//!
//! Since `∂M/∂o` already carries the `1/P` of the prompt mean, the gradient scores of step 2
//! summed over prompts are in metric units: the first-order estimate of `M(ablated) − M(full)`.
//! They add up: a head's node score summed over slots estimates ablating it at every position,
//! and its QK-edge scores into one query sum to its node score there.
//!
//! Shapes: `B` prompts right-padded to `T`, `L` layers, `H` heads, `d` head size, `D` model
//! width.

pub mod export;
pub mod inputs;
mod path_edges;
pub mod run;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use miette::Diagnostic;
use ndarray::{s, Array2, Array3, Array4, ArrayView3, Axis};
use thiserror::Error;

use crate::ablate::ReferenceValues;
use crate::measure::Targets;
use crate::model::backward::{self, GradientOptions, Gradients, Objective};
use crate::model::{HeadInput, Model};
use crate::resolve::bound::{Downstream, HeadId, Upstream};

/// How a score is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Edge attribution patching: `(õ − o) · ∂M/∂o` at the clean run.
    Eap,
    /// EAP with integrated gradients over the input embeddings (`steps` points).
    EapIg { steps: usize },
    /// The attention pattern `A[q,k]`, averaged over prompts.
    Attention,
    /// `A[q,k] · ‖v[k] W_O^h‖`, averaged over prompts.
    Qkvo,
    /// Direct effect on the metric through the final norm (its scale frozen) and the unembedding.
    Dla,
    /// The exact effect: the metric with the component ablated alone, minus the metric without
    /// (computed by [`crate::scan`], not here).
    Exact,
}

impl Method {
    /// How the command line and reports name it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Eap => "eap",
            Method::EapIg { .. } => "eap-ig",
            Method::Attention => "attention",
            Method::Qkvo => "qkvo",
            Method::Dla => "dla",
            Method::Exact => "exact",
        }
    }

    /// Whether the score is in the metric's units (an estimated change of `M`), so that
    /// faithfulness units exist for it.
    pub fn in_metric_units(self) -> bool {
        matches!(
            self,
            Method::Eap | Method::EapIg { .. } | Method::Dla | Method::Exact
        )
    }

    /// Whether the score adds up over prompts (an estimate of a change of the prompt mean:
    /// summed over prompts, a prompt lacking a slot contributes 0) rather than being a
    /// per-prompt property averaged over the prompts that have the slot.
    fn additive(self) -> bool {
        self.in_metric_units()
    }
}

/// What is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// Heads (and MLPs under `heads and mlps`) per query position.
    Nodes,
    /// `edge h: key -> query`.
    QkEdges,
    /// `edge u -> v.q|k|v`, `u -> mlp L`, `u -> logits` per position.
    PathEdges,
}

impl Granularity {
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Nodes => "nodes",
            Granularity::QkEdges => "qk-edges",
            Granularity::PathEdges => "path-edges",
        }
    }
}

/// What one score is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Head(HeadId),
    Mlp(usize),
    Path { from: Upstream, to: Downstream },
}

impl Component {
    /// As a `.circuit` file writes the component (without positions): `0.1`, `mlp 2`,
    /// `0.1 -> 1.0.v`.
    pub fn name(&self) -> String {
        match self {
            Component::Head(h) => h.to_string(),
            Component::Mlp(l) => format!("mlp {l}"),
            Component::Path { from, to } => {
                format!("{from} -> {to}")
            }
        }
    }
}

/// One aggregated score.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub component: Component,
    /// The query slot (for nodes and path edges: the position).
    pub query: String,
    /// The key slot of a QK edge.
    pub key: Option<String>,
    /// In metric units for the gradient methods and `dla` (see [`Method::in_metric_units`]).
    pub score: f64,
    /// Prompts that have this slot (or slot pair).
    pub n_prompts: usize,
}

impl Entry {
    /// How a `.circuit` file would write it: `0.1 @ END`, `edge 0.1: S4 -> END`,
    /// `mlp 0 @ S4`, `edge 0.1 -> 1.0.v @ END`.
    pub fn circuit_text(&self) -> String {
        match (&self.component, &self.key) {
            (Component::Head(h), Some(key)) => format!("edge {h}: {key} -> {}", self.query),
            (Component::Path { .. }, _) => {
                format!("edge {} @ {}", self.component.name(), self.query)
            }
            (c, _) => format!("{} @ {}", c.name(), self.query),
        }
    }
}

/// Every score of one method at one granularity, in component order.
#[derive(Clone, Debug)]
pub struct ScoreSet {
    pub method: Method,
    pub granularity: Granularity,
    pub entries: Vec<Entry>,
    /// The slots in the order of their first token (prompt by prompt).
    pub slots: Vec<String>,
    pub n_prompts: usize,
}

impl ScoreSet {
    /// Indices of `entries` by decreasing |score|, ties by component order (deterministic).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (self.entries[a].score.abs(), self.entries[b].score.abs());
            y.total_cmp(&x).then(a.cmp(&b))
        });
        order
    }
}

/// Why scores cannot be computed.
#[derive(Debug, Error, Diagnostic)]
pub enum AttributeError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Gradient(#[from] backward::GradientError),

    #[error("`{method}` scores QK edges, not nodes (a head's attention sums to 1 over keys)")]
    #[diagnostic(
        code(circuit::attribute::no_node_score),
        help("use --granularity qk-edges, or a node score: eap, eap-ig, qkvo, dla")
    )]
    NoNodeScore { method: &'static str },

    #[error("`{method}` has no path-edge score")]
    #[diagnostic(
        code(circuit::attribute::no_path_edge_score),
        help("path-edge scores are gradient scores: use --method eap or eap-ig")
    )]
    NoPathEdgeScore { method: &'static str },

    #[error("the `kl` metric's gradient is zero at the full model's own run, so every `eap` score would be 0")]
    #[diagnostic(
        code(circuit::attribute::kl_zero_gradient),
        help("KL(full ‖ full) is kl's minimum; score with --method eap-ig (its points lie between the reference input and the clean one, where the gradient is not zero), or use another metric")
    )]
    KlAtMinimum,

    #[error("eap-ig needs at least one step")]
    #[diagnostic(
        code(circuit::attribute::no_steps),
        help("pass --steps 1 or more (default 5)")
    )]
    NoSteps,

    #[error("exact scores are ablations, computed by `circuit::scan`, not from gradients")]
    #[diagnostic(
        code(circuit::attribute::exact_is_a_scan),
        help(
            "call circuit::scan::scan (what `circuit scores --method exact` and `circuit scan` do)"
        )
    )]
    ExactIsAScan,

    #[error("QK-edge scores estimate edge-mean ablation, but this file ablates edges by knockout")]
    #[diagnostic(
        code(circuit::attribute::knockout_edges),
        help("attention knockout is not linear in the edge's term; score QK edges of a file with `ablate edges by mean` (the default)")
    )]
    KnockoutEdges,

    #[error("path-edge scores are not defined on this model: its blocks' outputs are normed before they are added (post-norms)")]
    #[diagnostic(
        code(circuit::attribute::post_norm_path_edges),
        help("on Gemma 2 a head's write reaches the residual stream only through its layer's post-attention norm, so it is no term of a later input that a path edge could swap; score nodes or QK edges (docs/semantics.md, \"Gemma 2\")")
    )]
    PostNormPathEdges,

    #[error("`dla` is not defined on this model: a head's write reaches the residual stream only through its layer's post-attention norm (post-norms)")]
    #[diagnostic(
        code(circuit::attribute::post_norm_dla),
        help("direct-logit attribution multiplies a head's write by the final norm's frozen Jacobian, which needs the write to be a term of the final stream; use eap or eap-ig (docs/semantics.md, \"Gemma 2\")")
    )]
    PostNormDla,

    #[error("scores relative to edge-complete circuit `{name}` are not computed: its inputs read a reference embedding where no `embed` edge is kept, which the backward does not hold constant")]
    #[diagnostic(
        code(circuit::attribute::edge_complete_circuit),
        help("score relative to the full model (no --circuit), or write the circuit in the node-based form (`circuit NAME {{ ... }}`)")
    )]
    EdgeCompleteCircuit { name: String },
}

/// What the scores are computed from: the evaluated prompts, their slots and the ablation's
/// reference values.
pub struct AttributionInputs<'a> {
    pub model: &'a Model,
    pub ids: &'a [Vec<u32>],
    pub targets: &'a [Targets],
    /// The slot name of every token of every prompt, `(B, T_b)`.
    pub slots: &'a [Vec<String>],
    /// The metric, as `.circuit` files name it.
    pub metric: &'a str,
    /// The file's ablation: what `õ` is (needs edge terms of every head for QK edges and
    /// head outputs for path edges).
    pub reference: &'a ReferenceValues,
    /// `x̃`, the reference input embedding of each evaluated prompt `(B, T, D)` (see
    /// [`inputs::reference_embeddings`]); needed by `eap-ig` only.
    pub reference_embeddings: Option<ArrayView3<'a, f32>>,
    /// Whether MLPs are components (`ablate heads and mlps`).
    pub mlps_in_scope: bool,
    /// Path edges also leave `embed` (the edge-complete form's source, docs/semantics.md
    /// section 8): `õ` is the reference embedding, so `reference` must hold it
    /// (`ReferenceNeeds::head_outputs`).
    pub embed_edges: bool,
    /// Called once per gradient pass (progress bars).
    pub on_pass: Option<&'a (dyn Fn() + Sync)>,
    /// Prompts per gradient pass; `None`: as many as the memory budget allows
    /// ([`prompts_per_pass`]). The scores are the same either way.
    pub prompts_per_pass: Option<usize>,
    /// Scores relative to a circuit: its ablations in place (`o` is then each component's
    /// value in the circuit's forward, the backward stops at what the circuit holds constant,
    /// and a term or path the circuit already ablates scores 0).
    pub circuit: Option<CircuitInPlace<'a>>,
}

/// A circuit's ablations, as the forward applies them and as the backward sees them.
#[derive(Clone, Copy)]
pub struct CircuitInPlace<'a> {
    pub hooks: &'a dyn crate::model::Interventions,
    pub kept: backward::Kept<'a>,
}

/// Whether `method` at `granularity` is defined for `metric`, relative to the full model or
/// (`with_circuit`) to a circuit (checked before any forward pass).
pub fn check_request(
    method: Method,
    granularity: Granularity,
    metric: &str,
    with_circuit: bool,
) -> Result<(), AttributeError> {
    if metric == "accuracy" {
        return Err(backward::GradientError::NoGradient {
            metric: metric.to_string(),
        }
        .into());
    }
    match (method, granularity) {
        (Method::Attention, Granularity::Nodes) => Err(AttributeError::NoNodeScore {
            method: method.name(),
        }),
        (Method::Attention | Method::Qkvo | Method::Dla, Granularity::PathEdges) => {
            Err(AttributeError::NoPathEdgeScore {
                method: method.name(),
            })
        }
        (Method::Eap, _) if metric == "kl" && !with_circuit => Err(AttributeError::KlAtMinimum),
        (Method::EapIg { steps: 0 }, _) => Err(AttributeError::NoSteps),
        _ => Ok(()),
    }
}

/// Computes `method` at `granularity`.
pub fn scores(
    inputs: &AttributionInputs,
    method: Method,
    granularity: Granularity,
) -> Result<ScoreSet, AttributeError> {
    check_request(method, granularity, inputs.metric, inputs.circuit.is_some())?;
    if method == Method::Exact {
        return Err(AttributeError::ExactIsAScan);
    }
    let targets: Vec<(u32, u32)> = inputs
        .targets
        .iter()
        .map(|t| (t.answer, t.distractor))
        .collect();
    let n_prompts = inputs.ids.len();
    let options = GradientOptions {
        head_inputs: granularity == Granularity::PathEdges,
        head_input_sink: None,
        // Each pass's gradients carry the 1/P of the mean over all prompts.
        prompts_in_mean: Some(n_prompts),
    };
    let components = match (method, granularity) {
        (Method::Eap | Method::EapIg { .. }, Granularity::PathEdges) => path_components(inputs).0,
        (Method::Eap | Method::EapIg { .. }, Granularity::Nodes) => {
            let n_layers = inputs.model.config.n_layers;
            let mut components = head_components(n_layers, inputs.model.config.n_heads);
            // Heads layer by layer, then (in scope) the MLPs: component `n_layers · H + layer`.
            if inputs.mlps_in_scope {
                components.extend((0..n_layers).map(Component::Mlp));
            }
            components
        }
        _ => head_components(inputs.model.config.n_layers, inputs.model.config.n_heads),
    };
    let mut aggregate = Aggregate::new(inputs.slots, method.additive(), components);
    // The scores are sums over prompts of per-prompt terms, so the prompts are scored a pass of
    // a few at a time (peak memory); each pass adds its prompts' terms in prompt order.
    let per_pass = prompts_per_pass(inputs, method, granularity);
    let mut recycled_deltas = None; // path edges: one pass's `ũ − u` array, for the next
    for start in (0..n_prompts).step_by(per_pass.max(1)) {
        let range = start..(start + per_pass).min(n_prompts);
        let seq = inputs.ids[range.clone()].iter().map(Vec::len).max();
        let pass = AttributionInputs {
            ids: &inputs.ids[range.clone()],
            targets: &inputs.targets[range.clone()],
            reference_embeddings: inputs
                .reference_embeddings
                .map(|x| x.slice_move(s![range.clone(), ..seq.unwrap_or(0), ..])),
            ..*inputs
        };
        let targets = &targets[range.clone()];
        // Path edges: each layer's head-input gradients are scored as the backward makes them.
        let path_scorer = matches!(
            (method, granularity),
            (Method::Eap | Method::EapIg { .. }, Granularity::PathEdges)
        )
        .then(|| {
            let weight = 1.0 / gradient_points(method) as f64;
            path_edges::PathEdgeScorer::new(&pass, start, weight, recycled_deltas.take())
        });
        let options = GradientOptions {
            head_input_sink: path_scorer
                .as_ref()
                .map(|s| s as &dyn backward::HeadInputSink),
            ..options
        };
        // The full model's own END logits (kl's reference): the clean run's.
        let mut clean = clean_run(&pass, targets, options)?;
        if clean_cache_let_go_before_points(method, granularity) {
            // Most of a pass's memory: gone before the integrated-gradient points run theirs.
            clean.activations.layers = Vec::new();
        }
        let objective = objective(inputs.metric, &clean)?;
        let scored = Scored {
            inputs: &pass,
            offset: start,
            clean: &clean,
        };
        match method {
            Method::Eap | Method::EapIg { .. } => {
                let gradient = match method {
                    Method::EapIg { steps } => {
                        integrated_gradients(&pass, targets, objective, options, &clean, steps)?
                    }
                    _ => MeanGradients::of(&clean),
                };
                match granularity {
                    Granularity::Nodes => node_scores(&scored, &gradient, &mut aggregate),
                    Granularity::QkEdges => qk_edge_scores(&scored, &gradient, &mut aggregate),
                    Granularity::PathEdges => {
                        recycled_deltas = path_scorer
                            .expect("made for path edges")
                            .finish(&gradient, &mut aggregate);
                    }
                }
            }
            _ => cheap_scores(&scored, method, granularity, &mut aggregate),
        }
    }
    Ok(ScoreSet {
        method,
        granularity,
        entries: aggregate.finish(),
        slots: slot_order(inputs.slots),
        n_prompts,
    })
}

/// Whether [`scores`] lets go of the clean run's activation cache before eap-ig's gradient
/// points run their own forwards, so that [`prompts_per_pass`] counts it once, not twice. Path
/// edges: the path-edge scorer has taken every upstream's `ũ − u` from it and the points read
/// only its embeddings (the node and QK-edge scores read it after the points).
fn clean_cache_let_go_before_points(method: Method, granularity: Granularity) -> bool {
    matches!(method, Method::EapIg { .. }) && granularity == Granularity::PathEdges
}

/// How many gradient passes [`scores`] makes (each a forward and backward of a few prompts;
/// `m` per few prompts under eap-ig): what its `on_pass` calls count to.
pub fn gradient_passes(
    inputs: &AttributionInputs,
    method: Method,
    granularity: Granularity,
) -> usize {
    let per_pass = prompts_per_pass(inputs, method, granularity).max(1);
    inputs.ids.len().div_ceil(per_pass) * gradient_points(method)
}

/// The gradient passes per pass's prompts: the `m` points of eap-ig, else the clean run alone.
fn gradient_points(method: Method) -> usize {
    match method {
        Method::EapIg { steps } => steps.max(1),
        _ => 1,
    }
}

/// One pass's prompts as the score functions read them: `inputs` holds the pass's prompts
/// (and reference embeddings), which are prompts `offset..` of the whole set; the reference
/// values, the slots and a circuit's masks are indexed by the whole set's prompt index.
struct Scored<'s, 'a> {
    inputs: &'s AttributionInputs<'a>,
    offset: usize,
    /// The pass's clean run.
    clean: &'s Gradients,
}

/// How many prompts one gradient pass scores. A pass's activations and gradients grow with its
/// prompts, the weights do not: passes hold about half the weights' bytes of them (at least
/// 256 MiB), so that attribution's peak memory stays near twice the weight bytes (issue 14;
/// docs/performance.md, "Attribution memory"). The scores do not depend on it (a product's rows
/// are computed alone, `model::linalg::kernel_for`; attention per prompt; the sums in prompt
/// order), which `attribute::tests` checks.
fn prompts_per_pass(inputs: &AttributionInputs, method: Method, granularity: Granularity) -> usize {
    let n_prompts = inputs.ids.len().max(1);
    if let Some(n) = inputs.prompts_per_pass {
        return n.clamp(1, n_prompts);
    }
    if inputs.circuit.is_some() {
        // A circuit's hooks and masks index the whole set's prompts: one pass.
        return n_prompts;
    }
    let config = &inputs.model.config;
    let (d, m, h, layers) = (
        config.d_model,
        config.d_mlp,
        config.n_heads,
        config.n_layers,
    );
    let seq = inputs.ids.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let gated = !matches!(
        config.architecture,
        crate::model::Architecture::Gpt2 | crate::model::Architecture::GptNeox
    );
    // Per layer q, k, v, o (4 D², at most) and two or three D × M matrices; the embedding.
    let weights = layers * (4 * d * d + if gated { 3 } else { 2 } * d * m) + config.vocab_size * d;
    let budget_floats = (weights / 2).max((256 << 20) / 4);
    // Per token and layer: the cache (residual streams, q, k, v, z: ~12 D; the MLP
    // pre-activations, M or 2M; scores and pattern, 2·H·T), the gradients (~4 D + H·T) and the
    // backward's temporaries (~4 D). eap-ig holds the clean run's, the running sum and the
    // current point's at once (measured: about twice eap's per prompt), except that path edges
    // let go of the clean run's cache before the points ([`scores`]): its `ũ − u` is taken.
    let ig = matches!(method, Method::EapIg { .. });
    let cache = 12 * d + if gated { 2 } else { 1 } * m + 2 * h * seq;
    let gradients = 8 * d + h * seq;
    let clean_cache_kept = ig && !clean_cache_let_go_before_points(method, granularity);
    let mut per_token =
        (cache * (1 + clean_cache_kept as usize) + gradients * (1 + ig as usize)) * layers.max(1);
    if granularity == Granularity::PathEdges {
        // Path edges: a few layers' q/k/v input gradients at a time (3·H·D each), every
        // upstream's ũ − u (U·D) and each component's sum in f64 (`path_edges`).
        let upstreams = upstreams(layers, h, inputs.mlps_in_scope, inputs.embed_edges).len();
        let components = path_components(inputs).0.len();
        let held = path_edges::LAYERS_PER_PRODUCT.min(layers.max(1));
        per_token += 3 * h * d * held + upstreams * d + 2 * components;
    }
    let tokens = budget_floats / per_token;
    (tokens / seq).clamp(1, n_prompts)
}

/// The gradients at the clean run. Under `kl` the objective needs the full model's END logits
/// before the backward, which costs one plain forward more.
fn clean_run(
    inputs: &AttributionInputs,
    targets: &[(u32, u32)],
    options: GradientOptions,
) -> Result<Gradients, AttributeError> {
    let full_logits = if inputs.metric == "kl" {
        let out = inputs
            .model
            .forward(
                inputs.ids,
                &crate::model::ForwardOptions::default(),
                &crate::model::NoInterventions,
            )
            .map_err(backward::GradientError::from)?;
        Some(out.logits.index_axis(Axis(1), 0).to_owned())
    } else {
        None
    };
    let objective =
        Objective::from_metric_name(inputs.metric, full_logits.as_ref().map(|l| l.view()))?;
    let clean = match inputs.circuit {
        None => backward::gradients(inputs.model, inputs.ids, targets, objective, options)?,
        Some(circuit) => backward::gradients_with_ablation(
            inputs.model,
            inputs.ids,
            targets,
            objective,
            options,
            circuit.hooks,
            circuit.kept,
        )?,
    };
    if let Some(f) = inputs.on_pass {
        f();
    }
    Ok(clean)
}

fn objective<'g>(metric: &str, clean: &'g Gradients) -> Result<Objective<'g>, AttributeError> {
    Ok(Objective::from_metric_name(metric, clean.logits.full())?)
}

/// `∂M/∂(activation)` as the scores read it: the clean run's (borrowed: `eap` copies nothing,
/// which for path edges would be 680 MB of head-input gradients at GPT-2 small, 32 × 16
/// tokens), or averaged over the integrated-gradient points (owned).
struct MeanGradients<'g> {
    /// Per layer `(B, T, H, d)`.
    z: Vec<Cow<'g, Array4<f32>>>,
    /// Per layer `(B, T, D)`.
    mlp_out: Vec<Cow<'g, Array3<f32>>>,
    /// Per layer, `[q, k, v]` each `(B, T, H, D)` (path edges only).
    head_inputs: Vec<Option<[Cow<'g, Array4<f32>>; 3]>>,
    /// Per layer `(B, T, D)`: the MLP's input (path edges into `mlp L`).
    mlp_in: Vec<Cow<'g, Array3<f32>>>,
    /// `(B, T, D)`: the final residual stream (path edges into the logits).
    resid_final: Cow<'g, Array3<f32>>,
}

impl<'g> MeanGradients<'g> {
    fn of(g: &'g Gradients) -> MeanGradients<'g> {
        MeanGradients {
            z: g.layers.iter().map(|l| Cow::Borrowed(&l.z)).collect(),
            mlp_out: g.layers.iter().map(|l| Cow::Borrowed(&l.mlp_out)).collect(),
            head_inputs: g
                .layers
                .iter()
                .map(|l| {
                    l.head_inputs.as_ref().map(|h| {
                        [
                            Cow::Borrowed(&h.q),
                            Cow::Borrowed(&h.k),
                            Cow::Borrowed(&h.v),
                        ]
                    })
                })
                .collect(),
            mlp_in: g.layers.iter().map(|l| Cow::Borrowed(&l.mlp_in)).collect(),
            resid_final: Cow::Borrowed(&g.resid_final),
        }
    }

    /// Takes the arrays of `g` (no copy).
    fn owned(g: Gradients) -> MeanGradients<'static> {
        let mut out = MeanGradients {
            z: Vec::new(),
            mlp_out: Vec::new(),
            head_inputs: Vec::new(),
            mlp_in: Vec::new(),
            resid_final: Cow::Owned(g.resid_final),
        };
        for l in g.layers {
            out.z.push(Cow::Owned(l.z));
            out.mlp_out.push(Cow::Owned(l.mlp_out));
            out.mlp_in.push(Cow::Owned(l.mlp_in));
            out.head_inputs.push(
                l.head_inputs
                    .map(|h| [Cow::Owned(h.q), Cow::Owned(h.k), Cow::Owned(h.v)]),
            );
        }
        out
    }

    fn add(&mut self, g: &Gradients) {
        for (layer, lg) in g.layers.iter().enumerate() {
            *self.z[layer].to_mut() += &lg.z;
            *self.mlp_out[layer].to_mut() += &lg.mlp_out;
            *self.mlp_in[layer].to_mut() += &lg.mlp_in;
            if let (Some(sum), Some(h)) = (&mut self.head_inputs[layer], &lg.head_inputs) {
                *sum[0].to_mut() += &h.q;
                *sum[1].to_mut() += &h.k;
                *sum[2].to_mut() += &h.v;
            }
        }
        *self.resid_final.to_mut() += &g.resid_final;
    }

    fn scale(&mut self, factor: f32) {
        for layer in 0..self.z.len() {
            *self.z[layer].to_mut() *= factor;
            *self.mlp_out[layer].to_mut() *= factor;
            *self.mlp_in[layer].to_mut() *= factor;
            if let Some(sum) = &mut self.head_inputs[layer] {
                sum.iter_mut().for_each(|a| *a.to_mut() *= factor);
            }
        }
        *self.resid_final.to_mut() *= factor;
    }
}

/// The gradients at `x̃ + α(x − x̃)`, `α = k/m` for `k = 1..m`, averaged. The last point is
/// the clean run itself (`α = 1` is taken as `x`, not recomputed, so `m = 1` is `eap` bit for
/// bit). The objective (and `kl`'s reference logits) stays the clean run's.
fn integrated_gradients<'g>(
    inputs: &AttributionInputs,
    targets: &[(u32, u32)],
    objective: Objective,
    options: GradientOptions,
    clean: &'g Gradients,
    steps: usize,
) -> Result<MeanGradients<'g>, AttributeError> {
    let x = &clean.activations.embed; // (B, T, D)
    let reference = match inputs.reference_embeddings {
        Some(r) => r.to_owned(),
        None => Array3::zeros(x.raw_dim()),
    }; // (B, T, D)
    let mut sum: Option<MeanGradients> = None;
    for k in 1..steps {
        let alpha = k as f32 / steps as f32;
        let point = &reference + &((x - &reference) * alpha); // (B, T, D)
        let g = backward::gradients_at_embeddings(
            inputs.model,
            inputs.ids,
            targets,
            objective,
            options,
            point.view(),
            inputs.circuit.map(|c| (c.hooks, c.kept)),
        )?;
        if let Some(f) = inputs.on_pass {
            f();
        }
        match &mut sum {
            None => sum = Some(MeanGradients::owned(g)),
            Some(s) => s.add(&g),
        }
    }
    let mut sum = match sum {
        None => MeanGradients::of(clean),
        Some(mut s) => {
            s.add(clean);
            s
        }
    };
    if steps > 1 {
        sum.scale(1.0 / steps as f32);
    }
    Ok(sum)
}

/// Sums per-(component, slot) values over prompts in prompt order, in f64.
///
/// Every component of a score set gets a value at every (prompt, query token, key token) its
/// caller visits, so prompt counts are kept per slot (pair), and the sums as one row over the
/// components per slot (pair): adding a value is an index, not a key built and looked up
/// (path edges add ~37,000 values per token of GPT-2 small). Each (component, slot) still sums
/// its values in prompt order, then token order, as its caller visits them.
struct Aggregate {
    /// The slot index of every token of every prompt, `(B, T_b)`.
    slot_ids: Vec<Vec<usize>>,
    /// Slot index → name.
    names: Vec<String>,
    additive: bool,
    components: Vec<Component>,
    /// (query slot, key slot or `usize::MAX`) → index into `cells`.
    index: HashMap<(usize, usize), usize>,
    cells: Vec<Cell>,
}

/// One slot (pair): the sum of each component's values, and how many prompts have it.
struct Cell {
    query: usize,
    key: Option<usize>,
    sums: Vec<f64>,
    n_prompts: usize,
    last_prompt: usize,
}

impl Aggregate {
    fn new(slots: &[Vec<String>], additive: bool, components: Vec<Component>) -> Aggregate {
        let mut names: Vec<String> = Vec::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let slot_ids = slots
            .iter()
            .map(|prompt| {
                prompt
                    .iter()
                    .map(|slot| {
                        *by_name.entry(slot.as_str()).or_insert_with(|| {
                            names.push(slot.clone());
                            names.len() - 1
                        })
                    })
                    .collect()
            })
            .collect();
        Aggregate {
            slot_ids,
            names,
            additive,
            components,
            index: HashMap::new(),
            cells: Vec::new(),
        }
    }

    /// The sums (one per component, in `components` order) of prompt `b`'s query token `q`
    /// (and key token `k`), prompt `b` counted once: the caller adds its values into them.
    fn row(&mut self, b: usize, q: usize, k: Option<usize>) -> &mut [f64] {
        let query = self.slot_ids[b][q];
        let key = k.map(|k| self.slot_ids[b][k]);
        let n_components = self.components.len();
        let cells = &mut self.cells;
        let i = *self
            .index
            .entry((query, key.unwrap_or(usize::MAX)))
            .or_insert_with(|| {
                cells.push(Cell {
                    query,
                    key,
                    sums: vec![0.0; n_components],
                    n_prompts: 0,
                    last_prompt: usize::MAX,
                });
                cells.len() - 1
            });
        let cell = &mut self.cells[i];
        if cell.last_prompt != b {
            cell.n_prompts += 1;
            cell.last_prompt = b;
        }
        &mut cell.sums
    }

    /// Every (component, slot) entry, ordered by component, then query slot name, then key
    /// slot name.
    fn finish(self) -> Vec<Entry> {
        let Aggregate {
            names,
            additive,
            components,
            cells,
            ..
        } = self;
        // The order is by component, then by cell: sorting each alone and nesting them gives
        // the same sequence as sorting every (component, cell) pair (half a million at GPT-2
        // small's path edges, a tenth of the scores' time when sorted as pairs).
        let mut component_order: Vec<usize> = (0..components.len()).collect();
        component_order.sort_by(|&a, &b| components[a].cmp(&components[b]));
        let mut cell_order: Vec<usize> = (0..cells.len()).collect();
        cell_order.sort_by(|&x, &y| {
            let name = |k: Option<usize>| k.map(|k| names[k].as_str());
            names[cells[x].query]
                .cmp(&names[cells[y].query])
                .then_with(|| name(cells[x].key).cmp(&name(cells[y].key)))
        });
        // Collected into one allocation of the final size: grown by doubling, the vector (half
        // a million entries, 50 MB at GPT-2 small's path edges) was reallocated into fresh pages
        // as it grew, and this function took 0.1 s of an `eap` call, most of it the kernel
        // zeroing those pages (`perf record`, 2026-12-04); now it no longer shows.
        let mut entries = Vec::with_capacity(component_order.len() * cell_order.len());
        entries.extend(
            (component_order.iter())
                .flat_map(|&c| cell_order.iter().map(move |&cell| (c, cell)))
                .map(|(c, i)| {
                    let cell = &cells[i];
                    let sum = cell.sums[c];
                    Entry {
                        component: components[c],
                        query: names[cell.query].clone(),
                        key: cell.key.map(|k| names[k].clone()),
                        score: if additive {
                            sum
                        } else {
                            sum / cell.n_prompts as f64
                        },
                        n_prompts: cell.n_prompts,
                    }
                }),
        );
        entries
    }
}

/// Every head, layer by layer: component `layer · H + head` of node and QK-edge score sets.
fn head_components(n_layers: usize, n_heads: usize) -> Vec<Component> {
    (0..n_layers)
        .flat_map(|layer| (0..n_heads).map(move |head| Component::Head(HeadId { layer, head })))
        .collect()
}

/// The slots in order of first occurrence, prompt by prompt.
pub fn slot_order(slots: &[Vec<String>]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for prompt in slots {
        for slot in prompt {
            if !order.contains(slot) {
                order.push(slot.clone());
            }
        }
    }
    order
}

/// `Σ_i (õ_i − o_i) g_i` in f64, `õ` given as f64 (the reference values are read that way).
fn delta_dot(
    ablated: &[f64],
    clean: ndarray::ArrayView1<f32>,
    gradient: ndarray::ArrayView1<f32>,
) -> f64 {
    ablated
        .iter()
        .zip(clean)
        .zip(gradient)
        .map(|((&a, &o), &g)| (a - o as f64) * g as f64)
        .sum()
}

fn node_scores(scored: &Scored, gradient: &MeanGradients, aggregate: &mut Aggregate) {
    let (inputs, clean) = (scored.inputs, scored.clean);
    let cache = &clean.activations;
    let n_layers = cache.layers.len();
    let (_, _, n_heads, d_head) = cache.layers[0].z.dim();
    let mut ablated = vec![0.0f64; d_head];
    for (local, &len) in clean.lengths.iter().enumerate() {
        let b = scored.offset + local;
        for t in 0..len {
            let row = aggregate.row(b, t, None);
            for (layer, lc) in cache.layers.iter().enumerate() {
                for h in 0..n_heads {
                    ablated.iter_mut().for_each(|x| *x = 0.0);
                    inputs.reference.add_z(layer, b, t, h, &mut ablated);
                    row[layer * n_heads + h] += delta_dot(
                        &ablated,
                        lc.z.slice(s![local, t, h, ..]),
                        gradient.z[layer].slice(s![local, t, h, ..]),
                    );
                }
                if inputs.mlps_in_scope {
                    row[n_layers * n_heads + layer] += mlp_delta_dot(
                        inputs.reference,
                        layer,
                        b,
                        t,
                        lc.mlp_out.slice(s![local, t, ..]),
                        gradient.mlp_out[layer].slice(s![local, t, ..]),
                    );
                }
            }
        }
    }
}

/// `(õ − o) · g` of an MLP output (`õ = 0` under zero ablation).
fn mlp_delta_dot(
    reference: &ReferenceValues,
    layer: usize,
    b: usize,
    t: usize,
    clean: ndarray::ArrayView1<f32>,
    gradient: ndarray::ArrayView1<f32>,
) -> f64 {
    let ablated: Vec<f64> = match reference.mlp_out(layer, b, t) {
        Some(r) => r.iter().map(|&x| x as f64).collect(),
        None => vec![0.0; clean.len()],
    };
    delta_dot(&ablated, clean, gradient)
}

fn qk_edge_scores(scored: &Scored, gradient: &MeanGradients, aggregate: &mut Aggregate) {
    let (inputs, clean) = (scored.inputs, scored.clean);
    let cache = &clean.activations;
    let (_, _, n_heads, d_head) = cache.layers[0].z.dim();
    let mut ablated = vec![0.0f64; d_head];
    let computed = ComputedTerms::of(inputs.circuit.map(|c| c.kept));
    for (local, &len) in clean.lengths.iter().enumerate() {
        let b = scored.offset + local;
        for q in 0..len {
            for k in 0..=q {
                let row = aggregate.row(b, q, Some(k));
                for (layer, lc) in cache.layers.iter().enumerate() {
                    let group = n_heads / lc.v.dim().2;
                    for h in 0..n_heads {
                        if !computed.contains(layer, b, q, h, k) {
                            // The circuit already holds this term at ẽ: ablating it changes
                            // nothing (its score stays 0).
                            continue;
                        }
                        let head = HeadId { layer, head: h };
                        ablated.iter_mut().for_each(|x| *x = 0.0);
                        inputs.reference.add_edge_term(head, b, q, k, &mut ablated);
                        // ẽ − e with the clean term e = A[q,k]·v[k] (values by key/value head
                        // under GQA), dotted with ∂M/∂z_h[q].
                        let a = lc.pattern[[local, h, q, k]] as f64;
                        let v = lc.v.slice(s![local, k, h / group, ..]);
                        let g = gradient.z[layer].slice(s![local, q, h, ..]);
                        row[layer * n_heads + h] += ablated
                            .iter()
                            .zip(v)
                            .zip(g)
                            .map(|((&r, &v), &g)| (r - a * v as f64) * g as f64)
                            .sum::<f64>();
                    }
                }
            }
        }
    }
}

/// (prompt, query token, head).
type PromptQueryHead = (usize, usize, usize);

/// Which QK-edge terms `A[q,k]·v[k]` a circuit's forward computes (all of them relative to the
/// full model): not those of a node-ablated head output, nor those edge-mean ablation holds at
/// their reference value.
struct ComputedTerms<'a> {
    kept: Option<backward::Kept<'a>>,
    /// Per layer: (prompt, query, head) → the computed keys, where only some are.
    partial: Vec<BTreeMap<PromptQueryHead, &'a [usize]>>,
}

impl<'a> ComputedTerms<'a> {
    fn of(kept: Option<backward::Kept<'a>>) -> ComputedTerms<'a> {
        let partial = kept
            .map(|k| {
                k.qk_terms
                    .iter()
                    .map(|layer| {
                        layer
                            .iter()
                            .map(|t| ((t.prompt, t.query, t.head), t.keys.as_slice()))
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default();
        ComputedTerms { kept, partial }
    }

    fn contains(&self, layer: usize, b: usize, q: usize, h: usize, k: usize) -> bool {
        let Some(kept) = self.kept else {
            return true;
        };
        if !kept.z[layer][[b, q, h]] {
            return false;
        }
        match self.partial.get(layer).and_then(|m| m.get(&(b, q, h))) {
            Some(keys) => keys.contains(&k),
            None => true,
        }
    }
}

/// Every path edge `(from, to)` that goes forward in `model`, upstream by upstream in
/// [`upstreams`] order, each into every downstream input it reaches in [`downstreams`] order.
pub fn path_edges(model: &Model, mlps: bool, embed: bool) -> Vec<(Upstream, Downstream)> {
    let config = &model.config;
    let downs = downstreams(config.n_layers, config.n_heads);
    let mut out = Vec::new();
    for u in upstreams(config.n_layers, config.n_heads, mlps, embed) {
        out.extend(
            downs
                .iter()
                .filter(|d| d.reads(u, config.residual))
                .map(|&d| (u, d)),
        );
    }
    out
}

/// Every upstream component a path edge can leave, in order: `embed` (when asked), then heads
/// layer by layer, then (in scope) each layer's MLP after its heads.
fn upstreams(n_layers: usize, n_heads: usize, mlps: bool, embed: bool) -> Vec<Upstream> {
    let mut out = Vec::new();
    if embed {
        out.push(Upstream::Embed);
    }
    for layer in 0..n_layers {
        out.extend((0..n_heads).map(|head| Upstream::Head(HeadId { layer, head })));
        if mlps {
            out.push(Upstream::Mlp(layer));
        }
    }
    out
}

/// Every downstream input: each head's q, k, v, each MLP, the logits.
fn downstreams(n_layers: usize, n_heads: usize) -> Vec<Downstream> {
    let mut out = Vec::new();
    for layer in 0..n_layers {
        for head in 0..n_heads {
            for which in [HeadInput::Q, HeadInput::K, HeadInput::V] {
                out.push(Downstream::Head(HeadId { layer, head }, which));
            }
        }
        out.push(Downstream::Mlp(layer));
    }
    out.push(Downstream::Logits);
    out
}

/// A downstream input as the backward names it.
pub fn reader_of(d: Downstream) -> backward::Reader {
    match d {
        Downstream::Head(h, input) => backward::Reader::Head {
            layer: h.layer,
            head: h.head,
            input,
        },
        Downstream::Mlp(layer) => backward::Reader::Mlp(layer),
        Downstream::Logits => backward::Reader::Logits,
    }
}

/// The path edges as components, in (upstream, downstream) order, and the index of each:
/// pair (i, j) of [`upstreams`] × [`downstreams`] is component `pair[i][j]`.
#[allow(clippy::type_complexity)]
fn path_components(inputs: &AttributionInputs) -> (Vec<Component>, Vec<Vec<Option<usize>>>) {
    let config = &inputs.model.config;
    let ups = upstreams(
        config.n_layers,
        config.n_heads,
        inputs.mlps_in_scope,
        inputs.embed_edges,
    );
    let downs = downstreams(config.n_layers, config.n_heads);
    let mut components = Vec::new();
    let pair = ups
        .iter()
        .map(|&u| {
            downs
                .iter()
                .map(|&d| {
                    d.reads(u, config.residual).then(|| {
                        components.push(Component::Path { from: u, to: d });
                        components.len() - 1
                    })
                })
                .collect()
        })
        .collect();
    (components, pair)
}

/// `attention`, `qkvo` and `dla` per QK edge (nodes: summed over keys).
fn cheap_scores(
    scored: &Scored,
    method: Method,
    granularity: Granularity,
    aggregate: &mut Aggregate,
) {
    let (inputs, clean) = (scored.inputs, scored.clean);
    let cache = &clean.activations;
    let (_, seq, n_heads, _) = cache.layers[0].z.dim();
    // dla: ∂M/∂(final residual) at END with the final norm's scale frozen, (B, D).
    let dla_direction = (method == Method::Dla).then(|| {
        let x = Array2::from_shape_fn(
            (clean.lengths.len(), cache.resid_final.dim().2),
            |(b, i)| cache.resid_final[[b, clean.lengths[b] - 1, i]],
        ); // (B, D)
        backward::frozen_final_norm_backward(inputs.model, x.view(), clean.final_normed_end.view())
    });
    for (local, &len) in clean.lengths.iter().enumerate() {
        let b = scored.offset + local;
        for (layer, lc) in cache.layers.iter().enumerate() {
            let group = n_heads / lc.v.dim().2;
            for h in 0..n_heads {
                let w_o = backward::head_output_weight(inputs.model, layer, h); // (d, D)
                                                                                // Per key: v[k] W_O^h, (T, D); its norm for qkvo, its direct effect for dla.
                let written = lc.v.slice(s![local, .., h / group, ..]).dot(&w_o); // (T, D)
                let per_key: Vec<f64> = match &dla_direction {
                    Some(u) => written
                        .dot(&u.row(local))
                        .iter()
                        .map(|&x| x as f64)
                        .collect(),
                    None => written
                        .rows()
                        .into_iter()
                        .map(|r| r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt())
                        .collect(),
                };
                debug_assert_eq!(per_key.len(), seq);
                // dla: only END's row reaches the logits directly.
                let queries: Vec<usize> = match method {
                    Method::Dla => vec![len - 1],
                    _ => (0..len).collect(),
                };
                for q in queries {
                    for (k, &per_key) in per_key.iter().enumerate().take(q + 1) {
                        let a = lc.pattern[[local, h, q, k]] as f64;
                        let value = match method {
                            Method::Attention => a,
                            _ => a * per_key,
                        };
                        let key = (granularity == Granularity::QkEdges).then_some(k);
                        aggregate.row(b, q, key)[layer * n_heads + h] += value;
                    }
                }
            }
        }
    }
}
