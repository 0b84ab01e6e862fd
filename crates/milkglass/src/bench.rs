//! `milkglass bench`: measurements with a reference run side by side, in one process.
//! Figures and how to reproduce them live in docs/BENCHMARKS.md.

use crate::demo::progress;
use anyhow::{Context, Result, bail};
use arrow::array::{
    ArrayRef, FixedSizeListBuilder, Float32Builder, Float64Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use clap::Subcommand;
use milkglass_core::{ClassEntry, ClassMap, DatasetSpec, ProjectSpec, Role};
use milkglass_server::ServerConfig;
use milkglass_store::Store;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Stream frames with boxes and embeddings from one Arrow file into a server over
    /// HTTP; beside it, write the same rows straight to Parquet with arrow-rs.
    Ingest {
        /// Number of frames.
        #[arg(long, default_value_t = 1_000_000)]
        frames: usize,
        /// Boxes per frame.
        #[arg(long, default_value_t = 5)]
        boxes: usize,
        /// Frame embedding dimension.
        #[arg(long, default_value_t = 256)]
        dim: usize,
        /// Working directory (input file, Parquet output, store). Reused input is not regenerated.
        #[arg(long, default_value = "./bench-work")]
        dir: PathBuf,
    },
    /// One side of `bench ingest`, run in a process of its own so its peak memory is its own.
    #[command(hide = true)]
    IngestPhase {
        #[arg(long)]
        phase: String,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        dir: PathBuf,
    },
    /// A guarded GROUP BY against the same query on plain DataFusion, same data, same run.
    Guard {
        /// Rows in the generated table.
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        /// Distinct group keys.
        #[arg(long, default_value_t = 1000)]
        groups: usize,
        /// Timed runs of each query (the median is reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
        #[arg(long, default_value = "./bench-work")]
        dir: PathBuf,
    },
    /// A differentially private GROUP BY over unknown keys (bounding, noise, partition
    /// selection) against the same query without DP: through the threshold guard and on
    /// plain DataFusion, same data, same run.
    Dp {
        /// Rows in the generated table.
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        /// Distinct persons (the privacy unit, column `w`).
        #[arg(long, default_value_t = 100_000)]
        units: usize,
        /// Distinct group keys.
        #[arg(long, default_value_t = 1000)]
        groups: usize,
        /// Timed runs of each query (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value = "./bench-work")]
        dir: PathBuf,
    },
    /// SQL over a dataset's labels through the service (snapshot, guard, decision, audit, as a
    /// project member), against the same query in plain DataFusion over a Parquet copy of
    /// the same rows; with the snapshot's cost, the store's ingest rate and one-frame reads.
    DatasetSql {
        /// Frames in the generated dataset.
        #[arg(long, default_value_t = 1_000_000)]
        frames: usize,
        /// Boxes per frame.
        #[arg(long, default_value_t = 5)]
        boxes: usize,
        /// Timed runs of each query (the median is reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
        #[arg(long, default_value = "./bench-work")]
        dir: PathBuf,
    },
    /// Every dataset route many times against a real server process on the `bench ingest`
    /// store (made first when missing): p50/p99 per route, what the first request of each
    /// waits for, how long after the start the similarity index answers, and the server's
    /// peak memory.
    Api {
        /// Frames in the dataset (`bench ingest --frames`).
        #[arg(long, default_value_t = 1_000_000)]
        frames: usize,
        /// Timed requests per route.
        #[arg(long, default_value_t = 100)]
        requests: usize,
        /// How long to wait for the similarity index before giving up on timing it, in seconds.
        #[arg(long, default_value_t = 1200)]
        index_wait: u64,
        /// Samples for FiftyOne answering the same routes afterwards, side by side (0: leave it out;
        /// needs `pip install -r scripts/bench-fiftyone-requirements.txt`).
        #[arg(long, default_value_t = 100_000)]
        fiftyone_samples: usize,
        /// The Python that has FiftyOne installed.
        #[arg(long, default_value = "python3")]
        fiftyone_python: String,
        #[arg(long, default_value = "./bench-work")]
        dir: PathBuf,
    },
    /// A working day on loopback: analysts querying a guarded table over HTTP and Flight SQL,
    /// uploaders adding frames and UI users browsing, all at once, against one server process:
    /// latency per route, errors, memory over time, and the audit log checked afterwards.
    Load {
        /// Analysts querying at once (each with a user of their own).
        #[arg(long, default_value_t = 50)]
        analysts: usize,
        /// Uploaders adding 100 frames per upload.
        #[arg(long, default_value_t = 4)]
        uploaders: usize,
        /// UI users browsing the dataset.
        #[arg(long, default_value_t = 2)]
        browsers: usize,
        /// How long the load runs, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Frames in the dataset before the load starts.
        #[arg(long, default_value_t = 20_000)]
        frames: usize,
        #[arg(long, default_value = "./bench-work")]
        dir: PathBuf,
    },
    /// What the differencing memory costs each answered query: filtered GROUP BYs over a
    /// generated table through the guard (which records the rows each answer covered),
    /// each compared with every earlier answer's set through the store, against the
    /// same queries on plain DataFusion.
    Differencing {
        /// Rows in the generated table.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Answered queries, each remembered and compared with all before it.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        #[arg(long, default_value = "./bench-work")]
        dir: PathBuf,
    },
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Ingest { frames, boxes, dim, dir } => ingest(frames, boxes, dim, &dir),
        BenchCommand::Guard { rows, groups, runs, dir } => guard(rows, groups, runs, &dir),
        BenchCommand::Differencing { rows, queries, dir } => differencing(rows, queries, &dir),
        BenchCommand::Dp { rows, units, groups, runs, dir } => dp(rows, units, groups, runs, &dir),
        BenchCommand::DatasetSql { frames, boxes, runs, dir } => dataset_sql(frames, boxes, runs, &dir),
        BenchCommand::Api { frames, requests, index_wait, fiftyone_samples, fiftyone_python, dir } => {
            let peer = (fiftyone_samples > 0).then_some(Peer { samples: fiftyone_samples, python: fiftyone_python });
            api(frames, requests, index_wait, peer.as_ref(), &dir)
        }
        BenchCommand::IngestPhase { phase, input, dir } => ingest_phase(&phase, &input, &dir),
        BenchCommand::Load { analysts, uploaders, browsers, seconds, frames, dir } => {
            let plan = crate::load::LoadPlan {
                analysts,
                uploaders,
                browsers,
                duration: std::time::Duration::from_secs(seconds),
                frames,
            };
            crate::load::load(&plan, &dir)
        }
    }
}

const CLASSES: usize = 10;
const INPUT_BATCH: usize = 10_000;

