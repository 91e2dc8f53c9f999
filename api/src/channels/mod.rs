//! Groups (`/{org}/{app}/chatgroups`) and chatrooms (`/{org}/{app}/chatrooms`): one set of
//! handlers for both, since both are channels with an owner, admins, members, mutes and a
//! blocklist. Group-only routes (join requests, invitations) refuse chatrooms.
//!
//! Who may do what: an app token may do everything; with a user token, the owner and the
//! admins moderate, the owner alone transfers ownership, appoints admins and dissolves, and
//! every user may join (chatrooms, open public groups), ask to join (public groups that
//! need approval), accept an invitation or leave.
//!
//! The handlers are split by what they manage: this module has the channel itself (create,
//! read, list, update, transfer, dissolve, announcement, disable), [`members`] who is in it
//! (members, admins, join requests, invitations), [`moderation`] who may speak (mutes,
//! mute-all, blocklist, allow list) and [`attributes`] the key-value data kept on them.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{parse_json, JsonBody, Query};
use crate::{ApiError, AppState};
use store::channels::{Channel, ChannelKind, ChannelUpdate, NewChannel, RequestKind, Role};

mod attributes;
mod members;
mod moderation;
/// The answers' shapes, for the OpenAPI document.
pub(crate) mod schema;

use attributes::*;
use members::*;
use moderation::*;

/// The routes of one kind of channel. The handlers both kinds share are described once,
/// under `/{org}/{app}/chatgroups` (tag `groups`); [`as_room`] moves that description to
/// `/{org}/{app}/chatrooms` (tag `chatrooms`) for the chatrooms' copy, which `routes!`
/// then routes there.
pub(crate) fn routes(kind: ChannelKind) -> OpenApiRouter<AppState> {
    let shared = |routes: UtoipaMethodRouter<AppState>| match kind {
        ChannelKind::Group => routes,
        ChannelKind::Room => as_room(routes),
    };
    let router = OpenApiRouter::new()
        .routes(shared(routes!(create, list)))
        .routes(shared(routes!(joined_by)))
        .routes(shared(routes!(show, update, dissolve)))
        .routes(shared(routes!(members, add_members)))
        .routes(shared(routes!(is_joined)))
        .routes(shared(routes!(add_member, remove_members)))
        .routes(shared(routes!(add_admin, admins)))
        .routes(shared(routes!(remove_admin)))
        .routes(shared(routes!(mute, muted)))
        .routes(shared(routes!(unmute)))
        .routes(shared(routes!(mute_all, unmute_all)))
        .routes(shared(routes!(announce, announcement)))
        .routes(shared(routes!(ban, bans)))
        .routes(shared(routes!(ban_one, unban)))
        .routes(shared(routes!(allow, allowlist)))
        .routes(shared(routes!(allow_one, disallow)))
        .routes(shared(routes!(disable)))
        .routes(shared(routes!(enable)));
    let router = match kind {
        ChannelKind::Group => router
            .routes(routes!(join_requests))
            .routes(routes!(decide_request))
            .routes(routes!(invite))
            .routes(routes!(accept_invite))
            .routes(routes!(decline_invite))
            .routes(routes!(member_attributes, set_member_attributes))
            .routes(routes!(many_member_attributes)),
        ChannelKind::Room => router
            .routes(routes!(room_messages))
            .routes(routes!(room_attributes))
            .routes(routes!(set_room_attributes, remove_room_attributes))
            .routes(routes!(force_room_attributes, force_remove_room_attributes)),
    };
    router.layer(Extension(kind))
}

/// The chatrooms' copy of shared handlers described under `/{org}/{app}/chatgroups`: the
/// same operations under `/{org}/{app}/chatrooms` (and `…/joined_chatrooms`), tagged
/// `chatrooms`. `routes!` routes the handlers on the paths of the description, so this
/// moves the route as well.
fn as_room((schemas, mut paths, method_router): UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    const GROUPS: &str = "/{org}/{app}/chatgroups";
    const ROOMS: &str = "/{org}/{app}/chatrooms";
    paths.paths = std::mem::take(&mut paths.paths)
        .into_iter()
        .map(|(path, mut item)| {
            let moved = if let Some(rest) = path.strip_prefix(GROUPS) {
                format!("{ROOMS}{rest}")
            } else if let Some(user) = path.strip_suffix("/joined_chatgroups") {
                format!("{user}/joined_chatrooms")
            } else {
                panic!("{path}: a handler shared with chatrooms must be described under {GROUPS}")
            };
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                operation.tags = Some(vec!["chatrooms".to_string()]);
            }
            (moved, item)
        })
        .collect();
    (schemas, paths, method_router)
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
pub(crate) enum Standing {
    Outsider,
    Member,
    Admin,
    Owner,
    App,
}

