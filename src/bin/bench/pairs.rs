//! N sender/receiver pairs of one-to-one chat, through chatd or as plain MQTT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::chatd::Chatd;
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
    /// chatd runs: print chatd's resident memory every this many seconds (a soak's curve).
    #[arg(long, default_value_t = 0)]
    pub rss_every_secs: u64,
    /// chatd runs: one more user floods this op (`sync`, `read`, `push_bind`, `send`)
    /// as fast as its connection takes it, for the whole run, to show what one flooding
    /// device does to everyone else's latency.
    #[arg(long)]
    pub flood: Option<String>,
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

/// Pairs through a chatd started for the run; checks every message was stored.
pub async fn through_chatd(traffic: &Traffic, database_url: Option<&str>) -> anyhow::Result<Report> {
    // A flood is measured against the budgets as they ship; at --rate 1000 each pair sends
    // 10 msg/s, well within them.
    let chatd = match traffic.flood {
        Some(_) => Chatd::start_with_default_budgets(database_url).await?,
        None => Chatd::start(database_url).await?,
    };
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
    if let Some(op) = &traffic.flood {
        label = format!("{label}, one device flooding '{op}'");
    }
    let report = run(traffic, "127.0.0.1", chatd.mqtt_port, protocol, label).await?;
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
    chatd.stop().await?;
    if stored != report.expected {
        bail!("stored {stored} messages, expected {}", report.expected);
    }
    Ok(report)
}

/// Runs the traffic: all receivers connect and subscribe, then all senders send.
pub async fn run(
    traffic: &Traffic,
    host: &str,
    port: u16,
    protocol: Protocol,
    label: String,
) -> anyhow::Result<Report> {
    let expected = traffic.pairs * traffic.messages;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(expected)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut receivers = Vec::new();
    for i in 0..traffic.pairs {
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

    let started = Instant::now();
    let interval = (traffic.rate > 0).then(|| Duration::from_secs_f64(traffic.pairs as f64 / traffic.rate as f64));
    let text = "x".repeat(traffic.size);
    // At a set rate the senders' ticks are spread evenly over the interval (sender i starts
    // i/pairs of an interval in), so the load is steady rather than every sender's message
    // at once, once per interval.
    let first_tick = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut senders = Vec::new();
    for i in 0..traffic.pairs {
        let (options, topic) = protocol.endpoint(i, Side::Sender, host, port);
        let (client, mut eventloop) = client(options);
        let (protocol, text, messages, pairs) = (protocol.clone(), text.clone(), traffic.messages, traffic.pairs);
        senders.push(tokio::spawn(async move {
            let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let mut ticker = interval.map(|d| {
                let mut t = tokio::time::interval_at(first_tick + d.mul_f64(i as f64 / pairs as f64), d);
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
    for r in receivers {
        r.abort();
    }
    for (_, poller) in keep {
        poller.abort();
    }
    let latencies_us = std::mem::take(&mut *latencies.lock().await);
    Ok(Report::new(label, expected, last - started, latencies_us))
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
        let mut options = MqttOptions::new("flood0-dev", "127.0.0.1", chatd.mqtt_port);
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
                        json!({"op": "push_bind", "cid": format!("f{sent}"), "device_token": format!("t{sent}"), "notifier": "fcm", "device_id": format!("d{sent}")})
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
