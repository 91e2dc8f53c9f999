//! rumqttd, embedded: started on its own OS thread (its `start()` blocks forever and has no
//! shutdown), bound to loopback, and accepting only clients that present this process's
//! internal credentials: the gate's relayed connections, the bridge and the presence
//! publisher.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};

use crate::Error;

/// How the embedded broker is sized.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Loopback port for rumqttd; 0 picks a free one.
    pub port: u16,
    /// Connections rumqttd admits: internal clients only (devices reach it through the
    /// switchboard's uplink).
    pub max_connections: usize,
    /// Largest packet rumqttd accepts.
    pub max_payload_size: usize,
    /// Unacknowledged QoS 1/2 messages per connection.
    pub max_inflight: usize,
    /// Segment size and count of the in-memory log of any filter other than the three below
    /// (normally none). Small, because rumqttd keeps one log per filter forever; the
    /// database is the real history.
    pub segment_bytes: usize,
    pub segment_count: usize,
    /// Segment size of the log every outbox goes through (read by the bridges; four
    /// segments); the logs of every inbox and every chatroom (read by the switchboard) get
    /// a quarter of it.
    pub outbox_segment_bytes: usize,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            port: 0,
            max_connections: 64,
            max_payload_size: 256 * 1024,
            max_inflight: 1000,
            segment_bytes: 64 * 1024,
            segment_count: 2,
            outbox_segment_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A running embedded rumqttd and how internal clients reach it.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
}

impl EmbeddedBroker {
    /// Starts rumqttd and waits until it accepts connections.
    pub fn start(settings: &BrokerSettings) -> Result<EmbeddedBroker, Error> {
        let port = match settings.port {
            0 => TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(Error::io("picking a port for the embedded broker"))?
                .port(),
            port => port,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Err(Error::Broker(format!("port {addr} is already taken")));
        }
        let username = "chatd-internal".to_string();
        let password = store::tokens::random_secret(32);

        let mut connections = ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: settings.max_payload_size,
            max_inflight_count: settings.max_inflight,
            auth: None,
            external_auth: None,
            // Without it, a publish to a topic nobody has subscribed to yet (a message to an
            // offline user) disconnects the publisher.
            dynamic_filters: true,
        };
        let (user, pass) = (username.clone(), password.clone());
        connections.set_auth_handler(move |_client_id, u, p| {
            let ok = u == user && p == pass;
            async move { ok }
        });
        let config = Config {
            router: RouterConfig {
                max_connections: settings.max_connections,
                max_outgoing_packet_count: 200,
                max_segment_size: settings.segment_bytes,
                max_segment_count: settings.segment_count,
                // All chat traffic through rumqttd is outbox publishes on their way to the
                // bridges: their filter gets room to absorb a burst (what the bridges have
                // not read when the log rotates is skipped; a device retries a send that got
                // no `ack`). Its log is the process's main fixed memory cost. Deliveries to
                // devices do not pass through rumqttd (see the switchboard).
                custom_segment: Some(HashMap::from([(
                    store::topics::OUTBOX_FILTER.to_string(),
                    SegmentConfig {
                        max_segment_size: settings.outbox_segment_bytes,
                        max_segment_count: 4,
                    },
                )])),
                ..Default::default()
            },
            v4: Some(HashMap::from([(
                "internal".to_string(),
                ServerSettings {
                    name: "internal".into(),
                    listen: addr,
                    tls: None,
                    next_connection_delay_ms: 0,
                    connections,
                },
            )])),
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })
            .map_err(Error::io("starting the embedded broker thread"))?;

        // Ready when it accepts our credentials: that also proves the port is ours, not
        // taken by someone else between picking it and rumqttd binding it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !accepts_login(addr, &username, &password) {
            if Instant::now() > deadline {
                return Err(Error::Broker(format!("did not start on {addr} (is the port taken?)")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!(%addr, "embedded broker listening (loopback only)");
        Ok(EmbeddedBroker {
            addr,
            username,
            password,
        })
    }

    /// MQTT options for an internal client of this broker.
    pub fn client_options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let mut options = rumqttc::MqttOptions::new(client_id, self.addr.ip().to_string(), self.addr.port());
        options.set_credentials(&self.username, &self.password);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(usize::MAX >> 1, usize::MAX >> 1);
        options
    }
}

/// Connects, logs in and disconnects cleanly; true if rumqttd accepted the login.
fn accepts_login(addr: SocketAddr, username: &str, password: &str) -> bool {
    use rumqttc::mqttbytes::v4;
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut connect = v4::Connect::new(format!("chatd-probe-{}", store::tokens::random_secret(8)));
    connect.set_login(username, password);
    let mut out = bytes::BytesMut::new();
    if v4::Packet::Connect(connect).write(&mut out, usize::MAX).is_err() || stream.write_all(&out).is_err() {
        return false;
    }
    let mut connack = [0u8; 4];
    let accepted = stream.read_exact(&mut connack).is_ok() && connack[0] == 0x20 && connack[3] == 0;
    let _ = stream.write_all(&[0xE0, 0x00]);
    accepted
}
