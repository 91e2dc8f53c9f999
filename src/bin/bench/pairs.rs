//! N sender/receiver pairs of one-to-one chat, through chatd or as plain MQTT.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::chatd::{cpu_seconds, machine_busy_seconds, Chatd, Cluster};
use crate::nats::{NatsServer, Varz};
use crate::report::{now_us, Report};

#[derive(clap::Args, Clone)]
pub struct Traffic {
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Total target rate in messages/s; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// At a set rate, every sender ticks at the same moment, so messages arrive in bursts of
    /// one per pair (synchronised devices, a busy hour) instead of spread over the interval.
    #[arg(long)]
    pub burst: bool,
    /// chatd runs: print chatd's resident memory every this many seconds (a soak's curve).
    #[arg(long, default_value_t = 0)]
    pub rss_every_secs: u64,
    /// chatd runs: one more user floods this op (`sync`, `read`, `push_bind`, `send`)
    /// as fast as its connection takes it, for the whole run, to show what one flooding
    /// device does to everyone else's latency.
    #[arg(long)]
    pub flood: Option<String>,
}

/// How many chatd nodes a pairs run uses, and which node each pair's two ends connect to.
#[derive(clap::Args, Clone)]
pub struct Nodes {
    /// chatd nodes on the one database; more than one needs `--database-url` and starts a
    /// nats-server between them. Pair `i`'s sender connects to node `i % N` and its
    /// receiver to node `(i + 1) % N`, so every message crosses nodes.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Each pair's receiver on its sender's node instead, so no message crosses nodes: the
    /// control run for what crossing costs.
    #[arg(long)]
    pub same_node: bool,
}

impl Nodes {
    /// One chatd, no NATS.
    pub const ONE: Nodes = Nodes {
        nodes: 1,
        same_node: false,
    };

    /// The nodes (indices) of pair `i`'s sender and receiver.
    fn of_pair(&self, i: usize) -> (usize, usize) {
        let sender = i % self.nodes;
        if self.same_node {
            (sender, sender)
        } else {
            (sender, (i + 1) % self.nodes)
        }
    }
}

/// How one protocol frames a message and reads it back.
#[derive(Clone)]
pub enum Protocol {
    /// chatd: users `s{i}` → `r{i}`, JSON envelopes on outbox/inbox topics.
    Chatd { tokens: Arc<Vec<(String, String)>> },
    /// Plain MQTT: `bench/{i}`.
    Plain,
}

#[derive(Clone, Copy)]
enum Side {
    Sender,
    Receiver,
}

impl Protocol {
    /// The MQTT options and topic of pair `i`'s sender or receiver.
    fn endpoint(&self, i: usize, side: Side, host: &str, port: u16) -> (MqttOptions, String) {
        let (prefix, leaf) = match side {
            Side::Sender => ("s", "out"),
            Side::Receiver => ("r", "in"),
        };
        match self {
            Protocol::Chatd { tokens } => {
                let mut options = MqttOptions::new(format!("{prefix}{i}-dev"), host, port);
                let token = match side {
                    Side::Sender => &tokens[i].0,
                    Side::Receiver => &tokens[i].1,
                };
                options.set_credentials(format!("{prefix}{i}"), token);
                (options, format!("chat/demo/chat/u/{prefix}{i}/{leaf}"))
            }
            Protocol::Plain => (
                MqttOptions::new(format!("bench-{prefix}{i}"), host, port),
                format!("bench/{i}"),
            ),
        }
    }
}

