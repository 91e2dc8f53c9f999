//! Messages the app's backend sends and changes, the platform's `/messages` routes: to users,
//! groups and chatrooms (and the older `target_type` form), a broadcast to every chatroom,
//! imports of history kept elsewhere, `cmd`s relayed to the devices online, recall and
//! rewrite. All need an app token; messages go through the same storage as devices' and are
//! delivered the same way.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{parse_json, JsonBody};
use crate::lifecycle::tell_holders;
use crate::{ApiError, AppState};
use store::envelope::{ChatType, Destroy, MsgType};
use store::files::Attacher;
use store::messages::{NewMessage, Outcome, StoredMessage};

type UserPath = Path<(String, String, String)>;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RecallBody {
    msg_id: String,
    /// The conversation the message is in, as the platform asks for it; chatd finds the
    /// message by its id and checks that these agree when given.
    #[serde(default)]
    to: Option<String>,
    /// `chat`, `groupchat` or `chatroom`.
    #[serde(default)]
    chat_type: Option<String>,
    /// The sender (`admin` or none: not checked).
    #[serde(default)]
    from: Option<String>,
    /// Recall beyond the app's time limit: the app (which this route needs) always may.
    #[serde(default, rename = "force")]
    _force: Option<bool>,
}

/// `POST /{org}/{app}/messages/msg_recall` (app token), the platform's recall:
/// `{"msg_id", "to", "chat_type", "from", "force"}`.
///
/// Without a time limit; everyone who has the message gets a `recalled` event. A message
/// that does not exist (or is recalled already) is answered in `msgs`, with 200, as on the
/// platform.
#[utoipa::path(post, path = "/{org}/{app}/messages/msg_recall", tag = "messages", request_body = RecallBody,
    responses((status = 200, description = "`data`: the message recalled; or `msgs`: the message was not found",
        body = schema::MessageRecall)))]
