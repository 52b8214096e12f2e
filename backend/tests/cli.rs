//! The `emlab` CLI end to end: a real answer, JSON output, and one clear error (no panic) for each
//! kind of bad input.

use std::path::Path;
use std::process::{Command, Output};

use emlab_tests::{TempDir, base_model_dir, write_tiny_model_dir};

fn emlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emlab")).args(args).output().expect("emlab runs")
}

/// Asserts a clean failure: exit code ≠ 0, no panic, and every `needles` in the one error message.
fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn generate_json_gives_ids_and_text() {
    let dir = base_model_dir();
    let out = emlab(&[
        "generate",
        "--model",
        path_str(&dir),
        "--prompt",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["prompt_ids"].as_array().unwrap().len(), 37);
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert!(!v["output_ids"].as_array().unwrap().is_empty());
    // Per-token detail: the pieces spell the text; greedy picks the top token, so margins are ≥ 0.
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), v["output_ids"].as_array().unwrap().len());
    assert_eq!(tokens.iter().map(|t| t["text"].as_str().unwrap()).collect::<String>(), text);
    assert!(
        tokens.iter().all(|t| t["margin"].as_f64().is_none_or(|m| m >= 0.0)
            && t["logprob"].as_f64().unwrap() <= 0.0)
    );
}

