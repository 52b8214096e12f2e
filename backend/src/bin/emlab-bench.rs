//! Generation throughput of our model, for bench/generate.py (which runs llama.cpp beside it).
//! Prints one JSON line per batch size: prefill and decode tokens/s.

use std::time::Instant;

use anyhow::Result;
use backend::inference::load_chat_model;
use burn::tensor::FloatDType;
use clap::Parser;
use emlab_model::device::DeviceChoice;
use emlab_model::files::default_model_dir;
use emlab_model::generate::{Flow, GenerationConfig, block_on, generate};
use emlab_model::sampling::SamplingParams;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "f32", value_parser = emlab_model::device::parse_dtype)]
    dtype: FloatDType,
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Prompt token ids (comma-separated) so both implementations see the same input.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Vec<u32>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    backend::set_threads(args.threads)?;
    let m = load_chat_model(&default_model_dir(), args.device, args.dtype, false)?;
    let prompt: Vec<u32> = if args.prompt_ids.is_empty() {
        let text = "The history of computing is a story of people and machines. ".repeat(64);
        m.tokenizer.encode(&text)?.into_iter().take(args.prompt_tokens).collect()
    } else {
        args.prompt_ids.clone()
    };
    let cfg = GenerationConfig { max_new_tokens: args.new_tokens, sampling: SamplingParams::greedy(), stop_ids: vec![] };
    // Warm-up (allocations, kernel compilation on wgpu).
    block_on(generate(&m.model, &[prompt[..8].to_vec()], &GenerationConfig { max_new_tokens: 2, ..cfg.clone() }, |_, _| Flow::Continue))?;
    for &b in &args.batch {
        let prompts = vec![prompt.clone(); b];
        let start = Instant::now();
        let mut first = None;
        block_on(generate(&m.model, &prompts, &cfg, |_, _| {
            first.get_or_insert_with(Instant::now);
            Flow::Continue
        }))?;
        let end = Instant::now();
        let first = first.expect("at least one token");
        let prefill_s = (first - start).as_secs_f64();
        let decode_s = (end - first).as_secs_f64();
        let line = serde_json::json!({
            "impl": "emlab", "device": format!("{:?}", args.device), "dtype": format!("{:?}", args.dtype), "batch": b,
            "prompt_tokens": prompt.len(), "new_tokens": args.new_tokens,
            "prefill_tok_s": (b * prompt.len()) as f64 / prefill_s,
            "decode_tok_s": (b * (args.new_tokens - 1)) as f64 / decode_s,
        });
        println!("{line}");
    }
    Ok(())
}
