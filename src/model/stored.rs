//! Weight matrices kept in their stored dtype (BF16/F16, issue 17): the safetensors file stays
//! memory-mapped and each product converts its right-hand side to f32 panel by panel, just
//! before the f32 GEMM, so a model's resident memory is about its file size instead of twice it.
//!
//! [`Weight`] is a weight matrix as the engine holds it: f32 in memory ([`Weight::F32`], what
//! loading has always produced) or a strided view of the mapped BF16/F16 bytes
//! ([`Weight::Stored`]). [`WeightsMode`] says which a load produces (`--weights`).
//!
//! Exactness: BF16/F16 → f32 is exact, and [`product_into`] hands the kernel the same values in
//! the same layout as the f32 weight would have, in panels of whole columns (every output
//! element is still summed over the whole inner dimension by the same kernel, whose k-blocking
//! depends on the inner dimension alone). So a stored-dtype product is bit-identical to the f32
//! product (`a_stored_product_is_the_f32_product_bit_for_bit` below; every BF16/F16 fixture in
//! `tests/engine_stored.rs`), and as independent of the thread count (each panel is one task).
//!
//! Extra memory: one panel (`K × 256..511` f32) per thread, reused across products. The
//! backward pass (attribution) and a few per-head products convert the part of a matrix they
//! read whole, one matrix at a time ([`Weight::f32`]).

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

use ndarray::{
    Array2, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, CowArray, Ix2, ShapeBuilder,
};

use super::linalg::Kernel;
use super::weights::Bytes;

/// How a load keeps the weight matrices (`circuit --weights MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightsMode {
    /// f32 where the model fits in memory that way (the memory estimate), stored otherwise.
    #[default]
    Auto,
    /// Every weight converted to f32 at load time: the faster products.
    F32,
    /// BF16/F16 matrices left in the mapped file, converted inside each product.
    Stored,
}

impl WeightsMode {
    pub const NAMES: [&'static str; 3] = ["auto", "f32", "stored"];

    pub fn name(self) -> &'static str {
        match self {
            WeightsMode::Auto => "auto",
            WeightsMode::F32 => "f32",
            WeightsMode::Stored => "stored",
        }
    }

    pub fn parse(text: &str) -> Option<WeightsMode> {
        Some(match text {
            "auto" => WeightsMode::Auto,
            "f32" => WeightsMode::F32,
            "stored" => WeightsMode::Stored,
            _ => return None,
        })
    }
}

/// The process's choice for [`super::Model::load`] (set once by the command line).
static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets the mode every later [`super::Model::load`] uses.
pub fn set_weights_mode(mode: WeightsMode) {
    let code = match mode {
        WeightsMode::Auto => 0,
        WeightsMode::F32 => 1,
        WeightsMode::Stored => 2,
    };
    MODE.store(code, Ordering::Relaxed);
}

/// The mode [`super::Model::load`] uses: [`set_weights_mode`]'s, by default `auto`.
pub fn weights_mode() -> WeightsMode {
    match MODE.load(Ordering::Relaxed) {
        1 => WeightsMode::F32,
        2 => WeightsMode::Stored,
        _ => WeightsMode::Auto,
    }
}

/// A 16-bit float format a weight may be stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Half {
    Bf16,
    F16,
}

impl Half {
    /// The value of the little-endian element `bytes` (exact).
    #[inline(always)]
    fn to_f32(self, bytes: [u8; 2]) -> f32 {
        let bits = u16::from_le_bytes(bytes);
        match self {
            Half::Bf16 => f32::from_bits((bits as u32) << 16),
            Half::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }

    /// Converts the contiguous elements of `bytes` into `out` (`bytes.len() == 2·out.len()`).
    fn convert(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            Half::Bf16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
            Half::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
        }
    }

    /// The index and value of the first element of `bytes` that is not finite.
    pub(crate) fn first_non_finite(self, bytes: &[u8]) -> Option<(usize, f32)> {
        // Both formats: a non-finite value has every exponent bit set.
        let exponent: u16 = match self {
            Half::Bf16 => 0x7f80,
            Half::F16 => 0x7c00,
        };
        bytes
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & exponent == exponent)
            .map(|i| (i, self.to_f32([bytes[2 * i], bytes[2 * i + 1]])))
    }
}

/// A matrix of a mapped file: element `[r, c]` is the 2 bytes at `start + 2·(r·rs + c·cs)`.
#[derive(Clone)]
pub(crate) struct StoredMatrix {
    bytes: Bytes,
    layout: Layout,
}

