//! Golden behaviour of `circuit eval`, `circuit test` and `circuit diff` through the binary:
//! exit codes, the output contract, determinism of the JSON, and bad input.

mod cli_support;

use std::path::PathBuf;
use std::process::{Command, Output};

use cli_support::{command, stderr, stdout, stories};

fn fixture(rel: &str) -> PathBuf {
    cli_support::fixture("eval").join(rel)
}

fn run(args: &[&str], threads: &str) -> Output {
    command(args)
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .expect("the binary runs")
}

fn run_with_cache(args: &[&str], threads: &str, cache: &str) -> Output {
    command(args)
        .env("RAYON_NUM_THREADS", threads)
        .env("CIRCUIT_CACHE_DIR", cache)
        .output()
        .expect("the binary runs")
}

#[test]
fn eval_json_is_byte_identical_across_runs_and_thread_counts() {
    let file = fixture("friends.circuit");
    let dir = tempfile::tempdir().unwrap();
    let fresh_cache = dir.path().join("cache");
    let fresh_cache = fresh_cache.to_str().unwrap();
    // Computed with 1 and 2 threads (no cache), then computed and stored, then read back.
    let runs = [
        ("1", "off"),
        ("2", "off"),
        ("2", fresh_cache),
        ("1", fresh_cache),
    ];
    let mut outputs = Vec::new();
    for (i, (threads, cache)) in runs.iter().enumerate() {
        let out = dir.path().join(format!("run{i}.json"));
        let o = run_with_cache(
            &[
                "eval",
                file.to_str().unwrap(),
                "--json",
                "-o",
                out.to_str().unwrap(),
            ],
            threads,
            cache,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).is_empty(), "-o writes the file, not stdout");
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1], "1 thread vs 2 threads");
    assert_eq!(outputs[1], outputs[2], "two runs");
    assert_eq!(
        outputs[2], outputs[3],
        "reference values read back from the disk cache"
    );
    let cached: Vec<String> = std::fs::read_dir(fresh_cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let count = |prefix: &str| cached.iter().filter(|n| n.starts_with(prefix)).count();
    assert_eq!(count("reference-"), 1, "one reference set: {cached:?}");
    // full, empty, base, wider (`nothing` compiles to the empty circuit's plan).
    assert_eq!(
        count("metrics-"),
        4,
        "one entry per distinct plan: {cached:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&outputs[0]).unwrap();
    let circuits = json["circuits"].as_array().unwrap();
    assert_eq!(circuits.len(), 3);
    assert_eq!(circuits[0]["name"], "base");
    let f = circuits[0]["faithfulness"].as_f64().unwrap();
    assert!(f > 0.0 && f < 1.0, "{f}");
    // The empty circuit's faithfulness is 0 by definition.
    assert_eq!(circuits[2]["faithfulness"].as_f64(), Some(0.0));
    // Every report states what was in force.
    let settings = &json["settings"];
    for key in [
        "metric",
        "ablation",
        "edge_ablation",
        "scope",
        "reference",
        "aggregation",
    ] {
        assert!(
            settings[key].is_string(),
            "settings.{key} missing: {settings}"
        );
    }
    assert_eq!(
        json["provenance"]["model_sha256"].as_str().unwrap().len(),
        64
    );
    assert_eq!(
        json["provenance"]["dataset_sha256"].as_str().unwrap().len(),
        64
    );
}

#[test]
fn eval_text_and_markdown_state_the_settings() {
    let file = fixture("friends.circuit");
    let o = run(&["eval", file.to_str().unwrap(), "--circuit", "base"], "2");
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("circuit base"), "{text}");
    assert!(
        !text.contains("circuit wider"),
        "--circuit selects one circuit"
    );
    for needle in [
        "aggregation",
        "by mean",
        "reference",
        "faithfulness",
        "sha256",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let o = run(&["eval", file.to_str().unwrap(), "--markdown"], "2");
    assert!(o.status.success(), "{}", stderr(&o));
    let md = stdout(&o);
    assert!(
        md.contains("| `base` |") && md.contains("| aggregation |"),
        "{md}"
    );
}

#[test]
fn test_command_prints_one_line_per_expectation_and_a_summary() {
    let o = run(&["test", fixture("friends.circuit").to_str().unwrap()], "2");
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].starts_with("ok   ") && lines[0].contains("base: faithfulness >= 0.4 ("));
    assert_eq!(*lines.last().unwrap(), "5 passed, 0 failed");
}

#[test]
fn test_command_fails_on_a_failed_expectation_and_walks_directories() {
    let o = run(&["test", fixture("failing").to_str().unwrap()], "2");
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAIL ") && out.contains("tiny: faithfulness >= 0.99"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("1 passed, 1 failed"));
}

