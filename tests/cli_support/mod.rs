//! The one way the CLI tests run the built `circuit` binary (`mod cli_support;` in a test file).
//!
//! Every run: the repository root as working directory (relative fixture paths work), no colour
//! (`NO_COLOR`), one test-only disk cache (never the user's), and stdin closed unless given.
#![allow(dead_code)] // each test binary uses the part it needs

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository root (`CARGO_MANIFEST_DIR`).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shared pretrained stories260K model (read in place, never copied into the repo).
pub fn stories() -> PathBuf {
    root().join("../shared/models/stories260K")
}

/// A path under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// One reference-value cache for every CLI test (entries are keyed by content), so the tests
/// never write to the user's cache and later runs exercise cache hits.
pub fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("circuit-cli-test-cache")
}

/// `circuit ARGS` as a `Command` with the defaults above, for tests that set more (env, dir).
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_circuit"));
    command
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env("CIRCUIT_CACHE_DIR", cache_dir())
        .stdin(Stdio::null());
    command
}

/// Runs `circuit ARGS` to completion.
pub fn circuit(args: &[&str]) -> Output {
    command(args).output().expect("the circuit binary runs")
}

/// Runs `circuit ARGS` with `input` on stdin.
pub fn circuit_with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the circuit binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// Exit code, stdout and stderr in one snapshot.
pub fn transcript(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().unwrap_or(-1),
        stdout(out),
        stderr(out)
    )
}

/// Asserts that `args` exit with `code` and that stderr names `needle`; returns stderr.
pub fn assert_fails(args: &[&str], code: i32, needle: &str) -> String {
    let out = circuit(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?} should mention {needle:?}: {err}"
    );
    err
}

/// `DIR/digits.jsonl`: `count` (at most 6) prompts of `len` consecutive digits starting at 1,
/// 2, 3, 4, 5 and then 0 (`"1234"`, …, `"0123"`; digits count mod 10), each answered by the
/// next digit against the one after it (`"5"` against `"6"`): the small dataset the family
/// fixtures' tests share.
pub fn digits_jsonl(dir: &Path, count: usize, len: usize) -> PathBuf {
    assert!(count <= 6, "six prompts at most");
    let digit = |i: usize| char::from(b'0' + (i % 10) as u8);
    let lines: String = (1..=count)
        .map(|i| i % 6)
        .map(|start| {
            let prompt: String = (start..start + len).map(digit).collect();
            format!(
                "{{\"prompt\": \"{prompt}\", \"answer\": \"{}\", \"distractor\": \"{}\"}}\n",
                digit(start + len),
                digit(start + len + 1)
            )
        })
        .collect();
    let path = dir.join("digits.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}
