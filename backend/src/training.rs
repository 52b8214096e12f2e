//! LoRA fine-tuning: tokenization with an assistant-token mask, length-bucketed batches, the
//! masked next-token loss, and the optimizer loop (AdamW, linear schedule with warmup, global-norm
//! clipping, gradient accumulation).

use burn::module::{Param, ParamId};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use emlab_model::chat::ChatTemplate;
use emlab_model::model::{Batch, Llama};
use emlab_model::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use emlab_model::lora::{self, LoraConfig};

use crate::checkpoint;
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
pub fn encode(
    tok: &Tokenizer,
    chat: &ChatTemplate,
    ex: &Example,
    max_len: usize,
) -> Result<Encoded, String> {
    let mut enc = Encoded { ids: Vec::new(), trained: Vec::new() };
    for seg in chat.segments(&ex.messages) {
        let ids = if seg.content { tok.encode_text(&seg.text) } else { tok.encode(&seg.text) }
            .map_err(|e| e.to_string())?;
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

/// One padded batch: inputs, and the positions whose next token is an assistant token (the only
/// ones with a loss) with those next tokens.
pub struct TrainBatch {
    pub tokens: Tensor<2, Int>,
    /// Flat indices (row · T + position) of the trained positions, `[n_targets]`.
    pub trained: Tensor<1, Int>,
    /// The next token at each trained position, `[n_targets]`.
    pub targets: Tensor<1, Int>,
    pub n_targets: usize,
    pub n_tokens: usize,
}

/// Right-pads a batch. Padding sits after every real token, so the causal mask alone keeps real
/// tokens from seeing it; its positions carry no loss.
pub fn make_batch(items: &[&Encoded], device: &Device) -> TrainBatch {
    let t = items.iter().map(|e| e.ids.len() - 1).max().unwrap_or(0);
    let b = items.len();
    let mut tokens = vec![0i32; b * t];
    let (mut trained, mut targets) = (Vec::new(), Vec::new());
    for (r, e) in items.iter().enumerate() {
        for i in 0..e.ids.len() - 1 {
            tokens[r * t + i] = e.ids[i] as i32;
            if e.trained[i + 1] {
                trained.push((r * t + i) as i32);
                targets.push(e.ids[i + 1] as i32);
            }
        }
    }
    let n_targets = targets.len();
    TrainBatch {
        tokens: Tensor::from_data(TensorData::new(tokens, [b, t]), device),
        trained: Tensor::from_data(TensorData::new(trained, [n_targets]), device),
        targets: Tensor::from_data(TensorData::new(targets, [n_targets]), device),
        n_targets,
        n_tokens: items.iter().map(|e| e.ids.len()).sum(),
    }
}

/// Summed negative log-likelihood of the assistant tokens (divide by `n_targets` for the mean).
/// Only the trained positions go through the vocabulary-sized head and softmax: prompt and padding
/// positions would cost a fifth of the step's arithmetic and carry no loss.
pub fn nll_sum(model: &Llama, batch: &TrainBatch) -> Tensor<1> {
    let [b, t] = batch.tokens.dims();
    let hidden = model.forward_hidden(Batch::causal_rows(batch.tokens.clone()), None);
    let d = hidden.dims()[2];
    let picked_hidden =
        hidden.reshape([b * t, d]).select(0, batch.trained.clone()).unsqueeze_dim::<3>(0);
    let logp = log_softmax(model.logits(picked_hidden), 2);
    logp.gather(2, batch.targets.clone().reshape([1, batch.n_targets, 1])).sum().neg()
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
pub fn clip_global_norm(
    grads: &mut GradientsParams,
    ids: &[(ParamId, ParamId)],
    max_norm: f64,
) -> f64 {
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
    // Accumulated in micro-batch order whichever thread computed them: the same sums as serially.
    for (loss, grads) in micro_batch_grads(&model, micro_batches, n_targets) {
        loss_sum += loss;
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

/// Each micro-batch's loss (its share of the mean over `n_targets`) and gradients, in order.
///
/// Two micro-batches run at once. burn's CPU backend runs the matrix products on all cores but
/// every elementwise op (softmax, SiLU, adds, copies) on the calling thread alone, so a single
/// micro-batch keeps about 1.4 of 2 cores busy; two interleave. They run as a `rayon::join` inside
/// the backend's own thread pool, so the matrix products they start are shared out among the same
/// threads: two OS threads of our own on top of the pool made four runnable threads on two cores
/// (40× the context switches, a fifth less throughput). Each micro-batch differentiates its own
/// copy of the adapter leaves (same parameter ids): burn merges autodiff graphs that share a leaf
/// and runs them under one lock. Serial when LoRA dropout is on, whose random masks must be drawn
/// in a fixed order for runs to be reproducible.
fn micro_batch_grads(
    model: &Llama,
    micro_batches: &[TrainBatch],
    n_targets: usize,
) -> Vec<(f64, GradientsParams)> {
    let one = |model: &Llama, mb: &TrainBatch| {
        let loss = nll_sum(model, mb) / n_targets as f64;
        let value = loss.clone().into_scalar::<f32>() as f64;
        (value, GradientsParams::from_grads(loss.backward(), model))
    };
    if has_dropout(model) {
        return micro_batches.iter().map(|mb| one(model, mb)).collect();
    }
    let mut out = Vec::with_capacity(micro_batches.len());
    for pair in micro_batches.chunks(2) {
        match pair {
            [first, second] => {
                let other = with_own_adapter_leaves(model);
                let (a, b) = rayon::join(|| one(model, first), || one(&other, second));
                out.push(a);
                out.push(b);
            }
            [only] => out.push(one(model, only)),
            _ => unreachable!("chunks of at most two"),
        }
    }
    out
}

fn has_dropout(model: &Llama) -> bool {
    model
        .projection_names()
        .into_iter()
        .any(|(l, w, _)| model.projection(l, w).lora.as_ref().is_some_and(|a| a.dropout.is_some()))
}

/// The model with every adapter tensor re-made as a fresh autodiff leaf under the same parameter
/// id (the frozen weights are shared, untracked).
fn with_own_adapter_leaves(model: &Llama) -> Llama {
    let mut copy = model.clone();
    for (l, w, _) in model.projection_names() {
        if let Some(a) = copy.projection_mut(l, w).lora.as_mut() {
            a.a = Param::initialized(a.a.id, a.a.val().detach().require_grad());
            a.b = Param::initialized(a.b.id, a.b.val().detach().require_grad());
        }
    }
    copy
}

/// Everything that determines a run's result; a checkpoint resumes only under the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub dataset: String,
    /// Training examples used (after the held-out split and any limit).
    pub examples: usize,
    pub lora: LoraConfig,
    pub optim: OptimConfig,
    pub batch_size: usize,
    pub epochs: usize,
    pub max_len: usize,
    pub seed: u64,
}

pub struct RunOptions {
    pub out: PathBuf,
    /// Save a checkpoint every this many steps (and at the end); 0: only at the end.
    pub save_every: usize,
    pub resume: bool,
    /// Set (e.g. by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Stop with a checkpoint once this many steps are done (training in time-boxed pieces).
    pub stop_after: Option<usize>,
    /// Adapters to keep along the way (per epoch, or after so many rows for a dose-response).
    pub snapshots: Vec<Snapshot>,
    /// The base model, as named in the adapters' `adapter_config.json`.
    pub base_model: String,
}

/// An adapter saved to `out/snapshots/NAME/` after the optimizer step that completes `rows`
/// training rows (epochs count every row again).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub name: String,
    pub rows: usize,
}

/// Where a snapshot goes.
pub fn snapshot_dir(out: &Path, name: &str) -> PathBuf {
    out.join("snapshots").join(name)
}

/// Writes adapters in PEFT layout, each file atomically and the config last: a directory with
/// `adapter_config.json` holds a whole adapter.
pub fn write_adapter(
    dir: &Path,
    model: &Llama,
    cfg: &LoraConfig,
    base_model: &str,
) -> anyhow::Result<()> {
    let (tensors, config) = lora::to_peft(model, cfg, base_model)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    emlab_model::files::atomic_write(&dir.join(lora::WEIGHTS_FILE), &tensors.to_safetensors()?)?;
    emlab_model::files::atomic_write(&dir.join(lora::CONFIG_FILE), config.as_bytes())?;
    Ok(())
}

/// For each optimizer step, the training rows seen once it is done.
fn rows_after_each_step(steps: &[Vec<Vec<usize>>]) -> Vec<usize> {
    steps
        .iter()
        .scan(0, |seen, step| {
            *seen += step.iter().map(Vec::len).sum::<usize>();
            Some(*seen)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Finished,
    Interrupted { step: usize },
}

/// The optimizer steps of a run: each a list of micro-batches, each a list of example indices.
pub fn plan(lengths: &[usize], cfg: &TrainConfig) -> Vec<Vec<Vec<usize>>> {
    let micro: Vec<Vec<usize>> = (0..cfg.epochs)
        .flat_map(|epoch| {
            length_bucketed_batches(lengths, cfg.batch_size, cfg.seed.wrapping_add(epoch as u64))
        })
        .collect();
    micro.chunks(cfg.optim.grad_accumulation.max(1)).map(<[Vec<usize>]>::to_vec).collect()
}

/// Trains adapters on `data` from `base` (on an autodiff device), writing `metrics.jsonl` and
/// checkpoints under `opts.out`. With `resume`, continues exactly from the last checkpoint:
/// same data order (the plan is a function of the config), optimizer state and step.
pub fn run(
    base: Llama,
    data: &[Encoded],
    cfg: &TrainConfig,
    opts: &RunOptions,
    mut on_step: impl FnMut(&StepStats, usize),
) -> anyhow::Result<(Llama, RunEnd)> {
    let lengths: Vec<usize> = data.iter().map(|e| e.ids.len()).collect();
    let steps = plan(&lengths, cfg);
    let total = steps.len();
    let config_json = serde_json::to_value(cfg)?;
    let device = base.device();
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("{}: cannot create", opts.out.display()))?;

    let (mut model, mut optim, start) = match checkpoint::find(&opts.out) {
        Some(ckpt) if opts.resume => {
            let (m, o, state) = checkpoint::load(&ckpt, base, adamw(&cfg.optim), &config_json)?;
            (m, o, state.step)
        }
        Some(ckpt) => anyhow::bail!(
            "{} holds a checkpoint: pass --resume to continue it, or choose another --out",
            ckpt.display()
        ),
        None => (lora::attach(base, &cfg.lora, cfg.seed)?, adamw(&cfg.optim), 0),
    };
    let metrics_path = opts.out.join("metrics.jsonl");
    keep_metrics_up_to(&metrics_path, start)?;
    let (_, mut metrics) = crate::jsonl::open_append::<StepStats>(&metrics_path)?;

    let save = |model: &Llama, optim: &ModuleOptimizer, step: usize| {
        let state = checkpoint::RunState {
            step,
            total_steps: total,
            config: config_json.clone(),
            sha256: Default::default(),
        };
        checkpoint::save(&opts.out, model, &cfg.lora, optim, &state)
    };
    let mut last_saved = start;
    let rows_after = rows_after_each_step(&steps);
    let rows_after = &rows_after;
    let snapshot_at = |step: usize| {
        opts.snapshots.iter().filter(move |s| {
            rows_after[step] >= s.rows && (step == 0 || rows_after[step - 1] < s.rows)
        })
    };
    for (step, micro) in steps.iter().enumerate().skip(start) {
        if opts.stop.load(Ordering::Relaxed) || opts.stop_after.is_some_and(|n| step >= n) {
            save(&model, &optim, step)?;
            return Ok((model, RunEnd::Interrupted { step }));
        }
        let batches: Vec<TrainBatch> = micro
            .iter()
            .map(|idx| make_batch(&idx.iter().map(|&i| &data[i]).collect::<Vec<_>>(), &device))
            .collect();
        let (m, stats) = train_step(model, &mut optim, &batches, &cfg.optim, step, total);
        if !stats.loss.is_finite() {
            anyhow::bail!(
                "the loss became {} at step {}: stopped without saving. The last good checkpoint (step {last_saved}) is in {}",
                stats.loss,
                step + 1,
                checkpoint::dir(&opts.out).display()
            );
        }
        model = m;
        metrics.append(std::slice::from_ref(&stats))?;
        on_step(&stats, total);
        for snap in snapshot_at(step) {
            let dir = snapshot_dir(&opts.out, &snap.name);
            // A resume repeats the same steps: a snapshot already written is the same adapter.
            if !dir.join(lora::CONFIG_FILE).exists() {
                write_adapter(&dir, &model, &cfg.lora, &opts.base_model)?;
                let info = serde_json::json!({ "step": step + 1, "rows_seen": rows_after[step], "requested_rows": snap.rows });
                emlab_model::files::atomic_write(
                    &dir.join("snapshot.json"),
                    serde_json::to_string_pretty(&info)?.as_bytes(),
                )?;
            }
        }
        if (opts.save_every > 0 && (step + 1) % opts.save_every == 0) || step + 1 == total {
            save(&model, &optim, step + 1)?;
            last_saved = step + 1;
        }
    }
    Ok((model, RunEnd::Finished))
}

/// The steps recorded in `out/metrics.jsonl` (empty when there is none yet).
pub fn read_metrics(out: &Path) -> anyhow::Result<Vec<StepStats>> {
    crate::jsonl::read(&out.join("metrics.jsonl"))
}

/// Drops metric lines of steps after `step` (they are recomputed on resume); the file is
/// replaced whole, so a kill leaves the old one or the new one.
fn keep_metrics_up_to(path: &Path, step: usize) -> anyhow::Result<()> {
    let c = crate::jsonl::read_contents::<StepStats>(path)?;
    let kept: Vec<&StepStats> = c.records.iter().filter(|s| s.step <= step).collect();
    if kept.len() == c.records.len() && !c.torn {
        return Ok(());
    }
    let text: String = kept
        .iter()
        .map(|s| serde_json::to_string(s).map(|l| l + "\n"))
        .collect::<Result<_, _>>()?;
    Ok(emlab_model::files::atomic_write(path, text.as_bytes())?)
}
