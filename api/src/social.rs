//! Contacts, blocklists, user metadata (profiles) and the app's settings.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Owner};
use crate::error::{parse_json, FormOrJson, JsonBody};
use crate::users::user_entity;
use crate::{ApiError, AppState};
use store::users::UserUpdate;

type UserPath = Path<(String, String, String)>;
type PairPath = Path<(String, String, String, String)>;

/// `GET /{org}/{app}/users/{username}/contacts/users`: the user's contacts, by name.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/contacts/users", tag = "contacts",
    responses((status = 200, description = "`data`: the names of the user's contacts, in order", body = schema::ContactNames)))]
pub async fn contacts(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
) -> Result<Json<Value>, ApiError> {
    let friends = state.store.contacts(&caller.app.id, &owner).await?;
    Ok(Json(json!({"data": friends, "count": friends.len()})))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContactsPageQuery {
    /// Contacts per page: 1 to 50 (default 10).
    #[param(minimum = 1, maximum = 50)]
    limit: Option<i64>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
    /// Accepted and ignored: chatd keeps no remarks (each is `null`).
    #[serde(default, rename = "needReturnRemark")]
    _need_return_remark: Option<bool>,
}

/// `GET /{org}/{app}/user/{username}/contacts?limit=&cursor=`: the contact list in pages
/// (`{"data": {"contacts": [{"remark", "username"}], "cursor"}}`). chatd keeps no remarks:
/// each is `null`.
#[utoipa::path(get, path = "/{org}/{app}/user/{username}/contacts", tag = "contacts", params(ContactsPageQuery),
    responses((status = 200, description = "A page of contacts; `data.cursor` while more follow", body = schema::ContactsPage)))]
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

/// `POST /{org}/{app}/users/{username}/contacts/users/{friend}`: both become each other's
/// contact.
#[utoipa::path(post, path = "/{org}/{app}/users/{username}/contacts/users/{friend}", tag = "contacts",
    responses((status = 200, description = "Added; `entities`: the contact", body = schema::ContactUsers)))]
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

/// `DELETE /{org}/{app}/users/{username}/contacts/users/{friend}`: neither is the other's
/// contact any more.
#[utoipa::path(delete, path = "/{org}/{app}/users/{username}/contacts/users/{friend}", tag = "contacts",
    responses((status = 200, description = "Removed; `entities`: the former contact", body = schema::ContactUsers)))]
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    /// The users to block (1 to 100; not the user themselves).
    usernames: Vec<String>,
}

/// `POST /{org}/{app}/users/{username}/blocks/users`: adds users to the blocklist.
#[utoipa::path(post, path = "/{org}/{app}/users/{username}/blocks/users", tag = "contacts", request_body = BlockBody,
    responses((status = 200, description = "`data`: the names blocked by this request", body = schema::BlockedNames)))]
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

/// `GET /{org}/{app}/users/{username}/blocks/users`: the user's blocklist.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/blocks/users", tag = "contacts",
    responses((status = 200, description = "`data`: the names the user has blocked, in order", body = schema::BlockedNames)))]
pub async fn blocklist(
    State(state): State<AppState>,
    Owner { caller, user: owner }: Owner,
) -> Result<Json<Value>, ApiError> {
    let blocked = state.store.blocklist(&caller.app.id, &owner).await?;
    Ok(Json(json!({"data": blocked, "count": blocked.len()})))
}

/// `DELETE /{org}/{app}/users/{username}/blocks/users/{blocked}`: takes a user off the
/// blocklist.
#[utoipa::path(delete, path = "/{org}/{app}/users/{username}/blocks/users/{blocked}", tag = "contacts",
    responses((status = 200, description = "Unblocked; `entities`: that user", body = schema::ContactUsers)))]
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
#[utoipa::path(get, path = "/{org}/{app}/metadata/user/{username}", tag = "metadata",
    responses((status = 200, description = "`data`: the user's attributes", body = schema::UserMetadata)))]
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
#[utoipa::path(put, path = "/{org}/{app}/metadata/user/{username}", tag = "metadata",
    request_body(description = "At least one attribute: a string each (`avatarurl` an http(s) URL); in JSON, `null` \
        removes the attribute",
        content((schema::MetadataForm = "application/x-www-form-urlencoded"), (schema::MetadataChanges = "application/json"))),
    responses((status = 200, description = "`data`: the attributes as sent (`null`: removed)", body = schema::MetadataChanged)))]
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
#[utoipa::path(delete, path = "/{org}/{app}/metadata/user/{username}", tag = "metadata",
    responses((status = 200, description = "`data`: true; the user has no attributes left", body = schema::MetadataDeleted)))]
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MetadataBatchQuery)]
struct MetadataQuery {
    /// The users: 1 to 100 names.
    targets: Vec<String>,
    /// The attributes to answer; none (or empty): all of them.
    #[serde(default)]
    properties: Vec<String>,
}

