//! The exchange formats end to end: `circuit export --format eap-ig-json` (a circuit as the
//! EAP-IG / MIB graph) and `circuit dataset import` (an auto-circuit prompt file as a dataset),
//! each checked against what it claims to mean, and every bad input as a coded error.

mod cli_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cli_support::{circuit, fixture};
use serde_json::Value;

use circuit::data::{jsonl, tokenize_record_in, PromptSet};
use circuit::model::{ModelSource, Tokenizer};

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A node circuit of the built-in model, kept at every position (where the graph format is
/// exact), and the settings every circuit below shares.
const SETTINGS: &str = r#"model "toy-seqcont"
dataset numerals = seqcont.numerals(n = 16, seed = 0, form = "template")
reference numerals.corrupt
ablate heads and mlps by mean
metric logit_diff
"#;

const NODES: &str = "circuit nodes {\n  0.0, 0.2, 1.0, 2.1 @ *\n  mlp 0, 2\n}\n";

fn export(path: &Path, name: &str) -> Value {
    let out = export_with(path, name, &["--format", "eap-ig-json"]);
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// `circuit export PATH --circuit NAME EXTRA…`.
fn export_with(path: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["export", path.to_str().unwrap(), "--circuit", name];
    args.extend(extra);
    circuit(&args)
}

/// `a1.h0<q>` → `1.0.q`, `m2` → `mlp 2`, `a0.h1` → `0.1`: the graph's names in `.circuit` syntax.
fn circuit_name(node: &str) -> String {
    if let Some(layer) = node.strip_prefix('m') {
        return format!("mlp {layer}");
    }
    let (head, input) = match node.split_once('<') {
        Some((head, rest)) => (head, Some(rest.trim_end_matches('>'))),
        None => (node, None),
    };
    let (layer, head) = head.trim_start_matches('a').split_once(".h").unwrap();
    match input {
        Some(which) => format!("{layer}.{head}.{which}"),
        None => format!("{layer}.{head}"),
    }
}

fn faithfulness(report: &Value, circuit: &str) -> f64 {
    let c = report["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == circuit)
        .unwrap_or_else(|| panic!("no circuit {circuit} in {report}"));
    c["faithfulness"]
        .as_f64()
        .unwrap_or_else(|| panic!("no faithfulness in {c}"))
}

/// The graph of a node circuit, read with the edge semantics of EAP-IG / MIB (every input of a
/// node in the graph reads exactly its in-graph edges, the embedding included; an input that
/// reads no edge of an upstream node reads its reference value), is written back as path edges
/// into every input of every node of the graph. Evaluated, that edge-complete circuit must give
/// the node circuit's faithfulness: the export says what the circuit means.
#[test]
fn an_exported_node_circuit_evaluates_the_same_as_its_graph_of_edges() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "nodes.circuit", &format!("{SETTINGS}\n{NODES}"));
    let graph = export(&path, "nodes");
    assert_eq!(graph["cfg"]["n_layers"], 3);
    assert_eq!(graph["cfg"]["n_heads"], 4);
    assert_eq!(graph["cfg"]["d_model"], 64);
    assert_eq!(graph["cfg"]["parallel_attn_mlp"], false);
    let in_graph = |section: &str| in_graph(&graph, section);
    assert_eq!(
        in_graph("nodes"),
        ["input", "a0.h0", "a0.h2", "m0", "a1.h0", "a2.h1", "m2", "logits"]
    );
    assert_eq!(
        graph["loss"].as_array().unwrap().len(),
        1,
        "only the ablation sentence"
    );

    // Path edges: per downstream input, its in-graph upstream nodes (`input` is always kept).
    let mut into: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for edge in in_graph("edges") {
        let (from, to) = edge.split_once("->").unwrap();
        let entry = into.entry(to.to_string()).or_default();
        if from != "input" {
            entry.push(circuit_name(from));
        }
    }
    let mut edges_circuit = String::from("circuit edges {\n  0.0, 0.2, 1.0, 2.1 @ *\n  mlp 0, 2\n");
    let mut cut = 0;
    for (to, from) in &into {
        let to = if to == "logits" {
            "logits".to_string()
        } else {
            circuit_name(to)
        };
        if from.is_empty() {
            // Only the embedding: the language has no empty edge list, and with nothing
            // upstream the ordinary stream is exactly that (checked: layer-0 inputs only).
            cut += 1;
            continue;
        }
        edges_circuit.push_str(&format!("  edge {} -> {to}\n", from.join(", ")));
    }
    edges_circuit.push_str("}\n");
    assert_eq!(
        cut,
        2 * 3,
        "the q, k, v of 0.0 and 0.2 read the embedding alone"
    );
    let both = write(
        dir.path(),
        "both.circuit",
        &format!("{SETTINGS}\n{NODES}\n{edges_circuit}"),
    );
    let out = circuit(&["eval", both.to_str().unwrap(), "--format", "json"]);
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let (nodes, edges) = (
        faithfulness(&report, "nodes"),
        faithfulness(&report, "edges"),
    );
    assert!(
        nodes > 0.05 && nodes < 0.95,
        "a circuit that matters: {nodes}"
    );
    // The rebuilt residual sums round differently (docs/semantics.md, path edges).
    assert!(
        (nodes - edges).abs() < 1e-5,
        "node circuit {nodes} vs its graph's edges {edges}"
    );
}

/// Positions, QK edges and path-edge positions are what the format cannot say: they are in
/// `positions` and each kind of loss is a sentence of `loss`.
#[test]
fn what_the_graph_cannot_say_is_kept_and_stated() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{SETTINGS}\ncircuit positional {{\n  0.0 @ END\n  1.0 @ *\n  edge 0.1: S4 -> END\n  edge 0.0 -> 1.0.v @ S4\n  mlp 2 @ END\n}}\n"
    );
    let path = write(dir.path(), "p.circuit", &text);
    let graph = export(&path, "positional");
    assert_eq!(graph["circuit"], "positional");
    let positions = &graph["positions"];
    assert_eq!(positions["nodes"]["a0.h0"], "END");
    assert_eq!(positions["nodes"]["a1.h0"], "*");
    assert_eq!(positions["nodes"]["a0.h1"], "END");
    assert_eq!(positions["nodes"]["m2"], "END");
    assert_eq!(positions["qk_edges"][0], "edge 0.1: S4 -> END");
    assert_eq!(positions["edges"]["a0.h0->a1.h0<v>"], "S4");
    // The path edge decides 1.0's value input: 0.0 (kept) and the embedding; 0.1 is cut.
    assert_eq!(graph["edges"]["a0.h0->a1.h0<v>"]["in_graph"], true);
    assert_eq!(graph["edges"]["a0.h1->a1.h0<v>"]["in_graph"], false);
    assert_eq!(graph["edges"]["input->a1.h0<v>"]["in_graph"], true);
    // Its query input reads the ordinary stream: every node in the graph.
    assert_eq!(graph["edges"]["a0.h1->a1.h0<q>"]["in_graph"], true);
    assert_eq!(graph["edges"]["a0.h2->a1.h0<q>"]["in_graph"], false);
    // Out of the graph, a node's inputs are out too.
    assert_eq!(graph["edges"]["input->a2.h0<q>"]["in_graph"], false);
    let loss: Vec<&str> = graph["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(loss.len(), 4, "{loss:?}");
    assert!(loss[0].starts_with("positions:") && loss[0].contains("a0.h0 at END"));
    assert!(loss[1].starts_with("QK edges") && loss[1].contains("edge 0.1: S4 -> END"));
    assert!(
        loss[2].starts_with("path-edge positions") && loss[2].contains("a0.h0->a1.h0<v> at S4")
    );
    assert!(loss[3].starts_with("ablation:"));
}

