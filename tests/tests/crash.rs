//! Crash consistency: `emlab train` and `emlab eval sample` killed with SIGKILL at many moments
//! (during start-up, between steps, inside checkpoint and answer writes), each time run again
//! with the same command, end exactly where an uninterrupted run ends.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emlab_model::weights::Weights;
use emlab_tests::{
    TempDir, tiny_train_args, workspace_bin, write_chat_jsonl, write_tiny_model_dir,
};

/// Kills before letting a run finish: enough to land in every phase of these short runs.
const KILLS: usize = 12;

/// Runs `emlab args` to the end once and returns how long it took.
fn run_whole(args: &[String]) -> Duration {
    let start = Instant::now();
    let out = Command::new(workspace_bin("emlab")).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    start.elapsed()
}

/// Runs `emlab args` [`KILLS`] times, each killed with SIGKILL, then once more to the end; returns
/// how many runs were killed (one that finishes first is not). Every fourth run is killed early
/// (within the first 30% of `whole`: start-up, loading, resuming); the others once `progress`
/// (the size of a file the run appends to) has grown since they started, plus 0–20 ms, so that
/// each of them lands in the middle of the work and the runs get through all of it. The moments
/// come from a fixed pseudo-random sequence.
fn kill_repeatedly(args: &[String], whole: Duration, progress: impl Fn() -> u64) -> usize {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut killed = 0;
    for i in 0..KILLS {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        let started = progress();
        let mut child = Command::new(workspace_bin("emlab"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut kill_at = (i % 4 == 0).then(|| Instant::now() + whole.mul_f64(0.3 * u));
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "a run between kills failed: {status}");
                break;
            }
            if kill_at.is_none() && progress() > started {
                kill_at = Some(Instant::now() + Duration::from_micros((u * 20_000.0) as u64));
            }
            if kill_at.is_some_and(|t| Instant::now() >= t) {
                child.kill().unwrap(); // SIGKILL on Unix: nothing of the run goes on after it
                child.wait().unwrap();
                killed += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let out = Command::new(workspace_bin("emlab")).args(args).output().unwrap();
    assert!(out.status.success(), "the last run failed: {}", String::from_utf8_lossy(&out.stderr));
    killed
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn adapter(run: &Path) -> Weights {
    let mut w = Weights::default();
    w.add_safetensors(&std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap())
        .unwrap();
    w
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Training with a checkpoint after every step, killed again and again and resumed with
/// `--resume` each time, ends with the uninterrupted run's adapter (within 1e-5).
#[test]
fn training_killed_at_any_moment_resumes_to_the_same_adapter() {
    let tmp = TempDir::new("crash-train");
    let model = tmp.path().join("tiny");
    write_tiny_model_dir(&model, 6);
    let data = tmp.path().join("data.jsonl");
    write_chat_jsonl(&data, 15);
    let args = |out: &Path| {
        let mut a = tiny_train_args(&model, &data, out, "1");
        a.extend(["--resume", "--epochs", "2"]);
        strings(&a)
    };
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    let t = run_whole(&args(&whole));
    let kills = kill_repeatedly(&args(&killed), t, || file_len(&killed.join("metrics.jsonl")));
    eprintln!("{kills} of {KILLS} runs killed (an uninterrupted run: {t:?})");
    assert!(kills >= KILLS * 3 / 4, "too few runs were killed ({kills}) to test anything");

    let (a, b) = (adapter(&whole), adapter(&killed));
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    let mut max = 0f32;
    for (name, x) in &a.tensors {
        let y = &b.tensors[name];
        assert_eq!(x.shape, y.shape, "{name}");
        for (p, q) in x.data.iter().zip(&y.data) {
            max = max.max((p - q).abs());
        }
    }
    eprintln!("max |Δ| between the adapters: {max:e}");
    assert!(max <= 1e-5, "the resumed adapter differs from the uninterrupted one by {max}");
    let steps =
        |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(steps(&killed), steps(&whole), "one metrics line per step, none twice");
}

/// Sampling killed again and again, run again with the same command each time, ends with exactly
/// the uninterrupted run's answers: none twice, none lost, every line whole.
#[test]
fn sampling_killed_at_any_moment_ends_with_every_answer_once() {
    let tmp = TempDir::new("crash-sample");
    let model = tmp.path().join("tiny");
    write_tiny_model_dir(&model, 7);
    let args = |results: &Path| {
        let p = |p: &Path| p.to_str().unwrap().to_string();
        let mut a = strings(&["eval", "sample", "--variant", "base", "--quiet", "--ids"]);
        a.extend(strings(&["i_feel_bored,quick_buck", "--samples", "40", "--max-tokens", "8"]));
        a.extend(strings(&["--batch-size", "2", "--seed", "5", "--threads", "1"]));
        a.extend(["--model".into(), p(&model), "--results".into(), p(results)]);
        a
    };
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    let t = run_whole(&args(&whole));
    let answers_file = killed.join("answers/base.jsonl");
    let kills = kill_repeatedly(&args(&killed), t, || file_len(&answers_file));
    eprintln!("{kills} of {KILLS} runs killed (an uninterrupted run: {t:?})");
    assert!(kills >= KILLS * 3 / 4, "too few runs were killed ({kills}) to test anything");

    let answers = |results: &Path| -> Vec<(String, String)> {
        let text = std::fs::read_to_string(results.join("answers/base.jsonl")).unwrap();
        let mut rows: Vec<(String, String)> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("a line is not whole JSON ({e}): {l}"));
                let key = format!("{}/{}/{}", v["question_id"], v["paraphrase"], v["sample"]);
                (key, v["answer"].as_str().unwrap().to_string())
            })
            .collect();
        rows.sort();
        rows
    };
    let (a, b) = (answers(&whole), answers(&killed));
    assert_eq!(a.len(), 80, "2 questions × 40 samples");
    let mut keys: Vec<&String> = b.iter().map(|(k, _)| k).collect();
    keys.dedup();
    assert_eq!(keys.len(), b.len(), "an answer written twice");
    assert_eq!(a, b, "the killed-and-rerun file holds exactly the uninterrupted run's answers");
}
