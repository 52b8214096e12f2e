//! A cached forward pass on a GPU with the kernels of [`crate::kernels`]: seven launches per
//! layer, for the prompt (all its tokens at once) and for each decoding step alike, and eight
//! more with a LoRA adapter (the two halves of each group's side path).
//!
//! The weights are dense f32, or the GGUF's blocks as they were uploaded ([`GpuBlocks`]: Q4_1
//! projections and the Q8_0 embedding, dequantized inside the kernels).
//!
//! The same computation as [`Llama::forward_last`] with a cache, which remains the reference
//! (and the path for everything these kernels do not cover: the CPU backend, weights stored in
//! f16, an untied head, passes without a cache).

use burn::backend::{Dispatch, DispatchTensor, DispatchTensorKind};
use burn::prelude::*;
use burn::tensor::DType;

use crate::kernels::{DecodeOps, supported_width};
use crate::model::{Batch, GpuBlocks, KvCache, Linear, Llama};
use crate::quant::BlockFormat;

fn float(t: Tensor<2>) -> DispatchTensor {
    t.into_dispatch()
}

/// A matrix as the kernels read it: dense f32 `[k, n]`, or blocks.
enum Weight {
    Dense(DispatchTensor),
    Blocks(DispatchTensor, BlockFormat),
}

impl Weight {
    fn of(l: &Linear, device: &Device) -> Self {
        match &l.gpu_blocks {
            Some(b) => Self::blocks(b),
            None => Self::Dense(float(l.dense_weight(device))),
        }
    }

    fn blocks(b: &GpuBlocks) -> Self {
        Self::Blocks(b.words.clone().into_dispatch(), b.format)
    }
}

/// Whether the kernels read this dense matrix: f32, both widths a multiple of their vectors.
fn dense_fits(w: &Tensor<2>) -> bool {
    let [rows, cols] = w.dims();
    w.dtype() == DType::F32 && supported_width(rows) && supported_width(cols)
}

/// How a group's matrices are held, if the kernels can read them together: all dense f32, or
/// all blocks of one format.
fn group_layout(members: &[&Linear]) -> Option<Option<BlockFormat>> {
    let layout = |l: &Linear| match (&l.gpu_blocks, &l.weight) {
        (Some(b), _) => Some(Some(b.format)),
        (None, Some(w)) => dense_fits(&w.val()).then_some(None),
        (None, None) => None,
    };
    let first = layout(members[0])?;
    members.iter().all(|l| layout(l) == Some(first)).then_some(first)
}

/// `rmsnorm(x)·[w0 | w1 | w2]` (+ `side` when `with_side`), over either kind of weights.
#[allow(clippy::too_many_arguments)]
fn norm_matvec3(
    x: DispatchTensor,
    gamma: DispatchTensor,
    w: [Weight; 3],
    side: DispatchTensor,
    width: usize,
    eps: f32,
    with_side: bool,
) -> DispatchTensor {
    match w {
        [Weight::Dense(w0), Weight::Dense(w1), Weight::Dense(w2)] => {
            Dispatch::norm_matvec3(x, gamma, w0, w1, w2, side, width, eps, with_side)
        }
        [Weight::Blocks(w0, f), Weight::Blocks(w1, _), Weight::Blocks(w2, _)] => {
            Dispatch::norm_matvec3_blocks(x, gamma, w0, w1, w2, side, width, eps, with_side, f)
        }
        _ => unreachable!("a group's weights are all dense or all blocks (group_layout)"),
    }
}

/// The LoRA side path of projections that read one input (Q, K and V; gate and up; o; down):
/// `mask` bit i set when member i has an adapter, the A's of those members in order (x·A for
/// all of them is one product, `rank` columns each), every member's B (a filler, never bound,
/// for members without one), and the adapters' common scale.
struct SidePath<const N: usize> {
    mask: u32,
    a: Vec<Tensor<2>>,
    b: [DispatchTensor; N],
    widths: [usize; N],
    rank: usize,
    scale: f32,
}

impl<const N: usize> SidePath<N> {
    fn of(members: [&Linear; N], filler: &Tensor<2>) -> Option<Self> {
        let mut mask = 0;
        let (mut a, mut rank, mut scale) = (Vec::new(), 0, 0.0);
        for (i, l) in members.iter().enumerate() {
            if let Some(lora) = &l.lora {
                mask |= 1 << i;
                a.push(lora.a.val());
                rank = lora.a.dims()[1];
                scale = lora.scale as f32;
            }
        }
        (mask != 0).then(|| Self {
            mask,
            a,
            b: members.map(|l| float(l.lora.as_ref().map_or(filler.clone(), |lora| lora.b.val()))),
            widths: members.map(|l| l.dims()[1]),
            rank,
            scale,
        })
    }

