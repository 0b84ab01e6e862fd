//! Answers that depend only on a dataset version, saved beside the version's similarity index
//! (`DATA_DIR/indexes/<dataset id>/`), so that a restarted server serves them without computing
//! them again: the map, label-error rankings, metrics at the default thresholds.
//!
//! One file per answer and version, `<stem>-v<version>.<ext>`; writing a version's file
//! removes the older versions' files of the same stem, as the index files do. Each file holds
//! the key of what it answers (ids with their creation times), so an inference set or dataset
//! that SQLite gives a deleted one's id never reads the deleted one's answers. Files are
//! written to a temporary name and renamed: a crash leaves the old file or the new one. A file
//! that does not read back is ignored and computed again; saving is best effort, since what is
//! saved can always be recomputed.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Where one answer of one version lives.
pub(crate) struct SavedAnswer {
    dir: PathBuf,
    stem: String,
    version: i64,
    /// What the answer is of, checked on reading.
    key: String,
}

impl SavedAnswer {
    /// `stem` names the answer (`map-frames-pca`, `label-errors-3`); `key` says exactly
    /// what it answers, beyond what the stem and directory say.
    pub(crate) fn new(dir: PathBuf, stem: &str, version: i64, key: String) -> SavedAnswer {
        SavedAnswer { dir, stem: stem.to_string(), version, key }
    }

    fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}-v{}.{ext}", self.stem, self.version))
    }

    /// The saved value, when this version's file exists, reads back and is of this key.
    pub(crate) fn read_json<T: DeserializeOwned>(&self) -> Option<T> {
        let file = std::fs::File::open(self.path("json")).ok()?;
        let saved: Saved<T> = serde_json::from_reader(BufReader::with_capacity(1 << 20, file)).ok()?;
        (saved.key == self.key).then_some(saved.value)
    }

    pub(crate) fn write_json<T: Serialize>(&self, value: &T) {
        self.write("json", |out| {
            serde_json::to_writer(&mut *out, &SavedRef { key: &self.key, value }).map_err(std::io::Error::other)
        });
    }

    /// Raw bytes: the key on the first line, then the bytes.
    pub(crate) fn read_bytes(&self) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(self.path("bin")).ok()?.read_to_end(&mut bytes).ok()?;
        let end = bytes.iter().position(|&b| b == b'\n')?;
        (bytes[..end] == *self.key.as_bytes()).then(|| bytes.split_off(end + 1))
    }

    pub(crate) fn write_bytes(&self, value: &[u8]) {
        self.write("bin", |out| {
            out.write_all(self.key.as_bytes())?;
            out.write_all(b"\n")?;
            out.write_all(value)
        });
    }

    fn write(&self, ext: &str, fill: impl FnOnce(&mut BufWriter<std::fs::File>) -> std::io::Result<()>) {
        let path = self.path(ext);
        let temp = self.dir.join(format!(".{}-v{}.{ext}.tmp-{}", self.stem, self.version, std::process::id()));
        let written = (|| {
            std::fs::create_dir_all(&self.dir)?;
            let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&temp)?);
            fill(&mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&temp, &path)
        })();
        match written {
            Ok(()) => remove_older(&self.dir, &self.stem, ext, &path),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                tracing::debug!("saving {}: {e}", path.display());
            }
        }
    }
}

/// Removes `<stem>-v<N>.<ext>` files other than `keep`.
fn remove_older(dir: &Path, stem: &str, ext: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!("{stem}-v");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let version = name.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(&format!(".{ext}")));
        if version.is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit())) && entry.path() != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[derive(serde::Deserialize)]
struct Saved<T> {
    key: String,
    value: T,
}

#[derive(Serialize)]
struct SavedRef<'a, T> {
    key: &'a str,
    value: &'a T,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_back_by_version_and_key_and_a_new_version_replaces_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let at =
            |version: i64, key: &str| SavedAnswer::new(dir.path().to_path_buf(), "label-errors-1", version, key.into());
        at(3, "set 1 of 2024").write_json(&vec![1, 2, 3]);
        assert_eq!(at(3, "set 1 of 2024").read_json::<Vec<i32>>(), Some(vec![1, 2, 3]));
        assert_eq!(at(3, "set 1 of 2025").read_json::<Vec<i32>>(), None, "another set that reuses the id");
        assert_eq!(at(4, "set 1 of 2024").read_json::<Vec<i32>>(), None);
        at(4, "set 1 of 2024").write_json(&vec![4]);
        assert_eq!(at(3, "set 1 of 2024").read_json::<Vec<i32>>(), None, "the older version's file is gone");
        assert_eq!(at(4, "set 1 of 2024").read_json::<Vec<i32>>(), Some(vec![4]));

        let map = SavedAnswer::new(dir.path().to_path_buf(), "map-frames-pca", 4, "d".into());
        map.write_bytes(&[0, 10, 255]);
        assert_eq!(map.read_bytes(), Some(vec![0, 10, 255]));
        // Another stem that starts the same is left alone.
        assert_eq!(at(4, "set 1 of 2024").read_json::<Vec<i32>>(), Some(vec![4]));
        std::fs::write(dir.path().join("map-frames-pca-v4.bin"), b"garbage").unwrap();
        assert_eq!(map.read_bytes(), None, "a damaged file is not an answer");
    }
}
