//! Pre-send moderation against a real endpoint on a local port: allow, reject (the sender
//! sees the reason, nothing is stored), replace (recipients get the new body); a slow
//! endpoint delays its own app only, and its timeout policy (fail open or closed) decides;
//! the settings are checked like any tenant URL.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{app_with, device_on, msg_texts, spawn_app, Backend, TestApp};
use serde_json::{json, Value};

const SECRET: &str = "moderation-secret-0123456789";

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<AtomicUsize>,
    messages: Arc<AtomicUsize>,
    bad_signatures: Arc<AtomicUsize>,
}

/// The app's moderation endpoint: rejects "spam", replaces "darn", takes 1.5 s over a
/// message that says "slow", allows the rest. Checks every request's signature.
async fn moderator(seen: Seen) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route(
            "/moderate",
            axum::routing::post(|State(seen): State<Seen>, headers: HeaderMap, body: Bytes| async move {
                seen.requests.fetch_add(1, Ordering::SeqCst);
                let timestamp: i64 = headers["x-chatd-timestamp"].to_str().unwrap().parse().unwrap();
                if headers["x-chatd-signature"].to_str().unwrap() != hooks::signature(SECRET, timestamp, &body) {
                    seen.bad_signatures.fetch_add(1, Ordering::SeqCst);
                    return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
                }
                let request: Value = serde_json::from_slice(&body).unwrap();
                let messages = request["messages"].as_array().unwrap();
                seen.messages.fetch_add(messages.len(), Ordering::SeqCst);
                let mut results = Vec::new();
                for m in messages {
                    let text = m["body"]["msg"].as_str().unwrap_or("");
                    if text.contains("slow") {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    results.push(if text.contains("spam") {
                        json!({"action": "reject", "reason": "no spam here"})
                    } else if text.contains("darn") {
                        json!({"action": "replace", "body": {"msg": text.replace("darn", "d**n")}})
                    } else {
                        json!({"action": "allow"})
                    });
                }
                (StatusCode::OK, axum::Json(json!({"results": results})))
            }),
        )
        .with_state(seen);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

async fn app(backend: Backend) -> TestApp {
    app_with(backend, |c| {
        c.webhooks.allow_http = true;
        c.webhooks.allow_private_networks = true;
    })
    .await
}

async fn moderate(t: &TestApp, port: u16, timeout_ms: i64, fail_open: bool) {
    let (status, body) = t
        .put(
            "/settings",
            &t.app_token,
            json!({"moderation_url": format!("http://127.0.0.1:{port}/moderate"), "moderation_secret": SECRET,
                   "moderation_timeout_ms": timeout_ms, "moderation_fail_open": fail_open}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn messages_are_allowed_rejected_or_replaced(backend: Backend) {
    let t = app(backend).await;
    let seen = Seen::default();
    let port = moderator(seen.clone()).await;
    moderate(&t, port, 2000, true).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut a = t.device("alice", &alice, "a1").await;
    let mut b = t.device("bob", &bob, "b1").await;
    a.send_text("c1", "bob", "hello").await;
    a.send_text("c2", "bob", "cheap spam here").await;
    a.send_text("c3", "bob", "darn it").await;
    let mut answers = Vec::new();
    while answers.len() < 3 {
        let op = a.wait_for(|p| matches!(p, rumqttc::Packet::Publish(_))).await;
        let rumqttc::Packet::Publish(p) = op else {
            unreachable!()
        };
        let v: Value = serde_json::from_slice(&p.payload).unwrap();
        if v["op"] == "ack" || v["op"] == "error" {
            answers.push(v);
        }
    }
    let by_cid = |cid: &str| answers.iter().find(|a| a["cid"] == cid).unwrap().clone();
    assert_eq!(by_cid("c1")["op"], "ack");
    assert_eq!(by_cid("c3")["op"], "ack");
    let refused = by_cid("c2");
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("moderated"))
    );
    assert_eq!(refused["message"], "no spam here");

    let first = b.next_op("msg").await;
    let second = b.next_op("msg").await;
    assert_eq!(first["body"]["msg"], "hello");
    assert_eq!(second["body"]["msg"], "d**n it");
    let (_, history) = t.get("/users/bob/conversations/user/alice/messages", &bob).await;
    assert_eq!(msg_texts(&history["entities"]), ["hello", "d**n it"]);
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(seen.messages.load(Ordering::SeqCst), 3);
    assert!(seen.requests.load(Ordering::SeqCst) <= 3);
}

/// A slow moderator holds its own app's messages, not another app's; past its timeout the
/// app's policy decides: fail closed refuses (retry with the same cid), fail open stores.
async fn a_slow_moderator_delays_only_its_own_app(backend: Backend) {
    let t = app(backend).await;
    let seen = Seen::default();
    let port = moderator(seen.clone()).await;
    moderate(&t, port, 3000, true).await;
    let alice = t.user("alice").await;
    t.user("bob").await;
    let mut a = t.device("alice", &alice, "a1").await;

    // Another app on the same server, without moderation.
    let (other, creds) = t.server.store.create_app("other", "chat").await.unwrap();
    let other_api = format!("{}/other/chat", t.api);
    let grant =
        json!({"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret});
    let answer: Value = t
        .http
        .post(format!("{other_api}/token"))
        .json(&grant)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app_token = answer["access_token"].as_str().unwrap().to_string();
    t.server
        .store
        .update_app_settings(&other.id, &json!({"send_rate_per_sec": 1e9, "send_burst": 1e9}))
        .await
        .unwrap();
    for name in ["carol", "dave"] {
        let created = t
            .http
            .post(format!("{other_api}/users"))
            .bearer_auth(&app_token)
            .json(&json!({"username": name, "password": "pw"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 200);
    }
    let grant = json!({"grant_type": "password", "username": "carol", "password": "pw"});
    let answer: Value = t
        .http
        .post(format!("{other_api}/token"))
        .json(&grant)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let carol_token = answer["access_token"].as_str().unwrap().to_string();
    let mut c = device_on(t.mqtt_port(), "other", "chat", "carol", &carol_token, "c1").await;

    // Alice's message waits 1.5 s at her app's moderator; carol's is stored meanwhile.
    a.send_text("slow-1", "bob", "a slow one").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send_text("fast-1", "dave", "not moderated").await;
    let carol_ack = c.next_op("ack").await;
    assert_eq!(carol_ack["cid"], "fast-1");
    assert_eq!(
        seen.messages.load(Ordering::SeqCst),
        1,
        "carol's app has no moderation; alice's message is still at the moderator"
    );
    let alice_ack = a.next_op("ack").await;
    assert_eq!(alice_ack["cid"], "slow-1");

    // Past the timeout, failing closed: refused, nothing stored.
    moderate(&t, port, 200, false).await;
    a.send_text("slow-2", "bob", "slow and refused").await;
    let refused = a.next_op("error").await;
    assert_eq!(
        (refused["cid"].as_str(), refused["code"].as_str()),
        (Some("slow-2"), Some("moderation_unavailable"))
    );
    // Failing open: stored as sent.
    moderate(&t, port, 200, true).await;
    a.send_text("slow-3", "bob", "slow but stored").await;
    assert_eq!(a.next_op("ack").await["cid"], "slow-3");
    let (_, history) = t.get("/users/alice/conversations/user/bob/messages", &alice).await;
    assert_eq!(msg_texts(&history["entities"]), ["a slow one", "slow but stored"]);
}

async fn moderation_settings_are_checked(backend: Backend) {
    // The defaults: tenant URLs must be public https addresses.
    let t = spawn_app(backend).await;
    for (patch, field) in [
        (
            json!({"moderation_url": "https://127.0.0.1/m", "moderation_secret": SECRET}),
            "moderation_url",
        ),
        (
            json!({"moderation_url": "http://mod.example.com/m", "moderation_secret": SECRET}),
            "moderation_url",
        ),
        (
            json!({"moderation_url": "https://mod.example.com/m"}),
            "moderation_secret",
        ),
        (
            json!({"moderation_url": "https://mod.example.com/m", "moderation_secret": "short"}),
            "moderation_secret",
        ),
        (json!({"moderation_timeout_ms": 10}), "moderation_timeout_ms"),
    ] {
        let (status, body) = t.put("/settings", &t.app_token, patch.clone()).await;
        assert_eq!(status, 400, "{patch}: {body}");
        assert!(
            body["error_description"].as_str().unwrap().contains(field),
            "{patch}: {body}"
        );
    }
    let (status, body) = t
        .put(
            "/settings",
            &t.app_token,
            json!({"moderation_url": "https://mod.example.com/m", "moderation_secret": SECRET}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The secret is never shown back.
    assert_eq!(body["data"]["moderation_secret"], "********", "{body}");
    let (_, read) = t.get("/settings", &t.app_token).await;
    assert_eq!(read["data"]["moderation_secret"], "********");
    // Settings read and sent back whole (the mask with them) keep the secret.
    let (status, body) = t.put("/settings", &t.app_token, read["data"].clone()).await;
    assert_eq!(status, 200, "{body}");
    let app = t.server.store.find_app(&t.org, &t.app).await.unwrap();
    assert_eq!(
        t.server.store.app_settings(&app.id).await.unwrap().moderation_secret,
        SECRET
    );
    let alice = t.user("alice").await;
    assert_eq!(t.put("/settings", &alice, json!({"moderation_url": ""})).await.0, 403);
}

on_both_backends!(
    messages_are_allowed_rejected_or_replaced,
    a_slow_moderator_delays_only_its_own_app,
    moderation_settings_are_checked,
);
