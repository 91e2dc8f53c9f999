//! What happens to a message after it is sent: read and delivered positions, the
//! conversation list with unread counts, recall, edit, delete-for-me, reactions, readers of a
//! group message, and search.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use crate::envelope::{Delivered, Reaction};
use crate::error::{Error, Result};
use crate::messages::{message_from_row, StoredMessage, MSG_COLUMNS};
use crate::{Backend, Store};

/// Which position a receipt moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    Delivered,
    Read,
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationEntry {
    pub conv: String,
    /// `user` or `group`.
    pub chat: String,
    /// The peer's username, or the group's id.
    pub with: String,
    pub last_seq: i64,
    pub read_seq: i64,
    pub unread: i64,
    pub updated: i64,
    /// One-to-one conversations: how far the peer has read and received (their receipts), so
    /// a device opening the conversation can show read ticks without waiting for a
    /// `receipt` op.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_read_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_delivered_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message: Option<Delivered>,
}

/// Longest emoji string accepted for a reaction.
const EMOJI_MAX_BYTES: usize = 32;
/// The most different reactions one message takes (as on the platform).
pub const MAX_REACTIONS: usize = 20;

impl Store {
    /// How far a user's devices have acknowledged a conversation (delivered or read): the
    /// highest such `seq`, 0 if nothing or not in it.
    pub async fn delivered_up_to(&self, app_id: &str, user: &str, conv: &str) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT delivered_seq FROM user_conversations WHERE app_id = $1 AND username = $2 AND conv = $3",
        )
        .bind(app_id)
        .bind(user)
        .bind(conv)
        .fetch_optional(&self.pool)
        .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Moves a user's read or delivered position in a conversation forward (never back) and
    /// returns the positions before and after; `NotFound` if the user is not in that
    /// conversation.
    pub async fn mark(&self, app_id: &str, user: &str, conv: &str, seq: i64, receipt: Receipt) -> Result<(i64, i64)> {
        let column = match receipt {
            Receipt::Read => "read_seq",
            Receipt::Delivered => "delivered_seq",
        };
        let before: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT {column} FROM user_conversations WHERE app_id = $1 AND username = $2 AND conv = $3"
        ))
        .bind(app_id)
        .bind(user)
        .bind(conv)
        .fetch_optional(&self.pool)
        .await?;
        let before = before.ok_or_else(|| Error::NotFound(format!("conversation {conv}")))?;
        let head = self.conversation_head(app_id, conv).await?;
        let seq = seq.min(head);
        // Reading implies delivery.
        let also = if receipt == Receipt::Read {
            ", delivered_seq = CASE WHEN delivered_seq < $1 THEN $1 ELSE delivered_seq END"
        } else {
            ""
        };
        sqlx::query(&format!(
            "UPDATE user_conversations SET {column} = $1{also} WHERE app_id = $2 AND username = $3 AND conv = $4 AND {column} < $1"
        ))
        .bind(seq)
        .bind(app_id)
        .bind(user)
        .bind(conv)
        .execute(&self.pool)
        .await?;
        if receipt == Receipt::Read && seq > before && conv.starts_with("u:") {
            // Self-destructing messages the reader has now read start their timers.
            sqlx::query(
                "UPDATE messages SET destroy_at = $1 + destroy_after * 1000
                 WHERE app_id = $2 AND conv = $3 AND seq > $4 AND seq <= $5
                 AND destroy_from = 'read' AND destroy_at = 0 AND sender <> $6",
            )
            .bind(crate::now_ms())
            .bind(app_id)
            .bind(conv)
            .bind(before)
            .bind(seq)
            .bind(user)
            .execute(&self.pool)
            .await?;
        }
        Ok((before, before.max(seq)))
    }

    /// Self-destructing messages whose time has come (at most `limit`), oldest due first.
    /// Each with its app's id.
    pub async fn due_destructions(&self, now: i64, limit: i64) -> Result<Vec<(String, StoredMessage)>> {
        let rows = sqlx::query(&format!(
            "SELECT {MSG_COLUMNS}, m.app_id FROM messages m
             WHERE m.destroy_at > 0 AND m.destroy_at <= $1 AND m.destroyed = 0 ORDER BY m.destroy_at LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("app_id")?, message_from_row(row)?)))
            .collect()
    }

    /// Erases a self-destructing message: body, ext and reactions go, its file references
    /// are dropped. Answers the files it referred to, or `None` if another node (or an
    /// earlier run) destroyed it first, so exactly one announces it.
    pub async fn destroy_message(&self, id: &str) -> Result<Option<Vec<String>>> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE messages SET destroyed = 1, body = '{}', ext = NULL, destroy_at = 0 WHERE id = $1 AND destroyed = 0",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let files: Vec<String> = sqlx::query_scalar("SELECT file_id FROM chatfile_refs WHERE holder = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        crate::files::erase_attachments(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some(files))
    }

    /// A user's conversations, most recent first, with unread counts and last messages.
    pub async fn conversations(&self, app_id: &str, user: &str, limit: i64) -> Result<Vec<ConversationEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT uc.conv AS uconv, uc.read_seq, c.last_seq, c.last_ts,
                    p.read_seq AS peer_read_seq, p.delivered_seq AS peer_delivered_seq, {MSG_COLUMNS}
             FROM user_conversations uc
             JOIN conversations c ON c.app_id = uc.app_id AND c.conv = uc.conv
             LEFT JOIN user_conversations p
               ON p.app_id = uc.app_id AND p.conv = uc.conv AND p.username <> uc.username AND uc.conv LIKE 'u:%'
             LEFT JOIN messages m ON m.id = c.last_message_id
             WHERE uc.app_id = $1 AND uc.username = $2
             ORDER BY c.last_ts DESC, uc.conv LIMIT $3"
        ))
        .bind(app_id)
        .bind(user)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let conv: String = row.try_get("uconv")?;
                let (chat, with) = match conv.split_once(':') {
                    Some(("g", id)) => ("group".to_string(), id.to_string()),
                    _ => {
                        let peer = conv.split(':').skip(1).find(|u| *u != user).unwrap_or(user).to_string();
                        ("user".to_string(), peer)
                    }
                };
                let (last_seq, read_seq): (i64, i64) = (row.try_get("last_seq")?, row.try_get("read_seq")?);
                // A peer without a row yet has received and read nothing.
                let one_to_one = chat == "user";
                let peer = |column: &str| -> Result<Option<i64>> {
                    Ok(one_to_one.then_some(row.try_get::<Option<i64>, _>(column)?.unwrap_or(0)))
                };
                let last_message = match row.try_get::<Option<String>, _>("id")? {
                    Some(_) => Some(message_from_row(row)?.delivered(user, None)),
                    None => None,
                };
                Ok(ConversationEntry {
                    conv,
                    chat,
                    with,
                    last_seq,
                    read_seq,
                    unread: (last_seq - read_seq).max(0),
                    updated: row.try_get("last_ts")?,
                    peer_read_seq: peer("peer_read_seq")?,
                    peer_delivered_seq: peer("peer_delivered_seq")?,
                    last_message,
                })
            })
            .collect()
    }

    /// The sum of a user's unread counts, for app badges.
    pub async fn total_unread(&self, app_id: &str, user: &str) -> Result<i64> {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(CASE WHEN c.last_seq > uc.read_seq THEN c.last_seq - uc.read_seq ELSE 0 END) AS BIGINT)
             FROM user_conversations uc JOIN conversations c ON c.app_id = uc.app_id AND c.conv = uc.conv
             WHERE uc.app_id = $1 AND uc.username = $2",
        )
        .bind(app_id)
        .bind(user)
        .fetch_one(&self.pool)
        .await?;
        Ok(total.unwrap_or(0))
    }

    pub async fn message(&self, app_id: &str, id: &str) -> Result<StoredMessage> {
        let row = sqlx::query(&format!(
            "SELECT {MSG_COLUMNS} FROM messages m WHERE m.app_id = $1 AND m.id = $2"
        ))
        .bind(app_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("message {id}")))?;
        message_from_row(&row)
    }

    /// Everyone who has a message: the users whose inbox holds it.
    pub async fn holders(&self, app_id: &str, id: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT username FROM inbox WHERE app_id = $1 AND message_id = $2 ORDER BY username")
                .bind(app_id)
                .bind(id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// A message `user` has (sent it, or it is in their inbox); `NotFound` otherwise.
    pub async fn held_message(&self, app_id: &str, id: &str, user: &str) -> Result<StoredMessage> {
        self.require_holder(app_id, id, user).await
    }

    async fn require_holder(&self, app_id: &str, id: &str, user: &str) -> Result<StoredMessage> {
        let msg = self.message(app_id, id).await?;
        let held = crate::messages::inbox_place(&self.pool, app_id, user, id).await?;
        if held.is_none() && msg.sender != user {
            return Err(Error::NotFound(format!("message {id}")));
        }
        Ok(msg)
    }

    /// Recalls a message: its content is erased. `by` = `None` is the app itself (no time
    /// limit); a user may recall only their own, within `limit_ms` of sending.
    pub async fn recall(&self, app_id: &str, id: &str, by: Option<&str>, limit_ms: i64) -> Result<StoredMessage> {
        let msg = self.message(app_id, id).await?;
        if let Some(user) = by {
            if msg.sender != user {
                return Err(Error::Forbidden(
                    "only the sender (or the app) may recall a message".into(),
                ));
            }
            if crate::now_ms() > msg.ts + limit_ms {
                return Err(Error::TooLate(format!(
                    "too late to recall: the limit is {} s after sending",
                    limit_ms / 1000
                )));
            }
        }
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE messages SET recalled = 1, body = '{}', ext = NULL, destroy_at = 0 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        crate::files::erase_attachments(&mut tx, id).await?;
        tx.commit().await?;
        let event = serde_json::json!({
            "id": id, "conv": msg.conv, "chat": msg.chat, "from": msg.sender, "to": msg.recipient,
            "by": by.unwrap_or("admin"),
        });
        self.hook_event(app_id, "recall", id, &event).await;
        self.message(app_id, id).await
    }

    /// Replaces the body of the sender's own message.
    pub async fn edit(&self, app_id: &str, id: &str, by: &str, body: &str) -> Result<StoredMessage> {
        let msg = self.message(app_id, id).await?;
        if msg.sender != by {
            return Err(Error::Forbidden("only the sender may edit a message".into()));
        }
        if msg.recalled || msg.destroyed {
            return Err(Error::invalid("id", "a recalled or destroyed message cannot be edited"));
        }
        let edited_at = crate::now_ms();
        sqlx::query("UPDATE messages SET body = $1, edited_at = $2 WHERE id = $3")
            .bind(body)
            .bind(edited_at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        let event = serde_json::json!({
            "id": id, "conv": msg.conv, "chat": msg.chat, "from": msg.sender, "to": msg.recipient,
            "type": msg.kind, "body": serde_json::from_str::<serde_json::Value>(body).unwrap_or_default(),
            "edited_at": edited_at,
        });
        self.hook_event(app_id, "edit", &format!("{id}:{edited_at}"), &event)
            .await;
        self.message(app_id, id).await
    }

    /// Takes a conversation off one user's conversation list (it comes back with its next
    /// message); with `history`, also hides every message of it so far from the user's
    /// history (delete for me, for the whole conversation). `NotFound` if it is not on the
    /// list.
    pub async fn delete_conversation(&self, app_id: &str, user: &str, conv: &str, history: bool) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let removed = sqlx::query("DELETE FROM user_conversations WHERE app_id = $1 AND username = $2 AND conv = $3")
            .bind(app_id)
            .bind(user)
            .bind(conv)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(Error::NotFound(format!("conversation {conv} of {user}")));
        }
        if history {
            sqlx::query(
                "INSERT INTO hidden_messages (app_id, username, message_id)
                 SELECT app_id, $1, id FROM messages WHERE app_id = $2 AND conv = $3
                 ON CONFLICT DO NOTHING",
            )
            .bind(user)
            .bind(app_id)
            .bind(conv)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a message's `ext` (the app's rewrite).
    pub async fn set_ext(&self, app_id: &str, id: &str, ext: &str) -> Result<StoredMessage> {
        sqlx::query("UPDATE messages SET ext = $1 WHERE app_id = $2 AND id = $3")
            .bind(ext)
            .bind(app_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.message(app_id, id).await
    }

    /// Hides a message from one user's history (delete for me).
    pub async fn hide(&self, app_id: &str, user: &str, id: &str) -> Result<()> {
        self.require_holder(app_id, id, user).await?;
        sqlx::query(
            "INSERT INTO hidden_messages (app_id, username, message_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(app_id)
        .bind(user)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds or removes a user's emoji reaction; returns the message and its reactions.
    pub async fn react(
        &self,
        app_id: &str,
        id: &str,
        user: &str,
        emoji: &str,
        add: bool,
    ) -> Result<(StoredMessage, Vec<Reaction>)> {
        if emoji.is_empty() || emoji.len() > EMOJI_MAX_BYTES || emoji.chars().any(char::is_whitespace) {
            return Err(Error::invalid("emoji", format!("1-{EMOJI_MAX_BYTES} bytes, no spaces")));
        }
        let msg = self.require_holder(app_id, id, user).await?;
        if msg.recalled || msg.destroyed {
            return Err(Error::invalid(
                "id",
                "a recalled or destroyed message takes no reactions",
            ));
        }
        if add {
            let emojis: Vec<String> = sqlx::query_scalar("SELECT DISTINCT emoji FROM reactions WHERE message_id = $1")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
            if emojis.len() >= MAX_REACTIONS && !emojis.iter().any(|e| e == emoji) {
                return Err(Error::invalid(
                    "emoji",
                    format!("a message takes at most {MAX_REACTIONS} different reactions"),
                ));
            }
            sqlx::query("INSERT INTO reactions (message_id, emoji, username, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(id)
                .bind(emoji)
                .bind(user)
                .bind(crate::now_ms())
                .execute(&self.pool)
                .await?;
        } else {
            sqlx::query("DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND username = $3")
                .bind(id)
                .bind(emoji)
                .bind(user)
                .execute(&self.pool)
                .await?;
        }
        let reactions = self.reactions(&[id.to_string()]).await?.remove(id).unwrap_or_default();
        Ok((msg, reactions))
    }

    /// Reactions of several messages, by message id.
    pub async fn reactions(&self, ids: &[String]) -> Result<HashMap<String, Vec<Reaction>>> {
        let mut out: HashMap<String, Vec<Reaction>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let placeholders = crate::messages::params_from(1, ids.len());
        let sql = format!(
            "SELECT message_id, emoji, username FROM reactions WHERE message_id IN ({placeholders}) ORDER BY message_id, created_at, username"
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id);
        }
        for row in query.fetch_all(&self.pool).await? {
            let (id, emoji, user): (String, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let list = out.entry(id).or_default();
            match list.iter_mut().find(|r| r.emoji == emoji) {
                Some(r) => {
                    r.count += 1;
                    r.users.push(user);
                }
                None => list.push(Reaction {
                    emoji,
                    count: 1,
                    users: vec![user],
                }),
            }
        }
        Ok(out)
    }

    /// Adds reactions to delivered messages in place.
    pub async fn attach_reactions(&self, msgs: &mut [Delivered]) -> Result<()> {
        let ids: Vec<String> = msgs.iter().map(|m| m.id.clone()).collect();
        let mut reactions = self.reactions(&ids).await?;
        for m in msgs {
            m.reactions = reactions.remove(&m.id).unwrap_or_default();
        }
        Ok(())
    }

    /// Members of a group who have read a message (its sender excluded).
    pub async fn readers(&self, app_id: &str, msg: &StoredMessage) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT username FROM user_conversations WHERE app_id = $1 AND conv = $2 AND read_seq >= $3 AND username <> $4
             ORDER BY username",
        )
        .bind(app_id)
        .bind(&msg.conv)
        .bind(msg.seq)
        .bind(&msg.sender)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The senders (other than `reader`) of the messages in `(after, upto]` of a
    /// conversation: whom a read receipt concerns.
    pub async fn senders_between(
        &self,
        app_id: &str,
        conv: &str,
        after: i64,
        upto: i64,
        reader: &str,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT sender FROM messages WHERE app_id = $1 AND conv = $2 AND seq > $3 AND seq <= $4 AND sender <> $5",
        )
        .bind(app_id)
        .bind(conv)
        .bind(after)
        .bind(upto)
        .bind(reader)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A user's text messages containing `query`, in the conversations they belong to,
    /// newest first. PostgreSQL uses full-text search; SQLite a case-insensitive match.
    pub async fn search(&self, app_id: &str, user: &str, query: &str, limit: i64) -> Result<Vec<Delivered>> {
        let query = query.trim();
        if query.is_empty() || query.len() > 200 {
            return Err(Error::invalid("q", "1-200 characters"));
        }
        let matches = match self.backend() {
            Backend::Postgres => "to_tsvector('simple', m.body::json->>'msg') @@ plainto_tsquery('simple', $3)",
            // The words as they are: `%` and `_` match themselves, not anything.
            Backend::Sqlite => "json_extract(m.body, '$.msg') LIKE '%' || $3 || '%' ESCAPE '\\'",
        };
        let pattern = match self.backend() {
            Backend::Postgres => query.to_string(),
            Backend::Sqlite => query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"),
        };
        let rows = sqlx::query(&format!(
            "SELECT {MSG_COLUMNS} FROM inbox i JOIN messages m ON m.id = i.message_id
             WHERE i.app_id = $1 AND i.username = $2 AND m.msg_type = 'txt' AND m.recalled = 0 AND {matches}
             AND NOT EXISTS (SELECT 1 FROM hidden_messages h WHERE h.app_id = i.app_id AND h.username = i.username AND h.message_id = m.id)
             ORDER BY m.ts DESC LIMIT $4"
        ))
        .bind(app_id)
        .bind(user)
        .bind(pattern)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok(message_from_row(row)?.delivered(user, None)))
            .collect()
    }
}
