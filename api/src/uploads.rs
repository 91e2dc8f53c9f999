//! Resumable uploads, by the tus 1.0 protocol (<https://tus.io/protocols/resumable-upload>)
//! with its `creation`, `termination` and `expiration` extensions, so that tus's own
//! clients (iOS, Android, JavaScript) work unchanged:
//!
//! 1. `POST /{org}/{app}/chatfiles/uploads` with `Upload-Length` (and `Upload-Metadata:
//!    filename <base64>`) → `201`, `Location` of the upload;
//! 2. `PATCH <Location>` with `Upload-Offset` and `Content-Type:
//!    application/offset+octet-stream`: the bytes from that offset → `204` and the new
//!    `Upload-Offset`. A PATCH cut in the middle keeps what arrived;
//! 3. after a cut, `HEAD <Location>` → `Upload-Offset`: the byte to resume from;
//! 4. the PATCH that brings the offset to the length makes the chatfile: its answer carries
//!    `Chatfile-Uuid`, and `GET <Location>` answers the file's entity as the one-shot upload
//!    does.
//!
//! Each PATCH is stored as one object (`uploads/{id}/{offset}-{random}`) and recorded only if
//! the upload still stood at its offset (two PATCHes racing from one offset: one wins, the
//! other gets `409`). The record and the parts are in the database and the file store, so a
//! resumed upload may land on any node. The parts are joined into the file when the last
//! one arrives. Unfinished uploads count against the quota at their declared length, at most
//! `max_open_uploads` per user, and expire `upload_expiry` after their last part.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::files::{answer, clean_filename, entity, record, room_for, too_large, transfer_error, uploader};
use crate::{ApiError, AppState};
use files::OnCut;
use store::files::Upload;

const TUS_VERSION: &str = "1.0.0";

fn tus_headers(headers: &mut HeaderMap) {
    headers.insert("Tus-Resumable", HeaderValue::from_static(TUS_VERSION));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn with_tus(status: StatusCode, extra: &[(&'static str, String)]) -> Response {
    let mut headers = HeaderMap::new();
    tus_headers(&mut headers);
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    (status, headers).into_response()
}

/// Every tus request but OPTIONS must say which version it speaks: the refusal if not.
fn version_refused(headers: &HeaderMap) -> Option<Response> {
    match headers.get("Tus-Resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => None,
        _ => {
            let mut response = ApiError::BadRequest(format!(
                "this server speaks tus {TUS_VERSION}: send 'Tus-Resumable: {TUS_VERSION}'"
            ))
            .into_response();
            *response.status_mut() = StatusCode::PRECONDITION_FAILED;
            response
                .headers_mut()
                .insert("Tus-Version", HeaderValue::from_static(TUS_VERSION));
            Some(response)
        }
    }
}

/// `OPTIONS /{org}/{app}/chatfiles/uploads`: what this server supports (no token needed).
///
/// tus's discovery request: a bare `OPTIONS` (a CORS preflight, with
/// `Access-Control-Request-Method`, is answered before routing).
#[utoipa::path(options, path = "/{org}/{app}/chatfiles/uploads", tag = "files", security(()),
    responses((status = 204, description = "What this server supports",
        headers(
            ("Tus-Resumable" = String, description = "`1.0.0`"),
            ("Tus-Version" = String, description = "`1.0.0`"),
            ("Tus-Extension" = String, description = "`creation,termination,expiration`"),
            ("Tus-Max-Size" = u64, description = "The server's largest file, in bytes (an app may allow less)"),
        ))))]
pub async fn options(State(state): State<AppState>) -> Response {
    with_tus(
        StatusCode::NO_CONTENT,
        &[
            ("Tus-Version", TUS_VERSION.into()),
            ("Tus-Extension", "creation,termination,expiration".into()),
            ("Tus-Max-Size", state.files.settings.max_file_bytes.to_string()),
        ],
    )
}

fn location(state: &AppState, org: &str, app: &str, id: &str) -> String {
    format!("{}/{org}/{app}/chatfiles/uploads/{id}", state.files.links.base())
}

fn expires(state: &AppState, upload: &Upload) -> String {
    let at = upload.updated_at.max(0) as u64 + state.files.settings.upload_expiry.as_millis() as u64;
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(at))
}

