//! Distances between f32 vectors, and exact k-nearest-neighbour search.
//!
//! Cosine is computed as `1 - dot` over vectors normalised once on the way in, so every
//! comparison is a single dot product. L2 is kept squared inside the search (the order is the
//! same and the square root is saved) and reported as the true Euclidean distance.
//!
//! The kernels keep several independent accumulators: float addition is not associative, so
//! LLVM only vectorises a reduction when the code already spells out the lanes.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Cosine,
    L2,
}

impl Metric {
    pub fn parse(name: &str) -> Option<Metric> {
        match name {
            "cosine" => Some(Metric::Cosine),
            "l2" => Some(Metric::L2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
        }
    }

    /// Prepares a vector for storage or as a query: cosine normalises, L2 keeps it as is.
    pub fn prepare(self, vector: &mut [f32]) {
        if self == Metric::Cosine {
            normalize(vector);
        }
    }

    /// The internal distance of two prepared vectors: `1 - cos` or squared L2.
    #[inline]
    pub fn internal(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine => 1.0 - dot(a, b),
            Metric::L2 => l2_squared(a, b),
        }
    }

    /// Converts an internal distance into the one reported to callers.
    #[inline]
    pub fn report(self, internal: f32) -> f32 {
        match self {
            Metric::Cosine => internal.max(0.0),
            Metric::L2 => internal.max(0.0).sqrt(),
        }
    }
}

const LANES: usize = 16;

/// Dot product. Dispatches to an AVX2+FMA build of the same loop when the CPU has it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        match simd::level() {
            // SAFETY: the CPU was checked to support the features each function is built for.
            simd::Level::Avx512 => return unsafe { simd::dot_avx512(a, b) },
            simd::Level::Avx2 => return unsafe { simd::dot_avx2(a, b) },
            simd::Level::Portable => {}
        }
    }
    dot_portable(a, b)
}

/// Squared Euclidean distance, dispatched like [`dot`].
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        match simd::level() {
            // SAFETY: as in `dot`.
            simd::Level::Avx512 => return unsafe { simd::l2_squared_avx512(a, b) },
            simd::Level::Avx2 => return unsafe { simd::l2_squared_avx2(a, b) },
            simd::Level::Portable => {}
        }
    }
    l2_squared_portable(a, b)
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<LANES>(a, b)
}

#[inline(always)]
fn l2_squared_portable(a: &[f32], b: &[f32]) -> f32 {
    l2_lanes::<LANES>(a, b)
}

/// `N` independent partial sums: enough to fill the vector registers and hide add latency.
#[inline(always)]
fn dot_lanes<const N: usize>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; N];
    let (a_chunks, b_chunks) = (a.chunks_exact(N), b.chunks_exact(N));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..N {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn l2_lanes<const N: usize>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; N];
    let (a_chunks, b_chunks) = (a.chunks_exact(N), b.chunks_exact(N));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..N {
            let d = x[i] - y[i];
            lanes[i] += d * d;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::sync::atomic::{AtomicU8, Ordering};

    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(super) enum Level {
        Portable,
        Avx2,
        Avx512,
    }

    /// 0 unknown, else the level + 1: detected once, then a relaxed load per call.
    static LEVEL: AtomicU8 = AtomicU8::new(0);

    #[inline(always)]
    pub(super) fn level() -> Level {
        match LEVEL.load(Ordering::Relaxed) {
            1 => Level::Portable,
            2 => Level::Avx2,
            3 => Level::Avx512,
            _ => {
                let level = if std::is_x86_feature_detected!("avx512f") {
                    Level::Avx512
                } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    Level::Avx2
                } else {
                    Level::Portable
                };
                LEVEL.store(level as u8 + 1, Ordering::Relaxed);
                level
            }
        }
    }

    /// The portable loop compiled with AVX2 and FMA enabled: same source, wider registers.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        super::dot_portable(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn l2_squared_avx2(a: &[f32], b: &[f32]) -> f32 {
        super::l2_squared_portable(a, b)
    }

    /// The same loop for AVX-512, 32 lanes wide: two registers of partial sums.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        super::dot_lanes::<32>(a, b)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn l2_squared_avx512(a: &[f32], b: &[f32]) -> f32 {
        super::l2_lanes::<32>(a, b)
    }
}

