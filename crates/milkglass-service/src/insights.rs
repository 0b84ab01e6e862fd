//! The service behind the insight routes: loads a dataset's boxes and vectors from the store,
//! runs milkglass-insight over them, and keeps one approximate index per dataset version,
//! space and metric (built in the background, persisted under `DATA_DIR/indexes/`).
//! Everything here is blocking; adapters call it off their async workers. Each operation
//! checks the caller's project role first, and answers with a typed, serializable value.

use crate::{ServiceError, ServiceResult, Services, access};
use milkglass_core::ProjectRole;
use milkglass_insight::hnsw::{Hnsw, HnswParams};
use milkglass_insight::label_errors::IssueKind;
use milkglass_insight::label_errors::{DetectionParams, NeighborVote, detection_issues, frame_scores};
use milkglass_insight::metrics::{Bbox, Object, coco_evaluate, confusion_matrix};
use milkglass_insight::neighbors::{KnnGraph, label_agreement};
use milkglass_insight::{Metric, VectorSet, exact_knn, exact_knn_unprepared, map};
use milkglass_store::{
    BoxRecord, DatasetInfo, InferenceSetInfo, ProjectInfo, Segment, SegmentSpec, Space, Store, User,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One server's similarity indexes: by (dataset id, space, metric), the newest built one
/// and whether a build runs.
pub struct IndexCache {
    indexes: Mutex<HashMap<IndexKey, IndexSlot>>,
    /// Each space's vectors and ids at the newest version read, so that a query is a search,
    /// not a reload of every vector; bounded by `max_cached_values` floats in all.
    vectors: Mutex<HashMap<VectorsKey, Arc<SpaceVectors>>>,
    max_cached_values: usize,
    /// Each space's packed 2-D map per layout, at the version it was computed for.
    maps: Mutex<HashMap<(VectorsKey, Layout), KeptMap>>,
    /// Each space's 10-NN graph (cosine), at the version it was built for.
    graphs: Mutex<HashMap<VectorsKey, (i64, Arc<KnnGraph>)>>,
    /// The ranked label errors per inference set, at the version they were ranked for.
    issues: Mutex<HashMap<SetKey, (i64, Arc<RankedIssues>)>>,
    /// Metrics per inference set and thresholds (IoU and confidence bits), at their version.
    metrics: Mutex<HashMap<MetricsKey, (i64, Arc<ModelMetrics>)>>,
    /// Below this many vectors exact search is fast enough (a few ms) and always right. Tests
    /// lower it with `MILKGLASS_EXACT_SEARCH_LIMIT` to exercise the index on small data.
    exact_limit: usize,
}

impl IndexCache {
    pub(crate) fn new() -> Self {
        let exact_limit =
            std::env::var("MILKGLASS_EXACT_SEARCH_LIMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        // 512 Mi floats (2 GiB): a million 256-d vectors in both spaces.
        let max_cached_values =
            std::env::var("MILKGLASS_VECTOR_CACHE_VALUES").ok().and_then(|v| v.parse().ok()).unwrap_or(512 << 20);
        IndexCache {
            indexes: Mutex::default(),
            exact_limit,
            vectors: Mutex::default(),
            max_cached_values,
            maps: Mutex::default(),
            graphs: Mutex::default(),
            issues: Mutex::default(),
            metrics: Mutex::default(),
        }
    }

    /// Drops the cached indexes and vectors of a deleted dataset (its saved ones go with its files).
    pub(crate) fn forget(&self, dataset: &DatasetInfo) {
        self.slots().retain(|key, _| key.0 != dataset.id);
        self.vectors.lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| key.0 != dataset.id);
        self.maps.lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| key.0.0 != dataset.id);
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| key.0 != dataset.id);
        self.issues.lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| key.0 != dataset.id);
        self.metrics.lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| key.0.0 != dataset.id);
    }

    /// A version's metrics at one pair of thresholds, evaluated once by `evaluate`. Slider
    /// positions are few; past `MAX_KEPT_METRICS` answers the oldest versions' go first.
    /// The default thresholds' answer is also saved to disk, for a restarted server.
    fn metrics(
        &self,
        store: &Store,
        dataset: &DatasetInfo,
        set: &InferenceSetInfo,
        thresholds: (f64, f64),
        evaluate: impl FnOnce() -> ServiceResult<ModelMetrics>,
    ) -> ServiceResult<Arc<ModelMetrics>> {
        let set_key = (dataset.id, dataset.created_at.clone(), set.id, set.created_at.clone());
        let key = (set_key, thresholds.0.to_bits(), thresholds.1.to_bits());
        if let Some((version, kept)) = self.metrics.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *version == dataset.version
        {
            return Ok(kept.clone());
        }
        let saved = (thresholds == DEFAULT_THRESHOLDS)
            .then(|| saved_answer(store, dataset, format!("metrics-{}", set.id), &set.created_at));
        let evaluated = match saved.as_ref().and_then(|s| s.read_json()) {
            Some(read) => Arc::new(read),
            None => {
                let evaluated = as_job(store, dataset, &format!("metrics:{}", set.name), || {
                    evaluate().map(|m| (m, "evaluated".to_string()))
                })?;
                if let Some(saved) = &saved {
                    saved.write_json(&evaluated);
                }
                Arc::new(evaluated)
            }
        };
        let mut kept = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= MAX_KEPT_METRICS {
            kept.retain(|_, (version, _)| *version == dataset.version);
            if kept.len() >= MAX_KEPT_METRICS {
                kept.clear();
            }
        }
        kept.insert(key, (dataset.version, evaluated.clone()));
        Ok(evaluated)
    }

    /// The ranked label errors of the dataset's version against `set`, ranked once by `rank`.
    /// Saved to disk too, for a restarted server.
    fn ranked_issues(
        &self,
        store: &Store,
        dataset: &DatasetInfo,
        set: &InferenceSetInfo,
        rank: impl FnOnce() -> ServiceResult<RankedIssues>,
    ) -> ServiceResult<Arc<RankedIssues>> {
        let key = (dataset.id, dataset.created_at.clone(), set.id, set.created_at.clone());
        if let Some((version, ranked)) = self.issues.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *version == dataset.version
        {
            return Ok(ranked.clone());
        }
        let saved = saved_answer(store, dataset, format!("label-errors-{}", set.id), &set.created_at);
        let ranked = match saved.read_json() {
            Some(read) => Arc::new(read),
            None => {
                let ranked = as_job(store, dataset, &format!("label_errors:{}", set.name), || {
                    rank().map(|r| {
                        let message = format!("{} issues ranked", r.issues.len());
                        (r, message)
                    })
                })?;
                saved.write_json(&ranked);
                Arc::new(ranked)
            }
        };
        self.issues.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (dataset.version, ranked.clone()));
        Ok(ranked)
    }

    /// The space's 10-NN graph at the version `data` was read at, built once and kept.
    fn graph(&self, dataset: &DatasetInfo, space: Space, data: &SpaceVectors) -> Arc<KnnGraph> {
        let key = (dataset.id, dataset.created_at.clone(), space_name(space));
        if let Some((version, graph)) = self.graphs.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *version == data.version
        {
            return graph.clone();
        }
        let graph = Arc::new(KnnGraph::exact_or_indexed(&data.vectors, Metric::Cosine, 10));
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (data.version, graph.clone()));
        graph
    }

    /// A space's map at the dataset's version: computed once per version and layout (PCA of a
    /// million vectors takes seconds), then served from memory.
    fn map(
        &self,
        store: &Store,
        dataset: &DatasetInfo,
        space: Space,
        layout: Layout,
    ) -> ServiceResult<(usize, bytes::Bytes)> {
        let key = ((dataset.id, dataset.created_at.clone(), space_name(space)), layout);
        if let Some((version, points, bytes)) = self.maps.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *version == dataset.version
        {
            return Ok((*points, bytes.clone()));
        }
        let layout_name = match layout {
            Layout::Pca => "pca",
            Layout::Umap => "umap",
        };
        let saved = saved_answer(store, dataset, format!("map-{}-{layout_name}", space_name(space)), "");
        if let Some(read) = saved.read_bytes() {
            // Two f32 per point.
            let answer = (read.len() / 8, bytes::Bytes::from(read));
            self.maps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, (dataset.version, answer.0, answer.1.clone()));
            return Ok(answer);
        }
        let data = self.space_vectors(store, dataset, space)?;
        let pca = map::pca_2d(&data.vectors, 0);
        let points = match layout {
            Layout::Pca => pca,
            Layout::Umap if data.vectors.len() < 3 => pca,
            Layout::Umap => {
                let graph = KnnGraph::exact_or_indexed(&data.vectors, Metric::Cosine, 15);
                map::layout(&graph, &pca, &map::LayoutParams::default(), None)
            }
        };
        let bytes = bytes::Bytes::from(map::pack_le(&points));
        // Only what was computed from this very version is saved under it.
        if data.version == dataset.version {
            saved.write_bytes(&bytes);
        }
        let answer = (data.ids.len(), bytes);
        self.maps.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (dataset.version, answer.0, answer.1.clone()));
        Ok(answer)
    }

    /// What a new version's first requests would wait for, done right after its upload: the
    /// frame vectors loaded, the PCA map, and the similarity index of the default metric
    /// started (through the one slot its queries use, so one build runs at a time).
    pub(crate) fn warm(self: &Arc<Self>, store: &Store, dataset: &DatasetInfo) -> ServiceResult<()> {
        // Another upload or a delete may have landed since: work only on the version that is
        // current now.
        let dataset = store.dataset(&dataset.project, &dataset.name)?;
        if dataset.frame_embedding_dim.is_none() {
            return Ok(());
        }
        self.map(store, &dataset, Space::Frames, Layout::Pca)?;
        let data = self.space_vectors(store, &dataset, Space::Frames)?;
        if data.ids.len() > self.exact_limit && data.version == dataset.version {
            ready_index(self, store, &dataset, Space::Frames, default_metric(), &data);
        }
        Ok(())
    }

    /// A space's vectors at the dataset's version: from memory when read before, else loaded
    /// and kept (replacing older versions of the same space, and the others first when the
    /// bound would be passed).
    fn space_vectors(&self, store: &Store, dataset: &DatasetInfo, space: Space) -> ServiceResult<Arc<SpaceVectors>> {
        let key = (dataset.id, dataset.created_at.clone(), space_name(space));
        if let Some(found) = self.vectors.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && found.version == dataset.version
        {
            return Ok(found.clone());
        }
        let loaded = Arc::new(space_vectors(store, dataset, space)?);
        let size = loaded.vectors.len() * loaded.vectors.dim();
        // Kept only if no new version landed while the rows were read: they would be newer
        // than the version they are filed under.
        let unchanged = store.dataset(&dataset.project, &dataset.name).is_ok_and(|now| now.version == dataset.version);
        if unchanged && size <= self.max_cached_values {
            let mut cached = self.vectors.lock().unwrap_or_else(|e| e.into_inner());
            cached.remove(&key);
            let held: usize = cached.values().map(|v| v.vectors.len() * v.vectors.dim()).sum();
            if held + size > self.max_cached_values {
                cached.clear();
            }
            cached.insert(key, loaded.clone());
        }
        Ok(loaded)
    }

    /// Whether the current version's label errors and default-threshold metrics against
    /// `set` are kept.
    pub(crate) fn model_insights_state(
        &self,
        dataset: &DatasetInfo,
        set: &InferenceSetInfo,
    ) -> crate::datasets::ModelInsights {
        use crate::datasets::Preparing;
        let key = (dataset.id, dataset.created_at.clone(), set.id, set.created_at.clone());
        let current =
            |version: Option<i64>| if version == Some(dataset.version) { Preparing::Ready } else { Preparing::None };
        let issues = self.issues.lock().unwrap_or_else(|e| e.into_inner()).get(&key).map(|(v, _)| *v);
        let (iou, confidence) = DEFAULT_THRESHOLDS;
        let metrics_key = (key, iou.to_bits(), confidence.to_bits());
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner()).get(&metrics_key).map(|(v, _)| *v);
        crate::datasets::ModelInsights { label_errors: current(issues), metrics: current(metrics) }
    }

    /// Where the default similarity index of the dataset's current version stands.
    pub(crate) fn similarity_state(&self, dataset: &DatasetInfo) -> crate::datasets::Preparing {
        let key = (dataset.id, dataset.created_at.clone(), space_name(Space::Frames), default_metric().name());
        match self.slots().get(&key) {
            Some((Some(built), _)) if built.version == dataset.version => crate::datasets::Preparing::Ready,
            Some((_, true)) => crate::datasets::Preparing::Building,
            _ => crate::datasets::Preparing::None,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<IndexKey, IndexSlot>> {
        self.indexes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A dataset's boxes in the form the algorithms read, with the ids to map results back.
/// Compact on purpose: at a million frames it holds ten million boxes.
struct Detection {
    frame_ids: Vec<String>,
    labels: Vec<Object>,
    label_ids: PackedIds,
    /// Each label's crop-embedding ordinal.
    label_embeddings: Vec<Option<i64>>,
    inferences: Vec<Object>,
    inference_ids: PackedIds,
    classes: Vec<u32>,
    class_names: HashMap<u32, String>,
}

/// Strings end to end in one buffer: the id's bytes and an offset, where a `String` of its own
/// costs 24 bytes more and an allocation.
#[derive(Default)]
struct PackedIds {
    text: String,
    ends: Vec<usize>,
}

impl PackedIds {
    fn push(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len());
    }

    fn get(&self, n: usize) -> &str {
        let start = if n == 0 { 0 } else { self.ends[n - 1] };
        &self.text[start..self.ends[n]]
    }
}

/// One side's boxes (labels or inferences) as read, frames numbered in the order met.
#[derive(Default)]
struct BoxSide {
    /// The distinct frames, in the store's (byte) order.
    frames: Vec<String>,
    objects: Vec<Object>,
    ids: PackedIds,
    embeddings: Vec<Option<i64>>,
}

/// The current boxes of one side with a class; `objects[i].frame` indexes `frames` until
/// [`load_detection`] renumbers them.
fn read_boxes(store: &Store, dataset: &DatasetInfo, set: Option<&InferenceSetInfo>) -> ServiceResult<BoxSide> {
    let mut side = BoxSide::default();
    store.for_each_current_box(dataset, set, |row| {
        let Some(class) = row.class_id else { return };
        // Rows come ordered by frame: a new frame is one unlike the last.
        if side.frames.last().is_none_or(|last| last != row.frame_id) {
            side.frames.push(row.frame_id.to_string());
        }
        side.objects.push(Object {
            frame: side.frames.len() as u32 - 1,
            class: class.max(-1) as u32,
            bbox: Bbox::new(row.left, row.top, row.width, row.height),
            iscrowd: row.iscrowd,
            score: row.confidence.unwrap_or(0.0),
        });
        side.ids.push(row.label_id);
        side.embeddings.push(row.embedding);
    })?;
    Ok(side)
}

fn load_detection(
    store: &Store,
    project: &ProjectInfo,
    dataset: &DatasetInfo,
    set: &InferenceSetInfo,
) -> ServiceResult<Detection> {
    let mut labels = read_boxes(store, dataset, None)?;
    let mut inferences = read_boxes(store, dataset, Some(set))?;
    // One numbering of the frames of both sides, in id order.
    let frame_index: BTreeMap<&str, u32> = {
        let mut index: BTreeMap<&str, u32> =
            labels.frames.iter().chain(&inferences.frames).map(|f| (f.as_str(), 0)).collect();
        for (n, slot) in index.values_mut().enumerate() {
            *slot = n as u32;
        }
        index
    };
    let renumber = |side: &BoxSide| -> Vec<u32> { side.frames.iter().map(|f| frame_index[f.as_str()]).collect() };
    let renumbered = [renumber(&labels), renumber(&inferences)];
    let frame_ids = frame_index.into_keys().map(String::from).collect();
    for (side, renumber) in [&mut labels, &mut inferences].into_iter().zip(renumbered) {
        side.objects.iter_mut().for_each(|o| o.frame = renumber[o.frame as usize]);
    }
    Ok(Detection {
        frame_ids,
        labels: labels.objects,
        label_ids: labels.ids,
        label_embeddings: labels.embeddings,
        inferences: inferences.objects,
        inference_ids: inferences.ids,
        classes: project.classes.0.iter().map(|c| c.id).collect(),
        class_names: project.classes.0.iter().map(|c| (c.id, c.name.clone())).collect(),
    })
}

/// Where the version's answer named `stem` is saved; `of` adds the creation time of what
/// it answers about (an inference set's), beside the dataset's.
fn saved_answer(store: &Store, dataset: &DatasetInfo, stem: String, of: &str) -> crate::saved::SavedAnswer {
    let key = format!("dataset {} {}; {of}", dataset.id, dataset.created_at);
    crate::saved::SavedAnswer::new(store.index_dir(dataset.id), &stem, dataset.version, key)
}

/// Runs `work` as a job of the dataset (shown in its status: running, then done with the
/// message `work` gives, or failed with the error).
fn as_job<T>(
    store: &Store,
    dataset: &DatasetInfo,
    kind: &str,
    work: impl FnOnce() -> ServiceResult<(T, String)>,
) -> ServiceResult<T> {
    let job = store.start_job(dataset, kind, None).ok();
    let result = work();
    if let Some(job) = job {
        let _ = match &result {
            Ok((_, message)) => store.update_job(job, 0, Some(("done", Some(message)))),
            Err(e) => store.update_job(job, 0, Some(("failed", Some(&e.message)))),
        };
    }
    result.map(|(value, _)| value)
}

/// Vectors of `ordinals` from the dataset's file for `space`, with the positions that had one.
fn load_vectors(
    store: &Store,
    dataset: &DatasetInfo,
    space: Space,
    ordinals: &[Option<i64>],
) -> ServiceResult<(VectorSet, Vec<usize>)> {
    let Some(file) = store.embedding_file(dataset, space)? else {
        return Err(ServiceError::invalid("space", "this dataset has no embeddings in that space"));
    };
    let mut vectors = VectorSet::new(file.dim());
    let mut positions = Vec::new();
    for (position, ordinal) in ordinals.iter().enumerate() {
        if let Some(ordinal) = ordinal
            && let Some(vector) = file.get(*ordinal as u64)?
        {
            vectors.push(&vector);
            positions.push(position);
        }
    }
    Ok((vectors, positions))
}

/// Crop-embedding neighbour votes for each label, when the labels have embeddings.
fn label_votes(
    store: &Store,
    dataset: &DatasetInfo,
    detection: &Detection,
) -> ServiceResult<Option<Vec<Option<NeighborVote>>>> {
    if dataset.label_embedding_dim.is_none() {
        return Ok(None);
    }
    let (vectors, positions) = load_vectors(store, dataset, Space::Labels, &detection.label_embeddings)?;
    if vectors.len() < 11 {
        return Ok(None);
    }
    let graph = KnnGraph::exact_or_indexed(&vectors, Metric::Cosine, 10);
    let classes: Vec<Option<u32>> = positions.iter().map(|&p| Some(detection.labels[p].class)).collect();
    let (agreement, _) = label_agreement(&graph, &classes);
    let mut votes = vec![None; detection.labels.len()];
    for a in agreement {
        votes[positions[a.id as usize]] =
            Some(NeighborVote { disagreement: a.disagreement, neighbor_class: a.neighbor_class });
    }
    Ok(Some(votes))
}

#[derive(Debug)]
pub struct LabelErrorQuery {
    pub inference_set: String,
    pub limit: usize,
    pub offset: usize,
    /// Only issues of this kind.
    pub kind: Option<IssueKind>,
}

/// One likely label error, by the ids the user knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelIssue {
    pub kind: IssueKind,
    pub score: f64,
    pub frame_id: String,
    pub label_id: Option<String>,
    pub label_class: Option<String>,
    pub inference_id: Option<String>,
    pub other_label_id: Option<String>,
    pub suggested_class: Option<String>,
    pub iou: Option<f64>,
}

/// A frame ranked by its issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameIssues {
    pub frame_id: String,
    pub score: f64,
    pub issues: usize,
}

