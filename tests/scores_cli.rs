//! `circuit scores` end to end on the built-in model: the ranked table and JSON, the EAP-IG
//! graph export, the heat map, determinism across thread counts, and every bad request as a
//! coded error with nothing written.

mod cli_support;

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_circuit");

const SMALL: &str = r#"model "toy-seqcont"
dataset numerals = seqcont.numerals(n = 8, seed = 0, form = "template")
reference numerals.corrupt
ablate heads and mlps by mean
metric logit_diff

circuit movers {
  0.0..3 @ END
  mlp 0..2
}

circuit from_s4 extends movers {
  edge 0.0..3: S4 -> END
}
"#;

fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn scores(args: &[&str], threads: &str) -> Output {
    Command::new(BIN)
        .arg("scores")
        .args(args)
        .env("NO_COLOR", "1")
        .env("CIRCUIT_CACHE_DIR", "off")
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn the_text_table_ranks_by_magnitude_and_names_circuit_components() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "small.circuit", SMALL);
    let text = stdout(&scores(&[file.to_str().unwrap(), "--top", "5"], "2"));
    assert!(
        text.starts_with("eap scores of nodes, relative to the full model\n"),
        "{text}"
    );
    assert!(text.contains("ranked by |score|: top 5 of "), "{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains(" @ ")
                && l.trim_start()
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
        })
        .collect();
    assert_eq!(rows.len(), 5, "{text}");
    let magnitudes: Vec<f64> = rows
        .iter()
        .map(|r| {
            let fields: Vec<&str> = r.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == "@").unwrap();
            fields[at + 2].parse::<f64>().unwrap().abs()
        })
        .collect();
    assert!(
        magnitudes.windows(2).all(|w| w[0] >= w[1]),
        "{magnitudes:?}"
    );
}

#[test]
fn scores_relative_to_a_node_circuit_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "small.circuit", SMALL);
    let text = stdout(&scores(
        &[file.to_str().unwrap(), "--circuit", "movers"],
        "2",
    ));
    assert!(
        text.starts_with(
            "eap scores of nodes, relative to circuit movers (its ablations in place)\n"
        ),
        "{text}"
    );
}

#[test]
fn scores_relative_to_a_circuit_with_qk_edges_and_with_eap_ig_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "small.circuit", SMALL);
    let file = file.to_str().unwrap();
    let text = stdout(&scores(
        &[file, "--circuit", "from_s4", "--granularity", "qk-edges"],
        "2",
    ));
    assert!(
        text.starts_with(
            "eap scores of qk-edges, relative to circuit from_s4 (its ablations in place)\n"
        ),
        "{text}"
    );
    let text = stdout(&scores(
        &[
            file,
            "--circuit",
            "from_s4",
            "--method",
            "eap-ig",
            "--steps",
            "2",
        ],
        "2",
    ));
    assert!(
        text.starts_with("eap-ig (m = 2) scores of nodes, relative to circuit from_s4"),
        "{text}"
    );
}

#[test]
fn a_model_folder_without_a_tokenizer_is_a_coded_error_naming_the_file() {
    // config.json and weights of stories260K, but no tokenizer.json.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let stories = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K");
    for name in ["config.json", "model.safetensors"] {
        std::os::unix::fs::symlink(stories.join(name), model.join(name)).unwrap();
    }
    let file = write_file(dir.path(), "small.circuit", SMALL);
    let out = dir.path().join("out.txt");
    let result = scores(
        &[
            file.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        "2",
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(stderr.contains("circuit::model::tokenizer"), "{stderr}");
    let missing = model.join("tokenizer.json");
    assert!(
        stderr.contains(missing.to_str().unwrap()),
        "the message names {}: {stderr}",
        missing.display()
    );
    assert!(!out.exists());
}

#[test]
fn json_is_byte_identical_across_thread_counts_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "small.circuit", SMALL);
    let f = file.to_str().unwrap();
    for granularity in ["nodes", "qk-edges", "path-edges"] {
        let args = [f, "--format", "json", "--granularity", granularity];
        let one = stdout(&scores(&args, "1"));
        let three = stdout(&scores(&args, "3"));
        assert_eq!(one, three, "{granularity}");
        let value: serde_json::Value = serde_json::from_str(&one).unwrap();
        let n = value["n_scores"].as_u64().unwrap() as usize;
        assert_eq!(value["scores"].as_array().unwrap().len(), n);
        assert_eq!(value["granularity"], granularity);
        assert!(value["scores"][0]["faithfulness"].is_f64());
    }
}

