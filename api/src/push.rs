//! Push notifications over REST: device bindings, do-not-disturb, muted conversations, the
//! app's credentials and template, and counters.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Caller, Owner};
use crate::error::{parse_json, JsonBody};
use crate::{ApiError, AppState};
use store::notification::{Mode, Setting};
use store::push::{Dnd, Notifier};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Binding {
    device_id: String,
    /// An empty token unbinds the device.
    device_token: String,
    /// `apns` or `fcm`; or, as on the platform where it names an uploaded certificate, the
    /// app's APNs topic (bundle id) or FCM project id as set in `push/config`.
    #[serde(default)]
    notifier_name: String,
}

/// `PUT /{org}/{app}/users/{username}/push/binding`
pub async fn bind(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let b: Binding = parse_json(&body)?;
    if b.device_token.is_empty() {
        // Unbinding a device that is not bound is done already.
        match state.store.unbind_push(&caller.app.id, &username, &b.device_id).await {
            Ok(()) | Err(store::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    } else {
        let notifier = notifier(&state, &caller, &b.notifier_name).await?;
        state
            .store
            .bind_push(&caller.app.id, &username, &b.device_id, notifier, &b.device_token)
            .await?;
    }
    devices(State(state), Owner { caller, user: username }).await
}

/// The provider a binding's `notifier_name` names.
async fn notifier(state: &AppState, caller: &Caller, name: &str) -> Result<Notifier, ApiError> {
    if let Some(notifier) = Notifier::parse(name) {
        return Ok(notifier);
    }
    let stored = state.store.push_config(&caller.app.id).await?;
    let config: push::PushConfig = serde_json::from_value(stored).unwrap_or_default();
    if !name.is_empty() {
        if config
            .apns
            .as_ref()
            .is_some_and(|a| a.topic == name || a.notifier_name == name)
        {
            return Ok(Notifier::Apns);
        }
        if config
            .fcm
            .as_ref()
            .is_some_and(|f| f.service_account.project_id == name || f.notifier_name == name)
        {
            return Ok(Notifier::Fcm);
        }
    }
    Err(ApiError::BadRequest(format!(
        "body.notifier_name must be \"apns\", \"fcm\", or a notifier_name, APNs topic or FCM project id set in the app's push config; not {name:?}"
    )))
}

/// `GET /{org}/{app}/users/{username}/push/binding`: devices and the last push result of each.
pub async fn devices(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    let devices = state.store.push_devices(&caller.app.id, &username).await?;
    Ok(Json(json!({"entities": devices, "count": devices.len()})))
}

/// `DELETE /{org}/{app}/users/{username}/push/binding/{device_id}`
pub async fn unbind(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    Path((_, _, _, device)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.store.unbind_push(&caller.app.id, &username, &device).await?;
    Ok(Json(json!({"data": {"device_id": device, "unbound": true}})))
}

/// `GET` / `PUT /{org}/{app}/users/{username}/push/dnd`
pub async fn get_dnd(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"data": state.store.dnd(&caller.app.id, &username).await?})))
}

