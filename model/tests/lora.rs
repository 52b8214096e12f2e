//! LoRA adapters on a tiny random Llama (the model crate alone): no-op at init, merge equals
//! side path, PEFT round trip, and a clear error for an adapter trained on another base.

use burn::prelude::*;
use burn::tensor::FloatDType;
use emlab_model::config::LlamaConfig;
use emlab_model::lora::{self, LoraConfig};
use emlab_model::model::{Batch, Llama};

fn tiny(cfg: &LlamaConfig, seed: u64) -> Llama {
    Llama::from_weights(cfg, Llama::random_weights(cfg, seed), &Device::flex(), FloatDType::F32)
        .unwrap()
}

fn logits(m: &Llama) -> Vec<f32> {
    let dev = m.device();
    let batch = Batch::causal(&[5, 17, 3, 99, 42, 7, 250, 11], &dev);
    m.forward(batch, None).into_data().try_into_vec_as().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn fresh_adapters_leave_logits_unchanged() {
    let cfg = LlamaConfig::tiny(300);
    let base = logits(&tiny(&cfg, 1));
    let adapted =
        lora::attach(tiny(&cfg, 1), &LoraConfig { rank: 4, ..Default::default() }, 9).unwrap();
    assert_eq!(logits(&adapted), base);
}

#[test]
fn merged_weights_equal_the_side_path() {
    let cfg = LlamaConfig::tiny(300);
    let base = logits(&tiny(&cfg, 1));
    let m = lora::with_random_b(
        lora::attach(tiny(&cfg, 1), &LoraConfig { rank: 4, ..Default::default() }, 9).unwrap(),
        0.05,
        11,
    );
    let unmerged = logits(&m);
    assert!(max_abs_diff(&unmerged, &base) > 1e-3, "the perturbed adapter must change the output");
    let merged = logits(&lora::merge(m));
    let d = max_abs_diff(&merged, &unmerged);
    assert!(d <= 1e-4, "merged vs unmerged: {d}");
}

#[test]
fn peft_round_trip_and_wrong_base() {
    let cfg = LlamaConfig::tiny(300);
    let lcfg = LoraConfig {
        rank: 4,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        ..Default::default()
    };
    let m = lora::with_random_b(lora::attach(tiny(&cfg, 1), &lcfg, 3).unwrap(), 0.05, 11);
    let want = logits(&m);
    let (tensors, config_json) = lora::to_peft(&m, &lcfg, "SmolLM2-135M-Instruct").unwrap();
    assert_eq!(tensors.tensors.len(), 2 * 3 * cfg.num_hidden_layers);
    assert!(
        tensors.tensors.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
    );
    let bytes = tensors.to_safetensors().unwrap();

    let read_cfg = lora::config_from_peft(&config_json).unwrap();
    assert_eq!(read_cfg, lcfg);
    let mut read = emlab_model::weights::Weights::default();
    read.add_safetensors(&bytes).unwrap();
    let loaded = lora::from_peft(tiny(&cfg, 1), &read_cfg, read.clone()).unwrap();
    assert!(max_abs_diff(&logits(&loaded), &want) <= 1e-6);

    // The same adapter on a base of another width: one clear error naming a tensor.
    let other = LlamaConfig { hidden_size: 32, intermediate_size: 48, ..cfg.clone() };
    let Err(err) = lora::from_peft(tiny(&other, 1), &read_cfg, read.clone()) else {
        panic!("an adapter for another width must fail")
    };
    let err = err.to_string();
    assert!(err.contains("different base model") && err.contains("lora_A"), "{err}");
    // Deeper base: tensors for its extra layers are missing.
    let deeper = LlamaConfig { num_hidden_layers: 3, ..cfg };
    let Err(err) = lora::from_peft(tiny(&deeper, 1), &read_cfg, read) else {
        panic!("an adapter for a shallower base must fail")
    };
    let err = err.to_string();
    assert!(err.contains("lacks tensor"), "{err}");
}

/// `projection` and `projection_mut` name the same seven matrices and reject the same indices.
#[test]
fn projection_and_projection_mut_agree() {
    let cfg = LlamaConfig::tiny(300);
    let mut m = tiny(&cfg, 3);
    for (layer, which, name) in m.projection_names() {
        let shape = m.projection(layer, which).dims();
        assert_eq!(m.projection_mut(layer, which).dims(), shape, "{name}");
    }
    let n = emlab_model::model::PROJECTIONS.len();
    let shared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.projection(0, n);
    }));
    let exclusive = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.projection_mut(0, n);
    }));
    assert!(shared.is_err() && exclusive.is_err(), "index {n} is not a projection");
}
