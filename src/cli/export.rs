//! `circuit export`: one circuit of a `.circuit` file in another tool's format. So far the
//! EAP-IG / MIB graph JSON (`report::graph_json`, whose module doc says what maps exactly and
//! what the format loses). Reads the model's config only: no weights, no forward pass.

use std::path::PathBuf;
use std::process::ExitCode;

use circuit::measure::session::select_circuits;
use circuit::util::outputs::{check_outputs, Output};

use super::eval::{emit, resolve};
use super::settings::SettingArgs;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// The graph JSON of EAP-IG and MIB (`cfg`, `nodes`, `edges`), plus `positions` and `loss`.
    EapIgJson,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .circuit file.
    pub file: PathBuf,
    /// The circuit to export.
    #[arg(long = "circuit", value_name = "NAME")]
    pub circuit: String,
    #[arg(long, value_enum, default_value = "eap-ig-json")]
    pub format: ExportFormat,
    /// Write to this file (atomically) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// `--model` and `--set`, as the other commands take them (only the model's config.json
    /// is read).
    #[command(flatten)]
    pub settings: SettingArgs,
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let resolved = resolve(&args.file, &args.settings)?;
    let file = &resolved.file;
    let mut inputs = vec![args.file.clone()];
    inputs.extend(file.settings.input_paths());
    if let Some(path) = &args.output {
        check_outputs(&[Output { flag: "-o", path }], &inputs)?;
    }
    let circuit = select_circuits(file, std::slice::from_ref(&args.circuit))?.remove(0);
    let config = file.settings.model.config()?;
    let text = match args.format {
        ExportFormat::EapIgJson => {
            circuit::report::graph_json::circuit_graph(&circuit, &file.settings, &config)?.to_json()
        }
    };
    emit(&text, args.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
