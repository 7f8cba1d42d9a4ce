//! Every error of the data stage: reading datasets, generating built-ins, tokenizing prompts and
//! resolving positions. Each names the file and line, or the prompt (index and text), it is about.

use std::path::PathBuf;

use miette::Diagnostic;
use thiserror::Error;

use crate::model::tokenizer::TokenizerError;

/// Which set of a dataset a prompt belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptSet {
    /// The evaluated prompts.
    Clean,
    /// The reference ("corrupted") prompts whose statistics replace ablated activations.
    Reference,
}

/// A prompt as error messages name it: its set, its index in that set and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptId {
    pub set: PromptSet,
    pub index: usize,
    pub text: String,
}

impl std::fmt::Display for PromptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = match self.set {
            PromptSet::Clean => "prompt",
            PromptSet::Reference => "reference prompt",
        };
        write!(f, "{set} {} ({:?})", self.index, self.text)
    }
}

#[derive(Debug, Error, Diagnostic)]
pub enum DataError {
    #[error("unknown built-in dataset `{name}`")]
    #[diagnostic(code(circuit::data::unknown_dataset), help("{help}"))]
    UnknownBuiltin { name: String, help: String },

    #[error("dataset `{dataset}`: {message}")]
    #[diagnostic(code(circuit::data::bad_parameter), help("{help}"))]
    BadParameter {
        dataset: String,
        message: String,
        help: String,
    },

