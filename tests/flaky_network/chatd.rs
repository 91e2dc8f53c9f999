//! chatd, the real binary, as a process inside the test's network namespace.
//!
//! [`start_chatd`] writes a config (SQLite in a temporary directory, the dev app, MQTT and
//! REST on free ports on all of the namespace's addresses), starts `chatd` under `ip netns
//! exec` without the test's own `CHATD_*` and `DATABASE_URL` variables, and reads the
//! ports and the dev app's credentials from what it prints. chatd's stderr goes to a log file: the run prints its warnings, a panic
//! prints its tail, and `FLAKY_NETWORK_LOG=<file>` keeps a copy. The process is killed
//! when the [`Chatd`] is dropped, or when this test process dies. [`post`] is the REST
//! call the setup (users, tokens) makes over the clean link.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::net::Net;

pub struct Chatd {
    pub child: tokio::process::Child,
    pub mqtt_port: u16,
    pub api_port: u16,
    pub client_id: String,
    pub client_secret: String,
    pub log: PathBuf,
}

impl Chatd {
    /// chatd's warn-or-worse log lines (RUST_LOG=warn unless CHILD_LOG says otherwise).
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.log_lines();
            eprintln!("flaky_network: chatd's log ({} lines), last 40:", lines.len());
            for line in lines.iter().rev().take(40).rev() {
                eprintln!("  {line}");
            }
        }
        if let Ok(keep) = std::env::var("FLAKY_NETWORK_LOG") {
            let _ = std::fs::copy(&self.log, &keep);
        }
        // The child itself is killed when it is dropped (kill_on_drop).
    }
}

/// Starts the binary inside the namespace, listening on all of its addresses on free
/// ports (it prints which), with SQLite in `dir`, and reads the dev app's credentials.
pub async fn start_chatd(net: &Net, dir: &Path) -> Chatd {
    let config = dir.join("chatd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\ndev_app = true\n\n[mqtt]\ntcp = \"0.0.0.0:0\"\nws = \"\"\n\n[api]\nlisten = \"0.0.0.0:0\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let log = dir.join("chatd.log");
    let mut command = tokio::process::Command::new("ip");
    command
        .args(["netns", "exec", &net.ns, env!("CARGO_BIN_EXE_chatd"), "--config"])
        .arg(&config);
    // The test's own environment must not point chatd elsewhere (scripts/test.sh sets
    // DATABASE_URL for PostgreSQL).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CHATD_") || key == "DATABASE_URL" {
            command.env_remove(&*key);
        }
    }
    command
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or("warn,rumqttd=off".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe. `ip netns exec` execs chatd in place, so chatd
    // is killed if this test process dies without running its cleanup.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn().expect("`ip netns exec … chatd` starts");
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let banner = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = reader.next_line().await {
            let done = line.starts_with("REST API:");
            lines.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    if banner != Ok(true) {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("chatd did not print its addresses: stdout {lines:?}, log:\n{log}");
    }
    tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
    let value = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no '{prefix}' in {lines:?}"))
    };
    let port = |prefix: &str| -> u16 { value(prefix).rsplit(':').next().unwrap().parse().unwrap() };
    Chatd {
        child,
        mqtt_port: port("MQTT (TCP):"),
        api_port: port("REST API:"),
        client_id: value("client_id:"),
        client_secret: value("client_secret:"),
        log,
    }
}

pub async fn post(http: &reqwest::Client, url: &str, token: Option<&str>, body: &Value) -> Value {
    let mut req = http.post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "POST {url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}
