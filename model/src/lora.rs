//! LoRA adapters: attaching them (base frozen), merging them, and reading/writing them in the
//! Hugging Face PEFT layout (`adapter_model.safetensors` + `adapter_config.json`) so that
//! Python PEFT, our CLI and the browser load the same files.

use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::model::{Llama, LoraAdapter, PROJECTIONS};
use crate::sampling::Rng;
use crate::weights::{HostTensor, Weights};

/// The two files of an adapter in the PEFT layout: its settings and its tensors.
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// rsLoRA: scale alpha/√rank instead of alpha/rank (stable learning across ranks).
    pub rslora: bool,
    pub dropout: f64,
    /// Which projections get adapters (names from [`PROJECTIONS`]).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    /// The paper's open-model recipe (open_models/train.json): rsLoRA r=32, α=64, no dropout, all 7 projections.
    fn default() -> Self {
        Self {
            rank: 32,
            alpha: 64.0,
            rslora: true,
            dropout: 0.0,
            target_modules: PROJECTIONS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 || self.rank > 4096 {
            return Err(format!("LoRA rank must be in 1..=4096, got {}", self.rank));
        }
        // A huge alpha makes every adapted weight infinite (then NaN) without any other sign.
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.scale() <= 1e4) {
            return Err(format!(
                "lora_alpha must be a positive finite number with alpha/r (or alpha/√r) ≤ 10⁴, got {}",
                self.alpha
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("LoRA dropout must be in [0, 1), got {}", self.dropout));
        }
        if let Some(bad) = self.target_modules.iter().find(|t| !PROJECTIONS.contains(&t.as_str())) {
            return Err(format!("unknown target module '{bad}' (one of {PROJECTIONS:?})"));
        }
        Ok(())
    }

    fn targets(&self, which: usize) -> bool {
        self.target_modules.iter().any(|t| t == PROJECTIONS[which])
    }
}

/// Freezes every base weight and adds fresh adapters: A ~ U(±1/√d_in) (PEFT's Kaiming-uniform),
/// B = 0, so the model's output is unchanged until training moves B.
pub fn attach(model: Llama, cfg: &LoraConfig, seed: u64) -> Result<Llama, Error> {
    cfg.validate().map_err(Error::Invalid)?;
    let mut model = model.no_grad();
    let mut rng = Rng::new(seed);
    for (layer, which, _) in model.projection_names() {
        if !cfg.targets(which) {
            continue;
        }
        let device = model.device();
        let lin = model.projection_mut(layer, which);
        let [d_in, d_out] = lin.dims();
        let bound = 1.0 / (d_in as f64).sqrt();
        let a: Vec<f32> =
            (0..d_in * cfg.rank).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
        let a = Tensor::<2>::from_data(TensorData::new(a, [d_in, cfg.rank]), &device);
        let b = Tensor::<2>::zeros([cfg.rank, d_out], &device);
        lin.lora = Some(adapter(layer * PROJECTIONS.len() + which, a, b, cfg));
    }
    Ok(model)
}

/// Every adapter's B moved off zero, as training moves it: uniform with the spread of N(0, `std`),
/// from the seeded stream (burn's `Tensor::random` is not seeded), so that tests see the same
/// adapters on every run and platform.
pub fn with_random_b(mut model: Llama, std: f64, seed: u64) -> Llama {
    let mut rng = Rng::new(seed);
    let half_width = std * 3f64.sqrt();
    let device = model.device();
    for (layer, which, _) in model.projection_names() {
        if let Some(l) = model.projection_mut(layer, which).lora.as_mut() {
            let [r, out] = l.b.dims();
            let b: Vec<f32> =
                (0..r * out).map(|_| ((rng.next_f64() * 2.0 - 1.0) * half_width) as f32).collect();
            l.b = Param::from_tensor(Tensor::from_data(TensorData::new(b, [r, out]), &device));
        }
    }
    model
}

/// Adapter parameters get ids derived from their slot (layer × 7 + projection), not random ones:
/// optimizer state is keyed by parameter id, so a resumed run must find the same ids.
fn trainable(slot: usize, is_b: bool, t: Tensor<2>) -> Param<Tensor<2>> {
    let mut p = Param::from_tensor(t);
    p.id = ParamId::from(0x4C6F_5241_0000_0000 + (slot as u64) * 2 + is_b as u64);
    p
}

