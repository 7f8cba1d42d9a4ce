//! The backward pass: gradients of a metric at END, averaged over prompts, with respect to the
//! activations a circuit score needs (not the weights).
//!
//! [`gradients`] runs the clean forward with the [`ActivationCache`](super::ActivationCache),
//! then walks the layers backwards with the per-block backward functions of [`blocks`]. All
//! of it is f32, like the forward; the blocks are checked against finite differences in f64
//! and the whole pass against a torch autograd reference (`scripts/grad_reference.py`).
//!
//! What the cache lacks and is recomputed here from cached inputs (candidates for the
//! forward's recorder, which would save this work):
//! - the norm statistics (mean and `1/σ` per row for LayerNorm, `1/rms` for RMSNorm) of the
//!   attention norm, the MLP norm and the final norm: recomputed from `resid_pre`,
//!   `resid_mid` and `resid_final`;
//! - the MLP norm's output `norm(resid_mid)` and the MLP pre-activations (`c_fc` output for
//!   GPT-2; `gate` and `up` outputs for Llama): one `D × M` product (two for Llama) per
//!   layer, the largest recomputation;
//! - the rotary cos/sin tables (cheap);
//! - Qwen3's q and k projections before its per-head norms (the cache holds them after the
//!   norms and rotary): one `D × H·d` and one `D × Hkv·d` product per layer.
//!
//! Shapes: `B` prompts right-padded to `T`, `N = B·T` rows, `H` query heads, `Hkv` key/value
//! heads, `d` head size, `D` model width, `V` vocabulary.

pub(crate) mod blocks;
#[cfg(test)]
mod tests;

use miette::Diagnostic;
use ndarray::{s, Array1, Array2, Array3, Array4, ArrayView2, ArrayViewMut3, Axis, CowArray, Ix2};
use rayon::prelude::*;
use thiserror::Error;

use super::cache::rows_as_prompts;
use super::cache::CacheExtras;
use super::stored::WeightView;
use super::transformer::{per_head, Layer, Mlp, Norm, Positions};
use super::HeadInput;
use super::ResidualTopology;
use super::{ActivationCache, Model, ModelError, NoInterventions};
use blocks::EndMetric;

/// The scalar whose gradient is taken, per prompt at its END logits (averaged over prompts).
/// These are the `.circuit` metrics that have a gradient; see [`Objective::from_metric_name`].
#[derive(Clone, Copy, Debug)]
pub enum Objective<'a> {
    /// `logits[answer] − logits[distractor]`.
    LogitDiff,
    /// The answer's probability.
    Prob,
    /// The answer's log-probability.
    Logprob,
    /// `KL(full ‖ this run)` with the full model's END logits `(B, V)`. At the full model's own
    /// forward its gradient is exactly zero (the minimum).
    Kl { full_logits: ArrayView2<'a, f32> },
}

impl<'a> Objective<'a> {
    /// The objective for a metric named as `.circuit` files and reports name it
    /// (`crate::measure::metric_name`). `full_logits` is needed for `kl` only.
    pub fn from_metric_name(
        name: &str,
        full_logits: Option<ArrayView2<'a, f32>>,
    ) -> Result<Objective<'a>, GradientError> {
        match (name, full_logits) {
            ("logit_diff", _) => Ok(Objective::LogitDiff),
            ("prob", _) => Ok(Objective::Prob),
            ("logprob", _) => Ok(Objective::Logprob),
            ("kl", Some(full_logits)) => Ok(Objective::Kl { full_logits }),
            ("kl", None) => Err(GradientError::KlNeedsFullLogits),
            ("accuracy", _) => Err(GradientError::NoGradient {
                metric: name.to_string(),
            }),
            _ => Err(GradientError::UnknownMetric {
                metric: name.to_string(),
            }),
        }
    }
}

/// Why gradients cannot be computed.
#[derive(Debug, Error, Diagnostic)]
pub enum GradientError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Model(#[from] ModelError),

    #[error("the metric `{metric}` has no gradient")]
    #[diagnostic(
        code(circuit::model::no_gradient),
        help("accuracy is a step function of the logits (its gradient is zero almost everywhere); score with logit_diff, prob, logprob or kl")
    )]
    NoGradient { metric: String },

    #[error("unknown metric `{metric}`")]
    #[diagnostic(
        code(circuit::model::unknown_metric),
        help("the metrics with a gradient are logit_diff, prob, logprob and kl")
    )]
    UnknownMetric { metric: String },

    #[error("the `kl` metric needs the full model's END logits")]
    #[diagnostic(code(circuit::model::kl_needs_full_logits))]
    KlNeedsFullLogits,

    #[error("{what}")]
    #[diagnostic(code(circuit::model::gradient_inputs))]
    Inputs { what: String },
}

/// ∂M/∂(activations) of one layer, `M` the metric averaged over prompts. Rows past a prompt's
/// length are zero (nothing at END reads them).
#[derive(Debug)]
pub struct LayerGradients {
    /// The residual stream entering the layer, `(B, T, D)` (for layer 0, the embedding).
    pub resid_pre: Array3<f32>,
    /// Each head's output before `W_O`, `(B, T, H, d)`. The per-(query, key) term
    /// `A[q,k]·v[k]` of head `h` has this same gradient `∂M/∂z_h[q]`.
    pub z: Array4<f32>,
    /// The attention pattern `A`, `(B, H, T, T)`.
    pub pattern: Array4<f32>,
    /// Per-head q/k/v input gradients, when [`GradientOptions::head_inputs`] asked for them.
    pub head_inputs: Option<HeadInputGradients>,
    /// The residual stream (pre-norm) the MLP reads, through the MLP only (not the skip
    /// connection), `(B, T, D)`.
    pub mlp_in: Array3<f32>,
    /// The MLP's output, `(B, T, D)` (equal to ∂M/∂resid_post of the layer).
    pub mlp_out: Array3<f32>,
}

/// ∂M/∂(the residual stream as one head's q, k or v alone reads it), pre-norm: what a path
/// edge into `h.q`, `h.k` or `h.v` multiplies (the engine's `Interventions::head_input`).
/// By linearity the three summed over heads are the attention's share of ∂M/∂resid_pre.
#[derive(Debug)]
pub struct HeadInputGradients {
    /// `(B, T, H, D)`
    pub q: Array4<f32>,
    /// `(B, T, H, D)`: under grouped-query attention, the key as query head `h` reads it (not
    /// summed over its group).
    pub k: Array4<f32>,
    /// `(B, T, H, D)`, like `k`.
    pub v: Array4<f32>,
}

/// What [`gradients`] computes besides the z, pattern, MLP and residual gradients.
#[derive(Clone, Copy, Default)]
pub struct GradientOptions<'s> {
    /// Per-head q/k/v input gradients: `3 · (B, T, H, D)` per layer, as much memory as `3H`
    /// residual streams (for GPT-2 small at 32 × 16 tokens, 680 MB in all); only path-edge
    /// scores need them.
    pub head_inputs: bool,
    /// With `head_inputs`: hand each layer's to this as the backward produces them instead of
    /// keeping them in [`LayerGradients::head_inputs`] (which is then `None`), so that one
    /// layer's are held at a time, not all.
    pub head_input_sink: Option<&'s dyn HeadInputSink>,
    /// `M` is the mean over this many prompts, of which these are some (attribution scores a
    /// few prompts per pass: each pass's gradients carry the whole set's `1/P`); `None`: over
    /// these prompts.
    pub prompts_in_mean: Option<usize>,
}

impl std::fmt::Debug for GradientOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradientOptions")
            .field("head_inputs", &self.head_inputs)
            .field("head_input_sink", &self.head_input_sink.is_some())
            .field("prompts_in_mean", &self.prompts_in_mean)
            .finish()
    }
}

