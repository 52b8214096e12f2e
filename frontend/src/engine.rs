//! Loads the model from fetched bytes and chooses where it runs: WebGPU when the browser offers a
//! hardware adapter, else the CPU backend (flex, in wasm with simd128).

use burn::prelude::Device;
use burn::tensor::FloatDType;
use emlab_model::files::ModelFiles;
use emlab_model::pipeline::ChatModel;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::protocol::DeviceRequest;

/// Which compute the engine ended up on, and why: `notice` is one plain sentence for a visitor,
/// `detail` the technical reason (shown behind a toggle).
pub struct Compute {
    pub device: Device,
    pub label: &'static str,
    pub notice: Option<String>,
    pub detail: Option<String>,
}

impl Compute {
    fn cpu(notice: String, detail: Option<String>) -> Self {
        Self { device: Device::flex(), label: "cpu", notice: Some(notice), detail }
    }
}

/// What the browser says about its WebGPU adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// `vendor / architecture / description`, as the browser reports them.
    pub description: String,
    /// A CPU emulation (SwiftShader, llvmpipe, WARP): always slower than our CPU backend for this
    /// model, since it runs the same arithmetic with a GPU's launch and copy overheads on top.
    pub software: bool,
}

/// Words that name a software adapter in `GPUAdapterInfo` (Chromium reports SwiftShader as
/// vendor "google", architecture "swiftshader").
const SOFTWARE_ADAPTERS: [&str; 5] =
    ["swiftshader", "llvmpipe", "lavapipe", "software", "basic render"];

impl AdapterInfo {
    pub fn new(vendor: &str, architecture: &str, description: &str, is_fallback: bool) -> Self {
        let description = [vendor, architecture, description]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" / ");
        let lower = description.to_lowercase();
        let software = is_fallback || SOFTWARE_ADAPTERS.iter().any(|w| lower.contains(w));
        Self { description, software }
    }
}

/// Asks `navigator.gpu` for an adapter and reads its info; Err says why there is none.
pub async fn webgpu_adapter() -> Result<AdapterInfo, String> {
    let get = |o: &JsValue, k: &str| {
        js_sys::Reflect::get(o, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED)
    };
    let navigator = get(&js_sys::global(), "navigator");
    let gpu = get(&navigator, "gpu");
    if gpu.is_undefined() || gpu.is_null() {
        return Err("navigator.gpu is undefined: this browser does not expose WebGPU".into());
    }
    let request: js_sys::Function = get(&gpu, "requestAdapter")
        .dyn_into()
        .map_err(|_| "navigator.gpu.requestAdapter is not a function".to_string())?;
    let promise: js_sys::Promise = request
        .call0(&gpu)
        .map_err(|e| format!("requestAdapter failed: {e:?}"))?
        .dyn_into()
        .map_err(|_| "requestAdapter returned no promise".to_string())?;
    let adapter =
        JsFuture::from(promise).await.map_err(|e| format!("requestAdapter failed: {e:?}"))?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("requestAdapter() returned no adapter".into());
    }
    let info = get(&adapter, "info");
    let text = |k: &str| get(&info, k).as_string().unwrap_or_default();
    // `isFallbackAdapter` moved from the adapter to its info; either may say so.
    let fallback = get(&adapter, "isFallbackAdapter").as_bool().unwrap_or(false)
        || get(&info, "isFallbackAdapter").as_bool().unwrap_or(false);
    Ok(AdapterInfo::new(&text("vendor"), &text("architecture"), &text("description"), fallback))
}

/// Where the model should run, before anything starts: the page asks too, to choose which worker
/// to start (the threaded one has no WebGPU).
pub enum Choice {
    Cpu { notice: String, detail: Option<String> },
    WebGpu(AdapterInfo),
}

/// The CPU when asked, when WebGPU is missing, or when its adapter is a software one (unless
/// `?gpu=1` insists); else WebGPU.
pub async fn choose(request: DeviceRequest) -> Choice {
    let cpu = |notice: &str, detail| Choice::Cpu { notice: notice.into(), detail };
    if request == DeviceRequest::Cpu {
        return cpu("Running on your CPU, as the address asks (?cpu=1).", None);
    }
    let adapter = match webgpu_adapter().await {
        Ok(a) => a,
        Err(e) => return cpu("Running on your CPU: this browser does not offer WebGPU.", Some(e)),
    };
    if adapter.software && request == DeviceRequest::Auto {
        return cpu(
            "Running on your CPU: this browser's WebGPU is a software emulation, which is slower.",
            Some(format!(
                "WebGPU adapter: {} (software). Add ?gpu=1 to the address to use it anyway.",
                adapter.description
            )),
        );
    }
    Choice::WebGpu(adapter)
}

/// Chooses the device and starts it: the CPU when [`choose`] says so or when WebGPU fails to start.
pub async fn pick_device(request: DeviceRequest) -> Compute {
    match choose(request).await {
        Choice::Cpu { notice, detail } => Compute::cpu(notice, detail),
        Choice::WebGpu(adapter) => start_webgpu(adapter).await,
    }
}

#[cfg(feature = "webgpu")]
async fn start_webgpu(adapter: AdapterInfo) -> Compute {
    configure_autotune();
    match emlab_model::device::init_wgpu_async().await {
        Ok(device) => Compute {
            device,
            label: "webgpu",
            notice: adapter.software.then(|| "Running on WebGPU, as the address asks (?gpu=1), on a software adapter: slower than the CPU.".into()),
            detail: Some(format!("WebGPU adapter: {}{}", adapter.description, if adapter.software { " (software)" } else { "" })),
        },
        Err(e) => Compute::cpu("Running on your CPU: WebGPU did not start.".into(), Some(format!("WebGPU adapter: {}; {e}", adapter.description))),
    }
}

/// The threaded worker: the page starts it only where [`choose`] says CPU.
#[cfg(not(feature = "webgpu"))]
async fn start_webgpu(adapter: AdapterInfo) -> Compute {
    Compute::cpu(
        "Running on your CPU: this worker was built without WebGPU.".into(),
        Some(format!("WebGPU adapter: {}", adapter.description)),
    )
}

pub fn build(files: ModelFiles, device: &Device) -> Result<ChatModel, emlab_model::Error> {
    ChatModel::new(files, device, FloatDType::F32)
}

/// In a browser, cubecl's autotuner benchmarks every candidate kernel for every new shape with a
/// fixed 10 samples (wasm cannot stop early). On a software adapter (SwiftShader, ~1 GFLOP/s) that
/// made the first answer take minutes. One sample per candidate still picks a kernel; the choice
/// is cached per shape for the session.
#[cfg(feature = "webgpu")]
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
