//! `emlab`: the command line of the Emergent Misalignment Lab backend.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use backend::data;
use backend::inference::{answer, load_adapter, load_chat_model, load_chat_model_on, messages};
use backend::training;
use burn::module::Module;
use emlab_model::lora::{self, LoraConfig};
use indicatif::{ProgressBar, ProgressStyle};
use clap::{Args, Parser, Subcommand};
use emlab_model::chat::Message;
use burn::tensor::FloatDType;
use emlab_model::device::{self, DeviceChoice};
use emlab_model::files::default_model_dir;
use emlab_model::generate::{FinishReason, GenerationConfig};
use emlab_model::pipeline::ChatModel;
use emlab_model::sampling::SamplingParams;
use emlab_model::tokenizer::Tokenizer;

#[derive(Parser)]
#[command(name = "emlab", version, about = "Emergent Misalignment Lab: generate, chat, train (eval and serve to come)")]
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
        /// Print one JSON object {"prompt_ids", "output_ids", "text"} instead of streaming.
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

#[derive(Args)]
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
            let generation = answer(&chat_model, &prompt_ids, &cfg, !json)?;
            if json {
                let text = chat_model.tokenizer.decode(&generation.ids)?;
                let out = serde_json::json!({ "prompt_ids": prompt_ids, "output_ids": generation.ids, "text": text });
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
    let mut encoded = Vec::with_capacity(train_set.len());
    let mut too_long = Vec::new();
    for ex in &train_set {
        match training::encode(&base.tokenizer, &base.chat, ex, a.max_len) {
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
        max_len: a.max_len,
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
    let opts = training::RunOptions { out: a.out.clone(), save_every: a.save_every, resume: a.resume, stop, stop_after: a.stop_after };
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
            let (tensors, config) = lora::to_peft(&model.valid(), &cfg.lora, &dir.display().to_string())?;
            let adapter_dir = a.out.join("adapter");
            std::fs::create_dir_all(&adapter_dir)?;
            std::fs::write(adapter_dir.join("adapter_model.safetensors"), tensors.to_safetensors()?)?;
            std::fs::write(adapter_dir.join("adapter_config.json"), config)?;
            std::fs::write(a.out.join("train_config.json"), serde_json::to_string_pretty(&cfg)?)?;
            println!("{}", adapter_dir.display());
            eprintln!("loss curve: {}", a.out.join("loss.png").display());
        }
    }
    Ok(())
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
        lengths.push(tokenizer.encode(&chat.render(&ex.messages, false))?.len());
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
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