pub(crate) struct Acting {
    pub(crate) caller: Caller,
    pub(crate) channel: Channel,
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

    pub(crate) fn require(&self, at_least: Standing, what: &str) -> Result<(), ApiError> {
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
    // The app's webhooks hear of it once, with everyone it concerns.
    let mut hook = json!({
        "channel": acting.channel.kind.as_str(),
        "id": acting.channel.id,
        "event": event,
        "users": users,
        "by": acting.actor(),
    });
    if let (Some(hook), Some(extra)) = (hook.as_object_mut(), extra.as_object()) {
        hook.extend(extra.clone());
    }
    let (store, app_id) = (state.store.clone(), caller.app.id.clone());
    tokio::spawn(async move {
        let key = uuid::Uuid::new_v4().simple().to_string();
        store.hook_event(&app_id, "group", &key, &hook).await;
    });
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

/// The platform names a group `groupid` and a chatroom `id` in its answers.
fn id_key(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Group => "groupid",
        ChannelKind::Room => "id",
    }
}

/// The platform's chatroom block lists name the room `chatroomid` (member lists: `id`).
fn block_key(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Group => "groupid",
        ChannelKind::Room => "chatroomid",
    }
}

/// `u1,u2,u3` in a path: the platform's way of naming several users at once.
fn listed(names: &str) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    usernames(&list)
}

/// A channel as the platform shows it (`GET /chatgroups/{id}`): its settings with
/// `affiliations`, one `{"owner": name}` or `{"member": name}` per member (admins are
/// members there; `GET …/admin` lists them).
fn detail(channel: &Channel, members: &[store::channels::Member]) -> Value {
    let affiliations: Vec<Value> = members
        .iter()
        .map(|m| match m.role {
            Role::Owner => json!({"owner": m.username}),
            _ => json!({"member": m.username}),
        })
        .collect();
    json!({
        "id": channel.id,
        "name": channel.name,
        "description": channel.description,
        "membersonly": channel.members_only,
        "allowinvites": channel.allow_invites,
        "maxusers": channel.max_members,
        "owner": channel.owner,
        "created": channel.created,
        "custom": channel.custom,
        "avatar": channel.avatar,
        "mute": channel.muted_all,
        "disabled": channel.disabled,
        "announcement": channel.announcement,
        "affiliations_count": members.len(),
        "affiliations": affiliations,
        "public": channel.public,
    })
}

/// A channel in a list (`GET /chatgroups`, `GET /chatrooms`). The platform's group list
/// names the owner `{org}#{app}_{owner}` and gives `lastModified` as a string.
fn summary(app: &store::tenants::App, channel: &Channel) -> Value {
    match channel.kind {
        ChannelKind::Group => json!({
            "groupid": channel.id,
            "groupname": channel.name,
            "owner": format!("{}#{}_{}", app.org, app.name, channel.owner),
            "affiliations": channel.member_count,
            "type": "group",
            "public": channel.public,
            "description": channel.description,
            "created": channel.created,
            "lastModified": channel.modified.to_string(),
        }),
        ChannelKind::Room => json!({
            "id": channel.id,
            "name": channel.name,
            "owner": channel.owner,
            "affiliations_count": channel.member_count,
            "description": channel.description,
            "created": channel.created,
        }),
    }
}

/// A body naming users: `{"usernames": [...]}` (1 to 100).
#[derive(Deserialize, ToSchema)]
#[schema(as = ChannelUsersBody)]
#[serde(deny_unknown_fields)]
struct UsersBody {
    usernames: Vec<String>,
}

fn usernames(list: &[String]) -> Result<Vec<String>, ApiError> {
    if list.is_empty() || list.len() > 100 {
        return Err(ApiError::BadRequest("name 1 to 100 users".into()));
    }
    Ok(list.iter().map(|u| u.trim().to_ascii_lowercase()).collect())
}

