//! The only milkglass code that touches raw data.
//!
//! A [`Fetcher`] downloads one asset at a time for mirroring, hosted imports and embedding
//! generation. It applies the SSRF [`Rules`] to every hop and every resolved address, sends the
//! project's identifying headers only to the asset's own origin, can ask the project's signing
//! endpoint for a signed URL first, and bounds size, time, redirects and retries. Anonymous
//! projects never get a `Fetcher`: the server has no other way to reach raw data.

mod error;
mod resolver;
mod rules;
mod s3;

pub use error::{FetchError, FetchResult, redact};
pub use rules::{AllowList, Refusal, Rules};
pub use s3::{AwsKeys, S3Access, S3Credentials, parse_s3_url};

use bytes::{Bytes, BytesMut};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, LOCATION, RANGE, USER_AGENT};
use reqwest::{Method, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use url::Url;

/// Limits of one fetcher, set by the admin.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body accepted; the download stops as soon as it passes this.
    pub max_bytes: u64,
    /// Everything for one asset (signing, every retry, every redirect) ends within this.
    pub total_timeout: Duration,
    /// One attempt (all of its redirects, and its body) ends within this, then may be retried.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_redirects: u32,
    /// Further attempts after a 5xx, 429, timeout or connection failure.
    pub retries: u32,
    /// The first retry waits this long; each further one twice as long, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 256 << 20,
            total_timeout: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
            retries: 3,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
        }
    }
}

/// How milkglass presents itself to one project's servers.
#[derive(Debug, Clone, Default)]
pub struct ProjectAccess {
    /// Sent with every request to the asset's origin (e.g. `Authorization`, a shared-secret header).
    pub headers: HeaderMap,
    /// When set, each asset URL is first POSTed here as `{"url": ...}`; the answer `{"url": ...}` is
    /// fetched instead. The endpoint gets the project headers too, so it can tell milkglass apart.
    pub signing_endpoint: Option<Url>,
    /// How `s3://` URLs are read when there is no signing endpoint to turn them into https.
    pub s3: Option<S3Access>,
}

impl ProjectAccess {
    /// Builds the headers from name/value pairs, naming the pair that is not a valid header.
    pub fn with_headers<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<ProjectAccess, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            let header = HeaderName::from_bytes(name.as_ref().as_bytes())
                .map_err(|_| format!("{:?} is not a valid header name", name.as_ref()))?;
            let mut value = HeaderValue::from_str(value.as_ref())
                .map_err(|_| format!("the value of header {:?} has characters headers cannot carry", name.as_ref()))?;
            value.set_sensitive(true);
            headers.append(header, value);
        }
        Ok(ProjectAccess { headers, ..ProjectAccess::default() })
    }
}

/// A downloaded asset.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    /// Where the bytes came from after redirects (and signing).
    pub final_url: Url,
    /// Requests sent for this asset, counting signing, redirects and retries. An `s3://` object
    /// counts as one: object_store's own retries are not seen from here.
    pub requests: u32,
}

/// What a reachability probe learned about one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Reachable,
    /// milkglass cannot reach it, though the user's browser may (a private address, a name that
    /// resolves only inside the user's network, a server that wants the browser's credentials).
    BrowserOnly(String),
    /// Not a URL anything can load (malformed, not found).
    Invalid(String),
}

/// Fetches assets under one set of rules and limits. Cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    rules: Arc<Rules>,
    limits: Arc<Limits>,
    s3: s3::S3Client,
}

impl Fetcher {
    /// `aws_identity` is the server's own AWS identity, used only to assume the roles that projects
    /// name in their S3 access (never to read a bucket directly).
    pub fn new(rules: Rules, limits: Limits, aws_identity: Option<AwsKeys>) -> FetchResult<Fetcher> {
        let rules = Arc::new(rules);
        let client = reqwest::Client::builder()
            // Redirects are followed by hand so that each hop passes the rules.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would dial on our behalf, out of reach of the address checks.
            .no_proxy()
            .dns_resolver(resolver::CheckedResolver::new(rules.clone()))
            .connect_timeout(limits.connect_timeout)
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        let http = s3::CheckedHttp { client: client.clone(), rules: rules.clone(), max_bytes: limits.max_bytes };
        let s3 = s3::S3Client::new(http, aws_identity, &limits);
        Ok(Fetcher { client, rules, limits: Arc::new(limits), s3 })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Downloads `url` for a project, within the limits.
    pub async fn fetch(&self, url: &str, access: &ProjectAccess) -> FetchResult<Fetched> {
        let deadline = Instant::now() + self.limits.total_timeout;
        if let Some(s3) = s3_access(url, access)? {
            // object_store retries by itself, within the same limits.
            let read = self.s3.get(url, s3, self.limits.max_bytes);
            return match tokio::time::timeout_at(deadline, read).await {
                Ok(bytes) => Ok(Fetched { bytes: bytes?, content_type: None, final_url: parse_url(url)?, requests: 1 }),
                Err(_) => Err(FetchError::Timeout { url: redact(url), after: self.limits.total_timeout }),
            };
        }
        match tokio::time::timeout_at(deadline, self.fetch_with_retries(url, access, deadline)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout { url: redact(url), after: self.limits.total_timeout }),
        }
    }

