//! The REST management API, in the resource model of the Agora/Easemob platform API:
//! everything lives under `/{org}/{app}/…`, JSON in and out, bearer tokens from
//! `POST /{org}/{app}/token`. See `docs/api.md` for every route.

mod auth;
mod channels;
mod error;
mod lifecycle;
mod messages;
mod push;
mod social;
mod tokens;
mod users;

use std::time::Duration;

use axum::routing::{delete, get, post};
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

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub tokens: store::tokens::Tokens,
    pub settings: ApiSettings,
    /// The live device connections: to close them, drop room subscriptions, send events.
    pub live: std::sync::Arc<dyn store::live::Live>,
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
            "/:org/:app/users/:username/conversations/:chat/:with/messages",
            get(messages::history),
        )
        .route(
            "/:org/:app/settings",
            get(social::get_settings).put(social::put_settings),
        )
        .route("/:org/:app/users/:username/contacts/users", get(social::contacts))
        .route(
            "/:org/:app/users/:username/contacts/users/:friend",
            post(social::add_contact).delete(social::remove_contact),
        )
        .route(
            "/:org/:app/users/:username/blocks/users",
            get(social::blocklist).post(social::block),
        )
        .route(
            "/:org/:app/users/:username/blocks/users/:blocked",
            delete(social::unblock),
        )
        .route(
            "/:org/:app/metadata/user/:username",
            get(social::get_metadata).put(social::put_metadata),
        )
        .route(
            "/:org/:app/users/:username/conversations",
            get(lifecycle::conversations),
        )
        .route("/:org/:app/users/:username/unread", get(lifecycle::unread))
        .route("/:org/:app/users/:username/messages/search", get(lifecycle::search))
        .route(
            "/:org/:app/users/:username/messages/:id",
            delete(lifecycle::delete_for_me),
        )
        .route("/:org/:app/messages/:id/recall", post(lifecycle::recall))
        .route("/:org/:app/messages/:id/readers", get(lifecycle::readers))
        .route("/:org/:app/messages/:target", post(lifecycle::send))
        .route(
            "/:org/:app/users/:username/push/binding",
            get(push::devices).put(push::bind),
        )
        .route("/:org/:app/users/:username/push/binding/:device", delete(push::unbind))
        .route(
            "/:org/:app/users/:username/push/dnd",
            get(push::get_dnd).put(push::put_dnd),
        )
        .route(
            "/:org/:app/users/:username/push/mute",
            get(push::get_mute).put(push::put_mute),
        )
        .route("/:org/:app/push/config", get(push::get_config).put(push::put_config))
        .route("/:org/:app/push/stats", get(push::stats))
        .merge(channels::routes(store::channels::ChannelKind::Group))
        .merge(channels::routes(store::channels::ChannelKind::Room))
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
