//! The command line never harms a user's files or ends in a panic: closed pipes, outputs onto
//! inputs, symlinks, output folders checked before the work (issue 11).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_circuit");

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn circuit(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env(
            "CIRCUIT_CACHE_DIR",
            std::env::temp_dir().join("circuit-cli-safety-cache"),
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

fn run(args: &[&str]) -> Output {
    circuit(args).output().expect("the binary runs")
}

/// A pipe whose reading end is already closed: every write into it fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    writer.into()
}

/// Ended quietly: its own exit code, or killed by SIGPIPE as `cat`/`ls` are; never a panic.
fn ended_quietly(status: std::process::ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(SIGPIPE) {
            return true;
        }
    }
    matches!(status.code(), Some(0..=2))
}

#[cfg(unix)]
const SIGPIPE: i32 = 13; // the same on every Unix

/// Every command with output on stdout or stderr, written into a closed pipe: it ends quietly
/// (no panic, exit 101, or "Broken pipe" message on the other stream).
#[test]
fn every_command_ends_quietly_on_a_closed_pipe() {
    let friends = "tests/fixtures/eval/friends.circuit";
    let commands: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec![
            "run", "--prompt", "1 2 3", "--prompt", "4 5 6", "--top", "20",
        ],
        vec!["run", "--prompt", "1 2 3", "--json", "--logits"],
        vec!["check", "tests/fixtures/ok/warnings.circuit", friends],
        vec!["check", "--json", "tests/fixtures/ok/warnings.circuit"],
        vec!["check", "tests/fixtures/err/unknown_head.circuit"],
        vec![
            "fmt",
            "--check",
            "tests/fixtures/ok/comments.circuit",
            "tests/fixtures/ok/ioi.circuit",
        ],
        vec!["dataset", "--list"],
        vec!["dataset", "seqcont.numerals", "--n", "500"],
        vec!["dataset", "inspect", "seqcont.numerals"],
        vec!["eval", friends],
        vec!["eval", friends, "--json"],
        vec!["test", friends],
        vec![
            "diff",
            friends,
            "tests/fixtures/eval/bad/reference_length.circuit",
            "--no-eval",
        ],
        vec!["eval", "no/such/file.circuit"],
    ];
    for args in &commands {
        // stdout closed, stderr kept to read.
        let o = circuit(args)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert!(
            ended_quietly(o.status) && !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?} with a closed stdout: {:?}\n{err}",
            o.status
        );
        // stderr closed, stdout kept (`circuit check x 2>&1 >/dev/null | head -c 100`).
        let o = circuit(args)
            .stdout(Stdio::piped())
            .stderr(closed_pipe())
            .output()
            .unwrap();
        assert!(
            ended_quietly(o.status),
            "{args:?} with a closed stderr: {:?}\n{}",
            o.status,
            text(&o.stdout)
        );
        // Both closed.
        let status = circuit(args)
            .stdout(closed_pipe())
            .stderr(closed_pipe())
            .status()
            .unwrap();
        assert!(
            ended_quietly(status),
            "{args:?} with both closed: {status:?}"
        );
    }
}

