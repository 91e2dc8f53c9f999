//! Push notifications over REST: device bindings, do-not-disturb, muted conversations, the
//! app's credentials and template, and counters.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Owner};
use crate::error::{parse_json, JsonBody};
use crate::{ApiError, AppState};
use store::notification::{Mode, Setting};
use store::push::{Dnd, Notifier};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PushBinding)]
struct Binding {
    /// The device: 1 to 128 printable characters.
    device_id: String,
    /// The provider's token for the device (at most 4096 bytes); an empty token unbinds the
    /// device.
    device_token: String,
    /// `apns` or `fcm`; or, as on the platform where it names an uploaded certificate, the
    /// app's APNs topic (bundle id) or FCM project id as set in `push/config`.
    #[serde(default)]
    notifier_name: String,
}

/// `PUT /{org}/{app}/users/{username}/push/binding`: binds a device's push token (or, with an
/// empty token, unbinds the device); a user keeps at most 20 bindings.
#[utoipa::path(put, path = "/{org}/{app}/users/{username}/push/binding", tag = "push", request_body = Binding,
    responses((status = 200, description = "The user's devices after the change", body = schema::PushDevices)))]
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
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/push/binding", tag = "push",
    responses((status = 200, description = "The user's devices, by id", body = schema::PushDevices)))]
pub async fn devices(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    let devices = state.store.push_devices(&caller.app.id, &username).await?;
    Ok(Json(json!({"entities": devices, "count": devices.len()})))
}

/// `DELETE /{org}/{app}/users/{username}/push/binding/{device}`
#[utoipa::path(delete, path = "/{org}/{app}/users/{username}/push/binding/{device}", tag = "push",
    responses((status = 200, description = "The device's binding is removed", body = schema::PushUnbound)))]
pub async fn unbind(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    Path((_, _, _, device)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.store.unbind_push(&caller.app.id, &username, &device).await?;
    Ok(Json(json!({"data": {"device_id": device, "unbound": true}})))
}

/// `GET /{org}/{app}/users/{username}/push/dnd`: the user's do-not-disturb.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/push/dnd", tag = "push",
    responses((status = 200, description = "`data`: the user's do-not-disturb", body = schema::PushDndAnswer)))]
pub async fn get_dnd(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"data": state.store.dnd(&caller.app.id, &username).await?})))
}

/// `PUT /{org}/{app}/users/{username}/push/dnd`: replaces the user's do-not-disturb (fields
/// left out are false or 0).
#[utoipa::path(put, path = "/{org}/{app}/users/{username}/push/dnd", tag = "push", request_body = schema::PushDndBody,
    responses((status = 200, description = "`data`: the do-not-disturb as set", body = schema::PushDndAnswer)))]
pub async fn put_dnd(
    State(state): State<AppState>,
    Owner { caller, user: username }: Owner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let dnd: Dnd = parse_json(&body)?;
    state.store.set_dnd(&caller.app.id, &username, &dnd).await?;
    Ok(Json(json!({"data": dnd})))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PushMuteBody)]
struct Mute {
    /// A conversation of the user's (as their conversation list names it).
    conv: String,
    /// True mutes its pushes, false unmutes them.
    muted: bool,
}

/// `PUT /{org}/{app}/users/{username}/push/mute` with `{"conv","muted"}`; `GET` lists them.
#[utoipa::path(put, path = "/{org}/{app}/users/{username}/push/mute", tag = "push", request_body = Mute,
    responses((status = 200, description = "`entities`: the user's muted conversations after the change", body = schema::PushMuted)))]
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

/// `GET /{org}/{app}/users/{username}/push/mute`: the conversations whose pushes the user muted.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/push/mute", tag = "push",
    responses((status = 200, description = "`entities`: the user's muted conversations, in order", body = schema::PushMuted)))]
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
#[utoipa::path(put, path = "/{org}/{app}/push/config", tag = "push", request_body = schema::PushConfigPatch,
    responses((status = 200, description = "`data`: the push config as changed, without its secrets", body = schema::PushConfigAnswer)))]
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

/// `GET /{org}/{app}/push/config` (app token): the push config without its secrets.
#[utoipa::path(get, path = "/{org}/{app}/push/config", tag = "push",
    responses((status = 200, description = "`data`: the push config, without its secrets", body = schema::PushConfigAnswer)))]
