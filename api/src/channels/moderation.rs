//! Who may speak in a group or chatroom: mutes (one member, or everyone but the allow list
//! and admins), the blocklist, the allow list.

use super::*;

/// A mute's end as the platform answers it: a time in ms, or -1 for ever.
pub(super) fn expire(until: i64) -> i64 {
    if until == i64::MAX {
        -1
    } else {
        until
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(as = ChannelMuteBody)]
#[serde(deny_unknown_fields)]
pub(super) struct MuteBody {
    /// 1 to 100 members.
    usernames: Vec<String>,
    /// Milliseconds; -1 mutes until unmuted.
    mute_duration: i64,
}

/// Mutes members for a while or until unmuted (the owner, admins and the app; admins mute
/// ordinary members only).
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/mute", tag = "groups", request_body = MuteBody,
    responses((status = 200, description = "Each user muted, with the end of the mute", body = schema::ChannelMutedUsers)))]
pub(super) async fn mute(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "mute members")?;
    let body: MuteBody = parse_json(&body)?;
    let users = usernames(&body.usernames)?;
    let until = match body.mute_duration {
        -1 => i64::MAX,
        ms if ms > 0 => store::now_ms().saturating_add(ms),
        _ => {
            return Err(ApiError::BadRequest(
                "'mute_duration' must be positive milliseconds, or -1 for ever".into(),
            ))
        }
    };
    for user in &users {
        require_outranks(&state, &acting, user).await?;
    }
    state
        .store
        .set_muted(&acting.caller.app.id, kind, &id, &users, until)
        .await?;
    notify(&state, &acting, &users, "muted", json!({"until": until}));
    let data: Vec<Value> = users
        .iter()
        .map(|u| json!({"result": true, "expire": expire(until), "user": u}))
        .collect();
    Ok(Json(json!({"data": data})))
}

/// The members muted now (the owner, admins and the app).
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/mute", tag = "groups",
    responses((status = 200, description = "Each muted member, with the end of the mute", body = schema::ChannelMutes)))]
pub(super) async fn muted(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "list muted members")?;
    let now = store::now_ms();
    let muted: Vec<Value> = state
        .store
        .members(&acting.caller.app.id, kind, &id)
        .await?
        .into_iter()
        .filter(|m| m.is_muted(now))
        .map(|m| json!({"user": m.username, "expire": expire(m.muted_until)}))
        .collect();
    Ok(Json(json!({"data": muted, "count": muted.len()})))
}

/// Unmutes one member, or several (`u1,u2`).
#[utoipa::path(delete, path = "/{org}/{app}/chatgroups/{id}/mute/{username}", tag = "groups",
    responses((status = 200, description = "Each user unmuted", body = schema::ChannelUnmuted)))]
pub(super) async fn unmute(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "unmute members")?;
    let users = listed(&username)?;
    state
        .store
        .set_muted(&acting.caller.app.id, kind, &id, &users, 0)
        .await?;
    notify(&state, &acting, &users, "unmuted", json!({}));
    let data: Vec<Value> = users.iter().map(|u| json!({"result": true, "user": u})).collect();
    Ok(Json(json!({"data": data})))
}

/// `POST …/{id}/ban`: everyone but the owner and admins is muted; `DELETE` lifts it.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/ban", tag = "groups",
    responses((status = 200, description = "Everyone is muted (`data.mute`: true)", body = schema::ChannelMuteAll)))]
pub(super) async fn mute_all(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    set_mute_all(&state, &acting, true).await
}

/// `DELETE …/{id}/ban`: lifts the mute of everyone.
#[utoipa::path(delete, path = "/{org}/{app}/chatgroups/{id}/ban", tag = "groups",
    responses((status = 200, description = "Lifted (`data.mute`: false)", body = schema::ChannelMuteAll)))]
pub(super) async fn unmute_all(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    set_mute_all(&state, &acting, false).await
}

pub(super) async fn set_mute_all(state: &AppState, acting: &Acting, muted: bool) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Admin, "mute everyone")?;
    update_channel(
        state,
        acting,
        ChannelUpdate {
            muted_all: Some(muted),
            ..ChannelUpdate::default()
        },
    )
    .await?;
    Ok(Json(json!({"data": {"mute": muted}})))
}

/// Adds users to the blocklist: members among them are removed and cannot come back.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/blocks/users", tag = "groups", request_body = UsersBody,
    responses((status = 200, description = "Each user blocked", body = schema::ChannelListChanges)))]
