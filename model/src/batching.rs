//! Continuous batching: requests join a running batch between two steps and leave it as soon as
//! they finish, each with its own prompt length, settings and stop rule (`emlab serve`).
//!
//! A joining prompt is prefilled alone, then its cache rows are placed after the batch's,
//! aligned to end at the same slot ([`KvCache::join`]); positions stay per row, so a row decodes
//! what it would decode alone. Rows that leave are dropped from the cache, with the left padding
//! the rest no longer need ([`KvCache::retain_rows`]).

use burn::prelude::*;

use crate::Error;
use crate::cache::KvCache;
use crate::generate::{
    FinishReason, Flow, Generation, GenerationConfig, RESERVE_NEW_TOKENS, TokenLogprobs,
    check_prompts, read_vec, token_logprobs,
};
use crate::model::{Batch, Llama};
use crate::sampling::Sampler;

/// Prompts run through the model: their cache rows and the logits of their first new tokens.
pub struct Prefilled {
    cache: KvCache,
    logits: Tensor<2>,
    prompt_lens: Vec<usize>,
}

/// The cached keys and values of a prompt prefix that many requests share (a chat template's
/// system prompt: 27 of a short question's 38 tokens), computed once. A prompt prefilled after it
/// gets the bits it gets from its whole prefill, because the CPU pass computes every token alike
/// whatever else is in the pass; so it is made only for a model that runs that pass.
pub struct SharedPrefix {
    ids: Vec<u32>,
    cache: KvCache,
}

impl SharedPrefix {
    pub fn new(model: &Llama, ids: Vec<u32>) -> Option<Self> {
        if ids.is_empty() || !model.runs_cpu_pass(ids.len()) {
            return None;
        }
        let mut cache = model.new_cache();
        model.forward_last(Batch::causal(&ids, &model.device()), Some(&mut cache));
        Some(Self { ids, cache })
    }
}

/// Rows decoding together; `T` is what the caller keeps per row (its request).
pub struct ContinuousBatch<T> {
    cache: KvCache,
    /// `[rows, vocab]`: each row's logits for its next token.
    logits: Option<Tensor<2>>,
    rows: Vec<Row<T>>,
}

struct Row<T> {
    cfg: GenerationConfig,
    sampler: Sampler,
    /// The RoPE position of the next token fed to the model.
    position: usize,
    out: Generation,
    user: T,
}

impl<T> Default for ContinuousBatch<T> {
    fn default() -> Self {
        Self { cache: KvCache::default(), logits: None, rows: Vec::new() }
    }
}

impl<T> ContinuousBatch<T> {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Runs requests' prompts through the model in one left-padded batch, ready to
    /// [`ContinuousBatch::add`]. Kept apart from `add` so that a caller can recover from a
    /// failure here with its requests intact.
    pub fn prefill(
        model: &Llama,
        prompts: &[Vec<u32>],
        cfgs: &[GenerationConfig],
    ) -> Result<Prefilled, Error> {
        Self::prefill_after(model, None, prompts, cfgs)
    }

