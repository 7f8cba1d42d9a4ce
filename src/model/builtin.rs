//! Models compiled into the binary, so every command runs offline out of the box.
//!
//! Placeholder until the default model is trained (issue: built-in default model): no built-in
//! model exists yet, so every lookup fails with a clear error.

use std::path::PathBuf;

use super::config::{ConfigError, ModelConfig};

/// The model every command uses when none is named.
pub const DEFAULT_MODEL_NAME: &str = "toy-seqcont";

/// Names of the models compiled into this binary.
pub fn names() -> &'static [&'static str] {
    &[]
}

pub fn is_builtin(name: &str) -> bool {
    names().contains(&name)
}

pub fn config(name: &str) -> Result<ModelConfig, ConfigError> {
    Err(ConfigError::Read {
        path: PathBuf::from(format!("<built-in model {name}>/config.json")),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "this binary has no built-in model yet; pass a model folder",
        ),
    })
}
