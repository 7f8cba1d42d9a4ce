//! `circuit show FILE --html OUT`, and the glue `eval --html` and `diff --html` share: check the
//! output path before any evaluation, gather what the page draws that the evaluation does not
//! keep (the example prompt, attention patterns of the kept heads), build the page
//! ([`circuit::report::html`]) and write it atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use circuit::data::tokenized::token_text;
use circuit::data::{self, TokenizedPrompt};
use circuit::measure::file::FileRun;
use circuit::model::{ForwardOptions, Model, NoInterventions};
use circuit::report::html::graph::{self, GraphInput};
use circuit::report::html::patterns::{prompts_within, HeadPatterns, PatternPrompt, Patterns};
use circuit::report::html::{self, DiffSide, EvalPage, ModelShape};
use circuit::report::{CircuitReport, FileReport};
use circuit::resolve::bound::{BoundCircuit, BoundFile, HeadId};
use circuit::util::outputs::{check_outputs, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .circuit file to evaluate and draw.
    pub file: PathBuf,
    /// Draw only this circuit (repeatable); default: every circuit of the file.
    #[arg(long = "circuit", value_name = "NAME")]
    pub circuits: Vec<String>,
    /// The HTML page to write (atomically).
    #[arg(long, value_name = "OUT.html", required_unless_present = "png")]
    pub html: Option<PathBuf>,
    /// The graph of one circuit (the file's only one, or the one --circuit names) as a PNG, at
    /// twice the page's resolution, for papers (written atomically).
    #[arg(long, value_name = "OUT.png")]
    pub png: Option<PathBuf>,
    #[command(flatten)]
    pub settings: super::settings::SettingArgs,
    #[command(flatten)]
    pub cache: super::cache::CacheArgs,
}

/// Cell values of per-prompt attention patterns a page may carry (2 bytes each): the selector
/// offers as many prompts as fit (at least one), the mean is always there.
pub const PATTERN_BUDGET: usize = 120_000;

/// What a page draws besides the report: the model's shape, the example prompt (the dataset's
/// first clean prompt) and its tokens, and every clean prompt for the attention patterns.
pub struct Drawn {
    pub model: Model,
    pub shape: ModelShape,
    pub prompts: Vec<TokenizedPrompt>,
    pub tokens: Vec<String>,
}

impl Drawn {
    pub fn example(&self) -> &TokenizedPrompt {
        &self.prompts[0]
    }
}

/// Opens the file's model and tokenizes its dataset (as the evaluation did).
pub fn drawn(file: &BoundFile) -> miette::Result<Drawn> {
    let model = Model::open(&file.settings.model)?;
    let dataset = data::load(&file.settings.dataset)?;
    let prompts = data::tokenize_dataset(&dataset, &model.tokenizer)?.clean;
    if prompts.is_empty() {
        miette::bail!(
            code = "circuit::report::html_no_prompt",
            "the dataset has no prompt to draw the circuits on"
        );
    }
    let tokens = prompts[0]
        .ids
        .iter()
        .map(|&id| token_text(&model.tokenizer, id))
        .collect();
    let shape = ModelShape {
        n_layers: model.config.n_layers,
        n_heads: model.config.n_heads,
    };
    Ok(Drawn {
        model,
        shape,
        prompts,
        tokens,
    })
}

/// The attention patterns of `heads` on the full model: the mean over the prompts as long as
/// the example, and single prompts for the selector within [`PATTERN_BUDGET`].
pub fn attention(drawn: &Drawn, heads: &BTreeSet<HeadId>) -> miette::Result<Patterns> {
    let t = drawn.example().len();
    let same_length: Vec<&TokenizedPrompt> =
        drawn.prompts.iter().filter(|p| p.len() == t).collect();
    let offered = prompts_within(PATTERN_BUDGET, heads.len(), t).min(same_length.len());
    let mut sums: BTreeMap<HeadId, Vec<Vec<f64>>> =
        heads.iter().map(|&h| (h, vec![vec![0.0; t]; t])).collect();
    let mut per_prompt: BTreeMap<HeadId, Vec<Vec<Vec<f32>>>> = BTreeMap::new();
    let options = ForwardOptions {
        cache: true,
        ..ForwardOptions::default()
    };
    for (chunk_index, chunk) in same_length.chunks(16).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let output = drawn.model.forward(&ids, &options, &NoInterventions)?;
        let cache = output.cache.expect("the forward was asked for its cache");
        for &h in heads {
            let pattern = &cache.layers[h.layer].pattern; // (B, H, T, T)
            for b in 0..chunk.len() {
                let single: Vec<Vec<f32>> = (0..t)
                    .map(|q| (0..t).map(|k| pattern[[b, h.head, q, k]]).collect())
                    .collect();
                let sum = sums.get_mut(&h).expect("every head has a sum");
                for (q, row) in single.iter().enumerate() {
                    for (k, &w) in row.iter().enumerate() {
                        sum[q][k] += w as f64;
                    }
                }
                if chunk_index * 16 + b < offered {
                    per_prompt.entry(h).or_default().push(single);
                }
            }
        }
    }
    let n = same_length.len();
    let heads = sums
        .into_iter()
        .map(|(h, sum)| {
            let mean = sum
                .iter()
                .map(|row| row.iter().map(|&s| (s / n as f64) as f32).collect())
                .collect();
            let per_prompt = per_prompt.remove(&h).unwrap_or_default();
            (h, HeadPatterns { mean, per_prompt })
        })
        .collect();
    let prompts = same_length[..offered]
        .iter()
        .map(|p| PatternPrompt {
            index: p.index,
            text: p.text.clone(),
            tokens: p
                .ids
                .iter()
                .map(|&id| token_text(&drawn.model.tokenizer, id))
                .collect(),
        })
        .collect();
    Ok(Patterns {
        length: t,
        n_mean: n,
        n_prompts: drawn.prompts.len(),
        prompts,
        heads,
    })
}

