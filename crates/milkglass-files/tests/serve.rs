//! The file server on a real port. Traversal attempts go over a raw TCP connection, because HTTP
//! client libraries normalise `..` and `%2e%2e` away before sending.

use milkglass_files::{FileRoot, router};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Served {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("cats")).unwrap();
    std::fs::write(root.join("cats/a b.png"), (0..=255u8).collect::<Vec<u8>>()).unwrap();
    std::fs::write(root.join("notes.json"), b"{}").unwrap();
    std::fs::write(dir.path().join("secret.txt"), b"outside the root").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("escape.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        std::os::unix::fs::symlink(root.join("notes.json"), root.join("inside.json")).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(FileRoot::new(&root).unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Served { addr, _dir: dir }
}

/// Sends a request line exactly as written and returns the status code and the whole answer.
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

#[tokio::test]
async fn serves_files_with_content_type_cors_and_cache_headers() {
    let served = serve().await;
    let client = reqwest::Client::new();
    let response = client.get(format!("http://{}/cats/a%20b.png", served.addr)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert!(headers["cache-control"].to_str().unwrap().contains("max-age"));
    assert!(headers.contains_key("last-modified"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(response.bytes().await.unwrap().len(), 256);

    let json = client.get(format!("http://{}/notes.json", served.addr)).send().await.unwrap();
    assert_eq!(json.headers()["content-type"], "application/json");

    // The ETag makes revalidation cheap.
    let etag = headers["etag"].clone();
    let again = client
        .get(format!("http://{}/cats/a%20b.png", served.addr))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    let head = client.head(format!("http://{}/cats/a%20b.png", served.addr)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "256");
}

#[tokio::test]
async fn answers_cors_preflight() {
    let served = serve().await;
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("http://{}/cats/a%20b.png", served.addr))
        .header("origin", "http://localhost:7700")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(response.headers()["access-control-allow-methods"].to_str().unwrap().contains("GET"));
    assert_eq!(response.headers()["access-control-allow-headers"], "range");
}

#[tokio::test]
async fn serves_byte_ranges() {
    let served = serve().await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/cats/a%20b.png", served.addr);
    let part = client.get(&url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/256");
    assert_eq!(part.headers()["content-length"], "10");
    assert_eq!(part.bytes().await.unwrap().to_vec(), (10..20u8).collect::<Vec<u8>>());

    let tail = client.get(&url).header("range", "bytes=-6").send().await.unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap().to_vec(), (250..=255u8).collect::<Vec<u8>>());

    let past = client.get(&url).header("range", "bytes=256-").send().await.unwrap();
    assert_eq!(past.status(), 416);
    assert_eq!(past.headers()["content-range"], "bytes */256");

    let several = client.get(&url).header("range", "bytes=0-1,4-5").send().await.unwrap();
    assert_eq!(several.status(), 200, "several ranges are answered with the whole file");
}

#[tokio::test]
async fn refuses_every_way_out_of_the_directory() {
    let served = serve().await;
    for target in [
        "/../secret.txt",
        "/cats/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/cats%2f..%2f..%2fsecret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/escape.txt",
        "/up/secret.txt",
    ] {
        let (status, answer) = raw_get(served.addr, target).await;
        assert!((400..500).contains(&status), "{target}: {status}");
        assert!(!answer.contains("outside the root"), "{target} leaked the file");
        assert!(!answer.contains("root:"), "{target} leaked /etc/passwd");
    }
    let (status, _) = raw_get(served.addr, "/inside.json").await;
    assert_eq!(status, 200, "a symlink that stays inside is served");
    let (status, _) = raw_get(served.addr, "/cats").await;
    assert_eq!(status, 404, "directories are not listed");
    let (status, _) = raw_get(served.addr, "/missing.png").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn refuses_writes() {
    let served = serve().await;
    let response =
        reqwest::Client::new().put(format!("http://{}/notes.json", served.addr)).body("x").send().await.unwrap();
    assert_eq!(response.status(), 405);
}
