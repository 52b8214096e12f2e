//! The Llama architecture (SmolLM2-135M-Instruct) in burn, in one file.
//!
//! Names follow the Hugging Face implementation so weights map one to one:
//! `Llama { embed_tokens, layers: [Block { input_layernorm, self_attn, post_attention_layernorm, mlp }], norm }`.
//! Grouped-query attention, rotary position embeddings (rotate-half form), RMSNorm, SwiGLU MLP,
//! tied input/output embeddings, and a KV cache for generation. Left-padded batches are supported
//! through per-row positions and an additive attention bias.
//! One file on purpose, like nanoGPT's `model.py`: the whole model reads top to bottom. It is the
//! reference; the faster cached passes over the CPU's and the GPU's kernels add to `impl Llama` in
//! `cpu_decode.rs` and `gpu_decode.rs`, and are tested against it.

use std::sync::Arc;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::{silu, softmax};

use crate::Error;
pub use crate::cache::KvCache;
use crate::cache::MASK_BIAS;
use crate::config::LlamaConfig;
use crate::quant::{BLOCK, BlockFormat, QuantMatrix};
use crate::sampling::Rng;
use crate::weights::{HostTensor, Matrix, Weights, expected_shapes};

/// y = x·W (+ a LoRA side path). W is either a dense `[d_in, d_out]` tensor or the GGUF's blocks
/// (`[d_out, d_in]`). A dense W may be stored in lower precision than the activations (f16 halves
/// the memory traffic of decoding, which is bandwidth-bound): x is cast to W's dtype for the
/// product and the result cast back. Blocks are multiplied without being expanded
/// ([`crate::quant`] on the CPU, `kernels.rs` on a GPU): Q4_1 reads a sixth of f32's bytes.
#[derive(Module, Debug)]
pub struct Linear {
    /// None when the matrix is held as blocks.
    pub weight: Option<Param<Tensor<2>>>,
    #[module(skip)]
    pub blocks: Option<Arc<QuantMatrix>>,
    /// The blocks on the GPU as its kernels read them, when the model is on one.
    #[module(skip)]
    pub gpu_blocks: Option<GpuBlocks>,
    pub lora: Option<LoraAdapter>,
}

/// A matrix's blocks in GPU memory, in the layout of [`QuantMatrix::gpu_words`]: `u32` words,
/// `[cols / 32 · words, rows]`, read by the decoding kernels (`kernels.rs`).
#[derive(Clone, Debug)]
pub struct GpuBlocks {
    pub words: Tensor<2, Int>,
    pub format: BlockFormat,
}

impl GpuBlocks {
    /// The blocks uploaded when `device` is a GPU ([`crate::device::blocks_on_gpu`]), else None.
    pub fn on(m: &QuantMatrix, device: &Device) -> Option<Self> {
        crate::device::blocks_on_gpu(device).then(|| Self::upload(m, device))
    }

    pub fn upload(m: &QuantMatrix, device: &Device) -> Self {
        let shape = [m.cols / BLOCK * m.format.gpu_words(), m.rows];
        let data = TensorData::new(m.gpu_words(), shape);
        Self {
            words: Tensor::from_data(data, (device, burn::tensor::DType::U32)),
            format: m.format,
        }
    }

    /// Bytes of GPU memory.
    pub fn size_bytes(&self) -> usize {
        self.words.shape().num_elements() * 4
    }
}

/// How a matrix is held, shared by [`Linear`] and [`Embedding`]: the host's blocks when their
/// kernels run it (the CPU backend). On a GPU, reading x back to the host for them would stall
/// the queue (and cannot be done at all in a browser), so what the GPU's own kernels do not cover
/// goes through the expanded weights.
fn host_blocks<'a>(
    weight: &Option<Param<Tensor<2>>>,
    blocks: &'a Option<Arc<QuantMatrix>>,
    gpu_blocks: &Option<GpuBlocks>,
) -> Option<&'a QuantMatrix> {
    blocks.as_deref().filter(|_| weight.is_none() && gpu_blocks.is_none())
}

/// Bytes a matrix takes where it is computed: its blocks as uploaded on a GPU (or as held on the
/// host), or its dense weight at its dtype's size.
fn held_bytes(
    weight: &Option<Param<Tensor<2>>>,
    blocks: &Option<Arc<QuantMatrix>>,
    gpu_blocks: &Option<GpuBlocks>,
) -> usize {
    match (gpu_blocks, blocks, weight) {
        (Some(g), _, _) => g.size_bytes(),
        (None, _, Some(w)) => dense_bytes(&w.val()),
        (None, Some(m), None) => m.size_bytes(),
        (None, None, None) => 0,
    }
}

