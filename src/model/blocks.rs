//! The forward's blocks: embed, attention, MLP, and final norm + unembed.
//!
//! Each block is a function of explicit inputs (the residual stream it reads, the batch, the
//! rows it computes at, the hooks and the component outputs so far) that returns its output
//! together with the intermediates a caller may keep (a trace): the recorder (`cache.rs`) keeps
//! what the activation cache wants, and a block's backward can be written beside it from the
//! same trace. [`Transformer::forward`](super::transformer::Transformer) wires the blocks along
//! the residual stream.
//!
//! Shapes: `B` prompts right-padded to `T` tokens, `N = B·T` rows when batch and sequence are
//! flattened for the projections; a block computing at selected rows only (the END rows of the
//! last layer) has `T_q` rows per prompt and `N_q = B·T_q` rows. `H` query heads, `Hkv`
//! key/value heads, `d` head size, `D` model width, `M` MLP width, `V` vocabulary.

use ndarray::{s, Array2, Array3, Array4, ArrayView2, Axis};
use rayon::prelude::*;

use super::cache::rows_as_prompts;
use super::config::visible_keys;
use super::interventions::{ComponentOutputs, HeadInput, Interventions};
use super::linalg::matmul;
use super::numerics::{dot, exp, gelu_erf, gelu_new, silu, widest_simd};
use super::stored::WeightView;
use super::transformer::{soft_cap, Layer, Mlp, Positions, Transformer};

/// The batch a forward runs on: `B` prompts right-padded to `T` tokens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batch {
    pub prompts: usize, // B
    pub seq: usize,     // T
}

impl Batch {
    /// `N = B·T`
    pub(crate) fn n_rows(self) -> usize {
        self.prompts * self.seq
    }
}

/// The rows of the batch a block computes its output at.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rows<'a> {
    /// Every row of the batch: `T_q = T`.
    All,
    /// The same number of rows of each prompt (row indices into the `N` rows, grouped by prompt
    /// in order): each prompt's END row when only END logits are read.
    Selected(&'a [usize]),
}

impl Rows<'_> {
    /// Rows per prompt, `T_q`.
    pub(crate) fn per_prompt(self, batch: Batch) -> usize {
        match self {
            Rows::All => batch.seq,
            Rows::Selected(rows) => rows.len() / batch.prompts,
        }
    }

    /// The index among the batch's `N` rows of the `i`-th computed row.
    fn batch_row(self, i: usize) -> usize {
        match self {
            Rows::All => i,
            Rows::Selected(rows) => rows[i],
        }
    }

    /// These rows of `a` `(N, W)` → `(N_q, W)` (no copy for every row).
    pub(crate) fn pick(self, a: Array2<f32>) -> Array2<f32> {
        match self {
            Rows::All => a,
            Rows::Selected(rows) => a.select(Axis(0), rows),
        }
    }
}

/// What the attention block computed. `normed = attn_norm(resid_pre)` is the norm's output (its
/// input is the `resid_pre` the block was given).
// Intermediates nothing in the forward reads are for a block's backward (model/backward.rs).
#[allow(dead_code)]
pub(crate) struct AttentionTrace {
    pub normed: Array2<f32>,  // (N, D)
    pub q: Array4<f32>,       // (B, T_q, H, d), after any q/k norm and rotary
    pub k: Array4<f32>,       // (B, T, H, d) by query head, after any q/k norm and rotary
    pub v: Array4<f32>,       // (B, T, H, d) by query head
    pub scores: Array4<f32>,  // (B, H, T_q, T), after edit_scores
    pub pattern: Array4<f32>, // (B, H, T_q, T)
    pub z: Array4<f32>,       // (B, T_q, H, d), after edit_z
    /// Each head's own write `z_h · W_O^h` (no bias), when asked for.
    pub head_out: Option<Array4<f32>>, // (B, T_q, H, D)
    /// `o(z)`, with the output bias: what the block adds to the residual stream.
    pub out: Array2<f32>, // (N_q, D)
}

