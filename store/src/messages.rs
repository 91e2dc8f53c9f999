//! Messages: stored once per conversation with a gap-free `seq`, and indexed once per
//! participant in their *inbox* with a gap-free per-user `useq`.
//!
//! The inbox is what makes catching up exact: a device remembers the highest `useq` it has
//! processed and asks for everything after it (`sync`), getting each message once and in
//! order whatever it missed while offline, regardless of what the broker kept.
//!
//! Writes come in batches ([`Store::store_batch`]): one transaction, so one fsync, for many
//! messages (group commit), by one of two roads that apply the same rules: the SQLite writer
//! thread (`sqlite_writer`) and the pool's transaction (`pool_writer`). This module holds
//! what both share (the types, the rules, the push record) and the reads.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use crate::envelope::{ChatType, Delivered, Destroy, DestroyFrom, MsgType};
use crate::error::Result;
use crate::Store;

/// A message a bridge has validated and wants stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub app_id: String,
    pub chat: ChatType,
    pub sender: String,
    pub sender_device: String,
    /// The recipient's username, or the group's or chatroom's id.
    pub to: String,
    pub cid: String,
    pub kind: MsgType,
    /// The body, as JSON text.
    pub body: String,
    /// App-defined extension fields, as JSON text.
    pub ext: Option<String>,
    /// The app's rules that storage enforces.
    pub require_contacts: bool,
    pub room_history: i64,
    /// Sent by the app's backend: blocks, contacts and membership do not apply.
    pub as_app: bool,
    /// The chatfiles the body refers to (checked by the caller: they exist in this app and
    /// the sender may use them); stored as references that keep the files alive.
    pub files: Vec<String>,
    /// A self-destructing message's timer.
    pub destroy: Option<Destroy>,
    /// When it was sent, for a message imported from elsewhere (ms); `None`: now.
    pub sent_at: Option<i64>,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: String,
    pub conv: String,
    pub seq: i64,
    pub ts: i64,
    pub chat: String,
    pub sender: String,
    pub sender_device: String,
    pub recipient: String,
    pub cid: String,
    pub kind: String,
    pub body: String,
    pub ext: Option<String>,
    /// Recalled by its sender or the app: the content is gone.
    pub recalled: bool,
    /// When it was last edited (ms), 0 if never.
    pub edited_at: i64,
    /// A self-destructing message's timer.
    pub destroy: Option<Destroy>,
    /// Self-destructed: the content is gone.
    pub destroyed: bool,
}

/// What happened to one message of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Newly stored, with the inbox position it took for each user it belongs to (the
    /// recipient and the sender, or every member of a group; none for a chatroom).
    Stored {
        msg: StoredMessage,
        useqs: Vec<(String, i64)>,
    },
    /// The sender already sent this `cid`: the message stored then, and its place in the
    /// sender's inbox.
    Duplicate {
        msg: StoredMessage,
        sender_useq: Option<i64>,
    },
    /// Not stored, for a reason the sender is told.
    Refused { code: &'static str, message: String },
}

/// The conversation id of a one-to-one chat: the same for both directions.
pub fn user_conv(a: &str, b: &str) -> String {
    if a <= b {
        format!("u:{a}:{b}")
    } else {
        format!("u:{b}:{a}")
    }
}

/// Why a one-to-one message is refused before its sender's contacts are looked at, if it
/// is: its recipient does not exist, its sender is muted for one-to-one messages (until
/// `muted_until`), or the recipient blocks the sender.
/// The order is the order of precedence; messages sent by the app pass all but the first.
pub(crate) fn refusal(
    m: &NewMessage,
    recipient_exists: bool,
    muted_until: Option<i64>,
    blocks: bool,
) -> Option<(&'static str, String)> {
    if !recipient_exists {
        Some(("unknown_recipient", format!("no user '{}' in this app", m.to)))
    } else if !m.as_app && muted_until.is_some_and(|until| until > crate::now_ms()) {
        Some(("muted", "you are muted in this app for one-to-one messages".to_string()))
    } else if !m.as_app && blocks {
        Some(("blocked", format!("{} does not accept your messages", m.to)))
    } else {
        None
    }
}

