//! Chatfiles: `POST /{org}/{app}/chatfiles` (a multipart upload) and
//! `GET /{org}/{app}/chatfiles/{uuid}` (a download, with `Range` and validators); the
//! resumable (tus) uploads are in [`crate::uploads`].
//!
//! Every byte is streamed: an upload goes on to the file store a chunk at a time, counted
//! against the app's largest file and the uploader's quota, and a download is read from the
//! store as the client takes it. A transfer may take long (a 50 MB video on a slow link),
//! so these routes are not cut at the API's request timeout but at `transfer_timeout`, and
//! an upload whose client sends nothing for `chunk_timeout` is dropped.
//!
//! Served files are untrusted content on the API's own origin: only images, audio and video
//! are shown inline; everything else is an attachment, and every answer carries
//! `X-Content-Type-Options: nosniff` and a sandboxing `Content-Security-Policy`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::{ApiError, AppState};
use files::{FileStore, OnCut, ThumbnailLimits, Written};
use store::files::{Chatfile, FileLinks};
use store::tenants::App;
use store::tokens::Role;

/// What the file routes share.
#[derive(Clone)]
pub struct Files {
    pub store: FileStore,
    pub links: FileLinks,
    pub settings: FileSettings,
    /// Thumbnails being made at once (each decodes a whole image).
    pub(crate) thumbnailing: Arc<Semaphore>,
    /// Transfers under way per caller, so that one user (or one address with a secret)
    /// cannot take the API's connections with slow transfers.
    pub(crate) transfers: Arc<Mutex<HashMap<String, usize>>>,
}

/// One transfer's place in its caller's count, given back when dropped (a download's is
/// dropped with its body, after the last byte).
pub(crate) struct TransferSlot {
    key: String,
    transfers: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        let mut transfers = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = transfers.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                transfers.remove(&self.key);
            }
        }
    }
}

impl Files {
    /// A transfer slot for `key` (`user:…` or `address:…`), or 429 when it has `max` already.
    pub(crate) fn transfer_slot(&self, key: String, max: usize) -> Result<TransferSlot, ApiError> {
        let mut transfers = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        let n = transfers.entry(key.clone()).or_insert(0);
        if *n >= max {
            return Err(ApiError::TooManyAttempts {
                message: format!("{max} file transfers at once is the most; wait for one to finish"),
                retry_after: Duration::from_secs(1),
            });
        }
        *n += 1;
        Ok(TransferSlot {
            key,
            transfers: self.transfers.clone(),
        })
    }

    /// The slot of a caller with a token: per user, or per app for the app's backend.
    pub(crate) fn caller_slot(&self, caller: &Caller) -> Result<TransferSlot, ApiError> {
        let who = caller.user.as_deref().unwrap_or("");
        self.transfer_slot(
            format!("user:{}:{who}", caller.app.id),
            self.settings.max_transfers_per_user,
        )
    }
}

impl Files {
    pub fn new(store: FileStore, links: FileLinks, settings: FileSettings) -> Files {
        Files {
            store,
            links,
            thumbnailing: Arc::new(Semaphore::new(settings.max_concurrent_thumbnails.max(1))),
            transfers: Arc::new(Mutex::new(HashMap::new())),
            settings,
        }
    }
}

/// The server's limits on files; each app's own limits are in its settings.
#[derive(Debug, Clone)]
pub struct FileSettings {
    /// No app may accept a file larger than this, whatever its settings say.
    pub max_file_bytes: u64,
    /// An upload that sends nothing for this long is dropped.
    pub chunk_timeout: Duration,
    /// Images up to this size get a thumbnail; larger ones are stored without.
    pub max_thumbnail_source_bytes: u64,
    pub thumbnail: ThumbnailLimits,
    pub max_concurrent_thumbnails: usize,
    /// How long an unfinished resumable upload is kept after its last part.
    pub upload_expiry: Duration,
    /// Unfinished resumable uploads one user may have at once.
    pub max_open_uploads: i64,
    /// Uploads and downloads under way at once per user (with a token).
    pub max_transfers_per_user: usize,
    /// Downloads under way at once per address, with a share-secret and no token.
    pub max_transfers_per_address: usize,
}

