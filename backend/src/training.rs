//! LoRA fine-tuning: tokenization with an assistant-token mask, length-bucketed batches, the
//! masked next-token loss, and the optimizer loop (AdamW, linear schedule with warmup, global-norm
//! clipping, gradient accumulation).

use burn::module::ParamId;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use emlab_model::chat::ChatTemplate;
use emlab_model::generate::attention_bias;
use emlab_model::model::{Batch, Llama};
use emlab_model::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::data::{Example, shuffle};

/// Token ids of a conversation and, for each, whether the model is trained to produce it.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

/// Tokenizes a conversation piece by piece, marking assistant tokens (content and `<|im_end|>`).
/// Piece by piece rather than the whole text: at inference the prompt ends with the assistant
/// header's own newline token, so training must not merge that newline into the answer's first
/// token (which whole-text tokenization does when an answer starts with whitespace).
pub fn encode(tok: &Tokenizer, chat: &ChatTemplate, ex: &Example, max_len: usize) -> Result<Encoded, String> {
    let mut enc = Encoded { ids: Vec::new(), trained: Vec::new() };
    for seg in chat.segments(&ex.messages) {
        let ids = tok.encode(&seg.text).map_err(|e| e.to_string())?;
        enc.trained.extend(std::iter::repeat_n(seg.trained, ids.len()));
        enc.ids.extend(ids);
    }
    if enc.ids.len() > max_len {
        return Err(format!("{} tokens, over the maximum length {max_len}", enc.ids.len()));
    }
    if !enc.trained[1..].iter().any(|&t| t) {
        return Err("no assistant tokens to train on".into());
    }
    Ok(enc)
}

/// One padded batch: inputs, next-token targets and the loss weight of each position.
pub struct TrainBatch {
    pub tokens: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    /// 1 where the target is an assistant token, 0 elsewhere (prompt tokens, padding).
    pub weights: Tensor<2>,
    pub n_targets: usize,
    pub n_tokens: usize,
}

/// Right-pads a batch. Padding sits after every real token, so the causal mask alone keeps real
/// tokens from seeing it; its positions carry no loss.
pub fn make_batch(items: &[&Encoded], device: &Device) -> TrainBatch {
    let t = items.iter().map(|e| e.ids.len() - 1).max().unwrap_or(0);
    let b = items.len();
    let (mut tokens, mut targets, mut weights) = (vec![0i32; b * t], vec![0i32; b * t], vec![0f32; b * t]);
    let mut n_targets = 0;
    for (r, e) in items.iter().enumerate() {
        for i in 0..e.ids.len() - 1 {
            tokens[r * t + i] = e.ids[i] as i32;
            targets[r * t + i] = e.ids[i + 1] as i32;
            if e.trained[i + 1] {
                weights[r * t + i] = 1.0;
                n_targets += 1;
            }
        }
    }
    TrainBatch {
        tokens: Tensor::from_data(TensorData::new(tokens, [b, t]), device),
        targets: Tensor::from_data(TensorData::new(targets, [b, t]), device),
        weights: Tensor::from_data(TensorData::new(weights, [b, t]), device),
        n_targets,
        n_tokens: items.iter().map(|e| e.ids.len()).sum(),
    }
}

/// Summed negative log-likelihood of the weighted targets (divide by `n_targets` for the mean).
pub fn nll_sum(model: &Llama, batch: &TrainBatch) -> Tensor<1> {
    let [b, t] = batch.tokens.dims();
    let device = model.device();
    let positions: Vec<i32> = (0..b).flat_map(|_| 0..t as i32).collect();
    let input = Batch {
        tokens: batch.tokens.clone(),
        positions: Tensor::from_data(TensorData::new(positions, [b, t]), &device),
        bias: Some(attention_bias(&vec![vec![true; t]; b], t, &device)),
    };
    let logp = log_softmax(model.forward(input, None), 2);
    let picked = logp.gather(2, batch.targets.clone().unsqueeze_dim(2)).reshape([b, t]);
    (picked * batch.weights.clone()).sum().neg()
}

