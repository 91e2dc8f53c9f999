//! The life of a message over REST: the conversation list and unread counts, recall,
//! delete-for-me, who read a group message, search, and messages sent by the app's backend.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Caller, Owner};
use crate::error::{parse_json, JsonBody, Query};
use crate::{ApiError, AppState};
use store::envelope::{ChatType, Destroy, MsgType};
use store::files::Attacher;
use store::messages::{NewMessage, Outcome, StoredMessage};

type UserPath = Path<(String, String, String)>;

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

/// `GET /{org}/{app}/users/{username}/conversations`: most recent first.
pub async fn conversations(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest("'limit' must be from 1 to 500".into()));
    }
    let entries = state.store.conversations(&caller.app.id, &username, limit).await?;
    let total = state.store.total_unread(&caller.app.id, &username).await?;
    Ok(Json(
        json!({"entities": entries, "count": entries.len(), "total_unread": total}),
    ))
}

/// `GET /{org}/{app}/users/{username}/unread`: the badge number.
pub async fn unread(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    let total = state.store.total_unread(&caller.app.id, &username).await?;
    Ok(Json(json!({"data": {"total_unread": total}})))
}

/// `POST /{org}/{app}/messages/{id}/recall`: the app without a time limit, a sender within it.
pub async fn recall(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): UserPath,
) -> Result<Json<Value>, ApiError> {
    let settings = state.store.app_settings(&caller.app.id).await?;
    let msg = state
        .store
        .recall(
            &caller.app.id,
            &id,
            caller.user.as_deref(),
            settings.recall_limit_secs * 1000,
        )
        .await?;
    let by = caller.user.clone().unwrap_or_else(|| "admin".into());
    let event = json!({"op": "recalled", "id": msg.id, "conv": msg.conv, "seq": msg.seq, "by": by});
    tell_holders(&state, &caller, &msg, &event).await?;
    Ok(Json(json!({"data": {"id": msg.id, "recalled": true}})))
}

async fn tell_holders(state: &AppState, caller: &Caller, msg: &StoredMessage, event: &Value) -> Result<(), ApiError> {
    for user in state.store.holders(&caller.app.id, &msg.id).await? {
        state.live.notify(&caller.app.org, &caller.app.name, &user, event);
    }
    Ok(())
}

/// `DELETE /{org}/{app}/users/{username}/messages/{id}`: delete for that user only.
pub async fn delete_for_me(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    Path((_, _, _, id)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.store.hide(&caller.app.id, &username, &id).await?;
    let event = json!({"op": "deleted", "id": id});
    state.live.notify(&caller.app.org, &caller.app.name, &username, &event);
    Ok(Json(json!({"data": {"id": id, "deleted": true}})))
}

/// `GET /{org}/{app}/messages/{id}/readers`: who in a group has read a message (the app,
/// or the message's sender).
pub async fn readers(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): UserPath,
) -> Result<Json<Value>, ApiError> {
    let msg = state.store.message(&caller.app.id, &id).await?;
    if caller.user.as_deref().is_some_and(|me| me != msg.sender) {
        return Err(ApiError::Forbidden(
            "only the sender (or the app) sees who read a message".into(),
        ));
    }
    if msg.chat != "group" {
        return Err(ApiError::BadRequest(
            "read lists are kept for group messages; one-to-one receipts come as events".into(),
        ));
    }
    if !state.store.app_settings(&caller.app.id).await?.group_read_receipts {
        return Err(ApiError::Forbidden(
            "this app has group read receipts turned off".into(),
        ));
    }
    let readers = state.store.readers(&caller.app.id, &msg).await?;
    Ok(Json(json!({"count": readers.len(), "entities": readers})))
}

#[derive(Deserialize)]
pub struct SearchQuery {
    q: String,
    limit: Option<i64>,
}