/// `filename` from `Upload-Metadata: key base64,key base64`.
fn metadata_filename(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(meta) = headers.get("Upload-Metadata") else {
        return Ok("file".into());
    };
    let meta = meta
        .to_str()
        .map_err(|_| ApiError::BadRequest("Upload-Metadata must be ASCII".into()))?;
    for pair in meta.split(',') {
        let mut words = pair.trim().splitn(2, ' ');
        if words.next() == Some("filename") {
            let encoded = words.next().unwrap_or("").trim();
            let bytes = base64_decode(encoded)
                .ok_or_else(|| ApiError::BadRequest("Upload-Metadata: filename must be base64".into()))?;
            return Ok(clean_filename(&String::from_utf8_lossy(&bytes)));
        }
    }
    Ok("file".into())
}

/// Standard base64, as tus sends it (padded or not), of at most 4 KiB.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
    use base64::Engine;
    const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if text.len() > 4096 {
        return None;
    }
    STANDARD_ANY_PADDING.decode(text).ok()
}

/// `POST /{org}/{app}/chatfiles/uploads`: opens an upload of `Upload-Length` bytes.
///
/// tus `creation`; the body is empty (`Upload-Defer-Length` is not supported). The upload
/// counts against the uploader's quota at its full length until it is finished or expires.
#[utoipa::path(post, path = "/{org}/{app}/chatfiles/uploads", tag = "files",
    params(
        ("Tus-Resumable" = inline(schema::TusVersion), Header, description = "The tus version: `1.0.0` (412 otherwise)"),
        ("Upload-Length" = u64, Header, description = "The file's size in bytes, at least 1"),
        ("Upload-Metadata" = Option<String>, Header,
            description = "`filename <base64 of the name>` (other keys are ignored; default name `file`)"),
    ),
    responses((status = 201, description = "Opened: PATCH its bytes to `Location`",
        headers(
            ("Location" = String, description = "The upload's URL"),
            ("Upload-Expires" = String, description = "When the upload expires without a new part (an HTTP date)"),
            ("Tus-Resumable" = String, description = "`1.0.0`"),
        ))))]
pub async fn create(State(state): State<AppState>, caller: Caller, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(response) = version_refused(&headers) {
        return Ok(response);
    }
    if headers.contains_key("Upload-Defer-Length") {
        return Err(ApiError::BadRequest(
            "Upload-Defer-Length is not supported: send Upload-Length".into(),
        ));
    }
    let length: u64 = headers
        .get("Upload-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::BadRequest("Upload-Length: the file's size in bytes is required".into()))?;
    let filename = metadata_filename(&headers)?;
    let owner = uploader(&caller);
    let (limit, settings) = room_for(&state, &caller.app, &owner).await?;
    if length > limit {
        return Err(too_large(limit, &settings, state.files.settings.max_file_bytes));
    }
    if length == 0 {
        return Err(ApiError::BadRequest("Upload-Length must be at least 1".into()));
    }
    if !owner.is_empty()
        && state.store.open_uploads(&caller.app.id, &owner).await? >= state.files.settings.max_open_uploads
    {
        return Err(ApiError::OutOfStep(format!(
            "you have {} unfinished uploads; finish or delete one first",
            state.files.settings.max_open_uploads
        )));
    }
    let now = store::now_ms();
    let upload = Upload {
        id: uuid::Uuid::new_v4().to_string(),
        app_id: caller.app.id.clone(),
        owner,
        filename,
        length: length as i64,
        received: 0,
        file_id: String::new(),
        created_at: now,
        updated_at: now,
    };
    state.store.create_upload(&upload).await?;
    Ok(with_tus(
        StatusCode::CREATED,
        &[
            (
                "Location",
                location(&state, &caller.app.org, &caller.app.name, &upload.id),
            ),
            ("Upload-Expires", expires(&state, &upload)),
        ],
    ))
}

/// The upload `id` of this app, if the caller may touch it (its uploader, or the app).
async fn own_upload(state: &AppState, caller: &Caller, id: &str) -> Result<Upload, ApiError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::NotFound(format!("upload {id} not found")));
    }
    let upload = state.store.upload(&caller.app.id, id).await?;
    if caller.user.is_some() && caller.user.as_deref() != Some(upload.owner.as_str()) {
        return Err(ApiError::Forbidden("this upload is another user's".into()));
    }
    Ok(upload)
}

/// `HEAD …/uploads/{id}`: where to resume.
///
/// The uploader, or the app.
#[utoipa::path(head, path = "/{org}/{app}/chatfiles/uploads/{id}", tag = "files",
    params(("Tus-Resumable" = inline(schema::TusVersion), Header, description = "The tus version: `1.0.0` (412 otherwise)")),
    responses((status = 200, description = "Where the upload stands (no body)",
        headers(
            ("Upload-Offset" = i64, description = "The bytes received: the next PATCH's `Upload-Offset`"),
            ("Upload-Length" = i64, description = "The file's size"),
            ("Upload-Expires" = String, description = "When the upload expires without a new part (an HTTP date)"),
            ("Chatfile-Uuid" = String, description = "Once complete: the chatfile's id"),
            ("Tus-Resumable" = String, description = "`1.0.0`"),
        ))))]
