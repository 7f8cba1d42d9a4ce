//! One backward function beside each forward block, on explicit inputs (as llm.c pairs
//! `layernorm_backward` with `layernorm_forward`).
//!
//! Only activation gradients: every `*_backward` returns the gradient with respect to the
//! block's *inputs* given the gradient of a scalar with respect to its outputs. Weights are
//! constants here. Every function is generic over `f32` (the whole-model pass) and `f64` (the
//! finite-difference tests). The forwards here restate the engine's math (`transformer.rs`)
//! for the tests and for what the activation cache does not keep; `tests.rs` checks them
//! against the engine's own outputs.
//!
//! Shapes: `N` rows, `W` a row's width, `D` model width, `H` query heads, `d` head size,
//! `T_q` query rows and `T_k` key rows of one (prompt, head).

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, NdFloat};

use crate::model::blocks::zip_in_place;
use crate::model::numerics::{gelu_new, gelu_new_slope};

fn constant<F: NdFloat>(x: f64) -> F {
    F::from(x).expect("a small constant fits every float type")
}

// ---- LayerNorm (GPT-2) -------------------------------------------------------------------

#[cfg(test)] // restated forward: the tests check it against the engine's
/// `y = (x − mean) / √(var + eps) · w + b` per row: (N, W) → (N, W).
pub(crate) fn layernorm_forward<F: NdFloat>(
    x: ArrayView2<F>,
    weight: ArrayView1<F>,
    bias: ArrayView1<F>,
    eps: F,
) -> Array2<F> {
    let mut y = Array2::zeros(x.raw_dim());
    for (x, mut y) in x.rows().into_iter().zip(y.rows_mut()) {
        let (mean, inv) = layernorm_statistics(x, eps);
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
            *y = (x - mean) * inv * w + b;
        }
    }
    y
}

/// Mean and `1/√(var + eps)` of one row (the biased variance, as the engine and torch use).
fn layernorm_statistics<F: NdFloat>(x: ArrayView1<F>, eps: F) -> (F, F) {
    let width = F::from(x.len()).expect("row width");
    let mean = x.sum() / width;
    let var = x.fold(F::zero(), |acc, &v| acc + (v - mean) * (v - mean)) / width;
    (mean, F::one() / (var + eps).sqrt())
}

#[cfg(test)] // the pass prepares the statistics once: [`NormBackwardAt`]
/// `dx = inv · (g − mean(g) − x̂ · mean(g · x̂))` per row, with `g = dy · w` and
/// `x̂ = (x − mean) · inv` the normalized input (the bias has no effect on `dx`).
pub(crate) fn layernorm_backward<F: NdFloat>(
    x: ArrayView2<F>,
    weight: ArrayView1<F>,
    eps: F,
    dy: ArrayView2<F>,
) -> Array2<F> {
    NormBackwardAt::layer(x, weight, eps).apply(dy)
}

/// A norm's backward at fixed input rows `x` `(N, W)`: the per-row statistics computed once,
/// then applied to any number of `dy` `(N, W)` (path edges take 3·H gradients a layer back
/// through the same attention norm at the same input). The arithmetic of every row is the
/// single-use [`layernorm_backward`]'s and [`rmsnorm_backward`]'s, which are this applied once.
pub(crate) struct NormBackwardAt<'w, F> {
    weight: ArrayView1<'w, F>,
    /// LayerNorm: the normalized rows `x̂ = (x − mean) · inv`; RMSNorm: `x` itself. (N, W)
    rows: Array2<F>,
    /// `1/σ` (LayerNorm) or `1/rms` (RMSNorm) per row. (N,)
    inv: Vec<F>,
    centred: bool,
}

impl<'w, F: NdFloat> NormBackwardAt<'w, F> {
    /// LayerNorm with gain `weight` at `x`.
    pub(crate) fn layer(x: ArrayView2<F>, weight: ArrayView1<'w, F>, eps: F) -> Self {
        let mut rows = Array2::zeros(x.raw_dim());
        let mut inv = Vec::with_capacity(x.nrows());
        for (x, mut x_hat) in x.rows().into_iter().zip(rows.rows_mut()) {
            let (mean, i) = layernorm_statistics(x, eps);
            x_hat.zip_mut_with(&x, |h, &v| *h = (v - mean) * i);
            inv.push(i);
        }
        NormBackwardAt {
            weight,
            rows,
            inv,
            centred: true,
        }
    }

