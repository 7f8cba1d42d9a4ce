//! `circuit eval`: faithfulness of each circuit of a file against the full model and the empty
//! circuit, as a table, JSON or markdown, and with `--svg` as a chart.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use circuit::measure::file::{run_file, FileRun};
use circuit::measure::SessionOptions;

use super::cache::CacheArgs;
use super::format::{Format, FormatArgs};
use super::progress::Progress;
use super::settings::SettingArgs;
use circuit::report::FileReport;
use circuit::resolve::{load_file, RealEnvironment, Resolved};
use circuit::util::outputs::{check_outputs, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .circuit files to evaluate, or folders (every *.circuit under them, sorted). Several
    /// files give one report per file, in that order (JSON: an array); the exit code is the
    /// worst of them.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Evaluate only this circuit (repeatable); default: every circuit of the file.
    #[arg(long = "circuit", value_name = "NAME")]
    pub circuits: Vec<String>,
    #[command(flatten)]
    pub format: FormatArgs,
    /// Write the report to this file (atomically) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Also draw the faithfulness of every circuit as an SVG chart into this file (atomically),
    /// besides the normal report (one file only).
    #[arg(long, value_name = "OUT.svg")]
    pub svg: Option<PathBuf>,
    /// Also write a self-contained HTML page (graphs over positions, attention patterns,
    /// faithfulness, settings) into this file (atomically; one file only).
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Reads and resolves a `.circuit` file under the command line's `--model` and `--set`;
/// warnings go to stderr, errors become the result.
pub fn resolve(path: &Path, settings: &SettingArgs) -> miette::Result<Resolved> {
    let options = settings.options()?;
    let resolved = load_file(path, &RealEnvironment, &options).map_err(miette::Report::new)?;
    if !resolved.warnings.is_empty() {
        eprintln!("{}", resolved.warnings.render_plain(100));
    }
    Ok(resolved)
}

/// Evaluates circuits of a resolved file, with progress on stderr (`super::progress`).
pub fn evaluate(
    resolved: &Resolved,
    circuits: &[String],
    cache: &CacheArgs,
) -> miette::Result<FileRun> {
    let disk_cache = cache.cache()?;
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
        disk_cache_max_bytes: disk_cache.as_ref().map(|c| c.max_bytes),
        disk_cache: disk_cache.map(|c| c.dir),
        on_cache_note: cache.verbose.then(|| {
            let progress = progress.clone();
            Box::new(move |note: &str| progress.println(&format!("cache: {note}")))
                as Box<dyn Fn(&str)>
        }),
    };
    let result = run_file(&resolved.file, circuits, options);
    progress.finish();
    result
}

/// The error (with `code`) for writing the `what` to `path` in a folder that does not exist.
pub fn missing_folder(path: &Path, what: &str, code: &'static str) -> Option<miette::Report> {
    let folder = path.parent().filter(|f| !f.as_os_str().is_empty())?;
    (!folder.is_dir()).then(|| {
        miette::miette!(
            code = code,
            help = format!("create the folder first, or write the {what} elsewhere"),
            "cannot write the {what} to {}: the folder {} does not exist",
            path.display(),
            folder.display()
        )
    })
}

/// Writes a picture to `path` atomically; `what` names it in the error.
pub fn write_picture(path: &Path, svg: &str, what: &str) -> miette::Result<()> {
    // A missing folder is the usual mistake; say so rather than show the temporary file's
    // name that the atomic write failed to create in it.
    if let Some(error) = missing_folder(path, what, "circuit::report::write_svg") {
        return Err(error);
    }
    circuit::util::write_atomic(path, svg.as_bytes()).map_err(|e| {
        miette::miette!(
            code = "circuit::report::write_svg",
            help = "check that the folder exists and is writable",
            "cannot write the {what} to {}: {e}",
            path.display()
        )
    })
}

/// Writes `text` to `output` atomically, or to stdout.
pub fn emit(text: &str, output: Option<&Path>) -> miette::Result<()> {
    emit_with(output, |out| out.write_all(text.as_bytes()))
}

/// [`emit`] of what `write` writes, streamed (to the file atomically, or to standard output)
/// instead of made whole first.
pub fn emit_with(
    output: Option<&Path>,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> miette::Result<()> {
    match output {
        Some(path) => circuit::util::write_atomic_with(path, write).map_err(|e| {
            miette::miette!(
                code = "circuit::eval::write",
                "cannot write {}: {e}",
                path.display()
            )
        }),
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            write(&mut out).and_then(|()| out.flush()).map_err(|e| {
                miette::miette!(
                    code = "circuit::eval::write",
                    "cannot write to standard output: {e}"
                )
            })
        }
    }
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    // Bad --set keys fail before any file is read.
    args.settings.options()?;
    let files = super::files::collect_files(&args.files)?;
    if let [file] = files.as_slice() {
        let text = evaluate_one(&args, file)?;
        emit(&text, args.output.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    if files.is_empty() {
        return Err(miette::miette!(
            code = "circuit::eval::no_files",
            help = "pass .circuit files, or folders holding them",
            "no .circuit file under {}",
            args.files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (flag, given) in [
        ("--svg", args.svg.is_some()),
        ("--html", args.html.is_some()),
    ] {
        if given {
            return Err(miette::miette!(
                code = "circuit::eval::one_picture",
                help = "evaluate one file at a time with {flag}",
                "{flag} draws one file, but {} files were given",
                files.len()
            ));
        }
    }
    // Every file in turn; one that fails is reported and the others still run.
    let mut reports = Vec::new();
    let mut failed = false;
    for file in &files {
        match evaluate_one(&args, file) {
            Ok(text) => reports.push(text),
            Err(report) => {
                failed = true;
                eprintln!("{report:?}");
            }
        }
    }
    let text = match args.format.format() {
        // One array of the file reports, each as `--json` prints it alone.
        Format::Json => {
            let values: Vec<serde_json::Value> = reports
                .iter()
                .map(|r| serde_json::from_str(r).expect("a report is JSON"))
                .collect();
            let mut text = serde_json::to_string_pretty(&values).expect("reports serialize");
            text.push('\n');
            text
        }
        Format::Markdown | Format::Text => reports.join("\n"),
    };
    emit(&text, args.output.as_deref())?;
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Evaluates one file as `args` say and returns its report in the chosen format (pictures
/// written on the way).
fn evaluate_one(args: &Args, file: &Path) -> miette::Result<String> {
    let resolved = resolve(file, &args.settings)?;
    // Before the evaluation: a bad path fails in a second, not after minutes of work.
    let mut inputs = vec![file.to_path_buf()];
    inputs.extend(resolved.file.settings.input_paths());
    let outputs = [
        ("-o", &args.output),
        ("--svg", &args.svg),
        ("--html", &args.html),
    ];
    let outputs: Vec<Output> = outputs
        .iter()
        .filter_map(|(flag, path)| path.as_deref().map(|path| Output { flag, path }))
        .collect();
    check_outputs(&outputs, &inputs)?;
    let run = evaluate(&resolved, &args.circuits, &args.cache)?;
    let report = FileReport::new(&file.display().to_string(), &resolved.file.settings, &run);
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
    if let Some(path) = &args.html {
        super::show::write_eval_page("eval", path, &resolved.file, &run, &report)?;
    }
    Ok(text)
}
