//! `bench`: one-to-one chat traffic through chatd, and the same traffic as plain MQTT
//! through any broker, so the two can be compared in one run.
//!
//! ```text
//! bench chatd   [--pairs 100 --messages 200 --size 100 --rate 0] [--database-url postgres://…]
//! bench mqtt    --port 1883 [--host 127.0.0.1] [same traffic options]
//! bench compare [--mosquitto-port P | (spawns a fresh mosquitto)] [--database-url …]
//! ```
//!
//! `chatd` mode starts the `chatd` binary next to this one as a child process (fresh
//! SQLite, or a fresh database on the PostgreSQL server of `--database-url`), creates the
//! users, and has N senders each send M messages to their own receiver: QoS 1 `send` ops,
//! timed from publish to the receiver's `msg`. At the end it checks that every acked message
//! is in the database. `mqtt` mode sends the same payloads as QoS 1 publishes on
//! `bench/{i}` topics with no storage. Reported: delivered messages per second (first send
//! to last delivery) and send-to-deliver latency percentiles.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "Chat traffic benchmarks: chatd vs plain MQTT")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Through a chatd started for the run.
    Chatd {
        #[command(flatten)]
        traffic: Traffic,
        /// PostgreSQL server to create the run's database on; SQLite if absent.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Plain MQTT QoS 1 through any broker, no storage.
    Mqtt {
        #[command(flatten)]
        traffic: Traffic,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long)]
        port: u16,
    },
    /// chatd and plain MQTT (a Mosquitto) one after the other, with the ratio.
    Compare {
        #[command(flatten)]
        traffic: Traffic,
        #[arg(long)]
        database_url: Option<String>,
        /// Use a Mosquitto already listening here instead of starting one.
        #[arg(long)]
        mosquitto_port: Option<u16>,
    },
}

