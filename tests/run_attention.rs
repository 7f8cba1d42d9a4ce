//! `circuit run --attention L.H --svg`: attention heatmaps. A snapshot on the built-in model,
//! cell opacities read back and compared with the engine's own pattern, and the errors.

mod svg_support;

use std::process::{Command, Output};

use circuit::model::{ForwardOptions, Model, ModelSource, NoInterventions};
use svg_support::{parse_xml, with_class, Tag};

const PROMPT: &str = "Van done in 1. Hat done in 2. Sun done in";

fn circuit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_circuit"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// miette wraps long lines; this joins them back for `contains` checks.
fn flat(err: &str) -> String {
    err.split('\n')
        .map(|l| l.trim_start_matches([' ', '│', '×']).trim_end())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `circuit run` of `prompts` with `--attention head --svg svg`.
fn attention_run(prompts: &[&str], head: &str, svg: &std::path::Path) -> Output {
    let mut args = vec!["run"];
    for p in prompts {
        args.extend(["--prompt", p]);
    }
    args.extend(["--attention", head, "--svg", svg.to_str().unwrap()]);
    circuit(&args)
}

/// The heatmap of `heads` on [`PROMPT`] under the built-in model.
fn heatmap(heads: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("attention.svg");
    let mut args = vec!["run", "--prompt", PROMPT, "--svg", svg.to_str().unwrap()];
    for h in heads {
        args.extend(["--attention", h]);
    }
    let o = circuit(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::read_to_string(svg).unwrap()
}

/// The engine's pattern of head `layer.head` on [`PROMPT`], `(T, T)`.
fn engine_pattern(layer: usize, head: usize) -> Vec<Vec<f32>> {
    let model = Model::open(&ModelSource::default_model()).unwrap();
    let ids = model.encode_prompt(PROMPT).unwrap();
    let options = ForwardOptions {
        cache: true,
        ..ForwardOptions::default()
    };
    let out = model
        .forward(std::slice::from_ref(&ids), &options, &NoInterventions)
        .unwrap();
    let pattern = &out.cache.unwrap().layers[layer].pattern; // (B, H, T, T)
    (0..ids.len())
        .map(|q| (0..ids.len()).map(|k| pattern[[0, head, q, k]]).collect())
        .collect()
}

/// The cells of one panel as `(query, key) -> opacity`, from their positions on the grid.
fn cells(tags: &[Tag], layer: usize, head: usize, n: usize) -> Vec<Vec<Option<f64>>> {
    // Tags of the panel's group follow its `g` start tag, up to the next group or frame.
    let start = tags
        .iter()
        .position(|t| t.name == "g" && t.attrs.get("id") == Some(&format!("head-{layer}-{head}")))
        .expect("a group per head");
    let panel: Vec<&Tag> = tags[start + 1..]
        .iter()
        .take_while(|t| t.name == "rect" && t.attrs["class"] != "frame")
        .collect();
    assert_eq!(panel.len(), n * n, "one rect per (query, key)");
    let (x0, y0) = (panel[0].num("x"), panel[0].num("y"));
    let size = panel[0].num("width");
    let mut grid = vec![vec![None; n]; n];
    for rect in panel {
        let k = ((rect.num("x") - x0) / size).round() as usize;
        let q = ((rect.num("y") - y0) / size).round() as usize;
        grid[q][k] = match rect.attrs["class"].as_str() {
            "cell" => Some(rect.num("fill-opacity")),
            "masked" => None,
            other => panic!("unexpected rect {other}"),
        };
    }
    grid
}

#[test]
fn heatmap_of_two_heads_snapshot() {
    let svg = heatmap(&["0.1", "1.0"]);
    assert_eq!(svg, heatmap(&["0.1", "1.0"]), "byte-identical across runs");
    let tags = parse_xml(&svg);
    assert_eq!(
        with_class(&tags, "text", "panel-title")
            .iter()
            .map(|t| t.attrs["#text"].as_str())
            .collect::<Vec<_>>(),
        ["head 0.1", "head 1.0"]
    );
    insta::assert_snapshot!(svg);
}

#[test]
fn cell_opacity_is_the_engine_pattern() {
    let svg = heatmap(&["1.0"]);
    let tags = parse_xml(&svg);
    let pattern = engine_pattern(1, 0);
    let n = pattern.len();
    let grid = cells(&tags, 1, 0, n);
    // Token labels, one per position, for queries and keys.
    assert_eq!(with_class(&tags, "text", "query").len(), n);
    assert_eq!(with_class(&tags, "text", "key").len(), n);
    for q in 0..n {
        for k in 0..n {
            match grid[q][k] {
                None => assert!(k > q, "only future keys are masked ({q}, {k})"),
                Some(opacity) => {
                    assert!(k <= q, "({q}, {k}) is drawn but masked");
                    assert!(
                        (opacity - pattern[q][k] as f64).abs() <= 5e-5,
                        "({q}, {k}): opacity {opacity} vs weight {}",
                        pattern[q][k]
                    );
                }
            }
        }
        // The row's most attended key is its darkest cell.
        let argmax = |row: &[f64]| {
            (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap()
        };
        let drawn: Vec<f64> = grid[q].iter().map(|c| c.unwrap_or(-1.0)).collect();
        let engine: Vec<f64> = pattern[q].iter().map(|&w| w as f64).collect();
        let best = argmax(&engine);
        assert!(
            (drawn[best] - engine[best]).abs() <= 5e-5
                && drawn[argmax(&drawn)] - drawn[best] <= 1e-4,
            "row {q}: darkest cell {} but the head attends most to {best}",
            argmax(&drawn)
        );
    }
    // Rows sum to 1 (the softmax), as drawn.
    for (q, row) in grid.iter().enumerate() {
        let sum: f64 = row.iter().flatten().sum();
        assert!((sum - 1.0).abs() < 1e-3 * n as f64, "row {q} sums to {sum}");
    }
}

#[test]
fn unknown_head_names_the_valid_range() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("a.svg");
    let o = attention_run(&[PROMPT], "3.0", &svg);
    assert_eq!(o.status.code(), Some(2));
    let err = flat(&stderr(&o));
    assert!(err.contains("circuit::run::unknown_head"), "{err}");
    // The built-in model has 3 layers of 4 heads.
    assert!(err.contains("layers 0..2 and heads 0..3"), "{err}");
    assert!(!svg.exists(), "nothing written");

    let o = attention_run(&[PROMPT], "1.x", &svg);
    assert_eq!(o.status.code(), Some(2));
    let err = flat(&stderr(&o));
    assert!(err.contains("circuit::run::bad_head"), "{err}");
    assert!(err.contains("`1.x`"), "{err}");
}

#[test]
fn attention_needs_one_prompt_and_a_writable_file() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("a.svg");
    let o = attention_run(&["1 2", "3 4"], "0.0", &svg);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("circuit::run::attention_prompts"),
        "{}",
        stderr(&o)
    );

    let missing = dir.path().join("no/folder/a.svg");
    let o = attention_run(&["1 2"], "0.0", &missing);
    assert_eq!(o.status.code(), Some(2));
    let err = flat(&stderr(&o));
    // Found before the model is opened (util::outputs), naming the flag.
    assert!(err.contains("circuit::output::no_folder"), "{err}");
    assert!(err.contains("--svg"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // --attention without --svg is a usage error, not a silent no-op.
    let o = circuit(&["run", "--prompt", "1 2", "--attention", "0.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--svg"), "{}", stderr(&o));
}
