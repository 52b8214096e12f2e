//! A cached forward pass on a GPU with the kernels of [`crate::kernels`]: seven launches per
//! layer, for the prompt (all its tokens at once) and for each decoding step alike.
//!
//! The same computation as [`Llama::forward_last`] with a cache, which remains the reference
//! (and the path for everything these kernels do not cover: the CPU backend, LoRA adapters,
//! weights stored in f16, an untied head, passes without a cache).

use burn::backend::{Dispatch, DispatchTensorKind};
use burn::prelude::*;
use burn::tensor::DType;

use crate::kernels::{DecodeOps, supported_width};
use crate::model::{Batch, KvCache, Llama};

fn float(t: Tensor<2>) -> burn::backend::DispatchTensor {
    t.into_dispatch()
}

impl Llama {
    /// Whether [`Llama::forward_last_gpu`] can run this model: on a cubecl device, f32 weights, no
    /// adapter, tied embeddings.
    pub(crate) fn gpu_decode_supported(&self) -> bool {
        let Some(e) = self.embed_tokens.weight.as_ref().map(|e| e.val()) else { return false };
        let on_cube = matches!(e.clone().into_dispatch().kind, DispatchTensorKind::Cube(_));
        on_cube
            && self.lm_head.is_none()
            && e.dtype() == DType::F32
            && supported_width(e.dims()[0])
            && supported_width(e.dims()[1])
            && self.projection_names().iter().all(|&(layer, which, _)| {
                let p = self.projection(layer, which);
                let Some(w) = p.weight.as_ref().map(|w| w.val()) else { return false };
                let [d_in, d_out] = w.dims();
                p.lora.is_none()
                    && w.dtype() == DType::F32
                    && supported_width(d_in)
                    && supported_width(d_out)
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
        let mut x = burn::tensor::module::embedding(self.embed_tokens.dense(&device), batch.tokens)
            .reshape([b * t, d]);
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = &layer.self_attn;
            let (n_q, hd) = (attn.n_heads * attn.head_dim, attn.head_dim);
            let norm = &layer.input_layernorm;
            let qkv = Dispatch::norm_matvec3(
                float(x.clone()),
                norm.weight.val().into_dispatch(),
                float(attn.q_proj.dense_weight(&device)),
                float(attn.k_proj.dense_weight(&device)),
                float(attn.v_proj.dense_weight(&device)),
                norm.eps as f32,
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
            x = Tensor::from_dispatch(Dispatch::matvec_add(
                out,
                float(attn.o_proj.dense_weight(&device)),
                float(x),
            ));
            let (mlp, norm) = (&layer.mlp, &layer.post_attention_layernorm);
            let h = Dispatch::norm_gate_up(
                float(x.clone()),
                norm.weight.val().into_dispatch(),
                float(mlp.gate_proj.dense_weight(&device)),
                float(mlp.up_proj.dense_weight(&device)),
                norm.eps as f32,
            );
            x = Tensor::from_dispatch(Dispatch::matvec_add(
                h,
                float(mlp.down_proj.dense_weight(&device)),
                float(x),
            ));
        }
        cache.advance(t);
        if t > 1 {
            x = x.reshape([b, t, d]).slice(s![.., t - 1..t, ..]).reshape([b, d]);
        }
        Tensor::from_dispatch(Dispatch::norm_head(
            float(x),
            self.norm.weight.val().into_dispatch(),
            float(self.embed_tokens.dense(&device)),
            self.norm.eps as f32,
        ))
    }
}
