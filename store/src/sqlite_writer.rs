//! SQLite's writer thread: one-to-one batches, the bulk of what a chat server writes, stored
//! by a connection of their own on a thread of their own, one hop per batch.
//!
//! Through sqlx, every statement of a batch is a hop from a tokio task to the connection's
//! thread and back: about 0.27 ms each on this project's 2-core machine under load, nine of
//! them in a batch, before the commit. And to keep the statement count fixed, the sqlx path
//! hands a run's rows over as one JSON array per table, which SQLite parses again for every
//! column it reads out of it: 35 µs a message row, against 5-8 µs for a prepared `INSERT …
//! VALUES` (BENCHMARKS.md, "where a batch's time goes"). Here the whole batch is one job: a
//! closure run on this thread against cached prepared statements, row by row, inside one
//! `BEGIN IMMEDIATE` transaction with `synchronous=FULL`, so an `Ok` still means committed and
//! durable. The counters a batch moves (inbox and conversation seqs) and the
//! conversation-list positions are read once per batch and written once at its end
//! ([`Counters`]). The job's answer comes back on a oneshot channel. When no job has come
//! for a moment, the thread checkpoints the WAL, so that work falls between bursts rather
//! than inside a batch's commit ([`IDLE_BEFORE_CHECKPOINT`]).
//!
//! The rules are the ones the sqlx path ([`crate::pool_writer`]) applies (same refusals, same
//! order of seqs and inbox positions, same push record); the helpers that decide them live
//! in [`crate::messages`] and serve both. Group and chatroom batches, and batches that mix
//! them in, still take the sqlx path; so does everything on PostgreSQL, where a statement is
//! a network round trip and the fixed count of statements is what matters.
//!
//! The other writers (the API, the push and webhook workers, the bridge's other ops) keep
//! their pool: SQLite takes one writer at a time across connections, and both sides wait for
//! the write lock (`busy_timeout`) rather than fail.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::envelope::ChatType;
use crate::error::{Error, Result};
use crate::messages::{
    accepted_message, destroy_at, destroy_of, needs_contact_check, not_contact, push_records, refusal, user_conv,
    NewMessage, Outcome, StoredMessage, INSERT_PUSH_RECORD, KEEP_FURTHEST_POSITIONS, MSG_COLUMNS,
};

/// A job for the writer thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The handle to the writer thread; the thread ends when the last handle is dropped.
pub(crate) struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteWriter")
    }
}

impl SqliteWriter {
    /// Opens the database file (already created and migrated by the pool) and starts the thread.
    pub(crate) fn open(path: &Path) -> Result<SqliteWriter> {
        let conn = Connection::open(path)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        // Per connection: every commit of this one is fsynced, as the pool's are.
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // 64 MiB of page cache, not SQLite's 2 MiB: the index pages this connection's inserts
        // walk outgrow 2 MiB as the database grows, and each page dropped was read back with
        // pread (4.5% of a saturated run's samples).
        conn.execute_batch("PRAGMA cache_size=-65536")?;
        conn.set_prepared_statement_cache_capacity(32);
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                // Whether a job has written since the last checkpoint.
                let mut written = false;
                loop {
                    let job = if written {
                        match queue.recv_timeout(IDLE_BEFORE_CHECKPOINT) {
                            Ok(job) => job,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                checkpoint(&conn);
                                written = false;
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    } else {
                        match queue.recv() {
                            Ok(job) => job,
                            Err(_) => break,
                        }
                    };
                    // A job that panics answers nothing (its caller sees an error); the
                    // thread goes on with the next. Its transaction was rolled back as the
                    // panic unwound through it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
                    written = true;
                }
            })
            .map_err(|e| Error::Internal(format!("starting the SQLite writer thread: {e}")))?;
        Ok(SqliteWriter { jobs })
    }

    /// Runs `job` on the writer thread and returns its answer.
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Result<R> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = answer.send(job(conn));
            }))
            .map_err(|_| Error::Internal("the SQLite writer thread has stopped".into()))?;
        answered
            .await
            .map_err(|_| Error::Internal("the SQLite writer failed in the middle of a job".into()))
    }
}

