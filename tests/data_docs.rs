//! docs/datasets.md stays true: its console examples are run and compared with their output, and
//! its JSON examples are parsed as dataset records.

use std::path::Path;
use std::process::Command;

fn doc() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/datasets.md")).unwrap()
}

/// The contents of every fenced block with the given info string.
fn blocks(text: &str, info: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line == format!("```{info}") => current = Some(String::new()),
            Some(block) if line == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn console_examples_print_what_the_docs_show() {
    let examples = blocks(&doc(), "console");
    assert!(examples.len() >= 3);
    for block in examples {
        let (command, expected) = block.split_once('\n').unwrap();
        let args: Vec<&str> = command
            .strip_prefix("$ circuit ")
            .unwrap_or_else(|| panic!("not a circuit command: {command}"))
            .split_whitespace()
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_circuit"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{command}");
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            expected,
            "{command}"
        );
    }
}

#[test]
fn json_examples_are_valid_records() {
    let examples = blocks(&doc(), "json");
    assert!(examples.len() >= 3);
    for block in examples {
        let dataset = circuit::data::jsonl::parse(&block, Path::new("docs/datasets.md"))
            .unwrap_or_else(|e| panic!("{e}: {block}"));
        assert_eq!(dataset.clean.len(), 1);
    }
}
