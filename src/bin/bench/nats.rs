//! A throwaway NATS server for a cluster run (`bench chatd --nodes N`): `nats-server` on
//! free ports, client connections and monitoring on 127.0.0.1 only, and its traffic
//! counters (`/varz`), read before and after the traffic.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    child: tokio::process::Child,
    http: reqwest::Client,
}

/// NATS's message and byte counters since it started: what its clients published to it
/// (`in`) and what it forwarded to subscribers (`out`).
#[derive(Deserialize, Clone, Copy, Default)]
pub struct Varz {
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

impl NatsServer {
    /// Starts `nats-server` (from PATH, or the Debian package's /usr/sbin) and waits until
    /// its monitoring endpoint answers.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let exe = find_nats_server()
            .context("nats-server not found on PATH or in /usr/sbin (apt-get install nats-server)")?;
        let (port, monitor_port) = (crate::free_port()?, crate::free_port()?);
        let child = tokio::process::Command::new(&exe)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &monitor_port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let nats = NatsServer {
            port,
            monitor_port,
            child,
            http: reqwest::Client::new(),
        };
        for _ in 0..100 {
            if nats.varz().await.is_ok() {
                return Ok(nats);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nats-server did not start on ports {port} and {monitor_port}")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    pub async fn varz(&self) -> anyhow::Result<Varz> {
        let url = format!("http://127.0.0.1:{}/varz", self.monitor_port);
        Ok(self.http.get(url).send().await?.error_for_status()?.json().await?)
    }
}

impl std::ops::Sub for Varz {
    type Output = Varz;

    fn sub(self, before: Varz) -> Varz {
        Varz {
            in_msgs: self.in_msgs - before.in_msgs,
            out_msgs: self.out_msgs - before.out_msgs,
            in_bytes: self.in_bytes - before.in_bytes,
            out_bytes: self.out_bytes - before.out_bytes,
        }
    }
}

fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|exe| exe.is_file())
}
