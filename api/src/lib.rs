//! The REST management API, in the resource model of the Agora/Easemob platform API:
//! everything lives under `/{org}/{app}/…`, JSON in and out, bearer tokens from
//! `POST /{org}/{app}/token`. See `docs/api.md` for every route.

mod auth;
mod error;
mod messages;
mod tokens;
mod users;

use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;

/// Token lifetimes.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub app_token_ttl: Duration,
    pub user_token_ttl: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            app_token_ttl: Duration::from_secs(24 * 3600),
            user_token_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Told `(org, app, username)` after a user is deleted, so that their open MQTT
/// connections can be closed (the API does not know about connections).
pub type OnUserDeleted = std::sync::Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub tokens: store::tokens::Tokens,
    pub settings: ApiSettings,
    pub on_user_deleted: OnUserDeleted,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/:org/:app/token", post(tokens::issue))
        .route("/:org/:app/users", post(users::create).get(users::list))
        .route(
            "/:org/:app/users/:username",
            get(users::get).put(users::update).delete(users::delete),
        )
        .route("/:org/:app/users/:username/inbox", get(messages::inbox))
        .route(
            "/:org/:app/users/:username/conversations/user/:peer/messages",
            get(messages::history),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` turns true, finishing requests in flight.
pub async fn serve(listener: TcpListener, state: AppState, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}
