//! Exact scans (src/scan/): the incremental engine equals the naive one (one ablated forward per
//! candidate through the session), and a scanned candidate equals `circuit eval` of the same
//! single-ablation circuit written out as a `.circuit` file, on the built-in model and on
//! stories260K (a real pretrained Llama).

mod cli_support;

use std::path::{Path, PathBuf};

use circuit::attribute::Entry;
use circuit::measure::scores;
use circuit::measure::session::select_circuits;
use circuit::measure::{Session, SessionOptions};
use circuit::resolve::{load_file, RealEnvironment, ResolveOptions};
use circuit::scan::{
    scan, Candidate, Engine, Scan, ScanGranularity, ScanOptions, ScanRequest, ScanResult, Shard,
};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn open(path: &Path) -> (circuit::resolve::bound::BoundFile, Session<'static>) {
    let file = load_file(path, &RealEnvironment, &ResolveOptions::default())
        .expect("the file resolves")
        .file;
    let session = Session::open(&file, SessionOptions::default()).expect("the session opens");
    (file, session)
}

fn run(
    path: &Path,
    granularity: ScanGranularity,
    base: Option<&str>,
    shard: Shard,
    engine: Engine,
) -> ScanResult {
    let (file, mut session) = open(path);
    let base = base.map(|name| {
        select_circuits(&file, &[name.to_string()])
            .unwrap()
            .remove(0)
    });
    let request = ScanRequest {
        granularity,
        base,
        shard,
        engine,
    };
    scan(&mut session, request, &ScanOptions::default()).expect("the scan runs")
}

/// Both engines on the same scan: same candidates, metric means within 1e-6 relative (the
/// products run over other row sets), faithfulness within 1e-6. Returns the largest
/// difference of faithfulness seen.
fn assert_engines_agree(
    path: &Path,
    granularity: ScanGranularity,
    base: Option<&str>,
    shard: Shard,
) -> f64 {
    let incremental = run(path, granularity, base, shard, Engine::Incremental);
    let naive = run(path, granularity, base, shard, Engine::Naive);
    assert_eq!(incremental.engine, Engine::Incremental, "the fast path ran");
    assert!(!naive.entries.is_empty());
    assert_eq!(incremental.entries.len(), naive.entries.len());
    let mut worst = 0f64;
    for (a, b) in incremental.entries.iter().zip(&naive.entries) {
        assert_eq!(
            (a.index, a.layer, a.head, &a.query, &a.key, a.n_prompts),
            (b.index, b.layer, b.head, &b.query, &b.key, b.n_prompts)
        );
        assert!(
            (a.metric - b.metric).abs() <= 1e-6 * (1.0 + b.metric.abs()),
            "{a:?} vs {b:?}"
        );
        let (fa, fb) = (
            incremental.faithfulness(a).unwrap(),
            naive.faithfulness(b).unwrap(),
        );
        worst = worst.max((fa - fb).abs());
        assert!((fa - fb).abs() <= 1e-6, "{a:?} vs {b:?}");
    }
    // The ablations change something: a scan of zeros would agree trivially.
    assert!(naive.entries.iter().any(|e| naive.score(e).abs() > 1e-3));
    eprintln!(
        "{}: {} {} candidates, max |Δ faithfulness| {worst:e}",
        path.display(),
        naive.entries.len(),
        granularity.name()
    );
    worst
}

const TOY: &str = "circuits/toy-seqcont/numerals_template.circuit";
const STORIES: &str = "tests/fixtures/eval/friends.circuit";

#[test]
fn incremental_equals_naive_on_the_builtin_model_nodes_and_mlps() {
    assert_engines_agree(&repo(TOY), ScanGranularity::Nodes, None, Shard::WHOLE);
}

#[test]
fn incremental_equals_naive_on_the_builtin_model_qk_edges() {
    // One part in 20 of the QK edges keeps the naive engine's forwards few.
    let shard = Shard::parse("3/20").unwrap();
    assert_engines_agree(&repo(TOY), ScanGranularity::QkEdges, None, shard);
}

#[test]
fn incremental_equals_naive_relative_to_a_circuit() {
    // movers_nodes: heads and MLPs at positions, no edges (the incremental engine applies the
    // base's own ablations in every row it recomputes).
    for granularity in [ScanGranularity::Nodes, ScanGranularity::QkEdges] {
        assert_engines_agree(&repo(TOY), granularity, Some("movers_nodes"), Shard::WHOLE);
    }
}

