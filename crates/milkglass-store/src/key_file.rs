//! Key files in the data directory (the asset signing key, the catalog's secrets key): 32 random
//! bytes, readable by the server's user only, made once and never rewritten in place.

use std::io::Write;
use std::path::Path;

/// Bytes in a key this module makes.
pub const KEY_LEN: usize = 32;

/// The key in `path`, made (mode 0600) when the file does not exist. Two processes that start
/// together both end up with the one that was written first.
pub fn load_or_create(path: &Path) -> std::io::Result<Vec<u8>> {
    if let Some(key) = load(path)? {
        return Ok(key);
    }
    let key: [u8; KEY_LEN] = rand::random();
    match write_new(path, &key) {
        Ok(()) => Ok(key.to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
        Err(e) => Err(e),
    }
}

/// The key in `path`, or `None` when there is no such file; a file too short to be a key is an
/// error (it was cut short or is not a key), never silently replaced.
pub fn load(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(key) if key.len() >= KEY_LEN => Ok(Some(key)),
        Ok(_) => Err(std::io::Error::other(format!("{} is too short to be a key", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `key` to a file that must not exist yet, mode 0600, synced to disk.
pub fn write_new(path: &Path, key: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(key)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let first = load_or_create(&path).unwrap();
        assert_eq!(first.len(), KEY_LEN);
        assert_eq!(load_or_create(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(load_or_create(&path).is_err(), "a cut-short key is an error, not replaced");
    }
}
