//! One device connection, from the CONNACK to close.
//!
//! Once a device is in ([`super::connect`]), the gate serves it itself: it checks each
//! SUBSCRIBE against the ACL and subscribes the session at the
//! [switchboard](crate::switchboard), passes allowed outbox publishes (tagged with the device
//! id) to rumqttd through the switchboard's uplink, and writes what the switchboard delivers
//! in the device's protocol version, applying the bridge's per-device routing, MQTT 5 flow
//! control, topic aliases and the compact encoding. A device costs one socket and one task,
//! no rumqttd connection. Keepalive 0 is allowed; a silent device is dropped after 1.5 × its
//! keepalive. Sessions are clean: what a device missed while away, it fetches with `sync`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{v4, QoS};
use rumqttc::v5::mqttbytes::v5;
use tokio::time::{sleep_until, timeout, Instant};

use super::acl::{FilterAccess, Identity};
use super::budget::{budget_key, FloodWindow, OpClass, Peek};
use super::codec::{self, qos_v4, ConnectRequest, DevicePacket, Malformed, Version};
use super::connect::GaugeGuard;
use super::flow::LazyFlow;
use super::topic_map::TopicMap;
use super::transport::ClientIo;
use super::Shared;
use crate::mailbox::{Mailbox, Poster};
use crate::presence::Control;
use crate::switchboard::{Delivery, ToSession, SESSION_QUEUE};
use store::envelope::{frame_inbox, frame_outbox, frame_outbox_unreadable, unframe_inbox, OpError, Route};

/// What ends a session, and what (if anything) the device is told.
#[derive(Debug)]
enum Close {
    /// The device went away or said DISCONNECT.
    Device,
    /// The gate lost its uplink to rumqttd.
    Upstream,
    /// The same device connected again.
    TakenOver,
    /// The device broke a rule; 5 devices get a DISCONNECT with this reason.
    Violation(v5::DisconnectReasonCode, String),
    Shutdown,
    /// The server closed it (the user was deleted).
    Kicked,
    /// The token the device connected with expired.
    Expired,
    /// The device read nothing of what was written to it for `write_timeout`.
    WriteStalled,
}

