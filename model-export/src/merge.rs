//! Adapter → merged model directory: W ← W + scale·A·B folded into every adapted weight, written
//! as a complete model directory (f32 safetensors) that loads like the base model itself.

use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::Device;
use burn::tensor::FloatDType;
use emlab_model::files::ModelFiles;
use emlab_model::lora;
use emlab_model::model::Llama;
use serde_json::json;

use crate::convert::write_model_dir;

/// Merges the PEFT adapter in `adapter` into the base model in `base` and writes `out`.
pub fn merge_adapter(base: &Path, adapter: &Path, out: &Path, show_progress: bool) -> Result<()> {
    emlab_model::outdir::check(out, crate::convert::MODEL_FILES)?;
    let read = |dir: &Path, name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let spinner = crate::progress_count(3, "merging", show_progress);
    let files = ModelFiles::load_dir(base)?;
    let device = Device::flex();
    let model = Llama::from_weights(&files.config, files.weights, &device, FloatDType::F32)?;
    let with_adapter = lora::from_peft_files(
        model,
        &read(adapter, lora::CONFIG_FILE)?,
        &read(adapter, lora::WEIGHTS_FILE)?,
    )
    .map_err(|e| anyhow::anyhow!("{}/{e}", adapter.display()))?;
    spinner.inc(1);
    let weights = lora::merge(with_adapter).to_weights()?;
    // An adapter of huge or non-finite values makes a model that writes nothing but NaN.
    if let Some((name, _)) =
        weights.tensors.iter().find(|(_, t)| t.data.iter().any(|x| !x.is_finite()))
    {
        anyhow::bail!(
            "{}: merging gives non-finite values in {name}; the adapter is broken",
            adapter.display()
        );
    }
    let safetensors = weights.to_safetensors()?;
    spinner.inc(1);
    let provenance = json!({
        "base_model": base.display().to_string(),
        "adapter": adapter.display().to_string(),
        "adapter_config": serde_json::from_slice::<serde_json::Value>(&read(adapter, lora::CONFIG_FILE)?)?,
    });
    let mut out_files = vec![
        ("config.json", read(base, "config.json")?),
        ("tokenizer.json", read(base, "tokenizer.json")?),
    ];
    if base.join("tokenizer_config.json").exists() {
        out_files.push(("tokenizer_config.json", read(base, "tokenizer_config.json")?));
    }
    out_files.push(("model.safetensors", safetensors));
    out_files.push(("emlab-merged.json", serde_json::to_string_pretty(&provenance)?.into_bytes()));
    write_model_dir(out, &out_files)?;
    spinner.finish_and_clear();
    Ok(())
}