pub async fn recall_by_body(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let req: RecallBody = parse_json(&body)?;
    let found = match state.store.message(&caller.app.id, &req.msg_id).await {
        Ok(found) if !found.recalled => found,
        // The platform answers an unknown (or already recalled) message in a list of its
        // own, with 200.
        Ok(_) | Err(store::Error::NotFound(_)) => {
            return Ok(Json(
                json!({"msgs": [{"msg_id": req.msg_id, "recalled": "not_found msg"}]}),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let chat_type = match found.chat.as_str() {
        "group" => "groupchat",
        "room" => "chatroom",
        _ => "chat",
    };
    let mismatch = |field: &str, given: &str| {
        ApiError::BadRequest(format!(
            "body.{field} is {given:?}, but message {} is not in that conversation",
            req.msg_id
        ))
    };
    if let Some(given) = req.chat_type.as_deref().filter(|c| !c.is_empty()) {
        if given != chat_type {
            return Err(mismatch("chat_type", given));
        }
    }
    if let Some(given) = req.from.as_deref().filter(|f| !f.is_empty() && *f != SYSTEM_SENDER) {
        if given.to_ascii_lowercase() != found.sender {
            return Err(mismatch("from", given));
        }
    }
    if let Some(given) = req.to.as_deref().filter(|t| !t.is_empty()) {
        if given.to_ascii_lowercase() != found.recipient {
            return Err(mismatch("to", given));
        }
    }
    let msg = state.store.recall(&caller.app.id, &req.msg_id, None, i64::MAX).await?;
    let event = json!({"op": "recalled", "id": msg.id, "conv": msg.conv, "seq": msg.seq, "by": "admin"});
    tell_holders(&state, &caller, &msg, &event).await?;
    Ok(Json(json!({"data": {
        "recalled": "yes",
        "chattype": chat_type,
        "from": msg.sender,
        "to": msg.recipient,
        "msg_id": msg.id,
    }})))
}

/// `POST /{org}/{app}/messages/recall`: the name the platform's overview gives
/// `/messages/msg_recall`, the same route ([`recall_by_body`]).
#[utoipa::path(post, path = "/{org}/{app}/messages/recall", tag = "messages", request_body = RecallBody,
    responses((status = 200, description = "`data`: the message recalled; or `msgs`: the message was not found",
        body = schema::MessageRecall)))]
pub async fn recall_by_body_alias(
    state: State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    recall_by_body(state, caller, body).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RewriteBody {
    /// Who rewrites it, as the platform names it; the app may rewrite any message.
    #[serde(default, rename = "user")]
    _user: Option<String>,
    /// The new body: `{"type": "txt" | "custom", <the body's fields>}`, of the message's
    /// own type (`{"type": "txt", "msg": "…"}`).
    #[schema(value_type = Object)]
    new_msg: Value,
    /// A new `ext` for the message: replaces it, or with `is_combine_ext` is merged into it.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    new_ext: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    is_combine_ext: bool,
}

/// `PUT /{org}/{app}/messages/rewrite/{msg_id}` (app token): replaces the body of a text
/// or custom message (`{"new_msg": {"type": "txt", "msg": "…"}}`); everyone who has it
/// gets an `edited` event, as when its sender edits it.
#[utoipa::path(put, path = "/{org}/{app}/messages/rewrite/{id}", tag = "messages", request_body = RewriteBody,
    responses((status = 200, description = "Rewritten: `data` is `success`", body = schema::MessageRewritten)))]
pub async fn rewrite(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): UserPath,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let req: RewriteBody = parse_json(&body)?;
    let Value::Object(mut new_body) = req.new_msg else {
        return Err(ApiError::BadRequest("body.new_msg must be an object".into()));
    };
    let kind = new_body
        .remove("type")
        .and_then(|t| t.as_str().and_then(MsgType::parse))
        .filter(|k| matches!(k, MsgType::Txt | MsgType::Custom))
        .ok_or_else(|| ApiError::BadRequest("body.new_msg.type must be \"txt\" or \"custom\"".into()))?;
    let new_body = Value::Object(new_body);
    let current = state.store.message(&caller.app.id, &id).await?;
    if current.kind != kind.as_str() {
        return Err(ApiError::BadRequest(format!(
            "message {id} is a {} message; it can only be rewritten as one",
            current.kind
        )));
    }
    kind.validate_body(&new_body).map_err(ApiError::BadRequest)?;
    let mut edited = state
        .store
        .edit(&caller.app.id, &id, &current.sender, &new_body.to_string())
        .await?;
    if let Some(new_ext) = req.new_ext {
        let mut ext = match (
            req.is_combine_ext,
            current.ext.as_deref().map(serde_json::from_str::<Value>),
        ) {
            (true, Some(Ok(Value::Object(old)))) => old,
            _ => serde_json::Map::new(),
        };
        ext.extend(new_ext);
        edited = state
            .store
            .set_ext(&caller.app.id, &id, &Value::Object(ext).to_string())
            .await?;
    }
    let ext: Option<Value> = edited.ext.as_deref().and_then(|e| serde_json::from_str(e).ok());
    let event = json!({"op": "edited", "id": edited.id, "conv": edited.conv, "seq": edited.seq,
        "body": new_body, "ext": ext, "edited": edited.edited_at, "by": SYSTEM_SENDER});
    tell_holders(&state, &caller, &edited, &event).await?;
    Ok(Json(json!({"data": "success"})))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ServerMessage {
    /// The sender; absent: the app itself, as the platform's `admin`.
    #[serde(default)]
    from: Option<String>,
    /// chatd's older way of saying "from the app" (the same as leaving `from` out).
    #[serde(default)]
    system: bool,
    /// 1 to 100 users, groups or chatrooms (by the route).
    #[schema(min_items = 1, max_items = 100)]
    to: Vec<String>,
    #[serde(rename = "type")]
    #[schema(value_type = crate::messages::schema::MessageKind)]
    kind: MsgType,
    /// The body for `type` (topics.md): `txt` `{"msg"}`, `img`/`audio`/`video`/`file`
    /// `{"url", …}`, `loc` `{"lat", "lng", "addr"?}`, `cmd` `{"action"}`, `custom`
    /// `{"customEvent", "customExts"?}`.
    #[schema(value_type = Object)]
    body: Value,
    /// The app's own data, delivered as is.
    #[serde(default)]
    ext: Option<Value>,
    /// A self-destructing message, as on `send` (topics.md).
    #[serde(default)]
    #[schema(value_type = Option<crate::messages::schema::DestroyTimer>)]
    destroy: Option<Destroy>,
    /// `ROUTE_ONLINE`: one-to-one messages go only to recipients online now; for the others
    /// nothing is kept (they are answered an id all the same, as on the platform). Group
    /// and chatroom messages are kept for every member whatever the route. `ROUTE_ALL`
    /// (the default): everyone.
    #[serde(default)]
    routetype: Option<String>,
    /// Accepted for the platform's clients; chatd always keeps the sender's copy, so the
    /// sender's devices see the message (live or on `sync`) either way.
    #[serde(default, rename = "sync_device")]
    _sync_device: Option<bool>,
    /// The platform's list of recipients whose other devices should not roam the message;
    /// accepted and ignored: every device of a recipient sees every message it is sent.
    #[serde(default, rename = "roam_ignore_users")]
    _roam_ignore_users: Option<Vec<String>>,
    /// The platform's per-message request for group read receipts; accepted and ignored:
    /// chatd keeps them for every group message when the app's `group_read_receipts` is on.
    #[serde(default, rename = "need_group_ack")]
    _need_group_ack: Option<bool>,
}

/// The name messages sent by the app (no `from`) carry, as on the platform.
pub const SYSTEM_SENDER: &str = "admin";

/// Who a message from the backend is from: a user of the app (else 404), or with no
/// `from`, an empty one or `"admin"`, the app itself.
async fn app_sender(state: &AppState, caller: &Caller, from: Option<&str>) -> Result<String, ApiError> {
    match from.map(str::trim) {
        None | Some("") | Some(SYSTEM_SENDER) => Ok(SYSTEM_SENDER.to_string()),
        Some(from) => {
            let from = from.to_ascii_lowercase();
            state.store.require_users(&caller.app.id, &[&from]).await?;
            Ok(from)
        }
    }
}

/// Checks the files a body from the backend points at and completes it, as for a device's
/// (external URLs only where the app allows them); answers the chatfiles it refers to.
async fn app_files(
    state: &AppState,
    caller: &Caller,
    kind: MsgType,
    body: &mut Value,
    settings: &store::tenants::AppSettings,
) -> Result<Vec<String>, ApiError> {
    let app = &caller.app;
    state
        .store
        .attach_files(
            &state.files.links,
            (&app.org, &app.name, &app.id),
            Attacher::App,
            kind,
            body,
            settings.allow_external_urls,
        )
        .await
        .map_err(ApiError::BadRequest)
}

/// `POST /{org}/{app}/messages/users`, `/messages/chatgroups` and `/messages/chatrooms` (app
/// token): stored and delivered exactly like messages from devices; answers each
/// recipient's message id (`{"data": {"<to>": "<id>"}}`), or for a recipient refused, an
/// object with its `error`. `cmd` messages are relayed to the devices online now and not
/// stored, as from devices.
#[utoipa::path(post, path = "/{org}/{app}/messages/{target}", tag = "messages", request_body = ServerMessage,
    responses((status = 200, description = "`data`: each recipient → the message's id, or why it was refused",
        body = schema::MessagesSent)))]
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, target)): UserPath,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let chat = match target.as_str() {
        "users" => ChatType::User,
        "chatgroups" => ChatType::Group,
        "chatrooms" => ChatType::Room,
        _ => {
            return Err(ApiError::NotFound(
                "send to /messages/users, /messages/chatgroups or /messages/chatrooms".into(),
            ))
        }
    };
    let req: ServerMessage = parse_json(&body)?;
    // chatd's older `"system": true` means the app itself, as no `from` does.
    let from = app_sender(&state, &caller, req.from.as_deref().filter(|_| !req.system)).await?;
    if req.to.is_empty() || req.to.len() > 100 {
        return Err(ApiError::BadRequest("body.to names 1 to 100 recipients".into()));
    }
    let online_only = match req.routetype.as_deref() {
        None | Some("ROUTE_ALL") => false,
        Some("ROUTE_ONLINE") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "body.routetype is ROUTE_ALL or ROUTE_ONLINE, not {other:?}"
            )))
        }
    };
    let req_body = checked_body(req.kind, req.body.clone()).map_err(ApiError::BadRequest)?;
    if let Some(destroy) = &req.destroy {
        destroy.validate(chat).map_err(ApiError::BadRequest)?;
    }
    // A name given twice is one recipient: one message, one id.
    let mut to: Vec<String> = Vec::with_capacity(req.to.len());
    for name in req.to.iter().map(|t| t.trim().to_ascii_lowercase()) {
        if !to.contains(&name) {
            to.push(name);
        }
    }
    if req.kind == MsgType::Cmd {
        return relay_command(&state, &caller, chat, &from, &to, &req_body, req.ext.as_ref()).await;
    }
    let (app_org, app_name) = (&caller.app.org, &caller.app.name);
    let mut result = serde_json::Map::new();
    let mut recipients = Vec::new();
    for t in to {
        if online_only && chat == ChatType::User && !state.live.is_online(app_org, app_name, &t) {
            // As on the platform, the message gets an id but, the recipient being offline, is
            // neither stored nor delivered.
            result.insert(t, json!(uuid::Uuid::now_v7().to_string()));
        } else {
            recipients.push(t);
        }
    }
    let settings = state.store.app_settings(&caller.app.id).await?;
    let mut body = req_body;
    let files = app_files(&state, &caller, req.kind, &mut body, &settings).await?;
    let batch: Vec<NewMessage> = recipients
        .iter()
        .map(|to| NewMessage {
            app_id: caller.app.id.clone(),
            chat,
            sender: from.clone(),
            sender_device: "rest-api".into(),
            to: to.clone(),
            cid: format!("api-{}", store::tokens::random_secret(16)),
            kind: req.kind,
            body: body.to_string(),
            ext: req.ext.as_ref().map(Value::to_string),
            require_contacts: settings.require_contacts,
            room_history: settings.room_history,
            as_app: true,
            files: files.clone(),
            destroy: req.destroy,
            sent_at: None,
        })
        .collect();
    let outcomes = state.store.store_batch(&batch).await?;
    for (m, outcome) in batch.iter().zip(outcomes) {
        match outcome {
            Outcome::Stored { msg, useqs } => {
                if chat == ChatType::Room {
                    let payload = serde_json::to_vec(&msg.delivered("", None)).unwrap_or_default();
                    state.live.deliver_room(app_org, app_name, &msg.recipient, payload);
                }
                for (user, useq) in useqs {
                    let payload = serde_json::to_value(msg.delivered(&user, Some(useq))).unwrap_or_default();
                    state.live.notify(&caller.app.org, &caller.app.name, &user, &payload);
                }
                result.insert(m.to.clone(), json!(msg.id));
            }
            Outcome::Duplicate { msg, .. } => {
                result.insert(m.to.clone(), json!(msg.id));
            }
            Outcome::Refused { code, message } => {
                result.insert(m.to.clone(), json!({"error": code, "error_description": message}));
            }
        }
    }
    Ok(Json(json!({"data": result})))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    /// The message: `{"type": "txt", "msg": "…"}`, its body's fields beside its type.
    #[schema(value_type = Object)]
    msg: Value,
    /// The sender: a user of the app; none (or `admin`): the app itself.
    #[serde(default)]
    from: Option<String>,
    /// The app's own data, delivered as is.
    #[serde(default)]
    ext: Option<Value>,
    /// The platform's delivery priority (`high`, `normal`, `low`); chatd delivers every
    /// chatroom message alike, so it is accepted and has no effect.
    #[serde(default, rename = "chatroom_msg_level")]
    _level: Option<String>,
}

