//! Resuming a forward pass from the middle: what an exact ablation scan (`src/scan/`) needs to
//! recompute only the part of the network an ablation can change.
//!
//! An edit of layer `l`'s output at query row `q` of a prompt changes nothing before layer `l`
//! and nothing in rows before `q` (the causal mask: a row reads only rows at or before it;
//! a sliding window only narrows what it reads). So
//! the forward of the edited prompt can start at layer `l + 1` with the rows `q..len` alone,
//! reading the keys and values of rows `< q` from a base run ([`ResumeBase`]). Many such
//! resumed prompts ("items") run as one batch: their rows are stacked, so every projection is
//! one large product, and attention runs per item over its base prefix and its own rows.
//!
//! The math is [`Transformer::forward`](super::transformer::Transformer)'s, block by block
//! (same norms, projections, rotary, softmax and MLP), but the products run over other row
//! sets, so results agree with a full forward to f32 rounding, not bit for bit.
//!
//! Shapes: `B` base prompts right-padded to `T`, `N` stacked rows of the resumed items, `I`
//! items, `H` query heads, `Hkv` key/value heads, `d` head size, `D` model width, `V`
//! vocabulary.

use ndarray::{s, Array2, Array3, Array4, ArrayView2, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::blocks::{rotary_tables, rotate};
use super::config::visible_keys;
use super::numerics::{dot, exp, widest_simd};
use super::transformer::{soft_cap, Positions};
use super::ResidualTopology;
use super::{ForwardOptions, Interventions, Model, ModelError};

/// One layer of a base run, as a resumed forward reads it. Rows past a prompt's length are
/// padding.
#[derive(Debug)]
pub struct BaseLayer {
    /// The residual stream entering the layer, `(B, T, D)`.
    pub resid_pre: Array3<f32>,
    /// After the attention, `(B, T, D)`.
    pub resid_mid: Array3<f32>,
    /// Per-head outputs before `W_O`, after the base run's own edits, `(B, T, H, d)`.
    pub z: Array4<f32>,
    /// The attention pattern, `(B, H, T, T)`.
    pub pattern: Array4<f32>,
    /// Keys after rotary, `(B, T, Hkv, d)`.
    pub k: Array4<f32>,
    /// Values indexed by query head, `(B, T, H, d)`.
    pub v: Array4<f32>,
}

/// What a base run (the full model, or a circuit's ablations in place) leaves for resumed
/// forwards: every layer's inputs, keys and values, for every prompt.
#[derive(Debug)]
pub struct ResumeBase {
    pub layers: Vec<BaseLayer>,
    /// The residual stream the unembedding reads, `(B, T, D)`.
    pub resid_final: Array3<f32>,
    /// Real token count per prompt.
    pub lengths: Vec<usize>,
}

impl ResumeBase {
    /// The residual stream entering `layer` (`resid_final` for `layer = L`), `(B, T, D)`.
    pub fn resid_entering(&self, layer: usize) -> &Array3<f32> {
        match self.layers.get(layer) {
            Some(l) => &l.resid_pre,
            None => &self.resid_final,
        }
    }
}

/// One resumed prompt: base prompt `prompt`, recomputed from token position `first_row` to its
/// end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeItem {
    pub prompt: usize,
    pub first_row: usize,
}

/// Edits applied to the recomputed rows of each item (the base run's own ablations, which
/// must hold in the rows a resumed forward recomputes too). Every method defaults to no edit.
pub trait RowEdits: Sync {
    /// Per-head outputs before `W_O` of item `item` at `layer`, for its rows from token
    /// position `first_row` on, `(S, H, d)`.
    fn edit_z(&self, _layer: usize, _item: usize, _first_row: usize, _z: &mut ArrayViewMut3<f32>) {}

    /// The MLP output of item `item` at `layer`, rows from `first_row` on, `(S, D)`.
    fn edit_mlp_out(
        &self,
        _layer: usize,
        _item: usize,
        _first_row: usize,
        _out: &mut ArrayViewMut2<f32>,
    ) {
    }
}

/// No edit: resumed forwards of the full model.
pub struct NoRowEdits;

impl RowEdits for NoRowEdits {}

