//! Every matrix product shape of the GPT-2-small forward of `benches/forward.rs` (32 prompts ×
//! 16 tokens: 512 rows, or 32 END rows), timed with each kernel of `circuit::model::linalg` at
//! 1 and 2 threads, against the machine's FMA peak at the widest vector width it has.
//!
//!     cargo bench --bench gemm                 # both thread counts
//!     cargo bench --bench gemm -- --threads 2  # one
//!
//! Each thread count runs in a child process (matrixmultiply sizes its thread pool once per
//! process from MATMUL_NUM_THREADS; rayon, which the `gemm` crate uses, from RAYON_NUM_THREADS).

use std::process::Command;
use std::time::Instant;

use circuit::model::linalg::{self, Kernel};
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};

#[path = "support/peak.rs"]
mod peak;

const D: usize = 768;
const VOCAB: usize = 50257;
const ROWS: [usize; 2] = [512, 32];
const REPETITIONS: usize = 7;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--child") {
        child();
        return;
    }
    let threads: Vec<usize> = match args.iter().position(|a| a == "--threads") {
        Some(i) => vec![args[i + 1].parse().expect("--threads N")],
        None => vec![1, 2],
    };
    for n in threads {
        let status = Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .env("RAYON_NUM_THREADS", n.to_string())
            .env("MATMUL_NUM_THREADS", n.to_string())
            .status()
            .expect("run child");
        assert!(status.success());
    }
}

fn child() {
    let threads: usize = std::env::var("RAYON_NUM_THREADS").unwrap().parse().unwrap();
    let (peak, width) = peak::fma_peak_gflops(threads);
    println!("threads {threads}: machine FMA peak {peak:.1} GFLOP/s ({width}-bit f32 FMA)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut random = |rows: usize, cols: usize| {
        Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0))
    };
    // The (in, out) weights of the forward, as GPT-2 stores them: q/k/v/o, q|k|v fused, MLP.
    let weights = [(D, D), (D, 3 * D), (D, 4 * D), (4 * D, D)].map(|(k, n)| random(k, n));
    let embed = random(VOCAB, D); // (V, D): the tied unembedding reads it transposed
    let embed_t = embed.t().as_standard_layout().into_owned(); // (D, V): a transposed copy
    for rows in ROWS {
        let x_d = random(rows, D);
        let x_m = random(rows, 4 * D);
        for w in &weights {
            let x = if w.nrows() == D { &x_d } else { &x_m };
            let label = format!("{rows}×{}·{}×{}", w.nrows(), w.nrows(), w.ncols());
            compare(threads, peak, &label, x.view(), w.view());
        }
        let label = format!("{rows}×{D}·({VOCAB}×{D})ᵀ as stored");
        compare(threads, peak, &label, x_d.view(), embed.t());
        let label = format!("{rows}×{D}·{D}×{VOCAB} transposed copy");
        compare(threads, peak, &label, x_d.view(), embed_t.view());
    }
}

/// Times every kernel on `x·w`, checks they agree, prints GFLOP/s and % of peak.
fn compare(threads: usize, peak: f64, label: &str, x: ArrayView2<f32>, w: ArrayView2<f32>) {
    let flops = 2.0 * (x.nrows() * x.ncols() * w.ncols()) as f64;
    let reference = linalg::product(Kernel::MatrixMultiply, x, w);
    let mut line = format!("threads {threads}: {label:<36}");
    for kernel in Kernel::ALL {
        let mut y = Array2::zeros(reference.dim());
        kernel.product_into(x, w, 0.0, &mut y.view_mut()); // warm-up
        let mut times: Vec<f64> = (0..REPETITIONS)
            .map(|_| {
                let t = Instant::now();
                kernel.product_into(x, w, 0.0, &mut y.view_mut());
                std::hint::black_box(&y);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let gflops = flops / times[REPETITIONS / 2] / 1e9;
        let worst = max_relative_difference(&reference, &y);
        assert!(
            worst < 1e-4,
            "{} differs from matrixmultiply by {worst}",
            kernel.name()
        );
        line += &format!(
            "  {} {gflops:6.1} ({:3.0}%)",
            short_name(kernel),
            100.0 * gflops / peak
        );
    }
    println!("{line}");
}

fn short_name(kernel: Kernel) -> &'static str {
    match kernel {
        Kernel::MatrixMultiply => "mm",
        Kernel::MatrixMultiplyTransposed => "mmᵀ",
        Kernel::Gemm => "gemm",
    }
}

/// max |a − b| / max |a|.
fn max_relative_difference(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}
