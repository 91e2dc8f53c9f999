//! Users of an app: username (unique within the app), password hash, nickname and
//! metadata (a small object of string values), the head of their inbox, and their token
//! generation: a random number given at creation and replaced on revocation, carried in
//! every user token (`ver`) and compared by the API and the gate, so a token outlives
//! neither its user nor a revocation.
//!
//! A user also has a `uuid` (the platform's entity id, given at creation) and may be
//! deactivated: a deactivated user gets no token and their old tokens are revoked, so
//! neither REST nor MQTT lets them in until they are activated again. A user may be created
//! without a password: such a user gets tokens only through the app (`inherit`).

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::Row;

use crate::error::{Error, Result};
use crate::tokens::{hash_secret_async, verify_secret_async};
use crate::Store;

/// The most bytes a user's metadata may take, serialised.
pub const MAX_METADATA_BYTES: usize = 4096;
/// The longest nickname, in characters.
pub const MAX_NICKNAME_CHARS: usize = 100;

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// The platform's entity id of the user (a UUID, given at creation).
    pub uuid: String,
    /// Always `"user"`: the platform's entity type.
    #[serde(rename = "type")]
    pub entity_type: &'static str,
    pub username: String,
    /// False while the user is deactivated.
    pub activated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    pub metadata: Map<String, Value>,
    pub created: i64,
    pub modified: i64,
    /// The chatfile id of the user's avatar, empty for none (the API answers its URLs).
    #[serde(skip)]
    pub avatar_file: String,
}

/// What is needed to create a user.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    /// Empty: no password (tokens only through the app).
    pub password: String,
    pub nickname: Option<String>,
}

/// A change to a user's profile; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub nickname: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

/// A fresh token generation: random and positive (0 is what users created before
/// generations existed have, and what their old tokens carry).
fn new_token_generation() -> i64 {
    (rand::random::<i64>() & i64::MAX).max(1)
}

fn validate_nickname(nickname: &Option<String>) -> Result<()> {
    match nickname {
        Some(n) if n.chars().count() > MAX_NICKNAME_CHARS => Err(Error::invalid(
            "nickname",
            format!("at most {MAX_NICKNAME_CHARS} characters"),
        )),
        _ => Ok(()),
    }
}

fn validate_metadata(metadata: &Map<String, Value>) -> Result<String> {
    if let Some((key, _)) = metadata.iter().find(|(_, v)| !v.is_string()) {
        return Err(Error::invalid("metadata", format!("value of '{key}' must be a string")));
    }
    let text = serde_json::to_string(metadata).map_err(|e| Error::Internal(e.to_string()))?;
    if text.len() > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!("at most {MAX_METADATA_BYTES} bytes"),
        ));
    }
    Ok(text)
}

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<User> {
    let metadata: String = row.try_get("metadata")?;
    let activated: i64 = row.try_get("activated")?;
    Ok(User {
        uuid: row.try_get("uuid")?,
        entity_type: "user",
        activated: activated != 0,
        username: row.try_get("username")?,
        nickname: row.try_get("nickname")?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        created: row.try_get("created_at")?,
        modified: row.try_get("updated_at")?,
        avatar_file: row.try_get("avatar")?,
    })
}

const USER_COLUMNS: &str = "uuid, username, activated, nickname, metadata, created_at, updated_at, avatar";

