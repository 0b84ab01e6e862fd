//! The raw-data boundary of the server: data-access modes in action.
//!
//! - `hosted`: files in `DATA_DIR/assets/<project id>/`, written and read only through signed,
//!   expiring URLs (`/assets/<project>/<key>?expires=..&sig=..`, HMAC-SHA256 over method, path
//!   and expiry with a key kept in `DATA_DIR/asset-signing.key`);
//! - `mirrored`: each of the user's URLs fetched once into the same store, then served from it;
//! - `anonymous`: [`Assets::fetcher_for`] refuses, and it is the only way to the fetcher, so no
//!   route reaches `milkglass-fetch` for such a project;
//! - URL checks: a per-dataset report of which URLs milkglass (or only the browser) can load.

use crate::AppState;
use crate::auth::Caller;
use crate::embedding::{EmbedRequest, ImageSource};
use crate::error::{ApiError, ApiResult};
use crate::hosted::{AssetError, HostedStore};
use crate::json::JsonBody;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use milkglass_core::{AccessMode, BucketScheme, DataUrl, ProjectRole, SensorKind};
use milkglass_fetch::{AllowList, AwsKeys, Fetcher, Limits, Probe, ProjectAccess, Rules, S3Access, S3Credentials};
use milkglass_files::{encode_segment, error_response, preflight, relative_path};
use milkglass_store::{FetchSettings, FrameFilter, MAX_PAGE, ProjectInfo, S3Settings, Store};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;

const DEFAULT_TTL_SECS: u64 = 3600;
/// As with presigned S3 URLs: a leaked URL stops working within a week at most.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
const MAX_KEYS_PER_CALL: usize = 1000;
/// Fetches in flight at once for mirroring and URL checks: enough to hide latency, few enough
/// not to hammer the user's server.
const CONCURRENCY: usize = 8;
/// URL checks probe at most this many URLs per dataset; the rest are counted, not probed.
const MAX_PROBES: usize = 500;
const EXAMPLES_PER_CATEGORY: usize = 10;

/// Checks an allow-list given on the command line, so a bad entry stops the server at start.
pub fn check_fetch_allow(entries: &[String]) -> Result<(), String> {
    AllowList::parse(entries).map(|_| ())
}

/// Shared by the routes of this module.
pub(crate) struct Assets {
    /// Private: reached only through [`Assets::fetcher_for`], which refuses anonymous projects.
    fetcher: Fetcher,
    /// The fetcher's rules, for telling offline which URLs it would refuse.
    rules: Rules,
    signer: Signer,
    hosted: HostedStore,
    /// One lock per mirror target being fetched, this server's only.
    mirror_locks: MirrorLocks,
}

impl Assets {
    /// `asset_store` is where hosted and mirrored files go (see [`HostedStore::open`]).
    pub(crate) fn new(store: &Store, allow: &[String], asset_store: Option<&str>) -> std::io::Result<Assets> {
        let allow = AllowList::parse(allow).map_err(std::io::Error::other)?;
        let rules = Rules { allow };
        // The server's own AWS identity (from the standard variables) only ever assumes the roles
        // projects name; it never reads a project's bucket as itself.
        let fetcher =
            Fetcher::new(rules.clone(), Limits::default(), AwsKeys::from_env()).map_err(std::io::Error::other)?;
        let signer = Signer::load_or_create(&store.dir().join("asset-signing.key"))?;
        let hosted = HostedStore::open(asset_store, store.dir()).map_err(std::io::Error::other)?;
        Ok(Assets { fetcher, rules, signer, hosted, mirror_locks: MirrorLocks::default() })
    }

    /// The one way to the fetcher. Anonymous projects get a refusal that says why, so no feature
    /// can touch their raw data by accident.
    fn fetcher_for(&self, store: &Store, project: &ProjectInfo, feature: &str) -> ApiResult<(&Fetcher, ProjectAccess)> {
        if project.access_mode == AccessMode::Anonymous {
            return Err(anonymous_refusal(&project.name, feature));
        }
        let settings = store.fetch_settings(project.id)?;
        Ok((&self.fetcher, project_access(&settings)?))
    }

    /// Reads frame images for server-side work: hosted keys from the store, mirrored URLs through the
    /// mirror (fetched once, then read from the store), anything else through the fetcher.
    fn image_source(self: &Arc<Self>, store: &Store, project: &ProjectInfo, feature: &str) -> ApiResult<ImageSource> {
        let (_, access) = self.fetcher_for(store, project, feature)?;
        let (assets, project_id, mode) = (self.clone(), project.id, project.access_mode);
        Ok(Arc::new(move |url: String| {
            let (assets, access) = (assets.clone(), access.clone());
            Box::pin(async move {
                let key = match (mode, DataUrl::hosted_key(&url)) {
                    (AccessMode::Hosted | AccessMode::Mirrored, Some(key)) => {
                        check_key("url", key).map_err(|e| e.message)?;
                        key.to_string()
                    }
                    (AccessMode::Mirrored, None) => {
                        assets.mirror_one(&assets.fetcher, &access, project_id, &url).await?;
                        mirror_key(&url)
                    }
                    (_, Some(_)) => return Err(format!("{url}: hosted: keys need a hosted project")),
                    (_, None) => {
                        let fetched = assets.fetcher.fetch(&url, &access).await.map_err(|e| e.to_string())?;
                        return Ok(fetched.bytes.to_vec());
                    }
                };
                assets
                    .hosted
                    .read(project_id, FsPath::new(&key))
                    .await
                    .map_err(|e| format!("{}: {e}", milkglass_fetch::redact(&url)))
            })
        }))
    }
}

