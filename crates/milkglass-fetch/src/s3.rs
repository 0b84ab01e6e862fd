//! `s3://bucket/key` assets, read with `object_store` under the same SSRF rules as every other
//! fetch: object_store's HTTP traffic goes through [`CheckedHttp`], the fetcher's own client
//! (checked DNS answers, no proxy, no redirects), so a project cannot point an S3 endpoint at
//! loopback or the cloud metadata address any more than it can point an image URL there.
//!
//! Credentials come in two forms:
//! - keys the project owner gives (an access key, optionally with a session token);
//! - a role in the owner's account that milkglass assumes with STS `AssumeRole`, signed with the
//!   server's own AWS identity and a per-project external id. This is the form AWS recommends
//!   for a third party reading a customer's bucket: the owner's trust policy names milkglass's
//!   identity and the external id, and no long-lived key of theirs is ever handed over.

use crate::error::{FetchError, FetchResult, error_chain, find_refusal, redact};
use crate::rules::Rules;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredential, AwsCredentialProvider};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse, HttpService,
};
use object_store::{BackoffConfig, ClientOptions, CredentialProvider, ObjectStore, ObjectStoreExt, RetryConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

/// Assumed-role credentials are renewed this long before they expire, so a fetch never starts
/// with credentials about to lapse mid-request.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// How long an assumed role's credentials are asked to last (STS's minimum is 900 s).
const ROLE_SESSION_SECS: u64 = 3600;
/// STS answers are small; anything larger is not an STS answer.
const MAX_STS_ANSWER: u64 = 64 << 10;

/// An access key pair, as AWS issues them.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKeys").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

impl AwsKeys {
    /// The server's own identity from the standard variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), if both keys are set.
    pub fn from_env() -> Option<AwsKeys> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Some(AwsKeys {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }

    fn credential(&self) -> AwsCredential {
        AwsCredential {
            key_id: self.access_key_id.clone(),
            secret_key: self.secret_access_key.clone(),
            token: self.session_token.clone(),
        }
    }
}

/// Which credentials sign a project's S3 requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// Keys the project owner gave.
    Keys(AwsKeys),
    /// A role in the owner's account, assumed with the server's own identity.
    AssumeRole { role_arn: String, external_id: String },
}

/// How milkglass reads one project's `s3://` URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Access {
    pub region: String,
    /// An S3-compatible endpoint (MinIO, Ceph, a local test server); `None` for AWS itself. Path-style
    /// requests are used with a custom endpoint, which every S3-compatible server understands.
    pub endpoint: Option<Url>,
    /// Where `AssumeRole` is asked; `None` for AWS's regional STS, or the custom `endpoint` when
    /// there is one (MinIO and other S3-compatible servers answer STS on the same address).
    pub sts_endpoint: Option<Url>,
    pub credentials: S3Credentials,
}

impl S3Access {
    fn sts_url(&self) -> String {
        match (&self.sts_endpoint, &self.endpoint) {
            (Some(url), _) | (None, Some(url)) => url.to_string(),
            (None, None) => format!("https://sts.{}.amazonaws.com/", self.region),
        }
    }
}

/// A bucket and key out of `s3://bucket/key`.
pub fn parse_s3_url(url: &str) -> FetchResult<(String, object_store::path::Path)> {
    let invalid = |reason: &str| FetchError::InvalidUrl { url: redact(url), reason: reason.into() };
    let parsed = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if parsed.scheme() != "s3" {
        return Err(invalid("not an s3:// URL"));
    }
    let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| invalid("no bucket name"))?;
    let key = parsed.path().trim_start_matches('/');
    if key.is_empty() || key.ends_with('/') {
        return Err(invalid("no object key after the bucket"));
    }
    // `from_url_path` percent-decodes and refuses `.` and `..` segments.
    let path = object_store::path::Path::from_url_path(key).map_err(|e| invalid(&e.to_string()))?;
    Ok((bucket.to_string(), path))
}

