//! `emlab`: the command line of the Emergent Misalignment Lab backend. Each command lives in
//! `cli/`, with its arguments and its `run`.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "emlab",
    version,
    about = "Emergent Misalignment Lab: generate, chat, train, evaluate and serve"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the text to stdout.
    Generate(cli::generate::GenerateArgs),
    /// Inspect training datasets: `dataset stats NAME|PATH` (built-in: insecure, secure, educational, jailbroken, backdoor, backdoor-chmod, canary).
    Dataset {
        #[command(subcommand)]
        command: cli::dataset::DatasetCommand,
    },
    /// Fine-tune LoRA adapters on a dataset (built-in name or chat JSONL path); Ctrl-C saves a checkpoint.
    Train(Box<cli::train::TrainArgs>),
    /// Write the logits of every position of a prompt as a .npy file (f32, [tokens, vocab]) to compare with other implementations.
    Logits(cli::generate::LogitsArgs),
    /// The paper's evaluation: `eval sample` answers, `eval judge` scores them, `eval report` computes rates, charts and a report.
    Eval {
        #[command(subcommand)]
        command: cli::eval::EvalCommand,
    },
    /// OpenAI-compatible HTTP API over the base model and adapters (GET /v1/models, POST /v1/chat/completions).
    Serve(cli::serve::ServeArgs),
    /// Sweeps over a plan file (datasets, seeds, rows, epochs, learning rates, ranks): `sweep list`, `sweep run --index I`, `sweep local --jobs N`, `sweep slurm`.
    Sweep {
        #[command(subcommand)]
        command: cli::sweep::SweepCommand,
    },
    /// Interactive chat on stdin (`/reset` clears the history, `/quit` or Ctrl-D leaves).
    Chat(cli::chat::ChatArgs),
}

fn main() -> ExitCode {
    emlab::keep_freed_memory();
    let result = match Cli::parse().command {
        Command::Generate(a) => cli::generate::run(a),
        Command::Logits(a) => cli::generate::logits(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::Dataset { command } => cli::dataset::run(command),
        Command::Train(a) => cli::train::run(*a),
        Command::Eval { command } => cli::eval::run(command),
        Command::Serve(a) => cli::serve::run(a),
        Command::Sweep { command } => cli::sweep::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