/// The label-error queue of a dataset against one inference set.
#[derive(Debug, Clone, Serialize)]
pub struct LabelErrors {
    pub inference_set: String,
    pub version: i64,
    /// Whether crop embeddings voted on the labels' classes.
    pub used_embeddings: bool,
    /// Issues that match the query before paging (dismissed ones left out).
    pub total: usize,
    pub issues: Vec<LabelIssue>,
    pub frames: Vec<FrameIssues>,
}

/// Likely label errors, most likely first; viewers may ask.
pub fn label_errors(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    query: &LabelErrorQuery,
) -> ServiceResult<LabelErrors> {
    let (project, dataset) = access::dataset(&services.store, user, project, dataset, ProjectRole::Viewer)?;
    if query.limit == 0 || query.limit > 10_000 {
        return Err(ServiceError::invalid("limit", "limit must be between 1 and 10000"));
    }
    let store = &services.store;
    let set = store.inference_set(&dataset, &query.inference_set)?;
    let ranked = ranked_issues(&services.indexes, store, &project, &dataset, &set)?;
    // Dismissals change without a new version: applied to the kept ranking on every request.
    let dismissed = store.dismissed_issues(&dataset)?;
    let selected: Vec<&LabelIssue> = ranked
        .issues
        .iter()
        .filter(|i| query.kind.is_none_or(|k| k == i.kind))
        // A key per issue is a string per issue: built only when something was dismissed.
        .filter(|i| {
            dismissed.is_empty()
                || !dismissed.contains(&issue_key(i.kind, i.label_id.as_deref(), i.inference_id.as_deref()))
        })
        .collect();
    Ok(LabelErrors {
        inference_set: set.name,
        version: dataset.version,
        used_embeddings: ranked.used_embeddings,
        total: selected.len(),
        issues: selected.into_iter().skip(query.offset).take(query.limit).cloned().collect(),
        frames: ranked.frames.iter().take(query.limit).cloned().collect(),
    })
}

