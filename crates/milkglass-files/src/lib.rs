//! Serving files from one directory over HTTP, for browsers: Range requests, CORS, cache
//! validators, correct content types, and no request that reaches outside the directory.
//!
//! This crate reads local files only; it never fetches anything (that is `milkglass-fetch`).
//! `milkglass serve-files` serves a directory with [`router`]; the hosted store reuses
//! [`FileRoot`], [`file_response`] (or [`blob_response`] for a bucket) and the CORS helpers behind
//! its signature check.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{
    ACCEPT_RANGES, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ALLOW, CACHE_CONTROL,
    CONTENT_LENGTH, CONTENT_RANGE, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LAST_MODIFIED, RANGE,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// A directory files are served from. Requests name files inside it, never outside.
#[derive(Debug, Clone)]
pub struct FileRoot {
    /// Canonical (absolute, symlinks resolved), so containment is a prefix check.
    root: PathBuf,
}

/// Why a request path names no servable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRefusal {
    /// The path is not a plain relative file path (`..`, encoded slashes, an absolute path, ...).
    Malformed(&'static str),
    /// The path leads outside the root (through a symlink).
    Escapes,
    NotFound,
}

impl PathRefusal {
    pub fn status(&self) -> StatusCode {
        match self {
            PathRefusal::Malformed(_) => StatusCode::BAD_REQUEST,
            PathRefusal::Escapes => StatusCode::FORBIDDEN,
            PathRefusal::NotFound => StatusCode::NOT_FOUND,
        }
    }

    pub fn message(&self) -> String {
        match self {
            PathRefusal::Malformed(why) => format!("the path is refused: {why}"),
            PathRefusal::Escapes => "the path leads outside the served directory".to_string(),
            PathRefusal::NotFound => "no such file".to_string(),
        }
    }
}

impl IntoResponse for PathRefusal {
    fn into_response(self) -> Response {
        let code = match self {
            PathRefusal::Malformed(_) => "invalid",
            PathRefusal::Escapes => "forbidden",
            PathRefusal::NotFound => "not_found",
        };
        error_response(self.status(), code, &self.message())
    }
}

/// The JSON error body the milkglass API uses: `{"error": {"code", "message"}}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    with_cors((status, axum::Json(body)).into_response())
}

impl FileRoot {
    pub fn new(dir: impl AsRef<Path>) -> std::io::Result<FileRoot> {
        let root = std::fs::canonicalize(dir.as_ref())?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(FileRoot { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Maps a raw (still percent-encoded) URL path such as `/cats/a%20b.png` onto a file under
    /// the root. Each segment is decoded once and must be a plain name: decoding cannot smuggle in
    /// a separator (`%2f`, `%5c`), a `..` (`%2e%2e`) or a NUL; the final file, after symlinks,
    /// must still be under the root.
    pub async fn resolve(&self, raw_path: &str) -> Result<PathBuf, PathRefusal> {
        let relative = relative_path(raw_path)?;
        let joined = self.root.join(relative);
        let real = tokio::fs::canonicalize(&joined).await.map_err(|_| PathRefusal::NotFound)?;
        if !real.starts_with(&self.root) {
            return Err(PathRefusal::Escapes);
        }
        match tokio::fs::metadata(&real).await {
            Ok(meta) if meta.is_file() => Ok(real),
            _ => Err(PathRefusal::NotFound),
        }
    }
}

pub use milkglass_core::paths::encode_segment;

/// The relative file path a raw URL path names, or why it names none.
pub fn relative_path(raw_path: &str) -> Result<PathBuf, PathRefusal> {
    let rest = raw_path.strip_prefix('/').unwrap_or(raw_path);
    if rest.is_empty() {
        return Err(PathRefusal::NotFound);
    }
    if rest.starts_with('/') {
        return Err(PathRefusal::Malformed("absolute paths are not served"));
    }
    let mut relative = PathBuf::new();
    for segment in rest.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| PathRefusal::Malformed("the path is not UTF-8"))?;
        if let Some(why) = milkglass_core::paths::segment_refusal(&decoded) {
            return Err(PathRefusal::Malformed(why));
        }
        relative.push(decoded.as_ref());
    }
    Ok(relative)
}

/// What a response is made of: a local file, or an object in a bucket. [`blob_response`] does
/// the HTTP (validators, ranges, content type); a blob only says what it is and reads bytes.
pub trait Blob: Send {
    fn size(&self) -> u64;
    fn modified(&self) -> Option<chrono::DateTime<chrono::Utc>>;
    /// A strong validator, quoted as HTTP writes it.
    fn etag(&self) -> String;
    /// The name the content type is guessed from.
    fn name(&self) -> &Path;
    /// `len` bytes from `start`, or `None` when the blob can no longer be read.
    fn body(self, start: u64, len: u64) -> impl std::future::Future<Output = Option<Body>> + Send;
}

/// A file on this machine's disk.
struct LocalFile {
    path: PathBuf,
    handle: tokio::fs::File,
    size: u64,
    modified: Option<chrono::DateTime<chrono::Utc>>,
}

impl Blob for LocalFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn modified(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.modified
    }

