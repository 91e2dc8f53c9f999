//! One batch of outbox publishes, in three stages: [`Bridge::prepare`] parses and checks it
//! (the app's rules, rate limits, files, moderation); [`Committer::store`] stores its
//! messages together; [`Committer::answer`] answers and delivers them, then runs the ops
//! that had to wait for them. Consecutive batches overlap (see `crate::run`): while one is
//! answered the next is stored and the one after is checked, but stores follow one another
//! in batch order, and so do answers.

use std::collections::HashMap;
use std::sync::Arc;

use rumqttc::Publish;
use serde_json::json;

use crate::rules::{check_content, SendRates, TypingLimits};
use store::channels::ChannelKind;
use store::envelope::{
    frame_inbox, parse_client_op, unframe_outbox, Ack, ChatType, ClientOp, MsgType, OpError, RoomOp, Route, SendOp,
    SyncOp, Synced, TypingOp,
};
use store::files::{Attacher, FileLinks};
use store::lifecycle::Receipt;
use store::live::Live;
use store::messages::{NewMessage, Outcome, StoredMessage};
use store::tenants::AppSettings;
use store::Store;

/// Who sent an envelope: one device of one user of one app.
#[derive(Debug, Clone)]
pub struct Sender {
    pub org: String,
    pub app: String,
    pub app_id: String,
    pub user: String,
    pub device: String,
}

/// What a send becomes once admitted.
enum Admitted {
    /// A message to store in this batch.
    Store(Box<(PendingSend, NewMessage)>),
    /// A `cmd`: delivered, never stored.
    Relay(SendOp),
}

/// A send waiting for the batch commit.
pub(crate) struct PendingSend {
    pub(crate) from: Sender,
    pub(crate) cid: String,
}

/// A batch, checked: messages to store, and the ops that wait for them.
#[derive(Default)]
pub struct Prepared {
    /// Sends and ops refused while checking: answered when the batch commits (first), so they
    /// never overtake the answers to an earlier batch that is still being stored.
    refused: Vec<(Sender, OpError)>,
    sends: Vec<(PendingSend, NewMessage)>,
    /// Ops that run after the batch's messages are stored: a `sync` must see them, and a
    /// command or receipt must not overtake a message sent before it.
    later: Vec<(Sender, ClientOp)>,
}

impl Prepared {
    pub fn is_empty(&self) -> bool {
        self.refused.is_empty() && self.sends.is_empty() && self.later.is_empty()
    }
}

/// The first stage, and what only it changes: the app-id cache, send rates, typing limits
/// and moderation lanes.
pub struct Bridge {
    pub(crate) committer: Arc<Committer>,
    /// (org, app) -> app id. Apps are never deleted, so entries never go stale.
    apps: HashMap<(String, String), String>,
    rates: SendRates,
    typing: TypingLimits,
    /// Apps' pre-send moderation: sends of apps that moderate wait in their app's lane.
    pub(crate) moderation: crate::moderation::Moderation,
}

/// The second stage: storage and the live connections, shared with the commit in flight.
pub struct Committer {
    pub(crate) store: Store,
    live: Arc<dyn Live>,
    /// The URLs of this server's files.
    pub(crate) links: FileLinks,
}

impl Bridge {
    pub fn new(store: Store, live: Arc<dyn Live>, links: FileLinks, moderation_allow: hooks::guard::Allow) -> Bridge {
        Bridge {
            moderation: crate::moderation::Moderation::new(live.clone(), moderation_allow),
            committer: Arc::new(Committer { store, live, links }),
            apps: HashMap::new(),
            rates: SendRates::default(),
            typing: TypingLimits::default(),
        }
    }

