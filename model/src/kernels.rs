//! GPU kernels for one decoding step: a few rows, one new token each.
//!
//! burn runs a decoding step as ~40 kernels per layer (every reshape, slice, cat, broadcast and
//! reduction its own launch, and its tiled matmul synchronises workgroups many times per product).
//! On a software WebGPU adapter each launch and each barrier is expensive, so a token took seconds.
//! These kernels do a layer in seven launches, none with a barrier: every invocation computes one
//! output value with a plain loop. They are written for few rows (decoding), where that is also
//! what the arithmetic needs: a matrix-vector product reads each weight once.
//!
//! A LoRA adapter adds its side path `scale·(x·A)·B` to each group of products that read one
//! input (Q, K and V; o; gate and up; down): two more launches per group, `x·A` for the
//! group's adapted members, then its `·B` half (`lora_up_kernel`), which the group's own kernel
//! adds after the norm. A member without an adapter gets zeros, so partial targets work.
//!
//! An input a kernel does not use (no adapter, no residual) is not bound: WebGPU guarantees only
//! 8 storage buffers per shader stage (cubecl binds one more for its metadata), and the widest
//! kernel here binds 7.
//!
//! Each kernel matches the reference ops in `model.rs` (same formulas, same order of operations
//! where it matters); `tests/tests/gpu_decode.rs` holds them to it on lavapipe.

use burn::backend::backend_extension;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::cache::MASK_BIAS;
use crate::quant::{BLOCK, BlockFormat};

/// Invocations per workgroup. No kernel here shares anything within a workgroup.
const GROUP: u32 = 64;

/// Values per load in the matrix products: every width they see is a multiple of it
/// ([`supported_width`]).
const VECTOR: usize = 4;

/// Whether the products can read a dimension of this size `VECTOR` values at a time.
pub fn supported_width(n: usize) -> bool {
    n.is_multiple_of(VECTOR)
}

/// How a product's weights are held: dense `[k, n]` values of the activations' type, or the
/// GGUF's blocks as `u32` words (`[k / 32 · words, n]`, [`crate::quant::QuantMatrix::gpu_words`]),
/// dequantized inside the dot product as the CPU's kernels do. Each is its own shader.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Layout {
    Dense,
    Blocks(BlockFormat),
}

/// Rows per invocation in the products when there are several (a prompt, a batch): one load of
/// a weight serves that many rows. One row alone gets 1, so decoding computes nothing twice.
const ROW_TILE: usize = 8;

/// Row `r0 + i` of an `m`-row input, or its last row past the end (read, never written), so that
/// every load stays in bounds.
#[cube]
fn clamp_row(r0: usize, i: usize, m: usize) -> usize {
    if r0 + i < m { r0 + i } else { m - 1 }
}

/// `dots[i] += Σ_k x[r0 + i, k]·γ[k]·w[k, col..col + W]` for `tile` rows (`W` the vector width):
/// `x` and `γ` are read `W` values along `k` at a time and each load of `w` serves `tile·W`
/// multiply-adds. Loads, not arithmetic, are what a software GPU spends its time on (each is
/// bounds-checked). With `squares`, `ssq[i]` also gathers Σ x² of the rows from the same loads,
/// so that the norm costs no second pass over x (the head's kernel does the same).
#[cube]
#[allow(clippy::too_many_arguments)]
fn gamma_dots<F: Float, W: Numeric, N: Size>(
    x: &Tensor<Vector<F, N>>,
    gamma: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<W, N>>,
    r0: usize,
    col: usize,
    dots: &mut Array<Vector<F, N>>,
    ssq: &mut Array<Vector<F, N>>,
    #[comptime] tile: usize,
    #[comptime] squares: bool,
) {
    let (n, vs) = (w.shape(1), w.vector_size());
    let (m, kv) = (x.shape(0), x.shape(1) / vs);
    let mut ws = Array::<Vector<F, N>>::new(vs);
    for kk in 0..kv {
        #[unroll]
        for l in 0..vs {
            ws[l] = Vector::cast_from(w[((kk * vs + l) * n + col) / vs]);
        }
        let g = gamma[kk];
        #[unroll]
        for i in 0..tile {
            let xv = x[clamp_row(r0, i, m) * kv + kk];
            if comptime!(squares) {
                ssq[i] += xv * xv;
            }
            let xg = xv * g;
            #[unroll]
            for l in 0..vs {
                dots[i] += Vector::new(xg.extract(l)) * ws[l];
            }
        }
    }
}

#[cube]
fn zeros<F: Float, N: Size>(#[comptime] tile: usize) -> Array<Vector<F, N>> {
    let mut a = Array::<Vector<F, N>>::new(tile);
    #[unroll]
    for i in 0..tile {
        a[i] = Vector::new(F::new(0.0));
    }
    a
}