#[test]
fn incremental_equals_naive_on_stories260k() {
    assert_engines_agree(&repo(STORIES), ScanGranularity::Nodes, None, Shard::WHOLE);
    let shard = Shard::parse("5/40").unwrap();
    assert_engines_agree(&repo(STORIES), ScanGranularity::QkEdges, None, shard);
}

#[test]
fn incremental_equals_naive_on_stories260k_relative_to_a_node_circuit() {
    let dir = tempfile::tempdir().unwrap();
    let path = stories_file(dir.path(), "");
    assert_engines_agree(&path, ScanGranularity::Nodes, Some("nodes"), Shard::WHOLE);
}

/// A stories260K file over the friends dataset with a node circuit `nodes`, then `extra`.
fn stories_file(dir: &Path, extra: &str) -> PathBuf {
    let model = repo("../shared/models/stories260K");
    let data = repo("tests/fixtures/eval/friends.jsonl");
    let text = format!(
        "model \"{}\"\ndataset friends = \"{}\"\nreference friends.corrupt\nablate heads by mean\nmetric logit_diff\n\ncircuit nodes {{\n  0.*, 1.* @ *\n  4.* @ END\n  3.1, 3.5 @ S3, END\n}}\n{extra}",
        model.display(),
        data.display()
    );
    let path = dir.join("friends_nodes.circuit");
    std::fs::write(&path, text).unwrap();
    path
}

/// Faithfulness of each named circuit of `path` as `circuit eval` computes it.
fn eval_faithfulness(path: &Path, names: &[&str]) -> Vec<f64> {
    let (file, mut session) = open(path);
    let metric = file.settings.metric;
    let circuits = select_circuits(
        &file,
        &names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    )
    .unwrap();
    let refs: Vec<&_> = circuits.iter().collect();
    let evaluation = session.evaluate(&refs).unwrap();
    names
        .iter()
        .map(|n| evaluation.scores(n, metric).unwrap().faithfulness.unwrap())
        .collect()
}

/// The scanned faithfulness of the candidate `circuit_text` (as reports write it: `0.3 @ END`,
/// `mlp 0 @ S4`, `edge 1.0: S4 -> END`).
fn scanned(result: &ScanResult, circuit_text: &str) -> f64 {
    let report = result.score_report();
    let i = report
        .set
        .entries
        .iter()
        .position(|e| e.circuit_text() == circuit_text)
        .unwrap_or_else(|| panic!("no candidate {circuit_text}"));
    result.faithfulness(&result.entries[i]).unwrap()
}

/// Asserts scan == eval: each candidate's plan is the very plan `eval` compiles for its circuit
/// written out (so the naive engine, which runs that plan, gives `eval`'s numbers bit for bit),
/// and the incremental engine's faithfulness is `eval`'s within 1e-6.
fn assert_scan_is_eval(
    path: &Path,
    granularity: ScanGranularity,
    base: Option<&str>,
    cases: &[(&str, &str)],
) {
    let names: Vec<&str> = cases.iter().map(|c| c.1).collect();
    let evaluated = eval_faithfulness(path, &names);
    let incremental = run(path, granularity, base, Shard::WHOLE, Engine::Incremental);
    let (file, mut session) = open(path);
    let request = ScanRequest {
        granularity,
        base: base.map(|name| {
            select_circuits(&file, &[name.to_string()])
                .unwrap()
                .remove(0)
        }),
        shard: Shard::WHOLE,
        engine: Engine::Naive,
    };
    let opened = Scan::new(&session, request).unwrap();
    let metric = file.settings.metric;
    let full = session.run(&session.full_plan()).unwrap();
    let empty = session.run(&session.empty_plan()).unwrap();
    for ((candidate, name), eval) in cases.iter().zip(&evaluated) {
        let c = opened
            .candidates()
            .iter()
            .find(|c| text_of(c) == *candidate)
            .unwrap_or_else(|| panic!("no candidate {candidate}"));
        let written = select_circuits(&file, &[name.to_string()])
            .unwrap()
            .remove(0);
        let plan = opened.candidate_plan(c);
        assert_eq!(
            plan,
            session.compile(&written).unwrap(),
            "{candidate} ({name})"
        );
        let m = session.run(&plan).unwrap();
        let naive = scores(&full[&metric], &m[&metric], &empty[&metric]);
        assert_eq!(
            naive.faithfulness,
            Some(*eval),
            "{candidate} ({name}), naive"
        );
        let got = scanned(&incremental, candidate);
        assert!(
            (got - eval).abs() <= 1e-6,
            "{candidate} ({name}): {got} vs {eval}"
        );
    }
}

