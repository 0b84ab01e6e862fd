//! Signed, expiring URLs to a project's hosted store: the only way a browser reads or writes
//! hosted and mirrored files (an `<img>` tag cannot send a bearer token; the signature is the
//! credential). A URL is bound to the project's uid, so it dies with the project even when
//! another project takes the name and a file of the same key.

use super::mirror::mirror_key;
use crate::raw::hosted::HostedFile;
use crate::{ErrorKind, ServiceError, ServiceResult, Services, access, on_store};
use hmac::{Hmac, Mac};
use milkglass_core::paths::{encode_segment, key_refusal, segment_refusal};
use milkglass_core::{AccessMode, DataUrl, ProjectRole};
use milkglass_store::{ProjectInfo, User};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};

const DEFAULT_TTL_SECS: u64 = 3600;
/// As with presigned S3 URLs: a leaked URL stops working within a week at most.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
const MAX_KEYS_PER_CALL: usize = 1000;

/// HMAC-SHA256 signatures over `METHOD\npath\nexpires\nproject uid`. The key never leaves the data
/// directory; the uid binds a URL to the project it was signed for, not to its name.
pub(crate) struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub(crate) fn load_or_create(path: &FsPath) -> std::io::Result<Signer> {
        Ok(Signer { key: milkglass_store::key_file::load_or_create(path)? })
    }

    fn mac(&self, method: &str, path: &str, expires: u64, uid: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(format!("{method}\n{path}\n{expires}\n{uid}").as_bytes());
        mac
    }

    fn sign(&self, method: &str, path: &str, expires: u64, uid: &str) -> String {
        hex::encode(self.mac(method, path, expires, uid).finalize().into_bytes())
    }

    /// Constant-time comparison, so timing does not reveal how much of a forged signature was right.
    fn verify(&self, method: &str, path: &str, expires: u64, uid: &str, signature: &str) -> bool {
        let Ok(bytes) = hex::decode(signature) else { return false };
        self.mac(method, path, expires, uid).verify_slice(&bytes).is_ok()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The URL path of a key in a project's store, encoded the one way signatures are computed over.
pub(crate) fn asset_path(project: &str, key: &str) -> String {
    let key: Vec<String> = key.split('/').map(encode_segment).collect();
    format!("/assets/{}/{}", encode_segment(project), key.join("/"))
}

fn signed_url(base: &str, signer: &Signer, method: &str, project: &ProjectInfo, key: &str, ttl: u64) -> (String, u64) {
    let expires = unix_now() + ttl;
    let path = asset_path(&project.name, key);
    let sig = signer.sign(method, &path, expires, &project.uid);
    (format!("{base}{path}?expires={expires}&sig={sig}"), expires)
}

/// The scheme and host the caller reached this server by, for absolute URLs it can hand on.
/// A hosted-store key as the service accepts it: a valid `hosted:KEY` data URL whose every
/// segment is a plain name.
pub(crate) fn check_key(field: &str, key: &str) -> ServiceResult<()> {
    if key.is_empty() || key.len() > 1024 {
        return Err(ServiceError::invalid(field, "keys are 1 to 1024 bytes"));
    }
    // The key must also make a valid `hosted:KEY` data URL for frames.
    milkglass_core::check_data_url(field, &format!("hosted:{key}"))?;
    if let Some(why) = key_refusal(key) {
        return Err(ServiceError::invalid(field, format!("the path is refused: {why}")));
    }
    Ok(())
}

fn ttl(expires_in: Option<u64>) -> ServiceResult<u64> {
    match expires_in.unwrap_or(DEFAULT_TTL_SECS) {
        0 => Err(ServiceError::invalid("expires_in", "must be at least 1 second")),
        secs if secs > MAX_TTL_SECS => {
            Err(ServiceError::invalid("expires_in", format!("must be at most {MAX_TTL_SECS} seconds (7 days)")))
        }
        secs => Ok(secs),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub keys: Vec<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Also hand out PUT URLs (hosted projects, owners only).
    #[serde(default)]
    pub put: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SignedKey {
    pub key: String,
    pub data_url: String,
    pub get_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub put_url: Option<String>,
    pub expires_at: u64,
}

/// Signed URLs for keys of a project's hosted store: GET for viewers, PUT too for owners of a
/// hosted project. `base` is the scheme and host the caller reached this server by. Blocking.
pub fn sign(
    services: &Services,
    user: &User,
    project: &str,
    base: &str,
    request: &SignRequest,
) -> ServiceResult<Vec<SignedKey>> {
    let needed = if request.put { ProjectRole::Owner } else { ProjectRole::Viewer };
    let project = access::project(&services.store, user, project, needed)?;
    match (project.access_mode, request.put) {
        (AccessMode::Hosted, _) | (AccessMode::Mirrored, false) => {}
        (AccessMode::Mirrored, true) => {
            return Err(ServiceError::invalid(
                "put",
                "a mirrored project's store is filled by milkglass (POST .../mirror)",
            ));
        }
        (mode, _) => {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                "no_hosted_store",
                format!(
                    "project {:?} is {mode}: it has no hosted store; its files stay at their own URLs",
                    project.name
                ),
            ));
        }
    }
    if request.keys.is_empty() || request.keys.len() > MAX_KEYS_PER_CALL {
        return Err(ServiceError::invalid("keys", format!("give 1 to {MAX_KEYS_PER_CALL} keys")));
    }
    let ttl = ttl(request.expires_in)?;
    let signer = &services.raw.signer;
    let mut urls = Vec::with_capacity(request.keys.len());
    for (i, key) in request.keys.iter().enumerate() {
        check_key(&format!("keys[{i}]"), key)?;
        let (get_url, expires_at) = signed_url(base, signer, "GET", &project, key, ttl);
        let put_url = request.put.then(|| signed_url(base, signer, "PUT", &project, key, ttl).0);
        urls.push(SignedKey { key: key.clone(), data_url: format!("hosted:{key}"), get_url, put_url, expires_at });
    }
    Ok(urls)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub urls: Vec<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// How the browser loads one data URL: `load_url` (none, with the reason, when it cannot).
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedUrl {
    pub url: String,
    pub load_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Turns the data URLs of frames into URLs the browser can load, per the project's mode; viewers
/// may ask. Never fetches anything.
pub async fn resolve(
    services: &Services,
    user: &User,
    project: &str,
    base: &str,
    request: &ResolveRequest,
) -> ServiceResult<Vec<ResolvedUrl>> {
    let (user, name) = (user.clone(), project.to_string());
    let project = on_store(services, move |store| access::project(store, &user, &name, ProjectRole::Viewer)).await?;
    if request.urls.len() > MAX_KEYS_PER_CALL {
        return Err(ServiceError::invalid("urls", format!("give at most {MAX_KEYS_PER_CALL} URLs")));
    }
    let ttl = ttl(request.expires_in)?;
    let raw = &services.raw;
    let hosted = |url: &str, key: &str, via: &'static str| {
        let (load_url, expires_at) = signed_url(base, &raw.signer, "GET", &project, key, ttl);
        ResolvedUrl {
            url: url.to_string(),
            load_url: Some(load_url),
            via: Some(via),
            expires_at: Some(expires_at),
            reason: None,
        }
    };
    let unloadable = |url: &str, via: Option<&'static str>, reason: String| ResolvedUrl {
        url: url.to_string(),
        load_url: None,
        via,
        expires_at: None,
        reason: Some(reason),
    };
    let mut resolved = Vec::with_capacity(request.urls.len());
    for url in &request.urls {
        resolved.push(match (project.access_mode, DataUrl::hosted_key(url)) {
            (AccessMode::Hosted | AccessMode::Mirrored, Some(key)) => hosted(url, key, "hosted"),
            (AccessMode::Mirrored, None) => {
                let key = mirror_key(url);
                if raw.hosted.exists(project.id, FsPath::new(&key)).await {
                    hosted(url, &key, "mirror")
                } else {
                    unloadable(url, Some("mirror"), "not mirrored yet; POST .../mirror".into())
                }
            }
            (_, Some(_)) => {
                unloadable(url, None, format!("project is {}; hosted: keys need a hosted project", project.access_mode))
            }
            (_, None) => ResolvedUrl {
                url: url.clone(),
                load_url: Some(url.clone()),
                via: Some("browser"),
                expires_at: None,
                reason: None,
            },
        });
    }
    Ok(resolved)
}

/// What a signed URL may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedMethod {
    /// GET and HEAD.
    Get,
    Put,
}

