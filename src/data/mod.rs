//! Datasets: prompts with labelled slots, built-in task generators, and per-prompt resolution of
//! position labels to token indices through the tokenizer's offsets.

pub mod positions;
pub mod source;

pub use source::{DatasetSource, ParamValue};
