//! chatd's configuration: built-in defaults, then an optional TOML file (`--config`), then
//! environment variables `CHATD_<SECTION>__<KEY>` (e.g. `CHATD_MQTT__TCP=0.0.0.0:1883`),
//! and `DATABASE_URL` for the database. See `chatd.example.toml` for every key.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite database lives when `database_url` is not set.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; empty means SQLite in `data_dir`.
    pub database_url: String,
    /// Connections in the database pool.
    pub database_pool: u32,
    /// Create the dev app `demo/chat` (and print its credentials) when there are no apps.
    pub dev_app: bool,
    pub mqtt: MqttConfig,
    pub api: ApiConfig,
    pub broker: BrokerConfig,
    pub bridge: BridgeConfig,
    pub push: PushConfig,
    pub cluster: ClusterConfig,
    pub files: FilesConfig,
    pub web: WebConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub webhooks: WebhooksConfig,
}

/// Apps' webhooks: how they are sent, and where they may point.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Run the webhook worker in this process.
    pub worker: bool,
    pub concurrency: usize,
    pub timeout_ms: u64,
    pub max_attempts: i64,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Failures in a row that pause an endpoint.
    pub pause_after: i64,
    /// How often a paused endpoint is tried again.
    pub probe_every_ms: u64,
    /// Allow `http://` URLs (else https only).
    pub allow_http: bool,
    /// Allow URLs that resolve to loopback, private or link-local addresses.
    pub allow_private_networks: bool,
}

impl WebhooksConfig {
    pub fn allow(&self) -> hooks::guard::Allow {
        hooks::guard::Allow {
            http: self.allow_http,
            private_networks: self.allow_private_networks,
        }
    }

    pub fn settings(&self) -> hooks::HookSettings {
        hooks::HookSettings {
            concurrency: self.concurrency.max(1),
            timeout: std::time::Duration::from_millis(self.timeout_ms.max(100)),
            max_attempts: self.max_attempts.max(1),
            backoff: std::time::Duration::from_millis(self.backoff_ms),
            max_backoff: std::time::Duration::from_millis(self.max_backoff_ms.max(self.backoff_ms)),
            pause_after: self.pause_after.max(1),
            probe_every: std::time::Duration::from_millis(self.probe_every_ms.max(100)),
            allow: self.allow(),
            ..hooks::HookSettings::default()
        }
    }
}

/// How chatd logs (to stderr).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (colours only on a terminal) or `json` (one object per line).
    pub format: String,
}

/// Prometheus metrics at `/metrics` on the API's listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// A bearer token that lets scrapers on other hosts in; empty: loopback callers only.
    pub token: String,
}

/// The web chat app (`web/`), served by the REST API's listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the app.
    pub enabled: bool,
    /// Where: `/web` serves `/web/`. It shadows an org of the same name on the REST API.
    pub path: String,
    /// The app it signs in to, `org/app`.
    pub app: String,
    /// The MQTT WebSocket URL the page connects to; empty: the `mqtt.ws` (or, on an https
    /// page, `mqtt.wss`) port on the host the page came from.
    pub mqtt_url: String,
}

impl WebConfig {
    /// The web app's settings, or `None` when it is off.
    pub fn settings(
        &self,
        ws: Option<SocketAddr>,
        wss: Option<SocketAddr>,
    ) -> anyhow::Result<Option<api::web::WebSettings>> {
        if !self.enabled {
            return Ok(None);
        }
        let path = self.path.trim().trim_end_matches('/');
        let segment = path.strip_prefix('/').unwrap_or("");
        anyhow::ensure!(
            !segment.is_empty()
                && segment.len() <= 64
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)),
            "web.path {:?}: must be one path segment like \"/web\" (letters, digits, '-', '_')",
            self.path
        );
        let (org, app) = self
            .app
            .trim()
            .split_once('/')
            .filter(|(org, app)| !org.is_empty() && !app.is_empty() && !app.contains('/'))
            .ok_or_else(|| anyhow::anyhow!("web.app {:?}: must be \"org/app\"", self.app))?;
        let mqtt_url = self.mqtt_url.trim();
        anyhow::ensure!(
            mqtt_url.is_empty() || mqtt_url.starts_with("ws://") || mqtt_url.starts_with("wss://"),
            "web.mqtt_url {mqtt_url:?}: must start with ws:// or wss://"
        );
        Ok(Some(api::web::WebSettings {
            path: path.to_string(),
            org: org.to_string(),
            app: app.to_string(),
            mqtt_url: (!mqtt_url.is_empty()).then(|| mqtt_url.to_string()),
            ws_port: ws.map(|a| a.port()),
            wss_port: wss.map(|a| a.port()),
        }))
    }
}

