//! Small numeric kernels of the forward pass, written so the compiler vectorizes them.
//!
//! The crate is built for the baseline x86-64 target (SSE2, no FMA), so library calls such as
//! `f32::exp` or `f32::floor` stay scalar calls inside otherwise vectorizable loops. The
//! functions here use only arithmetic, comparisons and bit casts, which become SIMD code; the
//! loops that call them run inside [`widest_simd`], which compiles them for AVX-512 or AVX2 when
//! the CPU has it.

/// Runs `kernel` compiled for the widest vector unit this CPU has (AVX-512F, else AVX2 with FMA,
/// else the baseline): the loops of `kernel` become 16- or 8-wide. Pass an
/// `#[inline(always)]` closure: only code inlined into the wrappers below is compiled with their
/// target features (a closure left as its own function stays baseline SSE2).
/// The results are bit-identical on every path: the same IEEE operations in the same order,
/// only more lanes at once (Rust never fuses a multiply and an add into an FMA on its own).
#[inline(always)]
pub(crate) fn widest_simd<R>(kernel: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was just detected.
            return unsafe { with_avx512(kernel) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX2 and FMA were just detected.
            return unsafe { with_avx2(kernel) };
        }
    }
    kernel()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn with_avx512<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

/// `0.5·x·(1 + tanh(u))` with `u = √(2/π)(x + 0.044715x³)`, written as `x / (1 + e^(-2u))`
/// (the same function; one `exp` is several times cheaper than `tanh`).
#[inline]
pub(crate) fn gelu_new(x: f32) -> f32 {
    x / (1.0 + exp(-2.0 * gelu_new_u(x)))
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044715;

/// `u = √(2/π)(x + 0.044715x³)` of [`gelu_new`].
#[inline(always)]
fn gelu_new_u(x: f32) -> f32 {
    SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)
}

/// The derivative of [`gelu_new`], with `s = σ(2u)` (`1 + tanh u = 2s`, `1 − tanh²u =
/// 4s(1 − s)`): `s + 2x·s(1 − s)·√(2/π)(1 + 3·0.044715x²)`, `s(1 − s)` taken as `e·s²` for
/// `e = e^(−2u)` (from `1 − s` it cancels as `s → 1`). One `exp`, no `tanh`.
#[inline]
pub(crate) fn gelu_new_slope(x: f32) -> f32 {
    let e = exp(-2.0 * gelu_new_u(x));
    let s = 1.0 / (1.0 + e);
    let s_one_minus_s = if e.is_infinite() { 0.0 } else { e * s * s };
    s + 2.0 * x * s_one_minus_s * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x)
}