/// `POST /{org}/{app}/metadata/user/get`: the attributes of up to 100 users
/// (`{"targets": [...], "properties": [...]}`; no properties: all of them). Users that do
/// not exist are left out.
#[utoipa::path(post, path = "/{org}/{app}/metadata/user/get", tag = "metadata", request_body = MetadataQuery,
    responses((status = 200, description = "`data`: each user that exists, as named in `targets` → their attributes",
        body = schema::MetadataOfUsers)))]
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
#[utoipa::path(get, path = "/{org}/{app}/metadata/user/capacity", tag = "metadata",
    responses((status = 200, description = "`data`: bytes of attributes stored for the app's users", body = schema::MetadataCapacity)))]
pub async fn metadata_capacity(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let bytes = state.store.metadata_bytes(&caller.app.id).await?;
    Ok(Json(json!({"data": bytes})))
}

/// `GET /{org}/{app}/settings` (app token): the app's rules.
#[utoipa::path(get, path = "/{org}/{app}/settings", tag = "settings",
    responses((status = 200, description = "`data`: the app's settings (the moderation secret masked)", body = schema::AppSettingsAnswer)))]
pub async fn get_settings(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    Ok(Json(
        json!({"data": shown(state.store.app_settings(&caller.app.id).await?)}),
    ))
}

/// What the moderation secret is shown as when set.
const MASKED_SECRET: &str = "********";

/// Settings as answered: the moderation secret is never shown back (`"********"` when set).
fn shown(settings: store::tenants::AppSettings) -> Value {
    let mut value = serde_json::to_value(&settings).unwrap_or_default();
    if !settings.moderation_secret.is_empty() {
        value["moderation_secret"] = json!(MASKED_SECRET);
    }
    value
}

/// `PUT /{org}/{app}/settings` (app token): the fields sent replace the stored ones, the
/// others stay; the settings are checked as a whole. A `moderation_secret` of `"********"`
/// (as answered) leaves the secret unchanged.
#[utoipa::path(put, path = "/{org}/{app}/settings", tag = "settings", request_body = schema::AppSettingsPatch,
    responses((status = 200, description = "`data`: the app's settings as changed (the moderation secret masked)",
        body = schema::AppSettingsAnswer)))]
pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let mut patch: Value = parse_json(&body)?;
    // Settings read, changed and sent back carry the mask: it leaves the secret as it is.
    if let Some(fields) = patch.as_object_mut() {
        if fields.get("moderation_secret").and_then(Value::as_str) == Some(MASKED_SECRET) {
            fields.remove("moderation_secret");
        }
    }
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

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(contacts_page))
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(contacts))
        .routes(routes!(add_contact, remove_contact))
        .routes(routes!(blocklist, block))
        .routes(routes!(unblock))
        .routes(routes!(get_metadata, put_metadata, delete_metadata))
        .routes(routes!(get_many_metadata))
        .routes(routes!(metadata_capacity))
}

