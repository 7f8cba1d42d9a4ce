//! Models compiled into the binary, so every command runs offline out of the box.
//!
//! There is one: `toy-seqcont`, a 3-layer GPT-2 with a word-level vocabulary trained by this
//! project on the built-in sequence-continuation tasks (scripts/train_default_model.py; its
//! models/toy-seqcont/README.md records the command, data, accuracies and file hashes). Its three
//! files are embedded with `include_bytes!`, so the binary needs no model folder at run time.

use std::path::{Path, PathBuf};

use super::config::{ConfigError, ModelConfig};
use super::tokenizer::{Tokenizer, TokenizerError};
use super::{Model, ModelError};

/// The model every command uses when none is named.
pub const DEFAULT_MODEL_NAME: &str = "toy-seqcont";

/// The three files of a HuggingFace model folder, as embedded in the binary.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinFiles {
    /// `config.json` text.
    pub config_json: &'static str,
    /// `model.safetensors` bytes.
    pub safetensors: &'static [u8],
    /// `tokenizer.json` bytes.
    pub tokenizer_json: &'static [u8],
}

const TOY_SEQCONT: BuiltinFiles = BuiltinFiles {
    config_json: include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/toy-seqcont/config.json"
    )),
    safetensors: include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/toy-seqcont/model.safetensors"
    )),
    tokenizer_json: include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/toy-seqcont/tokenizer.json"
    )),
};

/// Names of the models compiled into this binary.
pub fn names() -> &'static [&'static str] {
    &[DEFAULT_MODEL_NAME]
}

/// Whether `name` is a model compiled into this binary (not a folder).
pub fn is_builtin(name: &str) -> bool {
    names().contains(&name)
}

/// The embedded files of a built-in model, or `None` for an unknown name.
pub fn files(name: &str) -> Option<BuiltinFiles> {
    (name == DEFAULT_MODEL_NAME).then_some(TOY_SEQCONT)
}

/// How a built-in model's files are named in error messages (it has no folder on disk).
fn label(name: &str, file: &str) -> PathBuf {
    Path::new(&format!("<built-in model {name}>")).join(file)
}

fn unknown(name: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "no built-in model named {name:?}; the built-in models are: {}",
            names().join(", ")
        ),
    )
}

/// A built-in model's config, parsed from its embedded `config.json` (no weights touched).
pub fn config(name: &str) -> Result<ModelConfig, ConfigError> {
    let path = label(name, "config.json");
    let files = files(name).ok_or_else(|| ConfigError::Read {
        path: path.clone(),
        source: unknown(name),
    })?;
    ModelConfig::from_json_str(files.config_json, &path)
}

/// A built-in model's tokenizer, parsed from its embedded `tokenizer.json`.
pub fn tokenizer(name: &str) -> Result<Tokenizer, TokenizerError> {
    let path = label(name, "tokenizer.json");
    let files = files(name).ok_or_else(|| TokenizerError::Load {
        path: path.clone(),
        message: unknown(name).to_string(),
    })?;
    Tokenizer::from_bytes(files.tokenizer_json, &path)
}

/// Loads a built-in model from the bytes embedded in the binary.
pub fn load(name: &str) -> Result<Model, ModelError> {
    let files = files(name).ok_or_else(|| ModelError::BuiltinUnavailable {
        name: name.to_string(),
        message: unknown(name).to_string(),
    })?;
    Model::from_static(
        name,
        files.config_json,
        files.safetensors,
        files.tokenizer_json,
    )
}