/// How long the writer waits with no job before it checkpoints the WAL.
///
/// SQLite checkpoints on its own inside a `COMMIT` once the WAL holds 1,000 pages: that
/// commit, and so every message of its batch, waits while the WAL's pages are copied into the
/// database file and both are fsynced (12% of the writer's time at 1,000 msg/s in bursts,
/// all of it on one batch in several). Checkpointing when the writer has been idle this long
/// does that work between bursts instead, and keeps the WAL short enough that the automatic
/// one rarely fires. Under a steady load that leaves no such gap, the automatic checkpoint
/// still bounds the WAL as before. Long enough for the batch just stored to be answered and
/// delivered first (the checkpoint would take a core from them).
const IDLE_BEFORE_CHECKPOINT: Duration = Duration::from_millis(10);

/// Copies what it can of the WAL into the database file without waiting for readers
/// (`PASSIVE`), so the next write can start the WAL over from its beginning.
fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "checkpointing the SQLite WAL failed");
    }
}

/// True for a batch the writer thread stores: one-to-one messages only.
pub(crate) fn takes(batch: &[NewMessage]) -> bool {
    batch.iter().all(|m| m.chat == ChatType::User)
}

/// Stores a batch of one-to-one messages in one transaction, in order, and says what became
/// of each (as [`crate::Store::store_batch`] does), and whether it was recorded for the push
/// planner. An `Err` means nothing was stored.
pub(crate) fn store_one_to_one(conn: &mut Connection, batch: &[NewMessage]) -> Result<(Vec<Outcome>, bool)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut counters = Counters::default();
    let mut outcomes = Vec::with_capacity(batch.len());
    for m in batch {
        outcomes.push(store_one(&tx, &mut counters, m)?);
    }
    counters.write(&tx)?;
    let mut recorded = false;
    for record in push_records(batch, &outcomes) {
        recorded |= tx.prepare_cached(INSERT_PUSH_RECORD)?.execute(params![
            record.id,
            record.messages,
            record.at,
            record.app_id
        ])? > 0;
    }
    tx.commit()?;
    Ok((outcomes, recorded))
}

/// (app id, name): a user, or a conversation.
type Key = (String, String);

/// The counters a batch moves (each user's `inbox_seq`, each conversation's `last_seq`) and
/// the conversation-list positions it sets: read once per batch, moved in memory, written
/// once at its end. A user in five messages of a batch costs one read and one write, not
/// five of each. The transaction holds SQLite's write lock throughout, so nothing else
/// moves them in between.
#[derive(Default)]
struct Counters {
    /// `None`: no such user (deleted while their message was in flight).
    users: HashMap<Key, Option<UserCounter>>,
    convs: HashMap<Key, ConvCounter>,
    /// (app id, user, conversation) -> the furthest position to set (read and delivered).
    positions: HashMap<(String, String, String), i64>,
}

struct UserCounter {
    muted_until: i64,
    inbox_seq: i64,
    moved: bool,
}

struct ConvCounter {
    last_seq: i64,
    last_ts: i64,
    last_id: String,
}

impl Counters {
    /// A user of the batch, read on first use.
    fn user(&mut self, tx: &Connection, app: &str, name: &str) -> Result<Option<&mut UserCounter>> {
        let user = match self.users.entry((app.to_string(), name.to_string())) {
            Entry::Occupied(user) => user.into_mut(),
            Entry::Vacant(vacant) => vacant.insert(
                tx.prepare_cached("SELECT mute_chat_until, inbox_seq FROM users WHERE app_id = ?1 AND username = ?2")?
                    .query_row(params![app, name], |row| {
                        Ok(UserCounter {
                            muted_until: row.get(0)?,
                            inbox_seq: row.get(1)?,
                            moved: false,
                        })
                    })
                    .optional()?,
            ),
        };
        Ok(user.as_mut())
    }

