//! Groups (`/{org}/{app}/chatgroups`) and chatrooms (`/{org}/{app}/chatrooms`): one set of
//! handlers for both, since both are channels with an owner, admins, members, mutes and a
//! blocklist. Group-only routes (join requests, invitations) refuse chatrooms.
//!
//! Who may do what: an app token may do everything; with a user token, the owner and the
//! admins moderate, the owner alone transfers ownership, appoints admins and dissolves, and
//! every user may join (chatrooms, open public groups), ask to join (public groups that
//! need approval), accept an invitation or leave.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::{parse_json, JsonBody, Query};
use crate::{ApiError, AppState};
use store::channels::{Channel, ChannelKind, ChannelUpdate, NewChannel, RequestKind, Role};

/// The routes of one kind of channel.
pub fn routes(kind: ChannelKind) -> Router<AppState> {
    let base = match kind {
        ChannelKind::Group => "/:org/:app/chatgroups",
        ChannelKind::Room => "/:org/:app/chatrooms",
    };
    let joined = match kind {
        ChannelKind::Group => "/:org/:app/users/:username/joined_chatgroups",
        ChannelKind::Room => "/:org/:app/users/:username/joined_chatrooms",
    };
    let mut router = Router::new()
        .route(base, post(create).get(list))
        .route(joined, get(joined_by))
        .route(&format!("{base}/:id"), get(show).put(update).delete(dissolve))
        .route(&format!("{base}/:id/users"), get(members))
        .route(
            &format!("{base}/:id/users/:username"),
            post(add_member).delete(remove_member),
        )
        .route(&format!("{base}/:id/admin"), post(add_admin))
        .route(&format!("{base}/:id/admin/:username"), delete(remove_admin))
        .route(&format!("{base}/:id/owner"), put(transfer))
        .route(&format!("{base}/:id/mute"), post(mute).get(muted))
        .route(&format!("{base}/:id/mute/:username"), delete(unmute))
        .route(&format!("{base}/:id/mute_all"), put(mute_all))
        .route(&format!("{base}/:id/announcement"), put(announce))
        .route(&format!("{base}/:id/blocks/users"), post(ban).get(bans))
        .route(&format!("{base}/:id/blocks/users/:username"), delete(unban));
    router = match kind {
        ChannelKind::Group => router
            .route(&format!("{base}/:id/join_requests"), get(join_requests))
            .route(
                &format!("{base}/:id/join_requests/:username/:decision"),
                post(decide_request),
            )
            .route(&format!("{base}/:id/invites"), post(invite))
            .route(&format!("{base}/:id/invites/:username/accept"), post(accept_invite))
            .route(&format!("{base}/:id/invites/:username"), delete(decline_invite)),
        ChannelKind::Room => router.route(&format!("{base}/:id/messages"), get(room_messages)),
    };
    router.layer(Extension(kind))
}

/// The `{username}` of a route, lower-cased.
struct Target(String);

#[axum::async_trait]
impl FromRequestParts<AppState> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let user = params
            .get("username")
            .ok_or_else(|| ApiError::NotFound("no such route".into()))?;
        Ok(Target(user.trim().to_ascii_lowercase()))
    }
}

/// The caller and the channel of a `/{id}` route, with the caller's standing in it.
#[axum::async_trait]
impl FromRequestParts<AppState> for Acting {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Extension(kind) = Extension::<ChannelKind>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let id = params
            .get("id")
            .ok_or_else(|| ApiError::NotFound("no such route".into()))?;
        Acting::load(state, caller, kind, id).await
    }
}

/// How much say the caller has in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    Outsider,
    Member,
    Admin,
    Owner,
    App,
}

struct Acting {
    caller: Caller,
    channel: Channel,
    standing: Standing,
}

impl Acting {
    async fn load(state: &AppState, caller: Caller, kind: ChannelKind, id: &str) -> Result<Acting, ApiError> {
        let channel = state.store.channel(&caller.app.id, kind, id).await?;
        let standing = match &caller.user {
            None => Standing::App,
            Some(user) => match state.store.member(&caller.app.id, id, user).await? {
                Some(m) if m.role == Role::Owner => Standing::Owner,
                Some(m) if m.role == Role::Admin => Standing::Admin,
                Some(_) => Standing::Member,
                None => Standing::Outsider,
            },
        };
        Ok(Acting {
            caller,
            channel,
            standing,
        })
    }

    fn require(&self, at_least: Standing, what: &str) -> Result<(), ApiError> {
        if self.standing >= at_least {
            Ok(())
        } else {
            let who = match at_least {
                Standing::Owner => "the owner",
                Standing::Admin => "the owner or an admin",
                _ => "a member",
            };
            Err(ApiError::Forbidden(format!("only {who} may {what}")))
        }
    }