/// The label errors of the dataset's version against `set`, ranked once per version: by
/// confident learning where the ground truth is classifications, else by box matching.
fn ranked_issues(
    indexes: &IndexCache,
    store: &Store,
    project: &ProjectInfo,
    dataset: &DatasetInfo,
    set: &InferenceSetInfo,
) -> ServiceResult<Arc<RankedIssues>> {
    indexes.ranked_issues(store, dataset, set, || {
        let truths = store.current_classifications(dataset, None)?;
        if truths.is_empty() {
            rank_detection(store, project, dataset, set)
        } else {
            rank_classification(store, project, dataset, set, truths)
        }
    })
}

/// What the label-error queue and the metrics page ask first, made after an upload: each
/// inference set's ranking and its metrics at the default thresholds. Blocking.
pub(crate) fn warm_inference_sets(indexes: &IndexCache, store: &Store, dataset: &DatasetInfo) -> ServiceResult<()> {
    // Another upload may have landed since: work on the version that is current now.
    let dataset = store.dataset(&dataset.project, &dataset.name)?;
    let project = store.project(&dataset.project)?;
    for set in store.list_inference_sets(&dataset)? {
        ranked_issues(indexes, store, &project, &dataset, &set)?;
        let (iou, confidence) = DEFAULT_THRESHOLDS;
        indexes.metrics(store, &dataset, &set, DEFAULT_THRESHOLDS, || {
            evaluate_metrics(store, &project, &dataset, &set, iou, confidence)
        })?;
    }
    Ok(())
}

/// Every likely label error of one dataset version against one inference set, ranked: what
/// the queue pages through, made once per version.
#[derive(Serialize, Deserialize)]
struct RankedIssues {
    issues: Vec<LabelIssue>,
    frames: Vec<FrameIssues>,
    used_embeddings: bool,
}

fn rank_detection(
    store: &Store,
    project: &ProjectInfo,
    dataset: &DatasetInfo,
    set: &InferenceSetInfo,
) -> ServiceResult<RankedIssues> {
    let detection = load_detection(store, project, dataset, set)?;
    let votes = label_votes(store, dataset, &detection)?;
    let issues =
        detection_issues(&detection.labels, &detection.inferences, votes.as_deref(), &DetectionParams::default());
    let frames = frame_scores(&issues);
    let class = |id: Option<u32>| id.and_then(|c| detection.class_names.get(&c).cloned());
    let label_id = |n: Option<u32>| n.map(|n| detection.label_ids.get(n as usize).to_string());
    let inference_id = |n: Option<u32>| n.map(|n| detection.inference_ids.get(n as usize).to_string());
    Ok(RankedIssues {
        issues: issues
            .iter()
            .map(|i| LabelIssue {
                kind: i.kind,
                score: i.score,
                frame_id: detection.frame_ids[i.frame as usize].clone(),
                label_id: label_id(i.label),
                label_class: class(i.label.map(|l| detection.labels[l as usize].class)),
                inference_id: inference_id(i.inference),
                other_label_id: label_id(i.other_label),
                suggested_class: class(i.suggested_class),
                iou: i.iou,
            })
            .collect(),
        frames: frames
            .iter()
            .map(|f| FrameIssues {
                frame_id: detection.frame_ids[f.frame as usize].clone(),
                score: f.score,
                issues: f.issues,
            })
            .collect(),
        used_embeddings: votes.is_some(),
    })
}

/// Each class id's position in the project's class map (the order probabilities come in).
fn class_positions(project: &ProjectInfo) -> HashMap<i64, usize> {
    project.classes.0.iter().enumerate().map(|(i, c)| (i64::from(c.id), i)).collect()
}

/// One set's classification inference per frame (the first by label id).
fn predictions_by_frame(
    store: &Store,
    dataset: &DatasetInfo,
    set: &InferenceSetInfo,
) -> ServiceResult<HashMap<String, milkglass_store::ClassRecord>> {
    let mut predicted = HashMap::new();
    for p in store.current_classifications(dataset, Some(set))? {
        predicted.entry(p.frame_id.clone()).or_insert(p);
    }
    Ok(predicted)
}

/// Each frame's most common ground-truth class; ties go to the smaller class id, so the
/// answer is stable.
fn frame_classes(boxes: &[BoxRecord]) -> HashMap<&str, i64> {
    let mut counts: HashMap<&str, BTreeMap<i64, usize>> = HashMap::new();
    for b in boxes {
        if let Some(c) = b.class_id {
            *counts.entry(b.frame_id.as_str()).or_default().entry(c).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter_map(|(frame, classes)| {
            let top = classes.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
            Some((frame, top.0))
        })
        .collect()
}

/// The label errors of a classification dataset: confident learning (as Cleanlab does it) over the
/// inference set's class probabilities, or, where an inference gave only its top class and
/// confidence, over that confidence with the rest spread evenly over the other classes.
fn rank_classification(
    store: &Store,
    project: &ProjectInfo,
    dataset: &DatasetInfo,
    set: &InferenceSetInfo,
    truths: Vec<milkglass_store::ClassRecord>,
) -> ServiceResult<RankedIssues> {
    let classes = &project.classes.0;
    let index = class_positions(project);
    let predicted = predictions_by_frame(store, dataset, set)?;
    let (mut given, mut rows, mut examples) = (Vec::new(), Vec::new(), Vec::new());
    for truth in truths {
        let (Some(&class), Some(guess)) = (index.get(&truth.class_id), predicted.get(&truth.frame_id)) else {
            continue;
        };
        let row: Vec<f32> = match &guess.probabilities {
            Some(p) if p.len() == classes.len() => p.iter().map(|&x| x as f32).collect(),
            _ => {
                let top = index.get(&guess.class_id).copied().unwrap_or(class);
                let confidence = guess.confidence.unwrap_or(1.0).clamp(0.0, 1.0) as f32;
                let rest = if classes.len() > 1 { (1.0 - confidence) / (classes.len() - 1) as f32 } else { 0.0 };
                (0..classes.len()).map(|k| if k == top { confidence } else { rest }).collect()
            }
        };
        given.push(class as u32);
        rows.extend(row);
        examples.push((truth, guess.label_id.clone()));
    }
    let found = if given.is_empty() {
        Vec::new()
    } else {
        milkglass_insight::label_errors::confident_learning(&given, &rows, classes.len()).issues
    };
    let name = |k: u32| classes.get(k as usize).map(|c| c.name.clone());
    let issues: Vec<LabelIssue> = found
        .iter()
        .map(|i| {
            let (truth, inference) = &examples[i.index as usize];
            LabelIssue {
                kind: IssueKind::ClassConfusion,
                score: f64::from(i.score),
                frame_id: truth.frame_id.clone(),
                label_id: Some(truth.label_id.clone()),
                label_class: name(i.given),
                inference_id: Some(inference.clone()),
                other_label_id: None,
                suggested_class: name(i.suggested),
                iou: None,
            }
        })
        .collect();
    let frames =
        issues.iter().map(|i| FrameIssues { frame_id: i.frame_id.clone(), score: i.score, issues: 1 }).collect();
    Ok(RankedIssues { issues, frames, used_embeddings: false })
}

#[derive(Debug)]
pub struct MetricsQuery {
    pub inference_set: String,
    pub iou: f64,
    pub confidence: f64,
    /// At most this many ids in each of a confusion cell's id lists: at a million frames the
    /// whole lists are hundreds of MB, and a cell opens at most 1,000 frames at a time anyway.
    pub cell_ids: usize,
}

/// The default of [`MetricsQuery::cell_ids`]: as many frames as one `GET {ds}/frames?id=...` takes.
pub const DEFAULT_CELL_IDS: usize = 1000;

/// The most ids a kept answer holds per cell list, and so the largest `cell_ids`: past it, a
/// version's kept metrics would hold every label and inference id of the dataset.
pub const MAX_CELL_IDS: usize = 10_000;

/// The (IoU, confidence) thresholds the metrics page opens at, whose answer an upload prepares.
pub const DEFAULT_THRESHOLDS: (f64, f64) = (0.5, 0.5);

/// Counts of one class at the query's IoU and confidence thresholds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThresholdScores {
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// COCO figures of one class; `None` where the class has no ground truth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub ap: Option<f64>,
    pub ap50: Option<f64>,
    pub recall_all_detections: Option<f64>,
    pub pr_curve_iou50: Vec<f64>,
    pub at_threshold: Option<ThresholdScores>,
}

/// One cell of the confusion matrix, with the ids behind its count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfusionCell {
    pub count: usize,
    pub label_ids: Vec<String>,
    pub inference_ids: Vec<String>,
    /// The frames those labels and inferences are on, each once, in id order.
    pub frame_ids: Vec<String>,
    /// How many frames those are (more than `frame_ids` holds when the lists were cut).
    pub frames: usize,
    /// False when the query's `cell_ids` cut any of the three lists.
    pub ids_complete: bool,
}

