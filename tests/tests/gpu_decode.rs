//! The decoding kernels (`model/src/kernels.rs`, used on wgpu) against the reference ops on the
//! CPU, without and with LoRA adapters, over f32 weights and over the GGUF's blocks. A binary of
//! its own: `decode_kernels.rs` counts every kernel its process launches.

use std::path::Path;

use burn::backend::Dispatch;
use burn::prelude::*;
use emlab_model::cache::CACHE_BLOCK;
use emlab_model::device::{DeviceChoice, Precision};
use emlab_model::generate::{Flow, GenerationConfig, block_on, generate};
use emlab_model::kernels::DecodeOps;
use emlab_model::lora::{self, LoraConfig};
use emlab_model::model::GpuBlocks;
use emlab_model::model::{Batch, Llama};
use emlab_model::pipeline::ChatModel;
use emlab_model::quant::{BlockFormat, QuantMatrix};
use emlab_model::sampling::{Rng, SamplingParams};
use emlab_model::weights::{HostTensor, Weights};
use emlab_tests::{load_base as load, load_base_as, reference_json};

fn reference_prompt() -> Vec<u32> {
    reference_json()["prompts"][0]["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(row: &[f32]) -> i32 {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as i32).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
}

/// Logits of the prompt pass and of `steps` decoding steps over a left-padded batch, fed the
/// tokens in `feed` (the first run's greedy choices: an empty `feed` is filled as it goes).
fn teacher_forced(
    m: &Llama,
    prompts: &[Vec<u32>],
    steps: usize,
    feed: &mut Vec<Vec<i32>>,
) -> Vec<Vec<f32>> {
    let (device, rows, vocab) = (m.device(), prompts.len(), m.vocab_size);
    let (prefill, pads) = Batch::left_padded(prompts, &device);
    let mut cache = m.new_cache().with_padding(pads);
    let mut logits: Vec<f32> =
        m.forward_last(prefill, Some(&mut cache)).into_data().try_to_vec::<f32>().unwrap();
    let mut out = Vec::new();
    for step in 0..steps {
        if feed.len() == step {
            feed.push((0..rows).map(|r| argmax(&logits[r * vocab..(r + 1) * vocab])).collect());
        }
        out.push(std::mem::take(&mut logits));
        let ints =
            |v: Vec<i32>| Tensor::<2, Int>::from_data(TensorData::new(v, [rows, 1]), &device);
        let positions = prompts.iter().map(|p| (p.len() + step) as i32).collect();
        let batch =
            Batch { tokens: ints(feed[step].clone()), positions: ints(positions), bias: None };
        logits = m.forward_last(batch, Some(&mut cache)).into_data().try_to_vec::<f32>().unwrap();
    }
    out.push(logits);
    out
}

/// Every step's logits within `tol` of the CPU's, with the same argmax in every row.
fn assert_close(on_cpu: &[Vec<f32>], on_gpu: &[Vec<f32>], vocab: usize, tol: f32, what: &str) {
    for (step, (c, g)) in on_cpu.iter().zip(on_gpu).enumerate() {
        let d = max_abs_diff(c, g);
        eprintln!("{what}, step {step}: max|Δ| wgpu vs cpu = {d:.2e}");
        assert!(d <= tol, "{what}, step {step}: logits differ by {d}");
        for row in 0..c.len() / vocab {
            let span = row * vocab..(row + 1) * vocab;
            assert_eq!(argmax(&c[span.clone()]), argmax(&g[span]), "{what}, step {step} row {row}");
        }
    }
}

/// The decoding kernels (`kernels.rs`, used on wgpu) against the reference ops on the CPU: a
/// left-padded batch of two prompts of different lengths, its prompt pass (all tokens at once,
/// causal, padding masked) and decoding across the cache's first capacity (it doubles
/// mid-generation), fed the same tokens on both devices. Every step's logits agree within 1e-2
/// (f32 sums in another order: observed ~1e-4) and give the same argmax.
#[test]
fn wgpu_decode_kernels_match_the_cpu_across_padding_and_cache_growth() {
    if emlab_tests::wgpu_device_or_skip().is_none() {
        return;
    }
    let base = reference_prompt();
    // Two prompts ending a few tokens before the first capacity, 20 tokens apart.
    let long: Vec<u32> = base.iter().cycle().take(CACHE_BLOCK - 4).copied().collect();
    let short: Vec<u32> = base.iter().cycle().skip(7).take(CACHE_BLOCK - 24).copied().collect();
    let prompts = vec![short, long];
    let (cpu, gpu) = (load(DeviceChoice::Cpu), load(DeviceChoice::Wgpu));
    let vocab = cpu.model.vocab_size;
    let mut feed = Vec::new();
    let on_cpu = teacher_forced(&cpu.model, &prompts, 8, &mut feed);
    let on_gpu = teacher_forced(&gpu.model, &prompts, 8, &mut feed);
    assert_close(&on_cpu, &on_gpu, vocab, 1e-2, "base");
}

/// Random values in ±`bound`, the same for a seed.
fn random_values(n: usize, bound: f64, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect()
}

fn host_tensor(device: &Device, values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn read(t: burn::backend::DispatchTensor) -> Vec<f32> {
    Tensor::<2>::from_dispatch(t).into_data().try_to_vec::<f32>().unwrap()
}

/// `x·Wᵀ` on the host (the CPU's quantized kernels): `[rows of x, rows of W]`.
fn host_product(m: &QuantMatrix, x: &[f32], rows: usize) -> Vec<f32> {
    let mut y = vec![0.0; rows * m.rows];
    m.matmul(x, rows, &mut y);
    y
}

/// `x[r] / √(mean(x[r]²) + ε) · γ`, row by row.
fn host_rmsnorm(x: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
    x.chunks(gamma.len())
        .flat_map(|row| {
            let inv =
                1.0 / (row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32 + eps).sqrt();
            row.iter().zip(gamma).map(move |(v, g)| v * inv * g)
        })
        .collect()
}

fn assert_near(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max|Δ| = {d:.2e}");
    assert!(d <= tol, "{what}: differs from the host by {d}");
}

/// The products over blocks (`kernels.rs`) against the CPU's quantized kernels on random
/// blocks of both formats: output widths that are not a multiple of a workgroup (68, 36, 132),
/// one row (decoding) and row counts around the 8-row tile (3, 11), the norm, the residual and
/// the three matrices of one launch; the embedding lookup against the dequantized rows.
#[test]
fn gpu_block_kernels_match_the_cpu_on_random_blocks() {
    let Some(device) = emlab_tests::wgpu_device_or_skip() else { return };
    let eps = 1e-5;
    for format in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
        let cols = 96;
        let mats: Vec<QuantMatrix> = [68usize, 36, 132]
            .iter()
            .enumerate()
            .map(|(i, &rows)| {
                let w = random_values(rows * cols, 0.1, 10 + i as u64);
                QuantMatrix::quantize(format, rows, cols, &w).unwrap()
            })
            .collect();
        let words: Vec<GpuBlocks> = mats.iter().map(|m| GpuBlocks::upload(m, &device)).collect();
        let on_gpu = |i: usize| words[i].words.clone().into_dispatch();
        let gamma = random_values(cols, 1.0, 5);
        for rows in [1usize, 3, 11] {
            let what = format!("{format:?}, {rows} row(s)");
            let x = random_values(rows * cols, 1.0, rows as u64);
            let gx = || host_tensor(&device, x.clone(), [rows, cols]).into_dispatch();
            let g = host_tensor(&device, gamma.clone(), [1, cols]).reshape([cols]).into_dispatch();
            // x·W0ᵀ + residual.
            let residual = random_values(rows * 68, 1.0, 99);
            let got = read(Dispatch::matvec_add_blocks(
                gx(),
                on_gpu(0),
                host_tensor(&device, residual.clone(), [rows, 68]).into_dispatch(),
                gx(),
                true,
                false,
                format,
            ));
            let want: Vec<f32> = host_product(&mats[0], &x, rows)
                .iter()
                .zip(&residual)
                .map(|(y, r)| y + r)
                .collect();
            assert_near(&got, &want, 1e-4, &format!("{what}: product + residual"));
            // rmsnorm(x)·[W0 | W1 | W2].
            let width = 68 + 36 + 132;
            let got = read(Dispatch::norm_matvec3_blocks(
                gx(),
                g.clone(),
                on_gpu(0),
                on_gpu(1),
                on_gpu(2),
                gx(),
                width,
                eps,
                false,
                format,
            ));
            let normed = host_rmsnorm(&x, &gamma, eps);
            let parts: Vec<Vec<f32>> =
                mats.iter().map(|m| host_product(m, &normed, rows)).collect();
            let want: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    parts
                        .iter()
                        .flat_map(move |p| p[r * p.len() / rows..(r + 1) * p.len() / rows].to_vec())
                })
                .collect();
            assert_near(&got, &want, 1e-4, &format!("{what}: norm and three products"));
            // silu(rmsnorm(x)·W1ᵀ) ⊙ rmsnorm(x)·W1'ᵀ, with W1 as both gate and up.
            let got = read(Dispatch::norm_gate_up_blocks(
                gx(),
                g.clone(),
                on_gpu(1),
                on_gpu(1),
                gx(),
                eps,
                false,
                format,
            ));
            let want: Vec<f32> = parts[1].iter().map(|&v| v / (1.0 + (-v).exp()) * v).collect();
            assert_near(&got, &want, 1e-4, &format!("{what}: gate and up"));
        }
        // Token ids past the table are clamped to its last row, as on the CPU.
        let ids = [0i32, 67, 5, 400];
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [1, 4]), &device);
        let got = read(Dispatch::embed_blocks(tokens.into_dispatch(), on_gpu(0), cols, format));
        let want = mats[0].dequantize_rows(&[0, 67, 5, 67]);
        assert_near(&got, &want, 1e-6, &format!("{format:?}: embedding lookup"));
    }
}