/// What the MLP block computed, from the residual stream `input` it read (after
/// [`Interventions::mlp_input`]).
// Intermediates nothing in the forward reads are for a block's backward (model/backward.rs).
#[allow(dead_code)]
pub(crate) struct MlpTrace {
    pub normed: Array2<f32>, // (N_q, D) mlp_norm(input)
    pub activations: MlpActivations,
    /// What the block adds to the residual stream, after [`Interventions::edit_mlp_out`].
    pub out: Array3<f32>, // (B, T_q, D)
}

impl MlpTrace {
    /// `out` as rows.
    pub(crate) fn out_rows(&self) -> ArrayView2<'_, f32> {
        let (batch, rows, width) = self.out.dim();
        self.out
            .view()
            .into_shape_with_order((batch * rows, width))
            .expect("standard layout")
    }
}

impl Transformer {
    /// Token (+ learned position) embedding of `ids` `(B, T)` → `(N, D)`.
    pub(crate) fn embed_forward(&self, ids: &Array2<u32>) -> Array2<f32> {
        let (batch, seq) = ids.dim();
        let mut resid = Array2::<f32>::zeros((batch * seq, self.embed.ncols())); // (N, D)
        for (row, mut out) in resid.axis_iter_mut(Axis(0)).enumerate() {
            let (token, position) = (ids[[row / seq, row % seq]] as usize, row % seq);
            self.embed.row_into(token, out.view_mut());
            if let Positions::Learned { wpe } = &self.positions {
                out += &wpe.row(position);
            }
        }
        // Gemma 2 scales the token embedding (by √D, as transformers' normalizer).
        if let Some(scale) = self.scaling.embed {
            resid *= scale;
        }
        resid
    }