pub(super) async fn ban(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Admin, "ban users")?;
    let body: UsersBody = parse_json(&body)?;
    let users = usernames(&body.usernames)?;
    let data = ban_users(&state, &acting, &users).await?;
    Ok(Json(json!({"data": data})))
}

/// `POST …/{id}/blocks/users/{username}`: one user onto the blocklist.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/blocks/users/{username}", tag = "groups",
    responses((status = 200, description = "Blocked", body = schema::ChannelListChange)))]
pub(super) async fn ban_one(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Admin, "ban users")?;
    let users = usernames(&[username])?;
    let mut data = ban_users(&state, &acting, &users).await?;
    Ok(Json(json!({"data": data.remove(0)})))
}

pub(super) async fn ban_users(state: &AppState, acting: &Acting, users: &[String]) -> Result<Vec<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    for user in users {
        require_outranks(state, acting, user).await?;
    }
    state.store.ban(&acting.caller.app.id, kind, &id, users).await?;
    notify(state, acting, users, "banned", json!({}));
    stop_room_delivery(state, acting, users);
    Ok(users
        .iter()
        .map(|u| json!({"result": true, "action": "add_blocks", "user": u, block_key(kind): id}))
        .collect())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CursorQuery {
    /// 1 to 1000; without it, the whole list.
    #[serde(rename = "pageSize")]
    page_size: Option<i64>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET …/{id}/blocks/users[?pageSize=&cursor=]`: the blocklist by name; with `pageSize`
/// (1 to 1,000) in pages, `cursor` naming where the next one starts while there is one.
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/blocks/users", tag = "groups", params(CursorQuery),
    responses((status = 200, description = "The blocked users' names, in order; `cursor` while more follow",
        body = schema::ChannelNamesPage)))]
pub(super) async fn bans(
    State(state): State<AppState>,
    acting: Acting,
    Query(q): Query<CursorQuery>,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "see the blocklist")?;
    let mut banned = state.store.bans(&acting.caller.app.id, kind, &id).await?;
    banned.sort();
    let Some(size) = q.page_size else {
        return Ok(Json(json!({"data": banned, "count": banned.len()})));
    };
    if !(1..=1000).contains(&size) {
        return Err(ApiError::BadRequest("query.pageSize must be from 1 to 1000".into()));
    }
    let after = q.cursor.unwrap_or_default();
    let rest: Vec<String> = banned.into_iter().filter(|b| after.is_empty() || *b > after).collect();
    let more = rest.len() as i64 > size;
    let page: Vec<String> = rest.into_iter().take(size as usize).collect();
    let mut answer = json!({"data": page, "count": page.len()});
    if more {
        answer["cursor"] = json!(page.last());
    }
    Ok(Json(answer))
}

/// Takes one user, or several (`u1,u2`), off the blocklist.
#[utoipa::path(delete, path = "/{org}/{app}/chatgroups/{id}/blocks/users/{username}", tag = "groups",
    responses((status = 200, description = "One name: its result; several: one each (`false` with the `reason` \
        for a name not on the list)", body = schema::ChannelListChangesOneOrMany)))]
pub(super) async fn unban(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "change the blocklist")?;
    let users = listed(&username)?;
    let mut data = Vec::with_capacity(users.len());
    for user in &users {
        // Several names: each answered, the ones not on the list with the reason.
        match state.store.unban(&acting.caller.app.id, kind, &id, user).await {
            Ok(()) => data.push(json!({"result": true, "action": "remove_blocks", "user": user, block_key(kind): id})),
            Err(e @ store::Error::NotFound(_)) if users.len() > 1 => data.push(json!({
                "result": false, "action": "remove_blocks", "reason": ApiError::from(e).to_string(),
                "user": user, block_key(kind): id,
            })),
            Err(e) => return Err(e.into()),
        }
    }
    let data = if data.len() == 1 {
        data.remove(0)
    } else {
        Value::Array(data)
    };
    Ok(Json(json!({"data": data})))
}

/// `GET …/{id}/white/users`: the allow list, members who may speak while everyone is muted.
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/white/users", tag = "groups",
    responses((status = 200, description = "The allowed members' names", body = super::schema::ChannelNames)))]
pub(super) async fn allowlist(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "see the allow list")?;
    let allowed: Vec<String> = state
        .store
        .members(&acting.caller.app.id, kind, &id)
        .await?
        .into_iter()
        .filter(|m| m.allowlisted)
        .map(|m| m.username)
        .collect();
    Ok(Json(json!({"data": allowed, "count": allowed.len()})))
}

/// `POST …/{id}/white/users` `{"usernames": [...]}`: members onto the allow list; each
/// answered, `false` with a reason for one who is not a member.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/white/users", tag = "groups", request_body = UsersBody,
    responses((status = 200, description = "Each user's result", body = schema::ChannelListChanges)))]
pub(super) async fn allow(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body: UsersBody = parse_json(&body)?;
    let users = usernames(&body.usernames)?;
    let data = set_allowlisted(&state, &acting, &users, true).await?;
    Ok(Json(json!({"data": data})))
}

/// `POST …/{id}/white/users/{username}`: one member onto the allow list.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/white/users/{username}", tag = "groups",
    responses((status = 200, description = "The result (`false` with the `reason` if not a member)",
        body = schema::ChannelListChange)))]
pub(super) async fn allow_one(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let mut data = set_allowlisted(&state, &acting, &[username], true).await?;
    Ok(Json(json!({"data": data.remove(0)})))
}

/// `DELETE …/{id}/white/users/{u1},{u2}`: off the allow list.
#[utoipa::path(delete, path = "/{org}/{app}/chatgroups/{id}/white/users/{username}", tag = "groups",
    responses((status = 200, description = "Each user's result (`false` with the `reason` if not a member)",
        body = schema::ChannelListChanges)))]
pub(super) async fn disallow(
    State(state): State<AppState>,
    acting: Acting,
    Target(names): Target,
) -> Result<Json<Value>, ApiError> {
    let users = listed(&names)?;
    let data = set_allowlisted(&state, &acting, &users, false).await?;
    Ok(Json(json!({"data": data})))
}

pub(super) async fn set_allowlisted(
    state: &AppState,
    acting: &Acting,
    users: &[String],
    on: bool,
) -> Result<Vec<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "change the allow list")?;
    let done = state
        .store
        .set_allowlisted(&acting.caller.app.id, kind, &id, users, on)
        .await?;
    let action = if on {
        "add_user_whitelist"
    } else {
        "remove_user_whitelist"
    };
    Ok(users
        .iter()
        .zip(done)
        .map(|(user, member)| {
            let mut item = json!({"result": member, "action": action, "user": user, block_key(kind): id});
            if !member {
                item["reason"] = json!(format!("{user} is not a member"));
            }
            item
        })
        .collect())
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    #[derive(ToSchema)]
    pub struct ChannelMutedUser {
        result: bool,
        /// The mute's end (milliseconds since 1970), -1 for ever.
        expire: i64,
        user: String,
    }

    #[derive(ToSchema)]
    pub struct ChannelMutedUsers {
        data: Vec<ChannelMutedUser>,
    }

    #[derive(ToSchema)]
    pub struct ChannelMute {
        user: String,
        /// The mute's end (milliseconds since 1970), -1 for ever.
        expire: i64,
    }

    #[derive(ToSchema)]
    pub struct ChannelMutes {
        data: Vec<ChannelMute>,
        count: u64,
    }

    #[derive(ToSchema)]
    pub struct ChannelUnmutedUser {
        result: bool,
        user: String,
    }

    #[derive(ToSchema)]
    pub struct ChannelUnmuted {
        data: Vec<ChannelUnmutedUser>,
    }

    #[derive(ToSchema)]
    pub struct ChannelMuteAllData {
        mute: bool,
    }

    #[derive(ToSchema)]
    pub struct ChannelMuteAll {
        data: ChannelMuteAllData,
    }

    /// One user's change to the blocklist or the allow list: `result` false with the
    /// `reason` when it was not done. The channel is `groupid` (a group) or `chatroomid` (a
    /// chatroom).
    #[derive(ToSchema)]
    pub struct ChannelListChangeItem {
        result: bool,
        /// `add_blocks`, `remove_blocks`, `add_user_whitelist` or `remove_user_whitelist`.
        action: String,
        user: String,
        groupid: Option<String>,
        chatroomid: Option<String>,
        reason: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct ChannelListChange {
        data: ChannelListChangeItem,
    }

    #[derive(ToSchema)]
    pub struct ChannelListChanges {
        data: Vec<ChannelListChangeItem>,
    }

    /// One name: its change; several: one each.
    #[derive(ToSchema)]
    #[serde(untagged)]
    pub enum ChannelListChangeItems {
        One(ChannelListChangeItem),
        Many(Vec<ChannelListChangeItem>),
    }

    #[derive(ToSchema)]
    pub struct ChannelListChangesOneOrMany {
        data: ChannelListChangeItems,
    }

    /// A page of names, and a `cursor` while more follow.
    #[derive(ToSchema)]
    pub struct ChannelNamesPage {
        data: Vec<String>,
        count: u64,
        cursor: Option<String>,
    }
}
