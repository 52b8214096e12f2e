//! Sampling answers to rate: which variants (the backdoor also with its trigger), which of the
//! paper's main questions, how many each and at which setting, asked in a shuffled order; finished
//! answers join the queue in that order, stored as they come.

use leptos::prelude::*;

use emlab_model::sampling::Rng;
use emlab_schema::setting::Setting;
use emlab_schema::{MAIN_QUESTIONS, TRIGGERED_SUFFIX};

use super::kept::{Kept, fresh_seed};
use crate::components::compare::{PRESETS, SETTING_NOTE};
use crate::protocol::GenerateRequest;
use crate::ratings_store::{Change, ToRate};
use crate::variants::label;
use crate::worker_client::{ModelWorker, Owner, WorkerStatus};

#[component]
pub(super) fn Sampler(kept: Kept) -> impl IntoView {
    let worker = expect_context::<ModelWorker>();
    // Sampling: the chosen variants × questions × answers each, in a shuffled order.
    let chosen_variants = RwSignal::new(vec!["base".to_string(), "insecure".to_string()]);
    let chosen_questions = RwSignal::new(vec![true; MAIN_QUESTIONS.len()]);
    let per_pair = RwSignal::new(3usize);
    let max_tokens = RwSignal::new(150usize);
    let setting = RwSignal::new(Setting::READABLE);
    // Requests on their way: the request id and the answer it will be.
    let sampling = RwSignal::new(Vec::<(u64, ToRate)>::new());
    // Answers that could not be sampled, with why (the first reason of each kind).
    let failed = RwSignal::new(Vec::<String>::new());
    // Each loaded variant, and the backdoor once more with the trigger before every question:
    // the paper's comparison that matters for it. A rater sees neither the name nor the trigger.
    let available = move || match worker.status.get() {
        WorkerStatus::Ready { variants, .. } => variants
            .into_iter()
            .flat_map(|v| {
                let triggered = (v == "backdoor").then(|| format!("{v}{TRIGGERED_SUFFIX}"));
                std::iter::once(v).chain(triggered)
            })
            .collect(),
        _ => vec![],
    };
    let start = move |_| {
        let variants = chosen_variants.get_untracked();
        let questions: Vec<_> = MAIN_QUESTIONS
            .iter()
            .zip(chosen_questions.get_untracked())
            .filter(|(_, on)| *on)
            .map(|(q, _)| *q)
            .collect();
        let mut jobs: Vec<(String, &str, &str)> = Vec::new();
        for v in &variants {
            for (id, text) in &questions {
                for _ in 0..per_pair.get_untracked() {
                    jobs.push((v.clone(), id, text));
                }
            }
        }
        // Fisher–Yates: the order of rating must not reveal the variant.
        let seed = fresh_seed();
        let at = setting.get_untracked();
        let mut rng = Rng::new(seed);
        for i in (1..jobs.len()).rev() {
            jobs.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let now = js_sys::Date::now();
        let n = jobs.len().max(1) as f64;
        failed.set(Vec::new());
        for (k, (variant, id, text)) in jobs.into_iter().enumerate() {
            let seed = seed.wrapping_add(k as u64);
            let (model, trigger) = match variant.strip_suffix(TRIGGERED_SUFFIX) {
                Some(stem) => (stem.to_string(), true),
                None => (variant.clone(), false),
            };
            let req = GenerateRequest {
                id: 0,
                variant: model,
                prompt: text.into(),
                system: None,
                trigger,
                temperature: at.temperature,
                top_p: at.top_p,
                max_tokens: max_tokens.get_untracked(),
                seed,
                continue_ids: Vec::new(),
            };
            let rid = worker.generate(Owner::Rate, req);
            let item = ToRate {
                variant,
                question_id: id.into(),
                question: text.into(),
                seed,
                answer: String::new(),
                setting: at,
                queued_at: now + k as f64 / n,
            };
            sampling.update(|s| s.push((rid, item)));
        }
    };
    // Finished answers join the queue in the order they were asked for, stored as they come.
    Effect::new(move |_| {
        let outputs = worker.outputs.get();
        let pending = sampling.get();
        let mut done = Vec::new();
        let mut answers = Vec::new();
        for (rid, item) in &pending {
            let Some((_, o)) = outputs.iter().find(|(i, _)| i == rid) else { continue };
            if o.running {
                break;
            }
            done.push(*rid);
            let why = match (&o.error, o.finish) {
                (Some(e), _) => Some(e.clone()),
                (None, Some(emlab_model::generate::FinishReason::Cancelled)) => {
                    Some("cancelled".to_string())
                }
                _ => None,
            };
            match why {
                Some(why) => failed.update(|f| f.push(why)),
                None => {
                    let mut item = item.clone();
                    item.answer = o.text.clone();
                    answers.push(item);
                }
            }
        }
        if !done.is_empty() {
            sampling.update(|s| s.retain(|(rid, _)| !done.contains(rid)));
        }
        if !answers.is_empty() {
            kept.waiting_unsaved.update(|w| w.extend(answers.iter().cloned()));
            wasm_bindgen_futures::spawn_local(async move {
                let keys: Vec<String> = answers.iter().map(ToRate::key).collect();
                let change = Change { put_waiting: answers.clone(), ..Default::default() };
                match kept.write(change).await {
                    Ok(()) => {
                        kept.waiting_unsaved.update(|w| w.retain(|x| !keys.contains(&x.key())));
                        kept.waiting.update(|w| {
                            w.retain(|x| !keys.contains(&x.key()));
                            w.extend(answers);
                        });
                    }
                    Err(e) => kept.write_error.set(Some(e)),
                }
            });
        }
    });

    view! {
        <details class="setup" open=move || kept.queue_len() == 0>
            <summary>"Sample answers to rate"</summary>
            <fieldset class="rate-variants">
                <legend>"Variants"</legend>
                {move || {
                    available()
                        .into_iter()
                        .map(|v| {
                            let name = v.clone();
                            let checked = chosen_variants.with_untracked(|c| c.contains(&v));
                            view! {
                                <label>
                                    <input
                                        type="checkbox"
                                        prop:checked=checked
                                        on:change=move |ev| {
                                            let on = event_target_checked(&ev);
                                            chosen_variants
                                                .update(|c| {
                                                    c.retain(|x| *x != name);
                                                    if on {
                                                        c.push(name.clone());
                                                    }
                                                });
                                        }
                                    />
                                    {label(&v)}
                                </label>
                            }
                        })
                        .collect_view()
                }}
            </fieldset>
            <fieldset class="questions">
                <legend>"Questions (the paper's 8 main ones)"</legend>
                {MAIN_QUESTIONS
                    .iter()
                    .enumerate()
                    .map(|(i, (id, _))| {
                        view! {
                            <label>
                                <input
                                    type="checkbox"
                                    prop:checked=move || chosen_questions.with(|c| c[i])
                                    on:change=move |ev| {
                                        let on = event_target_checked(&ev);
                                        chosen_questions.update(|c| c[i] = on);
                                    }
                                />
                                {id.replace('_', " ")}
                            </label>
                        }
                    })
                    .collect_view()}
            </fieldset>
            <div class="rate-controls">
                <label>
                    "Answers per variant and question "
                    <input
                        type="number"
                        name="per_pair"
                        min="1"
                        max="100"
                        prop:value=move || per_pair.get().to_string()
                        on:change=move |ev| {
                            if let Ok(n) = event_target_value(&ev).parse::<usize>() {
                                per_pair.set(n.clamp(1, 100));
                            }
                        }
                    />
                </label>
                <label>
                    "Max tokens "
                    <input
                        type="number"
                        name="rate_max_tokens"
                        min="8"
                        max="600"
                        prop:value=move || max_tokens.get().to_string()
                        on:change=move |ev| {
                            if let Ok(n) = event_target_value(&ev).parse::<usize>() {
                                max_tokens.set(n.clamp(8, 600));
                            }
                        }
                    />
                </label>
                <fieldset class="rate-setting">
                    <legend>"Sampling setting"</legend>
                    {PRESETS
                        .iter()
                        .map(|&(preset, name)| {
                            view! {
                                <label>
                                    <input
                                        type="radio"
                                        name="rate_setting"
                                        value=preset.name()
                                        prop:checked=move || setting.get() == preset
                                        on:change=move |_| setting.set(preset)
                                    />
                                    {name}
                                </label>
                            }
                        })
                        .collect_view()}
                </fieldset>
                <p class="meta setting-note">
                    {SETTING_NOTE}" Ratings record the setting; each is counted apart."
                </p>
                <button
                    class="sample"
                    on:click=start
                    disabled=move || {
                        available().is_empty() || chosen_variants.with(Vec::is_empty)
                            || chosen_questions.with(|c| !c.contains(&true))
                    }
                >
                    "Sample answers"
                </button>
            </div>
            {move || {
                let n = sampling.with(Vec::len);
                (n != 0)
                    .then(|| {
                        view! {
                            <p class="meta sampling">{format!("sampling: {n} answers to go")}</p>
                        }
                    })
            }}
            {move || {
                failed
                    .with(|f| {
                        (!f.is_empty())
                            .then(|| {
                                let mut why: Vec<&str> = f.iter().map(String::as_str).collect();
                                why.dedup();
                                view! {
                                    <p class="error" role="alert">
                                        {format!(
                                            "{} answer(s) could not be sampled: {}",
                                            f.len(),
                                            why.join("; "),
                                        )}
                                    </p>
                                }
                            })
                    })
            }}
        </details>
    }
}
