//! The app's moderation routes beyond one channel (app token):
//!
//! - `/{org}/{app}/mutes`: global mutes. `POST {"username", "chat", "groupchat",
//!   "chatroom"}` mutes a user's one-to-one, group or chatroom messages for that many
//!   seconds (0 lifts it, -1 for ever; a type left out stays as it is); `GET /mutes/{user}`
//!   answers the seconds left of each; `GET /mutes?pageNum=&pageSize=` the muted users, one
//!   entry per user and kind of chat, as the platform lists them.
//! - `/{org}/{app}/chatrooms/super_admin`: the users who may create chatrooms with their
//!   own token (none named: everyone may).

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::{parse_json, JsonBody, Query};
use crate::{ApiError, AppState};
use store::moderation::GlobalMute;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    username: String,
    #[serde(default)]
    chat: Option<i64>,
    #[serde(default)]
    groupchat: Option<i64>,
    #[serde(default)]
    chatroom: Option<i64>,
}

/// Seconds from now as a time in ms: 0 lifts, -1 for ever.
fn until(seconds: Option<i64>, field: &str) -> Result<Option<i64>, ApiError> {
    match seconds {
        None => Ok(None),
        Some(0) => Ok(Some(0)),
        Some(-1) => Ok(Some(i64::MAX)),
        Some(s) if s > 0 => Ok(Some(store::now_ms().saturating_add(s.saturating_mul(1000)))),
        Some(_) => Err(ApiError::BadRequest(format!(
            "body.{field} is seconds: 0 lifts the mute, -1 mutes for ever"
        ))),
    }
}

/// `POST /{org}/{app}/mutes`
pub async fn mute(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let body: MuteBody = parse_json(&body)?;
    let user = body.username.trim().to_ascii_lowercase();
    state
        .store
        .set_global_mute(
            &caller.app.id,
            &user,
            until(body.chat, "chat")?,
            until(body.groupchat, "groupchat")?,
            until(body.chatroom, "chatroom")?,
        )
        .await?;
    Ok(Json(json!({"data": {"result": "ok"}})))
}

/// Seconds left of a mute (0: not muted; -1: for ever).
fn left(until: i64, now: i64) -> i64 {
    match until {
        i64::MAX => -1,
        u if u > now => (u - now + 999) / 1000,
        _ => 0,
    }
}

/// `GET /{org}/{app}/mutes/{username}`
pub async fn muted(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, username)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let user = username.trim().to_ascii_lowercase();
    let mute = state.store.global_mute(&caller.app.id, &user).await?;
    let now = store::now_ms();
    Ok(Json(json!({"data": {
        "userid": user,
        "chat": left(mute.chat, now),
        "groupchat": left(mute.groupchat, now),
        "chatroom": left(mute.chatroom, now),
        "unixtime": now / 1000,
    }})))
}

#[derive(Deserialize)]
pub struct PageQuery {
    #[serde(rename = "pageNum")]
    page_num: Option<i64>,
    #[serde(rename = "pageSize")]
    page_size: Option<i64>,
}

/// `GET /{org}/{app}/mutes?pageNum=&pageSize=`: users muted anywhere (a page of up to
/// `pageSize` users, 1 to 50, default 10), one entry per user and kind of chat.
pub async fn all_muted(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let (num, size) = (q.page_num.unwrap_or(1), q.page_size.unwrap_or(10));
    if num < 1 || !(1..=50).contains(&size) {
        return Err(ApiError::BadRequest(
            "need pageNum >= 1 and pageSize from 1 to 50".into(),
        ));
    }
    let now = store::now_ms();
    let users = state
        .store
        .globally_muted(&caller.app.id, now, (num - 1) * size, size)
        .await?;
    let mut entries = Vec::new();
    for (
        user,
        GlobalMute {
            chat,
            groupchat,
            chatroom,
        },
    ) in users
    {
        for (kind, until) in [("chat", chat), ("groupchat", groupchat), ("chatroom", chatroom)] {
            if until > now {
                entries.push(json!({"username": user, kind: left(until, now)}));
            }
        }
    }
    Ok(Json(json!({"data": {"data": entries, "unixtime": now / 1000}})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuperAdminBody {
    superadmin: String,
}

/// `POST /{org}/{app}/chatrooms/super_admin` `{"superadmin": name}`
pub async fn add_room_creator(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let body: SuperAdminBody = parse_json(&body)?;
    let user = body.superadmin.trim().to_ascii_lowercase();
    state.store.add_room_creator(&caller.app.id, &user).await?;
    Ok(Json(json!({"data": {"result": "success", "resource": ""}})))
}

#[derive(Deserialize)]
pub struct CreatorsQuery {
    pagenum: Option<i64>,
    pagesize: Option<i64>,
}

/// `GET /{org}/{app}/chatrooms/super_admin?pagenum=&pagesize=`
pub async fn room_creators(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<CreatorsQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let (num, size) = (q.pagenum.unwrap_or(1), q.pagesize.unwrap_or(10));
    if num < 1 || !(1..=1000).contains(&size) {
        return Err(ApiError::BadRequest(
            "need pagenum >= 1 and pagesize from 1 to 1000".into(),
        ));
    }
    let page: Vec<String> = state
        .store
        .room_creators(&caller.app.id)
        .await?
        .into_iter()
        .skip(((num - 1) * size) as usize)
        .take(size as usize)
        .collect();
    Ok(Json(json!({"data": page, "count": page.len()})))
}

/// `DELETE /{org}/{app}/chatrooms/super_admin/{username}`
pub async fn remove_room_creator(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, username)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let user = username.trim().to_ascii_lowercase();
    state.store.remove_room_creator(&caller.app.id, &user).await?;
    Ok(Json(json!({"data": {"newSuperAdmin": user, "resource": ""}})))
}
