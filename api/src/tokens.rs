//! `POST /{org}/{app}/token`: client credentials give an app token; a username and
//! password give a user token; an app token and a username give that user a token
//! (`inherit`, for backends that authenticate their users themselves).
//!
//! Guessing is throttled per user, per client id and per caller address
//! ([`crate::throttle`]); the argon2 check, its turn included, may take at most `hash_timeout` (else
//! 503). A user token carries the user's token generation, which the API and the gate
//! compare with the stored one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;

use axum::extract::{ConnectInfo, Path, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::envelope::AppSlot;
use crate::error::{parse_json, JsonBody};
use crate::throttle::{Key, Throttle};
use crate::{ApiError, AppState};
use store::tenants::App;
use store::tokens::Role;

/// The grant: client credentials (an app token), a password (a user token), or `inherit`
/// (a user token on the app's authority). `ttl` is in seconds (a number or a string of
/// digits); 0 is a token that does not expire.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "grant_type", rename_all = "snake_case")]
enum Grant {
    ClientCredentials {
        client_id: String,
        client_secret: String,
        #[serde(default, deserialize_with = "seconds")]
        ttl: Option<i64>,
    },
    Password {
        username: String,
        password: String,
        #[serde(default, deserialize_with = "seconds")]
        ttl: Option<i64>,
    },
    /// A user token issued on the app's authority (its backend already authenticated the
    /// user): needs `Authorization: Bearer <app token>`, no password.
    Inherit {
        username: String,
        #[serde(default, deserialize_with = "seconds")]
        ttl: Option<i64>,
        /// Creates the user (without a password) if there is none by that name.
        #[serde(default, rename = "autoCreateUser")]
        auto_create_user: bool,
    },
}

async fn user_token(
    state: &AppState,
    org: &str,
    app: &App,
    username: &str,
    ttl: Option<i64>,
) -> Result<Json<Value>, ApiError> {
    let user = state.store.get_user(&app.id, username).await?;
    if !user.activated {
        return Err(ApiError::Forbidden(format!("user {username} is deactivated")));
    }
    let generation = state
        .store
        .user_token_generation(&app.id, username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {username} not found")))?;
    let ttl = lifetime(ttl, state.settings.user_token_ttl, state.settings.max_token_ttl)?;
    let token = state
        .tokens
        .issue(username, org, &app.name, Role::User, generation, ttl)?;
    Ok(Json(json!({"access_token": token, "expires_in": ttl, "user": user})))
}

/// The longest lifetime a token is given: what `"ttl": 0` (no expiry) means.
const FOREVER_SECS: i64 = 100 * 365 * 24 * 3600;

/// A requested lifetime, as the platform reads `ttl`: absent means the configured default,
/// 0 means no expiry, a positive number that many seconds; all of it at most the
/// deployment's `max` (if it sets one).
fn lifetime(requested: Option<i64>, default: Duration, max: Option<Duration>) -> Result<i64, ApiError> {
    let max = max.map_or(FOREVER_SECS, |m| (m.as_secs() as i64).clamp(1, FOREVER_SECS));
    match requested {
        None => Ok((default.as_secs() as i64).min(max)),
        Some(0) => Ok(max),
        Some(ttl) if ttl > 0 => Ok(ttl.min(max)),
        Some(_) => Err(ApiError::BadRequest(
            "body.ttl must be a number of seconds, 0 for a token that does not expire".into(),
        )),
    }
}

/// `ttl` as a number or, as the platform also accepts, a string of digits (`"3600"`).
fn seconds<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<i64>, D::Error> {
    let whole = |v: &Value| serde::de::Error::custom(format!("'ttl' must be whole seconds, not {v}"));
    match Option::<Value>::deserialize(de)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| whole(&Value::Number(n.clone()))),
        Some(Value::String(t)) => t.trim().parse().map(Some).map_err(|_| whole(&Value::String(t.clone()))),
        Some(other) => Err(whole(&other)),
    }
}

