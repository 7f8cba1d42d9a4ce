//! Read-only views of the weights that define one head's OV and QK circuits (Elhage et al.
//! 2021), for the weight-based head characterization of `circuit heads` (src/heads/). The
//! engine's forward never reads weights through here; this is the one place outside the
//! loaders that says which rows and columns of the stored matrices belong to a head.

use ndarray::{ArrayView1, CowArray, Ix2};

use super::stored::Weight;
use super::transformer::Norm;
use super::Model;

/// The per-head weight matrices, in the row-vector convention the engine computes with
/// (`x · W`): each maps a `(D,)` residual-stream row to a `(d,)` head row, or back. Borrowed
/// f32 weights, or converted copies of weights kept in their stored dtype (`--weights`).
pub struct HeadMatrices<'a> {
    pub w_q: CowArray<'a, f32, Ix2>, // (D, d)
    /// The key/value head this query head reads (under grouped-query attention shared by
    /// `n_heads / n_kv_heads` query heads).
    pub w_k: CowArray<'a, f32, Ix2>, // (D, d)
    pub w_v: CowArray<'a, f32, Ix2>, // (D, d)
    pub w_o: CowArray<'a, f32, Ix2>, // (d, D)
}

/// Head `head` of `layer`. Panics on an index outside the model (callers resolve head names
/// against the config first).
pub fn head_matrices(model: &Model, layer: usize, head: usize) -> HeadMatrices<'_> {
    let t = &model.transformer;
    let d = t.d_head;
    let kv = head / (t.n_heads / t.n_kv_heads);
    let layer_weights = &t.layers[layer];
    HeadMatrices {
        w_q: head_columns(&layer_weights.q.weight, head, d),
        w_k: head_columns(&layer_weights.k.weight, kv, d),
        w_v: head_columns(&layer_weights.v.weight, kv, d),
        w_o: super::backward::head_output_weight(model, layer, head),
    }
}

/// Columns `index·d .. (index+1)·d` of a `(D, heads·d)` projection: one head's.
fn head_columns(weight: &Weight, index: usize, d: usize) -> CowArray<'_, f32, Ix2> {
    weight.view().columns(index * d..(index + 1) * d).f32()
}

/// The token embedding `W_E`, `(V, D)` (rows may exceed the tokenizer's vocabulary).
pub fn token_embedding(model: &Model) -> CowArray<'_, f32, Ix2> {
    model.transformer.embed.f32()
}

/// The unembedding `W_U`, `(D, V)`: the transpose of the stored `(V, D)` matrix, or of the
/// token embedding when the model ties them.
pub fn unembedding(model: &Model) -> CowArray<'_, f32, Ix2> {
    let t = &model.transformer;
    t.unembed.as_ref().unwrap_or(&t.embed).view().t().f32()
}

/// The scale `γ` `(D,)` of the norm in front of `layer`'s attention (LayerNorm or RMSNorm).
pub fn attention_norm_scale(model: &Model, layer: usize) -> ArrayView1<'_, f32> {
    norm_scale(&model.transformer.layers[layer].attn_norm)
}

/// The scale `γ` `(D,)` of the final norm, which the unembedding reads.
pub fn final_norm_scale(model: &Model) -> ArrayView1<'_, f32> {
    norm_scale(&model.transformer.final_norm)
}

fn norm_scale(norm: &Norm) -> ArrayView1<'_, f32> {
    match norm {
        Norm::Layer { weight, .. } | Norm::Rms { weight, .. } => weight.view(),
    }
}

/// Whether positions enter as rotations of q and k (rotary), which makes a head's QK
/// bilinear form depend on the query-key distance; `false` for learned position embeddings.
pub fn uses_rotary(model: &Model) -> bool {
    matches!(
        model.transformer.positions,
        super::transformer::Positions::Rotary { .. }
    )
}
