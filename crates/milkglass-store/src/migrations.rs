//! Schema migrations, versioned in the code. `PRAGMA user_version` records how many
//! have run; each runs once, in its own transaction, in order. Never edit a
//! migration that has shipped: add a new one.

use crate::StoreResult;
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: catalog, users and dataset rows.
    r#"
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('admin', 'owner', 'scientist', 'viewer')),
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        token_hash BLOB NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        access_mode TEXT NOT NULL,
        classes TEXT NOT NULL,
        metadata TEXT NOT NULL,
        created_by INTEGER REFERENCES users(id),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE project_members (
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id),
        role TEXT NOT NULL CHECK (role IN ('owner', 'viewer')),
        PRIMARY KEY (project_id, user_id)
    );
    CREATE TABLE datasets (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        metadata TEXT NOT NULL,
        frame_embedding_dim INTEGER,
        label_embedding_dim INTEGER,
        version INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (project_id, name)
    );
    CREATE TABLE inference_sets (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        metadata TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (dataset_id, name)
    );
    CREATE TABLE uploads (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        inference_set_id INTEGER,
        kind TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),
        records INTEGER NOT NULL DEFAULT 0,
        batches INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER REFERENCES datasets(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'interrupted')),
        progress INTEGER NOT NULL DEFAULT 0,
        total INTEGER,
        message TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    -- Frame revisions: a row is visible at version v when valid_from <= v < valid_to.
    CREATE TABLE frames (
        row_id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL,
        frame_id TEXT NOT NULL,
        valid_from INTEGER NOT NULL,
        valid_to INTEGER,
        timestamp TEXT,
        sensors TEXT NOT NULL,
        metadata TEXT NOT NULL,
        geo_lat REAL,
        geo_lon REAL,
        label_count INTEGER NOT NULL DEFAULT 0,
        embedding INTEGER
    );
    CREATE UNIQUE INDEX frames_current ON frames (dataset_id, frame_id) WHERE valid_to IS NULL;
    CREATE INDEX frames_history ON frames (dataset_id, frame_id, valid_from);
    -- Ground-truth labels (inference_set_id = 0) and inferences, versioned like frames.
    CREATE TABLE labels (
        row_id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL,
        inference_set_id INTEGER NOT NULL,
        frame_id TEXT NOT NULL,
        label_id TEXT NOT NULL,
        valid_from INTEGER NOT NULL,
        valid_to INTEGER,
        class_id INTEGER,
        kind TEXT NOT NULL,
        sensor_id TEXT,
        top REAL, "left" REAL, width REAL, height REAL,
        confidence REAL,
        iscrowd INTEGER NOT NULL DEFAULT 0,
        -- NULL for 2D boxes, which live in the typed columns above (most labels are boxes).
        geometry TEXT,
        attributes TEXT,
        embedding INTEGER
    );
    CREATE UNIQUE INDEX labels_current ON labels (dataset_id, inference_set_id, label_id) WHERE valid_to IS NULL;
    -- Serves one frame's labels, current (filtering on valid_to) or at any version.
    CREATE INDEX labels_by_frame ON labels (dataset_id, frame_id, inference_set_id, label_id);
    "#,
    // 2: guarded tables, the audit log and the review queue.
    r#"
    CREATE TABLE guarded_tables (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        owner_id INTEGER NOT NULL REFERENCES users(id),
        policy TEXT NOT NULL,
        readers TEXT,
        file TEXT NOT NULL,
        rows INTEGER NOT NULL,
        columns TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    -- Append-only; each entry's hash covers the previous entry's hash.
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        user_name TEXT NOT NULL,
        tables TEXT NOT NULL,
        query TEXT NOT NULL,
        decision TEXT NOT NULL,
        reason TEXT,
        rows_returned INTEGER,
        columns TEXT NOT NULL,
        smallest_group INTEGER,
        request_id INTEGER,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE review_requests (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        query TEXT NOT NULL,
        tables TEXT NOT NULL,
        reason TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'delivered')),
        decided_by TEXT,
        decision_reason TEXT,
        created_at TEXT NOT NULL,
        decided_at TEXT
    );
    "#,
    // 3: how milkglass reaches each project's raw data (headers may hold credentials to the
    // user's servers), and each dataset's last URL check.
    r#"
    CREATE TABLE project_fetch_settings (
        project_id INTEGER PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
        headers TEXT NOT NULL,
        signing_endpoint TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE url_reports (
        dataset_id INTEGER PRIMARY KEY REFERENCES datasets(id) ON DELETE CASCADE,
        report TEXT NOT NULL,
        checked_at TEXT NOT NULL
    );
    "#,
    // 4: segments (saved sets of frames or labels) and label-error issues marked "not an
    // issue". Both name items by frame or label id, which outlive dataset versions.
    r#"
    CREATE TABLE segments (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL CHECK (state IN ('open', 'in_review', 'resolved')),
        item_kind TEXT NOT NULL CHECK (item_kind IN ('frames', 'labels')),
        items TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (dataset_id, name)
    );
    CREATE TABLE dismissed_issues (
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        issue_key TEXT NOT NULL,
        dismissed_at TEXT NOT NULL,
        PRIMARY KEY (dataset_id, issue_key)
    );
    "#,
    // 5: how milkglass reads a project's s3:// URLs (keys, or a role to assume; JSON), and the
    // external id milkglass presents when it assumes that role, made once per project.
    r#"
    ALTER TABLE project_fetch_settings ADD COLUMN s3 TEXT;
    ALTER TABLE project_fetch_settings ADD COLUMN external_id TEXT;
    "#,
    // 6: which rows of a guarded table each released answer covered (a roaring bitmap of
    // row ids), per pool of analysts, for differencing across queries; and the pool each
    // analyst shares that memory with (NULL: a pool of one, keyed by the user's id).
    r#"
    ALTER TABLE users ADD COLUMN pool TEXT;
    CREATE TABLE answered_coverage (
        id INTEGER PRIMARY KEY,
        pool TEXT NOT NULL,
        table_id INTEGER NOT NULL REFERENCES guarded_tables(id) ON DELETE CASCADE,
        audit_id INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        coverage BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX answered_coverage_by_pool ON answered_coverage (pool, table_id);
    "#,
    // 7: identities that are never reused. SQLite may give a new row a deleted row's id, and a
    // name passes to whoever creates the next thing of that name; what belongs to a project or
    // a table (signed URLs, audit entries, review requests) is bound to its uid instead.
    r#"
    ALTER TABLE projects ADD COLUMN uid TEXT;
    UPDATE projects SET uid = lower(hex(randomblob(16)));
    ALTER TABLE guarded_tables ADD COLUMN uid TEXT;
    UPDATE guarded_tables SET uid = lower(hex(randomblob(16)));
    ALTER TABLE audit_log ADD COLUMN table_uids TEXT;
    ALTER TABLE audit_log ADD COLUMN table_owners TEXT;
    ALTER TABLE review_requests ADD COLUMN table_uids TEXT;
    "#,
    // 8: a dataset's counts at its latest counted version, so that its status does not count
    // millions of rows on every request (one row per dataset; a new version recounts once).
    r#"
    CREATE TABLE dataset_counts (
        dataset_id INTEGER PRIMARY KEY REFERENCES datasets(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        -- Batches committed when counted: an upload's batches share one version.
        batches INTEGER NOT NULL,
        frames INTEGER NOT NULL,
        labels INTEGER NOT NULL,
        inferences INTEGER NOT NULL,
        frame_embeddings INTEGER NOT NULL,
        label_embeddings INTEGER NOT NULL
    );
    "#,
    // 9: a classification inference's class probabilities, a JSON list in class-map order.
    r#"
    ALTER TABLE labels ADD COLUMN probabilities TEXT;
    "#,
    // 10: datasets as guarded tables. A dataset's identity (never reused, as for projects); its
    // publication to outside analysts under a policy, counted in frames or in the values of a
    // metadata key (`unit`); and what released answers covered of its tables, per version.
    r#"
    ALTER TABLE datasets ADD COLUMN uid TEXT;
    UPDATE datasets SET uid = lower(hex(randomblob(16)));
    CREATE TABLE dataset_publications (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL UNIQUE REFERENCES datasets(id) ON DELETE CASCADE,
        owner_id INTEGER NOT NULL REFERENCES users(id),
        policy TEXT NOT NULL,
        readers TEXT,
        unit TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE answered_dataset_coverage (
        id INTEGER PRIMARY KEY,
        pool TEXT NOT NULL,
        -- The dataset's uid, version, unit and table: row ids mean units of that snapshot.
        table_key TEXT NOT NULL,
        audit_id INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        coverage BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX answered_dataset_coverage_by_pool ON answered_dataset_coverage (pool, table_key);
    "#,
    // 11: the privacy ledger. Each principal's (analyst's or pool's) spent budget per table,
    // by the table's uid (a re-created table starts afresh), and every released DP answer,
    // replayed when the same question is asked again.
    r#"
    CREATE TABLE dp_budgets (
        table_uid TEXT NOT NULL,
        principal TEXT NOT NULL,
        epsilon_spent REAL NOT NULL,
        delta_spent REAL NOT NULL,
        queries INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (table_uid, principal)
    );
    CREATE TABLE dp_answers (
        table_uid TEXT NOT NULL,
        principal TEXT NOT NULL,
        question TEXT NOT NULL,
        answer BLOB NOT NULL,
        epsilon REAL NOT NULL,
        delta REAL NOT NULL,
        audit_id INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (table_uid, principal, question)
    );
    "#,
    // 12: what a held query's answer would reveal (its columns, and its row count and smallest
    // group when the guard ran it), as JSON, for the owner deciding on it.
    r#"
    ALTER TABLE review_requests ADD COLUMN reveals TEXT;
    "#,
    // 13: tokens may expire (personal tokens and sign-in sessions always do) and say what they
    // are for; users signed in through an identity provider are found by the provider's subject,
    // never by name.
    r#"
    ALTER TABLE tokens ADD COLUMN expires_at TEXT;
    ALTER TABLE tokens ADD COLUMN label TEXT;
    CREATE TABLE external_identities (
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        user_id INTEGER NOT NULL UNIQUE REFERENCES users(id),
        created_at TEXT NOT NULL,
        signed_in_at TEXT NOT NULL,
        PRIMARY KEY (issuer, subject)
    );
    "#,
];

/// Brings the schema to the newest version. Refuses a database written by a newer milkglass.
pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        return Err(crate::StoreError::Corrupt(format!(
            "the data directory has schema version {current}, newer than this milkglass ({}); upgrade milkglass",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    // A process killed mid-upload leaves its upload running; it will never finish.
    conn.execute("UPDATE uploads SET state = 'interrupted', finished_at = ?1 WHERE state = 'running'", [crate::now()])?;
    conn.execute(
        "UPDATE jobs SET state = 'interrupted', updated_at = ?1 WHERE state IN ('queued', 'running')",
        [crate::now()],
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) fn schema_version() -> usize {
    MIGRATIONS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_refuse_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version as usize, schema_version());
        conn.pragma_update(None, "user_version", version + 1).unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(err.to_string().contains("upgrade milkglass"), "{err}");
    }
}
