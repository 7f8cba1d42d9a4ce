//! A [`Session`]: one resolved `.circuit` file opened for evaluation. It owns the model, the
//! tokenized clean and reference prompts, the label alignment and the provenance, and runs
//! plans against them, reusing the reference pass, the full model's logits and every plan
//! already run (in memory, and on disk when a cache folder is given).
//!
//! Every command that evaluates something (`eval`, `test`, `diff`, and commands that search
//! over circuits) opens a session and asks it; none repeats what [`Session::open`] does.

use sha2::{Digest, Sha256};

use super::evaluate::{AblationSettings, EvalPrompts, Evaluation, Evaluator, PromptMetrics};
use super::file::{dataset_name, reference_name, Provenance};
use super::Targets;
use crate::ablate::{LabelAlignment, ReferenceNeeds, ReferenceValues};
use crate::data::{self, slots::prompt_slots, PromptSet, TokenizedPrompt};
use crate::model::Model;
use crate::plan::{Plan, PromptPositions};
use crate::resolve::bound::{
    AblationKind, Alignment, BoundCircuit, BoundFile, ReferenceSet, Settings,
};

/// Options of a session.
#[derive(Default)]
pub struct SessionOptions<'a> {
    /// Called after each forward batch with the number of prompts it held (progress bars).
    pub on_batch: Option<Box<dyn Fn(usize) + 'a>>,
    /// Called by [`Session::evaluate`] with an upper bound of the prompt-forwards it will run.
    pub on_total: Option<Box<dyn Fn(usize) + 'a>>,
    /// Cache reference values and per-prompt metrics on disk in this folder (the CLI passes
    /// [`super::disk_cache::cache_dir`]).
    pub disk_cache: Option<std::path::PathBuf>,
    /// The disk cache's size bound; `None`: [`super::disk_cache::DEFAULT_MAX_BYTES`].
    pub disk_cache_max_bytes: Option<u64>,
    /// Called with what the disk cache did (entries read, rejected and recomputed, evicted).
    pub on_cache_note: Option<super::disk_cache::OnNote<'a>>,
}

/// One `.circuit` file's model, prompts and reference set, ready to run plans on.
pub struct Session<'a> {
    settings: Settings,
    clean: Vec<TokenizedPrompt>,
    /// The answer and distractor of each clean prompt, in order.
    targets: Vec<Targets>,
    reference: Vec<TokenizedPrompt>,
    provenance: Provenance,
    notes: Vec<String>,
    on_total: Option<Box<dyn Fn(usize) + 'a>>,
    /// Owns the model; memoizes plans, the reference values and the full model's logits.
    evaluator: Evaluator<'a>,
}

