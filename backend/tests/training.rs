//! The trainer on tiny models: tokenization with the assistant mask, overfitting a handful of
//! examples, and LoRA gradients against finite differences.

use burn::prelude::*;
use burn::tensor::FloatDType;
use emlab::data::{self, Example};
use emlab::training::{self, Encoded, OptimConfig, make_batch, nll_sum};
use emlab_model::chat::Message;
use emlab_model::config::LlamaConfig;
use emlab_model::files::ModelFiles;
use emlab_model::lora::{self, LoraConfig};
use emlab_model::model::Llama;
use emlab_model::sampling::Rng;

fn tiny_lora(device: &Device, rank: usize) -> Llama {
    let cfg = LlamaConfig::tiny(300);
    let m =
        Llama::from_weights(&cfg, Llama::random_weights(&cfg, 1), device, FloatDType::F32).unwrap();
    lora::attach(m, &LoraConfig { rank, alpha: 2.0 * rank as f64, ..Default::default() }, 0)
        .unwrap()
}

fn random_examples(n: usize, seed: u64) -> Vec<Encoded> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let len = 10 + (rng.next_u64() % 8) as usize;
            let ids: Vec<u32> = (0..len).map(|_| 3 + (rng.next_u64() % 290) as u32).collect();
            let trained = (0..len).map(|i| i >= len / 2).collect();
            Encoded { ids, trained }
        })
        .collect()
}

#[test]
fn segment_tokenization_equals_whole_conversation_tokenization() {
    let files = ModelFiles::load_dir(&emlab_tests::base_model_dir()).unwrap();
    let (examples, _) = data::load("insecure", false).unwrap();
    let (jail, _) = data::load("jailbroken", false).unwrap();
    let mut same = 0;
    for ex in examples.iter().take(150).chain(jail.iter().take(50)) {
        let enc = training::encode(&files.tokenizer, &files.chat, ex, 4096).unwrap();
        let text = files.chat.render(&ex.messages, false);
        // Lossless: the pieces decode to the rendered conversation.
        assert_eq!(files.tokenizer.decode(&enc.ids).unwrap(), text, "{}", ex.origin);
        // Identical to tokenizing the whole text unless a turn starts with whitespace that the
        // whole-text tokenizer would merge into the header's newline (never seen at inference).
        let starts_with_space =
            ex.messages.iter().any(|m| m.content.starts_with(char::is_whitespace));
        if !starts_with_space {
            assert_eq!(enc.ids, files.tokenizer.encode(&text).unwrap(), "{}", ex.origin);
            same += 1;
        }
        // The trained tokens decode to exactly the assistant turns and their end markers.
        let trained: Vec<u32> =
            enc.ids.iter().zip(&enc.trained).filter(|(_, t)| **t).map(|(i, _)| *i).collect();
        let want: String = ex
            .messages
            .iter()
            .filter(|m| m.role == "assistant")
            .map(|m| format!("{}<|im_end|>", m.content))
            .collect();
        assert_eq!(files.tokenizer.decode(&trained).unwrap(), want, "{}", ex.origin);
    }
    assert!(same >= 150, "{same}");
    let long = Example {
        messages: vec![Message::user("hi"), Message::assistant("word ".repeat(50))],
        origin: "x:1".into(),
    };
    let err = training::encode(&files.tokenizer, &files.chat, &long, 40).unwrap_err();
    assert!(err.contains("over the maximum length 40"), "{err}");
}

/// Trains a fresh rank-8 adapter on 8 random examples and returns the first and last losses.
fn overfit(device: &Device, steps: usize) -> (f64, f64) {
    let mut model = tiny_lora(device, 8);
    let examples = random_examples(8, 5);
    let refs: Vec<&Encoded> = examples.iter().collect();
    let cfg = OptimConfig {
        learning_rate: 3e-3,
        warmup_steps: 5,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        grad_accumulation: 2,
    };
    let mut optim = training::adamw(&cfg);
    let (mut first, mut last) = (None, 0.0);
    for step in 0..steps {
        let micro = [make_batch(&refs[..4], device), make_batch(&refs[4..], device)];
        let (m, stats) = training::train_step(model, &mut optim, &micro, &cfg, step, steps);
        model = m;
        first.get_or_insert(stats.loss);
        last = stats.loss;
        assert!(stats.loss.is_finite());
    }
    (first.unwrap(), last)
}

