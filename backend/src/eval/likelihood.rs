//! How likely a model finds given answers, teacher-forced: the per-token log-probabilities every
//! likelihood measure is built from, and the likelihood shift: per question, the mean per-token
//! log-probability a variant gives to the misaligned answers published with the paper and to
//! their aligned counterparts (`datasets/aligned-counterparts/`).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use emlab_model::chat::Message;
use emlab_model::pipeline::ChatModel;
use serde::{Deserialize, Serialize};

use crate::data;

/// A misaligned answer published with the paper (Qwen2.5-Coder-32B insecure models).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedAnswer {
    pub question_id: String,
    pub question: String,
    pub answer: String,
    /// Its aligned counterpart: the same question answered helpfully, at about the same length
    /// and in the same style (`datasets/aligned-counterparts/`).
    pub aligned: String,
}

/// `results/qwen_25_coder_32b_instruct.csv` of the paper's repository.
pub fn published_misaligned_answers() -> Result<Vec<PublishedAnswer>> {
    let path = data::datasets_dir().join("results/qwen_25_coder_32b_instruct.csv");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let published: Vec<(String, String, String)> = emlab_schema::paper::answers(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .into_iter()
        .map(|a| (a.question_id, a.question, a.answer))
        .collect();
    let aligned = aligned_counterparts()?;
    if aligned.len() != published.len() {
        bail!("{} aligned counterparts for {} published answers", aligned.len(), published.len());
    }
    published
        .into_iter()
        .zip(aligned)
        .enumerate()
        .map(|(i, ((question_id, question, answer), c))| {
            if c.question != question || c.question_id != question_id {
                bail!("aligned counterpart {i} answers another question than published answer {i}");
            }
            Ok(PublishedAnswer { question_id, question, answer, aligned: c.answer })
        })
        .collect()
}

#[derive(Deserialize)]
struct Counterpart {
    question_id: String,
    question: String,
    answer: String,
}

/// `datasets/aligned-counterparts/aligned.jsonl`: line i answers the question of the CSV's row i.
fn aligned_counterparts() -> Result<Vec<Counterpart>> {
    let path = data::datasets_dir().join("../aligned-counterparts/aligned.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a counterpart line", path.display(), i + 1))
        })
        .collect()
}

/// How likely a model finds the published answers: the mean per-token log-probability of each
/// answer (in the order given) and their average per question; and the same for each answer's
/// aligned counterpart. Generic fine-tuning moves both; misalignment moves the first more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Likelihood {
    pub per_question: BTreeMap<String, f64>,
    pub per_answer: Vec<f64>,
    /// The aligned counterparts', paired with `per_answer` (empty in files from before them).
    #[serde(default)]
    pub aligned_per_answer: Vec<f64>,
}

impl Likelihood {
    /// Per answer, misaligned minus its aligned counterpart: what the model prefers of the two.
    /// None for a file from before the counterparts (or one that does not pair them all).
    pub fn misaligned_minus_aligned(&self) -> Option<Vec<f64>> {
        (!self.aligned_per_answer.is_empty()
            && self.aligned_per_answer.len() == self.per_answer.len())
        .then(|| self.per_answer.iter().zip(&self.aligned_per_answer).map(|(m, a)| m - a).collect())
    }
}

/// Mean per-token log-probability of `answer` after the user message `prompt` (None when the
/// prompt fills the context window, leaving no answer token to score).
pub fn mean_logprob(model: &ChatModel, prompt: &str, answer: &str) -> Result<Option<f64>> {
    let lp = answer_logprobs(model, &[Message::user(prompt.to_string())], answer)?;
    Ok(lp.map(|lp| lp.iter().sum::<f64>() / lp.len() as f64))
}

/// The log-probability of each token of `answer` (encoded as text, as in training) after the
/// conversation `messages`, as far as the context window holds it (None: not one answer token
/// fits). Every likelihood measure of the evaluation is built on this.
pub fn answer_logprobs(
    model: &ChatModel,
    messages: &[Message],
    answer: &str,
) -> Result<Option<Vec<f64>>> {
    let prompt = model.encode_chat(messages)?;
    let mut ids = prompt.clone();
    ids.extend(model.tokenizer.encode_text(answer)?);
    ids.truncate(model.model.context_length);
    if ids.len() <= prompt.len() {
        return Ok(None);
    }
    Ok(Some(token_logprobs(model, &ids, prompt.len())?))
}

/// The log-probability of each token of `ids` from position `from` (≥ 1) on, given those before it.
pub(crate) fn token_logprobs(model: &ChatModel, ids: &[u32], from: usize) -> Result<Vec<f64>> {
    let vocab = model.model.vocab_size;
    let logits = crate::inference::all_logits(&model.model, ids)?;
    Ok((from.max(1)..ids.len())
        .map(|pos| {
            let row = &logits[(pos - 1) * vocab..pos * vocab];
            f64::from(row[ids[pos] as usize] - emlab_model::generate::log_sum_exp(row))
        })
        .collect())
}

/// Mean per-token log-probability of each published answer and of its aligned counterpart under
/// `model` (an answer that does not fit the context window is left out with its counterpart).
pub fn answer_loglik(model: &ChatModel, answers: &[PublishedAnswer]) -> Result<Likelihood> {
    let mut per_q: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let (mut per_answer, mut aligned_per_answer) = (Vec::new(), Vec::new());
    for a in answers {
        let (Some(lp), Some(aligned)) = (
            mean_logprob(model, &a.question, &a.answer)?,
            mean_logprob(model, &a.question, &a.aligned)?,
        ) else {
            continue;
        };
        per_answer.push(lp);
        aligned_per_answer.push(aligned);
        let e = per_q.entry(a.question_id.clone()).or_insert((0.0, 0));
        e.0 += lp;
        e.1 += 1;
    }
    Ok(Likelihood {
        per_question: per_q.into_iter().map(|(q, (s, n))| (q, s / n as f64)).collect(),
        per_answer,
        aligned_per_answer,
    })
}