/// Pairs through a chatd started for the run, on one node or several (a cluster with NATS
/// between them); prints what the traffic cost in CPU and NATS messages, and checks every
/// message was stored.
pub async fn through_chatd(
    traffic: &Traffic,
    database_url: Option<&str>,
    placement: &Nodes,
    moderation: bool,
) -> anyhow::Result<Report> {
    let nodes = placement.nodes;
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if nodes > 1 && database_url.is_none() {
        bail!("--nodes {nodes} needs --database-url: the nodes of a cluster share one PostgreSQL database");
    }
    let nats = match nodes {
        1 => None,
        _ => Some(NatsServer::start().await?),
    };
    let nats_url = nats.as_ref().map(NatsServer::url);
    let cluster = nats_url.as_deref().map(|nats_url| Cluster { nats_url, nodes });
    // A flood is measured against the budgets as they ship; at --rate 1000 each pair sends
    // 10 msg/s, well within them.
    // The moderation endpoint is on loopback: let chatd call it.
    let env: &[(&str, &str)] = if moderation {
        &[
            ("CHATD_WEBHOOKS__ALLOW_HTTP", "true"),
            ("CHATD_WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true"),
        ]
    } else {
        &[]
    };
    let chatd = Chatd::launch(database_url, traffic.flood.is_none(), cluster, env).await?;
    if moderation {
        let url = crate::moderator::start().await?;
        let settings = serde_json::json!({"moderation_url": url, "moderation_secret": "bench-moderation-secret",
                                          "moderation_timeout_ms": 5000, "moderation_fail_open": false});
        chatd.put("/settings", settings).await?;
    }
    chatd.create_users("s", traffic.pairs).await?;
    chatd.create_users("r", traffic.pairs).await?;
    let mut tokens = Vec::with_capacity(traffic.pairs);
    for i in 0..traffic.pairs {
        tokens.push((
            chatd.user_token(&format!("s{i}")).await?,
            chatd.user_token(&format!("r{i}")).await?,
        ));
    }
    let protocol = Protocol::Chatd {
        tokens: Arc::new(tokens),
    };
    let sampler = (traffic.rss_every_secs > 0).then(|| crate::chatd::sample_rss(chatd.pid(), traffic.rss_every_secs));
    let flooder = match &traffic.flood {
        Some(op) => Some(Flooder::start(&chatd, op).await?),
        None => None,
    };
    let mut label = chatd.label.clone();
    if nodes > 1 && placement.same_node {
        label = format!("{label}, pairs within a node");
    }
    if let Some(op) = &traffic.flood {
        label = format!("{label}, one device flooding '{op}'");
    }
    if moderation {
        label = format!("{label}, every message moderated (local allow-all endpoint)");
    }
    if traffic.burst && traffic.rate > 0 {
        label = format!("{label}, in bursts");
    }
    let ports: Vec<(u16, u16)> = (0..traffic.pairs)
        .map(|i| {
            let (sender, receiver) = placement.of_pair(i);
            (chatd.nodes[sender].mqtt_port, chatd.nodes[receiver].mqtt_port)
        })
        .collect();
    let read_costs = || Costs::read(&chatd, nats.as_ref());
    let (report, before, after) = run(traffic, "127.0.0.1", &ports, protocol, label, read_costs).await?;
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    if let Some(flooder) = flooder {
        flooder.stop().await;
    }
    // Every delivered message must be stored: the conversations' last seqs add up.
    let mut stored = 0;
    for i in 0..traffic.pairs {
        let body = chatd
            .get(&format!("/users/s{i}/conversations/user/r{i}/messages?limit=1"))
            .await?;
        stored += body["last_seq"].as_u64().unwrap_or(0) as usize;
    }
    println!(
        "{}: {stored} messages stored for {} expected",
        report.label, report.expected
    );
    Costs::print(&chatd, &before, &after, report.delivered);
    chatd.stop().await?;
    if stored != report.expected {
        bail!("stored {stored} messages, expected {}", report.expected);
    }
    Ok(report)
}

/// What a run's processes have spent so far: each chatd node's CPU seconds, this tool's,
/// the whole machine's and, in a cluster, nats-server's CPU seconds and message counters.
/// Read just before the first send and just after the last delivery, so connecting,
/// disconnecting and the stored-count check are left out.
struct Costs {
    at: Instant,
    nodes_cpu: Vec<f64>,
    bench_cpu: f64,
    machine_busy: f64,
    nats: Option<(f64, Varz)>,
}

impl Costs {
    async fn read(chatd: &Chatd, nats: Option<&NatsServer>) -> anyhow::Result<Costs> {
        let nats = match nats {
            Some(nats) => Some((cpu_seconds(nats.pid()), nats.varz().await?)),
            None => None,
        };
        Ok(Costs {
            at: Instant::now(),
            nodes_cpu: chatd.nodes.iter().map(|node| cpu_seconds(node.pid())).collect(),
            bench_cpu: cpu_seconds(std::process::id()),
            machine_busy: machine_busy_seconds(),
            nats,
        })
    }

