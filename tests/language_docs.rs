//! Every ```circuit block in docs/language.md is a complete file that parses, resolves (against
//! GPT-2 small's shape) and is already in canonical form; every ```circuit-error block fails.

mod language_support;

use std::path::Path;

use circuit::data::DatasetSource;
use circuit::model::{ModelConfig, ModelSource};
use circuit::resolve::{resolve_source, Environment, ResolveOptions};
use circuit::syntax::format_source;
use language_support::{FakeEnvironment, GPT2_SMALL};

/// Any model is GPT-2 small (12 × 12); datasets as in the other language tests.
struct DocsEnvironment;

impl Environment for DocsEnvironment {
    fn model_config(&self, _source: &ModelSource) -> Result<ModelConfig, String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(GPT2_SMALL);
        ModelConfig::from_dir(&dir).map_err(|e| e.to_string())
    }
    fn dataset_labels(&self, source: &DatasetSource) -> Result<Vec<String>, String> {
        FakeEnvironment.dataset_labels(source)
    }
}

/// (language, first line number, text) of every fenced block.
fn blocks(markdown: &str) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => current = Some((lang.trim().to_string(), i + 2, String::new())),
            (Some(_), Some("")) => out.push(current.take().unwrap()),
            (Some((_, _, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "unclosed code block");
    out
}

#[test]
fn every_circuit_example_in_the_docs_checks() {
    let markdown = include_str!("../docs/language.md");
    let mut checked = 0;
    for (lang, line, text) in blocks(markdown) {
        let name = format!("docs/language.md:{line}");
        match lang.as_str() {
            "circuit" => {
                let resolved = resolve_source(
                    &name,
                    &text,
                    Path::new("docs"),
                    &DocsEnvironment,
                    &ResolveOptions::default(),
                );
                if let Err(d) = &resolved {
                    panic!("example at {name} does not check:\n{}", d.render_plain(100));
                }
                let formatted = format_source(&name, &text).unwrap();
                assert_eq!(
                    formatted, text,
                    "example at {name} is not in canonical form"
                );
                checked += 1;
            }
            "circuit-error" => {
                let result = resolve_source(
                    &name,
                    &text,
                    Path::new("docs"),
                    &DocsEnvironment,
                    &ResolveOptions::default(),
                );
                assert!(result.is_err(), "example at {name} should fail to check");
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 15, "only {checked} examples found");
}

#[test]
fn the_rendered_error_in_the_docs_is_what_check_prints() {
    let markdown = include_str!("../docs/language.md");
    let all = blocks(markdown);
    let error_at = all.iter().position(|b| b.0 == "circuit-error").unwrap();
    let (_, _, source) = &all[error_at];
    let (_, _, shown) = &all[error_at + 1];
    let diagnostics = resolve_source(
        "c.circuit",
        source,
        Path::new("docs"),
        &DocsEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_err();
    assert_eq!(&diagnostics.render_plain(100), shown);
}
