//! The switchboard: how device sessions, rumqttd and the bridge reach each other without
//! one rumqttd connection per device.
//!
//! A rumqttd connection costs ~44 KB and, through loopback, two more open files per device
//! (one process may hold 20,000 files here). So the gate holds one connection to rumqttd
//! for all its devices, the **uplink**: every outbox publish (and will) goes through it to
//! the bridges.
//!
//! Everything the server sends to devices (inbox and chatroom publishes from the bridge,
//! events from the API) is handed to the switchboard in-process, which passes it to the
//! sessions subscribed to that exact topic (the ACL only ever admits exact topics, so
//! routing is a map lookup). Only this process's gate holds devices, so a round through
//! rumqttd bought nothing and cost each delivery two loopback hops and a router pass.
//!
//! Presence never crosses the switchboard from outside: every node derives it (see
//! [`crate::presence`]), so the switchboard keeps each user's latest presence (the
//! "retained" message) and hands it to a new subscriber.
//!
//! In a cluster, the switchboard also says which topics this node's sessions hold: when a
//! topic gets its first subscriber here, and when its last one leaves, it sends an
//! [`Interest`] to the cluster (`cluster/`), which subscribes to (or drops) that topic's
//! subject on NATS, so that deliveries made on other nodes reach this one only while it has
//! a recipient.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, oneshot};

use crate::mailbox::Poster;
use crate::presence::Control;

/// Deliveries a session may have queued before the switchboard drops more for it (a
/// device that reads this slowly catches up with `sync`).
pub const SESSION_QUEUE: usize = 1024;

/// One publish for one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// Sent on subscribing: the topic's retained message.
    pub retain: bool,
}

/// What a session's one queue (a [`crate::mailbox`], small while idle) carries: publishes
/// from the switchboard and, rarely, a control from [`crate::presence`]. Deliveries travel
/// in an `Arc`: a fan-out shares one allocation.
#[derive(Debug)]
pub enum ToSession {
    Deliver(Arc<Delivery>),
    Control(Control),
}

/// A session subscribed to a topic: its id and its queue.
type Subscribers = Vec<(u64, Poster<ToSession>)>;

/// A change of the topics this node's sessions hold, for the cluster.
#[derive(Debug)]
pub enum Interest {
    /// The topic has its first subscriber here; `ready` is told once other nodes' deliveries
    /// on it are routed here (the session answers SUBACK then).
    Add(Arc<str>, oneshot::Sender<()>),
    /// The topic's last subscriber here left.
    Remove(Arc<str>),
}

/// What subscribing gave: the topic's retained message, and, in a cluster, when the topic
/// is routed to this node.
pub struct Subscribed {
    pub retained: Option<Delivery>,
    pub ready: Option<oneshot::Receiver<()>>,
}

pub struct Switchboard {
    topics: Mutex<HashMap<Arc<str>, Subscribers>>,
    retained: Mutex<HashMap<Arc<str>, Bytes>>,
    uplink: AsyncClient,
    /// Deliveries dropped for devices that do not read or acknowledge.
    pub(crate) drops: DropLog,
    /// Outbox publishes handed to the uplink so far: when the server drains, the bridge
    /// has everything once it has received as many.
    outbox_published: Arc<AtomicU64>,
    /// Where interest changes go, in a cluster.
    interest: std::sync::OnceLock<mpsc::UnboundedSender<Interest>>,
}

/// Whether deliveries on a topic may come from other nodes: inbox and room topics. Presence
/// is derived on every node, so its topics never cross.
fn crosses_nodes(topic: &str) -> bool {
    topic.split('/').nth(3) != Some("presence")
}

/// Counts things dropped or refused (deliveries for slow devices, connections over a limit)
/// and logs them at most once every ten seconds, with how many: a flood drops thousands a
/// second, and a line for each would flood the log instead.
pub(crate) struct DropLog {
    what: &'static str,
    dropped: AtomicU64,
    last_logged_ms: AtomicU64,
}

impl DropLog {
    const EVERY_MS: u64 = 10_000;

    pub(crate) const fn new(what: &'static str) -> DropLog {
        DropLog {
            what,
            dropped: AtomicU64::new(0),
            last_logged_ms: AtomicU64::new(0),
        }
    }

    /// Counts one; `last` names the latest one (a device, an address) for the log.
    pub(crate) fn record(&self, last: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let now = store::now_ms().max(0) as u64;
        let logged = self.last_logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(logged) >= Self::EVERY_MS
            && self
                .last_logged_ms
                .compare_exchange(logged, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            tracing::warn!(count = dropped, last, "{} (logged at most every 10 s)", self.what);
        }
    }
}

