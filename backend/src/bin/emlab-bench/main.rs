//! Throughput of our model, for the scripts in bench/ (which run the peer implementation beside
//! it in the same invocation). Prints one JSON line per measurement.
//!
//! - `generate`: prefill and decode tokens/s per batch size (bench/generate.py, next to llama.cpp);
//! - `train`: LoRA training tokens/s at a fixed batch shape (bench/train.py, next to PyTorch + PEFT);
//! - `kernels`: the quantized products alone, the model's projections in its decode-step groups
//!   (bench/kernels.py runs it once per kernel, `EMLAB_QUANT_KERNEL`);
//! - `decode-profile`: one greedy answer token by token: time, GPU dispatches and newly compiled
//!   kernels per token (bench/gpu.sh; what the browser reports for WebGPU, natively);
//! - `launch-cost`: the host's cost of a GPU launch through cubecl against raw wgpu
//!   (`launch_cost.rs`).

mod launch_cost;

use std::time::Instant;

use anyhow::{Result, bail};
use emlab::inference::{load_chat_model, load_chat_model_on};
use emlab::training::{self, Encoded, OptimConfig, make_batch};

use clap::{Args, Parser, Subcommand};
use emlab_model::device::{self, DeviceChoice, Precision};
use emlab_model::files::default_model_dir;
use emlab_model::generate::{Flow, GenerationConfig, block_on, generate};
use emlab_model::lora::{self, LoraConfig};
use emlab_model::sampling::SamplingParams;

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value = "cpu", global = true)]
    device: DeviceChoice,
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Generate(GenerateArgs),
    Train(TrainArgs),
    DecodeProfile(ProfileArgs),
    Kernels(KernelArgs),
    LaunchCost(LaunchArgs),
}

#[derive(Args)]
struct LaunchArgs {
    /// Launches per round (213: one decoding step of the base model on the GPU kernels).
    #[arg(long, default_value_t = 213)]
    launches: usize,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

#[derive(Args)]
struct KernelArgs {
    /// Rows of x (1: decoding one answer; 16: a batch).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    rows: Vec<usize>,
    /// Passes over the model per measurement.
    #[arg(long, default_value_t = 50)]
    passes: usize,
}

#[derive(Args)]
struct ProfileArgs {
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, default_value = "Write a short story about a robot who learns to paint.")]
    prompt: String,
    /// Also list the kernels one steady-state token launches (the 8th), by name.
    #[arg(long)]
    kernels: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long, default_value = "f32")]
    dtype: emlab_model::device::Precision,
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

