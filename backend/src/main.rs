//! `emlab`: the command line of the Emergent Misalignment Lab backend.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use backend::data;
use backend::inference::{answer, load_chat_model, messages};
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
#[command(name = "emlab", version, about = "Emergent Misalignment Lab: generate, chat (train, eval and serve to come)")]
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
struct ModelArgs {
    /// Model directory (config.json, tokenizer.json, *.safetensors) [default: the fetched SmolLM2-135M-Instruct].
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu (flex), wgpu, or auto (a hardware GPU if there is one).
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
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
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("setting the thread count")?;
        }
        let dir = self.model.clone().unwrap_or_else(default_model_dir);
        load_chat_model(&dir, self.device, self.dtype, !self.quiet)
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
        Command::Chat { model, sampling, system } => chat(&model.load()?, &sampling, system),
        Command::Dataset { command: DatasetCommand::Stats { dataset, model, skip_bad_lines, json } } => {
            dataset_stats(&dataset, model, skip_bad_lines, json)
        }
    }
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