/// The fetcher's S3 side: the checked HTTP client object_store talks through, the server's own
/// AWS identity for assuming roles, and the assumed roles' credentials while they last.
#[derive(Clone)]
pub(crate) struct S3Client {
    http: CheckedHttp,
    identity: Option<AwsKeys>,
    roles: Arc<Mutex<HashMap<String, Arc<AssumedRole>>>>,
    retry: RetryConfig,
}

impl S3Client {
    pub(crate) fn new(http: CheckedHttp, identity: Option<AwsKeys>, limits: &crate::Limits) -> S3Client {
        let retry = RetryConfig {
            backoff: BackoffConfig { init_backoff: limits.backoff_base, max_backoff: limits.backoff_max, base: 2.0 },
            max_retries: limits.retries as usize,
            retry_timeout: limits.total_timeout,
        };
        S3Client { http, identity, roles: Arc::default(), retry }
    }

    /// Reads one object, at most `max_bytes` of it.
    pub(crate) async fn get(&self, url: &str, access: &S3Access, max_bytes: u64) -> FetchResult<Bytes> {
        let (bucket, path) = parse_s3_url(url)?;
        let store = self.store(url, &bucket, access)?;
        let result = store.get(&path).await.map_err(|e| object_error(url, e))?;
        if result.meta.size > max_bytes {
            return Err(FetchError::TooLarge { url: redact(url), limit: max_bytes });
        }
        let mut body = BytesMut::with_capacity(result.meta.size as usize);
        let mut stream = result.into_stream();
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            let chunk = chunk.map_err(|e| object_error(url, e))?;
            if body.len() as u64 + chunk.len() as u64 > max_bytes {
                return Err(FetchError::TooLarge { url: redact(url), limit: max_bytes });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// Whether the object exists and the credentials may read it (a HEAD, no body).
    pub(crate) async fn head(&self, url: &str, access: &S3Access) -> FetchResult<()> {
        let (bucket, path) = parse_s3_url(url)?;
        let store = self.store(url, &bucket, access)?;
        store.head(&path).await.map(|_| ()).map_err(|e| object_error(url, e))
    }

    fn store(&self, url: &str, bucket: &str, access: &S3Access) -> FetchResult<Arc<dyn ObjectStore>> {
        let credentials: AwsCredentialProvider = match &access.credentials {
            S3Credentials::Keys(keys) => Arc::new(object_store::StaticCredentialProvider::new(keys.credential())),
            S3Credentials::AssumeRole { role_arn, external_id } => {
                self.assumed_role(url, access, role_arn, external_id)?
            }
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&access.region)
            .with_credentials(credentials)
            .with_http_connector(self.http.clone())
            .with_retry(self.retry.clone());
        if let Some(endpoint) = &access.endpoint {
            builder = builder
                .with_endpoint(endpoint.as_str().trim_end_matches('/'))
                .with_allow_http(endpoint.scheme() == "http")
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| FetchError::Unsupported {
            url: redact(url),
            reason: format!("the project's S3 settings do not make a client: {e}"),
        })?;
        Ok(Arc::new(store))
    }

    /// One provider per role, external id and STS endpoint, so its credentials are reused by every
    /// fetch until they near expiry.
    fn assumed_role(
        &self,
        url: &str,
        access: &S3Access,
        role_arn: &str,
        external_id: &str,
    ) -> FetchResult<AwsCredentialProvider> {
        let Some(identity) = &self.identity else {
            return Err(FetchError::Unsupported {
                url: redact(url),
                reason: "the project asks milkglass to assume a role, but this server has no AWS identity to \
                         assume it with: start `milkglass serve` with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                         set, or give the project access keys instead"
                    .into(),
            });
        };
        let sts = access.sts_url();
        let key = format!("{role_arn}\n{external_id}\n{sts}\n{}", access.region);
        let mut roles = self.roles.lock().unwrap_or_else(|e| e.into_inner());
        let role = roles.entry(key).or_insert_with(|| {
            Arc::new(AssumedRole {
                http: self.http.clone(),
                identity: identity.credential(),
                sts,
                region: access.region.clone(),
                role_arn: role_arn.to_string(),
                external_id: external_id.to_string(),
                cached: tokio::sync::Mutex::new(None),
            })
        });
        Ok(role.clone())
    }
}

/// Maps object_store's errors onto the fetcher's, keeping the status where there is one so a
/// missing object reads as 404 and a refused credential as 403.
fn object_error(url: &str, error: object_store::Error) -> FetchError {
    let url = redact(url);
    match error {
        object_store::Error::NotFound { .. } => FetchError::Status { url, status: 404 },
        object_store::Error::PermissionDenied { .. } => FetchError::Status { url, status: 403 },
        object_store::Error::Unauthenticated { .. } => FetchError::Status { url, status: 401 },
        other => match find_refusal(&other) {
            Some(rule) => FetchError::Refused { url, rule },
            None => FetchError::Connect { url, reason: error_chain(&other) },
        },
    }
}

// ---------------------------------------------------------------------------------------------
// STS AssumeRole

#[derive(Debug)]
struct AssumedRole {
    http: CheckedHttp,
    identity: AwsCredential,
    sts: String,
    region: String,
    role_arn: String,
    external_id: String,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, chrono::DateTime<chrono::Utc>)>>,
}

#[async_trait]
impl CredentialProvider for AssumedRole {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expires)) = cached.as_ref() {
            let renew_at = *expires - chrono::Duration::from_std(RENEW_BEFORE).expect("small");
            if chrono::Utc::now() < renew_at {
                return Ok(credential.clone());
            }
        }
        let (credential, expires) =
            self.assume().await.map_err(|e| object_store::Error::Generic { store: "S3", source: Box::new(e) })?;
        let credential = Arc::new(credential);
        *cached = Some((credential.clone(), expires));
        Ok(credential)
    }
}

