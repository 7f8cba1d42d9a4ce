// A test fixture, not production code: prompts whose labels sit at fixed token indices, for
// tests and benches that evaluate without a tokenizer. Used as a module by the integration
// tests and benches (`#[path] mod`) and included by the library's unit tests (src/plan/tests.rs,
// which alias the crate as `circuit`), hence plain comments here.

use std::collections::{BTreeMap, BTreeSet};

use circuit::data::positions::{Anchor, Position, PositionItem, PositionSet};
use circuit::plan::PromptPositions;

/// A prompt whose labels sit at fixed token indices: for fixtures and tests, where no
/// tokenizer is involved. A label names one token (first and last token coincide).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedPositions {
    pub len: usize,
    pub has_bos: bool,
    pub labels: BTreeMap<String, usize>,
    pub name: String,
}

impl FixedPositions {
    fn position(&self, position: &Position) -> miette::Result<usize> {
        let anchor = match &position.anchor {
            Anchor::End => self.len as i64 - 1,
            Anchor::Bos if self.has_bos => 0,
            Anchor::Bos => miette::bail!("{} has no BOS token", self.name),
            Anchor::Start => 0,
            Anchor::Label { name, .. } => match self.labels.get(name) {
                Some(&i) => i as i64,
                None => miette::bail!("label {name} is missing from {}", self.name),
            },
        };
        let at = anchor + position.offset;
        if at < 0 || at >= self.len as i64 {
            miette::bail!(
                "position {at} (offset {:+}) is outside {}, which has {} tokens",
                position.offset,
                self.name,
                self.len
            );
        }
        Ok(at as usize)
    }
}

impl PromptPositions for FixedPositions {
    fn token_count(&self) -> usize {
        self.len
    }

    fn resolve_positions(&self, set: &PositionSet) -> miette::Result<BTreeSet<usize>> {
        match set {
            PositionSet::All => Ok((0..self.len).collect()),
            PositionSet::Items(items) => {
                let mut out = BTreeSet::new();
                for item in items {
                    match item {
                        PositionItem::One(p) => {
                            out.insert(self.position(p)?);
                        }
                        PositionItem::Range(a, b) => {
                            out.extend(self.position(a)?..=self.position(b)?);
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
