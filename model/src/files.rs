//! A model directory in Hugging Face layout: `config.json`, `tokenizer.json`,
//! `tokenizer_config.json` (chat template) and one or more `*.safetensors` files.
//!
//! [`ModelFiles::from_bytes`] is the portable core (the browser hands it fetched bytes);
//! [`ModelFiles::load_dir`] reads a directory on native targets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Error;
use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::device::Precision;
use crate::gguf::Gguf;
use crate::tokenizer::{Tokenizer, tokenizer_json_from_gguf};
use crate::weights::Weights;

/// The system prompt SmolLM2's chat template adds when a conversation has none (used when a
/// directory has no `tokenizer_config.json`).
pub const SMOLLM_DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// The base model's name in the site's manifest when it ships as a GGUF (`model-export web`
/// writes it, the page's worker reads it; split into `.partNNN` files when over the host's limit).
pub const BASE_GGUF: &str = "base/model.gguf";

/// Where converted models and downloads live: `$EMLAB_CACHE`, else `~/.cache/emlab`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMLAB_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("emlab")
}

/// Writes a file in full or not at all: a temporary sibling, fsync, rename, then fsync of the
/// folder (so the rename itself survives a power loss). A kill or a full disk leaves the previous
/// file (or none), never a half-written one.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let fail = |p: &Path, what: &str, e: std::io::Error| {
        Error::file(p.display().to_string(), format!("{what}: {e}"))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, "cannot create directory", e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A temporary name per writer: two processes (or threads) writing the same file at once must
    // not truncate each other's temporary file; the last rename wins, and it is whole.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{n}.partial", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .map_err(|e| fail(&tmp, "cannot create", e))
        .and_then(|mut f| f.write_all(data).map_err(|e| fail(&tmp, "write failed", e)))
        .and_then(|()| durable_rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Moves a finished file into place so that a crash leaves the old file or the new one, whole:
/// its data synced first, then renamed, then its folder synced.
pub fn durable_rename(from: &Path, to: &Path) -> Result<(), Error> {
    let fail = |p: &Path, what: &str, e: std::io::Error| {
        Error::file(p.display().to_string(), format!("{what}: {e}"))
    };
    std::fs::File::open(from)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail(from, "write failed", e))?;
    std::fs::rename(from, to).map_err(|e| fail(to, "cannot move into place", e))?;
    // Folders can be opened and synced on Unix; elsewhere the rename is as durable as it gets.
    #[cfg(unix)]
    {
        let dir = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(dir, "cannot sync", e))?;
    }
    Ok(())
}

/// The base model's directory, as `model-export fetch` writes it.
/// The source GGUF, kept in the base model's directory for the q4_1 path.
pub const GGUF_FILE: &str = "model.gguf";

/// The fastest precision a model directory can run in on `device`: its GGUF's blocks when they
/// can run there (decoding 2.4× faster than f32 at batch 1, logits within 1e-4 of f32;
/// docs/performance.md), else f32. Merged models have no `model.gguf`, so they load in f32.
#[cfg(not(target_family = "wasm"))]
pub fn fastest_precision(dir: &Path, device: &burn::prelude::Device) -> Precision {
    if crate::device::runs_blocks(device) && dir.join(GGUF_FILE).is_file() {
        Precision::Q4_1
    } else {
        Precision::F32
    }
}

pub fn default_model_dir() -> PathBuf {
    cache_dir().join("models").join("smollm2-135m-instruct")
}

/// Everything needed to build a model and talk to it, still on the host.
pub struct ModelFiles {
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    pub weights: Weights,
}