/// `POST /{org}/{app}/messages/chatrooms/broadcast` (app token): one message to every
/// chatroom of the app, kept in each room's history as if sent there by the app (a `cmd`
/// is relayed and not kept); answers a broadcast id (a number, as on the platform).
#[utoipa::path(post, path = "/{org}/{app}/messages/chatrooms/broadcast", tag = "messages", request_body = BroadcastBody,
    responses((status = 200, description = "Sent to every chatroom: `data.id` is the broadcast's id",
        body = schema::BroadcastSent)))]
pub async fn broadcast(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let req: BroadcastBody = parse_json(&body)?;
    let (kind, mut body) = typed_body(req.msg, "body.msg")?;
    let from = app_sender(&state, &caller, req.from.as_deref()).await?;
    let settings = state.store.app_settings(&caller.app.id).await?;
    let app = &caller.app;
    let files = app_files(&state, &caller, kind, &mut body, &settings).await?;
    let broadcast_id = (uuid::Uuid::now_v7().as_u128() >> 66) as i64;
    let mut cursor: Option<String> = None;
    loop {
        let rooms = state
            .store
            .list_channels(&app.id, store::channels::ChannelKind::Room, 500, cursor.as_deref())
            .await?;
        let batch: Vec<NewMessage> = rooms
            .iter()
            .map(|room| NewMessage {
                app_id: app.id.clone(),
                chat: ChatType::Room,
                sender: from.clone(),
                sender_device: "rest-api".into(),
                to: room.id.clone(),
                cid: format!("broadcast-{broadcast_id}-{}", room.id),
                kind,
                body: body.to_string(),
                ext: req.ext.as_ref().map(Value::to_string),
                require_contacts: false,
                room_history: settings.room_history,
                as_app: true,
                files: files.clone(),
                destroy: None,
                sent_at: None,
            })
            .collect();
        if kind == MsgType::Cmd {
            // Commands are relayed, never kept (as from devices).
            for room in &rooms {
                let _ids = relay_command(
                    &state,
                    &caller,
                    ChatType::Room,
                    &from,
                    std::slice::from_ref(&room.id),
                    &body,
                    req.ext.as_ref(),
                )
                .await?;
            }
        } else {
            for outcome in state.store.store_batch(&batch).await? {
                if let Outcome::Stored { msg, .. } = outcome {
                    let payload = serde_json::to_vec(&msg.delivered("", None)).unwrap_or_default();
                    state.live.deliver_room(&app.org, &app.name, &msg.recipient, payload);
                }
            }
        }
        if rooms.len() < 500 {
            break;
        }
        cursor = rooms.last().map(|r| r.id.clone());
    }
    Ok(Json(json!({"data": {"id": broadcast_id}})))
}

