//! The bridge: consumes every device's outbox through a shared subscription, validates each
//! envelope, stores messages in batches (one transaction, one fsync, per batch: group
//! commit), and then delivers: `ack` to the sending device, `msg` to every device of the
//! recipient and to the sender's other devices, `error` when something is refused.
//!
//! It is an ordinary MQTT client of the broker, so several bridges (in this process or in
//! others) can share the work: rumqttd hands each outbox publish to one of them.
//!
//! Ordering of the steps is what makes the promises hold:
//! 1. the batch is committed before any `ack` or `msg` leaves, so an ack means stored;
//! 2. the broker's publish is acknowledged only after that, so a bridge that dies
//!    mid-batch leaves the publishes unacked rather than lost (and the device, having no
//!    `ack`, retries with the same `cid`, which is stored once).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use store::envelope::{
    frame_inbox, parse_client_op, unframe_outbox, Ack, ChatType, ClientOp, OpError, Route, SendOp, Synced,
};
use store::messages::{NewMessage, Outcome};
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

/// Where an answer goes: one device of one user.
#[derive(Debug, Clone)]
struct Sender {
    org: String,
    app: String,
    app_id: String,
    user: String,
    device: String,
}

/// A send waiting for the batch commit.
struct PendingSend {
    from: Sender,
    cid: String,
}