    /// Who is acting, for events: the user, or "admin" for the app's backend.
    fn actor(&self) -> String {
        self.caller.user.clone().unwrap_or_else(|| "admin".into())
    }

    fn is_self(&self, user: &str) -> bool {
        self.caller.user.as_deref() == Some(user)
    }
}

/// Sends an event about a channel to users' devices.
fn notify(state: &AppState, acting: &Acting, users: &[String], event: &str, extra: Value) {
    let caller = &acting.caller;
    for user in users {
        let mut body = json!({
            "op": "event",
            "channel": acting.channel.kind.as_str(),
            "id": acting.channel.id,
            "event": event,
            "user": user,
            "by": acting.actor(),
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        state.live.notify(&caller.app.org, &caller.app.name, user, &body);
    }
}

/// Chatroom members who leave, are removed or are banned stop receiving the room at once,
/// even while their devices stay subscribed.
fn stop_room_delivery(state: &AppState, acting: &Acting, users: &[String]) {
    if acting.channel.kind == ChannelKind::Room {
        let app = &acting.caller.app;
        for user in users {
            state.live.leave_room(&app.org, &app.name, user, &acting.channel.id);
        }
    }
}

fn usernames(list: &[String]) -> Result<Vec<String>, ApiError> {
    if list.is_empty() || list.len() > 100 {
        return Err(ApiError::BadRequest("name 1 to 100 users".into()));
    }
    Ok(list.iter().map(|u| u.trim().to_ascii_lowercase()).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(alias = "groupname")]
    name: String,
    #[serde(default, alias = "desc")]
    description: String,
    #[serde(default = "yes")]
    public: bool,
    #[serde(default)]
    membersonly: bool,
    #[serde(default)]
    allowinvites: bool,
    #[serde(default)]
    maxusers: Option<i64>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    members: Vec<String>,
}

fn yes() -> bool {
    true
}

async fn create(
    State(state): State<AppState>,
    Extension(kind): Extension<ChannelKind>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: CreateBody = parse_json(&body)?;
    let settings = state.store.app_settings(&caller.app.id).await?;
    let limit = match kind {
        ChannelKind::Group => settings.max_group_members,
        ChannelKind::Room => settings.max_room_members,
    };
    // A user creates channels they own; the app names the owner.
    let owner = match (&caller.user, body.owner) {
        (Some(me), None) => me.clone(),
        (Some(me), Some(o)) if o.to_ascii_lowercase() == *me => me.clone(),
        (Some(_), Some(_)) => return Err(ApiError::Forbidden("a user token creates channels it owns".into())),
        (None, Some(o)) => o.trim().to_ascii_lowercase(),
        (None, None) => return Err(ApiError::BadRequest("'owner' is required with an app token".into())),
    };
    let members = body.members.iter().map(|m| m.trim().to_ascii_lowercase()).collect();
    let channel = state
        .store
        .create_channel(
            &caller.app.id,
            NewChannel {
                kind,
                name: body.name,
                description: body.description,
                public: body.public,
                members_only: body.membersonly,
                allow_invites: body.allowinvites,
                max_members: body.maxusers.unwrap_or(limit.min(200)),
                owner,
                members,
            },
            limit,
        )
        .await?;
    let acting = Acting {
        caller,
        channel: channel.clone(),
        standing: Standing::Owner,
    };
    let added: Vec<String> = state
        .store
        .members(&acting.caller.app.id, kind, &channel.id)
        .await?
        .into_iter()
        .filter(|m| m.role != Role::Owner)
        .map(|m| m.username)
        .collect();
    notify(&state, &acting, &added, "joined", json!({}));
    Ok((StatusCode::CREATED, Json(json!({"data": channel}))))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    Extension(kind): Extension<ChannelKind>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("'limit' must be from 1 to 1000".into()));
    }
    let mut channels = state
        .store
        .list_channels(&caller.app.id, kind, limit, q.cursor.as_deref())
        .await?;
    let cursor = (channels.len() as i64 == limit)
        .then(|| channels.last().map(|c| c.id.clone()))
        .flatten();
    // Users see chatrooms and public groups; private groups only to the app.
    if caller.user.is_some() && kind == ChannelKind::Group {
        channels.retain(|c| c.public);
    }
    Ok(Json(
        json!({"entities": channels, "count": channels.len(), "cursor": cursor}),
    ))
}

