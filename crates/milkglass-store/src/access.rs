//! What the raw-data boundary keeps in the catalog: each project's fetch settings (the headers
//! and signing endpoint milkglass presents to the user's servers) and each dataset's last URL
//! check. The fetching itself lives in `milkglass-fetch`; this is only storage.

#[cfg(test)]
use crate::StoreError;
use crate::{Store, StoreResult, now};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// How milkglass presents itself when it fetches a project's assets. Its `Debug` shows no
/// header value and no S3 secret, so that a log line never holds one.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchSettings {
    /// Header name and value pairs, in order (a name may repeat).
    pub headers: Vec<(String, String)>,
    pub signing_endpoint: Option<String>,
    /// How `s3://` URLs are read, if at all.
    pub s3: Option<S3Settings>,
    /// What milkglass says as `ExternalId` when it assumes the project's role. Made by milkglass
    /// (never chosen by the owner) and kept for the life of the project, so the owner's trust
    /// policy can name it before the role is set.
    pub external_id: Option<String>,
}

/// A project's S3 access, as stored and as the API takes it. Validated by the server before it
/// is written. Its `Debug` shows no secret.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for FetchSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(name, _)| (name.as_str(), REDACTED)).collect();
        f.debug_struct("FetchSettings")
            .field("headers", &headers)
            .field("signing_endpoint", &self.signing_endpoint)
            .field("s3", &self.s3)
            .field("external_id", &self.external_id)
            .finish()
    }
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |value: &Option<String>| value.as_ref().map(|_| REDACTED);
        f.debug_struct("S3Settings")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("sts_endpoint", &self.sts_endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &secret(&self.secret_access_key))
            .field("session_token", &secret(&self.session_token))
            .field("role_arn", &self.role_arn)
            .finish()
    }
}

impl S3Settings {
    /// Empty strings as absent, and AWS's default region when none is given.
    pub fn normalized(self) -> S3Settings {
        let given = |value: Option<String>| value.filter(|v| !v.is_empty());
        S3Settings {
            region: if self.region.is_empty() { "us-east-1".into() } else { self.region },
            endpoint: given(self.endpoint),
            sts_endpoint: given(self.sts_endpoint),
            access_key_id: given(self.access_key_id),
            secret_access_key: given(self.secret_access_key),
            session_token: given(self.session_token),
            role_arn: given(self.role_arn),
        }
    }
}

