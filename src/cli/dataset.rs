//! `circuit dataset`: list the built-in datasets, generate one as JSONL, or inspect how a
//! dataset's labels resolve to tokens under a model's tokenizer.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::{miette, IntoDiagnostic};
use serde_json::{json, Value};

use circuit::data::builtin::{is_builtin, BUILTINS};
use circuit::data::inspect::{inspect as inspect_dataset, Inspection};
use circuit::data::tokenized::describe_tokens;
use circuit::data::{jsonl, Dataset, DatasetSource, ParamValue, PromptSet};
use circuit::model::Tokenizer;
use circuit::util::outputs::{check_outputs, Output};

use super::format::{Format, TextOrJsonArgs};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    // Boxed, like `params`, so `circuit`'s command enum stays small.
    command: Option<Box<Command>>,

    /// List the built-in datasets, one per line: name, then a description.
    #[arg(long)]
    list: bool,

    /// A built-in dataset to write as JSONL (see --list).
    name: Option<String>,

    #[command(flatten)]
    params: Box<GeneratorParams>,

    /// Write the JSONL to this file (atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Per prompt: its tokens and the token every label resolves to.
    Inspect(InspectArgs),
    /// An auto-circuit prompt file as dataset JSONL (labels from word_idxs and seq_labels).
    Import(super::dataset_import::ImportArgs),
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    /// A JSONL dataset file or a built-in dataset name.
    dataset: String,

    /// Model folder whose tokenizer.json is used (default: the built-in default model).
    #[arg(long, value_name = "DIR")]
    model: Option<String>,

    /// `--format json` (or `--json`) prints JSON instead of tables.
    #[command(flatten)]
    format: TextOrJsonArgs,

    #[command(flatten)]
    params: GeneratorParams,
}

/// Parameters of a built-in generator; only those given are passed on.
#[derive(clap::Args, Debug, Default)]
struct GeneratorParams {
    /// Number of prompts (default 64).
    #[arg(long)]
    n: Option<i64>,
    /// Random seed (default 0).
    #[arg(long)]
    seed: Option<i64>,
    /// Sequence members shown, 2..=6 (seqcont only; default 4).
    #[arg(long)]
    len: Option<i64>,
    /// "bare" or "template" (seqcont only; default bare).
    #[arg(long)]
    form: Option<String>,
    /// "last" or "first": which shown member is the distractor (seqcont only; default last).
    #[arg(long)]
    distractor: Option<String>,
    /// Use only this lexicon template, 0..=3 (ioi only; default: random per prompt).
    #[arg(long)]
    template: Option<i64>,
}

impl GeneratorParams {
    fn to_map(&self) -> BTreeMap<String, ParamValue> {
        let mut map = BTreeMap::new();
        let ints = [
            ("n", self.n),
            ("seed", self.seed),
            ("len", self.len),
            ("template", self.template),
        ];
        for (key, value) in ints {
            if let Some(v) = value {
                map.insert(key.to_string(), ParamValue::Int(v));
            }
        }
        let strings = [("form", &self.form), ("distractor", &self.distractor)];
        for (key, value) in strings {
            if let Some(v) = value {
                map.insert(key.to_string(), ParamValue::Str(v.clone()));
            }
        }
        map
    }

