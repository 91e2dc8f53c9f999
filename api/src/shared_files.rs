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
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::channels::{Acting, Standing};
use crate::error::Query;
use crate::{files, ApiError, AppState};
use store::channels::ChannelKind;
use store::files::Chatfile;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/:org/:app/chatgroups/:id/share_files", get(list).post(upload))
        .route(
            "/:org/:app/chatgroups/:id/share_files/:file_id",
            delete(remove).get(download),
        )
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

#[derive(Deserialize)]
struct PageQuery {
    pagenum: Option<i64>,
    pagesize: Option<i64>,
}

/// `GET …/share_files?pagenum=&pagesize=` (members and the app): newest first, pages of up
/// to 1,000 (default 10).
async fn list(
    State(state): State<AppState>,
    acting: Acting,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    acting.require(Standing::Member, "list its files")?;
    let (num, size) = (q.pagenum.unwrap_or(1), q.pagesize.unwrap_or(10));
    if num < 1 || !(1..=1000).contains(&size) {
        return Err(ApiError::BadRequest(
            "need pagenum >= 1 and pagesize from 1 to 1000".into(),
        ));
    }
    let files = state
        .store
        .shared_files(&acting.caller.app.id, &acting.channel.id, (num - 1) * size, size)
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
