//! `circuit heads`: the attention summary (every build) and, with `--features linalg`, the OV
//! copying scores and QK singular values, against a float64 torch reference written by
//! scripts/heads_reference.py (tests/fixtures/heads/), on the built-in model (GPT-2 family,
//! tied embeddings) and on stories260K (Llama: RMSNorm, rotary, grouped-query heads, an
//! unembedding of its own); the CLI's text and JSON as snapshots; bad input as coded errors.
//!
//! CI runs this file twice: in `cargo test --release` (no feature: the attention summary, and
//! the output saying the OV/QK columns need the feature) and in `cargo test --release
//! --features linalg --test heads`.

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli_support::{assert_fails, circuit};

use circuit::heads::{characterize, dataset_tokens, HeadsReport};
use circuit::measure::{Session, SessionOptions};
use circuit::resolve::{load_file, RealEnvironment, ResolveOptions};

/// Agreement asked of every number (f32 engine against float64 torch).
const TOLERANCE: f64 = 1e-4;

fn repo() -> PathBuf {
    cli_support::root().to_path_buf()
}

fn characterized(circuit_file: &str) -> HeadsReport {
    let path = repo().join(circuit_file);
    let resolved = load_file(&path, &RealEnvironment, &ResolveOptions::default())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let session = Session::open(&resolved.file, SessionOptions::default()).unwrap();
    characterize(&session).unwrap()
}

fn fixture(name: &str) -> serde_json::Value {
    let path = repo().join("tests/fixtures/heads").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// `|ours − theirs| ≤ TOLERANCE` for two optional scores (both undefined also agrees).
fn close(what: &str, ours: Option<f64>, theirs: &serde_json::Value) {
    match (ours, theirs.as_f64()) {
        (Some(a), Some(b)) => assert!(
            (a - b).abs() <= TOLERANCE,
            "{what}: ours {a}, reference {b}, difference {:e}",
            (a - b).abs()
        ),
        (None, None) => {}
        (a, _) => panic!("{what}: ours {a:?}, reference {theirs}"),
    }
}

/// The dataset's tokens, query counts and every head's attention scores agree with torch.
fn check_attention(report: &HeadsReport, reference: &serde_json::Value) {
    let tokens: Vec<u32> = serde_json::from_value(reference["tokens"].clone()).unwrap();
    assert_eq!(report.tokens, tokens, "the OV circuit's token set");
    let heads = reference["heads"].as_array().unwrap();
    assert_eq!(report.heads.len(), heads.len());
    for (ours, theirs) in report.heads.iter().zip(heads) {
        let name = format!("{}.{}", ours.layer, ours.head);
        assert_eq!(theirs["head"], name.as_str());
        let a = &ours.attention;
        assert_eq!(
            a.previous_token_queries as u64,
            reference["previous_token_queries"].as_u64().unwrap()
        );
        assert_eq!(
            a.repeated_token_queries as u64,
            reference["repeated_token_queries"].as_u64().unwrap()
        );
        close(
            &format!("{name} prev"),
            a.previous_token,
            &theirs["previous_token"],
        );
        close(
            &format!("{name} dup"),
            a.duplicate_token,
            &theirs["duplicate_token"],
        );
        close(&format!("{name} induct"), a.induction, &theirs["induction"]);
    }
}

#[test]
fn attention_scores_match_torch_on_the_built_in_model() {
    let report = characterized("circuits/toy-seqcont/numerals_template.circuit");
    let reference = fixture("toy_seqcont_numerals_template.json");
    check_attention(&report, &reference);
    assert_eq!(report.qk_not_defined, None);
    // The template repeats " done in" and "." in every prompt: the scores are defined.
    assert!(report.heads[0].attention.repeated_token_queries > 0);
}

#[test]
fn attention_scores_match_torch_on_stories260k() {
    let report = characterized("circuits/stories260K/pronoun.circuit");
    check_attention(&report, &fixture("stories260K_pronoun.json"));
    assert!(report.rotary);
}

#[cfg(feature = "linalg")]
fn check_weights(report: &HeadsReport, reference: &serde_json::Value) {
    let heads = reference["heads"].as_array().unwrap();
    for (ours, theirs) in report.heads.iter().zip(heads) {
        let name = format!("{}.{}", ours.layer, ours.head);
        close(
            &format!("{name} OV copying"),
            ours.ov.copying,
            &theirs["ov_copying"],
        );
        close(
            &format!("{name} OV positive share"),
            Some(ours.ov.positive_share),
            &theirs["ov_positive_share"],
        );
        let (ours_sigma, sigma) = match (&ours.qk_singular_values, &theirs["qk_singular_values"]) {
            (Some(ours), serde_json::Value::Array(theirs)) => (ours, theirs),
            // Undefined on both sides (per-head q/k norms).
            (None, serde_json::Value::Null) => continue,
            (ours, theirs) => panic!("{name} QK: ours {ours:?}, reference {theirs}"),
        };
        assert_eq!(ours_sigma.len(), sigma.len(), "{name}: d values");
        for (i, (a, b)) in ours_sigma.iter().zip(sigma).enumerate() {
            // Relative to the largest: singular values are as large as the weights make them.
            let scale = sigma[0].as_f64().unwrap().max(1.0);
            let b = b.as_f64().unwrap();
            assert!(
                (a - b).abs() <= TOLERANCE * scale,
                "{name} QK σ{}: ours {a}, reference {b}",
                i + 1
            );
        }
    }
}

#[cfg(feature = "linalg")]
#[test]
fn ov_and_qk_match_torch_on_the_built_in_model() {
    let report = characterized("circuits/toy-seqcont/numerals_template.circuit");
    assert!(report.linalg);
    check_weights(&report, &fixture("toy_seqcont_numerals_template.json"));
}

/// Fewer tokens (10) than the head size (16): the `(n, n)` product is the one decomposed.
#[cfg(feature = "linalg")]
#[test]
fn ov_on_fewer_tokens_than_the_head_size_matches_torch() {
    use circuit::heads::circuits::ov_circuit;
    use circuit::model::{Model, ModelSource};
    let model = Model::open(&ModelSource::default_model()).unwrap();
    let few = &fixture("toy_seqcont_numerals_template.json")["few_tokens"];
    let tokens: Vec<u32> = serde_json::from_value(few["tokens"].clone()).unwrap();
    assert!(tokens.len() < model.config.d_head);
    for theirs in few["heads"].as_array().unwrap() {
        let name = theirs["head"].as_str().unwrap();
        let (layer, head) = name.split_once('.').unwrap();
        let ours = ov_circuit(
            &model,
            layer.parse().unwrap(),
            head.parse().unwrap(),
            &tokens,
        )
        .unwrap();
        assert_eq!(ours.eigenvalues.len(), tokens.len());
        close(
            &format!("{name} OV copying"),
            ours.copying,
            &theirs["ov_copying"],
        );
        close(
            &format!("{name} OV positive share"),
            Some(ours.positive_share),
            &theirs["ov_positive_share"],
        );
    }
}

#[cfg(feature = "linalg")]
#[test]
fn ov_and_qk_match_torch_on_stories260k() {
    let report = characterized("circuits/stories260K/pronoun.circuit");
    check_weights(&report, &fixture("stories260K_pronoun.json"));
}

#[test]
fn the_token_set_is_the_prompts_answers_and_distractors() {
    let path = repo().join("circuits/toy-seqcont/numerals_template.circuit");
    let resolved = load_file(&path, &RealEnvironment, &ResolveOptions::default()).unwrap();
    let session = Session::open(&resolved.file, SessionOptions::default()).unwrap();
    let tokens = dataset_tokens(session.clean_prompts());
    for prompt in session.clean_prompts() {
        for id in prompt
            .ids
            .iter()
            .chain(&prompt.answer_id)
            .chain(&prompt.distractor_id)
        {
            assert!(tokens.binary_search(id).is_ok(), "{id} missing");
        }
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "distinct, ascending"
    );
}

// ---- the command ----

const SMALL: &str = r#"model "toy-seqcont"
dataset numerals = seqcont.numerals(n = 8, seed = 0, form = "template")
reference numerals.corrupt
ablate heads by mean
metric logit_diff
"#;

fn heads(args: &[&str]) -> Output {
    circuit(&[&["heads"], args].concat())
}

fn write_small(dir: &Path) -> PathBuf {
    let path = dir.join("small.circuit");
    std::fs::write(&path, SMALL).unwrap();
    path
}

/// stdout of a run that must succeed.
fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", cli_support::stderr(out));
    cli_support::stdout(out)
}

