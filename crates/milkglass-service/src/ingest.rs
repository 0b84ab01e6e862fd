//! Streamed uploads: JSON Lines or Arrow IPC in, atomic batches out.
//!
//! The body is read synchronously on a blocking thread (through `SyncIoBridge`), so
//! at most one batch of records is in memory however large the upload is.

use crate::{ErrorKind, ServiceError, ServiceResult, Services, access, parse_json};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type};
use arrow::ipc::reader::StreamReader;
use milkglass_core::ProjectRole;
use milkglass_core::{Frame, Geometry, Invalid, Label, Sensor, SensorKind, metadata_from_json, parse_timestamp};
use milkglass_store::User;
use milkglass_store::{BatchReport, EmbeddingRecord, EmbeddingTarget, Store, Upload, UploadKind};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read};
use std::sync::Arc;

/// Body formats an upload accepts, chosen by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    ArrowStream,
}

impl Format {
    pub fn from_content_type(content_type: Option<&str>) -> Result<Format, ServiceError> {
        let mime = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match mime.as_str() {
            "application/x-ndjson" | "application/jsonl" | "application/json-lines" | "application/jsonlines" => {
                Ok(Format::JsonLines)
            }
            "application/vnd.apache.arrow.stream" => Ok(Format::ArrowStream),
            _ => Err(ServiceError::new(
                ErrorKind::Unsupported,
                "unsupported_media_type",
                format!(
                    "uploads are JSON Lines (Content-Type: application/x-ndjson) or Arrow IPC streams \
                     (Content-Type: application/vnd.apache.arrow.stream); got {:?}",
                    mime
                ),
            )),
        }
    }
}

/// Longest accepted JSON line: a frame with a 12,000-d embedding fits many times over.
const MAX_LINE_BYTES: usize = 64 << 20;

/// One embedding line: `{"frame_id": ..., "embedding": [...]}` or `{"label_id": ..., ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingLine {
    #[serde(default)]
    frame_id: Option<String>,
    #[serde(default)]
    label_id: Option<String>,
    embedding: Vec<f32>,
}

impl EmbeddingLine {
    fn into_record(self) -> Result<EmbeddingRecord, Invalid> {
        let target = match (self.frame_id, self.label_id) {
            (Some(id), None) => EmbeddingTarget::Frame(id),
            (None, Some(id)) => EmbeddingTarget::Label(id),
            _ => return Err(Invalid::new("frame_id", "give exactly one of frame_id or label_id")),
        };
        Ok(EmbeddingRecord { target, vector: self.embedding })
    }
}

/// Records of one upload, parsed lazily from the body.
enum Records {
    Frames(Vec<Frame>),
    Labels(Vec<Label>),
    Embeddings(Vec<EmbeddingRecord>),
}

impl Records {
    fn empty(kind: UploadKind) -> Records {
        match kind {
            UploadKind::Frames => Records::Frames(Vec::new()),
            UploadKind::Labels | UploadKind::Inferences => Records::Labels(Vec::new()),
            UploadKind::Embeddings | UploadKind::Delete => Records::Embeddings(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Records::Frames(v) => v.len(),
            Records::Labels(v) => v.len(),
            Records::Embeddings(v) => v.len(),
        }
    }

    fn write(&self, store: &Store, upload: &mut Upload) -> Result<BatchReport, ServiceError> {
        Ok(match self {
            Records::Frames(v) => store.write_frames(upload, v)?,
            Records::Labels(v) => store.write_labels(upload, v)?,
            Records::Embeddings(v) => store.write_embeddings(upload, v)?,
        })
    }
}

/// What one upload committed. `upload_id` and `version` are `None` when nothing was.
#[derive(Debug, Clone, Serialize)]
pub struct UploadSummary {
    pub upload_id: Option<i64>,
    pub version: Option<i64>,
    pub records: usize,
    pub batches: usize,
}

/// Where an upload goes: a dataset, and for inferences (or their embeddings) an inference set.
pub struct UploadTarget<'a> {
    pub project: &'a str,
    pub dataset: &'a str,
    pub inference_set: Option<&'a str>,
    pub kind: UploadKind,
}

