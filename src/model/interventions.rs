//! Named intervention points: the only places where a forward pass may be edited.
//!
//! The model knows nothing of circuits. The ablation stage implements [`Interventions`] and the
//! engine calls each method at exactly one place per layer. Every method defaults to "no edit",
//! so an unedited forward is `model.forward(.., &NoInterventions)`.
//!
//! Shapes use `B` prompts (right-padded to a common length `T`), `H` query heads, `d` = d_head,
//! `D` = d_model. Right padding with a causal mask means a real token never attends to padding,
//! so position `t` of a prompt means the same thing in every batch it is run in.

use ndarray::{Array3, ArrayView3, ArrayView4, ArrayViewMut3, ArrayViewMut4};

/// Which input of a head a path edge enters through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInput {
    Q,
    K,
    V,
}

/// Per-component outputs already written to the residual stream in the current forward pass,
/// handed to the path-edge hooks so they can rebuild a downstream input from chosen upstream
/// components. Only filled when [`Interventions::needs_component_outputs`] says so.
pub struct ComponentOutputs<'a> {
    /// Token (+ learned position) embedding, `(B, T, D)`.
    pub embed: ArrayView3<'a, f32>,
    /// One entry per finished attention layer: head `h`'s own write `z_h · W_O^h`, without the
    /// output bias, `(B, T, H, D)`. Bias terms belong to no head and are always kept.
    pub head_out: &'a [ndarray::Array4<f32>],
    /// The attention output bias per finished layer, `(D,)` (zeros where the model has none).
    pub attn_bias: &'a [ndarray::Array1<f32>],
    /// One entry per finished MLP: its output, `(B, T, D)`.
    pub mlp_out: &'a [Array3<f32>],
}

pub trait Interventions: Sync {
    /// Whether these hooks leave every quantity as it is and observe nothing, as
    /// [`NoInterventions`] does. Only then may the engine skip work whose results no hook could
    /// see: with END-only logits and no cache, the last layer runs its queries, attention output
    /// and MLP at each prompt's END row alone. Defaults to `false`, which is always safe.
    fn is_identity(&self) -> bool {
        false
    }

    /// Whether [`Interventions::edit_mlp_out`] of `layer` overwrites the MLP's output at every
    /// real row of every prompt of the batch (rows past a prompt's length aside) with values
    /// that do not read it: node ablation of that MLP everywhere. In a pass that keeps no
    /// activation cache the engine then skips the MLP (and its `mlp_input`) and hands
    /// `edit_mlp_out` zeros; the real rows come out the same. Defaults to `false`, which is
    /// always safe.
    fn replaces_mlp_out(&self, _layer: usize) -> bool {
        false
    }

    /// The input embeddings (token + learned position embedding) `(B, T, D)`, before layer 0
    /// reads them. Integrated-gradient scores (`circuit scores --method eap-ig`) replace them by
    /// points between a reference embedding and the clean one.
    fn edit_embed(&self, _embed: &mut ArrayViewMut3<f32>) {}

    /// Pre-softmax, scaled attention scores of `layer`, `(B, H, T_q, T_k)`, with the causal
    /// mask already applied (`-inf` above the diagonal). Attention knockout writes `-inf` here;
    /// a query row left with no finite score gets an all-zero pattern (it reads nothing).
    fn edit_scores(&self, _layer: usize, _scores: &mut ArrayViewMut4<f32>) {}

    /// Per-head attention outputs `z`, `(B, T, H, d)`, before `W_O`, given the pattern
    /// `(B, H, T_q, T_k)` and the values indexed by query head `(B, T, H, d)` (under
    /// grouped-query attention the engine expands each key/value head to the query heads that
    /// share it). Node ablation and QK-edge ablation edit `z` here, since
    /// `z[b, q, h] = Σ_k pattern[b, h, q, k] · v[b, k, h]`.
    fn edit_z(
        &self,
        _layer: usize,
        _pattern: ArrayView4<f32>,
        _v: ArrayView4<f32>,
        _z: &mut ArrayViewMut4<f32>,
    ) {
    }

    /// The MLP's output `(B, T, D)` of `layer`, before it is added to the residual stream.
    fn edit_mlp_out(&self, _layer: usize, _mlp_out: &mut ArrayViewMut3<f32>) {}

    /// Whether the engine must record [`ComponentOutputs`] for the path-edge hooks below
    /// (costs one `(B, T, H, D)` array per layer).
    fn needs_component_outputs(&self) -> bool {
        false
    }

    /// Path edges into a head: the residual stream (pre-norm, `(B, T, D)`) that head `head`
    /// of `layer` reads for its `which` input. `None` (the default) means the shared residual
    /// stream `resid_pre`. The engine applies the layer's norm to whatever is returned.
    fn head_input(
        &self,
        _layer: usize,
        _head: usize,
        _which: HeadInput,
        _resid_pre: ArrayView3<f32>,
        _outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        None
    }

    /// Path edges into an MLP: the residual stream it reads, `(B, T, D)`, pre-norm: its layer's
    /// `resid_mid` when wired sequentially, `resid_pre` under the parallel wiring (GPT-NeoX),
    /// where the MLP does not read its own layer's heads.
    fn mlp_input(
        &self,
        _layer: usize,
        _resid_read: ArrayView3<f32>,
        _outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        None
    }

    /// Path edges into the logits: the final residual stream `(B, T, D)`, before the final norm.
    fn unembed_input(
        &self,
        _resid_final: ArrayView3<f32>,
        _outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        None
    }
}

/// The unedited forward pass.
pub struct NoInterventions;

impl Interventions for NoInterventions {
    fn is_identity(&self) -> bool {
        true
    }
}