/// Rows are the labels' classes, columns the inferences', each ending in `background`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confusion {
    pub iou: f64,
    pub confidence: f64,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub cells: Vec<Vec<ConfusionCell>>,
}

/// A model's detection metrics on a dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub task: String,
    pub inference_set: String,
    pub version: i64,
    pub map: Option<f64>,
    pub map50: Option<f64>,
    pub recall_thresholds: Vec<f64>,
    pub classes: Vec<ClassMetrics>,
    pub confusion: Confusion,
}

/// A model's metrics on a dataset: detection (COCO) or classification, by the labels it has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelMetrics {
    Detection(Metrics),
    Classification(ClassificationMetrics),
}

/// Precision, recall and F1 of one class, over the examples labelled or predicted as it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassReport {
    pub class: String,
    /// Examples labelled with the class.
    pub support: usize,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

/// One cell of a classification confusion matrix: its count and the frames behind it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassificationCell {
    pub count: usize,
    pub frame_ids: Vec<String>,
    /// False when the query's `cell_ids` cut `frame_ids`.
    pub ids_complete: bool,
}

/// Examples whose predicted class's confidence fell in `[lower, upper)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_confidence: Option<f64>,
    pub accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error: the bins' |accuracy - confidence|, weighted by their counts.
    pub ece: f64,
    pub bins: Vec<ReliabilityBin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopK {
    pub k: usize,
    pub accuracy: f64,
}

/// A classification model's metrics on a dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    pub task: String,
    pub inference_set: String,
    pub version: i64,
    /// Frames with both a label and a prediction.
    pub examples: usize,
    pub accuracy: Option<f64>,
    /// Accuracy within the k most probable classes, when the predictions carry probabilities.
    pub top_k: Option<TopK>,
    pub classes: Vec<ClassReport>,
    /// Rows are the labels' classes, columns the predictions'.
    pub confusion: ClassificationConfusion,
    pub calibration: Calibration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassificationConfusion {
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub cells: Vec<Vec<ClassificationCell>>,
}

const RELIABILITY_BINS: usize = 10;

fn classification_metrics(
    store: &Store,
    project: &ProjectInfo,
    dataset: &DatasetInfo,
    set: &InferenceSetInfo,
    truths: Vec<milkglass_store::ClassRecord>,
) -> ServiceResult<ClassificationMetrics> {
    let classes = &project.classes.0;
    let n = classes.len();
    let index = class_positions(project);
    let predicted = predictions_by_frame(store, dataset, set)?;
    let mut cells: Vec<Vec<Vec<String>>> = vec![vec![Vec::new(); n]; n];
    let (mut examples, mut correct, mut in_top_k, mut with_probabilities) = (0usize, 0usize, 0usize, 0usize);
    let k = n.min(3);
    let mut bins: Vec<(usize, f64, usize)> = vec![(0, 0.0, 0); RELIABILITY_BINS];
    for truth in &truths {
        let (Some(&t), Some(guess)) = (index.get(&truth.class_id), predicted.get(&truth.frame_id)) else { continue };
        let Some(&g) = index.get(&guess.class_id) else { continue };
        examples += 1;
        correct += usize::from(t == g);
        cells[t][g].push(truth.frame_id.clone());
        if let Some(p) = guess.probabilities.as_ref().filter(|p| p.len() == n) {
            with_probabilities += 1;
            let better = p.iter().filter(|&&x| x > p[t]).count();
            in_top_k += usize::from(better < k);
        }
        let confidence = guess.confidence.unwrap_or(1.0).clamp(0.0, 1.0);
        let bin = ((confidence * RELIABILITY_BINS as f64) as usize).min(RELIABILITY_BINS - 1);
        bins[bin].0 += 1;
        bins[bin].1 += confidence;
        bins[bin].2 += usize::from(t == g);
    }
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    let reports = (0..n)
        .map(|c| {
            let support: usize = cells[c].iter().map(Vec::len).sum();
            let predicted: usize = cells.iter().map(|row| row[c].len()).sum();
            let hits = cells[c][c].len();
            let (precision, recall) = (ratio(hits, predicted), ratio(hits, support));
            let f1 = precision.zip(recall).and_then(|(p, r)| (p + r > 0.0).then(|| 2.0 * p * r / (p + r)));
            ClassReport { class: classes[c].name.clone(), support, precision, recall, f1 }
        })
        .collect();
    let bins: Vec<ReliabilityBin> = bins
        .into_iter()
        .enumerate()
        .map(|(b, (count, confidence_sum, hits))| ReliabilityBin {
            lower: b as f64 / RELIABILITY_BINS as f64,
            upper: (b + 1) as f64 / RELIABILITY_BINS as f64,
            count,
            mean_confidence: (count > 0).then(|| confidence_sum / count as f64),
            accuracy: ratio(hits, count),
        })
        .collect();
    let ece = bins
        .iter()
        .filter_map(|b| Some(b.count as f64 / examples.max(1) as f64 * (b.accuracy? - b.mean_confidence?).abs()))
        .sum();
    let names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
    Ok(ClassificationMetrics {
        task: "classification".to_string(),
        inference_set: set.name.clone(),
        version: dataset.version,
        examples,
        accuracy: ratio(correct, examples),
        top_k: (with_probabilities > 0).then(|| TopK { k, accuracy: in_top_k as f64 / with_probabilities as f64 }),
        classes: reports,
        confusion: ClassificationConfusion {
            rows: names.clone(),
            columns: names,
            cells: cells
                .into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|mut frame_ids| ClassificationCell {
                            count: frame_ids.len(),
                            ids_complete: frame_ids.len() <= MAX_CELL_IDS,
                            frame_ids: {
                                frame_ids.truncate(MAX_CELL_IDS);
                                frame_ids
                            },
                        })
                        .collect()
                })
                .collect(),
        },
        calibration: Calibration { ece, bins },
    })
}

/// Detection datasets: COCO mAP, per-class AP and PR curves, and the confusion matrix at the
/// query's thresholds. Classification datasets: accuracy, top-k accuracy, the per-class report,
/// the confusion matrix and calibration. Viewers may ask.
pub fn metrics(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    query: &MetricsQuery,
) -> ServiceResult<ModelMetrics> {
    let (project, dataset) = access::dataset(&services.store, user, project, dataset, ProjectRole::Viewer)?;
    if !(0.0..=1.0).contains(&query.iou) || query.iou == 0.0 {
        return Err(ServiceError::invalid("iou", "iou must be in (0, 1]"));
    }
    if !(0.0..=1.0).contains(&query.confidence) {
        return Err(ServiceError::invalid("confidence", "confidence must be in [0, 1]"));
    }
    if query.cell_ids > MAX_CELL_IDS {
        return Err(ServiceError::invalid("cell_ids", format!("cell_ids must be between 0 and {MAX_CELL_IDS}")));
    }
    let store = &services.store;
    let set = store.inference_set(&dataset, &query.inference_set)?;
    let kept = services.indexes.metrics(store, &dataset, &set, (query.iou, query.confidence), || {
        evaluate_metrics(store, &project, &dataset, &set, query.iou, query.confidence)
    })?;
    Ok(kept.with_cell_ids(query.cell_ids))
}

impl ModelMetrics {
    /// A copy whose confusion cells list at most `limit` ids each: the kept answer holds them
    /// all, and copying it whole per request would cost more than computing small answers.
    fn with_cell_ids(&self, limit: usize) -> ModelMetrics {
        fn first(ids: &[String], limit: usize) -> Vec<String> {
            ids[..ids.len().min(limit)].to_vec()
        }
        match self {
            ModelMetrics::Detection(m) => {
                let cells = m.confusion.cells.iter().map(|row| {
                    row.iter()
                        .map(|c| ConfusionCell {
                            count: c.count,
                            label_ids: first(&c.label_ids, limit),
                            inference_ids: first(&c.inference_ids, limit),
                            frame_ids: first(&c.frame_ids, limit),
                            frames: c.frames,
                            ids_complete: c.ids_complete
                                && [&c.label_ids, &c.inference_ids, &c.frame_ids].iter().all(|l| l.len() <= limit),
                        })
                        .collect()
                });
                let confusion = Confusion {
                    iou: m.confusion.iou,
                    confidence: m.confusion.confidence,
                    rows: m.confusion.rows.clone(),
                    columns: m.confusion.columns.clone(),
                    cells: cells.collect(),
                };
                ModelMetrics::Detection(Metrics {
                    task: m.task.clone(),
                    inference_set: m.inference_set.clone(),
                    version: m.version,
                    map: m.map,
                    map50: m.map50,
                    recall_thresholds: m.recall_thresholds.clone(),
                    classes: m.classes.clone(),
                    confusion,
                })
            }
            ModelMetrics::Classification(m) => {
                let cells = m.confusion.cells.iter().map(|row| {
                    row.iter()
                        .map(|c| ClassificationCell {
                            count: c.count,
                            frame_ids: first(&c.frame_ids, limit),
                            ids_complete: c.ids_complete && c.frame_ids.len() <= limit,
                        })
                        .collect()
                });
                ModelMetrics::Classification(ClassificationMetrics {
                    confusion: ClassificationConfusion {
                        rows: m.confusion.rows.clone(),
                        columns: m.confusion.columns.clone(),
                        cells: cells.collect(),
                    },
                    task: m.task.clone(),
                    inference_set: m.inference_set.clone(),
                    version: m.version,
                    examples: m.examples,
                    accuracy: m.accuracy,
                    top_k: m.top_k.clone(),
                    classes: m.classes.clone(),
                    calibration: m.calibration.clone(),
                })
            }
        }
    }
}

