//! `circuit check`: parse and resolve `.circuit` files against their model's config.json and
//! their dataset's labels; print every error and warning.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use circuit::resolve::{load_file, RealEnvironment};

use super::format::{Format, TextOrJsonArgs};

/// Width diagnostics are wrapped to.
const WIDTH: usize = 100;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .circuit files to check, or folders (every *.circuit under them, sorted).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    // Of `--model`, only the config.json is read.
    #[command(flatten)]
    pub settings: super::settings::SettingArgs,
    /// `--format json` (or `--json`) prints diagnostics as JSON on stdout (one array for all
    /// files) instead of rendering them.
    #[command(flatten)]
    pub format: TextOrJsonArgs,
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let options = args.settings.options()?;
    let files = super::files::collect_files(&args.files)?;
    let as_json = args.format.format() == Format::Json;
    let color = !as_json && std::io::stderr().is_terminal();
    let mut any_error = false;
    let mut json = Vec::new();
    let (mut errors, mut warnings) = (0, 0);
    for path in &files {
        let diagnostics = match load_file(path, &RealEnvironment, &options) {
            Ok(resolved) => resolved.warnings,
            Err(diagnostics) => {
                any_error = true;
                diagnostics
            }
        };
        errors += diagnostics.error_count();
        warnings += diagnostics.warning_count();
        for d in &diagnostics.items {
            if as_json {
                let mut value = d.to_json();
                if value["file"].is_null() {
                    value["file"] = serde_json::Value::String(path.display().to_string());
                }
                json.push(value);
            } else if color {
                eprintln!("{}", d.render_colored(WIDTH));
            } else {
                eprintln!("{}", d.render_plain(WIDTH));
            }
        }
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).expect("diagnostics serialize")
        );
    } else {
        let files = files.len();
        eprintln!(
            "checked {files} file{}: {errors} error{}, {warnings} warning{}",
            if files == 1 { "" } else { "s" },
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" },
        );
    }
    Ok(if any_error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
