//! Webhooks: each app's HTTPS endpoints get its events (stored messages, recalls, edits,
//! group and chatroom changes, users going online and offline) as signed JSON, at least
//! once, from the durable queue in `store::webhooks`.
//!
//! What a receiver gets, per event, a `POST` with:
//!
//! ```text
//! Content-Type: application/json
//! X-Chatd-Event: message
//! X-Chatd-Event-Id: 5f0c…:message:0190a3…        (the same on every retry: deduplicate on it)
//! X-Chatd-Timestamp: 1795307873                   (seconds, when this attempt was signed)
//! X-Chatd-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>
//!
//! {"id": "<event id>", "type": "message", "org": "acme", "app": "chat", "created": 1795307873491, "data": {…}}
//! ```
//!
//! A 2xx answer settles the event; anything else (a status, a timeout, a refused address) is
//! retried with exponential backoff up to `max_attempts`, then dropped and counted. An
//! endpoint that fails `pause_after` times in a row is paused: its events wait and one of
//! them is tried every `probe_every`; the first success resumes it. Receivers' bodies are
//! never read beyond a status, and never shown to the app.
//!
//! Ordering is not promised (events are sent concurrently and retried): each carries its
//! time and, for messages, the conversation's `seq`.

pub mod guard;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{watch, Notify, Semaphore};

use store::webhooks::WebhookJob;
use store::Store;

/// How the worker sends.
#[derive(Debug, Clone)]
pub struct HookSettings {
    pub concurrency: usize,
    /// One request's time limit.
    pub timeout: Duration,
    /// Attempts before an event is dropped.
    pub max_attempts: i64,
    /// First retry delay, doubled per attempt up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Failures in a row that pause an endpoint.
    pub pause_after: i64,
    /// How often a paused endpoint is tried again.
    pub probe_every: Duration,
    /// How long a claimed event stays locked.
    pub lease: Duration,
    /// How often to look for due events when nothing wakes the worker.
    pub poll: Duration,
    pub allow: guard::Allow,
}

impl Default for HookSettings {
    fn default() -> Self {
        HookSettings {
            concurrency: 8,
            timeout: Duration::from_secs(10),
            max_attempts: 12,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(3600),
            pause_after: 10,
            probe_every: Duration::from_secs(30),
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(500),
            allow: guard::Allow::default(),
        }
    }
}

/// Signs `body` as receivers check it: hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("v1={}", hex::encode(context.sign().as_ref()))
}

/// The webhook worker: one per process (several processes never send the same event at
/// the same time: events are leased).
#[derive(Clone)]
pub struct Worker {
    store: Store,
    settings: HookSettings,
    client: reqwest::Client,
    wake: Arc<Notify>,
}

/// What became of one attempt.
enum Outcome {
    Delivered,
    /// Nothing to send any more (its message or app is gone).
    Gone,
    Failed(String),
}