/// Scales `vector` to unit length; a zero vector stays zero.
pub fn normalize(vector: &mut [f32]) {
    let inverse = inverse_norm(vector);
    if inverse > 0.0 {
        vector.iter_mut().for_each(|x| *x *= inverse);
    }
}

/// `1 / |vector|`, and 0 for the zero vector (whose cosine distance to anything is then 1).
#[inline]
pub fn inverse_norm(vector: &[f32]) -> f32 {
    let norm = dot(vector, vector).sqrt();
    if norm > 0.0 { 1.0 / norm } else { 0.0 }
}

/// One search hit: the vector's id and its reported distance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Neighbor {
    pub id: u32,
    pub distance: f32,
}

/// A (distance, id) pair ordered by distance then id, for heaps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scored {
    pub distance: f32,
    pub id: u32,
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.total_cmp(&other.distance).then(self.id.cmp(&other.id))
    }
}

/// Vectors of one dimension stored one after another: the layout both the index and exact
/// search read. Copy-on-write: a clone shares the floats until one side changes them, so the
/// similarity index and the server's cache of a version's vectors hold one copy, not two.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSet {
    dim: usize,
    data: Arc<Vec<f32>>,
}

impl VectorSet {
    pub fn new(dim: usize) -> VectorSet {
        assert!(dim > 0, "vectors need at least one dimension");
        VectorSet { dim, data: Arc::default() }
    }