impl Store {
    pub fn fetch_settings(&self, project_id: i64) -> StoreResult<FetchSettings> {
        let row = self.db().read(|conn| {
            let row = conn
                .query_row(
                    "SELECT headers, signing_endpoint, s3, external_id FROM project_fetch_settings
                     WHERE project_id = ?1",
                    [project_id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ))
                    },
                )
                .optional()?;
            Ok(row)
        })?;
        let secrets = self.secrets();
        Ok(match row {
            Some((headers, signing_endpoint, s3, external_id)) => FetchSettings {
                headers: serde_json::from_str(&secrets.open_value("headers", project_id, &headers)?)?,
                signing_endpoint,
                s3: s3
                    .map(|s3| secrets.open_value("s3", project_id, &s3))
                    .transpose()?
                    .map(|s3| serde_json::from_str(&s3))
                    .transpose()?,
                external_id,
            },
            None => FetchSettings::default(),
        })
    }

    /// Replaces a project's settings. An external id, once made, is kept whatever `settings` says,
    /// so a trust policy written for it keeps working.
    pub fn set_fetch_settings(&self, project_id: i64, settings: &FetchSettings) -> StoreResult<FetchSettings> {
        let headers = serde_json::to_string(&settings.headers)?;
        let s3 = settings.s3.as_ref().map(serde_json::to_string).transpose()?;
        let secrets = self.secrets();
        self.db().write(|tx| {
            // Sealed inside the transaction: see `Secrets::seal`.
            let headers = secrets.seal("headers", project_id, &headers)?;
            let s3 = s3.map(|s3| secrets.seal("s3", project_id, &s3)).transpose()?;
            tx.execute(
                "INSERT INTO project_fetch_settings (project_id, headers, signing_endpoint, s3, external_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (project_id) DO UPDATE SET headers = ?2, signing_endpoint = ?3, s3 = ?4,
                     external_id = COALESCE(external_id, ?5), updated_at = ?6",
                params![project_id, headers, settings.signing_endpoint, s3, settings.external_id, now()],
            )?;
            Ok(())
        })?;
        self.fetch_settings(project_id)
    }

    /// The last URL report of a dataset (its JSON as written) and when it was made.
    pub fn url_report(&self, dataset_id: i64) -> StoreResult<Option<(serde_json::Value, String)>> {
        self.db().read(|conn| {
            let row = conn
                .query_row("SELECT report, checked_at FROM url_reports WHERE dataset_id = ?1", [dataset_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?;
            row.map(|(report, at)| Ok((serde_json::from_str(&report)?, at))).transpose()
        })
    }

    pub fn set_url_report(&self, dataset_id: i64, report: &serde_json::Value) -> StoreResult<String> {
        let at = now();
        self.db().write(|tx| {
            // A check that ran while its dataset was deleted finds it gone, not a broken key.
            let written = tx.execute(
                "INSERT INTO url_reports (dataset_id, report, checked_at)
                 SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM datasets WHERE id = ?1)
                 ON CONFLICT (dataset_id) DO UPDATE SET report = ?2, checked_at = ?3",
                params![dataset_id, report.to_string(), at],
            )?;
            if written == 0 {
                return Err(crate::StoreError::NotFound { what: "dataset".into() });
            }
            Ok(())
        })?;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use milkglass_core::{ProjectSpec, Role};

    #[test]
    fn settings_and_reports_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("admin", Role::Admin).unwrap();
        let spec: ProjectSpec = serde_json::from_value(serde_json::json!({ "name": "p" })).unwrap();
        let user = store.user_by_name("admin").unwrap();
        let project = store.create_project(&spec, &user).unwrap();
        assert_eq!(store.fetch_settings(project.id).unwrap(), FetchSettings::default());
        let settings = FetchSettings {
            headers: vec![("Authorization".into(), "Bearer x".into())],
            signing_endpoint: Some("https://sign.example/".into()),
            s3: Some(S3Settings {
                region: "eu-west-1".into(),
                role_arn: Some("arn:aws:iam::1:role/r".into()),
                ..S3Settings::default()
            }),
            external_id: Some("first".into()),
        };
        store.set_fetch_settings(project.id, &settings).unwrap();
        store.set_fetch_settings(project.id, &settings).unwrap();
        assert_eq!(store.fetch_settings(project.id).unwrap(), settings);
        // The external id outlives any later setting, and a cleared S3 access is cleared.
        let later = FetchSettings { external_id: Some("second".into()), ..FetchSettings::default() };
        let stored = store.set_fetch_settings(project.id, &later).unwrap();
        assert_eq!(stored.external_id.as_deref(), Some("first"));
        assert_eq!(stored.s3, None);
    }

    #[test]
    fn secrets_are_sealed_in_the_catalog_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("admin", Role::Admin).unwrap();
        let user = store.user_by_name("admin").unwrap();
        let mut ids = Vec::new();
        for name in ["p", "q"] {
            let spec: ProjectSpec = serde_json::from_value(serde_json::json!({ "name": name })).unwrap();
            ids.push(store.create_project(&spec, &user).unwrap().id);
        }
        let settings = FetchSettings {
            headers: vec![("X-Api-Key".into(), "header-secret-value".into())],
            s3: Some(S3Settings {
                access_key_id: Some("AKIAEXAMPLE".into()),
                secret_access_key: Some("s3-secret-value".into()),
                ..S3Settings::default()
            }),
            ..FetchSettings::default()
        };
        for id in &ids {
            store.set_fetch_settings(*id, &settings).unwrap();
        }
        let in_files = |needle: &str| {
            std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).any(|e| {
                let raw = std::fs::read(e.path()).unwrap_or_default();
                raw.windows(needle.len()).any(|w| w == needle.as_bytes())
            })
        };
        assert!(!in_files("header-secret-value") && !in_files("s3-secret-value"));
        assert!(!format!("{settings:?}").contains("secret-value"), "Debug shows no secret");

        let rotation = store.rotate_secrets_key().unwrap();
        assert_eq!(rotation.values, 4, "two columns of two projects");
        // This store and a fresh one (another process) both read them under the new key.
        assert_eq!(store.fetch_settings(ids[0]).unwrap().headers, settings.headers);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.fetch_settings(ids[1]).unwrap().s3, settings.s3);

        // A sealed value moved into another project's row does not open there.
        let db = rusqlite::Connection::open(dir.path().join("catalog.db")).unwrap();
        db.execute(
            "UPDATE project_fetch_settings SET headers = (SELECT headers FROM project_fetch_settings WHERE project_id = ?1)
             WHERE project_id = ?2",
            [ids[0], ids[1]],
        )
        .unwrap();
        assert!(matches!(reopened.fetch_settings(ids[1]), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn values_written_in_clear_by_an_older_version_are_sealed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("admin", Role::Admin).unwrap();
        let spec: ProjectSpec = serde_json::from_value(serde_json::json!({ "name": "p" })).unwrap();
        let project = store.create_project(&spec, &store.user_by_name("admin").unwrap()).unwrap();
        drop(store);
        let db = rusqlite::Connection::open(dir.path().join("catalog.db")).unwrap();
        db.execute(
            "INSERT INTO project_fetch_settings (project_id, headers, updated_at) VALUES (?1, ?2, 'then')",
            rusqlite::params![project.id, r#"[["X-Token","old-clear-value"]]"#],
        )
        .unwrap();
        drop(db);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.fetch_settings(project.id).unwrap().headers[0].1, "old-clear-value");
        let raw = std::fs::read(dir.path().join("catalog.db")).unwrap();
        assert!(!raw.windows(15).any(|w| w == b"old-clear-value"), "sealed, and the old page is gone");
    }
}