/// A candidate as reports write it.
fn text_of(c: &Candidate) -> String {
    Entry {
        component: c.component,
        query: c.query.clone(),
        key: c.key.clone(),
        score: 0.0,
        n_prompts: 0,
    }
    .circuit_text()
}

#[test]
fn a_scanned_candidate_is_eval_of_its_circuit_written_out_on_the_builtin_model() {
    let dir = tempfile::tempdir().unwrap();
    let source = std::fs::read_to_string(repo(TOY)).unwrap();
    // The file's own settings and circuits, then the single ablations written out. The
    // built-in model has 3 layers of 4 heads.
    let text = format!(
        "{source}\ncircuit all {{\n  *.* @ *\n  mlp 0..2 @ *\n}}\n\
         circuit no_head extends all {{\n  0.3 @ ..END-1\n}}\n\
         circuit no_mlp extends all {{\n  mlp 0 @ ..S4-1, S4+1..END\n}}\n\
         circuit no_edge extends all {{\n  edge 1.0: ..S4-1 -> END, S4+1..END -> END\n}}\n\
         circuit movers_without_0_3 extends movers_nodes {{\n  drop 0.3\n}}\n\
         circuit movers_without_mlp_1 extends movers_nodes {{\n  drop mlp 1\n}}\n"
    );
    let path = dir.path().join("written_out.circuit");
    std::fs::write(&path, text).unwrap();
    assert_scan_is_eval(
        &path,
        ScanGranularity::Nodes,
        None,
        &[("0.3 @ END", "no_head"), ("mlp 0 @ S4", "no_mlp")],
    );
    assert_scan_is_eval(
        &path,
        ScanGranularity::QkEdges,
        None,
        &[("edge 1.0: S4 -> END", "no_edge")],
    );
    assert_scan_is_eval(
        &path,
        ScanGranularity::Nodes,
        Some("movers_nodes"),
        &[
            ("0.3 @ END", "movers_without_0_3"),
            ("mlp 1 @ END", "movers_without_mlp_1"),
        ],
    );
}

#[test]
fn a_scanned_candidate_is_eval_of_its_circuit_written_out_on_stories260k() {
    let dir = tempfile::tempdir().unwrap();
    let path = stories_file(
        dir.path(),
        "\ncircuit all {\n  *.* @ *\n}\n\
         circuit no_head extends all {\n  4.2 @ ..END-1\n}\n\
         circuit no_head_s3 extends all {\n  3.1 @ ..S3-1, S3+1..END\n}\n\
         circuit no_edge extends all {\n  edge 4.2: ..S4-1 -> END, S4+1..END -> END\n}\n\
         circuit nodes_without extends nodes {\n  3.1 @ END\n}\n",
    );
    assert_scan_is_eval(
        &path,
        ScanGranularity::Nodes,
        None,
        &[("4.2 @ END", "no_head"), ("3.1 @ S3", "no_head_s3")],
    );
    assert_scan_is_eval(
        &path,
        ScanGranularity::QkEdges,
        None,
        &[("edge 4.2: S4 -> END", "no_edge")],
    );
    assert_scan_is_eval(
        &path,
        ScanGranularity::Nodes,
        Some("nodes"),
        &[("3.1 @ S3", "nodes_without")],
    );
}

#[test]
fn shards_merge_into_the_whole_scan() {
    let path = repo(TOY);
    let whole = run(
        &path,
        ScanGranularity::Nodes,
        None,
        Shard::WHOLE,
        Engine::Incremental,
    );
    let parts: Vec<ScanResult> = (1..=3)
        .map(|i| {
            let shard = Shard { index: i, count: 3 };
            let part = run(
                &path,
                ScanGranularity::Nodes,
                None,
                shard,
                Engine::Incremental,
            );
            // Through the part file, as --merge reads it.
            ScanResult::from_part_json(&part.to_part_json(), "part").unwrap()
        })
        .collect();
    assert!(parts
        .iter()
        .all(|p| !p.entries.is_empty() && p.key == whole.key));
    let names: Vec<String> = (1..=3).map(|i| format!("part{i}")).collect();
    // Any order.
    let reversed: Vec<ScanResult> = parts.into_iter().rev().collect();
    let merged = circuit::scan::merge(reversed, &names).unwrap();
    assert_eq!(merged, whole);
}

