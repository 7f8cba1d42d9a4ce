//! auto-circuit's prompt files as a dataset (`circuit dataset import`).
//!
//! The file: `{"prompts": [{"clean", "corrupt", "answers", "wrong_answers"}], "seq_labels",
//! "word_idxs"}`. auto-circuit tokenizes each set (clean, corrupt) with a BOS prepended
//! (`prepend_bos`, its default) and left-pads it to the set's longest prompt; `word_idxs`
//! (name → token index) and `seq_labels` (one name per token index) name positions of that
//! padded sequence, the same index in every prompt. Here each name becomes a labelled span per
//! prompt: the text of the token at that index in that prompt, under the tokenizer given (the
//! model's). The dataset is paired (corrupt `i` is clean `i`'s reference) and keeps auto-circuit's
//! answers: each prompt needs exactly one answer and one wrong answer (the distractor).
//!
//! Names that are offsets of another name (`S1+1` beside `S1`, at the index one after it) are
//! not labels: a `.circuit` file writes them as offsets, so they are dropped with a note, once
//! checked. Names that land on no text token (the prepended BOS, padding, past the prompt) are
//! errors naming the prompt, unless `drop` lists them. `seq_labels` entries that cannot name a
//! label (not an identifier, `BOS`/`END`, repeated, or a `word_idxs` name) are left out with a
//! note. Every label is checked to resolve back to exactly its token.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::Deserialize;
use thiserror::Error;

use super::error::{PromptId, PromptSet};
use super::record::{Dataset, Record, Span, RESERVED_LABELS};
use super::tokenized::tokenize_record_in;
use crate::model::tokenizer::TokenizerError;
use crate::model::Tokenizer;

#[derive(Debug, Error, Diagnostic)]
pub enum ImportError {
    #[error("cannot read {path}")]
    #[diagnostic(code(circuit::data::import_read))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not an auto-circuit prompt file: {message}")]
    #[diagnostic(
        code(circuit::data::import_format),
        help("expected {{\"prompts\": [{{\"clean\", \"corrupt\", \"answers\", \"wrong_answers\"}}], \"seq_labels\"?, \"word_idxs\"?}} with text prompts")
    )]
    Format { path: PathBuf, message: String },

    #[error(
        "{prompt}: {what} has {count} entries; a dataset scores one answer against one distractor"
    )]
    #[diagnostic(
        code(circuit::data::import_answers),
        help("keep one answer and one wrong answer per prompt")
    )]
    Answers {
        prompt: PromptId,
        what: &'static str,
        count: usize,
    },

    #[error("{prompt}: `{label}` (token index {index}) {problem}")]
    #[diagnostic(code(circuit::data::import_label), help("{help}"))]
    Label {
        prompt: PromptId,
        label: String,
        index: i64,
        problem: String,
        help: String,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Tokenizer(#[from] TokenizerError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] super::DataError),
}

/// How the positions of the file count.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Whether auto-circuit prepended a BOS to every prompt (its default `prepend_bos=True`).
    pub prepend_bos: bool,
    /// Names (of `word_idxs` or `seq_labels`) not to import.
    pub drop: Vec<String>,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            prepend_bos: true,
            drop: Vec::new(),
        }
    }
}

/// The dataset, and what was left out or rewritten (for stderr).
#[derive(Clone, Debug)]
pub struct Imported {
    pub dataset: Dataset,
    pub notes: Vec<String>,
}

#[derive(Deserialize)]
struct PromptFile {
    prompts: Vec<PromptPair>,
    #[serde(default)]
    seq_labels: Option<Vec<String>>,
    #[serde(default)]
    word_idxs: Option<BTreeMap<String, i64>>,
}

#[derive(Deserialize)]
struct PromptPair {
    clean: serde_json::Value,
    corrupt: serde_json::Value,
    answers: Vec<serde_json::Value>,
    wrong_answers: Vec<serde_json::Value>,
}

/// Reads an auto-circuit prompt file and labels it under `tokenizer`.
pub fn import(
    path: &Path,
    tokenizer: &Tokenizer,
    options: &ImportOptions,
) -> Result<Imported, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    import_str(&text, path, tokenizer, options)
}