/// `POST {dataset}/embed`: starts embedding generation (see `crate::embedding`).
async fn embed(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    JsonBody(request): JsonBody<EmbedRequest>,
) -> ApiResult<Response> {
    let assets = &state.assets;
    let project = caller.project(&state, &project, ProjectRole::Owner)?;
    let dataset = state.store.dataset(&project.name, &dataset)?;
    let source = assets.image_source(&state.store, &project, "embedding generation")?;
    let (status, body) = crate::embedding::start(state, dataset, request, source).await?;
    Ok((status, Json(body)).into_response())
}

fn anonymous_refusal(project: &str, feature: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "anonymous_project",
        format!(
            "{feature} needs the raw data, and project {project:?} is anonymous: milkglass never fetches its files \
             (only your browser loads them). Upload what the feature needs (for example embeddings) instead."
        ),
    )
}

fn project_access(settings: &FetchSettings) -> ApiResult<ProjectAccess> {
    let mut access = ProjectAccess::with_headers(&settings.headers).map_err(|e| ApiError::invalid("headers", e))?;
    if let Some(endpoint) = &settings.signing_endpoint {
        access.signing_endpoint =
            Some(endpoint.parse().map_err(|e| ApiError::invalid("signing_endpoint", format!("not a URL: {e}")))?);
    }
    access.s3 = settings.s3.as_ref().map(|s3| s3_access(s3, settings.external_id.as_deref())).transpose()?;
    Ok(access)
}

/// Checks stored or given S3 settings and makes the fetcher's form of them; each error names the
/// field under `s3`.
fn s3_access(s3: &S3Settings, external_id: Option<&str>) -> ApiResult<S3Access> {
    let endpoint = |field: &str, value: &Option<String>| -> ApiResult<Option<url::Url>> {
        let Some(value) = value else { return Ok(None) };
        match url::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() && url.query().is_none() => {
                Ok(Some(url))
            }
            _ => Err(ApiError::invalid(
                field,
                "must be an http(s) URL with a host and no query, such as https://s3.example.com",
            )),
        }
    };
    let region_ok = !s3.region.is_empty()
        && s3.region.len() <= 32
        && s3.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(ApiError::invalid("s3.region", "must be a region name such as us-east-1"));
    }
    let credentials = match (&s3.access_key_id, &s3.secret_access_key, &s3.role_arn) {
        (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
            return Err(ApiError::invalid("s3.role_arn", "give access keys or a role to assume, not both"));
        }
        (Some(id), Some(secret), None) if !id.is_empty() && !secret.is_empty() => S3Credentials::Keys(AwsKeys {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: s3.session_token.clone().filter(|t| !t.is_empty()),
        }),
        (Some(_), _, None) => {
            return Err(ApiError::invalid("s3.secret_access_key", "required (and not empty) with access_key_id"));
        }
        (None, Some(_), None) => {
            return Err(ApiError::invalid("s3.access_key_id", "required (and not empty) with secret_access_key"));
        }
        (None, None, Some(role)) => {
            if !role.starts_with("arn:") || !role.contains(":role/") {
                return Err(ApiError::invalid(
                    "s3.role_arn",
                    "must be a role ARN such as arn:aws:iam::123456789012:role/milkglass-reader",
                ));
            }
            let external_id =
                external_id.ok_or_else(|| ApiError::invalid("s3.role_arn", "the project has no external id yet"))?;
            S3Credentials::AssumeRole { role_arn: role.clone(), external_id: external_id.to_string() }
        }
        (None, None, None) => {
            return Err(ApiError::invalid("s3", "give access_key_id and secret_access_key, or role_arn"));
        }
    };
    Ok(S3Access {
        region: s3.region.clone(),
        endpoint: endpoint("s3.endpoint", &s3.endpoint)?,
        sts_endpoint: endpoint("s3.sts_endpoint", &s3.sts_endpoint)?,
        credentials,
    })
}

pub(crate) fn router() -> Router<AppState> {
    let project = "/api/projects/{project}";
    let dataset = "/api/projects/{project}/datasets/{dataset}";
    Router::new()
        .route("/assets/{*path}", any(asset))
        .route(&format!("{project}/assets/sign"), post(sign_urls))
        .route(&format!("{project}/assets/resolve"), post(resolve_urls))
        .route(&format!("{project}/fetch"), get(get_fetch_settings).put(put_fetch_settings))
        .route(&format!("{dataset}/mirror"), post(mirror))
        .route(&format!("{dataset}/embed"), post(embed))
        .route(&format!("{dataset}/url_check"), post(url_check))
        .route(&format!("{dataset}/url_report"), get(url_report))
}

// ---------------------------------------------------------------------------------------------
// Signatures

