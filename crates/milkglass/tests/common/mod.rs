//! A real milkglass server process on a free loopback port, for integration tests.
#![allow(dead_code)]

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_milkglass");

pub struct Server {
    pub child: Child,
    pub base: String,
    /// The Flight SQL endpoint, as an http:// URI for tonic.
    pub flight: String,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub client: Client,
}

/// Runs `milkglass` with arguments and returns its stdout; panics with stderr on failure.
pub fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run milkglass");
    assert!(out.status.success(), "milkglass {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Adds a user with the CLI and returns its token.
pub fn add_user(dir: &Path, name: &str, role: &str) -> String {
    let out = cli(&["user", "add", name, "--role", role, "--data-dir", dir.to_str().unwrap()]);
    out.lines().last().expect("token line").trim().to_string()
}

/// An HTTP server on loopback standing in for the user's image server: it answers each GET with the
/// bytes `respond` gives for the path (404 for None), counts every request and keeps its head.
pub struct ImageServer {
    pub addr: std::net::SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl ImageServer {
    pub fn start(respond: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static) -> ImageServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count, log, respond) = (requests.clone(), seen.clone(), Arc::new(respond));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (count, log, respond) = (count.clone(), log.clone(), respond.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    log.lock().unwrap().push(head);
                    let (status, body) = match respond(&path) {
                        Some(body) => ("200 OK", body),
                        None => ("404 Not Found", Vec::new()),
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(&body);
                });
            }
        });
        ImageServer { addr, requests, seen }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Starts `milkglass demo` with `frames` sample frames in `dir` on free ports, with extra environment
/// variables; returns the process, its HTTP address and the tokens it saved (`demo-tokens.json`).
pub fn start_demo(dir: &Path, frames: &str, envs: &[(&str, &str)]) -> (Child, String, Value) {
    let mut child = Command::new(BIN)
        .args(["demo", "--data-dir", dir.to_str().unwrap(), "--http-addr", "127.0.0.1:0"])
        .args(["--flight-addr", "127.0.0.1:0", "--frames", frames])
        .env("MILKGLASS_LOG", "warn")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start milkglass demo");
    let base = ready_address(&mut child);
    let tokens = std::fs::read_to_string(dir.join("demo-tokens.json")).expect("demo-tokens.json");
    (child, base, serde_json::from_str(&tokens).expect("tokens JSON"))
}

/// Reads the child's stdout up to the "milkglass serving ... on http://ADDR" line.
pub fn ready_address(child: &mut Child) -> String {
    ready_addresses(child).0
}

/// The HTTP and Flight SQL addresses from the ready line.
pub fn ready_addresses(child: &mut Child) -> (String, String) {
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "milkglass exited before serving");
        if line.starts_with("milkglass serving") {
            let addr = line.split_whitespace().find(|w| w.starts_with("http://")).expect("address in ready line");
            let flight = line
                .split_whitespace()
                .find(|w| w.starts_with("grpc://"))
                .map(|w| w.trim_end_matches(')').replace("grpc://", "http://"))
                .unwrap_or_default();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            return (addr.to_string(), flight);
        }
    }
}

impl Server {
    /// A fresh data directory with an admin, then the server on it.
    pub fn start(extra: &[&str]) -> (Server, String) {
        Server::start_with_env(extra, &[])
    }

    /// [`Server::start`] with extra environment variables for the server.
    pub fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> (Server, String) {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let admin = add_user(&dir, "admin", "admin");
        let mut server = Server::start_on_with_env(&dir, extra, envs);
        server._temp = Some(temp);
        (server, admin)
    }

    /// `milkglass demo` with `frames` sample frames in a fresh directory, and the tokens it saved.
    pub fn demo(frames: &str) -> (Server, Value) {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(BIN)
            .args(["demo", "--data-dir", temp.path().to_str().unwrap(), "--http-addr", "127.0.0.1:0"])
            .args(["--flight-addr", "127.0.0.1:0", "--frames", frames])
            .env("MILKGLASS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start milkglass demo");
        let (base, flight) = ready_addresses(&mut child);
        let tokens = std::fs::read_to_string(temp.path().join("demo-tokens.json")).expect("demo-tokens.json");
        let client = Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let dir = temp.path().to_path_buf();
        let server = Server { child, base, flight, dir, _temp: Some(temp), client };
        (server, serde_json::from_str(&tokens).expect("tokens JSON"))
    }

