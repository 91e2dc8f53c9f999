//! The `chatd` binary as a child process on free ports, with its banner read: for tests of
//! what only a real process shows (kill -9, SIGTERM, several processes on one database).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Chatd {
    pub child: Child,
    pub mqtt_port: u16,
    /// The REST API's base URL, as the banner prints it.
    pub api: String,
    /// The banner, up to the REST API's address.
    pub lines: Vec<String>,
}

impl Chatd {
    /// A value the banner printed after `prefix` (e.g. `client_id:`).
    pub fn banner(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no '{prefix}' in {:?}", self.lines))
    }
}

/// Starts the binary on the database and data directory given, MQTT over TCP and the API on
/// free ports (no WebSocket), with `env` on top; reads its banner. `CHILD_LOG` sets its log.
pub async fn start_chatd(database_url: &str, data_dir: &std::path::Path, env: &[(&str, String)]) -> Chatd {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatd"));
    command
        .env("DATABASE_URL", database_url)
        .env("CHATD_DATA_DIR", data_dir)
        .env("CHATD_MQTT__TCP", "127.0.0.1:0")
        .env("CHATD_MQTT__WS", "")
        .env("CHATD_API__LISTEN", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or("warn,rumqttd=off".into()),
        );
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("chatd starts");
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let banner = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = reader.next_line().await.unwrap() {
            let done = line.starts_with("REST API:");
            lines.push(line);
            if done {
                break;
            }
        }
    });
    banner.await.expect("chatd printed its addresses");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
    let mut chatd = Chatd {
        child,
        mqtt_port: 0,
        api: String::new(),
        lines,
    };
    chatd.mqtt_port = chatd.banner("MQTT (TCP):").rsplit(':').next().unwrap().parse().unwrap();
    chatd.api = chatd.banner("REST API:");
    chatd
}
