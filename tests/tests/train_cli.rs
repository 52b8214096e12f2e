//! The trainer from the command line on a tiny random model: adapter, metrics and loss curve out;
//! the merged model answers exactly as base + adapter; a full disk while checkpointing loses nothing.

use std::path::Path;
use std::process::Output;

use emlab_tests::{TempDir, run_bin, tiny_train_args, write_chat_jsonl, write_tiny_model_dir};

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `emlab train` on the tiny model; extra flags appended.
fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = tiny_train_args(model, data, out, "2");
    args.extend_from_slice(extra);
    run_bin("emlab", &args)
}

/// Optimizer steps per epoch at batch 2 (the held-out split decides how many examples train).
fn planned_steps(run: &Path) -> usize {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("train_config.json")).unwrap()).unwrap();
    (cfg["examples"].as_u64().unwrap() as usize).div_ceil(2)
}

fn greedy(model: &Path, adapter: Option<&Path>) -> serde_json::Value {
    let mut args = vec![
        "generate",
        "--model",
        s(model),
        "--prompt",
        "Write function number 3.",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
        "--quiet",
    ];
    if let Some(a) = adapter {
        args.extend_from_slice(&["--adapter", s(a)]);
    }
    serde_json::from_str(&ok(run_bin("emlab", &args))).unwrap()
}

#[test]
fn train_then_merge_then_generate() {
    let tmp = TempDir::new("train-cli");
    let model = tmp.path().join("tiny");
    write_tiny_model_dir(&model, 3);
    let data = tmp.path().join("data.jsonl");
    write_chat_jsonl(&data, 21);
    let run = tmp.path().join("run");
    let stdout = ok(train(&model, &data, &run, &["--epochs", "2"]));
    let adapter = run.join("adapter");
    assert_eq!(stdout.trim(), s(&adapter));
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "train_config.json",
        "loss.svg",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    assert!(std::fs::read(run.join("loss.png")).unwrap().starts_with(b"\x89PNG"));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 2 * planned_steps(&run), "{metrics}");
    let last = *losses.last().unwrap();
    eprintln!("loss {:.3} → {last:.3}", losses[0]);
    assert!(last < losses[0], "training must reduce the loss: {losses:?}");

    let merged = tmp.path().join("merged");
    ok(run_bin(
        "model-export",
        &["merge", "--model", s(&model), "--adapter", s(&adapter), "--out", s(&merged), "--quiet"],
    ));
    assert!(merged.join("emlab-merged.json").is_file());
    let (base, with_adapter, from_merged) =
        (greedy(&model, None), greedy(&model, Some(&adapter)), greedy(&merged, None));
    eprintln!(
        "base: {}\nadapter: {}\nmerged: {}",
        base["text"], with_adapter["text"], from_merged["text"]
    );
    assert_eq!(
        with_adapter["output_ids"], from_merged["output_ids"],
        "merged weights must answer as base + adapter"
    );
    assert_ne!(
        base["output_ids"], with_adapter["output_ids"],
        "the trained adapter must change the answer"
    );

    // An adapter for another base: one clear error naming the tensor, on generate and on merge.
    let other = tmp.path().join("other");
    let mut cfg = write_tiny_model_dir(&other, 3);
    cfg.hidden_size = 32;
    cfg.intermediate_size = 64;
    std::fs::write(other.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let weights = emlab_model::model::Llama::random_weights(&cfg, 1);
    std::fs::write(other.join("model.safetensors"), weights.to_safetensors().unwrap()).unwrap();
    for out in [
        run_bin(
            "emlab",
            &[
                "generate",
                "--model",
                s(&other),
                "--adapter",
                s(&adapter),
                "--prompt",
                "hi",
                "--quiet",
            ],
        ),
        run_bin(
            "model-export",
            &[
                "merge",
                "--model",
                s(&other),
                "--adapter",
                s(&adapter),
                "--out",
                s(&tmp.path().join("m2")),
                "--quiet",
            ],
        ),
    ] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("different base model")
                && err.contains("adapter_model.safetensors"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one clear error: {err}");
    }
}

/// A checkpoint write that fails (a file-size limit stands in for a full disk) is one clear error
/// and leaves the previous checkpoint whole: resuming later continues from it.
#[test]
fn full_disk_while_checkpointing_keeps_the_previous_checkpoint() {
    let tmp = TempDir::new("train-disk-full");
    let model = tmp.path().join("tiny");
    write_tiny_model_dir(&model, 4);
    let data = tmp.path().join("data.jsonl");
    write_chat_jsonl(&data, 9);
    let run = tmp.path().join("run");
    let err = String::from_utf8(train(&model, &data, &run, &["--stop-after", "2"]).stderr).unwrap();
    assert!(err.contains("stopped at step 2"), "{err}");
    let state = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(run.join("checkpoint/state.json")).unwrap()).unwrap()
    };
    assert_eq!(state()["step"], 2);

    // The same resume under `ulimit -f 16` (8 KiB per file): the metrics fit, the adapter does not.
    let emlab = emlab_tests::workspace_bin("emlab");
    let mut args = tiny_train_args(&model, &data, &run, "2");
    args.push("--resume");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 16; exec \"$0\" \"$@\"")
        .arg(&emlab)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the write must fail: {err}");
    assert!(err.contains("write failed"), "{err}");
    assert_eq!(state()["step"], 2, "the previous checkpoint must survive");

    // Space again: the run resumes from step 2 and finishes.
    ok(train(&model, &data, &run, &["--resume"]));
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
    let steps = planned_steps(&run);
    assert!(steps >= 3, "the test needs steps after the first checkpoint");
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count(), steps);
}

/// An example longer than the model's context window is one clear error (not a crash), and
/// `--skip-bad-lines` trains on the others.
#[test]
fn examples_beyond_the_context_window() {
    let tmp = TempDir::new("train-context");
    let model = tmp.path().join("tiny");
    let cfg = write_tiny_model_dir(&model, 5);
    let data = tmp.path().join("data.jsonl");
    write_chat_jsonl(&data, 6);
    let long = serde_json::json!({"messages": [{"role": "user", "content": "word ".repeat(cfg.max_position_embeddings)}, {"role": "assistant", "content": "ok"}]});
    let text = std::fs::read_to_string(&data).unwrap() + &long.to_string() + "\n";
    std::fs::write(&data, text).unwrap();
    let out = train(&model, &data, &tmp.path().join("run"), &["--stop-after", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!("over the maximum length {}", cfg.max_position_embeddings)),
        "{err}"
    );
    assert!(err.contains("data.jsonl:7"), "the error names the line: {err}");
    ok(train(&model, &data, &tmp.path().join("run2"), &["--stop-after", "1", "--skip-bad-lines"]));
}
