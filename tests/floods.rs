//! One user must not be able to slow down anyone else: floods of every op are refused by
//! the gate on arrival with `rate_limited` (every op answered, none queued), another pair's
//! messages keep flowing meanwhile, rows a client creates are capped, and memory a device
//! can make the gate hold (WebSocket fragments, subscriptions, connections that never say
//! who they are) is bounded.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::raw::Raw;
use common::Backend;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::QoS;
use serde_json::{json, Value};

/// A raw 3.1.1 device subscribed to its inbox.
async fn raw_device(t: &common::TestApp, user: &str, token: &str, device: &str) -> Raw {
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    assert_eq!(
        raw.connect4(device, user, token, 60).await,
        v4::ConnectReturnCode::Success
    );
    raw.send4(v4::Packet::Subscribe(v4::Subscribe::new(
        t.inbox(user),
        QoS::AtLeastOnce,
    )))
    .await;
    loop {
        if let Some(v4::Packet::SubAck(_)) = raw.recv4().await {
            return raw;
        }
    }
}

/// `count` publishes of `envelope(i)` on the user's outbox, in one write.
fn burst(t: &common::TestApp, user: &str, count: usize, envelope: impl Fn(usize) -> Value) -> BytesMut {
    let mut bytes = BytesMut::new();
    for i in 0..count {
        let mut publish = v4::Publish::new(t.outbox(user), QoS::AtLeastOnce, envelope(i).to_string());
        publish.pkid = (i % 65_000 + 1) as u16;
        v4::Packet::Publish(publish).write(&mut bytes, usize::MAX).unwrap();
    }
    bytes
}

/// Reads what comes back until nothing has for half a second: (answers with `answer_op`,
/// `rate_limited` errors).
async fn answers(raw: &mut Raw, answer_op: &str) -> (usize, usize) {
    let (mut answered, mut limited) = (0, 0);
    while let Some((_, v)) = raw.publish4_within(Duration::from_millis(500)).await {
        if v["code"] == "rate_limited" {
            assert!(v["message"].as_str().unwrap().contains("retry in"), "{v}");
            limited += 1;
        } else if v["op"] == answer_op {
            answered += 1;
        }
    }
    (answered, limited)
}

/// The most `rate_limited` errors a device gets in ten seconds; the rest of a flood is
/// refused without an answer (answering would cost as much as the flood).
const ANSWERED_REFUSALS: usize = 100;

/// 500 `sync` ops in one write: the device's budget (40 at once) is served, the rest is
/// refused at once: the first 100 with a `rate_limited` error naming the wait, the others
/// silently. A message between two other users is delivered meanwhile, and once the budget
/// has refilled the flooder is served again.
async fn sync_flood_is_refused_on_arrival(backend: Backend) {
    let t = common::spawn_app(backend).await;
    let mallory = t.user("mallory").await;
    let bob = t.user("bob").await;
    let carol = t.user("carol").await;
    let mut flooder = raw_device(&t, "mallory", &mallory, "mallory-phone").await;
    let bob_dev = t.device("bob", &bob, "bob-phone").await;
    let mut carol_dev = t.device("carol", &carol, "carol-phone").await;

    const FLOOD: usize = 500;
    flooder
        .write(&burst(
            &t,
            "mallory",
            FLOOD,
            |i| json!({"op": "sync", "cid": format!("s{i}"), "after": 0}),
        ))
        .await;
    bob_dev.send_text("b1", "carol", "still there?").await;
    let msg = carol_dev.next_op("msg").await;
    assert_eq!(msg["body"]["msg"], "still there?");

    let (synced, limited) = answers(&mut flooder, "synced").await;
    let budget = common::test_config("").mqtt.budgets.sync;
    assert!(
        synced >= budget.burst as usize && synced as f64 <= budget.burst + budget.per_sec * 5.0,
        "{synced} syncs served for a burst of {}",
        budget.burst
    );
    assert_eq!(limited, ANSWERED_REFUSALS);
    // Refilled: served again, on the same connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    flooder
        .write(&burst(
            &t,
            "mallory",
            1,
            |_| json!({"op": "sync", "cid": "later", "after": 0}),
        ))
        .await;
    let (synced, _) = answers(&mut flooder, "synced").await;
    assert_eq!(synced, 1);
}

