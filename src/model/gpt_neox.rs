//! GPT-NeoX / Pythia weights (HF `GPTNeoXForCausalLM` names) into the shared [`Transformer`].
//!
//! Its attention projects q, k and v with one fused `query_key_value` layer whose output is
//! grouped per head (`[q_h | k_h | v_h]` for each head `h`, as transformers views it as
//! `(…, H, 3d)`), so the loader splits it into the three projections the blocks use. Rotary
//! embeddings turn only the first `rotary_dim` dimensions of each head (partial rotary), the
//! MLP uses the exact GELU, and the wiring (`use_parallel_residual`) is `config.residual`.

use ndarray::{Array1, Axis};

use super::config::ModelConfig;
use super::error::ModelError;
use super::linalg::unembedding_layout;
use super::transformer::{Layer, Linear, Mlp, Norm, Positions, Transformer};
use super::weights::WeightFiles;

pub(crate) fn load(config: &ModelConfig, files: &WeightFiles) -> Result<Transformer, ModelError> {
    if config.activation != "gelu" {
        return Err(ModelError::Unsupported {
            what: format!(
                "GPT-NeoX hidden_act {:?} (only the exact \"gelu\" is implemented)",
                config.activation
            ),
        });
    }
    if config.tie_word_embeddings {
        return Err(ModelError::Unsupported {
            what:
                "GPT-NeoX with `tie_word_embeddings: true` (Pythia's embed_out is its own matrix)"
                    .to_string(),
        });
    }
    let (d, m, vocab, n_heads, d_head) = (
        config.d_model,
        config.d_mlp,
        config.vocab_size,
        config.n_heads,
        config.d_head,
    );
    let matrix = |name: &str, rows: usize, cols: usize| files.matrix(name, rows, cols);
    let vector = |name: &str, len: usize| -> Result<Array1<f32>, ModelError> {
        Ok(Array1::from(files.tensor(name, &[len])?))
    };
    // nn.Linear(d_in → d_out), stored (out, in); biases as `bias` says.
    let linear =
        |name: &str, d_in: usize, d_out: usize, bias: bool| files.linear(name, d_in, d_out, bias);
    let layer_norm = |name: &str| -> Result<Norm, ModelError> {
        Ok(Norm::Layer {
            weight: vector(&format!("{name}.weight"), d)?,
            bias: vector(&format!("{name}.bias"), d)?,
            eps: config.norm_eps,
        })
    };

    // Before anything is allocated from config values: the layer count is the file's.
    super::check_layer_count(config, files)?;
    let bias = config.attention_bias;
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let l = format!("gpt_neox.layers.{i}");
        let qkv_name = format!("{l}.attention.query_key_value");
        let qkv_weight = matrix(&format!("{qkv_name}.weight"), 3 * d, d)?; // (3D, D) = (out, in)
        let qkv_bias = if bias {
            Some(vector(&format!("{qkv_name}.bias"), 3 * d)?) // (3D,)
        } else {
            None
        };
        // Output rows of part `j` (0 q, 1 k, 2 v): head h's rows h·3d + j·d .. + d.
        let part = |j: usize| -> Linear {
            let rows: Vec<usize> = (0..n_heads)
                .flat_map(|h| (h * 3 + j) * d_head..(h * 3 + j + 1) * d_head)
                .collect();
            Linear {
                weight: qkv_weight.select_rows(&rows).reversed_axes(), // (D, H·d)
                bias: qkv_bias.as_ref().map(|b| b.select(Axis(0), &rows)), // (H·d,)
            }
        };
        let o = linear(&format!("{l}.attention.dense"), d, d, bias)?;
        layers.push(Layer {
            attn_norm: layer_norm(&format!("{l}.input_layernorm"))?,
            q: part(0),
            k: part(1),
            v: part(2),
            o_bias: o.bias.clone().unwrap_or_else(|| Array1::zeros(d)),
            o,
            mlp_norm: layer_norm(&format!("{l}.post_attention_layernorm"))?,
            mlp: Mlp::GeluErf {
                fc: linear(&format!("{l}.mlp.dense_h_to_4h"), d, m, true)?,
                proj: linear(&format!("{l}.mlp.dense_4h_to_h"), m, d, true)?,
            },
            attn_post_norm: None,
            mlp_post_norm: None,
            qk_norm: None,
        });
    }
    Ok(Transformer {
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        embed: matrix("gpt_neox.embed_in.weight", vocab, d)?, // (V, D)
        positions: Positions::rotary(config.rotary_dim, config.rope_theta),
        layers,
        residual: config.residual,
        attention_windows: config.attention_windows.clone(),
        scaling: config.scaling,
        final_norm: layer_norm("gpt_neox.final_layer_norm")?,
        // The matrix the logits are read with, laid out for the product (linalg).
        unembed: Some(unembedding_layout(matrix("embed_out.weight", vocab, d)?)),
    })
}
