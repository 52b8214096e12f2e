//! Every parser of outside input as a function of one byte string: the fuzz targets.
//!
//! The same functions serve three runs:
//! - `tests/fuzz.rs` (CI): fixed-seed mutations of the seed corpus, a few hundred per target;
//!   the seed corpus must parse, and every saved crash must not crash;
//! - `scripts/fuzz.sh` (by hand): AFL++ through cargo-afl, coverage-guided, for as long as wanted.
//!
//! A target returns whether the input was accepted; rejecting it with an error is as good an
//! outcome as accepting it. Only a panic, an abort or a runaway allocation is a finding.

pub mod alloc;
pub mod seeds;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::prelude::*;
use burn::tensor::FloatDType;
use emlab_model::config::LlamaConfig;
use emlab_model::gguf::Gguf;
use emlab_model::lora::{self, LoraConfig};
use emlab_model::model::Llama;
use emlab_model::weights::Weights;

pub struct Target {
    pub name: &'static str,
    /// What the input is, for `emlab-fuzz list`.
    pub input: &'static str,
    pub run: fn(&[u8]) -> bool,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf",
        input: "a GGUF model file (the page's and `convert`'s input)",
        run: gguf,
    },
    Target { name: "safetensors", input: "a safetensors weights file", run: safetensors },
    Target {
        name: "peft-adapter",
        input: "adapter_model.safetensors of a PEFT adapter",
        run: peft_adapter,
    },
    Target {
        name: "peft-config",
        input: "adapter_config.json of a PEFT adapter",
        run: peft_config,
    },
    Target { name: "model-config", input: "a model's config.json", run: model_config },
    Target { name: "chat-jsonl", input: "a chat dataset (JSONL)", run: chat_jsonl },
    Target {
        name: "question-yaml",
        input: "an evaluation question file (YAML)",
        run: question_yaml,
    },
    Target {
        name: "request-body",
        input: "an OpenAI chat completion request body",
        run: request_body,
    },
    Target {
        name: "answers-jsonl",
        input: "an `eval sample` answers file (JSONL)",
        run: answers_jsonl,
    },
    Target { name: "web-manifest", input: "the page's manifest.json", run: web_manifest },
    Target { name: "results-json", input: "the page's results.json", run: results_json },
    Target { name: "checkpoint", input: "a training checkpoint's optimizer.bin", run: checkpoint },
    Target {
        name: "checkpoint-state",
        input: "a training checkpoint's state.json",
        run: checkpoint_state,
    },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// `fuzz/corpus/`: valid inputs, one folder per target (`emlab-fuzz seeds` writes them).
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// `fuzz/regressions/`: every input a fuzzer found crashing, one folder per target.
pub fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions")
}

/// The files of `dir/target/`, sorted (none if the folder does not exist).
pub fn inputs(dir: &Path, target: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(target))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The model shape every target builds: small enough to build in a millisecond, with GQA, a
/// block-quantizable width (32) and the real base's family of names.
pub fn micro_config(vocab_size: usize) -> LlamaConfig {
    LlamaConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        max_position_embeddings: 256,
        ..LlamaConfig::tiny(vocab_size)
    }
}

pub const MICRO_VOCAB: usize = 64;

fn micro_model(device: &Device) -> Llama {
    let cfg = micro_config(MICRO_VOCAB);
    Llama::from_weights(&cfg, Llama::random_weights(&cfg, 3), device, FloatDType::F32)
        .expect("the micro model builds")
}

/// The LoRA configuration of the seed adapter and checkpoint.
pub fn micro_lora() -> LoraConfig {
    LoraConfig { rank: 2, alpha: 4.0, ..Default::default() }
}

/// A file the file-reading parsers read: one per process, so parallel AFL instances do not share it.
fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("emlab-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("writing the scratch file");
    path
}

/// Parses the GGUF, then builds what the page builds from it: config, tokenizer, chat template
/// and dequantized weights (the whole model only when it is small: a fuzzer's inputs are).
fn gguf(b: &[u8]) -> bool {
    let Ok(g) = Gguf::parse(b) else { return false };
    if let Ok(cfg) = LlamaConfig::from_gguf(&g) {
        let _ = cfg.validate();
    }
    if let Ok(json) = emlab_model::tokenizer::tokenizer_json_from_gguf(&g) {
        let _ = emlab_model::tokenizer::Tokenizer::from_json(&json);
    }
    for t in g.tensors.iter().take(8) {
        let _ = g.tensor_f32(&t.name);
    }
    if b.len() >= 8 << 20 {
        return false;
    }
    // Both ways the page and `--dtype q4_1` build it: blocks expanded, and blocks kept, which must
    // then build a model and answer a token through the quantized kernels.
    let expanded = emlab_model::files::ModelFiles::from_gguf("fuzz.gguf", b).is_ok();
    if let Ok(files) = emlab_model::files::ModelFiles::from_gguf_blocks(
        "fuzz.gguf",
        std::sync::Arc::new(b.to_vec()),
    ) && files.config.num_hidden_layers <= 2
        && files.config.hidden_size <= 256
    {
        let device = burn::prelude::Device::flex();
        if let Ok(m) = emlab_model::model::Llama::from_weights(
            &files.config,
            files.weights,
            &device,
            burn::tensor::FloatDType::F32,
        ) {
            let _ = m.forward_last(emlab_model::model::Batch::causal(&[0], &device), None);
        }
    }
    expanded
}