impl Model {
    /// Runs `tokens` (in batches of `batch_size`) under `hooks` and keeps what resumed
    /// forwards read ([`ResumeBase`]).
    pub fn resume_base<'h>(
        &self,
        tokens: &[Vec<u32>],
        hooks_for: &dyn Fn(std::ops::Range<usize>) -> Box<dyn Interventions + 'h>,
        batch_size: usize,
    ) -> Result<ResumeBase, ModelError> {
        let seq = tokens.iter().map(Vec::len).max().unwrap_or(0);
        let (n, d_model) = (tokens.len(), self.config.d_model);
        let (n_layers, n_heads, d_head) = (
            self.config.n_layers,
            self.config.n_heads,
            self.config.d_head,
        );
        let n_kv = self.transformer.n_kv_heads;
        let mut layers: Vec<BaseLayer> = (0..n_layers)
            .map(|_| BaseLayer {
                resid_pre: Array3::zeros((n, seq, d_model)),
                resid_mid: Array3::zeros((n, seq, d_model)),
                z: Array4::zeros((n, seq, n_heads, d_head)),
                pattern: Array4::zeros((n, n_heads, seq, seq)),
                k: Array4::zeros((n, seq, n_kv, d_head)),
                v: Array4::zeros((n, seq, n_heads, d_head)),
            })
            .collect();
        let mut resid_final = Array3::zeros((n, seq, d_model));
        let options = ForwardOptions {
            all_logits: false,
            cache: true,
        };
        for start in (0..n).step_by(batch_size.max(1)) {
            let end = (start + batch_size.max(1)).min(n);
            let hooks = hooks_for(start..end);
            let out = self.forward(&tokens[start..end], &options, hooks.as_ref())?;
            let cache = out.cache.expect("the cache was asked for");
            let t = cache.embed.dim().1; // this batch's padded length
            for (base, layer) in layers.iter_mut().zip(&cache.layers) {
                base.resid_pre
                    .slice_mut(s![start..end, ..t, ..])
                    .assign(&layer.resid_pre);
                base.resid_mid
                    .slice_mut(s![start..end, ..t, ..])
                    .assign(&layer.resid_mid);
                base.z
                    .slice_mut(s![start..end, ..t, .., ..])
                    .assign(&layer.z);
                base.pattern
                    .slice_mut(s![start..end, .., ..t, ..t])
                    .assign(&layer.pattern);
                base.k
                    .slice_mut(s![start..end, ..t, .., ..])
                    .assign(&layer.k);
                base.v
                    .slice_mut(s![start..end, ..t, .., ..])
                    .assign(&layer.v_by_query_head);
            }
            resid_final
                .slice_mut(s![start..end, ..t, ..])
                .assign(&cache.resid_final);
        }
        Ok(ResumeBase {
            layers,
            resid_final,
            lengths: tokens.iter().map(Vec::len).collect(),
        })
    }

    /// `o(z) + bias` of `layer` for rows of per-head outputs `z` `(N, H·d)` → `(N, D)`, then
    /// the layer's post-attention norm if it has one (Gemma 2): what the attention block adds
    /// to the residual stream.
    pub fn attention_output_rows(&self, layer: usize, z: ArrayView2<f32>) -> Array2<f32> {
        let layer = &self.transformer.layers[layer];
        let out = layer.o.apply(z); // (N, D)
        match &layer.attn_post_norm {
            Some(post_norm) => post_norm.apply(out.view()),
            None => out,
        }
    }

    /// The MLP of `layer` (its norm included) at rows of the residual stream `(N, D)` → `(N, D)`:
    /// it reads `resid_mid` (the stream after the layer's attention) under the sequential
    /// wiring, `resid_pre` (the stream entering the layer) under the parallel one.
    pub fn mlp_rows(
        &self,
        layer: usize,
        resid_pre: ArrayView2<f32>,
        resid_mid: ArrayView2<f32>,
    ) -> Array2<f32> {
        let reads = match self.transformer.residual {
            ResidualTopology::Sequential | ResidualTopology::SequentialPostNorm => resid_mid,
            ResidualTopology::Parallel => resid_pre,
        };
        let layer = &self.transformer.layers[layer];
        let normed = layer.mlp_norm.apply(reads);
        let out = layer.mlp.forward(normed.view(), false).1; // (N, D)
        match &layer.mlp_post_norm {
            Some(post_norm) => post_norm.apply(out.view()),
            None => out,
        }
    }

    /// Final norm and unembedding of residual rows `(N, D)` → logits `(N, V)`.
    pub fn unembed_rows(&self, resid: ArrayView2<f32>) -> Array2<f32> {
        self.transformer
            .unembed_forward(&resid.to_owned(), resid.nrows(), super::blocks::Rows::All)
            .index_axis_move(Axis(1), 0)
    }

    /// END logits `(I, V)` of resumed items: item `i` enters layer `start_layer` with the rows
    /// of `resid` `(N, D)` from its offset on (`len − first_row` rows each, items in order),
    /// reads the keys and values of rows before `first_row` from `base`, and has `edits`
    /// applied to its recomputed rows. The last layer computes its queries, attention output
    /// and MLP at END rows only (its keys and values still need every recomputed row).
    pub fn resume_end_logits(
        &self,
        base: &ResumeBase,
        start_layer: usize,
        items: &[ResumeItem],
        resid: Array2<f32>,
        edits: &dyn RowEdits,
    ) -> Array2<f32> {
        let lens: Vec<usize> = items
            .iter()
            .map(|it| base.lengths[it.prompt] - it.first_row)
            .collect();
        let offsets: Vec<usize> = lens
            .iter()
            .scan(0, |acc, &l| {
                let o = *acc;
                *acc += l;
                Some(o)
            })
            .collect();
        assert_eq!(
            resid.nrows(),
            lens.iter().sum::<usize>(),
            "rows of every item"
        );
        let end_rows: Vec<usize> = offsets.iter().zip(&lens).map(|(o, l)| o + l - 1).collect();
        let n_layers = self.transformer.layers.len();
        let mut resid = resid; // (N, D), or (I, D) after the last layer
        for index in start_layer..n_layers {
            let end_only = index + 1 == n_layers;
            resid = self.resume_layer(
                base, index, items, &lens, &offsets, &end_rows, resid, end_only, edits,
            );
        }
        if start_layer >= n_layers {
            resid = resid.select(Axis(0), &end_rows);
        }
        self.unembed_rows(resid.view()) // (I, V)
    }

    /// One layer of resumed items: `(N, D)` → `(N, D)`, or `(I, D)` at END rows with
    /// `end_only`.
    #[allow(clippy::too_many_arguments)]
    fn resume_layer(
        &self,
        base: &ResumeBase,
        index: usize,
        items: &[ResumeItem],
        lens: &[usize],
        offsets: &[usize],
        end_rows: &[usize],
        resid: Array2<f32>, // (N, D)
        end_only: bool,
        edits: &dyn RowEdits,
    ) -> Array2<f32> {
        let t = &self.transformer;
        let layer = &t.layers[index];
        let (n_heads, d_head) = (t.n_heads, t.d_head);
        let group = n_heads / t.n_kv_heads;
        let base_layer = &base.layers[index];
        let window = t.attention_window(index);
        // Token position of stacked row r of item i: first_row + (r − offset).
        let mut position_of_row = vec![0usize; resid.nrows()];
        for (i, it) in items.iter().enumerate() {
            for r in 0..lens[i] {
                position_of_row[offsets[i] + r] = it.first_row + r;
            }
        }
        let normed = layer.attn_norm.apply(resid.view()); // (N, D)
        let query_rows: Vec<usize> = if end_only {
            end_rows.to_vec()
        } else {
            (0..resid.nrows()).collect()
        };
        let mut q = if end_only {
            layer.q.apply(normed.select(Axis(0), end_rows).view())
        } else {
            layer.q.apply(normed.view())
        }; // (N_q, H·d)
        let mut k = layer.k.apply(normed.view()); // (N, Hkv·d)
        let v = layer.v.apply(normed.view()); // (N, Hkv·d)
        layer.normalize_qk(&mut q, &mut k, d_head); // Qwen3's per-head norms, before rotary
        if let Positions::Rotary { inv_freq } = &t.positions {
            let longest = base.lengths.iter().copied().max().unwrap_or(0);
            let (cos, sin) = rotary_tables(inv_freq, longest); // (T, d/2) each
            rotate(
                &mut q,
                &cos,
                &sin,
                |r| position_of_row[query_rows[r]],
                d_head,
            );
            rotate(&mut k, &cos, &sin, |r| position_of_row[r], d_head);
        }
        let scale = t.score_scale();
        let softcap = t.scaling.attn_logit_softcap;
        // Item of each query row, and the query rows' offsets per item.
        let (q_lens, q_offsets): (Vec<usize>, Vec<usize>) = if end_only {
            (
                (0..items.len()).map(|_| 1).collect(),
                (0..items.len()).collect(),
            )
        } else {
            (lens.to_vec(), offsets.to_vec())
        };
        let mut z = Array2::<f32>::zeros((query_rows.len(), n_heads * d_head)); // (N_q, H·d)
        {
            let z_slice = z.as_slice_mut().expect("standard layout");
            // Split the output by item so items run in parallel.
            let mut chunks: Vec<&mut [f32]> = Vec::with_capacity(items.len());
            let mut rest = z_slice;
            for &ql in &q_lens {
                let (head, tail) = rest.split_at_mut(ql * n_heads * d_head);
                chunks.push(head);
                rest = tail;
            }
            let (q_s, k_s, v_s) = (
                q.as_slice().expect("standard layout"),
                k.as_slice().expect("standard layout"),
                v.as_slice().expect("standard layout"),
            );
            let (kv_width, q_width) = (t.n_kv_heads * d_head, n_heads * d_head);
            let seq = base_layer.k.dim().1; // T of the base run
            let (base_k, base_v) = (
                base_layer.k.as_slice().expect("standard layout"), // (B, T, Hkv, d)
                base_layer.v.as_slice().expect("standard layout"), // (B, T, H, d)
            );
            chunks.into_par_iter().enumerate().for_each(|(i, out)| {
                let it = items[i];
                let b = it.prompt;
                let f = it.first_row;
                let mut weights = vec![0f32; base.lengths[b]];
                widest_simd(
                    #[inline(always)]
                    || {
                        for qi in 0..q_lens[i] {
                            let q_row = q_offsets[i] + qi;
                            let position = position_of_row[query_rows[q_row]];
                            for h in 0..n_heads {
                                let g = h / group;
                                let qv = &q_s[q_row * q_width + h * d_head..][..d_head];
                                let key = |kk: usize| -> &[f32] {
                                    if kk < f {
                                        &base_k[((b * seq + kk) * kv_width) + g * d_head..]
                                            [..d_head]
                                    } else {
                                        let r = offsets[i] + kk - f;
                                        &k_s[r * kv_width + g * d_head..][..d_head]
                                    }
                                };
                                // Scores (soft-capped as Gemma 2 caps them), softmax: as the
                                // engine's `causal_scores` and `softmax_rows` (max,
                                // exp(x − max), sum, divide), over the keys the layer's window
                                // lets the query see (the one rule).
                                let visible = visible_keys(window, position);
                                let first = *visible.start();
                                let w = &mut weights[visible];
                                for (j, x) in w.iter_mut().enumerate() {
                                    let s = dot(qv, key(first + j)) * scale;
                                    *x = match softcap {
                                        Some(cap) => soft_cap(s, cap),
                                        None => s,
                                    };
                                }
                                let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                                let mut sum = 0.0;
                                for x in w.iter_mut() {
                                    *x = exp(*x - max);
                                    sum += *x;
                                }
                                for x in w.iter_mut() {
                                    *x /= sum;
                                }
                                let o = &mut out[(qi * n_heads + h) * d_head..][..d_head];
                                for (j, &wk) in w.iter().enumerate() {
                                    let kk = first + j;
                                    if wk == 0.0 {
                                        continue;
                                    }
                                    if kk < f {
                                        let vv = &base_v[((b * seq + kk) * q_width) + h * d_head..]
                                            [..d_head];
                                        for (o, x) in o.iter_mut().zip(vv) {
                                            *o += wk * x;
                                        }
                                    } else {
                                        let r = offsets[i] + kk - f;
                                        let vv = &v_s[r * kv_width + g * d_head..][..d_head];
                                        for (o, x) in o.iter_mut().zip(vv) {
                                            *o += wk * x;
                                        }
                                    }
                                }
                            }
                        }
                    },
                );
            });
        }
        // Item i's computed rows and the token position of the first of them.
        let item_rows = |i: usize| {
            let first = if end_only {
                items[i].first_row + lens[i] - 1
            } else {
                items[i].first_row
            };
            (q_offsets[i]..q_offsets[i] + q_lens[i], first)
        };
        for (i, _) in items.iter().enumerate() {
            let (rows, first) = item_rows(i);
            let mut item_z = z
                .slice_mut(s![rows, ..])
                .into_shape_with_order((q_lens[i], n_heads, d_head))
                .expect("rows of H·d"); // (S, H, d)
            edits.edit_z(index, i, first, &mut item_z);
        }
        let attn_out = self.attention_output_rows(index, z.view()); // (N_q, D), post-normed
                                                                    // Under the parallel wiring the MLP reads the stream entering the layer, not the
                                                                    // attention's output (the one rule: `ResidualTopology`).
        let parallel_input = match t.residual {
            ResidualTopology::Sequential | ResidualTopology::SequentialPostNorm => None,
            ResidualTopology::Parallel if end_only => Some(resid.select(Axis(0), end_rows)),
            ResidualTopology::Parallel => Some(resid.clone()),
        }; // (N_q, D)
        let resid_mid = if end_only {
            resid.select(Axis(0), end_rows) + &attn_out
        } else {
            resid + &attn_out
        }; // (N_q, D)
        let normed = layer.mlp_norm.apply(
            parallel_input
                .as_ref()
                .map_or(resid_mid.view(), |r| r.view()),
        );
        let (_, mut mlp_out) = layer.mlp.forward(normed.view(), false); // (N_q, D)
        if let Some(post_norm) = &layer.mlp_post_norm {
            mlp_out = post_norm.apply(mlp_out.view()); // (N_q, D), Gemma 2
        }
        for (i, _) in items.iter().enumerate() {
            let (rows, first) = item_rows(i);
            edits.edit_mlp_out(index, i, first, &mut mlp_out.slice_mut(s![rows, ..]));
        }
        resid_mid + &mlp_out
    }
}
