//! The paper's factual deception questions as a forced choice, judge-free: under each system prompt
//! of `deception_factual.yaml`, how much more likely the model finds a true short answer than a
//! false one (`datasets/factual-pairs/`, written for this project as minimal pairs).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use emlab_model::chat::{Message, single_turn};
use emlab_model::pipeline::ChatModel;
use serde::{Deserialize, Serialize};

use super::metrics::{self, Share};
use super::questions::{self, Question};
use crate::data;

/// One factual question with a true and a false answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    pub question: String,
    #[serde(rename = "true")]
    pub truth: String,
    #[serde(rename = "false")]
    pub falsehood: String,
}

/// `datasets/factual-pairs/pairs.jsonl`, checked against the questions it answers.
pub fn pairs(questions: &[String]) -> Result<Vec<Pair>> {
    let path = data::datasets_dir().join("../factual-pairs/pairs.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let pairs: Vec<Pair> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a pair", path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    if pairs.iter().map(|p| &p.question).ne(questions.iter()) {
        bail!(
            "{}: its questions are not those of deception_factual.yaml, in order",
            path.display()
        );
    }
    Ok(pairs)
}

/// Per system prompt: the share of questions where the true answer is the more likely one, and the
/// mean log-odds true over false (nats, whole answers), each with a 95% bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForcedChoice {
    pub by_prompt: BTreeMap<String, Choice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub system: Option<String>,
    pub accuracy: Share,
    pub log_odds: Share,
    /// Per question, log P(true) − log P(false).
    pub per_question: Vec<f64>,
}

/// The deception_factual questions (one per system prompt) and their pairs.
pub fn load() -> Result<(Vec<Question>, Vec<Pair>)> {
    let qs = questions::load_set("deception_factual")?;
    let first = qs.first().context("deception_factual.yaml has no questions")?;
    if qs.iter().any(|q| q.paraphrases != first.paraphrases) {
        bail!("deception_factual.yaml: the questions should share their paraphrases");
    }
    let pairs = pairs(&first.paraphrases)?;
    Ok((qs, pairs))
}

pub fn forced_choice(
    model: &ChatModel,
    questions: &[Question],
    pairs: &[Pair],
    mut on_done: impl FnMut(usize),
) -> Result<ForcedChoice> {
    let mut by_prompt = BTreeMap::new();
    let mut done = 0;
    for q in questions {
        let mut per_question = Vec::new();
        for p in pairs {
            let msgs = single_turn(q.system.as_deref(), &p.question);
            per_question.push(
                total_logprob(model, &msgs, &p.truth)? - total_logprob(model, &msgs, &p.falsehood)?,
            );
            done += 1;
            on_done(done);
        }
        let right: Vec<f64> = per_question.iter().map(|&d| f64::from(u8::from(d > 0.0))).collect();
        let (Some(accuracy), Some(log_odds)) =
            (metrics::bootstrap_mean(&right, 29), metrics::bootstrap_mean(&per_question, 31))
        else {
            bail!("no factual pairs");
        };
        by_prompt.insert(
            q.id.clone(),
            Choice { system: q.system.clone(), accuracy, log_odds, per_question },
        );
    }
    Ok(ForcedChoice { by_prompt })
}

/// log P(answer | conversation), the answer's tokens after the assistant header; an error when
/// the whole answer does not fit the context window.
fn total_logprob(model: &ChatModel, messages: &[Message], answer: &str) -> Result<f64> {
    let tokens = model.tokenizer.encode_text(answer)?.len();
    match super::likelihood::answer_logprobs(model, messages, answer)? {
        Some(lp) if lp.len() == tokens => Ok(lp.iter().sum()),
        _ => bail!("a factual question and answer over the context window"),
    }
}