    /// Attention of layer `index` reading `resid_pre` `(N, D)`, with queries at `queries` only
    /// (keys and values need every row). Calls the hooks `head_input` (per head and input),
    /// `edit_scores` and `edit_z`, in that order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_forward(
        &self,
        index: usize,
        layer: &Layer,
        resid_pre: &Array2<f32>, // (N, D)
        batch: Batch,
        queries: Rows,
        hooks: &dyn Interventions,
        outputs: &ComponentOutputs,
        want_head_out: bool,
    ) -> AttentionTrace {
        let (n_heads, d_head) = (self.n_heads, self.d_head);
        let group = n_heads / self.n_kv_heads;
        let (prompts, seq) = (batch.prompts, batch.seq);
        let n_queries = queries.per_prompt(batch); // T_q

        let normed = layer.attn_norm.apply(resid_pre.view()); // (N, D)
        let mut q = match queries {
            Rows::All => layer.q.apply(normed.view()),
            Rows::Selected(rows) => layer.q.apply(normed.select(Axis(0), rows).view()),
        }; // (N_q, H·d)

        // Keys and values indexed by query head (copies of the shared head under GQA), so a
        // path edge can give one query head its own k/v input.
        let mut k = expand_kv(layer.k.apply(normed.view()), group, d_head); // (N, H·d)
        let mut v = expand_kv(layer.v.apply(normed.view()), group, d_head); // (N, H·d)

        // Intervention point: per-head q/k/v inputs (path edges into a head).
        for head in 0..n_heads {
            for which in [HeadInput::Q, HeadInput::K, HeadInput::V] {
                let Some(input) = hooks.head_input(
                    index,
                    head,
                    which,
                    rows_as_prompts(resid_pre, prompts, seq),
                    outputs,
                ) else {
                    continue;
                };
                let input = input
                    .into_shape_with_order((batch.n_rows(), resid_pre.ncols()))
                    .expect("head_input returns (B, T, D)"); // (N, D)
                let x_head = layer.attn_norm.apply(input.view()); // (N, D)
                let (linear, source_head, x_head, target) = match which {
                    HeadInput::Q => (&layer.q, head, queries.pick(x_head), &mut q),
                    HeadInput::K => (&layer.k, head / group, x_head, &mut k),
                    HeadInput::V => (&layer.v, head / group, x_head, &mut v),
                };
                let cols = source_head * d_head..(source_head + 1) * d_head;
                let projected = linear.apply_columns(x_head.view(), cols); // (N or N_q, d)
                target
                    .slice_mut(s![.., head * d_head..(head + 1) * d_head])
                    .assign(&projected);
            }
        }

        layer.normalize_qk(&mut q, &mut k, d_head); // Qwen3's per-head norms, before rotary
        if let Positions::Rotary { inv_freq } = &self.positions {
            let (cos, sin) = rotary_tables(inv_freq, seq); // (T, d/2) each
            rotate(&mut q, &cos, &sin, |i| queries.batch_row(i) % seq, d_head);
            rotate(&mut k, &cos, &sin, |row| row % seq, d_head);
        }
        let heads = |a: Array2<f32>, rows: usize| {
            a.into_shape_with_order((prompts, rows, n_heads, d_head))
                .unwrap()
        };
        let (q, k, v) = (heads(q, n_queries), heads(k, seq), heads(v, seq)); // (B, T_q|T, H, d)

        let scale = self.score_scale();
        let softcap = self.scaling.attn_logit_softcap;
        let query_position = |b: usize, i: usize| queries.batch_row(b * n_queries + i) % seq;
        let window = self.attention_window(index);
        let mut scores = causal_scores(&q, &k, scale, window, softcap, query_position); // (B, H, T_q, T)

        // Intervention point: pre-softmax scores (attention knockout).
        hooks.edit_scores(index, &mut scores.view_mut());
        let pattern = softmax_rows(&scores); // (B, H, T_q, T)
        let mut z = weighted_values(&pattern, &v); // (B, T_q, H, d)

        // Intervention point: per-head outputs before W_O (node and QK-edge ablation).
        hooks.edit_z(index, pattern.view(), v.view(), &mut z.view_mut());

        let z_rows = z
            .view()
            .into_shape_with_order((prompts * n_queries, n_heads * d_head))
            .unwrap(); // (N_q, H·d)
        let mut out = layer.o.apply(z_rows); // (N_q, D)
        if let Some(post_norm) = &layer.attn_post_norm {
            // Gemma 2: what is added is the normed output of the whole layer's heads.
            out = post_norm.apply(out.view()); // (N_q, D)
        }
        // Each head's own write before any post-norm (under one it is no term of the stream).
        let head_out = want_head_out
            .then(|| per_head_outputs(&z_rows, layer.o.weight.view(), prompts, n_queries, n_heads)); // (B, T_q, H, D)
        AttentionTrace {
            normed,
            q,
            k,
            v,
            scores,
            pattern,
            z,
            head_out,
            out,
        }
    }

    /// The MLP of layer `index` reading `resid` `(N_q, D)` (`T_q` rows per prompt): calls the
    /// hooks `mlp_input`, then `edit_mlp_out`. With `keep_pre_activation` the activation's input
    /// is kept in the trace (a copy; nothing in the forward needs it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mlp_forward(
        &self,
        index: usize,
        layer: &Layer,
        resid: &Array2<f32>, // (N_q, D)
        prompts: usize,
        hooks: &dyn Interventions,
        outputs: &ComponentOutputs,
        keep_pre_activation: bool,
    ) -> MlpTrace {
        let (n_rows, d_model) = resid.dim();
        let rows_per_prompt = n_rows / prompts; // T_q
                                                // Intervention point: the residual stream the MLP reads (path edges into an MLP).
        let input = hooks.mlp_input(
            index,
            rows_as_prompts(resid, prompts, rows_per_prompt),
            outputs,
        );
        let normed = match input {
            Some(input) => layer.mlp_norm.apply(
                input
                    .into_shape_with_order((n_rows, d_model))
                    .expect("mlp_input returns (B, T, D)")
                    .view(),
            ),
            None => layer.mlp_norm.apply(resid.view()),
        }; // (N_q, D)
        let (activations, mut out) = layer.mlp.forward(normed.view(), keep_pre_activation); // (N_q, D)
        if let Some(post_norm) = &layer.mlp_post_norm {
            out = post_norm.apply(out.view()); // (N_q, D), Gemma 2's post-feedforward norm
        }
        let mut out = out
            .into_shape_with_order((prompts, rows_per_prompt, d_model))
            .unwrap(); // (B, T_q, D)

        // Intervention point: MLP output.
        hooks.edit_mlp_out(index, &mut out.view_mut());
        MlpTrace {
            normed,
            activations,
            out,
        }
    }

    /// Final norm and unembedding of `resid` `(B·T', D)` (after
    /// [`Interventions::unembed_input`]) at rows `read_at` → logits `(B, T_q, V)`.
    pub(crate) fn unembed_forward(
        &self,
        resid: &Array2<f32>, // (B·T', D)
        prompts: usize,
        read_at: Rows,
    ) -> Array3<f32> {
        let selected;
        let (rows, rows_per_prompt) = match read_at {
            Rows::All => (resid.view(), resid.nrows() / prompts), // (B·T', D)
            Rows::Selected(rows) => {
                // Only each prompt's last real row: the unembedding dominates at short lengths.
                selected = resid.select(Axis(0), rows);
                (selected.view(), rows.len() / prompts) // (N_q, D)
            }
        };
        let unembed = self.unembed.as_ref().unwrap_or(&self.embed); // (V, D)
        let normed = self.final_norm.apply(rows); // (N_q, D)
        let mut logits = matmul(normed.view(), unembed.view().t()); // (N_q, V)
        if let Some(cap) = self.scaling.final_logit_softcap {
            map_in_place(&mut logits, |x| soft_cap(x, cap)); // Gemma 2's final soft cap
        }
        logits
            .into_shape_with_order((prompts, rows_per_prompt, unembed.nrows()))
            .unwrap() // (B, T_q, V)
    }
}

