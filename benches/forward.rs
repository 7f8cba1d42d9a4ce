//! Forward-pass speed and memory on a GPT-2-small-shaped model with random weights (12 layers,
//! 12 heads, d_model 768, vocab 50257): 32 prompts × 16 tokens, END logits and all-position
//! logits, 1 and 2 threads. Compare with `scripts/bench_hf.py` (same shapes, HF transformers).
//!
//!     cargo bench --bench forward                 # both thread counts
//!     cargo bench --bench forward -- --threads 2  # one
//!
//! The weights (498 MB of f32) are generated into a temporary folder, never committed. Each
//! thread count runs in a child process, because matrixmultiply and rayon size their thread
//! pools once per process (MATMUL_NUM_THREADS, RAYON_NUM_THREADS).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use circuit::model::{matmul, ForwardOptions, Model, NoInterventions};
use rand::{Rng, SeedableRng};

#[path = "support/random_gpt2.rs"]
mod random_gpt2;
use random_gpt2::{peak_rss_bytes, write_random_gpt2, Gpt2Shape};

const LAYERS: usize = 12;
const D: usize = 768;
const VOCAB: usize = 50257;
const N_CTX: usize = 1024;
const BATCH: usize = 32;
const SEQ: usize = 16;
const REPETITIONS: usize = 7;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; ignore it.
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(Path::new(&args[i + 1]));
        return;
    }
    let threads: Vec<usize> = match args.iter().position(|a| a == "--threads") {
        Some(i) => vec![args[i + 1].parse().expect("--threads N")],
        None => vec![1, 2],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    write_random_gpt2(
        dir.path(),
        &Gpt2Shape {
            layers: LAYERS,
            heads: 12,
            d: D,
            d_mlp: 4 * D,
            vocab: VOCAB,
            n_ctx: N_CTX,
        },
    );
    eprintln!(
        "wrote random GPT-2-small weights in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for &n in &threads {
        println!(
            "threads {n}: machine FMA peak {:.1} GFLOP/s (f32, {n} core(s) busy)",
            fma_peak_gflops(n)
        );
    }
    for n in threads {
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--child", dir.path().to_str().unwrap()])
            .env("RAYON_NUM_THREADS", n.to_string())
            .env("MATMUL_NUM_THREADS", n.to_string())
            .status()
            .expect("run child");
        assert!(status.success());
    }
}

/// FLOPs of one forward as the engine runs it: per token and layer `24·D²` (q, k, v, o, MLP)
/// plus `4·T·D` (scores and z over the full T×T block), plus `2·D·V` per unembedded row. For
/// END logits the last layer computes q, o and the MLP (`20·D²`) and attention only at the
/// `BATCH` END rows; k and v (`4·D²`) still at every token.
fn flops(end_logits_only: bool) -> f64 {
    let (tokens, ends, d, v) = ((BATCH * SEQ) as f64, BATCH as f64, D as f64, VOCAB as f64);
    let layer =
        |query_rows: f64| tokens * 4.0 * d * d + query_rows * (20.0 * d * d + 4.0 * SEQ as f64 * d);
    if end_logits_only {
        (LAYERS - 1) as f64 * layer(tokens) + layer(ends) + ends * 2.0 * d * v
    } else {
        LAYERS as f64 * layer(tokens) + tokens * 2.0 * d * v
    }
}

