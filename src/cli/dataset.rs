//! `circuit dataset`: list the built-in datasets, generate one as JSONL, or inspect how a
//! dataset's labels resolve to tokens under a model's tokenizer.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::{miette, IntoDiagnostic};
use serde_json::{json, Value};

use circuit::data::builtin::{is_builtin, BUILTINS};
use circuit::data::record::prompt_id;
use circuit::data::slots::slots_of_prompt;
use circuit::data::tokenized::{describe_tokens, token_text, tokenize_prompt, PromptTokens};
use circuit::data::{jsonl, DataError, Dataset, DatasetSource, ParamValue, PromptSet, Record};
use circuit::model::{ModelSource, Tokenizer};

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
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    /// A JSONL dataset file or a built-in dataset name.
    dataset: String,

    /// Model folder whose tokenizer.json is used (default: the built-in default model).
    #[arg(long, value_name = "DIR")]
    model: Option<String>,

    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,

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
        let Command::Inspect(inspect_args) = *command;
        return inspect(inspect_args);
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
    let source = DatasetSource::Builtin {
        name,
        params: args.params.to_map(),
    };
    let dataset = circuit::data::load(&source)?;
    let text = jsonl::write(&dataset);
    match args.output {
        Some(path) => circuit::util::write_atomic(&path, text.as_bytes())
            .into_diagnostic()
            .map_err(|e| e.wrap_err(format!("cannot write {}", path.display())))?,
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
        other => other.into_diagnostic(),
    }
}

/// The tokenizer of a model: a folder's tokenizer.json, or the one embedded in the binary for a
/// built-in model.
pub fn load_tokenizer(model: &ModelSource) -> miette::Result<Tokenizer> {
    match model {
        ModelSource::Dir(dir) => Ok(Tokenizer::from_file(&dir.join("tokenizer.json"))?),
        ModelSource::Builtin(name) => Ok(circuit::model::builtin::tokenizer(name)?),
    }
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

/// One prompt as `inspect` reports it.
struct Inspected<'a> {
    set: PromptSet,
    index: usize,
    record: &'a Record,
    tokens: Option<PromptTokens>,
    answer_ids: Vec<u32>,
    distractor_ids: Vec<u32>,
    errors: Vec<String>,
    aliases: Vec<circuit::data::Alias>,
}

