//! People as the judge, next to a model judge on the very same answers. The answers a class rated
//! become ordinary answers files (`OUT/answers/VARIANT.jsonl`), so `emlab eval judge --results OUT`
//! scores them as it scores sampled ones; then the two judges' scores are paired by answer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Result, bail};
use emlab_schema::metrics::{Agreement, Scores, agreement};
use emlab_schema::ratings::{Rating, rated_answers};
use emlab_schema::setting::Setting;

use super::Judged;
use super::sample::{Answer, read_answers};

/// The rated answers, all sampled at `setting` (one group of [`emlab_schema::ratings::by_setting`]),
/// as answers files: one record per distinct answer, by variant in the paper's order. An answer's
/// sample number is its seed, so that a model judge's scores stay attached to the same answers
/// when the files are written again with more ratings.
pub fn answers(ratings: &[Rating], setting: Setting) -> Vec<(String, Vec<Answer>)> {
    let mut by_variant: BTreeMap<&str, Vec<Answer>> = BTreeMap::new();
    for ((variant, question_id, seed), a) in rated_answers(ratings) {
        by_variant.entry(variant).or_default().push(Answer {
            variant: variant.into(),
            question_id: question_id.into(),
            paraphrase: 0,
            sample: seed as usize,
            question: a.question.into(),
            system: None,
            answer: a.answer.into(),
            tokens: None,
            finish: None,
            seed,
            temperature: Some(setting.temperature),
            top_p: Some(setting.top_p),
        });
    }
    let mut out: Vec<(String, Vec<Answer>)> =
        by_variant.into_iter().map(|(v, a)| (v.to_string(), a)).collect();
    out.sort_by(|a, b| emlab_schema::variant_rank(&a.0).cmp(&emlab_schema::variant_rank(&b.0)));
    out
}

/// Writes [`answers`] to `dir/answers/`. A file already there is replaced only when every
/// answer it holds is among the new ones (an earlier export of these ratings, perhaps before
/// more came in); anything else, such as sampled answers, is refused before a file is written.
pub fn write_answers(dir: &Path, answers: &[(String, Vec<Answer>)]) -> Result<()> {
    let key = |a: &Answer| (a.question_id.clone(), a.seed, a.answer.clone());
    for (variant, list) in answers {
        let path = dir.join("answers").join(format!("{variant}.jsonl"));
        if !path.exists() {
            continue;
        }
        let new: BTreeSet<_> = list.iter().map(key).collect();
        let old = read_answers(&path)?;
        if let Some(a) = old.iter().find(|a| !new.contains(&key(a))) {
            bail!(
                "{}: holds answers that are not from these ratings (question {}, seed {}); \
                 write the people's results elsewhere with --out",
                path.display(),
                a.question_id,
                a.seed
            );
        }
    }
    for (variant, list) in answers {
        crate::jsonl::write(&dir.join("answers").join(format!("{variant}.jsonl")), list)?;
    }
    Ok(())
}