    /// Whether milkglass can load `url`: one small ranged GET (not HEAD, which presigned URLs
    /// often refuse because their signature covers the method), no retries.
    pub async fn probe(&self, url: &str, access: &ProjectAccess) -> Probe {
        let s3 = match s3_access(url, access) {
            Ok(s3) => s3,
            Err(e) => return Probe::BrowserOnly(e.to_string()),
        };
        if let Some(s3) = s3 {
            return match tokio::time::timeout(self.limits.attempt_timeout, self.s3.head(url, s3)).await {
                Err(_) => Probe::BrowserOnly(format!("no answer within {:?}", self.limits.attempt_timeout)),
                Ok(Ok(())) => Probe::Reachable,
                Ok(Err(FetchError::Status { status: 404, .. })) => {
                    Probe::Invalid("no such object in the bucket".into())
                }
                Ok(Err(FetchError::InvalidUrl { reason, .. })) => Probe::Invalid(reason),
                Ok(Err(e)) => Probe::BrowserOnly(e.to_string()),
            };
        }
        let attempt = async {
            let url = self.signed_url(url, access, &mut 0).await?;
            let mut range = HeaderMap::new();
            range.insert(RANGE, HeaderValue::from_static("bytes=0-0"));
            let (response, _) = self.follow(url, access, range, &mut 0).await?;
            Ok::<_, FetchError>(response.status())
        };
        match tokio::time::timeout(self.limits.attempt_timeout, attempt).await {
            Err(_) => Probe::BrowserOnly(format!("no answer within {:?}", self.limits.attempt_timeout)),
            Ok(Ok(status)) if status.is_success() => Probe::Reachable,
            Ok(Ok(status)) if status == StatusCode::NOT_FOUND || status == StatusCode::GONE => {
                Probe::Invalid(format!("the server answers {status}"))
            }
            Ok(Ok(status)) => Probe::BrowserOnly(format!("the server answers {status} to milkglass")),
            Ok(Err(FetchError::InvalidUrl { reason, .. })) => Probe::Invalid(reason),
            Ok(Err(e)) => Probe::BrowserOnly(e.to_string()),
        }
    }

    async fn fetch_with_retries(&self, url: &str, access: &ProjectAccess, deadline: Instant) -> FetchResult<Fetched> {
        let mut requests = 0;
        let mut attempt = 0;
        loop {
            let result =
                match tokio::time::timeout(self.limits.attempt_timeout, self.attempt(url, access, &mut requests)).await
                {
                    Ok(result) => result,
                    Err(_) => Err(FetchError::Timeout { url: redact(url), after: self.limits.attempt_timeout }),
                };
            match result {
                Ok(mut fetched) => {
                    fetched.requests = requests;
                    return Ok(fetched);
                }
                Err(e) if e.is_transient() && attempt < self.limits.retries => {
                    let wait = self.backoff(attempt);
                    if Instant::now() + wait >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.limits.backoff_base.saturating_mul(factor).min(self.limits.backoff_max)
    }

    /// One attempt: sign (a signed URL may have expired since the last attempt), then follow.
    async fn attempt(&self, url: &str, access: &ProjectAccess, requests: &mut u32) -> FetchResult<Fetched> {
        let url = self.signed_url(url, access, requests).await?;
        let (response, final_url) = self.follow(url, access, HeaderMap::new(), requests).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status { url: redact(final_url.as_str()), status: status.as_u16() });
        }
        let content_type =
            response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = self.read_capped(response, &final_url).await?;
        Ok(Fetched { bytes, content_type, final_url, requests: *requests })
    }

    async fn signed_url(&self, url: &str, access: &ProjectAccess, requests: &mut u32) -> FetchResult<Url> {
        let Some(endpoint) = &access.signing_endpoint else {
            return parse_url(url);
        };
        // The asset URL itself need not be http: a signer typically turns `s3://bucket/key` into a
        // presigned https URL, so only the signed answer has to pass the rules.
        self.check_url(endpoint)?;
        *requests += 1;
        let response = self
            .client
            .post(endpoint.clone())
            .headers(access.headers.clone())
            .header(USER_AGENT, user_agent())
            .json(&serde_json::json!({ "url": url }))
            .send()
            .await
            .map_err(|e| FetchError::from_reqwest(endpoint.as_str(), e))?;
        let signing_error = |reason: String| FetchError::Signing { endpoint: redact(endpoint.as_str()), reason };
        if response.status().is_server_error() {
            return Err(FetchError::Status { url: redact(endpoint.as_str()), status: response.status().as_u16() });
        }
        if !response.status().is_success() {
            return Err(signing_error(format!("the endpoint answered {}", response.status())));
        }
        let body = self.read_capped(response, endpoint).await?;
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| signing_error(format!("the answer is not JSON: {e}")))?;
        let signed = answer
            .get("url")
            .and_then(|u| u.as_str())
            .ok_or_else(|| signing_error("the answer has no string field \"url\"".into()))?;
        parse_url(signed)
    }