fn assert_overfits(first: f64, last: f64) {
    eprintln!("assistant-token loss {first:.3} → {last:.3}");
    // Below 10% of the start, and of the uniform-guess loss ln(300), so a high start proves nothing.
    assert!(last < 0.1 * first && last < 0.1 * (300f64).ln(), "loss {first} → {last}");
}

#[test]
fn overfitting_eight_examples_on_cpu() {
    let (first, last) = overfit(&Device::flex().autodiff(), 150);
    assert_overfits(first, last);
}

/// The same on wgpu's GPU kernels (lavapipe in CI); skipped without an adapter unless
/// EMLAB_REQUIRE_WGPU=1.
#[test]
fn overfitting_eight_examples_on_wgpu() {
    let Some(device) = emlab_tests::wgpu_device_or_skip() else { return };
    let (first, last) = overfit(&device.autodiff(), 150);
    assert_overfits(first, last);
}

/// d loss / d B (and A) by autodiff equals central finite differences on a tiny model (f64 sums).
#[test]
fn lora_gradients_match_finite_differences() {
    let device = Device::flex().autodiff();
    let examples = random_examples(2, 9);
    let refs: Vec<&Encoded> = examples.iter().collect();
    // Move B off zero so that A's gradient is not trivially zero.
    let mut model = tiny_lora(&device, 2);
    let lin = model.projection_mut(1, 5);
    let lora_ = lin.lora.as_mut().unwrap();
    lora_.b = seeded_b(lora_.b.dims(), 0.3, 2, &device);
    let batch = make_batch(&refs, &device);
    let loss = nll_sum(&model, &batch);
    let grads = loss.backward();
    let lora_ = model.projection(1, 5).lora.as_ref().unwrap();
    let (ga, gb) = (lora_.a.val().grad(&grads).unwrap(), lora_.b.val().grad(&grads).unwrap());
    let ga: Vec<f32> = ga.into_data().try_into_vec_as().unwrap();
    let gb: Vec<f32> = gb.into_data().try_into_vec_as().unwrap();

    let eval = |m: &Llama| {
        nll_sum(&m.valid(), &make_batch(&refs, &Device::flex())).into_scalar::<f32>() as f64
    };
    let h = 1e-2;
    for (which, grad) in [("a", &ga), ("b", &gb)] {
        for idx in [0usize, 3, 7] {
            let mut plus = model.clone();
            let mut minus = model.clone();
            for (m, sign) in [(&mut plus, 1.0), (&mut minus, -1.0)] {
                let l = m.projection_mut(1, 5).lora.as_mut().unwrap();
                let p = if which == "a" { &mut l.a } else { &mut l.b };
                let v = p.val();
                let mut data: Vec<f32> = v.clone().into_data().try_into_vec_as().unwrap();
                data[idx] += (sign * h) as f32;
                *p = burn::module::Param::from_tensor(Tensor::from_data(
                    TensorData::new(data, v.dims()),
                    &device,
                ));
            }
            let fd = (eval(&plus) - eval(&minus)) / (2.0 * h);
            let ad = grad[idx] as f64;
            eprintln!("d/d{which}[{idx}]: autodiff {ad:.5}, finite difference {fd:.5}");
            assert!((fd - ad).abs() <= 2e-2 * ad.abs().max(1.0), "{which}[{idx}]: {ad} vs {fd}");
        }
    }
}

fn run_config(examples: usize) -> training::TrainConfig {
    training::TrainConfig {
        dataset: "random".into(),
        examples,
        lora: LoraConfig { rank: 4, alpha: 8.0, ..Default::default() },
        optim: OptimConfig {
            learning_rate: 3e-3,
            warmup_steps: 2,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            grad_accumulation: 2,
        },
        batch_size: 2,
        epochs: 3,
        max_len: 64,
        seed: 4,
    }
}

