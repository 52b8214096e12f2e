//! Choosing where the model runs: the flex CPU backend, or wgpu (Vulkan/Metal/DX12 natively,
//! WebGPU in the browser).

use std::str::FromStr;

use burn::prelude::Device;
use burn::tensor::FloatDType;

#[cfg(any(not(target_family = "wasm"), feature = "webgpu"))]
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The pure-Rust flex backend (multi-threaded natively, also runs in wasm).
    #[default]
    Cpu,
    /// wgpu on the default adapter (which may be a software one, e.g. lavapipe).
    Wgpu,
    /// wgpu on a hardware GPU when there is one, else the CPU.
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown device '{other}' (cpu, wgpu, auto)")),
        }
    }
}

/// How the weight matrices are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Exact: the verified reference.
    #[default]
    F32,
    /// Half the memory traffic of f32.
    F16,
    /// The base GGUF's own blocks (Q4_1 projections, the Q8_0 embedding), multiplied without
    /// being expanded: a sixth of f32's traffic, the same weight values. On the CPU backend or a
    /// GPU's decoding kernels; needs the model directory's `model.gguf`.
    Q4_1,
}

impl Precision {
    /// The dtype of matrices that are not kept as blocks.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Self::F16 => FloatDType::F16,
            Self::F32 | Self::Q4_1 => FloatDType::F32,
        }
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q4_1" | "q4" => Ok(Self::Q4_1),
            other => Err(format!("unknown dtype '{other}' (f32, f16, q4_1)")),
        }
    }
}

/// Whether quantized blocks can run on `device`, without autodiff (their products are computed
/// outside the autodiff graph): the flex CPU backend (the host's kernels, [`crate::quant`]), or
/// a GPU with the decoding kernels ([`blocks_on_gpu`]).
pub fn runs_blocks(device: &Device) -> bool {
    !device.is_autodiff() && (device.clone().inner() == Device::flex() || blocks_on_gpu(device))
}

/// Whether a model on `device` keeps its blocks in GPU memory for the decoding kernels
/// (`kernels.rs`): a cubecl device (wgpu natively, WebGPU in a browser), without autodiff.
pub fn blocks_on_gpu(device: &Device) -> bool {
    #[cfg(feature = "gpu-kernels")]
    {
        !device.is_autodiff()
            && matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
    }
    #[cfg(not(feature = "gpu-kernels"))]
    {
        let _ = device;
        false
    }
}

/// Initializes the chosen device (native: synchronous). wgpu's runtime can be initialized only
/// once per process, so the result is kept for later calls.
#[cfg(not(target_family = "wasm"))]
pub fn init(choice: DeviceChoice) -> Result<Device, Error> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => native_wgpu::default_adapter(),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Auto => Ok(native_wgpu::hardware_adapter().unwrap_or_else(Device::flex)),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu => Err(Error::Device("this build has no wgpu support".into())),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Auto => Ok(Device::flex()),
    }
}

#[cfg(all(feature = "wgpu", not(target_family = "wasm")))]
mod native_wgpu {
    use std::sync::Mutex;

    use burn::prelude::{Device, DeviceKind};

    use crate::Error;

    /// The wgpu device once initialized (its runtime accepts a single initialization per process).
    static WGPU: Mutex<Option<Device>> = Mutex::new(None);

    fn init_first(kinds: &[DeviceKind]) -> Result<Device, String> {
        let mut slot = WGPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(device) = slot.as_ref() {
            return Ok(device.clone());
        }
        let mut errors = Vec::new();
        for kind in kinds {
            match Device::wgpu_options().device_kind(kind.clone()).init() {
                Ok(device) => {
                    *slot = Some(device.clone());
                    return Ok(device);
                }
                // Something in this process already brought the runtime up for this device
                // (cubecl keeps one service per device): use that one.
                Err(e) if e.to_string().contains("already initialized") => {
                    let device = Device::wgpu(kind.clone());
                    *slot = Some(device.clone());
                    return Ok(device);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(errors.join("; "))
    }

    pub fn default_adapter() -> Result<Device, Error> {
        init_first(&[DeviceKind::DefaultDevice])
            .map_err(|e| Error::Device(format!("no usable wgpu adapter: {e}")))
    }

    pub fn hardware_adapter() -> Option<Device> {
        init_first(&[DeviceKind::DiscreteGpu(0), DeviceKind::IntegratedGpu(0)]).ok()
    }
}

/// Initializes WebGPU asynchronously (the only way in a browser); falls back to nothing: the caller
/// decides to use the CPU and tells the user. The runtime accepts one initialization per thread
/// (a second fails with "a server is still registered"), so a later call gets the same device.
#[cfg(any(feature = "wgpu", feature = "webgpu"))]
pub async fn init_wgpu_async() -> Result<Device, Error> {
    thread_local! {
        static WGPU: std::cell::RefCell<Option<Device>> = const { std::cell::RefCell::new(None) };
    }
    if let Some(device) = WGPU.with(|d| d.borrow().clone()) {
        return Ok(device);
    }
    let device =
        Device::wgpu_options().init_async().await.map_err(|e| Error::Device(e.to_string()))?;
    WGPU.with(|d| *d.borrow_mut() = Some(device.clone()));
    Ok(device)
}
