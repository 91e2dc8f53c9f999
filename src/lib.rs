//! `chatd`: the gate, the embedded rumqttd, the bridge and the REST API wired into one
//! process. The binary (`src/main.rs`) only parses the command line; [`start`] does the
//! work, and tests call it to run a whole server on port 0.

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;

use broker::gate::{self, GateSettings, Listeners};
use broker::presence::Presence;
use broker::{BrokerSettings, EmbeddedBroker, Gate, Switchboard};
pub use config::Config;
use store::tokens::Tokens;
use store::Store;

/// A running chatd.
pub struct Server {
    pub mqtt_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub wss_addr: Option<SocketAddr>,
    pub api_addr: SocketAddr,
    /// The REST API over https, when `api.tls` is set.
    pub api_tls_addr: Option<SocketAddr>,
    /// The certificate of the TLS listeners, reloadable.
    tls_certs: Option<Arc<gate::TlsCerts>>,
    /// Where uploaded files are kept (a directory, or an S3 bucket), for the banner.
    pub file_store: String,
    /// The web app's path (`/web`) when it is served.
    pub web_path: Option<String>,
    pub store: Store,
    pub tokens: Tokens,
    pub presence: Presence,
    /// This node's membership of its cluster, in cluster mode.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// What `/health/ready` reports.
    health: Arc<api::health::Health>,
    /// Stopping, step one: stop accepting and reading, store and answer what is in flight.
    drain: watch::Sender<bool>,
    /// Turns true when the bridge has stored and answered everything in flight.
    drained: watch::Receiver<bool>,
    /// Stopping, step two: close connections, stop every component.
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// How long the bridge may take to subscribe to the embedded broker at start.
const BRIDGE_START: Duration = Duration::from_secs(10);

/// The most `bridge.max_batch` may be: past it one transaction holds SQLite's write lock, or
/// PostgreSQL's row locks, for longer than any other writer should wait.
const MAX_BATCH: usize = 8192;

/// Starts every component. All listeners are bound before anything is spawned, so a taken
/// port is a clear error at start rather than a half-running server.
pub async fn start(mut config: Config) -> anyhow::Result<Server> {
    // Every listener's connections come out of one open-files limit: the API's and the
    // connections not yet past CONNECT are set aside first, so no listener can starve
    // another (or the database) of descriptors.
    let others = config.api.max_connections + config.mqtt.max_pending;
    config.mqtt.max_connections = fit_connections_to_open_files(config.mqtt.max_connections, others);
    let cluster_settings = config.cluster.settings()?;
    anyhow::ensure!(
        (1..=MAX_BATCH).contains(&config.bridge.max_batch),
        "bridge.max_batch must be 1 to {MAX_BATCH} (it is {})",
        config.bridge.max_batch
    );
    let url = config.database_url();
    if url.starts_with("sqlite:") && config.database_url.is_empty() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    }
    if config.metrics.enabled {
        // Installed before anything records, so every count from the start is kept.
        api::prometheus::handle();
    }
    let store = Store::connect(&url, config.database_pool)
        .await
        .with_context(|| format!("opening database {}", redact(&url)))?;
    let tokens = Tokens::new(&store.server_key("jwt").await?);

