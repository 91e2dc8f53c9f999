//! Every outcome stays tied to its own send: an `ack`, a refusal or a duplicate's repeated
//! ack names the message of the `cid` it answers, whatever else shares its batch (repeats of
//! a `cid` at any position, other senders, one-to-one, group and chatroom messages mixed).
//!
//! A repeated `cid` inside one batch used to settle its outcome before the run of
//! one-to-one messages still open around it, shifting every later ack by one: devices were
//! acked with other users' message ids, conversations and `useq`s.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::BytesMut;
use common::raw::Raw;
use common::Backend;
use rumqttc::mqttbytes::v4;
use rumqttc::QoS;
use serde_json::{json, Value};
use store::envelope::ChatType;
use store::messages::{NewMessage, Outcome};

fn message(app_id: &str, chat: ChatType, from: &str, to: &str, cid: &str) -> NewMessage {
    NewMessage {
        chat,
        sender_device: format!("{from}-d"),
        body: json!({"msg": format!("{from}/{cid}")}).to_string(),
        ..common::text_message(app_id, from, to, cid)
    }
}

/// Checks that each outcome answers its own message: the stored (or earlier stored) message
/// has the send's sender, cid and body; refusals only where expected.
fn assert_tied(batch: &[NewMessage], outcomes: &[Outcome], context: &str) {
    assert_eq!(batch.len(), outcomes.len(), "{context}: one outcome per message");
    for (i, (m, outcome)) in batch.iter().zip(outcomes).enumerate() {
        match outcome {
            Outcome::Stored { msg, .. } | Outcome::Duplicate { msg, .. } => {
                assert_eq!(
                    (msg.sender.as_str(), msg.cid.as_str(), msg.body.as_str()),
                    (m.sender.as_str(), m.cid.as_str(), m.body.as_str()),
                    "{context}: outcome {i} answers another message"
                );
            }
            Outcome::Refused { code, .. } => {
                assert_eq!(m.to, "nobody", "{context}: message {i} refused ({code})");
            }
        }
    }
}

