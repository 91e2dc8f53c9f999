//! Push notification state: device tokens, do-not-disturb, muted conversations, the app's
//! push credentials and template, and the durable queue the push worker drains.
//!
//! The queue is a table: a job is claimed by setting `locked_until` in an `UPDATE` that
//! re-checks the lock, so on PostgreSQL two processes never claim the same job (the loser's
//! `UPDATE` re-evaluates its condition after the winner's commit and skips the row), and on
//! SQLite the single writer makes the claim atomic.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::Store;

/// Which push service a device token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notifier {
    Apns,
    Fcm,
}

impl Notifier {
    pub fn as_str(self) -> &'static str {
        match self {
            Notifier::Apns => "apns",
            Notifier::Fcm => "fcm",
        }
    }

    pub fn parse(s: &str) -> Option<Notifier> {
        match s {
            "apns" => Some(Notifier::Apns),
            "fcm" => Some(Notifier::Fcm),
            _ => None,
        }
    }
}

/// A user's registered device, with the last push result.
#[derive(Debug, Clone, Serialize)]
pub struct PushDevice {
    pub device_id: String,
    /// The provider, as the platform names the field (`apns` or `fcm`).
    #[serde(rename = "notifier_name")]
    pub notifier: Notifier,
    pub device_token: String,
    pub created: i64,
    /// `none` until a push was tried; then `sent`, `retrying: …`, `failed: …`.
    pub last_result: String,
    pub last_at: i64,
}

/// Do-not-disturb for a user: everything off, or quiet hours in their time zone (given as
/// minutes east of UTC).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dnd {
    pub all_off: bool,
    /// Quiet from `quiet_start` to `quiet_end`, minutes after local midnight; equal values
    /// mean no quiet hours. A window may wrap midnight (e.g. 22:00-07:00 = 1320-420).
    pub quiet_start: i64,
    pub quiet_end: i64,
    pub utc_offset_minutes: i64,
}

impl Dnd {
    pub fn validate(&self) -> Result<()> {
        let minute = 0..1440;
        if !minute.contains(&self.quiet_start) || !minute.contains(&self.quiet_end) {
            return Err(Error::invalid(
                "quiet_start/quiet_end",
                "minutes after midnight, 0-1439",
            ));
        }
        if !(-840..=840).contains(&self.utc_offset_minutes) {
            return Err(Error::invalid("utc_offset_minutes", "from -840 to 840"));
        }
        Ok(())
    }

    /// True if a push at `now_ms` (UTC) should not go out.
    pub fn silences(&self, now_ms: i64) -> bool {
        if self.all_off {
            return true;
        }
        if self.quiet_start == self.quiet_end {
            return false;
        }
        let local = (now_ms / 60_000 + self.utc_offset_minutes).rem_euclid(1440);
        if self.quiet_start < self.quiet_end {
            (self.quiet_start..self.quiet_end).contains(&local)
        } else {
            local >= self.quiet_start || local < self.quiet_end
        }
    }
}

/// A job claimed from the queue.
#[derive(Debug, Clone)]
pub struct PushJob {
    pub id: String,
    pub app_id: String,
    pub username: String,
    pub device_id: String,
    pub notifier: Notifier,
    pub token: String,
    pub payload: Value,
    pub attempts: i64,
}

/// Push bindings kept per user; binding another forgets the oldest.
pub const MAX_PUSH_DEVICES: i64 = 20;

