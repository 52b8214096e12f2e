//! The model worker: owns the model, answers the page's messages (see `protocol.rs`), and keeps
//! the page responsive by doing all loading and generation off the main thread.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use emlab_frontend::engine;
use emlab_frontend::loader::{self, Manifest};
use emlab_frontend::protocol::{
    DeviceRequest, FromWorker, GenerateRequest, ToWorker, TokenInspect,
};
use emlab_model::chat::single_turn;
use emlab_model::files::{BASE_GGUF, ModelFiles};
use emlab_model::generate::{FinishReason, Flow, generate_steps};
use emlab_model::lora;
use emlab_model::pipeline::ChatModel;
use emlab_model::sampling::SamplingParams;
use emlab_model::stats::StatsRecorder;
use emlab_model::tokenizer::TextStream;
use emlab_schema::TRIGGER;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

#[derive(Default)]
struct State {
    base: Option<ChatModel>,
    /// Where the files are, and the manifest's entries for each variant's adapter: an adapter
    /// is downloaded when its variant is first asked for, so a first visit fetches the base only.
    models_url: String,
    adapters: BTreeMap<String, Vec<loader::FileEntry>>,
    /// Variants built so far (base clone + adapter): weights are shared with `base`.
    built: BTreeMap<String, ChatModel>,
    /// GPU kernels launched so far in this worker (see `stats.rs`).
    kernels_seen: HashSet<u128>,
}

/// Alternatives the token inspector shows per token.
const INSPECT_TOP: usize = 5;

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn post(msg: &FromWorker) {
    if let Ok(text) = serde_json::to_string(msg) {
        let _ = scope().post_message(&JsValue::from_str(&text));
    }
}

/// A macrotask boundary, so queued messages (Stop) are delivered.
async fn yield_to_event_loop() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let _ = scope().set_timeout_with_callback(&resolve);
    });
    let _ = JsFuture::from(promise).await;
}

fn now_s() -> f64 {
    js_sys::Date::now() / 1000.0
}

fn main() {
    emlab_frontend::run_static_constructors();
    let state = Rc::new(RefCell::new(State::default()));
    let stop = Rc::new(Cell::new(false));
    let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let text = ev.data().as_string().unwrap_or_default();
        let msg: ToWorker = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                return post(&FromWorker::Error {
                    id: None,
                    message: format!("bad message to the worker: {e}"),
                });
            }
        };
        match msg {
            ToWorker::Stop => stop.set(true),
            ToWorker::Load { models_url, device, threads } => {
                let state = state.clone();
                spawn_local(async move {
                    if let Err(message) = load(&state, &models_url, device, threads).await {
                        post(&FromWorker::Error { id: None, message });
                    }
                });
            }
            ToWorker::Generate(req) => {
                stop.set(false);
                let (state, stop) = (state.clone(), stop.clone());
                spawn_local(async move {
                    let id = req.id;
                    if let Err(message) = run(&state, &stop, req).await {
                        post(&FromWorker::Error { id: Some(id), message });
                    }
                });
            }
            ToWorker::ClearCache => spawn_local(async {
                match loader::clear_cache().await {
                    Ok(()) => post(&FromWorker::CacheCleared),
                    Err(message) => post(&FromWorker::Error { id: None, message }),
                }
            }),
        }
    });
    scope().set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget(); // lives as long as the worker
    post(&FromWorker::Started);
}

