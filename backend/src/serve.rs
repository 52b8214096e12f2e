//! `emlab serve`: an OpenAI-compatible HTTP API over the base model and every adapter.
//!
//! `GET /v1/models`, `POST /v1/chat/completions` (temperature, top_p, max_tokens, seed, stop,
//! stream as server-sent events, logprobs/top_logprobs), `GET /health`. One worker thread owns the
//! models and decodes every running request together (continuous batching, up to `--max-batch`
//! rows): a request that arrives joins at the next step and leaves when done, and its answer does
//! not depend on what else is in the batch. Beyond the batch, a bounded queue; beyond the queue,
//! 429 with `Retry-After`. A request whose client has gone leaves the queue or the batch at once;
//! a panic while answering fails the requests it touched only.
//! One concern (the HTTP API and its worker), so one file.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use emlab_model::chat::Message;
use emlab_model::generate::{ContinuousBatch, Flow, Generation, TokenLogprobs, block_on};
use emlab_model::pipeline::ChatModel;
use emlab_model::prefix::{SharedPrefix, prefill_after};
use emlab_model::sampling::SamplingParams;
use emlab_model::tokenizer::TextStream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

pub struct ServeConfig {
    pub addr: SocketAddr,
    /// Largest accepted request body in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for (and the default).
    pub max_tokens_limit: usize,
    /// Requests decoded together, at most.
    pub max_batch: usize,
    /// Requests waiting for a row beyond those; more are answered 429.
    pub queue: usize,
    /// Required as `Authorization: Bearer KEY` on /v1 when set.
    pub api_key: Option<String>,
    /// How long a client may take to send its headers, and its body.
    pub read_timeout: Duration,
}

/// What a request asks the worker for.
struct Job {
    model: String,
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    top_logprobs: Option<usize>,
    /// Per-token deltas for streaming; the final result comes on `done`.
    deltas: Option<mpsc::UnboundedSender<Delta>>,
    done: oneshot::Sender<Result<Finished, String>>,
}

struct Delta {
    text: String,
    logprobs: Vec<Value>,
}

impl Job {
    /// Whether the client has gone (it dropped the receiving ends).
    fn abandoned(&self) -> bool {
        self.done.is_closed() || self.deltas.as_ref().is_some_and(|d| d.is_closed())
    }
}

struct Finished {
    text: String,
    finish_reason: &'static str,
    completion_tokens: usize,
    logprobs: Vec<Value>,
}

#[derive(Clone)]
struct AppState {
    jobs: mpsc::UnboundedSender<Job>,
    /// Requests accepted and not yet answered, running or waiting: at most `max_batch + queue`.
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
    models: Arc<Vec<String>>,
    encoders: Arc<BTreeMap<String, ChatModel>>,
    max_tokens_limit: usize,
    max_body_bytes: usize,
    read_timeout: Duration,
    api_key: Option<Arc<str>>,
    created: u64,
    health: Arc<Health>,
}

/// What `/health` reports of the worker.
#[derive(Default)]
struct Health {
    busy: AtomicBool,
    /// Rows in the running batches.
    running: AtomicUsize,
    answered: AtomicUsize,
    failed: AtomicUsize,
    abandoned: AtomicUsize,
}