#[derive(Args, Clone)]
struct Traffic {
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Total target rate in messages/s; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// What one run measured.
struct Report {
    label: String,
    delivered: usize,
    expected: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn print(&self) {
        println!(
            "{:<28} delivered {}/{} in {:.2} s: {:>9.0} msg/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.label,
            self.delivered,
            self.expected,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.percentile(1.0),
        );
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// How one protocol frames a message and reads it back.
#[derive(Clone)]
enum Protocol {
    /// chatd: users `s{i}` → `r{i}`, JSON envelopes on outbox/inbox topics.
    Chatd {
        org: String,
        app: String,
        tokens: Arc<Vec<(String, String)>>,
    },
    /// Plain MQTT: `bench/{i}`.
    Plain,
}

#[derive(Clone, Copy)]
enum Side {
    Sender,
    Receiver,
}

impl Protocol {
    /// The MQTT options and topic of pair `i`'s sender or receiver.
    fn endpoint(&self, i: usize, side: Side, host: &str, port: u16) -> (MqttOptions, String) {
        let (prefix, leaf) = match side {
            Side::Sender => ("s", "out"),
            Side::Receiver => ("r", "in"),
        };
        match self {
            Protocol::Chatd { org, app, tokens } => {
                let mut options = MqttOptions::new(format!("{prefix}{i}-dev"), host, port);
                let token = match side {
                    Side::Sender => &tokens[i].0,
                    Side::Receiver => &tokens[i].1,
                };
                options.set_credentials(format!("{prefix}{i}"), token);
                (options, format!("chat/{org}/{app}/u/{prefix}{i}/{leaf}"))
            }
            Protocol::Plain => (
                MqttOptions::new(format!("bench-{prefix}{i}"), host, port),
                format!("bench/{i}"),
            ),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Chatd { traffic, database_url } => {
            run_chatd(&traffic, database_url.as_deref()).await?.print();
        }
        Mode::Mqtt { traffic, host, port } => {
            run(
                &traffic,
                &host,
                port,
                Protocol::Plain,
                format!("plain MQTT {host}:{port}"),
            )
            .await?
            .print();
        }
        Mode::Compare {
            traffic,
            database_url,
            mosquitto_port,
        } => {
            let chatd = run_chatd(&traffic, database_url.as_deref()).await?;
            let (port, _mosquitto) = match mosquitto_port {
                Some(port) => (port, None),
                None => {
                    let (port, child) = spawn_mosquitto().await?;
                    (port, Some(child))
                }
            };
            let plain = run(
                &traffic,
                "127.0.0.1",
                port,
                Protocol::Plain,
                format!("mosquitto :{port} (no storage)"),
            )
            .await?;
            chatd.print();
            plain.print();
            println!("chatd / mosquitto throughput: {:.2}x", chatd.rate() / plain.rate());
        }
    }
    Ok(())
}

/// Starts a fresh Mosquitto on a free port.
async fn spawn_mosquitto() -> anyhow::Result<(u16, tokio::process::Child)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("bench-mosquitto-{port}"));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\n"),
    )?;
    let child = tokio::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting mosquitto (apt-get install mosquitto)")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok((port, child));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("mosquitto did not start on port {port}")
}

async fn run_chatd(traffic: &Traffic, database_url: Option<&str>) -> anyhow::Result<Report> {
    let data_dir = tempfile::tempdir()?;
    let (url, label, pg_db) = match database_url {
        Some(base) => {
            use sqlx::Connection;
            let name = format!("chatd_bench_{}", now_us());
            let mut conn = sqlx::PgConnection::connect(base)
                .await
                .context("connecting to PostgreSQL")?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await?;
            let head = base.split('?').next().unwrap();
            let head = &head[..head
                .rfind('/')
                .filter(|i| *i > head.find("://").unwrap() + 2)
                .unwrap_or(head.len())];
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
    let mut child = tokio::process::Command::new(&exe)
        .env("DATABASE_URL", &url)
        .env("CHATD_DATA_DIR", data_dir.path())
        .env("CHATD_MQTT__TCP", "127.0.0.1:0")
        .env("CHATD_MQTT__WS", "")
        .env("CHATD_API__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn,rumqttd=off")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (build it with cargo build --release)", exe.display()))?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
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
    let port: u16 = field("MQTT (TCP):")?.rsplit(':').next().unwrap().parse()?;
    let api = field("REST API:")?;
    let (client_id, secret) = (field("client_id:")?, field("client_secret:")?);

    let http = reqwest::Client::new();
    let base = format!("{api}/demo/chat");
    let post = |path: String, token: Option<String>, body: Value| {
        let http = http.clone();
        async move {
            let mut req = http.post(path).json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await?;
            let status = resp.status();
            let body: Value = resp.json().await?;
            if !status.is_success() {
                bail!("{status}: {body}");
            }
            Ok::<Value, anyhow::Error>(body)
        }
    };
    let app_token = post(
        format!("{base}/token"),
        None,
        json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}),
    )
    .await?["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    // The bench sends in bursts: lift the per-user send rate limit for this app.
    let resp = http
        .put(format!("{base}/settings"))
        .bearer_auth(&app_token)
        .json(&json!({"send_rate_per_sec": 1e9, "send_burst": 1e9}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("setting the app's rate limit: {}", resp.text().await?);
    }
    let mut tokens = Vec::new();
    for chunk in (0..traffic.pairs).collect::<Vec<_>>().chunks(30) {
        let users: Vec<Value> = chunk
            .iter()
            .flat_map(|i| {
                [
                    json!({"username": format!("s{i}"), "password": "pw"}),
                    json!({"username": format!("r{i}"), "password": "pw"}),
                ]
            })
            .collect();
        post(format!("{base}/users"), Some(app_token.clone()), Value::Array(users)).await?;
    }
    for i in 0..traffic.pairs {
        let mut pair = Vec::new();
        for user in [format!("s{i}"), format!("r{i}")] {
            let body = post(
                format!("{base}/token"),
                None,
                json!({"grant_type": "password", "username": user, "password": "pw"}),
            )
            .await?;
            pair.push(body["access_token"].as_str().unwrap().to_string());
        }
        tokens.push((pair[0].clone(), pair[1].clone()));
    }
    let protocol = Protocol::Chatd {
        org: "demo".into(),
        app: "chat".into(),
        tokens: Arc::new(tokens),
    };
    let report = run(traffic, "127.0.0.1", port, protocol, label).await?;

    // Every acked message must be stored: count them through the history API.
    let mut stored = 0;
    for i in 0..traffic.pairs {
        let resp = http
            .get(format!("{base}/users/s{i}/conversations/user/r{i}/messages?limit=1"))
            .bearer_auth(&app_token)
            .send()
            .await?;
        let body: Value = resp.json().await?;
        stored += body["last_seq"].as_u64().unwrap_or(0) as usize;
    }
    println!(
        "{}: {stored} messages stored for {} expected",
        report.label, report.expected
    );
    if stored != report.expected {
        bail!("stored {stored} messages, expected {}", report.expected);
    }
    child.start_kill()?;
    let _ = child.wait().await;
    if let Some((base, name)) = pg_db {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&base).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
    }
    Ok(report)
}

/// Runs the traffic: all receivers connect and subscribe, then all senders send.
async fn run(traffic: &Traffic, host: &str, port: u16, protocol: Protocol, label: String) -> anyhow::Result<Report> {
    let expected = traffic.pairs * traffic.messages;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(expected)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut receivers = Vec::new();
    for i in 0..traffic.pairs {
        let (options, topic) = protocol.endpoint(i, Side::Receiver, host, port);
        let (client, mut eventloop) = client(options);
        client.subscribe(&topic, QoS::AtLeastOnce).await?;
        // Wait for the SUBACK so no message is sent before anyone listens.
        loop {
            match eventloop.poll().await.context("receiver connect")? {
                Event::Incoming(Packet::SubAck(_)) => break,
                _ => continue,
            }
        }
        let (latencies, done_tx, want) = (latencies.clone(), done_tx.clone(), traffic.messages);
        let chatd = matches!(protocol, Protocol::Chatd { .. });
        receivers.push(tokio::spawn(async move {
            let mut got = 0;
            let mut local = Vec::with_capacity(want);
            while got < want {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                            continue;
                        };
                        let sent = if chatd { v["ext"]["t"].as_u64() } else { v["t"].as_u64() };
                        if let Some(sent) = sent {
                            local.push(now_us().saturating_sub(sent));
                            got += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("receiver {i}: {e}");
                        break;
                    }
                }
            }
            latencies.lock().await.extend(local);
            let _ = done_tx.send(Instant::now());
            drop(client);
        }));
    }
    drop(done_tx);

