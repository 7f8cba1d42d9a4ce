//! `circuit dataset import`: another tool's prompt file as our dataset JSONL
//! (docs/datasets.md, "Importing auto-circuit prompt files"). The work is
//! `circuit::data::autocircuit`'s; this is arguments and printing.

use std::path::PathBuf;
use std::process::ExitCode;

use miette::IntoDiagnostic;

use circuit::data::autocircuit::{import, ImportOptions};
use circuit::data::jsonl;
use circuit::model::{ModelSource, Tokenizer};
use circuit::util::outputs::{check_outputs, Output};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// An auto-circuit prompt file: {"prompts": [{"clean", "corrupt", "answers",
    /// "wrong_answers"}], "seq_labels", "word_idxs"}.
    pub file: PathBuf,
    /// Model folder (or built-in name) whose tokenizer turns token indices into spans; it must
    /// be the tokenizer the file's indices were counted with (default: the built-in model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<String>,
    /// The file's indices count no prepended BOS (auto-circuit's `prepend_bos=False`).
    #[arg(long)]
    pub no_bos: bool,
    /// Leave this name of `word_idxs` or `seq_labels` out (repeatable).
    #[arg(long = "drop", value_name = "NAME")]
    pub drop: Vec<String>,
    /// Write the JSONL to this file (atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn execute(args: ImportArgs) -> miette::Result<ExitCode> {
    if let Some(path) = &args.output {
        check_outputs(
            &[Output { flag: "-o", path }],
            std::slice::from_ref(&args.file),
        )?;
    }
    let model = match &args.model {
        Some(spec) => ModelSource::parse(spec, &std::env::current_dir().into_diagnostic()?)?,
        None => ModelSource::default_model(),
    };
    let tokenizer = Tokenizer::open(&model)?;
    let options = ImportOptions {
        prepend_bos: !args.no_bos,
        drop: args.drop.clone(),
    };
    let imported = import(&args.file, &tokenizer, &options)?;
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    let text = jsonl::write(&imported.dataset);
    super::eval::emit(&text, args.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
