//! `milkglass serve-files`: the binary on a real port, as a user would start it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_milkglass");

#[test]
fn serves_a_directory_and_prints_the_url_prefix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cat.jpg"), b"\xff\xd8\xff fake jpeg").unwrap();
    let mut child = Command::new(BIN)
        .args(["serve-files", dir.path().to_str().unwrap(), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let prefix =
        first.split_whitespace().find(|w| w.starts_with("http://")).expect("URL in the first line").to_string();
    let hint = lines.next().unwrap().unwrap();
    assert!(hint.contains("in frame data"), "{hint}");

    let client = reqwest::blocking::Client::new();
    let response = client.get(format!("{prefix}cat.jpg")).header("range", "bytes=0-2").send().unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(response.bytes().unwrap().as_ref(), b"\xff\xd8\xff");
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn refuses_a_missing_directory() {
    let out = Command::new(BIN).args(["serve-files", "/no/such/dir", "--port", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/dir"));
}