/// Takes the head-input gradients of [`GradientOptions::head_input_sink`]: path-edge scores
/// multiply each layer's at once (`attribute::path_edges`), which holds a third of the memory
/// a pass would otherwise need at GPT-2 small, and no copy of them for integrated gradients.
pub trait HeadInputSink: Sync {
    /// The forward's activations, after the forward and before the backward's first layer.
    fn forward(&self, activations: &ActivationCache);
    /// Layer `layer`'s gradients, last layer first.
    fn layer(&self, layer: usize, gradients: HeadInputGradients);
    /// An array of `shape` `(B, T, H, D)` that an earlier [`HeadInputSink::layer`] handed over
    /// and the sink is done with, for the backward to write a later layer's gradients into
    /// (it overwrites every element), or `None` for a fresh one. Each is megabytes (4.7 MB a
    /// pass of 8 prompts at GPT-2 small, three a layer), so fresh ones are fresh pages: their
    /// faults took 2–3% of an `eap` call (`perf record`, 2026-12-04).
    fn recycled(&self, shape: (usize, usize, usize, usize)) -> Option<Array4<f32>> {
        let _ = shape;
        None
    }
}

/// The result of [`gradients`].
#[derive(Debug)]
pub struct Gradients {
    /// One entry per layer.
    pub layers: Vec<LayerGradients>,
    /// The final residual stream, before the final norm, `(B, T, D)`: nonzero only at END.
    pub resid_final: Array3<f32>,
    /// The END logits of this forward the metric read.
    pub logits: EndLogits,
    /// Real token count per prompt.
    pub lengths: Vec<usize>,
    /// ∂M/∂(the final norm's output) at each prompt's END row, `(B, D)`: what the
    /// unembedding passes back (direct-logit attribution starts here).
    pub final_normed_end: Array2<f32>,
    /// The forward's activations (`o` of the attribution scores: z, pattern, v, MLP outputs).
    /// `head_out` is empty `(0, 0, 0, 0)` unless a circuit's path edges needed it (freed for
    /// memory; `z · W_O^h` is each head's write).
    pub activations: ActivationCache,
}

/// The END logits a gradient pass's metric read, one row per prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum EndLogits {
    /// Every token's, `(B, V)`: `prob`, `logprob` and `kl` read the whole distribution (the
    /// metric's values are `crate::measure::per_prompt_metrics` of these).
    Full(Array2<f32>),
    /// The answer's and the distractor's, `(B, 2)`: all that `logit_diff` reads. The pass
    /// computes these two from the final norm's END rows and does not run the unembedding's
    /// product ([`crate::model::LogitRows::Skipped`]); they equal the full product's entries to
    /// f32 rounding (the same terms, summed in another order).
    AnswerAndDistractor(Array2<f32>),
}

impl EndLogits {
    /// Every token's logits `(B, V)`, if the pass computed them.
    pub fn full(&self) -> Option<ArrayView2<'_, f32>> {
        match self {
            EndLogits::Full(logits) => Some(logits.view()),
            EndLogits::AnswerAndDistractor(_) => None,
        }
    }

    /// Prompt `b`'s (answer, distractor) logits.
    pub fn answer_and_distractor(&self, b: usize, targets: (u32, u32)) -> (f32, f32) {
        match self {
            EndLogits::Full(logits) => (
                logits[[b, targets.0 as usize]],
                logits[[b, targets.1 as usize]],
            ),
            EndLogits::AnswerAndDistractor(pair) => (pair[[b, 0]], pair[[b, 1]]),
        }
    }
}

/// Gradients of `M = mean_p metric_p(END logits of prompt p)` on the unedited forward of
/// `tokens`, `targets[p] = (answer, distractor)` token ids (the distractor is read by
/// `logit_diff` only).
pub fn gradients(
    model: &Model,
    tokens: &[Vec<u32>],
    targets: &[(u32, u32)],
    objective: Objective,
    options: GradientOptions,
) -> Result<Gradients, GradientError> {
    gradients_inner(
        model,
        tokens,
        targets,
        objective,
        options,
        &NoInterventions,
        None,
    )
}

fn check_embeddings(
    model: &Model,
    tokens: &[Vec<u32>],
    embeddings: ndarray::ArrayView3<f32>,
) -> Result<(), GradientError> {
    let seq = tokens.iter().map(Vec::len).max().unwrap_or(0);
    let expected = (tokens.len(), seq, model.config.d_model);
    if embeddings.dim() != expected {
        return Err(GradientError::Inputs {
            what: format!(
                "embeddings are {:?}, expected {expected:?} for these prompts",
                embeddings.dim()
            ),
        });
    }
    Ok(())
}

/// What a circuit's forward holds at constants, as the backward must see it: a constant passes
/// no gradient to what computed it. Prompts as in the forward; `T` its padded length.
#[derive(Clone, Copy, Debug)]
pub struct Kept<'a> {
    /// Per layer `(B, T, H)`: whether head `h`'s output `z` at token `t` is computed (`true`)
    /// or a constant (`false`: node ablation put a reference value there).
    pub z: &'a [ndarray::Array3<bool>],
    /// Per layer `(B, T)`: likewise for the MLP's output.
    pub mlp_out: &'a [Array2<bool>],
    /// Per layer: the (prompt, query, head) where only some terms `A[q,k]·v[k]` of `z[q]` are
    /// computed (edge-mean ablation of QK edges); the other keys' terms are constants. Empty
    /// under attention knockout, whose `-inf` scores the cached pattern already carries.
    pub qk_terms: &'a [Vec<KeptKeys>],
    /// The readers whose input the forward rebuilt from chosen writers (path edges).
    pub paths: &'a [PathReader],
}

/// The keys whose terms `A[q,k]·v[k]` are computed at one (prompt, query, head).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptKeys {
    pub prompt: usize,
    pub query: usize,
    pub head: usize,
    /// Ascending, each `≤ query`.
    pub keys: Vec<usize>,
}

/// An input of the residual stream a path edge can enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// Head `head` of `layer`, through its q, k or v input.
    Head {
        layer: usize,
        head: usize,
        input: super::HeadInput,
    },
    /// The MLP of a layer.
    Mlp(usize),
    /// The final norm and unembedding.
    Logits,
}

impl Reader {
    fn component(self) -> super::Component {
        match self {
            Reader::Head { layer, .. } => super::Component::Attention(layer),
            Reader::Mlp(layer) => super::Component::Mlp(layer),
            Reader::Logits => super::Component::Unembed,
        }
    }
}

/// A component that writes to the residual stream and that a path edge can leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    Head {
        layer: usize,
        head: usize,
    },
    Mlp(usize),
    /// The token (and position) embedding: a writer only edge-complete circuits ablate.
    Embed,
}

impl Writer {
    /// Its index along [`PathReader::reaches`]' last axis: heads `layer·H + head`, then MLPs
    /// `n_layers·H + layer`, then the embedding last (the plan's upstream order).
    pub fn index(self, n_layers: usize, n_heads: usize) -> usize {
        match self {
            Writer::Head { layer, head } => layer * n_heads + head,
            Writer::Mlp(layer) => n_layers * n_heads + layer,
            Writer::Embed => n_layers * n_heads + n_layers,
        }
    }

    fn component(self) -> super::Component {
        match self {
            Writer::Head { layer, .. } => super::Component::Attention(layer),
            Writer::Mlp(layer) => super::Component::Mlp(layer),
            Writer::Embed => super::Component::Embed,
        }
    }
}

/// A reader whose input is `resid − Σ_{u not reaching} (out_u − c_u)` with constants `c_u`.
#[derive(Clone, Debug)]
pub struct PathReader {
    pub reader: Reader,
    /// `(B, T, U)`, `U` indexed by [`Writer::index`]: whether writer `u`'s output in this
    /// forward reaches the input at token `t` of prompt `b` (else a constant stands in for it).
    pub reaches: Array3<bool>,
}

impl PathReader {
    /// Whether `writer`'s output at token `t` of prompt `b` reaches this reader (writers it
    /// does not read at all are the caller's to exclude).
    pub fn reached_by(&self, b: usize, t: usize, writer_index: usize) -> bool {
        self.reaches[[b, t, writer_index]]
    }
}

