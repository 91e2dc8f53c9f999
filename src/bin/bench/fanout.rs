//! One sender to a large group or chatroom, while a one-to-one pair keeps talking: how fast
//! a message reaches every online member, and whether the fan-out stalls other traffic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::chatd::Chatd;
use crate::pairs::client;
use crate::report::{now_us, Report};

#[derive(clap::Args, Clone)]
pub struct Fanout {
    /// Members of the group or chatroom, the sender included.
    #[arg(long, default_value_t = 2000)]
    pub members: usize,
    /// Members connected during the run; all of them by default.
    #[arg(long)]
    pub online: Option<usize>,
    /// Messages the sender sends.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Pause between two messages, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub interval_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Group,
    Room,
}

pub async fn run(args: &Fanout, channel: Channel, database_url: Option<&str>) -> anyhow::Result<()> {
    let online = args.online.unwrap_or(args.members).min(args.members);
    let chatd = Chatd::start(database_url).await?;
    let setup = Instant::now();
    chatd.create_users("m", args.members).await?;
    chatd.create_users("p", 2).await?;
    let members: Vec<String> = (1..args.members).map(|i| format!("m{i}")).collect();
    let (path, chat) = match channel {
        Channel::Group => ("/chatgroups", "group"),
        Channel::Room => ("/chatrooms", "room"),
    };
    let created = chatd
        .post(
            path,
            json!({"name": "bench", "owner": "m0", "maxusers": args.members, "members": members}),
        )
        .await?;
    // The platform names a new group `groupid`, a new chatroom `id`.
    let id = created["data"]["groupid"]
        .as_str()
        .or(created["data"]["id"].as_str())
        .context("no channel id")?
        .to_string();
    println!(
        "setup: {} users and the {chat} in {:.1} s",
        args.members + 2,
        setup.elapsed().as_secs_f64()
    );

    // Online members connect and subscribe: their inbox (group) or the room topic.
    let connect = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(online * args.messages)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut receivers = Vec::with_capacity(online);
    for chunk in (1..online).collect::<Vec<_>>().chunks(100) {
        let mut pending = Vec::new();
        for &i in chunk {
            let user = format!("m{i}");
            let token = chatd.user_token(&user).await?;
            let topic = match channel {
                Channel::Group => format!("chat/demo/chat/u/{user}/in"),
                Channel::Room => format!("chat/demo/chat/room/{id}"),
            };
            pending.push(subscribed(options(&user, &token, chatd.mqtt_port()), topic));
        }
        for result in futures_util::future::join_all(pending).await {
            let (client, mut eventloop) = result?;
            let (latencies, done_tx, want) = (latencies.clone(), done_tx.clone(), args.messages + 1);
            receivers.push(tokio::spawn(async move {
                let mut local = Vec::with_capacity(want);
                while local.len() < want {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                                continue;
                            };
                            if v["op"] == "msg" && v["chat"] == chat {
                                if let (Some(sent), Some(n)) = (v["ext"]["t"].as_u64(), v["ext"]["n"].as_u64()) {
                                    local.push((n as usize, now_us().saturating_sub(sent)));
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                latencies.lock().await.extend(local);
                let _ = done_tx.send(Instant::now());
                drop(client);
            }));
        }
    }
    drop(done_tx);
    println!(
        "{} members online in {:.1} s",
        online - 1,
        connect.elapsed().as_secs_f64()
    );

    // The one-to-one pair that keeps talking during the fan-out.
    let background = tokio::spawn(background_pair(
        chatd.mqtt_port(),
        chatd.user_token("p0").await?,
        chatd.user_token("p1").await?,
    ));

    let sender_token = chatd.user_token("m0").await?;
    let (sender, mut sender_loop) = client(options("m0", &sender_token, chatd.mqtt_port()));
    let acks = tokio::spawn(async move {
        let mut acks = 0;
        while let Ok(event) = sender_loop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                if serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| v["op"] == "ack") {
                    acks += 1;
                }
            }
        }
        acks
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Message 0 is the first to every member's topic, which used to cost rumqttd once per
    // topic (it matched each new topic against every filter); it is still reported on its own.
    let send = |n: usize| {
        let envelope = json!({"op": "send", "cid": format!("f{n}"), "chat": chat, "to": id, "type": "txt", "body": {"msg": "x".repeat(100)}, "ext": {"t": now_us(), "n": n}});
        sender.publish("chat/demo/chat/u/m0/out", QoS::AtLeastOnce, false, envelope.to_string())
    };
    send(0).await?;
    tokio::time::sleep(Duration::from_millis(args.interval_ms.max(1000))).await;
    let steady_from = now_us();
    let started = Instant::now();
    for n in 1..=args.messages {
        send(n).await?;
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    let mut last = started;
    let deadline = Duration::from_secs(120);
    while let Ok(Some(at)) = tokio::time::timeout(deadline, done_rx.recv()).await {
        last = last.max(at);
    }
    let expected = (online - 1) * args.messages;
    let deliveries = std::mem::take(&mut *latencies.lock().await);
    // Per message: how long until the last online member had it.
    let mut complete = vec![0u64; args.messages + 1];
    for (n, latency) in &deliveries {
        complete[*n] = complete[*n].max(*latency);
    }
    let cold = complete.remove(0);
    let steady: Vec<u64> = deliveries.iter().filter(|(n, _)| *n > 0).map(|(_, l)| *l).collect();
    let label = format!("{chat} fan-out to {} online", online - 1);
    let report = Report::new(label, expected, last - started, steady);
    report.print();
    let completion = Report::new(
        "per message, reaching all".into(),
        args.messages,
        last - started,
        complete,
    );
    println!(
        "  one message reaches all {} online members in p50 {:.1} ms, max {:.1} ms: {:.0} deliveries/s while fanning out",
        online - 1,
        completion.percentile_ms(0.5),
        completion.percentile_ms(1.0),
        (online - 1) as f64 / (completion.percentile_ms(0.5) / 1000.0),
    );
    println!(
        "  the first message (to topics never used before) reached all in {:.1} ms",
        cold as f64 / 1000.0
    );
    background.abort();
    let background = BACKGROUND.lock().await.clone();
    let (during, first): (Vec<_>, Vec<_>) = background.into_iter().partition(|(at, _)| *at >= steady_from);
    let during: Vec<u64> = during.into_iter().map(|(_, l)| l).collect();
    let first: Vec<u64> = first.into_iter().map(|(_, l)| l).collect();
    Report::new(
        "1:1 pair during the fan-out".into(),
        during.len(),
        last - started,
        during,
    )
    .print();
    Report::new("1:1 pair around message 0".into(), first.len(), last - started, first).print();
    for r in receivers {
        r.abort();
    }
    acks.abort();
    chatd.stop().await?;
    if report.delivered != expected {
        bail!("{} of {expected} deliveries arrived", report.delivered);
    }
    Ok(())
}

/// The background pair's deliveries: (receive time in µs, latency in µs).
static BACKGROUND: Mutex<Vec<(u64, u64)>> = Mutex::const_new(Vec::new());

/// p0 sends p1 a message every 10 ms; p1 records the latencies.
async fn background_pair(port: u16, p0: String, p1: String) -> anyhow::Result<()> {
    let (receiver, mut receiver_loop) = subscribed(options("p1", &p1, port), "chat/demo/chat/u/p1/in".into()).await?;
    let listen = tokio::spawn(async move {
        while let Ok(event) = receiver_loop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                if let Some(sent) = serde_json::from_slice::<Value>(&p.payload)
                    .ok()
                    .and_then(|v| v["ext"]["t"].as_u64())
                {
                    let now = now_us();
                    BACKGROUND.lock().await.push((now, now.saturating_sub(sent)));
                }
            }
        }
        drop(receiver);
    });
    let (sender, mut sender_loop) = client(options("p0", &p0, port));
    tokio::spawn(async move { while sender_loop.poll().await.is_ok() {} });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for n in 0.. {
        tick.tick().await;
        let envelope = json!({"op": "send", "cid": format!("p{n}"), "chat": "user", "to": "p1", "type": "txt", "body": {"msg": "ping"}, "ext": {"t": now_us()}});
        sender
            .publish("chat/demo/chat/u/p0/out", QoS::AtLeastOnce, false, envelope.to_string())
            .await?;
    }
    listen.abort();
    Ok(())
}

fn options(user: &str, token: &str, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(format!("{user}-bench"), "127.0.0.1", port);
    options.set_credentials(user, token);
    options
}

/// Connects, subscribes and waits until the subscription is granted.
async fn subscribed(options: MqttOptions, topic: String) -> anyhow::Result<(rumqttc::AsyncClient, rumqttc::EventLoop)> {
    let (client, mut eventloop) = client(options);
    client.subscribe(&topic, QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(ack)) = eventloop.poll().await.context("member connect")? {
            if !matches!(ack.return_codes[..], [SubscribeReasonCode::Success(_)]) {
                bail!("subscription to {topic} refused");
            }
            return Ok((client, eventloop));
        }
    }
}