/// A device connection past CONNECT: what its task holds for as long as the device stays
/// connected (which is why everything before, the handshake, CONNECT and the token check,
/// runs boxed and is given back once the device is in: a task's future is as large as the
/// largest thing it ever awaits).
pub(crate) struct Connected {
    pub(super) io: ClientIo,
    pub(super) session: Session,
    /// What the device sent that is not a whole packet yet: empty, holding no memory, while
    /// the device is silent.
    pub(super) device_buf: BytesMut,
    pub(super) inbox: Mailbox<ToSession>,
    pub(super) keep_alive: u16,
    /// The server was draining, or stopping, when the connection was registered; later, it
    /// hears of it through `inbox` ([`Control::Drain`], [`Control::Shutdown`]).
    pub(super) draining: bool,
    pub(super) stopping: bool,
    pub(super) _presence: crate::presence::PresenceGuard,
    pub(super) _connected: GaugeGuard,
    /// Its place among `max_connections`.
    pub(super) _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Connected {
    /// Serves the device until the connection ends, then closes it.
    pub(crate) async fn serve(&mut self) {
        let close = match self.stopping {
            true => Close::Shutdown,
            false => self.run().await,
        };
        Box::pin(self.end(close)).await;
    }

    /// Tells the device why it is closed (MQTT 5), leaves the switchboard, publishes the
    /// will if the close calls for it, and closes the transport.
    async fn end(&mut self, close: Close) {
        let session = &mut self.session;
        let (user, device) = (&session.identity.user, &session.identity.device);
        tracing::debug!(%user, %device, ?close, "device disconnected");
        let reason = match &close {
            Close::Violation(reason, why) => {
                tracing::info!(%user, %device, %why, "closing a device connection");
                Some(*reason)
            }
            Close::Shutdown => Some(v5::DisconnectReasonCode::ServerShuttingDown),
            Close::Kicked => Some(v5::DisconnectReasonCode::AdministrativeAction),
            Close::Expired => Some(v5::DisconnectReasonCode::NotAuthorized),
            Close::TakenOver => Some(v5::DisconnectReasonCode::SessionTakenOver),
            Close::Upstream => Some(v5::DisconnectReasonCode::UnspecifiedError),
            Close::WriteStalled => {
                tracing::info!(%user, %device, "closing a device connection: it read nothing of what was written to it in mqtt.write_timeout_secs");
                None
            }
            Close::Device => None,
        };
        if let (Some(reason), Version::V5) = (reason, session.version) {
            // Written by hand: rumqttc's encoder puts a stray byte after a DISCONNECT without
            // properties. Reason code, no properties: `E0 01 <reason>`.
            let _ = timeout(FINAL_WRITE, self.io.write_all(&[0xE0, 0x01, reason as u8])).await;
        }
        session.finish(&close).await;
        if !matches!(close, Close::WriteStalled) {
            let _ = timeout(FINAL_WRITE, self.io.close()).await;
        }
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy)]
enum Refused {
    NotAuthorized,
    /// Too many subscriptions on the connection, or too many SUBSCRIBE filters too fast.
    Quota,
}

/// Most QoS 1 publishes a device may leave unacknowledged, whatever its Receive Maximum.
const MAX_UNACKED: u16 = 1024;
/// The longest the last writes to a device that is being closed may take (what is queued
/// at shutdown, the DISCONNECT, the TLS close): a device on a cut link never reads them, and
/// must not hold the server's stop (or a task) until TCP gives up.
const FINAL_WRITE: Duration = Duration::from_secs(2);
/// The longest a SUBSCRIBE waits for its topics to be routed to this node by the cluster.
const ROUTING_WAIT: Duration = Duration::from_secs(2);

/// One device connection's state.
pub(super) struct Session {
    version: Version,
    identity: Identity,
    /// This session's id at the switchboard, and the queue it delivers into.
    id: u64,
    queue: Poster<ToSession>,
    /// Topics subscribed, with the QoS granted (0 or 1: the server never sends QoS 2), at
    /// most `max_subscriptions`.
    subscriptions: TopicMap<QoS>,
    /// MQTT 5 flow control towards the device: its receive maximum (the unacknowledged
    /// QoS 1 publishes it takes) and largest packet.
    receive_max: u16,
    device_max_packet: u32,
    /// The most topic aliases the gate may set towards the device (its Topic Alias
    /// Maximum): after the first publish on a topic, the topic travels as two bytes.
    device_alias_max: u16,
    /// The exchanges in progress: unacknowledged and held publishes, topic aliases.
    flow: LazyFlow,
    /// Payloads travel to and from this device in the compact envelope.
    compact: bool,
    /// Room and presence topics this connection was admitted to at SUBSCRIBE (as a member,
    /// or as someone not blocked). Leaving a room, being kicked or being blocked revokes a
    /// topic, and its publishes stop at the gate even while the device stays subscribed.
    admitted: TopicMap<()>,
    /// Published to the device's outbox if the connection ends without a DISCONNECT.
    will: Option<Box<v4::LastWill>>,
    /// The user's key in the gate's budgets ([`super::budget`]): app id and username.
    budget_key: String,
    /// Ops refused as over budget in the current window ([`FloodWindow`]).
    over_budget: FloodWindow,
    /// 3.1.1 publishes refused (acknowledged and dropped) in the current window.
    refused_publishes: FloodWindow,
    shared: Arc<Shared>,
}

impl Session {
    /// The session of a device that is in, with what its CONNECT asked for.
    pub(super) fn new(
        version: Version,
        identity: Identity,
        queue: Poster<ToSession>,
        request: &mut ConnectRequest,
        shared: &Arc<Shared>,
    ) -> Session {
        Session {
            version,
            id: shared.next_session.fetch_add(1, Ordering::Relaxed),
            queue,
            subscriptions: TopicMap::default(),
            // A 3.1.1 device states no limit; packet ids run out at 65,535, and a device that
            // never acknowledges must not hold the gate's memory.
            receive_max: request.receive_max.min(MAX_UNACKED),
            device_max_packet: u32::try_from(request.device_max_packet).unwrap_or(u32::MAX),
            device_alias_max: request.device_alias_max,
            flow: LazyFlow::default(),
            compact: request.compact,
            admitted: TopicMap::default(),
            will: request.will.take().map(Box::new),
            budget_key: budget_key(&identity.org, &identity.app, &identity.user),
            identity,
            over_budget: FloodWindow::default(),
            refused_publishes: FloodWindow::default(),
            shared: shared.clone(),
        }
    }
}

impl Connected {
    /// Reads and handles what the device sends, and writes what is delivered to it, until
    /// the connection ends.
    async fn run(&mut self) -> Close {
        let session = &mut self.session;
        // Cleared when the server drains: what the device sends is no longer read (and its
        // silence no longer counts against its keepalive), what is on its way to it still goes.
        let mut reading = !self.draining;
        let idle_limit = (self.keep_alive > 0).then(|| Duration::from_millis(self.keep_alive as u64 * 1500));
        let far_future = Instant::now() + Duration::from_secs(86400 * 365);
        let mut idle_deadline = match (idle_limit, reading) {
            (Some(limit), true) => Instant::now() + limit,
            _ => far_future,
        };
        // A session lasts as long as its token: the device reconnects with a fresh one.
        let token_left = session
            .identity
            .token_expires
            .saturating_sub(store::now_ms() / 1000)
            .max(0);
        let token_deadline = Instant::now() + Duration::from_secs(token_left as u64).min(far_future - Instant::now());
        let mut out = BytesMut::new();
        let write_limit = session.shared.settings.write_timeout;
        // Bytes may have arrived with the CONNECT.
        let mut pending_device_bytes = !self.device_buf.is_empty();
        loop {
            if pending_device_bytes {
                pending_device_bytes = false;
                let handled = Box::pin(session.handle_device_bytes(&mut self.device_buf, &mut out)).await;
                session.flow.release_if_idle();
                if self.device_buf.is_empty() {
                    // Silent again: no read buffer until the device sends more.
                    self.device_buf = BytesMut::new();
                }
                if let Err(close) = flush(&mut self.io, &mut out, write_limit).await {
                    return close;
                }
                if let Err(close) = handled {
                    return close;
                }
            }
            tokio::select! {
                read = self.io.read_buf(&mut self.device_buf), if reading => {
                    match read {
                        Ok(0) | Err(_) => return Close::Device,
                        Ok(_) => {
                            if let Some(limit) = idle_limit {
                                idle_deadline = Instant::now() + limit;
                            }
                            pending_device_bytes = true;
                        }
                    }
                }
                next = self.inbox.recv() => {
                    // Take what else is queued before writing: one write for a burst. A
                    // control ends the burst and is applied once it is written.
                    let mut next = Some(next);
                    let mut control = None;
                    while let Some(event) = next.take() {
                        match event {
                            ToSession::Deliver(delivery) => session.deliver(Arc::unwrap_or_clone(delivery), &mut out),
                            ToSession::Control(c) => {
                                control = Some(c);
                                break;
                            }
                        }
                        if out.len() < 64 * 1024 {
                            next = self.inbox.try_recv();
                        }
                    }
                    session.flow.release_if_idle();
                    if let Err(close) = flush(&mut self.io, &mut out, write_limit).await {
                        return close;
                    }
                    match control {
                        Some(Control::Disconnect) => return Close::Kicked,
                        Some(Control::TakenOver) => return Close::TakenOver,
                        Some(Control::Revoke(topic)) => {
                            session.admitted.remove(&topic);
                        }
                        Some(Control::Drain) => {
                            reading = false;
                            idle_deadline = far_future;
                        }
                        Some(Control::Shutdown) => {
                            // What the bridge stored while the server drained is acked: write it.
                            while let Some(event) = self.inbox.try_recv() {
                                if let ToSession::Deliver(delivery) = event {
                                    session.deliver(Arc::unwrap_or_clone(delivery), &mut out);
                                }
                            }
                            let _ = flush(&mut self.io, &mut out, FINAL_WRITE).await;
                            return Close::Shutdown;
                        }
                        None => {}
                    }
                }
                // One timer for both (a timer is 112 bytes of every connection's task).
                _ = sleep_until(idle_deadline.min(token_deadline)) => {
                    if Instant::now() >= token_deadline {
                        return Close::Expired;
                    }
                    if Instant::now() >= idle_deadline {
                        return Close::Violation(v5::DisconnectReasonCode::KeepAliveTimeout, "keepalive timeout".into());
                    }
                }
            }
        }
    }
}

impl Session {
    /// Leaves the switchboard, and publishes the will if the connection ended in a way
    /// that calls for it.
    async fn finish(&mut self, close: &Close) {
        for topic in self.subscriptions.topics() {
            self.shared.switchboard.unsubscribe(topic, self.id);
        }
        // A server-side close is no reason to publish the device's will.
        if matches!(close, Close::Kicked | Close::Shutdown | Close::Expired) {
            return;
        }
        if let Some(will) = self.will.take() {
            let payload = outbox_frame(&self.identity.device, self.compact, &will.message);
            if let Err(e) = self.shared.switchboard.publish_outbox(will.topic, payload).await {
                tracing::error!(error = %e, "a will could not be passed on");
            }
        }
    }