/// Serves until the process ends. `models`: name → loaded model (base first).
pub fn serve(
    models: Vec<(String, ChatModel)>,
    cfg: ServeConfig,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    if cfg.api_key.is_none() && !cfg.addr.ip().is_loopback() {
        anyhow::bail!(
            "serving on {} (not loopback) needs --api-key: anyone who reaches it could use it",
            cfg.addr.ip()
        );
    }
    let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
    // The HTTP side only tokenizes; it keeps cheap clones (weights are shared, not copied).
    let encoders: BTreeMap<String, ChatModel> =
        models.iter().map(|(n, m)| (n.clone(), m.clone())).collect();
    // Unbounded channel, bounded count: the worker moves requests into its own queue at every step,
    // where those whose client has gone are dropped at once (a channel cannot be searched).
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let worker_in_flight = in_flight.clone();
    let health = Arc::new(Health::default());
    let worker_health = health.clone();
    let max_batch = cfg.max_batch.max(1);
    std::thread::Builder::new().name("emlab-worker".into()).spawn(move || {
        worker(models.into_iter().collect(), rx, max_batch, &worker_in_flight, &worker_health)
    })?;
    let state = AppState {
        jobs: tx,
        in_flight,
        capacity: max_batch + cfg.queue,
        models: Arc::new(names),
        encoders: Arc::new(encoders),
        max_tokens_limit: cfg.max_tokens_limit,
        max_body_bytes: cfg.max_body_bytes,
        read_timeout: cfg.read_timeout,
        api_key: cfg.api_key.map(Arc::from),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        health,
    };
    let app = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/health", get(health_report))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.addr)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.addr))?;
        on_ready(listener.local_addr()?);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                // Out of file descriptors and the like: wait, then keep serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let timeout = cfg.read_timeout;
            tokio::spawn(async move {
                // A client that sends half its headers is dropped after `timeout`, not held forever.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// The text side of one running request: detokenizing, stop strings, streaming.
struct Active {
    job: Job,
    stream: TextStream,
    text: String,
    /// Bytes of `text` already streamed.
    sent: usize,
    hit_stop: bool,
    /// Streamed text holds back this many bytes: they could be the start of a stop string.
    hold_back: usize,
    pending_logprobs: Vec<Value>,
}

impl Active {
    fn new(job: Job) -> Self {
        let hold_back = job.stop.iter().map(String::len).max().unwrap_or(1).saturating_sub(1);
        Self {
            job,
            stream: TextStream::new(),
            text: String::new(),
            sent: 0,
            hit_stop: false,
            hold_back,
            pending_logprobs: Vec::new(),
        }
    }

    fn on_token(&mut self, m: &ChatModel, id: u32, lp: Option<&TokenLogprobs>) -> Flow {
        if self.job.abandoned() {
            return Flow::Stop;
        }
        if let Some(t) = lp {
            self.pending_logprobs.push(logprob_json(m, t.id, t.logprob, &t.top));
        }
        if let Ok(Some(piece)) = self.stream.push(&m.tokenizer, id) {
            self.text.push_str(&piece);
        }
        if let Some(at) = self.job.stop.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(at);
            self.hit_stop = true;
        }
        if let Some(tx) = &self.job.deltas {
            let safe = if self.hit_stop {
                self.text.len()
            } else {
                floor_char_boundary(&self.text, self.text.len().saturating_sub(self.hold_back))
            };
            if safe > self.sent {
                let _ = tx.send(Delta {
                    text: self.text[self.sent..safe].to_string(),
                    logprobs: std::mem::take(&mut self.pending_logprobs),
                });
                self.sent = safe;
            }
        }
        if self.hit_stop { Flow::Stop } else { Flow::Continue }
    }

    /// Streams what was held back and answers the request.
    fn finish(mut self, m: &ChatModel, g: Generation) -> (Job, Finished) {
        if let Some(tx) = &self.job.deltas
            && (self.sent < self.text.len() || !self.pending_logprobs.is_empty())
        {
            let _ = tx.send(Delta {
                text: self.text[self.sent..].to_string(),
                logprobs: std::mem::take(&mut self.pending_logprobs),
            });
        }
        let logprobs: Vec<Value> =
            g.logprobs.iter().map(|t| logprob_json(m, t.id, t.logprob, &t.top)).collect();
        let finish_reason = match (self.hit_stop, g.finish) {
            (true, _) | (false, emlab_model::generate::FinishReason::Stop) => "stop",
            _ => "length",
        };
        let f =
            Finished { text: self.text, finish_reason, completion_tokens: g.ids.len(), logprobs };
        (self.job, f)
    }
}

/// What a panic carried, as an error message.
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
    format!("internal error: {}", what.unwrap_or_else(|| "panic".into()))
}

fn worker(
    models: BTreeMap<String, ChatModel>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    max_batch: usize,
    in_flight: &AtomicUsize,
    health: &Health,
) {
    // Every request leaves through an answer or as abandoned; each frees its place.
    let abandoned = || {
        in_flight.fetch_sub(1, Ordering::SeqCst);
        health.abandoned.fetch_add(1, Ordering::Relaxed);
    };
    let mut batches: BTreeMap<String, ContinuousBatch<Active>> =
        models.keys().map(|k| (k.clone(), ContinuousBatch::default())).collect();
    // The chat template's start, before the user's words, is the same for most requests: computed
    // once per model, each such prompt is prefilled from its end.
    let prefixes: BTreeMap<&String, Option<SharedPrefix>> =
        models.iter().map(|(k, m)| (k, SharedPrefix::new(&m.model, template_prefix(m)))).collect();
    let mut queue: std::collections::VecDeque<Job> = Default::default();
    // Answers go out at the end of each step, after /health is updated: a client that reads
    // /health once it has its answer sees the state that answer left.
    let mut replies: Vec<(Job, Result<Finished, String>)> = Vec::new();
    loop {
        let mut answer = |job: Job, result: Result<Finished, String>| replies.push((job, result));
        let mut running: usize = batches.values().map(ContinuousBatch::len).sum();
        if running == 0 && queue.is_empty() {
            match rx.blocking_recv() {
                Some(job) => queue.push_back(job),
                None => return,
            }
            health.busy.store(true, Ordering::Relaxed);
        }
        while let Ok(job) = rx.try_recv() {
            queue.push_back(job);
        }
        queue.retain(|job| {
            let gone = job.abandoned();
            if gone {
                abandoned();
            }
            !gone
        });
        // Waiting requests join between steps, oldest first, each prefilled alone: a left-padded
        // prefill of several prompts was ~25% faster under load, but a row's logits could then
        // depend on the other prompts' lengths (gemm blocking), and answers must not.
        while running < max_batch {
            let Some(job) = queue.pop_front() else { break };
            let m = &models[&job.model];
            let mut cfg = m.generation_config(job.max_tokens, job.sampling);
            cfg.logprobs = job.top_logprobs;
            let active = Active::new(job);
            // A panic in the prefill fails this request only (the models are read-only and the
            // running batch is not touched until `add`).
            let prefilled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if std::env::var_os("EMLAB_SERVE_PANIC_TEST").is_some_and(|v| v == "1")
                    && active.job.stop.iter().any(|s| s == "<panic>")
                {
                    // Fault injection for the test that the worker survives a panic (off unless set).
                    panic!("injected by EMLAB_SERVE_PANIC_TEST");
                }
                let prompt = std::slice::from_ref(&active.job.prompt);
                let prefix = prefixes[&active.job.model].as_ref();
                let cfgs = std::slice::from_ref(&cfg);
                prefill_after(&m.model, prefix, prompt, cfgs)
            }));
            match prefilled {
                Ok(Ok(p)) => {
                    let batch = batches.get_mut(&active.job.model).expect("a model's batch");
                    batch.add(p, vec![(cfg, active)]);
                    running += 1;
                }
                Ok(Err(e)) => answer(active.job, Err(e.to_string())),
                Err(p) => answer(active.job, Err(panic_message(p))),
            }
        }
        // One token for every running request, model by model.
        for (name, batch) in &mut batches {
            let m = &models[name];
            for _ in batch.cancel_where(|a| a.job.abandoned()) {
                abandoned();
            }
            if batch.is_empty() {
                continue;
            }
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                block_on(batch.step(&m.model, |a, id, lp| a.on_token(m, id, lp)))
            }));
            match stepped {
                Ok(Ok(finished)) => {
                    for (a, g) in finished {
                        if a.job.abandoned() {
                            abandoned();
                            continue;
                        }
                        let (job, f) = a.finish(m, g);
                        answer(job, Ok(f));
                    }
                }
                // A failed step leaves the batch's state unknown: its requests fail, others go on.
                Ok(Err(e)) => {
                    batch.drain().into_iter().for_each(|a| answer(a.job, Err(e.to_string())))
                }
                Err(p) => {
                    let msg = panic_message(p);
                    batch.drain().into_iter().for_each(|a| answer(a.job, Err(msg.clone())));
                }
            }
        }
        let running: usize = batches.values().map(ContinuousBatch::len).sum();
        health.running.store(running, Ordering::Relaxed);
        health.busy.store(running > 0 || !queue.is_empty(), Ordering::Relaxed);
        for (job, result) in replies.drain(..) {
            let counter = if result.is_ok() { &health.answered } else { &health.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = job.done.send(result);
        }
    }
}

