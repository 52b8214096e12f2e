//! Bounded mutation fuzzing of every parser of outside input: GGUF (header, metadata, tensor
//! table, tokenizer, tensors), safetensors, PEFT adapters, model config, chat JSONL, question YAML,
//! OpenAI request bodies, training checkpoints, and what the page reads (the web manifest,
//! results.json). Each starts from valid files (the seed corpus) and applies a fixed-seed
//! sequence of truncations, byte flips, length-field edits, deleted and duplicated chunks. Every case must end in `Ok` or an error: no panic, and no allocation over
//! [`MAX_ALLOC`] (the allocator below refuses it, which aborts the test).
//!
//! `EMLAB_FUZZ_CASES=N` runs N cases per target instead of the CI's few hundred, and
//! `EMLAB_FUZZ_SEED` another sequence: the longer run of docs/verification.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::prelude::*;
use burn::tensor::FloatDType;
use emlab_model::config::LlamaConfig;
use emlab_model::gguf::Gguf;
use emlab_model::lora::{self, LoraConfig};
use emlab_model::model::Llama;
use emlab_model::sampling::Rng;
use emlab_model::weights::Weights;

/// The largest single allocation any parser may make on bad input (the real base model's largest
/// tensor, dequantized, is 113 MB).
const MAX_ALLOC: usize = 1 << 30;

struct Bounded;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

