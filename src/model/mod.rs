//! The transformer engine: HuggingFace model folders (GPT-2, Llama, Qwen2, Mistral, Gemma 2
//! and GPT-NeoX / Pythia families) run in f32 on the CPU with ndarray, exposing named intervention points and an
//! activation cache.
//!
//! ```no_run
//! use circuit::model::{Model, ForwardOptions, NoInterventions};
//! let model = Model::load(std::path::Path::new("models/gpt2"))?;
//! let ids = model.encode_prompt("The cat sat")?;
//! let out = model.forward(&[ids], &ForwardOptions::default(), &NoInterventions)?;
//! let next_token_logits = out.logits.slice(ndarray::s![0, 0, ..]); // (V,)
//! # Ok::<(), circuit::model::ModelError>(())
//! ```

pub mod backward;
mod blocks;
pub mod builtin;
mod cache;
pub mod config;
mod error;
mod gemma2;
mod gpt2;
mod gpt_neox;
pub mod head_weights;
pub mod hub;
pub mod interventions;
pub mod linalg;
mod llama;
pub mod memory;
mod numerics;
pub mod resume;
pub mod source;
mod stored;
pub mod tokenizer;
pub mod topology;
mod transformer;
mod weights;

#[cfg(test)]
mod fuzz_tests;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array2, Array3, Axis};
use sha2::{Digest, Sha256};

pub use cache::{ActivationCache, CacheSelection, LayerCache, SelectedActivations, SelectedLayer};
pub use config::{visible_keys, Architecture, ModelConfig};
pub use error::ModelError;
pub use interventions::{ComponentOutputs, HeadInput, Interventions, NoInterventions};
pub use linalg::matmul;
pub use source::ModelSource;
pub use stored::{set_weights_mode, weights_mode, WeightsMode};
pub use tokenizer::{Encoded, Tokenizer};
pub use topology::{Component, ResidualTopology, Unread};

use cache::{CacheExtras, Keep, Kept};

/// What [`Model::forward_keeping`] returns: logits, each prompt's length, and what was kept.
type ForwardKept = (Array3<f32>, Vec<usize>, Option<Kept>);
pub(crate) use transformer::LogitRows;
use transformer::Transformer;
use weights::WeightFiles;

/// What a forward pass computes besides the END logits.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    /// Logits at every position `(B, T, V)` instead of only each prompt's last token `(B, 1, V)`.
    pub all_logits: bool,
    /// Record every intermediate in an [`ActivationCache`].
    pub cache: bool,
}

/// The result of [`Model::forward`].
#[derive(Debug)]
pub struct ForwardOutput {
    /// `(B, 1, V)` with `all_logits = false`: row `b` holds the logits at prompt `b`'s last real
    /// token. `(B, T, V)` with `all_logits = true` (positions past a prompt's length are padding:
    /// finite, but meaningless).
    pub logits: Array3<f32>,
    /// Real token count per prompt.
    pub lengths: Vec<usize>,
    /// Present when [`ForwardOptions::cache`] was set.
    pub cache: Option<ActivationCache>,
}

/// `tokens` as `(B, T)` ids, `T` the longest prompt's length, right-padded with 0.
fn padded_ids(tokens: &[Vec<u32>]) -> Array2<u32> {
    let seq = tokens.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Array2::<u32>::zeros((tokens.len(), seq)); // (B, T)
    for (mut row, prompt) in ids.axis_iter_mut(Axis(0)).zip(tokens) {
        for (slot, &id) in row.iter_mut().zip(prompt) {
            *slot = id;
        }
    }
    ids
}

/// A forward that kept everything or nothing, as [`ForwardOutput`].
fn with_cache((logits, lengths, kept): ForwardKept) -> ForwardOutput {
    let cache = kept.map(|kept| match kept {
        Kept::Everything(cache) => cache,
        Kept::Selected(_) => unreachable!("asked for everything or nothing"),
    });
    ForwardOutput {
        logits,
        lengths,
        cache,
    }
}