    /// Sends a GET and follows redirects by hand, checking each hop against the rules. Returns the
    /// last response (not a redirect) and its URL.
    async fn follow(
        &self,
        mut url: Url,
        access: &ProjectAccess,
        extra: HeaderMap,
        requests: &mut u32,
    ) -> FetchResult<(reqwest::Response, Url)> {
        let origin = url.origin();
        let mut redirects = 0;
        loop {
            self.check_url(&url)?;
            let mut request = self.client.request(Method::GET, url.clone()).header(USER_AGENT, user_agent());
            // Credentials meant for the asset's origin are not handed to wherever it redirects.
            if url.origin() == origin {
                request = request.headers(access.headers.clone());
            }
            *requests += 1;
            let response =
                request.headers(extra.clone()).send().await.map_err(|e| FetchError::from_reqwest(url.as_str(), e))?;
            if !response.status().is_redirection() || response.status() == StatusCode::NOT_MODIFIED {
                return Ok((response, url));
            }
            let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                FetchError::InvalidUrl {
                    url: redact(url.as_str()),
                    reason: format!("redirect {} without a usable Location header", response.status()),
                }
            })?;
            let next = url.join(location).map_err(|e| FetchError::InvalidUrl {
                url: redact(location),
                reason: format!("redirect target is not a URL: {e}"),
            })?;
            redirects += 1;
            if redirects > self.limits.max_redirects {
                return Err(FetchError::TooManyRedirects {
                    url: redact(next.as_str()),
                    limit: self.limits.max_redirects,
                });
            }
            url = next;
        }
    }

    /// The rules a URL must pass before a request: the scheme, then a literal address (names are
    /// checked in the resolver, on the answer that is actually dialled).
    fn check_url(&self, url: &Url) -> FetchResult<()> {
        let refused = |rule: Refusal| FetchError::Refused { url: redact(url.as_str()), rule };
        self.rules.check_scheme(url.scheme()).map_err(refused)?;
        if url.scheme() == "https" && !cfg!(feature = "tls") {
            return Err(FetchError::Unsupported {
                url: redact(url.as_str()),
                reason: "this build of milkglass has no TLS support (build milkglass-fetch with the `tls` feature)"
                    .into(),
            });
        }
        self.rules.check_url(url).map_err(refused)
    }

    async fn read_capped(&self, mut response: reqwest::Response, url: &Url) -> FetchResult<Bytes> {
        let limit = self.limits.max_bytes;
        let too_large = || FetchError::TooLarge { url: redact(url.as_str()), limit };
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| FetchError::from_reqwest(url.as_str(), e))? {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// The S3 access to read `url` with: `Some` for an `s3://` URL of a project that has S3 access and
/// no signing endpoint (a signer turns bucket paths into https URLs, and then wins). An `s3://`
/// URL with neither is refused with what to set up.
fn s3_access<'a>(url: &str, access: &'a ProjectAccess) -> FetchResult<Option<&'a S3Access>> {
    let is_s3 = url.get(..5).is_some_and(|scheme| scheme.eq_ignore_ascii_case("s3://"));
    if !is_s3 || access.signing_endpoint.is_some() {
        return Ok(None);
    }
    match &access.s3 {
        Some(s3) => Ok(Some(s3)),
        None => Err(FetchError::Unsupported {
            url: redact(url),
            reason: "an s3:// bucket path: set the project's S3 access (keys or a role to assume) or a signing \
                     endpoint in its fetch settings so milkglass can read it"
                .into(),
        }),
    }
}

fn parse_url(url: &str) -> FetchResult<Url> {
    Url::parse(url).map_err(|e| FetchError::InvalidUrl { url: redact(url), reason: e.to_string() })
}

fn user_agent() -> HeaderValue {
    HeaderValue::from_static(concat!("milkglass/", env!("CARGO_PKG_VERSION")))
}

/// Whether a header carries a credential, so it can be shown masked.
pub fn is_secret_header(name: &HeaderName) -> bool {
    name == AUTHORIZATION || name.as_str().contains("secret") || name.as_str().contains("token")
}
