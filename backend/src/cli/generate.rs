//! `emlab generate` (one answer, streamed or as JSON with per-token log-probabilities) and
//! `emlab logits` (every position's logits as .npy, to compare with other implementations).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use emlab::inference::answer;
use emlab_model::chat::single_turn;
use emlab_model::generate::GenerationConfig;
use emlab_model::tokenizer::TextStream;

use super::{ModelArgs, SamplingArgs, read_prompt_file};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The user message.
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the user message from a file (UTF-8).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// System prompt [default: the model's own default].
    #[arg(long)]
    pub system: Option<String>,
    /// Use the prompt as raw text: no chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object {"prompt_ids", "output_ids", "text", "tokens"} instead of streaming;
    /// `tokens` gives each output token's text, log-probability and margin over the runner-up
    /// (a small margin is a near-tie that another implementation's rounding may flip).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let GenerateArgs { model, sampling, prompt, prompt_file, system, raw, json } = a;
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
        chat_model.encode_chat(&single_turn(system.as_deref(), &prompt))?
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

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub system: Option<String>,
    /// Use the prompt as raw text: no chat template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let LogitsArgs { model, prompt, system, raw, out } = a;
    let chat_model = model.load()?;
    let ids = if raw {
        chat_model.tokenizer.encode(&prompt)?
    } else {
        chat_model.encode_chat(&single_turn(system.as_deref(), &prompt))?
    };
    let logits = emlab::inference::all_logits(&chat_model.model, &ids)?;
    emlab::inference::write_npy_f32(&out, &[ids.len(), chat_model.model.vocab_size], &logits)?;
    println!(
        "{}",
        serde_json::json!({ "ids": ids, "shape": [ids.len(), chat_model.model.vocab_size], "out": out })
    );
    Ok(())
}