/// The exact GELU `x · Φ(x) = 0.5·x·(1 + erf(x/√2))` (torch's `gelu`, GPT-NeoX's MLP), with
/// libm's `erff` (within 1 ulp).
#[inline]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `x · sigmoid(x)` (Llama's SwiGLU gate).
#[inline]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `e^x` in f32 to within 2 ulp (tested against f64), without a library call: `x = n·ln2 + r`
/// with integer `n` and `|r| ≤ ln2/2`, `e^r` by a degree-7 polynomial (Taylor coefficients;
/// its truncation error at `|r| = 0.35` is below 1e-8), and `2^n` built in the exponent bits.
/// Returns `+inf` above ln(f32::MAX), 0 below the smallest normal's log, and NaN for NaN.
#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    const MAX_INPUT: f32 = 88.722_83; // ln(f32::MAX)
    const MIN_INPUT: f32 = -87.336_55; // ln(f32::MIN_POSITIVE)
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n · LN2_HIGH` is exact for |n| < 2^9 (its low mantissa bits are 0).
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer in round-to-nearest mode.
    const ROUNDING: f32 = 12_582_912.0;

    let clamped = x.clamp(MIN_INPUT, MAX_INPUT);
    let shifted = clamped * LOG2_E + ROUNDING;
    let n = shifted - ROUNDING;
    let r = (clamped - n * LN2_HIGH) - n * LN2_LOW;
    // e^r = Σ r^k / k!, k ≤ 7, in Horner form.
    let mut p = 1.0 / 5040.0;
    for coefficient in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + coefficient;
    }
    // 2^n as two factors, so that n = 128 (just below f32::MAX) does not overflow the exponent.
    // `shifted` is 1.5·2^23 + n exactly, so n sits in its low mantissa bits: an integer read
    // that vectorizes (a float-to-int cast with its NaN and overflow checks does not).
    let n = shifted.to_bits() as i32 - ROUNDING.to_bits() as i32;
    let (n1, n2) = (n >> 1, n - (n >> 1));
    let power = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    let value = p * power(n1) * power(n2);
    if x > MAX_INPUT {
        f32::INFINITY
    } else if x < MIN_INPUT {
        0.0
    } else {
        value
    }
}

/// Partial sums per SIMD lane: a single running sum is one long dependency chain that the
/// compiler may not reorder, eight interleaved ones it turns into vector adds.
const LANES: usize = 8;

/// `Σ a[i]·b[i]`, in [`LANES`] interleaved partial sums.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = (a_chunks.remainder().iter())
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            partial[lane] += a[lane] * b[lane];
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// `Σ f(a[i])`, in [`LANES`] interleaved partial sums.
#[inline]
pub(crate) fn sum_of(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut partial = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for chunk in chunks {
        for lane in 0..LANES {
            partial[lane] += f(chunk[lane]);
        }
    }
    partial.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite positive f32s.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_correctly_rounded_value() {
        let mut worst = (0, 0.0f32);
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.3 + (88.7 + 87.3) * i as f32 / steps as f32;
            let reference = (x as f64).exp() as f32;
            let error = ulps(exp(x), reference);
            if error > worst.0 {
                worst = (error, x);
            }
        }
        assert!(
            worst.0 <= 2,
            "exp is {} ulp off at x = {}",
            worst.0,
            worst.1
        );
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(1e4), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-1e4), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        // Just below ln(f32::MAX): finite, where a single 2^128 factor would overflow.
        let near_max = exp(88.72);
        assert!(near_max.is_finite() && ulps(near_max, (88.72f32 as f64).exp() as f32) <= 2);
    }

    #[test]
    fn gelu_new_via_exp_equals_the_tanh_form() {
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let u =
                (2.0f64 / std::f64::consts::PI).sqrt() * (x as f64 + 0.044715 * (x as f64).powi(3));
            let reference = 0.5 * x as f64 * (1.0 + u.tanh());
            let got = gelu_new(x) as f64;
            assert!(
                (got - reference).abs() <= 1e-6 * (1.0 + reference.abs()),
                "x = {x}: {got} vs {reference}"
            );
        }
        assert_eq!(gelu_new(-1e4), 0.0);
        assert_eq!(gelu_new(1e4), 1e4);
    }

    #[test]
    fn silu_matches_its_definition() {
        for i in -2000..=2000 {
            let x = i as f64 / 100.0;
            let reference = x / (1.0 + (-x).exp());
            let got = silu(x as f32) as f64;
            assert!(
                (got - reference).abs() <= 1e-6 * (1.0 + reference.abs()),
                "x = {x}"
            );
        }
    }

    #[test]
    fn sum_of_matches_a_plain_sum_for_every_length() {
        for len in 0..40 {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let reference: f64 = a.iter().map(|&x| (x as f64 - 0.25).powi(2)).sum();
            let got = sum_of(&a, |x| (x - 0.25) * (x - 0.25));
            assert!((got as f64 - reference).abs() <= 1e-5, "len {len}");
        }
    }

    #[test]
    fn dot_matches_a_plain_sum_for_every_length() {
        for len in 0..40 {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let reference: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - reference).abs() <= 1e-5, "len {len}");
        }
    }
}
