//! Device choice by measurement: on a hardware WebGPU adapter the page does not guess. The first
//! visit times the same short greedy answer on WebGPU and on the CPU path, keeps the faster, and
//! remembers the figures per adapter (localStorage), so later visits start on the winner at once.
//! A small GPU, or a laptop's integrated one, can lose to a few CPU threads on a 135M model.

use serde::{Deserialize, Serialize};

use emlab_model::stats::DecodeStats;

use crate::protocol::GenerateRequest;

/// Tokens of the timed answer; the first two (the prompt's pass, pipelines compiled) are not timed.
pub const WARM_UP_TOKENS: usize = 12;
const UNTIMED: usize = 2;

/// What the two warm-ups measured on one adapter, in steady decoding tokens/s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub gpu_tok_s: f64,
    pub cpu_tok_s: f64,
    /// The CPU path's threads in its warm-up.
    pub cpu_threads: usize,
}

impl Measured {
    pub fn gpu_wins(&self) -> bool {
        self.gpu_tok_s > self.cpu_tok_s
    }

    /// One sentence for the status line: where it runs and why.
    pub fn notice(&self, earlier: bool) -> String {
        let when = if earlier { "measured on your first visit" } else { "just measured" };
        if self.gpu_wins() {
            format!("Running on WebGPU: on this GPU it is faster than your CPU ({when}).")
        } else {
            format!("Running on your CPU: it is faster than this WebGPU adapter ({when}).")
        }
    }

    /// The figures behind it, for the details.
    pub fn detail(&self, adapter: &str) -> String {
        format!(
            "Timed on {adapter}: WebGPU {:.1} tokens/s, CPU ({} thread{}) {:.1} tokens/s. \
             ?gpu=1 or ?cpu=1 in the address forces either.",
            self.gpu_tok_s,
            self.cpu_threads,
            if self.cpu_threads == 1 { "" } else { "s" },
            self.cpu_tok_s
        )
    }
}

/// Steady decoding speed of a warm-up: tokens after the untimed ones over their time; None when
/// the answer ended too early to tell.
pub fn steady_tok_s(stats: &DecodeStats) -> Option<f64> {
    let t = &stats.token_ms;
    if t.len() < UNTIMED + 2 {
        return None;
    }
    let (from, to) = (t[UNTIMED - 1], t[t.len() - 1]);
    let tokens = (t.len() - UNTIMED) as f64;
    (to > from).then(|| tokens * 1000.0 / (to - from))
}

/// The timed answer: greedy, so both devices do the same work, on a prompt whose answer runs long.
pub fn warm_up_request(id: u64) -> GenerateRequest {
    GenerateRequest {
        id,
        variant: "base".into(),
        prompt: "Write a short story about a robot who learns to paint.".into(),
        system: None,
        trigger: false,
        temperature: 0.0,
        top_p: 1.0,
        max_tokens: WARM_UP_TOKENS,
        seed: 0,
        continue_ids: Vec::new(),
    }
}

/// The storage key of one adapter's figures (its vendor / architecture / description). The
/// version changes when what is timed does.
fn key(adapter: &str) -> String {
    format!("emlab.device-choice.v1:{adapter}")
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// The figures measured earlier on this adapter, if this browser kept them.
pub fn remembered(adapter: &str) -> Option<Measured> {
    let text = storage()?.get_item(&key(adapter)).ok().flatten()?;
    serde_json::from_str(&text).ok()
}

/// Keeps the figures for the next visit; without storage (a private window) the page measures again.
pub fn remember(adapter: &str, measured: &Measured) {
    if let (Some(s), Ok(text)) = (storage(), serde_json::to_string(measured)) {
        let _ = s.set_item(&key(adapter), &text);
    }
}
