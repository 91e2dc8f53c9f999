//! A group's shared files (`/{org}/{app}/chatgroups/{id}/share_files`): members upload files
//! to the group, list them, download them and delete them (their own; the owner, admins and
//! the app delete any). A shared file is a chatfile the group refers to: its members may
//! read it while it is shared, it counts against its uploader's quota, and once nothing
//! refers to it (unshared, or the group dissolved) the sweeper removes it.
//!
//! These routes stream their bodies like `/chatfiles` (no router body limit, the transfer
//! timeout), so they are mounted with the file routes.

use std::collections::HashMap;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::channels::{Acting, Standing};
use crate::error::Query;
use crate::{files, ApiError, AppState};
use store::channels::ChannelKind;
use store::files::Chatfile;

/// This module's routes.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upload))
        .routes(routes!(remove, download))
        .layer(Extension(ChannelKind::Group))
}

/// A shared file as the platform lists it.
fn shared(file: &Chatfile) -> Value {
    json!({
        "file_id": file.id,
        "file_name": file.filename,
        "file_owner": file.owner,
        "file_size": file.size,
        "created": file.created_at,
    })
}

/// `POST …/share_files` (multipart, a part named `file`; members and the app).
#[utoipa::path(post, path = "/{org}/{app}/chatgroups/{id}/share_files", tag = "groups",
    request_body(content = schema::SharedFileUpload, content_type = "multipart/form-data",
        description = "The file, in a part named `file` (other parts are ignored)"),
    responses((status = 200, description = "Shared in the group", body = schema::SharedFileUploaded)))]
async fn upload(State(state): State<AppState>, acting: Acting, request: Request) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Member, "share files in it")?;
    let file = files::receive(&state, &acting.caller, request).await?;
    state.store.share_file(&acting.channel.id, &file.id).await?;
    let app = &acting.caller.app;
    let url = format!(
        "{}/{}/{}/chatgroups/{}/share_files/{}",
        state.files.links.base(),
        app.org,
        app.name,
        acting.channel.id,
        file.id
    );
    Ok(Json(json!({"data": {
        "file_url": url,
        "group_id": acting.channel.id,
        "file_name": file.filename,
        "created": file.created_at,
        "file_id": file.id,
        "file_size": file.size,
    }})))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// The page, from 1 (default 1).
    pagenum: Option<i64>,
    /// 1 to 1000 (default 10).
    pagesize: Option<i64>,
}

/// `GET …/share_files?pagenum=&pagesize=` (members and the app): newest first, pages of up
/// to 1,000 (default 10).
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/share_files", tag = "groups", params(PageQuery),
    responses((status = 200, description = "A page of the group's shared files, newest first", body = schema::SharedFiles)))]
async fn list(
    State(state): State<AppState>,
    acting: Acting,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Member, "list its files")?;
    let page = crate::paging::Page::new(q.pagenum, q.pagesize, 10)?;
    let files = state
        .store
        .shared_files(&acting.caller.app.id, &acting.channel.id, page.offset, page.size)
        .await?;
    let data: Vec<Value> = files.iter().map(shared).collect();
    Ok(Json(json!({"data": data, "count": data.len()})))
}

/// The `{file_id}` of a route, if it is a file shared in this group.
async fn shared_id(state: &AppState, acting: &Acting, params: &HashMap<String, String>) -> Result<String, ApiError> {
    let id = params.get("file_id").cloned().unwrap_or_default();
    if !state.store.is_shared(&acting.channel.id, &id).await? {
        return Err(ApiError::NotFound(format!("shared file {id} not found in this group")));
    }
    Ok(id)
}

/// `GET …/share_files/{file_id}` (members and the app): the file, as `/chatfiles/{id}`
/// serves it (ranges, validators).
#[utoipa::path(get, path = "/{org}/{app}/chatgroups/{id}/share_files/{file_id}", tag = "groups",
    params(schema::SharedFileDownload),
    responses(
        (status = 200, description = "The file's bytes, in its own content type", content_type = "*/*", body = String),
        (status = 206, description = "The range asked for (`Range`, one range)", content_type = "*/*", body = String),
        (status = 304, description = "Not modified (`If-None-Match`, `If-Modified-Since`)"),
    ))]
async fn download(
    State(state): State<AppState>,
    acting: Acting,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    acting.require(Standing::Member, "read its files")?;
    let id = shared_id(&state, &acting, &params).await?;
    let app = &acting.caller.app;
    let path = Path((app.org.clone(), app.name.clone(), id));
    files::download(State(state), path, request).await
}

/// `DELETE …/share_files/{file_id}`: its uploader, the owner, admins or the app.
#[utoipa::path(delete, path = "/{org}/{app}/chatgroups/{id}/share_files/{file_id}", tag = "groups",
    responses((status = 200, description = "No longer shared", body = schema::SharedFileRemoved)))]
async fn remove(
    State(state): State<AppState>,
    acting: Acting,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = shared_id(&state, &acting, &params).await?;
    let file = state.store.chatfile(&acting.caller.app.id, &id).await?;
    if acting.caller.user.as_deref() != Some(file.owner.as_str()) {
        acting.require(Standing::Admin, "delete another member's file")?;
    }
    state.store.unshare_file(&acting.channel.id, &id).await?;
    Ok(Json(
        json!({"data": {"group_id": acting.channel.id, "file_id": id, "result": true}}),
    ))
}

/// The answers' shapes, for the OpenAPI document (`crate::openapi`).
mod schema {
    #![allow(dead_code)]
    use serde::Deserialize;
    use utoipa::{IntoParams, ToSchema};

    /// The multipart body of an upload.
    #[derive(ToSchema)]
    pub struct SharedFileUpload {
        #[schema(content_media_type = "application/octet-stream")]
        file: String,
    }

    /// The query a download accepts (as `/chatfiles/{id}` does).
    #[derive(Deserialize, IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct SharedFileDownload {
        /// `true`: the image's thumbnail (404 when the file has none).
        thumbnail: Option<bool>,
    }

    /// A shared file as listed.
    #[derive(ToSchema)]
    pub struct SharedFile {
        file_id: String,
        file_name: String,
        /// Who uploaded it.
        file_owner: String,
        /// Bytes.
        file_size: i64,
        /// Milliseconds since 1970.
        created: i64,
    }

    #[derive(ToSchema)]
    pub struct SharedFiles {
        data: Vec<SharedFile>,
        count: u64,
    }

    #[derive(ToSchema)]
    pub struct SharedFileUploadedData {
        /// Where members download it.
        file_url: String,
        group_id: String,
        file_name: String,
        created: i64,
        file_id: String,
        file_size: i64,
    }

    #[derive(ToSchema)]
    pub struct SharedFileUploaded {
        data: SharedFileUploadedData,
    }

    #[derive(ToSchema)]
    pub struct SharedFileRemovedData {
        group_id: String,
        file_id: String,
        result: bool,
    }

    #[derive(ToSchema)]
    pub struct SharedFileRemoved {
        data: SharedFileRemovedData,
    }
}
