//! URL checks: which of a dataset's raw-data URLs milkglass can load, and which only the
//! user's browser can (private addresses, bucket paths), judged by the fetcher's own rules.

use super::CONCURRENCY;
use super::mirror::{dataset_urls, mirror_key, run_mirror};
use super::signer::check_key;
use crate::{ServiceError, ServiceResult, Services, access, on_store};
use futures::StreamExt;
use milkglass_core::{AccessMode, BucketScheme, DataUrl, ProjectRole};
use milkglass_fetch::{Probe, ProjectAccess, Refusal, Rules};
use milkglass_store::{ProjectInfo, User};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;

/// URL checks probe at most this many URLs per dataset; the rest are counted, not probed.
const MAX_PROBES: usize = 500;
const EXAMPLES_PER_CATEGORY: usize = 10;

/// What a check learned about one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
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
    match rules.check_url_offline(&parsed) {
        Ok(()) => None,
        Err(Refusal::NoHost) => Some((Category::Invalid, "the URL has no host".into())),
        Err(Refusal::Scheme(scheme)) => Some((Category::Invalid, format!("scheme {scheme:?} is not a data URL"))),
        Err(refusal @ Refusal::PrivateName(_)) => Some((Category::BrowserOnly, refusal.to_string())),
        Err(refusal) => Some((Category::BrowserOnly, format!("milkglass may not load it: {refusal}"))),
    }
}

async fn run_url_check(services: &Services, project: &ProjectInfo, dataset: &str) -> ServiceResult<Value> {
    let (store, raw) = (&services.store, &services.raw);
    let reader = store.clone();
    let (p, d) = (project.name.clone(), dataset.to_string());
    let (info, urls) = tokio::task::spawn_blocking(move || {
        Ok::<_, ServiceError>((reader.dataset(&p, &d)?, dataset_urls(&reader, &p, &d)?))
    })
    .await
    .map_err(ServiceError::internal)??;
    let has_store = matches!(project.access_mode, AccessMode::Hosted | AccessMode::Mirrored);
    let mut results: Vec<(String, String, Category, String)> = Vec::with_capacity(urls.len());
    let mut to_probe = Vec::new();
    // Anonymous projects are judged by the default rules: milkglass would not load their URLs even
    // where the admin allows an address.
    let default_rules = Rules::default();
    let rules = if project.access_mode == AccessMode::Anonymous { &default_rules } else { &raw.rules };
    // Not for anonymous projects: fetcher_for refuses them, and none of their URLs is probed.
    let fetch = match project.access_mode {
        AccessMode::Anonymous => None,
        _ => Some(raw.fetcher_for(services, project, "URL checks").await?),
    };
    for (url, frame) in urls {
        if has_store && let Some(key) = DataUrl::hosted_key(&url) {
            let (category, reason) =
                if check_key("url", key).is_ok() && raw.hosted.exists(project.id, FsPath::new(key)).await {
                    (Category::Reachable, "in the hosted store")
                } else {
                    (Category::Invalid, "no such file in the hosted store; upload it with a PUT URL")
                };
            results.push((url, frame, category, reason.into()));
            continue;
        }
        let mirrored = project.access_mode == AccessMode::Mirrored
            && raw.hosted.exists(project.id, FsPath::new(&mirror_key(&url))).await;
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
        .map_err(ServiceError::internal)??;
    let mut report = report;
    report["checked_at"] = checked_at.into();
    Ok(report)
}

/// What milkglass can say of URLs that belong to no project yet, without loading any of them:
/// hosted keys and addresses its fetcher's rules allow are `Reachable`, the rest as the rules
/// judge them. For clients that ask before they upload (Aquarium's `verify_urls`).
pub fn offline_verdicts(services: &Services, urls: &[String]) -> Vec<Category> {
    urls.iter()
        .map(|url| match DataUrl::parse("url", url) {
            Ok(DataUrl::Hosted { key }) if check_key("url", key).is_ok() => Category::Reachable,
            _ => classify_offline(url, &services.raw.rules, None).map_or(Category::Reachable, |(category, _)| category),
        })
        .collect()
}

/// Checks a dataset's URLs now and stores the report; owners only.
pub async fn url_check(services: &Services, user: &User, project: &str, dataset: &str) -> ServiceResult<Value> {
    let (user, name) = (user.clone(), project.to_string());
    let project = on_store(services, move |store| access::project(store, &user, &name, ProjectRole::Owner)).await?;
    run_url_check(services, &project, dataset).await
}

/// The last URL report of a dataset; viewers may read it. Blocking.
pub fn url_report(services: &Services, user: &User, project: &str, dataset: &str) -> ServiceResult<Value> {
    let (_, info) = access::dataset(&services.store, user, project, dataset, ProjectRole::Viewer)?;
    match services.store.url_report(info.id)? {
        Some((mut report, checked_at)) => {
            report["checked_at"] = checked_at.into();
            Ok(report)
        }
        None => Err(ServiceError::not_found(format!(
            "dataset {dataset:?} has no URL report yet; POST .../url_check to make one"
        ))),
    }
}

/// After frames arrive, checks their URLs in the background so the user learns at upload time
/// (from `url_report`) which images will not load; a mirrored project mirrors first, so the check
/// finds the copies and the user's server still sees one request per asset. A dataset deleted
/// meanwhile ends the check quietly.
///
/// Coalesced per dataset: while a check runs, further uploads ask for one more check after it
/// (of the dataset as it is then), not one each, so a burst of uploads cannot pile up probes.
pub fn check_after_upload(services: &Arc<Services>, project: &str, dataset: &str) {
    let key = (project.to_string(), dataset.to_string());
    {
        let mut checks = services.raw.checks_after_upload.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(again) = checks.get_mut(&key) {
            *again = true;
            return;
        }
        checks.insert(key.clone(), false);
    }
    let services = services.clone();
    tokio::spawn(async move {
        loop {
            check_once(&services, &key.0, &key.1).await;
            let mut checks = services.raw.checks_after_upload.lock().unwrap_or_else(|e| e.into_inner());
            match checks.get_mut(&key) {
                Some(again) if *again => *again = false,
                _ => {
                    checks.remove(&key);
                    return;
                }
            }
        }
    });
}

async fn check_once(services: &Services, project: &str, dataset: &str) {
    let run = async {
        let name = project.to_string();
        let info = on_store(services, move |store| Ok(store.project(&name)?)).await?;
        if info.access_mode == AccessMode::Mirrored {
            run_mirror(services, &info, dataset).await?;
        }
        run_url_check(services, &info, dataset).await
    };
    match run.await {
        Ok(_) => {}
        Err(e) if e.kind == crate::ErrorKind::NotFound => {
            tracing::debug!("URL check after an upload to {project}/{dataset}: {}", e.message);
        }
        Err(e) => tracing::warn!("URL check after an upload to {project}/{dataset}: {}", e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::project_access;
    use milkglass_fetch::AllowList;
    use milkglass_store::{FetchSettings, S3Settings};

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