/// [`gradients`] of the forward with `hooks` in place, where `hooks` replaces exactly what
/// `kept` marks as constants by constants: node ablation of heads and MLPs, edge-mean
/// ablation of QK-edge terms, writers that do not reach a path-edge reader; attention knockout
/// (an edit of the scores) needs no mark. A constant passes no gradient to what computed it,
/// so the backward stops there: the gradient *at* a frozen entry (`LayerGradients::z`,
/// `mlp_out`) is still reported (what changing it would do), but none flows from it into the
/// layer below. A writer's gradient is the sum over the readers it reaches.
pub fn gradients_with_ablation(
    model: &Model,
    tokens: &[Vec<u32>],
    targets: &[(u32, u32)],
    objective: Objective,
    options: GradientOptions,
    hooks: &dyn super::Interventions,
    kept: Kept,
) -> Result<Gradients, GradientError> {
    gradients_inner(
        model,
        tokens,
        targets,
        objective,
        options,
        hooks,
        Some(kept),
    )
}

/// [`gradients`] of the forward whose input embeddings `(B, T, D)` (token + learned position
/// embedding, prompts right-padded to `T`) are `embeddings` instead of the tokens' own: the
/// entry point of integrated gradients (`eap-ig` interpolates between a reference embedding and
/// the clean one). The tokens still fix the lengths and END. The embedding is a leaf of the
/// forward, so these are the exact gradients of that forward. With `ablation`, a circuit's
/// hooks and what they hold constant are in place as in [`gradients_with_ablation`] (the hooks
/// must not edit the embedding themselves).
pub fn gradients_at_embeddings(
    model: &Model,
    tokens: &[Vec<u32>],
    targets: &[(u32, u32)],
    objective: Objective,
    options: GradientOptions,
    embeddings: ndarray::ArrayView3<f32>,
    ablation: Option<(&dyn super::Interventions, Kept)>,
) -> Result<Gradients, GradientError> {
    check_embeddings(model, tokens, embeddings)?;
    let (inner, kept) = match ablation {
        Some((hooks, kept)) => (hooks, Some(kept)),
        None => (&NoInterventions as &dyn super::Interventions, None),
    };
    let hooks = WithEmbeddings { inner, embeddings };
    gradients_inner(model, tokens, targets, objective, options, &hooks, kept)
}

/// A circuit's hooks with the input embedding replaced.
struct WithEmbeddings<'a> {
    inner: &'a dyn super::Interventions,
    embeddings: ndarray::ArrayView3<'a, f32>,
}

impl super::Interventions for WithEmbeddings<'_> {
    fn edit_embed(&self, embed: &mut ndarray::ArrayViewMut3<f32>) {
        embed.assign(&self.embeddings);
    }
    fn edit_scores(&self, layer: usize, scores: &mut ndarray::ArrayViewMut4<f32>) {
        self.inner.edit_scores(layer, scores)
    }
    fn edit_z(
        &self,
        layer: usize,
        pattern: ndarray::ArrayView4<f32>,
        v: ndarray::ArrayView4<f32>,
        z: &mut ndarray::ArrayViewMut4<f32>,
    ) {
        self.inner.edit_z(layer, pattern, v, z)
    }
    fn edit_mlp_out(&self, layer: usize, mlp_out: &mut ndarray::ArrayViewMut3<f32>) {
        self.inner.edit_mlp_out(layer, mlp_out)
    }
    fn needs_component_outputs(&self) -> bool {
        self.inner.needs_component_outputs()
    }
    fn head_input(
        &self,
        layer: usize,
        head: usize,
        which: super::HeadInput,
        resid_pre: ndarray::ArrayView3<f32>,
        outputs: &super::ComponentOutputs,
    ) -> Option<Array3<f32>> {
        self.inner
            .head_input(layer, head, which, resid_pre, outputs)
    }
    fn mlp_input(
        &self,
        layer: usize,
        resid_mid: ndarray::ArrayView3<f32>,
        outputs: &super::ComponentOutputs,
    ) -> Option<Array3<f32>> {
        self.inner.mlp_input(layer, resid_mid, outputs)
    }
    fn unembed_input(
        &self,
        resid_final: ndarray::ArrayView3<f32>,
        outputs: &super::ComponentOutputs,
    ) -> Option<Array3<f32>> {
        self.inner.unembed_input(resid_final, outputs)
    }
}