/// The tokens a chat with the default system prompt starts with, up to the user's words: what
/// two one-word chats have in common.
fn template_prefix(m: &ChatModel) -> Vec<u32> {
    let chat = |word: &str| m.encode_chat(&[Message::user(word.to_string())]).unwrap_or_default();
    let (a, b) = (chat("a"), chat("b"));
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    a[..common].to_vec()
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn token_json(m: &ChatModel, id: u32, logprob: f32) -> Value {
    let token = m.tokenizer.decode(&[id]).unwrap_or_default();
    json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() })
}

fn logprob_json(m: &ChatModel, id: u32, logprob: f32, top: &[(u32, f32)]) -> Value {
    let mut v = token_json(m, id, logprob);
    v["top_logprobs"] = Value::Array(top.iter().map(|&(i, lp)| token_json(m, i, lp)).collect());
    v
}

/// An OpenAI-style error response.
fn error(status: StatusCode, message: impl Into<String>, code: &str) -> Response {
    let kind = if status == StatusCode::NOT_FOUND || status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    (status, Json(json!({ "error": { "message": message.into(), "type": kind, "code": code } })))
        .into_response()
}

/// A validated request ready for the worker: the job, where its answer arrives, its streamed
/// tokens (when streaming) and its prompt length.
type Submission = (
    Job,
    oneshot::Receiver<Result<Finished, String>>,
    Option<mpsc::UnboundedReceiver<Delta>>,
    usize,
);

