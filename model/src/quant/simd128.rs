//! The wasm simd128 dot-product kernel over blocks (the page's CPU path).

use std::arch::wasm32::*;

use super::*;

/// Each row of blocks in `w` against the n rows of x (see [`Kernel::dot`]).
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
        rows_in_tiles_of_four!(format, w, x, xsum, n, cols, out);
    }
}

/// A block's 32 quants as eight f32 vectors, in x's order (Q4_1: the 16 low nibbles, then
/// the 16 high ones; Q8_0: its signed bytes).
#[inline(always)]
unsafe fn quants<const Q4: bool>(blk: *const u8) -> [v128; 8] {
    // SAFETY: the caller passes a whole block.
    let halves = unsafe {
        if Q4 {
            let qs = v128_load(blk.add(4) as *const v128);
            [v128_and(qs, u8x16_splat(0x0f)), u8x16_shr(qs, 4)]
        } else {
            [v128_load(blk.add(2) as *const v128), v128_load(blk.add(18) as *const v128)]
        }
    };
    let mut q = [f32x4_splat(0.0); 8];
    for (h, half) in halves.into_iter().enumerate() {
        // Nibbles and bytes widen to the same i32 whether read signed or not, but Q8_0's must
        // be read signed.
        let (a, b) = if Q4 {
            (u16x8_extend_low_u8x16(half), u16x8_extend_high_u8x16(half))
        } else {
            (i16x8_extend_low_i8x16(half), i16x8_extend_high_i8x16(half))
        };
        let words = [
            i32x4_extend_low_i16x8(a),
            i32x4_extend_high_i16x8(a),
            i32x4_extend_low_i16x8(b),
            i32x4_extend_high_i16x8(b),
        ];
        for (k, w) in words.into_iter().enumerate() {
            q[h * 4 + k] = f32x4_convert_i32x4(w);
        }
    }
    q
}

/// R rows of x against one row of blocks (Q4_1 when `Q4`, else Q8_0), computing
/// `d·Σ x·q + m·Σ x` per block, as the AVX2 kernel does: the weights are never formed.
unsafe fn tile<const R: usize, const Q4: bool>(
    w: &[u8],
    x: &[f32],
    xsum: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    let (bytes, nb) = (if Q4 { 20 } else { 34 }, cols / BLOCK);
    let mut acc = [f32x4_splat(0.0); R];
    let mut offsets = [0.0f32; R];
    for b in 0..nb {
        // SAFETY: block b lies inside w (w holds nb blocks), the rows' x and xsum inside theirs.
        unsafe {
            let blk = w.as_ptr().add(b * bytes);
            let q = quants::<Q4>(blk);
            let d = f32x4_splat(f16_bits(blk.cast::<u16>().read_unaligned()));
            let m = if Q4 { f16_bits(blk.add(2).cast::<u16>().read_unaligned()) } else { 0.0 };
            for r in 0..R {
                let xp = x.as_ptr().add(r * cols + b * BLOCK) as *const v128;
                // Two chains of four products, so that the adds do not all wait on one.
                let mut t = [f32x4_splat(0.0); 2];
                for (k, q) in q.iter().enumerate() {
                    t[k & 1] = f32x4_add(t[k & 1], f32x4_mul(v128_load(xp.add(k)), *q));
                }
                acc[r] = f32x4_add(acc[r], f32x4_mul(d, f32x4_add(t[0], t[1])));
                if Q4 {
                    offsets[r] += m * *xsum.get_unchecked(r * nb + b);
                }
            }
        }
    }
    for ((o, s), offset) in out.iter_mut().zip(acc).zip(offsets) {
        *o = f32x4_extract_lane::<0>(s)
            + f32x4_extract_lane::<1>(s)
            + f32x4_extract_lane::<2>(s)
            + f32x4_extract_lane::<3>(s)
            + offset;
    }
}
