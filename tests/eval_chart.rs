//! `circuit eval --svg`: the faithfulness chart. A snapshot on the built-in model, then checks
//! that read the numbers back out of the SVG: bar widths on the axis scale, an axis that grows
//! for values below 0 and above 1, escaped text, well-formed XML, and a clear error for a path
//! that cannot be written.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

mod svg_support;

use circuit::measure::file::Provenance;
use circuit::measure::{Quantiles, Scores};
use circuit::report::svg::faithfulness_chart;
use circuit::report::{CircuitReport, Contents, FileReport, SettingsReport, AGGREGATION};
use svg_support::{parse_xml, with_class, Tag};

const TOY: &str = "tests/fixtures/eval/chart/toy.circuit";

/// Runs the binary from the crate root (so the file path in the chart's title is relative and
/// the snapshot is the same on every machine), with a private reference-value cache.
fn circuit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_circuit"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "CIRCUIT_CACHE_DIR",
            std::env::temp_dir().join("circuit-eval-chart-test-cache"),
        )
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The toy fixture's chart (written next to a JSON report) and that report.
fn toy_chart(dir: &Path, name: &str) -> (String, serde_json::Value) {
    let svg = dir.join(name);
    let json = dir.join(format!("{name}.json"));
    let o = circuit(&[
        "eval",
        TOY,
        "--json",
        "-o",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (std::fs::read_to_string(svg).unwrap(), report)
}

/// The x axis read back from the chart: `(value, pixel)` of every tick, from the tick labels
/// and the tick marks below the plot (drawn in the same order).
fn axis(tags: &[Tag]) -> Vec<(f64, f64)> {
    let labels = with_class(tags, "text", "tick-label");
    let marks = with_class(tags, "line", "tick");
    assert_eq!(labels.len(), marks.len());
    assert!(labels.len() >= 2, "at least two ticks");
    labels
        .iter()
        .zip(&marks)
        .map(|(l, m)| {
            assert!((l.num("x") - m.num("x1")).abs() < 1e-9, "label under mark");
            (l.attrs["#text"].parse::<f64>().unwrap(), m.num("x1"))
        })
        .collect()
}

/// Pixels per unit of faithfulness and the pixel of 0, from the axis.
fn scale(axis: &[(f64, f64)]) -> (f64, f64) {
    let (v0, p0) = axis[0];
    let (v1, p1) = axis[axis.len() - 1];
    let per_unit = (p1 - p0) / (v1 - v0);
    // Every tick lies on the same line (an evenly spaced, linear axis).
    for &(v, p) in axis {
        assert!(
            (p0 + (v - v0) * per_unit - p).abs() < 0.02,
            "tick {v} at {p}"
        );
    }
    (per_unit, p0 - v0 * per_unit)
}

#[test]
fn chart_of_the_toy_model_snapshot_and_determinism() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = toy_chart(dir.path(), "a.svg");
    let (second, _) = toy_chart(dir.path(), "b.svg");
    assert_eq!(first, second, "byte-identical across runs");
    parse_xml(&first);
    insta::assert_snapshot!(first);
}

#[test]
fn chart_comes_with_the_normal_text_report() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("chart.svg");
    let o = circuit(&["eval", TOY, "--svg", svg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("circuit movers_nodes"), "{text}");
    assert!(std::fs::read_to_string(svg).unwrap().starts_with("<?xml"));
}

#[test]
fn bar_widths_are_the_faithfulness_on_the_axis_scale() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, report) = toy_chart(dir.path(), "chart.svg");
    let tags = parse_xml(&svg);
    let (per_unit, zero) = scale(&axis(&tags));
    let bars = with_class(&tags, "rect", "bar");
    let names = with_class(&tags, "text", "name");
    let circuits = report["circuits"].as_array().unwrap();
    assert_eq!(bars.len(), circuits.len(), "one bar per circuit");
    assert_eq!(names.len(), circuits.len());
    let mut saw_negative = false;
    for ((bar, name), c) in bars.iter().zip(&names).zip(circuits) {
        assert_eq!(
            name.attrs["#text"],
            c["name"].as_str().unwrap(),
            "file order"
        );
        let f = c["faithfulness"].as_f64().unwrap();
        let (x, width) = (bar.num("x"), bar.num("width"));
        // Coordinates are rounded to 0.01 px.
        assert!(
            (width - f.abs() * per_unit).abs() <= 0.02,
            "{}: width {width} for {f} at {per_unit} px per unit",
            c["name"]
        );
        let start = if f < 0.0 { x + width } else { x };
        assert!((start - zero).abs() <= 0.02, "bars start at 0");
        let negative = bar.attrs["class"].contains("negative");
        assert_eq!(negative, f < 0.0, "negative bars are marked");
        saw_negative |= negative;
        // The value label sits at the bar's end.
        let label = tags
            .iter()
            .find(|t| {
                t.attrs.get("class").map(String::as_str) == Some("value")
                    && (t.num("y") - (bar.num("y") + 12.0)).abs() < 1e-9
            })
            .expect("a value label per bar");
        assert_eq!(label.attrs["#text"], format!("{f:.4}"));
    }
    assert!(
        saw_negative,
        "the fixture has a negative circuit (only_layer2)"
    );
    // The per-prompt median tick of each circuit is at its median on the same scale.
    let medians = with_class(&tags, "line", "median");
    assert_eq!(medians.len(), circuits.len());
    for (m, c) in medians.iter().zip(circuits) {
        let median = c["per_prompt_faithfulness"]["median"].as_f64().unwrap();
        assert!((m.num("x1") - (zero + median * per_unit)).abs() <= 0.02);
    }
}

