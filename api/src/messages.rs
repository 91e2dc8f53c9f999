//! History and catching up over REST.
//!
//! - `GET /{org}/{app}/users/{user}/conversations/user/{peer}/messages?from_seq=&to_seq=&limit=`:
//!   a one-to-one conversation by `seq` range, oldest first.
//! - `GET /{org}/{app}/users/{user}/inbox?after=&limit=`: the user's inbox after `useq`
//!   `after`, the same pages the MQTT `sync` op returns.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Owner};
use crate::error::Query;
use crate::{ApiError, AppState};
use store::envelope::MAX_SYNC_LIMIT;
use store::messages::user_conv;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The first `seq` to answer (default 1).
    #[param(minimum = 1)]
    from_seq: Option<i64>,
    /// The last `seq` to answer (default: the conversation's end); at least `from_seq`.
    #[param(minimum = 1)]
    to_seq: Option<i64>,
    /// 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// `GET /{org}/{app}/users/{username}/conversations/{chat}/{with}/messages`: a conversation's
/// messages by `seq` range, oldest first (`chat` is `user` with a peer's name, or `group`
/// with a group's id), without those the user deleted for themselves, with their reactions.
/// The app, or the user (a group's member, for a group).
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/conversations/{chat}/{with}/messages", tag = "messages",
    params(HistoryQuery),
    responses((status = 200, description = "The messages from `from_seq`, oldest first, and where the conversation ends",
        body = schema::ConversationHistory)))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, username, chat, with)): Path<(String, String, String, String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let (username, with) = (username.to_ascii_lowercase(), with.to_ascii_lowercase());
    caller.may_act_as(&username)?;
    let conv = match chat.as_str() {
        "user" => user_conv(&username, &with),
        "group" => {
            // Members read the group's history from when they joined the conversation list.
            if caller.user.is_some() && state.store.member(&caller.app.id, &with, &username).await?.is_none() {
                return Err(ApiError::Forbidden("not a member of this group".into()));
            }
            format!("g:{with}")
        }
        _ => {
            return Err(ApiError::NotFound(
                "conversations are /user/{peer} or /group/{id}".into(),
            ))
        }
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_SYNC_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "'limit' must be from 1 to {MAX_SYNC_LIMIT}"
        )));
    }
    let from_seq = q.from_seq.unwrap_or(1);
    let to_seq = q.to_seq.unwrap_or(i64::MAX);
    if from_seq < 1 || to_seq < from_seq {
        return Err(ApiError::BadRequest("need 1 <= from_seq <= to_seq".into()));
    }
    let msgs = state
        .store
        .history(&caller.app.id, &conv, &username, from_seq, to_seq, limit)
        .await?;
    let last_seq = state.store.conversation_head(&caller.app.id, &conv).await?;
    let mut entities: Vec<_> = msgs.iter().map(|m| m.delivered(&username, None)).collect();
    state.store.attach_reactions(&mut entities).await?;
    Ok(Json(
        json!({"conv": conv, "last_seq": last_seq, "count": entities.len(), "entities": entities}),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// The `useq` already processed: the page starts after it (default 0, everything).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// 1 to 200 (default 100).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// `GET /{org}/{app}/users/{username}/inbox`: the user's inbox after `useq` `after`, the
/// same pages as the MQTT `sync` op (a message the user deleted for themselves keeps its
/// place, `hidden` and without content). The app, or the user.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/inbox", tag = "messages", params(InboxQuery),
    responses((status = 200, description = "A page of the inbox, in `useq` order; `last` is the next page's `after`",
        body = schema::InboxPage)))]