fn ingest(frames: usize, boxes: usize, dim: usize, dir: &Path) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark figures need `cargo run --release`");
    }
    std::fs::create_dir_all(dir)?;
    let input = dir.join(format!("ingest-{frames}x{boxes}-{dim}d.arrows"));
    if !input.exists() {
        write_input(&input, frames, boxes, dim)?;
    }
    let input_bytes = std::fs::metadata(&input)?.len();
    println!(
        "input: {} ({:.1} MiB, {frames} frames x {boxes} boxes, {dim}-d embeddings)",
        input.display(),
        mib(input_bytes)
    );

    let (parquet_rows, parquet_secs, parquet_peak) = run_phase("reference", &input, dir)?;
    if parquet_rows != frames {
        bail!("the reference wrote {parquet_rows} rows, expected {frames}");
    }
    let store_dir = dir.join("store");
    let (records, milkglass_secs, milkglass_peak) = run_phase("milkglass", &input, dir)?;
    if records != frames {
        bail!("milkglass ingested {records} frames, expected {frames}");
    }
    let store_bytes = dir_size(&store_dir);

    let rate = |secs: f64| frames as f64 / secs;
    println!("\n| system | frames/s | seconds | peak memory (MiB) | on disk (MiB) |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| milkglass (HTTP, Arrow IPC, SQLite + f32 files) | {:.0} | {:.1} | {} | {:.0} |",
        rate(milkglass_secs),
        milkglass_secs,
        fmt_peak(milkglass_peak),
        mib(store_bytes)
    );
    println!(
        "| arrow-rs straight to Parquet (reference) | {:.0} | {:.1} | {} | {:.0} |",
        rate(parquet_secs),
        parquet_secs,
        fmt_peak(parquet_peak),
        mib(std::fs::metadata(dir.join("reference.parquet"))?.len())
    );
    println!("\nmilkglass / reference throughput: {:.2}", parquet_secs / milkglass_secs);
    frame_reads(&store_dir, frames)
}

/// Random access after the ingest: one frame with its labels, straight from the store.
fn frame_reads(store_dir: &Path, frames: usize) -> Result<()> {
    let store = Store::open(store_dir)?;
    frame_reads_in(&store, &store.dataset("bench", "frames")?, frames)
}

fn frame_reads_in(store: &Store, dataset: &milkglass_store::DatasetInfo, frames: usize) -> Result<()> {
    const READS: usize = 10_000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut micros = Vec::with_capacity(READS);
    for _ in 0..READS {
        let id = format!("frame_{:08}", rng.random_range(0..frames));
        let start = Instant::now();
        let frame = store.frame(dataset, &id, None)?;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        if frame.labels.is_empty() {
            bail!("frame {id} came back without its labels");
        }
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!(
        "\none frame with its labels, {READS} random reads: median {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

fn schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("frame_id", DataType::Utf8, false),
        Field::new("image_url", DataType::Utf8, false),
        Field::new("width", DataType::Int64, false),
        Field::new("height", DataType::Int64, false),
        Field::new("metadata", DataType::Utf8, true),
        Field::new(
            "embedding",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim as i32),
            true,
        ),
        Field::new("labels", DataType::List(Arc::new(Field::new("item", DataType::Struct(box_fields()), true))), true),
    ]))
}

fn box_fields() -> Fields {
    Fields::from(vec![
        Field::new("label_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("top", DataType::Float64, false),
        Field::new("left", DataType::Float64, false),
        Field::new("width", DataType::Float64, false),
        Field::new("height", DataType::Float64, false),
    ])
}

/// Synthetic frames: random boxes on 1280x720 images, random unit-scale embeddings.
fn write_input(path: &Path, frames: usize, boxes: usize, dim: usize) -> Result<()> {
    let schema = schema(dim);
    let temp = path.with_extension("partial");
    let mut writer = StreamWriter::try_new(std::io::BufWriter::new(std::fs::File::create(&temp)?), &schema)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let bar = progress(frames, "generating the input file");
    for start in (0..frames).step_by(INPUT_BATCH) {
        let n = INPUT_BATCH.min(frames - start);
        let (mut ids, mut urls, mut widths, mut heights, mut meta) = (
            StringBuilder::new(),
            StringBuilder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
            StringBuilder::new(),
        );
        let mut embeddings = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32);
        let mut labels = ListBuilder::new(StructBuilder::from_fields(box_fields(), n * boxes));
        for i in start..start + n {
            ids.append_value(format!("frame_{i:08}"));
            urls.append_value(format!("https://images.example.com/bench/{i:08}.jpg"));
            widths.append_value(1280);
            heights.append_value(720);
            meta.append_value(format!(
                r#"{{"split":"{}","speed":{:.2}}}"#,
                if i % 5 == 0 { "val" } else { "train" },
                rng.random::<f64>() * 30.0
            ));
            for _ in 0..dim {
                embeddings.values().append_value(rng.random::<f32>() - 0.5);
            }
            embeddings.append(true);
            let s = labels.values();
            for b in 0..boxes {
                s.field_builder::<StringBuilder>(0).expect("label_id").append_value(format!("frame_{i:08}_{b}"));
                s.field_builder::<StringBuilder>(1)
                    .expect("class")
                    .append_value(format!("c{}", rng.random_range(0..CLASSES)));
                for (f, max) in [(2, 600.0), (3, 1100.0), (4, 180.0), (5, 120.0)] {
                    s.field_builder::<Float64Builder>(f).expect("coordinate").append_value(rng.random::<f64>() * max);
                }
                s.append(true);
            }
            labels.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(urls.finish()),
            Arc::new(widths.finish()),
            Arc::new(heights.finish()),
            Arc::new(meta.finish()),
            Arc::new(embeddings.finish()),
            Arc::new(labels.finish()),
        ];
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        bar.inc(n as u64);
    }
    writer.finish()?;
    std::fs::rename(&temp, path)?;
    bar.finish();
    Ok(())
}

/// Runs one phase in a child process; returns (records, seconds, peak memory).
fn run_phase(phase: &str, input: &Path, dir: &Path) -> Result<(usize, f64, Option<u64>)> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "ingest-phase", "--phase", phase, "--input"])
        .arg(input)
        .arg("--dir")
        .arg(dir)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("the {phase} phase failed");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().context("the phase printed nothing")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    Ok((v["records"].as_u64().unwrap_or(0) as usize, v["secs"].as_f64().unwrap_or(f64::NAN), v["peak_bytes"].as_u64()))
}

fn ingest_phase(phase: &str, input: &Path, dir: &Path) -> Result<()> {
    let (records, secs, peak) = match phase {
        "reference" => {
            let start = Instant::now();
            let rows = write_parquet(input, &dir.join("reference.parquet"))?;
            (rows, start.elapsed().as_secs_f64(), peak_memory_bytes())
        }
        "milkglass" => {
            let store_dir = dir.join("store");
            if store_dir.exists() {
                std::fs::remove_dir_all(&store_dir)?;
            }
            ingest_over_http(input, &store_dir)?
        }
        other => bail!("unknown phase {other:?}"),
    };
    println!("{}", serde_json::json!({ "records": records, "secs": secs, "peak_bytes": peak }));
    Ok(())
}

/// The reference: the same rows, read from the same file, written to Parquet.
fn write_parquet(input: &Path, output: &Path) -> Result<usize> {
    let reader = StreamReader::try_new(std::io::BufReader::new(std::fs::File::open(input)?), None)?;
    let file = std::fs::File::create(output)?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, reader.schema(), None)?;
    let mut rows = 0;
    for batch in reader {
        let batch = batch?;
        rows += batch.num_rows();
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(rows)
}

