//! Dataset rows as DataFusion tables, so labels, inferences and metadata can be
//! queried with SQL (and, later, under a policy).
//!
//! A scan streams rows from SQLite in batches on a thread of its own; DataFusion
//! pulls batches as it needs them, so a scan never holds a whole dataset in memory.

use crate::db::open_connection;
use crate::{DatasetInfo, Store, StoreResult};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

const BATCH_ROWS: usize = 8192;

static FRAMES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("frame_id", DataType::Utf8, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("sensors", DataType::Utf8, false),
        Field::new("metadata", DataType::Utf8, false),
        Field::new("geo_lat", DataType::Float64, true),
        Field::new("geo_lon", DataType::Float64, true),
        Field::new("label_count", DataType::Int64, false),
        Field::new("version", DataType::Int64, false),
    ]))
});

static LABELS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("frame_id", DataType::Utf8, false),
        Field::new("label_id", DataType::Utf8, false),
        Field::new("inference_set", DataType::Utf8, true),
        Field::new("class_id", DataType::Int64, true),
        Field::new("class", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, false),
        Field::new("top", DataType::Float64, true),
        Field::new("left", DataType::Float64, true),
        Field::new("width", DataType::Float64, true),
        Field::new("height", DataType::Float64, true),
        Field::new("confidence", DataType::Float64, true),
        Field::new("iscrowd", DataType::Boolean, false),
        Field::new("attributes", DataType::Utf8, true),
    ]))
});

/// Columns of a dataset's `frames` table. `metadata` and `sensors` are JSON text.
pub fn frames_schema() -> SchemaRef {
    FRAMES_SCHEMA.clone()
}

/// Columns of a dataset's `labels` table: ground truth (`inference_set` null) and inferences.
pub fn labels_schema() -> SchemaRef {
    LABELS_SCHEMA.clone()
}

#[derive(Debug, Clone, Copy)]
enum Rows {
    Frames,
    Labels,
}

#[derive(Debug)]
struct SqliteScan {
    db_path: PathBuf,
    dataset_id: i64,
    rows: Rows,
    schema: SchemaRef,
    classes: Arc<BTreeMap<i64, String>>,
}

impl Store {
    /// The dataset's current frames as a DataFusion table.
    pub fn frames_table(&self, dataset: &DatasetInfo) -> StoreResult<Arc<dyn TableProvider>> {
        self.table(dataset, Rows::Frames, frames_schema())
    }

    /// The dataset's current labels and inferences as a DataFusion table.
    pub fn labels_table(&self, dataset: &DatasetInfo) -> StoreResult<Arc<dyn TableProvider>> {
        self.table(dataset, Rows::Labels, labels_schema())
    }

    fn table(&self, dataset: &DatasetInfo, rows: Rows, schema: SchemaRef) -> StoreResult<Arc<dyn TableProvider>> {
        let project = self.db().read(|conn| crate::catalog::load_dataset_by_id(conn, dataset.id).map(|d| d.project))?;
        let classes = self.project(&project)?.classes.0.into_iter().map(|c| (i64::from(c.id), c.name)).collect();
        let scan = SqliteScan {
            db_path: self.db().path().to_path_buf(),
            dataset_id: dataset.id,
            rows,
            schema: schema.clone(),
            classes: Arc::new(classes),
        };
        let table = StreamingTable::try_new(schema, vec![Arc::new(scan)])
            .map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
        Ok(Arc::new(table))
    }
}

impl PartitionStream for SqliteScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, rx) = mpsc::channel::<Result<RecordBatch, DataFusionError>>(2);
        let (path, dataset_id, rows, schema, classes) =
            (self.db_path.clone(), self.dataset_id, self.rows, self.schema.clone(), self.classes.clone());
        std::thread::spawn(move || {
            let mut tx = tx;
            let result = scan(&path, dataset_id, rows, &schema, &classes, &mut |batch| {
                futures::executor::block_on(tx.send(Ok(batch))).is_ok()
            });
            if let Err(e) = result {
                let _ = futures::executor::block_on(tx.send(Err(DataFusionError::External(Box::new(e)))));
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), rx.map(|r| r)))
    }
}

