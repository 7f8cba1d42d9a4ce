//! What circuits mean under sliding-window attention (docs/semantics.md, "Sliding windows"): a
//! query sees exactly the keys its layer's window allows; a QK edge outside the window is an
//! error naming the head, the positions and the window (at resolve time when that holds
//! whatever the tokens, per prompt at evaluation otherwise); edge-mean ablation and knockout
//! touch visible keys only, so keeping every visible key is keeping the node, bit for bit.
//!
//! On the random Mistral fixture whose every layer attends to the last 3 keys
//! (`tests/fixtures/models/mistral-window-f32`, checked against transformers in
//! engine_parity), with prompts of 7 tokens (BOS, 5 digits, and the last digit at `END`).

mod cli_support;

use std::path::{Path, PathBuf};

use circuit::measure::session::select_circuits;
use circuit::measure::{Session, SessionOptions};
use circuit::resolve::bound::Metric;
use circuit::resolve::{load_file, RealEnvironment, ResolveOptions};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/mistral-window-f32")
}

/// A `.circuit` file on the fixture with `settings` and `circuits`, and its digits dataset.
fn write_file(dir: &Path, settings: &str, circuits: &str) -> PathBuf {
    cli_support::digits_jsonl(dir, 5, 6);
    let text = format!(
        "model \"{}\"\ndataset digits = \"digits.jsonl\"\nreference digits\nmetric logit_diff\n{settings}\n{circuits}",
        fixture().display()
    );
    let path = dir.join("windows.circuit");
    std::fs::write(&path, text).unwrap();
    path
}

/// Per-prompt logit differences of each named circuit.
fn evaluate(path: &Path, names: &[&str]) -> miette::Result<Vec<Vec<f64>>> {
    let file = load_file(path, &RealEnvironment, &ResolveOptions::default())
        .expect("the file resolves")
        .file;
    let mut session = Session::open(&file, SessionOptions::default())?;
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let circuits = select_circuits(&file, &names)?;
    let refs: Vec<&_> = circuits.iter().collect();
    let evaluation = session.evaluate(&refs)?;
    Ok(names
        .iter()
        .map(|n| evaluation.circuit(n).unwrap()[&Metric::LogitDiff].clone())
        .collect())
}

#[test]
fn a_qk_edge_outside_the_window_whatever_the_tokens_is_a_resolve_error() {
    let dir = tempfile::tempdir().unwrap();
    // BOS+3 sees BOS+1, BOS+2, BOS+3: `BOS` is 3 tokens back.
    let path = write_file(
        dir.path(),
        "",
        "circuit far {\n  edge 1.0: BOS -> BOS+3\n}\n",
    );
    let Err(err) = load_file(&path, &RealEnvironment, &ResolveOptions::default()) else {
        panic!("resolution fails");
    };
    let text = format!("{:?}", miette::Report::new(err));
    for needle in [
        "circuit::resolve::key_outside_window",
        "1.0",
        "3 tokens before",
        "last 3 keys",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    // Two tokens back is inside the window.
    let path = write_file(
        dir.path(),
        "",
        "circuit near {\n  edge 1.0: BOS -> BOS+2\n}\n",
    );
    assert!(evaluate(&path, &["near"]).is_ok());
}

#[test]
fn a_qk_edge_outside_the_window_of_an_evaluated_prompt_is_an_error_naming_the_positions() {
    let dir = tempfile::tempdir().unwrap();
    // `BOS` and `END` have no common anchor: only the prompts say END is token 6.
    let path = write_file(dir.path(), "", "circuit far {\n  edge 1.0: BOS -> END\n}\n");
    let err = evaluate(&path, &["far"]).expect_err("the evaluation fails");
    let text = format!("{} {err}", err.code().expect("a coded error"));
    for needle in [
        "circuit::plan::key_outside_window",
        "1.0",
        "token 6",
        "3 keys at tokens 4..=6",
        "token 0",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
}

#[test]
fn keeping_every_visible_key_is_keeping_the_node_under_edge_mean_and_knockout() {
    for settings in ["ablate edges by mean", "ablate edges by knockout"] {
        let dir = tempfile::tempdir().unwrap();
        // `*` names every key; the window leaves END-2..END of them (older keys are dropped
        // like keys after the query), so both edge circuits keep every key 1.0 reads at END.
        let path = write_file(
            dir.path(),
            settings,
            "circuit node {\n  1.0 @ END\n}\n\
             circuit every_key {\n  edge 1.0: * -> END\n}\n\
             circuit window {\n  edge 1.0: END-2..END -> END\n}\n\
             circuit fewer {\n  edge 1.0: END-1..END -> END\n}\n",
        );
        let got = evaluate(&path, &["node", "every_key", "window", "fewer"]).unwrap();
        assert_eq!(got[1], got[0], "{settings}: `*` is the node");
        assert_eq!(got[2], got[0], "{settings}: the window's keys are the node");
        // Dropping a visible key changes the numbers (the test can fail).
        assert_ne!(got[3], got[0], "{settings}: a visible key dropped");
    }
}
