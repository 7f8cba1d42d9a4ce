//! `circuit scores`: attribution scores of every head, MLP, QK edge or path edge of a file's
//! model on its dataset, ranked (docs/semantics.md, "Attribution scores").

use std::path::PathBuf;
use std::process::ExitCode;

use circuit::attribute::run::{score_session, Request, ScoreReport};
use circuit::attribute::{check_request, export, Granularity, Method};
use circuit::measure::{metric_name, Session, SessionOptions};
use circuit::report::SettingsReport;
use circuit::scan::{Engine, ScanError, ScanGranularity, ScanRequest, Shard};

use super::eval::{emit, emit_with, resolve, write_picture};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    Eap,
    EapIg,
    Attention,
    Qkvo,
    Dla,
    /// The exact effect of ablating each component alone (an ablation scan, as `circuit scan`).
    Exact,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GranularityArg {
    Nodes,
    QkEdges,
    PathEdges,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoresFormat {
    Text,
    Json,
    /// The EAP-IG / MIB graph JSON (needs --granularity path-edges; scores summed over positions).
    EapIgJson,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .circuit file whose model, dataset, reference set, ablation and metric are used.
    pub file: PathBuf,
    /// Scores relative to this circuit (its ablations in place) instead of the full model.
    #[arg(long = "circuit", value_name = "NAME")]
    pub circuit: Option<String>,
    /// How scores are computed.
    #[arg(long, value_enum, default_value = "eap")]
    pub method: MethodArg,
    /// Integration points of eap-ig.
    #[arg(long, default_value_t = 5, value_name = "M")]
    pub steps: usize,
    /// What is scored.
    #[arg(long, value_enum, default_value = "nodes")]
    pub granularity: GranularityArg,
    /// Only scores whose query slot (a node's position) is SLOT, e.g. END.
    #[arg(long = "query", value_name = "SLOT")]
    pub query: Option<String>,
    /// Show the K largest scores by |score| (text default: 20; json default: all).
    #[arg(long, value_name = "K")]
    pub top: Option<usize>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ScoresFormat,
    /// Write the report to this file (atomically) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub settings: super::settings::SettingArgs,
    /// Also draw the scores as an SVG heat map into this file (atomically).
    #[arg(long, value_name = "OUT.svg")]
    pub svg: Option<PathBuf>,
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    super::scan::check_top(args.top, "scores")?;
    let method = match args.method {
        MethodArg::Eap => Method::Eap,
        MethodArg::EapIg => Method::EapIg { steps: args.steps },
        MethodArg::Attention => Method::Attention,
        MethodArg::Qkvo => Method::Qkvo,
        MethodArg::Dla => Method::Dla,
        MethodArg::Exact => Method::Exact,
    };
    let granularity = match args.granularity {
        GranularityArg::Nodes => Granularity::Nodes,
        GranularityArg::QkEdges => Granularity::QkEdges,
        GranularityArg::PathEdges => Granularity::PathEdges,
    };
    if args.format == ScoresFormat::EapIgJson && granularity != Granularity::PathEdges {
        return Err(miette::miette!(
            code = "circuit::scores::export_needs_path_edges",
            help = "add --granularity path-edges (the graph's edges are path edges)",
            "--format eap-ig-json writes a graph of path edges"
        ));
    }
    let resolved = resolve(&args.file, &args.settings)?;
    let file = &resolved.file;
    let relative_to = match &args.circuit {
        Some(name) => Some(
            circuit::measure::session::select_circuits(file, std::slice::from_ref(name))?.remove(0),
        ),
        None => None,
    };
    if method == Method::Exact {
        return exact(&args, file, granularity, relative_to);
    }
    // Bad requests cost no forward pass.
    check_request(
        method,
        granularity,
        metric_name(file.settings.metric),
        relative_to.is_some(),
    )?;

    // Every gradient pass (a few prompts through the forward and backward, `m` of them under
    // eap-ig) is counted against the total the attribution foresees.
    let progress = super::progress::PassProgress::start(&args.file.display().to_string());
    let options = SessionOptions {
        disk_cache: circuit::measure::disk_cache::cache_dir(),
        ..Default::default()
    };
    let mut session = Session::open(file, options)?;
    let tick = |done: usize, total: usize| progress.pass(done, total);
    let on_pass = progress
        .shown()
        .then_some(&tick as &(dyn Fn(usize, usize) + Sync));
    let with_nodes = args.format == ScoresFormat::EapIgJson;
    let result = score_session(
        &mut session,
        Request {
            method,
            granularity,
            embed_edges: false,
        },
        relative_to.as_ref(),
        with_nodes,
        on_pass,
    );
    progress.finish();
    let mut report = result?;
    let settings = SettingsReport::new(session.settings(), session.provenance());
    print_report(&args, &mut report, &settings, &file.settings.model)
}

/// `--method exact`: the scan's numbers, printed as every other method's.
fn exact(
    args: &Args,
    file: &circuit::resolve::bound::BoundFile,
    granularity: Granularity,
    relative_to: Option<circuit::resolve::bound::BoundCircuit>,
) -> miette::Result<ExitCode> {
    let granularity = match granularity {
        Granularity::Nodes => ScanGranularity::Nodes,
        Granularity::QkEdges => ScanGranularity::QkEdges,
        Granularity::PathEdges => return Err(ScanError::PathEdges.into()),
    };
    let request = ScanRequest {
        granularity,
        base: relative_to,
        shard: Shard::WHOLE,
        engine: Engine::Incremental,
    };
    let result = super::scan::run_scan(
        file,
        request,
        &super::cache::CacheArgs::default(),
        &args.file.display().to_string(),
    )?;
    let mut report = result.score_report();
    print_report(
        args,
        &mut report,
        &result.settings_report(),
        &file.settings.model,
    )
}

/// Filters by `--query`, then prints (and draws) the report as `--format` and `--svg` say
/// (`model`: the scored model, whose wiring the graph JSON's `cfg` states).
fn print_report(
    args: &Args,
    report: &mut ScoreReport,
    settings: &SettingsReport,
    model: &circuit::model::ModelSource,
) -> miette::Result<ExitCode> {
    if let Some(slot) = &args.query {
        if !report.set.slots.contains(slot) {
            return Err(miette::miette!(
                code = "circuit::scores::unknown_slot",
                help = format!("the prompts' slots are: {}", report.set.slots.join(", ")),
                "no token of these prompts is at slot `{slot}`"
            ));
        }
        report.set.entries.retain(|e| &e.query == slot);
    }
    let (report, settings) = (&*report, settings);
    let text = match args.format {
        ScoresFormat::Text => Some(circuit::report::scores::to_text(
            report,
            settings,
            args.top.unwrap_or(20),
        )),
        // Streamed as it is made, below.
        ScoresFormat::Json => None,
        ScoresFormat::EapIgJson => Some(export::eap_ig_json(
            report
                .nodes_for_export
                .as_ref()
                .expect("asked for node scores"),
            &report.set,
            export::GraphConfig::of(&model.config()?),
            args.top,
        )),
    };
    // The picture first: a bad --svg path fails the command before any report is printed.
    if let Some(path) = &args.svg {
        let title = format!("circuit scores {}", args.file.display());
        let svg = circuit::report::scores::heat_map(report, &title, 4);
        write_picture(path, &svg, "score heat map")?;
    }
    match text {
        Some(text) => emit(&text, args.output.as_deref())?,
        None => emit_with(args.output.as_deref(), |out| {
            circuit::report::scores::write_json(out, report, settings, args.top)
        })?,
    }
    Ok(ExitCode::SUCCESS)
}