/// Where the weight bytes came from, for [`Model::weights_hash`].
enum WeightOrigin {
    Files(Vec<PathBuf>),
    Static(&'static [u8]),
}

/// A loaded model: config, tokenizer and f32 weights.
pub struct Model {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    transformer: Transformer,
    origin: WeightOrigin,
    weights_hash: OnceLock<String>,
    tokenizer_hash: OnceLock<String>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads a HuggingFace folder: `config.json`, `model.safetensors` (or a sharded
    /// `model.safetensors.index.json`), `tokenizer.json`.
    pub fn load(dir: &Path) -> Result<Model, ModelError> {
        Self::load_with(dir, stored::weights_mode())
    }

    /// [`Model::load`] with weight matrices kept as `mode` says (`--weights`, `stored.rs`).
    pub fn load_with(dir: &Path, mode: WeightsMode) -> Result<Model, ModelError> {
        let config = ModelConfig::from_dir(dir)?;
        // Readable: from_dir just read it.
        let config_text = std::fs::read_to_string(dir.join("config.json")).unwrap_or_default();
        reject_unsupported_settings(&config_text)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        let mut files = WeightFiles::open_dir(dir, architecture_name(&config))?;
        files.keep_stored = memory::choose_stored(&files, mode)?;
        memory::check_fits(&files, dir)?; // before converting: refuse rather than be OOM-killed
        let transformer = build(&config, &files)?;
        // Unmap, unless matrices kept in their stored dtype still read the map (they hold it).
        drop(files);
        check_vocab(&tokenizer, &transformer, &tokenizer_path)?;
        Ok(Model {
            config,
            tokenizer,
            transformer,
            origin: WeightOrigin::Files(weights::weight_file_list(dir)?),
            weights_hash: OnceLock::new(),
            tokenizer_hash: OnceLock::new(),
        })
    }

    /// For models compiled into the binary (`include_bytes!`): `config.json` text, safetensors
    /// bytes, `tokenizer.json` bytes. `name` labels the model in errors.
    pub fn from_static(
        name: &str,
        config_json: &str,
        safetensors: &'static [u8],
        tokenizer_json: &[u8],
    ) -> Result<Model, ModelError> {
        let label = PathBuf::from(format!("<built-in model {name}>"));
        let config = ModelConfig::from_json_str(config_json, &label.join("config.json"))?;
        reject_unsupported_settings(config_json)?;
        let tokenizer_path = label.join("tokenizer.json");
        let tokenizer = Tokenizer::from_bytes(tokenizer_json, &tokenizer_path)?;
        let files = WeightFiles::from_static(
            safetensors,
            label.join("model.safetensors"),
            architecture_name(&config),
        )?;
        let transformer = build(&config, &files)?;
        check_vocab(&tokenizer, &transformer, &tokenizer_path)?;
        Ok(Model {
            config,
            tokenizer,
            transformer,
            origin: WeightOrigin::Static(safetensors),
            weights_hash: OnceLock::new(),
            tokenizer_hash: OnceLock::new(),
        })
    }

    /// Opens a model as a `.circuit` file or `--model` names it.
    pub fn open(source: &ModelSource) -> Result<Model, ModelError> {
        match source {
            ModelSource::Dir(dir) => Model::load(dir),
            ModelSource::Builtin(name) => builtin::load(name),
        }
    }

    /// sha256 (hex) of the weight file bytes (shards concatenated in index order), computed once.
    /// A cache key for statistics computed from this model.
    pub fn weights_hash(&self) -> &str {
        self.weights_hash.get_or_init(|| {
            let mut hasher = Sha256::new();
            match &self.origin {
                WeightOrigin::Static(bytes) => hasher.update(bytes),
                WeightOrigin::Files(paths) => {
                    for path in paths {
                        // The files were readable at load time; if one vanished since, hash
                        // its name instead so the key still changes rather than panicking.
                        match std::fs::File::open(path) {
                            Ok(mut file) => {
                                let mut buffer = vec![0u8; 1 << 20];
                                while let Ok(n) = file.read(&mut buffer) {
                                    if n == 0 {
                                        break;
                                    }
                                    hasher.update(&buffer[..n]);
                                }
                            }
                            Err(_) => hasher.update(path.display().to_string().as_bytes()),
                        }
                    }
                }
            }
            hex::encode(hasher.finalize())
        })
    }

    /// sha256 (hex) of the tokenizer's JSON as the engine parsed it (not the file's bytes: two
    /// spellings of one tokenizer hash alike), computed once. Reports and the disk cache key.
    pub fn tokenizer_hash(&self) -> &str {
        self.tokenizer_hash.get_or_init(|| {
            let json = self.tokenizer.inner().to_string(false).unwrap_or_default();
            hex::encode(Sha256::digest(json.as_bytes()))
        })
    }

    /// Tokenizes a prompt (BOS added if the tokenizer adds one) and checks it fits the model.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let ids = self.tokenizer.encode(text)?.ids;
        self.check_prompt(&ids, || format!("{text:?}"))?;
        Ok(ids)
    }

