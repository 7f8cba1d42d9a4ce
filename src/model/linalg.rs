//! The engine's matrix products: `y = x·w + β·y` on ndarray views, through one of two pure-Rust
//! GEMMs, picked per shape and per CPU at run time (issue 13):
//!
//! - [`Kernel::MatrixMultiply`]: ndarray's `general_mat_mul` (matrixmultiply, with its AVX-512
//!   kernels switched on in Cargo.toml). matrixmultiply shares its threads out over the rows of
//!   the left factor, so a product with few rows runs on one thread;
//! - [`Kernel::MatrixMultiplyTransposed`]: the same sums computed as `yᵀ = wᵀ·xᵀ`, the long side
//!   on the left, for few-row products;
//! - [`Kernel::Gemm`]: the `gemm` crate (runtime-dispatched AVX2 / AVX-512 kernels, rayon).
//!
//! [`kernel_for`] makes the choice, measured with `cargo bench --bench gemm` on every product
//! shape of the GPT-2-small forward (docs/performance.md): on a CPU with AVX-512F the `gemm` crate
//! was the faster on every shape, at 1 and 2 threads; elsewhere the engine keeps the kernels it
//! had before AVX-512 was measured (matrixmultiply, transposed for few rows), so an AVX2-only
//! machine runs exactly what it ran before, at the same speed and with the same rounding.
//!
//! Which kernel runs depends only on the shape and the CPU, never on the thread count, and each
//! kernel sums every output element in an order that does not depend on how many threads share
//! the work (they split rows and columns, never the inner dimension), so results stay identical
//! across thread counts (`results_do_not_depend_on_the_thread_count` below).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2, ShapeBuilder};

use super::stored::{self, Weight, WeightView};

/// One way of computing a product; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    MatrixMultiply,
    MatrixMultiplyTransposed,
    Gemm,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [
        Kernel::MatrixMultiply,
        Kernel::MatrixMultiplyTransposed,
        Kernel::Gemm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::MatrixMultiply => "matrixmultiply",
            Kernel::MatrixMultiplyTransposed => "matrixmultiply (yᵀ = wᵀ·xᵀ)",
            Kernel::Gemm => "gemm",
        }
    }

    /// `y = x·w + β·y`: x `(N, K)`, w `(K, M)`, y `(N, M)`; any strides.
    pub fn product_into(
        self,
        x: ArrayView2<f32>,
        w: ArrayView2<f32>,
        beta: f32,
        y: &mut ArrayViewMut2<f32>,
    ) {
        self.product_into_with(x, w, beta, y, true)
    }

    /// [`Kernel::product_into`] without sharing the gemm crate's work out over rayon's threads
    /// (the caller runs several such products in parallel: `stored::product_into`). The same
    /// sums: the threads split rows and columns, never the inner dimension.
    pub(crate) fn product_into_on_this_thread(
        self,
        x: ArrayView2<f32>,
        w: ArrayView2<f32>,
        beta: f32,
        y: &mut ArrayViewMut2<f32>,
    ) {
        self.product_into_with(x, w, beta, y, false)
    }

    fn product_into_with(
        self,
        x: ArrayView2<f32>,
        w: ArrayView2<f32>,
        beta: f32,
        y: &mut ArrayViewMut2<f32>,
        parallel: bool,
    ) {
        assert_eq!(x.ncols(), w.nrows(), "inner dimensions of x·w");
        assert_eq!(y.dim(), (x.nrows(), w.ncols()), "shape of y = x·w");
        match self {
            Kernel::MatrixMultiply => general_mat_mul(1.0, &x, &w, beta, y),
            Kernel::MatrixMultiplyTransposed => {
                general_mat_mul(1.0, &w.t(), &x.t(), beta, &mut y.view_mut().reversed_axes())
            }
            Kernel::Gemm => gemm_crate(x, w, beta, y, parallel),
        }
    }
}

