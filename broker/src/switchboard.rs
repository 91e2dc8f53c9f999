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
//! Presence never leaves the process either: the gate makes it, so the switchboard keeps
//! each user's latest presence (the "retained" message) and hands it to a new subscriber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;

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

/// A session subscribed to a topic: its id and its queue.
type Subscribers = Vec<(u64, mpsc::Sender<Delivery>)>;

pub struct Switchboard {
    topics: Mutex<HashMap<Arc<str>, Subscribers>>,
    retained: Mutex<HashMap<Arc<str>, Bytes>>,
    uplink: AsyncClient,
    /// Deliveries dropped for devices that do not read or acknowledge.
    pub(crate) drops: DropLog,
    /// Outbox publishes handed to the uplink so far: when the server drains, the bridge
    /// has everything once it has received as many.
    outbox_published: Arc<AtomicU64>,
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
        Arc::new(Switchboard {
            topics: Mutex::default(),
            retained: Mutex::default(),
            uplink,
            outbox_published: Arc::default(),
            drops: DropLog::new(
                "deliveries dropped for devices that do not read or acknowledge (they catch up with sync)",
            ),
        })
    }

    /// Adds a session to a topic; returns the topic's retained message, if any.
    pub fn subscribe(&self, topic: &str, session: u64, queue: &mpsc::Sender<Delivery>) -> Option<Delivery> {
        let mut topics = self.topics.lock().unwrap();
        let subscribers = match topics.get_mut(topic) {
            Some(list) => list,
            None => topics.entry(Arc::from(topic)).or_default(),
        };
        if !subscribers.iter().any(|(id, _)| *id == session) {
            subscribers.push((session, queue.clone()));
        }
        let retained = self.retained.lock().unwrap();
        retained.get_key_value(topic).map(|(topic, payload)| Delivery {
            topic: topic.clone(),
            payload: payload.clone(),
            retain: true,
        })
    }

    pub fn unsubscribe(&self, topic: &str, session: u64) {
        let mut topics = self.topics.lock().unwrap();
        if let Some(list) = topics.get_mut(topic) {
            list.retain(|(id, _)| *id != session);
            if list.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Hands a publish to every session subscribed to its topic.
    pub fn dispatch(&self, topic: &str, payload: Bytes) {
        let topics = self.topics.lock().unwrap();
        let Some((topic, subscribers)) = topics.get_key_value(topic) else {
            return;
        };
        for (session, queue) in subscribers {
            let delivery = Delivery {
                topic: topic.clone(),
                payload: payload.clone(),
                retain: false,
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(delivery) {
                self.drops.record(&format!("session {session}"));
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
