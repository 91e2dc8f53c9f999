//! The push worker: claims due jobs from the queue (several workers, in one process or
//! many, never claim the same job), sends them with bounded concurrency, and settles each:
//! done, retried with exponential backoff, failed for good, or its token removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, Notify, Semaphore};

use crate::apns::Apns;
use crate::config::PushConfig;
use crate::fcm::Fcm;
use crate::{stats, Delivery, PushSender};
use store::live::Live;
use store::push::{Notifier, PushJob};
use store::Store;

/// Most stored messages planned in one go (their ids are bound as parameters of one query).
const PLAN_TOGETHER: usize = 1024;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// Attempts before a push that keeps failing temporarily is given up.
    pub max_attempts: i64,
    /// First retry delay; doubled per attempt, capped at `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long a claimed job stays locked (a worker that dies releases it then).
    pub lease: Duration,
    /// How often to look for due jobs when nothing wakes the worker.
    pub poll: Duration,
    /// Once woken (messages were stored), how long the worker lets more batches arrive
    /// before it plans them together. Woken by every batch, it made three more writes per
    /// batch (claim, webhook events, finish), each a commit of its own. A push is for a
    /// device that is offline, so this much later is invisible to its user.
    pub coalesce: Duration,
    /// The FCM API base URL (tests point it at a local fake).
    pub fcm_endpoint: String,
    /// Where FCM access tokens are obtained (OAuth2 JWT bearer). An operator setting: the
    /// `token_uri` of an app's key file is never used.
    pub fcm_token_uri: String,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 16,
            max_attempts: 8,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(500),
            coalesce: Duration::from_millis(50),
            fcm_endpoint: crate::fcm::DEFAULT_ENDPOINT.into(),
            fcm_token_uri: crate::fcm::DEFAULT_TOKEN_URI.into(),
        }
    }
}

/// Senders built from an app's configuration, rebuilt when it changes.
struct AppSenders {
    config: String,
    org: String,
    app: String,
    fcm: Option<Arc<dyn PushSender>>,
    apns: Option<Arc<dyn PushSender>>,
}