#[test]
fn the_eap_ig_graph_export_has_the_mib_names() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "small.circuit", SMALL);
    let out = dir.path().join("graph.json");
    let args = [
        file.to_str().unwrap(),
        "--method",
        "eap-ig",
        "--steps",
        "2",
        "--granularity",
        "path-edges",
        "--format",
        "eap-ig-json",
        "--top",
        "10",
        "-o",
        out.to_str().unwrap(),
    ];
    stdout(&scores(&args, "2"));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(value["cfg"]["n_layers"], 3);
    assert_eq!(value["cfg"]["n_heads"], 4);
    assert_eq!(value["cfg"]["parallel_attn_mlp"], false);
    let nodes = value["nodes"].as_object().unwrap();
    for name in ["input", "a0.h0", "a2.h3", "m0", "m2", "logits"] {
        assert!(nodes.contains_key(name), "{name}");
    }
    let edges = value["edges"].as_object().unwrap();
    for name in [
        "a0.h1->a2.h3<q>",
        "a0.h1->a1.h0<v>",
        "a0.h0->m0",
        "m1->logits",
    ] {
        assert!(edges.contains_key(name), "{name}");
    }
    // Backward edges do not exist; exactly 10 are in the graph.
    assert!(!edges.contains_key("a1.h0->a0.h1<q>"));
    let in_graph = edges.values().filter(|e| e["in_graph"] == true).count();
    assert_eq!(in_graph, 10);
}

#[test]
fn the_heat_map_has_a_cell_per_component_and_slot() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "small.circuit", SMALL);
    let svg = dir.path().join("nodes.svg");
    let args = [file.to_str().unwrap(), "--svg", svg.to_str().unwrap()];
    stdout(&scores(&args, "2"));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg "));
    // 12 heads and 3 MLPs at each of the 23 token slots.
    assert_eq!(text.matches("<title>").count(), 15 * 23, "{text}");
    assert!(text.contains("<title>node scores 0.0 @ END: "));
}

/// Runs a request that must fail with `code`, writing nothing to `-o`.
fn refused(dir: &Path, file: &Path, extra: &[&str], code: &str) {
    let out = dir.join("out.txt");
    let mut args = vec![file.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let result = scores(&args, "2");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{extra:?} succeeded");
    assert!(
        stderr.contains(code),
        "{extra:?}: expected {code} in {stderr}"
    );
    assert!(!out.exists(), "{extra:?} wrote {}", out.display());
}

#[test]
fn bad_requests_are_coded_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "small.circuit", SMALL);
    let d = dir.path();
    refused(d, &file, &["--top", "0"], "circuit::scores::top_zero");
    refused(d, &file, &["--method", "magic"], "invalid value 'magic'");
    refused(
        d,
        &file,
        &["--method", "attention"],
        "circuit::attribute::no_node_score",
    );
    refused(
        d,
        &file,
        &["--method", "qkvo", "--granularity", "path-edges"],
        "circuit::attribute::no_path_edge_score",
    );
    refused(
        d,
        &file,
        &["--format", "eap-ig-json"],
        "circuit::scores::export_needs_path_edges",
    );
    refused(
        d,
        &file,
        &["--method", "eap-ig", "--steps", "0"],
        "circuit::attribute::no_steps",
    );
    refused(
        d,
        &file,
        &["--query", "S9"],
        "circuit::scores::unknown_slot",
    );
    refused(
        d,
        &file,
        &["--circuit", "mover"],
        "circuit::eval::unknown_circuit",
    );
    let accuracy = write_file(
        d,
        "accuracy.circuit",
        &SMALL.replace("metric logit_diff", "metric accuracy"),
    );
    refused(d, &accuracy, &[], "circuit::model::no_gradient");
    let kl = write_file(
        d,
        "kl.circuit",
        &SMALL.replace("metric logit_diff", "metric kl"),
    );
    refused(d, &kl, &[], "circuit::attribute::kl_zero_gradient");
    let knockout = write_file(
        d,
        "knockout.circuit",
        &SMALL.replace(
            "ablate heads and mlps by mean",
            "ablate heads and mlps by mean\nablate edges by knockout",
        ),
    );
    refused(
        d,
        &knockout,
        &["--granularity", "qk-edges"],
        "circuit::attribute::knockout_edges",
    );
    // eap-ig is defined under kl.
    let out = scores(
        &[kl.to_str().unwrap(), "--method", "eap-ig", "--steps", "2"],
        "2",
    );
    stdout(&out);
}