pub async fn get_config(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let stored = state.store.push_config(&caller.app.id).await?;
    let config: push::PushConfig = serde_json::from_value(stored).unwrap_or_default();
    Ok(Json(json!({"data": config.redacted()})))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = SinglePushMessage)]
struct PushMessage {
    /// At most 1 KiB; a title or a content is needed.
    #[serde(default)]
    title: String,
    /// At most 4 KiB.
    #[serde(default)]
    content: String,
    /// Data for the app on the device (an object of strings, numbers, booleans; at most 4 KiB
    /// as JSON).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    ext: Option<serde_json::Map<String, Value>>,
    // Other fields (`subTitle`, the platform's per-vendor sections such as `vivo`) are
    // accepted and not used: chatd sends through FCM and APNs only.
}

#[derive(Deserialize, ToSchema)]
struct SinglePush {
    /// The users: 1 to 100 names.
    targets: Vec<String>,
    #[serde(rename = "pushMessage")]
    push_message: PushMessage,
    /// The platform's provider strategy: accepted and ignored (chatd always uses the
    /// devices' own providers).
    #[serde(default, rename = "strategy")]
    _strategy: Option<Value>,
}

/// `POST /{org}/{app}/push/single` (app token): a notification (not a message) to up to 100
/// users, queued for each of their bound devices and sent by the push worker; each target
/// answered `ASYNC_SUCCESS`, or `FAIL` with why (no such user, no device bound, silenced by
/// the user's do-not-disturb).
#[utoipa::path(post, path = "/{org}/{app}/push/single", tag = "push", request_body = SinglePush,
    responses((status = 200, description = "`data`: one result per target, in order", body = schema::PushSingleResults)))]
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
    let mut seen = Vec::with_capacity(req.targets.len());
    for target in &req.targets {
        let user = target.trim().to_ascii_lowercase();
        // A user named twice gets one push, and one answer.
        if seen.contains(&user) {
            continue;
        }
        seen.push(user.clone());
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

/// `GET /{org}/{app}/users/{username}/notification/{chattype}/{key}` (app, self): `chattype`
/// `user` with `key` the user's own name for the app level, `user` and a peer's name or
/// `chatgroup` and a group id for a conversation.
#[utoipa::path(get, path = "/{org}/{app}/users/{username}/notification/{chattype}/{key}", tag = "push",
    responses((status = 200, description = "`data`: what is set (fields not set are absent)", body = schema::NotificationSettingAnswer)))]
pub async fn get_notification(
    State(state): State<AppState>,
    Owner { caller, user }: Owner,
    Path((_, _, _, chattype, key)): Path<(String, String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let target = notification_target(&state, &caller, &user, &chattype, &key).await?;
    let setting = state.store.notification_setting(&caller.app.id, &user, &target).await?;
    Ok(Json(notification_answer(&setting, store::now_ms())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NotificationSettingBody)]
struct NotificationBody {
    /// `ALL`, `AT`, `NONE`; `DEFAULT` (follow the app level) for a conversation only.
    #[serde(default, rename = "type")]
    mode: Option<String>,
    /// `"HH:MM-HH:MM"` in the user's do-not-disturb time zone, app level only; `""` clears.
    #[serde(default, rename = "ignoreInterval")]
    ignore_interval: Option<String>,
    /// Silence for this many ms from now: 0 (clears) to 604800000 (7 days).
    #[serde(default, rename = "ignoreDuration")]
    #[schema(minimum = 0, maximum = 604_800_000)]
    ignore_duration: Option<i64>,
}

/// `PUT /{org}/{app}/users/{username}/notification/{chattype}/{key}` (app, self) with any of
/// `type` (`ALL`, `AT`, `NONE`; `DEFAULT` for a conversation), `ignoreInterval`
/// (`"HH:MM-HH:MM"` in the user's do-not-disturb time zone, app level only; `""` clears)
/// and `ignoreDuration` (ms from now, at most 7 days; 0 clears). Fields left out stay.
#[utoipa::path(put, path = "/{org}/{app}/users/{username}/notification/{chattype}/{key}", tag = "push",
    request_body = NotificationBody,
    responses((status = 200, description = "`data`: what is set after the change", body = schema::NotificationSettingAnswer)))]
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
#[utoipa::path(get, path = "/{org}/{app}/push/stats", tag = "push",
    responses((status = 200, description = "`data`: this process's counters and the queue's length", body = schema::PushStats)))]