/// Uploaded files: where they are kept and the server's limits (each app has its own
/// limits in its settings, under these).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Empty: the directory `files` in `data_dir`; `file:///path`; or
    /// `s3://bucket?endpoint=http://host:9000&region=us-east-1&allow_http=true` with the
    /// credentials in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub store: String,
    /// No app accepts a larger file, whatever its settings.
    pub max_file_bytes: u64,
    /// An upload that sends nothing for this long is dropped.
    pub chunk_timeout_secs: u64,
    /// The longest one upload or download may take.
    pub transfer_timeout_secs: u64,
    /// Images up to this size get a thumbnail.
    pub max_thumbnail_source_bytes: u64,
    /// A file nobody refers to (no message, no avatar) is removed after this long.
    pub orphan_after_secs: u64,
    /// An unfinished resumable upload is removed this long after its last part.
    pub upload_expiry_secs: u64,
    /// Unfinished resumable uploads one user may have.
    pub max_open_uploads: i64,
    /// Uploads and downloads under way at once per user.
    pub max_transfers_per_user: usize,
    /// Downloads under way at once per address, with a share-secret and no token.
    pub max_transfers_per_address: usize,
    /// How often orphan files and expired uploads are looked for.
    pub sweep_interval_secs: u64,
}

/// Cluster mode: several chatd nodes on one database, NATS between them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs, comma-separated (`nats://user:pass@host:4222`, `tls://…`); empty
    /// means one node on its own (no NATS).
    pub nats: String,
    /// This node's name in logs; empty means the host name.
    pub node: String,
    /// What every NATS subject starts with (clusters sharing one NATS need different ones).
    pub prefix: String,
    /// How often a node tells the others it is alive.
    pub heartbeat_ms: u64,
    /// After how long without a heartbeat a node is taken for dead and its devices shown
    /// offline. At least twice `heartbeat_ms`.
    pub node_timeout_ms: u64,
}

impl ClusterConfig {
    /// The cluster settings, or `None` in single-node mode.
    pub fn settings(&self) -> anyhow::Result<Option<cluster::ClusterSettings>> {
        let nats: Vec<String> = self
            .nats
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(String::from)
            .collect();
        if nats.is_empty() {
            return Ok(None);
        }
        anyhow::ensure!(self.heartbeat_ms >= 100, "cluster.heartbeat_ms must be at least 100");
        anyhow::ensure!(
            self.node_timeout_ms >= 2 * self.heartbeat_ms,
            "cluster.node_timeout_ms must be at least twice cluster.heartbeat_ms"
        );
        let prefix = self.prefix.trim().to_string();
        anyhow::ensure!(
            cluster::subjects::valid_prefix(&prefix),
            "cluster.prefix {prefix:?}: must be dot-separated tokens of A-Z, a-z, 0-9, '_', '-'"
        );
        let node = match self.node.trim() {
            "" => host_name(),
            name => name.to_string(),
        };
        anyhow::ensure!(
            !node.is_empty() && node.len() <= 64 && node.bytes().all(|b| b.is_ascii_graphic()),
            "cluster.node must be 1-64 printable characters without spaces"
        );
        Ok(Some(cluster::ClusterSettings {
            nats,
            node,
            prefix,
            heartbeat: std::time::Duration::from_millis(self.heartbeat_ms),
            node_timeout: std::time::Duration::from_millis(self.node_timeout_ms),
        }))
    }
}

/// This machine's host name (the default node name), or `chatd`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "chatd".to_string())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Run the push worker in this process.
    pub worker: bool,
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// Attempts before a push that keeps failing temporarily is given up.
    pub max_attempts: i64,
    /// First retry delay in milliseconds, doubled per attempt.
    pub backoff_ms: u64,
    /// The FCM HTTP v1 base URL.
    pub fcm_endpoint: String,
    /// Where FCM service-account keys are exchanged for access tokens. An operator
    /// setting, never an app's: an app's key file may only name this one.
    pub fcm_token_uri: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT over TCP; empty disables it.
    pub tcp: String,
    /// MQTT over WebSocket, at path `/mqtt`; empty disables it.
    pub ws: String,
    /// MQTT over TLS; empty disables it. Needs `tls_cert` and `tls_key`.
    pub tls: String,
    /// MQTT over WebSocket over TLS, at path `/mqtt`; empty disables it. Same certificate.
    pub wss: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub max_connections: usize,
    pub connect_timeout_secs: u64,
    pub handshake_timeout_secs: u64,
    /// A device that reads nothing of what is written to it for this long is closed.
    pub write_timeout_secs: u64,
    pub max_packet_bytes: usize,
    /// Connections not yet past CONNECT at once, in all and from one address.
    pub max_pending: usize,
    pub max_pending_per_ip: usize,
    /// Topics one connection may hold.
    pub max_subscriptions: usize,
    /// What each user's devices may publish, per op class, counted on arrival.
    pub budgets: BudgetsConfig,
}

