//! One device connection, from CONNECT to close.
//!
//! The gate reads the device's CONNECT (3.1.1 or 5), checks its token, opens its own
//! MQTT 3.1.1 connection to rumqttd on the device's behalf, and then relays packets both
//! ways. On the way in it enforces the ACL and tags outbox publishes with the device id;
//! on the way out it applies the bridge's per-device routing and translates to the
//! device's protocol version. It answers the device's PINGREQs and keeps its own keepalive
//! with rumqttd, so a device may use keepalive 0 (which rumqttd refuses) and a silent device
//! is dropped after 1.5 × its keepalive.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self, v4, QoS};
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};

use super::acl::{Acl, FilterAccess, Identity};
use super::transport::ClientIo;
use super::Shared;
use crate::presence::{Control, UserKey};
use store::envelope::{frame_outbox, frame_outbox_unreadable, unframe_inbox, Route};

/// The keepalive the gate uses on its own connection to rumqttd.
const UPSTREAM_KEEPALIVE: u16 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V4,
    V5,
}

/// Why a CONNECT is refused; each maps to a 3.1.1 and a 5 return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Protocol,
    ClientId,
    NotAuthorized,
    Busy,
    Unavailable,
}

/// What ends a session, and what (if anything) the device is told.
#[derive(Debug)]
enum Close {
    /// The device went away or said DISCONNECT.
    Device,
    /// rumqttd closed our connection (for example, the same device connected again).
    Upstream,
    /// The device broke a rule; 5 devices get a DISCONNECT with this reason.
    Violation(v5::DisconnectReasonCode, String),
    Shutdown,
    /// The server closed it (the user was deleted).
    Kicked,
    /// The token the device connected with expired.
    Expired,
}

/// The version-neutral part of a CONNECT that the gate acts on.
struct ConnectRequest {
    version: Version,
    client_id: String,
    clean: bool,
    keep_alive: u16,
    login: Option<(String, String)>,
    will: Option<v4::LastWill>,
    /// MQTT 5: how many QoS 1/2 publishes the device takes unacknowledged.
    receive_max: u16,
    /// MQTT 5: the largest packet the device takes.
    device_max_packet: usize,
    /// MQTT 5: how many topic aliases the device takes from the server.
    device_alias_max: u16,
    /// The device asked for the compact envelope (MessagePack) instead of JSON.
    compact: bool,
}

/// Serves one device connection until it ends.
pub(crate) async fn serve(mut io: ClientIo, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    // Taken before CONNECT so the limit also bounds connections still authenticating;
    // over the limit the device still gets a CONNACK that says why.
    let slot = shared.slots.clone().try_acquire_owned().ok();
    let mut buf = BytesMut::with_capacity(1024);
    let max_packet = shared.settings.max_packet_size;
    let request = match timeout(
        shared.settings.connect_timeout,
        read_connect(&mut io, &mut buf, max_packet),
    )
    .await
    {
        Ok(Ok(Ok(request))) => request,
        Ok(Ok(Err((version, refusal)))) => {
            refuse(&mut io, version, refusal, None).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection closed before CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!("no CONNECT in time");
            io.close().await;
            return;
        }
    };
    let version = request.version;
    if slot.is_none() {
        tracing::warn!("connection limit reached; refusing a device");
        refuse(&mut io, version, Refusal::Busy, None).await;
        return;
    }
    let identity = match authenticate(&shared, &request).await {
        Ok(identity) => identity,
        Err((refusal, why)) => {
            tracing::info!(client_id = %request.client_id, reason = %why, "CONNECT refused");
            refuse(&mut io, version, refusal, Some(why)).await;
            return;
        }
    };
    let acl = Acl::new(&identity);
    if let Some(will) = &request.will {
        if !acl.may_publish(&will.topic) {
            refuse(
                &mut io,
                version,
                Refusal::NotAuthorized,
                Some("a will may only go to your own outbox".into()),
            )
            .await;
            return;
        }
    }
    let (mut upstream, session_present) = match open_upstream(&shared, &identity, &request).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the embedded broker");
            refuse(&mut io, version, Refusal::Unavailable, None).await;
            return;
        }
    };
    let mut out = BytesMut::new();
    let assigned = request.client_id.is_empty().then_some(identity.device.as_str());
    write_connack(&mut out, version, session_present, assigned, &shared);
    if io.write_all(&out).await.is_err() {
        return;
    }
    let mut presence = shared.presence.connected(UserKey {
        org: identity.org.clone(),
        app: identity.app.clone(),
        user: identity.user.clone(),
    });
    tracing::debug!(user = %identity.user, device = %identity.device, ?version, "device connected");
    let mut session = Session {
        version,
        identity,
        acl,
        max_packet,
        topic_alias_max: shared.settings.topic_alias_max,
        aliases: HashMap::new(),
        pending_subs: HashMap::new(),
        pending_unsubs: HashMap::new(),
        upstream_inflight: VecDeque::new(),
        receive_max: request.receive_max as usize,
        device_max_packet: request.device_max_packet,
        device_alias_max: request.device_alias_max,
        device_aliases: HashMap::new(),
        compact: request.compact,
        device_inflight: 0,
        held: VecDeque::new(),
        admitted: HashSet::new(),
        shared: shared.clone(),
    };
    let keep_alive = request.keep_alive;
    let close = session
        .relay(&mut io, &mut upstream, buf, keep_alive, &mut presence, shutdown)
        .await;
    tracing::debug!(user = %session.identity.user, device = %session.identity.device, ?close, "device disconnected");
    let reason = match &close {
        Close::Violation(reason, why) => {
            tracing::info!(user = %session.identity.user, device = %session.identity.device, %why, "closing a device connection");
            Some(*reason)
        }
        Close::Shutdown => Some(v5::DisconnectReasonCode::ServerShuttingDown),
        Close::Kicked => Some(v5::DisconnectReasonCode::AdministrativeAction),
        Close::Expired => Some(v5::DisconnectReasonCode::NotAuthorized),
        Close::Device | Close::Upstream => None,
    };
    if let (Some(reason), Version::V5) = (reason, version) {
        // Written by hand: rumqttc's encoder puts a stray byte after a DISCONNECT without
        // properties. Reason code, no properties: `E0 01 <reason>`.
        let _ = io.write_all(&[0xE0, 0x01, reason as u8]).await;
    }
    if matches!(close, Close::Kicked | Close::Shutdown | Close::Expired) {
        // A server-side close is no reason to publish the device's will.
        let _ = upstream.write_all(&[0xE0, 0x00]).await;
    }
    io.close().await;
}