/// `Authorization: Bearer KEY` when the server has a key (compared in constant time).
#[allow(clippy::result_large_err)] // the error is the response to send, as axum handlers return
fn authorized(s: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(key) = &s.api_key else { return Ok(()) };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == key.len()
        && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "a valid API key is required (Authorization: Bearer …)",
            "invalid_api_key",
        ))
    }
}

async fn list_models(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let data: Vec<Value> = s
        .models
        .iter()
        .map(|n| json!({ "id": n, "object": "model", "created": s.created, "owned_by": "emlab" }))
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// 200 while the worker runs (idle or busy), 503 once it has stopped.
async fn health_report(State(s): State<AppState>) -> Response {
    let h = &s.health;
    let alive = !s.jobs.is_closed();
    let body = json!({
        "status": if alive { "ok" } else { "worker stopped" },
        "worker": if !alive { "stopped" } else if h.busy.load(Ordering::Relaxed) { "busy" } else { "idle" },
        "running": h.running.load(Ordering::Relaxed),
        "queued": s.in_flight.load(Ordering::Relaxed).saturating_sub(h.running.load(Ordering::Relaxed)),
        "answered": h.answered.load(Ordering::Relaxed),
        "failed": h.failed.load(Ordering::Relaxed),
        "abandoned": h.abandoned.load(Ordering::Relaxed),
    });
    let status = if alive { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// A chat completion request body, as parsed before any check.
#[derive(Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default, alias = "max_completion_tokens")]
    max_tokens: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<StopField>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    logprobs: bool,
    #[serde(default)]
    top_logprobs: Option<usize>,
    #[serde(default)]
    n: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

async fn chat_completions(State(s): State<AppState>, request: Request) -> Response {
    let body = match read_body(&s, request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req = match parse_request(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {e}"),
                "invalid_json",
            );
        }
    };
    let Some(model) = s.encoders.get(&req.model) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "the model '{}' does not exist (available: {})",
                req.model,
                s.models.join(", ")
            ),
            "model_not_found",
        );
    };
    let (job, done_rx, delta_rx, prompt_tokens) = match submission(&s, &req, model) {
        Ok(x) => x,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg, "invalid_request"),
    };
    if let Err(r) = admit(&s, job) {
        return r;
    }
    let id = format!("chatcmpl-{:x}", rand_id());
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match delta_rx {
        None => reply(&req, &id, created, prompt_tokens, done_rx).await,
        Some(deltas) => stream_reply(&req, id, created, deltas, done_rx),
    }
}

/// The request's body within the size limit and the read timeout, from an authorized client: a
/// client that trickles it is dropped.
async fn read_body(s: &AppState, request: Request) -> Result<Bytes, Response> {
    authorized(s, request.headers())?;
    match tokio::time::timeout(
        s.read_timeout,
        axum::body::to_bytes(request.into_body(), s.max_body_bytes),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {} bytes", s.max_body_bytes),
            "body_too_large",
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
            "timeout",
        )),
    }
}

/// A valid request as a job for the worker, with the channels its answer comes back on; else
/// what is wrong with it, in one sentence.
fn submission(s: &AppState, req: &ChatRequest, model: &ChatModel) -> Result<Submission, String> {
    if req.messages.is_empty() {
        return Err("messages must not be empty".into());
    }
    if let Some(bad) =
        req.messages.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return Err(format!("unknown role '{}'", bad.role));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err("only n = 1 is supported".into());
    }
    let max_tokens = req.max_tokens.unwrap_or(s.max_tokens_limit);
    if max_tokens == 0 || max_tokens > s.max_tokens_limit {
        return Err(format!("max_tokens must be between 1 and {}", s.max_tokens_limit));
    }
    let top_logprobs = match (req.logprobs, req.top_logprobs) {
        (false, Some(_)) => return Err("top_logprobs needs logprobs: true".into()),
        (true, Some(k)) if k > 20 => return Err("top_logprobs must be at most 20".into()),
        (true, k) => Some(k.unwrap_or(0)),
        (false, None) => None,
    };
    let sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        top_k: 0,
        seed: req.seed.unwrap_or(0),
    };
    sampling.validate()?;
    let stop = match &req.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) if v.len() <= 4 => v.clone(),
        Some(StopField::Many(_)) => return Err("at most 4 stop sequences".into()),
    };
    if stop.iter().any(String::is_empty) {
        return Err("stop sequences must not be empty".into());
    }
    let prompt = model.encode_chat(&req.messages).map_err(|e| e.to_string())?;
    emlab_model::generate::check_prompts(&model.model, std::slice::from_ref(&prompt), max_tokens)
        .map_err(|e| e.to_string())?;
    let (done_tx, done_rx) = oneshot::channel();
    let (deltas, delta_rx) = if req.stream {
        let (t, r) = mpsc::unbounded_channel();
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let n_prompt = prompt.len();
    Ok((
        Job {
            model: req.model.clone(),
            prompt,
            max_tokens,
            sampling,
            stop,
            top_logprobs,
            deltas,
            done: done_tx,
        },
        done_rx,
        delta_rx,
        n_prompt,
    ))
}