    fn is_empty(&self) -> bool {
        self.to_map().is_empty()
    }
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    if let Some(command) = args.command {
        return match *command {
            Command::Inspect(inspect_args) => inspect(inspect_args),
            Command::Import(import_args) => super::dataset_import::execute(import_args),
        };
    }
    if args.list {
        let width = BUILTINS.iter().map(|b| b.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for b in BUILTINS {
            out.push_str(&format!("{:width$}  {}\n", b.name, b.description));
        }
        print_stdout(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(name) = args.name else {
        return Err(miette!(
            code = "circuit::cli::dataset_usage",
            help = "`circuit dataset --list` shows the built-ins; `circuit dataset seqcont.numerals --n 8` writes one",
            "name a built-in dataset, or use --list or `inspect`"
        ));
    };
    if let Some(path) = &args.output {
        check_outputs(&[Output { flag: "-o", path }], &[])?;
    }
    let source = DatasetSource::Builtin {
        name,
        params: args.params.to_map(),
    };
    let dataset = circuit::data::load(&source)?;
    let text = jsonl::write(&dataset);
    match args.output {
        Some(path) => circuit::util::write_atomic(&path, text.as_bytes())
            .map_err(|source| OutputError::Write { path, source })?,
        None => print_stdout(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stdout(text: &str) -> miette::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        // A closed pipe (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other.map_err(OutputError::Stdout)?),
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
enum OutputError {
    #[error("cannot write {}", path.display())]
    #[diagnostic(code(circuit::data::write))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to stdout")]
    #[diagnostic(code(circuit::cli::stdout))]
    Stdout(#[source] std::io::Error),
}

/// A built-in name (with the given parameters) or a file path.
fn dataset_source(spec: &str, params: &GeneratorParams) -> miette::Result<DatasetSource> {
    if is_builtin(spec) {
        return Ok(DatasetSource::Builtin {
            name: spec.to_string(),
            params: params.to_map(),
        });
    }
    let path = Path::new(spec);
    if !path.exists() && !spec.ends_with(".jsonl") && !spec.contains('/') {
        // Neither a file nor a known name: let the built-in lookup explain.
        circuit::data::builtin::spec(spec, &params.to_map())?;
    }
    if !params.is_empty() {
        return Err(miette!(
            code = "circuit::cli::dataset_params",
            help = "--n, --seed, --len, --form, --distractor and --template apply to built-in datasets",
            "{spec} is a file: generator parameters do not apply to it"
        ));
    }
    Ok(DatasetSource::File(path.to_path_buf()))
}

fn set_name(set: PromptSet) -> &'static str {
    match set {
        PromptSet::Clean => "prompt",
        PromptSet::Reference => "reference prompt",
    }
}

/// `answer " 5" = 642`, or `no answer` (a reference prompt may have none: none is read).
fn target_text(tokenizer: &Tokenizer, what: &str, text: &Option<String>, ids: &[u32]) -> String {
    match text {
        Some(text) => format!("{what} {text:?} {}", ids_text(tokenizer, ids)),
        None => format!("no {what}"),
    }
}

fn ids_text(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    match ids {
        [only] => format!("= {only}"),
        _ => format!("= {} tokens {}", ids.len(), describe_tokens(tokenizer, ids)),
    }
}

fn inspect(args: InspectArgs) -> miette::Result<ExitCode> {
    let source = dataset_source(&args.dataset, &args.params)?;
    let model = super::settings::model_source(args.model.as_deref())?;
    // Named as the user wrote it, so the output does not depend on the working directory.
    let model_name = args.model.clone().unwrap_or_else(|| model.display_name());
    let tokenizer = Tokenizer::open(&model)?;
    let dataset: Dataset = circuit::data::load(&source)?;
    let inspection = inspect_dataset(&dataset, &tokenizer);
    let n_errors = inspection.n_errors();

    let text = if args.format.format() == Format::Json {
        let mut out = serde_json::to_string_pretty(&inspect_json(
            &dataset,
            &model_name,
            &tokenizer,
            &inspection,
        ))
        .into_diagnostic()?;
        out.push('\n');
        out
    } else {
        inspect_text(&dataset, &model_name, &tokenizer, &inspection)
    };
    print_stdout(&text)?;
    if n_errors > 0 {
        eprintln!(
            "{n_errors} problem(s) found: these prompts cannot be evaluated under this tokenizer"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect_text(
    dataset: &Dataset,
    model: &str,
    tokenizer: &Tokenizer,
    inspection: &Inspection,
) -> String {
    let mut out = format!(
        "dataset {}: {} prompts, {} reference prompts{}; tokenizer of {}\n",
        dataset.name,
        dataset.clean.len(),
        dataset.reference.len(),
        if dataset.paired { " (paired)" } else { "" },
        model
    );
    for p in &inspection.prompts {
        out.push_str(&format!(
            "\n{} {}: {:?}\n  {}, {}\n",
            set_name(p.set),
            p.index,
            p.record.prompt,
            target_text(tokenizer, "answer", &p.record.answer, &p.answer_ids),
            target_text(
                tokenizer,
                "distractor",
                &p.record.distractor,
                &p.distractor_ids
            ),
        ));
        if let Some(tokens) = p.token_rows(tokenizer) {
            let rows: Vec<[String; 5]> = tokens
                .iter()
                .map(|t| {
                    [
                        t.pos.to_string(),
                        t.id.to_string(),
                        format!("{:?}", t.text),
                        t.slot.to_string(),
                        t.labels.join(", "),
                    ]
                })
                .collect();
            let header = ["pos", "id", "token", "slot", "labels"].map(String::from);
            let widths: Vec<usize> = (0..5)
                .map(|c| {
                    rows.iter()
                        .chain(std::iter::once(&header))
                        .map(|r| r[c].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for row in std::iter::once(&header).chain(&rows) {
                let line = format!(
                    "  {:>w0$}  {:>w1$}  {:w2$}  {:w3$}  {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2],
                    w3 = widths[3]
                );
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        for alias in &p.aliases {
            out.push_str(&format!(
                "  note: {} land on token {}\n",
                alias.names.join(" and "),
                alias.token
            ));
        }
        for warning in &p.warnings {
            out.push_str(&format!("  warning: {warning}\n"));
        }
        for error in &p.errors {
            out.push_str(&format!("  error: {error}\n"));
        }
    }
    if !inspection.alias_notes.is_empty() {
        out.push('\n');
        for note in &inspection.alias_notes {
            out.push_str(&format!("note: {note}\n"));
        }
    }
    out
}

fn inspect_json(
    dataset: &Dataset,
    model: &str,
    tokenizer: &Tokenizer,
    inspection: &Inspection,
) -> Value {
    let prompts: Vec<Value> = inspection
        .prompts
        .iter()
        .map(|p| {
            let tokens = p.token_rows(tokenizer).map(|rows| {
                rows.iter()
                    .map(|t| {
                        json!({
                            "pos": t.pos,
                            "id": t.id,
                            "text": t.text,
                            "bytes": [t.bytes.0, t.bytes.1],
                            "slot": t.slot.to_string(),
                        })
                    })
                    .collect::<Vec<_>>()
            });
            let labels = p.tokens.as_ref().map(|t| {
                let mut labels = serde_json::Map::new();
                for label in p.record.labels_in_order() {
                    if let Some(slot) = t.slots.get(&label) {
                        labels.insert(label, json!({"first": slot.first, "last": slot.last}));
                    }
                }
                labels.insert("END".into(), json!(t.ids.len() - 1));
                if t.has_bos {
                    labels.insert("BOS".into(), json!(0));
                }
                labels
            });
            json!({
                "set": p.set,
                "index": p.index,
                "prompt": p.record.prompt,
                "tokens": tokens,
                "labels": labels,
                "answer": {"text": p.record.answer, "ids": p.answer_ids},
                "distractor": {"text": p.record.distractor, "ids": p.distractor_ids},
                "aliases": p.aliases,
                "errors": p.errors,
                "warnings": p.warnings,
            })
        })
        .collect();
    json!({
        "dataset": dataset.name,
        "model": model,
        "paired": dataset.paired,
        "prompts": prompts,
        "alias_notes": inspection.alias_notes,
    })
}
