//! Positions: labels checked against the dataset, offsets against the prompt's ends.

use super::binder::{backticked, Binder};
use super::diagnostics as code;
use crate::data::positions::{self as pos, PositionItem as BItem, PositionSet, SlotToken};
use crate::syntax::ast::{self};
use crate::syntax::SourceDiagnostic;
use crate::util::did_you_mean;

impl<'a> Binder<'a> {
    fn label(&mut self, name: &ast::Ident, first: bool) -> pos::Anchor {
        if let Some(labels) = &self.labels {
            if !labels.iter().any(|l| l == &name.name) {
                let known = backticked(labels);
                let dataset = self
                    .dataset_name
                    .as_ref()
                    .map(|n| format!("the dataset `{n}`"))
                    .unwrap_or_else(|| "the default dataset".to_string());
                let suggestion = did_you_mean(&name.name, labels.iter().map(|s| s.as_str()));
                let mut help = String::new();
                if let Some(s) = suggestion {
                    help.push_str(&format!("did you mean `{s}`? "));
                }
                help.push_str(&format!(
                    "{dataset} labels {known}; `END` and `BOS` are always available"
                ));
                self.error(
                    SourceDiagnostic::error(
                        code::UNKNOWN_LABEL,
                        format!("unknown position label `{}`", name.name),
                    )
                    .with_label(name.span.clone(), "not a label of the dataset")
                    .with_help(help),
                );
            }
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