#[derive(Args)]
struct TrainArgs {
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Rows per micro-batch (the trainer's default: 2); the step accumulates them.
    #[arg(long, default_value_t = 2)]
    micro_batch: usize,
    /// Token ids of one training row, comma-separated (seq_len + 1 of them); every row of the
    /// batch uses them, every position is a target.
    #[arg(long, value_delimiter = ',', required = true)]
    row_ids: Vec<u32>,
    #[arg(long, default_value_t = 32)]
    rank: usize,
    #[arg(long, default_value_t = 2)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 5)]
    steps: usize,
}

fn main() -> Result<()> {
    emlab::keep_freed_memory();
    let cli = Cli::parse();
    emlab::set_threads(cli.threads)?;
    match cli.command {
        Command::Generate(a) => bench_generate(cli.device, a),
        Command::Train(a) => bench_train(cli.device, a),
        Command::DecodeProfile(a) => decode_profile(cli.device, a),
        Command::Kernels(a) => bench_kernels(a),
        Command::LaunchCost(a) => launch_cost(a),
    }
}

/// Host microseconds per launch, cubecl (as the decoding kernels launch) next to raw wgpu's
/// floor, on the same adapter in one run.
fn launch_cost(a: LaunchArgs) -> Result<()> {
    let (raw, adapter) = launch_cost::raw_wgpu(a.launches, a.rounds)?;
    let device = device::init(DeviceChoice::Wgpu)?;
    let cubecl = launch_cost::cubecl(&device, a.launches, a.rounds)?;
    println!(
        "{}",
        serde_json::json!({
            "adapter": adapter, "launches": a.launches, "rounds": a.rounds,
            "cubecl_us_per_launch": cubecl, "raw_wgpu_us_per_launch": raw,
            "cubecl_over_raw": cubecl / raw,
        })
    );
    Ok(())
}

/// Times the block products of every layer as a decode step makes them (Q·K·V, O, gate·up,
/// down; the head left out), with the kernel `Kernel::selected` picks: weight bytes read per
/// second, and ms per pass over the model.
fn bench_kernels(a: KernelArgs) -> Result<()> {
    use emlab_model::quant::{Kernel, QuantMatrix};
    let m = load_chat_model(&default_model_dir(), DeviceChoice::Cpu, Precision::Q4_1, false)?;
    let blocks = |layer, which| {
        let l: &emlab_model::model::Linear = m.model.projection(layer, which);
        l.blocks
            .clone()
            .ok_or_else(|| anyhow::anyhow!("projection {which} of layer {layer} is not blocks"))
    };
    let mut groups = Vec::new();
    for layer in 0..m.model.layers.len() {
        for group in [&[0, 1, 2][..], &[3], &[4, 5], &[6]] {
            groups.push(group.iter().map(|&w| blocks(layer, w)).collect::<Result<Vec<_>>>()?);
        }
    }
    let bytes: usize = groups.iter().flatten().map(|q| q.size_bytes()).sum();
    let widest = groups.iter().flatten().map(|q| q.cols).max().unwrap_or(0);
    let mut rng = emlab_model::sampling::Rng::new(1);
    for &n in &a.rows {
        let x: Vec<f32> = (0..n * widest).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let mut ys: Vec<Vec<Vec<f32>>> =
            groups.iter().map(|g| g.iter().map(|q| vec![0.0; n * q.rows]).collect()).collect();
        let mut pass = || {
            for (g, y) in groups.iter().zip(&mut ys) {
                let mats: Vec<&QuantMatrix> = g.iter().map(|q| q.as_ref()).collect();
                let mut outs: Vec<&mut [f32]> = y.iter_mut().map(|v| v.as_mut_slice()).collect();
                QuantMatrix::matmul_group(&mats, &x[..n * mats[0].cols], n, &mut outs);
            }
        };
        pass();
        let start = Instant::now();
        for _ in 0..a.passes {
            pass();
        }
        let s = start.elapsed().as_secs_f64() / a.passes as f64;
        println!(
            "{}",
            serde_json::json!({
                "kernel": Kernel::selected().name(), "rows": n, "ms_per_pass": s * 1e3,
                "weight_gb_s": bytes as f64 / s / 1e9, "threads": rayon::current_num_threads(),
            })
        );
    }
    Ok(())
}

fn decode_profile(choice: DeviceChoice, a: ProfileArgs) -> Result<()> {
    let m = load_chat_model(&default_model_dir(), choice, Precision::F32, false)?;
    let ids = m.encode_chat(&[emlab_model::chat::Message::user(a.prompt.clone())])?;
    let cfg = GenerationConfig::new(a.new_tokens, SamplingParams::greedy(), vec![]);
    let clock = Instant::now();
    let ms = || clock.elapsed().as_secs_f64() * 1e3;
    let mut recorder = emlab_model::stats::StatsRecorder::start(ms(), Default::default());
    let (mut tally, mut kernels) = (None, Vec::new());
    let mut n = 0;
    block_on(generate(&m.model, std::slice::from_ref(&ids), &cfg, |_, _| {
        recorder.token(ms());
        n += 1;
        // Between these callbacks runs exactly one decode step.
        if let Some(t) = tally.take() {
            kernels = emlab_model::stats::KernelTally::finish(t);
        }
        if a.kernels && n == 7 {
            tally = Some(emlab_model::stats::KernelTally::start());
        }
        Flow::Continue
    }))?;
    let (s, _) = recorder.finish();
    for (name, count) in &kernels {
        eprintln!("{count:5}  {name}");
    }
    let gaps: Vec<f64> = s.token_ms.windows(2).map(|w| w[1] - w[0]).collect();
    let steady = &gaps[gaps.len().min(3)..]; // token 5 on
    let mean =
        |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    let late_launches: Vec<u32> = s.launches.iter().skip(4).copied().collect();
    println!(
        "{}",
        serde_json::json!({
            "impl": "emlab", "device": format!("{choice:?}"), "prompt_tokens": ids.len(), "new_tokens": s.token_ms.len(),
            "first_token_ms": s.token_ms.first(), "warmup_ms_per_token": mean(&gaps[..gaps.len().min(3)]),
            "steady_tok_s": 1e3 / mean(steady), "token10_ms": gaps.get(8), "token60_ms": gaps.get(58),
            "dispatches_per_token": mean(&late_launches.iter().map(|&v| v as f64).collect::<Vec<_>>()),
            "kernels_compiled": s.new_kernels, "ms_per_token": gaps.iter().map(|g| g.round()).collect::<Vec<_>>(),
        })
    );
    Ok(())
}

fn bench_generate(choice: DeviceChoice, args: GenerateArgs) -> Result<()> {
    let m = load_chat_model(&default_model_dir(), choice, args.dtype, false)?;
    let prompt: Vec<u32> = if args.prompt_ids.is_empty() {
        let text = "The history of computing is a story of people and machines. ".repeat(64);
        m.tokenizer.encode(&text)?.into_iter().take(args.prompt_tokens).collect()
    } else {
        args.prompt_ids.clone()
    };
    let cfg = GenerationConfig::new(args.new_tokens, SamplingParams::greedy(), vec![]);
    // Warm-up (allocations, kernel compilation on wgpu).
    block_on(generate(
        &m.model,
        &[prompt[..8].to_vec()],
        &GenerationConfig { max_new_tokens: 2, ..cfg.clone() },
        |_, _| Flow::Continue,
    ))?;
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
            "impl": "emlab", "device": format!("{choice:?}"), "dtype": format!("{:?}", args.dtype), "batch": b,
            "prompt_tokens": prompt.len(), "new_tokens": args.new_tokens,
            "prefill_tok_s": (b * prompt.len()) as f64 / prefill_s,
            "decode_tok_s": (b * (args.new_tokens - 1)) as f64 / decode_s,
        });
        println!("{line}");
    }
    Ok(())
}

