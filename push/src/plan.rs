//! Deciding who gets a push for a stored message, and queueing it.

use serde_json::{json, Value};

use crate::config::{PushConfig, Template};
use store::channels::ChannelKind;
use store::live::Live;
use store::messages::StoredMessage;
use store::Store;

/// Plans the pushes of one stored message, found by id, for `recipients`: the users whose
/// inbox holds it and who have a push device ([`Store::holders_with_push_devices`]).
pub async fn plan_stored(
    store: &Store,
    live: &dyn Live,
    message_id: &str,
    recipients: &[String],
) -> store::Result<usize> {
    let (app_id, msg) = match store.message_by_id(message_id).await {
        Ok(found) => found,
        // Gone since (its app's data deleted): nothing to push.
        Err(store::Error::NotFound(_)) => return Ok(0),
        Err(e) => return Err(e),
    };
    let app = store.app_by_id(&app_id).await?;
    plan(store, live, &app.org, &app.name, &app_id, &msg, recipients).await
}

/// Queues pushes for a message just stored: one per device token of each recipient with
/// no connected device, unless do-not-disturb, a muted conversation or the user's
/// notification settings (`store::notification`) say otherwise.
/// Chatroom and `cmd` messages never push. Returns how many pushes were queued.
pub async fn plan(
    store: &Store,
    live: &dyn Live,
    org: &str,
    app: &str,
    app_id: &str,
    msg: &StoredMessage,
    recipients: &[String],
) -> store::Result<usize> {
    if msg.chat == "room" || msg.kind == "cmd" {
        return Ok(0);
    }
    let mut candidates = Vec::new();
    for user in recipients.iter().filter(|u| **u != msg.sender) {
        if live.is_online(org, app, user) {
            continue;
        }
        candidates.push(user.clone());
    }
    if candidates.is_empty() {
        return Ok(0);
    }
    let config = store.push_config(app_id).await?;
    let template = serde_json::from_value::<PushConfig>(config)
        .map(|c| c.template)
        .unwrap_or_default();
    let from = store
        .get_user(app_id, &msg.sender)
        .await
        .ok()
        .and_then(|u| u.nickname)
        .unwrap_or_else(|| msg.sender.clone());
    let group = if msg.chat == "group" {
        store
            .channel(app_id, ChannelKind::Group, &msg.recipient)
            .await
            .map(|c| c.name)
            .unwrap_or_default()
    } else {
        String::new()
    };
    let now = store::now_ms();
    let mut queued = 0;
    for user in candidates {
        if store.push_devices(app_id, &user).await?.is_empty() {
            continue;
        }
        let dnd = store.dnd(app_id, &user).await?;
        let local_minute = (now / 60_000 + dnd.utc_offset_minutes).rem_euclid(1440);
        if dnd.silences(now)
            || store.is_conversation_muted(app_id, &user, &msg.conv).await?
            || store
                .notification_silences(app_id, &user, &msg.conv, msg.ext.as_deref(), now, local_minute)
                .await?
        {
            continue;
        }
        let badge = store.total_unread(app_id, &user).await?;
        let push = render(&template, msg, &from, &group, badge);
        queued += store.enqueue_pushes(app_id, &user, &push).await?;
    }
    Ok(queued)
}

/// Builds a push from the template.
pub fn render(template: &Template, msg: &StoredMessage, from: &str, group: &str, badge: i64) -> Value {
    let preview = if template.show_preview {
        preview(msg)
    } else {
        String::new()
    };
    let fill = |pattern: &str| {
        pattern
            .replace("{from}", from)
            .replace("{group}", group)
            .replace("{preview}", &preview)
    };
    let title = if msg.chat == "group" {
        fill(&template.group_title)
    } else {
        fill(&template.title)
    };
    let body = if template.show_preview {
        fill(&template.body)
    } else {
        template.hidden_body.clone()
    };
    json!({
        "title": title,
        "body": body,
        "badge": badge,
        "data": {"conv": msg.conv, "id": msg.id, "seq": msg.seq, "from": msg.sender, "chat": msg.chat},
    })
}

/// A short preview: the text of a text message, a word for the others. A self-destructing
/// message's text never goes into a notification, which would outlive it on the device.
fn preview(msg: &StoredMessage) -> String {
    if msg.destroy.is_some() {
        return "[self-destructing message]".into();
    }
    let body: Value = serde_json::from_str(&msg.body).unwrap_or(Value::Null);
    match msg.kind.as_str() {
        "txt" => {
            let text = body["msg"].as_str().unwrap_or_default();
            let mut short: String = text.chars().take(100).collect();
            if text.chars().count() > 100 {
                short.push('…');
            }
            short
        }
        "img" => "[image]".into(),
        "audio" => "[voice]".into(),
        "video" => "[video]".into(),
        "file" => "[file]".into(),
        "loc" => "[location]".into(),
        _ => "[message]".into(),
    }
}
