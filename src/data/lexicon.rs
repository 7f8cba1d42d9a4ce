//! The word lists and templates of the built-in generators (src/data/lexicon.json), shared with
//! scripts/train_default_model.py so the default model is trained on exactly these prompts.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::error::DataError;

#[derive(Debug, Deserialize)]
pub struct Lexicon {
    pub sequences: BTreeMap<String, SequenceKind>,
    pub templates: BTreeMap<String, SentenceTemplate>,
    pub nouns: Vec<String>,
    pub names: Vec<String>,
    pub ioi: Ioi,
}

/// One kind of sequence (numerals, months, ...).
#[derive(Debug, Deserialize)]
pub struct SequenceKind {
    /// The members in order.
    pub members: Vec<String>,
    /// Whether the member after the last is the first again (months, days).
    pub wraps: bool,
    /// Key into [`Lexicon::templates`].
    pub template: String,
}

/// The sentence a member is shown in and the final query sentence.
#[derive(Debug, Deserialize)]
pub struct SentenceTemplate {
    /// With `{filler}` and `{member}`: `"{filler} done in {member}."`.
    pub sentence: String,
    /// With `{filler}`: `"{filler} done in"`.
    pub query: String,
    /// `"nouns"` or `"names"`.
    pub fillers: String,
}

#[derive(Debug, Deserialize)]
pub struct Ioi {
    pub names: Vec<String>,
    pub places: Vec<String>,
    pub objects: Vec<String>,
    /// With `{IO}`, `{S1}`, `{S2}`, `{PLACE}`, `{OBJECT}`.
    pub templates: Vec<String>,
}

impl Lexicon {
    /// The filler list a sentence template draws from.
    pub fn fillers(&self, which: &str) -> Result<&[String], DataError> {
        match which {
            "nouns" => Ok(&self.nouns),
            "names" => Ok(&self.names),
            other => Err(DataError::Lexicon {
                message: format!("unknown filler list {other:?}"),
            }),
        }
    }
}

/// The lexicon compiled into the binary, parsed once.
pub fn lexicon() -> Result<&'static Lexicon, DataError> {
    static LEXICON: OnceLock<Result<Lexicon, String>> = OnceLock::new();
    LEXICON
        .get_or_init(|| {
            serde_json::from_str(include_str!("lexicon.json")).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|message| DataError::Lexicon {
            message: message.clone(),
        })
}