impl Worker {
    pub fn new(store: Store, settings: HookSettings) -> Worker {
        let client = guard::client(settings.allow, settings.timeout);
        Worker {
            store,
            settings,
            client,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Notified when events were queued, so they go out now rather than at the next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        loop {
            let free = slots.available_permits().max(1) as i64;
            let jobs = match self
                .store
                .claim_webhook_events(
                    free,
                    self.settings.lease.as_millis() as i64,
                    self.settings.probe_every.as_millis() as i64,
                )
                .await
            {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(error = %e, "claiming webhook events failed");
                    Vec::new()
                }
            };
            let idle = jobs.is_empty();
            for job in jobs {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let worker = self.clone();
                tokio::spawn(async move {
                    worker.settle(job).await;
                    drop(permit);
                });
            }
            if idle {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.settings.poll) => {}
                    _ = shutdown.changed() => return,
                }
            } else if *shutdown.borrow() {
                return;
            }
        }
    }

    async fn settle(&self, job: WebhookJob) {
        let outcome = self.attempt(&job).await;
        let label = match &outcome {
            Outcome::Delivered => "delivered",
            Outcome::Gone => "gone",
            Outcome::Failed(_) => "failed",
        };
        metrics::counter!("chatd_webhooks_total", "kind" => kind_label(&job.kind), "outcome" => label).increment(1);
        let result = match outcome {
            Outcome::Delivered => self.store.webhook_delivered(&job).await,
            Outcome::Gone => self.store.webhook_delivered(&job).await,
            Outcome::Failed(error) => {
                let give_up = job.attempts + 1 >= self.settings.max_attempts;
                if give_up {
                    tracing::warn!(webhook = %job.webhook_id, event = %job.id, %error, "webhook event dropped after its last attempt");
                    metrics::counter!("chatd_webhooks_dropped_total").increment(1);
                }
                let backoff = self
                    .settings
                    .backoff
                    .saturating_mul(1 << job.attempts.clamp(0, 20))
                    .min(self.settings.max_backoff);
                let next_at = store::now_ms() + backoff.as_millis() as i64;
                self.store
                    .webhook_failed(
                        &job,
                        &error,
                        next_at,
                        give_up,
                        self.settings.pause_after,
                        self.settings.probe_every.as_millis() as i64,
                    )
                    .await
            }
        };
        if let Err(e) = result {
            // Left locked: the lease runs out and it is tried again.
            tracing::error!(error = %e, event = %job.id, "settling a webhook event failed");
        }
    }

    async fn attempt(&self, job: &WebhookJob) -> Outcome {
        let url = match guard::check_url(&job.url, self.settings.allow) {
            Ok(url) => url,
            Err(why) => return Outcome::Failed(why),
        };
        let Some(body) = self.body(job).await else {
            return Outcome::Gone;
        };
        let body = body.to_string().into_bytes();
        let timestamp = store::now_ms() / 1000;
        let request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-chatd-event", &job.kind)
            .header("x-chatd-event-id", &job.id)
            .header("x-chatd-timestamp", timestamp.to_string())
            .header("x-chatd-signature", signature(&job.secret, timestamp, &body))
            .body(body);
        match request.send().await {
            Ok(response) if response.status().is_success() => Outcome::Delivered,
            Ok(response) => Outcome::Failed(format!("HTTP {}", response.status().as_u16())),
            Err(e) if e.is_timeout() => {
                Outcome::Failed(format!("no answer within {} s", self.settings.timeout.as_secs()))
            }
            Err(e) if e.is_connect() => Outcome::Failed(connect_error(&e)),
            Err(_) => Outcome::Failed("the request failed".into()),
        }
    }

    /// The event as the receiver gets it, or `None` when what it is about is gone.
    async fn body(&self, job: &WebhookJob) -> Option<Value> {
        let app = self.store.app_by_id(&job.app_id).await.ok()?;
        let data = if job.kind == "message" {
            let (_, msg) = self.store.message_by_id(&job.ref_id).await.ok()?;
            let mut data = serde_json::to_value(msg.delivered("", None)).ok()?;
            if let Some(object) = data.as_object_mut() {
                object.remove("op");
            }
            data
        } else {
            serde_json::from_str(&job.payload).ok()?
        };
        Some(json!({
            "id": job.id,
            "type": job.kind,
            "org": app.org,
            "app": app.name,
            "created": job.created_at,
            "data": data,
        }))
    }
}

/// Turns users going online and offline into `presence` events for the apps' webhooks.
/// Only apps with a webhook that chose `presence` cost anything per connection: which apps
/// those are is looked up at most every few seconds, not per connection, so a connect storm
/// in other apps costs no database work here.
pub struct PresenceEvents {
    store: Store,
    apps: std::collections::HashMap<(String, String), Option<String>>,
    watched: std::collections::HashSet<String>,
    checked_at: i64,
}

impl PresenceEvents {
    pub fn new(store: Store) -> PresenceEvents {
        PresenceEvents {
            store,
            apps: Default::default(),
            watched: Default::default(),
            checked_at: i64::MIN,
        }
    }

    /// `user` of `org/app` went online (`online`) or offline at `at` (ms).
    pub async fn report(&mut self, org: &str, app: &str, user: &str, online: bool, at: i64) {
        let now = store::now_ms();
        if now.saturating_sub(self.checked_at) > 5_000 {
            match self.store.apps_with_webhooks_for("presence").await {
                Ok(watched) => self.watched = watched.into_iter().collect(),
                Err(e) => tracing::warn!(error = %e, "reading which apps want presence events failed"),
            }
            self.checked_at = now;
            if self.apps.len() > 10_000 {
                self.apps.clear();
            }
        }
        if self.watched.is_empty() {
            return;
        }
        let key = (org.to_string(), app.to_string());
        let app_id = match self.apps.get(&key) {
            Some(id) => id.clone(),
            None => {
                let id = self.store.find_app(org, app).await.ok().map(|a| a.id);
                self.apps.insert(key, id.clone());
                id
            }
        };
        let Some(app_id) = app_id.filter(|id| self.watched.contains(id)) else {
            return;
        };
        let status = if online { "online" } else { "offline" };
        let event = json!({"user": user, "status": status, "at": at});
        self.store
            .hook_event(&app_id, "presence", &format!("{user}:{status}:{at}"), &event)
            .await;
    }
}

/// Why a connection failed, without the receiver's details beyond what the app set.
fn connect_error(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        let text = err.to_string();
        if text.contains("no public address") {
            return "the host resolves to no public address".into();
        }
        source = err.source();
    }
    "could not connect".into()
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "message" => "message",
        "recall" => "recall",
        "edit" => "edit",
        "group" => "group",
        "presence" => "presence",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Known answer, from openssl:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature("secret", 1_700_000_000, br#"{"a":1}"#),
            "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