    /// RMSNorm with gain `weight` at `x`.
    pub(crate) fn rms(x: ArrayView2<F>, weight: ArrayView1<'w, F>, eps: F) -> Self {
        NormBackwardAt {
            weight,
            rows: x.to_owned(),
            inv: x.rows().into_iter().map(|x| rms_inverse(x, eps)).collect(),
            centred: false,
        }
    }

    /// `dx` for `dy` `(N, W)`.
    pub(crate) fn apply(&self, dy: ArrayView2<F>) -> Array2<F> {
        let mut dx = Array2::zeros(dy.raw_dim());
        self.apply_into(dy, &mut dx.view_mut());
        dx
    }

    /// `dx` for `dy` `(N, W)`, written into the `N` rows (last axis) of `dx` in row-major
    /// order, e.g. one head's `(B, T, W)` slice of a `(B, T, H, W)` array.
    pub(crate) fn apply_into<D: ndarray::Dimension>(
        &self,
        dy: ArrayView2<F>,
        dx: &mut ndarray::ArrayViewMut<F, D>,
    ) {
        let mut dy_rows = dy.rows().into_iter();
        self.apply_rows(dx, |g, weight, _| {
            let dy = dy_rows.next().expect("dy has a row per input row");
            let dy = dy.as_standard_layout(); // borrowed: the pass's rows are contiguous
            let dy = dy.as_slice().expect("standard layout");
            (g.iter_mut().zip(dy).zip(weight)).for_each(|((g, &dy), &w)| *g = dy * w);
        });
    }

    /// `dx` for `dy` `(N, W)` held in the rows of `dx` itself (the same arithmetic, so the
    /// same bits, as [`NormBackwardAt::apply_into`]).
    pub(crate) fn apply_in_place<D: ndarray::Dimension>(
        &self,
        dx: &mut ndarray::ArrayViewMut<F, D>,
    ) {
        self.apply_rows(dx, |g, weight, dy| {
            let dy = dy.as_standard_layout(); // borrowed: the pass's rows are contiguous
            let dy = dy.as_slice().expect("standard layout");
            (g.iter_mut().zip(dy).zip(weight)).for_each(|((g, &dy), &w)| *g = dy * w);
        });
    }

    /// The rows of `dx` from `g = dy · w`, row by row: `fill_g(g, w, dx_row)` writes the
    /// row's `g` (reading `dx_row` as it was, if it holds `dy`) before `dx_row` is written.
    fn apply_rows<D: ndarray::Dimension>(
        &self,
        dx: &mut ndarray::ArrayViewMut<F, D>,
        mut fill_g: impl FnMut(&mut [F], &[F], ndarray::ArrayView1<F>),
    ) {
        let width = F::from(self.rows.ncols()).expect("row width");
        let mut g = Array1::zeros(self.rows.ncols()); // (W,), reused row after row
        let weight = self.weight.as_standard_layout(); // (W,) contiguous
        let weight = weight.as_slice().expect("standard layout");
        let mut dx_rows = dx.rows_mut().into_iter();
        for (row, &inv) in self.rows.rows().into_iter().zip(&self.inv) {
            let mut dx = dx_rows.next().expect("dx has a row per input row");
            // Over contiguous slices where the rows are (always, in the pass): the same
            // arithmetic element by element as ndarray's iterators, which do not vectorize
            // (path edges apply this 3·H times a layer; measured 3× faster at GPT-2 small).
            let g = g.as_slice_mut().expect("a fresh array");
            fill_g(g, weight, dx.view());
            let (g, g_view) = (&*g, ArrayView1::from(&*g));
            let row = row.as_slice().expect("rows of a fresh array");
            if self.centred {
                // LayerNorm: `row` is x̂.
                let g_mean = g_view.sum() / width;
                let g_dot_x_hat = g_view.dot(&ArrayView1::from(row)) / width;
                write_row(&mut dx, g, row, |g, x_hat| {
                    inv * (g - g_mean - x_hat * g_dot_x_hat)
                });
            } else {
                // RMSNorm: `row` is x.
                let g_dot_x = g_view.dot(&ArrayView1::from(row)) / width;
                write_row(&mut dx, g, row, |g, x| {
                    inv * g - x * inv * inv * inv * g_dot_x
                });
            }
        }
        assert!(dx_rows.next().is_none(), "dx has a row per input row");
    }
}