/// A device that keeps flooding past 1,000 refusals in ten seconds is disconnected (MQTT 5:
/// 0x96, message rate too high).
async fn a_sustained_flood_is_disconnected(backend: Backend) {
    let t = common::spawn_app(backend).await;
    let mallory = t.user("mallory").await;
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    let ack = raw.connect5("mallory-phone", "mallory", &mallory, 30).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let mut bytes = BytesMut::new();
    for i in 0..1500 {
        let envelope = json!({"op": "read", "conv": "u:mallory:x", "seq": i});
        let publish = v5::Publish::new(
            t.outbox("mallory"),
            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            envelope.to_string(),
            None,
        );
        v5::Packet::Publish(publish).write(&mut bytes, None).unwrap();
    }
    raw.write_unchecked(&bytes).await;
    let reason = raw
        .next5_where(|p| match p {
            v5::Packet::Disconnect(d) => Some(d.reason_code),
            _ => None,
        })
        .await;
    assert_eq!(reason, v5::DisconnectReasonCode::MessageRateTooHigh);
}

/// Budgets are the user's: a second device, or the same device reconnected, gets no fresh
/// burst; and a reconnect loop is refused at CONNECT (MQTT 5: 0x9F, connection rate
/// exceeded) before it reaches the database.
async fn budgets_survive_reconnects(backend: Backend) {
    let t = common::spawn_app(backend).await;
    let mallory = t.user("mallory").await;
    let mut phone = raw_device(&t, "mallory", &mallory, "mallory-phone").await;
    let syncs = |n| {
        burst(
            &t,
            "mallory",
            n,
            |i| json!({"op": "sync", "cid": format!("s{i}"), "after": 0}),
        )
    };
    phone.write(&syncs(40)).await;
    let mut laptop = raw_device(&t, "mallory", &mallory, "mallory-laptop").await;
    laptop.write(&syncs(10)).await;
    // However the two devices' ops interleave, the user's 40 are all they get between them.
    let (phone_synced, phone_limited) = answers(&mut phone, "synced").await;
    let (laptop_synced, laptop_limited) = answers(&mut laptop, "synced").await;
    let (synced, limited) = (phone_synced + laptop_synced, phone_limited + laptop_limited);
    assert!(
        (40..=42).contains(&synced) && synced + limited == 50,
        "two devices of one user were served {synced} syncs ({limited} refused)"
    );

    // Connecting: 20 at once, then 2 a second (what is left after the two above).
    let mut refused = None;
    for n in 0..40 {
        let mut raw = Raw::tcp(t.mqtt_port()).await;
        let ack = raw.connect5(&format!("loop-{n}"), "mallory", &mallory, 30).await;
        if ack.code != v5::ConnectReturnCode::Success {
            refused = Some((n, ack.code));
            break;
        }
    }
    let (n, code) = refused.expect("a reconnect loop was never refused");
    assert!((15..=20).contains(&n), "refused after {n} connects");
    assert_eq!(code, v5::ConnectReturnCode::ConnectionRateExceeded);
    // Another user connects as usual.
    let bob = t.user("bob").await;
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    assert_eq!(
        raw.connect5("bob-phone", "bob", &bob, 30).await.code,
        v5::ConnectReturnCode::Success
    );
}

