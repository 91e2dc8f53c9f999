//! Tenants: an org holds apps; an app holds users, messages and everything else, and has
//! client credentials (client id + secret) for its backend.

use sqlx::Row;

use crate::error::{Error, Result};
use crate::names::validate_name;
use crate::tokens::{hash_secret_async, random_secret, verify_secret_async};
use crate::Store;

/// An app, as stored (the secret only as a hash).
#[derive(Debug, Clone)]
pub struct App {
    pub id: String,
    pub org: String,
    pub name: String,
    pub client_id: String,
    pub secret_version: i64,
    pub created_at: i64,
}

/// Client credentials, shown once when an app is created or its secret rotated.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
}

fn app_from_row(row: &sqlx::any::AnyRow) -> Result<App> {
    Ok(App {
        id: row.try_get("id")?,
        org: row.try_get("org")?,
        name: row.try_get("name")?,
        client_id: row.try_get("client_id")?,
        secret_version: row.try_get("secret_version")?,
        created_at: row.try_get("created_at")?,
    })
}

const APP_COLUMNS: &str = "id, org, name, client_id, secret_version, created_at";

impl Store {
    /// Creates an app and returns it with its fresh credentials.
    pub async fn create_app(&self, org: &str, name: &str) -> Result<(App, Credentials)> {
        validate_name("org", org)?;
        validate_name("app", name)?;
        let app = App {
            id: uuid::Uuid::now_v7().to_string(),
            org: org.to_string(),
            name: name.to_string(),
            client_id: format!("YXA6{}", random_secret(22)),
            secret_version: 1,
            created_at: crate::now_ms(),
        };
        let secret = format!("YXA6{}", random_secret(40));
        let result = sqlx::query(
            "INSERT INTO apps (id, org, name, client_id, secret_hash, secret_version, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&app.id)
        .bind(&app.org)
        .bind(&app.name)
        .bind(&app.client_id)
        .bind(hash_secret_async(secret.clone()).await?)
        .bind(app.secret_version)
        .bind(app.created_at)
        .execute(&self.pool)
        .await;
        match result.map_err(Error::from) {
            Err(e) if e.is_unique_violation() => Err(Error::Conflict(format!("app {org}/{name}"))),
            Err(e) => Err(e),
            Ok(_) => {
                let creds = Credentials {
                    client_id: app.client_id.clone(),
                    client_secret: secret,
                };
                Ok((app, creds))
            }
        }
    }

    /// Looks up an app by org and name.
    pub async fn find_app(&self, org: &str, name: &str) -> Result<App> {
        let row = sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE org = $1 AND name = $2"))
            .bind(org)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("app {org}/{name}")))?;
        app_from_row(&row)
    }

    /// Looks up an app by id.
    pub async fn app_by_id(&self, id: &str) -> Result<App> {
        let row = sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("app {id}")))?;
        app_from_row(&row)
    }

    /// Checks client credentials for an app; the error does not say which part was wrong,
    /// and neither does the time taken (the secret is verified even for a wrong client id).
    pub async fn check_client_secret(&self, app: &App, client_id: &str, secret: &str) -> Result<()> {
        let hash: String = sqlx::query_scalar("SELECT secret_hash FROM apps WHERE id = $1")
            .bind(&app.id)
            .fetch_one(&self.pool)
            .await?;
        let secret_ok = verify_secret_async(secret.to_string(), Some(hash)).await?;
        if client_id == app.client_id && secret_ok {
            Ok(())
        } else {
            Err(Error::BadCredentials)
        }
    }

    /// Replaces an app's client secret. App tokens issued before stop working.
    pub async fn rotate_app_secret(&self, org: &str, name: &str) -> Result<Credentials> {
        let app = self.find_app(org, name).await?;
        let secret = format!("YXA6{}", random_secret(40));
        sqlx::query("UPDATE apps SET secret_hash = $1, secret_version = secret_version + 1 WHERE id = $2")
            .bind(hash_secret_async(secret.clone()).await?)
            .bind(&app.id)
            .execute(&self.pool)
            .await?;
        Ok(Credentials {
            client_id: app.client_id,
            client_secret: secret,
        })
    }

    /// All apps, oldest first.
    pub async fn list_apps(&self) -> Result<Vec<App>> {
        let rows = sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(app_from_row).collect()
    }
}