/// The MLP's own intermediates, from its normed input.
// Intermediates nothing in the forward reads are for a block's backward (model/backward.rs).
#[allow(dead_code)]
pub(crate) struct MlpActivations {
    /// The activation's input (`c_fc(x)`, or SwiGLU's `gate(x)`), kept only when asked for (the
    /// activation is applied in place).
    pub pre_activation: Option<Array2<f32>>, // (N_q, M)
    /// SwiGLU's `up(x)`.
    pub up: Option<Array2<f32>>, // (N_q, M)
    /// The input of the output projection.
    pub hidden: Array2<f32>, // (N_q, M)
}

impl Mlp {
    /// (N, D) → its intermediates and its output (N, D).
    pub(crate) fn forward(
        &self,
        x: ArrayView2<f32>,
        keep_pre_activation: bool,
    ) -> (MlpActivations, Array2<f32>) {
        match self {
            Mlp::GeluNew { fc, proj } | Mlp::GeluErf { fc, proj } => {
                let mut hidden = fc.apply(x); // (N, M)
                let pre_activation = keep_pre_activation.then(|| hidden.clone()); // (N, M)
                match self {
                    Mlp::GeluNew { .. } => map_in_place(&mut hidden, gelu_new),
                    _ => map_in_place(&mut hidden, gelu_erf),
                }
                let out = proj.apply(hidden.view()); // (N, D)
                let activations = MlpActivations {
                    pre_activation,
                    up: None,
                    hidden,
                };
                (activations, out)
            }
            Mlp::SwiGlu { gate, up, down } | Mlp::GeGlu { gate, up, down } => {
                let mut hidden = gate.apply(x); // (N, M)
                let up = up.apply(x); // (N, M)
                let pre_activation = keep_pre_activation.then(|| hidden.clone()); // (N, M)
                match self {
                    Mlp::GeGlu { .. } => map_in_place(&mut hidden, gelu_new),
                    _ => map_in_place(&mut hidden, silu),
                }
                hidden *= &up;
                let out = down.apply(hidden.view()); // (N, D)
                let activations = MlpActivations {
                    pre_activation,
                    up: Some(up),
                    hidden,
                };
                (activations, out)
            }
        }
    }
}

