//! The pool's road for storing a batch: one transaction through sqlx, on PostgreSQL (every
//! batch) and on SQLite (batches with group or chatroom messages; one-to-one batches go to
//! the writer thread, [`crate::sqlite_writer`]).
//!
//! On PostgreSQL a statement is a network round trip, so what matters is that their number
//! is fixed whatever the batch's size: consecutive one-to-one messages of one app are stored
//! as a *run*, one statement per table, their rows handed over as one JSON array
//! ([`JsonRows`]); group and chatroom messages one at a time. The rules (refusals, contacts,
//! the accepted message, destroy timers, the push record) are [`crate::messages`]'s, shared
//! with the writer thread; the types and the reads stay there too.

use std::collections::{HashMap, HashSet};

use sqlx::{Any, Transaction};

use crate::channels::ChannelKind;
use crate::db::Backend;
use crate::envelope::ChatType;
use crate::error::{Error, Result};
use crate::messages::{
    accepted_message, destroy_at, inbox_place, message_from_row, needs_contact_check, not_contact, push_records,
    refusal, room_message_from_row, user_conv, NewMessage, Outcome, StoredMessage, INSERT_PUSH_RECORD,
    KEEP_FURTHEST_POSITIONS, MSG_COLUMNS,
};
use crate::Store;