/// Writes a page to `path` atomically.
pub fn write_page(path: &Path, page: &str) -> miette::Result<()> {
    circuit::util::write_atomic(path, page.as_bytes()).map_err(|e| {
        miette::miette!(
            code = "circuit::report::html_write",
            help = "check that the folder is writable",
            "cannot write the HTML page to {}: {e}",
            path.display()
        )
    })
}

/// The evaluation page of a run (`eval --html`, `show`): gathers the drawing data and writes.
pub fn write_eval_page(
    kind: &'static str,
    path: &Path,
    file: &BoundFile,
    run: &FileRun,
    report: &FileReport,
) -> miette::Result<()> {
    let drawn = drawn(file)?;
    let heads: BTreeSet<HeadId> = run.circuits.iter().flat_map(kept_heads).collect();
    let patterns = match heads.is_empty() {
        true => None,
        false => Some(attention(&drawn, &heads)?),
    };
    let page = html::eval_page(&EvalPage {
        kind,
        report,
        circuits: &run.circuits,
        shape: drawn.shape,
        scope: file.settings.scope,
        example: drawn.example(),
        example_tokens: &drawn.tokens,
        patterns: patterns.as_ref(),
        extra: Vec::new(),
    });
    write_page(path, &page)
}

/// One side of `diff --html`.
pub fn diff_side<'a>(
    name: &'a str,
    file: &'a BoundFile,
    drawn: &'a Drawn,
    reports: &'a [CircuitReport],
) -> DiffSide<'a> {
    DiffSide {
        name,
        circuits: &file.circuits,
        reports,
        shape: drawn.shape,
        scope: file.settings.scope,
        example: drawn.example(),
        example_tokens: &drawn.tokens,
    }
}

fn kept_heads(c: &BoundCircuit) -> impl Iterator<Item = HeadId> + '_ {
    c.heads.keys().copied()
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let resolved = super::eval::resolve(&args.file, &args.settings)?;
    // Before any forward pass: the page and the picture land on no input of the run (the
    // `.circuit` file, its datasets, the model's files) nor on each other.
    let mut inputs = vec![args.file.clone()];
    inputs.extend(resolved.file.settings.input_paths());
    let outputs: Vec<Output> = [("--html", &args.html), ("--png", &args.png)]
        .into_iter()
        .filter_map(|(flag, path)| path.as_deref().map(|path| Output { flag, path }))
        .collect();
    check_outputs(&outputs, &inputs)?;
    if args.png.is_some() {
        let count = match args.circuits.len() {
            0 => resolved.file.circuits.len(),
            n => n,
        };
        if count != 1 {
            return Err(miette::miette!(
                code = "circuit::report::png_one_circuit",
                help = "name the circuit to draw with --circuit NAME",
                "--png draws one circuit's graph, but {count} circuits would be drawn"
            ));
        }
    }
    let run = super::eval::evaluate(&resolved, &args.circuits, &args.cache)?;
    let report = FileReport::new(
        &args.file.display().to_string(),
        &resolved.file.settings,
        &run,
    );
    if let Some(html) = &args.html {
        write_eval_page("show", html, &resolved.file, &run, &report)?;
        eprintln!("wrote {}", html.display());
    }
    if let Some(png) = &args.png {
        let drawn = drawn(&resolved.file)?;
        let input = GraphInput {
            circuit: &run.circuits[0],
            shape: drawn.shape,
            scope: resolved.file.settings.scope,
            example: drawn.example(),
            tokens: &drawn.tokens,
            scores: None,
            marks: None,
        };
        let layout = graph::layout(&input);
        if layout.is_empty() {
            return Err(miette::miette!(
                code = "circuit::report::png_empty",
                "circuit {} keeps nothing: there is no graph to draw",
                input.circuit.name
            ));
        }
        let picture = circuit::report::png::render(&graph::standalone(&input, &layout), 2.0)?;
        circuit::util::write_atomic(png, &picture).map_err(|e| {
            miette::miette!(
                code = "circuit::report::png_write",
                "cannot write the PNG to {}: {e}",
                png.display()
            )
        })?;
        eprintln!("wrote {}", png.display());
    }
    Ok(ExitCode::SUCCESS)
}