/// Per-app rules, set by the app's backend (`PUT /{org}/{app}/settings`). Every field has a
/// default, so an app that never set anything gets sane behaviour.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppSettings {
    /// One-to-one messages only between contacts.
    pub require_contacts: bool,
    /// The largest message body (its JSON), in bytes.
    pub max_message_bytes: usize,
    /// Words refused (or masked) in text messages, matched case-insensitively.
    pub forbidden_words: Vec<String>,
    /// What to do with a forbidden word: refuse the message, or mask the word with `*`.
    pub forbidden_action: ForbiddenAction,
    /// Messages a user may send per second, sustained, and in a burst.
    pub send_rate_per_sec: f64,
    pub send_burst: f64,
    /// How many recent messages a chatroom keeps for members who join later.
    pub room_history: i64,
    /// The most members a group or chatroom may have.
    pub max_group_members: i64,
    pub max_room_members: i64,
    /// How long after sending a user may recall a message.
    pub recall_limit_secs: i64,
    /// Whether group messages get read receipts (events and read counts).
    pub group_read_receipts: bool,
    /// The largest `customExts` of a `custom` message, in bytes.
    pub max_custom_bytes: usize,
    /// The largest file a user may upload, in bytes (the server's `files.max_file_bytes`
    /// caps it).
    pub max_file_bytes: i64,
    /// The bytes of files one user may hold (uploads in progress count at their full size).
    pub file_quota_bytes: i64,
    /// Content types users may upload (`image/png`, or `image/*`); empty allows any.
    pub allowed_file_types: Vec<String>,
    /// Whether file message bodies may point at URLs outside chatd (unchecked, not kept).
    pub allow_external_urls: bool,
    /// Whether anyone may register a user (`POST /users` without a token: one user, with a
    /// password, throttled per address), as a public sign-up page needs. Off by default: an
    /// app's backend creates its users.
    pub open_registration: bool,
    /// Pre-send moderation: each message goes to this endpoint (batched) before it is
    /// stored, which answers allow, reject or replace; empty: off.
    pub moderation_url: String,
    /// The key the requests to `moderation_url` are signed with (HMAC-SHA256).
    pub moderation_secret: String,
    /// How long the endpoint may take to answer.
    pub moderation_timeout_ms: i64,
    /// When it does not answer in time (or answers nonsense): `true` stores the messages as
    /// they are (fail open), `false` refuses them (`moderation_unavailable`).
    pub moderation_fail_open: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForbiddenAction {
    Reject,
    Mask,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            require_contacts: false,
            max_message_bytes: 16 * 1024,
            forbidden_words: Vec::new(),
            forbidden_action: ForbiddenAction::Reject,
            send_rate_per_sec: 20.0,
            send_burst: 40.0,
            room_history: 100,
            max_group_members: 3000,
            max_room_members: 20_000,
            recall_limit_secs: 120,
            group_read_receipts: true,
            max_custom_bytes: 4096,
            max_file_bytes: 100 * 1024 * 1024,
            file_quota_bytes: 1024 * 1024 * 1024,
            allowed_file_types: Vec::new(),
            allow_external_urls: false,
            open_registration: false,
            moderation_url: String::new(),
            moderation_secret: String::new(),
            moderation_timeout_ms: 1000,
            moderation_fail_open: true,
        }
    }
}