/// The metrics of one version against one inference set, computed afresh.
fn evaluate_metrics(
    store: &Store,
    project: &ProjectInfo,
    dataset: &DatasetInfo,
    set: &InferenceSetInfo,
    iou: f64,
    confidence: f64,
) -> ServiceResult<ModelMetrics> {
    let truths = store.current_classifications(dataset, None)?;
    if !truths.is_empty() {
        return Ok(ModelMetrics::Classification(classification_metrics(store, project, dataset, set, truths)?));
    }
    let d = load_detection(store, project, dataset, set)?;
    let coco = coco_evaluate(&d.labels, &d.inferences, &d.classes, 100);
    let matrix = confusion_matrix(&d.labels, &d.inferences, &d.classes, iou, confidence);
    let name = |c: u32| d.class_names.get(&c).cloned().unwrap_or_else(|| c.to_string());
    let class_scores = matrix.class_scores();
    let classes = coco
        .classes
        .iter()
        .enumerate()
        .map(|(k, &c)| ClassMetrics {
            class: name(c),
            ap: finite(coco.ap[k]),
            ap50: finite(coco.ap50[k]),
            recall_all_detections: finite(coco.recall[0][k]),
            pr_curve_iou50: coco.precision[0][k].clone(),
            at_threshold: class_scores.iter().find(|s| s.class == c).map(|s| ThresholdScores {
                true_positives: s.true_positives,
                false_positives: s.false_positives,
                false_negatives: s.false_negatives,
                precision: s.precision,
                recall: s.recall,
                f1: s.f1,
            }),
        })
        .collect();
    let mut axis: Vec<String> = d.classes.iter().map(|&c| name(c)).collect();
    axis.push("background".to_string());
    let cells = matrix
        .cells
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| {
                    let frame_of = |o: &Object| d.frame_ids[o.frame as usize].as_str();
                    let frames: std::collections::BTreeSet<&str> =
                        (cell.labels.iter().map(|&n| frame_of(&d.labels[n as usize])))
                            .chain(cell.inferences.iter().map(|&n| frame_of(&d.inferences[n as usize])))
                            .collect();
                    let complete =
                        [cell.labels.len(), cell.inferences.len(), frames.len()].iter().all(|&n| n <= MAX_CELL_IDS);
                    ConfusionCell {
                        count: cell.count,
                        label_ids: (cell.labels.iter().take(MAX_CELL_IDS))
                            .map(|&n| d.label_ids.get(n as usize).to_string())
                            .collect(),
                        inference_ids: (cell.inferences.iter().take(MAX_CELL_IDS))
                            .map(|&n| d.inference_ids.get(n as usize).to_string())
                            .collect(),
                        frames: frames.len(),
                        frame_ids: frames.into_iter().take(MAX_CELL_IDS).map(String::from).collect(),
                        ids_complete: complete,
                    }
                })
                .collect()
        })
        .collect();
    Ok(ModelMetrics::Detection(Metrics {
        task: "detection".to_string(),
        inference_set: set.name.clone(),
        version: dataset.version,
        map: finite(coco.map),
        map50: finite(coco.map50),
        recall_thresholds: coco.recall_thresholds.clone(),
        classes,
        confusion: Confusion { iou, confidence, rows: axis.clone(), columns: axis, cells },
    }))
}

/// COCO's -1 ("no ground truth") as none.
fn finite(value: f64) -> Option<f64> {
    (value >= 0.0).then_some(value)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarRequest {
    #[serde(default)]
    pub space: Space,
    #[serde(default = "default_metric")]
    pub metric: Metric,
    #[serde(default = "default_k")]
    pub k: usize,
    pub frame_id: Option<String>,
    pub label_id: Option<String>,
    pub vector: Option<Vec<f32>>,
    /// Frame metadata that every result's frame must have (equality per key).
    #[serde(default)]
    pub filter: serde_json::Map<String, Value>,
}

fn default_metric() -> Metric {
    Metric::Cosine
}

fn default_k() -> usize {
    10
}

/// How the neighbours were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMethod {
    /// Every vector compared: small spaces, selective filters, or while the index builds.
    Exact,
    /// The approximate index of this dataset version.
    Hnsw,
}

/// One neighbour: a frame, or a label (with its frame).
#[derive(Debug, Clone, Serialize)]
pub struct SimilarItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_id: Option<String>,
    pub frame_id: String,
    pub distance: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Similar {
    pub space: Space,
    pub metric: Metric,
    pub method: SearchMethod,
    pub version: i64,
    pub neighbors: Vec<SimilarItem>,
}

/// The 2-D layout of an embedding map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// The first two principal components: instant.
    #[default]
    Pca,
    /// A UMAP-like layout of the k-nearest-neighbour graph, started from PCA.
    Umap,
}

/// One space's vectors at one dataset version, with the ids they belong to.
struct SpaceVectors {
    /// The dataset version they were read at.
    version: i64,
    ids: Vec<String>,
    /// For label vectors, the frame each label is on (frames: the frame itself).
    frames: Vec<String>,
    vectors: VectorSet,
    /// Where each id is in `ids`.
    positions: HashMap<String, u32>,
}

/// Metrics answers kept at most (each a confusion matrix with its ids).
const MAX_KEPT_METRICS: usize = 256;

/// (dataset id, its creation time, inference set id, its creation time).
type SetKey = (i64, String, i64, String);

/// An inference set's key with the bits of the IoU and confidence thresholds.
type MetricsKey = (SetKey, u64, u64);

/// A packed map: the version it was computed at, its number of points, the f32 pairs.
type KeptMap = (i64, usize, bytes::Bytes);

/// (dataset id, its creation time, space): as for indexes, the creation time keeps a reused id
/// from finding another dataset's vectors.
type VectorsKey = (i64, String, &'static str);

fn space_vectors(store: &Store, dataset: &DatasetInfo, space: Space) -> ServiceResult<SpaceVectors> {
    let (ids, frames, ordinals): (Vec<String>, Vec<String>, Vec<Option<i64>>) = match space {
        Space::Frames => {
            let frames = store.current_frames(dataset)?;
            let ids: Vec<String> = frames.iter().map(|f| f.frame_id.clone()).collect();
            (ids.clone(), ids, frames.iter().map(|f| f.embedding).collect())
        }
        Space::Labels => {
            let boxes = store.current_boxes(dataset, None)?;
            (
                boxes.iter().map(|b| b.label_id.clone()).collect(),
                boxes.iter().map(|b| b.frame_id.clone()).collect(),
                boxes.iter().map(|b| b.embedding).collect(),
            )
        }
    };
    let (vectors, kept) = load_vectors(store, dataset, space, &ordinals)?;
    let ids: Vec<String> = kept.iter().map(|&p| ids[p].clone()).collect();
    Ok(SpaceVectors {
        version: dataset.version,
        positions: ids.iter().enumerate().map(|(p, id)| (id.clone(), p as u32)).collect(),
        frames: kept.iter().map(|&p| frames[p].clone()).collect(),
        ids,
        vectors,
    })
}

/// An index of one (dataset, version, space, metric): the graph and each node's position in
/// that version's [`SpaceVectors`] (`u32::MAX` for a deleted node). Node ids follow insertion
/// order, which after incremental updates is not the positions' order.
struct BuiltIndex {
    version: i64,
    index: Hnsw,
    positions: Vec<u32>,
}

/// (dataset id, its creation time, space, metric): the creation time keeps a dataset that
/// SQLite gives a deleted one's id from finding that one's cached index.
type IndexKey = (i64, String, &'static str, &'static str);
/// The newest built index of a key, and whether a refresh is running.
type IndexSlot = (Option<Arc<BuiltIndex>>, bool);

fn space_name(space: Space) -> &'static str {
    match space {
        Space::Frames => "frames",
        Space::Labels => "labels",
    }
}

/// What a query parameter holds, by its serde name (`frames`, `umap`, `missing_label`).
pub fn parse_param<T: serde::de::DeserializeOwned>(field: &str, raw: &str) -> ServiceResult<T> {
    serde_json::from_value(Value::String(raw.to_string()))
        .map_err(|e| ServiceError::invalid(field, format!("{raw:?}: {e}")))
}

/// The index for this version when it is ready; otherwise starts bringing it up to date in the
/// background and returns None, so the caller answers exactly meanwhile.
fn ready_index(
    cache: &Arc<IndexCache>,
    store: &Store,
    dataset: &DatasetInfo,
    space: Space,
    metric: Metric,
    data: &SpaceVectors,
) -> Option<Arc<BuiltIndex>> {
    let key = (dataset.id, dataset.created_at.clone(), space_name(space), metric.name());
    let mut indexes = cache.slots();
    let entry = indexes.entry(key.clone()).or_insert((None, false));
    if let Some(built) = &entry.0
        && built.version == dataset.version
    {
        return Some(built.clone());
    }
    // A caller holding an older version (a preparation that a newer upload overtook) must not
    // bring the index back to it: it answers exactly, and the index stays on the newer one.
    let stale = entry.0.as_ref().is_some_and(|built| built.version > dataset.version);
    if !entry.1 && !stale {
        entry.1 = true;
        let previous = entry.0.as_ref().map(|b| b.version);
        let (store, dataset, cache) = (store.clone(), dataset.clone(), cache.clone());
        let data = SpaceVectors {
            version: data.version,
            ids: data.ids.clone(),
            frames: Vec::new(),
            vectors: data.vectors.clone(),
            positions: HashMap::new(),
        };
        std::thread::spawn(move || {
            crate::preparation::lower_priority();
            let built = refresh_index(&store, &dataset, space, metric, data, previous);
            let mut indexes = cache.slots();
            let entry = indexes.entry(key).or_insert((None, false));
            entry.1 = false;
            if let Some(built) = built
                && entry.0.as_ref().is_none_or(|kept| kept.version <= built.version)
            {
                entry.0 = Some(Arc::new(built));
            }
        });
    }
    None
}