/// Floods of push bindings and unknown ops are refused the same way. A user's push
/// bindings are capped whatever the route.
async fn other_floods_and_row_caps(backend: Backend) {
    let t = common::spawn_app(backend).await;
    let mallory = t.user("mallory").await;
    t.user("bob").await;

    let mut flooder = raw_device(&t, "mallory", &mallory, "mallory-phone").await;
    let binds = burst(
        &t,
        "mallory",
        300,
        |i| json!({"op": "push_bind", "cid": format!("p{i}"), "device_token": format!("tok{i}"), "notifier_name": "fcm", "device_id": format!("d{i}")}),
    );
    flooder.write(&binds).await;
    let (bound, limited) = answers(&mut flooder, "ok").await;
    assert!((10..=20).contains(&bound), "{bound} bindings served");
    assert_eq!(limited, ANSWERED_REFUSALS);

    let mut flooder = raw_device(&t, "mallory", &mallory, "mallory-laptop").await;
    let unknown = burst(
        &t,
        "mallory",
        200,
        |i| json!({"op": "frobnicate", "cid": format!("u{i}")}),
    );
    flooder.write(&unknown).await;
    let (refused, limited) = answers(&mut flooder, "error").await;
    // Within the budget's burst (20) they reach the bridge, which refuses them as unknown.
    assert_eq!((refused, limited), (20, ANSWERED_REFUSALS));

    // However they are bound (MQTT or REST), a user keeps at most 20 push devices.
    for i in 0..30 {
        let (status, body) = t
            .put(
                "/users/mallory/push/binding",
                &mallory,
                json!({"device_id": format!("r{i}"), "device_token": format!("rt{i}"), "notifier_name": "fcm"}),
            )
            .await;
        assert!(status == 200 || status == 201, "{status} {body}");
    }
    let (status, body) = t.get("/users/mallory/push/binding", &mallory).await;
    assert_eq!(status, 200, "{body}");
    let devices = body["entities"].as_array().or(body["data"].as_array()).unwrap().clone();
    assert_eq!(devices.len(), 20, "{body}");
    // The newest are kept.
    assert!(devices.iter().any(|d| d["device_id"] == "r29"), "{body}");
}

/// A connection may hold at most `max_subscriptions` topics; SUBSCRIBE filters have a
/// budget of their own.
async fn subscriptions_are_capped(backend: Backend) {
    let db = common::fresh_database(backend).await;
    let mut config = common::test_config(&db.url);
    config.mqtt.max_subscriptions = 50;
    let t = common::spawn_app_with(config, db).await;
    let alice = t.user("alice").await;
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    let ack = raw.connect5("alice-phone", "alice", &alice, 30).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let filters: Vec<v5::Filter> = (0..80)
        .map(|i| {
            v5::Filter::new(
                format!("chat/{}/{}/presence/user{i}", t.org, t.app),
                rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            )
        })
        .collect();
    let mut subscribe = v5::Subscribe::new_many(filters, None);
    subscribe.pkid = 1;
    raw.send5(v5::Packet::Subscribe(subscribe)).await;
    let codes = raw
        .next5_where(|p| match p {
            v5::Packet::SubAck(a) => Some(a.return_codes),
            _ => None,
        })
        .await;
    let granted = codes
        .iter()
        .filter(|c| matches!(c, v5::SubscribeReasonCode::Success(_)))
        .count();
    let quota = codes
        .iter()
        .filter(|c| matches!(c, v5::SubscribeReasonCode::QuotaExceeded))
        .count();
    assert_eq!((granted, quota), (50, 30), "{codes:?}");
}

