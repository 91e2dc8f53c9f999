//! Cluster mode: several chatd nodes on one database, with NATS carrying what must cross
//! nodes. Turned on by `[cluster] nats = "nats://…"`; without it nothing here runs and one
//! process behaves as it always has.
//!
//! Storage stays the source of truth (acks mean stored, `sync` catches anyone up); NATS only
//! carries what is live, and each kind by the cheapest rule that is still right:
//!
//! - **Deliveries** (inbox and room publishes from the bridge, events from the API) are
//!   dispatched to this node's sessions as before and, unless they answer one device of
//!   this node (an `ack`, an `error`), published once on the topic's subject
//!   ([`subjects::for_topic`]). A node subscribes to a topic's subject when the topic gets
//!   its first subscriber on that node and unsubscribes when the last one leaves (the
//!   switchboard's [`Interest`]), so NATS forwards a delivery only to nodes that hold a
//!   recipient. The connection is `no_echo`: a node never gets its own deliveries back.
//! - **Presence**: each node publishes every change of a user's device count on that node;
//!   every node keeps every other node's counts ([`broker::presence`]) and shows the sum.
//!   Nodes send heartbeats; one not heard from for `node_timeout` is forgotten, so the
//!   devices of a node killed with `kill -9` show offline within that time. A node heard from
//!   for the first time (or again after its NATS link came back) is asked for a snapshot of
//!   its counts. A device that connects tells the other nodes, which close an older
//!   connection of the same device id (session takeover across nodes).
//! - **Controls** (kick, user deletion, token revocation, room leave/kick/ban, a blocked
//!   user's presence) are published to every node, which applies them to its connections.
//!
//! Nothing here is a protocol of our own beyond the message shapes in [`wire`]: NATS routes
//! by interest, orders each node's messages, and reconnects.

pub mod subjects;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::presence::{key, LocalChange, Presence, UserKey};
use broker::switchboard::{Interest, Switchboard};
use bytes::Bytes;
use futures_util::StreamExt;
use store::envelope::{unframe_inbox, Route};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use wire::{ControlMessage, Heartbeat, PresenceChange, SnapshotPart, SnapshotRequest};

/// The error type of the cluster crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster.nats: cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cluster.nats: {0}")]
    Url(String),
    #[error("cluster.prefix {0:?}: must be dot-separated tokens of A-Z, a-z, 0-9, '_', '-'")]
    Prefix(String),
    #[error("cluster: subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
}

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// NATS server URLs (any of a NATS cluster's servers).
    pub nats: Vec<String>,
    /// This node's name, for logs and for the other nodes (made unique per process start).
    pub node: String,
    /// What every subject starts with: clusters sharing one NATS need different prefixes.
    pub prefix: String,
    /// How often this node says it is alive.
    pub heartbeat: Duration,
    /// After how long without a heartbeat another node is taken for dead.
    pub node_timeout: Duration,
}

/// Counts of what crossed NATS, for benchmarks and logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries published to NATS.
    pub deliveries_out: AtomicU64,
    /// Deliveries received from other nodes (and handed to this node's sessions).
    pub deliveries_in: AtomicU64,
    /// Deliveries dropped because NATS could not take them fast enough.
    pub deliveries_dropped: AtomicU64,
    /// Presence changes and controls published.
    pub presence_out: AtomicU64,
    pub controls_out: AtomicU64,
    /// Topics this node is subscribed to on NATS now.
    pub topics: AtomicU64,
}

/// Deliveries waiting for NATS before more are dropped (the recipients catch up by `sync`).
const DELIVERY_QUEUE: usize = 65_536;
/// Users per snapshot message (each at most ~200 bytes: well under NATS's 1 MiB default).
const SNAPSHOT_PART: usize = 1000;

