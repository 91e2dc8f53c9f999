//! The bridge: consumes every device's outbox through a shared subscription, validates each
//! envelope, stores messages in batches (one transaction, one fsync, per batch: group
//! commit), and then delivers: `ack` to the sending device, `msg` to every device of the
//! recipient and to the sender's other devices, `error` when something is refused.
//!
//! It consumes as an ordinary MQTT client of the broker (a shared subscription, so several
//! bridges could share the work), and delivers in-process, through [`Live`], straight to
//! the gate's sessions: only this process's gate holds devices, and a round through rumqttd
//! cost every delivery two loopback hops, two encodings and a pass of rumqttd's router
//! (three deliveries per message: the sender's ack, the recipient's copy, the sender's
//! other devices).
//!
//! Ordering of the steps is what makes the promises hold:
//! 1. the batch is committed before any `ack` or `msg` leaves, so an ack means stored;
//! 2. a device that gets no `ack` (the process died mid-batch) retries with the same `cid`,
//!    which is stored once.
//!
//! Batches go through three stages ([`process`]): checked (envelopes, the app's rules, rate
//! limits), stored, answered. Consecutive batches overlap: while one is answered the next is
//! stored and the one after is checked. Stores follow one another in batch order, and so do
//! answers, so seqs, acks and deliveries follow arrival, and an op that waits for its batch
//! (a `sync`) sees every message sent before it ([`Committing`]).
//!
//! The broker's publish is acknowledged as soon as it is queued for a batch, not after the
//! commit. Holding that ack would buy nothing: rumqttd keeps nothing across a restart and
//! drops a clean session's unacknowledged publishes when it disconnects. It would cost a
//! lot: rumqttd sends at most 100 unacknowledged publishes to a connection (a constant in
//! its router), so batches could never exceed 100 and the bridge would idle while each one
//! commits. The queue is bounded, so a slow database still pushes back on the broker.

mod lifecycle;
mod moderation;
mod process;
mod rules;
pub mod timers;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use process::{Bridge, Committer, Prepared};
use store::live::Live;
use store::Store;

/// How the bridge batches, and what it needs to check message bodies.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// Most messages stored in one transaction.
    pub max_batch: usize,
    /// The URLs of this server's files, which file message bodies must point at.
    pub file_links: store::files::FileLinks,
    /// Where apps' moderation endpoints may point (the operator's rules for tenant URLs).
    pub moderation_allow: hooks::guard::Allow,
}

impl Default for BridgeSettings {
    fn default() -> Self {
        BridgeSettings {
            max_batch: 1024,
            file_links: store::files::FileLinks::new("http://localhost"),
            moderation_allow: hooks::guard::Allow::default(),
        }
    }
}

/// The bridge's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Store(#[from] store::Error),
    #[error("broker: {0}")]
    Client(#[from] rumqttc::ClientError),
}

/// How the bridge finishes when the server stops: asked to drain, it stores and answers
/// everything devices sent before the gate stopped reading them (the gate counts its
/// outbox publishes, the bridge counts what reaches it), then says it is done.
pub struct Drain {
    pub requested: watch::Receiver<bool>,
    /// Outbox publishes the gate has handed to rumqttd.
    pub published: Arc<AtomicU64>,
    pub done: watch::Sender<bool>,
}

