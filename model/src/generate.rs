//! The generation loop: batched prefill over left-padded prompts, then one token per step with
//! the KV cache. Logits are read back with `into_data_async`, the only read that works on WebGPU
//! in a browser; native callers drive it with [`block_on`].

use std::future::Future;

use burn::prelude::*;

use crate::Error;
use crate::model::{Batch, Llama, MASK_BIAS};
use crate::sampling::{Sampler, SamplingParams};

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation of a row ends at any of these ids (which are not included in the output).
    pub stop_ids: Vec<u32>,
    /// Record each sampled token's log-probability and this many most likely alternatives
    /// (under the model's own distribution, before temperature); None records nothing.
    pub logprobs: Option<usize>,
}

impl GenerationConfig {
    pub fn new(max_new_tokens: usize, sampling: SamplingParams, stop_ids: Vec<u32>) -> Self {
        Self { max_new_tokens, sampling, stop_ids, logprobs: None }
    }
}

/// The log-probability of a generated token and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub id: u32,
    pub logprob: f32,
    /// `(id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub finish: FinishReason,
    /// One entry per id when [`GenerationConfig::logprobs`] is set.
    pub logprobs: Vec<TokenLogprobs>,
}

/// What the per-token callback tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Runs a future to completion on the current thread (native targets).
pub fn block_on<F: Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// Checks a batch of prompts against the model before any compute.
pub fn check_prompts(model: &Llama, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<(), Error> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::Invalid("every prompt needs at least one token".into()));
    }
    if let Some(&bad) = prompts.iter().flatten().find(|&&id| id as usize >= model.vocab_size) {
        return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary ({})", model.vocab_size)));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + max_new_tokens > model.context_length {
        return Err(Error::ContextOverflow { tokens: longest, max_new: max_new_tokens, context: model.context_length });
    }
    Ok(())
}

/// Generates a continuation for each prompt. `on_token(row, id)` sees every new non-stop token as
/// soon as it is sampled; returning [`Flow::Stop`] ends the whole batch.
/// Row `r` samples with its own stream derived from the seed ([`Sampler::for_row`]), so row 0 of a
/// batch produces what a single-prompt call with the same seed produces.
pub async fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<Vec<Generation>, Error> {
    generate_yielding(model, prompts, cfg, on_token, || std::future::ready(())).await
}

/// [`generate`], awaiting `between_steps()` after every token. In a browser worker on the CPU
/// backend nothing else awaits, so this is where the event loop gets to deliver a Stop message.
pub async fn generate_yielding<F: Future<Output = ()>>(
    model: &Llama,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    mut on_token: impl FnMut(usize, u32) -> Flow,
    mut between_steps: impl FnMut() -> F,
) -> Result<Vec<Generation>, Error> {
    check_prompts(model, prompts, cfg.max_new_tokens)?;
    cfg.sampling.validate().map_err(Error::Invalid)?;
    let device = model.device();
    let (b, vocab) = (prompts.len(), model.vocab_size);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);

    // Left padding: every row's last prompt token sits in the same column.
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut key_valid: Vec<Vec<bool>> = pads.iter().map(|&pad| (0..longest).map(|j| j >= pad).collect()).collect();
    let tokens: Vec<i32> = prompts.iter().zip(&pads).flat_map(|(p, &pad)| pad_left(p, pad)).collect();
    let positions: Vec<i32> =
        pads.iter().flat_map(|&pad| (0..longest).map(move |j| j.saturating_sub(pad) as i32)).collect();
    let prefill = Batch {
        tokens: int_tensor(tokens, [b, longest], &device),
        positions: int_tensor(positions, [b, longest], &device),
        bias: Some(attention_bias(&key_valid, longest, &device)),
    };

    let mut cache = model.new_cache();
    let mut logits = model.forward_last(prefill, Some(&mut cache));
    let mut samplers: Vec<Sampler> = (0..b).map(|r| Sampler::for_row(cfg.sampling, r)).collect();
    let mut out: Vec<Generation> = (0..b).map(|_| Generation { ids: Vec::new(), finish: FinishReason::Length, logprobs: Vec::new() }).collect();
    let mut done = vec![false; b];
    let any_padding = pads.iter().any(|&p| p > 0);

    for step in 0..cfg.max_new_tokens {
        let data = logits.into_data_async().await.map_err(|e| Error::Device(format!("{e:?}")))?;
        let values: Vec<f32> = data.try_into_vec_as().map_err(|e| Error::Device(format!("{e:?}")))?;
        let mut next = vec![0i32; b];
        for r in 0..b {
            if done[r] {
                continue; // finished rows ride along with a dummy token; their outputs are ignored
            }
            let row = &values[r * vocab..(r + 1) * vocab];
            let id = samplers[r].sample(row);
            next[r] = id as i32;
            if let Some(k) = cfg.logprobs {
                out[r].logprobs.push(token_logprobs(row, id, k));
            }
            if cfg.stop_ids.contains(&id) {
                done[r] = true;
                out[r].finish = FinishReason::Stop;
                if cfg.logprobs.is_some() {
                    out[r].logprobs.pop(); // the stop token is not part of the output
                }
                continue;
            }
            out[r].ids.push(id);
            if on_token(r, id) == Flow::Stop {
                for (g, d) in out.iter_mut().zip(&done) {
                    if !d {
                        g.finish = FinishReason::Cancelled;
                    }
                }
                return Ok(out);
            }
        }
        if done.iter().all(|&d| d) || step + 1 == cfg.max_new_tokens {
            break;
        }
        between_steps().await;
        for row in &mut key_valid {
            row.push(true);
        }
        let positions: Vec<i32> = prompts.iter().map(|p| (p.len() + step) as i32).collect();
        let decode = Batch {
            tokens: int_tensor(next, [b, 1], &device),
            positions: int_tensor(positions, [b, 1], &device),
            // One new query per row sees every cached key: only padding needs masking.
            bias: any_padding.then(|| attention_bias(&key_valid, 1, &device)),
        };
        logits = model.forward_last(decode, Some(&mut cache));
    }
    Ok(out)
}

/// Log-softmax of one row of logits, read at `id`, plus the `k` largest entries.
pub fn token_logprobs(logits: &[f32], id: u32, k: usize) -> TokenLogprobs {
    let logz = log_sum_exp(logits);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if top.len() < k || top.last().is_some_and(|&(_, m)| l > m) {
            let at = top.partition_point(|&(_, m)| m >= l);
            top.insert(at, (i as u32, l));
            top.truncate(k);
        }
    }
    TokenLogprobs {
        id,
        logprob: logits[id as usize] - logz,
        top: top.into_iter().map(|(i, l)| (i, l - logz)).collect(),
    }
}

/// log Σ exp(x), computed stably.
pub fn log_sum_exp(x: &[f32]) -> f32 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + x.iter().map(|&v| ((v - m) as f64).exp()).sum::<f64>().ln() as f32
}

fn pad_left(p: &[u32], pad: usize) -> impl Iterator<Item = i32> + '_ {
    std::iter::repeat_n(0, pad).chain(p.iter().map(|&id| id as i32))
}

fn int_tensor(values: Vec<i32>, shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
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
            bias.extend(valid.iter().enumerate().map(|(j, &ok)| if ok && j <= q { 0.0 } else { MASK_BIAS }));
        }
    }
    Tensor::from_data(TensorData::new(bias, [b, 1, t_new, t_keys]), device)
}