/// `dots[i] += Σ_k x'[r0 + i, k]·w[k, col..col + W]` for `tile` rows over weights held as
/// blocks ([`Layout::Blocks`]), `x' = x·γ` when `normed` (γ is not read otherwise), gathering
/// `ssq` as [`gamma_dots`] does when `squares`. Per block, as on the CPU: `d·Σ x'·q (+ m·Σ x')`.
/// A word holds the quants of four neighbouring weights for Q8_0; for Q4_1 its low nibbles are
/// weights j..j + 4 and its high nibbles j + 16..j + 20, so each word pairs two loads of x.
#[cube]
#[allow(clippy::too_many_arguments)]
fn block_dots<F: Float, W: Numeric, N: Size>(
    x: &Tensor<Vector<F, N>>,
    gamma: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<W, N>>,
    r0: usize,
    col: usize,
    dots: &mut Array<Vector<F, N>>,
    ssq: &mut Array<Vector<F, N>>,
    #[comptime] tile: usize,
    #[comptime] normed: bool,
    #[comptime] squares: bool,
    #[comptime] q4: bool,
) {
    let vs = w.vector_size();
    let words = comptime!(if q4 { BlockFormat::Q4_1 } else { BlockFormat::Q8_0 }.gpu_words());
    let scales = comptime!(if q4 { 2usize } else { 1usize });
    let quant_words = comptime!(words - scales);
    // x's vectors per block, and how far the high nibbles' weights are from the low ones'.
    let per_block = comptime!(BLOCK / vs);
    let high = comptime!(16 / vs);
    let (n, c) = (w.shape(1) / vs, col / vs);
    let (m, kv) = (x.shape(0), x.shape(1) / vs);
    let (nibble, byte, sign) = (Vector::new(15u32), Vector::new(255u32), Vector::new(128u32));
    let mut acc = zeros::<F, N>(tile);
    let mut sums = zeros::<F, N>(tile);
    for b in 0..w.shape(0) / words {
        let at = b * words * n + c;
        #[unroll]
        for i in 0..tile {
            acc[i] = Vector::new(F::new(0.0));
            sums[i] = Vector::new(F::new(0.0));
        }
        // Not unrolled: unrolling this loop too made the prompt's kernels (8 rows per invocation)
        // some 12,000 lines of WGSL, which SwiftShader took minutes to compile.
        for q in 0..quant_words {
            let word = Vector::<u32, N>::cast_from(w[at + (scales + q) * n]);
            // The four weights of each lane's word, low nibbles or bytes (lo) and high nibbles (hi).
            let mut lo = Array::<Vector<F, N>>::new(vs);
            let mut hi = Array::<Vector<F, N>>::new(vs);
            #[unroll]
            for l in 0..vs {
                let shifted = word >> Vector::new(8 * l as u32);
                if comptime!(q4) {
                    lo[l] = Vector::cast_from(shifted & nibble);
                    hi[l] = Vector::cast_from((shifted >> Vector::new(4u32)) & nibble);
                } else {
                    // Two's complement i8 as f32, exactly: (b ^ 128) − 128.
                    lo[l] = Vector::<F, N>::cast_from((shifted & byte) ^ sign)
                        - Vector::new(F::new(128.0));
                }
            }
            let k = b * per_block + q;
            #[unroll]
            for i in 0..tile {
                let row = clamp_row(r0, i, m) * kv;
                let mut xl = x[row + k];
                if comptime!(normed) {
                    if comptime!(squares) {
                        ssq[i] += xl * xl;
                    }
                    xl *= gamma[k];
                }
                #[unroll]
                for l in 0..vs {
                    acc[i] += Vector::new(xl.extract(l)) * lo[l];
                }
                if comptime!(q4) {
                    let mut xh = x[row + k + high];
                    if comptime!(normed) {
                        if comptime!(squares) {
                            ssq[i] += xh * xh;
                        }
                        xh *= gamma[k + high];
                    }
                    #[unroll]
                    for l in 0..vs {
                        acc[i] += Vector::new(xh.extract(l)) * hi[l];
                    }
                    sums[i] += xl + xh;
                }
            }
        }
        let d = Vector::<F, N>::reinterpret(Vector::<u32, N>::cast_from(w[at]));
        #[unroll]
        for i in 0..tile {
            let mut y = d * acc[i];
            if comptime!(q4) {
                let mn = Vector::<F, N>::reinterpret(Vector::<u32, N>::cast_from(w[at + n]));
                let mut s = F::new(0.0);
                #[unroll]
                for l in 0..vs {
                    s += sums[i].extract(l);
                }
                y += mn * Vector::new(s);
            }
            dots[i] += y;
        }
    }
}

/// A product's dot products over weights held in any [`Layout`]: `normed` multiplies x by γ
/// (and `squares` gathers Σ x² for the norm), else x is read as it is.
#[cube]
#[allow(clippy::too_many_arguments)]
fn weight_dots<F: Float, W: Numeric, N: Size>(
    x: &Tensor<Vector<F, N>>,
    gamma: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<W, N>>,
    r0: usize,
    col: usize,
    dots: &mut Array<Vector<F, N>>,
    ssq: &mut Array<Vector<F, N>>,
    #[comptime] tile: usize,
    #[comptime] normed: bool,
    #[comptime] squares: bool,
    #[comptime] layout: Layout,
) {
    if comptime!(layout == Layout::Dense) {
        if comptime!(normed) {
            gamma_dots::<F, W, N>(x, gamma, w, r0, col, dots, ssq, tile, squares);
        } else {
            dots_from::<F, W, N>(x, w, r0, col, 0, dots, tile);
        }
    } else {
        let q4 = comptime!(layout == Layout::Blocks(BlockFormat::Q4_1));
        block_dots::<F, W, N>(x, gamma, w, r0, col, dots, ssq, tile, normed, squares, q4);
    }
}

/// `1/√(mean(x²) + ε)` from a row's Σ x² gathered per vector lane (`ss`) over `k_len` values.
#[cube]
fn inv_rms_of<F: Float, N: Size>(
    ss: Vector<F, N>,
    #[comptime] vs: usize,
    k_len: usize,
    eps: f32,
) -> F {
    let mut s = F::new(0.0);
    #[unroll]
    for l in 0..vs {
        s += ss.extract(l);
    }
    F::new(1.0) / (s / F::cast_from(k_len as u32) + F::cast_from(eps)).sqrt()
}

/// `out[r] = rmsnorm(x[r])·[w0 | w1 | w2] (+ side[r])`: the Q, K and V products of a layer in
/// one launch, with their LoRA side path when there is one (`side`, from [`lora_up_kernel`],
/// added after the norm), or the down half of that side path (the w's are then the A's). `out`
/// may be narrower than the three: a w past its width is never read.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn norm_matvec3_kernel<F: Float, W: Numeric, N: Size>(
    x: &Tensor<Vector<F, N>>,
    gamma: &Tensor<Vector<F, N>>,
    w0: &Tensor<Vector<W, N>>,
    w1: &Tensor<Vector<W, N>>,
    w2: &Tensor<Vector<W, N>>,
    side: ComptimeOption<&Tensor<Vector<F, N>>>,
    out: &mut Tensor<Vector<F, N>>,
    eps: f32,
    #[comptime] tile: usize,
    #[comptime] layout: Layout,
    #[define(F, W)] _dtypes: [ElemType; 2],
) {
    let vs = out.vector_size();
    let j = ABSOLUTE_POS_X as usize * vs;
    let r0 = ABSOLUTE_POS_Y as usize * tile;
    let (m, n) = (out.shape(0), out.shape(1));
    if j >= n || r0 >= m {
        terminate!();
    }
    let (n0, n1) = (w0.shape(1), w1.shape(1));
    let mut dots = zeros::<F, N>(tile);
    let mut ssq = zeros::<F, N>(tile);
    let (d, s) = (&mut dots, &mut ssq);
    if j < n0 {
        weight_dots::<F, W, N>(x, gamma, w0, r0, j, d, s, tile, true, true, layout);
    } else if j < n0 + n1 {
        weight_dots::<F, W, N>(x, gamma, w1, r0, j - n0, d, s, tile, true, true, layout);
    } else {
        weight_dots::<F, W, N>(x, gamma, w2, r0, j - n0 - n1, d, s, tile, true, true, layout);
    }
    let k_len = x.shape(1);
    #[unroll]
    for i in 0..tile {
        let r = r0 + i;
        if r < m {
            let at = (r * n + j) / vs;
            let y = dots[i] * Vector::new(inv_rms_of::<F, N>(ssq[i], vs, k_len, eps));
            #[comptime]
            let y = match side {
                ComptimeOption::Some(side) => y + side[at],
                ComptimeOption::None => y,
            };
            out[at] = y;
        }
    }
}

