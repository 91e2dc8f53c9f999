//! Catching up at scale: a user who was offline while 100 peers sent them 10,000 messages
//! connects and syncs; measured from the first `sync` to the last page, with the order, gaps
//! and duplicates checked.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use crate::chatd::Chatd;
use crate::pairs::client;

#[derive(clap::Args, Clone)]
pub struct Sync {
    /// Conversations (peers writing to the offline user).
    #[arg(long, default_value_t = 100)]
    pub conversations: usize,
    /// Messages per conversation.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Messages per `sync` page (at most 200).
    #[arg(long, default_value_t = 200)]
    pub page: usize,
}

pub async fn run(args: &Sync, database_url: Option<&str>) -> anyhow::Result<()> {
    let chatd = Chatd::start(database_url).await?;
    chatd.create_users("peer", args.conversations).await?;
    chatd.create_users("target", 1).await?;
    let total = args.conversations * args.messages;

    // The peers send while the target is offline.
    let fill = Instant::now();
    let mut senders = Vec::new();
    for i in 0..args.conversations {
        let user = format!("peer{i}");
        let token = chatd.user_token(&user).await?;
        let mut options = MqttOptions::new(format!("{user}-dev"), "127.0.0.1", chatd.mqtt_port());
        options.set_credentials(&user, &token);
        let (client, mut eventloop) = client(options);
        let messages = args.messages;
        senders.push(tokio::spawn(async move {
            client.subscribe(format!("chat/demo/chat/u/{user}/in"), QoS::AtLeastOnce).await?;
            for n in 0..messages {
                let envelope = json!({"op": "send", "cid": format!("{n}"), "chat": "user", "to": "target0", "type": "txt", "body": {"msg": format!("{user} #{n}")}});
                client.publish(format!("chat/demo/chat/u/{user}/out"), QoS::AtLeastOnce, false, envelope.to_string()).await?;
            }
            let mut acks = 0;
            while acks < messages {
                if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await? {
                    if serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| v["op"] == "ack") {
                        acks += 1;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    println!(
        "filled: {total} messages from {} peers in {:.1} s",
        args.conversations,
        fill.elapsed().as_secs_f64()
    );

    // The target comes back and catches up.
    let token = chatd.user_token("target0").await?;
    let mut options = MqttOptions::new("target0-phone", "127.0.0.1", chatd.mqtt_port());
    options.set_credentials("target0", &token);
    let (client, mut eventloop) = client(options);
    client
        .subscribe("chat/demo/chat/u/target0/in", QoS::AtLeastOnce)
        .await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    let started = Instant::now();
    let (mut after, mut pages, mut seen) = (0i64, 0usize, 0usize);
    let mut per_conversation: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    loop {
        client
            .publish(
                "chat/demo/chat/u/target0/out",
                QoS::AtLeastOnce,
                false,
                json!({"op": "sync", "after": after, "limit": args.page}).to_string(),
            )
            .await?;
        let page = loop {
            let event = tokio::time::timeout(Duration::from_secs(30), eventloop.poll())
                .await
                .context("sync reply")??;
            if let Event::Incoming(Packet::Publish(p)) = event {
                let v: Value = serde_json::from_slice(&p.payload)?;
                if v["op"] == "synced" {
                    break v;
                }
            }
        };
        pages += 1;
        for m in page["msgs"].as_array().context("no msgs")? {
            let useq = m["useq"].as_i64().context("no useq")?;
            if useq != after + 1 {
                bail!("gap or duplicate: got useq {useq} after {after}");
            }
            after = useq;
            seen += 1;
            // Within a conversation, seqs must rise.
            let seq = m["seq"].as_i64().context("no seq")?;
            let last = per_conversation
                .entry(m["conv"].as_str().unwrap_or_default().to_string())
                .or_insert(0);
            if seq <= *last {
                bail!("conversation {} out of order: {seq} after {last}", m["conv"]);
            }
            *last = seq;
        }
        if page["more"] != true {
            break;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{}: caught up on {seen} messages in {} conversations, {pages} pages of {}, in {:.2} s ({:.0} msg/s), in order, no gaps, no duplicates",
        chatd.label,
        per_conversation.len(),
        args.page,
        elapsed.as_secs_f64(),
        seen as f64 / elapsed.as_secs_f64()
    );
    chatd.stop().await?;
    if seen != total {
        bail!("caught up on {seen} of {total}");
    }
    Ok(())
}
