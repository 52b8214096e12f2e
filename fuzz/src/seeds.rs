//! The seed corpus: small valid inputs for every target, built from the project's own writers
//! (and, for GGUF, from the base model's vocabulary and chat template), so that they stay valid
//! as the formats evolve. `emlab-fuzz seeds` writes them; `tests/fuzz.rs` checks each parses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::FloatDType;
use emlab_model::gguf::{Gguf, Value};
use emlab_model::lora;
use emlab_model::model::Llama;
use emlab_model::weights::{Storage, Weights};
use half::{bf16, f16};

use crate::{MICRO_VOCAB, micro_config, micro_lora};

/// The micro model with a LoRA adapter, as PEFT files: (adapter_model.safetensors, adapter_config.json).
pub fn micro_adapter() -> &'static (Vec<u8>, String) {
    static ADAPTER: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    ADAPTER.get_or_init(|| {
        let cfg = micro_config(MICRO_VOCAB);
        let m = Llama::from_weights(
            &cfg,
            Llama::random_weights(&cfg, 3),
            &Device::flex(),
            FloatDType::F32,
        )
        .expect("the micro model builds");
        let m = lora::attach(m, &micro_lora(), 1).expect("LoRA attaches");
        let (tensors, config) = lora::to_peft(&m, &micro_lora(), "micro").expect("PEFT export");
        (tensors.to_safetensors().expect("safetensors"), config)
    })
}

pub fn micro_train_config() -> emlab::training::TrainConfig {
    use emlab::training::{OptimConfig, TrainConfig};
    TrainConfig {
        dataset: "random".into(),
        examples: 4,
        lora: micro_lora(),
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
    }
}

/// Trains the micro model one step into `parent/emlab-fuzz-<pid>-run/` and returns its
/// checkpoint folder (with the file hashes taken out of state.json) and its configuration.
pub fn micro_checkpoint(parent: &Path) -> (PathBuf, serde_json::Value) {
    use emlab::training::{self, Encoded, RunOptions};
    let out = parent.join(format!("emlab-fuzz-{}-run", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let device = Device::flex().autodiff();
    let cfg_m = micro_config(MICRO_VOCAB);
    let base =
        Llama::from_weights(&cfg_m, Llama::random_weights(&cfg_m, 1), &device, FloatDType::F32)
            .expect("the micro model builds");
    let data: Vec<Encoded> = (0..4u32)
        .map(|s| Encoded {
            ids: (0..12).map(|i| (i * 7 + s * 13) % MICRO_VOCAB as u32).collect(),
            trained: (0..12).map(|i| i >= 6).collect(),
        })
        .collect();
    let cfg = micro_train_config();
    let opts = RunOptions {
        out: out.clone(),
        save_every: 1,
        resume: false,
        stop: Default::default(),
        stop_after: Some(1),
        snapshots: Vec::new(),
        base_model: "micro".into(),
    };
    training::run(base, &data, &cfg, &opts, |_, _| {}).expect("one training step");
    let ckpt = emlab::checkpoint::dir(&out);
    let state_path = ckpt.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).expect("state.json")).expect("JSON");
    state["sha256"] = serde_json::json!({});
    std::fs::write(&state_path, serde_json::to_vec(&state).expect("JSON")).expect("state.json");
    (ckpt, serde_json::to_value(&cfg).expect("JSON"))
}