fn dense_bytes(t: &Tensor<2>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

/// Rows of x up to which the quantized kernels multiply blocks directly; above it (long or
/// batched prompts) the matrix is expanded to f32 for the backend's GEMM, whose tiling wins once
/// the weights are reused across enough rows. Measured on 2 threads (bench/generate.py's prompt):
/// the kernels prefill ~142 tokens/s at any length; expanding costs ~0.7 s per pass, then runs at
/// ~320 tokens/s (128 tokens: 118/s; 16 × 128: 290/s), so the two cross near 175 rows.
pub const QUANT_KERNEL_MAX_ROWS: usize = 192;

impl Linear {
    pub fn dense(w: Tensor<2>) -> Self {
        Self { weight: Some(Param::from_tensor(w)), blocks: None, gpu_blocks: None, lora: None }
    }

    /// Blocks on `device`: kept on the host for the CPU's kernels, and uploaded as well when
    /// `device` is a GPU ([`GpuBlocks::on`]).
    pub fn quantized(m: QuantMatrix, device: &Device) -> Self {
        let gpu_blocks = GpuBlocks::on(&m, device);
        Self { weight: None, blocks: Some(Arc::new(m)), gpu_blocks, lora: None }
    }

    fn host_blocks(&self) -> Option<&QuantMatrix> {
        host_blocks(&self.weight, &self.blocks, &self.gpu_blocks)
    }

    /// `[d_in, d_out]`
    pub fn dims(&self) -> [usize; 2] {
        match (&self.weight, &self.blocks) {
            (Some(w), _) => w.dims(),
            (None, Some(m)) => [m.cols, m.rows],
            (None, None) => unreachable!("a Linear is built dense or quantized"),
        }
    }

    /// W as a dense `[d_in, d_out]` tensor (blocks expanded to f32 on `device`).
    pub fn dense_weight(&self, device: &Device) -> Tensor<2> {
        match (&self.weight, &self.blocks) {
            (Some(w), _) => w.val(),
            (None, Some(m)) => expand(m, device).transpose(),
            (None, None) => unreachable!("a Linear is built dense or quantized"),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let lora = self.lora.as_ref().map(|l| l.forward(x.clone()));
        let y = match (&self.weight, self.host_blocks()) {
            (None, None) => {
                burn::tensor::module::linear(x.clone(), self.dense_weight(&x.device()), None)
            }
            (Some(w), _) => {
                let w = w.val();
                let (x_dtype, w_dtype) = (x.dtype(), w.dtype());
                if x_dtype == w_dtype {
                    burn::tensor::module::linear(x, w, None)
                } else {
                    burn::tensor::module::linear(x.cast(w_dtype), w, None).cast(x_dtype)
                }
            }
            (None, Some(m)) => times_blocks_transposed(x, m),
        };
        match lora {
            Some(delta) => y + delta,
            None => y,
        }
    }

    /// The products of several projections of one input (a layer's Q, K and V; gate and up).
    /// When they are all blocks and the input is a few rows (decoding), the kernels run them in
    /// one pass over the threads; the results are the same as [`forward`](Self::forward)'s.
    pub fn forward_group<const D: usize, const N: usize>(
        linears: [&Linear; N],
        x: Tensor<D>,
    ) -> [Tensor<D>; N] {
        let n: usize = x.dims()[..D - 1].iter().product();
        let blocks: Option<Vec<&QuantMatrix>> = linears.iter().map(|l| l.host_blocks()).collect();
        match blocks {
            Some(mats) if n <= QUANT_KERNEL_MAX_ROWS => {
                let mut ys = times_blocks_group(x.clone(), &mats).into_iter();
                linears.map(|l| {
                    let y = ys.next().expect("one product per projection");
                    match &l.lora {
                        Some(lora) => y + lora.forward(x.clone()),
                        None => y,
                    }
                })
            }
            _ => linears.map(|l| l.forward(x.clone())),
        }
    }
}

/// x·Wᵀ for x `[.., cols]` and blocks W `[rows, cols]`: the quantized kernels on the host for a few
/// rows of x (decoding), the backend's GEMM on W expanded for many.
fn times_blocks_transposed<const D: usize>(x: Tensor<D>, m: &QuantMatrix) -> Tensor<D> {
    let n: usize = x.dims()[..D - 1].iter().product();
    if n > QUANT_KERNEL_MAX_ROWS {
        let w = expand(m, &x.device()).transpose();
        return burn::tensor::module::linear(x, w, None);
    }
    times_blocks_group(x, &[m]).pop().expect("one product")
}

/// x·Wᵢᵀ for several block matrices in one pass of the kernels (see [`Linear::forward_group`]).
fn times_blocks_group<const D: usize>(x: Tensor<D>, mats: &[&QuantMatrix]) -> Vec<Tensor<D>> {
    let dims = x.dims();
    let device = x.device();
    let n: usize = dims[..D - 1].iter().product();
    let data = x.cast(FloatDType::F32).into_data();
    let xs = data.as_slice::<f32>().expect("an f32 tensor reads as f32");
    let mut ys: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0f32; n * m.rows]).collect();
    let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
    QuantMatrix::matmul_group(mats, xs, n, &mut outs);
    mats.iter()
        .zip(ys)
        .map(|(m, y)| {
            let mut shape = dims;
            shape[D - 1] = m.rows;
            Tensor::from_data(TensorData::new(y, shape), &device)
        })
        .collect()
}