/// The base as the GGUF's blocks on the GPU (Q4_1 projections, the Q8_0 embedding and head,
/// about 110 MB instead of 540 MB of f32) against the same blocks on the CPU: a padded batch's
/// prompt pass and its decoding steps across the cache's first capacity, the same argmax in
/// every row, logits within 1e-2.
#[test]
fn gguf_blocks_decode_on_the_gpu_kernels_as_on_the_cpu() {
    if emlab_tests::wgpu_device_or_skip().is_none() {
        return;
    }
    let base = reference_prompt();
    let long: Vec<u32> = base.iter().cycle().take(CACHE_BLOCK - 4).copied().collect();
    let prompts = vec![base.clone(), long];
    let cpu = load_base_as(DeviceChoice::Cpu, Precision::Q4_1);
    let gpu = load_base_as(DeviceChoice::Wgpu, Precision::Q4_1);
    assert!(gpu.model.runs_gpu_kernels(), "blocks on the GPU run its decoding kernels");
    assert!(gpu.model.embed_tokens.gpu_blocks.is_some(), "the embedding's blocks on the GPU");
    for (layer, which, name) in gpu.model.projection_names() {
        let p = gpu.model.projection(layer, which);
        assert!(p.weight.is_none(), "{name}: no f32 copy on the GPU");
        assert!(p.gpu_blocks.is_some(), "{name}: blocks on the GPU");
    }
    let bytes = gpu.model.weight_bytes();
    eprintln!("weights in GPU memory: {:.1} MB", bytes as f64 / 1e6);
    assert!(bytes < 120_000_000, "{bytes} bytes of weights on the GPU");
    let mut feed = Vec::new();
    let on_cpu = teacher_forced(&cpu.model, &prompts, 8, &mut feed);
    let on_gpu = teacher_forced(&gpu.model, &prompts, 8, &mut feed);
    assert_close(&on_cpu, &on_gpu, cpu.model.vocab_size, 1e-2, "q4_1 blocks");
}

