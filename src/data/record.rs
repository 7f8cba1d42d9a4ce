//! Prompts with labelled slots, and a dataset's clean and reference sets.

use std::collections::BTreeMap;

use super::error::{DataError, PromptId, PromptSet};

/// A byte range `[start, end)` of a prompt (Rust string indices). Files state spans in
/// characters; [`Span::from_chars`] and [`Span::to_chars`] convert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The byte span of the characters `[start, end)` (Unicode code points) of `text`, or a
    /// message saying why there is none.
    pub fn from_chars(text: &str, start: usize, end: usize) -> Result<Span, String> {
        let n_chars = text.chars().count();
        if start >= end {
            return Err(format!("has the empty or reversed span [{start}, {end})"));
        }
        if end > n_chars {
            return Err(format!(
                "span [{start}, {end}) ends after the prompt's {n_chars} characters"
            ));
        }
        // Byte index of every char boundary, the end of the text included.
        let byte_at = |char_index: usize| {
            text.char_indices()
                .map(|(b, _)| b)
                .chain(std::iter::once(text.len()))
                .nth(char_index)
                .expect("char index checked against the char count")
        };
        Ok(Span::new(byte_at(start), byte_at(end)))
    }

    /// This byte span in characters (Unicode code points) of `text`.
    pub fn to_chars(&self, text: &str) -> (usize, usize) {
        (
            text[..self.start].chars().count(),
            text[..self.end].chars().count(),
        )
    }
}

/// One prompt: its text, its labelled slots, the answer and the distractor.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Record {
    pub prompt: String,
    /// Slot label → byte range of the slot's text in `prompt`.
    pub slots: BTreeMap<String, Span>,
    /// The expected next token's text, usually with a leading space (`" 5"`). Every evaluated
    /// (clean) prompt has one (the metric reads it); a reference prompt may have none, since no
    /// setting reads a reference prompt's answer.
    pub answer: Option<String>,
    /// The competing token whose logit the answer's is compared with (`" 4"`); optional on
    /// reference prompts, as `answer` is.
    pub distractor: Option<String>,
}

/// Labels every prompt has without the dataset defining them.
pub const RESERVED_LABELS: [&str; 2] = ["END", "BOS"];

impl Record {
    /// Checks what the rest of the pipeline relies on: non-empty prompt and answers (present on
    /// every evaluated prompt; a reference prompt may have none), slot labels
    /// that are not END/BOS, and byte spans that are non-empty, inside the prompt and on
    /// character boundaries.
    pub fn validate(&self, id: &PromptId) -> Result<(), DataError> {
        if self.prompt.is_empty() {
            return Err(DataError::EmptyText {
                prompt: id.clone(),
                what: "the prompt",
            });
        }
        for (what, text) in [("answer", &self.answer), ("distractor", &self.distractor)] {
            match text {
                Some(text) if text.is_empty() => {
                    return Err(DataError::EmptyText {
                        prompt: id.clone(),
                        what,
                    })
                }
                None if id.set == PromptSet::Clean => {
                    return Err(DataError::MissingAnswer {
                        prompt: id.clone(),
                        what,
                    })
                }
                _ => {}
            }
        }
        for (label, span) in &self.slots {
            if RESERVED_LABELS.contains(&label.as_str()) {
                return Err(DataError::ReservedLabel {
                    prompt: id.clone(),
                    label: label.clone(),
                });
            }
            let bad = |message: String| DataError::BadSpan {
                prompt: id.clone(),
                label: label.clone(),
                message,
            };
            if span.start >= span.end {
                return Err(bad(format!(
                    "has the empty or reversed byte span {}..{}",
                    span.start, span.end
                )));
            }
            if span.end > self.prompt.len() {
                return Err(bad(format!(
                    "byte span {}..{} ends after the prompt's {} bytes",
                    span.start,
                    span.end,
                    self.prompt.len()
                )));
            }
            for b in [span.start, span.end] {
                if !self.prompt.is_char_boundary(b) {
                    return Err(bad(format!(
                        "byte span {}..{}: byte {b} is inside a character",
                        span.start, span.end
                    )));
                }
            }
        }
        Ok(())
    }

    /// The text of slot `label`, if the record has it.
    pub fn slot_text(&self, label: &str) -> Option<&str> {
        self.slots
            .get(label)
            .map(|span| &self.prompt[span.start..span.end])
    }

    /// Slot labels in the order their spans start in the prompt.
    pub fn labels_in_order(&self) -> Vec<String> {
        let mut labels: Vec<(&Span, &String)> = self
            .slots
            .iter()
            .map(|(label, span)| (span, label))
            .collect();
        labels.sort();
        labels.into_iter().map(|(_, label)| label.clone()).collect()
    }
}

/// A dataset: the evaluated (clean) prompts and the reference prompts.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Dataset {
    pub name: String,
    pub clean: Vec<Record>,
    /// The reference ("corrupted") prompts. When `paired`, `reference[i]` is clean prompt `i`'s
    /// partner (resample ablation uses it) and both sets have the same length.
    pub reference: Vec<Record>,
    /// Whether `reference[i]` pairs with `clean[i]`.
    pub paired: bool,
}

impl Dataset {
    /// Validates every record and the pairing.
    pub fn validate(&self) -> Result<(), DataError> {
        for (set, records) in [
            (PromptSet::Clean, &self.clean),
            (PromptSet::Reference, &self.reference),
        ] {
            for (index, record) in records.iter().enumerate() {
                record.validate(&PromptId {
                    set,
                    index,
                    text: record.prompt.clone(),
                })?;
            }
        }
        if self.paired && self.clean.len() != self.reference.len() {
            return Err(DataError::ReferenceCount {
                clean: self.clean.len(),
                reference: self.reference.len(),
            });
        }
        Ok(())
    }

    /// The slot labels every evaluated (clean) prompt defines, in the order their spans start
    /// in the first clean prompt: the labels a circuit may name. Reference prompts need not
    /// carry them: only `align by label` reads a reference prompt's labels, and it checks them
    /// itself ([`super::tokenized::check_reference`]).
    pub fn common_labels(&self) -> Vec<String> {
        let Some(first) = self.clean.first() else {
            return Vec::new();
        };
        first
            .labels_in_order()
            .into_iter()
            .filter(|label| self.clean.iter().all(|r| r.slots.contains_key(label)))
            .collect()
    }
}

/// The [`PromptId`] of record `index` of `set`.
pub fn prompt_id(set: PromptSet, index: usize, record: &Record) -> PromptId {
    PromptId {
        set,
        index,
        text: record.prompt.clone(),
    }
}
