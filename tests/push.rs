//! Push notifications: FCM end to end against a local fake of the v1 API and the OAuth2
//! token exchange, the push decision over real sockets, durability across a restart, and
//! two workers on one database sending each push once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Form, Json, Router};
use common::{spawn_app_with, test_config, Backend, TestApp};
use serde_json::{json, Value};

/// A fake FCM: `POST /token` (OAuth2 JWT bearer grant, assertion checked against the
/// service account's public key) and `POST /v1/projects/{project}/messages:send`.
#[derive(Clone, Default)]
struct Fake {
    public_pem: String,
    sent: Arc<Mutex<Vec<(String, Value)>>>,
    tokens_issued: Arc<Mutex<usize>>,
    /// Device token -> statuses to answer, in order (then 200).
    script: Arc<Mutex<HashMap<String, Vec<u16>>>>,
    /// When set, every send answers 503.
    down: Arc<Mutex<bool>>,
}

impl Fake {
    fn sends_to(&self, token: &str) -> Vec<Value> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m["message"]["token"] == token)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

async fn token(State(fake): State<Fake>, Form(form): Form<HashMap<String, String>>) -> (StatusCode, Json<Value>) {
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(fake.public_pem.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[form.get("aud").cloned().unwrap_or_default()]);
    validation.validate_aud = false;
    let ok = form.get("grant_type").map(String::as_str) == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        && form.get("assertion").is_some_and(|a| {
            jsonwebtoken::decode::<Value>(a, &key, &validation).is_ok_and(|d| {
                d.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
                    && d.claims["iss"] == "svc@demo.iam"
            })
        });
    if !ok {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"})));
    }
    let mut issued = fake.tokens_issued.lock().unwrap();
    *issued += 1;
    (
        StatusCode::OK,
        Json(json!({"access_token": format!("access-{issued}"), "expires_in": 3600, "token_type": "Bearer"})),
    )
}

