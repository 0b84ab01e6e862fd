//! `milkglass bench load`: a server under the load of a working day, on loopback. Analysts query a
//! guarded table (half their queries over HTTP, half over Flight SQL; a third of them refused by the
//! policy, as real analysts' are), uploaders add frames to a dataset (and, once each
//! has added its share, upload them again as new revisions), and UI users browse it (status,
//! pages, one frame, the map, similar frames), all at once and without pauses, for a set time. It
//! reports latency per route, every error, the server's memory over time, and afterwards checks the
//! audit log: its chain verifies and it holds exactly one entry per query sent.

use crate::bench::BenchServer;
use anyhow::{Context, Result, bail, ensure};
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The analysts' questions: two the policy answers, one it refuses (a row-level read).
const QUERIES: [(&str, bool); 3] = [
    ("SELECT Pclass, AVG(Survived) AS rate FROM titanic GROUP BY Pclass", true),
    ("SELECT Sex, COUNT(*) AS n FROM titanic GROUP BY Sex", true),
    ("SELECT * FROM titanic LIMIT 5", false),
];
const FRAMES_PER_UPLOAD: usize = 100;
/// Frames each uploader owns: once it has added them all it uploads them again (new revisions of
/// the same frames), so the dataset's size stays put over a long run and the server's memory over
/// time shows what the load costs, not how large the dataset has grown.
const FRAMES_PER_UPLOADER: usize = 10_000;
const DIM: usize = 16;

/// Latencies and failures by route, from every worker.
#[derive(Default)]
struct Tally {
    seconds: BTreeMap<&'static str, Vec<f64>>,
    errors: BTreeMap<&'static str, Vec<String>>,
}

fn record(tally: &Mutex<Tally>, route: &'static str, started: Instant, outcome: Result<()>) {
    let seconds = started.elapsed().as_secs_f64();
    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    tally.seconds.entry(route).or_default().push(seconds);
    if let Err(e) = outcome {
        tally.errors.entry(route).or_default().push(format!("{e:#}"));
    }
}

pub struct LoadPlan {
    pub analysts: usize,
    pub uploaders: usize,
    pub browsers: usize,
    pub duration: Duration,
    pub frames: usize,
}

pub fn load(plan: &LoadPlan, dir: &Path) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark figures need `cargo run --release`");
    }
    let store_dir = dir.join("load-store");
    if store_dir.exists() {
        std::fs::remove_dir_all(&store_dir).with_context(|| format!("cannot clear {}", store_dir.display()))?;
    }
    // Every analyst may have one query running; the server's cap is above the analysts' number, so
    // what is measured is the work, not the admission gate's refusals.
    let total = (plan.analysts + 8).to_string();
    let server = BenchServer::start_with(&store_dir, &["--queries-total", &total])?;
    let setup = Setup::make(&server, plan)?;
    let audit_before = audit_entries(&server)?;
    println!(
        "load: {} analysts, {} uploaders, {} UI users for {} s against {}",
        plan.analysts,
        plan.uploaders,
        plan.browsers,
        plan.duration.as_secs(),
        server.base
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let queries_sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (i, token) in setup.analysts.iter().enumerate() {
        let (base, flight, token) = (server.base.clone(), server.flight.clone(), token.clone());
        let (tally, stop, sent) = (tally.clone(), stop.clone(), queries_sent.clone());
        workers.push(std::thread::spawn(move || analyst(i, &base, &flight, &token, &tally, &stop, &sent)));
    }
    for i in 0..plan.uploaders {
        let (base, token, tally, stop) = (server.base.clone(), server.token.clone(), tally.clone(), stop.clone());
        workers.push(std::thread::spawn(move || uploader(i, &base, &token, &tally, &stop)));
    }
    for i in 0..plan.browsers {
        let (base, token, tally, stop) = (server.base.clone(), server.token.clone(), tally.clone(), stop.clone());
        let frames = plan.frames;
        workers.push(std::thread::spawn(move || browser(i, &base, &token, frames, &tally, &stop)));
    }
    // The server's resident memory, every 10 s.
    let started = Instant::now();
    let mut memory = Vec::new();
    while started.elapsed() < plan.duration {
        memory.push((started.elapsed().as_secs(), server.resident_bytes().unwrap_or(0)));
        std::thread::sleep(Duration::from_secs(10).min(plan.duration.saturating_sub(started.elapsed())));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("a load worker panicked"))?;
    }
    memory.push((started.elapsed().as_secs(), server.resident_bytes().unwrap_or(0)));

    let tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    println!("\n| route | requests | errors | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|");
    let mut errors = 0;
    for (route, seconds) in &tally.seconds {
        let mut sorted = seconds.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] * 1000.0;
        let failed = tally.errors.get(route).map_or(0, Vec::len);
        errors += failed;
        println!("| {route} | {} | {failed} | {:.1} | {:.1} | {:.0} |", sorted.len(), at(0.5), at(0.99), at(1.0));
    }
    for (route, messages) in &tally.errors {
        println!("first error of {route}: {}", messages[0]);
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let rss: Vec<String> = memory.iter().map(|(at, bytes)| format!("{at} s: {:.0}", mib(*bytes))).collect();
    println!("\nserver resident memory (MiB) by time: {}", rss.join(", "));
    println!("server peak memory: {:.0} MiB", mib(server.peak_bytes().unwrap_or(0)));

    let verdict = server.call(Method::GET, "/api/audit/verify", None)?.2;
    let sent = queries_sent.load(Ordering::Relaxed);
    let entries = verdict["entries"].as_u64().unwrap_or(0) as usize;
    println!(
        "audit chain verified: {}; entries added: {} for {sent} queries sent",
        verdict["verified"],
        entries - audit_before
    );
    ensure!(verdict["verified"] == true, "the audit chain does not verify: {verdict}");
    ensure!(
        entries - audit_before == sent,
        "the audit log holds {} entries for {sent} queries",
        entries - audit_before
    );
    ensure!(errors == 0, "{errors} requests failed");
    Ok(())
}