/// `side[r] = scale·low[r]·[b0 | b1 | b2]`: the up half of a group's LoRA side path, `low` its
/// down half (`x·A` of the adapted members, `rank` columns each: b1's start at `off1`, b2's at
/// `off2`). A member without an adapter (`None`) gets zeros in its columns.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn lora_up_kernel<F: Float, N: Size>(
    low: &Tensor<Vector<F, N>>,
    b0: ComptimeOption<&Tensor<Vector<F, N>>>,
    b1: ComptimeOption<&Tensor<Vector<F, N>>>,
    b2: ComptimeOption<&Tensor<Vector<F, N>>>,
    side: &mut Tensor<Vector<F, N>>,
    n0: u32,
    n1: u32,
    off1: u32,
    off2: u32,
    scale: f32,
    #[comptime] tile: usize,
    #[define(F)] _dtype: ElemType,
) {
    let vs = side.vector_size();
    let j = ABSOLUTE_POS_X as usize * vs;
    let r0 = ABSOLUTE_POS_Y as usize * tile;
    let (m, n) = (side.shape(0), side.shape(1));
    if j >= n || r0 >= m {
        terminate!();
    }
    let (n0, n1) = (n0 as usize, n1 as usize);
    let mut dots = zeros::<F, N>(tile);
    if j < n0 {
        #[comptime]
        match b0 {
            ComptimeOption::Some(b) => dots_from::<F, F, N>(low, b, r0, j, 0, &mut dots, tile),
            ComptimeOption::None => {}
        };
    } else if j < n0 + n1 {
        let off = off1 as usize;
        #[comptime]
        match b1 {
            ComptimeOption::Some(b) => {
                dots_from::<F, F, N>(low, b, r0, j - n0, off, &mut dots, tile)
            }
            ComptimeOption::None => {}
        };
    } else {
        let (col, off) = (j - n0 - n1, off2 as usize);
        #[comptime]
        match b2 {
            ComptimeOption::Some(b) => dots_from::<F, F, N>(low, b, r0, col, off, &mut dots, tile),
            ComptimeOption::None => {}
        };
    }
    let s = Vector::<F, N>::new(F::cast_from(scale));
    #[unroll]
    for i in 0..tile {
        let r = r0 + i;
        if r < m {
            side[(r * n + j) / vs] = dots[i] * s;
        }
    }
}

/// `out[r] = silu(rmsnorm(x[r])·wg) ⊙ (rmsnorm(x[r])·wu)`: the MLP's first half in one launch.
/// With a LoRA side path, `side[r]` (`[gate | up]`, from [`lora_up_kernel`]) is added to the two
/// products after the norm.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn norm_gate_up_kernel<F: Float, W: Numeric, N: Size>(
    x: &Tensor<Vector<F, N>>,
    gamma: &Tensor<Vector<F, N>>,
    wg: &Tensor<Vector<W, N>>,
    wu: &Tensor<Vector<W, N>>,
    side: ComptimeOption<&Tensor<Vector<F, N>>>,
    out: &mut Tensor<Vector<F, N>>,
    eps: f32,
    #[comptime] tile: usize,
    #[comptime] layout: Layout,
    #[define(F, W)] _dtypes: [ElemType; 2],
) {
    let vs = out.vector_size();
    let j = ABSOLUTE_POS_X as usize * vs;
    let r0 = ABSOLUTE_POS_Y as usize * tile;
    let (m, n) = (out.shape(0), out.shape(1));
    if j >= n || r0 >= m {
        terminate!();
    }
    let mut g = zeros::<F, N>(tile);
    let mut u = zeros::<F, N>(tile);
    let mut ssq = zeros::<F, N>(tile);
    weight_dots::<F, W, N>(x, gamma, wg, r0, j, &mut g, &mut ssq, tile, true, true, layout);
    weight_dots::<F, W, N>(x, gamma, wu, r0, j, &mut u, &mut ssq, tile, true, false, layout);
    let (one, k_len) = (Vector::<F, N>::new(F::new(1.0)), x.shape(1));
    #[unroll]
    for i in 0..tile {
        let r = r0 + i;
        if r < m {
            let norm = Vector::new(inv_rms_of::<F, N>(ssq[i], vs, k_len, eps));
            let (gi, ui) = (g[i] * norm, u[i] * norm);
            #[comptime]
            let gi = match side {
                ComptimeOption::Some(side) => gi + side[(r * 2 * n + j) / vs],
                ComptimeOption::None => gi,
            };
            #[comptime]
            let ui = match side {
                ComptimeOption::Some(side) => ui + side[(r * 2 * n + n + j) / vs],
                ComptimeOption::None => ui,
            };
            out[(r * n + j) / vs] = gi / (one + (Vector::new(F::new(0.0)) - gi).exp()) * ui;
        }
    }
}

/// `dots[i] += Σ_k x[r0 + i, off + k]·w[k, col..col + W]` for `tile` rows, `k` over w's rows: a
/// plain product (x is not normed), for the attention output and MLP down projections and for
/// either half of a LoRA side path (`off` picks a projection's columns of a shared `x·A`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn dots_from<F: Float, W: Numeric, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<W, N>>,
    r0: usize,
    col: usize,
    off: usize,
    dots: &mut Array<Vector<F, N>>,
    #[comptime] tile: usize,
) {
    let (n, vs) = (w.shape(1), w.vector_size());
    let (m, xw) = (x.shape(0), x.shape(1) / vs);
    let mut ws = Array::<Vector<F, N>>::new(vs);
    for kk in 0..w.shape(0) / vs {
        #[unroll]
        for l in 0..vs {
            ws[l] = Vector::cast_from(w[((kk * vs + l) * n + col) / vs]);
        }
        #[unroll]
        for i in 0..tile {
            let xv = x[clamp_row(r0, i, m) * xw + off / vs + kk];
            #[unroll]
            for l in 0..vs {
                dots[i] += Vector::new(xv.extract(l)) * ws[l];
            }
        }
    }
}

