//! The browser demo: the Leptos page (`components`), and the Web Worker that runs the shared model
//! crate on WebGPU or the CPU (`engine`, `loader`, `bin/worker.rs`), talking over `protocol`.

pub mod components;
pub mod engine;
pub mod loader;
pub mod protocol;
pub mod variants;
pub mod worker_client;
