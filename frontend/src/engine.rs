//! Loads the model from fetched bytes and generates on WebGPU, or on the CPU when WebGPU is absent.

use burn::prelude::Device;
use burn::tensor::FloatDType;
use emlab_model::files::ModelFiles;
use emlab_model::generate::{Flow, GenerationConfig, generate};
use emlab_model::pipeline::ChatModel;

/// Which compute the engine ended up on, and why.
pub struct Compute {
    pub device: Device,
    pub label: &'static str,
    pub notice: Option<String>,
}

pub async fn pick_device() -> Compute {
    configure_autotune();
    match emlab_model::device::init_wgpu_async().await {
        Ok(device) => Compute { device, label: "webgpu", notice: None },
        Err(e) => Compute { device: Device::flex(), label: "cpu", notice: Some(format!("WebGPU is not available ({e}); running on the CPU, which is slower.")) },
    }
}

pub fn build(files: ModelFiles, device: &Device) -> Result<ChatModel, emlab_model::Error> {
    ChatModel::new(files, device, FloatDType::F32)
}

pub async fn complete(model: &ChatModel, prompt: &[u32], cfg: &GenerationConfig, mut on_token: impl FnMut(u32) -> Flow) -> Result<Vec<u32>, emlab_model::Error> {
    let g = generate(&model.model, &[prompt.to_vec()], cfg, |_, id| on_token(id)).await?;
    Ok(g.into_iter().next().map(|g| g.ids).unwrap_or_default())
}

/// In a browser, cubecl's autotuner benchmarks every candidate kernel for every new shape with a
/// fixed 10 samples (wasm cannot stop early). On a software adapter (SwiftShader, ~1 GFLOP/s) that
/// made the first answer take minutes. One sample per candidate still picks a kernel; the choice
/// is cached per shape for the session.
fn configure_autotune() {
    use cubecl::config::autotune::AutotuneLevel;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::default();
    config.autotune.level = AutotuneLevel::Minimal;
    config.autotune.bench.min_samples = 1;
    config.autotune.bench.max_samples = 1;
    // False when the configuration was already read (a second load in the same worker): keep it.
    let _ = CubeClRuntimeConfig::try_set(config);
}
