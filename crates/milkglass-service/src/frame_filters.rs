//! Frame filters served from an index of each dataset's current version instead of a scan.
//!
//! The index ([`milkglass_store::FrameIndex`]) is built in the background: after each upload,
//! or on the first listing of a version that has none, which the SQL path answers meanwhile.
//! One build per dataset runs at a time; a build whose version moved on while it read is
//! dropped (the next listing starts another). Indexes are kept while their frames fit a bound.

use milkglass_store::{DatasetInfo, FrameIndex, Store};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Frames the kept indexes may hold together (about 100 bytes each, more with metadata).
const MAX_INDEXED_FRAMES: usize = 20_000_000;

#[derive(Default)]
pub(crate) struct FrameIndexes {
    ready: Mutex<HashMap<i64, Arc<FrameIndex>>>,
    building: Mutex<HashSet<i64>>,
}

impl FrameIndexes {
    /// The index of the dataset's current version, if it is ready; otherwise starts its build
    /// (unless one runs) and returns `None`.
    pub(crate) fn current(self: &Arc<Self>, store: &Store, dataset: &DatasetInfo) -> Option<Arc<FrameIndex>> {
        let batches = store.committed_batches(dataset).ok()?;
        let found = self.ready.lock().unwrap_or_else(|e| e.into_inner()).get(&dataset.id).cloned();
        match found {
            Some(index) if fresh(&index, dataset, batches) => Some(index),
            _ => {
                self.start(store, dataset);
                None
            }
        }
    }

    /// Where the index of the dataset's current version stands.
    pub(crate) fn state(&self, store: &Store, dataset: &DatasetInfo) -> crate::datasets::Preparing {
        let batches = store.committed_batches(dataset).unwrap_or(-1);
        let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner()).get(&dataset.id).cloned();
        if ready.is_some_and(|index| fresh(&index, dataset, batches)) {
            crate::datasets::Preparing::Ready
        } else if self.building.lock().unwrap_or_else(|e| e.into_inner()).contains(&dataset.id) {
            crate::datasets::Preparing::Building
        } else {
            crate::datasets::Preparing::None
        }
    }

    /// Starts a build in the background, below requests' priority, unless one runs for the dataset.
    pub(crate) fn start(self: &Arc<Self>, store: &Store, dataset: &DatasetInfo) {
        if !self.claim(dataset) {
            return;
        }
        let (this, store, dataset) = (self.clone(), store.clone(), dataset.clone());
        std::thread::spawn(move || {
            crate::preparation::lower_priority();
            this.build_claimed(&store, &dataset);
        });
    }

    /// Builds on the calling thread (a preparation worker's) unless a build runs for the dataset.
    pub(crate) fn build_here(&self, store: &Store, dataset: &DatasetInfo) {
        if self.claim(dataset) {
            self.build_claimed(store, dataset);
        }
    }

    /// Marks the dataset's build as running; false when one runs already.
    fn claim(&self, dataset: &DatasetInfo) -> bool {
        self.building.lock().unwrap_or_else(|e| e.into_inner()).insert(dataset.id)
    }

    fn build_claimed(&self, store: &Store, dataset: &DatasetInfo) {
        if let Err(e) = self.build(store, dataset) {
            tracing::debug!("frame index of {}/{}: {e}", dataset.project, dataset.name);
        }
        self.building.lock().unwrap_or_else(|e| e.into_inner()).remove(&dataset.id);
    }

    /// Builds the index now (blocking) and keeps it if its version is still current.
    pub(crate) fn build(&self, store: &Store, dataset: &DatasetInfo) -> crate::ServiceResult<()> {
        let index = store.build_frame_index(dataset)?;
        let now = store.dataset(&dataset.project, &dataset.name)?;
        if now.uid != index.dataset_uid || !fresh(&index, &now, store.committed_batches(&now)?) {
            return Ok(());
        }
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.remove(&dataset.id);
        let held: usize = ready.values().map(|i| i.frames()).sum();
        if held + index.frames() > MAX_INDEXED_FRAMES {
            ready.clear();
        }
        if index.frames() <= MAX_INDEXED_FRAMES {
            ready.insert(dataset.id, Arc::new(index));
        }
        Ok(())
    }
}

fn fresh(index: &FrameIndex, dataset: &DatasetInfo, batches: i64) -> bool {
    index.dataset_uid == dataset.uid && index.version == dataset.version && index.batches == batches
}
