//! bandvote logs console: the terminal-style "Logs console" of the original contest, grown up.
//!
//! One crate, two builds (made by cargo-leptos): the server (`ssr`) renders every page to HTML, so
//! the console works without JavaScript, and the browser build (`hydrate`, WebAssembly) takes that
//! page over for live refresh and client-side filtering. The server functions in [`app`] run on the
//! server only and read the logs API with one shared HTTP client ([`api`]); the browser never talks
//! to the logs API or to MongoDB.

#[cfg(feature = "ssr")]
pub mod api;
pub mod app;

/// The browser's entry point: takes over the server-rendered page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