impl ModelFiles {
    /// Builds from in-memory files; `name` labels errors (a path or URL).
    pub fn from_bytes(
        name: &str,
        config_json: &[u8],
        tokenizer_json: &[u8],
        tokenizer_config_json: Option<&[u8]>,
        safetensors: &[&[u8]],
    ) -> Result<Self, Error> {
        let file = |f: &str, reason: String| Error::file(format!("{name}/{f}"), reason);
        let config: LlamaConfig =
            serde_json::from_slice(config_json).map_err(|e| file("config.json", e.to_string()))?;
        config.validate().map_err(|e| file("config.json", e))?;
        let tok_text = std::str::from_utf8(tokenizer_json)
            .map_err(|e| file("tokenizer.json", e.to_string()))?;
        let tokenizer =
            Tokenizer::from_json(tok_text).map_err(|e| file("tokenizer.json", e.to_string()))?;
        let chat = match tokenizer_config_json {
            Some(bytes) => {
                chat_template_from_config(bytes).map_err(|e| file("tokenizer_config.json", e))?
            }
            None => ChatTemplate { default_system: Some(SMOLLM_DEFAULT_SYSTEM.into()) },
        };
        let mut weights = Weights::default();
        for (i, bytes) in safetensors.iter().enumerate() {
            weights
                .add_safetensors(bytes)
                .map_err(|e| file(&format!("safetensors file #{}", i + 1), e.to_string()))?;
        }
        weights.check(&config).map_err(|e| file("*.safetensors", e.to_string()))?;
        fits_vocabulary(&tokenizer, &config).map_err(|e| file("tokenizer.json", e))?;
        Ok(Self { config, tokenizer, chat, weights })
    }

    /// Builds from a GGUF file's bytes: config, tokenizer and chat template from its metadata, the
    /// weights dequantized from its blocks (the same f32 values `model-export convert` writes).
    /// The browser loads the base this way, so its download is the GGUF itself.
    pub fn from_gguf(name: &str, bytes: &[u8]) -> Result<Self, Error> {
        Self::read_gguf(name, bytes, None)
    }

    /// As [`ModelFiles::from_gguf`], with its Q4_1 and Q8_0 matrices kept as blocks
    /// ([`Precision::Q4_1`]) that point into `bytes`, which they keep alive.
    pub fn from_gguf_blocks(name: &str, bytes: Arc<Vec<u8>>) -> Result<Self, Error> {
        Self::read_gguf(name, &bytes, Some(&bytes))
    }

    fn read_gguf(name: &str, bytes: &[u8], file: Option<&Arc<Vec<u8>>>) -> Result<Self, Error> {
        let err = |e: &dyn std::fmt::Display| Error::file(name, e.to_string());
        let g = Gguf::parse(bytes).map_err(|e| err(&e))?;
        let config = LlamaConfig::from_gguf(&g).map_err(|e| err(&e))?;
        config.validate().map_err(|e| err(&e))?;
        let tokenizer = Tokenizer::from_json(&tokenizer_json_from_gguf(&g).map_err(|e| err(&e))?)
            .map_err(|e| err(&e))?;
        let chat = match g.get_str("tokenizer.chat_template") {
            Ok(t) => ChatTemplate::from_jinja(t).map_err(|e| err(&e))?,
            Err(_) => ChatTemplate { default_system: Some(SMOLLM_DEFAULT_SYSTEM.into()) },
        };
        fits_vocabulary(&tokenizer, &config).map_err(|e| err(&e))?;
        let weights = match file {
            Some(file) => Weights::from_gguf_blocks(&g, file, &config),
            None => Weights::from_gguf(&g, &config),
        };
        Ok(Self { config, tokenizer, chat, weights: weights.map_err(|e| err(&e))? })
    }

    /// Reads a model directory for the given precision: for q4_1 its `model.gguf` (written beside
    /// the converted weights by `model-export fetch`) with the blocks as they are, or, for a model
    /// without one (a merged adapter, another model), its safetensors with every matrix rounded
    /// to the same block formats ([`Weights::quantize_matrices`]); else its safetensors.
    pub fn load_dir_as(dir: &Path, precision: Precision) -> Result<Self, Error> {
        if precision != Precision::Q4_1 {
            return Self::load_dir(dir);
        }
        let p = dir.join(GGUF_FILE);
        if !p.exists() {
            let mut files = Self::load_dir(dir)?;
            files
                .weights
                .quantize_matrices()
                .map_err(|e| Error::file(dir.display().to_string(), e))?;
            return Ok(files);
        }
        let bytes =
            std::fs::read(&p).map_err(|e| Error::file(p.display().to_string(), e.to_string()))?;
        Self::from_gguf_blocks(&p.display().to_string(), Arc::new(bytes))
    }

