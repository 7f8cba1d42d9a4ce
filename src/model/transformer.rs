//! The forward pass shared by every family (GPT-2, Llama, GPT-NeoX), written to mirror the math.
//!
//! Every family is one residual stream with, per layer, an attention and an MLP block, wired
//! sequentially (`resid_mid = resid_pre + attn(norm(resid_pre))`, `resid_post = resid_mid +
//! mlp(norm(resid_mid))`) or in parallel (GPT-NeoX: `resid_post = resid_pre +
//! attn(norm(resid_pre)) + mlp(norm'(resid_pre))`); they differ only in the norm (LayerNorm /
//! RMSNorm), the positions (learned / rotary, on all or part of each head), the MLP (gelu_new /
//! exact GELU / SwiGLU) and whether key/value heads are shared (grouped-query attention).
//! Those differences are the enums below; the loaders (`gpt2.rs`, `llama.rs`, `gpt_neox.rs`)
//! fill them from the safetensors names.
//!
//! [`Transformer::forward`] wires the blocks of `blocks.rs` (embed, attention, MLP, final norm
//! and unembed) along the residual stream; each hook of [`Interventions`] is called at exactly one
//! place in those blocks. Shapes: `B` prompts right-padded to `T` tokens, `N = B·T` rows when
//! batch and sequence are flattened for the projections, `H` query heads, `Hkv` key/value
//! heads, `d` head size, `D` model width, `M` MLP width, `V` vocabulary.

use ndarray::{s, Array1, Array2, Array3, ArrayView2, Axis};
use rayon::prelude::*;

use super::blocks::{Batch, MlpActivations, MlpTrace, Rows};
use super::cache::{rows_as_prompts, Keep, Kept, Recorder};
use super::config::Scaling;
use super::interventions::{Interventions, NoInterventions};
use super::linalg::affine;
use super::numerics::{sum_of, widest_simd};
use super::stored::Weight;
use super::topology::ResidualTopology;

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
/// of the stored `(out, in)` matrix: no copy). `W` is f32 or in its stored dtype (`stored.rs`).
pub(crate) struct Linear {
    pub weight: Weight,            // (in, out)
    pub bias: Option<Array1<f32>>, // (out,)
}

impl Linear {
    /// (N, in) → (N, out)
    pub(crate) fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        affine(x, self.weight.view(), self.bias.as_ref().map(|b| b.view()))
    }

    /// Only output columns `cols` of the layer: (N, in) → (N, cols.len())
    pub(crate) fn apply_columns(
        &self,
        x: ArrayView2<f32>,
        cols: std::ops::Range<usize>,
    ) -> Array2<f32> {
        let bias = self.bias.as_ref().map(|b| b.slice(s![cols.clone()]));
        affine(x, self.weight.view().columns(cols), bias)
    }
}

/// How positions enter: added learned embeddings (GPT-2) or rotary q/k rotations (Llama).
pub(crate) enum Positions {
    Learned {
        wpe: Array2<f32>, // (n_ctx, D)
    },
    /// HF's rotate-half convention on the first `r = 2·inv_freq.len()` dimensions of each head
    /// (`r = d`, or less under GPT-NeoX's partial rotary; the other `d − r` pass unchanged):
    /// dimension `i < r/2` pairs with `i + r/2`, rotated by `position · inv_freq[i]`. The
    /// cos/sin tables are built per forward for its `T` positions (a table for the whole
    /// context can be large for long-context models).
    Rotary {
        inv_freq: Vec<f32>, // (r/2,)
    },
}

impl Positions {
    /// Rotary embeddings turn pairs of dimensions: a family rotating whole heads needs an even
    /// head size.
    pub(crate) fn check_even_head(d_head: usize) -> Result<(), super::ModelError> {
        if d_head.is_multiple_of(2) {
            return Ok(());
        }
        Err(super::ModelError::Unsupported {
            what: format!("rotary embeddings need an even head size, not {d_head}"),
        })
    }

