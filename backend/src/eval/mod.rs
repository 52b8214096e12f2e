//! Evaluation as in the paper: questions → sampled answers → judge scores → misalignment rates,
//! charts and a report. Each stage appends to a JSONL file and resumes from it.

pub mod code;
pub mod judge;
pub mod metrics;
pub mod questions;
pub mod report;
pub mod sample;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use judge::{Judge, JudgeInfo};
use questions::Question;
use sample::Answer;

/// Reads a JSONL file of records. A torn last line (a kill mid-write) is cut off the file; any
/// other bad line is an error naming `file:line`. A missing file is empty.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    let mut good_len = 0;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<T>(line.trim_end()) {
            Ok(r) if line.ends_with('\n') => {
                out.push(r);
                good_len += line.len();
            }
            _ if i + 1 == lines.len() => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(good_len as u64))
                    .with_context(|| format!("{}: cannot truncate a torn last line", path.display()))?;
            }
            Err(e) => bail!("{}:{}: bad record: {e}", path.display(), i + 1),
            Ok(_) => unreachable!("only the last line can lack its newline"),
        }
    }
    Ok(out)
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
    let existing: Vec<Judged> = read_jsonl(path)?;
    let info = judge.info();
    let done: HashSet<(String, String, usize, usize)> = existing
        .iter()
        .filter(|j| j.judge == info)
        .map(|j| (j.variant.clone(), j.question_id.clone(), j.paraphrase, j.sample))
        .collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("{}: cannot open", path.display()))?;
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
        writeln!(file, "{}", serde_json::to_string(&j)?).with_context(|| format!("{}: write failed", path.display()))?;
        on_progress(count);
    }
    Ok(count)
}