/// HMAC-SHA256 signatures over `METHOD\npath\nexpires`. The key never leaves the data directory.
struct Signer {
    key: Vec<u8>,
}

impl Signer {
    fn load_or_create(path: &FsPath) -> std::io::Result<Signer> {
        match std::fs::read(path) {
            Ok(key) if key.len() >= 32 => return Ok(Signer { key }),
            Ok(_) => return Err(std::io::Error::other(format!("{} is too short to be a signing key", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let key: [u8; 32] = rand::random();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                std::io::Write::write_all(&mut file, &key)?;
                file.sync_all()?;
                Ok(Signer { key: key.to_vec() })
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Signer::load_or_create(path),
            Err(e) => Err(e),
        }
    }

    fn mac(&self, method: &str, path: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(format!("{method}\n{path}\n{expires}").as_bytes());
        mac
    }

    fn sign(&self, method: &str, path: &str, expires: u64) -> String {
        hex::encode(self.mac(method, path, expires).finalize().into_bytes())
    }

    /// Constant-time comparison, so timing does not reveal how much of a forged signature was right.
    fn verify(&self, method: &str, path: &str, expires: u64, signature: &str) -> bool {
        let Ok(bytes) = hex::decode(signature) else { return false };
        self.mac(method, path, expires).verify_slice(&bytes).is_ok()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The URL path of a key in a project's store, encoded the one way signatures are computed over.
fn asset_path(project: &str, key: &str) -> String {
    let key: Vec<String> = key.split('/').map(encode_segment).collect();
    format!("/assets/{}/{}", encode_segment(project), key.join("/"))
}

fn signed_url(base: &str, signer: &Signer, method: &str, project: &str, key: &str, ttl: u64) -> (String, u64) {
    let expires = unix_now() + ttl;
    let path = asset_path(project, key);
    let sig = signer.sign(method, &path, expires);
    (format!("{base}{path}?expires={expires}&sig={sig}"), expires)
}

/// The scheme and host the caller reached this server by, for absolute URLs it can hand on.
fn base_url(headers: &axum::http::HeaderMap) -> String {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{scheme}://{host}")
}

fn check_key(field: &str, key: &str) -> ApiResult<()> {
    if key.is_empty() || key.len() > 1024 {
        return Err(ApiError::invalid(field, "keys are 1 to 1024 bytes"));
    }
    // The key must also make a valid `hosted:KEY` data URL for frames.
    milkglass_core::check_data_url(field, &format!("hosted:{key}"))?;
    let encoded = asset_path("p", key);
    relative_path(&encoded["/assets/p".len()..]).map_err(|refusal| ApiError::invalid(field, refusal.message()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The signed file routes (no bearer token: an <img> tag cannot send one; the signature is the
// credential)

async fn asset(State(state): State<AppState>, request: Request) -> Response {
    match serve_asset(&state, request).await {
        Ok(response) => response,
        Err((status, code, message)) => error_response(status, code, &message),
    }
}

async fn serve_asset(state: &AppState, request: Request) -> Result<Response, AssetError> {
    let assets = &state.assets;
    let method = request.method().clone();
    if method == Method::OPTIONS {
        return Ok(preflight(request.headers(), "GET, HEAD, PUT, OPTIONS"));
    }
    let signed_method = match method {
        Method::GET | Method::HEAD => "GET",
        Method::PUT => "PUT",
        _ => return Err((StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET, HEAD or PUT".into())),
    };
    let path = request.uri().path().to_string();
    let query: BTreeMap<String, String> = request.uri().query().map(query_pairs).unwrap_or_default();
    let forbidden = |message: String| (StatusCode::FORBIDDEN, "forbidden", message);
    let expires: u64 = query
        .get("expires")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| forbidden("missing or malformed `expires`: ask the API for a signed URL".into()))?;
    let sig = query.get("sig").ok_or_else(|| forbidden("missing `sig`: ask the API for a signed URL".into()))?;
    if !assets.signer.verify(signed_method, &path, expires, sig) {
        return Err(forbidden(format!("the signature does not match this {signed_method} URL")));
    }
    if expires < unix_now() {
        return Err(forbidden(format!(
            "the URL expired {} seconds ago; ask the API for a new one",
            unix_now() - expires
        )));
    }

    let rest = path.strip_prefix("/assets/").unwrap_or_default();
    let (project_segment, key) = rest.split_once('/').unwrap_or((rest, ""));
    let project_name = percent_decode(project_segment);
    let not_found = || (StatusCode::NOT_FOUND, "not_found", "no such file".to_string());
    let store = state.store.clone();
    let project = tokio::task::spawn_blocking(move || store.project(&project_name))
        .await
        .map_err(|_| not_found())?
        .map_err(|_| not_found())?;
    let raw_key = format!("/{key}");

    if method == Method::PUT {
        if project.access_mode != AccessMode::Hosted {
            return Err((StatusCode::CONFLICT, "not_hosted", "only hosted projects take uploads".into()));
        }
        let relative = relative_path(&raw_key).map_err(|r| (r.status(), "invalid", r.message()))?;
        let limit = state.config.max_upload_bytes;
        let body = request.into_body().into_data_stream();
        let bytes = assets.hosted.write(project.id, &relative, body, limit).await?;
        let key = relative.to_string_lossy().to_string();
        let response =
            (StatusCode::CREATED, Json(json!({ "key": key, "bytes": bytes, "url": format!("hosted:{key}") })));
        return Ok(milkglass_files::with_cors(response.into_response()));
    }
    // The browser may keep the bytes as long as the URL is valid, and no shared cache may.
    let cache = format!("private, max-age={}", expires.saturating_sub(unix_now()));
    let cache = HeaderValue::from_str(&cache).expect("ascii");
    assets.hosted.serve(project.id, &raw_key, &method, request.headers(), cache).await
}

fn query_pairs(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().to_string()
}

// ---------------------------------------------------------------------------------------------
// API routes

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    keys: Vec<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    /// Also hand out PUT URLs (hosted projects, owners only).
    #[serde(default)]
    put: bool,
}

fn ttl(expires_in: Option<u64>) -> ApiResult<u64> {
    match expires_in.unwrap_or(DEFAULT_TTL_SECS) {
        0 => Err(ApiError::invalid("expires_in", "must be at least 1 second")),
        secs if secs > MAX_TTL_SECS => {
            Err(ApiError::invalid("expires_in", format!("must be at most {MAX_TTL_SECS} seconds (7 days)")))
        }
        secs => Ok(secs),
    }
}

async fn sign_urls(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody<SignRequest>,
) -> ApiResult<Json<Value>> {
    let assets = &state.assets;
    let needed = if body.put { ProjectRole::Owner } else { ProjectRole::Viewer };
    let project = caller.project(&state, &project, needed)?;
    match (project.access_mode, body.put) {
        (AccessMode::Hosted, _) | (AccessMode::Mirrored, false) => {}
        (AccessMode::Mirrored, true) => {
            return Err(ApiError::invalid(
                "put",
                "a mirrored project's store is filled by milkglass (POST .../mirror)",
            ));
        }
        (mode, _) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_hosted_store",
                format!(
                    "project {:?} is {mode}: it has no hosted store; its files stay at their own URLs",
                    project.name
                ),
            ));
        }
    }
    if body.keys.is_empty() || body.keys.len() > MAX_KEYS_PER_CALL {
        return Err(ApiError::invalid("keys", format!("give 1 to {MAX_KEYS_PER_CALL} keys")));
    }
    let ttl = ttl(body.expires_in)?;
    let base = base_url(&headers);
    let mut urls = Vec::with_capacity(body.keys.len());
    for (i, key) in body.keys.iter().enumerate() {
        check_key(&format!("keys[{i}]"), key)?;
        let (get_url, expires_at) = signed_url(&base, &assets.signer, "GET", &project.name, key, ttl);
        let mut entry =
            json!({ "key": key, "data_url": format!("hosted:{key}"), "get_url": get_url, "expires_at": expires_at });
        if body.put {
            entry["put_url"] = signed_url(&base, &assets.signer, "PUT", &project.name, key, ttl).0.into();
        }
        urls.push(entry);
    }
    Ok(Json(json!({ "urls": urls })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    urls: Vec<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Turns the data URLs of frames into URLs the browser can load, per the project's mode. Never
/// fetches anything.
async fn resolve_urls(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody<ResolveRequest>,
) -> ApiResult<Json<Value>> {
    let assets = &state.assets;
    let project = caller.project(&state, &project, ProjectRole::Viewer)?;
    if body.urls.len() > MAX_KEYS_PER_CALL {
        return Err(ApiError::invalid("urls", format!("give at most {MAX_KEYS_PER_CALL} URLs")));
    }
    let ttl = ttl(body.expires_in)?;
    let base = base_url(&headers);
    let hosted = |url: &str, key: &str, via: &str| {
        let (load_url, expires_at) = signed_url(&base, &assets.signer, "GET", &project.name, key, ttl);
        json!({ "url": url, "load_url": load_url, "via": via, "expires_at": expires_at })
    };
    let mut resolved: Vec<Value> = Vec::with_capacity(body.urls.len());
    for url in &body.urls {
        resolved.push(match (project.access_mode, DataUrl::hosted_key(url)) {
            (AccessMode::Hosted | AccessMode::Mirrored, Some(key)) => hosted(url, key, "hosted"),
            (AccessMode::Mirrored, None) => {
                let key = mirror_key(url);
                if assets.hosted.exists(project.id, FsPath::new(&key)).await {
                    hosted(url, &key, "mirror")
                } else {
                    json!({ "url": url, "load_url": null, "via": "mirror", "reason": "not mirrored yet; POST .../mirror" })
                }
            }
            (_, Some(_)) => json!({ "url": url, "load_url": null, "reason": format!("project is {}; hosted: keys need a hosted project", project.access_mode) }),
            (_, None) => json!({ "url": url, "load_url": url, "via": "browser" }),
        });
    }
    Ok(Json(json!({ "urls": resolved })))
}

/// Where a mirrored URL lives in the store: the hash of the URL (so the same URL is fetched once)
/// with the extension of its path (so the content type survives).
fn mirror_key(url: &str) -> String {
    let hash = hex::encode(Sha256::digest(url.as_bytes()));
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .filter(|ext| !ext.is_empty() && ext.len() <= 5 && ext.bytes().all(|b| b.is_ascii_alphanumeric()));
    match ext {
        Some(ext) => format!("mirror/{hash}.{ext}"),
        None => format!("mirror/{hash}"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchSettingsBody {
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    signing_endpoint: Option<String>,
    #[serde(default)]
    s3: Option<S3Settings>,
}

/// What the settings routes answer: header values and S3 secrets are write-only.
fn settings_view(settings: &FetchSettings) -> Value {
    let headers: BTreeMap<&str, &str> = settings.headers.iter().map(|(name, _)| (name.as_str(), "(set)")).collect();
    let s3 = settings.s3.as_ref().map(|s3| {
        json!({
            "region": s3.region,
            "endpoint": s3.endpoint,
            "sts_endpoint": s3.sts_endpoint,
            "access_key_id": s3.access_key_id,
            "secret_access_key": s3.secret_access_key.as_ref().map(|_| "(set)"),
            "session_token": s3.session_token.as_ref().map(|_| "(set)"),
            "role_arn": s3.role_arn,
        })
    });
    json!({
        "headers": headers,
        "signing_endpoint": settings.signing_endpoint,
        "s3": s3,
        "external_id": settings.external_id,
    })
}

async fn get_fetch_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let project = caller.project(&state, &project, ProjectRole::Owner)?;
    Ok(Json(settings_view(&state.store.fetch_settings(project.id)?)))
}

async fn put_fetch_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(body): JsonBody<FetchSettingsBody>,
) -> ApiResult<Json<Value>> {
    let project = caller.project(&state, &project, ProjectRole::Owner)?;
    if project.access_mode == AccessMode::Anonymous {
        return Err(anonymous_refusal(&project.name, "fetch settings"));
    }
    let settings = FetchSettings {
        headers: body.headers.into_iter().collect(),
        signing_endpoint: body.signing_endpoint.filter(|e| !e.is_empty()),
        s3: body.s3.map(S3Settings::normalized),
        // Kept by the store when the project has one already.
        external_id: Some(hex::encode(rand::random::<[u8; 16]>())),
    };
    ProjectAccess::with_headers(&settings.headers).map_err(|e| ApiError::invalid("headers", e))?;
    if let Some(endpoint) = &settings.signing_endpoint {
        match url::Url::parse(endpoint) {
            Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {}
            _ => return Err(ApiError::invalid("signing_endpoint", "must be an http(s) URL")),
        }
    }
    if let Some(s3) = &settings.s3 {
        s3_access(s3, settings.external_id.as_deref())?;
    }
    let stored = state.store.set_fetch_settings(project.id, &settings)?;
    Ok(Json(settings_view(&stored)))
}

/// Every distinct raw-data URL of a dataset's current frames, with a frame that uses it.
fn dataset_urls(store: &Store, project: &str, dataset: &str) -> ApiResult<Vec<(String, String)>> {
    let mut seen = std::collections::HashSet::new();
    let mut urls = Vec::new();
    let mut filter = FrameFilter { limit: MAX_PAGE, ..FrameFilter::default() };
    loop {
        let page = store.list_frames(project, dataset, &filter)?;
        for frame in &page.frames {
            for sensor in frame.sensors.as_array().into_iter().flatten() {
                let kind = sensor.get("kind").and_then(Value::as_str).and_then(|k| k.parse::<SensorKind>().ok());
                if kind == Some(SensorKind::Text) {
                    continue;
                }
                if let Some(url) = sensor.get("url").and_then(Value::as_str)
                    && seen.insert(url.to_string())
                {
                    urls.push((url.to_string(), frame.frame_id.clone()));
                }
            }
        }
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return Ok(urls),
        }
    }
}

async fn mirror(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let project = caller.project(&state, &project, ProjectRole::Owner)?;
    if project.access_mode != AccessMode::Mirrored {
        if project.access_mode == AccessMode::Anonymous {
            return Err(anonymous_refusal(&project.name, "mirroring"));
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_mirrored",
            format!("project {:?} is {}; only mirrored projects are mirrored", project.name, project.access_mode),
        ));
    }
    Ok(Json(run_mirror(&state.store, &state.assets, &project, &dataset).await?))
}

/// The job kind mirroring shows in the dataset status.
const MIRROR_JOB: &str = "mirror";
/// Progress is written after this many assets, so a status poll sees it move without a catalog
/// write per asset.
const PROGRESS_EVERY: usize = 25;

/// Fetches every URL of a mirrored project's dataset that is not in the store yet, as a job in the
/// dataset status (progress in assets, then a summary).
async fn run_mirror(store: &Store, assets: &Assets, project: &ProjectInfo, dataset: &str) -> ApiResult<Value> {
    let (fetcher, access) = assets.fetcher_for(store, project, "mirroring")?;
    let reader = store.clone();
    let (p, d) = (project.name.clone(), dataset.to_string());
    let (urls, job) = tokio::task::spawn_blocking(move || {
        let info = reader.dataset(&p, &d)?;
        let urls = dataset_urls(&reader, &p, &d)?;
        let job = reader.start_job(&info, MIRROR_JOB, Some(urls.len() as i64))?;
        Ok::<_, ApiError>((urls, job))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let total = urls.len();
    let mut fetches = futures::stream::iter(urls.into_iter().map(|(url, _)| {
        let access = access.clone();
        async move {
            let outcome = assets.mirror_one(fetcher, &access, project.id, &url).await;
            (url, outcome)
        }
    }))
    .buffer_unordered(CONCURRENCY);
    let mut outcomes: Vec<(String, Result<bool, String>)> = Vec::with_capacity(total);
    while let Some(outcome) = fetches.next().await {
        outcomes.push(outcome);
        if outcomes.len().is_multiple_of(PROGRESS_EVERY) {
            let (writer, done) = (store.clone(), outcomes.len() as i64);
            let _ = tokio::task::spawn_blocking(move || writer.update_job(job, done, None)).await;
        }
    }
    let fetched = outcomes.iter().filter(|(_, o)| matches!(o, Ok(true))).count();
    let already = outcomes.iter().filter(|(_, o)| matches!(o, Ok(false))).count();
    let failed: Vec<Value> = outcomes
        .iter()
        .filter_map(|(url, o)| o.as_ref().err().map(|e| json!({ "url": milkglass_fetch::redact(url), "error": e })))
        .collect();
    let message = format!("{fetched} fetched, {already} already mirrored, {} failed", failed.len());
    // As with embedding: a run that mirrored nothing it was given failed; one with some failures is
    // done, and its message counts them.
    let state = if total > 0 && fetched + already == 0 { "failed" } else { "done" };
    let writer = store.clone();
    let _ =
        tokio::task::spawn_blocking(move || writer.update_job(job, total as i64, Some((state, Some(&message))))).await;
    Ok(json!({
        "job": job,
        "assets": total,
        "fetched": fetched,
        "already_mirrored": already,
        "failed_count": failed.len(),
        "failed": failed.into_iter().take(100).collect::<Vec<_>>(),
    }))
}

/// Serializes fetches of the same mirror target, so concurrent runs (a route, the check after an
/// upload, embedding generation) still send one request per asset. Entries go when their last
/// holder does.
#[derive(Default)]
struct MirrorLocks(std::sync::Mutex<BTreeMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>);

impl MirrorLocks {
    fn for_target(&self, target: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = locks.get(target).and_then(std::sync::Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(target.to_string(), Arc::downgrade(&lock));
        lock
    }
}

impl Assets {
    /// Fetches one URL into the store unless it is there already. `Ok(true)` when it was fetched now.
    async fn mirror_one(
        &self,
        fetcher: &Fetcher,
        access: &ProjectAccess,
        project_id: i64,
        url: &str,
    ) -> Result<bool, String> {
        if DataUrl::hosted_key(url).is_some() {
            return Ok(false);
        }
        let key = mirror_key(url);
        let lock = self.mirror_locks.for_target(&format!("{project_id}/{key}"));
        let _held = lock.lock().await;
        if self.hosted.exists(project_id, FsPath::new(&key)).await {
            return Ok(false);
        }
        let fetched = fetcher.fetch(url, access).await.map_err(|e| e.to_string())?;
        let body = futures::stream::once(async move { Ok::<_, axum::Error>(fetched.bytes) });
        self.hosted
            .write(project_id, FsPath::new(&key), Box::pin(body), u64::MAX)
            .await
            .map_err(|(_, _, message)| message)?;
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------------
// URL checks

/// What a check learned about one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Reachable,
    BrowserOnly,
    BucketPath,
    Invalid,
    /// Anonymous projects: milkglass does not try, by design.
    NotChecked,
}

impl Category {
    fn as_str(self) -> &'static str {
        match self {
            Category::Reachable => "reachable",
            Category::BrowserOnly => "browser_only",
            Category::BucketPath => "bucket_path",
            Category::Invalid => "invalid",
            Category::NotChecked => "not_checked",
        }
    }
}

/// What can be said about a URL without any network access. `rules` are the fetcher's: an address
/// they refuse can only be loaded by the user's browser. `access` is how milkglass reaches the
/// project's files (`None` for anonymous projects): with a signing endpoint or S3 access, bucket
/// paths are for milkglass to try, not only for the browser.
fn classify_offline(url: &str, rules: &Rules, access: Option<&ProjectAccess>) -> Option<(Category, String)> {
    match DataUrl::parse("url", url) {
        Err(invalid) => return Some((Category::Invalid, invalid.message)),
        // Hosted and mirrored projects look their keys up in the store before asking here.
        Ok(DataUrl::Hosted { .. }) => {
            return Some((Category::Invalid, "hosted: keys need a hosted or mirrored project".into()));
        }
        Ok(DataUrl::Bucket { scheme, .. }) => {
            let signed = access.is_some_and(|a| a.signing_endpoint.is_some());
            let s3_keys = scheme == BucketScheme::S3 && access.is_some_and(|a| a.s3.is_some());
            if signed || s3_keys {
                return None;
            }
            let scheme = scheme.as_str();
            return Some((
                Category::BucketPath,
                format!(
                    "a {scheme}:// bucket path: only a browser signed in to the bucket (or a signing endpoint) can load it"
                ),
            ));
        }
        Ok(DataUrl::Web(_)) => {}
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return Some((Category::Invalid, "not a URL".into()));
    };
    let ip = match parsed.host() {
        Some(url::Host::Domain(host)) => {
            let private_name = !host.contains('.') || host.ends_with(".local") || host.ends_with(".internal");
            if private_name && !rules.allow.allows_host(host) {
                return Some((Category::BrowserOnly, format!("{host} is a name inside a private network")));
            }
            return None;
        }
        Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
        None => return Some((Category::Invalid, "the URL has no host".into())),
    };
    rules.check_ip(ip).err().map(|refusal| (Category::BrowserOnly, format!("milkglass may not load it: {refusal}")))
}

async fn url_check(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let project = caller.project(&state, &project, ProjectRole::Owner)?;
    Ok(Json(run_url_check(&state.store, &state.assets, &project, &dataset).await?))
}

/// Sorts a dataset's URLs into the report's categories and stores the report.
async fn run_url_check(store: &Store, assets: &Assets, project: &ProjectInfo, dataset: &str) -> ApiResult<Value> {
    let reader = store.clone();
    let (p, d) = (project.name.clone(), dataset.to_string());
    let (info, urls) = tokio::task::spawn_blocking(move || {
        Ok::<_, ApiError>((reader.dataset(&p, &d)?, dataset_urls(&reader, &p, &d)?))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let has_store = matches!(project.access_mode, AccessMode::Hosted | AccessMode::Mirrored);
    let mut results: Vec<(String, String, Category, String)> = Vec::with_capacity(urls.len());
    let mut to_probe = Vec::new();
    // Anonymous projects are judged by the default rules: milkglass would not load their URLs even
    // where the admin allows an address.
    let default_rules = Rules::default();
    let rules = if project.access_mode == AccessMode::Anonymous { &default_rules } else { &assets.rules };
    // Not for anonymous projects: fetcher_for refuses them, and none of their URLs is probed.
    let fetch = match project.access_mode {
        AccessMode::Anonymous => None,
        _ => Some(assets.fetcher_for(store, project, "URL checks")?),
    };
    for (url, frame) in urls {
        if has_store && let Some(key) = DataUrl::hosted_key(&url) {
            let (category, reason) =
                if check_key("url", key).is_ok() && assets.hosted.exists(project.id, FsPath::new(key)).await {
                    (Category::Reachable, "in the hosted store")
                } else {
                    (Category::Invalid, "no such file in the hosted store; upload it with a PUT URL")
                };
            results.push((url, frame, category, reason.into()));
            continue;
        }
        let mirrored = project.access_mode == AccessMode::Mirrored
            && assets.hosted.exists(project.id, FsPath::new(&mirror_key(&url))).await;
        if mirrored {
            results.push((url, frame, Category::Reachable, "mirrored into the hosted store".into()));
            continue;
        }
        match classify_offline(&url, rules, fetch.as_ref().map(|(_, access)| access)) {
            Some((category, reason)) => results.push((url, frame, category, reason)),
            None if project.access_mode == AccessMode::Anonymous => results.push((
                url,
                frame,
                Category::NotChecked,
                "anonymous project: milkglass never loads its URLs; only the browser does".into(),
            )),
            None => to_probe.push((url, frame)),
        }
    }
    if let Some((fetcher, access)) = fetch.filter(|_| !to_probe.is_empty()) {
        let unprobed = to_probe.split_off(to_probe.len().min(MAX_PROBES));
        let probed: Vec<(String, String, Category, String)> =
            futures::stream::iter(to_probe.into_iter().map(|(url, frame)| {
                let access = access.clone();
                async move {
                    let (category, reason) = match fetcher.probe(&url, &access).await {
                        Probe::Reachable => (Category::Reachable, "milkglass loaded it".to_string()),
                        Probe::BrowserOnly(why) => (Category::BrowserOnly, why),
                        Probe::Invalid(why) => (Category::Invalid, why),
                    };
                    (url, frame, category, reason)
                }
            }))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.extend(probed);
        results.extend(unprobed.into_iter().map(|(url, frame)| {
            (url, frame, Category::NotChecked, format!("only the first {MAX_PROBES} URLs are probed"))
        }));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for category in
        [Category::Reachable, Category::BrowserOnly, Category::BucketPath, Category::Invalid, Category::NotChecked]
    {
        counts.insert(category.as_str(), 0);
    }
    results.sort_by(|a, b| a.1.cmp(&b.1));
    for (url, frame, category, reason) in &results {
        *counts.entry(category.as_str()).or_default() += 1;
        let list = examples.entry(category.as_str()).or_default();
        if list.len() < EXAMPLES_PER_CATEGORY {
            list.push(json!({ "url": milkglass_fetch::redact(url), "frame_id": frame, "reason": reason }));
        }
    }
    let report = json!({
        "dataset": dataset,
        "access_mode": project.access_mode,
        "urls": results.len(),
        "counts": counts,
        "examples": examples,
    });
    let writer = store.clone();
    let stored = report.clone();
    let checked_at = tokio::task::spawn_blocking(move || writer.set_url_report(info.id, &stored))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let mut report = report;
    report["checked_at"] = checked_at.into();
    Ok(report)
}

/// A deleted project's hosted and mirrored files go with it, so its signed URLs stop working at
/// once and a later project that gets the same id starts with an empty store.
pub(crate) async fn remove_project_files(state: &AppState, project: &ProjectInfo) {
    state.assets.hosted.remove_project(project.id).await;
}

/// After frames arrive, checks their URLs in the background so the user learns at upload time
/// (from `url_report`) which images will not load; a mirrored project mirrors first, so the check
/// finds the copies and the user's server still sees one request per asset.
pub(crate) fn check_after_upload(state: &AppState, project: &str, dataset: &str) {
    let (state, project, dataset) = (state.clone(), project.to_string(), dataset.to_string());
    tokio::spawn(async move {
        let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e);
        let run = async {
            let store = state.store.clone();
            let name = project.clone();
            let info = tokio::task::spawn_blocking(move || store.project(&name))
                .await
                .map_err(|e| internal(e.to_string()))??;
            if info.access_mode == AccessMode::Mirrored {
                run_mirror(&state.store, &state.assets, &info, &dataset).await?;
            }
            run_url_check(&state.store, &state.assets, &info, &dataset).await
        };
        if let Err(e) = run.await {
            tracing::warn!("URL check after an upload to {project}/{dataset}: {}", e.message);
        }
    });
}

async fn url_report(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.project(&state, &project, ProjectRole::Viewer)?;
    let info = state.store.dataset(&project, &dataset)?;
    match state.store.url_report(info.id)? {
        Some((mut report, checked_at)) => {
            report["checked_at"] = checked_at.into();
            Ok(Json(report))
        }
        None => Err(ApiError::not_found(format!(
            "dataset {dataset:?} has no URL report yet; POST .../url_check to make one"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_method_path_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("key")).unwrap();
        let again = Signer::load_or_create(&dir.path().join("key")).unwrap();
        let sig = signer.sign("GET", "/assets/p/a.png", 100);
        assert!(again.verify("GET", "/assets/p/a.png", 100, &sig), "the key persists");
        assert!(!signer.verify("PUT", "/assets/p/a.png", 100, &sig));
        assert!(!signer.verify("GET", "/assets/p/b.png", 100, &sig));
        assert!(!signer.verify("GET", "/assets/p/a.png", 101, &sig));
        assert!(!signer.verify("GET", "/assets/p/a.png", 100, "zz"));
    }

    #[test]
    fn keys_and_paths() {
        assert_eq!(asset_path("my project", "cats/a b.png"), "/assets/my%20project/cats/a%20b.png");
        assert!(check_key("k", "cats/a.png").is_ok());
        for bad in ["../x", "a//b", "/abs", "a/./b", "", "a b.png"] {
            assert!(check_key("k", bad).is_err(), "{bad}");
        }
        assert!(mirror_key("https://x/a/cat.PNG?sig=1").ends_with(".png"));
        assert_eq!(mirror_key("https://x/a/cat.PNG?sig=1"), mirror_key("https://x/a/cat.PNG?sig=1"));
        assert!(!mirror_key("https://x/a/noext").contains('.'));
    }

    #[test]
    fn offline_classes() {
        let rules = Rules::default();
        let class = |url: &str| classify_offline(url, &rules, None).map(|(category, _)| category);
        assert_eq!(class("s3://bucket/a.png"), Some(Category::BucketPath));
        assert_eq!(class("gs://bucket/a.png"), Some(Category::BucketPath));
        assert_eq!(class("ftp://x/a"), Some(Category::Invalid));
        assert_eq!(class("http://10.1.2.3/a.png"), Some(Category::BrowserOnly));
        assert_eq!(class("http://nas/a.png"), Some(Category::BrowserOnly));
        assert_eq!(class("hosted:a.png"), Some(Category::Invalid));
        assert_eq!(class("https://images.example.com/a.png"), None);
        let allowed = Rules { allow: AllowList::parse(&["10.0.0.0/8", "nas"]).unwrap() };
        assert_eq!(classify_offline("http://10.1.2.3/a.png", &allowed, None), None);
        assert_eq!(classify_offline("http://nas/a.png", &allowed, None), None);
        // Bucket paths are milkglass's to try once it has a way in: S3 access reads s3:// only; a
        // signing endpoint signs either kind.
        let keys = S3Settings {
            region: "us-east-1".into(),
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("secret".into()),
            ..S3Settings::default()
        };
        let with_s3 = project_access(&FetchSettings { s3: Some(keys), ..FetchSettings::default() }).unwrap();
        assert_eq!(classify_offline("s3://bucket/a.png", &rules, Some(&with_s3)), None);
        let gs = classify_offline("gs://bucket/a.png", &rules, Some(&with_s3));
        assert_eq!(gs.map(|(category, _)| category), Some(Category::BucketPath));
        let signer =
            FetchSettings { signing_endpoint: Some("https://sign.example/".into()), ..FetchSettings::default() };
        let signed = project_access(&signer).unwrap();
        assert_eq!(classify_offline("gs://bucket/a.png", &rules, Some(&signed)), None);
    }
}