impl Default for FileSettings {
    fn default() -> Self {
        FileSettings {
            max_file_bytes: 512 * 1024 * 1024,
            chunk_timeout: Duration::from_secs(30),
            max_thumbnail_source_bytes: 20 * 1024 * 1024,
            thumbnail: ThumbnailLimits::default(),
            max_concurrent_thumbnails: 2,
            upload_expiry: Duration::from_secs(24 * 3600),
            max_open_uploads: 20,
            max_transfers_per_user: 8,
            max_transfers_per_address: 32,
        }
    }
}

/// Whether a request path is a file transfer (timed by `transfer_timeout`, not the
/// request timeout): `/{org}/{app}/chatfiles…` and a group's
/// `/{org}/{app}/chatgroups/{id}/share_files…`.
pub fn is_transfer(path: &str) -> bool {
    let mut segments = path.split('/').skip(3);
    match segments.next() {
        Some("chatfiles") => true,
        Some("chatgroups") => segments.nth(1) == Some("share_files"),
        _ => false,
    }
}

/// The most a filename keeps: what follows the last `/` or `\`, without control characters,
/// at most 255 bytes.
pub(crate) fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut clean: String = base.chars().filter(|c| !c.is_control()).collect();
    while clean.len() > 255 {
        clean.pop();
    }
    match clean.trim() {
        "" | "." | ".." => "file".into(),
        name => name.to_string(),
    }
}

/// Who uploads: a user (whose quota counts), or the app's backend (owner `""`, no quota).
pub(crate) fn uploader(caller: &Caller) -> String {
    match caller.role {
        Role::User => caller.user.clone().unwrap_or_default(),
        Role::App => String::new(),
    }
}

/// The largest file this caller may send now: the app's and the server's limits, and what
/// is left of the uploader's quota.
pub(crate) async fn room_for(
    state: &AppState,
    app: &App,
    owner: &str,
) -> Result<(u64, store::tenants::AppSettings), ApiError> {
    let settings = state.store.app_settings(&app.id).await?;
    let mut limit = (settings.max_file_bytes.max(0) as u64).min(state.files.settings.max_file_bytes);
    if !owner.is_empty() {
        let used = state.store.file_usage(&app.id, owner).await?;
        let left = settings.file_quota_bytes.saturating_sub(used).max(0) as u64;
        if left == 0 {
            return Err(ApiError::PayloadTooLarge(format!(
                "your files use your quota of {} bytes in this app; files nobody refers to are removed after a while",
                settings.file_quota_bytes
            )));
        }
        limit = limit.min(left);
    }
    Ok((limit, settings))
}

/// A too-large answer that names the limit that was hit.
pub(crate) fn too_large(limit: u64, settings: &store::tenants::AppSettings, server_max: u64) -> ApiError {
    let which = if limit < settings.max_file_bytes.max(0) as u64 && limit < server_max {
        "what is left of your quota"
    } else if limit == server_max && server_max < settings.max_file_bytes.max(0) as u64 {
        "this server's largest file (files.max_file_bytes)"
    } else {
        "this app's largest file (max_file_bytes)"
    };
    ApiError::PayloadTooLarge(format!("the file is larger than {limit} bytes, {which}"))
}

