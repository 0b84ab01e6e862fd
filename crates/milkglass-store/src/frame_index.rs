//! An in-memory index of a dataset version's frames, so that a filtered frame page and its
//! count are bitmap lookups instead of a scan of every frame's JSON metadata.
//!
//! Frames are numbered by their id's sort order (the listing's order), so a page is the
//! bitmap's members from the cursor on. Each filter of [`FrameFilter`] is a bitmap:
//! classes present and sensor kinds are kept as bitmaps; label counts as one number per
//! frame; each metadata key as its frames sorted by value, so equality and ranges are a
//! binary search and a slice. Comparisons follow SQLite's, which the SQL path uses, so
//! both paths answer the same (numbers before text, text by bytes, a missing key never
//! matches, timestamps compared as their canonical text).

use crate::rows::check_metadata_key;
use crate::{DatasetInfo, FrameFilter, MetaOp, Store, StoreError, StoreResult};
use roaring::RoaringBitmap;
use rusqlite::params;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

/// One value as SQLite compares it; SQL NULL is never stored (it matches nothing).
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Num(f64),
    Text(String),
}

impl Cell {
    fn cmp(&self, other: &Cell) -> Ordering {
        match (self, other) {
            (Cell::Num(a), Cell::Num(b)) => a.total_cmp(b),
            (Cell::Num(_), Cell::Text(_)) => Ordering::Less,
            (Cell::Text(_), Cell::Num(_)) => Ordering::Greater,
            (Cell::Text(a), Cell::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        }
    }

    /// What `json_extract` (or `json_each`'s `value`) gives for a JSON value.
    fn of(value: &serde_json::Value) -> Option<Cell> {
        use serde_json::Value;
        match value {
            Value::Null => None,
            Value::Bool(b) => Some(Cell::Num(f64::from(u8::from(*b)))),
            Value::Number(n) => n.as_f64().map(Cell::Num),
            Value::String(s) => Some(Cell::Text(s.clone())),
            other => Some(Cell::Text(other.to_string())),
        }
    }
}

/// Frames in the order of their values: `codes` index a sorted dictionary.
#[derive(Default)]
struct Sorted {
    dictionary: Vec<Cell>,
    /// (code, frame) sorted by code.
    entries: Vec<(u32, u32)>,
}

impl Sorted {
    fn build(mut values: Vec<(Cell, u32)>) -> Sorted {
        values.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut dictionary: Vec<Cell> = Vec::new();
        let mut entries = Vec::with_capacity(values.len());
        for (cell, frame) in values {
            if dictionary.last().is_none_or(|last| last.cmp(&cell) != Ordering::Equal) {
                dictionary.push(cell);
            }
            entries.push(((dictionary.len() - 1) as u32, frame));
        }
        Sorted { dictionary, entries }
    }

    /// Frames whose value stands in `op` to `operand`.
    fn matching(&self, op: MetaOp, operand: &Cell) -> RoaringBitmap {
        let below = self.dictionary.partition_point(|c| c.cmp(operand) == Ordering::Less) as u32;
        let up_to = self.dictionary.partition_point(|c| c.cmp(operand) != Ordering::Greater) as u32;
        let codes = |lo: u32, hi: u32| {
            let start = self.entries.partition_point(|e| e.0 < lo);
            let end = self.entries.partition_point(|e| e.0 < hi);
            self.entries[start..end].iter().map(|e| e.1).collect::<RoaringBitmap>()
        };
        let all = u32::MAX;
        match op {
            MetaOp::Eq | MetaOp::Contains => codes(below, up_to),
            MetaOp::Ne => {
                let mut set = codes(0, below);
                set |= codes(up_to, all);
                set
            }
            MetaOp::Lt => codes(0, below),
            MetaOp::Le => codes(0, up_to),
            MetaOp::Gt => codes(up_to, all),
            MetaOp::Ge => codes(below, all),
            MetaOp::Exists => codes(0, all),
        }
    }

    fn bytes(&self) -> usize {
        self.entries.len() * 8
            + self.dictionary.iter().map(|c| 16 + if let Cell::Text(s) = c { s.len() } else { 0 }).sum::<usize>()
    }
}

/// One metadata key.
#[derive(Default)]
struct KeyIndex {
    /// Frames that have the key (`json_type(...) IS NOT NULL`: a JSON null counts).
    present: RoaringBitmap,
    /// Values compared as themselves.
    plain: Sorted,
    /// Timestamp objects' canonical text, compared with the operand read as a timestamp.
    stamped: Sorted,
    /// What `json_each` gives besides a scalar itself: list items, object members.
    items: Sorted,
}

/// The index of one dataset version.
pub struct FrameIndex {
    pub dataset_id: i64,
    pub dataset_uid: String,
    pub version: i64,
    /// Batches committed when it was built: an upload adds batches to one version.
    pub batches: i64,
    frame_ids: Vec<String>,
    label_counts: Vec<u32>,
    classes: HashMap<i64, RoaringBitmap>,
    sensor_kinds: HashMap<String, RoaringBitmap>,
    keys: HashMap<String, KeyIndex>,
}

/// A page of frame ids the index selected, in listing order.
pub struct Selection {
    pub ids: Vec<String>,
    pub next: Option<String>,
    pub total: Option<i64>,
}

impl FrameIndex {
    pub fn frames(&self) -> usize {
        self.frame_ids.len()
    }

