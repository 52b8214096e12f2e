//! The portable dot-product kernel over blocks: the reference the vector kernels are tested
//! against, and what runs where none of them does.

use super::*;

pub fn dot(format: BlockFormat, w: &[u8], x: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    let row_bytes = cols / BLOCK * format.bytes();
    for (w, out) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        row(format, w, x, n, cols, out);
    }
}

fn row(format: BlockFormat, w: &[u8], x: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    for (r, o) in out[..n].iter_mut().enumerate() {
        let x = &x[r * cols..(r + 1) * cols];
        let mut acc = 0.0f32;
        for (blk, x) in w.chunks_exact(format.bytes()).zip(x.chunks_exact(BLOCK)) {
            match format {
                BlockFormat::Q4_1 => {
                    let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                    for (j, &q) in blk[4..].iter().enumerate() {
                        acc += x[j] * (d * (q & 0x0f) as f32 + m);
                        acc += x[j + 16] * (d * (q >> 4) as f32 + m);
                    }
                }
                BlockFormat::Q8_0 => {
                    let d = f16_at(blk, 0);
                    for (j, &q) in blk[2..].iter().enumerate() {
                        acc += x[j] * (d * (q as i8) as f32);
                    }
                }
            }
        }
        *o = acc;
    }
}
