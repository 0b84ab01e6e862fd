//! The raw-data boundary: data-access modes in action.
//!
//! - `hosted`: files in the hosted store ([`hosted`]), written and read only through signed,
//!   expiring URLs ([`signer`]);
//! - `mirrored`: each of the user's URLs fetched once into the same store, then served from it
//!   ([`mirror`]);
//! - `anonymous`: [`RawData::fetcher_for`] refuses, and it is the only way to the fetcher, so no
//!   operation reaches `milkglass-fetch` for such a project;
//! - URL checks: a per-dataset report of which URLs milkglass (or only the browser) can load
//!   ([`url_check`]).

pub mod hosted;
pub mod mirror;
pub mod signer;
pub mod url_check;

use crate::embedding::ImageSource;
use crate::{ErrorKind, ServiceError, ServiceResult, Services, access, on_store};
use hosted::HostedStore;
use milkglass_core::{AccessMode, DataUrl, ProjectRole};
use milkglass_fetch::{AllowList, AwsKeys, Fetcher, Limits, ProjectAccess, Rules, S3Access, S3Credentials};
use milkglass_store::{FetchSettings, ProjectInfo, S3Settings, Store, User};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;

/// Fetches in flight at once for mirroring and URL checks: enough to hide latency, few enough
/// not to hammer the user's server.
const CONCURRENCY: usize = 8;

/// Checks an allow-list given on the command line, so a bad entry stops the server at start.
pub fn check_fetch_allow(entries: &[String]) -> Result<(), String> {
    AllowList::parse(entries).map(|_| ())
}

/// One server's way to raw data: the fetcher, the hosted store, URL signatures.
pub struct RawData {
    /// Private: reached only through [`RawData::fetcher_for`], which refuses anonymous projects.
    fetcher: Fetcher,
    /// The fetcher's rules, for telling offline which URLs it would refuse.
    rules: Rules,
    signer: signer::Signer,
    hosted: HostedStore,
    /// One lock per mirror target being fetched, this server's only.
    mirror_locks: mirror::MirrorLocks,
    /// Datasets whose URLs are being checked after an upload, each with whether another upload
    /// asked for a check since (see [`url_check::check_after_upload`]).
    checks_after_upload: std::sync::Mutex<std::collections::HashMap<(String, String), bool>>,
}

impl RawData {
    /// `asset_store` is where hosted and mirrored files go (see [`HostedStore::open`]).
    pub(crate) fn new(store: &Store, allow: &[String], asset_store: Option<&str>) -> std::io::Result<RawData> {
        let allow = AllowList::parse(allow).map_err(std::io::Error::other)?;
        let rules = Rules { allow };
        // The server's own AWS identity (from the standard variables) only ever assumes the roles
        // projects name; it never reads a project's bucket as itself.
        let fetcher =
            Fetcher::new(rules.clone(), Limits::default(), AwsKeys::from_env()).map_err(std::io::Error::other)?;
        let signer = signer::Signer::load_or_create(&store.dir().join("asset-signing.key"))?;
        let hosted = HostedStore::open(asset_store, store.dir()).map_err(std::io::Error::other)?;
        Ok(RawData {
            fetcher,
            rules,
            signer,
            hosted,
            mirror_locks: mirror::MirrorLocks::default(),
            checks_after_upload: Default::default(),
        })
    }