/// Where a stored matrix's elements are, in a byte slice.
#[derive(Clone, Copy, Debug)]
struct Layout {
    start: usize, // byte offset of element [0, 0]
    dtype: Half,
    dim: (usize, usize),
    strides: (usize, usize), // in elements
}

/// A borrowed [`StoredMatrix`], as the products read it.
#[derive(Clone, Copy)]
pub struct StoredView<'a> {
    bytes: &'a [u8],
    layout: Layout,
}

impl StoredMatrix {
    /// The row-major `(rows, cols)` tensor whose data starts at byte `start` of `bytes`.
    pub(crate) fn row_major(bytes: Bytes, start: usize, dtype: Half, dim: (usize, usize)) -> Self {
        StoredMatrix {
            bytes,
            layout: Layout {
                start,
                dtype,
                dim,
                strides: (dim.1, 1),
            },
        }
    }

    pub(crate) fn view(&self) -> StoredView<'_> {
        StoredView {
            bytes: self.bytes.as_slice(),
            layout: self.layout,
        }
    }

    /// Rows `rows` (in that order) as a row-major matrix of owned bytes in the same dtype: the
    /// values are copied bit for bit, so products read exactly what they read from the file.
    fn select_rows(&self, rows: &[usize]) -> StoredMatrix {
        let view = self.view();
        let cols = self.layout.dim.1;
        let mut out = Vec::with_capacity(2 * rows.len() * cols);
        for &r in rows {
            assert!(r < self.layout.dim.0, "row in range");
            if self.layout.strides.1 == 1 {
                out.extend_from_slice(view.run(view.offset(r, 0), cols));
            } else {
                for c in 0..cols {
                    out.extend_from_slice(view.run(view.offset(r, c), 1));
                }
            }
        }
        StoredMatrix::row_major(
            Bytes::Owned(out.into()),
            0,
            self.layout.dtype,
            (rows.len(), cols),
        )
    }
}

impl Layout {
    fn t(self) -> Layout {
        Layout {
            dim: (self.dim.1, self.dim.0),
            strides: (self.strides.1, self.strides.0),
            ..self
        }
    }

    fn columns(self, cols: Range<usize>) -> Layout {
        assert!(
            cols.start <= cols.end && cols.end <= self.dim.1,
            "columns in range"
        );
        Layout {
            start: self.start + 2 * cols.start * self.strides.1,
            dim: (self.dim.0, cols.len()),
            ..self
        }
    }
}

impl<'a> StoredView<'a> {
    pub(crate) fn dim(&self) -> (usize, usize) {
        self.layout.dim
    }

    pub(crate) fn t(self) -> StoredView<'a> {
        StoredView {
            layout: self.layout.t(),
            ..self
        }
    }

    pub(crate) fn columns(self, cols: Range<usize>) -> StoredView<'a> {
        StoredView {
            layout: self.layout.columns(cols),
            ..self
        }
    }

    /// The elements of column `c` (`stride` apart) or of row `r` as contiguous bytes, if they are.
    fn run(&self, first: usize, len: usize) -> &'a [u8] {
        &self.bytes[first..first + 2 * len]
    }

    fn offset(&self, r: usize, c: usize) -> usize {
        let Layout { start, strides, .. } = self.layout;
        start + 2 * (r * strides.0 + c * strides.1)
    }

    /// Row `r` as f32 into `out` (the embedding gather).
    pub(crate) fn row_into(&self, r: usize, mut out: ArrayViewMut1<f32>) {
        let (_, cols) = self.dim();
        let dtype = self.layout.dtype;
        match out.as_slice_mut() {
            Some(out) if self.layout.strides.1 == 1 => {
                dtype.convert(self.run(self.offset(r, 0), cols), out)
            }
            _ => {
                for (c, o) in out.iter_mut().enumerate() {
                    let i = self.offset(r, c);
                    *o = dtype.to_f32([self.bytes[i], self.bytes[i + 1]]);
                }
            }
        }
    }

    /// Columns `cols` as an f32 matrix laid out as this view is (row-major if its rows are
    /// contiguous, column-major otherwise), written into `buffer`.
    fn panel_into<'b>(&self, cols: Range<usize>, buffer: &'b mut Vec<f32>) -> ArrayView2<'b, f32> {
        let part = self.columns(cols);
        let (rows, width) = part.dim();
        let dtype = self.layout.dtype;
        buffer.clear();
        buffer.resize(rows * width, 0.0);
        let row_major = part.layout.strides.1 == 1;
        if row_major {
            for (r, out) in buffer.chunks_exact_mut(width.max(1)).enumerate().take(rows) {
                dtype.convert(part.run(part.offset(r, 0), width), out);
            }
        } else if part.layout.strides.0 == 1 {
            for (c, out) in buffer.chunks_exact_mut(rows.max(1)).enumerate().take(width) {
                dtype.convert(part.run(part.offset(0, c), rows), out);
            }
        } else {
            for c in 0..width {
                for r in 0..rows {
                    let i = part.offset(r, c);
                    buffer[c * rows + r] = dtype.to_f32([part.bytes[i], part.bytes[i + 1]]);
                }
            }
        }
        if row_major {
            ArrayView2::from_shape((rows, width), buffer.as_slice())
        } else {
            ArrayView2::from_shape((rows, width).f(), buffer.as_slice())
        }
        .expect("rows·width values")
    }

    /// The whole view as an f32 matrix in its own layout.
    pub(crate) fn to_f32(self) -> Array2<f32> {
        let mut buffer = Vec::new();
        let row_major = self
            .panel_into(0..self.dim().1, &mut buffer)
            .is_standard_layout();
        if row_major {
            Array2::from_shape_vec(self.dim(), buffer)
        } else {
            Array2::from_shape_vec(self.dim().f(), buffer)
        }
        .expect("rows·cols values")
    }
}

