//! The forward pass shared by GPT-2 and Llama, written to mirror the math.
//!
//! Both families are one residual stream with, per layer, `resid_mid = resid_pre + attn(norm(resid_pre))`
//! and `resid_post = resid_mid + mlp(norm(resid_mid))`; they differ only in the norm (LayerNorm /
//! RMSNorm), the positions (learned / rotary), the MLP (gelu_new / SwiGLU) and whether key/value
//! heads are shared (grouped-query attention). Those differences are the enums below; the
//! loaders (`gpt2.rs`, `llama.rs`) fill them from the safetensors names.
//!
//! Every intervention hook of [`Interventions`] is called at exactly one place in
//! [`Transformer::forward`]. Shapes: `B` prompts right-padded to `T` tokens, `N = B·T` rows when
//! batch and sequence are flattened for the projections, `H` query heads, `Hkv` key/value
//! heads, `d` head size, `D` model width, `M` MLP width, `V` vocabulary.

use ndarray::{s, Array1, Array2, Array3, Array4, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use super::interventions::{ComponentOutputs, HeadInput, Interventions};
use super::linalg::{affine, matmul};
use super::numerics::{dot, gelu_new, silu, sum_of, widest_simd};
use super::{ActivationCache, LayerCache};

/// LayerNorm (GPT-2) or RMSNorm (Llama), applied per row.
pub(crate) enum Norm {
    Layer {
        weight: Array1<f32>, // (D,)
        bias: Array1<f32>,   // (D,)
        eps: f32,
    },
    Rms {
        weight: Array1<f32>, // (D,)
        eps: f32,
    },
}

impl Norm {
    /// (N, D) → (N, D)
    pub(crate) fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut out = x.as_standard_layout().into_owned();
        let width = out.ncols();
        out.as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(width)
            .for_each(|row| {
                widest_simd(
                    #[inline(always)]
                    || match self {
                        Norm::Layer { weight, bias, eps } => {
                            let (weight, bias) = (contiguous(weight), contiguous(bias));
                            let mean = sum_of(row, |x| x) / width as f32;
                            let var = sum_of(row, |x| (x - mean) * (x - mean)) / width as f32;
                            let inv = 1.0 / (var + eps).sqrt();
                            for ((x, w), b) in row.iter_mut().zip(weight).zip(bias) {
                                *x = (*x - mean) * inv * w + b;
                            }
                        }
                        Norm::Rms { weight, eps } => {
                            let weight = contiguous(weight);
                            let mean_sq = sum_of(row, |x| x * x) / width as f32;
                            let inv = 1.0 / (mean_sq + eps).sqrt();
                            for (x, w) in row.iter_mut().zip(weight) {
                                *x = w * (*x * inv);
                            }
                        }
                    },
                )
            });
        out
    }
}

/// A loaded (D,) parameter as a slice: plain slices zip into loops the compiler vectorizes,
/// ndarray's element iterators do not.
fn contiguous(a: &Array1<f32>) -> &[f32] {
    a.as_slice().expect("parameters are loaded contiguous")
}

/// A dense layer `y = x·W + b`, with `W` as `(in, out)` (for HF `nn.Linear`, a transposed view
/// of the stored `(out, in)` matrix: no copy).
pub(crate) struct Linear {
    pub weight: Array2<f32>,       // (in, out)
    pub bias: Option<Array1<f32>>, // (out,)
}

impl Linear {
    /// (N, in) → (N, out)
    fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        affine(x, self.weight.view(), self.bias.as_ref().map(|b| b.view()))
    }

    /// Only output columns `cols` of the layer: (N, in) → (N, cols.len())
    fn apply_columns(&self, x: ArrayView2<f32>, cols: std::ops::Range<usize>) -> Array2<f32> {
        let bias = self.bias.as_ref().map(|b| b.slice(s![cols.clone()]));
        affine(x, self.weight.slice(s![.., cols]), bias)
    }
}

/// How positions enter: added learned embeddings (GPT-2) or rotary q/k rotations (Llama).
pub(crate) enum Positions {
    Learned {
        wpe: Array2<f32>, // (n_ctx, D)
    },
    /// HF's rotate-half convention: dimension `i < d/2` pairs with `i + d/2`, rotated by
    /// `position · inv_freq[i]`. The cos/sin tables are built per forward for its `T`
    /// positions (a table for the whole context can be large for long-context models).
    Rotary {
        inv_freq: Vec<f32>, // (d/2,)
    },
}

