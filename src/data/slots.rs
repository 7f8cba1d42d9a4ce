//! Slots: every token of a prompt named by an anchor label and an offset from it (`S1+2`,
//! `END`, `start+1`), so that prompts whose fillers tokenize to different lengths line up
//! token by token. `align by label` (src/ablate/align.rs) matches reference statistics by slot;
//! `circuit dataset inspect` shows each token's slot.

use std::collections::BTreeMap;
use std::fmt;

use super::tokenized::{SlotTokens, TokenizedPrompt};

/// The label name END has as an anchor.
pub const END_LABEL: &str = "END";

/// What a slot is measured from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotAnchor {
    /// The prompt's first token (BOS when there is one): for tokens before the first label.
    Start,
    /// A labelled token (a slot's last token, or END).
    Label(String),
}

/// A token position under label alignment: an anchor and a non-negative offset from it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub anchor: SlotAnchor,
    pub offset: usize,
}

impl fmt::Display for Slot {
    /// `S1`, `S1+2`, `END`, `start`, `start+3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.anchor {
            SlotAnchor::Start => write!(f, "start")?,
            SlotAnchor::Label(name) => write!(f, "{name}")?,
        }
        if self.offset > 0 {
            write!(f, "+{}", self.offset)?;
        }
        Ok(())
    }
}

/// Which of several labels on one token names it: END first, then by name (byte order).
fn tie_rank(name: &str) -> (bool, &str) {
    (name != END_LABEL, name)
}

/// The slot of every token of a tokenized prompt of `len` tokens, from its label map (each
/// label anchors at its slot's last token): what `align by label` and `circuit dataset inspect`
/// both use.
pub fn slots_of_prompt(len: usize, labels: &BTreeMap<String, SlotTokens>) -> Vec<Slot> {
    let anchors: Vec<(String, usize)> = labels
        .iter()
        .map(|(name, tokens)| (name.clone(), tokens.last))
        .collect();
    assign_slots(len, &anchors)
}

/// The slot of every token of a prompt of `len` tokens whose labels sit at the given token
/// indices (`(name, index)`, END excluded: it is added at `len − 1`). Labels at or beyond `len`
/// are ignored.
pub fn assign_slots(len: usize, labels: &[(String, usize)]) -> Vec<Slot> {
    // The name of the label that anchors each labelled token index.
    let mut anchor_at: BTreeMap<usize, &str> = BTreeMap::new();
    let end = len.checked_sub(1).map(|end| (END_LABEL, end));
    for (name, index) in labels
        .iter()
        .map(|(n, i)| (n.as_str(), *i))
        .chain(end)
        .filter(|(_, i)| *i < len)
    {
        let winner = anchor_at.entry(index).or_insert(name);
        if tie_rank(name) < tie_rank(winner) {
            *winner = name;
        }
    }
    let mut slots = Vec::with_capacity(len);
    let mut current = Slot {
        anchor: SlotAnchor::Start,
        offset: 0,
    };
    for t in 0..len {
        if let Some(name) = anchor_at.get(&t) {
            current = Slot {
                anchor: SlotAnchor::Label(name.to_string()),
                offset: 0,
            };
        } else if t > 0 {
            current.offset += 1;
        }
        slots.push(current.clone());
    }
    slots
}

/// One prompt's slots, with the name errors use for it.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptSlots {
    /// How errors name the prompt, e.g. `prompt 3 ("When Mary ...")`.
    pub name: String,
    /// The slot of each token, `(T,)`.
    pub slots: Vec<Slot>,
}

impl PromptSlots {
    /// See [`assign_slots`] for `labels`.
    pub fn new(name: impl Into<String>, len: usize, labels: &[(String, usize)]) -> PromptSlots {
        PromptSlots {
            name: name.into(),
            slots: assign_slots(len, labels),
        }
    }
}

/// A tokenized prompt's slots for `align by label`: every label anchors at the token it names
/// in a circuit (its slot's last token), END at the last token.
pub fn prompt_slots(prompt: &TokenizedPrompt) -> PromptSlots {
    PromptSlots {
        name: prompt.id().to_string(),
        slots: slots_of_prompt(prompt.len(), &prompt.slots),
    }
}