/// Output columns per panel: at least this many (the gemm crate's general path needs more
/// than 64, `linalg::GEMM_MIN_COLS`), fewer than twice it.
const PANEL_COLS: usize = 256;

thread_local! {
    /// Each thread's panel buffer, reused from product to product.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y = x·w + β·y` with `kernel`, `w` `(K, M)` converted to f32 in panels of whole columns, the
/// panels shared out over rayon's threads (module docs).
pub(crate) fn product_into(
    kernel: Kernel,
    x: ArrayView2<f32>,
    w: StoredView,
    beta: f32,
    y: &mut ArrayViewMut2<f32>,
) {
    assert_eq!(x.ncols(), w.dim().0, "inner dimensions of x·w");
    assert_eq!(y.dim(), (x.nrows(), w.dim().1), "shape of y = x·w");
    let cols = w.dim().1;
    let panels = (cols / PANEL_COLS).max(1);
    // Panel p covers columns p·M/P .. (p+1)·M/P: every panel PANEL_COLS wide or more.
    let bound = |p: usize| p * cols / panels;
    fn run(
        kernel: Kernel,
        x: ArrayView2<f32>,
        w: StoredView,
        beta: f32,
        mut y: ArrayViewMut2<f32>,
        panels: Range<usize>,
        bound: &(dyn Fn(usize) -> usize + Sync),
    ) {
        if panels.len() == 1 {
            let cols = bound(panels.start)..bound(panels.end);
            PANEL.with_borrow_mut(|buffer| {
                let panel = w.panel_into(cols, buffer); // (K, width)
                kernel.product_into_on_this_thread(x, panel, beta, &mut y);
            });
            return;
        }
        let middle = panels.start + panels.len() / 2;
        let (left, right) = y.split_at(Axis(1), bound(middle) - bound(panels.start));
        rayon::join(
            || run(kernel, x, w, beta, left, panels.start..middle, bound),
            || run(kernel, x, w, beta, right, middle..panels.end, bound),
        );
    }
    run(kernel, x, w, beta, y.view_mut(), 0..panels, &bound);
}

/// A weight matrix as the engine holds it (module docs).
pub(crate) enum Weight {
    F32(Array2<f32>),
    Stored(StoredMatrix),
}

/// A borrowed weight matrix, as a product reads it: f32, or in its stored dtype.
#[derive(Clone, Copy)]
pub enum WeightView<'a> {
    F32(ArrayView2<'a, f32>),
    Stored(StoredView<'a>),
}

impl<'a> From<ArrayView2<'a, f32>> for WeightView<'a> {
    fn from(view: ArrayView2<'a, f32>) -> Self {
        WeightView::F32(view)
    }
}

impl From<Array2<f32>> for Weight {
    fn from(values: Array2<f32>) -> Self {
        Weight::F32(values)
    }
}

impl<'a> WeightView<'a> {
    pub(crate) fn dim(&self) -> (usize, usize) {
        match self {
            WeightView::F32(w) => w.dim(),
            WeightView::Stored(w) => w.dim(),
        }
    }

    pub(crate) fn t(self) -> WeightView<'a> {
        match self {
            WeightView::F32(w) => WeightView::F32(w.reversed_axes()),
            WeightView::Stored(w) => WeightView::Stored(w.t()),
        }
    }

    pub(crate) fn columns(self, cols: Range<usize>) -> WeightView<'a> {
        match self {
            WeightView::F32(w) => WeightView::F32(w.slice_move(ndarray::s![.., cols])),
            WeightView::Stored(w) => WeightView::Stored(w.columns(cols)),
        }
    }

    pub(crate) fn rows(self, rows: Range<usize>) -> WeightView<'a> {
        self.t().columns(rows).t()
    }

    /// As an f32 matrix: borrowed if it is one, else converted (a copy of this part).
    pub(crate) fn f32(self) -> CowArray<'a, f32, Ix2> {
        match self {
            WeightView::F32(w) => CowArray::from(w),
            WeightView::Stored(w) => CowArray::from(w.to_f32()),
        }
    }
}