/// The `gemm` crate on ndarray views (strides in elements, as both use them).
fn gemm_crate(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    beta: f32,
    y: &mut ArrayViewMut2<f32>,
    parallel: bool,
) {
    let ((rows, inner), cols) = (x.dim(), w.ncols());
    if rows == 1 {
        // One row would take gemm's matrix-vector path, which sums in another order than its
        // general one: compute two copies of the row and keep the first.
        let x2 = ndarray::concatenate![ndarray::Axis(0), x, x]; // (2, K)
        let mut y2 = ndarray::concatenate![ndarray::Axis(0), y.view(), y.view()]; // (2, M)
        gemm_crate(x2.view(), w, beta, &mut y2.view_mut(), parallel);
        y.assign(&y2.slice(ndarray::s![0..1, ..]));
        return;
    }
    if beta == 0.0
        && y.len() > 1
        && y.strides()[0] != 1
        && reads_a_transposed_weight_faster_column_major(rows, inner, cols, w)
    {
        let mut scratch = Array2::<f32>::zeros((rows, cols).f()); // (N, M), column-major
        gemm_crate(x, w, 0.0, &mut scratch.view_mut(), parallel);
        copy_in_tiles(scratch.view(), y);
        return;
    }
    let parallelism = if parallel && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(0) // rayon's pool: RAYON_NUM_THREADS, as the rest of the engine
    } else {
        gemm::Parallelism::None
    };
    let (ys, xs, ws) = (y.strides().to_vec(), x.strides(), w.strides());
    // SAFETY: the three pointers and their (row, column) strides describe the ndarray views
    // exactly (shapes checked by the caller); `y` is borrowed mutably, so it aliases neither
    // `x` nor `w`. gemm computes dst := alpha·dst + beta·lhs·rhs, reading dst only if told to.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            inner,
            y.as_mut_ptr(),
            ys[1],
            ys[0],
            beta != 0.0,
            x.as_ptr(),
            xs[1],
            xs[0],
            w.as_ptr(),
            ws[1],
            ws[0],
            beta,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Whether `x·w`, `w` a transposed `(out, in)`-stored matrix (`w`'s row stride 1: a backward's
/// `dy·Wᵀ`, or Llama's `x·Wᵀ`), is faster computed into a column-major output and copied.
///
/// The gemm crate computes a row-major output as its transpose `yᵀ = wᵀ·xᵀ`, with `w` as the
/// left factor; a transposed weight is then a row-major left factor, which it copies into its
/// packed layout on every call — a copy of the whole weight, as costly as the products
/// themselves when few rows share it (a gradient pass of a few prompts). Into a column-major
/// output it computes `y = x·w` directly: it packs `x` (small) and reads `w` in place. The sums
/// are the same (the same micro-kernel over the same k-blocks, which depend on `inner` alone;
/// `a_transposed_weight_gives_the_same_sums_through_a_column_major_output` checks them bit for
/// bit). Measured on the Intel Xeon (AVX-512) machines, 1 thread, against the row-major output
/// (2026-12-02, a scratch program timing both on GPT-2 small's backward shapes): `(N, 3072) ·
/// (3072, 768)` 2.2–2.4× faster at 80–112 rows and 1.1× at 512; `(N, 768)·(768, 768)` 1.1–1.7×
/// up to 256 rows, 0.87× at 512; `(N, 768)·(768, 3072)` 1.3–2× up to 80 rows (an `eap-ig` pass
/// of 5 prompts), 1.04× at 112, 0.7× at 512; `(N, 64)·(64, 768)` (a head's) 0.7× above 16
/// rows. Hence: when `rows·cols ≤ 384·inner`. Measured again on the AMD EPYC (AVX-512) machines
/// (2026-12-04, the same comparison, the copy back included): `(N, 768)·(768, 3072)` 1.23× at
/// 128 rows (an `eap` pass of 8 prompts × 16 tokens), 1.16× at 160, 1.10× at 192, 0.97× at 256;
/// the other shapes as before (`(N, 768)·(768, 768)` 0.88× at 512). Hence also: up to 128 rows
/// over a wide inner dimension, where the weight's copy (`inner·cols`) outweighs the output's
/// (`rows·cols`): faster here, and level on the Xeons (1.04× at 112 rows, the nearest measured).
fn reads_a_transposed_weight_faster_column_major(
    rows: usize,
    inner: usize,
    cols: usize,
    w: ArrayView2<f32>,
) -> bool {
    w.strides()[0] == 1
        && w.strides()[1] != 1
        && (rows * cols <= 384 * inner || (rows <= 128 && inner >= 512))
}

/// `y = a` for `a` and `y` of opposite layouts (a column-major product into a row-major `y`, a
/// matrix into its transpose), in square tiles so that reads and writes both stay within a few
/// cache lines (ndarray's `assign` between opposite layouts walks one of them element by element
/// across rows).
fn copy_in_tiles(a: ArrayView2<f32>, y: &mut ArrayViewMut2<f32>) {
    const TILE: usize = 16;
    assert_eq!(a.dim(), y.dim(), "copy_in_tiles: same shapes");
    let (rows, cols) = a.dim();
    for c0 in (0..cols).step_by(TILE) {
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    // SAFETY: r < rows and c < cols, the shape of both `a` and `y`.
                    unsafe { *y.uget_mut((r, c)) = *a.uget((r, c)) };
                }
            }
        }
    }
}