/// Whether a one-to-one message may only go to a contact of its sender (see [`not_contact`]).
pub(crate) fn needs_contact_check(m: &NewMessage) -> bool {
    !m.as_app && m.require_contacts && m.to != m.sender
}

/// The refusal of a message to someone who is not the sender's contact.
pub(crate) fn not_contact(m: &NewMessage) -> (&'static str, String) {
    (
        "not_contact",
        format!(
            "{} is not your contact; this app allows messages between contacts only",
            m.to
        ),
    )
}

/// A message as it will be stored in conversation `conv`: a new id, and its time; `seq` is
/// set when the conversation's counter moves.
pub(crate) fn accepted_message(m: &NewMessage, conv: String) -> StoredMessage {
    StoredMessage {
        id: uuid::Uuid::now_v7().to_string(),
        conv,
        seq: 0,
        ts: m.sent_at.unwrap_or_else(crate::now_ms),
        chat: m.chat.as_str().into(),
        sender: m.sender.clone(),
        sender_device: m.sender_device.clone(),
        recipient: m.to.clone(),
        cid: m.cid.clone(),
        kind: m.kind.as_str().into(),
        body: m.body.clone(),
        ext: m.ext.clone(),
        recalled: false,
        edited_at: 0,
        destroy: m.destroy,
        destroyed: false,
    }
}

/// A self-destruct timer from its stored columns.
pub(crate) fn destroy_of(after: i64, from: &str) -> Option<Destroy> {
    match from {
        _ if after <= 0 => None,
        "read" => Some(Destroy {
            after,
            from: DestroyFrom::Read,
        }),
        _ => Some(Destroy {
            after,
            from: DestroyFrom::Sent,
        }),
    }
}

/// When a self-destructing message sent at `ts` goes (ms); 0 for one that waits to be read.
pub(crate) fn destroy_at(destroy: Destroy, ts: i64) -> i64 {
    match destroy.from {
        DestroyFrom::Sent => ts + destroy.after * 1000,
        DestroyFrom::Read => 0,
    }
}

/// Notes a batch's messages of one app for the push planner: `$1` the record's id, `$2` its
/// messages (a JSON array of ids), `$3` when (ms), `$4` the app. Only if the app has a push
/// device bound or a webhook: otherwise the planner would find nothing to do, and its claim
/// and delete of the record are two more commits per batch (on SQLite, each also empties the
/// writer thread's page cache). Checked in the batch's own transaction, so the answer is never
/// stale, on any node: a device bound after the batch is stored pushes the messages stored
/// after it. SQLite numbers `$n` parameters in the order they first appear, so the writer
/// thread binds the same text by position.
pub(crate) const INSERT_PUSH_RECORD: &str = "INSERT INTO push_pending (id, messages, locked_until, created_at)
     SELECT $1, $2, 0, $3
     WHERE EXISTS (SELECT 1 FROM push_devices WHERE app_id = $4) OR EXISTS (SELECT 1 FROM webhooks WHERE app_id = $4)";

/// One app's part of a batch, for the push planner ([`INSERT_PUSH_RECORD`]).
pub(crate) struct PushRecord<'a> {
    pub(crate) app_id: &'a str,
    pub(crate) id: String,
    /// The ids of the app's newly stored messages, as a JSON array.
    pub(crate) messages: String,
    pub(crate) at: i64,
}

/// A batch's rows for the push planner, one per app (a batch may hold several apps'
/// messages): the ids of its newly stored one-to-one and group messages. Imported messages
/// (sent elsewhere, long ago) are not pushed.
pub(crate) fn push_records<'a>(batch: &'a [NewMessage], outcomes: &[Outcome]) -> Vec<PushRecord<'a>> {
    let mut by_app: Vec<(&str, Vec<&str>)> = Vec::new();
    for (m, o) in batch.iter().zip(outcomes) {
        let Outcome::Stored { msg, .. } = o else { continue };
        if msg.chat == "room" || m.sent_at.is_some() {
            continue;
        }
        match by_app.iter_mut().find(|(app, _)| *app == m.app_id) {
            Some((_, ids)) => ids.push(msg.id.as_str()),
            None => by_app.push((m.app_id.as_str(), vec![msg.id.as_str()])),
        }
    }
    let at = crate::now_ms();
    by_app
        .into_iter()
        .map(|(app_id, ids)| PushRecord {
            app_id,
            id: uuid::Uuid::now_v7().to_string(),
            messages: serde_json::to_string(&ids).unwrap_or_default(),
            at,
        })
        .collect()
}

