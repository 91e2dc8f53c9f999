//! What travels and what is stored, byte for byte: one-to-one messages stored in runs
//! (one set of statements per run) keep every rule and position of storing them one by one,
//! and the compact envelope with server topic aliases carries the same ops as JSON.

mod common;

use common::raw::Raw;
use common::text_message;
use common::Backend;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::QoS;
use serde_json::{json, Value};
use store::envelope::ChatType;
use store::messages::{NewMessage, Outcome};

async fn one_to_one_runs_keep_every_rule(backend: Backend) {
    let t = common::spawn_app(backend).await;
    for user in ["ann", "ben", "cat"] {
        t.user(user).await;
    }
    // cat blocks ann.
    let (status, body) = t
        .post(
            "/users/cat/blocks/users",
            Some(&t.app_token),
            json!({"usernames": ["ann"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let store = &t.server.store;
    let app_id = store.find_app(&t.org, &t.app).await.unwrap().id;
    let (status, body) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"groupname": "g", "owner": "ann", "members": ["ben"], "public": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let group = body["data"]["groupid"].as_str().unwrap().to_string();
    let mut in_group = text_message(&app_id, "ann", &group, "g1");
    in_group.chat = ChatType::Group;

    let batch = vec![
        text_message(&app_id, "ann", "ben", "c1"),
        text_message(&app_id, "ben", "ann", "c2"),
        text_message(&app_id, "ann", "ben", "c1"), // repeat within the batch
        text_message(&app_id, "ann", "nobody", "c3"),
        text_message(&app_id, "ann", "cat", "c4"), // blocked
        in_group,                                  // splits the run
        text_message(&app_id, "ann", "ann", "c5"), // to oneself
        text_message(&app_id, "ben", "ann", "c6"),
    ];
    let outcomes = store.store_batch(&batch).await.unwrap();
    let stored = |i: usize| match &outcomes[i] {
        Outcome::Stored { msg, useqs } => (msg.clone(), useqs.clone()),
        other => panic!("message {i}: {other:?}"),
    };
    let (c1, c1_useqs) = stored(0);
    let (c2, _) = stored(1);
    let (g1, _) = stored(5);
    let (c5, c5_useqs) = stored(6);
    let (c6, _) = stored(7);
    assert_eq!((c1.conv.as_str(), c1.seq), ("u:ann:ben", 1));
    assert_eq!((c2.conv.as_str(), c2.seq), ("u:ann:ben", 2));
    assert_eq!((c6.conv.as_str(), c6.seq), ("u:ann:ben", 3));
    assert_eq!((c5.conv.as_str(), c5.seq), ("u:ann:ann", 1));
    let mut c1_useqs = c1_useqs;
    c1_useqs.sort();
    assert_eq!(c1_useqs, vec![("ann".to_string(), 1), ("ben".to_string(), 1)]);
    assert_eq!(
        c5_useqs,
        vec![("ann".to_string(), 4)],
        "one inbox entry for a message to oneself"
    );
    match &outcomes[2] {
        Outcome::Duplicate { msg, sender_useq } => {
            assert_eq!((msg.id.as_str(), *sender_useq), (c1.id.as_str(), Some(1)))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &outcomes[3],
        Outcome::Refused {
            code: "unknown_recipient",
            ..
        }
    ));
    assert!(matches!(&outcomes[4], Outcome::Refused { code: "blocked", .. }));
    assert_eq!(g1.seq, 1);

    // Inboxes are gap-free and in the batch's order: ann has c1, c2, g1, c5, c6.
    let (ann, _) = store.inbox_after(&app_id, "ann", 0, 100).await.unwrap();
    let order: Vec<(i64, String)> = ann
        .iter()
        .map(|d| (d.useq.unwrap(), d.body["msg"].as_str().unwrap().into()))
        .collect();
    let expected: Vec<(i64, String)> = ["c1", "c2", "g1", "c5", "c6"]
        .iter()
        .enumerate()
        .map(|(i, c)| (i as i64 + 1, c.to_string()))
        .collect();
    assert_eq!(order, expected);
    let (ben, _) = store.inbox_after(&app_id, "ben", 0, 100).await.unwrap();
    assert_eq!(
        ben.iter().map(|d| d.useq.unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    // Conversation list: ben has read what he sent (c6, seq 3), ann has read c1 only.
    let (_, convs) = t.get("/users/ben/conversations", &t.app_token).await;
    let row = |v: &Value, conv: &str| {
        v["entities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["conv"] == conv)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&convs, "u:ann:ben")["read_seq"], 3);
    let (_, convs) = t.get("/users/ann/conversations", &t.app_token).await;
    assert_eq!(row(&convs, "u:ann:ben")["read_seq"], 1);
    assert_eq!(row(&convs, "u:ann:ben")["unread"], 2);

    // A later batch: c2 again is a duplicate from the database; the next message follows on.
    let outcomes = store
        .store_batch(&[
            text_message(&app_id, "ben", "ann", "c2"),
            text_message(&app_id, "ben", "ann", "c7"),
        ])
        .await
        .unwrap();
    match &outcomes[0] {
        Outcome::Duplicate { msg, sender_useq } => {
            assert_eq!((msg.id.as_str(), *sender_useq), (c2.id.as_str(), Some(2)))
        }
        other => panic!("{other:?}"),
    }
    match &outcomes[1] {
        Outcome::Stored { msg, .. } => assert_eq!(msg.seq, 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.count_messages(&app_id).await.unwrap(), 6);

    // Rows travel to the database as JSON: whatever a body, ext or cid holds comes back
    // byte for byte (quotes, backslashes, escapes spelled in the text, non-ASCII, emoji).
    let mut odd = text_message(&app_id, "ann", "ben", "cid \"é\" \\ 😀");
    odd.body = json!({"msg": "a \"quote\", a \\ backslash, \\u0000 spelled, é, ✓, 😀, \u{1}"}).to_string();
    odd.ext = Some(json!({"k": ["v", 1, null], "nested": {"x": "\n"}}).to_string());
    let outcomes = store.store_batch(std::slice::from_ref(&odd)).await.unwrap();
    let Outcome::Stored { msg, .. } = &outcomes[0] else {
        panic!("{:?}", outcomes[0])
    };
    let back = store
        .history(&app_id, "u:ann:ben", "ann", msg.seq, msg.seq, 1)
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].body.as_str(), back[0].ext.as_deref(), back[0].cid.as_str()),
        (odd.body.as_str(), odd.ext.as_deref(), odd.cid.as_str())
    );
    assert_eq!(&back[0], msg, "what the batch said it stored is what was stored");
}

/// Reads the next PUBLISH from a 3.1.1 connection, acks it, and decodes its compact payload.
async fn next_compact4(raw: &mut Raw) -> (String, Value) {
    loop {
        if let Some(v4::Packet::Publish(p)) = raw.recv4().await {
            if p.qos != QoS::AtMostOnce {
                raw.send4(v4::Packet::PubAck(v4::PubAck::new(p.pkid))).await;
            }
            let json = store::compact::to_json(&p.payload).expect("a compact payload");
            return (p.topic, serde_json::from_slice(&json).unwrap());
        }
    }
}

/// The same for MQTT 5, with the topic alias the server set (if any).
async fn next_compact5(raw: &mut Raw) -> (String, Option<u16>, Value) {
    loop {
        if let Some(v5::Packet::Publish(p)) = raw.recv5().await {
            if p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce {
                raw.send5(v5::Packet::PubAck(v5::PubAck::new(p.pkid, None))).await;
            }
            let json = store::compact::to_json(&p.payload).expect("a compact payload");
            let alias = p.properties.and_then(|props| props.topic_alias);
            return (
                String::from_utf8(p.topic.to_vec()).unwrap(),
                alias,
                serde_json::from_slice(&json).unwrap(),
            );
        }
    }
}

fn compact(envelope: Value) -> bytes::Bytes {
    store::compact::from_json(envelope.to_string().as_bytes())
        .unwrap()
        .into()
}

async fn compact_envelope_and_server_topic_aliases(backend: Backend) {
    let t = common::spawn_app(backend).await;
    let ann_token = t.user("ann").await;
    let ben_token = t.user("ben").await;
    let cal_token = t.user("cal").await;

    // ann: MQTT 5, compact by user property, takes 4 topic aliases from the server.
    let mut ann = Raw::tcp(t.mqtt_port()).await;
    let props = v5::ConnectProperties {
        topic_alias_max: Some(4),
        user_properties: vec![("enc".into(), "compact".into())],
        ..Default::default()
    };
    let ack = ann.connect5_with("ann-phone", "ann", &ann_token, 30, Some(props)).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let filter = v5::Filter::new(t.inbox("ann"), rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    ann.send5(v5::Packet::Subscribe(v5::Subscribe::new(filter, None))).await;
    assert!(matches!(ann.recv5().await, Some(v5::Packet::SubAck(_))));
    // ben: 3.1.1, compact by username suffix.
    let mut ben = Raw::tcp(t.mqtt_port()).await;
    let code = ben.connect4("ben-phone", "ben?enc=compact", &ben_token, 30).await;
    assert_eq!(code, v4::ConnectReturnCode::Success);
    ben.subscribe4(&t.inbox("ben")).await;
    // cal: plain JSON, as before.
    let mut cal = t.device("cal", &cal_token, "cal-phone").await;

    // ann sends to ben and to cal, in the compact short form.
    for (cid, to) in [("c1", "ben"), ("c2", "cal")] {
        let mut publish = v5::Publish::new(
            t.outbox("ann"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            compact(
                json!({"op":"send","cid":cid,"chat":"user","to":to,"type":"txt","body":{"msg":"twenty characters!!!"}}),
            ),
            None,
        );
        publish.pkid = if cid == "c1" { 1 } else { 2 };
        ann.send5(v5::Packet::Publish(publish)).await;
    }
    // Acks arrive compact; the first names the inbox topic with alias 1, the next only the alias.
    let (topic, alias, first) = next_compact5(&mut ann).await;
    assert_eq!((topic.as_str(), alias), (t.inbox("ann").as_str(), Some(1)));
    assert_eq!((first["op"].as_str(), first["cid"].as_str()), (Some("ack"), Some("c1")));
    let (topic, alias, second) = next_compact5(&mut ann).await;
    assert_eq!((topic.as_str(), alias), ("", Some(1)));
    assert_eq!(
        (second["op"].as_str(), second["cid"].as_str()),
        (Some("ack"), Some("c2"))
    );

    // ben reads it compact; cal reads the same message as JSON.
    let (topic, msg) = next_compact4(&mut ben).await;
    assert_eq!(topic, t.inbox("ben"));
    assert_eq!(msg["op"], "msg");
    assert_eq!(msg["from"], "ann");
    assert_eq!(msg["conv"], "u:ann:ben");
    assert_eq!(msg["body"], json!({"msg": "twenty characters!!!"}));
    assert_eq!(msg["id"], first["id"]);
    let msg = cal.next_op("msg").await;
    assert_eq!((msg["from"].as_str(), msg["cid"].as_str()), (Some("ann"), None));

    // ben answers with a map-form op and gets the synced page compact too.
    let publish = v4::Publish::from_bytes(
        t.outbox("ben"),
        QoS::AtLeastOnce,
        compact(json!({"op":"sync","cid":"s1","after":0,"limit":10})),
    );
    let mut publish = publish;
    publish.pkid = 1;
    ben.send4(v4::Packet::Publish(publish)).await;
    let synced = loop {
        let (_, v) = next_compact4(&mut ben).await;
        if v["op"] == "synced" {
            break v;
        }
    };
    assert_eq!(synced["msgs"][0]["body"]["msg"], "twenty characters!!!");
    assert_eq!(synced["msgs"][0]["useq"], 1);

    // Bytes that are not a compact envelope get an error, and the connection goes on.
    let mut publish = v4::Publish::from_bytes(
        t.outbox("ben"),
        QoS::AtLeastOnce,
        bytes::Bytes::from_static(b"{\"op\":\"send\"}"),
    );
    publish.pkid = 2;
    ben.send4(v4::Packet::Publish(publish)).await;
    let error = loop {
        let (_, v) = next_compact4(&mut ben).await;
        if v["op"] == "error" {
            break v;
        }
    };
    assert_eq!(error["code"], "bad_envelope", "{error}");
    let mut publish = v4::Publish::from_bytes(
        t.outbox("ben"),
        QoS::AtLeastOnce,
        compact(json!({"op":"send","cid":"c3","chat":"user","to":"ann","type":"txt","body":{"msg":"still here"}})),
    );
    publish.pkid = 3;
    ben.send4(v4::Packet::Publish(publish)).await;
    loop {
        let (_, v) = next_compact4(&mut ben).await;
        if v["op"] == "ack" {
            assert_eq!(v["cid"], "c3");
            break;
        }
    }
    let (topic, alias, msg) = next_compact5(&mut ann).await;
    assert_eq!((topic.as_str(), alias), ("", Some(1)));
    assert_eq!(msg["body"]["msg"], "still here");
}

on_both_backends!(
    one_to_one_runs_keep_every_rule,
    compact_envelope_and_server_topic_aliases
);

/// SQLite: once the message writer has been idle for a moment it checkpoints the WAL (copies
/// its pages into the database file), so the work falls between bursts rather than inside
/// the commit of whichever batch took the WAL past SQLite's own threshold (1,000 pages, far
/// more than this batch writes: without the idle checkpoint the file would not grow).
#[tokio::test]
async fn sqlite_checkpoints_the_wal_once_the_writer_is_idle() {
    let t = common::spawn_app(Backend::Sqlite).await;
    t.user("ann").await;
    t.user("ben").await;
    let store = &t.server.store;
    let app_id = store.find_app(&t.org, &t.app).await.unwrap().id;
    let path = t.database_url.trim_start_matches("sqlite://").to_string();
    let size = || std::fs::metadata(&path).unwrap().len();
    // Whatever setting up wrote, checkpointed and settled.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = size();
    let batch: Vec<NewMessage> = (0..300)
        .map(|n| text_message(&app_id, "ann", "ben", &format!("c{n}")))
        .collect();
    let outcomes = store.store_batch(&batch).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Stored { .. })));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while size() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file is still {before} bytes: the WAL was not checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