/// Queues the job if a batch row or queue place is free; else 429 with Retry-After.
#[allow(clippy::result_large_err)] // the error is the response to send, as axum handlers return
fn admit(s: &AppState, job: Job) -> Result<(), Response> {
    if s.in_flight.fetch_add(1, Ordering::SeqCst) >= s.capacity {
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "the server is busy (every batch row and queue place is taken); retry shortly",
            "server_busy",
        );
        r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return Err(r);
    }
    if s.jobs.send(job).is_err() {
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model worker has stopped",
            "worker_stopped",
        ));
    }
    Ok(())
}

/// The whole answer as one `chat.completion`.
async fn reply(
    req: &ChatRequest,
    id: &str,
    created: u64,
    prompt_tokens: usize,
    done_rx: oneshot::Receiver<Result<Finished, String>>,
) -> Response {
    match done_rx.await {
        Ok(Ok(f)) => {
            let mut choice = json!({ "index": 0, "message": { "role": "assistant", "content": f.text }, "finish_reason": f.finish_reason });
            choice["logprobs"] =
                if req.logprobs { json!({ "content": f.logprobs }) } else { Value::Null };
            Json(json!({
                "id": id, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [choice],
                "usage": { "prompt_tokens": prompt_tokens, "completion_tokens": f.completion_tokens, "total_tokens": prompt_tokens + f.completion_tokens },
            }))
            .into_response()
        }
        Ok(Err(msg)) => error(StatusCode::INTERNAL_SERVER_ERROR, msg, "generation_failed"),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model worker dropped the request",
            "worker_stopped",
        ),
    }
}

/// The answer as server-sent `chat.completion.chunk`s, one per token, then `[DONE]`.
fn stream_reply(
    req: &ChatRequest,
    id: String,
    created: u64,
    mut deltas: mpsc::UnboundedReceiver<Delta>,
    done_rx: oneshot::Receiver<Result<Finished, String>>,
) -> Response {
    let model_name = req.model.clone();
    let want_logprobs = req.logprobs;
    let stream = async_stream(move |tx| async move {
        let chunk = |delta: Value, finish: Value, logprobs: Value| {
            json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": [{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs }] })
        };
        if tx
            .send(
                chunk(json!({ "role": "assistant", "content": "" }), Value::Null, Value::Null)
                    .to_string(),
            )
            .await
            .is_err()
        {
            return;
        }
        loop {
            // Returning drops `deltas` and `done_rx`: the worker sees the client gone.
            let d = tokio::select! {
                d = deltas.recv() => d,
                () = tx.closed() => return,
            };
            let Some(d) = d else { break };
            let lp = if want_logprobs { json!({ "content": d.logprobs }) } else { Value::Null };
            if tx
                .send(chunk(json!({ "content": d.text }), Value::Null, lp).to_string())
                .await
                .is_err()
            {
                return;
            }
        }
        let finish = match done_rx.await {
            Ok(Ok(f)) => json!(f.finish_reason),
            Ok(Err(msg)) => {
                let _ = tx
                    .send(
                        json!({ "error": { "message": msg, "type": "server_error" } }).to_string(),
                    )
                    .await;
                json!("error")
            }
            Err(_) => json!("error"),
        };
        let _ = tx.send(chunk(json!({}), finish, Value::Null).to_string()).await;
        let _ = tx.send("[DONE]".to_string()).await;
    });
    Sse::new(stream).into_response()
}

/// Parses a request body (the first thing outside input meets; fuzzed by fuzz/).
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, serde_json::Error> {
    serde_json::from_slice(body)
}

/// A stream of SSE events fed by a spawned task through a channel.
fn async_stream<F, Fut>(f: F) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio_stream::StreamExt;
    let (tx, rx) = mpsc::channel::<String>(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|data| Ok(Event::default().data(data)))
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}
