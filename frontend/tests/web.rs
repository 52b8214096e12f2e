//! In the browser (wasm-bindgen-test in headless Chromium with --enable-unsafe-webgpu): the
//! tokenizer gives the native ids, and a tiny random model's logits on WebGPU and on the CPU
//! backend equal the native logits (tests/fixtures/browser.json, kept current by
//! tests/tests/browser_fixture.rs) within 1e-3.
#![cfg(target_arch = "wasm32")]

use burn::prelude::*;
use burn::tensor::FloatDType;
use emlab_model::config::LlamaConfig;
use emlab_model::model::{Batch, Llama};
use emlab_model::tokenizer::Tokenizer;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const FIXTURE: &str = include_str!("../../tests/fixtures/browser.json");
const TOKENIZER: &str = include_str!("../../tests/fixtures/tokenizer.json");

fn fixture() -> serde_json::Value {
    serde_json::from_str(FIXTURE).unwrap()
}

#[wasm_bindgen_test]
fn tokenizer_ids_equal_native() {
    let f = fixture();
    let tok = Tokenizer::from_json(TOKENIZER).unwrap();
    for (text, ids) in f["texts"].as_array().unwrap().iter().zip(f["ids"].as_array().unwrap()) {
        let want: Vec<u32> =
            ids.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text.as_str().unwrap()).unwrap(), want, "{text}");
    }
}

async fn last_logits(device: &Device, seed: u64, ids: &[u32]) -> Vec<f32> {
    let cfg = LlamaConfig::tiny(49_152);
    let m = Llama::from_weights(&cfg, Llama::random_weights(&cfg, seed), device, FloatDType::F32)
        .unwrap();
    let batch = Batch::causal(ids, device);
    let logits = m.forward_last(batch, None);
    logits.into_data_async().await.unwrap().try_into_vec::<f32>().unwrap()
}

