//! `circuit import GRAPH.json --model M --dataset D -o OUT.circuit`: an EAP-IG / MIB graph as an
//! edge-complete `.circuit` file (the work is `circuit::exchange`'s).

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use miette::miette;

use circuit::exchange::{circuit_text, read_graph};
use circuit::model::ModelSource;
use circuit::resolve::{resolve_source, Environment, RealEnvironment, ResolveOptions};
use circuit::util::outputs::{check_outputs, Output};
use circuit::util::write_atomic;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The graph JSON (EAP-IG / MIB: `cfg`, `nodes`, `edges` with `in_graph`).
    pub graph: PathBuf,
    /// The model the graph was made for: a built-in name, a HuggingFace folder or a hub name; its
    /// config.json must match the graph's `cfg`.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// The dataset to evaluate on, as a `.circuit` file writes it: a generator call
    /// (`ioi`, `seqcont.numerals(n = 64)`) or a `.jsonl` file.
    #[arg(long, value_name = "DATASET")]
    pub dataset: String,
    /// The `.circuit` file to write (atomically).
    #[arg(short = 'o', long = "output", value_name = "OUT.circuit")]
    pub output: PathBuf,
    /// The circuit's name in the file.
    #[arg(long, default_value = "imported")]
    pub name: String,
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    check_outputs(
        &[Output {
            flag: "-o",
            path: &args.output,
        }],
        std::slice::from_ref(&args.graph),
    )?;
    let text = std::fs::read_to_string(&args.graph).map_err(|e| {
        miette!(
            code = "circuit::import::read",
            "cannot read {}: {e}",
            args.graph.display()
        )
    })?;
    let source = ModelSource::parse(&args.model, Path::new(""))?;
    let config = RealEnvironment.model_config(&source).map_err(|e| {
        miette!(
            code = "circuit::import::model",
            help = "--model is a built-in model's name, a HuggingFace folder with config.json or a hub name in the local cache",
            "cannot read the model {}: {e}",
            args.model
        )
    })?;
    let graph = read_graph(&args.graph.display().to_string(), &text, &config)?;

    // Paths in a `.circuit` file are relative to its folder; the arguments are relative to
    // the working directory.
    let out_dir = absolute(args.output.parent().unwrap_or(Path::new("")))?;
    let model = match source {
        ModelSource::Builtin(name) => name,
        ModelSource::Dir(dir) if Path::new(&args.model).exists() => {
            relative_to(&out_dir, &absolute(&dir)?)
        }
        // A hub name found in the local HuggingFace cache: the file names it the same way.
        ModelSource::Dir(_) => args.model.clone(),
    };
    let dataset = match args.dataset.ends_with(".jsonl") {
        true => relative_to(&out_dir, &absolute(Path::new(&args.dataset))?),
        false => args.dataset.clone(),
    };
    let graph_name = args.graph.file_name().map_or_else(
        || args.graph.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let circuit = circuit_text(&graph, &graph_name, &model, &dataset, &args.name);

    // What is written must check: the dataset exists and defines what the file needs, the
    // name is a name.
    let shown = args.output.display().to_string();
    resolve_source(
        &shown,
        &circuit,
        &out_dir,
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .map_err(miette::Report::new)?;
    write_atomic(&args.output, circuit.as_bytes())
        .map_err(|e| miette!(code = "circuit::import::write", "cannot write {shown}: {e}"))?;
    eprintln!(
        "wrote {shown}: edge-complete circuit `{}` with {} of the graph's {} edges",
        args.name,
        graph.kept.len(),
        graph.n_edges
    );
    Ok(ExitCode::SUCCESS)
}

/// `path` made absolute against the working directory, `.` and `..` folded (without following
/// links, so that the relative path written is the one the user sees).
fn absolute(path: &Path) -> miette::Result<PathBuf> {
    let cwd = std::env::current_dir()
        .map_err(|e| miette!(code = "circuit::import::cwd", "no working directory: {e}"))?;
    let mut out = PathBuf::new();
    for part in cwd.join(path).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// `to` written relative to the folder `from` (both absolute).
fn relative_to(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to_parts: Vec<_> = to.components().collect();
    let common = from
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for part in &to_parts[common..] {
        out.push(part);
    }
    match out.as_os_str().is_empty() {
        true => ".".to_string(),
        false => out.display().to_string(),
    }
}