pub async fn head(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(response) = version_refused(&headers) {
        return Ok(response);
    }
    let upload = own_upload(&state, &caller, &id).await?;
    let mut extra = vec![
        ("Upload-Offset", upload.received.to_string()),
        ("Upload-Length", upload.length.to_string()),
        ("Upload-Expires", expires(&state, &upload)),
    ];
    if !upload.file_id.is_empty() {
        extra.push(("Chatfile-Uuid", upload.file_id.clone()));
    }
    Ok(with_tus(StatusCode::OK, &extra))
}

/// `GET …/uploads/{id}`: the upload's state as JSON, with the chatfile once complete.
///
/// The uploader, or the app.
#[utoipa::path(get, path = "/{org}/{app}/chatfiles/uploads/{id}", tag = "files",
    responses((status = 200, description = "Unfinished: `upload`, `offset`, `length`, `complete` (false); complete: \
        `entities` holds the chatfile, as the one-shot upload answers it", body = schema::UploadStatus)))]
pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let upload = own_upload(&state, &caller, &id).await?;
    if upload.file_id.is_empty() {
        return Ok(Json(json!({
            "upload": upload.id, "offset": upload.received, "length": upload.length, "complete": false,
        })));
    }
    let file = state.store.chatfile(&caller.app.id, &upload.file_id).await?;
    Ok(answer(vec![entity(&state.files.links, &caller.app, &file)]))
}