    /// Starts a server on an existing data directory (the caller keeps the directory).
    pub fn start_on(dir: &Path, extra: &[&str]) -> Server {
        Server::start_on_with_env(dir, extra, &[])
    }

    fn start_on_with_env(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--data-dir",
                dir.to_str().unwrap(),
                "--http-addr",
                "127.0.0.1:0",
                "--flight-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("MILKGLASS_LOG", "warn")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start milkglass serve");
        let (base, flight) = ready_addresses(&mut child);
        let client = Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Server { child, base, flight, dir: dir.to_path_buf(), _temp: None, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, token: &str, path: &str) -> Response {
        self.client.get(self.url(path)).bearer_auth(token).send().expect("GET")
    }

    pub fn post_json(&self, token: &str, path: &str, body: &Value) -> Response {
        self.client.post(self.url(path)).bearer_auth(token).json(body).send().expect("POST")
    }

    pub fn request(&self, method: reqwest::Method, token: &str, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(token)
    }

    /// Uploads JSON Lines to a dataset endpoint (`frames`, `labels`, `embeddings`, ...).
    pub fn upload_lines(&self, token: &str, path: &str, lines: &[Value]) -> Response {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .expect("upload")
    }

    /// Creates project `p` (classes cat, dog) with dataset `d`.
    pub fn project_with_dataset(&self, token: &str, project: &str, dataset: &str) {
        let r = self.post_json(
            token,
            "/api/projects",
            &json!({"name": project, "classes": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}),
        );
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
        let r = self.post_json(token, &format!("/api/projects/{project}/datasets"), &json!({"name": dataset}));
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Project `p` (classes cat and dog) with dataset `d` holding `frames`, made by `owner`.
pub fn dataset_of(server: &Server, owner: &str, frames: &[Value]) {
    let r = server.post_json(
        owner,
        "/api/projects",
        &json!({"name": "p", "classes": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}),
    );
    assert_eq!(r.status(), 201);
    assert_eq!(server.post_json(owner, "/api/projects/p/datasets", &json!({"name": "d"})).status(), 201);
    assert_eq!(server.upload_lines(owner, "/api/projects/p/datasets/d/frames", frames).status(), 200);
}

/// A frame line with one image and `labels` boxes of class cat.
pub fn frame(id: &str, labels: usize) -> Value {
    let labels: Vec<Value> = (0..labels)
        .map(|i| {
            json!({"label_id": format!("{id}_l{i}"), "class": if i % 2 == 0 { "cat" } else { "dog" },
                   "geometry": {"kind": "box2d", "top": 1.0, "left": 2.0, "width": 10.0, "height": 12.0}})
        })
        .collect();
    json!({
        "frame_id": id,
        "sensors": [{"sensor_id": "cam", "kind": "image", "url": format!("https://img.example.com/{id}.png")}],
        "metadata": {"weather": if id.ends_with('0') { "rain" } else { "sun" }, "speed": id.len() as f64 * 1.5},
        "labels": labels,
        "embedding": [0.1, 0.2, 0.3, 0.4],
    })
}

/// Asserts a 4xx JSON error and returns its `error` object.
pub fn expect_error(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let body: Value = response.json().expect("JSON error body");
    let error = body["error"].clone();
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {body}");
    error
}

/// The dataset's version and frame count, to check that a refused request changed nothing.
pub fn snapshot(server: &Server, token: &str, project: &str, dataset: &str) -> (i64, i64, i64) {
    let status: Value =
        server.get(token, &format!("/api/projects/{project}/datasets/{dataset}/status")).json().unwrap();
    (
        status["dataset"]["version"].as_i64().unwrap(),
        status["frames"].as_i64().unwrap(),
        status["labels"].as_i64().unwrap(),
    )
}
