//! A device's connections: open one, serve it, and reconnect when it goes, until the end.
//!
//! [`run_device`] is a device's whole life as a task: it connects (TCP from its source
//! address, CONNECT, SUBSCRIBE to its inbox) with jittered backoff while that fails, runs
//! a session on the connection ([`Device::session`]: reading and acknowledging publishes,
//! keep-alive pings, and every 200 ms the device's tick of sends, retries and syncs), and
//! starts over when the connection is lost. When the test cuts the lossy link, a device on
//! it drops its connection (chatd is not told) and keeps trying into the void until the
//! link is back. Connection failures and losses are counted in [`Stats`] by kind. Here too
//! are the checks only a connection can make: an MQTT 5 device is never sent more than its
//! Receive Maximum unacknowledged, nor a topic alias it was not given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::device::{Control, Device, Phase, Stats};
use crate::mqtt::{read_packet, In, Proto};

pub enum End {
    Done,
    Cut,
    Lost(String),
}

pub enum OpenError {
    TcpTimeout,
    Tcp,
    ClosedBeforeConnack,
    Refused,
    MqttTimeout,
}

impl Device {
    /// TCP connect, CONNECT, SUBSCRIBE to the inbox.
    async fn open(&self) -> Result<(TcpStream, BytesMut), OpenError> {
        let proto = self.spec.proto;
        let socket = TcpSocket::new_v4().map_err(|_| OpenError::Tcp)?;
        socket
            .bind(SocketAddr::new(self.spec.source.into(), 0))
            .map_err(|_| OpenError::Tcp)?;
        let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(self.spec.server.into()))
            .await
            .map_err(|_| OpenError::TcpTimeout)?
            .map_err(|_| OpenError::Tcp)?;
        let _ = stream.set_nodelay(true);
        let mut out = BytesMut::new();
        proto.connect(&mut out, &self.spec.client_id, &self.spec.user, &self.spec.token);
        let mut buf = BytesMut::new();
        let handshake = async {
            stream
                .write_all(&out)
                .await
                .map_err(|_| OpenError::ClosedBeforeConnack)?;
            match read_packet(proto, &mut stream, &mut buf).await {
                Some(In::ConnAck(true)) => {}
                Some(_) => return Err(OpenError::Refused),
                None => return Err(OpenError::ClosedBeforeConnack),
            }
            out.clear();
            proto.subscribe(&mut out, &self.inbox_topic);
            stream.write_all(&out).await.map_err(|_| OpenError::MqttTimeout)?;
            loop {
                match read_packet(proto, &mut stream, &mut buf).await {
                    Some(In::SubAck(true)) => return Ok(()),
                    Some(In::SubAck(false)) => return Err(OpenError::Refused),
                    Some(_) => {}
                    None => return Err(OpenError::MqttTimeout),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), handshake)
            .await
            .map_err(|_| OpenError::MqttTimeout)??;
        Ok((stream, buf))
    }

    /// One connection, until it ends.
    async fn session(
        &mut self,
        mut stream: TcpStream,
        mut buf: BytesMut,
        control: &mut watch::Receiver<Control>,
        stats: &Stats,
    ) -> End {
        let proto = self.spec.proto;
        // Subscribed (SUBACK) before this: a phase that began after it found it connected.
        let phase_at_connect = control.borrow().phase;
        let mut out = BytesMut::new();
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_millis(self.rng.gen_range(0..200)),
            Duration::from_millis(200),
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        // MQTT 5: the topic aliases the server set on this connection, and the publishes
        // it sent that this device has not acknowledged yet (at most its Receive Maximum).
        let mut aliases: HashMap<u16, String> = HashMap::new();
        let (mut received, mut acknowledged, mut pubacks_queued) = (0u64, 0u64, 0u64);
        // On every connect: catch up, and publish again whatever is unacked.
        self.sync_pending = None;
        self.sync_at = Some(Instant::now());
        let phase = control.borrow().phase;
        self.tick(phase, Instant::now(), &mut out, stats);
        loop {
            let c = *control.borrow();
            if c.phase == Phase::Done {
                return End::Done;
            }
            if self.spec.lossy && c.cut != self.cut_seen {
                self.cut_seen = c.cut;
                return End::Cut;
            }
            if c.phase == Phase::LiveRound
                && phase_at_connect < Phase::LiveRound
                && self.connection_at_live_round.is_none()
            {
                self.connection_at_live_round = Some(self.connections);
            }
            if !out.is_empty() {
                match tokio::time::timeout(Duration::from_secs(10), stream.write_all(&out)).await {
                    Ok(Ok(())) => {
                        out.clear();
                        acknowledged += pubacks_queued;
                        pubacks_queued = 0;
                    }
                    _ => return End::Lost("write failed".into()),
                }
            }
            tokio::select! {
                read = stream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) | Err(_) => return End::Lost("closed by the server".into()),
                        Ok(_) => {}
                    }
                    let now = Instant::now();
                    last_heard = now;
                    loop {
                        match proto.decode(&mut buf) {
                            Ok(Some(In::Publish { pkid, qos1, topic, alias, payload })) => {
                                if qos1 {
                                    received += 1;
                                    if let Proto::V5 { receive_max: Some(max), .. } = proto {
                                        if received - acknowledged > u64::from(max) {
                                            self.errors.push(format!(
                                                "the server sent {} publishes unacknowledged, over this device's Receive Maximum {max}",
                                                received - acknowledged
                                            ));
                                        }
                                    }
                                    proto.puback(&mut out, pkid);
                                    pubacks_queued += 1;
                                }
                                let topic = match (topic.is_empty(), alias) {
                                    (false, Some(alias)) => {
                                        aliases.insert(alias, topic.clone());
                                        topic
                                    }
                                    (false, None) => topic,
                                    (true, Some(alias)) => match aliases.get(&alias) {
                                        Some(topic) => topic.clone(),
                                        None => {
                                            self.errors.push(format!("topic alias {alias} never set on this connection"));
                                            continue;
                                        }
                                    },
                                    (true, None) => {
                                        self.errors.push("a publish without topic or alias".into());
                                        continue;
                                    }
                                };
                                if topic == self.inbox_topic {
                                    self.on_inbox(&payload, stats, now);
                                } else {
                                    self.errors.push(format!("publish on {topic}"));
                                }
                            }
                            Ok(Some(In::PingResp)) => ping_sent = None,
                            Ok(Some(In::Disconnect(reason))) => return End::Lost(format!("DISCONNECT {reason:#04x}")),
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(e) => return End::Lost(format!("bad packet: {e}")),
                        }
                    }
                }
                changed = control.changed() => {
                    // Looked at at the top of the loop.
                    if changed.is_err() {
                        return End::Done;
                    }
                }
                _ = ticks.tick() => {
                    let now = Instant::now();
                    if let Some(sent) = ping_sent {
                        if now.duration_since(sent) > Duration::from_secs(20) {
                            return End::Lost("no PINGRESP in 20 s".into());
                        }
                    } else if now.duration_since(last_heard) > Duration::from_secs(10) {
                        proto.pingreq(&mut out);
                        ping_sent = Some(now);
                    }
                    let phase = control.borrow().phase;
                    self.tick(phase, now, &mut out, stats);
                }
            }
        }
    }
}