fn gradients_inner(
    model: &Model,
    tokens: &[Vec<u32>],
    targets: &[(u32, u32)],
    objective: Objective,
    options: GradientOptions,
    hooks: &dyn super::Interventions,
    kept: Option<Kept>,
) -> Result<Gradients, GradientError> {
    let transformer = &model.transformer;
    let unembed = transformer.unembed.as_ref().unwrap_or(&transformer.embed); // (V, D)
    let vocab = unembed.nrows();
    check_inputs(tokens, targets, &objective, vocab)?;

    // Path edges: each rebuilt reader's input is recomputed from the cached component outputs
    // with the hooks (as the forward built it), and its gradient kept, so that each writer's
    // gradient leaves out the readers it does not reach.
    let paths = kept.map(|k| k.paths).unwrap_or(&[]);
    let extras = CacheExtras {
        // Each head's own write `(B, T, H, D)` per layer is the cache's largest part (226 MB for
        // GPT-2 small at 32 × 16 tokens, and 1/12 of the forward's products) and only rebuilt
        // path-edge inputs read it (peak memory and time, `benches/eap.rs`).
        head_outputs: !paths.is_empty(),
        mlp_pre_activations: true,
    };
    // `logit_diff` reads two logits a prompt: computed below from the final norm's END rows,
    // without the unembedding's product.
    let logit_rows = match objective {
        Objective::LogitDiff => super::LogitRows::Skipped,
        _ => super::LogitRows::End,
    };
    let out = model.forward_for_backward(tokens, extras, logit_rows, hooks)?;
    let mut cache = out.cache.expect("asked for the cache");
    if let Some(sink) = options.head_input_sink.filter(|_| options.head_inputs) {
        sink.forward(&cache);
    }
    let (batch, seq, d_model) = cache.resid_final.dim();
    let n_rows = batch * seq;
    let (n_heads, d_head) = (transformer.n_heads, transformer.d_head);
    let group = n_heads / transformer.n_kv_heads;
    let rows = |a: &Array3<f32>| {
        a.view()
            .into_shape_with_order((n_rows, a.dim().2))
            .expect("cache arrays are standard layout")
            .to_owned()
    };
    let to3 = |a: Array2<f32>| a.into_shape_with_order((batch, seq, d_model)).unwrap();
    let end_rows: Vec<usize> = (out.lengths.iter().enumerate())
        .map(|(b, &len)| b * seq + len - 1)
        .collect();

    // ---- the metric and the final norm + unembedding -------------------------------------
    let prompts_in_mean = options.prompts_in_mean.unwrap_or(batch);
    let resid_final = rows(&cache.resid_final); // (N, D)
    let end_resid = resid_final.select(Axis(0), &end_rows); // (B, D)
    let mut d_logits = Array2::<f32>::zeros((batch, vocab)); // (B, V)
    let end_logits = match logit_rows {
        super::LogitRows::Skipped => {
            let pair =
                answer_and_distractor_logits(transformer, unembed, end_resid.view(), targets); // (B, 2)
            if let Some(prompt) = (0..batch).find(|&b| pair.row(b).iter().any(|x| !x.is_finite())) {
                return Err(model.non_finite_logits(tokens, prompt, hooks).into());
            }
            // ∂(answer − distractor)/∂(the two logits), M the mean over prompts; through
            // Gemma 2's cap to the product's.
            let weight = (1.0 / prompts_in_mean as f64) as f32;
            let mut d_pair = Array2::from_shape_fn((batch, 2), |(_, i)| [weight, -weight][i]);
            if let Some(cap) = transformer.scaling.final_logit_softcap {
                d_pair = blocks::soft_cap_backward(pair.view(), cap, d_pair.view());
            }
            for (b, &(answer, distractor)) in targets.iter().enumerate() {
                d_logits[[b, answer as usize]] += d_pair[[b, 0]];
                d_logits[[b, distractor as usize]] += d_pair[[b, 1]];
            }
            EndLogits::AnswerAndDistractor(pair)
        }
        _ => EndLogits::Full(out.logits.index_axis(Axis(1), 0).to_owned()),
    };
    if let EndLogits::Full(full) = &end_logits {
        for (b, &(answer, distractor)) in targets.iter().enumerate() {
            let logits = full.row(b).mapv(f64::from); // (V,)
            let full_row;
            let end_metric = match objective {
                Objective::LogitDiff => EndMetric::LogitDiff,
                Objective::Prob => EndMetric::Prob,
                Objective::Logprob => EndMetric::Logprob,
                Objective::Kl { full_logits } => {
                    full_row = full_logits.row(b).mapv(f64::from);
                    EndMetric::Kl {
                        full_logits: full_row.view(),
                    }
                }
            };
            let gradient = blocks::metric_backward(
                end_metric,
                logits.view(),
                answer as usize,
                distractor as usize,
            );
            // M is the mean over prompts.
            let scaled = gradient.mapv(|g| (g / prompts_in_mean as f64) as f32);
            d_logits.row_mut(b).assign(&scaled);
        }
    }
    if let (Some(cap), EndLogits::Full(capped)) =
        (transformer.scaling.final_logit_softcap, &end_logits)
    {
        // Gemma 2: the metric read the capped logits `(B, V)`; through the cap to the product's.
        d_logits = blocks::soft_cap_backward(capped.view(), cap, d_logits.view());
    }
    let d_normed = unembedding_backward(unembed, d_logits.view()); // (B, D)
    let d_end = norm_backward(&transformer.final_norm, end_resid.view(), d_normed.view()); // (B, D)
    let mut d_resid = Array2::<f32>::zeros((n_rows, d_model)); // (N, D): ∂M/∂resid_post
    for (&row, d) in end_rows.iter().zip(d_end.rows()) {
        d_resid.row_mut(row).assign(&d);
    }
    let d_resid_final = to3(d_resid.clone());

    let rotary = match &transformer.positions {
        Positions::Rotary { inv_freq } => Some(rotary_tables(inv_freq, seq)),
        Positions::Learned { .. } => None,
    };
    let scale = transformer.score_scale();
    let softcap = transformer.scaling.attn_logit_softcap;

    let topology = model.config.residual;
    let outputs = PathOutputs::take(&mut cache, transformer, !paths.is_empty());
    let mut read: Vec<(&PathReader, Array2<f32>)> = Vec::new(); // (reader, ∂M/∂input (N, D))
    if let Some(p) = paths.iter().find(|p| p.reader == Reader::Logits) {
        read.push((p, d_resid.clone()));
    }
    let n_layers = transformer.layers.len();
    let unreached = |read: &[(&PathReader, Array2<f32>)], writer: Writer| {
        unreached_gradient(read, writer, n_layers, n_heads, topology, seq, d_model)
    };

    let mut layers = Vec::with_capacity(transformer.layers.len());
    for (index, (layer, lc)) in transformer
        .layers
        .iter()
        .zip(&cache.layers)
        .enumerate()
        .rev()
    {
        let resid_pre = rows(&lc.resid_pre); // (N, D)
                                             // The stream the MLP read: resid_mid when wired sequentially, resid_pre in parallel.
        let parallel = transformer.residual == ResidualTopology::Parallel;
        let mlp_read = if parallel {
            resid_pre.clone()
        } else {
            rows(&lc.resid_mid)
        }; // (N, D)

        // ---- MLP: resid_post = mlp_read + mlp(norm(mlp input)) (+ attention, in parallel) -
        // ∂M/∂(MLP output): the readers it reaches.
        let mut d_mlp_out = d_resid.clone(); // (N, D)
        if let Some(c) = unreached(&read, Writer::Mlp(index)) {
            d_mlp_out -= &c;
        }
        let mlp_reader = paths.iter().find(|p| p.reader == Reader::Mlp(index));
        let rebuilt_mlp_in = mlp_reader.and_then(|_| {
            let input = hooks.mlp_input(
                index,
                rows_as_prompts(&mlp_read, batch, seq),
                &outputs.before(index + 1, index, cache.embed.view()),
            )?;
            Some(input.into_shape_with_order((n_rows, d_model)).unwrap())
        }); // (N, D)
        let mlp_in = rebuilt_mlp_in.as_ref().unwrap_or(&mlp_read); // (N, D)
                                                                   // The norm's output, recomputed only where the cache lacks what the MLP computed from it.
        let mlp_x = (lc.mlp_pre_activation.is_none() || layer.mlp_post_norm.is_some())
            .then(|| layer.mlp_norm.apply(mlp_in.view())); // (N, D)
                                                           // A frozen MLP output passes nothing back into the MLP.
        let d_mlp_through = match kept {
            Some(kept) => {
                let mut d = d_mlp_out.clone(); // (N, D)
                for ((b, t), &keep) in kept.mlp_out[index].indexed_iter() {
                    if !keep && t < seq {
                        d.row_mut(b * seq + t).fill(0.0);
                    }
                }
                d
            }
            None => d_mlp_out.clone(),
        };
        // Gemma 2: the MLP's output passed through its post-feedforward norm, at the MLP's own
        // output (recomputed).
        let d_mlp_through = match &layer.mlp_post_norm {
            Some(post_norm) => {
                let x = mlp_x.as_ref().expect("recomputed under a post-norm");
                let raw = layer.mlp.forward(x.view(), false).1; // (N, D)
                norm_backward(post_norm, raw.view(), d_mlp_through.view())
            }
            None => d_mlp_through,
        }; // (N, D)
        let recomputed;
        let pre = match (&lc.mlp_pre_activation, &mlp_x) {
            (Some(pre), _) => PreActivations {
                pre: pre.view(),
                up: lc.mlp_up.as_ref().map(|u| u.view()),
            },
            (None, Some(x)) => {
                recomputed = mlp_pre_activations(&layer.mlp, x.view());
                PreActivations {
                    pre: recomputed.0.view(),
                    up: recomputed.1.as_ref().map(|u| u.view()),
                }
            }
            (None, None) => unreachable!("the norm's output is recomputed without the cache's"),
        };
        let d_mlp_x = mlp_backward_where_nonzero(&layer.mlp, pre, d_mlp_through.view()); // (N, D)
        let d_mlp_in = norm_backward(&layer.mlp_norm, mlp_in.view(), d_mlp_x.view()); // (N, D)
                                                                                      // ∂M/∂(the attention's output): through the MLP too only when the MLP reads it (the
                                                                                      // input, rebuilt or not, is the stream it reads + constants).
        let d_mid = if parallel {
            d_resid.clone()
        } else {
            &d_resid + &d_mlp_in
        }; // (N, D)
        if let Some(p) = mlp_reader {
            read.push((p, d_mlp_in.clone()));
        }

        // ---- attention: resid_mid = resid_pre + z·W_O + b_O ------------------------------
        // (Gemma 2: + post_norm(z·W_O + b_O), through the norm at the recomputed o(z).)
        let d_o = match &layer.attn_post_norm {
            Some(post_norm) => {
                let z_rows = rows_of_heads(&lc.z); // (N, H·d)
                let o = layer.o.apply(z_rows.view()); // (N, D)
                norm_backward(post_norm, o.view(), d_mid.view())
            }
            None => d_mid.clone(),
        }; // (N, D)
        let mut d_z = linear_input_gradient(layer.o.weight.view(), d_o.view()); // (N, H·d)
        for h in 0..n_heads {
            if let Some(c) = unreached(
                &read,
                Writer::Head {
                    layer: index,
                    head: h,
                },
            ) {
                let w_o = head_output_weight(model, index, h); // (d, D)
                let mut cols = d_z.slice_mut(s![.., h * d_head..(h + 1) * d_head]);
                cols -= &c.dot(&w_o.t()); // (N, d)
            }
        }
        let d_z4 = d_z
            .into_shape_with_order((batch, seq, n_heads, d_head))
            .unwrap(); // (B, T, H, d)
                       // A frozen head output passes nothing back into the attention.
        let d_z_through = match kept {
            Some(kept) => {
                let mut d = d_z4.clone(); // (B, T, H, d)
                for ((b, t, h), &keep) in kept.z[index].indexed_iter() {
                    if !keep && t < seq {
                        d.slice_mut(s![b, t, h, ..]).fill(0.0);
                    }
                }
                d
            }
            None => d_z4.clone(),
        };
        // Which terms A[q,k]·v[k] were computed, where some were constants: (B, H, T, T).
        let computed = kept
            .map(|k| k.qk_terms.get(index).map(Vec::as_slice).unwrap_or(&[]))
            .filter(|terms| !terms.is_empty())
            .map(|terms| {
                let mut computed = Array4::from_elem((batch, n_heads, seq, seq), true);
                for t in terms {
                    let mut row = computed.slice_mut(s![t.prompt, t.head, t.query, ..]);
                    row.fill(false);
                    for &k in &t.keys {
                        row[k] = true;
                    }
                }
                computed
            });
        // The head inputs path edges rebuilt, recomputed: (head, input, (N, D)).
        let head_readers: Vec<(&PathReader, usize, HeadInput, Array2<f32>)> = paths
            .iter()
            .filter_map(|p| match p.reader {
                Reader::Head {
                    layer: l,
                    head,
                    input,
                } if l == index => {
                    let x = hooks.head_input(
                        index,
                        head,
                        input,
                        rows_as_prompts(&resid_pre, batch, seq),
                        &outputs.before(index, index, cache.embed.view()),
                    )?;
                    Some((
                        p,
                        head,
                        input,
                        x.into_shape_with_order((n_rows, d_model)).unwrap(),
                    ))
                }
                _ => None,
            })
            .collect();
        // Under grouped-query attention the cache keeps one key per key/value head; a rebuilt
        // k input gives its query head a key of its own, recomputed here for every head.
        let k_by_query_head =
            (group > 1 && head_readers.iter().any(|r| r.2 == HeadInput::K)).then(|| {
                let mut k = projections_by_query_head(
                    layer,
                    HeadInput::K,
                    &resid_pre,
                    &head_readers,
                    n_heads,
                    group,
                    d_head,
                ); // (N, H·d)
                if let Some(norms) = &layer.qk_norm {
                    k = per_head(&norms.k, k, d_head); // Qwen3's norm, before rotary
                }
                if let Some((cos, sin)) = &rotary {
                    blocks::rotate_half(&mut k, cos.view(), sin.view(), |r| r % seq, d_head, false);
                }
                k.into_shape_with_order((batch, seq, n_heads, d_head))
                    .unwrap() // (B, T, H, d)
            });
        let mut d_q = Array4::<f32>::zeros((batch, seq, n_heads, d_head)); // per query head
        let mut d_k = Array4::<f32>::zeros((batch, seq, n_heads, d_head)); // per query head
        let mut d_v = Array4::<f32>::zeros((batch, seq, n_heads, d_head)); // per query head
        let mut d_pattern = Array4::<f32>::zeros((batch, n_heads, seq, seq));
        // Each (prompt, head) on its own thread; results written back in a fixed order.
        let per_head: Vec<_> = (0..batch * n_heads)
            .into_par_iter()
            .map(|bh| {
                let (b, h) = (bh / n_heads, bh % n_heads);
                let kv = h / group;
                let k = match &k_by_query_head {
                    Some(k) => k.slice(s![b, .., h, ..]),
                    None => lc.k.slice(s![b, .., kv, ..]),
                };
                blocks::attention_backward(
                    lc.q.slice(s![b, .., h, ..]),
                    k,
                    lc.v_by_query_head.slice(s![b, .., h, ..]),
                    lc.pattern.slice(s![b, h, .., ..]),
                    d_z_through.slice(s![b, .., h, ..]),
                    scale,
                    softcap.map(|cap| (lc.scores.slice(s![b, h, .., ..]), cap)),
                    computed.as_ref().map(|c| c.slice(s![b, h, .., ..])),
                )
            })
            .collect();
        for (bh, grads) in per_head.into_iter().enumerate() {
            let (b, h) = (bh / n_heads, bh % n_heads);
            d_q.slice_mut(s![b, .., h, ..]).assign(&grads.q);
            d_k.slice_mut(s![b, .., h, ..]).assign(&grads.k);
            d_v.slice_mut(s![b, .., h, ..]).assign(&grads.v);
            d_pattern.slice_mut(s![b, h, .., ..]).assign(&grads.pattern);
        }
        let flat = |a: Array4<f32>| a.into_shape_with_order((n_rows, n_heads * d_head)).unwrap();
        let (mut d_q, mut d_k, mut d_v) = (flat(d_q), flat(d_k), flat(d_v)); // (N, H·d) each
        if let Some((cos, sin)) = &rotary {
            // The cache holds q and k after rotary; their gradients before it are turned back.
            blocks::rotate_half_backward(&mut d_q, cos.view(), sin.view(), |r| r % seq, d_head);
            blocks::rotate_half_backward(&mut d_k, cos.view(), sin.view(), |r| r % seq, d_head);
        }
        if let Some(norms) = &layer.qk_norm {
            // Qwen3 normed each head's q and k before rotary: back through the norms, at the
            // projections each query head normed (recomputed from the input it read).
            let projected = |which| {
                projections_by_query_head(
                    layer,
                    which,
                    &resid_pre,
                    &head_readers,
                    n_heads,
                    group,
                    d_head,
                )
            }; // (N, H·d)
            let (q_proj, k_proj) = (projected(HeadInput::Q), projected(HeadInput::K));
            d_q = blocks::per_head_norm_backward(q_proj.view(), d_q.view(), d_head, |x, dy| {
                norm_backward(&norms.q, x, dy)
            }); // (N, H·d)
            d_k = blocks::per_head_norm_backward(k_proj.view(), d_k.view(), d_head, |x, dy| {
                norm_backward(&norms.k, x, dy)
            }); // (N, H·d)
        }

        // The attention norm's backward at the shared stream, its statistics computed once
        // (path edges take 3·H head-input gradients a layer through it).
        let shared_norm = norm_backward_at(&layer.attn_norm, resid_pre.view());
        let rebuilt_input = |h: usize, which: HeadInput| {
            head_readers
                .iter()
                .find(|r| r.1 == h && r.2 == which)
                .map(|r| &r.3) // (N, D)
        };
        // ∂M/∂(the residual stream one head's q, k or v reads), pre-norm, at the input that
        // head read (rebuilt by path edges, or resid_pre), into `target` (B, T, D): first
        // ∂M/∂(the normed input its projection reads), then back through the norm in place.
        // (Into `target` itself, often one head's slice of a `(B, T, H, D)` array: a product
        // into a fresh `(N, D)` array and a copy took a third longer, 3·H times a layer.)
        let input_gradient_into =
            |h: usize, which: HeadInput, d_proj: &Array2<f32>, target: &mut ArrayViewMut3<f32>| {
                let (linear, source) = match which {
                    HeadInput::Q => (&layer.q, h),
                    HeadInput::K => (&layer.k, h / group),
                    HeadInput::V => (&layer.v, h / group),
                };
                let d_head_proj = d_proj.slice(s![.., h * d_head..(h + 1) * d_head]); // (N, d)
                let weight = linear
                    .weight
                    .view()
                    .columns(source * d_head..(source + 1) * d_head); // (D, d)
                let mut rows = target.view_mut();
                assert!(
                    rows.merge_axes(Axis(0), Axis(1)),
                    "a prompt's rows follow the previous prompt's"
                );
                let mut rows = rows.index_axis_mut(Axis(0), 0); // (N, D)
                super::linalg::matmul_into(d_head_proj, weight.t(), 0.0, &mut rows);
                match rebuilt_input(h, which) {
                    Some(input) => {
                        norm_backward_at(&layer.attn_norm, input.view()).apply_in_place(target)
                    }
                    None => shared_norm.apply_in_place(target),
                }
            };
        let input_gradient = |h: usize, which: HeadInput, d_proj: &Array2<f32>| {
            let mut g = Array3::<f32>::zeros((batch, seq, d_model));
            input_gradient_into(h, which, d_proj, &mut g.view_mut());
            g.into_shape_with_order((n_rows, d_model)).unwrap() // (N, D)
        };
        // Every head's own input gradients, when asked for, and their sum: the attention's
        // whole share of ∂M/∂resid_pre (rebuilt inputs' included), so that the shared
        // stream's product below is not computed a second time (3·D² multiply-adds a token
        // and layer, a quarter of the layer's backward). The sum rounds differently from that
        // product: with head inputs the other gradients agree with the pass without them to
        // f32 rounding, not bit for bit (tests/backward_gradients.rs).
        let mut heads_sum = None; // (N, D)
        let head_inputs = options
            .head_inputs
            .then(|| {
                // Heads in parallel: each head's product has only `d` inner terms and its norm
                // backward runs row by row, so one product at a time kept a second thread
                // idle (2 threads took as long as 1, `benches/eap.rs`). Each head's values
                // are computed alone, so they do not depend on the thread count.
                let per_head = |which: HeadInput, d_proj: &Array2<f32>| {
                    let shape = (batch, seq, n_heads, d_model);
                    let mut out = (options.head_input_sink)
                        .and_then(|sink| sink.recycled(shape))
                        .filter(|out| out.dim() == shape)
                        .unwrap_or_else(|| Array4::<f32>::zeros(shape)); // (B, T, H, D)
                    out.axis_iter_mut(Axis(2))
                        .into_par_iter()
                        .enumerate()
                        .for_each(|(h, mut target)| {
                            input_gradient_into(h, which, d_proj, &mut target) // (B, T, D)
                        });
                    out
                };
                let gradients = HeadInputGradients {
                    q: per_head(HeadInput::Q, &d_q),
                    k: per_head(HeadInput::K, &d_k),
                    v: per_head(HeadInput::V, &d_v),
                };
                heads_sum = Some(sum_of_head_inputs(&gradients, n_rows));
                match options.head_input_sink {
                    Some(sink) => {
                        sink.layer(index, gradients);
                        None
                    }
                    None => Some(gradients),
                }
            })
            .flatten();
        // Rebuilt inputs: their gradients reach the stream as they are (the input is
        // resid_pre + constants) and are kept for the writers below; their projections leave
        // the shared path.
        let rebuilt_gradients: Vec<Array2<f32>> = (head_readers.iter())
            .map(|(_, h, which, _)| {
                let d_proj = match which {
                    HeadInput::Q => &d_q,
                    HeadInput::K => &d_k,
                    HeadInput::V => &d_v,
                };
                input_gradient(*h, *which, d_proj) // (N, D)
            })
            .collect();
        // ∂M/∂resid_pre (N, D)
        d_resid = match heads_sum {
            Some(sum) => &d_mid + &sum, // every head's, rebuilt or shared
            None => {
                for (_, h, which, _) in &head_readers {
                    let d_proj = match which {
                        HeadInput::Q => &mut d_q,
                        HeadInput::K => &mut d_k,
                        HeadInput::V => &mut d_v,
                    };
                    d_proj
                        .slice_mut(s![.., h * d_head..(h + 1) * d_head])
                        .fill(0.0);
                }
                // The shared residual stream: every other head's q, k, v read the same
                // normed input.
                let d_k_shared = blocks::sum_query_heads_per_kv_head(d_k.view(), group, d_head); // (N, Hkv·d)
                let d_v_shared = blocks::sum_query_heads_per_kv_head(d_v.view(), group, d_head); // (N, Hkv·d)
                let d_x = linear_input_gradient(layer.q.weight.view(), d_q.view())
                    + linear_input_gradient(layer.k.weight.view(), d_k_shared.view())
                    + linear_input_gradient(layer.v.weight.view(), d_v_shared.view()); // (N, D)
                let d_attn_in = shared_norm.apply(d_x.view()); // (N, D)
                let mut d_rebuilt = Array2::<f32>::zeros((n_rows, d_model)); // (N, D)
                for g in &rebuilt_gradients {
                    d_rebuilt += g;
                }
                &d_mid + &d_attn_in + &d_rebuilt
            }
        };
        read.extend(head_readers.iter().map(|r| r.0).zip(rebuilt_gradients));
        if parallel {
            d_resid += &d_mlp_in; // the MLP read resid_pre itself
        }

        layers.push(LayerGradients {
            resid_pre: to3(d_resid.clone()),
            z: d_z4,
            pattern: d_pattern,
            head_inputs,
            mlp_in: to3(d_mlp_in),
            mlp_out: to3(d_mlp_out),
        });
    }
    outputs.put_back(&mut cache);
    layers.reverse();
    Ok(Gradients {
        layers,
        resid_final: d_resid_final,
        logits: end_logits,
        lengths: out.lengths,
        final_normed_end: d_normed,
        activations: cache,
    })
}