/// Runs a bridge until `shutdown` turns true.
///
/// The bridge holds two connections to the broker: one consumes outboxes (and sends only
/// acks), one publishes deliveries. On a single connection, acks for consumed messages
/// queue behind deliveries waiting for the broker's acks, and under a burst both sides
/// wait for each other.
pub async fn run(
    options: MqttOptions,
    store: Store,
    settings: BridgeSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut consumer_options = options.clone();
    consumer_options.set_client_id(format!("{}-in", options.client_id()));
    consumer_options.set_manual_acks(true);
    consumer_options.set_clean_session(true);
    let (consumer, consumer_loop) = AsyncClient::new(consumer_options, 10_000);
    let mut producer_options = options.clone();
    producer_options.set_client_id(format!("{}-out", options.client_id()));
    producer_options.set_inflight(1000);
    let (producer, producer_loop) = AsyncClient::new(producer_options, 10_000);

    let (incoming_tx, mut incoming) = mpsc::unbounded_channel();
    let consumer_task = tokio::spawn(poll(consumer_loop, Some(consumer.clone()), incoming_tx.clone()));
    let producer_task = tokio::spawn(poll(producer_loop, None, incoming_tx));
    let mut bridge = Bridge {
        client: producer,
        store,
        apps: HashMap::new(),
    };
    let mut batch = Vec::with_capacity(settings.max_batch);
    loop {
        tokio::select! {
            n = incoming.recv_many(&mut batch, settings.max_batch) => {
                if n == 0 {
                    break;
                }
                bridge.process(&batch).await;
                for publish in batch.drain(..) {
                    consumer.ack(&publish).await?;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    consumer_task.abort();
    producer_task.abort();
    Ok(())
}

/// Drives one MQTT connection. The consumer's (`subscriber` set) (re)subscribes after
/// every CONNACK and passes outbox publishes on; it never blocks on the processor (the
/// channel is unbounded; rumqttd's inflight limit bounds it, since nothing is acked before
/// it is processed).
async fn poll(mut eventloop: EventLoop, subscriber: Option<AsyncClient>, incoming: mpsc::UnboundedSender<Publish>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(client) = &subscriber {
                    if let Err(e) = client.try_subscribe(store::topics::OUTBOX_SHARED_FILTER, QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "bridge cannot subscribe");
                    }
                    tracing::info!("bridge subscribed to {}", store::topics::OUTBOX_SHARED_FILTER);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if incoming.send(publish).is_err() {
                    return;
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

struct Bridge {
    client: AsyncClient,
    store: Store,
    /// (org, app) -> app id. Apps are never deleted, so entries never go stale.
    apps: HashMap<(String, String), String>,
}

impl Bridge {
    async fn process(&mut self, batch: &[Publish]) {
        let mut sends: Vec<(PendingSend, NewMessage)> = Vec::new();
        let mut syncs = Vec::new();
        for publish in batch {
            let Some((from, json)) = self.sender_of(publish).await else {
                continue;
            };
            match parse_client_op(&json) {
                Ok(ClientOp::Send(op)) => match new_message(&from, op) {
                    Ok(pending) => sends.push(pending),
                    Err(e) => self.reply(&from, Route::Only(&from.device), &e).await,
                },
                Ok(ClientOp::Sync(op)) => syncs.push((from, op)),
                Err(e) => {
                    tracing::debug!(user = %from.user, code = e.code, "refused an envelope");
                    self.reply(&from, Route::Only(&from.device), &e).await;
                }
            }
        }
        if !sends.is_empty() {
            let news: Vec<NewMessage> = sends.iter().map(|(_, m)| m.clone()).collect();
            let outcomes = match self.store.store_batch(&news).await {
                Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                Err(e) => {
                    // One bad message must not sink the others: retry each on its own.
                    tracing::warn!(error = %e, size = news.len(), "batch failed; storing one by one");
                    let mut outcomes = Vec::with_capacity(news.len());
                    for m in &news {
                        outcomes.push(
                            self.store
                                .store_batch(std::slice::from_ref(m))
                                .await
                                .map(|mut o| o.remove(0)),
                        );
                    }
                    outcomes
                }
            };
            for ((pending, _), outcome) in sends.iter().zip(outcomes) {
                self.deliver(pending, outcome).await;
            }
        }
        for (from, op) in syncs {
            let reply = match self
                .store
                .inbox_after(&from.app_id, &from.user, op.after, op.limit)
                .await
            {
                Ok((msgs, more)) => serde_json::to_vec(&Synced {
                    op: "synced".into(),
                    cid: op.cid,
                    after: op.after,
                    last: msgs.last().and_then(|m| m.useq).unwrap_or(op.after),
                    more,
                    msgs,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "sync failed");
                    serde_json::to_vec(&OpError::new(op.cid, "internal", "sync failed; retry"))
                }
            };
            self.publish(&from, &from.user, Route::Only(&from.device), reply.unwrap_or_default())
                .await;
        }
    }

    /// Works out who published (topic and gate frame) and what.
    async fn sender_of(&mut self, publish: &Publish) -> Option<(Sender, Vec<u8>)> {
        let (org, app, user, _) = store::topics::parse_user_topic(&publish.topic)?;
        let Some((device, json)) = unframe_outbox(&publish.payload) else {
            tracing::error!(topic = %publish.topic, "outbox publish without the gate's frame; dropped");
            return None;
        };
        let key = (org.to_string(), app.to_string());
        let app_id = match self.apps.get(&key) {
            Some(id) => id.clone(),
            None => match self.store.find_app(org, app).await {
                Ok(found) => {
                    self.apps.insert(key, found.id.clone());
                    found.id
                }
                Err(e) => {
                    tracing::error!(error = %e, %org, %app, "outbox publish for an unknown app; dropped");
                    return None;
                }
            },
        };
        let sender = Sender {
            org: org.into(),
            app: app.into(),
            app_id,
            user: user.into(),
            device: device.into(),
        };
        Some((sender, json.to_vec()))
    }

    async fn deliver(&self, pending: &PendingSend, outcome: Result<Outcome, store::Error>) {
        let from = &pending.from;
        // `deliveries`: the inbox positions to deliver at; none for a duplicate, which was
        // delivered when it was first stored (only its ack is repeated).
        let (msg, own_useq, deliveries) = match outcome {
            Ok(Outcome::Stored {
                msg,
                recipient_useq,
                sender_useq,
            }) => {
                let own = if msg.recipient == msg.sender {
                    Some(recipient_useq)
                } else {
                    sender_useq
                };
                (msg, own, Some((recipient_useq, sender_useq)))
            }
            Ok(Outcome::Duplicate { msg, sender_useq }) => (msg, sender_useq, None),
            Ok(Outcome::Refused { code, message }) => {
                let e = OpError::new(Some(pending.cid.clone()), code, message);
                return self.reply(from, Route::Only(&from.device), &e).await;
            }
            Err(e) => {
                tracing::error!(error = %e, user = %from.user, "storing a message failed");
                let e = OpError::new(
                    Some(pending.cid.clone()),
                    "internal",
                    "the message was not stored; retry with the same cid",
                );
                return self.reply(from, Route::Only(&from.device), &e).await;
            }
        };
        let ack = Ack {
            op: "ack".into(),
            cid: pending.cid.clone(),
            id: msg.id.clone(),
            conv: msg.conv.clone(),
            seq: msg.seq,
            ts: msg.ts,
            useq: own_useq,
        };
        self.reply(from, Route::Only(&from.device), &ack).await;
        let Some((recipient_useq, sender_useq)) = deliveries else {
            return;
        };
        let to_recipient = serde_json::to_vec(&msg.delivered(&msg.recipient, Some(recipient_useq))).unwrap_or_default();
        if msg.recipient == msg.sender {
            self.publish(from, &msg.recipient, Route::Except(&from.device), to_recipient)
                .await;
        } else {
            self.publish(from, &msg.recipient, Route::All, to_recipient).await;
            if let Some(useq) = sender_useq {
                let echo = serde_json::to_vec(&msg.delivered(&msg.sender, Some(useq))).unwrap_or_default();
                self.publish(from, &msg.sender, Route::Except(&from.device), echo).await;
            }
        }
    }

    async fn reply(&self, to: &Sender, route: Route<'_>, body: &impl serde::Serialize) {
        let json = serde_json::to_vec(body).unwrap_or_default();
        self.publish(to, &to.user, route, json).await;
    }

    async fn publish(&self, tenant: &Sender, user: &str, route: Route<'_>, json: Vec<u8>) {
        let topic = store::topics::inbox(&tenant.org, &tenant.app, user);
        let payload = Bytes::from(frame_inbox(route, &json));
        if let Err(e) = self.client.publish_bytes(topic, QoS::AtLeastOnce, false, payload).await {
            tracing::error!(error = %e, "bridge cannot publish");
        }
    }
}

fn new_message(from: &Sender, op: SendOp) -> Result<(PendingSend, NewMessage), OpError> {
    match op.chat {
        ChatType::User => {}
    }
    let message = NewMessage {
        app_id: from.app_id.clone(),
        sender: from.user.clone(),
        sender_device: from.device.clone(),
        recipient: op.to,
        cid: op.cid.clone(),
        kind: op.kind,
        body: op.body.to_string(),
        ext: op.ext.map(|e| e.to_string()),
    };
    Ok((
        PendingSend {
            from: from.clone(),
            cid: op.cid,
        },
        message,
    ))
}
