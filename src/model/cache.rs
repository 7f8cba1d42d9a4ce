//! What a forward pass keeps: the [`ActivationCache`] a caller asked for (or only the
//! [`SelectedActivations`] named by a [`CacheSelection`]), and the [`ComponentOutputs`] the
//! path-edge hooks read while the pass runs. One [`Recorder`] fills them from the blocks' traces
//! (`blocks.rs`), so there is one place that decides what is kept.

use std::collections::BTreeSet;

use ndarray::{s, Array1, Array2, Array3, Array4, ArrayView3};

use super::blocks::{AttentionTrace, MlpTrace};
use super::interventions::ComponentOutputs;

/// Every intermediate of a forward pass. Prompts are right-padded to `T`; rows past a prompt's
/// length are padding.
#[derive(Debug)]
pub struct ActivationCache {
    pub layers: Vec<LayerCache>,
    /// Token (+ learned position) embedding, `(B, T, D)`.
    pub embed: Array3<f32>,
    /// The residual stream the unembedding reads, before the final norm, `(B, T, D)` (after
    /// [`Interventions::unembed_input`](super::Interventions::unembed_input)).
    pub resid_final: Array3<f32>,
}

/// One layer's intermediates, as actually used by the forward (after interventions).
#[derive(Debug)]
pub struct LayerCache {
    /// `(B, T, D)`
    pub resid_pre: Array3<f32>,
    /// `(B, T, H, d)`, after rotary for Llama.
    pub q: Array4<f32>,
    /// `(B, T, Hkv, d)`, after rotary. Under grouped-query attention with a per-head
    /// [`Interventions::head_input`](super::Interventions::head_input) edit, the value seen by
    /// the first query head of each group.
    pub k: Array4<f32>,
    /// `(B, T, Hkv, d)` (same caveat as `k`).
    pub v: Array4<f32>,
    /// `(B, T, H, d)`: the values indexed by query head, as the attention used them (under
    /// grouped-query attention each key/value head repeated for the query heads sharing it;
    /// the `v` handed to [`Interventions::edit_z`](super::Interventions::edit_z)).
    pub v_by_query_head: Array4<f32>,
    /// `(B, H, T, T)` scaled, causally masked (`-inf`), after
    /// [`Interventions::edit_scores`](super::Interventions::edit_scores).
    pub scores: Array4<f32>,
    /// `(B, H, T, T)` softmax of `scores` (all-zero rows where no score is finite).
    pub pattern: Array4<f32>,
    /// `(B, T, H, d)` after [`Interventions::edit_z`](super::Interventions::edit_z).
    pub z: Array4<f32>,
    /// `(B, T, H, D)`: `z_h · W_O^h` per head, without the output bias; empty `(0, 0, 0, 0)`
    /// when the forward was asked to leave it out ([`CacheExtras::head_outputs`]).
    pub head_out: Array4<f32>,
    /// `(B, T, D)`: the attention output including its bias.
    pub attn_out: Array3<f32>,
    /// `(B, T, D)`: `resid_pre + attn_out`. Under the parallel wiring (GPT-NeoX) no block
    /// reads it: the MLP reads `resid_pre`.
    pub resid_mid: Array3<f32>,
    /// `(B, T, D)` after [`Interventions::edit_mlp_out`](super::Interventions::edit_mlp_out).
    pub mlp_out: Array3<f32>,
    /// `(B, T, D)`: `resid_mid + mlp_out`.
    pub resid_post: Array3<f32>,
    /// `(N, M)`: the MLP activation's input (`c_fc(x)`, or `gate(x)` of a gated MLP), with
    /// [`CacheExtras::mlp_pre_activations`] (the backward reads it instead of recomputing it).
    pub mlp_pre_activation: Option<Array2<f32>>,
    /// `(N, M)`: a gated MLP's `up(x)`, likewise.
    pub mlp_up: Option<Array2<f32>>,
}

/// The few intermediates reference statistics read (`ablate::reference`), so that a forward
/// pass asked for them neither computes nor copies the rest of an [`ActivationCache`]: every
/// layer's `z` and MLP output always; the attention pattern and values of `attention_layers`;
/// each head's own write `z_h · W_O^h` only with `head_outputs` (it costs a product per head
/// and `(B, T, H, D)` floats per layer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheSelection {
    /// Layers whose attention pattern and values by query head are kept.
    pub attention_layers: BTreeSet<usize>,
    /// Whether each head's write to the residual stream is kept.
    pub head_outputs: bool,
}