impl Store {
    /// [`Store::store_batch`] through the pool, in one transaction: the outcomes, and whether
    /// the batch was recorded for the push planner.
    pub(crate) async fn store_batch_in_tx(&self, batch: &[NewMessage]) -> Result<(Vec<Outcome>, bool)> {
        let mut tx = self.write_tx().await?;
        // Each outcome is written at its message's position in the batch, never appended:
        // runs are stored when they end, so outcomes are settled out of order (a repeat of
        // an earlier message is settled before the run still open around it), and each
        // must stay tied to its own send.
        let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
        // (app, sender, cid) -> position of the message that stored it, for repeats in one batch.
        let mut in_batch: HashMap<SendKey, usize> = HashMap::new();
        let mut run = Run::default();
        for (i, m) in batch.iter().enumerate() {
            let key = send_key(m);
            let joins_run = m.chat == ChatType::User
                && !run.keys.contains(&key)
                && run.members.first().is_none_or(|&r| batch[r].app_id == m.app_id);
            if !joins_run {
                self.flush_run(&mut tx, batch, &mut run, &mut outcomes, &mut in_batch)
                    .await?;
            }
            if let Some(&earlier) = in_batch.get(&key) {
                if let Some(Outcome::Stored { msg, useqs }) = &outcomes[earlier] {
                    let sender_useq = useqs.iter().find(|(u, _)| *u == msg.sender).map(|(_, s)| *s);
                    outcomes[i] = Some(Outcome::Duplicate {
                        msg: msg.clone(),
                        sender_useq,
                    });
                    continue;
                }
            }
            if m.chat == ChatType::User {
                run.members.push(i);
                run.keys.insert(key);
                continue;
            }
            let kind = if m.chat == ChatType::Group {
                ChannelKind::Group
            } else {
                ChannelKind::Room
            };
            let outcome = self.store_channel_message(&mut tx, m, kind).await?;
            if matches!(outcome, Outcome::Stored { .. }) {
                in_batch.insert(key, i);
            }
            outcomes[i] = Some(outcome);
        }
        self.flush_run(&mut tx, batch, &mut run, &mut outcomes, &mut in_batch)
            .await?;
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| crate::Error::Internal("a message of the batch has no outcome".into())))
            .collect::<Result<Vec<Outcome>>>()?;
        let recorded = record_for_push(&mut tx, batch, &outcomes).await?;
        settle_files_and_timers(&mut tx, batch, &outcomes).await?;
        tx.commit().await?;
        Ok((outcomes, recorded))
    }

    /// Stores the waiting run of one-to-one messages and settles their outcomes, each at its
    /// position in the batch.
    async fn flush_run<'a>(
        &self,
        tx: &mut Transaction<'static, Any>,
        batch: &'a [NewMessage],
        run: &mut Run<'a>,
        outcomes: &mut [Option<Outcome>],
        in_batch: &mut HashMap<SendKey<'a>, usize>,
    ) -> Result<()> {
        if run.members.is_empty() {
            return Ok(());
        }
        let messages: Vec<&NewMessage> = run.members.iter().map(|&i| &batch[i]).collect();
        let stored = self.store_user_run(tx, &messages).await?;
        if stored.len() != run.members.len() {
            return Err(crate::Error::Internal(
                "a run's outcomes do not match its messages".into(),
            ));
        }
        for (&i, outcome) in run.members.iter().zip(stored) {
            if matches!(outcome, Outcome::Stored { .. }) {
                in_batch.insert(send_key(&batch[i]), i);
            }
            outcomes[i] = Some(outcome);
        }
        run.members.clear();
        run.keys.clear();
        Ok(())
    }

    /// Stores one-to-one messages of one app, no two with the same (sender, cid), in about
    /// ten statements whatever their number: the round trips per message, not the rows, are
    /// what limits a PostgreSQL server on another connection.
    async fn store_user_run(&self, tx: &mut Transaction<'static, Any>, run: &[&NewMessage]) -> Result<Vec<Outcome>> {
        let app_id = run[0].app_id.as_str();

        // Messages these senders already sent with these cids. Every statement here must
        // look rows up by key, never scan an app's users or messages (an app may have
        // millions), whatever the planner believes about the tables' sizes.
        let backend = self.backend();
        let keys = JsonRows::new(backend, &[("sender", Text), ("cid", Text)]);
        let sql = match backend {
            // SQLite loops over a materialized CTE and looks each key up.
            Backend::Sqlite => format!(
                "{keys} SELECT {MSG_COLUMNS} FROM j, messages m
                 WHERE m.app_id = $1 AND m.sender = j.sender AND m.cid = j.cid"
            ),
            // A LATERAL subquery with a LIMIT is never flattened into a join: PostgreSQL
            // would hash-join the keys with a scan of the app's messages when its statistics
            // make the table look small.
            Backend::Postgres => format!(
                "{keys} SELECT {MSG_COLUMNS} FROM j CROSS JOIN LATERAL
                 (SELECT * FROM messages WHERE app_id = $1 AND sender = j.sender AND cid = j.cid LIMIT 1) m"
            ),
        };
        #[derive(serde::Serialize)]
        struct Key<'a> {
            sender: &'a str,
            cid: &'a str,
        }
        let query = sqlx::query(&sql).bind(app_id).bind(json_rows(run.iter().map(|m| Key {
            sender: &m.sender,
            cid: &m.cid,
        })));
        let mut earlier: HashMap<(String, String), StoredMessage> = HashMap::new();
        for row in query.fetch_all(&mut **tx).await? {
            let msg = message_from_row(&row)?;
            earlier.insert((msg.sender.clone(), msg.cid.clone()), msg);
        }

        // Which participants exist (a sender may have been deleted while their message was
        // in flight), and whom the recipients block.
        let fresh: Vec<&NewMessage> = run
            .iter()
            .copied()
            .filter(|m| !earlier.contains_key(&(m.sender.clone(), m.cid.clone())))
            .collect();
        let mut existing: HashSet<String> = HashSet::new();
        let mut blocked: HashSet<(String, String)> = HashSet::new();
        // Senders muted app-wide for one-to-one messages (`moderation`), until when.
        let mut muted: HashMap<String, i64> = HashMap::new();
        if !fresh.is_empty() {
            let mut names: Vec<&str> = fresh.iter().flat_map(|m| [m.to.as_str(), m.sender.as_str()]).collect();
            names.sort_unstable();
            names.dedup();
            // One round trip: each participant that exists, with whom they block (few per
            // user; a sender's own blocks come along and are not needed).
            let names_rows = JsonRows::new(backend, &[("name", Text)]);
            let sql = format!(
                "{names_rows} SELECT u.username, b.blocked, u.mute_chat_until FROM users u
                 LEFT JOIN blocks b ON b.app_id = u.app_id AND b.owner = u.username AND {}
                 WHERE u.app_id = $1 AND {}",
                names_rows.has("b.owner", "name"),
                names_rows.has("u.username", "name")
            );
            let query = sqlx::query_as::<_, (String, Option<String>, i64)>(&sql)
                .bind(app_id)
                .bind(json_rows(names.iter().map(|name| Name { name })));
            for (user, blocks, muted_until) in query.fetch_all(&mut **tx).await? {
                if let Some(blocks) = blocks {
                    blocked.insert((user.clone(), blocks));
                }
                if muted_until > 0 {
                    muted.insert(user.clone(), muted_until);
                }
                existing.insert(user);
            }
        }

        // Each message's fate; the accepted ones get an id and a conversation.
        enum Fate {
            Done(Outcome),
            Accepted(StoredMessage),
        }
        let mut fates = Vec::with_capacity(run.len());
        for m in run {
            if let Some(msg) = earlier.get(&(m.sender.clone(), m.cid.clone())) {
                let sender_useq = inbox_place(&mut **tx, app_id, &m.sender, &msg.id).await?;
                fates.push(Fate::Done(Outcome::Duplicate {
                    msg: msg.clone(),
                    sender_useq,
                }));
                continue;
            }
            let blocks = blocked.contains(&(m.to.clone(), m.sender.clone()));
            let refusal = match refusal(m, existing.contains(&m.to), muted.get(&m.sender).copied(), blocks) {
                Some(refusal) => Some(refusal),
                None if needs_contact_check(m) && !self.are_contacts(app_id, &m.sender, &m.to).await? => {
                    Some(not_contact(m))
                }
                None => None,
            };
            fates.push(match refusal {
                Some((code, message)) => Fate::Done(Outcome::Refused { code, message }),
                None => Fate::Accepted(accepted_message(m, user_conv(&m.sender, &m.to))),
            });
        }
        let mut accepted: Vec<&mut StoredMessage> = fates
            .iter_mut()
            .filter_map(|f| match f {
                Fate::Accepted(msg) => Some(msg),
                Fate::Done(_) => None,
            })
            .collect();
        let mut useqs: Vec<Vec<(String, i64)>> = vec![Vec::new(); accepted.len()];
        if !accepted.is_empty() {
            self.place_user_run(tx, app_id, &existing, &mut accepted, &mut useqs)
                .await?;
        }
        let mut useqs = useqs.into_iter();
        Ok(fates
            .into_iter()
            .map(|fate| match fate {
                Fate::Done(outcome) => outcome,
                Fate::Accepted(msg) => Outcome::Stored {
                    msg,
                    useqs: useqs.next().unwrap_or_default(),
                },
            })
            .collect())
    }

    /// Gives accepted one-to-one messages their conversation seqs and inbox positions and
    /// writes them: one statement per table.
    async fn place_user_run(
        &self,
        tx: &mut Transaction<'static, Any>,
        app_id: &str,
        existing: &HashSet<String>,
        accepted: &mut [&mut StoredMessage],
        useqs: &mut [Vec<(String, i64)>],
    ) -> Result<()> {
        let backend = self.backend();
        // Conversation seqs: each conversation's counter moves by its number of messages.
        let mut convs: Tally<&str, (i64, usize)> = Tally::default(); // (count, last message)
        for (i, msg) in accepted.iter().enumerate() {
            let (count, last) = convs.entry(msg.conv.as_str(), (0, i));
            *count += 1;
            *last = i;
        }
        let rows = JsonRows::new(backend, &[("conv", Text), ("n", Int), ("ts", Int), ("id", Text)]);
        let sql = format!(
            "{rows} INSERT INTO conversations (app_id, conv, last_seq, last_ts, last_message_id)
             SELECT $1, j.conv, j.n, j.ts, j.id FROM j WHERE true
             ON CONFLICT (app_id, conv) DO UPDATE SET last_seq = conversations.last_seq + excluded.last_seq,
             last_ts = excluded.last_ts, last_message_id = excluded.last_message_id
             RETURNING conv, last_seq"
        );
        #[derive(serde::Serialize)]
        struct Conv<'a> {
            conv: &'a str,
            n: i64,
            ts: i64,
            id: &'a str,
        }
        let query = sqlx::query_as::<_, (String, i64)>(&sql)
            .bind(app_id)
            .bind(json_rows(convs.sorted().map(|(conv, (count, last))| Conv {
                conv,
                n: *count,
                ts: accepted[*last].ts,
                id: &accepted[*last].id,
            })));
        let mut next_seq: HashMap<String, i64> = HashMap::new();
        for (conv, last_seq) in query.fetch_all(&mut **tx).await? {
            let count = convs.get(conv.as_str()).map_or(0, |(n, _)| *n);
            next_seq.insert(conv, last_seq - count + 1);
        }
        for msg in accepted.iter_mut() {
            let next = next_seq
                .get_mut(&msg.conv)
                .ok_or_else(|| crate::Error::Internal("conversation without a seq".into()))?;
            msg.seq = *next;
            *next += 1;
        }

        let rows: Vec<&StoredMessage> = accepted.iter().map(|msg| &**msg).collect();
        insert_messages(tx, backend, app_id, &rows).await?;

        // Conversation list rows: the recipient's appears, the sender has read up to what
        // they sent (never moving back); one row per (user, conversation), as PostgreSQL
        // refuses to update a row twice in one statement.
        let mut positions: Tally<(&str, &str), i64> = Tally::default();
        for msg in accepted.iter() {
            for (user, seq) in [(msg.recipient.as_str(), 0), (msg.sender.as_str(), msg.seq)] {
                // Users deleted while their message was in flight get no row.
                if !existing.contains(user) {
                    continue;
                }
                let read = positions.entry((user, msg.conv.as_str()), seq);
                *read = (*read).max(seq);
            }
        }
        if !positions.entries.is_empty() {
            let rows = JsonRows::new(backend, &[("name", Text), ("conv", Text), ("seq", Int)]);
            let sql = format!(
                "{rows} INSERT INTO user_conversations (app_id, username, conv, read_seq, delivered_seq)
                 SELECT $1, j.name, j.conv, j.seq, j.seq FROM j WHERE true
                 {KEEP_FURTHEST_POSITIONS}"
            );
            sqlx::query(&sql)
                .bind(app_id)
                .bind(json_rows(positions.sorted().map(|((name, conv), seq)| Position {
                    name,
                    conv,
                    seq: *seq,
                })))
                .execute(&mut **tx)
                .await?;
        }

        // Inbox positions: each user's counter moves by their number of new entries (the
        // recipient's and the sender's copy; one for a message to oneself).
        let mut counts: Tally<&str, i64> = Tally::default();
        for msg in accepted.iter() {
            for user in participants(msg) {
                *counts.entry(user, 0) += 1;
            }
        }
        let rows = JsonRows::new(backend, &[("name", Text), ("n", Int)]);
        let sql = format!(
            "{rows} UPDATE users SET inbox_seq = inbox_seq + j.n FROM j
             WHERE users.app_id = $1 AND users.username = j.name AND {}
             RETURNING username, inbox_seq",
            rows.has("users.username", "name")
        );
        #[derive(serde::Serialize)]
        struct Count<'a> {
            name: &'a str,
            n: i64,
        }
        let query = sqlx::query_as::<_, (String, i64)>(&sql)
            .bind(app_id)
            .bind(json_rows(counts.sorted().map(|(name, n)| Count { name, n: *n })));
        let mut next_useq: HashMap<String, i64> = HashMap::new();
        for (user, last) in query.fetch_all(&mut **tx).await? {
            let count = counts.get(user.as_str()).copied().unwrap_or(0);
            next_useq.insert(user, last - count + 1);
        }
        #[derive(serde::Serialize)]
        struct Entry<'a> {
            name: &'a str,
            useq: i64,
            id: &'a str,
        }
        let mut entries: Vec<Entry> = Vec::new();
        for (msg, places) in accepted.iter().zip(useqs.iter_mut()) {
            for user in participants(msg) {
                if let Some(next) = next_useq.get_mut(user) {
                    places.push((user.to_string(), *next));
                    entries.push(Entry {
                        name: user,
                        useq: *next,
                        id: &msg.id,
                    });
                    *next += 1;
                }
            }
        }
        if !entries.is_empty() {
            let rows = JsonRows::new(backend, &[("name", Text), ("useq", Int), ("id", Text)]);
            let sql = format!(
                "{rows} INSERT INTO inbox (app_id, username, useq, message_id) SELECT $1, j.name, j.useq, j.id FROM j"
            );
            sqlx::query(&sql)
                .bind(app_id)
                .bind(json_rows(entries))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Stores one group or chatroom message: the sender is checked against the channel
    /// (membership, bans, mutes; the app itself only needs the channel to exist).
    async fn store_channel_message(
        &self,
        tx: &mut Transaction<'static, Any>,
        m: &NewMessage,
        kind: ChannelKind,
    ) -> Result<Outcome> {
        if let Some(duplicate) = find_duplicate(tx, m).await? {
            return Ok(duplicate);
        }
        if !m.as_app {
            let chat = if kind == ChannelKind::Room { "room" } else { "group" };
            let mute = match self.global_mute(&m.app_id, &m.sender).await {
                Ok(mute) => mute,
                // A sender deleted meanwhile: the membership check refuses them below.
                Err(Error::NotFound(_)) => Default::default(),
                Err(e) => return Err(e),
            };
            if mute.mutes(chat, crate::now_ms()) {
                return Ok(Outcome::Refused {
                    code: "muted",
                    message: format!("you are muted in this app for {} messages", kind.noun()),
                });
            }
        }
        match self.check_sender(&m.app_id, kind, &m.to, &m.sender).await? {
            Err(refusal) if !(m.as_app && refusal.code != "not_found") => {
                return Ok(Outcome::Refused {
                    code: refusal.code,
                    message: refusal.message,
                })
            }
            _ => {}
        }
        let mut msg = accepted_message(m, format!("{}:{}", &kind.as_str()[..1], m.to));
        msg.seq = match kind {
            ChannelKind::Room => {
                sqlx::query_scalar("UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
                    .bind(&m.to)
                    .fetch_one(&mut **tx)
                    .await?
            }
            ChannelKind::Group => {
                sqlx::query_scalar(
                    "INSERT INTO conversations (app_id, conv, last_seq, last_ts, last_message_id) VALUES ($1, $2, 1, $3, $4)
                     ON CONFLICT (app_id, conv) DO UPDATE SET last_seq = conversations.last_seq + 1,
                     last_ts = $3, last_message_id = $4
                     RETURNING last_seq",
                )
                .bind(&m.app_id)
                .bind(&msg.conv)
                .bind(msg.ts)
                .bind(&msg.id)
                .fetch_one(&mut **tx)
                .await?
            }
        };
        let useqs = match kind {
            ChannelKind::Room => {
                store_room_message(tx, &msg, m.room_history).await?;
                Vec::new()
            }
            ChannelKind::Group => {
                sender_has_read(tx, &m.app_id, &msg).await?;
                insert_messages(tx, self.backend(), &m.app_id, &[&msg]).await?;
                fan_out_to_members(tx, &m.app_id, &m.to, &msg.id).await?
            }
        };
        Ok(Outcome::Stored { msg, useqs })
    }
}

/// For the newly stored messages of a batch that refer to files or self-destruct (few: the
/// common text message costs nothing here): their file references, and their timers.
async fn settle_files_and_timers(
    tx: &mut Transaction<'static, Any>,
    batch: &[NewMessage],
    outcomes: &[Outcome],
) -> Result<()> {
    for (m, outcome) in batch.iter().zip(outcomes) {
        let Outcome::Stored { msg, .. } = outcome else { continue };
        let room = if m.chat == ChatType::Room { m.to.as_str() } else { "" };
        crate::files::add_refs(tx, &msg.id, room, &m.files).await?;
        if let Some(destroy) = m.destroy {
            let at = destroy_at(destroy, msg.ts);
            sqlx::query("UPDATE messages SET destroy_after = $1, destroy_from = $2, destroy_at = $3 WHERE id = $4")
                .bind(destroy.after)
                .bind(destroy.from.as_str())
                .bind(at)
                .bind(&msg.id)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// The message this sender already sent with this `cid`, if any.
async fn find_duplicate(tx: &mut Transaction<'static, Any>, m: &NewMessage) -> Result<Option<Outcome>> {
    if m.chat == ChatType::Room {
        let row = sqlx::query(
            "SELECT id, seq, ts, sender, sender_device, cid, msg_type, body, ext FROM room_messages
             WHERE room_id = $1 AND sender = $2 AND cid = $3",
        )
        .bind(&m.to)
        .bind(&m.sender)
        .bind(&m.cid)
        .fetch_optional(&mut **tx)
        .await?;
        return row
            .map(|row| {
                Ok(Outcome::Duplicate {
                    msg: room_message_from_row(&m.to, &row)?,
                    sender_useq: None,
                })
            })
            .transpose();
    }
    let existing = sqlx::query(&format!(
        "SELECT {MSG_COLUMNS} FROM messages m WHERE m.app_id = $1 AND m.sender = $2 AND m.cid = $3"
    ))
    .bind(&m.app_id)
    .bind(&m.sender)
    .bind(&m.cid)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = existing else { return Ok(None) };
    let msg = message_from_row(&row)?;
    let sender_useq = inbox_place(&mut **tx, &m.app_id, &m.sender, &msg.id).await?;
    Ok(Some(Outcome::Duplicate { msg, sender_useq }))
}

/// Inserts messages, one statement for all of them.
async fn insert_messages(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    app_id: &str,
    msgs: &[&StoredMessage],
) -> Result<()> {
    let rows = JsonRows::new(
        backend,
        &[
            ("id", Text),
            ("conv", Text),
            ("seq", Int),
            ("chat", Text),
            ("sender", Text),
            ("sender_device", Text),
            ("recipient", Text),
            ("cid", Text),
            ("msg_type", Text),
            ("body", Text),
            ("ext", Text),
            ("ts", Int),
        ],
    );
    let sql = format!(
        "{rows} INSERT INTO messages (app_id, id, conv, seq, chat, sender, sender_device, recipient, cid, msg_type, body, ext, ts)
         SELECT $1, j.id, j.conv, j.seq, j.chat, j.sender, j.sender_device, j.recipient, j.cid, j.msg_type, j.body, j.ext, j.ts FROM j"
    );
    sqlx::query(&sql)
        .bind(app_id)
        .bind(json_rows(msgs.iter().map(|m| MessageRow {
            id: &m.id,
            conv: &m.conv,
            seq: m.seq,
            chat: &m.chat,
            sender: &m.sender,
            sender_device: &m.sender_device,
            recipient: &m.recipient,
            cid: &m.cid,
            msg_type: &m.kind,
            body: &m.body,
            ext: m.ext.as_deref(),
            ts: m.ts,
        })))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Gives a group message a place in every member's inbox: two statements whatever the
/// group's size (the counters move, then the entries are taken from them).
async fn fan_out_to_members(
    tx: &mut Transaction<'static, Any>,
    app_id: &str,
    group: &str,
    message_id: &str,
) -> Result<Vec<(String, i64)>> {
    let members = "SELECT username FROM channel_members WHERE channel_id = $2";
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "UPDATE users SET inbox_seq = inbox_seq + 1 WHERE app_id = $1 AND username IN ({members})
         RETURNING username, inbox_seq"
    ))
    .bind(app_id)
    .bind(group)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO inbox (app_id, username, useq, message_id)
         SELECT app_id, username, inbox_seq, $3 FROM users WHERE app_id = $1 AND username IN ({members})"
    ))
    .bind(app_id)
    .bind(group)
    .bind(message_id)
    .execute(&mut **tx)
    .await?;
    Ok(rows)
}

/// Adds a chatroom message and forgets those beyond the room's history length.
async fn store_room_message(tx: &mut Transaction<'static, Any>, msg: &StoredMessage, history: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO room_messages (room_id, seq, id, sender, sender_device, cid, msg_type, body, ext, ts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&msg.recipient)
    .bind(msg.seq)
    .bind(&msg.id)
    .bind(&msg.sender)
    .bind(&msg.sender_device)
    .bind(&msg.cid)
    .bind(&msg.kind)
    .bind(&msg.body)
    .bind(&msg.ext)
    .bind(msg.ts)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM room_messages WHERE room_id = $1 AND seq <= $2")
        .bind(&msg.recipient)
        .bind(msg.seq - history)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A group message's sender has read everything up to it. (Members get their conversation
/// row when they join; a sender who is not a user, such as the app, gets none.)
async fn sender_has_read(tx: &mut Transaction<'static, Any>, app_id: &str, msg: &StoredMessage) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO user_conversations (app_id, username, conv, read_seq, delivered_seq)
         SELECT app_id, username, $3, $4, $4 FROM users WHERE app_id = $1 AND username = $2
         {KEEP_FURTHEST_POSITIONS}"
    ))
    .bind(app_id)
    .bind(&msg.sender)
    .bind(&msg.conv)
    .bind(msg.seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A message's identity for repeats: (app, sender, cid).
type SendKey<'a> = (&'a str, &'a str, &'a str);

fn send_key(m: &NewMessage) -> SendKey<'_> {
    (m.app_id.as_str(), m.sender.as_str(), m.cid.as_str())
}