/// Below this many rows of `x`, matrixmultiply runs on one thread (it shares its threads out
/// over the rows of the left factor), so the product is computed transposed.
const FEW_ROWS: usize = 128;

/// The gemm crate only for outputs wider than this: below it (tiny models, per-head columns)
/// it switches to kernels for small shapes whose summation order depends on the number of rows.
const GEMM_MIN_COLS: usize = 256;

/// The kernel the engine uses for `x·w` with `x` `(rows, ·)`, `w` `(·, cols)` on this CPU.
///
/// A row of the result must not depend on how many other rows share the product: the END-only
/// forward computes its last layer at 1 row per prompt, and its logits are asserted equal to
/// the full forward's (`tests/backward_gradients.rs`). Each kernel chosen here sums every
/// element over the inner dimension in an order fixed by the inner dimension alone (its
/// k-blocking), whatever the number of rows; the gemm crate only with more than
/// [`GEMM_MIN_COLS`] columns and at least 2 rows (`gemm_crate` pads a single row), where it takes
/// its general path (`a_row_does_not_depend_on_how_many_rows_share_the_product`).
pub fn kernel_for(rows: usize, cols: usize) -> Kernel {
    if has_avx512f() && cols > GEMM_MIN_COLS {
        Kernel::Gemm
    } else if rows < FEW_ROWS && cols > rows {
        // Measured at 2 threads on AMD Zen 4: the 32-row unembedding of GPT-2 small 1.7× faster.
        Kernel::MatrixMultiplyTransposed
    } else {
        Kernel::MatrixMultiply
    }
}

