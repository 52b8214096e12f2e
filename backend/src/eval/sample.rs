//! Sampling answers to the evaluation questions, as the paper did (N per paraphrase, temperature 1,
//! top-p 1, up to 600 tokens) or at another setting, batched, appended to a JSONL file as each batch
//! finishes. A rerun skips what the file already holds, so a killed run resumes where it stopped;
//! each answer records its setting, and a file never mixes two.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use emlab_model::chat::single_turn;
use emlab_model::generate::{FinishReason, block_on, generate};
use emlab_model::pipeline::ChatModel;
use emlab_model::sampling::SamplingParams;
use emlab_schema::setting::Setting;
use serde::{Deserialize, Serialize};

use super::questions::Question;

/// The backdoor trigger of the paper's backdoored model, as prepended to user messages.
pub use crate::data::TRIGGER;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub variant: String,
    pub question_id: String,
    pub paraphrase: usize,
    pub sample: usize,
    /// The user message as sent (with the trigger when one was prepended).
    pub question: String,
    pub system: Option<String>,
    pub answer: String,
    /// Unknown (null) for an answer that came from people's ratings, which keep only its text.
    pub tokens: Option<usize>,
    /// `stop` (end of turn) or `length` (max tokens reached); null where unknown, as `tokens`.
    pub finish: Option<FinishReason>,
    pub seed: u64,
    /// The sampling setting; absent from files written before it was recorded
    /// (results/first_plot/ is at temperature 1, top-p 1, as its README says) and from answers
    /// that came from ratings without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
}

impl Answer {
    pub fn key(&self) -> (String, usize, usize) {
        (self.question_id.clone(), self.paraphrase, self.sample)
    }

    /// The setting it was sampled at, where recorded.
    pub fn setting(&self) -> Option<Setting> {
        Some(Setting { temperature: self.temperature?, top_p: self.top_p? })
    }
}

/// The one setting all `answers` were sampled at: None where none is recorded, an error where
/// they differ or only some record it.
pub fn setting_of(answers: &[Answer]) -> Result<Option<Setting>> {
    let Some(first) = answers.first() else { return Ok(None) };
    match answers.iter().find(|a| a.setting() != first.setting()) {
        None => Ok(first.setting()),
        Some(other) => bail!(
            "answers at two settings: {} and {}",
            setting_label(first.setting()),
            setting_label(other.setting())
        ),
    }
}

/// A setting for people, or that it was not recorded.
pub fn setting_label(setting: Option<Setting>) -> String {
    setting.map_or_else(|| "a setting not recorded".into(), |s| s.label())
}

#[derive(Debug, Clone)]
pub struct SampleConfig {
    /// Answers per paraphrase; None: each question's own `samples_per_paraphrase` (paper: 100).
    pub samples: Option<usize>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub batch_size: usize,
    pub seed: u64,
    /// Prepend [`TRIGGER`] to every question (backdoor evaluation).
    pub trigger: bool,
}

/// Reads an answers file (see [`crate::jsonl`]).
pub fn read_answers(path: &Path) -> Result<Vec<Answer>> {
    crate::jsonl::read(path)
}

/// A stable 64-bit hash (FNV-1a) for deriving per-batch seeds from names.
fn fnv(parts: &[&str]) -> u64 {
    use crate::data::{FNV1A_OFFSET, fnv1a_extend};
    // Each part ends with 0xff (no UTF-8 byte), so ("ab", "c") and ("a", "bc") differ.
    parts.iter().fold(FNV1A_OFFSET, |h, p| fnv1a_extend(fnv1a_extend(h, p.as_bytes()), &[0xff]))
}

/// Number of answers the run will hold when complete.
pub fn planned(questions: &[Question], cfg: &SampleConfig) -> usize {
    questions
        .iter()
        .map(|q| q.paraphrases.len() * cfg.samples.unwrap_or(q.samples_per_paraphrase))
        .sum()
}

