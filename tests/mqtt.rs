//! Devices over MQTT: connecting, the topic ACL, sending, duplicates, multi-device echo,
//! errors, catching up, presence, WebSocket and MQTT 5.

mod common;

use std::time::Duration;

use common::raw::Raw;
use common::{spawn_app, Backend};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::QoS;
use serde_json::json;

async fn refuses_bad_tokens(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice = t.user("alice").await;
    let port = t.mqtt_port();

    let mut raw = Raw::tcp(port).await;
    assert_eq!(
        raw.connect4("p", "alice", &alice, 30).await,
        v4::ConnectReturnCode::Success
    );

    // 3.1.1: wrong token, someone else's token, forged, expired, no password at all.
    let bob = t.user("bob").await;
    let forged = store::tokens::Tokens::new("forger")
        .issue("alice", "demo", "chat", store::tokens::Role::User, 0, 600)
        .unwrap();
    let expired = t
        .token(json!({"grant_type": "password", "username": "alice", "password": "pw", "ttl": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for bad in [
        "garbage",
        bob.as_str(),
        forged.as_str(),
        expired.as_str(),
        t.app_token.as_str(),
    ] {
        let mut raw = Raw::tcp(port).await;
        assert_eq!(
            raw.connect4("p", "alice", bad, 30).await,
            v4::ConnectReturnCode::NotAuthorized
        );
        assert!(raw.recv4().await.is_none(), "connection left open after refusal");
    }
    // MQTT 5: 0x87.
    let mut raw = Raw::tcp(port).await;
    let ack = raw.connect5("p", "alice", &expired, 30).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::NotAuthorized);

    // A token of another app's user of the same name is refused too.
    let (_, creds) = t.server.store.create_app("acme", "chat").await.unwrap();
    let other_app = t.server.store.find_app("acme", "chat").await.unwrap();
    t.server
        .store
        .create_users(
            &other_app.id,
            &[store::users::NewUser {
                username: "alice".into(),
                password: "pw".into(),
                nickname: None,
            }],
        )
        .await
        .unwrap();
    let _ = creds;
    // A user token carries its user's token generation (a deleted and re-created alice
    // gets a new one).
    let generation = t
        .server
        .store
        .user_token_generation(&other_app.id, "alice")
        .await
        .unwrap()
        .unwrap();
    let acme_alice = t
        .server
        .tokens
        .issue("alice", "acme", "chat", store::tokens::Role::User, generation, 600)
        .unwrap();
    let mut raw = Raw::tcp(port).await;
    assert_eq!(
        raw.connect4("p", "alice", &acme_alice, 30).await,
        v4::ConnectReturnCode::Success
    );
    raw.send4(v4::Packet::Subscribe(v4::Subscribe::new(
        "chat/demo/chat/u/alice/in",
        QoS::AtLeastOnce,
    )))
    .await;
    match raw.recv4().await {
        Some(v4::Packet::SubAck(ack)) => assert_eq!(
            ack.return_codes,
            vec![v4::SubscribeReasonCode::Failure],
            "acme's alice read demo's alice"
        ),
        other => panic!("{other:?}"),
    }
    // A session lasts as long as its token (MQTT 5: DISCONNECT 0x87 when it expires).
    let short = t
        .token(json!({"grant_type": "password", "username": "alice", "password": "pw", "ttl": 2}))
        .await;
    let mut brief = Raw::tcp(port).await;
    assert_eq!(
        brief.connect5("brief", "alice", &short, 0).await.code,
        v5::ConnectReturnCode::Success
    );
    let started = std::time::Instant::now();
    match brief.recv5().await {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT at token expiry, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the token expired"
    );

    // Deleting a user closes their open connections (MQTT 5: DISCONNECT 0x98), and their
    // token stops working.
    let mut bob_online = Raw::tcp(port).await;
    assert_eq!(
        bob_online.connect5("bob-5", "bob", &bob, 30).await.code,
        v5::ConnectReturnCode::Success
    );
    t.http
        .delete(t.url("/users/bob"))
        .bearer_auth(&t.app_token)
        .send()
        .await
        .unwrap();
    match bob_online.recv5().await {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::AdministrativeAction),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(bob_online.recv5().await.is_none());
    let mut raw = Raw::tcp(port).await;
    assert_eq!(
        raw.connect4("p", "bob", &bob, 30).await,
        v4::ConnectReturnCode::NotAuthorized
    );
}

async fn enforces_topic_acl(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice = t.user("alice").await;
    t.user("bob").await;
    let port = t.mqtt_port();

    // 3.1.1 subscriptions: a mix of allowed and refused filters gets one code each.
    let mut raw = Raw::tcp(port).await;
    raw.connect4("a1", "alice", &alice, 30).await;
    let filters = [
        ("chat/demo/chat/u/alice/in", true),
        ("chat/demo/chat/u/bob/in", false),
        ("#", false),
        ("chat/#", false),
        ("chat/demo/chat/u/+/in", false),
        ("chat/+/+/u/alice/in", false),
        ("$share/x/chat/demo/chat/u/bob/in", false),
        ("chat/demo/chat/u/bob/out", false),
        ("chat/demo/chat/presence/bob", true),
        ("chat/demo/chat/presence/+", false),
        ("$SYS/#", false),
    ];
    let mut sub = v4::Subscribe::new(filters[0].0, QoS::AtLeastOnce);
    for (f, _) in &filters[1..] {
        sub.add(f.to_string(), QoS::AtLeastOnce);
    }
    sub.pkid = 7;
    raw.send4(v4::Packet::Subscribe(sub)).await;
    match raw.recv4().await {
        Some(v4::Packet::SubAck(ack)) => {
            assert_eq!(ack.pkid, 7);
            let got: Vec<bool> = ack
                .return_codes
                .iter()
                .map(|c| *c != v4::SubscribeReasonCode::Failure)
                .collect();
            let want: Vec<bool> = filters.iter().map(|(_, ok)| *ok).collect();
            assert_eq!(got, want);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // 3.1.1 has no way to refuse a publish: publishing as someone else is acknowledged
    // (else clients re-send it on every reconnect, for ever), dropped, and answered with an
    // `error` op on the inbox; the connection stays. A device that keeps at it is closed.
    let mut p = v4::Publish::new("chat/demo/chat/u/bob/out", QoS::AtLeastOnce, "{}");
    p.pkid = 1;
    raw.send4(v4::Packet::Publish(p)).await;
    let mut acked = false;
    let mut told = false;
    while !(acked && told) {
        match raw.recv4().await {
            Some(v4::Packet::PubAck(ack)) => {
                assert_eq!(ack.pkid, 1);
                acked = true;
            }
            Some(v4::Packet::Publish(p)) => {
                let error: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                assert_eq!(
                    (error["op"].as_str(), error["code"].as_str()),
                    (Some("error"), Some("forbidden")),
                    "{error}"
                );
                told = true;
            }
            other => panic!("expected a PUBACK and an error op, got {other:?}"),
        }
    }
    raw.send4(v4::Packet::PingReq).await;
    assert!(
        matches!(raw.recv4().await, Some(v4::Packet::PingResp)),
        "the connection was closed"
    );
    // The server may close the connection while the flood is still being written: a write
    // after that fails (broken pipe), which is the point, not an error of the test.
    for pkid in 2..200u16 {
        let mut p = v4::Publish::new("chat/demo/chat/u/bob/out", QoS::AtMostOnce, "{}");
        p.pkid = pkid;
        let mut bytes = bytes::BytesMut::new();
        v4::Packet::Publish(p).write(&mut bytes, usize::MAX).unwrap();
        raw.write_unchecked(&bytes).await;
    }
    let mut closed = false;
    for _ in 0..400 {
        if raw.recv4().await.is_none() {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a flood of forbidden 3.1.1 publishes did not close the connection"
    );

    // MQTT 5: SUBACK and PUBACK carry 0x87, and the connection stays up.
    let mut raw = Raw::tcp(port).await;
    let ack = raw.connect5("a2", "alice", &alice, 30).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let sub = v5::Subscribe {
        pkid: 3,
        filters: vec![
            v5::Filter::new("chat/demo/chat/u/bob/in", rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
            v5::Filter::new("chat/demo/chat/u/alice/in", rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
        ],
        properties: None,
    };
    raw.send5(v5::Packet::Subscribe(sub)).await;
    match raw.recv5().await {
        Some(v5::Packet::SubAck(ack)) => {
            assert_eq!(ack.return_codes[0], v5::SubscribeReasonCode::NotAuthorized);
            assert!(matches!(ack.return_codes[1], v5::SubscribeReasonCode::Success(_)));
        }
        other => panic!("{other:?}"),
    }
    let mut p = v5::Publish::new(
        "chat/demo/chat/u/bob/out",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        "{}",
        None,
    );
    p.pkid = 9;
    raw.send5(v5::Packet::Publish(p)).await;
    match raw.recv5().await {
        Some(v5::Packet::PubAck(ack)) => assert_eq!((ack.pkid, ack.reason), (9, v5::PubAckReason::NotAuthorized)),
        other => panic!("{other:?}"),
    }
    // Still connected: a ping is answered.
    raw.send5(v5::Packet::PingReq(v5::PingReq)).await;
    assert!(matches!(raw.recv5().await, Some(v5::Packet::PingResp(_))));
    // A forbidden QoS 0 publish has no ack to refuse it in: DISCONNECT 0x87.
    let p = v5::Publish::new(
        "chat/demo/chat/u/bob/out",
        rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        "{}",
        None,
    );
    raw.send5(v5::Packet::Publish(p)).await;
    match raw.recv5().await {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(raw.recv5().await.is_none());
}

async fn send_ack_deliver_echo_and_duplicates(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice_token = t.user("alice").await;
    let bob_token = t.user("bob").await;
    let mut phone = t.device("alice", &alice_token, "alice-phone").await;
    let mut tablet = t.device("alice", &alice_token, "alice-tablet").await;
    let mut bob1 = t.device("bob", &bob_token, "bob-1").await;
    let mut bob2 = t.device("bob", &bob_token, "bob-2").await;

    phone.send_text("c1", "bob", "hello").await;
    let ack = phone.next_op("ack").await;
    assert_eq!(
        (ack["cid"].as_str(), ack["seq"].as_i64(), ack["conv"].as_str()),
        (Some("c1"), Some(1), Some("u:alice:bob"))
    );
    for bob in [&mut bob1, &mut bob2] {
        let msg = bob.next_op("msg").await;
        assert_eq!(
            (msg["from"].as_str(), msg["body"]["msg"].as_str(), msg["id"].as_str()),
            (Some("alice"), Some("hello"), ack["id"].as_str())
        );
        assert!(msg.get("cid").is_none(), "the sender's cid leaked to the recipient");
    }
    let echo = tablet.next_op("msg").await;
    // The ack tells the sending device its own inbox position, the one its tablet saw.
    assert_eq!(ack["useq"], echo["useq"]);
    assert_eq!(
        (echo["id"].as_str(), echo["cid"].as_str(), echo["from_device"].as_str()),
        (ack["id"].as_str(), Some("c1"), Some("alice-phone"))
    );

    // The same cid again (a retry): the same ack, nothing delivered twice, one row stored.
    phone.send_text("c1", "bob", "hello").await;
    let again = phone.next_op("ack").await;
    assert_eq!(again, ack);
    phone.send_text("c2", "bob", "second").await;
    let ack2 = phone.next_op("ack").await;
    assert_eq!(ack2["seq"], 2);
    // The phone sees acks only, never a copy of its own message; bob sees each message once.
    let phone_saw = phone.collect(Duration::from_millis(300)).await;
    assert!(phone_saw.iter().all(|m| m["op"] != "msg"), "{phone_saw:?}");
    let next = bob1.next_op("msg").await;
    assert_eq!(next["body"]["msg"], "second", "duplicate delivered to bob");
    let app = t.server.store.find_app("demo", "chat").await.unwrap();
    assert_eq!(t.server.store.count_messages(&app.id).await.unwrap(), 2);

    // Bob answers; sequence continues in the same conversation.
    bob1.send_text("b1", "alice", "hi alice").await;
    assert_eq!(bob1.next_op("ack").await["seq"], 3);
    assert_eq!(phone.next_op("msg").await["body"]["msg"], "hi alice");

    // History over REST, by seq range, for either side.
    let (status, history) = t
        .get(
            "/users/bob/conversations/user/alice/messages?from_seq=2&to_seq=3",
            &bob_token,
        )
        .await;
    assert_eq!(status, 200, "{history}");
    let seqs: Vec<i64> = history["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(history["last_seq"], 3);
    assert_eq!(
        t.get("/users/alice/conversations/user/bob/messages", &bob_token)
            .await
            .0,
        403
    );
}

async fn bad_input_gets_errors_and_loses_nothing(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice_token = t.user("alice").await;
    let bob_token = t.user("bob").await;
    let mut alice = t.device("alice", &alice_token, "a").await;
    let mut bob = t.device("bob", &bob_token, "b").await;

    let cases = [
        ("{not json".to_string(), "bad_json"),
        (json!({"op": "dance", "cid": "x1"}).to_string(), "unknown_op"),
        (json!({"op": "send", "cid": "x2", "chat": "user", "to": "bob", "type": "txt", "body": {}}).to_string(), "invalid"),
        (json!({"op": "send", "cid": "x3", "chat": "user", "to": "nobody", "type": "txt", "body": {"msg": "?"}}).to_string(), "unknown_recipient"),
        (json!({"op": "send", "cid": "x4", "chat": "user", "to": "bob", "type": "txt", "body": {"msg": "x".repeat(70_000)}}).to_string(), "too_large"),
    ];
    for (payload, code) in &cases {
        alice
            .client
            .publish(&alice.outbox, QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        let err = alice.next_op("error").await;
        assert_eq!(err["code"], *code, "{err}");
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    // The same connection still works, and bob got none of the refused messages.
    alice.send_text("ok", "bob", "fine").await;
    assert_eq!(alice.next_op("ack").await["cid"], "ok");
    assert_eq!(bob.next_op("msg").await["body"]["msg"], "fine");
    // Malformed packets close only the connection that sent them (MQTT 5: DISCONNECT 0x81).
    let mut garbage = Raw::tcp(t.mqtt_port()).await;
    garbage.connect5("junk5", "alice", &alice_token, 30).await;
    garbage.write(&[0x30, 0x05, 0xff, 0xff, 0x00, 0x01, 0x02]).await; // PUBLISH whose topic overruns
    match garbage.recv5().await {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::MalformedPacket),
        other => panic!("expected DISCONNECT 0x81, got {other:?}"),
    }
    let mut garbage = Raw::tcp(t.mqtt_port()).await;
    garbage.connect4("junk4", "alice", &alice_token, 30).await;
    garbage.write(&[0xf0, 0x00]).await; // reserved packet type 15
    assert!(garbage.recv4().await.is_none());
    let mut not_mqtt = Raw::tcp(t.mqtt_port()).await;
    not_mqtt.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(not_mqtt.recv4().await.is_none(), "HTTP on the MQTT port got an answer");
    alice.send_text("after-junk", "bob", "still here").await;
    assert_eq!(alice.next_op("ack").await["cid"], "after-junk");

    // A packet over the gate's limit closes only that connection.
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    raw.connect4("big", "alice", &alice_token, 30).await;
    let mut p = v4::Publish::new(alice.outbox.clone(), QoS::AtLeastOnce, vec![b'x'; 300_000]);
    p.pkid = 1;
    raw.send4(v4::Packet::Publish(p)).await;
    assert!(raw.recv4().await.is_none());
    alice.send_text("ok2", "bob", "still fine").await;
    assert_eq!(alice.next_op("ack").await["cid"], "ok2");
}

async fn catch_up_after_offline(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice_token = t.user("alice").await;
    let bob_token = t.user("bob").await;
    let mut alice = t.device("alice", &alice_token, "a").await;

    // Bob is online for the first message, then offline while 250 more arrive.
    let mut bob = t.device("bob", &bob_token, "bob-phone").await;
    alice.send_text("m0", "bob", "m0").await;
    alice.next_op("ack").await;
    let first = bob.next_op("msg").await;
    let last_seen = first["useq"].as_i64().unwrap();
    bob.client.disconnect().await.unwrap();
    let _ = bob.collect(Duration::from_millis(100)).await;
    drop(bob);
    for i in 1..=250 {
        alice.send_text(&format!("m{i}"), "bob", &format!("m{i}")).await;
        if i % 50 == 0 {
            // Let acks flow so the client's queue never fills.
            while alice.next_op("ack").await["cid"] != format!("m{i}") {}
        }
    }

    // Back online: sync pages from the last useq seen, exactly once and in order.
    let mut bob = t.device("bob", &bob_token, "bob-phone").await;
    let mut after = last_seen;
    let mut got = Vec::new();
    loop {
        bob.publish(json!({"op": "sync", "cid": format!("s{after}"), "after": after, "limit": 100}))
            .await;
        let page = bob.next_op("synced").await;
        assert_eq!(page["after"], after);
        for m in page["msgs"].as_array().unwrap() {
            got.push(m["body"]["msg"].as_str().unwrap().to_string());
        }
        after = page["last"].as_i64().unwrap();
        if !page["more"].as_bool().unwrap() {
            break;
        }
    }
    let want: Vec<String> = (1..=250).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);

    // The REST inbox gives the same, and the seqs have no gaps.
    let (status, page) = t
        .get(&format!("/users/bob/inbox?after={last_seen}&limit=200"), &bob_token)
        .await;
    assert_eq!(status, 200);
    let useqs: Vec<i64> = page["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["useq"].as_i64().unwrap())
        .collect();
    assert_eq!(useqs, ((last_seen + 1)..=(last_seen + 200)).collect::<Vec<_>>());
    assert_eq!(page["more"], true);
}

async fn presence_counts_devices(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice_token = t.user("alice").await;
    let bob_token = t.user("bob").await;
    let mut watcher = t.device("bob", &bob_token, "watcher").await;
    watcher
        .client
        .subscribe("chat/demo/chat/presence/alice", QoS::AtLeastOnce)
        .await
        .unwrap();
    watcher.wait_for(|p| matches!(p, rumqttc::Packet::SubAck(_))).await;

    let phone = t.device("alice", &alice_token, "phone").await;
    let p = watcher.next_op_on_presence().await;
    assert_eq!((p["status"].as_str(), p["devices"].as_i64()), (Some("online"), Some(1)));
    let tablet = t.device("alice", &alice_token, "tablet").await;
    assert_eq!(watcher.next_op_on_presence().await["devices"], 2);
    drop(phone);
    let p = watcher.next_op_on_presence().await;
    assert_eq!((p["status"].as_str(), p["devices"].as_i64()), (Some("online"), Some(1)));
    drop(tablet);
    let p = watcher.next_op_on_presence().await;
    assert_eq!(
        (p["status"].as_str(), p["devices"].as_i64()),
        (Some("offline"), Some(0))
    );
    assert!(p["last_seen"].as_i64().unwrap() > 0);

    // Retained: a late subscriber gets the current state at once.
    let mut late = Raw::tcp(t.mqtt_port()).await;
    late.connect4("late", "bob", &bob_token, 30).await;
    late.send4(v4::Packet::Subscribe(v4::Subscribe::new(
        "chat/demo/chat/presence/alice",
        QoS::AtLeastOnce,
    )))
    .await;
    let (topic, p) = late.next_publish4().await;
    assert_eq!(
        (topic.as_str(), p["status"].as_str()),
        ("chat/demo/chat/presence/alice", Some("offline"))
    );
    // Nobody but the server publishes presence.
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    raw.connect4("liar", "alice", &alice_token, 30).await;
    let mut fake = v4::Publish::new("chat/demo/chat/presence/alice", QoS::AtLeastOnce, "{}");
    fake.pkid = 1;
    raw.send4(v4::Packet::Publish(fake)).await;
    // Acknowledged and dropped (3.1.1 cannot refuse it): the subscriber sees nothing.
    assert!(matches!(raw.recv4().await, Some(v4::Packet::PubAck(_))));
    // (The liar's connecting is itself a presence change the server publishes.)
    while let Some((_, seen)) = late.publish4_within(Duration::from_millis(400)).await {
        assert!(seen.get("status").is_some(), "a device published presence: {seen}");
    }
}

impl common::Device {
    async fn next_op_on_presence(&mut self) -> serde_json::Value {
        let packet = self
            .wait_for(|p| matches!(p, rumqttc::Packet::Publish(p) if p.topic.contains("/presence/")))
            .await;
        let rumqttc::Packet::Publish(p) = packet else {
            unreachable!()
        };
        serde_json::from_slice(&p.payload).unwrap()
    }
}

async fn websocket_v4_and_v5_and_keepalive_zero(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice_token = t.user("alice").await;
    let bob_token = t.user("bob").await;
    let ws_port = t.server.ws_addr.unwrap().port();

    // MQTT 5 over WebSocket (rumqttd alone serves only 3.1.1 there), keepalive 0.
    let mut bob = Raw::ws(ws_port).await;
    let ack = bob.connect5("bob-web", "bob", &bob_token, 0).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let sub = v5::Subscribe::new(
        v5::Filter::new(t.inbox("bob"), rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
        None,
    );
    bob.send5(v5::Packet::Subscribe(sub)).await;
    assert!(matches!(bob.recv5().await, Some(v5::Packet::SubAck(_))));

    // 3.1.1 over WebSocket, keepalive 0, and a topic alias-free publish.
    let mut alice = Raw::ws(ws_port).await;
    assert_eq!(
        alice.connect4("alice-web", "alice", &alice_token, 0).await,
        v4::ConnectReturnCode::Success
    );
    alice.subscribe4(&t.inbox("alice")).await;
    let mut p = v4::Publish::new(
        t.outbox("alice"),
        QoS::AtLeastOnce,
        json!({"op": "send", "cid": "w1", "chat": "user", "to": "bob", "type": "loc", "body": {"lat": 52.5, "lng": 13.4, "addr": "Berlin"}}).to_string(),
    );
    p.pkid = 1;
    alice.send4(v4::Packet::Publish(p)).await;
    let (_, ack) = alice.next_publish4().await;
    assert_eq!((ack["op"].as_str(), ack["cid"].as_str()), (Some("ack"), Some("w1")));
    let (topic, msg) = bob.next_publish5().await;
    assert_eq!(
        (topic, msg["type"].as_str(), msg["body"]["addr"].as_str()),
        (t.inbox("bob"), Some("loc"), Some("Berlin"))
    );

    // MQTT 5 topic alias: set once, then publish with an empty topic.
    let mut props = v5::PublishProperties {
        topic_alias: Some(1),
        ..Default::default()
    };
    let mut p = v5::Publish::new(
        t.outbox("bob"),
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        json!({"op": "send", "cid": "a1", "chat": "user", "to": "alice", "type": "txt", "body": {"msg": "one"}})
            .to_string(),
        Some(props.clone()),
    );
    p.pkid = 1;
    bob.send5(v5::Packet::Publish(p)).await;
    props.topic_alias = Some(1);
    let mut p = v5::Publish::new(
        "",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        json!({"op": "send", "cid": "a2", "chat": "user", "to": "alice", "type": "txt", "body": {"msg": "two"}})
            .to_string(),
        Some(props),
    );
    p.pkid = 2;
    bob.send5(v5::Packet::Publish(p)).await;
    let (_, m1) = alice.next_publish4().await;
    let (_, m2) = alice.next_publish4().await;
    assert_eq!(
        (m1["body"]["msg"].as_str(), m2["body"]["msg"].as_str()),
        (Some("one"), Some("two"))
    );

    // A plain HTTP request is not served, and the listener carries on.
    let resp = reqwest::get(format!("http://127.0.0.1:{ws_port}/other")).await;
    assert!(resp.map_or(true, |r| r.status().is_client_error()));
    let mut again = Raw::ws(ws_port).await;
    assert_eq!(
        again.connect4("alice-web2", "alice", &alice_token, 0).await,
        v4::ConnectReturnCode::Success
    );
}

async fn silent_device_is_dropped_and_handshakes_time_out(backend: Backend) {
    let db = common::fresh_database(backend).await;
    let mut config = common::test_config(&db.url);
    config.mqtt.connect_timeout_secs = 1;
    config.mqtt.handshake_timeout_secs = 1;
    let t = common::spawn_app_with(config, db).await;
    let alice_token = t.user("alice").await;

    // An idle TCP connection that never upgrades to WebSocket does not block others.
    let _idle = tokio::net::TcpStream::connect(t.server.ws_addr.unwrap()).await.unwrap();
    let mut ws = Raw::ws(t.server.ws_addr.unwrap().port()).await;
    assert_eq!(
        ws.connect4("w", "alice", &alice_token, 30).await,
        v4::ConnectReturnCode::Success
    );

    // A socket that never sends CONNECT is closed.
    let mut silent = Raw::tcp(t.mqtt_port()).await;
    assert!(silent.recv4().await.is_none());

    // Keepalive 1 s and then silence: dropped after 1.5 s, and presence says offline.
    let mut raw = Raw::tcp(t.mqtt_port()).await;
    assert_eq!(
        raw.connect4("k", "alice", &alice_token, 1).await,
        v4::ConnectReturnCode::Success
    );
    let started = std::time::Instant::now();
    assert!(raw.recv4().await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(1400), "dropped too early");
}

/// A will goes out when a device vanishes, not when it says goodbye, in either form of an
/// MQTT 5 DISCONNECT (with a reason code, or the short form without one).
async fn wills_follow_how_a_device_leaves(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice_token = t.user("alice").await;
    let bob_token = t.user("bob").await;
    let mut bob = t.device("bob", &bob_token, "bob-phone").await;

    let connect_with_will = |cid: &'static str| {
        let will = v5::LastWill::new(
            t.outbox("alice"),
            json!({"op": "send", "cid": cid, "chat": "user", "to": "bob", "type": "txt", "body": {"msg": cid}})
                .to_string(),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            None,
        );
        let connect = v5::Connect {
            keep_alive: 30,
            client_id: format!("alice-{cid}"),
            clean_start: true,
            properties: None,
        };
        let login = v5::Login {
            username: "alice".into(),
            password: alice_token.clone(),
        };
        v5::Packet::Connect(connect, Some(will), Some(login))
    };
    for (cid, goodbye) in [
        ("short-form", Some(vec![0xE0u8, 0x00])),
        ("with-reason", Some(vec![0xE0u8, 0x01, 0x00])),
        ("with-properties", Some(vec![0xE0u8, 0x02, 0x00, 0x00])),
        ("vanished", None),
        ("asked-for-will", Some(vec![0xE0u8, 0x01, 0x04])),
    ] {
        let mut raw = Raw::tcp(t.mqtt_port()).await;
        raw.send5(connect_with_will(cid)).await;
        assert!(matches!(raw.recv5().await, Some(v5::Packet::ConnAck(a)) if a.code == v5::ConnectReturnCode::Success));
        if let Some(bytes) = goodbye {
            raw.write(&bytes).await
        }
        drop(raw);
    }
    // Only the wills of the device that vanished and of the one that asked for it arrive.
    let got = bob.collect(Duration::from_millis(1500)).await;
    let texts: Vec<_> = got
        .iter()
        .filter(|m| m["op"] == "msg")
        .map(|m| m["body"]["msg"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["vanished", "asked-for-will"]);
}

/// MQTT 5 devices get no more unacknowledged publishes than their receive maximum, and no
/// packet larger than their maximum packet size.
async fn mqtt5_flow_control_and_packet_size(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice_token = t.user("alice").await;
    let bob_token = t.user("bob").await;
    let mut alice = t.device("alice", &alice_token, "alice-phone").await;

    let mut properties = v5::ConnectProperties::new();
    properties.receive_maximum = Some(2);
    properties.max_packet_size = Some(1024);
    let mut bob = Raw::tcp(t.mqtt_port()).await;
    let ack = bob
        .connect5_with("bob-small", "bob", &bob_token, 30, Some(properties))
        .await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    bob.send5(v5::Packet::Subscribe(v5::Subscribe::new(
        v5::Filter::new(t.inbox("bob"), rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
        None,
    )))
    .await;
    assert!(matches!(bob.recv5().await, Some(v5::Packet::SubAck(_))));

    alice.send_text("big", "bob", &"x".repeat(2000)).await;
    for i in 1..=4 {
        alice.send_text(&format!("m{i}"), "bob", &format!("m{i}")).await;
    }
    for _ in 0..5 {
        alice.next_op("ack").await;
    }
    // Two publishes, unacknowledged; the oversized one never comes.
    let pkids = unacked_publishes(&mut bob, &["m1", "m2"]).await;
    let nothing = tokio::time::timeout(Duration::from_millis(500), bob.recv5()).await;
    assert!(
        nothing.is_err(),
        "a third publish exceeded the receive maximum: {nothing:?}"
    );
    // Each ack lets one more through.
    bob.send5(v5::Packet::PubAck(v5::PubAck::new(pkids[0], None))).await;
    let (_, m3) = bob.next_publish5().await;
    assert_eq!(m3["body"]["msg"], "m3");
    bob.send5(v5::Packet::PubAck(v5::PubAck::new(pkids[1], None))).await;
    let (_, m4) = bob.next_publish5().await;
    assert_eq!(m4["body"]["msg"], "m4");

    // m3 and m4 were acknowledged (`next_publish5` acks): nothing is in flight, and the
    // session lets its flow state go (gate/flow.rs). The window holds all the same when
    // traffic comes back.
    for i in 5..=7 {
        alice.send_text(&format!("m{i}"), "bob", &format!("m{i}")).await;
        alice.next_op("ack").await;
    }
    let acks = unacked_publishes(&mut bob, &["m5", "m6"]).await;
    assert_ne!(acks[0], acks[1], "two publishes in flight share a packet id");
    let nothing = tokio::time::timeout(Duration::from_millis(500), bob.recv5()).await;
    assert!(nothing.is_err(), "the window was lost with the flow state: {nothing:?}");
    bob.send5(v5::Packet::PubAck(v5::PubAck::new(acks[0], None))).await;
    let (_, m7) = bob.next_publish5().await;
    assert_eq!(m7["body"]["msg"], "m7");
}

/// Reads publishes whose texts are `wants`, in that order, acknowledging none; their
/// packet ids.
async fn unacked_publishes(device: &mut Raw, wants: &[&str]) -> Vec<u16> {
    let mut pkids = Vec::new();
    for want in wants {
        match device.recv5().await {
            Some(v5::Packet::Publish(p)) => {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                assert_eq!(v["body"]["msg"], *want);
                pkids.push(p.pkid);
            }
            other => panic!("expected a publish, got {other:?}"),
        }
    }
    pkids
}

/// A device id is one connection: connecting again with it closes the older connection
/// (MQTT 5: DISCONNECT 0x8E), and messages go to the new one. A QoS 2 publish is passed on
/// once however often the device repeats it before releasing it.
async fn same_device_takes_over_and_qos2_is_forwarded_once(backend: Backend) {
    let t = spawn_app(backend).await;
    let ann = t.user("ann").await;
    let bob = t.user("bob").await;
    let mut old = Raw::tcp(t.mqtt_port()).await;
    assert_eq!(
        old.connect5("ann-phone", "ann", &ann, 30).await.code,
        v5::ConnectReturnCode::Success
    );
    let mut new = Raw::tcp(t.mqtt_port()).await;
    assert_eq!(
        new.connect5("ann-phone", "ann", &ann, 30).await.code,
        v5::ConnectReturnCode::Success
    );
    match old.recv5().await {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(old.recv5().await.is_none(), "the old connection is closed");
    let filter = v5::Filter::new(t.inbox("ann"), rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    new.send5(v5::Packet::Subscribe(v5::Subscribe::new(filter, None))).await;
    assert!(matches!(new.recv5().await, Some(v5::Packet::SubAck(_))));

    let mut bob_dev = t.device("bob", &bob, "bob-phone").await;
    let send = json!({"op":"send","cid":"q2","chat":"user","to":"bob","type":"txt","body":{"msg":"exactly once"}});
    for dup in [false, true] {
        let mut publish = v5::Publish::new(
            t.outbox("ann"),
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
            send.to_string(),
            None,
        );
        publish.pkid = 7;
        publish.dup = dup;
        new.send5(v5::Packet::Publish(publish)).await;
        let pubrec = new
            .next5_where(|p| match p {
                v5::Packet::PubRec(r) => Some(r.pkid),
                _ => None,
            })
            .await;
        assert_eq!(pubrec, 7);
    }
    new.send5(v5::Packet::PubRel(v5::PubRel::new(7, None))).await;
    let pubcomp = new
        .next5_where(|p| match p {
            v5::Packet::PubComp(c) => Some(c.pkid),
            _ => None,
        })
        .await;
    assert_eq!(pubcomp, 7);
    let msg = bob_dev.next_op("msg").await;
    assert_eq!(msg["body"]["msg"], "exactly once");
    let more = bob_dev.collect(Duration::from_millis(500)).await;
    assert!(more.iter().all(|m| m["op"] != "msg"), "delivered once: {more:?}");
}

on_both_backends!(
    refuses_bad_tokens,
    enforces_topic_acl,
    send_ack_deliver_echo_and_duplicates,
    bad_input_gets_errors_and_loses_nothing,
    catch_up_after_offline,
    presence_counts_devices,
    websocket_v4_and_v5_and_keepalive_zero,
    silent_device_is_dropped_and_handshakes_time_out,
    wills_follow_how_a_device_leaves,
    mqtt5_flow_control_and_packet_size,
    same_device_takes_over_and_qos2_is_forwarded_once,
);
