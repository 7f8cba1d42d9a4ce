//! Golden tests of `circuit check` and `circuit fmt` as a user runs them: exit codes, stdout
//! and stderr (no colour: the output is not a terminal).

mod cli_support;

use std::path::Path;
use std::process::Output;

use cli_support::{stderr, stdout, transcript};

fn circuit(args: &[&str], stdin: Option<&str>) -> Output {
    match stdin {
        Some(input) => cli_support::circuit_with_stdin(args, input),
        None => cli_support::circuit(args),
    }
}

#[test]
fn check_clean_file() {
    let out = circuit(&["check", "tests/fixtures/ok/ioi.circuit"], None);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(transcript(&out));
}

#[test]
fn check_file_with_warnings_exits_zero() {
    let out = circuit(&["check", "tests/fixtures/ok/warnings.circuit"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("circuit::resolve::duplicate_head"));
    assert!(stderr(&out).contains("0 errors, 8 warnings"));
}

#[test]
fn check_syntax_error() {
    let out = circuit(
        &["check", "tests/fixtures/err/syntax_missing_at.circuit"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(transcript(&out));
}

#[test]
fn check_unknown_head() {
    let out = circuit(&["check", "tests/fixtures/err/unknown_head.circuit"], None);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(transcript(&out));
}

#[test]
fn check_unknown_label() {
    let out = circuit(&["check", "tests/fixtures/err/unknown_label.circuit"], None);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(transcript(&out));
}

#[test]
fn check_missing_model_folder() {
    let out = circuit(&["check", "tests/fixtures/err/missing_model.circuit"], None);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(transcript(&out));
}

#[test]
fn check_model_override() {
    // The file's model folder is missing; --model points at a real config instead.
    let out = circuit(
        &[
            "check",
            "--model",
            "tests/fixtures/configs/gpt2-small",
            "tests/fixtures/err/missing_model.circuit",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = circuit(
        &[
            "check",
            "--model",
            "no/such/dir",
            "tests/fixtures/ok/ioi.circuit",
        ],
        None,
    );
    // A --model found nowhere is the command line's error, before any file is read.
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(transcript(&out));
}

#[test]
fn check_several_files_and_a_missing_one() {
    let out = circuit(
        &[
            "check",
            "tests/fixtures/ok/ioi.circuit",
            "tests/fixtures/does_not_exist.circuit",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(transcript(&out));
}

#[test]
fn check_json() {
    let out = circuit(
        &[
            "check",
            "--json",
            "tests/fixtures/err/unknown_label.circuit",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &json[0];
    assert_eq!(first["code"], "circuit::resolve::unknown_label");
    assert_eq!(first["severity"], "error");
    assert_eq!(first["file"], "tests/fixtures/err/unknown_label.circuit");
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(4), Some(13))
    );
    let (start, end) = (
        first["span"]["start"].as_u64().unwrap() as usize,
        first["span"]["end"].as_u64().unwrap() as usize,
    );
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/err/unknown_label.circuit"),
    )
    .unwrap();
    assert_eq!(&source[start..end], "S3");
    assert!(first["help"].as_str().unwrap().contains("`IO`, `S1`, `S2`"));
    insta::assert_snapshot!(stdout(&out));
}

#[test]
fn fmt_check_lists_unformatted_files() {
    let formatted = circuit(&["fmt", "--check", "tests/fixtures/ok/ioi.circuit"], None);
    assert_eq!(formatted.status.code(), Some(0), "{}", stderr(&formatted));
    assert!(formatted.stdout.is_empty());
    let out = circuit(
        &[
            "fmt",
            "--check",
            "tests/fixtures/ok/ioi.circuit",
            "tests/fixtures/ok/comments.circuit",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(transcript(&out));
}

#[test]
fn fmt_stdin_to_stdout() {
    let out = circuit(
        &["fmt", "-"],
        Some("model   \"m\"   # note\ncircuit c{9.1@END,S1+1 expect ratio>=0.5}"),
    );
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(transcript(&out));
}

#[test]
fn fmt_syntax_error_exits_one_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.circuit");
    std::fs::write(&path, "circuit c {\n  9.1 @\n}\n").unwrap();
    let out = circuit(&["fmt", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("circuit::parse::syntax"));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "circuit c {\n  9.1 @\n}\n"
    );
}

#[test]
fn fmt_rewrites_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.circuit");
    let original = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ok/comments.circuit"),
    )
    .unwrap();
    std::fs::write(&path, &original).unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(circuit(&["fmt", "--check", p], None).status.code(), Some(1));
    assert_eq!(circuit(&["fmt", p], None).status.code(), Some(0));
    let rewritten = std::fs::read_to_string(&path).unwrap();
    assert_ne!(rewritten, original);
    assert_eq!(circuit(&["fmt", "--check", p], None).status.code(), Some(0));
    // Only the file itself is left in the folder (the temporary file was renamed over it).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn check_against_the_real_stories260k_config() {
    // A Llama folder (5 layers × 8 heads): only its config.json is read.
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/models/stories260K");
    let out = circuit(
        &["check", "--model", model, "tests/fixtures/ok/ioi.circuit"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("this model has 5 layers × 8 heads: heads 0.0 to 4.7"),
        "{err}"
    );
    assert!(
        err.contains("`9.9`: layer 9 does not exist in this model"),
        "{err}"
    );
    let fits = "dataset d = ioi\ncircuit c {\n  4.7 @ END\n  0..4.* @ S1+1\n  mlp 4\n}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.circuit");
    std::fs::write(&path, fits).unwrap();
    let out = circuit(&["check", "--model", model, path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A QK edge whose key is after its query: an error when that holds in every prompt, a note
/// naming the prompts when in some (positions resolve per prompt, so only evaluation knows).
#[test]
fn eval_reports_keys_after_their_queries_per_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    // Prompt 0 ends at S4; prompt 1 has a token after it, so END comes after S4 there.
    write(
        "d.jsonl",
        "{\"prompt\": \"1 2 3 4\", \"slots\": {\"S1\": [0, 1], \"S2\": [2, 3], \"S3\": [4, 5], \"S4\": [6, 7]}, \"answer\": \" 5\", \"distractor\": \" 4\"}\n\
         {\"prompt\": \"1 2 3 4 5\", \"slots\": {\"S1\": [0, 1], \"S2\": [2, 3], \"S3\": [4, 5], \"S4\": [6, 7]}, \"answer\": \" 6\", \"distractor\": \" 5\"}\n",
    );
    let some = write(
        "some.circuit",
        "dataset d = \"d.jsonl\"\nablate heads by zero\ncircuit c {\n  edge 0.0: END -> S4\n}\n",
    );
    let every = write("every.circuit", "circuit c {\n  edge 0.0: END -> S1\n}\n");
    let run = |file: &str| {
        cli_support::command(&["eval", file])
            .env("CIRCUIT_CACHE_DIR", "off")
            .output()
            .unwrap()
    };
    let out = run(&some);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "note: circuit `c`: `edge 0.0: END -> S4` carries nothing in 1 of 2 prompts (e.g. prompt 1"
        ),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("circuit c (1 heads"),
        "the edge's head counts as kept: {}",
        stdout(&out)
    );
    let out = run(&every);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("circuit::plan::key_after_query"),
        "{}",
        stderr(&out)
    );
    // `check` cannot know (END may be S1 in some dataset) and accepts it.
    let out = circuit(&["check", &every], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Labels that share a token get a note only when some circuit names one of them: S1 and S2
/// cover the same token here, and only the second file's circuit reads S1.
#[test]
fn alias_notes_only_for_labels_a_circuit_names() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    write(
        "d.jsonl",
        "{\"prompt\": \"1 2 3 4\", \"slots\": {\"S1\": [0, 1], \"S2\": [0, 1], \"S3\": [4, 5]}, \"answer\": \" 5\", \"distractor\": \" 4\"}\n\
         {\"prompt\": \"5 6 7 8\", \"slots\": {\"S1\": [0, 1], \"S2\": [0, 1], \"S3\": [4, 5]}, \"answer\": \" 9\", \"distractor\": \" 8\"}\n",
    );
    let eval = |file: &str| {
        let out = cli_support::command(&["eval", file])
            .env("CIRCUIT_CACHE_DIR", "off")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    };
    let header = "dataset d = \"d.jsonl\"\nablate heads by zero\n";
    let unused = eval(&write(
        "unused.circuit",
        &format!("{header}circuit c {{\n  0.0 @ S3\n}}\n"),
    ));
    assert!(!unused.contains("land on the same token"), "{unused}");
    let used = eval(&write(
        "used.circuit",
        &format!("{header}circuit c {{\n  0.0 @ S1\n}}\n"),
    ));
    assert!(
        used.contains("note: S1 and S2 land on the same token in 2 of 2 prompts"),
        "{used}"
    );
}

/// `n_layer` of 10⁹ in a folder whose weights hold 3 layers: `check` compares the config with
/// the weights' headers before expanding `*` over the layers (which would allocate 5·10⁹
/// heads). Run under a 4 GB address-space limit, so that a regression fails instead of
/// exhausting the machine.
#[test]
fn check_refuses_a_layer_count_the_weights_do_not_hold_before_expanding_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("big");
    std::fs::create_dir(&model).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(
            cli_support::fixture("models/gpt2-tiny").join(file),
            model.join(file),
        )
        .unwrap();
    }
    let config_path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["n_layer"] = 1_000_000_000u64.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let file = dir.path().join("big.circuit");
    std::fs::write(
        &file,
        "model \"big\"\n\ncircuit c {\n  *.* @ END\n  mlp * @ *\n}\n",
    )
    .unwrap();
    let script = format!(
        "ulimit -v 4000000; exec {} check {}",
        env!("CARGO_BIN_EXE_circuit"),
        file.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("circuit::resolve::model"), "{err}");
    assert!(err.contains("`n_layer` to 1000000000"), "{err}");
    assert!(err.contains("hold 3 layers"), "{err}");
}
