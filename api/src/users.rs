//! `/{org}/{app}/users`: create (one or many), list with a cursor, get, update, delete (one,
//! or the oldest N); the account's administration (password, deactivate/activate, revoke
//! tokens, disconnect) and what a backend asks about a user (online status, one or a
//! batch; offline message count).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Owner};
use crate::envelope::AppSlot;
use crate::error::{parse_json, JsonBody, Query};
use crate::throttle::{Key, Throttle};
use crate::{ApiError, AppState};
use store::files::Chatfile;
use store::tenants::App;
use store::users::{NewUser, User, UserUpdate};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    username: String,
    /// Optional, as on the platform: a user without one gets tokens through the app only.
    #[serde(default)]
    password: String,
    #[serde(default)]
    nickname: Option<String>,
}

impl NewUserBody {
    /// The user to create, its name checked.
    fn into_new_user(self) -> Result<NewUser, store::Error> {
        Ok(NewUser {
            username: store::names::username(&self.username)?,
            password: self.password,
            nickname: self.nickname,
        })
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<NewUserBody>),
    One(NewUserBody),
}

/// The most users one request may create.
const MAX_BATCH: usize = 60;

/// `POST /{org}/{app}/users`: with an app token, one user or a batch; without a token, one
/// user registering themselves, if the app has `open_registration` ([`register`]).
#[utoipa::path(post, path = "/{org}/{app}/users", tag = "users", security((), ("bearer" = [])),
    request_body(content = OneOrMany, description = "One user, or up to 60 (app token); without a token, one user \
        registering themselves when the app has `open_registration` (password of 8 characters or more)"),
    responses((status = 200, description = "Created; a batch reports the names it could not create in `data`", body = schema::Created)))]
#[allow(clippy::too_many_arguments)] // axum extractors: the registration path needs its own
pub async fn create(
    State(state): State<AppState>,
    Extension(throttle): Extension<Arc<Throttle>>,
    peer: Option<ConnectInfo<SocketAddr>>,
    Path((org, app)): Path<(String, String)>,
    headers: HeaderMap,
    slot: Option<Extension<AppSlot>>,
    caller: Result<Caller, ApiError>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = match caller {
        Ok(caller) => caller,
        // A token that does not work is an error whatever the app allows.
        Err(refused) if headers.contains_key(header::AUTHORIZATION) => return Err(refused),
        Err(refused) => {
            let address = peer.map(|ConnectInfo(addr)| addr.ip());
            return register(&state, &throttle, address, &org, &app, slot, &body, refused).await;
        }
    };
    caller.require_app()?;
    let value: Value = parse_json(&body)?;
    let parsed: OneOrMany = serde_json::from_value(value.clone()).map_err(|_| explain_user_body(&value))?;
    let (bodies, batch) = match parsed {
        OneOrMany::One(one) => (vec![one], false),
        OneOrMany::Many(many) => (many, true),
    };
    if bodies.is_empty() || bodies.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!("send 1 to {MAX_BATCH} users")));
    }
    let mut users = bodies
        .into_iter()
        .map(NewUserBody::into_new_user)
        .collect::<Result<Vec<_>, store::Error>>()?;
    // A batch creates the users it can, as the platform's does: a name taken (or twice in
    // the request) is reported in `data` and the others are created.
    let mut failed = Vec::new();
    if batch {
        let mut seen = std::collections::HashSet::new();
        let mut fresh = Vec::with_capacity(users.len());
        for user in users {
            if !seen.insert(user.username.clone()) || state.store.user_exists(&caller.app.id, &user.username).await? {
                failed.push(json!({
                    "username": user.username,
                    "registerUserFailReason": format!("the user {} already exists", user.username),
                }));
            } else {
                fresh.push(user);
            }
        }
        users = fresh;
    }
    if users.is_empty() {
        return Ok((
            StatusCode::OK,
            Json(json!({"action": "post", "entities": [], "data": failed, "count": 0})),
        ));
    }
    let entities = create_users(&state, &caller.app, &users).await?;
    Ok((
        StatusCode::OK,
        Json(json!({"action": "post", "count": entities.len(), "entities": entities, "data": failed})),
    ))
}