/// Runs a bridge until `shutdown` turns true. `subscribed` turns true once the broker has
/// granted the outbox subscription: until then a device's publish would reach no one (the
/// broker acks and drops a publish nobody subscribes to), so the gate waits for it.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    options: MqttOptions,
    store: Store,
    live: Arc<dyn Live>,
    settings: BridgeSettings,
    mut drain: Drain,
    subscribed: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut consumer_options = options.clone();
    consumer_options.set_manual_acks(true);
    consumer_options.set_clean_session(true);
    let (consumer, mut consumer_loop) = AsyncClient::new(consumer_options, 10_000);
    // Small acks on loopback: Nagle's algorithm would hold them back.
    consumer_loop.network_options.set_tcp_nodelay(true);

    let (incoming_tx, mut incoming) = mpsc::channel(settings.max_batch * 4);
    let received = Arc::new(AtomicU64::new(0));
    let consumer_task = tokio::spawn(consume(
        consumer_loop,
        consumer,
        incoming_tx,
        received.clone(),
        subscribed,
    ));
    let mut bridge = Bridge::new(store, live, settings.file_links.clone(), settings.moderation_allow);
    let mut waiting = FairQueue::default();
    let most_waiting = settings.max_batch * 8;
    let mut arrived = Vec::with_capacity(settings.max_batch);
    let mut batch = Vec::with_capacity(settings.max_batch);
    // The batches past checking: at most one being stored and one being answered.
    let mut committing = Committing::new();
    loop {
        if waiting.is_empty() {
            let draining = *drain.requested.borrow();
            if draining
                && incoming.is_empty()
                && bridge.moderation.idle()
                && received.load(Ordering::Acquire) >= drain.published.load(Ordering::Acquire)
            {
                // Everything the gate passed on is stored and answered.
                committing.settle().await;
                let _ = drain.done.send(true);
            }
            tokio::select! {
                n = incoming.recv_many(&mut arrived, settings.max_batch) => {
                    if n == 0 {
                        break;
                    }
                }
                // Messages an app's moderation approved: stored as a batch of their own.
                Some(approved) = bridge.moderation.approved.recv() => {
                    committing.settle().await;
                    bridge.store_moderated(approved).await;
                    continue;
                }
                _ = shutdown.changed() => break,
                // Draining: look again soon (what is still in rumqttd arrives by itself).
                _ = tokio::time::sleep(Duration::from_millis(10)), if draining => continue,
                _ = drain.requested.changed(), if !draining => continue,
            }
        }
        // While the last batch is being stored, let the next one grow rather than start a
        // small one behind it: each commit has a fixed cost, so at a moderate rate commits
        // stay few and large (as when the bridge did one batch at a time). A full batch does
        // not wait.
        while committing.storing() && waiting.len() + arrived.len() < settings.max_batch {
            tokio::select! {
                _ = committing.stored() => {}
                n = incoming.recv_many(&mut arrived, settings.max_batch) => {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        // Take what else has arrived, up to a bound: past it the queue (and then rumqttd)
        // waits, so a slow database still pushes back.
        while waiting.len() + arrived.len() < most_waiting {
            match incoming.try_recv() {
                Ok(publish) => arrived.push(publish),
                Err(_) => break,
            }
        }
        for publish in arrived.drain(..) {
            waiting.push(publish);
        }
        waiting.take_batch(settings.max_batch, &mut batch);
        metrics::gauge!("chatd_bridge_waiting").set(waiting.len() as f64);
        let started = std::time::Instant::now();
        let size = batch.len();
        let prepared = bridge.prepare(&batch).await;
        batch.clear();
        if !prepared.is_empty() {
            committing
                .start(bridge.committer.clone(), prepared, started, size)
                .await;
        }
        while let Ok(approved) = bridge.moderation.approved.try_recv() {
            committing.settle().await;
            bridge.store_moderated(approved).await;
        }
    }
    // What was taken from the broker is stored and answered before the bridge stops.
    committing.settle().await;
    consumer_task.abort();
    Ok(())
}

/// The batches being stored and answered. A batch's store starts once the previous batch is
/// stored (and, if answering it runs ops that write, answered); its answers go out once the
/// previous batch's have. So the database stores one batch while the bridge answers the one
/// before, and order holds: seqs, acks and deliveries follow arrival, and an op that waits
/// for its batch (a `sync`) sees every message sent before it.
struct Committing {
    tasks: VecDeque<JoinHandle<()>>,
    /// The last batch's signals: stored (and its writes done), and answered.
    last: Option<(oneshot::Receiver<()>, oneshot::Receiver<()>)>,
    /// Batches started, and batches stored (counted by their tasks).
    started: u64,
    stored: Arc<watch::Sender<u64>>,
    stored_rx: watch::Receiver<u64>,
}

/// Counts a batch as stored when dropped: after its store, or as its task fails.
struct CountStored(Arc<watch::Sender<u64>>);

impl Drop for CountStored {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n += 1);
    }
}

impl Committing {
    fn new() -> Committing {
        let (stored, stored_rx) = watch::channel(0);
        Committing {
            tasks: VecDeque::new(),
            last: None,
            started: 0,
            stored: Arc::new(stored),
            stored_rx,
        }
    }

    /// Whether a batch is being stored (or waits to be).
    fn storing(&self) -> bool {
        *self.stored_rx.borrow() < self.started
    }

    /// Waits until every batch started is stored.
    async fn stored(&mut self) {
        let started = self.started;
        let _ = self.stored_rx.wait_for(|&n| n >= started).await;
    }