/// `dx[i] = f(g[i], row[i])`, over a slice when `dx` is contiguous (so that it vectorizes).
fn write_row<F: NdFloat, D: ndarray::Dimension>(
    dx: &mut ndarray::ArrayViewMut<F, D>,
    g: &[F],
    row: &[F],
    f: impl Fn(F, F) -> F,
) {
    match dx.as_slice_mut() {
        Some(dx) => (dx.iter_mut().zip(g).zip(row)).for_each(|((dx, &g), &x)| *dx = f(g, x)),
        None => (dx.iter_mut().zip(g).zip(row)).for_each(|((dx, &g), &x)| *dx = f(g, x)),
    }
}

/// LayerNorm's backward with `1/σ` held at its value at `x` (its centring, being linear, is
/// kept): `dx = inv · (g − mean(g))`, `g = dy · w`. Direct-logit attribution reads the final
/// norm this way.
pub(crate) fn layernorm_frozen_scale_backward<F: NdFloat>(
    x: ArrayView2<F>,
    weight: ArrayView1<F>,
    eps: F,
    dy: ArrayView2<F>,
) -> Array2<F> {
    let width = F::from(x.ncols()).expect("row width");
    let mut dx = Array2::zeros(x.raw_dim());
    for ((x, dy), mut dx) in x.rows().into_iter().zip(dy.rows()).zip(dx.rows_mut()) {
        let (_, inv) = layernorm_statistics(x, eps);
        let g = &dy * &weight; // (W,)
        let g_mean = g.sum() / width;
        for (dx, &g) in dx.iter_mut().zip(&g) {
            *dx = inv * (g - g_mean);
        }
    }
    dx
}

// ---- RMSNorm (Llama) ---------------------------------------------------------------------

#[cfg(test)] // restated forward: the tests check it against the engine's
/// `y = w · x / √(mean(x²) + eps)` per row: (N, W) → (N, W).
pub(crate) fn rmsnorm_forward<F: NdFloat>(
    x: ArrayView2<F>,
    weight: ArrayView1<F>,
    eps: F,
) -> Array2<F> {
    let mut y = Array2::zeros(x.raw_dim());
    for (x, mut y) in x.rows().into_iter().zip(y.rows_mut()) {
        let inv = rms_inverse(x, eps);
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
            *y = w * (x * inv);
        }
    }
    y
}

/// `1/√(mean(x²) + eps)` of one row.
fn rms_inverse<F: NdFloat>(x: ArrayView1<F>, eps: F) -> F {
    let width = F::from(x.len()).expect("row width");
    F::one() / (x.dot(&x) / width + eps).sqrt()
}

#[cfg(test)] // the pass prepares the statistics once: [`NormBackwardAt`]
/// `dx = inv · g − x · inv³ · mean(g · x)` per row, with `g = dy · w`.
pub(crate) fn rmsnorm_backward<F: NdFloat>(
    x: ArrayView2<F>,
    weight: ArrayView1<F>,
    eps: F,
    dy: ArrayView2<F>,
) -> Array2<F> {
    NormBackwardAt::rms(x, weight, eps).apply(dy)
}

/// RMSNorm's backward with `1/rms` held at its value at `x`: `dx = inv · dy · w`.
pub(crate) fn rmsnorm_frozen_scale_backward<F: NdFloat>(
    x: ArrayView2<F>,
    weight: ArrayView1<F>,
    eps: F,
    dy: ArrayView2<F>,
) -> Array2<F> {
    let mut dx = Array2::zeros(x.raw_dim());
    for ((x, dy), mut dx) in x.rows().into_iter().zip(dy.rows()).zip(dx.rows_mut()) {
        let inv = rms_inverse(x, eps);
        for ((dx, &dy), &w) in dx.iter_mut().zip(dy).zip(weight) {
            *dx = inv * dy * w;
        }
    }
    dx
}

// ---- Linear ------------------------------------------------------------------------------

#[cfg(test)] // the f32 pass computes it with the engine's kernels (mod.rs)
/// `y = x·W + b`, `W` stored `(in, out)`: (N, in) → (N, out).
pub(crate) fn linear_forward<F: NdFloat>(
    x: ArrayView2<F>,
    weight: ArrayView2<F>,
    bias: Option<ArrayView1<F>>,
) -> Array2<F> {
    let y = x.dot(&weight);
    match bias {
        Some(bias) => y + bias,
        None => y,
    }
}