/// A new group or chatroom. `groupname` and `desc` are accepted for `name` and
/// `description`, as on the platform.
#[derive(Deserialize, ToSchema)]
#[schema(as = ChannelCreateBody)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(alias = "groupname")]
    name: String,
    #[serde(default, alias = "desc")]
    description: String,
    /// Default true.
    #[serde(default = "yes")]
    public: bool,
    #[serde(default)]
    membersonly: bool,
    #[serde(default)]
    allowinvites: bool,
    /// Default: the app's limit, at most 200.
    #[serde(default)]
    maxusers: Option<i64>,
    /// Required with an app token; with a user token, the caller if given.
    #[serde(default)]
    owner: Option<String>,
    /// Members besides the owner.
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    custom: String,
    #[serde(default)]
    avatar: String,
    /// The platform's switch for invitations needing the invitee's consent; chatd's
    /// invitations always do (the invitee accepts), so it is accepted and has no effect.
    #[serde(default, rename = "invite_need_confirm")]
    _invite_need_confirm: Option<bool>,
}

fn yes() -> bool {
    true
}

/// Creates a group (`/chatgroups`) or a chatroom (`/chatrooms`). With an app token `owner`
/// names the owner; a user creates channels they own (chatrooms: only the app's chatroom
/// super admins, when it names any).
#[utoipa::path(post, path = "/{org}/{app}/chatgroups", tag = "groups", request_body = CreateBody,
    responses((status = 200, description = "Created: `data.groupid` (a group) or `data.id` (a chatroom)",
        body = schema::ChannelCreated)))]
async fn create(
    State(state): State<AppState>,
    Extension(kind): Extension<ChannelKind>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: CreateBody = parse_json(&body)?;
    if let (ChannelKind::Room, Some(user)) = (kind, &caller.user) {
        if !state.store.may_create_rooms(&caller.app.id, user).await? {
            return Err(ApiError::Forbidden(
                "only the app's chatroom super admins may create chatrooms".into(),
            ));
        }
    }
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
                custom: body.custom,
                avatar: body.avatar,
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
    Ok((StatusCode::OK, Json(json!({"data": {id_key(kind): channel.id}}))))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// 1 to 1000 (default 50).
    limit: Option<i64>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
}

/// The app's groups or chatrooms, a page at a time; a user sees chatrooms and public groups.
#[utoipa::path(get, path = "/{org}/{app}/chatgroups", tag = "groups", params(ListQuery),
    responses((status = 200, description = "A page of channels; `cursor` while more follow. Groups: `groupid`, \
        `groupname`, `affiliations`, `type`, `public`, `lastModified`; chatrooms: `id`, `name`, `affiliations_count`",
        body = schema::ChannelList)))]
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
        .list_channels(&caller.app.id, kind, limit + 1, q.cursor.as_deref())
        .await?;
    // A cursor only while more follow, as on the platform.
    let more = channels.len() as i64 > limit;
    channels.truncate(limit as usize);
    let cursor = more.then(|| channels.last().map(|c| c.id.clone())).flatten();
    // Users see chatrooms and public groups; private groups only to the app.
    if caller.user.is_some() && kind == ChannelKind::Group {
        channels.retain(|c| c.public);
    }
    let data: Vec<Value> = channels.iter().map(|c| summary(&caller.app, c)).collect();
    let mut answer = json!({"data": data, "count": data.len()});
    if let Some(cursor) = cursor {
        answer["cursor"] = json!(cursor);
    }
    Ok(Json(answer))
}

/// The groups or chatrooms a user is a member of (app token, or the user's own).
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/joined_chatgroups", tag = "groups",
    responses((status = 200, description = "Groups: `groupid` and `groupname`; chatrooms: `id`, `name` and \
        `disabled` (`\"true\"` or `\"false\"`)", body = schema::JoinedChannels)))]
async fn joined_by(
    State(state): State<AppState>,
    Extension(kind): Extension<ChannelKind>,
    caller: Caller,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    caller.may_act_as(&username)?;
    let channels = state.store.user_channels(&caller.app.id, kind, &username).await?;
    let data: Vec<Value> = channels
        .iter()
        .map(|c| match kind {
            ChannelKind::Group => json!({"groupid": c.id, "groupname": c.name}),
            // A string here, as on the platform.
            ChannelKind::Room => json!({"id": c.id, "name": c.name, "disabled": c.disabled.to_string()}),
        })
        .collect();
    Ok(Json(json!({"data": data, "count": data.len(), "properties": {}})))
}