fn inspect_record<'a>(
    set: PromptSet,
    index: usize,
    record: &'a Record,
    tokenizer: &Tokenizer,
) -> Inspected<'a> {
    let id = prompt_id(set, index, record);
    let mut errors = Vec::new();
    let tokens = match tokenize_prompt(record, tokenizer, &id) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let mut plain = |text: &str, what: &'static str| match tokenizer.encode_plain(text) {
        Ok(ids) => {
            if ids.len() != 1 {
                errors.push(
                    DataError::MultiTokenAnswer {
                        prompt: id.clone(),
                        what,
                        text: text.to_string(),
                        count: ids.len(),
                        tokens: describe_tokens(tokenizer, &ids),
                    }
                    .to_string(),
                );
            }
            ids
        }
        Err(e) => {
            errors.push(e.to_string());
            Vec::new()
        }
    };
    let answer_ids = plain(&record.answer, "answer");
    let distractor_ids = plain(&record.distractor, "distractor");
    let aliases = match &tokens {
        Some(t) => {
            // Aliases depend on positions only; the answer ids are not read, so placeholders
            // stand in for answers that may not be single tokens here.
            let prompt = circuit::data::TokenizedPrompt {
                set,
                index,
                text: record.prompt.clone(),
                ids: t.ids.clone(),
                offsets: t.offsets.clone(),
                has_bos: t.has_bos,
                slots: t.slots.clone(),
                answer_id: 0,
                distractor_id: 0,
            };
            prompt
                .aliases(&prompt.standard_positions())
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    Inspected {
        set,
        index,
        record,
        tokens,
        answer_ids,
        distractor_ids,
        errors,
        aliases,
    }
}

/// Labels per token index: `S1`, `first(S1)`, `END`, `BOS`.
fn labels_by_token(tokens: &PromptTokens) -> BTreeMap<usize, Vec<String>> {
    let mut by_token: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    if tokens.has_bos {
        by_token.entry(0).or_default().push("BOS".into());
    }
    let mut slots: Vec<_> = tokens.slots.iter().collect();
    slots.sort_by_key(|(label, s)| (s.first, s.last, (*label).clone()));
    for (label, slot) in slots {
        if slot.first != slot.last {
            by_token
                .entry(slot.first)
                .or_default()
                .push(format!("first({label})"));
        }
        by_token.entry(slot.last).or_default().push(label.clone());
    }
    by_token
        .entry(tokens.ids.len() - 1)
        .or_default()
        .push("END".into());
    by_token
}

fn set_name(set: PromptSet) -> &'static str {
    match set {
        PromptSet::Clean => "prompt",
        PromptSet::Reference => "reference prompt",
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
    let model = match &args.model {
        Some(spec) => ModelSource::parse(spec, &std::env::current_dir().into_diagnostic()?),
        None => ModelSource::default_model(),
    };
    // Named as the user wrote it, so the output does not depend on the working directory.
    let model_name = args.model.clone().unwrap_or_else(|| model.display_name());
    let tokenizer = load_tokenizer(&model)?;
    let dataset: Dataset = circuit::data::load(&source)?;
    let inspected: Vec<Inspected> = dataset
        .clean
        .iter()
        .enumerate()
        .map(|(i, r)| inspect_record(PromptSet::Clean, i, r, &tokenizer))
        .chain(
            dataset
                .reference
                .iter()
                .enumerate()
                .map(|(i, r)| inspect_record(PromptSet::Reference, i, r, &tokenizer)),
        )
        .collect();
    // Dataset-wide alias summary over the clean prompts.
    let mut alias_counts: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    for p in inspected.iter().filter(|p| p.set == PromptSet::Clean) {
        for alias in &p.aliases {
            alias_counts
                .entry(alias.names.clone())
                .or_default()
                .push(p.index);
        }
    }
    let alias_notes: Vec<circuit::data::AliasNote> = alias_counts
        .into_iter()
        .map(|(names, prompts)| circuit::data::AliasNote {
            names,
            prompts,
            of: dataset.clean.len(),
        })
        .collect();
    let n_errors: usize = inspected.iter().map(|p| p.errors.len()).sum();

    let text = if args.json {
        let mut out = serde_json::to_string_pretty(&inspect_json(
            &dataset,
            &model_name,
            &tokenizer,
            &inspected,
            &alias_notes,
        ))
        .into_diagnostic()?;
        out.push('\n');
        out
    } else {
        inspect_text(&dataset, &model_name, &tokenizer, &inspected, &alias_notes)
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
    inspected: &[Inspected],
    alias_notes: &[circuit::data::AliasNote],
) -> String {
    let mut out = format!(
        "dataset {}: {} prompts, {} reference prompts{}; tokenizer of {}\n",
        dataset.name,
        dataset.clean.len(),
        dataset.reference.len(),
        if dataset.paired { " (paired)" } else { "" },
        model
    );
    for p in inspected {
        out.push_str(&format!(
            "\n{} {}: {:?}\n  answer {:?} {}, distractor {:?} {}\n",
            set_name(p.set),
            p.index,
            p.record.prompt,
            p.record.answer,
            ids_text(tokenizer, &p.answer_ids),
            p.record.distractor,
            ids_text(tokenizer, &p.distractor_ids),
        ));
        if let Some(tokens) = &p.tokens {
            let labels = labels_by_token(tokens);
            let slots = slots_of_prompt(tokens.ids.len(), &tokens.slots);
            let rows: Vec<[String; 5]> = (tokens.ids.iter().zip(&slots))
                .enumerate()
                .map(|(i, (&id, slot))| {
                    [
                        i.to_string(),
                        id.to_string(),
                        format!("{:?}", token_text(tokenizer, id)),
                        slot.to_string(),
                        labels.get(&i).map(|l| l.join(", ")).unwrap_or_default(),
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
        for error in &p.errors {
            out.push_str(&format!("  error: {error}\n"));
        }
    }
    if !alias_notes.is_empty() {
        out.push('\n');
        for note in alias_notes {
            out.push_str(&format!("note: {note}\n"));
        }
    }
    out
}

fn inspect_json(
    dataset: &Dataset,
    model: &str,
    tokenizer: &Tokenizer,
    inspected: &[Inspected],
    alias_notes: &[circuit::data::AliasNote],
) -> Value {
    let prompts: Vec<Value> = inspected
        .iter()
        .map(|p| {
            let tokens = p.tokens.as_ref().map(|t| {
                let slots = slots_of_prompt(t.ids.len(), &t.slots);
                (t.ids.iter().zip(&t.offsets).zip(&slots))
                    .enumerate()
                    .map(|(i, ((&id, &(start, end)), slot))| {
                        json!({
                            "pos": i,
                            "id": id,
                            "text": token_text(tokenizer, id),
                            "bytes": [start, end],
                            "slot": slot.to_string(),
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
            })
        })
        .collect();
    json!({
        "dataset": dataset.name,
        "model": model,
        "paired": dataset.paired,
        "prompts": prompts,
        "alias_notes": alias_notes,
    })
}
