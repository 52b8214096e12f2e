//! The decoding loop, the only one: rows step together, one token each, and leave as they
//! finish ([`ContinuousBatch`]). [`generate`] adds its prompts (a left-padded prefill) and steps
//! until every row is done; `emlab serve` lets requests join the running batch between two steps
//! (continuous batching), each with its own prompt length, settings and stop rule.
//!
//! A joining prompt is prefilled alone, then its cache rows are placed after the batch's,
//! aligned to end at the same slot ([`KvCache::join`]); positions stay per row, so a row decodes
//! what it would decode alone. Rows that leave are dropped from the cache, with the left padding
//! the rest no longer need ([`KvCache::retain_rows`]). Logits are read back with
//! `into_data_async`, the only read that works on WebGPU in a browser; native callers drive the
//! loop with [`block_on`].

use std::future::Future;

use burn::prelude::*;

use crate::Error;
use crate::cache::KvCache;
use crate::model::{Batch, Llama};
use crate::sampling::{Sampler, SamplingParams, row_seed};

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

/// Checks each prompt against the model and its own row's settings, before any compute.
pub(crate) fn check_rows(
    model: &Llama,
    prompts: &[Vec<u32>],
    cfgs: &[GenerationConfig],
) -> Result<(), Error> {
    for (p, cfg) in prompts.iter().zip(cfgs) {
        check_prompts(model, std::slice::from_ref(p), cfg.max_new_tokens)?;
        cfg.sampling.validate().map_err(Error::Invalid)?;
    }
    Ok(())
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

/// New tokens the cache reserves room for before the first write; longer answers grow it.
pub(crate) const RESERVE_NEW_TOKENS: usize = 1024;

/// How a batch treats its rows beyond each row's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRules {
    /// [`Flow::Stop`] from the callback cancels every row (one caller's batch), not only its own
    /// (independent requests).
    pub stop_ends_batch: bool,
    /// `Some(n)`: a finished row's cache row stays, fed a dummy token, until the finished rows
    /// are 1/n of the cache (copying the cache costs about one step; a finished row costs 1/rows
    /// of every step it stays). `None`: it is dropped at once.
    pub ride_along: Option<usize>,
}

impl BatchRules {
    /// Independent requests (`emlab serve`): each leaves at once and stops alone.
    pub const REQUESTS: Self = Self { stop_ends_batch: false, ride_along: None };
    /// One caller's prompts ([`crate::generate::generate`]): a stop ends them all.
    pub const ONE_CALLER: Self = Self { stop_ends_batch: true, ride_along: Some(8) };
}

/// The largest top-k read back as candidates. cubecl's top-k reduction (burn 0.22) leaves every
/// slot after the first unfilled (index -1, value f32::MIN) for k > 32, measured on lavapipe;
/// the same family as tracel-ai/cubek#422. Larger k reads the whole row.
const TOP_K_ON_DEVICE_MAX: usize = 32;

/// Prompts run through the model: their cache rows and the logits of their first new tokens.
pub struct Prefilled {
    pub(crate) cache: KvCache,
    pub(crate) logits: Tensor<2>,
    pub(crate) prompt_lens: Vec<usize>,
}

/// Rows decoding together; `T` is what the caller keeps per row (its request).
pub struct ContinuousBatch<T> {
    rules: BatchRules,
    cache: KvCache,
    /// `[cache rows, vocab]`: each cache row's logits for its next token.
    logits: Option<Tensor<2>>,
    /// One per cache row: a row still decoding, or a finished one riding along.
    rows: Vec<Slot<T>>,
    /// Off after a top-k reduction on the device left slots unfilled: whole rows from then on.
    top_k_on_device: bool,
}

enum Slot<T> {
    Live(Row<T>),
    /// Finished, its cache row not dropped yet: fed a dummy token at this position.
    Done(usize),
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
        Self::new(BatchRules::REQUESTS)
    }
}

impl<T> ContinuousBatch<T> {
    pub fn new(rules: BatchRules) -> Self {
        Self {
            rules,
            cache: KvCache::default(),
            logits: None,
            rows: Vec::new(),
            top_k_on_device: true,
        }
    }

    /// Rows still decoding.
    pub fn len(&self) -> usize {
        self.live().count()
    }

    pub fn is_empty(&self) -> bool {
        self.live().next().is_none()
    }

    fn live(&self) -> impl Iterator<Item = &Row<T>> {
        self.rows.iter().filter_map(|s| match s {
            Slot::Live(r) => Some(r),
            Slot::Done(_) => None,
        })
    }

