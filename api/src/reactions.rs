//! The platform's reaction routes, `/{org}/{app}/reaction/user/{userId}` (the app's token,
//! or that user's own): a user adds or removes an emoji reaction on a one-to-one or group
//! message they have, and reads the reactions of messages. These are the reactions devices
//! make over MQTT (`change` op `react`): everyone who has the message gets the same
//! `reaction` event, and history carries them.
//!
//! Answers are the platform's: `{"requestStatusCode": "ok", "timestamp", "data"}` (in the
//! envelope like every other). A reaction is one emoji on one message, whoever added it; a
//! message takes at most 20 different ones (`store::lifecycle`). Refusals the platform
//! answers with 400 are 400 here too: reacting twice, removing a reaction one has not added,
//! a message the user does not have.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Owner;
use crate::error::{parse_json, JsonBody, Query};
use crate::{ApiError, AppState};
use store::envelope::Reaction;
use store::messages::StoredMessage;

/// The most message ids one read names.
const MAX_IDS: usize = 20;
/// The most users shown per reaction in a read (the detail route pages through all).
const SHOWN_USERS: usize = 3;

/// A reaction's id: stable for one emoji on one message (FNV-1a of both), a numeric string
/// as on the platform.
fn reaction_id(msg_id: &str, emoji: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in msg_id.bytes().chain([0]).chain(emoji.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash >> 1).to_string()
}

/// A time in ms as ISO 8601 in UTC (`2026-11-30T14:05:09.123Z`).
fn iso8601(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// `chat` or `groupchat`; chatroom messages take no reactions.
fn msg_type(msg: &StoredMessage) -> Result<&'static str, ApiError> {
    match msg.chat.as_str() {
        "user" => Ok("chat"),
        "group" => Ok("groupchat"),
        _ => Err(ApiError::BadRequest("chatroom messages take no reactions".into())),
    }
}

fn illegal() -> ApiError {
    ApiError::BadRequest("the user operation is illegal!".into())
}

/// The message as `user` has it, or the platform's 400 if they do not.
async fn held(state: &AppState, app_id: &str, user: &str, id: &str) -> Result<StoredMessage, ApiError> {
    match state.store.held_message(app_id, id, user).await {
        Ok(msg) => Ok(msg),
        Err(store::Error::NotFound(_)) => Err(illegal()),
        Err(e) => Err(e.into()),
    }
}

/// Adds or removes `user`'s `emoji` on a message and tells everyone who has it.
async fn react(
    state: &AppState,
    owner: &Owner,
    id: &str,
    emoji: &str,
    add: bool,
) -> Result<(StoredMessage, Vec<Reaction>), ApiError> {
    let app = &owner.caller.app;
    let (msg, reactions) = state.store.react(&app.id, id, &owner.user, emoji, add).await?;
    let action = if add { "add" } else { "remove" };
    let event = json!({"op": "reaction", "id": msg.id, "conv": msg.conv, "seq": msg.seq, "emoji": emoji,
        "action": action, "by": owner.user, "reactions": reactions});
    crate::lifecycle::tell_holders(state, &owner.caller, &msg, &event).await?;
    Ok((msg, reactions))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ReactionBody)]
struct AddBody {
    /// A one-to-one or group message the user has (also accepted as `msg_Id`).
    #[serde(rename = "msgId", alias = "msg_Id")]
    msg_id: String,
    /// The emoji (the platform's "reaction id": any text the app's clients agree on; 1 to
    /// 32 bytes, no spaces).
    message: String,
}

/// `POST /{org}/{app}/reaction/user/{userId}` `{"msgId", "message"}`.
#[utoipa::path(post, path = "/{org}/{app}/reaction/user/{username}", tag = "reactions", request_body = AddBody,
    responses((status = 200, description = "Added; `data`: the reaction", body = schema::ReactionAdded)))]
pub async fn add(
    State(state): State<AppState>,
    owner: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let body: AddBody = parse_json(&body)?;
    let msg = held(&state, &owner.caller.app.id, &owner.user, &body.msg_id).await?;
    let kind = msg_type(&msg)?;
    let mine = state.store.reactions(std::slice::from_ref(&msg.id)).await?;
    if mine.get(&msg.id).is_some_and(|list| {
        list.iter()
            .any(|r| r.emoji == body.message && r.users.contains(&owner.user))
    }) {
        return Err(ApiError::BadRequest(
            "the user is already operation this message".into(),
        ));
    }
    react(&state, &owner, &msg.id, &body.message, true).await?;
    let now = iso8601(store::now_ms());
    let group = (kind == "groupchat").then(|| msg.recipient.clone());
    Ok(Json(json!({
        "requestStatusCode": "ok",
        "data": {
            "id": reaction_id(&msg.id, &body.message),
            "msgId": msg.id,
            "msgType": kind,
            "groupId": group,
            "reaction": body.message,
            "createdAt": now,
            "updatedAt": now,
        },
    })))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// The message.
    #[serde(rename = "msgId")]
    msg_id: String,
    /// The emoji the user added.
    message: String,
}

