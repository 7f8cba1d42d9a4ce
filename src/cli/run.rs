//! `circuit run`: run a model on prompts and print the most likely next tokens (or a greedy
//! continuation).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use miette::{Diagnostic, IntoDiagnostic};
use serde_json::json;
use thiserror::Error;

use crate::model::{ForwardOptions, Model, ModelSource, NoInterventions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A HuggingFace model folder (config.json, model.safetensors, tokenizer.json) or the name
    /// of a built-in model. Default: the built-in default model.
    #[arg(long, value_name = "DIR")]
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
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --json: include each prompt's full next-token logits vector.
    #[arg(long, requires = "json")]
    pub logits: bool,
    /// Append N greedily chosen tokens to each prompt and print the continuation.
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
}

#[derive(Debug, Error, Diagnostic)]
enum RunError {
    #[error("no prompt given")]
    #[diagnostic(
        code(circuit::run::no_prompt),
        help("pass --prompt TEXT or --prompts FILE (one prompt per line)")
    )]
    NoPrompt,
    #[error("cannot read prompts file {path}")]
    #[diagnostic(code(circuit::run::prompts_file))]
    PromptsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One prompt's next-token prediction.
struct Prediction {
    prompt: String,
    ids: Vec<u32>,
    /// `(id, probability)`, most likely first.
    top: Vec<(u32, f64)>,
    logits: Vec<f32>,
    continuation: Option<String>,
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
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

    let source = match &args.model {
        Some(spec) => ModelSource::parse(spec, Path::new("")),
        None => ModelSource::default_model(),
    };
    let model = Model::open(&source)?;

    let ids = prompts
        .iter()
        .map(|p| model.encode_prompt(p))
        .collect::<Result<Vec<_>, _>>()?;
    // One batched forward for all prompts' END logits.
    let output = model.forward(&ids, &ForwardOptions::default(), &NoInterventions)?;
    let mut predictions = Vec::with_capacity(prompts.len());
    for (b, (prompt, ids)) in prompts.into_iter().zip(ids).enumerate() {
        let logits = output.logits.slice(ndarray::s![b, 0, ..]).to_vec(); // (V,)
        let top = top_k(&logits, args.top);
        let continuation = match args.generate {
            Some(n) => {
                let generated = model.generate_greedy(&ids, n)?;
                Some(model.tokenizer.decode(&generated[ids.len()..]))
            }
            None => None,
        };
        predictions.push(Prediction {
            prompt,
            ids,
            top,
            logits,
            continuation,
        });
    }

    if args.json {
        let items: Vec<_> = predictions
            .iter()
            .map(|p| {
                let mut item = json!({
                    "prompt": p.prompt,
                    "token_ids": p.ids,
                    "top": p.top.iter().map(|&(id, prob)| json!({
                        "token_id": id,
                        "token": model.tokenizer.decode(&[id]),
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
                let token = format!("{:?}", model.tokenizer.decode(&[id]));
                println!("  {:>2}. {token:<16} {prob:.4}  (id {id})", rank + 1);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `k` most likely tokens under softmax(logits), most likely first (ties: lower id first).
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| (i as u32, (logits[i] as f64 - max).exp() / total))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_orders_by_probability() {
        let top = top_k(&[0.0, 2.0, 1.0, 2.0], 3);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2]);
        let total: f64 = [0.0f64, 2.0, 1.0, 2.0].iter().map(|x| x.exp()).sum();
        assert!((top[0].1 - 2.0f64.exp() / total).abs() < 1e-12);
    }
}
