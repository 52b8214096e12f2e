//! The GGUF's own blocks kept in memory: Q4_1 projections and the Q8_0 embedding, multiplied by
//! kernels that dequantize inside the dot product.
//!
//! Decoding is bound by reading the weights once per token: Q4_1 is 0.625 bytes per weight and
//! Q8_0 1.06, where f32 is 4. The weights are the f32 reference's values exactly
//! ([`crate::gguf::dequantize`]: `d·q + m`); a product differs from the f32 reference's only by
//! f32 rounding, in the order of its sums and in taking `d·Σ x·q + m·Σ x` per block. Activations
//! stay f32.
//!
//! Kernels, one file per instruction set as candle keeps them: `avx512.rs` and `avx2.rs` (AVX2 +
//! FMA + F16C) on x86-64, detected at run time; `simd128.rs` on wasm32 (a build-time feature,
//! which the page's build turns on); and `scalar.rs`, the portable one that every other kernel is
//! tested against. This file holds the blocks, their layout for the GPU and the choice of kernel.

use std::sync::Arc;

use half::f16;

use crate::gguf::{TensorType, dequantize};

/// Weights per block, in both formats.
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// `{f16 d, f16 m, u8 qs[16]}`: w = d·q + m, weight j in the low nibble of byte j (j < 16)
    /// or the high nibble of byte j − 16.
    Q4_1,
    /// `{f16 d, i8 qs[32]}`: w = d·q.
    Q8_0,
}

impl BlockFormat {
    pub fn from_gguf(ty: TensorType) -> Option<Self> {
        match ty {
            TensorType::Q4_1 => Some(Self::Q4_1),
            TensorType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// u32 words per block in [`QuantMatrix::gpu_words`]'s layout: the scales as f32 (d, and m
    /// for Q4_1), then the quants as stored.
    pub fn gpu_words(self) -> usize {
        match self {
            Self::Q4_1 => 2 + 4,
            Self::Q8_0 => 1 + 8,
        }
    }

    fn gguf(self) -> TensorType {
        match self {
            Self::Q4_1 => TensorType::Q4_1,
            Self::Q8_0 => TensorType::Q8_0,
        }
    }
}

/// A `[rows, cols]` matrix (PyTorch layout: `rows` outputs, `cols` inputs) stored as rows of
/// blocks along `cols`: a range of a shared buffer, so that a model's matrices can all point into
/// the one GGUF file read into memory instead of each holding a copy.
#[derive(Clone, PartialEq)]
pub struct QuantMatrix {
    pub format: BlockFormat,
    pub rows: usize,
    pub cols: usize,
    buffer: Arc<Vec<u8>>,
    start: usize,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantMatrix({:?}, [{}, {}])", self.format, self.rows, self.cols)
    }
}

impl QuantMatrix {
    /// `blocks` must hold `rows × cols / 32` whole blocks, and `cols` be a multiple of 32 (a
    /// block never spans two rows).
    pub fn new(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        blocks: Vec<u8>,
    ) -> Result<Self, String> {
        let len = blocks.len();
        Self::in_buffer(format, rows, cols, Arc::new(blocks), 0..len)
    }