/// `eval --json --no-cache` of a file, as its report.
fn eval_json(path: &Path) -> Value {
    let out = circuit(&["eval", path.to_str().unwrap(), "--json", "--no-cache"]);
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// The names of a graph's entries in `section` (`nodes`, `edges`) that are in the graph.
fn in_graph(graph: &Value, section: &str) -> Vec<String> {
    graph[section]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["in_graph"] == true)
        .map(|(k, _)| k.clone())
        .collect()
}

/// An edge-complete circuit (edges from the embedding among them, inputs left with no edge)
/// exported as the graph JSON has exactly its own edges in the graph and every node, and
/// `circuit import` of that graph gives a circuit with the very same faithfulness. Under
/// `ablate heads` the MLPs' edges are in the graph everywhere (MLPs are then always kept).
#[test]
fn an_exported_edge_complete_circuit_imports_back_to_the_same_faithfulness() {
    let dir = tempfile::tempdir().unwrap();
    // The edge-complete form of heads 0.1, 1.0, 2.3 and MLPs 0, 2, less the embedding's edge
    // into 1.0's key and 0.1's edge into the logits.
    let nodes = ["input", "a0.h1", "a1.h0", "a2.h3", "m0", "m2"];
    let readers = ["a0.h1", "a1.h0", "a2.h3", "m0", "m2", "logits"];
    let dropped = ["input->a1.h0<k>", "a0.h1->logits"];
    let kept: Vec<String> =
        circuit::exchange::every_edge_name(3, 4, circuit::model::ResidualTopology::Sequential)
            .into_iter()
            .filter(|name| {
                let (from, to) = name.split_once("->").unwrap();
                let reader = to.split('<').next().unwrap();
                nodes.contains(&from)
                    && readers.contains(&reader)
                    && !dropped.contains(&name.as_str())
            })
            .collect();
    let statement = |name: &str| {
        let (from, to) = name.split_once("->").unwrap();
        let from = match from {
            "input" => "embed".to_string(),
            other => circuit_name(other),
        };
        let to = match to {
            "logits" => "logits".to_string(),
            other => circuit_name(other),
        };
        format!("  edge {from} -> {to}\n")
    };
    let body: String = kept.iter().map(|name| statement(name)).collect();
    let settings = "model \"toy-seqcont\"\ndataset d = seqcont.numerals(n = 16, seed = 0)\n";
    let text = format!(
        "{settings}ablate heads and mlps by mean\n\nedge-complete circuit edges {{\n{body}}}\n"
    );
    let path = write(dir.path(), "edges.circuit", &text);
    let graph = export(&path, "edges");
    let mut exported = in_graph(&graph, "edges");
    exported.sort();
    let mut expected = kept.clone();
    expected.sort();
    assert_eq!(exported, expected, "the graph's edges are the circuit's");
    assert!(
        kept.iter().any(|e| e.starts_with("input->")),
        "edges from the embedding are exported"
    );
    assert_eq!(graph["edges"]["input->a1.h0<k>"]["in_graph"], false);
    assert_eq!(graph["edges"]["input->a0.h0<q>"]["in_graph"], false);
    let n_nodes = graph["nodes"].as_object().unwrap().len();
    assert_eq!(
        in_graph(&graph, "nodes").len(),
        n_nodes,
        "no node is ablated"
    );
    assert_eq!(n_nodes, 3 * 4 + 3 + 2);

    let graph_path = write(dir.path(), "graph.json", &graph.to_string());
    let imported = dir.path().join("imported.circuit");
    stdout(&circuit(&[
        "import",
        graph_path.to_str().unwrap(),
        "--model",
        "toy-seqcont",
        "--dataset",
        "seqcont.numerals(n = 16, seed = 0)",
        "-o",
        imported.to_str().unwrap(),
        "--name",
        "edges",
    ]));
    let original = faithfulness(&eval_json(&path), "edges");
    let again = faithfulness(&eval_json(&imported), "edges");
    assert!(
        original.abs() > 1e-2 && (original - 1.0).abs() > 1e-2,
        "a circuit that is neither empty nor full: {original}"
    );
    assert_eq!(original, again, "exported and imported back");

    // Under `ablate heads` every edge from an MLP is in the graph, even into an input no
    // edge enters (which reads only reference values otherwise).
    let heads_only = write(
        dir.path(),
        "heads.circuit",
        &text.replace("ablate heads and mlps by mean", "ablate heads by mean"),
    );
    let graph = export(&heads_only, "edges");
    for (name, entry) in graph["edges"].as_object().unwrap() {
        if name.starts_with('m') {
            assert_eq!(entry["in_graph"], true, "{name}");
        }
    }
    assert_eq!(graph["edges"]["a0.h0->a1.h0<q>"]["in_graph"], false);
    assert_eq!(graph["edges"]["input->a0.h0<q>"]["in_graph"], false);
}

