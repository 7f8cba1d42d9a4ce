//! Settings: `model`, `dataset`, `reference`, `ablate`, `metric`, `align` → [`Settings`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::binder::{backticked, Binder};
use super::bound::*;
use super::diagnostics as code;
use super::overrides::{Override, SettingOverride};
use super::{Environment, ResolveOptions};
use crate::data::{DatasetSource, ParamValue};
use crate::model::hub::ModelNotFound;
use crate::model::ModelSource;
use crate::syntax::ast::{self, Span};
use crate::syntax::SourceDiagnostic;
use crate::util::did_you_mean;

impl<'a> Binder<'a> {
    pub(super) fn settings(
        &mut self,
        file: &'a ast::File,
        base_dir: &Path,
        env: &dyn Environment,
        options: &ResolveOptions,
    ) -> Option<Settings> {
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut model: Option<(Result<ModelSource, ModelNotFound>, Span)> = None;
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
                            code::DUPLICATE_SETTING,
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
                    model = Some((env.model_source(&s.value, base_dir), item.span.clone()))
                }
                ast::ItemKind::Dataset { name, source } => {
                    if let Some(prev) = datasets.iter().find(|d| d.0 == name.name) {
                        let prev_span = prev.2.clone();
                        self.error(
                            SourceDiagnostic::error(
                                code::DUPLICATE_DATASET,
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

        // `--set KEY=VALUE` over the file's settings, in order (a later one wins); values were
        // checked when parsed.
        let mut dataset_params: Vec<(&SettingOverride, &str, &ParamValue)> = Vec::new();
        for o in &options.overrides {
            match &o.setting {
                // The CLI turns `model` into `model_override`.
                Override::Model(_) => {}
                Override::DatasetParam(param, value) => dataset_params.push((o, param, value)),
                Override::Metric(m) => metric = *m,
                Override::Ablation(a) => ablation = *a,
                Override::Scope(s) => scope = *s,
                Override::Edges(e) => edge_ablation = *e,
                Override::Align(a) => alignment = *a,
            }
        }

        // The model: --model wins over the file's setting; the built-in default otherwise. A
        // model found nowhere is reported here; the rest of the file is still checked (without
        // a config, so heads are not range-checked) and no settings are returned.
        let (model_source, model_span, overridden) = match (&options.model_override, model) {
            (Some(m), _) => (Some(m.clone()), None, true),
            (None, Some((Ok(m), span))) => (Some(m), Some(span), false),
            (None, Some((Err(not_found), span))) => {
                self.error(
                    SourceDiagnostic::error(code::MODEL, not_found.to_string())
                        .with_label(span.clone(), "this model")
                        .with_help(not_found.help),
                );
                (None, Some(span), false)
            }
            (None, None) => (Some(ModelSource::default_model()), None, false),
        };
        match model_source.as_ref().map(|m| (m, env.model_config(m))) {
            None => {}
            Some((_, Ok(config))) => self.config = Some(config),
            Some((model_source, Err(message))) => {
                let mut d = SourceDiagnostic::error(
                    code::MODEL,
                    format!(
                        "cannot read the config of model `{}`: {message}",
                        model_source.display_name()
                    ),
                );
                d = match (&model_span, overridden) {
                    (_, true) => d.with_help("check the folder given to --model (it must hold config.json)"),
                    (Some(span), false) => d.with_label(span.clone(), "this model").with_help(
                        "`model` takes a built-in model's name, a HuggingFace folder (with config.json) relative to this file, or a hub name in the local HuggingFace cache; `circuit check --model DIR` overrides it",
                    ),
                    (None, false) => d.with_help(
                        "the file names no model, so the built-in default is used; add `model \"DIR\"` or pass --model DIR",
                    ),
                };
                self.error(d);
            }
        }

        // The evaluated dataset is the first one declared.
        let mut evaluated = match datasets.first() {
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
        for (o, param, value) in dataset_params {
            match &mut evaluated.0 {
                DatasetSource::Builtin { params, .. } => {
                    params.insert(param.to_string(), value.clone());
                }
                DatasetSource::File(path) => {
                    let mut d = SourceDiagnostic::error(
                        code::BAD_OVERRIDE,
                        format!(
                            "--set {o}: the evaluated dataset is the file {}, which has no parameters",
                            path.display()
                        ),
                    )
                    .with_help("`dataset.PARAM` sets a parameter of a built-in generator (`seqcont.numerals(n = 64)`)");
                    if let Some(span) = evaluated.1.clone() {
                        d = d.with_label(span, "this dataset");
                    }
                    self.error(d);
                }
            }
        }
        match env.dataset_labels(&evaluated.0) {
            Ok(labels) => self.labels = Some(labels),
            Err(message) => {
                let mut d = SourceDiagnostic::error(
                    code::DATASET,
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
                        code::UNKNOWN_DATASET,
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
                                code::REFERENCE,
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
        // Only `align by label` reads reference prompts' labels (and no ablation by zero reads
        // reference prompts at all): there they must carry the evaluated prompts' labels.
        if alignment == Alignment::Label && ablation != AblationKind::Zero {
            if let Some(message) = env.reference_label_gap(&evaluated.0, &reference_set) {
                let mut d = SourceDiagnostic::error(code::REFERENCE, message).with_help(
                    "label it in every reference prompt, or use `align by position` (the default), which reads no reference prompt's labels",
                );
                if let Some(span) = seen.get("align") {
                    d = d.with_label(span.clone(), "reads reference prompts' labels");
                }
                self.error(d);
            }
        }
        for (name, _, name_span, _) in &datasets {
            if !used_datasets.contains(name) {
                self.error(
                    SourceDiagnostic::warning(
                        code::UNUSED_DATASET,
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
            model: model_source?,
            dataset: evaluated.0,
            reference: reference_set,
            ablation,
            edge_ablation,
            scope,
            metric,
            alignment,
            overrides: options.overrides.iter().map(|o| o.to_string()).collect(),
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
                                code::DUPLICATE_PARAM,
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
}

pub(super) fn bind_metric(m: ast::MetricName) -> Metric {
    match m {
        ast::MetricName::LogitDiff => Metric::LogitDiff,
        ast::MetricName::Prob => Metric::Prob,
        ast::MetricName::Logprob => Metric::Logprob,
        ast::MetricName::Kl => Metric::Kl,
        ast::MetricName::Accuracy => Metric::Accuracy,
    }
}
