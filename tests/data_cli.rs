//! `circuit dataset`: --list, generation to stdout or a file, inspect (table and JSON), and the
//! exit codes and messages of bad input.

mod cli_support;

use std::path::Path;
use std::process::Output;

use cli_support::{assert_fails, circuit, stderr, stdout};

const GPT2: &str = "tests/fixtures/gpt2-tokenizer";
const STORIES: &str = "../shared/models/stories260K";

#[test]
fn list_prints_one_builtin_per_line_name_first() {
    let output = circuit(&["dataset", "--list"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let expected: Vec<&str> = circuit::data::builtin::BUILTINS
        .iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, expected);
    assert!(
        text.lines().all(|l| l.split_whitespace().count() > 3),
        "{text}"
    );
}

/// `circuit dataset inspect` of one numerals prompt, with `extra` arguments.
fn inspect_numerals(extra: &[&str]) -> Output {
    circuit(
        &[
            &["dataset", "inspect", "seqcont.numerals", "--n", "1"],
            extra,
        ]
        .concat(),
    )
}

/// Five prompts of the letters generator, as `circuit dataset` arguments.
const LETTERS: [&str; 10] = [
    "dataset",
    "seqcont.letters",
    "--n",
    "5",
    "--seed",
    "2",
    "--len",
    "3",
    "--form",
    "template",
];

#[test]
fn generation_writes_the_library_jsonl() {
    let output = circuit(&LETTERS);
    assert!(output.status.success(), "{}", stderr(&output));
    let source = circuit::data::DatasetSource::Builtin {
        name: "seqcont.letters".into(),
        params: [
            ("n", circuit::data::ParamValue::Int(5)),
            ("seed", circuit::data::ParamValue::Int(2)),
            ("len", circuit::data::ParamValue::Int(3)),
            ("form", circuit::data::ParamValue::Str("template".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    let expected = circuit::data::jsonl::write(&circuit::data::load(&source).unwrap());
    assert_eq!(stdout(&output), expected);
    assert_eq!(expected.lines().count(), 5);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("letters.jsonl");
    let output = circuit(&[&LETTERS[..], &["--output", file.to_str().unwrap()]].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
}

#[test]
fn bad_names_and_parameters_fail_with_codes() {
    let err = assert_fails(
        &["dataset", "seqcont.digits"],
        2,
        "circuit::data::unknown_dataset",
    );
    assert!(err.contains("seqcont.days"), "{err}");
    assert_fails(
        &["dataset", "seqcont.days", "--len", "8"],
        2,
        "circuit::data::bad_parameter",
    );
    assert_fails(&["dataset"], 2, "--list");
}

#[test]
fn inspect_table_under_gpt2() {
    let output = inspect_numerals(&["--model", GPT2]);
    assert!(output.status.success(), "{}", stderr(&output));
    insta::assert_snapshot!(stdout(&output));
}

#[test]
fn inspect_table_under_stories260k_shows_split_slots_and_problems() {
    let output = inspect_numerals(&["--len", "2", "--form", "template", "--model", STORIES]);
    // Digits are single pieces under stories260K, so " 66" is 3 tokens: exit code 1. Only the
    // evaluated prompts' answers are problems: no setting reads a reference prompt's.
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("2 problem(s)"),
        "{}",
        stderr(&output)
    );
    insta::assert_snapshot!(stdout(&output));
}

#[test]
fn inspect_json_of_a_non_ascii_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zoe.jsonl");
    std::fs::write(
        &file,
        r#"{"template": "When {IO} and {S1} met, {S2} waved to", "fillers": {"IO": "Zoë", "S1": "Bo", "S2": "Bo"}, "answer": " Mary", "distractor": " Bob"}
"#,
    )
    .unwrap();
    let output = circuit(&[
        "dataset",
        "inspect",
        file.to_str().unwrap(),
        "--model",
        GPT2,
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["dataset"], "zoe");
    let prompt = &json["prompts"][0];
    assert_eq!(prompt["prompt"], "When Zoë and Bo met, Bo waved to");
    // GPT-2: When| Zo|ë| and| Bo| met|,| Bo| waved| to
    let tokens: Vec<&str> = prompt["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    let io = &prompt["labels"]["IO"];
    let (first, last) = (
        io["first"].as_u64().unwrap() as usize,
        io["last"].as_u64().unwrap() as usize,
    );
    assert_eq!(tokens[first..=last].concat(), " Zoë");
    assert!(first < last, "Zoë is several GPT-2 tokens: {tokens:?}");
    let s2 = prompt["labels"]["S2"]["last"].as_u64().unwrap() as usize;
    assert_eq!(tokens[s2], " Bo");
    assert_eq!(prompt["labels"]["END"], tokens.len() - 1);
    assert_eq!(tokens[tokens.len() - 1], " to");
    assert!(prompt["errors"].as_array().unwrap().is_empty());
    assert_eq!(prompt["answer"]["ids"].as_array().unwrap().len(), 1);
    // Each token's slot under `align by label`: the tokens of a multi-token IO before its last
    // count from the previous anchor (here the prompt start), its last token is `IO`.
    let slots: Vec<&str> = prompt["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slot"].as_str().unwrap())
        .collect();
    assert_eq!(
        slots,
        ["start", "start+1", "IO", "IO+1", "S1", "S1+1", "S1+2", "S2", "S2+1", "END"]
    );
}

#[test]
fn inspect_rejects_generator_flags_on_files_and_missing_files() {
    assert_fails(
        &["dataset", "inspect", "missing.jsonl", "--model", GPT2],
        2,
        "circuit::data::read",
    );
    assert_fails(
        &[
            "dataset",
            "inspect",
            "missing.jsonl",
            "--n",
            "3",
            "--model",
            GPT2,
        ],
        2,
        "circuit::cli::dataset_params",
    );
    assert_fails(
        &[
            "dataset",
            "inspect",
            "seqcont.numerals",
            "--model",
            "no/such/dir",
        ],
        2,
        // Found nowhere: not a folder, nor a hub name in the local HuggingFace cache.
        "circuit::model::not_found",
    );
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join(GPT2).exists());
}
