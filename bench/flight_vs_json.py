"""Flight SQL (ADBC into Polars) against JSON over HTTP, same guarded query, same server, same run.

    python3 bench/flight_vs_json.py [--bin target/release/milkglass] [--groups 100000]

Publishes a generated table whose GROUP BY returns `--groups` allowed groups (10 rows each, min_agg_size 10),
then fetches that result both ways (median of 5), and times a small guarded query end to end over Flight SQL
(median of 50). Prints a Markdown table for docs/BENCHMARKS.md.
"""

import argparse
import csv
import json
import pathlib
import random
import socket
import statistics
import subprocess
import tempfile
import time

import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl
import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median_seconds(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=str(ROOT / "target" / "release" / "milkglass"))
    parser.add_argument("--groups", type=int, default=100_000)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="milkglass-bench-"))
    run = lambda *a: subprocess.run([args.bin, *a], check=True, capture_output=True, text=True).stdout
    owner = run("user", "add", "owner", "--role", "owner", "--data-dir", str(work)).strip().splitlines()[-1]
    sam = run("user", "add", "sam", "--role", "scientist", "--data-dir", str(work)).strip().splitlines()[-1]
    http_port, flight_port = free_port(), free_port()
    server = subprocess.Popen([args.bin, "serve", "--data-dir", str(work), "--http-addr", f"127.0.0.1:{http_port}",
                               "--flight-addr", f"127.0.0.1:{flight_port}"], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()
        rng = random.Random(5)
        table = work / "t.csv"
        with table.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["k", "v"])
            for k in range(args.groups):
                for _ in range(10):
                    w.writerow([k, round(rng.random() * 100, 3)])
        policy = work / "policy.json"
        policy.write_text(json.dumps({"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject"}))
        base = f"http://127.0.0.1:{http_port}"
        run("table", "upload", str(table), "--name", "t", "--policy", str(policy), "--server", base, "--token", owner)

        sql = "SELECT k, AVG(v) AS mean_v, COUNT(*) AS n FROM t GROUP BY k"
        conn = flight_sql.connect(f"grpc://127.0.0.1:{flight_port}",
                                  db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {sam}"})
        check = pl.read_database(sql, conn)
        assert check.height == args.groups, check.height

        def over_http():
            r = requests.post(f"{base}/api/query", json={"sql": sql}, headers={"Authorization": f"Bearer {sam}"})
            r.raise_for_status()
            df = pl.DataFrame(r.json()["rows"])
            assert df.height == args.groups

        flight = median_seconds(lambda: pl.read_database(sql, conn), 5)
        http = median_seconds(over_http, 5)
        cursor = conn.cursor()

        def small():
            cursor.execute("SELECT COUNT(*) FROM t")
            cursor.fetchall()

        small()
        latency = median_seconds(small, 50)
        print(f"| path | median seconds for {args.groups:,} groups |")
        print("|---|---:|")
        print(f"| Flight SQL, ADBC into Polars | {flight:.3f} |")
        print(f"| JSON over HTTP into Polars (reference) | {http:.3f} |")
        print(f"\nJSON / Flight: {http / flight:.2f}x")
        print(f"small guarded query (SELECT COUNT(*)) end to end over Flight SQL: median {latency * 1000:.1f} ms")
        cursor.close()
        conn.close()
    finally:
        server.kill()


if __name__ == "__main__":
    main()
