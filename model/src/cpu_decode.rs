//! A cached forward pass on the CPU over the GGUF's blocks, for a prompt (up to
//! [`crate::model::QUANT_KERNEL_MAX_ROWS`] tokens in all) or a decoding step, computed on plain f32 buffers with
//! the quantized kernels of [`crate::quant`], the KV cache written in place.
//!
//! The same computation as [`Llama::forward_last`] with a cache, which remains the reference (and
//! the path for longer prompts, dense weights and GPUs). Through burn a step is some fifty small tensor
//! operations per layer, each with its own allocation and dispatch; at batch 1 they cost as much
//! as the weight products themselves. Here a layer is its four products and a few loops.

use burn::prelude::*;

use crate::host_weights::{HostLora, HostWeights};
use crate::model::{Batch, KvCache, Linear, Llama, PROJECTIONS, RmsNorm};
use crate::quant::QuantMatrix;

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 data")
}

/// The host copies a decoding step reads, made from the model at a generation's first step.
fn host_weights(model: &Llama) -> HostWeights {
    let lora = |l: &Linear| {
        l.lora.as_ref().map(|lora| {
            let flat = |t: Tensor<2>| host(t.reshape([-1]));
            HostLora {
                a: flat(lora.a.val()),
                b: flat(lora.b.val()),
                rank: lora.a.dims()[1],
                scale: lora.scale as f32,
            }
        })
    };
    HostWeights {
        norms: model
            .layers
            .iter()
            .map(|l| {
                [
                    host(l.input_layernorm.weight.val()),
                    host(l.post_attention_layernorm.weight.val()),
                ]
            })
            .collect(),
        final_norm: host(model.norm.weight.val()),
        lora: (0..model.layers.len())
            .map(|i| (0..PROJECTIONS.len()).map(|j| lora(model.projection(i, j))).collect())
            .collect(),
    }
}

impl Llama {
    /// Whether [`Llama::forward_last_cpu`] can run this model: every product, the embeddings and
    /// the tied head held as blocks on the host (a model on a GPU has its own kernels).
    pub(crate) fn cpu_decode_supported(&self) -> bool {
        let blocks =
            |l: &Linear| l.weight.is_none() && l.blocks.is_some() && l.gpu_blocks.is_none();
        self.embed_tokens.weight.is_none()
            && self.embed_tokens.blocks.is_some()
            && self.embed_tokens.gpu_blocks.is_none()
            && self.lm_head.is_none()
            && (0..self.layers.len())
                .all(|i| (0..PROJECTIONS.len()).all(|j| blocks(self.projection(i, j))))
    }

    /// Whether a cached pass of `tokens` tokens in all (rows × padded length) runs on the CPU
    /// pass of this module, which computes each token bit for bit as it would in any other pass
    /// (every product, norm and attention is per token, over its own row's keys, and the kernels
    /// give a row the same bits whatever rows are beside it).
    pub fn runs_cpu_pass(&self, tokens: usize) -> bool {
        tokens <= crate::model::QUANT_KERNEL_MAX_ROWS && self.cpu_decode_supported()
    }

    /// Logits `[B, vocab]` of each row's last token, for `T` new tokens per row
    /// (`batch.tokens` `[B, T]`) written into the cache from its current length on. The cache's
    /// padding and causality mask the keys; `batch.bias` is not read.
    pub(crate) fn forward_last_cpu(&self, batch: Batch, cache: &mut KvCache) -> Tensor<2> {
        // The whole step on one of the thread pool's workers: its products then fork and join
        // among workers that are still spinning from the last one, instead of waking the pool
        // and putting this thread to sleep some 120 times per token.
        rayon::scope(|_| self.cpu_pass(batch, cache))
    }