pub(crate) const MSG_COLUMNS: &str =
    "m.id, m.conv, m.seq, m.ts, m.chat, m.sender, m.sender_device, m.recipient, m.cid, \
     m.msg_type, m.body, m.ext, m.recalled, m.edited_at, m.destroy_after, m.destroy_from, m.destroyed";

pub(crate) fn message_from_row(row: &AnyRow) -> Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.try_get("id")?,
        conv: row.try_get("conv")?,
        seq: row.try_get("seq")?,
        ts: row.try_get("ts")?,
        chat: row.try_get("chat")?,
        sender: row.try_get("sender")?,
        sender_device: row.try_get("sender_device")?,
        recipient: row.try_get("recipient")?,
        cid: row.try_get("cid")?,
        kind: row.try_get("msg_type")?,
        body: row.try_get("body")?,
        ext: row.try_get("ext")?,
        recalled: row.try_get::<i64, _>("recalled")? != 0,
        edited_at: row.try_get("edited_at")?,
        destroy: destroy_from_row(row)?,
        destroyed: row.try_get::<i64, _>("destroyed")? != 0,
    })
}

fn destroy_from_row(row: &AnyRow) -> Result<Option<Destroy>> {
    let after: i64 = row.try_get("destroy_after")?;
    let from: String = row.try_get("destroy_from")?;
    Ok(destroy_of(after, &from))
}

impl StoredMessage {
    /// The message as `viewer` receives it; the sender's own copies carry the `cid` and
    /// sending device so their other devices can match them up.
    pub fn delivered(&self, viewer: &str, useq: Option<i64>) -> Delivered {
        let own = viewer == self.sender;
        Delivered {
            op: "msg".into(),
            id: self.id.clone(),
            conv: self.conv.clone(),
            seq: self.seq,
            useq,
            ts: self.ts,
            chat: self.chat.clone(),
            from: self.sender.clone(),
            from_device: own.then(|| self.sender_device.clone()),
            to: self.recipient.clone(),
            cid: own.then(|| self.cid.clone()),
            kind: self.kind.clone(),
            body: if self.recalled || self.destroyed {
                Value::Null
            } else {
                serde_json::from_str(&self.body).unwrap_or(Value::Null)
            },
            ext: self.ext.as_deref().and_then(|e| serde_json::from_str(e).ok()),
            recalled: self.recalled,
            edited: (self.edited_at > 0).then_some(self.edited_at),
            hidden: false,
            reactions: Vec::new(),
            destroy: self.destroy,
            destroyed: self.destroyed,
        }
    }

    /// [`StoredMessage::delivered`] as JSON, for the live path (the copies each recipient's
    /// devices get as a batch is answered): the body and `ext`, stored as JSON text, are
    /// checked and copied as they are rather than parsed into a tree and written out again
    /// for every recipient. The same bytes, since every road that stores a body writes it as
    /// `serde_json::Value` does (keys sorted, no spaces).
    pub fn delivered_json(&self, viewer: &str, useq: Option<i64>) -> Vec<u8> {
        let own = viewer == self.sender;
        let gone = self.recalled || self.destroyed;
        let view = DeliveredView {
            op: "msg",
            id: &self.id,
            conv: &self.conv,
            seq: self.seq,
            useq,
            ts: self.ts,
            chat: &self.chat,
            from: &self.sender,
            from_device: own.then_some(self.sender_device.as_str()),
            to: &self.recipient,
            cid: own.then_some(self.cid.as_str()),
            kind: &self.kind,
            body: if gone {
                None
            } else {
                serde_json::from_str(&self.body).ok()
            },
            ext: self.ext.as_deref().and_then(|e| serde_json::from_str(e).ok()),
            recalled: self.recalled,
            edited: (self.edited_at > 0).then_some(self.edited_at),
            destroy: self.destroy,
            destroyed: self.destroyed,
        };
        serde_json::to_vec(&view).unwrap_or_default()
    }
}

