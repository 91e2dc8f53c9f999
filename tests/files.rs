//! Files over REST: uploads (one-shot and resumable), downloads with ranges, thumbnails, who
//! may read what, limits, and the abuse a file service attracts (cut, stalled and slow
//! transfers, bombs). Each test runs on SQLite with the directory store and on PostgreSQL
//! with S3-compatible storage (a real S3 server: `TEST_S3_ENDPOINT`, which `scripts/test.sh`
//! starts; the tests fail without it). Files in messages are in `file_messages.rs`.

mod common;

use std::time::Duration;

use common::files::{files_app as app, png, random_bytes};
use common::{Backend, TestApp};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn upload_download_and_who_may_read(backend: Backend) {
    let t = app(backend, |_| {}).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let carol = t.user("carol").await;
    let image = png(800, 400);
    let file = t.uploaded(&alice, "../../photo.png", image.clone()).await;
    let url = file["url"].as_str().unwrap().to_string();
    let secret = file["share-secret"].as_str().unwrap().to_string();
    assert_eq!(file["type"], "chatfile");
    assert_eq!(file["content_type"], "image/png", "sniffed, not the claimed text/plain");
    assert_eq!(file["filename"], "photo.png");
    assert_eq!(file["file_length"], image.len());
    assert_eq!(file["size"], json!({"width": 800, "height": 400}));
    assert_eq!(url, t.url(&format!("/chatfiles/{}", file["uuid"].as_str().unwrap())));

    // The uploader reads it back, whole and in ranges, with validators.
    let (status, headers, body) = t.fetch(&url, Some(&alice), &[]).await;
    assert_eq!((status, body == image), (200, true));
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["accept-ranges"], "bytes");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let modified = headers["last-modified"].to_str().unwrap().to_string();
    let (status, headers, body) = t.fetch(&url, Some(&alice), &[("range", "bytes=10-19")]).await;
    assert_eq!((status, body.as_slice()), (206, &image[10..20]));
    assert_eq!(
        headers["content-range"],
        format!("bytes 10-19/{}", image.len()).as_str()
    );
    let (status, _, body) = t.fetch(&url, Some(&alice), &[("range", "bytes=-7")]).await;
    assert_eq!((status, body.as_slice()), (206, &image[image.len() - 7..]));
    let past = format!("bytes={}-", image.len());
    let (status, headers, _) = t.fetch(&url, Some(&alice), &[("range", &past)]).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{}", image.len()).as_str());
    assert_eq!(t.fetch(&url, Some(&alice), &[("if-none-match", &etag)]).await.0, 304);
    assert_eq!(
        t.fetch(&url, Some(&alice), &[("if-modified-since", &modified)]).await.0,
        304
    );
    // A stale If-Range gets the whole file, not a range of something else.
    let (status, _, body) = t
        .fetch(&url, Some(&alice), &[("range", "bytes=0-9"), ("if-range", "\"other\"")])
        .await;
    assert_eq!((status, body.len()), (200, image.len()));

    // The thumbnail: small, and a real image.
    let thumb_url = file["thumbnail"].as_str().unwrap();
    let (status, headers, thumb) = t.fetch(thumb_url, Some(&alice), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/jpeg");
    let decoded = image::load_from_memory(&thumb).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 160));

    // Nobody else without the secret; anyone with it (header, or query for an <img> tag).
    assert_eq!(t.fetch(&url, Some(&bob), &[]).await.0, 403);
    assert_eq!(t.fetch(&url, None, &[]).await.0, 401);
    assert_eq!(t.fetch(&url, None, &[("share-secret", "wrong")]).await.0, 403);
    let (status, _, body) = t.fetch(&url, None, &[("share-secret", &secret)]).await;
    assert_eq!((status, body == image), (200, true));
    let with_query = format!("{url}?share-secret={secret}");
    assert_eq!(t.fetch(&with_query, None, &[]).await.0, 200);
    assert_eq!(
        t.fetch(&url, Some(&t.app_token), &[]).await.0,
        200,
        "the app reads everything"
    );
    assert_eq!(t.fetch(&t.url("/chatfiles/not-a-uuid"), Some(&alice), &[]).await.0, 404);
    let unknown = t.url("/chatfiles/0192b7d3-0000-4000-8000-000000000001");
    assert_eq!(t.fetch(&unknown, Some(&alice), &[]).await.0, 404);

    // Sent in a message, the body is completed from the file's record, and the recipient
    // may now read it with their own token; a third user still may not.
    let mut alice_dev = t.device("alice", &alice, "alice-phone").await;
    let mut bob_dev = t.device("bob", &bob, "bob-phone").await;
    alice_dev
        .publish(json!({"op": "send", "cid": "i1", "chat": "user", "to": "bob", "type": "img", "body": {"url": url}}))
        .await;
    assert_eq!(alice_dev.next_op("ack").await["cid"], "i1");
    let msg = bob_dev.next_op("msg").await;
    assert_eq!(msg["body"]["file_length"], image.len());
    assert_eq!(msg["body"]["size"], json!({"width": 800, "height": 400}));
    assert_eq!(msg["body"]["secret"], secret.as_str());
    assert_eq!(msg["body"]["thumb"], thumb_url);
    assert_eq!(t.fetch(&url, Some(&bob), &[]).await.0, 200);
    assert_eq!(t.fetch(thumb_url, Some(&bob), &[]).await.0, 200);
    assert_eq!(t.fetch(&url, Some(&carol), &[]).await.0, 403);

    // A body cannot point devices elsewhere, nor at a file the sender may not read.
    let mut carol_dev = t.device("carol", &carol, "carol-phone").await;
    for (cid, body, why) in [
        (
            "e1",
            json!({"url": "https://evil.example/x.png"}),
            "does not allow external URLs",
        ),
        ("e2", json!({"url": url}), "no chatfile"),
        ("e3", json!({"url": unknown}), "no chatfile"),
    ] {
        carol_dev
            .publish(json!({"op": "send", "cid": cid, "chat": "user", "to": "bob", "type": "file", "body": body}))
            .await;
        let error = carol_dev.next_op("error").await;
        assert_eq!(
            (error["cid"].as_str(), error["code"].as_str()),
            (Some(cid), Some("invalid"))
        );
        assert!(error["message"].as_str().unwrap().contains(why), "{error}");
        assert!(error["message"].as_str().unwrap().contains("body.url"), "{error}");
    }
    // An img must be an image.
    let text = t.uploaded(&carol, "notes.txt", b"plain words".to_vec()).await;
    carol_dev
        .publish(json!({"op": "send", "cid": "e4", "chat": "user", "to": "bob", "type": "img", "body": {"url": text["url"]}}))
        .await;
    assert!(carol_dev.next_op("error").await["message"]
        .as_str()
        .unwrap()
        .contains("needs an image"));
    // An app that allows external URLs lets them through, unchecked.
    t.settings(json!({"allow_external_urls": true})).await;
    carol_dev
        .publish(json!({"op": "send", "cid": "e5", "chat": "user", "to": "bob", "type": "file", "body": {"url": "https://cdn.example/a.pdf"}}))
        .await;
    assert_eq!(carol_dev.next_op("ack").await["cid"], "e5");

    // The REST API's messages are checked the same way.
    let (status, body) = t
        .post(
            "/messages/users",
            Some(&t.app_token),
            json!({"from": "alice", "to": ["carol"], "type": "file", "body": {"url": text["url"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    t.settings(json!({"allow_external_urls": false})).await;
    let (status, body) = t
        .post(
            "/messages/users",
            Some(&t.app_token),
            json!({"from": "alice", "to": ["carol"], "type": "file", "body": {"url": "https://evil.example/x"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

async fn limits_types_quota_and_bombs(backend: Backend) {
    let t = app(backend, |_| {}).await;
    let alice = t.user("alice").await;
    let app_id = t.server.store.find_app(&t.org, &t.app).await.unwrap().id;

    // Larger than the API's body limit for JSON (1 MiB): files have their own.
    let big = random_bytes(3 * 1024 * 1024);
    let file = t.uploaded(&alice, "big.bin", big.clone()).await;
    assert_eq!(file["content_type"], "application/octet-stream");
    let (status, _, got) = t.fetch(file["url"].as_str().unwrap(), Some(&alice), &[]).await;
    assert_eq!((status, got == big), (200, true));
    let (status, body) = t.delete("/users/alice", &t.app_token).await;
    assert_eq!(status, 200, "{body}");
    let alice = t.user("alice").await;
    assert_eq!(
        t.fetch(file["url"].as_str().unwrap(), Some(&alice), &[]).await.0,
        403,
        "a new user of a deleted user's name does not inherit their files"
    );

    t.settings(json!({"max_file_bytes": 1000})).await;
    let (status, body) = t.upload(&alice, "big.bin", random_bytes(2000)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("max_file_bytes"),
        "{body}"
    );
    assert_eq!(
        t.server.store.file_usage(&app_id, "alice").await.unwrap(),
        0,
        "nothing kept"
    );

    t.settings(json!({"max_file_bytes": 100000, "file_quota_bytes": 2500}))
        .await;
    t.uploaded(&alice, "a.bin", random_bytes(1000)).await;
    t.uploaded(&alice, "b.bin", random_bytes(1000)).await;
    let (status, body) = t.upload(&alice, "c.bin", random_bytes(1000)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("quota"), "{body}");
    t.settings(json!({"file_quota_bytes": 100000000})).await;

    t.settings(json!({"allowed_file_types": ["image/*", "application/pdf"]}))
        .await;
    let (status, body) = t.upload(&alice, "x.zip", b"PK\x03\x04\x14\x00\x00\x00".to_vec()).await;
    assert_eq!(status, 415, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("application/zip"),
        "{body}"
    );
    t.uploaded(&alice, "doc.pdf", b"%PDF-1.7\n...".to_vec()).await;
    let (status, body) = t
        .put("/settings", &t.app_token, json!({"allowed_file_types": ["not a type"]}))
        .await;
    assert_eq!(status, 400, "{body}");
    t.settings(json!({"allowed_file_types": []})).await;

    // A PNG that claims 60,000 × 60,000 pixels is refused before it is decoded.
    let mut bomb = png(1, 1);
    bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let before = t.server.store.file_usage(&app_id, "alice").await.unwrap();
    let (status, body) = t.upload(&alice, "bomb.png", bomb).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("image cannot be used"),
        "{body}"
    );
    assert_eq!(t.server.store.file_usage(&app_id, "alice").await.unwrap(), before);

    // Markup is served as an attachment in a sandbox, never as a page on the API's origin.
    let page = t
        .uploaded(&alice, "page.html", b"<html><script>alert(1)</script></html>".to_vec())
        .await;
    let (status, headers, _) = t.fetch(page["url"].as_str().unwrap(), Some(&alice), &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    assert!(headers["content-security-policy"].to_str().unwrap().contains("sandbox"));

    // Bad requests name what is wrong.
    let resp = t
        .http
        .post(t.url("/chatfiles"))
        .bearer_auth(&alice)
        .json(&json!({"file": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let form = reqwest::multipart::Form::new().text("other", "x");
    let resp = t
        .http
        .post(t.url("/chatfiles"))
        .bearer_auth(&alice)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, body) = common::into_json(resp).await;
    assert_eq!(status, 400);
    assert!(body["error_description"].as_str().unwrap().contains("'file'"), "{body}");
    let resp = t.http.post(t.url("/chatfiles")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

/// PNG's chunk checksum.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Sends an HTTP request whose body is cut after `send` of its `length` bytes, then closes.
async fn cut_request(api: &str, head: &str, body: &[u8]) {
    let addr = api.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    // Let the server take what was sent before the connection goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
}

async fn tus(t: &TestApp, method: reqwest::Method, url: &str, token: &str) -> reqwest::RequestBuilder {
    t.http
        .request(method, url)
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
}

async fn resumable_upload_and_download_survive_cuts(backend: Backend) {
    let t = app(backend, |_| {}).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let data = random_bytes(3 * 1024 * 1024 + 123);

    let resp = t
        .http
        .request(reqwest::Method::OPTIONS, t.url("/chatfiles/uploads"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["tus-version"], "1.0.0");
    assert!(resp.headers()["tus-extension"].to_str().unwrap().contains("creation"));

    // Without the protocol's version: 412.
    let resp = t
        .http
        .post(t.url("/chatfiles/uploads"))
        .bearer_auth(&alice)
        .header("Upload-Length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 412);

    let resp = tus(&t, reqwest::Method::POST, &t.url("/chatfiles/uploads"), &alice)
        .await
        .header("Upload-Length", data.len().to_string())
        .header("Upload-Metadata", "filename dmlkZW8uYmlu")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&t.url("/chatfiles/uploads/")), "{location}");

    // The first PATCH is cut after 1 MiB: what arrived is kept.
    let path = location.trim_start_matches(&t.api);
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    cut_request(&t.api, &head, &data[..1024 * 1024]).await;
    let offset = {
        let mut offset = 0;
        for _ in 0..50 {
            let resp = tus(&t, reqwest::Method::HEAD, &location, &alice)
                .await
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["upload-length"], data.len().to_string().as_str());
            offset = resp.headers()["upload-offset"]
                .to_str()
                .unwrap()
                .parse::<usize>()
                .unwrap();
            if offset > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        offset
    };
    assert!(
        offset > 0 && offset <= 1024 * 1024,
        "resumes from what arrived: {offset}"
    );

    // Only the uploader may touch it; a PATCH from the wrong offset is refused.
    let resp = tus(&t, reqwest::Method::HEAD, &location, &bob)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = tus(&t, reqwest::Method::PATCH, &location, &alice)
        .await
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);

    // The rest, in two parts.
    let middle = offset + (data.len() - offset) / 2;
    for (from, to) in [(offset, middle), (middle, data.len())] {
        let resp = tus(&t, reqwest::Method::PATCH, &location, &alice)
            .await
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", from.to_string())
            .body(data[from..to].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(resp.headers()["upload-offset"], to.to_string().as_str());
        if to == data.len() {
            assert!(resp.headers().contains_key("chatfile-uuid"));
        }
    }
    let (status, body) = t.get(location.trim_start_matches(&t.url("")), &alice).await;
    assert_eq!(status, 200, "{body}");
    let file = body["entities"][0].clone();
    assert_eq!(file["filename"], "video.bin");
    assert_eq!(file["file_length"], data.len());
    let url = file["url"].as_str().unwrap().to_string();
    let (status, _, got) = t.fetch(&url, Some(&alice), &[]).await;
    assert_eq!((status, got.len(), got == data), (200, data.len(), true));

    // A download cut in the middle resumes with Range (and If-Range against a change).
    let (_, headers, _) = t.fetch(&url, Some(&alice), &[("range", "bytes=0-0")]).await;
    let etag = headers["etag"].to_str().unwrap().to_string();
    let addr = t.api.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let path = url.trim_start_matches(&t.api);
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < 1_500_000 {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the download ended early");
        got.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    let header_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut have = got[header_end..].to_vec();
    let resume = format!("bytes={}-", have.len());
    let (status, headers, rest) = t
        .fetch(&url, Some(&alice), &[("range", &resume), ("if-range", &etag)])
        .await;
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"],
        format!("bytes {}-{}/{}", have.len(), data.len() - 1, data.len()).as_str()
    );
    have.extend_from_slice(&rest);
    assert!(have == data, "the resumed download is the file");

    // Termination and the limits of resumable uploads.
    let resp = tus(&t, reqwest::Method::POST, &t.url("/chatfiles/uploads"), &alice)
        .await
        .header("Upload-Length", "100")
        .send()
        .await
        .unwrap();
    let second = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = tus(&t, reqwest::Method::PATCH, &second, &alice)
        .await
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .body(vec![1u8; 101])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "more than the declared length");
    let resp = tus(&t, reqwest::Method::DELETE, &second, &alice)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = tus(&t, reqwest::Method::HEAD, &second, &alice)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    t.settings(json!({"max_file_bytes": 1000})).await;
    let resp = tus(&t, reqwest::Method::POST, &t.url("/chatfiles/uploads"), &alice)
        .await
        .header("Upload-Length", "1001")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    t.settings(json!({"max_file_bytes": 100000})).await;
    for i in 0..21 {
        let resp = tus(&t, reqwest::Method::POST, &t.url("/chatfiles/uploads"), &alice)
            .await
            .header("Upload-Length", "10")
            .send()
            .await
            .unwrap();
        let expected = if i < 20 { 201 } else { 409 };
        assert_eq!(resp.status(), expected, "upload {i}");
    }
}

/// An upload that stops sending is dropped at the chunk timeout; meanwhile it holds one of
/// its user's transfer slots, and the server serves others.
async fn a_stalled_upload_is_dropped(backend: Backend) {
    let t = app(backend, |c| {
        c.files.chunk_timeout_secs = 1;
        c.files.max_transfers_per_user = 1;
    })
    .await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let addr = t.api.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let boundary = "XyZ";
    let head = format!(
        "POST /{}/{}/chatfiles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nsome bytes",
        t.org, t.app
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Alice has no transfer slot left; others are served meanwhile.
    let (status, body) = t.upload(&alice, "second.txt", b"hello".to_vec()).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("transfers at once"),
        "{body}"
    );
    t.uploaded(&bob, "other.txt", b"hello".to_vec()).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the stalled upload was not dropped");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408") || text.is_empty(), "{text}");
    assert!(started.elapsed() < Duration::from_secs(8));
    // The slot came back with the dropped upload.
    t.uploaded(&alice, "second.txt", b"hello".to_vec()).await;
}

/// A transfer is timed by the transfer timeout, not the API's (short) request timeout: a
/// slow upload that keeps sending completes.
async fn a_slow_upload_outlives_the_request_timeout(backend: Backend) {
    let t = app(backend, |c| c.api.request_timeout_ms = 1000).await;
    let alice = t.user("alice").await;
    let addr = t.api.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let boundary = "XyZ";
    let opening =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.txt\"\r\n\r\n");
    let closing = format!("\r\n--{boundary}--\r\n");
    let chunk = "slow but steady\n";
    let chunks = 8;
    let length = opening.len() + chunk.len() * chunks + closing.len();
    let head = format!(
        "POST /{}/{}/chatfiles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n{opening}",
        t.org, t.app
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..chunks {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(chunk.as_bytes()).await.unwrap();
    }
    stream.write_all(closing.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(started.elapsed() > Duration::from_secs(2));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"file_length\":128"), "{text}");
}

on_both_backends!(
    upload_download_and_who_may_read,
    limits_types_quota_and_bombs,
    resumable_upload_and_download_survive_cuts,
    a_stalled_upload_is_dropped,
    a_slow_upload_outlives_the_request_timeout,
);