    /// As [`ContinuousBatch::prefill`]; a single prompt that starts with `prefix`'s tokens is
    /// run from the prefix's end, on a copy of its cached keys and values.
    pub fn prefill_after(
        model: &Llama,
        prefix: Option<&SharedPrefix>,
        prompts: &[Vec<u32>],
        cfgs: &[GenerationConfig],
    ) -> Result<Prefilled, Error> {
        let longest_new = cfgs.iter().map(|c| c.max_new_tokens).max().unwrap_or(0);
        for (p, cfg) in prompts.iter().zip(cfgs) {
            check_prompts(model, std::slice::from_ref(p), cfg.max_new_tokens)?;
            cfg.sampling.validate().map_err(Error::Invalid)?;
        }
        if let (Some(prefix), [prompt]) = (prefix, prompts)
            && let Some(rest) = prompt.strip_prefix(prefix.ids.as_slice())
            && !rest.is_empty()
            && model.runs_cpu_pass(rest.len())
        {
            let device = model.device();
            let start = prefix.ids.len();
            let ints =
                |v: Vec<i32>| Tensor::from_data(TensorData::new(v, [1, rest.len()]), &device);
            let batch = Batch {
                tokens: ints(rest.iter().map(|&id| id as i32).collect()),
                positions: ints((start..prompt.len()).map(|p| p as i32).collect()),
                bias: None, // the CPU pass masks by the cache's length
            };
            let mut cache = prefix.cache.select_rows(&[0]);
            let logits = model.forward_last(batch, Some(&mut cache));
            return Ok(Prefilled { cache, logits, prompt_lens: vec![prompt.len()] });
        }
        let (batch, pads) = Batch::left_padded(prompts, &model.device());
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let reserve = longest + longest_new.min(RESERVE_NEW_TOKENS);
        let mut cache = model.new_cache().with_reserve(reserve).with_padding(pads);
        let logits = model.forward_last(batch, Some(&mut cache));
        Ok(Prefilled { cache, logits, prompt_lens: prompts.iter().map(Vec::len).collect() })
    }

    /// Adds prefilled requests as rows (`rows[i]` for the i-th prompt); their first tokens are
    /// sampled at the next step. Each samples with [`Sampler::for_row`]`(cfg.sampling, 0)`: what a
    /// single-prompt [`crate::generate::generate`] call with the same settings uses.
    pub fn add(&mut self, p: Prefilled, rows: Vec<(GenerationConfig, T)>) {
        assert_eq!(rows.len(), p.prompt_lens.len(), "one row per prefilled prompt");
        self.cache = std::mem::take(&mut self.cache).join(p.cache);
        self.logits = Some(match self.logits.take() {
            Some(l) => Tensor::cat(vec![l, p.logits], 0),
            None => p.logits,
        });
        for ((cfg, user), position) in rows.into_iter().zip(p.prompt_lens) {
            let out =
                Generation { ids: Vec::new(), finish: FinishReason::Length, logprobs: Vec::new() };
            let sampler = Sampler::for_row(cfg.sampling, 0);
            self.rows.push(Row { cfg, sampler, position, out, user });
        }
    }

    /// Removes the rows `cancel` picks (clients that left), as cancelled generations.
    pub fn cancel_where(&mut self, mut cancel: impl FnMut(&T) -> bool) -> Vec<(T, Generation)> {
        let keep: Vec<bool> = self.rows.iter().map(|r| !cancel(&r.user)).collect();
        self.retain(&keep, FinishReason::Cancelled)
    }

    /// Every row's user data, and an empty batch (after a failure that leaves its state unknown).
    pub fn drain(&mut self) -> Vec<T> {
        let rows = std::mem::take(&mut self.rows);
        *self = Self::default();
        rows.into_iter().map(|r| r.user).collect()
    }

