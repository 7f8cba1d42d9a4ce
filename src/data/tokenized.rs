//! Prompts tokenized under a model's tokenizer, and the per-prompt resolution of positions
//! (labels, END, BOS, offsets, lists, ranges, `*`) to token indices through the token offsets.
//!
//! A slot's tokens are the tokens whose byte range overlaps the slot's byte span: its last token
//! is the one holding the slot's last byte, its first the one holding its first byte. Nothing is
//! ever found by searching token text.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{DataError, PromptId, PromptSet};
use super::positions::{Anchor, Position, PositionItem, PositionSet, SlotToken};
use super::record::{prompt_id, Dataset, Record};
use crate::model::Tokenizer;

/// The token indices a slot covers (inclusive; `first == last` for a one-token slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SlotTokens {
    pub first: usize,
    pub last: usize,
}

/// One prompt under a tokenizer, with every slot mapped to its tokens.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenizedPrompt {
    /// Set, index and text, for error messages.
    pub set: PromptSet,
    pub index: usize,
    pub text: String,
    pub ids: Vec<u32>,
    /// Byte range of the prompt each token came from; `(0, 0)` for an added BOS.
    pub offsets: Vec<(usize, usize)>,
    /// Whether token 0 is a BOS the tokenizer added.
    pub has_bos: bool,
    pub slots: BTreeMap<String, SlotTokens>,
    /// The answer's single token: always there on an evaluated (clean) prompt; on a reference
    /// prompt never read (and so neither required nor checked), `None`.
    pub answer_id: Option<u32>,
    /// The distractor's single token, as `answer_id`.
    pub distractor_id: Option<u32>,
}

/// Names that land on the same token of a prompt.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Alias {
    pub token: usize,
    /// Position names as [`Position::display_name`] writes them, in the order given.
    pub names: Vec<String>,
}

/// An alias across a dataset: the same names share a token in these prompts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AliasNote {
    pub names: Vec<String>,
    /// Indices of the prompts (of the set examined) in which they coincide.
    pub prompts: Vec<usize>,
    /// The number of prompts examined.
    pub of: usize,
}

impl std::fmt::Display for AliasNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} land on the same token in {} of {} prompts (e.g. prompt {}): a result attributed to one is the other's too",
            self.names.join(" and "),
            self.prompts.len(),
            self.of,
            self.prompts.first().copied().unwrap_or(0)
        )
    }
}

/// A whitespace marker token (`▁` of SentencePiece, `Ġ` of byte-level BPE, a space).
fn is_whitespace_piece(piece: &str) -> bool {
    !piece.is_empty()
        && piece
            .chars()
            .all(|c| c == '▁' || c == 'Ġ' || c.is_whitespace())
}

/// Tokens the tokenizer inserted that cover no text of the prompt although their offsets say
/// otherwise: SentencePiece-style tokenizers prepend a `▁` whose offsets point at the first
/// character. A whitespace piece mapped onto non-whitespace text is such a token.
fn is_inserted_token(tokenizer: &Tokenizer, id: u32, source: &str) -> bool {
    let piece = tokenizer.id_to_token(id).unwrap_or_default();
    is_whitespace_piece(&piece) && !source.chars().any(char::is_whitespace)
}

/// Each id as the text it decodes to alone, quoted, for messages.
pub fn describe_tokens(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let parts: Vec<String> = ids
        .iter()
        .map(|&id| format!("{:?} ({id})", token_text(tokenizer, id)))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// One token's text: the vocabulary piece decoded alone; byte pieces (`<0xC3>`) and pieces that
/// decode to nothing are shown raw.
///
/// An id the tokenizer has no piece for (a model whose embedding is padded past the
/// vocabulary can predict one) is shown as `<id N>`, never as an empty string.
pub fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    let Some(piece) = tokenizer.id_to_token(id) else {
        return format!("<id {id}>");
    };
    if piece.starts_with("<0x") && piece.ends_with('>') {
        return piece;
    }
    let decoded = tokenizer.decode(&[id]);
    if decoded.is_empty() || decoded.contains('\u{FFFD}') {
        piece.replace('▁', " ")
    } else if piece.starts_with('▁') && !decoded.starts_with(' ') {
        // SentencePiece decoders drop the space of a leading `▁`; keep it, as GPT-2's `Ġ` does.
        format!(" {decoded}")
    } else {
        decoded
    }
}

/// A token as an axis label (`circuit run --attention`): [`token_text`], except that a
/// SentencePiece word start keeps its `▁` marker, which a picture shows where text shows a
/// space.
pub fn token_label(tokenizer: &Tokenizer, id: u32) -> String {
    match tokenizer.id_to_token(id) {
        Some(piece) if piece.starts_with('\u{2581}') => piece,
        _ => token_text(tokenizer, id),
    }
}