#[test]
fn unknown_circuit_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let o = run(
        &[
            "eval",
            fixture("friends.circuit").to_str().unwrap(),
            "--circuit",
            "bsae",
            "--json",
            "-o",
            out.to_str().unwrap(),
        ],
        "2",
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("circuit::eval::unknown_circuit") && err.contains("did you mean `base`"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written on failure");
}

#[test]
fn bad_datasets_give_clear_errors() {
    let cases = [
        (
            "bad/multi_token_answer.circuit",
            "circuit::data::multi_token_answer",
            "\" Tom\" is 2 tokens",
        ),
        (
            "bad/reference_length.circuit",
            "circuit::data::reference_length",
            "28 tokens",
        ),
        (
            "bad/missing_circuit_in_expect.circuit",
            "unknown_circuit",
            "nonexistent",
        ),
    ];
    for (file, code, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.json");
        let o = run(
            &[
                "eval",
                fixture(file).to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
            "2",
        );
        assert_eq!(o.status.code(), Some(2), "{file}");
        let err = stderr(&o);
        assert!(
            err.contains(code) && err.contains(message),
            "{file}:\n{err}"
        );
        assert!(!out.exists(), "{file}: nothing written on failure");
        // `circuit test` reports the file as failed and still prints the summary.
        let o = run(&["test", fixture(file).to_str().unwrap()], "2");
        assert_eq!(o.status.code(), Some(1), "{file}");
        assert_eq!(
            stdout(&o).lines().last(),
            Some("0 passed, 1 failed"),
            "{file}"
        );
    }
}

#[test]
fn diff_against_a_git_revision() {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    std::fs::copy(fixture("friends.jsonl"), dir.path().join("friends.jsonl")).unwrap();
    let original = std::fs::read_to_string(fixture("friends.circuit")).unwrap();
    std::fs::write(dir.path().join("friends.circuit"), &original).unwrap();
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "v1",
    ]);
    let edited = original.replace("3.1, 3.5 @ S3, END", "3.1 @ S3, END\n  3.6 @ END");
    assert_ne!(edited, original);
    std::fs::write(dir.path().join("friends.circuit"), edited).unwrap();

    let o = command(&[
        "diff",
        "HEAD:friends.circuit",
        "friends.circuit",
        "--model",
        stories().to_str().unwrap(),
    ])
    .current_dir(dir.path())
    .env("CIRCUIT_CACHE_DIR", "off")
    .output()
    .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("circuit base (changed)"), "{out}");
    assert!(
        out.contains("  - 3.5 @ S3, END") && out.contains("  + 3.6 @ END"),
        "{out}"
    );
    assert!(out.contains("circuit nothing (unchanged)"), "{out}");
    assert!(
        out.contains("faithfulness ") && out.contains(" -> "),
        "{out}"
    );
}

#[test]
fn format_flag_and_its_aliases_print_the_same_bytes() {
    let file = fixture("friends.circuit");
    let file = file.to_str().unwrap();
    for (format, alias) in [
        ("json", Some("--json")),
        ("markdown", Some("--markdown")),
        ("text", None),
    ] {
        let by_format = run(&["eval", file, "--format", format], "2");
        assert!(by_format.status.success(), "{}", stderr(&by_format));
        let by_alias = match alias {
            Some(flag) => run(&["eval", file, flag], "2"),
            None => run(&["eval", file], "2"),
        };
        assert_eq!(stdout(&by_format), stdout(&by_alias), "--format {format}");
    }
    // Two formats at once is a usage error, not a silent choice.
    let both = run(&["eval", file, "--format", "text", "--json"], "2");
    assert_eq!(both.status.code(), Some(2), "{}", stdout(&both));
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
}

/// A full-vs-empty gap within two standard errors of zero: every format says faithfulness is
/// ill-conditioned and why; a well-conditioned file (friends) carries no such warning.
#[test]
fn an_ill_conditioned_faithfulness_is_flagged_in_every_format() {
    let file = fixture("ill_conditioned/mixed.circuit");
    let file = file.to_str().unwrap();
    let text = run(&["eval", file], "2");
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(
        stdout(&text).contains(
            "  warning: faithfulness is ill-conditioned: it divides by m(full) - m(empty) = 0.1785, \
             which is within 2 standard errors (0.1848 each) of zero"
        ),
        "{}",
        stdout(&text)
    );
    let markdown = stdout(&run(&["eval", file, "--format", "markdown"], "2"));
    assert!(
        markdown.contains("> warning: `early`: faithfulness is ill-conditioned"),
        "{markdown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["eval", file, "--json"], "2"))).unwrap();
    let warning = &json["circuits"][0]["ill_conditioned"];
    let (gap, se) = (
        warning["gap"].as_f64().unwrap(),
        warning["gap_standard_error"].as_f64().unwrap(),
    );
    assert!(gap.abs() < 2.0 * se, "{warning}");

    let friends = fixture("friends.circuit");
    let clean = run(&["eval", friends.to_str().unwrap(), "--json"], "2");
    assert!(!stdout(&clean).contains("ill_conditioned"));
}

/// Off a terminal, progress is plain lines counted in prompt runs with an ETA (here one per
/// batch: `CIRCUIT_PROGRESS_SECONDS=0`); `--quiet` silences them and leaves the report alone.
#[test]
fn progress_is_plain_lines_off_a_terminal_and_quiet_silences_it() {
    let file = fixture("ill_conditioned/mixed.circuit");
    let file = file.to_str().unwrap();
    let logged = command(&["eval", file])
        .env("CIRCUIT_CACHE_DIR", "off")
        .env("CIRCUIT_PROGRESS_SECONDS", "0")
        .output()
        .unwrap();
    assert!(logged.status.success(), "{}", stderr(&logged));
    let lines: Vec<String> = stderr(&logged).lines().map(str::to_string).collect();
    // 6 reference prompts, then 6 prompts each for full, empty and the one circuit.
    assert_eq!(
        lines
            .last()
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .next(),
        Some("evaluating 1 circuit: 24/24 prompt runs (100%)"),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| l.contains("elapsed, about ")),
        "{lines:?}"
    );
    let quiet = command(&["eval", "--quiet", file])
        .env("CIRCUIT_CACHE_DIR", "off")
        .env("CIRCUIT_PROGRESS_SECONDS", "0")
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert_eq!(stderr(&quiet), "");
    assert_eq!(stdout(&quiet), stdout(&logged));
}