/// `PATCH …/uploads/{id}`: the bytes from `Upload-Offset`.
///
/// A part cut in the middle keeps what arrived (HEAD tells where to resume); the part that
/// completes the upload makes the chatfile (its type checked, an image's thumbnail made).
/// The uploader, or the app.
#[utoipa::path(patch, path = "/{org}/{app}/chatfiles/uploads/{id}", tag = "files",
    params(
        ("Tus-Resumable" = inline(schema::TusVersion), Header, description = "The tus version: `1.0.0` (412 otherwise)"),
        ("Upload-Offset" = i64, Header, description = "The byte this part starts at: where the upload stands (409 otherwise)"),
    ),
    request_body(content = String, content_type = "application/offset+octet-stream",
        description = "The file's bytes from `Upload-Offset`, at most what is left of its length"),
    responses((status = 204, description = "Stored (no body)",
        headers(
            ("Upload-Offset" = i64, description = "The bytes received now"),
            ("Chatfile-Uuid" = String, description = "When this part completed the upload: the chatfile's id"),
            ("Tus-Resumable" = String, description = "`1.0.0`"),
        ))))]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): Path<(String, String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    if let Some(response) = version_refused(&parts.headers) {
        return Ok(response);
    }
    let kind = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if kind != Some("application/offset+octet-stream") {
        return Err(ApiError::UnsupportedMediaType(
            "a PATCH carries Content-Type: application/offset+octet-stream".into(),
        ));
    }
    let offset: i64 = parts
        .headers
        .get("Upload-Offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::BadRequest("Upload-Offset: the byte this part starts at is required".into()))?;
    let upload = own_upload(&state, &caller, &id).await?;
    let _slot = state.files.caller_slot(&caller)?;
    if offset != upload.received {
        return Err(ApiError::OutOfStep(format!(
            "Upload-Offset is {offset} but the upload stands at {}; resume from there (HEAD tells)",
            upload.received
        )));
    }
    if !upload.file_id.is_empty() {
        return Ok(with_tus(
            StatusCode::NO_CONTENT,
            &[
                ("Upload-Offset", upload.received.to_string()),
                ("Chatfile-Uuid", upload.file_id),
            ],
        ));
    }
    let left = (upload.length - upload.received) as u64;
    let object = format!(
        "uploads/{}/{:020}-{}",
        upload.id,
        offset,
        store::tokens::random_secret(8)
    );
    let written = state
        .files
        .store
        .write(
            &object,
            Body::new(body).into_data_stream(),
            left,
            state.files.settings.chunk_timeout,
            OnCut::Keep,
        )
        .await
        .map_err(|e| match e {
            files::Error::TooLarge { .. } => {
                ApiError::PayloadTooLarge(format!("the upload has {left} bytes left to send; this part is longer"))
            }
            e => ApiError::Internal(e.to_string()),
        })?;
    if written.size == 0 {
        let _ = state.files.store.delete(&object).await;
    } else if !state
        .store
        .add_upload_part(&upload.id, offset, written.size as i64, &object)
        .await?
    {
        let _ = state.files.store.delete(&object).await;
        return Err(ApiError::OutOfStep(
            "another request moved this upload on meanwhile; HEAD tells where it stands".into(),
        ));
    }
    let received = offset + written.size as i64;
    if let Some(why) = &written.cut {
        tracing::debug!(upload = %upload.id, received, %why, "an upload part was cut; kept what arrived");
    }
    let mut extra = vec![("Upload-Offset", received.to_string())];
    if received == upload.length {
        let file_id = finish(&state, &caller, &upload).await?;
        extra.push(("Chatfile-Uuid", file_id));
    }
    Ok(with_tus(StatusCode::NO_CONTENT, &extra))
}

/// Joins a complete upload's parts into its chatfile.
async fn finish(state: &AppState, caller: &Caller, upload: &Upload) -> Result<String, ApiError> {
    let parts = state.store.upload_parts(&upload.id).await?;
    let objects: Vec<String> = parts.iter().map(|p| p.object.clone()).collect();
    let id = uuid::Uuid::new_v4().to_string();
    let key = store::files::object_key(&caller.app.id, &id);
    let settings = state.store.app_settings(&caller.app.id).await?;
    let written = state
        .files
        .store
        .concat(&objects, &key, state.files.settings.chunk_timeout)
        .await
        .map_err(|e| transfer_error(e, upload.length as u64, &settings, state.files.settings.max_file_bytes))?;
    if written.size != upload.length as u64 {
        let _ = state.files.store.delete(&key).await;
        return Err(ApiError::Internal(format!(
            "upload {} joined to {} bytes, not {}",
            upload.id, written.size, upload.length
        )));
    }
    let outcome = record(
        state,
        &caller.app,
        &upload.owner,
        &id,
        upload.filename.clone(),
        &written,
        &settings,
    )
    .await;
    // Refused or not, the parts are done with: a refused file (its type, a bomb) cannot
    // become acceptable by resending the same bytes.
    match &outcome {
        Ok(file) => state.store.finish_upload(&upload.id, &file.id).await?,
        Err(_) => state.store.delete_upload(&upload.id).await?,
    }
    for object in &objects {
        if let Err(e) = state.files.store.delete(object).await {
            tracing::warn!(error = %e, %object, "deleting a joined upload part");
        }
    }
    Ok(outcome?.id)
}

/// `DELETE …/uploads/{id}`: abandons an upload (tus termination).
///
/// Its parts are deleted. The uploader, or the app.
#[utoipa::path(delete, path = "/{org}/{app}/chatfiles/uploads/{id}", tag = "files",
    params(("Tus-Resumable" = inline(schema::TusVersion), Header, description = "The tus version: `1.0.0` (412 otherwise)")),
    responses((status = 204, description = "Abandoned (no body)",
        headers(("Tus-Resumable" = String, description = "`1.0.0`")))))]
pub async fn terminate(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, _, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(response) = version_refused(&headers) {
        return Ok(response);
    }
    let upload = own_upload(&state, &caller, &id).await?;
    for part in state.store.upload_parts(&upload.id).await? {
        let _ = state.files.store.delete(&part.object).await;
    }
    state.store.delete_upload(&upload.id).await?;
    Ok(with_tus(StatusCode::NO_CONTENT, &[]))
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, options))
        .routes(routes!(head, status, patch, terminate))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use utoipa::ToSchema;

    use crate::files::schema::ChatfileEntity;

    /// The tus version this server speaks.
    #[derive(ToSchema)]
    pub enum TusVersion {
        #[serde(rename = "1.0.0")]
        V1,
    }

    /// An upload's state: unfinished (`upload`, `offset`, `length`, `complete`), or complete
    /// (`entities`: the chatfile it made).
    #[derive(ToSchema)]
    pub struct UploadStatus {
        /// The upload's id (unfinished).
        upload: Option<String>,
        /// The bytes received so far (unfinished).
        offset: Option<i64>,
        /// The file's size (unfinished).
        length: Option<i64>,
        /// False while unfinished.
        complete: Option<bool>,
        /// Complete: the chatfile.
        entities: Option<Vec<ChatfileEntity>>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_tus_sends_it() {
        assert_eq!(
            base64_decode("d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==").unwrap(),
            b"world_domination_plan.pdf"
        );
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("!!!!").is_none());
    }
}