    /// Handles every complete packet the device has sent.
    async fn handle_device_bytes(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<(), Close> {
        loop {
            match codec::read_packet(self.version, buf, self.shared.settings.max_packet_size) {
                Ok(None) => return Ok(()),
                Ok(Some(DevicePacket::V4(packet))) => self.device_v4(packet, out).await?,
                Ok(Some(DevicePacket::V5(packet))) => self.device_v5(packet, out).await?,
                Err(Malformed { why, too_large }) => return Err(malformed(why, too_large)),
            }
        }
    }

    async fn device_v4(&mut self, packet: v4::Packet, out: &mut BytesMut) -> Result<(), Close> {
        match packet {
            v4::Packet::Publish(p) => {
                if !self.identity.may_publish(&p.topic) {
                    return self.refuse_publish_v4(&p, out);
                }
                self.forward_publish(p.topic, p.qos, p.pkid, &p.payload, out).await?;
            }
            v4::Packet::Subscribe(s) => {
                let filters = s.filters.into_iter().map(|f| (f.path, f.qos)).collect();
                self.subscribe(s.pkid, filters, out).await;
            }
            v4::Packet::Unsubscribe(u) => {
                self.unsubscribe(&u.topics);
                to_device_v4(out, v4::Packet::UnsubAck(v4::UnsubAck::new(u.pkid)));
            }
            v4::Packet::PubAck(a) => self.device_acked(a.pkid, out),
            v4::Packet::PubRel(a) => {
                self.flow.qos2_done(a.pkid);
                to_device_v4(out, v4::Packet::PubComp(v4::PubComp::new(a.pkid)));
            }
            // The gate never sends QoS 2, so there is nothing to answer.
            v4::Packet::PubRec(_) | v4::Packet::PubComp(_) => {}
            v4::Packet::PingReq => to_device_v4(out, v4::Packet::PingResp),
            v4::Packet::Disconnect => {
                self.will = None;
                return Err(Close::Device);
            }
            other => {
                return Err(protocol_error(format!(
                    "unexpected {:?} from a device",
                    packet_name_v4(&other)
                )))
            }
        }
        Ok(())
    }

    /// A 3.1.1 publish to a topic the device may not publish to. 3.1.1 has no way to refuse
    /// a publish, and closing the connection would loop: clients (MQTT.js among them)
    /// re-send an unacknowledged QoS 1 or 2 publish on every reconnect. So it is
    /// acknowledged and dropped, and the device told with an `error` op (`forbidden`) on its
    /// inbox; one that keeps at it (over 100 in 10 s) is closed.
    fn refuse_publish_v4(&mut self, p: &v4::Publish, out: &mut BytesMut) -> Result<(), Close> {
        let why = format!("publish to '{}' not allowed", p.topic);
        if self.refused_publishes.count() > FloodWindow::ANSWERED {
            return Err(Close::Violation(v5::DisconnectReasonCode::NotAuthorized, why));
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => to_device_v4(out, v4::Packet::PubAck(v4::PubAck::new(p.pkid))),
            QoS::ExactlyOnce => to_device_v4(out, v4::Packet::PubRec(v4::PubRec::new(p.pkid))),
        }
        let error = OpError::new(None, "forbidden", why);
        let json = serde_json::to_vec(&error).unwrap_or_default();
        let delivery = Delivery {
            topic: Arc::from(self.identity.inbox()),
            payload: Bytes::from(frame_inbox(Route::Only(&self.identity.device), &json)),
            retain: false,
        };
        self.deliver(delivery, out);
        Ok(())
    }

    async fn device_v5(&mut self, packet: v5::Packet, out: &mut BytesMut) -> Result<(), Close> {
        match packet {
            v5::Packet::Publish(p) => {
                let mut topic =
                    String::from_utf8(p.topic.to_vec()).map_err(|_| malformed("topic is not UTF-8".into(), false))?;
                if let Some(alias) = p.properties.as_ref().and_then(|props| props.topic_alias) {
                    if alias == 0 || alias > self.shared.settings.topic_alias_max {
                        return Err(Close::Violation(
                            v5::DisconnectReasonCode::TopicAliasInvalid,
                            format!("topic alias {alias} out of range"),
                        ));
                    }
                    if topic.is_empty() {
                        topic = (self.flow.get().and_then(|flow| flow.aliases.get(&alias)))
                            .cloned()
                            .ok_or_else(|| protocol_error(format!("unknown topic alias {alias}")))?;
                    } else {
                        self.flow.get_mut().aliases.insert(alias, topic.clone());
                    }
                }
                if !self.identity.may_publish(&topic) {
                    let why = format!("publish to '{topic}' not allowed");
                    match qos_v4(p.qos) {
                        QoS::AtMostOnce => return Err(Close::Violation(v5::DisconnectReasonCode::NotAuthorized, why)),
                        QoS::AtLeastOnce => to_device_v5(
                            out,
                            v5::Packet::PubAck(v5::PubAck {
                                pkid: p.pkid,
                                reason: v5::PubAckReason::NotAuthorized,
                                properties: None,
                            }),
                        ),
                        QoS::ExactlyOnce => to_device_v5(
                            out,
                            v5::Packet::PubRec(v5::PubRec {
                                pkid: p.pkid,
                                reason: v5::PubRecReason::NotAuthorized,
                                properties: None,
                            }),
                        ),
                    }
                    tracing::info!(user = %self.identity.user, device = %self.identity.device, %why, "publish refused");
                    return Ok(());
                }
                self.forward_publish(topic, qos_v4(p.qos), p.pkid, &p.payload, out)
                    .await?;
            }
            v5::Packet::Subscribe(s) => {
                let filters = s.filters.into_iter().map(|f| (f.path, qos_v4(f.qos))).collect();
                self.subscribe(s.pkid, filters, out).await;
            }
            v5::Packet::Unsubscribe(u) => {
                self.unsubscribe(&u.filters);
                let ack = v5::UnsubAck {
                    pkid: u.pkid,
                    reasons: vec![v5::UnsubAckReason::Success; u.filters.len()],
                    properties: None,
                };
                to_device_v5(out, v5::Packet::UnsubAck(ack));
            }
            v5::Packet::PubAck(a) => self.device_acked(a.pkid, out),
            v5::Packet::PubRel(a) => {
                self.flow.qos2_done(a.pkid);
                to_device_v5(out, v5::Packet::PubComp(v5::PubComp::new(a.pkid, None)));
            }
            v5::Packet::PubRec(_) | v5::Packet::PubComp(_) => {}
            v5::Packet::PingReq(_) => to_device_v5(out, v5::Packet::PingResp(v5::PingResp)),
            v5::Packet::Disconnect(d) => {
                // "Disconnect with will": close and publish the will all the same.
                if d.reason_code != v5::DisconnectReasonCode::DisconnectWithWillMessage {
                    self.will = None;
                }
                return Err(Close::Device);
            }
            v5::Packet::Auth(_) => {
                return Err(Close::Violation(
                    v5::DisconnectReasonCode::ProtocolError,
                    "enhanced authentication is not supported".into(),
                ))
            }
            _ => return Err(protocol_error("unexpected packet from a device".into())),
        }
        Ok(())
    }

    /// Passes an outbox publish on to the bridges, then acknowledges it to the device: the
    /// PUBACK means the gate took it; the bridge's `ack` op means stored. An op over the
    /// device's budget for its class is answered here and goes no further.
    async fn forward_publish(
        &mut self,
        topic: String,
        qos: QoS,
        pkid: u16,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), Close> {
        // A repeated QoS 2 publish (not yet released) was passed on already.
        let repeat = qos == QoS::ExactlyOnce && !self.flow.get_mut().incoming_qos2.insert(pkid);
        if !repeat {
            // What the bridge reads: the JSON as it is, or the compact envelope turned into
            // JSON (or, if it is not one, the reason, which the bridge answers as an error).
            let json = match self.compact {
                false => Ok(std::borrow::Cow::Borrowed(payload)),
                true => store::compact::to_json(payload)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| e.to_string()),
            };
            let peek = json.as_deref().map_or_else(|_| Peek::default(), Peek::of);
            let class = peek.class();
            metrics::counter!("chatd_mqtt_publishes_total", "op" => class.key()).increment(1);
            if let Err(wait_ms) = self.shared.budgets.take(&self.budget_key, class) {
                metrics::counter!("chatd_rate_limited_total", "op" => class.key()).increment(1);
                self.refuse_over_budget(class, peek.cid(), wait_ms, out)?;
                if qos == QoS::ExactlyOnce {
                    // Refused with a PUBREC error code: the exchange ends here.
                    self.flow.qos2_done(pkid);
                }
                match (qos, self.version) {
                    (QoS::AtMostOnce, _) => {}
                    (QoS::AtLeastOnce, Version::V5) => to_device_v5(
                        out,
                        v5::Packet::PubAck(v5::PubAck {
                            pkid,
                            reason: v5::PubAckReason::QuotaExceeded,
                            properties: None,
                        }),
                    ),
                    (QoS::ExactlyOnce, Version::V5) => to_device_v5(
                        out,
                        v5::Packet::PubRec(v5::PubRec {
                            pkid,
                            reason: v5::PubRecReason::QuotaExceeded,
                            properties: None,
                        }),
                    ),
                    // 3.1.1 acks carry no reason: the publish was handled (refused), and
                    // the error op says so. Not acking it would only bring it back.
                    (QoS::AtLeastOnce, Version::V4) => to_device_v4(out, v4::Packet::PubAck(v4::PubAck::new(pkid))),
                    (QoS::ExactlyOnce, Version::V4) => to_device_v4(out, v4::Packet::PubComp(v4::PubComp::new(pkid))),
                }
                return Ok(());
            }
            let device = &self.identity.device;
            let frame = match &json {
                Ok(json) => frame_outbox(device, json),
                Err(why) => frame_outbox_unreadable(device, why),
            };
            if let Err(e) = self.shared.switchboard.publish_outbox(topic, frame).await {
                tracing::error!(error = %e, "the gate's uplink is gone");
                return Err(Close::Upstream);
            }
        }
        match (qos, self.version) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Version::V4) => to_device_v4(out, v4::Packet::PubAck(v4::PubAck::new(pkid))),
            (QoS::AtLeastOnce, Version::V5) => to_device_v5(out, v5::Packet::PubAck(v5::PubAck::new(pkid, None))),
            (QoS::ExactlyOnce, Version::V4) => to_device_v4(out, v4::Packet::PubRec(v4::PubRec::new(pkid))),
            (QoS::ExactlyOnce, Version::V5) => to_device_v5(out, v5::Packet::PubRec(v5::PubRec::new(pkid, None))),
        }
        Ok(())
    }

    /// Tells the device an op was over its budget: a `rate_limited` error op on its inbox
    /// (typing indicators are advisory and dropped without one). A device that keeps going
    /// is a flood, not a client in a hurry: past [`FloodWindow::ANSWERED`] refusals in a
    /// window its excess is refused silently (answering each would cost as much as the
    /// flood), and past [`FloodWindow::DISCONNECT`] the connection is closed (MQTT 5:
    /// `0x96`, message rate too high).
    fn refuse_over_budget(
        &mut self,
        class: OpClass,
        cid: Option<&str>,
        wait_ms: u64,
        out: &mut BytesMut,
    ) -> Result<(), Close> {
        let refused = self.over_budget.count();
        if refused == 1 {
            tracing::info!(user = %self.identity.user, device = %self.identity.device, ops = class.name(), "a device is over its op budget; refusing the excess");
        }
        if refused > FloodWindow::DISCONNECT {
            return Err(Close::Violation(
                v5::DisconnectReasonCode::MessageRateTooHigh,
                format!(
                    "over {} ops refused as over budget within 10 s",
                    FloodWindow::DISCONNECT
                ),
            ));
        }
        if class == OpClass::Typing || refused > FloodWindow::ANSWERED {
            return Ok(());
        }
        let error = OpError::new(
            cid.map(str::to_string),
            "rate_limited",
            format!("too many {} ops; retry in {wait_ms} ms", class.name()),
        );
        let json = serde_json::to_vec(&error).unwrap_or_default();
        let delivery = Delivery {
            topic: Arc::from(self.identity.inbox()),
            payload: Bytes::from(frame_inbox(Route::Only(&self.identity.device), &json)),
            retain: false,
        };
        self.deliver(delivery, out);
        Ok(())
    }

    /// Whether this device may subscribe to `filter` now.
    async fn may_subscribe(&mut self, filter: &str) -> bool {
        let store = &self.shared.store;
        let me = &self.identity;
        let admitted = match self.identity.classify(filter) {
            FilterAccess::Inbox => return true,
            FilterAccess::Denied => return false,
            // Presence is hidden from the users its owner has blocked.
            FilterAccess::Presence(user) => store
                .has_blocked(&me.app_id, &user, &me.user)
                .await
                .map(|blocked| !blocked),
            FilterAccess::Room(room) => store.member(&me.app_id, &room, &me.user).await.map(|m| m.is_some()),
        };
        match admitted {
            Ok(true) => {
                self.admitted.insert(filter, ());
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!(error = %e, "subscription check failed");
                false
            }
        }
    }

    /// Subscribes the allowed filters at the switchboard and answers with one code per
    /// filter; retained presence follows the SUBACK.
    async fn subscribe(&mut self, pkid: u16, filters: Vec<(String, QoS)>, out: &mut BytesMut) {
        let mut granted = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        let mut routing = Vec::new();
        for (filter, qos) in filters {
            // Each filter may cost a database check, and each held topic memory: both are
            // bounded per connection.
            let new_topic = !self.subscriptions.contains(&filter);
            if new_topic && self.subscriptions.len() >= self.shared.settings.max_subscriptions {
                tracing::info!(user = %self.identity.user, device = %self.identity.device, %filter, "subscription refused: too many on one connection");
                granted.push(Err(Refused::Quota));
                continue;
            }
            if self.shared.budgets.take(&self.budget_key, OpClass::Subscribe).is_err() {
                metrics::counter!("chatd_rate_limited_total", "op" => OpClass::Subscribe.key()).increment(1);
                self.over_budget.count();
                granted.push(Err(Refused::Quota));
                continue;
            }
            if !self.may_subscribe(&filter).await {
                tracing::info!(user = %self.identity.user, device = %self.identity.device, %filter, "subscription refused");
                granted.push(Err(Refused::NotAuthorized));
                continue;
            }
            let qos = if qos == QoS::AtMostOnce { qos } else { QoS::AtLeastOnce };
            let subscribed = self.shared.switchboard.subscribe(&filter, self.id, &self.queue);
            retained.extend(subscribed.retained);
            routing.extend(subscribed.ready);
            self.subscriptions.insert(&filter, qos);
            granted.push(Ok(qos));
        }
        // In a cluster, SUBACK once other nodes' deliveries on the new topics are routed here:
        // a device that subscribes and then syncs misses nothing in between. Bounded, so a
        // slow NATS cannot hold the session (what it misses then, it gets by its next sync).
        if !routing.is_empty() {
            let all = futures_util::future::join_all(routing);
            if tokio::time::timeout(ROUTING_WAIT, all).await.is_err() {
                tracing::warn!(user = %self.identity.user, device = %self.identity.device, "subscription not routed across the cluster in time; answering anyway");
            }
        }
        match self.version {
            Version::V4 => {
                let codes = granted
                    .iter()
                    .map(|g| g.map_or(v4::SubscribeReasonCode::Failure, v4::SubscribeReasonCode::Success))
                    .collect();
                to_device_v4(out, v4::Packet::SubAck(v4::SubAck::new(pkid, codes)));
            }
            Version::V5 => {
                let codes = granted
                    .iter()
                    .map(|g| match g {
                        Ok(qos) => v5::SubscribeReasonCode::Success(qos_v5(*qos)),
                        Err(Refused::NotAuthorized) => v5::SubscribeReasonCode::NotAuthorized,
                        Err(Refused::Quota) => v5::SubscribeReasonCode::QuotaExceeded,
                    })
                    .collect();
                let ack = v5::SubAck {
                    pkid,
                    return_codes: codes,
                    properties: None,
                };
                to_device_v5(out, v5::Packet::SubAck(ack));
            }
        }
        for delivery in retained {
            self.deliver(delivery, out);
        }
    }

    fn unsubscribe(&mut self, filters: &[String]) {
        for filter in filters {
            if self.subscriptions.remove(filter) {
                self.shared.switchboard.unsubscribe(filter, self.id);
            }
        }
    }

    /// A publish from the switchboard: checked against admission and per-device routing,
    /// then sent (or held back by MQTT 5 flow control).
    fn deliver(&mut self, mut delivery: Delivery, out: &mut BytesMut) {
        let Some(&qos) = self.subscriptions.get(&delivery.topic) else {
            return; // unsubscribed while it was queued
        };
        if self.identity.needs_admission(&delivery.topic) && !self.admitted.contains(&delivery.topic) {
            return; // left, kicked or blocked: the topic's publishes stop here
        }
        if self.identity.is_inbox(&delivery.topic) {
            let Some((route, json)) = unframe_inbox(&delivery.payload) else {
                tracing::error!(topic = %delivery.topic, "inbox publish without a route frame; dropped");
                return;
            };
            let wanted = match route {
                Route::All => true,
                Route::Only(device) => device == self.identity.device,
                Route::Except(device) => device != self.identity.device,
            };
            if !wanted {
                return;
            }
            let skip = delivery.payload.len() - json.len();
            delivery.payload = delivery.payload.slice(skip..);
        }
        if qos == QoS::AtLeastOnce && self.flow.unacked() >= usize::from(self.receive_max) {
            let flow = self.flow.get_mut();
            if flow.held.len() >= SESSION_QUEUE {
                self.shared.switchboard.drops.record(&self.identity.device);
                metrics::counter!("chatd_deliveries_dropped_total", "reason" => "device_not_acking").increment(1);
                return;
            }
            flow.held.push_back((delivery, qos));
        } else {
            self.publish_to_device(delivery, qos, out);
        }
    }

    /// Writes a publish in the device's version; one larger than the device accepts is
    /// dropped, as MQTT 5 requires.
    fn publish_to_device(&mut self, delivery: Delivery, qos: QoS, out: &mut BytesMut) {
        let before = out.len();
        let pkid = match qos {
            QoS::AtMostOnce => 0,
            _ => self.flow.get_mut().next_packet_id(),
        };
        // Set when this publish introduces a topic alias: if it is not sent, neither is the alias.
        let mut new_alias = false;
        let payload = match self.compact {
            true => store::compact::from_json(&delivery.payload).map_or_else(|| delivery.payload.clone(), Bytes::from),
            false => delivery.payload.clone(),
        };
        match self.version {
            Version::V4 => {
                let mut publish = v4::Publish::from_bytes(delivery.topic.to_string(), qos, payload);
                publish.pkid = pkid;
                publish.retain = delivery.retain;
                to_device_v4(out, v4::Packet::Publish(publish));
            }
            Version::V5 => {
                let known = self.flow.get().map_or(0, |flow| flow.device_aliases.len());
                let alias = self
                    .flow
                    .get()
                    .and_then(|flow| flow.device_aliases.get(&delivery.topic));
                let (topic, alias) = match alias {
                    Some(&alias) => (String::new(), Some(alias)),
                    None if known < usize::from(self.device_alias_max) => {
                        let alias = known as u16 + 1;
                        new_alias = true;
                        self.flow.get_mut().device_aliases.insert(delivery.topic.clone(), alias);
                        (delivery.topic.to_string(), Some(alias))
                    }
                    None => (delivery.topic.to_string(), None),
                };
                let properties = alias.map(|alias| v5::PublishProperties {
                    topic_alias: Some(alias),
                    ..Default::default()
                });
                let mut publish = v5::Publish::new(topic, qos_v5(qos), payload, properties);
                publish.pkid = pkid;
                publish.retain = delivery.retain;
                to_device_v5(out, v5::Packet::Publish(publish));
            }
        }
        if out.len() - before > self.device_max_packet as usize {
            out.truncate(before);
            if new_alias {
                self.flow.get_mut().device_aliases.remove(&delivery.topic);
            }
            tracing::info!(device = %self.identity.device, size = delivery.payload.len(), "publish larger than the device accepts; dropped");
            metrics::counter!("chatd_deliveries_dropped_total", "reason" => "too_large_for_device").increment(1);
        } else {
            metrics::counter!("chatd_mqtt_deliveries_total").increment(1);
            if qos != QoS::AtMostOnce {
                self.flow.get_mut().unacked.insert(pkid);
            }
        }
    }

    /// The device acknowledged a QoS 1 publish: its receive window has room again.
    fn device_acked(&mut self, pkid: u16, out: &mut BytesMut) {
        if !self.flow.acked(pkid) {
            tracing::debug!(pkid, device = %self.identity.device, "unsolicited PUBACK from a device");
            return;
        }
        while self.flow.unacked() < usize::from(self.receive_max) {
            let Some((delivery, qos)) = self.flow.pop_held() else {
                break;
            };
            self.publish_to_device(delivery, qos, out);
        }
    }
}