    fn etag(&self) -> String {
        let nanos = self.modified.map(|m| m.timestamp_nanos_opt().unwrap_or(0)).unwrap_or(0);
        format!("\"{:x}-{nanos:x}\"", self.size)
    }

    fn name(&self) -> &Path {
        &self.path
    }

    async fn body(mut self, start: u64, len: u64) -> Option<Body> {
        if start > 0 {
            self.handle.seek(SeekFrom::Start(start)).await.ok()?;
        }
        Some(Body::from_stream(tokio_util::io::ReaderStream::new(self.handle.take(len))))
    }
}

/// The response for one file (see [`blob_response`]).
pub async fn file_response(file: &Path, method: &Method, headers: &HeaderMap, cache_control: HeaderValue) -> Response {
    let Ok(handle) = tokio::fs::File::open(file).await else {
        return PathRefusal::NotFound.into_response();
    };
    let Ok(meta) = handle.metadata().await else {
        return PathRefusal::NotFound.into_response();
    };
    let modified = meta.modified().ok().map(chrono::DateTime::<chrono::Utc>::from);
    let blob = LocalFile { path: file.to_path_buf(), handle, size: meta.len(), modified };
    blob_response(blob, method, headers, cache_control).await
}

/// The response for one blob: the whole of it, one byte range (206), 416 for a range past the
/// end, or 304 when the browser's copy is current. `cache_control` is the caller's, since a
/// local directory and signed URLs want different lifetimes.
pub async fn blob_response(
    blob: impl Blob,
    method: &Method,
    headers: &HeaderMap,
    cache_control: HeaderValue,
) -> Response {
    let size = blob.size();
    let etag = blob.etag();
    let mut common = HeaderMap::new();
    common.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        common.insert(ETAG, value);
    }
    common.insert(CACHE_CONTROL, cache_control);
    if let Some(modified) = blob.modified() {
        let date = modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        common.insert(LAST_MODIFIED, HeaderValue::from_str(&date).expect("ascii"));
    }

    if headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|tags| etag_matches(tags, &etag)) {
        return with_cors((StatusCode::NOT_MODIFIED, common).into_response());
    }

    let content_type = mime_guess::from_path(blob.name()).first_or_octet_stream();
    common.insert(CONTENT_TYPE, HeaderValue::from_str(content_type.essence_str()).expect("mime is ascii"));
    // A served file never runs as a page of this origin, whatever it contains.
    common.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    common.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));

    let (status, start, len) = match headers.get(RANGE).and_then(|v| v.to_str().ok()).map(|r| parse_range(r, size)) {
        Some(RangeAsked::Satisfiable { start, end }) => {
            let range = format!("bytes {start}-{end}/{size}");
            common.insert(CONTENT_RANGE, HeaderValue::from_str(&range).expect("ascii"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Some(RangeAsked::Unsatisfiable) => {
            common.insert(CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"));
            common.remove(CONTENT_TYPE);
            return with_cors((StatusCode::RANGE_NOT_SATISFIABLE, common).into_response());
        }
        Some(RangeAsked::Ignored) | None => (StatusCode::OK, 0, size),
    };
    common.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if method == Method::HEAD {
        return with_cors((status, common).into_response());
    }
    let Some(body) = blob.body(start, len).await else {
        return PathRefusal::NotFound.into_response();
    };
    with_cors((status, common, body).into_response())
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAsked {
    /// Inclusive byte positions, as HTTP writes them.
    Satisfiable {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
    /// Malformed, not bytes, or several ranges: answered with the whole file, as RFC 9110 allows.
    Ignored,
}

fn parse_range(header: &str, size: u64) -> RangeAsked {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAsked::Ignored;
    };
    if spec.contains(',') {
        return RangeAsked::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsked::Ignored;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeAsked::Unsatisfiable,
            Some(n) if size > 0 => RangeAsked::Satisfiable { start: size.saturating_sub(n), end: size - 1 },
            Some(_) => RangeAsked::Unsatisfiable,
            None => RangeAsked::Ignored,
        },
        (false, _) => {
            let Some(start) = parse(first) else { return RangeAsked::Ignored };
            let end = if last.is_empty() { Some(u64::MAX) } else { parse(last) };
            match end {
                None => RangeAsked::Ignored,
                Some(end) if end < start => RangeAsked::Ignored,
                Some(_) if start >= size => RangeAsked::Unsatisfiable,
                Some(end) => RangeAsked::Satisfiable { start, end: end.min(size - 1) },
            }
        }
        (true, true) => RangeAsked::Ignored,
    }
}

/// Lets any page load the response: these files are meant for `<img>` tags and `fetch()` on
/// the milkglass UI, which may be served from another origin. No credentials are involved (local
/// files are public to the machine; hosted files carry their signature in the URL).
pub fn with_cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("content-length, content-range, accept-ranges, etag, last-modified"),
    );
    response
}

/// The answer to a CORS preflight for the given methods.
pub fn preflight(request_headers: &HeaderMap, methods: &'static str) -> Response {
    let allowed = request_headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("range, content-type"));
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed);
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    with_cors(response)
}