/// Waits until the test is done or (for a lossy-link device) the link is cut again.
pub async fn cut_or_done(control: &mut watch::Receiver<Control>, lossy: bool, cut_seen: u32) {
    loop {
        {
            let c = *control.borrow_and_update();
            if c.phase == Phase::Done || (lossy && c.cut != cut_seen) {
                return;
            }
        }
        if control.changed().await.is_err() {
            return;
        }
    }
}

/// A device's life: connect (with jittered backoff), serve, reconnect, until Done.
pub async fn run_device(mut dev: Device, mut control: watch::Receiver<Control>, stats: Arc<Stats>) -> Device {
    tokio::time::sleep(dev.spec.start_delay).await;
    let mut failures = 0u32;
    loop {
        let c = *control.borrow();
        if c.phase == Phase::Done {
            return dev;
        }
        if dev.spec.lossy {
            dev.cut_seen = c.cut;
        }
        stats.tcp_attempts.fetch_add(1, Ordering::Relaxed);
        let opened = tokio::select! {
            opened = dev.open() => Some(opened),
            _ = cut_or_done(&mut control, dev.spec.lossy, dev.cut_seen) => None,
        };
        let (stream, buf) = match opened {
            None => continue,
            Some(Ok(connection)) => connection,
            Some(Err(e)) => {
                let counter = match e {
                    OpenError::TcpTimeout => &stats.tcp_timeouts,
                    OpenError::Tcp => &stats.tcp_errors,
                    OpenError::ClosedBeforeConnack => &stats.closed_before_connack,
                    OpenError::Refused => &stats.connack_refused,
                    OpenError::MqttTimeout => &stats.mqtt_timeouts,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                let backoff = Duration::from_millis(250u64 << failures.min(4)).mul_f64(dev.rng.gen_range(0.5..1.0));
                let cut_seen = dev.cut_seen;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cut_or_done(&mut control, dev.spec.lossy, cut_seen) => {}
                }
                continue;
            }
        };
        failures = 0;
        dev.connections += 1;
        let now = Instant::now();
        dev.connected_at.push(now);
        dev.first_connected.get_or_insert(now);
        if dev.spec.lossy && dev.cut_seen > 0 && dev.storm_back.is_none() {
            dev.storm_back = Some(now);
            stats.storm_back.fetch_add(1, Ordering::Relaxed);
        }
        stats.connected.fetch_add(1, Ordering::Relaxed);
        let end = dev.session(stream, buf, &mut control, &stats).await;
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Done => return dev,
            End::Cut => {}
            End::Lost(why) => {
                stats.lost.fetch_add(1, Ordering::Relaxed);
                let key = format!("{why} ({:?})", dev.spec.proto);
                *stats.lost_why.lock().unwrap().entry(key).or_default() += 1;
                if why.starts_with("bad packet") {
                    dev.errors.push(why);
                }
                tokio::time::sleep(Duration::from_millis(dev.rng.gen_range(100..500))).await;
            }
        }
    }
}