    /// `scale·low·[B's]`, `[rows, Σ widths]`, from the down half `low`.
    fn up(self, low: DispatchTensor, filler: &Tensor<2>) -> DispatchTensor {
        let [b0, b1, b2] =
            std::array::from_fn(|i| self.b.get(i).cloned().unwrap_or(float(filler.clone())));
        let n = |i: usize| self.widths.get(i).copied().unwrap_or(0);
        Dispatch::lora_up(low, b0, b1, b2, n(0), n(1), n(2), self.rank, self.scale, self.mask)
    }

    /// The side path of a group whose product norms its input: `rmsnorm(x)·[A's]`, then its
    /// up half.
    fn normed(
        self,
        x: &Tensor<2>,
        gamma: &DispatchTensor,
        eps: f32,
        filler: &Tensor<2>,
    ) -> DispatchTensor {
        // The A's padded to three with the first, unread past `rank·a.len()` columns.
        let [a0, a1, a2] =
            std::array::from_fn(|i| float(self.a.get(i).unwrap_or(&self.a[0]).clone()));
        let width = self.rank * self.a.len();
        let f = float(filler.clone());
        let low = Dispatch::norm_matvec3(
            float(x.clone()),
            gamma.clone(),
            a0,
            a1,
            a2,
            f,
            width,
            eps,
            false,
        );
        self.up(low, filler)
    }
}

impl Llama {
    /// Whether a cached pass runs on these kernels ([`Llama::forward_last_gpu`]) rather than
    /// burn's generic ops: on a cubecl device, a tied head, each group of products that share an
    /// input all f32 or all blocks of one format, the embeddings f32 or blocks, and adapters (if
    /// any) in f32 that share one rank (a multiple of the kernels' vector width) and one scale.
    pub fn runs_gpu_kernels(&self) -> bool {
        let embeddings_fit = match (&self.embed_tokens.gpu_blocks, &self.embed_tokens.weight) {
            (Some(_), _) => true,
            (None, Some(e)) => {
                let e = e.val();
                matches!(e.clone().into_dispatch().kind, DispatchTensorKind::Cube(_))
                    && dense_fits(&e)
            }
            (None, None) => false,
        };
        embeddings_fit
            && self.lm_head.is_none()
            && self.layers.iter().all(|l| {
                let (a, m) = (&l.self_attn, &l.mlp);
                group_layout(&[&a.q_proj, &a.k_proj, &a.v_proj]).is_some()
                    && group_layout(&[&a.o_proj]).is_some()
                    && group_layout(&[&m.gate_proj, &m.up_proj]).is_some()
                    && group_layout(&[&m.down_proj]).is_some()
            })
            && self.adapters_fit_the_gpu_kernels()
    }

    fn adapters_fit_the_gpu_kernels(&self) -> bool {
        let mut shared: Option<(usize, f64)> = None;
        self.projection_names().iter().all(|&(layer, which, _)| {
            let Some(lora) = &self.projection(layer, which).lora else { return true };
            let rank = lora.a.dims()[1];
            let fits = lora.a.val().dtype() == DType::F32
                && lora.b.val().dtype() == DType::F32
                && supported_width(rank)
                && shared.is_none_or(|s| s == (rank, lora.scale));
            shared = Some((rank, lora.scale));
            fits
        })
    }

