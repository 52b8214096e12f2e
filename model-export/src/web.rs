//! The browser's model files: `public/models/` with a `manifest.json` naming every file with its
//! size and sha256, the base model, each trained adapter (8-bit, one scale per rank component) and
//! the evaluation results when present. The base ships as its own GGUF: the Q4_1 and Q8_0 blocks
//! the reference f32 weights are dequantized from, so the page computes with exactly those weights
//! from the smallest download (the page reads config, tokenizer and chat template from the GGUF's
//! metadata). A model directory can ship instead, as safetensors in 8-bit blocks, f16 or f32.
//! Files over the shard limit are split into `NAME.partNNN` pieces that the page joins in order,
//! so strict static hosts accept every file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use emlab_model::files::BASE_GGUF;
use emlab_model::lora;
use emlab_model::weights::{Storage, Weights};
use emlab_schema::manifest::{FileEntry, Manifest, SCHEMA, Variant, hex};
use sha2::{Digest, Sha256};

use crate::atomic_write;

/// Where the base model comes from, and how it is stored for the browser.
pub enum WebBase {
    /// A GGUF file, shipped as it is (`base/model.gguf`).
    Gguf(PathBuf),
    /// A model directory, shipped as config, tokenizer and `base/model.safetensors`.
    Dir { dir: PathBuf, storage: Storage },
}

pub struct WebOptions {
    pub base: WebBase,
    /// Directories `NAME/adapter/` under this one (`model-export publish` writes them) become variants.
    pub variants: Option<PathBuf>,
    pub results: Option<PathBuf>,
    pub out: PathBuf,
    pub max_shard_bytes: usize,
}

/// Splits `bytes` into pieces of at most `max` bytes: `[name]` when it fits, else `name.part000`…
pub fn shard_names(name: &str, len: usize, max: usize) -> Vec<String> {
    if len <= max {
        return vec![name.to_string()];
    }
    (0..len.div_ceil(max)).map(|i| format!("{name}.part{i:03}")).collect()
}

/// Where a file is stored: its name with the first 16 hex digits of its sha256 after the stem
/// (`base/model.safetensors.part000` → `base/model.3fa2….safetensors.part000`). HTTP caches can
/// then keep files forever, and a new release never mixes old and new shards: only manifest.json
/// keeps its name (and is always revalidated).
pub fn content_addressed(name: &str, sha256: &str) -> String {
    let (dir, file) = name.rsplit_once('/').map_or(("", name), |(d, f)| (d, f));
    let (stem, rest) =
        file.split_once('.').map_or((file, String::new()), |(s, r)| (s, format!(".{r}")));
    let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    format!("{prefix}{stem}.{}{rest}", &sha256[..16])
}

/// Writes the export and returns its manifest.
pub fn export_web(o: &WebOptions) -> Result<Manifest> {
    if o.max_shard_bytes == 0 {
        bail!("--max-shard-mb must be positive");
    }
    emlab_model::outdir::check(&o.out, WEB_FILES)?;
    let mut manifest = None;
    emlab_model::outdir::replace(&o.out, WEB_FILES, |dir| -> Result<()> {
        manifest = Some(write_site_files(o, dir)?);
        Ok(())
    })?;
    manifest.context("the export wrote no manifest")
}

/// What an export folder holds (a folder of only these, from before the marker, is ours).
const WEB_FILES: &[&str] = &["manifest.json", "base", "adapters", "results.*"];

fn write_site_files(o: &WebOptions, out: &Path) -> Result<Manifest> {
    let mut files = Vec::new();
    let mut emit = |name: &str, bytes: &[u8]| -> Result<()> {
        let names = shard_names(name, bytes.len(), o.max_shard_bytes);
        for (part, chunk) in names.iter().zip(bytes.chunks(o.max_shard_bytes.max(1))) {
            let sha = hex(&Sha256::digest(chunk));
            let path = content_addressed(part, &sha);
            atomic_write(&out.join(&path), chunk)?;
            files.push(FileEntry {
                name: part.clone(),
                path: Some(path),
                bytes: chunk.len() as u64,
                sha256: sha,
            });
        }
        Ok(())
    };
    let read =
        |p: PathBuf| std::fs::read(&p).with_context(|| format!("{}: cannot read", p.display()));

    let storage = match &o.base {
        WebBase::Gguf(path) => {
            let bytes = read(path.clone())?;
            // Checked as the page will read it, so a bad file fails here and not in a visitor's tab.
            emlab_model::files::ModelFiles::from_gguf(&path.display().to_string(), &bytes)?;
            emit(BASE_GGUF, &bytes)?;
            "gguf".to_string()
        }
        WebBase::Dir { dir, storage } => {
            let model_files = emlab_model::files::ModelFiles::load_dir(dir)?;
            emit("base/config.json", &read(dir.join("config.json"))?)?;
            emit("base/tokenizer.json", &read(dir.join("tokenizer.json"))?)?;
            if dir.join("tokenizer_config.json").exists() {
                emit("base/tokenizer_config.json", &read(dir.join("tokenizer_config.json"))?)?;
            }
            emit("base/model.safetensors", &model_files.weights.to_safetensors_as(*storage)?)?;
            format!("{storage:?}").to_lowercase()
        }
    };

    // Each trained adapter in 8 bits with one scale per rank component: half its f16 size, and
    // every greedy answer still equal to the f32 adapter's up to the first near-tie (e2e test).
    let mut variants = vec![Variant { name: "base".into(), train_config: None }];
    if let Some(published) = &o.variants {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(published)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.join("adapter/adapter_model.safetensors").exists())
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        for dir in dirs {
            let name =
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let adapter = dir.join("adapter");
            let mut w = Weights::default();
            w.add_safetensors(&read(adapter.join(lora::WEIGHTS_FILE))?)
                .with_context(|| adapter.display().to_string())?;
            emit(
                &format!("adapters/{name}/adapter_model.safetensors"),
                &w.to_safetensors_as(Storage::Q8Vec)?,
            )?;
            emit(
                &format!("adapters/{name}/adapter_config.json"),
                &read(adapter.join(lora::CONFIG_FILE))?,
            )?;
            let train_config = std::fs::read(dir.join("train_config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            variants.push(Variant { name, train_config });
        }
    }
    let has_results = match &o.results {
        Some(p) if p.exists() => {
            emit("results.json", &read(p.clone())?)?;
            true
        }
        _ => false,
    };
    let manifest = Manifest {
        schema: SCHEMA.into(),
        storage,
        max_shard_bytes: o.max_shard_bytes,
        variants,
        results: has_results,
        files,
    };
    atomic_write(&out.join("manifest.json"), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_hash_after_the_stem() {
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            content_addressed("base/model.safetensors.part000", sha),
            "base/model.0123456789abcdef.safetensors.part000"
        );
        assert_eq!(content_addressed("results.json", sha), "results.0123456789abcdef.json");
        assert_eq!(
            content_addressed("adapters/x/adapter_config.json", sha),
            "adapters/x/adapter_config.0123456789abcdef.json"
        );
        assert_eq!(content_addressed("LICENSE", sha), "LICENSE.0123456789abcdef");
    }

    #[test]
    fn big_files_split_into_numbered_parts() {
        assert_eq!(shard_names("a.bin", 10, 10), vec!["a.bin"]);
        assert_eq!(shard_names("a.bin", 11, 10), vec!["a.bin.part000", "a.bin.part001"]);
    }
}