#[cfg(test)] // the f32 pass computes it with the engine's kernels (mod.rs)
/// The input gradient only: `dx = dy·Wᵀ`, (N, out) → (N, in).
pub(crate) fn linear_backward<F: NdFloat>(weight: ArrayView2<F>, dy: ArrayView2<F>) -> Array2<F> {
    dy.dot(&weight.t())
}

// ---- gelu_new (GPT-2's MLP) --------------------------------------------------------------

// The generic (f64-tested) forms below; the pass runs the f32 ones (`numerics`).
#[cfg(test)]
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
#[cfg(test)]
const GELU_CUBIC: f64 = 0.044715;

#[cfg(test)] // restated forward: the tests check it against the engine's
/// `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`, elementwise.
pub(crate) fn gelu_new_forward<F: NdFloat>(x: ArrayView2<F>) -> Array2<F> {
    let (c, a, half): (F, F, F) = (
        constant(SQRT_2_OVER_PI),
        constant(GELU_CUBIC),
        constant(0.5),
    );
    x.mapv(|x: F| half * x * (F::one() + (c * (x + a * x * x * x)).tanh()))
}

#[cfg(test)] // the pass runs [`gelu_new_backward_f32`]; the tests hold it to this
/// `dx = dy · (0.5(1 + tanh u) + 0.5x(1 − tanh²u) · √(2/π)(1 + 3·0.044715x²))`.
pub(crate) fn gelu_new_backward<F: NdFloat>(x: ArrayView2<F>, dy: ArrayView2<F>) -> Array2<F> {
    let (c, a, half, three): (F, F, F, F) = (
        constant(SQRT_2_OVER_PI),
        constant(GELU_CUBIC),
        constant(0.5),
        constant(3.0),
    );
    let mut dx = dy.to_owned();
    dx.zip_mut_with(&x, |d, &x: &F| {
        let t = (c * (x + a * x * x * x)).tanh();
        let slope = half * (F::one() + t)
            + half * x * (F::one() - t * t) * c * (F::one() + three * a * x * x);
        *d *= slope;
    });
    dx
}

/// [`gelu_new_backward`] for the engine's f32: `dy` times [`gelu_new_slope`] (one vectorized
/// `exp` an element) in parallel chunks of plain slices. libm's scalar `tanhf` (with its
/// `expm1f`) was ~6% of a path-edge run (perf, `benches/eap.rs`); the tests hold this to the
/// generic form in f64.
pub(crate) fn gelu_new_backward_f32(x: ArrayView2<f32>, dy: ArrayView2<f32>) -> Array2<f32> {
    let mut dx = dy.as_standard_layout().into_owned();
    zip_in_place(&mut dx, x, |d, x| d * gelu_new_slope(x));
    dx
}

// ---- exact GELU (GPT-NeoX's MLP) -----------------------------------------------------------

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

#[cfg(test)] // restated forward: the tests check it against the engine's
/// `x·Φ(x) = 0.5·x·(1 + erf(x/√2))`, elementwise.
pub(crate) fn gelu_erf_forward<F: NdFloat>(x: ArrayView2<F>) -> Array2<F> {
    x.mapv(|x: F| {
        let x64 = x.to_f64().expect("a float");
        constant(0.5 * x64 * (1.0 + libm::erf(x64 * std::f64::consts::FRAC_1_SQRT_2)))
    })
}

/// `dx = dy · (Φ(x) + x·φ(x))`, `φ(x) = e^(−x²/2)/√(2π)` the standard normal density.
pub(crate) fn gelu_erf_backward<F: NdFloat>(x: ArrayView2<F>, dy: ArrayView2<F>) -> Array2<F> {
    let mut dx = dy.to_owned();
    dx.zip_mut_with(&x, |d, &x: &F| {
        let x = x.to_f64().expect("a float");
        let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
        let density = FRAC_1_SQRT_2PI * (-0.5 * x * x).exp();
        *d *= constant::<F>(cdf + x * density);
    });
    dx
}

// ---- GeGLU (Gemma 2's MLP) ---------------------------------------------------------------

