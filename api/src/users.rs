//! `/{org}/{app}/users`: create (one or many), list with a cursor, get, update, delete;
//! revoke a user's tokens, disconnect a user's devices.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{Caller, Owner};
use crate::error::{parse_json, JsonBody, Query};
use crate::{ApiError, AppState};
use store::files::Chatfile;
use store::tenants::App;
use store::users::{NewUser, User, UserUpdate};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    username: String,
    password: String,
    #[serde(default)]
    nickname: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<NewUserBody>),
    One(NewUserBody),
}

/// The most users one request may create.
const MAX_BATCH: usize = 60;

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_app()?;
    let value: Value = parse_json(&body)?;
    let parsed: OneOrMany = serde_json::from_value(value.clone()).map_err(|_| explain_user_body(&value))?;
    let bodies = match parsed {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    };
    if bodies.is_empty() || bodies.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!("send 1 to {MAX_BATCH} users")));
    }
    let users = bodies
        .into_iter()
        .map(|b| {
            Ok(NewUser {
                username: store::names::username(&b.username)?,
                password: b.password,
                nickname: b.nickname,
            })
        })
        .collect::<Result<Vec<_>, store::Error>>()?;
    // Hashing the passwords takes turns with every other argon2 use in the process; a
    // request that cannot get its turns in time is refused rather than queued forever.
    let wait = state.settings.hash_timeout.saturating_mul(users.len() as u32);
    let created = tokio::time::timeout(wait, state.store.create_users(&caller.app.id, &users))
        .await
        .map_err(|_| ApiError::Unavailable("too many password hashes in progress; retry shortly".into()))??;
    Ok((
        StatusCode::CREATED,
        Json(json!({"action": "post", "entities": created, "count": created.len()})),
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
            } else if !obj.get("password").is_some_and(Value::is_string) {
                "'password' is required and must be a string".into()
            } else {
                "'nickname' must be a string".into()
            }
        }
    };
    ApiError::BadRequest(problem)
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

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
        .list_users(&caller.app.id, limit, q.cursor.as_deref())
        .await?;
    let cursor = (users.len() as i64 == limit)
        .then(|| users.last().map(|u| u.username.clone()))
        .flatten();
    let entities: Vec<Value> = users.iter().map(|u| user_entity(&state, &caller.app, u)).collect();
    Ok(Json(
        json!({"action": "get", "entities": entities, "count": users.len(), "cursor": cursor}),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    let user = state.store.get_user(&caller.app.id, &username).await?;
    Ok(Json(
        json!({"action": "get", "entities": [user_entity(&state, &caller.app, &user)], "count": 1}),
    ))
}

/// A user as answered: with their avatar's URL and its thumbnail's, if they have one.
fn user_entity(state: &AppState, app: &App, user: &User) -> Value {
    let mut entity = serde_json::to_value(user).unwrap_or_default();
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    nickname: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    /// The URL of an uploaded image, or `""` to remove the avatar.
    #[serde(default)]
    avatar: Option<String>,
}

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

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, username)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let username = username.to_ascii_lowercase();
    state.store.delete_user(&caller.app.id, &username).await?;
    state.live.disconnect_user(&caller.app.org, &caller.app.name, &username);
    Ok(Json(
        json!({"action": "delete", "entities": [{"username": username}], "count": 1}),
    ))
}

/// `POST /{org}/{app}/users/{username}/revoke_tokens` (app token): every token issued to
/// the user so far stops working, on REST and MQTT, and their connected devices are
/// disconnected (they must log in again).
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
/// connections to this process; their tokens stay valid, so devices may reconnect.
pub async fn disconnect(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    if !state.store.user_exists(&caller.app.id, &username).await? {
        return Err(ApiError::NotFound(format!("user {username} not found")));
    }
    state.live.disconnect_user(&caller.app.org, &caller.app.name, &username);
    Ok(Json(
        json!({"action": "get", "data": {"username": username, "result": true}}),
    ))
}
