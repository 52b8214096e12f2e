//! `manifest.json` of the web export (schema `emlab-web/1`): every file the page may download,
//! with its size and sha256, and the variants it ships.

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "emlab-web/1";

/// The largest file and the largest download a manifest may name: far above the site's (24 MiB
/// files, ~170 MB in all), far below what would exhaust a tab's memory.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
pub const MAX_TOTAL_BYTES: u64 = 2 << 30;

/// A digest as the manifest (and every checksum this project writes) records it: lowercase hex.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    /// How the base weights are stored (`gguf`, `q8`, `f16`, ...).
    #[serde(default)]
    pub storage: String,
    #[serde(default)]
    pub max_shard_bytes: usize,
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// Whether `results.json` is among the files.
    #[serde(default)]
    pub results: bool,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    /// The run's `train_config.json`, as written by `emlab train` (absent for base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's logical name (`base/model.safetensors.part000`).
    pub name: String,
    /// Where it is stored, relative to the manifest: the name with its hash in it
    /// (content-addressed, so caches never mix releases). Older manifests lack it.
    #[serde(default)]
    pub path: Option<String>,
    pub bytes: u64,
    pub sha256: String,
}

impl Manifest {
    /// Checks what the page is about to trust: sizes within bounds, hashes well formed, paths
    /// that stay below the manifest's folder.
    pub fn check(&self) -> Result<(), String> {
        let mut total = 0u64;
        for f in &self.files {
            let bad = |why: &str| Err(format!("manifest.json: {}: {why}", f.name));
            if f.bytes > MAX_FILE_BYTES {
                return bad(&format!(
                    "{} bytes, more than a model file can be ({MAX_FILE_BYTES})",
                    f.bytes
                ));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad("not a sha256");
            }
            if let Err(why) = f.relative_path() {
                return bad(&why);
            }
            total = total.saturating_add(f.bytes);
        }
        if total > MAX_TOTAL_BYTES {
            return Err(format!(
                "manifest.json: {total} bytes in all, more than a model download can be ({MAX_TOTAL_BYTES})"
            ));
        }
        Ok(())
    }

    /// The size of every file together: what a first visit downloads.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// How many times a path is percent-decoded before it is judged: `%252e` is `%2e` once decoded,
/// and a host may decode again.
const DECODE_ROUNDS: usize = 3;

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FileEntry {
    /// The file's path below the manifest's folder, refused when any spelling of it leaves the
    /// folder: browsers read `%2e%2e` as `..` and `\` as `/`, so the path is judged as each
    /// round of percent-decoding and with backslashes as slashes, not as written.
    pub fn relative_path(&self) -> Result<&str, String> {
        let path = self.path.as_deref().unwrap_or(&self.name);
        let mut spelling = path.to_string();
        for _ in 0..=DECODE_ROUNDS {
            let s = spelling.replace('\\', "/");
            if s.starts_with('/')
                || s.split('/').any(|p| p == ".." || p == "." || p.is_empty())
                || s.contains(':')
                || s.contains(['?', '#'])
                || s.chars().any(char::is_control)
            {
                return Err(format!("a path outside the model folder ({path})"));
            }
            let decoded = percent_decode(&spelling);
            if decoded == spelling {
                break;
            }
            spelling = decoded;
        }
        Ok(path)
    }

    /// The file's address below `base` as the manifest spells it; the page resolves it and checks
    /// that the result is still inside `base` (see the loader) before fetching it.
    pub fn url(&self, base: &str) -> String {
        format!("{}/{}", base.trim_end_matches('/'), self.path.as_deref().unwrap_or(&self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, bytes: u64) -> FileEntry {
        FileEntry { name: "f".into(), path: Some(path.into()), bytes, sha256: "ab".repeat(32) }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            schema: SCHEMA.into(),
            storage: "gguf".into(),
            max_shard_bytes: 1 << 24,
            variants: Vec::new(),
            results: false,
            files,
        }
    }

    #[test]
    fn check_refuses_what_the_page_must_not_trust() {
        assert_eq!(manifest(vec![entry("base/a.bin", 10)]).check(), Ok(()));
        for bad in ["../a", "/etc/passwd", "a//b", "https://x/a", "a/../../b"] {
            assert!(manifest(vec![entry(bad, 1)]).check().is_err(), "{bad}");
        }
        // Spellings a browser resolves to a parent folder.
        for bad in [
            "%2e%2e/secret.bin",
            "%2E%2E/secret.bin",
            "base/%2e%2e/%2e%2e/secret.bin",
            "..\\secret.bin",
            "base\\..\\..\\secret.bin",
            "%5c..%5csecret.bin",
            "%252e%252e/secret.bin",
            "%2fetc/passwd",
            ".%2e/secret.bin",
            "base/./a.bin",
        ] {
            let e = manifest(vec![entry(bad, 1)]).check().unwrap_err();
            assert!(e.contains("outside the model folder"), "{bad}: {e}");
        }
        assert_eq!(manifest(vec![entry("base/a%20b.bin", 1)]).check(), Ok(()));
        assert!(manifest(vec![entry("a", MAX_FILE_BYTES + 1)]).check().is_err());
        let many = (0..3).map(|_| entry("a", MAX_FILE_BYTES)).collect();
        assert!(manifest(many).check().unwrap_err().contains("in all"));
        let mut e = entry("a", 1);
        e.sha256 = "xyz".into();
        assert!(manifest(vec![e]).check().is_err());
    }

    #[test]
    fn a_manifest_round_trips_and_urls_use_the_content_addressed_path() {
        let m = manifest(vec![entry("base/a.0123.bin", 10)]);
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.files[0].url("https://x/models/"), "https://x/models/base/a.0123.bin");
        assert_eq!(m.total_bytes(), 10);
    }
}