impl SignedMethod {
    fn as_str(self) -> &'static str {
        match self {
            SignedMethod::Get => "GET",
            SignedMethod::Put => "PUT",
        }
    }
}

/// A request whose signature checked out: the project it was signed for and the key.
pub struct SignedAsset {
    pub project: ProjectInfo,
    /// The key as a relative path (plain segments only).
    pub key: PathBuf,
    /// The key as it came in the URL path (still percent-encoded), with its leading `/`.
    pub raw_key: String,
    pub expires: u64,
}

impl SignedAsset {
    /// How long the browser may keep what it read.
    pub fn seconds_left(&self) -> u64 {
        self.expires.saturating_sub(unix_now())
    }
}

/// Checks a signed URL (`path` as it came, `query` its query string). Every way a URL can fail
/// (forged, expired, for a project that was deleted or re-created) answers 403 before any file
/// is looked at.
pub async fn authorize(
    services: &Services,
    method: SignedMethod,
    path: &str,
    query: &str,
) -> ServiceResult<SignedAsset> {
    let query = query_pairs(query);
    let forbidden = |message: String| ServiceError::forbidden(message);
    let expires: u64 = query
        .get("expires")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| forbidden("missing or malformed `expires`: ask the API for a signed URL".into()))?;
    let sig = query.get("sig").ok_or_else(|| forbidden("missing `sig`: ask the API for a signed URL".into()))?;
    let rest = path.strip_prefix("/assets/").unwrap_or_default();
    let (project_segment, key) = rest.split_once('/').unwrap_or((rest, ""));
    let name = percent_decode(project_segment);
    let mismatch = || forbidden(format!("the signature does not match this {} URL", method.as_str()));
    // A missing project reads like a bad signature: a URL of a deleted project is simply dead.
    let project = on_store(services, move |store| Ok(store.project(&name).ok())).await?.ok_or_else(mismatch)?;
    if !services.raw.signer.verify(method.as_str(), path, expires, &project.uid, sig) {
        return Err(mismatch());
    }
    let now = unix_now();
    if expires < now {
        return Err(forbidden(format!("the URL expired {} seconds ago; ask the API for a new one", now - expires)));
    }
    let raw_key = format!("/{key}");
    let refused = |why: &str| ServiceError::invalid("key", format!("the path is refused: {why}"));
    let mut decoded = PathBuf::new();
    for segment in key.split('/') {
        // Each segment is decoded once and must stay one plain name (no `%2F`, `%2e%2e`, NUL).
        let segment = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| refused("the path is not UTF-8"))?;
        if let Some(why) = segment_refusal(&segment) {
            return Err(refused(why));
        }
        decoded.push(segment.as_ref());
    }
    Ok(SignedAsset { project, key: decoded, raw_key, expires })
}