impl Weight {
    pub(crate) fn view(&self) -> WeightView<'_> {
        match self {
            Weight::F32(w) => WeightView::F32(w.view()),
            Weight::Stored(w) => WeightView::Stored(w.view()),
        }
    }

    pub(crate) fn dim(&self) -> (usize, usize) {
        self.view().dim()
    }

    pub(crate) fn nrows(&self) -> usize {
        self.dim().0
    }

    pub(crate) fn ncols(&self) -> usize {
        self.dim().1
    }

    /// The matrix as f32 (see [`WeightView::f32`]).
    pub(crate) fn f32(&self) -> CowArray<'_, f32, Ix2> {
        self.view().f32()
    }

    /// `(R, C)` → `(C, R)` without copying.
    pub(crate) fn reversed_axes(self) -> Weight {
        match self {
            Weight::F32(w) => Weight::F32(w.reversed_axes()),
            Weight::Stored(StoredMatrix { bytes, layout }) => Weight::Stored(StoredMatrix {
                bytes,
                layout: layout.t(),
            }),
        }
    }

    /// Columns `cols` as a weight of their own (an f32 copy, or a view of the same file).
    pub(crate) fn columns(&self, cols: Range<usize>) -> Weight {
        match self {
            Weight::F32(w) => Weight::F32(w.slice(ndarray::s![.., cols]).to_owned()),
            Weight::Stored(StoredMatrix { bytes, layout }) => Weight::Stored(StoredMatrix {
                bytes: bytes.clone(),
                layout: layout.columns(cols),
            }),
        }
    }

    /// Rows `rows` (in that order) as a weight of their own, in the dtype it is held in: an f32
    /// copy, or for a stored matrix a copy of those rows' stored bytes (GPT-NeoX's fused q/k/v
    /// rows are interleaved by head, which no strided view describes; the copy keeps them at
    /// 2 bytes per value, and the mapped pages it was read from are clean and can be dropped).
    pub(crate) fn select_rows(&self, rows: &[usize]) -> Weight {
        match self {
            Weight::F32(w) => Weight::F32(w.select(Axis(0), rows)),
            Weight::Stored(matrix) => Weight::Stored(matrix.select_rows(rows)),
        }
    }

    /// Row `r` into `out` (embedding lookup).
    pub(crate) fn row_into(&self, r: usize, mut out: ArrayViewMut1<f32>) {
        match self {
            Weight::F32(w) => out.assign(&w.row(r)),
            Weight::Stored(w) => w.view().row_into(r, out),
        }
    }

    /// Whether the matrix is kept in its stored dtype.
    pub(crate) fn is_stored(&self) -> bool {
        matches!(self, Weight::Stored(_))
    }
}

