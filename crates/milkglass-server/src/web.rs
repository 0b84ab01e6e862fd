//! The web app at `/`: the files of `web/dist` (built by `npm --prefix web run build`), with
//! every path that is not the API, a signed file or a sample answered by the app's
//! `index.html`, so that the app's own routes survive a reload or a shared link.
//!
//! Release builds embed the files; debug builds read them from disk at each request, so a
//! rebuilt app shows on reload. A binary built without `web/dist` answers with a page that
//! says how to build it.

use crate::error::ApiError;
use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "$CARGO_MANIFEST_DIR/../../web/dist"]
#[allow_missing = true]
struct App;

/// Images from anywhere (the user's own URLs, buckets, signed links), scripts and styles only
/// from this server, no plugins, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src * data: blob:; \
                   connect-src *; media-src *; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>milkglass</title>\
<body style=\"font:16px system-ui;margin:3em;max-width:40em\"><h1>milkglass</h1>\
<p>The server is running, but this binary was built without the web app.</p>\
<p>Build it with <code>npm ci --prefix web &amp;&amp; npm --prefix web run build</code> (the README's demo \
command does this), then rebuild or restart the server. The HTTP API is under <code>/api</code>; see \
docs/API.md.</p>";

/// `GET /` and every path the other routers do not take.
pub(crate) async fn serve(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let refusal =
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "the web app is read with GET");
        return refusal.into_response();
    }
    let path = uri.path().trim_start_matches('/');
    if let Some(file) = App::get(path).filter(|_| !path.is_empty()) {
        // Hashed build outputs never change under their name: cached for good. The rest
        // (index.html, the icon) is checked again each time.
        let cache = if path.starts_with("static/") { "public, max-age=31536000, immutable" } else { "no-cache" };
        let mime = mime_guess::from_path(path).first_or_octet_stream();
        return file_response(file.data.into_owned(), mime.as_ref(), cache);
    }
    if path.starts_with("static/") {
        return ApiError::not_found("no such file in the web app").into_response();
    }
    match App::get("index.html") {
        Some(index) => file_response(index.data.into_owned(), "text/html; charset=utf-8", "no-cache"),
        None => file_response(NOT_BUILT.as_bytes().to_vec(), "text/html; charset=utf-8", "no-cache"),
    }
}

fn file_response(bytes: Vec<u8>, content_type: &str, cache: &'static str) -> Response {
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