pub async fn stats(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let queued = state.store.queued_pushes().await?;
    Ok(Json(
        json!({"data": {"counters": push::stats::snapshot(), "queued": queued}}),
    ))
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(devices, bind))
        .routes(routes!(unbind))
        .routes(routes!(get_dnd, put_dnd))
        .routes(routes!(get_mute, put_mute))
        .routes(routes!(get_config, put_config))
        .routes(routes!(stats))
        .routes(routes!(send_single))
        .routes(routes!(get_notification, put_notification))
}

/// The answers' shapes (and the bodies parsed by other crates' types), for the OpenAPI
/// document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    /// A bound device (`store::push::PushDevice`).
    #[derive(ToSchema)]
    pub struct PushDevice {
        device_id: String,
        /// `apns` or `fcm`.
        notifier_name: String,
        device_token: String,
        /// When it was bound, in ms since 1970.
        created: i64,
        /// `none` until a push was tried; then `sent`, `retrying: …`, `failed: …`.
        last_result: String,
        /// When the last push was tried, in ms since 1970 (0: never).
        last_at: i64,
    }

    /// `entities`: the user's devices.
    #[derive(ToSchema)]
    pub struct PushDevices {
        entities: Vec<PushDevice>,
        count: u64,
    }

    #[derive(ToSchema)]
    pub struct PushUnboundData {
        device_id: String,
        unbound: bool,
    }

    /// `data`: the device unbound.
    #[derive(ToSchema)]
    pub struct PushUnbound {
        data: PushUnboundData,
    }

    /// A user's do-not-disturb (`store::push::Dnd`): everything off, or quiet hours in their
    /// time zone.
    #[derive(ToSchema)]
    pub struct PushDnd {
        all_off: bool,
        /// Quiet from here, minutes after local midnight (equal to `quiet_end`: no quiet hours).
        quiet_start: i64,
        /// … to here; a window may wrap midnight.
        quiet_end: i64,
        /// The user's time zone, minutes east of UTC.
        utc_offset_minutes: i64,
    }

    /// `data`: the do-not-disturb.
    #[derive(ToSchema)]
    pub struct PushDndAnswer {
        data: PushDnd,
    }

    /// A do-not-disturb to set; fields left out are false or 0.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PushDndBody {
        /// No pushes at all.
        #[serde(default)]
        all_off: bool,
        /// Quiet from here, minutes after local midnight (equal to `quiet_end`: no quiet hours).
        #[serde(default)]
        #[schema(minimum = 0, maximum = 1439)]
        quiet_start: i64,
        /// … to here; a window may wrap midnight (22:00-07:00 is 1320-420).
        #[serde(default)]
        #[schema(minimum = 0, maximum = 1439)]
        quiet_end: i64,
        /// The user's time zone, minutes east of UTC.
        #[serde(default)]
        #[schema(minimum = -840, maximum = 840)]
        utc_offset_minutes: i64,
    }

    /// `entities`: the user's muted conversations.
    #[derive(ToSchema)]
    pub struct PushMuted {
        entities: Vec<String>,
        count: u64,
    }

    /// How a push reads. Placeholders: `{from}`, `{group}`, `{preview}`.
    #[derive(ToSchema)]
    pub struct PushTemplate {
        title: String,
        group_title: String,
        body: String,
        show_preview: bool,
        /// The body when previews are off.
        hidden_body: String,
    }

    /// FCM's credentials, without the private key.
    #[derive(ToSchema)]
    pub struct PushFcmView {
        project_id: String,
        client_email: String,
        token_uri: String,
        /// `""` when none.
        notifier_name: String,
    }

    /// APNs's credentials, without the key.
    #[derive(ToSchema)]
    pub struct PushApnsView {
        key_id: String,
        team_id: String,
        topic: String,
        sandbox: bool,
        /// `""` when none.
        notifier_name: String,
    }

    /// The app's push config without its secrets; `fcm`, `apns`: `null` when not set.
    #[derive(ToSchema)]
    pub struct PushConfigView {
        template: PushTemplate,
        fcm: Option<PushFcmView>,
        apns: Option<PushApnsView>,
    }

    /// `data`: the push config.
    #[derive(ToSchema)]
    pub struct PushConfigAnswer {
        data: PushConfigView,
    }

    /// A template to set; fields left out take their defaults.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PushTemplateBody {
        /// Default `{from}`.
        #[serde(default)]
        title: String,
        /// Default `{from} in {group}`.
        #[serde(default)]
        group_title: String,
        /// Default `{preview}`.
        #[serde(default)]
        body: String,
        /// Default true.
        #[serde(default)]
        show_preview: bool,
        /// Default `New message`.
        #[serde(default)]
        hidden_body: String,
    }

    /// A Google service-account key, as the JSON file is downloaded (its other fields are
    /// kept as they are).
    #[derive(ToSchema)]
    pub struct PushServiceAccount {
        /// Letters, digits, `-`, `_`, `.` and `:`.
        project_id: String,
        client_email: String,
        /// The RSA key, PEM.
        private_key: String,
        /// `https://oauth2.googleapis.com/token` (Google's, as in every key file) or absent.
        #[serde(default)]
        token_uri: String,
    }

    /// FCM HTTP v1 credentials.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PushFcmBody {
        service_account: PushServiceAccount,
        /// The `notifier_name` devices bind with (`fcm` and the project id always work).
        #[serde(default)]
        notifier_name: String,
    }

    /// APNs token authentication.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PushApnsBody {
        /// The `.p8` key, PEM.
        key_pem: String,
        key_id: String,
        team_id: String,
        /// The app's bundle id.
        topic: String,
        #[serde(default)]
        sandbox: bool,
        /// The `notifier_name` devices bind with (`apns` and the topic always work).
        #[serde(default)]
        notifier_name: String,
    }

    /// Sections to change: each one present replaces the stored one, `null` removes it, those
    /// left out stay.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PushConfigPatch {
        /// `null`: back to the default template.
        #[serde(default)]
        template: Option<PushTemplateBody>,
        #[serde(default)]
        fcm: Option<PushFcmBody>,
        #[serde(default)]
        apns: Option<PushApnsBody>,
    }

    /// One provider's counters since the process started.
    #[derive(ToSchema)]
    pub struct PushCounters {
        sent: u64,
        failed: u64,
        /// Not sent because the recipient came online first.
        dropped: u64,
        retried: u64,
    }

    #[derive(ToSchema)]
    pub struct PushCountersByProvider {
        apns: PushCounters,
        fcm: PushCounters,
    }

    #[derive(ToSchema)]
    pub struct PushStatsData {
        counters: PushCountersByProvider,
        /// Pushes waiting in the queue (all apps).
        queued: i64,
    }

    /// `data`: counters and the queue's length.
    #[derive(ToSchema)]
    pub struct PushStats {
        data: PushStatsData,
    }

    /// What became of one target.
    #[derive(ToSchema)]
    pub struct PushSingleResult {
        /// The target as named in the request.
        id: String,
        /// `ASYNC_SUCCESS` (queued) or `FAIL`.
        #[serde(rename = "pushStatus")]
        push_status: String,
        /// Why it failed, or `async success`.
        desc: String,
    }

    /// `data`: one result per target.
    #[derive(ToSchema)]
    pub struct PushSingleResults {
        data: Vec<PushSingleResult>,
    }

    /// A notification setting: only what is set.
    #[derive(ToSchema)]
    pub struct NotificationSetting {
        /// `ALL`, `AT`, `NONE` or `DEFAULT`.
        #[serde(rename = "type")]
        mode: Option<String>,
        /// `"HH:MM-HH:MM"`, app level only.
        #[serde(rename = "ignoreInterval")]
        ignore_interval: Option<String>,
        /// When the silence ends, in ms since 1970 (absent when not silenced).
        #[serde(rename = "ignoreDuration")]
        ignore_duration: Option<i64>,
    }

    /// `data`: the setting.
    #[derive(ToSchema)]
    pub struct NotificationSettingAnswer {
        data: NotificationSetting,
    }
}