/// `out[r] = x[r]·w (+ residual[r]) (+ side[r])`: the attention output and MLP down products
/// with the residual and their LoRA side path, or without either, the down half of that side
/// path (`x·A`).
#[cube(launch_unchecked)]
fn matvec_add_kernel<F: Float, W: Numeric, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<W, N>>,
    residual: ComptimeOption<&Tensor<Vector<F, N>>>,
    side: ComptimeOption<&Tensor<Vector<F, N>>>,
    out: &mut Tensor<Vector<F, N>>,
    #[comptime] tile: usize,
    #[comptime] layout: Layout,
    #[define(F, W)] _dtypes: [ElemType; 2],
) {
    let vs = out.vector_size();
    let j = ABSOLUTE_POS_X as usize * vs;
    let r0 = ABSOLUTE_POS_Y as usize * tile;
    let (m, n) = (out.shape(0), out.shape(1));
    if j >= n || r0 >= m {
        terminate!();
    }
    let mut dots = zeros::<F, N>(tile);
    // No norm: x stands in for γ, unread, and there are no squares to gather.
    let mut unused = zeros::<F, N>(tile);
    weight_dots::<F, W, N>(x, x, w, r0, j, &mut dots, &mut unused, tile, false, false, layout);
    #[unroll]
    for i in 0..tile {
        let r = r0 + i;
        if r < m {
            let at = (r * n + j) / vs;
            #[comptime]
            let y = match residual {
                ComptimeOption::Some(residual) => residual[at] + dots[i],
                ComptimeOption::None => dots[i],
            };
            #[comptime]
            let y = match side {
                ComptimeOption::Some(side) => y + side[at],
                ComptimeOption::None => y,
            };
            out[at] = y;
        }
    }
}

/// `out[b, v] = rmsnorm(x[b])·e[v]`: the final norm and the tied head (`e` is `[vocab, d]`). Each
/// invocation computes `W` vocabulary rows, reading `W` values at a time along `d`, so that one
/// load of `x` and `γ` serves `W` rows.
#[cube(launch_unchecked)]
fn norm_head_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    gamma: &Tensor<Vector<F, N>>,
    e: &Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    eps: f32,
    #[define(F)] _dtype: ElemType,
) {
    let vs = x.vector_size();
    let v = ABSOLUTE_POS_X as usize * vs;
    let b = ABSOLUTE_POS_Y as usize;
    let n = out.shape(1);
    if v >= n || b >= out.shape(0) {
        terminate!();
    }
    let k_len = x.shape(1);
    let kv = k_len / vs;
    let mut ss = Vector::<F, N>::new(F::new(0.0));
    // dots[i]: row v + i, still W partial sums wide.
    let mut dots = Array::<Vector<F, N>>::new(vs);
    #[unroll]
    for i in 0..vs {
        dots[i] = Vector::new(F::new(0.0));
    }
    for k in 0..kv {
        let xv = x[b * kv + k];
        ss += xv * xv;
        let xg = xv * gamma[k];
        #[unroll]
        for i in 0..vs {
            dots[i] += xg * e[(v + i) * kv + k];
        }
    }
    let inv = inv_rms_of::<F, N>(ss, vs, k_len, eps);
    let mut result = Vector::<F, N>::new(F::new(0.0));
    #[unroll]
    for i in 0..vs {
        let mut d = F::new(0.0);
        #[unroll]
        for l in 0..vs {
            d += dots[i].extract(l);
        }
        result.insert(i, d * inv);
    }
    out[(b * n + v) / vs] = result;
}

/// Rotary embedding of Q and K at each token's position, and K and V written into the cache from
/// `slot` on. `qkv` is `[B·T, n_q + 2·n_kv]` (heads of `head_dim` each; row `r` is token `r % T`
/// of sequence `r / T`); `q` gets the rotated queries.
#[cube(launch_unchecked)]
fn rope_cache_kernel<F: Float, I: Int>(
    qkv: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    positions: &Tensor<I>,
    q: &mut Tensor<F>,
    k_cache: &mut Tensor<F>,
    v_cache: &mut Tensor<F>,
    slot: u32,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let j = ABSOLUTE_POS_X as usize;
    let r = ABSOLUTE_POS_Y as usize;
    let width = qkv.shape(1);
    if j >= width || r >= qkv.shape(0) {
        terminate!();
    }
    let t = qkv.shape(0) / k_cache.shape(0);
    let (b, slot) = (r / t, slot as usize + r % t);
    let hd = cos.shape(1);
    let half = hd / 2;
    let nq = q.shape(1);
    let nkv = k_cache.shape(1) * hd;
    let row = r * width;
    let x = qkv[row + j];
    if j < nq + nkv {
        let d = j % hd;
        let pos = u32::cast_from(positions[r]) as usize;
        // rotate_half: [x1, x2] → [−x2, x1] within each head.
        let rotated =
            if d < half { F::new(0.0) - qkv[row + j + half] } else { qkv[row + j - half] };
        let y = x * cos[pos * hd + d] + rotated * sin[pos * hd + d];
        if j < nq {
            q[r * nq + j] = y;
        } else {
            let h = (j - nq) / hd;
            let at = b * k_cache.stride(0)
                + h * k_cache.stride(1)
                + slot * k_cache.stride(2)
                + d * k_cache.stride(3);
            k_cache[at] = y;
        }
    } else {
        let jj = j - nq - nkv;
        let (h, d) = (jj / hd, jj % hd);
        let at = b * v_cache.stride(0)
            + h * v_cache.stride(1)
            + slot * v_cache.stride(2)
            + d * v_cache.stride(3);
        v_cache[at] = x;
    }
}

/// `scores[r, h, j] = q[r, h]·k[b, h / rep, j] / √hd` for query row `r` (token `i = r % T` of
/// sequence `b = r / T`) and the slots up to its own (`j ≤ slot + i`), plus [`MASK_BIAS`] on its
/// sequence's left padding (`j < pads[b]`). The slots after its own are left unwritten: causal
/// masking would make their weights exactly 0, so [`attend_kernel`] does not read them. The
/// launch stays the cache's capacity wide, so its shape does not change from token to token.
#[cube(launch_unchecked)]
fn scores_kernel<F: Float, I: Int>(
    q: &Tensor<F>,
    k_cache: &Tensor<F>,
    pads: &Tensor<I>,
    scores: &mut Tensor<F>,
    slot: u32,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let j = ABSOLUTE_POS_X as usize;
    let h = ABSOLUTE_POS_Y as usize;
    let r = ABSOLUTE_POS_Z as usize;
    let (n_heads, cap) = (scores.shape(1), scores.shape(2));
    if j >= cap || h >= n_heads || r >= scores.shape(0) {
        terminate!();
    }
    let t = scores.shape(0) / k_cache.shape(0);
    let (b, newest) = (r / t, slot as usize + r % t);
    if j > newest {
        terminate!();
    }
    let hd = k_cache.shape(3);
    let kvh = h / (n_heads / k_cache.shape(1));
    let qrow = r * q.shape(1) + h * hd;
    let krow = b * k_cache.stride(0) + kvh * k_cache.stride(1) + j * k_cache.stride(2);
    let mut s = F::new(0.0);
    for d in 0..hd {
        s += q[qrow + d] * k_cache[krow + d * k_cache.stride(3)];
    }
    s *= F::new(1.0) / F::cast_from(hd as u32).sqrt();
    if j < u32::cast_from(pads[b]) as usize {
        s += F::new(MASK_BIAS);
    }
    scores[(r * n_heads + h) * cap + j] = s;
}