// --- Charts of hand-made reports: values the toy model does not give. ---

fn quantiles(min: f64, q25: f64, median: f64, q75: f64, max: f64) -> Quantiles {
    Quantiles {
        min,
        q25,
        median,
        q75,
        max,
        n_prompts: 10,
    }
}

fn circuit_report(name: &str, faithfulness: Option<f64>, q: Option<Quantiles>) -> CircuitReport {
    CircuitReport {
        name: name.to_string(),
        metric: "logit_diff",
        scores: Scores {
            full: 2.0,
            circuit: 1.0,
            empty: 0.0,
            faithfulness,
            ratio: Some(0.5),
            per_prompt_faithfulness: q,
            ill_conditioned: None,
        },
        metrics: BTreeMap::new(),
        contents: Contents {
            heads: 1,
            mlps: 0,
            qk_edges: 0,
            path_edges: 0,
        },
    }
}

fn file_report(file: &str, circuits: Vec<CircuitReport>) -> FileReport {
    FileReport {
        file: file.to_string(),
        provenance: Provenance {
            model: "models/a&b".into(),
            model_sha256: "0".repeat(64),
            tokenizer_sha256: "1".repeat(64),
            dataset: "data<1>.jsonl".into(),
            dataset_sha256: "2".repeat(64),
            n_prompts: 10,
            reference: "data<1>.jsonl: reference prompts".into(),
            n_reference: 10,
            overrides: Vec::new(),
        },
        settings: SettingsReport {
            metric: "logit_diff",
            ablation: "mean",
            edge_ablation: "edge_mean",
            scope: "heads",
            reference: "data<1>.jsonl: reference prompts (10 prompts)".into(),
            alignment: "position",
            aggregation: AGGREGATION,
        },
        notes: vec![],
        circuits,
    }
}

#[test]
fn negative_and_above_one_values_extend_the_axis() {
    let report = file_report(
        "wide.circuit",
        vec![
            circuit_report(
                "overshoot",
                Some(1.7),
                Some(quantiles(0.2, 1.1, 1.6, 2.0, 2.45)),
            ),
            circuit_report(
                "harmful",
                Some(-2.3),
                Some(quantiles(-3.1, -2.5, -2.2, -1.9, -0.4)),
            ),
        ],
    );
    let tags = parse_xml(&faithfulness_chart(&report));
    let axis = axis(&tags);
    let (lowest, highest) = (axis[0].0, axis[axis.len() - 1].0);
    assert!(
        lowest <= -3.1 && highest >= 2.45,
        "axis {lowest}..{highest}"
    );
    // Not absurdly wider than needed: within one step beyond the data on each side.
    let step = axis[1].0 - axis[0].0;
    assert!(lowest > -3.1 - step && highest < 2.45 + step, "{axis:?}");
    let (per_unit, zero) = scale(&axis);
    let bars = with_class(&tags, "rect", "bar");
    assert!((bars[0].num("width") - 1.7 * per_unit).abs() <= 0.02);
    assert!((bars[1].num("width") - 2.3 * per_unit).abs() <= 0.02);
    assert!((bars[1].num("x") - (zero - 2.3 * per_unit)).abs() <= 0.02);
    // Everything drawn on the axis lies within its ends.
    let (left, right) = (axis[0].1, axis[axis.len() - 1].1);
    for line in with_class(&tags, "line", "whisker") {
        for x in [line.num("x1"), line.num("x2")] {
            assert!(x >= left - 0.01 && x <= right + 0.01, "whisker at {x}");
        }
    }
    // Reference lines at 0 and 1.
    let refs: Vec<f64> = with_class(&tags, "line", "ref")
        .iter()
        .map(|l| l.num("x1"))
        .collect();
    assert_eq!(refs.len(), 2);
    assert!((refs[0] - zero).abs() <= 0.02);
    assert!((refs[1] - (zero + per_unit)).abs() <= 0.02);
}