struct Setup {
    analysts: Vec<String>,
}

impl Setup {
    /// The table, the analysts and the dataset, made through the API as an admin.
    fn make(server: &BenchServer, plan: &LoadPlan) -> Result<Setup> {
        let policy = json!({"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject",
                            "sanitized_columns": ["Name"]});
        let form =
            reqwest::blocking::multipart::Form::new().text("name", "titanic").text("policy", policy.to_string()).part(
                "file",
                reqwest::blocking::multipart::Part::text(milkglass_sample::TITANIC_CSV).file_name("titanic.csv"),
            );
        let published = server
            .client
            .post(format!("{}/api/tables", server.base))
            .bearer_auth(&server.token)
            .multipart(form)
            .send()?;
        ensure!(published.status().is_success(), "publishing titanic: {}", published.text()?);
        let mut analysts = Vec::new();
        for i in 0..plan.analysts {
            let (_, _, made) = server.call(
                Method::POST,
                "/api/users",
                Some(&json!({"name": format!("analyst-{i}"), "role": "scientist"})),
            )?;
            analysts.push(made["token"].as_str().context("a token")?.to_string());
        }
        server.call(
            Method::POST,
            "/api/projects",
            Some(&json!({"name": "load", "classes": [{"id": 0, "name": "cat"}]})),
        )?;
        server.call(Method::POST, "/api/projects/load/datasets", Some(&json!({"name": "d"})))?;
        for start in (0..plan.frames).step_by(1000) {
            let body = frame_lines("seed", start, (plan.frames - start).min(1000), 0);
            upload(&server.client, &server.base, &server.token, body)?;
        }
        Ok(Setup { analysts })
    }
}

/// Frames `start..start + n`; `round` goes into their metadata, so a frame uploaded again is a change.
fn frame_lines(prefix: &str, start: usize, n: usize, round: usize) -> String {
    let mut body = String::new();
    for i in start..start + n {
        let embedding: Vec<f32> = (0..DIM).map(|d| ((i * 31 + d * 7) % 97) as f32 / 97.0).collect();
        let line = json!({
            "frame_id": format!("{prefix}-{i}"),
            "sensors": [{"sensor_id": "cam", "kind": "image", "url": format!("https://img.example.com/{prefix}/{i}.png")}],
            "metadata": {"split": if i % 5 == 0 { "val" } else { "train" }, "speed": (i % 40) as f64, "round": round},
            "labels": [{"label_id": format!("{prefix}-{i}-l"), "class": "cat",
                        "geometry": {"kind": "box2d", "top": 1.0, "left": 2.0, "width": 10.0, "height": 12.0}}],
            "embedding": embedding,
        });
        body.push_str(&line.to_string());
        body.push('\n');
    }
    body
}

