//! Many idle, authenticated MQTT connections held for a while, and what they cost chatd:
//! resident memory per connection and open files. The connections come from several
//! worker processes (this binary, `bench idle-worker`), each from its own 127.0.0.x source
//! address, as one process may hold at most 20,000 files on these machines.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::QoS;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::chatd::{open_files, rss_kib, Chatd, Cluster};
use crate::nats::NatsServer;

#[derive(clap::Args, Clone)]
pub struct Idle {
    /// Connections to open in all.
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    /// Users they belong to (each user gets connections / users devices).
    #[arg(long, default_value_t = 500)]
    pub users: usize,
    /// Worker processes opening them.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// How long to hold them once open.
    #[arg(long, default_value_t = 600)]
    pub hold_secs: u64,
    /// Print chatd's memory this often while holding.
    #[arg(long, default_value_t = 60)]
    pub every_secs: u64,
    /// One node with cluster mode on (needs `--database-url`): it joins a throwaway
    /// nats-server, and each connection's subscriptions are routed through it.
    #[arg(long)]
    pub cluster: bool,
}

pub async fn run(idle: &Idle, database_url: Option<&str>) -> anyhow::Result<()> {
    if idle.cluster && database_url.is_none() {
        bail!("--cluster needs --database-url: cluster mode runs on PostgreSQL");
    }
    let nats = match idle.cluster {
        true => Some(NatsServer::start().await?),
        false => None,
    };
    let nats_url = nats.as_ref().map(NatsServer::url);
    let cluster = nats_url.as_deref().map(|nats_url| Cluster { nats_url, nodes: 1 });
    let chatd = Chatd::start_with(database_url, true, cluster).await?;
    chatd.create_users("u", idle.users).await?;
    let mut tokens = Vec::with_capacity(idle.users);
    for i in 0..idle.users {
        tokens.push(chatd.user_token(&format!("u{i}")).await?);
    }
    let dir = tempfile::tempdir()?;
    let tokens_file = dir.path().join("tokens");
    std::fs::write(&tokens_file, tokens.join("\n"))?;
    let pid = chatd.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (base_rss, base_files) = (rss_kib(pid), open_files(pid));
    println!(
        "{}: before: {:.1} MiB resident, {base_files} open files",
        chatd.label,
        base_rss as f64 / 1024.0
    );

    let started = Instant::now();
    let per_worker = idle.connections.div_ceil(idle.workers);
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for w in 0..idle.workers {
        let from = w * per_worker;
        let to = ((w + 1) * per_worker).min(idle.connections);
        let mut child = tokio::process::Command::new(&exe)
            .arg("idle-worker")
            .arg("--port")
            .arg(chatd.mqtt_port().to_string())
            .arg("--from")
            .arg(from.to_string())
            .arg("--to")
            .arg(to.to_string())
            .arg("--source")
            .arg(format!("127.0.0.{}", w + 2))
            .arg("--tokens")
            .arg(&tokens_file)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        workers.push((child, tokio::spawn(async move { lines.next_line().await })));
    }
    let mut connected = 0;
    let mut children = Vec::new();
    for (child, line) in workers {
        let line = line.await??.context("a worker ended without a report")?;
        println!("  worker: {line}");
        connected += line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        children.push(child);
    }
    let opened_in = started.elapsed();
    let report = |label: &str| {
        let rss = rss_kib(pid);
        let per = (rss.saturating_sub(base_rss) as f64 * 1024.0) / connected.max(1) as f64;
        println!(
            "{label}: {connected} connected, {:.1} MiB resident, {:.1} KB per connection, {} open files",
            rss as f64 / 1024.0,
            per / 1000.0,
            open_files(pid)
        );
    };
    println!("opened in {:.1} s", opened_in.as_secs_f64());
    report("t=0s");
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(idle.hold_secs) {
        tokio::time::sleep(Duration::from_secs(idle.every_secs.max(1))).await;
        report(&format!("t={}s", hold.elapsed().as_secs()));
    }
    // Every worker must still hold all of its connections.
    for mut child in children {
        if let Some(status) = child.try_wait()? {
            bail!("a worker ended early: {status}");
        }
        child.start_kill()?;
    }
    chatd.stop().await
}

#[derive(clap::Args)]
pub struct Worker {
    #[arg(long)]
    port: u16,
    #[arg(long)]
    from: usize,
    #[arg(long)]
    to: usize,
    #[arg(long)]
    source: std::net::IpAddr,
    #[arg(long)]
    tokens: std::path::PathBuf,
}

/// Opens connections `from..to` (device `idle-{n}` of user `u{n % users}`), subscribes
/// each to its inbox, prints `connected N failed M`, then holds them, pinging every 4 min.
pub async fn worker(w: &Worker) -> anyhow::Result<()> {
    // One file per connection.
    chatd::raise_open_files_limit();
    let tokens: Vec<String> = std::fs::read_to_string(&w.tokens)?.lines().map(String::from).collect();
    let mut tasks = tokio::task::JoinSet::new();
    let (mut connected, mut failed) = (0, 0);
    let mut streams = Vec::new();
    for n in w.from..w.to {
        let user = n % tokens.len();
        match open(w, n, user, &tokens[user]).await {
            Ok(stream) => {
                connected += 1;
                streams.push(stream);
            }
            Err(e) => {
                if failed == 0 {
                    eprintln!("connection {n}: {e}");
                }
                failed += 1;
            }
        }
    }
    println!("connected {connected} failed {failed}");
    for mut stream in streams {
        tasks.spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(240)) => {
                        if stream.write_all(&[0xC0, 0x00]).await.is_err() {
                            return;
                        }
                    }
                    read = stream.read(&mut buf) => {
                        if matches!(read, Ok(0) | Err(_)) {
                            return;
                        }
                    }
                }
            }
        });
    }
    // Holds until killed; a connection the server closes ends its task.
    while tasks.join_next().await.is_some() {}
    bail!("every connection was closed by the server")
}

async fn open(w: &Worker, n: usize, user: usize, token: &str) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((w.source, 0).into())?;
    let mut stream = socket.connect(([127, 0, 0, 1], w.port).into()).await?;
    let mut connect = v4::Connect::new(format!("idle-{n}"));
    connect.keep_alive = 300;
    connect.set_login(format!("u{user}"), token);
    let mut out = BytesMut::new();
    v4::Packet::Connect(connect).write(&mut out, usize::MAX)?;
    v4::Packet::Subscribe(v4::Subscribe::new(
        format!("chat/demo/chat/u/u{user}/in"),
        QoS::AtLeastOnce,
    ))
    .write(&mut out, usize::MAX)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let mut got = 0;
    while got < 2 {
        match v4::Packet::read(&mut buf, 1 << 16) {
            Ok(v4::Packet::ConnAck(ack)) if ack.code != v4::ConnectReturnCode::Success => {
                bail!("refused: {:?}", ack.code)
            }
            Ok(v4::Packet::ConnAck(_) | v4::Packet::SubAck(_)) => got += 1,
            Ok(_) => {}
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                let read = tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut buf)).await??;
                if read == 0 {
                    bail!("closed by the server");
                }
            }
            Err(e) => bail!("{e}"),
        }
    }
    Ok(stream)
}
