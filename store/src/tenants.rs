//! Tenants: an org holds apps; an app holds users, messages and everything else, and has
//! client credentials (client id + secret) for its backend.

use sqlx::Row;

use crate::error::{Error, Result};
use crate::names::validate_name;
use crate::tokens::{hash_secret, random_secret, verify_secret};
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
        .bind(hash_secret(&secret)?)
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

    /// Checks client credentials for an app; the error does not say which part was wrong.
    pub async fn check_client_secret(&self, app: &App, client_id: &str, secret: &str) -> Result<()> {
        let hash: String = sqlx::query_scalar("SELECT secret_hash FROM apps WHERE id = $1")
            .bind(&app.id)
            .fetch_one(&self.pool)
            .await?;
        if client_id == app.client_id && verify_secret(secret, &hash) {
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
            .bind(hash_secret(&secret)?)
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
