//! The page's side of the model worker, one concern in one file: chooses its device (timing both
//! where it cannot tell), starts it, sends requests, turns its messages into signals the components
//! read, and replaces it on the CPU when its GPU is lost.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc;
use leptos::prelude::*;
use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

use emlab_model::generate::FinishReason;

use crate::device_choice::{self, Measured};
use crate::engine::{AdapterInfo, Choice};
use crate::protocol::{DeviceRequest, FromWorker, GenerateRequest, ToWorker, TokenInspect};

/// The content of `<meta name="NAME">`: scripts/site.sh names the worker's files by content hash
/// and writes their names there.
fn meta(name: &str) -> Option<String> {
    web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.query_selector(&format!("meta[name={name}]")).ok().flatten())
        .and_then(|m| m.get_attribute("content"))
}

/// The worker's loader script (`trunk serve` leaves the plain name): a classic script, one thread.
fn worker_url() -> String {
    meta("emlab-worker").unwrap_or_else(|| "./worker_loader.js".into())
}

/// Whether the page may share memory with workers (COOP/COEP headers, or the service worker that
/// adds them: see `public/coi-serviceworker.js`).
fn cross_origin_isolated() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("crossOriginIsolated"))
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// A worker loaded and timed while the page chooses the device ([`ModelWorker::probe`]).
struct Probe {
    worker: Worker,
    /// Its Ready message, for the handle that adopts it.
    ready: FromWorker,
    tok_s: f64,
    threads: usize,
    /// Its message and error handlers, until the handle's replace them.
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_error: Closure<dyn FnMut(web_sys::Event)>,
}

fn post(worker: &Worker, msg: &ToWorker) {
    if let Ok(text) = serde_json::to_string(msg) {
        let _ = worker.post_message(&JsValue::from_str(&text));
    }
}

/// What a worker's error event says: an error inside it is an ErrorEvent; a script that did not
/// load, a plain Event.
fn error_message(ev: &web_sys::Event) -> String {
    ev.dyn_ref::<web_sys::ErrorEvent>()
        .map(|e| e.message())
        .unwrap_or_else(|| "its script did not load".into())
}

/// Where the worker is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerStatus {
    Starting,
    /// Timing a short answer on `on` ("WebGPU", "your CPU") to pick the faster device, once per
    /// adapter ([`device_choice`]).
    Measuring {
        on: &'static str,
    },
    /// `seconds_left`: an estimate from the rate so far, once there is one worth showing.
    Loading {
        loaded: u64,
        total: u64,
        from_cache: bool,
        seconds_left: Option<f64>,
    },
    Ready {
        device: String,
        notice: Option<String>,
        detail: Option<String>,
        /// The CPU path's threads.
        threads: usize,
        variants: Vec<String>,
    },
    Failed(String),
}

/// Which view asked for a generation. Compare's Run and Stop end only Compare's requests; the Rate
/// view's sampling waits behind a Compare run instead of being cancelled by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Owner {
    #[default]
    Compare,
    Rate,
}

impl Owner {
    pub fn view(self) -> &'static str {
        match self {
            Owner::Compare => "Compare",
            Owner::Rate => "Rate",
        }
    }
}

/// One pane's output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Output {
    pub owner: Owner,
    pub text: String,
    /// The answer token by token, for the inspector (shared: a pane clones its output often).
    pub pieces: Vec<Arc<Piece>>,
    pub running: bool,
    pub tokens: usize,
    pub seconds: f64,
    pub finish: Option<FinishReason>,
    pub error: Option<String>,
    /// The answer's token ids, from which another worker can continue it.
    pub ids: Vec<u32>,
    /// Tokens a GPU that was lost had written when the CPU took the answer over.
    pub resumed_at: Option<usize>,
}

/// One generated token: the text it adds to the answer, and what the inspector shows for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub inspect: Option<TokenInspect>,
}

