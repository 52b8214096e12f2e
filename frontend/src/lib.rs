//! The browser demo (WIP): the engine that runs the shared model crate in a Web Worker.

pub mod engine;
pub mod loader;
pub mod protocol;
pub mod variants;
pub mod components;
pub mod worker_client;