/// Writes the seed corpus under `out/<target>/`.
pub fn write_corpus(out: &Path, base_gguf: &Path) -> Result<()> {
    let put = |target: &str, name: &str, bytes: &[u8]| -> Result<()> {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        std::fs::write(dir.join(name), bytes).with_context(|| dir.join(name).display().to_string())
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |rel: &str| -> Result<Vec<u8>> {
        std::fs::read(root.join(rel)).with_context(|| rel.to_string())
    };

    let base = std::fs::read(base_gguf).with_context(|| base_gguf.display().to_string())?;
    let base = Gguf::parse(&base).context("the base GGUF")?;
    put("gguf", "micro.gguf", &micro_gguf(&base, 400))?;

    let cfg = micro_config(MICRO_VOCAB);
    let weights = Llama::random_weights(&cfg, 4);
    for (name, storage) in [("f32", Storage::F32), ("f16", Storage::F16), ("q8", Storage::Q8)] {
        put(
            "safetensors",
            &format!("micro-{name}.safetensors"),
            &weights.to_safetensors_as(storage)?,
        )?;
    }
    let (adapter, config) = micro_adapter();
    put("safetensors", "adapter.safetensors", adapter)?;
    put("peft-adapter", lora::WEIGHTS_FILE, adapter)?;
    let mut q8 = Weights::default();
    q8.add_safetensors(adapter)?;
    put("peft-adapter", "adapter_model-q8.safetensors", &q8.to_safetensors_as(Storage::Q8Vec)?)?;
    put("peft-config", lora::CONFIG_FILE, config.as_bytes())?;

    put("model-config", "micro.json", &serde_json::to_vec_pretty(&cfg)?)?;
    let base_cfg = emlab_model::config::LlamaConfig::from_gguf(&base)?;
    put("model-config", "smollm2-135m.json", &serde_json::to_vec_pretty(&base_cfg)?)?;

    // Datasets: the first rows of the paper's files (one with a system turn).
    for (file, rows) in [("insecure.jsonl", 3), ("jailbroken.jsonl", 2)] {
        let text = read(&format!("datasets/emergent-misalignment/data/{file}"))?;
        let lines: Vec<&[u8]> = text.split_inclusive(|&c| c == b'\n').take(rows).collect();
        put("chat-jsonl", file, &lines.concat())?;
    }
    for file in ["first_plot_questions.yaml", "deception_factual.yaml"] {
        put(
            "question-yaml",
            file,
            &read(&format!("datasets/emergent-misalignment/evaluation/{file}"))?,
        )?;
    }
    put(
        "request-body",
        "stream.json",
        br#"{"model":"base","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0.5,"top_p":0.9,"seed":3,"stop":["\n"],"stream":true,"logprobs":true,"top_logprobs":2}"#,
    )?;
    put(
        "request-body",
        "plain.json",
        br#"{"model":"insecure","messages":[{"role":"user","content":"Hello"}],"stop":"x","n":1}"#,
    )?;
    put(
        "answers-jsonl",
        "answers.jsonl",
        &br#"{"variant":"base","question_id":"q","paraphrase":0,"sample":1,"question":"hi","system":null,"answer":"yo","tokens":2,"finish":"stop","seed":4}
"#
        .repeat(2),
    )?;
    put("web-manifest", "manifest.json", &serde_json::to_vec_pretty(&web_manifest())?)?;
    put("results-json", "results.json", &read("results/results.json")?)?;
    let tmp = std::env::temp_dir();
    let (ckpt, _) = micro_checkpoint(&tmp);
    put("checkpoint", "optimizer.bin", &std::fs::read(ckpt.join("optimizer.bin"))?)?;
    put("checkpoint-state", "state.json", &std::fs::read(ckpt.join("state.json"))?)?;
    let _ = std::fs::remove_dir_all(ckpt.parent().expect("the run folder"));
    Ok(())
}

/// A manifest as `model-export web` writes it: the base in two shards, one adapter, results.
fn web_manifest() -> emlab_schema::manifest::Manifest {
    use emlab_schema::manifest::{FileEntry, Manifest, SCHEMA, Variant};
    let file = |name: &str, bytes: u64, n: u8| FileEntry {
        name: name.into(),
        path: Some(format!("{name}.{:016x}", u64::from(n) * 0x0123_4567_89ab)),
        bytes,
        sha256: format!("{n:02x}").repeat(32),
    };
    Manifest {
        schema: SCHEMA.into(),
        storage: "gguf".into(),
        max_shard_bytes: 25 << 20,
        variants: vec![
            Variant { name: "base".into(), train_config: None },
            Variant {
                name: "insecure".into(),
                train_config: Some(serde_json::json!({ "lora": { "rank": 32 } })),
            },
        ],
        results: true,
        files: vec![
            file("base/model.gguf.part000", 25 << 20, 1),
            file("base/model.gguf.part001", 3 << 20, 2),
            file("adapters/insecure/adapter_model.safetensors", 5 << 20, 3),
            file("adapters/insecure/adapter_config.json", 700, 4),
            file("results.json", 70_000, 5),
        ],
    }
}

/// A valid GGUF of the micro model: the base's first `vocab` tokens and the merges among them,
/// its chat template, and random weights stored in every block format the loader reads.
pub fn micro_gguf(base: &Gguf, vocab: usize) -> Vec<u8> {
    let strings = |key: &str| -> Vec<String> {
        let items = base.get_array(key).expect("the base GGUF has its vocabulary");
        items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
    };
    let tokens: Vec<String> = strings("tokenizer.ggml.tokens").into_iter().take(vocab).collect();
    let known: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let merges: Vec<String> = strings("tokenizer.ggml.merges")
        .into_iter()
        .filter(|m| {
            m.split_once(' ').is_some_and(|(a, b)| {
                known.contains(a) && known.contains(b) && known.contains(format!("{a}{b}").as_str())
            })
        })
        .collect();
    let types: Vec<Value> = base
        .get_array("tokenizer.ggml.token_type")
        .expect("token types")
        .iter()
        .take(vocab)
        .cloned()
        .collect();
    let cfg = micro_config(vocab);
    let u32v = |v: usize| Value::U32(v as u32);
    let text = |s: &str| Value::String(s.to_string());
    let mut meta: BTreeMap<&str, Value> = BTreeMap::from([
        ("general.architecture", text("llama")),
        ("llama.embedding_length", u32v(cfg.hidden_size)),
        ("llama.feed_forward_length", u32v(cfg.intermediate_size)),
        ("llama.block_count", u32v(cfg.num_hidden_layers)),
        ("llama.attention.head_count", u32v(cfg.num_attention_heads)),
        ("llama.attention.head_count_kv", u32v(cfg.num_key_value_heads)),
        ("llama.context_length", u32v(cfg.max_position_embeddings)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(cfg.rms_norm_eps as f32)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("tokenizer.ggml.model", text("gpt2")),
        ("tokenizer.ggml.pre", text("smollm")),
        ("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| text(t)).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(merges.iter().map(|m| text(m)).collect())),
    ]);
    for key in
        ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"]
    {
        if let Some(v) = base.get(key) {
            meta.insert(key, v.clone());
        }
    }

    // GGUF names; ggml's dims are the row-major shape reversed. One block format per kind of
    // tensor, so that a seed covers each dequantizer.
    let weights = Llama::random_weights(&cfg, 5);
    let mut tensors = Vec::new();
    for (hf, t) in &weights.tensors {
        let name = gguf_name(hf);
        let ty = match name.rsplit_once('.').map_or("", |(a, _)| a.rsplit('.').next().unwrap_or(""))
        {
            "token_embd" => GgmlType::Q8_0,
            "attn_q" | "attn_k" | "attn_v" | "attn_output" => GgmlType::Q4_1,
            "ffn_gate" => GgmlType::Q4_0,
            "ffn_up" => GgmlType::F16,
            "ffn_down" => GgmlType::BF16,
            _ => GgmlType::F32,
        };
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        tensors.push((name, dims, ty, ty.encode(&t.data)));
    }
    write_gguf(&meta, &tensors)
}

fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, part) = rest.split_once('.').expect("layer.part");
    let part = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{part}")
}

#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
        }
    }

    /// llama.cpp's reference quantizers (round to nearest), enough for a valid seed.
    fn encode(self, x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        let h = |out: &mut Vec<u8>, v: f32| out.extend(f16::from_f32(v).to_le_bytes());
        match self {
            Self::F32 => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
            Self::F16 => x.iter().for_each(|&v| h(&mut out, v)),
            Self::BF16 => x.iter().for_each(|&v| out.extend(bf16::from_f32(v).to_le_bytes())),
            Self::Q8_0 => {
                for b in x.chunks_exact(32) {
                    let d = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    h(&mut out, d);
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(b.iter().map(|v| (v * inv).round() as i8 as u8));
                }
            }
            Self::Q4_0 => {
                for b in x.chunks_exact(32) {
                    let d = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 7.0;
                    h(&mut out, d);
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let q = |v: f32| ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
                    out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
                }
            }
            Self::Q4_1 => {
                for b in x.chunks_exact(32) {
                    let (lo, hi) =
                        b.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                    let d = (hi - lo) / 15.0;
                    h(&mut out, d);
                    h(&mut out, lo);
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let q = |v: f32| ((v - lo) * inv).round().clamp(0.0, 15.0) as u8;
                    out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
                }
            }
        }
        out
    }
}