/// Where a signed GET's file is, for the adapter to serve.
pub async fn locate(services: &Services, asset: &SignedAsset) -> ServiceResult<HostedFile> {
    services.raw.hosted.locate(asset.project.id, &asset.key).await
}

/// What a signed PUT stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredFile {
    pub key: String,
    pub bytes: u64,
    /// The data URL frames use for it.
    pub url: String,
}

/// Streams a signed PUT's body into the hosted store, whole or not at all.
pub async fn store<E: std::fmt::Display>(
    services: &Services,
    asset: &SignedAsset,
    body: impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> ServiceResult<StoredFile> {
    write_hosted(services, &asset.project, &asset.key, body).await
}

/// Streams a file into a hosted project's store under `key` (already checked), whole or not at all.
async fn write_hosted<E: std::fmt::Display>(
    services: &Services,
    project: &ProjectInfo,
    key: &FsPath,
    body: impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> ServiceResult<StoredFile> {
    if project.access_mode != AccessMode::Hosted {
        return Err(ServiceError::new(ErrorKind::Conflict, "not_hosted", "only hosted projects take uploads"));
    }
    let limit = services.config.max_upload_bytes;
    let bytes = services.raw.hosted.write(project.id, key, body, limit).await?;
    let key = key.to_string_lossy().to_string();
    Ok(StoredFile { url: format!("hosted:{key}"), key, bytes })
}

/// Stores an owner's file under `key` in a hosted project's store, as a signed PUT would.
pub async fn upload_hosted<E: std::fmt::Display>(
    services: &Services,
    user: &User,
    project: &str,
    key: &str,
    body: impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> ServiceResult<StoredFile> {
    check_key("key", key)?;
    let (user, name) = (user.clone(), project.to_string());
    let project = on_store(services, move |store| access::project(store, &user, &name, ProjectRole::Owner)).await?;
    write_hosted(services, &project, FsPath::new(key), body).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_method_path_expiry_and_project() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&dir.path().join("key")).unwrap();
        let again = Signer::load_or_create(&dir.path().join("key")).unwrap();
        let sig = signer.sign("GET", "/assets/p/a.png", 100, "u1");
        assert!(again.verify("GET", "/assets/p/a.png", 100, "u1", &sig), "the key persists");
        assert!(!signer.verify("PUT", "/assets/p/a.png", 100, "u1", &sig));
        assert!(!signer.verify("GET", "/assets/p/b.png", 100, "u1", &sig));
        assert!(!signer.verify("GET", "/assets/p/a.png", 101, "u1", &sig));
        assert!(!signer.verify("GET", "/assets/p/a.png", 100, "u2", &sig), "another project of the same name");
        assert!(!signer.verify("GET", "/assets/p/a.png", 100, "u1", "zz"));
    }

    #[test]
    fn keys_and_paths() {
        assert_eq!(asset_path("my project", "cats/a b.png"), "/assets/my%20project/cats/a%20b.png");
        assert!(check_key("k", "cats/a.png").is_ok());
        for bad in ["../x", "a//b", "/abs", "a/./b", "", "a b.png"] {
            assert!(check_key("k", bad).is_err(), "{bad}");
        }
    }
}
