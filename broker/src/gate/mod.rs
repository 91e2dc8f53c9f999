//! The gate: chatd's MQTT front door.
//!
//! Accept loops for TCP, WebSocket and TLS hand each connection to its own task at once;
//! TLS and WebSocket handshakes run in that task under a timeout, so a connection that never
//! finishes its handshake holds up nobody else (rumqttd's own listeners would stall).

mod acl;
pub mod budget;
pub mod codec;
mod connect;
mod flow;
mod session;
mod topic_map;
mod transport;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

pub use acl::Identity;
use transport::ClientIo;

use crate::presence::{Control, Presence};
use crate::switchboard::Switchboard;
use crate::Error;

/// Limits and timeouts of the gate.
#[derive(Debug, Clone)]
pub struct GateSettings {
    /// Device connections held at once; beyond it CONNECT is refused as busy.
    pub max_connections: usize,
    /// Time a device has to send CONNECT after its transport is up.
    pub connect_timeout: Duration,
    /// Time a TLS or WebSocket handshake may take.
    pub handshake_timeout: Duration,
    /// A device that reads nothing of what is written to it for this long is closed.
    pub write_timeout: Duration,
    /// Largest MQTT packet a device may send.
    pub max_packet_size: usize,
    /// MQTT 5 topic aliases a device may set.
    pub topic_alias_max: u16,
    /// What each user's devices may publish, per op class, enforced on arrival.
    pub budgets: budget::OpBudgets,
    /// Topics one connection may be subscribed to at once.
    pub max_subscriptions: usize,
    /// Connections not yet past CONNECT (handshake, CONNECT, token check) at once, and from
    /// one source address: what they hold before anyone knows who they are is bounded.
    /// Over either, a new connection is closed at once.
    pub max_pending: usize,
    pub max_pending_per_ip: usize,
}

impl Default for GateSettings {
    fn default() -> Self {
        GateSettings {
            max_connections: 50_000,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            max_packet_size: 256 * 1024,
            topic_alias_max: 16,
            budgets: budget::OpBudgets::default(),
            max_subscriptions: 1000,
            max_pending: 2048,
            max_pending_per_ip: 256,
        }
    }
}

/// The sockets the gate serves. Bound by the caller, so tests can use port 0 and the
/// binary can report a taken port clearly.
#[derive(Default)]
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub ws: Option<TcpListener>,
    pub tls: Option<(TcpListener, TlsAcceptor)>,
    /// WebSocket over TLS (`wss://…/mqtt`).
    pub wss: Option<(TcpListener, TlsAcceptor)>,
}

/// The two steps of stopping (see [`Gate::run`]).
#[derive(Clone)]
pub(crate) struct Stop {
    pub drain: watch::Receiver<bool>,
    pub shutdown: watch::Receiver<bool>,
}

/// What every session needs.
pub(crate) struct Shared {
    pub settings: GateSettings,
    pub store: store::Store,
    pub tokens: store::tokens::Tokens,
    pub switchboard: Arc<Switchboard>,
    pub presence: Presence,
    pub slots: Arc<Semaphore>,
    /// Every user's op budgets.
    pub budgets: budget::UserBudgets,
    /// Connections not yet past CONNECT, in all and by source address.
    pending: Arc<Semaphore>,
    pending_by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Connections closed for want of a pending place, and CONNECTs refused as busy
    /// (over `max_connections`), logged at most every 10 s.
    refused_pending: crate::switchboard::DropLog,
    pub refused_busy: crate::switchboard::DropLog,
    /// Ids of sessions at the switchboard.
    pub next_session: AtomicU64,
}

/// The gate, ready to serve.
#[derive(Clone)]
pub struct Gate {
    shared: Arc<Shared>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp,
    Ws,
    Tls,
    Wss,
}

impl Kind {
    /// Its name in metrics (`chatd_mqtt_connections{transport}`).
    fn label(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Ws => "ws",
            Kind::Tls => "tls",
            Kind::Wss => "wss",
        }
    }
}

impl Gate {
    pub fn new(
        settings: GateSettings,
        store: store::Store,
        tokens: store::tokens::Tokens,
        switchboard: Arc<Switchboard>,
        presence: Presence,
    ) -> Gate {
        let slots = Arc::new(Semaphore::new(settings.max_connections));
        let pending = Arc::new(Semaphore::new(settings.max_pending));
        let budgets = budget::UserBudgets::new(settings.budgets.clone(), settings.max_connections);
        Gate {
            shared: Arc::new(Shared {
                settings,
                store,
                tokens,
                switchboard,
                presence,
                slots,
                budgets,
                pending,
                pending_by_ip: Arc::default(),
                refused_pending: crate::switchboard::DropLog::new(
                    "connections closed at once: too many not yet past CONNECT (in all or from one address)",
                ),
                refused_busy: crate::switchboard::DropLog::new("connection limit reached; CONNECTs refused as busy"),
                next_session: AtomicU64::new(0),
            }),
        }
    }