/// What goes to the bridge for a device's will: the JSON as it is, or the compact
/// envelope turned into JSON (or, if it is not one, the reason, which the bridge answers
/// with an `error` op).
fn outbox_frame(device: &str, compact: bool, payload: &[u8]) -> Vec<u8> {
    if !compact {
        return frame_outbox(device, payload);
    }
    match store::compact::to_json(payload) {
        Ok(json) => frame_outbox(device, &json),
        Err(e) => frame_outbox_unreadable(device, &e.to_string()),
    }
}

fn to_device_v4(out: &mut BytesMut, packet: v4::Packet) {
    let _ = packet.write(out, usize::MAX);
}

fn to_device_v5(out: &mut BytesMut, packet: v5::Packet) {
    let _ = packet.write(out, None);
}

/// Writes what is buffered for the device. A device that reads nothing of it for `limit`
/// (a dead link, a client that stopped reading) is closed: a blocked write would otherwise
/// hold the session, its memory and its task until TCP gives up, many minutes later.
async fn flush(io: &mut ClientIo, out: &mut BytesMut, limit: Duration) -> Result<(), Close> {
    if out.is_empty() {
        return Ok(());
    }
    // Boxed: a write's future (with its timer) would otherwise take room in every idle
    // connection's task. The buffer is given back once written, for the same reason (a
    // burst may have grown it to 64 KiB and more).
    match Box::pin(timeout(limit, io.write_all(out))).await {
        Ok(Ok(())) => {
            *out = BytesMut::new();
            Ok(())
        }
        Ok(Err(_)) => Err(Close::Device),
        Err(_) => Err(Close::WriteStalled),
    }
}

