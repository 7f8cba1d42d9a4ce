//! A model's `config.json`, reduced to what the engine and the resolver need.
//!
//! The resolver reads only this file (never the weights), so `circuit check` is instant even
//! for large models.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde_json::Value;
use thiserror::Error;

use super::topology::ResidualTopology;

/// The architecture families the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// `model_type: gpt2`: LayerNorm, learned positions, gelu_new MLP, Conv1D weights, tied lm_head.
    Gpt2,
    /// `model_type: llama`: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention.
    Llama,
    /// `model_type: gpt_neox` (Pythia): LayerNorm, partial rotary positions, q/k/v fused per
    /// head, exact-GELU MLP, parallel residual (`use_parallel_residual`), untied `embed_out`.
    #[serde(rename = "gpt_neox")]
    GptNeox,
    /// `model_type: qwen2`: Llama's blocks with biases on q, k and v.
    Qwen2,
    /// `model_type: qwen3`: Llama's blocks with a per-head RMSNorm of q and of k before rotary
    /// (`q_norm`, `k_norm`), an explicit `head_dim` and biases only under `attention_bias`.
    Qwen3,
    /// `model_type: mistral`: Llama's blocks without biases, sliding-window attention.
    Mistral,
    /// `model_type: gemma2`: Llama's blocks with GeGLU, RMSNorm with `(1 + w)`, post-norms
    /// around attention and MLP, scaled embeddings and tanh soft caps ([`Scaling`]).
    Gemma2,
}

/// The `model_type`s [`ModelConfig::from_json_str`] reads, as config.json spells them.
pub const SUPPORTED_MODEL_TYPES: [&str; 7] = [
    "gpt2", "llama", "gpt_neox", "qwen2", "qwen3", "mistral", "gemma2",
];

/// Gemma 2's scalings and soft caps, as `Gemma2Config` reads them; all `None` (no scaling, the
/// usual `1/√d_head`) for every other family.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Scaling {
    /// The token embedding is multiplied by this: Gemma 2's `√hidden_size`, rounded to f32 as
    /// transformers rounds its normalizer to the model's dtype (the engine's is f32).
    pub embed: Option<f32>,
    /// The attention scores' scale, `query_pre_attn_scalar^-0.5` (Gemma 2); `None`: `1/√d_head`.
    pub query: Option<f32>,
    /// `attn_logit_softcapping`: scores become `c·tanh(s/c)` before the causal mask and any
    /// knockout (whose `−∞` is then applied after the cap).
    pub attn_logit_softcap: Option<f32>,
    /// `final_logit_softcapping`: logits become `c·tanh(l/c)`.
    pub final_logit_softcap: Option<f32>,
}

/// Shape and hyper-parameters of a transformer, in one vocabulary for every family.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// Key/value heads per layer (`< n_heads` under grouped-query attention).
    pub n_kv_heads: usize,
    pub d_model: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub vocab_size: usize,
    /// Longest prompt the position embeddings (or rotary table) support.
    pub n_ctx: usize,
    /// LayerNorm / RMSNorm epsilon.
    pub norm_eps: f32,
    /// Rotary base (rotary families only; 0 for GPT-2).
    pub rope_theta: f32,
    /// How many leading dimensions of each head rotary embeddings turn (`d_head` for Llama, a
    /// fraction of it for GPT-NeoX's partial rotary; 0 for GPT-2's learned positions).
    pub rotary_dim: usize,
    /// Whether q, k and v projections have biases (GPT-NeoX `attention_bias`; GPT-2 always,
    /// Llama when the file holds them).
    pub attention_bias: bool,
    /// Whether the unembedding shares the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// How attention and MLP of a layer are wired to the residual stream.
    pub residual: ResidualTopology,
    /// Per layer, the keys a query attends to: `Some(w)` is a sliding window (a query at
    /// position `p` sees the keys at `p − w < k ≤ p`, transformers' `kv_idx > q_idx −
    /// sliding_window`), `None` every key up to `p` (plain causal). [`visible_keys`] is
    /// the one rule every attention and every check reads. Empty when no layer has a window,
    /// so that an absurd layer count is not expanded before the weights are checked; read it
    /// through [`ModelConfig::attention_window`].
    pub attention_windows: Vec<Option<usize>>,
    /// Activation name as written in the config (`gelu_new`, `silu`, ...).
    pub activation: String,
    pub bos_token_id: Option<u32>,
    /// Gemma 2's embedding scale, attention scale and soft caps (none for the other families).
    pub scaling: Scaling,
}

#[derive(Debug, Error, Diagnostic)]
pub enum ConfigError {
    #[error("cannot read model config {path}")]
    #[diagnostic(
        code(circuit::model::config_missing),
        help("a model folder holds config.json, model.safetensors and tokenizer.json, as downloaded from the HuggingFace hub")
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {message}")]
    #[diagnostic(code(circuit::model::config_json))]
    Json { path: PathBuf, message: String },
    #[error("{path}: unsupported model_type {model_type:?}")]
    #[diagnostic(
        code(circuit::model::unknown_model_type),
        help("supported model types are {}", supported_model_types())
    )]
    UnknownModelType { path: PathBuf, model_type: String },
    #[error("{path}: `{key}` = {value} selects a variant the engine does not implement")]
    #[diagnostic(
        code(circuit::model::unsupported_config),
        help(
            "{what}; running the model without it would give different numbers than transformers"
        )
    )]
    UnsupportedOption {
        path: PathBuf,
        key: String,
        value: String,
        what: String,
    },
    #[error("{path}: missing or invalid field `{field}` (expected {expected})")]
    #[diagnostic(code(circuit::model::config_field))]
    Field {
        path: PathBuf,
        field: String,
        expected: String,
    },
}