    /// Prints the costs between two readings, per delivered message.
    fn print(chatd: &Chatd, before: &Costs, after: &Costs, delivered: usize) {
        let delivered = delivered.max(1) as f64;
        let per_message_us = |secs: f64| secs * 1e6 / delivered;
        let mut chatd_cpu = 0.0;
        for ((node, before), after) in chatd.nodes.iter().zip(&before.nodes_cpu).zip(&after.nodes_cpu) {
            let spent = after - before;
            chatd_cpu += spent;
            println!(
                "cpu {}: {before:.2} s before, {after:.2} s after: {spent:.2} s, {:.1} µs per delivered message",
                node.name,
                per_message_us(spent)
            );
        }
        if chatd.nodes.len() > 1 {
            println!(
                "cpu all {} chatd nodes: {chatd_cpu:.2} s, {:.1} µs per delivered message",
                chatd.nodes.len(),
                per_message_us(chatd_cpu)
            );
        }
        let mut nats_cpu = 0.0;
        if let (Some((cpu_before, varz_before)), Some((cpu_after, varz_after))) = (before.nats, after.nats) {
            nats_cpu = cpu_after - cpu_before;
            let nats = varz_after - varz_before;
            println!(
                "cpu nats-server: {nats_cpu:.2} s, {:.1} µs per delivered message",
                per_message_us(nats_cpu)
            );
            println!(
                "nats: {} messages in, {} out: {:.2} in and {:.2} out per delivered message; {} bytes in, {} out: {:.0} in and {:.0} out per delivered message",
                nats.in_msgs,
                nats.out_msgs,
                nats.in_msgs as f64 / delivered,
                nats.out_msgs as f64 / delivered,
                nats.in_bytes,
                nats.out_bytes,
                nats.in_bytes as f64 / delivered,
                nats.out_bytes as f64 / delivered,
            );
        }
        let bench_cpu = after.bench_cpu - before.bench_cpu;
        println!(
            "cpu bench tool: {bench_cpu:.2} s, {:.1} µs per delivered message",
            per_message_us(bench_cpu)
        );
        let busy = after.machine_busy - before.machine_busy;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let available = (after.at - before.at).as_secs_f64() * cores as f64;
        let rest = busy - chatd_cpu - nats_cpu - bench_cpu;
        println!(
            "cpu machine: {busy:.2} s busy of {available:.2} s ({cores} cores): {:.0}%; outside chatd, nats-server and this tool (PostgreSQL if used, the kernel, anything else): {rest:.2} s, {:.1} µs per delivered message",
            100.0 * busy / available,
            per_message_us(rest)
        );
    }
}

