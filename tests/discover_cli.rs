//! `circuit discover` end to end on the built-in model (16 template prompts, so each run takes
//! about a second): the written file (node-based, or edge-complete under `--granularity
//! path-edges`) passes `check`, `fmt --check` and `test` unchanged, its faithfulness and every
//! cost of removal agree with `circuit eval` of the same file, the curve's areas follow from its
//! points, the search is deterministic across thread counts, and every bad input is a coded error
//! with nothing written.

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli_support::{command, stderr, stdout};

/// The file discovery runs on (16 prompts: about a second a run); python/tests reads it too.
const SMALL: &str = include_str!("fixtures/discover/small.circuit");

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run(args: &[&str], threads: &str) -> Output {
    command(args)
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .expect("the circuit binary runs")
}

/// A temporary folder holding one input file, `small.circuit`, to discover on.
struct Scratch {
    dir: tempfile::TempDir,
    input: PathBuf,
}

impl Scratch {
    fn new(text: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "small.circuit", text);
        Scratch { dir, input }
    }

    /// A path in the folder (not created).
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn input(&self) -> &str {
        self.input.to_str().unwrap()
    }

    /// `circuit discover small.circuit ARGS...`.
    fn discover(&self, args: &[&str], threads: &str) -> Output {
        let mut all = vec!["discover", self.input()];
        all.extend_from_slice(args);
        run(&all, threads)
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("JSON report")
}