/// The dataset (and inference set) an upload goes to, once the caller may write there: owners
/// only. Adapters call it before they read a body, so a refused upload is never read. Blocking.
pub fn check_target(
    services: &Services,
    user: &User,
    target: &UploadTarget<'_>,
) -> ServiceResult<(milkglass_store::DatasetInfo, Option<milkglass_store::InferenceSetInfo>)> {
    let (_, dataset) = access::dataset(&services.store, user, target.project, target.dataset, ProjectRole::Owner)?;
    let set = target.inference_set.map(|set| services.store.inference_set(&dataset, set)).transpose()?;
    Ok((dataset, set))
}

/// Streams `body` into the store, batch by batch; owners only. Blocking: it reads the body
/// and writes SQLite. On an error the batches before it stay committed, and the error's
/// details say how much (`details.committed`).
pub fn upload(
    services: &Services,
    user: &User,
    target: UploadTarget<'_>,
    format: Format,
    body: impl Read + Send,
) -> ServiceResult<UploadSummary> {
    let store = &services.store;
    let (dataset, set) = check_target(services, user, &target)?;
    let mut upload = store.begin_upload(&dataset, target.kind, set.as_ref())?;
    let result = run_upload(store, &mut upload, format, body, services.config.batch_size);
    store.finish_upload(&upload, result.as_ref().err().map(|e| e.message.as_str()))?;
    let summary = UploadSummary {
        upload_id: upload.id(),
        version: upload.version(),
        records: upload.records,
        batches: upload.batches,
    };
    if summary.version.is_some() {
        services.preparer.request(target.project, target.dataset);
    }
    match result {
        Ok(()) => Ok(summary),
        Err(e) => Err(e.with_details(serde_json::json!({ "committed": summary }))),
    }
}

/// What a new version's first requests would wait for, made ahead of them: its counts,
/// filter index, map, similarity index, label errors and metrics, and SQL tables. Run by the preparation queue, which
/// calls it once for a burst of uploads; it reads the version that is current when it runs.
pub(crate) fn prepare_newest(
    store: &Store,
    indexes: &Arc<crate::insights::IndexCache>,
    frame_indexes: &crate::frame_filters::FrameIndexes,
    (project, name): &crate::preparation::DatasetKey,
) {
    let prepared = store.dataset_status(project, name).map_err(ServiceError::from).and_then(|status| {
        frame_indexes.build_here(store, &status.dataset);
        indexes.warm(store, &status.dataset)?;
        crate::insights::warm_inference_sets(indexes, store, &status.dataset)?;
        crate::dataset_tables::prepare(indexes, store, &status.dataset)
    });
    if let Err(e) = prepared {
        tracing::debug!("preparing {project}/{name} after an upload: {e}");
    }
}

/// Reads the whole body and writes it batch by batch. On error, the batches written
/// before it stay committed; the error says how many.
pub fn run_upload(
    store: &Store,
    upload: &mut Upload,
    format: Format,
    body: impl Read + Send,
    batch_size: usize,
) -> Result<(), ServiceError> {
    // Decoding and writing overlap: one thread parses the next batch while this one
    // commits the last. The channel holds one batch, so memory stays at two batches.
    let (batches, received) = std::sync::mpsc::sync_channel::<Result<Records, ServiceError>>(1);
    let kind = upload.kind;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Err(e) = decode(kind, format, body, batch_size, &batches) {
                let _ = batches.send(Err(e));
            }
        });
        // Leaving early (an error) drops the receiver, which stops the decoder at its next batch.
        for batch in received {
            batch?.write(store, upload)?;
        }
        Ok(())
    })
}