/// A message given as the platform's `{"type": …, <body fields>}`: its type and body,
/// checked (string coordinates of a location become numbers).
fn typed_body(msg: Value, field: &str) -> Result<(MsgType, Value), ApiError> {
    let Value::Object(mut fields) = msg else {
        return Err(ApiError::BadRequest(format!("{field} must be an object with a 'type'")));
    };
    let kind = fields
        .remove("type")
        .and_then(|t| t.as_str().and_then(MsgType::parse))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{field}.type must be a message type (txt, img, loc, custom, …)"
            ))
        })?;
    let body =
        checked_body(kind, Value::Object(fields)).map_err(|why| ApiError::BadRequest(format!("{field}: {why}")))?;
    Ok((kind, body))
}

/// A body of `kind` as the platform's clients send it, checked; a location's string
/// coordinates become numbers.
fn checked_body(kind: MsgType, mut body: Value) -> Result<Value, String> {
    if kind == MsgType::Loc {
        numbers_from_strings(&mut body, &["lat", "lng"]);
    }
    kind.validate_body(&body)?;
    Ok(body)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    /// The recipient's name, or the group's id.
    target: String,
    /// The sender: a user of the app.
    from: String,
    /// Any type but `cmd` (which is never kept).
    #[serde(rename = "type")]
    #[schema(value_type = crate::messages::schema::MessageKind)]
    kind: MsgType,
    /// The body for `type`, as on the send routes.
    #[schema(value_type = Object)]
    body: Value,
    /// The app's own data, kept as is.
    #[serde(default)]
    ext: Option<Value>,
    /// When it was sent (ms); the message keeps this time.
    msg_timestamp: i64,
    /// Whether the recipient had read it; chatd keeps read positions per conversation, not
    /// per imported message, so it is accepted and has no effect.
    #[serde(default, rename = "is_ack_read")]
    _is_ack_read: Option<bool>,
    /// Whether the recipient should see it as new; accepted, no effect (see above).
    #[serde(default, rename = "need_download")]
    _need_download: Option<bool>,
}