    /// Runs requests' prompts through the model in one left-padded batch, ready to
    /// [`ContinuousBatch::add`]. Kept apart from `add` so that a caller can recover from a
    /// failure here with its requests intact.
    pub fn prefill(
        model: &Llama,
        prompts: &[Vec<u32>],
        cfgs: &[GenerationConfig],
    ) -> Result<Prefilled, Error> {
        check_rows(model, prompts, cfgs)?;
        let longest_new = cfgs.iter().map(|c| c.max_new_tokens).max().unwrap_or(0);
        let (batch, pads) = Batch::left_padded(prompts, &model.device());
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let reserve = longest + longest_new.min(RESERVE_NEW_TOKENS);
        let mut cache = model.new_cache().with_reserve(reserve).with_padding(pads);
        let logits = model.forward_last(batch, Some(&mut cache));
        Ok(Prefilled { cache, logits, prompt_lens: prompts.iter().map(Vec::len).collect() })
    }

    /// Adds prefilled requests as rows (`rows[i]` for the i-th prompt); their first tokens are
    /// sampled at the next step. Each samples with [`Sampler::for_row`]`(cfg.sampling, 0)`: what a
    /// single-prompt [`generate`] call with the same settings uses.
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
            self.rows.push(Slot::Live(Row { cfg, sampler, position, out, user }));
        }
    }

    /// Removes the rows `cancel` picks (clients that left), as cancelled generations.
    pub fn cancel_where(&mut self, mut cancel: impl FnMut(&T) -> bool) -> Vec<(T, Generation)> {
        let mut left = Vec::new();
        for slot in &mut self.rows {
            if let Slot::Live(row) = slot
                && cancel(&row.user)
            {
                left.push(finish(slot, FinishReason::Cancelled));
            }
        }
        self.compact();
        left
    }

    /// Every row's user data, and an empty batch (after a failure that leaves its state unknown).
    pub fn drain(&mut self) -> Vec<T> {
        let rows = std::mem::take(&mut self.rows);
        *self = Self::new(self.rules);
        rows.into_iter()
            .filter_map(|s| match s {
                Slot::Live(r) => Some(r.user),
                Slot::Done(_) => None,
            })
            .collect()
    }

    /// One token for every row: sampled, shown to `on_token(user, id, logprobs)`, then fed to
    /// the model together. Returns the rows that finished at this step: a stop id, their length,
    /// or [`Flow::Stop`] from the callback, which ends that row only, or every row when the
    /// batch's rules say so.
    pub async fn step(
        &mut self,
        model: &Llama,
        mut on_token: impl FnMut(&mut T, u32, Option<&TokenLogprobs>) -> Flow,
    ) -> Result<Vec<(T, Generation)>, Error> {
        let Some(logits) = self.logits.take() else { return Ok(Vec::new()) };
        let choice = self.read_choices(model, logits).await?;
        let mut finished = Vec::new();
        let mut stop_all = false;
        for (i, slot) in self.rows.iter_mut().enumerate() {
            let Slot::Live(row) = slot else { continue };
            if stop_all {
                finished.push(finish(slot, FinishReason::Cancelled));
                continue;
            }
            let id = match &choice {
                Choice::Argmax(ids) => ids[i] as u32,
                Choice::TopK { k, values, ids } => {
                    let row_k = (i * k..(i + 1) * k).map(|j| (ids[j] as u32, values[j]));
                    row.sampler.sample_top_k(&row_k.collect::<Vec<_>>())
                }
                Choice::Rows(values) => {
                    let vocab = model.vocab_size;
                    let l = &values[i * vocab..(i + 1) * vocab];
                    let id = row.sampler.sample(l);
                    if let Some(k) = row.cfg.logprobs
                        && !row.cfg.stop_ids.contains(&id)
                    {
                        row.out.logprobs.push(token_logprobs(l, id, k));
                    }
                    id
                }
            };
            if row.cfg.stop_ids.contains(&id) {
                finished.push(finish(slot, FinishReason::Stop));
                continue;
            }
            row.out.ids.push(id);
            let lp = row.cfg.logprobs.and_then(|_| row.out.logprobs.last());
            if on_token(&mut row.user, id, lp) == Flow::Stop {
                finished.push(finish(slot, FinishReason::Cancelled));
                stop_all = self.rules.stop_ends_batch;
            } else if row.out.ids.len() >= row.cfg.max_new_tokens {
                finished.push(finish(slot, FinishReason::Length));
            }
        }
        if stop_all {
            // Rows before the one that stopped the batch finished this step's token already.
            for slot in &mut self.rows {
                if matches!(slot, Slot::Live(_)) {
                    finished.push(finish(slot, FinishReason::Cancelled));
                }
            }
        }
        self.compact();
        if !self.is_empty() {
            let device = model.device();
            let next: Vec<(i32, i32)> = self
                .rows
                .iter_mut()
                .map(|slot| match slot {
                    Slot::Live(row) => {
                        row.position += 1;
                        let last = *row.out.ids.last().expect("a live row has a token");
                        (last as i32, row.position as i32 - 1)
                    }
                    Slot::Done(position) => (0, *position as i32),
                })
                .collect();
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

    /// What the host needs of each row's logits to choose its token: the argmax when every row
    /// is greedy (one id per row comes back), the k candidates when every row samples from its
    /// top k on a GPU (one top-k reduction), else the whole rows.
    async fn read_choices(&mut self, model: &Llama, logits: Tensor<2>) -> Result<Choice, Error> {
        let plain = |r: &Row<T>| r.cfg.logprobs.is_none();
        if self.live().all(|r| plain(r) && r.cfg.sampling.temperature <= 0.0) {
            return Ok(Choice::Argmax(read_vec::<i32, 2, _>(logits.argmax(1)).await?));
        }
        let k = self.live().next().map_or(0, |r| r.cfg.sampling.top_k);
        let vocab = model.vocab_size;
        if self.top_k_on_device
            && (1..=TOP_K_ON_DEVICE_MAX.min(vocab - 1)).contains(&k)
            && self.live().all(|r| plain(r) && r.cfg.sampling.top_k == k)
            && logits.device().inner() != Device::flex()
        {
            let (values, ids) = logits.clone().topk_with_indices(k, 1);
            let (values, ids) =
                (read_vec::<f32, 2, _>(values).await?, read_vec::<i32, 2, _>(ids).await?);
            if ids.iter().all(|&i| (0..vocab as i32).contains(&i)) {
                return Ok(Choice::TopK { k, values, ids });
            }
            self.top_k_on_device = false;
        }
        Ok(Choice::Rows(read_vec::<f32, 2, _>(logits).await?))
    }

    /// Drops the finished rows from the cache once the rules say the copy pays, and everything
    /// when no row is left decoding.
    fn compact(&mut self) {
        let done = self.rows.iter().filter(|s| matches!(s, Slot::Done(_))).count();
        if done == 0 {
            return;
        }
        if self.is_empty() {
            self.rows.clear();
            self.cache = KvCache::default();
            self.logits = None;
            return;
        }
        if self.rules.ride_along.is_some_and(|n| done * n < self.rows.len()) {
            return;
        }
        let kept: Vec<usize> =
            (0..self.rows.len()).filter(|&r| matches!(self.rows[r], Slot::Live(_))).collect();
        self.rows.retain(|s| matches!(s, Slot::Live(_)));
        self.cache = self.cache.retain_rows(&kept);
        if let Some(l) = self.logits.take() {
            let idx = kept.iter().map(|&r| r as i32).collect::<Vec<_>>();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [kept.len()]), &l.device());
            self.logits = Some(l.select(0, idx));
        }
    }
}