/// Reads bytes until a whole first packet is there and parses it as CONNECT.
async fn read_connect(
    io: &mut ClientIo,
    buf: &mut BytesMut,
    max_packet: usize,
) -> std::io::Result<Result<ConnectRequest, (Version, Refusal)>> {
    loop {
        // Not MQTT (or not starting with CONNECT): no need to wait for the rest.
        if buf.first().is_some_and(|b| b >> 4 != 1) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "first packet is not CONNECT",
            ));
        }
        match mqttbytes::check(buf.iter(), max_packet) {
            Ok(header) => {
                let _ = header;
                let (level, packet_type) = (connect_level(buf), buf[0] >> 4);
                if packet_type != 1 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "first packet is not CONNECT",
                    ));
                }
                return Ok(match level {
                    Some(4) => match v4::Packet::read(buf, max_packet) {
                        Ok(v4::Packet::Connect(c)) => {
                            let (login, compact) = negotiate(c.login.map(|l| (l.username, l.password)), false);
                            Ok(ConnectRequest {
                                version: Version::V4,
                                client_id: c.client_id,
                                clean: c.clean_session,
                                keep_alive: c.keep_alive,
                                login,
                                will: c.last_will,
                                receive_max: u16::MAX,
                                device_max_packet: usize::MAX,
                                device_alias_max: 0,
                                compact,
                            })
                        }
                        _ => Err((Version::V4, Refusal::Protocol)),
                    },
                    Some(5) => match v5::Packet::read(buf, Some(max_packet as u32)) {
                        Ok(v5::Packet::Connect(c, will, login)) => {
                            let asked = c.properties.as_ref().is_some_and(|p| {
                                p.user_properties.iter().any(|(k, v)| k == ENCODING_KEY && v == COMPACT)
                            });
                            let (login, compact) = negotiate(login.map(|l| (l.username, l.password)), asked);
                            Ok(ConnectRequest {
                                version: Version::V5,
                                compact,
                                device_alias_max: c.properties.as_ref().and_then(|p| p.topic_alias_max).unwrap_or(0),
                                receive_max: c
                                    .properties
                                    .as_ref()
                                    .and_then(|p| p.receive_maximum)
                                    .filter(|n| *n > 0)
                                    .unwrap_or(u16::MAX),
                                device_max_packet: c
                                    .properties
                                    .as_ref()
                                    .and_then(|p| p.max_packet_size)
                                    .map_or(usize::MAX, |n| n as usize),
                                client_id: c.client_id,
                                clean: c.clean_start,
                                keep_alive: c.keep_alive,
                                login,
                                will: will.and_then(|w| {
                                    Some(v4::LastWill {
                                        topic: String::from_utf8(w.topic.to_vec()).ok()?,
                                        message: w.message,
                                        qos: qos_v4(w.qos),
                                        retain: w.retain,
                                    })
                                }),
                            })
                        }
                        _ => Err((Version::V5, Refusal::Protocol)),
                    },
                    _ => Err((Version::V4, Refusal::Protocol)),
                });
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                if io.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

/// The CONNECT user property (MQTT 5) that asks for an encoding, and its compact value.
const ENCODING_KEY: &str = "enc";
const COMPACT: &str = "compact";