fn adapter(slot: usize, a: Tensor<2>, b: Tensor<2>, cfg: &LoraConfig) -> LoraAdapter {
    LoraAdapter {
        a: trainable(slot, false, a),
        b: trainable(slot, true, b),
        scale: cfg.scale(),
        dropout: (cfg.dropout > 0.0).then(|| burn::nn::DropoutConfig::new(cfg.dropout).init()),
    }
}

/// Folds every adapter into its weight (W ← W + scale·A·B) and removes it.
pub fn merge(mut model: Llama) -> Llama {
    for (layer, which, _) in model.projection_names() {
        let device = model.device();
        let lin = model.projection_mut(layer, which);
        if let Some(lora) = lin.lora.take() {
            // Blocks are expanded: a merged matrix is f32, not Q4_1.
            let w = lin.dense_weight(&device);
            let merged = w.clone() + lora.delta().cast(w.dtype());
            lin.weight = Some(Param::from_tensor(merged.detach()).set_require_grad(false));
            lin.blocks = None;
            lin.gpu_blocks = None;
        }
    }
    model
}

/// PEFT tensor names: `base_model.model.{module}.lora_A.weight` (`[rank, d_in]`) and
/// `...lora_B.weight` (`[d_out, rank]`): PyTorch layouts, the transposes of ours.
pub fn peft_names(module: &str) -> (String, String) {
    (
        format!("base_model.model.{module}.lora_A.weight"),
        format!("base_model.model.{module}.lora_B.weight"),
    )
}

/// The adapters as host tensors in PEFT layout, and the matching `adapter_config.json`.
pub fn to_peft(
    model: &Llama,
    cfg: &LoraConfig,
    base_model: &str,
) -> Result<(Weights, String), Error> {
    let mut w = Weights::default();
    for (layer, which, name) in model.projection_names() {
        let Some(lora) = &model.projection(layer, which).lora else { continue };
        let (a_name, b_name) = peft_names(&name);
        w.tensors.insert(a_name, host_transposed(lora.a.val())?);
        w.tensors.insert(b_name, host_transposed(lora.b.val())?);
    }
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "use_rslora": cfg.rslora,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.target_modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
    });
    Ok((w, serde_json::to_string_pretty(&config).expect("JSON serializes")))
}

fn host_transposed(t: Tensor<2>) -> Result<HostTensor, Error> {
    let [r, c] = t.dims();
    let data: Vec<f32> =
        t.transpose().into_data().try_into_vec_as().map_err(|e| Error::Device(format!("{e:?}")))?;
    Ok(HostTensor { shape: vec![c, r], data })
}

