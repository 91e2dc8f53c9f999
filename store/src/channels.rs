//! Groups and chatrooms, stored alike as *channels*: an owner, admins and members, mutes
//! (per member with an end time, or everyone at once), a blocklist of banned users, and
//! pending join requests and invitations (groups only).
//!
//! What differs is delivery: a group message is stored once and indexed in every member's
//! inbox (so members catch up on it), while a chatroom keeps only a bounded recent history
//! and is delivered by the broker to whoever is subscribed at the time.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Group,
    Room,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Group => "group",
            ChannelKind::Room => "room",
        }
    }

    /// How users name it: "group" or "chatroom".
    pub fn noun(self) -> &'static str {
        match self {
            ChannelKind::Group => "group",
            ChannelKind::Room => "chatroom",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    fn parse(s: &str) -> Role {
        match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            _ => Role::Member,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

/// A group or chatroom as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Channel {
    pub id: String,
    #[serde(skip)]
    pub kind: ChannelKind,
    pub name: String,
    pub description: String,
    pub public: bool,
    /// Public groups: joining needs an admin's approval.
    pub members_only: bool,
    /// Groups: ordinary members may invite.
    pub allow_invites: bool,
    pub max_members: i64,
    pub owner: String,
    pub announcement: String,
    pub muted_all: bool,
    /// The app's own data about the channel (the platform's `custom`), at most 1 KiB.
    pub custom: String,
    /// The URL of the group's picture (an http(s) URL the app chose), or empty.
    pub avatar: String,
    /// Disabled by the app: nobody sends or joins until it is enabled again.
    pub disabled: bool,
    pub member_count: i64,
    pub created: i64,
    pub modified: i64,
}

/// A member and their standing.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub username: String,
    pub role: Role,
    /// Muted until this time (ms); 0 when not muted, `i64::MAX` for ever.
    pub muted_until: i64,
    pub joined: i64,
    /// On the allow list: may speak while everyone is muted.
    pub allowlisted: bool,
}

impl Member {
    pub fn is_muted(&self, now: i64) -> bool {
        self.muted_until > now
    }
}

/// What is needed to create a group or chatroom.
#[derive(Debug, Clone)]
pub struct NewChannel {
    pub kind: ChannelKind,
    pub name: String,
    pub description: String,
    pub public: bool,
    pub members_only: bool,
    pub allow_invites: bool,
    pub max_members: i64,
    pub owner: String,
    pub members: Vec<String>,
    pub custom: String,
    pub avatar: String,
}

/// A change to a group or chatroom; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ChannelUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub public: Option<bool>,
    pub members_only: Option<bool>,
    pub allow_invites: Option<bool>,
    pub max_members: Option<i64>,
    pub announcement: Option<String>,
    pub muted_all: Option<bool>,
    pub custom: Option<String>,
    pub avatar: Option<String>,
    pub disabled: Option<bool>,
}

/// Pending requests to join, and invitations (groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Join,
    Invite,
}

impl RequestKind {
    fn as_str(self) -> &'static str {
        match self {
            RequestKind::Join => "join",
            RequestKind::Invite => "invite",
        }
    }
}

/// Why a member may not send to a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

const NAME_MAX: usize = 128;
const DESCRIPTION_MAX: usize = 512;
const ANNOUNCEMENT_MAX: usize = 2048;
const CUSTOM_MAX: usize = 1024;

/// A group's picture: empty, or an http(s) URL of at most 1 KiB (shown to members, never
/// fetched by the server).
fn check_avatar(url: &str) -> Result<()> {
    check_len("avatar", url, CUSTOM_MAX, false)?;
    if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
        return Err(Error::invalid("avatar", "must be an http(s) URL"));
    }
    Ok(())
}

const CHANNEL_COLUMNS: &str = "c.id, c.kind, c.name, c.description, c.public, c.members_only, c.allow_invites,
    c.max_members, c.owner, c.announcement, c.muted_all, c.custom, c.avatar, c.disabled, c.created_at, c.updated_at,
    (SELECT COUNT(*) FROM channel_members m WHERE m.channel_id = c.id) AS member_count";