    /// Roughly what the index holds in memory, in bytes.
    pub fn bytes(&self) -> usize {
        let ids: usize = self.frame_ids.iter().map(|id| id.len() + 24).sum();
        let keys: usize = self.keys.values().map(|k| k.plain.bytes() + k.stamped.bytes() + k.items.bytes()).sum();
        ids + self.label_counts.len() * 4 + keys
    }

    fn all(&self) -> RoaringBitmap {
        let mut all = RoaringBitmap::new();
        all.insert_range(0..self.frame_ids.len() as u32);
        all
    }

    fn ordinal(&self, frame_id: &str) -> Option<u32> {
        self.frame_ids.binary_search_by(|id| id.as_str().cmp(frame_id)).ok().map(|i| i as u32)
    }

    /// The frames `filter` selects, and its page. `segment` holds the segment's frame ids
    /// when the filter names one. `None` when the index cannot answer (an earlier version).
    pub fn select(
        &self,
        filter: &FrameFilter,
        class_id: Option<i64>,
        segment: Option<&[String]>,
    ) -> StoreResult<Option<Selection>> {
        if filter.version.is_some_and(|v| v != self.version) {
            return Ok(None);
        }
        let mut set = self.all();
        if filter.min_labels.is_some() || filter.max_labels.is_some() {
            let (min, max) = (filter.min_labels.unwrap_or(i64::MIN), filter.max_labels.unwrap_or(i64::MAX));
            let within: RoaringBitmap = self
                .label_counts
                .iter()
                .enumerate()
                .filter(|(_, n)| (min..=max).contains(&i64::from(**n)))
                .map(|(i, _)| i as u32)
                .collect();
            set &= within;
        }
        if let Some(kind) = filter.sensor_kind {
            set &= self.sensor_kinds.get(kind.as_str()).cloned().unwrap_or_default();
        }
        if let Some(class) = class_id {
            set &= self.classes.get(&class).cloned().unwrap_or_default();
        }
        for (i, p) in filter.metadata.iter().enumerate() {
            set &= self.metadata(i, p)?;
        }
        for ids in [segment, (!filter.ids.is_empty()).then_some(filter.ids.as_slice())].into_iter().flatten() {
            set &= ids.iter().filter_map(|id| self.ordinal(id)).collect::<RoaringBitmap>();
        }
        let total = filter.count.then(|| set.len() as i64);
        let start = match &filter.after {
            // Frames after the cursor, whether or not the cursor itself still exists.
            Some(after) => self.frame_ids.partition_point(|id| id.as_str() <= after.as_str()) as u32,
            None => 0,
        };
        let limit = filter.limit.clamp(1, crate::MAX_PAGE);
        let before_start = if start == 0 { 0 } else { set.rank(start - 1) };
        let mut page: Vec<String> = Vec::with_capacity(limit);
        let mut more = false;
        let mut position = before_start + filter.offset as u64;
        while let Some(frame) = u32::try_from(position).ok().and_then(|p| set.select(p)) {
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(self.frame_ids[frame as usize].clone());
            position += 1;
        }
        let next = if more { page.last().cloned() } else { None };
        Ok(Some(Selection { ids: page, next, total }))
    }

