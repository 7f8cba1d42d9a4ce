//! GPT-2 weights (HF `GPT2LMHeadModel` names, with or without the `transformer.` prefix) into
//! the shared [`Transformer`]. Conv1D layers store `(in, out)`, so they are used as stored.

use ndarray::{s, Array1};

use super::config::ModelConfig;
use super::error::ModelError;
use super::linalg::unembedding_layout;
use super::transformer::{Layer, Linear, Mlp, Norm, Positions, Transformer};
use super::weights::WeightFiles;

pub(crate) fn load(config: &ModelConfig, files: &WeightFiles) -> Result<Transformer, ModelError> {
    if !matches!(config.activation.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
        return Err(ModelError::Unsupported {
            what: format!(
                "GPT-2 activation_function {:?} (only gelu_new is implemented)",
                config.activation
            ),
        });
    }
    let prefix = if files.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let (d, m, vocab) = (config.d_model, config.d_mlp, config.vocab_size);
    let vector = |name: &str, len: usize| -> Result<Array1<f32>, ModelError> {
        Ok(Array1::from(
            files.tensor(&format!("{prefix}{name}"), &[len])?,
        ))
    };
    let matrix =
        |name: &str, rows: usize, cols: usize| files.matrix(&format!("{prefix}{name}"), rows, cols);
    let conv1d = |name: &str, d_in: usize, d_out: usize| -> Result<Linear, ModelError> {
        Ok(Linear {
            weight: matrix(&format!("{name}.weight"), d_in, d_out)?, // (in, out)
            bias: Some(vector(&format!("{name}.bias"), d_out)?),
        })
    };
    let layer_norm = |name: &str| -> Result<Norm, ModelError> {
        Ok(Norm::Layer {
            weight: vector(&format!("{name}.weight"), d)?,
            bias: vector(&format!("{name}.bias"), d)?,
            eps: config.norm_eps,
        })
    };

    // Before anything is allocated from config values: the layer count is the file's.
    super::check_layer_count(config, files)?;
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let h = format!("h.{i}");
        // c_attn packs q | k | v along its output axis.
        let c_attn = conv1d(&format!("{h}.attn.c_attn"), d, 3 * d)?; // (D, 3D)
        let c_attn_bias = c_attn.bias.as_ref().expect("conv1d has a bias");
        let part = |j: usize| Linear {
            weight: c_attn.weight.columns(j * d..(j + 1) * d), // (D, D)
            bias: Some(c_attn_bias.slice(s![j * d..(j + 1) * d]).to_owned()),
        };
        let o = conv1d(&format!("{h}.attn.c_proj"), d, d)?;
        layers.push(Layer {
            attn_norm: layer_norm(&format!("{h}.ln_1"))?,
            q: part(0),
            k: part(1),
            v: part(2),
            o_bias: o.bias.clone().expect("conv1d has a bias"),
            o,
            mlp_norm: layer_norm(&format!("{h}.ln_2"))?,
            mlp: Mlp::GeluNew {
                fc: conv1d(&format!("{h}.mlp.c_fc"), d, m)?,
                proj: conv1d(&format!("{h}.mlp.c_proj"), m, d)?,
            },
            attn_post_norm: None,
            mlp_post_norm: None,
            qk_norm: None,
        });
    }
    let embed = matrix("wte.weight", vocab, d)?; // (V, D)
                                                 // GPT-2's lm_head is tied to wte (HF does not even store it); a file that stores it must
                                                 // store the same matrix, or the logits would not be the file's.
    if files.contains("lm_head.weight") {
        let lm_head = files.tensor("lm_head.weight", &[vocab, d])?;
        if Some(lm_head.as_slice()) != embed.f32().as_standard_layout().as_slice() {
            return Err(ModelError::Unsupported {
                what: "a GPT-2 lm_head.weight that differs from wte.weight (GPT-2 ties them)"
                    .to_string(),
            });
        }
    }
    Ok(Transformer {
        n_heads: config.n_heads,
        n_kv_heads: config.n_heads,
        d_head: config.d_head,
        // Also the unembedding (tied): laid out for that product (linalg).
        embed: unembedding_layout(embed),
        positions: Positions::Learned {
            wpe: matrix("wpe.weight", config.n_ctx, d)?.f32().into_owned(),
        },
        layers,
        residual: config.residual,
        attention_windows: config.attention_windows.clone(),
        scaling: config.scaling,
        final_norm: layer_norm("ln_f")?,
        unembed: None,
    })
}