    /// Parses and checks a batch, for the committer: what is refused, what is to be stored
    /// and the ops to run after (messages of apps that moderate go to their lane instead).
    pub async fn prepare(&mut self, batch: &[Publish]) -> Prepared {
        let c = self.committer.clone();
        let mut refused: Vec<(Sender, OpError)> = Vec::new();
        let mut sends: Vec<(PendingSend, NewMessage)> = Vec::new();
        let mut later: Vec<(Sender, ClientOp)> = Vec::new();
        // Settings are read once per app per batch, so a change applies from the next batch.
        let mut settings: HashMap<String, AppSettings> = HashMap::new();
        for publish in batch {
            let Some((from, json)) = self.sender_of(publish).await else {
                continue;
            };
            let json = match json {
                Ok(json) => json,
                Err(why) => {
                    refused.push((from, OpError::new(None, "bad_envelope", why)));
                    continue;
                }
            };
            let op = match parse_client_op(&json) {
                Ok(op) => op,
                Err(e) => {
                    tracing::debug!(user = %from.user, code = e.code, "refused an envelope");
                    metrics::counter!("chatd_messages_refused_total", "code" => e.code).increment(1);
                    refused.push((from, e));
                    continue;
                }
            };
            match op {
                ClientOp::Send(op) => {
                    if !settings.contains_key(&from.app_id) {
                        match c.store.app_settings(&from.app_id).await {
                            Ok(s) => settings.insert(from.app_id.clone(), s),
                            Err(e) => {
                                tracing::error!(error = %e, "reading app settings failed");
                                let e = OpError::new(
                                    Some(op.cid.clone()),
                                    "internal",
                                    "not stored; retry with the same cid",
                                );
                                refused.push((from, e));
                                continue;
                            }
                        };
                    }
                    let mut op = op;
                    let app_settings = &settings[&from.app_id];
                    let files = match c.attach_files(&from, &mut op, app_settings).await {
                        Ok(files) => files,
                        Err(e) => {
                            refused.push((from, e));
                            continue;
                        }
                    };
                    let policy = crate::moderation::Policy::of(app_settings);
                    match self.admit(&from, op, files, app_settings) {
                        Ok(Admitted::Store(pending)) => match policy {
                            // Its app checks it first, in the app's own lane.
                            Some(policy) => {
                                let (pending, message) = *pending;
                                self.moderation.submit(crate::moderation::Item {
                                    pending,
                                    message,
                                    policy,
                                });
                            }
                            None => sends.push(*pending),
                        },
                        // Commands are delivered, never stored; they wait for the batch like
                        // the rest, so they do not overtake messages sent before them.
                        Ok(Admitted::Relay(op)) => later.push((from, ClientOp::Send(op))),
                        Err(e) => refused.push((from, e)),
                    }
                }
                // Typing indicators past their limit are dropped here, where the limits live.
                ClientOp::Typing(op) if !self.typing.allow(&from.app_id, &from.user, &op.to) => {}
                other => later.push((from, other)),
            }
        }
        Prepared { refused, sends, later }
    }

    /// Applies the app's rules to a send and turns it into a message to store, or a command
    /// to relay.
    fn admit(
        &mut self,
        from: &Sender,
        mut op: SendOp,
        files: Vec<String>,
        settings: &AppSettings,
    ) -> Result<Admitted, OpError> {
        let text = check_content(settings, &mut op)?;
        if let Err(wait) = self.rates.take(&from.app_id, &from.user, settings) {
            return Err(OpError::new(
                Some(op.cid.clone()),
                "rate_limited",
                format!("sending too fast; retry in {} ms", wait.as_millis().max(1)),
            ));
        }
        if op.kind == MsgType::Cmd {
            return Ok(Admitted::Relay(op));
        }
        let message = NewMessage {
            app_id: from.app_id.clone(),
            chat: op.chat,
            sender: from.user.clone(),
            sender_device: from.device.clone(),
            to: op.to,
            cid: op.cid.clone(),
            kind: op.kind,
            body: text.body,
            ext: text.ext,
            require_contacts: settings.require_contacts,
            room_history: settings.room_history,
            as_app: false,
            files,
            destroy: op.destroy,
            sent_at: None,
        };
        Ok(Admitted::Store(Box::new((
            PendingSend {
                from: from.clone(),
                cid: op.cid,
            },
            message,
        ))))
    }