/// Whether the device asked for the compact envelope, by the MQTT 5 user property
/// `enc: compact` (`asked`) or, in any version, a username ending in `?enc=compact`, which
/// is cut off before authentication.
fn negotiate(login: Option<(String, String)>, asked: bool) -> (Option<(String, String)>, bool) {
    const SUFFIX: &str = "?enc=compact";
    match login {
        Some((user, pass)) if user.ends_with(SUFFIX) => {
            (Some((user[..user.len() - SUFFIX.len()].to_string(), pass)), true)
        }
        login => (login, asked),
    }
}

/// The protocol level byte of a CONNECT: after the fixed header, `00 04 'MQTT'`, then the level.
fn connect_level(buf: &[u8]) -> Option<u8> {
    // Fixed header: one type byte, then 1-4 bytes of remaining length (last has bit 7 clear).
    let length_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let start = 1 + length_bytes;
    let vh = buf.get(start..start + 7)?;
    (vh[..6] == *b"\x00\x04MQTT").then_some(vh[6])
}

async fn authenticate(shared: &Shared, request: &ConnectRequest) -> Result<Identity, (Refusal, String)> {
    let not_authorized = |why: &str| (Refusal::NotAuthorized, why.to_string());
    let (username, token) = request
        .login
        .as_ref()
        .ok_or_else(|| not_authorized("no username/password"))?;
    let claims = shared
        .tokens
        .verify(token)
        .map_err(|e| not_authorized(&e.to_string()))?;
    let username = username.to_ascii_lowercase();
    if claims.role != store::tokens::Role::User || claims.sub != username {
        return Err(not_authorized("token is not this user's"));
    }
    let app = shared
        .store
        .find_app(&claims.org, &claims.app)
        .await
        .map_err(|e| not_authorized(&e.to_string()))?;
    match shared.store.user_exists(&app.id, &username).await {
        Ok(true) => {}
        Ok(false) => return Err(not_authorized("user does not exist")),
        Err(e) => return Err((Refusal::Unavailable, e.to_string())),
    }
    let device = if request.client_id.is_empty() {
        if request.version == Version::V4 && !request.clean {
            return Err((Refusal::ClientId, "an empty client id needs a clean session".into()));
        }
        format!("auto-{}", store::tokens::random_secret(12))
    } else {
        request.client_id.clone()
    };
    store::names::validate_device(&device).map_err(|e| (Refusal::ClientId, e.to_string()))?;
    Ok(Identity {
        org: claims.org,
        app: claims.app,
        app_id: app.id,
        user: username,
        device,
        token_expires: claims.exp,
    })
}

/// Connects to rumqttd for this device and returns the connection and `session_present`.
async fn open_upstream(shared: &Shared, id: &Identity, request: &ConnectRequest) -> std::io::Result<(TcpStream, bool)> {
    let mut upstream = TcpStream::connect(shared.broker.addr).await?;
    upstream.set_nodelay(true)?;
    // Namespaced so that two users' devices with the same client id never take over each
    // other's sessions inside rumqttd.
    let mut connect = v4::Connect::new(format!("{}:{}:{}:{}", id.org, id.app, id.user, id.device));
    connect.keep_alive = UPSTREAM_KEEPALIVE;
    connect.clean_session = request.clean;
    connect.set_login(&shared.broker.username, &shared.broker.password);
    connect.last_will = request.will.clone().map(|mut will| {
        will.message = Bytes::from(outbox_frame(&id.device, request.compact, &will.message));
        will.retain = false;
        will
    });
    let mut out = BytesMut::new();
    v4::Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .map_err(std::io::Error::other)?;
    upstream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(64);
    let connack = timeout(Duration::from_secs(10), async {
        loop {
            match v4::Packet::read(&mut buf, 1024) {
                Ok(v4::Packet::ConnAck(ack)) => return Ok(ack),
                Ok(other) => return Err(std::io::Error::other(format!("expected CONNACK, got {other:?}"))),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    if upstream.read_buf(&mut buf).await? == 0 {
                        return Err(std::io::Error::other("broker closed the connection at CONNECT"));
                    }
                }
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::other("broker did not answer CONNECT"))??;
    if connack.code != v4::ConnectReturnCode::Success {
        return Err(std::io::Error::other(format!("broker refused: {:?}", connack.code)));
    }
    Ok((upstream, connack.session_present))
}

async fn refuse(io: &mut ClientIo, version: Version, refusal: Refusal, reason: Option<String>) {
    let mut out = BytesMut::new();
    match version {
        Version::V4 => {
            let code = match refusal {
                Refusal::Protocol => v4::ConnectReturnCode::RefusedProtocolVersion,
                Refusal::ClientId => v4::ConnectReturnCode::BadClientId,
                Refusal::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                Refusal::Busy | Refusal::Unavailable => v4::ConnectReturnCode::ServiceUnavailable,
            };
            let _ = v4::Packet::ConnAck(v4::ConnAck::new(code, false)).write(&mut out, usize::MAX);
        }
        Version::V5 => {
            let code = match refusal {
                Refusal::Protocol => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                Refusal::ClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                Refusal::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                Refusal::Busy => v5::ConnectReturnCode::ServerBusy,
                Refusal::Unavailable => v5::ConnectReturnCode::ServerUnavailable,
            };
            let properties = reason.map(|reason_string| v5::ConnAckProperties {
                reason_string: Some(reason_string),
                ..connack_properties()
            });
            let _ = v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code,
                properties,
            })
            .write(&mut out, None);
        }
    }
    let _ = io.write_all(&out).await;
    io.close().await;
}