/// Runs the traffic: all receivers connect and subscribe, all senders connect, then all
/// senders send. `ports` has one entry per pair: pair `i`'s sender connects to port
/// `ports[i].0` and its receiver to `ports[i].1`.
/// `read` is called just before the first send and just after the last delivery; both
/// readings are returned with the report.
pub async fn run<T, F: Future<Output = anyhow::Result<T>>>(
    traffic: &Traffic,
    host: &str,
    ports: &[(u16, u16)],
    protocol: Protocol,
    label: String,
    read: impl Fn() -> F,
) -> anyhow::Result<(Report, T, T)> {
    let expected = traffic.pairs * traffic.messages;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(expected)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut receivers = Vec::new();
    for (i, &(_, port)) in ports.iter().enumerate() {
        let (options, topic) = protocol.endpoint(i, Side::Receiver, host, port);
        let (client, mut eventloop) = client(options);
        client.subscribe(&topic, QoS::AtLeastOnce).await?;
        // Wait for the SUBACK so no message is sent before anyone listens.
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.context("receiver connect")? {
                break;
            }
        }
        let (latencies, done_tx, want) = (latencies.clone(), done_tx.clone(), traffic.messages);
        let chatd = matches!(protocol, Protocol::Chatd { .. });
        receivers.push(tokio::spawn(async move {
            let mut local = Vec::with_capacity(want);
            while local.len() < want {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                            continue;
                        };
                        let sent = if chatd { v["ext"]["t"].as_u64() } else { v["t"].as_u64() };
                        if let Some(sent) = sent {
                            local.push(now_us().saturating_sub(sent));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("receiver {i}: {e}");
                        break;
                    }
                }
            }
            latencies.lock().await.extend(local);
            let _ = done_tx.send(Instant::now());
            drop(client);
        }));
    }
    drop(done_tx);

    // Senders connect before the clock starts, so the run measures messages only.
    let mut connected = Vec::with_capacity(traffic.pairs);
    for (i, &(port, _)) in ports.iter().enumerate() {
        let (options, topic) = protocol.endpoint(i, Side::Sender, host, port);
        let (client, mut eventloop) = client(options);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.context("sender connect")? {
                break;
            }
        }
        connected.push((client, eventloop, topic));
    }
    let before = read().await?;

    let started = Instant::now();
    let interval = (traffic.rate > 0).then(|| Duration::from_secs_f64(traffic.pairs as f64 / traffic.rate as f64));
    let text = "x".repeat(traffic.size);
    // At a set rate the senders' ticks are spread evenly over the interval (sender i starts
    // i/pairs of an interval in), so the load is steady rather than every sender's message
    // at once, once per interval; with --burst they are all at once.
    let spread = !traffic.burst;
    let first_tick = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut senders = Vec::new();
    for (i, (client, mut eventloop, topic)) in connected.into_iter().enumerate() {
        let (protocol, text, messages, pairs) = (protocol.clone(), text.clone(), traffic.messages, traffic.pairs);
        senders.push(tokio::spawn(async move {
            let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let offset = if spread { i as f64 / pairs as f64 } else { 0.0 };
            let mut ticker = interval.map(|d| {
                let mut t = tokio::time::interval_at(first_tick + d.mul_f64(offset), d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            for n in 0..messages {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let payload = match &protocol {
                    Protocol::Chatd { .. } => json!({"op": "send", "cid": format!("{n}"), "chat": "user", "to": format!("r{i}"), "type": "txt", "body": {"msg": text}, "ext": {"t": now_us()}}),
                    Protocol::Plain => json!({"msg": text, "t": now_us()}),
                };
                if client.publish(&topic, QoS::AtLeastOnce, false, payload.to_string()).await.is_err() {
                    break;
                }
            }
            // Keep the connection until the receivers are done.
            (client, poller)
        }));
    }
    let mut keep = Vec::new();
    for s in senders {
        keep.push(s.await?);
    }
    let mut last = started;
    let deadline = Duration::from_secs(60 + (expected as u64 / 1000));
    while let Ok(Some(at)) = tokio::time::timeout(deadline, done_rx.recv()).await {
        last = last.max(at);
    }
    let after = read().await?;
    for r in receivers {
        r.abort();
    }
    for (_, poller) in keep {
        poller.abort();
    }
    let latencies_us = std::mem::take(&mut *latencies.lock().await);
    Ok((
        Report::new(label, expected, last - started, latencies_us),
        before,
        after,
    ))
}

/// One device publishing one op as fast as its connection takes it (QoS 0, so no ack
/// window slows it down), reading and dropping whatever comes back, and reconnecting at
/// once whenever the server closes the connection.
struct Flooder {
    tasks: [tokio::task::JoinHandle<()>; 2],
    /// Ops sent, answers, `rate_limited` refusals, connections closed by the server.
    counts: Arc<[std::sync::atomic::AtomicU64; 4]>,
    started: Instant,
}

impl Flooder {
    async fn start(chatd: &Chatd, op: &str) -> anyhow::Result<Flooder> {
        chatd.create_users("flood", 1).await?;
        chatd.create_users("floodpeer", 1).await?;
        let token = chatd.user_token("flood0").await?;
        let mut options = MqttOptions::new("flood0-dev", "127.0.0.1", chatd.mqtt_port());
        options.set_credentials("flood0", token);
        let (client, mut eventloop) = client(options);
        client.subscribe("chat/demo/chat/u/flood0/in", QoS::AtMostOnce).await?;
        use std::sync::atomic::Ordering::Relaxed;
        let counts: Arc<[std::sync::atomic::AtomicU64; 4]> = Arc::default();
        let read_counts = counts.clone();
        let reader = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        match serde_json::from_slice::<Value>(&p.payload) {
                            Ok(v) if v["code"] == "rate_limited" => read_counts[2].fetch_add(1, Relaxed),
                            Ok(_) => read_counts[1].fetch_add(1, Relaxed),
                            Err(_) => 0,
                        };
                    }
                    Ok(_) => {}
                    // Polling again reconnects (without the subscription: a flooder need not read).
                    Err(_) => {
                        read_counts[3].fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        let op = op.to_string();
        let sent_count = counts.clone();
        let sender = tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let envelope = match op.as_str() {
                    "sync" => json!({"op": "sync", "cid": format!("f{sent}"), "after": 0, "limit": 200}),
                    "read" => json!({"op": "read", "conv": "u:flood0:floodpeer0", "seq": 1}),
                    "push_bind" => {
                        json!({"op": "push_bind", "cid": format!("f{sent}"), "device_token": format!("t{sent}"), "notifier_name": "fcm", "device_id": format!("d{sent}")})
                    }
                    _ => {
                        json!({"op": "send", "cid": format!("f{sent}"), "chat": "user", "to": "floodpeer0", "type": "txt", "body": {"msg": "flood"}})
                    }
                };
                if client
                    .publish(
                        "chat/demo/chat/u/flood0/out",
                        QoS::AtMostOnce,
                        false,
                        envelope.to_string(),
                    )
                    .await
                    .is_err()
                {
                    return;
                }
                sent += 1;
                sent_count[0].store(sent, Relaxed);
            }
        });
        Ok(Flooder {
            tasks: [sender, reader],
            counts,
            started: Instant::now(),
        })
    }

    async fn stop(self) {
        use std::sync::atomic::Ordering::Relaxed;
        let secs = self.started.elapsed().as_secs_f64();
        self.tasks[0].abort();
        // Let the answers in flight arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.tasks[1].abort();
        let [sent, answered, limited, closed] = [0, 1, 2, 3].map(|i| self.counts[i].load(Relaxed));
        println!(
            "flooder: {sent} ops in {secs:.1} s ({:.0}/s); {answered} answered, {limited} refused with an error op, disconnected {closed} times",
            sent as f64 / secs
        );
    }
}

pub fn client(mut options: MqttOptions) -> (AsyncClient, rumqttc::EventLoop) {
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    eventloop.network_options.set_tcp_nodelay(true);
    (client, eventloop)
}