async fn joined_by(
    State(state): State<AppState>,
    Extension(kind): Extension<ChannelKind>,
    caller: Caller,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    caller.may_act_as(&username)?;
    let channels = state.store.user_channels(&caller.app.id, kind, &username).await?;
    Ok(Json(json!({"entities": channels, "count": channels.len()})))
}

async fn show(acting: Acting) -> Result<Json<Value>, ApiError> {
    if acting.channel.kind == ChannelKind::Group && !acting.channel.public {
        acting.require(Standing::Member, "see a private group")?;
    }
    Ok(Json(json!({"data": acting.channel})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default, alias = "groupname")]
    name: Option<String>,
    #[serde(default, alias = "desc")]
    description: Option<String>,
    #[serde(default)]
    public: Option<bool>,
    #[serde(default)]
    membersonly: Option<bool>,
    #[serde(default)]
    allowinvites: Option<bool>,
    #[serde(default)]
    maxusers: Option<i64>,
}

async fn update(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Admin, "change it")?;
    let body: UpdateBody = parse_json(&body)?;
    let channel = update_channel(
        &state,
        &acting,
        ChannelUpdate {
            name: body.name,
            description: body.description,
            public: body.public,
            members_only: body.membersonly,
            allow_invites: body.allowinvites,
            max_members: body.maxusers,
            ..ChannelUpdate::default()
        },
    )
    .await?;
    Ok(Json(json!({"data": channel})))
}

async fn update_channel(state: &AppState, acting: &Acting, update: ChannelUpdate) -> Result<Channel, ApiError> {
    let settings = state.store.app_settings(&acting.caller.app.id).await?;
    let limit = match acting.channel.kind {
        ChannelKind::Group => settings.max_group_members,
        ChannelKind::Room => settings.max_room_members,
    };
    Ok(state
        .store
        .update_channel(
            &acting.caller.app.id,
            acting.channel.kind,
            &acting.channel.id,
            update,
            limit,
        )
        .await?)
}

async fn dissolve(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Owner, "dissolve it")?;
    let members = state.store.delete_channel(&acting.caller.app.id, kind, &id).await?;
    notify(&state, &acting, &members, "dissolved", json!({}));
    stop_room_delivery(&state, &acting, &members);
    Ok(Json(json!({"data": {"id": id, "success": true}})))
}

async fn members(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    if kind == ChannelKind::Group {
        acting.require(Standing::Member, "list the members")?;
    }
    let members = state.store.members(&acting.caller.app.id, kind, &id).await?;
    Ok(Json(json!({"entities": members, "count": members.len()})))
}

/// Adds a member. Admins add anyone; a user adding themselves joins a chatroom or an open
/// public group, or asks to join a public group that needs approval (202).
async fn add_member(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    if acting.standing < Standing::Admin {
        if !acting.is_self(&username) {
            return Err(ApiError::Forbidden(
                "only the owner or an admin may add other users".into(),
            ));
        }
        if kind == ChannelKind::Group && !acting.channel.public {
            return Err(ApiError::Forbidden("a private group is joined by invitation".into()));
        }
        if kind == ChannelKind::Group && acting.channel.members_only && acting.standing == Standing::Outsider {
            if state.store.is_banned(&id, &username).await? {
                return Err(ApiError::Forbidden(format!("{username} is on the group's blocklist")));
            }
            state
                .store
                .add_request(&id, &username, RequestKind::Join, &username)
                .await?;
            let managers = state.store.managers(&id).await?;
            notify(
                &state,
                &acting,
                &managers,
                "join_request",
                json!({"applicant": username}),
            );
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({"data": {"id": id, "user": username, "status": "requested"}})),
            ));
        }
    }
    let added = state
        .store
        .add_members(&acting.caller.app.id, kind, &id, std::slice::from_ref(&username))
        .await?;
    notify(&state, &acting, &added, "joined", json!({}));
    Ok((
        StatusCode::OK,
        Json(json!({"data": {"id": id, "user": username, "status": "member"}})),
    ))
}

/// Removes a member: leaving (themselves) or removed by an admin (admins remove only
/// ordinary members unless they are the owner).
async fn remove_member(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    let leaving = acting.is_self(&username);
    if !leaving {
        acting.require(Standing::Admin, "remove members")?;
        require_outranks(&state, &acting, &username).await?;
    }
    state
        .store
        .remove_member(&acting.caller.app.id, kind, &id, &username)
        .await?;
    let event = if leaving { "left" } else { "removed" };
    notify(&state, &acting, std::slice::from_ref(&username), event, json!({}));
    stop_room_delivery(&state, &acting, std::slice::from_ref(&username));
    Ok(Json(json!({"data": {"id": id, "user": username, "result": event}})))
}