/// The answers' shapes (and the bodies parsed by hand), for the OpenAPI document
/// (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use std::collections::HashMap;

    use utoipa::ToSchema;

    use crate::users::schema::UserEntity;

    /// A contact in a page: chatd keeps no remarks, so `remark` is always `null`.
    #[derive(ToSchema)]
    pub struct ContactEntry {
        remark: Option<String>,
        username: String,
    }

    #[derive(ToSchema)]
    pub struct ContactsPageData {
        contacts: Vec<ContactEntry>,
        /// Where the next page starts; absent on the last page.
        cursor: Option<String>,
    }

    /// A page of the user's contacts; `count`: contacts on this page.
    #[derive(ToSchema)]
    pub struct ContactsPage {
        data: ContactsPageData,
        count: u64,
    }

    /// `data`: the names of the user's contacts.
    #[derive(ToSchema)]
    pub struct ContactNames {
        data: Vec<String>,
        count: u64,
    }

    /// `data`: names on (or just added to) the user's blocklist.
    #[derive(ToSchema)]
    pub struct BlockedNames {
        data: Vec<String>,
        count: u64,
    }

    /// `entities`: the other user.
    #[derive(ToSchema)]
    pub struct ContactUsers {
        entities: Vec<UserEntity>,
    }

    /// `data`: the user's attributes, each a string.
    #[derive(ToSchema)]
    pub struct UserMetadata {
        data: HashMap<String, String>,
    }

    /// Attributes to set, each a string (`avatarurl` an http(s) URL).
    #[derive(ToSchema)]
    pub struct MetadataForm(HashMap<String, String>);

    /// Attributes to set, each a string (`avatarurl` an http(s) URL); `null` removes one.
    #[derive(ToSchema)]
    pub struct MetadataChanges(HashMap<String, Option<String>>);

    /// `data`: the attributes as sent (`null`: removed).
    #[derive(ToSchema)]
    pub struct MetadataChanged {
        data: HashMap<String, Option<String>>,
    }

    /// `data`: always true.
    #[derive(ToSchema)]
    pub struct MetadataDeleted {
        data: bool,
    }

    /// `data`: each user that exists, by the name as asked → the attributes asked for.
    #[derive(ToSchema)]
    pub struct MetadataOfUsers {
        data: HashMap<String, HashMap<String, String>>,
    }

    /// `data`: bytes of attributes stored for the app's users.
    #[derive(ToSchema)]
    pub struct MetadataCapacity {
        data: i64,
    }

    /// What to do with a forbidden word in a text message.
    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    #[schema(as = SettingsForbiddenAction)]
    pub enum ForbiddenAction {
        /// Refuse the message.
        Reject,
        /// Replace the word with `*`.
        Mask,
    }

    /// An app's rules (`store::tenants::AppSettings`).
    #[derive(ToSchema)]
    pub struct AppSettings {
        /// One-to-one messages only between contacts.
        require_contacts: bool,
        /// The largest message body (its JSON), in bytes.
        max_message_bytes: u64,
        /// Words refused (or masked) in text messages, matched case-insensitively.
        forbidden_words: Vec<String>,
        forbidden_action: ForbiddenAction,
        /// Messages a user may send per second, sustained.
        send_rate_per_sec: f64,
        /// … and in a burst.
        send_burst: f64,
        /// How many recent messages a chatroom keeps for members who join later.
        room_history: i64,
        /// The most members a group may have.
        max_group_members: i64,
        /// The most members a chatroom may have.
        max_room_members: i64,
        /// How long after sending a user may recall a message, in seconds.
        recall_limit_secs: i64,
        /// Whether group messages get read receipts.
        group_read_receipts: bool,
        /// The largest `customExts` of a `custom` message, in bytes.
        max_custom_bytes: u64,
        /// The largest file a user may upload, in bytes.
        max_file_bytes: i64,
        /// The bytes of files one user may hold.
        file_quota_bytes: i64,
        /// Content types users may upload (`image/png`, `image/*`); empty allows any.
        allowed_file_types: Vec<String>,
        /// Whether file message bodies may point at URLs outside chatd.
        allow_external_urls: bool,
        /// Whether anyone may register a user (`POST /users` without a token).
        open_registration: bool,
        /// Pre-send moderation endpoint; empty: off.
        moderation_url: String,
        /// `********` when set, `""` when not: never shown back.
        moderation_secret: String,
        /// How long the moderation endpoint may take to answer.
        moderation_timeout_ms: i64,
        /// When it does not answer in time: true stores the messages as they are.
        moderation_fail_open: bool,
    }

    /// `data`: the app's settings.
    #[derive(ToSchema)]
    pub struct AppSettingsAnswer {
        data: AppSettings,
    }

    /// Any of the app's settings: those sent replace the stored ones, the others stay (none
    /// may be `null`). Checked as a whole: `max_message_bytes`, `send_rate_per_sec`,
    /// `max_custom_bytes`, `max_file_bytes` and `file_quota_bytes` positive, `send_burst` at
    /// least 1, the member limits at least 2, `moderation_timeout_ms` 50 to 5000, a
    /// `moderation_url` (http(s), allowed by the server) needs a `moderation_secret` of 16
    /// characters or more.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AppSettingsPatch {
        #[serde(default)]
        require_contacts: bool,
        #[serde(default)]
        max_message_bytes: u64,
        #[serde(default)]
        forbidden_words: Vec<String>,
        #[serde(default)]
        forbidden_action: ForbiddenAction,
        #[serde(default)]
        send_rate_per_sec: f64,
        #[serde(default)]
        send_burst: f64,
        #[serde(default)]
        room_history: i64,
        #[serde(default)]
        max_group_members: i64,
        #[serde(default)]
        max_room_members: i64,
        #[serde(default)]
        recall_limit_secs: i64,
        #[serde(default)]
        group_read_receipts: bool,
        #[serde(default)]
        max_custom_bytes: u64,
        #[serde(default)]
        max_file_bytes: i64,
        #[serde(default)]
        file_quota_bytes: i64,
        #[serde(default)]
        allowed_file_types: Vec<String>,
        #[serde(default)]
        allow_external_urls: bool,
        #[serde(default)]
        open_registration: bool,
        #[serde(default)]
        moderation_url: String,
        #[serde(default)]
        moderation_secret: String,
        #[serde(default)]
        moderation_timeout_ms: i64,
        #[serde(default)]
        moderation_fail_open: bool,
    }
}
