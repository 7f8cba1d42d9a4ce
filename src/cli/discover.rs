//! `circuit discover`: a circuit reaching a target faithfulness, found by ranking candidates by
//! an attribution score and checking by exact evaluations, written as a `.circuit` file that
//! `circuit test` re-checks (docs/semantics.md, "Discovery").

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use circuit::attribute::{Granularity, Method};
use circuit::discover::{self, output, DiscoverError, Request};
use circuit::measure::error::EvalError;
use circuit::measure::file::unknown_circuit;
use circuit::measure::{Session, SessionOptions};
use circuit::report::SettingsReport;
use circuit::util::outputs::{check_outputs, Output};

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

/// The error for an existing output without `--force`.
fn exists(path: &Path) -> miette::Report {
    miette::miette!(
        code = "circuit::discover::output_exists",
        help = "pass --force to overwrite it, or write to another file",
        "{} exists; discover does not overwrite a file without --force",
        path.display()
    )
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
    let mut request = Request {
        target: args.target,
        rank,
        granularity,
        attention_threshold: args.attention_threshold,
        base: None,
        best_effort: args.best_effort,
        scan_cache: args.cache.cache()?,
    };
    // Everything that can be refused is refused before the model is loaded.
    discover::check_request(&request)?;
    let resolved = resolve(&args.file, &super::settings::SettingArgs::default())?;
    let file = &resolved.file;
    if let Some(name) = &args.circuit {
        let Some(base) = file.circuits.iter().find(|c| &c.name == name) else {
            // The did-you-mean of `--circuit` everywhere, under discover's own code.
            let help = match unknown_circuit(file, name) {
                EvalError::UnknownCircuit { help, .. } => help,
                other => other.to_string(),
            };
            return Err(DiscoverError::UnknownBase {
                name: name.clone(),
                help,
            }
            .into());
        };
        request.base = Some(base.clone());
        discover::check_request(&request)?;
    }
    // The exact scan is defined for every metric and granularity searched here.
    if rank != Method::Exact {
        circuit::attribute::check_request(
            rank,
            granularity,
            circuit::measure::metric_name(file.settings.metric),
            false,
        )?;
    }
    let mut inputs = vec![args.file.clone()];
    inputs.extend(file.settings.input_paths());
    let outputs: Vec<Output> = [("-o", &args.output), ("--svg", &args.svg)]
        .iter()
        .filter_map(|(flag, path)| path.as_deref().map(|path| Output { flag, path }))
        .collect();
    check_outputs(&outputs, &inputs)?;
    if let Some(path) = &args.output {
        if path.exists() && !args.force {
            return Err(exists(path));
        }
    }
    let input_text = std::fs::read_to_string(&args.file).map_err(|e| {
        miette::miette!(
            code = "circuit::check::read",
            "cannot read {}: {e}",
            args.file.display()
        )
    })?;

    let disk_cache = args.cache.cache()?;
    let progress = Progress::start(&args.file.display().to_string());
    let (on_batch, on_total) = progress.callbacks();
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
    // How many evaluations the search needs is known only as it goes: the total grows with
    // each one (the reference prompts, the full model, the empty circuit, then each circuit).
    let (n_clean, n_reference) = (
        session.clean_prompts().len(),
        session.reference_prompts().len(),
    );
    let on_evaluation =
        on_total.map(|total| move |n: usize| total(n_reference + n_clean * (2 + n)));
    let result = discover::discover(
        &mut session,
        &request,
        on_evaluation.as_ref().map(|f| f as &dyn Fn(usize)),
    );
    progress.finish();
    let found = result?;

    let folder = |p: &Path| -> PathBuf {
        match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    let input_dir = folder(&args.file);
    let out_dir = args.output.as_deref().map_or(input_dir.clone(), folder);
    let command = command_line(&args);
    let text = output::circuit_file(&found, &input_text, &input_dir, &out_dir, &command)?;
    output::verify(&session, &found, &text, &out_dir)?;

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
    if let Some(path) = &args.output {
        // Checked again: the file may have appeared during the search.
        if path.exists() && !args.force {
            return Err(exists(path));
        }
        circuit::util::write_atomic(path, text.as_bytes()).map_err(|e| {
            miette::miette!(
                code = "circuit::discover::write",
                "cannot write {}: {e}",
                path.display()
            )
        })?;
    }
    emit(&report, None)?;
    Ok(ExitCode::SUCCESS)
}

/// The command as the found file's header records it (file names as given).
fn command_line(args: &Args) -> String {
    let mut parts = vec![
        "circuit discover".to_string(),
        args.file
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
    ];
    if let Some(c) = &args.circuit {
        parts.push(format!("--circuit {c}"));
    }
    parts.push(format!("--target {}", args.target));
    let rank = match args.rank {
        RankArg::EapIg => "eap-ig",
        RankArg::Eap => "eap",
        RankArg::Exact => "exact",
        RankArg::Qkvo => "qkvo",
        RankArg::Attention => "attention",
    };
    parts.push(format!("--rank {rank}"));
    if args.rank == RankArg::EapIg && args.steps != 5 {
        parts.push(format!("--steps {}", args.steps));
    }
    match args.granularity {
        GranularityArg::Nodes => {}
        GranularityArg::QkEdges => parts.push("--granularity qk-edges".to_string()),
        GranularityArg::PathEdges => parts.push("--granularity path-edges".to_string()),
    }
    if let Some(t) = args.attention_threshold {
        parts.push(format!("--attention-threshold {t}"));
    }
    if args.best_effort {
        parts.push("--best-effort".to_string());
    }
    parts.join(" ")
}
