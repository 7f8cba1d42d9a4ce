//! Evaluating a resolved `.circuit` file end to end: open its model, load and tokenize its
//! dataset and reference set, check lengths, and run the requested circuits.

use sha2::{Digest, Sha256};

use super::evaluate::{AblationSettings, EvalPrompts, Evaluation, Evaluator};
use super::Targets;
use crate::ablate::align::slots_of_prompt;
use crate::ablate::{LabelAlignment, PromptSlots};
use crate::data::{self, DatasetSource, PromptSet, TokenizedPrompt};
use crate::model::Model;
use crate::plan::PromptPositions;
use crate::resolve::bound::{AblationKind, Alignment, BoundCircuit, BoundFile, ReferenceSet};

/// Where the numbers came from, for reports.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Provenance {
    /// The model as the file names it.
    pub model: String,
    /// sha256 of the model's weight bytes.
    pub model_sha256: String,
    /// sha256 of the tokenizer's JSON.
    pub tokenizer_sha256: String,
    /// The dataset as the file names it.
    pub dataset: String,
    /// sha256 of the dataset as JSONL (docs/datasets.md), clean and reference prompts.
    pub dataset_sha256: String,
    pub n_prompts: usize,
    /// The reference set as the file names it, and its size.
    pub reference: String,
    pub n_reference: usize,
}

/// A file's circuits evaluated.
pub struct FileRun {
    pub provenance: Provenance,
    /// The circuits evaluated, in file order.
    pub circuits: Vec<BoundCircuit>,
    pub evaluation: Evaluation,
    /// Position names that share a token in some prompt (END and S4 in "1 2 3 4").
    pub notes: Vec<String>,
}

/// How reports write a dataset source: `seqcont.numerals(n=64, seed=0)` or the file path.
pub fn dataset_name(source: &DatasetSource) -> String {
    match source {
        DatasetSource::Builtin { name, params } => {
            let params: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap_or_default()))
                .collect();
            format!("{name}({})", params.join(", "))
        }
        DatasetSource::File(path) => path.display().to_string(),
    }
}

