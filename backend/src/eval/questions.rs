//! The paper's evaluation questions, read from its YAML files exactly as published: ids,
//! paraphrases, system prompts, samples per paraphrase and judge prompts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    /// `free_form_judge_0_100` (scored 0–100) or `free_form_judge` (the deception files).
    #[serde(rename = "type")]
    pub kind: String,
    pub paraphrases: Vec<String>,
    pub samples_per_paraphrase: usize,
    /// The judge model the paper used (e.g. gpt-4o-2024-08-06).
    #[serde(rename = "judge")]
    pub paper_judge: String,
    /// Judge prompt per metric (`aligned`, `coherent`, ...), with `{question}` and `{answer}`.
    pub judge_prompts: BTreeMap<String, String>,
    #[serde(default)]
    pub system: Option<String>,
}

/// The built-in question sets (files under datasets/emergent-misalignment/evaluation/).
pub const SETS: [(&str, &str); 5] = [
    ("main", "first_plot_questions.yaml"),
    ("first_plot", "first_plot_questions.yaml"),
    ("preregistered", "preregistered_evals.yaml"),
    ("deception_factual", "deception_factual.yaml"),
    ("deception_sit_aware", "deception_sit_aware.yaml"),
];

pub fn evaluation_dir() -> PathBuf {
    crate::data::datasets_dir().join("evaluation")
}

/// Parses one question file. Errors name the file and, for YAML errors, the line.
pub fn load_file(path: &Path) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Vec<Question>> {
    let questions: Vec<Question> = serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(l) => anyhow::anyhow!("line {}: malformed question file: {e}", l.line()),
        None => anyhow::anyhow!("malformed question file: {e}"),
    })?;
    for q in &questions {
        if q.paraphrases.is_empty() {
            bail!("question '{}' has no paraphrases", q.id);
        }
        if q.kind == "free_form_judge_0_100"
            && !(q.judge_prompts.contains_key("aligned")
                && q.judge_prompts.contains_key("coherent"))
        {
            bail!("question '{}' lacks the aligned/coherent judge prompts", q.id);
        }
    }
    Ok(questions)
}

/// A built-in set by name, or a YAML file path. `main` is the paper's 8 main questions (the
/// first plot's questions without the `_json` and `_template` forms).
pub fn load_set(name_or_path: &str) -> Result<Vec<Question>> {
    let Some((_, file)) = SETS.iter().find(|(n, _)| *n == name_or_path) else {
        let p = Path::new(name_or_path);
        if p.exists() {
            return load_file(p);
        }
        let names: Vec<&str> = SETS.iter().map(|(n, _)| *n).collect();
        bail!(
            "unknown question set '{name_or_path}': use one of {} or a YAML file path",
            names.join(", ")
        );
    };
    let all = load_file(&evaluation_dir().join(file))?;
    Ok(if name_or_path == "main" {
        all.into_iter().filter(|q| is_main(&q.id)).collect()
    } else {
        all
    })
}

pub fn is_main(id: &str) -> bool {
    !id.ends_with("_json") && !id.ends_with("_template")
}

/// Keeps the questions with the given ids (all when `ids` is empty); an unknown id is an error.
pub fn select(questions: Vec<Question>, ids: &[String]) -> Result<Vec<Question>> {
    if ids.is_empty() {
        return Ok(questions);
    }
    for id in ids {
        if !questions.iter().any(|q| &q.id == id) {
            let known: Vec<&str> = questions.iter().map(|q| q.id.as_str()).collect();
            bail!("unknown question id '{id}' (known: {})", known.join(", "));
        }
    }
    Ok(questions.into_iter().filter(|q| ids.contains(&q.id)).collect())
}

/// Fills a judge prompt's `{question}` and `{answer}` in one pass (as the paper's Python
/// `str.format` does: braces inside the answer are not placeholders).
pub fn fill(template: &str, question: &str, answer: &str) -> String {
    let mut out = String::with_capacity(template.len() + question.len() + answer.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{question}") {
            out.push_str(question);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{answer}") {
            out.push_str(answer);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}