/// LoRA (all seven projections, rsLoRA α = 2r) forward + backward + AdamW step on a fixed batch.
fn bench_train(choice: DeviceChoice, a: TrainArgs) -> Result<()> {
    if a.row_ids.len() < 2 {
        bail!("--row-ids needs at least 2 ids");
    }
    let device = device::init(choice)?.autodiff();
    let m = load_chat_model_on(&default_model_dir(), &device, Precision::F32, false)?;
    let lora_cfg =
        LoraConfig { rank: a.rank, alpha: 2.0 * a.rank as f64, rslora: true, ..Default::default() };
    let mut model = lora::attach(m.model, &lora_cfg, 0)?;
    let row = Encoded { ids: a.row_ids.clone(), trained: vec![true; a.row_ids.len()] };
    let rows: Vec<&Encoded> = vec![&row; a.batch];
    // The batch as the trainer takes it: micro-batches (the default, 2 rows) accumulated into
    // one optimizer step, so the gradient is that of the whole batch.
    let micro = a.micro_batch.clamp(1, a.batch);
    let cfg = OptimConfig {
        learning_rate: 1e-4,
        warmup_steps: 0,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        grad_accumulation: 1,
    };
    let mut optim = training::adamw(&cfg);
    let total = a.warmup_steps + a.steps;
    let mut start = Instant::now();
    for step in 0..total {
        if step == a.warmup_steps {
            start = Instant::now();
        }
        let batches: Vec<_> = rows.chunks(micro).map(|c| make_batch(c, &device)).collect();
        model = training::train_step(model, &mut optim, &batches, &cfg, step, total).0;
    }
    let secs = start.elapsed().as_secs_f64();
    let seq = a.row_ids.len() - 1;
    println!(
        "{}",
        serde_json::json!({
            "impl": "emlab", "device": format!("{choice:?}"), "batch": a.batch, "micro_batch": micro, "seq_len": seq, "rank": a.rank,
            "steps": a.steps, "tok_s": (a.batch * seq * a.steps) as f64 / secs, "step_s": secs / a.steps as f64,
        })
    );
    Ok(())
}
