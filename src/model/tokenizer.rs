//! The model's tokenizer (`tokenizer.json`, HuggingFace `tokenizers`), with byte offsets.
//!
//! Positions in a circuit are labels mapped through these offsets, never token searches.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {message}")]
    #[diagnostic(
        code(circuit::model::tokenizer),
        help("a model folder needs the tokenizer.json that was saved with the model")
    )]
    Load { path: PathBuf, message: String },
    #[error("cannot tokenize {text:?}: {message}")]
    #[diagnostic(code(circuit::model::tokenize))]
    Encode { text: String, message: String },
}

/// One tokenized text: ids and, per token, the byte range of the text it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Byte offsets `[start, end)` into the text, one per token. Special tokens added by the
    /// tokenizer (BOS) have the empty range `(0, 0)`.
    pub offsets: Vec<(usize, usize)>,
    /// Whether `ids[0]` is a BOS token the tokenizer added (not text of the prompt).
    pub has_bos: bool,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer of a model without its weights: a folder's `tokenizer.json`, or the one
    /// embedded in the binary for a built-in model.
    pub fn open(model: &super::ModelSource) -> Result<Self, TokenizerError> {
        match model {
            super::ModelSource::Dir(dir) => Tokenizer::from_file(&dir.join("tokenizer.json")),
            super::ModelSource::Builtin(name) => super::builtin::tokenizer(name),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a `tokenizer.json`; `path` is used in error messages only.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Tokenizer { inner })
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenizes `text` as the model sees it (special tokens such as BOS added).
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode {
                text: text.to_string(),
                message: e.to_string(),
            })?;
        let ids = encoding.get_ids().to_vec();
        let special = encoding.get_special_tokens_mask();
        let offsets: Vec<(usize, usize)> = encoding
            .get_offsets()
            .iter()
            .zip(special)
            .map(|(&(s, e), &is_special)| if is_special == 1 { (0, 0) } else { (s, e) })
            .collect();
        let has_bos = special.first() == Some(&1);
        Ok(Encoded {
            ids,
            offsets,
            has_bos,
        })
    }

    /// Tokenizes `text` alone, without special tokens: what an answer string becomes.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode {
                text: text.to_string(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of one token id (raw vocabulary string decoded to text).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories260k_adds_bos_and_reports_offsets() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/models/stories260K/tokenizer.json");
        let tok = Tokenizer::from_file(&path).unwrap();
        let enc = tok.encode("Once upon a time").unwrap();
        assert!(enc.has_bos);
        assert_eq!(enc.ids[0], 1);
        assert_eq!(enc.offsets[0], (0, 0));
        assert_eq!(enc.ids.len(), enc.offsets.len());
        let (_, last_end) = *enc.offsets.last().unwrap();
        assert_eq!(last_end, "Once upon a time".len());
    }
}