/// What a forward pass asked with a [`CacheSelection`] kept. Prompts are right-padded to `T`.
#[derive(Debug)]
pub struct SelectedActivations {
    pub layers: Vec<SelectedLayer>,
    /// Token (+ learned position) embedding, `(B, T, D)`.
    pub embed: Array3<f32>,
}

/// One layer of [`SelectedActivations`]; the fields mean what they mean in [`LayerCache`].
#[derive(Debug)]
pub struct SelectedLayer {
    /// `(B, T, H, d)`
    pub z: Array4<f32>,
    /// `(B, T, D)`
    pub mlp_out: Array3<f32>,
    /// `(B, H, T, T)`, for the selection's `attention_layers`.
    pub pattern: Option<Array4<f32>>,
    /// `(B, T, H, d)`, for the selection's `attention_layers`.
    pub v_by_query_head: Option<Array4<f32>>,
    /// `(B, T, H, D)`, with the selection's `head_outputs`.
    pub head_out: Option<Array4<f32>>,
}

/// What an [`ActivationCache`] holds beyond the intermediates every forward computes anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CacheExtras {
    /// Each head's own write `z_h · W_O^h` (a product per head and `(B, T, H, D)` floats per
    /// layer, 226 MB for GPT-2 small at 32 × 16 tokens): only path-edge readers use it.
    pub head_outputs: bool,
    /// The MLP pre-activations (`(N, M)` per layer, two for gated MLPs), which the backward
    /// would otherwise recompute (a `D × M` product per layer).
    pub mlp_pre_activations: bool,
}

impl CacheExtras {
    /// What [`Model::forward`](super::Model::forward)'s cache has always held.
    pub(crate) const PUBLIC: CacheExtras = CacheExtras {
        head_outputs: true,
        mlp_pre_activations: false,
    };
}

/// What a forward pass keeps for its caller besides the logits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Keep<'a> {
    Nothing,
    /// An [`ActivationCache`], with these extras.
    Everything(CacheExtras),
    /// [`SelectedActivations`].
    Selected(&'a CacheSelection),
}

/// What [`Recorder::finish`] hands back, as [`Keep`] asked.
pub(crate) enum Kept {
    Everything(ActivationCache),
    Selected(SelectedActivations),
}

/// Collects, layer by layer, what the caller and the hooks need of a forward pass: the
/// component outputs when the hooks ask for them, the activation cache when the caller does.
/// Blocks hand it their traces; it keeps what is wanted and the rest is dropped.
pub(crate) struct Recorder<'s> {
    keep: Keep<'s>,
    record_outputs: bool,
    /// `(B, T)` of the batch, to see `(N, ·)` rows as prompts.
    batch: usize,
    seq: usize,
    /// Key/value heads are shared by groups of this many query heads.
    group: usize,
    embed: Array3<f32>,            // (B, T, D)
    head_outs: Vec<Array4<f32>>,   // per finished layer (B, T, H, D)
    attn_biases: Vec<Array1<f32>>, // per finished layer (D,)
    mlp_outs: Vec<Array3<f32>>,    // per finished layer (B, T, D)
    layers: Vec<LayerCache>,
    selected: Vec<SelectedLayer>,
}