/// Creates `users` in `app`, answering their entities.
async fn create_users(state: &AppState, app: &App, users: &[NewUser]) -> Result<Vec<Value>, ApiError> {
    // Hashing the passwords takes turns with every other argon2 use in the process; a
    // request that cannot get its turns in time is refused rather than queued forever.
    let wait = state.settings.hash_timeout.saturating_mul(users.len() as u32);
    let created = tokio::time::timeout(wait, state.store.create_users(&app.id, users))
        .await
        .map_err(|_| ApiError::Unavailable("too many password hashes in progress; retry shortly".into()))??;
    Ok(created.iter().map(|u| user_entity(state, app, u)).collect())
}

/// The shortest password a user registering themselves may choose.
const MIN_REGISTRATION_PASSWORD: usize = 8;

/// A user registering themselves (no token): allowed only when the app's settings have
/// `open_registration`, one user per request, with a password of at least
/// [`MIN_REGISTRATION_PASSWORD`] characters. Every registration counts against the caller's
/// address in the login throttle (`api.login_address_free_failures` free, then backoff),
/// so one address cannot fill an app with users.
#[allow(clippy::too_many_arguments)]
async fn register(
    state: &AppState,
    throttle: &Throttle,
    address: Option<IpAddr>,
    org: &str,
    app: &str,
    slot: Option<Extension<AppSlot>>,
    body: &[u8],
    no_token: ApiError,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let app = state.store.find_app(org, app).await?;
    if let Some(Extension(slot)) = slot {
        slot.set(&app.id);
    }
    if !state.store.app_settings(&app.id).await?.open_registration {
        return Err(no_token);
    }
    let value: Value = parse_json(body)?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "without a token, register one user: {\"username\", \"password\", \"nickname\"?}".into(),
        ));
    }
    let one: NewUserBody = serde_json::from_value(value.clone()).map_err(|_| explain_user_body(&value))?;
    if one.password.chars().count() < MIN_REGISTRATION_PASSWORD {
        return Err(ApiError::BadRequest(format!(
            "'password' must have at least {MIN_REGISTRATION_PASSWORD} characters"
        )));
    }
    let user = one.into_new_user()?;
    if let Some(ip) = address {
        // Counted whether or not it succeeds; never cleared.
        let _counted = throttle.attempt(vec![Key::Registration(app.id.clone(), ip)])?;
    }
    let entities = create_users(state, &app, &[user]).await?;
    Ok((
        StatusCode::OK,
        Json(json!({"action": "post", "count": 1, "entities": entities, "data": []})),
    ))
}

/// Names the field that is missing or of the wrong type, for a clear 400.
fn explain_user_body(value: &Value) -> ApiError {
    let first = match value {
        Value::Array(items) => items
            .iter()
            .find(|i| serde_json::from_value::<NewUserBody>((*i).clone()).is_err()),
        other => Some(other),
    };
    let problem = match first.and_then(Value::as_object) {
        None => "each user must be an object".to_string(),
        Some(obj) => {
            if let Some(key) = obj
                .keys()
                .find(|k| !["username", "password", "nickname"].contains(&k.as_str()))
            {
                format!("unknown field '{key}'")
            } else if !obj.get("username").is_some_and(Value::is_string) {
                "'username' is required and must be a string".into()
            } else if obj.get("password").is_some_and(|p| !p.is_string()) {
                "'password' must be a string".into()
            } else {
                "'nickname' must be a string".into()
            }
        }
    };
    ApiError::BadRequest(problem)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 1000 (default 50).
    limit: Option<i64>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/{org}/{app}/users", tag = "users", params(ListQuery),
    responses((status = 200, description = "A page of users; `cursor` while more follow", body = schema::Users)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("'limit' must be from 1 to 1000".into()));
    }
    let users = state
        .store
        .list_users(&caller.app.id, limit + 1, q.cursor.as_deref())
        .await?;
    // A cursor only while more follow, as on the platform.
    let more = users.len() as i64 > limit;
    let mut users = users;
    users.truncate(limit as usize);
    let cursor = more.then(|| users.last().map(|u| u.username.clone())).flatten();
    let entities: Vec<Value> = users.iter().map(|u| user_entity(&state, &caller.app, u)).collect();
    let mut answer = json!({"action": "get", "entities": entities, "count": users.len()});
    if let Some(cursor) = cursor {
        answer["cursor"] = json!(cursor);
    }
    Ok(Json(answer))
}

