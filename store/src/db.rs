//! The database handle: one `sqlx::Any` pool over SQLite or PostgreSQL, and the migrations.
//!
//! The schema is written once in SQL that both backends accept (TEXT, BIGINT, no
//! auto-increment, `ON CONFLICT`, `RETURNING`), so every query in this crate runs on both.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::error::{Error, Result};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The storage handle shared by the gate, the bridge and the API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    /// On SQLite, the thread that stores one-to-one batches (`sqlite_writer`).
    pub(crate) sqlite_writer: Option<std::sync::Arc<crate::sqlite_writer::SqliteWriter>>,
    /// Notified after a commit that recorded stored messages for the push planner.
    pub(crate) push_recorded: std::sync::Arc<tokio::sync::Notify>,
}

/// The PostgreSQL advisory lock key migrations run under (any constant; "chatd" in ASCII).
const MIGRATION_LOCK: i64 = 0x63_6861_7464;

/// Each migration is a list of statements, applied once, in order, in one transaction.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE server_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE apps (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        name TEXT NOT NULL,
        client_id TEXT NOT NULL UNIQUE,
        secret_hash TEXT NOT NULL,
        secret_version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        UNIQUE (org, name)
    )",
        "CREATE TABLE users (
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        nickname TEXT,
        metadata TEXT NOT NULL,
        inbox_seq BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (app_id, username)
    )",
        "CREATE TABLE conversations (
        app_id TEXT NOT NULL,
        conv TEXT NOT NULL,
        last_seq BIGINT NOT NULL,
        PRIMARY KEY (app_id, conv)
    )",
        "CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        conv TEXT NOT NULL,
        seq BIGINT NOT NULL,
        chat TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_device TEXT NOT NULL,
        recipient TEXT NOT NULL,
        cid TEXT NOT NULL,
        msg_type TEXT NOT NULL,
        body TEXT NOT NULL,
        ext TEXT,
        ts BIGINT NOT NULL,
        UNIQUE (app_id, conv, seq),
        UNIQUE (app_id, sender, cid)
    )",
        "CREATE TABLE inbox (
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        useq BIGINT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (app_id, username, useq)
    )",
    ],
    // 2: app settings, contacts and blocks, groups and chatrooms ("channels").
    &[
        "ALTER TABLE apps ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'",
        "CREATE TABLE contacts (
        app_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        friend TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (app_id, owner, friend)
    )",
        "CREATE TABLE blocks (
        app_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        blocked TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (app_id, owner, blocked)
    )",
        "CREATE TABLE channels (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        public BIGINT NOT NULL,
        members_only BIGINT NOT NULL,
        allow_invites BIGINT NOT NULL,
        max_members BIGINT NOT NULL,
        owner TEXT NOT NULL,
        announcement TEXT NOT NULL,
        muted_all BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
        "CREATE INDEX channels_app ON channels (app_id, kind, id)",
        "CREATE TABLE channel_members (
        channel_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        role TEXT NOT NULL,
        muted_until BIGINT NOT NULL,
        joined_at BIGINT NOT NULL,
        PRIMARY KEY (channel_id, username)
    )",
        "CREATE INDEX channel_members_user ON channel_members (app_id, username)",
        "CREATE TABLE channel_bans (
        channel_id TEXT NOT NULL,
        username TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (channel_id, username)
    )",
        "CREATE TABLE channel_requests (
        channel_id TEXT NOT NULL,
        username TEXT NOT NULL,
        kind TEXT NOT NULL,
        by_user TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (channel_id, username, kind)
    )",
        "CREATE TABLE room_messages (
        room_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        id TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_device TEXT NOT NULL,
        cid TEXT NOT NULL,
        msg_type TEXT NOT NULL,
        body TEXT NOT NULL,
        ext TEXT,
        ts BIGINT NOT NULL,
        PRIMARY KEY (room_id, seq)
    )",
        "CREATE INDEX room_messages_cid ON room_messages (room_id, sender, cid)",
    ],
    // 3: the life of a message: read state, conversation list, recall, edit, delete for me,
    // reactions.
    &[
        "ALTER TABLE conversations ADD COLUMN last_ts BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE conversations ADD COLUMN last_message_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN recalled BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE messages ADD COLUMN edited_at BIGINT NOT NULL DEFAULT 0",
        "CREATE TABLE user_conversations (
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        conv TEXT NOT NULL,
        read_seq BIGINT NOT NULL,
        delivered_seq BIGINT NOT NULL,
        PRIMARY KEY (app_id, username, conv)
    )",
        "CREATE INDEX user_conversations_conv ON user_conversations (app_id, conv)",
        "CREATE TABLE hidden_messages (
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (app_id, username, message_id)
    )",
        "CREATE TABLE reactions (
        message_id TEXT NOT NULL,
        emoji TEXT NOT NULL,
        username TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (message_id, emoji, username)
    )",
        "CREATE INDEX inbox_message ON inbox (app_id, message_id)",
    ],
    // 4: push notifications.
    &[
        "ALTER TABLE apps ADD COLUMN push_config TEXT NOT NULL DEFAULT '{}'",
        "CREATE TABLE push_devices (
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        device_id TEXT NOT NULL,
        notifier TEXT NOT NULL,
        token TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_result TEXT NOT NULL,
        last_at BIGINT NOT NULL,
        PRIMARY KEY (app_id, username, device_id)
    )",
        "CREATE TABLE push_dnd (
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        all_off BIGINT NOT NULL,
        quiet_start BIGINT NOT NULL,
        quiet_end BIGINT NOT NULL,
        utc_offset_minutes BIGINT NOT NULL,
        PRIMARY KEY (app_id, username)
    )",
        "CREATE TABLE push_muted (
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        conv TEXT NOT NULL,
        PRIMARY KEY (app_id, username, conv)
    )",
        "CREATE TABLE push_queue (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        device_id TEXT NOT NULL,
        notifier TEXT NOT NULL,
        token TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        next_at BIGINT NOT NULL,
        locked_until BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    )",
        "CREATE INDEX push_queue_due ON push_queue (next_at)",
        "CREATE TABLE push_pending (
        id TEXT PRIMARY KEY,
        messages TEXT NOT NULL,
        locked_until BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    )",
    ],
    // 5: a user's token generation, carried in their tokens' `ver` claim: a new one on
    // creation (so a deleted and re-created user does not inherit old tokens) and on
    // revocation. Existing users keep 0, which is what their existing tokens carry.
    &["ALTER TABLE users ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0"],
    // 6: files (chatfiles, what references them, resumable uploads), self-destructing
    // messages, avatars.
    &[
        "CREATE TABLE chatfiles (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        secret TEXT NOT NULL,
        filename TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size BIGINT NOT NULL,
        width BIGINT NOT NULL,
        height BIGINT NOT NULL,
        thumb_type TEXT NOT NULL,
        thumb_size BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        released_at BIGINT NOT NULL
    )",
        "CREATE INDEX chatfiles_owner ON chatfiles (app_id, owner)",
        "CREATE INDEX chatfiles_released ON chatfiles (released_at)",
        "CREATE TABLE chatfile_refs (
        file_id TEXT NOT NULL,
        holder TEXT NOT NULL,
        room TEXT NOT NULL,
        PRIMARY KEY (file_id, holder)
    )",
        "CREATE INDEX chatfile_refs_holder ON chatfile_refs (holder)",
        "CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        filename TEXT NOT NULL,
        length BIGINT NOT NULL,
        received BIGINT NOT NULL,
        file_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
        "CREATE INDEX uploads_owner ON uploads (app_id, owner)",
        "CREATE INDEX uploads_updated ON uploads (updated_at)",
        "CREATE TABLE upload_parts (
        upload_id TEXT NOT NULL,
        start BIGINT NOT NULL,
        size BIGINT NOT NULL,
        object TEXT NOT NULL,
        PRIMARY KEY (upload_id, start)
    )",
        "ALTER TABLE messages ADD COLUMN destroy_after BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE messages ADD COLUMN destroy_from TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN destroy_at BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE messages ADD COLUMN destroyed BIGINT NOT NULL DEFAULT 0",
        "CREATE INDEX messages_destroy_at ON messages (destroy_at) WHERE destroy_at > 0",
        "ALTER TABLE users ADD COLUMN avatar TEXT NOT NULL DEFAULT ''",
    ],
    // 7: what the platform's API needs: a user's uuid (given to existing users by
    // `backfill_user_uuids`), activation and global mutes; a channel's `custom` data, avatar
    // URL and disabled flag; allow-listed members and members' attributes; chatroom
    // attributes; the platform's notification settings; who may create chatrooms.
    &[
        "ALTER TABLE users ADD COLUMN uuid TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE users ADD COLUMN activated BIGINT NOT NULL DEFAULT 1",
        "ALTER TABLE channels ADD COLUMN custom TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE channels ADD COLUMN avatar TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE channels ADD COLUMN disabled BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE channel_members ADD COLUMN allowlisted BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE channel_members ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE users ADD COLUMN mute_chat_until BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN mute_groupchat_until BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN mute_chatroom_until BIGINT NOT NULL DEFAULT 0",
        "CREATE TABLE room_attributes (
        room_id TEXT NOT NULL,
        attr_key TEXT NOT NULL,
        attr_value TEXT NOT NULL,
        owner TEXT NOT NULL,
        auto_delete BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (room_id, attr_key)
    )",
        "CREATE TABLE push_prefs (
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        target TEXT NOT NULL,
        mode TEXT NOT NULL,
        quiet TEXT NOT NULL,
        ignore_until BIGINT NOT NULL,
        PRIMARY KEY (app_id, username, target)
    )",
        "CREATE TABLE room_creators (
        app_id TEXT NOT NULL,
        username TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (app_id, username)
    )",
    ],
    // 8: webhooks (an app's endpoints, their state) and the durable queue of their events.
    &[
        "CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        url TEXT NOT NULL,
        secret TEXT NOT NULL,
        events TEXT NOT NULL,
        state TEXT NOT NULL,
        failures BIGINT NOT NULL,
        last_error TEXT NOT NULL,
        last_success_at BIGINT NOT NULL,
        last_failure_at BIGINT NOT NULL,
        probe_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    )",
        "CREATE INDEX webhooks_by_app ON webhooks (app_id)",
        "CREATE TABLE webhook_events (
        id TEXT PRIMARY KEY,
        webhook_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        ref_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        next_at BIGINT NOT NULL,
        locked_until BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    )",
        "CREATE INDEX webhook_events_due ON webhook_events (next_at)",
        "CREATE INDEX webhook_events_by_hook ON webhook_events (webhook_id, created_at)",
    ],
];