impl AppSettings {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &str, ok: bool, rule: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::invalid(name, rule))
            }
        };
        check("max_message_bytes", self.max_message_bytes > 0, "must be positive")?;
        check("send_rate_per_sec", self.send_rate_per_sec > 0.0, "must be positive")?;
        check("send_burst", self.send_burst >= 1.0, "must be at least 1")?;
        check("max_group_members", self.max_group_members > 1, "must be at least 2")?;
        check("max_room_members", self.max_room_members > 1, "must be at least 2")?;
        check("recall_limit_secs", self.recall_limit_secs >= 0, "must be 0 or more")?;
        check("max_custom_bytes", self.max_custom_bytes > 0, "must be positive")?;
        check("max_file_bytes", self.max_file_bytes > 0, "must be positive")?;
        check("file_quota_bytes", self.file_quota_bytes > 0, "must be positive")?;
        let well_formed = |t: &String| {
            let (kind, sub) = t.split_once('/').unwrap_or(("", ""));
            let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            token(kind) && (sub == "*" || token(sub))
        };
        if self.allowed_file_types.len() > 100 || !self.allowed_file_types.iter().all(well_formed) {
            return Err(Error::invalid(
                "allowed_file_types",
                "at most 100 content types like \"image/png\" or \"image/*\"",
            ));
        }
        if !(50..=5_000).contains(&self.moderation_timeout_ms) {
            return Err(Error::invalid("moderation_timeout_ms", "must be from 50 to 5000"));
        }
        if !self.moderation_url.is_empty() {
            let url = self.moderation_url.as_str();
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
                return Err(Error::invalid(
                    "moderation_url",
                    "must be an https:// (or, where the server allows it, http://) URL of at most 2048 characters",
                ));
            }
            if self.moderation_secret.chars().count() < 16 {
                return Err(Error::invalid(
                    "moderation_secret",
                    "must have at least 16 characters when moderation_url is set (requests are signed with it)",
                ));
            }
        }
        if !(0..=10_000).contains(&self.room_history) {
            return Err(Error::invalid("room_history", "must be from 0 to 10000"));
        }
        if self.forbidden_words.len() > 1000
            || self
                .forbidden_words
                .iter()
                .any(|w| w.trim().is_empty() || w.len() > 100)
        {
            return Err(Error::invalid(
                "forbidden_words",
                "at most 1000 non-empty words of up to 100 bytes",
            ));
        }
        Ok(())
    }
}

impl AppSettings {
    /// Whether this app accepts files of `content_type`.
    pub fn allows_file_type(&self, content_type: &str) -> bool {
        self.allowed_file_types.is_empty()
            || self.allowed_file_types.iter().any(|t| match t.strip_suffix("/*") {
                Some(kind) => content_type.split('/').next() == Some(kind),
                None => t == content_type,
            })
    }
}

impl Store {
    pub async fn app_settings(&self, app_id: &str) -> Result<AppSettings> {
        let text: String = sqlx::query_scalar("SELECT settings FROM apps WHERE id = $1")
            .bind(app_id)
            .fetch_one(&self.pool)
            .await?;
        serde_json::from_str(&text).map_err(|e| Error::Internal(format!("stored settings of app {app_id}: {e}")))
    }

    /// Replaces the fields present in `patch` (a JSON object of `AppSettings` fields).
    pub async fn update_app_settings(&self, app_id: &str, patch: &serde_json::Value) -> Result<AppSettings> {
        let mut current =
            serde_json::to_value(self.app_settings(app_id).await?).map_err(|e| Error::Internal(e.to_string()))?;
        let patch = patch
            .as_object()
            .ok_or_else(|| Error::invalid("settings", "must be a JSON object"))?;
        for (key, value) in patch {
            current[key] = value.clone();
        }
        let settings: AppSettings =
            serde_json::from_value(current).map_err(|e| Error::invalid("settings", e.to_string()))?;
        settings.validate()?;
        let text = serde_json::to_string(&settings).map_err(|e| Error::Internal(e.to_string()))?;
        sqlx::query("UPDATE apps SET settings = $1 WHERE id = $2")
            .bind(text)
            .bind(app_id)
            .execute(&self.pool)
            .await?;
        Ok(settings)
    }
}