/// The page's handle on the model worker, which the components share (through context): its
/// status, outputs by request id, and a queue of requests that run one after another. (The
/// worker's own side, where the model runs, is `engine.rs` and `bin/worker.rs`.)
#[derive(Clone, Copy)]
pub struct ModelWorker {
    worker: StoredValue<Option<Worker>, LocalStorage>,
    pub status: RwSignal<WorkerStatus>,
    pub outputs: RwSignal<Vec<(u64, Output)>>,
    queue: StoredValue<VecDeque<(Owner, GenerateRequest)>, LocalStorage>,
    /// The request the worker is running, and whose it is.
    busy: RwSignal<Option<(u64, Owner)>>,
    /// That request, to continue elsewhere if its worker dies.
    in_flight: StoredValue<Option<GenerateRequest>>,
    /// Whether the last failure was the worker's own load error (the worker still runs and keeps
    /// what it downloaded so far: Retry asks it again instead of starting a new one).
    load_failed: StoredValue<bool>,
    next_id: StoredValue<u64>,
    /// What to load once the worker says it is listening.
    load: StoredValue<ToWorker>,
    /// Why the model left WebGPU (a sentence and its detail), shown with the CPU's Ready status.
    crash_notice: StoredValue<Option<(String, String)>>,
    /// Why the page chose the device it did (a sentence, and figures put before the worker's own
    /// detail), when it chose by measuring.
    choice_notice: StoredValue<Option<(String, String)>>,
    /// When the first byte of this load arrived (ms, page clock), for the time-left estimate.
    load_started: StoredValue<Option<(f64, u64)>>,
    /// The CPU path's threads the page asks for.
    threads_wanted: usize,
    /// Whether the running worker is the threaded build, and whether it has said it started.
    threaded: StoredValue<bool>,
    started: StoredValue<bool>,
    /// Why the CPU path runs on fewer threads than asked, as far as the page can tell.
    threads_note: StoredValue<Option<String>>,
}

impl ModelWorker {
    /// Starts the worker and asks it to load the models: the threaded build (scripts/worker-threads.sh)
    /// where the page is cross-origin isolated and more than one thread is wanted, else Trunk's
    /// single-threaded one.
    pub fn start(models_url: String, device: DeviceRequest, threads_wanted: usize) -> ModelWorker {
        let model = ModelWorker {
            worker: StoredValue::new_local(None),
            status: RwSignal::new(WorkerStatus::Starting),
            outputs: RwSignal::new(Vec::new()),
            queue: StoredValue::new_local(VecDeque::new()),
            busy: RwSignal::new(None),
            in_flight: StoredValue::new(None),
            load_failed: StoredValue::new(false),
            next_id: StoredValue::new(1),
            load: StoredValue::new(ToWorker::Load { models_url, device, threads: 1 }),
            crash_notice: StoredValue::new(None),
            choice_notice: StoredValue::new(None),
            load_started: StoredValue::new(None),
            threads_wanted,
            threaded: StoredValue::new(false),
            started: StoredValue::new(false),
            threads_note: StoredValue::new(None),
        };
        model.spawn();
        model
    }

    /// The threaded worker's module, or why the page runs the single-threaded one.
    fn threaded_worker(&self) -> Result<String, String> {
        if self.threads_wanted <= 1 {
            return Err("one thread asked for".into());
        }
        if let Some(note) = self.threads_note.get_value() {
            return Err(note); // the threaded worker failed once already
        }
        if !cross_origin_isolated() {
            return Err("this page is not cross-origin isolated (its host sends no COOP/COEP headers and the service worker that adds them did not run), so the browser gives workers no shared memory".into());
        }
        meta("emlab-worker-threads")
            .ok_or_else(|| "this build of the site has no threaded worker".into())
    }