    fn cpu_pass(&self, batch: Batch, cache: &mut KvCache) -> Tensor<2> {
        let [b, t] = batch.tokens.dims();
        // Row a of every activation is token a % t of sequence a / t.
        let n = b * t;
        let device = batch.tokens.device();
        let ints = |x: Tensor<2, Int>| -> Vec<usize> {
            x.into_data().convert::<i64>().iter::<i64>().map(|v| v.max(0) as usize).collect()
        };
        let positions = ints(batch.positions);
        let embed = self.embed_tokens.blocks.as_deref().expect("blocks (cpu_decode_supported)");
        let ids: Vec<usize> =
            ints(batch.tokens).into_iter().map(|id| id.min(embed.rows - 1)).collect();
        let weights = cache.host_weights(|| host_weights(self));

        cache.prepare(t);
        let (slot, cap) = (cache.len(), cache.capacity());
        let pads: Vec<usize> =
            (0..b).map(|r| cache.padding().get(r).copied().unwrap_or(0)).collect();
        let attn0 = &self.layers[0].self_attn;
        let (n_heads, n_kv, hd) = (attn0.n_heads, attn0.n_kv_heads, attn0.head_dim);
        let d = embed.cols;

        // RoPE rows per token, the same for every layer.
        let (mut cos, mut sin) = (vec![0.0f32; n * hd], vec![0.0f32; n * hd]);
        for (a, &p) in positions.iter().enumerate() {
            self.rope.row(p, &mut cos[a * hd..(a + 1) * hd], &mut sin[a * hd..(a + 1) * hd]);
        }

        let mut x = embed.dequantize_rows(&ids);
        let mut h = vec![0.0f32; n * d];
        for (i, layer) in self.layers.iter().enumerate() {
            let (attn, mlp) = (&layer.self_attn, &layer.mlp);
            let lora = &weights.lora[i];

            rms_norm(&x, &weights.norms[i][0], &layer.input_layernorm, &mut h);
            let [mut q, mut k, v] = products(
                [&attn.q_proj, &attn.k_proj, &attn.v_proj],
                [&lora[0], &lora[1], &lora[2]],
                &h,
                n,
            );
            for a in 0..n {
                let (c, s) = (&cos[a * hd..(a + 1) * hd], &sin[a * hd..(a + 1) * hd]);
                for head in q[a * n_heads * hd..(a + 1) * n_heads * hd].chunks_exact_mut(hd) {
                    rope(head, c, s);
                }
                for head in k[a * n_kv * hd..(a + 1) * n_kv * hd].chunks_exact_mut(hd) {
                    rope(head, c, s);
                }
            }

            let (kt, vt) = cache.take_layer(i, [b, n_kv, hd], &device);
            let (mut kd, mut vd) = (kt.into_data(), vt.into_data());
            let (kc, vc) = (
                kd.as_mut_slice::<f32>().expect("an f32 cache"),
                vd.as_mut_slice::<f32>().expect("an f32 cache"),
            );
            for a in 0..n {
                let (r, i) = (a / t, a % t);
                for g in 0..n_kv {
                    let at = ((r * n_kv + g) * cap + slot + i) * hd;
                    let from = (a * n_kv + g) * hd;
                    kc[at..at + hd].copy_from_slice(&k[from..from + hd]);
                    vc[at..at + hd].copy_from_slice(&v[from..from + hd]);
                }
            }
            let shape = AttendShape { t, n_heads, n_kv, hd, cap, slot };
            let out = attend(&q, kc, vc, shape, &pads);
            cache.put(i, Tensor::from_data(kd, &device), Tensor::from_data(vd, &device));

            let [o] = products([&attn.o_proj], [&lora[3]], &out, n);
            add(&mut x, &o);
            rms_norm(&x, &weights.norms[i][1], &layer.post_attention_layernorm, &mut h);
            let [mut gate, up] =
                products([&mlp.gate_proj, &mlp.up_proj], [&lora[4], &lora[5]], &h, n);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            let [down] = products([&mlp.down_proj], [&lora[6]], &gate, n);
            add(&mut x, &down);
        }
        cache.advance(t);
        let last: Vec<f32> =
            x.chunks_exact(t * d).flat_map(|row| row[(t - 1) * d..].iter().copied()).collect();
        let mut h = vec![0.0f32; b * d];
        rms_norm(&last, &weights.final_norm, &self.norm, &mut h);
        let mut logits = vec![0.0f32; b * self.vocab_size];
        embed.matmul(&h, b, &mut logits);
        Tensor::from_data(TensorData::new(logits, [b, self.vocab_size]), &device)
    }
}