/// The id of a single-token answer or distractor, or the error naming the tokens it became.
fn single_token(
    tokenizer: &Tokenizer,
    text: &str,
    what: &'static str,
    id: &PromptId,
) -> Result<u32, DataError> {
    let ids = tokenizer
        .encode_plain(text)
        .map_err(|source| DataError::Tokenize {
            prompt: id.clone(),
            source,
        })?;
    check_single_token(tokenizer, text, &ids, what, id)
}

/// The one rule for an answer or distractor's ids: a single token, and not the unknown token
/// (a word outside the vocabulary, whose logit is every unknown word's).
pub fn check_single_token(
    tokenizer: &Tokenizer,
    text: &str,
    ids: &[u32],
    what: &'static str,
    id: &PromptId,
) -> Result<u32, DataError> {
    match ids {
        [only] if Some(*only) == tokenizer.unknown_id() => Err(DataError::UnknownAnswer {
            prompt: id.clone(),
            what,
            text: text.to_string(),
            token: describe_tokens(tokenizer, ids),
        }),
        [only] => Ok(*only),
        _ => Err(DataError::MultiTokenAnswer {
            prompt: id.clone(),
            what,
            text: text.to_string(),
            count: ids.len(),
            tokens: describe_tokens(tokenizer, ids),
        }),
    }
}

/// The words of a prompt that became the unknown token (the text each such token covers).
pub fn unknown_words(tokenizer: &Tokenizer, text: &str, tokens: &PromptTokens) -> Vec<String> {
    let Some(unknown) = tokenizer.unknown_id() else {
        return Vec::new();
    };
    tokens
        .ids
        .iter()
        .zip(&tokens.offsets)
        .filter(|(&token, _)| token == unknown)
        .map(|(_, &(start, end))| text.get(start..end).unwrap_or("").to_string())
        .collect()
}

/// A note for the report when prompts hold words outside the vocabulary (they are evaluated,
/// but the model saw `[UNK]` there): how many, and the first such prompt with its words.
pub fn unknown_words_note(tokenizer: &Tokenizer, prompts: &[TokenizedPrompt]) -> Option<String> {
    let mut with_unknown = prompts.iter().filter_map(|p| {
        let tokens = PromptTokens {
            ids: p.ids.clone(),
            offsets: p.offsets.clone(),
            has_bos: p.has_bos,
            slots: p.slots.clone(),
        };
        let words = unknown_words(tokenizer, &p.text, &tokens);
        (!words.is_empty()).then(|| (prompt_id_of(p), words))
    });
    let (first, words) = with_unknown.next()?;
    let count = 1 + with_unknown.count();
    Some(format!(
        "{count} of {} prompts have words outside the tokenizer's vocabulary: the model sees its unknown token there (e.g. {first}: {words:?})",
        prompts.len()
    ))
}

fn prompt_id_of(p: &TokenizedPrompt) -> PromptId {
    PromptId {
        set: p.set,
        index: p.index,
        text: p.text.clone(),
    }
}

/// A prompt tokenized with its slots mapped to tokens, without the answer checks (what
/// `circuit dataset inspect` shows even when an answer is not a single token).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTokens {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
    pub has_bos: bool,
    pub slots: BTreeMap<String, SlotTokens>,
}

/// Tokenizes a record's prompt and maps every slot to its first and last token.
pub fn tokenize_prompt(
    record: &Record,
    tokenizer: &Tokenizer,
    id: &PromptId,
) -> Result<PromptTokens, DataError> {
    record.validate(id)?;
    let encoded = tokenizer
        .encode(&record.prompt)
        .map_err(|source| DataError::Tokenize {
            prompt: id.clone(),
            source,
        })?;
    if encoded.ids.len() <= usize::from(encoded.has_bos) {
        return Err(DataError::NoTokens { prompt: id.clone() });
    }
    // Offsets that cover prompt text; added or inserted tokens get none.
    let text_offsets: Vec<Option<(usize, usize)>> = encoded
        .ids
        .iter()
        .zip(&encoded.offsets)
        .enumerate()
        .map(|(i, (&token, &(start, end)))| {
            let added = i == 0 && encoded.has_bos;
            let source = record.prompt.get(start..end).unwrap_or("");
            if added || start >= end || is_inserted_token(tokenizer, token, source) {
                None
            } else {
                Some((start, end))
            }
        })
        .collect();
    let mut slots = BTreeMap::new();
    for (label, span) in &record.slots {
        let mut covering = text_offsets
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, Some((s, e)) if *s < span.end && *e > span.start))
            .map(|(i, _)| i);
        let first = covering
            .next()
            .ok_or_else(|| DataError::SlotWithoutTokens {
                prompt: id.clone(),
                label: label.clone(),
            })?;
        let last = covering.next_back().unwrap_or(first);
        slots.insert(label.clone(), SlotTokens { first, last });
    }
    Ok(PromptTokens {
        ids: encoded.ids,
        offsets: encoded.offsets,
        has_bos: encoded.has_bos,
        slots,
    })
}