/// Reads rows and hands batches to `emit`, which returns false when the reader is gone.
fn scan(
    path: &std::path::Path,
    dataset_id: i64,
    rows: Rows,
    schema: &SchemaRef,
    classes: &BTreeMap<i64, String>,
    emit: &mut dyn FnMut(RecordBatch) -> bool,
) -> Result<(), crate::StoreError> {
    let conn = open_connection(path)?;
    match rows {
        Rows::Frames => {
            let mut stmt = conn.prepare(
                "SELECT frame_id, timestamp, sensors, metadata, geo_lat, geo_lon, label_count, valid_from
                 FROM frames WHERE dataset_id = ?1 AND valid_to IS NULL ORDER BY frame_id",
            )?;
            let mut cursor = stmt.query([dataset_id])?;
            loop {
                let (mut id, mut ts, mut sensors, mut meta) = (
                    StringBuilder::new(),
                    TimestampMicrosecondBuilder::new().with_timezone("UTC"),
                    StringBuilder::new(),
                    StringBuilder::new(),
                );
                let (mut lat, mut lon, mut count, mut version) =
                    (Float64Builder::new(), Float64Builder::new(), Int64Builder::new(), Int64Builder::new());
                let mut n = 0;
                while n < BATCH_ROWS {
                    let Some(r) = cursor.next()? else { break };
                    id.append_value(r.get::<_, String>(0)?);
                    let timestamp: Option<String> = r.get(1)?;
                    ts.append_option(
                        timestamp
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                            .map(|t| t.timestamp_micros()),
                    );
                    sensors.append_value(r.get::<_, String>(2)?);
                    meta.append_value(r.get::<_, String>(3)?);
                    lat.append_option(r.get::<_, Option<f64>>(4)?);
                    lon.append_option(r.get::<_, Option<f64>>(5)?);
                    count.append_value(r.get(6)?);
                    version.append_value(r.get(7)?);
                    n += 1;
                }
                if n == 0 {
                    return Ok(());
                }
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(id.finish()),
                    Arc::new(ts.finish()),
                    Arc::new(sensors.finish()),
                    Arc::new(meta.finish()),
                    Arc::new(lat.finish()),
                    Arc::new(lon.finish()),
                    Arc::new(count.finish()),
                    Arc::new(version.finish()),
                ];
                if !emit(
                    RecordBatch::try_new(schema.clone(), columns)
                        .map_err(|e| crate::StoreError::Corrupt(e.to_string()))?,
                ) {
                    return Ok(());
                }
            }
        }
        Rows::Labels => {
            let mut stmt = conn.prepare(
                "SELECT l.frame_id, l.label_id, s.name, l.class_id, l.kind, l.top, l.\"left\", l.width, l.height,
                        l.confidence, l.iscrowd, l.attributes
                 FROM labels l LEFT JOIN inference_sets s ON s.id = l.inference_set_id
                 WHERE l.dataset_id = ?1 AND l.valid_to IS NULL ORDER BY l.frame_id, l.inference_set_id, l.label_id",
            )?;
            let mut cursor = stmt.query([dataset_id])?;
            loop {
                let mut strings: Vec<StringBuilder> = (0..3).map(|_| StringBuilder::new()).collect();
                let (mut class_id, mut class, mut kind) =
                    (Int64Builder::new(), StringBuilder::new(), StringBuilder::new());
                let mut floats: Vec<Float64Builder> = (0..5).map(|_| Float64Builder::new()).collect();
                let (mut crowd, mut attributes) = (BooleanBuilder::new(), StringBuilder::new());
                let mut n = 0;
                while n < BATCH_ROWS {
                    let Some(r) = cursor.next()? else { break };
                    strings[0].append_value(r.get::<_, String>(0)?);
                    strings[1].append_value(r.get::<_, String>(1)?);
                    strings[2].append_option(r.get::<_, Option<String>>(2)?);
                    let id: Option<i64> = r.get(3)?;
                    class_id.append_option(id);
                    class.append_option(id.and_then(|id| classes.get(&id)));
                    kind.append_value(r.get::<_, String>(4)?);
                    for (i, builder) in floats.iter_mut().enumerate() {
                        builder.append_option(r.get::<_, Option<f64>>(5 + i)?);
                    }
                    crowd.append_value(r.get(10)?);
                    attributes.append_option(r.get::<_, Option<String>>(11)?);
                    n += 1;
                }
                if n == 0 {
                    return Ok(());
                }
                let mut columns: Vec<ArrayRef> = strings.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
                columns.push(Arc::new(class_id.finish()));
                columns.push(Arc::new(class.finish()));
                columns.push(Arc::new(kind.finish()));
                columns.extend(floats.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
                columns.push(Arc::new(crowd.finish()));
                columns.push(Arc::new(attributes.finish()));
                if !emit(
                    RecordBatch::try_new(schema.clone(), columns)
                        .map_err(|e| crate::StoreError::Corrupt(e.to_string()))?,
                ) {
                    return Ok(());
                }
            }
        }
    }
}
