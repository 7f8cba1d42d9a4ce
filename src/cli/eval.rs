//! `circuit eval`: faithfulness of each circuit of a file against the full model and the empty
//! circuit, as a table, JSON or markdown, and with `--svg` as a chart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use circuit::measure::file::{run_file, FileRun};
use circuit::measure::SessionOptions;

use super::format::{Format, FormatArgs};
use super::progress::Progress;
use circuit::model::ModelSource;
use circuit::report::FileReport;
use circuit::resolve::{load_file, RealEnvironment, ResolveOptions, Resolved};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .circuit file to evaluate.
    pub file: PathBuf,
    /// Evaluate only this circuit (repeatable); default: every circuit of the file.
    #[arg(long = "circuit", value_name = "NAME")]
    pub circuits: Vec<String>,
    #[command(flatten)]
    pub format: FormatArgs,
    /// Write the report to this file (atomically) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Use this model folder instead of the file's `model` setting.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Also draw the faithfulness of every circuit as an SVG chart into this file (atomically),
    /// besides the normal report.
    #[arg(long, value_name = "OUT.svg")]
    pub svg: Option<PathBuf>,
}

/// Reads and resolves a `.circuit` file; warnings go to stderr, errors become the result.
pub fn resolve(path: &Path, model: Option<&Path>) -> miette::Result<Resolved> {
    let options = ResolveOptions {
        model_override: model.map(|m| ModelSource::Dir(m.to_path_buf())),
    };
    let resolved = load_file(path, &RealEnvironment, &options).map_err(miette::Report::new)?;
    if !resolved.warnings.is_empty() {
        eprintln!("{}", resolved.warnings.render_plain(100));
    }
    Ok(resolved)
}

/// Evaluates circuits of a resolved file, with progress on stderr (`super::progress`).
pub fn evaluate(resolved: &Resolved, circuits: &[String]) -> miette::Result<FileRun> {
    let count = if circuits.is_empty() {
        resolved.file.circuits.len()
    } else {
        circuits.len()
    };
    let progress = Progress::start(&format!(
        "{count} circuit{}",
        if count == 1 { "" } else { "s" }
    ));
    let (on_batch, on_total) = progress.callbacks();
    let options = SessionOptions {
        on_batch,
        on_total,
        disk_cache: circuit::measure::disk_cache::cache_dir(),
    };
    let result = run_file(&resolved.file, circuits, options);
    progress.finish();
    result
}

/// Writes a picture to `path` atomically; `what` names it in the error.
pub fn write_picture(path: &Path, svg: &str, what: &str) -> miette::Result<()> {
    // A missing folder is the usual mistake; say so rather than show the temporary file's
    // name that the atomic write failed to create in it.
    if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
        if !folder.is_dir() {
            return Err(miette::miette!(
                code = "circuit::report::write_svg",
                help = "create the folder first, or write the picture elsewhere",
                "cannot write the {what} to {}: the folder {} does not exist",
                path.display(),
                folder.display()
            ));
        }
    }
    circuit::util::write_atomic(path, svg.as_bytes()).map_err(|e| {
        miette::miette!(
            code = "circuit::report::write_svg",
            help = "check that the folder is writable",
            "cannot write the {what} to {}: {e}",
            path.display()
        )
    })
}

/// Writes `text` to `output` atomically, or to stdout.
pub fn emit(text: &str, output: Option<&Path>) -> miette::Result<()> {
    match output {
        Some(path) => circuit::util::write_atomic(path, text.as_bytes()).map_err(|e| {
            miette::miette!(
                code = "circuit::eval::write",
                "cannot write {}: {e}",
                path.display()
            )
        }),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let resolved = resolve(&args.file, args.model.as_deref())?;
    let run = evaluate(&resolved, &args.circuits)?;
    let report = FileReport::new(
        &args.file.display().to_string(),
        &resolved.file.settings,
        &run,
    );
    let text = match args.format.format() {
        Format::Json => report.to_json(),
        Format::Markdown => report.to_markdown(),
        Format::Text => report.to_text(),
    };
    // The chart first: a bad --svg path fails the command before any report is printed.
    if let Some(path) = &args.svg {
        let chart = circuit::report::svg::faithfulness_chart(&report);
        write_picture(path, &chart, "faithfulness chart")?;
    }
    emit(&text, args.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