/// `(dgate, dup)` for `h = gelu_tanh(gate)·up`: `dgate = gelu_tanh'(gate)·dh·up` (the
/// derivative of [`gelu_new_backward`]), `dup = dh·gelu_tanh(gate)`.
#[cfg(test)] // the pass runs [`geglu_backward_f32`]; the tests hold it to this
pub(crate) fn geglu_backward<F: NdFloat>(
    gate: ArrayView2<F>,
    up: ArrayView2<F>,
    dh: ArrayView2<F>,
) -> (Array2<F>, Array2<F>) {
    let (c, a, half): (F, F, F) = (
        constant(SQRT_2_OVER_PI),
        constant(GELU_CUBIC),
        constant(0.5),
    );
    let d_gate = gelu_new_backward(gate, (&dh * &up).view());
    let mut d_up = dh.to_owned();
    d_up.zip_mut_with(&gate, |d, &x| {
        *d *= half * x * (F::one() + (c * (x + a * x * x * x)).tanh());
    });
    (d_gate, d_up)
}

/// [`geglu_backward`] for the engine's f32, as [`gelu_new_backward_f32`] is for GPT-2's MLP:
/// `dgate = (dh·up)·gelu_new_slope(gate)`, `dup = dh·gelu_new(gate)` (the forward's own
/// `gelu_new`), one vectorized `exp` an element instead of libm's `tanhf`; the tests hold it to
/// the generic form in f64.
pub(crate) fn geglu_backward_f32(
    gate: ArrayView2<f32>,
    up: ArrayView2<f32>,
    dh: ArrayView2<f32>,
) -> (Array2<f32>, Array2<f32>) {
    let mut d_gate = &dh * &up; // (N, M), standard layout
    zip_in_place(&mut d_gate, gate, |d, x| d * gelu_new_slope(x));
    let mut d_up = dh.as_standard_layout().into_owned();
    zip_in_place(&mut d_up, gate, |d, x| d * gelu_new(x));
    (d_gate, d_up)
}

// ---- Soft cap (Gemma 2's final logits) -----------------------------------------------------

/// `dx = dy · (1 − (y/c)²)` for `y = c·tanh(x/c)`, given the capped `y`.
pub(crate) fn soft_cap_backward<F: NdFloat>(
    capped: ArrayView2<F>,
    cap: F,
    dy: ArrayView2<F>,
) -> Array2<F> {
    let mut dx = dy.to_owned();
    dx.zip_mut_with(&capped, |d, &y| {
        let t = y / cap;
        *d *= F::one() - t * t;
    });
    dx
}

// ---- SwiGLU (Llama's MLP) ----------------------------------------------------------------

fn sigmoid<F: NdFloat>(x: F) -> F {
    F::one() / (F::one() + (-x).exp())
}

#[cfg(test)] // restated forward: the tests check it against the engine's
/// `silu(gate) · up`, elementwise, with `silu(x) = x·sigmoid(x)`.
pub(crate) fn swiglu_forward<F: NdFloat>(gate: ArrayView2<F>, up: ArrayView2<F>) -> Array2<F> {
    let mut h = gate.mapv(|g| g * sigmoid(g));
    h *= &up;
    h
}

/// `(dgate, dup)` for `h = silu(gate)·up`: `dgate = dh·up·silu'(gate)` with
/// `silu'(x) = σ(x)(1 + x(1 − σ(x)))`, and `dup = dh·silu(gate)`.
pub(crate) fn swiglu_backward<F: NdFloat>(
    gate: ArrayView2<F>,
    up: ArrayView2<F>,
    dh: ArrayView2<F>,
) -> (Array2<F>, Array2<F>) {
    let mut d_gate = dh.to_owned();
    let mut d_up = dh.to_owned();
    ndarray::Zip::from(&mut d_gate)
        .and(&mut d_up)
        .and(gate)
        .and(up)
        .for_each(|dg, du, &g, &u| {
            let s = sigmoid(g);
            *dg = *dg * u * s * (F::one() + g * (F::one() - s));
            *du = *du * g * s;
        });
    (d_gate, d_up)
}

// ---- Per-head norms (Qwen3's q_norm and k_norm) ------------------------------------------