/// `out[r, h·hd + d] = Σ_j softmax(scores[r, h])_j · v[r / T, h / rep, j, d]` over the slots up
/// to row r's own (`j ≤ slot + r % T`): a later slot's weight, exp(s + MASK_BIAS − max), is
/// exactly 0 in f32, so leaving them out changes no bit of a row that sees any key (a padding
/// row's output is never read), and a prompt's tokens and the first steps after it read a
/// fraction of the capacity.
#[cube(launch_unchecked)]
fn attend_kernel<F: Float>(
    scores: &Tensor<F>,
    v_cache: &Tensor<F>,
    out: &mut Tensor<F>,
    slot: u32,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS_X as usize;
    let r = ABSOLUTE_POS_Y as usize;
    let width = out.shape(1);
    if i >= width || r >= out.shape(0) {
        terminate!();
    }
    let t = out.shape(0) / v_cache.shape(0);
    let (b, newest) = (r / t, slot as usize + r % t);
    let (n_heads, cap) = (scores.shape(1), scores.shape(2));
    let hd = v_cache.shape(3);
    let (h, d) = (i / hd, i % hd);
    let kvh = h / (n_heads / v_cache.shape(1));
    let srow = (r * n_heads + h) * cap;
    let vrow = b * v_cache.stride(0) + kvh * v_cache.stride(1) + d * v_cache.stride(3);
    let keys = newest + 1;
    let mut m = scores[srow];
    for j in 1..keys {
        m = F::max(m, scores[srow + j]);
    }
    let mut sum = F::new(0.0);
    let mut acc = F::new(0.0);
    for j in 0..keys {
        let p = (scores[srow + j] - m).exp();
        sum += p;
        acc += p * v_cache[vrow + j * v_cache.stride(2)];
    }
    out[r * width + i] = acc / sum;
}

/// `out[r, k]`: value k of row `tokens[r]` of an embedding table held as blocks
/// ([`Layout::Blocks`], one row per token of the vocabulary): the lookup that starts a pass.
#[cube(launch_unchecked)]
fn embed_blocks_kernel<F: Float, I: Int>(
    tokens: &Tensor<I>,
    e: &Tensor<u32>,
    out: &mut Tensor<F>,
    #[comptime] q4: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let k = ABSOLUTE_POS_X as usize;
    let r = ABSOLUTE_POS_Y as usize;
    if k >= out.shape(1) || r >= out.shape(0) {
        terminate!();
    }
    let vocab = e.shape(1);
    let token = u32::cast_from(tokens[r]) as usize;
    let token = if token < vocab { token } else { vocab - 1 };
    let words = comptime!(if q4 { BlockFormat::Q4_1 } else { BlockFormat::Q8_0 }.gpu_words());
    let (b, j) = (k / BLOCK, k % BLOCK);
    let at = b * words * vocab + token;
    let d = f32::reinterpret(e[at]);
    let value = if comptime!(q4) {
        // Weight j: the low nibble of byte j (j < 16) or the high nibble of byte j − 16.
        let word = e[at + (2 + (j % 16) / 4) * vocab];
        let q = (word >> (8 * (j % 4) + 4 * (j / 16)) as u32) & 15u32;
        d * f32::cast_from(q) + f32::reinterpret(e[at + vocab])
    } else {
        let word = e[at + (1 + j / 4) * vocab];
        let q = ((word >> (8 * (j % 4)) as u32) & 255u32) ^ 128u32;
        d * (f32::cast_from(q) - 128.0)
    };
    let width = out.shape(1);
    out[r * width + k] = F::cast_from(value);
}

/// `out = x + 1`: next to no work, so that timing many launches measures what a launch costs
/// on the host (`emlab-bench launch-cost`, against raw wgpu).
#[cube(launch_unchecked)]
fn touch_kernel<F: Float>(x: &Tensor<F>, out: &mut Tensor<F>, #[define(F)] _dtype: ElemType) {
    let i = ABSOLUTE_POS_X as usize;
    if i < out.len() {
        out[i] = x[i] + F::new(1.0);
    }
}