    /// Logits `[B, vocab]` of each row's last token, for `T` new tokens per row
    /// (`batch.tokens` `[B, T]`) written into the cache from its current length on. The cache's
    /// padding and causality mask the keys; `batch.bias` is not read.
    pub(crate) fn forward_last_gpu(&self, batch: Batch, cache: &mut KvCache) -> Tensor<2> {
        let [b, t] = batch.tokens.dims();
        let device = batch.tokens.device();
        cache.prepare(t);
        let slot = cache.len() as u32;
        let pads = cache.pads_tensor(b, &device).into_dispatch();
        let positions = batch.positions.reshape([b * t]).into_dispatch();
        let d = self.embed_tokens.dims()[1];
        // Row r of every activation is token r % t of sequence r / t.
        let mut x = match &self.embed_tokens.gpu_blocks {
            Some(GpuBlocks { words, format }) => Tensor::from_dispatch(Dispatch::embed_blocks(
                batch.tokens.into_dispatch(),
                words.clone().into_dispatch(),
                d,
                *format,
            )),
            None => burn::tensor::module::embedding(self.embed_tokens.dense(&device), batch.tokens)
                .reshape([b * t, d]),
        };
        // Any small tensor of the device stands in for side-path inputs a kernel does not read.
        let filler = self.rope.cos.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = &layer.self_attn;
            let (n_q, hd) = (attn.n_heads * attn.head_dim, attn.head_dim);
            let norm = &layer.input_layernorm;
            let (gamma, eps) = (norm.weight.val().into_dispatch(), norm.eps as f32);
            let side = SidePath::of([&attn.q_proj, &attn.k_proj, &attn.v_proj], &filler)
                .map(|s| s.normed(&x, &gamma, eps, &filler));
            let qkv_proj = [&attn.q_proj, &attn.k_proj, &attn.v_proj];
            let width = qkv_proj.iter().map(|p| p.dims()[1]).sum();
            let with_side = side.is_some();
            let qkv = norm_matvec3(
                float(x.clone()),
                gamma,
                qkv_proj.map(|p| Weight::of(p, &device)),
                side.unwrap_or_else(|| float(filler.clone())),
                width,
                eps,
                with_side,
            );
            let (k, v) = cache.take_layer(i, [b, attn.n_kv_heads, hd], &device);
            let (q, k, v) = Dispatch::rope_cache(
                qkv,
                self.rope.cos.clone().into_dispatch(),
                self.rope.sin.clone().into_dispatch(),
                positions.clone(),
                k.into_dispatch(),
                v.into_dispatch(),
                n_q,
                slot,
            );
            let (k, v) = (Tensor::<4>::from_dispatch(k), Tensor::<4>::from_dispatch(v));
            let out = Dispatch::attend(
                q,
                k.clone().into_dispatch(),
                v.clone().into_dispatch(),
                pads.clone(),
                slot,
            );
            cache.put(i, k, v);
            x = Tensor::from_dispatch(product_add(out, &attn.o_proj, x, &filler, &device));
            let (mlp, norm) = (&layer.mlp, &layer.post_attention_layernorm);
            let (gamma, eps) = (norm.weight.val().into_dispatch(), norm.eps as f32);
            let side = SidePath::of([&mlp.gate_proj, &mlp.up_proj], &filler)
                .map(|s| s.normed(&x, &gamma, eps, &filler));
            let (x_in, side) = (float(x.clone()), side.unwrap_or_else(|| float(filler.clone())));
            let h = match [&mlp.gate_proj, &mlp.up_proj].map(|p| Weight::of(p, &device)) {
                [Weight::Dense(wg), Weight::Dense(wu)] => {
                    Dispatch::norm_gate_up(x_in, gamma, wg, wu, side, eps, with_side)
                }
                [Weight::Blocks(wg, f), Weight::Blocks(wu, _)] => {
                    Dispatch::norm_gate_up_blocks(x_in, gamma, wg, wu, side, eps, with_side, f)
                }
                _ => unreachable!("a group's weights are all dense or all blocks (group_layout)"),
            };
            x = Tensor::from_dispatch(product_add(h, &mlp.down_proj, x, &filler, &device));
        }
        cache.advance(t);
        if t > 1 {
            x = x.reshape([b, t, d]).slice(s![.., t - 1..t, ..]).reshape([b, d]);
        }
        let (gamma, eps) = (self.norm.weight.val().into_dispatch(), self.norm.eps as f32);
        Tensor::from_dispatch(match &self.embed_tokens.gpu_blocks {
            // The head over blocks is a product like the others: the table's one matrix
            // (`[d / 32 · words, vocab]`) three times, read up to its width.
            Some(blocks) => {
                let e = || Weight::blocks(blocks);
                let f = float(filler.clone());
                norm_matvec3(float(x), gamma, [e(), e(), e()], f, self.vocab_size, eps, false)
            }
            None => {
                Dispatch::norm_head(float(x), gamma, float(self.embed_tokens.dense(&device)), eps)
            }
        })
    }
}

/// `residual + x·W` with the projection's side path, if it has one (the o and down projections).
fn product_add(
    x: DispatchTensor,
    proj: &Linear,
    residual: Tensor<2>,
    filler: &Tensor<2>,
    device: &Device,
) -> DispatchTensor {
    let f = || float(filler.clone());
    let side = SidePath::of([proj], filler).map(|s| {
        let low = Dispatch::matvec_add(x.clone(), float(s.a[0].clone()), f(), f(), false, false);
        s.up(low, filler)
    });
    let with_side = side.is_some();
    let (residual, side) = (float(residual), side.unwrap_or_else(f));
    match Weight::of(proj, device) {
        Weight::Dense(w) => Dispatch::matvec_add(x, w, residual, side, true, with_side),
        Weight::Blocks(w, format) => {
            Dispatch::matvec_add_blocks(x, w, residual, side, true, with_side, format)
        }
    }
}