/// y = x / √(mean(x²) + ε) · w, per row.
fn rms_norm(x: &[f32], w: &[f32], norm: &RmsNorm, y: &mut [f32]) {
    let d = w.len();
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let mean = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let rms = (mean + norm.eps as f32).sqrt();
        for ((y, &x), &w) in yr.iter_mut().zip(xr).zip(w) {
            *y = x / rms * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// x·cos + rotate_half(x)·sin in place, rotate_half([x1, x2]) = [−x2, x1].
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (x1, x2) = (x[i], x[i + half]);
        x[i] = x1 * cos[i] + -x2 * sin[i];
        x[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
    }
}

/// The products of N projections of one input `x` `[b, d_in]` (one pass of the kernels), each
/// with its LoRA side path added: y += (x·A·scale)·B.
fn products<const N: usize>(
    linears: [&Linear; N],
    loras: [&Option<HostLora>; N],
    x: &[f32],
    b: usize,
) -> [Vec<f32>; N] {
    let mats: Vec<&QuantMatrix> =
        linears.iter().map(|l| l.blocks.as_deref().expect("blocks")).collect();
    let mut ys: [Vec<f32>; N] = std::array::from_fn(|i| vec![0.0f32; b * mats[i].rows]);
    {
        let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
        QuantMatrix::matmul_group(&mats, x, b, &mut outs);
    }
    for ((y, lora), m) in ys.iter_mut().zip(loras).zip(&mats) {
        let Some(l) = lora else { continue };
        let (d_in, d_out, r) = (m.cols, m.rows, l.rank);
        for (xr, yr) in x.chunks_exact(d_in).zip(y.chunks_exact_mut(d_out)) {
            let mut low = vec![0.0f32; r];
            for (xv, a_row) in xr.iter().zip(l.a.chunks_exact(r)) {
                low.iter_mut().zip(a_row).for_each(|(lo, a)| *lo += xv * a);
            }
            for (lo, b_row) in low.iter().zip(l.b.chunks_exact(d_out)) {
                let lo = lo * l.scale;
                yr.iter_mut().zip(b_row).for_each(|(y, b)| *y += lo * b);
            }
        }
    }
    ys
}

#[derive(Clone, Copy)]
struct AttendShape {
    /// New tokens per row.
    t: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    cap: usize,
    /// The first new token's slot: token i of row r attends to its slots pads[r]..=slot + i.
    slot: usize,
}

/// softmax(q·kᵀ/√hd)·v per token and query head, over the keys each token may see; query head h
/// reads KV head h / (n_heads / n_kv). q `[b·t, n_heads·hd]`, caches `[b, n_kv, cap, hd]`.
/// Returns `[b·t, n_heads·hd]`; a padding token, which may see no key, gets zeros.
fn attend(q: &[f32], kc: &[f32], vc: &[f32], s: AttendShape, pads: &[usize]) -> Vec<f32> {
    let AttendShape { t, n_heads, n_kv, hd, cap, slot } = s;
    let b = pads.len();
    let rep = n_heads / n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; b * t * n_heads * hd];
    let one = |task: usize, o: &mut [f32]| {
        let (a, h) = (task / n_heads, task % n_heads);
        let (r, g) = (a / t, h / rep);
        let qh: Vec<f32> = q[task * hd..(task + 1) * hd].iter().map(|v| v * scale).collect();
        let base = (r * n_kv + g) * cap;
        let seen = pads[r]..slot + a % t + 1;
        let mut w: Vec<f32> =
            seen.clone().map(|j| dot(&qh, &kc[(base + j) * hd..(base + j + 1) * hd])).collect();
        let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for v in &mut w {
            *v = (*v - max).exp();
            sum += *v;
        }
        for (j, wj) in seen.zip(&w) {
            let wj = wj / sum;
            let vj = &vc[(base + j) * hd..(base + j + 1) * hd];
            o.iter_mut().zip(vj).for_each(|(o, v)| *o += wj * v);
        }
    };
    // Rows and heads in parallel (even one row's 9 heads: at a few hundred keys they cost more
    // than the fork).
    {
        use rayon::prelude::*;
        out.par_chunks_mut(hd).enumerate().for_each(|(task, o)| one(task, o));
    }
    out
}

