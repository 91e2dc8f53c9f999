//! Key-value data on channels: a group's attributes per member, a chatroom's own
//! attributes (each owned by the member who set it). See `store::attributes`.

use axum::body::Bytes;

use super::*;

/// A member's attributes to set: string values; `""` removes the key.
#[derive(Deserialize, ToSchema)]
#[schema(as = GroupMemberAttributesBody)]
#[serde(deny_unknown_fields)]
pub(super) struct AttributesBody {
    #[serde(rename = "metaData")]
    #[schema(value_type = std::collections::HashMap<String, String>)]
    meta_data: serde_json::Map<String, Value>,
}

/// `PUT /{org}/{app}/metadata/chatgroup/{id}/user/{username}` `{"metaData": {...}}`: a
/// member's attributes in the group (their own, or any member's for the owner, admins and
/// the app); an empty value removes a key. Answers the member's attributes.
#[utoipa::path(put, path = "/{org}/{app}/metadata/chatgroup/{id}/user/{username}", tag = "groups",
    request_body = AttributesBody,
    responses((status = 200, description = "The member's attributes now", body = schema::GroupMemberAttributes)))]
pub(super) async fn set_member_attributes(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    if !acting.is_self(&username) {
        acting.require(Standing::Admin, "set another member's attributes")?;
    }
    let body: AttributesBody = parse_json(&body)?;
    let attributes = state
        .store
        .set_member_attributes(&acting.caller.app.id, &acting.channel.id, &username, &body.meta_data)
        .await?;
    Ok(Json(json!({"data": attributes})))
}

/// `GET /{org}/{app}/metadata/chatgroup/{id}/user/{username}` (members and the app).
#[utoipa::path(get, path = "/{org}/{app}/metadata/chatgroup/{id}/user/{username}", tag = "groups",
    responses((status = 200, description = "The member's attributes", body = schema::GroupMemberAttributes)))]
pub(super) async fn member_attributes(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Member, "read members' attributes")?;
    let attributes = state
        .store
        .member_attributes(&acting.caller.app.id, &acting.channel.id, &username)
        .await?;
    Ok(Json(json!({"data": attributes})))
}

/// Whose attributes, and which keys.
#[derive(Deserialize, ToSchema)]
#[schema(as = GroupMemberAttributesQuery)]
#[serde(deny_unknown_fields)]
pub(super) struct AttributesQuery {
    /// 1 to 100 members.
    targets: Vec<String>,
    /// The keys wanted; none: all.
    #[serde(default)]
    properties: Vec<String>,
}

/// `POST /{org}/{app}/metadata/chatgroup/{id}/get` `{"targets": [...], "properties":
/// [...]}`: several members' attributes (up to 100; no properties: all); names that are not
/// members are left out.
#[utoipa::path(post, path = "/{org}/{app}/metadata/chatgroup/{id}/get", tag = "groups",
    request_body = AttributesQuery,
    responses((status = 200, description = "`data`: each member's name as asked → their attributes",
        body = schema::GroupMembersAttributes)))]
pub(super) async fn many_member_attributes(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Member, "read members' attributes")?;
    let q: AttributesQuery = parse_json(&body)?;
    let users = usernames(&q.targets)?;
    let mut data = serde_json::Map::new();
    for (asked, user) in q.targets.iter().zip(&users) {
        match state
            .store
            .member_attributes(&acting.caller.app.id, &acting.channel.id, user)
            .await
        {
            Ok(attributes) => {
                let chosen: serde_json::Map<String, Value> = attributes
                    .into_iter()
                    .filter(|(k, _)| q.properties.is_empty() || q.properties.contains(k))
                    .collect();
                data.insert(asked.clone(), Value::Object(chosen));
            }
            Err(store::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(json!({"data": data})))
}

/// Chatroom attributes to set: 1 to 10 keys, string values.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RoomAttributesBody {
    #[serde(rename = "metaData")]
    #[schema(value_type = std::collections::HashMap<String, String>)]
    meta_data: serde_json::Map<String, Value>,
    /// `DELETE` (the default): the attributes go when their owner leaves; `NO_DELETE`: they
    /// stay.
    #[serde(default, rename = "autoDelete")]
    auto_delete: Option<String>,
}