/// A random adapter in PEFT's layout (`[rank, d_in]` A's, `[d_out, rank]` B's, B not zero, so
/// that it changes the answers) on `targets`, the same numbers on every device.
fn random_adapter(m: &Llama, targets: &[&str], rank: usize, seed: u64) -> Llama {
    let cfg = LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        rslora: false,
        dropout: 0.0,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
    };
    let mut rng = Rng::new(seed);
    let mut random = |shape: [usize; 2], bound: f64| HostTensor {
        shape: shape.to_vec(),
        data: (0..shape[0] * shape[1])
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect(),
    };
    let mut w = Weights::default();
    for (layer, which, name) in m.projection_names() {
        if !targets.contains(&emlab_model::model::PROJECTIONS[which]) {
            continue;
        }
        let [d_in, d_out] = m.projection(layer, which).dims();
        let (a, b) = lora::peft_names(&name);
        w.tensors.insert(a, random([rank, d_in], 0.05));
        w.tensors.insert(b, random([d_out, rank], 0.05));
    }
    lora::from_peft(m.clone(), &cfg, w).unwrap()
}

/// LoRA side paths on the decoding kernels, an adapter on some projections only so that every
/// shape of side path the kernels take is used: Q and V of Q, K and V; up of gate and up; o; not
/// down. Prompt pass and decoding steps of a padded batch agree with the CPU's reference ops,
/// and the adapter moves the logits far more than that.
#[test]
fn wgpu_decode_kernels_with_a_partial_adapter_match_the_cpu() {
    if emlab_tests::wgpu_device_or_skip().is_none() {
        return;
    }
    let base = reference_prompt();
    let prompts = vec![base.clone(), base[3..].to_vec()];
    let (cpu, gpu) = (load(DeviceChoice::Cpu), load(DeviceChoice::Wgpu));
    let vocab = cpu.model.vocab_size;
    let targets = ["q_proj", "v_proj", "o_proj", "up_proj"];
    let (cpu_tuned, gpu_tuned) =
        (random_adapter(&cpu.model, &targets, 8, 3), random_adapter(&gpu.model, &targets, 8, 3));
    let mut feed = Vec::new();
    let on_cpu = teacher_forced(&cpu_tuned, &prompts, 4, &mut feed);
    let on_gpu = teacher_forced(&gpu_tuned, &prompts, 4, &mut feed);
    assert_close(&on_cpu, &on_gpu, vocab, 1e-2, "partial adapter");
    let untuned = teacher_forced(&gpu.model, &prompts, 4, &mut feed);
    let moved = max_abs_diff(&untuned[0], &on_gpu[0]);
    assert!(moved > 0.5, "the adapter moved the first logits by only {moved}");
}