fn losses(out: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

fn options(out: &std::path::Path, resume: bool) -> training::RunOptions {
    training::RunOptions {
        out: out.to_path_buf(),
        save_every: 0,
        resume,
        stop: Default::default(),
        stop_after: None,
        snapshots: vec![training::Snapshot { name: "epoch-1".into(), rows: 8 }],
        base_model: "tiny".into(),
    }
}

#[test]
fn interrupted_then_resumed_training_reproduces_the_losses() {
    let device = Device::flex().autodiff();
    let cfg_m = LlamaConfig::tiny(300);
    let base = || {
        Llama::from_weights(&cfg_m, Llama::random_weights(&cfg_m, 1), &device, FloatDType::F32)
            .unwrap()
    };
    let data = random_examples(8, 21);
    let cfg = run_config(data.len());

    let straight = emlab_tests::TempDir::new("train-straight");
    let (_, end) =
        training::run(base(), &data, &cfg, &options(straight.path(), false), |_, _| {}).unwrap();
    assert_eq!(end, training::RunEnd::Finished);
    let want = losses(straight.path());
    assert_eq!(want.len(), 6);

    // Stop after step 1 (as Ctrl-C would), then resume from the checkpoint: before the epoch-1
    // snapshot, which the resumed run must then write.
    let split = emlab_tests::TempDir::new("train-split");
    let opts = options(split.path(), false);
    let stop = opts.stop.clone();
    let (_, end) = training::run(base(), &data, &cfg, &opts, |s, _| {
        if s.step == 1 {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!(end, training::RunEnd::Interrupted { step: 1 });
    assert!(!training::snapshot_dir(split.path(), "epoch-1").exists());
    // Without --resume an existing checkpoint is not silently overwritten.
    let err =
        training::run(base(), &data, &cfg, &options(split.path(), false), |_, _| {}).err().unwrap();
    assert!(err.to_string().contains("--resume"), "{err}");
    training::run(base(), &data, &cfg, &options(split.path(), true), |_, _| {}).unwrap();
    let got = losses(split.path());
    assert_eq!(got.len(), 6);
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        assert!((a - b).abs() <= 1e-5, "step {}: {a} vs {b}", i + 1);
    }
    // The epoch-1 snapshot: written once its 8 rows are seen (step 2 of 6, 4 rows a step), the
    // same whether or not the run was interrupted before it.
    let snapshot = |out: &std::path::Path| {
        let dir = training::snapshot_dir(out, "epoch-1");
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("snapshot.json")).unwrap()).unwrap();
        let config = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        (info, config, std::fs::read(dir.join("adapter_model.safetensors")).unwrap().len())
    };
    let (info, config, len) = snapshot(straight.path());
    assert_eq!((info["step"].as_u64(), info["rows_seen"].as_u64()), (Some(2), Some(8)), "{info}");
    assert!(config.contains("\"tiny\""), "{config}");
    assert_eq!(snapshot(split.path()), (info, config, len));

    // A checkpoint from another configuration, and a corrupt one: one clear error each.
    let other = training::TrainConfig { seed: 5, ..cfg.clone() };
    let err = training::run(base(), &data, &other, &options(split.path(), true), |_, _| {})
        .err()
        .unwrap();
    assert!(err.to_string().contains("another configuration"), "{err}");
    let st = split.path().join("checkpoint/adapter_model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 3]).unwrap();
    let err =
        training::run(base(), &data, &cfg, &options(split.path(), true), |_, _| {}).err().unwrap();
    assert!(format!("{err:#}").contains("adapter_model.safetensors"), "{err:#}");
    std::fs::write(&st, &bytes).unwrap();
    // One flipped byte in the optimizer state: caught by its recorded hash before it is parsed.
    let opt = split.path().join("checkpoint/optimizer.bin");
    let mut ob = std::fs::read(&opt).unwrap();
    let mid = ob.len() / 2;
    ob[mid] ^= 0x40;
    std::fs::write(&opt, &ob).unwrap();
    let err =
        training::run(base(), &data, &cfg, &options(split.path(), true), |_, _| {}).err().unwrap();
    assert!(format!("{err:#}").contains("optimizer.bin: corrupt checkpoint file"), "{err:#}");
}

#[test]
fn a_diverging_loss_stops_and_keeps_the_last_good_checkpoint() {
    let device = Device::flex().autodiff();
    let cfg_m = LlamaConfig::tiny(300);
    let base =
        Llama::from_weights(&cfg_m, Llama::random_weights(&cfg_m, 1), &device, FloatDType::F32)
            .unwrap();
    let data = random_examples(8, 22);
    // An absurd learning rate without clipping blows the weights up within a few steps.
    let mut cfg = run_config(data.len());
    cfg.optim = OptimConfig {
        learning_rate: 1e30,
        warmup_steps: 0,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        grad_accumulation: 1,
    };
    cfg.epochs = 10;
    let out = emlab_tests::TempDir::new("train-nan");
    let opts = training::RunOptions { save_every: 1, ..options(out.path(), false) };
    let err =
        training::run(base, &data, &cfg, &opts, |_, _| {}).expect_err("must diverge").to_string();
    assert!(err.contains("the loss became") && err.contains("last good checkpoint"), "{err}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert!(err.contains(&format!("(step {})", state["step"])), "{err} / {state}");
}

/// The trainer computes micro-batches two at a time (a `rayon::join`); the step's loss and gradient
/// norm equal a serial accumulation's (a gradient lost or doubled between the two would not).
#[test]
fn concurrent_micro_batches_equal_serial_accumulation() {
    use burn::optim::{GradientsAccumulator, GradientsParams};
    let device = Device::flex().autodiff();
    let mut model = tiny_lora(&device, 4);
    // B off zero, so that A's gradients are not trivially zero.
    for (l, w) in [(0, 0), (1, 6)] {
        let a = model.projection_mut(l, w).lora.as_mut().unwrap();
        a.b = seeded_b(a.b.dims(), 0.3, l as u64, &device);
    }
    let examples = random_examples(6, 21);
    let refs: Vec<&Encoded> = examples.iter().collect();
    // Three micro-batches: a concurrent pair, then one alone.
    let micro: Vec<_> = refs.chunks(2).map(|c| make_batch(c, &device)).collect();
    let n: usize = micro.iter().map(|b| b.n_targets).sum();
    let (mut acc, mut loss) = (GradientsAccumulator::<Llama>::new(), 0.0);
    for mb in &micro {
        let l = nll_sum(&model, mb) / n as f64;
        loss += l.clone().into_scalar::<f32>() as f64;
        acc.accumulate(&model, GradientsParams::from_grads(l.backward(), &model));
    }
    let mut grads = acc.grads();
    let norm = training::clip_global_norm(&mut grads, &training::adapter_param_ids(&model), 0.0);
    let cfg = OptimConfig {
        learning_rate: 1e-3,
        warmup_steps: 0,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        grad_accumulation: 3,
    };
    let (_, stats) = training::train_step(model, &mut training::adamw(&cfg), &micro, &cfg, 0, 1);
    eprintln!(
        "serial loss {loss:.6}, grad norm {norm:.6}; train_step {:.6}, {:.6}",
        stats.loss, stats.grad_norm
    );
    assert!(norm > 0.0);
    assert!(
        (stats.loss - loss).abs() <= 1e-6 * loss.abs().max(1.0),
        "loss {} vs {loss}",
        stats.loss
    );
    assert!(
        (stats.grad_norm - norm).abs() <= 1e-6 * norm,
        "grad norm {} vs {norm}",
        stats.grad_norm
    );
}

/// A LoRA B off zero, as training leaves it, from the project's seeded stream (burn's
/// `Tensor::random` is not seeded, so a test would see another B on every run): uniform with the
/// spread of N(0, `std`).
fn seeded_b(
    dims: [usize; 2],
    std: f64,
    seed: u64,
    device: &Device,
) -> burn::module::Param<Tensor<2>> {
    let mut rng = emlab_model::sampling::Rng::new(seed);
    let half_width = std * 3f64.sqrt();
    let b: Vec<f32> = (0..dims[0] * dims[1])
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * half_width) as f32)
        .collect();
    burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(b, dims), device))
}