/// Whether `name` can be a slot label a `.circuit` file names (an identifier, not END/BOS).
fn usable_label(name: &str) -> bool {
    let mut chars = name.chars();
    let starts = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    starts
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED_LABELS.contains(&name)
}

/// `S1+1` → (`S1`, 1), `IO-1` → (`IO`, -1).
fn as_offset(name: &str) -> Option<(&str, i64)> {
    let at = name.rfind(['+', '-'])?;
    let (base, rest) = name.split_at(at);
    let amount: i64 = rest[1..].parse().ok()?;
    Some((
        base,
        if rest.starts_with('-') {
            -amount
        } else {
            amount
        },
    ))
}

/// Like [`import`], from the file's text; `path` names it in errors and in the dataset.
pub fn import_str(
    text: &str,
    path: &Path,
    tokenizer: &Tokenizer,
    options: &ImportOptions,
) -> Result<Imported, ImportError> {
    let file: PromptFile = serde_json::from_str(text).map_err(|e| ImportError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let format_error = |message: String| ImportError::Format {
        path: path.to_path_buf(),
        message,
    };
    if file.prompts.is_empty() {
        return Err(format_error("`prompts` is empty".into()));
    }
    let mut notes = Vec::new();
    let dropped: BTreeSet<&str> = options.drop.iter().map(String::as_str).collect();

    // Name → index of the padded sequence.
    let word_idxs = file.word_idxs.unwrap_or_default();
    let mut labels: BTreeMap<String, i64> = BTreeMap::new();
    let mut offsets = Vec::new();
    for (name, &index) in &word_idxs {
        if dropped.contains(name.as_str()) {
            continue;
        }
        match as_offset(name) {
            Some((base, by)) if word_idxs.get(base) == Some(&(index - by)) => {
                offsets.push(name.clone());
                continue;
            }
            _ => {}
        }
        if !usable_label(name) {
            return Err(format_error(format!(
                "`word_idxs` name `{name}` is not a label a .circuit file can name (letters, digits and `_`; not END or BOS); drop it with --drop {name}"
            )));
        }
        labels.insert(name.clone(), index);
    }
    if !offsets.is_empty() {
        notes.push(format!(
            "word_idxs {} are offsets of other names: write them so in a .circuit file (e.g. `{}`), they are not labels",
            offsets.join(", "),
            offsets[0]
        ));
    }
    if let Some(seq_labels) = &file.seq_labels {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for name in seq_labels {
            *count.entry(name.as_str()).or_default() += 1;
        }
        let mut skipped = Vec::new();
        for (index, name) in seq_labels.iter().enumerate() {
            if dropped.contains(name.as_str()) {
                continue;
            }
            if usable_label(name) && count[name.as_str()] == 1 && !labels.contains_key(name) {
                labels.insert(name.clone(), index as i64);
            } else {
                skipped.push(format!("{index} {name:?}"));
            }
        }
        if !skipped.is_empty() {
            notes.push(format!(
                "seq_labels left out (not an identifier, BOS/END, repeated, or a word_idxs name): {}",
                skipped.join(", ")
            ));
        }
    }

    let text_of = |value: &serde_json::Value,
                   what: &str,
                   i: usize|
     -> Result<String, ImportError> {
        value.as_str().map(str::to_string).ok_or_else(|| {
            format_error(format!(
                "prompt {i}: `{what}` is not text (token-id prompts do not import: their text is unknown)"
            ))
        })
    };
    let mut clean_texts = Vec::new();
    let mut corrupt_texts = Vec::new();
    let mut answers = Vec::new();
    for (i, pair) in file.prompts.iter().enumerate() {
        let clean = text_of(&pair.clean, "clean", i)?;
        let id = PromptId {
            set: PromptSet::Clean,
            index: i,
            text: clean.clone(),
        };
        for (what, list) in [
            ("answers", &pair.answers),
            ("wrong_answers", &pair.wrong_answers),
        ] {
            if list.len() != 1 {
                return Err(ImportError::Answers {
                    prompt: id.clone(),
                    what,
                    count: list.len(),
                });
            }
        }
        let answer = text_of(&pair.answers[0], "answers", i)?;
        let distractor = text_of(&pair.wrong_answers[0], "wrong_answers", i)?;
        corrupt_texts.push(text_of(&pair.corrupt, "corrupt", i)?);
        clean_texts.push(clean);
        answers.push((answer, distractor));
    }

    let clean = label_set(
        &clean_texts,
        PromptSet::Clean,
        &answers,
        &labels,
        tokenizer,
        options,
    )?;
    let reference = label_set(
        &corrupt_texts,
        PromptSet::Reference,
        &answers,
        &labels,
        tokenizer,
        options,
    )?;
    let dataset = Dataset {
        name: path.display().to_string(),
        clean,
        reference,
        paired: true,
    };
    dataset.validate()?;
    Ok(Imported { dataset, notes })
}

/// The records of one set (auto-circuit pads each set on its own), each label the span of its
/// token, checked to resolve back to that token.
fn label_set(
    texts: &[String],
    set: PromptSet,
    answers: &[(String, String)],
    labels: &BTreeMap<String, i64>,
    tokenizer: &Tokenizer,
    options: &ImportOptions,
) -> Result<Vec<Record>, ImportError> {
    let encoded = texts
        .iter()
        .map(|t| tokenizer.encode(t))
        .collect::<Result<Vec<_>, _>>()?;
    // Text tokens per prompt (an added BOS is not text), and the padded length auto-circuit
    // sees: its BOS plus the longest prompt's text tokens.
    let text_tokens = |e: &crate::model::Encoded| e.ids.len() - usize::from(e.has_bos);
    let bos = i64::from(options.prepend_bos);
    let padded = encoded.iter().map(text_tokens).max().unwrap_or(0) as i64 + bos;
    let mut records = Vec::with_capacity(texts.len());
    for (i, (text, e)) in texts.iter().zip(&encoded).enumerate() {
        let id = PromptId {
            set,
            index: i,
            text: text.clone(),
        };
        let n_text = text_tokens(e) as i64;
        let pad = padded - bos - n_text;
        let mut slots = BTreeMap::new();
        let mut token_of = BTreeMap::new();
        for (label, &index) in labels {
            let fail = |problem: String, help: String| ImportError::Label {
                prompt: id.clone(),
                label: label.clone(),
                index,
                problem,
                help,
            };
            let drop_help = format!("leave it out with --drop {label}");
            let t = index - pad - bos; // index among the prompt's text tokens
            if index < 0 || index >= padded {
                return Err(fail(
                    format!(
                        "is outside the sequence of {padded} positions (BOS and padding included)"
                    ),
                    drop_help,
                ));
            }
            if index < pad {
                return Err(fail(
                    format!("lands on padding: the prompt has {n_text} tokens, {pad} fewer than the longest"),
                    format!("auto-circuit left-pads shorter prompts, so a fixed index means another token in them; import prompts of one token length, or {drop_help}"),
                ));
            }
            if t < 0 {
                return Err(fail(
                    "lands on the prepended BOS, which is no text of the prompt".into(),
                    format!("{drop_help} (a .circuit file names that token BOS when the tokenizer adds one)"),
                ));
            }
            let j = t as usize + usize::from(e.has_bos); // our token index
            let (start, end) = e.offsets[j];
            if start >= end {
                return Err(fail(
                    "lands on a token that covers no text of the prompt".into(),
                    drop_help,
                ));
            }
            slots.insert(label.clone(), Span::new(start, end));
            token_of.insert(label.clone(), j);
        }
        let (answer, distractor) = &answers[i];
        let record = Record {
            prompt: text.clone(),
            slots,
            answer: Some(answer.clone()),
            distractor: Some(distractor.clone()),
        };
        record.validate(&id)?;
        // The label must name its token again once the pipeline maps spans to tokens.
        let tokenized = tokenize_record_in(&record, tokenizer, set, i)?;
        for (label, &j) in &token_of {
            let got = tokenized.slots[label];
            if got.first != j || got.last != j {
                return Err(ImportError::Label {
                    prompt: id.clone(),
                    label: label.clone(),
                    index: labels[label],
                    problem: format!(
                        "is token {j}, but its text resolves to tokens {}..={}",
                        got.first, got.last
                    ),
                    help: format!("leave it out with --drop {label}"),
                });
            }
        }
        records.push(record);
    }
    Ok(records)
}
