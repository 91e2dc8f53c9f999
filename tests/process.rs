//! The `chatd` binary as a real process: first start prints the dev app's credentials,
//! every acked message survives `kill -9`, SIGTERM stores and answers what is in flight
//! and exits 0, and several processes may start at once on one empty database.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::binary::Chatd;
use common::Backend;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

/// Starts the binary on free ports and reads its banner. These tests stream thousands of
/// messages from one device as fast as acks come: far past a person's send budget, as they
/// are past the app's send rate.
async fn start_chatd(database_url: &str, data_dir: &std::path::Path) -> Chatd {
    let lifted = [
        ("CHATD_MQTT__BUDGETS__SEND__PER_SEC", "1000000".to_string()),
        ("CHATD_MQTT__BUDGETS__SEND__BURST", "1000000".to_string()),
    ];
    common::binary::start_chatd(database_url, data_dir, &lifted).await
}

async fn fetch_app_token(http: &reqwest::Client, base: &str, client_id: &str, client_secret: &str) -> String {
    let grant = json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret});
    post(http, format!("{base}/token"), None, grant).await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let (status, body) = common::into_json(req.send().await.unwrap()).await;
    assert!(status < 300, "{status} {body}");
    body
}

/// What a first start gives a test: the dev app's credentials from the banner, with its
/// send rate lifted, and users alice and bob (password "pw") with a token for alice.
struct Chatters {
    client_id: String,
    client_secret: String,
    alice: String,
}