/// Applies `f` to every element, in parallel chunks of plain slices (a loop the compiler
/// vectorizes; ndarray's `par_mapv_inplace` calls `f` through an iterator it does not).
fn map_in_place(a: &mut Array2<f32>, f: impl Fn(f32) -> f32 + Sync) {
    a.as_slice_mut()
        .expect("standard layout")
        .par_chunks_mut(1 << 14)
        .for_each(|chunk| {
            widest_simd(
                #[inline(always)]
                || chunk.iter_mut().for_each(|x| *x = f(*x)),
            )
        });
}

/// `a[i] = f(a[i], b[i])` elementwise, in parallel chunks at the widest vector width, for a
/// standard-layout `a` and a `b` of its shape (a copy of `b` first if it is not contiguous):
/// the two-input [`map_in_place`] of the backward's activation slopes.
pub(crate) fn zip_in_place(
    a: &mut Array2<f32>,
    b: ArrayView2<f32>,
    f: impl Fn(f32, f32) -> f32 + Sync,
) {
    assert_eq!(a.dim(), b.dim(), "zip_in_place: same shapes");
    let b = b.as_standard_layout();
    let chunk = 1 << 14;
    a.as_slice_mut()
        .expect("standard layout")
        .par_chunks_mut(chunk)
        .zip(b.as_slice().expect("standard layout").par_chunks(chunk))
        .for_each(|(a, b)| {
            widest_simd(
                #[inline(always)]
                || a.iter_mut().zip(b).for_each(|(a, &b)| *a = f(*a, b)),
            )
        });
}

/// cos and sin of `t · inv_freq[i]` for positions `t < seq`: two (T, d/2) tables.
pub(super) fn rotary_tables(inv_freq: &[f32], seq: usize) -> (Array2<f32>, Array2<f32>) {
    let angle = Array2::from_shape_fn((seq, inv_freq.len()), |(t, i)| t as f32 * inv_freq[i]);
    (angle.mapv(f32::cos), angle.mapv(f32::sin))
}

/// (N, Hkv·d) → (N, H·d): each key/value head repeated for the `group` query heads sharing it.
fn expand_kv(kv: Array2<f32>, group: usize, d_head: usize) -> Array2<f32> {
    if group == 1 {
        return kv;
    }
    let (rows, kv_width) = kv.dim();
    let n_kv = kv_width / d_head;
    Array2::from_shape_fn((rows, n_kv * group * d_head), |(r, c)| {
        let (head, i) = (c / d_head, c % d_head);
        kv[[r, (head / group) * d_head + i]]
    })
}

/// Rotates each head's vector of `x` `(rows, H·d)` by its row's token position
/// (`position_of_row`; the tables cover every position used): its first `r` dimensions, `r/2`
/// the tables' width (all `d` but under partial rotary).
pub(super) fn rotate(
    x: &mut Array2<f32>,
    cos: &Array2<f32>,
    sin: &Array2<f32>,
    position_of_row: impl Fn(usize) -> usize + Sync,
    d_head: usize,
) {
    let half = cos.ncols(); // r/2
    let width = x.ncols();
    x.as_slice_mut()
        .expect("standard layout")
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(row, values)| {
            let position = position_of_row(row);
            let (cos, sin) = (cos.row(position), sin.row(position));
            for head in values.chunks_mut(d_head) {
                for i in 0..half {
                    let (x1, x2) = (head[i], head[i + half]);
                    head[i] = x1 * cos[i] - x2 * sin[i];
                    head[i + half] = x2 * cos[i] + x1 * sin[i];
                }
            }
        });
}