fn channel_from_row(row: &AnyRow) -> Result<Channel> {
    let kind: String = row.try_get("kind")?;
    Ok(Channel {
        id: row.try_get("id")?,
        kind: if kind == "room" {
            ChannelKind::Room
        } else {
            ChannelKind::Group
        },
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        public: row.try_get::<i64, _>("public")? != 0,
        members_only: row.try_get::<i64, _>("members_only")? != 0,
        allow_invites: row.try_get::<i64, _>("allow_invites")? != 0,
        max_members: row.try_get("max_members")?,
        owner: row.try_get("owner")?,
        announcement: row.try_get("announcement")?,
        muted_all: row.try_get::<i64, _>("muted_all")? != 0,
        custom: row.try_get("custom")?,
        avatar: row.try_get("avatar")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        member_count: row.try_get("member_count")?,
        created: row.try_get("created_at")?,
        modified: row.try_get("updated_at")?,
    })
}

fn member_from_row(row: &AnyRow) -> Result<Member> {
    Ok(Member {
        username: row.try_get("username")?,
        role: Role::parse(&row.try_get::<String, _>("role")?),
        muted_until: row.try_get("muted_until")?,
        joined: row.try_get("joined_at")?,
        allowlisted: row.try_get::<i64, _>("allowlisted")? != 0,
    })
}

fn check_len(field: &str, value: &str, max: usize, required: bool) -> Result<()> {
    if required && value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(Error::invalid(field, format!("at most {max} characters")));
    }
    Ok(())
}

