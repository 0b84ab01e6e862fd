//! Bounding each person's contribution, fused with the aggregation: one hash pass.
//!
//! The DP mode needs, per group, the sum over persons of each person's *bounded* part:
//! at most `max_groups_per_unit` groups per person, and within a group at most
//! `max_rows_per_unit` rows' worth of each quantity. Written as SQL that is an aggregate by
//! (keys, person), a window ranking each person's groups at random and a second aggregate,
//! which sorts millions of pairs; here it is one pass over the rows instead.
//!
//! Each person keeps a small set of at most `k` (rank, group, parts) entries. A pair's rank
//! is a hash of its key values and its person's value under a seed drawn afresh for each
//! query, so the kept groups are the `k` with the lowest hash: a uniformly random choice
//! that depends on that person's own rows and the seed only (the bound is then a stable
//! transformation: adding or removing one person changes no one else's choice). A pair
//! dropped once can never come back, because its rank stays above the set's largest.
//!
//! Bottom-k sets merge: a pair missing from one partition's set ranks above that set's
//! `k`th entry, hence above the merged set's, so merging the partitions' sets gives exactly
//! the set one pass over all rows would. Partitions therefore run in parallel, each with
//! its own tables, and merge by value (never by the partition's local group numbers).

use crate::GuardError;
use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::hash_utils::{QualityRandomState, create_hashes};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use std::sync::Arc;

/// The shape of the rows the bounding reads: `keys` key columns, then the person, then one
/// non-null Float64 column per quantity (a row's value of it: 1 for a count, the clamped
/// value for a sum), then one Float64 column per sampled column (for quantiles; NULL where
/// the row has no value).
#[derive(Clone)]
pub(crate) struct Layout {
    pub keys: usize,
    pub quantities: usize,
    /// Each person's most groups.
    pub max_groups: usize,
    /// Each quantity's bounds for one person's part of one group.
    pub part_bounds: Vec<(f64, f64)>,
    /// Every row is a person of its own (no privacy unit named): nothing to bound per person.
    pub row_is_unit: bool,
    /// Sampled columns: of each, a person's group keeps at most `max_rows` values, those
    /// whose hash is lowest (a choice by value, so it is the same in every partition).
    pub samples: usize,
    pub max_rows: usize,
}

impl Layout {
    /// Words of one kept group: rank, group, parts, then per sampled column a count and
    /// `max_rows` (hash, value) pairs.
    fn stride(&self) -> usize {
        2 + self.quantities + self.samples * self.sample_words()
    }

    fn sample_words(&self) -> usize {
        1 + 2 * self.max_rows
    }
}

/// What the bounding returns: one row per group (its keys, its number of persons, each
/// quantity's bounded sum) and, per group in the same order, per sampled column the values
/// its persons keep.
pub(crate) struct Bounded {
    pub sums: RecordBatch,
    pub samples: Vec<Vec<Vec<f64>>>,
}

/// Everything one pass (one partition) has seen.
struct Bounder {
    layout: Layout,
    keys: Box<dyn GroupValues>,
    units: Box<dyn GroupValues>,
    /// Per person, at most `max_groups` kept groups, packed in one allocation: each as its
    /// rank, its group number and its parts (f64 bits), so that finding and updating one
    /// costs one cache miss, not one for the entry and one for its parts.
    persons: Vec<Vec<u64>>,
    /// Words in use in `persons` (a Vec holds at most twice its length).
    kept_words: usize,
    /// Per person, the rank a new group must stay under to get in: the highest kept rank
    /// once the person has `max_groups`, else `u64::MAX`. Dense, so that the many rows a
    /// full person turns away cost one look here and none at the entries.
    admits_below: Vec<u64>,
    /// For `row_is_unit`: per group, persons and each quantity's sum, bounded per row.
    direct: Vec<f64>,
    /// For `row_is_unit`: per group and sampled column, every value.
    direct_samples: Vec<Vec<f64>>,
    /// Keys the hash that picks which values a person's group keeps.
    value_seed: u64,
}