/// How this step's tokens are chosen from the logits read back.
enum Choice {
    Argmax(Vec<i32>),
    TopK { k: usize, values: Vec<f32>, ids: Vec<i32> },
    Rows(Vec<f32>),
}

/// Ends a live row: its slot rides along at its position, its request and answer go back.
fn finish<T>(slot: &mut Slot<T>, reason: FinishReason) -> (T, Generation) {
    let Slot::Live(row) = std::mem::replace(slot, Slot::Done(0)) else {
        unreachable!("only live rows finish")
    };
    *slot = Slot::Done(row.position);
    let mut out = row.out;
    out.finish = reason;
    (row.user, out)
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
/// The prompts are the rows of one [`ContinuousBatch`], stepped until every row is done.
pub async fn generate_steps<F: Future<Output = ()>>(
    model: &Llama,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    mut on_token: impl FnMut(usize, u32, Option<&TokenLogprobs>) -> Flow,
    mut between_steps: impl FnMut() -> F,
) -> Result<Vec<Generation>, Error> {
    check_prompts(model, prompts, cfg.max_new_tokens)?;
    cfg.sampling.validate().map_err(Error::Invalid)?;
    // Row r samples from its own stream, as a prompt alone would with the row's seed.
    let rows: Vec<(GenerationConfig, usize)> = (0..prompts.len())
        .map(|r| {
            let sampling = SamplingParams { seed: row_seed(cfg.sampling.seed, r), ..cfg.sampling };
            (GenerationConfig { sampling, ..cfg.clone() }, r)
        })
        .collect();
    let cfgs: Vec<GenerationConfig> = rows.iter().map(|(c, _)| c.clone()).collect();
    let mut batch = ContinuousBatch::new(BatchRules::ONE_CALLER);
    batch.add(ContinuousBatch::<usize>::prefill(model, prompts, &cfgs)?, rows);
    let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
    loop {
        for (r, g) in batch.step(model, |&mut r, id, lp| on_token(r, id, lp)).await? {
            out[r] = Some(g);
        }
        if batch.is_empty() {
            break;
        }
        between_steps().await;
    }
    Ok(out.into_iter().map(|g| g.expect("every row finishes")).collect())
}

/// Reads a tensor back to the host (asynchronously: the only way on WebGPU in a browser).
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

#[cfg(test)]
pub(crate) mod tests {
    use burn::tensor::FloatDType;

    use super::*;
    use crate::config::LlamaConfig;

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

    /// What a prompt decodes alone, through `generate`.
    pub(crate) fn alone(
        model: &Llama,
        prompt: Vec<u32>,
        max_new: usize,
        s: SamplingParams,
    ) -> Vec<u32> {
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