/// The file's path as printed: the snapshot must not hold the temporary folder.
fn normalized(text: &str, file: &Path) -> String {
    text.replace(file.to_str().unwrap(), "small.circuit")
}

/// Which build made a snapshot: the two print different columns.
fn build() -> &'static str {
    if cfg!(feature = "linalg") {
        "linalg"
    } else {
        "pure"
    }
}

#[test]
fn text_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_small(dir.path());
    let text = normalized(&stdout(&heads(&[file.to_str().unwrap()])), &file);
    if cfg!(feature = "linalg") {
        assert!(text.contains("copying") && text.contains("qk σ1"), "{text}");
    } else {
        // No silent blanks: the output says what is missing and how to get it.
        assert!(text.contains("OV, QK      not computed"), "{text}");
        assert!(text.contains("--features linalg"), "{text}");
        assert!(!text.contains("copying"), "{text}");
    }
    insta::assert_snapshot!(format!("heads_text_{}", build()), text);
}

#[test]
fn json_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_small(dir.path());
    let text = stdout(&heads(&[file.to_str().unwrap(), "--format", "json"]));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["heads"].as_array().unwrap().len(), 12);
    assert_eq!(json["linalg"], cfg!(feature = "linalg"));
    if !cfg!(feature = "linalg") {
        assert!(json["ov_qk"]
            .as_str()
            .unwrap()
            .contains("--features linalg"));
        assert!(json["heads"][0].get("ov").is_none());
    }
    // Rounded to 6 significant digits: LAPACK's last bits depend on the CPU's OpenBLAS kernels.
    let rounded = serde_json::to_string_pretty(&round_floats(json)).unwrap();
    insta::assert_snapshot!(
        format!("heads_json_{}", build()),
        normalized(&rounded, &file)
    );
}