impl<'a> Session<'a> {
    /// Opens the file's model, loads and tokenizes its dataset and reference set, and checks
    /// them against the settings (lengths, reference count) before any forward pass.
    pub fn open(file: &BoundFile, options: SessionOptions<'a>) -> miette::Result<Session<'a>> {
        let settings = &file.settings;
        let model = Model::open(&settings.model)?;
        let dataset = data::load(&settings.dataset)?;
        let tokenized = data::tokenize_dataset(&dataset, &model.tokenizer)?;
        let (reference, n_reference_records): (Vec<TokenizedPrompt>, usize) =
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
        let clean = tokenized.clean;
        if clean.is_empty() {
            return Err(data::DataError::NoPrompts {
                dataset: dataset_name(&settings.dataset),
            }
            .into());
        }
        let by_label = settings.alignment == Alignment::Label;
        if let Some(pairing) = crate::ablate::pairing(settings.ablation) {
            data::check_reference(pairing, by_label, &clean, &reference)?;
        }
        let label_alignment =
            (by_label && settings.ablation != AblationKind::Zero).then(|| LabelAlignment {
                evaluated: clean.iter().map(prompt_slots).collect(),
                reference: reference.iter().map(prompt_slots).collect(),
            });

        // A note only when a circuit names one of the aliased labels: a note on labels the file
        // never reads would warn about nothing.
        let used: std::collections::BTreeSet<&str> =
            file.circuits.iter().flat_map(|c| c.labels()).collect();
        let mut notes: Vec<String> = match clean.first() {
            Some(first) => {
                let positions = first.standard_positions();
                let named: std::collections::BTreeSet<String> = positions
                    .iter()
                    .filter(|p| match &p.anchor {
                        data::positions::Anchor::Label { name, .. } => used.contains(name.as_str()),
                        _ => false,
                    })
                    .map(|p| p.display_name())
                    .collect();
                data::alias_notes(&clean, &positions)
                    .iter()
                    .filter(|note| note.names.iter().any(|n| named.contains(n)))
                    .map(|note| note.to_string())
                    .collect()
            }
            None => Vec::new(),
        };
        notes.extend(data::tokenized::unknown_words_note(
            &model.tokenizer,
            &clean,
        ));

        let provenance = Provenance {
            model: settings.model.display_name(),
            model_sha256: model.weights_hash().to_string(),
            tokenizer_sha256: model.tokenizer_hash().to_string(),
            dataset: dataset_name(&settings.dataset),
            dataset_sha256: sha256_hex(data::jsonl::write(&dataset).as_bytes()),
            n_prompts: clean.len(),
            reference: reference_name(&settings.reference, &settings.dataset),
            n_reference: n_reference_records,
            overrides: settings.overrides.clone(),
        };

        // Every evaluated prompt has its answer and distractor tokens (tokenization checked them).
        let targets = clean
            .iter()
            .map(Targets::of)
            .collect::<Result<Vec<_>, data::DataError>>()?;
        let prompts = EvalPrompts {
            ids: clean.iter().map(|p| p.ids.clone()).collect(),
            targets: targets.clone(),
            positions: clean
                .iter()
                .map(|p| Box::new(p.clone()) as Box<dyn PromptPositions + 'a>)
                .collect(),
        };
        let reference_ids = reference.iter().map(|p| p.ids.clone()).collect();
        let mut evaluator = Evaluator::new(
            model,
            AblationSettings::from(settings),
            prompts,
            reference_ids,
        );
        evaluator.on_batch = options.on_batch;
        evaluator.label_alignment = label_alignment;
        evaluator.disk_cache = options.disk_cache;
        if let Some(max_bytes) = options.disk_cache_max_bytes {
            evaluator.disk_cache_max_bytes = max_bytes;
        }
        evaluator.on_cache_note = options.on_cache_note;
        Ok(Session {
            settings: settings.clone(),
            clean,
            targets,
            reference,
            provenance,
            notes,
            on_total: options.on_total,
            evaluator,
        })
    }

    /// Asked after every forward batch from now on; `true` stops the running plan with
    /// [`super::error::EvalError::Interrupted`] (the Python binding checks for Ctrl-C here).
    pub fn set_interrupt(&mut self, interrupted: Box<dyn Fn() -> bool + 'a>) {
        self.evaluator.interrupted = Some(interrupted);
    }

    /// The file's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn model(&self) -> &Model {
        self.evaluator.model()
    }

    /// The prompts circuits are evaluated on, in dataset order.
    pub fn clean_prompts(&self) -> &[TokenizedPrompt] {
        &self.clean
    }

    /// The tokens each evaluated prompt is scored on, in dataset order.
    pub fn targets(&self) -> &[Targets] {
        &self.targets
    }

    /// The prompts reference values are taken from.
    pub fn reference_prompts(&self) -> &[TokenizedPrompt] {
        &self.reference
    }

    /// Where the numbers come from, for reports.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// Position names that share a token in some prompt (END and S4 in "1 2 3 4").
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// `align by label`: the slots of every evaluated and reference prompt; `None` when
    /// positions align by token index (or the ablation reads no reference).
    pub fn label_alignment(&self) -> Option<&LabelAlignment> {
        self.evaluator.label_alignment.as_ref()
    }

    /// Forward passes over a whole prompt set so far (docs/performance.md).
    pub fn forward_passes(&self) -> usize {
        self.evaluator.forward_passes
    }

    /// Compiles a circuit for the evaluated prompts.
    pub fn compile(&self, circuit: &BoundCircuit) -> miette::Result<Plan> {
        self.evaluator.compile(circuit)
    }

    /// The plan of the full model (keeps everything).
    pub fn full_plan(&self) -> Plan {
        self.evaluator.full_plan()
    }

    /// The plan of the empty circuit (keeps nothing).
    pub fn empty_plan(&self) -> Plan {
        self.evaluator.empty_plan()
    }

    /// Per-prompt metrics of one plan. Memoized by the plan's content; the reference pass and
    /// the full model's logits run once per session, however many plans are run.
    pub fn run(&mut self, plan: &Plan) -> miette::Result<PromptMetrics> {
        self.evaluator.run(plan)
    }

    /// Per-prompt metrics of the full model, the empty circuit and each of `circuits`.
    pub fn evaluate(&mut self, circuits: &[&BoundCircuit]) -> miette::Result<Evaluation> {
        if let Some(on_total) = &self.on_total {
            // Upper bound: reference, full, empty and one pass per circuit.
            on_total(self.reference.len() + self.clean.len() * (2 + circuits.len()));
        }
        // A QK edge whose key comes after its query in some prompts carries nothing there:
        // an error where that holds in every prompt, a note naming the prompts otherwise.
        let positions: Vec<&dyn PromptPositions> = self
            .clean
            .iter()
            .map(|p| p as &dyn PromptPositions)
            .collect();
        for circuit in circuits {
            for note in crate::plan::check_key_order(circuit, &positions)? {
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
            }
        }
        self.evaluator.evaluate(circuits)
    }

    /// The reference values covering `needs` (computed once, or read from the disk cache).
    pub fn reference_values(&mut self, needs: &ReferenceNeeds) -> miette::Result<&ReferenceValues> {
        self.evaluator.reference_values_for(needs)
    }
}

/// The circuits of `file` named in `names` (all of them, in file order, when `names` is
/// empty); a name the file does not define is an error with a did-you-mean.
pub fn select_circuits(file: &BoundFile, names: &[String]) -> miette::Result<Vec<BoundCircuit>> {
    if names.is_empty() {
        return Ok(file.circuits.clone());
    }
    names
        .iter()
        .map(|name| {
            file.circuits
                .iter()
                .find(|c| &c.name == name)
                .cloned()
                .ok_or_else(|| miette::Report::new(super::file::unknown_circuit(file, name)))
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