/// Chatroom attribute keys.
#[derive(Deserialize, ToSchema)]
#[schema(as = RoomAttributeKeysBody)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysBody {
    #[serde(default)]
    keys: Vec<String>,
}

/// The attributes' owner for a `…/user/{username}` route: a member of the room (else 401,
/// as the platform answers), acting through the app or their own token; the `forced`
/// routes need the app. A forced removal may act for someone no longer a member (clearing
/// what they left behind).
async fn attribute_owner(
    state: &AppState,
    acting: &Acting,
    username: &str,
    forced: bool,
    removal: bool,
) -> Result<(), ApiError> {
    if forced || !acting.is_self(username) {
        acting.caller.require_app()?;
    }
    if forced && removal {
        return Ok(());
    }
    let member = state
        .store
        .member(&acting.caller.app.id, &acting.channel.id, username)
        .await?
        .is_some();
    if !member {
        return Err(ApiError::Unauthorized(format!("user is not in chatroom: {username}")));
    }
    Ok(())
}

/// Tells the chatroom's subscribers what changed.
fn announce_attributes(state: &AppState, acting: &Acting, by: &str, change: Value) {
    let app = &acting.caller.app;
    let mut event = json!({"op": "event", "channel": "room", "id": acting.channel.id, "event": "attributes", "by": by});
    if let (Some(event), Some(change)) = (event.as_object_mut(), change.as_object()) {
        event.extend(change.clone());
    }
    let payload = serde_json::to_vec(&event).unwrap_or_default();
    state
        .live
        .deliver_room(&app.org, &app.name, &acting.channel.id, payload);
}

fn keys_done(done: store::attributes::KeysDone) -> Value {
    json!({"successKeys": done.done, "errorKeys": done.refused})
}

async fn set_room(
    state: AppState,
    acting: Acting,
    username: String,
    body: Bytes,
    forced: bool,
) -> Result<Json<Value>, ApiError> {
    attribute_owner(&state, &acting, &username, forced, false).await?;
    let body: RoomAttributesBody = parse_json(&body)?;
    let auto_delete = match body.auto_delete.as_deref() {
        None | Some("DELETE") => true,
        Some("NO_DELETE") => false,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "body.autoDelete is DELETE or NO_DELETE, not {other:?}"
            )))
        }
    };
    let done = state
        .store
        .set_room_attributes(&acting.channel.id, &username, &body.meta_data, auto_delete, forced)
        .await?;
    if !done.done.is_empty() {
        let set: serde_json::Map<String, Value> = body
            .meta_data
            .into_iter()
            .filter(|(k, _)| done.done.contains(k))
            .collect();
        announce_attributes(&state, &acting, &username, json!({"set": set}));
    }
    Ok(Json(json!({"data": keys_done(done)})))
}

async fn remove_room(
    state: AppState,
    acting: Acting,
    username: String,
    body: Bytes,
    forced: bool,
) -> Result<Json<Value>, ApiError> {
    attribute_owner(&state, &acting, &username, forced, true).await?;
    let body: KeysBody = parse_json(&body)?;
    let done = state
        .store
        .remove_room_attributes(&acting.channel.id, &username, &body.keys, forced)
        .await?;
    if !done.done.is_empty() {
        announce_attributes(&state, &acting, &username, json!({"removed": done.done}));
    }
    Ok(Json(json!({"data": keys_done(done), "status": "ok"})))
}

/// `PUT /{org}/{app}/metadata/chatroom/{id}/user/{username}` `{"metaData": {...},
/// "autoDelete"}`: sets up to 10 attributes as that member (new keys, or theirs); each key
/// answered in `successKeys` or, with the reason, `errorKeys`. Subscribers get an
/// `attributes` event.
#[utoipa::path(put, path = "/{org}/{app}/metadata/chatroom/{id}/user/{username}", tag = "chatrooms",
    request_body = RoomAttributesBody,
    responses((status = 200, description = "`successKeys`: the keys set; `errorKeys`: the others → why",
        body = schema::RoomAttributesSet)))]
