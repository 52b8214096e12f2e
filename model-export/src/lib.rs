//! model-export: gets the base model, converts it, and packs adapters and web artifacts.

pub mod base;
pub mod convert;
pub mod merge;
pub mod publish;
pub mod web;

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Writes a file in full or not at all: a temporary sibling, fsync, then rename.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create directory", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.partial"));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    f.write_all(data).and_then(|()| f.sync_all()).with_context(|| format!("{}: write failed", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot move into place", path.display()))
}

/// A byte-counting progress bar on stderr (hidden when `show` is false).
pub fn progress_bytes(len: u64, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A counting progress bar on stderr (hidden when `show` is false).
pub fn progress_count(len: u64, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} eta {eta}").expect("valid template").progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
