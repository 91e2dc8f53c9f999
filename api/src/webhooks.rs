//! `/{org}/{app}/webhooks` (app token): the app's endpoints for its events (`hooks/` sends
//! them; docs/api.md, Webhooks). The signing secret is shown once, when an endpoint is
//! created; afterwards each endpoint shows its state: active or paused, failures in a row,
//! the last error (a status or a connection problem, never the receiver's body), the last
//! success and the events waiting.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::{parse_json, JsonBody};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    url: String,
    events: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookChange {
    url: Option<String>,
    events: Option<Vec<String>>,
    /// `"active"` resumes a paused endpoint.
    state: Option<String>,
}

fn checked_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    hooks::guard::check_url(url, state.settings.webhook_allow)
        .map(|u| u.to_string())
        .map_err(ApiError::BadRequest)
}

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

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let webhooks = state.store.webhooks(&caller.app.id).await?;
    Ok(Json(json!({"count": webhooks.len(), "data": webhooks})))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    Ok(Json(json!({"data": state.store.webhook(&caller.app.id, &id).await?})))
}

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

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    state.store.delete_webhook(&caller.app.id, &id).await?;
    Ok(Json(json!({"data": {"id": id, "deleted": true}})))
}