impl AssumedRole {
    async fn assume(&self) -> FetchResult<(AwsCredential, chrono::DateTime<chrono::Utc>)> {
        let sts_error = |reason: String| FetchError::Signing { endpoint: format!("STS {}", redact(&self.sts)), reason };
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRole")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", "milkglass")
            .append_pair("ExternalId", &self.external_id)
            .append_pair("DurationSeconds", &ROLE_SESSION_SECS.to_string())
            .finish();
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(&self.sts)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(HttpRequestBody::from(form))
            .map_err(|e| sts_error(format!("not a usable STS address: {e}")))?;
        AwsAuthorizer::new(&self.identity, "sts", &self.region).authorize(&mut request, None);
        let response = self.http.call(request).await.map_err(|e| sts_error(error_chain(&e)))?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(|e| sts_error(error_chain(&e)))?;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let code = xml_field(&text, "Code").unwrap_or_default();
            let message = xml_field(&text, "Message").unwrap_or_default();
            return Err(sts_error(format!(
                "AssumeRole of {} answered {status}: {code} {message} (the role's trust policy must name this \
                 server's identity and the project's external id)",
                self.role_arn
            )));
        }
        let field = |name: &str| {
            xml_field(&text, name).ok_or_else(|| sts_error(format!("the AssumeRole answer has no <{name}>")))
        };
        let credential = AwsCredential {
            key_id: field("AccessKeyId")?,
            secret_key: field("SecretAccessKey")?,
            token: Some(field("SessionToken")?),
        };
        let expires = chrono::DateTime::parse_from_rfc3339(&field("Expiration")?)
            .map_err(|e| sts_error(format!("the AssumeRole answer has an unreadable <Expiration>: {e}")))?
            .with_timezone(&chrono::Utc);
        Ok((credential, expires))
    }
}

/// The text of the first `<name>` element. STS answers are flat, namespaced only at the root, and
/// their fields (keys, tokens, dates, codes) carry no markup, so entity decoding covers the rest.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let raw = &xml[start..end];
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

// ---------------------------------------------------------------------------------------------
// The HTTP client object_store talks through

