//! Bytes on the wire for one 20-character text message, counted packet by packet on raw
//! TCP connections: the sender's PUBLISH and the PUBACK it gets, the `ack` op it gets and
//! its PUBACK, and the receiver's `msg` and its PUBACK. Counted on the second message of
//! each pair of devices, once MQTT 5 topic aliases are in place.

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::{v5, QoS as QoS5};
use rumqttc::QoS;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::chatd::Chatd;

#[derive(Clone, Copy, Debug)]
struct Mode {
    label: &'static str,
    v5: bool,
    aliases: bool,
    compact: bool,
}

const MODES: [Mode; 5] = [
    Mode {
        label: "3.1.1, JSON",
        v5: false,
        aliases: false,
        compact: false,
    },
    Mode {
        label: "5, JSON",
        v5: true,
        aliases: false,
        compact: false,
    },
    Mode {
        label: "5, JSON, topic aliases",
        v5: true,
        aliases: true,
        compact: false,
    },
    Mode {
        label: "3.1.1, compact",
        v5: false,
        aliases: false,
        compact: true,
    },
    Mode {
        label: "5, compact, topic aliases",
        v5: true,
        aliases: true,
        compact: true,
    },
];

/// The text of the measured message: 20 characters.
const TEXT: &str = "see you at 8, ok? :)";

/// A raw MQTT connection that counts what it writes and reads.
struct Counted {
    stream: TcpStream,
    buf: BytesMut,
    mode: Mode,
    topic: String,
    alias_set: bool,
}

impl Counted {
    async fn connect(port: u16, mode: Mode, user: &str, token: &str, topic: String) -> anyhow::Result<Counted> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let mut c = Counted {
            stream,
            buf: BytesMut::new(),
            mode,
            topic,
            alias_set: false,
        };
        let inbox = format!("chat/demo/chat/u/{user}/in");
        if mode.v5 {
            let properties = v5::ConnectProperties {
                topic_alias_max: mode.aliases.then_some(8),
                user_properties: if mode.compact {
                    vec![("enc".into(), "compact".into())]
                } else {
                    Vec::new()
                },
                ..v5::ConnectProperties::new()
            };
            let connect = v5::Connect {
                keep_alive: 60,
                client_id: format!("{user}-wire"),
                clean_start: true,
                properties: Some(properties),
            };
            let login = v5::Login {
                username: user.into(),
                password: token.into(),
            };
            c.write5(v5::Packet::Connect(connect, None, Some(login))).await?;
            c.read().await?;
            let filter = v5::Filter::new(inbox, QoS5::AtLeastOnce);
            c.write5(v5::Packet::Subscribe(v5::Subscribe::new(filter, None)))
                .await?;
        } else {
            let mut connect = v4::Connect::new(format!("{user}-wire"));
            connect.keep_alive = 60;
            let username = if mode.compact {
                format!("{user}?enc=compact")
            } else {
                user.to_string()
            };
            connect.set_login(username, token);
            c.write4(v4::Packet::Connect(connect)).await?;
            c.read().await?;
            c.write4(v4::Packet::Subscribe(v4::Subscribe::new(inbox, QoS::AtLeastOnce)))
                .await?;
        }
        c.read().await?; // SUBACK
        Ok(c)
    }

    async fn write4(&mut self, packet: v4::Packet) -> anyhow::Result<usize> {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX)?;
        self.stream.write_all(&out).await?;
        Ok(out.len())
    }

    async fn write5(&mut self, packet: v5::Packet) -> anyhow::Result<usize> {
        let mut out = BytesMut::new();
        packet.write(&mut out, None)?;
        self.stream.write_all(&out).await?;
        Ok(out.len())
    }

    /// Publishes an envelope on the device's outbox at QoS 1; returns the bytes written.
    async fn publish(&mut self, pkid: u16, envelope: &Value) -> anyhow::Result<usize> {
        let payload = Bytes::from(if self.mode.compact {
            store::compact::from_json(envelope.to_string().as_bytes()).context("compact")?
        } else {
            envelope.to_string().into_bytes()
        });
        if self.mode.v5 {
            let (topic, properties) = match (self.mode.aliases, self.alias_set) {
                (false, _) => (self.topic.clone(), None),
                (true, set) => (
                    if set { String::new() } else { self.topic.clone() },
                    Some(v5::PublishProperties {
                        topic_alias: Some(1),
                        ..Default::default()
                    }),
                ),
            };
            self.alias_set = self.mode.aliases;
            let mut publish = v5::Publish::new(topic, QoS5::AtLeastOnce, payload, properties);
            publish.pkid = pkid;
            self.write5(v5::Packet::Publish(publish)).await
        } else {
            let mut publish = v4::Publish::from_bytes(self.topic.clone(), QoS::AtLeastOnce, payload);
            publish.pkid = pkid;
            self.write4(v4::Packet::Publish(publish)).await
        }
    }

    async fn puback(&mut self, pkid: u16) -> anyhow::Result<usize> {
        if self.mode.v5 {
            self.write5(v5::Packet::PubAck(v5::PubAck::new(pkid, None))).await
        } else {
            self.write4(v4::Packet::PubAck(v4::PubAck::new(pkid))).await
        }
    }

    /// Reads one packet; returns its size and, for a PUBLISH, its packet id and JSON.
    async fn read(&mut self) -> anyhow::Result<(usize, Option<(u16, Value)>)> {
        loop {
            let before = self.buf.len();
            let parsed = if self.mode.v5 {
                match v5::Packet::read(&mut self.buf, None) {
                    Ok(v5::Packet::Publish(p)) => Ok(Some(Some((p.pkid, p.payload)))),
                    Ok(_) => Ok(Some(None)),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                    Err(e) => Err(anyhow::anyhow!("{e}")),
                }
            } else {
                match v4::Packet::read(&mut self.buf, usize::MAX >> 1) {
                    Ok(v4::Packet::Publish(p)) => Ok(Some(Some((p.pkid, p.payload)))),
                    Ok(_) => Ok(Some(None)),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                    Err(e) => Err(anyhow::anyhow!("{e}")),
                }
            }?;
            match parsed {
                Some(publish) => {
                    let size = before - self.buf.len();
                    let publish = match publish {
                        Some((pkid, payload)) => {
                            let json = if self.mode.compact {
                                store::compact::to_json(&payload)?
                            } else {
                                payload.to_vec()
                            };
                            Some((pkid, serde_json::from_slice(&json)?))
                        }
                        None => None,
                    };
                    return Ok((size, publish));
                }
                None => {
                    let read =
                        tokio::time::timeout(std::time::Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                            .await
                            .context("nothing from chatd within 10 s")??;
                    if read == 0 {
                        bail!("chatd closed the connection");
                    }
                }
            }
        }
    }

    /// Reads until a PUBLISH with this op arrives, acks it; returns its size and the ack's.
    async fn expect(&mut self, op: &str) -> anyhow::Result<(usize, usize, Value)> {
        loop {
            if let (size, Some((pkid, value))) = self.read().await? {
                let acked = self.puback(pkid).await?;
                if value["op"] == op {
                    return Ok((size, acked, value));
                }
                bail!("expected '{op}', got {value}");
            }
        }
    }
}

