//! Push notifications for users whose devices are all offline.
//!
//! - [`plan`]: after a message is stored, which recipients get a push, built from the app's
//!   template, with their unread count as the badge; queued durably in the database.
//! - [`worker`]: drains the queue with bounded concurrency, retries with backoff, drops a
//!   push whose recipient came online meanwhile, removes tokens the provider rejects.
//! - [`fcm`] (HTTP v1 with a service-account key) and [`apns`] (token auth through `a2`)
//!   behind one [`PushSender`] trait.

pub mod apns;
pub mod config;
pub mod fcm;
pub mod plan;
pub mod stats;
pub mod worker;

use std::time::Duration;

use serde_json::Value;

pub use config::{PushConfig, Template};
pub use worker::{Worker, WorkerSettings};

/// What became of one attempt to send a push.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Sent,
    /// Try again later (429, 5xx, network); `after` when the provider said when.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The provider says the token is no longer valid: forget it.
    InvalidToken(String),
    /// Will not succeed on retry.
    Failed(String),
}

/// Sends one push to one device token.
#[async_trait::async_trait]
pub trait PushSender: Send + Sync {
    async fn send(&self, token: &str, push: &Value) -> Delivery;
}