fn upload(client: &reqwest::blocking::Client, base: &str, token: &str, body: String) -> Result<()> {
    let r = client
        .post(format!("{base}/api/projects/load/datasets/d/frames"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()?;
    ensure!(r.status().is_success(), "upload: {} {}", r.status(), r.text()?);
    Ok(())
}

fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().expect("an HTTP client")
}

/// One analyst: the questions in turn, HTTP and Flight SQL in turn, as fast as answers come.
fn analyst(
    i: usize,
    base: &str,
    flight: &str,
    token: &str,
    tally: &Mutex<Tally>,
    stop: &AtomicBool,
    sent: &AtomicUsize,
) {
    let http = http_client();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let mut flight_client = runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(flight.to_string())
            .expect("a Flight URL")
            .connect()
            .await
            .expect("Flight SQL connects");
        let mut client = FlightSqlServiceClient::new(channel);
        client.set_token(token.to_string());
        client
    });
    let mut n = i;
    while !stop.load(Ordering::Relaxed) {
        let (sql, answered) = QUERIES[n % QUERIES.len()];
        let over_flight = (n / QUERIES.len()) % 2 == 1;
        n += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        if over_flight {
            let outcome = runtime.block_on(flight_query(&mut flight_client, sql));
            let route = if answered { "Flight SQL query, answered" } else { "Flight SQL query, refused" };
            let outcome = match (outcome, answered) {
                (Ok(rows), true) if rows > 0 => Ok(()),
                (Err(status), false) if status.code() == tonic::Code::PermissionDenied => Ok(()),
                (other, _) => Err(anyhow::anyhow!("{sql}: unexpected {other:?}")),
            };
            record(tally, route, started, outcome);
        } else {
            let r = http.post(format!("{base}/api/query")).bearer_auth(token).json(&json!({"sql": sql})).send();
            let route = if answered { "POST /api/query, answered" } else { "POST /api/query, refused" };
            let outcome = match r {
                Ok(r) if answered && r.status() == 200 => r.bytes().map(|_| ()).map_err(Into::into),
                Ok(r) if !answered && r.status() == 403 => r.bytes().map(|_| ()).map_err(Into::into),
                Ok(r) => Err(anyhow::anyhow!("{sql}: {} {}", r.status(), r.text().unwrap_or_default())),
                Err(e) => Err(e.into()),
            };
            record(tally, route, started, outcome);
        }
    }
}

async fn flight_query(
    client: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Result<usize, tonic::Status> {
    let status = |e: arrow_flight::error::FlightError| match e {
        arrow_flight::error::FlightError::Tonic(status) => *status,
        other => tonic::Status::unknown(other.to_string()),
    };
    let info = client.execute(sql.to_string(), None).await.map_err(status)?;
    let mut rows = 0;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or_else(|| tonic::Status::internal("no ticket"))?;
        let batches: Vec<_> = client
            .do_get(ticket)
            .await
            .map_err(status)?
            .try_collect()
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
    }
    Ok(rows)
}

/// One uploader: uploads of new frames, one after another.
fn uploader(i: usize, base: &str, token: &str, tally: &Mutex<Tally>, stop: &AtomicBool) {
    let http = http_client();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let first = (n * FRAMES_PER_UPLOAD) % FRAMES_PER_UPLOADER;
        let body =
            frame_lines(&format!("up{i}"), first, FRAMES_PER_UPLOAD, n * FRAMES_PER_UPLOAD / FRAMES_PER_UPLOADER);
        n += 1;
        let started = Instant::now();
        record(tally, "POST frames (100 per upload)", started, upload(&http, base, token, body));
    }
}

/// One UI user: what the explorer and the insight views ask for, in turn.
fn browser(i: usize, base: &str, token: &str, frames: usize, tally: &Mutex<Tally>, stop: &AtomicBool) {
    let http = http_client();
    let ds = format!("{base}/api/projects/load/datasets/d");
    let mut n = i * 7919;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let frame = format!("seed-{}", (n * 7919) % frames.max(1));
        let (route, request): (&'static str, reqwest::blocking::RequestBuilder) = match n % 6 {
            0 => ("GET status", http.get(format!("{ds}/status"))),
            1 => ("GET frames page", http.get(format!("{ds}/frames?limit=50&offset={}", (n * 50) % frames.max(1)))),
            2 => {
                ("GET frames, filtered + count", http.get(format!("{ds}/frames?meta=split:eq:val&count=true&limit=50")))
            }
            3 => ("GET one frame", http.get(format!("{ds}/frames/{frame}"))),
            4 => ("GET map", http.get(format!("{ds}/insights/map?space=frames"))),
            _ => {
                ("POST similar", http.post(format!("{ds}/insights/similar")).json(&json!({"frame_id": frame, "k": 10})))
            }
        };
        let started = Instant::now();
        let outcome = match request.bearer_auth(token).send() {
            Ok(r) if r.status().is_success() => r.bytes().map(|_| ()).map_err(Into::into),
            Ok(r) => Err(anyhow::anyhow!("{route}: {} {}", r.status(), r.text().unwrap_or_default())),
            Err(e) => Err(e.into()),
        };
        record(tally, route, started, outcome);
    }
}

fn audit_entries(server: &BenchServer) -> Result<usize> {
    let verdict: Value = server.call(Method::GET, "/api/audit/verify", None)?.2;
    if verdict["verified"] != true {
        bail!("the audit chain does not verify before the load: {verdict}");
    }
    Ok(verdict["entries"].as_u64().unwrap_or(0) as usize)
}