impl Switchboard {
    /// Opens the uplink connection to rumqttd.
    pub fn start(broker: &crate::EmbeddedBroker) -> Arc<Switchboard> {
        let tag = store::tokens::random_secret(8);
        let mut options = broker.client_options(&format!("chatd-uplink-{tag}"));
        options.set_inflight(1000);
        let (uplink, mut uplink_loop) = AsyncClient::new(options, 10_000);
        uplink_loop.network_options.set_tcp_nodelay(true);
        tokio::spawn(async move {
            loop {
                if let Err(e) = uplink_loop.poll().await {
                    tracing::warn!(error = %e, "gate uplink lost the broker; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Self::with_uplink(uplink)
    }

    fn with_uplink(uplink: AsyncClient) -> Arc<Switchboard> {
        Arc::new(Switchboard {
            topics: Mutex::default(),
            retained: Mutex::default(),
            uplink,
            outbox_published: Arc::default(),
            interest: std::sync::OnceLock::new(),
            drops: DropLog::new(
                "deliveries dropped for devices that do not read or acknowledge (they catch up with sync)",
            ),
        })
    }

    /// From now on, tells `interest` when a topic that crosses nodes gets its first
    /// subscriber on this node and loses its last. Once only.
    pub fn route_interest(&self, interest: mpsc::UnboundedSender<Interest>) {
        if self.interest.set(interest).is_err() {
            panic!("the switchboard's interest is routed twice");
        }
    }

    /// A switchboard whose uplink goes nowhere: for tests of what routes in-process.
    #[cfg(test)]
    pub(crate) fn unconnected() -> Arc<Switchboard> {
        let (uplink, _never_polled) = AsyncClient::new(rumqttc::MqttOptions::new("test", "127.0.0.1", 9), 10);
        Self::with_uplink(uplink)
    }

    /// Adds a session to a topic.
    pub fn subscribe(&self, topic: &str, session: u64, queue: &Poster<ToSession>) -> Subscribed {
        let mut topics = self.topics.lock().unwrap();
        let mut ready = None;
        let subscribers = match topics.get_mut(topic) {
            Some(list) => list,
            None => {
                let key: Arc<str> = Arc::from(topic);
                // Sent under the lock, so that the cluster sees adds and removes of a topic
                // in the order they happened.
                if let (Some(interest), true) = (self.interest.get(), crosses_nodes(topic)) {
                    let (tx, rx) = oneshot::channel();
                    if interest.send(Interest::Add(key.clone(), tx)).is_ok() {
                        ready = Some(rx);
                    }
                }
                topics.entry(key).or_default()
            }
        };
        if !subscribers.iter().any(|(id, _)| *id == session) {
            subscribers.push((session, queue.clone()));
        }
        let retained = self.retained.lock().unwrap();
        let retained = retained.get_key_value(topic).map(|(topic, payload)| Delivery {
            topic: topic.clone(),
            payload: payload.clone(),
            retain: true,
        });
        Subscribed { retained, ready }
    }

    pub fn unsubscribe(&self, topic: &str, session: u64) {
        let mut topics = self.topics.lock().unwrap();
        if let Some(list) = topics.get_mut(topic) {
            list.retain(|(id, _)| *id != session);
            if list.is_empty() {
                if let Some((topic, _)) = topics.remove_entry(topic) {
                    if let (Some(interest), true) = (self.interest.get(), crosses_nodes(&topic)) {
                        let _ = interest.send(Interest::Remove(topic));
                    }
                }
            }
        }
    }

    /// Hands a publish to every session subscribed to its topic.
    pub fn dispatch(&self, topic: &str, payload: Bytes) {
        let topics = self.topics.lock().unwrap();
        let Some((topic, subscribers)) = topics.get_key_value(topic) else {
            return;
        };
        let delivery = Arc::new(Delivery {
            topic: topic.clone(),
            payload,
            retain: false,
        });
        for (session, queue) in subscribers {
            if queue.try_post(ToSession::Deliver(delivery.clone())).is_err() {
                self.drops.record(&format!("session {session}"));
                metrics::counter!("chatd_deliveries_dropped_total", "reason" => "device_not_reading").increment(1);
            }
        }
    }

    /// Replaces a topic's retained message and delivers it to current subscribers.
    pub fn retain(&self, topic: &str, payload: Bytes) {
        self.retained.lock().unwrap().insert(Arc::from(topic), payload.clone());
        self.dispatch(topic, payload);
    }

    /// Publishes a device's outbox publish to rumqttd (for the bridges), at QoS 1. Waits
    /// while the uplink's queue is full; an error means the uplink is gone.
    pub async fn publish_outbox(&self, topic: String, payload: Vec<u8>) -> Result<(), rumqttc::ClientError> {
        self.uplink.publish(topic, QoS::AtLeastOnce, false, payload).await?;
        self.outbox_published.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The count of outbox publishes handed to the uplink, shared.
    pub fn outbox_published(&self) -> Arc<AtomicU64> {
        self.outbox_published.clone()
    }
}