/// The scores graph of a GPT-NeoX model wired in parallel says so in `cfg` (its edges are
/// those of the parallel wiring: no head feeds its own layer's MLP), so `circuit import`
/// takes it for that model.
#[test]
fn a_scores_graph_of_a_parallel_model_says_parallel_attn_mlp_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = cli_support::digits_jsonl(dir.path(), 4, 4);
    let model = fixture("models/neox-parallel-f16");
    let text = format!(
        "model \"{}\"\ndataset digits = \"digits.jsonl\"\nreference digits\nablate heads and mlps by mean\nmetric logit_diff\n",
        model.display()
    );
    let path = write(dir.path(), "neox.circuit", &text);
    let out = circuit(&[
        "scores",
        path.to_str().unwrap(),
        "--granularity",
        "path-edges",
        "--format",
        "eap-ig-json",
        "--top",
        "12",
    ]);
    let graph: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(graph["cfg"]["parallel_attn_mlp"], true);
    let edges = graph["edges"].as_object().unwrap();
    assert!(edges.contains_key("a0.h0->m1"), "{:?}", edges.keys());
    assert!(
        !edges.contains_key("a0.h0->m0"),
        "parallel: 0.0 does not feed mlp 0"
    );
    let graph_path = write(dir.path(), "graph.json", &graph.to_string());
    let imported = dir.path().join("imported.circuit");
    let out = circuit(&[
        "import",
        graph_path.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        dataset.to_str().unwrap(),
        "-o",
        imported.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&imported)
        .unwrap()
        .contains("edge-complete circuit imported"));
}