pub async fn inbox(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    Query(q): Query<InboxQuery>,
) -> Result<Json<Value>, ApiError> {
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if after < 0 || !(1..=MAX_SYNC_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "need after >= 0 and limit from 1 to {MAX_SYNC_LIMIT}"
        )));
    }
    if !state.store.user_exists(&caller.app.id, &username).await? {
        return Err(ApiError::NotFound(format!("user {username} not found")));
    }
    let (msgs, more) = state.store.inbox_after(&caller.app.id, &username, after, limit).await?;
    let last = msgs.last().and_then(|m| m.useq).unwrap_or(after);
    let head = state.store.inbox_head(&caller.app.id, &username).await?;
    Ok(Json(
        json!({"after": after, "last": last, "more": more, "head": head, "msgs": msgs}),
    ))
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(inbox)).routes(routes!(history))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`). [`DeliveredMessage`]
/// is a stored message as devices and REST read it (`store::envelope::Delivered`, the
/// `msg` op of topics.md), shared by the modules that answer messages.
pub(crate) mod schema {
    #![allow(dead_code)]
    use serde_json::Value;
    use utoipa::ToSchema;

    /// The kind of conversation a message is in.
    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum MessageChat {
        User,
        Group,
        Room,
    }

    /// A message's type, as in the Agora/Easemob message formats.
    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum MessageKind {
        Txt,
        Img,
        Audio,
        Video,
        File,
        Loc,
        Cmd,
        Custom,
    }

    /// When a self-destructing message's timer starts.
    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum DestroyFrom {
        Read,
        Sent,
    }

    /// A self-destructing message's timer.
    #[derive(ToSchema)]
    pub(crate) struct DestroyTimer {
        /// Seconds, 1 to 604,800 (7 days).
        #[schema(minimum = 1, maximum = 604_800)]
        after: i64,
        from: DestroyFrom,
    }

    /// One emoji's reactions to a message.
    #[derive(ToSchema)]
    pub(crate) struct MessageReaction {
        emoji: String,
        count: u64,
        users: Vec<String>,
    }

    /// A stored message as a device receives it (the `msg` op of topics.md).
    #[derive(ToSchema)]
    pub(crate) struct DeliveredMessage {
        /// Always `msg`.
        op: String,
        /// The server's message id.
        id: String,
        /// The conversation: `u:{a}:{b}` (names sorted), `g:{group}`, `r:{room}`.
        conv: String,
        /// Its place in the conversation (1, 2, 3, … without gaps; 0 for a `cmd`).
        seq: i64,
        /// Its place in the reading user's inbox; absent in a conversation's history.
        useq: Option<i64>,
        /// When it was stored (ms since 1970).
        ts: i64,
        chat: MessageChat,
        /// The sender's name (`admin` for the app itself).
        from: String,
        /// The sending device, on the sender's own copies only.
        from_device: Option<String>,
        /// The recipient's name, or the group's or chatroom's id.
        to: String,
        /// The sender's `cid`, on the sender's own copies only.
        cid: Option<String>,
        #[serde(rename = "type")]
        kind: MessageKind,
        /// The body for its type; null once recalled, self-destructed or hidden.
        #[schema(value_type = Option<Object>, required = true)]
        body: Option<serde_json::Map<String, Value>>,
        /// The app's own data on the message, as sent.
        ext: Option<Value>,
        /// Present (true) once recalled: the body is gone.
        recalled: Option<bool>,
        /// When it was last edited (ms), if ever.
        edited: Option<i64>,
        /// Present (true) when the user deleted it for themselves (inbox pages only).
        hidden: Option<bool>,
        /// Emoji reactions, when there are any.
        reactions: Option<Vec<MessageReaction>>,
        destroy: Option<DestroyTimer>,
        /// Present (true) once self-destructed: the body is gone.
        destroyed: Option<bool>,
    }

    /// A conversation's messages.
    #[derive(ToSchema)]
    pub struct ConversationHistory {
        /// The conversation's id.
        conv: String,
        /// The conversation's last `seq` (0 when it has none).
        last_seq: i64,
        count: u64,
        entities: Vec<DeliveredMessage>,
    }

    /// A page of a user's inbox, as the `synced` op.
    #[derive(ToSchema)]
    pub struct InboxPage {
        /// The `after` asked for.
        after: i64,
        /// The last `useq` of this page (`after` when it is empty): the next page's `after`.
        last: i64,
        /// Whether more entries follow this page.
        more: bool,
        /// The user's highest `useq`.
        head: i64,
        msgs: Vec<DeliveredMessage>,
    }
}
