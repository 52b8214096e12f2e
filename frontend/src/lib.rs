//! The browser demo: the Leptos page (`components`), and the Web Worker that runs the shared model
//! crate on WebGPU or the CPU (`engine`, `loader`, `pool`, `bin/worker.rs`), talking over `protocol`;
//! `device_choice` times the two where the page cannot tell which is faster.

pub mod components;
pub mod device_choice;
pub mod engine;
pub mod loader;
pub mod pool;
pub mod protocol;
pub mod ratings_store;
pub mod variants;
pub mod worker_client;

/// Runs the program's static constructors (cubecl registers its IR dialects through `inventory`),
/// once; both entry points call it first.
///
/// Without an explicit call, wasm-ld links a binary as a "command" and runs every constructor again
/// at the start of each exported function, that is on every call from JavaScript into the module:
/// each callback, each resolved promise, each chunk of a download. That cost ~1 ms a call, about a
/// second of a page load. Calling it from `main` makes the linker leave the exports alone.
pub fn run_static_constructors() {
    #[cfg(target_family = "wasm")]
    {
        unsafe extern "C" {
            fn __wasm_call_ctors();
        }
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: the linker's constructor list, run once before anything reads what it registers.
        ONCE.call_once(|| unsafe { __wasm_call_ctors() });
    }
}
