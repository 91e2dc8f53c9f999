//! Chatfiles: the records of uploaded files (the bytes are in `files::FileStore`), what
//! refers to them, and resumable uploads in progress.
//!
//! A file lives while something refers to it: a message whose body carries its URL (one
//! reference per message, so recalling or destroying one message leaves the others' files
//! alone; a chatroom message's until it leaves the room's history) or a user's avatar. A file with no reference for `orphan_after` (counted from its
//! upload, or from when its last reference went) is removed by the sweeper.
//!
//! Who may read a file: an app token; its uploader; a user who holds a message referring to
//! it (in their inbox, or in a chatroom they are a member of); any user of the app for an
//! avatar; anyone with its `share-secret`. A file sent in a private conversation is
//! therefore not readable by a third user without the secret.

use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::envelope::MsgType;
use crate::error::{Error, Result};
use crate::Store;

/// A stored file.
#[derive(Debug, Clone, PartialEq)]
pub struct Chatfile {
    pub id: String,
    pub app_id: String,
    pub owner: String,
    /// The `share-secret`: whoever has it may read the file without a token.
    pub secret: String,
    pub filename: String,
    /// Sniffed from the bytes at upload.
    pub content_type: String,
    pub size: i64,
    /// An image's size in pixels (0 for other files).
    pub width: i64,
    pub height: i64,
    /// The thumbnail's content type, empty when there is none.
    pub thumb_type: String,
    pub thumb_size: i64,
    pub created_at: i64,
}

impl Chatfile {
    /// The key of its bytes in the file store.
    pub fn object_key(&self) -> String {
        object_key(&self.app_id, &self.id)
    }

    /// The key of its thumbnail in the file store.
    pub fn thumb_key(&self) -> String {
        format!("{}.thumb", self.object_key())
    }

    pub fn has_thumbnail(&self) -> bool {
        !self.thumb_type.is_empty()
    }
}

/// Where a file's bytes are kept: under its app, by id (ids are UUIDs, never a client's name).
pub fn object_key(app_id: &str, id: &str) -> String {
    format!("apps/{app_id}/{id}")
}

/// The public URLs of files: `{base}/{org}/{app}/chatfiles/{id}`, `base` being the API as
/// clients reach it (`api.public_url`). A message body may only point at URLs of this form
/// (unless its app allows external URLs), so a body cannot send devices elsewhere.
#[derive(Debug, Clone)]
pub struct FileLinks {
    base: String,
}