/// Blocks `[rows, cols]` as an f32 tensor.
fn expand(m: &QuantMatrix, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(m.dequantize(), [m.rows, m.cols]), device)
}

/// The token embeddings `[vocab, d_model]`, also the output head when tied: a dense tensor, or the
/// GGUF's Q8_0 blocks (on a GPU, uploaded as well, as for [`Linear`]).
#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: Option<Param<Tensor<2>>>,
    #[module(skip)]
    pub blocks: Option<Arc<QuantMatrix>>,
    #[module(skip)]
    pub gpu_blocks: Option<GpuBlocks>,
}

impl Embedding {
    /// `[vocab, d_model]`
    pub fn dims(&self) -> [usize; 2] {
        match (&self.weight, &self.blocks) {
            (Some(w), _) => w.dims(),
            (None, Some(m)) => [m.rows, m.cols],
            (None, None) => unreachable!("an Embedding is built dense or quantized"),
        }
    }

    /// The table as a dense tensor (blocks expanded to f32 on `device`).
    pub fn dense(&self, device: &Device) -> Tensor<2> {
        match (&self.weight, &self.blocks) {
            (Some(w), _) => w.val(),
            (None, Some(m)) => expand(m, device),
            (None, None) => unreachable!("an Embedding is built dense or quantized"),
        }
    }

    fn host_blocks(&self) -> Option<&QuantMatrix> {
        host_blocks(&self.weight, &self.blocks, &self.gpu_blocks)
    }

    /// `[B, T]` ids → `[B, T, d_model]` f32 vectors.
    fn lookup(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        match (&self.weight, self.host_blocks()) {
            (None, None) => burn::tensor::module::embedding(self.dense(&tokens.device()), tokens),
            (Some(w), _) => burn::tensor::module::embedding(w.val(), tokens).cast(FloatDType::F32),
            (None, Some(m)) => {
                let [b, t] = tokens.dims();
                let device = tokens.device();
                let ids: Vec<usize> = tokens
                    .into_data()
                    .convert::<i64>()
                    .iter::<i64>()
                    .map(|id| (id.max(0) as usize).min(m.rows - 1))
                    .collect();
                let rows = m.dequantize_rows(&ids);
                Tensor::from_data(TensorData::new(rows, [b, t, m.cols]), &device)
            }
        }
    }

    /// The tied head: hidden `[N, d]` → logits `[N, vocab]` (f32).
    fn head(&self, h: Tensor<2>) -> Tensor<2> {
        match (&self.weight, self.host_blocks()) {
            (None, None) => {
                let e = self.dense(&h.device());
                h.matmul(e.transpose())
            }
            // For a few rows (decoding), E·hᵀ streams the [vocab, d] embedding in its stored
            // layout, and transposing the small result is cheap. For many rows (prompts,
            // training) that result is [vocab, N] and making it row-major again would copy it
            // (200 MB for 4 × 256 tokens), so h·Eᵀ instead: the backend reads Eᵀ through strides.
            (Some(e), _) => {
                let e = e.val();
                let h = h.cast(e.dtype());
                let logits = if h.dims()[0] <= 16 {
                    e.matmul(h.transpose()).transpose()
                } else {
                    h.matmul(e.transpose())
                };
                logits.cast(FloatDType::F32)
            }
            (None, Some(m)) => times_blocks_transposed(h, m),
        }
    }
}

/// Low-rank update W + scale·A·B, applied as a side path x·A·B (cheaper to train than composing
/// the dense weight: the backward pass never forms a d_in × d_out gradient).
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `[d_in, rank]`
    pub a: Param<Tensor<2>>,
    /// `[rank, d_out]`, zero at initialization so a fresh adapter changes nothing.
    pub b: Param<Tensor<2>>,
    pub scale: f64,
    pub dropout: Option<burn::nn::Dropout>,
}