async fn alice_and_bob(chatd: &Chatd, http: &reqwest::Client) -> Chatters {
    let banner = chatd.lines.join("\n");
    assert!(banner.contains("Created the dev app demo/chat"), "{banner}");
    let field = |name: &str| chatd.banner(name);
    let (client_id, client_secret) = (field("client_id:"), field("client_secret:"));
    let base = format!("{}/demo/chat", chatd.api);
    let app_token = fetch_app_token(http, &base, &client_id, &client_secret).await;
    let resp = http
        .put(format!("{base}/settings"))
        .bearer_auth(&app_token)
        .json(&json!({"send_rate_per_sec": 1e9, "send_burst": 1e9}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    post(
        http,
        format!("{base}/users"),
        Some(&app_token),
        json!([{"username": "alice", "password": "pw"}, {"username": "bob", "password": "pw"}]),
    )
    .await;
    let alice = post(
        http,
        format!("{base}/token"),
        None,
        json!({"grant_type": "password", "username": "alice", "password": "pw"}),
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    Chatters {
        client_id,
        client_secret,
        alice,
    }
}

async fn acked_messages_survive_kill_9(backend: Backend) {
    let db = common::fresh_database(backend).await;
    let url = db.url.clone();
    let data_dir = tempfile::tempdir().unwrap();
    let mut chatd = start_chatd(&url, data_dir.path()).await;
    let http = reqwest::Client::new();
    let Chatters {
        client_id,
        client_secret,
        alice,
    } = alice_and_bob(&chatd, &http).await;

    // Alice streams messages; the server is killed while acks are still arriving.
    let mut options = MqttOptions::new("alice-phone", "127.0.0.1", chatd.mqtt_port);
    options.set_credentials("alice", &alice);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    client
        .subscribe("chat/demo/chat/u/alice/in", QoS::AtLeastOnce)
        .await
        .unwrap();
    let sender = client.clone();
    tokio::spawn(async move {
        for i in 0..2000 {
            let envelope = json!({"op": "send", "cid": format!("k{i}"), "chat": "user", "to": "bob", "type": "txt", "body": {"msg": format!("m{i}")}});
            if sender
                .publish(
                    "chat/demo/chat/u/alice/out",
                    QoS::AtLeastOnce,
                    false,
                    envelope.to_string(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = HashSet::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), eventloop.poll())
            .await
            .expect("acks keep coming")
        {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let v: Value = serde_json::from_slice(&p.payload).unwrap();
                if v["op"] == "ack" {
                    acked.insert(v["cid"].as_str().unwrap().to_string());
                }
            }
            Ok(_) => {}
            Err(e) => panic!("connection failed before the kill: {e}"),
        }
        if acked.len() >= 300 {
            break;
        }
    }
    // SIGKILL: no shutdown code runs.
    chatd.child.start_kill().unwrap();
    chatd.child.wait().await.unwrap();
    // Acks already on the wire are acks too.
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = event {
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            if v["op"] == "ack" {
                acked.insert(v["cid"].as_str().unwrap().to_string());
            }
        }
    }

    // Restarted on the same database: every acked message is there, seqs have no gaps.
    let chatd = start_chatd(&url, data_dir.path()).await;
    assert!(
        !chatd.lines.join("\n").contains("Created the dev app"),
        "dev app created twice"
    );
    let base = format!("{}/demo/chat", chatd.api);
    let app_token = fetch_app_token(&http, &base, &client_id, &client_secret).await;
    let mut stored = Vec::new();
    let mut from_seq = 1;
    loop {
        let resp = http
            .get(format!(
                "{base}/users/bob/conversations/user/alice/messages?from_seq={from_seq}&limit=200"
            ))
            .bearer_auth(&app_token)
            .send()
            .await
            .unwrap();
        let (status, page) = common::into_json(resp).await;
        assert_eq!(status, 200, "{page}");
        let entities = page["entities"].as_array().unwrap().clone();
        if entities.is_empty() {
            break;
        }
        from_seq = entities.last().unwrap()["seq"].as_i64().unwrap() + 1;
        stored.extend(entities);
    }
    let seqs: Vec<i64> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gaps in seq");
    let stored_texts: HashSet<String> = stored
        .iter()
        .map(|m| m["body"]["msg"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = acked
        .iter()
        .filter(|cid| !stored_texts.contains(&format!("m{}", &cid[1..])))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acked messages lost after kill -9: {missing:?}",
        missing.len()
    );
    assert!(acked.len() >= 300);
    drop(chatd);
    drop(db);
}

/// `chatd app create` and `chatd app rotate-secret`: what an operator runs.
async fn operator_manages_apps_from_the_command_line(backend: Backend) {
    let db = common::fresh_database(backend).await;
    let data_dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("CHATD_DATA_DIR", data_dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        (
            output.status.success(),
            stdout,
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let credential = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap()
    };
    let (ok, created, err) = cli(&["app", "create", "--org", "acme", "--app", "support"]);
    assert!(ok, "{err}");
    let (id, secret) = (
        credential(&created, "client_id:"),
        credential(&created, "client_secret:"),
    );
    let (ok, _, err) = cli(&["app", "create", "--org", "acme", "--app", "support"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = cli(&["app", "create", "--org", "Bad Org", "--app", "x"]);
    assert!(!ok && err.contains("org"), "{err}");
    let (ok, listed, _) = cli(&["app", "list"]);
    assert!(ok && listed.contains("acme/support"), "{listed}");
    // A misspelt setting is refused, by name, rather than ignored.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["app", "list"])
        .env("DATABASE_URL", &db.url)
        .env("CHATD_MQTT__TPC", "0.0.0.0:1883")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("tpc"), "{err}");

    let chatd = start_chatd(&db.url, data_dir.path()).await;
    assert!(
        !chatd.lines.join("\n").contains("Created the dev app"),
        "dev app created although an app exists"
    );
    let http = reqwest::Client::new();
    let token_url = format!("{}/acme/support/token", chatd.api);
    let grant = |secret: &str| json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret});
    let token = post(&http, token_url.clone(), None, grant(&secret)).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let users = format!("{}/acme/support/users", chatd.api);
    assert_eq!(http.get(&users).bearer_auth(&token).send().await.unwrap().status(), 200);

    let (ok, rotated, err) = cli(&["app", "rotate-secret", "--org", "acme", "--app", "support"]);
    assert!(ok, "{err}");
    let new_secret = credential(&rotated, "client_secret:");
    assert_ne!(new_secret, secret);
    assert_eq!(
        http.get(&users).bearer_auth(&token).send().await.unwrap().status(),
        401,
        "old app token still works"
    );
    let resp = http.post(&token_url).json(&grant(&secret)).send().await.unwrap();
    assert_eq!(resp.status(), 400, "old secret still works");
    post(&http, token_url, None, grant(&new_secret)).await;
}

/// SIGTERM (what `docker stop` and systemd send): the server stops reading, stores and
/// acks everything a device had handed over, tells the MQTT 5 device it is shutting down
/// (0x8B), and exits 0. Every publish the gate PUBACKed got its `ack` before that, and is
/// stored.
async fn sigterm_stores_and_answers_what_is_in_flight(backend: Backend) {
    use bytes::BytesMut;
    use common::raw::Raw;
    use rumqttc::v5::mqttbytes::v5;

    let db = common::fresh_database(backend).await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut chatd = start_chatd(&db.url, data_dir.path()).await;
    let http = reqwest::Client::new();
    let alice = alice_and_bob(&chatd, &http).await.alice;

    let mut raw = Raw::tcp(chatd.mqtt_port).await;
    let ack = raw.connect5("alice-phone", "alice", &alice, 30).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let subscribe = v5::Subscribe::new(
        v5::Filter::new("chat/demo/chat/u/alice/in", rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
        None,
    );
    raw.send5(v5::Packet::Subscribe(subscribe)).await;
    raw.next5_where(|p| matches!(p, v5::Packet::SubAck(_)).then_some(()))
        .await;

    // 400 sends in one write (within the device's send budget), then SIGTERM as soon as the
    // first acks come back, while most are still in flight.
    const SENDS: u16 = 400;
    let mut bytes = BytesMut::new();
    for pkid in 1..=SENDS {
        let envelope = json!({"op": "send", "cid": format!("c{pkid}"), "chat": "user", "to": "bob", "type": "txt", "body": {"msg": format!("m{pkid}")}});
        let mut publish = v5::Publish::new(
            "chat/demo/chat/u/alice/out",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            envelope.to_string(),
            None,
        );
        publish.pkid = pkid;
        v5::Packet::Publish(publish).write(&mut bytes, None).unwrap();
    }
    raw.write(&bytes).await;
    let mut pubacked: HashSet<u16> = HashSet::new();
    let mut acked: HashSet<String> = HashSet::new();
    let mut signalled = false;
    let disconnect = loop {
        match raw.recv5().await {
            Some(v5::Packet::PubAck(a)) => {
                assert_eq!(a.reason, v5::PubAckReason::Success);
                pubacked.insert(a.pkid);
            }
            Some(v5::Packet::Publish(p)) => {
                // Once stopping, the server no longer reads (and may have closed its side).
                if !signalled {
                    raw.send5(v5::Packet::PubAck(v5::PubAck::new(p.pkid, None))).await;
                }
                let v: Value = serde_json::from_slice(&p.payload).unwrap();
                assert_ne!(v["op"], "error", "{v}");
                if v["op"] == "ack" {
                    acked.insert(v["cid"].as_str().unwrap().to_string());
                }
            }
            Some(v5::Packet::Disconnect(d)) => break Some(d.reason_code),
            Some(_) => {}
            None => break None,
        }
        if !signalled && !acked.is_empty() {
            // SAFETY: kill only sends a signal to the child we started.
            let pid = chatd.child.id().unwrap() as i32;
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            signalled = true;
        }
    };
    assert!(signalled, "no ack came back before the connection closed");
    assert_eq!(
        disconnect,
        Some(v5::DisconnectReasonCode::ServerShuttingDown),
        "an MQTT 5 device is told the server is shutting down"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), chatd.child.wait())
        .await
        .expect("chatd exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop: {status:?}");
    let unanswered: Vec<u16> = pubacked
        .iter()
        .copied()
        .filter(|pkid| !acked.contains(&format!("c{pkid}")))
        .collect();
    assert!(
        unanswered.is_empty(),
        "{} publishes taken by the gate got no ack before the stop: {unanswered:?}",
        unanswered.len()
    );

    // Restarted: everything acked is stored.
    let chatd = start_chatd(&db.url, data_dir.path()).await;
    let base = format!("{}/demo/chat", chatd.api);
    let resp = http
        .post(format!("{base}/token"))
        .json(&json!({"grant_type": "password", "username": "bob", "password": "pw"}))
        .send()
        .await
        .unwrap();
    let bob = common::into_json(resp).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stored: HashSet<String> = HashSet::new();
    for from_seq in (1..=i64::from(SENDS)).step_by(200) {
        let resp = http
            .get(format!(
                "{base}/users/bob/conversations/user/alice/messages?from_seq={from_seq}&limit=200"
            ))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        let (status, page) = common::into_json(resp).await;
        assert_eq!(status, 200, "{page}");
        stored.extend(
            page["entities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["body"]["msg"].as_str().unwrap().replacen('m', "c", 1)),
        );
    }
    let lost: Vec<&String> = acked.iter().filter(|cid| !stored.contains(*cid)).collect();
    assert!(lost.is_empty(), "acked but not stored: {lost:?}");
    drop(chatd);
    drop(db);
}

/// Several nodes started at the same moment on one empty database all come up: migrations
/// run once, under a lock, and the others wait for them.
async fn nodes_started_at_once_on_an_empty_database(backend: Backend) {
    let db = common::fresh_database(backend).await;
    let starts = (0..4).map(|_| store::Store::connect(&db.url, 2));
    for started in futures_util::future::join_all(starts).await {
        let store = started.expect("every node starts");
        assert!(store.list_apps().await.unwrap().is_empty());
    }
}

on_both_backends!(
    acked_messages_survive_kill_9,
    operator_manages_apps_from_the_command_line,
    sigterm_stores_and_answers_what_is_in_flight,
    nodes_started_at_once_on_an_empty_database
);