/// `DELETE /{org}/{app}/reaction/user/{userId}?msgId=&message=`: the user's own reaction.
#[utoipa::path(delete, path = "/{org}/{app}/reaction/user/{username}", tag = "reactions", params(RemoveQuery),
    responses((status = 200, description = "Removed", body = schema::ReactionStatus)))]
pub async fn remove(
    State(state): State<AppState>,
    owner: Owner,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<Value>, ApiError> {
    let msg = held(&state, &owner.caller.app.id, &owner.user, &q.msg_id).await?;
    let reactions = state.store.reactions(std::slice::from_ref(&msg.id)).await?;
    let added = reactions.get(&msg.id).is_some_and(|list| {
        list.iter()
            .any(|r| r.emoji == q.message && r.users.contains(&owner.user))
    });
    if !added {
        return Err(illegal());
    }
    react(&state, &owner, &msg.id, &q.message, false).await?;
    Ok(Json(json!({"requestStatusCode": "ok"})))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 20 message ids, separated by commas.
    #[serde(rename = "msgIdList")]
    msg_id_list: String,
    /// `chat` or `groupchat`.
    #[serde(rename = "msgType")]
    msg_type: String,
    /// The group, with `msgType=groupchat` (required then).
    #[serde(default, rename = "groupId")]
    group_id: Option<String>,
}

/// `GET /{org}/{app}/reaction/user/{userId}?msgIdList=a,b&msgType=chat|groupchat[&groupId=]`:
/// the reactions of up to 20 messages the user has, each with its first three users and
/// whether this user added it. Messages the user does not have, or of another type, are
/// left out.
#[utoipa::path(get, path = "/{org}/{app}/reaction/user/{username}", tag = "reactions", params(ListQuery),
    responses((status = 200, description = "`data`: one entry per message shown, in the order asked", body = schema::ReactionLists)))]