impl ModelConfig {
    /// Layer `layer`'s sliding window ([`ModelConfig::attention_windows`]), `None` for plain
    /// causal attention.
    pub fn attention_window(&self, layer: usize) -> Option<usize> {
        self.attention_windows.get(layer).copied().flatten()
    }

    /// Whether each head's q and k pass through an RMSNorm of their own before rotary (Qwen3):
    /// the attention scores are then no bilinear form of the residual stream, which the
    /// backward and the QK circuit of `circuit heads` assume.
    pub fn has_qk_norm(&self) -> bool {
        self.architecture == Architecture::Qwen3
    }

    /// Reads `config.json` from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_json_str(&text, &path)
    }

    /// Parses the text of a `config.json`; `path` is used in error messages only.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let json: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let fields = Fields { json: &json, path };
        let model_type = fields.string("model_type")?;
        match model_type.as_str() {
            "gpt2" => {
                let d_model = fields.usize("n_embd")?;
                let n_heads = fields.usize("n_head")?;
                let d_mlp = fields.opt_usize("n_inner")?.unwrap_or(4 * d_model);
                let n_layers = fields.usize("n_layer")?;
                fields.check_divisible("n_embd", d_model, "n_head", n_heads)?;
                Ok(ModelConfig {
                    architecture: Architecture::Gpt2,
                    n_layers,
                    n_heads,
                    n_kv_heads: n_heads,
                    d_model,
                    d_head: d_model / n_heads,
                    d_mlp,
                    vocab_size: fields.usize("vocab_size")?,
                    n_ctx: match fields.opt_usize("n_positions")? {
                        Some(n) => n,
                        None => fields.usize("n_ctx")?,
                    },
                    norm_eps: fields.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5),
                    rope_theta: 0.0,
                    rotary_dim: 0,
                    attention_bias: true,
                    tie_word_embeddings: true,
                    residual: ResidualTopology::Sequential,
                    attention_windows: Vec::new(),
                    activation: fields
                        .opt_string("activation_function")?
                        .unwrap_or_else(|| "gelu_new".to_string()),
                    bos_token_id: fields.opt_token_id("bos_token_id")?,
                    scaling: Scaling::default(),
                })
            }
            "llama" => Self::llama_like(&fields, Architecture::Llama),
            "qwen2" => Self::llama_like(&fields, Architecture::Qwen2),
            "qwen3" => Self::llama_like(&fields, Architecture::Qwen3),
            "mistral" => Self::llama_like(&fields, Architecture::Mistral),
            "gpt_neox" => Self::gpt_neox(&fields),
            "gemma2" => Self::gemma2(&fields),
            other => Err(ConfigError::UnknownModelType {
                path: path.to_path_buf(),
                model_type: other.to_string(),
            }),
        }
    }
}

