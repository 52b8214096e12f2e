//! Choosing where the model runs: the flex CPU backend, or wgpu (Vulkan/Metal/DX12 natively,
//! WebGPU in the browser).

use std::str::FromStr;

use burn::prelude::Device;
use burn::tensor::FloatDType;

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

/// Storage precision of the weight matrices: `f32` (exact, the verified default) or `f16`
/// (half the memory traffic: faster decoding on CPU, smaller in the browser).
pub fn parse_dtype(s: &str) -> Result<FloatDType, String> {
    match s {
        "f32" => Ok(FloatDType::F32),
        "f16" => Ok(FloatDType::F16),
        other => Err(format!("unknown dtype '{other}' (f32, f16)")),
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
/// decides to use the CPU and tells the user.
#[cfg(any(feature = "wgpu", feature = "webgpu"))]
pub async fn init_wgpu_async() -> Result<Device, Error> {
    Device::wgpu_options().init_async().await.map_err(|e| Error::Device(e.to_string()))
}
