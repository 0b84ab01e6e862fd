#!/usr/bin/env python3
"""FiftyOne answering the queries that `milkglass bench api` times, on the same synthetic data.

    python3 -m pip install --root-user-action=ignore -r scripts/bench-fiftyone-requirements.txt
    python3 scripts/bench-fiftyone.py --samples 100000 --requests 100 --dir /tmp/fo-bench [--json]

Loads N samples into a FiftyOne dataset whose MongoDB lives in DIR/db (never ~/.fiftyone),
builds a sklearn cosine similarity index, then times each route once ("first") and
--requests more times with seeded random parameters. Every timed call materialises its
answer the way an API would (rows of plain values serialised to JSON), and counts come from
`.count()` on the same view. Route names match milkglass's bench exactly, so the two can be
joined. With --json the last line of stdout is one JSON object; everything else goes to stderr.

The data follows milkglass's generator (same shapes and distributions, not the same random
stream): frame_{i:08d}, split "val" for every 5th frame, speed uniform(0, 30) to 2 decimals,
5 boxes of class c0..c9 drawn in pixels on a 1280x720 image (converted to FiftyOne's relative
[x, y, w, h]), and a 256-d float32 embedding uniform(-0.5, 0.5).
"""

import argparse
import json
import os
import random
import resource
import sys
import time
import traceback

ROUTES = [
    "GET one frame",
    "GET frames page, no filter",
    "GET frames page at a random offset",
    "GET frames, meta equality + count",
    "GET frames, class + count",
    "GET frames, range + class + label count + count",
    "GET frames, matches nothing + count",
    "POST similar (index)",
]
FIELDS = ["frame_id", "filepath", "split", "speed", "ground_truth.detections"]
CLASSES, BOXES, DIM = 10, 5, 256


def log(message):
    print(message, file=sys.stderr, flush=True)


def python_peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def generate(n, seed=42):
    import numpy as np

    rng = np.random.default_rng(seed)
    # milkglass draws boxes in pixels (top < 600, left < 1100, w < 180, h < 120) on 1280x720.
    return {
        "speed": np.round(rng.uniform(0, 30, n), 2),
        "classes": rng.integers(0, CLASSES, (n, BOXES)),
        "boxes": np.stack(
            [
                rng.uniform(0, 1100, (n, BOXES)) / 1280,
                rng.uniform(0, 600, (n, BOXES)) / 720,
                rng.uniform(0, 180, (n, BOXES)) / 1280,
                rng.uniform(0, 120, (n, BOXES)) / 720,
            ],
            axis=-1,
        ),
        "embeddings": rng.random((n, DIM), dtype=np.float32) - np.float32(0.5),
    }


def samples(fo, data):
    for i in range(len(data["speed"])):
        detections = [
            fo.Detection(label=f"c{c}", bounding_box=box.tolist())
            for c, box in zip(data["classes"][i], data["boxes"][i])
        ]
        yield fo.Sample(
            filepath=f"/bench/{i:08d}.jpg",
            frame_id=f"frame_{i:08d}",
            split="val" if i % 5 == 0 else "train",
            speed=float(data["speed"][i]),
            ground_truth=fo.Detections(detections=detections),
        )


def labels(triples):
    return [{"id": str(i), "class": c, "box": box} for i, c, box in triples]


def page(view, mode):
    """The 50 rows an API would send, boxes included, serialised to JSON.

    How FiftyOne hands the rows over dominates these routes, so --materialise picks:
    raw:     values(_raw=True): the BSON documents of the view's pipeline, which is how
             FiftyOne's own App server (fiftyone/server/samples.py) reads a page; the fastest
    fields:  values() of leaf fields, primitives only (public API only)
    objects: values() of ground_truth.detections, one Detection object per box (the slowest)
    All three return the same JSON.
    """
    view = view.limit(50)
    if mode == "fields":
        leaves = ["ground_truth.detections." + f for f in ("id", "label", "bounding_box")]
        columns = view.values(FIELDS[:4] + leaves)
        boxes = [labels(zip(i or [], c or [], b or [])) for i, c, b in zip(*columns[4:])]
    elif mode == "objects":
        columns = view.values(FIELDS)
        boxes = [labels((d.id, d.label, d.bounding_box) for d in ds or []) for ds in columns[4]]
    else:
        columns = view.values(FIELDS, _raw=True)
        boxes = [labels((d["_id"], d["label"], d["bounding_box"]) for d in ds or []) for ds in columns[4]]
    keys = FIELDS[:4] + ["labels"]
    return json.dumps([dict(zip(keys, row)) for row in zip(*columns[:4], boxes)])


