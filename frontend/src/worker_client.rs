//! The page's side of the model worker: starts it, sends requests, and turns its messages into
//! signals the components read.

use std::collections::VecDeque;

use leptos::prelude::*;
use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

use crate::protocol::{FromWorker, GenerateRequest, ToWorker};

/// Where the worker is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineStatus {
    Starting,
    Loading { file: String, loaded: u64, total: u64, from_cache: bool },
    Ready { device: String, notice: Option<String>, variants: Vec<String> },
    Failed(String),
}

/// One pane's output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Output {
    pub text: String,
    pub running: bool,
    pub tokens: usize,
    pub seconds: f64,
    pub finish: Option<String>,
    pub error: Option<String>,
}

/// A handle the components share (through context): status, outputs by request id, and a queue
/// of requests that run one after another.
#[derive(Clone, Copy)]
pub struct Engine {
    worker: StoredValue<Option<Worker>, LocalStorage>,
    pub status: RwSignal<EngineStatus>,
    pub outputs: RwSignal<Vec<(u64, Output)>>,
    queue: StoredValue<VecDeque<GenerateRequest>, LocalStorage>,
    busy: RwSignal<Option<u64>>,
    next_id: StoredValue<u64>,
    /// What to load once the worker says it is listening.
    load: StoredValue<ToWorker>,
}

impl Engine {
    /// Starts the worker (Trunk builds it as `worker_loader.js`) and asks it to load the models.
    pub fn start(models_url: String, force_cpu: bool) -> Engine {
        let engine = Engine {
            worker: StoredValue::new_local(None),
            status: RwSignal::new(EngineStatus::Starting),
            outputs: RwSignal::new(Vec::new()),
            queue: StoredValue::new_local(VecDeque::new()),
            busy: RwSignal::new(None),
            next_id: StoredValue::new(1),
            load: StoredValue::new(ToWorker::Load { models_url, force_cpu }),
        };
        // Trunk builds the worker as a classic script with a loader shim (importScripts).
        let opts = WorkerOptions::new();
        opts.set_type(WorkerType::Classic);
        match Worker::new_with_options("./worker_loader.js", &opts) {
            Ok(worker) => {
                let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
                    let text = ev.data().as_string().unwrap_or_default();
                    match serde_json::from_str::<FromWorker>(&text) {
                        Ok(msg) => engine.on_message(msg),
                        Err(e) => engine.status.set(EngineStatus::Failed(format!("unreadable message from the worker: {e}"))),
                    }
                });
                worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
                on_message.forget(); // as long as the page
                let on_error = Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |ev: web_sys::ErrorEvent| {
                    engine.status.set(EngineStatus::Failed(format!("the model worker crashed: {}", ev.message())));
                });
                worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
                on_error.forget();
                engine.worker.set_value(Some(worker));
            }
            Err(e) => engine.status.set(EngineStatus::Failed(format!("cannot start the model worker: {e:?}"))),
        }
        engine
    }

    fn send(&self, msg: &ToWorker) {
        self.worker.with_value(|w| {
            if let (Some(w), Ok(text)) = (w, serde_json::to_string(msg)) {
                let _ = w.post_message(&JsValue::from_str(&text));
            }
        });
    }

    fn on_message(&self, msg: FromWorker) {
        match msg {
            FromWorker::Started => self.send(&self.load.get_value()),
            FromWorker::Progress { file, loaded, total, from_cache } => self.status.set(EngineStatus::Loading { file, loaded, total, from_cache }),
            FromWorker::Ready { device, notice, variants } => {
                self.status.set(EngineStatus::Ready { device, notice, variants });
                self.pump();
            }
            FromWorker::Token { id, text } => self.update(id, |o| o.text.push_str(&text)),
            FromWorker::Done { id, tokens, seconds, finish } => {
                self.update(id, |o| {
                    o.running = false;
                    o.tokens = tokens;
                    o.seconds = seconds;
                    o.finish = Some(finish);
                });
                self.busy.set(None);
                self.pump();
            }
            FromWorker::Error { id: Some(id), message } => {
                self.update(id, |o| {
                    o.running = false;
                    o.error = Some(message);
                });
                self.busy.set(None);
                self.pump();
            }
            FromWorker::Error { id: None, message } => self.status.set(EngineStatus::Failed(message)),
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

    /// Queues a generation and returns its id (its output appears in `outputs`).
    pub fn generate(&self, mut req: GenerateRequest) -> u64 {
        let id = self.next_id.get_value();
        self.next_id.set_value(id + 1);
        req.id = id;
        self.outputs.update(|o| o.push((id, Output { running: true, ..Default::default() })));
        self.queue.update_value(|q| q.push_back(req));
        self.pump();
        id
    }

    /// Sends the next queued request when the worker is free and ready.
    fn pump(&self) {
        let ready = matches!(self.status.get_untracked(), EngineStatus::Ready { .. });
        if !ready || self.busy.get_untracked().is_some() {
            return;
        }
        let mut next = None;
        self.queue.update_value(|q| next = q.pop_front());
        if let Some(req) = next {
            self.busy.set(Some(req.id));
            self.send(&ToWorker::Generate(req));
        }
    }

    /// Stops the running generation and drops the queued ones.
    pub fn stop_all(&self) {
        let mut dropped = Vec::new();
        self.queue.update_value(|q| dropped = q.drain(..).map(|r| r.id).collect());
        for id in dropped {
            self.update(id, |o| {
                o.running = false;
                o.finish = Some("stopped".into());
            });
        }
        self.send(&ToWorker::Stop);
    }

    pub fn clear_cache(&self) {
        self.send(&ToWorker::ClearCache);
    }

    pub fn output(&self, id: u64) -> Option<Output> {
        self.outputs.with(|outs| outs.iter().find(|(i, _)| *i == id).map(|(_, o)| o.clone()))
    }
}
