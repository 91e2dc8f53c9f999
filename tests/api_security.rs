//! The REST port against hostile callers, over real sockets: half-sent and slow requests,
//! more connections than allowed, password and client-secret guessing (throttling, timing,
//! argon2 memory), SSRF through the push configuration, tokens that outlive their user, and
//! what bad input is told.

mod common;

use std::time::{Duration, Instant};

use common::raw::Raw;
use common::{app_with, spawn_app, Backend, TestApp};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(t: &TestApp) -> TcpStream {
    TcpStream::connect(t.server.api_addr).await.unwrap()
}

/// Reads until the server closes the connection (or `limit` passes: a panic); returns
/// what arrived and when the close came.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open for {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

// --- A: the HTTP server's limits -----------------------------------------------------

/// Browsers: a page on an allowed origin gets its preflight answered and may read the
/// answers (tus's and ranged downloads' headers included); any other page may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_call_from_allowed_origins_only() {
    let t = app_with(Backend::Sqlite, |c| {
        c.api.cors_origins = "https://app.example.com".into();
        c.api.cors_allow_localhost = false;
    })
    .await;
    let preflight = |path: &str, origin: &str, method: &str| {
        t.http
            .request(reqwest::Method::OPTIONS, t.url(path))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header(
                "access-control-request-headers",
                "authorization, content-type, upload-offset",
            )
            .send()
    };
    let ok = preflight("/users", "https://app.example.com", "POST").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let headers = ok.headers();
    assert_eq!(headers["access-control-allow-origin"], "https://app.example.com");
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    // tus's PATCH from the page too (the tus OPTIONS route is not in the way).
    let tus = preflight("/chatfiles/uploads/x", "https://app.example.com", "PATCH")
        .await
        .unwrap();
    assert!(tus.status().is_success() && tus.headers().contains_key("access-control-allow-origin"));
    // A bare OPTIONS is not a preflight: tus's discovery reaches its route.
    let bare = t
        .http
        .request(reqwest::Method::OPTIONS, t.url("/chatfiles/uploads"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 204);
    assert_eq!(bare.headers()["tus-version"], "1.0.0");
    for origin in ["https://evil.example", "http://localhost:5173", "null"] {
        let refused = preflight("/users", origin, "POST").await.unwrap();
        assert!(
            !refused.headers().contains_key("access-control-allow-origin"),
            "{origin} was allowed"
        );
    }
    // A real request from the page: its answer is readable, in the envelope as ever.
    let resp = t
        .http
        .get(t.url("/users"))
        .header("origin", "https://app.example.com")
        .bearer_auth(&t.app_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example.com");
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    // tus's headers, and the id a finished upload became, are readable by the page.
    assert!(
        exposed.contains("upload-offset") && exposed.contains("chatfile-uuid"),
        "{exposed}"
    );
    let (status, body) = common::into_json(resp).await;
    assert_eq!((status, body["action"].as_str()), (200, Some("get")), "{body}");

    // The dev default: pages on localhost, any port.
    let dev = common::spawn_app(Backend::Sqlite).await;
    let resp = dev
        .http
        .get(dev.url("/users"))
        .header("origin", "http://localhost:5173")
        .bearer_auth(&dev.app_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "http://localhost:5173");
}

/// A deployment may cap token lifetimes: `"ttl": 0` (no expiry on the platform) and any
/// longer `ttl` then get the cap, by password, secret or `inherit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifetimes_are_capped_when_configured() {
    let t = app_with(Backend::Sqlite, |c| c.api.max_token_ttl_secs = 600).await;
    t.user("alice").await;
    let secret = |ttl: serde_json::Value| json!({"grant_type": "client_credentials", "client_id": t.client_id, "client_secret": t.client_secret, "ttl": ttl});
    for (ttl, expected) in [(json!(0), 600), (json!("86400"), 600), (json!(60), 60)] {
        let (status, body) = t.post("/token", None, secret(ttl.clone())).await;
        assert_eq!(
            (status, body["expires_in"].as_i64()),
            (200, Some(expected)),
            "{ttl}: {body}"
        );
    }
    let password = json!({"grant_type": "password", "username": "alice", "password": "pw", "ttl": 0});
    assert_eq!(t.post("/token", None, password).await.1["expires_in"], 600);
    let inherit = json!({"grant_type": "inherit", "username": "alice"});
    assert_eq!(
        t.post("/token", Some(&t.app_token), inherit).await.1["expires_in"],
        600,
        "the 7-day default was not capped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_header_is_cut_at_the_header_timeout() {
    let t = app_with(Backend::Sqlite, |c| c.api.header_timeout_ms = 400).await;
    // Half a header, then silence.
    let mut half = connect(&t).await;
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // A client that trickles a byte every 100 ms never completes its header either.
    let mut trickle = connect(&t).await;
    let trickler = tokio::spawn(async move {
        for b in b"GET /health HTTP/1.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if trickle.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        read_until_closed(&mut trickle, Duration::from_secs(5)).await
    });
    let (got, after) = read_until_closed(&mut half, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "answered half a header: {got}");
    assert!(
        after >= Duration::from_millis(300) && after < Duration::from_secs(3),
        "closed after {after:?}, header timeout 400 ms"
    );
    let (_, after) = trickler.await.unwrap();
    assert!(after < Duration::from_secs(5), "trickling client kept for {after:?}");
    // The server is fine for everyone else.
    let (status, body) = common::into_json(t.http.get(format!("{}/health", t.api)).send().await.unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let t = app_with(Backend::Sqlite, |c| {
        c.api.idle_timeout_ms = 300;
        c.api.header_timeout_ms = 5000;
    })
    .await;
    let mut conn = connect(&t).await;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Keep-alive, then nothing more: closed after the idle timeout, not the header one.
    let (_, after) = read_until_closed(&mut conn, Duration::from_secs(3)).await;
    assert!(after >= Duration::from_millis(200), "closed after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_is_cut_with_408() {
    let t = app_with(Backend::Sqlite, |c| c.api.request_timeout_ms = 500).await;
    let mut conn = connect(&t).await;
    let path = format!("/{}/{}/token", t.org, t.app);
    conn.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"grant_")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (got, after) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("request_timeout"), "{got}");
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_secs(3),
        "cut after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_until_some_close() {
    let t = app_with(Backend::Sqlite, |c| {
        c.api.max_connections = 4;
        c.api.header_timeout_ms = 30_000;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&t).await);
    }
    // Let the server take them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let mut extra = connect(&t).await;
        let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (got, _) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 503"),
            "a connection over the cap was served: {got}"
        );
        assert!(!got.contains("\"ok\""), "{got}");
    }
    drop(held);
    // Once they are gone, a normal request goes through.
    let mut status = 0;
    for _ in 0..40 {
        if let Ok(resp) = t.http.get(format!("{}/health", t.api)).send().await {
            status = resp.status().as_u16();
            if status == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_request_in_flight() {
    let t = spawn_app(Backend::Sqlite).await;
    let mut conn = connect(&t).await;
    let body = json!({"grant_type": "client_credentials", "client_id": t.client_id, "client_secret": t.client_secret})
        .to_string();
    let (head, tail) = body.split_at(10);
    conn.write_all(
        format!(
            "POST /{}/{}/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
            t.org,
            t.app,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = t.server.api_addr;
    let TestApp { server, _db, .. } = t;
    let client = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // No new connection is taken once shutting down...
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "a connection was accepted during shutdown"
        );
        // ...but the request under way is finished.
        conn.write_all(tail.as_bytes()).await.unwrap();
        read_until_closed(&mut conn, Duration::from_secs(5)).await.0
    };
    let ((), got) = tokio::join!(server.shutdown(), client);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("access_token"), "{got}");
    drop(_db);
}

// --- B: credentials -------------------------------------------------------------------

async fn login(t: &TestApp, user: &str, password: &str) -> (u16, Value, Option<String>) {
    let resp = t
        .http
        .post(t.url("/token"))
        .json(&json!({"grant_type": "password", "username": user, "password": password}))
        .send()
        .await
        .unwrap();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = common::into_json(resp).await;
    (status, body, retry_after)
}

async fn password_guessing_is_throttled(backend: Backend) {
    let t = app_with(backend, |c| {
        c.api.login_free_failures = 3;
        c.api.login_backoff_ms = 1000;
    })
    .await;
    t.user("alice").await;
    for _ in 0..3 {
        assert_eq!(login(&t, "alice", "wrong").await.0, 400);
    }
    // The right password, too soon: refused without being checked.
    let (status, body, retry_after) = login(&t, "alice", "pw").await;
    assert_eq!((status, body["error"].as_str()), (429, Some("reach_limit")), "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("retry in"),
        "{body}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    // After the backoff the right password works, and clears the count.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(login(&t, "alice", "pw").await.0, 200);
    for _ in 0..2 {
        assert_eq!(login(&t, "alice", "wrong").await.0, 400);
    }
    assert_eq!(
        login(&t, "alice", "pw").await.0,
        200,
        "a success did not reset the count"
    );

    // Twenty guesses at once: at most the free ones are checked.
    t.user("bob").await;
    let guesses = (0..20).map(|i| {
        let t = &t;
        async move { login(t, "bob", &format!("guess{i}")).await.0 }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let checked = statuses.iter().filter(|s| **s == 400).count();
    assert!(
        checked <= 3 && statuses.iter().all(|s| *s == 400 || *s == 429),
        "{statuses:?}"
    );
    // Another user is not affected.
    t.user("carol").await;
    assert_eq!(login(&t, "carol", "pw").await.0, 200);
}

async fn guessing_across_users_blocks_the_address(backend: Backend) {
    let t = app_with(backend, |c| {
        c.api.login_address_free_failures = 4;
        c.api.login_backoff_ms = 1000;
    })
    .await;
    t.user("dave").await;
    for user in ["u1", "u2", "u3", "u4"] {
        assert_eq!(login(&t, user, "guess").await.0, 400);
    }
    let (status, body, _) = login(&t, "dave", "pw").await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("address"),
        "{body}"
    );
}

async fn client_secret_guessing_is_throttled(backend: Backend) {
    let t = app_with(backend, |c| {
        c.api.login_free_failures = 3;
        c.api.login_backoff_ms = 1000;
    })
    .await;
    let grant =
        |secret: &str| json!({"grant_type": "client_credentials", "client_id": t.client_id, "client_secret": secret});
    for _ in 0..3 {
        assert_eq!(t.post("/token", None, grant("nope")).await.0, 400);
    }
    let (status, body) = t.post("/token", None, grant(&t.client_secret)).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("reach_limit")), "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(t.post("/token", None, grant(&t.client_secret)).await.0, 200);
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// An unknown username costs an argon2 verification like a known one: the answer's time
/// does not tell which usernames exist.
async fn unknown_user_takes_as_long_as_a_known_one(backend: Backend) {
    let t = app_with(backend, |c| {
        c.api.login_free_failures = 1000;
        c.api.login_address_free_failures = 1000;
    })
    .await;
    t.user("erin").await;
    // Warm up (connections, the dummy hash).
    login(&t, "erin", "wrong").await;
    login(&t, "nobody", "wrong").await;
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let started = Instant::now();
        assert_eq!(login(&t, "erin", "wrong").await.0, 400);
        known.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(login(&t, &format!("nobody{i}"), "wrong").await.0, 400);
        unknown.push(started.elapsed());
    }
    let (known, unknown) = (median(known), median(unknown));
    eprintln!("{backend:?}: median wrong password of a known user {known:?}, of an unknown user {unknown:?}");
    assert!(
        unknown.as_secs_f64() >= 0.5 * known.as_secs_f64(),
        "unknown user answered in {unknown:?}, known in {known:?}"
    );
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// 200 guessers at once: argon2 runs a few at a time (19 MiB each), so memory stays flat;
/// those that cannot get a turn in time are told 503, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guessers_are_bounded() {
    let t = app_with(Backend::Sqlite, |c| {
        c.api.login_free_failures = 1000;
        c.api.login_address_free_failures = 1000;
        c.api.hash_timeout_ms = 60_000;
    })
    .await;
    let base = resident_bytes();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(resident_bytes(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = Instant::now();
    let guesses = (0..200).map(|i| {
        let t = &t;
        async move { login(t, &format!("user{i}"), "guess").await.0 }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    sampler.abort();
    let grown = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(base);
    eprintln!(
        "200 parallel guesses: {:?}, resident memory grew by {} MiB at most",
        started.elapsed(),
        grown >> 20
    );
    assert!(statuses.iter().all(|s| *s == 400), "{statuses:?}");
    // Unbounded, 200 × 19 MiB would be 3.8 GiB; four at a time in reused memory is 76 MiB
    // (other tests of this file run meanwhile, hence the margin).
    assert!(grown < 400 << 20, "resident memory grew by {} MiB", grown >> 20);

    // With a timeout shorter than the queue, the late ones get 503.
    let t = app_with(Backend::Sqlite, |c| {
        c.api.login_free_failures = 1000;
        c.api.login_address_free_failures = 1000;
        c.api.hash_timeout_ms = 250;
    })
    .await;
    let guesses = (0..100).map(|i| {
        let t = &t;
        async move {
            let (status, body, retry_after) = login(t, &format!("user{i}"), "guess").await;
            if status == 503 {
                assert_eq!(body["error"], "service_unavailable", "{body}");
                assert!(retry_after.is_some());
            }
            status
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    assert!(statuses.iter().all(|s| *s == 400 || *s == 503), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
}

// --- C: push configuration and provider answers ----------------------------------------

/// A service-account key that parses (a fresh RSA key).
fn rsa_key(dir: &std::path::Path) -> String {
    let key = dir.join("sa.pem");
    assert!(std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out"
        ])
        .arg(&key)
        .status()
        .expect("openssl is installed")
        .success());
    std::fs::read_to_string(key).unwrap()
}

async fn tenant_cannot_choose_where_the_server_posts(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let t = spawn_app(backend).await;
    // An "internal service" the app would like the server to reach.
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal_uri = format!("http://{}/token", internal.local_addr().unwrap());
    let account = json!({
        "type": "service_account",
        "project_id": "p",
        "client_email": "svc@p.iam",
        "private_key": rsa_key(dir.path()),
        "token_uri": internal_uri,
    });
    let (status, body) = t
        .put(
            "/push/config",
            &t.app_token,
            json!({"fcm": {"service_account": account}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("fcm.service_account.token_uri"),
        "{body}"
    );
    // Google's own token_uri (what key files carry), or none, is accepted.
    let mut account = account;
    account["token_uri"] = json!("https://oauth2.googleapis.com/token");
    let (status, body) = t
        .put(
            "/push/config",
            &t.app_token,
            json!({"fcm": {"service_account": account}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    account.as_object_mut().unwrap().remove("token_uri");
    account["project_id"] = json!("../../admin");
    let (status, body) = t
        .put(
            "/push/config",
            &t.app_token,
            json!({"fcm": {"service_account": account}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), internal.accept())
            .await
            .is_err(),
        "the server connected to the tenant's address"
    );
}

const SECRET: &str = "SECRET-of-the-internal-service-4f2a";

/// A provider (the operator's endpoint) whose answers carry text that must not reach the
/// tenant: the token exchange succeeds, sends answer 403 with the secret in the body.
async fn fake_provider() -> String {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/token",
            post(|| async { axum::Json(json!({"access_token": "a", "expires_in": 3600})) }),
        )
        .route(
            "/v1/projects/:project/:method",
            post(|| async {
                (
                    axum::http::StatusCode::FORBIDDEN,
                    axum::Json(
                        json!({"error": {"status": SECRET, "message": SECRET, "details": [{"errorCode": SECRET}]}}),
                    ),
                )
            }),
        )
        .route(
            "/bad-token",
            post(|| async {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    format!("{{\"error\":\"{SECRET}\"}}"),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn provider_answers_never_reach_the_tenant(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let base = fake_provider().await;
    for token_uri in [format!("{base}/token"), format!("{base}/bad-token")] {
        let t = app_with(backend, |c| {
            c.push.fcm_endpoint = base.clone();
            c.push.fcm_token_uri = token_uri.clone();
            c.push.max_attempts = 1;
        })
        .await;
        let account = json!({"project_id": "p", "client_email": "svc@p.iam", "private_key": rsa_key(dir.path())});
        let (status, body) = t
            .put(
                "/push/config",
                &t.app_token,
                json!({"fcm": {"service_account": account}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        t.user("bob").await;
        let binding = json!({"device_id": "phone", "device_token": "tok", "notifier_name": "fcm"});
        assert_eq!(t.put("/users/bob/push/binding", &t.app_token, binding).await.0, 200);
        let (status, body) = t
            .post(
                "/messages/users",
                Some(&t.app_token),
                json!({"system": true, "to": ["bob"], "type": "txt", "body": {"msg": "hi"}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let mut result = String::new();
        for _ in 0..200 {
            let (_, devices) = t.get("/users/bob/push/binding", &t.app_token).await;
            result = devices["entities"][0]["last_result"].as_str().unwrap_or("").to_string();
            if result.starts_with("failed") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(result.starts_with("failed: "), "{result}");
        assert!(result.contains("403") || result.contains("400"), "{result}");
        for path in ["/users/bob/push/binding", "/push/stats", "/push/config"] {
            let (_, answer) = t.get(path, &t.app_token).await;
            assert!(
                !answer.to_string().contains(SECRET),
                "{path} showed the provider's answer: {answer}"
            );
        }
    }
}

// --- D: tokens bound to their user ------------------------------------------------------

async fn mqtt_connect(t: &TestApp, user: &str, token: &str) -> v4::ConnectReturnCode {
    Raw::tcp(t.mqtt_port()).await.connect4("dev", user, token, 30).await
}

async fn tokens_die_with_their_user(backend: Backend) {
    let t = spawn_app(backend).await;
    let old = t.user("frank").await;
    assert_eq!(t.get("/users/frank", &old).await.0, 200);
    assert_eq!(t.delete("/users/frank", &t.app_token).await.0, 200);
    // The same name again: a new user, whom the old token does not open.
    let new = t.user("frank").await;
    let (status, body) = t.get("/users/frank", &old).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        mqtt_connect(&t, "frank", &old).await,
        v4::ConnectReturnCode::NotAuthorized
    );
    assert_eq!(t.get("/users/frank", &new).await.0, 200);
    assert_eq!(mqtt_connect(&t, "frank", &new).await, v4::ConnectReturnCode::Success);
    // A token issued on the app's authority carries the generation too.
    let (status, body) = t
        .post(
            "/token",
            Some(&t.app_token),
            json!({"grant_type": "inherit", "username": "frank"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let inherited = body["access_token"].as_str().unwrap();
    assert_eq!(t.get("/users/frank", inherited).await.0, 200);
}

async fn revoking_tokens_disconnects_and_refuses(backend: Backend) {
    let t = spawn_app(backend).await;
    let grace = t.user("grace").await;
    let heidi = t.user("heidi").await;
    let mut device = Raw::tcp(t.mqtt_port()).await;
    assert_eq!(
        device.connect5("grace-phone", "grace", &grace, 30).await.code,
        v5::ConnectReturnCode::Success
    );
    // Neither a user token (her own included) nor another app's token may revoke.
    for token in [&grace, &heidi] {
        let (status, body) = t.post("/users/grace/revoke_tokens", Some(token), json!({})).await;
        assert_eq!(status, 403, "{body}");
        let (status, body) = t.get("/users/grace/disconnect", token).await;
        assert_eq!(status, 403, "{body}");
    }
    let (_, creds) = t.server.store.create_app("acme", "other").await.unwrap();
    let resp = t
        .http
        .post(format!("{}/acme/other/token", t.api))
        .json(&json!({"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}))
        .send()
        .await
        .unwrap();
    let other_app_token = common::into_json(resp).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = t
        .post("/users/grace/revoke_tokens", Some(&other_app_token), json!({}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(t.get("/users/grace/disconnect", &other_app_token).await.0, 401);
    assert_eq!(
        t.get("/users/grace", &grace).await.0,
        200,
        "refused calls revoked anyway"
    );

    // The app revokes: the device is disconnected, the token refused everywhere.
    let (status, body) = t
        .post("/users/grace/revoke_tokens", Some(&t.app_token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    match device.recv5().await {
        Some(v5::Packet::Disconnect(_)) | None => {}
        other => panic!("expected the device to be disconnected, got {other:?}"),
    }
    assert_eq!(t.get("/users/grace", &grace).await.0, 401);
    assert_eq!(
        mqtt_connect(&t, "grace", &grace).await,
        v4::ConnectReturnCode::NotAuthorized
    );
    // A fresh login works; heidi was never affected.
    let fresh = t.user_token("grace").await;
    assert_eq!(t.get("/users/grace", &fresh).await.0, 200);
    assert_eq!(t.get("/users/heidi", &heidi).await.0, 200);

    // Disconnect closes the connections but leaves the token valid.
    let mut device = Raw::tcp(t.mqtt_port()).await;
    assert_eq!(
        device.connect5("grace-phone", "grace", &fresh, 30).await.code,
        v5::ConnectReturnCode::Success
    );
    let (status, body) = t.get("/users/grace/disconnect", &t.app_token).await;
    assert_eq!(status, 200, "{body}");
    match device.recv5().await {
        Some(v5::Packet::Disconnect(_)) | None => {}
        other => panic!("expected the device to be disconnected, got {other:?}"),
    }
    assert_eq!(mqtt_connect(&t, "grace", &fresh).await, v4::ConnectReturnCode::Success);
    assert_eq!(t.get("/users/ghost/disconnect", &t.app_token).await.0, 404);
    assert_eq!(
        t.post("/users/ghost/revoke_tokens", Some(&t.app_token), json!({}))
            .await
            .0,
        404
    );
}

// --- E: what bad input is told -----------------------------------------------------------

async fn bad_input_names_the_field_and_the_media_type(backend: Backend) {
    let t = spawn_app(backend).await;
    // A body that is not JSON: 415, on JSON-only routes and on the token route.
    for path in ["/users", "/token"] {
        let resp = t
            .http
            .post(t.url(path))
            .bearer_auth(&t.app_token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("username=x&password=y")
            .send()
            .await
            .unwrap();
        let (status, body) = common::into_json(resp).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (415, Some("unsupported_media_type")),
            "{path}: {body}"
        );
    }
    let resp = t
        .http
        .post(t.url("/users"))
        .bearer_auth(&t.app_token)
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"username":"ivan","password":"pw"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "JSON with a charset was refused");

    // A wrong type in the body: the error names the field.
    let (status, body) = t.put("/settings", &t.app_token, json!({"room_history": "abc"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"groupname": "g", "owner": "ivan", "maxusers": "abc"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let text = body["error_description"].as_str().unwrap();
    assert!(
        text.starts_with("body.maxusers: invalid type: string \"abc\""),
        "{text}"
    );
    let (status, body) = t
        .put("/users/ivan/push/dnd", &t.app_token, json!({"all_off": "yes"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("body.all_off: "),
        "{body}"
    );
    // And in the query string.
    let (status, body) = t.get("/users?limit=abc", &t.app_token).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().starts_with("query.limit: "),
        "{body}"
    );
    // Too large a body: 413, in the API's error shape.
    let huge = "x".repeat(2 << 20);
    let (status, body) = t.put("/users/ivan", &t.app_token, json!({"nickname": huge})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("request_entity_too_large")),
        "{body}"
    );
}

on_both_backends!(
    password_guessing_is_throttled,
    guessing_across_users_blocks_the_address,
    client_secret_guessing_is_throttled,
    unknown_user_takes_as_long_as_a_known_one,
    tenant_cannot_choose_where_the_server_posts,
    provider_answers_never_reach_the_tenant,
    tokens_die_with_their_user,
    revoking_tokens_disconnects_and_refuses,
    bad_input_names_the_field_and_the_media_type,
);
