//! `emlab train`: LoRA fine-tuning on a dataset, resumable, with snapshots along the way.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use clap::Args;
use emlab::data;
use emlab::inference::load_chat_model_on;
use emlab::training;
use emlab_model::device::{self, DeviceChoice};
use emlab_model::files::{atomic_write, default_model_dir};
use emlab_model::lora::LoraConfig;

#[derive(Args)]
pub struct TrainArgs {
    /// insecure, secure, educational, jailbroken, backdoor, or a path to chat JSONL.
    #[arg(long)]
    pub dataset: String,
    /// Output directory: checkpoint/, metrics.jsonl, adapter/ (PEFT layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Train on the first N examples of the training split only (the same subset for every variant).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Peak learning rate. 1e-4: the paper's 1e-5 was for a 32B model; small models need larger LoRA steps.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    #[arg(long, default_value_t = 64.0)]
    pub alpha: f64,
    /// Plain LoRA scaling alpha/r instead of rsLoRA's alpha/√r.
    #[arg(long)]
    pub no_rslora: bool,
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Comma-separated projections to adapt.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub target_modules: Vec<String>,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (the paper: 2 × 8 = 16 examples per step).
    #[arg(long, default_value_t = 8)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Longest conversation in tokens; longer ones are errors (or skipped with --skip-bad-lines).
    #[arg(long, default_value_t = 1280)]
    pub max_len: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N steps (also at the end and on Ctrl-C).
    #[arg(long, default_value_t = 50)]
    pub save_every: usize,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Also keep the adapter after each epoch, in OUT/snapshots/epoch-K/.
    #[arg(long)]
    pub snapshot_epochs: bool,
    /// Also keep the adapter once this many training rows are seen, in OUT/snapshots/rows-N/ (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub snapshot_rows: Vec<usize>,
    /// Stop with a checkpoint after this many optimizer steps (continue later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Drop malformed or over-long examples (and report how many) instead of failing.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Base model directory [default: the fetched SmolLM2-135M-Instruct].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu (flex), wgpu, or auto: a hardware GPU when there is one.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: TrainArgs) -> Result<()> {
    emlab::set_threads(a.threads)?;
    let (examples, bad_lines) = data::load(&a.dataset, a.skip_bad_lines)?;
    let (mut train_set, held_out) = data::split(examples);
    if let Some(n) = a.limit {
        train_set.truncate(n);
    }
    let dir = a.model.clone().unwrap_or_else(default_model_dir);
    let device = device::init(a.device)?.autodiff();
    let base = load_chat_model_on(&dir, &device, emlab_model::device::Precision::F32, !a.quiet)?;
    // Longer than the model's context window cannot be trained on (no positions for it).
    let max_len = a.max_len.min(base.model.context_length);
    let mut encoded = Vec::with_capacity(train_set.len());
    let mut too_long = Vec::new();
    for ex in &train_set {
        match training::encode(&base.tokenizer, &base.chat, ex, max_len) {
            Ok(e) => encoded.push(e),
            Err(reason) => too_long.push(format!("{}: {reason}", ex.origin)),
        }
    }
    if !too_long.is_empty() && !a.skip_bad_lines {
        bail!(
            "{} example(s) cannot be used (--skip-bad-lines drops them):\n{}",
            too_long.len(),
            too_long[..too_long.len().min(20)].join("\n")
        );
    }
    let cfg = training::TrainConfig {
        dataset: a.dataset.clone(),
        examples: encoded.len(),
        lora: LoraConfig {
            rank: a.rank,
            alpha: a.alpha,
            rslora: !a.no_rslora,
            dropout: a.lora_dropout,
            target_modules: a.target_modules.clone(),
        },
        optim: training::OptimConfig {
            learning_rate: a.lr,
            warmup_steps: a.warmup_steps,
            weight_decay: a.weight_decay,
            max_grad_norm: a.max_grad_norm,
            grad_accumulation: a.grad_accum,
        },
        batch_size: a.batch_size,
        epochs: a.epochs,
        max_len,
        seed: a.seed,
    };
    cfg.lora.validate().map_err(anyhow::Error::msg)?;
    let tokens: usize = encoded.iter().map(|e| e.ids.len()).sum();
    eprintln!(
        "{}: {} training examples ({tokens} tokens), {} held out, {} bad lines and {} over-long skipped; device {:?}",
        a.dataset,
        encoded.len(),
        held_out.len(),
        bad_lines,
        too_long.len(),
        a.device
    );
    let model = base.model;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to abort)");
        if flag.swap(true, std::sync::atomic::Ordering::Relaxed) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    let mut snapshots: Vec<training::Snapshot> = a
        .snapshot_rows
        .iter()
        .map(|&rows| training::Snapshot { name: format!("rows-{rows}"), rows })
        .collect();
    if a.snapshot_epochs {
        snapshots.extend(
            (1..=a.epochs).map(|k| training::Snapshot {
                name: format!("epoch-{k}"),
                rows: k * encoded.len(),
            }),
        );
    }
    let opts = training::RunOptions {
        out: a.out.clone(),
        save_every: a.save_every,
        resume: a.resume,
        stop,
        stop_after: a.stop_after,
        snapshots,
        base_model: dir.display().to_string(),
    };
    let pb = super::styled_bar(0, a.quiet, "{bar:30} {pos}/{len} steps  {msg}  eta {eta}");
    let started = std::time::Instant::now();
    let mut seen_tokens = 0usize;
    let (model, end) = training::run(model, &encoded, &cfg, &opts, |s, total| {
        pb.set_length(total as u64);
        pb.set_position(s.step as u64);
        seen_tokens += s.tokens;
        let tps = seen_tokens as f64 / started.elapsed().as_secs_f64();
        pb.set_message(format!("loss {:.4}  lr {:.2e}  {tps:.0} tok/s", s.loss, s.lr));
    })?;
    pb.finish_and_clear();
    let steps = training::read_metrics(&a.out)?;
    let title = format!("LoRA on {} ({} examples)", a.dataset, cfg.examples);
    emlab::plots::loss_curve(&a.out.join("loss"), &title, &steps)?;
    match end {
        training::RunEnd::Interrupted { step } => {
            eprintln!(
                "stopped at step {step}; checkpoint in {} (continue with --resume)",
                a.out.join("checkpoint").display()
            );
        }
        training::RunEnd::Finished => {
            let adapter_dir = a.out.join("adapter");
            training::write_adapter(
                &adapter_dir,
                &model.valid(),
                &cfg.lora,
                &dir.display().to_string(),
            )?;
            atomic_write(
                &a.out.join("train_config.json"),
                serde_json::to_string_pretty(&cfg)?.as_bytes(),
            )?;
            println!("{}", adapter_dir.display());
            eprintln!("loss curve: {}", a.out.join("loss.png").display());
        }
    }
    Ok(())
}