    /// Rotary embeddings on the first `rotary_dim` dimensions of each head:
    /// `inv_freq[i] = 1 / theta^(2i/r)`, in f32 as HF computes it.
    pub(crate) fn rotary(rotary_dim: usize, theta: f32) -> Positions {
        let inv_freq = (0..rotary_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / rotary_dim as f32))
            .collect();
        Positions::Rotary { inv_freq }
    }
}

pub(crate) enum Mlp {
    /// GPT-2: `c_proj(gelu_new(c_fc(x)))`.
    GeluNew { fc: Linear, proj: Linear },
    /// GPT-NeoX: `dense_4h_to_h(gelu(dense_h_to_4h(x)))` with the exact (erf) GELU.
    GeluErf { fc: Linear, proj: Linear },
    /// Llama: `down(silu(gate(x)) * up(x))`.
    SwiGlu {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// Gemma 2: `down(gelu_tanh(gate(x)) * up(x))` (`gelu_pytorch_tanh`, the same function as
    /// GPT-2's `gelu_new`).
    GeGlu {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
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
    /// Gemma 2's `post_attention_layernorm`: applied to the attention's output `o(z)` before
    /// it is added to the residual stream (`None`: added as it is).
    pub attn_post_norm: Option<Norm>,
    /// Gemma 2's `post_feedforward_layernorm`, likewise for the MLP's output.
    pub mlp_post_norm: Option<Norm>,
    /// Qwen3's `q_norm` and `k_norm`: RMSNorms of width `d` applied to each head of q and of k
    /// after the projection, before rotary (`None`: q and k as projected).
    pub qk_norm: Option<QkNorm>,
}

/// The per-head norms of q and k (Qwen3), each of width `d`.
pub(crate) struct QkNorm {
    pub q: Norm,
    pub k: Norm,
}

impl Layer {
    /// Applies the layer's per-head q/k norms, if any, to projected `q` `(N_q, H·d)` and `k`
    /// `(N, heads·d)` (by query or by key/value head: the norm is the same for every head).
    /// Every attention that computes q and k calls this between projection and rotary.
    pub(crate) fn normalize_qk(&self, q: &mut Array2<f32>, k: &mut Array2<f32>, d_head: usize) {
        if let Some(norms) = &self.qk_norm {
            *q = per_head(&norms.q, std::mem::take(q), d_head);
            *k = per_head(&norms.k, std::mem::take(k), d_head);
        }
    }
}

/// `norm` (of width `d`) over each `d`-wide head of `x` `(N, heads·d)`.
pub(crate) fn per_head(norm: &Norm, x: Array2<f32>, d_head: usize) -> Array2<f32> {
    let (rows, width) = x.dim();
    let heads = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((rows * width / d_head, d_head))
        .expect("standard layout"); // (N·heads, d)
    norm.apply(heads.view())
        .into_shape_with_order((rows, width))
        .expect("standard layout") // (N, heads·d)
}

/// A whole model's weights, in one vocabulary for both families.
pub(crate) struct Transformer {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub embed: Weight, // (V, D)
    pub positions: Positions,
    pub layers: Vec<Layer>,
    /// How each layer's attention and MLP are wired to the residual stream.
    pub residual: ResidualTopology,
    /// Per layer, the keys a query attends to ([`ModelConfig::attention_windows`]).
    ///
    /// [`ModelConfig::attention_windows`]: super::ModelConfig::attention_windows
    pub attention_windows: Vec<Option<usize>>,
    pub final_norm: Norm,
    /// `None`: tied to `embed`. Whichever matrix the logits are read with is stored
    /// column-major (`linalg::unembedding_layout`), so its `(D, V)` transpose is contiguous.
    pub unembed: Option<Weight>, // (V, D)
    /// Gemma 2's embedding scale, attention scale and soft caps (none elsewhere).
    pub scaling: Scaling,
}

impl Transformer {
    /// The attention scores' scale: `1/√d_head`, or the config's (Gemma 2).
    pub(crate) fn score_scale(&self) -> f32 {
        self.scaling
            .query
            .unwrap_or_else(|| 1.0 / (self.d_head as f32).sqrt())
    }
}

/// `c·tanh(x/c)` (transformers' soft cap: divide, tanh, multiply), elementwise.
pub(crate) fn soft_cap(x: f32, cap: f32) -> f32 {
    (x / cap).tanh() * cap
}

impl Transformer {
    /// Layer `layer`'s sliding window, `None` for plain causal attention.
    pub(crate) fn attention_window(&self, layer: usize) -> Option<usize> {
        self.attention_windows.get(layer).copied().flatten()
    }

    /// Runs `ids` `(B, T)` (right-padded; `lengths[b]` real tokens each) through the model.
    /// Returns the logits `logits` asks for and the intermediates `keep` asks for.
    ///
    /// The blocks (`blocks.rs`) wired along the residual stream as `self.residual` says:
    /// sequentially, `resid_mid = resid_pre + attn(resid_pre)`, `resid_post = resid_mid +
    /// mlp(resid_mid)`; in parallel, the MLP reads `resid_pre` instead (`resid_mid` is then the
    /// partial sum `resid_pre + attn(resid_pre)`, which no block reads).
    pub(crate) fn forward(
        &self,
        ids: &Array2<u32>,
        lengths: &[usize],
        logits: LogitRows,
        keep: Keep,
        hooks: &dyn Interventions,
    ) -> (Array3<f32>, Option<Kept>) {
        let all_logits = logits == LogitRows::All;
        let (prompts, seq) = ids.dim();
        let batch = Batch { prompts, seq };
        let group = self.n_heads / self.n_kv_heads;

        let mut resid = self.embed_forward(ids); // (N, D)
                                                 // Intervention point: the input embeddings.
        hooks.edit_embed(
            &mut resid
                .view_mut()
                .into_shape_with_order((prompts, seq, self.embed.ncols()))
                .expect("(N, D) rows are (B, T, D)"),
        );
        let mut recorder = Recorder::new(
            &resid,
            prompts,
            seq,
            group,
            keep,
            hooks.needs_component_outputs(),
        );

        // Each prompt's last real row, where END logits are read.
        let end_rows: Vec<usize> = lengths
            .iter()
            .enumerate()
            .map(|(b, &len)| b * seq + len - 1)
            .collect();
        // When only END logits are wanted and nothing can observe the other rows, the last
        // layer runs its queries, attention output and MLP at END rows alone (its keys and
        // values still need every row). For GPT-2 small at 16 tokens this skips ~6% of the
        // forward's FLOPs. The hooks promised to edit and observe nothing (`is_identity`), so
        // that layer and the unembedding run with none.
        let end_rows_only = !all_logits && matches!(keep, Keep::Nothing) && hooks.is_identity();
        let last_layer = self.layers.len() - 1;

        for (index, layer) in self.layers.iter().enumerate() {
            let (queries, hooks) = if end_rows_only && index == last_layer {
                (
                    Rows::Selected(&end_rows),
                    &NoInterventions as &dyn Interventions,
                )
            } else {
                (Rows::All, hooks)
            };
            let resid_pre = resid; // (N, D)
            let attention = self.attention_forward(
                index,
                layer,
                &resid_pre,
                batch,
                queries,
                hooks,
                &recorder.outputs(),
                recorder.wants_head_outputs(),
            );
            let resid_mid = match queries {
                Rows::All => &resid_pre + &attention.out,
                Rows::Selected(rows) => resid_pre.select(Axis(0), rows) + &attention.out,
            }; // (N_q, D)
            recorder.attention_done(&attention, &layer.o_bias);

            // The stream the MLP reads: the attention's output included or not.
            let parallel_input;
            let mlp_reads = match (self.residual, queries) {
                (ResidualTopology::Sequential | ResidualTopology::SequentialPostNorm, _) => {
                    &resid_mid
                }
                (ResidualTopology::Parallel, Rows::All) => &resid_pre,
                (ResidualTopology::Parallel, Rows::Selected(rows)) => {
                    parallel_input = resid_pre.select(Axis(0), rows); // (N_q, D)
                    &parallel_input
                }
            };
            let mlp = if matches!(keep, Keep::Nothing) && hooks.replaces_mlp_out(index) {
                replaced_mlp(index, mlp_reads.dim(), prompts, hooks)
            } else {
                self.mlp_forward(
                    index,
                    layer,
                    mlp_reads,
                    prompts,
                    hooks,
                    &recorder.outputs(),
                    recorder.wants_mlp_pre_activations(), // for a backward pass
                )
            };
            resid = &resid_mid + &mlp.out_rows(); // (N_q, D)
            recorder.layer_done(&resid_pre, attention, &resid_mid, mlp, &resid);
        }

        let hooks = if end_rows_only {
            &NoInterventions
        } else {
            hooks
        };
        // Intervention point: the residual stream the unembedding reads.
        let rows_per_prompt = resid.nrows() / prompts; // T, or 1 after END rows only
        if let Some(input) = hooks.unembed_input(
            rows_as_prompts(&resid, prompts, rows_per_prompt),
            &recorder.outputs(),
        ) {
            resid = input
                .into_shape_with_order(resid.dim())
                .expect("unembed_input returns (B, T, D)");
        }
        let read_at = if all_logits || end_rows_only {
            Rows::All
        } else {
            Rows::Selected(&end_rows)
        };
        let logits = match logits {
            LogitRows::Skipped => Array3::zeros((prompts, 1, 0)),
            _ => self.unembed_forward(&resid, prompts, read_at), // (B, T or 1, V)
        };
        (logits, recorder.finish(&resid))
    }
}

/// Which logits a forward computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogitRows {
    /// At each prompt's last real token, `(B, 1, V)`.
    End,
    /// At every position, `(B, T, V)`.
    All,
    /// None, `(B, 1, 0)`: a gradient pass under `logit_diff`, which reads two logits a prompt
    /// and computes them itself (`backward::answer_and_distractor_logits`), so that its
    /// `(B, D)·(D, V)` unembedding is not run: GPT-2's W_U is 154 MB, read once per pass of a
    /// few prompts (measured 2026-12-04, `benches/eap.rs` path edges: 25–30 ms a pass of 8
    /// prompts, 4 passes of a 3.1 s call).
    Skipped,
}

/// The MLP of layer `index` when the hooks replace its whole output
/// ([`Interventions::replaces_mlp_out`]): nothing is computed, `edit_mlp_out` writes into
/// zeros `(B, T_q, D)` (`rows` = `(N_q, D)`). The trace holds no intermediates: only a pass
/// that keeps no cache (so no backward) takes this path.
fn replaced_mlp(
    index: usize,
    (n_rows, d_model): (usize, usize),
    prompts: usize,
    hooks: &dyn Interventions,
) -> MlpTrace {
    let mut out = Array3::zeros((prompts, n_rows / prompts, d_model)); // (B, T_q, D)
    hooks.edit_mlp_out(index, &mut out.view_mut());
    MlpTrace {
        normed: Array2::zeros((0, d_model)),
        activations: MlpActivations {
            pre_activation: None,
            up: None,
            hidden: Array2::zeros((0, 0)),
        },
        out,
    }
}

#[cfg(test)]
mod tests {
    use super::super::linalg::matmul;
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
            weight: stored.reversed_axes().into(),
            bias: Some(Array1::from_elem(300, 0.5)),
        };
        let with_bias = linear.apply(x.slice(s![0..10, ..]));
        assert_eq!(with_bias, x.slice(s![0..10, ..]).dot(&w) + 0.5);
    }
}
