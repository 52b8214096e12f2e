//! model-export: gets the base model, converts it, and packs adapters and web artifacts.

pub mod base;
pub mod convert;
pub mod merge;
pub mod publish;
pub mod web;

use indicatif::{ProgressBar, ProgressStyle};

pub use emlab_model::files::atomic_write;

/// A byte-counting progress bar on stderr (hidden when `show` is false).
pub fn progress_bytes(len: u64, what: &str, show: bool) -> ProgressBar {
    bar(len, what, show, "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
}

/// A counting progress bar on stderr (hidden when `show` is false).
pub fn progress_count(len: u64, what: &str, show: bool) -> ProgressBar {
    bar(len, what, show, "{msg:>10} [{bar:30}] {pos}/{len} eta {eta}")
}

fn bar(len: u64, what: &str, show: bool, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
