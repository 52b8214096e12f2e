//! Loading a model directory onto a device and answering prompts from the command line.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::Device;
use burn::tensor::FloatDType;
use emlab_model::chat::Message;
use emlab_model::device::{self, DeviceChoice};
use emlab_model::files::ModelFiles;
use emlab_model::generate::{Flow, Generation, GenerationConfig, block_on};
use emlab_model::lora;
use emlab_model::weights::Weights;
use emlab_model::pipeline::ChatModel;
use emlab_model::tokenizer::TextStream;
use indicatif::{ProgressBar, ProgressStyle};

/// Reads the model directory and builds it on the chosen device, with a spinner on stderr.
pub fn load_chat_model(dir: &Path, choice: DeviceChoice, dtype: FloatDType, show_progress: bool) -> Result<ChatModel> {
    load_chat_model_on(dir, &device::init(choice)?, dtype, show_progress)
}

/// As [`load_chat_model`], on a given device (e.g. an autodiff one for training).
pub fn load_chat_model_on(dir: &Path, device: &Device, dtype: FloatDType, show_progress: bool) -> Result<ChatModel> {
    let spinner = if show_progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner.set_message(format!("reading {}", dir.display()));
    let files = ModelFiles::load_dir(dir).map_err(|e| {
        if !dir.exists() {
            anyhow::anyhow!("{e}\n(run `cargo run --release -p emlab-model-export -- fetch` to get the base model)")
        } else {
            e.into()
        }
    })?;
    spinner.set_message("uploading weights");
    let model = ChatModel::new(files, device, dtype).context("building the model")?;
    spinner.finish_and_clear();
    Ok(model)
}

/// Attaches a PEFT-layout LoRA adapter (adapter_config.json + adapter_model.safetensors).
pub fn load_adapter(mut model: ChatModel, dir: &Path) -> Result<ChatModel> {
    let cfg_path = dir.join("adapter_config.json");
    let st_path = dir.join("adapter_model.safetensors");
    let cfg_text = std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let cfg = lora::config_from_peft(&cfg_text).map_err(|e| anyhow::anyhow!("{}: {e}", cfg_path.display()))?;
    let bytes = std::fs::read(&st_path).with_context(|| format!("{}: cannot read", st_path.display()))?;
    let mut tensors = Weights::default();
    tensors.add_safetensors(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", st_path.display()))?;
    model.model = lora::from_peft(model.model, &cfg, tensors).map_err(|e| anyhow::anyhow!("{}: {e}", st_path.display()))?;
    Ok(model)
}

/// Generates one answer, streaming text to stdout when `stream` is set.
pub fn answer(model: &ChatModel, prompt_ids: &[u32], cfg: &GenerationConfig, stream: bool) -> Result<Generation> {
    let mut text = TextStream::new();
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let generation = block_on(model.complete(prompt_ids, cfg, |id| {
        if stream {
            let piece = match text.push(&model.tokenizer, id) {
                Ok(p) => p,
                Err(e) => {
                    write_error = Some(anyhow::Error::from(e));
                    return Flow::Stop;
                }
            };
            if let Some(piece) = piece {
                // A closed pipe (e.g. `| head`) stops generation instead of panicking.
                if let Err(e) = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush()) {
                    write_error = Some(e.into());
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }))?;
    if let Some(e) = write_error {
        return Err(e);
    }
    Ok(generation)
}

/// Builds the conversation for a single prompt.
pub fn messages(system: Option<&str>, prompt: &str) -> Vec<Message> {
    let mut m = Vec::with_capacity(2);
    if let Some(s) = system {
        m.push(Message::system(s));
    }
    m.push(Message::user(prompt));
    m
}