    /// Serves all listeners. When `drain` turns true the gate stops accepting connections
    /// and stops reading what connected devices send, but still delivers to them (the
    /// bridge is finishing what they sent: their acks are on the way). When `shutdown`
    /// turns true each session writes what is queued for it and closes (MQTT 5: DISCONNECT
    /// 0x8B, server shutting down). Returns once `shutdown` is true.
    pub async fn run(self, listeners: Listeners, drain: watch::Receiver<bool>, shutdown: watch::Receiver<bool>) {
        let stop = Stop { drain, shutdown };
        let mut tasks = tokio::task::JoinSet::new();
        // Sessions hear of the drain and the shutdown through their queues: a `watch` wait
        // in every idle connection's task would cost each one about 150 bytes.
        let (presence, mut signals) = (self.shared.presence.clone(), stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = wait_until_true(&mut signals.drain) => {}
                _ = wait_until_true(&mut signals.shutdown) => {}
            }
            if !*signals.shutdown.borrow() {
                presence.control_all(Control::Drain);
                wait_until_true(&mut signals.shutdown).await;
            }
            presence.control_all(Control::Shutdown);
        });
        if let Some(l) = listeners.tcp {
            tasks.spawn(self.clone().accept_loop(l, Kind::Tcp, None, stop.clone()));
        }
        if let Some(l) = listeners.ws {
            tasks.spawn(self.clone().accept_loop(l, Kind::Ws, None, stop.clone()));
        }
        if let Some((l, acceptor)) = listeners.tls {
            tasks.spawn(self.clone().accept_loop(l, Kind::Tls, Some(acceptor), stop.clone()));
        }
        if let Some((l, acceptor)) = listeners.wss {
            tasks.spawn(self.clone().accept_loop(l, Kind::Wss, Some(acceptor), stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn accept_loop(self, listener: TcpListener, kind: Kind, tls: Option<TlsAcceptor>, stop: Stop) {
        let mut drain = stop.drain.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Some(pending) = self.shared.pending_slot(peer.ip()) else {
                            // Closed at once: too many connections that have not said who they are.
                            self.shared.refused_pending.record(&peer.ip().to_string());
                            metrics::counter!("chatd_mqtt_connects_total", "result" => "too_many_pending").increment(1);
                            continue;
                        };
                        tokio::spawn(connection(Box::new(Incoming {
                            stream,
                            peer,
                            kind,
                            tls: tls.clone(),
                            pending,
                            stop: stop.clone(),
                            shared: self.shared.clone(),
                        })));
                    }
                    Err(e) => {
                        // Usually out of file descriptors: back off rather than spin.
                        tracing::warn!(error = %e, ?kind, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = wait_until_true(&mut drain) => return,
            }
        }
    }
}

impl Shared {
    /// A place among the connections not yet past CONNECT, if there is one in all and for
    /// this source address.
    fn pending_slot(&self, ip: IpAddr) -> Option<PendingSlot> {
        let permit = self.pending.clone().try_acquire_owned().ok()?;
        let mut by_ip = self.pending_by_ip.lock().unwrap();
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= self.settings.max_pending_per_ip {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            _permit: permit,
            ip,
            by_ip: self.pending_by_ip.clone(),
        })
    }
}

/// Waits until a stop signal turns true (or its sender is gone). Returns nothing, so no
/// lock guard of the channel is held across what follows in a `select!`.
async fn wait_until_true(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|on| *on).await;
}

/// A connection just accepted, with what its task needs to take it through CONNECT.
struct Incoming {
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    tls: Option<TlsAcceptor>,
    pending: PendingSlot,
    stop: Stop,
    shared: Arc<Shared>,
}

/// One device connection's task. A task's future is as large as the largest thing it ever
/// awaits, for as long as the connection lives: so what comes before the device is in (the
/// TLS or WebSocket handshake, CONNECT, the token check) runs boxed and is given back once
/// done, and the task holds little more than the [`session::Connected`] it serves.
async fn connection(incoming: Box<Incoming>) {
    // Served in place: moving it out of the `Option` would give it a second place in the task.
    let mut connected = Box::pin(incoming.connect()).await;
    if let Some(connected) = &mut connected {
        connected.serve().await;
    }
}

impl Incoming {
    async fn connect(self: Box<Self>) -> Option<session::Connected> {
        let Incoming {
            stream,
            peer,
            kind,
            tls,
            pending,
            stop,
            shared,
        } = *self;
        let _ = stream.set_nodelay(true);
        let (limit, max_packet) = (shared.settings.handshake_timeout, shared.settings.max_packet_size);
        match handshake(stream, kind, tls, limit, max_packet).await {
            Ok(io) => connect::connect(io, shared, pending, stop, kind.label()).await,
            Err(e) => {
                tracing::debug!(%peer, ?kind, error = %e, "handshake failed");
                None
            }
        }
    }
}

