//! ANN benchmark: milkglass-insight's HNSW on clustered vectors, plus the all-points k-NN graph
//! and the 2-D map. Not a test (`harness = false`); run it with
//!
//!     cargo bench -p milkglass-insight --bench ann -- --n 1000000 --dir /tmp/ann-bench
//!
//! It writes the vectors it generates (`base.f32`, `queries.f32`, little-endian, row after row),
//! the exact neighbours (`truth.u32`) and its results (`rust.json`) into `--dir`, so that
//! `bench/ann_vs_hnswlib.py` runs hnswlib on exactly the same data. Files already there for the
//! same parameters are reused.
//!
//! Options: --n, --dim, --queries, --clusters, --m, --ef-construction, --threads, --k,
//! --efs 10,20,..., --dir, --skip-index, --graph (time the all-points k-NN graph),
//! --map (time the 2-D map), --graph-ef.

use milkglass_insight::distance::{Metric, VectorSet, exact_knn};
use milkglass_insight::hnsw::{Hnsw, HnswParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Options {
    n: usize,
    dim: usize,
    queries: usize,
    clusters: usize,
    m: usize,
    ef_construction: usize,
    threads: usize,
    k: usize,
    efs: Vec<usize>,
    dir: PathBuf,
    skip_index: bool,
    graph: bool,
    graph_ef: usize,
    map: bool,
}

fn options() -> Options {
    let mut o = Options {
        n: 100_000,
        dim: 128,
        queries: 1000,
        clusters: 1000,
        m: 16,
        ef_construction: 200,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        k: 10,
        efs: vec![10, 16, 24, 32, 48, 64, 96, 128, 192, 256],
        dir: std::env::temp_dir().join("milkglass-ann-bench"),
        skip_index: false,
        graph: false,
        graph_ef: 32,
        map: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--n" => o.n = value().parse().unwrap(),
            "--dim" => o.dim = value().parse().unwrap(),
            "--queries" => o.queries = value().parse().unwrap(),
            "--clusters" => o.clusters = value().parse().unwrap(),
            "--m" => o.m = value().parse().unwrap(),
            "--ef-construction" => o.ef_construction = value().parse().unwrap(),
            "--threads" => o.threads = value().parse().unwrap(),
            "--k" => o.k = value().parse().unwrap(),
            "--efs" => o.efs = value().split(',').map(|e| e.parse().unwrap()).collect(),
            "--dir" => o.dir = PathBuf::from(value()),
            "--graph-ef" => o.graph_ef = value().parse().unwrap(),
            "--skip-index" => o.skip_index = true,
            "--graph" => o.graph = true,
            "--map" => o.map = true,
            "--bench" => {} // cargo bench passes this to every bench target
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// Clustered data shaped like model embeddings: each cluster is a centre plus a random
/// 12-dimensional subspace it spreads along, plus a little isotropic noise. (Pure isotropic
/// noise in 128 dimensions would be unlike any real embedding and hard for every ANN index.)
fn clustered(rng: &mut StdRng, centres: &[(Vec<f32>, Vec<f32>)], count: usize, dim: usize) -> VectorSet {
    const LATENT: usize = 12;
    let mut data = Vec::with_capacity(count * dim);
    let mut latent = [0f32; LATENT];
    for _ in 0..count {
        let (centre, basis) = &centres[rng.random_range(0..centres.len())];
        for z in &mut latent {
            *z = gaussian(rng);
        }
        for d in 0..dim {
            let mut x = centre[d] + 0.05 * gaussian(rng);
            for (l, z) in latent.iter().enumerate() {
                x += basis[d * LATENT + l] * z;
            }
            data.push(x);
        }
    }
    VectorSet::from_flat(dim, data)
}

fn gaussian(rng: &mut StdRng) -> f32 {
    // Sum of four uniforms: close enough to normal for test data, and cheap.
    let s: f32 = (0..4).map(|_| rng.random::<f32>()).sum();
    (s - 2.0) * 3f32.sqrt()
}

fn write_f32(path: &Path, data: &[f32]) {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn parallel_map<T: Send>(count: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, T)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= count {
                            return out;
                        }
                        out.push((i, f(i)));
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut all: Vec<(usize, T)> = parts.iter_mut().flat_map(std::mem::take).collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

fn main() {
    let o = options();
    std::fs::create_dir_all(&o.dir).unwrap();
    let tag = format!("n={} dim={} queries={} clusters={} k={}", o.n, o.dim, o.queries, o.clusters, o.k);
    let tag_path = o.dir.join("params.txt");
    let (base_path, query_path, truth_path) =
        (o.dir.join("base.f32"), o.dir.join("queries.f32"), o.dir.join("truth.u32"));
    let reuse = std::fs::read_to_string(&tag_path).is_ok_and(|t| t.trim() == tag) && truth_path.exists();
    let started = Instant::now();
    let (base, queries, truth) = if reuse {
        let base = VectorSet::from_flat(o.dim, read_f32(&base_path));
        let queries = VectorSet::from_flat(o.dim, read_f32(&query_path));
        let truth: Vec<u32> = std::fs::read(&truth_path)
            .unwrap()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        eprintln!("reused data in {}", o.dir.display());
        (base, queries, truth)
    } else {
        let mut rng = StdRng::seed_from_u64(42);
        let centres: Vec<(Vec<f32>, Vec<f32>)> = (0..o.clusters)
            .map(|_| {
                let centre = (0..o.dim).map(|_| 2.0 * gaussian(&mut rng)).collect();
                let basis = (0..o.dim * 12).map(|_| 0.15 * gaussian(&mut rng)).collect();
                (centre, basis)
            })
            .collect();
        let base = clustered(&mut rng, &centres, o.n, o.dim);
        let queries = clustered(&mut rng, &centres, o.queries, o.dim);
        eprintln!("generated {} x {} in {:.1}s; exact neighbours...", o.n, o.dim, started.elapsed().as_secs_f64());
        let t = Instant::now();
        let truth: Vec<u32> = parallel_map(o.queries, o.threads, |q| {
            exact_knn(&base, Metric::L2, queries.get(q as u32), o.k, None).into_iter().map(|n| n.id).collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();
        eprintln!("exact neighbours of {} queries in {:.1}s", o.queries, t.elapsed().as_secs_f64());
        write_f32(&base_path, base.as_flat());
        write_f32(&query_path, queries.as_flat());
        std::fs::write(&truth_path, truth.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        std::fs::write(&tag_path, &tag).unwrap();
        (base, queries, truth)
    };
    let mut results =
        vec![format!("\"params\":\"{tag} m={} ef_construction={} threads={}\"", o.m, o.ef_construction, o.threads)];

    let params = HnswParams { m: o.m, ef_construction: o.ef_construction, threads: o.threads, ..HnswParams::default() };
    let index_path = o.dir.join(format!("rust-m{}-efc{}.hnsw", o.m, o.ef_construction));
    let index = if o.skip_index && index_path.exists() {
        Hnsw::load(&index_path, o.threads).unwrap()
    } else {
        let rss_before = peak_rss_mib();
        let t = Instant::now();
        let last = std::sync::atomic::AtomicUsize::new(0);
        let progress = |done: usize, total: usize| {
            let tenth = done * 10 / total.max(1);
            if last.fetch_max(tenth, std::sync::atomic::Ordering::Relaxed) < tenth {
                eprintln!("  build {}% after {:.0}s", tenth * 10, t.elapsed().as_secs_f64());
            }
        };
        let index = Hnsw::build(&base, Metric::L2, params, Some(&progress));
        let build_s = t.elapsed().as_secs_f64();
        eprintln!("built in {build_s:.1}s, index {:.0} MiB", index.memory_bytes() as f64 / 1048576.0);
        results.push(format!("\"build_s\":{build_s:.3}"));
        results.push(format!("\"index_mib\":{:.1}", index.memory_bytes() as f64 / 1048576.0));
        results.push(format!("\"peak_rss_mib_during_build\":{:.1}", peak_rss_mib()));
        results.push(format!("\"rss_before_build_mib\":{rss_before:.1}"));
        let t = Instant::now();
        index.save(&index_path).unwrap();
        results.push(format!("\"save_s\":{:.3}", t.elapsed().as_secs_f64()));
        index
    };

    let mut sweep = Vec::new();
    for &ef in &o.efs {
        // One thread, queries one by one: the latency path a server sees. The best of three
        // passes, because the machine is shared and noisy.
        let mut seconds = f64::INFINITY;
        let mut hits = 0usize;
        for _ in 0..3 {
            let t = Instant::now();
            hits = 0;
            for q in 0..queries.len() {
                let found = index.search(queries.get(q as u32), o.k, ef);
                let truth = &truth[q * o.k..(q + 1) * o.k];
                hits += found.iter().filter(|n| truth.contains(&n.id)).count();
            }
            seconds = seconds.min(t.elapsed().as_secs_f64());
        }
        let recall = hits as f64 / (queries.len() * o.k) as f64;
        let qps = queries.len() as f64 / seconds;
        eprintln!("ef {ef:>4}: recall@{} {recall:.4}, {qps:.0} QPS (1 thread)", o.k);
        sweep.push(format!("{{\"ef\":{ef},\"recall\":{recall:.5},\"qps\":{qps:.1}}}"));
    }
    results.push(format!("\"sweep\":[{}]", sweep.join(",")));

    if o.graph || o.map {
        let t = Instant::now();
        let graph = milkglass_insight::neighbors::KnnGraph::from_index(&index, 10, o.graph_ef, o.threads, None);
        let graph_s = t.elapsed().as_secs_f64();
        eprintln!("all-points 10-NN graph in {graph_s:.1}s (peak RSS {:.0} MiB)", peak_rss_mib());
        results.push(format!("\"graph_s\":{graph_s:.3}"));
        results.push(format!("\"graph_ef\":{}", o.graph_ef));
        results.push(format!("\"peak_rss_mib_after_graph\":{:.1}", peak_rss_mib()));
        // The graph's quality: how many of each sampled point's 10 exact neighbours it holds.
        let sample: Vec<u32> = (0..200u32).map(|i| (i as u64 * 7919 % o.n as u64) as u32).collect();
        let found: usize = parallel_map(sample.len(), o.threads, |s| {
            let id = sample[s];
            let exact = exact_knn(&base, Metric::L2, base.get(id), 11, None);
            let truth: Vec<u32> = exact.iter().map(|n| n.id).filter(|&n| n != id).take(10).collect();
            graph.neighbors(id).iter().filter(|n| truth.contains(&n.id)).count()
        })
        .into_iter()
        .sum();
        let graph_recall = found as f64 / (sample.len() * 10) as f64;
        eprintln!("graph recall@10 on 200 sampled points: {graph_recall:.4}");
        results.push(format!("\"graph_recall\":{graph_recall:.4}"));
        if o.map {
            let t = Instant::now();
            let layout = milkglass_insight::map::pca_2d(&base, o.threads);
            let pca_s = t.elapsed().as_secs_f64();
            eprintln!("PCA 2-D in {pca_s:.1}s");
            let t = Instant::now();
            let map = milkglass_insight::map::layout(
                &graph,
                &layout,
                &milkglass_insight::map::LayoutParams { threads: o.threads, ..Default::default() },
                None,
            );
            let layout_s = t.elapsed().as_secs_f64();
            let t2 = Instant::now();
            let clusters = milkglass_insight::map::kmeans_2d(&map, 20, 25, 7);
            let cluster_s = t2.elapsed().as_secs_f64();
            eprintln!(
                "neighbour-preserving layout in {layout_s:.1}s, k-means in {cluster_s:.1}s, peak RSS {:.0} MiB",
                peak_rss_mib()
            );
            let trust = milkglass_insight::map::neighbor_preservation(&graph, &map, 2000, 10);
            let trust_pca = milkglass_insight::map::neighbor_preservation(&graph, &layout, 2000, 10);
            eprintln!(
                "layout keeps {trust:.3} of 10 graph neighbours among 10 nearest in 2-D, PCA {trust_pca:.3} (2,000 sampled)"
            );
            results.push(format!("\"pca_neighbor_preservation\":{trust_pca:.4}"));
            results.push(format!("\"pca_s\":{pca_s:.3}"));
            results.push(format!("\"layout_s\":{layout_s:.3}"));
            results.push(format!("\"kmeans_s\":{cluster_s:.3}"));
            results.push(format!("\"layout_neighbor_preservation\":{trust:.4}"));
            results.push(format!("\"clusters\":{}", clusters.iter().max().map_or(0, |m| m + 1)));
            results.push(format!("\"peak_rss_mib_after_map\":{:.1}", peak_rss_mib()));
        }
    }
    results.push(format!("\"peak_rss_mib\":{:.1}", peak_rss_mib()));
    let json = format!("{{{}}}\n", results.join(","));
    std::fs::File::create(o.dir.join("rust.json")).unwrap().write_all(json.as_bytes()).unwrap();
    print!("{json}");
}