impl Store {
    /// Binds (or re-binds) a push token to one of a user's devices. A token moves to the
    /// device that binds it last.
    pub async fn bind_push(
        &self,
        app_id: &str,
        user: &str,
        device_id: &str,
        notifier: Notifier,
        token: &str,
    ) -> Result<()> {
        crate::names::validate_device(device_id)
            .map_err(|_| Error::invalid("device_id", "1-128 printable characters"))?;
        if token.is_empty() || token.len() > 4096 {
            return Err(Error::invalid("device_token", "1-4096 bytes"));
        }
        self.require_users(app_id, &[user]).await?;
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM push_devices WHERE app_id = $1 AND notifier = $2 AND token = $3")
            .bind(app_id)
            .bind(notifier.as_str())
            .bind(token)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO push_devices (app_id, username, device_id, notifier, token, created_at, last_result, last_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'none', 0)
             ON CONFLICT (app_id, username, device_id) DO UPDATE SET notifier = $4, token = $5, created_at = $6,
             last_result = 'none', last_at = 0",
        )
        .bind(app_id)
        .bind(user)
        .bind(device_id)
        .bind(notifier.as_str())
        .bind(token)
        .bind(crate::now_ms())
        .execute(&mut *tx)
        .await?;
        // A user has at most MAX_PUSH_DEVICES bindings: binding one more forgets the one
        // bound longest ago (a phone replaced long since), so no client can fill the table.
        let no_limit = match self.backend() {
            crate::db::Backend::Sqlite => "LIMIT -1",
            crate::db::Backend::Postgres => "LIMIT ALL",
        };
        sqlx::query(&format!(
            "DELETE FROM push_devices WHERE app_id = $1 AND username = $2 AND device_id IN (
                SELECT device_id FROM push_devices WHERE app_id = $1 AND username = $2
                ORDER BY created_at DESC, device_id {no_limit} OFFSET $3)"
        ))
        .bind(app_id)
        .bind(user)
        .bind(MAX_PUSH_DEVICES)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn unbind_push(&self, app_id: &str, user: &str, device_id: &str) -> Result<()> {
        let removed = sqlx::query("DELETE FROM push_devices WHERE app_id = $1 AND username = $2 AND device_id = $3")
            .bind(app_id)
            .bind(user)
            .bind(device_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(Error::NotFound(format!("push binding of device {device_id}")));
        }
        Ok(())
    }

    pub async fn push_devices(&self, app_id: &str, user: &str) -> Result<Vec<PushDevice>> {
        let rows = sqlx::query(
            "SELECT device_id, notifier, token, created_at, last_result, last_at FROM push_devices
             WHERE app_id = $1 AND username = $2 ORDER BY device_id",
        )
        .bind(app_id)
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PushDevice {
                    device_id: row.try_get("device_id")?,
                    notifier: Notifier::parse(&row.try_get::<String, _>("notifier")?).unwrap_or(Notifier::Fcm),
                    device_token: row.try_get("token")?,
                    created: row.try_get("created_at")?,
                    last_result: row.try_get("last_result")?,
                    last_at: row.try_get("last_at")?,
                })
            })
            .collect()
    }

    /// Forgets a token the provider called invalid.
    pub async fn remove_push_token(&self, app_id: &str, notifier: Notifier, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM push_devices WHERE app_id = $1 AND notifier = $2 AND token = $3")
            .bind(app_id)
            .bind(notifier.as_str())
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn record_push_result(&self, app_id: &str, user: &str, device_id: &str, result: &str) -> Result<()> {
        sqlx::query("UPDATE push_devices SET last_result = $1, last_at = $2 WHERE app_id = $3 AND username = $4 AND device_id = $5")
            .bind(result)
            .bind(crate::now_ms())
            .bind(app_id)
            .bind(user)
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn dnd(&self, app_id: &str, user: &str) -> Result<Dnd> {
        let row = sqlx::query("SELECT all_off, quiet_start, quiet_end, utc_offset_minutes FROM push_dnd WHERE app_id = $1 AND username = $2")
            .bind(app_id)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(Dnd::default()),
            Some(row) => Ok(Dnd {
                all_off: row.try_get::<i64, _>("all_off")? != 0,
                quiet_start: row.try_get("quiet_start")?,
                quiet_end: row.try_get("quiet_end")?,
                utc_offset_minutes: row.try_get("utc_offset_minutes")?,
            }),
        }
    }

    pub async fn set_dnd(&self, app_id: &str, user: &str, dnd: &Dnd) -> Result<()> {
        dnd.validate()?;
        self.require_users(app_id, &[user]).await?;
        sqlx::query(
            "INSERT INTO push_dnd (app_id, username, all_off, quiet_start, quiet_end, utc_offset_minutes) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (app_id, username) DO UPDATE SET all_off = $3, quiet_start = $4, quiet_end = $5, utc_offset_minutes = $6",
        )
        .bind(app_id)
        .bind(user)
        .bind(dnd.all_off as i64)
        .bind(dnd.quiet_start)
        .bind(dnd.quiet_end)
        .bind(dnd.utc_offset_minutes)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Mutes (or unmutes) pushes for one conversation of a user.
    pub async fn set_conversation_muted(&self, app_id: &str, user: &str, conv: &str, muted: bool) -> Result<()> {
        let known: Option<i64> = sqlx::query_scalar(
            "SELECT read_seq FROM user_conversations WHERE app_id = $1 AND username = $2 AND conv = $3",
        )
        .bind(app_id)
        .bind(user)
        .bind(conv)
        .fetch_optional(&self.pool)
        .await?;
        if known.is_none() {
            return Err(Error::NotFound(format!("conversation {conv}")));
        }
        let sql = if muted {
            "INSERT INTO push_muted (app_id, username, conv) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM push_muted WHERE app_id = $1 AND username = $2 AND conv = $3"
        };
        sqlx::query(sql)
            .bind(app_id)
            .bind(user)
            .bind(conv)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn muted_conversations(&self, app_id: &str, user: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT conv FROM push_muted WHERE app_id = $1 AND username = $2 ORDER BY conv")
                .bind(app_id)
                .bind(user)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn is_conversation_muted(&self, app_id: &str, user: &str, conv: &str) -> Result<bool> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT conv FROM push_muted WHERE app_id = $1 AND username = $2 AND conv = $3")
                .bind(app_id)
                .bind(user)
                .bind(conv)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// The app's push configuration (credentials and template), as stored.
    pub async fn push_config(&self, app_id: &str) -> Result<Value> {
        let text: String = sqlx::query_scalar("SELECT push_config FROM apps WHERE id = $1")
            .bind(app_id)
            .fetch_one(&self.pool)
            .await?;
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("stored push config: {e}")))
    }

    pub async fn set_push_config(&self, app_id: &str, config: &Value) -> Result<()> {
        sqlx::query("UPDATE apps SET push_config = $1 WHERE id = $2")
            .bind(config.to_string())
            .bind(app_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Queues one push per device of `user`; returns how many.
    pub async fn enqueue_pushes(&self, app_id: &str, user: &str, payload: &Value) -> Result<usize> {
        let devices = self.push_devices(app_id, user).await?;
        let now = crate::now_ms();
        let mut tx = self.write_tx().await?;
        for d in &devices {
            sqlx::query(
                "INSERT INTO push_queue (id, app_id, username, device_id, notifier, token, payload, attempts, next_at, locked_until, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, 0, $8)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(app_id)
            .bind(user)
            .bind(&d.device_id)
            .bind(d.notifier.as_str())
            .bind(&d.device_token)
            .bind(payload.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(devices.len())
    }

    /// Claims up to `limit` due jobs for `lease_ms`; a worker that dies lets them go when
    /// the lease ends.
    pub async fn claim_pushes(&self, limit: i64, lease_ms: i64) -> Result<Vec<PushJob>> {
        let now = crate::now_ms();
        let rows = sqlx::query(&format!(
            "UPDATE push_queue SET locked_until = $1
             WHERE id IN (SELECT id FROM push_queue WHERE next_at <= $2 AND locked_until < $2 ORDER BY next_at LIMIT $3 {})
             AND locked_until < $2
             RETURNING id, app_id, username, device_id, notifier, token, payload, attempts",
            self.skip_locked()
        ))
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let payload: String = row.try_get("payload")?;
                Ok(PushJob {
                    id: row.try_get("id")?,
                    app_id: row.try_get("app_id")?,
                    username: row.try_get("username")?,
                    device_id: row.try_get("device_id")?,
                    notifier: Notifier::parse(&row.try_get::<String, _>("notifier")?).unwrap_or(Notifier::Fcm),
                    token: row.try_get("token")?,
                    payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// A job is done (sent, dropped or failed for good).
    pub async fn finish_push(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM push_queue WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A job will be tried again at `next_at`.
    pub async fn retry_push(&self, id: &str, next_at: i64) -> Result<()> {
        sqlx::query("UPDATE push_queue SET attempts = attempts + 1, next_at = $1, locked_until = 0 WHERE id = $2")
            .bind(next_at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims up to `limit` batches of stored messages waiting for the push planner: each is
    /// a row id and message ids. Leased like queue jobs.
    pub async fn claim_pending_plans(&self, limit: i64, lease_ms: i64) -> Result<Vec<(String, Vec<String>)>> {
        let now = crate::now_ms();
        let rows = sqlx::query(&format!(
            "UPDATE push_pending SET locked_until = $1
             WHERE id IN (SELECT id FROM push_pending WHERE locked_until < $2 ORDER BY created_at LIMIT $3 {})
             AND locked_until < $2
             RETURNING id, messages",
            self.skip_locked()
        ))
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let messages: String = row.try_get("messages")?;
                Ok((row.try_get("id")?, serde_json::from_str(&messages).unwrap_or_default()))
            })
            .collect()
    }

    /// Ends claimed batches of stored messages, once planned: one statement for all of them.
    pub async fn finish_pending_plans(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "DELETE FROM push_pending WHERE id IN ({})",
            crate::messages::params_from(1, ids.len())
        );
        let mut query = sqlx::query(&sql).persistent(false);
        for id in ids {
            query = query.bind(id);
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// A message by id alone, with its app (the planner's view).
    pub async fn message_by_id(&self, id: &str) -> Result<(String, crate::messages::StoredMessage)> {
        let row = sqlx::query(&format!(
            "SELECT m.app_id, {} FROM messages m WHERE m.id = $1",
            crate::messages::MSG_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("message {id}")))?;
        Ok((row.try_get("app_id")?, crate::messages::message_from_row(&row)?))
    }

    /// For each of these messages, the users holding it (in their inbox) who have a push
    /// device: the only ones a push could reach. One query for all of them, however large
    /// the groups; messages nobody could be pushed for are left out (the common case when
    /// everyone is online or no device is bound, so planning them costs nothing more).
    pub async fn holders_with_push_devices(&self, message_ids: &[String]) -> Result<Vec<(String, Vec<String>)>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let params = crate::messages::params_from(1, message_ids.len());
        // First, cheaply (primary keys only), whether any of their apps has a push device
        // at all: the join below is planned as scans of the inbox and messages tables while
        // they are small enough, and an app without push (or a benchmark) need not pay that.
        let sql = format!(
            "SELECT DISTINCT d.app_id FROM push_devices d
             WHERE d.app_id IN (SELECT DISTINCT m.app_id FROM messages m WHERE m.id IN ({}))",
            params
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql).persistent(false);
        for id in message_ids {
            query = query.bind(id);
        }
        if query.fetch_all(&self.pool).await?.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT DISTINCT m.id, i.username FROM messages m
             JOIN inbox i ON i.app_id = m.app_id AND i.message_id = m.id
             JOIN push_devices d ON d.app_id = i.app_id AND d.username = i.username
             WHERE m.id IN ({}) ORDER BY m.id, i.username",
            params
        );
        let mut query = sqlx::query_as::<_, (String, String)>(&sql).persistent(false);
        for id in message_ids {
            query = query.bind(id);
        }
        let mut holders: Vec<(String, Vec<String>)> = Vec::new();
        for (message, user) in query.fetch_all(&self.pool).await? {
            match holders.last_mut() {
                Some((m, users)) if *m == message => users.push(user),
                _ => holders.push((message, vec![user])),
            }
        }
        // Back in the order the messages were stored.
        holders.sort_by_key(|(m, _)| message_ids.iter().position(|id| id == m));
        Ok(holders)
    }

    /// Jobs waiting (for tests and the stats call).
    pub async fn queued_pushes(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM push_queue")
            .fetch_one(&self.pool)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_wrap_midnight_in_local_time() {
        // 22:00-07:00 in UTC+02:00.
        let dnd = Dnd {
            all_off: false,
            quiet_start: 22 * 60,
            quiet_end: 7 * 60,
            utc_offset_minutes: 120,
        };
        let at = |h: i64, m: i64| (h * 60 + m) * 60_000; // UTC time of day on day 0
        assert!(dnd.silences(at(21, 0)), "23:00 local");
        assert!(dnd.silences(at(4, 30)), "06:30 local");
        assert!(!dnd.silences(at(5, 0)), "07:00 local");
        assert!(!dnd.silences(at(12, 0)), "14:00 local");
        assert!(!Dnd::default().silences(at(3, 0)));
        assert!(Dnd {
            all_off: true,
            ..Dnd::default()
        }
        .silences(at(12, 0)));
        assert!(Dnd {
            quiet_start: 2000,
            ..Dnd::default()
        }
        .validate()
        .is_err());
    }
}