def quantile(times, q):
    # The same pick as milkglass's report: nearest rank on the sorted times.
    ordered = sorted(times)
    return ordered[round((len(ordered) - 1) * q)]


def mongod_of_this_process():
    """The mongod that FiftyOne started for us (python -> service main.py -> mongod)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "mongod":
                return child
        except psutil.NoSuchProcess:
            pass
    return None


def peak_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run(args, out):
    db_dir = os.path.join(os.path.abspath(args.dir), "db")
    os.makedirs(db_dir, exist_ok=True)
    # FiftyOne reads these at import: keep its database out of ~/.fiftyone and stay offline.
    os.environ["FIFTYONE_DATABASE_DIR"] = db_dir
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")

    import fiftyone as fo
    import fiftyone.brain as fob
    import fiftyone.core.odm.database as fod
    from fiftyone import ViewField as F

    n, requests = args.samples, args.requests
    start = time.perf_counter()
    data = generate(n)
    log(f"generated {n} samples in {time.perf_counter() - start:.1f} s")

    dataset = None
    mongod = None
    try:
        dataset = fo.Dataset(f"bench-fiftyone-{os.getpid()}", persistent=False)
        mongod = mongod_of_this_process()
        # FiftyOne attaches to any running FiftyOne database service instead of starting its
        # own; then the data would not be in DIR and the mongod peak would not be ours.
        if mongod is None or db_dir not in mongod.cmdline():
            raise RuntimeError(
                "FiftyOne attached to a database it did not start here; "
                "stop other FiftyOne processes (`fiftyone app` or scripts) and retry"
            )
        mongo_version = fod.get_db_conn().command("buildInfo")["version"]
        log(f"mongod {mongo_version} (pid {mongod.pid}) on {db_dir}")

        log("loading")
        start = time.perf_counter()
        dataset.add_samples(samples(fo, data), num_samples=n)
        load_s = time.perf_counter() - start
        if len(dataset) != n:
            raise RuntimeError(f"loaded {len(dataset)} samples, expected {n}")
        log(f"loaded in {load_s:.1f} s (python peak so far {python_peak_mib():.0f} MiB)")

        # A FiftyOne user looking frames up by id (and paging by it) would index it.
        start = time.perf_counter()
        dataset.create_index("frame_id", unique=True)
        frame_index_s = time.perf_counter() - start
        log(f"index on frame_id created (unique) in {frame_index_s:.1f} s; no other indexes")

        log("building the similarity index")
        start = time.perf_counter()
        fob.compute_similarity(
            dataset, embeddings=data["embeddings"], backend="sklearn", brain_key="sim", metric="cosine"
        )
        index_s = time.perf_counter() - start
        log(f"similarity index built in {index_s:.1f} s (python peak so far {python_peak_mib():.0f} MiB)")
        # milkglass is asked by frame_id; the similarity API takes sample ids, so map once, untimed.
        sample_ids = dataset.values("id")
        frame_view, mode = dataset.sort_by("frame_id"), args.materialise

        def one_frame(rng):
            sample = dataset.one(F("frame_id") == f"frame_{rng.randrange(n):08d}")
            dets = sample.ground_truth.detections if sample.ground_truth else []
            return json.dumps(
                {
                    "frame_id": sample.frame_id,
                    "filepath": sample.filepath,
                    "split": sample.split,
                    "speed": sample.speed,
                    "labels": labels((d.id, d.label, d.bounding_box) for d in dets),
                }
            )

        def counted(match):
            view = dataset.match(match)
            return page(view.sort_by("frame_id"), mode), view.count()

        def has_class(cls):
            return F("ground_truth.detections").filter(F("label") == cls).length() > 0

        def similar(rng):
            view = dataset.sort_by_similarity(sample_ids[rng.randrange(n)], k=10, brain_key="sim")
            ids = view.values("frame_id")
            if len(ids) != 10:
                raise RuntimeError(f"sort_by_similarity returned {len(ids)} samples, expected 10")
            return ids

        calls = {
            "GET one frame": one_frame,
            "GET frames page, no filter": lambda rng: page(frame_view, mode),
            "GET frames page at a random offset": lambda rng: page(frame_view.skip(rng.randrange(n)), mode),
            "GET frames, meta equality + count": lambda rng: counted(F("split") == "val"),
            "GET frames, class + count": lambda rng: counted(has_class(f"c{rng.randrange(CLASSES)}")),
            "GET frames, range + class + label count + count": lambda rng: counted(
                (F("speed") > 29.5) & has_class("c1") & (F("ground_truth.detections").length() >= 5)
            ),
            "GET frames, matches nothing + count": lambda rng: counted(F("split") == "nothing"),
            "POST similar (index)": similar,
        }

        rng = random.Random(3)
        routes = []
        for route in ROUTES:
            times = []
            for _ in range(requests + 1):
                start = time.perf_counter()
                calls[route](rng)
                times.append((time.perf_counter() - start) * 1000.0)
            first, rest = times[0], times[1:]
            routes.append(
                {"route": route, "first_ms": first, "p50_ms": quantile(rest, 0.5), "p99_ms": quantile(rest, 0.99)}
            )
            log(f"{route}: first {first:.0f} ms, p50 {routes[-1]['p50_ms']:.1f} ms")

        # Read both peaks while mongod is still up; VmHWM is its lifetime high-water mark.
        python_mib = python_peak_mib()
        mongod_mib = peak_mib(mongod.pid)
    finally:
        if dataset is not None:
            try:
                dataset.delete()
            except Exception as e:  # keep shutting down; the error that got us here matters more
                log(f"warning: could not delete the dataset: {e}")
        # Closing our client and the service's stdin is FiftyOne's own shutdown path.
        fod._disconnect()
        if fod._db_service is not None:
            fod._db_service.stop()
            fod._db_service = None
        if mongod is not None:
            try:
                mongod.wait(timeout=60)
            except Exception:
                log(f"warning: mongod {mongod.pid} still running after 60 s")

    result = {
        "samples": n,
        "requests": requests,
        "materialise": args.materialise,
        "load_s": round(load_s, 2),
        "index_s": round(index_s, 2),
        "peak_mib": {"python": round(python_mib, 1), "mongod": round(mongod_mib, 1)},
        "routes": [{k: v if k == "route" else round(v, 2) for k, v in r.items()} for r in routes],
    }
    if args.json:
        out.write(json.dumps(result) + "\n")
        return
    lines = [
        f"\nFiftyOne {fo.__version__} (MongoDB {mongo_version}), {n} samples, "
        f"{requests} timed calls per route after one untimed first call, "
        f"rows materialised as {args.materialise} (ms):\n",
        "| route | first | p50 | p99 |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['route']} | {r['first_ms']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |" for r in routes]
    lines += [
        "",
        f"load: {load_s:.1f} s ({n / load_s:.0f} samples/s, add_samples from Python objects)",
        f"index on frame_id: created (unique, {frame_index_s:.1f} s); no other indexes",
        f"similarity index (sklearn, cosine, {DIM}-d): {index_s:.1f} s",
        f"peak memory: python {python_mib:.0f} MiB + mongod {mongod_mib:.0f} MiB = {python_mib + mongod_mib:.0f} MiB",
    ]
    out.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--dir", required=True, help="scratch folder; the database goes in DIR/db")
    parser.add_argument(
        "--materialise", choices=["raw", "fields", "objects"], default="raw", help="see page() (default: raw)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")
    args = parser.parse_args()
    if args.samples < 10 or args.requests < 1:
        parser.error("--samples must be at least 10 and --requests at least 1")
    # Only the result goes to stdout: FiftyOne's logging, its service and mongod all inherit
    # fd 1, so point fd 1 at stderr and keep a private copy of the real stdout.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        run(args, out)
    except Exception as e:
        traceback.print_exc()
        log(f"bench-fiftyone: error: {type(e).__name__}: {e}")
        return 1
    finally:
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