/// Scaled `q·k` for every (prompt, head) and each query row `i < T_q`, which sits at token
/// position `query_position(b, i)`, soft-capped to `c·tanh(s/c)` when `softcap` is `Some(c)`
/// (Gemma 2; the cap comes first, as in transformers, so the mask and a knockout's `-inf`
/// stay `-inf`); keys after that position, and under a sliding `window` keys before the window
/// ([`visible_keys`]), get `-inf` (the causal mask).
/// `q` `(B, T_q, H, d)`, `k` `(B, T, H, d)` → `(B, H, T_q, T)`.
fn causal_scores(
    q: &Array4<f32>,
    k: &Array4<f32>,
    scale: f32,
    window: Option<usize>,
    softcap: Option<f32>,
    query_position: impl Fn(usize, usize) -> usize + Sync,
) -> Array4<f32> {
    let (batch, n_queries, n_heads, d_head) = q.dim();
    let seq = k.dim().1;
    let (q, k) = (q.as_slice().unwrap(), k.as_slice().unwrap());
    let mut scores = Array4::<f32>::zeros((batch, n_heads, n_queries, seq));
    scores
        .as_slice_mut()
        .unwrap()
        .par_chunks_mut(n_queries * seq)
        .enumerate()
        .for_each(|(bh, block)| {
            widest_simd(
                #[inline(always)]
                || {
                    let (b, h) = (bh / n_heads, bh % n_heads);
                    let q_offset = |i: usize| ((b * n_queries + i) * n_heads + h) * d_head;
                    let k_offset = |t: usize| ((b * seq + t) * n_heads + h) * d_head;
                    for i in 0..n_queries {
                        let q_row = &q[q_offset(i)..q_offset(i) + d_head];
                        let visible = visible_keys(window, query_position(b, i));
                        for tk in 0..seq {
                            block[i * seq + tk] = if visible.contains(&tk) {
                                let s = dot(q_row, &k[k_offset(tk)..k_offset(tk) + d_head]) * scale;
                                match softcap {
                                    Some(cap) => soft_cap(s, cap),
                                    None => s,
                                }
                            } else {
                                f32::NEG_INFINITY
                            };
                        }
                    }
                },
            )
        });
    scores
}

/// Softmax over the last axis; a row with no finite score becomes all zeros (reads nothing).
fn softmax_rows(scores: &Array4<f32>) -> Array4<f32> {
    let mut pattern = scores.as_standard_layout().into_owned();
    let seq = pattern.dim().3;
    pattern
        .as_slice_mut()
        .unwrap()
        .par_chunks_mut(seq)
        .for_each(|row| {
            widest_simd(
                #[inline(always)]
                || {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    if max == f32::NEG_INFINITY {
                        row.fill(0.0);
                        return;
                    }
                    let mut sum = 0.0;
                    for x in row.iter_mut() {
                        *x = exp(*x - max);
                        sum += *x;
                    }
                    for x in row.iter_mut() {
                        *x /= sum;
                    }
                },
            )
        });
    pattern
}

/// `z[b, i, h] = Σ_k pattern[b, h, i, k] · v[b, k, h]`: pattern `(B, H, T_q, T)`, v
/// `(B, T, H, d)` → `(B, T_q, H, d)`.
fn weighted_values(pattern: &Array4<f32>, v: &Array4<f32>) -> Array4<f32> {
    let (batch, seq, n_heads, d_head) = v.dim();
    let n_queries = pattern.dim().2;
    let v = v.as_slice().unwrap();
    let p = pattern.as_standard_layout();
    let p = p.as_slice().unwrap();
    let mut z = Array4::<f32>::zeros((batch, n_queries, n_heads, d_head));
    z.as_slice_mut()
        .unwrap()
        .par_chunks_mut(n_heads * d_head)
        .enumerate()
        .for_each(|(bi, out)| {
            widest_simd(
                #[inline(always)]
                || {
                    let (b, i) = (bi / n_queries, bi % n_queries);
                    for h in 0..n_heads {
                        let weights = &p[((b * n_heads + h) * n_queries + i) * seq..][..seq];
                        let out = &mut out[h * d_head..(h + 1) * d_head];
                        for (tk, &w) in weights.iter().enumerate() {
                            if w == 0.0 {
                                continue;
                            }
                            let start = ((b * seq + tk) * n_heads + h) * d_head;
                            for (o, x) in out.iter_mut().zip(&v[start..start + d_head]) {
                                *o += w * x;
                            }
                        }
                    }
                },
            )
        });
    z
}

