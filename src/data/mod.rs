//! Datasets: prompts with labelled slots, built-in task generators, and per-prompt resolution of
//! position labels to token indices through the tokenizer's offsets.
//!
//! - [`load`] reads a [`DatasetSource`] (a JSONL file or a built-in generator) into a
//!   [`Dataset`] of [`Record`]s with byte-span slots; [`label_names`] lists its labels cheaply.
//! - [`tokenize_record`] / [`tokenize_dataset`] map slots to tokens under a model's tokenizer;
//!   [`TokenizedPrompt::resolve`] turns a [`positions::PositionSet`] into token indices.

pub mod autocircuit;
pub mod builtin;
pub mod error;
pub mod inspect;
pub mod jsonl;
pub mod lexicon;
pub mod positions;
pub mod record;
pub mod slots;
pub mod source;
pub mod tokenized;

pub use error::{DataError, PromptId, PromptSet};
pub use record::{Dataset, Record, Span};
pub use source::{DatasetSource, ParamValue};
pub use tokenized::{
    alias_notes, check_equal_lengths, check_paired_lengths, check_reference,
    check_reference_lengths, tokenize_dataset, tokenize_record, tokenize_record_in, Alias,
    AliasNote, Pairing, SlotTokens, TokenizedDataset, TokenizedPrompt,
};

/// Loads a dataset: generates a built-in, or reads and validates a JSONL file.
pub fn load(source: &DatasetSource) -> Result<Dataset, DataError> {
    match source {
        DatasetSource::Builtin { name, params } => {
            let spec = builtin::spec(name, params)?;
            builtin::generate(name, &spec)
        }
        DatasetSource::File(path) => jsonl::read(path),
    }
}

/// The slot labels every prompt of the dataset defines (END and BOS are not slot labels).
/// Built-ins: parameters are checked, but no prompt is generated and no tokenizer is needed;
/// the order is fixed (`S1`…`S{len}`; `IO`, `S1`, `S2`, `PLACE`, `OBJECT`). A file is read and
/// validated; its labels come in the order they appear in its first prompt.
pub fn label_names(source: &DatasetSource) -> Result<Vec<String>, DataError> {
    match source {
        DatasetSource::Builtin { name, params } => {
            Ok(builtin::labels(&builtin::spec(name, params)?))
        }
        DatasetSource::File(path) => Ok(jsonl::read(path)?.common_labels()),
    }
}