/// `Σ_h (q + k + v)[.., .., h, ..]` of one layer's head-input gradients, `(N, D)`, summed in
/// order: q's heads, then k's, then v's (the same bits at any thread count).
fn sum_of_head_inputs(gradients: &HeadInputGradients, n_rows: usize) -> Array2<f32> {
    let (_, _, n_heads, d_model) = gradients.q.dim();
    let mut sum = Array2::<f32>::zeros((n_rows, d_model)); // (N, D)
    for per_head in [&gradients.q, &gradients.k, &gradients.v] {
        let rows = per_head
            .view()
            .into_shape_with_order((n_rows, n_heads, d_model))
            .expect("head-input gradients are standard layout"); // (N, H, D)
        ndarray::Zip::from(sum.rows_mut())
            .and(rows.outer_iter())
            .for_each(|mut sum, heads| {
                for head in heads.outer_iter() {
                    sum += &head;
                }
            });
    }
    sum
}

/// The final norm's backward with its scale frozen at the forward's value: for END rows `x`
/// `(B, D)` of the final residual stream and `dy` `(B, D)` (∂M/∂ the norm's output, e.g.
/// [`Gradients::final_normed_end`]), returns `(B, D)` directions `u` with
/// `ΔM ≈ u · Δx` for a write `Δx` into the residual stream *if the norm's scale stayed put*:
/// LayerNorm `u = centre(w ⊙ dy) / σ` (its centring is linear, so it is applied), RMSNorm
/// `u = w ⊙ dy / rms`. Direct-logit attribution (`dla`) multiplies these by a head's write.
pub fn frozen_final_norm_backward(
    model: &Model,
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
) -> Array2<f32> {
    match &model.transformer.final_norm {
        Norm::Layer { weight, eps, .. } => {
            blocks::layernorm_frozen_scale_backward(x, weight.view(), *eps, dy)
        }
        Norm::Rms { weight, eps } => {
            blocks::rmsnorm_frozen_scale_backward(x, weight.view(), *eps, dy)
        }
    }
}