#[test]
fn one_outlying_prompt_does_not_squash_the_chart() {
    // A prompt on which the full model and the empty circuit nearly agree has a per-prompt
    // faithfulness of 10⁶ (or an infinite one); the bars must stay readable.
    let report = file_report(
        "outlier.circuit",
        vec![
            circuit_report("wild", Some(0.9), Some(quantiles(0.2, 0.8, 0.9, 1.0, 1e6))),
            circuit_report(
                "infinite",
                Some(0.5),
                Some(quantiles(f64::NEG_INFINITY, 0.4, 0.5, 0.6, 0.7)),
            ),
        ],
    );
    let svg = faithfulness_chart(&report);
    let tags = parse_xml(&svg);
    let axis = axis(&tags);
    let (lowest, highest) = (axis[0].0, axis[axis.len() - 1].0);
    assert!(lowest >= -2.0 && highest <= 3.0, "axis {lowest}..{highest}");
    let (per_unit, _) = scale(&axis);
    let bars = with_class(&tags, "rect", "bar");
    assert!((bars[0].num("width") - 0.9 * per_unit).abs() <= 0.02);
    // Every whisker stays on the axis; the two cut ones end in a chevron at its ends.
    let (left, right) = (axis[0].1, axis[axis.len() - 1].1);
    for line in with_class(&tags, "line", "whisker") {
        for x in [line.num("x1"), line.num("x2")] {
            assert!(x >= left - 0.01 && x <= right + 0.01, "whisker at {x}");
        }
    }
    let cut: Vec<f64> = with_class(&tags, "polyline", "cut")
        .iter()
        .map(|p| {
            let tip = p.attrs["points"].split(' ').nth(1).unwrap();
            tip.split(',').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(cut.len(), 2, "{svg}");
    assert!((cut[0] - right).abs() <= 0.01 && (cut[1] - left).abs() <= 0.01);
    assert!(svg.contains("runs on past the axis"));
    // No coordinate is NaN or infinite (the circuit named `infinite` is the only "inf").
    assert!(!svg.contains("NaN") && svg.matches("inf").count() == svg.matches("infinite").count());
}

#[test]
fn names_and_paths_are_escaped() {
    let name = r#"a<b&"c"'d'>"#;
    let report = file_report(
        "dir & co/<x>.circuit",
        vec![
            circuit_report(name, Some(0.5), Some(quantiles(0.1, 0.3, 0.5, 0.7, 0.9))),
            circuit_report("undefined_one", None, None),
        ],
    );
    let svg = faithfulness_chart(&report);
    assert!(
        svg.contains("a&lt;b&amp;&quot;c&quot;&apos;d&apos;&gt;"),
        "{svg}"
    );
    assert!(!svg.contains("<b&"), "raw name in the document");
    assert!(svg.contains("dir &amp; co/&lt;x&gt;.circuit"));
    assert!(svg.contains("models/a&amp;b"));
    let tags = parse_xml(&svg);
    // The text reads back as the original name.
    let names = with_class(&tags, "text", "name");
    assert_eq!(names[0].attrs["#text"], name);
    // A circuit whose faithfulness is undefined gets no bar but says so.
    assert_eq!(with_class(&tags, "rect", "bar").len(), 1);
    assert_eq!(with_class(&tags, "text", "undefined").len(), 1);
    let root = &tags[0];
    assert_eq!(root.name, "svg");
    assert_eq!(root.attrs["xmlns"], "http://www.w3.org/2000/svg");
    assert_eq!(root.attrs["version"], "1.1");
    let (w, h) = (root.num("width"), root.num("height"));
    assert_eq!(root.attrs["viewBox"], format!("0 0 {w} {h}"));
}

#[test]
fn unwritable_svg_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("no/such/folder/chart.svg");
    let o = circuit(&["eval", TOY, "--svg", target.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    // miette wraps long lines: compare with the wrapping taken out.
    let flat: String = err
        .split('\n')
        .map(|l| l.trim_start_matches([' ', '│', '×']).trim_end())
        .collect();
    // Found before the evaluation (util::outputs), naming the flag.
    assert!(err.contains("circuit::output::no_folder"), "{err}");
    assert!(flat.contains("chart.svg"), "{err}");
    assert!(flat.contains("does not exist"), "{err}");
    assert!(flat.contains("--svg"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        o.stdout.is_empty(),
        "no report printed when the chart fails"
    );
}
