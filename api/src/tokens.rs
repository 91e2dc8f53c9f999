//! `POST /{org}/{app}/token`: client credentials give an app token; a username and
//! password give a user token; an app token and a username give that user a token
//! (`inherit`, for backends that authenticate their users themselves).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use store::tenants::App;
use store::tokens::Role;

#[derive(Deserialize)]
#[serde(tag = "grant_type", rename_all = "snake_case")]
enum Grant {
    ClientCredentials {
        client_id: String,
        client_secret: String,
        #[serde(default)]
        ttl: Option<i64>,
    },
    Password {
        username: String,
        password: String,
        #[serde(default)]
        ttl: Option<i64>,
    },
    /// A user token issued on the app's authority (its backend already authenticated the
    /// user): needs `Authorization: Bearer <app token>`, no password.
    Inherit {
        username: String,
        #[serde(default)]
        ttl: Option<i64>,
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
    let ttl = lifetime(ttl, state.settings.user_token_ttl)?;
    let token = state.tokens.issue(username, org, &app.name, Role::User, 0, ttl)?;
    Ok(Json(json!({"access_token": token, "expires_in": ttl, "user": user})))
}

/// A requested lifetime, capped by the configured one; 0 or absent means the configured one.
fn lifetime(requested: Option<i64>, max: std::time::Duration) -> Result<i64, ApiError> {
    let max = max.as_secs() as i64;
    match requested {
        None | Some(0) => Ok(max),
        Some(ttl) if ttl > 0 => Ok(ttl.min(max)),
        Some(_) => Err(ApiError::BadRequest(
            "'ttl' must be a positive number of seconds".into(),
        )),
    }
}

pub async fn issue(
    State(state): State<AppState>,
    Path((org, app)): Path<(String, String)>,
    caller: Option<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let grant: Grant = parse_json(&body)?;
    let app = state.store.find_app(&org, &app).await?;
    match grant {
        Grant::ClientCredentials {
            client_id,
            client_secret,
            ttl,
        } => {
            state
                .store
                .check_client_secret(&app, &client_id, &client_secret)
                .await?;
            let ttl = lifetime(ttl, state.settings.app_token_ttl)?;
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
            state.store.check_password(&app.id, &username, &password).await?;
            user_token(&state, &org, &app, &username, ttl).await
        }
        Grant::Inherit { username, ttl } => {
            match caller {
                Some(caller) if caller.role == Role::App => {}
                _ => {
                    return Err(ApiError::Unauthorized(
                        "'inherit' needs a valid app token in Authorization".into(),
                    ))
                }
            }
            user_token(&state, &org, &app, &username.trim().to_ascii_lowercase(), ttl).await
        }
    }
}