/// Runs a credential check (argon2) under the throttle: refused at once while one of `keys`
/// is blocked; counted as a failure unless it succeeds; 503 if it took longer than
/// `hash_timeout` (its turn at the argon2 semaphore included).
async fn checked(
    state: &AppState,
    throttle: &Throttle,
    keys: Vec<Key>,
    check: impl Future<Output = store::Result<()>>,
) -> Result<(), ApiError> {
    let attempt = throttle.attempt(keys)?;
    match tokio::time::timeout(state.settings.hash_timeout, check).await {
        Ok(Ok(())) => {
            throttle.succeeded(attempt);
            Ok(())
        }
        Ok(Err(e @ store::Error::BadCredentials)) => {
            throttle.failed(attempt);
            Err(e.into())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::Unavailable(
            "too many credential checks in progress; retry shortly".into(),
        )),
    }
}

/// A name as a throttle key: at most 64 bytes, the longest a real username or client id
/// is, so a megabyte of username cannot become a megabyte of table.
fn bounded(name: &str) -> String {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

#[utoipa::path(post, path = "/{org}/{app}/token", tag = "tokens", security((), ("bearer" = [])),
    request_body = Grant,
    responses((status = 200, description = "A token. Answered bare, without the envelope, as on the platform", body = schema::Token)))]
pub async fn issue(
    State(state): State<AppState>,
    Extension(throttle): Extension<Arc<Throttle>>,
    peer: Option<ConnectInfo<SocketAddr>>,
    Path((org, app)): Path<(String, String)>,
    caller: Option<Caller>,
    slot: Option<Extension<AppSlot>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let slot = slot.map(|Extension(slot)| slot);
    let grant: Grant = parse_json(&body)?;
    let app = state.store.find_app(&org, &app).await?;
    if let Some(slot) = &slot {
        slot.set(&app.id);
    }
    let address = peer.map(|ConnectInfo(addr)| Key::Address(addr.ip()));
    match grant {
        Grant::ClientCredentials {
            client_id,
            client_secret,
            ttl,
        } => {
            let keys = [Some(Key::Client(app.id.clone(), bounded(&client_id))), address]
                .into_iter()
                .flatten()
                .collect();
            let check = state.store.check_client_secret(&app, &client_id, &client_secret);
            checked(&state, &throttle, keys, check).await?;
            let ttl = lifetime(ttl, state.settings.app_token_ttl, state.settings.max_token_ttl)?;
            let token = state
                .tokens
                .issue(&client_id, &org, &app.name, Role::App, app.secret_version, ttl)?;
            Ok(Json(
                json!({"access_token": token, "expires_in": ttl, "application": app.id}),
            ))
        }
        Grant::Password {
            username,
            password,
            ttl,
        } => {
            let username = username.trim().to_ascii_lowercase();
            let keys = [Some(Key::User(app.id.clone(), bounded(&username))), address]
                .into_iter()
                .flatten()
                .collect();
            let check = state.store.check_password(&app.id, &username, &password);
            checked(&state, &throttle, keys, check).await?;
            user_token(&state, &org, &app, &username, ttl).await
        }
        Grant::Inherit {
            username,
            ttl,
            auto_create_user,
        } => {
            match caller {
                Some(caller) if caller.role == Role::App => {}
                _ => {
                    return Err(ApiError::Unauthorized(
                        "'inherit' needs a valid app token in Authorization".into(),
                    ))
                }
            }
            let username = username.trim().to_ascii_lowercase();
            if auto_create_user && !state.store.user_exists(&app.id, &username).await? {
                let user = store::users::NewUser {
                    username: store::names::username(&username)?,
                    password: String::new(),
                    nickname: None,
                };
                match state.store.create_users(&app.id, &[user]).await {
                    Ok(_) | Err(store::Error::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            user_token(&state, &org, &app, &username, ttl).await
        }
    }
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(issue))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    /// A token and its lifetime: `application` (the app's id) for an app token, `user` for
    /// a user token.
    #[derive(ToSchema)]
    pub struct Token {
        access_token: String,
        /// Seconds.
        expires_in: i64,
        application: Option<String>,
        user: Option<crate::users::schema::UserEntity>,
    }
}