pub(super) async fn set_room_attributes(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    set_room(state, acting, username, body, false).await
}

/// `PUT …/user/{username}/forced` (app token): the same, over any member's keys.
#[utoipa::path(put, path = "/{org}/{app}/metadata/chatroom/{id}/user/{username}/forced", tag = "chatrooms",
    request_body = RoomAttributesBody,
    responses((status = 200, description = "`successKeys`: the keys set; `errorKeys`: the others → why",
        body = schema::RoomAttributesSet)))]
pub(super) async fn force_room_attributes(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    set_room(state, acting, username, body, true).await
}

/// `DELETE /{org}/{app}/metadata/chatroom/{id}/user/{username}` `{"keys": [...]}`: removes
/// up to 10 of that member's attributes.
#[utoipa::path(delete, path = "/{org}/{app}/metadata/chatroom/{id}/user/{username}", tag = "chatrooms",
    request_body = KeysBody,
    responses((status = 200, description = "`successKeys`: the keys removed; `errorKeys`: the others → why",
        body = schema::RoomAttributesRemoved)))]
pub(super) async fn remove_room_attributes(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    remove_room(state, acting, username, body, false).await
}

/// `DELETE …/user/{username}/forced` (app token): removes anyone's.
#[utoipa::path(delete, path = "/{org}/{app}/metadata/chatroom/{id}/user/{username}/forced", tag = "chatrooms",
    request_body = KeysBody,
    responses((status = 200, description = "`successKeys`: the keys removed; `errorKeys`: the others → why",
        body = schema::RoomAttributesRemoved)))]
pub(super) async fn force_remove_room_attributes(
    State(state): State<AppState>,
    acting: Acting,
    Target(username): Target,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    remove_room(state, acting, username, body, true).await
}

/// `POST /{org}/{app}/metadata/chatroom/{id}` `{"keys": [...]}` (members and the app): the
/// chatroom's attributes, those named or (no keys) all.
#[utoipa::path(post, path = "/{org}/{app}/metadata/chatroom/{id}", tag = "chatrooms",
    request_body(content = Option<KeysBody>, description = "The keys wanted; no body or no keys: all"),
    responses((status = 200, description = "`data`: key → value", body = schema::RoomAttributes)))]
pub(super) async fn room_attributes(
    State(state): State<AppState>,
    acting: Acting,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Member, "read the chatroom's attributes")?;
    let body: KeysBody = if body.is_empty() {
        KeysBody { keys: Vec::new() }
    } else {
        parse_json(&body)?
    };
    let attributes = state.store.room_attributes(&acting.channel.id, &body.keys).await?;
    Ok(Json(json!({"data": attributes})))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use std::collections::{BTreeMap, HashMap};

    use utoipa::ToSchema;

    /// `data`: the member's attributes, key → value.
    #[derive(ToSchema)]
    pub struct GroupMemberAttributes {
        data: HashMap<String, String>,
    }

    /// `data`: each member's name, as asked → their attributes (members only).
    #[derive(ToSchema)]
    pub struct GroupMembersAttributes {
        data: HashMap<String, HashMap<String, String>>,
    }

    /// `data`: the chatroom's attributes, key → value.
    #[derive(ToSchema)]
    pub struct RoomAttributes {
        data: HashMap<String, String>,
    }

    /// The keys done, and the others with why.
    #[derive(ToSchema)]
    pub struct RoomAttributeKeys {
        #[serde(rename = "successKeys")]
        success_keys: Vec<String>,
        #[serde(rename = "errorKeys")]
        error_keys: BTreeMap<String, String>,
    }

    #[derive(ToSchema)]
    pub struct RoomAttributesSet {
        data: RoomAttributeKeys,
    }

    #[derive(ToSchema)]
    pub struct RoomAttributesRemoved {
        data: RoomAttributeKeys,
        /// `ok`.
        status: String,
    }
}