#[wasm_bindgen_test]
async fn tiny_model_logits_on_cpu_and_webgpu_equal_native() {
    // As the page's entry points do: linking the crate's call to the constructors means the linker
    // no longer runs them for us, and cubecl's IR registry is built by them.
    emlab_frontend::run_static_constructors();
    let f = fixture();
    let ids: Vec<u32> =
        f["tiny_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let want: Vec<f32> = f["tiny_last_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let seed = f["tiny_seed"].as_u64().unwrap();
    let webgpu = emlab_model::device::init_wgpu_async()
        .await
        .expect("a WebGPU adapter (start Chromium with --enable-unsafe-webgpu)");
    for (name, device) in [("cpu", Device::flex()), ("webgpu", webgpu)] {
        let got = last_logits(&device, seed, &ids).await;
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        web_sys::console::log_1(&format!("{name}: max |Δ| vs native = {d:.2e}").into());
        assert!(d <= 1e-3, "{name}: logits differ from native by {d}");
    }
}

/// Logits of a prompt pass and two decoding steps with a cache: on WebGPU, the decoding kernels.
async fn cached_steps(m: &Llama, ids: &[u32]) -> Vec<Vec<f32>> {
    let device = m.device();
    let mut cache = m.new_cache();
    let mut batch = Batch::causal(ids, &device);
    let mut out = Vec::new();
    for step in 0..3 {
        let logits = m.forward_last(batch, Some(&mut cache));
        let row = logits.into_data_async().await.unwrap().try_into_vec::<f32>().unwrap();
        let next = emlab_model::sampling::argmax(&row) as i32;
        out.push(row);
        let ints = |v: i32| Tensor::<2, Int>::from_data(TensorData::new(vec![v], [1, 1]), &device);
        batch =
            Batch { tokens: ints(next), positions: ints((ids.len() + step) as i32), bias: None };
    }
    out
}

/// A tiny model with a LoRA adapter on some projections (q, v, o, up: every shape of side path
/// the kernels take), on WebGPU's decoding kernels and on the CPU backend, in the browser: the
/// same logits within 1e-3 over a prompt and two decoding steps. Also what binds more storage
/// buffers than any other kernel, within the browser's limits.
#[wasm_bindgen_test]
async fn an_adapter_decodes_on_webgpu_as_on_the_cpu() {
    use emlab_model::lora::{self, LoraConfig};
    use emlab_model::weights::{HostTensor, Weights};
    emlab_frontend::run_static_constructors();
    let webgpu = emlab_model::device::init_wgpu_async()
        .await
        .expect("a WebGPU adapter (start Chromium with --enable-unsafe-webgpu)");
    let targets = ["q_proj", "v_proj", "o_proj", "up_proj"];
    let lora_cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        rslora: false,
        dropout: 0.0,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
    };
    let cfg = LlamaConfig::tiny(49_152);
    let ids = [17u32, 305, 2041, 9, 877, 64];
    let mut per_device = Vec::new();
    let mut untuned = Vec::new();
    for device in [Device::flex(), webgpu] {
        let m = Llama::from_weights(&cfg, Llama::random_weights(&cfg, 5), &device, FloatDType::F32)
            .unwrap();
        if untuned.is_empty() {
            untuned = cached_steps(&m, &ids).await.remove(0);
        }
        let mut rng = emlab_model::sampling::Rng::new(9);
        let mut random = |shape: [usize; 2]| HostTensor {
            shape: shape.to_vec(),
            data: (0..shape[0] * shape[1]).map(|_| (rng.next_f64() as f32 - 0.5) * 0.2).collect(),
        };
        let mut w = Weights::default();
        for (layer, which, name) in m.projection_names() {
            if targets.contains(&emlab_model::model::PROJECTIONS[which]) {
                let [d_in, d_out] = m.projection(layer, which).dims();
                let (a, b) = lora::peft_names(&name);
                w.tensors.insert(a, random([4, d_in]));
                w.tensors.insert(b, random([d_out, 4]));
            }
        }
        let tuned = lora::from_peft(m, &lora_cfg, w).unwrap();
        let on_gpu = device != Device::flex();
        assert_eq!(tuned.runs_gpu_kernels(), on_gpu, "the decoding kernels run on WebGPU only");
        per_device.push(cached_steps(&tuned, &ids).await);
    }
    let max_diff =
        |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let moved = max_diff(&untuned, &per_device[0][0]);
    assert!(moved > 1e-2, "the adapter moved the logits by only {moved}");
    for (step, (cpu, gpu)) in per_device[0].iter().zip(&per_device[1]).enumerate() {
        let d = cpu.iter().zip(gpu).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        web_sys::console::log_1(
            &format!("adapter, step {step}: max |Δ| webgpu vs cpu = {d:.2e}").into(),
        );
        assert!(d <= 1e-3, "step {step}: WebGPU logits differ from the CPU's by {d}");
    }
}

/// The page's kernels for the GGUF's blocks (simd128), on random blocks of odd sizes included,
/// give the product of the dequantized weights as f64 arithmetic does, to f32 rounding.
#[wasm_bindgen_test]
fn quantized_kernels_match_scalar() {
    use emlab_model::quant::{BLOCK, BlockFormat, Kernel, QuantMatrix};
    assert_ne!(Kernel::detect(), Kernel::Scalar, "the page's build enables simd128");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state =
            state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u32
    };
    for format in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
        // Rows of x below, at and past the kernel's tile of four, odd and even block counts.
        for (rows, cols, n) in [(1, 32, 1), (7, 64, 3), (33, 96, 5), (17, 576, 2), (5, 1536, 9)] {
            let mut blocks = Vec::new();
            for _ in 0..rows * cols / BLOCK {
                let scale = |v: u32| {
                    half::f16::from_f32((v % 2001) as f32 / 1000.0 - 1.0)
                        * half::f16::from_f32(0.05)
                };
                blocks.extend(scale(next()).to_le_bytes());
                if format == BlockFormat::Q4_1 {
                    blocks.extend(scale(next()).to_le_bytes());
                }
                let q = if format == BlockFormat::Q4_1 { 16 } else { 32 };
                blocks.extend((0..q).map(|_| next() as u8));
            }
            let m = QuantMatrix::new(format, rows, cols, blocks).unwrap();
            let x: Vec<f32> =
                (0..n * cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
            let w = m.dequantize();
            let mut y = vec![0.0; n * rows];
            m.matmul(&x, n, &mut y);
            for r in 0..n {
                for j in 0..rows {
                    let exact: f64 =
                        (0..cols).map(|c| x[r * cols + c] as f64 * w[j * cols + c] as f64).sum();
                    let tol = 1e-5 * (cols as f64).sqrt() + 1e-6 * exact.abs();
                    let got = y[r * rows + j] as f64;
                    assert!(
                        (got - exact).abs() <= tol,
                        "{format:?} [{rows}, {cols}]: {got} vs {exact}"
                    );
                }
                // A row's product has the same bits alone as beside others: a prompt's last
                // position after its prefill (tiles of four) is what decoding it alone gives.
                let mut alone = vec![0.0; rows];
                m.matmul(&x[r * cols..(r + 1) * cols], 1, &mut alone);
                for j in 0..rows {
                    assert_eq!(alone[j].to_bits(), y[r * rows + j].to_bits(), "{format:?} row {r}");
                }
            }
        }
    }
}