    #[error("cannot read dataset {path}")]
    #[diagnostic(code(circuit::data::read))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}:{line}: {message}")]
    #[diagnostic(
        code(circuit::data::jsonl),
        help("the record format is described in docs/datasets.md")
    )]
    Jsonl {
        path: PathBuf,
        /// One-based line number.
        line: usize,
        message: String,
        /// The file, so the report shows the line.
        #[source_code]
        source_code: std::sync::Arc<miette::NamedSource<String>>,
        /// The line, or the point in it where JSON parsing stopped.
        #[label("here")]
        at: miette::SourceSpan,
    },

    #[error("{path} holds no prompts")]
    #[diagnostic(
        code(circuit::data::empty),
        help("a dataset file holds one JSON record per line (docs/datasets.md)")
    )]
    Empty { path: PathBuf },

    #[error("{prompt}: slot `{label}` {message}")]
    #[diagnostic(
        code(circuit::data::bad_span),
        help("spans are [start, end) in characters (Unicode code points) of the prompt, as Python's str indices count them")
    )]
    BadSpan {
        prompt: PromptId,
        label: String,
        message: String,
    },

    #[error("{prompt}: label `{label}` is reserved")]
    #[diagnostic(
        code(circuit::data::reserved_label),
        help("END and BOS are positions every prompt has; name the slot differently")
    )]
    ReservedLabel { prompt: PromptId, label: String },

    #[error("{prompt}: no {what}")]
    #[diagnostic(
        code(circuit::data::missing_answer),
        help("every evaluated prompt needs an answer and a distractor: the metric reads their logits at END (reference prompts need none)")
    )]
    MissingAnswer {
        prompt: PromptId,
        what: &'static str,
    },

    #[error("{prompt} has no label `{label}`, which every evaluated prompt has; `align by label` reads it (reference statistics are matched per labelled slot)")]
    #[diagnostic(
        code(circuit::data::reference_label),
        help("label `{label}` in every reference prompt, or use `align by position` (the default), which reads no reference prompt's labels")
    )]
    ReferenceLabel { prompt: PromptId, label: String },

    #[error("{prompt}: {what} is empty")]
    #[diagnostic(code(circuit::data::empty_text))]
    EmptyText {
        prompt: PromptId,
        what: &'static str,
    },

    #[error(
        "{prompt}: the dataset has no label `{label}` here (labels of this prompt: {available})"
    )]
    #[diagnostic(
        code(circuit::data::missing_label),
        help("positions name the slots a dataset labels; `circuit dataset inspect` shows them per prompt")
    )]
    MissingLabel {
        prompt: PromptId,
        label: String,
        available: String,
    },

    #[error("{prompt}: position {position} is token {index}, outside the prompt's {len} tokens (0..={last})")]
    #[diagnostic(
        code(circuit::data::position_outside_prompt),
        help("an offset must stay inside every prompt; `circuit dataset inspect` shows each prompt's tokens")
    )]
    OutsidePrompt {
        prompt: PromptId,
        position: String,
        index: i64,
        len: usize,
        last: usize,
    },

    #[error(
        "{prompt}: range {start_name}..{end_name} is reversed here (token {start} > token {end})"
    )]
    #[diagnostic(
        code(circuit::data::reversed_range),
        help("a range runs from its earlier position to its later one, both included")
    )]
    ReversedRange {
        prompt: PromptId,
        start_name: String,
        end_name: String,
        start: usize,
        end: usize,
    },

    #[error("{prompt}: BOS is named, but this tokenizer adds no BOS token")]
    #[diagnostic(
        code(circuit::data::no_bos),
        help("some tokenizers (GPT-2's) add no BOS; token 0 is then the prompt's first text token, which a label names")
    )]
    NoBos { prompt: PromptId },

    #[error("{prompt}: slot `{label}` covers no token")]
    #[diagnostic(
        code(circuit::data::slot_without_tokens),
        help(
            "the tokenizer dropped the slot's text (whitespace only?); label text the model sees"
        )
    )]
    SlotWithoutTokens { prompt: PromptId, label: String },

    #[error("{prompt}: the {what} {text:?} is {count} tokens under this tokenizer: {tokens}")]
    #[diagnostic(
        code(circuit::data::multi_token_answer),
        help("metrics read one next-token logit at END, so answers and distractors must be single tokens (usually with a leading space)")
    )]
    MultiTokenAnswer {
        prompt: PromptId,
        what: &'static str,
        text: String,
        count: usize,
        tokens: String,
    },

    #[error("{prompt}: {what} {text:?} is not in the tokenizer's vocabulary: it becomes the unknown token {token}")]
    #[diagnostic(
        code(circuit::data::unknown_answer),
        help("the metric would read the unknown token's logit, the same for every word the tokenizer does not know; pick a word of its vocabulary (`circuit dataset inspect` shows what each answer becomes)")
    )]
    UnknownAnswer {
        prompt: PromptId,
        what: &'static str,
        text: String,
        token: String,
    },

    #[error("{prompt}: cannot tokenize")]
    #[diagnostic(code(circuit::data::tokenize))]
    Tokenize {
        prompt: PromptId,
        #[source]
        source: TokenizerError,
    },

    #[error("{prompt}: tokenizes to no tokens")]
    #[diagnostic(code(circuit::data::no_tokens))]
    NoTokens { prompt: PromptId },

    #[error("{evaluated} is {evaluated_len} tokens but {reference} is {reference_len} tokens; reference statistics are taken per token position, so the lengths must be equal")]
    #[diagnostic(
        code(circuit::data::reference_length),
        help("add `align by label` to the file (statistics matched per labelled slot, not per token index), or use reference prompts from the same template whose fillers tokenize to the same lengths")
    )]
    ReferenceLength {
        /// The prompts as messages name them ([`PromptId`]'s form for a file's prompts).
        evaluated: String,
        evaluated_len: usize,
        reference: String,
        reference_len: usize,
    },

    #[error("dataset {dataset} has no prompts to evaluate")]
    #[diagnostic(code(circuit::data::no_prompts))]
    NoPrompts { dataset: String },

    #[error("the dataset has {clean} prompts but {reference} paired reference prompts")]
    #[diagnostic(code(circuit::data::reference_count))]
    ReferenceCount { clean: usize, reference: usize },

    #[error("the built-in lexicon (src/data/lexicon.json) is invalid: {message}")]
    #[diagnostic(code(circuit::data::lexicon))]
    Lexicon { message: String },
}
