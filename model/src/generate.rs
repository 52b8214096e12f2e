//! The generation loop: batched prefill over left-padded prompts, then one token per step with
//! the KV cache. Logits are read back with `into_data_async`, the only read that works on WebGPU
//! in a browser; native callers drive it with [`block_on`].

use std::future::Future;

use burn::prelude::*;

use crate::Error;
use crate::model::{Batch, Llama};
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

/// Why a generation ended; written as `stop`, `length` or `cancelled` in results files and
/// the page's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop id was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

impl FinishReason {
    /// The name results files and the page use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
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
pub fn check_prompts(
    model: &Llama,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
) -> Result<(), Error> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::Invalid("every prompt needs at least one token".into()));
    }
    if let Some(&bad) = prompts.iter().flatten().find(|&&id| id as usize >= model.vocab_size) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary ({})",
            model.vocab_size
        )));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest.checked_add(max_new_tokens).is_none_or(|n| n > model.context_length) {
        return Err(Error::ContextOverflow {
            tokens: longest,
            max_new: max_new_tokens,
            context: model.context_length,
        });
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
    between_steps: impl FnMut() -> F,
) -> Result<Vec<Generation>, Error> {
    generate_steps(model, prompts, cfg, |r, id, _| on_token(r, id), between_steps).await
}

