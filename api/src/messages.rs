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

use crate::auth::{Caller, Owner};
use crate::error::Query;
use crate::{ApiError, AppState};
use store::envelope::MAX_SYNC_LIMIT;
use store::messages::user_conv;

#[derive(Deserialize)]
pub struct HistoryQuery {
    from_seq: Option<i64>,
    to_seq: Option<i64>,
    limit: Option<i64>,
}

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

#[derive(Deserialize)]
pub struct InboxQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

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