/// The decoding step's operations, as a burn backend extension: implemented for the cubecl
/// backend (wgpu natively, WebGPU in the browser), queued lazily under burn's fusion.
#[backend_extension(Cube, Fusion)]
pub trait DecodeOps: burn::backend::Backend {
    /// `rmsnorm(x)·[w0 | w1 | w2]` for `x` `[B, K]`: `[B, width]`, `width` the first one, two or
    /// all three widths added up (a w past it is not read), plus `side` (`[B, width]`, a LoRA
    /// side path from `lora_up`) when `with_side`; without, `side` is not bound (any tensor).
    #[fusion(meta = |x, _gamma, _w0, _w1, _w2, _side, width, _eps, _with_side|
        TensorSpec::new(Shape::new([x.shape[0], *width]), x.dtype))]
    #[allow(clippy::too_many_arguments)]
    fn norm_matvec3(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        w0: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        side: FloatTensor<Self>,
        width: usize,
        eps: f32,
        with_side: bool,
    ) -> FloatTensor<Self>;

    /// `scale·low·[b0 | b1 | b2]`: `[B, n0 + n1 + n2]`, the up half of a LoRA side path. `mask`
    /// bit i: b_i is an adapter's B (`[rank, n_i]`); the others are not bound and their columns
    /// are zeros. `low` holds the adapted members' `x·A`, `rank` columns each, in order.
    #[fusion(meta = |low, _b0, _b1, _b2, n0, n1, n2, _rank, _scale, _mask|
        TensorSpec::new(Shape::new([low.shape[0], *n0 + *n1 + *n2]), low.dtype))]
    #[allow(clippy::too_many_arguments)]
    fn lora_up(
        low: FloatTensor<Self>,
        b0: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        b2: FloatTensor<Self>,
        n0: usize,
        n1: usize,
        n2: usize,
        rank: usize,
        scale: f32,
        mask: u32,
    ) -> FloatTensor<Self>;

    /// `silu(rmsnorm(x)·wg + side_g) ⊙ (rmsnorm(x)·wu + side_u)`: `[B, N]`, `side` `[B, 2N]`
    /// (`[gate | up]`) bound only when `with_side`.
    #[fusion(meta = |x, _gamma, wg, _wu, _side, _eps, _with_side| TensorSpec::new(
        Shape::new([x.shape[0], wg.shape[1]]), x.dtype))]
    #[allow(clippy::too_many_arguments)]
    fn norm_gate_up(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        wg: FloatTensor<Self>,
        wu: FloatTensor<Self>,
        side: FloatTensor<Self>,
        eps: f32,
        with_side: bool,
    ) -> FloatTensor<Self>;

    /// `x·w` `[B, N]`, plus `residual` when `add`, plus `side` when `with_side`. What is not
    /// added is not bound.
    #[fusion(meta = |x, w, _residual, _side, _add, _with_side| TensorSpec::new(
        Shape::new([x.shape[0], w.shape[1]]), x.dtype))]
    fn matvec_add(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        side: FloatTensor<Self>,
        add: bool,
        with_side: bool,
    ) -> FloatTensor<Self>;

    /// [`norm_matvec3`](Self::norm_matvec3) over weights held as blocks: each w the u32 words
    /// of [`crate::quant::QuantMatrix::gpu_words`] (`[k / 32 · words, n]`), all in `format`.
    /// With one matrix given thrice and `width` its n, the final norm and a tied head.
    #[fusion(meta = |x, _gamma, _w0, _w1, _w2, _side, width, _eps, _with_side, _format|
        TensorSpec::new(Shape::new([x.shape[0], *width]), x.dtype))]
    #[allow(clippy::too_many_arguments)]
    fn norm_matvec3_blocks(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        w0: IntTensor<Self>,
        w1: IntTensor<Self>,
        w2: IntTensor<Self>,
        side: FloatTensor<Self>,
        width: usize,
        eps: f32,
        with_side: bool,
        format: BlockFormat,
    ) -> FloatTensor<Self>;

    /// [`norm_gate_up`](Self::norm_gate_up) over blocks (see
    /// [`norm_matvec3_blocks`](Self::norm_matvec3_blocks)).
    #[fusion(meta = |x, _gamma, wg, _wu, _side, _eps, _with_side, _format| TensorSpec::new(
        Shape::new([x.shape[0], wg.shape[1]]), x.dtype))]
    #[allow(clippy::too_many_arguments)]
    fn norm_gate_up_blocks(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        wg: IntTensor<Self>,
        wu: IntTensor<Self>,
        side: FloatTensor<Self>,
        eps: f32,
        with_side: bool,
        format: BlockFormat,
    ) -> FloatTensor<Self>;

    /// [`matvec_add`](Self::matvec_add) over blocks (see
    /// [`norm_matvec3_blocks`](Self::norm_matvec3_blocks)).
    #[fusion(meta = |x, w, _residual, _side, _add, _with_side, _format| TensorSpec::new(
        Shape::new([x.shape[0], w.shape[1]]), x.dtype))]
    #[allow(clippy::too_many_arguments)]
    fn matvec_add_blocks(
        x: FloatTensor<Self>,
        w: IntTensor<Self>,
        residual: FloatTensor<Self>,
        side: FloatTensor<Self>,
        add: bool,
        with_side: bool,
        format: BlockFormat,
    ) -> FloatTensor<Self>;

    /// The rows of an embedding table held as blocks (`e` as in
    /// [`norm_matvec3_blocks`](Self::norm_matvec3_blocks), one column per token) for `tokens`
    /// (any shape, `n` ids): `[n, d_model]` f32.
    #[fusion(meta = |tokens, _e, d_model, _format| TensorSpec::new(
        Shape::new([tokens.shape.num_elements(), *d_model]), burn::tensor::DType::F32))]
    fn embed_blocks(
        tokens: IntTensor<Self>,
        e: IntTensor<Self>,
        d_model: usize,
        format: BlockFormat,
    ) -> FloatTensor<Self>;

    /// `rmsnorm(x)·eᵀ` for the tied head `e` `[vocab, K]`: `[B, vocab]`.
    #[fusion(meta = |x, _gamma, e, _eps| TensorSpec::new(
        Shape::new([x.shape[0], e.shape[0]]), x.dtype))]
    fn norm_head(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        e: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// Rotates Q and K of `qkv` `[B·T, _]`, writes K and V into the caches at `slot..slot + T`:
    /// (q `[B·T, n_q]`, k cache, v cache).
    #[fusion(meta = |qkv, _cos, _sin, _positions, k_cache, v_cache, n_q, _slot| (
        TensorSpec::new(Shape::new([qkv.shape[0], *n_q]), qkv.dtype),
        k_cache.clone(),
        v_cache.clone(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn rope_cache(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        positions: IntTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        n_q: usize,
        slot: u32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `x + 1`, in one launch of a kernel that does next to nothing (a launch's host cost).
    #[fusion(dtype = x, shape = x)]
    fn touch(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Attention of `T` new queries per sequence (`q` `[B·T, n_heads·hd]`, the first at `slot`)
    /// over the whole cache, causal: `[B·T, n_heads·hd]`.
    #[fusion(meta = |q, _k_cache, _v_cache, _pads, _slot| TensorSpec::new(q.shape.clone(), q.dtype))]
    fn attend(
        q: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        pads: IntTensor<Self>,
        slot: u32,
    ) -> FloatTensor<Self>;
}

fn empty(like: &CubeTensor, shape: [usize; 2]) -> CubeTensor {
    empty_device_dtype(like.client.clone(), like.device.clone(), Shape::new(shape), like.dtype)
}

/// Workgroups covering `n` invocations × `rows` rows.
fn grid(n: usize, rows: usize) -> (CubeCount, CubeDim) {
    (CubeCount::Static((n as u32).div_ceil(GROUP), rows as u32, 1), CubeDim::new_2d(GROUP, 1))
}

/// The products' launch: `n` output columns read `VECTOR` at a time, `rows` rows in tiles (see
/// [`ROW_TILE`]): workgroups, and rows per invocation.
fn product_grid(n: usize, rows: usize) -> (CubeCount, CubeDim, usize) {
    let tile = if rows == 1 { 1 } else { ROW_TILE };
    let (count, dim) = grid(n / VECTOR, rows.div_ceil(tile));
    (count, dim, tile)
}

/// The storage types of x and w: the kernels' F and W (W is F for dense weights, u32 for blocks).
fn dtypes(x: &CubeTensor, w: &CubeTensor) -> [ElemType; 2] {
    [dtype_to_storage_type(x.dtype), dtype_to_storage_type(w.dtype)]
}

#[allow(clippy::too_many_arguments)]
fn launch_norm_matvec3(
    x: CubeTensor,
    gamma: CubeTensor,
    w0: CubeTensor,
    w1: CubeTensor,
    w2: CubeTensor,
    side: CubeTensor,
    width: usize,
    eps: f32,
    with_side: bool,
    layout: Layout,
) -> CubeTensor {
    let [x, gamma, w0, w1, w2] = [x, gamma, w0, w1, w2].map(into_contiguous);
    let rows = x.meta.shape()[0];
    let out = empty(&x, [rows, width]);
    let (count, dim, tile) = product_grid(width, rows);
    let dtypes = dtypes(&x, &w0);
    // SAFETY: every index is below its tensor's length: each kernel returns early outside
    // its output, and its loops run over the shapes it reads.
    unsafe {
        norm_matvec3_kernel::launch_unchecked(
            &x.client.clone(),
            count,
            dim,
            VECTOR,
            x.clone().into_tensor_arg(),
            gamma.into_tensor_arg(),
            w0.into_tensor_arg(),
            w1.into_tensor_arg(),
            w2.into_tensor_arg(),
            with_side.then(|| into_contiguous(side).into_tensor_arg()).into(),
            out.clone().into_tensor_arg(),
            eps,
            tile,
            layout,
            dtypes,
        );
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn launch_norm_gate_up(
    x: CubeTensor,
    gamma: CubeTensor,
    wg: CubeTensor,
    wu: CubeTensor,
    side: CubeTensor,
    eps: f32,
    with_side: bool,
    layout: Layout,
) -> CubeTensor {
    let [x, gamma, wg, wu] = [x, gamma, wg, wu].map(into_contiguous);
    let (rows, n) = (x.meta.shape()[0], wg.meta.shape()[1]);
    let out = empty(&x, [rows, n]);
    let (count, dim, tile) = product_grid(n, rows);
    let dtypes = dtypes(&x, &wg);
    // SAFETY: every index is below its tensor's length: each kernel returns early outside
    // its output, and its loops run over the shapes it reads.
    unsafe {
        norm_gate_up_kernel::launch_unchecked(
            &x.client.clone(),
            count,
            dim,
            VECTOR,
            x.clone().into_tensor_arg(),
            gamma.into_tensor_arg(),
            wg.into_tensor_arg(),
            wu.into_tensor_arg(),
            with_side.then(|| into_contiguous(side).into_tensor_arg()).into(),
            out.clone().into_tensor_arg(),
            eps,
            tile,
            layout,
            dtypes,
        );
    }
    out
}

fn launch_matvec_add(
    x: CubeTensor,
    w: CubeTensor,
    residual: CubeTensor,
    side: CubeTensor,
    add: bool,
    with_side: bool,
    layout: Layout,
) -> CubeTensor {
    let [x, w] = [x, w].map(into_contiguous);
    let (rows, n) = (x.meta.shape()[0], w.meta.shape()[1]);
    let out = empty(&x, [rows, n]);
    let (count, dim, tile) = product_grid(n, rows);
    let dtypes = dtypes(&x, &w);
    // SAFETY: every index is below its tensor's length: each kernel returns early outside
    // its output, and its loops run over the shapes it reads.
    unsafe {
        matvec_add_kernel::launch_unchecked(
            &x.client.clone(),
            count,
            dim,
            VECTOR,
            x.clone().into_tensor_arg(),
            w.into_tensor_arg(),
            add.then(|| into_contiguous(residual).into_tensor_arg()).into(),
            with_side.then(|| into_contiguous(side).into_tensor_arg()).into(),
            out.clone().into_tensor_arg(),
            tile,
            layout,
            dtypes,
        );
    }
    out
}

impl DecodeOps for CubeBackend {
    fn norm_matvec3(
        x: CubeTensor,
        gamma: CubeTensor,
        w0: CubeTensor,
        w1: CubeTensor,
        w2: CubeTensor,
        side: CubeTensor,
        width: usize,
        eps: f32,
        with_side: bool,
    ) -> CubeTensor {
        launch_norm_matvec3(x, gamma, w0, w1, w2, side, width, eps, with_side, Layout::Dense)
    }

    fn norm_matvec3_blocks(
        x: CubeTensor,
        gamma: CubeTensor,
        w0: CubeTensor,
        w1: CubeTensor,
        w2: CubeTensor,
        side: CubeTensor,
        width: usize,
        eps: f32,
        with_side: bool,
        format: BlockFormat,
    ) -> CubeTensor {
        let layout = Layout::Blocks(format);
        launch_norm_matvec3(x, gamma, w0, w1, w2, side, width, eps, with_side, layout)
    }

    fn lora_up(
        low: CubeTensor,
        b0: CubeTensor,
        b1: CubeTensor,
        b2: CubeTensor,
        n0: usize,
        n1: usize,
        n2: usize,
        rank: usize,
        scale: f32,
        mask: u32,
    ) -> CubeTensor {
        let low = into_contiguous(low);
        let (rows, width) = (low.meta.shape()[0], n0 + n1 + n2);
        let out = empty(&low, [rows, width]);
        let (count, dim, tile) = product_grid(width, rows);
        let present = |bit: u32| mask & bit != 0;
        // Each adapted member's columns of `low` follow those of the adapted members before it.
        let off1 = rank * present(1) as usize;
        let off2 = off1 + rank * present(2) as usize;
        // SAFETY: every index is below its tensor's length: each kernel returns early outside
        // its output, and its loops run over the shapes it reads.
        unsafe {
            lora_up_kernel::launch_unchecked(
                &low.client.clone(),
                count,
                dim,
                VECTOR,
                low.clone().into_tensor_arg(),
                present(1).then(|| into_contiguous(b0).into_tensor_arg()).into(),
                present(2).then(|| into_contiguous(b1).into_tensor_arg()).into(),
                present(4).then(|| into_contiguous(b2).into_tensor_arg()).into(),
                out.clone().into_tensor_arg(),
                n0 as u32,
                n1 as u32,
                off1 as u32,
                off2 as u32,
                scale,
                tile,
                dtype_to_storage_type(low.dtype),
            );
        }
        out
    }

    fn norm_gate_up(
        x: CubeTensor,
        gamma: CubeTensor,
        wg: CubeTensor,
        wu: CubeTensor,
        side: CubeTensor,
        eps: f32,
        with_side: bool,
    ) -> CubeTensor {
        launch_norm_gate_up(x, gamma, wg, wu, side, eps, with_side, Layout::Dense)
    }

    fn norm_gate_up_blocks(
        x: CubeTensor,
        gamma: CubeTensor,
        wg: CubeTensor,
        wu: CubeTensor,
        side: CubeTensor,
        eps: f32,
        with_side: bool,
        format: BlockFormat,
    ) -> CubeTensor {
        launch_norm_gate_up(x, gamma, wg, wu, side, eps, with_side, Layout::Blocks(format))
    }

    fn matvec_add(
        x: CubeTensor,
        w: CubeTensor,
        residual: CubeTensor,
        side: CubeTensor,
        add: bool,
        with_side: bool,
    ) -> CubeTensor {
        launch_matvec_add(x, w, residual, side, add, with_side, Layout::Dense)
    }

    fn matvec_add_blocks(
        x: CubeTensor,
        w: CubeTensor,
        residual: CubeTensor,
        side: CubeTensor,
        add: bool,
        with_side: bool,
        format: BlockFormat,
    ) -> CubeTensor {
        launch_matvec_add(x, w, residual, side, add, with_side, Layout::Blocks(format))
    }

    fn embed_blocks(
        tokens: CubeTensor,
        e: CubeTensor,
        d_model: usize,
        format: BlockFormat,
    ) -> CubeTensor {
        let [tokens, e] = [tokens, e].map(into_contiguous);
        let n = tokens.meta.shape().num_elements();
        let out = empty_device_dtype(
            e.client.clone(),
            e.device.clone(),
            Shape::new([n, d_model]),
            burn::tensor::DType::F32,
        );
        let (count, dim) = grid(d_model, n);
        // SAFETY: the kernel returns early outside its output, clamps each id into the table,
        // and reads the words of one block of that row.
        unsafe {
            embed_blocks_kernel::launch_unchecked(
                &e.client.clone(),
                count,
                dim,
                tokens.clone().into_tensor_arg(),
                e.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                format == BlockFormat::Q4_1,
                [dtype_to_storage_type(out.dtype), dtype_to_storage_type(tokens.dtype)],
            );
        }
        out
    }

    fn norm_head(x: CubeTensor, gamma: CubeTensor, e: CubeTensor, eps: f32) -> CubeTensor {
        let [x, gamma, e] = [x, gamma, e].map(into_contiguous);
        let (rows, n) = (x.meta.shape()[0], e.meta.shape()[0]);
        let out = empty(&x, [rows, n]);
        let (count, dim) = grid(n / VECTOR, rows);
        // SAFETY: every index is below its tensor's length: each kernel returns early outside
        // its output, and its loops run over the shapes it reads.
        unsafe {
            norm_head_kernel::launch_unchecked(
                &x.client.clone(),
                count,
                dim,
                VECTOR,
                x.clone().into_tensor_arg(),
                gamma.into_tensor_arg(),
                e.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                eps,
                dtype_to_storage_type(x.dtype),
            );
        }
        out
    }

    fn rope_cache(
        qkv: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        positions: CubeTensor,
        k_cache: CubeTensor,
        v_cache: CubeTensor,
        n_q: usize,
        slot: u32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let [qkv, cos, sin, positions] = [qkv, cos, sin, positions].map(into_contiguous);
        // Written in place when nothing else holds the caches (the usual case), else copied once.
        let writable = |t: CubeTensor| if t.can_mut() { t } else { t.copy() };
        let (k_cache, v_cache) = (writable(k_cache), writable(v_cache));
        let (rows, width) = (qkv.meta.shape()[0], qkv.meta.shape()[1]);
        let q = empty(&qkv, [rows, n_q]);
        let (count, dim) = grid(width, rows);
        // SAFETY: every index is below its tensor's length: each kernel returns early outside
        // its output, and its loops run over the shapes it reads.
        unsafe {
            rope_cache_kernel::launch_unchecked(
                &qkv.client.clone(),
                count,
                dim,
                qkv.clone().into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                positions.clone().into_tensor_arg(),
                q.clone().into_tensor_arg(),
                k_cache.clone().into_tensor_arg(),
                v_cache.clone().into_tensor_arg(),
                slot,
                [dtype_to_storage_type(qkv.dtype), dtype_to_storage_type(positions.dtype)],
            );
        }
        (q, k_cache, v_cache)
    }

    fn touch(x: CubeTensor) -> CubeTensor {
        let x = into_contiguous(x);
        let n = x.meta.shape().num_elements();
        let out =
            empty_device_dtype(x.client.clone(), x.device.clone(), x.meta.shape().clone(), x.dtype);
        let (count, dim) = grid(n, 1);
        // SAFETY: the kernel reads and writes below `out.len()`, which equals x's length.
        unsafe {
            touch_kernel::launch_unchecked(
                &x.client.clone(),
                count,
                dim,
                x.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                dtype_to_storage_type(x.dtype),
            );
        }
        out
    }

    fn attend(
        q: CubeTensor,
        k_cache: CubeTensor,
        v_cache: CubeTensor,
        pads: CubeTensor,
        slot: u32,
    ) -> CubeTensor {
        let [q, pads] = [q, pads].map(into_contiguous);
        let (rows, width) = (q.meta.shape()[0], q.meta.shape()[1]);
        let hd = k_cache.meta.shape()[3];
        let (n_heads, cap) = (width / hd, k_cache.meta.shape()[2]);
        let scores = empty_device_dtype(
            q.client.clone(),
            q.device.clone(),
            Shape::new([rows, n_heads, cap]),
            q.dtype,
        );
        let client = q.client.clone();
        // SAFETY: every index is below its tensor's length: each kernel returns early outside
        // its output, and its loops run over the shapes it reads.
        unsafe {
            scores_kernel::launch_unchecked(
                &client,
                CubeCount::Static((cap as u32).div_ceil(GROUP), n_heads as u32, rows as u32),
                CubeDim::new_2d(GROUP, 1),
                q.clone().into_tensor_arg(),
                k_cache.into_tensor_arg(),
                pads.clone().into_tensor_arg(),
                scores.clone().into_tensor_arg(),
                slot,
                [dtype_to_storage_type(q.dtype), dtype_to_storage_type(pads.dtype)],
            );
        }
        let out = empty(&q, [rows, width]);
        let (count, dim) = grid(width, rows);
        // SAFETY: every index is below its tensor's length: each kernel returns early outside
        // its output, and its loops run over the shapes it reads.
        unsafe {
            attend_kernel::launch_unchecked(
                &client,
                count,
                dim,
                scores.into_tensor_arg(),
                v_cache.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                slot,
                dtype_to_storage_type(q.dtype),
            );
        }
        out
    }
}