#[test]
fn export_errors_are_coded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "nodes.circuit", &format!("{SETTINGS}\n{NODES}"));
    let out = export_with(&path, "node", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("circuit::eval::unknown_circuit"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("did you mean `nodes`"));
    let out = export_with(&path, "nodes", &["-o", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("circuit::output::"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{SETTINGS}\n{NODES}"),
        "the input is never overwritten"
    );
}

#[test]
fn a_graph_export_on_a_post_norm_model_is_refused_and_writes_nothing() {
    // Gemma 2 normalizes each head's and MLP's output before it joins the stream, so the
    // graph's edges would state ablations the circuit does not make.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "nodes.circuit", &format!("{SETTINGS}\n{NODES}"));
    let gemma2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gemma2-bf16");
    let out_path = dir.path().join("graph.json");
    let to = ["-o", out_path.to_str().unwrap()];
    let out = export_with(
        &path,
        "nodes",
        &[&["--model", gemma2.to_str().unwrap()], &to[..]].concat(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("circuit::export::post_norm"),
        "{}",
        stderr(&out)
    );
    assert!(!out_path.exists(), "nothing written");
    // The same file on a sequential model exports.
    let out = export_with(&path, "nodes", &to);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out_path.exists());
}

fn gpt2() -> Tokenizer {
    Tokenizer::open(&ModelSource::Dir(fixture("gpt2-tokenizer"))).unwrap()
}

/// An auto-circuit file for GPT-2 (its indices count the BOS auto-circuit prepends).
const IOI: &str = r#"{
 "seq_labels": ["BOS", "When", "Mary", "and", "John", "went", "to", "the", "store", ",", "John", "gave", "a", "drink", "to"],
 "word_idxs": {"IO": 2, "IO-1": 1, "IO+1": 3, "S1": 4, "S1+1": 5, "S2": 10, "end": 14, "starts": 0, "punct": 9},
 "prompts": [
  {"clean": "When Mary and John went to the store, John gave a drink to", "corrupt": "When Alice and Bob went to the store, Carl gave a drink to", "answers": [" Mary"], "wrong_answers": [" John"]},
  {"clean": "When Tom and Anna went to the park, Anna gave a ring to", "corrupt": "When Dave and Eve went to the park, Fred gave a ring to", "answers": [" Tom"], "wrong_answers": [" Anna"]}
 ]}"#;

fn import(file: &Path, extra: &[&str]) -> std::process::Output {
    let tokenizer = fixture("gpt2-tokenizer");
    let mut args = vec![
        "dataset",
        "import",
        file.to_str().unwrap(),
        "--model",
        tokenizer.to_str().unwrap(),
    ];
    args.extend(extra);
    circuit(&args)
}

#[test]
fn auto_circuit_indices_become_spans_of_those_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ioi.json", IOI);
    let out = import(&file, &["--drop", "starts"]);
    let notes = stderr(&out);
    assert!(notes.contains("IO+1, IO-1, S1+1 are offsets"), "{notes}");
    assert!(
        notes.contains("4 \"John\""),
        "repeated seq_labels are left out: {notes}"
    );
    let jsonl_path = write(dir.path(), "ioi.jsonl", &stdout(&out));
    let dataset = jsonl::read(&jsonl_path).unwrap();
    assert!(dataset.paired);
    assert_eq!((dataset.clean.len(), dataset.reference.len()), (2, 2));
    let tokenizer = gpt2();
    // auto-circuit index i is our token i - 1 (GPT-2 adds no BOS): IO=2 is token 1, the name.
    let expect = [
        ("IO", 1, " Mary", " Tom"),
        ("S1", 3, " John", " Anna"),
        ("S2", 9, " John", " Anna"),
        ("punct", 8, ",", ","),
        ("end", 13, " to", " to"),
        ("store", 7, " store", " park"),
    ];
    for (set, records) in [
        (PromptSet::Clean, &dataset.clean),
        (PromptSet::Reference, &dataset.reference),
    ] {
        for (i, record) in records.iter().enumerate() {
            let t = tokenize_record_in(record, &tokenizer, set, i).unwrap();
            for (label, token, clean0, clean1) in expect {
                let slot = t.slots[label];
                assert_eq!(
                    (slot.first, slot.last),
                    (token, token),
                    "{label} in {set:?} {i}"
                );
                if set == PromptSet::Clean {
                    let text = tokenizer.decode(&[t.ids[token]]);
                    assert_eq!(text, if i == 0 { clean0 } else { clean1 }, "{label}");
                }
            }
        }
    }
    assert_eq!(dataset.clean[1].answer.as_deref(), Some(" Tom"));
    assert_eq!(
        dataset.reference[1].answer.as_deref(),
        Some(" Tom"),
        "the reference keeps the clean answers"
    );
    assert_eq!(
        dataset.reference[0].prompt,
        "When Alice and Bob went to the store, Carl gave a drink to"
    );
}

