//! Gemma 2 weights (HF `Gemma2ForCausalLM` names) into the shared [`Transformer`].
//!
//! Llama's names and rotary attention, plus what Gemma 2 adds (transformers' `Gemma2DecoderLayer`):
//! - every RMSNorm multiplies by `1 + w` (`Gemma2RMSNorm`: `norm(x) · (1 + w)`, computed in f32);
//!   the loader stores `1 + w`, added in f32 as transformers adds it, so the engine's RMSNorm is
//!   unchanged;
//! - four norms per layer: `input_layernorm` before attention, `post_attention_layernorm` on
//!   its output before it is added, `pre_feedforward_layernorm` before the MLP and
//!   `post_feedforward_layernorm` on its output;
//! - a GeGLU MLP (`down(gelu_tanh(gate(x)) · up(x))`);
//! - the embedding scaled by `√D`, attention scores scaled by `query_pre_attn_scalar^-0.5` and
//!   soft-capped, the logits soft-capped ([`Scaling`](super::config::Scaling), from the config);
//! - the unembedding tied to the embedding unless the file holds `lm_head.weight`.

use ndarray::Array1;

use super::config::ModelConfig;
use super::error::ModelError;
use super::linalg::unembedding_layout;
use super::transformer::{Layer, Mlp, Norm, Positions, Transformer};
use super::weights::WeightFiles;

pub(crate) fn load(config: &ModelConfig, files: &WeightFiles) -> Result<Transformer, ModelError> {
    Positions::check_even_head(config.d_head)?;
    let (d, m, vocab) = (config.d_model, config.d_mlp, config.vocab_size);
    let (q_width, kv_width) = (
        config.n_heads * config.d_head,
        config.n_kv_heads * config.d_head,
    );
    // The attention's projections have biases iff `attention_bias`; the MLP's never.
    let linear =
        |name: &str, d_in: usize, d_out: usize, bias: bool| files.linear(name, d_in, d_out, bias);
    // Gemma2RMSNorm: `norm(x.float()) * (1.0 + weight.float())`; storing `1 + w` (one f32
    // addition, as transformers does it) leaves the engine's `w · norm(x)` the same product.
    let rms_norm = |name: &str| -> Result<Norm, ModelError> {
        let weight = files.tensor(&format!("{name}.weight"), &[d])?;
        Ok(Norm::Rms {
            weight: Array1::from_iter(weight.into_iter().map(|w| 1.0 + w)),
            eps: config.norm_eps,
        })
    };

    // Before anything is allocated from config values: the layer count is the file's.
    super::check_layer_count(config, files)?;
    let bias = config.attention_bias;
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let l = format!("model.layers.{i}");
        let o = linear(&format!("{l}.self_attn.o_proj"), q_width, d, bias)?;
        layers.push(Layer {
            attn_norm: rms_norm(&format!("{l}.input_layernorm"))?,
            q: linear(&format!("{l}.self_attn.q_proj"), d, q_width, bias)?,
            k: linear(&format!("{l}.self_attn.k_proj"), d, kv_width, bias)?,
            v: linear(&format!("{l}.self_attn.v_proj"), d, kv_width, bias)?,
            o_bias: o.bias.clone().unwrap_or_else(|| Array1::zeros(d)),
            o,
            mlp_norm: rms_norm(&format!("{l}.pre_feedforward_layernorm"))?,
            mlp: Mlp::GeGlu {
                gate: linear(&format!("{l}.mlp.gate_proj"), d, m, false)?,
                up: linear(&format!("{l}.mlp.up_proj"), d, m, false)?,
                down: linear(&format!("{l}.mlp.down_proj"), m, d, false)?,
            },
            attn_post_norm: Some(rms_norm(&format!("{l}.post_attention_layernorm"))?),
            mlp_post_norm: Some(rms_norm(&format!("{l}.post_feedforward_layernorm"))?),
            qk_norm: None,
        });
    }
    let tied = config.tie_word_embeddings && !files.contains("lm_head.weight");
    let embed = files.matrix("model.embed_tokens.weight", vocab, d)?; // (V, D)
    Ok(Transformer {
        n_heads: config.n_heads,
        n_kv_heads: config.n_kv_heads,
        d_head: config.d_head,
        // The matrix the logits are read with, laid out for the product (linalg).
        embed: if tied {
            unembedding_layout(embed)
        } else {
            embed
        },
        positions: Positions::rotary(config.rotary_dim, config.rope_theta),
        layers,
        residual: config.residual,
        attention_windows: config.attention_windows.clone(),
        final_norm: rms_norm("model.norm")?,
        unembed: if tied {
            None
        } else {
            Some(unembedding_layout(files.matrix(
                "lm_head.weight",
                vocab,
                d,
            )?))
        },
        scaling: config.scaling,
    })
}