/// `x` `(N, heads·d)` as `(N·heads, d)`: one row per (row, head), the rows a norm of width `d`
/// applied to each head on its own reads.
fn rows_of_each_head<F: NdFloat>(x: ArrayView2<F>, d_head: usize) -> Array2<F> {
    let (rows, width) = x.dim();
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order((rows * width / d_head, d_head))
        .expect("standard layout")
}

#[cfg(test)] // restated forward: the tests check it against the engine's
/// RMSNorm of width `d` over each `d`-wide head of `x`: (N, heads·d) → (N, heads·d).
pub(crate) fn per_head_rmsnorm_forward<F: NdFloat>(
    x: ArrayView2<F>,
    weight: ArrayView1<F>,
    eps: F,
    d_head: usize,
) -> Array2<F> {
    rmsnorm_forward(rows_of_each_head(x, d_head).view(), weight, eps)
        .into_shape_with_order(x.raw_dim())
        .expect("standard layout")
}

/// The backward of a norm applied to each `d`-wide head of `x` `(N, heads·d)` on its own (Qwen3
/// norms every head of q and of k with one gain of width `d`): the heads are independent rows
/// of that norm, so `x` and `dy` are read as `(N·heads, d)` rows by the norm's own backward
/// `norm_backward(x, dy)` (e.g. [`rmsnorm_backward`] with its gain), and the result returned as
/// `(N, heads·d)`.
pub(crate) fn per_head_norm_backward<F: NdFloat>(
    x: ArrayView2<F>,
    dy: ArrayView2<F>,
    d_head: usize,
    norm_backward: impl FnOnce(ArrayView2<F>, ArrayView2<F>) -> Array2<F>,
) -> Array2<F> {
    let (x_rows, dy_rows) = (rows_of_each_head(x, d_head), rows_of_each_head(dy, d_head)); // (N·heads, d) each
    norm_backward(x_rows.view(), dy_rows.view())
        .into_shape_with_order(x.raw_dim())
        .expect("standard layout") // (N, heads·d)
}

// ---- Rotary positions (Llama) ------------------------------------------------------------

