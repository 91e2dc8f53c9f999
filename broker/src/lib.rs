//! The MQTT side of chatd.
//!
//! - [`embedded`] starts rumqttd on its own thread, listening on loopback only, for internal
//!   clients with a per-process secret: it routes, it never faces the network.
//! - [`gate`] is the only door for devices (TCP, WebSocket at `/mqtt`, TLS): it speaks MQTT
//!   3.1.1 and 5 to them, checks their token at CONNECT, checks every SUBSCRIBE and PUBLISH
//!   against the topic ACL, and passes what is allowed on through the switchboard.
//! - [`switchboard`] connects all device sessions to rumqttd through one connection, and
//!   routes what the server sends (inbox and chatroom publishes, handed over in-process) to
//!   the sessions subscribed.
//! - [`presence`] turns the gate's connects and disconnects into retained presence messages.
//! - [`mailbox`] is each connection's queue of deliveries and controls, small while idle.

pub mod embedded;
pub mod gate;
pub mod mailbox;
pub mod presence;
pub mod switchboard;

pub use embedded::{BrokerSettings, EmbeddedBroker};
pub use gate::{Gate, GateSettings, Listeners};
pub use switchboard::Switchboard;

/// The error type of the broker crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("embedded broker: {0}")]
    Broker(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
