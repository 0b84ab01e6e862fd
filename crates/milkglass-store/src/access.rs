//! What the raw-data boundary keeps in the catalog: each project's fetch settings (the headers
//! and signing endpoint milkglass presents to the user's servers) and each dataset's last URL
//! check. The fetching itself lives in `milkglass-fetch`; this is only storage.

use crate::{Store, StoreResult, now};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// How milkglass presents itself when it fetches a project's assets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchSettings {
    /// Header name and value pairs, in order (a name may repeat).
    pub headers: Vec<(String, String)>,
    pub signing_endpoint: Option<String>,
}

impl Store {
    pub fn fetch_settings(&self, project_id: i64) -> StoreResult<FetchSettings> {
        self.db().read(|conn| {
            let row = conn
                .query_row(
                    "SELECT headers, signing_endpoint FROM project_fetch_settings WHERE project_id = ?1",
                    [project_id],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
                )
                .optional()?;
            Ok(match row {
                Some((headers, signing_endpoint)) => {
                    FetchSettings { headers: serde_json::from_str(&headers)?, signing_endpoint }
                }
                None => FetchSettings::default(),
            })
        })
    }

    pub fn set_fetch_settings(&self, project_id: i64, settings: &FetchSettings) -> StoreResult<()> {
        let headers = serde_json::to_string(&settings.headers)?;
        self.db().write(|tx| {
            tx.execute(
                "INSERT INTO project_fetch_settings (project_id, headers, signing_endpoint, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (project_id) DO UPDATE SET headers = ?2, signing_endpoint = ?3, updated_at = ?4",
                params![project_id, headers, settings.signing_endpoint, now()],
            )?;
            Ok(())
        })
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
            tx.execute(
                "INSERT INTO url_reports (dataset_id, report, checked_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (dataset_id) DO UPDATE SET report = ?2, checked_at = ?3",
                params![dataset_id, report.to_string(), at],
            )?;
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
        };
        store.set_fetch_settings(project.id, &settings).unwrap();
        store.set_fetch_settings(project.id, &settings).unwrap();
        assert_eq!(store.fetch_settings(project.id).unwrap(), settings);
    }
}