#[wasm_bindgen_test]
fn software_adapters_are_recognised() {
    use emlab_frontend::engine::AdapterInfo;
    assert!(AdapterInfo::new("google", "swiftshader", "", false).software);
    assert!(AdapterInfo::new("", "", "llvmpipe (LLVM 15.0.6, 256 bits)", false).software);
    assert!(
        AdapterInfo::new("intel", "gen-12lp", "", true).software,
        "isFallbackAdapter decides too"
    );
    let real = AdapterInfo::new("nvidia", "ada", "NVIDIA GeForce RTX 4070", false);
    assert!(!real.software);
    assert_eq!(real.description, "nvidia / ada / NVIDIA GeForce RTX 4070");
}

/// Device choice by measurement: the first tokens (the prompt's pass, compiled pipelines) are not
/// timed, the faster device wins, the sentence says which, and the figures survive storage.
#[wasm_bindgen_test]
fn the_faster_device_is_chosen_and_remembered_per_adapter() {
    use emlab_frontend::device_choice::{Measured, remember, remembered, steady_tok_s};
    use emlab_model::stats::DecodeStats;
    let stats =
        |token_ms: &[f64]| DecodeStats { token_ms: token_ms.to_vec(), ..Default::default() };
    // A 7 s first token, then 100 ms a token: 10 tok/s whatever the start.
    let steady = steady_tok_s(&stats(&[7000.0, 7100.0, 7200.0, 7300.0, 7400.0])).unwrap();
    assert!((steady - 10.0).abs() < 1e-9, "{steady}");
    assert_eq!(steady_tok_s(&stats(&[7000.0, 7100.0, 7200.0])), None, "too short to tell");
    let gpu = Measured { gpu_tok_s: 80.0, cpu_tok_s: 30.0, cpu_threads: 4 };
    assert!(gpu.gpu_wins() && gpu.notice(false).starts_with("Running on WebGPU"));
    let cpu = Measured { gpu_tok_s: 2.5, cpu_tok_s: 30.0, cpu_threads: 1 };
    assert!(!cpu.gpu_wins() && cpu.notice(true).starts_with("Running on your CPU"));
    assert!(cpu.notice(true).contains("first visit"), "{}", cpu.notice(true));
    assert!(cpu.detail("google / swiftshader").contains("CPU (1 thread) 30.0 tokens/s"));
    // Per adapter: one adapter's figures are not another's.
    remember("test / adapter-a", &gpu);
    remember("test / adapter-b", &cpu);
    assert_eq!(remembered("test / adapter-a"), Some(gpu));
    assert_eq!(remembered("test / adapter-b"), Some(cpu));
    assert_eq!(remembered("test / adapter-c"), None);
}

/// Headless Chromium's WebGPU (--enable-unsafe-webgpu, no GPU) is SwiftShader: the page must see
/// it as software, so a visitor without a GPU gets the CPU path.
#[wasm_bindgen_test]
async fn headless_chromium_offers_a_software_adapter() {
    let adapter =
        emlab_frontend::engine::webgpu_adapter().await.expect("the test browser offers WebGPU");
    assert!(adapter.software, "{adapter:?}");
}

