//! Edge-complete circuits end to end (docs/semantics.md, section 8; docs/language.md,
//! "Edge-complete circuits"; against auto-circuit: tests/edge_complete_autocircuit.rs): a node
//! circuit and its edge-complete translation agree; a circuit
//! → graph JSON → `circuit import` → the same faithfulness; `eval`, `test`, `diff`, `check` and
//! `fmt` on edge-complete files; bad graphs are coded errors with nothing written.

mod cli_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use circuit::attribute::export::{downstream_name, upstream_name};
use circuit::exchange::{every_edge_name, parse_edge};
use circuit::model::ResidualTopology;
use circuit::plan::PlanShape;
use circuit::resolve::bound::{Downstream, HeadId, Upstream};
use cli_support::{circuit, root};
use serde_json::{json, Value};

fn fixture_json(rel: &str) -> Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures").join(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "circuit-edge-complete-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `eval --json`'s faithfulness by circuit name.
fn faithfulness(file: &Path) -> Vec<(String, f64)> {
    let out = ok(circuit(&[
        "eval",
        file.to_str().unwrap(),
        "--json",
        "--no-cache",
    ]));
    let report: Value = serde_json::from_str(&out).unwrap();
    report["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["faithfulness"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Every input's kept upstream components, as `edge` statements, for the heads `heads` and MLPs
/// `mlps` kept at every position: the edge-complete form of that node circuit (an ablated
/// component's edges all carry its reference value, which is what node ablation passes on).
fn edges_of_nodes(
    shape: PlanShape,
    heads: &[HeadId],
    mlps: &[usize],
) -> Vec<(Upstream, Downstream)> {
    let mut sources = vec![Upstream::Embed];
    sources.extend(heads.iter().map(|&h| Upstream::Head(h)));
    sources.extend(mlps.iter().map(|&l| Upstream::Mlp(l)));
    let mut edges = Vec::new();
    for d in shape.downstream_inputs() {
        let reader_kept = match d {
            Downstream::Head(h, _) => heads.contains(&h),
            Downstream::Mlp(l) => mlps.contains(&l),
            Downstream::Logits => true,
        };
        if !reader_kept {
            continue;
        }
        for &u in &sources {
            if d.reads(u, shape.residual) {
                edges.push((u, d));
            }
        }
    }
    edges
}

fn edge_statements(edges: &[(Upstream, Downstream)]) -> String {
    edges
        .iter()
        .map(|(u, d)| format!("  edge {u} -> {d}\n"))
        .collect()
}

/// The graph JSON of an edge-complete circuit keeping `kept`, as EAP-IG writes one (the
/// format's names from `attribute::export`).
fn graph_json(
    n_layers: usize,
    n_heads: usize,
    d_model: usize,
    kept: &[(Upstream, Downstream)],
) -> String {
    let kept: BTreeSet<String> = kept
        .iter()
        .map(|&(u, d)| format!("{}->{}", upstream_name(u), downstream_name(d)))
        .collect();
    let mut nodes = serde_json::Map::new();
    nodes.insert("input".into(), json!({"score": null, "in_graph": true}));
    let mut edges = serde_json::Map::new();
    for name in every_edge_name(n_layers, n_heads, ResidualTopology::Sequential) {
        let (u, _) = parse_edge(&name, n_layers, n_heads, ResidualTopology::Sequential).unwrap();
        nodes.insert(upstream_name(u), json!({"score": null, "in_graph": true}));
        edges.insert(
            name.clone(),
            json!({"score": 0.5, "in_graph": kept.contains(&name)}),
        );
    }
    nodes.insert("logits".into(), json!({"score": null, "in_graph": true}));
    let value = json!({
        "cfg": {"n_layers": n_layers, "n_heads": n_heads, "parallel_attn_mlp": false, "d_model": d_model},
        "nodes": nodes,
        "edges": edges,
    });
    serde_json::to_string_pretty(&value).unwrap()
}

const HEADER: &str = "model \"toy-seqcont\"\ndataset d = seqcont.numerals(n = 16, seed = 0)\nablate heads and mlps by mean\n";

/// A node circuit, its edge-complete translation, and that circuit through the graph format and
/// `circuit import`: one faithfulness (the translation within float rounding, the import
/// exactly); and the edge-complete files check, format, test and diff.
#[test]
fn a_circuit_through_the_graph_format_and_import_evaluates_the_same() {
    let dir = scratch("round-trip");
    let shape = PlanShape {
        n_layers: 3,
        n_heads: 4,
        residual: ResidualTopology::Sequential,
    };
    let h = |layer, head| HeadId { layer, head };
    let heads = [h(0, 1), h(1, 0), h(2, 3)];
    let edges = edges_of_nodes(shape, &heads, &[0, 2]);
    let text = format!(
        "{HEADER}\ncircuit nodes {{\n  0.1, 1.0, 2.3\n  mlp 0, 2\n}}\n\nedge-complete circuit as_edges {{\n{}  expect faithfulness >= nodes.faithfulness - 0.001\n}}\n\nedge-complete circuit fewer extends as_edges {{\n  drop mlp 2\n}}\n",
        edge_statements(&edges)
    );
    let file = dir.join("edges.circuit");
    std::fs::write(&file, &text).unwrap();
    ok(circuit(&["check", file.to_str().unwrap()]));
    ok(circuit(&["fmt", file.to_str().unwrap()]));
    ok(circuit(&["fmt", "--check", file.to_str().unwrap()]));

    let measured = faithfulness(&file);
    let (nodes, as_edges, fewer) = (measured[0].1, measured[1].1, measured[2].1);
    assert!(
        (nodes - as_edges).abs() <= 1e-5,
        "nodes {nodes} vs edges {as_edges}"
    );
    // Not vacuous: the circuit is neither full nor empty, and dropping MLP 2 matters.
    assert!((nodes - 1.0).abs() > 1e-2 && nodes.abs() > 1e-2, "{nodes}");
    assert!((fewer - as_edges).abs() > 1e-3, "{fewer} vs {as_edges}");

    let tested = circuit(&["test", file.to_str().unwrap(), "--no-cache"]);
    let out = String::from_utf8_lossy(&tested.stdout).into_owned();
    assert!(tested.status.success(), "{out}{}", stderr(&tested));
    assert!(out.contains("ok   ") && out.contains("as_edges"), "{out}");

    // → graph JSON → `circuit import` → the same circuit, the same faithfulness.
    let graph = dir.join("graph.json");
    std::fs::write(&graph, graph_json(3, 4, 64, &edges)).unwrap();
    let imported = dir.join("imported.circuit");
    ok(circuit(&[
        "import",
        graph.to_str().unwrap(),
        "--model",
        "toy-seqcont",
        "--dataset",
        "seqcont.numerals(n = 16, seed = 0)",
        "-o",
        imported.to_str().unwrap(),
        "--name",
        "as_edges",
    ]));
    ok(circuit(&["fmt", "--check", imported.to_str().unwrap()]));
    let again = faithfulness(&imported);
    assert_eq!(again, vec![("as_edges".to_string(), as_edges)]);

    // diff of the two files: the same statements, the same numbers.
    let diffed = ok(circuit(&[
        "diff",
        file.to_str().unwrap(),
        imported.to_str().unwrap(),
        "--no-cache",
    ]));
    let section = diffed
        .split("\n\n")
        .find(|s| s.starts_with("circuit as_edges"))
        .unwrap_or_else(|| panic!("{diffed}"));
    assert!(
        section.starts_with("circuit as_edges (unchanged)"),
        "{section}"
    );
    assert!(
        section.contains("faithfulness") && !section.contains("edge "),
        "{section}"
    );
}

/// A graph made for another model, an edge name that does not parse, and an output onto the
/// graph are coded errors, and nothing is written.
#[test]
fn bad_graphs_are_coded_errors_and_write_nothing() {
    let dir = scratch("errors");
    let out = dir.join("x.circuit");
    let graph = "tests/fixtures/autocircuit/gpt2_tiny_random_half_graph.json";
    let run = |graph: &str, model: &str, output: &Path| {
        circuit(&[
            "import",
            graph,
            "--model",
            model,
            "--dataset",
            "seqcont.numerals",
            "-o",
            output.to_str().unwrap(),
        ])
    };
    // gpt2-tiny has 5 heads a layer, toy-seqcont 4.
    let wrong_model = run(graph, "toy-seqcont", &out);
    assert!(!wrong_model.status.success());
    let message = stderr(&wrong_model);
    assert!(
        message.contains("circuit::import::cfg_mismatch"),
        "{message}"
    );
    assert!(
        message.contains("n_heads = 5") && message.contains("the model has 4"),
        "{message}"
    );
    assert!(!out.exists());

    let mut bad: Value = fixture_json("autocircuit/gpt2_tiny_random_half_graph.json");
    bad["edges"]["a0.h1->a0.h2<q>"] = json!({"score": null, "in_graph": true});
    let bad_file = dir.join("bad.json");
    std::fs::write(&bad_file, bad.to_string()).unwrap();
    let bad_edge = run(
        bad_file.to_str().unwrap(),
        "tests/fixtures/models/gpt2-tiny",
        &out,
    );
    assert!(!bad_edge.status.success());
    let message = stderr(&bad_edge);
    assert!(message.contains("circuit::import::edge_name"), "{message}");
    assert!(
        message.contains("a0.h1->a0.h2<q>") && message.contains("backwards"),
        "{message}"
    );
    assert!(!out.exists());

    let onto_input = run(
        bad_file.to_str().unwrap(),
        "tests/fixtures/models/gpt2-tiny",
        &bad_file,
    );
    assert!(
        stderr(&onto_input).contains("circuit::output::is_input"),
        "{}",
        stderr(&onto_input)
    );

    // The good graph for its own model: a file that checks, with paths relative to it.
    ok(run(graph, "tests/fixtures/models/gpt2-tiny", &out));
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(
        written.contains("edge-complete circuit imported {"),
        "{written}"
    );
    // The model folder relative to the written file's folder (a temporary folder here).
    assert!(written.contains("\nmodel \"../"), "{written}");
    ok(circuit(&["check", out.to_str().unwrap()]));
}

/// Scores and scans relative to an edge-complete circuit are refused with a code before any
/// forward pass, and nothing is written: the backward holds no constant for an `embed` edge
/// that is not kept, and a scan removes kept nodes, which an edge-complete circuit has none of.
/// Relative to a node circuit of the same file both run (the refusal is the form's, not the
/// file's).
#[test]
fn scores_and_scans_relative_to_an_edge_complete_circuit_are_refused() {
    let dir = scratch("refused");
    let text = format!(
        "{HEADER}\ncircuit nodes {{\n  0.1, 1.0\n  mlp 0\n}}\n\nedge-complete circuit edges {{\n  edge embed, 0.1 -> 1.0.v\n  edge 1.0, mlp 0 -> logits\n}}\n"
    );
    let file = dir.join("refused.circuit");
    std::fs::write(&file, &text).unwrap();
    let file = file.to_str().unwrap();
    ok(circuit(&["check", file]));
    let out_path = dir.join("out.json");
    let out = out_path.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["scores", file, "--circuit", "edges"],
            "circuit::attribute::edge_complete_circuit",
        ),
        (
            &[
                "scores",
                file,
                "--circuit",
                "edges",
                "--method",
                "eap-ig",
                "--granularity",
                "path-edges",
            ],
            "circuit::attribute::edge_complete_circuit",
        ),
        (
            &["scores", file, "--circuit", "edges", "--method", "exact"],
            "circuit::scan::edge_complete_base",
        ),
        (
            &["scan", file, "--circuit", "edges", "--no-cache"],
            "circuit::scan::edge_complete_base",
        ),
    ];
    for (args, code) in cases {
        let mut args = args.to_vec();
        args.extend(["-o", out]);
        let run = circuit(&args);
        assert!(!run.status.success(), "{args:?} ran");
        assert!(stderr(&run).contains(code), "{args:?}: {}", stderr(&run));
        assert!(!out_path.exists(), "{args:?} wrote {out}");
    }
    // The same commands relative to the node circuit run.
    ok(circuit(&["scores", file, "--circuit", "nodes"]));
    ok(circuit(&["scan", file, "--circuit", "nodes", "--no-cache"]));
}
