//! Append-only vector files: `embeddings/<dataset id>/<space>.f32`, little-endian f32,
//! one fixed-dimension vector after another. A vector is named by its ordinal.

use crate::{StoreError, StoreResult};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// Which kind of vector: one per frame, or one per label (crop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Space {
    #[default]
    Frames,
    Labels,
}

impl Space {
    fn file_name(self) -> &'static str {
        match self {
            Space::Frames => "frames.f32",
            Space::Labels => "labels.f32",
        }
    }
}

/// One vector file. Appends are serialized; reads go through a memory map that is
/// refreshed when the file has grown.
pub struct EmbeddingFile {
    path: PathBuf,
    dim: usize,
    append: Mutex<File>,
    map: RwLock<Option<Arc<Mmap>>>,
}

impl EmbeddingFile {
    /// Opens the file, trimming a partially written last vector (a crash mid-append).
    fn open(path: PathBuf, dim: usize) -> StoreResult<EmbeddingFile> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let whole = len - len % (dim as u64 * 4);
        if whole != len {
            file.set_len(whole).map_err(|e| StoreError::io(&path, e))?;
        }
        Ok(EmbeddingFile { path, dim, append: Mutex::new(file), map: RwLock::new(None) })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Appends vectors and syncs them to disk; returns the ordinal of the first.
    ///
    /// Must complete before the transaction that refers to the ordinals commits, so a
    /// committed row never points at a vector that is not on disk.
    pub(crate) fn append(&self, vectors: &[&[f32]]) -> StoreResult<u64> {
        let mut file = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let len = file.metadata().map_err(|e| StoreError::io(&self.path, e))?.len();
        let first = len / (self.dim as u64 * 4);
        let mut bytes = Vec::with_capacity(vectors.len() * self.dim * 4);
        for v in vectors {
            debug_assert_eq!(v.len(), self.dim);
            for x in *v {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        file.write_all(&bytes).map_err(|e| StoreError::io(&self.path, e))?;
        file.sync_data().map_err(|e| StoreError::io(&self.path, e))?;
        Ok(first)
    }

    /// Number of whole vectors in the file (including unreferenced ones).
    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len() / (self.dim as u64 * 4)).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads vector `ordinal`, or None past the end.
    pub fn get(&self, ordinal: u64) -> StoreResult<Option<Vec<f32>>> {
        let end = (ordinal + 1) * self.dim as u64 * 4;
        let map = self.mapping(end)?;
        if (map.len() as u64) < end {
            return Ok(None);
        }
        let start = (ordinal * self.dim as u64 * 4) as usize;
        let bytes = &map[start..end as usize];
        Ok(Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
    }

    /// A map covering at least `needed` bytes when the file has them.
    fn mapping(&self, needed: u64) -> StoreResult<Arc<Mmap>> {
        if let Some(map) = self.map.read().expect("map lock").as_ref()
            && map.len() as u64 >= needed
        {
            return Ok(map.clone());
        }
        let file = File::open(&self.path).map_err(|e| StoreError::io(&self.path, e))?;
        // SAFETY: the file is only ever appended to (and trimmed on open, before any map
        // exists), so the mapped prefix never changes under the map.
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| StoreError::io(&self.path, e))?);
        *self.map.write().expect("map lock") = Some(map.clone());
        Ok(map)
    }
}

/// The open vector files of every dataset.
pub(crate) struct EmbeddingFiles {
    root: PathBuf,
    open: Mutex<HashMap<(i64, Space), Arc<EmbeddingFile>>>,
}

impl EmbeddingFiles {
    pub(crate) fn new(root: PathBuf) -> Self {
        EmbeddingFiles { root, open: Mutex::new(HashMap::new()) }
    }

    fn path(&self, dataset_id: i64, space: Space) -> PathBuf {
        self.root.join(dataset_id.to_string()).join(space.file_name())
    }

    pub(crate) fn file(&self, dataset_id: i64, space: Space, dim: usize) -> StoreResult<Arc<EmbeddingFile>> {
        let mut open = self.open.lock().expect("embedding files lock");
        if let Some(file) = open.get(&(dataset_id, space)) {
            return Ok(file.clone());
        }
        let file = Arc::new(EmbeddingFile::open(self.path(dataset_id, space), dim)?);
        open.insert((dataset_id, space), file.clone());
        Ok(file)
    }

    pub(crate) fn remove_dataset(&self, dataset_id: i64) {
        let mut open = self.open.lock().expect("embedding files lock");
        open.retain(|(id, _), _| *id != dataset_id);
        let dir = self.root.join(dataset_id.to_string());
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_and_trim_partial_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.f32");
        let file = EmbeddingFile::open(path.clone(), 3).unwrap();
        assert_eq!(file.append(&[&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]]).unwrap(), 0);
        assert_eq!(file.get(1).unwrap().unwrap(), vec![4.0, 5.0, 6.0]);
        assert_eq!(file.get(2).unwrap(), None);
        drop(file);
        // Half a vector, as a crash mid-append would leave.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(&[0u8; 5]).unwrap();
        let file = EmbeddingFile::open(path, 3).unwrap();
        assert_eq!(file.len(), 2);
        assert_eq!(file.append(&[&[7.0, 8.0, 9.0]]).unwrap(), 2);
        assert_eq!(file.get(2).unwrap().unwrap(), vec![7.0, 8.0, 9.0]);
    }
}