/// A report into a standard output that cannot take it (a full disk: `/dev/full`) is a coded
/// error naming standard output, never a panic: the text is written through `emit`, the JSON of
/// `scores` streamed through `emit_with`.
#[cfg(target_os = "linux")]
#[test]
fn a_full_standard_output_is_a_coded_error() {
    let friends = "tests/fixtures/eval/friends.circuit";
    for args in [
        vec!["eval", friends],
        vec!["eval", friends, "--json"],
        vec!["scores", friends, "--format", "json"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full opens for writing");
        let o = circuit(&args).stdout(full).output().unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("circuit::eval::write")
                && err.contains("cannot write to standard output")
                && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

/// `circuit fmt link.circuit` formats the link's target; the link stays a link.
#[cfg(unix)]
#[test]
fn fmt_writes_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real.circuit");
    std::fs::write(&target, "circuit a {\n0.0   @ END\n}\n").unwrap();
    let link = dir.path().join("link.circuit");
    std::os::unix::fs::symlink("real.circuit", &link).unwrap();
    let o = run(&["fmt", link.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "circuit a {\n  0.0 @ END\n}\n"
    );
    let o = run(&["fmt", "--check", link.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stdout));
}

/// A write that fails names the file asked for, never the temporary file beside it.
#[test]
fn write_errors_name_the_destination() {
    let dir = tempfile::Builder::new().prefix("w").tempdir().unwrap();
    let out = dir.path().join("missing").join("x.jsonl");
    let o = run(&[
        "dataset",
        "seqcont.numerals",
        "--n",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("x.jsonl") && err.contains("does not exist") && !err.contains(".tmp"),
        "{err}"
    );
}

fn stories() -> PathBuf {
    repo("../shared/models/stories260K")
}

/// A copy of the friends fixture (circuit and dataset) in a temporary folder.
fn friends_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["friends.circuit", "friends.jsonl"] {
        std::fs::copy(
            repo("tests/fixtures/eval").join(name),
            dir.path().join(name),
        )
        .unwrap();
    }
    dir
}

/// `eval` refuses an output that is an input of the run (the file, its dataset, through `./`
/// or a symlink) or another output, with a coded error, and leaves every file as it was.
#[test]
fn outputs_onto_an_input_or_each_other_are_refused() {
    let dir = friends_copy();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        dir.path().join("friends.jsonl"),
        dir.path().join("data-link"),
    )
    .unwrap();
    let stories = stories();
    let model = stories.to_str().unwrap();
    let file = d("friends.circuit");
    let dotted = format!("{}/./friends.circuit", dir.path().display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["-o".into(), file.clone()], "circuit::output::is_input"),
        (vec!["--svg".into(), dotted], "circuit::output::is_input"),
        (
            vec!["-o".into(), d("friends.jsonl")],
            "circuit::output::is_input",
        ),
        #[cfg(unix)]
        (
            vec!["-o".into(), d("data-link")],
            "circuit::output::is_input",
        ),
        (
            vec!["-o".into(), format!("{model}/config.json")],
            "circuit::output::is_input",
        ),
        (
            vec![
                "-o".into(),
                d("r.svg"),
                "--svg".into(),
                format!(
                    "{}/../{}/r.svg",
                    d("."),
                    dir.path().file_name().unwrap().to_str().unwrap()
                ),
            ],
            "circuit::output::same_file",
        ),
    ];
    let before: Vec<Vec<u8>> = ["friends.circuit", "friends.jsonl"]
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect();
    let config_before = std::fs::read(stories.join("config.json")).unwrap();
    for (extra, code) in cases {
        let mut args = vec!["eval", &file, "--model", model];
        args.extend(extra.iter().map(String::as_str));
        let o = run(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(code), "{extra:?}: {err}");
        assert!(o.stdout.is_empty(), "{extra:?}");
    }
    let after: Vec<Vec<u8>> = ["friends.circuit", "friends.jsonl"]
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(
        config_before,
        std::fs::read(stories.join("config.json")).unwrap()
    );
    assert!(!dir.path().join("r.svg").exists());
}

/// A bad output path is found before the evaluation: a file whose data would fail to load
/// reports the output's folder, not the data error found later.
#[test]
fn output_paths_are_checked_before_the_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder").join("report.json");
    let file = repo("tests/fixtures/eval/bad/reference_length.circuit");
    for flag in ["-o", "--svg"] {
        let o = run(&[
            "eval",
            file.to_str().unwrap(),
            flag,
            missing.to_str().unwrap(),
        ]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("circuit::output::no_folder") && !err.contains("reference_length"),
            "{flag}: {err}"
        );
    }
    // `-o` onto a folder.
    let o = run(&[
        "eval",
        file.to_str().unwrap(),
        "-o",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        text(&o.stderr).contains("circuit::output::is_folder"),
        "{}",
        text(&o.stderr)
    );
}

/// A dataset for the built-in word-level tokenizer (which has `[UNK]`) and a file evaluating it.
fn unknown_word_case(jsonl: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.jsonl"), jsonl).unwrap();
    std::fs::write(
        dir.path().join("d.circuit"),
        "dataset d = \"d.jsonl\"\nreference d.clean\n\ncircuit a {\n  0.0 @ END\n}\n",
    )
    .unwrap();
    dir
}

/// An answer or distractor outside the vocabulary becomes `[UNK]`: a coded error, in `eval`
/// and in `dataset inspect` (it used to evaluate against token 0 with exit code 0).
#[test]
fn an_answer_that_becomes_the_unknown_token_is_an_error() {
    for (answer, distractor, what) in [(" banana", " 5", "answer"), (" 4", " kiwi", "distractor")] {
        let line = format!(
            "{{\"prompt\":\"1 2 3\",\"answer\":{answer:?},\"distractor\":{distractor:?}}}\n"
        );
        let dir = unknown_word_case(&line);
        let file = dir.path().join("d.circuit");
        let o = run(&["eval", file.to_str().unwrap()]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("circuit::data::unknown_answer") && err.contains(what),
            "{err}"
        );
        assert!(o.stdout.is_empty());
        let data = dir.path().join("d.jsonl");
        let o = run(&["dataset", "inspect", data.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            text(&o.stdout).contains("not in the tokenizer's vocabulary"),
            "{}",
            text(&o.stdout)
        );
    }
}

/// A prompt word outside the vocabulary evaluates, with a warning naming the prompt (report
/// note; `dataset inspect` per prompt).
#[test]
fn a_prompt_word_that_becomes_the_unknown_token_is_a_warning_naming_the_prompt() {
    let dir = unknown_word_case(
        "{\"prompt\":\"1 2 3\",\"answer\":\" 4\",\"distractor\":\" 5\"}\n\
         {\"prompt\":\"1 2 kiwi\",\"answer\":\" 4\",\"distractor\":\" 5\"}\n",
    );
    let file = dir.path().join("d.circuit");
    let o = run(&["eval", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("1 of 2 prompts have words outside the tokenizer's vocabulary")
            && out.contains("prompt 1 (\"1 2 kiwi\"): [\"kiwi\"]"),
        "{out}"
    );
    let data = dir.path().join("d.jsonl");
    let o = run(&["dataset", "inspect", data.to_str().unwrap()]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    assert!(
        out.contains(
            "warning: prompt 1 (\"1 2 kiwi\"): [\"kiwi\"] not in the tokenizer's vocabulary"
        ),
        "{out}"
    );
    // A known prompt has no warning.
    assert_eq!(out.matches("warning:").count(), 1, "{out}");
}

/// gpt2-f16's embedding has 300 rows and its tokenizer 280 pieces: `run` can predict an id the
/// tokenizer cannot decode, shown as `<id N>` (it was an empty string).
#[test]
fn an_id_the_tokenizer_cannot_decode_is_shown_as_its_number() {
    let model = repo("tests/fixtures/models/gpt2-f16");
    let args = [
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hello",
        "--top",
        "300",
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("\"<id 290>\"") && !out.contains(" \"\" "),
        "{out}"
    );
    let o = run(&[&args[..], &["--json"]].concat());
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let top = json["prompts"][0]["top"].as_array().unwrap();
    for entry in top {
        let id = entry["token_id"].as_u64().unwrap();
        let token = entry["token"].as_str().unwrap();
        assert!(id < 280 || token == format!("<id {id}>"), "{entry}");
    }
}

/// Runs git in `dir`, asserting success.
fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", text(&o.stderr));
}

/// The faithfulness `circuit eval --json` gives for circuit `a` of the file in `dir`.
fn faithfulness_of(dir: &Path) -> f64 {
    let o = circuit(&["eval", "d.circuit", "--json"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    json["circuits"][0]["faithfulness"].as_f64().unwrap()
}

/// `diff HEAD~1:d.circuit HEAD:d.circuit` where only the dataset changed between the commits:
/// each side is evaluated on the dataset of its own revision (it used to read the working
/// tree's for both and print "unchanged" numbers).
#[test]
fn diff_of_revisions_reads_each_revisions_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let generate = |seed: &str| {
        let o = circuit(&[
            "dataset",
            "seqcont.numerals",
            "--n",
            "16",
            "--seed",
            seed,
            "-o",
            "d.jsonl",
        ])
        .current_dir(d)
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    git(d, &["init", "-q"]);
    generate("0");
    std::fs::write(
        d.join("d.circuit"),
        "dataset d = \"d.jsonl\"\nreference d.corrupt\n\ncircuit a {\n  0.* @ *\n  1.0 @ END\n}\n",
    )
    .unwrap();
    let old = faithfulness_of(d);
    git(d, &["add", "."]);
    git(d, &["commit", "-qm", "v1"]);
    generate("5");
    let new = faithfulness_of(d);
    git(d, &["commit", "-qam", "v2"]);
    assert!(
        (old - new).abs() > 0.01,
        "the datasets must give other numbers"
    );

    let o = circuit(&["diff", "HEAD~1:d.circuit", "HEAD:d.circuit"])
        .current_dir(d)
        .output()
        .unwrap();
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    let expected = format!("faithfulness {old:.4} -> {new:.4}");
    assert!(out.contains(&expected), "expected `{expected}`:\n{out}");
    // Only the data changed: no setting is reported as changed.
    assert!(!out.contains("dataset"), "{out}");
}

/// A revision whose file refers to a dataset that revision does not hold (untracked): refused
/// with the reason, never evaluated on the working tree's file.
#[test]
fn diff_refuses_a_file_the_revision_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q"]);
    std::fs::copy(
        repo("tests/fixtures/eval/friends.jsonl"),
        d.join("untracked.jsonl"),
    )
    .unwrap();
    std::fs::write(
        d.join("d.circuit"),
        "dataset d = \"untracked.jsonl\"\n\ncircuit a {\n  0.0 @ END\n}\n",
    )
    .unwrap();
    git(d, &["add", "d.circuit"]);
    git(d, &["commit", "-qm", "v1"]);
    let o = circuit(&["diff", "HEAD:d.circuit", "d.circuit", "--no-eval"])
        .current_dir(d)
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("circuit::diff::not_in_revision") && err.contains("untracked.jsonl"),
        "{err}"
    );
}

/// The `× message` lines of miette's rendering that lack a `circuit::STAGE::name` code on the
/// line before them (miette prints the code there).
fn uncoded_errors(rendered: &str) -> Vec<String> {
    let lines: Vec<&str> = rendered.lines().collect();
    let mut uncoded = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if indent > 2 || !line.trim_start().starts_with("× ") {
            continue;
        }
        let code = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim());
        let coded = code.is_some_and(|c| {
            let c = c.strip_prefix("Error: ").unwrap_or(c);
            let parts: Vec<&str> = c.split("::").collect();
            parts.len() >= 3
                && parts[0] == "circuit"
                && parts[1..].iter().all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|ch| ch.is_ascii_lowercase() || ch == '_' || ch.is_ascii_digit())
                })
        });
        if !coded {
            uncoded.push(line.to_string());
        }
    }
    uncoded
}

