//! `circuit scan`: the exact effect of ablating each head, MLP or QK edge alone (from the full
//! model, or removing one kept component of a circuit at a time), ranked like `circuit scores`;
//! `--shard i/N` computes a part, `--merge` joins the parts. The work is `circuit::scan`'s.

use std::path::PathBuf;
use std::process::ExitCode;

use circuit::measure::session::select_circuits;
use circuit::measure::{Session, SessionOptions};
use circuit::scan::{merge, Engine, ScanGranularity, ScanOptions, ScanRequest, ScanResult, Shard};
use circuit::util::outputs::{check_outputs, Output};

use super::cache::CacheArgs;
use super::eval::{emit, emit_with, write_picture};
use super::progress::Progress;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GranularityArg {
    Nodes,
    QkEdges,
    Mlps,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineArg {
    /// Recompute only the rows and layers an ablation changes (default).
    Incremental,
    /// One ablated forward of every prompt per candidate (slow; for checking).
    Naive,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .circuit file whose model, dataset, reference set, ablation and metric are used
    /// (not with --merge).
    #[arg(required_unless_present = "merge")]
    pub file: Option<PathBuf>,
    /// Remove one kept component of this circuit at a time instead of ablating components of
    /// the full model.
    #[arg(long = "circuit", value_name = "BASE")]
    pub circuit: Option<String>,
    /// What is ablated, one at a time.
    #[arg(long, value_enum, default_value = "nodes")]
    pub granularity: GranularityArg,
    /// Show the K largest effects by |score| (text default: 20; json default: all).
    #[arg(long, value_name = "K")]
    pub top: Option<usize>,
    #[arg(long, value_enum)]
    pub format: Option<ScanFormat>,
    /// Also draw the effects as an SVG heat map into this file (atomically).
    #[arg(long, value_name = "OUT.svg")]
    pub svg: Option<PathBuf>,
    /// Compute part i of N (every N-th candidate) and write it as a part file for --merge.
    #[arg(long, value_name = "i/N")]
    pub shard: Option<String>,
    /// Join part files of one scan (written by --shard) into its report.
    #[arg(long, value_name = "PART.json", num_args = 1.., conflicts_with_all = ["file", "shard", "circuit"])]
    pub merge: Vec<PathBuf>,
    /// Write the report (or the part) to this file (atomically) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub settings: super::settings::SettingArgs,
    /// How candidates are computed (both give the same numbers to f32 rounding).
    #[arg(long, value_enum, default_value = "incremental")]
    pub engine: EngineArg,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// `--top 0` shows nothing: refused (coded), as `circuit scores` refuses it.
pub fn check_top(top: Option<usize>, command: &str) -> miette::Result<()> {
    if top == Some(0) {
        return Err(miette::miette!(
            code = format!("circuit::{command}::top_zero"),
            help = "pass --top 1 or more, or leave it out",
            "--top 0 would show no score"
        ));
    }
    Ok(())
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    check_top(args.top, "scan")?;
    let shard = args.shard.as_deref().map(Shard::parse).transpose()?;
    if shard.is_some() && (args.svg.is_some() || args.top.is_some() || args.format.is_some()) {
        return Err(miette::miette!(
            code = "circuit::scan::shard_output",
            help = "a part holds every candidate of its shard; pass --format, --top and --svg to `circuit scan --merge`",
            "--shard writes a part file, not a report"
        ));
    }
    let mut inputs: Vec<PathBuf> = args.merge.clone();
    let result = if args.merge.is_empty() {
        let file = args
            .file
            .as_ref()
            .expect("clap requires FILE without --merge");
        let resolved = resolve_scanned(file, &args.settings)?;
        inputs.push(file.clone());
        inputs.extend(resolved.file.settings.input_paths());
        check_paths(&args, &inputs)?;
        let request = ScanRequest {
            granularity: match args.granularity {
                GranularityArg::Nodes => ScanGranularity::Nodes,
                GranularityArg::QkEdges => ScanGranularity::QkEdges,
                GranularityArg::Mlps => ScanGranularity::Mlps,
            },
            base: match &args.circuit {
                Some(name) => {
                    Some(select_circuits(&resolved.file, std::slice::from_ref(name))?.remove(0))
                }
                None => None,
            },
            shard: shard.unwrap_or(Shard::WHOLE),
            engine: match args.engine {
                EngineArg::Incremental => Engine::Incremental,
                EngineArg::Naive => Engine::Naive,
            },
        };
        run_scan(
            &resolved.file,
            request,
            &args.cache,
            &file.display().to_string(),
        )?
    } else {
        check_paths(&args, &inputs)?;
        let mut parts = Vec::new();
        let names: Vec<String> = args.merge.iter().map(|p| p.display().to_string()).collect();
        for (path, name) in args.merge.iter().zip(&names) {
            let text = std::fs::read_to_string(path).map_err(|e| {
                miette::miette!(
                    code = "circuit::scan::read_part",
                    "cannot read {}: {e}",
                    path.display()
                )
            })?;
            parts.push(ScanResult::from_part_json(&text, name)?);
        }
        merge(parts, &names)?
    };
    if shard.is_some() {
        emit(&result.to_part_json(), args.output.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = result.score_report();
    let settings = result.settings_report();
    // The picture first: a bad --svg path fails the command before any report is printed.
    if let Some(path) = &args.svg {
        // From the scan itself, so that merged parts draw the unsharded scan's picture.
        let title = format!(
            "circuit scan: {} on {}",
            result.provenance.dataset, result.provenance.model
        );
        let svg = circuit::report::scores::heat_map(&report, &title, 4);
        write_picture(path, &svg, "scan heat map")?;
    }
    let output = args.output.as_deref();
    match args.format.unwrap_or(ScanFormat::Text) {
        ScanFormat::Text => emit(
            &circuit::report::scores::to_text(&report, &settings, args.top.unwrap_or(20)),
            output,
        )?,
        // Streamed as it is made, as `circuit scores` does.
        ScanFormat::Json => emit_with(output, |out| {
            circuit::report::scores::write_json(out, &report, &settings, args.top)
        })?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and resolves the scanned file, warnings to stderr; a file without circuits is no
/// matter here (a scan of the full model needs none), so that warning is left out.
fn resolve_scanned(
    path: &std::path::Path,
    settings: &super::settings::SettingArgs,
) -> miette::Result<circuit::resolve::Resolved> {
    let options = settings.options()?;
    let mut resolved =
        circuit::resolve::load_file(path, &circuit::resolve::RealEnvironment, &options)
            .map_err(miette::Report::new)?;
    resolved
        .warnings
        .items
        .retain(|w| !w.code.ends_with("::no_circuit"));
    if !resolved.warnings.is_empty() {
        eprintln!("{}", resolved.warnings.render_plain(100));
    }
    Ok(resolved)
}

/// Outputs are checked before any work: their folders exist, and none is an input.
fn check_paths(args: &Args, inputs: &[PathBuf]) -> miette::Result<()> {
    let outputs = [("-o", &args.output), ("--svg", &args.svg)];
    let outputs: Vec<Output> = outputs
        .iter()
        .filter_map(|(flag, path)| path.as_deref().map(|path| Output { flag, path }))
        .collect();
    check_outputs(&outputs, inputs)?;
    Ok(())
}

/// Opens a session on `file` and runs the scan, with progress (prompt runs: candidates ×
/// prompts) and the disk cache of `cache`.
pub fn run_scan(
    file: &circuit::resolve::bound::BoundFile,
    request: ScanRequest,
    cache: &CacheArgs,
    what: &str,
) -> miette::Result<ScanResult> {
    let disk_cache = cache.cache()?;
    let progress = Progress::start(&format!("scan of {what}"));
    let note = |progress: &Progress| {
        let progress = progress.clone();
        Box::new(move |note: &str| progress.println(&format!("cache: {note}"))) as Box<dyn Fn(&str)>
    };
    let options = SessionOptions {
        disk_cache_max_bytes: disk_cache.as_ref().map(|c| c.max_bytes),
        disk_cache: disk_cache.as_ref().map(|c| c.dir.clone()),
        on_cache_note: cache.verbose.then(|| note(&progress)),
        ..Default::default()
    };
    let mut session = Session::open(file, options)?;
    let (on_progress, on_total) = progress.callbacks();
    let scan_options = ScanOptions {
        disk_cache,
        on_total,
        on_progress,
        on_note: cache.verbose.then(|| note(&progress)),
    };
    let result = circuit::scan::scan(&mut session, request, &scan_options);
    progress.finish();
    result
}
