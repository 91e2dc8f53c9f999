//! Presence from the gate's own bookkeeping: rumqttd tells nobody about connects and
//! disconnects, but every device connection passes through the gate.
//!
//! A user is online while any of their devices is connected, to this process or, in a
//! cluster, to any node. Each change of a user's device count is published, retained, on
//! `chat/{org}/{app}/presence/{user}` as
//! `{"user","status":"online"|"offline","devices":N,"last_seen":ms}`, through the
//! [`Switchboard`] (presence never needs rumqttd: every node derives it from what it knows).
//!
//! A device id is one connection: a device connecting again with the same id takes over,
//! and the older connection is closed, on whichever node it is.
//!
//! In a cluster (`cluster/`), every node tells the others how many devices each of its users
//! has (a [`LocalChange`] per change, a snapshot on request), and keeps theirs here, per
//! node: the device count a user shows is the sum. A node that stops being heard from is
//! forgotten ([`Presence::remote_node_gone`]), so its devices show offline instead of
//! staying online forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use crate::mailbox::Poster;
use crate::switchboard::{Switchboard, ToSession};

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
    /// The server is draining: stop reading what the device sends, keep delivering.
    Drain,
    /// The server is stopping: write what is queued, then close.
    Shutdown,
}

/// One open connection of a user.
struct Connection {
    id: u64,
    device: String,
    /// When it connected (ms): of two connections with one device id, the later one stays.
    since: i64,
    controls: Poster<ToSession>,
}

/// A change of a user's device count on this node, for the other nodes of a cluster.
#[derive(Debug, Clone)]
pub struct LocalChange {
    pub user: UserKey,
    /// The user's devices on this node now.
    pub devices: u32,
    /// Grows with every change on this node: the others keep the latest.
    pub version: u64,
    /// The device that has just connected and when: the same device id elsewhere is closed.
    pub connected: Option<(String, i64)>,
}

/// What one other node has told us about its devices.
#[derive(Default)]
struct RemoteNode {
    /// Device counts per user, with the version of the change that set them. A count of 0
    /// is kept only while a snapshot is on its way (it must not bring back an older count).
    users: HashMap<UserKey, (u32, u64)>,
    /// Changes at or below this version are older than the snapshot applied.
    floor: u64,
    /// A snapshot was asked for and has not been applied yet.
    awaiting_snapshot: bool,
}

#[derive(Default)]
struct State {
    /// Keyed by a shared key that each connection's [`PresenceGuard`] holds too.
    local: HashMap<Arc<UserKey>, Vec<Connection>>,
    remote: HashMap<Arc<str>, RemoteNode>,
    /// The sum over `remote` per user (users with none are absent).
    remote_devices: HashMap<UserKey, u32>,
    /// Grows with every local change.
    version: u64,
}

impl State {
    fn total(&self, user: &UserKey) -> usize {
        self.local.get(user).map_or(0, Vec::len) + self.remote_devices.get(user).copied().unwrap_or(0) as usize
    }

    /// Sets one node's count for a user, keeping the sums right.
    fn set_remote(&mut self, node: &str, user: &UserKey, devices: u32, version: u64, keep_zero: bool) {
        let Some(state) = self.remote.get_mut(node) else { return };
        let before = match (devices, keep_zero) {
            (0, false) => state.users.remove(user),
            _ => state.users.insert(user.clone(), (devices, version)),
        }
        .map_or(0, |(count, _)| count);
        if before == devices {
            return;
        }
        let sum = self.remote_devices.entry(user.clone()).or_default();
        *sum = *sum + devices - before;
        if *sum == 0 {
            self.remote_devices.remove(user);
        }
    }
}

/// The cluster's side of presence, once this node has joined one.
struct ClusterLink {
    node: Arc<str>,
    changes: mpsc::UnboundedSender<LocalChange>,
}

/// Tracks each user's connected devices, publishes changes, and can disconnect them all.
#[derive(Clone)]
pub struct Presence {
    state: Arc<Mutex<State>>,
    next_id: Arc<AtomicU64>,
    switchboard: Arc<Switchboard>,
    cluster: Arc<OnceLock<ClusterLink>>,
    transitions: Arc<OnceLock<mpsc::UnboundedSender<Transition>>>,
}

/// A user went online (their first device connected, anywhere in the cluster) or offline
/// (their last one went), seen on the node where the device connected or left: each
/// transition is reported by one node.
#[derive(Debug, Clone)]
pub struct Transition {
    pub user: UserKey,
    pub online: bool,
    pub at: i64,
}

