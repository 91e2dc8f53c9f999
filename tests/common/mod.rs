//! Test support: a whole chatd on port 0 with a fresh database (SQLite file or a new
//! PostgreSQL database), users with tokens, and MQTT clients.
#![allow(dead_code)]

pub mod binary;
pub mod files;
pub mod raw;
pub mod throwaway_pg;

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

pub use chatd::Server;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one test per storage backend from an `async fn(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The PostgreSQL server tests create their databases on. Tests fail (never skip) when
/// it does not answer.
pub fn postgres_base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh, empty database for one test; a PostgreSQL one is dropped when this is.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        // Drop is not async: do it on a thread of its own with its own runtime.
        let _ = std::thread::spawn(move || {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_base_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn fresh_database(backend: Backend) -> TestDb {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("chatd.db").display());
            TestDb {
                url,
                _dir: Some(dir),
                pg_name: None,
            }
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let base = postgres_base_url();
            let name = format!("chatd_test_{}", store::tokens::random_secret(12).to_ascii_lowercase());
            let mut conn = sqlx::PgConnection::connect(&base)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for the tests: {e}"));
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            // Same server and options, other database: replace the path of the URL.
            let (head, query) = base.split_once('?').map_or((base.as_str(), ""), |(h, q)| (h, q));
            let authority_end = head.find("://").map_or(0, |i| i + 3);
            let head = match head[authority_end..].find('/') {
                Some(slash) => &head[..authority_end + slash],
                None => head,
            };
            let url = if query.is_empty() {
                format!("{head}/{name}")
            } else {
                format!("{head}/{name}?{query}")
            };
            TestDb {
                url,
                _dir: None,
                pg_name: Some(name),
            }
        }
    }
}

/// A running server, its dev app and an HTTP client.
pub struct TestApp {
    pub server: Server,
    pub api: String,
    pub http: reqwest::Client,
    pub org: String,
    pub app: String,
    pub client_id: String,
    pub client_secret: String,
    pub app_token: String,
    pub database_url: String,
    /// The directory files are kept in, unless the test chose another store.
    pub _files: Option<tempfile::TempDir>,
    // Last, so the database outlives the server using it.
    pub _db: TestDb,
}

/// The configuration tests start from: everything on port 0, and the given database.
pub fn test_config(database_url: &str) -> chatd::Config {
    let mut config = chatd::Config::defaults();
    config.database_url = database_url.to_string();
    config.dev_app = false;
    // Never the working directory (the default is ./chatd-data); spawn_app_with gives each
    // server a files directory of its own.
    config.data_dir = std::env::temp_dir().join("chatd-tests");
    config.mqtt.tcp = "127.0.0.1:0".into();
    config.mqtt.ws = "127.0.0.1:0".into();
    config.api.listen = "127.0.0.1:0".into();
    config
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = fresh_database(backend).await;
    spawn_app_with(test_config(&db.url), db).await
}

/// A server as [`spawn_app`] whose configuration `tune` adjusted first.
pub async fn app_with(backend: Backend, tune: impl FnOnce(&mut chatd::Config)) -> TestApp {
    let db = fresh_database(backend).await;
    let mut config = test_config(&db.url);
    tune(&mut config);
    spawn_app_with(config, db).await
}

/// The texts (`body.msg`) of a list of messages, in order.
/// A one-to-one text message to store with `Store::store_batch` directly (no device, no
/// bridge): body `{"msg": cid}`, from device `d`, none of the app's rules asked for.
pub fn text_message(app_id: &str, from: &str, to: &str, cid: &str) -> store::messages::NewMessage {
    store::messages::NewMessage {
        app_id: app_id.into(),
        chat: store::envelope::ChatType::User,
        sender: from.into(),
        sender_device: "d".into(),
        to: to.into(),
        cid: cid.into(),
        kind: store::envelope::MsgType::Txt,
        body: json!({"msg": cid}).to_string(),
        ext: None,
        require_contacts: false,
        room_history: 100,
        as_app: false,
        files: Vec::new(),
        destroy: None,
        sent_at: None,
    }
}

pub fn msg_texts(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"]["msg"].as_str().unwrap_or("<none>").to_string())
        .collect()
}

pub async fn spawn_app_with(mut config: chatd::Config, db: TestDb) -> TestApp {
    // Files go to a directory of the test's own (the default is under the working directory).
    let files_dir = config.files.store.is_empty().then(|| tempfile::tempdir().unwrap());
    if let Some(dir) = &files_dir {
        config.files.store = format!("file://{}", dir.path().display());
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,rumqttd=off".into()),
        )
        .with_test_writer()
        .try_init();
    let database_url = config.database_url.clone();
    let server = chatd::start(config).await.expect("server starts");
    let (app, creds) = server.store.create_app("demo", "chat").await.unwrap();
    // Tests send in bursts; the rate-limit test sets its own limits.
    let unlimited = serde_json::json!({"send_rate_per_sec": 1e9, "send_burst": 1e9});
    server.store.update_app_settings(&app.id, &unlimited).await.unwrap();
    let api = format!("http://{}", server.api_addr);
    let http = reqwest::Client::new();
    let mut t = TestApp {
        server,
        api,
        http,
        org: app.org,
        app: app.name,
        client_id: creds.client_id,
        client_secret: creds.client_secret,
        app_token: String::new(),
        database_url,
        _files: files_dir,
        _db: db,
    };
    t.app_token = t
        .token(json!({"grant_type": "client_credentials", "client_id": t.client_id, "client_secret": t.client_secret}))
        .await;
    t
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}/{}{}", self.api, self.org, self.app, path)
    }

    /// POSTs to the token endpoint and returns the access token (panics if refused).
    pub async fn token(&self, body: Value) -> String {
        let (status, body) = self.post("/token", None, body).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        into_json(req.send().await.unwrap()).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        into_json(
            self.http
                .put(self.url(path))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        into_json(
            self.http
                .delete(self.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        into_json(self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()).await
    }

    /// Creates a user (password "pw") and returns a user token.
    pub async fn user(&self, name: &str) -> String {
        let (status, body) = self
            .post(
                "/users",
                Some(&self.app_token),
                json!({"username": name, "password": "pw"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        self.user_token(name).await
    }

    pub async fn user_token(&self, name: &str) -> String {
        self.token(json!({"grant_type": "password", "username": name, "password": "pw"}))
            .await
    }

    pub fn mqtt_port(&self) -> u16 {
        self.server.mqtt_addr.unwrap().port()
    }

    pub fn outbox(&self, user: &str) -> String {
        format!("chat/{}/{}/u/{user}/out", self.org, self.app)
    }

    pub fn inbox(&self, user: &str) -> String {
        format!("chat/{}/{}/u/{user}/in", self.org, self.app)
    }

    /// A connected rumqttc 3.1.1 device subscribed to its inbox.
    pub async fn device(&self, user: &str, token: &str, device: &str) -> Device {
        device_on(self.mqtt_port(), &self.org, &self.app, user, token, device).await
    }
}

/// A connected rumqttc 3.1.1 device of `org/app` at MQTT port `port`, subscribed to its inbox.
pub async fn device_on(port: u16, org: &str, app: &str, user: &str, token: &str, device: &str) -> Device {
    try_device_on(port, org, app, user, token, device)
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"))
}

/// As [`device_on`], but a refused or failed connection is an error, not a panic.
pub async fn try_device_on(
    port: u16,
    org: &str,
    app: &str,
    user: &str,
    token: &str,
    device: &str,
) -> Result<Device, String> {
    let mut options = MqttOptions::new(device, "127.0.0.1", port);
    options.set_credentials(user, token);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, eventloop) = AsyncClient::new(options, 100);
    let (events, poller) = spawn_poller(eventloop);
    let mut d = Device {
        client,
        events,
        poller,
        user: user.to_string(),
        outbox: format!("chat/{org}/{app}/u/{user}/out"),
    };
    d.client
        .subscribe(format!("chat/{org}/{app}/u/{user}/in"), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match d.next_packet(left).await? {
            Some(Packet::SubAck(_)) => return Ok(d),
            Some(_) => {}
            None => return Err("no SUBACK within 10 s".into()),
        }
    }
}

pub async fn into_json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A device: a rumqttc client whose event loop runs in the background (so what the test
/// publishes goes out even while it waits on another device), with what arrives queued for
/// the test to read. Dropping it closes the connection.
pub struct Device {
    pub client: AsyncClient,
    events: tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
    poller: tokio::task::JoinHandle<()>,
    pub user: String,
    pub outbox: String,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

fn spawn_poller(
    mut eventloop: EventLoop,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(packet)) => {
                    if tx.send(Ok(packet)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    (rx, poller)
}

impl Device {
    pub async fn publish(&self, envelope: Value) {
        self.client
            .publish(&self.outbox, QoS::AtLeastOnce, false, envelope.to_string())
            .await
            .unwrap();
    }

    pub async fn send_text(&self, cid: &str, to: &str, text: &str) {
        self.publish(json!({"op": "send", "cid": cid, "chat": "user", "to": to, "type": "txt", "body": {"msg": text}}))
            .await;
    }

    /// Subscribes to another topic; true if the server granted it.
    pub async fn subscribe(&mut self, topic: &str) -> bool {
        self.client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        let packet = self.wait_for(|p| matches!(p, Packet::SubAck(_))).await;
        let Packet::SubAck(ack) = packet else { unreachable!() };
        ack.return_codes
            .iter()
            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
    }

    /// Sends a message to a group or chatroom.
    pub async fn send_to(&self, chat: &str, cid: &str, to: &str, text: &str) {
        self.publish(json!({"op": "send", "cid": cid, "chat": chat, "to": to, "type": "txt", "body": {"msg": text}}))
            .await;
    }

    /// Polls until a packet matches, failing after 10 s.
    pub async fn wait_for(&mut self, mut pred: impl FnMut(&Packet) -> bool) -> Packet {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(p))) if pred(&p) => return p,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("{}: connection error while waiting: {e}", self.user),
                Ok(None) => panic!("{}: connection closed while waiting", self.user),
                Err(_) => panic!("{}: nothing matching arrived within 10 s", self.user),
            }
        }
    }

    /// The next inbox envelope with the given op.
    pub async fn next_op(&mut self, op: &str) -> Value {
        let packet = self
            .wait_for(|p| matches!(p, Packet::Publish(p) if serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| v["op"] == op)))
            .await;
        let Packet::Publish(p) = packet else { unreachable!() };
        serde_json::from_slice(&p.payload).unwrap()
    }

    /// The next envelope with `op` = "event" and the given `event`.
    pub async fn next_event(&mut self, event: &str) -> Value {
        loop {
            let e = self.next_op("event").await;
            if e["event"] == event {
                return e;
            }
        }
    }

    /// The next packet within `within` (`Ok(None)` if none came), or the connection's error.
    pub async fn next_packet(&mut self, within: Duration) -> Result<Option<Packet>, String> {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(Ok(packet))) => Ok(Some(packet)),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err("connection closed".into()),
            Err(_) => Ok(None),
        }
    }

    /// Waits until the server closes the connection: true if it did within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Collects inbox envelopes for `window`, while keeping the connection alive.
    pub async fn collect(&mut self, window: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if let Ok(Packet::Publish(p)) = event {
                got.push(serde_json::from_slice(&p.payload).unwrap());
            }
        }
        got
    }
}

/// The NATS server cluster tests use: `$NATS_URL`, or the one on 127.0.0.1:4222 (the test
/// script makes sure one answers). Tests fail, never skip, without it.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

impl TestDb {
    /// Another node's handle on a database a first node owns (dropping it drops nothing).
    pub fn shared(url: &str) -> TestDb {
        TestDb {
            url: url.to_string(),
            _dir: None,
            pg_name: None,
        }
    }
}

/// `n` chatd nodes in this process, in cluster mode on one fresh PostgreSQL database and the
/// test NATS, under a NATS subject prefix of their own (so tests running at once never hear
/// each other). Node 0 owns the database and created the app; `tweak` adjusts each node's
/// configuration (its index given).
pub async fn spawn_cluster(n: usize, tweak: impl Fn(usize, &mut chatd::Config)) -> Vec<TestApp> {
    let db = fresh_database(Backend::Postgres).await;
    let prefix = format!("test{}", store::tokens::random_secret(8).to_ascii_lowercase());
    let config = |i: usize| {
        let mut config = test_config(&db.url);
        config.cluster.nats = nats_url();
        config.cluster.node = format!("node{i}");
        config.cluster.prefix = prefix.clone();
        config.cluster.heartbeat_ms = 200;
        config.cluster.node_timeout_ms = 1000;
        tweak(i, &mut config);
        config
    };
    // The nodes share one file store, as a cluster on object storage does.
    let files_dir = tempfile::tempdir().unwrap();
    let configs: Vec<chatd::Config> = (0..n)
        .map(config)
        .map(|mut c| {
            c.files.store = format!("file://{}", files_dir.path().display());
            c
        })
        .collect();
    let url = db.url.clone();
    let mut first = spawn_app_with(configs[0].clone(), db).await;
    first._files = Some(files_dir);
    let mut nodes = vec![first];
    for config in configs.into_iter().skip(1) {
        let server = chatd::start(config).await.expect("node starts");
        let first = &nodes[0];
        let mut node = TestApp {
            api: format!("http://{}", server.api_addr),
            server,
            http: reqwest::Client::new(),
            org: first.org.clone(),
            app: first.app.clone(),
            client_id: first.client_id.clone(),
            client_secret: first.client_secret.clone(),
            app_token: String::new(),
            database_url: url.clone(),
            _files: None,
            _db: TestDb::shared(&url),
        };
        node.app_token = node
            .token(json!({"grant_type": "client_credentials", "client_id": node.client_id, "client_secret": node.client_secret}))
            .await;
        nodes.push(node);
    }
    // Every node has heard every other's first heartbeat (sent as it starts) by the time it
    // would matter; give the last one's a moment to land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    nodes
}