/// One-to-one messages of a batch waiting to be stored together (indices into the batch).
#[derive(Default)]
struct Run<'a> {
    members: Vec<usize>,
    keys: HashSet<SendKey<'a>>,
}

/// Values by key, kept in the order the keys first came and each found in constant time: a
/// run tallies its conversations, (user, conversation) pairs and users, hundreds of each,
/// once per message.
struct Tally<K, V> {
    entries: Vec<(K, V)>,
    index: HashMap<K, usize>,
}

impl<K, V> Default for Tally<K, V> {
    fn default() -> Self {
        Tally {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy, V> Tally<K, V> {
    /// The key's value, starting at `first` when the key is new.
    fn entry(&mut self, key: K, first: V) -> &mut V {
        let i = *self.index.entry(key).or_insert_with(|| {
            self.entries.push((key, first));
            self.entries.len() - 1
        });
        &mut self.entries[i].1
    }

    fn get(&self, key: K) -> Option<&V> {
        self.index.get(&key).map(|&i| &self.entries[i].1)
    }
}

impl<K: Ord, V> Tally<K, V> {
    /// The entries in key order. Rows are written in this order so that two batches stored
    /// at once (the bridge's and one sent over the REST API, on PostgreSQL) lock the rows
    /// they share in the same order: one waits for the other instead of the two deadlocking.
    fn sorted(&self) -> impl Iterator<Item = &(K, V)> {
        let mut entries: Vec<&(K, V)> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.into_iter()
    }
}

/// Whose inbox a one-to-one message goes into: the recipient's, and the sender's unless
/// they are the same.
fn participants(msg: &StoredMessage) -> impl Iterator<Item = &str> {
    let sender = (msg.sender != msg.recipient).then_some(msg.sender.as_str());
    std::iter::once(msg.recipient.as_str()).chain(sender)
}

/// The type of a column of [`JsonRows`].
#[derive(Clone, Copy)]
enum JsonColumn {
    Text,
    Int,
}
use JsonColumn::{Int, Text};

/// Rows handed to a statement as one JSON array of objects in parameter `$2`, and read back
/// as the table `j` (a materialized CTE; write `{rows} SELECT … FROM j`).
///
/// A run of messages is written with one statement per table. Spelled out as `VALUES` lists,
/// each run size made a statement of its own: hundreds of shapes, planned (PostgreSQL) or
/// compiled (SQLite) again for every run, never worth caching, and on SQLite bound in time
/// quadratic in the parameters (sqlx looks each `$n` name up in a list). As JSON, every
/// statement has one text whatever the run's size: prepared once per connection, bound as
/// two parameters.
struct JsonRows {
    backend: Backend,
    cte: String,
}

impl JsonRows {
    fn new(backend: Backend, columns: &[(&str, JsonColumn)]) -> Self {
        let cte = match backend {
            Backend::Postgres => {
                let typed: Vec<String> = columns
                    .iter()
                    .map(|(name, column)| match column {
                        Text => format!("{name} text"),
                        Int => format!("{name} bigint"),
                    })
                    .collect();
                format!(
                    "WITH j AS MATERIALIZED (SELECT * FROM json_to_recordset($2::json) AS r({}))",
                    typed.join(", ")
                )
            }
            Backend::Sqlite => {
                let fields: Vec<String> = columns
                    .iter()
                    .map(|(name, _)| format!("value ->> '{name}' AS {name}"))
                    .collect();
                format!(
                    "WITH j AS MATERIALIZED (SELECT {} FROM json_each($2))",
                    fields.join(", ")
                )
            }
        };
        JsonRows { backend, cte }
    }

    /// A condition: `column` is one of the rows' `field`, in the form each planner turns
    /// into index lookups (PostgreSQL may run `IN (SELECT …)` as a hash join over a scan).
    fn has(&self, column: &str, field: &str) -> String {
        match self.backend {
            Backend::Postgres => format!("{column} = ANY(ARRAY(SELECT {field} FROM j))"),
            Backend::Sqlite => format!("{column} IN (SELECT {field} FROM j)"),
        }
    }
}

impl std::fmt::Display for JsonRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cte)
    }
}