#[derive(Clone)]
pub struct Worker {
    store: Store,
    live: Arc<dyn Live>,
    settings: WorkerSettings,
    senders: Arc<Mutex<HashMap<String, Arc<AppSenders>>>>,
    /// The store's [`Store::push_recorded`]: messages to plan were just stored.
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(store: Store, live: Arc<dyn Live>, settings: WorkerSettings) -> Worker {
        Worker {
            live,
            settings,
            senders: Arc::default(),
            wake: store.push_recorded(),
            store,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        loop {
            // First turn newly stored messages into queued pushes.
            let planned = self.plan_pending().await;
            let free = slots.available_permits().max(1) as i64;
            let jobs = match self
                .store
                .claim_pushes(free, self.settings.lease.as_millis() as i64)
                .await
            {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(error = %e, "claiming pushes failed");
                    Vec::new()
                }
            };
            let idle = jobs.is_empty() && !planned;
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
                    _ = self.wake.notified() => {
                        tokio::select! {
                            _ = tokio::time::sleep(self.settings.coalesce) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                    _ = tokio::time::sleep(self.settings.poll) => {}
                    _ = shutdown.changed() => return,
                }
            } else if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Plans the pushes of stored messages the bridge (or the API) recorded; true if any.
    /// The batches claimed are planned together, up to [`PLAN_TOGETHER`] messages at a time:
    /// one query each for webhooks and for whom to push, one statement to finish them.
    async fn plan_pending(&self) -> bool {
        let batches = match self
            .store
            .claim_pending_plans(64, self.settings.lease.as_millis() as i64)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "claiming messages to plan pushes for failed");
                return false;
            }
        };
        let any = !batches.is_empty();
        let (mut ids, mut messages) = (Vec::new(), Vec::new());
        for (id, batch) in batches {
            if !ids.is_empty() && messages.len() + batch.len() > PLAN_TOGETHER {
                self.plan_together(std::mem::take(&mut ids), std::mem::take(&mut messages))
                    .await;
            }
            ids.push(id);
            messages.extend(batch);
        }
        if !ids.is_empty() {
            self.plan_together(ids, messages).await;
        }
        any
    }

    /// Plans claimed batches (`ids`) holding `messages`, and finishes them. On an error they
    /// stay claimed: the lease runs out and they are planned again.
    async fn plan_together(&self, ids: Vec<String>, messages: Vec<String>) {
        // The app's webhooks hear of stored messages here too, durably: the batches stay
        // claimed until this is done, and queuing twice stores each event once.
        if let Err(e) = self.store.enqueue_message_events(&messages).await {
            tracing::error!(error = %e, "queuing webhook events failed");
            return;
        }
        let holders = match self.store.holders_with_push_devices(&messages).await {
            Ok(holders) => holders,
            Err(e) => {
                tracing::error!(error = %e, "finding whom to push for failed");
                return;
            }
        };
        for (message, recipients) in holders {
            if let Err(e) = crate::plan::plan_stored(&self.store, self.live.as_ref(), &message, &recipients).await {
                tracing::error!(error = %e, %message, "planning pushes failed");
            }
        }
        if let Err(e) = self.store.finish_pending_plans(&ids).await {
            tracing::error!(error = %e, "finishing push plans failed");
        }
    }

    async fn settle(&self, job: PushJob) {
        let store = &self.store;
        let senders = match self.senders_for(&job.app_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "loading push configuration failed");
                let _ = store
                    .retry_push(&job.id, store::now_ms() + self.settings.max_backoff.as_millis() as i64)
                    .await;
                return;
            }
        };
        // Online again since the push was queued: the message reached a device already.
        if self.live.is_online(&senders.org, &senders.app, &job.username) {
            stats::dropped(job.notifier);
            let _ = store
                .record_push_result(
                    &job.app_id,
                    &job.username,
                    &job.device_id,
                    "dropped: recipient came online",
                )
                .await;
            let _ = store.finish_push(&job.id).await;
            return;
        }
        let sender = match job.notifier {
            Notifier::Fcm => senders.fcm.clone(),
            Notifier::Apns => senders.apns.clone(),
        };
        let outcome = match sender {
            Some(sender) => sender.send(&job.token, &job.payload).await,
            None => Delivery::Failed(format!("the app has no {} credentials", job.notifier.as_str())),
        };
        let (user, device) = (&job.username, &job.device_id);
        let result = match outcome {
            Delivery::Sent => {
                stats::sent(job.notifier);
                let _ = store.finish_push(&job.id).await;
                "sent".to_string()
            }
            Delivery::Retry { reason, after } if job.attempts + 1 < self.settings.max_attempts => {
                stats::retried(job.notifier);
                let backoff = self
                    .settings
                    .backoff
                    .saturating_mul(1 << job.attempts.clamp(0, 20))
                    .min(self.settings.max_backoff);
                let wait = after.unwrap_or(backoff).min(self.settings.max_backoff);
                let _ = store
                    .retry_push(&job.id, store::now_ms() + wait.as_millis() as i64)
                    .await;
                format!("retrying: {reason}")
            }
            Delivery::Retry { reason, .. } | Delivery::Failed(reason) => {
                stats::failed(job.notifier);
                let _ = store.finish_push(&job.id).await;
                format!("failed: {reason}")
            }
            Delivery::InvalidToken(reason) => {
                stats::failed(job.notifier);
                tracing::info!(user = %job.username, device = %job.device_id, %reason, "push token invalid; removed");
                let _ = store.remove_push_token(&job.app_id, job.notifier, &job.token).await;
                let _ = store.finish_push(&job.id).await;
                return;
            }
        };
        let _ = store.record_push_result(&job.app_id, user, device, &result).await;
    }

    async fn senders_for(&self, app_id: &str) -> store::Result<Arc<AppSenders>> {
        let config = self.store.push_config(app_id).await?;
        let text = config.to_string();
        let mut cache = self.senders.lock().await;
        if let Some(s) = cache.get(app_id).filter(|s| s.config == text) {
            return Ok(s.clone());
        }
        let app = self.store.app_by_id(app_id).await?;
        let parsed: PushConfig = serde_json::from_value(config).unwrap_or_default();
        let fcm = parsed.fcm.as_ref().and_then(|f| {
            match Fcm::new(
                f.service_account.clone(),
                &self.settings.fcm_endpoint,
                &self.settings.fcm_token_uri,
            ) {
                Ok(fcm) => Some(Arc::new(fcm) as Arc<dyn PushSender>),
                Err(e) => {
                    tracing::error!(error = %e, app_id, "FCM credentials unusable");
                    None
                }
            }
        });
        let apns = parsed.apns.as_ref().and_then(|a| match Apns::new(a) {
            Ok(apns) => Some(Arc::new(apns) as Arc<dyn PushSender>),
            Err(e) => {
                tracing::error!(error = %e, app_id, "APNs credentials unusable");
                None
            }
        });
        let senders = Arc::new(AppSenders {
            config: text,
            org: app.org,
            app: app.name,
            fcm,
            apns,
        });
        cache.insert(app_id.to_string(), senders.clone());
        Ok(senders)
    }
}
