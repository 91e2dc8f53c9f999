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
use store::users::{NewUser, UserUpdate};

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
    Ok(Json(
        json!({"action": "get", "entities": users, "count": users.len(), "cursor": cursor}),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    let user = state.store.get_user(&caller.app.id, &username).await?;
    Ok(Json(json!({"action": "get", "entities": [user], "count": 1})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    nickname: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

pub async fn update(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body: UpdateBody = parse_json(&body)?;
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
    Ok(Json(json!({"action": "put", "entities": [user], "count": 1})))
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