/// Local files may change while a user experiments: browsers keep them briefly and revalidate
/// with the ETag after that.
const LOCAL_CACHE: &str = "public, max-age=60, must-revalidate";

/// Serves every file under `root` at its relative path (GET, HEAD, OPTIONS).
pub fn router(root: FileRoot) -> Router {
    Router::new().fallback(move |request: Request| {
        let root = root.clone();
        async move { serve_request(&root, request).await }
    })
}

/// Serves `root` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    root: FileRoot,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(root)).with_graceful_shutdown(shutdown).await
}

async fn serve_request(root: &FileRoot, request: Request) -> Response {
    let method = request.method().clone();
    if method == Method::OPTIONS {
        return preflight(request.headers(), "GET, HEAD, OPTIONS");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "only GET and HEAD");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        return response;
    }
    match root.resolve(request.uri().path()).await {
        Ok(file) => file_response(&file, &method, request.headers(), HeaderValue::from_static(LOCAL_CACHE)).await,
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAsked::*;
        assert_eq!(parse_range("bytes=0-9", 100), Satisfiable { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-", 100), Satisfiable { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=90-500", 100), Satisfiable { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-10", 100), Satisfiable { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-500", 100), Satisfiable { start: 0, end: 99 });
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), Ignored);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignored);
        assert_eq!(parse_range("items=0-1", 100), Ignored);
        assert_eq!(parse_range("bytes=x-1", 100), Ignored);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path("/a/b%20c.png").unwrap(), PathBuf::from("a/b c.png"));
        for bad in [
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/etc/passwd",
            "/a%2f..%2f..%2fetc%2fpasswd",
            "/..%5c..%5cetc",
            "//etc/passwd",
            "/%2fetc/passwd",
            "/a//b",
            "/a/./b",
            "/C:/Windows",
            "/a%00b",
        ] {
            assert!(matches!(relative_path(bad), Err(PathRefusal::Malformed(_))), "{bad}");
        }
    }
}