    /// Stores what an app's moderation approved (as a batch of its own).
    pub(crate) async fn store_moderated(&self, approved: Vec<(PendingSend, NewMessage)>) {
        let count = approved.len();
        let prepared = Prepared {
            sends: approved,
            ..Prepared::default()
        };
        self.committer.answer(self.committer.store(prepared).await).await;
        self.moderation.done(count);
    }

    /// Works out who published (topic and gate frame) and what.
    /// The payload is the device's JSON, or why the gate could not read its compact envelope.
    async fn sender_of(&mut self, publish: &Publish) -> Option<(Sender, Result<Vec<u8>, String>)> {
        let (org, app, user, _) = store::topics::parse_user_topic(&publish.topic)?;
        let Some((device, json)) = unframe_outbox(&publish.payload) else {
            tracing::error!(topic = %publish.topic, "outbox publish without the gate's frame; dropped");
            return None;
        };
        let key = (org.to_string(), app.to_string());
        let app_id = match self.apps.get(&key) {
            Some(id) => id.clone(),
            None => match self.committer.store.find_app(org, app).await {
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
        Some((sender, json.map(<[u8]>::to_vec).map_err(str::to_string)))
    }
}

/// A batch whose messages are stored (or refused by storage), waiting to be answered.
pub struct Stored {
    refused: Vec<(Sender, OpError)>,
    sends: Vec<(PendingSend, Result<Outcome, store::Error>)>,
    later: Vec<(Sender, ClientOp)>,
}

impl Stored {
    /// Whether answering it runs ops that may write (receipts, recalls, joins, ...): the
    /// next batch's store waits for those, so the two do not contend for SQLite's write lock.
    pub fn writes_later(&self) -> bool {
        !self.later.is_empty()
    }
}

impl Committer {
    /// Stores a prepared batch's messages; nothing is answered yet.
    pub async fn store(&self, prepared: Prepared) -> Stored {
        let Prepared { refused, sends, later } = prepared;
        let (pendings, news): (Vec<PendingSend>, Vec<NewMessage>) = sends.into_iter().unzip();
        let outcomes = if news.is_empty() {
            Vec::new()
        } else {
            self.store_sends(news.into()).await
        };
        Stored {
            refused,
            sends: pendings.into_iter().zip(outcomes).collect(),
            later,
        }
    }

    /// Answers a stored batch: the refusals, then acks and deliveries, then the ops that
    /// waited for its messages, in the order they came.
    pub async fn answer(&self, stored: Stored) {
        let Stored { refused, sends, later } = stored;
        for (from, error) in refused {
            self.reply(&from, &error);
        }
        self.deliver_all(sends).await;
        for (from, op) in later {
            match op {
                ClientOp::Sync(op) => self.sync(&from, op).await,
                ClientOp::Typing(op) => self.typing(&from, op).await,
                ClientOp::Join(op) => self.join(&from, op).await,
                ClientOp::Leave(op) => self.leave(&from, op).await,
                ClientOp::Read(op) => self.mark(&from, op, Receipt::Read).await,
                ClientOp::Delivered(op) => self.mark(&from, op, Receipt::Delivered).await,
                ClientOp::Change(op) => self.change(&from, op).await,
                ClientOp::Push(op) => self.push_settings(&from, op).await,
                ClientOp::Send(op) => self.relay_command(&from, op).await,
            }
        }
    }

    /// Stores messages in one batch; what became of each, in order.
    async fn store_sends(&self, news: Arc<[NewMessage]>) -> Vec<Result<Outcome, store::Error>> {
        let started = std::time::Instant::now();
        let stored = self.store.store_shared_batch(news.clone()).await;
        metrics::histogram!("chatd_bridge_commit_seconds").record(started.elapsed().as_secs_f64());
        match stored {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => {
                // One bad message must not sink the others: retry each on its own.
                tracing::warn!(error = %e, size = news.len(), "batch failed; storing one by one");
                let mut outcomes = Vec::with_capacity(news.len());
                for m in news.iter() {
                    outcomes.push(
                        self.store
                            .store_batch(std::slice::from_ref(m))
                            .await
                            .map(|mut o| o.remove(0)),
                    );
                }
                outcomes
            }
        }
    }

    /// Answers and delivers stored messages, in order. (The push worker was woken by the
    /// store, if the batch was recorded for it.)
    async fn deliver_all(&self, sends: Vec<(PendingSend, Result<Outcome, store::Error>)>) {
        for (pending, outcome) in sends {
            self.deliver(&pending, outcome).await;
        }
    }

    /// Checks the files a file message points at, and completes its body from their records
    /// (see `Store::attach_files`); answers the chatfiles it refers to.
    pub(crate) async fn attach_files(
        &self,
        from: &Sender,
        op: &mut SendOp,
        settings: &AppSettings,
    ) -> Result<Vec<String>, OpError> {
        self.store
            .attach_files(
                &self.links,
                (&from.org, &from.app, &from.app_id),
                Attacher::User(&from.user),
                op.kind,
                &mut op.body,
                settings.allow_external_urls,
            )
            .await
            .map_err(|why| OpError::new(Some(op.cid.clone()), "invalid", why))
    }

    /// Answers and delivers one message of the batch.
    async fn deliver(&self, pending: &PendingSend, outcome: Result<Outcome, store::Error>) {
        let from = &pending.from;
        // `deliveries`: the inbox positions to deliver at; none for a duplicate, which was
        // delivered when it was first stored (only its ack is repeated).
        let (msg, own_useq, deliveries) = match outcome {
            Ok(Outcome::Stored { msg, useqs }) => {
                metrics::counter!("chatd_messages_stored_total", "chat" => chat_label(&msg.chat), "type" => type_label(&msg.kind))
                    .increment(1);
                let own = useqs.iter().find(|(u, _)| *u == from.user).map(|(_, s)| *s);
                (msg, own, Some(useqs))
            }
            Ok(Outcome::Duplicate { msg, sender_useq }) => (msg, sender_useq, None),
            Ok(Outcome::Refused { code, message }) => {
                metrics::counter!("chatd_messages_refused_total", "code" => code).increment(1);
                self.reply(from, &OpError::new(Some(pending.cid.clone()), code, message));
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, user = %from.user, "storing a message failed");
                let e = OpError::new(
                    Some(pending.cid.clone()),
                    "internal",
                    "the message was not stored; retry with the same cid",
                );
                self.reply(from, &e);
                return;
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
        self.reply(from, &ack);
        let Some(useqs) = deliveries else { return };
        if msg.chat == "room" {
            self.deliver_to_room(from, &msg);
            return;
        }
        for (user, useq) in useqs {
            let route = if user == from.user {
                Route::Except(&from.device)
            } else {
                Route::All
            };
            let copy = msg.delivered_json(&user, Some(useq));
            self.publish_inbox(from, &user, route, copy);
        }
    }

    /// Chatrooms are delivered by the broker to whoever is subscribed (the gate lets only
    /// members subscribe); the sender's own devices get it there too.
    pub(crate) fn deliver_to_room(&self, from: &Sender, msg: &StoredMessage) {
        let payload = msg.delivered_json("", None);
        self.live.deliver_room(&from.org, &from.app, &msg.recipient, payload);
    }

    async fn sync(&self, from: &Sender, op: SyncOp) {
        let result = self
            .store
            .inbox_after(&from.app_id, &from.user, op.after, op.limit)
            .await;
        match result {
            Ok((msgs, more)) => {
                metrics::counter!("chatd_sync_pages_total").increment(1);
                let reply = Synced {
                    op: "synced".into(),
                    cid: op.cid,
                    after: op.after,
                    last: msgs.last().and_then(|m| m.useq).unwrap_or(op.after),
                    more,
                    msgs,
                };
                self.reply(from, &reply)
            }
            Err(e) => {
                tracing::error!(error = %e, "sync failed");
                self.reply(from, &OpError::new(op.cid, "internal", "sync failed; retry"))
            }
        }
    }

    /// Relays a typing indicator, at most one per conversation every two seconds, never to
    /// someone who blocked the sender or outside a group the sender is a member of.
    async fn typing(&self, from: &Sender, op: TypingOp) {
        let event = json!({"op": "typing", "chat": op.chat.as_str(), "from": from.user, "to": op.to});
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        let recipients = match op.chat {
            ChatType::User => match self.store.has_blocked(&from.app_id, &op.to, &from.user).await {
                Ok(false) => vec![op.to.clone()],
                _ => return,
            },
            ChatType::Group | ChatType::Room => {
                match self
                    .store
                    .check_sender(&from.app_id, ChannelKind::Group, &op.to, &from.user)
                    .await
                {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
                match self.store.members(&from.app_id, ChannelKind::Group, &op.to).await {
                    Ok(members) => members
                        .into_iter()
                        .map(|m| m.username)
                        .filter(|u| *u != from.user)
                        .collect(),
                    Err(_) => return,
                }
            }
        };
        for user in recipients {
            self.publish_inbox(from, &user, Route::All, payload.clone());
        }
    }

    async fn join(&self, from: &Sender, op: RoomOp) {
        let result = self
            .store
            .add_members(
                &from.app_id,
                ChannelKind::Room,
                &op.room,
                std::slice::from_ref(&from.user),
            )
            .await;
        match result {
            Ok(_) => self.reply(from, &json!({"op": "joined", "cid": op.cid, "room": op.room})),
            Err(e) => self.reply(from, &store_refusal(op.cid, e)),
        }
    }

    async fn leave(&self, from: &Sender, op: RoomOp) {
        match self
            .store
            .remove_member(&from.app_id, ChannelKind::Room, &op.room, &from.user)
            .await
        {
            Ok(()) => {
                self.live.leave_room(&from.org, &from.app, &from.user, &op.room);
                self.reply(from, &json!({"op": "left", "cid": op.cid, "room": op.room}))
            }
            Err(e) => self.reply(from, &store_refusal(op.cid, e)),
        }
    }

    /// Answers the device that sent an envelope, and only that device.
    pub(crate) fn reply(&self, to: &Sender, body: &impl serde::Serialize) {
        reply(self.live.as_ref(), to, body);
    }

    /// Hands a publish on a user's inbox topic to their connected devices (in-process: the
    /// gate's switchboard), for the route given.
    pub(crate) fn publish_inbox(&self, tenant: &Sender, user: &str, route: Route<'_>, json: Vec<u8>) {
        self.live
            .deliver_inbox(&tenant.org, &tenant.app, user, frame_inbox(route, &json));
    }
}

/// Answers the device an envelope came from (an `ack`, an `error`), on its inbox only.
pub(crate) fn reply(live: &dyn Live, to: &Sender, body: &impl serde::Serialize) {
    let json = serde_json::to_vec(body).unwrap_or_default();
    live.deliver_inbox(&to.org, &to.app, &to.user, frame_inbox(Route::Only(&to.device), &json));
}

/// A message's chat as a metrics label: one of a fixed few, whatever is stored.
fn chat_label(chat: &str) -> &'static str {
    match chat {
        "user" => "user",
        "group" => "group",
        "room" => "room",
        _ => "other",
    }
}

/// A message's type as a metrics label (bounded: the types topics.md names).
fn type_label(kind: &str) -> &'static str {
    match kind {
        "txt" => "txt",
        "img" => "img",
        "audio" => "audio",
        "video" => "video",
        "file" => "file",
        "loc" => "loc",
        "cmd" => "cmd",
        "custom" => "custom",
        _ => "other",
    }
}

/// A storage refusal as an error op.
pub(crate) fn store_refusal(cid: Option<String>, e: store::Error) -> OpError {
    match e {
        store::Error::NotFound(what) => OpError::new(cid, "not_found", format!("{what} not found")),
        store::Error::Forbidden(why) => OpError::new(cid, "forbidden", why),
        store::Error::Invalid { .. } => OpError::new(cid, "invalid", e.to_string()),
        store::Error::TooLate(why) => OpError::new(cid, "too_late", why),
        other => {
            tracing::error!(error = %other, "room operation failed");
            OpError::new(cid, "internal", "failed; retry")
        }
    }
}