/// `W_O` of one head, `(d, D)`: the rows of the output projection that head's `z` multiplies
/// (a converted copy when the weights are kept in their stored dtype).
pub fn head_output_weight(model: &Model, layer: usize, head: usize) -> CowArray<'_, f32, Ix2> {
    let d = model.transformer.d_head;
    model.transformer.layers[layer]
        .o
        .weight
        .view()
        .rows(head * d..(head + 1) * d)
        .f32()
}

fn check_inputs(
    tokens: &[Vec<u32>],
    targets: &[(u32, u32)],
    objective: &Objective,
    vocab: usize,
) -> Result<(), GradientError> {
    let fail = |what: String| Err(GradientError::Inputs { what });
    if tokens.is_empty() {
        return fail("gradients need at least one prompt".to_string());
    }
    if targets.len() != tokens.len() {
        return fail(format!(
            "{} prompts but {} (answer, distractor) pairs",
            tokens.len(),
            targets.len()
        ));
    }
    if let Some((p, &(a, d))) =
        (targets.iter().enumerate()).find(|(_, &(a, d))| a as usize >= vocab || d as usize >= vocab)
    {
        return fail(format!(
            "prompt #{p}: target ids ({a}, {d}) outside the vocabulary of {vocab}"
        ));
    }
    if let Objective::Kl { full_logits } = objective {
        if full_logits.dim() != (tokens.len(), vocab) {
            return fail(format!(
                "the full model's END logits are {:?}, expected ({}, {vocab})",
                full_logits.dim(),
                tokens.len()
            ));
        }
    }
    Ok(())
}