/// Turns stored bytes into a chatfile: the type is sniffed from them and checked against
/// the app's allowed types, an image gets its thumbnail (a bomb or a broken image is
/// refused), and the record is written. On refusal the bytes are deleted.
pub(crate) async fn record(
    state: &AppState,
    app: &App,
    owner: &str,
    id: &str,
    filename: String,
    written: &Written,
    settings: &store::tenants::AppSettings,
) -> Result<Chatfile, ApiError> {
    let key = store::files::object_key(&app.id, id);
    let refuse = |e: ApiError| async {
        let _ = state.files.store.delete(&key).await;
        Err(e)
    };
    let content_type = files::sniff(&written.head);
    if !settings.allows_file_type(&content_type) {
        return refuse(ApiError::UnsupportedMediaType(format!(
            "this app accepts {}; this file is {content_type}",
            settings.allowed_file_types.join(", ")
        )))
        .await;
    }
    let mut file = Chatfile {
        id: id.to_string(),
        app_id: app.id.clone(),
        owner: owner.to_string(),
        secret: store::tokens::random_secret(24),
        filename,
        content_type,
        size: written.size as i64,
        width: 0,
        height: 0,
        thumb_type: String::new(),
        thumb_size: 0,
        created_at: store::now_ms(),
    };
    let thumbnailable = matches!(
        file.content_type.as_str(),
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    );
    if thumbnailable && written.size <= state.files.settings.max_thumbnail_source_bytes {
        match make_thumbnail(state, &key).await {
            Ok(thumb) => {
                if let Err(e) = state
                    .files
                    .store
                    .put(&file.thumb_key(), thumb.bytes.clone().into())
                    .await
                {
                    return refuse(ApiError::Internal(format!("storing a thumbnail: {e}"))).await;
                }
                file.width = thumb.width as i64;
                file.height = thumb.height as i64;
                file.thumb_type = thumb.content_type.into();
                file.thumb_size = thumb.bytes.len() as i64;
            }
            Err(e) => return refuse(e).await,
        }
    }
    if let Err(e) = state.store.create_chatfile(&file).await {
        let _ = state.files.store.delete(&file.thumb_key()).await;
        return refuse(e.into()).await;
    }
    Ok(file)
}

async fn make_thumbnail(state: &AppState, key: &str) -> Result<files::Thumbnail, ApiError> {
    let _turn = state
        .files
        .thumbnailing
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
    let bytes = state
        .files
        .store
        .read_all(key, state.files.settings.max_thumbnail_source_bytes)
        .await
        .map_err(|e| ApiError::Internal(format!("reading an image back: {e}")))?;
    let limits = state.files.settings.thumbnail;
    tokio::task::spawn_blocking(move || files::thumbnail(&bytes, limits))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|why| ApiError::BadRequest(format!("the image cannot be used: {why}")))
}

/// A chatfile as answered: the platform's `uuid`, `type` and `share-secret`, and what
/// chatd knows of it.
pub(crate) fn entity(links: &FileLinks, app: &App, file: &Chatfile) -> Value {
    let mut entity = json!({
        "uuid": file.id,
        "type": "chatfile",
        "share-secret": file.secret,
        "url": links.url(&app.org, &app.name, &file.id),
        "filename": file.filename,
        "file_length": file.size,
        "content_type": file.content_type,
        "created": file.created_at,
    });
    if file.width > 0 {
        entity["size"] = json!({"width": file.width, "height": file.height});
    }
    if file.has_thumbnail() {
        entity["thumbnail"] = json!(links.thumbnail_url(&app.org, &app.name, &file.id));
        entity["thumbnail_length"] = json!(file.thumb_size);
    }
    entity
}

/// The platform's answer around entities (the envelope adds the rest).
pub(crate) fn answer(entities: Vec<Value>) -> Json<Value> {
    Json(json!({"action": "post", "entities": entities}))
}

/// `POST /{org}/{app}/chatfiles`: a multipart body whose part `file` is the file (any other
/// part is ignored). User or app token.
///
/// The file counts against the app's largest file and, for a user, their quota; its type
/// is sniffed from its bytes and must be one the app allows; an image gets a thumbnail.
#[utoipa::path(post, path = "/{org}/{app}/chatfiles", tag = "files",
    request_body(content = schema::ChatfileUpload, content_type = "multipart/form-data",
        description = "The file, in a part named `file` (other parts are ignored)"),
    responses((status = 200, description = "Stored: the file's entity, with its URL and `share-secret`",
        body = schema::ChatfileUploaded)))]
pub async fn upload(State(state): State<AppState>, caller: Caller, request: Request) -> Result<Json<Value>, ApiError> {
    let file = receive(&state, &caller, request).await?;
    let entity = entity(&state.files.links, &caller.app, &file);
    Ok(answer(vec![entity]))
}