    /// One token for every row: sampled, shown to `on_token(user, id, logprobs)`, then fed to
    /// the model together. Returns the rows that finished at this step (a stop id, their length,
    /// or [`Flow::Stop`] from the callback, which ends that row only).
    pub async fn step(
        &mut self,
        model: &Llama,
        mut on_token: impl FnMut(&mut T, u32, Option<&TokenLogprobs>) -> Flow,
    ) -> Result<Vec<(T, Generation)>, Error> {
        let Some(logits) = self.logits.take() else { return Ok(Vec::new()) };
        let vocab = model.vocab_size;
        let greedy =
            self.rows.iter().all(|r| r.cfg.sampling.temperature <= 0.0 && r.cfg.logprobs.is_none());
        let (values, argmax) = if greedy {
            (Vec::new(), read_vec::<i32, 2, _>(logits.argmax(1)).await?)
        } else {
            (read_vec::<f32, 2, _>(logits).await?, Vec::new())
        };
        let mut keep = vec![true; self.rows.len()];
        let mut next = Vec::with_capacity(self.rows.len());
        for (r, row) in self.rows.iter_mut().enumerate() {
            let id = if greedy {
                argmax[r] as u32
            } else {
                let l = &values[r * vocab..(r + 1) * vocab];
                let id = row.sampler.sample(l);
                if let Some(k) = row.cfg.logprobs
                    && !row.cfg.stop_ids.contains(&id)
                {
                    row.out.logprobs.push(token_logprobs(l, id, k));
                }
                id
            };
            if row.cfg.stop_ids.contains(&id) {
                row.out.finish = FinishReason::Stop;
                keep[r] = false;
                continue;
            }
            row.out.ids.push(id);
            let lp = row.cfg.logprobs.and_then(|_| row.out.logprobs.last());
            if on_token(&mut row.user, id, lp) == Flow::Stop {
                row.out.finish = FinishReason::Cancelled;
                keep[r] = false;
            } else if row.out.ids.len() >= row.cfg.max_new_tokens {
                keep[r] = false; // finish stays Length
            } else {
                next.push((id as i32, row.position as i32));
                row.position += 1;
            }
        }
        let finished = self.retain(&keep, FinishReason::Length);
        if !self.rows.is_empty() {
            let device = model.device();
            let b = next.len();
            let (tokens, positions): (Vec<i32>, Vec<i32>) = next.into_iter().unzip();
            let decode = Batch {
                tokens: Tensor::from_data(TensorData::new(tokens, [b, 1]), &device),
                positions: Tensor::from_data(TensorData::new(positions, [b, 1]), &device),
                bias: None, // the cache masks each row's padding and the unused slots
            };
            self.logits = Some(model.forward_last(decode, Some(&mut self.cache)));
        }
        Ok(finished)
    }

