//! The life of a message over REST: the conversation list and unread counts, recall by id,
//! delete-for-me (one message, or a whole conversation), who read a group message, search.
//! Messages the backend sends and changes are in [`crate::sending`].

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Caller, Owner};
use crate::error::{parse_json, JsonBody, Query};
use crate::{ApiError, AppState};
use store::messages::StoredMessage;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteConversationBody {
    /// The peer (one-to-one) or the group id.
    channel: String,
    /// `chat` or `groupchat`.
    #[serde(rename = "type")]
    kind: String,
    /// Also hide the conversation's messages from the user's history.
    #[serde(default)]
    delete_roam: bool,
}

/// `DELETE /{org}/{app}/users/{username}/user_channel` with `{"channel", "type",
/// "delete_roam"}`: takes a conversation off the user's list (and with `delete_roam`, its
/// messages out of their history), for that user only.
pub async fn delete_conversation(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let req: DeleteConversationBody = parse_json(&body)?;
    let peer = req.channel.trim().to_ascii_lowercase();
    let conv = match req.kind.as_str() {
        "chat" => store::messages::user_conv(&username, &peer),
        "groupchat" => format!("g:{}", req.channel.trim()),
        other => {
            return Err(ApiError::BadRequest(format!(
                "body.type is \"chat\" or \"groupchat\", not {other:?}"
            )))
        }
    };
    state
        .store
        .delete_conversation(&caller.app.id, &username, &conv, req.delete_roam)
        .await?;
    Ok(Json(json!({"data": {"result": "ok"}})))
}

pub(crate) async fn tell_holders(
    state: &AppState,
    caller: &Caller,
    msg: &StoredMessage,
    event: &Value,
) -> Result<(), ApiError> {
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