fn write_connack(
    out: &mut BytesMut,
    version: Version,
    session_present: bool,
    assigned_id: Option<&str>,
    shared: &Shared,
) {
    match version {
        Version::V4 => {
            let _ = v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, session_present))
                .write(out, usize::MAX);
        }
        Version::V5 => {
            let properties = v5::ConnAckProperties {
                assigned_client_identifier: assigned_id.map(str::to_string),
                topic_alias_max: Some(shared.settings.topic_alias_max),
                max_packet_size: Some(shared.settings.max_packet_size as u32),
                retain_available: Some(0),
                wildcard_subscription_available: Some(0),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                ..connack_properties()
            };
            let _ = v5::Packet::ConnAck(v5::ConnAck {
                session_present,
                code: v5::ConnectReturnCode::Success,
                properties: Some(properties),
            })
            .write(out, None);
        }
    }
}

/// The relay's state for one connection.
struct Session {
    version: Version,
    identity: Identity,
    acl: Acl,
    max_packet: usize,
    topic_alias_max: u16,
    /// MQTT 5 topic aliases the device has set.
    aliases: HashMap<u16, String>,
    /// SUBSCRIBEs forwarded with some filters removed: for each packet id, the place of each
    /// original filter (`None` = forwarded, `Some` = refused), to rebuild the SUBACK.
    pending_subs: HashMap<u16, Vec<bool>>,
    /// UNSUBSCRIBEs in flight: packet id -> number of filters (a 5 UNSUBACK needs one code each).
    pending_unsubs: HashMap<u16, usize>,
    /// QoS 1 publishes from rumqttd not yet acknowledged to it, in the order it sent them,
    /// with whether the device (or the gate, for publishes routed to another device) is
    /// done with each. rumqttd drops a connection that acks out of order, so acks go up
    /// only from the front of this queue.
    upstream_inflight: VecDeque<(u16, bool)>,
    /// MQTT 5 flow control towards the device: its receive maximum, the QoS 1/2 publishes
    /// it has not acknowledged yet, and those held back until it does.
    receive_max: usize,
    device_max_packet: usize,
    /// MQTT 5 topic aliases the gate has set towards the device (topic -> alias), at most
    /// the device's Topic Alias Maximum: after the first publish on a topic, the topic
    /// travels as two bytes.
    device_alias_max: u16,
    device_aliases: HashMap<String, u16>,
    /// Payloads travel to and from this device in the compact envelope.
    compact: bool,
    device_inflight: usize,
    held: VecDeque<v4::Publish>,
    /// Room and presence topics this connection was admitted to at SUBSCRIBE (as a member,
    /// or as someone not blocked). Leaving a room, being kicked or being blocked revokes a
    /// topic, and its publishes stop at the gate even while the device stays subscribed.
    admitted: HashSet<String>,
    shared: Arc<Shared>,
}

/// Where one parsed packet goes.
#[derive(Default)]
struct Outgoing {
    to_device: BytesMut,
    to_broker: BytesMut,
}

impl Session {
    async fn relay(
        &mut self,
        io: &mut ClientIo,
        upstream: &mut TcpStream,
        mut device_buf: BytesMut,
        keep_alive: u16,
        presence: &mut crate::presence::PresenceGuard,
        mut shutdown: watch::Receiver<bool>,
    ) -> Close {
        let mut broker_buf = BytesMut::with_capacity(4096);
        let idle_limit = (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500));
        let far_future = Instant::now() + Duration::from_secs(86400 * 365);
        let mut idle_deadline = idle_limit.map_or(far_future, |d| Instant::now() + d);
        // A session lasts as long as its token: the device reconnects with a fresh one.
        let token_left = self
            .identity
            .token_expires
            .saturating_sub(store::now_ms() / 1000)
            .max(0);
        let token_deadline = Instant::now() + Duration::from_secs(token_left as u64).min(far_future - Instant::now());
        let mut ping = tokio::time::interval(Duration::from_secs(UPSTREAM_KEEPALIVE as u64 / 2));
        ping.tick().await;
        let mut out = Outgoing::default();
        // Bytes may have arrived with the CONNECT.
        let mut pending_device_bytes = !device_buf.is_empty();
        loop {
            if pending_device_bytes {
                pending_device_bytes = false;
                if let Err(close) = self.handle_device_bytes(&mut device_buf, &mut out).await {
                    let _ = flush(io, upstream, &mut out).await;
                    return close;
                }
                if let Err(close) = flush(io, upstream, &mut out).await {
                    return close;
                }
            }
            tokio::select! {
                read = io.read_buf(&mut device_buf) => {
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
                read = upstream.read_buf(&mut broker_buf) => {
                    match read {
                        Ok(0) | Err(_) => return Close::Upstream,
                        Ok(_) => {
                            quick_ack(upstream);
                            if let Err(close) = self.handle_broker_bytes(&mut broker_buf, &mut out) {
                                return close;
                            }
                            if let Err(close) = flush(io, upstream, &mut out).await {
                                return close;
                            }
                        }
                    }
                }
                _ = sleep_until(idle_deadline) => {
                    return Close::Violation(v5::DisconnectReasonCode::KeepAliveTimeout, "keepalive timeout".into());
                }
                _ = sleep_until(token_deadline) => return Close::Expired,
                _ = ping.tick() => {
                    let _ = v4::Packet::PingReq.write(&mut out.to_broker, usize::MAX);
                    if let Err(close) = flush(io, upstream, &mut out).await {
                        return close;
                    }
                }
                _ = shutdown.changed() => return Close::Shutdown,
                control = presence.next_control() => match control {
                    Control::Disconnect => return Close::Kicked,
                    Control::Revoke(topic) => {
                        self.admitted.remove(&topic);
                    }
                },
            }
        }
    }

