//! A chatd started for one bench run: the binary next to this one, as a child process, on
//! free ports, with a fresh SQLite file or a fresh database on a PostgreSQL server; or, for
//! a cluster run, several such processes on one fresh PostgreSQL database with NATS between
//! them. And the REST calls the runs need (users, tokens, groups, rooms).

use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The chatd of a run: one node, or the nodes of a cluster, on one database. REST calls go
/// to the first node.
pub struct Chatd {
    pub label: String,
    /// Every node, the first one (which created the dev app) first.
    pub nodes: Vec<Node>,
    pub base: String,
    pub app_token: String,
    pub http: reqwest::Client,
    pg_db: Option<(String, String)>,
}

/// One chatd process.
pub struct Node {
    pub name: String,
    pub mqtt_port: u16,
    child: tokio::process::Child,
    _data_dir: tempfile::TempDir,
}

/// Several chatd nodes on one PostgreSQL database, with NATS between them.
pub struct Cluster<'a> {
    /// The NATS server the nodes join (`nats://127.0.0.1:PORT`).
    pub nats_url: &'a str,
    pub nodes: usize,
}

impl Chatd {
    /// A chatd with the per-user send and connect budgets lifted: bench senders send far
    /// faster than a person (up to ~200 msg/s each when saturated), and `idle` connects
    /// thousands of devices of few users, as fast as it can.
    pub async fn start(database_url: Option<&str>) -> anyhow::Result<Chatd> {
        Self::start_with(database_url, true, None).await
    }

    /// A chatd with the budgets lifted (as [`Chatd::start`]) or at their defaults (what
    /// `--flood` measures); with `cluster`, that many nodes on one PostgreSQL database. The
    /// first node creates the schema and the dev app, and prints the app's credentials; the
    /// others start once it is up.
    pub async fn start_with(
        database_url: Option<&str>,
        lift_budgets: bool,
        cluster: Option<Cluster<'_>>,
    ) -> anyhow::Result<Chatd> {
        Self::launch(database_url, lift_budgets, cluster, &[]).await
    }

    /// A chatd as [`Chatd::start`] with `env` added to its environment: settings a run needs
    /// and the others do not (`files` picks the file store with `CHATD_FILES__STORE`).
    pub async fn start_with_env(database_url: Option<&str>, env: &[(&str, &str)]) -> anyhow::Result<Chatd> {
        Self::launch(database_url, true, None, env).await
    }