/// `GET /chatgroups/{id}/user/{username}/is_joined`: `{"data": true}` if a member.
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/user/{username}/is_joined", tag = "groups",
    responses((status = 200, description = "`data`: whether the user is a member", body = schema::ChannelIsJoined)))]
async fn is_joined(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    if acting.channel.kind == ChannelKind::Group && !acting.channel.public {
        acting.require(Standing::Member, "see a private group's members")?;
    }
    let member = state
        .store
        .member(&acting.caller.app.id, &acting.channel.id, &username)
        .await?
        .is_some();
    Ok(Json(json!({"data": member})))
}

/// `GET /chatgroups/{id}` or, as the platform allows, several: `/chatgroups/{id1},{id2}`
/// (at most 100). Always a list.
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}", tag = "groups",
    responses((status = 200, description = "The channel, or each of the comma-separated ids, with its members",
        body = schema::ChannelDetails)))]
async fn show(
    State(state): State<AppState>,
    Extension(kind): Extension<ChannelKind>,
    caller: Caller,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let ids: Vec<&str> = params
        .get("id")
        .map(|ids| ids.split(',').map(str::trim).filter(|i| !i.is_empty()).collect())
        .unwrap_or_default();
    if ids.is_empty() || ids.len() > 100 {
        return Err(ApiError::BadRequest("name 1 to 100 ids, separated by commas".into()));
    }
    let mut data = Vec::with_capacity(ids.len());
    for id in ids {
        let acting = Acting::load(&state, caller.clone(), kind, id).await?;
        if kind == ChannelKind::Group && !acting.channel.public {
            acting.require(Standing::Member, "see a private group")?;
        }
        let members = state.store.members(&caller.app.id, kind, id).await?;
        data.push(detail(&acting.channel, &members));
    }
    Ok(Json(json!({"data": data, "count": data.len()})))
}

/// The fields to change (the owner, an admin or the app); or `newowner` alone, to transfer
/// ownership (the owner or the app).
#[derive(Deserialize, ToSchema)]
#[schema(as = ChannelUpdateBody)]
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
    #[serde(default)]
    custom: Option<String>,
    #[serde(default)]
    avatar: Option<String>,
    /// Accepted, as on create; chatd's invitations always wait for the invitee.
    #[serde(default)]
    invite_need_confirm: Option<bool>,
    /// The platform transfers a group's ownership with `PUT /chatgroups/{id}`
    /// `{"newowner": …}` (the owner only).
    #[serde(default)]
    newowner: Option<String>,
}

/// Changes a channel's settings, or (`newowner`) transfers it; the old owner stays as an admin.
#[utoipa::path(put, path = "/{org}/{app}/chatgroups/{id}", tag = "groups", request_body = UpdateBody,
    responses((status = 200, description = "`data`: each field that may be changed, `true` if it was; \
        `{\"newowner\": true}` for a transfer", body = schema::ChannelUpdated)))]
async fn update(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body: UpdateBody = parse_json(&body)?;
    if let Some(new_owner) = body.newowner {
        let alone = body.name.is_none()
            && body.description.is_none()
            && body.public.is_none()
            && body.membersonly.is_none()
            && body.allowinvites.is_none()
            && body.maxusers.is_none()
            && body.custom.is_none()
            && body.avatar.is_none();
        if !alone {
            return Err(ApiError::BadRequest(
                "body.newowner transfers the group on its own; change other fields in another request".into(),
            ));
        }
        return transfer(&state, &acting, new_owner).await;
    }
    acting.require(Standing::Admin, "change it")?;
    // The platform answers each field it may change: `true` for those changed.
    let mut changed = serde_json::Map::new();
    // (A chatroom's new name too is reported as `groupname`, as the platform does.)
    for (key, present) in [
        ("groupname", body.name.is_some()),
        ("description", body.description.is_some()),
        ("avatar", body.avatar.is_some()),
        ("invite_need_confirm", body.invite_need_confirm.is_some()),
        ("public", body.public.is_some()),
        ("membersonly", body.membersonly.is_some()),
        ("allowinvites", body.allowinvites.is_some()),
        ("maxusers", body.maxusers.is_some()),
        ("custom", body.custom.is_some()),
    ] {
        changed.insert(key.into(), json!(present));
    }
    update_channel(
        &state,
        &acting,
        ChannelUpdate {
            name: body.name,
            description: body.description,
            public: body.public,
            members_only: body.membersonly,
            allow_invites: body.allowinvites,
            max_members: body.maxusers,
            custom: body.custom,
            avatar: body.avatar,
            ..ChannelUpdate::default()
        },
    )
    .await?;
    Ok(Json(json!({"data": changed})))
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

/// Dissolves a channel (the owner or the app); its members are told.
#[utoipa::path(delete, path = "/{org}/{app}/chatgroups/{id}", tag = "groups",
    responses((status = 200, description = "Dissolved: `data.groupid` (a group) or `data.id` (a chatroom)",
        body = schema::ChannelDissolved)))]
