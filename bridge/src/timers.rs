//! The bridge's timed work. It runs on every node; each step claims what it does in the
//! database first, so two nodes never do one thing twice.
//!
//! - **Self-destructing messages** whose time has come (checked every second): the body,
//!   ext and reactions are erased, every device of everyone who holds the message is told
//!   `{"op":"destroyed",…}`, and the files it carried are removed at once unless another
//!   message (or an avatar) still refers to them.
//! - **Orphan files** (nobody has referred to them for `orphan_after`; a chatroom message
//!   stops referring to its files when it leaves the room's history) and **abandoned
//!   uploads** (untouched for `upload_expiry`) are removed with their bytes, every
//!   `sweep_interval`.

use std::sync::Arc;
use std::time::Duration;

use files::FileStore;
use serde_json::json;
use store::envelope::{frame_inbox, Route};
use store::live::Live;
use store::Store;
use tokio::sync::watch;

/// When the timed work runs.
#[derive(Debug, Clone)]
pub struct TimerSettings {
    /// How often orphan files and abandoned uploads are looked for.
    pub sweep_interval: Duration,
    /// How long a file nobody refers to is kept (from its upload, or its last reference).
    pub orphan_after: Duration,
    /// How long an unfinished upload is kept after its last part.
    pub upload_expiry: Duration,
}

/// Rows taken per step, so one step never holds the database for long.
const STEP: i64 = 200;

/// Runs the timed work until `shutdown` turns true.
pub async fn run(
    store: Store,
    live: Arc<dyn Live>,
    files: FileStore,
    settings: TimerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = destroy_due(&store, live.as_ref(), &files).await {
            tracing::warn!(error = %e, "self-destructing messages: will retry");
        }
        if last_sweep.is_none_or(|at| at.elapsed() >= settings.sweep_interval) {
            last_sweep = Some(tokio::time::Instant::now());
            if let Err(e) = sweep(&store, &files, &settings).await {
                tracing::warn!(error = %e, "sweeping orphan files: will retry");
            }
        }
    }
}

/// Destroys the messages that are due, and announces each once.
pub async fn destroy_due(store: &Store, live: &dyn Live, files: &FileStore) -> Result<usize, store::Error> {
    let mut destroyed = 0;
    loop {
        let due = store.due_destructions(store::now_ms(), STEP).await?;
        let more = due.len() as i64 == STEP;
        for (app_id, msg) in due {
            let Some(file_ids) = store.destroy_message(&msg.id).await? else {
                continue;
            };
            destroyed += 1;
            // The files first: a device told "destroyed" must not still find them.
            for id in file_ids {
                match store.chatfile(&app_id, &id).await {
                    Ok(file) => remove_if_orphan(store, files, &file).await,
                    Err(store::Error::NotFound(_)) => {}
                    Err(e) => tracing::warn!(error = %e, file = %id, "reading a destroyed message's file"),
                }
            }
            let app = store.app_by_id(&app_id).await?;
            let event = json!({"op": "destroyed", "id": msg.id, "conv": msg.conv, "seq": msg.seq});
            let framed = frame_inbox(Route::All, event.to_string().as_bytes());
            for user in store.holders(&app_id, &msg.id).await? {
                live.deliver_inbox(&app.org, &app.name, &user, framed.clone());
            }
        }
        if !more {
            return Ok(destroyed);
        }
    }
}

/// Removes orphan files and abandoned uploads.
async fn sweep(store: &Store, files: &FileStore, settings: &TimerSettings) -> Result<(), store::Error> {
    let now = store::now_ms();
    store.release_dropped_room_refs().await?;
    let orphan_before = now - settings.orphan_after.as_millis() as i64;
    loop {
        let orphans = store.orphan_chatfiles(orphan_before, STEP).await?;
        for file in &orphans {
            remove_if_orphan(store, files, file).await;
        }
        if (orphans.len() as i64) < STEP {
            break;
        }
    }
    let stale_before = now - settings.upload_expiry.as_millis() as i64;
    loop {
        let stale = store.stale_uploads(stale_before, STEP).await?;
        for upload in &stale {
            for part in store.upload_parts(&upload.id).await? {
                if let Err(e) = files.delete(&part.object).await {
                    tracing::warn!(error = %e, object = %part.object, "deleting an abandoned upload's part");
                }
            }
            store.delete_upload(&upload.id).await?;
        }
        if (stale.len() as i64) < STEP {
            return Ok(());
        }
    }
}

/// Deletes a file's record and bytes if nothing refers to it any more.
async fn remove_if_orphan(store: &Store, files: &FileStore, file: &store::files::Chatfile) {
    match store.delete_orphan_chatfile(&file.id).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(error = %e, file = %file.id, "removing an orphan file");
            return;
        }
    }
    for key in [file.object_key(), file.thumb_key()] {
        if let Err(e) = files.delete(&key).await {
            tracing::warn!(error = %e, object = %key, "deleting a removed file's bytes; they stay in the store");
        }
    }
    tracing::debug!(file = %file.id, app = %file.app_id, "removed a file nothing refers to");
}