fn index_paths(
    store: &Store,
    dataset: &DatasetInfo,
    space: Space,
    metric: Metric,
    version: i64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = store.index_dir(dataset.id);
    let stem = format!("{}-{}-v{version}", space_name(space), metric.name());
    (dir.join(format!("{stem}.hnsw")), dir.join(format!("{stem}.ids.json")))
}

fn load_saved(paths: &(std::path::PathBuf, std::path::PathBuf), metric: Metric) -> Option<(Hnsw, Vec<String>)> {
    let index = Hnsw::load(&paths.0, 0).ok().filter(|i| i.metric() == metric)?;
    let ids: Vec<String> = serde_json::from_slice(&std::fs::read(&paths.1).ok()?).ok()?;
    (ids.len() == index.len()).then_some((index, ids))
}

/// Brings the index to `dataset.version`: loads it if this version was saved before (a
/// restart); else loads the previous version's and applies the difference (inserts for new or
/// changed vectors, tombstones for gone ones), so an upload never costs a full rebuild; else,
/// or when tombstones pass a third of the nodes, builds from scratch. Progress is a job row.
fn refresh_index(
    store: &Store,
    dataset: &DatasetInfo,
    space: Space,
    metric: Metric,
    data: SpaceVectors,
    previous: Option<i64>,
) -> Option<BuiltIndex> {
    let paths = index_paths(store, dataset, space, metric, dataset.version);
    let publish = |mut index: Hnsw, ids: Vec<String>| {
        // One copy of the vectors where the index's are the cache's.
        index.share_vectors(&data.vectors);
        let position_of: HashMap<&str, u32> =
            data.ids.iter().enumerate().map(|(p, id)| (id.as_str(), p as u32)).collect();
        let positions = (0..index.len() as u32)
            .map(|node| {
                if index.is_deleted(node) {
                    u32::MAX
                } else {
                    position_of.get(ids[node as usize].as_str()).copied().unwrap_or(u32::MAX)
                }
            })
            .collect();
        BuiltIndex { version: dataset.version, index, positions }
    };
    if let Some((index, ids)) = load_saved(&paths, metric)
        && index.live_len() == data.ids.len()
    {
        return Some(publish(index, ids));
    }
    let job_kind = format!("index:{}:{}", space_name(space), metric.name());
    let job = store.start_job(dataset, &job_kind, Some(data.ids.len() as i64)).ok();
    let last_report = std::sync::atomic::AtomicUsize::new(0);
    let progress = |done: usize, total: usize| {
        // A write per 5% keeps the catalog quiet during big builds.
        let step = (total / 20).max(1);
        if done / step > last_report.fetch_max(done / step, std::sync::atomic::Ordering::Relaxed)
            && let Some(job) = job
        {
            let _ = store.update_job(job, done as i64, None);
        }
    };
    let base = previous
        .map(|v| index_paths(store, dataset, space, metric, v))
        .and_then(|p| load_saved(&p, metric).map(|loaded| (loaded, p)));
    let (index, ids, message, old_paths) = match base {
        Some(((mut index, mut ids), old_paths)) => {
            let mut live: HashMap<String, u32> = (0..index.len() as u32)
                .filter(|&n| !index.is_deleted(n))
                .map(|n| (ids[n as usize].clone(), n))
                .collect();
            let mut added_flat = Vec::new();
            let mut added_ids = Vec::new();
            let mut deleted = 0usize;
            for (position, id) in data.ids.iter().enumerate() {
                // The index keeps vectors as given: an unchanged one compares equal.
                let vector = data.vectors.get(position as u32);
                match live.remove(id) {
                    Some(node) if index.vector(node) == vector => {}
                    found => {
                        if let Some(node) = found {
                            index.delete(node);
                            deleted += 1;
                        }
                        added_flat.extend_from_slice(data.vectors.get(position as u32));
                        added_ids.push(id.clone());
                    }
                }
            }
            for node in live.into_values() {
                index.delete(node);
                deleted += 1;
            }
            index.add_batch(&added_flat, Some(&progress));
            ids.extend(added_ids.iter().cloned());
            let message = format!(
                "updated from version {}: {} added, {} removed",
                previous.unwrap_or(0),
                added_ids.len(),
                deleted
            );
            if index.len() - index.live_len() > index.len() / 3 {
                (None, Vec::new(), String::new(), Some(old_paths))
            } else {
                (Some(index), ids, message, Some(old_paths))
            }
        }
        None => (None, Vec::new(), String::new(), None),
    };
    let (index, ids, message) = match index {
        Some(index) => (index, ids, message),
        None => {
            let index = Hnsw::build_owned(data.vectors.clone(), metric, HnswParams::default(), Some(&progress));
            (index, data.ids.clone(), "built from scratch".to_string())
        }
    };
    let saved = paths
        .0
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| index.save(&paths.0))
        .and_then(|()| std::fs::write(&paths.1, serde_json::to_vec(&ids).expect("ids serialize")));
    let message = match &saved {
        Ok(()) => {
            // The previous version's files are superseded; only the newest is kept.
            if let Some((old_index, old_ids)) = old_paths.filter(|p| p.0 != paths.0) {
                let _ = std::fs::remove_file(old_index);
                let _ = std::fs::remove_file(old_ids);
            }
            message
        }
        Err(e) => format!("{message}; kept in memory only: {e}"),
    };
    if let Some(job) = job {
        let _ = store.update_job(job, data.ids.len() as i64, Some(("done", Some(&message))));
    }
    Some(publish(index, ids))
}

/// The `k` items nearest to a frame, a label or a vector; viewers may ask.
pub fn similar(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    request: &SimilarRequest,
) -> ServiceResult<Similar> {
    let (_, dataset) = access::dataset(&services.store, user, project, dataset, ProjectRole::Viewer)?;
    let (space, metric) = (request.space, request.metric);
    if request.k == 0 || request.k > 1000 {
        return Err(ServiceError::invalid("k", "k must be between 1 and 1000"));
    }
    let given = [request.frame_id.is_some(), request.label_id.is_some(), request.vector.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ServiceError::invalid("frame_id", "give exactly one of frame_id, label_id and vector"));
    }
    let (store, dataset, cache) = (&services.store, &dataset, &services.indexes);
    let data = cache.space_vectors(store, dataset, space)?;
    let (query, exclude): (Vec<f32>, Option<u32>) = if let Some(vector) = &request.vector {
        if vector.len() != data.vectors.dim() {
            return Err(ServiceError::invalid(
                "vector",
                format!("the {} space has {} dimensions", space_name(space), data.vectors.dim()),
            ));
        }
        (vector.clone(), None)
    } else {
        let (field, id) = match (&request.frame_id, &request.label_id) {
            (Some(frame), _) => ("frame_id", frame),
            (_, Some(label)) => ("label_id", label),
            _ => unreachable!("checked above"),
        };
        if (field == "frame_id") != (space == Space::Frames) {
            return Err(ServiceError::invalid(
                field,
                format!("{field} does not name an item of the {} space", space_name(space)),
            ));
        }
        let position = *data
            .positions
            .get(id)
            .ok_or_else(|| ServiceError::invalid(field, format!("{id:?} has no embedding in this dataset")))?
            as usize;
        (data.vectors.get(position as u32).to_vec(), Some(position as u32))
    };
    let allowed: Option<Vec<bool>> = if request.filter.is_empty() {
        None
    } else {
        let frames = store.current_frames(dataset)?;
        let passing: std::collections::HashSet<String> = frames
            .into_iter()
            .filter(|f| {
                let metadata: serde_json::Map<String, Value> = serde_json::from_str(&f.metadata).unwrap_or_default();
                request.filter.iter().all(|(key, value)| metadata.get(key) == Some(value))
            })
            .map(|f| f.frame_id)
            .collect();
        Some(data.frames.iter().map(|f| passing.contains(f)).collect())
    };
    let allow = |id: u32| Some(id) != exclude && allowed.as_ref().is_none_or(|a| a[id as usize]);
    let allowed_count = allowed.as_ref().map_or(data.ids.len(), |a| a.iter().filter(|x| **x).count());
    // A very selective filter makes a graph walk long; exact search over the few allowed is faster.
    let use_index = data.ids.len() > cache.exact_limit && allowed_count * 20 > data.ids.len();
    let (neighbors, method) =
        match use_index.then(|| ready_index(cache, store, dataset, space, metric, &data)).flatten() {
            Some(built) => {
                let ef = (request.k * 2).max(64);
                // Nodes are numbered by insertion; results go back to positions in `data`.
                let allow_node = |node: u32| {
                    let position = built.positions[node as usize];
                    position != u32::MAX && allow(position)
                };
                let found = built.index.search_filtered(&query, request.k, ef, Some(&allow_node));
                let found = found
                    .into_iter()
                    .map(|n| milkglass_insight::Neighbor { id: built.positions[n.id as usize], distance: n.distance })
                    .collect();
                (found, SearchMethod::Hnsw)
            }
            None => (exact_knn_unprepared(&data.vectors, metric, &query, request.k, Some(&allow)), SearchMethod::Exact),
        };
    let neighbors = neighbors
        .iter()
        .map(|n| {
            let position = n.id as usize;
            SimilarItem {
                label_id: (space == Space::Labels).then(|| data.ids[position].clone()),
                frame_id: data.frames[position].clone(),
                distance: n.distance,
            }
        })
        .collect();
    Ok(Similar { space, metric, method, version: dataset.version, neighbors })
}