/// `GET /{org}/{app}/users/{username}/messages/search?q=`
pub async fn search(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20).clamp(1, 200);
    let found = state.store.search(&caller.app.id, &username, &q.q, limit).await?;
    Ok(Json(json!({"count": found.len(), "entities": found})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerMessage {
    /// The sender; absent with `"system": true`.
    #[serde(default)]
    from: Option<String>,
    /// Sends as the app's system user (`"from": "system"`, not a real user).
    #[serde(default)]
    system: bool,
    to: Vec<String>,
    #[serde(rename = "type")]
    kind: MsgType,
    body: Value,
    #[serde(default)]
    ext: Option<Value>,
    /// A self-destructing message, as on `send` (topics.md).
    #[serde(default)]
    destroy: Option<Destroy>,
}

/// The name server messages carry when sent as the system user.
pub const SYSTEM_SENDER: &str = "system";

/// `POST /{org}/{app}/messages/users` and `/messages/chatgroups` (app token): stored and
/// delivered exactly like messages from devices; answers each recipient's message id.
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, target)): UserPath,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let chat = match target.as_str() {
        "users" => ChatType::User,
        "chatgroups" => ChatType::Group,
        _ => {
            return Err(ApiError::NotFound(
                "send to /messages/users or /messages/chatgroups".into(),
            ))
        }
    };
    let req: ServerMessage = parse_json(&body)?;
    let from = match (req.from, req.system) {
        (_, true) => SYSTEM_SENDER.to_string(),
        (Some(from), false) => {
            let from = from.trim().to_ascii_lowercase();
            state.store.require_users(&caller.app.id, &[&from]).await?;
            from
        }
        (None, false) => {
            return Err(ApiError::BadRequest(
                "name the sender in 'from', or set \"system\": true".into(),
            ))
        }
    };
    if req.to.is_empty() || req.to.len() > 100 {
        return Err(ApiError::BadRequest("'to' names 1 to 100 recipients".into()));
    }
    if req.kind == MsgType::Cmd {
        return Err(ApiError::BadRequest(
            "cmd messages are sent by devices; they are not stored".into(),
        ));
    }
    req.kind.validate_body(&req.body).map_err(ApiError::BadRequest)?;
    if let Some(destroy) = &req.destroy {
        destroy.validate(chat).map_err(ApiError::BadRequest)?;
    }
    let settings = state.store.app_settings(&caller.app.id).await?;
    let mut body = req.body.clone();
    let files = state
        .store
        .attach_files(
            &state.files.links,
            (&caller.app.org, &caller.app.name, &caller.app.id),
            Attacher::App,
            req.kind,
            &mut body,
            settings.allow_external_urls,
        )
        .await
        .map_err(ApiError::BadRequest)?;
    let batch: Vec<NewMessage> = req
        .to
        .iter()
        .map(|to| NewMessage {
            app_id: caller.app.id.clone(),
            chat,
            sender: from.clone(),
            sender_device: "rest-api".into(),
            to: to.trim().to_ascii_lowercase(),
            cid: format!("api-{}", store::tokens::random_secret(16)),
            kind: req.kind,
            body: body.to_string(),
            ext: req.ext.as_ref().map(Value::to_string),
            require_contacts: settings.require_contacts,
            room_history: settings.room_history,
            as_app: true,
            files: files.clone(),
            destroy: req.destroy,
        })
        .collect();
    let outcomes = state.store.store_batch(&batch).await?;
    let mut result = serde_json::Map::new();
    for (m, outcome) in batch.iter().zip(outcomes) {
        match outcome {
            Outcome::Stored { msg, useqs } => {
                for (user, useq) in useqs {
                    let payload = serde_json::to_value(msg.delivered(&user, Some(useq))).unwrap_or_default();
                    state.live.notify(&caller.app.org, &caller.app.name, &user, &payload);
                }
                result.insert(m.to.clone(), json!(msg.id));
            }
            Outcome::Duplicate { msg, .. } => {
                result.insert(m.to.clone(), json!(msg.id));
            }
            Outcome::Refused { code, message } => {
                result.insert(m.to.clone(), json!({"error": code, "error_description": message}));
            }
        }
    }
    Ok(Json(json!({"data": result})))
}