    /// Reads a model directory from disk.
    pub fn load_dir(dir: &Path) -> Result<Self, Error> {
        if !dir.is_dir() {
            return Err(Error::file(dir.display().to_string(), "model directory not found".into()));
        }
        let read = |name: &str| -> Result<Vec<u8>, Error> {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| Error::file(p.display().to_string(), e.to_string()))
        };
        let config = read("config.json")?;
        let tokenizer = read("tokenizer.json")?;
        let tok_config = dir
            .join("tokenizer_config.json")
            .exists()
            .then(|| read("tokenizer_config.json"))
            .transpose()?;
        let mut shards: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::file(dir.display().to_string(), e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        shards.sort();
        if shards.is_empty() {
            return Err(Error::file(
                dir.display().to_string(),
                "no *.safetensors weights in the directory".into(),
            ));
        }
        let mut blobs = Vec::with_capacity(shards.len());
        for p in &shards {
            blobs.push(
                std::fs::read(p)
                    .map_err(|e| Error::file(p.display().to_string(), e.to_string()))?,
            );
        }
        let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        // Name the file itself in errors when there is only one.
        let label = dir.display().to_string();
        Self::from_bytes(&label, &config, &tokenizer, tok_config.as_deref(), &refs).map_err(|e| {
            match (e, &shards[..]) {
                (Error::File { path, reason }, [one]) if path.ends_with("safetensors file #1") => {
                    Error::File { path: one.display().to_string(), reason }
                }
                (e, _) => e,
            }
        })
    }
}

impl ModelFiles {
    /// The chat template of a model directory (its tokenizer_config.json, else SmolLM2's).
    pub fn chat_template_of_dir(dir: &Path) -> Result<ChatTemplate, Error> {
        let p = dir.join("tokenizer_config.json");
        match std::fs::read(&p) {
            Ok(bytes) => chat_template_from_config(&bytes)
                .map_err(|e| Error::file(p.display().to_string(), e)),
            Err(_) => Ok(ChatTemplate { default_system: Some(SMOLLM_DEFAULT_SYSTEM.into()) }),
        }
    }
}

/// Every token id the tokenizer can produce must have an embedding.
fn fits_vocabulary(tokenizer: &Tokenizer, config: &LlamaConfig) -> Result<(), String> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(format!(
            "{} tokens but the model has only {} embeddings",
            tokenizer.vocab_size(),
            config.vocab_size
        ));
    }
    Ok(())
}

fn chat_template_from_config(bytes: &[u8]) -> Result<ChatTemplate, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match v.get("chat_template").and_then(|t| t.as_str()) {
        Some(t) => ChatTemplate::from_jinja(t),
        None => Ok(ChatTemplate { default_system: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writers_of_one_file_leave_one_whole_version() {
        let dir = std::env::temp_dir().join(format!("emlab-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("model.gguf");
        // Versions of different lengths: a writer truncated by another shows as a wrong length.
        let version = |w: usize| vec![w as u8; (1 << 20) + w * 4099];
        std::thread::scope(|s| {
            for w in 0..8 {
                let (path, data) = (&path, version(w));
                s.spawn(move || {
                    for _ in 0..4 {
                        atomic_write(path, &data).unwrap();
                    }
                });
            }
        });
        let last = std::fs::read(&path).unwrap();
        assert!(
            (0..8).any(|w| last == version(w)),
            "the file is no writer's version: {} bytes",
            last.len()
        );
        let left: Vec<_> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["model.gguf"], "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