    let started = Instant::now();
    let per_sender_interval =
        (traffic.rate > 0).then(|| Duration::from_secs_f64(traffic.pairs as f64 / traffic.rate as f64));
    let text = "x".repeat(traffic.size);
    let mut senders = Vec::new();
    for i in 0..traffic.pairs {
        let (options, topic) = protocol.endpoint(i, Side::Sender, host, port);
        let (client, mut eventloop) = client(options);
        let (protocol, text, messages) = (protocol.clone(), text.clone(), traffic.messages);
        senders.push(tokio::spawn(async move {
            let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let mut ticker = per_sender_interval.map(|d| {
                let mut t = tokio::time::interval(d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            for n in 0..messages {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let payload = match &protocol {
                    Protocol::Chatd { .. } => json!({"op": "send", "cid": format!("{n}"), "chat": "user", "to": format!("r{i}"), "type": "txt", "body": {"msg": text}, "ext": {"t": now_us()}}),
                    Protocol::Plain => json!({"msg": text, "t": now_us()}),
                };
                if client.publish(&topic, QoS::AtLeastOnce, false, payload.to_string()).await.is_err() {
                    break;
                }
            }
            // Keep the connection until the receivers are done.
            (client, poller)
        }));
    }
    let mut keep = Vec::new();
    for s in senders {
        keep.push(s.await?);
    }
    let mut last = started;
    let deadline = Duration::from_secs(60 + (expected as u64 / 1000));
    while let Ok(Some(at)) = tokio::time::timeout(deadline, done_rx.recv()).await {
        last = last.max(at);
    }
    for r in receivers {
        r.abort();
    }
    for (_, poller) in keep {
        poller.abort();
    }
    let mut latencies_us = std::mem::take(&mut *latencies.lock().await);
    latencies_us.sort_unstable();
    Ok(Report {
        label,
        delivered: latencies_us.len(),
        expected,
        elapsed: last - started,
        latencies_us,
    })
}

fn client(mut options: MqttOptions) -> (AsyncClient, rumqttc::EventLoop) {
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_inflight(100);
    AsyncClient::new(options, 1000)
}