/// Parses the body into batches of exactly `batch_size` records (the last may be
/// smaller) and sends them in order. Stops quietly when the writer has gone.
fn decode(
    kind: UploadKind,
    format: Format,
    body: impl Read,
    batch_size: usize,
    batches: &std::sync::mpsc::SyncSender<Result<Records, ServiceError>>,
) -> Result<(), ServiceError> {
    let mut pending = Records::empty(kind);
    let mut parsed = 0usize;
    let flush = |pending: &mut Records| -> Result<(), ServiceError> {
        if pending.len() > 0 {
            let full = std::mem::replace(pending, Records::empty(kind));
            // A send error means the writer stopped on an error of its own, which it reports.
            let _ = batches.send(Ok(full));
        }
        Ok(())
    };
    match format {
        Format::JsonLines => {
            let mut reader = std::io::BufReader::with_capacity(1 << 20, body);
            let mut line = Vec::new();
            let mut line_no = 0usize;
            loop {
                line.clear();
                let n = read_line(&mut reader, &mut line)?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let index = parsed;
                let locate = |e: ServiceError| -> ServiceError {
                    let field = e.field.clone().unwrap_or_default();
                    let field = if field.is_empty() { format!("[{index}]") } else { format!("[{index}].{field}") };
                    ServiceError { field: Some(field), message: format!("line {line_no}: {}", e.message), ..e }
                };
                match &mut pending {
                    Records::Frames(v) => v.push(parse_json(&line).map_err(locate)?),
                    Records::Labels(v) => v.push(parse_json(&line).map_err(locate)?),
                    Records::Embeddings(v) => v.push(
                        parse_json::<EmbeddingLine>(&line)
                            .map_err(locate)?
                            .into_record()
                            .map_err(|e| locate(e.into()))?,
                    ),
                }
                parsed += 1;
                if pending.len() >= batch_size {
                    flush(&mut pending)?;
                }
            }
        }
        Format::ArrowStream => {
            let body = milkglass_store::CheckedIpcStream::new(std::io::BufReader::with_capacity(1 << 20, body));
            let mut reader = milkglass_store::decode_untrusted(|| StreamReader::try_new(body, None))
                .map_err(|e| ServiceError::invalid("body", format!("not an Arrow IPC stream: {e}")))?;
            while let Some(batch) =
                milkglass_store::decode_untrusted(|| reader.next().transpose()).map_err(arrow_read_error)?
            {
                let mut start = 0;
                while start < batch.num_rows() {
                    // Cut slices so that every flushed batch holds exactly `batch_size` records.
                    let len = (batch_size - pending.len()).min(batch.num_rows() - start);
                    let slice = batch.slice(start, len);
                    let base = parsed;
                    let fail = |e: Invalid| ServiceError::from(offset_row(e, base));
                    match &mut pending {
                        Records::Frames(v) => v.extend(frames_from_arrow(&slice).map_err(fail)?),
                        Records::Labels(v) => v.extend(labels_from_arrow(&slice).map_err(fail)?),
                        Records::Embeddings(v) => v.extend(embeddings_from_arrow(&slice).map_err(fail)?),
                    }
                    parsed += len;
                    start += len;
                    if pending.len() >= batch_size {
                        flush(&mut pending)?;
                    }
                }
            }
        }
    }
    flush(&mut pending)
}

/// Decodes a whole upload body held in memory, as an upload does before it writes its first batch,
/// and checks each record as far as it can without a dataset (ids, geometry, data URLs; classes
/// against an empty class map): the number of records, or the error naming the field. Touches no
/// store. The fuzz targets (`milkglass-fuzz`) call it.
pub fn check_body(kind: UploadKind, format: Format, body: &[u8]) -> ServiceResult<usize> {
    let classes = milkglass_core::ClassMap::default();
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel(2);
        let decoder = scope.spawn(move || decode(kind, format, body, 1000, &send));
        let mut records = 0;
        let mut failed = None;
        for batch in receive {
            let checked = batch.and_then(|batch| {
                match &batch {
                    Records::Frames(frames) => {
                        frames.iter().try_for_each(|f| f.validate(&classes, None, None)).map_err(ServiceError::from)?
                    }
                    Records::Labels(labels) => labels
                        .iter()
                        .try_for_each(|l| l.validate(&classes, kind == UploadKind::Inferences, None).map(|_| ()))
                        .map_err(ServiceError::from)?,
                    Records::Embeddings(_) => {}
                }
                Ok(batch.len())
            });
            match checked {
                Ok(n) => records += n,
                // Dropping the receiver stops the decoder at its next batch.
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // A panic is a bug the fuzzer is looking for: it goes on up, never becomes an error.
        let decoded = decoder.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match (failed, decoded) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(records),
        }
    })
}

/// Row errors from a slice say `[i].field`; make `i` count from the start of the upload.
fn offset_row(mut e: Invalid, base: usize) -> Invalid {
    if let Some((row, tail)) = split_row(&e.field) {
        e.field = format!("[{}]{tail}", base + row);
    }
    e
}

/// `"[12].top"` into `(12, ".top")`.
fn split_row(field: &str) -> Option<(usize, &str)> {
    let (row, tail) = field.strip_prefix('[')?.split_once(']')?;
    Some((row.parse().ok()?, tail))
}

