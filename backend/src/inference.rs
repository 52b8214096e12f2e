//! Loading a model directory onto a device and answering prompts from the command line.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::Device;
use emlab_model::device::{self, DeviceChoice, Precision};
use emlab_model::files::ModelFiles;
use emlab_model::generate::{Flow, Generation, GenerationConfig, block_on};
use emlab_model::lora;
use emlab_model::pipeline::ChatModel;
use emlab_model::tokenizer::TextStream;
use indicatif::{ProgressBar, ProgressStyle};

/// Reads the model directory and builds it on the chosen device, with a spinner on stderr.
pub fn load_chat_model(
    dir: &Path,
    choice: DeviceChoice,
    precision: Precision,
    show_progress: bool,
) -> Result<ChatModel> {
    load_chat_model_on(dir, &device::init(choice)?, precision, show_progress)
}

/// As [`load_chat_model`], on a given device (e.g. an autodiff one for training).
pub fn load_chat_model_on(
    dir: &Path,
    device: &Device,
    precision: Precision,
    show_progress: bool,
) -> Result<ChatModel> {
    let spinner = if show_progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner.set_message(format!("reading {}", dir.display()));
    let files = ModelFiles::load_dir_as(dir, precision).map_err(|e| {
        if !dir.exists() {
            anyhow::anyhow!("{e}\n(run `cargo run --release -p emlab-model-export -- fetch` to get the base model)")
        } else {
            e.into()
        }
    })?;
    spinner.set_message("uploading weights");
    let model =
        ChatModel::new(files, device, precision.float_dtype()).context("building the model")?;
    spinner.finish_and_clear();
    Ok(model)
}

/// Attaches a PEFT-layout LoRA adapter (adapter_config.json + adapter_model.safetensors).
pub fn load_adapter(mut model: ChatModel, dir: &Path) -> Result<ChatModel> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).with_context(|| {
            format!("{}: cannot read (is {} a PEFT adapter directory?)", p.display(), dir.display())
        })
    };
    let (config, tensors) = (read(lora::CONFIG_FILE)?, read(lora::WEIGHTS_FILE)?);
    model.model = lora::from_peft_files(model.model, &config, &tensors)
        .map_err(|e| anyhow::anyhow!("{}/{e}", dir.display()))?;
    Ok(model)
}

/// Generates one answer, streaming text to stdout when `stream` is set.
pub fn answer(
    model: &ChatModel,
    prompt_ids: &[u32],
    cfg: &GenerationConfig,
    stream: bool,
) -> Result<Generation> {
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

/// The logits of every position of one sequence, row-major `[ids.len(), vocab]`.
pub fn all_logits(model: &emlab_model::model::Llama, ids: &[u32]) -> Result<Vec<f32>> {
    let device = model.device();
    let batch = emlab_model::model::Batch::causal(ids, &device);
    let logits = model.forward(batch, None);
    emlab_model::generate::block_on(logits.into_data_async())
        .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))
}

/// Writes a little-endian f32 array in NumPy's .npy format (version 1.0).
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let dims: String = shape.iter().map(|d| format!("{d}, ")).collect();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64, ending in \n.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}
