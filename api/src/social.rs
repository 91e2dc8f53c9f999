//! Contacts, blocklists, user metadata (profiles) and the app's settings.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{Caller, Owner};
use crate::error::{parse_json, FormOrJson, JsonBody};
use crate::users::user_entity;
use crate::{ApiError, AppState};
use store::users::UserUpdate;

type UserPath = Path<(String, String, String)>;
type PairPath = Path<(String, String, String, String)>;

pub async fn contacts(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
) -> Result<Json<Value>, ApiError> {
    let friends = state.store.contacts(&caller.app.id, &owner).await?;
    Ok(Json(json!({"data": friends, "count": friends.len()})))
}

#[derive(Deserialize)]
pub struct ContactsPageQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    #[serde(default, rename = "needReturnRemark")]
    _need_return_remark: Option<bool>,
}

/// `GET /{org}/{app}/user/{username}/contacts?limit=&cursor=`: the contact list in pages
/// (`{"data": {"contacts": [{"remark", "username"}], "cursor"}}`). chatd keeps no remarks:
/// each is `null`.
pub async fn contacts_page(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
    crate::error::Query(q): crate::error::Query<ContactsPageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(10);
    if !(1..=50).contains(&limit) {
        return Err(ApiError::BadRequest("query.limit must be from 1 to 50".into()));
    }
    let friends = state.store.contacts(&caller.app.id, &owner).await?;
    let after = q.cursor.unwrap_or_default();
    let rest: Vec<&String> = friends
        .iter()
        .filter(|f| after.is_empty() || f.as_str() > after.as_str())
        .collect();
    let page: Vec<&String> = rest.iter().take(limit as usize).copied().collect();
    let mut data = json!({
        "contacts": page.iter().map(|f| json!({"remark": null, "username": f})).collect::<Vec<_>>(),
    });
    if rest.len() > page.len() {
        data["cursor"] = json!(page.last());
    }
    Ok(Json(json!({"data": data, "count": page.len()})))
}

pub async fn add_contact(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
    Path((_, _, _, friend)): PairPath,
) -> Result<Json<Value>, ApiError> {
    let friend = friend.to_ascii_lowercase();
    state.store.add_contact(&caller.app.id, &owner, &friend).await?;
    let user = state.store.get_user(&caller.app.id, &friend).await?;
    Ok(Json(
        json!({"action": "post", "entities": [user_entity(&state, &caller.app, &user)]}),
    ))
}

pub async fn remove_contact(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
    Path((_, _, _, friend)): PairPath,
) -> Result<Json<Value>, ApiError> {
    let friend = friend.to_ascii_lowercase();
    state.store.remove_contact(&caller.app.id, &owner, &friend).await?;
    let user = state.store.get_user(&caller.app.id, &friend).await?;
    Ok(Json(
        json!({"action": "delete", "entities": [user_entity(&state, &caller.app, &user)]}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    usernames: Vec<String>,
}

pub async fn block(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body: BlockBody = parse_json(&body)?;
    let users = body
        .usernames
        .iter()
        .map(|u| u.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    state.store.block_users(&caller.app.id, &owner, &users).await?;
    for user in &users {
        state
            .live
            .hide_presence(&caller.app.org, &caller.app.name, &owner, user);
    }
    Ok(Json(json!({"action": "post", "data": users, "count": users.len()})))
}

pub async fn blocklist(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
) -> Result<Json<Value>, ApiError> {
    let blocked = state.store.blocklist(&caller.app.id, &owner).await?;
    Ok(Json(json!({"data": blocked, "count": blocked.len()})))
}

pub async fn unblock(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
    Path((_, _, _, blocked)): PairPath,
) -> Result<Json<Value>, ApiError> {
    let blocked = blocked.to_ascii_lowercase();
    state.store.unblock_user(&caller.app.id, &owner, &blocked).await?;
    let user = state.store.get_user(&caller.app.id, &blocked).await?;
    Ok(Json(
        json!({"action": "delete", "entities": [user_entity(&state, &caller.app, &user)]}),
    ))
}

/// `GET /{org}/{app}/metadata/user/{username}`: the user's attributes as one flat object of
/// strings (`{"data": {"nickname": "…", "avatarurl": "…"}}`). Any user of the app may read
/// them.
pub async fn get_metadata(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, username)): UserPath,
) -> Result<Json<Value>, ApiError> {
    let user = state
        .store
        .get_user(&caller.app.id, &username.to_ascii_lowercase())
        .await?;
    Ok(Json(json!({"data": user.metadata})))
}

/// `PUT /{org}/{app}/metadata/user/{username}`, as a form (the platform's way) or JSON:
/// sets the keys sent (a JSON `null` removes one); string values only, `avatarurl` an
/// http(s) URL, all of a user's attributes at most 4 KiB. Answers the keys set.
pub async fn put_metadata(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    FormOrJson(changes): FormOrJson,
) -> Result<Json<Value>, ApiError> {
    if changes.is_empty() {
        return Err(ApiError::BadRequest("send at least one attribute".into()));
    }
    if let Some(url) = changes.get("avatarurl").and_then(Value::as_str) {
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ApiError::BadRequest("body.avatarurl must be an http(s) URL".into()));
        }
    }
    let mut metadata = state.store.get_user(&caller.app.id, &username).await?.metadata;
    for (key, value) in &changes {
        if value.is_null() {
            metadata.remove(key);
        } else {
            metadata.insert(key.clone(), value.clone());
        }
    }
    state
        .store
        .update_user(
            &caller.app.id,
            &username,
            UserUpdate {
                nickname: None,
                metadata: Some(metadata),
            },
        )
        .await?;
    Ok(Json(json!({"data": changes})))
}

