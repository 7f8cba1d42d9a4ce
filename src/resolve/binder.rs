//! The resolver proper: AST + environment → [`BoundFile`], collecting every diagnostic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::bound::*;
use super::{Environment, ResolveOptions};
use crate::data::positions::{self as pos, PositionItem as BItem, PositionSet, SlotToken};
use crate::data::{DatasetSource, ParamValue};
use crate::model::{HeadInput, ModelConfig, ModelSource};
use crate::syntax::ast::{self, Span};
use crate::syntax::format;
use crate::syntax::{Diagnostics, SourceDiagnostic, SourceFile};

/// Names an expectation may use for the current circuit's (or a named circuit's) results.
const QUANTITY_NAMES: [&str; 7] = [
    "faithfulness",
    "ratio",
    "logit_diff",
    "prob",
    "logprob",
    "kl",
    "accuracy",
];

pub(super) fn bind(
    file: &ast::File,
    source: &SourceFile,
    base_dir: &Path,
    env: &dyn Environment,
    options: &ResolveOptions,
) -> (Option<BoundFile>, Diagnostics) {
    let mut binder = Binder {
        text: &source.text,
        diags: Diagnostics::new(),
        config: None,
        labels: None,
        dataset_name: None,
        groups: HashMap::new(),
        group_cache: HashMap::new(),
        circuit_names: HashMap::new(),
    };
    let settings = binder.settings(file, base_dir, env, options);
    binder.collect_groups(file);
    let circuits = binder.circuits(file);
    binder.warn_unused_groups();
    let bound = settings.map(|settings| BoundFile { settings, circuits });
    (bound, binder.diags)
}

struct GroupDef<'a> {
    atoms: &'a [ast::HeadsAtom],
    name_span: Span,
    used: bool,
}

/// A head as expanded from the text, with the span that named it.
type NamedHead = (HeadId, Span);

struct Binder<'a> {
    text: &'a str,
    diags: Diagnostics,
    /// `None` when the model's config could not be read (then heads are not range-checked).
    config: Option<ModelConfig>,
    /// `None` when the dataset's labels are unknown (then labels are not checked).
    labels: Option<Vec<String>>,
    dataset_name: Option<String>,
    groups: HashMap<String, GroupDef<'a>>,
    /// Expanded groups (`None` while being expanded, to detect cycles).
    group_cache: HashMap<String, Option<Vec<HeadId>>>,
    /// Circuit name → index in file order.
    circuit_names: HashMap<String, usize>,
}

/// The candidate closest to `word`, if any is close: one edit away, or similar by
/// Jaro-Winkler. Ties go to the candidate whose trailing number is nearest (`S5` → `S4`).
fn did_you_mean<'n>(word: &str, candidates: impl IntoIterator<Item = &'n str>) -> Option<String> {
    fn trailing_number(s: &str) -> Option<i64> {
        let digits: String = s.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
        digits.chars().rev().collect::<String>().parse().ok()
    }
    let target = trailing_number(word);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| {
            let distance = strsim::levenshtein(word, c);
            let similarity = strsim::jaro_winkler(word, c);
            let number_gap = match (target, trailing_number(c)) {
                (Some(a), Some(b)) => (a - b).unsigned_abs(),
                _ => u64::MAX,
            };
            (distance, similarity, number_gap, c)
        })
        .filter(|(distance, similarity, _, _)| *distance <= 1 || *similarity >= 0.8)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)))
        .map(|(_, _, _, c)| c.to_string())
}