/// A real server on a loopback port, fed the file as one streamed HTTP upload.
/// Returns (records, seconds, the process's peak memory when the upload answered).
fn ingest_over_http(input: &Path, store_dir: &Path) -> Result<(usize, f64, Option<u64>)> {
    let store = Store::open(store_dir)?;
    let token = store.add_user("bench", Role::Admin)?;
    let admin = store.user_by_name("bench")?;
    let classes = ClassMap(
        (0..CLASSES as u32)
            .map(|id| ClassEntry { id, name: format!("c{id}"), color: [0, 0, 0], train_name: None, category: None })
            .collect(),
    );
    store.create_project(
        &ProjectSpec { name: "bench".into(), classes, access_mode: Default::default(), metadata: Default::default() },
        &admin,
    )?;
    store.create_dataset("bench", &DatasetSpec { name: "frames".into(), ..DatasetSpec::default() })?;
    let runtime = crate::runtime()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(milkglass_server::serve(listener, store, ServerConfig::default(), async {
            let _ = stopped.await;
        }));
        let file = tokio::fs::File::open(input).await?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let start = Instant::now();
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/api/projects/bench/datasets/frames/frames"))
            .bearer_auth(&token)
            .header("content-type", "application/vnd.apache.arrow.stream")
            .body(body)
            .send()
            .await
            .context("upload request failed")?;
        let status = response.status();
        let summary: serde_json::Value = response.json().await?;
        let secs = start.elapsed().as_secs_f64();
        // The upload's own peak: read before the work an upload starts in the background (counts,
        // filter index, map, SQL snapshot) has grown, which the shutdown below waits for.
        let upload_peak = peak_memory_bytes();
        let _ = stop.send(());
        server.await??;
        if !status.is_success() {
            bail!("upload failed with {status}: {summary}");
        }
        Ok((summary["records"].as_u64().unwrap_or(0) as usize, secs, upload_peak))
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn fmt_peak(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".into(), |b| format!("{:.0}", mib(b)))
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Peak resident memory of this process (Linux `VmHWM`).
fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

const GUARD_SQL: &str = "SELECT k, COUNT(*) AS n, AVG(v) AS mean_v, SUM(w) AS total_w FROM t GROUP BY k";

/// The guard's overhead: the same GROUP BY over the same Parquet file, once through
/// the guard (plan rewrite, hidden counts, decision) and once on plain DataFusion.
/// The generated guarded table as the guard takes it, named `t`.
fn protected_bench_table(
    table: &milkglass_store::GuardedTableInfo,
    policy: &milkglass_core::Policy,
    rows: usize,
) -> Result<milkglass_guard::ProtectedTable> {
    let (visible, internal) = table.providers()?;
    Ok(milkglass_guard::ProtectedTable {
        name: "t".into(),
        reference: "t".into(),
        policy: policy.clone(),
        visible,
        internal,
        rows: rows as u64,
        shared_ids: false,
    })
}

fn guard(rows: usize, groups: usize, runs: usize, dir: &Path) -> Result<()> {
    use datafusion::prelude::SessionContext;
    use milkglass_guard::Decision;
    let (_store, table) = guard_bench_table(&dir.join("guard-store"), rows, groups, 1000)?;
    let policy = table.policy.clone();
    let runtime = crate::runtime()?;
    let mut plain = Vec::with_capacity(runs);
    let mut guarded = Vec::with_capacity(runs);
    runtime.block_on(async {
        let policies = std::collections::HashMap::from([("t".to_string(), policy.clone())]);
        // One warm-up of each, then alternate so both see the same cache state.
        for run in 0..=runs {
            let (visible, _) = table.providers()?;
            let ctx = SessionContext::new();
            ctx.register_table("t", visible)?;
            let start = Instant::now();
            let batches = ctx.sql(GUARD_SQL).await?.collect().await?;
            let plain_secs = start.elapsed().as_secs_f64();
            let plain_rows: usize = batches.iter().map(|b| b.num_rows()).sum();

            let start = Instant::now();
            let protected = protected_bench_table(&table, &policy, rows)?;
            let prepared = milkglass_guard::prepare(GUARD_SQL, vec![protected]).await?;
            let outcome = prepared.execute().await?;
            let decision = prepared.decide(Some(&outcome), &policies, "bench");
            let guarded_secs = start.elapsed().as_secs_f64();
            if decision != Decision::Safe || outcome.rows != plain_rows || plain_rows != groups {
                bail!("unexpected result: {decision:?}, {} vs {plain_rows} rows", outcome.rows);
            }
            if run > 0 {
                plain.push(plain_secs);
                guarded.push(guarded_secs);
            }
        }
        anyhow::Ok(())
    })?;
    let (p, g) = (median(&mut plain), median(&mut guarded));
    println!("query: {GUARD_SQL}");
    println!("table: {rows} rows, {groups} groups, Parquet; median of {runs} runs each\n");
    println!("| system | median seconds |\n|---|---:|");
    println!("| milkglass guard (rewrite + hidden counts + decision) | {g:.3} |");
    println!("| DataFusion without the guard (reference) | {p:.3} |");
    println!("\nguarded / plain: {:.3}", g / p);
    Ok(())
}

const DP_SQL: &str = "SELECT k, COUNT(*) AS n, AVG(v) AS mean_v FROM t GROUP BY k";

fn dp(rows: usize, units: usize, groups: usize, runs: usize, dir: &Path) -> Result<()> {
    use datafusion::prelude::SessionContext;
    let (_store, table) = dp_bench_table(&dir.join("dp-store"), rows, groups, units as i64)?;
    let thresholds = table.policy.clone();
    let dp_policy = milkglass_core::Policy::from_value(serde_json::json!({
        "safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject",
        "dp": {"epsilon": 1e9, "query_epsilon": 1.0, "delta": 1e-6, "privacy_unit": "w",
               "max_groups_per_unit": 10, "bounds": {"v": [0, 100]}}
    }))?;
    let runtime = crate::runtime()?;
    let (mut plain, mut guarded, mut private) = (Vec::new(), Vec::new(), Vec::new());
    let mut released = 0;
    runtime.block_on(async {
        for run in 0..=runs {
            let (visible, _) = table.providers()?;
            let ctx = SessionContext::new();
            ctx.register_table("t", visible)?;
            let start = Instant::now();
            ctx.sql(DP_SQL).await?.collect().await?;
            let plain_secs = start.elapsed().as_secs_f64();

            let start = Instant::now();
            let prepared =
                milkglass_guard::prepare(DP_SQL, vec![protected_bench_table(&table, &thresholds, rows)?]).await?;
            prepared.execute().await?;
            let guarded_secs = start.elapsed().as_secs_f64();

            let start = Instant::now();
            let prepared =
                milkglass_guard::prepare(DP_SQL, vec![protected_bench_table(&table, &dp_policy, rows)?]).await?;
            let Some(Ok(query)) = prepared.dp.as_ref() else { bail!("the DP mode refused the bench query") };
            let core = prepared.dp_measure(query).await?;
            let answer = query.finish(&core)?;
            let private_secs = start.elapsed().as_secs_f64();
            released = answer.num_rows();
            if run > 0 {
                plain.push(plain_secs);
                guarded.push(guarded_secs);
                private.push(private_secs);
            }
        }
        anyhow::Ok(())
    })?;
    let (p, g, d) = (median(&mut plain), median(&mut guarded), median(&mut private));
    println!("query: {DP_SQL}");
    println!("table: {rows} rows, {units} persons (w), {groups} keys, Parquet; median of {runs} runs each");
    println!(
        "DP: epsilon 1 per query, 10 groups per person, v clamped to [0, 100], partition selection ({released} of {groups} groups released)\n"
    );
    println!("| system | median seconds |\n|---|---:|");
    println!("| milkglass DP (bound per person, noise, partition selection) | {d:.3} |");
    println!("| milkglass threshold guard, same query | {g:.3} |");
    println!("| DataFusion without DP (reference) | {p:.3} |");
    println!("\nDP / plain DataFusion: {:.3}; DP / threshold guard: {:.3}", d / p, d / g);
    Ok(())
}

const DATASET_SQL: &str = "SELECT class, COUNT(*) AS n, AVG(width * height) AS mean_area FROM labels GROUP BY class";

fn dataset_sql(frames: usize, boxes: usize, runs: usize, dir: &Path) -> Result<()> {
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use milkglass_core::{Frame, Geometry, Label, MetaValue, Sensor, SensorKind};
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark figures need `cargo run --release`");
    }
    let store_dir = dir.join(format!("dataset-sql-{frames}x{boxes}"));
    let fresh = !store_dir.exists();
    let store = Store::open(&store_dir)?;
    if fresh {
        store.add_user("admin", Role::Admin)?;
        let admin = store.user_by_name("admin")?;
        let classes = ClassMap(
            (0..CLASSES)
                .map(|i| ClassEntry {
                    id: i as u32,
                    name: format!("class_{i}"),
                    color: [0, 0, 0],
                    train_name: None,
                    category: None,
                })
                .collect(),
        );
        let spec = ProjectSpec {
            name: "bench".into(),
            classes,
            access_mode: Default::default(),
            metadata: Default::default(),
        };
        store.create_project(&spec, &admin)?;
        let dataset = store.create_dataset("bench", &DatasetSpec { name: "frames".into(), ..Default::default() })?;
        let bar = progress(frames, "writing frames through the store");
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut upload = store.begin_upload(&dataset, milkglass_store::UploadKind::Frames, None)?;
        let start = Instant::now();
        let mut batch = Vec::with_capacity(INPUT_BATCH);
        for i in 0..frames {
            let frame_id = format!("frame_{i:08}");
            let labels = (0..boxes)
                .map(|b| Label {
                    label_id: format!("{frame_id}_{b}"),
                    frame_id: None,
                    class: Some(format!("class_{}", rng.random_range(0..CLASSES))),
                    sensor_id: None,
                    geometry: Geometry::Box2d {
                        top: rng.random_range(0.0..400.0),
                        left: rng.random_range(0.0..600.0),
                        width: rng.random_range(4.0..200.0),
                        height: rng.random_range(4.0..200.0),
                    },
                    attributes: Default::default(),
                    iscrowd: false,
                    confidence: None,
                    embedding: None,
                    probabilities: None,
                })
                .collect();
            batch.push(Frame {
                timestamp: None,
                sensors: vec![Sensor {
                    sensor_id: "cam".into(),
                    kind: SensorKind::Image,
                    url: format!("https://img.example.com/{frame_id}.jpg"),
                    width: None,
                    height: None,
                    timestamp: None,
                }],
                metadata: [
                    ("weather".to_string(), MetaValue::String(["sun", "rain", "fog"][i % 3].to_string())),
                    ("speed".to_string(), MetaValue::Float(rng.random_range(0.0..40.0))),
                ]
                .into(),
                geo: None,
                labels: Some(labels),
                embedding: None,
                frame_id,
            });
            if batch.len() == INPUT_BATCH {
                store.write_frames(&mut upload, &batch)?;
                bar.inc(batch.len() as u64);
                batch.clear();
            }
        }
        if !batch.is_empty() {
            store.write_frames(&mut upload, &batch)?;
        }
        store.finish_upload(&upload, None)?;
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "store ingest (Store API, no HTTP): {frames} frames in {secs:.1} s, {:.0} frames/s",
            frames as f64 / secs
        );
    }
    let dataset = store.dataset("bench", "frames")?;
    let admin = store.user_by_name("admin")?;
    let services = milkglass_service::Services::new(store.clone(), Default::default())?;
    let member_sql = DATASET_SQL.replace("FROM labels", "FROM frames.labels");
    let runtime = crate::runtime()?;
    let wait = std::time::Duration::ZERO;
    let ask = |sql: &str| -> Result<usize> {
        match runtime.block_on(milkglass_service::query::run(&services, &admin, sql, wait))? {
            milkglass_service::Answer::Rows { batches, .. } => Ok(batches.iter().map(|b| b.num_rows()).sum()),
            milkglass_service::Answer::Held { .. } => bail!("a member's query was held"),
        }
    };
    // Timed from nothing: a snapshot of an earlier run would be read instead of written.
    let _ = std::fs::remove_dir_all(store_dir.join("snapshots"));
    let start = Instant::now();
    let snapshot = store.dataset_snapshot(&dataset, dataset.version, None)?;
    let snapshot_secs = start.elapsed().as_secs_f64();
    let labels = snapshot.tables.iter().find(|t| t.name == "labels").context("no labels table")?;
    // The reference: the same rows, copied by DataFusion into a Parquet file of their own.
    let copy = dir.join(format!("dataset-sql-{frames}x{boxes}-labels.parquet"));
    if !copy.exists() {
        runtime.block_on(async {
            let ctx = SessionContext::new();
            ctx.register_parquet("snapshot", labels.file().to_string_lossy().as_ref(), ParquetReadOptions::default())
                .await?;
            let columns = labels.columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
            let frame = ctx.sql(&format!("SELECT {columns} FROM snapshot")).await?;
            frame.write_parquet(copy.to_string_lossy().as_ref(), Default::default(), None).await?;
            anyhow::Ok(())
        })?;
    }
    // The same query by an outside analyst, under a publication counted in frames.
    if store.user_by_name("analyst").is_err() {
        store.add_user("analyst", Role::Scientist)?;
    }
    let analyst = store.user_by_name("analyst")?;
    let policy = milkglass_core::Policy::from_value(serde_json::json!({
        "safe_zone": {"aggregation": {"min_agg_size": 5}}, "sanitized_columns": ["frame_id", "label_id"]
    }))?;
    store.publish_dataset(&dataset, &admin, &policy, None, None)?;
    let ask_as = |user: &milkglass_store::User, sql: &str| -> Result<usize> {
        match runtime.block_on(milkglass_service::query::run(&services, user, sql, wait))? {
            milkglass_service::Answer::Rows { batches, .. } => Ok(batches.iter().map(|b| b.num_rows()).sum()),
            milkglass_service::Answer::Held { .. } => bail!("a query was held"),
        }
    };
    let (mut ours, mut reference, mut published) =
        (Vec::with_capacity(runs), Vec::with_capacity(runs), Vec::with_capacity(runs));
    for run in 0..=runs {
        let start = Instant::now();
        let analyst_rows = ask_as(&analyst, &member_sql)?;
        let published_secs = start.elapsed().as_secs_f64();
        if analyst_rows != CLASSES {
            bail!("the analyst got {analyst_rows} groups");
        }
        let start = Instant::now();
        let rows = ask(&member_sql)?;
        let our_secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let reference_rows = runtime.block_on(async {
            let ctx = SessionContext::new();
            ctx.register_parquet("labels", copy.to_string_lossy().as_ref(), ParquetReadOptions::default()).await?;
            let batches = ctx.sql(DATASET_SQL).await?.collect().await?;
            anyhow::Ok(batches.iter().map(|b| b.num_rows()).sum::<usize>())
        })?;
        let reference_secs = start.elapsed().as_secs_f64();
        if rows != CLASSES || reference_rows != CLASSES {
            bail!("expected {CLASSES} groups, got {rows} (milkglass) and {reference_rows} (reference)");
        }
        // The first run of each warms the page cache; it is not counted.
        if run > 0 {
            ours.push(our_secs);
            reference.push(reference_secs);
            published.push(published_secs);
        }
    }
    let (m, r, p) = (median(&mut ours), median(&mut reference), median(&mut published));
    println!("query: {member_sql}");
    println!("dataset: {frames} frames, {} labels; median of {runs} runs each\n", labels.rows);
    println!("| system | median seconds |\n|---|---:|");
    println!("| milkglass, POST /api/query's path (snapshot tables, guard, decision, audit) | {m:.3} |");
    println!("| DataFusion over a Parquet copy of the same rows (reference) | {r:.3} |");
    println!("| milkglass, an outside analyst under a publication (distinct frames counted per class) | {p:.3} |");
    println!("\nmilkglass (member) / reference: {:.2}; analyst / reference: {:.2}", m / r, p / r);
    println!("snapshot of the version (written once, after the upload or by the first query): {snapshot_secs:.1} s");
    frame_reads_in(&store, &dataset, frames)
}