/// Reads one line, refusing lines longer than `MAX_LINE_BYTES`.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Result<usize, ServiceError> {
    let n = reader.take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', line).map_err(body_read_error)?;
    if line.len() > MAX_LINE_BYTES {
        return Err(ServiceError::invalid("body", format!("a line is longer than {MAX_LINE_BYTES} bytes")));
    }
    Ok(n)
}

/// The error a front end puts into the body stream when the body passes its size limit, so
/// that the upload answers "too large" rather than "could not read".
#[derive(Debug, thiserror::Error)]
#[error("the upload is larger than the server's limit")]
pub struct BodyTooLarge;

/// The body stream failed: over the size limit, or the client went away.
pub fn body_read_error(e: std::io::Error) -> ServiceError {
    if e.get_ref().is_some_and(|inner| inner.is::<BodyTooLarge>()) {
        return ServiceError::new(ErrorKind::TooLarge, "too_large", BodyTooLarge.to_string());
    }
    ServiceError::invalid("body", format!("could not read the request body: {e}"))
}

fn arrow_read_error(e: arrow::error::ArrowError) -> ServiceError {
    match e {
        arrow::error::ArrowError::IoError(_, io) => body_read_error(io),
        other => ServiceError::invalid("body", format!("malformed Arrow IPC stream: {other}")),
    }
}

/// Column access by name with type errors that name the column.
struct Columns<'a> {
    batch: &'a RecordBatch,
    allowed: &'static [&'static str],
}

impl<'a> Columns<'a> {
    fn new(batch: &'a RecordBatch, allowed: &'static [&'static str]) -> Result<Self, Invalid> {
        for field in batch.schema().fields() {
            if !allowed.contains(&field.name().as_str()) {
                return Err(Invalid::new(
                    field.name().as_str(),
                    format!("unknown column; expected some of: {}", allowed.join(", ")),
                ));
            }
        }
        Ok(Columns { batch, allowed })
    }

    fn get(&self, name: &str) -> Option<&'a dyn Array> {
        debug_assert!(self.allowed.contains(&name));
        self.batch.column_by_name(name).map(|c| c.as_ref())
    }

    fn strings(&self, name: &str, required: bool) -> Result<Vec<Option<String>>, Invalid> {
        let Some(col) = self.get(name) else {
            return if required {
                Err(Invalid::new(name, "required column is missing"))
            } else {
                Ok(vec![None; self.batch.num_rows()])
            };
        };
        let cast =
            arrow::compute::cast(col, &DataType::Utf8).map_err(|_| Invalid::new(name, "must be a string column"))?;
        let strings = cast.as_string::<i32>();
        let values: Vec<Option<String>> =
            (0..strings.len()).map(|i| strings.is_valid(i).then(|| strings.value(i).to_string())).collect();
        if required && let Some(i) = values.iter().position(Option::is_none) {
            return Err(Invalid::new(format!("{name}[{i}]"), "must not be null"));
        }
        Ok(values)
    }