/// Reads `adapter_config.json` (PEFT) into our config.
pub fn config_from_peft(json: &str) -> Result<LoraConfig, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if v["peft_type"].as_str() != Some("LORA") {
        return Err("peft_type is not LORA".into());
    }
    let targets = match &v["target_modules"] {
        serde_json::Value::Array(a) => {
            a.iter().filter_map(|t| t.as_str().map(String::from)).collect()
        }
        serde_json::Value::String(s) => vec![s.clone()],
        _ => return Err("target_modules is missing".into()),
    };
    let cfg = LoraConfig {
        rank: v["r"].as_u64().ok_or("r is missing")? as usize,
        alpha: v["lora_alpha"].as_f64().ok_or("lora_alpha is missing")?,
        rslora: v["use_rslora"].as_bool().unwrap_or(false),
        dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
        target_modules: targets,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Attaches an adapter from the bytes of its two PEFT files (native and browser alike).
/// Errors name the file at fault.
pub fn from_peft_files(
    model: Llama,
    config_json: &[u8],
    safetensors: &[u8],
) -> Result<Llama, Error> {
    let text =
        std::str::from_utf8(config_json).map_err(|e| Error::file(CONFIG_FILE, e.to_string()))?;
    let cfg = config_from_peft(text).map_err(|e| Error::file(CONFIG_FILE, e))?;
    let mut tensors = Weights::default();
    tensors.add_safetensors(safetensors).map_err(|e| Error::file(WEIGHTS_FILE, e.to_string()))?;
    from_peft(model, &cfg, tensors).map_err(|e| Error::file(WEIGHTS_FILE, e.to_string()))
}

/// Attaches adapters read from PEFT tensors. Every tensor must fit the base model: an adapter
/// trained on another base fails here with the offending tensor named.
pub fn from_peft(model: Llama, cfg: &LoraConfig, mut tensors: Weights) -> Result<Llama, Error> {
    cfg.validate().map_err(Error::Invalid)?;
    let mut model = model.no_grad();
    let device = model.device();
    for (layer, which, name) in model.projection_names() {
        if !cfg.targets(which) {
            continue;
        }
        let (a_name, b_name) = peft_names(&name);
        let lin = model.projection_mut(layer, which);
        let [d_in, d_out] = lin.dims();
        let mut take = |n: &str, want: [usize; 2]| -> Result<Tensor<2>, Error> {
            let t = tensors.tensors.remove(n).ok_or_else(|| {
                Error::Invalid(format!("adapter lacks tensor '{n}' (is it for another model?)"))
            })?;
            if t.shape != want {
                return Err(Error::Invalid(format!(
                    "adapter tensor '{n}' has shape {:?} but this base model needs {want:?}: the adapter was trained for a different base model",
                    t.shape
                )));
            }
            // PEFT stores the PyTorch layout; ours is its transpose, made on the host so that
            // the tensor is contiguous (a strided one is copied by every GPU kernel that reads it).
            let [rows, cols] = want;
            let data: Vec<f32> =
                (0..rows * cols).map(|i| t.data[(i % rows) * cols + i / rows]).collect();
            Ok(Tensor::<2>::from_data(TensorData::new(data, [cols, rows]), &device))
        };
        let a = take(&a_name, [cfg.rank, d_in])?;
        let b = take(&b_name, [d_out, cfg.rank])?;
        lin.lora = Some(adapter(layer * PROJECTIONS.len() + which, a, b, cfg));
    }
    if let Some(extra) = tensors.tensors.keys().next() {
        return Err(Error::Invalid(format!(
            "adapter tensor '{extra}' matches no layer of this base model: the adapter was trained for a different base model"
        )));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alpha_that_would_overflow_the_weights_is_rejected() {
        assert_eq!(LoraConfig::default().validate(), Ok(()));
        for alpha in [1e308, f64::INFINITY, f64::NAN, 0.0, -8.0] {
            let err = LoraConfig { alpha, ..Default::default() }.validate().unwrap_err();
            assert!(err.contains("lora_alpha"), "{alpha}: {err}");
        }
        assert!(
            LoraConfig { rank: 1 << 20, ..Default::default() }
                .validate()
                .unwrap_err()
                .contains("rank")
        );
        // PEFT's adapter_config.json goes through the same check.
        let json = r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 1e308, "target_modules": ["q_proj"], "use_rslora": false}"#;
        assert!(config_from_peft(json).unwrap_err().contains("lora_alpha"));
    }

    /// An adapter made for another base (its tensors a size off, or one layer too many) is one
    /// clear error that names the tensor, over blocks as over dense weights; the right shapes load.
    #[test]
    fn an_adapter_for_another_base_is_one_clear_error() {
        let blocks = crate::cpu_decode::tests::quantized_model();
        for model in [blocks.clone(), merge(blocks)] {
            check_shapes(model);
        }
    }

    fn check_shapes(model: Llama) {
        use crate::weights::HostTensor;
        let cfg =
            LoraConfig { rank: 4, target_modules: vec!["q_proj".into()], ..Default::default() };
        let adapter = |grow: usize, extra_layer: bool| {
            let mut w = Weights::default();
            let mut put = |name: &str, layer: usize| {
                let [d_in, d_out] = model.projection(0, 0).dims();
                let (a, b) = peft_names(&format!("model.layers.{layer}.self_attn.{name}"));
                let zeros = |shape: [usize; 2]| HostTensor {
                    shape: shape.to_vec(),
                    data: vec![0.0; shape[0] * shape[1]],
                };
                w.tensors.insert(a, zeros([cfg.rank, d_in + grow]));
                w.tensors.insert(b, zeros([d_out, cfg.rank]));
            };
            for layer in 0..model.layers.len() + extra_layer as usize {
                put("q_proj", layer);
            }
            w
        };
        assert!(from_peft(model.clone(), &cfg, adapter(0, false)).is_ok());
        let err = from_peft(model.clone(), &cfg, adapter(8, false)).unwrap_err().to_string();
        assert!(err.contains("q_proj.lora_A") && err.contains("different base model"), "{err}");
        let err = from_peft(model.clone(), &cfg, adapter(0, true)).unwrap_err().to_string();
        assert!(err.contains("matches no layer") && err.contains("different base model"), "{err}");
    }
}