#[utoipa::path(get, path = "/{org}/{app}/users/{username}", tag = "users",
    responses((status = 200, description = "The user (app token, or the user's own)", body = schema::Users)))]
pub async fn get(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    let user = state.store.get_user(&caller.app.id, &username).await?;
    Ok(Json(
        json!({"action": "get", "entities": [user_entity(&state, &caller.app, &user)], "count": 1}),
    ))
}

/// A user as answered, in the platform's entity shape (`uuid`, `type`, `created`,
/// `modified`, `username`, `activated`, `nickname`: "" when none), with chatd's `metadata`
/// and their avatar's URL and its thumbnail's, if they have one.
pub(crate) fn user_entity(state: &AppState, app: &App, user: &User) -> Value {
    let mut entity = serde_json::to_value(user).unwrap_or_default();
    if entity.get("nickname").is_none() {
        entity["nickname"] = json!("");
    }
    if !user.avatar_file.is_empty() {
        let links = &state.files.links;
        entity["avatar"] = json!(links.url(&app.org, &app.name, &user.avatar_file));
        entity["avatar_thumbnail"] = json!(links.thumbnail_url(&app.org, &app.name, &user.avatar_file));
    }
    entity
}

/// Checks a new avatar: `""` clears it, else the URL of an image uploaded to this app that
/// the caller may read (a user may not take another user's private file as theirs).
async fn avatar_file(state: &AppState, caller: &Caller, url: &str) -> Result<Option<Chatfile>, ApiError> {
    if url.is_empty() {
        return Ok(None);
    }
    let app = &caller.app;
    let id = state.files.links.file_id(&app.org, &app.name, url).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "body.avatar must be the URL of an image uploaded to this app ({}/{}/{}/chatfiles/…), or \"\" to remove it",
            state.files.links.base(),
            app.org,
            app.name
        ))
    })?;
    let missing = || ApiError::BadRequest(format!("body.avatar: no chatfile {id} in this app"));
    let file = match state.store.chatfile(&app.id, &id).await {
        Ok(file) => file,
        Err(store::Error::NotFound(_)) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    if let Some(user) = &caller.user {
        if !state.store.may_read_file(&file, user).await? {
            return Err(missing());
        }
    }
    if !file.has_thumbnail() {
        return Err(ApiError::BadRequest(format!(
            "body.avatar must be a PNG, JPEG, GIF or WebP image; this file is {}",
            file.content_type
        )));
    }
    Ok(Some(file))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    nickname: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// The URL of an uploaded image, or `""` to remove the avatar.
    #[serde(default)]
    avatar: Option<String>,
}

#[utoipa::path(put, path = "/{org}/{app}/users/{username}", tag = "users", request_body = UpdateBody,
    responses((status = 200, description = "The user as changed", body = schema::Users)))]
pub async fn update(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body: UpdateBody = parse_json(&body)?;
    if let Some(url) = &body.avatar {
        let file = avatar_file(&state, &caller, url.trim()).await?;
        state.store.set_avatar(&caller.app.id, &username, file.as_ref()).await?;
    }
    let user = state
        .store
        .update_user(
            &caller.app.id,
            &username,
            UserUpdate {
                nickname: body.nickname,
                metadata: body.metadata,
            },
        )
        .await?;
    Ok(Json(
        json!({"action": "put", "entities": [user_entity(&state, &caller.app, &user)], "count": 1}),
    ))
}

