//! The AVX2 + FMA + F16C dot-product kernel over blocks (x86-64).

use std::arch::x86_64::*;

use super::*;

/// Each row of blocks in `w` against the n rows of x (see [`Kernel::dot`]).
#[target_feature(enable = "avx2,fma,f16c")]
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
    let row_bytes = cols / BLOCK * format.bytes();
    for (w, out) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        // SAFETY: the caller's checks hold for each row.
        unsafe { row(format, w, x, xsum, n, cols, out) }
    }
}

/// Rows of x are taken four at a time, so that each block's weights are converted once per
/// four rows.
#[target_feature(enable = "avx2,fma,f16c")]
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
    rows_in_tiles_of_four!(format, w, x, xsum, n, cols, out);
}

/// Eight raw quants as f32 from the low 8 bytes of `q` (unsigned nibbles, or signed bytes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn quants<const Q4: bool>(q: __m128i) -> __m256 {
    if Q4 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q))
    } else {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))
    }
}

/// R rows of x against one row of blocks (Q4_1 when `Q4`, else Q8_0). Per block and row,
/// Σ x·(d·q + m) is computed as d·Σ x·q + m·Σ x, with Σ x of each block precomputed (`xsum`):
/// the weights are never formed, which halves the work per block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const Q4: bool>(
    w: &[u8],
    x: &[f32],
    xsum: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    let (bytes, nb) = (if Q4 { 20 } else { 34 }, cols / BLOCK);
    // Two accumulators per row, for even and odd blocks: each block's update waits on the
    // one two blocks back, not the one before.
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let mut offsets = [0.0f32; R];
    let nibble = _mm_set1_epi8(0x0f);
    // One block into accumulator K of each row (K a constant, so the accumulators stay in
    // registers).
    macro_rules! block {
        ($b:expr, $k:tt) => {
            // SAFETY: block $b lies inside w (w holds nb blocks), x rows and xsum inside theirs.
            unsafe {
                let b = $b;
                let blk = w.as_ptr().add(b * bytes);
                let (d, m, q) = if Q4 {
                    // d and m side by side: one 32-bit load, two f16 → f32 conversions.
                    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
                    let qs = _mm_loadu_si128(blk.add(4) as *const __m128i);
                    let lo = _mm_and_si128(qs, nibble);
                    let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), nibble);
                    let q = [
                        quants::<true>(lo),
                        quants::<true>(_mm_srli_si128(lo, 8)),
                        quants::<true>(hi),
                        quants::<true>(_mm_srli_si128(hi, 8)),
                    ];
                    (_mm256_broadcastss_ps(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)), q)
                } else {
                    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(
                        (blk as *const u16).read_unaligned() as i32
                    ));
                    let q0 = _mm_loadu_si128(blk.add(2) as *const __m128i);
                    let q1 = _mm_loadu_si128(blk.add(18) as *const __m128i);
                    let q = [
                        quants::<false>(q0),
                        quants::<false>(_mm_srli_si128(q0, 8)),
                        quants::<false>(q1),
                        quants::<false>(_mm_srli_si128(q1, 8)),
                    ];
                    (_mm256_broadcastss_ps(d), 0.0, q)
                };
                for r in 0..R {
                    let xp = x.as_ptr().add(r * cols + b * BLOCK);
                    let t0 = _mm256_mul_ps(_mm256_loadu_ps(xp), q[0]);
                    let t1 = _mm256_mul_ps(_mm256_loadu_ps(xp.add(8)), q[1]);
                    let t0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(16)), q[2], t0);
                    let t1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(24)), q[3], t1);
                    acc[r][$k] = _mm256_fmadd_ps(d, _mm256_add_ps(t0, t1), acc[r][$k]);
                    if Q4 {
                        offsets[r] += m * *xsum.get_unchecked(r * nb + b);
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
    for ((o, acc), offset) in out.iter_mut().zip(acc).zip(offsets) {
        let s = _mm256_add_ps(acc[0], acc[1]);
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        *o = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s))) + offset;
    }
}