fn backticked(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// State of a circuit while its statements are applied.
#[derive(Clone, Default)]
struct CircuitState {
    heads: BTreeMap<HeadId, PositionSet>,
    mlps: BTreeMap<usize, PositionSet>,
    qk_edges: Vec<QkEdge>,
    path_edges: Vec<PathEdge>,
}

impl<'a> Binder<'a> {
    fn error(&mut self, d: SourceDiagnostic) {
        self.diags.push(d);
    }

    // ---------------------------------------------------------------------------------------
    // Settings

    fn settings(
        &mut self,
        file: &'a ast::File,
        base_dir: &Path,
        env: &dyn Environment,
        options: &ResolveOptions,
    ) -> Option<Settings> {
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut model: Option<(ModelSource, Span)> = None;
        let mut datasets: Vec<(String, DatasetSource, Span, Span)> = Vec::new();
        let mut reference: Option<(&ast::Ident, Option<ast::ReferencePart>, Span)> = None;
        let mut ablation = AblationKind::Mean;
        let mut scope = Scope::Heads;
        let mut edge_ablation = EdgeAblation::EdgeMean;
        let mut metric = Metric::LogitDiff;
        let mut alignment = Alignment::Position;

        for item in &file.items {
            let key = match &item.kind {
                ast::ItemKind::Model(_) => "model",
                ast::ItemKind::Reference { .. } => "reference",
                ast::ItemKind::AblateNodes { .. } => "ablate heads",
                ast::ItemKind::AblateEdges { .. } => "ablate edges",
                ast::ItemKind::Metric(_) => "metric",
                ast::ItemKind::Align(_) => "align",
                _ => "",
            };
            if !key.is_empty() {
                if let Some(first) = seen.get(key) {
                    self.error(
                        SourceDiagnostic::error(
                            "circuit::resolve::duplicate_setting",
                            format!("`{key}` is set twice"),
                        )
                        .with_label(item.span.clone(), "set again here")
                        .with_label(first.clone(), "first set here")
                        .with_help("a setting holds for the whole file; keep one of them"),
                    );
                    continue;
                }
                seen.insert(key, item.span.clone());
            }
            match &item.kind {
                ast::ItemKind::Model(s) => {
                    model = Some((ModelSource::parse(&s.value, base_dir), item.span.clone()))
                }
                ast::ItemKind::Dataset { name, source } => {
                    if let Some(prev) = datasets.iter().find(|d| d.0 == name.name) {
                        let prev_span = prev.2.clone();
                        self.error(
                            SourceDiagnostic::error(
                                "circuit::resolve::duplicate_dataset",
                                format!("the dataset `{}` is defined twice", name.name),
                            )
                            .with_label(name.span.clone(), "defined again here")
                            .with_label(prev_span, "first defined here")
                            .with_help("give each dataset its own name"),
                        );
                        continue;
                    }
                    let src = self.dataset_source(source, base_dir);
                    datasets.push((name.name.clone(), src, name.span.clone(), item.span.clone()));
                }
                ast::ItemKind::Reference {
                    dataset,
                    part,
                    span,
                } => reference = Some((dataset, *part, span.clone())),
                ast::ItemKind::AblateNodes {
                    scope: s,
                    method: m,
                } => {
                    scope = match s {
                        ast::ScopeKw::Heads => Scope::Heads,
                        ast::ScopeKw::HeadsAndMlps => Scope::HeadsAndMlps,
                    };
                    ablation = match m {
                        ast::NodeMethod::Mean => AblationKind::Mean,
                        ast::NodeMethod::Zero => AblationKind::Zero,
                        ast::NodeMethod::Resample => AblationKind::Resample,
                    };
                }
                ast::ItemKind::AblateEdges { method } => {
                    edge_ablation = match method {
                        ast::EdgeMethod::Mean => EdgeAblation::EdgeMean,
                        ast::EdgeMethod::Knockout => EdgeAblation::Knockout,
                    }
                }
                ast::ItemKind::Metric(m) => metric = bind_metric(*m),
                ast::ItemKind::Align(a) => {
                    alignment = match a {
                        ast::AlignMode::Position => Alignment::Position,
                        ast::AlignMode::Label => Alignment::Label,
                    }
                }
                ast::ItemKind::Group { .. } | ast::ItemKind::Circuit(_) => {}
            }
        }

        // The model: --model wins over the file's setting; the built-in default otherwise.
        let (model_source, model_span, overridden) = match (&options.model_override, model) {
            (Some(m), _) => (m.clone(), None, true),
            (None, Some((m, span))) => (m, Some(span), false),
            (None, None) => (ModelSource::default_model(), None, false),
        };
        match env.model_config(&model_source) {
            Ok(config) => self.config = Some(config),
            Err(message) => {
                let mut d = SourceDiagnostic::error(
                    "circuit::resolve::model",
                    format!(
                        "cannot read the config of model `{}`: {message}",
                        model_source.display_name()
                    ),
                );
                d = match (&model_span, overridden) {
                    (_, true) => d.with_help("check the folder given to --model (it must hold config.json)"),
                    (Some(span), false) => d.with_label(span.clone(), "this model").with_help(
                        "`model` takes a built-in model's name or a HuggingFace folder (with config.json), relative to this file; `circuit check --model DIR` overrides it",
                    ),
                    (None, false) => d.with_help(
                        "the file names no model, so the built-in default is used; add `model \"DIR\"` or pass --model DIR",
                    ),
                };
                self.error(d);
            }
        }

        // The evaluated dataset is the first one declared.
        let evaluated = match datasets.first() {
            Some((name, src, _, item_span)) => {
                self.dataset_name = Some(name.clone());
                (src.clone(), Some(item_span.clone()))
            }
            None => (
                DatasetSource::Builtin {
                    name: "seqcont.numerals".to_string(),
                    params: BTreeMap::new(),
                },
                None,
            ),
        };
        match env.dataset_labels(&evaluated.0) {
            Ok(labels) => self.labels = Some(labels),
            Err(message) => {
                let mut d = SourceDiagnostic::error(
                    "circuit::resolve::dataset",
                    format!("cannot read the dataset's labels: {message}"),
                );
                if let Some(span) = evaluated.1.clone() {
                    d = d.with_label(span, "this dataset");
                }
                d = d.with_help(
                    "`circuit dataset --list` lists the built-in datasets; a JSONL path is relative to this file",
                );
                self.error(d);
            }
        }

        let mut reference_set = ReferenceSet::Corrupt;
        let mut used_datasets: HashSet<String> =
            datasets.first().map(|d| d.0.clone()).into_iter().collect();
        if let Some((ident, part, span)) = reference {
            match datasets.iter().position(|d| d.0 == ident.name) {
                None => {
                    let names: Vec<String> = datasets.iter().map(|d| d.0.clone()).collect();
                    let mut d = SourceDiagnostic::error(
                        "circuit::resolve::unknown_dataset",
                        format!("no dataset named `{}`", ident.name),
                    )
                    .with_label(ident.span.clone(), "not defined in this file");
                    d = match did_you_mean(&ident.name, names.iter().map(|s| s.as_str())) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None if names.is_empty() => d.with_help(
                            "define it first: `dataset NAME = seqcont.numerals(n = 64)`",
                        ),
                        None => {
                            d.with_help(format!("datasets defined here: {}", backticked(&names)))
                        }
                    };
                    self.error(d);
                }
                Some(0) => {
                    reference_set = match part {
                        Some(ast::ReferencePart::Corrupt) => ReferenceSet::Corrupt,
                        _ => ReferenceSet::Clean,
                    }
                }
                Some(i) => {
                    used_datasets.insert(datasets[i].0.clone());
                    match part {
                        Some(ast::ReferencePart::Corrupt) => self.error(
                            SourceDiagnostic::error(
                                "circuit::resolve::reference",
                                format!(
                                    "the reference prompts of `{}` cannot be used: it is not the evaluated dataset",
                                    ident.name
                                ),
                            )
                            .with_label(span, "another dataset's reference prompts")
                            .with_help(format!(
                                "write `reference {}` to take means over its prompts",
                                ident.name
                            )),
                        ),
                        _ => reference_set = ReferenceSet::Dataset(datasets[i].1.clone()),
                    }
                }
            }
        }
        for (name, _, name_span, _) in &datasets {
            if !used_datasets.contains(name) {
                self.error(
                    SourceDiagnostic::warning(
                        "circuit::resolve::unused_dataset",
                        format!("the dataset `{name}` is never used"),
                    )
                    .with_label(name_span.clone(), "defined here")
                    .with_help(format!(
                        "circuits are evaluated on the first dataset defined; a second one serves only as `reference {name}`"
                    )),
                );
            }
        }

        Some(Settings {
            model: model_source,
            dataset: evaluated.0,
            reference: reference_set,
            ablation,
            edge_ablation,
            scope,
            metric,
            alignment,
        })
    }

    fn dataset_source(&mut self, expr: &ast::DatasetExpr, base_dir: &Path) -> DatasetSource {
        match expr {
            ast::DatasetExpr::File(s) => DatasetSource::File(base_dir.join(&s.value)),
            ast::DatasetExpr::Generator { name, params } => {
                let mut map = BTreeMap::new();
                for p in params {
                    let value = match &p.value {
                        ast::Literal::Str(s) => ParamValue::Str(s.clone()),
                        ast::Literal::Bool(b) => ParamValue::Bool(*b),
                        ast::Literal::Number(n) => match n.parse::<i64>() {
                            Ok(i) => ParamValue::Int(i),
                            Err(_) => ParamValue::Float(n.parse().unwrap_or(f64::NAN)),
                        },
                    };
                    if map.insert(p.key.name.clone(), value).is_some() {
                        self.error(
                            SourceDiagnostic::error(
                                "circuit::resolve::duplicate_param",
                                format!("the parameter `{}` is given twice", p.key.name),
                            )
                            .with_label(p.span.clone(), "given again here")
                            .with_help("give each parameter once"),
                        );
                    }
                }
                DatasetSource::Builtin {
                    name: name.name.clone(),
                    params: map,
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Heads, MLPs, groups

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
                            "circuit::resolve::empty_range",
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
                "circuit::resolve::unknown_head",
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
                "circuit::resolve::unknown_head",
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

    fn collect_groups(&mut self, file: &'a ast::File) {
        for item in &file.items {
            if let ast::ItemKind::Group { name, heads } = &item.kind {
                if let Some(prev) = self.groups.get(&name.name) {
                    let prev_span = prev.name_span.clone();
                    self.error(
                        SourceDiagnostic::error(
                            "circuit::resolve::duplicate_group",
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
                                "circuit::resolve::group_cycle",
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
                    "circuit::resolve::unknown_group",
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

    fn expand_atom(&mut self, atom: &ast::HeadsAtom) -> Vec<NamedHead> {
        let span = atom.span();
        let heads = match atom {
            ast::HeadsAtom::Spec { layer, head, span } => self.expand_spec(layer, head, span),
            ast::HeadsAtom::Group(id) => self.group_ref(id),
        };
        heads.into_iter().map(|h| (h, span.clone())).collect()
    }

    fn expand_layers(&mut self, sel: &ast::Selector) -> Vec<usize> {
        let n_layers = self.config.as_ref().map(|c| c.n_layers);
        let help = self.model_shape_help();
        let span = sel.span();
        self.select(sel, n_layers, &|i| {
            SourceDiagnostic::error(
                "circuit::resolve::unknown_mlp",
                format!("MLP {i} does not exist in this model"),
            )
            .with_label(
                span.clone(),
                format!("valid MLP layers are 0..{}", n_layers.unwrap_or(1) - 1),
            )
            .with_help(help.clone())
        })
    }

    fn expand_component(&mut self, c: &ast::Component) -> Vec<(Upstream, Span)> {
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
        }
    }

    fn warn_unused_groups(&mut self) {
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
                    "circuit::resolve::unused_group",
                    format!("the head group `{name}` is never used"),
                )
                .with_label(span, "defined here")
                .with_help("use it in a circuit (`NAME @ END`) or delete it"),
            );
        }
    }

    // ---------------------------------------------------------------------------------------
    // Positions

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
                        "circuit::resolve::unknown_label",
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

    fn position(&mut self, p: &ast::Position) -> pos::Position {
        let anchor = match &p.anchor {
            ast::Anchor::End => pos::Anchor::End,
            ast::Anchor::Bos => pos::Anchor::Bos,
            ast::Anchor::Label { name, first } => self.label(name, *first),
        };
        if matches!(p.anchor, ast::Anchor::End) && p.offset > 0 {
            self.error(
                SourceDiagnostic::error(
                    "circuit::resolve::offset_after_end",
                    format!("`END+{}` is after the prompt's last token", p.offset),
                )
                .with_label(p.span.clone(), "outside every prompt")
                .with_help("END is the last token; use END-1, END-2, ... for earlier tokens"),
            );
        }
        if matches!(p.anchor, ast::Anchor::Bos) && p.offset < 0 {
            self.error(
                SourceDiagnostic::error(
                    "circuit::resolve::offset_before_bos",
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

    fn position_item(&mut self, item: &ast::PositionItem) -> BItem {
        match item {
            ast::PositionItem::One(p) => BItem::One(self.position(p)),
            ast::PositionItem::Range(a, b, _) => BItem::Range(self.position(a), self.position(b)),
        }
    }

    fn positions(&mut self, p: Option<&ast::Positions>) -> PositionSet {
        match p {
            None | Some(ast::Positions::All(_)) => PositionSet::All,
            Some(ast::Positions::Items(items, _)) => {
                PositionSet::Items(items.iter().map(|i| self.position_item(i)).collect())
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Circuits

    fn circuits(&mut self, file: &'a ast::File) -> Vec<BoundCircuit> {
        let mut defs: Vec<(&ast::Circuit, Span)> = Vec::new();
        for item in &file.items {
            if let ast::ItemKind::Circuit(c) = &item.kind {
                if c.name.name == "full" || c.name.name == "empty" {
                    self.error(
                        SourceDiagnostic::error(
                            "circuit::resolve::reserved_name",
                            format!("`{}` cannot name a circuit", c.name.name),
                        )
                        .with_label(c.name.span.clone(), "reserved")
                        .with_help("`full` and `empty` name the full model and the empty circuit in expectations (`full.logit_diff`); choose another name"),
                    );
                }
                if let Some(&prev) = self.circuit_names.get(&c.name.name) {
                    let prev_span = defs[prev].0.name.span.clone();
                    self.error(
                        SourceDiagnostic::error(
                            "circuit::resolve::duplicate_circuit",
                            format!("the circuit `{}` is defined twice", c.name.name),
                        )
                        .with_label(c.name.span.clone(), "defined again here")
                        .with_label(prev_span, "first defined here")
                        .with_help("circuit names must be unique in a file; a variant can be `circuit NEW extends OLD`"),
                    );
                } else {
                    self.circuit_names.insert(c.name.name.clone(), defs.len());
                }
                defs.push((c, item.span.clone()));
            }
        }
        let mut states: Vec<Option<Option<CircuitState>>> = vec![None; defs.len()];
        let mut out = Vec::new();
        for i in 0..defs.len() {
            let mut stack = Vec::new();
            let state = self.circuit_state(i, &defs, &mut states, &mut stack);
            let (circuit, span) = &defs[i];
            let expectations = circuit
                .body
                .iter()
                .filter_map(|st| match &st.kind {
                    ast::StatementKind::Expect {
                        lhs,
                        comparison,
                        rhs,
                    } => Some(self.expectation(lhs, *comparison, rhs, st.span.clone())),
                    _ => None,
                })
                .collect::<Vec<_>>();
            let state = state.unwrap_or_default();
            out.push(BoundCircuit {
                name: circuit.name.name.clone(),
                heads: state.heads,
                mlps: state.mlps,
                qk_edges: state.qk_edges,
                path_edges: state.path_edges,
                expectations: expectations.into_iter().flatten().collect(),
                span: span.clone(),
            });
        }
        out
    }

    /// The heads, MLPs and edges of circuit `i`, following `extends` (memoized; `stack`
    /// holds the circuits being built, to report cycles).
    fn circuit_state(
        &mut self,
        i: usize,
        defs: &[(&'a ast::Circuit, Span)],
        states: &mut Vec<Option<Option<CircuitState>>>,
        stack: &mut Vec<usize>,
    ) -> Option<CircuitState> {
        if let Some(done) = &states[i] {
            return done.clone();
        }
        let circuit = defs[i].0;
        stack.push(i);
        let mut state = CircuitState::default();
        if let Some(base) = &circuit.base {
            match self.circuit_names.get(&base.name).copied() {
                None => {
                    let mut names: Vec<String> = Vec::new();
                    for def in defs {
                        if !names.contains(&def.0.name.name) {
                            names.push(def.0.name.name.clone());
                        }
                    }
                    let mut d = SourceDiagnostic::error(
                        "circuit::resolve::unknown_circuit",
                        format!("no circuit named `{}`", base.name),
                    )
                    .with_label(base.span.clone(), "extends an undefined circuit");
                    d = match did_you_mean(&base.name, names.iter().map(|s| s.as_str())) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d.with_help(format!(
                            "a circuit can extend any circuit of the same file: {}",
                            backticked(&names)
                        )),
                    };
                    self.error(d);
                }
                Some(b) if stack.contains(&b) => {
                    let from = stack.iter().position(|&x| x == b).unwrap_or(0);
                    let cycle: Vec<String> = stack[from..]
                        .iter()
                        .chain(std::iter::once(&b))
                        .map(|&x| defs[x].0.name.name.clone())
                        .collect();
                    self.error(
                        SourceDiagnostic::error(
                            "circuit::resolve::extends_cycle",
                            format!("`extends` forms a cycle: {}", cycle.join(" → ")),
                        )
                        .with_label(base.span.clone(), "closes the cycle")
                        .with_help("a circuit cannot extend itself, directly or through others"),
                    );
                }
                Some(b) => {
                    if let Some(base_state) = self.circuit_state(b, defs, states, stack) {
                        state = base_state;
                    }
                }
            }
        }
        self.apply_statements(circuit, &mut state);
        stack.pop();
        states[i] = Some(Some(state.clone()));
        Some(state)
    }

    fn apply_statements(&mut self, circuit: &ast::Circuit, state: &mut CircuitState) {
        // Heads and MLPs named in this circuit (first span), for overrides and the
        // listed-twice warning.
        let mut named_heads: HashMap<HeadId, Span> = HashMap::new();
        let mut named_mlps: HashMap<usize, Span> = HashMap::new();
        let mut own_edges: Vec<(QkEdge, Span)> = Vec::new();
        for st in &circuit.body {
            match &st.kind {
                ast::StatementKind::HeadNode { heads, positions } => {
                    let set = self.positions(positions.as_ref());
                    let expanded: Vec<NamedHead> =
                        heads.iter().flat_map(|a| self.expand_atom(a)).collect();
                    for (head, span) in expanded {
                        if let Some(first) = named_heads.get(&head) {
                            let first = first.clone();
                            self.error(
                                SourceDiagnostic::warning(
                                    "circuit::resolve::duplicate_head",
                                    format!("head {head} is listed twice in circuit `{}`", circuit.name.name),
                                )
                                .with_label(span.clone(), format!("{head} again"))
                                .with_label(first, "first listed here")
                                .with_help("its positions are the union of both; list each head once to make that explicit"),
                            );
                            let merged = union(state.heads.get(&head), &set);
                            state.heads.insert(head, merged);
                        } else {
                            named_heads.insert(head, span);
                            state.heads.insert(head, set.clone());
                        }
                    }
                }
                ast::StatementKind::MlpNode { layers, positions } => {
                    let set = self.positions(positions.as_ref());
                    for sel in layers {
                        for layer in self.expand_layers(sel) {
                            if let Some(first) = named_mlps.get(&layer) {
                                let first = first.clone();
                                self.error(
                                    SourceDiagnostic::warning(
                                        "circuit::resolve::duplicate_mlp",
                                        format!(
                                            "MLP {layer} is listed twice in circuit `{}`",
                                            circuit.name.name
                                        ),
                                    )
                                    .with_label(sel.span(), format!("MLP {layer} again"))
                                    .with_label(first, "first listed here")
                                    .with_help("its positions are the union of both"),
                                );
                                let merged = union(state.mlps.get(&layer), &set);
                                state.mlps.insert(layer, merged);
                            } else {
                                named_mlps.insert(layer, sel.span());
                                state.mlps.insert(layer, set.clone());
                            }
                        }
                    }
                }
                ast::StatementKind::QkEdge { heads, pairs } => {
                    let expanded: Vec<NamedHead> =
                        heads.iter().flat_map(|a| self.expand_atom(a)).collect();
                    let bound_pairs: Vec<(BItem, BItem, Span)> = pairs
                        .iter()
                        .map(|p| {
                            (
                                self.position_item(&p.key),
                                self.position_item(&p.query),
                                p.query.span(),
                            )
                        })
                        .collect();
                    for (head, _) in &expanded {
                        for (keys, queries, query_span) in &bound_pairs {
                            let edge = QkEdge {
                                head: *head,
                                keys: keys.clone(),
                                queries: queries.clone(),
                                span: st.span.clone(),
                            };
                            own_edges.push((edge.clone(), query_span.clone()));
                            state.qk_edges.push(edge);
                        }
                    }
                }
                ast::StatementKind::PathEdge {
                    from,
                    to,
                    positions,
                } => {
                    let ups: Vec<(Upstream, Span)> =
                        from.iter().flat_map(|c| self.expand_component(c)).collect();
                    let downs = self.expand_downstream(to);
                    let set = self.positions(positions.as_ref());
                    let mut reported = false;
                    for (up, up_span) in &ups {
                        for down in &downs {
                            if !reported
                                && !down.reads(
                                    *up,
                                    self.config.as_ref().map(|c| c.residual).unwrap_or_default(),
                                )
                            {
                                reported = true;
                                self.error(
                                    SourceDiagnostic::error(
                                        "circuit::resolve::backward_edge",
                                        format!(
                                            "the edge from {} to {} goes backwards",
                                            upstream_name(*up),
                                            downstream_name(*down)
                                        ),
                                    )
                                    .with_label(up_span.clone(), "runs after")
                                    .with_label(to.span(), "this input")
                                    .with_help("a path edge goes from an earlier component to a later one (a head's output reaches later layers; an MLP reads its own layer's attention output)"),
                                );
                            }
                            state.path_edges.push(PathEdge {
                                from: *up,
                                to: *down,
                                positions: set.clone(),
                                span: st.span.clone(),
                            });
                        }
                    }
                }
                ast::StatementKind::Drop(items) => {
                    for c in items {
                        for (up, span) in self.expand_component(c) {
                            let present = match up {
                                Upstream::Head(h) => {
                                    state.qk_edges.retain(|e| e.head != h);
                                    state.heads.remove(&h).is_some()
                                }
                                Upstream::Mlp(l) => state.mlps.remove(&l).is_some(),
                            };
                            state.path_edges.retain(|e| e.from != up);
                            if !present {
                                self.error(
                                    SourceDiagnostic::warning(
                                        "circuit::resolve::drop_missing",
                                        format!(
                                            "`drop` has no effect: {} is not in the circuit at this point",
                                            upstream_name(up)
                                        ),
                                    )
                                    .with_label(span, "not in the circuit")
                                    .with_help("`drop` removes what the base circuit or an earlier statement kept; check the name, or delete the statement"),
                                );
                            }
                        }
                    }
                }
                ast::StatementKind::Expect { .. } => {}
            }
        }
        // QK edges at query positions where their head is not kept have no effect.
        for (edge, query_span) in own_edges {
            match state.heads.get(&edge.head) {
                None => self.error(
                    SourceDiagnostic::warning(
                        "circuit::resolve::edge_without_node",
                        format!(
                            "this edge through {} has no effect: {} is not kept at any position in circuit `{}`",
                            edge.head, edge.head, circuit.name.name
                        ),
                    )
                    .with_label(edge.span.clone(), "has no effect")
                    .with_help(format!(
                        "keep the head at the query position too: `{} @ {}`",
                        edge.head,
                        &self.text[query_span.clone()]
                    )),
                ),
                Some(PositionSet::All) => {}
                Some(PositionSet::Items(kept)) => {
                    let certain_miss = matches!(edge.queries, BItem::One(_))
                        && kept.iter().all(|k| matches!(k, BItem::One(_)))
                        && !kept.contains(&edge.queries);
                    if certain_miss {
                        self.error(
                            SourceDiagnostic::warning(
                                "circuit::resolve::edge_without_node",
                                format!(
                                    "this edge through {} has no effect at query `{}`: the head is not kept there",
                                    edge.head,
                                    &self.text[query_span.clone()]
                                ),
                            )
                            .with_label(query_span.clone(), "the head is not kept at this query position")
                            .with_help(format!(
                                "add `{}` to the positions where {} is kept",
                                &self.text[query_span.clone()],
                                edge.head
                            )),
                        );
                    }
                }
            }
        }
    }

    fn expand_downstream(&mut self, to: &ast::Downstream) -> Vec<Downstream> {
        match to {
            ast::Downstream::Logits(_) => vec![Downstream::Logits],
            ast::Downstream::Mlp(sel, _) => self
                .expand_layers(sel)
                .into_iter()
                .map(Downstream::Mlp)
                .collect(),
            ast::Downstream::HeadInput { heads, input, .. } => {
                let input = match input {
                    ast::HeadInputKw::Q => HeadInput::Q,
                    ast::HeadInputKw::K => HeadInput::K,
                    ast::HeadInputKw::V => HeadInput::V,
                };
                self.expand_atom(heads)
                    .into_iter()
                    .map(|(h, _)| Downstream::Head(h, input))
                    .collect()
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Expectations

    fn expectation(
        &mut self,
        lhs: &ast::Expr,
        comparison: ast::CmpOp,
        rhs: &ast::Expr,
        span: Span,
    ) -> Option<Expectation> {
        let errors_before = self.diags.error_count();
        let l = self.value(lhs);
        let r = self.value(rhs);
        if self.diags.error_count() > errors_before {
            return None;
        }
        let comparison = match comparison {
            ast::CmpOp::Lt => Comparison::Lt,
            ast::CmpOp::Le => Comparison::Le,
            ast::CmpOp::Gt => Comparison::Gt,
            ast::CmpOp::Ge => Comparison::Ge,
        };
        let (llo, lhi) = interval(&l);
        let (rlo, rhi) = interval(&r);
        let never = match comparison {
            Comparison::Gt => lhi <= rlo,
            Comparison::Ge => lhi < rlo,
            Comparison::Lt => llo >= rhi,
            Comparison::Le => llo > rhi,
        };
        if never {
            let (lhs_bound, rhs_bound) = match comparison {
                Comparison::Gt | Comparison::Ge => (
                    format!("at most {}", show(lhi)),
                    format!("at least {}", show(rlo)),
                ),
                Comparison::Lt | Comparison::Le => (
                    format!("at least {}", show(llo)),
                    format!("at most {}", show(rhi)),
                ),
            };
            self.error(
                SourceDiagnostic::warning(
                    "circuit::resolve::impossible_expectation",
                    "this expectation can never hold",
                )
                .with_label(lhs.span(), format!("this is {lhs_bound}"))
                .with_label(rhs.span(), format!("this is {rhs_bound}"))
                .with_help("prob and accuracy lie in [0, 1], logprob ≤ 0, kl ≥ 0; check the comparison and the bound"),
            );
        }
        Some(Expectation {
            lhs: l,
            comparison,
            rhs: r,
            text: format::expectation_text(
                lhs,
                match comparison {
                    Comparison::Lt => ast::CmpOp::Lt,
                    Comparison::Le => ast::CmpOp::Le,
                    Comparison::Gt => ast::CmpOp::Gt,
                    Comparison::Ge => ast::CmpOp::Ge,
                },
                rhs,
            ),
            span,
        })
    }

    fn value(&mut self, e: &ast::Expr) -> ValueExpr {
        match e {
            ast::Expr::Number { value, .. } => ValueExpr::Number(*value),
            ast::Expr::Neg { operand, .. } => ValueExpr::Neg(Box::new(self.value(operand))),
            ast::Expr::Binary { op, lhs, rhs, .. } => {
                let l = Box::new(self.value(lhs));
                let r = Box::new(self.value(rhs));
                match op {
                    ast::BinOp::Add => ValueExpr::Add(l, r),
                    ast::BinOp::Sub => ValueExpr::Sub(l, r),
                    ast::BinOp::Mul => ValueExpr::Mul(l, r),
                }
            }
            ast::Expr::Quantity {
                qualifier, name, ..
            } => self.quantity(qualifier.as_ref(), name),
        }
    }

    fn quantity(&mut self, qualifier: Option<&ast::Ident>, name: &ast::Ident) -> ValueExpr {
        let placeholder = ValueExpr::Number(0.0);
        let metric = ast::MetricName::from_keyword(&name.name).map(bind_metric);
        let unknown_quantity = |allowed: &[&str]| {
            let mut d = SourceDiagnostic::error(
                "circuit::resolve::unknown_quantity",
                format!("unknown quantity `{}`", name.name),
            )
            .with_label(name.span.clone(), "not a quantity");
            let list = allowed
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ");
            d = match did_you_mean(&name.name, allowed.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`? quantities here are {list}")),
                None => d.with_help(format!("quantities here are {list}")),
            };
            d
        };
        match qualifier.map(|q| q.name.as_str()) {
            Some(which @ ("full" | "empty")) => match metric {
                Some(m) => ValueExpr::Quantity {
                    circuit: None,
                    quantity: if which == "full" {
                        Quantity::Full(m)
                    } else {
                        Quantity::Empty(m)
                    },
                },
                None => {
                    self.error(unknown_quantity(&QUANTITY_NAMES[2..]));
                    placeholder
                }
            },
            Some(circuit) => {
                let q = qualifier.expect("matched Some");
                if !self.circuit_names.contains_key(circuit) {
                    let names: Vec<String> = self.circuit_names.keys().cloned().collect();
                    let mut d = SourceDiagnostic::error(
                        "circuit::resolve::unknown_circuit",
                        format!("no circuit named `{circuit}`"),
                    )
                    .with_label(q.span.clone(), "not defined in this file");
                    d = match did_you_mean(circuit, names.iter().map(|s| s.as_str())) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d.with_help("`full.METRIC` and `empty.METRIC` name the full model and the empty circuit"),
                    };
                    self.error(d);
                    return placeholder;
                }
                match own_quantity(&name.name, metric) {
                    Some(quantity) => ValueExpr::Quantity {
                        circuit: Some(circuit.to_string()),
                        quantity,
                    },
                    None => {
                        self.error(unknown_quantity(&QUANTITY_NAMES));
                        placeholder
                    }
                }
            }
            None => match own_quantity(&name.name, metric) {
                Some(quantity) => ValueExpr::Quantity {
                    circuit: None,
                    quantity,
                },
                None => {
                    self.error(unknown_quantity(&QUANTITY_NAMES));
                    placeholder
                }
            },
        }
    }
}

fn own_quantity(name: &str, metric: Option<Metric>) -> Option<Quantity> {
    match (name, metric) {
        ("faithfulness", _) => Some(Quantity::Faithfulness),
        ("ratio", _) => Some(Quantity::Ratio),
        (_, Some(m)) => Some(Quantity::Metric(m)),
        _ => None,
    }
}

fn bind_metric(m: ast::MetricName) -> Metric {
    match m {
        ast::MetricName::LogitDiff => Metric::LogitDiff,
        ast::MetricName::Prob => Metric::Prob,
        ast::MetricName::Logprob => Metric::Logprob,
        ast::MetricName::Kl => Metric::Kl,
        ast::MetricName::Accuracy => Metric::Accuracy,
    }
}

/// The union of a head's kept positions with more positions.
fn union(existing: Option<&PositionSet>, more: &PositionSet) -> PositionSet {
    match (existing, more) {
        (Some(PositionSet::All), _) | (_, PositionSet::All) => PositionSet::All,
        (Some(PositionSet::Items(a)), PositionSet::Items(b)) => {
            let mut items = a.clone();
            for item in b {
                if !items.contains(item) {
                    items.push(item.clone());
                }
            }
            PositionSet::Items(items)
        }
        (None, set) => set.clone(),
    }
}

fn upstream_name(u: Upstream) -> String {
    match u {
        Upstream::Head(h) => format!("head {h}"),
        Upstream::Mlp(l) => format!("MLP {l}"),
    }
}

fn downstream_name(d: Downstream) -> String {
    match d {
        Downstream::Head(h, input) => format!(
            "{h}.{}",
            match input {
                HeadInput::Q => "q",
                HeadInput::K => "k",
                HeadInput::V => "v",
            }
        ),
        Downstream::Mlp(l) => format!("MLP {l}"),
        Downstream::Logits => "the logits".to_string(),
    }
}

/// The range a value can take, from the ranges of the quantities in it (interval
/// arithmetic; quantities are treated as independent, so this finds only sure impossibilities).
fn interval(v: &ValueExpr) -> (f64, f64) {
    const ANY: (f64, f64) = (f64::NEG_INFINITY, f64::INFINITY);
    let metric_range = |m: Metric| match m {
        Metric::LogitDiff => ANY,
        Metric::Prob | Metric::Accuracy => (0.0, 1.0),
        Metric::Logprob => (f64::NEG_INFINITY, 0.0),
        Metric::Kl => (0.0, f64::INFINITY),
    };
    let (lo, hi) = match v {
        ValueExpr::Number(x) => (*x, *x),
        ValueExpr::Quantity { quantity, .. } => match quantity {
            Quantity::Faithfulness | Quantity::Ratio => ANY,
            Quantity::Metric(m) | Quantity::Full(m) | Quantity::Empty(m) => metric_range(*m),
        },
        ValueExpr::Neg(a) => {
            let (a, b) = interval(a);
            (-b, -a)
        }
        ValueExpr::Add(a, b) => {
            let ((a1, a2), (b1, b2)) = (interval(a), interval(b));
            (a1 + b1, a2 + b2)
        }
        ValueExpr::Sub(a, b) => {
            let ((a1, a2), (b1, b2)) = (interval(a), interval(b));
            (a1 - b2, a2 - b1)
        }
        ValueExpr::Mul(a, b) => {
            let ((a1, a2), (b1, b2)) = (interval(a), interval(b));
            let products = [a1 * b1, a1 * b2, a2 * b1, a2 * b2];
            if products.iter().any(|p| p.is_nan()) {
                ANY
            } else {
                (
                    products.iter().copied().fold(f64::INFINITY, f64::min),
                    products.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                )
            }
        }
    };
    if lo.is_nan() || hi.is_nan() {
        ANY
    } else {
        (lo, hi)
    }
}

fn show(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 {
            "∞".into()
        } else {
            "-∞".into()
        }
    } else {
        format!("{x}")
    }
}