/// The other way: a built-in dataset written as an auto-circuit file (indices of each slot's
/// token counted as auto-circuit counts them) imports back to the same prompts, with each slot
/// on the same token.
#[test]
fn a_builtin_dataset_written_as_an_auto_circuit_file_imports_back_to_the_same_tokens() {
    let tokenizer = gpt2();
    let source = circuit::data::DatasetSource::Builtin {
        name: "seqcont.numerals".into(),
        params: [("n".to_string(), circuit::data::ParamValue::Int(6))].into(),
    };
    let original = circuit::data::load(&source).unwrap();
    let first = tokenize_record_in(&original.clean[0], &tokenizer, PromptSet::Clean, 0).unwrap();
    // Bare numerals: one token per member under GPT-2, the same positions in every prompt.
    let word_idxs: serde_json::Map<String, Value> = first
        .slots
        .iter()
        .map(|(label, slot)| (label.clone(), Value::from(slot.last + 1)))
        .collect();
    let prompts: Vec<Value> = original
        .clean
        .iter()
        .zip(&original.reference)
        .map(|(c, r)| {
            serde_json::json!({"clean": c.prompt, "corrupt": r.prompt, "answers": [c.answer], "wrong_answers": [c.distractor]})
        })
        .collect();
    let file_text = serde_json::json!({"word_idxs": word_idxs, "prompts": prompts}).to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "numerals.json", &file_text);
    let out = import(&file, &[]);
    let jsonl_path = write(dir.path(), "numerals.jsonl", &stdout(&out));
    let imported = jsonl::read(&jsonl_path).unwrap();
    assert_eq!(imported.clean.len(), original.clean.len());
    for (set, a, b) in [
        (PromptSet::Clean, &original.clean, &imported.clean),
        (
            PromptSet::Reference,
            &original.reference,
            &imported.reference,
        ),
    ] {
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            assert_eq!(
                (&a.prompt, &a.answer, &a.distractor),
                (&b.prompt, &b.answer, &b.distractor)
            );
            let ta = tokenize_record_in(a, &tokenizer, set, i).unwrap();
            let tb = tokenize_record_in(b, &tokenizer, set, i).unwrap();
            assert_eq!(ta.slots, tb.slots, "{set:?} {i}");
        }
    }
}

