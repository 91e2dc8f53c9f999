//! A raw MQTT client for tests that need to see exact packets (CONNACK and SUBACK codes,
//! MQTT 5 reason codes, keepalive 0, WebSocket): it writes packets with rumqttc's codecs
//! over TCP or WebSocket and reads back whatever the server sends.

use std::time::Duration;

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use bytes::BytesMut;
use futures_util::StreamExt;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub enum Transport {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<TokioAdapter<TcpStream>>>),
    Wss(Box<WebSocketStream<TokioAdapter<tokio_rustls::client::TlsStream<TcpStream>>>>),
}

pub struct Raw {
    transport: Transport,
    buf: BytesMut,
}

impl Raw {
    pub async fn tcp(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Raw {
            transport: Transport::Tcp(stream),
            buf: BytesMut::new(),
        }
    }

    /// A WebSocket connection to `/mqtt` offering the `mqtt` subprotocol; asserts that the
    /// server agrees to it, as MQTT.js and browsers require.
    pub async fn ws(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut request = format!("ws://127.0.0.1:{port}/mqtt").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
        let (ws, response) = async_tungstenite::tokio::client_async(request, stream).await.unwrap();
        assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), "mqtt");
        Raw {
            transport: Transport::Ws(Box::new(ws)),
            buf: BytesMut::new(),
        }
    }

    /// WebSocket over TLS, trusting the PEM certificate at `ca`.
    pub async fn wss(port: u16, ca: &str) -> Raw {
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(ca) {
            roots.add(cert).unwrap();
        }
        let config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let tls = connector
            .connect("localhost".try_into().unwrap(), stream)
            .await
            .unwrap();
        let mut request = format!("wss://localhost:{port}/mqtt").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
        let (ws, _) = async_tungstenite::tokio::client_async(request, tls).await.unwrap();
        Raw {
            transport: Transport::Wss(Box::new(ws)),
            buf: BytesMut::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        match &mut self.transport {
            Transport::Tcp(s) => s.write_all(bytes).await.unwrap(),
            Transport::Ws(ws) => ws.send(Message::binary(bytes.to_vec())).await.unwrap(),
            Transport::Wss(ws) => ws.send(Message::binary(bytes.to_vec())).await.unwrap(),
        }
    }

    /// Writes, and carries on if the server has already closed the connection (as it may
    /// while a write it refuses is still going out).
    pub async fn write_unchecked(&mut self, bytes: &[u8]) {
        let _ = match &mut self.transport {
            Transport::Tcp(s) => s.write_all(bytes).await.map_err(|e| e.to_string()),
            Transport::Ws(ws) => ws
                .send(Message::binary(bytes.to_vec()))
                .await
                .map_err(|e| e.to_string()),
            Transport::Wss(ws) => ws
                .send(Message::binary(bytes.to_vec()))
                .await
                .map_err(|e| e.to_string()),
        };
    }

    pub async fn send4(&mut self, packet: v4::Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).unwrap();
        self.write(&out).await;
    }

    /// Subscribes to `topic` at QoS 1 (3.1.1); the next packet must be its SUBACK.
    pub async fn subscribe4(&mut self, topic: &str) {
        self.send4(v4::Packet::Subscribe(v4::Subscribe::new(
            topic,
            rumqttc::QoS::AtLeastOnce,
        )))
        .await;
        match self.recv4().await {
            Some(v4::Packet::SubAck(_)) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn send5(&mut self, packet: v5::Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).unwrap();
        self.write(&out).await;
    }

    /// Reads more bytes; false when the server closed the connection.
    async fn fill(&mut self) -> bool {
        match &mut self.transport {
            Transport::Tcp(s) => matches!(s.read_buf(&mut self.buf).await, Ok(n) if n > 0),
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        self.buf.extend_from_slice(&data);
                        return true;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return false,
                }
            },
            Transport::Wss(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        self.buf.extend_from_slice(&data);
                        return true;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return false,
                }
            },
        }
    }

    /// The next 3.1.1 packet, or None if the server closes the connection first.
    pub async fn recv4(&mut self) -> Option<v4::Packet> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match v4::Packet::read(&mut self.buf, usize::MAX >> 1) {
                    Ok(p) => return Some(p),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                        if !self.fill().await {
                            return None;
                        }
                    }
                    Err(e) => panic!("bad packet from server: {e}"),
                }
            }
        })
        .await
        .expect("no packet within 10 s")
    }

    pub async fn recv5(&mut self) -> Option<v5::Packet> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                // rumqttc cannot parse a DISCONNECT with a reason code but no properties.
                if self.buf.len() >= 3 && self.buf[..2] == [0xE0, 0x01] {
                    let reason = self.buf[2];
                    let _ = self.buf.split_to(3);
                    let code = match reason {
                        0x98 => v5::DisconnectReasonCode::AdministrativeAction,
                        0x8B => v5::DisconnectReasonCode::ServerShuttingDown,
                        0x8D => v5::DisconnectReasonCode::KeepAliveTimeout,
                        0x87 => v5::DisconnectReasonCode::NotAuthorized,
                        0x95 => v5::DisconnectReasonCode::PacketTooLarge,
                        0x81 => v5::DisconnectReasonCode::MalformedPacket,
                        0x82 => v5::DisconnectReasonCode::ProtocolError,
                        0x8E => v5::DisconnectReasonCode::SessionTakenOver,
                        0x96 => v5::DisconnectReasonCode::MessageRateTooHigh,
                        other => panic!("unexpected DISCONNECT reason {other:#x}"),
                    };
                    return Some(v5::Packet::Disconnect(v5::Disconnect::new(code)));
                }
                match v5::Packet::read(&mut self.buf, None) {
                    Ok(p) => return Some(p),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                        if !self.fill().await {
                            return None;
                        }
                    }
                    Err(e) => panic!("bad packet from server: {e}"),
                }
            }
        })
        .await
        .expect("no packet within 10 s")
    }

    /// 3.1.1 CONNECT; returns the CONNACK code.
    pub async fn connect4(
        &mut self,
        client_id: &str,
        user: &str,
        password: &str,
        keep_alive: u16,
    ) -> v4::ConnectReturnCode {
        let mut connect = v4::Connect::new(client_id);
        connect.keep_alive = keep_alive;
        connect.set_login(user, password);
        self.send4(v4::Packet::Connect(connect)).await;
        match self.recv4().await {
            Some(v4::Packet::ConnAck(ack)) => ack.code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// MQTT 5 CONNECT; returns the CONNACK.
    pub async fn connect5(&mut self, client_id: &str, user: &str, password: &str, keep_alive: u16) -> v5::ConnAck {
        self.connect5_with(client_id, user, password, keep_alive, None).await
    }

    /// MQTT 5 CONNECT with properties; returns the CONNACK.
    pub async fn connect5_with(
        &mut self,
        client_id: &str,
        user: &str,
        password: &str,
        keep_alive: u16,
        properties: Option<v5::ConnectProperties>,
    ) -> v5::ConnAck {
        let connect = v5::Connect {
            keep_alive,
            client_id: client_id.into(),
            clean_start: true,
            properties,
        };
        let login = v5::Login {
            username: user.into(),
            password: password.into(),
        };
        self.send5(v5::Packet::Connect(connect, None, Some(login))).await;
        match self.recv5().await {
            Some(v5::Packet::ConnAck(ack)) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Waits for the next 3.1.1 PUBLISH and returns its topic and JSON payload.
    pub async fn next_publish4(&mut self) -> (String, serde_json::Value) {
        loop {
            match self.recv4().await {
                Some(v4::Packet::Publish(p)) => {
                    if p.qos != rumqttc::QoS::AtMostOnce {
                        self.send4(v4::Packet::PubAck(v4::PubAck::new(p.pkid))).await;
                    }
                    return (p.topic, serde_json::from_slice(&p.payload).unwrap());
                }
                Some(_) => continue,
                None => panic!("connection closed while waiting for a publish"),
            }
        }
    }

    /// The next 3.1.1 PUBLISH (acked) within `wait`, or None if nothing comes by then.
    pub async fn publish4_within(&mut self, wait: Duration) -> Option<(String, serde_json::Value)> {
        tokio::time::timeout(wait, self.next_publish4()).await.ok()
    }

    /// Reads MQTT 5 packets, skipping others, until `pick` takes one.
    pub async fn next5_where<T>(&mut self, mut pick: impl FnMut(v5::Packet) -> Option<T>) -> T {
        loop {
            match self.recv5().await {
                Some(packet) => {
                    if let Some(found) = pick(packet) {
                        return found;
                    }
                }
                None => panic!("connection closed while waiting for a packet"),
            }
        }
    }

    /// Waits for the next MQTT 5 PUBLISH and returns its topic and JSON payload.
    pub async fn next_publish5(&mut self) -> (String, serde_json::Value) {
        loop {
            match self.recv5().await {
                Some(v5::Packet::Publish(p)) => {
                    if p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce {
                        self.send5(v5::Packet::PubAck(v5::PubAck::new(p.pkid, None))).await;
                    }
                    return (
                        String::from_utf8(p.topic.to_vec()).unwrap(),
                        serde_json::from_slice(&p.payload).unwrap(),
                    );
                }
                Some(_) => continue,
                None => panic!("connection closed while waiting for a publish"),
            }
        }
    }
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(path: &str) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}
