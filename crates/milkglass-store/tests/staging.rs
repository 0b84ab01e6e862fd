//! Staging files left by a process that stopped mid-upload are removed when the store opens
//! again; fresh ones, which a server on the same directory may be filling, are kept.

use milkglass_store::Store;
use std::time::{Duration, SystemTime};

#[test]
fn opening_the_store_removes_only_stale_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (stale, fresh) = (store.staging_file().unwrap(), store.staging_file().unwrap());
    std::fs::write(&stale, b"half an upload").unwrap();
    std::fs::write(&fresh, b"an upload in progress").unwrap();
    let three_days_ago = SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(three_days_ago).unwrap();
    drop(store);

    let _again = Store::open(dir.path()).unwrap();
    assert!(!stale.exists(), "a staging file older than any upload may live is removed");
    assert!(fresh.exists(), "a fresh one may be another process's upload");
}