/// `POST /{org}/{app}/messages/users/import` and `/messages/chatgroups/import` (app token):
/// keeps a message sent elsewhere (moving history from another service), with its own time,
/// in the conversation's history and the participants' inboxes; nobody is notified live
/// and nothing is pushed. Answers its id.
#[utoipa::path(post, path = "/{org}/{app}/messages/{target}/import", tag = "messages", request_body = ImportBody,
    responses((status = 200, description = "Kept: `data.msg_id` is the message's id", body = schema::MessageImported)))]
pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, target)): UserPath,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let chat = match target.as_str() {
        "users" => ChatType::User,
        "chatgroups" => ChatType::Group,
        _ => {
            return Err(ApiError::NotFound(
                "import to /messages/users/import or /messages/chatgroups/import".into(),
            ))
        }
    };
    let req: ImportBody = parse_json(&body)?;
    if req.kind == MsgType::Cmd {
        return Err(ApiError::BadRequest(
            "body.type: cmd messages are not kept, so not imported".into(),
        ));
    }
    let mut body = checked_body(req.kind, req.body).map_err(ApiError::BadRequest)?;
    let now = store::now_ms();
    if req.msg_timestamp <= 0 || req.msg_timestamp > now {
        return Err(ApiError::BadRequest(
            "body.msg_timestamp must be a past time in ms".into(),
        ));
    }
    let from = req.from.trim().to_ascii_lowercase();
    state.store.require_users(&caller.app.id, &[&from]).await?;
    let settings = state.store.app_settings(&caller.app.id).await?;
    let files = app_files(&state, &caller, req.kind, &mut body, &settings).await?;
    let target = match chat {
        ChatType::User => req.target.trim().to_ascii_lowercase(),
        _ => req.target.trim().to_string(),
    };
    let message = NewMessage {
        app_id: caller.app.id.clone(),
        chat,
        sender: from,
        sender_device: "import".into(),
        to: target,
        cid: format!("import-{}", store::tokens::random_secret(16)),
        kind: req.kind,
        body: body.to_string(),
        ext: req.ext.as_ref().map(Value::to_string),
        require_contacts: false,
        room_history: settings.room_history,
        as_app: true,
        files,
        destroy: None,
        sent_at: Some(req.msg_timestamp),
    };
    match state.store.store_batch(std::slice::from_ref(&message)).await?.remove(0) {
        Outcome::Stored { msg, .. } | Outcome::Duplicate { msg, .. } => Ok(Json(json!({"data": {"msg_id": msg.id}}))),
        Outcome::Refused { code, message } => Err(match code {
            "unknown_recipient" | "not_found" => ApiError::NotFound(message),
            _ => ApiError::BadRequest(message),
        }),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TargetedMessage {
    /// `users`, `chatgroups` or `chatrooms`.
    target_type: String,
    /// 1 to 100 users, groups or chatrooms.
    #[schema(min_items = 1, max_items = 100)]
    target: Vec<String>,
    /// The message: `{"type": …, <the body's fields>}` (`{"type": "txt", "msg": "…"}`).
    #[schema(value_type = Object)]
    msg: Value,
    /// The sender: a user of the app; none (or `admin`): the app itself.
    #[serde(default)]
    from: Option<String>,
    /// The app's own data, delivered as is.
    #[serde(default)]
    ext: Option<Value>,
}

/// `POST /{org}/{app}/messages` with `{"target_type": "users" | "chatgroups" | "chatrooms",
/// "target": [...], "msg": {"type": …, <body fields>}, "from", "ext"}`: the platform's older
/// form of the three send routes, answered the same way.
#[utoipa::path(post, path = "/{org}/{app}/messages", tag = "messages", request_body = TargetedMessage,
    responses((status = 200, description = "`data`: each recipient → the message's id, or why it was refused",
        body = schema::MessagesSent)))]
