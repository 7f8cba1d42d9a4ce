//! What `circuit dataset inspect` reports: per prompt, its tokens, the slot of each token and
//! the labels on it, the ids its answer and distractor encode to, the positions that share a
//! token, and every problem that would stop the prompt from being evaluated under this
//! tokenizer (collected, not raised, so that one bad prompt does not hide the others).

use std::collections::BTreeMap;

use super::error::{DataError, PromptSet};
use super::record::{prompt_id, Dataset, Record};
use super::slots::{slots_of_prompt, Slot};
use super::tokenized::{
    check_single_token, token_text, tokenize_prompt, unknown_words, PromptTokens,
};
use super::{Alias, AliasNote, TokenizedPrompt};
use crate::model::Tokenizer;

/// One prompt inspected.
pub struct Inspected<'a> {
    pub set: PromptSet,
    pub index: usize,
    pub record: &'a Record,
    /// `None` when the prompt cannot be tokenized (the reason is in `errors`).
    pub tokens: Option<PromptTokens>,
    pub answer_ids: Vec<u32>,
    pub distractor_ids: Vec<u32>,
    /// Every problem found, as its message.
    pub errors: Vec<String>,
    /// What evaluates but may not mean what was meant (words outside the vocabulary).
    pub warnings: Vec<String>,
    pub aliases: Vec<Alias>,
}

/// One token of an inspected prompt.
pub struct TokenRow {
    pub pos: usize,
    pub id: u32,
    /// See [`token_text`].
    pub text: String,
    /// Byte span in the prompt text.
    pub bytes: (usize, usize),
    pub slot: Slot,
    /// `S1`, `first(S1)`, `END`, `BOS`: the labels on this token.
    pub labels: Vec<String>,
}

/// A dataset inspected under a tokenizer: clean prompts, then reference prompts.
pub struct Inspection<'a> {
    pub prompts: Vec<Inspected<'a>>,
    /// Dataset-wide: which position names share a token, in how many clean prompts.
    pub alias_notes: Vec<AliasNote>,
}

impl Inspection<'_> {
    /// Problems over every prompt.
    pub fn n_errors(&self) -> usize {
        self.prompts.iter().map(|p| p.errors.len()).sum()
    }
}

/// Inspects every prompt of `dataset` under `tokenizer`.
pub fn inspect<'a>(dataset: &'a Dataset, tokenizer: &Tokenizer) -> Inspection<'a> {
    let prompts: Vec<Inspected> = dataset
        .clean
        .iter()
        .enumerate()
        .map(|(i, r)| inspect_record(PromptSet::Clean, i, r, tokenizer))
        .chain(
            dataset
                .reference
                .iter()
                .enumerate()
                .map(|(i, r)| inspect_record(PromptSet::Reference, i, r, tokenizer)),
        )
        .collect();
    let mut alias_counts: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    for p in prompts.iter().filter(|p| p.set == PromptSet::Clean) {
        for alias in &p.aliases {
            alias_counts
                .entry(alias.names.clone())
                .or_default()
                .push(p.index);
        }
    }
    let alias_notes = alias_counts
        .into_iter()
        .map(|(names, prompts)| AliasNote {
            names,
            prompts,
            of: dataset.clean.len(),
        })
        .collect();
    Inspection {
        prompts,
        alias_notes,
    }
}

/// Inspects one record; problems are collected in `errors`.
pub fn inspect_record<'a>(
    set: PromptSet,
    index: usize,
    record: &'a Record,
    tokenizer: &Tokenizer,
) -> Inspected<'a> {
    let id = prompt_id(set, index, record);
    let mut errors = Vec::new();
    let tokens = match tokenize_prompt(record, tokenizer, &id) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let warnings = match &tokens {
        Some(t) => {
            let words = unknown_words(tokenizer, &record.prompt, t);
            if words.is_empty() {
                Vec::new()
            } else {
                vec![format!(
                    "{id}: {words:?} not in the tokenizer's vocabulary: the model sees its unknown token there"
                )]
            }
        }
        None => Vec::new(),
    };
    // A reference prompt's answer is read by no setting: shown when given, never an error.
    let mut plain = |text: &Option<String>, what: &'static str| match text {
        None => {
            if set == PromptSet::Clean {
                errors.push(
                    DataError::MissingAnswer {
                        prompt: id.clone(),
                        what,
                    }
                    .to_string(),
                );
            }
            Vec::new()
        }
        Some(text) => match tokenizer.encode_plain(text) {
            Ok(ids) => {
                let checked = check_single_token(tokenizer, text, &ids, what, &id);
                if let (Err(e), PromptSet::Clean) = (checked, set) {
                    errors.push(e.to_string());
                }
                ids
            }
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        },
    };
    let answer_ids = plain(&record.answer, "answer");
    let distractor_ids = plain(&record.distractor, "distractor");
    let aliases = match &tokens {
        Some(t) => {
            // Aliases depend on positions only; the answer ids are not read (and may not be
            // single tokens here).
            let prompt = TokenizedPrompt {
                set,
                index,
                text: record.prompt.clone(),
                ids: t.ids.clone(),
                offsets: t.offsets.clone(),
                has_bos: t.has_bos,
                slots: t.slots.clone(),
                answer_id: None,
                distractor_id: None,
            };
            prompt
                .aliases(&prompt.standard_positions())
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    Inspected {
        set,
        index,
        record,
        tokens,
        answer_ids,
        distractor_ids,
        errors,
        warnings,
        aliases,
    }
}

impl Inspected<'_> {
    /// Every token with its slot and labels; `None` when the prompt did not tokenize.
    pub fn token_rows(&self, tokenizer: &Tokenizer) -> Option<Vec<TokenRow>> {
        let tokens = self.tokens.as_ref()?;
        let mut labels = labels_by_token(tokens);
        let slots = slots_of_prompt(tokens.ids.len(), &tokens.slots);
        Some(
            (tokens.ids.iter().zip(&tokens.offsets).zip(slots))
                .enumerate()
                .map(|(pos, ((&id, &bytes), slot))| TokenRow {
                    pos,
                    id,
                    text: token_text(tokenizer, id),
                    bytes,
                    slot,
                    labels: labels.remove(&pos).unwrap_or_default(),
                })
                .collect(),
        )
    }
}

/// Labels per token index: `S1`, `first(S1)`, `END`, `BOS`.
fn labels_by_token(tokens: &PromptTokens) -> BTreeMap<usize, Vec<String>> {
    let mut by_token: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    if tokens.has_bos {
        by_token.entry(0).or_default().push("BOS".into());
    }
    let mut slots: Vec<_> = tokens.slots.iter().collect();
    slots.sort_by_key(|(label, s)| (s.first, s.last, (*label).clone()));
    for (label, slot) in slots {
        if slot.first != slot.last {
            by_token
                .entry(slot.first)
                .or_default()
                .push(format!("first({label})"));
        }
        by_token.entry(slot.last).or_default().push(label.clone());
    }
    by_token
        .entry(tokens.ids.len() - 1)
        .or_default()
        .push("END".into());
    by_token
}