    /// An f32 matrix `[rows, cols]` rounded to blocks, as llama.cpp's quantize does. Q4_1: per
    /// block the minimum m and the step d = (max − min) / 15, both f16, each value the nearest
    /// of m + d·q for q < 16. Q8_0: d = max |x| / 127 (f16), q = round(x / d). For a model that
    /// comes without the GGUF's own blocks (the GGUF's are used as they are).
    pub fn quantize(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        x: &[f32],
    ) -> Result<Self, String> {
        if x.len() != rows * cols || !cols.is_multiple_of(BLOCK) {
            return Err(format!(
                "{} values are not [{rows}, {cols}] in blocks of {BLOCK}",
                x.len()
            ));
        }
        let mut blocks = Vec::with_capacity(x.len() / BLOCK * format.bytes());
        for b in x.chunks_exact(BLOCK) {
            match format {
                BlockFormat::Q4_1 => {
                    let (lo, hi) =
                        b.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                    let (d, m) = (f16::from_f32((hi - lo) / 15.0), f16::from_f32(lo));
                    blocks.extend(d.to_le_bytes());
                    blocks.extend(m.to_le_bytes());
                    let (d, m) = (d.to_f32(), m.to_f32());
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let q = |v: f32| ((v - m) * inv).round().clamp(0.0, 15.0) as u8;
                    blocks.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
                }
                BlockFormat::Q8_0 => {
                    let d = f16::from_f32(b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0);
                    blocks.extend(d.to_le_bytes());
                    let d = d.to_f32();
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    blocks.extend(
                        b.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8),
                    );
                }
            }
        }
        Self::new(format, rows, cols, blocks)
    }

