//! The 2-D embedding map: PCA for an instant first view, then a neighbour-preserving layout in
//! the manner of UMAP (fuzzy k-NN weights, attractive moves along graph edges, repulsive moves
//! against random points), started from the PCA view; k-means clusters over the result.
//!
//! Layouts are flat `[x0, y0, x1, y1, ...]` f32 arrays: [`pack_le`] turns one into the bytes a
//! browser reads straight into a `Float32Array`.

use crate::distance::VectorSet;
use crate::neighbors::KnnGraph;
use crate::parallel::{map_indexed, thread_count};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

/// Projection on the two principal components, flat pairs. Power iteration on a block of two
/// vectors, one pass over the data per step (the covariance matrix is never formed, so the
/// dimension can be large).
pub fn pca_2d(vectors: &VectorSet, threads: usize) -> Vec<f32> {
    let (n, dim) = (vectors.len(), vectors.dim());
    if n == 0 {
        return Vec::new();
    }
    const CHUNK: usize = 4096;
    let chunks = n.div_ceil(CHUNK);
    let partial_means = map_indexed(chunks, threads, 1, None, |c| {
        let mut sum = vec![0f64; dim];
        for id in c * CHUNK..((c + 1) * CHUNK).min(n) {
            for (s, &x) in sum.iter_mut().zip(vectors.get(id as u32)) {
                *s += f64::from(x);
            }
        }
        sum
    });
    let mut mean = vec![0f64; dim];
    for part in partial_means {
        mean.iter_mut().zip(part).for_each(|(m, p)| *m += p);
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    // Deterministic start: two fixed, different directions.
    let mut basis: [Vec<f64>; 2] = [
        (0..dim).map(|d| 1.0 + (d % 7) as f64 * 0.1).collect(),
        (0..dim).map(|d| if d % 2 == 0 { 1.0 } else { -1.0 } * (1.0 + (d % 5) as f64 * 0.1)).collect(),
    ];
    orthonormalize(&mut basis);
    for _ in 0..60 {
        let b32: [Vec<f32>; 2] = [to_f32(&basis[0]), to_f32(&basis[1])];
        let partial = map_indexed(chunks, threads, 1, None, |c| {
            let mut next = [vec![0f64; dim], vec![0f64; dim]];
            let mut centred = vec![0f32; dim];
            for id in c * CHUNK..((c + 1) * CHUNK).min(n) {
                for ((out, &x), &m) in centred.iter_mut().zip(vectors.get(id as u32)).zip(&mean32) {
                    *out = x - m;
                }
                let s = [crate::distance::dot(&centred, &b32[0]), crate::distance::dot(&centred, &b32[1])];
                for (component, &weight) in s.iter().enumerate() {
                    for (acc, &x) in next[component].iter_mut().zip(&centred) {
                        *acc += f64::from(x * weight);
                    }
                }
            }
            next
        });
        let mut next = [vec![0f64; dim], vec![0f64; dim]];
        for part in partial {
            for c in 0..2 {
                next[c].iter_mut().zip(&part[c]).for_each(|(a, b)| *a += b);
            }
        }
        orthonormalize(&mut next);
        let change: f64 = (0..2).map(|c| 1.0 - dot64(&next[c], &basis[c]).abs()).sum();
        basis = next;
        if change < 1e-9 {
            break;
        }
    }
    // Fix each axis's sign (largest component positive) so reruns draw the same picture.
    for axis in &mut basis {
        let largest = axis.iter().copied().fold(0.0f64, |a, x| if x.abs() > a.abs() { x } else { a });
        if largest < 0.0 {
            axis.iter_mut().for_each(|x| *x = -*x);
        }
    }
    let b32: [Vec<f32>; 2] = [to_f32(&basis[0]), to_f32(&basis[1])];
    let pairs = map_indexed(n, threads, 4096, None, |id| {
        let centred: Vec<f32> = vectors.get(id as u32).iter().zip(&mean32).map(|(x, m)| x - m).collect();
        [crate::distance::dot(&centred, &b32[0]), crate::distance::dot(&centred, &b32[1])]
    });
    pairs.into_iter().flatten().collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn orthonormalize(basis: &mut [Vec<f64>; 2]) {
    let norm = dot64(&basis[0], &basis[0]).sqrt().max(1e-300);
    basis[0].iter_mut().for_each(|x| *x /= norm);
    let projection = dot64(&basis[0], &basis[1]);
    let [first, second] = basis;
    second.iter_mut().zip(first.iter()).for_each(|(x, f)| *x -= projection * f);
    let norm = dot64(second, second).sqrt();
    if norm < 1e-12 {
        // Data of rank one: any orthogonal direction will do.
        second.iter_mut().for_each(|x| *x = 0.0);
        let d = if first.len() > 1 && first[0].abs() > 0.5 { 1 } else { 0 };
        second[d] = 1.0;
        let projection = first[d];
        second.iter_mut().zip(first.iter()).for_each(|(x, f)| *x -= projection * f);
        let norm = dot64(second, second).sqrt().max(1e-300);
        second.iter_mut().for_each(|x| *x /= norm);
    } else {
        second.iter_mut().for_each(|x| *x /= norm);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayoutParams {
    /// Passes over the edges; 0 picks by size (500 for small sets, 200 up to 100k, fewer above).
    pub epochs: usize,
    /// Random points pushed away per attractive move.
    pub negative_samples: usize,
    pub learning_rate: f32,
    /// UMAP's curve 1 / (1 + a d^(2b)); these values are its fit for min_dist 0.1, spread 1.
    pub a: f32,
    pub b: f32,
    pub seed: u64,
    pub threads: usize,
}

impl Default for LayoutParams {
    fn default() -> Self {
        LayoutParams { epochs: 0, negative_samples: 5, learning_rate: 1.0, a: 1.577, b: 0.8951, seed: 11, threads: 0 }
    }
}

/// A symmetric weighted edge of the fuzzy graph.
struct Edge {
    head: u32,
    tail: u32,
    weight: f32,
}

/// UMAP's fuzzy membership: per point, the distance to the nearest neighbour is subtracted and
/// a scale chosen so the memberships sum to log2(k); then the two directions of an edge are
/// combined as a probabilistic union, `a + b - ab`.
fn fuzzy_edges(graph: &KnnGraph) -> Vec<Edge> {
    let n = graph.len();
    let mut directed: Vec<(u32, u32, f32)> = Vec::with_capacity(n * graph.k());
    for id in 0..n as u32 {
        let row = graph.neighbors(id);
        if row.is_empty() {
            continue;
        }
        let rho = row.iter().map(|nb| nb.distance).find(|&d| d > 0.0).unwrap_or(0.0);
        let target = (row.len() as f32).log2().max(1e-3);
        let (mut low, mut high, mut sigma) = (0.0f32, f32::INFINITY, 1.0f32);
        for _ in 0..64 {
            let total: f32 = row.iter().map(|nb| (-(nb.distance - rho).max(0.0) / sigma).exp()).sum();
            if (total - target).abs() < 1e-5 {
                break;
            }
            if total > target {
                high = sigma;
                sigma = (low + high) / 2.0;
            } else {
                low = sigma;
                sigma = if high.is_finite() { (low + high) / 2.0 } else { sigma * 2.0 };
            }
        }
        let sigma = sigma.max(1e-3 * mean_of(row.iter().map(|nb| nb.distance)).max(1e-12));
        for nb in row {
            let weight = (-(nb.distance - rho).max(0.0) / sigma).exp();
            let (a, b) = if id < nb.id { (id, nb.id) } else { (nb.id, id) };
            directed.push((a, b, weight));
        }
    }
    directed.sort_unstable_by_key(|&(a, b, _)| (a, b));
    let mut edges = Vec::with_capacity(directed.len());
    let mut i = 0;
    while i < directed.len() {
        let (a, b, w) = directed[i];
        if i + 1 < directed.len() && directed[i + 1].0 == a && directed[i + 1].1 == b {
            let w2 = directed[i + 1].2;
            edges.push(Edge { head: a, tail: b, weight: w + w2 - w * w2 });
            i += 2;
        } else {
            edges.push(Edge { head: a, tail: b, weight: w });
            i += 1;
        }
    }
    edges
}

fn mean_of(values: impl Iterator<Item = f32>) -> f32 {
    let (s, c) = values.fold((0.0f32, 0usize), |(s, c), v| (s + v, c + 1));
    if c == 0 { 0.0 } else { s / c as f32 }
}

/// A 2-D f32 kept as bits in an atomic, so threads can move points at once ("hogwild" SGD,
/// as UMAP does) without a data race: relaxed loads and stores are plain moves.
struct Coordinates(Vec<AtomicU32>);

impl Coordinates {
    #[inline]
    fn get(&self, id: u32) -> [f32; 2] {
        let i = id as usize * 2;
        [f32::from_bits(self.0[i].load(Relaxed)), f32::from_bits(self.0[i + 1].load(Relaxed))]
    }

    #[inline]
    fn set(&self, id: u32, value: [f32; 2]) {
        let i = id as usize * 2;
        self.0[i].store(value[0].to_bits(), Relaxed);
        self.0[i + 1].store(value[1].to_bits(), Relaxed);
    }
}

/// A tiny xorshift generator per thread: negative sampling draws billions of numbers and needs
/// no quality beyond "spread out".
struct Xorshift(u64);

impl Xorshift {
    #[inline]
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (((self.0 >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// The neighbour-preserving layout of the graph's points, started from `initial` (flat pairs,
/// e.g. [`pca_2d`]), rescaled to a box of side 20. `progress(epoch, epochs)`.
pub fn layout(
    graph: &KnnGraph,
    initial: &[f32],
    params: &LayoutParams,
    progress: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Vec<f32> {
    let n = graph.len();
    assert_eq!(initial.len(), n * 2, "one initial pair per graph point");
    let mut start = initial.to_vec();
    rescale(&mut start, 10.0);
    if n < 3 {
        return start;
    }
    let edges = fuzzy_edges(graph);
    let epochs = match params.epochs {
        0 if n <= 10_000 => 500,
        0 if n <= 100_000 => 200,
        0 => 100,
        e => e,
    };
    let max_weight = edges.iter().map(|e| e.weight).fold(0.0f32, f32::max);
    // Each edge is sampled in proportion to its weight: every `period` epochs.
    let period: Vec<f32> = edges.iter().map(|e| max_weight / e.weight.max(1e-12)).collect();
    let next_due: Vec<AtomicU32> = period.iter().map(|p| AtomicU32::new(p.to_bits())).collect();
    let coordinates = Coordinates(start.iter().map(|x| AtomicU32::new(x.to_bits())).collect());
    let (a, b) = (params.a, params.b);
    let threads = thread_count(params.threads);
    const CHUNK: usize = 4096;
    let chunks = edges.len().div_ceil(CHUNK);
    for epoch in 0..epochs {
        let alpha = params.learning_rate * (1.0 - epoch as f32 / epochs as f32);
        let now = epoch as f32 + 1.0;
        let next_chunk = AtomicUsize::new(0);
        let work = |worker: usize| {
            let mut rng =
                Xorshift(params.seed ^ ((epoch as u64) << 20 | worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            loop {
                let c = next_chunk.fetch_add(1, Relaxed);
                if c >= chunks {
                    return;
                }
                for e in c * CHUNK..((c + 1) * CHUNK).min(edges.len()) {
                    let due = f32::from_bits(next_due[e].load(Relaxed));
                    if due > now {
                        continue;
                    }
                    next_due[e].store((due + period[e]).to_bits(), Relaxed);
                    let edge = &edges[e];
                    let mut head = coordinates.get(edge.head);
                    let mut tail = coordinates.get(edge.tail);
                    let (dx, dy) = (head[0] - tail[0], head[1] - tail[1]);
                    let d2 = dx * dx + dy * dy;
                    if d2 > 0.0 {
                        let pow = d2.powf(b);
                        let coefficient = -2.0 * a * b * pow / d2 / (1.0 + a * pow);
                        let (gx, gy) = (clip(coefficient * dx) * alpha, clip(coefficient * dy) * alpha);
                        head = [head[0] + gx, head[1] + gy];
                        tail = [tail[0] - gx, tail[1] - gy];
                        coordinates.set(edge.tail, tail);
                    }
                    for _ in 0..params.negative_samples {
                        let other = rng.below(n as u32);
                        if other == edge.head {
                            continue;
                        }
                        let far = coordinates.get(other);
                        let (dx, dy) = (head[0] - far[0], head[1] - far[1]);
                        let d2 = dx * dx + dy * dy;
                        let coefficient =
                            if d2 > 0.0 { 2.0 * b / ((0.001 + d2) * (1.0 + a * d2.powf(b))) } else { 0.0 };
                        let (gx, gy) = if coefficient > 0.0 {
                            (clip(coefficient * dx), clip(coefficient * dy))
                        } else {
                            (4.0, 4.0)
                        };
                        head = [head[0] + gx * alpha, head[1] + gy * alpha];
                    }
                    coordinates.set(edge.head, head);
                }
            }
        };
        if threads == 1 {
            work(0);
        } else {
            std::thread::scope(|scope| {
                for worker in 1..threads {
                    scope.spawn(move || work(worker));
                }
                work(0);
            });
        }
        if let Some(progress) = progress {
            progress(epoch + 1, epochs);
        }
    }
    coordinates.0.into_iter().map(|x| f32::from_bits(x.into_inner())).collect()
}

#[inline]
fn clip(x: f32) -> f32 {
    x.clamp(-4.0, 4.0)
}

/// Centres flat pairs and scales them so the larger extent spans [-half, half].
fn rescale(points: &mut [f32], half: f32) {
    let n = points.len() / 2;
    if n == 0 {
        return;
    }
    let (mut min, mut max) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
    for p in points.chunks_exact(2) {
        for axis in 0..2 {
            min[axis] = min[axis].min(p[axis]);
            max[axis] = max[axis].max(p[axis]);
        }
    }
    let extent = (max[0] - min[0]).max(max[1] - min[1]);
    let scale = if extent > 0.0 { 2.0 * half / extent } else { 1.0 };
    let centre = [(min[0] + max[0]) / 2.0, (min[1] + max[1]) / 2.0];
    for p in points.chunks_exact_mut(2) {
        for axis in 0..2 {
            p[axis] = (p[axis] - centre[axis]) * scale;
        }
    }
}

/// k-means over flat 2-D pairs (k-means++ seeding, Lloyd steps); returns each point's cluster,
/// clusters numbered by size (0 the largest).
pub fn kmeans_2d(points: &[f32], k: usize, iterations: usize, seed: u64) -> Vec<u32> {
    let n = points.len() / 2;
    if n == 0 || k == 0 {
        return vec![0; n];
    }
    let k = k.min(n);
    let point = |i: usize| [points[2 * i], points[2 * i + 1]];
    let d2 = |p: [f32; 2], q: [f32; 2]| (p[0] - q[0]) * (p[0] - q[0]) + (p[1] - q[1]) * (p[1] - q[1]);
    let mut rng = Xorshift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // Seed on a sample: k-means++ over a million points would cost k full passes.
    let sample: Vec<usize> =
        if n > 20_000 { (0..20_000).map(|_| rng.below(n as u32) as usize).collect() } else { (0..n).collect() };
    let mut centres = vec![point(sample[rng.below(sample.len() as u32) as usize])];
    let mut nearest: Vec<f32> = sample.iter().map(|&i| d2(point(i), centres[0])).collect();
    while centres.len() < k {
        let total: f64 = nearest.iter().map(|&d| f64::from(d)).sum();
        if total <= 0.0 {
            break;
        }
        let mut target = f64::from(rng.below(u32::MAX)) / f64::from(u32::MAX) * total;
        let mut chosen = sample.len() - 1;
        for (s, &d) in nearest.iter().enumerate() {
            target -= f64::from(d);
            if target <= 0.0 {
                chosen = s;
                break;
            }
        }
        let centre = point(sample[chosen]);
        centres.push(centre);
        for (s, &i) in sample.iter().enumerate() {
            nearest[s] = nearest[s].min(d2(point(i), centre));
        }
    }
    let mut assignment = vec![0u32; n];
    for _ in 0..iterations.max(1) {
        let mut sums = vec![[0f64; 3]; centres.len()];
        let mut changed = false;
        for (i, slot) in assignment.iter_mut().enumerate() {
            let p = point(i);
            let best = (0..centres.len())
                .min_by(|&a, &b| d2(p, centres[a]).total_cmp(&d2(p, centres[b])))
                .expect("at least one centre") as u32;
            changed |= best != *slot;
            *slot = best;
            let s = &mut sums[best as usize];
            s[0] += f64::from(p[0]);
            s[1] += f64::from(p[1]);
            s[2] += 1.0;
        }
        for (centre, s) in centres.iter_mut().zip(&sums) {
            if s[2] > 0.0 {
                *centre = [(s[0] / s[2]) as f32, (s[1] / s[2]) as f32];
            }
        }
        if !changed {
            break;
        }
    }
    let mut sizes: Vec<(usize, u32)> = (0..centres.len() as u32).map(|c| (0, c)).collect();
    for &a in &assignment {
        sizes[a as usize].0 += 1;
    }
    sizes.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let mut rank = vec![0u32; centres.len()];
    for (r, &(_, c)) in sizes.iter().enumerate() {
        rank[c as usize] = r as u32;
    }
    assignment.into_iter().map(|a| rank[a as usize]).collect()
}

/// Fraction of each sampled point's `k` graph neighbours that are among its `k` nearest in the
/// layout: how well the map keeps neighbourhoods (1 is perfect).
pub fn neighbor_preservation(graph: &KnnGraph, layout: &[f32], samples: usize, k: usize) -> f32 {
    let n = graph.len();
    if n < 2 {
        return 1.0;
    }
    let step = (n / samples.max(1)).max(1);
    let chosen: Vec<u32> = (0..n as u32).step_by(step).take(samples).collect();
    let kept = map_indexed(chosen.len(), 0, 16, None, |s| {
        let id = chosen[s];
        let here = [layout[2 * id as usize], layout[2 * id as usize + 1]];
        let mut closest: std::collections::BinaryHeap<(u32, u32)> = std::collections::BinaryHeap::new();
        for other in 0..n as u32 {
            if other == id {
                continue;
            }
            let (dx, dy) = (layout[2 * other as usize] - here[0], layout[2 * other as usize + 1] - here[1]);
            // Non-negative floats order like their bits.
            let key = (dx * dx + dy * dy).to_bits();
            if closest.len() < k {
                closest.push((key, other));
            } else if key < closest.peek().expect("full").0 {
                closest.pop();
                closest.push((key, other));
            }
        }
        let near: Vec<u32> = closest.into_iter().map(|(_, o)| o).collect();
        let truth = graph.neighbors(id);
        let truth = &truth[..truth.len().min(k)];
        (truth.iter().filter(|nb| near.contains(&nb.id)).count(), truth.len())
    });
    let (hit, total) = kept.into_iter().fold((0, 0), |(h, t), (a, b)| (h + a, t + b));
    if total == 0 { 1.0 } else { hit as f32 / total as f32 }
}

/// Flat f32 pairs as little-endian bytes, the map's wire format.
pub fn pack_le(points: &[f32]) -> Vec<u8> {
    points.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Metric;

    /// Three tight, well separated blobs in 10-D whose structure lies off the first axes.
    fn blobs(per_blob: usize) -> (VectorSet, Vec<usize>) {
        let mut set = VectorSet::new(10);
        let mut truth = Vec::new();
        let mut rng = Xorshift(99);
        for i in 0..per_blob * 3 {
            let blob = i % 3;
            let v: Vec<f32> = (0..10)
                .map(|d| {
                    let centre = if d == blob * 3 { 10.0 } else { 0.0 };
                    centre + (rng.below(1000) as f32 / 1000.0 - 0.5)
                })
                .collect();
            set.push(&v);
            truth.push(blob);
        }
        (set, truth)
    }

    #[test]
    fn pca_finds_the_dominant_direction() {
        let mut set = VectorSet::new(3);
        for i in 0..200 {
            let t = i as f32 - 100.0;
            set.push(&[5.0 + 0.5 * t, 1.0 - 0.5 * t, (i % 3) as f32 * 0.01]);
        }
        let pairs = pca_2d(&set, 2);
        assert_eq!(pairs.len(), 400);
        // Points along the line spread along x by |t| * 0.707 and barely along y.
        let spread_x = pairs[0] - pairs[398];
        assert!((spread_x.abs() - 199.0 * 0.5 * 2f32.sqrt()).abs() < 0.1, "{spread_x}");
        assert!(pairs.chunks(2).all(|p| p[1].abs() < 0.05));
    }

    #[test]
    fn layout_separates_clusters_and_keeps_neighbours() {
        let (set, truth) = blobs(150);
        let graph = KnnGraph::exact(&set, Metric::L2, 10, 2);
        let initial = pca_2d(&set, 2);
        let params = LayoutParams { epochs: 200, threads: 2, ..Default::default() };
        let map = layout(&graph, &initial, &params, None);
        assert_eq!(map.len(), 900);
        assert!(map.iter().all(|x| x.is_finite()));
        let clusters = kmeans_2d(&map, 3, 50, 1);
        // Every blob lands in one cluster of its own.
        for blob in 0..3 {
            let ids: Vec<u32> = (0..450).filter(|&i| truth[i] == blob).map(|i| clusters[i]).collect();
            assert!(ids.iter().all(|&c| c == ids[0]), "blob {blob} split across clusters");
        }
        let distinct: std::collections::BTreeSet<u32> = clusters.iter().copied().collect();
        assert_eq!(distinct.len(), 3);
        let kept = neighbor_preservation(&graph, &map, 100, 10);
        assert!(kept > 0.3, "only {kept} of neighbours kept");
    }

    #[test]
    fn packed_pairs_are_little_endian_f32() {
        let bytes = pack_le(&[1.0, -2.5]);
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }
}