/// Admins act on ordinary members only; the owner and the app on anyone but the owner.
async fn require_outranks(state: &AppState, acting: &Acting, user: &str) -> Result<(), ApiError> {
    let target = state
        .store
        .member(&acting.caller.app.id, &acting.channel.id, user)
        .await?;
    let target_role = target.map(|m| m.role).unwrap_or(Role::Member);
    let allowed = match acting.standing {
        Standing::App | Standing::Owner => target_role != Role::Owner,
        Standing::Admin => target_role == Role::Member,
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "not allowed to act on the {} {user}",
            target_role.as_str()
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    newadmin: String,
}

async fn add_admin(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Owner, "appoint admins")?;
    let body: AdminBody = parse_json(&body)?;
    let user = body.newadmin.to_ascii_lowercase();
    state
        .store
        .set_role(&acting.caller.app.id, kind, &id, &user, Role::Admin)
        .await?;
    notify(
        &state,
        &acting,
        std::slice::from_ref(&user),
        "role",
        json!({"role": "admin"}),
    );
    Ok(Json(json!({"data": {"id": id, "newadmin": user, "result": "success"}})))
}

async fn remove_admin(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Owner, "remove admins")?;
    let user = username.to_ascii_lowercase();
    state
        .store
        .set_role(&acting.caller.app.id, kind, &id, &user, Role::Member)
        .await?;
    notify(
        &state,
        &acting,
        std::slice::from_ref(&user),
        "role",
        json!({"role": "member"}),
    );
    Ok(Json(json!({"data": {"id": id, "oldadmin": user, "result": "success"}})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerBody {
    newowner: String,
}

async fn transfer(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Owner, "transfer ownership")?;
    let body: OwnerBody = parse_json(&body)?;
    let new_owner = body.newowner.to_ascii_lowercase();
    let old = state
        .store
        .transfer_owner(&acting.caller.app.id, kind, &id, &new_owner)
        .await?;
    notify(
        &state,
        &acting,
        std::slice::from_ref(&new_owner),
        "role",
        json!({"role": "owner"}),
    );
    notify(&state, &acting, &[old], "role", json!({"role": "admin"}));
    Ok(Json(json!({"data": {"id": id, "newowner": new_owner}})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    usernames: Vec<String>,
    /// Milliseconds; -1 mutes until unmuted.
    mute_duration: i64,
}

async fn mute(
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
    Ok(Json(json!({"data": {"id": id, "muted": users, "until": until}})))
}

async fn muted(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "list muted members")?;
    let now = store::now_ms();
    let muted: Vec<Value> = state
        .store
        .members(&acting.caller.app.id, kind, &id)
        .await?
        .into_iter()
        .filter(|m| m.is_muted(now))
        .map(|m| json!({"user": m.username, "until": m.muted_until}))
        .collect();
    Ok(Json(json!({"entities": muted, "count": muted.len()})))
}

async fn unmute(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "unmute members")?;
    let user = username.to_ascii_lowercase();
    state
        .store
        .set_muted(&acting.caller.app.id, kind, &id, std::slice::from_ref(&user), 0)
        .await?;
    notify(&state, &acting, std::slice::from_ref(&user), "unmuted", json!({}));
    Ok(Json(json!({"data": {"id": id, "unmuted": user}})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteAllBody {
    muted: bool,
}

async fn mute_all(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Admin, "mute everyone")?;
    let body: MuteAllBody = parse_json(&body)?;
    let channel = update_channel(
        &state,
        &acting,
        ChannelUpdate {
            muted_all: Some(body.muted),
            ..ChannelUpdate::default()
        },
    )
    .await?;
    Ok(Json(json!({"data": channel})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnouncementBody {
    announcement: String,
}

async fn announce(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "set the announcement")?;
    let body: AnnouncementBody = parse_json(&body)?;
    let channel = update_channel(
        &state,
        &acting,
        ChannelUpdate {
            announcement: Some(body.announcement.clone()),
            ..ChannelUpdate::default()
        },
    )
    .await?;
    let members: Vec<String> = state
        .store
        .members(&acting.caller.app.id, kind, &id)
        .await?
        .into_iter()
        .map(|m| m.username)
        .collect();
    notify(
        &state,
        &acting,
        &members,
        "announcement",
        json!({"announcement": body.announcement}),
    );
    Ok(Json(json!({"data": channel})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersBody {
    usernames: Vec<String>,
}

/// Adds users to the blocklist: members among them are removed and cannot come back.
async fn ban(State(state): State<AppState>, acting: Acting, JsonBody(body): JsonBody) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "ban users")?;
    let body: UsersBody = parse_json(&body)?;
    let users = usernames(&body.usernames)?;
    for user in &users {
        require_outranks(&state, &acting, user).await?;
    }
    state.store.ban(&acting.caller.app.id, kind, &id, &users).await?;
    notify(&state, &acting, &users, "banned", json!({}));
    stop_room_delivery(&state, &acting, &users);
    Ok(Json(json!({"data": {"id": id, "banned": users}})))
}

async fn bans(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "see the blocklist")?;
    let banned = state.store.bans(&acting.caller.app.id, kind, &id).await?;
    Ok(Json(json!({"entities": banned, "count": banned.len()})))
}

async fn unban(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "change the blocklist")?;
    let user = username.to_ascii_lowercase();
    state.store.unban(&acting.caller.app.id, kind, &id, &user).await?;
    Ok(Json(json!({"data": {"id": id, "unbanned": user}})))
}

async fn join_requests(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let id = acting.channel.id.clone();
    acting.require(Standing::Admin, "see join requests")?;
    let pending = state.store.requests(&id, RequestKind::Join).await?;
    Ok(Json(json!({"entities": pending, "count": pending.len()})))
}

async fn decide_request(
    State(state): State<AppState>,
    acting: Acting,
    Target(user): Target,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "decide join requests")?;
    let approve = match params.get("decision").map(String::as_str) {
        Some("approve") => true,
        Some("reject") => false,
        _ => return Err(ApiError::NotFound("use .../approve or .../reject".into())),
    };
    if !state.store.take_request(&id, &user, RequestKind::Join).await? {
        return Err(ApiError::NotFound(format!("join request of {user}")));
    }
    if approve {
        let added = state
            .store
            .add_members(&acting.caller.app.id, kind, &id, std::slice::from_ref(&user))
            .await?;
        notify(&state, &acting, &added, "joined", json!({}));
    } else {
        notify(
            &state,
            &acting,
            std::slice::from_ref(&user),
            "request_rejected",
            json!({}),
        );
    }
    Ok(Json(json!({"data": {"id": id, "user": user, "approved": approve}})))
}

/// Invites users: admins always, members when the group allows invites. The invitee joins
/// by accepting.
async fn invite(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = acting.channel.id.clone();
    if acting.channel.allow_invites {
        acting.require(Standing::Member, "invite")?;
    } else {
        acting.require(Standing::Admin, "invite")?;
    }
    let body: UsersBody = parse_json(&body)?;
    let users = usernames(&body.usernames)?;
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    state.store.require_users(&acting.caller.app.id, &refs).await?;
    for user in &users {
        if state.store.is_banned(&id, user).await? {
            return Err(ApiError::Forbidden(format!("{user} is on the group's blocklist")));
        }
        state
            .store
            .add_request(&id, user, RequestKind::Invite, &acting.actor())
            .await?;
    }
    notify(&state, &acting, &users, "invited", json!({"name": acting.channel.name}));
    Ok(Json(json!({"data": {"id": id, "invited": users}})))
}

async fn accept_invite(
    State(state): State<AppState>,
    acting: Acting,
    Target(user): Target,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.caller.may_act_as(&user)?;
    if !state.store.take_request(&id, &user, RequestKind::Invite).await? {
        return Err(ApiError::NotFound(format!("invitation of {user}")));
    }
    let added = state
        .store
        .add_members(&acting.caller.app.id, kind, &id, std::slice::from_ref(&user))
        .await?;
    notify(&state, &acting, &added, "joined", json!({}));
    Ok(Json(json!({"data": {"id": id, "user": user, "status": "member"}})))
}

async fn decline_invite(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    let id = acting.channel.id.clone();
    let user = username;
    if !acting.is_self(&user) {
        acting.require(Standing::Admin, "withdraw invitations")?;
    }
    if !state.store.take_request(&id, &user, RequestKind::Invite).await? {
        return Err(ApiError::NotFound(format!("invitation of {user}")));
    }
    Ok(Json(json!({"data": {"id": id, "user": user, "status": "declined"}})))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<i64>,
}

/// A chatroom's recent messages, for members (and the app).
async fn room_messages(
    State(state): State<AppState>,
    acting: Acting,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = acting.channel.id.clone();
    acting.require(Standing::Member, "read the chatroom's history")?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let msgs: Vec<_> = state
        .store
        .room_history(&id, limit)
        .await?
        .iter()
        .map(|m| m.delivered("", None))
        .collect();
    Ok(Json(json!({"entities": msgs, "count": msgs.len()})))
}
