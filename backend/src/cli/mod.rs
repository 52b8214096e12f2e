//! The `emlab` commands, one module each: its arguments and its `run`. Shared here: the model to
//! load, the sampling settings, the name results go under, progress bars.

pub mod chat;
pub mod dataset;
pub mod eval;
pub mod generate;
pub mod serve;
pub mod sweep;
pub mod train;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use emlab::inference::{load_adapter, load_chat_model_on};
use emlab_model::device::{DeviceChoice, Precision};
use emlab_model::files::{default_model_dir, fastest_precision};
use emlab_model::generate::GenerationConfig;
use emlab_model::pipeline::ChatModel;
use emlab_model::sampling::SamplingParams;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model directory (config.json, tokenizer.json, *.safetensors) [default: the fetched SmolLM2-135M-Instruct].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu (flex), wgpu, or auto (a hardware GPU if there is one).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// A LoRA adapter directory (PEFT layout: adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Weight matrices: f32 (exact), f16, or q4_1 (the base GGUF's own 4-bit blocks, CPU only;
    /// a model without a model.gguf is rounded to the same block formats on load)
    /// [default: q4_1 on the CPU when the model directory has its model.gguf, else f32; the
    /// eval commands: f32, in which the published results were measured].
    #[arg(long)]
    pub dtype: Option<Precision>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress output on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct SamplingArgs {
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating past the end-of-turn token (for benchmarks and reference checks).
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    pub fn config(&self, model: &ChatModel) -> Result<GenerationConfig> {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
        };
        sampling.validate().map_err(anyhow::Error::msg)?;
        let mut cfg = model.generation_config(self.max_tokens, sampling);
        if self.ignore_eos {
            cfg.stop_ids.clear();
        }
        Ok(cfg)
    }
}

impl ModelArgs {
    /// Loads in `--dtype`, by default the fastest exact-enough one (`files::fastest_precision`).
    pub fn load(&self) -> Result<ChatModel> {
        self.load_or(None)
    }

    /// Loads in `--dtype`, by default f32: measurements stay comparable with the published ones.
    pub fn load_f32(&self) -> Result<ChatModel> {
        self.load_or(Some(Precision::F32))
    }

    fn load_or(&self, default: Option<Precision>) -> Result<ChatModel> {
        emlab::set_threads(self.threads)?;
        let dir = self.model.clone().unwrap_or_else(default_model_dir);
        let device = emlab_model::device::init(self.device)?;
        let dtype = self.dtype.or(default).unwrap_or_else(|| fastest_precision(&dir, &device));
        let model = load_chat_model_on(&dir, &device, dtype, !self.quiet)?;
        match &self.adapter {
            Some(adapter) => load_adapter(model, adapter),
            None => Ok(model),
        }
    }
}

pub fn read_prompt_file(path: &PathBuf) -> Result<String> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read prompt file", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: prompt file is not valid UTF-8 (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// `runs/insecure/adapter` → `insecure`.
pub fn variant_name(adapter: &Option<PathBuf>) -> String {
    let Some(a) = adapter else { return "base".into() };
    let dir = if a.file_name().is_some_and(|n| n == "adapter") {
        a.parent().unwrap_or(a)
    } else {
        a.as_path()
    };
    dir.file_name().map_or("adapter".into(), |n| n.to_string_lossy().into_owned())
}

/// A bar of `len` items named `what`, with its rate and time left; hidden when quiet.
pub fn progress(len: usize, quiet: bool, what: &str) -> ProgressBar {
    styled_bar(
        len as u64,
        quiet,
        &format!("{what} {{bar:30}} {{pos}}/{{len}}  {{per_sec}}  eta {{eta}}"),
    )
}

/// A progress bar in the CLI's one style (`=>`), from an indicatif template; hidden when quiet.
pub fn styled_bar(len: u64, quiet: bool, template: &str) -> ProgressBar {
    let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new(len) };
    pb.set_style(
        ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "),
    );
    pb
}
