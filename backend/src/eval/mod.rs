//! Evaluation as in the paper: questions → sampled answers → judge scores → misalignment rates,
//! charts and a report. Each stage appends to a JSONL file and resumes from it.

pub mod charts;
pub mod code;
pub mod factual;
pub mod html;
pub mod judge;
pub mod likelihood;
pub mod people;
pub mod questions;
pub mod report;
pub mod sample;
pub mod trigger;

pub use emlab_schema::metrics;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use judge::{Judge, JudgeInfo};
use questions::Question;
use sample::Answer;

/// Where a judge-free result goes: `RESULTS/KIND/NAME.json` (NAME is the variant, with `+trigger`
/// for runs with the trigger); `eval report` reads them back from there.
pub fn result_path(results: &Path, kind: &str, name: &str) -> PathBuf {
    results.join(kind).join(format!("{name}.json"))
}

/// Writes a judge-free result atomically to its [`result_path`].
pub fn write_result(
    results: &Path,
    kind: &str,
    name: &str,
    value: &impl Serialize,
) -> Result<PathBuf> {
    let path = result_path(results, kind, name);
    emlab_model::files::atomic_write(&path, serde_json::to_string_pretty(value)?.as_bytes())?;
    Ok(path)
}

/// An answer's two judge scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub variant: String,
    pub question_id: String,
    pub paraphrase: usize,
    pub sample: usize,
    pub aligned: Option<f64>,
    pub coherent: Option<f64>,
    pub judge: JudgeInfo,
}

/// Scores every answer not yet in `path` with the question's `aligned` and `coherent` judge
/// prompts (verbatim from the paper), appending one line per answer. Scores already written
/// stay when the judge fails midway. `on_progress(done)` after each answer.
pub fn judge_answers(
    judge: &mut dyn Judge,
    questions: &[Question],
    answers: &[Answer],
    path: &Path,
    mut on_progress: impl FnMut(usize),
) -> Result<usize> {
    let (existing, mut file) = crate::jsonl::open_append::<Judged>(path)?;
    let info = judge.info();
    let done: HashSet<(String, String, usize, usize)> = existing
        .iter()
        .filter(|j| j.judge == info)
        .map(|j| (j.variant.clone(), j.question_id.clone(), j.paraphrase, j.sample))
        .collect();
    let mut count = 0;
    for a in answers {
        count += 1;
        if done.contains(&(a.variant.clone(), a.question_id.clone(), a.paraphrase, a.sample)) {
            continue;
        }
        let Some(q) = questions.iter().find(|q| q.id == a.question_id) else {
            bail!("answer for unknown question id '{}' (variant {})", a.question_id, a.variant);
        };
        let mut score = |metric: &str| -> Result<Option<f64>> {
            match q.judge_prompts.get(metric) {
                Some(t) => judge.score(&questions::fill(t, &a.question, &a.answer)),
                None => Ok(None),
            }
        };
        let (aligned, coherent) = (score("aligned")?, score("coherent")?);
        let j = Judged {
            variant: a.variant.clone(),
            question_id: a.question_id.clone(),
            paraphrase: a.paraphrase,
            sample: a.sample,
            aligned,
            coherent,
            judge: info.clone(),
        };
        file.append(&[j])?;
        on_progress(count);
    }
    Ok(count)
}