/// WebSocket messages larger than the MQTT packet limit close the connection, before
/// CONNECT and after; so do TCP CONNECTs over 65 KiB.
async fn oversized_frames_are_refused(backend: Backend) {
    let db = common::fresh_database(backend).await;
    let mut config = common::test_config(&db.url);
    config.mqtt.max_packet_bytes = 64 * 1024;
    let t = common::spawn_app_with(config, db).await;
    let alice = t.user("alice").await;
    let ws_port = t.server.ws_addr.unwrap().port();

    // Before CONNECT: one message over the limit.
    let mut raw = Raw::ws(ws_port).await;
    raw.write_unchecked(&[0x10; 65 * 1024]).await;
    assert!(raw.recv4().await.is_none(), "oversized message before CONNECT kept");

    // After CONNECT, keepalive 0: a message over the limit closes the connection; the
    // same content cut into packet-sized pieces is fine.
    let mut raw = Raw::ws(ws_port).await;
    assert_eq!(
        raw.connect4("alice-ws", "alice", &alice, 0).await,
        v4::ConnectReturnCode::Success
    );
    raw.send4(v4::Packet::PingReq).await;
    assert!(matches!(raw.recv4().await, Some(v4::Packet::PingResp)));
    raw.write_unchecked(&[0xC0, 0x00].repeat(33 * 1024)).await;
    assert!(raw.recv4().await.is_none(), "oversized message after CONNECT kept");

    // TCP: a CONNECT larger than 65 KiB is not read.
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    let mut connect = v4::Connect::new("big");
    connect.set_login("alice", "x".repeat(70 * 1024));
    raw.send4(v4::Packet::Connect(connect)).await;
    assert!(raw.recv4().await.is_none(), "oversized CONNECT read");
}

/// Connections that never send CONNECT are bounded per source address: over the bound a
/// new one is closed at once; once they go, connections are accepted again.
async fn silent_connections_are_bounded(backend: Backend) {
    let db = common::fresh_database(backend).await;
    let mut config = common::test_config(&db.url);
    config.mqtt.max_pending_per_ip = 5;
    let t = common::spawn_app_with(config, db).await;
    let alice = t.user("alice").await;
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", t.mqtt_port()))
                .await
                .unwrap(),
        );
    }
    // Give the gate time to take them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    assert!(raw.recv4().await.is_none(), "a sixth silent connection was kept");
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    assert_eq!(
        raw.connect4("alice-phone", "alice", &alice, 30).await,
        v4::ConnectReturnCode::Success
    );
}

/// A device that stops reading holds neither its session nor the server's stop: once what is
/// written to it has not moved for `mqtt.write_timeout_secs`, it is closed (and shown offline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_is_closed() {
    let db = common::fresh_database(Backend::Sqlite).await;
    let mut config = common::test_config(&db.url);
    config.mqtt.write_timeout_secs = 1;
    let t = common::spawn_app_with(config, db).await;
    let app = t.server.store.find_app(&t.org, &t.app).await.unwrap();
    let big = json!({"max_message_bytes": 60_000, "send_rate_per_sec": 1e9, "send_burst": 1e9});
    t.server.store.update_app_settings(&app.id, &big).await.unwrap();
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let carol = t.user("carol").await;
    let mut watcher = t.device("carol", &carol, "carol-phone").await;
    assert!(
        watcher
            .subscribe(&format!("chat/{}/{}/presence/bob", t.org, t.app))
            .await
    );
    // bob subscribes, then never reads again.
    let _stalled = raw_device(&t, "bob", &bob, "bob-phone").await;
    let mut sender = t.device("alice", &alice, "alice-phone").await;
    // ~16 MB for bob: more than the socket buffers on both ends of loopback hold.
    let text = "x".repeat(50_000);
    for i in 0..320 {
        sender.send_text(&format!("big{i}"), "bob", &text).await;
        sender.next_op("ack").await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let packet = tokio::time::timeout_at(deadline, watcher.next_packet(Duration::from_secs(15)))
            .await
            .expect("bob, who stopped reading, is still connected 15 s later")
            .unwrap();
        if let Some(rumqttc::Packet::Publish(p)) = packet {
            let presence: Value = serde_json::from_slice(&p.payload).unwrap();
            if presence["status"] == "offline" {
                break;
            }
        }
    }
}

on_both_backends!(
    sync_flood_is_refused_on_arrival,
    a_sustained_flood_is_disconnected,
    budgets_survive_reconnects,
    other_floods_and_row_caps,
    subscriptions_are_capped,
    oversized_frames_are_refused,
    silent_connections_are_bounded
);