    /// The one way to the fetcher. Anonymous projects get a refusal that says why, so no feature
    /// can touch their raw data by accident.
    async fn fetcher_for<'a>(
        &'a self,
        services: &Services,
        project: &ProjectInfo,
        feature: &str,
    ) -> ServiceResult<(&'a Fetcher, ProjectAccess)> {
        if project.access_mode == AccessMode::Anonymous {
            return Err(anonymous_refusal(&project.name, feature));
        }
        let id = project.id;
        let settings = on_store(services, move |store| Ok(store.fetch_settings(id)?)).await?;
        Ok((&self.fetcher, project_access(&settings)?))
    }

    /// Reads frame images for server-side work: hosted keys from the store, mirrored URLs through the
    /// mirror (fetched once, then read from the store), anything else through the fetcher.
    pub(crate) async fn image_source(
        self: &Arc<Self>,
        services: &Services,
        project: &ProjectInfo,
        feature: &str,
    ) -> ServiceResult<ImageSource> {
        let (_, access) = self.fetcher_for(services, project, feature).await?;
        let (raw, project_id, mode) = (self.clone(), project.id, project.access_mode);
        Ok(Arc::new(move |url: String| {
            let (raw, access) = (raw.clone(), access.clone());
            Box::pin(async move {
                let key = match (mode, DataUrl::hosted_key(&url)) {
                    (AccessMode::Hosted | AccessMode::Mirrored, Some(key)) => {
                        signer::check_key("url", key).map_err(|e| e.message)?;
                        key.to_string()
                    }
                    (AccessMode::Mirrored, None) => {
                        raw.mirror_one(&raw.fetcher, &access, project_id, &url).await?;
                        mirror::mirror_key(&url)
                    }
                    (_, Some(_)) => return Err(format!("{url}: hosted: keys need a hosted project")),
                    (_, None) => {
                        let fetched = raw.fetcher.fetch(&url, &access).await.map_err(|e| e.to_string())?;
                        return Ok(fetched.bytes.to_vec());
                    }
                };
                raw.hosted
                    .read(project_id, FsPath::new(&key))
                    .await
                    .map_err(|e| format!("{}: {e}", milkglass_fetch::redact(&url)))
            })
        }))
    }

    /// A deleted project's hosted and mirrored files go with it (its signed URLs are already dead:
    /// they are bound to its uid).
    pub(crate) async fn remove_project_files(&self, project: &ProjectInfo) {
        self.hosted.remove_project(project.id).await;
    }
}

fn anonymous_refusal(project: &str, feature: &str) -> ServiceError {
    ServiceError::new(
        ErrorKind::Conflict,
        "anonymous_project",
        format!(
            "{feature} needs the raw data, and project {project:?} is anonymous: milkglass never fetches its files \
             (only your browser loads them). Upload what the feature needs (for example embeddings) instead."
        ),
    )
}

fn project_access(settings: &FetchSettings) -> ServiceResult<ProjectAccess> {
    let mut access = ProjectAccess::with_headers(&settings.headers).map_err(|e| ServiceError::invalid("headers", e))?;
    if let Some(endpoint) = &settings.signing_endpoint {
        let url: url::Url =
            endpoint.parse().map_err(|e| ServiceError::invalid("signing_endpoint", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ServiceError::invalid("signing_endpoint", "must be an http(s) URL"));
        }
        access.signing_endpoint = Some(url);
    }
    access.s3 = settings.s3.as_ref().map(|s3| s3_access(s3, settings.external_id.as_deref())).transpose()?;
    Ok(access)
}

/// Checks stored or given S3 settings and makes the fetcher's form of them; each error names the
/// field under `s3`.
fn s3_access(s3: &S3Settings, external_id: Option<&str>) -> ServiceResult<S3Access> {
    let endpoint = |field: &str, value: &Option<String>| -> ServiceResult<Option<url::Url>> {
        let Some(value) = value else { return Ok(None) };
        match url::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() && url.query().is_none() => {
                Ok(Some(url))
            }
            _ => Err(ServiceError::invalid(
                field,
                "must be an http(s) URL with a host and no query, such as https://s3.example.com",
            )),
        }
    };
    let region_ok = !s3.region.is_empty()
        && s3.region.len() <= 32
        && s3.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(ServiceError::invalid("s3.region", "must be a region name such as us-east-1"));
    }
    let credentials = match (&s3.access_key_id, &s3.secret_access_key, &s3.role_arn) {
        (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
            return Err(ServiceError::invalid("s3.role_arn", "give access keys or a role to assume, not both"));
        }
        (Some(id), Some(secret), None) if !id.is_empty() && !secret.is_empty() => S3Credentials::Keys(AwsKeys {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: s3.session_token.clone().filter(|t| !t.is_empty()),
        }),
        (Some(_), _, None) => {
            return Err(ServiceError::invalid("s3.secret_access_key", "required (and not empty) with access_key_id"));
        }
        (None, Some(_), None) => {
            return Err(ServiceError::invalid("s3.access_key_id", "required (and not empty) with secret_access_key"));
        }
        (None, None, Some(role)) => {
            if !role.starts_with("arn:") || !role.contains(":role/") {
                return Err(ServiceError::invalid(
                    "s3.role_arn",
                    "must be a role ARN such as arn:aws:iam::123456789012:role/milkglass-reader",
                ));
            }
            let external_id = external_id
                .ok_or_else(|| ServiceError::invalid("s3.role_arn", "the project has no external id yet"))?;
            S3Credentials::AssumeRole { role_arn: role.clone(), external_id: external_id.to_string() }
        }
        (None, None, None) => {
            return Err(ServiceError::invalid("s3", "give access_key_id and secret_access_key, or role_arn"));
        }
    };
    Ok(S3Access {
        region: s3.region.clone(),
        endpoint: endpoint("s3.endpoint", &s3.endpoint)?,
        sts_endpoint: endpoint("s3.sts_endpoint", &s3.sts_endpoint)?,
        credentials,
    })
}