/// A per-point value the map can colour by, aligned with its points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointAttribute {
    /// Frames: the most common ground-truth class on the frame; labels: the label's class.
    Class,
    /// How many ground-truth labels the frame (or the label's frame) has.
    LabelCount,
    /// A frame metadata value (`meta.KEY`), for labels their frame's.
    Meta(String),
    /// How far one inference set agrees with the ground truth: for a frame, the share of its
    /// labels matched by a same-class inference at IoU 0.5 or more; for a label, 1 or 0.
    Agreement,
}

impl PointAttribute {
    pub fn parse(text: &str) -> ServiceResult<PointAttribute> {
        match text {
            "class" => Ok(PointAttribute::Class),
            "label_count" => Ok(PointAttribute::LabelCount),
            "agreement" => Ok(PointAttribute::Agreement),
            _ => match text.strip_prefix("meta.") {
                Some(key) if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    Ok(PointAttribute::Meta(key.to_string()))
                }
                _ => Err(ServiceError::invalid(
                    "attributes",
                    format!("{text:?}: use class, label_count, agreement or meta.KEY"),
                )),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            PointAttribute::Class => "class".into(),
            PointAttribute::LabelCount => "label_count".into(),
            PointAttribute::Agreement => "agreement".into(),
            PointAttribute::Meta(key) => format!("meta.{key}"),
        }
    }
}

/// The ids of a space's points in map order, and the asked attributes, one value per point.
#[derive(Debug, Clone, Serialize)]
pub struct MapPoints {
    pub ids: Vec<String>,
    /// Attribute name to its values, aligned with `ids` (`null` where a point has none).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Vec<Value>>,
}

/// Which ground-truth labels one inference set matches: per frame, each label matched at most
/// once by a same-class inference, greedily by IoU (0.5 or more).
fn matched_labels<'a>(labels: &'a [BoxRecord], inferences: &[BoxRecord]) -> std::collections::HashSet<&'a str> {
    let mut by_frame: HashMap<&str, (Vec<&BoxRecord>, Vec<&BoxRecord>)> = HashMap::new();
    for l in labels {
        by_frame.entry(l.frame_id.as_str()).or_default().0.push(l);
    }
    for i in inferences {
        if let Some(entry) = by_frame.get_mut(i.frame_id.as_str()) {
            entry.1.push(i);
        }
    }
    let bbox = |r: &BoxRecord| Bbox::new(r.left, r.top, r.width, r.height);
    let mut matched = std::collections::HashSet::new();
    for (truths, guesses) in by_frame.values() {
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (a, t) in truths.iter().enumerate() {
            for (b, g) in guesses.iter().enumerate() {
                let iou = bbox(t).iou(&bbox(g));
                if t.class_id.is_some() && t.class_id == g.class_id && iou >= 0.5 {
                    pairs.push((iou, a, b));
                }
            }
        }
        pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
        let (mut used_t, mut used_g) = (vec![false; truths.len()], vec![false; guesses.len()]);
        for (_, a, b) in pairs {
            if !used_t[a] && !used_g[b] {
                used_t[a] = true;
                used_g[b] = true;
                matched.insert(truths[a].label_id.as_str());
            }
        }
    }
    matched
}

/// The ids of a space's points, in map order, with per-point attributes; viewers may ask.
/// `agreement` needs the inference set to compare with.
pub fn map_ids(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    space: Space,
    attributes: &[PointAttribute],
    inference_set: Option<&str>,
) -> ServiceResult<MapPoints> {
    let (project, dataset) = access::dataset(&services.store, user, project, dataset, ProjectRole::Viewer)?;
    let store = &services.store;
    let data = services.indexes.space_vectors(store, &dataset, space)?;
    let mut answer = MapPoints { ids: data.ids.clone(), attributes: BTreeMap::new() };
    if attributes.is_empty() {
        return Ok(answer);
    }
    let names: HashMap<i64, String> = project.classes.0.iter().map(|c| (i64::from(c.id), c.name.clone())).collect();
    let boxes = store.current_boxes(&dataset, None)?;
    let mut per_frame: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut label_class: HashMap<&str, Option<i64>> = HashMap::new();
    for b in &boxes {
        per_frame.entry(b.frame_id.as_str()).or_default().extend(b.class_id);
        label_class.insert(b.label_id.as_str(), b.class_id);
    }
    let wants_metadata = attributes.iter().any(|a| matches!(a, PointAttribute::Meta(_)));
    let metadata: HashMap<String, serde_json::Map<String, Value>> = if wants_metadata {
        let frames = store.current_frames(&dataset)?;
        frames.into_iter().map(|f| (f.frame_id, serde_json::from_str(&f.metadata).unwrap_or_default())).collect()
    } else {
        HashMap::new()
    };
    let inferences = if attributes.contains(&PointAttribute::Agreement) {
        let name = inference_set
            .ok_or_else(|| ServiceError::invalid("inference_set", "the agreement attribute needs an inference_set"))?;
        let set = store.inference_set(&dataset, name)?;
        store.current_boxes(&dataset, Some(&set))?
    } else {
        Vec::new()
    };
    let matched = matched_labels(&boxes, &inferences);
    // Per frame: (labels, labels matched), in one pass.
    let mut frame_agreement: HashMap<&str, (usize, usize)> = HashMap::new();
    if attributes.contains(&PointAttribute::Agreement) {
        for b in &boxes {
            let entry = frame_agreement.entry(b.frame_id.as_str()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(matched.contains(b.label_id.as_str()));
        }
    }
    let frame_class = frame_classes(&boxes);
    for attribute in attributes {
        let values = answer
            .ids
            .iter()
            .zip(&data.frames)
            .map(|(id, frame)| match attribute {
                PointAttribute::Class => {
                    let class = match space {
                        Space::Frames => frame_class.get(frame.as_str()).copied(),
                        Space::Labels => label_class.get(id.as_str()).copied().flatten(),
                    };
                    class.and_then(|c| names.get(&c)).map_or(Value::Null, |n| Value::String(n.clone()))
                }
                PointAttribute::LabelCount => json!(per_frame.get(frame.as_str()).map_or(0, Vec::len)),
                PointAttribute::Agreement => match space {
                    Space::Labels => json!(if matched.contains(id.as_str()) { 1.0 } else { 0.0 }),
                    Space::Frames => match frame_agreement.get(frame.as_str()) {
                        Some(&(all, hit)) if all > 0 => json!(hit as f64 / all as f64),
                        _ => Value::Null,
                    },
                },
                PointAttribute::Meta(key) => {
                    metadata.get(frame).and_then(|m| m.get(key)).cloned().unwrap_or(Value::Null)
                }
            })
            .collect();
        answer.attributes.insert(attribute.name(), values);
    }
    Ok(answer)
}

/// The 2-D map of a space: how many points, and flat little-endian f32 pairs in the order of
/// [`map_ids`]; viewers may ask.
pub fn embedding_map(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    space: Space,
    layout: Layout,
) -> ServiceResult<(usize, bytes::Bytes)> {
    let (_, dataset) = access::dataset(&services.store, user, project, dataset, ProjectRole::Viewer)?;
    services.indexes.map(&services.store, &dataset, space, layout)
}

/// What the neighbour analytics rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeighborKind {
    /// Every point by how far its nearest neighbours are (1: the most isolated), most unique first.
    #[default]
    Uniqueness,
    /// Groups of points joined by neighbour edges no longer than `max_distance`, largest first.
    NearDuplicates,
    /// Points whose neighbours are much farther than usual (robust z-score over `min_score`).
    Outliers,
    /// Labelled points whose neighbours carry another class, most disagreeing first.
    Disagreement,
}

#[derive(Debug, Clone)]
pub struct NeighborQuery {
    pub space: Space,
    pub kind: NeighborKind,
    pub limit: usize,
    pub offset: usize,
    /// Cosine distance within which two points are near-duplicates.
    pub max_distance: f32,
    /// Robust z-score above which a point is an outlier.
    pub min_score: f32,
}

/// One ranked point (a frame, or a label with its frame) or one group of near-duplicates.
#[derive(Debug, Clone, Serialize)]
pub struct NeighborItem {
    pub frame_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_id: Option<String>,
    pub score: f32,
    /// Near-duplicates: every member of the group (frame ids, or label ids in the labels space).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Vec<String>>,
    /// Disagreement: the point's class and the class most of its neighbours carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neighbor_class: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NeighborAnalytics {
    pub space: Space,
    pub kind: NeighborKind,
    pub version: i64,
    /// Ranked items before paging.
    pub total: usize,
    pub items: Vec<NeighborItem>,
}

