//! Binding names in a parsed circuit file to a model's config and a dataset's labels.
//!
//! Entry points for other stages:
//! - [`load_file`]: read, parse and resolve a `.circuit` file;
//! - [`resolve_source`]: the same for text in memory (e.g. a file at a git revision);
//! - [`Environment`]: what the resolver asks of the world (a model's config, a dataset's
//!   labels); [`RealEnvironment`] reads `config.json` only, never weights or prompts.
//!
//! Every error of a file is collected (not only the first); warnings are returned alongside a
//! successful result. Render diagnostics with [`Diagnostics::render_plain`] or by turning them
//! into a `miette::Report` (`Diagnostics` implements `miette::Diagnostic`).

mod binder;
pub mod bound;
mod circuits;
pub mod diagnostics;
mod expectations;
mod groups;
pub mod overrides;
mod positions;
pub mod revision;
mod settings;
pub mod value;

use std::path::Path;

use crate::data::DatasetSource;
use crate::model::hub::ModelNotFound;
use crate::model::{ModelConfig, ModelSource};
pub use crate::syntax::{Diagnostics, Severity, SourceDiagnostic, SourceFile};
use bound::BoundFile;

/// What the resolver needs to know about the model and the dataset. Errors are plain messages;
/// the resolver labels them at the statement that named the model or dataset.
pub trait Environment {
    /// The model's shape (layers, heads). Must not read weights.
    fn model_config(&self, source: &ModelSource) -> Result<ModelConfig, String>;
    /// The slot labels every prompt of the dataset defines (`S1`.. or `IO`, `S1`, `S2`);
    /// `END` and `BOS` are always available and need not be listed.
    fn dataset_labels(&self, source: &DatasetSource) -> Result<Vec<String>, String>;
    /// Labels some prompts define but not every one (so a circuit cannot use them), each with
    /// a prompt that lacks it, for the unknown-label help. Asked only when a label is unknown.
    fn dataset_partial_labels(&self, _source: &DatasetSource) -> Vec<PartialLabel> {
        Vec::new()
    }
    /// Under `align by label`: a reference prompt lacking a label every evaluated prompt has,
    /// as the message naming both (`None`: none, or unknown). Asked only when the settings read
    /// reference labels.
    fn reference_label_gap(
        &self,
        _dataset: &DatasetSource,
        _reference: &bound::ReferenceSet,
    ) -> Option<String> {
        None
    }
    /// The model a `model "SPEC"` setting names, relative to `base_dir` (the file's folder).
    /// By default the name alone decides (a built-in name, else a folder, not looked at);
    /// [`RealEnvironment`] also looks in the local HuggingFace hub cache
    /// ([`ModelSource::parse`]).
    fn model_source(&self, spec: &str, base_dir: &Path) -> Result<ModelSource, ModelNotFound> {
        Ok(ModelSource::named(spec, base_dir))
    }
    /// Whether the model's tokenizer adds a BOS token (`None`: unknown). Asked only when a file
    /// names `BOS` or a label is unknown. Must not read weights.
    fn tokenizer_adds_bos(&self, _source: &ModelSource) -> Option<bool> {
        None
    }
}

/// A label some prompts of a dataset define but not all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialLabel {
    pub label: String,
    /// How reports name a prompt without it: `reference prompt 0 ("1 2 3")`.
    pub missing_from: String,
}

/// The environment of the command line: model configs from disk (or built in), dataset labels
/// from the data stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealEnvironment;

impl Environment for RealEnvironment {
    fn model_source(&self, spec: &str, base_dir: &Path) -> Result<ModelSource, ModelNotFound> {
        ModelSource::parse(spec, base_dir)
    }

    fn model_config(&self, source: &ModelSource) -> Result<ModelConfig, String> {
        if let ModelSource::Dir(dir) = source {
            if !dir.is_dir() {
                return Err(format!("the model folder {} does not exist", dir.display()));
            }
        }
        let config = source.config().map_err(|e| error_chain(&e))?;
        // Before any `*` is expanded over the config's layers: they must be the weights'.
        if let ModelSource::Dir(dir) = source {
            crate::model::check_config_against_weights(dir, &config)
                .map_err(|e| error_chain(&e))?;
        }
        Ok(config)
    }

    fn dataset_labels(&self, source: &DatasetSource) -> Result<Vec<String>, String> {
        crate::data::label_names(source).map_err(|e| error_chain(&e))
    }

