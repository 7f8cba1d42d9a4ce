//! An exact scan of every head at every position of a GPT-2-small-shaped model with random
//! weights (12 layers × 12 heads × 16 positions = 2304 single ablations, 32 prompts × 16
//! tokens, mean ablation, logit_diff), with the incremental engine, against one whole ablated
//! forward per candidate (the naive engine: what 2304 `circuit eval`s of single-ablation
//! circuits would run), timed on a sample of candidates and extrapolated to 2304 (said so in the
//! output). Compare with `scripts/bench_scan_tl.py` (the TransformerLens hook loop).
//!
//!     cargo bench --bench scan                      # 1 thread
//!     cargo bench --bench scan -- --threads 2
//!     cargo bench --bench scan -- --weights DIR     # keep the random model (and prompts) in DIR
//!
//! The thread count is fixed per process (rayon and matrixmultiply size their pools once), so
//! the measurement runs in a child process.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use circuit::measure::{scores, Session, SessionOptions};
use circuit::resolve::{load_file, RealEnvironment, ResolveOptions};
use circuit::scan::{scan, Engine, Scan, ScanGranularity, ScanOptions, ScanRequest, Shard};
use rand::{Rng, SeedableRng};

#[path = "support/random_gpt2.rs"]
mod random_gpt2;
use random_gpt2::{write_random_gpt2, Gpt2Shape};

const PROMPTS: usize = 32;
const SEQ: usize = 16;
/// Candidates timed with the naive engine (every 2304/SAMPLE-th, so every layer is sampled).
const SAMPLE: usize = 48;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(Path::new(&args[i + 1]));
        return;
    }
    let threads: usize = match args.iter().position(|a| a == "--threads") {
        Some(i) => args[i + 1].parse().expect("--threads N"),
        None => 1,
    };
    let temporary = tempfile::tempdir().expect("tempdir");
    let dir = match args.iter().position(|a| a == "--weights") {
        Some(i) => std::path::PathBuf::from(&args[i + 1]),
        None => temporary.path().to_path_buf(),
    };
    // `--small`: a 2-layer model, to check that the bench runs (not a measurement).
    let (layers, heads, d, vocab) = if args.iter().any(|a| a == "--small") {
        (2, 4, 64, 300)
    } else {
        (12, 12, 768, 50257)
    };
    if !dir.join("model.safetensors").exists() {
        std::fs::create_dir_all(&dir).expect("weights folder");
        write_random_gpt2(
            &dir,
            &Gpt2Shape {
                layers,
                heads,
                d,
                d_mlp: 4 * d,
                vocab,
                n_ctx: 1024,
            },
        );
    }
    write_task(&dir);
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--child", dir.to_str().unwrap()])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("MATMUL_NUM_THREADS", threads.to_string())
        .status()
        .expect("child runs");
    assert!(status.success());
}

/// The prompts (16 random digits, 16 tokens under the fixture tokenizer; answer "5",
/// distractor "7"), the `.circuit` file, and the same prompts as token ids for the Python
/// script.
fn write_task(dir: &Path) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut jsonl = String::new();
    let mut texts = Vec::new();
    for _ in 0..PROMPTS {
        let text: String = (0..SEQ)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect();
        jsonl.push_str(&format!(
            "{{\"prompt\": \"{text}\", \"answer\": \"5\", \"distractor\": \"7\"}}\n"
        ));
        texts.push(text);
    }
    std::fs::write(dir.join("scan_prompts.jsonl"), jsonl).unwrap();
    let file = "model \".\"\ndataset digits = \"scan_prompts.jsonl\"\nreference digits.clean\nablate heads by mean\nmetric logit_diff\n";
    std::fs::write(dir.join("scan.circuit"), file).unwrap();
}

fn child(dir: &Path) {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    let file = load_file(
        &dir.join("scan.circuit"),
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .expect("the bench file resolves")
    .file;
    let started = Instant::now();
    let mut session = Session::open(&file, SessionOptions::default()).expect("opens");
    let lengths: Vec<usize> = session.clean_prompts().iter().map(|p| p.len()).collect();
    assert!(lengths.iter().all(|&l| l == SEQ), "16 tokens each");
    // Token ids for scripts/bench_scan_tl.py.
    let ids: Vec<Vec<u32>> = session
        .clean_prompts()
        .iter()
        .map(|p| p.ids.clone())
        .collect();
    let first = &session.clean_prompts()[0];
    let task = serde_json::json!({
        "ids": ids,
        "answer": first.answer_id,
        "distractor": first.distractor_id,
    });
    std::fs::write(dir.join("scan_task.json"), task.to_string()).unwrap();
    eprintln!(
        "opened the model and prompts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The reference pass and the full model's logits, outside both timings.
    let _ = session.run(&session.empty_plan()).unwrap();
    let metric = file.settings.metric;
    let full = session.run(&session.full_plan()).unwrap();
    let empty = session.run(&session.empty_plan()).unwrap();

    let request = |engine| ScanRequest {
        granularity: ScanGranularity::Nodes,
        base: None,
        shard: Shard::WHOLE,
        engine,
    };
    let config = session.model().config.clone();
    let n_candidates = config.n_layers * config.n_heads * SEQ;
    let t = Instant::now();
    let result = scan(
        &mut session,
        request(Engine::Incremental),
        &ScanOptions::default(),
    )
    .unwrap();
    let incremental = t.elapsed().as_secs_f64();
    assert_eq!(result.entries.len(), n_candidates);

    let opened = Scan::new(&session, request(Engine::Naive)).unwrap();
    let sample: Vec<usize> = (0..n_candidates)
        .step_by((n_candidates / SAMPLE).max(1))
        .collect();
    let mut worst = 0f64;
    let t = Instant::now();
    for &c in &sample {
        let m = session
            .run(&opened.candidate_plan(&opened.candidates()[c]))
            .unwrap();
        let naive = scores(&full[&metric], &m[&metric], &empty[&metric])
            .faithfulness
            .unwrap();
        let fast = result.faithfulness(&result.entries[c]).unwrap();
        worst = worst.max((naive - fast).abs());
    }
    let naive_each = t.elapsed().as_secs_f64() / sample.len() as f64;
    let naive = naive_each * n_candidates as f64;
    // A plain forward (no hooks, END logits only), for scale.
    let t = Instant::now();
    let reps = 5;
    for _ in 0..reps {
        let out = session
            .model()
            .forward(
                &ids,
                &circuit::model::ForwardOptions::default(),
                &circuit::model::NoInterventions,
            )
            .unwrap();
        std::hint::black_box(out);
    }
    let plain = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "exact scan, {} layers x {} heads (d_model {}, random weights), 32 prompts x 16 tokens, every head x position = {n_candidates} ablations, {threads} thread(s)",
        config.n_layers, config.n_heads, config.d_model
    );
    println!("  incremental engine, whole scan (measured):      {incremental:8.2} s");
    println!(
        "  naive engine, one ablated forward per candidate: {naive:8.2} s (extrapolated: {naive_each:.3} s each, measured on {} candidates)",
        sample.len()
    );
    let plain_all = plain * n_candidates as f64;
    println!(
        "  plain forward (no hooks), one per candidate:     {plain_all:8.2} s (extrapolated: {plain:.3} s each)"
    );
    println!(
        "  speed-up: {:.1}x against the naive engine, {:.1}x against plain forwards",
        naive / incremental,
        plain_all / incremental
    );
    println!("  max |faithfulness difference| incremental vs naive on the sample: {worst:.2e}");
}
