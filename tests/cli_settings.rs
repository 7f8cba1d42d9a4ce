//! The command line over `.circuit` files: several files and folders at once (`eval`, `test`,
//! `check`), `--set KEY=VALUE` overriding a setting without editing the file, `test` on files
//! without expectations, and `run --attention --format json`.

mod cli_support;

use circuit::model::{ForwardOptions, Model, ModelSource, NoInterventions};
use cli_support::{assert_fails, circuit, stderr, stdout};
use serde_json::Value;

const NUMERALS: &str = "circuits/toy-seqcont/numerals.circuit";
const LETTERS: &str = "circuits/toy-seqcont/letters.circuit";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn eval_takes_several_files_and_folders_one_report_each_in_order() {
    let o = circuit(&["eval", LETTERS, NUMERALS, "--set", "dataset.n=4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reports = json(&stdout(&o));
    let files: Vec<&str> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, [LETTERS, NUMERALS]);
    // Each file's report is the one it gets alone.
    let alone = circuit(&["eval", NUMERALS, "--set", "dataset.n=4", "--json"]);
    assert!(alone.status.success(), "{}", stderr(&alone));
    assert_eq!(reports[1], json(&stdout(&alone)));

    // A folder: every *.circuit under it, sorted; text reports one after the other.
    let dir = tempfile::tempdir().unwrap();
    for name in ["b.circuit", "a.circuit", "notes.txt"] {
        std::fs::copy(cli_support::root().join(NUMERALS), dir.path().join(name)).unwrap();
    }
    let o = circuit(&["eval", dir.path().to_str().unwrap(), "--set", "dataset.n=4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let a = text.find("a.circuit\n").expect("a.circuit's report");
    let b = text.find("b.circuit\n").expect("b.circuit's report");
    assert!(a < b && !text.contains("notes.txt"), "{text}");

    // One file that cannot be evaluated: the others still are, and the exit code is 2.
    let o = circuit(&["eval", NUMERALS, "no/such.circuit", "--set", "dataset.n=4"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).contains("circuit successor_mlps"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("circuit::check::read"),
        "{}",
        stderr(&o)
    );

    // Pictures are of one file.
    assert_fails(
        &["eval", NUMERALS, LETTERS, "--svg", "x.svg"],
        2,
        "circuit::eval::one_picture",
    );
}

#[test]
fn set_overrides_settings_and_the_report_records_it() {
    // --set gives the numbers of the file edited to say the same.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(cli_support::root().join(NUMERALS)).unwrap();
    assert!(text.contains("metric logit_diff"), "{text}");
    let edited = text
        .replace("metric logit_diff", "metric prob")
        .replace("n = 64", "n = 8");
    assert_ne!(edited, text.replace("metric logit_diff", "metric prob"));
    let path = dir.path().join("numerals.circuit");
    std::fs::write(&path, edited).unwrap();
    let by_edit = circuit(&["eval", path.to_str().unwrap(), "--json"]);
    assert!(by_edit.status.success(), "{}", stderr(&by_edit));
    let by_set = circuit(&[
        "eval",
        NUMERALS,
        "--set",
        "metric=prob",
        "--set",
        "dataset.n=8",
        "--json",
    ]);
    assert!(by_set.status.success(), "{}", stderr(&by_set));
    let (by_edit, by_set) = (json(&stdout(&by_edit)), json(&stdout(&by_set)));
    assert_eq!(by_set["circuits"], by_edit["circuits"]);
    assert_eq!(by_set["settings"]["metric"], "prob");
    assert_eq!(by_set["provenance"]["n_prompts"], 8);
    // The provenance says the settings were overridden, and how; an edited file's does not.
    assert_eq!(
        by_set["provenance"]["overrides"],
        serde_json::json!(["metric=prob", "dataset.n=8"])
    );
    assert!(by_edit["provenance"].get("overrides").is_none());
    let text = circuit(&[
        "eval",
        NUMERALS,
        "--set",
        "ablation=zero",
        "--set",
        "dataset.n=4",
    ]);
    assert!(text.status.success(), "{}", stderr(&text));
    let text = stdout(&text);
    assert!(text.contains("heads_and_mlps by zero"), "{text}");
    assert!(
        text.contains("overridden  --set ablation=zero --set dataset.n=4"),
        "{text}"
    );
}

#[test]
fn set_refuses_unknown_keys_and_values_with_a_did_you_mean() {
    for (args, code, needle) in [
        (
            vec!["check", NUMERALS, "--set", "metrc=prob"],
            "circuit::resolve::unknown_setting",
            "did you mean `metric`?",
        ),
        (
            vec!["eval", NUMERALS, "--set", "metric=porb"],
            "circuit::resolve::bad_override",
            "did you mean `prob`?",
        ),
        (
            vec!["test", NUMERALS, "--set", "align=lable"],
            "circuit::resolve::bad_override",
            "did you mean `label`?",
        ),
        (
            vec!["eval", NUMERALS, "--set", "metric"],
            "circuit::resolve::unknown_setting",
            "KEY=VALUE",
        ),
    ] {
        let err = assert_fails(&args, 2, code);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A parameter of a file dataset, and a parameter the generator does not take.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.circuit");
    std::fs::write(
        &path,
        format!(
            "dataset d = {:?}\n\ncircuit c {{\n  0.0 @ END\n}}\n",
            cli_support::fixture("eval/friends.jsonl").to_str().unwrap()
        ),
    )
    .unwrap();
    assert_fails(
        &["check", path.to_str().unwrap(), "--set", "dataset.n=3"],
        1,
        "circuit::resolve::bad_override",
    );
    assert_fails(
        &["check", NUMERALS, "--set", "dataset.m=3"],
        1,
        "circuit::resolve::dataset",
    );
}

#[test]
fn check_takes_folders() {
    let o = circuit(&["check", "circuits/toy-seqcont"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Every `.circuit` file under the folder, subfolders (scans/, found/) included.
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                if p.is_dir() {
                    count(&p)
                } else {
                    usize::from(p.extension().is_some_and(|x| x == "circuit"))
                }
            })
            .sum()
    }
    let n = count(&cli_support::root().join("circuits/toy-seqcont"));
    assert!(n > 10, "the folder holds the committed circuits");
    assert!(
        stderr(&o).contains(&format!("checked {n} files")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn test_says_when_a_file_has_no_expectations_and_refuses_to_pass_on_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.circuit");
    std::fs::write(&path, "circuit c {\n  0.0 @ END\n}\n").unwrap();
    let name = path.to_str().unwrap();
    let o = circuit(&["test", name]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "none {name}: no `expect` in this file, nothing tested"
        )),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("circuit::test::no_expectations"),
        "{}",
        stderr(&o)
    );
    // Beside a file with expectations: counted, noted, and the run passes on the others.
    let o = circuit(&["test", name, NUMERALS]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).ends_with("failed, 1 file without expectations\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn run_attention_as_json_prints_the_patterns_numbers() {
    let args = [
        "run",
        "--prompt",
        "1 2 3",
        "--attention",
        "1.0",
        "--attention",
        "0.2",
        "--format",
        "json",
    ];
    let o = circuit(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json(&stdout(&o));
    assert_eq!(doc["tokens"], serde_json::json!([" 1", " 2", " 3"]));
    // The engine's own pattern from its activation cache, `(B, H, T, T)`.
    let model = Model::open(&ModelSource::default_model()).unwrap();
    let ids = model.encode_prompt("1 2 3").unwrap();
    let options = ForwardOptions {
        cache: true,
        ..ForwardOptions::default()
    };
    let out = model.forward(&[ids], &options, &NoInterventions).unwrap();
    let cache = out.cache.unwrap();
    let heads = doc["heads"].as_array().unwrap();
    for (head, (layer, h)) in heads.iter().zip([(1, 0), (0, 2)]) {
        assert_eq!(
            (head["layer"].as_u64(), head["head"].as_u64()),
            (Some(layer), Some(h))
        );
        let pattern = &cache.layers[layer as usize].pattern;
        let expected: Vec<Vec<f32>> = (0..3)
            .map(|q| (0..3).map(|k| pattern[[0, h as usize, q, k]]).collect())
            .collect();
        let printed: Vec<Vec<f32>> = serde_json::from_value(head["pattern"].clone()).unwrap();
        assert_eq!(printed, expected, "head {layer}.{h}");
    }
    // With --svg as well, both come out, the numbers unchanged.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("a.svg");
    let mut with_svg = args.to_vec();
    with_svg.extend(["--svg", svg.to_str().unwrap()]);
    let both = circuit(&with_svg);
    assert!(both.status.success(), "{}", stderr(&both));
    assert_eq!(json(&stdout(&both)), doc);
    assert!(svg.exists());
    // Neither: a coded error.
    assert_fails(
        &["run", "--prompt", "1 2 3", "--attention", "1.0"],
        2,
        "circuit::run::attention_output",
    );
}