    fn floats(&self, name: &str) -> Result<Option<Vec<Option<f64>>>, Invalid> {
        let Some(col) = self.get(name) else { return Ok(None) };
        let cast = arrow::compute::cast(col, &DataType::Float64)
            .map_err(|_| Invalid::new(name, "must be a numeric column"))?;
        let values = cast.as_primitive::<Float64Type>();
        Ok(Some((0..values.len()).map(|i| values.is_valid(i).then(|| values.value(i))).collect()))
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<Option<i64>>>, Invalid> {
        let Some(col) = self.get(name) else { return Ok(None) };
        let cast =
            arrow::compute::cast(col, &DataType::Int64).map_err(|_| Invalid::new(name, "must be an integer column"))?;
        let values = cast.as_primitive::<Int64Type>();
        Ok(Some((0..values.len()).map(|i| values.is_valid(i).then(|| values.value(i))).collect()))
    }

    /// A list (or fixed-size list) of numbers per row, as f32 vectors.
    fn vectors(&self, name: &str) -> Result<Option<Vec<Option<Vec<f32>>>>, Invalid> {
        let Some(col) = self.get(name) else { return Ok(None) };
        Ok(Some(vectors_of(col).map_err(|m| Invalid::new(name, m))?))
    }
}

fn vectors_of(col: &dyn Array) -> Result<Vec<Option<Vec<f32>>>, String> {
    let (values, offsets): (&dyn Array, Vec<(usize, usize)>) = match col.data_type() {
        DataType::FixedSizeList(_, size) => {
            let list = col.as_fixed_size_list();
            let size = *size as usize;
            (list.values().as_ref(), (0..list.len()).map(|i| (i * size, size)).collect())
        }
        DataType::List(_) => {
            let list = col.as_list::<i32>();
            let o = list.value_offsets();
            (list.values().as_ref(), (0..list.len()).map(|i| (o[i] as usize, (o[i + 1] - o[i]) as usize)).collect())
        }
        DataType::LargeList(_) => {
            let list = col.as_list::<i64>();
            let o = list.value_offsets();
            (list.values().as_ref(), (0..list.len()).map(|i| (o[i] as usize, (o[i + 1] - o[i]) as usize)).collect())
        }
        other => return Err(format!("must be a list of numbers, not {other}")),
    };
    let floats =
        arrow::compute::cast(values, &DataType::Float32).map_err(|_| "list items must be numbers".to_string())?;
    let floats = floats.as_primitive::<Float32Type>();
    if floats.null_count() > 0 {
        return Err("vectors must not contain nulls".into());
    }
    let raw = floats.values();
    Ok(offsets
        .into_iter()
        .enumerate()
        .map(|(i, (start, len))| col.is_valid(i).then(|| raw[start..start + len].to_vec()))
        .collect())
}

const FRAME_COLUMNS: &[&str] =
    &["frame_id", "timestamp", "image_url", "width", "height", "sensors", "metadata", "embedding", "labels"];

/// Frames from Arrow. Columns: `frame_id` (required), `timestamp`, `image_url` with
/// `width`/`height` (one image sensor named DEFAULT), or `sensors` as JSON text,
/// `metadata` as JSON text, `embedding` as a list of numbers, and `labels` as a list
/// of structs `{label_id, class, top, left, width, height}` (2D boxes).
fn frames_from_arrow(batch: &RecordBatch) -> Result<Vec<Frame>, Invalid> {
    let c = Columns::new(batch, FRAME_COLUMNS)?;
    let ids = c.strings("frame_id", true)?;
    let timestamps = c.strings("timestamp", false)?;
    let urls = c.strings("image_url", false)?;
    let widths = c.ints("width")?;
    let heights = c.ints("height")?;
    let sensors = c.strings("sensors", false)?;
    let metadata = c.strings("metadata", false)?;
    let embeddings = c.vectors("embedding")?;
    let labels = c.get("labels").map(boxes_of).transpose()?;
    let mut frames = Vec::with_capacity(batch.num_rows());
    for (i, id) in ids.into_iter().enumerate() {
        let row = |e: Invalid| e.within(format!("[{i}]"));
        let json_field = |name: &str, text: &str| -> Result<serde_json::Value, Invalid> {
            serde_json::from_str(text).map_err(|e| row(Invalid::new(name, format!("not JSON: {e}"))))
        };
        let mut frame = Frame {
            frame_id: id.expect("required column"),
            timestamp: timestamps[i].as_deref().map(|t| parse_timestamp("timestamp", t)).transpose().map_err(row)?,
            sensors: match &sensors[i] {
                Some(text) => serde_json::from_value(json_field("sensors", text)?)
                    .map_err(|e| row(Invalid::new("sensors", e.to_string())))?,
                None => Vec::new(),
            },
            metadata: match &metadata[i] {
                Some(text) => match json_field("metadata", text)? {
                    serde_json::Value::Object(map) => metadata_from_json("metadata", &map).map_err(row)?,
                    _ => return Err(row(Invalid::new("metadata", "must be a JSON object"))),
                },
                None => Default::default(),
            },
            geo: None,
            labels: None,
            embedding: None,
        };
        if let Some(url) = &urls[i] {
            let dim = |v: &Option<Vec<Option<i64>>>| v.as_ref().and_then(|v| v[i]).and_then(|x| u32::try_from(x).ok());
            frame.sensors.push(Sensor {
                sensor_id: "DEFAULT".into(),
                kind: SensorKind::Image,
                url: url.clone(),
                width: dim(&widths),
                height: dim(&heights),
                timestamp: None,
            });
        }
        frame.embedding = embeddings.as_ref().and_then(|e| e[i].clone());
        frame.labels = labels.as_ref().and_then(|l| l[i].clone());
        frames.push(frame);
    }
    Ok(frames)
}

/// `labels: list<struct<label_id, class, top, left, width, height[, confidence]>>`.
fn boxes_of(col: &dyn Array) -> Result<Vec<Option<Vec<Label>>>, Invalid> {
    let list = match col.data_type() {
        DataType::List(_) => col.as_list::<i32>(),
        other => return Err(Invalid::new("labels", format!("must be a list of structs, not {other}"))),
    };
    let structs = list.values();
    let DataType::Struct(_) = structs.data_type() else {
        return Err(Invalid::new("labels", "list items must be structs {label_id, class, top, left, width, height}"));
    };
    let batch = RecordBatch::from(structs.as_struct());
    let offsets = list.value_offsets();
    // Errors name the label's frame row and its place in that frame's list.
    let labels = labels_from_arrow(&batch).map_err(|mut e| {
        if let Some((k, tail)) = split_row(&e.field) {
            let frame = offsets.partition_point(|&o| o as usize <= k).saturating_sub(1);
            e.field = format!("[{frame}].labels[{}]{tail}", k - offsets[frame] as usize);
        } else {
            e.field = format!("labels.{}", e.field);
        }
        e
    })?;
    Ok((0..list.len())
        .map(|i| list.is_valid(i).then(|| labels[offsets[i] as usize..offsets[i + 1] as usize].to_vec()))
        .collect())
}

const LABEL_COLUMNS: &[&str] =
    &["label_id", "frame_id", "class", "top", "left", "width", "height", "confidence", "embedding"];

/// 2D box labels or inferences from Arrow (other kinds go through JSON Lines).
fn labels_from_arrow(batch: &RecordBatch) -> Result<Vec<Label>, Invalid> {
    let c = Columns::new(batch, LABEL_COLUMNS)?;
    let ids = c.strings("label_id", true)?;
    let frames = c.strings("frame_id", false)?;
    let classes = c.strings("class", true)?;
    let coords: Vec<Vec<Option<f64>>> = ["top", "left", "width", "height"]
        .iter()
        .map(|name| c.floats(name)?.ok_or_else(|| Invalid::new(*name, "required column is missing")))
        .collect::<Result<_, _>>()?;
    let confidence = c.floats("confidence")?;
    let embeddings = c.vectors("embedding")?;
    let mut labels = Vec::with_capacity(batch.num_rows());
    for (i, id) in ids.into_iter().enumerate() {
        let coord = |k: usize, name: &str| {
            coords[k][i].ok_or_else(|| Invalid::new(format!("[{i}].{name}"), "must not be null"))
        };
        labels.push(Label {
            label_id: id.expect("required column"),
            frame_id: frames[i].clone(),
            class: classes[i].clone(),
            sensor_id: None,
            geometry: Geometry::Box2d {
                top: coord(0, "top")?,
                left: coord(1, "left")?,
                width: coord(2, "width")?,
                height: coord(3, "height")?,
            },
            attributes: Default::default(),
            iscrowd: false,
            confidence: confidence.as_ref().and_then(|c| c[i]),
            embedding: embeddings.as_ref().and_then(|e| e[i].clone()),
            probabilities: None,
        });
    }
    Ok(labels)
}

const EMBEDDING_COLUMNS: &[&str] = &["frame_id", "label_id", "embedding"];

fn embeddings_from_arrow(batch: &RecordBatch) -> Result<Vec<EmbeddingRecord>, Invalid> {
    let c = Columns::new(batch, EMBEDDING_COLUMNS)?;
    let frames = c.strings("frame_id", false)?;
    let labels = c.strings("label_id", false)?;
    let vectors = c.vectors("embedding")?.ok_or_else(|| Invalid::new("embedding", "required column is missing"))?;
    vectors
        .into_iter()
        .enumerate()
        .map(|(i, vector)| {
            let vector = vector.ok_or_else(|| Invalid::new(format!("[{i}].embedding"), "must not be null"))?;
            let line = EmbeddingLine { frame_id: frames[i].clone(), label_id: labels[i].clone(), embedding: vector };
            line.into_record().map_err(|e| e.within(format!("[{i}]")))
        })
        .collect()
}