/// Creates a group or chatroom of ann, ben and cat; returns its id.
async fn channel(t: &common::TestApp, kind: &str) -> String {
    let (status, body) = t
        .post(
            &format!("/{kind}"),
            Some(&t.app_token),
            json!({"groupname": "g", "owner": "ann", "members": ["ben", "cat"], "public": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A group's id is `groupid`, a chatroom's `id`.
    body["data"]["groupid"]
        .as_str()
        .or(body["data"]["id"].as_str())
        .unwrap()
        .to_string()
}

/// Repeats at every position of a batch, mixed senders and chat types, straight through
/// `store_batch`.
async fn repeats_at_every_position(backend: Backend) {
    let t = common::spawn_app(backend).await;
    for user in ["ann", "ben", "cat"] {
        t.user(user).await;
    }
    let store = &t.server.store;
    let app_id = store.find_app(&t.org, &t.app).await.unwrap().id;
    let group = channel(&t, "chatgroups").await;
    let room = channel(&t, "chatrooms").await;

    // A base batch of every kind, then the same batch with a repeat of message `k` inserted
    // at position `p`, for every k and p. Each round uses fresh cids.
    let base: Vec<(ChatType, &str, &str)> = vec![
        (ChatType::User, "ann", "ben"),
        (ChatType::User, "ben", "ann"),
        (ChatType::Group, "ann", &group),
        (ChatType::User, "cat", "ann"),
        (ChatType::User, "ann", "nobody"),
        (ChatType::Room, "ben", &room),
        (ChatType::User, "ann", "cat"),
        (ChatType::User, "ann", "ben"),
    ];
    let mut round = 0;
    for k in 0..base.len() {
        for p in 0..=base.len() {
            round += 1;
            let mut batch: Vec<NewMessage> = base
                .iter()
                .enumerate()
                .map(|(i, (chat, from, to))| message(&app_id, *chat, from, to, &format!("r{round}-{i}")))
                .collect();
            let repeat = batch[k].clone();
            batch.insert(p, repeat);
            let outcomes = store.store_batch(&batch).await.unwrap();
            assert_tied(&batch, &outcomes, &format!("repeat of {k} at {p}"));
            // The repeat is a duplicate of the first one, unless it was refused.
            let first = if p <= k { k + 1 } else { k };
            match (&outcomes[first.min(p)], &outcomes[first.max(p)]) {
                (Outcome::Stored { msg: a, .. }, Outcome::Duplicate { msg: b, .. }) => assert_eq!(a.id, b.id),
                (Outcome::Refused { .. }, Outcome::Refused { .. }) => {}
                other => panic!("repeat of {k} at {p}: {other:?}"),
            }
        }
    }
    // And a batch that is all repeats, interleaved: a a b a b c a.
    let batch: Vec<NewMessage> = ["a", "a", "b", "a", "b", "c", "a"]
        .iter()
        .map(|cid| message(&app_id, ChatType::User, "ann", "ben", &format!("last-{cid}")))
        .collect();
    let outcomes = store.store_batch(&batch).await.unwrap();
    assert_tied(&batch, &outcomes, "interleaved repeats");
}

/// Two devices write bursts with repeated cids in single TCP writes at the same time: every
/// ack names the device's own message, its own conversation and its own `useq`, and no
/// device is sent its own message back.
async fn acks_over_the_wire(backend: Backend) {
    let t = common::spawn_app(backend).await;
    let mut tokens = HashMap::new();
    for user in ["alice", "carol", "bob"] {
        tokens.insert(user, t.user(user).await);
    }
    let (status, body) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"groupname": "g", "owner": "alice", "members": ["carol", "bob"], "public": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let group = body["data"]["groupid"].as_str().unwrap().to_string();

    let mut senders = Vec::new();
    for user in ["alice", "carol"] {
        let mut raw = Raw::tcp(t.mqtt_port()).await;
        assert_eq!(
            raw.connect4(&format!("{user}-phone"), user, &tokens[user], 30).await,
            v4::ConnectReturnCode::Success
        );
        raw.subscribe4(&t.inbox(user)).await;
        senders.push((user, raw));
    }

    // Per round, in one write: a, a, b, a, group g, b, a.
    const ROUNDS: usize = 40;
    let pattern = ["a", "a", "b", "a", "g", "b", "a"];
    let mut tasks = Vec::new();
    for (user, mut raw) in senders {
        let outbox = t.outbox(user);
        let group = group.clone();
        tasks.push(tokio::spawn(async move {
            let mut bytes = BytesMut::new();
            let mut pkid = 0u16;
            for round in 0..ROUNDS {
                for cid in pattern {
                    pkid += 1;
                    let (chat, to) = if cid == "g" { ("group", group.as_str()) } else { ("user", "bob") };
                    let envelope = json!({"op": "send", "cid": format!("{user}-{round}-{cid}"), "chat": chat, "to": to, "type": "txt", "body": {"msg": format!("{user} {round} {cid}")}});
                    let mut publish = v4::Publish::new(&outbox, QoS::AtLeastOnce, envelope.to_string());
                    publish.pkid = pkid;
                    v4::Packet::Publish(publish).write(&mut bytes, usize::MAX).unwrap();
                }
            }
            raw.write(&bytes).await;
            // One ack per publish, repeats included.
            let mut acks = Vec::new();
            let mut others = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while acks.len() < ROUNDS * pattern.len() {
                assert!(tokio::time::Instant::now() < deadline, "{user}: only {} acks", acks.len());
                let (_, envelope) = raw.next_publish4().await;
                match envelope["op"].as_str() {
                    Some("ack") => acks.push(envelope),
                    Some("error") => panic!("{user}: {envelope}"),
                    _ => others.push(envelope),
                }
            }
            (user, acks, others)
        }));
    }
    let store = &t.server.store;
    let app_id = store.find_app(&t.org, &t.app).await.unwrap().id;
    for task in tasks {
        let (user, acks, others) = task.await.unwrap();
        // Every ack is for one of this user's cids, and a cid always gets the same message.
        let mut ids: HashMap<String, String> = HashMap::new();
        for ack in &acks {
            let cid = ack["cid"].as_str().unwrap();
            assert!(cid.starts_with(&format!("{user}-")), "{user} acked with {ack}");
            let conv = ack["conv"].as_str().unwrap();
            if cid.ends_with("-g") {
                assert_eq!(conv, format!("g:{group}"), "{user}: {ack}");
            } else {
                let mut pair = [user, "bob"];
                pair.sort();
                assert_eq!(conv, format!("u:{}:{}", pair[0], pair[1]), "{user}: {ack}");
            }
            let id = ack["id"].as_str().unwrap().to_string();
            if let Some(earlier) = ids.insert(cid.to_string(), id.clone()) {
                assert_eq!(earlier, id, "{user}: cid {cid} acked with two ids");
            }
        }
        let distinct: HashSet<&String> = ids.values().collect();
        assert_eq!(distinct.len(), ids.len(), "{user}: two cids acked with one id");
        assert_eq!(ids.len(), ROUNDS * 3, "{user}: a, b, g per round, and nothing else");
        // Each ack's useq is the sender's inbox place of that very message.
        let (inbox, _) = store.inbox_after(&app_id, user, 0, 10_000).await.unwrap();
        let places: HashMap<i64, (String, String)> = inbox
            .iter()
            .map(|d| (d.useq.unwrap(), (d.id.clone(), d.cid.clone().unwrap_or_default())))
            .collect();
        for ack in &acks {
            let useq = ack["useq"]
                .as_i64()
                .unwrap_or_else(|| panic!("{user}: ack without useq {ack}"));
            let (id, _) = &places[&useq];
            assert_eq!(
                id,
                ack["id"].as_str().unwrap(),
                "{user}: ack's useq names another message: {ack}"
            );
        }
        // The sending device never gets its own messages echoed (its other devices would).
        for envelope in &others {
            if envelope["op"] == "msg" {
                assert_ne!(
                    envelope["from"],
                    Value::from(user),
                    "{user} got its own message: {envelope}"
                );
            }
        }
    }
}

on_both_backends!(repeats_at_every_position, acks_over_the_wire);
