//! Shared pieces of chatd that the gate, the bridge and the API all need:
//!
//! - [`envelope`]: the JSON envelope devices and the server exchange over MQTT, and the
//!   internal frames the gate and the bridge wrap around it;
//! - [`Store`]: storage on SQLite (the zero-setup default) or PostgreSQL, through one
//!   `sqlx::Any` pool and one portable schema, cut by domain ([`tenants`], [`users`], [`messages`]);
//! - [`tokens`]: signed, expiring JWTs for apps and users, and argon2 password hashing.

pub mod attributes;
pub mod channels;
pub mod compact;
pub mod contacts;
pub mod db;
pub mod envelope;
pub mod error;
pub mod files;
pub mod lifecycle;
pub mod live;
pub mod messages;
pub mod moderation;
pub mod names;
pub mod notification;
mod pool_writer;
pub mod push;
mod sqlite_writer;
pub mod tenants;
pub mod tokens;
pub mod topics;
pub mod users;
pub mod webhooks;

pub use db::{Backend, Store};
pub use error::{Error, Result};

/// Milliseconds since the Unix epoch: every timestamp chatd stores or sends.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