impl<'s> Recorder<'s> {
    /// `embed` `(N, D)`: the embedding rows, which every hook sees in [`ComponentOutputs`].
    pub(crate) fn new(
        embed: &Array2<f32>,
        batch: usize,
        seq: usize,
        group: usize,
        keep: Keep<'s>,
        record_outputs: bool,
    ) -> Recorder<'s> {
        Recorder {
            keep,
            record_outputs,
            batch,
            seq,
            group,
            embed: rows_as_prompts(embed, batch, seq).to_owned(), // (B, T, D)
            head_outs: Vec::new(),
            attn_biases: Vec::new(),
            mlp_outs: Vec::new(),
            layers: Vec::new(),
            selected: Vec::new(),
        }
    }

    /// The component outputs written so far, for the path-edge hooks.
    pub(crate) fn outputs(&self) -> ComponentOutputs<'_> {
        ComponentOutputs {
            embed: self.embed.view(),
            head_out: &self.head_outs,
            attn_bias: &self.attn_biases,
            mlp_out: &self.mlp_outs,
        }
    }

    /// Whether the attention block must compute each head's own write `z_h · W_O^h`.
    pub(crate) fn wants_head_outputs(&self) -> bool {
        self.record_outputs
            || match self.keep {
                Keep::Nothing => false,
                Keep::Everything(extras) => extras.head_outputs,
                Keep::Selected(selection) => selection.head_outputs,
            }
    }

    /// Whether the MLP block must keep its activation's input for the cache.
    pub(crate) fn wants_mlp_pre_activations(&self) -> bool {
        matches!(self.keep, Keep::Everything(extras) if extras.mlp_pre_activations)
    }

    /// After a layer's attention block: its heads' outputs join the component outputs.
    pub(crate) fn attention_done(&mut self, attention: &AttentionTrace, o_bias: &Array1<f32>) {
        if self.record_outputs {
            let head_out = attention.head_out.as_ref();
            self.head_outs
                .push(head_out.expect("computed when recording").clone());
            self.attn_biases.push(o_bias.clone());
        }
    }

    /// After a layer's MLP block: its output joins the component outputs, and the layer's
    /// intermediates the cache (residual streams `(N, D)`).
    pub(crate) fn layer_done(
        &mut self,
        resid_pre: &Array2<f32>,
        attention: AttentionTrace,
        resid_mid: &Array2<f32>,
        mlp: MlpTrace,
        resid_post: &Array2<f32>,
    ) {
        if self.record_outputs {
            self.mlp_outs.push(mlp.out.clone());
        }
        let (selection, extras) = match self.keep {
            Keep::Nothing => return,
            Keep::Everything(extras) => (None, extras),
            Keep::Selected(selection) => (Some(selection), CacheExtras::PUBLIC),
        };
        if let Some(selection) = selection {
            let index = self.selected.len();
            let attention_kept = selection.attention_layers.contains(&index);
            self.selected.push(SelectedLayer {
                z: attention.z,
                mlp_out: mlp.out,
                pattern: attention_kept.then_some(attention.pattern),
                v_by_query_head: attention_kept.then_some(attention.v),
                head_out: if selection.head_outputs {
                    Some(attention.head_out.expect("computed for the selection"))
                } else {
                    None
                },
            });
            return;
        }
        let group = self.group;
        // The key/value head g is stored at query head g·group (its first user).
        let kv_heads = |a: &Array4<f32>| a.slice(s![.., .., ..;group, ..]).to_owned();
        self.layers.push(LayerCache {
            resid_pre: self.to3(resid_pre),
            k: kv_heads(&attention.k),
            v: kv_heads(&attention.v),
            v_by_query_head: attention.v,
            q: attention.q,
            scores: attention.scores,
            pattern: attention.pattern,
            z: attention.z,
            head_out: match extras.head_outputs {
                true => attention.head_out.expect("computed for the cache"),
                false => Array4::zeros((0, 0, 0, 0)),
            },
            attn_out: self.to3(&attention.out),
            resid_mid: self.to3(resid_mid),
            mlp_out: mlp.out,
            resid_post: self.to3(resid_post),
            mlp_pre_activation: mlp.activations.pre_activation,
            mlp_up: mlp.activations.up.filter(|_| extras.mlp_pre_activations),
        });
    }

    /// What was asked to be kept; `resid_final` `(N, D)` is what the unembedding read.
    pub(crate) fn finish(self, resid_final: &Array2<f32>) -> Option<Kept> {
        match self.keep {
            Keep::Nothing => None,
            Keep::Everything(_) => Some(Kept::Everything(ActivationCache {
                resid_final: self.to3(resid_final),
                layers: self.layers,
                embed: self.embed,
            })),
            Keep::Selected(_) => Some(Kept::Selected(SelectedActivations {
                layers: self.selected,
                embed: self.embed,
            })),
        }
    }

    /// `(N, D)` rows as a `(B, T, D)` copy.
    fn to3(&self, rows: &Array2<f32>) -> Array3<f32> {
        rows_as_prompts(rows, self.batch, self.seq).to_owned()
    }
}

/// `(N, W)` rows as `(B, T, W)`, without a copy (rows are batch-major).
pub(crate) fn rows_as_prompts(rows: &Array2<f32>, batch: usize, seq: usize) -> ArrayView3<'_, f32> {
    rows.view()
        .into_shape_with_order((batch, seq, rows.ncols()))
        .expect("rows are B·T")
}