/// [`generate_yielding`] whose `on_token(row, id, logprobs)` also sees the token's
/// log-probabilities when [`GenerationConfig::logprobs`] asks for them (to stream them).
pub async fn generate_steps<F: Future<Output = ()>>(
    model: &Llama,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    mut on_token: impl FnMut(usize, u32, Option<&TokenLogprobs>) -> Flow,
    mut between_steps: impl FnMut() -> F,
) -> Result<Vec<Generation>, Error> {
    check_prompts(model, prompts, cfg.max_new_tokens)?;
    cfg.sampling.validate().map_err(Error::Invalid)?;
    let device = model.device();
    let (b, vocab) = (prompts.len(), model.vocab_size);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let (prefill, pads) = Batch::left_padded(prompts, &device);

    // Room for the whole answer up front (growing later costs one copy), within reason: a long
    // `max_new_tokens` that is rarely used should not hold memory for all of it.
    let reserve = longest + cfg.max_new_tokens.min(RESERVE_NEW_TOKENS);
    let mut cache = model.new_cache().with_reserve(reserve).with_padding(pads);
    let mut logits = model.forward_last(prefill, Some(&mut cache));
    // Greedy decoding needs only the argmax: it is taken on the device and one id per row comes
    // back instead of the whole vocabulary's logits.
    let greedy_on_device = cfg.sampling.temperature <= 0.0 && cfg.logprobs.is_none();
    // On a GPU, when top-k bounds the choice, only the k candidates per row come back (one top-k
    // reduction); the CPU reads its rows in place, so it keeps the whole-row path.
    let k = cfg.sampling.top_k;
    let mut top_k_on_device = !greedy_on_device
        && cfg.logprobs.is_none()
        && k > 0
        && k <= TOP_K_ON_DEVICE_MAX.min(vocab - 1)
        && device.clone().inner() != Device::flex();
    let mut samplers: Vec<Sampler> = (0..b).map(|r| Sampler::for_row(cfg.sampling, r)).collect();
    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation { ids: Vec::new(), finish: FinishReason::Length, logprobs: Vec::new() })
        .collect();
    let mut done = vec![false; b];
    // The rows still in the batch, by their index in `prompts`. Finished rows leave it (with
    // their cache rows) once enough have finished to pay for the copy: on the CPU every row
    // costs its share of a step, so short answers should not ride along with the longest one.
    let mut live: Vec<usize> = (0..b).collect();

    for step in 0..cfg.max_new_tokens {
        let (values, ids) = if greedy_on_device {
            (Vec::new(), read_vec::<i32, 2, _>(logits.argmax(1)).await?)
        } else if top_k_on_device {
            let (values, ids) = logits.clone().topk_with_indices(k, 1);
            let (values, ids) =
                (read_vec::<f32, 2, _>(values).await?, read_vec::<i32, 2, _>(ids).await?);
            if ids.iter().all(|&i| (0..vocab as i32).contains(&i)) {
                (values, ids)
            } else {
                // A reduction that left slots unfilled: whole rows from here on.
                top_k_on_device = false;
                (read_vec::<f32, 2, _>(logits).await?, Vec::new())
            }
        } else {
            (read_vec::<f32, 2, _>(logits).await?, Vec::new())
        };
        // Indexed by position in the batch (`i`); samplers, outputs and callbacks by prompt (`r`).
        let mut next = vec![0i32; live.len()];
        for (i, &r) in live.iter().enumerate() {
            if done[r] {
                continue; // finished rows ride along with a dummy token; their outputs are ignored
            }
            let id = if greedy_on_device {
                ids[i] as u32
            } else if top_k_on_device {
                let row = (i * k..(i + 1) * k).map(|j| (ids[j] as u32, values[j]));
                samplers[r].sample_top_k(&row.collect::<Vec<_>>())
            } else {
                let row = &values[i * vocab..(i + 1) * vocab];
                let id = samplers[r].sample(row);
                if let Some(k) = cfg.logprobs {
                    out[r].logprobs.push(token_logprobs(row, id, k));
                }
                id
            };
            next[i] = id as i32;
            if cfg.stop_ids.contains(&id) {
                done[r] = true;
                out[r].finish = FinishReason::Stop;
                if cfg.logprobs.is_some() {
                    out[r].logprobs.pop(); // the stop token is not part of the output
                }
                continue;
            }
            out[r].ids.push(id);
            let logprobs = if cfg.logprobs.is_some() { out[r].logprobs.last() } else { None };
            if on_token(r, id, logprobs) == Flow::Stop {
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
        let finished = live.iter().filter(|&&r| done[r]).count();
        if finished > 0 && finished * DROP_FINISHED_AT >= live.len() {
            let keep: Vec<usize> = (0..live.len()).filter(|&i| !done[live[i]]).collect();
            cache = cache.retain_rows(&keep);
            next = keep.iter().map(|&i| next[i]).collect();
            live = keep.iter().map(|&i| live[i]).collect();
        }
        let n = live.len();
        let positions: Vec<i32> = live.iter().map(|&r| (prompts[r].len() + step) as i32).collect();
        let decode = Batch {
            tokens: int_tensor(next, [n, 1], &device),
            positions: int_tensor(positions, [n, 1], &device),
            bias: None, // the cache masks padding and its unused slots
        };
        logits = model.forward_last(decode, Some(&mut cache));
    }
    Ok(out)
}

/// Finished rows leave the batch once they are at least 1/DROP_FINISHED_AT of it: copying the
/// cache's rows costs about one step, a finished row 1/batch of every step it stays.
const DROP_FINISHED_AT: usize = 8;

/// New tokens the cache reserves room for before the first write; longer answers grow it.
pub(crate) const RESERVE_NEW_TOKENS: usize = 1024;

/// Reads a tensor back to the host (asynchronously: the only way on WebGPU in a browser).
/// The largest top-k read back as candidates. cubecl's top-k reduction (burn 0.22) leaves every
/// slot after the first unfilled (index -1, value f32::MIN) for k > 32, measured on lavapipe;
/// the same family as tracel-ai/cubek#422. Larger k reads the whole row.
const TOP_K_ON_DEVICE_MAX: usize = 32;

pub(crate) async fn read_vec<E: burn::tensor::Element, const D: usize, K>(
    t: Tensor<D, K>,
) -> Result<Vec<E>, Error>
where
    K: burn::tensor::kind::Basic,
{
    let data = t.into_data_async().await.map_err(|e| Error::Device(format!("{e:?}")))?;
    data.try_into_vec_as().map_err(|e| Error::Device(format!("{e:?}")))
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

fn int_tensor(values: Vec<i32>, shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::row_seed;

    /// Rows that finish early leave the batch, and every answer is still the one its prompt gets
    /// alone (with its row's seed): on the CPU pass a row's logits do not depend on the rows
    /// beside it or on its padding, so dropping finished rows must change no token.
    #[test]
    fn finished_rows_leave_the_batch_and_change_no_answer() {
        let model = crate::cpu_decode::tests::quantized_model();
        let prompts: Vec<Vec<u32>> =
            vec![(10..40).collect(), vec![200], (50..61).collect(), (90..95).collect(), vec![7, 8]];
        let sampling = SamplingParams { temperature: 1.0, seed: 11, ..Default::default() };
        // The stop ids come from a run without any, so that rows end at different steps on every
        // CPU: the random model's tokens depend on the machine's float kernels (CI's differ).
        let free = GenerationConfig::new(40, sampling, vec![]);
        let free = block_on(generate(&model, &prompts, &free, |_, _| Flow::Continue)).unwrap();
        let rows: Vec<Vec<u32>> = free.into_iter().map(|g| g.ids).collect();
        let stop_ids = stops_that_spread_the_ends(&rows);
        let cfg = GenerationConfig::new(40, sampling, stop_ids.clone());
        let together = block_on(generate(&model, &prompts, &cfg, |_, _| Flow::Continue)).unwrap();
        let mut lengths: Vec<usize> = together.iter().map(|g| g.ids.len()).collect();
        lengths.sort();
        lengths.dedup();
        assert!(
            lengths.len() >= 3
                && together.iter().filter(|g| g.finish == FinishReason::Stop).count() >= 2,
            "rows should finish at different steps for this test to drop any: {together:?}"
        );
        for (g, row) in together.iter().zip(&rows) {
            assert_eq!(g.ids, row[..g.ids.len()], "a stop id only cuts the answer short");
        }
        for (r, p) in prompts.iter().enumerate() {
            let alone = GenerationConfig {
                sampling: SamplingParams { seed: row_seed(sampling.seed, r), ..sampling },
                ..cfg.clone()
            };
            let one =
                block_on(generate(&model, std::slice::from_ref(p), &alone, |_, _| Flow::Continue));
            assert_eq!(one.unwrap()[0], together[r], "prompt {r}");
        }
    }

    /// Up to three stop ids, each chosen to add the most distinct answer lengths over `rows`
    /// (a row ends before the first of its tokens that is a stop id).
    fn stops_that_spread_the_ends(rows: &[Vec<u32>]) -> Vec<u32> {
        let distinct_ends = |stops: &[u32]| {
            let mut ends: Vec<usize> = rows
                .iter()
                .map(|r| r.iter().position(|t| stops.contains(t)).unwrap_or(usize::MAX))
                .collect();
            ends.sort();
            ends.dedup();
            ends.len()
        };
        let mut candidates: Vec<u32> = rows.iter().flatten().copied().collect();
        candidates.sort();
        candidates.dedup();
        let mut stops = Vec::new();
        for _ in 0..3 {
            let best = candidates.iter().copied().filter(|t| !stops.contains(t)).max_by_key(|&t| {
                let mut with = stops.clone();
                with.push(t);
                distinct_ends(&with)
            });
            stops.extend(best);
        }
        stops
    }
}