/// A circuit file in `d` over fixture model `fixture` and three digit prompts, ablating heads
/// and MLPs by mean under logit_diff.
fn digits_circuit(d: &Path, fixture: &str) -> std::path::PathBuf {
    cli_support::digits_jsonl(d, 3, 4);
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(fixture);
    let text = format!(
        "model \"{}\"\ndataset digits = \"digits.jsonl\"\nreference digits\nablate heads and mlps by mean\nmetric logit_diff\n",
        model.display()
    );
    write_file(d, &format!("{fixture}.circuit"), &text)
}

/// Gemma 2: node and QK-edge scores run through its backward; path-edge scores and `dla`, which
/// need a head's write to be a term of later inputs, are refused under its post-norms.
#[test]
fn gemma2_scores_nodes_and_refuses_path_edges_and_dla() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = digits_circuit(d, "gemma2-bf16");
    for extra in [
        &[][..],
        &["--granularity", "qk-edges"],
        &["--method", "eap-ig", "--steps", "2"],
    ] {
        let mut args = vec![file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let table = stdout(&scores(&args, "2"));
        assert!(table.contains("0."), "{extra:?}: {table}");
    }
    refused(
        d,
        &file,
        &["--granularity", "path-edges"],
        "circuit::attribute::post_norm_path_edges",
    );
    refused(
        d,
        &file,
        &["--method", "dla"],
        "circuit::attribute::post_norm_dla",
    );
}

/// Qwen3: the backward goes through each head's q and k norms (against torch autograd in
/// tests/backward_gradients.rs; finite differences and the sum identities in the attribute
/// module's tests), so every method and granularity scores it.
#[test]
fn qwen3_scores_every_method_and_granularity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = digits_circuit(d, "qwen3-bf16");
    for extra in [
        &[][..],
        &["--granularity", "qk-edges"],
        &["--granularity", "path-edges"],
        &["--method", "dla"],
        &["--method", "qkvo"],
        &["--method", "attention", "--granularity", "qk-edges"],
        &["--method", "eap-ig", "--steps", "2"],
    ] {
        let mut args = vec![file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let table = stdout(&scores(&args, "2"));
        assert!(table.contains("0."), "{extra:?}: {table}");
    }
}

#[test]
fn progress_counts_gradient_passes_against_their_total_and_quiet_silences_it() {
    // Off a terminal (`CIRCUIT_PROGRESS_SECONDS=0`: a line per pass) each line counts the
    // gradient passes done of a total foreseen from the start: the built-in model's 8 prompts
    // fit one pass, so eap-ig with m = 3 makes 3, the graph export's node scores 3 more.
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "small.circuit", SMALL);
    let file = file.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["scores", file, "--method", "eap-ig", "--steps", "3"];
        args.extend_from_slice(extra);
        Command::new(BIN)
            .args(&args)
            .env("CIRCUIT_CACHE_DIR", "off")
            .env("CIRCUIT_PROGRESS_SECONDS", "0")
            .output()
            .unwrap()
    };
    let counts = |out: &Output| -> Vec<(u64, u64)> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|line| {
                let rest = line
                    .strip_prefix(&format!("scoring {file}: "))
                    .unwrap_or_else(|| panic!("{line}"));
                assert!(
                    rest.contains(" gradient passes (") && rest.contains(" left"),
                    "{line}"
                );
                let (done, total) = rest.split(' ').next().unwrap().split_once('/').unwrap();
                (done.parse().unwrap(), total.parse().unwrap())
            })
            .collect()
    };
    assert_eq!(counts(&run(&[])), vec![(1, 3), (2, 3), (3, 3)]);
    let graph = dir.path().join("graph.json");
    let export = run(&[
        "--granularity",
        "path-edges",
        "--format",
        "eap-ig-json",
        "-o",
        graph.to_str().unwrap(),
    ]);
    assert_eq!(counts(&export), (1..=6).map(|k| (k, 6)).collect::<Vec<_>>());
    let mut quiet = Command::new(BIN);
    quiet
        .args(["--quiet", "scores", file, "--method", "eap-ig"])
        .env("CIRCUIT_CACHE_DIR", "off")
        .env("CIRCUIT_PROGRESS_SECONDS", "0");
    let quiet = quiet.output().unwrap();
    assert!(quiet.status.success());
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
}