fn round_floats(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap();
            let rounded: f64 = format!("{x:.5e}").parse().unwrap();
            serde_json::json!(rounded)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(round_floats).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, round_floats(v)))
                .collect(),
        ),
        other => other,
    }
}

#[test]
fn writes_atomically_to_output_and_never_onto_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_small(dir.path());
    let out = dir.path().join("heads.txt");
    let printed = heads(&[file.to_str().unwrap()]);
    let written = heads(&[file.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(written.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), printed.stdout);

    let onto_input = [
        "heads",
        file.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ];
    assert_fails(&onto_input, 2, "circuit::output::is_input");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), SMALL);
}

#[test]
fn a_model_without_a_tokenizer_is_a_coded_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let tiny = repo().join("tests/fixtures/models/gpt2-tiny");
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny.join(name), model.join(name)).unwrap();
    }
    let file = dir.path().join("no_tokenizer.circuit");
    std::fs::write(
        &file,
        SMALL.replace("\"toy-seqcont\"", "\"model\"").replace(
            "seqcont.numerals(n = 8, seed = 0, form = \"template\")",
            "\"prompts.jsonl\"",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prompts.jsonl"),
        "{\"prompt\": \"a b c\", \"answer\": \" d\", \"distractor\": \" e\"}\n",
    )
    .unwrap();
    assert!(heads(&[file.to_str().unwrap()]).stdout.is_empty());
    let args = ["heads", file.to_str().unwrap()];
    let stderr = assert_fails(&args, 2, "circuit::model::tokenizer");
    assert!(stderr.contains("tokenizer.json"), "{stderr}");
}

/// docs/tutorial.md shows a `--features linalg` build's output in a ```text block (the console
/// blocks are rerun by tests/circuits_tutorial.rs with the default build): rerun it here.
#[cfg(feature = "linalg")]
#[test]
fn the_tutorials_linalg_example_is_what_this_build_prints() {
    let doc = std::fs::read_to_string(repo().join("docs/tutorial.md")).unwrap();
    let mut checked = 0;
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line != "```text" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let Some(command) = block
            .first()
            .and_then(|l| l.strip_prefix("$ circuit heads "))
        else {
            continue;
        };
        let expected = block[1..].join("\n");
        let args: Vec<&str> = command.split_whitespace().collect();
        let out = heads(&args);
        assert_eq!(
            stdout(&out).trim_end(),
            expected.trim_end(),
            "$ circuit heads {command}"
        );
        checked += 1;
    }
    assert!(
        checked >= 1,
        "no `circuit heads` text block in docs/tutorial.md"
    );
}

/// Qwen3 (per-head q/k norms, head_dim 12 ≠ 40 / 4, 4 query heads on 2 key/value heads, a
/// 3-key window on layers 1 and 2): the attention summary reads patterns and the OV circuit
/// involves no q or k, so both are computed and agree with torch; the QK circuit is no bilinear
/// form of the residual stream, so its column is left out, with the reason in the report, the
/// text and the JSON.
#[test]
fn qwen3_heads_keep_attention_and_ov_and_leave_out_qk_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen3.circuit");
    std::fs::write(
        &path,
        format!(
            "model \"{}\"\ndataset digits = \"{}\"\nreference digits\nablate heads by mean\nmetric logit_diff\n",
            repo().join("tests/fixtures/models/qwen3-bf16").display(),
            repo().join("tests/fixtures/heads/qwen3_digits.jsonl").display()
        ),
    )
    .unwrap();
    let resolved = load_file(&path, &RealEnvironment, &ResolveOptions::default())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let session = Session::open(&resolved.file, SessionOptions::default()).unwrap();
    let report = characterize(&session).unwrap();
    let reference = fixture("qwen3_digits.json");
    check_attention(&report, &reference);
    assert!(report.heads[0].attention.induction.is_some());
    assert_eq!(report.qk_not_defined, Some(circuit::heads::QK_NOT_DEFINED));
    #[cfg(feature = "linalg")]
    {
        check_weights(&report, &reference);
        assert!(report.heads.iter().all(|h| h.qk_singular_values.is_none()));
    }

    let text = stdout(&heads(&[path.to_str().unwrap()]));
    assert!(
        text.contains("QK          not defined on this model: each head's q and k are"),
        "{text}"
    );
    assert!(!text.contains("qk σ"), "{text}");
    assert_eq!(text.contains("copying"), cfg!(feature = "linalg"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&heads(&[
        path.to_str().unwrap(),
        "--format",
        "json",
    ])))
    .unwrap();
    assert!(json["qk_not_defined"]
        .as_str()
        .unwrap()
        .contains("no bilinear form"));
    if cfg!(feature = "linalg") {
        assert!(json["heads"][0]["qk_singular_values"].is_null());
        assert!(json["heads"][0]["ov"]["copying"].is_f64());
    }
}