    /// The next seq of a conversation, which `msg` takes.
    fn next_seq(&mut self, tx: &Connection, app: &str, msg: &StoredMessage) -> Result<i64> {
        let key = (app.to_string(), msg.conv.clone());
        let conv = match self.convs.entry(key) {
            Entry::Occupied(conv) => conv.into_mut(),
            Entry::Vacant(vacant) => {
                let last_seq: Option<i64> = tx
                    .prepare_cached("SELECT last_seq FROM conversations WHERE app_id = ?1 AND conv = ?2")?
                    .query_row(params![app, msg.conv], |row| row.get(0))
                    .optional()?;
                vacant.insert(ConvCounter {
                    last_seq: last_seq.unwrap_or(0),
                    last_ts: 0,
                    last_id: String::new(),
                })
            }
        };
        conv.last_seq += 1;
        conv.last_ts = msg.ts;
        conv.last_id.clone_from(&msg.id);
        Ok(conv.last_seq)
    }

    /// The user's conversation-list row moves to at least `seq`.
    fn position(&mut self, app: &str, user: &str, conv: &str, seq: i64) {
        let at = self
            .positions
            .entry((app.to_string(), user.to_string(), conv.to_string()))
            .or_insert(seq);
        *at = (*at).max(seq);
    }

    /// Writes what the batch moved.
    fn write(self, tx: &Connection) -> Result<()> {
        let mut conv = tx.prepare_cached(
            "INSERT INTO conversations (app_id, conv, last_seq, last_ts, last_message_id) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (app_id, conv) DO UPDATE SET last_seq = excluded.last_seq,
             last_ts = excluded.last_ts, last_message_id = excluded.last_message_id",
        )?;
        for ((app, id), c) in &self.convs {
            conv.execute(params![app, id, c.last_seq, c.last_ts, c.last_id])?;
        }
        let mut user = tx.prepare_cached("UPDATE users SET inbox_seq = ?3 WHERE app_id = ?1 AND username = ?2")?;
        for ((app, name), u) in &self.users {
            if let Some(u) = u.as_ref().filter(|u| u.moved) {
                user.execute(params![app, name, u.inbox_seq])?;
            }
        }
        let mut position = tx.prepare_cached(&format!(
            "INSERT INTO user_conversations (app_id, username, conv, read_seq, delivered_seq)
             VALUES (?1, ?2, ?3, ?4, ?4) {KEEP_FURTHEST_POSITIONS}"
        ))?;
        for ((app, name, conv), seq) in &self.positions {
            position.execute(params![app, name, conv, seq])?;
        }
        Ok(())
    }
}