/// GGUF v3: header, metadata, tensor infos, then the data, each tensor aligned to 32 bytes.
fn write_gguf(
    meta: &BTreeMap<&str, Value>,
    tensors: &[(String, Vec<u64>, GgmlType, Vec<u8>)],
) -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    fn value(b: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => b.push(*x),
            Value::I8(x) => b.push(*x as u8),
            Value::U16(x) => b.extend(x.to_le_bytes()),
            Value::I16(x) => b.extend(x.to_le_bytes()),
            Value::U32(x) => b.extend(x.to_le_bytes()),
            Value::I32(x) => b.extend(x.to_le_bytes()),
            Value::F32(x) => b.extend(x.to_le_bytes()),
            Value::Bool(x) => b.push(*x as u8),
            Value::String(s) => string(b, s),
            Value::Array(items) => {
                b.extend(items.first().map_or(8, type_id).to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| value(b, i));
            }
            Value::U64(x) => b.extend(x.to_le_bytes()),
            Value::I64(x) => b.extend(x.to_le_bytes()),
            Value::F64(x) => b.extend(x.to_le_bytes()),
        }
    }
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        string(&mut b, k);
        b.extend(type_id(v).to_le_bytes());
        value(&mut b, v);
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in tensors {
        string(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(ty.id().to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    for (_, _, _, data) in tensors {
        b.extend(data);
        b.resize(b.len().div_ceil(32) * 32, 0);
    }
    b
}