    /// [`Chatd::start_with`], with `env` added to every node's environment.
    pub async fn launch(
        database_url: Option<&str>,
        lift_budgets: bool,
        cluster: Option<Cluster<'_>>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Chatd> {
        let data_dirs = (0..cluster.as_ref().map_or(1, |c| c.nodes))
            .map(|_| tempfile::tempdir())
            .collect::<Result<Vec<_>, _>>()?;
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
        let (url, mut label, pg_db) = match database_url {
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
            None if cluster.is_some() => bail!("the nodes of a cluster need a PostgreSQL database"),
            None => (
                format!("sqlite://{}", data_dirs[0].path().join("chatd.db").display()),
                "chatd (SQLite)".to_string(),
                None,
            ),
        };
        if let Some(cluster) = &cluster {
            label = match cluster.nodes {
                1 => "chatd (PostgreSQL, cluster mode, 1 node)".to_string(),
                n => format!("chatd (PostgreSQL, {n} nodes)"),
            };
        }
        let exe = std::env::current_exe()?.with_file_name("chatd");
        let mut nodes = Vec::with_capacity(data_dirs.len());
        let mut first_banner = Vec::new();
        for (n, data_dir) in data_dirs.into_iter().enumerate() {
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
            let name = format!("node{n}");
            if let Some(cluster) = &cluster {
                command
                    .env("CHATD_CLUSTER__NATS", cluster.nats_url)
                    .env("CHATD_CLUSTER__NODE", &name)
                    .env("CHATD_CLUSTER__PREFIX", "bench");
            }
            command.env("DATABASE_URL", &url).envs(env.iter().copied());
            let (node, banner) = Node::spawn(command, name, data_dir).await?;
            nodes.push(node);
            if n == 0 {
                first_banner = banner;
            }
        }
        let field = |prefix: &str| banner_field(&first_banner, prefix);
        let base = format!("{}/demo/chat", field("REST API:")?);
        let http = reqwest::Client::new();
        let grant = json!({"grant_type": "client_credentials", "client_id": field("client_id:")?, "client_secret": field("client_secret:")?});
        let mut chatd = Chatd {
            label,
            nodes,
            base,
            app_token: String::new(),
            http,
            pg_db,
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

    /// The first node's MQTT port (the only node's, unless a cluster run).
    pub fn mqtt_port(&self) -> u16 {
        self.nodes[0].mqtt_port
    }

    /// The first node's process id.
    pub fn pid(&self) -> u32 {
        self.nodes[0].pid()
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

    /// Creates users `{prefix}0…{prefix}{n-1}`, without passwords, a few requests at a time.
    pub async fn create_users(&self, prefix: &str, n: usize) -> anyhow::Result<()> {
        let batches: Vec<Vec<Value>> = (0..n)
            // No password: tokens come from the app ("inherit"), and hashing one (argon2) took
            // chatd ~35 ms of CPU a user before every run: 7 s for 100 pairs.
            .map(|i| json!({"username": format!("{prefix}{i}")}))
            .collect::<Vec<_>>()
            .chunks(60)
            .map(<[Value]>::to_vec)
            .collect();
        for group in batches.chunks(4) {
            let requests = group
                .iter()
                .map(|batch| self.post("/users", Value::Array(batch.clone())));
            for result in futures_util::future::join_all(requests).await {
                // A batch creates what it can and names the rest in `data`.
                let answer = result?;
                if answer["data"].as_array().is_some_and(|refused| !refused.is_empty()) {
                    bail!("users not created: {}", answer["data"]);
                }
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

    pub async fn stop(mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.child.start_kill()?;
        }
        for node in &mut self.nodes {
            let _ = node.child.wait().await;
        }
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

impl Node {
    /// Starts `command` (chatd, its database and cluster settings already set) on free
    /// ports and reads its start banner, up to the REST API's address.
    async fn spawn(
        mut command: tokio::process::Command,
        name: String,
        data_dir: tempfile::TempDir,
    ) -> anyhow::Result<(Node, Vec<String>)> {
        let program = std::path::PathBuf::from(command.as_std().get_program());
        let mut child = command
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
            .with_context(|| format!("starting {} (build it with cargo build --release)", program.display()))?;
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
        let mqtt_port = banner_field(&banner, "MQTT (TCP):")
            .with_context(|| format!("starting {name}"))?
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .parse()?;
        let node = Node {
            name,
            mqtt_port,
            child,
            _data_dir: data_dir,
        };
        Ok((node, banner))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }
}

/// The value after `prefix` on a line of chatd's start banner.
fn banner_field(banner: &[String], prefix: &str) -> anyhow::Result<String> {
    banner
        .iter()
        .find_map(|line| line.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
        .with_context(|| format!("chatd did not print '{prefix}'"))
}

/// A process's CPU time so far, user and system, in seconds (`/proc/PID/stat`); 0 if it
/// has gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces), from field 3 (state): utime
    // and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 / ticks_per_second()
}

/// The unit of the CPU times in `/proc` (clock ticks per second).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU seconds the whole machine has been busy, all cores and processes (`/proc/stat`:
/// user, nice, system, irq, softirq and steal time; not idle or iowait).
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|all| all.strip_prefix("cpu "))
        .map_or(Vec::new(), |all| {
            all.split_whitespace().filter_map(|v| v.parse().ok()).collect()
        });
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy as f64 / ticks_per_second()
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
