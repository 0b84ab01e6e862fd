//! Embedding generation for projects that did not bring their own vectors: a background job that reads
//! each frame's image once, embeds it and its ground-truth boxes with the pretrained model
//! (`milkglass-embed`), and attaches the vectors as an embeddings upload would (one atomic batch per
//! chunk of frames). Progress is a job in the dataset's status.
//!
//! Image bytes come through `ImageSource`, which the asset layer provides: it is the one place that
//! decides, by the project's data-access mode, whether and how raw data may be read. Anonymous projects
//! get no `ImageSource` (409), so no job can start for them.

use crate::{ErrorKind, ServiceError, ServiceResult, Services, access, on_store};
use futures::future::BoxFuture;
use milkglass_core::ProjectRole;
use milkglass_embed::{Embedder, ImageJob, Region, embed_images};
use milkglass_store::{DatasetInfo, EmbeddingRecord, EmbeddingTarget, UploadKind, User};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Reads the bytes behind a frame's image URL, or says why it cannot.
pub type ImageSource = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Vec<u8>, String>> + Send + Sync>;

/// The job kind shown in the dataset status.
pub const JOB_KIND: &str = "embed";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// Also embed each ground-truth box's crop (label embeddings). Default true.
    #[serde(default = "yes")]
    pub crops: bool,
    /// Frames read and embedded together. Default 32.
    #[serde(default)]
    pub batch: Option<usize>,
}

fn yes() -> bool {
    true
}

const MAX_BATCH: usize = 256;

/// One server's embedding model, loaded on first use and kept; a failed load is tried
/// again by the next job. (ONNX Runtime's one environment per process is milkglass-embed's
/// business.)
#[derive(Default)]
pub struct ModelSlot(Mutex<Option<Arc<Mutex<Embedder>>>>);

impl ModelSlot {
    fn get(&self) -> Result<Arc<Mutex<Embedder>>, String> {
        // Held while loading, so that two jobs never load the model twice.
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(model) = slot.as_ref() {
            return Ok(model.clone());
        }
        let model = Arc::new(Mutex::new(Embedder::discover(0).map_err(|e| e.to_string())?));
        *slot = Some(model.clone());
        Ok(model)
    }
}

/// A started embedding job; its progress is in the dataset status.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedJob {
    pub job: i64,
    pub kind: &'static str,
    /// Frames it will read.
    pub total: usize,
}

/// Checks the request and starts the job (owners only; never for anonymous projects, whose
/// raw data milkglass does not read); answers with the job's id at once.
pub async fn start(
    services: &Arc<Services>,
    user: &User,
    project: &str,
    dataset: &str,
    request: EmbedRequest,
) -> ServiceResult<EmbedJob> {
    let batch = request.batch.unwrap_or(32);
    if batch == 0 || batch > MAX_BATCH {
        return Err(ServiceError::invalid("batch", format!("must be between 1 and {MAX_BATCH}")));
    }
    let (user, p, d) = (user.clone(), project.to_string(), dataset.to_string());
    let (project, dataset) =
        on_store(services, move |store| access::dataset(store, &user, &p, &d, ProjectRole::Owner)).await?;
    let source = services.raw.image_source(services, &project, "embedding generation").await?;
    // Load the model before answering, so a missing model is the caller's error now, not a failed job later.
    let slot = services.clone();
    let model = tokio::task::spawn_blocking(move || slot.embedder.get())
        .await
        .map_err(ServiceError::internal)?
        .map_err(|e| ServiceError::new(ErrorKind::Unavailable, "model_unavailable", e))?;
    let dims = model.lock().unwrap_or_else(|e| e.into_inner()).dimensions();
    let spaces = [("frame", dataset.frame_embedding_dim, true), ("label", dataset.label_embedding_dim, request.crops)];
    for (space, existing, used) in spaces {
        if let Some(existing) = existing.filter(|&d| used && d != dims) {
            return Err(ServiceError::new(
                ErrorKind::Conflict,
                "dimension_conflict",
                format!(
                    "dataset {:?} already has {space} embeddings of dimension {existing}, and the model's have \
                     dimension {dims}; generate them into a new dataset, or keep your own",
                    dataset.name
                ),
            ));
        }
    }
    let (frames, boxes, job) = {
        let dataset = dataset.clone();
        on_store(services, move |store| {
            let frames = store.frame_image_urls(&dataset)?;
            let boxes = if request.crops { store.current_boxes(&dataset, None)? } else { Vec::new() };
            let job = store.start_job(&dataset, JOB_KIND, Some(frames.len() as i64))?;
            Ok((frames, boxes, job))
        })
        .await?
    };
    let mut crops: HashMap<String, Vec<(String, Region)>> = HashMap::new();
    for b in boxes {
        let region = Region { left: b.left, top: b.top, width: b.width, height: b.height };
        crops.entry(b.frame_id).or_default().push((b.label_id, region));
    }
    let total = frames.len();
    tokio::spawn(run(services.clone(), dataset, job, frames, crops, batch, source));
    Ok(EmbedJob { job, kind: JOB_KIND, total })
}

