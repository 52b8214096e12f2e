//! Per-token figures of one generation, for the benchmark and for anyone curious: when each token
//! arrived, how many GPU kernels were launched for it, and how many of those had never been
//! launched before (each such kernel is a pipeline compiled). On the CPU backend no kernel is
//! launched and only the times are meaningful.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cubecl::launched::LaunchedKernels;
use cubecl::logging::{LaunchObservation, LaunchObserver};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DecodeStats {
    /// Milliseconds from the request to each token (the first includes the prompt's pass).
    pub token_ms: Vec<f64>,
    /// Kernel launches (dispatches) before each token.
    pub launches: Vec<u32>,
    /// Of those, kernels launched for the first time in this worker (compiled pipelines).
    pub new_kernels: Vec<u32>,
}

struct Counter(AtomicU32);

impl LaunchObserver for Counter {
    fn launched(&self, _kernel: &'static str) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records [`DecodeStats`] while it lives; `seen` carries the kernels launched by earlier
/// generations of the same worker.
pub struct StatsRecorder {
    start_ms: f64,
    counter: Arc<Counter>,
    _observation: LaunchObservation,
    open: Option<LaunchedKernels>,
    seen: HashSet<u128>,
    stats: DecodeStats,
}

impl StatsRecorder {
    pub fn start(now_ms: f64, seen: HashSet<u128>) -> Self {
        let counter = Arc::new(Counter(AtomicU32::new(0)));
        Self {
            start_ms: now_ms,
            _observation: LaunchObservation::new(counter.clone()),
            counter,
            open: Some(LaunchedKernels::new()),
            seen,
            stats: DecodeStats::default(),
        }
    }

    /// A token arrived at `now_ms`.
    pub fn token(&mut self, now_ms: f64) {
        let kernels = self.open.take().map(LaunchedKernels::finish).unwrap_or_default();
        let new = kernels.iter().filter(|k| self.seen.insert(**k)).count();
        self.stats.token_ms.push(now_ms - self.start_ms);
        self.stats.launches.push(self.counter.0.swap(0, Ordering::Relaxed));
        self.stats.new_kernels.push(new as u32);
        self.open = Some(LaunchedKernels::new());
    }

    /// The figures, and the kernels seen so far (for the next generation).
    pub fn finish(self) -> (DecodeStats, HashSet<u128>) {
        (self.stats, self.seen)
    }
}

/// Counts kernel launches by kernel name while it lives: what one token's dispatches are.
pub struct KernelTally {
    names: Arc<Names>,
    _observation: LaunchObservation,
}

struct Names(std::sync::Mutex<std::collections::BTreeMap<&'static str, u32>>);

impl LaunchObserver for Names {
    fn launched(&self, kernel: &'static str) {
        if let Ok(mut names) = self.0.lock() {
            *names.entry(kernel).or_default() += 1;
        }
    }
}

impl KernelTally {
    pub fn start() -> Self {
        let names = Arc::new(Names(Default::default()));
        Self { _observation: LaunchObservation::new(names.clone()), names }
    }

    /// `(kernel, launches)`, most launched first.
    pub fn finish(self) -> Vec<(String, u32)> {
        let names = self.names.0.lock().map(|n| n.clone()).unwrap_or_default();
        let mut out: Vec<(String, u32)> = names
            .into_iter()
            .map(|(k, n)| {
                (
                    cubecl::config::type_name_format(
                        k,
                        cubecl::config::TypeNameFormatLevel::Balanced,
                    ),
                    n,
                )
            })
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}
