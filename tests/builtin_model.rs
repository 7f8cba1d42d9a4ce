//! The built-in model run by the Rust engine: it matches HF transformers (fixture written by
//! scripts/train_default_model.py), it continues every task, and `circuit run` uses it when no
//! `--model` is given, from any directory.

use std::path::Path;
use std::process::Command;

use circuit::model::builtin::{self, DEFAULT_MODEL_NAME};
use circuit::model::{ForwardOptions, Model, ModelSource, NoInterventions};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn load() -> Model {
    builtin::load(DEFAULT_MODEL_NAME).expect("the built-in model loads")
}

/// END logits `(V,)` per prompt, in one batched forward pass.
fn end_logits(model: &Model, prompts: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let out = model
        .forward(prompts, &ForwardOptions::default(), &NoInterventions)
        .unwrap();
    (0..prompts.len())
        .map(|b| out.logits.slice(ndarray::s![b, 0, ..]).to_vec())
        .collect()
}

fn argmax(values: &[f32]) -> u32 {
    (0..values.len())
        .max_by(|&a, &b| values[a].total_cmp(&values[b]))
        .unwrap() as u32
}

fn single_id(model: &Model, answer: &str) -> u32 {
    let ids = model.tokenizer.encode_plain(answer).unwrap();
    assert_eq!(ids.len(), 1, "{answer:?} is not one token: {ids:?}");
    ids[0]
}

#[test]
fn end_logits_match_transformers_fixture() {
    let model = load();
    let fixture: Value = serde_json::from_str(include_str!("fixtures/toy-seqcont-logits.json"))
        .expect("fixture parses");
    let prompts = fixture["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 10);
    let mut ids = Vec::new();
    for p in prompts {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // The Rust tokenizer splits the prompt exactly as the Python one did.
        assert_eq!(model.encode_prompt(text).unwrap(), want, "{text:?}");
        ids.push(want);
    }
    let got = end_logits(&model, &ids); // all prompts batched, lengths 2..23
    for (i, p) in prompts.iter().enumerate() {
        let want: Vec<f32> = p["end_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got[i].len(), want.len());
        let (worst, max_diff) = got[i]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold(
                (0, 0.0f32),
                |best, (j, d)| if d > best.1 { (j, d) } else { best },
            );
        assert!(
            max_diff <= TOLERANCE,
            "prompt {i} {:?}: max |Δlogit| {max_diff:e} at id {worst} (rust {}, hf {}); first \
             values rust {:?} hf {:?}",
            p["text"],
            got[i][worst],
            want[worst],
            &got[i][..4],
            &want[..4]
        );
        assert_eq!(argmax(&got[i]), p["answer_id"].as_u64().unwrap() as u32);
    }
}

#[test]
fn three_four_five_six_continues_with_seven() {
    let model = load();
    let ids = model.encode_prompt("3 4 5 6").unwrap();
    assert_eq!(ids.len(), 4); // no BOS
    let logits = end_logits(&model, &[ids]);
    assert_eq!(argmax(&logits[0]), single_id(&model, " 7"));
    assert_eq!(model.tokenizer.decode(&[argmax(&logits[0])]), " 7");
}

#[test]
fn built_in_and_folder_copies_are_the_same_model() {
    let builtin = Model::open(&ModelSource::default_model()).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/toy-seqcont");
    let folder = Model::load(&dir).unwrap();
    assert_eq!(builtin.weights_hash(), folder.weights_hash());
    let ids = vec![builtin
        .encode_prompt("Marcus born in May. Anna born in")
        .unwrap()];
    assert_eq!(end_logits(&builtin, &ids), end_logits(&folder, &ids));
}

#[test]
fn unknown_builtin_load_names_the_known_models() {
    let err = builtin::load("gpt-17").unwrap_err().to_string();
    assert!(
        err.contains("gpt-17") && err.contains("toy-seqcont"),
        "{err}"
    );
}

// ---- every task, in the prompt formats of the built-in generators ---------------------------

fn lexicon() -> Value {
    serde_json::from_str(include_str!("../src/data/lexicon.json")).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// `(prompt, answer)` for every kind, length 2..=6 and valid start, as a bare sequence and in
/// the kind's template (fillers: a rotating window of the filler list, distinct in a prompt).
fn every_task_prompt(form_template: bool) -> Vec<(String, String, String)> {
    let lexicon = lexicon();
    let mut out = Vec::new();
    for kind in ["numerals", "number_words", "months", "days", "letters"] {
        let seq = &lexicon["sequences"][kind];
        let members = strings(&seq["members"]);
        let wraps = seq["wraps"].as_bool().unwrap();
        let template = &lexicon["templates"][seq["template"].as_str().unwrap()];
        let fillers = strings(&lexicon[template["fillers"].as_str().unwrap()]);
        for n in 2..=6usize {
            let starts = if wraps {
                members.len()
            } else {
                members.len() - n
            };
            for start in 0..starts {
                let member = |i: usize| members[(start + i) % members.len()].clone();
                let answer = format!(" {}", member(n));
                let prompt = if form_template {
                    let filler = |i: usize| fillers[(start * 7 + i) % fillers.len()].clone();
                    let sentence = template["sentence"].as_str().unwrap();
                    let mut parts: Vec<String> = (0..n)
                        .map(|i| {
                            sentence
                                .replace("{filler}", &filler(i))
                                .replace("{member}", &member(i))
                        })
                        .collect();
                    let query = template["query"].as_str().unwrap();
                    parts.push(query.replace("{filler}", &filler(n)));
                    parts.join(" ")
                } else {
                    (0..n).map(member).collect::<Vec<_>>().join(" ")
                };
                out.push((kind.to_string(), prompt, answer));
            }
        }
    }
    out
}

fn assert_every_prompt_answered(form_template: bool) {
    let model = load();
    let cases = every_task_prompt(form_template);
    assert_eq!(cases.len(), 760); // 475 numerals, 80 words, 60 months, 35 days, 110 letters
    let ids: Vec<Vec<u32>> = cases
        .iter()
        .map(|(_, p, _)| model.encode_prompt(p).unwrap())
        .collect();
    let logits = end_logits(&model, &ids);
    let wrong: Vec<String> = cases
        .iter()
        .zip(&logits)
        .filter(|((_, _, answer), l)| argmax(l) != single_id(&model, answer))
        .map(|((kind, prompt, answer), l)| {
            format!(
                "{kind}: {prompt:?} -> {:?}, expected {answer:?}",
                model.tokenizer.decode(&[argmax(l)])
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{} wrong: {wrong:#?}", wrong.len());
}

#[test]
fn every_bare_sequence_is_continued() {
    assert_every_prompt_answered(false);
}

#[test]
fn every_template_length_and_start_is_continued() {
    assert_every_prompt_answered(true);
}

// ---- the CLI without --model ------------------------------------------------------------------

#[test]
fn run_without_model_uses_the_builtin_from_any_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_circuit"))
        .args(["run", "--prompt", "3 4 5 6", "--top", "3"])
        .current_dir(elsewhere.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let first = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("1."))
        .unwrap_or_else(|| panic!("no ranked line in {stdout}"));
    assert!(
        first.contains(r#"" 7""#),
        "first prediction is not \" 7\": {stdout}"
    );
}

#[test]
fn run_generate_continues_the_sequence() {
    let out = Command::new(env!("CARGO_BIN_EXE_circuit"))
        .args(["run", "--prompt", "November December", "--generate", "3"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(r#"continuation: " January February March""#),
        "{stdout}"
    );
}