/// Whether this CPU runs AVX-512F (detected once; the standard library caches it).
fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y = x·w + β·y` with the engine's kernel for the shape ([`kernel_for`]); a weight kept in
/// its stored dtype is converted panel by panel inside the product (`stored::product_into`,
/// the same kernel and the same sums).
pub fn matmul_into<'w>(
    x: ArrayView2<f32>,
    w: impl Into<WeightView<'w>>,
    beta: f32,
    y: &mut ArrayViewMut2<f32>,
) {
    let w = w.into();
    let kernel = kernel_for(x.nrows(), w.dim().1);
    match w {
        WeightView::F32(w) => kernel.product_into(x, w, beta, y),
        WeightView::Stored(w) => stored::product_into(kernel, x, w, beta, y),
    }
}

/// `x·w`: (N, in) · (in, out) → (N, out), as every projection of the engine computes it
/// (public for the benchmarks, which time the forward's products alone).
pub fn matmul<'w>(x: ArrayView2<f32>, w: impl Into<WeightView<'w>>) -> Array2<f32> {
    let w = w.into();
    let mut y = Array2::zeros((x.nrows(), w.dim().1));
    matmul_into(x, w, 0.0, &mut y.view_mut());
    y
}

/// `x·w + b`: (N, in) · (in, out) + (out,) → (N, out). The bias is written first (row by row,
/// a copy per row) and the product accumulated onto it (`β = 1`), one pass over the output fewer
/// than adding it afterwards. (Not the same rounding when `in` spans several of the kernel's
/// k-blocks: the bias then joins the sum before the later blocks; f32-level differences, well
/// inside the tolerance against transformers.)
pub(crate) fn affine<'w>(
    x: ArrayView2<f32>,
    w: impl Into<WeightView<'w>>,
    bias: Option<ArrayView1<f32>>,
) -> Array2<f32> {
    let Some(bias) = bias else {
        return matmul(x, w);
    };
    let bias = bias.to_vec(); // (out,) contiguous
    let mut rows = Vec::with_capacity(x.nrows() * bias.len());
    for _ in 0..x.nrows() {
        rows.extend_from_slice(&bias);
    }
    let mut y = Array2::from_shape_vec((x.nrows(), bias.len()), rows).expect("N·out values");
    matmul_into(x, w, 1.0, &mut y.view_mut());
    y
}

/// A `(V, D)` unembedding matrix laid out column-major, so that the `(D, V)` factor `uᵀ` of the
/// logits `x·uᵀ` is a standard-layout matrix the kernels read contiguously. Measured with
/// `cargo bench --bench gemm` (32 END rows, GPT-2 small): 1.8× faster at 1 thread with the gemm
/// crate than reading the row-major matrix transposed.
/// A weight kept in its stored dtype stays as the file has it (its panels are converted in
/// the file's layout).
pub(crate) fn unembedding_layout(u: impl Into<Weight>) -> Weight {
    let u = match u.into() {
        Weight::F32(u) => u,
        stored => return stored,
    };
    Weight::F32(f32_unembedding_layout(u))
}

fn f32_unembedding_layout(u: Array2<f32>) -> Array2<f32> {
    if u.t().is_standard_layout() {
        return u;
    }
    let transposed = transpose(u.view()); // (D, V)
    drop(u);
    transposed.reversed_axes() // (V, D), column-major
}

/// `a` `(R, C)` → `aᵀ` `(C, R)` in standard layout, in square tiles so that both the reads and
/// the writes stay within a few cache lines per row (an element-by-element strided copy of a
/// 50257 × 768 matrix takes ~0.3 s; tiled, a tenth of that).
fn transpose(a: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((a.ncols(), a.nrows()));
    copy_in_tiles(a.t(), &mut out.view_mut());
    out
}

/// `dst = srcᵀ`: `src` a row-major `(rows, cols)` matrix, `dst` its row-major `(cols, rows)`
/// transpose, in 16 × 16 tiles copied through fixed-size arrays, which the compiler turns into
/// whole-row loads and stores (measured 2026-12-04, AMD EPYC, a (156, 768) matrix in cache:
/// 0.47 ns an element, against 0.74 for 8 × 8 tiles moved element by element; it is what
/// [`copy_in_tiles`] does for views of any strides).
pub(crate) fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    assert_eq!(
        src.len(),
        rows * cols,
        "transpose_into: the source is (rows, cols)"
    );
    assert_eq!(
        dst.len(),
        rows * cols,
        "transpose_into: the target is (cols, rows)"
    );
    let (whole_rows, whole_cols) = (rows / TILE * TILE, cols / TILE * TILE);
    for r0 in (0..whole_rows).step_by(TILE) {
        for c0 in (0..whole_cols).step_by(TILE) {
            let mut tile = [[0f32; TILE]; TILE];
            for (i, row) in tile.iter_mut().enumerate() {
                let start = (r0 + i) * cols + c0;
                row.copy_from_slice(&src[start..start + TILE]);
            }
            let mut transposed = [[0f32; TILE]; TILE];
            for (j, out) in transposed.iter_mut().enumerate() {
                for (i, value) in out.iter_mut().enumerate() {
                    *value = tile[i][j];
                }
            }
            for (j, out) in transposed.iter().enumerate() {
                let start = (c0 + j) * rows + r0;
                dst[start..start + TILE].copy_from_slice(out);
            }
        }
    }
    // The ragged edges: the last rows (every column) and the last columns (the whole rows).
    for r in 0..rows {
        let first_col = if r < whole_rows { whole_cols } else { 0 };
        for c in first_col..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// `x·w`: (N, K) · (K, M) → (N, M) with `kernel`.
pub fn product(kernel: Kernel, x: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
    let mut y = Array2::zeros((x.nrows(), w.ncols()));
    kernel.product_into(x, w, 0.0, &mut y.view_mut());
    y
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    pub(crate) fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0))
    }

    pub(crate) fn on_threads<T: Send>(threads: usize, run: impl FnOnce() -> T + Send) -> T {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(run)
    }

    #[test]
    fn the_unembedding_layout_keeps_every_value_and_reads_transposed_contiguously() {
        let u = random(67, 45, 5); // (V, D): not multiples of the tile
        let laid_out = f32_unembedding_layout(u.clone());
        assert_eq!(laid_out, u);
        assert!(laid_out.t().is_standard_layout());
        assert_eq!(transpose(u.view()), u.t());
    }

    #[test]
    fn every_kernel_computes_the_product() {
        // Small integers times quarters: every sum is exact in f32, whatever the order.
        let x = Array2::from_shape_fn((70, 64), |(i, j)| ((i * 31 + j * 7) % 17) as f32 - 8.0);
        let w = Array2::from_shape_fn((64, 300), |(i, j)| ((i * 13 + j * 5) % 11) as f32 * 0.25);
        let expected = x.dot(&w);
        let stored = w.t().to_owned(); // (out, in), as Llama and the tied unembedding store it
        for kernel in Kernel::ALL {
            assert_eq!(product(kernel, x.view(), w.view()), expected, "{kernel:?}");
            assert_eq!(
                product(kernel, x.view(), stored.t()),
                expected,
                "{kernel:?} wᵀ"
            );
            let mut y = Array2::from_elem((70, 300), 0.5);
            kernel.product_into(x.view(), w.view(), 1.0, &mut y.view_mut());
            assert_eq!(y, &expected + 0.5, "{kernel:?} with β = 1");
            // Into a strided output: every other column of a wider array.
            let mut wide = Array2::from_elem((70, 600), 7.0f32);
            let mut every_other = wide.slice_mut(ndarray::s![.., ..;2]);
            kernel.product_into(x.view(), w.view(), 0.0, &mut every_other);
            assert_eq!(
                wide.slice(ndarray::s![.., ..;2]),
                expected,
                "{kernel:?} strided"
            );
            assert!(wide.slice(ndarray::s![.., 1..;2]).iter().all(|&v| v == 7.0));
        }
    }

    #[test]
    fn a_row_does_not_depend_on_how_many_rows_share_the_product() {
        // GPT-2 small's shapes, and a tiny model's (stories260K: d 64, MLP 172, vocab 512).
        for (inner, cols) in [
            (768, 768),
            (768, 3072),
            (3072, 768),
            (64, 64),
            (64, 172),
            (172, 64),
            (64, 512),
        ] {
            let (x, w) = (random(512, inner, 6), random(inner, cols, 7));
            let all = matmul(x.view(), w.view());
            // The same weight stored transposed, `(out, in)` (Llama's layout, the backward's
            // `Wᵀ`): a few rows take the column-major route, many the row-major one.
            let stored = w.t().as_standard_layout().into_owned();
            let all_t = matmul(x.view(), stored.t());
            for rows in [40..72, 100..101, 0..32, 511..512] {
                let few = matmul(x.slice(ndarray::s![rows.clone(), ..]), stored.t());
                assert_eq!(
                    few,
                    all_t.slice(ndarray::s![rows.clone(), ..]),
                    "{inner}×{cols} stored transposed, rows {rows:?}"
                );
                let few = matmul(x.slice(ndarray::s![rows.clone(), ..]), w.view());
                assert_eq!(
                    few,
                    all.slice(ndarray::s![rows.clone(), ..]),
                    "{inner}×{cols}, rows {rows:?}"
                );
                let bias = random(1, cols, 8).row(0).to_owned();
                let few = affine(
                    x.slice(ndarray::s![rows.clone(), ..]),
                    w.view(),
                    Some(bias.view()),
                );
                let all = affine(x.view(), w.view(), Some(bias.view()));
                assert_eq!(
                    few,
                    all.slice(ndarray::s![rows.clone(), ..]),
                    "{inner}×{cols} + b, rows {rows:?}"
                );
            }
        }
    }

    #[test]
    fn transpose_into_moves_every_element_once() {
        // Whole tiles, ragged rows, ragged columns, both, and smaller than one tile.
        for (rows, cols) in [
            (32, 48),
            (156, 768),
            (17, 32),
            (32, 21),
            (39, 53),
            (5, 3),
            (1, 1),
        ] {
            let a = random(rows, cols, 3);
            let mut t = vec![f32::NAN; rows * cols];
            transpose_into(a.as_slice().unwrap(), rows, cols, &mut t);
            let t = Array2::from_shape_vec((cols, rows), t).unwrap();
            assert_eq!(t, a.t(), "{rows}×{cols}");
        }
    }

    #[test]
    fn a_transposed_weight_gives_the_same_sums_through_a_column_major_output() {
        // The backward's `dy·Wᵀ` shapes at GPT-2 small (and a tiny model's), at the row counts
        // of a few prompts' pass: `β = 1` onto zeros keeps gemm's row-major route, `β = 0`
        // takes the column-major one where it is faster; the sums must be the same bits.
        for (inner, cols) in [(3072, 768), (768, 768), (768, 3072), (2304, 768), (172, 64)] {
            let stored = random(cols, inner, 9); // (out, in) as a linear layer's `W` is read
            for rows in [2, 17, 80, 112, 128, 300] {
                let x = random(rows, inner, 10);
                let w = stored.t();
                let column_major = product(Kernel::Gemm, x.view(), w);
                let mut row_major = Array2::zeros((rows, cols));
                Kernel::Gemm.product_into(x.view(), w, 1.0, &mut row_major.view_mut());
                assert_eq!(column_major, row_major, "{rows}×{inner}·{inner}×{cols}");
                // Into a strided output too.
                let mut wide = Array2::from_elem((rows, 2 * cols), 7.0f32);
                let mut every_other = wide.slice_mut(ndarray::s![.., ..;2]);
                Kernel::Gemm.product_into(x.view(), w, 0.0, &mut every_other);
                assert_eq!(wide.slice(ndarray::s![.., ..;2]), column_major);
                assert!(wide.slice(ndarray::s![.., 1..;2]).iter().all(|&v| v == 7.0));
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Random values, so any change of summation order would show in the last bits; shapes
        // from GPT-2 small (512 rows, 32 rows, K = 768 and 3072, the unembedding as stored).
        // Only the gemm crate takes its threads from the rayon pool; matrixmultiply's are fixed
        // per process (MATMUL_NUM_THREADS), covered by tests/eval_cli.rs across processes.
        let embed = random(50257, 768, 3);
        for (rows, inner, cols) in [(512, 768, 3072), (512, 3072, 768), (32, 768, 768)] {
            let (x, w) = (random(rows, inner, 1), random(inner, cols, 2));
            let one = on_threads(1, || product(Kernel::Gemm, x.view(), w.view()));
            let two = on_threads(2, || product(Kernel::Gemm, x.view(), w.view()));
            assert_eq!(one, two, "{rows}×{inner}·{inner}×{cols}");
        }
        let x = random(32, 768, 4);
        let one = on_threads(1, || product(Kernel::Gemm, x.view(), embed.t()));
        let two = on_threads(2, || product(Kernel::Gemm, x.view(), embed.t()));
        assert_eq!(one, two, "unembedding");
    }
}