fn reference_name(reference: &ReferenceSet, dataset: &DatasetSource) -> String {
    match reference {
        ReferenceSet::Corrupt => format!("{}: reference prompts", dataset_name(dataset)),
        ReferenceSet::Clean => format!("{}: clean prompts", dataset_name(dataset)),
        ReferenceSet::Dataset(other) => format!("{}: clean prompts", dataset_name(other)),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl PromptPositions for TokenizedPrompt {
    fn token_count(&self) -> usize {
        self.len()
    }

    fn resolve_positions(
        &self,
        set: &crate::data::positions::PositionSet,
    ) -> miette::Result<std::collections::BTreeSet<usize>> {
        Ok(self.resolve(set)?)
    }

    fn describe(&self) -> String {
        self.id().to_string()
    }
}

/// A prompt's slots for `align by label`: every label anchors at the token it names in a
/// circuit (its slot's last token), END at the last token.
pub fn prompt_slots(prompt: &TokenizedPrompt) -> PromptSlots {
    PromptSlots {
        name: prompt.id().to_string(),
        slots: slots_of_prompt(prompt.len(), &prompt.slots),
    }
}

/// Options of a file evaluation.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Called after each forward batch with the number of prompts it held (progress bars).
    pub on_batch: Option<Box<dyn Fn(usize) + 'a>>,
    /// Called once the total number of prompt-forwards is known.
    pub on_total: Option<Box<dyn Fn(usize) + 'a>>,
    /// Cache reference values on disk in this folder (the CLI passes [`cache_dir`]).
    pub disk_cache: Option<std::path::PathBuf>,
}

/// Evaluates `circuits` (names; all of the file's circuits when empty) of `file`, plus the
/// full model and the empty circuit.
pub fn run_file(
    file: &BoundFile,
    circuit_names: &[String],
    options: RunOptions,
) -> miette::Result<FileRun> {
    let settings = &file.settings;
    let circuits: Vec<BoundCircuit> = if circuit_names.is_empty() {
        file.circuits.clone()
    } else {
        circuit_names
            .iter()
            .map(|name| {
                file.circuits
                    .iter()
                    .find(|c| &c.name == name)
                    .cloned()
                    .ok_or_else(|| unknown_circuit(file, name))
            })
            .collect::<miette::Result<_>>()?
    };
    let model = Model::open(&settings.model)?;
    let dataset = data::load(&settings.dataset)?;
    let tokenized = data::tokenize_dataset(&dataset, &model.tokenizer)?;
    let (reference_prompts, n_reference_records): (Vec<TokenizedPrompt>, usize) =
        match &settings.reference {
            ReferenceSet::Corrupt => (tokenized.reference.clone(), dataset.reference.len()),
            ReferenceSet::Clean => (tokenized.clean.clone(), dataset.clean.len()),
            ReferenceSet::Dataset(other) => {
                let other = data::load(other)?;
                let prompts = other
                    .clean
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        data::tokenize_record_in(r, &model.tokenizer, PromptSet::Reference, i)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let n = prompts.len();
                (prompts, n)
            }
        };
    if tokenized.clean.is_empty() {
        miette::bail!(
            "dataset {} has no prompts to evaluate",
            dataset_name(&settings.dataset)
        );
    }
    // Lengths are checked before any forward pass, with the data stage's messages (which name
    // both prompts, both lengths, and the alternative). Under `align by label` lengths may
    // differ; the evaluator checks instead that every slot is in the reference set.
    let by_label = settings.alignment == Alignment::Label;
    match settings.ablation {
        AblationKind::Mean if !by_label => {
            data::check_equal_lengths(&tokenized.clean, &reference_prompts)?
        }
        AblationKind::Resample if !by_label => {
            data::check_paired_lengths(&tokenized.clean, &reference_prompts)?
        }
        AblationKind::Resample if tokenized.clean.len() != reference_prompts.len() => {
            return Err(data::DataError::ReferenceCount {
                clean: tokenized.clean.len(),
                reference: reference_prompts.len(),
            }
            .into());
        }
        _ => {}
    }
    let label_alignment =
        (by_label && settings.ablation != AblationKind::Zero).then(|| LabelAlignment {
            evaluated: tokenized.clean.iter().map(prompt_slots).collect(),
            reference: reference_prompts.iter().map(prompt_slots).collect(),
        });

    let mut notes = Vec::new();
    if let Some(first) = tokenized.clean.first() {
        for note in data::alias_notes(&tokenized.clean, &first.standard_positions()) {
            notes.push(note.to_string());
        }
    }

    let provenance = Provenance {
        model: settings.model.display_name(),
        model_sha256: model.weights_hash().to_string(),
        tokenizer_sha256: sha256_hex(
            model
                .tokenizer
                .inner()
                .to_string(false)
                .unwrap_or_default()
                .as_bytes(),
        ),
        dataset: dataset_name(&settings.dataset),
        dataset_sha256: sha256_hex(data::jsonl::write(&dataset).as_bytes()),
        n_prompts: tokenized.clean.len(),
        reference: reference_name(&settings.reference, &settings.dataset),
        n_reference: n_reference_records,
    };

    let positions: Vec<&dyn PromptPositions> = tokenized
        .clean
        .iter()
        .map(|p| p as &dyn PromptPositions)
        .collect();
    for circuit in &circuits {
        notes.extend(crate::plan::check_key_order(circuit, &positions)?);
    }
    let prompts = EvalPrompts {
        ids: tokenized.clean.iter().map(|p| p.ids.clone()).collect(),
        targets: tokenized
            .clean
            .iter()
            .map(|p| Targets {
                answer: p.answer_id,
                distractor: p.distractor_id,
            })
            .collect(),
        positions,
    };
    let reference_ids = reference_prompts.iter().map(|p| p.ids.clone()).collect();
    let mut evaluator = Evaluator::new(
        &model,
        AblationSettings::from(settings),
        prompts,
        reference_ids,
    );
    if let Some(on_total) = &options.on_total {
        // Upper bound: reference, full, empty and one pass per circuit.
        let n = tokenized.clean.len();
        on_total(reference_prompts.len() + n * (2 + circuits.len()));
    }
    evaluator.on_batch = options.on_batch;
    evaluator.label_alignment = label_alignment;
    evaluator.disk_cache = options.disk_cache;
    let refs: Vec<&BoundCircuit> = circuits.iter().collect();
    let evaluation = evaluator.evaluate(&refs)?;
    Ok(FileRun {
        provenance,
        circuits,
        evaluation,
        notes,
    })
}

/// The error for `--circuit NAME` naming no circuit of the file, with a did-you-mean.
pub fn unknown_circuit(file: &BoundFile, name: &str) -> miette::Report {
    let names: Vec<&str> = file.circuits.iter().map(|c| c.name.as_str()).collect();
    let closest = names
        .iter()
        .map(|n| (strsim::levenshtein(n, name), *n))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, n)| n);
    let help = match closest {
        Some(n) => format!("did you mean `{n}`? the file defines: {}", names.join(", ")),
        None if names.is_empty() => "the file defines no circuit".to_string(),
        None => format!("the file defines: {}", names.join(", ")),
    };
    miette::miette!(
        code = "circuit::eval::unknown_circuit",
        help = help,
        "no circuit named `{name}` in this file"
    )
}

/// Where reference values are cached between runs: `$CIRCUIT_CACHE_DIR` (`off` disables it),
/// else `$XDG_CACHE_HOME/circuit`, else `$HOME/.cache/circuit`.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    match std::env::var_os("CIRCUIT_CACHE_DIR") {
        Some(v) if v == "off" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(|v| PathBuf::from(v).join("circuit"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/circuit"))),
    }
}