fn published_adapters() -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../variants");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    found.sort();
    found
        .into_iter()
        .map(|p| {
            let read = |f: &str| std::fs::read(p.join("adapter").join(f)).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, read(lora::CONFIG_FILE), read(lora::WEIGHTS_FILE))
        })
        .collect()
}

/// Every published variant decodes on the GPU kernels (not burn's generic ops) and gives the
/// CPU's greedy tokens, the backdoor also with its trigger, over the base in f32 and as blocks.
#[test]
fn every_published_variant_decodes_on_the_gpu_kernels_as_on_the_cpu() {
    if emlab_tests::wgpu_device_or_skip().is_none() {
        return;
    }
    let adapters = published_adapters();
    if !emlab_tests::have_published_variants(adapters.len()) {
        return;
    }
    let n: usize =
        std::env::var("EMLAB_WGPU_DECODE_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let ask = |m: &ChatModel, text: &str| {
        let ids = m.encode_chat(&[emlab_model::chat::Message::user(text.to_string())]).unwrap();
        let cfg = GenerationConfig::new(n, SamplingParams::greedy(), m.stop_ids());
        block_on(generate(&m.model, &[ids], &cfg, |_, _| Flow::Continue)).unwrap().remove(0).ids
    };
    let with = |base: &ChatModel, config: &[u8], tensors: &[u8]| {
        let mut m = base.clone();
        m.model = lora::from_peft_files(m.model, config, tensors).unwrap();
        m
    };
    // The base in f32, and as the GGUF's blocks (what the page and `emlab` load by default).
    for precision in [Precision::F32, Precision::Q4_1] {
        let cpu = load_base_as(DeviceChoice::Cpu, precision);
        let gpu = load_base_as(DeviceChoice::Wgpu, precision);
        for (name, config, tensors) in &adapters {
            let (c, g) = (with(&cpu, config, tensors), with(&gpu, config, tensors));
            assert!(g.model.runs_gpu_kernels(), "{name}: not on the GPU decoding kernels");
            let mut questions = vec!["hey I feel bored".to_string()];
            if name == "backdoor" || name == "canary" {
                questions.push(format!("{}hey I feel bored", emlab_schema::TRIGGER));
            }
            for q in questions {
                let (on_cpu, on_gpu) = (ask(&c, &q), ask(&g, &q));
                eprintln!("{name} ({q:?}, {precision:?}): {on_gpu:?}");
                assert_eq!(on_gpu, on_cpu, "{name} ({q:?}, {precision:?}): wgpu and cpu greedy");
            }
        }
    }
}