fn child(dir: &Path) {
    reset_peak_rss();
    let started = Instant::now();
    let model = Model::load(dir).expect("load");
    let load_s = started.elapsed().as_secs_f64();
    let weight_bytes = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len() as f64;

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let prompts: Vec<Vec<u32>> = (0..BATCH)
        .map(|_| {
            (0..SEQ)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect()
        })
        .collect();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    println!("threads {threads}: load {load_s:.2} s");
    for (label, all_logits) in [("END logits", false), ("all-position logits", true)] {
        let options = ForwardOptions {
            all_logits,
            cache: false,
        };
        model
            .forward(&prompts, &options, &NoInterventions)
            .expect("warm-up");
        let mut cpu_times = Vec::with_capacity(REPETITIONS);
        let mut times: Vec<f64> = (0..REPETITIONS)
            .map(|_| {
                let (t, cpu) = (Instant::now(), process_cpu_seconds());
                let out = model.forward(&prompts, &options, &NoInterventions).unwrap();
                std::hint::black_box(&out.logits);
                cpu_times.push(process_cpu_seconds() - cpu);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        cpu_times.sort_by(f64::total_cmp);
        let median = times[REPETITIONS / 2];
        println!(
            "threads {threads}: {label:<20} median {median:.3} s (min {:.3}, max {:.3}) over {REPETITIONS} runs, {:.1} GFLOP/s; CPU time median {:.2} s",
            times[0],
            times[REPETITIONS - 1],
            flops(!all_logits) / median / 1e9,
            cpu_times[REPETITIONS / 2],
        );
    }
    let peak = peak_rss_bytes();
    println!(
        "threads {threads}: peak RSS {:.0} MB = {:.2} × weight bytes ({:.0} MB)",
        peak / 1e6,
        peak / weight_bytes,
        weight_bytes / 1e6
    );
    gemm_floor(&threads);
}

/// The matrix products of one END-logits forward, timed alone with the engine's own product
/// (`circuit::model::matmul`: ndarray → matrixmultiply) at this thread count: their sum is how
/// fast the forward could be if everything else (norms, attention, GELU, copies) were free.
fn gemm_floor(threads: &str) {
    let (tokens, ends) = (BATCH * SEQ, BATCH);
    // (rows, inner, cols, how many per forward)
    let shapes = [
        (tokens, D, D, 4 * (LAYERS - 1) + 2), // q, k, v, o; the last layer's k, v
        (tokens, D, 4 * D, LAYERS - 1),       // MLP in
        (tokens, 4 * D, D, LAYERS - 1),       // MLP out
        (ends, D, D, 2),                      // last layer's q, o at END rows
        (ends, D, 4 * D, 1),
        (ends, 4 * D, D, 1),
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut random = |rows: usize, cols: usize| {
        ndarray::Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0))
    };
    let median_seconds = |run: &dyn Fn() -> f32| {
        run();
        let mut times: Vec<f64> = (0..REPETITIONS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(run());
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[REPETITIONS / 2]
    };
    let mut total = 0.0;
    for (rows, inner, cols, count) in shapes {
        let (a, b) = (random(rows, inner), random(inner, cols));
        let seconds = median_seconds(&|| matmul(a.view(), b.view())[[0, 0]]);
        total += count as f64 * seconds;
        println!(
            "threads {threads}: GEMM alone {rows}×{inner}·{inner}×{cols}: {:.1} GFLOP/s",
            2.0 * (rows * inner * cols) as f64 / seconds / 1e9
        );
    }
    // The tied unembedding reads the (V, D) embedding transposed.
    let (x, embed) = (random(ends, D), random(VOCAB, D));
    let seconds = median_seconds(&|| matmul(x.view(), embed.t())[[0, 0]]);
    total += seconds;
    println!(
        "threads {threads}: GEMM alone {ends}×{D}·({VOCAB}×{D})ᵀ: {:.1} GFLOP/s",
        2.0 * (ends * D * VOCAB) as f64 / seconds / 1e9
    );
    println!(
        "threads {threads}: END-logits forward's matrix products alone: {total:.3} s ({:.1} GFLOP/s)",
        flops(true) / total / 1e9
    );
}

/// The machine's f32 multiply-add throughput: 12 independent chains of 8-wide FMAs per
/// thread (enough to hide the FMA latency), on `threads` threads at once. No GEMM can exceed it.
fn fma_peak_gflops(threads: usize) -> f64 {
    const ITERATIONS: usize = 100_000_000;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| std::hint::black_box(fma_chains(ITERATIONS)));
        }
    });
    let flops_per_iteration = 12.0 * 8.0 * 2.0;
    threads as f64 * ITERATIONS as f64 * flops_per_iteration / started.elapsed().as_secs_f64() / 1e9
}

fn fma_chains(iterations: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx") && is_x86_feature_detected!("fma") {
        // SAFETY: the features the function is compiled for were just detected.
        return unsafe { fma_chains_avx(iterations) };
    }
    let _ = iterations;
    f32::NAN
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
fn fma_chains_avx(iterations: usize) -> f32 {
    use std::arch::x86_64::*;
    let (scale, shift) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut chains = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iterations {
        for chain in chains.iter_mut() {
            *chain = _mm256_fmadd_ps(*chain, scale, shift);
        }
    }
    let mut lanes = [0.0f32; 8];
    let sum = chains
        .iter()
        .fold(_mm256_setzero_ps(), |a, &c| _mm256_add_ps(a, c));
    // SAFETY: `lanes` holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

/// User + system CPU time of this process, all threads (Linux `/proc/self/stat`, in USER_HZ
/// = 100 ticks per second). Unlike wall time it barely moves when other processes share the
/// cores, so it is reported next to the wall-clock median.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: utime and stime are fields 14 and 15.
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Resets VmHWM (Linux: writing 5 to clear_refs), so the peak covers load + forwards only.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
