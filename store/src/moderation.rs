//! The app's moderation beyond one channel: global mutes (a user may not send one-to-one,
//! group or chatroom messages until a time), channel allow lists (members who may speak
//! while everyone is muted) and who may create chatrooms (the platform's chatroom super
//! admins).
//!
//! Global mutes live on the user's row, so the checks on the send path read them with the
//! rows they read anyway (one-to-one: the participants query of a batch; groups and
//! chatrooms: one indexed read per message). They bind devices only: what the app sends
//! over REST in a user's name is the app's decision.

use serde::Serialize;

use crate::channels::ChannelKind;
use crate::error::{Error, Result};
use crate::Store;

/// Where a user is muted, each until a time in ms (0: not muted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GlobalMute {
    pub chat: i64,
    pub groupchat: i64,
    pub chatroom: i64,
}

impl GlobalMute {
    /// Muted for one-to-one (`"user"`), group or chatroom messages at `now`.
    pub fn mutes(&self, chat: &str, now: i64) -> bool {
        let until = match chat {
            "group" => self.groupchat,
            "room" => self.chatroom,
            _ => self.chat,
        };
        until > now
    }
}

impl Store {
    /// Sets a user's global mutes; `None` leaves one as it is, `Some(0)` lifts it.
    pub async fn set_global_mute(
        &self,
        app_id: &str,
        user: &str,
        chat: Option<i64>,
        groupchat: Option<i64>,
        chatroom: Option<i64>,
    ) -> Result<()> {
        let changed = sqlx::query(
            "UPDATE users SET mute_chat_until = COALESCE($1, mute_chat_until),
             mute_groupchat_until = COALESCE($2, mute_groupchat_until),
             mute_chatroom_until = COALESCE($3, mute_chatroom_until)
             WHERE app_id = $4 AND username = $5",
        )
        .bind(chat)
        .bind(groupchat)
        .bind(chatroom)
        .bind(app_id)
        .bind(user)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(Error::NotFound(format!("user {user}")));
        }
        Ok(())
    }

    pub async fn global_mute(&self, app_id: &str, user: &str) -> Result<GlobalMute> {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT mute_chat_until, mute_groupchat_until, mute_chatroom_until FROM users
             WHERE app_id = $1 AND username = $2",
        )
        .bind(app_id)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        let (chat, groupchat, chatroom) = row.ok_or_else(|| Error::NotFound(format!("user {user}")))?;
        Ok(GlobalMute {
            chat,
            groupchat,
            chatroom,
        })
    }

    /// A page of the users muted anywhere at `now`, by name.
    pub async fn globally_muted(
        &self,
        app_id: &str,
        now: i64,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<(String, GlobalMute)>> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT username, mute_chat_until, mute_groupchat_until, mute_chatroom_until FROM users
             WHERE app_id = $1 AND (mute_chat_until > $2 OR mute_groupchat_until > $2 OR mute_chatroom_until > $2)
             ORDER BY username LIMIT $3 OFFSET $4",
        )
        .bind(app_id)
        .bind(now)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user, chat, groupchat, chatroom)| {
                (
                    user,
                    GlobalMute {
                        chat,
                        groupchat,
                        chatroom,
                    },
                )
            })
            .collect())
    }

    /// Puts members on (or takes them off) a channel's allow list; answers, for each user,
    /// whether they are a member (only members can be on it).
    pub async fn set_allowlisted(
        &self,
        app_id: &str,
        kind: ChannelKind,
        id: &str,
        users: &[String],
        on: bool,
    ) -> Result<Vec<bool>> {
        self.channel(app_id, kind, id).await?;
        let mut done = Vec::with_capacity(users.len());
        for user in users {
            let changed = sqlx::query(
                "UPDATE channel_members SET allowlisted = $1 WHERE channel_id = $2 AND app_id = $3 AND username = $4",
            )
            .bind(i64::from(on))
            .bind(id)
            .bind(app_id)
            .bind(user)
            .execute(&self.pool)
            .await?
            .rows_affected();
            done.push(changed > 0);
        }
        Ok(done)
    }

    /// Who may create chatrooms with a user token. Empty: every user may.
    pub async fn room_creators(&self, app_id: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT username FROM room_creators WHERE app_id = $1 ORDER BY created_at, username")
                .bind(app_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn add_room_creator(&self, app_id: &str, user: &str) -> Result<()> {
        self.require_users(app_id, &[user]).await?;
        sqlx::query(
            "INSERT INTO room_creators (app_id, username, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(app_id)
        .bind(user)
        .bind(crate::now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_room_creator(&self, app_id: &str, user: &str) -> Result<()> {
        let removed = sqlx::query("DELETE FROM room_creators WHERE app_id = $1 AND username = $2")
            .bind(app_id)
            .bind(user)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(Error::NotFound(format!("chatroom super admin {user}")));
        }
        Ok(())
    }

    /// Whether `user` may create a chatroom: when the app names its room creators, only
    /// they may.
    pub async fn may_create_rooms(&self, app_id: &str, user: &str) -> Result<bool> {
        let creators = self.room_creators(app_id).await?;
        Ok(creators.is_empty() || creators.iter().any(|c| c == user))
    }
}