    fn metadata(&self, i: usize, p: &crate::MetaPredicate) -> StoreResult<RoaringBitmap> {
        let field = format!("meta[{i}]");
        check_metadata_key(&field, &p.key)?;
        let Some(key) = self.keys.get(&p.key) else { return Ok(RoaringBitmap::new()) };
        if p.op == MetaOp::Exists {
            return Ok(key.present.clone());
        }
        let plain = crate::rows::operand_cell(&field, &p.value)?;
        let plain = match plain {
            rusqlite::types::Value::Integer(i) => Cell::Num(i as f64),
            rusqlite::types::Value::Real(f) => Cell::Num(f),
            rusqlite::types::Value::Text(t) => Cell::Text(t),
            _ => return Ok(RoaringBitmap::new()),
        };
        if p.op == MetaOp::Contains {
            let mut set = key.plain.matching(MetaOp::Eq, &plain);
            set |= key.items.matching(MetaOp::Eq, &plain);
            return Ok(set);
        }
        let stamped = match &p.value {
            serde_json::Value::String(text) => milkglass_core::parse_timestamp("meta", text)
                .ok()
                .map(|t| Cell::Text(milkglass_core::format_timestamp(&t))),
            _ => None,
        }
        .unwrap_or_else(|| plain.clone());
        let mut set = key.plain.matching(p.op, &plain);
        set |= key.stamped.matching(p.op, &stamped);
        Ok(set)
    }
}

impl Store {
    /// Builds the index of the dataset's current version from its rows. Blocking; about
    /// a second per million frames.
    pub fn build_frame_index(&self, dataset: &DatasetInfo) -> StoreResult<FrameIndex> {
        self.db().read(|conn| {
            conn.execute_batch("BEGIN")?;
            let result = build(conn, dataset);
            let _ = conn.execute_batch("COMMIT");
            result
        })
    }
}

fn build(conn: &rusqlite::Connection, dataset: &DatasetInfo) -> StoreResult<FrameIndex> {
    let (version, batches): (i64, i64) = conn.query_row(
        "SELECT d.version, (SELECT COALESCE(SUM(batches), 0) FROM uploads WHERE dataset_id = d.id)
         FROM datasets d WHERE d.id = ?1",
        [dataset.id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut stmt = conn.prepare(
        "SELECT frame_id, label_count, sensors, metadata FROM frames
         WHERE dataset_id = ?1 AND valid_to IS NULL ORDER BY frame_id",
    )?;
    let mut rows = stmt.query([dataset.id])?;
    let (mut frame_ids, mut label_counts) = (Vec::new(), Vec::new());
    let mut sensor_kinds: HashMap<String, RoaringBitmap> = HashMap::new();
    #[derive(Default)]
    struct Building {
        present: RoaringBitmap,
        plain: Vec<(Cell, u32)>,
        stamped: Vec<(Cell, u32)>,
        items: Vec<(Cell, u32)>,
    }
    let mut keys: BTreeMap<String, Building> = BTreeMap::new();
    while let Some(r) = rows.next()? {
        let frame = frame_ids.len() as u32;
        frame_ids.push(r.get::<_, String>(0)?);
        label_counts.push(u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX));
        let sensors: Vec<serde_json::Value> = serde_json::from_str(&r.get::<_, String>(2)?)?;
        for kind in sensors.iter().filter_map(|s| s.get("kind").and_then(|k| k.as_str())) {
            sensor_kinds.entry(kind.to_string()).or_default().insert(frame);
        }
        let metadata: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&r.get::<_, String>(3)?)?;
        for (key, value) in metadata {
            let entry = keys.entry(key).or_default();
            entry.present.insert(frame);
            let timestamp = value.as_object().and_then(|o| o.get("timestamp"));
            match timestamp {
                Some(ts) => entry.stamped.extend(Cell::of(ts).map(|c| (c, frame))),
                None => entry.plain.extend(Cell::of(&value).map(|c| (c, frame))),
            }
            match &value {
                serde_json::Value::Array(items) => {
                    entry.items.extend(items.iter().filter_map(Cell::of).map(|c| (c, frame)))
                }
                serde_json::Value::Object(members) => {
                    entry.items.extend(members.values().filter_map(Cell::of).map(|c| (c, frame)))
                }
                _ => {}
            }
        }
    }
    drop(rows);
    let mut classes: HashMap<i64, RoaringBitmap> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT DISTINCT frame_id, class_id FROM labels
         WHERE dataset_id = ?1 AND inference_set_id = 0 AND valid_to IS NULL AND class_id IS NOT NULL",
    )?;
    let mut rows = stmt.query(params![dataset.id])?;
    while let Some(r) = rows.next()? {
        let frame_id: String = r.get(0)?;
        let Ok(frame) = frame_ids.binary_search(&frame_id) else {
            return Err(StoreError::Corrupt(format!("label of frame {frame_id:?}, which is not current")));
        };
        classes.entry(r.get(1)?).or_default().insert(frame as u32);
    }
    let keys = keys
        .into_iter()
        .map(|(key, b)| {
            let index = KeyIndex {
                present: b.present,
                plain: Sorted::build(b.plain),
                stamped: Sorted::build(b.stamped),
                items: Sorted::build(b.items),
            };
            (key, index)
        })
        .collect();
    Ok(FrameIndex {
        dataset_id: dataset.id,
        dataset_uid: dataset.uid.clone(),
        version,
        batches,
        frame_ids,
        label_counts,
        classes,
        sensor_kinds: sensor_kinds.into_iter().collect(),
        keys,
    })
}
