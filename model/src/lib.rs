//! emlab-model: SmolLM2-135M-Instruct (any Llama-architecture model) in burn, shared by the
//! backend, model-export and the wasm frontend.
//!
//! - [`gguf`]: reading and dequantizing GGUF files; [`quant`]: its blocks kept in memory, and their kernels
//! - [`config`], [`weights`], [`files`]: hyper-parameters, host-side tensors, model directories
//! - [`tokenizer`], [`chat`]: byte-level BPE and the ChatML template
//! - [`model`]: the transformer itself (one file, nanoGPT style); [`cache`]: its KV cache;
//!   `cpu_decode`: its cached pass on the CPU over the GGUF's blocks, outside burn's ops, reading
//!   `host_weights` (host copies the cache keeps per generation)
//! - `kernels` (the GPU's decoding kernels, cubecl) and `gpu_decode` (the cached pass on them),
//!   with the `gpu-kernels` feature; [`lora`]: adapters (PEFT files, attaching, merging)
//! - [`sampling`], [`generate`]: token sampling and the decoding loop (the only one: a batch of
//!   rows stepped together), [`prefix`]: a prompt prefix requests share; [`stats`]: per-token figures
//! - [`pipeline`]: a model with its tokenizer and chat template; [`device`]: devices and precisions;
//!   `outdir` (native only): output folders a command may replace

pub mod cache;
pub mod chat;
pub mod config;
mod cpu_decode;
pub mod device;
pub mod files;
pub mod generate;
pub mod gguf;
#[cfg(feature = "gpu-kernels")]
mod gpu_decode;
mod host_weights;
#[cfg(feature = "gpu-kernels")]
pub mod kernels;
pub mod lora;
pub mod model;
#[cfg(not(target_arch = "wasm32"))]
pub mod outdir;
pub mod pipeline;
pub mod prefix;
pub mod quant;
pub mod sampling;
pub mod stats;
pub mod tokenizer;
pub mod weights;

/// Errors a user can cause: bad files, bad prompts, an unavailable device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file (or fetched resource) that cannot be used; `path` names it.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error(
        "the prompt has {tokens} tokens and {max_new} new tokens were asked for, but the context window is {context} tokens"
    )]
    ContextOverflow { tokens: usize, max_new: usize, context: usize },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
}

impl Error {
    pub fn file(path: impl Into<String>, reason: String) -> Self {
        Self::File { path: path.into(), reason }
    }
}
