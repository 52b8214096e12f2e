//! The page's entry point (Trunk builds it as the app; the model runs in `bin/worker.rs`).

fn main() {
    emlab_frontend::run_static_constructors();
    leptos::mount::mount_to_body(emlab_frontend::components::app::App);
}