/// Each head's own write `z_h · W_O^h` (no bias): (B, T_q, H, D).
fn per_head_outputs(
    z_rows: &ArrayView2<f32>, // (N_q, H·d)
    w_o: WeightView,          // (H·d, D)
    batch: usize,
    seq: usize,
    n_heads: usize,
) -> Array4<f32> {
    let d_head = z_rows.ncols() / n_heads;
    let d_model = w_o.dim().1;
    let mut out = Array4::<f32>::zeros((batch, seq, n_heads, d_model));
    for h in 0..n_heads {
        let cols = h * d_head..(h + 1) * d_head;
        let written = z_rows
            .slice(s![.., cols.clone()])
            .dot(&w_o.rows(cols).f32()); // (N_q, D)
        out.slice_mut(s![.., .., h, ..]).assign(
            &written
                .into_shape_with_order((batch, seq, d_model))
                .unwrap(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::transformer::Linear;
    use super::*;

    fn linear(d_in: usize, d_out: usize, seed: usize) -> Linear {
        let weight = Array2::from_shape_fn((d_in, d_out), |(i, j)| {
            ((i * 7 + j * 3 + seed) % 11) as f32 * 0.1 - 0.5
        });
        Linear {
            weight: weight.into(),
            bias: Some(ndarray::Array1::from_elem(d_out, 0.25)),
        }
    }

    #[test]
    fn the_mlp_trace_holds_what_its_output_was_computed_from() {
        let x = Array2::from_shape_fn((5, 4), |(i, j)| (i as f32 - 2.0) * 0.3 + j as f32 * 0.1);
        let gelu = Mlp::GeluNew {
            fc: linear(4, 6, 0),
            proj: linear(6, 4, 1),
        };
        let exact_gelu = Mlp::GeluErf {
            fc: linear(4, 6, 5),
            proj: linear(6, 4, 6),
        };
        let swiglu = Mlp::SwiGlu {
            gate: linear(4, 6, 2),
            up: linear(4, 6, 3),
            down: linear(6, 4, 4),
        };
        let geglu = Mlp::GeGlu {
            gate: linear(4, 6, 7),
            up: linear(4, 6, 8),
            down: linear(6, 4, 9),
        };
        for mlp in [&gelu, &exact_gelu, &swiglu, &geglu] {
            let (kept, out) = mlp.forward(x.view(), true);
            let (plain, plain_out) = mlp.forward(x.view(), false);
            // Keeping the pre-activation changes nothing else.
            assert_eq!(out, plain_out);
            assert_eq!(kept.hidden, plain.hidden);
            assert!(plain.pre_activation.is_none());
            let pre = kept.pre_activation.expect("kept when asked");
            let (first, down) = match mlp {
                Mlp::GeluNew { fc, proj } | Mlp::GeluErf { fc, proj } => (fc, proj),
                Mlp::SwiGlu { gate, down, .. } | Mlp::GeGlu { gate, down, .. } => (gate, down),
            };
            assert_eq!(pre, first.apply(x.view()));
            let hidden = match (mlp, &kept.up) {
                (Mlp::GeluNew { .. }, None) => pre.mapv(gelu_new),
                (Mlp::GeluErf { .. }, None) => pre.mapv(gelu_erf),
                (Mlp::SwiGlu { .. }, Some(up)) => pre.mapv(silu) * up,
                (Mlp::GeGlu { .. }, Some(up)) => pre.mapv(gelu_new) * up,
                _ => panic!("only the gated MLPs keep an up projection"),
            };
            assert_eq!(kept.hidden, hidden);
            assert_eq!(out, down.apply(hidden.view()));
        }
    }

    #[test]
    fn softmax_of_a_fully_masked_row_is_zero() {
        let mut scores = Array4::<f32>::from_elem((1, 1, 2, 2), f32::NEG_INFINITY);
        scores[[0, 0, 1, 0]] = 0.5;
        scores[[0, 0, 1, 1]] = 0.5;
        let pattern = softmax_rows(&scores);
        assert_eq!(pattern.as_slice().unwrap(), &[0.0, 0.0, 0.5, 0.5]);
    }
}