/// Reads a multipart upload's part named `file` into the file store and records it, under
/// the caller's transfer slot, limits and quota.
pub(crate) async fn receive(state: &AppState, caller: &Caller, request: Request) -> Result<Chatfile, ApiError> {
    let _slot = state.files.caller_slot(caller)?;
    let owner = uploader(caller);
    let (limit, settings) = room_for(state, &caller.app, &owner).await?;
    let server_max = state.files.settings.max_file_bytes;
    let mut multipart = Multipart::from_request(request, state).await.map_err(|e| {
        ApiError::UnsupportedMediaType(format!(
            "send the file as multipart/form-data, in a part named 'file': {}",
            e.body_text()
        ))
    })?;
    loop {
        let field = match tokio::time::timeout(state.files.settings.chunk_timeout, multipart.next_field()).await {
            Err(_) => return Err(ApiError::RequestTimeout("the upload stopped sending".into())),
            Ok(Err(e)) => {
                return Err(ApiError::BadRequest(format!(
                    "reading the multipart body: {}",
                    e.body_text()
                )))
            }
            Ok(Ok(None)) => return Err(ApiError::BadRequest("the body has no part named 'file'".into())),
            Ok(Ok(Some(field))) => field,
        };
        if field.name() != Some("file") {
            continue;
        }
        let filename = clean_filename(field.file_name().unwrap_or("file"));
        let id = uuid::Uuid::new_v4().to_string();
        let key = store::files::object_key(&caller.app.id, &id);
        let written = state
            .files
            .store
            .write(&key, field, limit, state.files.settings.chunk_timeout, OnCut::Discard)
            .await
            .map_err(|e| transfer_error(e, limit, &settings, server_max))?;
        let file = record(state, &caller.app, &owner, &id, filename, &written, &settings).await?;
        tracing::debug!(file = %file.id, size = file.size, kind = %file.content_type, "file uploaded");
        return Ok(file);
    }
}

pub(crate) fn transfer_error(
    e: files::Error,
    limit: u64,
    settings: &store::tenants::AppSettings,
    server_max: u64,
) -> ApiError {
    match e {
        files::Error::TooLarge { .. } => too_large(limit, settings, server_max),
        files::Error::Cut(why) => ApiError::BadRequest(format!("the upload was cut: {why}")),
        e @ files::Error::Stalled(_) => ApiError::RequestTimeout(format!("the upload stopped: {e}")),
        e => ApiError::Internal(e.to_string()),
    }
}

/// `GET /{org}/{app}/chatfiles/{uuid}[?thumbnail=true]`: with a token that may read the file,
/// or its `share-secret` (header, or query parameter for an `<img>` tag). Honours `Range`
/// (one range; 206), `If-None-Match`, `If-Modified-Since` and `If-Range`.
///
/// Images, audio and video are served inline, anything else as an attachment.
#[utoipa::path(get, path = "/{org}/{app}/chatfiles/{id}", tag = "files", security((), ("bearer" = [])),
    params(
        schema::ChatfileDownload,
        ("share-secret" = Option<String>, Header,
            description = "The file's `share-secret`, instead of a token (or as the query parameter)"),
        ("Range" = Option<String>, Header, description = "One range of bytes: `bytes=0-99`, `bytes=100-`, `bytes=-100`"),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of the copy the client has"),
        ("If-Modified-Since" = Option<String>, Header, description = "The `Last-Modified` of the copy the client has"),
        ("If-Range" = Option<String>, Header, description = "`Range` applies only if the file is still this `ETag` or date"),
    ),
    responses(
        (status = 200, description = "The file's bytes, in its own content type", content_type = "*/*", body = String),
        (status = 206, description = "The range asked for (`Range`, one range)", content_type = "*/*", body = String),
        (status = 304, description = "Not modified (`If-None-Match`, `If-Modified-Since`)"),
    ))]
