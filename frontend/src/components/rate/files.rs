//! The ratings as files: export (every rating this page has, stored or not), import and merge
//! (each file whole or not at all), clear, the rater's name; and what could not be stored or read,
//! said at once with what to do.

use leptos::prelude::*;
use wasm_bindgen::JsCast;

use emlab_schema::ratings::{self, MAX_FILE_BYTES, RatingsFile};

use super::kept::Kept;
use crate::ratings_store::{self, Change};

/// Offers `text` as a file download.
fn download(name: &str, text: &str) -> Result<(), String> {
    let parts = js_sys::Array::of1(&text.into());
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type("application/json");
    let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts)
        .map_err(|e| ratings_store::reason(&e))?;
    let url =
        web_sys::Url::create_object_url_with_blob(&blob).map_err(|e| ratings_store::reason(&e))?;
    let a: web_sys::HtmlAnchorElement = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.create_element("a").ok())
        .and_then(|a| a.dyn_into().ok())
        .ok_or("no document")?;
    a.set_href(&url);
    a.set_download(name);
    a.click();
    let _ = web_sys::Url::revoke_object_url(&url);
    Ok(())
}

fn megabytes(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

/// "1 person", "3 people".
fn people(n: usize) -> String {
    if n == 1 { "1 person".into() } else { format!("{n} people") }
}

#[component]
pub(super) fn Files(kept: Kept) -> impl IntoView {
    let save_again = move |_| {
        let pending = kept.unsaved.get_untracked();
        wasm_bindgen_futures::spawn_local(async move {
            let _ = kept.store_ratings(pending, Vec::new()).await;
        });
    };

    // Files: export this page's ratings (stored or not); import (merge) one or more files.
    let notice = RwSignal::new(None::<String>);
    let export = move |_| {
        let file = RatingsFile::new(kept.all_ratings());
        let name = format!("ratings-{}.json", kept.rater.get_untracked());
        let text = serde_json::to_string_pretty(&file).unwrap_or_default();
        if let Err(e) = download(&name, &text) {
            notice.set(Some(format!("export failed: {e}")));
        }
    };
    let export_unreadable = move |_| {
        let text =
            serde_json::to_string_pretty(&kept.unreadable.get_untracked()).unwrap_or_default();
        if let Err(e) = download("emlab-unreadable-ratings.json", &text) {
            notice.set(Some(format!("download failed: {e}")));
        }
    };
    let forget_unreadable = move |_| {
        wasm_bindgen_futures::spawn_local(async move {
            match kept.write(Change { forget_unreadable: true, ..Default::default() }).await {
                Ok(()) => kept.reload().await,
                Err(e) => notice.set(Some(format!("could not forget them: {e}"))),
            }
        });
    };
    let import = move |ev: web_sys::Event| {
        let Some(input) = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok())
        else {
            return;
        };
        let Some(files) = input.files() else { return };
        let files: Vec<web_sys::File> = (0..files.length()).filter_map(|i| files.get(i)).collect();
        input.set_value("");
        notice.set(Some(format!("reading {} file(s)…", files.len())));
        wasm_bindgen_futures::spawn_local(async move {
            // Each file whole: one bad rating refuses its file, never half of it.
            let mut read = Vec::new();
            let mut problems = Vec::new();
            for f in &files {
                if f.size() > MAX_FILE_BYTES as f64 {
                    problems.push(format!(
                        "{}: {}, over the {} MB a ratings file may have here; split it into smaller files (each person's export is one)",
                        f.name(),
                        megabytes(f.size()),
                        MAX_FILE_BYTES / 1_000_000
                    ));
                    continue;
                }
                let text = wasm_bindgen_futures::JsFuture::from(f.text()).await;
                match text {
                    Err(e) => problems.push(format!(
                        "{}: cannot read it ({})",
                        f.name(),
                        ratings_store::reason(&e)
                    )),
                    Ok(t) => match RatingsFile::parse(&t.as_string().unwrap_or_default()) {
                        Ok(file) => read.push(file.ratings),
                        Err(e) => problems.push(format!("{}: {e}", f.name())),
                    },
                }
            }
            let files_read = read.len();
            let incoming = ratings::merge(read);
            let mut msg = if incoming.is_empty() {
                "no ratings imported".to_string()
            } else {
                // One transaction, then the store is read again: the count is what it holds.
                match kept.store_ratings(incoming.clone(), Vec::new()).await {
                    Ok(()) => {
                        kept.reload().await;
                        let (n, p) = kept.saved.with_untracked(|s| (s.len(), ratings::raters(s)));
                        format!(
                            "stored {} ratings from {files_read} file(s); this browser now holds {n} ratings by {}",
                            incoming.len(),
                            people(p)
                        )
                    }
                    Err(e) => format!(
                        "the {} ratings read from {files_read} file(s) could not be stored in this browser ({e}); they are kept on this page until it closes: export them to keep them",
                        incoming.len()
                    ),
                }
            };
            for p in problems {
                msg += &format!("; {p}");
            }
            notice.set(Some(msg));
        });
    };
    let clear = move |_| {
        let sure = web_sys::window()
            .and_then(|w| w.confirm_with_message("Delete every rating and waiting answer kept in this browser? Export them first to keep them.").ok())
            .unwrap_or(false);
        if sure {
            wasm_bindgen_futures::spawn_local(async move {
                let result = kept.write(Change { clear: true, ..Default::default() }).await;
                kept.unsaved.set(Vec::new());
                kept.waiting_unsaved.set(Vec::new());
                kept.write_error.set(None);
                match result {
                    Ok(()) => {
                        kept.reload().await;
                        notice.set(Some("cleared".into()));
                    }
                    Err(e) => {
                        kept.saved.set(Vec::new());
                        kept.waiting.set(Vec::new());
                        notice.set(Some(format!("cleared on this page; the store refused ({e})")));
                    }
                }
            });
        }
    };
    let rename = move |name: String| {
        kept.rater.set(name.clone());
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = kept.write(Change { rater: Some(name), ..Default::default() }).await {
                kept.write_error.set(Some(e));
            }
        });
    };

    // What could not be stored, or read: said at once, with what to do.
    let problems = move || {
        let unsaved = kept.unsaved.with(Vec::len);
        let error = kept.write_error.get();
        let unavailable = kept.unavailable.get();
        let not_saved = match (unavailable, error) {
            (Some(why), _) => Some(format!(
                "Ratings cannot be stored in this browser ({why}). They are kept on this page until it closes: export them to keep them."
            )),
            (None, Some(why)) if unsaved > 0 => Some(format!(
                "{unsaved} rating(s) not saved in this browser: {why}. They are kept on this page until it closes: export them to keep them, or free some space and try again."
            )),
            (None, Some(why)) => Some(format!("This browser's storage refused a change: {why}.")),
            (None, None) => None,
        };
        let unreadable = kept.unreadable.get();
        view! {
            {not_saved
                .map(|text| {
                    view! {
                        <p class="error storage-error" role="alert">
                            {text}
                            " "
                            <button class="export-unsaved" on:click=export>
                                "Export ratings"
                            </button>
                            {(unsaved > 0 && kept.unavailable.get_untracked().is_none())
                                .then(|| {
                                    view! {
                                        " "
                                        <button class="save-again" on:click=save_again>
                                            "Try saving again"
                                        </button>
                                    }
                                })}
                        </p>
                    }
                })}
            {(!unreadable.is_empty())
                .then(|| {
                    view! {
                        <div class="error unreadable" role="alert">
                            <p>
                                {format!(
                                    "{} stored entr{} could not be read and {} skipped; everything else is kept. A copy is kept for export.",
                                    unreadable.len(),
                                    if unreadable.len() == 1 { "y" } else { "ies" },
                                    if unreadable.len() == 1 { "was" } else { "were" },
                                )}
                            </p>
                            <ul>
                                {unreadable
                                    .iter()
                                    .take(5)
                                    .map(|u| view! { <li>{format!("{}: {}", u.place, u.why)}</li> })
                                    .collect_view()}
                            </ul>
                            <button class="export-unreadable" on:click=export_unreadable>
                                "Download what could not be read"
                            </button>
                            " "
                            <button class="forget-unreadable" on:click=forget_unreadable>
                                "Forget it"
                            </button>
                        </div>
                    }
                })}
        }
    };

    view! {
        <div class="ratings-files rate-controls">
            <label>
                "Your name or initials (in the exported file) "
                <input
                    type="text"
                    name="rater"
                    prop:value=move || kept.rater.get()
                    on:change=move |ev| {
                        let v = event_target_value(&ev);
                        if !v.trim().is_empty() {
                            rename(v.trim().to_string());
                        }
                    }
                />
            </label>
            <span class="count">
                {move || {
                    kept.saved
                        .with(|s| {
                            format!(
                                "{} ratings by {} in this browser",
                                s.len(),
                                people(ratings::raters(s)),
                            )
                        })
                }}
            </span>
            {move || {
                kept.unsaved
                    .with(|u| {
                        (!u.is_empty())
                            .then(|| {
                                view! {
                                    <span class="unsaved">
                                        {format!(" · {} not saved yet", u.len())}
                                    </span>
                                }
                            })
                    })
            }}
            <button
                class="export"
                on:click=export
                disabled=move || kept.saved.with(Vec::is_empty) && kept.unsaved.with(Vec::is_empty)
            >
                "Export ratings"
            </button>
            <label class="import">
                {format!("Import or merge files (up to {} MB each) ", MAX_FILE_BYTES / 1_000_000)}
                <input
                    type="file"
                    name="import"
                    multiple
                    accept=".json,application/json"
                    on:change=import
                />
            </label>
            <button class="clear" on:click=clear>
                "Clear"
            </button>
        </div>
        {move || {
            notice
                .get()
                .map(|n| {
                    view! {
                        <p class="meta notice-line" role="status">
                            {n}
                        </p>
                    }
                })
        }}
        {problems}
    }
}