/// The faithfulness `circuit eval --format json` gives each circuit of a file.
fn eval_faithfulness(file: &Path) -> Vec<(String, f64)> {
    let out = run(&["eval", file.to_str().unwrap(), "--format", "json"], "2");
    let report = json(&out);
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

/// Runs `discover --target 0.9 ARGS -o found.circuit --format json` and checks its file and
/// report: `check`, `fmt --check` and `test` pass on the file; `circuit eval` of the file gives
/// the reported faithfulness, and of the file without each single-position statement the
/// faithfulness less that component's reported cost; the curve's k and areas follow from its
/// points; every candidate kept is the full model (within `all_tolerance`).
fn check_found_file(args: &[&str], all_tolerance: f64) -> (serde_json::Value, String) {
    let scratch = Scratch::new(SMALL);
    let found = scratch.path("found.circuit");
    let mut all = vec!["--target", "0.9", "-o", found.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend(["--format", "json"]);
    let report = json(&scratch.discover(&all, "2"));
    let text = std::fs::read_to_string(&found).unwrap();
    assert_eq!(report["circuit_text"].as_str().unwrap(), text);
    assert!(text.contains("expect faithfulness >= 0.9"), "{text}");
    assert!(text.contains("circuit found {"), "{text}");

    for cmd in [
        vec!["check", found.to_str().unwrap()],
        vec!["fmt", "--check", found.to_str().unwrap()],
        vec!["test", found.to_str().unwrap()],
    ] {
        ok(&run(&cmd, "2"));
    }

    // The reported faithfulness is the file's, as `circuit eval` computes it.
    let f = report["faithfulness"].as_f64().unwrap();
    assert!(f >= 0.9, "{f}");
    let evaluated = eval_faithfulness(&found);
    assert_eq!(evaluated[0].0, "found");
    assert!((evaluated[0].1 - f).abs() < 1e-12, "{evaluated:?} vs {f}");

    // Every cost of removal: the file with that one component dropped, through `circuit eval`.
    // Components are written one per line: a statement's positions on one line, so drop the
    // whole statement only where it has one position (then it is exactly that component).
    let kept = report["kept"].as_array().unwrap();
    assert_eq!(kept.len(), report["components"].as_u64().unwrap() as usize);
    let mut checked = 0;
    for k in kept {
        let component = k["component"].as_str().unwrap();
        let statement = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{component}  #")));
        let Some(statement) = statement else { continue };
        let without: String = text
            .lines()
            .filter(|l| l.trim() != statement)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace("circuit found {", "circuit without {")
            .replace("  expect faithfulness >= 0.9\n", "");
        let file = write(scratch.dir.path(), "without.circuit", &without);
        let g = eval_faithfulness(&file)[0].1;
        let cost = k["cost"].as_f64().unwrap();
        assert!(
            (f - g - cost).abs() < 1e-12,
            "{component}: {f} - {g} vs {cost}"
        );
        checked += 1;
    }
    assert!(checked >= 3, "checked {checked} costs");

    // The curve: ten MIB fractions, k = ceil(fraction × N), and CPR/CMD its trapezoids from
    // (0, 0).
    let n = report["candidates"].as_u64().unwrap() as f64;
    let curve = report["curve"].as_array().unwrap();
    let fractions: Vec<f64> = curve
        .iter()
        .map(|p| p["fraction"].as_f64().unwrap())
        .collect();
    assert_eq!(
        fractions,
        [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    );
    let (mut cpr, mut cmd, mut x0, mut f0) = (0.0, 0.0, 0.0, 0.0);
    for p in curve {
        let (x, y) = (
            p["fraction"].as_f64().unwrap(),
            p["faithfulness"].as_f64().unwrap(),
        );
        assert_eq!(p["k"].as_u64().unwrap() as f64, (x * n).ceil());
        cpr += (x - x0) * (f0 + y) / 2.0;
        cmd += (x - x0) * ((1.0f64 - f0).abs() + (1.0f64 - y).abs()) / 2.0;
        (x0, f0) = (x, y);
    }
    assert!((report["cpr"].as_f64().unwrap() - cpr).abs() < 1e-12);
    assert!((report["cmd"].as_f64().unwrap() - cmd).abs() < 1e-12);
    assert!((f0 - 1.0).abs() < all_tolerance, "{f0}");
    assert!(report["exact_evaluations"].as_u64().unwrap() >= 10);
    (report, text)
}

#[test]
fn the_found_file_passes_check_fmt_and_test_and_eval_agrees_with_every_number() {
    check_found_file(&[], 1e-9);
}

#[test]
fn path_edges_are_found_as_an_edge_complete_circuit_that_eval_agrees_with() {
    // Every edge kept rebuilds every input from the same outputs: the full model within
    // rounding (docs/semantics.md, section 8).
    let (report, text) = check_found_file(&["--granularity", "path-edges"], 1e-5);
    assert_eq!(report["granularity"], "path-edges");
    assert!(text.contains("edge-complete circuit found {"), "{text}");
    // 16 upstream components (embed, 12 heads, 3 MLPs) into the 40 inputs they reach forward
    // (3 layers × 4 heads × q, k, v, 3 MLPs, the logits): 262 edges, at each of 23 slots.
    assert_eq!(report["candidates"], 262 * 23);
    // Positions are written as labels, as the scores name the slots.
    for k in report["kept"].as_array().unwrap() {
        let c = k["component"].as_str().unwrap();
        assert!(
            c.starts_with("edge ") && c.contains(" -> ") && c.contains(" @ "),
            "{c}"
        );
    }
    assert!(text.contains("-> logits @ END"), "{text}");
}

#[test]
fn discovery_is_deterministic_across_thread_counts() {
    let scratch = Scratch::new(SMALL);
    for extra in [
        &["--granularity", "qk-edges", "--attention-threshold", "0.05"][..],
        &["--granularity", "path-edges"][..],
    ] {
        let outputs: Vec<String> = ["1", "3"]
            .iter()
            .map(|threads| {
                let found = scratch.path(&format!("found{threads}.circuit"));
                let mut args = vec!["--target", "0.9", "-o", found.to_str().unwrap()];
                args.extend_from_slice(extra);
                args.extend(["--no-cache", "--force"]);
                ok(&scratch.discover(&args, threads));
                std::fs::read_to_string(&found).unwrap()
            })
            .collect();
        assert_eq!(outputs[0], outputs[1]);
        assert!(outputs[0].contains("edge "), "{}", outputs[0]);
    }
}

#[test]
fn progress_counts_the_circuits_evaluated_with_no_total_that_would_read_100_percent() {
    // A search's number of evaluations is known only as it goes: a log line per batch
    // (`CIRCUIT_PROGRESS_SECONDS=0`, stderr not a terminal) says how many circuits were
    // evaluated so far, never a percentage or an ETA, and the last says as many as the report.
    let scratch = Scratch::new(SMALL);
    let out = command(&[
        "discover",
        scratch.input(),
        "--target",
        "0.9",
        "--format",
        "json",
        "--no-cache",
    ])
    .env("CIRCUIT_PROGRESS_SECONDS", "0")
    .output()
    .expect("the circuit binary runs");
    let report = json(&out);
    let log = stderr(&out);
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() > 10, "{lines:?}");
    let counts: Vec<u64> = lines
        .iter()
        .map(|line| {
            assert!(
                line.starts_with("discovering in ")
                    && !line.contains('%')
                    && !line.contains("left"),
                "{line}"
            );
            let (_, rest) = line.split_once(": ").unwrap();
            rest.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert_eq!(
        counts.last().copied(),
        report["exact_evaluations"].as_u64(),
        "{lines:?}"
    );
}

#[test]
fn inside_a_base_circuit_only_its_components_are_kept() {
    let scratch = Scratch::new(SMALL);
    let args = [
        "--circuit",
        "movers_nodes",
        "--target",
        "0.8",
        "--rank",
        "eap",
        "--format",
        "json",
    ];
    let report = json(&scratch.discover(&args, "2"));
    // movers_nodes keeps 5 heads at END, MLP 0 at 5 positions and MLPs 1, 2 at END: 12.
    assert_eq!(report["candidates"].as_u64().unwrap(), 12);
    let allowed = [
        "0.0 @ END",
        "0.1 @ END",
        "0.2 @ END",
        "0.3 @ END",
        "1.0 @ END",
        "mlp 0 @ S1",
        "mlp 0 @ S2",
        "mlp 0 @ S3",
        "mlp 0 @ S4",
        "mlp 0 @ END",
        "mlp 1 @ END",
        "mlp 2 @ END",
    ];
    for k in report["kept"].as_array().unwrap() {
        let c = k["component"].as_str().unwrap();
        assert!(allowed.contains(&c), "{c} is not in movers_nodes");
    }
    assert!(report["faithfulness"].as_f64().unwrap() >= 0.8);
}

/// An edge-complete circuit of the movers' path: from the embedding through the four layer-0
/// heads (their values at S4, their queries at END) and the MLPs at END into the logits, one
/// position per line so that each line is one candidate.
const EDGE_BASE: &str = r#"
edge-complete circuit movers_edges {
  edge embed -> 0.0.v @ S4
  edge embed -> 0.1.v @ S4
  edge embed -> 0.2.v @ S4
  edge embed -> 0.3.v @ S4
  edge embed -> 0.0.k @ S4
  edge embed -> 0.1.k @ S4
  edge embed -> 0.2.k @ S4
  edge embed -> 0.3.k @ S4
  edge embed -> 0.0.q @ END
  edge embed -> 0.1.q @ END
  edge embed -> 0.2.q @ END
  edge embed -> 0.3.q @ END
  edge embed -> mlp 0 @ END
  edge 0.0 -> mlp 0 @ END
  edge 0.1 -> mlp 0 @ END
  edge 0.2 -> mlp 0 @ END
  edge 0.3 -> mlp 0 @ END
  edge mlp 0 -> mlp 1 @ END
  edge mlp 0 -> mlp 2 @ END
  edge mlp 1 -> mlp 2 @ END
  edge mlp 0 -> logits @ END
  edge mlp 1 -> logits @ END
  edge mlp 2 -> logits @ END
}
"#;

#[test]
fn path_edges_inside_an_edge_complete_base_rank_exact_by_removal_from_it() {
    let scratch = Scratch::new(&format!("{SMALL}{EDGE_BASE}"));
    let found = scratch.path("found.circuit");
    let args = [
        "--circuit",
        "movers_edges",
        "--granularity",
        "path-edges",
        "--rank",
        "exact",
        "--target",
        "0.5",
        "--best-effort",
        "-o",
        found.to_str().unwrap(),
        "--format",
        "json",
    ];
    let report = json(&scratch.discover(&args, "2"));
    let lines: Vec<&str> = EDGE_BASE
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("edge "))
        .collect();
    assert_eq!(report["candidates"].as_u64().unwrap() as usize, lines.len());
    // The base, then the base without each of its edges: one evaluation each.
    assert_eq!(
        report["single_ablations"].as_u64().unwrap() as usize,
        lines.len() + 1
    );
    // Each kept edge's score is the exact effect of removing it from the base alone, as
    // `circuit eval` of the base written without that line gives it (faithfulness units).
    let mut variants = String::from(SMALL);
    for (i, line) in lines.iter().enumerate() {
        variants.push_str(&format!("\nedge-complete circuit without_{i} {{\n"));
        for other in lines.iter().filter(|l| *l != line) {
            variants.push_str(&format!("  {other}\n"));
        }
        variants.push_str("}\n");
    }
    variants.push_str(EDGE_BASE);
    let file = write(scratch.dir.path(), "variants.circuit", &variants);
    let f: std::collections::BTreeMap<String, f64> = eval_faithfulness(&file).into_iter().collect();
    let kept = report["kept"].as_array().unwrap();
    assert!(!kept.is_empty());
    for k in kept {
        let c = k["component"].as_str().unwrap();
        let i = lines
            .iter()
            .position(|l| *l == c)
            .expect("a line of the base");
        let exact = f[&format!("without_{i}")] - f["movers_edges"];
        let score = k["score"].as_f64().unwrap();
        assert!((exact - score).abs() < 1e-12, "{c}: {score} vs {exact}");
    }
    ok(&run(&["test", found.to_str().unwrap()], "2"));
}

fn refused(args: &[&str], code: &str) -> String {
    let out = run(args, "2");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(code), "expected {code}:\n{err}");
    err
}

#[test]
fn a_target_outside_the_range_is_refused_before_loading_anything() {
    for target in ["0", "-0.5", "1.6", "NaN"] {
        refused(
            &["discover", "no/such.circuit", "--target", target],
            "circuit::discover::target_range",
        );
    }
}

#[test]
fn path_edges_ranked_by_a_score_they_do_not_have_are_refused_before_loading_anything() {
    let path_edges = |extra: [&'static str; 2]| {
        let mut args = vec![
            "discover",
            "no/such.circuit",
            "--target",
            "0.9",
            "--granularity",
            "path-edges",
        ];
        args.extend(extra);
        args
    };
    for rank in ["qkvo", "attention"] {
        refused(
            &path_edges(["--rank", rank]),
            "circuit::discover::path_edge_rank",
        );
    }
    refused(
        &path_edges(["--attention-threshold", "0.1"]),
        "circuit::discover::threshold_needs_qk_edges",
    );
}

#[test]
fn an_unreachable_target_says_the_best_reached_and_writes_nothing_unless_best_effort() {
    let scratch = Scratch::new(SMALL);
    let found = scratch.path("found.circuit");
    let mut args = vec![
        "discover",
        scratch.input(),
        "--target",
        "1.4",
        "-o",
        found.to_str().unwrap(),
    ];
    let err = refused(&args, "circuit::discover::unreachable");
    assert!(err.contains("the best circuit evaluated"), "{err}");
    assert!(!found.exists());

    args.push("--best-effort");
    let text = ok(&run(&args, "2"));
    assert!(text.contains("out of reach"), "{text}");
    ok(&run(&["test", found.to_str().unwrap()], "2"));
}

#[test]
fn a_base_circuit_the_file_does_not_define_is_refused() {
    let scratch = Scratch::new(SMALL);
    let err = refused(
        &[
            "discover",
            scratch.input(),
            "--circuit",
            "movers_node",
            "--target",
            "0.9",
        ],
        "circuit::discover::unknown_base",
    );
    assert!(err.contains("did you mean `movers_nodes`"), "{err}");
}

#[test]
fn a_base_circuit_of_the_other_form_is_refused() {
    let text =
        format!("{SMALL}\ncircuit paths {{\n  0.0 @ END\n  edge 0.0 -> logits\n}}\n{EDGE_BASE}");
    let scratch = Scratch::new(&text);
    let base = |name: &'static str, granularity: &'static str| {
        [
            "discover",
            scratch.input(),
            "--circuit",
            name,
            "--target",
            "0.9",
            "--granularity",
            granularity,
        ]
    };
    // Nodes and QK edges inside a circuit with path edges, or an edge-complete one.
    refused(
        &base("paths", "nodes"),
        "circuit::discover::base_path_edges",
    );
    refused(
        &base("movers_edges", "qk-edges"),
        "circuit::discover::base_path_edges",
    );
    // Path edges inside a node-based circuit.
    for name in ["paths", "movers_nodes"] {
        refused(
            &base(name, "path-edges"),
            "circuit::discover::base_not_edge_complete",
        );
    }
}

#[test]
fn an_output_in_a_missing_folder_is_refused_before_the_search() {
    let scratch = Scratch::new(SMALL);
    let out = scratch.path("no/such/folder/found.circuit");
    refused(
        &[
            "discover",
            scratch.input(),
            "--target",
            "0.9",
            "-o",
            out.to_str().unwrap(),
        ],
        "circuit::output::no_folder",
    );
}

#[test]
fn an_existing_output_is_not_clobbered_without_force() {
    let scratch = Scratch::new(SMALL);
    let found = write(scratch.dir.path(), "found.circuit", "keep me\n");
    let mut args = vec![
        "discover",
        scratch.input(),
        "--target",
        "0.9",
        "-o",
        found.to_str().unwrap(),
    ];
    refused(&args, "circuit::discover::output_exists");
    assert_eq!(std::fs::read_to_string(&found).unwrap(), "keep me\n");
    // Nor onto its own input, even with --force.
    refused(
        &[
            "discover",
            scratch.input(),
            "--target",
            "0.9",
            "-o",
            scratch.input(),
            "--force",
        ],
        "circuit::output::is_input",
    );
    args.push("--force");
    ok(&run(&args, "2"));
    assert!(std::fs::read_to_string(&found)
        .unwrap()
        .contains("circuit found"));
}

#[test]
fn an_attention_threshold_needs_qk_edges() {
    refused(
        &[
            "discover",
            "circuits/toy-seqcont/numerals_template.circuit",
            "--target",
            "0.9",
            "--attention-threshold",
            "0.1",
        ],
        "circuit::discover::threshold_needs_qk_edges",
    );
}

#[test]
fn the_curve_svg_is_written_and_deterministic() {
    let scratch = Scratch::new(SMALL);
    let svg = scratch.path("curve.svg");
    let args = ["--target", "0.9", "--svg", svg.to_str().unwrap()];
    ok(&scratch.discover(&args, "2"));
    let first = std::fs::read_to_string(&svg).unwrap();
    ok(&scratch.discover(&args, "1"));
    assert_eq!(first, std::fs::read_to_string(&svg).unwrap());
    assert!(first.starts_with("<?xml"));
    assert_eq!(first.matches(r#"class="point""#).count(), 10);
    assert!(first.contains(r#"class="found""#));
}

#[test]
fn the_committed_found_files_are_what_discover_writes_today() {
    // The heavy runs are committed (circuits/toy-seqcont/found/); these three are re-run here.
    let dir = tempfile::tempdir().unwrap();
    for granularity in ["nodes", "qk-edges", "path-edges"] {
        let out = dir.path().join(format!("{granularity}.circuit"));
        ok(&run(
            &[
                "discover",
                "circuits/toy-seqcont/numerals_template.circuit",
                "--target",
                "0.9",
                "--granularity",
                granularity,
                "-o",
                out.to_str().unwrap(),
            ],
            "2",
        ));
        let committed = cli_support::root().join(format!(
            "circuits/toy-seqcont/found/numerals_template_{granularity}.circuit"
        ));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            std::fs::read_to_string(&committed).unwrap(),
            "{} is stale: re-run circuit discover",
            committed.display()
        );
    }
}

#[test]
fn on_stories260k_discovery_runs_end_to_end_and_its_output_passes_circuit_test() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pronoun.circuit");
    let report = json(&run(
        &[
            "discover",
            "circuits/stories260K/pronoun.circuit",
            "--target",
            "0.9",
            "-o",
            out.to_str().unwrap(),
            "--format",
            "json",
        ],
        "2",
    ));
    assert!(report["faithfulness"].as_f64().unwrap() >= 0.9);
    // The model and dataset paths were rebased to the output's folder.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("shared/models/stories260K\""), "{text}");
    let test = ok(&run(&["test", out.to_str().unwrap()], "2"));
    assert!(test.contains("1 passed, 0 failed"), "{test}");
}

#[test]
fn rank_exact_ranks_by_the_scan_and_its_file_passes_circuit_test() {
    let scratch = Scratch::new(SMALL);
    let found = scratch.path("found.circuit");
    let report = json(&scratch.discover(
        &[
            "--target",
            "0.9",
            "--rank",
            "exact",
            "-o",
            found.to_str().unwrap(),
            "--format",
            "json",
        ],
        "2",
    ));
    assert_eq!(report["rank"], "exact");
    // 3 layers × (4 heads + 1 MLP) × 23 slots, each ablated alone once.
    assert_eq!(report["single_ablations"], 345);
    // Each kept component's score is its exact single-ablation effect, as `circuit scores
    // --method exact` reports it in faithfulness units.
    let scores = json(&run(
        &[
            "scores",
            scratch.input(),
            "--method",
            "exact",
            "--format",
            "json",
        ],
        "2",
    ));
    let by_text: std::collections::BTreeMap<&str, f64> = scores["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["circuit"].as_str().unwrap(),
                e["faithfulness"].as_f64().unwrap(),
            )
        })
        .collect();
    for k in report["kept"].as_array().unwrap() {
        let c = k["component"].as_str().unwrap();
        let score = k["score"].as_f64().unwrap();
        assert!(
            (by_text[c] - score).abs() < 1e-12,
            "{c}: {score} vs {}",
            by_text[c]
        );
    }
    ok(&run(&["test", found.to_str().unwrap()], "2"));
}

/// Qwen3 (per-head q/k norms): discovery ranks by gradients through the norms, `eap-ig` (the
/// default) and `eap`, and the circuit it writes reaches the target under `circuit test`.
#[test]
fn on_qwen3_discovery_ranks_by_gradients_and_its_output_passes_circuit_test() {
    let dir = tempfile::tempdir().unwrap();
    cli_support::digits_jsonl(dir.path(), 3, 4);
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen3-bf16");
    let input = write(
        dir.path(),
        "qwen3.circuit",
        &format!(
            "model \"{}\"\ndataset digits = \"digits.jsonl\"\nreference digits\nablate heads by mean\nmetric logit_diff\n",
            model.display()
        ),
    );
    for rank in ["eap-ig", "eap"] {
        let out = dir.path().join(format!("found-{rank}.circuit"));
        let report = json(&run(
            &[
                "discover",
                input.to_str().unwrap(),
                "--target",
                "0.8",
                "--rank",
                rank,
                "-o",
                out.to_str().unwrap(),
                "--format",
                "json",
            ],
            "2",
        ));
        assert!(report["faithfulness"].as_f64().unwrap() >= 0.8, "{report}");
        let test = ok(&run(&["test", out.to_str().unwrap()], "2"));
        assert!(test.contains("1 passed, 0 failed"), "{rank}: {test}");
    }
}
