//! From an open transport to a device that is in: its CONNECT (3.1.1 or 5) read under a
//! size limit and a timeout, its token checked against the user's current generation, the
//! connection registered with presence (which closes an older one with the same device id),
//! and the CONNACK. A device refused on the way gets a CONNACK that says why, where its
//! protocol version has a code for it. What comes out is a [`Connected`], which
//! [`super::session`] serves until the connection ends.

use std::sync::Arc;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::time::timeout;

use super::acl::Identity;
use super::budget::{budget_key, OpClass};
use super::codec::{self, ConnectRead, ConnectRequest, Refusal, Version};
use super::session::{Connected, Session};
use super::transport::ClientIo;
use super::Shared;
use crate::presence::UserKey;
use crate::switchboard::SESSION_QUEUE;

/// Takes a device connection through CONNECT and the token check; `None` when it was
/// refused or went away (the device has been told why, if it can be).
pub(super) async fn connect(
    mut io: ClientIo,
    shared: Arc<Shared>,
    _pending: super::PendingSlot,
    stop: super::Stop,
    transport: &'static str,
) -> Option<Connected> {
    // Taken before CONNECT so the limit also bounds connections still authenticating;
    // over the limit the device still gets a CONNACK that says why.
    let slot = shared.slots.clone().try_acquire_owned().ok();
    let mut buf = BytesMut::new();
    let max_packet = shared.settings.max_packet_size;
    // Before anyone knows who the device is, its first packet may hold no more than this.
    let max_connect = max_packet.min(MAX_CONNECT_BYTES);
    let mut request = match timeout(
        shared.settings.connect_timeout,
        Box::pin(read_connect(&mut io, &mut buf, max_connect)),
    )
    .await
    {
        Ok(Ok(Ok(request))) => request,
        Ok(Ok(Err((version, refusal)))) => {
            connect_refused(refusal);
            Box::pin(refuse(&mut io, version, refusal, None)).await;
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection closed before CONNECT");
            return None;
        }
        Err(_) => {
            tracing::debug!("no CONNECT in time");
            io.close().await;
            return None;
        }
    };
    let version = request.version;
    let Some(slot) = slot else {
        shared.refused_busy.record(&request.client_id);
        connect_refused(Refusal::Busy);
        Box::pin(refuse(&mut io, version, Refusal::Busy, None)).await;
        return None;
    };
    let identity = match Box::pin(authenticate(&shared, &request)).await {
        Ok(identity) => identity,
        Err((refusal, why)) => {
            tracing::info!(client_id = %request.client_id, reason = %why, "CONNECT refused");
            connect_refused(refusal);
            Box::pin(refuse(&mut io, version, refusal, Some(why))).await;
            return None;
        }
    };
    if let Some(will) = &request.will {
        if !identity.may_publish(&will.topic) {
            let why = Some("a will may only go to your own outbox".into());
            connect_refused(Refusal::NotAuthorized);
            Box::pin(refuse(&mut io, version, Refusal::NotAuthorized, why)).await;
            return None;
        }
    }
    // Registered before the CONNACK goes out: a device that connects again with the same id
    // as soon as it has its CONNACK must find this connection there to take over (registered
    // after, a slow task could take over the newer connection instead).
    let (queue, inbox) = crate::mailbox::bounded(SESSION_QUEUE);
    let presence = shared.presence.connected(
        UserKey {
            org: identity.org.clone(),
            app: identity.app.clone(),
            user: identity.user.clone(),
        },
        &identity.device,
        queue.clone(),
    );
    // Read after registering: a drain or shutdown from now on reaches the queue
    // ([`Control::Drain`]), one before is seen here.
    let (draining, stopping) = (*stop.drain.borrow(), *stop.shutdown.borrow());
    let mut out = BytesMut::new();
    let assigned = request.client_id.is_empty().then_some(identity.device.as_str());
    write_connack(&mut out, version, false, assigned, &shared);
    if io.write_all(&out).await.is_err() {
        return None;
    }
    tracing::debug!(user = %identity.user, device = %identity.device, ?version, "device connected");
    metrics::counter!("chatd_mqtt_connects_total", "result" => "accepted").increment(1);
    let connections =
        metrics::gauge!("chatd_mqtt_connections", "transport" => transport, "protocol" => version.label());
    connections.increment(1.0);
    let connected = scopeguard_decrement(connections);
    let session = Session::new(version, identity, queue, &mut request, &shared);
    Some(Connected {
        io,
        session,
        // What came after the CONNECT, if anything; otherwise no buffer until the device sends more.
        device_buf: if buf.is_empty() { BytesMut::new() } else { buf },
        inbox,
        keep_alive: request.keep_alive,
        draining,
        stopping,
        _presence: presence,
        _connected: connected,
        _slot: slot,
    })
}

