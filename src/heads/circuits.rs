//! The weight-based half of `circuit heads` (feature `linalg`): each head's OV circuit
//! copying score from its eigenvalues and its QK circuit's singular values (Elhage et al. 2021,
//! "A Mathematical Framework for Transformer Circuits"), through LAPACK on the system OpenBLAS.
//! Definitions and the norm handling: docs/semantics.md, "Head characterization".
//!
//! Both are computed in f64 from the f32 weights, as products of the low-rank factors: the
//! `(V, V)` matrices are never formed.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use ndarray_linalg::{EigVals, QR, SVD};

use super::HeadsError;
use crate::model::head_weights::{
    attention_norm_scale, final_norm_scale, head_matrices, token_embedding, unembedding,
};
use crate::model::Model;

/// One head's OV circuit restricted to `n` tokens: the eigenvalues that define its scores.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OvCircuit {
    /// The `min(n, d)` eigenvalues of the smaller factor product (see [`ov_circuit`]), as
    /// `[re, im]`, largest modulus first.
    pub eigenvalues: Vec<[f64; 2]>,
    /// Elhage et al.'s copying score `Σ Re λ / Σ |λ|` in [−1, 1] (`Σ λ` is real: the matrix is
    /// real, its complex eigenvalues come in conjugate pairs). `None` if every λ is 0.
    pub copying: Option<f64>,
    /// The share of the eigenvalues with a positive real part, in [0, 1].
    pub positive_share: f64,
}

/// The OV circuit of head `head` of `layer` on `tokens` (distinct ids), in the row-vector
/// convention: `M = E_S · diag(γ_l) · W_V · W_O · diag(γ_f) · U_S`, `(n, n)`, where `E_S` holds
/// the tokens' embedding rows `(n, D)`, `U_S` their unembedding columns `(D, n)`, `γ_l` the
/// scale of the norm the head reads and `γ_f` the final norm's (Elhage's `W_U W_O W_V W_E`,
/// transposed: the same eigenvalues). With `P = E_S·diag(γ_l)·W_V` `(n, d)` and
/// `Q = W_O·diag(γ_f)·U_S` `(d, n)`, `M = P·Q`, and `P·Q` and `Q·P` `(d, d)` have the same
/// characteristic polynomial up to a factor `λ^|n−d|`: their nonzero eigenvalues agree, and the
/// smaller one's `min(n, d)` eigenvalues are those of the larger without its `|n−d|` extra zeros.
/// The smaller product is the one decomposed.
pub fn ov_circuit(
    model: &Model,
    layer: usize,
    head: usize,
    tokens: &[u32],
) -> Result<OvCircuit, HeadsError> {
    let rows: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
    let weights = head_matrices(model, layer, head);
    // The tokens' rows and columns first, then f64: never a (V, D) copy.
    let embedded = f64s(token_embedding(model).select(Axis(0), &rows).view()); // (n, D)
    let unembedded = f64s(unembedding(model).select(Axis(1), &rows).view()); // (D, n)
    let gamma_l = attention_norm_scale(model, layer);
    let p = (embedded * &f64s_1(gamma_l)).dot(&f64s(weights.w_v.view())); // (n, d)
    let q = f64s(weights.w_o.view()).dot(&diag_times(final_norm_scale(model), unembedded)); // (d, n)
    let smaller = if p.nrows() <= p.ncols() {
        p.dot(&q) // (n, n)
    } else {
        q.dot(&p) // (d, d)
    };
    let eigenvalues = smaller.eigvals().map_err(|e| HeadsError::Lapack {
        what: format!("the eigenvalues of head {layer}.{head}'s OV circuit"),
        reason: e.to_string(),
    })?;
    let mut eigenvalues: Vec<[f64; 2]> = eigenvalues.iter().map(|z| [z.re, z.im]).collect();
    let modulus = |z: &[f64; 2]| z[0].hypot(z[1]);
    // Largest modulus first; a conjugate pair (equal moduli) with its positive imaginary part
    // first, so the order never depends on LAPACK's.
    eigenvalues.sort_by(|a, b| {
        (modulus(b).total_cmp(&modulus(a)))
            .then(b[0].total_cmp(&a[0]))
            .then(b[1].total_cmp(&a[1]))
    });
    let total_modulus: f64 = eigenvalues.iter().map(modulus).sum();
    let trace: f64 = eigenvalues.iter().map(|z| z[0]).sum();
    let positive = eigenvalues.iter().filter(|z| z[0] > 0.0).count();
    Ok(OvCircuit {
        copying: (total_modulus > 0.0).then(|| trace / total_modulus),
        positive_share: positive as f64 / eigenvalues.len().max(1) as f64,
        eigenvalues,
    })
}

/// The singular values, largest first, of head `head` of `layer`'s QK circuit in the residual
/// basis: `W_QK = diag(γ_l)·W_Q · (diag(γ_l)·W_K)ᵀ / √d`, `(D, D)` of rank at most `d`, the
/// bilinear form whose value on two normalized residual rows is the head's pre-softmax score
/// (biases, and under rotary embeddings the rotation, left out). With `A = Q_a R_a` and
/// `B = Q_b R_b` (reduced QR, orthonormal `(D, d)` columns), `A Bᵀ = Q_a (R_a R_bᵀ) Q_bᵀ`: its
/// `d` largest singular values are those of the `(d, d)` matrix `R_a R_bᵀ`, the rest are 0.
pub fn qk_singular_values(
    model: &Model,
    layer: usize,
    head: usize,
) -> Result<Vec<f64>, HeadsError> {
    let weights = head_matrices(model, layer, head);
    let gamma = attention_norm_scale(model, layer);
    let lapack = |e: ndarray_linalg::error::LinalgError| HeadsError::Lapack {
        what: format!("the singular values of head {layer}.{head}'s QK circuit"),
        reason: e.to_string(),
    };
    let (_, r_q) = diag_times(gamma, f64s(weights.w_q.view()))
        .qr()
        .map_err(lapack)?; // R (d, d)
    let (_, r_k) = diag_times(gamma, f64s(weights.w_k.view()))
        .qr()
        .map_err(lapack)?; // R (d, d)
    let d = weights.w_q.ncols() as f64;
    let core = r_q.dot(&r_k.t()) / d.sqrt(); // (d, d)
    let (_, sigma, _) = core.svd(false, false).map_err(lapack)?;
    let mut sigma = sigma.to_vec();
    sigma.sort_by(|a, b| b.total_cmp(a));
    Ok(sigma)
}

/// `diag(scale) · w`: row `i` of `w` `(D, k)` times `scale[i]`.
fn diag_times(scale: ArrayView1<f32>, w: Array2<f64>) -> Array2<f64> {
    w * &f64s_1(scale).insert_axis(Axis(1)) // (D, k)
}

fn f64s(a: ArrayView2<f32>) -> Array2<f64> {
    a.mapv(f64::from)
}

fn f64s_1(a: ArrayView1<f32>) -> Array1<f64> {
    a.mapv(f64::from)
}
