//! The CPU path's threads in the browser: rayon's pool on Web Workers that share the model
//! worker's memory (wasm-bindgen-rayon). Only the `threads` build has them: it needs wasm atomics,
//! a standard library rebuilt with them (a pinned nightly, scripts/worker-threads.sh) and a
//! cross-origin isolated page. Every other build runs the same code on one thread.

/// The most threads the page asks for. Each decoding step forks and joins some 120 times over
/// products of 576–1,536 rows; past a handful of threads each share is a few hundred rows and the
/// wake-ups cost more than they save. Measured here on 2 cores only (docs/browser.md); `?threads=N`
/// tries another count.
pub const MAX_THREADS: usize = 8;

/// How long a pool may take to start before a smaller one is tried: a worker that fails to load
/// never says so (its promise stays pending).
#[cfg(feature = "threads")]
const START_TIMEOUT_MS: i32 = 15_000;

/// The threads to ask for: `?threads=N` (1..=64) when given, else the machine's logical cores
/// (`navigator.hardwareConcurrency`, 1 when the browser hides it) up to [`MAX_THREADS`].
pub fn wanted(query: Option<&str>, hardware_concurrency: Option<f64>) -> usize {
    if let Some(n) =
        query.and_then(|q| q.trim().parse::<usize>().ok()).filter(|n| (1..=64).contains(n))
    {
        return n;
    }
    match hardware_concurrency {
        Some(c) if c.is_finite() && c >= 1.0 => (c as usize).min(MAX_THREADS),
        _ => 1,
    }
}

/// Starts the pool once with `wanted` threads, or fewer if that many do not start. Returns the
/// threads the CPU path runs on and, when fewer than wanted, why.
pub async fn start(wanted: usize) -> (usize, Option<String>) {
    imp::start(wanted).await
}

#[cfg(not(feature = "threads"))]
mod imp {
    pub async fn start(wanted: usize) -> (usize, Option<String>) {
        let why = (wanted > 1).then(|| "this build of the worker has no threads".to_string());
        (1, why)
    }
}

#[cfg(feature = "threads")]
mod imp {
    use std::cell::Cell;

    use futures::future::{Either, select};
    use wasm_bindgen::JsCast;
    use wasm_bindgen_futures::JsFuture;

    use super::START_TIMEOUT_MS;

    thread_local! {
        /// The pool's size once started: rayon's global pool is built once per worker.
        static STARTED: Cell<Option<usize>> = const { Cell::new(None) };
    }

    pub async fn start(wanted: usize) -> (usize, Option<String>) {
        if let Some(n) = STARTED.get() {
            return (n, None);
        }
        let mut failures = Vec::new();
        // Halving: a browser that caps workers still gets what it allows.
        let mut n = wanted;
        while n > 1 {
            match start_exactly(n).await {
                Ok(()) => {
                    STARTED.set(Some(n));
                    let why = (!failures.is_empty()).then(|| failures.join("; "));
                    return (n, why);
                }
                Err(e) => failures.push(format!("{n} threads did not start ({e})")),
            }
            n /= 2;
        }
        // One thread: rayon then runs every task on the calling thread (it cannot spawn any).
        STARTED.set(Some(1));
        let why = (!failures.is_empty()).then(|| failures.join("; "));
        (1, why)
    }

    async fn start_exactly(n: usize) -> Result<(), String> {
        let pool = JsFuture::from(wasm_bindgen_rayon::init_thread_pool(n));
        let timeout = JsFuture::from(js_sys::Promise::new(&mut |resolve, _| {
            let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
            let _ = scope
                .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, START_TIMEOUT_MS);
        }));
        match select(Box::pin(pool), Box::pin(timeout)).await {
            Either::Left((Ok(_), _)) => Ok(()),
            Either::Left((Err(e), _)) => Err(e
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
                .unwrap_or_else(|| format!("{e:?}"))),
            Either::Right(_) => Err(format!("no answer in {} s", START_TIMEOUT_MS / 1000)),
        }
    }
}
