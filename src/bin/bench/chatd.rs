//! A chatd started for one bench run: the binary next to this one, as a child process, on
//! free ports, with a fresh SQLite file or a fresh database on a PostgreSQL server; and the
//! REST calls the runs need (users, tokens, groups, rooms).

use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Chatd {
    pub label: String,
    pub mqtt_port: u16,
    pub base: String,
    pub app_token: String,
    pub http: reqwest::Client,
    child: tokio::process::Child,
    pg_db: Option<(String, String)>,
    _data_dir: tempfile::TempDir,
}

impl Chatd {
    /// A chatd with the per-user send and connect budgets lifted: bench senders send far
    /// faster than a person (up to ~200 msg/s each when saturated), and `idle` connects
    /// thousands of devices of few users, as fast as it can.
    pub async fn start(database_url: Option<&str>) -> anyhow::Result<Chatd> {
        Self::start_with(database_url, true).await
    }

    /// A chatd with every budget at its default (what `--flood` measures).
    pub async fn start_with_default_budgets(database_url: Option<&str>) -> anyhow::Result<Chatd> {
        Self::start_with(database_url, false).await
    }

    async fn start_with(database_url: Option<&str>, lift_budgets: bool) -> anyhow::Result<Chatd> {
        let data_dir = tempfile::tempdir()?;
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
        let (url, label, pg_db) = match database_url {
            Some(base) => {
                use sqlx::Connection;
                let name = format!("chatd_bench_{stamp}");
                let mut conn = sqlx::PgConnection::connect(base)
                    .await
                    .context("connecting to PostgreSQL")?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await?;
                let head = base.split('?').next().unwrap_or(base);
                let authority = head.find("://").map_or(0, |i| i + 3);
                let head = head[authority..]
                    .find('/')
                    .map_or(head, |slash| &head[..authority + slash]);
                (
                    format!("{head}/{name}"),
                    "chatd (PostgreSQL)".to_string(),
                    Some((base.to_string(), name)),
                )
            }
            None => (
                format!("sqlite://{}", data_dir.path().join("chatd.db").display()),
                "chatd (SQLite)".to_string(),
                None,
            ),
        };
        let exe = std::env::current_exe()?.with_file_name("chatd");
        let mut command = tokio::process::Command::new(&exe);
        if lift_budgets {
            for (key, value) in [
                ("CHATD_MQTT__BUDGETS__SEND__PER_SEC", "1000000"),
                ("CHATD_MQTT__BUDGETS__SEND__BURST", "1000000"),
                ("CHATD_MQTT__BUDGETS__CONNECT__PER_SEC", "1000000"),
                ("CHATD_MQTT__BUDGETS__CONNECT__BURST", "1000000"),
            ] {
                command.env(key, value);
            }
        }
        let mut child = command
            .env("DATABASE_URL", &url)
            .env("CHATD_DATA_DIR", data_dir.path())
            .env("CHATD_MQTT__TCP", "127.0.0.1:0")
            .env("CHATD_MQTT__WS", "")
            .env("CHATD_API__LISTEN", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_CHATD_LOG").unwrap_or_else(|_| "warn,rumqttd=off".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (build it with cargo build --release)", exe.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let mut banner = Vec::new();
        while let Some(line) = lines.next_line().await? {
            let done = line.starts_with("REST API:");
            banner.push(line);
            if done {
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |prefix: &str| -> anyhow::Result<String> {
            banner
                .iter()
                .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
                .with_context(|| format!("chatd did not print '{prefix}'"))
        };
        let mqtt_port: u16 = field("MQTT (TCP):")?.rsplit(':').next().unwrap_or_default().parse()?;
        let base = format!("{}/demo/chat", field("REST API:")?);
        let http = reqwest::Client::new();
        let grant = json!({"grant_type": "client_credentials", "client_id": field("client_id:")?, "client_secret": field("client_secret:")?});
        let mut chatd = Chatd {
            label,
            mqtt_port,
            base,
            app_token: String::new(),
            http,
            child,
            pg_db,
            _data_dir: data_dir,
        };
        chatd.app_token = chatd.post("/token", grant).await?["access_token"]
            .as_str()
            .context("no token")?
            .to_string();
        // Bench traffic comes in bursts and big rooms: lift the per-user limits.
        let limits = json!({"send_rate_per_sec": 1e9, "send_burst": 1e9, "max_group_members": 100000, "max_room_members": 100000});
        chatd.put("/settings", limits).await?;
        Ok(chatd)
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.app_token)
            .json(&body)
            .send()
            .await?;
        Self::answer(resp).await
    }

    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.app_token)
            .json(&body)
            .send()
            .await?;
        Self::answer(resp).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.app_token)
            .send()
            .await?;
        Self::answer(resp).await
    }

    async fn answer(resp: reqwest::Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("{status}: {body}");
        }
        Ok(body)
    }

    /// Creates users `{prefix}0…{prefix}{n-1}` (password "pw"), a few requests at a time:
    /// argon2 makes creation the slow part of a large setup.
    pub async fn create_users(&self, prefix: &str, n: usize) -> anyhow::Result<()> {
        let batches: Vec<Vec<Value>> = (0..n)
            .map(|i| json!({"username": format!("{prefix}{i}"), "password": "pw"}))
            .collect::<Vec<_>>()
            .chunks(60)
            .map(<[Value]>::to_vec)
            .collect();
        for group in batches.chunks(4) {
            let requests = group
                .iter()
                .map(|batch| self.post("/users", Value::Array(batch.clone())));
            for result in futures_util::future::join_all(requests).await {
                result?;
            }
        }
        Ok(())
    }

    /// A user token, issued on the app's authority (no password hashing).
    pub async fn user_token(&self, user: &str) -> anyhow::Result<String> {
        let body = self
            .post("/token", json!({"grant_type": "inherit", "username": user}))
            .await?;
        Ok(body["access_token"].as_str().context("no token")?.to_string())
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        let _ = self.child.wait().await;
        if let Some((base, name)) = self.pg_db.take() {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&base).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }
}

/// A process's resident memory in KiB and open file descriptors, from `/proc`.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Prints chatd's resident memory every `every` seconds until aborted.
pub fn sample_rss(pid: u32, every: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
        loop {
            tick.tick().await;
            println!(
                "rss t={:>5}s {:>8.1} MiB",
                started.elapsed().as_secs(),
                rss_kib(pid) as f64 / 1024.0
            );
        }
    })
}
