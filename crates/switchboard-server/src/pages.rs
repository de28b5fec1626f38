//! The demo page (`/`) and the live dashboard (`/dashboard`): plain static files embedded in
//! the binary, so they work offline with no set-up. Sources: `assets/`; the client bundle in
//! `assets/switchboard.js` is built from `clients/typescript` (see its README).

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// (file name, content type, bytes) of every embedded asset.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../assets/index.html"),
    ),
    (
        "dashboard.html",
        "text/html; charset=utf-8",
        include_bytes!("../assets/dashboard.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/style.css"),
    ),
    (
        "switchboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/switchboard.js"),
    ),
    (
        "demo.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/demo.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/charts.js"),
    ),
];

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// `/`: the demo chat page.
pub fn demo<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(|| async { asset("index.html") }))
}

/// `/dashboard`: the live dashboard (it reads `/api/stats`, so it lives with the API).
pub fn dashboard<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/dashboard", get(|| async { asset("dashboard.html") }))
}

/// `/assets/{file}`: scripts and styles of both pages.
pub fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(
        "/assets/{file}",
        get(|Path(file): Path<String>| async move { asset(&file) }),
    )
}