fn failed(e: impl std::fmt::Display) -> GuardError {
    GuardError::Execution(e.to_string())
}

impl Bounder {
    fn new(layout: &Layout, schema: &SchemaRef) -> Result<Self, GuardError> {
        let fields = |range: std::ops::Range<usize>| {
            Arc::new(Schema::new(range.map(|i| schema.field(i).clone()).collect::<Vec<Field>>()))
        };
        // Without keys every row is in the one group: a constant key of its own.
        let keys = if layout.keys == 0 {
            new_group_values(
                Arc::new(Schema::new(vec![Field::new("one", arrow::datatypes::DataType::Boolean, false)])),
                &GroupOrdering::None,
            )
        } else {
            new_group_values(fields(0..layout.keys), &GroupOrdering::None)
        }
        .map_err(failed)?;
        let units = new_group_values(fields(layout.keys..layout.keys + 1), &GroupOrdering::None).map_err(failed)?;
        Ok(Bounder {
            layout: layout.clone(),
            keys,
            units,
            persons: Vec::new(),
            kept_words: 0,
            admits_below: Vec::new(),
            direct: Vec::new(),
            direct_samples: Vec::new(),
            value_seed: 0,
        })
    }

    /// Bytes held, for the query's memory limit.
    fn size(&self) -> usize {
        self.keys.size()
            + self.units.size()
            + self.persons.capacity() * (std::mem::size_of::<Vec<u64>>() + 8)
            + self.kept_words * 2 * 8
            + self.direct.capacity() * 8
            + self.direct_samples.iter().map(|v| v.capacity() * 8 + 24).sum::<usize>()
    }

    fn key_columns(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        if self.layout.keys == 0 {
            vec![Arc::new(arrow::array::BooleanArray::from(vec![true; batch.num_rows()])) as ArrayRef]
        } else {
            batch.columns()[..self.layout.keys].to_vec()
        }
    }