/// [`Delivered`], borrowed, with its fields in the same order (`hidden` and `reactions` are
/// never set on the live path, and skipped when unset).
#[derive(serde::Serialize)]
struct DeliveredView<'a> {
    op: &'static str,
    id: &'a str,
    conv: &'a str,
    seq: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    useq: Option<i64>,
    ts: i64,
    chat: &'a str,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_device: Option<&'a str>,
    to: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a str,
    /// `None` is written as `null`: recalled, destroyed, or not JSON.
    body: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ext: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    recalled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destroy: Option<Destroy>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    destroyed: bool,
}

impl Store {
    /// Stores a batch of messages in one transaction and says what became of each.
    /// An `Err` means nothing of the batch was stored.
    ///
    /// On SQLite a batch of one-to-one messages only goes to the writer thread
    /// (`sqlite_writer`); every other batch takes the pool's road (`pool_writer`). Both keep
    /// order: seqs and inbox positions follow the batch's order.
    pub async fn store_batch(&self, batch: &[NewMessage]) -> Result<Vec<Outcome>> {
        self.store_batch_with(batch, || batch.into()).await
    }

    /// [`Store::store_batch`] for a batch the caller hands over shared, so that the writer
    /// thread can hold it without a copy of every message (the bridge's road).
    pub async fn store_shared_batch(&self, batch: std::sync::Arc<[NewMessage]>) -> Result<Vec<Outcome>> {
        self.store_batch_with(&batch, || batch.clone()).await
    }

    /// Stores `batch` by its road; `shared` gives the batch for the writer thread to hold,
    /// asked for only when it takes the batch (the pool's road borrows it as it is).
    async fn store_batch_with(
        &self,
        batch: &[NewMessage],
        shared: impl FnOnce() -> std::sync::Arc<[NewMessage]>,
    ) -> Result<Vec<Outcome>> {
        let (outcomes, recorded) = match &self.sqlite_writer {
            Some(writer) if crate::sqlite_writer::takes(batch) => {
                let batch = shared();
                writer
                    .run(move |conn| crate::sqlite_writer::store_one_to_one(conn, &batch))
                    .await??
            }
            _ => self.store_batch_in_tx(batch).await?,
        };
        // Committed: the push worker may plan what was recorded for it.
        if recorded {
            self.push_recorded.notify_one();
        }
        Ok(outcomes)
    }

    /// A conversation's messages with `from_seq <= seq <= to_seq`, in seq order, at most
    /// `limit`, without those `viewer` deleted for themselves.
    pub async fn history(
        &self,
        app_id: &str,
        conv: &str,
        viewer: &str,
        from_seq: i64,
        to_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>> {
        let rows = sqlx::query(&format!(
            "SELECT {MSG_COLUMNS} FROM messages m
             WHERE m.app_id = $1 AND m.conv = $2 AND m.seq >= $3 AND m.seq <= $4
             AND NOT EXISTS (SELECT 1 FROM hidden_messages h WHERE h.app_id = m.app_id AND h.username = $6 AND h.message_id = m.id)
             ORDER BY m.seq LIMIT $5"
        ))
        .bind(app_id)
        .bind(conv)
        .bind(from_seq)
        .bind(to_seq)
        .bind(limit)
        .bind(viewer)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_from_row).collect()
    }