/// One message's bytes, in both directions, for one mode.
#[derive(Default)]
struct Bytesum {
    send: usize,
    send_puback: usize,
    ack: usize,
    ack_puback: usize,
    deliver: usize,
    deliver_puback: usize,
}

pub async fn run() -> anyhow::Result<()> {
    let chatd = Chatd::start(None).await?;
    let n = MODES.len();
    chatd.create_users("s", n).await?;
    chatd.create_users("r", n).await?;
    println!(
        "Bytes on the wire for one {}-character text message (the second of its connection)",
        TEXT.chars().count()
    );
    println!(
        "{:<26} {:>6} {:>6} {:>6} {:>6} {:>8} {:>6} | {:>7} {:>9} {:>6}",
        "mode", "send", "puback", "ack", "puback", "deliver", "puback", "sender", "receiver", "total"
    );
    for (i, mode) in MODES.iter().enumerate() {
        let (s, r) = (format!("s{i}"), format!("r{i}"));
        let mut sender = Counted::connect(
            chatd.mqtt_port(),
            *mode,
            &s,
            &chatd.user_token(&s).await?,
            format!("chat/demo/chat/u/{s}/out"),
        )
        .await?;
        let mut receiver = Counted::connect(
            chatd.mqtt_port(),
            *mode,
            &r,
            &chatd.user_token(&r).await?,
            format!("chat/demo/chat/u/{r}/out"),
        )
        .await?;
        let mut sum = Bytesum::default();
        for pkid in 1..=2u16 {
            let envelope =
                json!({"op":"send","cid":format!("m{pkid}"),"chat":"user","to":r,"type":"txt","body":{"msg":TEXT}});
            sum.send = sender.publish(pkid, &envelope).await?;
            // The PUBACK and the ack op, in whichever order they come.
            let mut got_puback = false;
            let mut got_ack = false;
            while !(got_puback && got_ack) {
                match sender.read().await? {
                    (size, None) => {
                        sum.send_puback = size;
                        got_puback = true;
                    }
                    (size, Some((id, value))) => {
                        if value["op"] != "ack" {
                            bail!("expected an ack, got {value}");
                        }
                        sum.ack = size;
                        sum.ack_puback = sender.puback(id).await?;
                        got_ack = true;
                    }
                }
            }
            let (size, acked, msg) = receiver.expect("msg").await?;
            if msg["body"]["msg"] != TEXT {
                bail!("wrong message delivered: {msg}");
            }
            (sum.deliver, sum.deliver_puback) = (size, acked);
        }
        let sender_total = sum.send + sum.send_puback + sum.ack + sum.ack_puback;
        let receiver_total = sum.deliver + sum.deliver_puback;
        println!(
            "{:<26} {:>6} {:>6} {:>6} {:>6} {:>8} {:>6} | {:>7} {:>9} {:>6}",
            mode.label,
            sum.send,
            sum.send_puback,
            sum.ack,
            sum.ack_puback,
            sum.deliver,
            sum.deliver_puback,
            sender_total,
            receiver_total,
            sender_total + receiver_total
        );
    }
    chatd.stop().await
}