    fn add(&mut self, batch: &RecordBatch, seed: &QualityRandomState, scratch: &mut Scratch) -> Result<(), GuardError> {
        let (k, q) = (self.layout.keys, self.layout.quantities);
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let values: Vec<&[f64]> = (0..q)
            .map(|j| {
                batch
                    .column(k + 1 + j)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .map(|a| a.values().as_ref())
                    .ok_or_else(|| GuardError::Execution("the bounded quantities arrive as Float64".into()))
            })
            .collect::<Result<_, _>>()?;
        let samples: Vec<&Float64Array> = (0..self.layout.samples)
            .map(|s| {
                batch
                    .column(k + 1 + q + s)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| GuardError::Execution("sampled values arrive as Float64".into()))
            })
            .collect::<Result<_, _>>()?;
        scratch.groups.clear();
        self.keys.intern(&self.key_columns(batch), &mut scratch.groups).map_err(failed)?;
        if self.layout.row_is_unit {
            let width = self.layout.samples;
            self.direct_samples.resize_with(self.keys.len() * width, Vec::new);
            for (row, &g) in scratch.groups.iter().enumerate() {
                for (s, column) in samples.iter().enumerate() {
                    if column.is_valid(row) {
                        self.direct_samples[g * width + s].push(column.value(row));
                    }
                }
            }
            // Each row its own person: its part is the row itself, bounded as a part.
            self.direct.resize(self.keys.len() * (q + 1), 0.0);
            for (row, &g) in scratch.groups.iter().enumerate() {
                let at = g * (q + 1);
                self.direct[at] += 1.0;
                for (j, (column, &(lo, hi))) in values.iter().zip(&self.layout.part_bounds).enumerate() {
                    self.direct[at + 1 + j] += column[row].clamp(lo, hi);
                }
            }
            return Ok(());
        }
        self.number_persons(batch.column(k), scratch)?;
        scratch.hashes.clear();
        scratch.hashes.resize(rows, 0);
        create_hashes(&batch.columns()[..=k], seed, &mut scratch.hashes).map_err(failed)?;
        self.grow_persons();
        // First the rows that can change anything: a rank under the person's bound as the
        // batch starts (bounds only fall, so none that could get in is passed over). Most of
        // a person's rows fail here, at one look into a dense array.
        scratch.candidates.clear();
        scratch.candidates.extend(
            (0..rows).filter(|&row| scratch.hashes[row] <= self.admits_below[scratch.units[row]]).map(|row| row as u32),
        );
        // Then those in order.
        scratch.row.resize(q, 0.0);
        for &row in &scratch.candidates {
            let row = row as usize;
            for (part, column) in scratch.row.iter_mut().zip(&values) {
                *part = column[row];
            }
            let person = scratch.units[row];
            let Some(at) = self.offer(person, scratch.groups[row] as u32, scratch.hashes[row], &scratch.row) else {
                continue;
            };
            for (s, column) in samples.iter().enumerate() {
                if column.is_valid(row) {
                    let value = column.value(row).to_bits();
                    self.keep_value(person, at, s, value_hash(value, self.value_seed), value);
                }
            }
        }
        Ok(())
    }

    fn grow_persons(&mut self) {
        if self.persons.len() < self.units.len() {
            self.persons.resize_with(self.units.len(), Vec::new);
            self.admits_below.resize(self.units.len(), u64::MAX);
        }
    }

    /// Each row's person number in `scratch.units`. Only the first row of each run of equal
    /// persons is looked up: a DP table is stored sorted by its unit, so a person's rows come
    /// together and the lookups fall from one per row to one per person; in any other order
    /// the runs are single rows and the answer is the same.
    fn number_persons(&mut self, unit: &ArrayRef, scratch: &mut Scratch) -> Result<(), GuardError> {
        let rows = unit.len();
        scratch.units.clear();
        scratch.starts.clear();
        scratch.starts.push(0u32);
        if rows > 1 {
            let changed = arrow::compute::kernels::cmp::distinct(&unit.slice(0, rows - 1), &unit.slice(1, rows - 1))
                .map_err(failed)?;
            scratch.starts.extend(changed.values().set_indices().map(|i| i as u32 + 1));
        }
        let firsts =
            arrow::compute::take(unit.as_ref(), &arrow::array::UInt32Array::from(scratch.starts.clone()), None)
                .map_err(failed)?;
        scratch.run_persons.clear();
        self.units.intern(&[firsts], &mut scratch.run_persons).map_err(failed)?;
        for (run, &person) in scratch.run_persons.iter().enumerate() {
            let end = scratch.starts.get(run + 1).map_or(rows, |&e| e as usize);
            scratch.units.resize(end, person);
        }
        Ok(())
    }

    /// Adds `parts` to `person`'s entry for `group`, making one if the group's rank earns it
    /// a place among the person's lowest `max_groups`.
    /// Returns where the entry is in the person's words, if the group is kept.
    fn offer(&mut self, person: usize, group: u32, rank: u64, parts: &[f64]) -> Option<usize> {
        // A kept group's rank is at most the highest kept, so a higher one is not kept.
        if rank > self.admits_below[person] {
            return None;
        }
        let stride = self.layout.stride();
        let parts_end = 2 + self.layout.quantities;
        let group = u64::from(group);
        let kept = &mut self.persons[person];
        let at = match kept.chunks_exact(stride).position(|entry| entry[1] == group) {
            Some(i) => i * stride,
            None if kept.len() / stride < self.layout.max_groups => {
                kept.extend([rank, group]);
                kept.resize(kept.len() + stride - 2, 0.0f64.to_bits());
                self.kept_words += stride;
                if kept.len() / stride == self.layout.max_groups {
                    self.admits_below[person] = highest_rank(kept, stride).1;
                }
                kept.len() - stride
            }
            None => {
                let (i, highest) = highest_rank(kept, stride);
                if rank >= highest {
                    return None;
                }
                let at = i * stride;
                kept[at] = rank;
                kept[at + 1] = group;
                kept[at + 2..at + stride].fill(0.0f64.to_bits());
                self.admits_below[person] = highest_rank(kept, stride).1;
                at
            }
        };
        for (bits, part) in kept[at + 2..at + parts_end].iter_mut().zip(parts) {
            *bits = (f64::from_bits(*bits) + part).to_bits();
        }
        Some(at)
    }

    /// Keeps `value` (f64 bits) among the entry's values of sampled column `sample` if it is
    /// among the `max_rows` lowest by (hash, value).
    fn keep_value(&mut self, person: usize, at: usize, sample: usize, hash: u64, value: u64) {
        let m = self.layout.max_rows;
        let base = at + 2 + self.layout.quantities + sample * self.layout.sample_words();
        let kept = &mut self.persons[person][base..base + self.layout.sample_words()];
        let n = kept[0] as usize;
        if n < m {
            kept[1 + 2 * n] = hash;
            kept[2 + 2 * n] = value;
            kept[0] += 1;
            return;
        }
        let pairs = |i: usize| (kept[1 + 2 * i], kept[2 + 2 * i]);
        let Some(highest) = (0..m).max_by_key(|&i| pairs(i)) else { return };
        if (hash, value) < pairs(highest) {
            kept[1 + 2 * highest] = hash;
            kept[2 + 2 * highest] = value;
        }
    }

    /// `other`'s entries and groups added into this one, matched by value.
    fn merge(&mut self, mut other: Bounder) -> Result<(), GuardError> {
        let q = self.layout.quantities;
        let mut group_of = Vec::new();
        let other_keys = other.keys.emit(EmitTo::All).map_err(failed)?;
        self.keys.intern(&other_keys, &mut group_of).map_err(failed)?;
        if self.layout.row_is_unit {
            self.direct.resize(self.keys.len() * (q + 1), 0.0);
            let width = self.layout.samples;
            self.direct_samples.resize_with(self.keys.len() * width, Vec::new);
            for (local, &g) in group_of.iter().enumerate() {
                for j in 0..=q {
                    self.direct[g * (q + 1) + j] += other.direct[local * (q + 1) + j];
                }
                for s in 0..width {
                    let values = std::mem::take(&mut other.direct_samples[local * width + s]);
                    self.direct_samples[g * width + s].extend(values);
                }
            }
            return Ok(());
        }
        let mut person_of = Vec::new();
        let other_units = other.units.emit(EmitTo::All).map_err(failed)?;
        self.units.intern(&other_units, &mut person_of).map_err(failed)?;
        self.grow_persons();
        let mut parts = vec![0.0; q];
        let (stride, words) = (self.layout.stride(), self.layout.sample_words());
        for (local, kept) in other.persons.iter().enumerate() {
            let person = person_of[local];
            for entry in kept.chunks_exact(stride) {
                for (part, bits) in parts.iter_mut().zip(&entry[2..]) {
                    *part = f64::from_bits(*bits);
                }
                let Some(at) = self.offer(person, group_of[entry[1] as usize] as u32, entry[0], &parts) else {
                    continue;
                };
                for s in 0..self.layout.samples {
                    let values = &entry[2 + q + s * words..][..words];
                    for i in 0..values[0] as usize {
                        self.keep_value(person, at, s, values[1 + 2 * i], values[2 + 2 * i]);
                    }
                }
            }
        }
        Ok(())
    }

    /// One row per group: the key columns, the number of persons in it, then each quantity
    /// summed over its persons' bounded parts.
    fn finish(mut self) -> Result<Bounded, GuardError> {
        let (k, q) = (self.layout.keys, self.layout.quantities);
        let groups = self.keys.len();
        let mut totals = vec![0.0f64; groups * (q + 1)];
        let width = self.layout.samples;
        let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); width]; groups];
        if self.layout.row_is_unit {
            totals.copy_from_slice(&self.direct[..groups * (q + 1)]);
            self.direct_samples.resize_with(groups * width, Vec::new);
            for (g, group) in samples.iter_mut().enumerate() {
                for (s, values) in group.iter_mut().enumerate() {
                    *values = std::mem::take(&mut self.direct_samples[g * width + s]);
                }
            }
        } else {
            let (stride, words) = (self.layout.stride(), self.layout.sample_words());
            for kept in &self.persons {
                for entry in kept.chunks_exact(stride) {
                    let group = entry[1] as usize;
                    for (s, values) in samples[group].iter_mut().enumerate() {
                        let kept = &entry[2 + q + s * words..][..words];
                        values.extend((0..kept[0] as usize).map(|i| f64::from_bits(kept[2 + 2 * i])));
                    }
                    let at = group * (q + 1);
                    totals[at] += 1.0;
                    for (j, (bits, &(lo, hi))) in entry[2..].iter().zip(&self.layout.part_bounds).enumerate() {
                        totals[at + 1 + j] += f64::from_bits(*bits).clamp(lo, hi);
                    }
                }
            }
        }
        let mut columns: Vec<ArrayRef> =
            if k == 0 { Vec::new() } else { self.keys.emit(EmitTo::All).map_err(failed)? };
        for j in 0..=q {
            columns.push(Arc::new(Float64Array::from_iter_values((0..groups).map(|g| totals[g * (q + 1) + j]))));
        }
        let mut fields: Vec<Field> = columns[..k]
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("key{i}"), c.data_type().clone(), true))
            .collect();
        fields.extend((0..=q).map(|j| Field::new(format!("q{j}"), arrow::datatypes::DataType::Float64, false)));
        let sums = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(failed)?;
        Ok(Bounded { sums, samples })
    }
}