impl Positions {
    /// `inv_freq[i] = 1 / theta^(2i/d)`, in f32 as HF computes it.
    pub(crate) fn rotary(d_head: usize, theta: f32) -> Positions {
        let inv_freq = (0..d_head / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / d_head as f32))
            .collect();
        Positions::Rotary { inv_freq }
    }
}

/// cos and sin of `t · inv_freq[i]` for positions `t < seq`: two (T, d/2) tables.
fn rotary_tables(inv_freq: &[f32], seq: usize) -> (Array2<f32>, Array2<f32>) {
    let angle = Array2::from_shape_fn((seq, inv_freq.len()), |(t, i)| t as f32 * inv_freq[i]);
    (angle.mapv(f32::cos), angle.mapv(f32::sin))
}

pub(crate) enum Mlp {
    /// GPT-2: `c_proj(gelu_new(c_fc(x)))`.
    GeluNew { fc: Linear, proj: Linear },
    /// Llama: `down(silu(gate(x)) * up(x))`.
    SwiGlu {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
}

impl Mlp {
    /// (N, D) → (N, D)
    fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        match self {
            Mlp::GeluNew { fc, proj } => {
                let mut hidden = fc.apply(x); // (N, M)
                map_in_place(&mut hidden, gelu_new);
                proj.apply(hidden.view())
            }
            Mlp::SwiGlu { gate, up, down } => {
                let mut hidden = gate.apply(x); // (N, M)
                let up = up.apply(x); // (N, M)
                map_in_place(&mut hidden, silu);
                hidden *= &up;
                down.apply(hidden.view())
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

/// One transformer block's weights.
pub(crate) struct Layer {
    pub attn_norm: Norm,
    pub q: Linear, // (D, H·d)
    pub k: Linear, // (D, Hkv·d)
    pub v: Linear, // (D, Hkv·d)
    pub o: Linear, // (H·d, D)
    /// The output bias of `o`, zeros where the model has none (handed to path-edge hooks).
    pub o_bias: Array1<f32>, // (D,)
    pub mlp_norm: Norm,
    pub mlp: Mlp,
}

/// A whole model's weights, in one vocabulary for both families.
pub(crate) struct Transformer {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub embed: Array2<f32>, // (V, D)
    pub positions: Positions,
    pub layers: Vec<Layer>,
    pub final_norm: Norm,
    /// `None`: tied to `embed`. Whichever matrix the logits are read with is stored
    /// column-major (`linalg::unembedding_layout`), so its `(D, V)` transpose is contiguous.
    pub unembed: Option<Array2<f32>>, // (V, D)
}

impl Transformer {
    /// Runs `ids` `(B, T)` (right-padded; `lengths[b]` real tokens each) through the model.
    /// Returns logits `(B, T, V)` if `all_logits` else `(B, 1, V)` at each prompt's last token.
    pub(crate) fn forward(
        &self,
        ids: &Array2<u32>,
        lengths: &[usize],
        all_logits: bool,
        want_cache: bool,
        hooks: &dyn Interventions,
    ) -> (Array3<f32>, Option<ActivationCache>) {
        let (batch, seq) = ids.dim();
        let n_rows = batch * seq;
        let d_model = self.embed.ncols();
        let (n_heads, d_head) = (self.n_heads, self.d_head);
        let group = n_heads / self.n_kv_heads;
        // (N, ·) rows seen as (B, T, ·): a view for the hooks, a copy only for the cache.
        let to3 = |a: &Array2<f32>| rows_as_prompts(a, batch, seq).to_owned();

        // Token (+ learned position) embedding.
        let mut resid = Array2::<f32>::zeros((n_rows, d_model)); // (N, D)
        for (row, mut out) in resid.axis_iter_mut(Axis(0)).enumerate() {
            let (token, position) = (ids[[row / seq, row % seq]] as usize, row % seq);
            out.assign(&self.embed.row(token));
            if let Positions::Learned { wpe } = &self.positions {
                out += &wpe.row(position);
            }
        }
        let embed = to3(&resid); // (B, T, D)

        let record_outputs = hooks.needs_component_outputs();
        let mut head_outs: Vec<Array4<f32>> = Vec::new(); // per layer (B, T, H, D)
        let mut attn_biases: Vec<Array1<f32>> = Vec::new(); // per layer (D,)
        let mut mlp_outs: Vec<Array3<f32>> = Vec::new(); // per layer (B, T, D)
        let mut layer_caches = Vec::new();

        // Each prompt's last real row, where END logits are read.
        let end_rows: Vec<usize> = lengths
            .iter()
            .enumerate()
            .map(|(b, &len)| b * seq + len - 1)
            .collect();
        // When only END logits are wanted and nothing can observe the other rows, the last
        // layer runs at END rows alone (its keys and values still need every row). For GPT-2
        // small at 16 tokens this skips ~6% of the forward's FLOPs.
        let end_rows_only = !all_logits && !want_cache && hooks.is_identity();
        let last_layer = self.layers.len() - 1;

        for (layer_index, layer) in self.layers.iter().enumerate() {
            if end_rows_only && layer_index == last_layer {
                resid = self.last_layer_at_end_rows(layer, &resid, &end_rows, lengths, seq); // (B, D)
                break;
            }
            let resid_pre = resid; // (N, D)

            // ---- attention -------------------------------------------------------------
            let x = layer.attn_norm.apply(resid_pre.view()); // (N, D)
            let mut q = layer.q.apply(x.view()); // (N, H·d)

            // Keys and values indexed by query head (copies of the shared head under GQA), so a
            // path edge can give one query head its own k/v input.
            let mut k = expand_kv(layer.k.apply(x.view()), group, d_head); // (N, H·d)
            let mut v = expand_kv(layer.v.apply(x.view()), group, d_head); // (N, H·d)

            // Intervention point: per-head q/k/v inputs (path edges into a head).
            {
                let outputs = ComponentOutputs {
                    embed: embed.view(),
                    head_out: &head_outs,
                    attn_bias: &attn_biases,
                    mlp_out: &mlp_outs,
                };
                for head in 0..n_heads {
                    for which in [HeadInput::Q, HeadInput::K, HeadInput::V] {
                        let Some(input) = hooks.head_input(
                            layer_index,
                            head,
                            which,
                            rows_as_prompts(&resid_pre, batch, seq),
                            &outputs,
                        ) else {
                            continue;
                        };
                        let input = input
                            .into_shape_with_order((n_rows, d_model))
                            .expect("head_input returns (B, T, D)");
                        let x_head = layer.attn_norm.apply(input.view()); // (N, D)
                        let (linear, source_head, target) = match which {
                            HeadInput::Q => (&layer.q, head, &mut q),
                            HeadInput::K => (&layer.k, head / group, &mut k),
                            HeadInput::V => (&layer.v, head / group, &mut v),
                        };
                        let cols = source_head * d_head..(source_head + 1) * d_head;
                        let projected = linear.apply_columns(x_head.view(), cols); // (N, d)
                        target
                            .slice_mut(s![.., head * d_head..(head + 1) * d_head])
                            .assign(&projected);
                    }
                }
            }

            if let Positions::Rotary { inv_freq } = &self.positions {
                let (cos, sin) = rotary_tables(inv_freq, seq); // (T, d/2) each
                rotate(&mut q, &cos, &sin, |row| row % seq, d_head);
                rotate(&mut k, &cos, &sin, |row| row % seq, d_head);
            }
            let q4 = q
                .into_shape_with_order((batch, seq, n_heads, d_head))
                .unwrap(); // (B, T, H, d)
            let k4 = k
                .into_shape_with_order((batch, seq, n_heads, d_head))
                .unwrap(); // (B, T, H, d)
            let v4 = v
                .into_shape_with_order((batch, seq, n_heads, d_head))
                .unwrap(); // (B, T, H, d)

            let scale = 1.0 / (d_head as f32).sqrt();
            let mut scores = causal_scores(&q4, &k4, scale, |_, t| t); // (B, H, T, T)

            // Intervention point: pre-softmax scores (attention knockout).
            hooks.edit_scores(layer_index, &mut scores.view_mut());
            let pattern = softmax_rows(&scores); // (B, H, T, T)
            let mut z = weighted_values(&pattern, &v4); // (B, T, H, d)

            // Intervention point: per-head outputs before W_O (node and QK-edge ablation).
            hooks.edit_z(layer_index, pattern.view(), v4.view(), &mut z.view_mut());

            let z_rows = z
                .view()
                .into_shape_with_order((n_rows, n_heads * d_head))
                .unwrap(); // (N, H·d)
            let attn_out = layer.o.apply(z_rows); // (N, D)
            let head_out = (want_cache || record_outputs)
                .then(|| per_head_outputs(&z_rows, &layer.o.weight, batch, seq, n_heads)); // (B, T, H, D)
            let resid_mid = &resid_pre + &attn_out; // (N, D)

            if record_outputs {
                head_outs.push(head_out.clone().expect("computed when recording"));
                attn_biases.push(layer.o_bias.clone());
            }

            // ---- MLP -------------------------------------------------------------------
            // Intervention point: the residual stream the MLP reads (path edges into an MLP).
            let mlp_input = hooks.mlp_input(
                layer_index,
                rows_as_prompts(&resid_mid, batch, seq),
                &ComponentOutputs {
                    embed: embed.view(),
                    head_out: &head_outs,
                    attn_bias: &attn_biases,
                    mlp_out: &mlp_outs,
                },
            );
            let x = match mlp_input {
                Some(input) => layer.mlp_norm.apply(
                    input
                        .into_shape_with_order((n_rows, d_model))
                        .expect("mlp_input returns (B, T, D)")
                        .view(),
                ),
                None => layer.mlp_norm.apply(resid_mid.view()),
            }; // (N, D)
            let mut mlp_out = layer
                .mlp
                .apply(x.view())
                .into_shape_with_order((batch, seq, d_model))
                .unwrap(); // (B, T, D)

            // Intervention point: MLP output.
            hooks.edit_mlp_out(layer_index, &mut mlp_out.view_mut());
            let mlp_rows = mlp_out
                .view()
                .into_shape_with_order((n_rows, d_model))
                .unwrap();
            resid = &resid_mid + &mlp_rows; // (N, D)

            if record_outputs {
                mlp_outs.push(mlp_out.clone());
            }
            if want_cache {
                let kv_heads = |a: &Array4<f32>| {
                    // The key/value head g is stored at query head g·group (its first user).
                    a.slice(s![.., .., ..;group, ..]).to_owned()
                };
                layer_caches.push(LayerCache {
                    resid_pre: to3(&resid_pre),
                    k: kv_heads(&k4),
                    v: kv_heads(&v4),
                    q: q4,
                    scores,
                    pattern,
                    z,
                    head_out: head_out.expect("computed for the cache"),
                    attn_out: to3(&attn_out),
                    resid_mid: to3(&resid_mid),
                    mlp_out,
                    resid_post: to3(&resid),
                });
            }
        }

        // The rows logits are read at, and how many of them each prompt has.
        let end_rows_of_resid;
        let (logit_rows, rows_per_prompt) = if end_rows_only {
            (resid.view(), 1) // already only the END rows: (B, D)
        } else {
            // Intervention point: the residual stream the unembedding reads.
            let unembed_input = hooks.unembed_input(
                rows_as_prompts(&resid, batch, seq),
                &ComponentOutputs {
                    embed: embed.view(),
                    head_out: &head_outs,
                    attn_bias: &attn_biases,
                    mlp_out: &mlp_outs,
                },
            );
            if let Some(input) = unembed_input {
                resid = input
                    .into_shape_with_order((n_rows, d_model))
                    .expect("unembed_input returns (B, T, D)");
            }
            if all_logits {
                (resid.view(), seq) // (N, D)
            } else {
                // Only each prompt's last real row: the unembedding dominates at short lengths.
                end_rows_of_resid = resid.select(Axis(0), &end_rows);
                (end_rows_of_resid.view(), 1) // (B, D)
            }
        };
        let unembed = self.unembed.as_ref().unwrap_or(&self.embed); // (V, D)
        let normed = self.final_norm.apply(logit_rows);
        let logits = matmul(normed.view(), unembed.t())
            .into_shape_with_order((batch, rows_per_prompt, unembed.nrows()))
            .unwrap(); // (B, T or 1, V)

        let cache = want_cache.then(|| ActivationCache {
            layers: layer_caches,
            embed,
            resid_final: to3(&resid),
        });
        (logits, cache)
    }

    /// The last layer computed only where END logits read it: `resid_pre` `(N, D)` → the
    /// residual stream after the layer at `end_rows` (one per prompt), `(B, D)`. Keys and
    /// values are computed for every row; queries, the attention output and the MLP only for
    /// END rows. Only called when no hook or cache could see the rows it skips.
    fn last_layer_at_end_rows(
        &self,
        layer: &Layer,
        resid_pre: &Array2<f32>, // (N, D)
        end_rows: &[usize],
        lengths: &[usize],
        seq: usize,
    ) -> Array2<f32> {
        let (n_heads, d_head) = (self.n_heads, self.d_head);
        let (batch, group) = (end_rows.len(), n_heads / self.n_kv_heads);
        let end_position = |b: usize| lengths[b] - 1;

        let x = layer.attn_norm.apply(resid_pre.view()); // (N, D)
        let mut q = layer.q.apply(x.select(Axis(0), end_rows).view()); // (B, H·d)
        let mut k = expand_kv(layer.k.apply(x.view()), group, d_head); // (N, H·d)
        let v = expand_kv(layer.v.apply(x.view()), group, d_head); // (N, H·d)
        if let Positions::Rotary { inv_freq } = &self.positions {
            let (cos, sin) = rotary_tables(inv_freq, seq); // (T, d/2) each
            rotate(&mut q, &cos, &sin, end_position, d_head);
            rotate(&mut k, &cos, &sin, |row| row % seq, d_head);
        }
        let heads = |a: Array2<f32>, rows: usize| {
            a.into_shape_with_order((batch, rows, n_heads, d_head))
                .unwrap()
        };
        let (q4, k4, v4) = (heads(q, 1), heads(k, seq), heads(v, seq)); // (B, 1|T, H, d)

        let scale = 1.0 / (d_head as f32).sqrt();
        let scores = causal_scores(&q4, &k4, scale, |b, _| end_position(b)); // (B, H, 1, T)
        let z = weighted_values(&softmax_rows(&scores), &v4); // (B, 1, H, d)
        let z_rows = z.into_shape_with_order((batch, n_heads * d_head)).unwrap(); // (B, H·d)
        let resid_mid = resid_pre.select(Axis(0), end_rows) + layer.o.apply(z_rows.view()); // (B, D)
        let mlp_out = layer
            .mlp
            .apply(layer.mlp_norm.apply(resid_mid.view()).view()); // (B, D)
        resid_mid + mlp_out
    }
}

/// `(N, W)` rows as `(B, T, W)`, without a copy (rows are batch-major).
fn rows_as_prompts(rows: &Array2<f32>, batch: usize, seq: usize) -> ArrayView3<'_, f32> {
    rows.view()
        .into_shape_with_order((batch, seq, rows.ncols()))
        .expect("rows are B·T")
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
/// (`position_of_row`; the tables cover every position used).
fn rotate(
    x: &mut Array2<f32>,
    cos: &Array2<f32>,
    sin: &Array2<f32>,
    position_of_row: impl Fn(usize) -> usize + Sync,
    d_head: usize,
) {
    let half = d_head / 2;
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
/// position `query_position(b, i)`; keys after that position get `-inf` (the causal mask).
/// `q` `(B, T_q, H, d)`, `k` `(B, T, H, d)` → `(B, H, T_q, T)`.
fn causal_scores(
    q: &Array4<f32>,
    k: &Array4<f32>,
    scale: f32,
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
                        let last_key = query_position(b, i);
                        for tk in 0..seq {
                            block[i * seq + tk] = if tk <= last_key {
                                dot(q_row, &k[k_offset(tk)..k_offset(tk) + d_head]) * scale
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
                        *x = super::numerics::exp(*x - max);
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

/// Each head's own write `z_h · W_O^h` (no bias): (B, T, H, D).
fn per_head_outputs(
    z_rows: &ArrayView2<f32>, // (N, H·d)
    w_o: &Array2<f32>,        // (H·d, D)
    batch: usize,
    seq: usize,
    n_heads: usize,
) -> Array4<f32> {
    let d_head = z_rows.ncols() / n_heads;
    let d_model = w_o.ncols();
    let mut out = Array4::<f32>::zeros((batch, seq, n_heads, d_model));
    for h in 0..n_heads {
        let cols = h * d_head..(h + 1) * d_head;
        let written = z_rows
            .slice(s![.., cols.clone()])
            .dot(&w_o.slice(s![cols, ..])); // (N, D)
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
    use super::*;

    #[test]
    fn few_row_and_many_row_products_agree() {
        // 200 rows and any 10 of them may take different kernels (`linalg::kernel_for`).
        let x = Array2::from_shape_fn((200, 64), |(i, j)| ((i * 31 + j * 7) % 17) as f32 - 8.0);
        let w = Array2::from_shape_fn((64, 300), |(i, j)| ((i * 13 + j * 5) % 11) as f32 * 0.25);
        let all = matmul(x.view(), w.view());
        let few = matmul(x.slice(s![40..50, ..]), w.view());
        assert_eq!(few, all.slice(s![40..50, ..]));
        // And both are x·w (small integers times quarters: exact in f32).
        assert_eq!(all, x.dot(&w));
        // With a bias accumulated onto, through a transposed weight view as Llama stores it.
        let stored = w.t().to_owned(); // (out, in)
        let linear = Linear {
            weight: stored.reversed_axes(),
            bias: Some(Array1::from_elem(300, 0.5)),
        };
        let with_bias = linear.apply(x.slice(s![0..10, ..]));
        assert_eq!(with_bias, x.slice(s![0..10, ..]).dot(&w) + 0.5);
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