pub async fn list(
    State(state): State<AppState>,
    owner: Owner,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    // A message named twice is answered once. Counting stops one past the limit, which is
    // already a refusal: a long query string costs no more than that.
    let mut ids: Vec<String> = Vec::new();
    for id in q.msg_id_list.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        if ids.len() > MAX_IDS {
            break;
        }
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_string());
        }
    }
    if ids.is_empty() || ids.len() > MAX_IDS {
        return Err(ApiError::BadRequest(format!(
            "msgIdList exceeds the maximum number limit: name 1 to {MAX_IDS} message ids"
        )));
    }
    match (q.msg_type.as_str(), q.group_id.as_deref()) {
        ("chat", _) | ("groupchat", Some(_)) => {}
        ("groupchat", None) => return Err(ApiError::BadRequest("groupId can not be null!".into())),
        (other, _) => {
            return Err(ApiError::BadRequest(format!(
                "query.msgType is chat or groupchat, not {other:?}"
            )))
        }
    }
    let app_id = &owner.caller.app.id;
    let mut shown = Vec::new();
    for id in &ids {
        let msg = match state.store.held_message(app_id, id, &owner.user).await {
            Ok(msg) => msg,
            Err(store::Error::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let fits = match q.msg_type.as_str() {
            "chat" => msg.chat == "user",
            _ => msg.chat == "group" && q.group_id.as_deref() == Some(msg.recipient.as_str()),
        };
        if fits {
            shown.push(msg.id);
        }
    }
    let mut reactions = state.store.reactions(&shown).await?;
    let data: Vec<Value> = shown
        .iter()
        .map(|id| {
            let list: Vec<Value> = reactions
                .remove(id)
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    json!({
                        "reactionId": reaction_id(id, &r.emoji),
                        "reaction": r.emoji,
                        "count": r.count,
                        "state": r.users.contains(&owner.user),
                        "userList": r.users.iter().take(SHOWN_USERS).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({"msgId": id, "reactionList": list})
        })
        .collect();
    Ok(Json(json!({"requestStatusCode": "ok", "data": data})))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DetailQuery {
    /// The message.
    #[serde(rename = "msgId")]
    msg_id: String,
    /// The emoji.
    message: String,
    /// Users per page: 1 to 50 (default 50).
    #[param(minimum = 1, maximum = 50)]
    limit: Option<i64>,
    /// The `cursor` of the previous page (`""` or absent: the first).
    cursor: Option<String>,
}

/// `GET /{org}/{app}/reaction/user/{userId}/detail?msgId=&message=&limit=&cursor=`: who
/// added one reaction, earliest first, `limit` (1-50, default 50) at a time; `cursor` is
/// where the next page starts, `""` on the last page.
#[utoipa::path(get, path = "/{org}/{app}/reaction/user/{username}/detail", tag = "reactions", params(DetailQuery),
    responses((status = 200, description = "`data`: the reaction and a page of its users", body = schema::ReactionDetail)))]
pub async fn detail(
    State(state): State<AppState>,
    owner: Owner,
    Query(q): Query<DetailQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=50).contains(&limit) {
        return Err(ApiError::BadRequest(
            "Limit exceeds the maximum quantity limit: query.limit is 1 to 50".into(),
        ));
    }
    let start: usize = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::BadRequest("query.cursor is the cursor of the previous page".into()))?,
    };
    let msg = held(&state, &owner.caller.app.id, &owner.user, &q.msg_id).await?;
    let reactions = state.store.reactions(std::slice::from_ref(&msg.id)).await?;
    let reaction = reactions
        .get(&msg.id)
        .and_then(|list| list.iter().find(|r| r.emoji == q.message))
        .ok_or_else(|| ApiError::NotFound(format!("reaction {} on message {}", q.message, msg.id)))?;
    let page: Vec<&String> = reaction.users.iter().skip(start).take(limit as usize).collect();
    let next = start + page.len();
    let cursor = if next < reaction.users.len() {
        next.to_string()
    } else {
        String::new()
    };
    Ok(Json(json!({
        "requestStatusCode": "ok",
        "data": {
            "reactionId": reaction_id(&msg.id, &reaction.emoji),
            "reaction": reaction.emoji,
            "count": reaction.count,
            "userCount": reaction.count,
            "state": reaction.users.contains(&owner.user),
            "userList": page,
            "cursor": cursor,
        },
    })))
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(add, list, remove))
        .routes(routes!(detail))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    /// A reaction as added.
    #[derive(ToSchema)]
    pub struct ReactionAddedData {
        /// The reaction's id: a numeric string, the same for one emoji on one message.
        id: String,
        #[serde(rename = "msgId")]
        msg_id: String,
        /// `chat` or `groupchat`.
        #[serde(rename = "msgType")]
        msg_type: String,
        /// The group, for a group message; `null` for a one-to-one message.
        #[serde(rename = "groupId")]
        group_id: Option<String>,
        /// The emoji.
        reaction: String,
        /// ISO 8601, UTC.
        #[serde(rename = "createdAt")]
        created_at: String,
        #[serde(rename = "updatedAt")]
        updated_at: String,
    }

    /// `requestStatusCode`: `ok`; `data`: the reaction.
    #[derive(ToSchema)]
    pub struct ReactionAdded {
        #[serde(rename = "requestStatusCode")]
        request_status_code: String,
        data: ReactionAddedData,
    }

    /// `requestStatusCode`: `ok`.
    #[derive(ToSchema)]
    pub struct ReactionStatus {
        #[serde(rename = "requestStatusCode")]
        request_status_code: String,
    }

    /// One emoji's reactions to a message.
    #[derive(ToSchema)]
    pub struct ReactionSummary {
        #[serde(rename = "reactionId")]
        reaction_id: String,
        /// The emoji.
        reaction: String,
        /// How many users added it.
        count: u64,
        /// Whether this user added it.
        state: bool,
        /// Its first three users, earliest first.
        #[serde(rename = "userList")]
        user_list: Vec<String>,
    }

    /// A message's reactions.
    #[derive(ToSchema)]
    pub struct MessageReactions {
        #[serde(rename = "msgId")]
        msg_id: String,
        #[serde(rename = "reactionList")]
        reaction_list: Vec<ReactionSummary>,
    }

    /// `data`: the reactions of each message shown.
    #[derive(ToSchema)]
    pub struct ReactionLists {
        #[serde(rename = "requestStatusCode")]
        request_status_code: String,
        data: Vec<MessageReactions>,
    }

    /// One reaction and a page of its users.
    #[derive(ToSchema)]
    pub struct ReactionDetailData {
        #[serde(rename = "reactionId")]
        reaction_id: String,
        reaction: String,
        count: u64,
        /// The same as `count`.
        #[serde(rename = "userCount")]
        user_count: u64,
        /// Whether this user added it.
        state: bool,
        /// This page's users, earliest first.
        #[serde(rename = "userList")]
        user_list: Vec<String>,
        /// Where the next page starts; `""` on the last page.
        cursor: String,
    }

    /// `data`: the reaction's users, a page at a time.
    #[derive(ToSchema)]
    pub struct ReactionDetail {
        #[serde(rename = "requestStatusCode")]
        request_status_code: String,
        data: ReactionDetailData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_796_047_200_123), "2026-11-30T14:00:00.123Z");
        assert_eq!(iso8601(1_709_164_800_000 + 86_399_999), "2024-02-29T23:59:59.999Z");
    }

    #[test]
    fn reaction_ids_are_stable_and_distinct() {
        assert_eq!(reaction_id("m1", "👍"), reaction_id("m1", "👍"));
        assert_ne!(reaction_id("m1", "👍"), reaction_id("m2", "👍"));
        assert_ne!(reaction_id("m1", "a"), reaction_id("m1a", ""));
    }
}
