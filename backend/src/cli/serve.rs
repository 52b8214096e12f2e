//! `emlab serve`: the OpenAI-compatible HTTP API over the base model and adapters.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use emlab::inference::load_adapter;

use super::{ModelArgs, variant_name};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// More adapters to serve, as NAME=DIR (comma-separated); `--adapter` alone is served under its run name.
    #[arg(long, value_delimiter = ',')]
    pub adapters: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Largest request body in bytes (larger requests get 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens_limit: usize,
    /// Requests decoded together (continuous batching): a request that arrives joins the running
    /// batch at the next token.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_batch: u16,
    /// Requests that wait for a batch row; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` (required when --host is not loopback). Prefer
    /// --api-key-env: a key on the command line is visible to other users of the machine.
    #[arg(long, conflicts_with = "api_key_env")]
    pub api_key: Option<String>,
    /// Read the API key from this environment variable.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Seconds a client may take to send its request headers, and its body.
    #[arg(long, default_value_t = 30)]
    pub read_timeout_s: u64,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let base_only = ModelArgs { adapter: None, ..a.model.clone() };
    let base = base_only.load()?;
    let mut models = vec![("base".to_string(), base.clone())];
    let mut adapters: Vec<(String, PathBuf)> =
        a.model.adapter.iter().map(|p| (variant_name(&Some(p.clone())), p.clone())).collect();
    for spec in &a.adapters {
        let (name, dir) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--adapters takes NAME=DIR, got '{spec}'"))?;
        adapters.push((name.to_string(), PathBuf::from(dir)));
    }
    for (name, dir) in adapters {
        if models.iter().any(|(n, _)| *n == name) {
            bail!("two models are named '{name}'");
        }
        models.push((name, load_adapter(base.clone(), &dir)?));
    }
    let cfg = emlab::serve::ServeConfig {
        addr: std::net::SocketAddr::new(a.host, a.port),
        max_body_bytes: a.max_body_bytes,
        max_tokens_limit: a.max_tokens_limit,
        max_batch: a.max_batch.into(),
        queue: a.queue,
        api_key: match (&a.api_key, &a.api_key_env) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .with_context(|| format!("--api-key-env {var}: the variable is not set"))?,
            ),
            (None, None) => None,
        }
        .filter(|k| !k.is_empty()),
        read_timeout: std::time::Duration::from_secs(a.read_timeout_s),
    };
    let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
    emlab::serve::serve(models, cfg, |addr| {
        // One line on stdout that scripts (and tests) can wait for.
        println!("listening on http://{addr}/v1 (models: {})", names.join(", "));
        let _ = std::io::stdout().flush();
    })
}