    fn check_prompt(&self, ids: &[u32], name: impl Fn() -> String) -> Result<(), ModelError> {
        if ids.is_empty() {
            return Err(ModelError::EmptyPrompt { prompt: name() });
        }
        if ids.len() > self.config.n_ctx {
            return Err(ModelError::PromptTooLong {
                prompt: name(),
                len: ids.len(),
                n_ctx: self.config.n_ctx,
            });
        }
        let vocab = self.transformer.embed.nrows();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange {
                prompt: name(),
                id,
                vocab,
            });
        }
        Ok(())
    }

    /// Runs a batch of prompts (token ids; lengths may differ) through the model. Prompts are
    /// right-padded with id 0; under the causal mask no real token attends to padding, so each
    /// prompt's results equal running it alone.
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        options: &ForwardOptions,
        hooks: &dyn Interventions,
    ) -> Result<ForwardOutput, ModelError> {
        let keep = if options.cache {
            Keep::Everything(CacheExtras::PUBLIC)
        } else {
            Keep::Nothing
        };
        let logits = if options.all_logits {
            LogitRows::All
        } else {
            LogitRows::End
        };
        let kept = self.forward_keeping(tokens, logits, keep, hooks)?;
        Ok(with_cache(kept))
    }

    /// The input embeddings of `tokens` (token + learned position embedding, as the forward's
    /// first block computes them), each prompt `(T_b, D)`: no layer runs.
    pub fn input_embeddings(&self, tokens: &[Vec<u32>]) -> Result<Vec<Array2<f32>>, ModelError> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                self.check_prompt(ids, || format!("#{i}"))?;
                let ids = Array2::from_shape_vec((1, ids.len()), ids.clone())
                    .expect("one row of its own length");
                Ok(self.transformer.embed_forward(&ids)) // (T_b, D)
            })
            .collect()
    }

    /// The forward of the backward pass: its cache holds `extras` (each head's write only when
    /// path edges read it, the MLP pre-activations the backward would otherwise recompute);
    /// its logits are the END logits, or none ([`LogitRows::Skipped`]).
    pub(crate) fn forward_for_backward(
        &self,
        tokens: &[Vec<u32>],
        extras: CacheExtras,
        logits: LogitRows,
        hooks: &dyn Interventions,
    ) -> Result<ForwardOutput, ModelError> {
        let kept = self.forward_keeping(tokens, logits, Keep::Everything(extras), hooks)?;
        Ok(with_cache(kept))
    }

    /// [`Model::forward`] keeping only the intermediates `selection` names (the reference
    /// statistics' pass: no copy of the residual streams, no per-head writes unless asked):
    /// END logits `(B, 1, V)`, the same bits as [`Model::forward`]'s, and the selection.
    pub fn forward_selected(
        &self,
        tokens: &[Vec<u32>],
        selection: &CacheSelection,
        hooks: &dyn Interventions,
    ) -> Result<(Array3<f32>, SelectedActivations), ModelError> {
        let (logits, _, kept) =
            self.forward_keeping(tokens, LogitRows::End, Keep::Selected(selection), hooks)?;
        let selected = match kept {
            Some(Kept::Selected(selected)) => selected,
            // No prompts: nothing ran.
            _ => SelectedActivations {
                layers: Vec::new(),
                embed: Array3::zeros((0, 0, self.transformer.embed.ncols())),
            },
        };
        Ok((logits, selected))
    }

    /// The forward behind [`Model::forward`] and [`Model::forward_selected`]: logits, each
    /// prompt's length and what `keep` asked for (`None` for no prompts).
    fn forward_keeping(
        &self,
        tokens: &[Vec<u32>],
        logits: LogitRows,
        keep: Keep,
        hooks: &dyn Interventions,
    ) -> Result<ForwardKept, ModelError> {
        let all_logits = logits == LogitRows::All;
        for (i, ids) in tokens.iter().enumerate() {
            self.check_prompt(ids, || format!("#{i}"))?;
        }
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        if tokens.is_empty() {
            let vocab = self.transformer.embed.nrows();
            return Ok((Array3::zeros((0, 1, vocab)), lengths, None));
        }
        let ids = padded_ids(tokens);
        let (logits, kept) = self
            .transformer
            .forward(&ids, &lengths, logits, keep, hooks);
        // Rows past a prompt's length are padding, whatever they hold.
        let real_rows = |b: usize| if all_logits { lengths[b] } else { 1 };
        let non_finite = (0..tokens.len()).find(|&b| {
            let rows = logits.slice(ndarray::s![b, ..real_rows(b), ..]);
            rows.iter().any(|x| !x.is_finite())
        });
        if let Some(prompt) = non_finite {
            return Err(ModelError::NonFiniteActivations {
                prompt,
                location: self.first_non_finite(&ids, &lengths, hooks),
            });
        }
        Ok((logits, lengths, kept))
    }

    /// The error of a forward of `tokens` whose END logits at `prompt` are not finite, for
    /// logits computed outside the forward (the backward's, under `logit_diff`), as
    /// [`Model::forward_keeping`] reports its own.
    pub(crate) fn non_finite_logits(
        &self,
        tokens: &[Vec<u32>],
        prompt: usize,
        hooks: &dyn Interventions,
    ) -> ModelError {
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        ModelError::NonFiniteActivations {
            prompt,
            location: self.first_non_finite(&padded_ids(tokens), &lengths, hooks),
        }
    }

    /// Where a forward whose logits are not finite first goes wrong: run again with the cache,
    /// and name the first block whose output at a real token is not finite.
    fn first_non_finite(
        &self,
        ids: &Array2<u32>,
        lengths: &[usize],
        hooks: &dyn Interventions,
    ) -> String {
        let (_, kept) = self.transformer.forward(
            ids,
            lengths,
            LogitRows::End,
            Keep::Everything(CacheExtras::PUBLIC),
            hooks,
        );
        let Some(Kept::Everything(cache)) = kept else {
            unreachable!("the cache was asked for")
        };
        let finite = |a: &Array3<f32>| {
            lengths.iter().enumerate().all(|(b, &len)| {
                a.slice(ndarray::s![b, ..len, ..])
                    .iter()
                    .all(|x| x.is_finite())
            })
        };
        if !finite(&cache.embed) {
            return "the embedding".to_string();
        }
        for (layer, values) in cache.layers.iter().enumerate() {
            if !finite(&values.attn_out) {
                return format!("the attention output of layer {layer}");
            }
            if !finite(&values.resid_mid) {
                return format!("the residual stream after the attention of layer {layer}");
            }
            if !finite(&values.mlp_out) {
                return format!("the MLP output of layer {layer}");
            }
            if !finite(&values.resid_post) {
                return format!("the residual stream after layer {layer}");
            }
        }
        if !finite(&cache.resid_final) {
            return "the residual stream the unembedding reads".to_string();
        }
        "the final norm and unembedding".to_string()
    }

    /// Greedy continuation: appends `n_new` argmax tokens to `ids` (stops at the context end).
    pub fn generate_greedy(&self, ids: &[u32], n_new: usize) -> Result<Vec<u32>, ModelError> {
        let mut ids = ids.to_vec();
        for _ in 0..n_new {
            if ids.len() >= self.config.n_ctx {
                break;
            }
            let out = self.forward(
                std::slice::from_ref(&ids),
                &ForwardOptions::default(),
                &NoInterventions,
            )?;
            let logits = out.logits.slice(ndarray::s![0, 0, ..]);
            let next = logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                })
                .0;
            ids.push(next as u32);
        }
        Ok(ids)
    }

    /// Rows of the token embedding (may exceed the tokenizer's vocabulary: GPT-2 pads it).
    /// Whether the weight matrices were kept in their stored dtype (BF16/F16, `--weights`).
    pub fn weights_are_stored(&self) -> bool {
        self.transformer.embed.is_stored()
            || self
                .transformer
                .layers
                .iter()
                .any(|layer| layer.o.weight.is_stored())
    }

    /// How many of the model's weight matrices (embedding, unembedding, every layer's q, k, v,
    /// o and MLP matrices) are held as f32: all of them under `--weights f32`, none of a
    /// BF16/F16 file's under `stored` (tests/engine_stored.rs).
    pub fn matrices_held_as_f32(&self) -> usize {
        use transformer::Mlp;
        let t = &self.transformer;
        let mut matrices = vec![&t.embed];
        matrices.extend(&t.unembed);
        for layer in &t.layers {
            matrices.extend([
                &layer.q.weight,
                &layer.k.weight,
                &layer.v.weight,
                &layer.o.weight,
            ]);
            match &layer.mlp {
                Mlp::GeluNew { fc, proj } | Mlp::GeluErf { fc, proj } => {
                    matrices.extend([&fc.weight, &proj.weight])
                }
                Mlp::SwiGlu { gate, up, down } | Mlp::GeGlu { gate, up, down } => {
                    matrices.extend([&gate.weight, &up.weight, &down.weight])
                }
            }
        }
        matrices.iter().filter(|w| !w.is_stored()).count()
    }

    pub fn n_embedding_rows(&self) -> usize {
        self.transformer.embed.nrows()
    }
}