    /// The last `seq` of a conversation (0 when it has none).
    pub async fn conversation_head(&self, app_id: &str, conv: &str) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE app_id = $1 AND conv = $2")
            .bind(app_id)
            .bind(conv)
            .fetch_optional(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Up to `limit` entries of a user's inbox after `useq` `after`, in order, and whether
    /// more follow. A message the user deleted for themselves keeps its place, marked
    /// `hidden` and without content, so the positions stay gap-free.
    pub async fn inbox_after(
        &self,
        app_id: &str,
        user: &str,
        after: i64,
        limit: i64,
    ) -> Result<(Vec<Delivered>, bool)> {
        let rows = sqlx::query(&format!(
            "SELECT i.useq, {MSG_COLUMNS},
             (SELECT COUNT(*) FROM hidden_messages h WHERE h.app_id = i.app_id AND h.username = i.username AND h.message_id = m.id) AS hidden
             FROM inbox i JOIN messages m ON m.id = i.message_id
             WHERE i.app_id = $1 AND i.username = $2 AND i.useq > $3
             ORDER BY i.useq LIMIT $4"
        ))
        .bind(app_id)
        .bind(user)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as i64 > limit;
        let mut msgs = rows
            .iter()
            .take(limit as usize)
            .map(|row| {
                let mut m = message_from_row(row)?.delivered(user, Some(row.try_get("useq")?));
                if row.try_get::<i64, _>("hidden")? > 0 {
                    m.hidden = true;
                    m.body = Value::Null;
                    m.ext = None;
                }
                Ok(m)
            })
            .collect::<Result<Vec<_>>>()?;
        self.attach_reactions(&mut msgs).await?;
        Ok((msgs, more))
    }

    /// The highest `useq` of a user's inbox.
    pub async fn inbox_head(&self, app_id: &str, user: &str) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT inbox_seq FROM users WHERE app_id = $1 AND username = $2")
            .bind(app_id)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    /// A chatroom's most recent messages (at most `limit`), oldest first.
    pub async fn room_history(&self, room: &str, limit: i64) -> Result<Vec<StoredMessage>> {
        let rows = sqlx::query(
            "SELECT id, seq, ts, sender, sender_device, cid, msg_type, body, ext FROM room_messages
             WHERE room_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(room)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut msgs = rows
            .iter()
            .map(|row| room_message_from_row(room, row))
            .collect::<Result<Vec<_>>>()?;
        msgs.reverse();
        Ok(msgs)
    }

    /// The app's messages stored in `[from_ms, to_ms)`, oldest first, at most `limit`
    /// (for the hourly export). One-to-one and group messages are found through their ids,
    /// which are UUIDv7 (time first, so the primary key orders them by time); chatroom
    /// messages through each of the app's chatrooms.
    pub async fn messages_between(
        &self,
        app_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>> {
        let rows = sqlx::query(&format!(
            "SELECT {MSG_COLUMNS} FROM messages m WHERE m.id >= $1 AND m.id < $2 AND m.app_id = $3
             ORDER BY m.id LIMIT $4"
        ))
        .bind(v7_floor(from_ms))
        .bind(v7_floor(to_ms))
        .bind(app_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut msgs = rows.iter().map(message_from_row).collect::<Result<Vec<_>>>()?;
        let rooms: Vec<String> = sqlx::query_scalar("SELECT id FROM channels WHERE app_id = $1 AND kind = 'room'")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        for room in rooms {
            let rows = sqlx::query(
                "SELECT id, seq, ts, sender, sender_device, cid, msg_type, body, ext FROM room_messages
                 WHERE room_id = $1 AND ts >= $2 AND ts < $3 ORDER BY seq LIMIT $4",
            )
            .bind(&room)
            .bind(from_ms)
            .bind(to_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                msgs.push(room_message_from_row(&room, row)?);
            }
        }
        msgs.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
        msgs.truncate(limit.max(0) as usize);
        Ok(msgs)
    }

    /// How many messages an app has stored (used by tests and the bench tool's check).
    pub async fn count_messages(&self, app_id: &str) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(&self.pool)
            .await?)
    }
}

/// The smallest UUIDv7, as text, of millisecond `ms`: ids compare as text in time order.
fn v7_floor(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    format!("{:08x}-{:04x}-0000-0000-000000000000", ms >> 16, ms & 0xffff)
}

pub(crate) fn room_message_from_row(room: &str, row: &AnyRow) -> Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.try_get("id")?,
        conv: format!("r:{room}"),
        seq: row.try_get("seq")?,
        ts: row.try_get("ts")?,
        chat: "room".into(),
        sender: row.try_get("sender")?,
        sender_device: row.try_get("sender_device")?,
        recipient: room.to_string(),
        cid: row.try_get("cid")?,
        kind: row.try_get("msg_type")?,
        body: row.try_get("body")?,
        ext: row.try_get("ext")?,
        recalled: false,
        edited_at: 0,
        destroy: None,
        destroyed: false,
    })
}