impl LoraAdapter {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = match &self.dropout {
            Some(d) => d.forward(x),
            None => x,
        };
        // Scaled on the rank-r side: the same product, but the multiply (and its backward) runs
        // over r columns instead of d_out.
        let low = burn::tensor::module::linear(x, self.a.val(), None) * self.scale;
        burn::tensor::module::linear(low, self.b.val(), None)
    }

    /// The dense update scale·A·B, `[d_in, d_out]`.
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()) * self.scale
    }
}

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let rms = (x.clone().square().mean_dim(D - 1) + self.eps).sqrt();
        x / rms * self.weight.val().unsqueeze()
    }
}

/// Precomputed cos/sin tables, `[max_positions, head_dim]`, in the rotate-half layout
/// (the frequencies repeated twice), exactly as transformers builds them (in f32).
#[derive(Module, Debug)]
pub struct Rope {
    pub cos: Tensor<2>,
    pub sin: Tensor<2>,
    /// The frequencies the tables were built from, for computing a position's row on the host.
    #[module(skip)]
    pub inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, max_positions: usize, theta: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let (mut cos, mut sin) =
            (vec![0.0; max_positions * head_dim], vec![0.0; max_positions * head_dim]);
        for (pos, (c, s)) in
            cos.chunks_exact_mut(head_dim).zip(sin.chunks_exact_mut(head_dim)).enumerate()
        {
            rope_row(&inv_freq, pos, c, s);
        }
        let t = |v| Tensor::from_data(TensorData::new(v, [max_positions, head_dim]), device);
        Self { cos: t(cos), sin: t(sin), inv_freq }
    }

    /// The rows of cos and sin for one position, `[head_dim]` each: the tables' rows, computed on
    /// the host by the same function.
    pub fn row(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        rope_row(&self.inv_freq, pos, cos, sin);
    }

    /// cos and sin for each (row, position): `[B, 1, T, head_dim]`, ready to broadcast over heads.
    pub fn at(&self, positions: Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let [b, t] = positions.dims();
        let flat = positions.reshape([b * t]);
        let hd = self.cos.dims()[1];
        let pick = |table: &Tensor<2>| table.clone().select(0, flat.clone()).reshape([b, 1, t, hd]);
        (pick(&self.cos), pick(&self.sin))
    }
}

/// One position's cos and sin rows in the rotate-half layout: the frequencies repeated twice.
fn rope_row(inv_freq: &[f32], pos: usize, cos: &mut [f32], sin: &mut [f32]) {
    let half = inv_freq.len();
    for (i, f) in inv_freq.iter().enumerate() {
        let angle = pos as f32 * f;
        let (c, s) = (angle.cos(), angle.sin());
        (cos[i], cos[i + half]) = (c, c);
        (sin[i], sin[i + half]) = (s, s);
    }
}

/// What every layer needs to know about where the batch's tokens sit.
pub struct Positions {
    /// `[B, 1, T, head_dim]` rotary tables for each token.
    pub cos: Tensor<4>,
    pub sin: Tensor<4>,
    /// `[B, 1, T, T_cached + T]` additive attention mask (`[B, 1, 1, capacity]` when decoding
    /// with a cache), or None when nothing is masked.
    pub bias: Option<Tensor<4>>,
}

/// x·cos + rotate_half(x)·sin, where rotate_half([x1, x2]) = [-x2, x1].
fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, t, hd] = x.dims();
    let x1 = x.clone().slice(s![.., .., .., 0..hd / 2]);
    let x2 = x.clone().slice(s![.., .., .., hd / 2..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    debug_assert_eq!(rotated.dims(), [b, h, t, hd]);
    x * cos.clone() + rotated * sin.clone()
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `x`: `[B, T, D]`; `cache`: this layer's slot in the KV cache, if generating.
    pub fn forward(
        &self,
        x: Tensor<3>,
        pos: &Positions,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (hd, n_kv) = (self.head_dim, self.n_kv_heads);
        let rep = self.n_heads / n_kv;
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);

        let [q, k, v] = Linear::forward_group([&self.q_proj, &self.k_proj, &self.v_proj], x);
        let q = apply_rope(heads(q, self.n_heads), &pos.cos, &pos.sin);
        let k = apply_rope(heads(k, n_kv), &pos.cos, &pos.sin);
        let v = heads(v, n_kv);
        // With a cache, K and V span its capacity. One new token per row (decoding) attends over
        // all of it, unused slots hidden by the bias, so every token has the same shapes; a
        // prompt attends over the keys written so far (`t_keys`).
        let (k, v, t_keys) = match cache {
            Some((cache, layer)) => {
                let t_keys = cache.len() + t;
                let (k, v) = cache.write(layer, k, v);
                if t == 1 {
                    (k, v, t_keys)
                } else {
                    (k.slice(s![.., .., 0..t_keys, ..]), v.slice(s![.., .., 0..t_keys, ..]), t_keys)
                }
            }
            None => (k, v, t),
        };

        // Query heads h = kv·rep + r share KV head kv.
        let q = q.reshape([b, n_kv, rep, t, hd]);
        let out = match &pos.bias {
            // The mask is causal: the i-th of the t new queries sees only the first t_keys − t + i + 1
            // keys. In blocks of queries, each block multiplies just the keys it can see, which
            // skips most of the masked triangle (3/8 of the scores at 256 tokens): arithmetic and
            // exps whose results softmax would zero anyway.
            Some(bias) if t > QUERY_BLOCK => {
                let blocks = (0..t)
                    .step_by(QUERY_BLOCK)
                    .map(|start| {
                        let end = (start + QUERY_BLOCK).min(t);
                        let seen = t_keys - t + end;
                        attend(
                            q.clone().slice(s![.., .., .., start..end, ..]),
                            k.clone().slice(s![.., .., 0..seen, ..]),
                            v.clone().slice(s![.., .., 0..seen, ..]),
                            Some(bias.clone().slice(s![.., .., start..end, 0..seen])),
                        )
                    })
                    .collect();
                Tensor::cat(blocks, 3)
            }
            bias => attend(q, k, v, bias.clone()),
        };
        let out = out.reshape([b, self.n_heads, t, hd]).swap_dims(1, 2).reshape([
            b,
            t,
            self.n_heads * hd,
        ]);
        self.o_proj.forward(out)
    }
}