/// Held by a connection until it is past CONNECT (or gone).
pub(crate) struct PendingSlot {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut by_ip = self.by_ip.lock().unwrap();
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// WebSocket limits: a message or frame may be as large as the largest MQTT packet (a
/// device sends one packet per message), and no larger, so unfinished fragments cannot hold
/// more than that per connection; a small read buffer, since it is allocated up front for
/// every connection and devices send little.
fn ws_config(max_packet: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_packet);
    config.max_frame_size = Some(max_packet);
    config.read_buffer_size = 8 * 1024;
    config
}

async fn handshake(
    stream: TcpStream,
    kind: Kind,
    tls: Option<TlsAcceptor>,
    limit: Duration,
    max_packet: usize,
) -> std::io::Result<ClientIo> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timeout");
    match kind {
        Kind::Tcp => Ok(ClientIo::Tcp(stream)),
        Kind::Tls => {
            let acceptor = tls.expect("TLS listener without an acceptor");
            let stream = tokio::time::timeout(limit, acceptor.accept(stream))
                .await
                .map_err(|_| timed_out())??;
            Ok(ClientIo::Tls(Box::new(stream)))
        }
        Kind::Ws => {
            let accept =
                async_tungstenite::tokio::accept_hdr_async_with_config(stream, ws_upgrade, Some(ws_config(max_packet)));
            let ws = tokio::time::timeout(limit, accept)
                .await
                .map_err(|_| timed_out())?
                .map_err(std::io::Error::other)?;
            Ok(ClientIo::Ws(Box::new(ws)))
        }
        Kind::Wss => {
            let acceptor = tls.expect("WSS listener without an acceptor");
            // One limit for both handshakes together.
            let ws = tokio::time::timeout(limit, async {
                let stream = acceptor.accept(stream).await?;
                async_tungstenite::tokio::accept_hdr_async_with_config(stream, ws_upgrade, Some(ws_config(max_packet)))
                    .await
                    .map_err(std::io::Error::other)
            })
            .await
            .map_err(|_| timed_out())??;
            Ok(ClientIo::Wss(Box::new(ws)))
        }
    }
}

/// Accepts WebSocket upgrades on `/mqtt` only, and agrees to the `mqtt` subprotocol that
/// MQTT clients ask for (MQTT.js and browsers refuse a server that does not).
// The signature is the one tungstenite asks for; its large error type is not ours to change.
#[allow(clippy::result_large_err)]
fn ws_upgrade(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != "/mqtt" {
        let mut refusal = ErrorResponse::new(Some("MQTT is served at /mqtt".into()));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        return Err(refusal);
    }
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| *p == "mqtt" || *p == "mqttv3.1");
    if let Some(protocol) = offered {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(protocol).expect("static header"),
        );
    }
    Ok(response)
}

/// A certificate and key from PEM files, served to every TLS listener (MQTT over TLS and
/// secure WebSocket, the REST API over https) and reloadable while they run:
/// [`TlsCerts::reload`] reads the files again (on SIGHUP) and new handshakes get the new
/// certificate, without a restart and without dropping a connection. A reload that fails
/// (a half-written file, a key that does not match) keeps the certificate in use.
#[derive(Debug)]
pub struct TlsCerts {
    cert_path: String,
    key_path: String,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl TlsCerts {
    pub fn load(cert_path: &str, key_path: &str) -> Result<Arc<TlsCerts>, Error> {
        let current = certified_key(cert_path, key_path)?;
        Ok(Arc::new(TlsCerts {
            cert_path: cert_path.to_string(),
            key_path: key_path.to_string(),
            current: std::sync::RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads the files again; on success new handshakes use them.
    pub fn reload(&self) -> Result<(), Error> {
        let fresh = certified_key(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// An acceptor that always serves the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, Error> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl rustls::server::ResolvesServerCert for TlsCerts {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A certificate chain and its private key from PEM files, checked to belong together.
fn certified_key(cert_path: &str, key_path: &str) -> Result<rustls::sign::CertifiedKey, Error> {
    let read = |path: &str| std::fs::read(path).map_err(Error::io(format!("reading {path}")));
    let certs = rustls_pemfile::certs(&mut read(cert_path)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{cert_path}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{cert_path}: no certificate found")));
    }
    let key = rustls_pemfile::private_key(&mut read(key_path)?.as_slice())
        .map_err(|e| Error::Tls(format!("{key_path}: {e}")))?
        .ok_or_else(|| Error::Tls(format!("{key_path}: no private key found")))?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| Error::Tls(format!("{key_path}: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|e| Error::Tls(format!("{key_path} does not belong to {cert_path}: {e}")))?;
    Ok(certified)
}

/// Builds a TLS acceptor from PEM files (certificate chain and private key), not reloadable.
pub fn tls_acceptor(cert_path: &str, key_path: &str) -> Result<TlsAcceptor, Error> {
    TlsCerts::load(cert_path, key_path)?.acceptor()
}

/// Binds a listener, with an error that names the port when it is taken.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("cannot listen for {what} on {addr}")))
}
