//! The life of a message over REST: the conversation list and unread counts, recall by id,
//! delete-for-me (one message, or a whole conversation), who read a group message, search.
//! Messages the backend sends and changes are in [`crate::sending`].

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Owner};
use crate::error::{parse_json, JsonBody, Query};
use crate::{ApiError, AppState};
use store::messages::StoredMessage;

type UserPath = Path<(String, String, String)>;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// `GET /{org}/{app}/users/{username}/conversations`: most recent first.
///
/// Each with its unread count and last message; one-to-one conversations also say how far
/// the peer has received and read. The app, or the user.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/conversations", tag = "conversations", params(ListQuery),
    responses((status = 200, description = "The user's conversations, most recent first, and their unread total",
        body = schema::ConversationList)))]
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
///
/// The sum of the unread counts of the user's conversations. The app, or the user.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/unread", tag = "conversations",
    responses((status = 200, description = "`data.total_unread`: messages not read yet", body = schema::UnreadTotal)))]
pub async fn unread(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    let total = state.store.total_unread(&caller.app.id, &username).await?;
    Ok(Json(json!({"data": {"total_unread": total}})))
}

/// `POST /{org}/{app}/messages/{id}/recall`: the app without a time limit, a sender within it.
///
/// The content is erased and everyone who has the message gets a `recalled` event. A
/// user's token may recall only their own messages, within the app's `recall_limit_secs`.
#[utoipa::path(post, path = "/{org}/{app}/messages/{id}/recall", tag = "messages",
    responses((status = 200, description = "Recalled", body = schema::MessageRecalled)))]
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

#[derive(Deserialize, ToSchema)]
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
#[utoipa::path(delete, path = "/{org}/{app}/users/{username}/user_channel", tag = "conversations",
    request_body = DeleteConversationBody,
    responses((status = 200, description = "The conversation is off the user's list", body = schema::ConversationDeleted)))]
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
///
/// The message leaves the user's history (their inbox keeps its place, `hidden`); their
/// devices get a `deleted` event. The app, or the user.
#[utoipa::path(delete, path = "/{org}/{app}/users/{username}/messages/{id}", tag = "messages",
    responses((status = 200, description = "Deleted for this user", body = schema::MessageDeletedForMe)))]
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
///
/// Only for group messages, while the app keeps group read receipts
/// (`group_read_receipts`); the sender is not listed.
#[utoipa::path(get, path = "/{org}/{app}/messages/{id}/readers", tag = "messages",
    responses((status = 200, description = "`entities`: the names of the members who have read it", body = schema::MessageReaders)))]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// The words to find, 1 to 200 bytes (spaces around them aside).
    #[param(min_length = 1, max_length = 200)]
    q: String,
    /// The most messages to answer: 1 to 200 (default 20; out of range is brought into it).
    limit: Option<i64>,
}

/// `GET /{org}/{app}/users/{username}/messages/search?q=`
///
/// The user's text messages (sent or received, not recalled, not deleted for them) that
/// contain `q`, newest first. The app, or the user.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/messages/search", tag = "messages", params(SearchQuery),
    responses((status = 200, description = "The messages found, newest first", body = schema::MessageSearchResults)))]
pub async fn search(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20).clamp(1, 200);
    let found = state.store.search(&caller.app.id, &username, &q.q, limit).await?;
    Ok(Json(json!({"count": found.len(), "entities": found})))
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(conversations))
        .routes(routes!(unread))
        .routes(routes!(search))
        .routes(routes!(delete_for_me))
        .routes(routes!(recall))
        .routes(routes!(delete_conversation))
        .routes(routes!(readers))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    use crate::messages::schema::DeliveredMessage;

    /// One entry of a user's conversation list (`store::lifecycle::ConversationEntry`).
    #[derive(ToSchema)]
    pub struct ConversationEntry {
        /// The conversation's id: `u:{a}:{b}` or `g:{group}`.
        conv: String,
        /// `user` or `group`.
        chat: String,
        /// The peer's name, or the group's id.
        with: String,
        /// The conversation's last `seq`.
        last_seq: i64,
        /// How far the user has read.
        read_seq: i64,
        unread: i64,
        /// When its last message came (ms).
        updated: i64,
        /// One-to-one conversations: how far the peer has read.
        peer_read_seq: Option<i64>,
        /// One-to-one conversations: how far the peer's devices have received.
        peer_delivered_seq: Option<i64>,
        /// The conversation's last message, when it has one.
        last_message: Option<DeliveredMessage>,
    }

    /// A user's conversations.
    #[derive(ToSchema)]
    pub struct ConversationList {
        entities: Vec<ConversationEntry>,
        count: u64,
        /// The sum of the unread counts of all the user's conversations.
        total_unread: i64,
    }

    #[derive(ToSchema)]
    pub struct UnreadTotalData {
        total_unread: i64,
    }

    /// `data.total_unread`: the user's badge number.
    #[derive(ToSchema)]
    pub struct UnreadTotal {
        data: UnreadTotalData,
    }

    #[derive(ToSchema)]
    pub struct MessageRecalledData {
        /// The message's id.
        id: String,
        /// Always true.
        recalled: bool,
    }

    /// The message recalled.
    #[derive(ToSchema)]
    pub struct MessageRecalled {
        data: MessageRecalledData,
    }

    #[derive(ToSchema)]
    pub struct MessageDeletedForMeData {
        /// The message's id.
        id: String,
        /// Always true.
        deleted: bool,
    }

    /// The message deleted for the user.
    #[derive(ToSchema)]
    pub struct MessageDeletedForMe {
        data: MessageDeletedForMeData,
    }

    #[derive(ToSchema)]
    pub struct ConversationDeletedData {
        /// Always `ok`.
        result: String,
    }

    /// `data.result`: `ok`.
    #[derive(ToSchema)]
    pub struct ConversationDeleted {
        data: ConversationDeletedData,
    }

    /// The members who have read a group message.
    #[derive(ToSchema)]
    pub struct MessageReaders {
        count: u64,
        /// Their names, in order.
        entities: Vec<String>,
    }

    /// Messages found by a search.
    #[derive(ToSchema)]
    pub struct MessageSearchResults {
        count: u64,
        entities: Vec<DeliveredMessage>,
    }
}