#[utoipa::path(delete, path = "/{org}/{app}/users/{username}", tag = "users",
    responses((status = 200, description = "The user deleted, their devices disconnected", body = schema::Users)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, username)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let deleted = remove_user(&state, &caller, &username.to_ascii_lowercase()).await?;
    Ok(Json(json!({"action": "delete", "entities": [deleted], "count": 1})))
}

/// Deletes a user and closes their devices; answers the entity they had.
async fn remove_user(state: &AppState, caller: &Caller, username: &str) -> Result<Value, ApiError> {
    let user = state.store.get_user(&caller.app.id, username).await?;
    state.store.delete_user(&caller.app.id, username).await?;
    state.live.disconnect_user(&caller.app.org, &caller.app.name, username);
    Ok(user_entity(state, &caller.app, &user))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchDeleteQuery {
    /// How many of the oldest users to delete: 1 to 100 (default 1).
    limit: Option<i64>,
}

/// `DELETE /{org}/{app}/users?limit=N` (app token): deletes the N oldest users (1 to 100,
/// default 1), as the platform's batch delete does.
#[utoipa::path(delete, path = "/{org}/{app}/users", tag = "users", params(BatchDeleteQuery),
    responses((status = 200, description = "The users deleted, oldest first", body = schema::Users)))]
pub async fn delete_oldest(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<BatchDeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let limit = q.limit.unwrap_or(1);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest("query.limit must be from 1 to 100".into()));
    }
    let mut deleted = Vec::new();
    for username in state.store.oldest_users(&caller.app.id, limit).await? {
        deleted.push(remove_user(&state, &caller, &username).await?);
    }
    let cursor = deleted.last().and_then(|u| u["username"].as_str()).map(str::to_string);
    Ok(Json(
        json!({"action": "delete", "entities": deleted, "count": deleted.len(), "cursor": cursor}),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    newpassword: String,
    /// chatd accepts, and ignores, the old password a client may send along.
    #[serde(default, rename = "oldpassword")]
    _old: Option<String>,
}

/// `PUT /{org}/{app}/users/{username}/password` (app token, or the user's own): sets a new
/// password and revokes every token issued so far; their devices are disconnected.
#[utoipa::path(put, path = "/{org}/{app}/users/{username}/password", tag = "users", request_body = PasswordBody,
    responses((status = 200, description = "Set; every earlier token is revoked", body = schema::Action)))]
pub async fn set_password(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body: PasswordBody = parse_json(&body)?;
    let wait = state.settings.hash_timeout;
    tokio::time::timeout(
        wait,
        state.store.set_password(&caller.app.id, &username, &body.newpassword),
    )
    .await
    .map_err(|_| ApiError::Unavailable("too many password hashes in progress; retry shortly".into()))??;
    state.live.disconnect_user(&caller.app.org, &caller.app.name, &username);
    Ok(Json(json!({"action": "set user password"})))
}

/// `POST /{org}/{app}/users/{username}/deactivate` (app token): the user's tokens are
/// revoked, their devices disconnected, and no new token is issued to them (REST or MQTT)
/// until `…/activate`.
#[utoipa::path(post, path = "/{org}/{app}/users/{username}/deactivate", tag = "users",
    responses((status = 200, description = "Deactivated", body = schema::Users)))]
pub async fn deactivate(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    state.store.set_activated(&caller.app.id, &username, false).await?;
    state.live.disconnect_user(&caller.app.org, &caller.app.name, &username);
    let user = state.store.get_user(&caller.app.id, &username).await?;
    Ok(Json(
        json!({"action": "Deactivate user", "entities": [user_entity(&state, &caller.app, &user)]}),
    ))
}

/// `POST /{org}/{app}/users/{username}/activate` (app token).
#[utoipa::path(post, path = "/{org}/{app}/users/{username}/activate", tag = "users",
    responses((status = 200, description = "Activated", body = schema::Action)))]