fn malformed(why: String, too_large: bool) -> Close {
    let reason = if too_large {
        v5::DisconnectReasonCode::PacketTooLarge
    } else {
        v5::DisconnectReasonCode::MalformedPacket
    };
    Close::Violation(reason, why)
}

fn protocol_error(why: String) -> Close {
    Close::Violation(v5::DisconnectReasonCode::ProtocolError, why)
}

fn packet_name_v4(packet: &v4::Packet) -> &'static str {
    match packet {
        v4::Packet::Connect(_) => "CONNECT",
        v4::Packet::ConnAck(_) => "CONNACK",
        v4::Packet::Publish(_) => "PUBLISH",
        v4::Packet::PubAck(_) => "PUBACK",
        v4::Packet::PubRec(_) => "PUBREC",
        v4::Packet::PubRel(_) => "PUBREL",
        v4::Packet::PubComp(_) => "PUBCOMP",
        v4::Packet::Subscribe(_) => "SUBSCRIBE",
        v4::Packet::SubAck(_) => "SUBACK",
        v4::Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        v4::Packet::UnsubAck(_) => "UNSUBACK",
        v4::Packet::PingReq => "PINGREQ",
        v4::Packet::PingResp => "PINGRESP",
        v4::Packet::Disconnect => "DISCONNECT",
    }
}

fn qos_v5(qos: QoS) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}
