//! `circuit run`: run a model on prompts and print the most likely next tokens (or a greedy
//! continuation), or with `--attention L.H --svg OUT` draw heads' attention patterns.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::{Diagnostic, IntoDiagnostic};
use serde_json::json;
use thiserror::Error;

use circuit::data::tokenized::{token_label, token_text};
use circuit::measure::predict::{attention_patterns, predict};
use circuit::model::{Model, ModelSource};
use circuit::report::svg::AttentionPanel;
use circuit::util::outputs::{check_outputs, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A built-in model's name, a HuggingFace model folder (config.json, model.safetensors,
    /// tokenizer.json), or a hub name (`gpt2`) found offline in the local HuggingFace cache.
    /// Default: the built-in default model.
    #[arg(long, value_name = "NAME-OR-DIR")]
    pub model: Option<String>,
    /// A prompt (may be repeated).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Vec<String>,
    /// A file with one prompt per line (blank lines are skipped).
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// How many of the most likely next tokens to print.
    #[arg(long, value_name = "K", default_value_t = 5)]
    pub top: usize,
    /// `--format json` (or `--json`) prints machine-readable JSON instead of text.
    #[command(flatten)]
    pub format: super::format::TextOrJsonArgs,
    /// With --format json: include each prompt's full next-token logits vector.
    #[arg(long)]
    pub logits: bool,
    /// Append N greedily chosen tokens to each prompt and print the continuation.
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    /// This head's attention pattern on the prompt (layer.head, e.g. 1.0; repeatable): drawn
    /// into the --svg file (one panel per head), and with --format json printed as numbers.
    #[arg(long, value_name = "L.H")]
    pub attention: Vec<String>,
    /// With --attention: the SVG file to write the heatmaps to (atomically).
    #[arg(long, value_name = "OUT.svg", requires = "attention")]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Error, Diagnostic)]
enum RunError {
    #[error("no prompt given")]
    #[diagnostic(
        code(circuit::run::no_prompt),
        help("pass --prompt TEXT or --prompts FILE (one prompt per line)")
    )]
    NoPrompt,
    #[error("--logits is part of the JSON output")]
    #[diagnostic(
        code(circuit::run::logits_without_json),
        help("add --format json (or --json)")
    )]
    LogitsWithoutJson,
    #[error("--attention draws one prompt, but {count} were given")]
    #[diagnostic(
        code(circuit::run::attention_prompts),
        help("pass a single --prompt with --attention")
    )]
    AttentionPrompts { count: usize },
    #[error("--attention needs somewhere to put the pattern")]
    #[diagnostic(
        code(circuit::run::attention_output),
        help("add --svg OUT.svg (a heatmap) or --format json (the numbers), or both")
    )]
    AttentionOutput,
    #[error("`{text}` is not a head: --attention takes LAYER.HEAD, e.g. 1.0")]
    #[diagnostic(code(circuit::run::bad_head))]
    BadHead { text: String },
    #[error("head {layer}.{head} does not exist in {model}: it has layers 0..{max_layer} and heads 0..{max_head} per layer")]
    #[diagnostic(
        code(circuit::run::unknown_head),
        help("pick a head with layer 0..{max_layer} and head 0..{max_head}")
    )]
    UnknownHead {
        layer: usize,
        head: usize,
        model: String,
        max_layer: usize,
        max_head: usize,
    },
    #[error("cannot read prompts file {path}")]
    #[diagnostic(code(circuit::run::prompts_file))]
    PromptsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    if args.logits && args.format.format() != super::format::Format::Json {
        return Err(RunError::LogitsWithoutJson.into());
    }
    let mut prompts = args.prompt.clone();
    if let Some(path) = &args.prompts {
        let text = std::fs::read_to_string(path).map_err(|source| RunError::PromptsFile {
            path: path.clone(),
            source,
        })?;
        prompts.extend(
            text.lines()
                .filter(|line| !line.trim().is_empty())
                .map(str::to_string),
        );
    }
    if prompts.is_empty() {
        return Err(RunError::NoPrompt.into());
    }
    let as_json = args.format.format() == super::format::Format::Json;
    if !args.attention.is_empty() && args.svg.is_none() && !as_json {
        return Err(RunError::AttentionOutput.into());
    }

    let source = super::settings::model_source(args.model.as_deref())?;
    if let Some(path) = &args.svg {
        let mut inputs: Vec<PathBuf> = args.prompts.iter().cloned().collect();
        if let ModelSource::Dir(dir) = &source {
            inputs.push(dir.clone());
        }
        check_outputs(
            &[Output {
                flag: "--svg",
                path,
            }],
            &inputs,
        )?;
    }
    let model = Model::open(&source)?;
    if !args.attention.is_empty() {
        return attention(
            &model,
            &source,
            &prompts,
            &args.attention,
            args.svg.as_deref(),
            as_json,
        );
    }

    let predictions = predict(&model, prompts, args.top, args.generate)?;

    if as_json {
        let items: Vec<_> = predictions
            .iter()
            .map(|p| {
                let mut item = json!({
                    "prompt": p.prompt,
                    "token_ids": p.ids,
                    "top": p.top.iter().map(|&(id, prob)| json!({
                        "token_id": id,
                        "token": token_text(&model.tokenizer, id),
                        "probability": prob,
                    })).collect::<Vec<_>>(),
                });
                if args.logits {
                    item["logits"] = json!(p.logits);
                }
                if let Some(text) = &p.continuation {
                    item["generated"] = json!(text);
                }
                item
            })
            .collect();
        let document = json!({ "model": source.display_name(), "prompts": items });
        println!(
            "{}",
            serde_json::to_string_pretty(&document).into_diagnostic()?
        );
    } else {
        for p in &predictions {
            println!("{:?}", p.prompt);
            if let Some(text) = &p.continuation {
                println!("  continuation: {text:?}");
            }
            for (rank, &(id, prob)) in p.top.iter().enumerate() {
                let token = format!("{:?}", token_text(&model.tokenizer, id));
                println!("  {:>2}. {token:<16} {prob:.4}  (id {id})", rank + 1);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `L.H` and checks the head exists in a model with `n_layers` × `n_heads` heads.
fn parse_head(
    text: &str,
    n_layers: usize,
    n_heads: usize,
    model: &str,
) -> Result<(usize, usize), RunError> {
    let bad = || RunError::BadHead {
        text: text.to_string(),
    };
    let (layer, head) = text.trim().split_once('.').ok_or_else(bad)?;
    let layer: usize = layer.parse().map_err(|_| bad())?;
    let head: usize = head.parse().map_err(|_| bad())?;
    if layer >= n_layers || head >= n_heads {
        return Err(RunError::UnknownHead {
            layer,
            head,
            model: model.to_string(),
            max_layer: n_layers.saturating_sub(1),
            max_head: n_heads.saturating_sub(1),
        });
    }
    Ok((layer, head))
}

/// `--attention L.H`: one forward pass with the activation cache, then each head's pattern on
/// the prompt as a heatmap panel into `svg`, and with `as_json` as numbers on stdout.
fn attention(
    model: &Model,
    source: &ModelSource,
    prompts: &[String],
    heads: &[String],
    svg: Option<&Path>,
    as_json: bool,
) -> miette::Result<ExitCode> {
    if prompts.len() != 1 {
        return Err(RunError::AttentionPrompts {
            count: prompts.len(),
        }
        .into());
    }
    let name = source.display_name();
    let heads = heads
        .iter()
        .map(|h| parse_head(h, model.config.n_layers, model.config.n_heads, &name))
        .collect::<Result<Vec<_>, _>>()?;
    let prompt = &prompts[0];
    let ids = model.encode_prompt(prompt)?;
    let patterns = attention_patterns(model, &ids, &heads)?;
    let panels: Vec<AttentionPanel> = heads
        .iter()
        .zip(patterns)
        .map(|(&(layer, head), pattern)| AttentionPanel {
            layer,
            head,
            pattern,
        })
        .collect();
    let tokens: Vec<String> = ids
        .iter()
        .map(|&id| token_label(&model.tokenizer, id))
        .collect();
    if let Some(path) = svg {
        let chart = circuit::report::svg::attention_chart(&name, prompt, &tokens, &panels);
        super::eval::write_picture(path, &chart, "attention heatmap")?;
    }
    if as_json {
        // Row q holds the query token q's weights over the keys 0..=q (later keys are 0).
        let document = json!({
            "model": name,
            "prompt": prompt,
            "token_ids": ids,
            "tokens": ids.iter().map(|&id| token_text(&model.tokenizer, id)).collect::<Vec<_>>(),
            "heads": panels.iter().map(|p| json!({
                "layer": p.layer,
                "head": p.head,
                "pattern": p.pattern,
            })).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&document).into_diagnostic()?
        );
    }
    Ok(ExitCode::SUCCESS)
}