    let tcp = bind_opt(&config.mqtt.tcp, "MQTT (mqtt.tcp)").await?;
    let ws = bind_opt(&config.mqtt.ws, "MQTT over WebSocket (mqtt.ws)").await?;
    let tls = bind_opt(&config.mqtt.tls, "MQTT over TLS (mqtt.tls)").await?;
    let wss = bind_opt(&config.mqtt.wss, "MQTT over secure WebSocket (mqtt.wss)").await?;
    let api_tls = bind_opt(&config.api.tls, "the HTTP API over TLS (api.tls)").await?;
    // One certificate for every TLS listener, reloaded on SIGHUP (`Server::reload_tls`).
    let tls_certs = match (&tls, &wss, &api_tls) {
        (None, None, None) => None,
        _ => Some(
            gate::TlsCerts::load(&config.mqtt.tls_cert, &config.mqtt.tls_key)
                .context("the TLS certificate (mqtt.tls_cert, mqtt.tls_key)")?,
        ),
    };
    let acceptor = tls_certs.as_ref().map(|certs| certs.acceptor()).transpose()?;
    let tls = tls.zip(acceptor.clone());
    let wss = wss.zip(acceptor.clone());
    let api_tls = api_tls.zip(acceptor);
    let api_tls_addr = api_tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let api_addr = config::listen_addr(&config.api.listen, "api.listen")?.context("api.listen must be set")?;
    let api_listener = gate::bind(api_addr, "the HTTP API (api.listen)").await?;

    let broker = EmbeddedBroker::start(&BrokerSettings {
        port: config.broker.port,
        // Internal clients only (the bridge's consumer, the switchboard's uplink): devices never
        // reach rumqttd themselves.
        max_connections: 64,
        max_payload_size: config.mqtt.max_packet_bytes + 512,
        max_inflight: config.broker.max_inflight,
        segment_bytes: config.broker.segment_bytes,
        segment_count: config.broker.segment_count,
        outbox_segment_bytes: config.broker.outbox_segment_bytes,
    })?;
    let switchboard = Switchboard::start(&broker);
    let presence = Presence::new(switchboard.clone());
    // What the API and the bridge may ask of live connections: on one node the presence
    // tracker holds them all; in a cluster, NATS reaches the other nodes' too.
    let cluster = match cluster_settings {
        Some(settings) => Some(cluster::Cluster::start(settings, presence.clone(), switchboard.clone()).await?),
        None => None,
    };
    let live: Arc<dyn store::live::Live> = match &cluster {
        Some(cluster) => cluster.clone(),
        None => Arc::new(presence.clone()),
    };

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let (drained_tx, drained) = watch::channel(false);
    let bridge_drain = bridge::Drain {
        requested: drain_rx.clone(),
        published: switchboard.outbox_published(),
        done: drained_tx,
    };
    let mut tasks = JoinSet::new();
    let server_addrs = (
        tcp.as_ref().map(|l| l.local_addr()).transpose()?,
        ws.as_ref().map(|l| l.local_addr()).transpose()?,
        tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?,
        wss.as_ref().map(|(l, _)| l.local_addr()).transpose()?,
        api_listener.local_addr()?,
    );

    let file_store = files::FileStore::open(&config.files.store, &config.data_dir).context("files.store")?;
    file_store
        .check()
        .await
        .with_context(|| format!("files.store: {file_store:?} does not answer"))?;
    let public_url = match config.api.public_url.trim() {
        "" if server_addrs.4.ip().is_unspecified() => {
            // 0.0.0.0 is no address a client can use.
            let url = format!("http://localhost:{}", server_addrs.4.port());
            tracing::warn!(%url, "api.public_url is not set: file URLs will name {url}; set it to the address clients use");
            url
        }
        "" => format!("http://{}", server_addrs.4),
        url if url.starts_with("https://") || url.starts_with("http://") => url.to_string(),
        url => anyhow::bail!("api.public_url: '{url}' must start with https:// or http://"),
    };
    let file_links = store::files::FileLinks::new(&public_url);
    let file_store_name = format!("{file_store:?}");
    tasks.spawn(bridge::timers::run(
        store.clone(),
        live.clone(),
        file_store.clone(),
        bridge::timers::TimerSettings {
            sweep_interval: Duration::from_secs(config.files.sweep_interval_secs.max(1)),
            orphan_after: Duration::from_secs(config.files.orphan_after_secs),
            upload_expiry: Duration::from_secs(config.files.upload_expiry_secs),
        },
        shutdown_rx.clone(),
    ));

