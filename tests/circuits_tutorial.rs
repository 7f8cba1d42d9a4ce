//! docs/tutorial.md and README.md show the tool's real output. These tests rerun every complete
//! example in them (a ```` ```console ```` block holding `$ circuit ...` and its whole output)
//! and check the output is still exactly what the tool prints, so the docs' numbers cannot rot.
//! Blocks shortened for the page (a `...` line, lines "left out"), blocks that depend on an edit
//! (`circuit diff`) and blocks naming a file the repository does not hold are skipped; a test
//! fails if fewer examples than it expects are left to check.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_circuit");

/// Splits a command line on spaces, keeping double-quoted arguments whole (no escapes: the
/// tutorial's commands have none).
fn split_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    args.push(std::mem::take(&mut current));
                    any = false;
                }
            }
            _ => {
                current.push(c);
                any = true;
            }
        }
    }
    if any {
        args.push(current);
    }
    args
}

/// (command line, expected output) of every ```console block that runs `circuit`.
fn console_blocks(doc: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line != "```console" {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        if let Some(command) = body.first().and_then(|l| l.strip_prefix("$ circuit ")) {
            blocks.push((command.to_string(), body[1..].join("\n")));
        }
    }
    blocks
}

#[test]
fn the_tutorials_complete_examples_print_what_the_tool_prints() {
    check_console_examples("docs/tutorial.md", 5);
}

#[test]
fn the_readmes_complete_examples_print_what_the_tool_prints() {
    check_console_examples("README.md", 1);
}

/// Reruns every complete console example of the document at `rel` (from the repository root)
/// and fails, listing them, on those whose output differs, or when fewer than `at_least` were
/// checked.
fn check_console_examples(rel: &str, at_least: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(rel)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for (command, expected) in console_blocks(&doc) {
        let args = split_args(&command);
        let shortened = expected
            .lines()
            .any(|l| l.starts_with("...") || l.contains("left out"));
        let missing_file = args
            .iter()
            .any(|a| a.ends_with(".circuit") && !a.contains(':') && !root.join(a).exists());
        if shortened || missing_file || args[0] == "diff" {
            continue;
        }
        let output = Command::new(BIN)
            .args(&args)
            .current_dir(root)
            .env("NO_COLOR", "1")
            .env("CIRCUIT_CACHE_DIR", cache.path())
            .output()
            .expect("the binary runs");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if printed.trim_end() != expected.trim_end() {
            mismatches.push(format!(
                "$ circuit {command}\n--- {rel} shows:\n{expected}\n--- the tool prints:\n{printed}"
            ));
        }
        checked += 1;
    }
    assert!(
        checked >= at_least,
        "only {checked} examples of {rel} were checked"
    );
    assert!(
        mismatches.is_empty(),
        "{rel} is out of date: paste what the tool prints into it (and check the prose):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn command_lines_split_like_a_shell_on_quotes() {
    assert_eq!(
        split_args(r#"run --prompt "3 4 5 6" --top 3"#),
        ["run", "--prompt", "3 4 5 6", "--top", "3"]
    );
}
