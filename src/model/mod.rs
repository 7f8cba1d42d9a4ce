//! The transformer engine: HuggingFace model folders (GPT-2 and Llama families) run in f32 on
//! the CPU with ndarray, exposing named intervention points and an activation cache.

pub mod builtin;
pub mod config;
pub mod interventions;
pub mod source;
pub mod tokenizer;

pub use config::{Architecture, ModelConfig};
pub use interventions::{ComponentOutputs, HeadInput, Interventions, NoInterventions};
pub use source::ModelSource;
pub use tokenizer::{Encoded, Tokenizer};
