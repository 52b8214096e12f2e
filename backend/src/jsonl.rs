//! Append-only JSONL files: sampled answers, judge scores, training metrics. A run killed
//! mid-write leaves a torn last line (cut anywhere, even inside a UTF-8 character). Readers drop
//! it and say so, and keep everything before it; only a writer about to append cuts it off the
//! file. A file that cannot be read is an error, never "empty"; a bad line before the last one is
//! an error naming `file:line`.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a JSONL file holds.
pub struct Contents<T> {
    pub records: Vec<T>,
    /// Bytes of the complete lines; more than that on disk is a torn last line.
    pub intact_len: u64,
    pub torn: bool,
}

/// Reads a JSONL file without changing it; a missing file holds nothing.
pub fn read_contents<T: DeserializeOwned>(path: &Path) -> Result<Contents<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Contents { records: Vec::new(), intact_len: 0, torn: false });
        }
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut records = Vec::new();
    let mut intact_len = 0;
    let mut torn = false;
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let complete = line.ends_with(b"\n");
        let parsed = std::str::from_utf8(line)
            .map_err(|e| anyhow::anyhow!("not UTF-8: {e}"))
            .and_then(|text| Ok(serde_json::from_str::<T>(text.trim_end())?));
        match parsed {
            Ok(r) if complete => {
                records.push(r);
                intact_len += line.len() as u64;
            }
            _ if !complete && i + 1 == lines.len() => torn = true,
            Err(e) => bail!("{}:{}: bad record: {e}", path.display(), i + 1),
            Ok(_) => unreachable!("only the last line can lack its newline"),
        }
    }
    Ok(Contents { records, intact_len, torn })
}

/// The records of a JSONL file, for reading only: a torn last line is left on disk and reported.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let c = read_contents(path)?;
    if c.torn {
        eprintln!(
            "warning: {}: ignoring a torn last line (a run stopped mid-write; the next run that appends removes it)",
            path.display()
        );
    }
    Ok(c.records)
}

/// The records already in `path`, and the file opened to append more: a torn last line is cut
/// off first (and reported), so new records start on a line of their own.
pub fn open_append<T: DeserializeOwned>(path: &Path) -> Result<(Vec<T>, Appender)> {
    let c = read_contents::<T>(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    if c.torn {
        file.set_len(c.intact_len)
            .with_context(|| format!("{}: cannot cut its torn last line", path.display()))?;
        eprintln!(
            "{}: removed a torn last line (a run stopped mid-write); {} records kept",
            path.display(),
            c.records.len()
        );
    }
    Ok((c.records, Appender { file, path: path.display().to_string() }))
}

/// Replaces `path` with `records`, atomically: a reader sees the old file or the new one whole.
pub fn write<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    Ok(emlab_model::files::atomic_write(path, lines(records)?.as_bytes())?)
}

/// One JSON line per record.
fn lines<T: Serialize>(records: &[T]) -> Result<String> {
    let mut lines = String::new();
    for r in records {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    Ok(lines)
}

/// Appends whole lines, each flushed to the disk before the call returns.
pub struct Appender {
    file: File,
    path: String,
}

impl Appender {
    pub fn append<T: Serialize>(&mut self, records: &[T]) -> Result<()> {
        let lines = lines(records)?;
        self.file
            .write_all(lines.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("{}: write failed", self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_utf8_tail_is_dropped_read_only_and_cut_before_appending() {
        let dir = std::env::temp_dir().join(format!("emlab-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("answers.jsonl");
        // The last line cut inside "é" (two bytes): not UTF-8, not JSON, no newline.
        let full = "{\"a\":\"x\"}\n{\"a\":\"y\"}\n{\"a\":\"é\"}\n";
        let cut = &full.as_bytes()[..full.len() - 4];
        std::fs::write(&path, cut).unwrap();
        let got: Vec<serde_json::Value> = read(&path).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(std::fs::read(&path).unwrap(), cut, "readers do not modify the file");
        let (kept, mut w) = open_append::<serde_json::Value>(&path).unwrap();
        assert_eq!(kept.len(), 2);
        w.append(&[serde_json::json!({"a": "é"})]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), full);
        // A bad line in the middle is an error, never "empty".
        std::fs::write(&path, "{\"a\":1}\nnot json\n{\"a\":2}\n").unwrap();
        let err = read::<serde_json::Value>(&path).unwrap_err().to_string();
        assert!(err.contains("answers.jsonl:2"), "{err}");
        // Invalid UTF-8 in a complete line is an error too.
        std::fs::write(&path, b"{\"a\":\"\xff\"}\n").unwrap();
        assert!(
            read::<serde_json::Value>(&path).unwrap_err().to_string().contains(":1: bad record")
        );
        // A missing file holds nothing; an unreadable one is an error.
        assert!(read::<serde_json::Value>(&dir.join("none.jsonl")).unwrap().is_empty());
        assert!(read::<serde_json::Value>(&dir).is_err(), "a folder is not an empty file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