/// Gives every user created before migration 7 a uuid, in the migration's transaction.
async fn backfill_user_uuids(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
    let users: Vec<(String, String)> = sqlx::query_as("SELECT app_id, username FROM users WHERE uuid = ''")
        .fetch_all(&mut **tx)
        .await?;
    for (app_id, username) in users {
        sqlx::query("UPDATE users SET uuid = $1 WHERE app_id = $2 AND username = $3")
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(app_id)
            .bind(username)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Store {
    /// One round trip to the database: it answers queries (readiness checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Connects to `url` (`sqlite://path` or `postgres://…`) and runs pending migrations.
    /// A SQLite file is created if missing; SQLite runs in WAL mode with `synchronous=FULL`,
    /// so a committed (acked) message survives a crash of the process or the machine.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::invalid("database url", "must start with sqlite: or postgres:"));
        };
        let mut url = url.to_string();
        if backend == Backend::Sqlite && !url.contains("mode=") {
            url.push_str(if url.contains('?') { "&" } else { "?" });
            url.push_str("mode=rwc");
        }
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=FULL").await?;
                        conn.execute("PRAGMA busy_timeout=10000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let mut store = Store {
            pool,
            backend,
            sqlite_writer: None,
            push_recorded: std::sync::Arc::default(),
        };
        store.migrate().await?;
        if backend == Backend::Sqlite {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?;
            let writer = crate::sqlite_writer::SqliteWriter::open(options.get_filename())?;
            store.sqlite_writer = Some(std::sync::Arc::new(writer));
        }
        Ok(store)
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that read first and then wrote would fail
    /// with "database is locked" whenever another connection wrote in between, and no
    /// busy timeout helps with that.
    pub(crate) async fn write_tx(&self) -> std::result::Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Notified after this process commits stored messages the push planner has to plan (see
    /// `messages::INSERT_PUSH_RECORD`): what wakes the push worker. Other nodes' records are
    /// found by its poll.
    pub fn push_recorded(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.push_recorded.clone()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How a claim's subquery (push jobs, push plans, webhook events) locks the rows it
    /// picks. On PostgreSQL, workers of several nodes claim at once: without locking in the
    /// subquery, two claims could lock the same rows in different orders (a deadlock was seen
    /// with three nodes); `SKIP LOCKED` makes each take rows no other claim holds. SQLite has
    /// one writer at a time.
    pub(crate) fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Brings the schema up to date. Several processes may start at once on one empty
    /// PostgreSQL database: they take turns under an advisory lock (held by one connection
    /// for the whole run, and let go if that process dies), so one migrates and the others
    /// find the work done. On SQLite each migration's `BEGIN IMMEDIATE` takes the file's
    /// write lock, which does the same.
    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            conn.execute(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})").as_str())
                .await?;
        }
        let migrated = self.migrate_on(&mut conn).await;
        if self.backend == Backend::Postgres {
            let unlocked = conn
                .execute(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})").as_str())
                .await;
            if let Err(e) = unlocked {
                // Dropping the connection from the pool lets the lock go with it.
                tracing::warn!(error = %e, "could not release the migration lock; closing its connection");
                conn.detach();
            }
        }
        migrated
    }

    async fn migrate_on(&self, conn: &mut sqlx::pool::PoolConnection<sqlx::Any>) -> Result<()> {
        use sqlx::Connection;
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
            .await?;
        for (i, statements) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            let mut tx = match self.backend {
                Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
                Backend::Postgres => conn.begin().await?,
            };
            let claimed = sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if claimed == 0 {
                continue;
            }
            for statement in *statements {
                tx.execute(*statement).await?;
            }
            if version == 7 {
                backfill_user_uuids(&mut tx).await?;
            }
            tx.commit().await?;
            tracing::info!(version, "applied migration");
        }
        Ok(())
    }

    /// A server-wide secret, generated on first use and kept in the database, so that
    /// tokens stay valid across restarts and across processes sharing one database.
    pub async fn server_key(&self, name: &str) -> Result<String> {
        let fresh = crate::tokens::random_secret(32);
        sqlx::query("INSERT INTO server_keys (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(&fresh)
            .execute(&self.pool)
            .await?;
        let value: String = sqlx::query_scalar("SELECT value FROM server_keys WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(value)
    }
}
