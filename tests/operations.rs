//! What an operator's tools see, over real sockets: liveness and readiness (readiness going
//! 503 while the database is down, with a PostgreSQL of the test's own that it stops and
//! starts again).

mod common;

use std::time::Duration;

use common::throwaway_pg::ThrowawayPostgres;
use common::{spawn_app, spawn_app_with, test_config, Backend, TestApp, TestDb};
use serde_json::{json, Value};

async fn health(t: &TestApp, path: &str) -> (u16, Value) {
    let resp = t.http.get(format!("{}{path}", t.api)).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_readiness_answer_without_a_token() {
    let t = spawn_app(Backend::Sqlite).await;
    assert_eq!(health(&t, "/health").await, (200, json!({"status": "ok"})));
    assert_eq!(health(&t, "/health/live").await, (200, json!({"status": "live"})));
    assert_eq!(
        health(&t, "/health/ready").await,
        (
            200,
            json!({"status": "ready", "checks": {"database": "ok", "bridge": "ok", "gate": "ok"}})
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_database_is_down_and_recovers() {
    let pg = ThrowawayPostgres::start();
    let db = TestDb::shared(&pg.url());
    let t = spawn_app_with(test_config(&pg.url()), db).await;
    let (status, body) = health(&t, "/health/ready").await;
    assert_eq!(status, 200, "{body}");

    pg.stop();
    let (status, body) = health(&t, "/health/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not ready");
    // Refused, or no answer in time (a connection waiting on the dead server).
    let database = body["checks"]["database"].as_str().unwrap();
    assert!(
        database == "unreachable" || database.starts_with("no answer within"),
        "{body}"
    );
    assert_eq!(body["checks"]["gate"], "ok", "{body}");
    // Alive all the same: restarting it would not bring the database back.
    assert_eq!(health(&t, "/health/live").await.0, 200);

    pg.start_again();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = health(&t, "/health/ready").await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still not ready: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And it works again.
    let alice = t.user("alice").await;
    let (status, _) = t.get("/users/alice", &alice).await;
    assert_eq!(status, 200);
}

/// `chatd health`, what a container's HEALTHCHECK runs: 0 when ready, 1 when not or not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_answers_with_its_exit_status() {
    let t = spawn_app(Backend::Sqlite).await;
    let run = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["health", "--url", &url])
            .env_remove("DATABASE_URL")
            .output()
            .await
            .unwrap()
    };
    let ready = run(format!("{}/health/ready", t.api)).await;
    assert!(ready.status.success(), "{ready:?}");
    assert!(String::from_utf8_lossy(&ready.stdout).contains("\"ready\""));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nobody = run(format!("http://{closed}/health/ready")).await;
    assert_eq!(nobody.status.code(), Some(1), "{nobody:?}");
    let missing = run(format!("{}/health/nope", t.api)).await;
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
}

/// The value of one series in a Prometheus text page (0 when absent).
fn series(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(t: &TestApp, token: Option<&str>) -> (u16, String) {
    let mut request = t.http.get(format!("{}/metrics", t.api));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Metrics move when traffic flows. The recorder is the process's, shared by the tests
/// running beside this one: every check is "at least this much more".
async fn metrics_move_when_traffic_flows(backend: Backend) {
    let t = spawn_app(backend).await;
    let (status, before) = scrape(&t, None).await;
    assert_eq!(status, 200);
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut a = t.device("alice", &alice, "a1").await;
    let mut b = t.device("bob", &bob, "b1").await;
    for i in 0..3 {
        a.send_text(&format!("m{i}"), "bob", "hello").await;
        a.next_op("ack").await;
        b.next_op("msg").await;
    }
    a.publish(json!({"op": "send", "cid": "bad", "chat": "user", "to": "nobody", "type": "txt", "body": {"msg": "x"}}))
        .await;
    a.next_op("error").await;
    let (_, after) = scrape(&t, None).await;
    let grew = |name: &str, by: f64| {
        let (was, is) = (series(&before, name), series(&after, name));
        assert!(is >= was + by, "{name}: {was} -> {is}\n{after}");
    };
    grew(r#"chatd_messages_stored_total{chat="user",type="txt"}"#, 3.0);
    grew(r#"chatd_messages_refused_total{code="unknown_recipient"}"#, 1.0);
    grew(r#"chatd_mqtt_connects_total{result="accepted"}"#, 2.0);
    grew(r#"chatd_mqtt_publishes_total{op="send"}"#, 4.0);
    grew("chatd_mqtt_deliveries_total", 6.0);
    grew("chatd_bridge_batch_size_count", 1.0);
    grew("chatd_bridge_commit_seconds_count", 1.0);
    grew(
        r#"chatd_http_requests_total{route="/:org/:app/users",method="POST",status="2xx"}"#,
        2.0,
    );
    assert!(
        series(&after, r#"chatd_mqtt_connections{transport="tcp",protocol="3.1.1"}"#) >= 2.0,
        "{after}"
    );
    assert!(after.contains("chatd_db_pool_connections{state=\"idle\"}"), "{after}");
    assert!(after.contains("chatd_push_queue_depth "), "{after}");
    assert!(after.contains("# HELP chatd_messages_stored_total"), "{after}");
    // Bounded labels: no user, device or message id is ever a label.
    for secret in ["alice", "bob", "a1", "b1"] {
        assert!(!after.contains(&format!("\"{secret}\"")), "{secret} in a label");
    }
    // Not in the envelope, and not in the count of API routes either.
    assert!(!after.contains("route=\"/metrics\""), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off_and_take_a_token() {
    let off = common::app_with(Backend::Sqlite, |c| c.metrics.enabled = false).await;
    assert_eq!(scrape(&off, None).await.0, 404);

    let with_token = common::app_with(Backend::Sqlite, |c| c.metrics.token = "scrape-me".into()).await;
    // From loopback either way; the token is what a scraper elsewhere sends.
    assert_eq!(scrape(&with_token, None).await.0, 200);
    assert_eq!(scrape(&with_token, Some("scrape-me")).await.0, 200);
}

on_both_backends!(metrics_move_when_traffic_flows);

/// Runs the binary with `format` until it is up, stops it, and answers what it logged.
async fn logs_of_a_run(format: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .env("DATABASE_URL", format!("sqlite://{}/chat.db", dir.path().display()))
        .env("CHATD_DATA_DIR", dir.path())
        .env("CHATD_MQTT__TCP", "127.0.0.1:0")
        .env("CHATD_MQTT__WS", "")
        .env("CHATD_API__LISTEN", "127.0.0.1:0")
        .env("CHATD_LOG__FORMAT", format)
        .env("RUST_LOG", "info,rumqttd=off")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if line.starts_with("REST API:") {
                break;
            }
        }
    })
    .await
    .expect("chatd started");
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let mut logged = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logged).await.unwrap();
    child.wait().await.unwrap();
    logged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_objects_when_asked_and_plain_text_off_a_terminal() {
    let json_logs = logs_of_a_run("json").await;
    let events: Vec<Value> = json_logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let migration = events
        .iter()
        .find(|e| e["message"] == "applied migration")
        .unwrap_or_else(|| panic!("{json_logs}"));
    // One object per event, its fields at the top level.
    assert_eq!(migration["level"], "INFO");
    assert!(migration["version"].is_number(), "{migration}");
    assert!(migration["timestamp"].is_string(), "{migration}");

    // Text to a pipe: no colour codes.
    let text_logs = logs_of_a_run("text").await;
    assert!(text_logs.contains("applied migration"), "{text_logs}");
    assert!(!text_logs.contains('\u{1b}'), "ANSI codes in {text_logs}");

    // A format that does not exist is refused at start, naming the setting.
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .env("CHATD_LOG__FORMAT", "xml")
        .args(["app", "list"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("log.format"), "{bad:?}");
}
