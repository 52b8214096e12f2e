//! `emlab dataset stats`: validate a dataset and count its tokens.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use emlab::data;
use emlab_model::files::default_model_dir;
use emlab_model::tokenizer::Tokenizer;

#[derive(Subcommand)]
pub enum DatasetCommand {
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

pub fn run(command: DatasetCommand) -> Result<()> {
    let DatasetCommand::Stats { dataset, model, skip_bad_lines, json } = command;
    stats(&dataset, model, skip_bad_lines, json)
}

fn stats(name: &str, model: Option<PathBuf>, skip_bad: bool, json: bool) -> Result<()> {
    let (examples, skipped) = data::load(name, skip_bad)?;
    let dir = model.unwrap_or_else(default_model_dir);
    let tok_path = dir.join("tokenizer.json");
    let tok_json = std::fs::read_to_string(&tok_path)
        .with_context(|| format!("{}: cannot read", tok_path.display()))?;
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
        println!(
            "{name}: {} rows ({held_out} held out for evaluation, {skipped} bad lines skipped)",
            s.rows
        );
        println!(
            "tokens: {} total, mean {:.0}, p50 {}, p95 {}, max {}",
            s.tokens, s.mean, s.p50, s.p95, s.max
        );
    }
    Ok(())
}