/// Queries per block when the causal mask lets attention skip keys (see [`Attention::forward`]).
const QUERY_BLOCK: usize = 64;

/// softmax(q·kᵀ/√hd + bias)·v with the query heads grouped by the KV head they share:
/// q `[B, n_kv, rep, Tq, hd]`, k and v `[B, n_kv, Tk, hd]`, bias `[B, 1, Tq, Tk]`.
/// Flattening each group to `[B, n_kv, rep·Tq, hd]` lines its queries up against its keys without
/// copying K and V once per query head. Returns `[B, n_kv, rep, Tq, hd]`.
fn attend(q: Tensor<5>, k: Tensor<4>, v: Tensor<4>, bias: Option<Tensor<4>>) -> Tensor<5> {
    let [b, n_kv, rep, tq, hd] = q.dims();
    let tk = k.dims()[2];
    // The 1/√hd scale goes on q, which is hd/Tk times smaller than the scores.
    let q = q.reshape([b, n_kv, rep * tq, hd]) * (1.0 / (hd as f64).sqrt());
    let scores = q.matmul(k.swap_dims(2, 3));
    let weights = match bias {
        // Broadcast over the KV heads and the query heads of each group (no repeated copy).
        Some(bias) => {
            softmax(scores.reshape([b, n_kv, rep, tq, tk]) + bias.unsqueeze_dim::<5>(1), 4)
                .reshape([b, n_kv, rep * tq, tk])
        }
        None => softmax(scores, 3),
    };
    weights.matmul(v).reshape([b, n_kv, rep, tq, hd])
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [gate, up] = Linear::forward_group([&self.gate_proj, &self.up_proj], x);
        self.down_proj.forward(silu(gate) * up)
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn forward(
        &self,
        x: Tensor<3>,
        pos: &Positions,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let h = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), pos, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

#[derive(Module, Debug)]
pub struct Llama {
    /// `[vocab, d_model]`; also the output head when embeddings are tied.
    pub embed_tokens: Embedding,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// Present only for untied models: `[d_model, vocab]`.
    pub lm_head: Option<Linear>,
    pub rope: Rope,
    pub vocab_size: usize,
    pub context_length: usize,
}

/// The projection names LoRA targets use (PEFT's `target_modules`).
pub const PROJECTIONS: [&str; 7] =
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Inputs for one forward pass: token ids, their positions and the attention bias.
pub struct Batch {
    /// `[B, T]`
    pub tokens: Tensor<2, Int>,
    /// `[B, T]`: the RoPE position of each token (left padding makes these differ per row).
    pub positions: Tensor<2, Int>,
    /// `[B, 1, T, T_cached + T]` additive bias, or None when no key is masked. One new token per
    /// row with a cache needs none: the cache masks its padding and unused slots itself.
    pub bias: Option<Tensor<4>>,
}

impl Batch {
    /// One unpadded sequence, every position attending to those before it: a full causal pass.
    pub fn causal(ids: &[u32], device: &Device) -> Batch {
        let t = ids.len();
        Self::causal_rows(Tensor::from_data(
            TensorData::new(ids.iter().map(|&i| i as i32).collect::<Vec<_>>(), [1, t]),
            device,
        ))
    }

    /// Prompts of different lengths, left-padded so that every row's last token sits in the same
    /// column, with per-row positions and a bias that hides the padding. Also returns each row's
    /// padding (what [`KvCache::with_padding`] needs to keep hiding it).
    pub fn left_padded(prompts: &[Vec<u32>], device: &Device) -> (Batch, Vec<usize>) {
        let (b, longest) = (prompts.len(), prompts.iter().map(Vec::len).max().unwrap_or(0));
        let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let key_valid: Vec<Vec<bool>> =
            pads.iter().map(|&pad| (0..longest).map(|j| j >= pad).collect()).collect();
        let tokens: Vec<i32> = prompts
            .iter()
            .zip(&pads)
            .flat_map(|(p, &pad)| std::iter::repeat_n(0, pad).chain(p.iter().map(|&id| id as i32)))
            .collect();
        let positions: Vec<i32> = pads
            .iter()
            .flat_map(|&pad| (0..longest).map(move |j| j.saturating_sub(pad) as i32))
            .collect();
        let ints = |v: Vec<i32>| Tensor::from_data(TensorData::new(v, [b, longest]), device);
        let batch = Batch {
            tokens: ints(tokens),
            positions: ints(positions),
            bias: Some(attention_bias(&key_valid, longest, device)),
        };
        (batch, pads)
    }

    /// Rows `[B, T]` that each start at position 0 (right padding, if any, is never attended to
    /// by the real tokens before it): a full causal pass per row.
    pub fn causal_rows(tokens: Tensor<2, Int>) -> Batch {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        Batch {
            positions: Tensor::from_data(
                TensorData::new((0..b).flat_map(|_| 0..t as i32).collect::<Vec<_>>(), [b, t]),
                &device,
            ),
            bias: Some(attention_bias(&vec![vec![true; t]; b], t, &device)),
            tokens,
        }
    }
}

/// Additive bias `[B, 1, T_new, T_keys]` for the last `t_new` queries: 0 where query i may attend
/// to key j (j is not padding and not in the future), [`MASK_BIAS`] elsewhere.
pub fn attention_bias(key_valid: &[Vec<bool>], t_new: usize, device: &Device) -> Tensor<4> {
    let b = key_valid.len();
    let t_keys = key_valid.first().map_or(0, Vec::len);
    let first_query = t_keys - t_new;
    let mut bias = Vec::with_capacity(b * t_new * t_keys);
    for valid in key_valid {
        for i in 0..t_new {
            let q = first_query + i;
            bias.extend(
                valid.iter().enumerate().map(|(j, &ok)| if ok && j <= q { 0.0 } else { MASK_BIAS }),
            );
        }
    }
    Tensor::from_data(TensorData::new(bias, [b, 1, t_new, t_keys]), device)
}

impl Llama {
    /// Final hidden states `[B, T, D]` (after the last norm).
    pub fn forward_hidden(&self, batch: Batch, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let [b, t] = batch.tokens.dims();
        let mut bias = batch.bias;
        if let Some(cache) = cache.as_deref_mut() {
            cache.prepare(t);
            if t == 1 {
                bias = Some(cache.decode_bias(b, &batch.tokens.device()));
            }
        }
        let (cos, sin) = self.rope.at(batch.positions);
        let pos = Positions { cos, sin, bias };
        // The residual stream is f32 whatever the weights' storage precision.
        let mut x = self.embed_tokens.lookup(batch.tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, &pos, cache.as_deref_mut().map(|c| (c, i)));
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        self.norm.forward(x)
    }

    /// Logits `[B, T, vocab]` for hidden states `[B, T, D]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, t, d] = hidden.dims();
                self.embed_tokens.head(hidden.reshape([b * t, d])).reshape([b, t, self.vocab_size])
            }
        }
    }

    /// Logits for every position: `[B, T, vocab]`.
    pub fn forward(&self, batch: Batch, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.logits(self.forward_hidden(batch, cache))
    }

    /// Logits of the last position only, `[B, vocab]`: what generation needs.
    pub fn forward_last(&self, batch: Batch, cache: Option<&mut KvCache>) -> Tensor<2> {
        // With a cache on a GPU, prompt and decoding steps alike: the kernels of gpu_decode.rs,
        // a few launches per layer instead of dozens.
        #[cfg(feature = "gpu-kernels")]
        let mut cache = cache;
        #[cfg(feature = "gpu-kernels")]
        if let Some(cache) = cache.as_deref_mut()
            && self.runs_gpu_kernels()
        {
            return self.forward_last_gpu(batch, cache);
        }
        // On the CPU over blocks, decoding steps and prompts short enough for the quantized
        // kernels: plain loops around them (cpu_decode.rs).
        #[cfg(not(feature = "gpu-kernels"))]
        let mut cache = cache;
        let [b, t] = batch.tokens.dims();
        if let Some(cache) = cache.as_deref_mut()
            && self.runs_cpu_pass(b * t)
        {
            return self.forward_last_cpu(batch, cache);
        }
        let h = self.forward_hidden(batch, cache);
        let [b, t, _] = h.dims();
        self.logits(h.slice(s![.., t - 1..t, ..])).reshape([b, self.vocab_size])
    }

    /// Hugging Face module names of every projection LoRA can adapt
    /// (`model.layers.3.self_attn.q_proj`), in a fixed order: (layer, index into [`PROJECTIONS`]).
    pub fn projection_names(&self) -> Vec<(usize, usize, String)> {
        let mut out = Vec::with_capacity(self.layers.len() * PROJECTIONS.len());
        for layer in 0..self.layers.len() {
            for (j, p) in PROJECTIONS.iter().enumerate() {
                let block = if j < 4 { "self_attn" } else { "mlp" };
                out.push((layer, j, format!("model.layers.{layer}.{block}.{p}")));
            }
        }
        out
    }

    pub fn projection(&self, layer: usize, which: usize) -> &Linear {
        let (a, m) = (&self.layers[layer].self_attn, &self.layers[layer].mlp);
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj][which]
    }

    pub fn projection_mut(&mut self, layer: usize, which: usize) -> &mut Linear {
        let l = &mut self.layers[layer];
        let (a, m) = (&mut l.self_attn, &mut l.mlp);
        match which {
            0 => &mut a.q_proj,
            1 => &mut a.k_proj,
            2 => &mut a.v_proj,
            3 => &mut a.o_proj,
            4 => &mut m.gate_proj,
            5 => &mut m.up_proj,
            6 => &mut m.down_proj,
            _ => panic!(
                "projection index {which} is not one of the {} in PROJECTIONS",
                PROJECTIONS.len()
            ),
        }
    }

    pub fn device(&self) -> Device {
        self.rope.cos.device()
    }

    /// Bytes the matrices take where they are computed: blocks as uploaded on a GPU (or as held on
    /// the host), dense weights at their dtype's size; adapters and norms included.
    pub fn weight_bytes(&self) -> usize {
        let linear = |l: &Linear| {
            held_bytes(&l.weight, &l.blocks, &l.gpu_blocks)
                + l.lora.as_ref().map_or(0, |a| dense_bytes(&a.a.val()) + dense_bytes(&a.b.val()))
        };
        let e = &self.embed_tokens;
        let embedding = held_bytes(&e.weight, &e.blocks, &e.gpu_blocks);
        let norms = (2 * self.layers.len() + 1) * self.norm.weight.dims()[0] * 4;
        let projections: usize = self
            .projection_names()
            .iter()
            .map(|&(layer, which, _)| linear(self.projection(layer, which)))
            .sum();
        embedding + projections + norms + self.lm_head.as_ref().map_or(0, linear)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Builds the model from host weights in Hugging Face layout (checked against the config).
    /// Matrices (projections, embeddings) are stored in `dtype`; norms and the residual stream stay f32.
    pub fn from_weights(
        cfg: &LlamaConfig,
        mut w: Weights,
        device: &Device,
        dtype: FloatDType,
    ) -> Result<Self, Error> {
        w.check(cfg).map_err(|e| Error::Invalid(e.to_string()))?;
        if !w.quantized.is_empty() && !crate::device::runs_blocks(device) {
            return Err(Error::Invalid(
                "quantized (q4_1) weights run without autodiff only (the CPU backend or a GPU's decoding kernels): use f32 or f16".into(),
            ));
        }
        let mut take = |name: &str| w.take_matrix(name).map_err(|e| Error::Invalid(e.to_string()));
        let tensor2 = |t: HostTensor| {
            Tensor::<2>::from_data(
                TensorData::new(t.data, [t.shape[0], t.shape[1]]),
                (device, dtype.into()),
            )
        };
        // HF stores [out, in]; a dense Linear wants [in, out]: transpose on the host once.
        // Blocks stay [out, in], the layout their kernels read.
        let linear = |m: Matrix| match m {
            Matrix::Dense(t) => Linear::dense(tensor2(transpose(&t))),
            Matrix::Blocks(m) => Linear::quantized(m, device),
        };
        let norm = |m: Matrix| {
            let t = match m {
                Matrix::Dense(t) => t,
                Matrix::Blocks(m) => {
                    HostTensor { shape: vec![m.rows * m.cols], data: m.dequantize() }
                }
            };
            RmsNorm {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(t.data, [t.shape[0]]),
                    device,
                )),
                eps: cfg.rms_norm_eps,
            }
        };

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Block {
                input_layernorm: norm(take(&format!("{p}.input_layernorm.weight"))?),
                self_attn: Attention {
                    q_proj: linear(take(&format!("{p}.self_attn.q_proj.weight"))?),
                    k_proj: linear(take(&format!("{p}.self_attn.k_proj.weight"))?),
                    v_proj: linear(take(&format!("{p}.self_attn.v_proj.weight"))?),
                    o_proj: linear(take(&format!("{p}.self_attn.o_proj.weight"))?),
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim(),
                },
                post_attention_layernorm: norm(take(&format!(
                    "{p}.post_attention_layernorm.weight"
                ))?),
                mlp: Mlp {
                    gate_proj: linear(take(&format!("{p}.mlp.gate_proj.weight"))?),
                    up_proj: linear(take(&format!("{p}.mlp.up_proj.weight"))?),
                    down_proj: linear(take(&format!("{p}.mlp.down_proj.weight"))?),
                },
            });
        }
        let lm_head =
            if cfg.tie_word_embeddings { None } else { Some(linear(take("lm_head.weight")?)) };
        Ok(Self {
            embed_tokens: match take("model.embed_tokens.weight")? {
                Matrix::Dense(t) => {
                    let weight = Some(Param::from_tensor(tensor2(t)));
                    Embedding { weight, blocks: None, gpu_blocks: None }
                }
                Matrix::Blocks(m) => Embedding {
                    weight: None,
                    gpu_blocks: GpuBlocks::on(&m, device),
                    blocks: Some(Arc::new(m)),
                },
            },
            layers,
            norm: norm(take("model.norm.weight")?),
            lm_head,
            rope: Rope::new(cfg.head_dim(), cfg.max_position_embeddings, cfg.rope_theta, device),
            vocab_size: cfg.vocab_size,
            context_length: cfg.max_position_embeddings,
        })
    }

    /// The weights back on the host in Hugging Face layout, f32 (the inverse of [`Llama::from_weights`];
    /// adapters still attached are ignored: [`crate::lora::merge`] first). Reads synchronously, so
    /// native or the CPU backend only.
    pub fn to_weights(&self) -> Result<Weights, Error> {
        let host = |t: Tensor<2>| -> Result<HostTensor, Error> {
            let shape = t.dims().to_vec();
            let data = t
                .cast(FloatDType::F32)
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| Error::Invalid(format!("{e:?}")))?;
            Ok(HostTensor { shape, data })
        };
        let device = self.device();
        let mut w = Weights::default();
        let mut put = |name: String, t: HostTensor| {
            w.tensors.insert(name, t);
        };
        for (layer, which, name) in self.projection_names() {
            put(
                format!("{name}.weight"),
                transpose(&host(self.projection(layer, which).dense_weight(&device))?),
            );
        }
        for (i, block) in self.layers.iter().enumerate() {
            for (norm, n) in [
                ("input_layernorm", &block.input_layernorm),
                ("post_attention_layernorm", &block.post_attention_layernorm),
            ] {
                put(
                    format!("model.layers.{i}.{norm}.weight"),
                    host(n.weight.val().unsqueeze_dim(0))?.flatten(),
                );
            }
        }
        put("model.norm.weight".into(), host(self.norm.weight.val().unsqueeze_dim(0))?.flatten());
        put("model.embed_tokens.weight".into(), host(self.embed_tokens.dense(&device))?);
        if let Some(head) = &self.lm_head {
            put("lm_head.weight".into(), transpose(&host(head.dense_weight(&device))?));
        }
        Ok(w)
    }

    /// Random weights (N(0, 0.02), embeddings N(0, 0.3), norms at 1) from a seed: identical on every platform,
    /// so native and browser tests can compare the same tiny model.
    pub fn random_weights(cfg: &LlamaConfig, seed: u64) -> Weights {
        let mut rng = Rng::new(seed);
        let mut w = Weights::default();
        for (name, shape) in expected_shapes(cfg) {
            let n: usize = shape.iter().product();
            // Embeddings wider than the rest so the tied head can produce peaked distributions
            // (with std 0.02 a tiny model's logits span barely ±2).
            let std = if name.contains("embed_tokens") { 0.3 } else { 0.02 };
            let data = if shape.len() == 1 {
                vec![1.0; n]
            } else {
                (0..n).map(|_| std * normal(&mut rng)).collect()
            };
            w.tensors.insert(name, HostTensor { shape, data });
        }
        w
    }
}

impl HostTensor {
    /// `[1, n]` → `[n]`.
    fn flatten(self) -> Self {
        HostTensor { shape: vec![self.data.len()], data: self.data }
    }
}

fn transpose(t: &HostTensor) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut out = vec![0.0; t.data.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = t.data[i * c + j];
        }
    }
    HostTensor { shape: vec![c, r], data: out }
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut Rng) -> f32 {
    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
    let u2 = rng.next_f64();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
