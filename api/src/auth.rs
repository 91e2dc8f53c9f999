//! Who is calling: the bearer token, checked against the org and app in the path. An app
//! token must carry the app's current secret version; a user token the user's current
//! token generation (so it dies with its user, and with a revocation).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use std::collections::HashMap;

use crate::{ApiError, AppState};
use store::tenants::App;
use store::tokens::Role;

/// A verified caller of `/{org}/{app}/…`, with the app it is allowed to act in.
#[derive(Clone)]
pub struct Caller {
    pub app: App,
    pub role: Role,
    /// The username, for user tokens.
    pub user: Option<String>,
}

impl Caller {
    /// App tokens may manage any user; a user token only itself.
    pub fn may_act_as(&self, username: &str) -> Result<(), ApiError> {
        match (self.role, &self.user) {
            (Role::App, _) => Ok(()),
            (Role::User, Some(me)) if me == username => Ok(()),
            _ => Err(ApiError::Forbidden("a user token may only act on its own user".into())),
        }
    }

    pub fn require_app(&self) -> Result<(), ApiError> {
        match self.role {
            Role::App => Ok(()),
            Role::User => Err(ApiError::Forbidden("this needs an app token".into())),
        }
    }
}

#[axum::async_trait]
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let (org, app) = match (params.get("org"), params.get("app")) {
            (Some(org), Some(app)) => (org.as_str(), app.as_str()),
            _ => return Err(ApiError::NotFound("no such route".into())),
        };
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("missing 'Authorization: Bearer <token>' header".into()))?;
        let claims = state.tokens.verify(token.trim())?;
        if claims.org != org || claims.app != app {
            return Err(ApiError::Unauthorized("token belongs to another app".into()));
        }
        let app = state.store.find_app(org, app).await?;
        if let Some(slot) = parts.extensions.get::<crate::envelope::AppSlot>() {
            slot.set(&app.id);
        }
        let user = match claims.role {
            Role::App if claims.ver != app.secret_version => {
                return Err(ApiError::Unauthorized(
                    "token revoked: the app's secret was rotated".into(),
                ))
            }
            Role::App => None,
            Role::User => match state.store.user_token_generation(&app.id, &claims.sub).await? {
                Some(generation) if generation == claims.ver => Some(claims.sub),
                Some(_) => return Err(ApiError::Unauthorized("token revoked".into())),
                None => return Err(ApiError::Unauthorized("the token's user no longer exists".into())),
            },
        };
        Ok(Caller {
            app,
            role: claims.role,
            user,
        })
    }
}

/// A caller acting on `/{org}/{app}/users/{username}/…`: an app token, or that user's own
/// token. `user` is the username, lower-cased.
pub struct Owner {
    pub caller: Caller,
    pub user: String,
}

#[axum::async_trait]
impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let user = params
            .get("username")
            .ok_or_else(|| ApiError::NotFound("no such route".into()))?
            .trim()
            .to_ascii_lowercase();
        caller.may_act_as(&user)?;
        Ok(Owner { caller, user })
    }
}