/// One message of the batch: a repeat of an earlier send (in an earlier batch or earlier in
/// this one), a refusal, or stored with its seq and its inbox positions.
fn store_one(tx: &Connection, counters: &mut Counters, m: &NewMessage) -> Result<Outcome> {
    let app = m.app_id.as_str();
    let earlier = tx
        .prepare_cached(&format!(
            "SELECT {MSG_COLUMNS} FROM messages m WHERE m.app_id = ?1 AND m.sender = ?2 AND m.cid = ?3"
        ))?
        .query_row(params![app, m.sender, m.cid], message_from_row)
        .optional()?;
    if let Some(msg) = earlier {
        let sender_useq = tx
            .prepare_cached("SELECT useq FROM inbox WHERE app_id = ?1 AND username = ?2 AND message_id = ?3")?
            .query_row(params![app, m.sender, msg.id], |row| row.get(0))
            .optional()?;
        return Ok(Outcome::Duplicate { msg, sender_useq });
    }

    // A participant may have been deleted while the message was in flight.
    let recipient_exists = counters.user(tx, app, &m.to)?.is_some();
    let sender = counters.user(tx, app, &m.sender)?.map(|u| u.muted_until);
    let sender_exists = sender.is_some();
    let blocked = recipient_exists
        && tx
            .prepare_cached("SELECT 1 FROM blocks WHERE app_id = ?1 AND owner = ?2 AND blocked = ?3")?
            .exists(params![app, m.to, m.sender])?;
    let refused = refusal(m, recipient_exists, sender.filter(|until| *until > 0), blocked);
    let refused = match refused {
        Some(refused) => Some(refused),
        None if needs_contact_check(m)
            && !tx
                .prepare_cached("SELECT 1 FROM contacts WHERE app_id = ?1 AND owner = ?2 AND friend = ?3")?
                .exists(params![app, m.sender, m.to])? =>
        {
            Some(not_contact(m))
        }
        None => None,
    };
    if let Some((code, message)) = refused {
        return Ok(Outcome::Refused { code, message });
    }

    let mut msg = accepted_message(m, user_conv(&m.sender, &m.to));
    msg.seq = counters.next_seq(tx, app, &msg)?;
    let (destroy_after, destroy_from, destroy_at) = match msg.destroy {
        Some(d) => (d.after, d.from.as_str(), destroy_at(d, msg.ts)),
        None => (0, "", 0),
    };
    tx.prepare_cached(
        "INSERT INTO messages (app_id, id, conv, seq, chat, sender, sender_device, recipient, cid, msg_type, body, ext,
         ts, destroy_after, destroy_from, destroy_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        app,
        msg.id,
        msg.conv,
        msg.seq,
        msg.chat,
        msg.sender,
        msg.sender_device,
        msg.recipient,
        msg.cid,
        msg.kind,
        msg.body,
        msg.ext,
        msg.ts,
        destroy_after,
        destroy_from,
        destroy_at
    ])?;
    for file in &m.files {
        tx.prepare_cached(
            "INSERT INTO chatfile_refs (file_id, holder, room) VALUES (?1, ?2, '') ON CONFLICT DO NOTHING",
        )?
        .execute(params![file, msg.id])?;
    }

    // Conversation list rows: the recipient's appears, the sender has read up to what they
    // sent (never moving back).
    counters.position(app, &msg.recipient, &msg.conv, 0);
    if sender_exists {
        counters.position(app, &msg.sender, &msg.conv, msg.seq);
    }

    // Inbox positions: the recipient's copy, then the sender's (one for a message to oneself).
    let mut useqs = Vec::with_capacity(2);
    let owners = [
        Some(&msg.recipient),
        (msg.sender != msg.recipient).then_some(&msg.sender),
    ];
    for user in owners.into_iter().flatten() {
        let Some(counter) = counters.user(tx, app, user)? else {
            continue;
        };
        counter.inbox_seq += 1;
        counter.moved = true;
        let useq = counter.inbox_seq;
        tx.prepare_cached("INSERT INTO inbox (app_id, username, useq, message_id) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![app, user, useq, msg.id])?;
        useqs.push((user.clone(), useq));
    }
    Ok(Outcome::Stored { msg, useqs })
}

/// A message read with [`MSG_COLUMNS`], in their order.
fn message_from_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    let destroy_after: i64 = row.get(14)?;
    let destroy_from: String = row.get(15)?;
    Ok(StoredMessage {
        id: row.get(0)?,
        conv: row.get(1)?,
        seq: row.get(2)?,
        ts: row.get(3)?,
        chat: row.get(4)?,
        sender: row.get(5)?,
        sender_device: row.get(6)?,
        recipient: row.get(7)?,
        cid: row.get(8)?,
        kind: row.get(9)?,
        body: row.get(10)?,
        ext: row.get(11)?,
        recalled: row.get::<_, i64>(12)? != 0,
        edited_at: row.get(13)?,
        destroy: destroy_of(destroy_after, &destroy_from),
        destroyed: row.get::<_, i64>(16)? != 0,
    })
}
