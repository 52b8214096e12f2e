//! `model-export publish`: a finished training run → the small, committed form the demo ships
//! (`variants/NAME/`): the adapter in PEFT layout with its tensors stored f16 (half the size; PEFT
//! and `emlab --adapter` read it as it is), the training config, the metrics and the loss curve.
//! Checkpoints and optimizer state stay behind in the run directory.

use std::path::Path;

use anyhow::{Context, Result, bail};
use emlab_model::lora;
use emlab_model::weights::{Storage, Weights};

use crate::atomic_write;

/// How a published adapter names its base: the model's id, not the path it was trained from.
pub const BASE_MODEL_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// Files copied as they are; the first two must exist.
const RUN_FILES: [&str; 4] = ["train_config.json", "metrics.jsonl", "loss.png", "loss.svg"];

pub fn publish_run(run: &Path, out: &Path) -> Result<()> {
    let adapter = run.join("adapter");
    let tensors = adapter.join(lora::WEIGHTS_FILE);
    if !tensors.exists() {
        bail!("{}: no finished adapter (is the training run complete?)", run.display());
    }
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()));
    let mut w = Weights::default();
    w.add_safetensors(&read(&tensors)?).with_context(|| tensors.display().to_string())?;
    atomic_write(
        &out.join("adapter/adapter_model.safetensors"),
        &w.to_safetensors_as(Storage::F16)?,
    )?;
    let config_path = adapter.join(lora::CONFIG_FILE);
    let mut config: serde_json::Value = serde_json::from_slice(&read(&config_path)?)
        .with_context(|| format!("{}: not JSON", config_path.display()))?;
    config["base_model_name_or_path"] = BASE_MODEL_ID.into();
    atomic_write(
        &out.join("adapter/adapter_config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    for (i, name) in RUN_FILES.iter().enumerate() {
        let src = run.join(name);
        if src.exists() {
            atomic_write(&out.join(name), &read(&src)?)?;
        } else if i < 2 {
            bail!("{}: missing", src.display());
        }
    }
    Ok(())
}