/// The JSON array of rows for [`JsonRows`], written straight from borrowed row structs: a
/// `Value` tree in between cloned every string of every row (message bodies included) and
/// allocated a map per row.
fn json_rows<T: serde::Serialize>(rows: impl IntoIterator<Item = T>) -> String {
    let rows: Vec<T> = rows.into_iter().collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

/// A row of [`JsonRows`] with a name.
#[derive(serde::Serialize)]
struct Name<'a> {
    name: &'a str,
}

/// A conversation-list position of [`JsonRows`].
#[derive(serde::Serialize)]
struct Position<'a> {
    name: &'a str,
    conv: &'a str,
    seq: i64,
}

/// A message row of [`JsonRows`].
#[derive(serde::Serialize)]
struct MessageRow<'a> {
    id: &'a str,
    conv: &'a str,
    seq: i64,
    chat: &'a str,
    sender: &'a str,
    sender_device: &'a str,
    recipient: &'a str,
    cid: &'a str,
    msg_type: &'a str,
    body: &'a str,
    ext: Option<&'a str>,
    ts: i64,
}

/// Notes the batch's newly stored one-to-one and group messages for the push planner, in the
/// batch's own transaction: if the process dies right after the commit, the planner still
/// finds them (a transactional outbox). One row per app of the batch, and none for an app
/// with neither push devices nor webhooks ([`INSERT_PUSH_RECORD`]). True if a row was
/// written.
async fn record_for_push(
    tx: &mut Transaction<'static, Any>,
    batch: &[NewMessage],
    outcomes: &[Outcome],
) -> Result<bool> {
    let mut recorded = false;
    for record in push_records(batch, outcomes) {
        let done = sqlx::query(INSERT_PUSH_RECORD)
            .bind(record.id)
            .bind(record.messages)
            .bind(record.at)
            .bind(record.app_id)
            .execute(&mut **tx)
            .await?;
        recorded |= done.rows_affected() > 0;
    }
    Ok(recorded)
}
