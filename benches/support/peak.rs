//! The machine's f32 multiply-add peak, shared by the benches (`#[path]`-included): the
//! widest FMA the CPU has, chosen at run time (512-bit with AVX-512F, else 256-bit AVX2+FMA).

use std::time::Instant;

/// f32 multiply-add throughput with `threads` threads busy at once, and the vector width (bits)
/// it was measured with: 12 independent FMA chains per thread (enough to hide the FMA latency
/// on two pipes), the widest vectors the CPU runs. No GEMM can exceed it.
pub fn fma_peak_gflops(threads: usize) -> (f64, usize) {
    const ITERATIONS: usize = 50_000_000;
    let width = widest_fma_bits();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| std::hint::black_box(fma_chains(ITERATIONS)));
        }
    });
    let lanes = (width / 32) as f64;
    let flops_per_iteration = 12.0 * lanes * 2.0;
    let gflops = threads as f64 * ITERATIONS as f64 * flops_per_iteration
        / started.elapsed().as_secs_f64()
        / 1e9;
    (gflops, width)
}

/// 512 with AVX-512F, 256 with AVX2-era FMA, 0 without either (no peak to measure).
pub fn widest_fma_bits() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return 512;
        }
        if is_x86_feature_detected!("avx") && is_x86_feature_detected!("fma") {
            return 256;
        }
    }
    0
}

fn fma_chains(iterations: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match widest_fma_bits() {
        // SAFETY: the features each function is compiled for were just detected.
        512 => return unsafe { fma_chains_avx512(iterations) },
        256 => return unsafe { fma_chains_avx(iterations) },
        _ => {}
    }
    let _ = iterations;
    f32::NAN
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_avx512(iterations: usize) -> f32 {
    use std::arch::x86_64::*;
    let (scale, shift) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut chains = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iterations {
        for chain in chains.iter_mut() {
            *chain = _mm512_fmadd_ps(*chain, scale, shift);
        }
    }
    let sum = chains
        .iter()
        .fold(_mm512_setzero_ps(), |a, &c| _mm512_add_ps(a, c));
    _mm512_reduce_add_ps(sum)
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