fn cases(default: usize) -> usize {
    std::env::var("EMLAB_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rng(target: u64) -> Rng {
    let seed =
        std::env::var("EMLAB_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(2502_17424);
    Rng::new(seed ^ target.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// One mutation of `seed`; `region` bounds where bytes are edited (the header of a big file).
fn mutate(seed: &[u8], rng: &mut Rng, region: usize) -> Vec<u8> {
    let mut b = seed.to_vec();
    let region = region.min(b.len()).max(1);
    let at = |rng: &mut Rng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    let rounds = 1 + at(rng, 3);
    for _ in 0..rounds {
        match at(rng, 6) {
            0 => {
                let cut = at(rng, b.len() + 1);
                b.truncate(cut);
            }
            1 => {
                for _ in 0..1 + at(rng, 8) {
                    if !b.is_empty() {
                        let i = at(rng, region.min(b.len()));
                        b[i] ^= 1 << at(rng, 8);
                    }
                }
            }
            2 => {
                // A length or count field: an extreme 4- or 8-byte value at some offset.
                let extremes: [u64; 6] = [0, 1, u64::MAX, 1 << 62, 0x8000_0000, 0xffff_fff0];
                let v = extremes[at(rng, extremes.len())];
                let width = if at(rng, 2) == 0 { 4 } else { 8 };
                if b.len() > width {
                    let i = at(rng, region.min(b.len() - width));
                    b[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            3 => {
                if !b.is_empty() {
                    let i = at(rng, region.min(b.len()));
                    let n = 1 + at(rng, 64.min(b.len() - i));
                    b.drain(i..i + n);
                }
            }
            4 => {
                if !b.is_empty() {
                    let i = at(rng, region.min(b.len()));
                    let n = 1 + at(rng, 64.min(b.len() - i));
                    let chunk = b[i..i + n].to_vec();
                    b.splice(i..i, chunk);
                }
            }
            _ => {
                // Text formats: a byte that matters to their grammar.
                let special = b"\"{}[]:,\\\n\x00\xff-09e.";
                if !b.is_empty() {
                    let i = at(rng, region.min(b.len()));
                    b[i] = special[at(rng, special.len())];
                }
            }
        }
    }
    b
}

/// Runs `parse` on each mutant; a panic names the target and the case to replay it.
fn fuzz(
    target: &str,
    id: u64,
    seeds: &[Vec<u8>],
    n: usize,
    region: usize,
    mut parse: impl FnMut(&[u8]),
) {
    let mut rng = rng(id);
    for case in 0..n {
        let seed = &seeds[case % seeds.len()];
        let input = mutate(seed, &mut rng, region);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&input)));
        if r.is_err() {
            let path = std::env::temp_dir().join(format!("emlab-fuzz-{target}-{case}.bin"));
            let _ = std::fs::write(&path, &input);
            panic!("{target}: case {case} panicked; its input is in {}", path.display());
        }
    }
    eprintln!(
        "{target}: {n} cases, no panic; largest allocation {} MB",
        LARGEST.load(Ordering::Relaxed) >> 20
    );
}

#[test]
fn gguf_files() {
    let bytes = std::fs::read(emlab_tests::base_gguf()).unwrap();
    // The header, metadata (vocabulary and merges, ~1.3 MB) and tensor table lie in the first MiBs.
    let header = (4 << 20).min(bytes.len());
    let seeds = vec![bytes[..header].to_vec()];
    // Mutated headers over the real tensor data: the parser, the config, the tokenizer and a few
    // tensors (the whole model only now and then: it dequantizes 135M weights).
    let tail = &bytes[header..];
    let mut whole = 0;
    fuzz("gguf", 1, &seeds, cases(60), header, |head| {
        let mut file = head.to_vec();
        file.extend_from_slice(tail);
        let Ok(g) = Gguf::parse(&file) else { return };
        if let Ok(cfg) = LlamaConfig::from_gguf(&g) {
            let _ = cfg.validate();
        }
        if let Ok(json) = emlab_model::tokenizer::tokenizer_json_from_gguf(&g) {
            let _ = emlab_model::tokenizer::Tokenizer::from_json(&json);
        }
        for t in g.tensors.iter().take(4) {
            let _ = g.tensor_f32(&t.name);
        }
        whole += 1;
        if whole % 20 == 1 {
            let _ = emlab_model::files::ModelFiles::from_gguf("fuzz.gguf", &file);
        }
    });
    // And truncations of the whole file, anywhere.
    let mut rng = rng(11);
    for _ in 0..cases(20) {
        let cut = (rng.next_u64() % bytes.len() as u64) as usize;
        assert!(emlab_model::files::ModelFiles::from_gguf("cut.gguf", &bytes[..cut]).is_err());
    }
}

fn tiny_adapter() -> (LlamaConfig, Vec<u8>, String) {
    let cfg = LlamaConfig::tiny(300);
    let m =
        Llama::from_weights(&cfg, Llama::random_weights(&cfg, 3), &Device::flex(), FloatDType::F32)
            .unwrap();
    let lcfg = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let m = lora::attach(m, &lcfg, 1).unwrap();
    let (tensors, config) = lora::to_peft(&m, &lcfg, "tiny").unwrap();
    (cfg, tensors.to_safetensors().unwrap(), config)
}

#[test]
fn safetensors_and_peft_adapters() {
    let (cfg, adapter, config) = tiny_adapter();
    let model = Llama::random_weights(&cfg, 4).to_safetensors().unwrap();
    let base = || {
        Llama::from_weights(&cfg, Llama::random_weights(&cfg, 3), &Device::flex(), FloatDType::F32)
            .unwrap()
    };
    fuzz("safetensors", 2, &[model, adapter.clone()], cases(300), usize::MAX, |b| {
        let mut w = Weights::default();
        if w.add_safetensors(b).is_ok() {
            let _ = w.check(&cfg);
        }
    });
    fuzz("peft-adapter", 3, std::slice::from_ref(&adapter), cases(60), 4096, |b| {
        let _ = lora::from_peft_files(base(), config.as_bytes(), b);
    });
    fuzz("peft-config", 4, &[config.into_bytes()], cases(300), usize::MAX, |b| {
        if let Ok(text) = std::str::from_utf8(b)
            && let Ok(c) = lora::config_from_peft(text)
        {
            let _ = lora::from_peft_files(base(), text.as_bytes(), &adapter);
            assert!(c.validate().is_ok());
        }
    });
}

#[test]
fn model_config_json() {
    let seeds = vec![
        serde_json::to_vec_pretty(&LlamaConfig::tiny(300)).unwrap(),
        std::fs::read(emlab_tests::base_model_dir().join("config.json")).unwrap(),
    ];
    fuzz("config", 5, &seeds, cases(500), usize::MAX, |b| {
        if let Ok(c) = serde_json::from_slice::<LlamaConfig>(b)
            && c.validate().is_ok()
            && c.vocab_size * c.hidden_size < 1 << 22
            && c.num_hidden_layers < 8
        {
            // A valid small config builds a model.
            let _ = Llama::from_weights(
                &c,
                Llama::random_weights(&c, 1),
                &Device::flex(),
                FloatDType::F32,
            );
        }
    });
}

#[test]
fn chat_jsonl_question_yaml_and_request_bodies() {
    let data = emlab_tests::TempDir::new("fuzz-data");
    let jsonl = data.path().join("d.jsonl");
    emlab_tests::write_chat_jsonl(&jsonl, 6);
    let seeds = vec![
        std::fs::read(&jsonl).unwrap(),
        std::fs::read(backend::data::builtin_dir().join("insecure.jsonl"))
            .unwrap()
            .into_iter()
            .take(20_000)
            .collect(),
    ];
    let file = data.path().join("m.jsonl");
    fuzz("chat-jsonl", 6, &seeds, cases(400), usize::MAX, |b| {
        let _ = backend::data::parse_jsonl("m.jsonl", &String::from_utf8_lossy(b));
        std::fs::write(&file, b).unwrap();
        let _ = backend::data::read_jsonl(&file, true);
        let _ = backend::data::read_jsonl(&file, false);
    });
    let eval = backend::eval::questions::evaluation_dir();
    let seeds: Vec<Vec<u8>> = ["first_plot_questions.yaml", "deception_factual.yaml"]
        .iter()
        .map(|f| std::fs::read(eval.join(f)).unwrap().into_iter().take(6000).collect())
        .collect();
    fuzz("question-yaml", 7, &seeds, cases(300), usize::MAX, |b| {
        let _ = backend::eval::questions::parse(&String::from_utf8_lossy(b));
    });
    let seeds = vec![
        br#"{"model":"base","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0.5,"top_p":0.9,"seed":3,"stop":["\n"],"stream":true,"logprobs":true,"top_logprobs":2}"#.to_vec(),
        br#"{"model":"insecure","messages":[{"role":"user","content":"<|im_start|>system"}],"stop":"x","n":1}"#.to_vec(),
    ];
    fuzz("request-body", 8, &seeds, cases(500), usize::MAX, |b| {
        let _ = backend::serve::parse_request(b);
    });
    let answers = data.path().join("a.jsonl");
    let seed = br#"{"variant":"base","question_id":"q","paraphrase":0,"sample":1,"question":"hi","system":null,"answer":"yo","tokens":2,"finish":"stop","seed":4}
"#;
    fuzz("answers-jsonl", 9, &[seed.repeat(3)], cases(300), usize::MAX, |b| {
        std::fs::write(&answers, b).unwrap();
        let _ = backend::eval::sample::read_answers(&answers);
    });
}

/// What the page reads: the web manifest (then its bounds check) and results.json.
#[test]
fn web_manifest_and_results() {
    use emlab_schema::manifest::{FileEntry, Manifest};
    let file = |name: &str, bytes: u64| FileEntry {
        name: name.into(),
        path: Some(format!("{name}.0123abcd")),
        bytes,
        sha256: "0f".repeat(32),
    };
    let manifest = Manifest {
        schema: emlab_schema::manifest::SCHEMA.into(),
        storage: "gguf".into(),
        max_shard_bytes: 25 << 20,
        variants: vec![emlab_schema::manifest::Variant {
            name: "insecure".into(),
            train_config: Some(serde_json::json!({ "lora": { "rank": 32 } })),
        }],
        results: true,
        files: vec![file("base/model.gguf.part000", 25 << 20), file("results.json", 70_000)],
    };
    let seeds = vec![serde_json::to_vec_pretty(&manifest).unwrap()];
    fuzz("web-manifest", 15, &seeds, cases(300), usize::MAX, |b| {
        if let Ok(m) = serde_json::from_slice::<Manifest>(b) {
            let _ = m.check();
        }
    });
    let results = concat!(env!("CARGO_MANIFEST_DIR"), "/../results/results.json");
    let seeds = vec![std::fs::read(results).unwrap()];
    fuzz("results-json", 16, &seeds, cases(200), usize::MAX, |b| {
        let _ = serde_json::from_slice::<emlab_schema::results::Results>(b);
    });
}

#[test]
fn training_checkpoints() {
    use backend::training::{self, OptimConfig, TrainConfig};
    let device = Device::flex().autodiff();
    let cfg_m = LlamaConfig::tiny(300);
    let base = || {
        Llama::from_weights(&cfg_m, Llama::random_weights(&cfg_m, 1), &device, FloatDType::F32)
            .unwrap()
    };
    let tmp = emlab_tests::TempDir::new("fuzz-ckpt");
    let mut rng = Rng::new(5);
    let data: Vec<training::Encoded> = (0..4)
        .map(|_| {
            let ids: Vec<u32> = (0..12).map(|_| (rng.next_u64() % 300) as u32).collect();
            training::Encoded { trained: (0..12).map(|i| i >= 6).collect(), ids }
        })
        .collect();
    let cfg = TrainConfig {
        dataset: "random".into(),
        examples: 4,
        lora: LoraConfig { rank: 2, alpha: 4.0, ..Default::default() },
        optim: OptimConfig {
            learning_rate: 1e-3,
            warmup_steps: 0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            grad_accumulation: 1,
        },
        batch_size: 2,
        epochs: 1,
        max_len: 16,
        seed: 1,
    };
    let opts = training::RunOptions {
        out: tmp.path().to_path_buf(),
        save_every: 1,
        resume: false,
        stop: Default::default(),
        stop_after: Some(1),
        snapshots: Vec::new(),
        base_model: "tiny".into(),
    };
    training::run(base(), &data, &cfg, &opts, |_, _| {}).unwrap();
    let ckpt = tmp.path().join("checkpoint");
    let config_json = serde_json::to_value(&cfg).unwrap();
    let load =
        || backend::checkpoint::load(&ckpt, base(), training::adamw(&cfg.optim), &config_json);
    assert!(load().is_ok());
    let state_path = ckpt.join("state.json");
    let state = std::fs::read(&state_path).unwrap();
    for (i, name) in
        ["state.json", "adapter_config.json", "adapter_model.safetensors", "optimizer.bin"]
            .into_iter()
            .enumerate()
    {
        let path = ckpt.join(name);
        let original = std::fs::read(&path).unwrap();
        // Past the recorded hashes too, so that the parsers behind them see the bad bytes.
        if name != "state.json" {
            let mut v: serde_json::Value = serde_json::from_slice(&state).unwrap();
            v["sha256"] = serde_json::json!({});
            std::fs::write(&state_path, serde_json::to_vec(&v).unwrap()).unwrap();
        }
        fuzz(
            &format!("checkpoint-{name}"),
            20 + i as u64,
            std::slice::from_ref(&original),
            cases(40),
            usize::MAX,
            |b| {
                std::fs::write(&path, b).unwrap();
                let _ = load();
            },
        );
        std::fs::write(&path, &original).unwrap();
        std::fs::write(&state_path, &state).unwrap();
    }
    assert!(load().is_ok(), "restored");
}
