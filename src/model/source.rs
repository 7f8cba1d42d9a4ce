//! Where a model comes from: a built-in model compiled into the binary, or a HuggingFace folder.

use std::path::{Path, PathBuf};

use super::config::{ConfigError, ModelConfig};

/// A model as a `.circuit` file or `--model` names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ModelSource {
    /// A model compiled into the binary, by name (see [`super::builtin`]).
    Builtin(String),
    /// A HuggingFace folder (config.json, model.safetensors, tokenizer.json).
    Dir(PathBuf),
}

impl ModelSource {
    /// Interprets `spec` as written by a user (the one place a model name becomes a model): a
    /// built-in model's name; else a folder path, relative to `base_dir` (the folder of the
    /// `.circuit` file, or the working directory); else a hub name (`gpt2`,
    /// `EleutherAI/pythia-70m`) in the local HuggingFace cache ([`super::hub`], offline).
    pub fn parse(spec: &str, base_dir: &Path) -> Result<ModelSource, super::hub::ModelNotFound> {
        if super::builtin::is_builtin(spec) {
            return Ok(ModelSource::Builtin(spec.to_string()));
        }
        let roots = super::hub::cache_roots();
        super::hub::locate(spec, base_dir.join(spec), &roots).map(ModelSource::Dir)
    }

    /// `spec` as a built-in model's name or else a folder relative to `base_dir`, without
    /// looking at the disk (what a resolver that does not read the world, as the docs' tests,
    /// takes a `model` setting to mean).
    pub fn named(spec: &str, base_dir: &Path) -> ModelSource {
        if super::builtin::is_builtin(spec) {
            ModelSource::Builtin(spec.to_string())
        } else {
            ModelSource::Dir(base_dir.join(spec))
        }
    }

    /// The built-in default model: what every command uses when no model is named.
    pub fn default_model() -> ModelSource {
        ModelSource::Builtin(super::builtin::DEFAULT_MODEL_NAME.to_string())
    }

    /// The model's config alone: cheap, never reads weights.
    pub fn config(&self) -> Result<ModelConfig, ConfigError> {
        match self {
            ModelSource::Builtin(name) => super::builtin::config(name),
            ModelSource::Dir(dir) => ModelConfig::from_dir(dir),
        }
    }

    /// How the model is named in reports.
    pub fn display_name(&self) -> String {
        match self {
            ModelSource::Builtin(name) => name.clone(),
            ModelSource::Dir(dir) => dir.display().to_string(),
        }
    }
}