impl ModelConfig {
    /// Llama, Qwen2 (Llama's blocks with q/k/v biases, as `Qwen2Config` reads it), Qwen3 (with
    /// per-head q/k norms, as `Qwen3Config` reads it) and Mistral (Llama's blocks with no
    /// biases, as `MistralConfig` reads it).
    fn llama_like(fields: &Fields, architecture: Architecture) -> Result<ModelConfig, ConfigError> {
        let qwen2 = architecture == Architecture::Qwen2;
        let mistral = architecture == Architecture::Mistral;
        let d_model = fields.usize("hidden_size")?;
        let n_heads = fields.usize("num_attention_heads")?;
        let n_kv_heads = fields.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
        let d_head = match fields.opt_usize("head_dim")? {
            Some(d) => d,
            // Qwen3Config's default head_dim, whatever the width.
            None if architecture == Architecture::Qwen3 => 128,
            None => {
                fields.check_divisible("hidden_size", d_model, "num_attention_heads", n_heads)?;
                d_model / n_heads
            }
        };
        fields.check_divisible(
            "num_attention_heads",
            n_heads,
            "num_key_value_heads",
            n_kv_heads,
        )?;
        let n_layers = fields.usize("num_hidden_layers")?;
        let n_ctx = fields
            .opt_usize("max_position_embeddings")?
            .unwrap_or(match architecture {
                Architecture::Qwen2 | Architecture::Qwen3 => 32768,
                Architecture::Mistral => 4096 * 32,
                _ => 2048,
            });
        // Mistral: every layer attends to the last `sliding_window` keys (MistralConfig reads
        // no `layer_types`); Qwen2 and Qwen3: the layers `qwen_windows` names.
        let attention_windows = match architecture {
            Architecture::Qwen2 | Architecture::Qwen3 => fields.qwen_windows(n_layers)?,
            Architecture::Mistral => match fields.sliding_window()? {
                Some(window) => vec![Some(window); n_layers],
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        Ok(ModelConfig {
            architecture,
            n_layers,
            n_heads,
            n_kv_heads,
            d_model,
            d_head,
            d_mlp: fields.usize("intermediate_size")?,
            vocab_size: fields.usize("vocab_size")?,
            n_ctx,
            norm_eps: fields.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: fields.rope_theta()?,
            rotary_dim: d_head,
            // Qwen2's q/k/v always have biases; Llama checkpoints with `attention_bias` hold
            // them (the loader reads what the file has); Qwen3's q/k/v/o have them under
            // `attention_bias` (default false).
            attention_bias: qwen2
                || (!mistral && fields.opt_bool("attention_bias")?.unwrap_or(false)),
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            residual: ResidualTopology::Sequential,
            attention_windows,
            activation: fields
                .opt_string("hidden_act")?
                .unwrap_or_else(|| "silu".to_string()),
            bos_token_id: fields.opt_token_id("bos_token_id")?,
            scaling: Scaling::default(),
        })
    }

    /// GPT-NeoX / Pythia, as `GPTNeoXConfig` reads it: `rotary_emb_base` and `rotary_pct`
    /// (transformers 4 and the hub's Pythia configs) or `rope_parameters.rope_theta` and
    /// `.partial_rotary_factor` (transformers 5), defaults 10000 and 0.25.
    fn gpt_neox(fields: &Fields) -> Result<ModelConfig, ConfigError> {
        let d_model = fields.usize("hidden_size")?;
        let n_heads = fields.usize("num_attention_heads")?;
        fields.check_divisible("hidden_size", d_model, "num_attention_heads", n_heads)?;
        let d_head = d_model / n_heads;
        let rope = fields.rope(&["rotary_emb_base"], &["rotary_pct"], 0.25)?;
        // transformers: `int(head_size * partial_rotary_factor)` dimensions are turned.
        let rotary_dim = (d_head as f64 * rope.fraction) as usize;
        if !rotary_dim.is_multiple_of(2) || !(0.0..=1.0).contains(&rope.fraction) {
            return Err(fields.unsupported(
                &rope.fraction_key,
                &rope.fraction.to_string(),
                &format!(
                    "rotary embeddings turn pairs of dimensions; {} of a head of {d_head} is {rotary_dim} dimensions",
                    rope.fraction
                ),
            ));
        }
        let n_layers = fields.usize("num_hidden_layers")?;
        Ok(ModelConfig {
            architecture: Architecture::GptNeox,
            n_layers,
            n_heads,
            n_kv_heads: n_heads,
            d_model,
            d_head,
            d_mlp: fields.usize("intermediate_size")?,
            vocab_size: fields.usize("vocab_size")?,
            n_ctx: fields.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            norm_eps: fields.opt_f32("layer_norm_eps")?.unwrap_or(1e-5),
            rope_theta: rope.theta,
            rotary_dim,
            attention_bias: fields.opt_bool("attention_bias")?.unwrap_or(true),
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            residual: if fields.opt_bool("use_parallel_residual")?.unwrap_or(true) {
                ResidualTopology::Parallel
            } else {
                ResidualTopology::Sequential
            },
            attention_windows: Vec::new(),
            activation: fields
                .opt_string("hidden_act")?
                .unwrap_or_else(|| "gelu".to_string()),
            bos_token_id: fields.opt_token_id("bos_token_id")?,
            scaling: Scaling::default(),
        })
    }
}

impl ModelConfig {
    /// Gemma 2, as `Gemma2Config` reads it (its defaults where a key is absent): `head_dim`
    /// (256), grouped-query attention (`num_key_value_heads`, 4), `hidden_activation`
    /// (`gelu_pytorch_tanh`), `query_pre_attn_scalar` (256), `attn_logit_softcapping` (50) and
    /// `final_logit_softcapping` (30, `null` for none), tied embeddings, and a sliding window
    /// (`sliding_window`, 4096) on the layers `layer_types` names, by default the even ones.
    fn gemma2(fields: &Fields) -> Result<ModelConfig, ConfigError> {
        let d_model = fields.usize("hidden_size")?;
        let n_heads = fields.usize("num_attention_heads")?;
        let n_kv_heads = fields.opt_usize("num_key_value_heads")?.unwrap_or(4);
        // Gemma2Config.validate_architecture asks this even with an explicit head_dim.
        fields.check_divisible("hidden_size", d_model, "num_attention_heads", n_heads)?;
        fields.check_divisible(
            "num_attention_heads",
            n_heads,
            "num_key_value_heads",
            n_kv_heads,
        )?;
        let d_head = fields.opt_usize("head_dim")?.unwrap_or(256);
        let n_layers = fields.usize("num_hidden_layers")?;
        let n_ctx = fields.opt_usize("max_position_embeddings")?.unwrap_or(8192);
        if fields.opt_bool("use_bidirectional_attention")? == Some(true) {
            return Err(fields.unsupported(
                "use_bidirectional_attention",
                "true",
                "bidirectional attention (no causal mask) is not implemented",
            ));
        }
        let activation = fields
            .opt_string("hidden_activation")?
            .unwrap_or_else(|| "gelu_pytorch_tanh".to_string());
        if activation != "gelu_pytorch_tanh" {
            return Err(fields.unsupported(
                "hidden_activation",
                &format!("{activation:?}"),
                "Gemma 2's MLP is implemented with \"gelu_pytorch_tanh\" only",
            ));
        }
        let query_pre_attn_scalar = fields.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0);
        // (JSON numbers are never NaN.)
        if query_pre_attn_scalar <= 0.0 || !query_pre_attn_scalar.is_finite() {
            return Err(fields.err("query_pre_attn_scalar", "a positive number"));
        }
        let softcap = |key: &str, default: f64| -> Result<Option<f32>, ConfigError> {
            let value = match fields.json.get(key) {
                None => Some(default),
                Some(Value::Null) => None, // `null`: no soft cap
                Some(_) => fields.opt_f64(key)?,
            };
            match value {
                Some(c) if c <= 0.0 || !(c as f32).is_finite() => {
                    Err(fields.err(key, "a positive number or null"))
                }
                c => Ok(c.map(|c| c as f32)),
            }
        };
        let scaling = Scaling {
            // transformers: torch.tensor(hidden_size ** 0.5), cast to the model's dtype.
            embed: Some((d_model as f64).sqrt() as f32),
            query: Some(query_pre_attn_scalar.powf(-0.5) as f32),
            attn_logit_softcap: softcap("attn_logit_softcapping", 50.0)?,
            final_logit_softcap: softcap("final_logit_softcapping", 30.0)?,
        };
        let attention_windows = fields.gemma2_windows(n_layers)?;
        Ok(ModelConfig {
            architecture: Architecture::Gemma2,
            n_layers,
            n_heads,
            n_kv_heads,
            d_model,
            d_head,
            d_mlp: fields.usize("intermediate_size")?,
            vocab_size: fields.usize("vocab_size")?,
            n_ctx,
            norm_eps: fields.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: fields.rope_theta()?,
            rotary_dim: d_head,
            attention_bias: fields.opt_bool("attention_bias")?.unwrap_or(false),
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            residual: ResidualTopology::SequentialPostNorm,
            attention_windows,
            activation,
            bos_token_id: fields.opt_token_id("bos_token_id")?,
            scaling,
        })
    }
}

/// The key positions a query at `query_position` attends to under `window` (a layer's entry
/// of [`ModelConfig::attention_windows`]): up to itself (causal), and from `p − w + 1` under a
/// sliding window of `w` keys (transformers' `kv_idx > q_idx − sliding_window`).
pub fn visible_keys(window: Option<usize>, query_position: usize) -> RangeInclusive<usize> {
    let first = window.map_or(0, |w| (query_position + 1).saturating_sub(w));
    first..=query_position
}

/// A family's rotary settings, and under which key config.json gave the rotated fraction.
struct Rope {
    theta: f32,
    fraction: f64,
    fraction_key: String,
}

/// `"gpt2", "llama", "gpt_neox", "qwen2", "qwen3", "mistral" and "gemma2"`.
fn supported_model_types() -> String {
    let quoted: Vec<String> = SUPPORTED_MODEL_TYPES
        .iter()
        .map(|t| format!("{t:?}"))
        .collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// Typed access to config fields with errors that name the file and the field.
struct Fields<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, field: &str, expected: &str) -> ConfigError {
        ConfigError::Field {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            expected: expected.to_string(),
        }
    }
    fn present(&self, field: &str) -> Option<&Value> {
        self.json.get(field).filter(|v| !v.is_null())
    }
    fn opt_usize(&self, field: &str) -> Result<Option<usize>, ConfigError> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(field, "a positive integer")),
        }
    }
    /// A token id: 0 is a valid id, unlike the sizes read by `opt_usize`.
    fn opt_token_id(&self, field: &str) -> Result<Option<u32>, ConfigError> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.err(field, "a token id (a non-negative integer)")),
        }
    }
    fn usize(&self, field: &str) -> Result<usize, ConfigError> {
        self.opt_usize(field)?
            .ok_or_else(|| self.err(field, "a positive integer"))
    }
    fn opt_f32(&self, field: &str) -> Result<Option<f32>, ConfigError> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.err(field, "a number")),
        }
    }
    fn opt_f64(&self, field: &str) -> Result<Option<f64>, ConfigError> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(field, "a number")),
        }
    }
    fn opt_bool(&self, field: &str) -> Result<Option<bool>, ConfigError> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(field, "true or false")),
        }
    }
    fn opt_string(&self, field: &str) -> Result<Option<String>, ConfigError> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.err(field, "a string")),
        }
    }
    fn string(&self, field: &str) -> Result<String, ConfigError> {
        self.opt_string(field)?
            .ok_or_else(|| self.err(field, "a string"))
    }
    /// `rope_theta`, or (transformers ≥ 5) `rope_parameters.rope_theta`; default 10000.
    /// Scaled rotary variants (`rope_type` other than "default", `rope_scaling`) are rejected.
    fn rope_theta(&self) -> Result<f32, ConfigError> {
        Ok(self.rope(&[], &[], 1.0)?.theta)
    }

    /// The rotary base and the fraction of each head it turns: `rope_parameters.rope_theta` and
    /// `.partial_rotary_factor` (transformers ≥ 5), else top-level `rope_theta` or a family's
    /// older names (`theta_keys`) and `partial_rotary_factor` or `fraction_keys`; base 10000,
    /// fraction `default_fraction`. A scaled rotary variant (`rope_scaling`, a `rope_type` other
    /// than "default") is an error naming the key.
    fn rope(
        &self,
        theta_keys: &[&str],
        fraction_keys: &[&str],
        default_fraction: f64,
    ) -> Result<Rope, ConfigError> {
        if let Some(scaling) = self.present("rope_scaling") {
            return Err(self.unsupported(
                "rope_scaling",
                &scaling.to_string(),
                "scaled rotary embeddings are not implemented",
            ));
        }
        let nested = self.present("rope_parameters").map(|params| Fields {
            json: params,
            path: self.path,
        });
        if let Some(nested) = &nested {
            match nested.opt_string("rope_type")?.as_deref() {
                None | Some("default") => {}
                Some(other) => {
                    return Err(self.unsupported(
                        "rope_parameters.rope_type",
                        &format!("{other:?}"),
                        "only the \"default\" rotary embedding is implemented (no scaling)",
                    ))
                }
            }
        }
        // The first key present among the nested one, then the top-level spellings.
        let first =
            |nested_key: &str, keys: &[&str]| -> Result<Option<(f64, String)>, ConfigError> {
                if let Some(nested) = &nested {
                    if let Some(x) = nested.opt_f64(nested_key)? {
                        return Ok(Some((x, format!("rope_parameters.{nested_key}"))));
                    }
                }
                for key in std::iter::once(&nested_key).chain(keys) {
                    if let Some(x) = self.opt_f64(key)? {
                        return Ok(Some((x, key.to_string())));
                    }
                }
                Ok(None)
            };
        let theta = match first("rope_theta", theta_keys)? {
            None => 10000.0,
            Some((x, _)) if x > 0.0 && (x as f32).is_finite() => x as f32,
            Some((_, key)) => return Err(self.err(&key, "a positive number")),
        };
        let (fraction, fraction_key) = first("partial_rotary_factor", fraction_keys)?
            .unwrap_or((default_fraction, "partial_rotary_factor".to_string()));
        Ok(Rope {
            theta,
            fraction,
            fraction_key,
        })
    }
    /// The window of every layer, as `Qwen2Config` (and `Qwen3Config`) read it: the window is
    /// `sliding_window` (default 4096; `null`: none) if `use_sliding_window` (default false),
    /// and a layer uses it if `layer_types[i]` is "sliding_attention" (transformers 5 writes
    /// the list) or, without the list, if `i ≥ max_window_layers` (default 28).
    fn qwen_windows(&self, n_layers: usize) -> Result<Vec<Option<usize>>, ConfigError> {
        let window = if self.opt_bool("use_sliding_window")?.unwrap_or(false) {
            self.sliding_window()?
        } else {
            None
        };
        // The list is read (and checked) whether or not a window is set; without a window no
        // layer slides, and nothing is expanded per layer.
        let sliding: Vec<bool> = match self.sliding_layer_types(n_layers)? {
            Some(sliding) => sliding,
            None if window.is_none() => return Ok(Vec::new()),
            None => {
                let first = self.opt_usize("max_window_layers")?.unwrap_or(28);
                (0..n_layers).map(|i| i >= first).collect()
            }
        };
        if window.is_none() {
            return Ok(Vec::new());
        }
        Ok(sliding
            .into_iter()
            .map(|slides| window.filter(|_| slides))
            .collect())
    }

    /// `sliding_window`: absent is transformers' default of 4096 keys, `null` no window.
    fn sliding_window(&self) -> Result<Option<usize>, ConfigError> {
        match self.present("sliding_window") {
            None if self.json.get("sliding_window").is_some() => Ok(None), // null: no window
            None => Ok(Some(4096)),
            Some(_) => Ok(Some(self.usize("sliding_window")?)),
        }
    }

    /// Which layers transformers 5's `layer_types` marks "sliding_attention" (one entry per
    /// layer, each "full_attention" or "sliding_attention"); `None` when the list is absent.
    fn sliding_layer_types(&self, n_layers: usize) -> Result<Option<Vec<bool>>, ConfigError> {
        let Some(types) = self.present("layer_types") else {
            return Ok(None);
        };
        let types = types
            .as_array()
            .filter(|t| t.len() == n_layers)
            .ok_or_else(|| {
                self.err(
                    "layer_types",
                    &format!("a list of {n_layers} layer types (num_hidden_layers)"),
                )
            })?;
        types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(false),
                Some("sliding_attention") => Ok(true),
                _ => Err(self.err(
                    "layer_types",
                    "\"full_attention\" or \"sliding_attention\" per layer",
                )),
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Gemma 2's windows, as `Gemma2Config` reads them: `sliding_window` keys (default 4096;
    /// `null`: none) on the layers `layer_types` marks "sliding_attention", by default every
    /// even layer (`bool((i + 1) % 2)`).
    fn gemma2_windows(&self, n_layers: usize) -> Result<Vec<Option<usize>>, ConfigError> {
        let window = self.sliding_window()?;
        let sliding: Vec<bool> = match self.sliding_layer_types(n_layers)? {
            Some(sliding) => sliding,
            // Without a window nothing is expanded per layer (see `qwen_windows`).
            None if window.is_none() => return Ok(Vec::new()),
            None => (0..n_layers).map(|i| (i + 1) % 2 == 1).collect(),
        };
        if window.is_none() {
            return Ok(Vec::new());
        }
        Ok(sliding
            .into_iter()
            .map(|slides| window.filter(|_| slides))
            .collect())
    }

    fn unsupported(&self, key: &str, value: &str, what: &str) -> ConfigError {
        ConfigError::UnsupportedOption {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            value: value.to_string(),
            what: what.to_string(),
        }
    }
    fn check_divisible(
        &self,
        field: &str,
        value: usize,
        by_field: &str,
        by: usize,
    ) -> Result<(), ConfigError> {
        if value.is_multiple_of(by) {
            Ok(())
        } else {
            Err(self.err(field, &format!("a multiple of {by_field} ({by})")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stories260k_config() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K");
        let config = ModelConfig::from_dir(&dir).unwrap();
        assert_eq!(config.architecture, Architecture::Llama);
        assert_eq!(
            (config.n_layers, config.n_heads, config.n_kv_heads),
            (5, 8, 4)
        );
        assert_eq!((config.d_model, config.d_head, config.d_mlp), (64, 8, 172));
        assert_eq!(config.vocab_size, 512);
        assert!(!config.tie_word_embeddings);
    }

    #[test]
    fn gpt2_defaults_n_inner_to_four_times_width() {
        let text = r#"{"model_type":"gpt2","n_layer":12,"n_head":12,"n_embd":768,
                       "n_positions":1024,"vocab_size":50257,"n_inner":null}"#;
        let config = ModelConfig::from_json_str(text, Path::new("config.json")).unwrap();
        assert_eq!(config.d_mlp, 3072);
        assert_eq!(config.d_head, 64);
        assert_eq!(config.n_kv_heads, 12);
    }

    /// pythia-70m's config.json as on the hub (transformers 4 spelling).
    const PYTHIA_70M: &str = r#"{"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0,
        "eos_token_id": 0, "hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02,
        "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
        "model_type": "gpt_neox", "num_attention_heads": 8, "num_hidden_layers": 6,
        "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": false,
        "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": true,
        "use_parallel_residual": true, "vocab_size": 50304}"#;

    #[test]
    fn reads_pythia_70m_config() {
        let config = ModelConfig::from_json_str(PYTHIA_70M, Path::new("config.json")).unwrap();
        assert_eq!(config.architecture, Architecture::GptNeox);
        assert_eq!(
            (config.n_layers, config.n_heads, config.n_kv_heads),
            (6, 8, 8)
        );
        assert_eq!(
            (config.d_model, config.d_head, config.d_mlp),
            (512, 64, 2048)
        );
        assert_eq!((config.rotary_dim, config.rope_theta), (16, 10000.0));
        assert_eq!(config.residual, ResidualTopology::Parallel);
        assert!(config.attention_bias && !config.tie_word_embeddings);
        assert_eq!((config.n_ctx, config.vocab_size), (2048, 50304));
    }

    #[test]
    fn gpt_neox_reads_both_rope_spellings_and_transformers_defaults() {
        let read = |text: &str| ModelConfig::from_json_str(text, Path::new("c.json")).unwrap();
        let base = r#""model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 2,
            "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 10"#;
        // transformers 5 writes rope_parameters; 4 wrote rotary_pct / rotary_emb_base.
        let new = read(&format!(
            r#"{{{base}, "rope_parameters": {{"rope_type": "default", "rope_theta": 500.0,
                "partial_rotary_factor": 0.5}}}}"#
        ));
        let old = read(&format!(
            r#"{{{base}, "rotary_emb_base": 500, "rotary_pct": 0.5}}"#
        ));
        assert_eq!(new, old);
        assert_eq!((new.rotary_dim, new.rope_theta), (16, 500.0));
        // GPTNeoXConfig's defaults: a quarter of each head, base 10000, parallel, biases.
        let defaults = read(&format!("{{{base}}}"));
        assert_eq!((defaults.rotary_dim, defaults.rope_theta), (8, 10000.0));
        assert_eq!(defaults.residual, ResidualTopology::Parallel);
        assert!(defaults.attention_bias);
        assert_eq!(defaults.activation, "gelu");
        let sequential = read(&format!(r#"{{{base}, "use_parallel_residual": false}}"#));
        assert_eq!(sequential.residual, ResidualTopology::Sequential);
    }

    /// Qwen2-0.5B's config.json as on the hub (transformers 4 spelling: top-level rope_theta,
    /// sliding-window keys with the window off).
    const QWEN2_0_5B: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
        "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 131072,
        "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
        "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": true,
        "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true,
        "use_sliding_window": false, "vocab_size": 151936}"#;

    #[test]
    fn reads_qwen2_0_5b_config_in_both_spellings() {
        let old = ModelConfig::from_json_str(QWEN2_0_5B, Path::new("config.json")).unwrap();
        assert_eq!(old.architecture, Architecture::Qwen2);
        assert_eq!((old.n_heads, old.n_kv_heads, old.d_head), (14, 2, 64));
        assert_eq!((old.rope_theta, old.rotary_dim), (1e6, 64));
        assert!(old.tie_word_embeddings && old.attention_bias);
        // transformers 5 moves rope_theta into rope_parameters and writes layer_types.
        let mut json: Value = serde_json::from_str(QWEN2_0_5B).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("rope_theta");
        object.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 1e6}),
        );
        object.insert("layer_types".into(), vec!["full_attention"; 24].into());
        object.insert("sliding_window".into(), Value::Null);
        let new = ModelConfig::from_json_str(&json.to_string(), Path::new("c.json")).unwrap();
        assert_eq!(new, old);
    }

    #[test]
    fn mistral_7b_windows_as_on_the_hub() {
        // v0.1: a 4096-key window on every layer; v0.3: `sliding_window: null`, plain causal.
        let v01 = r#"{"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
            "max_position_embeddings": 32768, "rope_theta": 10000.0, "sliding_window": 4096,
            "vocab_size": 32000}"#;
        let config = ModelConfig::from_json_str(v01, Path::new("c.json")).unwrap();
        assert_eq!(config.attention_windows, vec![Some(4096); 32]);
        // Absent is MistralConfig's default window, 4096 too.
        let absent = v01.replace("\"sliding_window\": 4096,", "");
        let config = ModelConfig::from_json_str(&absent, Path::new("c.json")).unwrap();
        assert_eq!(config.attention_windows, vec![Some(4096); 32]);
        let v03 = v01
            .replace("\"sliding_window\": 4096", "\"sliding_window\": null")
            .replace("\"rope_theta\": 10000.0", "\"rope_theta\": 1000000.0");
        let config = ModelConfig::from_json_str(&v03, Path::new("c.json")).unwrap();
        assert_eq!(config.architecture, Architecture::Mistral);
        assert_eq!(
            (config.d_head, config.n_kv_heads, config.rope_theta),
            (128, 8, 1e6)
        );
        assert!(!config.attention_bias);
        assert_eq!(config.attention_window(0), None);
    }

    /// Qwen3Config's defaults: head_dim 128 whatever the width, no biases, 32768 positions;
    /// `attention_bias` and the window keys read as given.
    #[test]
    fn qwen3_config_as_qwen3config_reads_it() {
        let base = r#""model_type": "qwen3", "hidden_size": 8, "num_attention_heads": 2,
            "num_hidden_layers": 2, "intermediate_size": 8, "vocab_size": 10"#;
        let read = |extra: &str| {
            ModelConfig::from_json_str(&format!("{{{base}{extra}}}"), Path::new("c.json")).unwrap()
        };
        let plain = read("");
        assert_eq!(plain.architecture, Architecture::Qwen3);
        assert_eq!((plain.d_head, plain.n_ctx), (128, 32768));
        assert!(plain.has_qk_norm() && !plain.attention_bias && !plain.tie_word_embeddings);
        let given = read(
            r#", "head_dim": 6, "attention_bias": true, "use_sliding_window": true,
            "sliding_window": 3, "max_window_layers": 1"#,
        );
        assert_eq!(given.d_head, 6);
        assert!(given.attention_bias);
        assert_eq!(given.attention_windows, vec![None, Some(3)]);
    }

    #[test]
    fn qwen2_windows_as_qwen2config_reads_them() {
        let base = r#""model_type": "qwen2", "hidden_size": 8, "num_attention_heads": 2,
            "num_hidden_layers": 4, "intermediate_size": 8, "vocab_size": 10"#;
        let windows = |extra: &str| {
            ModelConfig::from_json_str(&format!("{{{base}{extra}}}"), Path::new("c.json"))
                .unwrap()
                .attention_windows
        };
        // Off unless use_sliding_window, whatever the other keys say.
        assert_eq!(windows(""), Vec::<Option<usize>>::new());
        assert_eq!(
            windows(r#", "sliding_window": 3, "max_window_layers": 1"#),
            Vec::<Option<usize>>::new()
        );
        // On: layers from max_window_layers (default 28) slide, the window defaults to 4096.
        let on = r#", "use_sliding_window": true"#;
        assert_eq!(windows(on), vec![None; 4]);
        assert_eq!(
            windows(&format!(
                r#"{on}, "sliding_window": 3, "max_window_layers": 1"#
            )),
            vec![None, Some(3), Some(3), Some(3)]
        );
        assert_eq!(
            windows(&format!(r#"{on}, "max_window_layers": 3"#)),
            vec![None, None, None, Some(4096)]
        );
        // transformers 5's layer_types decide over max_window_layers; a null window is none.
        let types = r#", "layer_types": ["sliding_attention", "full_attention",
            "sliding_attention", "full_attention"], "max_window_layers": 0"#;
        assert_eq!(
            windows(&format!(r#"{on}, "sliding_window": 2{types}"#)),
            vec![Some(2), None, Some(2), None]
        );
        assert_eq!(
            windows(&format!(r#"{on}, "sliding_window": null{types}"#)),
            Vec::<Option<usize>>::new()
        );
        // A layer type the engine does not know is an error naming the key.
        let bad = format!(
            r#"{{{base}{on}, "layer_types": ["chunked_attention", "full_attention",
            "full_attention", "full_attention"]}}"#
        );
        let err = ModelConfig::from_json_str(&bad, Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("layer_types"), "{err}");
    }

    #[test]
    fn the_window_rule_is_transformers_mask() {
        // kv_idx > q_idx − sliding_window, and kv_idx ≤ q_idx.
        assert_eq!(visible_keys(None, 7), 0..=7);
        assert_eq!(visible_keys(Some(3), 7), 5..=7);
        assert_eq!(visible_keys(Some(3), 1), 0..=1);
        assert_eq!(visible_keys(Some(1), 4), 4..=4); // itself only
    }

    /// gemma-2-2b's config.json as on the hub (transformers 4.42's spelling).
    const GEMMA2_2B: &str = r#"{"architectures": ["Gemma2ForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "attn_logit_softcapping": 50.0, "bos_token_id": 2,
        "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": 30.0,
        "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
        "initializer_range": 0.02, "intermediate_size": 9216, "max_position_embeddings": 8192,
        "model_type": "gemma2", "num_attention_heads": 8, "num_hidden_layers": 26,
        "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
        "torch_dtype": "float32", "transformers_version": "4.42.4", "use_cache": true,
        "vocab_size": 256000}"#;

    #[test]
    fn reads_gemma2_2b_config() {
        // Its 4096-key window under an 8192 context, on layers 0, 2, ..., 24.
        let windowed = ModelConfig::from_json_str(GEMMA2_2B, Path::new("c.json")).unwrap();
        let alternating: Vec<Option<usize>> =
            (0..26).map(|i| (i % 2 == 0).then_some(4096)).collect();
        assert_eq!(windowed.attention_windows, alternating);
        let unwindowed = GEMMA2_2B.replace("\"sliding_window\": 4096", "\"sliding_window\": null");
        let config = ModelConfig::from_json_str(&unwindowed, Path::new("c.json")).unwrap();
        assert_eq!(config.architecture, Architecture::Gemma2);
        assert_eq!(
            (
                config.n_heads,
                config.n_kv_heads,
                config.d_head,
                config.d_mlp
            ),
            (8, 4, 256, 9216)
        );
        assert_eq!(config.residual, ResidualTopology::SequentialPostNorm);
        assert!(config.tie_word_embeddings && !config.attention_bias);
        assert_eq!(config.scaling.embed, Some(48.0));
        assert_eq!(config.scaling.query, Some(1.0 / 16.0));
        assert_eq!(
            (
                config.scaling.attn_logit_softcap,
                config.scaling.final_logit_softcap
            ),
            (Some(50.0), Some(30.0))
        );
        // transformers 5's spelling: rope_parameters and layer_types.
        let mut json: Value = serde_json::from_str(&unwindowed).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("rope_theta");
        object.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 10000.0}),
        );
        let types: Vec<&str> = (0..26)
            .map(|i| {
                if i % 2 == 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        object.insert("layer_types".into(), types.into());
        let new = ModelConfig::from_json_str(&json.to_string(), Path::new("c.json")).unwrap();
        assert_eq!(new, config);
    }

    #[test]
    fn gemma2_defaults_are_gemma2_configs() {
        let text = r#"{"model_type": "gemma2", "hidden_size": 64, "num_attention_heads": 8,
            "num_hidden_layers": 3, "intermediate_size": 16, "vocab_size": 10,
            "max_position_embeddings": 4096, "final_logit_softcapping": null}"#;
        let config = ModelConfig::from_json_str(text, Path::new("c.json")).unwrap();
        // Gemma2Config: 4 key/value heads, head_dim 256, query_pre_attn_scalar 256, an
        // attention cap of 50, tied, and the window (4096, as long as this context) unbound.
        assert_eq!((config.n_kv_heads, config.d_head), (4, 256));
        assert_eq!(config.scaling.query, Some(1.0 / 16.0));
        assert_eq!(config.scaling.attn_logit_softcap, Some(50.0));
        assert_eq!(config.scaling.final_logit_softcap, None);
        assert_eq!(config.activation, "gelu_pytorch_tanh");
        assert!(config.tie_word_embeddings);
        let bad = text.replace(
            "\"num_hidden_layers\": 3",
            "\"num_hidden_layers\": 3, \"layer_types\": [\"full_attention\"]",
        );
        let err = ModelConfig::from_json_str(&bad, Path::new("c.json")).unwrap_err();
        assert!(matches!(err, ConfigError::Field { ref field, .. } if field == "layer_types"));
    }

    #[test]
    fn unknown_model_type_is_named() {
        let text = r#"{"model_type":"mamba"}"#;
        let err = ModelConfig::from_json_str(text, Path::new("m/config.json")).unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownModelType { ref model_type, .. } if model_type == "mamba")
        );
    }

    #[test]
    fn missing_field_is_named() {
        let text = r#"{"model_type":"gpt2","n_layer":2,"n_head":2,"n_embd":8}"#;
        let err = ModelConfig::from_json_str(text, Path::new("config.json")).unwrap_err();
        assert!(err.to_string().contains("vocab_size"), "{err}");
    }
}
