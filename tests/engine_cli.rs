//! `circuit run` end to end (the built binary), including its bad-input exits.

mod cli_support;

use cli_support::{assert_fails, circuit, root, stderr, stdout, stories};

#[test]
fn run_generates_the_known_stories260k_continuation() {
    let model = stories();
    let out = circuit(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Once upon a time",
        "--generate",
        "20",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            r#"continuation: ", there was a little girl named Lily. She loved to play outsid""#
        ),
        "{text}"
    );
    // Top-5 lines by default, "," first.
    assert!(text.contains(r#" 1. ","#), "{text}");
    assert!(text.contains(" 5. "), "{text}");
    assert!(!text.contains(" 6. "), "{text}");
}

#[test]
fn run_json_with_logits_matches_transformers_end_logits() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "Once upon a time\n\nThe cat sat\n").unwrap();
    let model = stories();
    let out = circuit(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--json",
        "--logits",
        "--top",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let items = json["prompts"].as_array().unwrap();
    assert_eq!(items.len(), 2, "the blank line is skipped");
    assert_eq!(items[0]["prompt"], "Once upon a time");
    assert_eq!(items[0]["top"].as_array().unwrap().len(), 3);

    // The END logits of each prompt against HF's (prompts 0 and 1 of the stories260K fixture).
    let bytes =
        std::fs::read(root().join("tests/fixtures/models/stories260K/expected.safetensors"))
            .unwrap();
    let expected = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (i, item) in items.iter().enumerate() {
        let logits: Vec<f32> = item["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let view = expected.tensor(&format!("prompt{i}.logits")).unwrap();
        let (t, v) = (view.shape()[0], view.shape()[1]);
        assert_eq!(logits.len(), v);
        let hf: Vec<f32> = view.data()[(t - 1) * v * 4..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let max = logits
            .iter()
            .zip(&hf)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max <= 1e-4, "prompt {i}: max |Δlogit| {max:e}");
        // The top token is the argmax of those logits, and probabilities are a softmax.
        let argmax = (0..v)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        assert_eq!(item["top"][0]["token_id"], argmax);
        let p: f64 = item["top"][0]["probability"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0);
    }
}

#[test]
fn run_rejects_an_empty_prompt() {
    let model = root().join("tests/fixtures/models/gpt2-tiny");
    let out = circuit(&["run", "--model", model.to_str().unwrap(), "--prompt", ""]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("circuit::model::empty_prompt"), "{err}");
    assert!(err.contains(r#"prompt "" is empty"#), "{err}");
}

#[test]
fn run_rejects_a_prompt_longer_than_the_context() {
    let model = root().join("tests/fixtures/models/gpt2-tiny");
    let long = "The cat sat on the mat. ".repeat(10);
    let out = circuit(&["run", "--model", model.to_str().unwrap(), "--prompt", &long]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("circuit::model::prompt_too_long"), "{err}");
    assert!(err.contains("context of 48"), "{err}");
    assert!(
        err.contains("The cat sat on the mat."),
        "names the prompt: {err}"
    );
}

#[test]
fn run_requires_a_prompt_and_a_readable_prompts_file() {
    let model = root().join("tests/fixtures/models/gpt2-tiny");
    let out = circuit(&["run", "--model", model.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("circuit::run::no_prompt"));
    let out = circuit(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        "/nonexistent/prompts.txt",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("circuit::run::prompts_file") && err.contains("/nonexistent/prompts.txt"),
        "{err}"
    );
}

/// `run` prints a token as `dataset inspect` does: a SentencePiece `▁` is a leading space, in
/// the text and in the JSON (stories260K's decoder would drop it: `there`).
#[test]
fn run_shows_tokens_with_their_leading_space_as_inspect_does() {
    let model = stories();
    let args = [
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Once upon a time",
        "--top",
        "2",
    ];
    let out = circuit(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("   2. \" there\""),
        "{}",
        stdout(&out)
    );
    let json = circuit(&[&args[..], &["--json"]].concat());
    let json: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(json["prompts"][0]["top"][1]["token"], " there", "{json}");
}

#[test]
fn run_takes_format_json_as_json_does_and_logits_needs_it() {
    let by_flag = circuit(&["run", "--prompt", "1 2 3", "--json", "--top", "2"]);
    let by_format = circuit(&["run", "--prompt", "1 2 3", "--format", "json", "--top", "2"]);
    assert!(by_flag.status.success(), "{}", stderr(&by_flag));
    assert!(by_format.status.success(), "{}", stderr(&by_format));
    assert_eq!(stdout(&by_flag), stdout(&by_format));
    assert!(stdout(&by_format).trim_start().starts_with('{'));
    let with_logits = circuit(&["run", "--prompt", "1 2 3", "--format", "json", "--logits"]);
    assert!(with_logits.status.success(), "{}", stderr(&with_logits));
    assert!(stdout(&with_logits).contains("\"logits\""));
    assert_fails(
        &["run", "--prompt", "1 2 3", "--logits"],
        2,
        "circuit::run::logits_without_json",
    );
}