impl Presence {
    pub fn new(switchboard: Arc<Switchboard>) -> Presence {
        Presence {
            state: Arc::default(),
            next_id: Arc::default(),
            switchboard,
            cluster: Arc::default(),
            transitions: Arc::default(),
        }
    }

    /// From now on, users going online and offline (through this node's devices) are sent
    /// on the returned channel (for webhooks). Once only.
    pub fn watch_transitions(&self) -> mpsc::UnboundedReceiver<Transition> {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.transitions.set(tx).is_err() {
            panic!("presence transitions are watched twice");
        }
        rx
    }

    /// Joins a cluster as `node`: every later change of a local device count is sent on the
    /// returned channel, for the other nodes. Once only.
    pub fn join_cluster(&self, node: Arc<str>) -> mpsc::UnboundedReceiver<LocalChange> {
        let (changes, rx) = mpsc::unbounded_channel();
        if self.cluster.set(ClusterLink { node, changes }).is_err() {
            panic!("presence joined a cluster twice");
        }
        rx
    }

    /// Records a device connection, whose controls go to `controls` (its session's queue);
    /// the returned guard records the disconnection when it is dropped, however the
    /// connection ends.
    pub fn connected(&self, user: UserKey, device: &str, controls: Poster<ToSession>) -> PresenceGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let since = store::now_ms();
        let mut state = self.state.lock().unwrap();
        let before = state.total(&user);
        let user = match state.local.get_key_value(&user) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(user),
        };
        let list = state.local.entry(user.clone()).or_default();
        for other in list.iter() {
            if other.device == device {
                other.controls.post(ToSession::Control(Control::TakenOver));
            }
        }
        list.push(Connection {
            id,
            device: device.to_string(),
            since,
            controls,
        });
        let local = list.len();
        self.changed(&mut state, &user, before, local, Some((device.to_string(), since)));
        PresenceGuard {
            presence: self.clone(),
            user,
            id,
        }
    }

    /// How many devices of a user are connected (to any node of the cluster).
    pub fn devices(&self, user: &UserKey) -> usize {
        self.state.lock().unwrap().total(user)
    }

    /// Sends a control to every connection of a user on this node; returns how many there are.
    pub fn control(&self, user: &UserKey, control: Control) -> usize {
        let state = self.state.lock().unwrap();
        let list = state.local.get(user).map(Vec::as_slice).unwrap_or_default();
        for connection in list {
            connection.controls.post(ToSession::Control(control.clone()));
        }
        list.len()
    }

    /// Sends a control to every connection on this node (the gate's drain and shutdown:
    /// a signal in the queue every session reads anyway costs an idle connection nothing,
    /// where a wait on a `watch` costs each one's task about 150 bytes). A connection
    /// registered after this returns must look at the signal itself (the gate does).
    pub fn control_all(&self, control: Control) -> usize {
        let state = self.state.lock().unwrap();
        let mut count = 0;
        for connection in state.local.values().flatten() {
            connection.controls.post(ToSession::Control(control.clone()));
            count += 1;
        }
        count
    }

    fn disconnected(&self, user: &UserKey, id: u64) {
        let mut state = self.state.lock().unwrap();
        let before = state.total(user);
        let Some(list) = state.local.get_mut(user) else { return };
        list.retain(|connection| connection.id != id);
        let local = list.len();
        if local == 0 {
            state.local.remove(user);
        }
        self.changed(&mut state, user, before, local, None);
    }

    /// After a local change: tells the cluster, and publishes the user's presence if the
    /// total changed. Called under the lock, so that the retained value and the versions
    /// follow the order of the changes.
    fn changed(
        &self,
        state: &mut State,
        user: &UserKey,
        before: usize,
        local: usize,
        connected: Option<(String, i64)>,
    ) {
        state.version += 1;
        if let Some(cluster) = self.cluster.get() {
            let _ = cluster.changes.send(LocalChange {
                user: user.clone(),
                devices: local as u32,
                version: state.version,
                connected,
            });
        }
        let after = state.total(user);
        if after != before {
            self.publish(user, after);
        }
        if (before == 0) != (after == 0) {
            if let Some(transitions) = self.transitions.get() {
                let _ = transitions.send(Transition {
                    user: user.clone(),
                    online: after > 0,
                    at: store::now_ms(),
                });
            }
        }
    }

    /// Publishes a user's presence.
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

    /// Every local user with their device count, and the version it is true at: what
    /// another node asks for when it first hears of this one.
    pub fn local_snapshot(&self) -> (u64, Vec<(UserKey, u32)>) {
        let state = self.state.lock().unwrap();
        let users = state
            .local
            .iter()
            .map(|(user, list)| (UserKey::clone(user), list.len() as u32))
            .collect();
        (state.version, users)
    }

    /// Another node is known from now on; its snapshot has been asked for. Changes it sends
    /// before the snapshot arrives are kept.
    pub fn remote_node_seen(&self, node: &str) {
        let mut state = self.state.lock().unwrap();
        let entry = state.remote.entry(Arc::from(node)).or_default();
        entry.awaiting_snapshot = true;
    }

    /// Applies another node's change: its count for the user, and, if a device has just
    /// connected there, closes this node's connection of the same device if it is older.
    pub fn remote_change(&self, node: &str, change: LocalChange) {
        let mut state = self.state.lock().unwrap();
        if let Some((device, since)) = &change.connected {
            let this_node = self
                .cluster
                .get()
                .map(|c| c.node.clone())
                .unwrap_or_else(|| Arc::from(""));
            for connection in state.local.get(&change.user).map(Vec::as_slice).unwrap_or_default() {
                // The later connection stays; a tie goes to the greater node name, so that
                // exactly one of two simultaneous connections is closed.
                if &connection.device == device && (connection.since, &*this_node) < (*since, node) {
                    connection.controls.post(ToSession::Control(Control::TakenOver));
                }
            }
        }
        let Some(remote) = state.remote.get(node) else {
            // Not known yet: its heartbeat will make it known and ask for its snapshot.
            return;
        };
        let stale = change.version <= remote.floor
            || remote
                .users
                .get(&change.user)
                .is_some_and(|(_, v)| change.version <= *v);
        let keep_zero = remote.awaiting_snapshot;
        if stale {
            return;
        }
        self.set_remote(
            &mut state,
            node,
            &change.user,
            change.devices,
            change.version,
            keep_zero,
        );
    }

    /// Sets one node's count for a user and publishes the user's presence if the total
    /// changed. Called under the lock, like [`Presence::changed`].
    fn set_remote(&self, state: &mut State, node: &str, user: &UserKey, devices: u32, version: u64, keep_zero: bool) {
        let before = state.total(user);
        state.set_remote(node, user, devices, version, keep_zero);
        let after = state.total(user);
        if after != before {
            self.publish(user, after);
        }
    }

    /// Applies another node's snapshot (all its users at `version`): it replaces what is
    /// known of that node, except changes newer than the snapshot.
    pub fn remote_snapshot(&self, node: &str, version: u64, users: Vec<(UserKey, u32)>) {
        let mut state = self.state.lock().unwrap();
        let Some(remote) = state.remote.get_mut(node) else {
            return;
        };
        if !remote.awaiting_snapshot {
            return;
        }
        remote.awaiting_snapshot = false;
        remote.floor = version;
        // What the node holds now: the snapshot's counts, and 0 for users it no longer lists,
        // except where a change newer than the snapshot has already been applied.
        let mut next: HashMap<UserKey, u32> = remote
            .users
            .iter()
            .filter(|(_, (_, v))| *v <= version)
            .map(|(user, _)| (user.clone(), 0))
            .collect();
        for (user, devices) in users {
            if remote.users.get(&user).is_none_or(|(_, v)| *v <= version) {
                next.insert(user, devices);
            }
        }
        for (user, devices) in next {
            self.set_remote(&mut state, node, &user, devices, version, false);
        }
        // Zero counts were kept only for the snapshot's sake.
        if let Some(remote) = state.remote.get_mut(node) {
            remote.users.retain(|_, (count, _)| *count > 0);
        }
    }

    /// Another node is gone (not heard from in time, or it said goodbye): its devices no
    /// longer count.
    pub fn remote_node_gone(&self, node: &str) {
        let mut state = self.state.lock().unwrap();
        let Some(remote) = state.remote.get(node) else {
            return;
        };
        let users: Vec<UserKey> = remote.users.keys().cloned().collect();
        for user in users {
            self.set_remote(&mut state, node, &user, 0, u64::MAX, false);
        }
        state.remote.remove(node);
    }
}

