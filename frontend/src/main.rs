//! The page's entry point (Trunk builds it as the app; the model runs in `bin/worker.rs`).

fn main() {
    emlab_frontend::run_static_constructors();
    // coi-serviceworker.js is about to reload the page through its service worker (for threads):
    // starting now would begin a download that the reload cuts.
    let reloading = js_sys::Reflect::get(&js_sys::global(), &"__emlabReloading".into())
        .is_ok_and(|v| v.as_bool() == Some(true));
    if !reloading {
        leptos::mount::mount_to_body(emlab_frontend::components::app::App);
    }
}