/// The inference set `bench api` uploads.
const MODEL: &str = "model";

/// A model's boxes for the frames of `bench ingest`'s input: most labels found with a small
/// shift, some with the wrong class or badly placed, some missed, and some boxes where there
/// is no label, so that every kind of label error and every cell of the confusion matrix has
/// members. Seeded: the same file every time.
fn write_inferences(input: &Path, output: &Path) -> Result<()> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;
    let schema = Arc::new(Schema::new(vec![
        Field::new("label_id", DataType::Utf8, false),
        Field::new("frame_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("top", DataType::Float64, false),
        Field::new("left", DataType::Float64, false),
        Field::new("width", DataType::Float64, false),
        Field::new("height", DataType::Float64, false),
        Field::new("confidence", DataType::Float64, false),
    ]));
    let reader = StreamReader::try_new(std::io::BufReader::new(std::fs::File::open(input)?), None)?;
    let temp = output.with_extension("partial");
    let mut writer = StreamWriter::try_new(std::io::BufWriter::new(std::fs::File::create(&temp)?), &schema)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for batch in reader {
        let batch = batch?;
        let frame_ids = batch.column_by_name("frame_id").context("frame_id")?.as_string::<i32>();
        let labels = batch.column_by_name("labels").context("labels")?.as_list::<i32>();
        let (mut ids, mut frames, mut classes) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
        let mut numbers: [Float64Builder; 5] = std::array::from_fn(|_| Float64Builder::new());
        for row in 0..batch.num_rows() {
            let frame = frame_ids.value(row);
            let boxes = labels.value(row);
            let boxes = boxes.as_struct();
            let class = boxes.column(1).as_string::<i32>();
            let coordinate = |c: usize, i: usize| boxes.column(c).as_primitive::<Float64Type>().value(i);
            let mut push = |n: usize, class: &str, [top, left, width, height]: [f64; 4], confidence: f64| {
                ids.append_value(format!("{frame}_p{n}"));
                frames.append_value(frame);
                classes.append_value(class);
                for (b, v) in numbers.iter_mut().zip([top, left, width, height, confidence]) {
                    b.append_value(v);
                }
            };
            for i in 0..boxes.len() {
                let [top, left, width, height] = [2, 3, 4, 5].map(|c| coordinate(c, i));
                let jitter = |rng: &mut rand::rngs::StdRng, v: f64, size: f64| v + size * rng.random_range(-0.04..0.04);
                let found = [jitter(&mut rng, top, height), jitter(&mut rng, left, width), width, height];
                match rng.random_range(0..100) {
                    0..85 => push(i, class.value(i), found, rng.random_range(0.5..1.0)),
                    85..90 => {
                        let other = format!("c{}", rng.random_range(0..CLASSES));
                        push(i, &other, found, rng.random_range(0.6..1.0))
                    }
                    90..95 => {
                        push(i, class.value(i), [top + height * 0.6, left, width, height], rng.random_range(0.5..1.0))
                    }
                    _ => {}
                }
            }
            if rng.random_range(0..10) == 0 {
                let spot = [rng.random_range(0.0..600.0), rng.random_range(0.0..1100.0), 60.0, 40.0];
                push(boxes.len(), &format!("c{}", rng.random_range(0..CLASSES)), spot, rng.random_range(0.7..1.0));
            }
        }
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(ids.finish()), Arc::new(frames.finish()), Arc::new(classes.finish())];
        columns.extend(numbers.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    writer.finish()?;
    std::fs::rename(&temp, output)?;
    Ok(())
}

/// A `milkglass serve` process on the bench store, for `bench api`.
/// `milkglass serve` in a process of its own on free loopback ports, with an admin token.
pub(crate) struct BenchServer {
    child: std::process::Child,
    pub(crate) base: String,
    /// The Flight SQL endpoint, as an http:// URI for tonic.
    pub(crate) flight: String,
    pub(crate) token: String,
    pub(crate) client: reqwest::blocking::Client,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BenchServer {
    fn start(store_dir: &Path) -> Result<BenchServer> {
        BenchServer::start_with(store_dir, &[])
    }

    /// The server with `extra` flags of `milkglass serve`.
    pub(crate) fn start_with(store_dir: &Path, extra: &[&str]) -> Result<BenchServer> {
        use std::io::BufRead;
        let token = {
            let store = Store::open(store_dir)?;
            store.add_user(&format!("api-bench-{}", rand::random::<u32>()), Role::Admin)?
        };
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["serve", "--data-dir", &store_dir.to_string_lossy(), "--http-addr", "127.0.0.1:0"])
            .args(["--flight-addr", "127.0.0.1:0"])
            .args(extra)
            .env("MILKGLASS_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut reader = std::io::BufReader::new(child.stdout.take().context("server stdout")?);
        let mut line = String::new();
        let (base, flight) = loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("the server exited before serving");
            }
            if let Some(addr) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                let flight = line
                    .split_whitespace()
                    .find(|w| w.starts_with("grpc://"))
                    .map(|w| w.trim_end_matches(')').replace("grpc://", "http://"))
                    .unwrap_or_default();
                break (addr.to_string(), flight);
            }
        };
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(600)).build()?;
        Ok(BenchServer { child, base, flight, token, client })
    }

    /// The server's resident memory now (Linux).
    pub(crate) fn resident_bytes(&self) -> Option<u64> {
        self.status_kib("VmRSS:").map(|kib| kib * 1024)
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    }

    /// One request: seconds, bytes of the body and the body when it is JSON.
    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(f64, usize, serde_json::Value)> {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let start = Instant::now();
        let response = request.send()?;
        let status = response.status();
        let json =
            response.headers().get("content-type").is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
        let bytes = response.bytes()?;
        let secs = start.elapsed().as_secs_f64();
        if !status.is_success() {
            bail!("{path}: {status} {}", String::from_utf8_lossy(&bytes));
        }
        let value = if json { serde_json::from_slice(&bytes)? } else { serde_json::Value::Null };
        Ok((secs, bytes.len(), value))
    }

    /// The status code of a request without a body, whatever it is.
    fn status(&self, method: reqwest::Method, path: &str) -> Result<u16> {
        let response = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token).send()?;
        Ok(response.status().as_u16())
    }

    /// Streams an Arrow IPC stream file to an upload route; its summary.
    fn upload(&self, path: &str, file: &Path) -> Result<serde_json::Value> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/vnd.apache.arrow.stream")
            .body(std::fs::File::open(file)?)
            .send()?;
        let status = response.status();
        let body: serde_json::Value = response.json()?;
        if !status.is_success() {
            bail!("{path}: {status} {body}");
        }
        Ok(body)
    }

    pub(crate) fn peak_bytes(&self) -> Option<u64> {
        self.status_kib("VmHWM:").map(|kib| kib * 1024)
    }
}