    /// Starts a worker on the device the page settles on: the threaded build where the page is
    /// isolated, it exists, more than one thread is wanted and the model runs on the CPU (it has
    /// no WebGPU); else Trunk's. On a hardware WebGPU adapter, unless the address forces a device,
    /// the faster of the two is timed once and remembered ([`device_choice`]).
    fn spawn(self) {
        let threaded = self.threaded_worker();
        if let Err(why) = &threaded
            && self.threads_wanted > 1
        {
            self.threads_note.set_value(Some(why.clone()));
        }
        let threaded = threaded.ok();
        let request = self.request();
        wasm_bindgen_futures::spawn_local(async move {
            match crate::engine::choose(request).await {
                Choice::Cpu { .. } => self.spawn_worker(threaded),
                Choice::WebGpu(adapter)
                    if request == DeviceRequest::Measure
                        || (request == DeviceRequest::Auto && !adapter.software) =>
                {
                    self.choose_by_measuring(adapter, threaded).await
                }
                Choice::WebGpu(_) => self.spawn_worker(None),
            }
        });
    }

    fn request(&self) -> DeviceRequest {
        match self.load.get_value() {
            ToWorker::Load { device, .. } => device,
            _ => DeviceRequest::Auto,
        }
    }

    fn set_request(&self, request: DeviceRequest) {
        self.load.update_value(|l| {
            if let ToWorker::Load { device, .. } = l {
                *device = request;
            }
        });
    }

    /// The faster device for this adapter: as measured on an earlier visit, or timed now on
    /// WebGPU and then on the CPU path. The winner's worker is kept (no third load); a device that
    /// fails to load or answer loses, saying why.
    async fn choose_by_measuring(self, adapter: AdapterInfo, threaded: Option<String>) {
        let name = adapter.description;
        if let Some(m) = device_choice::remembered(&name) {
            self.chose(&m, &name, true);
            return self.spawn_worker(if m.gpu_wins() { None } else { threaded });
        }
        let gpu = match self.probe(None, DeviceRequest::Gpu).await {
            Ok(gpu) => gpu,
            Err(why) => {
                self.choice_notice.set_value(Some((
                    "Running on your CPU: WebGPU did not start here.".into(),
                    format!("WebGPU adapter: {name}; {why}."),
                )));
                self.set_request(DeviceRequest::Cpu);
                return self.spawn_worker(threaded);
            }
        };
        match self.probe(threaded, DeviceRequest::Cpu).await {
            Ok(cpu) => {
                let m = Measured {
                    gpu_tok_s: gpu.tok_s,
                    cpu_tok_s: cpu.tok_s,
                    cpu_threads: cpu.threads,
                };
                device_choice::remember(&name, &m);
                self.chose(&m, &name, false);
                let (keep, lose) = if m.gpu_wins() { (gpu, cpu) } else { (cpu, gpu) };
                lose.worker.terminate();
                self.adopt(keep);
            }
            Err(why) => {
                web_sys::console::warn_1(&format!("the CPU path's warm-up failed: {why}").into());
                self.set_request(DeviceRequest::Gpu);
                self.adopt(gpu);
            }
        }
    }

    /// Records the measured choice: the request the worker loads with, and the notice to show.
    fn chose(&self, m: &Measured, adapter: &str, earlier: bool) {
        self.set_request(if m.gpu_wins() { DeviceRequest::Gpu } else { DeviceRequest::Cpu });
        self.choice_notice.set_value(Some((m.notice(earlier), m.detail(adapter))));
    }

