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
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{parse_json, JsonBody, Query};
use crate::{ApiError, AppState};
use store::moderation::GlobalMute;

/// Seconds to mute each kind of chat for: 0 lifts the mute, -1 mutes for ever; a kind left
/// out (or `null`) stays as it is.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = GlobalMuteBody)]
struct MuteBody {
    username: String,
    /// One-to-one messages.
    #[serde(default)]
    #[schema(minimum = -1)]
    chat: Option<i64>,
    /// Group messages.
    #[serde(default)]
    #[schema(minimum = -1)]
    groupchat: Option<i64>,
    /// Chatroom messages.
    #[serde(default)]
    #[schema(minimum = -1)]
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

/// `POST /{org}/{app}/mutes` (app token): mutes (or lets speak again) a user app-wide.
#[utoipa::path(post, path = "/{org}/{app}/mutes", tag = "moderation", request_body = MuteBody,
    responses((status = 200, description = "Done: `data.result` is `ok`", body = schema::GlobalMuteDone)))]
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

/// `GET /{org}/{app}/mutes/{username}` (app token): the seconds left of each of the user's
/// mutes.
#[utoipa::path(get, path = "/{org}/{app}/mutes/{username}", tag = "moderation",
    responses((status = 200, description = "`data`: seconds left per kind of chat (0: not muted, -1: for ever)",
        body = schema::GlobalMuteOfUser)))]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The page, from 1 (default 1).
    #[serde(rename = "pageNum")]
    #[param(minimum = 1)]
    page_num: Option<i64>,
    /// Users per page: 1 to 50 (default 10).
    #[serde(rename = "pageSize")]
    #[param(minimum = 1, maximum = 50)]
    page_size: Option<i64>,
}

/// `GET /{org}/{app}/mutes?pageNum=&pageSize=`: users muted anywhere (a page of up to
/// `pageSize` users, 1 to 50, default 10), one entry per user and kind of chat.
#[utoipa::path(get, path = "/{org}/{app}/mutes", tag = "moderation", params(PageQuery),
    responses((status = 200, description = "`data.data`: one entry per muted user and kind of chat",
        body = schema::GlobalMutes)))]
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
    let offset = (num - 1)
        .checked_mul(size)
        .ok_or_else(|| ApiError::BadRequest(format!("pageNum {num} is past any page")))?;
    let now = store::now_ms();
    let users = state.store.globally_muted(&caller.app.id, now, offset, size).await?;
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RoomSuperAdminBody)]
struct SuperAdminBody {
    /// The user who may create chatrooms.
    superadmin: String,
}

/// `POST /{org}/{app}/chatrooms/super_admin` `{"superadmin": name}` (app token): once the app
/// names any, only these users may create chatrooms with their own token.
#[utoipa::path(post, path = "/{org}/{app}/chatrooms/super_admin", tag = "moderation", request_body = SuperAdminBody,
    responses((status = 200, description = "Added: `data.result` is `success`", body = schema::RoomSuperAdminAdded)))]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreatorsQuery {
    /// The page, from 1 (default 1).
    #[param(minimum = 1)]
    pagenum: Option<i64>,
    /// Names per page: 1 to 1000 (default 10).
    #[param(minimum = 1, maximum = 1000)]
    pagesize: Option<i64>,
}

/// `GET /{org}/{app}/chatrooms/super_admin?pagenum=&pagesize=` (app token): the users who may
/// create chatrooms, in the order they were added (none: everyone may).
#[utoipa::path(get, path = "/{org}/{app}/chatrooms/super_admin", tag = "moderation", params(CreatorsQuery),
    responses((status = 200, description = "`data`: a page of names", body = schema::RoomSuperAdmins)))]
pub async fn room_creators(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<CreatorsQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let page =
        crate::paging::Page::new(q.pagenum, q.pagesize, 10)?.of(state.store.room_creators(&caller.app.id).await?);
    Ok(Json(json!({"data": page, "count": page.len()})))
}

/// `DELETE /{org}/{app}/chatrooms/super_admin/{username}` (app token).
#[utoipa::path(delete, path = "/{org}/{app}/chatrooms/super_admin/{username}", tag = "moderation",
    responses((status = 200, description = "Removed: `data.newSuperAdmin` names the user", body = schema::RoomSuperAdminRemoved)))]
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

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(mute, all_muted))
        .routes(routes!(muted))
        .routes(routes!(add_room_creator, room_creators))
        .routes(routes!(remove_room_creator))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    #[derive(ToSchema)]
    pub struct GlobalMuteDoneData {
        /// Always `ok`.
        result: String,
    }

    /// `data.result`: `ok`.
    #[derive(ToSchema)]
    pub struct GlobalMuteDone {
        data: GlobalMuteDoneData,
    }

    /// Seconds left of each mute: 0 not muted, -1 for ever.
    #[derive(ToSchema)]
    pub struct GlobalMuteOfUserData {
        /// The user's name.
        userid: String,
        chat: i64,
        groupchat: i64,
        chatroom: i64,
        /// Now, in seconds since 1970.
        unixtime: i64,
    }

    /// `data`: the user's mutes.
    #[derive(ToSchema)]
    pub struct GlobalMuteOfUser {
        data: GlobalMuteOfUserData,
    }

    /// One user muted for one kind of chat: exactly one of `chat`, `groupchat`, `chatroom`,
    /// the seconds left (-1: for ever).
    #[derive(ToSchema)]
    pub struct GlobalMuteEntry {
        username: String,
        chat: Option<i64>,
        groupchat: Option<i64>,
        chatroom: Option<i64>,
    }

    #[derive(ToSchema)]
    pub struct GlobalMutesData {
        data: Vec<GlobalMuteEntry>,
        /// Now, in seconds since 1970.
        unixtime: i64,
    }

    /// `data.data`: the entries of a page of muted users.
    #[derive(ToSchema)]
    pub struct GlobalMutes {
        data: GlobalMutesData,
    }

    #[derive(ToSchema)]
    pub struct RoomSuperAdminAddedData {
        /// Always `success`.
        result: String,
        /// Always `""`.
        resource: String,
    }

    /// `data.result`: `success`.
    #[derive(ToSchema)]
    pub struct RoomSuperAdminAdded {
        data: RoomSuperAdminAddedData,
    }

    /// `data`: names of the users who may create chatrooms; `count`: on this page.
    #[derive(ToSchema)]
    pub struct RoomSuperAdmins {
        data: Vec<String>,
        count: u64,
    }

    #[derive(ToSchema)]
    pub struct RoomSuperAdminRemovedData {
        /// The user removed.
        #[serde(rename = "newSuperAdmin")]
        new_super_admin: String,
        /// Always `""`.
        resource: String,
    }

    /// `data.newSuperAdmin`: the user removed (the platform's name for the field).
    #[derive(ToSchema)]
    pub struct RoomSuperAdminRemoved {
        data: RoomSuperAdminRemovedData,
    }
}