// ---------------------------------------------------------------------------------------------
// Fetch settings

/// How milkglass reaches a project's raw data, as its owner sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSettingsBody {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub signing_endpoint: Option<String>,
    #[serde(default)]
    pub s3: Option<S3Settings>,
}

/// The settings as the routes answer them: header values and S3 secrets are write-only.
#[derive(Debug, Clone, Serialize)]
pub struct FetchSettingsView {
    pub headers: BTreeMap<String, &'static str>,
    pub signing_endpoint: Option<String>,
    pub s3: Option<S3View>,
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct S3View {
    pub region: String,
    pub endpoint: Option<String>,
    pub sts_endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<&'static str>,
    pub session_token: Option<&'static str>,
    pub role_arn: Option<String>,
}

fn settings_view(settings: FetchSettings) -> FetchSettingsView {
    let set = |secret: &Option<String>| secret.as_ref().map(|_| "(set)");
    FetchSettingsView {
        headers: settings.headers.into_iter().map(|(name, _)| (name, "(set)")).collect(),
        signing_endpoint: settings.signing_endpoint,
        s3: settings.s3.map(|s3| S3View {
            secret_access_key: set(&s3.secret_access_key),
            session_token: set(&s3.session_token),
            region: s3.region,
            endpoint: s3.endpoint,
            sts_endpoint: s3.sts_endpoint,
            access_key_id: s3.access_key_id,
            role_arn: s3.role_arn,
        }),
        external_id: settings.external_id,
    }
}

/// A project's fetch settings; owners only. Blocking.
pub fn fetch_settings(services: &Services, user: &User, project: &str) -> ServiceResult<FetchSettingsView> {
    let project = access::project(&services.store, user, project, ProjectRole::Owner)?;
    Ok(settings_view(services.store.fetch_settings(project.id)?))
}

/// Replaces a project's fetch settings; owners only, never for anonymous projects. Every
/// address in them (the signing endpoint, S3 endpoints) must pass the fetcher's own rules,
/// so a setting the fetcher would refuse later is refused now. Blocking.
pub fn set_fetch_settings(
    services: &Services,
    user: &User,
    project: &str,
    body: FetchSettingsBody,
) -> ServiceResult<FetchSettingsView> {
    let project = access::project(&services.store, user, project, ProjectRole::Owner)?;
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
    let access = project_access(&settings)?;
    let rules = &services.raw.rules;
    let mut endpoints = Vec::new();
    if let Some(endpoint) = &access.signing_endpoint {
        endpoints.push(("signing_endpoint", endpoint));
    }
    if let Some(s3) = &access.s3 {
        endpoints.extend(s3.endpoint.iter().map(|e| ("s3.endpoint", e)));
        endpoints.extend(s3.sts_endpoint.iter().map(|e| ("s3.sts_endpoint", e)));
    }
    for (field, url) in endpoints {
        rules
            .check_url_offline(url)
            .map_err(|refusal| ServiceError::invalid(field, format!("milkglass may not reach it: {refusal}")))?;
    }
    Ok(settings_view(services.store.set_fetch_settings(project.id, &settings)?))
}
