//! A node's death, with real processes: three `chatd` processes in cluster mode on one
//! PostgreSQL database and the test NATS, devices on all of them sending steadily; one node
//! is killed with SIGKILL. Its devices show offline on the others within the documented
//! time (never stuck online), its devices reconnect to the other nodes and resend what was
//! not acked with the same `cid`, and after catching up with `sync` every acked message is
//! in its recipient's inbox exactly once, and every `cid` was stored once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::binary::Chatd;
use common::{try_device_on, Device};
use rumqttc::Packet;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Heartbeat and node timeout the nodes run with here (ms).
const HEARTBEAT_MS: u64 = 250;
const NODE_TIMEOUT_MS: u64 = 1000;

/// Starts one node on free ports, in cluster mode, and reads its banner.
async fn start_node(database_url: &str, prefix: &str, name: &str, data_dir: &std::path::Path) -> Chatd {
    let cluster = [
        ("CHATD_CLUSTER__NATS", common::nats_url()),
        ("CHATD_CLUSTER__NODE", name.to_string()),
        ("CHATD_CLUSTER__PREFIX", prefix.to_string()),
        ("CHATD_CLUSTER__HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
        ("CHATD_CLUSTER__NODE_TIMEOUT_MS", NODE_TIMEOUT_MS.to_string()),
    ];
    common::binary::start_chatd(database_url, data_dir, &cluster).await
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, token: Option<&str>, body: Value) -> Value {
    let mut req = http.request(method, url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let (status, body) = common::into_json(req.send().await.unwrap()).await;
    assert!(status < 300, "{status} {body}");
    body
}

/// One chatter: sends `c{i}-{n}` to its peer, each until acked, moving to another node when
/// its node goes away; keeps what was acked and what arrived.
struct Chatter {
    user: String,
    token: String,
    /// cid -> message id, from acks (every ack for a cid must name the same id).
    acked: HashMap<String, String>,
    /// Message ids that arrived live.
    received: HashSet<String>,
    resent: usize,
    moved: usize,
}

async fn connect_somewhere(ports: &Arc<Mutex<Vec<u16>>>, start: usize, user: &str, token: &str) -> (Device, usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut k = start;
    loop {
        let alive = ports.lock().unwrap().clone();
        let port = alive[k % alive.len()];
        match try_device_on(port, "demo", "chat", user, token, &format!("{user}-phone")).await {
            Ok(dev) => return (dev, k % alive.len()),
            Err(e) => {
                assert!(Instant::now() < deadline, "{user} could not reconnect anywhere: {e}");
                k += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn chat(
    mut me: Chatter,
    peer: String,
    home: usize,
    ports: Arc<Mutex<Vec<u16>>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) -> (Chatter, Device) {
    let (mut dev, mut at) = connect_somewhere(&ports, home, &me.user, &me.token).await;
    let mut n = 0;
    while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
        let cid = format!("{}-{n}", me.user);
        let mut tries = 0;
        'send: loop {
            tries += 1;
            if tries > 1 {
                me.resent += 1;
            }
            let envelope =
                json!({"op": "send", "cid": cid, "chat": "user", "to": peer, "type": "txt", "body": {"msg": cid}});
            let sent = dev
                .client
                .publish(&dev.outbox, rumqttc::QoS::AtLeastOnce, false, envelope.to_string())
                .await;
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut lost = sent.is_err();
            while !lost {
                let left = deadline.saturating_duration_since(Instant::now());
                match dev.next_packet(left).await {
                    Ok(Some(Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap();
                        if v["op"] == "msg" && v["from"] != me.user.as_str() {
                            me.received.insert(v["id"].as_str().unwrap().to_string());
                        }
                        if v["op"] == "ack" && v["cid"] == cid.as_str() {
                            let id = v["id"].as_str().unwrap().to_string();
                            if let Some(before) = me.acked.insert(cid.clone(), id.clone()) {
                                assert_eq!(before, id, "one cid stored twice");
                            }
                            break 'send;
                        }
                    }
                    Ok(Some(_)) => {}
                    // No ack in time: send again with the same cid.
                    Ok(None) => break,
                    Err(_) => lost = true,
                }
            }
            if lost {
                // The node went away: reconnect to another, send again with the same cid.
                me.moved += 1;
                let (next, k) = connect_somewhere(&ports, at + 1, &me.user, &me.token).await;
                dev = next;
                at = k;
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (me, dev)
}

/// Pages through the user's whole inbox with `sync`: every message id it holds, in order.
async fn sync_all(dev: &mut Device) -> Vec<String> {
    let mut after = 0u64;
    let mut ids = Vec::new();
    for page in 0.. {
        let cid = format!("sync-{page}");
        dev.publish(json!({"op": "sync", "cid": cid, "after": after, "limit": 200}))
            .await;
        let synced = loop {
            let v = dev.next_op("synced").await;
            if v["cid"] == cid.as_str() {
                break v;
            }
        };
        for m in synced["msgs"].as_array().unwrap() {
            ids.push(m["id"].as_str().unwrap().to_string());
        }
        after = synced["last"].as_u64().unwrap();
        if synced["more"] != true {
            break;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_and_leaves_no_one_online() {
    let db = common::fresh_database(common::Backend::Postgres).await;
    let prefix = format!("chaos{}", store::tokens::random_secret(8).to_ascii_lowercase());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        nodes.push(start_node(&db.url, &prefix, &format!("node{i}"), dir.path()).await);
    }
    let http = reqwest::Client::new();
    let base = |node: &Chatd| format!("{}/demo/chat", node.api);
    let grant = json!({"grant_type": "client_credentials", "client_id": nodes[0].banner("client_id:"), "client_secret": nodes[0].banner("client_secret:")});
    let app_token = call(
        &http,
        reqwest::Method::POST,
        format!("{}/token", base(&nodes[1])),
        None,
        grant,
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let put_settings = json!({"send_rate_per_sec": 1e9, "send_burst": 1e9});
    call(
        &http,
        reqwest::Method::PUT,
        format!("{}/settings", base(&nodes[0])),
        Some(&app_token),
        put_settings,
    )
    .await;
    const CHATTERS: usize = 6;
    let mut users: Vec<Value> = (0..CHATTERS)
        .map(|i| json!({"username": format!("c{i}"), "password": "pw"}))
        .collect();
    users.push(json!({"username": "ghost", "password": "pw"}));
    users.push(json!({"username": "watcher", "password": "pw"}));
    call(
        &http,
        reqwest::Method::POST,
        format!("{}/users", base(&nodes[2])),
        Some(&app_token),
        json!(users),
    )
    .await;
    let mut tokens = HashMap::new();
    for user in users.iter().map(|u| u["username"].as_str().unwrap().to_string()) {
        let body = json!({"grant_type": "password", "username": user, "password": "pw"});
        let token = call(
            &http,
            reqwest::Method::POST,
            format!("{}/token", base(&nodes[0])),
            None,
            body,
        )
        .await["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        tokens.insert(user, token);
    }
    let ports: Vec<u16> = nodes.iter().map(|n| n.mqtt_port).collect();

    // The ghost lives on node 2 and never comes back; the watcher on node 0 sees it online.
    let mut watcher = common::device_on(ports[0], "demo", "chat", "watcher", &tokens["watcher"], "w").await;
    let _ghost = common::device_on(ports[2], "demo", "chat", "ghost", &tokens["ghost"], "g").await;
    assert!(watcher.subscribe("chat/demo/chat/presence/ghost").await);
    let status = |p: &Packet| match p {
        Packet::Publish(p) if p.topic.ends_with("/presence/ghost") => serde_json::from_slice::<Value>(&p.payload).ok(),
        _ => None,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = watcher
            .next_packet(deadline - Instant::now())
            .await
            .unwrap()
            .expect("ghost shown online");
        if status(&p).is_some_and(|v| v["status"] == "online") {
            break;
        }
    }

    // Chatters on every node, c{i} -> c{i+1}, sending steadily.
    let alive = Arc::new(Mutex::new(ports.clone()));
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut chatters = Vec::new();
    for i in 0..CHATTERS {
        let user = format!("c{i}");
        let me = Chatter {
            token: tokens[&user].clone(),
            user,
            acked: HashMap::new(),
            received: HashSet::new(),
            resent: 0,
            moved: 0,
        };
        let peer = format!("c{}", (i + 1) % CHATTERS);
        chatters.push(tokio::spawn(chat(me, peer, i % 3, alive.clone(), stopped.clone())));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // kill -9 node 2. From now on the chatters reconnect to nodes 0 and 1 only.
    alive.lock().unwrap().retain(|p| *p != ports[2]);
    nodes[2].child.start_kill().unwrap();
    let killed_at = Instant::now();
    let bound = Duration::from_millis(NODE_TIMEOUT_MS + 2 * HEARTBEAT_MS + 1000);
    let offline_after = loop {
        let left = (killed_at + bound + Duration::from_secs(2)).saturating_duration_since(Instant::now());
        let p = watcher
            .next_packet(left)
            .await
            .unwrap()
            .expect("the killed node's device is still shown online");
        if status(&p).is_some_and(|v| v["status"] == "offline") {
            break killed_at.elapsed();
        }
    };
    assert!(
        offline_after <= bound,
        "offline only after {offline_after:?} (bound {bound:?})"
    );
    eprintln!("ghost shown offline {offline_after:?} after kill -9 (bound {bound:?})");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut done = Vec::new();
    for chatter in chatters {
        done.push(
            tokio::time::timeout(Duration::from_secs(60), chatter)
                .await
                .expect("chatter finished")
                .unwrap(),
        );
    }

    // Catch up: every acked message is in its recipient's inbox exactly once.
    let acked_to: HashMap<String, HashSet<String>> = done
        .iter()
        .enumerate()
        .map(|(i, (me, _))| (format!("c{}", (i + 1) % CHATTERS), me.acked.values().cloned().collect()))
        .collect();
    let (mut total, mut resent, mut moved) = (0, 0, 0);
    for (me, dev) in &mut done {
        let inbox = sync_all(dev).await;
        let unique: HashSet<&String> = inbox.iter().collect();
        assert_eq!(unique.len(), inbox.len(), "{}: a message twice in the inbox", me.user);
        for id in &acked_to[&me.user] {
            assert!(
                unique.contains(id),
                "{}: acked message {id} missing after catch-up",
                me.user
            );
        }
        for id in &me.received {
            assert!(unique.contains(id), "{}: delivered live but not stored: {id}", me.user);
        }
        total += me.acked.len();
        resent += me.resent;
        moved += me.moved;
    }
    eprintln!("{total} messages acked, {resent} resent with the same cid, {moved} reconnects to another node");
    assert!(moved >= 2, "the killed node's chatters did not move ({moved})");
    assert!(total > 50, "too little traffic to mean anything: {total}");

    // Nothing stuck online: with every device gone, the surviving nodes show everyone offline.
    drop(done);
    drop(watcher);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for port in &ports[..2] {
        let mut look = common::device_on(*port, "demo", "chat", "watcher", &tokens["watcher"], "look").await;
        for i in 0..CHATTERS {
            let topic = format!("chat/demo/chat/presence/c{i}");
            assert!(look.subscribe(&topic).await);
            let p = look
                .wait_for(|p| matches!(p, Packet::Publish(p) if p.topic == topic))
                .await;
            let Packet::Publish(p) = p else { unreachable!() };
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!(
                v["status"], "offline",
                "c{i} stuck online on the node at port {port}: {v}"
            );
        }
    }
    drop(nodes);
    drop(db);
}