/// A sustained rate and a burst, per device.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub per_sec: f64,
    pub burst: f64,
}

impl From<RateConfig> for broker::gate::budget::Rate {
    fn from(r: RateConfig) -> Self {
        broker::gate::budget::Rate::new(r.per_sec, r.burst)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    pub send: RateConfig,
    pub sync: RateConfig,
    pub receipt: RateConfig,
    pub change: RateConfig,
    pub typing: RateConfig,
    pub room: RateConfig,
    pub push: RateConfig,
    pub other: RateConfig,
    pub subscribe: RateConfig,
    pub connect: RateConfig,
}

impl From<&BudgetsConfig> for broker::gate::budget::OpBudgets {
    fn from(b: &BudgetsConfig) -> Self {
        broker::gate::budget::OpBudgets {
            send: b.send.into(),
            sync: b.sync.into(),
            receipt: b.receipt.into(),
            change: b.change.into(),
            typing: b.typing.into(),
            room: b.room.into(),
            push: b.push.into(),
            other: b.other.into(),
            subscribe: b.subscribe.into(),
            connect: b.connect.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: String,
    /// The REST API over https (e.g. `0.0.0.0:8443`), with `mqtt.tls_cert`/`mqtt.tls_key`;
    /// empty: off.
    pub tls: String,
    pub app_token_ttl_secs: u64,
    pub user_token_ttl_secs: u64,
    /// The longest lifetime a token may be asked for (`ttl`); 0: no limit (the platform's
    /// `"ttl": 0`, a token that does not expire, is allowed).
    pub max_token_ttl_secs: u64,
    pub max_connections: usize,
    pub header_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub login_free_failures: u32,
    pub login_address_free_failures: u32,
    pub login_backoff_ms: u64,
    pub login_max_backoff_ms: u64,
    pub login_throttle_entries: usize,
    pub max_concurrent_hashes: usize,
    pub hash_timeout_ms: u64,
    /// The API's address as clients reach it (`https://chat.example.com`), used in file URLs;
    /// empty means `http://` and the listen address.
    pub public_url: String,
    /// Web pages (origins, `https://app.example.com`) that may call the API from a browser,
    /// besides the API's own, separated by commas; `*`: any.
    pub cors_origins: String,
    /// Whether pages on localhost (any port) may, as a web app on a dev server needs.
    pub cors_allow_localhost: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// rumqttd's loopback port; 0 picks a free one.
    pub port: u16,
    pub segment_bytes: usize,
    pub segment_count: usize,
    pub outbox_segment_bytes: usize,
    pub max_inflight: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub max_batch: usize,
}

const DEFAULTS: &str = r#"
data_dir = "chatd-data"
database_url = ""
database_pool = 8
dev_app = true

[mqtt]
tcp = "127.0.0.1:11883"
ws = "127.0.0.1:18083"
tls = ""
wss = ""
tls_cert = ""
tls_key = ""
max_connections = 50000
connect_timeout_secs = 10
handshake_timeout_secs = 10
write_timeout_secs = 60
max_packet_bytes = 262144
max_pending = 2048
max_pending_per_ip = 256
max_subscriptions = 1000

[mqtt.budgets]
send = { per_sec = 100, burst = 500 }
sync = { per_sec = 10, burst = 40 }
receipt = { per_sec = 50, burst = 200 }
change = { per_sec = 20, burst = 50 }
typing = { per_sec = 5, burst = 10 }
room = { per_sec = 5, burst = 20 }
push = { per_sec = 2, burst = 10 }
other = { per_sec = 10, burst = 20 }
subscribe = { per_sec = 20, burst = 1000 }
connect = { per_sec = 2, burst = 20 }

[api]
listen = "127.0.0.1:18080"
tls = ""
app_token_ttl_secs = 86400
user_token_ttl_secs = 604800
max_token_ttl_secs = 0
max_connections = 1024
header_timeout_ms = 10000
request_timeout_ms = 30000
idle_timeout_ms = 60000
max_body_bytes = 1048576
login_free_failures = 5
login_address_free_failures = 50
login_backoff_ms = 1000
login_max_backoff_ms = 900000
login_throttle_entries = 100000
max_concurrent_hashes = 4
hash_timeout_ms = 5000
public_url = ""
cors_origins = ""
cors_allow_localhost = true

[broker]
port = 0
segment_bytes = 65536
segment_count = 2
outbox_segment_bytes = 16777216
max_inflight = 1000

[bridge]
max_batch = 1024

[push]
worker = true
concurrency = 16
max_attempts = 8
backoff_ms = 1000
fcm_endpoint = "https://fcm.googleapis.com"
fcm_token_uri = "https://oauth2.googleapis.com/token"

[cluster]
nats = ""
node = ""
prefix = "chatd"
heartbeat_ms = 1000
node_timeout_ms = 3000

[files]
store = ""
max_file_bytes = 536870912
chunk_timeout_secs = 30
transfer_timeout_secs = 3600
max_thumbnail_source_bytes = 20971520
orphan_after_secs = 86400
upload_expiry_secs = 86400
max_open_uploads = 20
max_transfers_per_user = 8
max_transfers_per_address = 32
sweep_interval_secs = 60

[log]
format = "text"

[webhooks]
worker = true
concurrency = 8
timeout_ms = 10000
max_attempts = 12
backoff_ms = 2000
max_backoff_ms = 3600000
pause_after = 10
probe_every_ms = 30000
allow_http = false
allow_private_networks = false

[metrics]
enabled = true
token = ""

[web]
enabled = true
path = "/web"
app = "demo/chat"
mqtt_url = ""
"#;

impl Config {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, config::ConfigError> {
        let mut builder = Self::defaults_then(file);
        builder = builder.add_source(
            config::Environment::with_prefix("CHATD")
                .prefix_separator("_")
                .separator("__")
                .source(Some(settings_from_environment())),
        );
        if let Ok(url) = std::env::var("DATABASE_URL") {
            builder = builder.set_override("database_url", url)?;
        }
        builder.build()?.try_deserialize()
    }

    /// The built-in defaults, then `file` if given.
    fn defaults_then(file: Option<&std::path::Path>) -> config::ConfigBuilder<config::builder::DefaultState> {
        let builder = config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        match file {
            Some(file) => builder.add_source(config::File::from(file).format(config::FileFormat::Toml).required(true)),
            None => builder,
        }
    }

    /// The built-in defaults alone (what tests start from).
    pub fn defaults() -> Config {
        config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("built-in defaults parse")
    }

    /// The database to use: `database_url`, or SQLite in `data_dir`.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("chatd.db").display())
        } else {
            self.database_url.clone()
        }
    }
}

/// The `CHATD_*` environment variables that are settings: all but `CHATD_CONFIG`, which
/// names the file. Every one of them must name a key: a misspelt one is refused at start
/// (with the key named), never silently ignored.
fn settings_from_environment() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(key, _)| key.starts_with("CHATD_") && key != "CHATD_CONFIG")
        .collect()
}

