//! Everything that can go wrong loading or running a model, as miette diagnostics.

use std::path::PathBuf;

use miette::Diagnostic;
use thiserror::Error;

use super::config::ConfigError;
use super::tokenizer::TokenizerError;

/// A model that cannot be loaded or a forward pass that cannot run. Each variant names the file,
/// tensor or prompt at fault and what was expected.
#[derive(Debug, Error, Diagnostic)]
pub enum ModelError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] ConfigError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Tokenizer(#[from] TokenizerError),

    #[error("cannot read weights {path}")]
    #[diagnostic(
        code(circuit::model::weights_missing),
        help("a model folder holds model.safetensors (or a sharded model.safetensors.index.json with its shards)")
    )]
    WeightsRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid safetensors file: {problem}")]
    #[diagnostic(
        code(circuit::model::bad_safetensors),
        help("the file may be truncated or not a safetensors file; download it again")
    )]
    BadSafetensors { path: PathBuf, problem: String },

    #[error("{path}: invalid shard index: {problem}")]
    #[diagnostic(code(circuit::model::bad_shard_index))]
    BadShardIndex { path: PathBuf, problem: String },

    #[error("{path}: tensor `{tensor}` is missing")]
    #[diagnostic(
        code(circuit::model::tensor_missing),
        help("a {architecture} model needs this tensor; is config.json's model_type right for these weights?")
    )]
    TensorMissing {
        path: PathBuf,
        tensor: String,
        architecture: String,
    },

    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    #[diagnostic(
        code(circuit::model::tensor_shape),
        help("the shapes follow from config.json; do the config and the weights belong together?")
    )]
    TensorShape {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("{path}: tensor `{tensor}` has dtype {found}, expected F32, F16 or BF16")]
    #[diagnostic(code(circuit::model::tensor_dtype))]
    TensorDtype {
        path: PathBuf,
        tensor: String,
        found: String,
    },

    #[error("{path}: tensor `{tensor}` holds a non-finite value ({value} at flat index {index})")]
    #[diagnostic(
        code(circuit::model::non_finite_weight),
        help("the weights are corrupt or diverged in training; no number computed from them would mean anything")
    )]
    NonFiniteWeight {
        path: PathBuf,
        tensor: String,
        index: usize,
        value: String,
    },

    #[error("{path}: {count} tensor(s) that a {architecture} model with this config.json does not use: {list}")]
    #[diagnostic(
        code(circuit::model::unexpected_tensors),
        help("config.json and the weights disagree (fewer layers in the config than in the file, or a tensor of another architecture); do they belong together?")
    )]
    UnexpectedTensors {
        path: PathBuf,
        count: usize,
        list: String,
        architecture: String,
    },

    #[error(
        "{path}: config.json sets `{field}` to {config}, but the weights hold {weights} layers"
    )]
    #[diagnostic(
        code(circuit::model::layer_count),
        help("config.json and the weights must come from the same model")
    )]
    LayerCount {
        path: PathBuf,
        field: String,
        config: usize,
        weights: usize,
    },

    #[error("prompt #{prompt}: the forward pass produced non-finite values; they first appear in {location}")]
    #[diagnostic(
        code(circuit::model::non_finite_activations),
        help("the model overflows on this input (or an intervention wrote a non-finite value); no metric of it would mean anything")
    )]
    NonFiniteActivations { prompt: usize, location: String },

    #[error("{path}: the tokenizer has {tokenizer_vocab} ids but the embedding has only {embedding_rows} rows")]
    #[diagnostic(
        code(circuit::model::vocab_mismatch),
        help("tokenizer.json and the weights must come from the same model")
    )]
    VocabMismatch {
        path: PathBuf,
        tokenizer_vocab: usize,
        embedding_rows: usize,
    },

    #[error("unsupported model setting: {what}")]
    #[diagnostic(code(circuit::model::unsupported))]
    Unsupported { what: String },

    #[error("prompt {prompt} is empty")]
    #[diagnostic(
        code(circuit::model::empty_prompt),
        help("every prompt needs at least one token")
    )]
    EmptyPrompt { prompt: String },

    #[error("prompt {prompt} has {len} tokens, more than the model's context of {n_ctx}")]
    #[diagnostic(code(circuit::model::prompt_too_long), help("shorten the prompt"))]
    PromptTooLong {
        prompt: String,
        len: usize,
        n_ctx: usize,
    },

    #[error("prompt {prompt}: token id {id} is outside the vocabulary of {vocab} ids")]
    #[diagnostic(code(circuit::model::token_out_of_range))]
    TokenOutOfRange {
        prompt: String,
        id: u32,
        vocab: usize,
    },

    #[error("{path}: the model needs about {needed} of memory with {weights} weights, but {available} is available ({source_of_available})")]
    #[diagnostic(
        code(circuit::model::does_not_fit),
        help("with f32 weights the engine holds every weight as f32 (4 bytes per parameter: twice a BF16 file), plus its largest tensor once more; `--weights stored` keeps BF16/F16 matrices as the file has them (about the file's size, plus one matrix as f32). Free memory, use a machine or job with more, or a smaller model. If the available figure is wrong, set $CIRCUIT_MEMORY_AVAILABLE (e.g. 32G)")
    )]
    DoesNotFit {
        path: PathBuf,
        needed: String,
        /// "f32" or "stored-dtype".
        weights: String,
        available: String,
        source_of_available: String,
    },

    #[error("CIRCUIT_MEMORY_AVAILABLE={value:?} is not a size")]
    #[diagnostic(
        code(circuit::model::memory_available_var),
        help("a number of bytes, optionally with a suffix K, M or G (powers of 1024): 500M, 32G")
    )]
    MemoryAvailableVar { value: String },

    #[error("built-in model {name:?} is not available: {message}")]
    #[diagnostic(
        code(circuit::model::builtin_missing),
        help("pass a HuggingFace model folder with --model DIR")
    )]
    BuiltinUnavailable { name: String, message: String },
}