impl Store {
    /// Creates users, all or none. Usernames must be valid and new; the error names the
    /// first one that is not.
    pub async fn create_users(&self, app_id: &str, users: &[NewUser]) -> Result<Vec<User>> {
        let mut seen = std::collections::HashSet::new();
        for u in users {
            crate::names::validate_name("username", &u.username)?;
            if u.password.len() > 128 {
                return Err(Error::invalid("password", "must be at most 128 bytes"));
            }
            validate_nickname(&u.nickname)?;
            if !seen.insert(&u.username) {
                return Err(Error::Conflict(format!("user {} (twice in the request)", u.username)));
            }
        }
        // Hash outside the transaction: argon2 is slow on purpose.
        let mut hashes = Vec::with_capacity(users.len());
        for u in users {
            hashes.push(match u.password.is_empty() {
                true => String::new(),
                false => hash_secret_async(u.password.clone()).await?,
            });
        }
        let now = crate::now_ms();
        let uuids: Vec<String> = users.iter().map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let mut tx = self.write_tx().await?;
        for ((u, hash), uuid) in users.iter().zip(&hashes).zip(&uuids) {
            let inserted = sqlx::query(
                "INSERT INTO users (app_id, username, password_hash, nickname, metadata, inbox_seq, created_at, updated_at, token_generation, uuid)
                 VALUES ($1, $2, $3, $4, '{}', 0, $5, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(app_id)
            .bind(&u.username)
            .bind(hash)
            .bind(&u.nickname)
            .bind(now)
            .bind(new_token_generation())
            .bind(uuid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(Error::Conflict(format!("user {}", u.username)));
            }
        }
        tx.commit().await?;
        Ok(users
            .iter()
            .zip(uuids)
            .map(|(u, uuid)| User {
                uuid,
                entity_type: "user",
                activated: true,
                username: u.username.clone(),
                nickname: u.nickname.clone(),
                metadata: Map::new(),
                created: now,
                modified: now,
                avatar_file: String::new(),
            })
            .collect())
    }

    pub async fn get_user(&self, app_id: &str, username: &str) -> Result<User> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND username = $2"
        ))
        .bind(app_id)
        .bind(username)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("user {username}")))?;
        user_from_row(&row)
    }

    /// The user's token generation (what their valid tokens carry as `ver`), or `None` if
    /// there is no such user. The API and the gate both check user tokens with it.
    /// (Deactivation replaces it, so no older token passes this check.)
    pub async fn user_token_generation(&self, app_id: &str, username: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT token_generation FROM users WHERE app_id = $1 AND username = $2")
                .bind(app_id)
                .bind(username)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Deactivates (`false`) or activates a user. Deactivating also revokes every token
    /// issued to them; the caller closes their connections.
    pub async fn set_activated(&self, app_id: &str, username: &str, activated: bool) -> Result<()> {
        let changed = sqlx::query(
            "UPDATE users SET activated = $1, updated_at = $2,
             token_generation = CASE WHEN $1 = 0 THEN $3 ELSE token_generation END
             WHERE app_id = $4 AND username = $5",
        )
        .bind(i64::from(activated))
        .bind(crate::now_ms())
        .bind(new_token_generation())
        .bind(app_id)
        .bind(username)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(Error::NotFound(format!("user {username}")));
        }
        Ok(())
    }

    /// Replaces a user's password (empty: none) and revokes every token issued to them.
    pub async fn set_password(&self, app_id: &str, username: &str, password: &str) -> Result<()> {
        if password.is_empty() || password.len() > 128 {
            return Err(Error::invalid("newpassword", "must be 1-128 bytes"));
        }
        let hash = hash_secret_async(password.to_string()).await?;
        let changed = sqlx::query(
            "UPDATE users SET password_hash = $1, token_generation = $2, updated_at = $3
             WHERE app_id = $4 AND username = $5",
        )
        .bind(hash)
        .bind(new_token_generation())
        .bind(crate::now_ms())
        .bind(app_id)
        .bind(username)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(Error::NotFound(format!("user {username}")));
        }
        Ok(())
    }

    /// Bytes of metadata (attributes) stored for the app's users (empty objects count 0).
    pub async fn metadata_bytes(&self, app_id: &str) -> Result<i64> {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(CASE WHEN metadata = '{}' THEN 0 ELSE LENGTH(metadata) END) AS BIGINT)
             FROM users WHERE app_id = $1",
        )
        .bind(app_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(total.unwrap_or(0))
    }

    /// The first `limit` users by creation (the platform's batch delete takes them in that
    /// order).
    pub async fn oldest_users(&self, app_id: &str, limit: i64) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT username FROM users WHERE app_id = $1 ORDER BY created_at, username LIMIT $2")
                .bind(app_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Gives the user a new token generation, so every token issued to them so far stops
    /// working; returns it.
    pub async fn revoke_user_tokens(&self, app_id: &str, username: &str) -> Result<i64> {
        let generation = new_token_generation();
        let changed =
            sqlx::query("UPDATE users SET token_generation = $1, updated_at = $2 WHERE app_id = $3 AND username = $4")
                .bind(generation)
                .bind(crate::now_ms())
                .bind(app_id)
                .bind(username)
                .execute(&self.pool)
                .await?
                .rows_affected();
        if changed == 0 {
            return Err(Error::NotFound(format!("user {username}")));
        }
        Ok(generation)
    }

    pub async fn user_exists(&self, app_id: &str, username: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT inbox_seq FROM users WHERE app_id = $1 AND username = $2")
            .bind(app_id)
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// A page of users ordered by username, starting after `cursor` (the last username of
    /// the previous page).
    pub async fn list_users(&self, app_id: &str, limit: i64, cursor: Option<&str>) -> Result<Vec<User>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND username > $2
             ORDER BY username LIMIT $3"
        ))
        .bind(app_id)
        .bind(cursor.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    pub async fn update_user(&self, app_id: &str, username: &str, update: UserUpdate) -> Result<User> {
        validate_nickname(&update.nickname)?;
        let metadata = update.metadata.as_ref().map(validate_metadata).transpose()?;
        let changed = sqlx::query(
            "UPDATE users SET nickname = COALESCE($1, nickname), metadata = COALESCE($2, metadata),
             updated_at = $3 WHERE app_id = $4 AND username = $5",
        )
        .bind(&update.nickname)
        .bind(&metadata)
        .bind(crate::now_ms())
        .bind(app_id)
        .bind(username)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(Error::NotFound(format!("user {username}")));
        }
        self.get_user(app_id, username).await
    }

    /// Deletes a user with their inbox, conversation list, contacts, blocklist and
    /// memberships. Messages they exchanged stay in their peers' history.
    pub async fn delete_user(&self, app_id: &str, username: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let deleted = sqlx::query("DELETE FROM users WHERE app_id = $1 AND username = $2")
            .bind(app_id)
            .bind(username)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(Error::NotFound(format!("user {username}")));
        }
        crate::files::release_refs(&mut tx, &crate::files::avatar_holder(app_id, username)).await?;
        // Their files stay for the messages that carry them, but are nobody's now: a user
        // created later under the same name must not read or count them. Unfinished uploads
        // are left to the sweeper (it deletes their parts) by marking them long untouched.
        sqlx::query("UPDATE chatfiles SET owner = '', released_at = $1 WHERE app_id = $2 AND owner = $3")
            .bind(crate::now_ms())
            .bind(app_id)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE uploads SET owner = '', updated_at = 0 WHERE app_id = $1 AND owner = $2")
            .bind(app_id)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        for table in [
            "inbox",
            "user_conversations",
            "hidden_messages",
            "contacts",
            "blocks",
            "channel_members",
        ] {
            let owner = if matches!(table, "contacts" | "blocks") {
                "owner"
            } else {
                "username"
            };
            sqlx::query(&format!("DELETE FROM {table} WHERE app_id = $1 AND {owner} = $2"))
                .bind(app_id)
                .bind(username)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "DELETE FROM room_attributes WHERE owner = $2 AND auto_delete = 1
             AND room_id IN (SELECT id FROM channels WHERE app_id = $1)",
        )
        .bind(app_id)
        .bind(username)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM contacts WHERE app_id = $1 AND friend = $2")
            .bind(app_id)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks a user's password (for the password grant). An unknown user costs the same
    /// argon2 verification as a known one (against a dummy hash), so the time taken does not
    /// say whether the username exists.
    pub async fn check_password(&self, app_id: &str, username: &str, password: &str) -> Result<()> {
        let found: Option<(String, i64)> =
            sqlx::query_as("SELECT password_hash, activated FROM users WHERE app_id = $1 AND username = $2")
                .bind(app_id)
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        // A user without a password is checked against the dummy hash like an unknown one.
        let (hash, activated) = match found {
            Some((hash, activated)) if !hash.is_empty() => (Some(hash), activated != 0),
            _ => (None, true),
        };
        if verify_secret_async(password.to_string(), hash).await? {
            if !activated {
                return Err(Error::Forbidden(format!("user {username} is deactivated")));
            }
            Ok(())
        } else {
            Err(Error::BadCredentials)
        }
    }
}