#[cfg(test)]
mod tests {
    use super::super::linalg::tests::{on_threads, random};
    use super::super::linalg::{kernel_for, matmul_into};
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A random `(rows, cols)` matrix of BF16 values, as f32 and as the row-major BF16 bytes.
    fn random_bf16(rows: usize, cols: usize, seed: u64) -> (Array2<f32>, StoredMatrix) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let values = Array2::from_shape_fn((rows, cols), |_| {
            half::bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_f32()
        });
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        // One odd byte in front: the data need not be aligned.
        let mut file = vec![0u8];
        file.extend(bytes);
        let bytes = Bytes::Static(Box::leak(file.into_boxed_slice()));
        (
            values,
            StoredMatrix::row_major(bytes, 1, Half::Bf16, (rows, cols)),
        )
    }

    fn stored_product(x: &Array2<f32>, w: StoredView, beta: f32, y: &Array2<f32>) -> Array2<f32> {
        let mut y = y.clone();
        let kernel = kernel_for(x.nrows(), w.dim().1);
        product_into(kernel, x.view(), w, beta, &mut y.view_mut());
        y
    }

    fn f32_product(x: &Array2<f32>, w: ArrayView2<f32>, beta: f32, y: &Array2<f32>) -> Array2<f32> {
        let mut y = y.clone();
        matmul_into(x.view(), w, beta, &mut y.view_mut());
        y
    }

    #[test]
    fn a_stored_product_is_the_f32_product_bit_for_bit() {
        // Random values: a changed summation order would show in the last bits. The layouts the
        // loaders make: GPT-2's (in, out) row-major, nn.Linear's (out, in) read transposed, the
        // unembedding (V, D) read transposed against its f32 column-major copy; widths below,
        // at and well above a panel, rows 1 (padded in gemm), few (transposed kernel) and many.
        for (inner, cols) in [(64, 172), (96, 300), (768, 3072), (3072, 768), (200, 1000)] {
            for rows in [1, 7, 33, 200] {
                let x = random(rows, inner, 1);
                let y = random(rows, cols, 2);
                // (in, out) as stored.
                let (w, stored) = random_bf16(inner, cols, 3);
                for beta in [0.0, 1.0] {
                    let expected = f32_product(&x, w.view(), beta, &y);
                    for threads in [1, 2] {
                        let got =
                            on_threads(threads, || stored_product(&x, stored.view(), beta, &y));
                        assert_eq!(
                            got, expected,
                            "(in, out) {rows}×{inner}·{inner}×{cols} β {beta} on {threads}"
                        );
                    }
                }
                // (out, in) as stored, read transposed: the f32 weight is the same view of an f32 copy.
                let (w_t, stored_t) = random_bf16(cols, inner, 4);
                let expected = f32_product(&x, w_t.t(), 0.0, &y);
                for threads in [1, 2] {
                    let got =
                        on_threads(threads, || stored_product(&x, stored_t.view().t(), 0.0, &y));
                    assert_eq!(
                        got, expected,
                        "(out, in)ᵀ {rows}×{inner}·{inner}×{cols} on {threads}"
                    );
                }
                // The f32 unembedding is column-major (`unembedding_layout`): its transpose is
                // standard layout, while the stored one stays row-major.
                let Weight::F32(laid_out) = super::super::linalg::unembedding_layout(w_t.clone())
                else {
                    panic!("an f32 matrix stays f32");
                };
                assert_eq!(
                    f32_product(&x, laid_out.t(), 0.0, &y),
                    stored_product(&x, stored_t.view().t(), 0.0, &y),
                    "unembedding {rows}×{inner}·{inner}×{cols}"
                );
            }
        }
    }

    #[test]
    fn stored_views_read_the_elements_they_describe() {
        let (w, stored) = random_bf16(9, 13, 5);
        let view = stored.view();
        assert_eq!(view.to_f32(), w);
        assert_eq!(view.t().to_f32(), w.t());
        assert_eq!(view.columns(3..8).to_f32(), w.slice(ndarray::s![.., 3..8]));
        assert_eq!(
            view.t().columns(2..5).t().to_f32(),
            w.slice(ndarray::s![2..5, ..])
        );
        assert_eq!(
            view.t().columns(2..5).to_f32(),
            w.t().slice(ndarray::s![.., 2..5])
        );
        let mut row = ndarray::Array1::zeros(13);
        view.row_into(4, row.view_mut());
        assert_eq!(row, w.row(4));
        let mut column = ndarray::Array1::zeros(9);
        view.t().row_into(6, column.view_mut());
        assert_eq!(column, w.column(6));
    }

    #[test]
    fn non_finite_stored_values_are_found_in_both_formats() {
        let bf16: Vec<u8> = [1.0f32, f32::INFINITY, f32::NAN]
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(Half::Bf16.first_non_finite(&bf16), Some((1, f32::INFINITY)));
        assert_eq!(Half::Bf16.first_non_finite(&bf16[..2]), None);
        let f16: Vec<u8> = [65504.0f32, -2.5, f32::NEG_INFINITY]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(
            Half::F16.first_non_finite(&f16),
            Some((2, f32::NEG_INFINITY))
        );
        let mut out = [0.0f32; 2];
        Half::F16.convert(&f16[..4], &mut out);
        assert_eq!(out, [65504.0, -2.5]);
    }
}
