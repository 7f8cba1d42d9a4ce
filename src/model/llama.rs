//! Llama weights (HF `LlamaForCausalLM` names) into the shared [`Transformer`], and Qwen2's,
//! Qwen3's and Mistral's (`Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `MistralForCausalLM`: the
//! same names and blocks; Qwen2's q, k and v have biases the file must hold, Qwen3's q, k, v
//! and o have them under `attention_bias` and each head's q and k an RMSNorm (`q_norm`,
//! `k_norm`), Mistral has none). `nn.Linear` stores `(out, in)`; a transposed view gives the `(in, out)` the forward
//! multiplies by.

use ndarray::Array1;

use super::config::{Architecture, ModelConfig};
use super::error::ModelError;
use super::linalg::unembedding_layout;
use super::transformer::{Layer, Linear, Mlp, Norm, Positions, QkNorm, Transformer};
use super::weights::WeightFiles;

pub(crate) fn load(config: &ModelConfig, files: &WeightFiles) -> Result<Transformer, ModelError> {
    let family = match config.architecture {
        Architecture::Qwen2 => "Qwen2",
        Architecture::Qwen3 => "Qwen3",
        Architecture::Mistral => "Mistral",
        _ => "Llama",
    };
    // Which biases are read: Qwen2's q/k/v must be in the file and it has no other; Mistral has
    // none (a bias transformers would not read is then an unused tensor, an error); Llama's are
    // read where the file has them.
    let (required_bias, optional_bias) = match config.architecture {
        Architecture::Qwen2 => (true, false),
        Architecture::Qwen3 => (config.attention_bias, false),
        Architecture::Mistral => (false, false),
        _ => (false, true),
    };
    if config.activation != "silu" {
        return Err(ModelError::Unsupported {
            what: format!(
                "{family} hidden_act {:?} (only silu is implemented)",
                config.activation
            ),
        });
    }
    Positions::check_even_head(config.d_head)?;
    let (d, m, vocab) = (config.d_model, config.d_mlp, config.vocab_size);
    let (q_width, kv_width) = (
        config.n_heads * config.d_head,
        config.n_kv_heads * config.d_head,
    );
    let matrix = |name: &str, rows: usize, cols: usize| files.matrix(name, rows, cols);
    // nn.Linear(d_in → d_out), bias if `required` (Qwen2's q/k/v: a missing one is an error)
    // or if the file has one (Llama's attention_bias / mlp_bias).
    let linear_with =
        |name: &str, d_in: usize, d_out: usize, required: bool| -> Result<Linear, ModelError> {
            let bias = required || (optional_bias && files.contains(&format!("{name}.bias")));
            files.linear(name, d_in, d_out, bias)
        };
    let linear = |name: &str, d_in: usize, d_out: usize| linear_with(name, d_in, d_out, false);
    let qkv_bias = required_bias;
    // Qwen3Attention's `attention_bias` puts a bias on o_proj too.
    let qwen3 = config.architecture == Architecture::Qwen3;
    let o_bias = qwen3 && config.attention_bias;
    let rms_norm_of = |name: &str, width: usize| -> Result<Norm, ModelError> {
        Ok(Norm::Rms {
            weight: Array1::from(files.tensor(&format!("{name}.weight"), &[width])?),
            eps: config.norm_eps,
        })
    };
    let rms_norm = |name: &str| rms_norm_of(name, d);

    // Before anything is allocated from config values: the layer count is the file's.
    super::check_layer_count(config, files)?;
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let l = format!("model.layers.{i}");
        let o = linear_with(&format!("{l}.self_attn.o_proj"), q_width, d, o_bias)?;
        let qk_norm = if qwen3 {
            Some(QkNorm {
                q: rms_norm_of(&format!("{l}.self_attn.q_norm"), config.d_head)?,
                k: rms_norm_of(&format!("{l}.self_attn.k_norm"), config.d_head)?,
            })
        } else {
            None
        };
        layers.push(Layer {
            attn_norm: rms_norm(&format!("{l}.input_layernorm"))?,
            q: linear_with(&format!("{l}.self_attn.q_proj"), d, q_width, qkv_bias)?,
            k: linear_with(&format!("{l}.self_attn.k_proj"), d, kv_width, qkv_bias)?,
            v: linear_with(&format!("{l}.self_attn.v_proj"), d, kv_width, qkv_bias)?,
            o_bias: o.bias.clone().unwrap_or_else(|| Array1::zeros(d)),
            o,
            mlp_norm: rms_norm(&format!("{l}.post_attention_layernorm"))?,
            mlp: Mlp::SwiGlu {
                gate: linear(&format!("{l}.mlp.gate_proj"), d, m)?,
                up: linear(&format!("{l}.mlp.up_proj"), d, m)?,
                down: linear(&format!("{l}.mlp.down_proj"), m, d)?,
            },
            attn_post_norm: None,
            mlp_post_norm: None,
            qk_norm,
        });
    }
    let tied = config.tie_word_embeddings && !files.contains("lm_head.weight");
    Ok(Transformer {
        n_heads: config.n_heads,
        n_kv_heads: config.n_kv_heads,
        d_head: config.d_head,
        // The matrix the logits are read with, laid out for the product (linalg).
        embed: if tied {
            unembedding_layout(matrix("model.embed_tokens.weight", vocab, d)?)
        } else {
            matrix("model.embed_tokens.weight", vocab, d)?
        },
        positions: Positions::rotary(config.rotary_dim, config.rope_theta),
        layers,
        residual: config.residual,
        attention_windows: config.attention_windows.clone(),
        scaling: config.scaling,
        final_norm: rms_norm("model.norm")?,
        unembed: if tied {
            None
        } else {
            Some(unembedding_layout(matrix("lm_head.weight", vocab, d)?))
        },
    })
}