    /// Wraps `data` (length a multiple of `dim`).
    pub fn from_flat(dim: usize, data: Vec<f32>) -> VectorSet {
        assert!(dim > 0 && data.len().is_multiple_of(dim), "flat data must hold whole vectors");
        VectorSet { dim, data: Arc::new(data) }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    #[inline]
    pub fn get(&self, id: u32) -> &[f32] {
        let start = id as usize * self.dim;
        &self.data[start..start + self.dim]
    }

    pub fn push(&mut self, vector: &[f32]) -> u32 {
        assert_eq!(vector.len(), self.dim, "vector has the wrong dimension");
        let id = self.len() as u32;
        Arc::make_mut(&mut self.data).extend_from_slice(vector);
        id
    }

    pub fn as_flat(&self) -> &[f32] {
        &self.data
    }

    /// The floats, shared with this set and its clones.
    pub fn shared(&self) -> Arc<Vec<f32>> {
        self.data.clone()
    }

    /// Prepares every vector for `metric` in place.
    pub fn prepare(&mut self, metric: Metric) {
        if metric == Metric::Cosine {
            Arc::make_mut(&mut self.data).chunks_exact_mut(self.dim).for_each(normalize);
        }
    }
}

/// Exact k nearest neighbours of `query` among `vectors` (already prepared for `metric`),
/// keeping only ids `allow` accepts, nearest first. `query` is prepared here.
pub fn exact_knn(
    vectors: &VectorSet,
    metric: Metric,
    query: &[f32],
    k: usize,
    allow: Option<&dyn Fn(u32) -> bool>,
) -> Vec<Neighbor> {
    let mut query = query.to_vec();
    metric.prepare(&mut query);
    nearest(vectors, metric, k, allow, |vector| metric.internal(&query, vector))
}

/// [`exact_knn`] over vectors as stored, not prepared for `metric`: cosine scales each dot
/// product by the vector's inverse norm instead, so a search copies nothing of a large set
/// (preparing a copy of a million 256-d vectors per query took a GiB). The arithmetic is the
/// similarity index's ([`crate::Hnsw`] keeps vectors as given too), so the two report the same
/// distances for the same pair.
pub fn exact_knn_unprepared(
    vectors: &VectorSet,
    metric: Metric,
    query: &[f32],
    k: usize,
    allow: Option<&dyn Fn(u32) -> bool>,
) -> Vec<Neighbor> {
    if metric == Metric::L2 {
        // L2 prepares nothing.
        return exact_knn(vectors, metric, query, k, allow);
    }
    let mut query = query.to_vec();
    metric.prepare(&mut query);
    nearest(vectors, metric, k, allow, |vector| cosine_to_unprepared(&query, vector, inverse_norm(vector)))
}

/// The cosine distance of a unit-length `query` to a vector as stored, given its inverse norm.
#[inline]
pub(crate) fn cosine_to_unprepared(query: &[f32], vector: &[f32], inverse_norm: f32) -> f32 {
    1.0 - dot(query, vector) * inverse_norm
}

/// The `k` allowed ids of smallest internal `distance`, nearest first, reported in the metric's terms.
fn nearest(
    vectors: &VectorSet,
    metric: Metric,
    k: usize,
    allow: Option<&dyn Fn(u32) -> bool>,
    mut distance: impl FnMut(&[f32]) -> f32,
) -> Vec<Neighbor> {
    let mut heap: BinaryHeap<Scored> = BinaryHeap::with_capacity(k + 1);
    if k == 0 {
        return Vec::new();
    }
    for (id, vector) in vectors.as_flat().chunks_exact(vectors.dim()).enumerate() {
        let id = id as u32;
        if allow.is_some_and(|allow| !allow(id)) {
            continue;
        }
        let distance = distance(vector);
        if heap.len() < k {
            heap.push(Scored { distance, id });
        } else if distance < heap.peek().expect("heap is full").distance {
            heap.pop();
            heap.push(Scored { distance, id });
        }
    }
    heap.into_sorted_vec().into_iter().map(|s| Neighbor { id: s.id, distance: metric.report(s.distance) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn kernels_agree_with_naive_sums_for_every_length() {
        for len in [1, 3, 15, 16, 17, 31, 64, 100, 128, 129] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| ((i * 5 % 11) as f32 - 5.0) / 2.0).collect();
            let expected_l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            assert!((dot(&a, &b) - naive_dot(&a, &b)).abs() < 1e-3, "dot at len {len}");
            assert!((l2_squared(&a, &b) - expected_l2).abs() < 1e-3, "l2 at len {len}");
            assert!((dot_portable(&a, &b) - naive_dot(&a, &b)).abs() < 1e-3);
        }
    }

    #[test]
    fn cosine_ignores_length_and_l2_reports_euclidean() {
        let mut a = vec![3.0, 4.0];
        let mut b = vec![6.0, 8.0];
        Metric::Cosine.prepare(&mut a);
        Metric::Cosine.prepare(&mut b);
        assert!(Metric::Cosine.internal(&a, &b).abs() < 1e-6);
        let orthogonal = {
            let mut v = vec![-4.0, 3.0];
            Metric::Cosine.prepare(&mut v);
            v
        };
        assert!((Metric::Cosine.internal(&a, &orthogonal) - 1.0).abs() < 1e-6);
        let d = Metric::L2.internal(&[0.0, 0.0], &[3.0, 4.0]);
        assert_eq!(d, 25.0);
        assert_eq!(Metric::L2.report(d), 5.0);
    }

    #[test]
    fn exact_knn_orders_and_filters() {
        let mut set = VectorSet::new(1);
        for x in [5.0, 1.0, 3.0, 2.0, 4.0] {
            set.push(&[x]);
        }
        let hits = exact_knn(&set, Metric::L2, &[0.0], 3, None);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert_eq!(hits[0].distance, 1.0);
        let odd_only = |id: u32| id % 2 == 1;
        let hits = exact_knn(&set, Metric::L2, &[0.0], 2, Some(&odd_only));
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![1, 3]);
        assert!(exact_knn(&set, Metric::L2, &[0.0], 0, None).is_empty());
    }

    #[test]
    fn unprepared_search_finds_what_a_prepared_copy_finds() {
        let mut set = VectorSet::new(3);
        for i in 0..200u32 {
            let f = i as f32;
            set.push(&[(f * 0.37).sin() * (1.0 + f), (f * 0.11).cos() * 3.0, f % 7.0 - 3.0]);
        }
        let mut prepared = set.clone();
        prepared.prepare(Metric::Cosine);
        let skip_fives = |id: u32| !id.is_multiple_of(5);
        for query in [[1.0, 0.5, -2.0], [0.0, 0.0, 1.0]] {
            for metric in [Metric::Cosine, Metric::L2] {
                let expected = if metric == Metric::Cosine { &prepared } else { &set };
                let want = exact_knn(expected, metric, &query, 7, Some(&skip_fives));
                let got = exact_knn_unprepared(&set, metric, &query, 7, Some(&skip_fives));
                assert_eq!(got.iter().map(|n| n.id).collect::<Vec<_>>(), want.iter().map(|n| n.id).collect::<Vec<_>>());
                for (g, w) in got.iter().zip(&want) {
                    assert!((g.distance - w.distance).abs() < 1e-5, "{metric:?}: {g:?} against {w:?}");
                }
            }
        }
    }
}