/// Marks one device connection; dropping it marks the disconnection.
pub struct PresenceGuard {
    presence: Presence,
    user: Arc<UserKey>,
    id: u64,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.disconnected(&self.user, self.id);
    }
}

pub fn key(org: &str, app: &str, user: &str) -> UserKey {
    UserKey {
        org: org.to_string(),
        app: app.to_string(),
        user: user.to_string(),
    }
}

/// One process on its own: everything live is in this process.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn change(user: &str, devices: u32, version: u64, connected: Option<(&str, i64)>) -> LocalChange {
        LocalChange {
            user: key("o", "a", user),
            devices,
            version,
            connected: connected.map(|(d, t)| (d.to_string(), t)),
        }
    }

    fn presence() -> Presence {
        let presence = Presence::new(Switchboard::unconnected());
        let _changes = presence.join_cluster(Arc::from("me"));
        presence
    }

    #[test]
    fn remote_counts_add_up_and_go_with_their_node() {
        let p = presence();
        let bob = key("o", "a", "bob");
        // Not known yet: ignored (its snapshot will tell).
        p.remote_change("b", change("bob", 1, 1, None));
        assert_eq!(p.devices(&bob), 0);
        p.remote_node_seen("b");
        p.remote_node_seen("c");
        p.remote_change("b", change("bob", 1, 2, None));
        p.remote_change("c", change("bob", 2, 7, None));
        assert_eq!(p.devices(&bob), 3);
        // Older than what is known: ignored.
        p.remote_change("c", change("bob", 5, 6, None));
        assert_eq!(p.devices(&bob), 3);
        p.remote_node_gone("c");
        assert_eq!(p.devices(&bob), 1);
        p.remote_change("b", change("bob", 0, 3, None));
        assert_eq!(p.devices(&bob), 0);
    }

    #[test]
    fn a_snapshot_never_undoes_a_newer_change() {
        let p = presence();
        let (bob, carol, dave) = (key("o", "a", "bob"), key("o", "a", "carol"), key("o", "a", "dave"));
        p.remote_node_seen("b");
        // While the snapshot (taken at version 10) is on its way: bob left at 12, carol came at 11.
        p.remote_change("b", change("bob", 1, 5, None));
        p.remote_change("b", change("bob", 0, 12, None));
        p.remote_change("b", change("carol", 1, 11, None));
        p.remote_snapshot("b", 10, vec![(bob.clone(), 1), (dave.clone(), 2)]);
        assert_eq!(
            p.devices(&bob),
            0,
            "the snapshot brought back a device that left after it"
        );
        assert_eq!(p.devices(&carol), 1);
        assert_eq!(p.devices(&dave), 2);
        // Changes older than the snapshot are ignored from now on.
        p.remote_change("b", change("dave", 0, 9, None));
        assert_eq!(p.devices(&dave), 2);
        // A snapshot nobody asked for is ignored.
        p.remote_snapshot("b", 20, vec![]);
        assert_eq!(p.devices(&dave), 2);
    }

    /// A connection of bob's `device`, and its session's queue.
    fn connect(p: &Presence, device: &str) -> (PresenceGuard, crate::mailbox::Mailbox<ToSession>) {
        let (poster, queue) = crate::mailbox::mailbox();
        (p.connected(key("o", "a", "bob"), device, poster), queue)
    }

    fn control(queue: &mut crate::mailbox::Mailbox<ToSession>) -> Option<Control> {
        match queue.try_recv() {
            Some(ToSession::Control(control)) => Some(control),
            _ => None,
        }
    }

    #[test]
    fn the_later_connection_of_a_device_stays() {
        let p = presence();
        let (_older, mut older) = connect(&p, "phone");
        let since = store::now_ms();
        // The same device connects on node "b" later: this one is taken over.
        p.remote_change("b", change("bob", 1, 1, Some(("phone", since + 1_000))));
        assert_eq!(control(&mut older), Some(Control::TakenOver));
        // An earlier connection elsewhere (announced late) does not close this one.
        let (_newer, mut newer) = connect(&p, "tablet");
        p.remote_change("b", change("bob", 1, 2, Some(("tablet", since - 60_000))));
        assert!(control(&mut newer).is_none());
        // Same moment: the greater node name wins ("me" < "x").
        let (_tie, mut tie) = connect(&p, "laptop");
        let at = p.state.lock().unwrap().local[&key("o", "a", "bob")]
            .last()
            .unwrap()
            .since;
        p.remote_change("x", change("bob", 1, 1, Some(("laptop", at))));
        assert_eq!(control(&mut tie), Some(Control::TakenOver));
    }
}