/// The config's layer count against the weights' headers (no tensor is read): run before
/// anything is allocated or expanded from config values, by the loaders and, through
/// [`check_config_against_weights`], by `circuit check`.
pub(crate) fn check_layer_count(
    config: &ModelConfig,
    files: &WeightFiles,
) -> Result<(), ModelError> {
    match config.architecture {
        Architecture::Gpt2 => {
            let prefix = if files.contains("transformer.wte.weight") {
                "transformer."
            } else {
                ""
            };
            files.check_layer_count("n_layer", config.n_layers, |i| {
                format!("{prefix}h.{i}.ln_1.weight")
            })?;
        }
        Architecture::Llama
        | Architecture::Qwen2
        | Architecture::Qwen3
        | Architecture::Mistral
        | Architecture::Gemma2 => {
            files.check_layer_count("num_hidden_layers", config.n_layers, |i| {
                format!("model.layers.{i}.input_layernorm.weight")
            })?;
        }
        Architecture::GptNeox => {
            files.check_layer_count("num_hidden_layers", config.n_layers, |i| {
                format!("gpt_neox.layers.{i}.input_layernorm.weight")
            })?;
        }
    }
    Ok(())
}

/// For a model folder's config read alone (`circuit check`): its layer count checked against
/// the weights' safetensors headers, which are mapped but whose tensors are not read, so that
/// `n_layer: 1000000000` is an error before `*` is expanded over it. A folder without weights
/// (a config for checking only) has nothing to check against.
pub fn check_config_against_weights(dir: &Path, config: &ModelConfig) -> Result<(), ModelError> {
    let has_weights = ["model.safetensors", "model.safetensors.index.json"]
        .iter()
        .any(|name| dir.join(name).exists());
    if !has_weights {
        return Ok(());
    }
    let files = WeightFiles::open_dir(dir, architecture_name(config))?;
    check_layer_count(config, &files)
}

