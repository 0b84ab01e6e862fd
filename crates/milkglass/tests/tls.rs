//! TLS on a real server with a real client (curl): a certificate from `milkglass tls self-signed`,
//! HTTPS only on the API port, HSTS, a renewed certificate served after SIGHUP, and clear start-up
//! errors for files that are not a certificate and its key. Flight SQL over TLS is driven by ADBC in
//! tests/python/test_tls.py.

mod common;

use common::{BIN, add_user, cli};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `milkglass serve` with TLS on free ports; returns the process and its https:// address.
fn serve_tls(data: &Path, certs: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir", data.to_str().unwrap(), "--http-addr", "127.0.0.1:0"])
        .args(["--flight-addr", "127.0.0.1:0", "--tls-cert", certs.join("cert.pem").to_str().unwrap()])
        .args(["--tls-key", certs.join("key.pem").to_str().unwrap()])
        .env("MILKGLASS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start milkglass serve");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("milkglass serving"), "{line}");
    assert!(line.contains("(Flight SQL on grpc+tls://"), "{line}");
    let base = line.split_whitespace().find(|w| w.starts_with("https://")).expect("https address").to_string();
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    (child, base)
}

/// curl's exit code and what it printed (headers and body with `-i`).
fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl").args(["-s", "-i", "--max-time", "20"]).args(args).output().expect("run curl");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn whoami(base: &str, token: &str, ca: &Path) -> (i32, String) {
    let auth = format!("Authorization: Bearer {token}");
    curl(&["--cacert", ca.to_str().unwrap(), "-H", &auth, &format!("{base}/api/whoami")])
}

#[test]
fn the_api_speaks_only_tls_with_the_given_certificate_and_takes_a_renewed_one_on_sighup() {
    let temp = tempfile::tempdir().unwrap();
    let (data, first, second) = (temp.path().join("data"), temp.path().join("first"), temp.path().join("second"));
    let said = cli(&["tls", "self-signed", "--out", first.to_str().unwrap()]);
    assert!(said.contains("cert.pem") && said.contains("localhost, 127.0.0.1"), "{said}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(first.join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is readable by its owner only");
    }
    cli(&["tls", "self-signed", "--out", second.to_str().unwrap()]);
    let token = add_user(&data, "admin", "admin");
    let served = temp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(first.join(f), served.join(f)).unwrap();
    }
    let (mut child, base) = serve_tls(&data, &served);

    let (code, answer) = whoami(&base, &token, &first.join("cert.pem"));
    assert_eq!(code, 0, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("strict-transport-security: max-age=31536000"), "{answer}");
    assert!(answer.contains("\"name\":\"admin\""), "{answer}");
    // Another certificate is not trusted in its place, and the system's authorities did not sign it.
    assert_eq!(whoami(&base, &token, &second.join("cert.pem")).0, 60);
    assert_eq!(curl(&[&format!("{base}/api/whoami")]).0, 60);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let (_, plain) = curl(&[&base.replace("https://", "http://")]);
    assert!(!plain.starts_with("HTTP/"), "{plain}");

    // A broken file on reload leaves the working certificate in place ...
    std::fs::write(served.join("cert.pem"), "not a certificate").unwrap();
    hangup(&child);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(whoami(&base, &token, &first.join("cert.pem")).0, 0, "a failed reload keeps the old certificate");
    // ... and a renewed one is served from the next connection on, without a restart.
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(second.join(f), served.join(f)).unwrap();
    }
    hangup(&child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while whoami(&base, &token, &second.join("cert.pem")).0 != 0 {
        assert!(Instant::now() < deadline, "the renewed certificate was not served after SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(whoami(&base, &token, &first.join("cert.pem")).0, 60, "the old certificate is gone");
    let _ = child.kill();
    let _ = child.wait();
}

fn hangup(child: &Child) {
    let status = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn files_that_are_not_a_certificate_and_its_key_stop_the_start_with_the_flag_named() {
    let temp = tempfile::tempdir().unwrap();
    let (a, b) = (temp.path().join("a"), temp.path().join("b"));
    cli(&["tls", "self-signed", "--out", a.to_str().unwrap()]);
    cli(&["tls", "self-signed", "--out", b.to_str().unwrap()]);
    let garbage = temp.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let start = |cert: &Path, key: &Path| {
        let out = Command::new(BIN)
            .args(["serve", "--data-dir", temp.path().join("data").to_str().unwrap(), "--http-addr", "127.0.0.1:0"])
            .args(["--flight-addr", "127.0.0.1:0", "--tls-cert", cert.to_str().unwrap(), "--tls-key"])
            .arg(key)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = start(&garbage, &a.join("key.pem"));
    assert!(e.contains("--tls-cert") && e.contains("garbage.pem"), "{e}");
    let e = start(&a.join("cert.pem"), &garbage);
    assert!(e.contains("--tls-key") && e.contains("garbage.pem"), "{e}");
    let e = start(&a.join("cert.pem"), &b.join("key.pem"));
    assert!(e.contains("does not belong to --tls-cert"), "{e}");
    let e = start(&a.join("cert.pem"), &temp.path().join("missing.pem"));
    assert!(e.contains("--tls-key") && e.contains("cannot read it"), "{e}");
    // One flag without the other is a usage error, not a plain-HTTP server.
    let out = Command::new(BIN)
        .args(["serve", "--data-dir", temp.path().join("data").to_str().unwrap(), "--tls-cert"])
        .arg(a.join("cert.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}
