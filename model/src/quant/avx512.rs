//! The AVX-512 dot-product kernel over blocks (x86-64).

use std::arch::x86_64::*;

use super::*;

/// Each row of blocks in `w` against the n rows of x (see [`Kernel::dot`]).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot(
    format: BlockFormat,
    w: &[u8],
    x: &[f32],
    xsum: &[f32],
    n: usize,
    cols: usize,
    out: &mut [f32],
) {
    if n >= PANEL_MIN_ROWS {
        // SAFETY: the caller's checks.
        return unsafe { panel(format, w, x, n, cols, out) };
    }
    let row_bytes = cols / BLOCK * format.bytes();
    for (w, out) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        // SAFETY: the caller's checks hold for each row.
        unsafe { row(format, w, x, xsum, n, cols, out) }
    }
}

/// From this many rows of x on (prompts, large batches) [`panel`] is faster than [`row`]'s
/// tiles; both give the same bits.
const PANEL_MIN_ROWS: usize = 12;

/// Weight rows per panel, and rows of x per step inside one: 2·M·R accumulators, 2·R x
/// vectors and two weight vectors, 22 of AVX-512's 32 registers (4 × 3 needs all 32 and
/// spills; 6 × 2's expanded rows of down_proj no longer fit L1).
const M: usize = 4;
const R: usize = 2;

/// Many rows of x against rows of blocks, as a GEMM does it: M weight rows at a time are
/// expanded once to f32 (d·q + m, exactly as [`tile`] expands them) into a buffer that stays
/// in L1, then R rows of x at a time take their products with all M, so each load of x
/// feeds M rows' FMAs and each expansion serves all n rows. [`tile`] reloads x for every
/// weight row and expands each block again for every 8 rows of x. Per output the FMAs and
/// their order are [`tile`]'s (two accumulators, even and odd blocks), so a row gets the same
/// bits whichever path its batch took.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn panel(format: BlockFormat, w: &[u8], x: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    let row_bytes = cols / BLOCK * format.bytes();
    let rows = w.len() / row_bytes;
    let mut expanded = vec![0.0f32; M * cols];
    let mut j = 0;
    while j < rows {
        let m = (rows - j).min(M);
        for (i, dst) in expanded.chunks_exact_mut(cols).take(m).enumerate() {
            let src = &w[(j + i) * row_bytes..(j + i + 1) * row_bytes];
            // SAFETY: src holds cols / 32 blocks, dst cols values.
            unsafe { expand(format, src, dst) };
        }
        let o = &mut out[j * n..];
        let mut r = 0;
        while r < n {
            let (xr, or) = (&x[r * cols..], &mut o[r..]);
            // SAFETY (all): expanded holds m rows of cols, xr (n − r)·cols values and or
            // the outputs of m weight rows at stride n.
            macro_rules! steps {
                ($(($m:literal, $r:literal))*) => {
                    match (m, (n - r).min(R)) {
                        $(($m, $r) => unsafe { step::<$m, $r>(&expanded, xr, cols, n, or) },)*
                        _ => unreachable!("m ≤ M and r ≤ R"),
                    }
                };
            }
            steps!((4, 2)(4, 1)(3, 2)(3, 1)(2, 2)(2, 1)(1, 2)(1, 1));
            r += R;
        }
        j += M;
    }
}

/// One row of blocks to its f32 weights, the vectors [`tile`] computes for each block.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn expand(format: BlockFormat, w: &[u8], dst: &mut [f32]) {
    for (b, d32) in dst.chunks_exact_mut(BLOCK).enumerate() {
        // SAFETY: block b lies inside w, and d32 holds 32 values.
        unsafe {
            let [lo, hi] = match format {
                BlockFormat::Q4_1 => expand_block::<true>(w.as_ptr().add(b * 20)),
                BlockFormat::Q8_0 => expand_block::<false>(w.as_ptr().add(b * 34)),
            };
            _mm512_storeu_ps(d32.as_mut_ptr(), lo);
            _mm512_storeu_ps(d32.as_mut_ptr().add(16), hi);
        }
    }
}

/// The 32 weights of the block at `blk` in f32, two vectors: d·q + m (Q4_1 when `Q4`) or
/// d·q (Q8_0). [`tile`] and [`panel`] both expand through it, so they see the same weights.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn expand_block<const Q4: bool>(blk: *const u8) -> [__m512; 2] {
    // SAFETY: blk points at a whole block (20 bytes for Q4_1, 34 for Q8_0).
    unsafe {
        if Q4 {
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let (d, m) =
                (_mm512_broadcastss_ps(dm), _mm512_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dm))));
            let nibble = _mm_set1_epi8(0x0f);
            let qs = _mm_loadu_si128(blk.add(4) as *const __m128i);
            let lo = _mm_and_si128(qs, nibble);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), nibble);
            [
                _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), m),
                _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), m),
            ]
        } else {
            let d = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(
                (blk as *const u16).read_unaligned() as i32,
            )));
            let q = |at: usize| {
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    blk.add(at) as *const __m128i
                )))
            };
            [_mm512_mul_ps(d, q(2)), _mm512_mul_ps(d, q(18))]
        }
    }
}