/// Σ aᵢbᵢ in eight independent lanes, which the compiler turns into vector instructions.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::tensor::FloatDType;

    use super::*;
    use crate::config::LlamaConfig;
    use crate::lora::{self, LoraConfig};
    use crate::quant::{BlockFormat, random_matrix};
    use crate::weights::expected_shapes;

    /// A tiny model whose products are random Q4_1 blocks and whose embeddings are Q8_0 blocks, as
    /// the GGUF has them, with LoRA adapters on every projection whose B is not zero.
    pub(crate) fn quantized_model() -> Llama {
        let cfg = LlamaConfig { max_position_embeddings: 512, ..LlamaConfig::tiny(300) };
        let mut w = Llama::random_weights(&cfg, 3);
        for (seed, (name, shape)) in expected_shapes(&cfg).into_iter().enumerate() {
            if shape.len() == 2 {
                let format =
                    if name.contains("embed") { BlockFormat::Q8_0 } else { BlockFormat::Q4_1 };
                w.tensors.remove(&name);
                w.quantized.insert(name, random_matrix(format, shape[0], shape[1], seed as u64));
            }
        }
        let model = Llama::from_weights(&cfg, w, &Device::flex(), FloatDType::F32).unwrap();
        let model = lora::attach(model, &LoraConfig { rank: 4, ..Default::default() }, 5).unwrap();
        let model = lora::with_random_b(model, 0.05, 6);
        assert!(model.cpu_decode_supported());
        model
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// The same f32 arithmetic summed in another order: measured up to ~1e-5 of the largest value
    /// over 12 steps (this random model's logits reach ~80), so 1e-4 bounds it with room.
    const TOLERANCE: f32 = 1e-4;

    fn max_rel_diff(ours: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
    }

    /// Prompts prefilled together, left-padded, get the bits each gets alone, and so do the
    /// decoding steps after: in `serve`'s batches, a request's answer does not depend on the
    /// others'.
    #[test]
    fn rows_together_get_the_bits_they_get_alone() {
        let model = quantized_model();
        let device = model.device();
        let prompts: Vec<Vec<u32>> =
            vec![(10..40).collect(), (200..203).collect(), (50..61).collect()];
        let run = |prompts: &[Vec<u32>]| -> Vec<Vec<f32>> {
            let (batch, pads) = Batch::left_padded(prompts, &device);
            let mut cache = model.new_cache().with_padding(pads);
            let mut out = vec![values(model.forward_last(batch, Some(&mut cache)))];
            for step in 0..3 {
                let b = prompts.len();
                let batch = Batch {
                    tokens: Tensor::from_data(TensorData::new(vec![7i32; b], [b, 1]), &device),
                    positions: Tensor::from_data(
                        TensorData::new(
                            prompts.iter().map(|p| (p.len() + step) as i32).collect::<Vec<_>>(),
                            [b, 1],
                        ),
                        &device,
                    ),
                    bias: None,
                };
                out.push(values(model.forward_last(batch, Some(&mut cache))));
            }
            out
        };
        let together = run(&prompts);
        for (r, p) in prompts.iter().enumerate() {
            let alone = run(std::slice::from_ref(p));
            for (step, (all, one)) in together.iter().zip(&alone).enumerate() {
                let row = &all[r * 300..(r + 1) * 300];
                assert!(
                    row.iter().zip(one).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "prompt {r}, pass {step}"
                );
            }
        }
    }

    /// Two left-padded prompts (one mostly padding) and then 12 decoding steps that cross the
    /// cache's first capacity: at every pass this module's logits equal burn's path on an
    /// identical cache (the reference) and so do the keys and values written; within a capacity,
    /// the cache's buffers are written where they lie, not copied.
    #[test]
    fn cpu_pass_equals_the_burn_path() {
        let model = quantized_model();
        let device = model.device();
        let prompts: Vec<Vec<u32>> = vec![(10..130).collect(), (200..203).collect()];
        let prefill = || Batch::left_padded(&prompts, &device);
        let (batch, pads) = prefill();
        let mut cache = model.new_cache().with_padding(pads.clone());
        let ours = values(model.forward_last_cpu(batch, &mut cache));
        let mut reference = model.new_cache().with_padding(pads);
        let hidden = model.forward_hidden(prefill().0, Some(&mut reference));
        let want = values(model.logits(hidden.slice(s![.., 119..120, ..])).reshape([2, 300]));
        let d = max_rel_diff(&ours, &want);
        assert!(d <= TOLERANCE, "prompts: max |Δ| {d} of the largest logit");
        assert_eq!(cache.capacity(), 128);
        let mut buffer = None;
        for step in 0..12 {
            // The first 8 steps fill the first capacity, the 9th grows it.
            let tokens = [(step * 7 + 1) as i32, (step * 13 + 2) as i32];
            let batch = || Batch {
                tokens: Tensor::from_data(TensorData::new(tokens.to_vec(), [2, 1]), &device),
                positions: Tensor::from_data(
                    TensorData::new(
                        prompts.iter().map(|p| (p.len() + step) as i32).collect::<Vec<_>>(),
                        [2, 1],
                    ),
                    &device,
                ),
                bias: None,
            };
            let ours = values(model.forward_last_cpu(batch(), &mut cache));
            let hidden = model.forward_hidden(batch(), Some(&mut reference));
            let want = values(model.logits(hidden).reshape([2, model.vocab_size]));
            let d = max_rel_diff(&ours, &want);
            assert!(d <= TOLERANCE, "step {step}: max |Δ| {d} of the largest logit");
            assert_eq!(cache.len(), reference.len());
            assert_eq!(cache.capacity(), reference.capacity());

            let (k, v) = cache.take_layer(1, [0; 3], &device);
            let (rk, rv) = reference.take_layer(1, [0; 3], &device);
            // Keys and values of every token, not of the padding (which nothing reads).
            let written = |t: &Tensor<4>| -> Vec<f32> {
                let [_, n_kv, cap, hd] = t.dims();
                let data = t.clone().into_data();
                let all = data.as_slice::<f32>().unwrap();
                let mut out = Vec::new();
                for (r, pad) in cache.padding().iter().enumerate() {
                    for g in 0..n_kv {
                        let at = (r * n_kv + g) * cap;
                        out.extend(&all[(at + pad) * hd..(at + cache.len()) * hd]);
                    }
                }
                out
            };
            let (dk, dv) = (
                max_rel_diff(&written(&k), &written(&rk)),
                max_rel_diff(&written(&v), &written(&rv)),
            );
            assert!(
                dk <= TOLERANCE && dv <= TOLERANCE,
                "step {step}: cached keys differ: {dk:e} {dv:e}"
            );
            reference.put(1, rk, rv);
            // Within one capacity the step writes into the same buffer every time.
            let data = k.into_data();
            let at = (data.as_slice::<f32>().unwrap().as_ptr() as usize, cache.capacity());
            if let Some(before) = buffer.filter(|&(_, cap)| cap == cache.capacity()) {
                assert_eq!(at, before, "step {step}: the cache was copied");
            }
            buffer = Some(at);
            cache.put(1, Tensor::from_data(data, &device), v);
        }
        assert_eq!(cache.capacity(), 256, "grown once, by doubling");
    }
}
