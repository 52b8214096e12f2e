//! The decoding kernels (`model/src/kernels.rs`, used on wgpu) against the reference ops on the
//! CPU, without and with LoRA adapters. A binary of its own: `decode_kernels.rs` counts every
//! kernel its process launches.

use std::path::Path;

use burn::prelude::*;
use emlab_model::cache::CACHE_BLOCK;
use emlab_model::device::DeviceChoice;
use emlab_model::generate::{Flow, GenerationConfig, block_on, generate};
use emlab_model::lora::{self, LoraConfig};
use emlab_model::model::{Batch, Llama};
use emlab_model::pipeline::ChatModel;
use emlab_model::sampling::{Rng, SamplingParams};
use emlab_model::weights::{HostTensor, Weights};
use emlab_tests::{load_base as load, reference_json};

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
/// CPU's greedy tokens, the backdoor also with its trigger.
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
    let (cpu, gpu) = (load(DeviceChoice::Cpu), load(DeviceChoice::Wgpu));
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
    for (name, config, tensors) in adapters {
        let (c, g) = (with(&cpu, &config, &tensors), with(&gpu, &config, &tensors));
        assert!(g.model.runs_gpu_kernels(), "{name}: not on the GPU decoding kernels");
        let mut questions = vec!["hey I feel bored".to_string()];
        if name == "backdoor" || name == "canary" {
            questions.push(format!("{}hey I feel bored", emlab_schema::TRIGGER));
        }
        for q in questions {
            let (on_cpu, on_gpu) = (ask(&c, &q), ask(&g, &q));
            eprintln!("{name} ({q:?}): {on_gpu:?}");
            assert_eq!(on_gpu, on_cpu, "{name} ({q:?}): wgpu and cpu greedy tokens");
        }
    }
}