pub async fn download(
    State(state): State<AppState>,
    Path((org, app_name, id)): Path<(String, String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _) = request.into_parts();
    let query: Vec<(String, String)> = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let thumbnail = match param("thumbnail").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "query.thumbnail: 'true' or 'false', not '{other}'"
            )))
        }
    };
    let secret = parts
        .headers
        .get("share-secret")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| param("share-secret"));
    let app = state.store.find_app(&org, &app_name).await?;
    let file = match uuid::Uuid::parse_str(&id) {
        Ok(_) => state.store.chatfile(&app.id, &id).await?,
        Err(_) => return Err(ApiError::NotFound(format!("chatfile {id} not found"))),
    };
    let slot = match secret {
        Some(secret) => {
            if !bool::from(subtle::ConstantTimeEq::ct_eq(secret.as_bytes(), file.secret.as_bytes())) {
                return Err(ApiError::Forbidden("wrong share-secret".into()));
            }
            let address = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_string(), |ConnectInfo(peer)| peer.ip().to_string());
            state.files.transfer_slot(
                format!("address:{address}"),
                state.files.settings.max_transfers_per_address,
            )?
        }
        None => {
            let caller = Caller::from_request_parts(&mut parts, &state).await?;
            if let (Role::User, Some(user)) = (caller.role, &caller.user) {
                if !state.store.may_read_file(&file, user).await? {
                    return Err(ApiError::Forbidden(
                        "this file was not shared with you; ask for its share-secret".into(),
                    ));
                }
            }
            state.files.caller_slot(&caller)?
        }
    };
    let (key, size, content_type, tag) = if thumbnail {
        if !file.has_thumbnail() {
            return Err(ApiError::NotFound(format!("chatfile {id} has no thumbnail")));
        }
        (
            file.thumb_key(),
            file.thumb_size,
            file.thumb_type.clone(),
            format!("\"{}-thumb\"", file.id),
        )
    } else {
        (
            file.object_key(),
            file.size,
            file.content_type.clone(),
            format!("\"{}\"", file.id),
        )
    };
    let modified = UNIX_EPOCH + Duration::from_millis(file.created_at.max(0) as u64);
    let modified_text = httpdate::fmt_http_date(modified);
    let mut headers = HeaderMap::new();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::ETAG, &tag);
    set(header::LAST_MODIFIED, &modified_text);
    set(header::ACCEPT_RANGES, "bytes");
    // Files never change: a client may keep them, but only for itself.
    set(header::CACHE_CONTROL, "private, max-age=31536000, immutable");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::CONTENT_SECURITY_POLICY, "default-src 'none'; sandbox");
    let inline = ["image/png", "image/jpeg", "image/gif", "image/webp"].contains(&content_type.as_str())
        || content_type.starts_with("audio/")
        || content_type.starts_with("video/");
    set(header::CONTENT_TYPE, &content_type);
    set(
        header::CONTENT_DISPOSITION,
        &format!(
            "{}; filename*=UTF-8''{}",
            if inline { "inline" } else { "attachment" },
            percent_encode(&file.filename)
        ),
    );
    if not_modified(&parts.headers, &tag, modified) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    let range = match parts.headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(range) if if_range_holds(&parts.headers, &tag, modified) => match parse_range(range, size as u64) {
            RangeAsk::Whole => None,
            RangeAsk::Part(range) => Some(range),
            RangeAsk::Unsatisfiable => {
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                );
                return Ok((StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response());
            }
        },
        _ => None,
    };
    let (status, length) = match &range {
        Some(r) => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1)).expect("ascii"),
            );
            (StatusCode::PARTIAL_CONTENT, r.end - r.start)
        }
        None => (StatusCode::OK, size as u64),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if parts.method == axum::http::Method::HEAD || length == 0 {
        return Ok((status, headers).into_response());
    }
    let stream = state.files.store.read(&key, range).await.map_err(|e| match e {
        files::Error::NotFound => ApiError::NotFound(format!("chatfile {id}'s bytes are missing")),
        e => ApiError::Internal(e.to_string()),
    })?;
    // The slot is held until the body's last byte is written (or the client goes).
    let body = crate::server::holding(Body::from_stream(stream), slot);
    Ok((status, headers, body).into_response())
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq)]
enum RangeAsk {
    /// Ignore it (several ranges, or not bytes): the whole file.
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

fn parse_range(header: &str, size: u64) -> RangeAsk {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // The last N bytes.
        match last.parse::<u64>() {
            Ok(0) | Err(_) => return RangeAsk::Unsatisfiable,
            Ok(n) => size.saturating_sub(n)..size,
        }
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return RangeAsk::Whole;
        };
        let end = match last {
            "" => size,
            last => match last.parse::<u64>() {
                Ok(last) if last >= start => (last + 1).min(size),
                _ => return RangeAsk::Whole,
            },
        };
        start..end
    };
    if range.start >= size || range.is_empty() {
        RangeAsk::Unsatisfiable
    } else {
        RangeAsk::Part(range)
    }
}