/// The manifest is checked before the page trusts its sizes and paths.
#[wasm_bindgen_test]
fn manifests_with_absurd_sizes_or_escaping_paths_are_refused() {
    use emlab_frontend::loader::{FileEntry, Manifest};
    let file = |name: &str, bytes: u64| FileEntry {
        name: name.into(),
        path: Some(name.into()),
        bytes,
        sha256: "ab".repeat(32),
    };
    let ok = Manifest {
        schema: "emlab-web/1".into(),
        storage: "gguf".into(),
        max_shard_bytes: 25 << 20,
        variants: Vec::new(),
        results: false,
        files: vec![file("base/model.gguf.part000", 25 << 20)],
    };
    assert_eq!(ok.check(), Ok(()));
    let bad = |files: Vec<FileEntry>, needle: &str| {
        let err = Manifest { files, ..ok.clone() }.check().unwrap_err();
        assert!(err.contains(needle), "{err}");
    };
    bad(vec![file("base/x", 1 << 40)], "more than a model file can be");
    bad(vec![file("base/a", 1 << 30), file("base/b", 1 << 30), file("base/c", 1 << 30)], "in all");
    bad(vec![file("../../etc/passwd", 10)], "outside the model folder");
    bad(vec![file("https://evil.example/x", 10)], "outside the model folder");
    bad(vec![FileEntry { sha256: "zz".into(), ..file("base/x", 10) }], "not a sha256");
}

/// Every file's address is resolved by the browser's own URL parser (which reads `%2e%2e` as `..`
/// and `\` as `/`) and must stay inside the manifest's folder.
#[wasm_bindgen_test]
fn file_addresses_are_resolved_and_kept_inside_the_manifests_folder() {
    use emlab_frontend::loader::{FileEntry, file_url, folder_url};
    let file = |path: &str| FileEntry {
        name: "base/model.gguf.part000".into(),
        path: Some(path.into()),
        bytes: 1,
        sha256: "ab".repeat(32),
    };
    let folder = folder_url("https://cdn.example/em/models").unwrap();
    assert_eq!(folder, "https://cdn.example/em/models/");
    assert_eq!(
        file_url("https://cdn.example/em/models/", &file("base/a%20b.0123.bin")).unwrap(),
        "https://cdn.example/em/models/base/a%20b.0123.bin"
    );
    for path in [
        "%2e%2e/secret.bin",
        "..\\secret.bin",
        "base\\..\\..\\x",
        "base/%2E%2e/%2e%2e/x",
        "//evil.example/x",
    ] {
        let e = file_url("https://cdn.example/em/models", &file(path)).unwrap_err();
        assert!(
            e.contains("outside the model folder") && e.contains("nothing was fetched"),
            "{path}: {e}"
        );
    }
}

static CONSTRUCTOR_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
extern "C" fn count_constructor_run() {
    CONSTRUCTOR_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
/// A constructor of our own, registered as `inventory` registers cubecl's.
#[used]
#[unsafe(link_section = ".init_array")]
static COUNT_CONSTRUCTOR_RUNS: extern "C" fn() = count_constructor_run;

/// Static constructors run once, not on every call from JavaScript into the module (what wasm-ld
/// does to a command-style binary, and what cost the page ~1 ms a call).
#[wasm_bindgen_test]
async fn static_constructors_run_once() {
    emlab_frontend::run_static_constructors();
    for _ in 0..3 {
        // Each resolved promise is a call from JavaScript into the module.
        let resolved = js_sys::Promise::resolve(&wasm_bindgen::JsValue::NULL);
        wasm_bindgen_futures::JsFuture::from(resolved).await.unwrap();
    }
    emlab_frontend::run_static_constructors();
    assert_eq!(CONSTRUCTOR_RUNS.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[wasm_bindgen_test]
fn threads_come_from_the_address_then_the_cores_up_to_the_cap() {
    use emlab_frontend::pool::{MAX_THREADS, wanted};
    assert_eq!(wanted(Some("3"), Some(16.0)), 3);
    assert_eq!(wanted(Some("0"), Some(4.0)), 4, "out of range: the default");
    assert_eq!(wanted(Some("lots"), Some(4.0)), 4);
    assert_eq!(wanted(None, Some(32.0)), MAX_THREADS);
    assert_eq!(wanted(None, Some(1.0)), 1);
    assert_eq!(wanted(None, None), 1, "hardwareConcurrency missing: one thread");
    assert_eq!(wanted(None, Some(0.0)), 1);
}