/// A file over a small digits dataset for the model fixture `model`, scope `scope`.
fn digits_file(dir: &Path, model: &str, scope: &str) -> PathBuf {
    cli_support::digits_jsonl(dir, 6, 4);
    let text = format!(
        "model \"{}\"\ndataset digits = \"digits.jsonl\"\nreference digits\nablate {scope} by mean\nmetric logit_diff\n",
        repo(&format!("tests/fixtures/models/{model}")).display()
    );
    let path = dir.join(format!("{model}.circuit"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Gemma 2: the incremental engine's attention soft-caps its scores with the engine's scale
/// (`query_pre_attn_scalar`), and its attention and MLP outputs pass through their post-norms.
#[test]
fn incremental_equals_naive_on_gemma2() {
    let dir = tempfile::tempdir().unwrap();
    let path = digits_file(dir.path(), "gemma2-bf16", "heads and mlps");
    assert_engines_agree(&path, ScanGranularity::Nodes, None, Shard::WHOLE);
    assert_engines_agree(&path, ScanGranularity::Mlps, None, Shard::WHOLE);
    assert_engines_agree(&path, ScanGranularity::QkEdges, None, Shard::WHOLE);
}

/// Qwen3: the incremental engine's resumed attention recomputes q (and k) through the same
/// per-head q/k norms as the forward, under its sliding window of 3 keys.
#[test]
fn incremental_equals_naive_on_qwen3_with_qk_norms() {
    let dir = tempfile::tempdir().unwrap();
    let path = digits_file(dir.path(), "qwen3-bf16", "heads and mlps");
    assert_engines_agree(&path, ScanGranularity::Nodes, None, Shard::WHOLE);
    assert_engines_agree(&path, ScanGranularity::Mlps, None, Shard::WHOLE);
    assert_engines_agree(&path, ScanGranularity::QkEdges, None, Shard::WHOLE);
}

/// GPT-NeoX with the parallel residual: the MLP of the ablated layer reads the stream entering
/// it, not the attention's output, in the incremental engine as in the forward.
#[test]
fn incremental_equals_naive_on_gpt_neox_with_the_parallel_residual() {
    let dir = tempfile::tempdir().unwrap();
    let path = digits_file(dir.path(), "neox-parallel-f16", "heads and mlps");
    assert_engines_agree(&path, ScanGranularity::Nodes, None, Shard::WHOLE);
    assert_engines_agree(&path, ScanGranularity::Mlps, None, Shard::WHOLE);
}

/// Sliding-window attention (Mistral: every layer a window of 3 keys; Qwen2: layer 0 full,
/// layers 1 and 2 a window of 4) on prompts of 7 tokens and more, where the windows bind: the
/// incremental engine's resumed attention reads the same keys as the forward's, for nodes,
/// MLPs and QK edges (whose candidates are the keys each window lets a query see).
#[test]
fn incremental_equals_naive_under_sliding_window_attention() {
    let dir = tempfile::tempdir().unwrap();
    cli_support::digits_jsonl(dir.path(), 6, 6);
    for fixture in ["mistral-window-f32", "qwen2-window-f16"] {
        let model = repo(&format!("tests/fixtures/models/{fixture}"));
        let text = format!(
            "model \"{}\"\ndataset digits = \"digits.jsonl\"\nreference digits\nablate heads and mlps by mean\nmetric logit_diff\n",
            model.display()
        );
        let path = dir.path().join(format!("{fixture}.circuit"));
        std::fs::write(&path, text).unwrap();
        assert_engines_agree(&path, ScanGranularity::Nodes, None, Shard::WHOLE);
        assert_engines_agree(&path, ScanGranularity::Mlps, None, Shard::WHOLE);
        let edges = run(
            &path,
            ScanGranularity::QkEdges,
            None,
            Shard::WHOLE,
            Engine::Naive,
        );
        assert_engines_agree(&path, ScanGranularity::QkEdges, None, Shard::WHOLE);
        // Only keys inside the window are candidates: at END (token 6 of 7 or later) of a
        // sliding layer, the key `start` (token 0) is never one.
        let windowed_layer = 1;
        assert!(edges.entries.iter().any(|e| e.layer == windowed_layer));
        assert!(
            !edges.entries.iter().any(|e| e.layer == windowed_layer
                && e.query == "END"
                && e.key.as_deref() == Some("start")),
            "{fixture}: a QK edge outside the window was scanned"
        );
    }
}