    /// Handles every complete packet the device has sent.
    async fn handle_device_bytes(&mut self, buf: &mut BytesMut, out: &mut Outgoing) -> Result<(), Close> {
        loop {
            match self.version {
                Version::V4 => match v4::Packet::read(buf, self.max_packet) {
                    Ok(packet) => self.device_v4(packet, out).await?,
                    Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
                    Err(e) => {
                        return Err(malformed(
                            e.to_string(),
                            matches!(e, mqttbytes::Error::PayloadSizeLimitExceeded(_)),
                        ))
                    }
                },
                // MQTT 5 lets a DISCONNECT omit its properties, or its reason code too (as
                // Mosquitto's clients do); rumqttc's codec rejects both short forms.
                Version::V5 if short_disconnect(buf).is_some() => {
                    let (len, code) = short_disconnect(buf).unwrap_or_default();
                    let _ = buf.split_to(len);
                    let reason = if code == v5::DisconnectReasonCode::DisconnectWithWillMessage as u8 {
                        v5::DisconnectReasonCode::DisconnectWithWillMessage
                    } else {
                        v5::DisconnectReasonCode::NormalDisconnection
                    };
                    self.device_v5(v5::Packet::Disconnect(v5::Disconnect::new(reason)), out)
                        .await?
                }
                Version::V5 => match v5::Packet::read(buf, Some(self.max_packet as u32)) {
                    Ok(packet) => self.device_v5(packet, out).await?,
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
                    Err(e) => {
                        let too_large = matches!(e, rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. });
                        return Err(malformed(e.to_string(), too_large));
                    }
                },
            }
        }
    }

    async fn device_v4(&mut self, packet: v4::Packet, out: &mut Outgoing) -> Result<(), Close> {
        match packet {
            v4::Packet::Publish(p) => {
                if !self.acl.may_publish(&p.topic) {
                    // 3.1.1 has no way to refuse a publish but closing the connection.
                    return Err(Close::Violation(
                        v5::DisconnectReasonCode::NotAuthorized,
                        format!("publish to '{}' not allowed", p.topic),
                    ));
                }
                self.forward_publish(p.topic, p.qos, p.pkid, p.dup, &p.payload, out);
            }
            v4::Packet::Subscribe(s) => {
                let filters = s.filters.into_iter().map(|f| (f.path, f.qos)).collect();
                self.subscribe(s.pkid, filters, out).await;
            }
            v4::Packet::Unsubscribe(u) => self.unsubscribe(u.pkid, u.topics, out),
            v4::Packet::PubAck(a) => self.device_acked(a.pkid, out),
            v4::Packet::PubRec(a) => to_broker(out, v4::Packet::PubRec(a)),
            v4::Packet::PubRel(a) => to_broker(out, v4::Packet::PubRel(a)),
            v4::Packet::PubComp(a) => {
                self.device_window_freed(out);
                to_broker(out, v4::Packet::PubComp(a))
            }
            v4::Packet::PingReq => {
                let _ = v4::Packet::PingResp.write(&mut out.to_device, usize::MAX);
            }
            v4::Packet::Disconnect => {
                to_broker(out, v4::Packet::Disconnect);
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

    async fn device_v5(&mut self, packet: v5::Packet, out: &mut Outgoing) -> Result<(), Close> {
        match packet {
            v5::Packet::Publish(p) => {
                let mut topic =
                    String::from_utf8(p.topic.to_vec()).map_err(|_| malformed("topic is not UTF-8".into(), false))?;
                if let Some(alias) = p.properties.as_ref().and_then(|props| props.topic_alias) {
                    if alias == 0 || alias > self.topic_alias_max {
                        return Err(Close::Violation(
                            v5::DisconnectReasonCode::TopicAliasInvalid,
                            format!("topic alias {alias} out of range"),
                        ));
                    }
                    if topic.is_empty() {
                        topic = self
                            .aliases
                            .get(&alias)
                            .cloned()
                            .ok_or_else(|| protocol_error(format!("unknown topic alias {alias}")))?;
                    } else {
                        self.aliases.insert(alias, topic.clone());
                    }
                }
                if !self.acl.may_publish(&topic) {
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
                self.forward_publish(topic, qos_v4(p.qos), p.pkid, p.dup, &p.payload, out);
            }
            v5::Packet::Subscribe(s) => {
                let filters = s.filters.into_iter().map(|f| (f.path, qos_v4(f.qos))).collect();
                self.subscribe(s.pkid, filters, out).await;
            }
            v5::Packet::Unsubscribe(u) => self.unsubscribe(u.pkid, u.filters, out),
            v5::Packet::PubAck(a) => self.device_acked(a.pkid, out),
            v5::Packet::PubRec(a) => to_broker(out, v4::Packet::PubRec(v4::PubRec::new(a.pkid))),
            v5::Packet::PubRel(a) => to_broker(out, v4::Packet::PubRel(v4::PubRel::new(a.pkid))),
            v5::Packet::PubComp(a) => {
                self.device_window_freed(out);
                to_broker(out, v4::Packet::PubComp(v4::PubComp::new(a.pkid)))
            }
            v5::Packet::PingReq(_) => to_device_v5(out, v5::Packet::PingResp(v5::PingResp)),
            v5::Packet::Disconnect(d) => {
                // "Disconnect with will": close without DISCONNECT so rumqttd sends the will.
                if d.reason_code != v5::DisconnectReasonCode::DisconnectWithWillMessage {
                    to_broker(out, v4::Packet::Disconnect);
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

    fn forward_publish(&mut self, topic: String, qos: QoS, pkid: u16, dup: bool, payload: &[u8], out: &mut Outgoing) {
        // Retain is dropped: an outbox is a queue to the bridge, not a state.
        let mut publish = v4::Publish::from_bytes(
            topic,
            qos,
            Bytes::from(outbox_frame(&self.identity.device, self.compact, payload)),
        );
        publish.pkid = pkid;
        publish.dup = dup;
        to_broker(out, v4::Packet::Publish(publish));
    }

    /// Whether this device may subscribe to `filter` now.
    async fn may_subscribe(&mut self, filter: &str) -> bool {
        let store = &self.shared.store;
        let me = &self.identity;
        let admitted = match self.acl.classify(filter) {
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
                self.admitted.insert(filter.to_string());
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!(error = %e, "subscription check failed");
                false
            }
        }
    }

    async fn subscribe(&mut self, pkid: u16, filters: Vec<(String, QoS)>, out: &mut Outgoing) {
        let mut allowed = Vec::with_capacity(filters.len());
        for (filter, _) in &filters {
            allowed.push(self.may_subscribe(filter).await);
        }
        for ((filter, _), ok) in filters.iter().zip(&allowed) {
            if !ok {
                tracing::info!(user = %self.identity.user, device = %self.identity.device, %filter, "subscription refused");
            }
        }
        let forward: Vec<v4::SubscribeFilter> = filters
            .into_iter()
            .zip(&allowed)
            .filter(|(_, ok)| **ok)
            .map(|((path, qos), _)| v4::SubscribeFilter::new(path, qos))
            .collect();
        if forward.is_empty() {
            self.write_suback(pkid, &allowed, &mut Vec::new().into_iter(), out);
            return;
        }
        self.pending_subs.insert(pkid, allowed);
        to_broker(out, v4::Packet::Subscribe(v4::Subscribe { pkid, filters: forward }));
    }

    fn unsubscribe(&mut self, pkid: u16, filters: Vec<String>, out: &mut Outgoing) {
        self.pending_unsubs.insert(pkid, filters.len());
        to_broker(out, v4::Packet::Unsubscribe(v4::Unsubscribe { pkid, topics: filters }));
    }

    /// Writes a SUBACK with one code per original filter: refused ones get "not
    /// authorized", the others take rumqttd's codes in order.
    fn write_suback(
        &self,
        pkid: u16,
        allowed: &[bool],
        broker_codes: &mut dyn Iterator<Item = v4::SubscribeReasonCode>,
        out: &mut Outgoing,
    ) {
        match self.version {
            Version::V4 => {
                let codes = allowed
                    .iter()
                    .map(|ok| {
                        if *ok {
                            broker_codes.next().unwrap_or(v4::SubscribeReasonCode::Failure)
                        } else {
                            v4::SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                let _ = v4::Packet::SubAck(v4::SubAck::new(pkid, codes)).write(&mut out.to_device, usize::MAX);
            }
            Version::V5 => {
                let codes = allowed
                    .iter()
                    .map(|ok| match (ok, ok.then(|| broker_codes.next()).flatten()) {
                        (false, _) => v5::SubscribeReasonCode::NotAuthorized,
                        (true, Some(v4::SubscribeReasonCode::Success(qos))) => {
                            v5::SubscribeReasonCode::Success(qos_v5(qos))
                        }
                        (true, _) => v5::SubscribeReasonCode::Unspecified,
                    })
                    .collect();
                to_device_v5(
                    out,
                    v5::Packet::SubAck(v5::SubAck {
                        pkid,
                        return_codes: codes,
                        properties: None,
                    }),
                );
            }
        }
    }

    /// Handles every complete packet rumqttd has sent.
    fn handle_broker_bytes(&mut self, buf: &mut BytesMut, out: &mut Outgoing) -> Result<(), Close> {
        loop {
            let packet = match v4::Packet::read(buf, usize::MAX >> 1) {
                Ok(packet) => packet,
                Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, "unreadable packet from the embedded broker");
                    return Err(Close::Upstream);
                }
            };
            match packet {
                v4::Packet::Publish(mut p) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.upstream_inflight.push_back((p.pkid, false));
                    }
                    if self.acl.needs_admission(&p.topic) && !self.admitted.contains(&p.topic) {
                        // Left, kicked or blocked: the topic's publishes stop here.
                        self.ack_dropped(&p, out);
                        continue;
                    }
                    if p.topic == self.acl.inbox() {
                        let Some((route, json)) = unframe_inbox(&p.payload) else {
                            tracing::error!(topic = %p.topic, "inbox publish without a route frame; dropped");
                            self.ack_dropped(&p, out);
                            continue;
                        };
                        let wanted = match route {
                            Route::All => true,
                            Route::Only(device) => device == self.identity.device,
                            Route::Except(device) => device != self.identity.device,
                        };
                        if !wanted {
                            self.ack_dropped(&p, out);
                            continue;
                        }
                        let skip = p.payload.len() - json.len();
                        p.payload = p.payload.slice(skip..);
                    }
                    if p.qos != QoS::AtMostOnce && self.device_inflight >= self.receive_max {
                        self.held.push_back(p);
                    } else {
                        self.publish_to_device(p, out);
                    }
                }
                v4::Packet::PubAck(a) => match self.version {
                    Version::V4 => to_device_v4(out, v4::Packet::PubAck(a)),
                    Version::V5 => to_device_v5(out, v5::Packet::PubAck(v5::PubAck::new(a.pkid, None))),
                },
                v4::Packet::PubRec(a) => match self.version {
                    Version::V4 => to_device_v4(out, v4::Packet::PubRec(a)),
                    Version::V5 => to_device_v5(out, v5::Packet::PubRec(v5::PubRec::new(a.pkid, None))),
                },
                v4::Packet::PubRel(a) => match self.version {
                    Version::V4 => to_device_v4(out, v4::Packet::PubRel(a)),
                    Version::V5 => to_device_v5(out, v5::Packet::PubRel(v5::PubRel::new(a.pkid, None))),
                },
                v4::Packet::PubComp(a) => match self.version {
                    Version::V4 => to_device_v4(out, v4::Packet::PubComp(a)),
                    Version::V5 => to_device_v5(out, v5::Packet::PubComp(v5::PubComp::new(a.pkid, None))),
                },
                v4::Packet::SubAck(ack) => {
                    let allowed = self
                        .pending_subs
                        .remove(&ack.pkid)
                        .unwrap_or_else(|| vec![true; ack.return_codes.len()]);
                    self.write_suback(ack.pkid, &allowed, &mut ack.return_codes.into_iter(), out);
                }
                v4::Packet::UnsubAck(ack) => {
                    let count = self.pending_unsubs.remove(&ack.pkid).unwrap_or(1);
                    match self.version {
                        Version::V4 => to_device_v4(out, v4::Packet::UnsubAck(ack)),
                        Version::V5 => to_device_v5(
                            out,
                            v5::Packet::UnsubAck(v5::UnsubAck {
                                pkid: ack.pkid,
                                reasons: vec![v5::UnsubAckReason::Success; count],
                                properties: None,
                            }),
                        ),
                    }
                }
                // Answers to the gate's own keepalive pings.
                v4::Packet::PingResp => {}
                other => tracing::debug!(packet = ?packet_name_v4(&other), "ignored packet from the embedded broker"),
            }
        }
    }

    /// Writes a publish in the device's version; one larger than the device accepts is
    /// dropped (and acknowledged upstream), as MQTT 5 requires.
    fn publish_to_device(&mut self, p: v4::Publish, out: &mut Outgoing) {
        let before = out.to_device.len();
        // Set when this publish introduces a topic alias: if it is not sent, neither is the alias.
        let mut new_alias = false;
        let payload = match self.compact {
            true => store::compact::from_json(&p.payload).map_or_else(|| p.payload.clone(), Bytes::from),
            false => p.payload.clone(),
        };
        match self.version {
            Version::V4 => {
                let mut publish = v4::Publish::from_bytes(p.topic.clone(), p.qos, payload);
                publish.pkid = p.pkid;
                publish.dup = p.dup;
                publish.retain = p.retain;
                let _ = v4::Packet::Publish(publish).write(&mut out.to_device, usize::MAX);
            }
            Version::V5 => {
                let (topic, alias) = match self.device_aliases.get(&p.topic) {
                    Some(&alias) => (String::new(), Some(alias)),
                    None if self.device_aliases.len() < usize::from(self.device_alias_max) => {
                        let alias = self.device_aliases.len() as u16 + 1;
                        new_alias = true;
                        self.device_aliases.insert(p.topic.clone(), alias);
                        (p.topic.clone(), Some(alias))
                    }
                    None => (p.topic.clone(), None),
                };
                let properties = alias.map(|alias| v5::PublishProperties {
                    topic_alias: Some(alias),
                    ..Default::default()
                });
                let mut publish = v5::Publish::new(topic, qos_v5(p.qos), payload, properties);
                publish.pkid = p.pkid;
                publish.dup = p.dup;
                publish.retain = p.retain;
                to_device_v5(out, v5::Packet::Publish(publish));
            }
        }
        if out.to_device.len() - before > self.device_max_packet {
            out.to_device.truncate(before);
            if new_alias {
                self.device_aliases.remove(&p.topic);
            }
            tracing::info!(device = %self.identity.device, size = p.payload.len(), "publish larger than the device accepts; dropped");
            self.ack_dropped(&p, out);
        } else if p.qos != QoS::AtMostOnce {
            self.device_inflight += 1;
        }
    }

    /// The device finished a QoS 1/2 delivery: its receive window has room again.
    fn device_window_freed(&mut self, out: &mut Outgoing) {
        self.device_inflight = self.device_inflight.saturating_sub(1);
        while self.device_inflight < self.receive_max {
            let Some(p) = self.held.pop_front() else { break };
            self.publish_to_device(p, out);
        }
    }

    /// The device acknowledged a QoS 1 publish.
    fn device_acked(&mut self, pkid: u16, out: &mut Outgoing) {
        self.device_window_freed(out);
        match self
            .upstream_inflight
            .iter_mut()
            .find(|(id, done)| *id == pkid && !done)
        {
            Some(entry) => entry.1 = true,
            None => tracing::debug!(pkid, device = %self.identity.device, "unsolicited PUBACK from a device"),
        }
        self.release_acks(out);
    }

    /// Sends rumqttd the acks it may now take: those at the front of the queue.
    fn release_acks(&mut self, out: &mut Outgoing) {
        while let Some(&(pkid, true)) = self.upstream_inflight.front() {
            self.upstream_inflight.pop_front();
            to_broker(out, v4::Packet::PubAck(v4::PubAck::new(pkid)));
        }
    }

    /// A publish meant for another device of this user: acknowledged to rumqttd (in
    /// order), not sent.
    fn ack_dropped(&mut self, p: &v4::Publish, out: &mut Outgoing) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                if let Some(entry) = self
                    .upstream_inflight
                    .iter_mut()
                    .rev()
                    .find(|(id, done)| *id == p.pkid && !done)
                {
                    entry.1 = true;
                }
                self.release_acks(out);
            }
            // The bridge publishes inboxes at QoS 1, so QoS 2 cannot be capped here; ack the
            // first step and let the device answer the PUBREL.
            QoS::ExactlyOnce => to_broker(out, v4::Packet::PubRec(v4::PubRec::new(p.pkid))),
        }
    }
}

/// What goes to the bridge for a device's outbox payload: the JSON as it is, or the compact
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

fn to_broker(out: &mut Outgoing, packet: v4::Packet) {
    let _ = packet.write(&mut out.to_broker, usize::MAX);
}

fn to_device_v4(out: &mut Outgoing, packet: v4::Packet) {
    let _ = packet.write(&mut out.to_device, usize::MAX);
}

fn to_device_v5(out: &mut Outgoing, packet: v5::Packet) {
    let _ = packet.write(&mut out.to_device, None);
}

async fn flush(io: &mut ClientIo, upstream: &mut TcpStream, out: &mut Outgoing) -> Result<(), Close> {
    if !out.to_broker.is_empty() {
        upstream.write_all(&out.to_broker).await.map_err(|_| Close::Upstream)?;
        out.to_broker.clear();
    }
    if !out.to_device.is_empty() {
        io.write_all(&out.to_device).await.map_err(|_| Close::Device)?;
        out.to_device.clear();
    }
    Ok(())
}

/// rumqttd does not set TCP_NODELAY on its sockets, so after a large write its next small
/// one waits for our ACK, which Linux delays by up to 40 ms. Asking for immediate ACKs on our
/// end (the flag does not stick, so after every read) removes that stall.
#[cfg(target_os = "linux")]
fn quick_ack(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the right size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn quick_ack(_: &TcpStream) {}

/// An MQTT 5 DISCONNECT without properties: `E0 00` (normal) or `E0 01 <reason>`; returns
/// its length and reason code.
fn short_disconnect(buf: &[u8]) -> Option<(usize, u8)> {
    match buf {
        [0xE0, 0x00, ..] => Some((2, 0)),
        [0xE0, 0x01, code, ..] => Some((3, *code)),
        _ => None,
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

fn qos_v4(qos: rumqttc::v5::mqttbytes::QoS) -> QoS {
    match qos {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_v5(qos: QoS) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// CONNACK properties with nothing set (the type has no `Default`).
fn connack_properties() -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}
