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