    /// The blocks at `range` of a shared buffer (a GGUF file in memory).
    pub fn in_buffer(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        buffer: Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
    ) -> Result<Self, String> {
        if range.end > buffer.len() || range.start > range.end {
            return Err(format!("blocks at {range:?} of a {}-byte buffer", buffer.len()));
        }
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("{cols} columns is not a multiple of the block size {BLOCK}"));
        }
        let want = rows.checked_mul(cols / BLOCK).and_then(|n| n.checked_mul(format.bytes()));
        if want != Some(range.len()) {
            return Err(format!(
                "{} bytes of {format:?} blocks for a [{rows}, {cols}] matrix (expected {want:?})",
                range.len()
            ));
        }
        Ok(Self { format, rows, cols, buffer, start: range.start })
    }

    fn blocks(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.rows * self.row_bytes()]
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.bytes()
    }

    fn row(&self, r: usize) -> &[u8] {
        self.rows_from(r, 1)
    }

    /// `count` rows from row `r`.
    fn rows_from(&self, r: usize, count: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.blocks()[r * n..(r + count) * n]
    }

    /// Bytes of blocks.
    pub fn size_bytes(&self) -> usize {
        self.rows * self.row_bytes()
    }

    /// All weights, `[rows, cols]` row-major, f32: the same values the f32 reference holds.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize(self.format.gguf(), self.blocks()).expect("Q4_1 and Q8_0 always dequantize")
    }

    /// The listed rows, dequantized one after another (an embedding lookup).
    pub fn dequantize_rows(&self, rows: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len() * self.cols);
        for &r in rows {
            out.extend(dequantize(self.format.gguf(), self.row(r)).expect("whole blocks"));
        }
        out
    }

    /// The blocks as the GPU kernels read them (`kernels.rs`): `[cols / 32 · words, rows]` u32
    /// words, word w of row r's block b at `(b·words + w)·rows + r`, so that invocations
    /// computing neighbouring outputs (rows) read neighbouring words. A block's words are its
    /// scales as f32 bits (WGSL has no f16 without an extension), then its quant bytes in their
    /// stored order, four to a word, little-endian: 0.75 bytes per weight for Q4_1 (0.625 as
    /// stored, 4 in f32), 1.125 for Q8_0.
    pub fn gpu_words(&self) -> Vec<u32> {
        let (words, per_row) = (self.format.gpu_words(), self.cols / BLOCK);
        let mut out = vec![0u32; per_row * words * self.rows];
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for r in 0..self.rows {
            for (b, blk) in self.row(r).chunks_exact(self.format.bytes()).enumerate() {
                let mut put = |w: usize, v: u32| out[(b * words + w) * self.rows + r] = v;
                put(0, f16_at(blk, 0).to_bits());
                let quants = match self.format {
                    BlockFormat::Q4_1 => {
                        put(1, f16_at(blk, 2).to_bits());
                        &blk[4..]
                    }
                    BlockFormat::Q8_0 => &blk[2..],
                };
                let first = words - quants.len() / 4;
                for (i, q) in quants.chunks_exact(4).enumerate() {
                    put(first + i, word(q));
                }
            }
        }
        out
    }

    /// The matrix with its rows reordered: row i of the result is row `from(i)` of this one.
    pub fn permute_rows(&self, from: impl Fn(usize) -> usize) -> Self {
        let mut blocks = Vec::with_capacity(self.size_bytes());
        for i in 0..self.rows {
            blocks.extend_from_slice(self.row(from(i)));
        }
        Self { buffer: Arc::new(blocks), start: 0, ..*self }
    }

    /// `y = x·Wᵀ`: x is `[n, cols]`, y `[n, rows]`, both row-major. Native builds split the rows
    /// of W across rayon's threads.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        Self::matmul_group(&[self], x, n, &mut [y]);
    }

    /// `ys[i] = x·mats[i]ᵀ` for matrices that share x (a layer's Q, K and V; gate and up): their
    /// rows stacked and split across the threads at once, one fork-join instead of one per
    /// matrix. Each output is computed exactly as [`matmul`](Self::matmul) computes it alone.
    pub fn matmul_group(mats: &[&QuantMatrix], x: &[f32], n: usize, ys: &mut [&mut [f32]]) {
        let cols = mats.first().map_or(0, |m| m.cols);
        assert!(mats.iter().all(|m| m.cols == cols), "the matrices must share x's columns");
        assert_eq!(x.len(), n * cols, "x must be [n, cols]");
        assert_eq!(ys.len(), mats.len(), "one output per matrix");
        for (m, y) in mats.iter().zip(ys.iter()) {
            assert_eq!(y.len(), n * m.rows, "y must be [n, rows]");
        }
        let kernel = Kernel::selected();
        let xsum = block_sums(x);
        // Row r of the stacked matrices: its matrix and its row there.
        let locate = |mut r: usize| {
            for m in mats {
                if r < m.rows {
                    return (*m, r);
                }
                r -= m.rows;
            }
            unreachable!("row within the stacked matrices")
        };
        // Each task fills rows of yᵀ (one weight row against every x row), transposed at the end.
        let total: usize = mats.iter().map(|m| m.rows).sum();
        let mut yt = vec![0.0f32; n * total];
        for_row_chunks(&mut yt, n, |first, mut out| {
            // The chunk's rows, one call per matrix they fall in.
            let mut row = first;
            while !out.is_empty() {
                let (m, r) = locate(row);
                let take = (m.rows - r).min(out.len() / n);
                let (o, rest) = out.split_at_mut(take * n);
                kernel.dot(m.format, m.rows_from(r, take), x, &xsum, n, cols, o);
                (row, out) = (row + take, rest);
            }
        });
        let mut parts = &yt[..];
        for (m, y) in mats.iter().zip(ys.iter_mut()) {
            let (part, rest) = parts.split_at(n * m.rows);
            parts = rest;
            for (j, col) in part.chunks_exact(n).enumerate() {
                for (r, &v) in col.iter().enumerate() {
                    y[r * m.rows + j] = v;
                }
            }
        }
    }
}

/// Runs `f(first_row, out_chunk)` over chunks of `out` (`per_row` values per row), in parallel
/// where there are threads.
fn for_row_chunks(out: &mut [f32], per_row: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    use rayon::prelude::*;
    let rows = out.len() / per_row;
    if rayon::current_num_threads() == 1 {
        return f(0, out);
    }
    // Enough rows per task that scheduling costs little next to the dots (≥ 64 K weights).
    let tasks = rayon::current_num_threads() * 4;
    let chunk = rows.div_ceil(tasks).max(16);
    out.par_chunks_mut(chunk * per_row).enumerate().for_each(|(c, o)| f(c * chunk, o));
}