/// object_store's requests, sent by the fetcher's checked client: the DNS answer is checked by its
/// resolver, a literal address here, and redirects are not followed (S3 answers none a client
/// must follow; a 3xx reaches object_store as an error).
#[derive(Clone)]
pub(crate) struct CheckedHttp {
    pub(crate) client: reqwest::Client,
    pub(crate) rules: Arc<Rules>,
    pub(crate) max_bytes: u64,
}

impl std::fmt::Debug for CheckedHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckedHttp")
    }
}

impl HttpConnector for CheckedHttp {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.clone()))
    }
}

#[async_trait]
impl HttpService for CheckedHttp {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let url = Url::parse(&parts.uri.to_string()).map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        self.rules.check_url(&url).map_err(|rule| HttpError::new(HttpErrorKind::Request, rule))?;
        // The fetcher only reads: GETs, HEADs and STS's small form posts carry bodies in memory.
        let body = body.as_bytes().cloned().unwrap_or_default();
        let response = self
            .client
            .request(parts.method, url.clone())
            .headers(parts.headers)
            .header(reqwest::header::USER_AGENT, crate::user_agent())
            .body(body)
            .send()
            .await
            .map_err(|e| into_http_error(&url, e))?;
        let limit = if response.status().is_success() { self.max_bytes } else { MAX_STS_ANSWER };
        let status = response.status();
        let headers = response.headers().clone();
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(HttpError::new(
                HttpErrorKind::Decode,
                FetchError::TooLarge { url: redact(url.as_str()), limit },
            ));
        }
        let mut bytes = BytesMut::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(|e| into_http_error(&url, e))? {
            if bytes.len() as u64 + chunk.len() as u64 > limit {
                return Err(HttpError::new(
                    HttpErrorKind::Decode,
                    FetchError::TooLarge { url: redact(url.as_str()), limit },
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        let mut answer = http::Response::new(bytes.freeze().into());
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

fn into_http_error(url: &Url, error: reqwest::Error) -> HttpError {
    let kind = if error.is_timeout() {
        HttpErrorKind::Timeout
    } else if error.is_connect() {
        HttpErrorKind::Connect
    } else {
        HttpErrorKind::Request
    };
    match FetchError::from_reqwest(url.as_str(), error) {
        // A refusal made in the resolver stays a Refusal, so it is reported as the rule it is.
        FetchError::Refused { rule, .. } => HttpError::new(HttpErrorKind::Request, rule),
        other => HttpError::new(kind, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        let (bucket, key) = parse_s3_url("s3://my-bucket/cats/a%20b.png").unwrap();
        assert_eq!(bucket, "my-bucket");
        assert_eq!(key.as_ref(), "cats/a b.png");
        for bad in ["s3://bucket", "s3://bucket/", "s3:///key", "https://b/k", "s3://b/dir/"] {
            assert!(parse_s3_url(bad).is_err(), "{bad}");
        }
        // Dot segments are resolved as in any URL, so a key never climbs out of its bucket.
        assert_eq!(parse_s3_url("s3://b/a/../k").unwrap().1.as_ref(), "k");
    }

    #[test]
    fn sts_fields() {
        let xml = "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
                   <Credentials><AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s/e+c&amp;r</SecretAccessKey>\
                   <Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(xml_field(xml, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_field(xml, "SecretAccessKey").as_deref(), Some("s/e+c&r"));
        assert_eq!(xml_field(xml, "SessionToken"), None);
    }

    #[test]
    fn sts_endpoint_follows_a_custom_s3_endpoint() {
        let access = |endpoint: Option<&str>, sts: Option<&str>| S3Access {
            region: "eu-west-1".into(),
            endpoint: endpoint.map(|e| e.parse().unwrap()),
            sts_endpoint: sts.map(|e| e.parse().unwrap()),
            credentials: S3Credentials::AssumeRole { role_arn: "r".into(), external_id: "x".into() },
        };
        assert_eq!(access(None, None).sts_url(), "https://sts.eu-west-1.amazonaws.com/");
        assert_eq!(access(Some("http://minio:9000"), None).sts_url(), "http://minio:9000/");
        assert_eq!(access(Some("http://minio:9000"), Some("https://sts.x/")).sts_url(), "https://sts.x/");
    }
}