#[test]
fn labels_that_land_on_no_token_and_bad_files_are_coded_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ioi.json", IOI);
    let cases: Vec<(String, &[&str], &str, &str)> = vec![
        (IOI.to_string(), &[], "circuit::data::import_label", "lands on the prepended BOS"),
        (IOI.replace("\"end\": 14", "\"end\": 15"), &["--drop", "starts"], "circuit::data::import_label", "outside the sequence of 15 positions"),
        // A shorter prompt: auto-circuit left-pads it, so index 1 is padding there.
        (IOI.replace("When Tom and Anna went to the park, Anna gave a ring to", "Tom went to the park, Anna gave a ring to"), &["--drop", "starts"], "circuit::data::import_label", "lands on padding"),
        (IOI.replace("[\" Tom\"]", "[\" Tom\", \" Eve\"]"), &["--drop", "starts"], "circuit::data::import_answers", "answers has 2 entries"),
        (r#"{"prompts": [{"clean": [1, 2], "corrupt": [1, 3], "answers": [[4]], "wrong_answers": [[5]]}]}"#.to_string(), &[], "circuit::data::import_format", "token-id prompts do not import"),
        ("{\"prompt\": []}".to_string(), &[], "circuit::data::import_format", "missing field"),
        (IOI.replace("\"punct\"", "\"p.unct\""), &["--drop", "starts"], "circuit::data::import_format", "`p.unct` is not a label"),
        (IOI.replace("[\" Mary\"]", "[\" Mary Ann\"]"), &["--drop", "starts"], "circuit::data::multi_token_answer", "Mary Ann"),
    ];
    for (text, extra, code, message) in cases {
        std::fs::write(&file, &text).unwrap();
        let out = import(&file, extra);
        assert_eq!(out.status.code(), Some(2), "{code}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(code), "expected {code}:\n{err}");
        assert!(err.contains(message), "expected {message:?}:\n{err}");
        assert!(out.stdout.is_empty());
    }
    let missing = dir.path().join("missing.json");
    let out = import(&missing, &[]);
    assert!(stderr(&out).contains("circuit::data::import_read"));
}