    /// Loads the model in a worker of its own on `device` and times a short greedy answer
    /// ([`device_choice::warm_up_request`]): the worker ready to adopt, and its speed. The download's
    /// progress shows as the handle's.
    async fn probe(self, threaded: Option<String>, device: DeviceRequest) -> Result<Probe, String> {
        let (worker, threads) = self.new_worker(threaded)?;
        let (tx, mut inbox) = mpsc::unbounded();
        let errors = tx.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            let text = ev.data().as_string().unwrap_or_default();
            let msg = serde_json::from_str::<FromWorker>(&text).unwrap_or_else(|e| {
                FromWorker::Error { id: None, message: format!("unreadable message: {e}") }
            });
            let _ = tx.unbounded_send(msg);
        });
        let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
            let message = format!("the worker stopped: {}", error_message(&ev));
            let _ = errors.unbounded_send(FromWorker::Error { id: None, message });
        });
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        let on = if device == DeviceRequest::Gpu { "WebGPU" } else { "your CPU" };
        let mut load = self.load.get_value();
        if let ToWorker::Load { device: d, threads: t, .. } = &mut load {
            (*d, *t) = (device, threads);
        }
        let timed = async {
            let ready = loop {
                match inbox.next().await {
                    Some(FromWorker::Started) => post(&worker, &load),
                    Some(progress @ FromWorker::Progress { .. }) => self.on_message(progress),
                    Some(ready @ FromWorker::Ready { .. }) => break ready,
                    Some(FromWorker::Error { message, .. }) => return Err(message),
                    Some(_) => {}
                    None => return Err("the worker stopped".into()),
                }
            };
            if let FromWorker::Ready { device: ran, detail, .. } = &ready
                && (ran == "webgpu") != (device == DeviceRequest::Gpu)
            {
                return Err(detail.clone().unwrap_or_else(|| format!("it loaded on {ran}")));
            }
            self.status.set(WorkerStatus::Measuring { on });
            post(&worker, &ToWorker::Generate(device_choice::warm_up_request(0)));
            loop {
                match inbox.next().await {
                    Some(FromWorker::Done { stats, .. }) => {
                        let tok_s = device_choice::steady_tok_s(&stats)
                            .ok_or("the timed answer ended too early to time")?;
                        return Ok((ready, tok_s));
                    }
                    Some(FromWorker::Error { message, .. }) => return Err(message),
                    Some(_) => {}
                    None => return Err("the worker stopped".into()),
                }
            }
        };
        match timed.await {
            Ok((ready, tok_s)) => Ok(Probe {
                worker,
                ready,
                tok_s,
                threads,
                _on_message: on_message,
                _on_error: on_error,
            }),
            Err(e) => {
                worker.terminate();
                Err(e)
            }
        }
    }

    /// Makes a timed worker the handle's: its messages go to [`ModelWorker::on_message`] from now on,
    /// starting with its Ready.
    fn adopt(self, probe: Probe) {
        self.threaded.set_value(probe.threads > 1);
        self.started.set_value(true);
        self.load.update_value(|l| {
            if let ToWorker::Load { threads, .. } = l {
                *threads = probe.threads;
            }
        });
        self.attach(probe.worker);
        self.on_message(probe.ready);
    }

    /// `threaded`: the threaded worker's module (an ES module, wasm-bindgen's web target); None
    /// for Trunk's worker (a classic script with a loader shim). Returns it with the threads its
    /// CPU path will run.
    fn new_worker(&self, threaded: Option<String>) -> Result<(Worker, usize), String> {
        let opts = WorkerOptions::new();
        let (url, threads) = match threaded {
            Some(url) => {
                opts.set_type(WorkerType::Module);
                (url, self.threads_wanted)
            }
            None => {
                opts.set_type(WorkerType::Classic);
                (worker_url(), 1)
            }
        };
        Worker::new_with_options(&url, &opts)
            .map(|w| (w, threads))
            .map_err(|e| format!("cannot start the model worker: {e:?}"))
    }

    fn spawn_worker(self, threaded: Option<String>) {
        let (worker, threads) = match self.new_worker(threaded) {
            Ok(w) => w,
            Err(e) => return self.status.set(WorkerStatus::Failed(e)),
        };
        self.threaded.set_value(threads > 1);
        self.started.set_value(false);
        self.load.update_value(|l| {
            if let ToWorker::Load { threads: t, .. } = l {
                *t = threads;
            }
        });
        self.attach(worker);
    }

    /// Sends the worker's messages to [`ModelWorker::on_message`] and its crash to [`ModelWorker::on_crash`].
    fn attach(self, worker: Worker) {
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            let text = ev.data().as_string().unwrap_or_default();
            match serde_json::from_str::<FromWorker>(&text) {
                Ok(msg) => self.on_message(msg),
                Err(e) => self
                    .status
                    .set(WorkerStatus::Failed(format!("unreadable message from the worker: {e}"))),
            }
        });
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        on_message.forget(); // as long as the worker
        let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
            self.on_crash(error_message(&ev))
        });
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        on_error.forget();
        self.worker.set_value(Some(worker));
    }

    /// The worker died (a lost or failing GPU device aborts it). On WebGPU, start a fresh worker on
    /// the CPU and say so; on the CPU there is nothing left to fall back to.
    fn on_crash(self, message: String) {
        // The threaded worker did not even start (its files missing, a browser without module
        // workers): the single-threaded one, saying why.
        if self.threaded.get_value() && !self.started.get_value() {
            self.worker.update_value(|w| {
                if let Some(w) = w.take() {
                    w.terminate();
                }
            });
            let message = if message.is_empty() { "no reason given".into() } else { message };
            self.threads_note
                .set_value(Some(format!("the threaded worker did not start ({message})")));
            return self.spawn();
        }
        let on_gpu = match self.status.get_untracked() {
            WorkerStatus::Ready { device, .. } => device == "webgpu",
            _ => self.request() != DeviceRequest::Cpu,
        };
        self.worker.update_value(|w| {
            if let Some(w) = w.take() {
                w.terminate();
            }
        });
        if !on_gpu {
            let interrupted = "interrupted: the model worker stopped; run again";
            self.outputs.update(|outs| {
                for (_, o) in outs.iter_mut().filter(|(_, o)| o.running) {
                    o.running = false;
                    o.error = Some(interrupted.into());
                }
            });
            self.queue.update_value(|q| q.clear());
            self.busy.set(None);
            return self
                .status
                .set(WorkerStatus::Failed(format!("the model worker crashed: {message}")));
        }
        // The GPU is gone (or its worker is): the answer it was writing goes back to the front of
        // the queue with the tokens already shown, and the CPU worker writes the rest; queued
        // requests wait for it.
        if let (Some(mut req), Some((_, owner))) =
            (self.in_flight.get_value(), self.busy.get_untracked())
        {
            self.update(req.id, |o| {
                req.continue_ids = o.ids.clone();
                o.resumed_at = Some(o.ids.len());
            });
            self.queue.update_value(|q| q.push_front((owner, req)));
        }
        self.in_flight.set_value(None);
        self.busy.set(None);
        self.load.update_value(|l| {
            if let ToWorker::Load { device, .. } = l {
                *device = DeviceRequest::Cpu;
            }
        });
        self.crash_notice
            .set_value(Some(("The GPU stopped working; switched to your CPU.".into(), message)));
        self.status.set(WorkerStatus::Starting);
        self.spawn();
    }

    fn send(&self, msg: &ToWorker) {
        self.worker.with_value(|w| {
            if let Some(w) = w {
                post(w, msg);
            }
        });
    }

    fn on_message(self, msg: FromWorker) {
        match msg {
            FromWorker::Started => {
                self.started.set_value(true);
                self.send(&self.load.get_value())
            }
            FromWorker::Progress { loaded, total, from_cache } => {
                let now = js_sys::Date::now();
                let (t0, at0) = match self.load_started.get_value() {
                    Some(start)
                        if matches!(self.status.get_untracked(), WorkerStatus::Loading { .. }) =>
                    {
                        start
                    }
                    _ => {
                        self.load_started.set_value(Some((now, loaded)));
                        (now, loaded)
                    }
                };
                let seconds_left = estimate_seconds_left(
                    now - t0,
                    loaded - at0.min(loaded),
                    total - loaded.min(total),
                );
                self.status.set(WorkerStatus::Loading { loaded, total, from_cache, seconds_left })
            }
            FromWorker::Ready { device, notice, detail, threads, variants } => {
                let (notice, mut detail) =
                    match (self.crash_notice.get_value(), self.choice_notice.get_value()) {
                        (Some((n, d)), _) => (Some(n), Some(d)),
                        (None, Some((n, d))) => {
                            (Some(n), Some(detail.map_or(d.clone(), |w| format!("{d} {w}"))))
                        }
                        (None, None) => (notice, detail),
                    };
                if let (Some(why), true) = (self.threads_note.get_value(), device == "cpu") {
                    let line = format!("One thread: {why}.");
                    detail = Some(detail.map_or(line.clone(), |d| format!("{d} {line}")));
                }
                // For the benchmark: when the model was ready, in ms from the navigation's start
                // (a selector wait would add the harness's polling delay).
                if let Some(window) = web_sys::window()
                    && let Some(performance) = window.performance()
                {
                    let _ = js_sys::Reflect::set(
                        &window,
                        &JsValue::from_str("__emlabReadyMs"),
                        &JsValue::from_f64(performance.now()),
                    );
                    let _ = js_sys::Reflect::set(
                        &window,
                        &JsValue::from_str("__emlabThreads"),
                        &JsValue::from_f64(threads as f64),
                    );
                }
                self.status.set(WorkerStatus::Ready { device, notice, detail, threads, variants });
                self.pump();
            }
            FromWorker::Token { id, token, text, inspect } => self.update(id, |o| {
                o.ids.push(token);
                o.text.push_str(&text);
                o.pieces.push(Arc::new(Piece { text, inspect }));
            }),
            FromWorker::Done { id, tokens, seconds, finish, stats } => {
                // For the benchmark (bench/browser/bench.mjs): the last generation's per-token figures.
                if let (Some(window), Ok(json)) = (web_sys::window(), serde_json::to_string(&stats))
                {
                    let _ = js_sys::Reflect::set(
                        &window,
                        &JsValue::from_str("__emlabStats"),
                        &JsValue::from_str(&json),
                    );
                }
                self.update(id, |o| {
                    o.running = false;
                    o.tokens = o.resumed_at.unwrap_or(0) + tokens;
                    o.seconds = seconds;
                    o.finish = Some(finish);
                });
                self.in_flight.set_value(None);
                self.busy.set(None);
                self.pump();
            }
            FromWorker::Error { id: Some(id), message } => {
                self.update(id, |o| {
                    o.running = false;
                    o.error = Some(message);
                });
                self.in_flight.set_value(None);
                self.busy.set(None);
                self.pump();
            }
            FromWorker::Error { id: None, message } => {
                self.load_failed.set_value(true);
                self.status.set(WorkerStatus::Failed(message))
            }
            FromWorker::CacheCleared => {}
        }
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Output)) {
        self.outputs.update(|outs| {
            if let Some((_, o)) = outs.iter_mut().find(|(i, _)| *i == id) {
                f(o);
            }
        });
    }

    /// Queues a generation for `owner` and returns its id (its output appears in `outputs`). A
    /// Compare run goes before the Rate view's queued samples: a person waits for it, while the
    /// samples fill a queue in the background.
    pub fn generate(&self, owner: Owner, mut req: GenerateRequest) -> u64 {
        let id = self.next_id.get_value();
        self.next_id.set_value(id + 1);
        req.id = id;
        self.outputs
            .update(|o| o.push((id, Output { owner, running: true, ..Default::default() })));
        self.queue.update_value(|q| {
            let at = match owner {
                Owner::Compare => {
                    q.iter().position(|(o, _)| *o != Owner::Compare).unwrap_or(q.len())
                }
                Owner::Rate => q.len(),
            };
            q.insert(at, (owner, req));
        });
        self.pump();
        id
    }

    /// Why request `id` has not started: another view's generation has the worker.
    pub fn waiting_note(&self, id: u64) -> Option<String> {
        let (owner, started) = self.outputs.with(|outs| {
            outs.iter().find(|(i, _)| *i == id).map(|(_, o)| (o.owner, !o.pieces.is_empty()))
        })?;
        match self.busy.get() {
            Some((running, other)) if running != id && other != owner && !started => Some(format!(
                "waiting: the {} view's sampling has the model; this starts when its answer ends",
                other.view()
            )),
            _ => None,
        }
    }

    /// Sends the next queued request when the worker is free and ready.
    fn pump(&self) {
        let ready = matches!(self.status.get_untracked(), WorkerStatus::Ready { .. });
        if !ready || self.busy.get_untracked().is_some() {
            return;
        }
        let mut next = None;
        self.queue.update_value(|q| next = q.pop_front());
        if let Some((owner, req)) = next {
            self.busy.set(Some((req.id, owner)));
            self.send(&ToWorker::Generate(req.clone()));
            self.in_flight.set_value(Some(req));
        }
    }

    /// Stops `owner`'s running generation and drops its queued ones; other views' requests go on.
    pub fn stop(&self, owner: Owner) {
        let mut dropped = Vec::new();
        self.queue.update_value(|q| {
            q.retain(|(o, r)| {
                if *o == owner {
                    dropped.push(r.id);
                }
                *o != owner
            })
        });
        for id in dropped {
            self.update(id, |o| {
                o.running = false;
                o.finish = Some(FinishReason::Cancelled);
            });
        }
        if matches!(self.busy.get_untracked(), Some((_, o)) if o == owner) {
            self.send(&ToWorker::Stop);
        }
    }

    /// Starts over after a failed load (a missing file that the host may have back by now, a
    /// stalled download). A worker that is still running loads again itself, resuming the files
    /// it has part of; one that crashed is replaced.
    pub fn retry(self) {
        let alive = self.worker.with_value(Option::is_some) && self.started.get_value();
        if alive && self.load_failed.get_value() {
            self.load_failed.set_value(false);
            self.load_started.set_value(None);
            self.status.set(WorkerStatus::Starting);
            return self.send(&self.load.get_value());
        }
        self.load_failed.set_value(false);
        self.worker.update_value(|w| {
            if let Some(w) = w.take() {
                w.terminate();
            }
        });
        self.status.set(WorkerStatus::Starting);
        self.spawn();
    }

    pub fn clear_cache(&self) {
        self.send(&ToWorker::ClearCache);
    }

    /// Generated tokens so far in request `id`'s output.
    pub fn piece_count(&self, id: u64) -> usize {
        self.outputs
            .with(|outs| outs.iter().find(|(i, _)| *i == id).map_or(0, |(_, o)| o.pieces.len()))
    }

    /// Token `n` of request `id`'s output (not tracked: a generated token does not change).
    pub fn piece(&self, id: u64, n: usize) -> Option<Arc<Piece>> {
        self.outputs.with_untracked(|outs| {
            outs.iter().find(|(i, _)| *i == id).and_then(|(_, o)| o.pieces.get(n).cloned())
        })
    }

    pub fn output(&self, id: u64) -> Option<Output> {
        self.outputs.with(|outs| outs.iter().find(|(i, _)| *i == id).map(|(_, o)| o.clone()))
    }
}

/// Seconds left at the rate so far: None until a second has passed and some bytes arrived (an
/// early rate says little), or when nothing is left.
pub fn estimate_seconds_left(elapsed_ms: f64, bytes_done: u64, bytes_left: u64) -> Option<f64> {
    (elapsed_ms >= 1000.0 && bytes_done > 0 && bytes_left > 0)
        .then(|| bytes_left as f64 * elapsed_ms / 1000.0 / bytes_done as f64)
}