pub async fn activate(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    state.store.set_activated(&caller.app.id, &username, true).await?;
    Ok(Json(json!({"action": "activate user"})))
}

/// "online" or "offline" (any of the user's devices connected, on any node).
fn status_of(state: &AppState, app: &App, user: &str) -> &'static str {
    if state.live.is_online(&app.org, &app.name, user) {
        "online"
    } else {
        "offline"
    }
}

/// `GET /{org}/{app}/users/{username}/status` (app token): `{"data": {"<user>": "online"}}`.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/status", tag = "users",
    responses((status = 200, description = "`data`: the user's name → `online` or `offline`", body = schema::UserStatus)))]
pub async fn status(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    state.store.require_users(&caller.app.id, &[&username]).await?;
    let status = status_of(&state, &caller.app, &username);
    Ok(Json(json!({"data": {username: status}, "count": 1})))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchStatusBody {
    usernames: Vec<String>,
}

/// `POST /{org}/{app}/users/batch/status` (app token): up to 100 users, in the order asked;
/// a name that is no user is answered "offline", as the platform does.
#[utoipa::path(post, path = "/{org}/{app}/users/batch/status", tag = "users", request_body = BatchStatusBody,
    responses((status = 200, description = "`data`: one `{name: status}` per name asked, in order", body = schema::BatchStatus)))]
pub async fn batch_status(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let body: BatchStatusBody = parse_json(&body)?;
    if body.usernames.is_empty() || body.usernames.len() > 100 {
        return Err(ApiError::BadRequest("body.usernames must name 1 to 100 users".into()));
    }
    let data: Vec<Value> = body
        .usernames
        .iter()
        .map(|u| {
            let user = u.trim().to_ascii_lowercase();
            json!({u: status_of(&state, &caller.app, &user)})
        })
        .collect();
    Ok(Json(json!({"data": data})))
}

/// `GET /{org}/{app}/users/{username}/offline_msg_count` (app token): the messages waiting
/// for the user. chatd keeps every message rather than a queue of undelivered ones, so
/// this is what the user has not read yet (the unread total of their conversations).
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/offline_msg_count", tag = "users",
    responses((status = 200, description = "`data`: the user's name → messages not read yet", body = schema::Counts)))]
pub async fn offline_msg_count(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    state.store.require_users(&caller.app.id, &[&username]).await?;
    let count = state.store.total_unread(&caller.app.id, &username).await?;
    Ok(Json(json!({"data": {username: count}, "count": 1})))
}

/// `GET /{org}/{app}/users/{username}/offline_msg_status/{msg_id}` (app token):
/// `"delivered"` once one of the user's devices has acknowledged the message (a delivered
/// or read receipt up to it), else `"undelivered"`.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/offline_msg_status/{msg_id}", tag = "users",
    responses((status = 200, description = "`data`: the message id → `delivered` or `undelivered`", body = schema::UserStatus)))]
pub async fn offline_msg_status(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, username, msg_id)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let username = username.trim().to_ascii_lowercase();
    state.store.require_users(&caller.app.id, &[&username]).await?;
    // A message that is not the user's (or no message at all) was not delivered to them.
    let delivered = match state.store.message(&caller.app.id, &msg_id).await {
        Ok(msg) if msg.chat != "user" || msg.sender == username || msg.recipient == username => {
            state
                .store
                .delivered_up_to(&caller.app.id, &username, &msg.conv)
                .await?
                >= msg.seq
        }
        Ok(_) | Err(store::Error::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    let status = if delivered { "delivered" } else { "undelivered" };
    Ok(Json(json!({"data": {msg_id: status}, "count": 1})))
}

/// `POST /{org}/{app}/users/{username}/revoke_tokens` (app token): every token issued to
/// the user so far stops working, on REST and MQTT, and their connected devices are
/// disconnected (they must log in again).
#[utoipa::path(post, path = "/{org}/{app}/users/{username}/revoke_tokens", tag = "users",
    responses((status = 200, description = "Every token issued so far is revoked", body = schema::Revoked)))]