    fn dataset_partial_labels(&self, source: &DatasetSource) -> Vec<PartialLabel> {
        use crate::data::error::{PromptId, PromptSet};
        let Ok(dataset) = crate::data::load(source) else {
            return Vec::new();
        };
        let common = dataset.common_labels();
        let sets = [
            (PromptSet::Clean, &dataset.clean),
            (PromptSet::Reference, &dataset.reference),
        ];
        let mut out: Vec<PartialLabel> = Vec::new();
        for (_, records) in sets {
            for label in records.iter().flat_map(|r| r.labels_in_order()) {
                if common.contains(&label) || out.iter().any(|p| p.label == label) {
                    continue;
                }
                let lacking = sets.iter().find_map(|(set, records)| {
                    let index = records.iter().position(|r| !r.slots.contains_key(&label))?;
                    Some(PromptId {
                        set: *set,
                        index,
                        text: records[index].prompt.clone(),
                    })
                });
                if let Some(prompt) = lacking {
                    out.push(PartialLabel {
                        label,
                        missing_from: prompt.to_string(),
                    });
                }
            }
        }
        out
    }

    fn reference_label_gap(
        &self,
        dataset: &DatasetSource,
        reference: &bound::ReferenceSet,
    ) -> Option<String> {
        use crate::data::{record::prompt_id, PromptSet};
        let evaluated = crate::data::load(dataset).ok()?;
        let reference_records = match reference {
            bound::ReferenceSet::Clean => return None,
            bound::ReferenceSet::Corrupt => evaluated.reference.clone(),
            bound::ReferenceSet::Dataset(other) => crate::data::load(other).ok()?.clean,
        };
        let labels = |records: &[crate::data::Record]| -> Vec<Vec<String>> {
            records
                .iter()
                .map(|r| r.slots.keys().cloned().collect())
                .collect()
        };
        let (r, label) = crate::data::tokenized::reference_label_gap(
            &labels(&evaluated.clean),
            &labels(&reference_records),
        )?;
        let error = crate::data::DataError::ReferenceLabel {
            prompt: prompt_id(PromptSet::Reference, r, &reference_records[r]),
            label,
        };
        Some(error.to_string())
    }

    fn tokenizer_adds_bos(&self, source: &ModelSource) -> Option<bool> {
        let tokenizer = match source {
            ModelSource::Builtin(name) => crate::model::builtin::tokenizer(name).ok()?,
            ModelSource::Dir(dir) => {
                crate::model::Tokenizer::from_file(&dir.join("tokenizer.json")).ok()?
            }
        };
        tokenizer.encode("a").ok().map(|encoded| encoded.has_bos)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// Options that change what a file means.
#[derive(Clone, Debug, Default)]
pub struct ResolveOptions {
    /// Use this model instead of the file's `model` setting (`--model DIR`).
    pub model_override: Option<ModelSource>,
    /// `--set KEY=VALUE`, applied in order over the file's settings (`model` is
    /// `model_override`'s business: the CLI turns it into that).
    pub overrides: Vec<overrides::SettingOverride>,
}

/// A resolved file and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub file: BoundFile,
    /// Warnings only (never errors), in source order, each carrying the file's text.
    pub warnings: Diagnostics,
}

/// Parses and resolves `text`. `name` is how reports name the file; `base_dir` is the folder
/// relative model and dataset paths are taken from. On failure, the diagnostics hold every
/// error and warning of the file.
pub fn resolve_source(
    name: &str,
    text: &str,
    base_dir: &Path,
    env: &dyn Environment,
    options: &ResolveOptions,
) -> Result<Resolved, Diagnostics> {
    let source = SourceFile::new(name, text);
    let file = crate::syntax::parse(&source)?;
    let (bound, diagnostics) = binder::bind(&file, &source, base_dir, env, options);
    let diagnostics = diagnostics.finish(&source);
    match bound {
        Some(file) if !diagnostics.has_errors() => Ok(Resolved {
            file,
            warnings: diagnostics,
        }),
        _ => Err(diagnostics),
    }
}

/// Reads, parses and resolves a `.circuit` file; relative paths in it are taken from its
/// folder.
pub fn load_file(
    path: &Path,
    env: &dyn Environment,
    options: &ResolveOptions,
) -> Result<Resolved, Diagnostics> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut d = Diagnostics::new();
        d.push(
            SourceDiagnostic::error(diagnostics::READ, format!("cannot read {name}: {e}"))
                .with_help("check the path; `circuit check` takes .circuit files"),
        );
        d
    })?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    resolve_source(&name, &text, base_dir, env, options)
}
