//! `bench`: chat traffic through chatd, and the same traffic as plain MQTT through any
//! broker, so the two can be compared in one run; fan-out to large groups and rooms; and
//! large files up and down through the files API.
//!
//! ```text
//! bench chatd   [--pairs 100 --messages 200 --size 100 --rate 0] [--database-url postgres://…]
//!               [--nodes N [--same-node] (a cluster on PostgreSQL, with its own nats-server)]
//! bench mqtt    --port 1883 [--host 127.0.0.1] [same traffic options]
//! bench compare [--mosquitto-port P | (starts a fresh mosquitto)] [--database-url …]
//! bench group   [--members 2000 --online N --messages 20 --interval-ms 250] [--database-url …]
//! bench room    [--members 2000 …]
//! bench sync    [--conversations 100 --messages 100 --page 200] [--database-url …]
//! bench wire    (bytes per message: 3.1.1/5, JSON/compact, topic aliases)
//! bench idle    [--connections 15000 --users 500 --workers 4 --hold-secs 600] [--database-url … [--cluster]]
//! bench files   [--size-mb 50 --runs 3] [--s3-endpoint URL [--s3-bucket B] | (starts a throwaway moto)]
//!               [--database-url …]
//! ```
//!
//! `--rss-every-secs N` on `chatd` prints chatd's resident memory every N seconds (a soak).
//! `--nodes N` on `chatd` runs N chatd nodes on one PostgreSQL database with a throwaway
//! `nats-server` between them, pair `i`'s sender on node `i % N` and its receiver on node
//! `(i + 1) % N`, so that with N > 1 every message crosses nodes (`--same-node`: none does,
//! the control run); it prints NATS's messages and bytes per delivered message.
//!
//! Every chatd run starts the `chatd` binary next to this one as a child process with a
//! fresh database (SQLite, or a new database on the PostgreSQL server of
//! `--database-url`). Pairs: N senders each send M messages to their own receiver (QoS 1
//! `send` ops, timed from publish to the receiver's `msg`), and at the end the tool checks
//! that every message is in the database. Plain MQTT sends the same payloads as QoS 1
//! publishes on `bench/{i}`, with no storage. Reported: delivered messages per second
//! (first send to last delivery) and send-to-deliver latency percentiles; for chatd runs
//! also the CPU time the traffic took per delivered message (each chatd node, nats-server,
//! this tool, the whole machine).

mod chatd;
mod fanout;
mod files;
mod idle;
mod moderator;
mod nats;
mod pairs;
mod report;
mod sync;
mod wire;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Chat traffic benchmarks: chatd vs plain MQTT, and group and chatroom fan-out")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One-to-one pairs through a chatd started for the run.
    Chatd {
        #[command(flatten)]
        traffic: pairs::Traffic,
        /// PostgreSQL server to create the run's database on; SQLite if absent.
        #[arg(long)]
        database_url: Option<String>,
        #[command(flatten)]
        nodes: pairs::Nodes,
        /// Every message through the app's pre-send moderation: a local endpoint that allows
        /// everything at once (what moderation itself costs chatd).
        #[arg(long)]
        moderation: bool,
    },
    /// The same pairs as plain MQTT QoS 1 through any broker, no storage.
    Mqtt {
        #[command(flatten)]
        traffic: pairs::Traffic,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long)]
        port: u16,
    },
    /// chatd and plain MQTT (a Mosquitto) one after the other, with the ratio.
    Compare {
        #[command(flatten)]
        traffic: pairs::Traffic,
        #[arg(long)]
        database_url: Option<String>,
        /// Use a Mosquitto already listening here instead of starting one.
        #[arg(long)]
        mosquitto_port: Option<u16>,
    },
    /// One sender to a large group, with a 1:1 pair talking meanwhile.
    Group {
        #[command(flatten)]
        fanout: fanout::Fanout,
        #[arg(long)]
        database_url: Option<String>,
    },
    /// One sender to a large chatroom, with a 1:1 pair talking meanwhile.
    Room {
        #[command(flatten)]
        fanout: fanout::Fanout,
        #[arg(long)]
        database_url: Option<String>,
    },
    /// A user offline for many messages in many conversations catches up.
    Sync {
        #[command(flatten)]
        sync: sync::Sync,
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Bytes on the wire for one short text message, per protocol version and encoding.
    Wire,
    /// Many idle connections held open: chatd's memory and open files per connection.
    Idle {
        #[command(flatten)]
        idle: idle::Idle,
        #[arg(long)]
        database_url: Option<String>,
    },
    /// One large file uploaded and downloaded, on a directory and on S3: MB/s and chatd's memory.
    Files {
        #[command(flatten)]
        files: files::Files,
        #[arg(long)]
        database_url: Option<String>,
    },
    /// (Internal) one process's share of `idle`'s connections.
    #[command(hide = true)]
    IdleWorker(idle::Worker),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Chatd {
            traffic,
            database_url,
            nodes,
            moderation,
        } => pairs::through_chatd(&traffic, database_url.as_deref(), &nodes, moderation)
            .await?
            .print(),
        Mode::Mqtt { traffic, host, port } => {
            let label = format!("plain MQTT {host}:{port}");
            through_broker(&traffic, &host, port, label).await?.print()
        }
        Mode::Compare {
            traffic,
            database_url,
            mosquitto_port,
        } => {
            let chatd = pairs::through_chatd(&traffic, database_url.as_deref(), &pairs::Nodes::ONE, false).await?;
            let (port, _mosquitto) = match mosquitto_port {
                Some(port) => (port, None),
                None => {
                    let (port, child) = spawn_mosquitto().await?;
                    (port, Some(child))
                }
            };
            let label = format!("mosquitto :{port} (no storage)");
            let plain = through_broker(&traffic, "127.0.0.1", port, label).await?;
            chatd.print();
            plain.print();
            println!("chatd / mosquitto throughput: {:.2}x", chatd.rate() / plain.rate());
        }
        Mode::Group { fanout, database_url } => {
            fanout::run(&fanout, fanout::Channel::Group, database_url.as_deref()).await?
        }
        Mode::Room { fanout, database_url } => {
            fanout::run(&fanout, fanout::Channel::Room, database_url.as_deref()).await?
        }
        Mode::Sync { sync, database_url } => sync::run(&sync, database_url.as_deref()).await?,
        Mode::Wire => wire::run().await?,
        Mode::Idle { idle, database_url } => idle::run(&idle, database_url.as_deref()).await?,
        Mode::Files { files, database_url } => files::run(&files, database_url.as_deref()).await?,
        Mode::IdleWorker(worker) => idle::worker(&worker).await?,
    }
    Ok(())
}

/// The pairs as plain MQTT through the broker at `host:port`.
async fn through_broker(
    traffic: &pairs::Traffic,
    host: &str,
    port: u16,
    label: String,
) -> anyhow::Result<report::Report> {
    let no_reading = || async { anyhow::Ok(()) };
    let ports = vec![(port, port); traffic.pairs];
    let (report, (), ()) = pairs::run(traffic, host, &ports, pairs::Protocol::Plain, label, no_reading).await?;
    Ok(report)
}

/// A port free on 127.0.0.1 at the time of asking.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts a fresh Mosquitto on a free port.
async fn spawn_mosquitto() -> anyhow::Result<(u16, tokio::process::Child)> {
    let port = free_port()?;
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