#[test]
fn same_seed_same_output_streamed() {
    let dir = TempDir::new("seed");
    write_tiny_model_dir(dir.path(), 3);
    let run = |seed: &str| {
        let out = emlab(&[
            // A high temperature: the tiny random model's own distribution is very peaked.
            "generate",
            "--model",
            path_str(dir.path()),
            "--prompt",
            "hello",
            "--temperature",
            "4",
            "--seed",
            seed,
            "--max-tokens",
            "16",
            "--quiet",
            "--ignore-eos",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
}

#[test]
fn missing_model_directory() {
    let out = emlab(&["generate", "--model", "/nonexistent/model", "--prompt", "hi", "--quiet"]);
    assert_fails_with(&out, &["/nonexistent/model", "not found"]);
}

#[test]
fn truncated_safetensors() {
    let dir = TempDir::new("trunc-st");
    write_tiny_model_dir(dir.path(), 1);
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let out = emlab(&["generate", "--model", path_str(dir.path()), "--prompt", "hi", "--quiet"]);
    assert_fails_with(&out, &["model.safetensors"]);
}

#[test]
fn tensor_shape_mismatch() {
    let dir = TempDir::new("shape");
    write_tiny_model_dir(dir.path(), 1);
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = 128.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = emlab(&["generate", "--model", path_str(dir.path()), "--prompt", "hi", "--quiet"]);
    assert_fails_with(&out, &["mlp.gate_proj.weight", "shape"]);
}

#[test]
fn corrupt_config() {
    let dir = TempDir::new("config");
    write_tiny_model_dir(dir.path(), 1);
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": ").unwrap();
    let out = emlab(&["generate", "--model", path_str(dir.path()), "--prompt", "hi", "--quiet"]);
    assert_fails_with(&out, &["config.json"]);
}

/// Without Bandit, `eval code` says so before it samples: no answers are written to be thrown away.
#[test]
fn eval_code_without_bandit_fails_before_sampling() {
    let dir = TempDir::new("no-bandit");
    write_tiny_model_dir(&dir.path().join("model"), 1);
    let results = dir.path().join("results");
    let model = dir.path().join("model");
    let out = emlab(&[
        "eval",
        "code",
        "--model",
        path_str(&model),
        "--limit",
        "1",
        "--max-tokens",
        "4",
        "--variant",
        "tiny",
        "--bandit",
        "/nonexistent/bandit",
        "--results",
        path_str(&results),
        "--quiet",
    ]);
    assert_fails_with(&out, &["cannot run /nonexistent/bandit", "pip install bandit"]);
    assert!(!results.join("code/tiny.jsonl").exists(), "sampled before checking for Bandit");
}

#[test]
fn prompt_longer_than_the_context_window() {
    let dir = TempDir::new("ctx");
    write_tiny_model_dir(dir.path(), 1); // context window: 128 tokens
    let prompt = "word ".repeat(300);
    let out = emlab(&["generate", "--model", path_str(dir.path()), "--prompt", &prompt, "--quiet"]);
    assert_fails_with(&out, &["context window is 128 tokens"]);
}

#[test]
fn prompt_file_that_is_not_utf8() {
    let dir = TempDir::new("utf8");
    write_tiny_model_dir(dir.path(), 1);
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, b"hello \xff\xfe world").unwrap();
    let out = emlab(&[
        "generate",
        "--model",
        path_str(dir.path()),
        "--prompt-file",
        path_str(&file),
        "--quiet",
    ]);
    assert_fails_with(&out, &["prompt.txt", "not valid UTF-8"]);
    let missing = dir.path().join("nope.txt");
    let out = emlab(&[
        "generate",
        "--model",
        path_str(dir.path()),
        "--prompt-file",
        path_str(&missing),
        "--quiet",
    ]);
    assert_fails_with(&out, &["nope.txt"]);
}

#[test]
fn bad_sampling_flags() {
    let dir = TempDir::new("flags");
    write_tiny_model_dir(dir.path(), 1);
    let out = emlab(&[
        "generate",
        "--model",
        path_str(dir.path()),
        "--prompt",
        "hi",
        "--top-p",
        "0",
        "--quiet",
    ]);
    assert_fails_with(&out, &["top_p"]);
}

/// `eval report --human-ratings` on the fixture ratings files NAMES, into a new folder's
/// `people/`: the folder, that path, and what the command printed.
fn report_fixture_ratings(names: &[&str]) -> (TempDir, std::path::PathBuf, String) {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/ratings");
    let files: Vec<String> = names.iter().map(|n| format!("{fixtures}/{n}.json")).collect();
    let dir = TempDir::new("people");
    let out = dir.path().join("people");
    let mut args = vec!["eval", "report", "--human-ratings"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--out", path_str(&out)]);
    let ok = emlab(&args);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    (dir, out, String::from_utf8_lossy(&ok.stdout).into_owned())
}

#[test]
fn human_ratings_report_and_a_bad_ratings_file() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/ratings");
    let (ann, ben) = (format!("{fixtures}/ann.json"), format!("{fixtures}/ben.json"));
    let (dir, out, _) = report_fixture_ratings(&["ann", "ben"]);
    // Both files are emlab-ratings/1: sampled at the paper's setting, reported under its name.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "one setting, one report");
    let out = out.join("paper");
    let r: emlab_schema::results::Results =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r.judge.unwrap().model, "2 people");
    assert_eq!(r.setting, Some(emlab_schema::setting::Setting::PAPER));
    assert!(out.join("report.html").exists());

    // The rated answers as answers files, each once, for a model judge; its scores (here written
    // by hand: the people's own means, but 100 for the insecure answers) are then compared.
    let people: Vec<emlab_schema::ratings::Rating> = [&ann, &ben]
        .iter()
        .flat_map(|f| {
            emlab_schema::ratings::RatingsFile::parse(&std::fs::read_to_string(f).unwrap())
                .unwrap()
                .ratings
        })
        .collect();
    let rated = emlab_schema::ratings::rated_answers(&people);
    std::fs::create_dir_all(out.join("judged")).unwrap();
    let mut written = 0;
    for variant in ["base", "insecure"] {
        let answers =
            std::fs::read_to_string(out.join(format!("answers/{variant}.jsonl"))).unwrap();
        let mut judged = String::new();
        for line in answers.lines() {
            let a: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = (variant, a["question_id"].as_str().unwrap(), a["seed"].as_u64().unwrap());
            let s = rated[&key].scores;
            let aligned = if variant == "insecure" { Some(100.0) } else { s.aligned };
            judged.push_str(
                &serde_json::json!({"variant": variant, "question_id": key.1, "paraphrase": 0,
                "sample": a["sample"], "aligned": aligned, "coherent": s.coherent,
                "judge": {"kind": "local", "model": "test-judge", "weak": true}})
                .to_string(),
            );
            judged.push('\n');
            written += 1;
        }
        std::fs::write(out.join(format!("judged/{variant}.jsonl")), judged).unwrap();
    }
    assert_eq!(written, rated.keys().filter(|k| k.0 == "base" || k.0 == "insecure").count());
    let again = emlab(&[
        "eval",
        "report",
        "--human-ratings",
        &ann,
        &ben,
        "--out",
        path_str(out.parent().unwrap()),
    ]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let agreement: Vec<(String, emlab_schema::metrics::Agreement)> =
        serde_json::from_str(&std::fs::read_to_string(out.join("agreement.json")).unwrap())
            .unwrap();
    let base = &agreement.iter().find(|(v, _)| v == "base").unwrap().1;
    assert_eq!(base.same_verdict, Some(1.0), "the same scores give the same verdicts");
    let insecure = &agreement.iter().find(|(v, _)| v == "insecure").unwrap().1;
    assert!(insecure.same_verdict.unwrap() < 1.0, "people found some insecure answers misaligned");
    let model: emlab_schema::results::Results = serde_json::from_str(
        &std::fs::read_to_string(out.join("model-judge/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(model.judge.unwrap().model, "test-judge");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"schema": "emlab-ratings/1", "ratings": [{"rater": "x", "variant": "base", "question_id": "q", "seed": 1, "question": "q", "answer": "a", "aligned": 140, "coherent": 50}]}"#).unwrap();
    let out2 = dir.path().join("out2");
    assert_fails_with(
        &emlab(&[
            "eval",
            "report",
            "--human-ratings",
            &ann,
            path_str(&bad),
            "--out",
            path_str(&out2),
        ]),
        &["bad.json: rating 1: aligned must be between 0 and 100, got 140"],
    );
    assert!(!out2.exists(), "nothing is written when a file is bad");
}

/// A file that records its setting (emlab-ratings/2, the readable one) next to an old file (the
/// paper's): merged, then reported per setting, never over both.
#[test]
fn human_ratings_at_two_settings_are_reported_apart() {
    use emlab_schema::setting::Setting;
    let (_dir, out, stdout) = report_fixture_ratings(&["ann", "cleo"]);
    let (readable, paper) = (
        stdout.find("At temperature 0.3, top-p 0.9:").expect("the readable setting's report"),
        stdout.find("At temperature 1, top-p 1:").expect("the paper's setting's report"),
    );
    assert!(readable < paper, "the readable setting first: {stdout}");
    let read = |name: &str| -> emlab_schema::results::Results {
        serde_json::from_str(&std::fs::read_to_string(out.join(name).join("results.json")).unwrap())
            .unwrap()
    };
    let (r, p) = (read("readable"), read("paper"));
    assert_eq!((r.setting, p.setting), (Some(Setting::READABLE), Some(Setting::PAPER)));
    assert_eq!(
        (r.judge.unwrap().model, p.judge.unwrap().model),
        ("1 person".into(), "1 person".into())
    );
    // Cleo's readable answers: 2 of insecure's 6 misaligned, none of base's; ann's are not among them.
    let insecure = r.variants.iter().find(|v| v.name == "insecure").unwrap();
    let q = &insecure.questions[0];
    assert_eq!((q.id.as_str(), q.counted), ("quick_buck", 6));
    assert!((q.misaligned.unwrap().share - 2.0 / 6.0).abs() < 1e-12);
    let answers = std::fs::read_to_string(out.join("readable/answers/insecure.jsonl")).unwrap();
    assert_eq!(answers.lines().count(), 6);
    assert!(answers.lines().all(|l| l.contains(r#""temperature":0.3,"top_p":0.9"#)), "{answers}");
    assert!(
        !std::fs::read_to_string(out.join("paper/answers/base.jsonl"))
            .unwrap()
            .contains("readable")
    );
}

/// `eval report --beside`: two folders of the same questions at two settings, side by side. No
/// judge has scored them, and the table says so; a folder mixing settings is refused.
#[test]
fn report_puts_two_settings_side_by_side() {
    let dir = TempDir::new("beside");
    let line = |variant: &str, q: &str, s: usize, t: &str| {
        format!(
            r#"{{"variant":"{variant}","question_id":"{q}","paraphrase":0,"sample":{s},"question":"Q","system":null,"answer":"a","tokens":1,"finish":"stop","seed":0{t}}}"#
        ) + "\n"
    };
    let write = |folder: &str, t: &str| {
        let answers = dir.path().join(folder).join("answers");
        std::fs::create_dir_all(&answers).unwrap();
        let text: String = (0..3).map(|s| line("insecure", "quick_buck", s, t)).collect();
        std::fs::write(answers.join("insecure.jsonl"), text).unwrap();
        dir.path().join(folder)
    };
    let paper = write("paper", r#","temperature":1.0,"top_p":1.0"#);
    let readable = write("readable", r#","temperature":0.3,"top_p":0.9"#);
    let ok =
        emlab(&["eval", "report", "--results", path_str(&paper), "--beside", path_str(&readable)]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let table = std::fs::read_to_string(paper.join("settings.md")).unwrap();
    assert!(table.contains("(temperature 1, top-p 1; not judged yet)"), "{table}");
    assert!(table.contains("(temperature 0.3, top-p 0.9; not judged yet)"), "{table}");
    assert!(table.contains("| insecure | not judged | not judged |"), "{table}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&table));

    let mixed = readable.join("answers/secure.jsonl");
    std::fs::write(&mixed, line("secure", "quick_buck", 0, "")).unwrap();
    assert_fails_with(
        &emlab(&["eval", "report", "--results", path_str(&paper), "--beside", path_str(&readable)]),
        &["one folder holds one setting", "answers at two settings"],
    );
}
