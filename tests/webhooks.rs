//! Webhooks against a real HTTP receiver on a local port: every kind of event arrives,
//! signed; a receiver that is down (nothing listening) or failing gets the events later,
//! once it is back, after the endpoint was paused and probed; and an app cannot point a
//! webhook at the operator's network (names that resolve to it are refused when called:
//! `hooks/src/guard.rs` tests that).

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{app_with, spawn_app, Backend, TestApp};
use serde_json::{json, Value};

/// What the receiver got: headers and body of each request.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, Bytes, Value)>>>);

impl Received {
    fn events(&self) -> Vec<(HeaderMap, Bytes, Value)> {
        self.0.lock().unwrap().clone()
    }

    /// The distinct events (by id) of `kind`.
    fn of(&self, kind: &str) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.events()
            .into_iter()
            .map(|(_, _, body)| body)
            .filter(|b| b["type"] == kind && seen.insert(b["id"].as_str().unwrap().to_string()))
            .collect()
    }
}

/// A receiver on `port` (0: a free one) answering `status` (changeable while it runs);
/// answers its port and the task.
async fn receiver(port: u16, status: Arc<AtomicU16>, got: Received) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                move |State(got): State<Received>, headers: HeaderMap, body: Bytes| async move {
                    let value: Value = serde_json::from_slice(&body).unwrap();
                    got.0.lock().unwrap().push((headers, body, value));
                    StatusCode::from_u16(status.load(Ordering::Relaxed)).unwrap()
                },
            ),
        )
        .with_state(got);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, task)
}