    let bridge_options = broker.client_options(&format!("chatd-bridge-{}", store::tokens::random_secret(8)));
    let bridge_settings = bridge::BridgeSettings {
        max_batch: config.bridge.max_batch,
        file_links: file_links.clone(),
        moderation_allow: config.webhooks.allow(),
    };
    let (bridge_store, bridge_shutdown) = (store.clone(), shutdown_rx.clone());
    let bridge_live = live.clone();
    let push_worker = push::Worker::new(
        store.clone(),
        live.clone(),
        push::WorkerSettings {
            concurrency: config.push.concurrency.max(1),
            max_attempts: config.push.max_attempts.max(1),
            backoff: Duration::from_millis(config.push.backoff_ms),
            fcm_endpoint: config.push.fcm_endpoint.clone(),
            fcm_token_uri: config.push.fcm_token_uri.clone(),
            ..push::WorkerSettings::default()
        },
    );
    if config.push.worker {
        tasks.spawn(push_worker.run(shutdown_rx.clone()));
    }
    if config.webhooks.worker {
        tasks.spawn(hooks::Worker::new(store.clone(), config.webhooks.settings()).run(shutdown_rx.clone()));
    }
    // Users going online and offline, for the apps' webhooks.
    let mut transitions = presence.watch_transitions();
    let mut presence_events = hooks::PresenceEvents::new(store.clone());
    let mut presence_shutdown = shutdown_rx.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                change = transitions.recv() => match change {
                    Some(t) => presence_events.report(&t.user.org, &t.user.app, &t.user.user, t.online, t.at).await,
                    None => return,
                },
                _ = presence_shutdown.changed() => return,
            }
        }
    });
    let health = Arc::new(api::health::Health::default());
    let bridge_running = health.component("bridge");
    let gate_running = health.component("gate");
    if let Some(cluster) = &cluster {
        let cluster = cluster.clone();
        health.check("cluster", move || cluster.connected());
    }
    let (bridge_subscribed, mut bridge_ready) = watch::channel(false);
    tasks.spawn(async move {
        let _running = api::health::Running::new(bridge_running);
        if let Err(e) = bridge::run(
            bridge_options,
            bridge_store,
            bridge_live,
            bridge_settings,
            bridge_drain,
            bridge_subscribed,
            bridge_shutdown,
        )
        .await
        {
            tracing::error!(error = %e, "bridge stopped");
        }
    });

    let gate = Gate::new(
        GateSettings {
            max_connections: config.mqtt.max_connections,
            connect_timeout: Duration::from_secs(config.mqtt.connect_timeout_secs),
            handshake_timeout: Duration::from_secs(config.mqtt.handshake_timeout_secs),
            write_timeout: Duration::from_secs(config.mqtt.write_timeout_secs.max(1)),
            max_packet_size: config.mqtt.max_packet_bytes,
            max_pending: config.mqtt.max_pending.max(1),
            max_pending_per_ip: config.mqtt.max_pending_per_ip.max(1),
            max_subscriptions: config.mqtt.max_subscriptions,
            budgets: (&config.mqtt.budgets).into(),
            ..GateSettings::default()
        },
        store.clone(),
        tokens.clone(),
        switchboard,
        presence.clone(),
    );
    // Devices are let in once the bridge consumes their outboxes: before that, the embedded
    // broker would ack a device's first publishes and drop them (nobody subscribed yet).
    // Their connections wait in the listeners' backlog meanwhile.
    tokio::time::timeout(BRIDGE_START, bridge_ready.wait_for(|subscribed| *subscribed))
        .await
        .map_err(|_| anyhow::anyhow!("the bridge did not subscribe to the embedded broker within {BRIDGE_START:?}"))?
        .map_err(|_| anyhow::anyhow!("the bridge stopped before it subscribed to the embedded broker"))?;
    let gate_task = gate.run(Listeners { tcp, ws, tls, wss }, drain_rx.clone(), shutdown_rx.clone());
    tasks.spawn(async move {
        let _running = api::health::Running::new(gate_running);
        gate_task.await
    });

    let web_settings = config.web.settings(server_addrs.1, server_addrs.3)?;
    let api_state = api::AppState {
        live,
        store: store.clone(),
        tokens: tokens.clone(),
        settings: api::ApiSettings {
            app_token_ttl: Duration::from_secs(config.api.app_token_ttl_secs),
            user_token_ttl: Duration::from_secs(config.api.user_token_ttl_secs),
            max_token_ttl: (config.api.max_token_ttl_secs > 0)
                .then(|| Duration::from_secs(config.api.max_token_ttl_secs)),
            max_connections: config.api.max_connections,
            header_timeout: Duration::from_millis(config.api.header_timeout_ms),
            request_timeout: Duration::from_millis(config.api.request_timeout_ms),
            idle_timeout: Duration::from_millis(config.api.idle_timeout_ms),
            max_body_bytes: config.api.max_body_bytes,
            login_free_failures: config.api.login_free_failures,
            login_address_free_failures: config.api.login_address_free_failures,
            login_backoff: Duration::from_millis(config.api.login_backoff_ms),
            login_max_backoff: Duration::from_millis(config.api.login_max_backoff_ms),
            login_throttle_entries: config.api.login_throttle_entries,
            max_concurrent_hashes: config.api.max_concurrent_hashes,
            hash_timeout: Duration::from_millis(config.api.hash_timeout_ms),
            transfer_timeout: Duration::from_secs(config.files.transfer_timeout_secs.max(1)),
            cors: api::cors::CorsSettings::new(
                &config
                    .api
                    .cors_origins
                    .split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
                &public_url,
                config.api.cors_allow_localhost,
            )
            .map_err(|e| anyhow::anyhow!("api.cors_origins: {e}"))?,
            web: web_settings.clone(),
            webhook_allow: config.webhooks.allow(),
            metrics: config.metrics.enabled.then(|| api::prometheus::MetricsSettings {
                token: Some(config.metrics.token.trim().to_string()).filter(|t| !t.is_empty()),
            }),
        },
        files: api::files::Files::new(
            file_store,
            file_links,
            api::files::FileSettings {
                max_file_bytes: config.files.max_file_bytes,
                chunk_timeout: Duration::from_secs(config.files.chunk_timeout_secs.max(1)),
                max_thumbnail_source_bytes: config.files.max_thumbnail_source_bytes,
                upload_expiry: Duration::from_secs(config.files.upload_expiry_secs),
                max_open_uploads: config.files.max_open_uploads.max(1),
                max_transfers_per_user: config.files.max_transfers_per_user.max(1),
                max_transfers_per_address: config.files.max_transfers_per_address.max(1),
                ..api::files::FileSettings::default()
            },
        ),
        health: health.clone(),
    };
    // The API stops accepting when the server drains, and finishes the requests in flight.
    let api_shutdown = drain_rx.clone();
    tasks.spawn(async move {
        if let Err(e) = api::serve(api_listener, api_tls, api_state, api_shutdown).await {
            tracing::error!(error = %e, "API stopped");
        }
    });

    let (mqtt_addr, ws_addr, tls_addr, wss_addr, api_addr) = server_addrs;
    Ok(Server {
        mqtt_addr,
        ws_addr,
        tls_addr,
        wss_addr,
        api_addr,
        api_tls_addr,
        tls_certs,
        file_store: file_store_name,
        web_path: web_settings.map(|w| w.path),
        store,
        tokens,
        presence,
        cluster,
        health,
        drain,
        drained,
        shutdown,
        tasks,
    })
}

