//! Presence from the gate's own bookkeeping: rumqttd tells nobody about connects and
//! disconnects, but every device connection passes through the gate.
//!
//! A user is online while any of their devices is connected. Each change of a user's device
//! count is published, retained, on `chat/{org}/{app}/presence/{user}` as
//! `{"user","status":"online"|"offline","devices":N,"last_seen":ms}`, through the
//! [`Switchboard`] (presence never needs rumqttd: only this process's devices read it).
//!
//! A device id is one connection: a device connecting again with the same id takes over,
//! and the older connection is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::switchboard::Switchboard;

/// A user, as the gate knows them after CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserKey {
    pub org: String,
    pub app: String,
    pub user: String,
}

/// What the server asks of an open device connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Close (the user was deleted).
    Disconnect,
    /// Stop delivering this room or presence topic (the user left the room, was kicked,
    /// or was blocked by the presence's owner).
    Revoke(String),
    /// Close: the same device connected again.
    TakenOver,
}

/// Each open connection of a user: its id, its device id and where to send it controls.
type Connections = Vec<(u64, String, mpsc::UnboundedSender<Control>)>;

/// Tracks each user's connected devices, publishes changes, and can disconnect them all.
#[derive(Clone)]
pub struct Presence {
    devices: Arc<Mutex<HashMap<UserKey, Connections>>>,
    next_id: Arc<AtomicU64>,
    switchboard: Arc<Switchboard>,
}

impl Presence {
    pub fn new(switchboard: Arc<Switchboard>) -> Presence {
        Presence {
            devices: Arc::default(),
            next_id: Arc::default(),
            switchboard,
        }
    }

    /// Records a device connection; the returned guard records the disconnection when it
    /// is dropped, however the connection ends.
    pub fn connected(&self, user: UserKey, device: &str) -> PresenceGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, controls) = mpsc::unbounded_channel();
        let mut devices = self.devices.lock().unwrap();
        let list = devices.entry(user.clone()).or_default();
        for (_, other, control) in list.iter() {
            if other == device {
                let _ = control.send(Control::TakenOver);
            }
        }
        list.push((id, device.to_string(), tx));
        self.publish(&user, list.len());
        PresenceGuard {
            presence: self.clone(),
            user,
            id,
            controls,
        }
    }

    /// How many devices of a user are connected.
    pub fn devices(&self, user: &UserKey) -> usize {
        self.devices.lock().unwrap().get(user).map_or(0, Vec::len)
    }

    /// Sends a control to every connection of a user; returns how many there are.
    pub fn control(&self, user: &UserKey, control: Control) -> usize {
        let devices = self.devices.lock().unwrap();
        let list = devices.get(user).map(Vec::as_slice).unwrap_or_default();
        for (_, _, tx) in list {
            let _ = tx.send(control.clone());
        }
        list.len()
    }

    fn disconnected(&self, user: &UserKey, id: u64) {
        let mut devices = self.devices.lock().unwrap();
        let Some(list) = devices.get_mut(user) else { return };
        list.retain(|(other, _, _)| *other != id);
        let count = list.len();
        if count == 0 {
            devices.remove(user);
        }
        self.publish(user, count);
    }

    /// Publishes a user's presence; called under the lock so that the retained value
    /// follows the count's order.
    fn publish(&self, user: &UserKey, devices: usize) {
        let payload = serde_json::json!({
            "user": user.user,
            "status": if devices > 0 { "online" } else { "offline" },
            "devices": devices,
            "last_seen": store::now_ms(),
        });
        let topic = store::topics::presence(&user.org, &user.app, &user.user);
        self.switchboard.retain(&topic, payload.to_string().into());
    }
}

/// Marks one device connection; dropping it marks the disconnection.
pub struct PresenceGuard {
    presence: Presence,
    user: UserKey,
    id: u64,
    controls: mpsc::UnboundedReceiver<Control>,
}

impl PresenceGuard {
    /// The next thing the server asks of this connection. Cancel-safe.
    pub async fn next_control(&mut self) -> Control {
        // The sender lives in `Presence` as long as this guard does.
        self.controls.recv().await.unwrap_or(Control::Disconnect)
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.disconnected(&self.user, self.id);
    }
}

fn key(org: &str, app: &str, user: &str) -> UserKey {
    UserKey {
        org: org.to_string(),
        app: app.to_string(),
        user: user.to_string(),
    }
}

impl store::live::Live for Presence {
    fn disconnect_user(&self, org: &str, app: &str, user: &str) {
        let closed = self.control(&key(org, app, user), Control::Disconnect);
        tracing::info!(%org, %app, %user, closed, "closing a user's connections");
    }

    fn leave_room(&self, org: &str, app: &str, user: &str, room: &str) {
        self.control(
            &key(org, app, user),
            Control::Revoke(store::topics::room(org, app, room)),
        );
    }

    fn hide_presence(&self, org: &str, app: &str, owner: &str, from: &str) {
        self.control(
            &key(org, app, from),
            Control::Revoke(store::topics::presence(org, app, owner)),
        );
    }

    fn is_online(&self, org: &str, app: &str, user: &str) -> bool {
        self.devices(&key(org, app, user)) > 0
    }

    // Straight to this process's sessions through the switchboard, not through rumqttd:
    // only this process's gate holds devices (BENCHMARKS.md, issue 6).
    fn deliver_inbox(&self, org: &str, app: &str, user: &str, framed: Vec<u8>) {
        self.switchboard
            .dispatch(&store::topics::inbox(org, app, user), framed.into());
    }

    fn deliver_room(&self, org: &str, app: &str, room: &str, payload: Vec<u8>) {
        self.switchboard
            .dispatch(&store::topics::room(org, app, room), payload.into());
    }
}