/// Every error a user can see carries a code: each rendered error in every insta snapshot, and
/// the stderr of a failing run of every command (a walk over the CLI's error paths). Clap's own
/// usage errors (`error: unexpected argument`) are the one exception: they are not ours.
#[test]
fn every_error_a_user_can_see_has_a_code() {
    // The checker itself: an error without a code line is found, one with a code is not.
    assert_eq!(uncoded_errors("Error: oops\n\n  × bad\n").len(), 1);
    assert!(uncoded_errors("circuit::data::jsonl\n\n  × bad\n").is_empty());
    let mut rendered_errors = 0;
    for entry in std::fs::read_dir(repo("tests/snapshots")).unwrap() {
        let path = entry.unwrap().path();
        let snapshot = std::fs::read_to_string(&path).unwrap();
        rendered_errors += snapshot.lines().filter(|l| l.starts_with("  × ")).count();
        let uncoded = uncoded_errors(&snapshot);
        assert!(uncoded.is_empty(), "{}: {uncoded:#?}", path.display());
    }
    assert!(
        rendered_errors >= 10,
        "the walk found the rendered errors ({rendered_errors})"
    );

    let dir = friends_copy();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let unk =
        unknown_word_case("{\"prompt\":\"1 2 3\",\"answer\":\" banana\",\"distractor\":\" 5\"}\n");
    let unk = unk.path().join("d.circuit").to_str().unwrap().to_string();
    let friends = d("friends.circuit");
    let model = stories().to_str().unwrap().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["eval", "no/such.circuit"],
        vec!["eval", "tests/fixtures/err/unknown_head.circuit"],
        vec!["eval", "tests/fixtures/eval/bad/multi_token_answer.circuit"],
        vec!["eval", "tests/fixtures/eval/bad/reference_length.circuit"],
        vec!["eval", "tests/fixtures/eval/bad/position_outside.circuit"],
        vec![
            "eval",
            "tests/fixtures/eval/friends.circuit",
            "--circuit",
            "bsae",
        ],
        vec!["eval", &friends, "--model", &model, "-o", &friends],
        vec![
            "eval",
            &friends,
            "--model",
            &model,
            "-o",
            "no/folder/x.json",
        ],
        vec!["eval", &unk],
        vec!["test", "no/such/folder"],
        vec!["check", "no/such.circuit"],
        vec!["fmt", "no/such.circuit"],
        vec!["run"],
        vec!["run", "--model", "no/such/model", "--prompt", "x"],
        vec![
            "run",
            "--prompt",
            "1 2",
            "--attention",
            "9.9",
            "--svg",
            "x.svg",
        ],
        vec![
            "run",
            "--prompt",
            "1 2",
            "--attention",
            "x",
            "--svg",
            "x.svg",
        ],
        vec!["run", "--prompts", "no/such/prompts.txt"],
        vec!["dataset"],
        vec!["dataset", "no.such.builtin"],
        vec!["dataset", "inspect", "no/such.jsonl"],
        vec!["diff", "no/such.circuit", "HEAD:nothing.circuit"],
        vec!["diff", "NOREV:x.circuit", &friends],
        vec![
            "eval",
            "circuits/toy-seqcont/numerals.circuit",
            "--set",
            "metrc=prob",
        ],
        vec![
            "eval",
            "circuits/toy-seqcont/numerals.circuit",
            "--set",
            "metric=porb",
        ],
        vec!["check", "--set", "dataset.n=2", &friends],
        vec![
            "run",
            "--model",
            "no-such-org/no-such-model",
            "--prompt",
            "x",
        ],
        vec!["run", "--prompt", "1 2", "--attention", "1.0"],
        vec!["test", "tests/fixtures/ok/no_circuit.circuit"],
        vec![
            "eval",
            "circuits/toy-seqcont/numerals.circuit",
            "circuits/toy-seqcont/letters.circuit",
            "--svg",
            "x.svg",
        ],
        vec!["discover", &friends, "--target", "2"],
        vec!["discover", "no/such.circuit", "--target", "0.9"],
        vec!["discover", &friends, "--target", "0.9", "--circuit", "bsae"],
        vec![
            "discover",
            "circuits/toy-seqcont/numerals_template.circuit",
            "--target",
            "1.4",
        ],
        vec![
            "discover",
            "circuits/toy-seqcont/numerals_template.circuit",
            "--target",
            "0.9",
            "-o",
            "no/folder/found.circuit",
        ],
        vec![
            "discover",
            "circuits/toy-seqcont/numerals_template.circuit",
            "--target",
            "0.9",
            "-o",
            "circuits/toy-seqcont/numerals.circuit",
        ],
        vec![
            "discover",
            "circuits/toy-seqcont/numerals_template.circuit",
            "--target",
            "0.9",
            "--attention-threshold",
            "0.1",
        ],
    ];
    for args in &cases {
        let o = run(args);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains("circuit::"), "{args:?} shows no code:\n{err}");
        let uncoded = uncoded_errors(&err);
        assert!(uncoded.is_empty(), "{args:?}: {uncoded:#?}\n{err}");
    }
}