/// Tokenizes clean prompt `index`: slots mapped to tokens, answer and distractor checked to be
/// single tokens. Errors name the prompt's index and text.
pub fn tokenize_record(
    record: &Record,
    tokenizer: &Tokenizer,
    index: usize,
) -> Result<TokenizedPrompt, DataError> {
    tokenize_record_in(record, tokenizer, PromptSet::Clean, index)
}

/// [`tokenize_record`] for a prompt of either set (errors then say "reference prompt"). A
/// reference prompt's answer and distractor are not read by any setting, so they are neither
/// required nor tokenized (`answer_id` is `None`).
pub fn tokenize_record_in(
    record: &Record,
    tokenizer: &Tokenizer,
    set: PromptSet,
    index: usize,
) -> Result<TokenizedPrompt, DataError> {
    let id = prompt_id(set, index, record);
    let tokens = tokenize_prompt(record, tokenizer, &id)?;
    let target = |text: &Option<String>, what: &'static str| match (set, text) {
        (PromptSet::Reference, _) => Ok(None),
        (PromptSet::Clean, Some(text)) => single_token(tokenizer, text, what, &id).map(Some),
        (PromptSet::Clean, None) => Err(DataError::MissingAnswer {
            prompt: id.clone(),
            what,
        }),
    };
    let answer_id = target(&record.answer, "answer")?;
    let distractor_id = target(&record.distractor, "distractor")?;
    Ok(TokenizedPrompt {
        set,
        index,
        text: record.prompt.clone(),
        ids: tokens.ids,
        offsets: tokens.offsets,
        has_bos: tokens.has_bos,
        slots: tokens.slots,
        answer_id,
        distractor_id,
    })
}

/// A dataset under a tokenizer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenizedDataset {
    pub clean: Vec<TokenizedPrompt>,
    pub reference: Vec<TokenizedPrompt>,
    pub paired: bool,
}