/// What the job did, for its final message.
#[derive(Default)]
struct Tally {
    frames: usize,
    crops: usize,
    unreadable: usize,
    first_problem: Option<String>,
}

impl Tally {
    fn problem(&mut self, frame_id: &str, why: &str) {
        self.unreadable += 1;
        self.first_problem.get_or_insert_with(|| format!("frame {frame_id:?}: {why}"));
    }

    fn message(&self) -> String {
        let mut text = format!("embedded {} frames and {} crops", self.frames, self.crops);
        if self.unreadable > 0 {
            text += &format!(
                "; {} images could not be read (first: {})",
                self.unreadable,
                self.first_problem.as_deref().unwrap_or("?")
            );
        }
        text
    }
}

async fn run(
    services: Arc<Services>,
    dataset: DatasetInfo,
    job: i64,
    frames: Vec<(String, Option<String>)>,
    crops: HashMap<String, Vec<(String, Region)>>,
    batch: usize,
    source: ImageSource,
) {
    let store = services.store.clone();
    let outcome = embed_all(&services, &dataset, job, &frames, &crops, batch, &source).await;
    let (status, message) = match outcome {
        Ok(tally) if tally.frames == 0 && !frames.is_empty() => ("failed", tally.message()),
        Ok(tally) => ("done", tally.message()),
        Err(e) => ("failed", e),
    };
    let total = frames.len() as i64;
    let _ = tokio::task::spawn_blocking(move || store.update_job(job, total, Some((status, Some(&message))))).await;
}

async fn embed_all(
    services: &Services,
    dataset: &DatasetInfo,
    job: i64,
    frames: &[(String, Option<String>)],
    crops: &HashMap<String, Vec<(String, Region)>>,
    batch: usize,
    source: &ImageSource,
) -> Result<Tally, String> {
    let store = services.store.clone();
    let mut upload = {
        let (store, dataset) = (store.clone(), dataset.clone());
        tokio::task::spawn_blocking(move || store.begin_upload(&dataset, UploadKind::Embeddings, None))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let mut tally = Tally::default();
    let mut done = 0;
    let no_crops = Vec::new();
    for chunk in frames.chunks(batch) {
        // Each image is read once, the chunk's reads concurrently.
        let reads = chunk.iter().map(|(frame_id, url)| {
            let source = source.clone();
            let url = url.clone();
            let frame_id = frame_id.clone();
            async move {
                match url {
                    None => (frame_id, Err("it has no image sensor".to_string())),
                    Some(url) => (frame_id, source(url).await),
                }
            }
        });
        let read: Vec<(String, Result<Vec<u8>, String>)> = futures::future::join_all(reads).await;
        let mut readable = Vec::new();
        for (frame_id, bytes) in read {
            match bytes {
                Ok(bytes) => readable.push((frame_id, bytes)),
                Err(why) => tally.problem(&frame_id, &why),
            }
        }
        let regions: Vec<Vec<Region>> = readable
            .iter()
            .map(|(id, _)| crops.get(id).unwrap_or(&no_crops).iter().map(|(_, r)| *r).collect())
            .collect();
        let jobs: Vec<ImageJob> =
            readable.iter().zip(&regions).map(|((_, bytes), r)| ImageJob { bytes, crops: r }).collect();
        let results = {
            let model = services.embedder.get()?;
            let mut model = model.lock().unwrap_or_else(|e| e.into_inner());
            tokio::task::block_in_place(|| embed_images(&mut model, &jobs, batch))
        };
        let mut records = Vec::new();
        for ((frame_id, _), result) in readable.iter().zip(results) {
            match result {
                Err(e) => tally.problem(frame_id, &e.to_string()),
                Ok(vectors) => {
                    tally.frames += 1;
                    records.push(EmbeddingRecord {
                        target: EmbeddingTarget::Frame(frame_id.clone()),
                        vector: vectors.frame,
                    });
                    let labels = crops.get(frame_id).unwrap_or(&no_crops);
                    for ((label_id, _), vector) in labels.iter().zip(vectors.crops) {
                        if let Some(vector) = vector {
                            tally.crops += 1;
                            records.push(EmbeddingRecord { target: EmbeddingTarget::Label(label_id.clone()), vector });
                        }
                    }
                }
            }
        }
        done += chunk.len();
        let (store, upload_ref) = (store.clone(), &mut upload);
        let written = tokio::task::block_in_place(|| -> Result<(), String> {
            if !records.is_empty() {
                store.write_embeddings(upload_ref, &records).map_err(|e| e.to_string())?;
            }
            store.update_job(job, done as i64, None).map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            let _ = tokio::task::block_in_place(|| store.finish_upload(&upload, Some(&e)));
            return Err(e);
        }
    }
    tokio::task::block_in_place(|| store.finish_upload(&upload, None)).map_err(|e| e.to_string())?;
    Ok(tally)
}