/// Neighbour analytics over a space's 10-nearest-neighbour graph (cosine): uniqueness,
/// near-duplicate groups, outliers and neighbour label disagreement, ranked and paged; viewers
/// may ask. The graph is built once per version and kept.
pub fn neighbors(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    query: &NeighborQuery,
) -> ServiceResult<NeighborAnalytics> {
    let (project, dataset) = access::dataset(&services.store, user, project, dataset, ProjectRole::Viewer)?;
    if query.limit == 0 || query.limit > 10_000 {
        return Err(ServiceError::invalid("limit", "limit must be between 1 and 10000"));
    }
    if !(0.0..=2.0).contains(&query.max_distance) {
        return Err(ServiceError::invalid("max_distance", "a cosine distance, between 0 and 2"));
    }
    let store = &services.store;
    let data = services.indexes.space_vectors(store, &dataset, query.space)?;
    let graph = services.indexes.graph(&dataset, query.space, &data);
    let item = |position: u32, score: f32| NeighborItem {
        frame_id: data.frames[position as usize].clone(),
        label_id: (query.space == Space::Labels).then(|| data.ids[position as usize].clone()),
        score,
        group: None,
        class: None,
        neighbor_class: None,
    };
    let ranked: Vec<NeighborItem> = match query.kind {
        NeighborKind::Uniqueness => {
            let scores = milkglass_insight::neighbors::uniqueness(&graph);
            let mut order: Vec<u32> = (0..scores.len() as u32).collect();
            order.sort_by(|a, b| scores[*b as usize].total_cmp(&scores[*a as usize]).then(a.cmp(b)));
            order.into_iter().map(|p| item(p, scores[p as usize])).collect()
        }
        NeighborKind::Outliers => milkglass_insight::neighbors::outliers(&graph, query.min_score)
            .into_iter()
            .map(|o| item(o.id, o.score))
            .collect(),
        NeighborKind::NearDuplicates => milkglass_insight::neighbors::near_duplicate_groups(&graph, query.max_distance)
            .into_iter()
            .map(|group| NeighborItem {
                group: Some(group.iter().map(|&p| data.ids[p as usize].clone()).collect()),
                ..item(group[0], group.len() as f32)
            })
            .collect(),
        NeighborKind::Disagreement => {
            let names: HashMap<u32, String> = project.classes.0.iter().map(|c| (c.id, c.name.clone())).collect();
            let boxes = store.current_boxes(&dataset, None)?;
            let classes: Vec<Option<u32>> = match query.space {
                Space::Labels => {
                    let by_label: HashMap<&str, Option<i64>> =
                        boxes.iter().map(|b| (b.label_id.as_str(), b.class_id)).collect();
                    data.ids.iter().map(|id| by_label.get(id.as_str()).copied().flatten().map(|c| c as u32)).collect()
                }
                Space::Frames => {
                    let frame_class = frame_classes(&boxes);
                    data.ids.iter().map(|id| frame_class.get(id.as_str()).map(|&c| c as u32)).collect()
                }
            };
            let (points, _) = label_agreement(&graph, &classes);
            points
                .into_iter()
                .filter(|a| a.disagreement > 0.0)
                .map(|a| NeighborItem {
                    class: names.get(&a.class).cloned(),
                    neighbor_class: names.get(&a.neighbor_class).cloned(),
                    ..item(a.id, a.disagreement)
                })
                .collect()
        }
    };
    Ok(NeighborAnalytics {
        space: query.space,
        kind: query.kind,
        version: dataset.version,
        total: ranked.len(),
        items: ranked.into_iter().skip(query.offset).take(query.limit).collect(),
    })
}

/// Uniqueness and outlier score of every point of a space with embeddings, over the same
/// kept 10-NN graph the neighbour analytics rank by.
fn point_scores(
    indexes: &IndexCache,
    store: &Store,
    dataset: &DatasetInfo,
    space: Space,
) -> ServiceResult<Vec<milkglass_store::PointScore>> {
    let data = indexes.space_vectors(store, dataset, space)?;
    if data.ids.is_empty() {
        return Ok(Vec::new());
    }
    let graph = indexes.graph(dataset, space, &data);
    let uniqueness = milkglass_insight::neighbors::uniqueness(&graph);
    let mut outliers: Vec<Option<f64>> = vec![None; data.ids.len()];
    for o in milkglass_insight::neighbors::outliers(&graph, f32::NEG_INFINITY) {
        outliers[o.id as usize] = Some(f64::from(o.score));
    }
    Ok(data
        .ids
        .iter()
        .zip(uniqueness)
        .zip(outliers)
        .map(|((id, u), o)| milkglass_store::PointScore { id: id.clone(), uniqueness: f64::from(u), outlier_score: o })
        .collect())
}

/// Every insight score of the dataset's current version, for its score tables: the neighbour
/// scores of both spaces (where they have embeddings) and each inference set's ranked label
/// errors, dismissed or not (dismissals are the queue's, and change without a new version).
pub(crate) fn insight_scores(
    indexes: &IndexCache,
    store: &Store,
    dataset: &DatasetInfo,
) -> ServiceResult<milkglass_store::InsightScores> {
    let project = store.project(&dataset.project)?;
    let mut scores = milkglass_store::InsightScores::default();
    if dataset.frame_embedding_dim.is_some() {
        scores.frames = point_scores(indexes, store, dataset, Space::Frames)?;
    }
    if dataset.label_embedding_dim.is_some() {
        scores.labels = point_scores(indexes, store, dataset, Space::Labels)?;
    }
    for set in store.list_inference_sets(dataset)? {
        let ranked = ranked_issues(indexes, store, &project, dataset, &set)?;
        let issues = ranked
            .issues
            .iter()
            .map(|i| milkglass_store::IssueScore {
                frame_id: i.frame_id.clone(),
                kind: i.kind.name().to_string(),
                score: i.score,
                label_id: i.label_id.clone(),
                label_class: i.label_class.clone(),
                inference_id: i.inference_id.clone(),
                other_label_id: i.other_label_id.clone(),
                suggested_class: i.suggested_class.clone(),
                iou: i.iou,
            })
            .collect();
        scores.issues.push((set.name.clone(), issues));
    }
    Ok(scores)
}

/// How a label-error issue is remembered as "not an issue": its kind and the ids of its label and
/// inference, which stay the same across dataset versions.
fn issue_key(kind: IssueKind, label_id: Option<&str>, inference_id: Option<&str>) -> String {
    format!("{}|{}|{}", kind.name(), label_id.unwrap_or(""), inference_id.unwrap_or(""))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dismissal {
    pub kind: IssueKind,
    pub label_id: Option<String>,
    pub inference_id: Option<String>,
}

/// Marks an issue "not an issue", for every later version; owners only.
pub fn dismiss(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    dismissal: &Dismissal,
) -> ServiceResult<String> {
    let (_, dataset) = access::dataset(&services.store, user, project, dataset, ProjectRole::Owner)?;
    if dismissal.label_id.is_none() && dismissal.inference_id.is_none() {
        return Err(ServiceError::invalid("label_id", "name the issue's label_id or inference_id"));
    }
    let key = issue_key(dismissal.kind, dismissal.label_id.as_deref(), dismissal.inference_id.as_deref());
    services.store.dismiss_issue(&dataset, &key)?;
    Ok(key)
}

/// The forms a segment is exported in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    #[default]
    Jsonl,
    Csv,
}

impl ExportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "application/x-ndjson",
            ExportFormat::Csv => "text/csv",
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// A segment's items as JSON Lines or CSV (`frame_id`, and for labels the `label_id` first);
/// viewers may ask.
pub fn export_segment(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    name: &str,
    format: ExportFormat,
) -> ServiceResult<String> {
    let (_, dataset) = access::dataset(&services.store, user, project, dataset, ProjectRole::Viewer)?;
    let store = &services.store;
    let segment = store.segment(&dataset, name)?;
    let labels = segment.item_kind == "labels";
    let frames: HashMap<String, String> = if labels {
        store.current_boxes(&dataset, None)?.into_iter().map(|b| (b.label_id, b.frame_id)).collect()
    } else {
        HashMap::new()
    };
    let mut out = String::new();
    match format {
        ExportFormat::Jsonl => {
            for id in &segment.items {
                let line = if labels {
                    json!({ "segment": segment.name, "label_id": id, "frame_id": frames.get(id) })
                } else {
                    json!({ "segment": segment.name, "frame_id": id })
                };
                out.push_str(&line.to_string());
                out.push('\n');
            }
        }
        ExportFormat::Csv => {
            out.push_str(if labels { "label_id,frame_id\n" } else { "frame_id\n" });
            for id in &segment.items {
                out.push_str(&csv_field(id));
                if labels {
                    out.push(',');
                    out.push_str(&csv_field(frames.get(id).map_or("", String::as_str)));
                }
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    /// The dataset (of the same project) to collect from, e.g. an unlabeled pool.
    pub from_dataset: String,
    /// The name of the segment saved there.
    pub name: String,
    /// Nearest frames per segment frame.
    #[serde(default = "default_k")]
    pub k: usize,
}

/// Collection: for each frame of a frames segment, its `k` most similar frames in another
/// dataset (cosine over frame embeddings); the union, nearest first, saved as a segment there.
/// Viewers of the source may collect into a dataset they own.
pub fn collect(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    segment: &str,
    request: &Collection,
) -> ServiceResult<Segment> {
    let (_, source) = access::dataset(&services.store, user, project, dataset, ProjectRole::Viewer)?;
    let (_, target) = access::dataset(&services.store, user, project, &request.from_dataset, ProjectRole::Owner)?;
    if request.k == 0 || request.k > 1000 {
        return Err(ServiceError::invalid("k", "k must be between 1 and 1000"));
    }
    let (store, source, target) = (&services.store, &source, &target);
    let segment = store.segment(source, segment)?;
    if segment.item_kind != "frames" {
        return Err(ServiceError::invalid("segment", "collection works from a segment of frames"));
    }
    let here = services.indexes.space_vectors(store, source, Space::Frames)?;
    let there = services.indexes.space_vectors(store, target, Space::Frames)?;
    if here.vectors.dim() != there.vectors.dim() {
        return Err(ServiceError::invalid(
            "from_dataset",
            "the two datasets' frame embeddings have different dimensions",
        ));
    }
    let position: HashMap<&str, u32> = here.ids.iter().enumerate().map(|(p, id)| (id.as_str(), p as u32)).collect();
    let mut prepared = there.vectors.clone();
    prepared.prepare(Metric::Cosine);
    let mut best: HashMap<u32, f32> = HashMap::new();
    for id in &segment.items {
        let Some(&p) = position.get(id.as_str()) else { continue };
        for n in exact_knn(&prepared, Metric::Cosine, here.vectors.get(p), request.k, None) {
            let entry = best.entry(n.id).or_insert(f32::INFINITY);
            *entry = entry.min(n.distance);
        }
    }
    let mut chosen: Vec<(u32, f32)> = best.into_iter().collect();
    chosen.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let spec = SegmentSpec {
        name: Some(request.name.clone()),
        description: Some(format!(
            "collected from segment {:?} of dataset {:?}, {} nearest each",
            segment.name, source.name, request.k
        )),
        state: None,
        item_kind: Some("frames".to_string()),
        items: Some(chosen.iter().map(|(p, _)| there.ids[*p as usize].clone()).collect()),
    };
    Ok(store.create_segment(target, &spec)?)
}