fn safetensors(b: &[u8]) -> bool {
    let mut w = Weights::default();
    let read = w.add_safetensors(b).is_ok();
    if read {
        let _ = w.check(&micro_config(MICRO_VOCAB));
    }
    read
}

fn peft_adapter(b: &[u8]) -> bool {
    let config = &seeds::micro_adapter().1;
    lora::from_peft_files(micro_model(&Device::flex()), config.as_bytes(), b).is_ok()
}

fn peft_config(b: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(b) else { return false };
    let Ok(c) = lora::config_from_peft(text) else { return false };
    // What passes must be usable: attach it to the model with the seed adapter's tensors.
    assert!(c.validate().is_ok(), "config_from_peft returned a config that fails validate()");
    let tensors = &seeds::micro_adapter().0;
    let _ = lora::from_peft_files(micro_model(&Device::flex()), text.as_bytes(), tensors);
    true
}

fn model_config(b: &[u8]) -> bool {
    let Ok(c) = serde_json::from_slice::<LlamaConfig>(b) else { return false };
    if c.validate().is_err() {
        return false;
    }
    // A valid small configuration builds a model.
    if c.vocab_size.saturating_mul(c.hidden_size) < 1 << 22 && c.num_hidden_layers < 8 {
        let w = Llama::random_weights(&c, 1);
        return Llama::from_weights(&c, w, &Device::flex(), FloatDType::F32).is_ok();
    }
    true
}

fn chat_jsonl(b: &[u8]) -> bool {
    let parsed = emlab::data::parse_jsonl("fuzz.jsonl", &String::from_utf8_lossy(b));
    let file = scratch_file("data.jsonl", b);
    let _ = emlab::data::read_jsonl(&file, true);
    emlab::data::read_jsonl(&file, false).is_ok() && parsed.errors.is_empty()
}

fn question_yaml(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok_and(|t| emlab::eval::questions::parse(t).is_ok())
}

fn request_body(b: &[u8]) -> bool {
    emlab::serve::parse_request(b).is_ok()
}

fn answers_jsonl(b: &[u8]) -> bool {
    emlab::eval::sample::read_answers(&scratch_file("answers.jsonl", b)).is_ok()
}

fn web_manifest(b: &[u8]) -> bool {
    serde_json::from_slice::<emlab_schema::manifest::Manifest>(b).is_ok_and(|m| m.check().is_ok())
}

fn results_json(b: &[u8]) -> bool {
    serde_json::from_slice::<emlab_schema::results::Results>(b).is_ok()
}

/// A checkpoint folder with one file replaced (file hashes not recorded, so the bytes reach the
/// parsers: a checkpoint from before hashes were kept is read the same way).
fn checkpoint_with(file: &str, b: &[u8]) -> bool {
    struct Ckpt {
        dir: PathBuf,
        config: serde_json::Value,
        valid: Vec<(&'static str, Vec<u8>)>,
    }
    static CKPT: OnceLock<Ckpt> = OnceLock::new();
    let ckpt = CKPT.get_or_init(|| {
        let (dir, config) = seeds::micro_checkpoint(&std::env::temp_dir());
        let valid = ["optimizer.bin", "state.json"]
            .map(|f| (f, std::fs::read(dir.join(f)).expect("the micro checkpoint")))
            .into();
        Ckpt { dir, config, valid }
    });
    for (name, bytes) in &ckpt.valid {
        let bytes = if *name == file { b } else { bytes };
        std::fs::write(ckpt.dir.join(name), bytes).expect("writing the checkpoint");
    }
    let device = Device::flex().autodiff();
    let optim = emlab::training::adamw(&seeds::micro_train_config().optim);
    emlab::checkpoint::load(&ckpt.dir, micro_model(&device), optim, &ckpt.config).is_ok()
}

fn checkpoint(b: &[u8]) -> bool {
    checkpoint_with("optimizer.bin", b)
}

fn checkpoint_state(b: &[u8]) -> bool {
    checkpoint_with("state.json", b)
}
