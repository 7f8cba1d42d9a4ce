//! `circuit discover`: a circuit reaching a target faithfulness, found by ranking candidates by
//! an attribution score and checking by exact evaluations, written as a `.circuit` file that
//! `circuit test` re-checks (docs/semantics.md, "Discovery").

use std::path::PathBuf;
use std::process::ExitCode;

use circuit::attribute::{Granularity, Method};
use circuit::discover::{self, invocation::Invocation};
use circuit::measure::{Session, SessionOptions};
use circuit::report::SettingsReport;
use circuit::util::outputs::Output;

use super::cache::CacheArgs;
use super::eval::{emit, resolve, write_picture};
use super::progress::Progress;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankArg {
    EapIg,
    Eap,
    /// The exact effect of ablating each candidate alone (the `circuit scan` engine).
    Exact,
    Qkvo,
    Attention,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GranularityArg {
    Nodes,
    QkEdges,
    /// Path edges upstream -> downstream input (embed, heads, MLPs into each later head's q, k,
    /// v, each MLP and the logits) at each position: the found circuit is edge-complete.
    PathEdges,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoverFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .circuit file whose settings (model, dataset, reference, ablation, alignment, metric)
    /// define the search.
    pub file: PathBuf,
    /// Search only inside this circuit of the file (the components it keeps).
    #[arg(long = "circuit", value_name = "BASE")]
    pub circuit: Option<String>,
    /// The faithfulness the found circuit must reach, in (0, 1.5].
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub target: f64,
    /// The score candidates are ranked by (relative to the full model).
    #[arg(long, value_enum, default_value = "eap-ig")]
    pub rank: RankArg,
    /// Integration points of eap-ig.
    #[arg(long, default_value_t = 5, value_name = "M")]
    pub steps: usize,
    /// Candidates: heads × query slots (and MLPs × slots under `ablate heads and mlps`), QK
    /// edges key slot → query slot of every head (MLPs still as nodes), or path edges at each
    /// slot (an edge-complete circuit).
    #[arg(long, value_enum, default_value = "nodes")]
    pub granularity: GranularityArg,
    /// Keep as QK-edge candidates only (head, key -> query) pairs whose mean attention is at
    /// least T.
    #[arg(long, value_name = "T")]
    pub attention_threshold: Option<f64>,
    /// Write the found circuit as a .circuit file (atomically).
    #[arg(short = 'o', long = "output", value_name = "FOUND.circuit")]
    pub output: Option<PathBuf>,
    /// Overwrite an existing -o file.
    #[arg(long)]
    pub force: bool,
    /// When the target is out of reach, write the best circuit found instead of failing.
    #[arg(long)]
    pub best_effort: bool,
    /// Draw the faithfulness-against-size curve into this SVG file (atomically).
    #[arg(long, value_name = "OUT.svg")]
    pub svg: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: DiscoverFormat,
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let rank = match args.rank {
        RankArg::EapIg => Method::EapIg { steps: args.steps },
        RankArg::Eap => Method::Eap,
        RankArg::Exact => Method::Exact,
        RankArg::Qkvo => Method::Qkvo,
        RankArg::Attention => Method::Attention,
    };
    let granularity = match args.granularity {
        GranularityArg::Nodes => Granularity::Nodes,
        GranularityArg::QkEdges => Granularity::QkEdges,
        GranularityArg::PathEdges => Granularity::PathEdges,
    };
    let invocation = Invocation {
        file: args.file.clone(),
        base: args.circuit.clone(),
        target: args.target,
        rank,
        granularity,
        attention_threshold: args.attention_threshold,
        output: args.output.clone(),
        force: args.force,
        best_effort: args.best_effort,
        scan_cache: args.cache.cache()?,
    };
    // Everything that can be refused is refused before the model is loaded.
    invocation.check()?;
    let resolved = resolve(&args.file, &super::settings::SettingArgs::default())?;
    let file = &resolved.file;
    let svg: Vec<Output> = args
        .svg
        .as_deref()
        .map(|path| Output {
            flag: "--svg",
            path,
        })
        .into_iter()
        .collect();
    let prepared = invocation.prepare(file, &svg)?;

    let disk_cache = args.cache.cache()?;
    let progress = Progress::start_search(&args.file.display().to_string());
    let (on_batch, _) = progress.callbacks();
    let options = SessionOptions {
        on_batch,
        on_total: None,
        disk_cache_max_bytes: disk_cache.as_ref().map(|c| c.max_bytes),
        disk_cache: disk_cache.map(|c| c.dir),
        on_cache_note: args.cache.verbose.then(|| {
            let progress = progress.clone();
            Box::new(move |note: &str| progress.println(&format!("cache: {note}")))
                as Box<dyn Fn(&str)>
        }),
    };
    let mut session = Session::open(file, options)?;
    // How many evaluations the search needs is known only as it goes: progress counts them.
    let on_evaluation = |n: usize| progress.evaluated(n);
    let result = invocation.run(&mut session, &prepared, Some(&on_evaluation));
    progress.finish();
    let found = result?;
    let text = invocation.found_file(&session, &found, &prepared)?;

    let settings = SettingsReport::new(session.settings(), session.provenance());
    let shown = args.file.display().to_string();
    let written = args.output.as_ref().map(|p| p.display().to_string());
    let render = match args.format {
        DiscoverFormat::Text => discover::report::to_text,
        DiscoverFormat::Json => discover::report::to_json,
    };
    let report = render(
        &found,
        &settings,
        session.provenance(),
        &shown,
        written.as_deref(),
        &text,
    );
    if let Some(path) = &args.svg {
        let chart = discover::chart::curve_chart(&found, &format!("circuit discover {shown}"));
        write_picture(path, &chart, "discovery curve")?;
    }
    invocation.write(&text)?;
    emit(&report, None)?;
    Ok(ExitCode::SUCCESS)
}
