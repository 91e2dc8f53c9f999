//! Cluster mode: three chatd nodes on one PostgreSQL database and the test NATS. Every live
//! feature crosses nodes: one-to-one messages both ways with the ack and the echo to the
//! sender's devices elsewhere, receipts, typing, groups, chatrooms, events from another
//! node's API, presence summed over nodes, the push decision, kicks, deletion, token
//! revocation, room kicks and session takeover; and deliveries reach only nodes that hold a
//! recipient. (Killing a node is in `cluster_chaos.rs`: it needs real processes.)

mod common;

use std::time::Duration;

use common::{spawn_cluster, Device, TestApp};
use serde_json::{json, Value};

/// The deliveries a node has taken from NATS so far.
fn received(node: &TestApp) -> u64 {
    node.server
        .cluster
        .as_ref()
        .expect("cluster mode")
        .stats()
        .deliveries_in
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// The next presence publish a watcher gets.
async fn next_presence(dev: &mut Device) -> Value {
    let packet = dev
        .wait_for(|p| matches!(p, rumqttc::Packet::Publish(p) if p.topic.contains("/presence/")))
        .await;
    let rumqttc::Packet::Publish(p) = packet else {
        unreachable!()
    };
    serde_json::from_slice(&p.payload).unwrap()
}

/// Presence publishes until one has `devices` devices (the retained one may be older).
async fn presence_reaches(dev: &mut Device, devices: u64) -> Value {
    loop {
        let p = next_presence(dev).await;
        if p["devices"] == devices {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_receipts_typing_and_events_cross_nodes() {
    let nodes = spawn_cluster(3, |_, _| {}).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let carol = c.user("carol").await;
    let mut alice_phone = a.device("alice", &alice, "alice-phone").await;
    let mut alice_tablet = c.device("alice", &alice, "alice-tablet").await;
    let mut bob_phone = b.device("bob", &bob, "bob-phone").await;

    // alice (A) -> bob (B): stored, acked on A, delivered on B, echoed to her tablet on C.
    alice_phone.send_text("c1", "bob", "hello from A").await;
    let ack = alice_phone.next_op("ack").await;
    let msg = bob_phone.next_op("msg").await;
    assert_eq!(
        (msg["id"].clone(), msg["body"]["msg"].clone()),
        (ack["id"].clone(), json!("hello from A"))
    );
    let echo = alice_tablet.next_op("msg").await;
    assert_eq!(
        (echo["id"].clone(), echo["cid"].as_str(), echo["from_device"].as_str()),
        (ack["id"].clone(), Some("c1"), Some("alice-phone"))
    );

    // Receipts: bob reads on B; alice's devices on A and C get the receipt.
    bob_phone
        .publish(json!({"op": "read", "conv": msg["conv"], "seq": msg["seq"]}))
        .await;
    for dev in [&mut alice_phone, &mut alice_tablet] {
        let receipt = dev.next_op("receipt").await;
        assert_eq!(
            (receipt["type"].as_str(), receipt["by"].as_str()),
            (Some("read"), Some("bob"))
        );
    }

    // bob (B) -> alice: both her devices, on A and C.
    bob_phone.send_text("c2", "alice", "hi back").await;
    let back = bob_phone.next_op("ack").await;
    for dev in [&mut alice_phone, &mut alice_tablet] {
        let got = dev.next_op("msg").await;
        assert_eq!(got["id"], back["id"], "{got}");
    }

    // Typing from C reaches B.
    alice_tablet
        .publish(json!({"op": "typing", "chat": "user", "to": "bob"}))
        .await;
    let typing = bob_phone.next_op("typing").await;
    assert_eq!(typing["from"], "alice");

    // A message sent through A's API reaches bob on B.
    let (status, body) = a
        .post(
            "/messages/users",
            Some(&a.app_token),
            json!({"from": "carol", "to": ["bob"], "type": "txt", "body": {"msg": "from the API"}}),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    let api_msg = bob_phone.next_op("msg").await;
    assert_eq!(api_msg["body"]["msg"], "from the API");

    // Interest: carol is only on A; bob (B) -> carol crosses to A and nowhere else.
    let carol_dev = a.device("carol", &carol, "carol-phone").await;
    let (before_a, before_c) = (received(a), received(c));
    bob_phone.send_text("c3", "carol", "only A holds carol").await;
    bob_phone.next_op("ack").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(received(a) > before_a, "the delivery did not reach A");
    assert_eq!(received(c), before_c, "C holds no recipient but got the delivery");

    // Once carol's last device on A leaves, A drops the subject: nothing crosses for her.
    drop(carol_dev);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_a = received(a);
    bob_phone.send_text("c4", "carol", "nobody holds carol").await;
    bob_phone.next_op("ack").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(a), before_a, "A still got carol's deliveries after she left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_chatrooms_cross_nodes() {
    let nodes = spawn_cluster(3, |_, _| {}).await;
    let tokens = [
        nodes[0].user("m0").await,
        nodes[0].user("m1").await,
        nodes[0].user("m2").await,
    ];
    let mut devs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        devs.push(node.device(&format!("m{i}"), &tokens[i], &format!("m{i}-dev")).await);
    }

    // A group with a member on every node.
    let (status, created) = nodes[1]
        .post(
            "/chatgroups",
            Some(&nodes[1].app_token),
            json!({"name": "hikers", "owner": "m0", "members": ["m1", "m2"]}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let gid = created["data"]["groupid"].as_str().unwrap().to_string();
    devs[0].send_to("group", "g1", &gid, "to all nodes").await;
    let ack = devs[0].next_op("ack").await;
    for dev in &mut devs[1..] {
        let msg = dev.next_op("msg").await;
        assert_eq!(
            (msg["id"].clone(), msg["chat"].as_str()),
            (ack["id"].clone(), Some("group"))
        );
    }
    devs[2].send_to("group", "g2", &gid, "from C").await;
    devs[2].next_op("ack").await;
    for dev in &mut devs[..2] {
        assert_eq!(dev.next_op("msg").await["body"]["msg"], "from C");
    }

    // A chatroom: no inbox, so only the live path carries it.
    let (status, room) = nodes[2]
        .post(
            "/chatrooms",
            Some(&nodes[2].app_token),
            json!({"name": "lobby", "owner": "m0", "members": ["m1", "m2"]}),
        )
        .await;
    assert_eq!(status, 200, "{room}");
    let rid = room["data"]["id"].as_str().unwrap().to_string();
    let topic = format!("chat/demo/chat/room/{rid}");
    for dev in &mut devs {
        assert!(dev.subscribe(&topic).await);
    }
    devs[1].send_to("room", "r1", &rid, "room from B").await;
    devs[1].next_op("ack").await;
    for i in [0, 2] {
        let msg = devs[i].next_op("msg").await;
        assert_eq!(
            (msg["chat"].as_str(), msg["body"]["msg"].as_str()),
            (Some("room"), Some("room from B"))
        );
    }

    // Kicked through A's API: m2's connection on C stops getting the room at once.
    let (status, body) = nodes[0]
        .delete(&format!("/chatrooms/{rid}/users/m2"), &nodes[0].app_token)
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    devs[1].send_to("room", "r2", &rid, "after the kick").await;
    devs[1].next_op("ack").await;
    assert_eq!(devs[0].next_op("msg").await["body"]["msg"], "after the kick");
    let leaked: Vec<Value> = devs[2]
        .collect(Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|m| m["op"] == "msg")
        .collect();
    assert!(
        leaked.is_empty(),
        "a kicked member on another node still got {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_push_decision_and_controls_cross_nodes() {
    let nodes = spawn_cluster(3, |_, _| {}).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let watcher = a.user("watcher").await;
    let mut watch = a.device("watcher", &watcher, "w").await;
    assert!(watch.subscribe("chat/demo/chat/presence/bob").await);

    // Devices on B and C add up on A.
    let bob_b = b.device("bob", &bob, "bob-phone").await;
    presence_reaches(&mut watch, 1).await;
    let bob_c = c.device("bob", &bob, "bob-tablet").await;
    let p = presence_reaches(&mut watch, 2).await;
    assert_eq!(p["status"], "online");
    drop(bob_c);
    presence_reaches(&mut watch, 1).await;

    // Push decision on A's bridge: bob is online on B, so no push; offline everywhere, pushed.
    let binding = json!({"device_id": "bob-phone", "device_token": "tok-bob", "notifier_name": "fcm"});
    assert_eq!(a.put("/users/bob/push/binding", &bob, binding).await.0, 200);
    let last_result = || async {
        let (_, body) = a.get("/users/bob/push/binding", &bob).await;
        body["entities"][0]["last_result"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut alice_dev = a.device("alice", &alice, "alice-phone").await;
    alice_dev.send_text("p1", "bob", "you are online on B").await;
    alice_dev.next_op("ack").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(last_result().await, "none", "pushed to a user online on another node");
    drop(bob_b);
    presence_reaches(&mut watch, 0).await;
    alice_dev.send_text("p2", "bob", "offline everywhere").await;
    alice_dev.next_op("ack").await;
    let mut tried = String::new();
    for _ in 0..100 {
        tried = last_result().await;
        if tried != "none" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The app has no FCM credentials: the push was attempted, which is what is decided here.
    assert!(
        tried.starts_with("failed"),
        "no push for a user offline everywhere: {tried:?}"
    );

    // Takeover: the same device id on C closes the one on B.
    let mut first = b.device("bob", &bob, "bob-phone").await;
    presence_reaches(&mut watch, 1).await;
    let mut second = c.device("bob", &bob, "bob-phone").await;
    assert!(
        first.closed_within(Duration::from_secs(3)).await,
        "the older connection on B stayed open"
    );
    alice_dev.send_text("t1", "bob", "to the newer one").await;
    assert_eq!(second.next_op("msg").await["body"]["msg"], "to the newer one");
    assert!(
        !second.closed_within(Duration::from_millis(300)).await,
        "the newer connection was closed too"
    );

    // A kick through A's API closes bob's connection on C.
    let (status, body) = a.get("/users/bob/disconnect", &a.app_token).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        second.closed_within(Duration::from_secs(3)).await,
        "kick did not reach C"
    );

    // Revoking tokens through B closes the connection on C, and the old token is refused.
    let mut third = c.device("bob", &bob, "bob-phone").await;
    let (status, body) = b.post("/users/bob/revoke_tokens", Some(&b.app_token), json!({})).await;
    assert!(status < 300, "{status} {body}");
    assert!(
        third.closed_within(Duration::from_secs(3)).await,
        "revocation did not reach C"
    );

    // Deleting a user through C closes their device on A.
    let fresh = a.user_token("bob").await;
    let mut fourth = a.device("bob", &fresh, "bob-laptop").await;
    let (status, body) = c.delete("/users/bob", &c.app_token).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        fourth.closed_within(Duration::from_secs(3)).await,
        "deletion did not reach A"
    );
    presence_reaches(&mut watch, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_setting_that_cannot_work_stops_the_start_with_its_name() {
    let db = common::fresh_database(common::Backend::Sqlite).await;
    let nats = common::nats_url();
    let cases = [
        (
            "nats://127.0.0.1:1",
            "chatd",
            1000,
            3000,
            "cluster.nats: cannot connect to NATS at nats://127.0.0.1:1",
        ),
        ("not a url", "chatd", 1000, 3000, "cluster.nats"),
        (nats.as_str(), "a.*", 1000, 3000, "cluster.prefix"),
        (nats.as_str(), "chatd", 1000, 1500, "cluster.node_timeout_ms"),
    ];
    for (nats, prefix, heartbeat, timeout, named) in cases {
        let mut config = common::test_config(&db.url);
        config.cluster.nats = nats.into();
        config.cluster.prefix = prefix.into();
        config.cluster.heartbeat_ms = heartbeat;
        config.cluster.node_timeout_ms = timeout;
        let error = match chatd::start(config).await {
            Ok(_) => panic!("started with {nats} {prefix} {heartbeat} {timeout}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(named), "{error:?} does not name {named}");
    }
}

/// A throwaway `nats-server` (Debian's package; the test script installs it) on a port of
/// the test's choosing; stopped when dropped, even if the test fails.
struct Nats(std::process::Child);

impl Nats {
    fn start(port: u16) -> Nats {
        let exe = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = std::process::Command::new(exe)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("the tests need nats-server ({exe}): {e}"));
        let nats = Nats(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return nats;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not listen on {port}");
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_when_nats_comes_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nats = Nats::start(port);
    let url = format!("nats://127.0.0.1:{port}");
    let nodes = spawn_cluster(2, |_, config| config.cluster.nats = url.clone()).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let mut watch = a.device("alice", &alice, "alice-watch").await;
    assert!(watch.subscribe("chat/demo/chat/presence/bob").await);
    let mut bob_dev = b.device("bob", &bob, "bob-phone").await;
    presence_reaches(&mut watch, 1).await;

    // NATS goes away: past the node timeout, A no longer counts B's devices.
    drop(nats);
    let gone = presence_reaches(&mut watch, 0).await;
    assert_eq!(gone["status"], "offline");
    // Storage does not depend on NATS: a message sent meanwhile is stored and acked.
    watch.send_text("n1", "bob", "while NATS is down").await;
    let stored = watch.next_op("ack").await;

    // NATS is back: both nodes reconnect, B's new epoch makes A ask for its snapshot, and
    // the subscriptions are made again, so bob is online on A and live delivery works.
    let nats = Nats::start(port);
    presence_reaches(&mut watch, 1).await;
    let mut delivered = false;
    for i in 0..20 {
        watch.send_text(&format!("n2-{i}"), "bob", "after NATS came back").await;
        watch.next_op("ack").await;
        let got = bob_dev.collect(Duration::from_millis(500)).await;
        if got
            .iter()
            .any(|m| m["op"] == "msg" && m["body"]["msg"] == "after NATS came back")
        {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "no live delivery across nodes after NATS came back");
    // What was sent while NATS was down is in bob's inbox.
    bob_dev.publish(json!({"op": "sync", "cid": "s", "after": 0})).await;
    let synced = bob_dev.next_op("synced").await;
    assert!(
        synced["msgs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == stored["id"]),
        "{synced}"
    );
    drop(nats);
}
