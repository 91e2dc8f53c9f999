//! `GET /{org}/{app}/chatmessages/{time}` (app token): the platform's hourly message export.
//! `time` is an hour in UTC, `YYYYMMDDHH`; the answer is the URL of a gzip file of the
//! app's messages stored in that hour, one JSON object per line in the platform's export
//! format (`msg_id`, `timestamp`, `from`, `to`, `chat_type`, `payload.bodies`, `payload.ext`).
//! The hour under way gives what has been stored of it so far; an hour with no messages
//! gives an empty list; recalled and self-destructed messages are exported without a body.
//!
//! The file is kept in the file store as a chatfile of the app, readable with the
//! `share-secret` in its URL, and removed by the sweeper after `files.orphan_after_secs`
//! like any file nothing refers to. An export holds at most [`MAX_EXPORT`] messages
//! (`"truncated": true` says when there were more).

use std::io::Write;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::{ApiError, AppState};
use store::files::Chatfile;
use store::messages::StoredMessage;

/// The most messages one export file holds.
pub const MAX_EXPORT: i64 = 100_000;

const HOUR_MS: i64 = 3_600_000;

/// `GET /{org}/{app}/chatmessages/{time}` (app token): the messages of the UTC hour `time`
/// (`YYYYMMDDHH`), as the URL of a gzip file of JSON lines.
///
/// The file is readable with the `share-secret` in its URL for `files.orphan_after_secs`.
/// An hour with no messages answers an empty `data`.
#[utoipa::path(get, path = "/{org}/{app}/chatmessages/{time}", tag = "messages",
    responses((status = 200, description = "`data`: the export file's URL (none when the hour has no messages)",
        body = schema::MessageExport)))]
pub async fn hour(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, time)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_app()?;
    let from = hour_start_ms(&time).ok_or_else(|| {
        ApiError::BadRequest(format!("the hour is YYYYMMDDHH in UTC (e.g. 2026113014), not {time:?}"))
    })?;
    // The hour under way may be exported: what has been stored of it so far.
    if from > store::now_ms() {
        return Err(ApiError::BadRequest(format!("the hour {time} has not begun")));
    }
    let app = &caller.app;
    let mut msgs = state
        .store
        .messages_between(&app.id, from, from + HOUR_MS, MAX_EXPORT + 1)
        .await?;
    let truncated = msgs.len() as i64 > MAX_EXPORT;
    msgs.truncate(MAX_EXPORT as usize);
    if msgs.is_empty() {
        return Ok(Json(json!({"data": [], "count": 0})));
    }
    let count = msgs.len();
    let gz = tokio::task::spawn_blocking(move || gzip_lines(&msgs))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("compressing the export: {e}")))?;
    let file = Chatfile {
        id: uuid::Uuid::new_v4().to_string(),
        app_id: app.id.clone(),
        owner: String::new(),
        secret: store::tokens::random_secret(24),
        filename: format!("{time}.gz"),
        content_type: "application/gzip".into(),
        size: gz.len() as i64,
        width: 0,
        height: 0,
        thumb_type: String::new(),
        thumb_size: 0,
        created_at: store::now_ms(),
    };
    state
        .files
        .store
        .put(&file.object_key(), gz.into())
        .await
        .map_err(|e| ApiError::Internal(format!("storing the export: {e}")))?;
    state.store.create_chatfile(&file).await?;
    let url = format!(
        "{}?share-secret={}",
        state.files.links.url(&app.org, &app.name, &file.id),
        file.secret
    );
    Ok(Json(
        json!({"data": [{"url": url}], "count": count, "truncated": truncated}),
    ))
}

/// The platform's export record of one message.
fn record(msg: &StoredMessage) -> Value {
    let chat_type = match msg.chat.as_str() {
        "group" => "groupchat",
        "room" => "chatroom",
        _ => "chat",
    };
    let mut body: Value = serde_json::from_str(&msg.body).unwrap_or(Value::Null);
    if msg.recalled || msg.destroyed {
        body = Value::Null;
    }
    if let Value::Object(fields) = &mut body {
        fields.insert("type".into(), json!(msg.kind));
    }
    let ext: Value = msg
        .ext
        .as_deref()
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or_else(|| json!({}));
    json!({
        "msg_id": msg.id,
        "timestamp": msg.ts,
        "direction": "outgoing",
        "from": msg.sender,
        "to": msg.recipient,
        "chat_type": chat_type,
        "payload": {"bodies": [body], "ext": ext, "from": msg.sender, "to": msg.recipient},
    })
}

fn gzip_lines(msgs: &[StoredMessage]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for msg in msgs {
        serde_json::to_writer(&mut gz, &record(msg))?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

/// The first millisecond of the UTC hour `YYYYMMDDHH`, or `None` if it is no such hour.
fn hour_start_ms(time: &str) -> Option<i64> {
    if time.len() != 10 || !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| time[range].parse::<i64>().ok();
    let (year, month, day, hour) = (field(0..4)?, field(4..6)?, field(6..8)?, field(8..10)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || hour > 23 {
        return None;
    }
    if day < 1 || day > days_in_month[(month - 1) as usize] {
        return None;
    }
    Some((days_from_civil(year, month, day) * 24 + hour) * HOUR_MS)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(hour))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    /// Where an export file is.
    #[derive(ToSchema)]
    pub struct MessageExportFile {
        /// The gzip file's URL, with its `share-secret`.
        url: String,
    }

    /// An hour's export.
    #[derive(ToSchema)]
    pub struct MessageExport {
        /// One file, or none when the hour has no messages.
        data: Vec<MessageExportFile>,
        /// The messages in the file.
        count: u64,
        /// Whether the hour had more messages than one export holds (100,000); absent when
        /// the hour has none.
        truncated: Option<bool>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours() {
        assert_eq!(hour_start_ms("1970010100"), Some(0));
        assert_eq!(hour_start_ms("1970010201"), Some(25 * HOUR_MS));
        // 2026-11-30T14:00:00Z
        assert_eq!(hour_start_ms("2026113014"), Some(1_796_047_200_000));
        assert_eq!(hour_start_ms("2024022900"), Some(1_709_164_800_000));
        for bad in [
            "2023022900",
            "2026113024",
            "2026130100",
            "202611301",
            "20261130aa",
            "1969123123",
        ] {
            assert_eq!(hour_start_ms(bad), None, "{bad}");
        }
    }
}
