//! Key-value data apps keep on channels: a group's attributes per member (the platform's
//! group member metadata: string values, gone with the membership) and a chatroom's own
//! attributes (the platform's chatroom custom attributes).
//!
//! A chatroom attribute belongs to the member who set it: others may not change or remove
//! it except by force (the app, or the `forced` routes); with `auto_delete` it goes when
//! its owner leaves the room (`channels::remove_membership`). A batch answers each key:
//! those done, and the others with the reason, never all or nothing.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::Store;

/// The most bytes one member's attributes in a group may take, serialised.
pub const MAX_MEMBER_ATTRIBUTES_BYTES: usize = 4096;
/// The most attributes a chatroom keeps.
pub const MAX_ROOM_ATTRIBUTES: usize = 100;
/// The most keys one request sets or removes.
pub const MAX_ROOM_ATTRIBUTES_PER_CALL: usize = 10;
/// The longest key (characters of `[A-Za-z0-9_.-]`) and value (bytes).
pub const MAX_ROOM_KEY_CHARS: usize = 128;
pub const MAX_ROOM_VALUE_BYTES: usize = 4096;

/// What a batch of chatroom attribute changes did: the keys done, and why not for the
/// others.
#[derive(Debug, Default, PartialEq)]
pub struct KeysDone {
    pub done: Vec<String>,
    pub refused: BTreeMap<String, String>,
}

fn check_room_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() || key.chars().count() > MAX_ROOM_KEY_CHARS {
        return Err(format!(
            "properties key '{key}' is exceeding maximum limit {MAX_ROOM_KEY_CHARS}"
        ));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "properties key '{key}' may hold letters, digits, '_', '-' and '.' only"
        ));
    }
    Ok(())
}

