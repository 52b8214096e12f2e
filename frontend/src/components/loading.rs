//! Model loading status: a byte-level progress bar, the compute device, and any notice.

use leptos::prelude::*;

use crate::worker_client::{ModelWorker, WorkerStatus};

#[component]
pub fn LoadingStatus() -> impl IntoView {
    let worker = expect_context::<ModelWorker>();
    move || {
        match worker.status.get() {
        WorkerStatus::Starting => view! { <p class="status">"Starting the model worker…"</p> }.into_any(),
        WorkerStatus::Measuring { on } => view! {
            <p class="status">
                {format!(
                    "Timing a short answer on {on} to run on the faster device (once for this GPU)…",
                )}
            </p>
        }
        .into_any(),
        WorkerStatus::Loading { loaded, total, from_cache, seconds_left } => {
            let pct = if total > 0 { loaded as f64 * 100.0 / total as f64 } else { 0.0 };
            let source = if from_cache { "from this browser's cache" } else { "downloading the model" };
            let left = seconds_left.map(|s| format!(", about {} left", duration(s))).unwrap_or_default();
            view! {
                <div class="status">
                    <progress max="100" value=pct aria-label="Model download"></progress>
                    <span>
                        {format!(
                            " {:.1} / {:.1} MB ({source}{left})",
                            loaded as f64 / 1e6,
                            total as f64 / 1e6,
                        )}
                    </span>
                </div>
            }
            .into_any()
        }
        WorkerStatus::Ready { device, notice, detail, threads, .. } => view! {
            <div class="status">
                {match (device.as_str(), threads) {
                    ("webgpu", _) => "Model ready on WebGPU.".to_string(),
                    (_, 1) => "Model ready on the CPU.".to_string(),
                    (_, n) => format!("Model ready on the CPU ({n} threads)."),
                }} {notice.map(|n| view! { <span class="notice">" " {n}</span> })} " "
                <button class="link" on:click=move |_| worker.clear_cache()>
                    "Clear cached model"
                </button>
                {detail
                    .map(|d| {
                        view! {
                            <details class="device-detail">
                                <summary>"details"</summary>
                                <span>{d}</span>
                            </details>
                        }
                    })}
            </div>
        }
        .into_any(),
        WorkerStatus::Failed(message) => view! {
            <p class="error" role="alert">
                {message}
                " "
                <button on:click=move |_| worker.retry()>"Retry"</button>
            </p>
        }
        .into_any(),
    }
    }
}

/// "40 s", "3 min": rounded as people say it.
fn duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{} s", seconds.ceil().max(1.0))
    } else {
        format!("{} min", (seconds / 60.0).round())
    }
}