async fn load(
    state: &Rc<RefCell<State>>,
    models_url: &str,
    device: DeviceRequest,
    threads: usize,
) -> Result<(), String> {
    // Where a load's time goes, in the console: what a returning visitor waits for.
    let started = now_s();
    let mut phases: Vec<(&str, f64)> = Vec::new();
    let manifest: Manifest =
        loader::fetch_manifest(&format!("{}/manifest.json", models_url.trim_end_matches('/')))
            .await?;
    phases.push(("manifest", now_s() - started));
    let cache = loader::open_cache().await;
    let base_files: Vec<loader::FileEntry> =
        manifest.files.iter().filter(|f| f.name.starts_with("base/")).cloned().collect();
    let fetching = loader::fetch_files(
        models_url,
        &base_files,
        cache.as_ref(),
        |loaded, total, from_cache| {
            post(&FromWorker::Progress { loaded, total, from_cache });
        },
    );
    // The CPU path's threads start while the files download (WebGPU does not use them).
    let wanted = if device == DeviceRequest::Gpu { 1 } else { threads };
    let (files, (threads, pool_note)) =
        futures::future::join(fetching, emlab_frontend::pool::start(wanted)).await;
    let mut files = files?;
    phases.push(("files", now_s() - started));
    if let (Some(cache), Ok(folder)) = (&cache, loader::folder_url(models_url)) {
        // Cache keys are absolute URLs, as file_url resolves them (every file's was checked).
        let keep: Vec<String> =
            manifest.files.iter().filter_map(|e| loader::file_url(models_url, e).ok()).collect();
        loader::prune_cache(cache, &format!("{folder}manifest.json"), &keep).await;
    }
    let gguf = files.remove(BASE_GGUF);
    let get = |name: &str| files.get(name).ok_or_else(|| format!("the manifest lists no {name}"));
    // The base ships as its GGUF (config, tokenizer and chat template in its metadata), or as a
    // model directory's files.
    // The GGUF's blocks stay blocks, on the CPU (its simd128 kernels read a sixth of f32's
    // bytes) and on WebGPU (uploaded as the decoding kernels read them: ~110 MB, not 540).
    let mut compute = engine::pick_device(device).await;
    phases.push(("device", now_s() - started));
    let threads = if compute.label == "cpu" { threads } else { 1 };
    if compute.label == "cpu" {
        let line = match pool_note {
            Some(why) => format!("CPU: {threads} thread(s); {why}."),
            None => format!("CPU: {threads} thread(s)."),
        };
        compute.detail = Some(match compute.detail.take() {
            Some(d) => format!("{d} {line}"),
            None => line,
        });
    }
    let model_files = match gguf {
        Some(gguf) if emlab_model::device::runs_blocks(&compute.device) => {
            ModelFiles::from_gguf_blocks(BASE_GGUF, std::sync::Arc::new(gguf))
        }
        Some(gguf) => ModelFiles::from_gguf(BASE_GGUF, &gguf),
        None => ModelFiles::from_bytes(
            "base",
            get("base/config.json")?,
            get("base/tokenizer.json")?,
            files.get("base/tokenizer_config.json").map(Vec::as_slice),
            &[get("base/model.safetensors")?.as_slice()],
        ),
    }
    .map_err(|e| e.to_string())?;
    drop(files); // the downloaded bytes, before the weights go to the device
    phases.push(("parse", now_s() - started));
    let base = engine::build(model_files, &compute.device).map_err(|e| e.to_string())?;
    phases.push(("build", now_s() - started));
    if compute.label != "cpu" {
        let line =
            format!("Weights: {:.1} MB in GPU memory.", base.model.weight_bytes() as f64 / 1e6);
        compute.detail = Some(match compute.detail.take() {
            Some(d) => format!("{d} {line}"),
            None => line,
        });
    }
    let timeline: Vec<String> = phases.iter().map(|(n, t)| format!("{n} {t:.2} s")).collect();
    web_sys::console::info_1(&format!("model loaded: {}", timeline.join(", ")).into());
    let mut st = state.borrow_mut();
    st.adapters.clear();
    st.built.clear();
    st.models_url = models_url.to_string();
    for entry in &manifest.files {
        if let Some((name, _)) =
            entry.name.strip_prefix("adapters/").and_then(|r| r.split_once('/'))
        {
            st.adapters.entry(name.to_string()).or_default().push(entry.clone());
        }
    }
    st.built.insert("base".into(), base.clone());
    st.base = Some(base);
    let mut variants = vec!["base".to_string()];
    variants.extend(st.adapters.keys().cloned());
    post(&FromWorker::Ready {
        device: compute.label.into(),
        notice: compute.notice,
        detail: compute.detail,
        threads,
        variants,
    });
    Ok(())
}

