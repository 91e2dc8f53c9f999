//! The MQTT a device speaks, 3.1.1 or 5, on rumqttc's codecs (no rumqttc client).
//!
//! The devices are raw clients, so that every publish and every retry is the test's own:
//! [`Proto`] writes the few packets a device sends (CONNECT, SUBSCRIBE, PUBLISH, PUBACK,
//! PINGREQ) and decodes what the server sends into one [`In`] whatever the version (with
//! MQTT 5's topic aliases and DISCONNECT reason codes). [`read_presence`] is a one-shot
//! client on the clean link that reads every user's retained presence.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{v4, QoS};
use rumqttc::v5::mqttbytes::{v5, QoS as V5QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::net::Net;
use crate::KEEP_ALIVE;

/// The MQTT version a device speaks, and for MQTT 5 what it asks for at CONNECT.
#[derive(Debug, Clone, Copy)]
pub enum Proto {
    V4,
    V5 {
        /// Receive Maximum: the server may leave at most this many publishes to it
        /// unacknowledged (the rest wait in the gate).
        receive_max: Option<u16>,
        /// Topic Alias Maximum: the server sends the inbox as a two-byte alias after the
        /// first publish of each connection.
        topic_alias_max: Option<u16>,
    },
}

/// What a device reads, whatever its MQTT version.
pub enum In {
    ConnAck(bool),
    SubAck(bool),
    Publish {
        pkid: u16,
        qos1: bool,
        /// Empty when only the alias is given.
        topic: String,
        alias: Option<u16>,
        payload: bytes::Bytes,
    },
    PingResp,
    Disconnect(u8),
    Other,
}

impl Proto {
    pub fn connect(self, out: &mut BytesMut, client_id: &str, user: &str, token: &str) {
        match self {
            Proto::V4 => {
                let mut connect = v4::Connect::new(client_id);
                connect.keep_alive = KEEP_ALIVE;
                connect.set_login(user, token);
                v4::Packet::Connect(connect).write(out, usize::MAX).unwrap();
            }
            Proto::V5 {
                receive_max,
                topic_alias_max,
            } => {
                let mut properties = v5::ConnectProperties::new();
                properties.receive_maximum = receive_max;
                properties.topic_alias_max = topic_alias_max;
                let connect = v5::Connect {
                    keep_alive: KEEP_ALIVE,
                    client_id: client_id.into(),
                    clean_start: true,
                    properties: Some(properties),
                };
                let login = v5::Login {
                    username: user.into(),
                    password: token.into(),
                };
                v5::Packet::Connect(connect, None, Some(login))
                    .write(out, None)
                    .unwrap();
            }
        }
    }

    pub fn subscribe(self, out: &mut BytesMut, topic: &str) {
        match self {
            Proto::V4 => {
                let mut subscribe = v4::Subscribe::new(topic, QoS::AtLeastOnce);
                subscribe.pkid = 1;
                v4::Packet::Subscribe(subscribe).write(out, usize::MAX).unwrap();
            }
            Proto::V5 { .. } => {
                let mut subscribe = v5::Subscribe::new(v5::Filter::new(topic, V5QoS::AtLeastOnce), None);
                subscribe.pkid = 1;
                v5::Packet::Subscribe(subscribe).write(out, None).unwrap();
            }
        }
    }

    pub fn publish(self, out: &mut BytesMut, topic: &str, pkid: u16, payload: String) {
        match self {
            Proto::V4 => {
                let mut publish = v4::Publish::new(topic, QoS::AtLeastOnce, payload);
                publish.pkid = pkid;
                v4::Packet::Publish(publish).write(out, usize::MAX).unwrap();
            }
            Proto::V5 { .. } => {
                let mut publish = v5::Publish::new(topic, V5QoS::AtLeastOnce, payload, None);
                publish.pkid = pkid;
                v5::Packet::Publish(publish).write(out, None).unwrap();
            }
        }
    }

    pub fn puback(self, out: &mut BytesMut, pkid: u16) {
        match self {
            Proto::V4 => v4::Packet::PubAck(v4::PubAck::new(pkid))
                .write(out, usize::MAX)
                .map(drop)
                .unwrap(),
            Proto::V5 { .. } => v5::Packet::PubAck(v5::PubAck::new(pkid, None))
                .write(out, None)
                .map(drop)
                .unwrap(),
        }
    }

    pub fn pingreq(self, out: &mut BytesMut) {
        match self {
            Proto::V4 => v4::Packet::PingReq.write(out, usize::MAX).map(drop).unwrap(),
            Proto::V5 { .. } => v5::Packet::PingReq(v5::PingReq).write(out, None).map(drop).unwrap(),
        }
    }

    /// The next whole packet in `buf`, None if it is not all there yet.
    pub fn decode(self, buf: &mut BytesMut) -> Result<Option<In>, String> {
        match self {
            Proto::V4 => match v4::Packet::read(buf, 1 << 20) {
                Ok(v4::Packet::ConnAck(a)) => Ok(Some(In::ConnAck(a.code == v4::ConnectReturnCode::Success))),
                Ok(v4::Packet::SubAck(a)) => Ok(Some(In::SubAck(
                    !a.return_codes.is_empty()
                        && a.return_codes
                            .iter()
                            .all(|c| matches!(c, v4::SubscribeReasonCode::Success(_))),
                ))),
                Ok(v4::Packet::Publish(p)) => Ok(Some(In::Publish {
                    pkid: p.pkid,
                    qos1: p.qos == QoS::AtLeastOnce,
                    topic: p.topic,
                    alias: None,
                    payload: p.payload,
                })),
                Ok(v4::Packet::PingResp) => Ok(Some(In::PingResp)),
                Ok(_) => Ok(Some(In::Other)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            Proto::V5 { .. } => {
                // rumqttc cannot parse a DISCONNECT with a reason code and no properties,
                // which is what the gate writes: `E0 01 <reason>` (or `E0 00`).
                if buf.first() == Some(&0xE0) && buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1]) {
                    let reason = if buf[1] > 0 { buf[2] } else { 0 };
                    let _ = buf.split_to(2 + usize::from(buf[1]));
                    return Ok(Some(In::Disconnect(reason)));
                }
                match v5::Packet::read(buf, Some(1 << 20)) {
                    Ok(v5::Packet::ConnAck(a)) => Ok(Some(In::ConnAck(a.code == v5::ConnectReturnCode::Success))),
                    Ok(v5::Packet::SubAck(a)) => Ok(Some(In::SubAck(
                        !a.return_codes.is_empty()
                            && a.return_codes
                                .iter()
                                .all(|c| matches!(c, v5::SubscribeReasonCode::Success(_))),
                    ))),
                    Ok(v5::Packet::Publish(p)) => Ok(Some(In::Publish {
                        pkid: p.pkid,
                        qos1: p.qos == V5QoS::AtLeastOnce,
                        topic: String::from_utf8(p.topic.to_vec()).map_err(|e| e.to_string())?,
                        alias: p.properties.and_then(|props| props.topic_alias),
                        payload: p.payload,
                    })),
                    Ok(v5::Packet::PingResp(_)) => Ok(Some(In::PingResp)),
                    Ok(v5::Packet::Disconnect(d)) => Ok(Some(In::Disconnect(d.reason_code as u8))),
                    Ok(_) => Ok(Some(In::Other)),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

/// The next packet, or None when the connection closes (or sends something unreadable).
pub async fn read_packet(proto: Proto, stream: &mut TcpStream, buf: &mut BytesMut) -> Option<In> {
    loop {
        match proto.decode(buf) {
            Ok(Some(p)) => return Some(p),
            Ok(None) => match stream.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            },
            Err(_) => return None,
        }
    }
}

/// Every user's presence, as the server keeps it (retained): a device of `me` on the
/// clean link subscribes to all of their presence topics at once.
pub async fn read_presence(
    net: &Net,
    server: SocketAddrV4,
    me: &str,
    token: &str,
    users: &[String],
) -> HashMap<String, Value> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(net.probe_source.into(), 0)).unwrap();
    let mut stream = socket.connect(server.into()).await.expect("presence reader connects");
    let mut out = BytesMut::new();
    let mut connect = v4::Connect::new(format!("{me}-presence"));
    connect.keep_alive = KEEP_ALIVE;
    connect.set_login(me, token);
    v4::Packet::Connect(connect).write(&mut out, usize::MAX).unwrap();
    let filters = users
        .iter()
        .map(|u| v4::SubscribeFilter::new(format!("chat/demo/chat/presence/{u}"), QoS::AtLeastOnce));
    let mut subscribe = v4::Subscribe::new_many(filters);
    subscribe.pkid = 1;
    v4::Packet::Subscribe(subscribe).write(&mut out, usize::MAX).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut seen = HashMap::new();
    let read = async {
        while seen.len() < users.len() {
            match read_packet(Proto::V4, &mut stream, &mut buf).await {
                Some(In::ConnAck(ok)) => assert!(ok, "the presence reader's CONNECT was refused"),
                Some(In::SubAck(ok)) => assert!(ok, "presence subscriptions refused"),
                Some(In::Publish {
                    pkid, qos1, payload, ..
                }) => {
                    if qos1 {
                        out.clear();
                        Proto::V4.puback(&mut out, pkid);
                        stream.write_all(&out).await.unwrap();
                    }
                    let v: Value = serde_json::from_slice(&payload).unwrap();
                    seen.insert(v["user"].as_str().unwrap().to_string(), v);
                }
                Some(_) => {}
                None => panic!("the presence reader's connection closed"),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    seen
}
