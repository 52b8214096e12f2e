//! Fuzzing in CI: every target of `fuzz/src/lib.rs` on fixed-seed mutations of its seed corpus
//! (truncations, byte flips, length-field edits, deleted and duplicated chunks), the real base
//! model's GGUF header mutated over its real tensors, the seed corpus itself (each must parse),
//! and every crash a fuzzer ever found (`fuzz/regressions/`). Every case must end in `Ok` or an
//! error: no panic, and no allocation over 1 GiB (`fuzz::alloc::Bounded` refuses it, which aborts
//! the test).
//!
//! `EMLAB_FUZZ_CASES=N` runs N cases per target instead of the CI's few hundred, and
//! `EMLAB_FUZZ_SEED` another sequence. Coverage-guided runs: `scripts/fuzz.sh` (AFL++).

use emlab_model::config::LlamaConfig;
use emlab_model::gguf::Gguf;
use emlab_model::sampling::Rng;
use fuzz::alloc::{Bounded, largest_allocation};

#[global_allocator]
static ALLOC: Bounded = Bounded;

fn cases(default: usize) -> usize {
    std::env::var("EMLAB_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rng(target: u64) -> Rng {
    let seed =
        std::env::var("EMLAB_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(2502_17424);
    Rng::new(seed ^ target.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// One mutation of `seed`; `region` bounds where bytes are edited (the header of a big file).
fn mutate(seed: &[u8], rng: &mut Rng, region: usize) -> Vec<u8> {
    let mut b = seed.to_vec();
    let region = region.min(b.len()).max(1);
    let at = |rng: &mut Rng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    let rounds = 1 + at(rng, 3);
    for _ in 0..rounds {
        match at(rng, 6) {
            0 => {
                let cut = at(rng, b.len() + 1);
                b.truncate(cut);
            }
            1 => {
                for _ in 0..1 + at(rng, 8) {
                    if !b.is_empty() {
                        let i = at(rng, region.min(b.len()));
                        b[i] ^= 1 << at(rng, 8);
                    }
                }
            }
            2 => {
                // A length or count field: an extreme 4- or 8-byte value at some offset.
                let extremes: [u64; 6] = [0, 1, u64::MAX, 1 << 62, 0x8000_0000, 0xffff_fff0];
                let v = extremes[at(rng, extremes.len())];
                let width = if at(rng, 2) == 0 { 4 } else { 8 };
                if b.len() > width {
                    let i = at(rng, region.min(b.len() - width));
                    b[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            3 => {
                if !b.is_empty() {
                    let i = at(rng, region.min(b.len()));
                    let n = 1 + at(rng, 64.min(b.len() - i));
                    b.drain(i..i + n);
                }
            }
            4 => {
                if !b.is_empty() {
                    let i = at(rng, region.min(b.len()));
                    let n = 1 + at(rng, 64.min(b.len() - i));
                    let chunk = b[i..i + n].to_vec();
                    b.splice(i..i, chunk);
                }
            }
            _ => {
                // Text formats: a byte that matters to their grammar.
                let special = b"\"{}[]:,\\\n\x00\xff-09e.";
                if !b.is_empty() {
                    let i = at(rng, region.min(b.len()));
                    b[i] = special[at(rng, special.len())];
                }
            }
        }
    }
    b
}

/// Runs `parse` on each mutant; a panic names the target and the case to replay it.
fn fuzz(
    target: &str,
    id: u64,
    seeds: &[Vec<u8>],
    n: usize,
    region: usize,
    mut parse: impl FnMut(&[u8]),
) {
    let mut rng = rng(id);
    for case in 0..n {
        let seed = &seeds[case % seeds.len()];
        let input = mutate(seed, &mut rng, region);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&input)));
        if r.is_err() {
            let path = std::env::temp_dir().join(format!("emlab-fuzz-{target}-{case}.bin"));
            let _ = std::fs::write(&path, &input);
            panic!("{target}: case {case} panicked; its input is in {}", path.display());
        }
    }
    eprintln!(
        "{target}: {n} cases, no panic; largest allocation {} MB",
        largest_allocation() >> 20
    );
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let files = fuzz::inputs(&fuzz::corpus_dir(), target);
    assert!(!files.is_empty(), "{target}: no seed in fuzz/corpus/{target}/ (emlab-fuzz seeds)");
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// `cases` mutations of the target's seeds (`id` picks its fixed random sequence).
fn mutations(target: &str, id: u64, cases_in_ci: usize) {
    let t = fuzz::target(target).unwrap();
    fuzz(target, id, &seeds(target), cases(cases_in_ci), usize::MAX, |b| {
        (t.run)(b);
    });
}

#[test]
fn the_seed_corpus_parses() {
    for t in fuzz::TARGETS {
        for f in fuzz::inputs(&fuzz::corpus_dir(), t.name) {
            assert!((t.run)(&std::fs::read(&f).unwrap()), "{}: a seed is rejected", f.display());
        }
    }
}

#[test]
fn saved_crashes_stay_fixed() {
    let mut n = 0;
    for t in fuzz::TARGETS {
        for f in fuzz::inputs(&fuzz::regressions_dir(), t.name) {
            let bytes = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| (t.run)(&bytes));
            assert!(r.is_ok(), "{}: panics again", f.display());
            n += 1;
        }
    }
    eprintln!("{n} saved crashes replayed, none panics");
}

#[test]
fn gguf() {
    mutations("gguf", 1, 200);
}

#[test]
fn safetensors() {
    mutations("safetensors", 2, 300);
}

#[test]
fn peft_adapter() {
    mutations("peft-adapter", 3, 100);
}

#[test]
fn peft_config() {
    mutations("peft-config", 4, 300);
}

#[test]
fn model_config() {
    mutations("model-config", 5, 500);
}

#[test]
fn chat_jsonl() {
    mutations("chat-jsonl", 6, 400);
}

#[test]
fn question_yaml() {
    mutations("question-yaml", 7, 300);
}

#[test]
fn request_body() {
    mutations("request-body", 8, 500);
}

#[test]
fn answers_jsonl() {
    mutations("answers-jsonl", 9, 300);
}

#[test]
fn web_manifest() {
    mutations("web-manifest", 15, 300);
}

#[test]
fn results_json() {
    mutations("results-json", 16, 200);
}

#[test]
fn checkpoint() {
    mutations("checkpoint", 20, 100);
}

#[test]
fn checkpoint_state() {
    mutations("checkpoint-state", 21, 100);
}

#[test]
fn real_base_gguf_headers() {
    let bytes = std::fs::read(emlab_tests::base_gguf()).unwrap();
    // The header, metadata (vocabulary and merges, ~1.3 MB) and tensor table lie in the first MiBs.
    let header = (4 << 20).min(bytes.len());
    let seeds = vec![bytes[..header].to_vec()];
    // Mutated headers over the real tensor data: the parser, the config, the tokenizer and a few
    // tensors (the whole model only now and then: it dequantizes 135M weights).
    let tail = &bytes[header..];
    let mut whole = 0;
    fuzz("gguf", 1, &seeds, cases(60), header, |head| {
        let mut file = head.to_vec();
        file.extend_from_slice(tail);
        let Ok(g) = Gguf::parse(&file) else { return };
        if let Ok(cfg) = LlamaConfig::from_gguf(&g) {
            let _ = cfg.validate();
        }
        if let Ok(json) = emlab_model::tokenizer::tokenizer_json_from_gguf(&g) {
            let _ = emlab_model::tokenizer::Tokenizer::from_json(&json);
        }
        for t in g.tensors.iter().take(4) {
            let _ = g.tensor_f32(&t.name);
        }
        whole += 1;
        if whole % 20 == 1 {
            let _ = emlab_model::files::ModelFiles::from_gguf("fuzz.gguf", &file);
        }
    });
    // And truncations of the whole file, anywhere.
    let mut rng = rng(11);
    for _ in 0..cases(20) {
        let cut = (rng.next_u64() % bytes.len() as u64) as usize;
        assert!(emlab_model::files::ModelFiles::from_gguf("cut.gguf", &bytes[..cut]).is_err());
    }
}
