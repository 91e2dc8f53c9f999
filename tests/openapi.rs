//! The OpenAPI document (`/openapi.json`) against the live server, on both backends:
//!
//! - every operation it describes is routed (no "no such route", no 405), so the document
//!   names no route the server does not serve (the other way round holds by construction:
//!   `utoipa_axum::routes!` routes and describes in one step, and the unit test in
//!   `api/src/openapi.rs` finds any route added without it);
//! - schemathesis (PyPI; `scripts/test.sh` installs it and passes its path as
//!   `$TEST_SCHEMATHESIS`) generates requests from the document, valid and invalid, with
//!   an app token, against an app with users, a group, a chatroom and messages in it, and
//!   checks that no answer is a 5xx and that every answer has a documented status, content
//!   type and shape. It is never skipped: without schemathesis the test fails.

mod common;

use std::time::Duration;

use common::{spawn_app, Backend, TestApp};
use serde_json::{json, Value};

/// The document, as anyone may fetch it.
async fn document(t: &TestApp) -> Value {
    let resp = t.http.get(format!("{}/openapi.json", t.api)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    resp.json().await.unwrap()
}

/// A concrete path for a documented one: `{org}` and `{app}` the test app's, every other
/// parameter a placeholder.
fn concrete(t: &TestApp, path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{org}" => t.org.clone(),
            "{app}" => t.app.clone(),
            s if s.starts_with('{') => "placeholder".to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn every_documented_operation_is_routed(backend: Backend) {
    let t = spawn_app(backend).await;
    let doc = document(&t).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let url = format!("{}{}", t.api, concrete(&t, path));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = t
                .http
                .request(method.clone(), &url)
                .bearer_auth(&t.app_token)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}: not routed for this method: {body}");
            assert!(
                !(status == 404 && body.contains("no such route")),
                "{method} {path}: documented but not routed"
            );
        }
    }
    // Every route of docs/api.md, groups and chatrooms each, files, health: well over 150.
    assert!(operations > 150, "only {operations} operations documented");
}

/// What schemathesis is to find answered: users, a group, a chatroom, a message. Answers
/// the ids of the last three.
struct Seeded {
    group: String,
    room: String,
    message: String,
}

async fn seed(t: &TestApp) -> Seeded {
    for user in ["alice", "bob", "carol"] {
        t.user(user).await;
    }
    let (status, group) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"groupname": "g", "owner": "alice", "members": ["bob"], "public": true}),
        )
        .await;
    assert_eq!(status, 200, "{group}");
    let (status, room) = t
        .post(
            "/chatrooms",
            Some(&t.app_token),
            json!({"name": "r", "owner": "alice", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 200, "{room}");
    let (status, sent) = t
        .post(
            "/messages/users",
            Some(&t.app_token),
            json!({"from": "alice", "to": ["bob"], "type": "txt", "body": {"msg": "hello"}}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    Seeded {
        group: group["data"]["groupid"].as_str().expect("a group id").to_string(),
        room: room["data"]["id"].as_str().expect("a room id").to_string(),
        message: sent["data"]["bob"].as_str().expect("a message id").to_string(),
    }
}

async fn schemathesis_finds_no_server_error_and_no_undocumented_answer(backend: Backend) {
    let program = std::env::var("TEST_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let t = spawn_app(backend).await;
    let seeded = seed(&t).await;
    let dir = tempfile::tempdir().unwrap();
    // The test app's org and app in every path, a seeded user as `{username}`, the seeded
    // group, chatroom and message as `{id}` (random ones would only ever be 404).
    // tus's PATCH body (`application/offset+octet-stream`) is bytes: schemathesis needs to be
    // told how to send it.
    let hooks = dir.path().join("hooks.py");
    std::fs::write(
        &hooks,
        "import schemathesis\n\n\
         @schemathesis.serializer(\"application/offset+octet-stream\")\n\
         def tus_part(ctx, value):\n    \
         return value if isinstance(value, bytes) else str(value).encode()\n",
    )
    .unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"hooks = "{hooks}"

[parameters]
"path.org" = "{org}"
"path.app" = "{app}"
"path.username" = "bob"

[[operations]]
include-path-regex = '^/\{{org\}}/\{{app\}}/(chatgroups|metadata/chatgroup)/\{{id\}}'
parameters = {{ "path.id" = "{group}" }}

[[operations]]
include-path-regex = '^/\{{org\}}/\{{app\}}/(chatrooms|metadata/chatroom)/\{{id\}}'
parameters = {{ "path.id" = "{room}" }}

[[operations]]
include-path-regex = '/messages/(rewrite/)?\{{id\}}'
parameters = {{ "path.id" = "{message}" }}
"#,
            hooks = hooks.display(),
            org = t.org,
            app = t.app,
            group = seeded.group,
            room = seeded.room,
            message = seeded.message,
        ),
    )
    .unwrap();
    let run = tokio::process::Command::new(&program)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/openapi.json", t.api))
        .args(["--url", &t.api])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--header", &format!("Authorization: Bearer {}", t.app_token)])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "8", "--workers", "1", "--seed", "1"])
        .args(["--request-timeout", "30", "--suppress-health-check", "all"])
        .args(["--no-color"])
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .expect("schemathesis finishes within 15 minutes")
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
}

on_both_backends!(
    every_documented_operation_is_routed,
    schemathesis_finds_no_server_error_and_no_undocumented_answer
);

#[tokio::test]
async fn the_document_needs_no_token_and_is_outside_the_envelope() {
    let t = spawn_app(Backend::Sqlite).await;
    let doc = document(&t).await;
    assert!(doc.get("timestamp").is_none(), "the document is not enveloped");
    assert_eq!(doc["info"]["title"], "chatd REST API");
    assert!(doc["paths"]["/{org}/{app}/users"]["post"].is_object());
    // `chatd openapi` prints the same document, without a server or a configuration.
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("openapi")
        .env("CHATD_CONFIG", "/nonexistent/chatd.toml")
        .output()
        .unwrap();
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed: Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(printed, doc);
}
