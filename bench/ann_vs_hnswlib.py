#!/usr/bin/env python3
"""milkglass-insight's HNSW and hnswlib side by side, in one run, on the same vectors.

    pip install hnswlib numpy
    python3 bench/ann_vs_hnswlib.py --n 1000000 --dir /tmp/ann-bench [--graph --map]

First runs the Rust benchmark (`cargo bench -p milkglass-insight --bench ann`), which generates
the clustered vectors, computes the exact neighbours of the queries, builds and sweeps its own
index, and leaves base.f32, queries.f32, truth.u32 and rust.json in --dir. Then builds hnswlib
over the same file with the same M, ef_construction and threads, sweeps ef the same way (one
query thread), and prints both, with QPS at recall@10 >= 0.95 and the ratio.

--skip-rust reuses rust.json from an earlier run (the figures are then not from the same run).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def rss_mib(field="VmRSS"):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def at_recall(sweep, target):
    """The first sweep point reaching `target`, and QPS interpolated at exactly `target`."""
    first = next((p for p in sweep if p["recall"] >= target), None)
    interpolated = None
    for low, high in zip(sweep, sweep[1:]):
        if low["recall"] < target <= high["recall"]:
            share = (target - low["recall"]) / (high["recall"] - low["recall"])
            interpolated = float(np.exp(np.log(low["qps"]) + share * (np.log(high["qps"]) - np.log(low["qps"]))))
            break
    if interpolated is None and sweep and sweep[0]["recall"] >= target:
        interpolated = sweep[0]["qps"]  # already past the target at the smallest ef
    return first, interpolated


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--efs", default="10,16,24,32,48,64,96,128,192,256")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dir", default="/tmp/milkglass-ann-bench")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--skip-rust", action="store_true")
    parser.add_argument("--skip-index", action="store_true",
                        help="reuse both saved indexes and rerun only the query sweeps (a quiet-machine rerun)")
    parser.add_argument("--graph", action="store_true")
    parser.add_argument("--map", action="store_true")
    args = parser.parse_args()

    previous = {}
    if os.path.exists(os.path.join(args.dir, "rust.json")):
        with open(os.path.join(args.dir, "rust.json")) as f:
            previous = json.load(f)
    if not args.skip_rust:
        command = ["cargo", "bench", "-p", "milkglass-insight", "--bench", "ann", "--",
                   "--n", str(args.n), "--dim", str(args.dim), "--queries", str(args.queries),
                   "--m", str(args.m), "--ef-construction", str(args.ef_construction),
                   "--threads", str(args.threads), "--efs", args.efs, "--k", str(args.k), "--dir", args.dir]
        command += ["--skip-index"] if args.skip_index else []
        command += ["--graph"] if args.graph else []
        command += ["--map"] if args.map else []
        print("$", " ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(args.dir, "rust.json")) as f:
        rust = json.load(f)
    for key, value in previous.items():
        rust.setdefault(key, value)  # build figures survive a query-only rerun
    with open(os.path.join(args.dir, "rust.json"), "w") as f:
        json.dump(rust, f)

    import hnswlib

    base = np.fromfile(os.path.join(args.dir, "base.f32"), dtype="<f4").reshape(-1, args.dim)
    queries = np.fromfile(os.path.join(args.dir, "queries.f32"), dtype="<f4").reshape(-1, args.dim)
    truth = np.fromfile(os.path.join(args.dir, "truth.u32"), dtype="<u4").reshape(-1, args.k)
    assert len(base) == args.n and len(queries) == len(truth), "data files do not match --n/--queries"

    rss_before = rss_mib()
    index = hnswlib.Index(space="l2", dim=args.dim)
    saved = os.path.join(args.dir, f"hnswlib-m{args.m}-efc{args.ef_construction}.bin")
    if args.skip_index and os.path.exists(saved):
        # A query-only rerun (with the Rust side's --skip-index): build figures come from the earlier run.
        index.load_index(saved, max_elements=args.n)
        with open(os.path.join(args.dir, "hnswlib.json")) as f:
            earlier = json.load(f)
        build_s, index_mib = earlier["build_s"], earlier["index_mib"]
        print(f"hnswlib index loaded from {saved}", file=sys.stderr, flush=True)
    else:
        index.init_index(max_elements=args.n, M=args.m, ef_construction=args.ef_construction, random_seed=100)
        index.set_num_threads(args.threads)
        started = time.perf_counter()
        index.add_items(base, np.arange(args.n))
        build_s = time.perf_counter() - started
        index_mib = rss_mib() - rss_before
        print(f"hnswlib built in {build_s:.1f}s, +{index_mib:.0f} MiB", file=sys.stderr, flush=True)
        index.save_index(saved)
    sweep = []
    for ef in [int(e) for e in args.efs.split(",")]:
        index.set_ef(ef)
        seconds = float("inf")
        for _ in range(3):  # best of three, as the Rust side does: the machine is shared
            started = time.perf_counter()
            labels, _ = index.knn_query(queries, k=args.k, num_threads=1)
            seconds = min(seconds, time.perf_counter() - started)
        hits = sum(len(set(row.tolist()) & set(t.tolist())) for row, t in zip(labels, truth))
        recall = hits / truth.size
        sweep.append({"ef": ef, "recall": recall, "qps": len(queries) / seconds})
        print(f"hnswlib ef {ef:>4}: recall@{args.k} {recall:.4f}, {len(queries) / seconds:.0f} QPS", file=sys.stderr)
    peer = {"build_s": build_s, "index_mib": index_mib, "sweep": sweep, "peak_rss_mib": rss_mib("VmHWM")}
    with open(os.path.join(args.dir, "hnswlib.json"), "w") as f:
        json.dump(peer, f)

    print(f"\n{rust['params']}\n")
    print("| ef | milkglass recall@10 | milkglass QPS | hnswlib recall@10 | hnswlib QPS |")
    print("|---:|---:|---:|---:|---:|")
    for ours, theirs in zip(rust["sweep"], peer["sweep"]):
        print(f"| {ours['ef']} | {ours['recall']:.4f} | {ours['qps']:,.0f} | {theirs['recall']:.4f} | {theirs['qps']:,.0f} |")
    target = args.target_recall
    ours_first, ours_at = at_recall(rust["sweep"], target)
    theirs_first, theirs_at = at_recall(peer["sweep"], target)
    print()
    print("| system | build (s) | index memory (MiB) | first ef with recall >= %.2f | its recall | its QPS | QPS at recall %.2f (interpolated) |" % (target, target))
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, result, first, at in [("milkglass-insight", rust, ours_first, ours_at),
                                    ("hnswlib 0.8", peer, theirs_first, theirs_at)]:
        first_cells = f"{first['ef']} | {first['recall']:.4f} | {first['qps']:,.0f}" if first else "- | - | -"
        at_cell = f"{at:,.0f}" if at else "-"
        build = f"{result['build_s']:.1f}" if "build_s" in result else "-"
        memory = f"{result['index_mib']:.0f}" if "index_mib" in result else "-"
        print(f"| {name} | {build} | {memory} | {first_cells} | {at_cell} |")
    if ours_first and theirs_first:
        print(f"\nQPS ratio milkglass / hnswlib, first ef reaching {target}: {ours_first['qps'] / theirs_first['qps']:.2f}")
    if ours_at and theirs_at:
        print(f"QPS ratio milkglass / hnswlib, interpolated at recall {target}: {ours_at / theirs_at:.2f}")
    if "build_s" in rust:
        print(f"build time ratio milkglass / hnswlib: {rust['build_s'] / build_s:.2f}")
    for key in ["graph_s", "graph_recall", "pca_s", "layout_s", "kmeans_s", "layout_neighbor_preservation",
                "peak_rss_mib_after_graph", "peak_rss_mib_after_map", "peak_rss_mib"]:
        if key in rust:
            print(f"rust {key}: {rust[key]}")


if __name__ == "__main__":
    main()
