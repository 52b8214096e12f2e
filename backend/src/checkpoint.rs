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
    /// sha256 of each other file of the checkpoint, checked before any is parsed (absent in
    /// checkpoints from before it).
    #[serde(default)]
    pub sha256: std::collections::BTreeMap<String, String>,
}

pub fn dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Writes `out/checkpoint/` via `checkpoint.new` and renames; the old one goes only once the new is whole.
pub fn save(
    out: &Path,
    model: &Llama,
    lora_cfg: &LoraConfig,
    optim: &ModuleOptimizer,
    state: &RunState,
) -> Result<()> {
    let final_dir = dir(out);
    let new = out.join("checkpoint.new");
    let old = out.join("checkpoint.old");
    if new.exists() {
        std::fs::remove_dir_all(&new)
            .with_context(|| format!("{}: cannot clear", new.display()))?;
    }
    std::fs::create_dir_all(&new).with_context(|| format!("{}: cannot create", new.display()))?;
    let (tensors, config_json) = lora::to_peft(model, lora_cfg, "checkpoint")?;
    let optim_bytes = optim
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("serializing the optimizer state: {e:?}"))?;
    let files = [
        (lora::WEIGHTS_FILE, tensors.to_safetensors()?),
        (lora::CONFIG_FILE, config_json.into_bytes()),
        ("optimizer.bin", optim_bytes.to_vec()),
    ];
    let mut state = state.clone();
    for (name, bytes) in &files {
        // Each file synced to the disk before the rename that publishes it.
        emlab_model::files::atomic_write(&new.join(name), bytes)?;
        state.sha256.insert(name.to_string(), sha256_hex(bytes));
    }
    emlab_model::files::atomic_write(
        &new.join("state.json"),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    // The previous checkpoint stays until the new one is complete and durable.
    if final_dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).ok();
        }
        std::fs::rename(&final_dir, &old)
            .with_context(|| format!("{}: cannot move aside", final_dir.display()))?;
    }
    std::fs::rename(&new, &final_dir)
        .with_context(|| format!("{}: cannot move into place", final_dir.display()))?;
    sync_dir(out)?;
    std::fs::remove_dir_all(&old).ok();
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    emlab_schema::manifest::hex(&sha2::Sha256::digest(bytes))
}

/// Makes renames inside `dir` durable (Unix; elsewhere a no-op).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("{}: cannot sync", dir.display()))?;
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
    let raw = |name: &str| -> Result<Vec<u8>> {
        let p = ckpt.join(name);
        std::fs::read(&p)
            .with_context(|| format!("{}: cannot read (incomplete checkpoint?)", p.display()))
    };
    let state: RunState = serde_json::from_slice(&raw("state.json")?).with_context(|| {
        format!("{}: corrupt checkpoint state", ckpt.join("state.json").display())
    })?;
    // Nothing reaches a parser (the optimizer's least of all) unless it is the file that was written.
    let read = |name: &str| -> Result<Vec<u8>> {
        let bytes = raw(name)?;
        match state.sha256.get(name) {
            Some(want) if *want != sha256_hex(&bytes) => {
                bail!(
                    "{}: corrupt checkpoint file (its sha256 is not the one recorded in state.json)",
                    ckpt.join(name).display()
                )
            }
            _ => Ok(bytes),
        }
    };
    if &state.config != expected_config {
        bail!(
            "{}: this checkpoint is from another configuration (it was {}; now {}). Use the same flags, or another --out",
            ckpt.display(),
            state.config,
            expected_config
        );
    }
    let cfg_json =
        String::from_utf8(read(lora::CONFIG_FILE)?).context("adapter_config.json is not UTF-8")?;
    let lora_cfg = lora::config_from_peft(&cfg_json)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join(lora::CONFIG_FILE).display()))?;
    let mut tensors = Weights::default();
    tensors.add_safetensors(&read(lora::WEIGHTS_FILE)?).map_err(|e| {
        anyhow::anyhow!("{}: corrupt checkpoint: {e}", ckpt.join(lora::WEIGHTS_FILE).display())
    })?;
    if let Some((name, _)) =
        tensors.tensors.iter().find(|(_, t)| t.data.iter().any(|x| !x.is_finite()))
    {
        bail!(
            "{}: corrupt checkpoint: non-finite values in {name}",
            ckpt.join(lora::WEIGHTS_FILE).display()
        );
    }
    let model = lora::from_peft(base, &lora_cfg, tensors)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ckpt.join(lora::WEIGHTS_FILE).display()))?;
    // burn's deserializer is not ours to harden: a panic on bytes it cannot read is an error here.
    let bytes = Bytes::from_bytes_vec(read("optimizer.bin")?);
    let optim = catch_quietly(|| optim.from_bytes(bytes))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: corrupt optimizer state (unreadable)",
                ckpt.join("optimizer.bin").display()
            )
        })?
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: corrupt optimizer state: {e:?}",
                ckpt.join("optimizer.bin").display()
            )
        })?;
    Ok((model, optim, state))
}

/// Runs `f`, a panic becoming `None` without the panic hook's message: for a third-party parser
/// that panics on bytes it cannot read, so that the user sees one clear error, and a fuzzer's
/// abort-on-panic hook sees none.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.ok()
}
