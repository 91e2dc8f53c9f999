//! Contacts, blocklists, user metadata (profiles) and the app's settings.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{Caller, Owner};
use crate::error::{parse_json, JsonBody};
use crate::{ApiError, AppState};
use store::users::UserUpdate;

type UserPath = Path<(String, String, String)>;
type PairPath = Path<(String, String, String, String)>;

pub async fn contacts(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
) -> Result<Json<Value>, ApiError> {
    let friends = state.store.contacts(&caller.app.id, &owner).await?;
    Ok(Json(json!({"entities": friends, "count": friends.len()})))
}

pub async fn add_contact(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
    Path((_, _, _, friend)): PairPath,
) -> Result<Json<Value>, ApiError> {
    let friend = friend.to_ascii_lowercase();
    state.store.add_contact(&caller.app.id, &owner, &friend).await?;
    Ok(Json(
        json!({"action": "post", "entities": [{"owner": owner, "friend": friend}]}),
    ))
}

pub async fn remove_contact(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
    Path((_, _, _, friend)): PairPath,
) -> Result<Json<Value>, ApiError> {
    let friend = friend.to_ascii_lowercase();
    state.store.remove_contact(&caller.app.id, &owner, &friend).await?;
    Ok(Json(
        json!({"action": "delete", "entities": [{"owner": owner, "friend": friend}]}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    usernames: Vec<String>,
}

pub async fn block(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body: BlockBody = parse_json(&body)?;
    let users = body
        .usernames
        .iter()
        .map(|u| u.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    state.store.block_users(&caller.app.id, &owner, &users).await?;
    for user in &users {
        state
            .live
            .hide_presence(&caller.app.org, &caller.app.name, &owner, user);
    }
    Ok(Json(json!({"action": "post", "entities": users, "count": users.len()})))
}

pub async fn blocklist(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
) -> Result<Json<Value>, ApiError> {
    let blocked = state.store.blocklist(&caller.app.id, &owner).await?;
    Ok(Json(json!({"entities": blocked, "count": blocked.len()})))
}

pub async fn unblock(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
    Path((_, _, _, blocked)): PairPath,
) -> Result<Json<Value>, ApiError> {
    let blocked = blocked.to_ascii_lowercase();
    state.store.unblock_user(&caller.app.id, &owner, &blocked).await?;
    Ok(Json(json!({"action": "delete", "entities": [blocked]})))
}

/// Any user of the app may read a profile: nickname and metadata.
pub async fn get_metadata(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, username)): UserPath,
) -> Result<Json<Value>, ApiError> {
    let user = state
        .store
        .get_user(&caller.app.id, &username.to_ascii_lowercase())
        .await?;
    Ok(Json(
        json!({"data": {"username": user.username, "nickname": user.nickname, "metadata": user.metadata}}),
    ))
}

/// Replaces the listed metadata keys (a `null` value removes one); string values only,
/// `avatarurl` must be an http(s) URL, all of it at most 4 KiB.
pub async fn put_metadata(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let changes: Map<String, Value> = parse_json(&body)?;
    if let Some(url) = changes.get("avatarurl").and_then(Value::as_str) {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ApiError::BadRequest("'avatarurl' must be an http(s) URL".into()));
        }
    }
    let mut metadata = state.store.get_user(&caller.app.id, &username).await?.metadata;
    for (key, value) in changes {
        if value.is_null() {
            metadata.remove(&key);
        } else {
            metadata.insert(key, value);
        }
    }
    let user = state
        .store
        .update_user(
            &caller.app.id,
            &username,
            UserUpdate {
                nickname: None,
                metadata: Some(metadata),
            },
        )
        .await?;
    Ok(Json(
        json!({"data": {"username": user.username, "nickname": user.nickname, "metadata": user.metadata}}),
    ))
}

pub async fn get_settings(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    Ok(Json(json!({"data": state.store.app_settings(&caller.app.id).await?})))
}

pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let patch: Value = parse_json(&body)?;
    Ok(Json(
        json!({"data": state.store.update_app_settings(&caller.app.id, &patch).await?}),
    ))
}
