//! The resolver proper: AST + environment → [`BoundFile`], collecting every diagnostic.
//!
//! [`Binder`] holds what every section needs (the text, the diagnostics, the model's shape, the
//! dataset's labels, the groups and circuit names); each section of the language binds in its
//! own file beside this one: `settings`, `groups` (heads, MLPs, head groups), `positions`,
//! `circuits` and `expectations`. Diagnostic codes live in `diagnostics`.

use std::collections::HashMap;
use std::path::Path;

use super::bound::*;
use super::diagnostics as code;
use super::{Environment, ResolveOptions};
use crate::data::DatasetSource;
use crate::model::{ModelConfig, ModelSource};
use crate::syntax::ast::{self, Span};
use crate::syntax::{Diagnostics, SourceDiagnostic, SourceFile};

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
        env,
        sources: None,
        adds_bos: None,
    };
    let settings = binder.settings(file, base_dir, env, options);
    binder.sources = settings
        .as_ref()
        .map(|s| (s.model.clone(), s.dataset.clone()));
    binder.collect_groups(file);
    let circuits = binder.circuits(file);
    binder.warn_unused_groups();
    if circuits.is_empty() {
        binder.error(
            SourceDiagnostic::warning(code::NO_CIRCUIT, "this file defines no circuit").with_help(
                "`eval` and `test` evaluate circuits: add one, e.g. `circuit name { 9.1 @ END }`",
            ),
        );
    }
    let bound = settings.map(|settings| BoundFile { settings, circuits });
    (bound, binder.diags)
}

pub(super) struct GroupDef<'a> {
    pub(super) atoms: &'a [ast::HeadsAtom],
    pub(super) name_span: Span,
    pub(super) used: bool,
}

/// A head as expanded from the text, with the span that named it.
pub(super) type NamedHead = (HeadId, Span);

pub(super) struct Binder<'a> {
    pub(super) text: &'a str,
    pub(super) diags: Diagnostics,
    /// `None` when the model's config could not be read (then heads are not range-checked).
    pub(super) config: Option<ModelConfig>,
    /// `None` when the dataset's labels are unknown (then labels are not checked).
    pub(super) labels: Option<Vec<String>>,
    pub(super) dataset_name: Option<String>,
    pub(super) groups: HashMap<String, GroupDef<'a>>,
    /// Expanded groups (`None` while being expanded, to detect cycles).
    pub(super) group_cache: HashMap<String, Option<Vec<HeadId>>>,
    /// Circuit name → index in file order.
    pub(super) circuit_names: HashMap<String, usize>,
    /// Asked lazily (see [`Binder::adds_bos`]) for what only some diagnostics need.
    pub(super) env: &'a dyn Environment,
    /// The model and the evaluated dataset, once the settings are bound.
    pub(super) sources: Option<(ModelSource, DatasetSource)>,
    /// Whether the tokenizer adds BOS, once asked (`Some(None)`: asked, unknown).
    pub(super) adds_bos: Option<Option<bool>>,
}

/// `a`, `b`, `c`: names as a help text lists them.
pub(super) fn backticked(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'a> Binder<'a> {
    pub(super) fn error(&mut self, d: SourceDiagnostic) {
        self.diags.push(d);
    }

    /// Whether the model's tokenizer adds a BOS token (`None` when unknown), asked once.
    pub(super) fn adds_bos(&mut self) -> Option<bool> {
        if self.adds_bos.is_none() {
            let answer = match &self.sources {
                Some((model, _)) => self.env.tokenizer_adds_bos(model),
                None => None,
            };
            self.adds_bos = Some(answer);
        }
        self.adds_bos.flatten()
    }
}