impl Server {
    /// Stops in two steps, so that nothing a device or a backend sent before is lost or
    /// left unanswered: first it stops accepting connections and requests and stops reading
    /// what devices send, and the bridge stores and acks everything already on its way (at
    /// most [`DRAIN_TIMEOUT`]); then every device connection gets what is queued for it
    /// (those acks) and is closed (MQTT 5: DISCONNECT 0x8B), and the components stop. In a
    /// cluster, the node then says goodbye, so the others show its devices offline at once.
    pub async fn shutdown(mut self) {
        self.health.shutting_down();
        let _ = self.drain.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, self.drained.wait_for(|done| *done)).await;
        if !matches!(drained, Ok(Ok(_))) {
            tracing::warn!("stopping before the bridge reported everything in flight stored");
        }
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if let Some(cluster) = self.cluster.take() {
            cluster.leave().await;
        }
    }

    /// Reads the TLS certificate and key again (what SIGHUP does): new TLS connections, MQTT
    /// and https alike, get the new certificate; connections open keep theirs. A failure
    /// (a half-written file, a key of another certificate) keeps the one in use. `Ok(false)`
    /// when no TLS listener is configured.
    pub fn reload_tls(&self) -> anyhow::Result<bool> {
        match &self.tls_certs {
            None => Ok(false),
            Some(certs) => {
                certs.reload()?;
                Ok(true)
            }
        }
    }

    /// Waits until a component stops by itself (which only happens on a fatal error).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }
}