/// Parses an optional listen address: empty means disabled.
pub fn listen_addr(value: &str, what: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| anyhow::anyhow!("{what}: '{value}' is not an address like 127.0.0.1:1883"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("chatd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("chatd.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/chat\"\n[mqtt]\ntcp = \"0.0.0.0:1883\"\ntls = \"\"\n[bridge]\nmax_batch = 64\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(config.mqtt.tcp, "0.0.0.0:1883");
        assert_eq!(config.bridge.max_batch, 64);
        assert_eq!(config.data_dir, PathBuf::from("/srv/chat"));
        // Untouched keys keep their defaults.
        assert_eq!(config.mqtt.ws, Config::defaults().mqtt.ws);
        let broken = dir.join("broken.toml");
        std::fs::write(&broken, "[mqtt]\nmax_connections = \"many\"\n").unwrap();
        let err = Config::load(Some(&broken)).unwrap_err().to_string();
        assert!(err.contains("max_connections"), "{err}");
        assert!(Config::load(Some(&dir.join("missing.toml"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_file_is_every_key_with_its_default() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("chatd.example.toml");
        // The file alone over the defaults: the environment the tests run in may set some.
        let example: Config = Config::defaults_then(Some(&path))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("chatd.example.toml loads");
        let defaults = Config::defaults();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let dir = std::env::temp_dir().join(format!("chatd-config-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (text, key) in [
            ("[mqtt]\ntpc = \"0.0.0.0:1883\"\n", "tpc"),
            ("datadir = \"/srv\"\n", "datadir"),
            (
                "[mqtt.budgets]\nsend = { per_sec = 1, burst = 2, brust = 3 }\n",
                "brust",
            ),
            ("[bridg]\nmax_batch = 1\n", "bridg"),
        ] {
            let file = dir.join("chatd.toml");
            std::fs::write(&file, text).unwrap();
            let err = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn database_url_defaults_to_sqlite_in_the_data_dir() {
        let mut config = Config::defaults();
        config.data_dir = PathBuf::from("/var/lib/chatd");
        assert_eq!(config.database_url(), "sqlite:///var/lib/chatd/chatd.db");
        config.database_url = "postgres://x@y/z".into();
        assert_eq!(config.database_url(), "postgres://x@y/z");
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(listen_addr("", "x").unwrap(), None);
        assert!(listen_addr("127.0.0.1:1", "x").unwrap().is_some());
        assert!(listen_addr("localhost", "mqtt.tcp")
            .unwrap_err()
            .to_string()
            .contains("mqtt.tcp"));
    }
}
