//! `/{org}/{app}/webhooks` (app token): the app's endpoints for its events (`hooks/` sends
//! them; docs/api.md, Webhooks). The signing secret is shown once, when an endpoint is
//! created; afterwards each endpoint shows its state: active or paused, failures in a row,
//! the last error (a status or a connection problem, never the receiver's body), the last
//! success and the events waiting.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{parse_json, JsonBody};
use crate::{ApiError, AppState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    /// Where to send the events: an https:// URL (or http://, where the server allows it)
    /// that the server's rules let it reach.
    url: String,
    /// The kinds of event: `message`, `recall`, `edit`, `group`, `presence`.
    events: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct WebhookChange {
    /// A new URL (left out or `null`: unchanged).
    url: Option<String>,
    /// New kinds of event (left out or `null`: unchanged).
    events: Option<Vec<String>>,
    /// `"active"` resumes a paused endpoint.
    state: Option<String>,
}

fn checked_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    hooks::guard::check_url(url, state.settings.webhook_allow)
        .map(|u| u.to_string())
        .map_err(ApiError::BadRequest)
}

/// `POST /{org}/{app}/webhooks` (app token): a new endpoint; its signing secret is answered
/// this once.
#[utoipa::path(post, path = "/{org}/{app}/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses((status = 200, description = "`data`: the endpoint, with its `secret`", body = schema::WebhookCreated)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let new: NewWebhook = parse_json(&body)?;
    let url = checked_url(&state, &new.url)?;
    let (webhook, secret) = state.store.create_webhook(&caller.app.id, &url, &new.events).await?;
    let mut data = serde_json::to_value(webhook).map_err(|e| ApiError::Internal(e.to_string()))?;
    data["secret"] = json!(secret);
    Ok(Json(json!({"data": data})))
}

/// `GET /{org}/{app}/webhooks` (app token): the app's endpoints.
#[utoipa::path(get, path = "/{org}/{app}/webhooks", tag = "webhooks",
    responses((status = 200, description = "`data`: the app's endpoints", body = schema::Webhooks)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let webhooks = state.store.webhooks(&caller.app.id).await?;
    Ok(Json(json!({"count": webhooks.len(), "data": webhooks})))
}

/// `GET /{org}/{app}/webhooks/{id}` (app token).
#[utoipa::path(get, path = "/{org}/{app}/webhooks/{id}", tag = "webhooks",
    responses((status = 200, description = "`data`: the endpoint", body = schema::WebhookAnswer)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    Ok(Json(json!({"data": state.store.webhook(&caller.app.id, &id).await?})))
}

/// `PUT /{org}/{app}/webhooks/{id}` (app token): changes the URL or the events, or resumes a
/// paused endpoint.
#[utoipa::path(put, path = "/{org}/{app}/webhooks/{id}", tag = "webhooks", request_body = WebhookChange,
    responses((status = 200, description = "`data`: the endpoint as changed", body = schema::WebhookAnswer)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let change: WebhookChange = parse_json(&body)?;
    let url = change.url.as_deref().map(|u| checked_url(&state, u)).transpose()?;
    let resume = match change.state.as_deref() {
        None => false,
        Some("active") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "state: only \"active\" may be set (to resume a paused webhook), not {other:?}"
            )))
        }
    };
    let webhook = state
        .store
        .update_webhook(&caller.app.id, &id, url.as_deref(), change.events.as_deref(), resume)
        .await?;
    Ok(Json(json!({"data": webhook})))
}

/// `DELETE /{org}/{app}/webhooks/{id}` (app token): the endpoint and the events waiting for it.
#[utoipa::path(delete, path = "/{org}/{app}/webhooks/{id}", tag = "webhooks",
    responses((status = 200, description = "`data`: the endpoint deleted", body = schema::WebhookDeleted)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    state.store.delete_webhook(&caller.app.id, &id).await?;
    Ok(Json(json!({"data": {"id": id, "deleted": true}})))
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    /// An endpoint (`store::webhooks::Webhook`), never with its secret.
    #[derive(ToSchema)]
    pub struct Webhook {
        id: String,
        url: String,
        events: Vec<String>,
        /// `active`, or `paused` (failing: probed every so often).
        state: String,
        /// Failures in a row.
        failures: i64,
        /// The last failure: a status code or what went wrong connecting, never the body.
        last_error: String,
        /// In ms since 1970 (0: never).
        last_success_at: i64,
        last_failure_at: i64,
        created_at: i64,
        /// Events waiting for it.
        queued: i64,
    }

    /// An endpoint just created: its fields and its signing secret.
    #[derive(ToSchema)]
    pub struct NewWebhookData {
        #[serde(flatten)]
        webhook: Webhook,
        /// The key the requests are signed with: shown only now.
        secret: String,
    }

    /// `data`: the endpoint created, with its secret.
    #[derive(ToSchema)]
    pub struct WebhookCreated {
        data: NewWebhookData,
    }

    /// `data`: the app's endpoints.
    #[derive(ToSchema)]
    pub struct Webhooks {
        data: Vec<Webhook>,
        count: u64,
    }

    /// `data`: the endpoint.
    #[derive(ToSchema)]
    pub struct WebhookAnswer {
        data: Webhook,
    }

    #[derive(ToSchema)]
    pub struct WebhookDeletedData {
        id: String,
        deleted: bool,
    }

    /// `data`: the endpoint deleted.
    #[derive(ToSchema)]
    pub struct WebhookDeleted {
        data: WebhookDeletedData,
    }
}