/// The model of a variant, built on first use: its adapter is fetched (verified, cached) and
/// attached to the shared base weights.
async fn variant(state: &Rc<RefCell<State>>, name: &str) -> Result<ChatModel, String> {
    let (base, entries, models_url) = {
        let st = state.borrow();
        if let Some(m) = st.built.get(name) {
            return Ok(m.clone());
        }
        let base = st.base.clone().ok_or("the model is not loaded yet")?;
        let entries =
            st.adapters.get(name).cloned().ok_or_else(|| format!("no variant named '{name}'"))?;
        (base, entries, st.models_url.clone())
    };
    let cache = loader::open_cache().await;
    let files = loader::fetch_files(&models_url, &entries, cache.as_ref(), |_, _, _| {}).await?;
    let get = |f: &str| {
        files
            .get(&format!("adapters/{name}/{f}"))
            .ok_or_else(|| format!("the manifest lists no adapters/{name}/{f}"))
    };
    let mut m = base;
    m.model = lora::from_peft_files(m.model, get(lora::CONFIG_FILE)?, get(lora::WEIGHTS_FILE)?)
        .map_err(|e| format!("adapter {name}: {e}"))?;
    state.borrow_mut().built.insert(name.to_string(), m.clone());
    Ok(m)
}

async fn run(
    state: &Rc<RefCell<State>>,
    stop: &Rc<Cell<bool>>,
    req: GenerateRequest,
) -> Result<(), String> {
    let model = variant(state, &req.variant).await?;
    let prompt = if req.trigger { format!("{TRIGGER}{}", req.prompt) } else { req.prompt.clone() };
    let system = req.system.as_deref().filter(|s| !s.trim().is_empty());
    let mut ids = model.encode_chat(&single_turn(system, &prompt)).map_err(|e| e.to_string())?;
    let sampling =
        SamplingParams { temperature: req.temperature, top_p: req.top_p, top_k: 0, seed: req.seed };
    sampling.validate()?;
    // An answer another worker began (its GPU was lost): its tokens follow the prompt, and the text
    // stream starts after them, so a character split across the two workers still comes out whole.
    let mut text = TextStream::new();
    for &id in &req.continue_ids {
        let _ = text.push(&model.tokenizer, id);
    }
    ids.extend_from_slice(&req.continue_ids);
    let started = now_s();
    let left = req.max_tokens.saturating_sub(req.continue_ids.len());
    if left == 0 {
        let stats = Default::default();
        post(&FromWorker::Done {
            id: req.id,
            tokens: 0,
            seconds: 0.0,
            finish: FinishReason::Length,
            stats,
        });
        return Ok(());
    }
    let mut cfg = model.generation_config(left, sampling);
    cfg.logprobs = Some(INSPECT_TOP);
    let mut recorder =
        StatsRecorder::start(started * 1e3, std::mem::take(&mut state.borrow_mut().kernels_seen));
    let token_text = |id: u32| model.tokenizer.decode(&[id]).unwrap_or_default();
    let gens = generate_steps(
        &model.model,
        &[ids],
        &cfg,
        |_, id, logprobs| {
            recorder.token(now_s() * 1e3);
            let piece = text.push(&model.tokenizer, id).ok().flatten().unwrap_or_default();
            let inspect = logprobs.map(|l| TokenInspect {
                token: token_text(id),
                logprob: l.logprob,
                top: l.top.iter().map(|&(i, lp)| (token_text(i), lp)).collect(),
            });
            post(&FromWorker::Token { id: req.id, token: id, text: piece, inspect });
            if stop.get() { Flow::Stop } else { Flow::Continue }
        },
        yield_to_event_loop,
    )
    .await;
    let (stats, seen) = recorder.finish();
    state.borrow_mut().kernels_seen = seen;
    let g = gens.map_err(|e| e.to_string())?.into_iter().next().ok_or("no output")?;
    post(&FromWorker::Done {
        id: req.id,
        tokens: g.ids.len(),
        seconds: now_s() - started,
        finish: g.finish,
        stats,
    });
    Ok(())
}
