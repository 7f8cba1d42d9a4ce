//! A circuit written two equivalent ways (a group vs. a list, `extends` vs. spelled out, a range
//! vs. its positions) gives identical numbers: through the real front end (parse + resolve),
//! the data stage and stories260K, each version evaluated on its own.

use std::path::Path;

use circuit::measure::file::run_file;
use circuit::measure::SessionOptions;
use circuit::measure::ALL_METRICS;
use circuit::resolve::RealEnvironment;
use circuit::resolve::{resolve_source, ResolveOptions};

const HEADER: &str = r#"
model "../../../../shared/models/stories260K"
dataset friends = "friends.jsonl"
reference friends.corrupt
ablate heads by mean
metric logit_diff
"#;

fn per_prompt(text: &str, circuit: &str) -> Vec<Vec<f64>> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval");
    let source = format!("{HEADER}\n{text}");
    let resolved = resolve_source(
        "equivalence.circuit",
        &source,
        &base,
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{}", d.render_plain(100)));
    let run = run_file(
        &resolved.file,
        &[circuit.to_string()],
        SessionOptions::default(),
    )
    .unwrap();
    let metrics = run.evaluation.circuit(circuit).unwrap();
    ALL_METRICS.iter().map(|m| metrics[m].clone()).collect()
}

fn assert_identical(a: &str, name_a: &str, b: &str, name_b: &str) {
    let (x, y) = (per_prompt(a, name_a), per_prompt(b, name_b));
    assert_eq!(x, y, "{name_a} vs {name_b}");
    // And the circuit is not trivially the full model or the empty circuit.
    let logit_diff = &x[0];
    assert!(logit_diff.iter().any(|v| v.abs() > 1e-3));
}

#[test]
fn group_equals_list() {
    assert_identical(
        "heads movers = 3.1, 3.5, 4.2\ncircuit c {\n  0.* @ *\n  movers @ S3, END\n}\n",
        "c",
        "circuit c {\n  0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7 @ *\n  4.2 @ END, S3\n  3.1 @ S3, END\n  3.5 @ S3, END\n}\n",
        "c",
    );
}

#[test]
fn extends_equals_spelled_out() {
    assert_identical(
        "circuit base {\n  0.* @ *\n  1.2 @ END\n  3.1 @ S3\n  edge 3.1: S1 -> S3\n}\ncircuit variant extends base {\n  3.1 @ S3, END\n  2.4 @ *\n  drop 1.2\n}\n",
        "variant",
        "circuit variant {\n  0.* @ *\n  2.4 @ *\n  3.1 @ S3, END\n  edge 3.1: S1 -> S3\n}\n",
        "variant",
    );
}

#[test]
fn range_equals_its_positions() {
    assert_identical(
        "circuit c {\n  1.* @ S2..S3\n  2.3 @ END-2..END\n}\n",
        "c",
        "circuit c {\n  1.* @ S2, S2+1, S2+2, S2+3, S2+4, S2+5, S3\n  2.3 @ END-2, END-1, END\n}\n",
        "c",
    );
}