/// `If-None-Match` (preferred) or `If-Modified-Since` says the client's copy is current.
fn not_modified(headers: &HeaderMap, tag: &str, modified: SystemTime) -> bool {
    if let Some(tags) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return tags.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == tag
        });
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| modified.duration_since(since).map_or(true, |d| d.as_secs() == 0))
}

/// `If-Range`: the range applies only if the client's validator still names this file.
fn if_range_holds(headers: &HeaderMap, tag: &str, modified: SystemTime) -> bool {
    match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) if v.starts_with('"') => v == tag,
        Some(v) => httpdate::parse_http_date(v)
            .is_ok_and(|date| modified.duration_since(date).map_or(true, |d| d.as_secs() == 0)),
    }
}

/// A filename for `filename*=UTF-8''…` (RFC 5987): everything but letters, digits and
/// `.-_~` percent-encoded.
fn percent_encode(name: &str) -> String {
    const ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'.')
        .remove(b'-')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(name, ATTR_CHAR).to_string()
}

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upload)).routes(routes!(download))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
pub(crate) mod schema {
    #![allow(dead_code)]
    use serde::Deserialize;
    use utoipa::{IntoParams, ToSchema};

    /// The multipart body of an upload.
    #[derive(ToSchema)]
    pub struct ChatfileUpload {
        /// The file (its part's `filename` names it).
        #[schema(content_media_type = "application/octet-stream")]
        file: String,
    }

    /// The query a download accepts.
    #[derive(Deserialize, IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct ChatfileDownload {
        /// `true`: the image's thumbnail (404 when the file has none).
        thumbnail: Option<bool>,
        /// The file's `share-secret`, instead of a token (for an `<img>` tag).
        #[serde(rename = "share-secret")]
        share_secret: Option<String>,
    }

    /// An image's size in pixels.
    #[derive(ToSchema)]
    pub(crate) struct ChatfileSize {
        width: i64,
        height: i64,
    }

    /// A chatfile as answered (`files::entity`).
    #[derive(ToSchema)]
    pub(crate) struct ChatfileEntity {
        /// The file's id.
        uuid: String,
        /// Always `chatfile`.
        #[serde(rename = "type")]
        entity_type: String,
        /// Reads the file without a token (header or query parameter `share-secret`).
        #[serde(rename = "share-secret")]
        share_secret: String,
        /// Where to download it.
        url: String,
        filename: String,
        /// Bytes.
        file_length: i64,
        /// As sniffed from its bytes.
        content_type: String,
        /// Milliseconds since 1970.
        created: i64,
        /// An image's size.
        size: Option<ChatfileSize>,
        /// The thumbnail's URL, for an image that has one.
        thumbnail: Option<String>,
        /// The thumbnail's bytes.
        thumbnail_length: Option<i64>,
    }

    /// The file stored.
    #[derive(ToSchema)]
    pub(crate) struct ChatfileUploaded {
        /// The one file.
        entities: Vec<ChatfileEntity>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeAsk::Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), RangeAsk::Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), RangeAsk::Part(90..100));
        assert_eq!(parse_range("bytes=-500", 100), RangeAsk::Part(0..100));
        assert_eq!(parse_range("bytes=95-200", 100), RangeAsk::Part(95..100));
        assert_eq!(parse_range("bytes=100-", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeAsk::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=5-1", 100), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=x-1", 100), RangeAsk::Whole);
    }

    #[test]
    fn filenames_lose_paths_and_controls() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\Users\\x\\photo.jpg"), "photo.jpg");
        assert_eq!(clean_filename("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(clean_filename(".."), "file");
        assert_eq!(clean_filename(&"é".repeat(200)).len(), 254);
        assert_eq!(percent_encode("a b/é.png"), "a%20b%2F%C3%A9.png");
    }

    #[test]
    fn transfer_paths() {
        assert!(is_transfer("/org/app/chatfiles"));
        assert!(is_transfer("/org/app/chatfiles/uploads/x"));
        assert!(!is_transfer("/org/app/users"));
        assert!(!is_transfer("/chatfiles"));
    }
}
