//! Webhooks: an app's HTTPS endpoints (at most [`MAX_WEBHOOKS`]) and the durable queue of
//! the events they are sent (`hooks/` sends them).
//!
//! An event is queued once per endpoint that chose its kind, under an id made of the
//! endpoint, the kind and what it is about (`{webhook}:{kind}:{ref}`): queuing the same
//! event twice (a planner that died after queuing and before finishing its batch) stores
//! it once, and the id travels to the receiver as its idempotence key. Events are claimed
//! with a lease, like push jobs, so several workers (nodes) never send one at the same time.
//!
//! An endpoint that keeps failing is paused: its events stay queued, and one of them is
//! tried again every so often (a probe); the first success makes it active again and the
//! backlog flows.

use serde::Serialize;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::Store;

/// The most endpoints one app may have.
pub const MAX_WEBHOOKS: i64 = 5;

/// The kinds of event an endpoint may choose.
pub const EVENT_KINDS: &[&str] = &["message", "recall", "edit", "group", "presence"];

/// An endpoint as the app sees it (never its secret after creation).
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// `active`, or `paused` (failing: probed every so often).
    pub state: String,
    /// Failures in a row.
    pub failures: i64,
    /// The last failure: a status code or what went wrong connecting, never the body.
    pub last_error: String,
    pub last_success_at: i64,
    pub last_failure_at: i64,
    pub created_at: i64,
    /// Events waiting for it.
    pub queued: i64,
}

/// An event claimed for sending, with where and how to send it.
#[derive(Debug, Clone)]
pub struct WebhookJob {
    pub id: String,
    pub webhook_id: String,
    pub app_id: String,
    pub kind: String,
    /// What it is about (a message id for `message`); its payload is built at send time.
    pub ref_id: String,
    /// The event's data (JSON), for kinds other than `message`.
    pub payload: String,
    pub attempts: i64,
    pub created_at: i64,
    pub url: String,
    pub secret: String,
}

const COLUMNS: &str = "w.id, w.url, w.events, w.state, w.failures, w.last_error, w.last_success_at, \
                       w.last_failure_at, w.created_at";

fn webhook_from_row(row: &sqlx::any::AnyRow) -> Result<Webhook> {
    let events: String = row.try_get("events")?;
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        state: row.try_get("state")?,
        failures: row.try_get("failures")?,
        last_error: row.try_get("last_error")?,
        last_success_at: row.try_get("last_success_at")?,
        last_failure_at: row.try_get("last_failure_at")?,
        created_at: row.try_get("created_at")?,
        queued: row.try_get("queued")?,
    })
}