/// `DELETE /{org}/{app}/metadata/user/{username}`: removes all of the user's attributes.
pub async fn delete_metadata(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    state
        .store
        .update_user(
            &caller.app.id,
            &username,
            UserUpdate {
                nickname: None,
                metadata: Some(Map::new()),
            },
        )
        .await?;
    Ok(Json(json!({"data": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataQuery {
    targets: Vec<String>,
    #[serde(default)]
    properties: Vec<String>,
}

/// `POST /{org}/{app}/metadata/user/get`: the attributes of up to 100 users
/// (`{"targets": [...], "properties": [...]}`; no properties: all of them). Users that do
/// not exist are left out.
pub async fn get_many_metadata(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let q: MetadataQuery = parse_json(&body)?;
    if q.targets.is_empty() || q.targets.len() > 100 {
        return Err(ApiError::BadRequest("body.targets must name 1 to 100 users".into()));
    }
    let mut data = Map::new();
    for target in &q.targets {
        let name = target.trim().to_ascii_lowercase();
        let user = match state.store.get_user(&caller.app.id, &name).await {
            Ok(user) => user,
            Err(store::Error::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let attributes: Map<String, Value> = user
            .metadata
            .into_iter()
            .filter(|(k, _)| q.properties.is_empty() || q.properties.contains(k))
            .collect();
        data.insert(target.clone(), Value::Object(attributes));
    }
    Ok(Json(json!({"data": data})))
}

/// `GET /{org}/{app}/metadata/user/capacity` (app token): bytes of attributes stored for
/// the app's users.
pub async fn metadata_capacity(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let bytes = state.store.metadata_bytes(&caller.app.id).await?;
    Ok(Json(json!({"data": bytes})))
}

pub async fn get_settings(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    Ok(Json(
        json!({"data": shown(state.store.app_settings(&caller.app.id).await?)}),
    ))
}

/// Settings as answered: the moderation secret is never shown back (`"********"` when set).
fn shown(settings: store::tenants::AppSettings) -> Value {
    let mut value = serde_json::to_value(&settings).unwrap_or_default();
    if !settings.moderation_secret.is_empty() {
        value["moderation_secret"] = json!("********");
    }
    value
}

pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let patch: Value = parse_json(&body)?;
    // A moderation endpoint is a tenant's URL that chatd calls: where it may point is the
    // operator's choice (the same rules as webhooks).
    if let Some(url) = patch
        .get("moderation_url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    {
        hooks::guard::check_url(url, state.settings.webhook_allow)
            .map_err(|why| ApiError::BadRequest(format!("moderation_{why}")))?;
    }
    Ok(Json(
        json!({"data": shown(state.store.update_app_settings(&caller.app.id, &patch).await?)}),
    ))
}
