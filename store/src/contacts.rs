//! Contacts (mutual: adding makes both users each other's contact) and blocklists (one-way:
//! the owner stops receiving the blocked user's messages and hides presence from them).

use crate::error::{Error, Result};
use crate::Store;

/// The most users one block request may name.
pub const MAX_BLOCK_BATCH: usize = 100;

impl Store {
    pub async fn add_contact(&self, app_id: &str, owner: &str, friend: &str) -> Result<()> {
        if owner == friend {
            return Err(Error::invalid("friend", "a user cannot be their own contact"));
        }
        self.require_users(app_id, &[owner, friend]).await?;
        let now = crate::now_ms();
        let mut tx = self.write_tx().await?;
        for (a, b) in [(owner, friend), (friend, owner)] {
            sqlx::query("INSERT INTO contacts (app_id, owner, friend, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(app_id)
                .bind(a)
                .bind(b)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn remove_contact(&self, app_id: &str, owner: &str, friend: &str) -> Result<()> {
        let removed = sqlx::query(
            "DELETE FROM contacts WHERE app_id = $1 AND ((owner = $2 AND friend = $3) OR (owner = $3 AND friend = $2))",
        )
        .bind(app_id)
        .bind(owner)
        .bind(friend)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if removed == 0 {
            return Err(Error::NotFound(format!("contact {friend} of {owner}")));
        }
        Ok(())
    }

    pub async fn contacts(&self, app_id: &str, owner: &str) -> Result<Vec<String>> {
        self.require_users(app_id, &[owner]).await?;
        Ok(
            sqlx::query_scalar("SELECT friend FROM contacts WHERE app_id = $1 AND owner = $2 ORDER BY friend")
                .bind(app_id)
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn are_contacts(&self, app_id: &str, a: &str, b: &str) -> Result<bool> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT friend FROM contacts WHERE app_id = $1 AND owner = $2 AND friend = $3")
                .bind(app_id)
                .bind(a)
                .bind(b)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    pub async fn block_users(&self, app_id: &str, owner: &str, users: &[String]) -> Result<()> {
        if users.is_empty() || users.len() > MAX_BLOCK_BATCH {
            return Err(Error::invalid(
                "usernames",
                format!("name 1 to {MAX_BLOCK_BATCH} users"),
            ));
        }
        if users.iter().any(|u| u == owner) {
            return Err(Error::invalid("usernames", "a user cannot block themselves"));
        }
        let mut all: Vec<&str> = users.iter().map(String::as_str).collect();
        all.push(owner);
        self.require_users(app_id, &all).await?;
        let now = crate::now_ms();
        let mut tx = self.write_tx().await?;
        for user in users {
            sqlx::query("INSERT INTO blocks (app_id, owner, blocked, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(app_id)
                .bind(owner)
                .bind(user)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn unblock_user(&self, app_id: &str, owner: &str, user: &str) -> Result<()> {
        let removed = sqlx::query("DELETE FROM blocks WHERE app_id = $1 AND owner = $2 AND blocked = $3")
            .bind(app_id)
            .bind(owner)
            .bind(user)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(Error::NotFound(format!("{user} in {owner}'s blocklist")));
        }
        Ok(())
    }

    pub async fn blocklist(&self, app_id: &str, owner: &str) -> Result<Vec<String>> {
        self.require_users(app_id, &[owner]).await?;
        Ok(
            sqlx::query_scalar("SELECT blocked FROM blocks WHERE app_id = $1 AND owner = $2 ORDER BY blocked")
                .bind(app_id)
                .bind(owner)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// True if `owner` has blocked `user`.
    pub async fn has_blocked(&self, app_id: &str, owner: &str, user: &str) -> Result<bool> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT blocked FROM blocks WHERE app_id = $1 AND owner = $2 AND blocked = $3")
                .bind(app_id)
                .bind(owner)
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Fails with `NotFound` naming the first user that does not exist.
    pub async fn require_users(&self, app_id: &str, users: &[&str]) -> Result<()> {
        for user in users {
            if !self.user_exists(app_id, user).await? {
                return Err(Error::NotFound(format!("user {user}")));
            }
        }
        Ok(())
    }
}
