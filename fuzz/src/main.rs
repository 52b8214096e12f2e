//! `emlab-fuzz`: the fuzz targets of `fuzz/src/lib.rs` as a command.
//!
//! - `emlab-fuzz list`: the targets.
//! - `emlab-fuzz seeds [DIR]`: writes the seed corpus (default `fuzz/corpus/`).
//! - `emlab-fuzz replay TARGET PATH...`: runs files (or folders of them) through a target.
//! - `emlab-fuzz run TARGET`: built with `--features afl` by `cargo afl build`, the AFL++
//!   harness (scripts/fuzz.sh starts it); without the feature, one input from stdin.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

// An allocation over 1 GiB aborts: to AFL, a crash to keep.
#[global_allocator]
static ALLOC: fuzz::alloc::Bounded = fuzz::alloc::Bounded;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = |name: Option<&String>| {
        let name = name.map(String::as_str).unwrap_or("");
        fuzz::target(name).with_context(|| {
            let names: Vec<_> = fuzz::TARGETS.iter().map(|t| t.name).collect();
            format!("unknown target '{name}' (targets: {})", names.join(", "))
        })
    };
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in fuzz::TARGETS {
                println!("{:<14} {}", t.name, t.input);
            }
        }
        Some("seeds") => {
            let out = args.get(1).map(PathBuf::from).unwrap_or_else(fuzz::corpus_dir);
            fuzz::seeds::write_corpus(&out, &emlab_tests::base_gguf())?;
            println!("seed corpus written to {}", out.display());
        }
        Some("replay") => {
            let t = target(args.get(1))?;
            let mut files = Vec::new();
            for p in args.iter().skip(2).map(PathBuf::from) {
                if p.is_dir() {
                    let mut more: Vec<_> = std::fs::read_dir(&p)?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file())
                        .collect();
                    more.sort();
                    files.extend(more);
                } else {
                    files.push(p);
                }
            }
            for f in files {
                let bytes = std::fs::read(&f).with_context(|| f.display().to_string())?;
                let accepted = (t.run)(&bytes);
                println!("{}: {}", f.display(), if accepted { "accepted" } else { "rejected" });
            }
        }
        Some("run") => {
            let t = target(args.get(1))?;
            run(t.run);
        }
        _ => bail!("usage: emlab-fuzz list | seeds [DIR] | replay TARGET PATH... | run TARGET"),
    }
    Ok(())
}

#[cfg(feature = "afl")]
fn run(f: fn(&[u8]) -> bool) {
    afl::fuzz!(|data: &[u8]| {
        f(data);
    });
}

#[cfg(not(feature = "afl"))]
fn run(f: fn(&[u8]) -> bool) {
    use std::io::Read;
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("reading stdin");
    f(&input);
}