/// The input gradient of a linear layer, `dx = dy·Wᵀ` (`W` stored `(in, out)`): (N, out) →
/// (N, in). The same math as `blocks::linear_backward` (generic, for the f64 tests), computed
/// with the engine's product kernels (`linalg::matmul`: on AVX-512 CPUs the gemm crate, faster
/// than ndarray's `dot` at every shape of `benches/gemm.rs`), since these products are most of
/// the backward's time (`benches/eap.rs`).
/// A weight kept in its stored dtype goes through the products' panel conversion
/// (`stored::product_into`) like the forward's.
fn linear_input_gradient<'w>(
    weight: impl Into<WeightView<'w>>,
    dy: ArrayView2<f32>,
) -> Array2<f32> {
    super::matmul(dy, weight.into().t())
}

/// `d_logits · W_U`, `(B, D)`, through the `(V, D)` unembedding. Under `logit_diff` a prompt's
/// gradient is nonzero at two logits only, so its row is two rows of `W_U` (in vocabulary
/// order) instead of a product that reads the whole matrix (154 MB at GPT-2 small, on every
/// gradient pass); a dense gradient (`prob`, `logprob`, `kl`) takes the product.
fn unembedding_backward(unembed: &super::stored::Weight, d_logits: ArrayView2<f32>) -> Array2<f32> {
    /// Nonzero logits per prompt up to which rows are gathered instead.
    const GATHERED: usize = 8;
    let nonzero: Vec<Vec<(usize, f32)>> = d_logits
        .rows()
        .into_iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|(_, &g)| g != 0.0)
                .map(|(v, &g)| (v, g))
                .take(GATHERED + 1)
                .collect()
        })
        .collect();
    if nonzero.iter().any(|n| n.len() > GATHERED) {
        return super::matmul(d_logits, unembed.view()); // (B, D)
    }
    let d_model = unembed.ncols();
    let mut out = Array2::<f32>::zeros((d_logits.nrows(), d_model)); // (B, D)
    let mut w_row = Array1::<f32>::zeros(d_model); // (D,)
    for (mut row, entries) in out.rows_mut().into_iter().zip(&nonzero) {
        for &(v, g) in entries {
            unembed.row_into(v, w_row.view_mut());
            row.scaled_add(g, &w_row);
        }
    }
    out
}

/// Each prompt's (answer, distractor) END logits `(B, 2)` from its END row of the final
/// residual stream `end_resid` `(B, D)`: the final norm, the two rows of the unembedding, and
/// Gemma 2's cap, as the forward's unembedding computes every token's.
fn answer_and_distractor_logits(
    transformer: &super::transformer::Transformer,
    unembed: &super::stored::Weight,
    end_resid: ArrayView2<f32>,
    targets: &[(u32, u32)],
) -> Array2<f32> {
    let normed = transformer.final_norm.apply(end_resid); // (B, D)
    let mut w_row = Array1::<f32>::zeros(normed.ncols()); // (D,)
    let mut pair = Array2::<f32>::zeros((targets.len(), 2)); // (B, 2)
    for (b, &(answer, distractor)) in targets.iter().enumerate() {
        for (i, token) in [answer, distractor].into_iter().enumerate() {
            unembed.row_into(token as usize, w_row.view_mut());
            let logit = normed.row(b).dot(&w_row);
            pair[[b, i]] = match transformer.scaling.final_logit_softcap {
                Some(cap) => super::transformer::soft_cap(logit, cap),
                None => logit,
            };
        }
    }
    pair
}

/// The backward of the engine's [`Norm`] at input rows `x` `(N, D)`.
fn norm_backward(norm: &Norm, x: ArrayView2<f32>, dy: ArrayView2<f32>) -> Array2<f32> {
    norm_backward_at(norm, x).apply(dy)
}

/// The backward of the engine's [`Norm`] at input rows `x` `(N, D)`, its statistics computed
/// once for many gradients.
fn norm_backward_at<'n>(norm: &'n Norm, x: ArrayView2<f32>) -> blocks::NormBackwardAt<'n, f32> {
    match norm {
        Norm::Layer { weight, eps, .. } => blocks::NormBackwardAt::layer(x, weight.view(), *eps),
        Norm::Rms { weight, eps } => blocks::NormBackwardAt::rms(x, weight.view(), *eps),
    }
}

/// The inputs of an MLP's activation: `c_fc(x)` (or a gated MLP's `gate(x)`) and a gated MLP's
/// `up(x)`, each `(N, M)`, as the forward computed them.
struct PreActivations<'a> {
    pre: ArrayView2<'a, f32>,
    up: Option<ArrayView2<'a, f32>>,
}

/// [`PreActivations`] recomputed from the MLP's (normed) input `x` `(N, D)` (when the forward's
/// cache does not hold them), with the forward's own products.
fn mlp_pre_activations(mlp: &Mlp, x: ArrayView2<f32>) -> (Array2<f32>, Option<Array2<f32>>) {
    match mlp {
        Mlp::GeluNew { fc, .. } | Mlp::GeluErf { fc, .. } => (fc.apply(x), None), // (N, M)
        Mlp::SwiGlu { gate, up, .. } | Mlp::GeGlu { gate, up, .. } => {
            (gate.apply(x), Some(up.apply(x))) // (N, M) each
        }
    }
}

/// [`mlp_backward`] on the rows where `d_out` is not zero, when those are at most half: the
/// last layer's output gradient is nonzero at each prompt's END row only (nothing reads the
/// last layer's other rows), so its MLP backward is `B` rows instead of `B·T` (at GPT-2 small
/// a twelfth of the MLP backward's products, about 1.7% of an `eap` call by its multiply-adds:
/// less than the bench's run-to-run noise, 2026-12-04). A row of zeros gives
/// zeros (`0·w` summed from a zero start, the activation's derivative times 0; the forward's
/// activations are finite), so the other rows are zero as before, and the computed rows are
/// the same sums (a product's row does not depend on how many rows share it, `linalg`).
fn mlp_backward_where_nonzero(
    mlp: &Mlp,
    pre: PreActivations,
    d_out: ArrayView2<f32>,
) -> Array2<f32> {
    let nonzero: Vec<usize> = (0..d_out.nrows())
        .filter(|&r| d_out.row(r).iter().any(|&g| g != 0.0))
        .collect();
    if 2 * nonzero.len() > d_out.nrows() {
        return mlp_backward(mlp, pre, d_out);
    }
    let rows = |a: ArrayView2<f32>| a.select(Axis(0), &nonzero);
    let (pre_rows, up_rows) = (rows(pre.pre), pre.up.map(rows)); // (R, M)
    let picked = PreActivations {
        pre: pre_rows.view(),
        up: up_rows.as_ref().map(|u| u.view()),
    };
    let d_rows = mlp_backward(mlp, picked, rows(d_out).view()); // (R, D)
    let mut d_in = Array2::<f32>::zeros((d_out.nrows(), d_rows.ncols())); // (N, D)
    for (&r, row) in nonzero.iter().zip(d_rows.rows()) {
        d_in.row_mut(r).assign(&row);
    }
    d_in
}