/// FiftyOne beside `bench api`: how many samples, run by which Python.
struct Peer {
    samples: usize,
    python: String,
}

fn api(frames: usize, requests: usize, index_wait: u64, fiftyone: Option<&Peer>, dir: &Path) -> Result<()> {
    use reqwest::Method;
    use serde_json::json;
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark figures need `cargo run --release`");
    }
    let store_dir = dir.join("store");
    let present = Store::open(&store_dir)
        .and_then(|s| s.dataset_status("bench", "frames"))
        .is_ok_and(|status| status.frames as usize == frames);
    if !present {
        ingest(frames, 5, 256, dir)?;
    }
    let started = Instant::now();
    let server = BenchServer::start(&store_dir)?;
    let ds = "/api/projects/bench/datasets/frames";
    println!("\nserver up after {:.1} s on {}", started.elapsed().as_secs_f64(), server.base);
    // The label-error queue and the metrics need a model's outputs: uploaded once, after which
    // the server prepares them in the background like any upload's version.
    let prepared_after = if server.status(reqwest::Method::GET, &format!("{ds}/inference_sets/{MODEL}"))? == 404 {
        let input = dir.join(format!("ingest-{frames}x5-256d.arrows"));
        let inferences = dir.join(format!("inferences-{frames}x5.arrows"));
        if !inferences.exists() {
            write_inferences(&input, &inferences)?;
        }
        server.call(Method::POST, &format!("{ds}/inference_sets"), Some(&json!({ "name": MODEL })))?;
        let start = Instant::now();
        let answer = server.upload(&format!("{ds}/inference_sets/{MODEL}/inferences"), &inferences)?;
        let secs = start.elapsed().as_secs_f64();
        let records = answer["records"].as_u64().unwrap_or(0);
        println!("inferences uploaded: {records} in {secs:.1} s ({:.0}/s)", records as f64 / secs);
        let start = Instant::now();
        loop {
            let (_, _, status) = server.call(Method::GET, &format!("{ds}/status"), None)?;
            if status["preparation"]["version"] == "idle" {
                break;
            }
            if start.elapsed().as_secs() > 1800 {
                bail!("the upload's preparation did not end within 30 minutes");
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        println!(
            "preparation done {:.1} s after the upload; server memory now {} MiB, peak {} MiB",
            start.elapsed().as_secs_f64(),
            fmt_peak(server.resident_bytes()),
            fmt_peak(server.peak_bytes())
        );
        Some(start.elapsed().as_secs_f64())
    } else {
        None
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut rows: Vec<RouteTimes> = Vec::new();
    let mut report = |route: &str, first: Option<f64>, mut times: Vec<f64>, bytes: usize| {
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize] * 1000.0;
        rows.push(RouteTimes {
            route: route.to_string(),
            first_ms: first.map(|f| f * 1000.0),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            kib: bytes as f64 / 1024.0,
        });
    };
    let mut timed = |route: &str, path: &dyn Fn(&mut rand::rngs::StdRng) -> String| -> Result<()> {
        let (first, bytes, _) = server.call(Method::GET, &path(&mut rng), None)?;
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            times.push(server.call(Method::GET, &path(&mut rng), None)?.0);
        }
        report(route, Some(first), times, bytes);
        Ok(())
    };
    timed("GET status", &|_| format!("{ds}/status"))?;
    timed("GET one frame", &|r| format!("{ds}/frames/frame_{:08}", r.random_range(0..frames)))?;
    // Filtered pages: the first listing starts the version's filter index; wait for it.
    let start = Instant::now();
    loop {
        let (_, _, page) = server.call(Method::GET, &format!("{ds}/frames?meta=split:eq:val&limit=1"), None)?;
        if page["from_index"] == true {
            break;
        }
        if start.elapsed().as_secs() > 600 {
            bail!("the filter index was not ready after 10 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let index_secs = start.elapsed().as_secs_f64();
    timed("GET frames page, no filter", &|_| format!("{ds}/frames?limit=50"))?;
    timed("GET frames page at a random offset", &|r| {
        format!("{ds}/frames?limit=50&offset={}", r.random_range(0..frames))
    })?;
    timed("GET frames, meta equality + count", &|_| format!("{ds}/frames?meta=split:eq:val&count=true&limit=50"))?;
    timed("GET frames, class + count", &|r| {
        format!("{ds}/frames?class=c{}&count=true&limit=50", r.random_range(0..CLASSES))
    })?;
    timed("GET frames, range + class + label count + count", &|_| {
        format!("{ds}/frames?meta=speed:gt:29.5&class=c1&min_labels=5&count=true&limit=50")
    })?;
    timed("GET frames, matches nothing + count", &|_| {
        format!("{ds}/frames?meta=split:eq:nothing&count=true&limit=50")
    })?;
    timed("GET label errors, first page", &|_| format!("{ds}/insights/label_errors?inference_set={MODEL}&limit=100"))?;
    timed("GET label errors, one kind at a random offset", &|r| {
        let kind = ["missing_label", "class_confusion", "bad_localization"][r.random_range(0..3)];
        format!("{ds}/insights/label_errors?inference_set={MODEL}&kind={kind}&offset={}", r.random_range(0..10_000))
    })?;
    timed("GET metrics, default thresholds", &|_| format!("{ds}/insights/metrics?inference_set={MODEL}"))?;
    timed("GET map (PCA, f32 pairs)", &|_| format!("{ds}/insights/map?space=frames"))?;
    timed("GET map/ids", &|_| format!("{ds}/insights/map/ids?space=frames"))?;
    // Similarity: the first query starts the index build; it answers exactly meanwhile.
    let similar =
        |r: &mut rand::rngs::StdRng| json!({"frame_id": format!("frame_{:08}", r.random_range(0..frames)), "k": 10});
    let start = Instant::now();
    let mut exact = Vec::new();
    let index_ready = loop {
        let (secs, _, answer) =
            server.call(Method::POST, &format!("{ds}/insights/similar"), Some(&similar(&mut rng)))?;
        if answer["method"] == "hnsw" {
            break Some(start.elapsed().as_secs_f64());
        }
        exact.push(secs);
        // Up to 20,000 vectors milkglass always searches exactly; no index is built.
        if start.elapsed().as_secs() > index_wait || (frames <= 20_000 && exact.len() >= requests) {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    };
    if !exact.is_empty() {
        report("POST similar, exact (while the index builds)", None, exact, 0);
    }
    if index_ready.is_some() {
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let body = similar(&mut rng);
            times.push(server.call(Method::POST, &format!("{ds}/insights/similar"), Some(&body))?.0);
        }
        report("POST similar (index)", None, times, 0);
    }
    println!("\n{frames} frames, {requests} timed requests per route after one untimed first request (ms):\n");
    let (resident, peak) = (server.resident_bytes(), server.peak_bytes());
    // The peer runs alone, after milkglass's server has given the cores back.
    drop(server);
    let peer = fiftyone.map(|fiftyone| run_fiftyone(fiftyone, requests, dir)).transpose()?;
    let fiftyone_samples = fiftyone.map_or(0, |f| f.samples);
    let peer_routes = peer.as_ref().and_then(|p| p["routes"].as_array().cloned()).unwrap_or_default();
    let peer_row = |route: &str| peer_routes.iter().find(|r| r["route"] == route);
    if peer.is_some() {
        println!(
            "| route | first | p50 | p99 | response KiB | FiftyOne {fiftyone_samples}: first | p50 | p99 | \
             FiftyOne p99 / milkglass p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
    } else {
        println!("| route | first | p50 | p99 | response KiB |\n|---|---:|---:|---:|---:|");
    }
    for row in &rows {
        let first = row.first_ms.map_or(String::new(), |f| format!("{f:.0}"));
        let mut line = format!("| {} | {first} | {:.1} | {:.1} | {:.1} |", row.route, row.p50_ms, row.p99_ms, row.kib);
        if peer.is_some() {
            match peer_row(&row.route) {
                Some(theirs) => {
                    let ms = |key: &str| theirs[key].as_f64().unwrap_or(f64::NAN);
                    line += &format!(
                        " {:.0} | {:.1} | {:.1} | {:.1} |",
                        ms("first_ms"),
                        ms("p50_ms"),
                        ms("p99_ms"),
                        ms("p99_ms") / row.p99_ms
                    );
                }
                None => line += " | | | |",
            }
        }
        println!("{line}");
    }
    if let Some(peer) = &peer {
        println!(
            "\nFiftyOne {}: loaded in {:.0} s, similarity index (sklearn) built in {:.0} s, peak memory {:.0} MiB \
             (Python {:.0} + mongod {:.0})",
            peer["samples"],
            peer["load_s"].as_f64().unwrap_or(f64::NAN),
            peer["index_s"].as_f64().unwrap_or(f64::NAN),
            peer["peak_mib"]["python"].as_f64().unwrap_or(0.0) + peer["peak_mib"]["mongod"].as_f64().unwrap_or(0.0),
            peer["peak_mib"]["python"].as_f64().unwrap_or(f64::NAN),
            peer["peak_mib"]["mongod"].as_f64().unwrap_or(f64::NAN),
        );
    }
    match prepared_after {
        Some(secs) => {
            println!("\nthe inference upload's preparation (label errors, metrics, ...) ended {secs:.1} s after it")
        }
        None => println!(
            "\nthe inference set was uploaded by an earlier run: label errors and metrics were made by their first request"
        ),
    }
    println!("filter index ready {index_secs:.1} s after the first filtered listing");
    match index_ready {
        Some(secs) => println!("similarity index answering {secs:.0} s after the first similar query"),
        None => println!("similarity index not ready after {index_wait} s"),
    }
    println!("milkglass server memory: {} MiB at the end, peak {} MiB", fmt_peak(resident), fmt_peak(peak));
    Ok(())
}

/// One route's timings in `bench api`.
struct RouteTimes {
    route: String,
    first_ms: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    kib: f64,
}

/// FiftyOne answering the same routes on `samples` samples of the same shape
/// (`scripts/bench-fiftyone.py`, in a process of its own): its JSON report.
fn run_fiftyone(peer: &Peer, requests: usize, dir: &Path) -> Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench-fiftyone.py");
    println!("\nFiftyOne on {} samples ({}) ...", peer.samples, script.display());
    let out = std::process::Command::new(&peer.python)
        .arg(&script)
        .args(["--samples", &peer.samples.to_string(), "--requests", &requests.to_string(), "--json", "--dir"])
        .arg(dir.join("fiftyone"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not start python3 for the FiftyOne side")?;
    if !out.status.success() {
        bail!(
            "the FiftyOne side failed (install it with `pip install -r scripts/bench-fiftyone-requirements.txt`, \
             name that Python with --fiftyone-python, or leave it out with --fiftyone-samples 0)"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().context("the FiftyOne side printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

fn differencing(rows: usize, queries: usize, dir: &Path) -> Result<()> {
    use datafusion::prelude::SessionContext;
    use milkglass_guard::{Coverage, Decision};
    let groups = 100;
    let (store, table) = guard_bench_table(&dir.join("differencing-store"), rows, groups, 1000)?;
    let policy = table.policy.clone();
    store.add_user("sam", Role::Scientist)?;
    let sam = store.user_by_name("sam")?;
    let pool = store.coverage_pool(&sam)?;
    let policies = std::collections::HashMap::from([("t".to_string(), policy.clone())]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut plain, mut guarded, mut memory, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let bar = progress(queries, "answering filtered queries");
    crate::runtime()?.block_on(async {
        for _ in 0..queries {
            // A window of w (uniform in 0..1000) keeps a random tenth to nine tenths of
            // the rows: the bitmaps' costly case, no long runs.
            let low = rng.random_range(0..500);
            let high = low + rng.random_range(100..500);
            let sql =
                format!("SELECT k, COUNT(*) AS n, SUM(v) AS s FROM t WHERE w BETWEEN {low} AND {high} GROUP BY k");

            let (visible, _) = table.providers()?;
            let ctx = SessionContext::new();
            ctx.register_table("t", visible)?;
            let start = Instant::now();
            let expected: usize = ctx.sql(&sql).await?.collect().await?.iter().map(|b| b.num_rows()).sum();
            plain.push(start.elapsed().as_secs_f64());

            let start = Instant::now();
            let protected = protected_bench_table(&table, &policy, rows)?;
            let prepared = milkglass_guard::prepare(&sql, vec![protected]).await?;
            let mut outcome = prepared.execute().await?;
            guarded.push(start.elapsed().as_secs_f64());

            // What the server adds: load and compare the pool's earlier sets, decide,
            // remember this one.
            let start = Instant::now();
            let earlier = store
                .answered_coverage(&pool, &milkglass_store::CoverageOf::Table(table.id))?
                .iter()
                .map(|a| Coverage::from_bytes(&a.coverage))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            outcome.compare_with_earlier("t", &earlier);
            let decision = prepared.decide(Some(&outcome), &policies, "sam");
            let coverage = outcome.coverage.get("t").ok_or_else(|| anyhow::anyhow!("no coverage recorded"))?;
            let serialized = coverage.to_bytes();
            store.remember_coverage(
                &pool,
                &milkglass_store::CoverageOf::Table(table.id),
                0,
                coverage.len() as i64,
                &serialized,
            )?;
            memory.push(start.elapsed().as_secs_f64());
            bytes.push(serialized.len());
            if decision != Decision::Safe || outcome.rows != expected {
                bail!("unexpected result for {sql}: {decision:?}, {} vs {expected} rows", outcome.rows);
            }
            bar.inc(1);
        }
        anyhow::Ok(())
    })?;
    bar.finish();
    let last_tenth = |v: &[f64]| {
        let mut tail = v[v.len() - v.len().div_ceil(10)..].to_vec();
        tail.sort_by(f64::total_cmp);
        tail[tail.len() / 2]
    };
    let memory_late = last_tenth(&memory);
    let (p, g, m) = (median(&mut plain), median(&mut guarded), median(&mut memory));
    bytes.sort_unstable();
    let whole = Coverage::whole(rows as u64).to_bytes().len();
    println!("table: {rows} rows, {groups} groups, Parquet; {queries} answered queries like");
    println!("SELECT k, COUNT(*) AS n, SUM(v) AS s FROM t WHERE w BETWEEN <a> AND <b> GROUP BY k\n");
    println!("| per answered query | median |\n|---|---:|");
    println!("| DataFusion without the guard (reference) | {:.1} ms |", p * 1e3);
    println!("| milkglass guard, recording the coverage | {:.1} ms |", g * 1e3);
    println!("| load + compare with every earlier set + remember (all {queries}) | {:.1} ms |", m * 1e3);
    println!("| ... over the last tenth (~{} earlier sets) | {:.1} ms |", queries * 9 / 10, memory_late * 1e3);
    println!("| bytes remembered (filtered; max {}) | {} |", bytes[bytes.len() - 1], bytes[bytes.len() / 2]);
    println!("| bytes remembered (whole-table read) | {whole} |");
    println!("\nguarded / plain: {:.3}; (guarded + memory) / plain: {:.3}", g / p, (g + m) / p);
    Ok(())
}

/// A fresh store in `dir` with owner "owner"'s generated table "t" (`rows` rows of k in
/// `0..groups`, v and w; minimum aggregation 10, reject), for the guard benchmarks.
/// A table `t` of `rows` rows: a key `k` of `groups` values, a value `v` in [0, 100), and `w`,
/// one of `w_values` integers (a person, for the DP bench).
fn guard_bench_table(
    dir: &Path,
    rows: usize,
    groups: usize,
    w_values: i64,
) -> Result<(Store, milkglass_store::GuardedTableInfo)> {
    let (store, owner) = fresh_bench_store(dir)?;
    let file = store.new_table_file("t")?;
    write_guard_table(&file, rows, groups, w_values, true)?;
    let policy = milkglass_core::Policy::from_json(
        r#"{"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject"}"#,
    )?;
    let columns = ["k".to_string(), "v".to_string(), "w".to_string()];
    let imported = milkglass_store::ImportedTable { file, rows: rows as i64, columns: columns.to_vec() };
    let table = store.publish_table(&owner, "t", &policy, None, &imported)?;
    Ok((store, table))
}

/// A new store in `dir` (an old one there is removed) with the user "owner", who publishes
/// the guard and DP benches' tables.
fn fresh_bench_store(dir: &Path) -> Result<(Store, milkglass_store::User)> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark figures need `cargo run --release`");
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let store = Store::open(dir)?;
    store.add_user("owner", Role::Owner)?;
    let owner = store.user_by_name("owner")?;
    Ok((store, owner))
}

/// The middle value (the upper one of an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The DP bench's table, published the way an owner's upload is: the generated rows (in
/// random order) imported through the store, which stores a DP table sorted by its privacy
/// unit (`w`).
fn dp_bench_table(
    dir: &Path,
    rows: usize,
    groups: usize,
    w_values: i64,
) -> Result<(Store, milkglass_store::GuardedTableInfo)> {
    let (store, owner) = fresh_bench_store(dir)?;
    let raw = dir.join("generated.parquet");
    write_guard_table(&raw, rows, groups, w_values, false)?;
    let start = Instant::now();
    let imported = crate::runtime()?.block_on(store.import_table_file(
        "t",
        &raw,
        milkglass_store::TableFormat::Parquet,
        Some("w"),
    ))?;
    eprintln!("imported {rows} rows sorted by w in {:.1} s", start.elapsed().as_secs_f64());
    std::fs::remove_file(&raw)?;
    let policy = milkglass_core::Policy::from_json(
        r#"{"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject"}"#,
    )?;
    let table = store.publish_table(&owner, "t", &policy, None, &imported)?;
    Ok((store, table))
}

fn write_guard_table(path: &Path, rows: usize, groups: usize, w_values: i64, row_ids: bool) -> Result<()> {
    use arrow::array::{Float64Array, Int64Array};
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Float64, false),
        Field::new("w", DataType::Int64, false),
        Field::new(milkglass_store::ROW_ID, DataType::Int64, false),
    ]));
    let schema = if row_ids { schema } else { Arc::new(schema.project(&[0, 1, 2])?) };
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path)?, schema.clone(), None)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let bar = progress(rows, "generating the table");
    for start in (0..rows).step_by(1 << 16) {
        let n = (1 << 16).min(rows - start);
        let k = Int64Array::from_iter_values((0..n).map(|_| rng.random_range(0..groups as i64)));
        let v = Float64Array::from_iter_values((0..n).map(|_| rng.random::<f64>() * 100.0));
        let w = Int64Array::from_iter_values((0..n).map(|_| rng.random_range(0..w_values)));
        let id = Int64Array::from_iter_values(start as i64..(start + n) as i64);
        let mut columns: Vec<arrow::array::ArrayRef> = vec![Arc::new(k), Arc::new(v), Arc::new(w), Arc::new(id)];
        columns.truncate(schema.fields().len());
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        bar.inc(n as u64);
    }
    writer.close()?;
    bar.finish();
    Ok(())
}