/// Where a message sits in a user's inbox (`useq`), if it is there.
pub(crate) async fn inbox_place<'e>(
    executor: impl sqlx::Executor<'e, Database = Any>,
    app_id: &str,
    user: &str,
    message_id: &str,
) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT useq FROM inbox WHERE app_id = $1 AND username = $2 AND message_id = $3")
            .bind(app_id)
            .bind(user)
            .bind(message_id)
            .fetch_optional(executor)
            .await?,
    )
}

/// What a write of read positions does to an existing row: positions never move back.
pub(crate) const KEEP_FURTHEST_POSITIONS: &str = "ON CONFLICT (app_id, username, conv) DO UPDATE SET
     read_seq = CASE WHEN excluded.read_seq > user_conversations.read_seq THEN excluded.read_seq ELSE user_conversations.read_seq END,
     delivered_seq = CASE WHEN excluded.delivered_seq > user_conversations.delivered_seq THEN excluded.delivered_seq ELSE user_conversations.delivered_seq END";

/// `$from, $from+1, …`: `count` parameters.
pub(crate) fn params_from(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::StoredMessage;
    use crate::envelope::{Destroy, DestroyFrom};

    /// The live path's JSON is byte for byte what serializing [`StoredMessage::delivered`]
    /// gives, for every field that can be set or not. Bodies and `ext`s are stored as
    /// `serde_json::Value` writes them (keys sorted, no spaces), by every road that stores one.
    #[test]
    fn delivered_json_is_delivered_serialized() {
        let plain = StoredMessage {
            id: "0193-id".into(),
            conv: "u:ann:ben".into(),
            seq: 7,
            ts: 1_764_500_000_123,
            chat: "user".into(),
            sender: "ann".into(),
            sender_device: "phone".into(),
            recipient: "ben".into(),
            cid: "c-\"1\"".into(),
            kind: "txt".into(),
            body: serde_json::json!({"msg": "hé \"you\"\n", "z": [1, 2.5, null], "a": {"b": true}}).to_string(),
            ext: None,
            recalled: false,
            edited_at: 0,
            destroy: None,
            destroyed: false,
        };
        let mut cases = vec![plain.clone()];
        let mut m = plain.clone();
        m.ext = Some(serde_json::json!({"t": 12, "k": "v"}).to_string());
        m.edited_at = 99;
        m.destroy = Some(Destroy {
            after: 30,
            from: DestroyFrom::Read,
        });
        cases.push(m.clone());
        m.recalled = true;
        cases.push(m.clone());
        m.recalled = false;
        m.destroyed = true;
        cases.push(m.clone());
        let mut m = plain.clone();
        m.body = "not json".into();
        m.ext = Some("{broken".into());
        cases.push(m);
        let mut m = plain;
        m.ext = Some("null".into());
        m.chat = "room".into();
        cases.push(m);
        for m in &cases {
            for (viewer, useq) in [("ann", Some(3)), ("ben", Some(4)), ("", None)] {
                let expected = serde_json::to_vec(&m.delivered(viewer, useq)).unwrap();
                assert_eq!(
                    String::from_utf8(m.delivered_json(viewer, useq)).unwrap(),
                    String::from_utf8(expected).unwrap(),
                    "{m:?} seen by {viewer:?}"
                );
            }
        }
    }

    #[test]
    fn v7_floor_orders_like_the_ids() {
        let ms = 1_764_500_000_123_u64;
        let at = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
        let id = uuid::Uuid::new_v7(at).to_string();
        assert!(super::v7_floor(ms as i64) <= id, "{id}");
        assert!(super::v7_floor(ms as i64 + 1) > id, "{id}");
    }
}