    /// Keeps the rows marked `true`; the others leave (a row that has not finished otherwise
    /// gets `finish`). Logits of kept rows are kept only when the caller has not consumed them.
    fn retain(&mut self, keep: &[bool], finish: FinishReason) -> Vec<(T, Generation)> {
        if keep.iter().all(|&k| k) {
            return Vec::new();
        }
        let kept: Vec<usize> = (0..keep.len()).filter(|&r| keep[r]).collect();
        let mut left = Vec::new();
        let mut rows = Vec::with_capacity(kept.len());
        for (r, mut row) in std::mem::take(&mut self.rows).into_iter().enumerate() {
            if keep[r] {
                rows.push(row);
            } else {
                if finish == FinishReason::Cancelled {
                    row.out.finish = FinishReason::Cancelled;
                }
                left.push((row.user, row.out));
            }
        }
        self.rows = rows;
        if kept.is_empty() {
            self.cache = KvCache::default();
            self.logits = None;
        } else {
            self.cache = self.cache.retain_rows(&kept);
            if let Some(l) = self.logits.take() {
                let idx = kept.iter().map(|&r| r as i32).collect::<Vec<_>>();
                let idx =
                    Tensor::<1, Int>::from_data(TensorData::new(idx, [kept.len()]), &l.device());
                self.logits = Some(l.select(0, idx));
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::FloatDType;

    use super::*;
    use crate::config::LlamaConfig;
    use crate::generate::{block_on, generate};
    use crate::sampling::SamplingParams;

    /// A prompt prefilled after a shared prefix gets the bits of its whole prefill, and decodes
    /// the same tokens; a model off the CPU pass gets no shared prefix.
    #[test]
    fn a_shared_prefix_changes_no_bit() {
        let model = crate::cpu_decode::tests::quantized_model();
        let prefix: Vec<u32> = (20..47).collect();
        let shared = SharedPrefix::new(&model, prefix.clone()).expect("the CPU pass runs it");
        let prompt: Vec<u32> = prefix.iter().copied().chain(60..71).collect();
        let greedy = SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
        let cfg = GenerationConfig::new(6, greedy, vec![]);
        let run = |after: Option<&SharedPrefix>| {
            let p = ContinuousBatch::<()>::prefill_after(
                &model,
                after,
                std::slice::from_ref(&prompt),
                std::slice::from_ref(&cfg),
            )
            .unwrap();
            let logits = p.logits.clone().into_data().try_into_vec_as::<f32>().unwrap();
            let mut batch = ContinuousBatch::default();
            batch.add(p, vec![(cfg.clone(), ())]);
            loop {
                let done = block_on(batch.step(&model, |_, _, _| Flow::Continue)).unwrap();
                if let Some((_, g)) = done.into_iter().next() {
                    return (logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), g.ids);
                }
            }
        };
        assert_eq!(run(Some(&shared)), run(None));

        let cfg = LlamaConfig::tiny(300);
        let dense = Llama::from_weights(
            &cfg,
            Llama::random_weights(&cfg, 7),
            &Device::flex(),
            FloatDType::F32,
        )
        .unwrap();
        assert!(SharedPrefix::new(&dense, prefix).is_none());
    }

    /// What a prompt decodes alone, through `generate`.
    fn alone(model: &Llama, prompt: Vec<u32>, max_new: usize, s: SamplingParams) -> Vec<u32> {
        let cfg = GenerationConfig::new(max_new, s, Vec::new());
        let g = block_on(generate(model, &[prompt], &cfg, |_, _| Flow::Continue)).unwrap();
        g[0].ids.clone()
    }

    /// Rows that join at different steps, with different prompt lengths, budgets and sampling,
    /// each produce what they produce alone; the cache shrinks back as rows leave.
    #[test]
    fn rows_joining_and_leaving_decode_what_they_decode_alone() {
        let cfg = LlamaConfig::tiny(300);
        let model = Llama::from_weights(
            &cfg,
            Llama::random_weights(&cfg, 7),
            &Device::flex(),
            FloatDType::F32,
        )
        .unwrap();
        let greedy = SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
        let sampled = SamplingParams { temperature: 1.0, top_p: 0.9, top_k: 0, seed: 11 };
        // (prompt, max new tokens, sampling, the step at which it joins)
        let requests: Vec<(Vec<u32>, usize, SamplingParams, usize)> = vec![
            ((1..9).collect(), 12, greedy, 0),
            ((40..43).collect(), 20, sampled, 0),
            ((100..125).collect(), 6, greedy, 3),
            ((7..10).collect(), 9, sampled, 5),
        ];
        let alone: Vec<Vec<u32>> =
            requests.iter().map(|(p, n, s, _)| alone(&model, p.clone(), *n, *s)).collect();

        let mut batch = ContinuousBatch::<usize>::default();
        let mut got: Vec<Option<Vec<u32>>> = vec![None; requests.len()];
        let mut streamed: Vec<Vec<u32>> = vec![Vec::new(); requests.len()];
        for step in 0.. {
            // Requests that arrive together are prefilled together.
            let (mut prompts, mut rows) = (Vec::new(), Vec::new());
            for (i, (p, n, s, at)) in requests.iter().enumerate() {
                if *at == step {
                    prompts.push(p.clone());
                    rows.push((GenerationConfig::new(*n, *s, Vec::new()), i));
                }
            }
            if !rows.is_empty() {
                let cfgs: Vec<_> = rows.iter().map(|(c, _)| c.clone()).collect();
                let pre = ContinuousBatch::<usize>::prefill(&model, &prompts, &cfgs).unwrap();
                batch.add(pre, rows);
            }
            if batch.is_empty() && step > 5 {
                break;
            }
            let finished = block_on(batch.step(&model, |&mut i, id, _| {
                streamed[i].push(id);
                Flow::Continue
            }))
            .unwrap();
            for (i, g) in finished {
                assert_eq!(g.finish, FinishReason::Length);
                got[i] = Some(g.ids);
            }
        }
        for (i, want) in alone.iter().enumerate() {
            assert_eq!(got[i].as_ref(), Some(want), "request {i}");
            assert_eq!(&streamed[i], want, "request {i}, streamed");
        }
        assert_eq!(batch.cache.rows(), 0, "an empty batch holds no cache");
    }

    /// As `serve` runs them: on the CPU pass, each request prefilled alone after the shared
    /// prefix and joining the running batch at its own step (also an empty one), long enough that
    /// the batch's cache grows past its first capacity and sheds padding as rows leave; each
    /// gets the tokens it gets alone.
    #[test]
    fn requests_after_a_shared_prefix_decode_in_a_batch_what_they_decode_alone() {
        let model = crate::cpu_decode::tests::quantized_model();
        let prefix: Vec<u32> = (20..47).collect();
        let shared = SharedPrefix::new(&model, prefix.clone()).unwrap();
        let greedy = SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
        let sampled = |seed| SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, seed };
        // (prompt after the prefix, max new tokens, sampling, the step at which it joins)
        let requests: Vec<(Vec<u32>, usize, SamplingParams, usize)> = vec![
            ((60..70).collect(), 43, greedy, 0),
            ((80..83).collect(), 22, sampled(3), 2),
            ((90..110).collect(), 43, sampled(5), 9),
            ((70..75).collect(), 8, greedy, 30),
            ((75..90).collect(), 43, sampled(11), 31),
            ((61..64).collect(), 43, greedy, 60),
            ((64..68).collect(), 15, sampled(2), 130),
        ];
        let prompt = |rest: &[u32]| -> Vec<u32> { prefix.iter().chain(rest).copied().collect() };
        let alone: Vec<Vec<u32>> =
            requests.iter().map(|(rest, n, s, _)| alone(&model, prompt(rest), *n, *s)).collect();
        let mut batch = ContinuousBatch::<usize>::default();
        let mut got: Vec<Option<Vec<u32>>> = vec![None; requests.len()];
        for step in 0..200 {
            for (i, (rest, n, s, at)) in requests.iter().enumerate() {
                if *at == step {
                    let cfg = GenerationConfig::new(*n, *s, Vec::new());
                    let p = ContinuousBatch::<usize>::prefill_after(
                        &model,
                        Some(&shared),
                        &[prompt(rest)],
                        std::slice::from_ref(&cfg),
                    )
                    .unwrap();
                    batch.add(p, vec![(cfg, i)]);
                }
            }
            for (i, g) in block_on(batch.step(&model, |_, _, _| Flow::Continue)).unwrap() {
                got[i] = Some(g.ids);
            }
        }
        for (i, want) in alone.iter().enumerate() {
            assert_eq!(got[i].as_ref(), Some(want), "request {i}");
        }
    }

    /// A row the caller stops leaves at once, and the others go on unchanged.
    #[test]
    fn a_cancelled_row_leaves_alone() {
        let cfg = LlamaConfig::tiny(300);
        let model = Llama::from_weights(
            &cfg,
            Llama::random_weights(&cfg, 8),
            &Device::flex(),
            FloatDType::F32,
        )
        .unwrap();
        let greedy = SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
        let mut batch = ContinuousBatch::<u8>::default();
        for (i, p) in [vec![5u32, 6, 7], vec![9u32; 12]].into_iter().enumerate() {
            let cfg = GenerationConfig::new(10, greedy, Vec::new());
            let pre = ContinuousBatch::<u8>::prefill(&model, &[p], std::slice::from_ref(&cfg));
            batch.add(pre.unwrap(), vec![(cfg, i as u8)]);
        }
        let mut ids = Vec::new();
        for step in 0..10 {
            let finished = block_on(batch.step(&model, |&mut row, id, _| {
                if row == 0 {
                    ids.push(id);
                }
                if row == 1 && step == 2 { Flow::Stop } else { Flow::Continue }
            }))
            .unwrap();
            if step == 2 {
                assert_eq!(finished.len(), 1);
                assert_eq!((finished[0].0, finished[0].1.finish), (1, FinishReason::Cancelled));
                assert_eq!(batch.len(), 1);
                assert_eq!(batch.cache.padding(), &[0], "the shorter prompt's padding is dropped");
            }
        }
        let alone = block_on(generate(
            &model,
            &[vec![5, 6, 7]],
            &GenerationConfig::new(10, greedy, Vec::new()),
            |_, _| Flow::Continue,
        ))
        .unwrap();
        assert_eq!(ids, alone[0].ids);
    }
}