async fn app(backend: Backend) -> TestApp {
    app_with(backend, |c| {
        c.webhooks.allow_http = true;
        c.webhooks.allow_private_networks = true;
        c.webhooks.backoff_ms = 100;
        c.webhooks.max_backoff_ms = 400;
        c.webhooks.pause_after = 3;
        c.webhooks.probe_every_ms = 300;
        c.webhooks.max_attempts = 1000;
    })
    .await
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check_signature(secret: &str, headers: &HeaderMap, raw: &[u8], body: &Value) {
    let timestamp: i64 = headers["x-chatd-timestamp"].to_str().unwrap().parse().unwrap();
    assert!((chrono_now() - timestamp).abs() < 120, "stale timestamp {timestamp}");
    let expected = hooks::signature(secret, timestamp, raw);
    assert_eq!(headers["x-chatd-signature"].to_str().unwrap(), expected);
    assert_eq!(
        headers["x-chatd-event-id"].to_str().unwrap(),
        body["id"].as_str().unwrap()
    );
    assert_eq!(
        headers["x-chatd-event"].to_str().unwrap(),
        body["type"].as_str().unwrap()
    );
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn every_kind_of_event_arrives_signed(backend: Backend) {
    let t = app(backend).await;
    let got = Received::default();
    let (port, _server) = receiver(0, Arc::new(AtomicU16::new(200)), got.clone()).await;
    let (status, body) = t
        .post(
            "/webhooks",
            Some(&t.app_token),
            json!({"url": format!("http://127.0.0.1:{port}/hook"),
                   "events": ["message", "recall", "edit", "group", "presence"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let secret = body["data"]["secret"].as_str().unwrap().to_string();
    assert_eq!(body["data"]["state"], "active");

    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut a = t.device("alice", &alice, "a1").await;
    let _b = t.device("bob", &bob, "b1").await;
    a.send_text("c1", "bob", "first").await;
    let first = a.next_op("ack").await["id"].as_str().unwrap().to_string();
    a.send_text("c2", "bob", "second").await;
    let second = a.next_op("ack").await["id"].as_str().unwrap().to_string();
    a.publish(json!({"op": "recall", "cid": "r1", "id": first})).await;
    a.next_op("recalled").await;
    a.publish(json!({"op": "edit", "cid": "e1", "id": second, "body": {"msg": "second, edited"}}))
        .await;
    a.next_op("edited").await;
    let (status, body) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"groupname": "hikers", "owner": "alice", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    until("every event", || {
        got.of("message").len() >= 2
            && got.of("recall").len() == 1
            && got.of("edit").len() == 1
            && !got.of("group").is_empty()
            && got.of("presence").len() >= 2
    })
    .await;
    for (headers, raw, body) in got.events() {
        check_signature(&secret, &headers, &raw, &body);
        assert_eq!(
            (body["org"].as_str(), body["app"].as_str()),
            (Some("demo"), Some("chat"))
        );
    }
    let messages = got.of("message");
    let texts: Vec<&str> = messages.iter().map(|m| m["data"]["from"].as_str().unwrap()).collect();
    assert_eq!(texts, ["alice", "alice"]);
    assert!(messages.iter().any(|m| m["data"]["id"] == second.as_str()));
    assert_eq!(got.of("recall")[0]["data"]["id"], first.as_str());
    assert_eq!(got.of("edit")[0]["data"]["body"]["msg"], "second, edited");
    let group = &got.of("group")[0]["data"];
    assert_eq!(
        (group["channel"].as_str(), group["event"].as_str()),
        (Some("group"), Some("joined"))
    );
    let online: Vec<String> = got
        .of("presence")
        .iter()
        .filter(|p| p["data"]["status"] == "online")
        .map(|p| p["data"]["user"].as_str().unwrap().to_string())
        .collect();
    assert!(
        online.contains(&"alice".to_string()) && online.contains(&"bob".to_string()),
        "{online:?}"
    );

    let (_, list) = t.get("/webhooks", &t.app_token).await;
    let hook = &list["data"][0];
    assert_eq!(
        (hook["state"].as_str(), hook["failures"].as_i64()),
        (Some("active"), Some(0)),
        "{list}"
    );
    assert!(hook["last_success_at"].as_i64().unwrap() > 0);
    assert!(hook.get("secret").is_none(), "the secret is shown once: {hook}");
}

async fn a_receiver_that_is_down_gets_the_events_when_it_is_back(backend: Backend) {
    let t = app(backend).await;
    // A port with nothing listening: the receiver is down.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let (status, body) = t
        .post(
            "/webhooks",
            Some(&t.app_token),
            json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["message"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let alice = t.user("alice").await;
    t.user("bob").await;
    let mut a = t.device("alice", &alice, "a1").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        a.send_text(&format!("c{i}"), "bob", "while you were out").await;
        sent.push(a.next_op("ack").await["id"].as_str().unwrap().to_string());
    }
    // It keeps failing: paused, the reason shown, the events waiting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let hook = loop {
        let (_, body) = t.get(&format!("/webhooks/{id}"), &t.app_token).await;
        if body["data"]["state"] == "paused" && body["data"]["queued"] == 5 {
            break body["data"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never paused: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hook["last_error"], "could not connect", "{hook}");
    assert!(hook["failures"].as_i64().unwrap() >= 3, "{hook}");

    // Back, first failing with 503, then answering: the probe resumes it, all five arrive.
    let got = Received::default();
    let status = Arc::new(AtomicU16::new(503));
    let (_, _server) = receiver(port, status.clone(), got.clone()).await;
    until("a probe", || !got.events().is_empty()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = t.get(&format!("/webhooks/{id}"), &t.app_token).await;
        if body["data"]["last_error"] == "HTTP 503" {
            assert_eq!(body["data"]["state"], "paused", "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status.store(200, Ordering::Relaxed);
    until("all five", || got.of("message").len() == 5).await;
    let mut ids: Vec<String> = got
        .of("message")
        .iter()
        .map(|m| m["data"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    sent.sort();
    assert_eq!(ids, sent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = t.get(&format!("/webhooks/{id}"), &t.app_token).await;
        if body["data"]["state"] == "active" && body["data"]["queued"] == 0 {
            assert_eq!(body["data"]["failures"], 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not settled: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn webhooks_cannot_reach_the_operators_network(backend: Backend) {
    // The defaults: https only, public addresses only.
    let t = spawn_app(backend).await;
    for url in [
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://10.0.0.8/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/x",
        "https://localhost/x",
        "https://user:pw@hooks.example.com/x",
        "file:///etc/passwd",
    ] {
        let (status, body) = t
            .post(
                "/webhooks",
                Some(&t.app_token),
                json!({"url": url, "events": ["message"]}),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(
            body["error_description"].as_str().unwrap().starts_with("url:"),
            "{body}"
        );
    }
    let (status, body) = t
        .post(
            "/webhooks",
            Some(&t.app_token),
            json!({"url": "https://hooks.example.com/x", "events": ["everything"]}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error_description"].as_str().unwrap().contains("events"), "{body}");
    let alice = t.user("alice").await;
    let (status, _) = t
        .post(
            "/webhooks",
            Some(&alice),
            json!({"url": "https://hooks.example.com/x", "events": ["message"]}),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(t.get("/webhooks", &alice).await.0, 403);

    // At most five per app.
    for i in 0..5 {
        let (status, body) = t
            .post(
                "/webhooks",
                Some(&t.app_token),
                json!({"url": format!("https://hooks{i}.example.com/x"), "events": ["message"]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = t
        .post(
            "/webhooks",
            Some(&t.app_token),
            json!({"url": "https://one-more.example.com/x", "events": ["message"]}),
        )
        .await;
    assert_eq!(status, 403);
    // Another app's token sees none of them, and cannot change or delete one.
    let (_, creds) = t.server.store.create_app("other", "chat").await.unwrap();
    let grant =
        json!({"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret});
    let answer: Value = t
        .http
        .post(format!("{}/other/chat/token", t.api))
        .json(&grant)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_token = answer["access_token"].as_str().unwrap().to_string();
    let (_, list) = t.get("/webhooks", &t.app_token).await;
    let mine = list["data"][0]["id"].as_str().unwrap().to_string();
    let url = list["data"][0]["url"].clone();
    let theirs = |method: reqwest::Method| {
        t.http
            .request(method, format!("{}/other/chat/webhooks/{mine}", t.api))
            .bearer_auth(&other_token)
            .json(&json!({"url": "https://evil.example.com/x"}))
            .send()
    };
    for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
        assert_eq!(theirs(method.clone()).await.unwrap().status(), 404, "{method}");
    }
    let listed: Value = t
        .http
        .get(format!("{}/other/chat/webhooks", t.api))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["count"], 0, "{listed}");
    // With its own token on this app's path: refused before anything is looked up.
    let foreign = t
        .http
        .get(format!("{}/{}/{}/webhooks/{mine}", t.api, t.org, t.app))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 401);
    assert_eq!(
        t.get(&format!("/webhooks/{mine}"), &t.app_token).await.1["data"]["url"],
        url
    );

    // Deleting one removes it.
    let (_, list) = t.get("/webhooks", &t.app_token).await;
    let id = list["data"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = t.delete(&format!("/webhooks/{id}"), &t.app_token).await;
    assert_eq!(status, 200);
    assert_eq!(t.get(&format!("/webhooks/{id}"), &t.app_token).await.0, 404);
    assert_eq!(t.get("/webhooks", &t.app_token).await.1["count"], 4);
}

on_both_backends!(
    every_kind_of_event_arrives_signed,
    a_receiver_that_is_down_gets_the_events_when_it_is_back,
    webhooks_cannot_reach_the_operators_network,
);
