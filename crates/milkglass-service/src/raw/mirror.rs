//! Mirroring: each raw-data URL of a mirrored project fetched once into its hosted store, then
//! served from there, so the user's server sees one request per asset.

use super::{CONCURRENCY, RawData, anonymous_refusal};
use crate::{ErrorKind, ServiceError, ServiceResult, Services, access, on_store};
use futures::StreamExt;
use milkglass_core::{AccessMode, DataUrl, ProjectRole, SensorKind};
use milkglass_fetch::{Fetcher, ProjectAccess};
use milkglass_store::{FrameFilter, MAX_PAGE, ProjectInfo, Store, User};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;

/// Where a mirrored URL lives in the store: the hash of the URL (so the same URL is fetched once)
/// with the extension of its path (so the content type survives).
pub(crate) fn mirror_key(url: &str) -> String {
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

/// Every distinct raw-data URL of a dataset's current frames, with a frame that uses it.
pub(super) fn dataset_urls(store: &Store, project: &str, dataset: &str) -> ServiceResult<Vec<(String, String)>> {
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

/// A URL that could not be mirrored, and why.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorFailure {
    pub url: String,
    pub error: String,
}

/// What one mirror run did.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorReport {
    pub job: i64,
    pub assets: usize,
    pub fetched: usize,
    pub already_mirrored: usize,
    pub failed_count: usize,
    /// The first 100 failures.
    pub failed: Vec<MirrorFailure>,
}

/// Mirrors a dataset of a mirrored project; owners only.
pub async fn mirror(services: &Services, user: &User, project: &str, dataset: &str) -> ServiceResult<MirrorReport> {
    let (user, name) = (user.clone(), project.to_string());
    let project = on_store(services, move |store| access::project(store, &user, &name, ProjectRole::Owner)).await?;
    if project.access_mode != AccessMode::Mirrored {
        if project.access_mode == AccessMode::Anonymous {
            return Err(anonymous_refusal(&project.name, "mirroring"));
        }
        return Err(ServiceError::new(
            ErrorKind::Conflict,
            "not_mirrored",
            format!("project {:?} is {}; only mirrored projects are mirrored", project.name, project.access_mode),
        ));
    }
    run_mirror(services, &project, dataset).await
}

/// The job kind mirroring shows in the dataset status.
const MIRROR_JOB: &str = "mirror";
/// Progress is written after this many assets, so a status poll sees it move without a catalog
/// write per asset.
const PROGRESS_EVERY: usize = 25;

/// Fetches every URL of a mirrored project's dataset that is not in the store yet, as a job in the
/// dataset status (progress in assets, then a summary).
pub(crate) async fn run_mirror(
    services: &Services,
    project: &ProjectInfo,
    dataset: &str,
) -> ServiceResult<MirrorReport> {
    let (store, raw) = (&services.store, &services.raw);
    let (fetcher, access) = raw.fetcher_for(services, project, "mirroring").await?;
    let reader = store.clone();
    let (p, d) = (project.name.clone(), dataset.to_string());
    let (urls, job) = tokio::task::spawn_blocking(move || {
        let info = reader.dataset(&p, &d)?;
        let urls = dataset_urls(&reader, &p, &d)?;
        let job = reader.start_job(&info, MIRROR_JOB, Some(urls.len() as i64))?;
        Ok::<_, ServiceError>((urls, job))
    })
    .await
    .map_err(ServiceError::internal)??;
    let total = urls.len();
    let mut fetches = futures::stream::iter(urls.into_iter().map(|(url, _)| {
        let access = access.clone();
        async move {
            let outcome = raw.mirror_one(fetcher, &access, project.id, &url).await;
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
    let failed: Vec<MirrorFailure> = outcomes
        .iter()
        .filter_map(|(url, o)| {
            o.as_ref().err().map(|e| MirrorFailure { url: milkglass_fetch::redact(url), error: e.clone() })
        })
        .collect();
    let message = format!("{fetched} fetched, {already} already mirrored, {} failed", failed.len());
    // As with embedding: a run that mirrored nothing it was given failed; one with some failures is
    // done, and its message counts them.
    let state = if total > 0 && fetched + already == 0 { "failed" } else { "done" };
    let writer = store.clone();
    let _ =
        tokio::task::spawn_blocking(move || writer.update_job(job, total as i64, Some((state, Some(&message))))).await;
    Ok(MirrorReport {
        job,
        assets: total,
        fetched,
        already_mirrored: already,
        failed_count: failed.len(),
        failed: failed.into_iter().take(100).collect(),
    })
}

/// Serializes fetches of the same mirror target, so concurrent runs (a route, the check after an
/// upload, embedding generation) still send one request per asset. Entries go when their last
/// holder does.
#[derive(Default)]
pub(crate) struct MirrorLocks(std::sync::Mutex<BTreeMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>);

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

impl RawData {
    /// Fetches one URL into the store unless it is there already. `Ok(true)` when it was fetched now.
    pub(super) async fn mirror_one(
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
        let body = futures::stream::once(async move { Ok::<_, std::io::Error>(fetched.bytes) });
        self.hosted.write(project_id, FsPath::new(&key), Box::pin(body), u64::MAX).await.map_err(|e| e.message)?;
        Ok(true)
    }
}