/// The hash that orders a person's values of one group (splitmix64's finalizer, keyed).
fn value_hash(value: u64, seed: u64) -> u64 {
    let mut z = value ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The position and rank of the highest-ranked of a person's kept groups.
fn highest_rank(kept: &[u64], stride: usize) -> (usize, u64) {
    kept.chunks_exact(stride).map(|entry| entry[0]).enumerate().max_by_key(|&(_, rank)| rank).unwrap_or((0, u64::MAX))
}

/// Buffers reused from batch to batch.
#[derive(Default)]
struct Scratch {
    candidates: Vec<u32>,
    /// The first row of each run of one person, and each run's person number.
    starts: Vec<u32>,
    run_persons: Vec<usize>,
    groups: Vec<usize>,
    units: Vec<usize>,
    hashes: Vec<u64>,
    row: Vec<f64>,
}

/// Runs `plan` (rows in [`Layout`]'s shape), one task per partition, and returns one row per
/// group: its keys, its number of persons, and each quantity's bounded sum. The tables it
/// builds count against the query's memory pool, so a query with too many persons or groups
/// stops with the same resources error as any other.
pub(crate) async fn bounded_sums(
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
    layout: Layout,
) -> Result<Bounded, GuardError> {
    // The ranks' hash, keyed afresh for each query from the thread's CSPRNG (ChaCha, seeded
    // by the operating system), so no one can arrange which of their groups are kept.
    let (seed, value_seed): (u64, u64) = (rand::random(), rand::random());
    let schema = plan.schema();
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..plan.output_partitioning().partition_count() {
        let (plan, context, layout, schema) = (plan.clone(), context.clone(), layout.clone(), schema.clone());
        tasks.spawn(async move {
            let seed = QualityRandomState::with_seed(seed);
            let reservation: MemoryReservation =
                MemoryConsumer::new(format!("dp bounding[{partition}]")).register(context.memory_pool());
            let mut bounder = Bounder::new(&layout, &schema)?;
            bounder.value_seed = value_seed;
            let mut scratch = Scratch::default();
            let mut stream = plan.execute(partition, context).map_err(failed)?;
            while let Some(batch) = stream.next().await {
                bounder.add(&batch.map_err(failed)?, &seed, &mut scratch)?;
                reservation.try_resize(bounder.size()).map_err(|e| GuardError::Stopped(resources(e)))?;
            }
            Ok::<_, GuardError>((bounder, reservation))
        });
    }
    let mut merged: Option<(Bounder, Vec<MemoryReservation>)> = None;
    while let Some(done) = tasks.join_next().await {
        let (bounder, reservation) = done.map_err(failed)??;
        merged = Some(match merged {
            None => (bounder, vec![reservation]),
            Some((mut into, mut held)) => {
                into.merge(bounder)?;
                held.push(reservation);
                (into, held)
            }
        });
    }
    match merged {
        Some((bounder, _held)) => bounder.finish(),
        None => Bounder::new(&layout, &schema)?.finish(),
    }
}

fn resources(e: datafusion::error::DataFusionError) -> String {
    format!("the query needs more memory than it may use ({e}); narrow it and try again")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use datafusion::prelude::SessionContext;
    use std::collections::{HashMap, HashSet};

    /// Rows (key, person, value) through a plan of `partitions` partitions; the value is
    /// also the sampled column, NULL where negative.
    async fn run(rows: &[(i64, i64, f64)], partitions: usize, layout: Layout) -> Bounded {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", arrow::datatypes::DataType::Int64, true),
            Field::new("u", arrow::datatypes::DataType::Int64, true),
            Field::new("v", arrow::datatypes::DataType::Float64, false),
            Field::new("s", arrow::datatypes::DataType::Float64, true),
        ]));
        let chunk = rows.len().div_ceil(partitions * 3).max(1);
        let batches: Vec<RecordBatch> = rows
            .chunks(chunk)
            .map(|c| {
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.0))),
                        Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.1))),
                        Arc::new(Float64Array::from_iter_values(c.iter().map(|r| r.2))),
                        Arc::new(Float64Array::from_iter(c.iter().map(|r| (r.2 >= 0.0).then_some(r.2)))),
                    ],
                )
                .unwrap()
            })
            .collect();
        let per: Vec<Vec<RecordBatch>> =
            (0..partitions).map(|p| batches.iter().skip(p).step_by(partitions).cloned().collect()).collect();
        let table = datafusion::datasource::MemTable::try_new(schema, per).unwrap();
        let ctx = SessionContext::new();
        let plan = ctx.read_table(Arc::new(table)).unwrap().create_physical_plan().await.unwrap();
        bounded_sums(plan, ctx.task_ctx(), layout).await.unwrap()
    }

    fn by_key(batch: &RecordBatch) -> HashMap<i64, (f64, f64)> {
        let keys = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let units = batch.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        let sums = batch.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        (0..batch.num_rows()).map(|i| (keys.value(i), (units.value(i), sums.value(i)))).collect()
    }

    fn layout(max_groups: usize, max_rows: f64) -> Layout {
        Layout {
            keys: 1,
            quantities: 1,
            max_groups,
            part_bounds: vec![(0.0, max_rows)],
            row_is_unit: false,
            samples: 0,
            max_rows: 1,
        }
    }

    /// With no person over a bound the answer is the plain GROUP BY's, whatever the
    /// partitioning: persons counted once per group, every row counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_bound_to_apply_it_is_the_plain_group_by() {
        let rows: Vec<(i64, i64, f64)> = (0..3000).map(|i| (i % 7, i % 100, 1.0)).collect();
        for partitions in [1, 2, 3] {
            let got = by_key(&run(&rows, partitions, layout(7, 1000.0)).await.sums);
            for k in 0..7 {
                let persons: HashSet<i64> = rows.iter().filter(|r| r.0 == k).map(|r| r.1).collect();
                let count = rows.iter().filter(|r| r.0 == k).count() as f64;
                assert_eq!(got[&k], (persons.len() as f64, count), "key {k}, {partitions} partitions");
            }
        }
    }

    /// Each person adds to at most `max_groups` groups and at most `max_rows` to each, and
    /// the choice is the same whether the rows come in one partition or several (the sets
    /// merge to what one pass would keep): the totals obey the bounds exactly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_person_adds_to_at_most_k_groups_whatever_the_partitioning() {
        // 50 persons, each in 40 groups with 3 rows in each: each person's rows together (as
        // a DP table is stored), and the same rows with the persons interleaved.
        let together: Vec<(i64, i64, f64)> =
            (0..50).flat_map(|u| (0..40).flat_map(move |k| (0..3).map(move |_| (k, u, 1.0)))).collect();
        let mut interleaved = together.clone();
        interleaved.sort_by_key(|&(k, u, _)| (k, u % 7, u));
        for (rows, partitions) in [(&together, 1), (&together, 2), (&together, 4), (&interleaved, 1), (&interleaved, 3)]
        {
            let totals = by_key(&run(rows, partitions, layout(4, 2.0)).await.sums);
            let persons: f64 = totals.values().map(|t| t.0).sum();
            let rows_counted: f64 = totals.values().map(|t| t.1).sum();
            assert_eq!(persons, 50.0 * 4.0, "{partitions} partitions: each person in exactly 4 groups");
            assert_eq!(rows_counted, 50.0 * 4.0 * 2.0, "{partitions} partitions: 2 rows per person and group");
        }
    }

    /// The kept groups are a uniform choice: over 40 persons with the same 20 keys, each
    /// key is kept about equally often (no favouring of the first or smallest keys).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_kept_groups_are_not_the_first_or_the_smallest() {
        let rows: Vec<(i64, i64, f64)> = (0..400).flat_map(|u| (0..20).map(move |k| (k, u, 1.0))).collect();
        let totals = by_key(&run(&rows, 2, layout(2, 1.0)).await.sums);
        // 400 persons x 2 groups over 20 keys: 40 each on average, binomial sd about 6.
        for k in 0..20 {
            let n = totals.get(&k).map_or(0.0, |t| t.0);
            assert!((10.0..=75.0).contains(&n), "key {k} kept by {n} persons");
        }
    }

    /// A table without a privacy unit bounds each row as a person of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_as_persons_are_clamped_one_by_one() {
        let rows: Vec<(i64, i64, f64)> = (0..100).map(|i| (i % 2, 0, if i < 10 { 500.0 } else { 1.0 })).collect();
        let layout = Layout { row_is_unit: true, ..layout(1, 5.0) };
        let totals = by_key(&run(&rows, 2, layout).await.sums);
        assert_eq!(totals[&0], (50.0, 5.0 * 5.0 + 45.0));
        assert_eq!(totals[&1], (50.0, 5.0 * 5.0 + 45.0));
    }

    /// For quantiles each person's group keeps at most `max_rows` of its values, the same
    /// ones however the rows are partitioned (chosen by value), and only values it has.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_person_keeps_at_most_m_values_per_group() {
        // 30 persons in 2 groups, 6 rows each: values 100 * person + row, one of them NULL.
        let rows: Vec<(i64, i64, f64)> = (0..30)
            .flat_map(|u| {
                (0..2).flat_map(move |k| (0..6).map(move |r| (k, u, if r == 0 { -1.0 } else { (100 * u + r) as f64 })))
            })
            .collect();
        let layout = Layout { samples: 1, max_rows: 3, ..layout(2, 100.0) };
        for partitions in [1, 2, 3] {
            let bounded = run(&rows, partitions, layout.clone()).await;
            let keys = bounded.sums.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            for (g, group) in bounded.samples.iter().enumerate() {
                let values = &group[0];
                assert_eq!(values.len(), 30 * 3, "group {}, {partitions} partitions", keys.value(g));
                for person in 0..30 {
                    let mine = values.iter().filter(|v| (**v as i64) / 100 == person).count();
                    assert_eq!(mine, 3, "person {person}");
                }
                assert!(values.iter().all(|v| *v >= 0.0 && (*v as i64) % 100 >= 1), "only values the rows have");
            }
        }
    }
}