/// A running cluster membership: the `Live` the bridge and the API use in cluster mode.
pub struct Cluster {
    node: Arc<str>,
    prefix: String,
    client: async_nats::Client,
    presence: Presence,
    switchboard: Arc<Switchboard>,
    deliveries: mpsc::Sender<(String, Bytes)>,
    controls: mpsc::UnboundedSender<ControlMessage>,
    stats: Arc<Stats>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    /// Whether the link to NATS is up (readiness: a node cut from the others would show
    /// their users offline and miss their deliveries).
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Connects to NATS and joins the cluster: from here on this node's presence changes and
    /// interest go to the others, and theirs come here. Fails if NATS cannot be reached.
    pub async fn start(
        settings: ClusterSettings,
        presence: Presence,
        switchboard: Arc<Switchboard>,
    ) -> Result<Arc<Cluster>, Error> {
        if !subjects::valid_prefix(&settings.prefix) {
            return Err(Error::Prefix(settings.prefix));
        }
        let node: Arc<str> = Arc::from(format!("{}-{}", settings.node, store::tokens::random_secret(6)).as_str());
        let addrs = settings
            .nats
            .iter()
            .map(|url| {
                url.parse::<async_nats::ServerAddr>()
                    .map_err(|e| Error::Url(format!("{url}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let urls = settings.nats.join(",");
        let epoch = Arc::new(AtomicU64::new(0));
        let (events_tx, events) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("chatd {node}"))
            .no_echo()
            .ping_interval(Duration::from_secs(10))
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let events_tx = events_tx.clone();
                async move {
                    let _ = events_tx.send(event);
                }
            })
            .connect(addrs)
            .await
            .map_err(|source| Error::Connect { urls, source })?;

        let subscribe = |subject: String| {
            let client = client.clone();
            async move {
                client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|source| Error::Subscribe { subject, source })
            }
        };
        let prefix = settings.prefix.clone();
        let heartbeats = subscribe(subjects::heartbeat(&prefix)).await?;
        let changes_in = subscribe(subjects::presence(&prefix)).await?;
        let controls_in = subscribe(subjects::control(&prefix)).await?;
        let snapshot_requests = subscribe(subjects::snapshot_request(&prefix, &node)).await?;
        let snapshot_parts = subscribe(subjects::snapshot_reply(&prefix, &node)).await?;

        let (deliveries, deliveries_rx) = mpsc::channel(DELIVERY_QUEUE);
        let (controls, controls_rx) = mpsc::unbounded_channel();
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let changes = presence.join_cluster(node.clone());
        switchboard.route_interest(interest_tx);
        let cluster = Arc::new(Cluster {
            node: node.clone(),
            prefix,
            client,
            presence,
            switchboard,
            deliveries,
            controls,
            stats: Arc::default(),
            tasks: Mutex::default(),
        });
        let membership = Membership {
            cluster: cluster.clone(),
            settings: settings.clone(),
            epoch: epoch.clone(),
            known: HashMap::new(),
            snapshots: HashMap::new(),
        };
        let tasks = vec![
            tokio::spawn(cluster.clone().publish(changes, controls_rx, deliveries_rx)),
            tokio::spawn(cluster.clone().route_interest(interest_rx)),
            tokio::spawn(membership.run(heartbeats, changes_in, controls_in, snapshot_requests, snapshot_parts)),
            tokio::spawn(watch_connection(events, epoch, node.clone())),
        ];
        *cluster.tasks.lock().unwrap() = tasks;
        // Say hello at once, so the others know this node before its first device connects.
        cluster.heartbeat(0, false).await;
        let _ = cluster.client.flush().await;
        tracing::info!(node = %node, nats = %settings.nats.join(","), "joined the cluster");
        Ok(cluster)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Leaves the cluster: tells the others (so they drop this node's devices at once) and
    /// closes the NATS connection. Call once every device connection is closed.
    pub async fn leave(&self) {
        // Let the presence changes of the last connections go out first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.heartbeat(0, true).await;
        let _ = self.client.flush().await;
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        let _ = self.client.drain().await;
    }

    async fn heartbeat(&self, epoch: u64, bye: bool) {
        let beat = Heartbeat {
            node: self.node.to_string(),
            epoch,
            bye,
        };
        self.send(subjects::heartbeat(&self.prefix), &beat).await;
    }

    async fn send<T: serde::Serialize>(&self, subject: String, message: &T) {
        let payload = serde_json::to_vec(message).expect("cluster messages serialize");
        if let Err(e) = self.client.publish(subject, payload.into()).await {
            tracing::warn!(error = %e, "cluster: publishing to NATS failed");
        }
    }

    /// Publishes this node's presence changes, controls and deliveries, in that priority.
    async fn publish(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<LocalChange>,
        mut controls: mpsc::UnboundedReceiver<ControlMessage>,
        mut deliveries: mpsc::Receiver<(String, Bytes)>,
    ) {
        let presence_subject = subjects::presence(&self.prefix);
        let control_subject = subjects::control(&self.prefix);
        loop {
            tokio::select! {
                biased;
                Some(change) = changes.recv() => {
                    let message = PresenceChange {
                        node: self.node.to_string(),
                        v: change.version,
                        org: change.user.org,
                        app: change.user.app,
                        user: change.user.user,
                        d: change.devices,
                        connected: change.connected,
                    };
                    self.send(presence_subject.clone(), &message).await;
                    self.stats.presence_out.fetch_add(1, Ordering::Relaxed);
                }
                Some(control) = controls.recv() => {
                    self.send(control_subject.clone(), &control).await;
                    self.stats.controls_out.fetch_add(1, Ordering::Relaxed);
                }
                Some((subject, payload)) = deliveries.recv() => {
                    if let Err(e) = self.client.publish(subject, payload).await {
                        tracing::warn!(error = %e, "cluster: publishing a delivery to NATS failed");
                    }
                }
                else => return,
            }
        }
    }

    /// Subscribes to the subjects of the topics this node's sessions hold, and drops them
    /// when they no longer hold them. Adds that arrive together share one flush.
    async fn route_interest(self: Arc<Self>, mut interest: mpsc::UnboundedReceiver<Interest>) {
        let mut routed: HashMap<Arc<str>, JoinHandle<()>> = HashMap::new();
        let mut ready: Vec<oneshot::Sender<()>> = Vec::new();
        while let Some(first) = interest.recv().await {
            let mut next = Some(first);
            while let Some(change) = next.take().or_else(|| interest.try_recv().ok()) {
                match change {
                    Interest::Add(topic, tell) => {
                        ready.push(tell);
                        if routed.contains_key(&topic) {
                            continue;
                        }
                        let Some(subject) = subjects::for_topic(&self.prefix, &topic) else {
                            continue;
                        };
                        match self.client.subscribe(subject).await {
                            Ok(subscriber) => {
                                let forward = tokio::spawn(self.clone().forward(topic.clone(), subscriber));
                                routed.insert(topic, forward);
                            }
                            Err(e) => tracing::warn!(error = %e, %topic, "cluster: subscribing failed"),
                        }
                    }
                    Interest::Remove(topic) => {
                        if let Some(forward) = routed.remove(&topic) {
                            // Dropping the subscriber unsubscribes.
                            forward.abort();
                        }
                    }
                }
                if ready.len() >= 256 {
                    break;
                }
            }
            self.stats.topics.store(routed.len() as u64, Ordering::Relaxed);
            // The SUBs are on the wire when the flush returns; NATS handles a connection's
            // commands in order, so deliveries published after that reach this node.
            let _ = self.client.flush().await;
            for tell in ready.drain(..) {
                let _ = tell.send(());
            }
        }
        for (_, forward) in routed {
            forward.abort();
        }
    }

    /// Hands what other nodes deliver on one topic to this node's sessions.
    async fn forward(self: Arc<Self>, topic: Arc<str>, mut subscriber: async_nats::Subscriber) {
        while let Some(message) = subscriber.next().await {
            self.stats.deliveries_in.fetch_add(1, Ordering::Relaxed);
            self.switchboard.dispatch(&topic, message.payload);
        }
    }

    /// Queues a delivery for the other nodes, on `subject`.
    fn share(&self, subject: String, payload: Bytes) {
        match self.deliveries.try_send((subject, payload)) {
            Ok(()) => {
                self.stats.deliveries_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let dropped = self.stats.deliveries_dropped.fetch_add(1, Ordering::Relaxed);
                if dropped.is_multiple_of(10_000) {
                    tracing::warn!(
                        dropped = dropped + 1,
                        "cluster: deliveries for other nodes dropped, NATS is not keeping up (recipients catch up with sync)"
                    );
                }
            }
        }
    }

    /// Applies a control to this node's connections and sends it to every other node.
    fn everywhere(&self, control: ControlMessage) {
        apply_control(&self.presence, &control);
        let _ = self.controls.send(control);
    }
}

impl store::live::Live for Cluster {
    fn disconnect_user(&self, org: &str, app: &str, user: &str) {
        self.everywhere(ControlMessage::Disconnect {
            org: org.into(),
            app: app.into(),
            user: user.into(),
        });
    }

    fn leave_room(&self, org: &str, app: &str, user: &str, room: &str) {
        self.everywhere(ControlMessage::LeaveRoom {
            org: org.into(),
            app: app.into(),
            user: user.into(),
            room: room.into(),
        });
    }

    fn hide_presence(&self, org: &str, app: &str, owner: &str, from: &str) {
        self.everywhere(ControlMessage::HidePresence {
            org: org.into(),
            app: app.into(),
            owner: owner.into(),
            from: from.into(),
        });
    }

    fn is_online(&self, org: &str, app: &str, user: &str) -> bool {
        self.presence.is_online(org, app, user)
    }

    fn deliver_inbox(&self, org: &str, app: &str, user: &str, framed: Vec<u8>) {
        // A reply to one device (ack, error, synced, ok) is for the device that sent the op
        // through this node's gate to this node's bridge: it never needs to cross.
        let reply = matches!(unframe_inbox(&framed), Some((Route::Only(_), _)));
        let payload = Bytes::from(framed);
        self.switchboard
            .dispatch(&store::topics::inbox(org, app, user), payload.clone());
        if !reply {
            self.share(subjects::inbox(&self.prefix, org, app, user), payload);
        }
    }

    fn deliver_room(&self, org: &str, app: &str, room: &str, payload: Vec<u8>) {
        let payload = Bytes::from(payload);
        self.switchboard
            .dispatch(&store::topics::room(org, app, room), payload.clone());
        self.share(subjects::room(&self.prefix, org, app, room), payload);
    }
}

/// Logs the NATS connection's ups and downs; each time it comes back, the epoch moves on,
/// so the other nodes ask this one for a snapshot (what it said while cut off may be lost).
async fn watch_connection(
    mut events: mpsc::UnboundedReceiver<async_nats::Event>,
    epoch: Arc<AtomicU64>,
    node: Arc<str>,
) {
    while let Some(event) = events.recv().await {
        match event {
            async_nats::Event::Connected => {
                let now = epoch.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(%node, epoch = now, "cluster: NATS connection back");
            }
            async_nats::Event::Disconnected => {
                tracing::warn!(%node, "cluster: NATS connection lost; reconnecting (other nodes see this node's devices offline after cluster.node_timeout_ms)");
            }
            async_nats::Event::SlowConsumer(sid) => {
                tracing::warn!(%node, sid, "cluster: this node reads NATS too slowly; deliveries dropped (recipients catch up with sync)");
            }
            other => tracing::info!(%node, event = %other, "cluster: NATS event"),
        }
    }
}

/// Another node as this one knows it.
struct Known {
    epoch: u64,
    last_heard: Instant,
    /// When its snapshot was asked for, until it arrives.
    asked: Option<Instant>,
}

/// A snapshot being received: its version, the parts so far, and their users.
type PartialSnapshot = (u64, u32, Vec<(UserKey, u32)>);

/// Keeps track of the other nodes: heartbeats in and out, their presence changes and
/// snapshots, and the controls they send.
struct Membership {
    cluster: Arc<Cluster>,
    settings: ClusterSettings,
    epoch: Arc<AtomicU64>,
    known: HashMap<String, Known>,
    /// Snapshot parts received so far, per node.
    snapshots: HashMap<String, PartialSnapshot>,
}

impl Membership {
    async fn run(
        mut self,
        mut heartbeats: async_nats::Subscriber,
        mut changes: async_nats::Subscriber,
        mut controls: async_nats::Subscriber,
        mut snapshot_requests: async_nats::Subscriber,
        mut snapshot_parts: async_nats::Subscriber,
    ) {
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick().await,
                Some(m) = heartbeats.next() => {
                    if let Some(beat) = parse::<Heartbeat>(&m.payload, "heartbeat") {
                        self.heard(beat).await;
                    }
                }
                Some(m) = changes.next() => {
                    if let Some(change) = parse::<PresenceChange>(&m.payload, "presence change") {
                        let local = LocalChange {
                            user: key(&change.org, &change.app, &change.user),
                            devices: change.d,
                            version: change.v,
                            connected: change.connected,
                        };
                        self.cluster.presence.remote_change(&change.node, local);
                    }
                }
                Some(m) = controls.next() => {
                    if let Some(control) = parse::<ControlMessage>(&m.payload, "control") {
                        apply_control(&self.cluster.presence, &control);
                    }
                }
                Some(m) = snapshot_requests.next() => {
                    if let Some(request) = parse::<SnapshotRequest>(&m.payload, "snapshot request") {
                        self.send_snapshot(&request.from).await;
                    }
                }
                Some(m) = snapshot_parts.next() => {
                    if let Some(part) = parse::<SnapshotPart>(&m.payload, "snapshot") {
                        self.snapshot_part(part);
                    }
                }
                else => return,
            }
        }
    }

    /// Says this node is alive, forgets nodes not heard from in time, asks again for
    /// snapshots that did not come.
    async fn tick(&mut self) {
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.cluster.heartbeat(epoch, false).await;
        let now = Instant::now();
        let timeout = self.settings.node_timeout;
        let gone: Vec<String> = self
            .known
            .iter()
            .filter(|(_, k)| now.duration_since(k.last_heard) > timeout)
            .map(|(node, _)| node.clone())
            .collect();
        for node in gone {
            tracing::warn!(%node, timeout_ms = timeout.as_millis() as u64, "cluster: node not heard from; its devices are offline");
            self.forget(&node);
        }
        let retry = self.settings.heartbeat * 3;
        let again: Vec<String> = self
            .known
            .iter()
            .filter(|(_, k)| k.asked.is_some_and(|at| now.duration_since(at) > retry))
            .map(|(node, _)| node.clone())
            .collect();
        for node in again {
            self.ask_snapshot(&node).await;
        }
    }

    fn forget(&mut self, node: &str) {
        self.known.remove(node);
        self.snapshots.remove(node);
        self.cluster.presence.remote_node_gone(node);
    }

    async fn heard(&mut self, beat: Heartbeat) {
        if beat.bye {
            tracing::info!(node = %beat.node, "cluster: node left");
            self.forget(&beat.node);
            return;
        }
        let now = Instant::now();
        match self.known.get_mut(&beat.node) {
            Some(known) if known.epoch == beat.epoch => known.last_heard = now,
            _ => {
                tracing::info!(node = %beat.node, epoch = beat.epoch, "cluster: node joined; asking for its devices");
                self.known.insert(
                    beat.node.clone(),
                    Known {
                        epoch: beat.epoch,
                        last_heard: now,
                        asked: None,
                    },
                );
                self.cluster.presence.remote_node_seen(&beat.node);
                self.ask_snapshot(&beat.node).await;
            }
        }
    }

    async fn ask_snapshot(&mut self, node: &str) {
        if let Some(known) = self.known.get_mut(node) {
            known.asked = Some(Instant::now());
        }
        self.snapshots.remove(node);
        let request = SnapshotRequest {
            from: self.cluster.node.to_string(),
        };
        let subject = subjects::snapshot_request(&self.cluster.prefix, node);
        self.cluster.send(subject, &request).await;
    }

    async fn send_snapshot(&self, to: &str) {
        let (v, users) = self.cluster.presence.local_snapshot();
        let parts = users.len().div_ceil(SNAPSHOT_PART).max(1) as u32;
        let subject = subjects::snapshot_reply(&self.cluster.prefix, to);
        let mut chunks = users.chunks(SNAPSHOT_PART);
        for part in 0..parts {
            let users = chunks
                .next()
                .unwrap_or_default()
                .iter()
                .map(|(u, d)| (u.org.clone(), u.app.clone(), u.user.clone(), *d))
                .collect();
            let message = SnapshotPart {
                node: self.cluster.node.to_string(),
                v,
                part,
                parts,
                users,
            };
            self.cluster.send(subject.clone(), &message).await;
        }
    }

    fn snapshot_part(&mut self, part: SnapshotPart) {
        let Some(known) = self.known.get_mut(&part.node) else {
            return;
        };
        if known.asked.is_none() {
            return;
        }
        let entry = self
            .snapshots
            .entry(part.node.clone())
            .or_insert_with(|| (part.v, 0, Vec::new()));
        if entry.0 != part.v {
            // Parts of an older answer: start over with this one.
            *entry = (part.v, 0, Vec::new());
        }
        entry.1 += 1;
        entry.2.extend(
            part.users
                .into_iter()
                .map(|(org, app, user, d)| (key(&org, &app, &user), d)),
        );
        if entry.1 >= part.parts {
            let (v, _, users) = self.snapshots.remove(&part.node).unwrap();
            known.asked = None;
            tracing::debug!(node = %part.node, users = users.len(), "cluster: snapshot applied");
            self.cluster.presence.remote_snapshot(&part.node, v, users);
        }
    }
}

/// A control, on this node's connections: what [`Presence`] does on a node of its own.
fn apply_control(presence: &Presence, control: &ControlMessage) {
    use store::live::Live;
    match control {
        ControlMessage::Disconnect { org, app, user } => presence.disconnect_user(org, app, user),
        ControlMessage::LeaveRoom { org, app, user, room } => presence.leave_room(org, app, user, room),
        ControlMessage::HidePresence { org, app, owner, from } => presence.hide_presence(org, app, owner, from),
    }
}

fn parse<T: serde::de::DeserializeOwned>(payload: &[u8], what: &str) -> Option<T> {
    match serde_json::from_slice(payload) {
        Ok(message) => Some(message),
        Err(e) => {
            tracing::warn!(error = %e, "cluster: unreadable {what} from NATS, ignored");
            None
        }
    }
}