    /// Starts a batch's store and answer, behind the batches already started.
    async fn start(&mut self, committer: Arc<Committer>, prepared: Prepared, started: std::time::Instant, size: usize) {
        while self.tasks.len() >= 2 {
            self.settle_oldest().await;
        }
        let (stored_tx, stored_rx) = oneshot::channel::<()>();
        let (answered_tx, answered_rx) = oneshot::channel::<()>();
        let before = self.last.replace((stored_rx, answered_rx));
        self.started += 1;
        let count_stored = CountStored(self.stored.clone());
        self.tasks.push_back(tokio::spawn(async move {
            let (before_stored, before_answered) = before.unzip();
            // A signal's sender dropped (its task failed) frees the next batch as well.
            if let Some(stored) = before_stored {
                let _ = stored.await;
            }
            let stored = committer.store(prepared).await;
            drop(count_stored);
            // The next batch's store may begin, unless answering this one runs ops that write:
            // then it waits until they are done.
            let hold = if stored.writes_later() {
                Some(stored_tx)
            } else {
                drop(stored_tx);
                None
            };
            if let Some(answered) = before_answered {
                let _ = answered.await;
            }
            committer.answer(stored).await;
            drop(hold);
            drop(answered_tx);
            let took = started.elapsed();
            metrics::histogram!("chatd_bridge_batch_size").record(size as f64);
            metrics::histogram!("chatd_bridge_batch_seconds").record(took.as_secs_f64());
            tracing::debug!(size, took_us = took.as_micros() as u64, "batch");
        }));
    }

    async fn settle_oldest(&mut self) {
        if let Some(task) = self.tasks.pop_front() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a batch's store or answer failed");
            }
        }
    }

    /// Waits until every batch started is stored and answered.
    async fn settle(&mut self) {
        while !self.tasks.is_empty() {
            self.settle_oldest().await;
        }
        self.last = None;
    }
}

/// What waits for a batch, one queue per sender (outbox topic, so per user), served in
/// turn: each batch takes one publish from every sender with something waiting before it
/// takes a second from any. A user who floods fills their own queue, not everyone's
/// batches: others' publishes are in the next batch, not behind thousands of the flood's.
/// Each sender's publishes keep their order.
#[derive(Default)]
struct FairQueue {
    by_sender: HashMap<String, VecDeque<Publish>>,
    /// Senders with something waiting, in turn order.
    turns: VecDeque<String>,
    len: usize,
}

impl FairQueue {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, publish: Publish) {
        let queue = self.by_sender.entry(publish.topic.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(publish.topic.clone());
        }
        queue.push_back(publish);
        self.len += 1;
    }

    /// Moves up to `most` publishes into `batch`, one sender's turn at a time.
    fn take_batch(&mut self, most: usize, batch: &mut Vec<Publish>) {
        while batch.len() < most {
            let Some(sender) = self.turns.pop_front() else { break };
            let Some(queue) = self.by_sender.get_mut(&sender) else {
                continue;
            };
            if let Some(publish) = queue.pop_front() {
                batch.push(publish);
                self.len -= 1;
            }
            if queue.is_empty() {
                self.by_sender.remove(&sender);
            } else {
                self.turns.push_back(sender);
            }
        }
    }
}

/// Drives the consuming connection: (re)subscribes after every CONNACK, says so once the
/// subscription is granted, queues outbox publishes for the processor and acknowledges
/// each once queued; when the queue is full it waits, and so does rumqttd.
async fn consume(
    mut eventloop: EventLoop,
    client: AsyncClient,
    incoming: mpsc::Sender<Publish>,
    received: Arc<AtomicU64>,
    subscribed: watch::Sender<bool>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = client.try_subscribe(store::topics::OUTBOX_SHARED_FILTER, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "bridge cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
                {
                    tracing::info!("bridge subscribed to {}", store::topics::OUTBOX_SHARED_FILTER);
                    subscribed.send_replace(true);
                } else {
                    tracing::error!(codes = ?ack.return_codes, "the broker refused the bridge's subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let ack = publish.clone();
                if incoming.send(publish).await.is_err() {
                    return;
                }
                received.fetch_add(1, Ordering::Release);
                // try_ack: the eventloop that would drain a full request queue is this task.
                if let Err(e) = client.try_ack(&ack) {
                    tracing::error!(error = %e, "bridge cannot acknowledge a publish");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "bridge lost the broker; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, n: u8) -> Publish {
        Publish::new(topic, QoS::AtLeastOnce, vec![n])
    }

    #[test]
    fn a_flooding_sender_gets_its_turn_and_no_more() {
        let mut q = FairQueue::default();
        for n in 0..100 {
            q.push(publish("flood", n));
        }
        q.push(publish("alice", 0));
        q.push(publish("bob", 0));
        q.push(publish("alice", 1));
        let mut batch = Vec::new();
        q.take_batch(5, &mut batch);
        let taken: Vec<(&str, u8)> = batch.iter().map(|p| (p.topic.as_str(), p.payload[0])).collect();
        assert_eq!(
            taken,
            [("flood", 0), ("alice", 0), ("bob", 0), ("flood", 1), ("alice", 1)]
        );
        assert_eq!(q.len(), 98);
        batch.clear();
        q.take_batch(1000, &mut batch);
        // The rest, in order.
        assert!(batch.iter().map(|p| p.payload[0]).eq(2..100));
        assert!(q.is_empty());
    }
}
