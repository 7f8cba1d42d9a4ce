//! Heads, MLPs and head groups: selectors expanded against the model's shape.

use std::collections::HashSet;

use super::binder::{Binder, GroupDef, NamedHead};
use super::bound::*;
use super::diagnostics as code;
use crate::syntax::ast::{self, Span};
use crate::syntax::SourceDiagnostic;
use crate::util::did_you_mean;

impl<'a> Binder<'a> {
    /// Expands a selector against `limit` entries; reports an out-of-range index.
    fn select(
        &mut self,
        sel: &ast::Selector,
        limit: Option<usize>,
        what: &dyn Fn(usize) -> SourceDiagnostic,
    ) -> Vec<usize> {
        match (sel, limit) {
            (ast::Selector::Index(i, _), Some(n)) if *i >= n => {
                self.error(what(*i));
                vec![]
            }
            (ast::Selector::Index(i, _), _) => vec![*i],
            (ast::Selector::Range(a, b, span), limit) => {
                if a > b {
                    self.error(
                        SourceDiagnostic::error(
                            code::EMPTY_RANGE,
                            format!("the range {a}..{b} is empty"),
                        )
                        .with_label(span.clone(), "start is after end")
                        .with_help(format!(
                            "ranges are inclusive and ascending: write {b}..{a}"
                        )),
                    );
                    return vec![];
                }
                match limit {
                    Some(n) if *b >= n => {
                        self.error(what(*b));
                        vec![]
                    }
                    Some(_) => (*a..=*b).collect(),
                    // Without the model's shape nothing can be bound (an error is already
                    // reported), and an unchecked range could be arbitrarily large.
                    None => vec![],
                }
            }
            (ast::Selector::All(_), Some(n)) => (0..n).collect(),
            (ast::Selector::All(_), None) => vec![],
        }
    }

    fn model_shape_help(&self) -> String {
        match &self.config {
            Some(c) => format!(
                "this model has {} layers × {} heads: heads 0.0 to {}.{}, MLPs 0 to {}",
                c.n_layers,
                c.n_heads,
                c.n_layers - 1,
                c.n_heads - 1,
                c.n_layers - 1
            ),
            None => String::new(),
        }
    }

    fn expand_spec(
        &mut self,
        layer: &ast::Selector,
        head: &ast::Selector,
        span: &Span,
    ) -> Vec<HeadId> {
        let (n_layers, n_heads) = match &self.config {
            Some(c) => (Some(c.n_layers), Some(c.n_heads)),
            None => (None, None),
        };
        let help = self.model_shape_help();
        let spec_text = &self.text[span.clone()];
        let layer_span = layer.span();
        let layers = self.select(layer, n_layers, &|i| {
            SourceDiagnostic::error(
                code::UNKNOWN_HEAD,
                format!("`{spec_text}`: layer {i} does not exist in this model"),
            )
            .with_label(
                layer_span.clone(),
                format!("valid layers are 0..{}", n_layers.unwrap_or(1) - 1),
            )
            .with_help(help.clone())
        });
        let head_span = head.span();
        let heads = self.select(head, n_heads, &|i| {
            SourceDiagnostic::error(
                code::UNKNOWN_HEAD,
                format!("`{spec_text}`: head {i} does not exist in this model"),
            )
            .with_label(
                head_span.clone(),
                format!("valid heads are 0..{}", n_heads.unwrap_or(1) - 1),
            )
            .with_help(help.clone())
        });
        let mut out = Vec::new();
        for &l in &layers {
            for &h in &heads {
                out.push(HeadId { layer: l, head: h });
            }
        }
        out
    }

    pub(super) fn collect_groups(&mut self, file: &'a ast::File) {
        for item in &file.items {
            if let ast::ItemKind::Group { name, heads } = &item.kind {
                if let Some(prev) = self.groups.get(&name.name) {
                    let prev_span = prev.name_span.clone();
                    self.error(
                        SourceDiagnostic::error(
                            code::DUPLICATE_GROUP,
                            format!("the group `{}` is defined twice", name.name),
                        )
                        .with_label(name.span.clone(), "defined again here")
                        .with_label(prev_span, "first defined here")
                        .with_help("rename one of them, or merge them: `heads NAME = A, B`"),
                    );
                    continue;
                }
                self.groups.insert(
                    name.name.clone(),
                    GroupDef {
                        atoms: heads,
                        name_span: name.span.clone(),
                        used: false,
                    },
                );
            }
        }
        // Expand every group once, so an error inside a group is reported once.
        let mut names: Vec<String> = self.groups.keys().cloned().collect();
        names.sort_by_key(|n| self.groups[n].name_span.start);
        for name in names {
            self.expand_group(&name);
        }
    }