impl Store {
    /// Creates a group or chatroom with its owner and initial members.
    pub async fn create_channel(&self, app_id: &str, new: NewChannel, limit: i64) -> Result<Channel> {
        check_len("name", &new.name, NAME_MAX, true)?;
        check_len("description", &new.description, DESCRIPTION_MAX, false)?;
        check_len("custom", &new.custom, CUSTOM_MAX, false)?;
        check_avatar(&new.avatar)?;
        if new.max_members < 2 || new.max_members > limit {
            return Err(Error::invalid("maxusers", format!("must be from 2 to {limit}")));
        }
        let mut members: Vec<&str> = new
            .members
            .iter()
            .map(String::as_str)
            .filter(|m| *m != new.owner)
            .collect();
        members.sort_unstable();
        members.dedup();
        if members.len() as i64 + 1 > new.max_members {
            return Err(Error::invalid(
                "members",
                format!("more than maxusers ({})", new.max_members),
            ));
        }
        let mut everyone = members.clone();
        everyone.push(&new.owner);
        self.require_users(app_id, &everyone).await?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let now = crate::now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO channels (id, app_id, kind, name, description, public, members_only, allow_invites,
             max_members, owner, announcement, muted_all, last_seq, created_at, updated_at, custom, avatar)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, '', 0, 0, $11, $11, $12, $13)",
        )
        .bind(&id)
        .bind(app_id)
        .bind(new.kind.as_str())
        .bind(&new.name)
        .bind(&new.description)
        .bind(new.public as i64)
        .bind(new.members_only as i64)
        .bind(new.allow_invites as i64)
        .bind(new.max_members)
        .bind(&new.owner)
        .bind(now)
        .bind(&new.custom)
        .bind(&new.avatar)
        .execute(&mut *tx)
        .await?;
        for (user, role) in
            std::iter::once((new.owner.as_str(), Role::Owner)).chain(members.iter().map(|m| (*m, Role::Member)))
        {
            insert_member(&mut tx, &id, app_id, user, role, now).await?;
        }
        tx.commit().await?;
        self.channel(app_id, new.kind, &id).await
    }

    pub async fn channel(&self, app_id: &str, kind: ChannelKind, id: &str) -> Result<Channel> {
        let row = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels c WHERE c.id = $1 AND c.app_id = $2 AND c.kind = $3"
        ))
        .bind(id)
        .bind(app_id)
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{} {id}", kind.noun())))?;
        channel_from_row(&row)
    }

    /// A page of an app's groups or chatrooms, by id, after `cursor`.
    pub async fn list_channels(
        &self,
        app_id: &str,
        kind: ChannelKind,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Vec<Channel>> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels c WHERE c.app_id = $1 AND c.kind = $2 AND c.id > $3 ORDER BY c.id LIMIT $4"
        ))
        .bind(app_id)
        .bind(kind.as_str())
        .bind(cursor.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(channel_from_row).collect()
    }

    /// The groups or chatrooms a user belongs to.
    pub async fn user_channels(&self, app_id: &str, kind: ChannelKind, user: &str) -> Result<Vec<Channel>> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels c JOIN channel_members j ON j.channel_id = c.id
             WHERE j.app_id = $1 AND j.username = $2 AND c.kind = $3 ORDER BY c.id"
        ))
        .bind(app_id)
        .bind(user)
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(channel_from_row).collect()
    }

    pub async fn update_channel(
        &self,
        app_id: &str,
        kind: ChannelKind,
        id: &str,
        update: ChannelUpdate,
        limit: i64,
    ) -> Result<Channel> {
        let current = self.channel(app_id, kind, id).await?;
        if let Some(name) = &update.name {
            check_len("name", name, NAME_MAX, true)?;
        }
        if let Some(description) = &update.description {
            check_len("description", description, DESCRIPTION_MAX, false)?;
        }
        if let Some(announcement) = &update.announcement {
            check_len("announcement", announcement, ANNOUNCEMENT_MAX, false)?;
        }
        if let Some(custom) = &update.custom {
            check_len("custom", custom, CUSTOM_MAX, false)?;
        }
        if let Some(avatar) = &update.avatar {
            check_avatar(avatar)?;
        }
        if let Some(max) = update.max_members {
            if max < current.member_count.max(2) || max > limit {
                return Err(Error::invalid(
                    "maxusers",
                    format!("must be from {} to {limit}", current.member_count.max(2)),
                ));
            }
        }
        let flag = |v: Option<bool>| v.map(i64::from);
        sqlx::query(
            "UPDATE channels SET name = COALESCE($1, name), description = COALESCE($2, description),
             public = COALESCE($3, public), members_only = COALESCE($4, members_only),
             allow_invites = COALESCE($5, allow_invites), max_members = COALESCE($6, max_members),
             announcement = COALESCE($7, announcement), muted_all = COALESCE($8, muted_all), updated_at = $9,
             custom = COALESCE($11, custom), avatar = COALESCE($12, avatar),
             disabled = COALESCE($13, disabled)
             WHERE id = $10",
        )
        .bind(&update.name)
        .bind(&update.description)
        .bind(flag(update.public))
        .bind(flag(update.members_only))
        .bind(flag(update.allow_invites))
        .bind(update.max_members)
        .bind(&update.announcement)
        .bind(flag(update.muted_all))
        .bind(crate::now_ms())
        .bind(id)
        .bind(&update.custom)
        .bind(&update.avatar)
        .bind(flag(update.disabled))
        .execute(&self.pool)
        .await?;
        self.channel(app_id, kind, id).await
    }

    /// Dissolves a group or chatroom; returns who were its members.
    pub async fn delete_channel(&self, app_id: &str, kind: ChannelKind, id: &str) -> Result<Vec<String>> {
        let members: Vec<String> = self
            .members(app_id, kind, id)
            .await?
            .into_iter()
            .map(|m| m.username)
            .collect();
        let mut tx = self.write_tx().await?;
        for table in ["channel_members", "channel_bans", "channel_requests"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE channel_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM user_conversations WHERE app_id = $1 AND conv = $2")
            .bind(app_id)
            .bind(format!("g:{id}"))
            .execute(&mut *tx)
            .await?;
        for table in ["room_messages", "room_attributes"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE room_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        // A group's shared files go with it (the sweeper removes those nothing else uses).
        sqlx::query(
            "UPDATE chatfiles SET released_at = $1 WHERE id IN
             (SELECT file_id FROM chatfile_refs WHERE room = $2 AND holder LIKE 'share:%')",
        )
        .bind(crate::now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM chatfile_refs WHERE room = $1 AND holder LIKE 'share:%'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM channels WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(members)
    }

    pub async fn members(&self, app_id: &str, kind: ChannelKind, id: &str) -> Result<Vec<Member>> {
        self.channel(app_id, kind, id).await?;
        let rows = sqlx::query(
            "SELECT username, role, muted_until, joined_at, allowlisted FROM channel_members WHERE channel_id = $1
             ORDER BY CASE role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 ELSE 2 END, username",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    /// One member of a channel of this app, if they are one.
    pub async fn member(&self, app_id: &str, id: &str, user: &str) -> Result<Option<Member>> {
        let row = sqlx::query(
            "SELECT username, role, muted_until, joined_at, allowlisted FROM channel_members WHERE channel_id = $1 AND app_id = $2 AND username = $3",
        )
        .bind(id)
        .bind(app_id)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(member_from_row).transpose()
    }

    /// Adds members; skips those already in. Banned users and a full channel are refused.
    pub async fn add_members(
        &self,
        app_id: &str,
        kind: ChannelKind,
        id: &str,
        users: &[String],
    ) -> Result<Vec<String>> {
        let channel = self.channel(app_id, kind, id).await?;
        if channel.disabled {
            return Err(Error::Forbidden(format!("this {} is disabled", kind.noun())));
        }
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        self.require_users(app_id, &refs).await?;
        let mut tx = self.write_tx().await?;
        let mut added = Vec::new();
        for user in users {
            let banned: Option<String> =
                sqlx::query_scalar("SELECT username FROM channel_bans WHERE channel_id = $1 AND username = $2")
                    .bind(id)
                    .bind(user)
                    .fetch_optional(&mut *tx)
                    .await?;
            if banned.is_some() {
                return Err(Error::Forbidden(format!(
                    "{user} is on the {}'s blocklist",
                    kind.noun()
                )));
            }
            let inserted = insert_member(&mut tx, id, app_id, user, Role::Member, crate::now_ms()).await?;
            if inserted {
                added.push(user.clone());
            }
        }
        if channel.member_count + added.len() as i64 > channel.max_members {
            return Err(Error::Forbidden(format!(
                "the {} is full ({} members)",
                kind.noun(),
                channel.max_members
            )));
        }
        for user in &added {
            sqlx::query("DELETE FROM channel_requests WHERE channel_id = $1 AND username = $2")
                .bind(id)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Removes a member (leaving, or removed by an admin). The owner cannot be removed.
    pub async fn remove_member(&self, app_id: &str, kind: ChannelKind, id: &str, user: &str) -> Result<()> {
        let channel = self.channel(app_id, kind, id).await?;
        if channel.owner == user {
            return Err(Error::Forbidden(format!(
                "the owner cannot leave the {}; transfer ownership first",
                kind.noun()
            )));
        }
        let mut tx = self.write_tx().await?;
        if !remove_membership(&mut tx, app_id, id, user).await? {
            return Err(Error::NotFound(format!("member {user}")));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes a member an admin or an ordinary member again.
    pub async fn set_role(&self, app_id: &str, kind: ChannelKind, id: &str, user: &str, role: Role) -> Result<()> {
        let member = self
            .member(app_id, id, user)
            .await?
            .ok_or_else(|| Error::NotFound(format!("member {user}")))?;
        self.channel(app_id, kind, id).await?;
        if member.role == Role::Owner {
            return Err(Error::Forbidden(
                "the owner's role changes only by transferring ownership".into(),
            ));
        }
        sqlx::query("UPDATE channel_members SET role = $1 WHERE channel_id = $2 AND username = $3")
            .bind(role.as_str())
            .bind(id)
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Hands ownership to a member; the old owner stays as an admin.
    pub async fn transfer_owner(&self, app_id: &str, kind: ChannelKind, id: &str, new_owner: &str) -> Result<String> {
        let channel = self.channel(app_id, kind, id).await?;
        self.member(app_id, id, new_owner)
            .await?
            .ok_or_else(|| Error::invalid("newowner", format!("{new_owner} is not a member")))?;
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE channel_members SET role = 'admin' WHERE channel_id = $1 AND username = $2")
            .bind(id)
            .bind(&channel.owner)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE channel_members SET role = 'owner', muted_until = 0 WHERE channel_id = $1 AND username = $2",
        )
        .bind(id)
        .bind(new_owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE channels SET owner = $1, updated_at = $2 WHERE id = $3")
            .bind(new_owner)
            .bind(crate::now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(channel.owner)
    }

    /// Mutes members until `until` (ms), or unmutes them with `until` = 0.
    pub async fn set_muted(
        &self,
        app_id: &str,
        kind: ChannelKind,
        id: &str,
        users: &[String],
        until: i64,
    ) -> Result<()> {
        self.channel(app_id, kind, id).await?;
        for user in users {
            let member = self
                .member(app_id, id, user)
                .await?
                .ok_or_else(|| Error::NotFound(format!("member {user}")))?;
            if until > 0 && member.role == Role::Owner {
                return Err(Error::Forbidden("the owner cannot be muted".into()));
            }
        }
        for user in users {
            sqlx::query("UPDATE channel_members SET muted_until = $1 WHERE channel_id = $2 AND username = $3")
                .bind(until)
                .bind(id)
                .bind(user)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Bans users: removes them if they are members, and keeps them out.
    pub async fn ban(&self, app_id: &str, kind: ChannelKind, id: &str, users: &[String]) -> Result<()> {
        let channel = self.channel(app_id, kind, id).await?;
        if users.contains(&channel.owner) {
            return Err(Error::Forbidden("the owner cannot be banned".into()));
        }
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        self.require_users(app_id, &refs).await?;
        let mut tx = self.write_tx().await?;
        for user in users {
            remove_membership(&mut tx, app_id, id, user).await?;
            sqlx::query("INSERT INTO channel_bans (channel_id, username, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(id)
                .bind(user)
                .bind(crate::now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn unban(&self, app_id: &str, kind: ChannelKind, id: &str, user: &str) -> Result<()> {
        self.channel(app_id, kind, id).await?;
        let removed = sqlx::query("DELETE FROM channel_bans WHERE channel_id = $1 AND username = $2")
            .bind(id)
            .bind(user)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(Error::NotFound(format!("{user} in the blocklist")));
        }
        Ok(())
    }

    pub async fn bans(&self, app_id: &str, kind: ChannelKind, id: &str) -> Result<Vec<String>> {
        self.channel(app_id, kind, id).await?;
        Ok(
            sqlx::query_scalar("SELECT username FROM channel_bans WHERE channel_id = $1 ORDER BY username")
                .bind(id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn is_banned(&self, id: &str, user: &str) -> Result<bool> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT username FROM channel_bans WHERE channel_id = $1 AND username = $2")
                .bind(id)
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Records a join request or an invitation.
    pub async fn add_request(&self, id: &str, user: &str, kind: RequestKind, by: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO channel_requests (channel_id, username, kind, by_user, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(user)
        .bind(kind.as_str())
        .bind(by)
        .bind(crate::now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a pending request; false if there was none.
    pub async fn take_request(&self, id: &str, user: &str, kind: RequestKind) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM channel_requests WHERE channel_id = $1 AND username = $2 AND kind = $3")
                .bind(id)
                .bind(user)
                .bind(kind.as_str())
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    pub async fn requests(&self, id: &str, kind: RequestKind) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT username FROM channel_requests WHERE channel_id = $1 AND kind = $2 ORDER BY created_at, username",
        )
        .bind(id)
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    /// The channel's admins and owner (who hear about join requests).
    pub async fn managers(&self, id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT username FROM channel_members WHERE channel_id = $1 AND role <> 'member' ORDER BY username",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether `user` may send to the channel now: a member, not banned, not muted (and
    /// not silenced by mute-all unless an admin or the owner).
    pub async fn check_sender(
        &self,
        app_id: &str,
        kind: ChannelKind,
        id: &str,
        user: &str,
    ) -> Result<std::result::Result<Channel, Refusal>> {
        let channel = match self.channel(app_id, kind, id).await {
            Ok(c) => c,
            Err(Error::NotFound(what)) => {
                return Ok(Err(Refusal {
                    code: "not_found",
                    message: format!("no {what}"),
                }))
            }
            Err(e) => return Err(e),
        };
        if channel.disabled {
            return Ok(Err(Refusal {
                code: "disabled",
                message: format!("this {} is disabled", kind.noun()),
            }));
        }
        if self.is_banned(id, user).await? {
            return Ok(Err(Refusal {
                code: "banned",
                message: format!("you are on this {}'s blocklist", kind.noun()),
            }));
        }
        let Some(member) = self.member(app_id, id, user).await? else {
            return Ok(Err(Refusal {
                code: "not_member",
                message: format!("you are not a member of this {}", kind.noun()),
            }));
        };
        if member.is_muted(crate::now_ms()) {
            return Ok(Err(Refusal {
                code: "muted",
                message: format!("you are muted in this {}", kind.noun()),
            }));
        }
        if channel.muted_all && member.role == Role::Member && !member.allowlisted {
            return Ok(Err(Refusal {
                code: "muted",
                message: format!("everyone but admins is muted in this {}", kind.noun()),
            }));
        }
        Ok(Ok(channel))
    }
}

/// Ends a membership, and takes a group out of the user's conversation list (else its
/// unread count would grow for ever); false if the user was not a member.
async fn remove_membership(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    app_id: &str,
    id: &str,
    user: &str,
) -> Result<bool> {
    let removed = sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND username = $2")
        .bind(id)
        .bind(user)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    // A chatroom's attributes set to go with their owner (`attributes`).
    sqlx::query("DELETE FROM room_attributes WHERE room_id = $1 AND owner = $2 AND auto_delete = 1")
        .bind(id)
        .bind(user)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM user_conversations WHERE app_id = $1 AND username = $2 AND conv = $3")
        .bind(app_id)
        .bind(user)
        .bind(format!("g:{id}"))
        .execute(&mut **tx)
        .await?;
    Ok(removed > 0)
}

/// Inserts a membership row; false if the user was already a member. A group member also
/// gets the group in their conversation list, with everything before their arrival read.
async fn insert_member(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    id: &str,
    app_id: &str,
    user: &str,
    role: Role,
    now: i64,
) -> Result<bool> {
    let conv = format!("g:{id}");
    sqlx::query(
        "INSERT INTO user_conversations (app_id, username, conv, read_seq, delivered_seq)
         SELECT $1, $2, $3, COALESCE(MAX(c.last_seq), 0), COALESCE(MAX(c.last_seq), 0)
         FROM channels ch LEFT JOIN conversations c ON c.app_id = ch.app_id AND c.conv = $3
         WHERE ch.id = $4 AND ch.kind = 'group'
         HAVING COUNT(ch.id) > 0
         ON CONFLICT DO NOTHING",
    )
    .bind(app_id)
    .bind(user)
    .bind(&conv)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(sqlx::query(
        "INSERT INTO channel_members (channel_id, app_id, username, role, muted_until, joined_at) VALUES ($1, $2, $3, $4, 0, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(app_id)
    .bind(user)
    .bind(role.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0)
}