/// The longest a stop waits for what is in flight to be stored.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the dev app `demo/chat` if there is no app yet; returns its credentials then.
pub async fn ensure_dev_app(store: &Store) -> anyhow::Result<Option<store::tenants::Credentials>> {
    if !store.list_apps().await?.is_empty() {
        return Ok(None);
    }
    match store.create_app("demo", "chat").await {
        Ok((app, credentials)) => {
            // The web app's sign-up page registers users of the dev app.
            store
                .update_app_settings(&app.id, &serde_json::json!({"open_registration": true}))
                .await?;
            Ok(Some(credentials))
        }
        // Another process sharing the database got there first.
        Err(store::Error::Conflict(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// File descriptors one device connection costs: its socket (the switchboard carries its
/// traffic to rumqttd over connections shared by all devices).
const FILES_PER_DEVICE: u64 = 1;
/// Files kept for everything else: listeners, the database, internal clients, logs.
const FILES_RESERVED: u64 = 256;

/// Raises this process's soft open-files limit to its hard one; returns the limit now in
/// force, if it can be read. (Also used by the bench tool's worker processes.)
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Raises the soft open-files limit to the hard one, and lowers the device connection limit
/// to what fits in it beside `others` (the API's connections, the gate's pending ones) and
/// the reserve, so that a device over the limit gets a clean "server busy" CONNACK instead
/// of a failed accept, and a flood of devices leaves the API its descriptors.
fn fit_connections_to_open_files(wanted: usize, others: usize) -> usize {
    let Some(open_files) = raise_open_files_limit() else {
        return wanted;
    };
    let fits = (open_files.saturating_sub(FILES_RESERVED + others as u64) / FILES_PER_DEVICE) as usize;
    if wanted > fits {
        tracing::info!(
            wanted,
            fits,
            open_files,
            "mqtt.max_connections lowered to what the open-files limit allows (one per device, beside api.max_connections and mqtt.max_pending)"
        );
        fits
    } else {
        wanted
    }
}

async fn bind_opt(value: &str, what: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match config::listen_addr(value, what)? {
        Some(addr) => Ok(Some(gate::bind(addr, what).await?)),
        None => Ok(None),
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &creds[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_database_passwords() {
        assert_eq!(
            super::redact("postgres://chat:s3cret@db:5432/chat"),
            "postgres://chat:***@db:5432/chat"
        );
        assert_eq!(super::redact("postgres://chat@db/chat"), "postgres://chat@db/chat");
        assert_eq!(super::redact("sqlite://data/chatd.db"), "sqlite://data/chatd.db");
    }
}