fn connect_refused(refusal: Refusal) {
    metrics::counter!("chatd_mqtt_connects_total", "result" => refusal.label()).increment(1);
}

/// Lowers a connection gauge when the connection's task ends, however it ends.
pub(super) struct GaugeGuard(metrics::Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn scopeguard_decrement(gauge: metrics::Gauge) -> GaugeGuard {
    GaugeGuard(gauge)
}

/// Reads bytes until a whole first packet is there and parses it as CONNECT.
async fn read_connect(
    io: &mut ClientIo,
    buf: &mut BytesMut,
    max_packet: usize,
) -> std::io::Result<Result<ConnectRequest, (Version, Refusal)>> {
    loop {
        match codec::read_connect(buf, max_packet) {
            ConnectRead::Incomplete => {
                if io.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            ConnectRead::NotMqtt(why) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why)),
            ConnectRead::Connect(request) => return Ok(Ok(request)),
            ConnectRead::Refused(version, refusal) => return Ok(Err((version, refusal))),
        }
    }
}

/// The largest CONNECT the gate reads (a will's payload included: an envelope is at most
/// 64 KiB anyway).
const MAX_CONNECT_BYTES: usize = 64 * 1024 + 1024;

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
    // A reconnect loop is refused here, before it costs database reads (a forged token was
    // refused above; the app is checked just below).
    let connect_key = budget_key(&claims.org, &claims.app, &username);
    if let Err(wait_ms) = shared.budgets.take(&connect_key, OpClass::Connect) {
        return Err((
            Refusal::TooOften,
            format!("connecting too often; retry in {wait_ms} ms"),
        ));
    }
    let app = shared
        .store
        .find_app(&claims.org, &claims.app)
        .await
        .map_err(|e| not_authorized(&e.to_string()))?;
    // The token must be of this user's current generation: not of a deleted user of the
    // same name, nor revoked.
    match shared.store.user_token_generation(&app.id, &username).await {
        Ok(Some(generation)) if generation == claims.ver => {}
        Ok(Some(_)) => return Err(not_authorized("token revoked")),
        Ok(None) => return Err(not_authorized("user does not exist")),
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

async fn refuse(io: &mut ClientIo, version: Version, refusal: Refusal, reason: Option<String>) {
    let mut out = BytesMut::new();
    match version {
        Version::V4 => {
            let code = match refusal {
                Refusal::Protocol => v4::ConnectReturnCode::RefusedProtocolVersion,
                Refusal::ClientId => v4::ConnectReturnCode::BadClientId,
                Refusal::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                Refusal::Busy | Refusal::Unavailable | Refusal::TooOften => v4::ConnectReturnCode::ServiceUnavailable,
            };
            let _ = v4::Packet::ConnAck(v4::ConnAck::new(code, false)).write(&mut out, usize::MAX);
        }
        Version::V5 => {
            let code = match refusal {
                Refusal::Protocol => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                Refusal::ClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                Refusal::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                Refusal::Busy => v5::ConnectReturnCode::ServerBusy,
                Refusal::TooOften => v5::ConnectReturnCode::ConnectionRateExceeded,
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