/// The sum of each block of 32 values of x (`[n, cols]` → `[n, cols / 32]`), which turns Q4_1's
/// offset m into one multiply per block.
pub fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect()
}

/// The dot-product kernel this machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
}

impl Kernel {
    /// The fastest kernel this machine can run.
    pub fn detect() -> Self {
        *Self::available().last().expect("the scalar kernel always runs")
    }

    /// The kernel the products use: [`detect`](Self::detect)'s, or the one named by
    /// `EMLAB_QUANT_KERNEL` (scalar, avx2, avx512) when this machine can run it, so that a
    /// benchmark can compare them in one run.
    pub fn selected() -> Self {
        static SELECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *SELECTED.get_or_init(|| {
            let named = std::env::var("EMLAB_QUANT_KERNEL").ok();
            Self::available()
                .into_iter()
                .find(|k| named.as_deref() == Some(k.name()))
                .unwrap_or_else(Self::detect)
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => "avx512",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Self::Simd128 => "simd128",
        }
    }

    /// Every kernel this machine can run, slowest first (the tests compare each with f64).
    pub fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut v = vec![Self::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                v.push(Self::Avx2);
                if has!("avx512f") {
                    v.push(Self::Avx512);
                }
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        v.push(Self::Simd128);
        v
    }

    /// `out[j·n + r] = Σ_c x[r·cols + c] · w_j[c]` for r < n, where `w` holds rows w_j of blocks
    /// one after another and `xsum` the sums of x's blocks ([`block_sums`]). Rows are looped over
    /// inside the kernel: a call per row would cost about as much as a short row's arithmetic.
    #[allow(clippy::too_many_arguments)]
    pub fn dot(
        self,
        format: BlockFormat,
        w: &[u8],
        x: &[f32],
        xsum: &[f32],
        n: usize,
        cols: usize,
        out: &mut [f32],
    ) {
        let row_bytes = cols / BLOCK * format.bytes();
        assert!(row_bytes > 0 && w.len().is_multiple_of(row_bytes) && x.len() >= n * cols);
        assert!(out.len() >= w.len() / row_bytes * n && xsum.len() >= n * (cols / BLOCK));
        match self {
            Self::Scalar => scalar::dot(format, w, x, n, cols, out),
            // SAFETY: detect() saw avx2, fma and f16c; the lengths are checked above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { avx2::dot(format, w, x, xsum, n, cols, out) },
            // SAFETY: detect() saw avx512f besides avx2, fma and f16c; lengths checked above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { avx512::dot(format, w, x, xsum, n, cols, out) },
            // SAFETY: simd128 is enabled at build time; the lengths are checked above.
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Self::Simd128 => unsafe { simd128::dot(format, w, x, xsum, n, cols, out) },
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// An f16's value from its (little-endian) bits, without branches: the magnitude's bits shifted
/// into f32's place and rescaled by 2^112 (which also makes subnormals exact), then the sign.
/// Exact for every finite f16 (tested against `half`); wasm has no F16C to do this in one step.
#[cfg_attr(not(all(target_arch = "wasm32", target_feature = "simd128")), allow(dead_code))]
#[inline(always)]
fn f16_bits(le: u16) -> f32 {
    let h = u32::from(u16::from_le(le));
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
}

/// The body of the AVX2 and simd128 kernels for one row of blocks: the n rows of x four at a
/// time through the calling module's `tile::<R, Q4>` (R = 4, then the 1 to 3 left over), so that
/// each block's quants are converted once per four rows of x.
#[allow(unused_macros)] // the portable build has neither kernel
macro_rules! rows_in_tiles_of_four {
    ($format:expr, $w:expr, $x:expr, $xsum:expr, $n:expr, $cols:expr, $out:expr) => {{
        let (format, w, x, xsum, n, cols, out) = ($format, $w, $x, $xsum, $n, $cols, $out);
        let nb = cols / BLOCK;
        let mut r = 0;
        while r < n {
            let (x, xsum, o) = (&x[r * cols..], &xsum[r * nb..], &mut out[r..]);
            // SAFETY (all eight): x holds (n − r)·cols values, xsum (n − r)·nb and o n − r,
            // checked by the caller.
            match (n - r, format) {
                (1, BlockFormat::Q4_1) => unsafe { tile::<1, true>(w, x, xsum, cols, o) },
                (2, BlockFormat::Q4_1) => unsafe { tile::<2, true>(w, x, xsum, cols, o) },
                (3, BlockFormat::Q4_1) => unsafe { tile::<3, true>(w, x, xsum, cols, o) },
                (_, BlockFormat::Q4_1) => unsafe { tile::<4, true>(w, x, xsum, cols, o) },
                (1, BlockFormat::Q8_0) => unsafe { tile::<1, false>(w, x, xsum, cols, o) },
                (2, BlockFormat::Q8_0) => unsafe { tile::<2, false>(w, x, xsum, cols, o) },
                (3, BlockFormat::Q8_0) => unsafe { tile::<3, false>(w, x, xsum, cols, o) },
                (_, BlockFormat::Q8_0) => unsafe { tile::<4, false>(w, x, xsum, cols, o) },
            }
            r += 4;
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

#[cfg(test)]
/// Random blocks with real-looking scales (f16 d in ±0.05, m in ±0.1).
pub(crate) fn random_matrix(
    format: BlockFormat,
    rows: usize,
    cols: usize,
    seed: u64,
) -> QuantMatrix {
    let mut rng = crate::sampling::Rng::new(seed);
    let mut u = || rng.next_f64();
    let mut blocks = Vec::new();
    for _ in 0..rows * cols / BLOCK {
        let d = f16::from_f32(((u() * 2.0 - 1.0) * 0.05) as f32);
        blocks.extend(d.to_le_bytes());
        if format == BlockFormat::Q4_1 {
            blocks.extend(f16::from_f32(((u() * 2.0 - 1.0) * 0.1) as f32).to_le_bytes());
        }
        let q = if format == BlockFormat::Q4_1 { 16 } else { 32 };
        blocks.extend((0..q).map(|_| (u() * 256.0) as u8));
    }
    QuantMatrix::new(format, rows, cols, blocks).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Rng;

    fn random_x(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    /// The product in f64 from the dequantized weights: what every kernel approximates.
    fn exact(m: &QuantMatrix, x: &[f32], n: usize) -> Vec<f64> {
        let w = m.dequantize();
        let mut y = vec![0.0; n * m.rows];
        for r in 0..n {
            for j in 0..m.rows {
                y[r * m.rows + j] =
                    (0..m.cols).map(|c| x[r * m.cols + c] as f64 * w[j * m.cols + c] as f64).sum();
            }
        }
        y
    }

    #[test]
    fn every_kernel_matches_the_dequantized_product() {
        for format in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
            // Odd row counts, one block per row, rows of x not a multiple of the tile (4).
            for (rows, cols, n) in [
                (1, 32, 1),
                (7, 64, 3),
                (33, 96, 5),
                (64, 576, 1),
                (17, 1536, 9),
                (5, 96, 19),
                (7, 1536, 34),
            ] {
                let m = random_matrix(format, rows, cols, (rows * 31 + n) as u64);
                let x = random_x(n * cols, rows as u64);
                let want = exact(&m, &x, n);
                for kernel in Kernel::available() {
                    // Every row of W against all n rows of x in one call, through the kernel's
                    // loop over W's rows and its tiles of several rows of x.
                    let mut got = vec![0.0f32; rows * n];
                    kernel.dot(
                        format,
                        m.rows_from(0, rows),
                        &x,
                        &block_sums(&x),
                        n,
                        cols,
                        &mut got,
                    );
                    for j in 0..rows {
                        for (r, g) in got[j * n..(j + 1) * n].iter().enumerate() {
                            let w = want[r * rows + j];
                            // f32 sums of `cols` products of size ≤ ~0.9: error ≪ 1e-4 · √cols.
                            assert!(
                                (*g as f64 - w).abs()
                                    <= 1e-5 * (cols as f64).sqrt() + 1e-6 * w.abs(),
                                "{kernel:?} {format:?} [{rows}, {cols}] row {j} of x {r}: {g} vs {w}",
                            );
                        }
                    }
                }
                // The threaded product, through the tiles of several rows of x.
                let mut y = vec![0.0; n * rows];
                m.matmul(&x, n, &mut y);
                for (g, w) in y.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() <= 1e-5 * (cols as f64).sqrt() + 1e-6 * w.abs());
                }
            }
        }
    }

    /// A row of x gets the same bits whatever rows are multiplied beside it: a request's answer
    /// must not depend on the others in its batch.
    #[test]
    fn a_rows_product_does_not_depend_on_the_rows_beside_it() {
        // Every remainder of the weight rows (by 4) and rows of x (by 2 and 8), odd and even
        // block counts.
        for (format, rows, cols) in [
            (BlockFormat::Q4_1, 40, 576),
            (BlockFormat::Q8_0, 40, 576),
            (BlockFormat::Q4_1, 39, 96),
            (BlockFormat::Q8_0, 38, 64),
            (BlockFormat::Q4_1, 37, 1536),
        ] {
            let m = random_matrix(format, rows, cols, 9);
            let x = random_x(41 * cols, 4);
            for kernel in Kernel::available() {
                let product = |x: &[f32], n: usize| {
                    let mut y = vec![0.0f32; rows * n];
                    kernel.dot(format, m.rows_from(0, rows), x, &block_sums(x), n, cols, &mut y);
                    y
                };
                let alone: Vec<Vec<f32>> =
                    (0..41).map(|r| product(&x[r * cols..(r + 1) * cols], 1)).collect();
                // Below 12 rows and from 12 on, kernels may take different paths.
                for n in [2, 4, 8, 9, 11, 15, 16, 17, 40, 41] {
                    let y = product(&x[..n * cols], n);
                    for (j, col) in y.chunks_exact(n).enumerate() {
                        for (r, v) in col.iter().enumerate() {
                            assert_eq!(
                                v.to_bits(),
                                alone[r][j].to_bits(),
                                "{kernel:?} {format:?} n {n}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_group_product_equals_each_product_alone() {
        // Q, K and V shapes in miniature, mixed formats, rows of x below and above the tile (4).
        let mats = [
            random_matrix(BlockFormat::Q4_1, 96, 64, 1),
            random_matrix(BlockFormat::Q8_0, 32, 64, 2),
            random_matrix(BlockFormat::Q4_1, 33, 64, 3),
        ];
        for n in [1, 3, 6] {
            let x = random_x(n * 64, n as u64);
            let mut alone: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0; n * m.rows]).collect();
            for (m, y) in mats.iter().zip(&mut alone) {
                m.matmul(&x, n, y);
            }
            let mut group: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0; n * m.rows]).collect();
            let mut outs: Vec<&mut [f32]> = group.iter_mut().map(|y| y.as_mut_slice()).collect();
            QuantMatrix::matmul_group(&mats.each_ref(), &x, n, &mut outs);
            assert_eq!(group, alone, "n = {n}");
            for (m, y) in mats.iter().zip(&group) {
                let want = exact(m, &x, n);
                assert!(y.iter().zip(&want).all(|(g, w)| (*g as f64 - w).abs() < 1e-3));
            }
        }
    }

    /// Quantizing puts each value within half a step of where it was (plus the f16 rounding of
    /// the block's scale and minimum), and quantizing the dequantized blocks gives them back.
    #[test]
    fn quantizing_rounds_each_value_to_its_block_grid() {
        for format in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
            let (rows, cols) = (5, 96);
            let x: Vec<f32> = random_x(rows * cols, 8).iter().map(|v| v * 3.0).collect();
            let m = QuantMatrix::quantize(format, rows, cols, &x).unwrap();
            let back = m.dequantize();
            for (b, (xs, ys)) in x.chunks_exact(BLOCK).zip(back.chunks_exact(BLOCK)).enumerate() {
                let (lo, hi) =
                    xs.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let step = match format {
                    BlockFormat::Q4_1 => (hi - lo) / 15.0,
                    BlockFormat::Q8_0 => lo.abs().max(hi.abs()) / 127.0,
                };
                for (x, y) in xs.iter().zip(ys) {
                    assert!(
                        (x - y).abs() <= step * 0.5 + 2e-3 * hi.abs().max(lo.abs()),
                        "{format:?} block {b}: {x} -> {y}"
                    );
                }
            }
            let again = QuantMatrix::quantize(format, rows, cols, &back).unwrap();
            assert_eq!(again.dequantize(), back, "{format:?}: a grid value stays");
        }
        assert!(QuantMatrix::quantize(BlockFormat::Q4_1, 2, 48, &[0.0; 96]).is_err());
    }

    #[test]
    fn dequantizing_rows_matches_the_whole_matrix() {
        let m = random_matrix(BlockFormat::Q8_0, 5, 64, 3);
        let all = m.dequantize();
        assert_eq!(m.dequantize_rows(&[4, 0]), [&all[256..320], &all[0..64]].concat());
        let p = m.permute_rows(|i| 4 - i);
        assert_eq!(p.dequantize()[0..64], all[256..320]);
    }

    /// Weight (r, c) read from [`QuantMatrix::gpu_words`] as the GPU kernels read it.
    fn weight_from_gpu_words(m: &QuantMatrix, words: &[u32], r: usize, c: usize) -> f32 {
        let (b, j, per) = (c / BLOCK, c % BLOCK, m.format.gpu_words());
        let at = |w: usize| words[(b * per + w) * m.rows + r];
        let d = f32::from_bits(at(0));
        match m.format {
            BlockFormat::Q4_1 => {
                let word = at(2 + (j % 16) / 4);
                let q = (word >> (8 * (j % 4) + 4 * (j / 16))) & 0xF;
                d * q as f32 + f32::from_bits(at(1))
            }
            BlockFormat::Q8_0 => {
                let q = (at(1 + j / 4) >> (8 * (j % 4))) & 0xFF;
                d * ((q ^ 0x80) as f32 - 128.0)
            }
        }
    }

    #[test]
    fn gpu_words_hold_every_weight_in_the_kernels_layout() {
        for (format, rows, cols) in
            [(BlockFormat::Q4_1, 7, 96), (BlockFormat::Q8_0, 5, 64), (BlockFormat::Q4_1, 1, 32)]
        {
            let m = random_matrix(format, rows, cols, 11);
            let words = m.gpu_words();
            assert_eq!(words.len(), cols / BLOCK * format.gpu_words() * rows);
            let w = m.dequantize();
            for r in 0..rows {
                for c in 0..cols {
                    let got = weight_from_gpu_words(&m, &words, r, c);
                    assert_eq!(got.to_bits(), w[r * cols + c].to_bits(), "{format:?} ({r}, {c})");
                }
            }
        }
    }

    #[test]
    fn f16_bits_gives_every_finite_f16_exactly() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            if h.is_finite() {
                assert_eq!(f16_bits(bits.to_le()).to_bits(), h.to_f32().to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(QuantMatrix::new(BlockFormat::Q4_1, 2, 48, vec![0; 60]).is_err());
        assert!(QuantMatrix::new(BlockFormat::Q4_1, 2, 32, vec![0; 39]).is_err());
        assert!(QuantMatrix::new(BlockFormat::Q8_0, 2, 32, vec![0; 68]).is_ok());
    }
}
