//! `circuit heads`: every head of a file's model characterized on its dataset: the attention
//! summary (previous-token, duplicate-token, induction) and, in a build with `--features
//! linalg`, the OV copying score and QK singular values (docs/semantics.md, "Head
//! characterization").

use std::path::PathBuf;
use std::process::ExitCode;

use circuit::heads::{characterize, report};
use circuit::measure::{Session, SessionOptions};
use circuit::util::outputs::{check_outputs, Output};

use super::eval::{emit, resolve};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadsFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .circuit file whose model and dataset are used (its circuits are not read).
    pub file: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    pub format: HeadsFormat,
    /// Write the report to this file (atomically) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub settings: super::settings::SettingArgs,
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let resolved = resolve(&args.file, &args.settings)?;
    // Never onto an input, checked before any forward pass.
    if let Some(path) = &args.output {
        let mut inputs = vec![args.file.clone()];
        inputs.extend(resolved.file.settings.input_paths());
        check_outputs(&[Output { flag: "-o", path }], &inputs)?;
    }
    let session = Session::open(&resolved.file, SessionOptions::default())?;
    let heads = characterize(&session)?;
    let name = args.file.display().to_string();
    let text = match args.format {
        HeadsFormat::Text => report::to_text(&name, &heads),
        HeadsFormat::Json => report::to_json(&name, &heads),
    };
    emit(&text, args.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
