//! What the web app (`web/`) needs from the server, over real sockets: the app served with
//! its security headers and nothing else from that path, its configuration, users
//! registering themselves only where the app allows it (and not in bulk), and the
//! conversation list telling how far the peer has read. The app itself is tested in a real
//! browser by `clients/js/test/web.test.ts`.

mod common;

use common::{app_with, fresh_database, spawn_app, test_config, Backend, TestApp};
use serde_json::{json, Value};

fn web(t: &TestApp, path: &str) -> String {
    format!("{}/web{path}", t.api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_is_served_with_its_rules_and_nothing_else() {
    let t = spawn_app(Backend::Sqlite).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bare = no_redirects.get(web(&t, "")).send().await.unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(bare.headers()["location"], "/web/");

    let page = t.http.get(web(&t, "/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    for rule in ["script-src 'self'", "frame-ancestors 'none'", "object-src 'none'"] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<script type=\"module\" src=\"app.js\">"));

    // A file that did not change is not sent again.
    let script = t.http.get(web(&t, "/app.js")).send().await.unwrap();
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    let etag = script.headers()["etag"].clone();
    let again = t
        .http
        .get(web(&t, "/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // Only the app's own files: no path leads out of it.
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/..%2fCargo.toml",
        "/nope.js",
        "/app.js/x",
    ] {
        let status = no_redirects.get(web(&t, path)).send().await.unwrap().status();
        assert!(status == 404 || status == 400, "{path}: {status}");
    }

    // Where to sign in and connect; registration as the app's settings say.
    let config: Value = t
        .http
        .get(web(&t, "/config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ws_port = t.server.ws_addr.unwrap().port();
    assert_eq!(
        config,
        json!({"org": "demo", "app": "chat", "mqtt_url": null, "ws_port": ws_port, "wss_port": null,
               "mqtt_path": "/mqtt", "registration": false})
    );
    let (status, body) = t
        .put("/settings", &t.app_token, json!({"open_registration": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    let config: Value = t
        .http
        .get(web(&t, "/config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["registration"], true);

    // The API beside it is untouched.
    let (status, _) = t.get("/users", &t.app_token).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_can_be_turned_off_moved_or_pointed_at_a_missing_app() {
    let off = app_with(Backend::Sqlite, |c| c.web.enabled = false).await;
    assert_eq!(off.http.get(web(&off, "/")).send().await.unwrap().status(), 404);

    let moved = app_with(Backend::Sqlite, |c| {
        c.web.path = "/chat-ui/".into();
        c.web.app = "nobody/here".into();
    })
    .await;
    let answer = moved
        .http
        .get(format!("{}/chat-ui/config.json", moved.api))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let body: Value = answer.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("nobody/here"), "{body}");

    for (path, app, complaint) in [
        ("/a/b", "demo/chat", "web.path"),
        ("/", "demo/chat", "web.path"),
        ("/web", "demo", "web.app"),
        ("/web", "demo/chat/x", "web.app"),
    ] {
        let db = fresh_database(Backend::Sqlite).await;
        let mut config = test_config(&db.url);
        config.web.path = path.into();
        config.web.app = app.into();
        let error = match chatd::start(config).await {
            Ok(_) => panic!("{path} {app}: started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(complaint), "{path} {app}: {error}");
    }
}

async fn register(t: &TestApp, body: Value) -> (u16, Value) {
    t.post("/users", None, body).await
}

async fn users_register_themselves_only_where_the_app_allows_it(backend: Backend) {
    let t = app_with(backend, |c| c.api.login_address_free_failures = 4).await;
    // By default an app's backend creates its users.
    let (status, body) = register(&t, json!({"username": "eve", "password": "long-enough"})).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, _) = t.get("/users/eve", &t.app_token).await;
    assert_eq!(status, 404);

    let (status, body) = t
        .put("/settings", &t.app_token, json!({"open_registration": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = register(&t, json!({"username": "Alice", "password": "long-enough"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entities"][0]["username"], "alice");
    assert!(body["entities"][0].get("password").is_none());
    let alice = t
        .token(json!({"grant_type": "password", "username": "alice", "password": "long-enough"}))
        .await;

    // One user at a time, with a real password, under a free name.
    let (status, body) = register(
        &t,
        json!([{"username": "b1", "password": "long-enough"}, {"username": "b2", "password": "long-enough"}]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("one user"),
        "{body}"
    );
    let (status, body) = register(&t, json!({"username": "bob", "password": "short"})).await;
    assert_eq!(status, 400);
    assert!(
        body["error_description"].as_str().unwrap().contains("'password'"),
        "{body}"
    );
    let (status, body) = register(&t, json!({"username": "bob"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = register(&t, json!({"username": "alice", "password": "another-one"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("duplicate_unique_property_exists")),
        "{body}"
    );

    // A token that does not work is refused, not taken for a registration; a user token
    // cannot create users either.
    let forged = t
        .http
        .post(t.url("/users"))
        .bearer_auth("not-a-token")
        .json(&json!({"username": "mallory", "password": "long-enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let (status, _) = t
        .post(
            "/users",
            Some(&alice),
            json!({"username": "mallory", "password": "long-enough"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = t.get("/users/mallory", &t.app_token).await;
    assert_eq!(status, 404);

    // One address cannot fill the app: past the free registrations (4 here, counting the
    // refused attempts that reached the throttle), 429 with when to retry; signing in from
    // the same address still works.
    let mut refused = None;
    for i in 0..6 {
        let (status, body) = register(&t, json!({"username": format!("bulk{i}"), "password": "long-enough"})).await;
        if status == 429 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let refused = refused.expect("registrations from one address are throttled");
    assert!(
        refused["error_description"]
            .as_str()
            .unwrap()
            .contains("too many registrations"),
        "{refused}"
    );
    t.token(json!({"grant_type": "password", "username": "alice", "password": "long-enough"}))
        .await;
}

async fn the_conversation_list_tells_how_far_the_peer_read(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut a = t.device("alice", &alice, "a1").await;
    for i in 0..3 {
        a.send_text(&format!("c{i}"), "bob", "hi").await;
        a.next_op("ack").await;
    }
    let entry = |body: &Value| body["entities"][0].clone();
    let (_, body) = t.get("/users/alice/conversations", &alice).await;
    assert_eq!(
        (
            entry(&body)["peer_read_seq"].clone(),
            entry(&body)["peer_delivered_seq"].clone()
        ),
        (json!(0), json!(0)),
        "{body}"
    );

    let b = t.device("bob", &bob, "b1").await;
    b.publish(json!({"op": "delivered", "conv": "u:alice:bob", "seq": 3}))
        .await;
    b.publish(json!({"op": "read", "conv": "u:alice:bob", "seq": 2})).await;
    a.next_op("receipt").await;
    a.next_op("receipt").await;
    let (_, body) = t.get("/users/alice/conversations", &alice).await;
    assert_eq!(entry(&body)["peer_read_seq"], 2, "{body}");
    assert_eq!(entry(&body)["peer_delivered_seq"], 3, "{body}");
    // Bob's own view: alice, the sender, has read all three (sending reads).
    let (_, body) = t.get("/users/bob/conversations", &bob).await;
    assert_eq!(entry(&body)["peer_read_seq"], 3, "{body}");
    assert_eq!(entry(&body)["unread"], 1, "{body}");

    // Groups have no single peer: no such fields.
    let (status, body) = t
        .post(
            "/chatgroups",
            Some(&alice),
            json!({"groupname": "g", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let group = body["data"]["groupid"].as_str().unwrap().to_string();
    a.send_to("group", "g1", &group, "hello").await;
    a.next_op("ack").await;
    let (_, body) = t.get("/users/alice/conversations", &alice).await;
    let group_entry = body["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["chat"] == "group")
        .unwrap()
        .clone();
    assert!(group_entry.get("peer_read_seq").is_none(), "{group_entry}");
}

on_both_backends!(
    users_register_themselves_only_where_the_app_allows_it,
    the_conversation_list_tells_how_far_the_peer_read,
);