pub async fn revoke_tokens(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    state.store.revoke_user_tokens(&caller.app.id, &username).await?;
    state.live.disconnect_user(&caller.app.org, &caller.app.name, &username);
    Ok(Json(
        json!({"action": "post", "data": {"username": username, "revoked": true}}),
    ))
}

/// `GET /{org}/{app}/users/{username}/disconnect` (app token): closes the user's MQTT
/// connections (on every node); their tokens stay valid, so devices may reconnect.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/disconnect", tag = "users",
    responses((status = 200, description = "The user's devices are disconnected", body = crate::openapi::Done)))]
pub async fn disconnect(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    state.store.require_users(&caller.app.id, &[&username]).await?;
    state.live.disconnect_user(&caller.app.org, &caller.app.name, &username);
    Ok(Json(json!({"action": "get", "data": {"result": true}})))
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list, delete_oldest))
        .routes(routes!(batch_status))
        .routes(routes!(status))
        .routes(routes!(offline_msg_count))
        .routes(routes!(offline_msg_status))
        .routes(routes!(set_password))
        .routes(routes!(deactivate))
        .routes(routes!(activate))
        .routes(routes!(get, update, delete))
        .routes(routes!(revoke_tokens))
        .routes(routes!(disconnect))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
pub(crate) mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    /// A user, in the platform's entity shape.
    #[derive(ToSchema)]
    #[schema(as = User)]
    pub(crate) struct UserEntity {
        uuid: String,
        /// Always `user`.
        #[serde(rename = "type")]
        entity_type: String,
        username: String,
        /// False while the user is deactivated.
        activated: bool,
        /// `""` when none.
        nickname: String,
        /// The app's own key-value data on the user.
        #[schema(value_type = Object)]
        metadata: serde_json::Map<String, serde_json::Value>,
        /// Milliseconds since 1970.
        created: i64,
        modified: i64,
        /// The avatar's URL and its thumbnail's, when the user has one.
        avatar: Option<String>,
        avatar_thumbnail: Option<String>,
    }

    /// Users: `entities`, their `count`, and a `cursor` while more follow.
    #[derive(ToSchema)]
    pub struct Users {
        entities: Vec<UserEntity>,
        count: Option<u64>,
        cursor: Option<String>,
    }

    /// A name a batch could not create, and why.
    #[derive(ToSchema)]
    pub struct Failed {
        username: String,
        #[serde(rename = "registerUserFailReason")]
        reason: String,
    }

    /// The users created; `data` names those a batch could not create.
    #[derive(ToSchema)]
    pub struct Created {
        entities: Vec<UserEntity>,
        data: Vec<Failed>,
        count: u64,
    }

    /// An answer whose `action` says what was done.
    #[derive(ToSchema)]
    pub struct Action {
        action: String,
    }

    /// `data`: one key (the user's name, or the message's id) → its status.
    #[derive(ToSchema)]
    pub struct UserStatus {
        #[schema(value_type = std::collections::HashMap<String, String>)]
        data: serde_json::Map<String, serde_json::Value>,
        count: u64,
    }

    /// `data`: one key (the user's name) → a count.
    #[derive(ToSchema)]
    pub struct Counts {
        #[schema(value_type = std::collections::HashMap<String, u64>)]
        data: serde_json::Map<String, serde_json::Value>,
        count: u64,
    }

    /// `data`: `{name: "online" | "offline"}` for each name asked, in order.
    #[derive(ToSchema)]
    pub struct BatchStatus {
        #[schema(value_type = Vec<std::collections::HashMap<String, String>>)]
        data: Vec<serde_json::Value>,
    }

    #[derive(ToSchema)]
    pub struct RevokedData {
        username: String,
        revoked: bool,
    }

    /// `data`: whose tokens were revoked.
    #[derive(ToSchema)]
    pub struct Revoked {
        data: RevokedData,
    }
}
