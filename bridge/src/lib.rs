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
//! The broker's publish is acknowledged as soon as it is queued for a batch, not after the
//! commit. Holding that ack would buy nothing: rumqttd keeps nothing across a restart and
//! drops a clean session's unacknowledged publishes when it disconnects. It would cost a
//! lot: rumqttd sends at most 100 unacknowledged publishes to a connection (a constant in
//! its router), so batches could never exceed 100 and the bridge would idle while each one
//! commits. The queue is bounded, so a slow database still pushes back on the broker.

mod lifecycle;
mod process;
mod rules;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use process::Bridge;
use store::live::Live;
use store::Store;

/// How the bridge batches.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// Most messages stored in one transaction.
    pub max_batch: usize,
}

impl Default for BridgeSettings {
    fn default() -> Self {
        BridgeSettings { max_batch: 512 }
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

/// Runs a bridge until `shutdown` turns true.
pub async fn run(
    options: MqttOptions,
    store: Store,
    live: Arc<dyn Live>,
    push_wake: Arc<tokio::sync::Notify>,
    settings: BridgeSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut consumer_options = options.clone();
    consumer_options.set_manual_acks(true);
    consumer_options.set_clean_session(true);
    let (consumer, mut consumer_loop) = AsyncClient::new(consumer_options, 10_000);
    // Small acks on loopback: Nagle's algorithm would hold them back.
    consumer_loop.network_options.set_tcp_nodelay(true);

    let (incoming_tx, mut incoming) = mpsc::channel(settings.max_batch * 4);
    let consumer_task = tokio::spawn(consume(consumer_loop, consumer, incoming_tx));
    let mut bridge = Bridge::new(store, live, push_wake);
    let mut batch = Vec::with_capacity(settings.max_batch);
    loop {
        tokio::select! {
            n = incoming.recv_many(&mut batch, settings.max_batch) => {
                if n == 0 {
                    break;
                }
                let started = std::time::Instant::now();
                bridge.process(&batch).await;
                tracing::debug!(size = n, took_us = started.elapsed().as_micros() as u64, "batch");
                batch.clear();
            }
            _ = shutdown.changed() => break,
        }
    }
    consumer_task.abort();
    Ok(())
}

/// Drives the consuming connection: (re)subscribes after every CONNACK, queues outbox
/// publishes for the processor and acknowledges each once queued; when the queue is full
/// it waits, and so does rumqttd.
async fn consume(mut eventloop: EventLoop, client: AsyncClient, incoming: mpsc::Sender<Publish>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = client.try_subscribe(store::topics::OUTBOX_SHARED_FILTER, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "bridge cannot subscribe");
                }
                tracing::info!("bridge subscribed to {}", store::topics::OUTBOX_SHARED_FILTER);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let ack = publish.clone();
                if incoming.send(publish).await.is_err() {
                    return;
                }
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
