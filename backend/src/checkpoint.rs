//! Training checkpoints: the adapters (PEFT layout), the optimizer state and the run state, written
//! as one directory that replaces the previous one atomically: a kill or a full disk at any moment
//! leaves the last complete checkpoint in place.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::optim::ModuleOptimizer;
use burn::tensor::Bytes;
use emlab_model::lora::{self, LoraConfig};
use emlab_model::model::Llama;
use emlab_model::weights::Weights;
use serde::{Deserialize, Serialize};

/// What, besides the tensors, a checkpoint must match to be resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    /// The training configuration, as JSON, compared on resume.
    pub config: serde_json::Value,
}

pub fn dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Writes `out/checkpoint/` via `checkpoint.new` and renames; the old one goes only once the new is whole.
pub fn save(out: &Path, model: &Llama, lora_cfg: &LoraConfig, optim: &ModuleOptimizer, state: &RunState) -> Result<()> {
    let final_dir = dir(out);
    let new = out.join("checkpoint.new");
    let old = out.join("checkpoint.old");
    if new.exists() {
        std::fs::remove_dir_all(&new).with_context(|| format!("{}: cannot clear", new.display()))?;
    }
    std::fs::create_dir_all(&new).with_context(|| format!("{}: cannot create", new.display()))?;
    let (tensors, config_json) = lora::to_peft(model, lora_cfg, "checkpoint")?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = new.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("{}: write failed (disk full?)", p.display()))
    };
    write("adapter_model.safetensors", &tensors.to_safetensors()?)?;
    write("adapter_config.json", config_json.as_bytes())?;
    let optim_bytes = optim.into_bytes().map_err(|e| anyhow::anyhow!("serializing the optimizer state: {e:?}"))?;
    write("optimizer.bin", &optim_bytes)?;
    write("state.json", serde_json::to_string_pretty(state)?.as_bytes())?;
    if final_dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).ok();
        }
        std::fs::rename(&final_dir, &old).with_context(|| format!("{}: cannot move aside", final_dir.display()))?;
    }
    std::fs::rename(&new, &final_dir).with_context(|| format!("{}: cannot move into place", final_dir.display()))?;
    std::fs::remove_dir_all(&old).ok();
    Ok(())
}

/// The newest complete checkpoint: `checkpoint/`, or `checkpoint.old/` if a kill fell between the two renames.
pub fn find(out: &Path) -> Option<PathBuf> {
    [dir(out), out.join("checkpoint.old")].into_iter().find(|d| d.join("state.json").exists())
}

/// Loads a checkpoint onto the base model and the optimizer. Errors say which file is wrong.
pub fn load(
    ckpt: &Path,
    base: Llama,
    optim: ModuleOptimizer,
    expected_config: &serde_json::Value,
) -> Result<(Llama, ModuleOptimizer, RunState)> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let p = ckpt.join(name);
        std::fs::read(&p).with_context(|| format!("{}: cannot read (incomplete checkpoint?)", p.display()))
    };
    let state: RunState = serde_json::from_slice(&read("state.json")?)
        .with_context(|| format!("{}: corrupt checkpoint state", ckpt.join("state.json").display()))?;
    if &state.config != expected_config {
        bail!(
            "{}: this checkpoint is from another configuration (it was {}; now {}). Use the same flags, or another --out",
            ckpt.display(),
            state.config,
            expected_config
        );
    }
    let cfg_json = String::from_utf8(read("adapter_config.json")?).context("adapter_config.json is not UTF-8")?;
    let lora_cfg = lora::config_from_peft(&cfg_json)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join("adapter_config.json").display()))?;
    let mut tensors = Weights::default();
    tensors
        .add_safetensors(&read("adapter_model.safetensors")?)
        .map_err(|e| anyhow::anyhow!("{}: corrupt checkpoint: {e}", ckpt.join("adapter_model.safetensors").display()))?;
    let model = lora::from_peft(base, &lora_cfg, tensors)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join("adapter_model.safetensors").display()))?;
    let optim = optim
        .from_bytes(Bytes::from_bytes_vec(read("optimizer.bin")?))
        .map_err(|e| anyhow::anyhow!("{}: corrupt optimizer state: {e:?}", ckpt.join("optimizer.bin").display()))?;
    Ok((model, optim, state))
}