impl FileLinks {
    pub fn new(base: &str) -> FileLinks {
        FileLinks {
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, org: &str, app: &str, id: &str) -> String {
        format!("{}/{org}/{app}/chatfiles/{id}", self.base)
    }

    pub fn thumbnail_url(&self, org: &str, app: &str, id: &str) -> String {
        format!("{}?thumbnail=true", self.url(org, app, id))
    }

    /// The file id in `url`, if it is a file URL of this app (a thumbnail URL included).
    pub fn file_id(&self, org: &str, app: &str, url: &str) -> Option<String> {
        let prefix = format!("{}/{org}/{app}/chatfiles/", self.base);
        let rest = url.strip_prefix(&prefix)?;
        let id = rest.strip_suffix("?thumbnail=true").unwrap_or(rest);
        uuid::Uuid::parse_str(id)
            .ok()
            .filter(|u| u.hyphenated().to_string() == id)
            .map(|_| id.to_string())
    }
}

/// Who is attaching files to a message.
#[derive(Debug, Clone, Copy)]
pub enum Attacher<'a> {
    /// The app's backend: any file of the app.
    App,
    /// A user: only files they may read.
    User(&'a str),
}

/// A resumable upload in progress (tus).
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub id: String,
    pub app_id: String,
    pub owner: String,
    pub filename: String,
    /// The file's whole size, declared at creation.
    pub length: i64,
    /// Bytes stored so far: the offset the next part starts at.
    pub received: i64,
    /// The chatfile made from it once complete; empty before.
    pub file_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One stored part of an upload.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadPart {
    pub start: i64,
    pub size: i64,
    pub object: String,
}

const FILE_COLUMNS: &str = "id, app_id, owner, secret, filename, content_type, size, width, height, \
     thumb_type, thumb_size, created_at";

fn file_from_row(row: &AnyRow) -> Result<Chatfile> {
    Ok(Chatfile {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        owner: row.try_get("owner")?,
        secret: row.try_get("secret")?,
        filename: row.try_get("filename")?,
        content_type: row.try_get("content_type")?,
        size: row.try_get("size")?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        thumb_type: row.try_get("thumb_type")?,
        thumb_size: row.try_get("thumb_size")?,
        created_at: row.try_get("created_at")?,
    })
}

const UPLOAD_COLUMNS: &str = "id, app_id, owner, filename, length, received, file_id, created_at, updated_at";

fn upload_from_row(row: &AnyRow) -> Result<Upload> {
    Ok(Upload {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        owner: row.try_get("owner")?,
        filename: row.try_get("filename")?,
        length: row.try_get("length")?,
        received: row.try_get("received")?,
        file_id: row.try_get("file_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The holder of a user's avatar reference (usernames are per app, so the app is in it).
pub fn avatar_holder(app_id: &str, username: &str) -> String {
    format!("avatar:{app_id}:{username}")
}

/// The holder of a file shared in a group (its `room` is the group, so members read it).
pub fn share_holder(group: &str, file_id: &str) -> String {
    format!("share:{group}:{file_id}")
}

/// Records that `holder` (a message id, or an avatar) refers to `files`. `room` is the
/// chatroom a room message belongs to (its members may read the files), else empty.
pub(crate) async fn add_refs(
    tx: &mut Transaction<'static, Any>,
    holder: &str,
    room: &str,
    files: &[String],
) -> Result<()> {
    for file in files {
        sqlx::query("INSERT INTO chatfile_refs (file_id, holder, room) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(file)
            .bind(holder)
            .bind(room)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Drops every reference `holder` has; each file it referred to starts its orphan time now.
pub(crate) async fn release_refs(tx: &mut Transaction<'static, Any>, holder: &str) -> Result<()> {
    sqlx::query(
        "UPDATE chatfiles SET released_at = $1 WHERE id IN (SELECT file_id FROM chatfile_refs WHERE holder = $2)",
    )
    .bind(crate::now_ms())
    .bind(holder)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM chatfile_refs WHERE holder = $1")
        .bind(holder)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `holder` now refers to `files` and nothing else.
async fn replace_refs(tx: &mut Transaction<'static, Any>, holder: &str, room: &str, files: &[String]) -> Result<()> {
    release_refs(tx, holder).await?;
    add_refs(tx, holder, room, files).await
}

/// Erases what a message carried besides its body (done by recall and self-destruction):
/// its reactions, and its file references (other messages sharing the files keep theirs).
pub(crate) async fn erase_attachments(tx: &mut Transaction<'static, Any>, message_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM reactions WHERE message_id = $1")
        .bind(message_id)
        .execute(&mut **tx)
        .await?;
    release_refs(tx, message_id).await
}

impl Store {
    pub async fn create_chatfile(&self, file: &Chatfile) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO chatfiles ({FILE_COLUMNS}, released_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)"
        ))
        .bind(&file.id)
        .bind(&file.app_id)
        .bind(&file.owner)
        .bind(&file.secret)
        .bind(&file.filename)
        .bind(&file.content_type)
        .bind(file.size)
        .bind(file.width)
        .bind(file.height)
        .bind(&file.thumb_type)
        .bind(file.thumb_size)
        .bind(file.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The file `id` of this app.
    pub async fn chatfile(&self, app_id: &str, id: &str) -> Result<Chatfile> {
        let row = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM chatfiles WHERE app_id = $1 AND id = $2"
        ))
        .bind(app_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("chatfile {id}")))?;
        file_from_row(&row)
    }

    /// The bytes `owner` holds in this app: their files and the declared sizes of their
    /// uploads in progress (so a quota cannot be dodged by opening many uploads at once).
    pub async fn file_usage(&self, app_id: &str, owner: &str) -> Result<i64> {
        let files: Option<i64> =
            sqlx::query_scalar("SELECT CAST(SUM(size) AS BIGINT) FROM chatfiles WHERE app_id = $1 AND owner = $2")
                .bind(app_id)
                .bind(owner)
                .fetch_one(&self.pool)
                .await?;
        let uploads: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(length) AS BIGINT) FROM uploads WHERE app_id = $1 AND owner = $2 AND file_id = ''",
        )
        .bind(app_id)
        .bind(owner)
        .fetch_one(&self.pool)
        .await?;
        Ok(files.unwrap_or(0) + uploads.unwrap_or(0))
    }

    /// Whether `user` may read `file` with their token (see the module's doc).
    pub async fn may_read_file(&self, file: &Chatfile, user: &str) -> Result<bool> {
        if file.owner == user {
            return Ok(true);
        }
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM chatfile_refs r WHERE r.file_id = $1 AND (
                 r.holder LIKE 'avatar:%'
                 OR EXISTS (SELECT 1 FROM inbox i WHERE i.app_id = $2 AND i.message_id = r.holder AND i.username = $3)
                 OR (r.room <> '' AND EXISTS (SELECT 1 FROM channel_members c WHERE c.channel_id = r.room AND c.username = $3)))
             LIMIT 1",
        )
        .bind(&file.id)
        .bind(&file.app_id)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Checks the files a message body of `kind` points at and completes the body from their
    /// records; answers the ids of the chatfiles it refers to.
    ///
    /// `url` (and a video's `thumb`, its poster) must be a chatfile URL of this app that
    /// `who` may read, unless `allow_external` lets any `https://` or `http://` URL through
    /// (not referenced, not checked). For a chatfile the server fills in `file_length`,
    /// `filename` and `secret` (unless given), and for an image its `size` and `thumb`.
    /// An `img` must be an image. Errors name the field and say what to do.
    pub async fn attach_files(
        &self,
        links: &FileLinks,
        (org, app, app_id): (&str, &str, &str),
        who: Attacher<'_>,
        kind: MsgType,
        body: &mut Value,
        allow_external: bool,
    ) -> Result<Vec<String>, String> {
        if !kind.carries_files() {
            return Ok(Vec::new());
        }
        let mut files = Vec::new();
        for field in ["url", "thumb"] {
            let Some(url) = body.get(field).and_then(Value::as_str).map(str::to_string) else {
                if body.get(field).is_some_and(|v| !v.is_null()) {
                    return Err(format!("body.{field} must be a string"));
                }
                continue;
            };
            let Some(id) = links.file_id(org, app, &url) else {
                let web = url.starts_with("https://") || url.starts_with("http://");
                if allow_external && web && url.len() <= 2048 {
                    continue;
                }
                return Err(format!(
                    "body.{field} must be the URL of a file uploaded to this app ({}/{org}/{app}/chatfiles/…){}",
                    links.base(),
                    if allow_external {
                        " or an http(s) URL of at most 2048 bytes"
                    } else {
                        "; this app does not allow external URLs"
                    }
                ));
            };
            let missing = || format!("body.{field}: no chatfile {id} in this app");
            let file = match self.chatfile(app_id, &id).await {
                Ok(file) => file,
                Err(Error::NotFound(_)) => return Err(missing()),
                Err(e) => return Err(format!("could not check body.{field}: {e}")),
            };
            if let Attacher::User(user) = who {
                match self.may_read_file(&file, user).await {
                    Ok(true) => {}
                    Ok(false) => return Err(missing()),
                    Err(e) => return Err(format!("could not check body.{field}: {e}")),
                }
            }
            if field == "url" {
                if kind == MsgType::Img && !file.content_type.starts_with("image/") {
                    return Err(format!(
                        "body.url: an img message needs an image; this file is {}",
                        file.content_type
                    ));
                }
                complete_body(links, (org, app), &file, kind, body);
            } else if !file.content_type.starts_with("image/") {
                return Err(format!(
                    "body.thumb must be an image; this file is {}",
                    file.content_type
                ));
            }
            if !files.contains(&file.id) {
                files.push(file.id);
            }
        }
        Ok(files)
    }

    /// Replaces `holder`'s references (an avatar that changed, an edited message).
    /// Shares a file in a group: its members may read it while it is shared.
    pub async fn share_file(&self, group: &str, file_id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        add_refs(&mut tx, &share_holder(group, file_id), group, &[file_id.to_string()]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of the files shared in a group, newest first.
    pub async fn shared_files(&self, app_id: &str, group: &str, offset: i64, limit: i64) -> Result<Vec<Chatfile>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM chatfile_refs r JOIN chatfiles c ON c.id = r.file_id
             WHERE r.room = $1 AND r.holder LIKE 'share:%' AND c.app_id = $2
             ORDER BY c.created_at DESC, c.id LIMIT $3 OFFSET $4",
            FILE_COLUMNS
                .split(", ")
                .map(|column| format!("c.{column}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(group)
        .bind(app_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Whether a file is shared in a group.
    pub async fn is_shared(&self, group: &str, file_id: &str) -> Result<bool> {
        let found: Option<String> = sqlx::query_scalar("SELECT file_id FROM chatfile_refs WHERE holder = $1")
            .bind(share_holder(group, file_id))
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// Stops sharing a file in a group (nothing else referring to it, the sweeper removes
    /// it later); `NotFound` if it was not shared there.
    pub async fn unshare_file(&self, group: &str, file_id: &str) -> Result<()> {
        if !self.is_shared(group, file_id).await? {
            return Err(Error::NotFound(format!("shared file {file_id}")));
        }
        let mut tx = self.write_tx().await?;
        release_refs(&mut tx, &share_holder(group, file_id)).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn replace_file_refs(&self, holder: &str, room: &str, files: &[String]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        replace_refs(&mut tx, holder, room, files).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops the references of chatroom messages that have left their room's history (the
    /// room keeps only its last `room_history` messages): those files are no longer shown
    /// to anyone. Done by the sweeper rather than with each room message, which keeps the
    /// room's write path as it was; each room's refs are checked against its own few rows.
    pub async fn release_dropped_room_refs(&self) -> Result<u64> {
        // (A group's shared files have a room too, but no room message: they stay.)
        let gone = "r.room <> '' AND r.holder NOT LIKE 'share:%' AND NOT EXISTS
             (SELECT 1 FROM room_messages m WHERE m.room_id = r.room AND m.id = r.holder)";
        let mut tx = self.write_tx().await?;
        sqlx::query(&format!(
            "UPDATE chatfiles SET released_at = $1 WHERE id IN (SELECT r.file_id FROM chatfile_refs r WHERE {gone})"
        ))
        .bind(crate::now_ms())
        .execute(&mut *tx)
        .await?;
        let dropped = sqlx::query(&format!(
            "DELETE FROM chatfile_refs WHERE (file_id, holder) IN (SELECT r.file_id, r.holder FROM chatfile_refs r WHERE {gone})"
        ))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(dropped)
    }

    /// Files nobody has referred to since before `before` (ms), at most `limit`.
    pub async fn orphan_chatfiles(&self, before: i64, limit: i64) -> Result<Vec<Chatfile>> {
        let rows = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM chatfiles f WHERE f.released_at < $1
             AND NOT EXISTS (SELECT 1 FROM chatfile_refs r WHERE r.file_id = f.id) LIMIT $2"
        ))
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Deletes a file's record if still nobody refers to it; true if it was deleted (then
    /// its bytes may go).
    pub async fn delete_orphan_chatfile(&self, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM chatfiles WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM chatfile_refs r WHERE r.file_id = $1)",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn create_upload(&self, upload: &Upload) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&upload.id)
        .bind(&upload.app_id)
        .bind(&upload.owner)
        .bind(&upload.filename)
        .bind(upload.length)
        .bind(upload.received)
        .bind(&upload.file_id)
        .bind(upload.created_at)
        .bind(upload.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Unfinished uploads of `owner`.
    pub async fn open_uploads(&self, app_id: &str, owner: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE app_id = $1 AND owner = $2 AND file_id = ''")
                .bind(app_id)
                .bind(owner)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn upload(&self, app_id: &str, id: &str) -> Result<Upload> {
        let row = sqlx::query(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE app_id = $1 AND id = $2"
        ))
        .bind(app_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("upload {id}")))?;
        upload_from_row(&row)
    }

    /// Records a stored part that starts where the upload stood at `start`. False if another
    /// request moved the upload on meanwhile (the part is not recorded: delete its bytes).
    pub async fn add_upload_part(&self, id: &str, start: i64, size: i64, object: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let moved = sqlx::query("UPDATE uploads SET received = $1, updated_at = $2 WHERE id = $3 AND received = $4")
            .bind(start + size)
            .bind(crate::now_ms())
            .bind(id)
            .bind(start)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO upload_parts (upload_id, start, size, object) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(start)
            .bind(size)
            .bind(object)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn upload_parts(&self, id: &str) -> Result<Vec<UploadPart>> {
        let rows = sqlx::query("SELECT start, size, object FROM upload_parts WHERE upload_id = $1 ORDER BY start")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UploadPart {
                    start: r.try_get("start")?,
                    size: r.try_get("size")?,
                    object: r.try_get("object")?,
                })
            })
            .collect()
    }

    /// Records the chatfile a complete upload became, and forgets its parts.
    pub async fn finish_upload(&self, id: &str, file_id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE uploads SET file_id = $1, updated_at = $2 WHERE id = $3")
            .bind(file_id)
            .bind(crate::now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM upload_parts WHERE upload_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an upload's record and parts' records (their bytes are the caller's to delete).
    pub async fn delete_upload(&self, id: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM upload_parts WHERE upload_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uploads untouched since before `before` (ms), at most `limit`: abandoned ones, and
    /// finished ones whose record is no longer needed.
    pub async fn stale_uploads(&self, before: i64, limit: i64) -> Result<Vec<Upload>> {
        let rows = sqlx::query(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE updated_at < $1 LIMIT $2"
        ))
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(upload_from_row).collect()
    }

    /// Sets (or, with `None`, clears) a user's avatar (the caller has checked the file).
    pub async fn set_avatar(&self, app_id: &str, username: &str, file: Option<&Chatfile>) -> Result<()> {
        let holder = avatar_holder(app_id, username);
        let files: Vec<String> = file.iter().map(|f| f.id.clone()).collect();
        let mut tx = self.write_tx().await?;
        replace_refs(&mut tx, &holder, "", &files).await?;
        let done = sqlx::query("UPDATE users SET avatar = $1, updated_at = $2 WHERE app_id = $3 AND username = $4")
            .bind(file.map(|f| f.id.as_str()).unwrap_or(""))
            .bind(crate::now_ms())
            .bind(app_id)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Err(Error::NotFound(format!("user {username}")));
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Fills in what the server knows of a file into a message body.
fn complete_body(links: &FileLinks, (org, app): (&str, &str), file: &Chatfile, kind: MsgType, body: &mut Value) {
    let Some(obj) = body.as_object_mut() else { return };
    obj.insert("file_length".into(), json!(file.size));
    obj.entry("filename").or_insert_with(|| json!(file.filename));
    obj.entry("secret").or_insert_with(|| json!(file.secret));
    if kind == MsgType::Img {
        obj.insert("size".into(), json!({"width": file.width, "height": file.height}));
        if file.has_thumbnail() {
            obj.entry("thumb")
                .or_insert_with(|| json!(links.thumbnail_url(org, app, &file.id)));
            obj.entry("thumb_secret").or_insert_with(|| json!(file.secret));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_recognised_exactly() {
        let links = FileLinks::new("https://chat.example.com/");
        let id = "0192b7d3-0000-7000-8000-000000000001";
        let url = links.url("o", "a", id);
        assert_eq!(url, format!("https://chat.example.com/o/a/chatfiles/{id}"));
        assert_eq!(links.file_id("o", "a", &url).as_deref(), Some(id));
        assert_eq!(
            links.file_id("o", "a", &links.thumbnail_url("o", "a", id)).as_deref(),
            Some(id)
        );
        assert_eq!(links.file_id("o", "other", &url), None, "another app's file");
        assert_eq!(links.file_id("o", "a", &format!("{url}/../x")), None);
        assert_eq!(links.file_id("o", "a", &format!("{url}?x=1")), None);
        assert_eq!(links.file_id("o", "a", "https://evil.example/o/a/chatfiles/x"), None);
        assert_eq!(links.file_id("o", "a", &url.to_uppercase()), None);
    }
}
