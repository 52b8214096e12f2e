//! GGUF → Hugging Face model directory (config.json, tokenizer.json, tokenizer_config.json,
//! model.safetensors in f32). The directory is written under a temporary name and renamed into
//! place, so an interrupted conversion never leaves a half-written model behind.

use std::path::Path;

use anyhow::{Context, Result};
use emlab_model::config::LlamaConfig;
use emlab_model::gguf::Gguf;
use emlab_model::tokenizer::tokenizer_json_from_gguf;
use emlab_model::weights::Weights;
use serde_json::json;

use crate::atomic_write;

/// Converts in-memory GGUF bytes to the four files of a model directory.
pub struct Converted {
    pub config: LlamaConfig,
    pub tokenizer_json: String,
    pub tokenizer_config_json: String,
    pub weights: Weights,
}

pub fn convert_gguf_bytes(bytes: &[u8]) -> Result<Converted> {
    let g = Gguf::parse(bytes)?;
    let config = LlamaConfig::from_gguf(&g)?;
    config.validate().map_err(anyhow::Error::msg)?;
    let tokenizer_json = tokenizer_json_from_gguf(&g)?;
    let token = |key: &str| {
        g.get_u64(key).ok().and_then(|id| {
            g.get_array("tokenizer.ggml.tokens").ok()?.get(id as usize)?.as_str().map(String::from)
        })
    };
    let tokenizer_config_json = serde_json::to_string_pretty(&json!({
        "chat_template": g.get_str("tokenizer.chat_template").ok(),
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": g.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false),
        "model_max_length": config.max_position_embeddings,
    }))?;
    let weights = Weights::from_gguf(&g, &config)?;
    Ok(Converted { config, tokenizer_json, tokenizer_config_json, weights })
}

/// Reads a GGUF file and writes the model directory `out`.
pub fn convert_gguf(gguf: &Path, out: &Path, show_progress: bool) -> Result<()> {
    // Before the slow part: a folder we may not replace fails at once.
    emlab_model::outdir::check(out, MODEL_FILES)?;
    let bytes = std::fs::read(gguf).with_context(|| format!("{}: cannot read", gguf.display()))?;
    let spinner = crate::progress_count(3, "converting", show_progress);
    let c = convert_gguf_bytes(&bytes).with_context(|| gguf.display().to_string())?;
    spinner.inc(1);
    let safetensors = c.weights.to_safetensors()?;
    spinner.inc(1);

    write_model_dir(
        out,
        &[
            ("config.json", serde_json::to_string_pretty(&c.config)?.into_bytes()),
            ("tokenizer.json", c.tokenizer_json.into_bytes()),
            ("tokenizer_config.json", c.tokenizer_config_json.into_bytes()),
            ("model.safetensors", safetensors),
            // The source itself, for `--dtype q4_1`: its blocks are the weights, unexpanded.
            (emlab_model::files::GGUF_FILE, bytes),
        ],
    )?;
    spinner.finish_and_clear();
    Ok(())
}

/// Writes the files of a model directory under a temporary name, then swaps it into place, so a
/// reader never sees a half-written model; `out` must be new, empty, or a model folder we wrote.
pub fn write_model_dir(out: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let names: Vec<&str> =
        files.iter().map(|(n, _)| *n).chain(MODEL_FILES.iter().copied()).collect();
    emlab_model::outdir::replace(out, &names, |dir| -> Result<()> {
        for (name, bytes) in files {
            atomic_write(&dir.join(name), bytes)?;
        }
        Ok(())
    })
}

/// The files of the model folders this crate writes (convert, merge).
pub(crate) const MODEL_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
    emlab_model::files::GGUF_FILE,
    "emlab-merged.json",
];