fn architecture_name(config: &ModelConfig) -> &'static str {
    match config.architecture {
        Architecture::Gpt2 => "GPT-2",
        Architecture::Llama => "Llama",
        Architecture::GptNeox => "GPT-NeoX",
        Architecture::Qwen2 => "Qwen2",
        Architecture::Qwen3 => "Qwen3",
        Architecture::Mistral => "Mistral",
        Architecture::Gemma2 => "Gemma 2",
    }
}

/// Config flags that change the math in ways the engine does not implement (`ModelConfig` has
/// already rejected unknown architectures and scaled rotary embeddings).
fn reject_unsupported_settings(config_json: &str) -> Result<(), ModelError> {
    let json: serde_json::Value = serde_json::from_str(config_json).unwrap_or_default();
    let flag = |name: &str| json.get(name).and_then(serde_json::Value::as_bool);
    let unsupported = [
        (
            "scale_attn_by_inverse_layer_idx",
            flag("scale_attn_by_inverse_layer_idx") == Some(true),
        ),
        (
            "scale_attn_weights",
            flag("scale_attn_weights") == Some(false),
        ),
        (
            "add_cross_attention",
            flag("add_cross_attention") == Some(true),
        ),
    ];
    match unsupported.iter().find(|(_, bad)| *bad) {
        Some((name, _)) => Err(ModelError::Unsupported {
            what: format!("config.json sets `{name}` to a value the engine does not implement"),
        }),
        None => Ok(()),
    }
}

fn build(config: &ModelConfig, files: &WeightFiles) -> Result<Transformer, ModelError> {
    let transformer = match config.architecture {
        Architecture::Gpt2 => gpt2::load(config, files)?,
        Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Mistral => {
            llama::load(config, files)?
        }
        Architecture::GptNeox => gpt_neox::load(config, files)?,
        Architecture::Gemma2 => gemma2::load(config, files)?,
    };
    debug_assert_eq!(transformer.residual, config.residual);
    files.check_all_used()?;
    Ok(transformer)
}

/// A tokenizer that can produce ids past the embedding is an error; an embedding padded larger
/// than the tokenizer (as GPT-2's often is) is fine.
fn check_vocab(
    tokenizer: &Tokenizer,
    transformer: &Transformer,
    tokenizer_path: &Path,
) -> Result<(), ModelError> {
    let rows = transformer.embed.nrows();
    if tokenizer.vocab_size() > rows {
        return Err(ModelError::VocabMismatch {
            path: tokenizer_path.to_path_buf(),
            tokenizer_vocab: tokenizer.vocab_size(),
            embedding_rows: rows,
        });
    }
    Ok(())
}
