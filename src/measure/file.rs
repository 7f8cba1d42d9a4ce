//! A resolved `.circuit` file's circuits evaluated end to end ([`run_file`], on a
//! [`Session`]), and how reports name where the numbers came from.

use super::error::EvalError;
use super::evaluate::Evaluation;
use super::session::{select_circuits, Session, SessionOptions};
use crate::data::{DatasetSource, TokenizedPrompt};
use crate::plan::PromptPositions;
use crate::resolve::bound::{BoundCircuit, BoundFile, ReferenceSet};

/// Where the numbers came from, for reports.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Settings overridden from the command line (`--set metric=prob`), as written (absent
    /// from JSON when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
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

pub fn reference_name(reference: &ReferenceSet, dataset: &DatasetSource) -> String {
    match reference {
        ReferenceSet::Corrupt => format!("{}: reference prompts", dataset_name(dataset)),
        ReferenceSet::Clean => format!("{}: clean prompts", dataset_name(dataset)),
        ReferenceSet::Dataset(other) => format!("{}: clean prompts", dataset_name(other)),
    }
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

/// Evaluates `circuit_names` (all of the file's circuits when empty) of `file`, plus the full
/// model and the empty circuit, in a new [`Session`].
pub fn run_file(
    file: &BoundFile,
    circuit_names: &[String],
    options: SessionOptions,
) -> miette::Result<FileRun> {
    // Names first: a typo costs no model load.
    let circuits = select_circuits(file, circuit_names)?;
    let mut session = Session::open(file, options)?;
    run_circuits(&mut session, circuits)
}

/// Evaluates `circuits` (from [`select_circuits`]), the full model and the empty circuit in an
/// opened session: [`run_file`] after the session is open, for callers that set it up further
/// ([`Session::set_interrupt`]).
pub fn run_circuits(session: &mut Session, circuits: Vec<BoundCircuit>) -> miette::Result<FileRun> {
    let evaluation = session.evaluate(&circuits.iter().collect::<Vec<_>>())?;
    Ok(FileRun {
        provenance: session.provenance().clone(),
        circuits,
        evaluation,
        notes: session.notes().to_vec(),
    })
}

/// The error for `--circuit NAME` naming no circuit of the file, with a did-you-mean.
pub fn unknown_circuit(file: &BoundFile, name: &str) -> EvalError {
    let names: Vec<&str> = file.circuits.iter().map(|c| c.name.as_str()).collect();
    let closest = crate::util::did_you_mean(name, names.iter().copied());
    let help = match closest {
        Some(n) => format!("did you mean `{n}`? the file defines: {}", names.join(", ")),
        None if names.is_empty() => "the file defines no circuit".to_string(),
        None => format!("the file defines: {}", names.join(", ")),
    };
    EvalError::UnknownCircuit {
        name: name.to_string(),
        help,
    }
}