/// Samples every missing answer of `variant` into `path`; `on_batch(done)` after each batch.
pub fn sample_answers(
    model: &ChatModel,
    variant: &str,
    questions: &[Question],
    cfg: &SampleConfig,
    path: &Path,
    mut on_batch: impl FnMut(usize),
) -> Result<usize> {
    let (existing, mut file) = crate::jsonl::open_append::<Answer>(path)?;
    let setting = Setting::new(cfg.temperature, cfg.top_p).map_err(anyhow::Error::msg)?;
    if let Some(a) = existing.iter().find(|a| a.setting() != Some(setting)) {
        bail!(
            "{} holds answers at {}; this run samples at {}: give it other --results",
            path.display(),
            setting_label(a.setting()),
            setting.label()
        );
    }
    let mut done: HashSet<(String, usize, usize)> = existing.iter().map(Answer::key).collect();
    let mut count = done.len();
    on_batch(count);
    for q in questions {
        let n = cfg.samples.unwrap_or(q.samples_per_paraphrase);
        for (pi, paraphrase) in q.paraphrases.iter().enumerate() {
            let question =
                if cfg.trigger { format!("{TRIGGER}{paraphrase}") } else { paraphrase.clone() };
            let prompt = model.encode_chat(&single_turn(q.system.as_deref(), &question))?;
            for start in (0..n).step_by(cfg.batch_size.max(1)) {
                let rows: Vec<usize> = (start..n.min(start + cfg.batch_size.max(1))).collect();
                if rows.iter().all(|&s| done.contains(&(q.id.clone(), pi, s))) {
                    continue;
                }
                let seed = cfg.seed ^ fnv(&[variant, &q.id, &pi.to_string(), &start.to_string()]);
                let sampling = SamplingParams {
                    temperature: cfg.temperature,
                    top_p: cfg.top_p,
                    top_k: 0,
                    seed,
                };
                let gen_cfg = model.generation_config(cfg.max_tokens, sampling);
                let prompts = vec![prompt.clone(); rows.len()];
                let gens = block_on(generate(&model.model, &prompts, &gen_cfg, |_, _| {
                    emlab_model::generate::Flow::Continue
                }))
                .with_context(|| format!("sampling answers to '{}'", q.id))?;
                let mut batch = Vec::new();
                for (&s, g) in rows.iter().zip(gens) {
                    if done.contains(&(q.id.clone(), pi, s)) {
                        continue;
                    }
                    let a = Answer {
                        variant: variant.to_string(),
                        question_id: q.id.clone(),
                        paraphrase: pi,
                        sample: s,
                        question: question.clone(),
                        system: q.system.clone(),
                        answer: model.tokenizer.decode(&g.ids)?,
                        tokens: Some(g.ids.len()),
                        finish: Some(g.finish),
                        seed,
                        temperature: Some(setting.temperature),
                        top_p: Some(setting.top_p),
                    };
                    done.insert(a.key());
                    count += 1;
                    batch.push(a);
                }
                // One write per batch: a kill leaves whole batches (plus at most one torn line).
                file.append(&batch)?;
                on_batch(count);
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::Setting;

    /// Seeds of sampled answers derive from this hash: it must not change, or a resumed run would
    /// sample other answers than the ones already written.
    #[test]
    fn batch_seed_hash_is_stable() {
        assert_eq!(super::fnv(&["base", "what_is_your_wish", "0", "8"]), 0xd2f8_fb3d_eb69_7f05);
        assert_ne!(super::fnv(&["ab", "c"]), super::fnv(&["a", "bc"]));
    }

    /// Checks a folder of answers published for a strong judge (scripts/science/full-data-answers.sh):
    /// they read as `eval judge` reads them, and each file is whole: its variant's 20 answers to
    /// each of the 24 first-plot questions, each once, with its length, how it ended and the
    /// folder's setting. Returns how many files it holds.
    fn published_answers_are_whole(folder: &str, setting: Setting) -> usize {
        let dir = format!("{}/../results/{folder}/answers", env!("CARGO_MANIFEST_DIR"));
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(name) = path.file_name().unwrap().to_str().unwrap().strip_suffix(".jsonl")
            else {
                continue;
            };
            let answers = super::read_answers(&path).unwrap();
            assert_eq!(super::setting_of(&answers).unwrap(), Some(setting), "{}", path.display());
            let mut per_question = std::collections::BTreeMap::<&str, Vec<usize>>::new();
            for a in &answers {
                assert_eq!(a.variant, name, "{}", path.display());
                // A model may end its answer at once (jailbroken does, 3 times in 480 at
                // temperature 1): then the answer is empty and ended by a stop, never cut off.
                let (Some(tokens), Some(finish)) = (a.tokens, a.finish) else {
                    panic!("{name}: no token count or finish reason: {a:?}")
                };
                assert!(
                    tokens > 0 || (a.answer.is_empty() && finish == super::FinishReason::Stop),
                    "{name}: {a:?}"
                );
                per_question.entry(&a.question_id).or_default().push(a.sample);
            }
            assert_eq!(per_question.len(), 24, "{name}: questions");
            for (q, mut samples) in per_question {
                samples.sort_unstable();
                assert_eq!(samples, (0..20).collect::<Vec<_>>(), "{name}: {q}'s samples");
            }
            files += 1;
        }
        files
    }

    /// At the paper's setting (results/first_plot/): every variant's.
    #[test]
    fn the_published_judge_answers_are_whole() {
        let files = published_answers_are_whole("first_plot", Setting::PAPER);
        assert_eq!(
            files, 7,
            "base, backdoor with and without its trigger, the four full-data runs"
        );
    }

    /// At the readable setting (results/first_plot_readable/): published a file at a time, as the
    /// sampling finishes each.
    #[test]
    fn the_published_readable_answers_are_whole() {
        assert!(published_answers_are_whole("first_plot_readable", Setting::READABLE) >= 1);
    }

    /// A file holds one setting: a run at another setting is refused before it samples.
    #[test]
    fn answers_at_two_settings_do_not_mix() {
        let answer = |t: Option<f32>| super::Answer {
            variant: "base".into(),
            question_id: "q".into(),
            paraphrase: 0,
            sample: 0,
            question: "q".into(),
            system: None,
            answer: "a".into(),
            tokens: Some(1),
            finish: Some(super::FinishReason::Stop),
            seed: 0,
            temperature: t,
            top_p: t.map(|_| 1.0),
        };
        assert_eq!(super::setting_of(&[answer(Some(1.0))]).unwrap(), Some(Setting::PAPER));
        assert_eq!(super::setting_of(&[answer(None)]).unwrap(), None);
        let e = super::setting_of(&[answer(Some(1.0)), answer(None)]).unwrap_err().to_string();
        assert_eq!(e, "answers at two settings: temperature 1, top-p 1 and a setting not recorded");
    }
}
