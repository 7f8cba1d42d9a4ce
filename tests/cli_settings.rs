//! The command line over `.circuit` files: several files and folders at once (`eval`, `test`,
//! `check`), `--set KEY=VALUE` overriding a setting without editing the file, `test` on files
//! without expectations, and `run --attention --format json`.

mod cli_support;

use cli_support::{circuit, stderr, stdout};
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
    let o = circuit(&["eval", NUMERALS, LETTERS, "--svg", "x.svg"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("circuit::eval::one_picture"),
        "{}",
        stderr(&o)
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
        let o = circuit(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(code) && err.contains(needle),
            "{args:?}: {err}"
        );
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
    let o = circuit(&["check", path.to_str().unwrap(), "--set", "dataset.n=3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("circuit::resolve::bad_override"),
        "{}",
        stderr(&o)
    );
    let o = circuit(&["check", NUMERALS, "--set", "dataset.m=3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("circuit::resolve::dataset"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_takes_folders() {
    let o = circuit(&["check", "circuits/toy-seqcont"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let n = std::fs::read_dir(cli_support::root().join("circuits/toy-seqcont"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "circuit")
        })
        .count();
    let scans = std::fs::read_dir(cli_support::root().join("circuits/toy-seqcont/scans"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        stderr(&o).contains(&format!("checked {} files", n + scans)),
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
    let o = circuit(&[
        "run",
        "--prompt",
        "1 2 3",
        "--attention",
        "1.0",
        "--attention",
        "0.2",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json(&stdout(&o));
    assert_eq!(doc["tokens"], serde_json::json!([" 1", " 2", " 3"]));
    let heads = doc["heads"].as_array().unwrap();
    assert_eq!(
        (heads[0]["layer"].as_u64(), heads[0]["head"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        (heads[1]["layer"].as_u64(), heads[1]["head"].as_u64()),
        (Some(0), Some(2))
    );
    for head in heads {
        let rows = head["pattern"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        for (q, row) in rows.iter().enumerate() {
            let row: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            // Causal: nothing after the query; the rest sums to one.
            assert!(row[q + 1..].iter().all(|&w| w == 0.0), "{row:?}");
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
        }
    }
    // The numbers are the heatmap's: with --svg as well, both come out.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("a.svg");
    let both = circuit(&[
        "run",
        "--prompt",
        "1 2 3",
        "--attention",
        "1.0",
        "--attention",
        "0.2",
        "--format",
        "json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(both.status.success(), "{}", stderr(&both));
    assert_eq!(json(&stdout(&both)), doc);
    assert!(svg.exists());
    // Neither: a coded error.
    let o = circuit(&["run", "--prompt", "1 2 3", "--attention", "1.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("circuit::run::attention_output"),
        "{}",
        stderr(&o)
    );
}