async fn send(
    State(fake): State<Fake>,
    AxPath((project, method)): AxPath<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!((project.as_str(), method.as_str()), ("demo-proj", "messages:send"));
    if !auth.starts_with("Bearer access-") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"status": "UNAUTHENTICATED"}})),
        );
    }
    let token = body["message"]["token"].as_str().unwrap_or("").to_string();
    fake.sent.lock().unwrap().push((auth, body.clone()));
    if *fake.down.lock().unwrap() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"status": "UNAVAILABLE"}})),
        );
    }
    let status = fake
        .script
        .lock()
        .unwrap()
        .get_mut(&token)
        .and_then(|s| (!s.is_empty()).then(|| s.remove(0)))
        .unwrap_or(200);
    let body = match status {
        200 => json!({"name": format!("projects/demo-proj/messages/{}", fake.sent.lock().unwrap().len())}),
        404 => json!({"error": {"status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}),
        _ => json!({"error": {"status": "UNAVAILABLE"}}),
    };
    (StatusCode::from_u16(status).unwrap(), Json(body))
}

/// Starts the fake; returns it, its base URL, and the service account that matches it.
async fn fake_fcm(dir: &std::path::Path) -> (Fake, String, Value) {
    let key = dir.join("sa.pem");
    let run = |args: &[&str]| {
        assert!(std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl is installed")
            .success())
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    let public = dir.join("sa.pub");
    run(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let fake = Fake {
        public_pem: std::fs::read_to_string(&public).unwrap(),
        ..Fake::default()
    };
    let app = Router::new()
        .route("/token", post(token))
        .route("/v1/projects/:project/:method", post(send))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // As Google's key files have it: the token exchange goes to the operator's
    // `push.fcm_token_uri` (the fake's), never to a URI an app chose.
    let account = json!({
        "type": "service_account",
        "project_id": "demo-proj",
        "client_email": "svc@demo.iam",
        "private_key": std::fs::read_to_string(&key).unwrap(),
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    (fake, base, account)
}

async fn app_with_fake(backend: Backend, dir: &std::path::Path) -> (TestApp, Fake, chatd::Config) {
    let (fake, base, account) = fake_fcm(dir).await;
    let db = common::fresh_database(backend).await;
    let mut config = test_config(&db.url);
    config.push.fcm_token_uri = format!("{base}/token");
    config.push.fcm_endpoint = base;
    config.push.backoff_ms = 50;
    let t = spawn_app_with(config.clone(), db).await;
    let (status, body) = t
        .put(
            "/push/config",
            &t.app_token,
            json!({"fcm": {"service_account": account}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["data"]["fcm"].get("private_key").is_none(),
        "the key was shown back"
    );
    (t, fake, config)
}

/// Binds an FCM token to a user's device; the HTTP status.
async fn bind_fcm(t: &TestApp, token: &str, user: &str, device: &str, device_token: &str) -> u16 {
    let binding = json!({"device_id": device, "device_token": device_token, "notifier_name": "fcm"});
    t.put(&format!("/users/{user}/push/binding"), token, binding).await.0
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn fcm_end_to_end(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (t, fake, _) = app_with_fake(backend, dir.path()).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    // Bob has two Android devices; one's first push meets a 503.
    for (device, token) in [("bob-phone", "tok-a"), ("bob-tablet", "tok-retry")] {
        let (status, body) = t
            .put(
                "/users/bob/push/binding",
                &bob,
                json!({"device_id": device, "device_token": token, "notifier_name": "fcm"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    fake.script.lock().unwrap().insert("tok-retry".into(), vec![503]);
    assert_eq!(
        t.put(
            "/users/bob/push/binding",
            &bob,
            json!({"device_id": "x", "device_token": "t", "notifier_name": "gcm"})
        )
        .await
        .0,
        400
    );

    let mut alice_dev = t.device("alice", &alice, "a").await;
    alice_dev.send_text("m1", "bob", "hello bob").await;
    alice_dev.next_op("ack").await;
    wait_until("both pushes", || {
        fake.sends_to("tok-a").len() == 1 && fake.sends_to("tok-retry").len() == 2
    })
    .await;
    let push = &fake.sends_to("tok-a")[0]["message"];
    assert_eq!(
        (
            push["notification"]["title"].as_str(),
            push["notification"]["body"].as_str()
        ),
        (Some("alice"), Some("hello bob"))
    );
    assert_eq!(push["data"]["conv"], "u:alice:bob");
    assert_eq!(
        push["android"]["notification"]["notification_count"], 1,
        "badge = unread"
    );
    assert!(
        fake.sent
            .lock()
            .unwrap()
            .iter()
            .all(|(auth, _)| auth == "Bearer access-1"),
        "the access token is reused"
    );
    let (_, devices) = t.get("/users/bob/push/binding", &bob).await;
    wait_until("results recorded", || true).await;
    let results: Vec<String> = devices["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["last_result"].as_str().unwrap().to_string())
        .collect();
    assert!(
        results.iter().all(|r| r == "sent" || r.starts_with("retrying")),
        "{results:?}"
    );

    // A token FCM calls unregistered is removed.
    assert_eq!(bind_fcm(&t, &bob, "bob", "old-phone", "tok-dead").await, 200);
    fake.script.lock().unwrap().insert("tok-dead".into(), vec![404]);
    alice_dev.send_text("m2", "bob", "again").await;
    alice_dev.next_op("ack").await;
    wait_until("the dead token tried", || !fake.sends_to("tok-dead").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, devices) = t.get("/users/bob/push/binding", &bob).await;
    let ids: Vec<&str> = devices["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["bob-phone", "bob-tablet"],
        "the unregistered token is still bound"
    );
    assert_eq!(
        fake.sends_to("tok-a")[1]["message"]["android"]["notification"]["notification_count"],
        2
    );
    let (_, stats) = t.get("/push/stats", &t.app_token).await;
    assert!(
        stats["data"]["counters"]["fcm"]["sent"].as_u64().unwrap() >= 3,
        "{stats}"
    );

    // A self-destructing message's text never goes into a notification (which would outlive
    // the message on the device).
    alice_dev
        .publish(
            json!({"op": "send", "cid": "burn", "chat": "user", "to": "bob", "type": "txt",
            "body": {"msg": "burn this"}, "destroy": {"after": 60, "from": "read"}}),
        )
        .await;
    alice_dev.next_op("ack").await;
    wait_until("the self-destructing message's push", || {
        fake.sends_to("tok-a").len() == 3
    })
    .await;
    assert_eq!(
        fake.sends_to("tok-a")[2]["message"]["notification"]["body"],
        "[self-destructing message]"
    );
}

async fn push_decision(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (t, fake, _) = app_with_fake(backend, dir.path()).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    t.user("carol").await;
    assert_eq!(bind_fcm(&t, &t.app_token, "bob", "p", "tok-bob").await, 200);
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let sent = || fake.sends_to("tok-bob").len();
    let quiet = |ms| tokio::time::sleep(Duration::from_millis(ms));

    // Online: no push.
    let mut bob_dev = t.device("bob", &bob, "b").await;
    alice_dev.send_text("o1", "bob", "you are online").await;
    alice_dev.next_op("ack").await;
    bob_dev.next_op("msg").await;
    quiet(400).await;
    assert_eq!(sent(), 0, "pushed to an online user");
    drop(bob_dev);
    quiet(200).await;

    // Offline: pushed.
    alice_dev.send_text("o2", "bob", "now offline").await;
    alice_dev.next_op("ack").await;
    wait_until("a push", || sent() == 1).await;

    // Do-not-disturb (REST), quiet hours covering now, a muted conversation: no push.
    // (The decision is made just after delivery: each step waits for it before the next
    // change of settings.)
    assert_eq!(
        t.put("/users/bob/push/dnd", &bob, json!({"all_off": true})).await.0,
        200
    );
    alice_dev.send_text("d1", "bob", "dnd").await;
    alice_dev.next_op("ack").await;
    quiet(300).await;
    let minute = (store::now_ms() / 60_000) % 1440;
    let window = json!({"all_off": false, "quiet_start": (minute + 1439) % 1440, "quiet_end": (minute + 2) % 1440, "utc_offset_minutes": 0});
    assert_eq!(t.put("/users/bob/push/dnd", &bob, window).await.0, 200);
    alice_dev.send_text("d2", "bob", "quiet hours").await;
    alice_dev.next_op("ack").await;
    quiet(300).await;
    assert_eq!(t.put("/users/bob/push/dnd", &bob, json!({})).await.0, 200);
    assert_eq!(
        t.put(
            "/users/bob/push/mute",
            &bob,
            json!({"conv": "u:alice:bob", "muted": true})
        )
        .await
        .0,
        200
    );
    alice_dev.send_text("d3", "bob", "muted").await;
    alice_dev.next_op("ack").await;
    quiet(400).await;
    assert_eq!(sent(), 1, "pushed despite DND or mute");
    assert_eq!(
        t.put(
            "/users/bob/push/mute",
            &bob,
            json!({"conv": "u:alice:bob", "muted": false})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        t.put(
            "/users/bob/push/mute",
            &bob,
            json!({"conv": "u:nobody:bob", "muted": true})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        t.put("/users/bob/push/dnd", &bob, json!({"quiet_start": 5000})).await.0,
        400
    );

    // The badge counts everything unread; the template can hide previews.
    let template = json!({"template": {"show_preview": false, "hidden_body": "You have a new message"}});
    assert_eq!(
        t.put("/push/config", &t.app_token, json!({"template": template["template"]}))
            .await
            .0,
        200
    );
    alice_dev.send_text("b1", "bob", "secret").await;
    alice_dev.next_op("ack").await;
    wait_until("second push", || sent() == 2).await;
    let push = &fake.sends_to("tok-bob")[1]["message"];
    assert_eq!(push["notification"]["body"], "You have a new message");
    assert_eq!(
        push["android"]["notification"]["notification_count"], 6,
        "badge = bob's unread: {push}"
    );

    // Group messages push to offline members; chatrooms and cmd never do.
    let (_, created) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"name": "Hikers", "owner": "alice", "members": ["bob"]}),
        )
        .await;
    let gid = created["data"]["groupid"].as_str().unwrap().to_string();
    alice_dev.send_to("group", "g1", &gid, "group hello").await;
    alice_dev.next_op("ack").await;
    wait_until("group push", || sent() == 3).await;
    assert_eq!(fake.sends_to("tok-bob")[2]["message"]["data"]["chat"], "group");
    let (_, room) = t
        .post(
            "/chatrooms",
            Some(&t.app_token),
            json!({"name": "lobby", "owner": "alice", "members": ["bob"]}),
        )
        .await;
    let rid = room["data"]["id"].as_str().unwrap().to_string();
    alice_dev.send_to("room", "r1", &rid, "room hello").await;
    alice_dev.next_op("ack").await;
    alice_dev
        .publish(
            json!({"op": "send", "cid": "c1", "chat": "user", "to": "bob", "type": "cmd", "body": {"action": "ping"}}),
        )
        .await;
    alice_dev.next_op("ack").await;
    quiet(400).await;
    assert_eq!(sent(), 3, "a chatroom or cmd message was pushed");
}

/// Pushes queued while FCM is down survive a restart and go out afterwards.
async fn queued_pushes_survive_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (t, fake, mut config) = app_with_fake(backend, dir.path()).await;
    let alice = t.user("alice").await;
    t.user("bob").await;
    assert_eq!(bind_fcm(&t, &t.app_token, "bob", "p", "tok-bob").await, 200);
    *fake.down.lock().unwrap() = true;
    let mut alice_dev = t.device("alice", &alice, "a").await;
    alice_dev.send_text("q1", "bob", "while FCM is down").await;
    alice_dev.next_op("ack").await;
    wait_until("a failed attempt", || !fake.sends_to("tok-bob").is_empty()).await;
    drop(alice_dev);
    let store = t.server.store.clone();
    assert_eq!(store.queued_pushes().await.unwrap(), 1);
    let TestApp {
        server,
        database_url,
        _db: db,
        ..
    } = t;
    server.shutdown().await;

    *fake.down.lock().unwrap() = false;
    config.database_url = database_url;
    let again = chatd::start(config).await.unwrap();
    wait_until("the queued push", || {
        fake.sent
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m["message"]["notification"]["body"] == "while FCM is down")
            && fake.sends_to("tok-bob").len() >= 2
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while again.store.queued_pushes().await.unwrap() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(again.store.queued_pushes().await.unwrap(), 0);
    again.shutdown().await;
    drop(db);
}

/// Messages stored while no worker runs (or just before a crash) are recorded with their
/// batch, so the next worker to start still plans and sends their pushes: more batches than
/// one claim takes, planned together, each message pushed once.
async fn messages_stored_before_a_restart_still_push(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (fake, base, account) = fake_fcm(dir.path()).await;
    let db = common::fresh_database(backend).await;
    let mut config = test_config(&db.url);
    config.push.fcm_token_uri = format!("{base}/token");
    config.push.fcm_endpoint = base;
    config.push.worker = false;
    let t = spawn_app_with(config.clone(), db).await;
    assert_eq!(
        t.put(
            "/push/config",
            &t.app_token,
            json!({"fcm": {"service_account": account}})
        )
        .await
        .0,
        200
    );
    let alice = t.user("alice").await;
    t.user("bob").await;
    assert_eq!(bind_fcm(&t, &t.app_token, "bob", "p", "tok-bob").await, 200);
    assert_eq!(
        t.put("/settings", &t.app_token, json!({"send_rate_per_sec": 1000}))
            .await
            .0,
        200
    );
    let mut alice_dev = t.device("alice", &alice, "a").await;
    // One at a time, so each is a batch of its own: 70 batches, more than one claim takes.
    const SENT: usize = 70;
    for n in 0..SENT {
        alice_dev
            .send_text(&format!("s{n}"), "bob", &format!("stored before the restart {n}"))
            .await;
        alice_dev.next_op("ack").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.sends_to("tok-bob").is_empty(), "no worker, yet a push went out");
    drop(alice_dev);
    let TestApp {
        server,
        database_url,
        _db: db,
        ..
    } = t;
    server.shutdown().await;

    config.database_url = database_url;
    config.push.worker = true;
    let again = chatd::start(config).await.unwrap();
    wait_until("the pushes", || fake.sends_to("tok-bob").len() >= SENT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bodies: Vec<String> = fake
        .sends_to("tok-bob")
        .iter()
        .map(|m| m["message"]["notification"]["body"].as_str().unwrap().to_string())
        .collect();
    bodies.sort();
    let mut expected: Vec<String> = (0..SENT).map(|n| format!("stored before the restart {n}")).collect();
    expected.sort();
    assert_eq!(bodies, expected, "each message pushed once");
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM push_pending")
        .fetch_one(again.store.pool())
        .await
        .unwrap();
    assert_eq!(pending, 0, "every planned batch is finished");
    again.shutdown().await;
    drop(db);
}

/// Two workers draining one queue send each push exactly once.
async fn two_workers_never_send_twice(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (t, fake, config) = app_with_fake(backend, dir.path()).await;
    t.user("bob").await;
    assert_eq!(bind_fcm(&t, &t.app_token, "bob", "p", "tok-bob").await, 200);
    let app = t.server.store.find_app("demo", "chat").await.unwrap();
    for n in 0..100 {
        let payload = json!({"title": "t", "body": format!("n{n}"), "badge": 1, "data": {"n": n}});
        t.server.store.enqueue_pushes(&app.id, "bob", &payload).await.unwrap();
    }
    // A second worker with its own database pool, as another chatd process would have.
    let other_store = store::Store::connect(&t.database_url, 4).await.unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let settings = push::WorkerSettings {
        fcm_endpoint: config.push.fcm_endpoint.clone(),
        fcm_token_uri: config.push.fcm_token_uri.clone(),
        concurrency: 8,
        ..Default::default()
    };
    let live: Arc<dyn store::live::Live> = Arc::new(t.server.presence.clone());
    let second = tokio::spawn(push::Worker::new(other_store, live, settings).run(stop_rx));
    wait_until("all 100 pushes", || fake.sends_to("tok-bob").len() >= 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(true);
    let _ = second.await;
    let bodies: Vec<String> = fake
        .sends_to("tok-bob")
        .iter()
        .map(|m| m["message"]["notification"]["body"].as_str().unwrap().to_string())
        .collect();
    let mut unique = bodies.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (bodies.len(), unique.len()),
        (100, 100),
        "a push was sent twice or lost"
    );
}

/// A push still waiting (FCM failing) when its recipient comes online is dropped.
async fn coming_online_cancels_a_waiting_push(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (t, fake, _) = app_with_fake(backend, dir.path()).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    assert_eq!(bind_fcm(&t, &bob, "bob", "p", "tok-bob").await, 200);
    *fake.down.lock().unwrap() = true;
    let mut alice_dev = t.device("alice", &alice, "a").await;
    alice_dev.send_text("w1", "bob", "are you there?").await;
    alice_dev.next_op("ack").await;
    wait_until("a failed attempt", || !fake.sends_to("tok-bob").is_empty()).await;
    let bob_dev = t.device("bob", &bob, "b").await;
    *fake.down.lock().unwrap() = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while t.server.store.queued_pushes().await.unwrap() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempts = fake.sends_to("tok-bob").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.sends_to("tok-bob").len(), attempts);
    let (_, devices) = t.get("/users/bob/push/binding", &bob).await;
    assert_eq!(
        devices["entities"][0]["last_result"], "dropped: recipient came online",
        "{devices}"
    );
    drop(bob_dev);
}

/// Push preferences over MQTT, and the configuration's validation.
async fn mqtt_ops_and_config_validation(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (t, _fake, _) = app_with_fake(backend, dir.path()).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut alice_dev = t.device("alice", &alice, "a").await;
    alice_dev.send_text("m1", "bob", "hi").await;
    alice_dev.next_op("ack").await;

    let mut bob_dev = t.device("bob", &bob, "bob-iphone").await;
    bob_dev
        .publish(json!({"op": "push_bind", "cid": "p1", "device_token": "abcd", "notifier_name": "apns"}))
        .await;
    assert_eq!(bob_dev.next_op("ok").await["of"], "push_bind");
    let (_, devices) = t.get("/users/bob/push/binding", &bob).await;
    assert_eq!(
        (
            devices["entities"][0]["device_id"].as_str(),
            devices["entities"][0]["notifier_name"].as_str()
        ),
        (Some("bob-iphone"), Some("apns"))
    );
    bob_dev
        .publish(json!({"op": "dnd", "cid": "p2", "quiet_start": 1320, "quiet_end": 420, "utc_offset_minutes": 60}))
        .await;
    assert_eq!(bob_dev.next_op("ok").await["of"], "dnd");
    assert_eq!(t.get("/users/bob/push/dnd", &bob).await.1["data"]["quiet_start"], 1320);
    bob_dev
        .publish(json!({"op": "mute_conv", "cid": "p3", "conv": "u:alice:bob"}))
        .await;
    assert_eq!(bob_dev.next_op("ok").await["of"], "mute_conv");
    assert_eq!(
        t.get("/users/bob/push/mute", &bob).await.1["entities"],
        json!(["u:alice:bob"])
    );
    bob_dev
        .publish(json!({"op": "push_bind", "cid": "p4", "device_token": "x", "notifier_name": "carrier-pigeon"}))
        .await;
    assert_eq!(bob_dev.next_op("error").await["code"], "invalid");
    bob_dev
        .publish(json!({"op": "dnd", "cid": "p5", "quiet_start": 9999}))
        .await;
    assert_eq!(bob_dev.next_op("error").await["code"], "invalid");
    bob_dev.publish(json!({"op": "push_unbind", "cid": "p6"})).await;
    assert_eq!(bob_dev.next_op("ok").await["of"], "push_unbind");
    assert_eq!(t.get("/users/bob/push/binding", &bob).await.1["count"], 0);
    assert_eq!(t.get("/users/alice/push/binding", &bob).await.0, 403);

    // Credentials are checked before they are stored; secrets are never shown back.
    for bad in [
        json!({"fcm": {"service_account": {"project_id": "p", "client_email": "e", "private_key": "not a key"}}}),
        json!({"apns": {"key_pem": "not a key", "key_id": "K", "team_id": "T", "topic": "com.example"}}),
        json!({"template": {"colour": "red"}}),
    ] {
        let (status, body) = t.put("/push/config", &t.app_token, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
    }
    assert_eq!(t.put("/push/config", &alice, json!({})).await.0, 403);
    let (_, shown) = t.get("/push/config", &t.app_token).await;
    assert!(
        shown.to_string().contains("svc@demo.iam") && !shown.to_string().contains("PRIVATE KEY"),
        "{shown}"
    );
    assert_eq!(
        t.put("/push/config", &t.app_token, json!({"fcm": null})).await.1["data"]["fcm"],
        Value::Null
    );
}

/// `POST /push/single`: a notification from the backend, queued per bound device, each
/// target answered on its own; a user token may not send one.
async fn push_from_the_backend(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (t, fake, _) = app_with_fake(backend, dir.path()).await;
    let bob = t.user("bob").await;
    t.user("carol").await;
    let dora = t.user("dora").await;
    for (user, token) in [("bob", &bob), ("dora", &dora)] {
        let binding = json!({"device_id": format!("{user}-phone"), "device_token": format!("tok-{user}"), "notifier_name": "fcm"});
        assert_eq!(
            t.put(&format!("/users/{user}/push/binding"), token, binding).await.0,
            200
        );
    }
    assert_eq!(
        t.put("/users/dora/push/dnd", &dora, json!({"all_off": true})).await.0,
        200
    );
    // bob named twice: one push, one answer.
    let push = json!({"targets": ["bob", "carol", "dora", "ghost", "Bob"],
                      "pushMessage": {"title": "Sale", "subTitle": "x", "content": "50% off today", "ext": {"k": "v"}, "vivo": {}}});
    assert_eq!(t.post("/push/single", Some(&bob), push.clone()).await.0, 403);
    let (status, body) = t.post("/push/single", Some(&t.app_token), push).await;
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["pushStatus"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ASYNC_SUCCESS", "FAIL", "FAIL", "FAIL"], "{body}");
    assert_eq!(body["data"][1]["desc"], "no push binding");
    wait_until("the push", || fake.sends_to("tok-bob").len() == 1).await;
    let sent = &fake.sends_to("tok-bob")[0]["message"];
    assert_eq!(
        (
            sent["notification"]["title"].as_str(),
            sent["notification"]["body"].as_str()
        ),
        (Some("Sale"), Some("50% off today"))
    );
    assert_eq!(sent["data"]["k"], "v");
    assert!(fake.sends_to("tok-dora").is_empty(), "do-not-disturb was ignored");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(fake.sends_to("tok-bob").len(), 1, "bob was pushed twice");
    for bad in [
        json!({"targets": [], "pushMessage": {"title": "x"}}),
        json!({"targets": ["bob"], "pushMessage": {}}),
        json!({"targets": ["bob"], "pushMessage": {"title": "x".repeat(2000)}}),
    ] {
        assert_eq!(
            t.post("/push/single", Some(&t.app_token), bad.clone()).await.0,
            400,
            "{bad}"
        );
    }
}

/// The platform's notification settings decide pushes too: the app level (`NONE`, a quiet
/// window), a conversation's mode (`AT`: mentions only) and silences; each step ends with a
/// message that does push, so a silenced one would have been counted before it.
async fn notification_settings_decide_pushes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (t, fake, _) = app_with_fake(backend, dir.path()).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let carol = t.user("carol").await;
    assert_eq!(bind_fcm(&t, &t.app_token, "bob", "p", "tok-bob").await, 200);
    let (_, group) = t
        .post(
            "/chatgroups",
            Some(&alice),
            json!({"groupname": "g", "members": ["bob"]}),
        )
        .await;
    let gid = group["data"]["groupid"].as_str().unwrap().to_string();
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let bodies = || -> Vec<String> {
        fake.sends_to("tok-bob")
            .iter()
            .map(|m| m["message"]["notification"]["body"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let app_level = "/users/bob/notification/user/bob";
    assert_eq!(
        t.put(app_level, &carol, json!({"type": "NONE"})).await.0,
        403,
        "carol set bob's"
    );
    let (status, body) = t.put(app_level, &bob, json!({"type": "NONE"})).await;
    assert_eq!((status, &body["data"]), (200, &json!({"type": "NONE"})), "{body}");
    alice_dev.send_text("n1", "bob", "silenced by NONE").await;
    alice_dev.next_op("ack").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A quiet window covering now, in bob's time zone (UTC by default).
    let minute = (store::now_ms() / 60_000) % 1440;
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        (minute + 1439) % 1440 / 60,
        (minute + 1439) % 1440 % 60,
        (minute + 2) % 1440 / 60,
        (minute + 2) % 1440 % 60
    );
    let (_, body) = t
        .put(app_level, &bob, json!({"type": "ALL", "ignoreInterval": window}))
        .await;
    assert_eq!(body["data"]["ignoreInterval"], window.as_str());
    alice_dev.send_text("n2", "bob", "silenced by the window").await;
    alice_dev.next_op("ack").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    t.put(app_level, &bob, json!({"ignoreInterval": ""})).await;
    alice_dev.send_text("n3", "bob", "pushed").await;
    alice_dev.next_op("ack").await;
    wait_until("a push", || bodies().len() == 1).await;
    assert!(bodies()[0].contains("pushed"), "{:?}", bodies());

    // The group pushes only mentions of bob; the one-to-one conversation is silenced a while.
    let group_path = format!("/users/bob/notification/chatgroup/{gid}");
    assert_eq!(
        t.put(&group_path, &bob, json!({"type": "AT"})).await.1["data"]["type"],
        "AT"
    );
    alice_dev.send_to("group", "g1", &gid, "no mention").await;
    alice_dev.next_op("ack").await;
    alice_dev
        .publish(
            json!({"op": "send", "cid": "g2", "chat": "group", "to": gid, "type": "txt",
                        "body": {"msg": "hey bob"}, "ext": {"em_at_list": ["bob"]}}),
        )
        .await;
    alice_dev.next_op("ack").await;
    wait_until("the mention's push", || bodies().len() == 2).await;
    assert!(bodies()[1].contains("hey bob"), "{:?}", bodies());
    let chat_path = "/users/bob/notification/user/alice";
    let (_, body) = t.put(chat_path, &bob, json!({"ignoreDuration": 3_600_000})).await;
    assert!(
        body["data"]["ignoreDuration"].as_i64().unwrap() > store::now_ms(),
        "{body}"
    );
    alice_dev.send_text("n4", "bob", "silenced for an hour").await;
    alice_dev.next_op("ack").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    t.put(chat_path, &bob, json!({"ignoreDuration": 0})).await;
    alice_dev.send_text("n5", "bob", "back").await;
    alice_dev.next_op("ack").await;
    wait_until("the last push", || bodies().len() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bodies().len(), 3, "{:?}", bodies());
    assert!(bodies()[2].contains("back"), "{:?}", bodies());

    // Bad values name themselves.
    for bad in [
        json!({"type": "SOMETIMES"}),
        json!({"type": "DEFAULT"}),
        json!({"ignoreInterval": "25:00-01:00"}),
        json!({"ignoreDuration": 604_800_001}),
    ] {
        assert_eq!(t.put(app_level, &bob, bad.clone()).await.0, 400, "{bad}");
    }
    assert_eq!(
        t.put(chat_path, &bob, json!({"ignoreInterval": "01:00-02:00"})).await.0,
        400
    );
}

/// A batch is recorded for the push planner only for the apps in it that could push (a push
/// device bound) or tell a webhook: for any other app the planner would find nothing to do,
/// and its claim and delete would be two more commits per batch. The record of a batch that
/// mixes apps holds only those apps' messages, one row per app.
async fn only_apps_that_could_push_are_recorded_for_the_planner(backend: Backend) {
    let db = common::fresh_database(backend).await;
    let mut config = test_config(&db.url);
    config.push.worker = false;
    let t = spawn_app_with(config, db).await;
    let store = &t.server.store;
    let quiet = store.find_app(&t.org, &t.app).await.unwrap().id;
    let (pushing, _) = store.create_app("acme", "pushing").await.unwrap();
    let (hooked, _) = store.create_app("acme", "hooked").await.unwrap();
    let users = |names: &[&str]| -> Vec<store::users::NewUser> {
        names
            .iter()
            .map(|n| store::users::NewUser {
                username: n.to_string(),
                password: String::new(),
                nickname: None,
            })
            .collect()
    };
    for app in [&quiet, &pushing.id, &hooked.id] {
        store.create_users(app, &users(&["ann", "ben"])).await.unwrap();
    }
    let records = || async {
        let rows: Vec<String> = sqlx::query_scalar("SELECT messages FROM push_pending ORDER BY created_at, id")
            .fetch_all(store.pool())
            .await
            .unwrap();
        rows.iter()
            .map(|r| serde_json::from_str::<Vec<String>>(r).unwrap())
            .collect::<Vec<_>>()
    };
    let ids = |outcomes: &[store::messages::Outcome]| -> Vec<String> {
        outcomes
            .iter()
            .map(|o| match o {
                store::messages::Outcome::Stored { msg, .. } => msg.id.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let batch = |n: &str| {
        vec![
            common::text_message(&quiet, "ann", "ben", &format!("q{n}")),
            common::text_message(&pushing.id, "ann", "ben", &format!("p{n}")),
            common::text_message(&hooked.id, "ann", "ben", &format!("h{n}")),
        ]
    };

    // No app has a device or a webhook: nothing to plan.
    store.store_batch(&batch("1")).await.unwrap();
    assert!(records().await.is_empty(), "recorded for apps that cannot push");

    // One app binds a device, another adds a webhook: each gets a row of its own messages.
    store
        .bind_push(&pushing.id, "ben", "phone", store::push::Notifier::Fcm, "tok")
        .await
        .unwrap();
    store
        .create_webhook(&hooked.id, "https://hooks.example.com/in", &["message".to_string()])
        .await
        .unwrap();
    let woken = store.push_recorded();
    let outcomes = store.store_batch(&batch("2")).await.unwrap();
    let stored = ids(&outcomes);
    let mut found = records().await;
    found.sort();
    let mut expected = vec![vec![stored[1].clone()], vec![stored[2].clone()]];
    expected.sort();
    assert_eq!(
        found, expected,
        "one row per app that could push, with only its messages"
    );
    // The push worker is woken by the store itself.
    tokio::time::timeout(Duration::from_secs(1), woken.notified())
        .await
        .expect("the store did not wake the push worker");

    // A batch of only the quiet app's messages records nothing, and wakes no one.
    store
        .store_batch(&[common::text_message(&quiet, "ann", "ben", "q3")])
        .await
        .unwrap();
    assert_eq!(records().await.len(), 2);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), woken.notified())
            .await
            .is_err(),
        "woken for a batch with nothing to plan"
    );
}

on_both_backends!(
    only_apps_that_could_push_are_recorded_for_the_planner,
    notification_settings_decide_pushes,
    mqtt_ops_and_config_validation,
    fcm_end_to_end,
    push_from_the_backend,
    push_decision,
    queued_pushes_survive_restart,
    two_workers_never_send_twice,
    coming_online_cancels_a_waiting_push,
    messages_stored_before_a_restart_still_push,
);