/// Tokenizes every clean and reference prompt of `dataset` (stopping at the first error).
pub fn tokenize_dataset(
    dataset: &Dataset,
    tokenizer: &Tokenizer,
) -> Result<TokenizedDataset, DataError> {
    let set = |records: &[Record], set| {
        records
            .iter()
            .enumerate()
            .map(|(i, r)| tokenize_record_in(r, tokenizer, set, i))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(TokenizedDataset {
        clean: set(&dataset.clean, PromptSet::Clean)?,
        reference: set(&dataset.reference, PromptSet::Reference)?,
        paired: dataset.paired,
    })
}

impl TokenizedPrompt {
    /// The (answer, distractor) tokens the metric reads; an error on a prompt without them (a
    /// reference prompt, whose answers are never tokenized).
    pub fn targets(&self) -> Result<(u32, u32), DataError> {
        let missing = |what| DataError::MissingAnswer {
            prompt: self.id(),
            what,
        };
        Ok((
            self.answer_id.ok_or_else(|| missing("answer"))?,
            self.distractor_id.ok_or_else(|| missing("distractor"))?,
        ))
    }

    pub fn id(&self) -> PromptId {
        PromptId {
            set: self.set,
            index: self.index,
            text: self.text.clone(),
        }
    }

    /// Number of tokens (BOS included).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Never true: a tokenized prompt has at least one text token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// END: the last token, where the next token is predicted.
    pub fn end(&self) -> usize {
        self.ids.len() - 1
    }

    /// The token an anchor names, before its offset.
    fn anchor_index(&self, anchor: &Anchor) -> Result<usize, DataError> {
        match anchor {
            Anchor::End => Ok(self.end()),
            Anchor::Bos if self.has_bos => Ok(0),
            Anchor::Bos => Err(DataError::NoBos { prompt: self.id() }),
            Anchor::Start => Ok(0),
            Anchor::Label { name, token } => {
                let slot = self
                    .slots
                    .get(name)
                    .ok_or_else(|| DataError::MissingLabel {
                        prompt: self.id(),
                        label: name.clone(),
                        available: self.label_list(),
                    })?;
                Ok(match token {
                    SlotToken::Last => slot.last,
                    SlotToken::First => slot.first,
                })
            }
        }
    }

    fn label_list(&self) -> String {
        let mut labels: Vec<(&usize, &String)> =
            self.slots.iter().map(|(l, s)| (&s.first, l)).collect();
        labels.sort();
        let names: Vec<&str> = labels.into_iter().map(|(_, l)| l.as_str()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// The token index of one position in this prompt.
    pub fn resolve_position(&self, position: &Position) -> Result<usize, DataError> {
        let base = self.anchor_index(&position.anchor)? as i64;
        let index = base + position.offset;
        if index < 0 || index >= self.len() as i64 {
            return Err(DataError::OutsidePrompt {
                prompt: self.id(),
                position: position.display_name(),
                index,
                len: self.len(),
                last: self.end(),
            });
        }
        Ok(index as usize)
    }

    /// The token indices of one list item (a range includes both ends).
    pub fn resolve_item(&self, item: &PositionItem) -> Result<BTreeSet<usize>, DataError> {
        match item {
            PositionItem::One(p) => Ok(BTreeSet::from([self.resolve_position(p)?])),
            PositionItem::Range(from, to) => {
                let (start, end) = (self.resolve_position(from)?, self.resolve_position(to)?);
                if start > end {
                    return Err(DataError::ReversedRange {
                        prompt: self.id(),
                        start_name: from.display_name(),
                        end_name: to.display_name(),
                        start,
                        end,
                    });
                }
                Ok((start..=end).collect())
            }
        }
    }

    /// The token indices a position set names in this prompt.
    pub fn resolve(&self, set: &PositionSet) -> Result<BTreeSet<usize>, DataError> {
        match set {
            PositionSet::All => Ok((0..self.len()).collect()),
            PositionSet::Items(items) => {
                let mut out = BTreeSet::new();
                for item in items {
                    out.extend(self.resolve_item(item)?);
                }
                Ok(out)
            }
        }
    }

    /// Groups of the given positions that land on one token here (each group has ≥ 2 names).
    pub fn aliases(&self, positions: &[Position]) -> Result<Vec<Alias>, DataError> {
        let mut by_token: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for p in positions {
            let name = p.display_name();
            let names = by_token.entry(self.resolve_position(p)?).or_default();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(by_token
            .into_iter()
            .filter(|(_, names)| names.len() > 1)
            .map(|(token, names)| Alias { token, names })
            .collect())
    }

    /// The positions every prompt has: END, BOS when added, and each slot's last token and,
    /// when the slot spans several tokens, its first.
    pub fn standard_positions(&self) -> Vec<Position> {
        let mut positions = Vec::new();
        let mut labels: Vec<(&SlotTokens, &String)> =
            self.slots.iter().map(|(l, s)| (s, l)).collect();
        labels.sort_by_key(|(s, l)| (s.first, s.last, (*l).clone()));
        for (slot, label) in labels {
            let at = |token| Position {
                anchor: Anchor::Label {
                    name: label.clone(),
                    token,
                },
                offset: 0,
            };
            if slot.first != slot.last {
                positions.push(at(SlotToken::First));
            }
            positions.push(at(SlotToken::Last));
        }
        positions.push(Position {
            anchor: Anchor::End,
            offset: 0,
        });
        if self.has_bos {
            positions.push(Position {
                anchor: Anchor::Bos,
                offset: 0,
            });
        }
        positions
    }
}

/// Across prompts: which of `positions` coincide, and in which prompts. Prompts where a position
/// does not resolve are skipped here (resolution reports them).
pub fn alias_notes(prompts: &[TokenizedPrompt], positions: &[Position]) -> Vec<AliasNote> {
    let mut pairs: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    for prompt in prompts {
        let Ok(aliases) = prompt.aliases(positions) else {
            continue;
        };
        for alias in aliases {
            pairs.entry(alias.names).or_default().push(prompt.index);
        }
    }
    pairs
        .into_iter()
        .map(|(names, prompts_hit)| AliasNote {
            names,
            prompts: prompts_hit,
            of: prompts.len(),
        })
        .collect()
}

/// How an ablation matches reference prompts to evaluated ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairing {
    /// Statistics pooled over every reference prompt (mean ablation).
    Pooled,
    /// Evaluated prompt `i` takes its values from reference prompt `i` (resample ablation):
    /// one-to-one, so the two sets must be equally large.
    OneToOne,
}

/// The one rule for reference prompts against evaluated ones, checked before any forward pass
/// (by [`check_reference`] on a file's prompts, and by the evaluator on the token ids it is
/// given). Pairs are one-to-one: their counts must be equal. By token position (`by_label`
/// false), pooled statistics need every prompt, evaluated or reference, as long as the first
/// evaluated one, and pairs need each pair equally long. Under `align by label` lengths may
/// differ (the slots are checked when the reference values are built). `name_evaluated` and
/// `name_reference` name a prompt by index for the message.
pub fn check_reference_lengths(
    pairing: Pairing,
    by_label: bool,
    evaluated: &[usize],
    reference: &[usize],
    name_evaluated: &dyn Fn(usize) -> String,
    name_reference: &dyn Fn(usize) -> String,
) -> Result<(), DataError> {
    let mismatch = |e: usize, e_len: usize, reference: String, r_len: usize| {
        Err(DataError::ReferenceLength {
            evaluated: name_evaluated(e),
            evaluated_len: e_len,
            reference,
            reference_len: r_len,
        })
    };
    match pairing {
        Pairing::Pooled if by_label => Ok(()),
        Pairing::Pooled => {
            let Some(&first) = evaluated.first() else {
                return Ok(());
            };
            if let Some((b, &len)) = evaluated.iter().enumerate().find(|(_, &l)| l != first) {
                return mismatch(0, first, name_evaluated(b), len);
            }
            if let Some((r, &len)) = reference.iter().enumerate().find(|(_, &l)| l != first) {
                return mismatch(0, first, name_reference(r), len);
            }
            Ok(())
        }
        Pairing::OneToOne if evaluated.len() != reference.len() => Err(DataError::ReferenceCount {
            clean: evaluated.len(),
            reference: reference.len(),
        }),
        Pairing::OneToOne if by_label => Ok(()),
        Pairing::OneToOne => {
            for (b, (&e, &r)) in evaluated.iter().zip(reference).enumerate() {
                if e != r {
                    return mismatch(b, e, name_reference(b), r);
                }
            }
            Ok(())
        }
    }
}

/// The one rule for reference prompts' labels under `align by label`: the first reference
/// prompt (its index) lacking a label every evaluated prompt has, and that label. Each prompt is
/// given as its slot labels.
pub fn reference_label_gap(
    evaluated: &[Vec<String>],
    reference: &[Vec<String>],
) -> Option<(usize, String)> {
    let first = evaluated.first()?;
    let common = first
        .iter()
        .filter(|label| evaluated.iter().all(|p| p.contains(label)));
    for label in common {
        if let Some(r) = reference.iter().position(|r| !r.contains(label)) {
            return Some((r, label.clone()));
        }
    }
    None
}

/// [`check_reference_lengths`] on tokenized prompts, naming them by their [`PromptId`]s; and
/// under `align by label` (`by_label`), which reads reference prompts' labels to match slots,
/// every reference prompt must carry every label all evaluated prompts carry (under `align by
/// position` no reference label is read, so none is required).
pub fn check_reference(
    pairing: Pairing,
    by_label: bool,
    evaluated: &[TokenizedPrompt],
    reference: &[TokenizedPrompt],
) -> Result<(), DataError> {
    if by_label {
        let labels = |p: &TokenizedPrompt| p.slots.keys().cloned().collect::<Vec<_>>();
        let evaluated_labels: Vec<Vec<String>> = evaluated.iter().map(labels).collect();
        let reference_labels: Vec<Vec<String>> = reference.iter().map(labels).collect();
        if let Some((r, label)) = reference_label_gap(&evaluated_labels, &reference_labels) {
            return Err(DataError::ReferenceLabel {
                prompt: reference[r].id(),
                label,
            });
        }
    }
    let lens =
        |prompts: &[TokenizedPrompt]| prompts.iter().map(TokenizedPrompt::len).collect::<Vec<_>>();
    check_reference_lengths(
        pairing,
        by_label,
        &lens(evaluated),
        &lens(reference),
        &|b| evaluated[b].id().to_string(),
        &|r| reference[r].id().to_string(),
    )
}

/// Mean ablation by token position needs every reference prompt as long as every evaluated one;
/// the error names both prompts, both lengths and the alternative (alignment by label).
pub fn check_equal_lengths(
    evaluated: &[TokenizedPrompt],
    reference: &[TokenizedPrompt],
) -> Result<(), DataError> {
    check_reference(Pairing::Pooled, false, evaluated, reference)
}

/// Resample ablation pairs prompt `i` with reference prompt `i`: as many reference prompts as
/// evaluated ones, each pair equally long.
pub fn check_paired_lengths(
    evaluated: &[TokenizedPrompt],
    reference: &[TokenizedPrompt],
) -> Result<(), DataError> {
    check_reference(Pairing::OneToOne, false, evaluated, reference)
}
