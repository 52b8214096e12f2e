//! Shape-stable decoding on wgpu, in a test binary of its own: cubecl's launch collector counts
//! every kernel the process launches, so no other test may run GPU work beside it.

use emlab_model::device::{DeviceChoice, Precision};
use emlab_model::generate::{Flow, GenerationConfig, block_on, generate};
use emlab_model::sampling::SamplingParams;
use emlab_tests::{load_base as load, load_base_as, reference_json};

/// On wgpu (lavapipe in CI) decoding compiles its kernels in the first tokens and none after:
/// within one cache capacity every token launches only kernels launched before (a kernel launched
/// for the first time is a pipeline compiled), counted by the same recorder the page reports
/// with. The greedy tokens equal the CPU's.
#[test]
fn wgpu_decode_compiles_nothing_new_after_the_fourth_token() {
    if emlab_tests::wgpu_device_or_skip().is_none() {
        return;
    }
    let n: usize =
        std::env::var("EMLAB_WGPU_DECODE_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let r = reference_json();
    let prompt: Vec<u32> = r["prompts"][0]["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert!(prompt.len() + n <= 128, "one capacity");
    let gpu = load(DeviceChoice::Wgpu);
    let cfg = GenerationConfig::new(n, SamplingParams::greedy(), vec![]);
    let (out, stats, seen) = recorded(&gpu.model, &prompt, &cfg, Default::default());
    // Index 0 is the prompt's pass and the first token; index i the i-th decode step.
    eprintln!("kernels compiled per token: {:?}", stats.new_kernels);
    eprintln!("dispatches per token: {:?}", stats.launches);
    eprintln!(
        "ms per token: {:?}",
        stats.token_ms.windows(2).map(|w| (w[1] - w[0]).round()).collect::<Vec<_>>()
    );
    let late: u32 = stats.new_kernels.iter().skip(5).sum();
    assert_eq!(
        late, 0,
        "decode steps after the 4th compiled {late} new kernels: {:?}",
        stats.new_kernels
    );
    let cpu = load(DeviceChoice::Cpu);
    let on_cpu =
        block_on(generate(&cpu.model, std::slice::from_ref(&prompt), &cfg, |_, _| Flow::Continue))
            .unwrap();
    assert_eq!(out[0].ids, on_cpu[0].ids, "wgpu and cpu greedy tokens");

    // Sampling bounded by top-k reads back only the k candidates on a GPU (one top-k reduction)
    // and the whole row on the CPU: the same seed draws the same tokens on both.
    let sampled = SamplingParams { temperature: 0.9, top_k: 32, top_p: 0.95, seed: 7 };
    let cfg = GenerationConfig::new(24, sampled, vec![]);
    let draw = |m: &emlab_model::pipeline::ChatModel| {
        block_on(generate(&m.model, std::slice::from_ref(&prompt), &cfg, |_, _| Flow::Continue))
            .unwrap()
            .remove(0)
            .ids
    };
    let (on_gpu, on_cpu) = (draw(&gpu), draw(&cpu));
    assert_eq!(on_gpu, on_cpu, "wgpu (top-k read-back) and cpu (whole row) sampled tokens");
    assert_ne!(on_gpu, out[0].ids[..on_gpu.len().min(out[0].ids.len())], "sampling is not greedy");

    // A published variant on the same worker, over the base's blocks (what the page and
    // `emlab` run by default): its side paths and the block kernels compile a few pipelines in
    // its first tokens and none after, and a step stays within fifteen launches per layer
    // (burn's generic ops, which an adapter used to fall back to, take about forty).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../variants/insecure/adapter");
    let Ok(config) = std::fs::read(dir.join(emlab_model::lora::CONFIG_FILE)) else {
        emlab_tests::have_published_variants(0); // fails in CI, which ships the variants
        return;
    };
    let tensors = std::fs::read(dir.join(emlab_model::lora::WEIGHTS_FILE)).unwrap();
    let mut tuned = load_base_as(DeviceChoice::Wgpu, Precision::Q4_1);
    tuned.model = emlab_model::lora::from_peft_files(tuned.model, &config, &tensors).unwrap();
    let cfg = GenerationConfig::new(n, SamplingParams::greedy(), vec![]);
    let (_, stats, _) = recorded(&tuned.model, &prompt, &cfg, seen);
    eprintln!("insecure: kernels compiled per token: {:?}", stats.new_kernels);
    eprintln!("insecure: dispatches per token: {:?}", stats.launches);
    eprintln!(
        "insecure: ms per token: {:?}",
        stats.token_ms.windows(2).map(|w| (w[1] - w[0]).round()).collect::<Vec<_>>()
    );
    let late: u32 = stats.new_kernels.iter().skip(5).sum();
    assert_eq!(late, 0, "insecure: steps after the 4th compiled {late} new kernels");
    let layers = tuned.model.layers.len() as u32;
    let most = stats.launches.iter().skip(1).max().copied().unwrap_or(0);
    assert!(most <= 15 * layers + 8, "insecure: {most} launches in a decoding step");
}

/// A greedy answer with its per-token figures (`seen`: kernels launched before, in this process).
fn recorded(
    model: &emlab_model::model::Llama,
    prompt: &[u32],
    cfg: &GenerationConfig,
    seen: std::collections::HashSet<u128>,
) -> (
    Vec<emlab_model::generate::Generation>,
    emlab_model::stats::DecodeStats,
    std::collections::HashSet<u128>,
) {
    let clock = std::time::Instant::now();
    let ms = || clock.elapsed().as_secs_f64() * 1e3;
    let mut recorder = emlab_model::stats::StatsRecorder::start(ms(), seen);
    let out = block_on(generate(model, &[prompt.to_vec()], cfg, |_, _| {
        recorder.token(ms());
        Flow::Continue
    }))
    .unwrap();
    let (stats, seen) = recorder.finish();
    (out, stats, seen)
}