/// `events` checked: known kinds, at least one, no repeats.
pub fn check_events(events: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if !EVENT_KINDS.contains(&e.as_str()) {
            return Err(Error::invalid(
                "events",
                format!("unknown event {e:?}; choose from {}", EVENT_KINDS.join(", ")),
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(
            "events",
            format!("name at least one of {}", EVENT_KINDS.join(", ")),
        ));
    }
    Ok(out)
}

impl Store {
    /// Adds an endpoint; answers it and its signing secret (shown this once).
    pub async fn create_webhook(&self, app_id: &str, url: &str, events: &[String]) -> Result<(Webhook, String)> {
        let events = check_events(events)?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE app_id = $1")
            .bind(app_id)
            .fetch_one(&self.pool)
            .await?;
        if count >= MAX_WEBHOOKS {
            return Err(Error::Forbidden(format!("an app has at most {MAX_WEBHOOKS} webhooks")));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let secret = crate::tokens::random_secret(32);
        let now = crate::now_ms();
        sqlx::query(
            "INSERT INTO webhooks (id, app_id, url, secret, events, state, failures, last_error, last_success_at,
                                   last_failure_at, probe_at, created_at)
             VALUES ($1, $2, $3, $4, $5, 'active', 0, '', 0, 0, 0, $6)",
        )
        .bind(&id)
        .bind(app_id)
        .bind(url)
        .bind(&secret)
        .bind(serde_json::to_string(&events).expect("strings serialise"))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok((self.webhook(app_id, &id).await?, secret))
    }

    /// An app's endpoints, oldest first.
    pub async fn webhooks(&self, app_id: &str) -> Result<Vec<Webhook>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, (SELECT COUNT(*) FROM webhook_events e WHERE e.webhook_id = w.id) AS queued
             FROM webhooks w WHERE w.app_id = $1 ORDER BY w.created_at, w.id"
        ))
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(webhook_from_row).collect()
    }

    pub async fn webhook(&self, app_id: &str, id: &str) -> Result<Webhook> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, (SELECT COUNT(*) FROM webhook_events e WHERE e.webhook_id = w.id) AS queued
             FROM webhooks w WHERE w.app_id = $1 AND w.id = $2"
        ))
        .bind(app_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("webhook {id}")))?;
        webhook_from_row(&row)
    }

    /// Changes an endpoint's URL or events; `resume` makes a paused one active at once.
    pub async fn update_webhook(
        &self,
        app_id: &str,
        id: &str,
        url: Option<&str>,
        events: Option<&[String]>,
        resume: bool,
    ) -> Result<Webhook> {
        let current = self.webhook(app_id, id).await?;
        let events = match events {
            Some(events) => check_events(events)?,
            None => current.events,
        };
        let (state, failures) = if resume {
            ("active".to_string(), 0)
        } else {
            (current.state, current.failures)
        };
        sqlx::query(
            "UPDATE webhooks SET url = $1, events = $2, state = $3, failures = $4 WHERE app_id = $5 AND id = $6",
        )
        .bind(url.unwrap_or(&current.url))
        .bind(serde_json::to_string(&events).expect("strings serialise"))
        .bind(state)
        .bind(failures)
        .bind(app_id)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.webhook(app_id, id).await
    }

    /// Removes an endpoint and the events waiting for it.
    pub async fn delete_webhook(&self, app_id: &str, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query("DELETE FROM webhooks WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Err(Error::NotFound(format!("webhook {id}")));
        }
        sqlx::query("DELETE FROM webhook_events WHERE webhook_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Queues a `message` event for each of these stored messages, to the endpoints of their
    /// apps that chose it; one statement, nothing when no app has such an endpoint.
    pub async fn enqueue_message_events(&self, message_ids: &[String]) -> Result<u64> {
        if message_ids.is_empty() {
            return Ok(0);
        }
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM webhooks LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        if any.is_none() {
            return Ok(0);
        }
        let now = crate::now_ms();
        let params = crate::messages::params_from(2, message_ids.len());
        let sql = format!(
            "INSERT INTO webhook_events (id, webhook_id, app_id, kind, ref_id, payload, attempts, next_at, locked_until, created_at)
             SELECT w.id || ':message:' || m.id, w.id, w.app_id, 'message', m.id, '', 0, $1, 0, $1
             FROM messages m JOIN webhooks w ON w.app_id = m.app_id AND w.events LIKE '%\"message\"%'
             WHERE m.id IN ({params})
             ON CONFLICT DO NOTHING"
        );
        let mut query = sqlx::query(&sql).bind(now);
        for id in message_ids {
            query = query.bind(id);
        }
        Ok(query.execute(&self.pool).await?.rows_affected())
    }

    /// Queues an event of `kind` about `ref_id` (e.g. a message id and its version) with
    /// `payload`, to each endpoint of the app that chose `kind`.
    pub async fn enqueue_event(
        &self,
        app_id: &str,
        kind: &str,
        ref_id: &str,
        payload: &serde_json::Value,
    ) -> Result<u64> {
        let now = crate::now_ms();
        let pattern = format!("%\"{kind}\"%");
        let result = sqlx::query(
            "INSERT INTO webhook_events (id, webhook_id, app_id, kind, ref_id, payload, attempts, next_at, locked_until, created_at)
             SELECT w.id || ':' || CAST($1 AS TEXT) || ':' || CAST($2 AS TEXT), w.id, w.app_id,
                    CAST($1 AS TEXT), CAST($2 AS TEXT), $3, 0, $4, 0, $4
             FROM webhooks w WHERE w.app_id = $5 AND w.events LIKE $6
             ON CONFLICT DO NOTHING",
        )
        .bind(kind)
        .bind(ref_id)
        .bind(payload.to_string())
        .bind(now)
        .bind(app_id)
        .bind(pattern)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Claims up to `limit` due events of active endpoints, and for each paused endpoint
    /// whose probe is due its oldest event; each is locked for `lease_ms`.
    pub async fn claim_webhook_events(
        &self,
        limit: i64,
        lease_ms: i64,
        probe_every_ms: i64,
    ) -> Result<Vec<WebhookJob>> {
        let now = crate::now_ms();
        let lock = self.skip_locked();
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "UPDATE webhook_events SET locked_until = $1
             WHERE id IN (
               SELECT e.id FROM webhook_events e JOIN webhooks w ON w.id = e.webhook_id
               WHERE e.next_at <= $2 AND e.locked_until < $2 AND w.state = 'active'
               ORDER BY e.next_at LIMIT $3 {lock})
             AND locked_until < $2
             RETURNING id"
        ))
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut ids = ids;
        // Paused endpoints: one probe each when due (the probe time moves on at once, so
        // one worker probes).
        let due: Vec<String> = sqlx::query_scalar(
            "UPDATE webhooks SET probe_at = $1 WHERE state = 'paused' AND probe_at <= $2 RETURNING id",
        )
        .bind(now + probe_every_ms)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for webhook in due {
            let probe: Option<String> = sqlx::query_scalar(
                "UPDATE webhook_events SET locked_until = $1
                 WHERE id = (SELECT id FROM webhook_events WHERE webhook_id = $2 AND locked_until < $3
                             ORDER BY created_at LIMIT 1)
                 RETURNING id",
            )
            .bind(now + lease_ms)
            .bind(&webhook)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            ids.extend(probe);
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let params = crate::messages::params_from(1, ids.len());
        let sql = format!(
            "SELECT e.id, e.webhook_id, e.app_id, e.kind, e.ref_id, e.payload, e.attempts, e.created_at, w.url, w.secret
             FROM webhook_events e JOIN webhooks w ON w.id = e.webhook_id
             WHERE e.id IN ({params}) ORDER BY e.created_at"
        );
        let mut query = sqlx::query(&sql);
        for id in &ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(WebhookJob {
                    id: row.try_get("id")?,
                    webhook_id: row.try_get("webhook_id")?,
                    app_id: row.try_get("app_id")?,
                    kind: row.try_get("kind")?,
                    ref_id: row.try_get("ref_id")?,
                    payload: row.try_get("payload")?,
                    attempts: row.try_get("attempts")?,
                    created_at: row.try_get("created_at")?,
                    url: row.try_get("url")?,
                    secret: row.try_get("secret")?,
                })
            })
            .collect()
    }

    /// The event reached its endpoint: gone from the queue; the endpoint is healthy.
    pub async fn webhook_delivered(&self, job: &WebhookJob) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM webhook_events WHERE id = $1")
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE webhooks SET state = 'active', failures = 0, last_success_at = $1 WHERE id = $2")
            .bind(crate::now_ms())
            .bind(&job.webhook_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The event did not get through: tried again at `next_at`, or dropped (`give_up`); the
    /// endpoint's failures grow, and past `pause_after` in a row it is paused.
    pub async fn webhook_failed(
        &self,
        job: &WebhookJob,
        error: &str,
        next_at: i64,
        give_up: bool,
        pause_after: i64,
        probe_every_ms: i64,
    ) -> Result<()> {
        let now = crate::now_ms();
        let mut tx = self.pool.begin().await?;
        if give_up {
            sqlx::query("DELETE FROM webhook_events WHERE id = $1")
                .bind(&job.id)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(
                "UPDATE webhook_events SET attempts = attempts + 1, next_at = $1, locked_until = 0 WHERE id = $2",
            )
            .bind(next_at)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE webhooks SET failures = failures + 1, last_error = $1, last_failure_at = $2,
                 state = CASE WHEN failures + 1 >= $3 THEN 'paused' ELSE state END,
                 probe_at = CASE WHEN failures + 1 >= $3 AND state = 'active' THEN $4 ELSE probe_at END
             WHERE id = $5",
        )
        .bind(error)
        .bind(now)
        .bind(pause_after)
        .bind(now + probe_every_ms)
        .bind(&job.webhook_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Queues an event for the app's webhooks after a change that is already made: a failure
    /// is logged, not answered (the change stands; the webhook misses this one event).
    pub async fn hook_event(&self, app_id: &str, kind: &str, ref_id: &str, payload: &serde_json::Value) {
        if let Err(e) = self.enqueue_event(app_id, kind, ref_id, payload).await {
            tracing::error!(error = %e, kind, "queuing a webhook event failed");
        }
    }

    /// The apps with a webhook that chose events of `kind`.
    pub async fn apps_with_webhooks_for(&self, kind: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT app_id FROM webhooks WHERE events LIKE $1")
                .bind(format!("%\"{kind}\"%"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Events queued for endpoints, in all (a gauge).
    pub async fn queued_webhook_events(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events")
            .fetch_one(&self.pool)
            .await?)
    }
}