impl Store {
    /// A member's attributes in a group (the platform's group member metadata): string
    /// values, `NotFound` if not a member.
    pub async fn member_attributes(&self, app_id: &str, id: &str, user: &str) -> Result<Map<String, Value>> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT attributes FROM channel_members WHERE channel_id = $1 AND app_id = $2 AND username = $3",
        )
        .bind(id)
        .bind(app_id)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        let text = text.ok_or_else(|| Error::NotFound(format!("member {user}")))?;
        Ok(serde_json::from_str(&text).unwrap_or_default())
    }

    /// Sets the keys given (an empty value removes one); answers the member's attributes.
    /// String values only; all of a member's at most [`MAX_MEMBER_ATTRIBUTES_BYTES`].
    pub async fn set_member_attributes(
        &self,
        app_id: &str,
        id: &str,
        user: &str,
        changes: &Map<String, Value>,
    ) -> Result<Map<String, Value>> {
        if let Some((key, _)) = changes.iter().find(|(_, v)| !v.is_string()) {
            return Err(Error::invalid("metaData", format!("value of '{key}' must be a string")));
        }
        let mut attributes = self.member_attributes(app_id, id, user).await?;
        for (key, value) in changes {
            if value.as_str() == Some("") {
                attributes.remove(key);
            } else {
                attributes.insert(key.clone(), value.clone());
            }
        }
        let text = Value::Object(attributes.clone()).to_string();
        if text.len() > MAX_MEMBER_ATTRIBUTES_BYTES {
            return Err(Error::invalid(
                "metaData",
                format!("a member's attributes take at most {MAX_MEMBER_ATTRIBUTES_BYTES} bytes"),
            ));
        }
        sqlx::query(
            "UPDATE channel_members SET attributes = $1 WHERE channel_id = $2 AND app_id = $3 AND username = $4",
        )
        .bind(text)
        .bind(id)
        .bind(app_id)
        .bind(user)
        .execute(&self.pool)
        .await?;
        Ok(attributes)
    }

    /// Sets chatroom attributes as `user` (who must be a member; the caller checks): new
    /// keys, and keys `user` set before, or any key with `forced` (it then becomes
    /// `user`'s).
    pub async fn set_room_attributes(
        &self,
        room: &str,
        user: &str,
        pairs: &Map<String, Value>,
        auto_delete: bool,
        forced: bool,
    ) -> Result<KeysDone> {
        if pairs.is_empty() || pairs.len() > MAX_ROOM_ATTRIBUTES_PER_CALL {
            return Err(Error::invalid(
                "metaData",
                format!("exceed allowed batch size {MAX_ROOM_ATTRIBUTES_PER_CALL}: set 1 to {MAX_ROOM_ATTRIBUTES_PER_CALL} keys"),
            ));
        }
        let mut tx = self.write_tx().await?;
        let existing: Vec<(String, String)> =
            sqlx::query_as("SELECT attr_key, owner FROM room_attributes WHERE room_id = $1")
                .bind(room)
                .fetch_all(&mut *tx)
                .await?;
        let mut count = existing.len();
        let mut outcome = KeysDone::default();
        for (key, value) in pairs {
            let owner = existing.iter().find(|(k, _)| k == key).map(|(_, o)| o.as_str());
            let refusal = if let Err(why) = check_room_key(key) {
                Some(why)
            } else if value.as_str().is_none_or(|v| v.len() > MAX_ROOM_VALUE_BYTES) {
                Some(format!(
                    "the value of '{key}' must be a string of at most {MAX_ROOM_VALUE_BYTES} bytes"
                ))
            } else if owner.is_some_and(|o| o != user) && !forced {
                Some(format!("'{key}' was set by another member"))
            } else if owner.is_none() && count >= MAX_ROOM_ATTRIBUTES {
                Some(format!("the chatroom keeps at most {MAX_ROOM_ATTRIBUTES} attributes"))
            } else {
                None
            };
            if let Some(why) = refusal {
                outcome.refused.insert(key.clone(), why);
                continue;
            }
            if owner.is_none() {
                count += 1;
            }
            sqlx::query(
                "INSERT INTO room_attributes (room_id, attr_key, attr_value, owner, auto_delete, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (room_id, attr_key) DO UPDATE SET attr_value = $3, owner = $4, auto_delete = $5, updated_at = $6",
            )
            .bind(room)
            .bind(key)
            .bind(value.as_str().unwrap_or_default())
            .bind(user)
            .bind(i64::from(auto_delete))
            .bind(crate::now_ms())
            .execute(&mut *tx)
            .await?;
            outcome.done.push(key.clone());
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// Removes chatroom attributes as `user`: those `user` set, or any with `forced`.
    pub async fn remove_room_attributes(
        &self,
        room: &str,
        user: &str,
        keys: &[String],
        forced: bool,
    ) -> Result<KeysDone> {
        if keys.is_empty() || keys.len() > MAX_ROOM_ATTRIBUTES_PER_CALL {
            return Err(Error::invalid(
                "keys",
                format!("exceed allowed batch size {MAX_ROOM_ATTRIBUTES_PER_CALL}: remove 1 to {MAX_ROOM_ATTRIBUTES_PER_CALL} keys"),
            ));
        }
        let mut tx = self.write_tx().await?;
        let mut outcome = KeysDone::default();
        for key in keys {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT owner FROM room_attributes WHERE room_id = $1 AND attr_key = $2")
                    .bind(room)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
            match owner {
                None => {
                    outcome.refused.insert(key.clone(), format!("no attribute '{key}'"));
                }
                Some(owner) if owner != user && !forced => {
                    outcome
                        .refused
                        .insert(key.clone(), format!("'{key}' was set by another member"));
                }
                Some(_) => {
                    sqlx::query("DELETE FROM room_attributes WHERE room_id = $1 AND attr_key = $2")
                        .bind(room)
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                    outcome.done.push(key.clone());
                }
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// A chatroom's attributes (`keys` empty: all of them).
    pub async fn room_attributes(&self, room: &str, keys: &[String]) -> Result<Map<String, Value>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT attr_key, attr_value FROM room_attributes WHERE room_id = $1 ORDER BY attr_key")
                .bind(room)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter(|(k, _)| keys.is_empty() || keys.contains(k))
            .map(|(k, v)| (k, Value::String(v)))
            .collect())
    }
}
