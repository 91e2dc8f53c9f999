//! What nodes say to each other besides deliveries (which travel as they are, framed as for
//! the switchboard). JSON: small, rare next to deliveries, and readable with `nats sub`.

use serde::{Deserialize, Serialize};

/// A heartbeat (`{p}.hb`), every `heartbeat_ms`. `epoch` changes each time the node's NATS
/// connection comes back: what it said while cut off may be lost, so the others ask it for
/// a snapshot again.
#[derive(Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub epoch: u64,
    /// Set in the last message of a node that stops cleanly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bye: bool,
}

/// A change of one user's device count on a node (`{p}.presence`).
#[derive(Debug, Serialize, Deserialize)]
pub struct PresenceChange {
    pub node: String,
    pub v: u64,
    pub org: String,
    pub app: String,
    pub user: String,
    /// The user's devices on that node now.
    pub d: u32,
    /// A device that has just connected, and when (ms): the same device elsewhere closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<(String, i64)>,
}

/// Asks a node for its snapshot (`{p}.snap.{node}`).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub from: String,
}

/// One part of a node's snapshot (`{p}.snapto.{asker}`): every user it holds devices of, at
/// version `v`, in `parts` messages.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotPart {
    pub node: String,
    pub v: u64,
    pub part: u32,
    pub parts: u32,
    /// `[org, app, user, devices]`
    pub users: Vec<(String, String, String, u32)>,
}

/// What a node asks of every node's connections (`{p}.ctl`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Close every connection of the user (deleted, kicked, tokens revoked).
    Disconnect { org: String, app: String, user: String },
    /// Stop delivering a room to the user's connections.
    LeaveRoom {
        org: String,
        app: String,
        user: String,
        room: String,
    },
    /// Stop delivering `owner`'s presence to `from`'s connections.
    HidePresence {
        org: String,
        app: String,
        owner: String,
        from: String,
    },
}