/// HF's rotate-half rotation of every head of `x` `(N, H·d)` in place, on its first `r`
/// dimensions (`r/2` the tables' width: `r = d`, or less under partial rotary; the rest pass
/// unchanged): dimension `i < r/2` pairs with `i + r/2` and both turn by the angle whose cosine
/// and sine are `cos[[position(row), i]]`, `sin[[position(row), i]]` (tables `(T, r/2)`). `inverse` turns
/// by the opposite angle, which is the rotation's backward (a rotation's transpose is its
/// inverse).
pub(crate) fn rotate_half<F: NdFloat>(
    x: &mut Array2<F>,
    cos: ArrayView2<F>,
    sin: ArrayView2<F>,
    position: impl Fn(usize) -> usize,
    d_head: usize,
    inverse: bool,
) {
    let half = cos.ncols(); // r/2
    for (row, mut values) in x.rows_mut().into_iter().enumerate() {
        let p = position(row);
        let (cos, sin) = (cos.row(p), sin.row(p));
        for mut head in values.exact_chunks_mut(d_head) {
            for i in 0..half {
                let (x1, x2) = (head[i], head[i + half]);
                let (c, s) = (cos[i], if inverse { -sin[i] } else { sin[i] });
                head[i] = x1 * c - x2 * s;
                head[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

/// `rotate_half`'s backward: the gradient turned back by the same angles.
pub(crate) fn rotate_half_backward<F: NdFloat>(
    dy: &mut Array2<F>,
    cos: ArrayView2<F>,
    sin: ArrayView2<F>,
    position: impl Fn(usize) -> usize,
    d_head: usize,
) {
    rotate_half(dy, cos, sin, position, d_head, true);
}

// ---- Attention of one (prompt, head) -----------------------------------------------------

#[cfg(test)] // restated forward: the tests check it against the engine's
/// What one head's attention computes for one prompt.
pub(crate) struct AttentionForward<F> {
    /// `(T_q, T_k)` softmax of the scaled, causally masked scores.
    pub pattern: Array2<F>,
    /// `(T_q, d)`: `z[i] = Σ_k pattern[i, k] · v[k]`.
    pub z: Array2<F>,
}

#[cfg(test)] // restated forward: the tests check it against the engine's
/// `scores[i, k] = scale · q[i]·k[k]` for the keys query row `i` (at token position `i`) sees
/// under `window` ([`visible_keys`]: `k ≤ i`, and within a sliding window), soft-capped to
/// `c·tanh(s/c)` with `softcap = Some(c)`, `-inf` elsewhere; `pattern =
/// softmax(scores)`, `z = pattern · v`. `q` `(T, d)`, `k`, `v` `(T, d)`.
pub(crate) fn attention_forward<F: NdFloat>(
    q: ArrayView2<F>,
    k: ArrayView2<F>,
    v: ArrayView2<F>,
    scale: F,
    softcap: Option<F>,
    window: Option<usize>,
) -> AttentionForward<F> {
    let mut pattern = q.dot(&k.t()) * scale; // (T_q, T_k)
    if let Some(cap) = softcap {
        pattern.mapv_inplace(|s| (s / cap).tanh() * cap);
    }
    for (i, mut row) in pattern.rows_mut().into_iter().enumerate() {
        let visible = crate::model::visible_keys(window, i);
        row.slice_mut(s![..*visible.start()])
            .fill(F::neg_infinity());
        row.slice_mut(s![i + 1..]).fill(F::neg_infinity());
        let max = row.fold(F::neg_infinity(), |m, &x| m.max(x));
        row.mapv_inplace(|x| (x - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|x| x / sum);
    }
    let z = pattern.dot(&v); // (T_q, d)
    AttentionForward { pattern, z }
}

/// Gradients of one head's attention for one prompt.
pub(crate) struct AttentionGradients<F> {
    /// `(T_q, d)`, with respect to the (rotated) queries.
    pub q: Array2<F>,
    /// `(T_k, d)`, with respect to the (rotated) keys.
    pub k: Array2<F>,
    /// `(T_k, d)`
    pub v: Array2<F>,
    /// `(T_q, T_k)`, with respect to the pattern `A` (so `∂M/∂(A[i,k]·v[k]) = ∂M/∂z[i]`).
    pub pattern: Array2<F>,
}

/// Backward of [`attention_forward`] given its `pattern` and `dz` `(T_q, d)`:
/// `dA = dz·vᵀ`, `dv = Aᵀ·dz`, through the softmax `dS[i,k] = A[i,k](dA[i,k] − Σ_j A[i,j]dA[i,j])`
/// (masked entries have `A = 0`, so no gradient), and `dq = scale·dS·k`, `dk = scale·dSᵀ·q`.
///
/// `computed` `(T_q, T_k)`, when given, marks the terms `A[i,k]·v[k]` of `z[i]` the forward
/// computed; the others were constants (edge-mean ablation of a QK edge put a reference value
/// in their place), so they pass nothing back: `dA[i,k] = 0` and no share of `dv[k]`.
///
/// `softcap`, when given, is the forward's scores `(T_q, T_k)` after Gemma 2's soft cap
/// `S = c·tanh(s/c)` and the cap `c`: the scores' gradient passes through the cap as
/// `ds = dS · (1 − (S/c)²)` (entries at `−∞`, masked or knocked out, have `A = 0` and pass
/// nothing).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward<F: NdFloat>(
    q: ArrayView2<F>,
    k: ArrayView2<F>,
    v: ArrayView2<F>,
    pattern: ArrayView2<F>,
    dz: ArrayView2<F>,
    scale: F,
    softcap: Option<(ArrayView2<F>, F)>,
    computed: Option<ArrayView2<bool>>,
) -> AttentionGradients<F> {
    let mut d_pattern = dz.dot(&v.t()); // (T_q, T_k)
    let dv = match computed {
        None => pattern.t().dot(&dz), // (T_k, d)
        Some(computed) => {
            d_pattern.zip_mut_with(&computed, |d, &c| {
                if !c {
                    *d = F::zero()
                }
            });
            let mut used = pattern.to_owned(); // (T_q, T_k)
            used.zip_mut_with(&computed, |a, &c| {
                if !c {
                    *a = F::zero()
                }
            });
            used.t().dot(&dz) // (T_k, d)
        }
    };
    let mut d_scores = &d_pattern * &pattern; // (T_q, T_k)
    for (mut row, a) in d_scores.rows_mut().into_iter().zip(pattern.rows()) {
        let weighted = row.sum(); // Σ_j A[i,j]·dA[i,j]
        row.zip_mut_with(&a, |ds, &a| *ds -= a * weighted);
    }
    if let Some((capped, cap)) = softcap {
        d_scores.zip_mut_with(&capped, |ds, &s| {
            *ds = if s.is_finite() {
                let t = s / cap; // tanh(raw / c)
                *ds * (F::one() - t * t)
            } else {
                F::zero()
            };
        });
    }
    d_scores *= scale;
    AttentionGradients {
        q: d_scores.dot(&k),     // (T_q, d)
        k: d_scores.t().dot(&q), // (T_k, d)
        v: dv,
        pattern: d_pattern,
    }
}

// ---- Grouped-query attention -------------------------------------------------------------

/// `(N, H·d)` gradients per query head → `(N, Hkv·d)` per key/value head: the heads of a
/// group read the same key/value head, so their gradients add (the backward of the engine's
/// `expand_kv`).
pub(crate) fn sum_query_heads_per_kv_head<F: NdFloat>(
    per_query_head: ArrayView2<F>,
    group: usize,
    d_head: usize,
) -> Array2<F> {
    let (rows, width) = per_query_head.dim();
    let n_kv = width / d_head / group;
    let mut out = Array2::zeros((rows, n_kv * d_head));
    for head in 0..n_kv * group {
        let kv = head / group;
        let mut target = out.slice_mut(s![.., kv * d_head..(kv + 1) * d_head]);
        target += &per_query_head.slice(s![.., head * d_head..(head + 1) * d_head]);
    }
    out
}

// ---- Unembedding -------------------------------------------------------------------------

#[cfg(test)] // restated forward: the tests check it against the engine's
/// `logits = x·Uᵀ` with `U` `(V, D)`: (N, D) → (N, V).
pub(crate) fn unembed_forward<F: NdFloat>(x: ArrayView2<F>, unembed: ArrayView2<F>) -> Array2<F> {
    x.dot(&unembed.t())
}

#[cfg(test)] // the f32 pass computes it with the engine's kernels (mod.rs)
/// `dx = dlogits·U`: (N, V) → (N, D).
pub(crate) fn unembed_backward<F: NdFloat>(
    unembed: ArrayView2<F>,
    d_logits: ArrayView2<F>,
) -> Array2<F> {
    d_logits.dot(&unembed)
}

// ---- The metric at END -------------------------------------------------------------------

/// `softmax` of one logits row in f64.
fn softmax(logits: ArrayView1<f64>) -> Array1<f64> {
    let max = logits.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    let exp = logits.mapv(|x| (x - max).exp());
    let sum = exp.sum();
    exp / sum
}

/// A differentiable metric of one prompt's END logits (the scalar a backward starts from).
/// Its value is the measure stage's to compute (`crate::measure::per_prompt_metrics`); only
/// its derivative lives here.
#[derive(Clone, Copy, Debug)]
pub(crate) enum EndMetric<'a> {
    /// `logits[answer] − logits[distractor]`.
    LogitDiff,
    /// `softmax(logits)[answer]`.
    Prob,
    /// `log softmax(logits)[answer]`.
    Logprob,
    /// `KL(p_full ‖ softmax(logits))` for the full model's END logits of this prompt.
    Kl { full_logits: ArrayView1<'a, f64> },
}

/// The metric's gradient with respect to the logits `(V,)`, `p = softmax(logits)`:
/// `logit_diff`: `e_answer − e_distractor`; `logprob`: `e_answer − p`;
/// `prob`: `p_answer · (e_answer − p)`; `kl`: `p − p_full` (from
/// `Σ_v p_full(v)(log p_full(v) − log p(v))`, whose first term is constant).
pub(crate) fn metric_backward(
    metric: EndMetric,
    logits: ArrayView1<f64>,
    answer: usize,
    distractor: usize,
) -> Array1<f64> {
    let unit = |i: usize| Array1::from_shape_fn(logits.len(), |j| if j == i { 1.0 } else { 0.0 });
    match metric {
        EndMetric::LogitDiff => unit(answer) - unit(distractor),
        EndMetric::Logprob => unit(answer) - softmax(logits),
        EndMetric::Prob => {
            let p = softmax(logits);
            let p_answer = p[answer];
            (unit(answer) - p) * p_answer
        }
        EndMetric::Kl { full_logits } => softmax(logits) - softmax(full_logits),
    }
}
