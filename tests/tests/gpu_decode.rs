//! The decoding kernels (`model/src/kernels.rs`, used on wgpu) against the reference ops on the
//! CPU. A binary of its own: `decode_kernels.rs` counts every kernel its process launches.

use burn::prelude::*;
use emlab_model::cache::CACHE_BLOCK;
use emlab_model::device::DeviceChoice;
use emlab_model::model::{Batch, Llama};
use emlab_tests::{load_base as load, reference_json};

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
    let r = reference_json();
    let base: Vec<u32> = r["prompts"][0]["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    // Two prompts ending a few tokens before the first capacity, 20 tokens apart.
    let long: Vec<u32> = base.iter().cycle().take(CACHE_BLOCK - 4).copied().collect();
    let short: Vec<u32> = base.iter().cycle().skip(7).take(CACHE_BLOCK - 24).copied().collect();
    let prompts = vec![short, long];
    let (cpu, gpu) = (load(DeviceChoice::Cpu), load(DeviceChoice::Wgpu));
    let vocab = cpu.model.vocab_size;
    let argmax = |row: &[f32]| {
        row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as i32).unwrap()
    };
    // Eight steps of logits per device; the tokens fed are the CPU's greedy choices (`feed` empty:
    // chosen here and recorded).
    let run = |m: &Llama, feed: &mut Vec<Vec<i32>>| -> Vec<Vec<f32>> {
        let device = m.device();
        let (prefill, pads) = Batch::left_padded(&prompts, &device);
        let mut cache = m.new_cache().with_padding(pads);
        let mut logits: Vec<f32> =
            m.forward_last(prefill, Some(&mut cache)).into_data().try_to_vec::<f32>().unwrap();
        let mut out = Vec::new();
        for step in 0..8 {
            if feed.len() == step {
                feed.push((0..2).map(|r| argmax(&logits[r * vocab..(r + 1) * vocab])).collect());
            }
            out.push(std::mem::take(&mut logits));
            let ints =
                |v: Vec<i32>| Tensor::<2, Int>::from_data(TensorData::new(v, [2, 1]), &device);
            let positions = prompts.iter().map(|p| (p.len() + step) as i32).collect();
            let batch =
                Batch { tokens: ints(feed[step].clone()), positions: ints(positions), bias: None };
            logits =
                m.forward_last(batch, Some(&mut cache)).into_data().try_to_vec::<f32>().unwrap();
        }
        out.push(logits);
        assert_eq!(cache.capacity(), 2 * CACHE_BLOCK, "the cache grew once");
        out
    };
    let mut feed = Vec::new();
    let on_cpu = run(&cpu.model, &mut feed);
    let on_gpu = run(&gpu.model, &mut feed);
    for (step, (c, g)) in on_cpu.iter().zip(&on_gpu).enumerate() {
        let d = c.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("step {step}: max|Δ| wgpu vs cpu = {d:.2e}");
        assert!(d <= 1e-2, "step {step}: logits differ by {d}");
        for row in 0..2 {
            let span = row * vocab..(row + 1) * vocab;
            assert_eq!(argmax(&c[span.clone()]), argmax(&g[span]), "step {step} row {row}");
        }
    }
}