pub async fn put_dnd(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let dnd: Dnd = parse_json(&body)?;
    state.store.set_dnd(&caller.app.id, &username, &dnd).await?;
    Ok(Json(json!({"data": dnd})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mute {
    conv: String,
    muted: bool,
}

/// `PUT /{org}/{app}/users/{username}/push/mute` with `{"conv","muted"}`; `GET` lists them.
pub async fn put_mute(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let m: Mute = parse_json(&body)?;
    state
        .store
        .set_conversation_muted(&caller.app.id, &username, &m.conv, m.muted)
        .await?;
    get_mute(State(state), Owner { caller, user: username }).await
}

pub async fn get_mute(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    let muted = state.store.muted_conversations(&caller.app.id, &username).await?;
    Ok(Json(json!({"entities": muted, "count": muted.len()})))
}

/// `PUT /{org}/{app}/push/config` (app token): FCM and APNs credentials and the template.
/// Sections present (`template`, `fcm`, `apns`) replace the stored ones, `null` removes one,
/// absent ones stay. `GET` shows it without secrets.
pub async fn put_config(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let patch: Value = parse_json(&body)?;
    let patch = patch
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("the push config is a JSON object".into()))?;
    let mut merged = state.store.push_config(&caller.app.id).await?;
    if !merged.is_object() {
        merged = json!({});
    }
    for (section, value) in patch {
        if value.is_null() {
            merged.as_object_mut().map(|m| m.remove(section));
        } else {
            merged[section] = value.clone();
        }
    }
    let config = push::PushConfig::parse(&merged).map_err(ApiError::BadRequest)?;
    state
        .store
        .set_push_config(
            &caller.app.id,
            &serde_json::to_value(&config).map_err(|e| ApiError::Internal(e.to_string()))?,
        )
        .await?;
    Ok(Json(json!({"data": config.redacted()})))
}

pub async fn get_config(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let stored = state.store.push_config(&caller.app.id).await?;
    let config: push::PushConfig = serde_json::from_value(stored).unwrap_or_default();
    Ok(Json(json!({"data": config.redacted()})))
}

#[derive(Deserialize)]
struct PushMessage {
    #[serde(default)]
    title: String,
    #[serde(default)]
    content: String,
    /// Data for the app on the device (an object of strings, numbers, booleans).
    #[serde(default)]
    ext: Option<serde_json::Map<String, Value>>,
    // Other fields (`subTitle`, the platform's per-vendor sections such as `vivo`) are
    // accepted and not used: chatd sends through FCM and APNs only.
}

#[derive(Deserialize)]
struct SinglePush {
    targets: Vec<String>,
    #[serde(rename = "pushMessage")]
    push_message: PushMessage,
    /// The platform's provider strategy; chatd always uses the devices' own providers.
    #[serde(default, rename = "strategy")]
    _strategy: Option<Value>,
}

/// `POST /{org}/{app}/push/single` (app token): a notification (not a message) to up to 100
/// users, queued for each of their bound devices and sent by the push worker; each target
/// answered `ASYNC_SUCCESS`, or `FAIL` with why (no such user, no device bound, silenced by
/// the user's do-not-disturb).
pub async fn send_single(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let req: SinglePush = parse_json(&body)?;
    if req.targets.is_empty() || req.targets.len() > 100 {
        return Err(ApiError::BadRequest("body.targets names 1 to 100 users".into()));
    }
    let message = &req.push_message;
    if message.title.is_empty() && message.content.is_empty() {
        return Err(ApiError::BadRequest(
            "body.pushMessage needs a title or a content".into(),
        ));
    }
    if message.title.len() > 1024 || message.content.len() > 4096 {
        return Err(ApiError::BadRequest(
            "body.pushMessage: the title takes at most 1 KiB, the content 4 KiB".into(),
        ));
    }
    let data = Value::Object(message.ext.clone().unwrap_or_default());
    if data.to_string().len() > 4096 {
        return Err(ApiError::BadRequest("body.pushMessage.ext takes at most 4 KiB".into()));
    }
    let app_id = &caller.app.id;
    let now = store::now_ms();
    let mut answers = Vec::with_capacity(req.targets.len());
    for target in &req.targets {
        let user = target.trim().to_ascii_lowercase();
        let fail = |why: &str| json!({"id": target, "pushStatus": "FAIL", "desc": why});
        if !state.store.user_exists(app_id, &user).await? {
            answers.push(fail("no such user"));
            continue;
        }
        if state.store.dnd(app_id, &user).await?.silences(now) {
            answers.push(fail("silenced by the user's do-not-disturb"));
            continue;
        }
        let badge = state.store.total_unread(app_id, &user).await?;
        let push = json!({"title": message.title, "body": message.content, "badge": badge, "data": data});
        match state.store.enqueue_pushes(app_id, &user, &push).await? {
            0 => answers.push(fail("no push binding")),
            _ => answers.push(json!({"id": target, "pushStatus": "ASYNC_SUCCESS", "desc": "async success"})),
        }
    }
    Ok(Json(json!({"data": answers})))
}

/// The setting a `/notification/{chattype}/{key}` route names: the app level (`user` and
/// the user's own name) or a conversation (`user` and a peer, `chatgroup` and a group).
async fn notification_target(
    state: &AppState,
    caller: &Caller,
    user: &str,
    chattype: &str,
    key: &str,
) -> Result<String, ApiError> {
    // The platform answers an unknown user with 400 on these routes.
    if !state.store.user_exists(&caller.app.id, user).await? {
        return Err(ApiError::BadRequest(format!(
            "Entity user requires a property named username: no user {user}"
        )));
    }
    let key = key.trim();
    match chattype {
        "user" if key.eq_ignore_ascii_case(user) => Ok(String::new()),
        "user" => {
            let peer = key.to_ascii_lowercase();
            state.store.require_users(&caller.app.id, &[&peer]).await?;
            Ok(store::messages::user_conv(user, &peer))
        }
        "chatgroup" => {
            state
                .store
                .channel(&caller.app.id, store::channels::ChannelKind::Group, key)
                .await?;
            Ok(format!("g:{key}"))
        }
        other => Err(ApiError::BadRequest(format!(
            "parameters is invalid: the chat type is user or chatgroup, not {other:?}"
        ))),
    }
}

/// A setting as the platform answers it: what is set (`ignoreDuration` as the time the
/// silence ends, in ms).
fn notification_answer(setting: &Setting, now: i64) -> Value {
    let mut data = serde_json::Map::new();
    if let Some(mode) = setting.mode {
        data.insert("type".into(), json!(mode.as_str()));
    }
    if let Some(quiet) = setting.quiet {
        data.insert(
            "ignoreInterval".into(),
            json!(store::notification::format_interval(quiet)),
        );
    }
    if setting.ignore_until > now {
        data.insert("ignoreDuration".into(), json!(setting.ignore_until));
    }
    json!({"data": data})
}

/// `GET /{org}/{app}/users/{username}/notification/{chattype}/{key}` (app, self).
pub async fn get_notification(
    State(state): State<AppState>,
    Owner { caller, user }: Owner,
    Path((_, _, _, chattype, key)): Path<(String, String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let target = notification_target(&state, &caller, &user, &chattype, &key).await?;
    let setting = state.store.notification_setting(&caller.app.id, &user, &target).await?;
    Ok(Json(notification_answer(&setting, store::now_ms())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationBody {
    #[serde(default, rename = "type")]
    mode: Option<String>,
    #[serde(default, rename = "ignoreInterval")]
    ignore_interval: Option<String>,
    #[serde(default, rename = "ignoreDuration")]
    ignore_duration: Option<i64>,
}

/// `PUT /{org}/{app}/users/{username}/notification/{chattype}/{key}` (app, self) with any of
/// `type` (`ALL`, `AT`, `NONE`; `DEFAULT` for a conversation), `ignoreInterval`
/// (`"HH:MM-HH:MM"` in the user's do-not-disturb time zone, app level only; `""` clears)
/// and `ignoreDuration` (ms from now, at most 7 days; 0 clears). Fields left out stay.
pub async fn put_notification(
    State(state): State<AppState>,
    Owner { caller, user }: Owner,
    Path((_, _, _, chattype, key)): Path<(String, String, String, String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let target = notification_target(&state, &caller, &user, &chattype, &key).await?;
    let body: NotificationBody = parse_json(&body)?;
    let invalid = |why: &str| ApiError::BadRequest(format!("parameters is invalid: {why}"));
    let app_level = target.is_empty();
    let mut setting = state.store.notification_setting(&caller.app.id, &user, &target).await?;
    if let Some(mode) = body.mode {
        let mode =
            Mode::parse(&mode).ok_or_else(|| invalid("body.type is ALL, AT, NONE or (for a conversation) DEFAULT"))?;
        if mode == Mode::Default && app_level {
            return Err(invalid(
                "body.type DEFAULT is for a conversation; the app level is ALL, AT or NONE",
            ));
        }
        setting.mode = Some(mode);
    }
    if let Some(interval) = body.ignore_interval {
        if !app_level {
            return Err(invalid(
                "body.ignoreInterval is set for the app level (chattype user, key the user)",
            ));
        }
        setting.quiet = match interval.trim() {
            "" => None,
            text => Some(
                store::notification::parse_interval(text)
                    .ok_or_else(|| invalid("body.ignoreInterval is \"HH:MM-HH:MM\""))?,
            ),
        };
    }
    let now = store::now_ms();
    if let Some(ms) = body.ignore_duration {
        if !(0..=store::notification::MAX_IGNORE_MS).contains(&ms) {
            return Err(invalid("body.ignoreDuration is 0 to 604800000 ms"));
        }
        setting.ignore_until = if ms == 0 { 0 } else { now + ms };
    }
    state
        .store
        .set_notification_setting(&caller.app.id, &user, &target, &setting)
        .await?;
    Ok(Json(notification_answer(&setting, now)))
}

/// `GET /{org}/{app}/push/stats` (app token): this process's counters per provider, and the
/// queue's length.
pub async fn stats(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let queued = state.store.queued_pushes().await?;
    Ok(Json(
        json!({"data": {"counters": push::stats::snapshot(), "queued": queued}}),
    ))
}