pub async fn send_by_target_type(
    state: State<AppState>,
    caller: Caller,
    Path((org, app)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    // Who may send comes before what is sent: a user token is a 403 whatever its body.
    caller.require_app()?;
    let req: TargetedMessage = parse_json(&body)?;
    if !matches!(req.target_type.as_str(), "users" | "chatgroups" | "chatrooms") {
        return Err(ApiError::BadRequest(format!(
            "body.target_type is users, chatgroups or chatrooms, not {:?}",
            req.target_type
        )));
    }
    let Value::Object(mut msg) = req.msg else {
        return Err(ApiError::BadRequest("body.msg must be an object with a 'type'".into()));
    };
    let kind = msg
        .remove("type")
        .ok_or_else(|| ApiError::BadRequest("body.msg.type is missing".into()))?;
    let mut message = json!({"to": req.target, "type": kind, "body": Value::Object(msg)});
    if let Some(from) = req.from {
        message["from"] = json!(from);
    }
    if let Some(ext) = req.ext {
        message["ext"] = ext;
    }
    let body = axum::body::Bytes::from(message.to_string());
    send(state, caller, Path((org, app, req.target_type)), JsonBody(body)).await
}

/// The platform's clients send a location's `lat` and `lng` as strings (`"39.9"`); chatd
/// keeps numbers. A string that is not a number is left for the body check to refuse.
fn numbers_from_strings(body: &mut Value, keys: &[&str]) {
    for key in keys {
        let parsed = body
            .get(*key)
            .and_then(Value::as_str)
            .and_then(|s| s.trim().parse::<f64>().ok());
        if let Some(n) = parsed.and_then(serde_json::Number::from_f64) {
            body[*key] = Value::Number(n);
        }
    }
}

/// A `cmd` message from the app: relayed at once to the devices of the recipients online
/// now (the members of a group, the subscribers of a chatroom), not stored, as from
/// devices. Answers an id per recipient.
async fn relay_command(
    state: &AppState,
    caller: &Caller,
    chat: ChatType,
    from: &str,
    to: &[String],
    body: &Value,
    ext: Option<&Value>,
) -> Result<Json<Value>, ApiError> {
    let app = &caller.app;
    let mut result = serde_json::Map::new();
    for target in to {
        let conv = match chat {
            ChatType::User => store::messages::user_conv(from, target),
            ChatType::Group => format!("g:{target}"),
            ChatType::Room => format!("r:{target}"),
        };
        let found = match chat {
            ChatType::User => state
                .store
                .require_users(&app.id, &[target])
                .await
                .map(|_| vec![target.clone()]),
            ChatType::Group | ChatType::Room => {
                let kind = if chat == ChatType::Group {
                    store::channels::ChannelKind::Group
                } else {
                    store::channels::ChannelKind::Room
                };
                match state.store.channel(&app.id, kind, target).await {
                    Ok(_) if chat == ChatType::Group => state
                        .store
                        .members(&app.id, kind, target)
                        .await
                        .map(|members| members.into_iter().map(|m| m.username).collect()),
                    Ok(_) => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            }
        };
        // As for stored messages, an unknown recipient is answered on its own.
        let recipients = match found {
            Ok(recipients) => recipients,
            Err(store::Error::NotFound(what)) => {
                let code = if chat == ChatType::User {
                    "unknown_recipient"
                } else {
                    "not_found"
                };
                result.insert(
                    target.clone(),
                    json!({"error": code, "error_description": format!("{what} not found")}),
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let msg = StoredMessage {
            id: format!("cmd-{}-{}", store::now_ms(), store::tokens::random_secret(10)),
            conv,
            seq: 0,
            ts: store::now_ms(),
            chat: chat.as_str().into(),
            sender: from.to_string(),
            sender_device: "rest-api".into(),
            recipient: target.clone(),
            cid: String::new(),
            kind: MsgType::Cmd.as_str().into(),
            body: body.to_string(),
            ext: ext.map(Value::to_string),
            recalled: false,
            edited_at: 0,
            destroy: None,
            destroyed: false,
        };
        if chat == ChatType::Room {
            let payload = serde_json::to_vec(&msg.delivered("", None)).unwrap_or_default();
            state.live.deliver_room(&app.org, &app.name, target, payload);
        }
        for user in recipients {
            let payload = serde_json::to_value(msg.delivered(&user, None)).unwrap_or_default();
            state.live.notify(&app.org, &app.name, &user, &payload);
        }
        result.insert(target.clone(), json!(msg.id));
    }
    Ok(Json(json!({"data": result})))
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(recall_by_body))
        .routes(routes!(recall_by_body_alias))
        .routes(routes!(send_by_target_type))
        .routes(routes!(broadcast))
        .routes(routes!(import))
        .routes(routes!(rewrite))
        .routes(routes!(send))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    /// Why a message to one recipient was refused.
    #[derive(ToSchema)]
    pub struct RecipientRefused {
        /// `unknown_recipient`, `not_found`, `blocked`, `not_contact`, `not_member`, `banned`,
        /// `muted`, `message_too_large`, `forbidden_content`, `rate_limited`, … (topics.md).
        error: String,
        error_description: String,
    }

    /// What became of the message to one recipient.
    #[derive(ToSchema)]
    #[serde(untagged)]
    pub enum SentToRecipient {
        /// The message's id.
        Id(String),
        Refused(RecipientRefused),
    }

    /// `data`: each recipient (as given, lower-cased for users) → what became of its message.
    #[derive(ToSchema)]
    pub struct MessagesSent {
        #[schema(value_type = std::collections::HashMap<String, SentToRecipient>)]
        data: serde_json::Map<String, serde_json::Value>,
    }

    /// The message recalled.
    #[derive(ToSchema)]
    pub struct MessageRecallData {
        /// Always `yes`.
        recalled: String,
        /// `chat`, `groupchat` or `chatroom`.
        chattype: String,
        from: String,
        to: String,
        msg_id: String,
    }

    /// A message that could not be recalled.
    #[derive(ToSchema)]
    pub struct MessageRecallNotFound {
        msg_id: String,
        /// `not_found msg`.
        recalled: String,
    }

    /// `data` when the message was recalled; `msgs` when there is no such message (or it was
    /// recalled already).
    #[derive(ToSchema)]
    pub struct MessageRecall {
        data: Option<MessageRecallData>,
        msgs: Option<Vec<MessageRecallNotFound>>,
    }

    /// `data`: `success`.
    #[derive(ToSchema)]
    pub struct MessageRewritten {
        data: String,
    }

    #[derive(ToSchema)]
    pub struct BroadcastSentData {
        /// The broadcast's id.
        id: i64,
    }

    /// The broadcast's id.
    #[derive(ToSchema)]
    pub struct BroadcastSent {
        data: BroadcastSentData,
    }

    #[derive(ToSchema)]
    pub struct MessageImportedData {
        /// The message's id.
        msg_id: String,
    }

    /// The imported message's id.
    #[derive(ToSchema)]
    pub struct MessageImported {
        data: MessageImportedData,
    }
}