/// MM expanded weight rows against RR rows of x: `out[i·n + r]` for i < MM, r < RR.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn step<const MM: usize, const RR: usize>(
    expanded: &[f32],
    x: &[f32],
    cols: usize,
    n: usize,
    out: &mut [f32],
) {
    let nb = cols / BLOCK;
    let mut acc = [[[_mm512_setzero_ps(); 2]; RR]; MM];
    macro_rules! block {
        ($b:expr, $k:tt) => {
            // SAFETY: block $b lies inside each row of x and of the expanded weights.
            unsafe {
                let b = $b;
                let mut xv = [[_mm512_setzero_ps(); 2]; RR];
                for (r, xv) in xv.iter_mut().enumerate() {
                    let xp = x.as_ptr().add(r * cols + b * BLOCK);
                    *xv = [_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16))];
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let wp = expanded.as_ptr().add(i * cols + b * BLOCK);
                    let (w0, w1) = (_mm512_loadu_ps(wp), _mm512_loadu_ps(wp.add(16)));
                    for (acc, xv) in acc.iter_mut().zip(&xv) {
                        let a = _mm512_fmadd_ps(xv[0], w0, acc[$k]);
                        acc[$k] = _mm512_fmadd_ps(xv[1], w1, a);
                    }
                }
            }
        };
    }
    let mut b = 0;
    while b + 1 < nb {
        block!(b, 0);
        block!(b + 1, 1);
        b += 2;
    }
    if b < nb {
        block!(b, 0);
    }
    for (i, acc) in acc.iter().enumerate() {
        for (r, acc) in acc.iter().enumerate() {
            out[i * n + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
    }
}

/// As AVX2's kernel, sixteen lanes wide: a block is two vectors, and its quants
/// widen from bytes to f32 in one step each; rows of x are taken up to eight at a time.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn row(
    format: BlockFormat,
    w: &[u8],
    x: &[f32],
    xsum: &[f32],
    n: usize,
    cols: usize,
    out: &mut [f32],
) {
    let nb = cols / BLOCK;
    let mut r = 0;
    while r < n {
        let (x, xsum, o) = (&x[r * cols..], &xsum[r * nb..], &mut out[r..]);
        // SAFETY (all): x holds (n − r)·cols values, xsum (n − r)·nb and o n − r, checked by
        // the caller.
        macro_rules! tiles {
            ($($rows:literal)*) => {
                match (n - r, format) {
                    $(($rows, BlockFormat::Q4_1) => unsafe { tile::<$rows, true>(w, x, xsum, cols, o) },
                    ($rows, BlockFormat::Q8_0) => unsafe { tile::<$rows, false>(w, x, xsum, cols, o) },)*
                    (_, BlockFormat::Q4_1) => unsafe { tile::<8, true>(w, x, xsum, cols, o) },
                    (_, BlockFormat::Q8_0) => unsafe { tile::<8, false>(w, x, xsum, cols, o) },
                }
            };
        }
        tiles!(1 2 3 4 5 6 7);
        r += 8;
    }
}

/// R rows of x against one row of blocks (Q4_1 when `Q4`, else Q8_0). Each block is expanded
/// once into its f32 weights, d·q + m (d·q for Q8_0), in two vectors, and every row of x takes
/// its dot product with them: two FMAs per row and block, the expansion shared by the R rows.
/// (AVX2's d·Σ x·q + m·Σ x costs a multiply and a scalar FMA more per row, which is what
/// products over many rows, prompts, are made of.) Every row is computed the same way
/// whatever R is, so a row's result does not depend on the rows beside it.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn tile<const R: usize, const Q4: bool>(
    w: &[u8],
    x: &[f32],
    _xsum: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    let (bytes, nb) = (if Q4 { 20 } else { 34 }, cols / BLOCK);
    // Two accumulators per row (even and odd blocks), so that consecutive blocks' updates
    // do not wait on each other.
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    macro_rules! block {
        ($b:expr, $k:tt) => {
            // SAFETY: block $b lies inside w (w holds nb blocks), x rows inside theirs.
            unsafe {
                let b = $b;
                let wv = expand_block::<Q4>(w.as_ptr().add(b * bytes));
                for r in 0..R {
                    let xp = x.as_ptr().add(r * cols + b * BLOCK);
                    let a = _mm512_fmadd_ps(_mm512_loadu_ps(xp), wv[0], acc[r][$k]);
                    acc[r][$k] = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(16)), wv[1], a);
                }
            }
        };
    }
    let mut b = 0;
    while b + 1 < nb {
        block!(b, 0);
        block!(b + 1, 1);
        b += 2;
    }
    if b < nb {
        block!(b, 0);
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
}