async fn dissolve(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Owner, "dissolve it")?;
    let members = state.store.delete_channel(&acting.caller.app.id, kind, &id).await?;
    notify(&state, &acting, &members, "dissolved", json!({}));
    stop_room_delivery(&state, &acting, &members);
    Ok(Json(json!({"data": {id_key(kind): id, "success": true}})))
}

/// `PUT /chatgroups/{id}` `{"newowner": name}`: the owner (or the app) hands the group
/// over; the old owner stays as an admin.
async fn transfer(state: &AppState, acting: &Acting, new_owner: String) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Owner, "transfer ownership")?;
    let new_owner = new_owner.trim().to_ascii_lowercase();
    let old = state
        .store
        .transfer_owner(&acting.caller.app.id, kind, &id, &new_owner)
        .await?;
    notify(
        state,
        acting,
        std::slice::from_ref(&new_owner),
        "role",
        json!({"role": "owner"}),
    );
    notify(state, acting, &[old], "role", json!({"role": "admin"}));
    Ok(Json(json!({"data": {"newowner": true}})))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = ChannelAnnouncementBody)]
#[serde(deny_unknown_fields)]
struct AnnouncementBody {
    announcement: String,
}

/// Sets the announcement (the owner, an admin or the app); members are told.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/announcement", tag = "groups",
    request_body = AnnouncementBody,
    responses((status = 200, description = "Set", body = schema::ChannelAnnounced)))]
async fn announce(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (kind, id) = (acting.channel.kind, acting.channel.id.clone());
    acting.require(Standing::Admin, "set the announcement")?;
    let body: AnnouncementBody = parse_json(&body)?;
    update_channel(
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
    Ok(Json(json!({"data": {"id": id, "result": true}})))
}

/// `GET …/{id}/announcement` (members).
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/announcement", tag = "groups",
    responses((status = 200, description = "The announcement (`\"\"` when none)", body = schema::ChannelAnnouncement)))]
async fn announcement(acting: Acting) -> Result<Json<Value>, ApiError> {
    if acting.channel.kind == ChannelKind::Group {
        acting.require(Standing::Member, "read the announcement")?;
    }
    Ok(Json(json!({"data": {"announcement": acting.channel.announcement}})))
}

/// `POST …/{id}/disable` and `…/enable` (app token): a disabled channel takes no messages
/// and no new members until enabled again.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/disable", tag = "groups",
    responses((status = 200, description = "Disabled", body = schema::ChannelDisabled)))]
async fn disable(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    set_disabled(&state, &acting, true).await
}

/// `POST …/{id}/enable` (app token): the channel takes messages and members again.
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/enable", tag = "groups",
    responses((status = 200, description = "Enabled", body = schema::ChannelDisabled)))]
async fn enable(State(state): State<AppState>, acting: Acting) -> Result<Json<Value>, ApiError> {
    set_disabled(&state, &acting, false).await
}

async fn set_disabled(state: &AppState, acting: &Acting, disabled: bool) -> Result<Json<Value>, ApiError> {
    acting.caller.require_app()?;
    update_channel(
        state,
        acting,
        ChannelUpdate {
            disabled: Some(disabled),
            ..ChannelUpdate::default()
        },
    )
    .await?;
    Ok(Json(json!({"data": {"disabled": disabled}})))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// How many of the latest messages: 1 to 10,000 (default 100; others are brought
    /// within).
    limit: Option<i64>,
}

/// A chatroom's recent messages, for members (and the app).
#[utoipa::path(get, path = "/{org}/{app}/chatrooms/{id}/messages", tag = "chatrooms", params(HistoryQuery),
    responses((status = 200, description = "The latest messages, oldest first", body = schema::RoomMessages)))]
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
