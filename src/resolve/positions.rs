//! Positions: labels checked against the dataset, offsets against the prompt's ends.

use super::binder::{backticked, Binder};
use super::diagnostics as code;
use crate::data::positions::{self as pos, PositionItem as BItem, PositionSet, SlotToken};
use crate::syntax::ast::{self};
use crate::syntax::SourceDiagnostic;
use crate::util::did_you_mean;

impl<'a> Binder<'a> {
    fn label(&mut self, name: &ast::Ident, first: bool) -> pos::Anchor {
        let unknown = match &self.labels {
            Some(labels) => !labels.iter().any(|l| l == &name.name),
            None => false,
        };
        if unknown {
            let help = self.unknown_label_help(&name.name);
            self.error(
                SourceDiagnostic::error(
                    code::UNKNOWN_LABEL,
                    format!("unknown position label `{}`", name.name),
                )
                .with_label(name.span.clone(), "not a label of the dataset")
                .with_help(help),
            );
        }
        pos::Anchor::Label {
            name: name.name.clone(),
            token: if first {
                SlotToken::First
            } else {
                SlotToken::Last
            },
        }
    }

    /// What the dataset does label (or why it labels nothing usable), a did-you-mean, and the
    /// anchors every prompt has: `END`, and `BOS` only when the tokenizer adds one.
    fn unknown_label_help(&mut self, word: &str) -> String {
        let labels = self.labels.clone().unwrap_or_default();
        let dataset = self
            .dataset_name
            .as_ref()
            .map(|n| format!("the dataset `{n}`"))
            .unwrap_or_else(|| "the default dataset".to_string());
        let partial = match &self.sources {
            Some((_, source)) => self.env.dataset_partial_labels(source),
            None => Vec::new(),
        };
        let mut help = String::new();
        if let Some(p) = partial.iter().find(|p| p.label == word) {
            help.push_str(&format!(
                "`{word}` is not in every prompt (it is missing from {}), so a circuit cannot use it; ",
                p.missing_from
            ));
        } else if let Some(s) = did_you_mean(word, labels.iter().map(|s| s.as_str())) {
            help.push_str(&format!("did you mean `{s}`? "));
        }
        if labels.is_empty() {
            help.push_str(&format!("{dataset} has no label that every prompt defines"));
            if let Some(p) = partial.first() {
                let names: Vec<String> = partial.iter().map(|p| p.label.clone()).collect();
                help.push_str(&format!(
                    " ({} only in some: `{}` is missing from {})",
                    backticked(&names),
                    p.label,
                    p.missing_from
                ));
            }
        } else {
            help.push_str(&format!("{dataset} labels {}", backticked(&labels)));
        }
        help.push_str(match self.adds_bos() {
            Some(true) => {
                "; `END` and `BOS` (this model's tokenizer adds one) are always available"
            }
            Some(false) => "; `END` is always available (this model's tokenizer adds no BOS)",
            None => "; `END` is always available, and `BOS` when the tokenizer adds one",
        });
        help
    }

    pub(super) fn position(&mut self, p: &ast::Position) -> pos::Position {
        let anchor = match &p.anchor {
            ast::Anchor::End => pos::Anchor::End,
            ast::Anchor::Bos => pos::Anchor::Bos,
            ast::Anchor::Label { name, first } => self.label(name, *first),
        };
        if matches!(p.anchor, ast::Anchor::End) && p.offset > 0 {
            self.error(
                SourceDiagnostic::error(
                    code::OFFSET_AFTER_END,
                    format!("`END+{}` is after the prompt's last token", p.offset),
                )
                .with_label(p.span.clone(), "outside every prompt")
                .with_help("END is the last token; use END-1, END-2, ... for earlier tokens"),
            );
        }
        if matches!(p.anchor, ast::Anchor::Bos) && self.adds_bos() == Some(false) {
            self.error(
                SourceDiagnostic::error(
                    code::NO_BOS,
                    "`BOS` names no token: this model's tokenizer adds no BOS token",
                )
                .with_label(p.span.clone(), "no BOS in any prompt")
                .with_help(
                    "keys from the prompt's first token on are `..S1` (or `*` for every key)",
                ),
            );
        }
        if matches!(p.anchor, ast::Anchor::Bos) && p.offset < 0 {
            self.error(
                SourceDiagnostic::error(
                    code::OFFSET_BEFORE_BOS,
                    format!("`BOS{}` is before the prompt's first token", p.offset),
                )
                .with_label(p.span.clone(), "outside every prompt")
                .with_help("BOS is position 0; use BOS, BOS+1, ... for later tokens"),
            );
        }
        pos::Position {
            anchor,
            offset: p.offset,
        }
    }

    pub(super) fn position_item(&mut self, item: &ast::PositionItem) -> BItem {
        match item {
            ast::PositionItem::One(p) => BItem::One(self.position(p)),
            ast::PositionItem::Range(a, b, _) => BItem::Range(self.position(a), self.position(b)),
            ast::PositionItem::UpTo(b, _) => {
                BItem::Range(pos::Position::at(pos::Anchor::Start), self.position(b))
            }
            ast::PositionItem::Every(_) => BItem::every_token(),
        }
    }

    pub(super) fn positions(&mut self, p: Option<&ast::Positions>) -> PositionSet {
        match p {
            None | Some(ast::Positions::All(_)) => PositionSet::All,
            Some(ast::Positions::Items(items, _)) => {
                PositionSet::Items(items.iter().map(|i| self.position_item(i)).collect())
            }
        }
    }
}