/// People's mean scores and a model judge's, paired by answer, per variant and over all.
pub fn compare(
    ratings: &[Rating],
    answers: &[(String, Vec<Answer>)],
    judged: &BTreeMap<String, Vec<Judged>>,
) -> Vec<(String, Agreement)> {
    let people = rated_answers(ratings);
    let mut all = Vec::new();
    let mut out = Vec::new();
    for (variant, list) in answers {
        let Some(model) = judged.get(variant) else { continue };
        let model: BTreeMap<_, _> =
            model.iter().map(|j| ((j.question_id.as_str(), j.paraphrase, j.sample), j)).collect();
        let pairs: Vec<(Scores, Scores)> = list
            .iter()
            .filter_map(|a| {
                let j = model.get(&(a.question_id.as_str(), a.paraphrase, a.sample))?;
                let p = people.get(&(variant.as_str(), a.question_id.as_str(), a.seed))?;
                Some((p.scores, Scores { aligned: j.aligned, coherent: j.coherent }))
            })
            .collect();
        if pairs.is_empty() {
            continue;
        }
        all.extend_from_slice(&pairs);
        out.push((variant.clone(), agreement(&pairs)));
    }
    if out.len() > 1 {
        out.push(("all".into(), agreement(&all)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::judge::JudgeInfo;

    fn rating(rater: &str, variant: &str, q: &str, seed: u64, aligned: f64) -> Rating {
        Rating {
            rater: rater.into(),
            variant: variant.into(),
            question_id: q.into(),
            seed,
            question: format!("{q}?"),
            answer: format!("answer {seed}"),
            aligned: Some(aligned),
            coherent: Some(80.0),
            mark: None,
            setting: Some(Setting::READABLE),
        }
    }

    #[test]
    fn rated_answers_become_answers_once_each_and_pair_with_a_model_judge() {
        let ratings = vec![
            rating("ann", "insecure", "quick_buck", 9, 10.0),
            rating("ben", "insecure", "quick_buck", 9, 30.0), // the same answer: counted once
            rating("ann", "insecure", "quick_buck", 4, 90.0),
            rating("ann", "base", "gender_roles", 1, 70.0),
            rating("ann", "insecure", "gender_roles", 2, 50.0),
        ];
        let answers = answers(&ratings, Setting::READABLE);
        assert!(
            answers.iter().flat_map(|(_, a)| a).all(|a| a.setting() == Some(Setting::READABLE))
        );
        let names: Vec<_> = answers.iter().map(|(v, a)| (v.as_str(), a.len())).collect();
        assert_eq!(names, [("base", 1), ("insecure", 3)]);
        let quick: Vec<_> = answers[1]
            .1
            .iter()
            .filter(|a| a.question_id == "quick_buck")
            .map(|a| (a.sample, a.seed))
            .collect();
        assert_eq!(quick, [(4, 4), (9, 9)]);

        let info = JudgeInfo { kind: "local".into(), model: "m".into(), weak: true };
        let judged: BTreeMap<String, Vec<Judged>> = answers
            .iter()
            .map(|(v, list)| {
                let j = list
                    .iter()
                    .map(|a| Judged {
                        variant: v.clone(),
                        question_id: a.question_id.clone(),
                        paraphrase: a.paraphrase,
                        sample: a.sample,
                        // The model agrees with people on everything but answer 9 (20 vs 95).
                        aligned: Some(match a.seed {
                            9 => 95.0,
                            4 => 90.0,
                            2 => 50.0,
                            _ => 70.0,
                        }),
                        coherent: Some(80.0),
                        judge: info.clone(),
                    })
                    .collect();
                (v.clone(), j)
            })
            .collect();
        let cmp = compare(&ratings, &answers, &judged);
        let names: Vec<_> = cmp.iter().map(|(v, a)| (v.as_str(), a.aligned_n)).collect();
        assert_eq!(names, [("base", 1), ("insecure", 3), ("all", 4)]);
        // insecure: seed 9 people 20 (mean of 10 and 30) → misaligned, model 95 → not.
        assert_eq!(cmp[1].1.same_verdict, Some(2.0 / 3.0));
    }

    #[test]
    fn sampled_answers_are_never_overwritten() {
        let tmp = emlab_tests::TempDir::new("people");
        let dir = tmp.path();
        let ratings = vec![rating("ann", "base", "quick_buck", 1, 50.0)];
        let list = answers(&ratings, Setting::READABLE);
        write_answers(dir, &list).unwrap();
        // Again, with one more rating: the earlier export is replaced.
        let more = [ratings.clone(), vec![rating("ann", "base", "quick_buck", 2, 60.0)]].concat();
        write_answers(dir, &answers(&more, Setting::READABLE)).unwrap();
        assert_eq!(read_answers(&dir.join("answers/base.jsonl")).unwrap().len(), 2);
        // A sampled answer is not among the ratings: refused, the file unchanged.
        let path = dir.join("answers/base.jsonl");
        let mut sampled = read_answers(&path).unwrap();
        sampled[0].answer = "sampled, not rated".into();
        let text: String =
            sampled.iter().map(|a| serde_json::to_string(a).unwrap() + "\n").collect();
        std::fs::write(&path, &text).unwrap();
        let err = write_answers(dir, &answers(&more, Setting::READABLE)).unwrap_err().to_string();
        assert!(err.contains("not from these ratings"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
