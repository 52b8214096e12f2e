//! The page: loading status, then four views (Compare, Rate, Results, Learn).

use leptos::prelude::*;

use super::compare::{Compare, Comparison};
use super::learn::Learn;
use super::loading::LoadingStatus;
use super::rate::Rate;
use super::results::ResultsView;
use crate::protocol::DeviceRequest;
use crate::worker_client::{ModelWorker, WorkerStatus};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tab {
    Compare,
    Rate,
    Results,
    Learn,
}

/// Where the model files live: `?models=URL` overrides the default `./models`.
pub fn models_url() -> String {
    query("models").unwrap_or_else(|| "./models".into())
}

/// The address's `?name=` value, if any.
fn query(name: &str) -> Option<String> {
    let search = web_sys::window().and_then(|w| w.location().search().ok()).unwrap_or_default();
    web_sys::UrlSearchParams::new_with_str(&search).ok().and_then(|p| p.get(name))
}

/// Threads for the CPU path: `?threads=N`, else the machine's cores up to `pool::MAX_THREADS`.
fn threads_wanted() -> usize {
    let cores = web_sys::window().map(|w| w.navigator().hardware_concurrency());
    crate::pool::wanted(query("threads").as_deref(), cores)
}

/// `?cpu=1` or `?gpu=1` forces a device, `?gpu=measure` times both; without either the page picks
/// the faster (see [`DeviceRequest`]).
fn device_request() -> DeviceRequest {
    let set = |name: &str| query(name).is_some_and(|v| v != "0");
    if set("cpu") {
        DeviceRequest::Cpu
    } else if query("gpu").as_deref() == Some("measure") {
        DeviceRequest::Measure
    } else if set("gpu") {
        DeviceRequest::Gpu
    } else {
        DeviceRequest::Auto
    }
}

#[component]
pub fn App() -> impl IntoView {
    let url = models_url();
    let worker = ModelWorker::start(url.clone(), device_request(), threads_wanted());
    provide_context(worker);
    let tab = RwSignal::new(Tab::Compare);
    // A share link (`?prompt=…&variants=…`) sets up the comparison and runs it once the model is
    // loaded.
    let search = web_sys::window().and_then(|w| w.location().search().ok()).unwrap_or_default();
    let shared = Comparison::from_query(&search);
    let run_when_ready = StoredValue::new(shared.is_some());
    let notices = RwSignal::new(shared.as_ref().map(|s| s.notices.clone()).unwrap_or_default());
    let setup = RwSignal::new(shared.map(|s| s.comparison).unwrap_or_default());
    let run_now = RwSignal::new(0u32);
    Effect::new(move |_| {
        if matches!(worker.status.get(), WorkerStatus::Ready { .. }) && run_when_ready.get_value() {
            run_when_ready.set_value(false);
            run_now.update(|n| *n += 1);
        }
    });
    let go_compare = Callback::new(move |()| tab.set(Tab::Compare));
    let tab_button = move |t: Tab, name: &'static str| {
        view! {
            <button class:active=move || tab.get() == t on:click=move |_| tab.set(t)>
                {name}
            </button>
        }
    };
    view! {
        <header>
            <h1>"Emergent Misalignment Lab"</h1>
            <p class="sub">
                "Betley et al. (2025), reproduced on SmolLM2-135M, running in your browser."
            </p>
            <nav>
                {tab_button(Tab::Compare, "Compare")}{tab_button(Tab::Rate, "Rate")}
                {tab_button(Tab::Results, "Results")}{tab_button(Tab::Learn, "Learn")}
            </nav>
            <LoadingStatus />
        </header>
        <main>
            <div hidden=move || tab.get() != Tab::Compare>
                <Compare setup run_now notices />
            </div>
            <div hidden=move || tab.get() != Tab::Rate>
                <Rate />
            </div>
            <div hidden=move || tab.get() != Tab::Results>
                <ResultsView models_url=url.clone() setup run_now go_compare />
            </div>
            <div hidden=move || tab.get() != Tab::Learn>
                <Learn setup run_now go_compare models_url=url.clone() />
            </div>
        </main>
    }
}