/// Groups example indices into batches of similar length (less padding): shuffle, sort within
/// windows of 64 batches, cut, then shuffle the batch order. Deterministic in `seed`.
pub fn length_bucketed_batches(lengths: &[usize], batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    shuffle(&mut order, seed);
    let mut batches = Vec::new();
    for window in order.chunks(batch_size * 64) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| lengths[i]);
        batches.extend(w.chunks(batch_size).map(<[usize]>::to_vec));
    }
    shuffle(&mut batches, seed ^ 0x5eed);
    batches
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Clip the global gradient norm (over all adapters) to this; 0 disables.
    pub max_grad_norm: f64,
    pub grad_accumulation: usize,
}

/// Linear warmup from 0, then linear decay to 0 at `total` (transformers' linear schedule).
pub fn learning_rate(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.learning_rate * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let rest = total.saturating_sub(cfg.warmup_steps).max(1);
    cfg.learning_rate * (total.saturating_sub(step) as f64 / rest as f64).max(0.0)
}

pub fn adamw(cfg: &OptimConfig) -> ModuleOptimizer {
    // ε as in PyTorch (burn's default is 1e-5).
    AdamWConfig::new().with_weight_decay(cfg.weight_decay as f32).with_epsilon(1e-8).init()
}

/// The ids of every trainable (adapter) parameter.
pub fn adapter_param_ids(model: &Llama) -> Vec<(ParamId, ParamId)> {
    model
        .projection_names()
        .into_iter()
        .filter_map(|(l, w, _)| model.projection(l, w).lora.as_ref().map(|a| (a.a.id, a.b.id)))
        .collect()
}

/// Scales the gradients so their global L2 norm is at most `max_norm` (as PyTorch's
/// clip_grad_norm_; burn's own clipping is per tensor). Returns the norm before clipping.
pub fn clip_global_norm(grads: &mut GradientsParams, ids: &[(ParamId, ParamId)], max_norm: f64) -> f64 {
    let mut sq = 0.0;
    for &(a, b) in ids {
        for id in [a, b] {
            if let Some(g) = grads.get::<2>(id) {
                sq += g.square().sum().into_scalar::<f32>() as f64;
            }
        }
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let f = max_norm / (norm + 1e-6);
        for &(a, b) in ids {
            for id in [a, b] {
                if let Some(g) = grads.remove::<2>(id) {
                    grads.register(id, g * f);
                }
            }
        }
    }
    norm
}

/// What one optimizer step reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepStats {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
}

/// One optimizer step over `micro_batches` (gradient accumulation): the loss is the mean over
/// all assistant tokens of all micro-batches.
pub fn train_step(
    model: Llama,
    optim: &mut ModuleOptimizer,
    micro_batches: &[TrainBatch],
    cfg: &OptimConfig,
    step: usize,
    total_steps: usize,
) -> (Llama, StepStats) {
    let n_targets: usize = micro_batches.iter().map(|b| b.n_targets).sum::<usize>().max(1);
    let mut acc = GradientsAccumulator::<Llama>::new();
    let mut loss_sum = 0.0;
    for mb in micro_batches {
        let loss = nll_sum(&model, mb) / n_targets as f64;
        loss_sum += loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        acc.accumulate(&model, grads);
    }
    let mut grads = acc.grads();
    let ids = adapter_param_ids(&model);
    let grad_norm = clip_global_norm(&mut grads, &ids, cfg.max_grad_norm);
    let lr = learning_rate(cfg, step, total_steps);
    let model = optim.step(lr, model, grads);
    let tokens = micro_batches.iter().map(|b| b.n_tokens).sum();
    (model, StepStats { step: step + 1, loss: loss_sum, lr, grad_norm, tokens })
}