/// The backward of the engine's [`Mlp`] at its activations' inputs `pre`: `dx` `(N, D)` of its
/// (normed) input from `d_out` `(N, D)`.
fn mlp_backward(mlp: &Mlp, pre: PreActivations, d_out: ArrayView2<f32>) -> Array2<f32> {
    match mlp {
        Mlp::GeluNew { fc, proj } | Mlp::GeluErf { fc, proj } => {
            let d_hidden = linear_input_gradient(proj.weight.view(), d_out); // (N, M)
            let d_pre = match mlp {
                Mlp::GeluNew { .. } => blocks::gelu_new_backward_f32(pre.pre, d_hidden.view()),
                _ => blocks::gelu_erf_backward(pre.pre, d_hidden.view()),
            }; // (N, M)
            linear_input_gradient(fc.weight.view(), d_pre.view())
        }
        Mlp::SwiGlu { gate, up, down } | Mlp::GeGlu { gate, up, down } => {
            let up_pre = pre.up.expect("a gated MLP's up(x)"); // (N, M)
            let d_hidden = linear_input_gradient(down.weight.view(), d_out); // (N, M)
            let (d_gate, d_up) = match mlp {
                Mlp::GeGlu { .. } => blocks::geglu_backward_f32(pre.pre, up_pre, d_hidden.view()),
                _ => blocks::swiglu_backward(pre.pre, up_pre, d_hidden.view()),
            };
            linear_input_gradient(gate.weight.view(), d_gate.view())
                + linear_input_gradient(up.weight.view(), d_up.view())
        }
    }
}

/// The projections `(N, H·d)` of one attention input (`which`: q, k or v) indexed by query
/// head, as the forward computed them before any per-head norm and rotary: every head from the
/// layer's normed `resid_pre` `(N, D)` (under grouped-query attention a key/value head copied
/// for each query head of its group), except a head whose input a path edge rebuilt
/// (`head_readers`: (reader, head, input, its rebuilt input `(N, D)`)), from that input.
fn projections_by_query_head(
    layer: &Layer,
    which: HeadInput,
    resid_pre: &Array2<f32>,
    head_readers: &[(&PathReader, usize, HeadInput, Array2<f32>)],
    n_heads: usize,
    group: usize,
    d_head: usize,
) -> Array2<f32> {
    let (linear, group) = match which {
        HeadInput::Q => (&layer.q, 1),
        HeadInput::K => (&layer.k, group),
        HeadInput::V => (&layer.v, group),
    };
    let head = |h: usize| s![.., h * d_head..(h + 1) * d_head];
    let normed = layer.attn_norm.apply(resid_pre.view()); // (N, D)
    let shared = linear.apply(normed.view()); // (N, heads·d)
    let mut out = Array2::<f32>::zeros((resid_pre.nrows(), n_heads * d_head)); // (N, H·d)
    for h in 0..n_heads {
        out.slice_mut(head(h))
            .assign(&shared.slice(head(h / group)));
    }
    for (_, h, _, x) in head_readers.iter().filter(|r| r.2 == which) {
        let source = h / group;
        let x_normed = layer.attn_norm.apply(x.view()); // (N, D)
        let own = linear.apply_columns(x_normed.view(), source * d_head..(source + 1) * d_head); // (N, d)
        out.slice_mut(head(*h)).assign(&own);
    }
    out
}

/// `(B, T, H, d)` per-head outputs as `(N, H·d)` rows.
fn rows_of_heads(z: &Array4<f32>) -> Array2<f32> {
    let (batch, seq, n_heads, d_head) = z.dim();
    z.as_standard_layout()
        .into_owned()
        .into_shape_with_order((batch * seq, n_heads * d_head))
        .expect("standard layout")
}

/// cos and sin of `t · inv_freq[i]` for `t < seq`, `(T, d/2)` each, in f32 exactly as the
/// engine's forward builds them.
fn rotary_tables(inv_freq: &[f32], seq: usize) -> (Array2<f32>, Array2<f32>) {
    let angle = Array2::from_shape_fn((seq, inv_freq.len()), |(t, i)| t as f32 * inv_freq[i]);
    (angle.mapv(f32::cos), angle.mapv(f32::sin))
}

/// The per-component outputs of a cached forward, as the path-edge hooks were handed them
/// ([`super::ComponentOutputs`]), to rebuild a reader's input in the backward exactly as the
/// forward did. Taken out of the cache (no copy) and put back after the backward.
struct PathOutputs {
    head_out: Vec<Array4<f32>>,  // per layer (B, T, H, D)
    attn_bias: Vec<Array1<f32>>, // per layer (D,)
    mlp_out: Vec<Array3<f32>>,   // per layer (B, T, D)
}

impl PathOutputs {
    fn take(
        cache: &mut ActivationCache,
        transformer: &super::transformer::Transformer,
        wanted: bool,
    ) -> PathOutputs {
        if !wanted {
            return PathOutputs {
                head_out: Vec::new(),
                attn_bias: Vec::new(),
                mlp_out: Vec::new(),
            };
        }
        PathOutputs {
            head_out: (cache.layers.iter_mut())
                .map(|l| std::mem::take(&mut l.head_out))
                .collect(),
            attn_bias: (transformer.layers.iter())
                .map(|l| l.o_bias.clone())
                .collect(),
            mlp_out: (cache.layers.iter_mut())
                .map(|l| std::mem::take(&mut l.mlp_out))
                .collect(),
        }
    }

    /// What the forward handed a hook after `head_layers` attention blocks and `mlp_layers`
    /// MLPs: a head of layer `l` sees `(l, l)`, the MLP of layer `l` sees `(l + 1, l)`.
    fn before<'a>(
        &'a self,
        head_layers: usize,
        mlp_layers: usize,
        embed: ndarray::ArrayView3<'a, f32>,
    ) -> super::ComponentOutputs<'a> {
        super::ComponentOutputs {
            embed,
            head_out: &self.head_out[..head_layers],
            attn_bias: &self.attn_bias[..head_layers],
            mlp_out: &self.mlp_out[..mlp_layers],
        }
    }

    fn put_back(self, cache: &mut ActivationCache) {
        for (layer, (head_out, mlp_out)) in cache
            .layers
            .iter_mut()
            .zip(self.head_out.into_iter().zip(self.mlp_out))
        {
            layer.head_out = head_out;
            layer.mlp_out = mlp_out;
        }
    }
}

/// `Σ` over the rebuilt readers that read `writer` but that its output does not reach (at a
/// token), of their input gradients `(N, D)`: what `∂M/∂(the stream)` counts for `writer`
/// and its own gradient must not. `None` when there is none.
fn unreached_gradient(
    read: &[(&PathReader, Array2<f32>)],
    writer: Writer,
    n_layers: usize,
    n_heads: usize,
    topology: super::ResidualTopology,
    seq: usize,
    d_model: usize,
) -> Option<Array2<f32>> {
    let u = writer.index(n_layers, n_heads);
    let mut sum: Option<Array2<f32>> = None;
    for (reader, gradient) in read {
        if !topology.reads(reader.reader.component(), writer.component()) {
            continue;
        }
        for ((b, t, _), &reaches) in reader.reaches.slice(s![.., .., u..u + 1]).indexed_iter() {
            if reaches || t >= seq {
                continue;
            }
            let row = b * seq + t;
            let total = sum.get_or_insert_with(|| Array2::zeros((gradient.nrows(), d_model)));
            let mut target = total.row_mut(row);
            target += &gradient.row(row);
        }
    }
    sum
}