    /// The heads of a group (cached), reporting cycles.
    fn expand_group(&mut self, name: &str) -> Vec<HeadId> {
        match self.group_cache.get(name) {
            Some(Some(heads)) => return heads.clone(),
            Some(None) => return vec![], // a cycle: reported where it closes
            None => {}
        }
        self.group_cache.insert(name.to_string(), None);
        let atoms = self.groups[name].atoms;
        let mut heads = Vec::new();
        for atom in atoms {
            match atom {
                ast::HeadsAtom::Spec { layer, head, span } => {
                    heads.extend(self.expand_spec(layer, head, span))
                }
                ast::HeadsAtom::Group(id) => {
                    if matches!(self.group_cache.get(&id.name), Some(None)) {
                        if let Some(g) = self.groups.get_mut(&id.name) {
                            g.used = true;
                        }
                        self.error(
                            SourceDiagnostic::error(
                                code::GROUP_CYCLE,
                                format!("the group `{}` contains itself through `{name}`", id.name),
                            )
                            .with_label(id.span.clone(), "refers back to a group being defined")
                            .with_help("a group may name other groups, but not in a cycle"),
                        );
                        continue;
                    }
                    heads.extend(self.group_ref(id));
                }
            }
        }
        // Keep the first occurrence of each head: groups of groups stay as small as the model.
        let mut seen = HashSet::new();
        heads.retain(|h| seen.insert(*h));
        self.group_cache
            .insert(name.to_string(), Some(heads.clone()));
        heads
    }

    fn group_ref(&mut self, id: &ast::Ident) -> Vec<HeadId> {
        match self.groups.get_mut(&id.name) {
            Some(g) => {
                g.used = true;
                self.expand_group(&id.name)
            }
            None => {
                let names: Vec<String> = self.groups.keys().cloned().collect();
                let mut d = SourceDiagnostic::error(
                    code::UNKNOWN_GROUP,
                    format!("no head group named `{}`", id.name),
                )
                .with_label(id.span.clone(), "not defined in this file");
                d = match did_you_mean(&id.name, names.iter().map(|s| s.as_str())) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!(
                        "define it with `heads {} = 9.1, 9.6`, or name heads directly as LAYER.HEAD",
                        id.name
                    )),
                };
                self.error(d);
                vec![]
            }
        }
    }

    pub(super) fn expand_atom(&mut self, atom: &ast::HeadsAtom) -> Vec<NamedHead> {
        let span = atom.span();
        let heads = match atom {
            ast::HeadsAtom::Spec { layer, head, span } => self.expand_spec(layer, head, span),
            ast::HeadsAtom::Group(id) => self.group_ref(id),
        };
        heads.into_iter().map(|h| (h, span.clone())).collect()
    }

    pub(super) fn expand_layers(&mut self, sel: &ast::Selector) -> Vec<usize> {
        let n_layers = self.config.as_ref().map(|c| c.n_layers);
        let help = self.model_shape_help();
        let span = sel.span();
        self.select(sel, n_layers, &|i| {
            SourceDiagnostic::error(
                code::UNKNOWN_MLP,
                format!("MLP {i} does not exist in this model"),
            )
            .with_label(
                span.clone(),
                format!("valid MLP layers are 0..{}", n_layers.unwrap_or(1) - 1),
            )
            .with_help(help.clone())
        })
    }

    pub(super) fn expand_component(&mut self, c: &ast::Component) -> Vec<(Upstream, Span)> {
        match c {
            ast::Component::Heads(atom) => self
                .expand_atom(atom)
                .into_iter()
                .map(|(h, s)| (Upstream::Head(h), s))
                .collect(),
            ast::Component::Mlp(sel, span) => self
                .expand_layers(sel)
                .into_iter()
                .map(|l| (Upstream::Mlp(l), span.clone()))
                .collect(),
            ast::Component::Embed(span) => vec![(Upstream::Embed, span.clone())],
        }
    }

    pub(super) fn warn_unused_groups(&mut self) {
        let mut unused: Vec<(String, Span)> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.used)
            .map(|(n, g)| (n.clone(), g.name_span.clone()))
            .collect();
        unused.sort_by_key(|u| u.1.start);
        for (name, span) in unused {
            self.error(
                SourceDiagnostic::warning(
                    code::UNUSED_GROUP,
                    format!("the head group `{name}` is never used"),
                )
                .with_label(span, "defined here")
                .with_help("use it in a circuit (`NAME @ END`) or delete it"),
            );
        }
    }
}
