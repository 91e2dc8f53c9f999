//! Order holds while batches overlap. The bridge checks one batch while it stores the next
//! and answers the one before (`bridge/src/lib.rs`, `Committing`); stores follow one another
//! in batch order, and so do answers. Several senders write at once, so their messages span
//! many batches, and still:
//! - each sender's acks come in the order it sent, with its conversation's seq rising by one;
//! - the receiver gets every message once, in its inbox order (`useq` rising by one);
//! - a `sync` written right after a burst finds the whole burst, and is answered after it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use common::raw::Raw;
use common::Backend;
use rumqttc::mqttbytes::v4;
use rumqttc::QoS;
use serde_json::{json, Value};

const SENDERS: usize = 10;
const EACH: usize = 150;

async fn order_holds_across_overlapping_batches(backend: Backend) {
    let t = common::spawn_app(backend).await;
    let bob_token = t.user("bob").await;
    let mut bob = t.device("bob", &bob_token, "bob-phone").await;

    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let user = format!("s{i}");
        let token = t.user(&user).await;
        let mut raw = Raw::tcp(t.mqtt_port()).await;
        assert_eq!(
            raw.connect4(&format!("{user}-phone"), &user, &token, 30).await,
            v4::ConnectReturnCode::Success
        );
        raw.subscribe4(&t.inbox(&user)).await;
        senders.push((user, raw));
    }

    let mut tasks = Vec::new();
    for (user, mut raw) in senders {
        let outbox = t.outbox(&user);
        tasks.push(tokio::spawn(async move {
            // The whole burst and then a sync of the sender's own inbox, in one write.
            let mut bytes = BytesMut::new();
            let mut envelopes: Vec<Value> = (0..EACH)
                .map(|n| json!({"op": "send", "cid": format!("{user}-{n}"), "chat": "user", "to": "bob", "type": "txt", "body": {"msg": format!("{n}")}}))
                .collect();
            envelopes.push(json!({"op": "sync", "cid": "after-burst", "after": 0, "limit": 200}));
            for (i, envelope) in envelopes.iter().enumerate() {
                let mut publish = v4::Publish::new(&outbox, QoS::AtLeastOnce, envelope.to_string());
                publish.pkid = i as u16 + 1;
                v4::Packet::Publish(publish).write(&mut bytes, usize::MAX).unwrap();
            }
            raw.write(&bytes).await;
            let mut acks = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                assert!(tokio::time::Instant::now() < deadline, "{user}: only {} acks", acks.len());
                let (_, envelope) = raw.next_publish4().await;
                match envelope["op"].as_str() {
                    Some("ack") => acks.push(envelope),
                    Some("synced") => return (user, acks, envelope),
                    Some("error") => panic!("{user}: {envelope}"),
                    _ => {}
                }
            }
        }));
    }

    let mut sent_by: HashMap<String, Vec<String>> = HashMap::new();
    for task in tasks {
        let (user, acks, synced) = task.await.unwrap();
        assert_eq!(
            acks.len(),
            EACH,
            "{user}: the sync was answered before the burst's acks"
        );
        let cids: Vec<&str> = acks.iter().map(|a| a["cid"].as_str().unwrap()).collect();
        let sent: Vec<String> = (0..EACH).map(|n| format!("{user}-{n}")).collect();
        assert_eq!(cids, sent, "{user}: acks out of the order sent");
        for (n, ack) in acks.iter().enumerate() {
            assert_eq!(ack["seq"], json!(n + 1), "{user}: seqs must rise by one: {ack}");
        }
        let found: Vec<&str> = synced["msgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["cid"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            found, sent,
            "{user}: the sync after the burst must find all of it, in order"
        );
        sent_by.insert(
            user,
            acks.iter().map(|a| a["id"].as_str().unwrap().to_string()).collect(),
        );
    }

    // Bob: every message once, in inbox order, and each sender's in the order sent.
    let mut useqs = Vec::new();
    let mut from: HashMap<String, Vec<String>> = HashMap::new();
    while useqs.len() < SENDERS * EACH {
        let msg = bob.next_op("msg").await;
        useqs.push(msg["useq"].as_i64().unwrap());
        from.entry(msg["from"].as_str().unwrap().to_string())
            .or_default()
            .push(msg["id"].as_str().unwrap().to_string());
    }
    let expected: Vec<i64> = (1..=(SENDERS * EACH) as i64).collect();
    assert_eq!(useqs, expected, "bob's deliveries must follow his inbox");
    assert_eq!(from, sent_by, "bob must get each sender's messages in the order sent");
}

on_both_backends!(order_holds_across_overlapping_batches);
