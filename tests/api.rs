//! The REST API: tokens, tenants, users, validation errors.

mod common;

use common::{spawn_app, Backend};
use serde_json::{json, Value};

async fn tokens_and_tenants(backend: Backend) {
    let t = spawn_app(backend).await;
    // Wrong secret, unknown grant, bad JSON: clear 4xx.
    let (status, body) = t
        .post(
            "/token",
            None,
            json!({"grant_type": "client_credentials", "client_id": t.client_id, "client_secret": "nope"}),
        )
        .await;
    // As on the platform: 400 `invalid_grant`, in the error envelope.
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    for key in ["exception", "timestamp", "duration", "error_description"] {
        assert!(body.get(key).is_some(), "no {key} in {body}");
    }
    let (status, body) = t.post("/token", None, json!({"grant_type": "magic"})).await;
    assert_eq!(status, 400, "{body}");
    let resp = t.http.post(t.url("/token")).body("{oops").send().await.unwrap();
    let (status, body) = common::into_json(resp).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("illegal_argument")),
        "{body}"
    );

    // `ttl` as the platform takes it: a number or a string of digits; 0 for no expiry.
    let grant = |ttl: Value| json!({"grant_type": "client_credentials", "client_id": t.client_id, "client_secret": t.client_secret, "ttl": ttl});
    let (status, body) = t.post("/token", None, grant(json!("3600"))).await;
    assert_eq!((status, body["expires_in"].as_i64()), (200, Some(3600)), "{body}");
    assert!(
        body.get("application").is_some() && body.get("action").is_none(),
        "not bare: {body}"
    );
    let (status, body) = t.post("/token", None, grant(json!(0))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_in"].as_i64().unwrap() > 50 * 365 * 24 * 3600, "{body}");
    let (status, body) = t.get("/users", body["access_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    for bad in [json!("soon"), json!(-1), json!(1.5)] {
        let (status, body) = t.post("/token", None, grant(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error_description"].as_str().unwrap().contains("ttl"),
            "{bad}: {body}"
        );
    }

    // No token, a forged token, a user token where an app token is needed.
    let resp = t.http.get(t.url("/users")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let forged = store::tokens::Tokens::new("not-the-key")
        .issue("x", "demo", "chat", store::tokens::Role::App, 1, 60)
        .unwrap();
    assert_eq!(t.get("/users", &forged).await.0, 401);
    let alice = t.user("alice").await;
    assert_eq!(t.get("/users", &alice).await.0, 403);
    assert_eq!(t.get("/users/alice", &alice).await.0, 200);

    // `inherit`: the app's backend gets a user token without the password.
    let inherit = json!({"grant_type": "inherit", "username": "Alice"});
    let (status, body) = t.post("/token", Some(&t.app_token), inherit.clone()).await;
    assert_eq!(status, 200, "{body}");
    let inherited = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(t.get("/users/alice", &inherited).await.0, 200);
    assert_eq!(
        t.post("/token", Some(&alice), inherit.clone()).await.0,
        401,
        "a user token inherited"
    );
    assert_eq!(t.post("/token", None, inherit).await.0, 401);
    let (status, _) = t
        .post(
            "/token",
            Some(&t.app_token),
            json!({"grant_type": "inherit", "username": "ghost"}),
        )
        .await;
    assert_eq!(status, 404);

    // Another app: same username is another user, and tokens do not cross.
    let (other, creds) = t.server.store.create_app("acme", "support").await.unwrap();
    let other_url = format!("{}/acme/support", t.api);
    let resp = t
        .http
        .post(format!("{other_url}/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}))
        .send()
        .await
        .unwrap();
    let (status, body) = common::into_json(resp).await;
    assert_eq!(status, 200);
    let other_token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        t.get("/users", &other_token).await.0,
        401,
        "a token of acme/support worked in demo/chat"
    );
    let resp = t
        .http
        .get(format!("{other_url}/users/alice"))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "alice of demo/chat visible in acme/support");
    let resp = t
        .http
        .post(format!("{other_url}/users"))
        .bearer_auth(&other_token)
        .json(&json!({"username": "alice", "password": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "same username in another app");
    assert_eq!(other.org, "acme");

    // Rotating the secret revokes app tokens issued before it.
    t.server.store.rotate_app_secret("demo", "chat").await.unwrap();
    let (status, body) = t.get("/users", &t.app_token).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("rotated"));

    // An expired token is refused.
    let expired = t
        .token(json!({"grant_type": "password", "username": "alice", "password": "pw", "ttl": 1}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = t.get("/users/alice", &expired).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("expired"),
        "{body}"
    );
}

async fn users_crud_and_validation(backend: Backend) {
    let t = spawn_app(backend).await;
    let tok = t.app_token.clone();
    let (status, body) = t
        .post(
            "/users",
            Some(&tok),
            json!([{"username": "Alice", "password": "pw", "nickname": "Al"}, {"username": "bob", "password": "pw"}]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entities"][0]["username"], "alice", "usernames are lower-cased");

    for (bad, needle) in [
        (json!({"username": "carol", "password": 5}), "password"),
        (json!({"password": "pw"}), "username"),
        (json!({"username": "ca/rol", "password": "pw"}), "username"),
        (json!({"username": "carol", "password": "pw", "age": 3}), "age"),
        (json!([]), "1 to"),
        (json!("carol"), "object"),
    ] {
        let (status, body) = t.post("/users", Some(&tok), bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        let text = body["error_description"].as_str().unwrap();
        assert!(text.contains(needle), "{bad}: '{text}' does not mention {needle}");
    }
    let (status, body) = t
        .post("/users", Some(&tok), json!({"username": "bob", "password": "x"}))
        .await;
    // A name taken: 400 with the platform's code.
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "duplicate_unique_property_exists", "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("bob"));
    // A batch creates what it can and names the rest in `data`, as the platform's does.
    let (status, body) = t
        .post(
            "/users",
            Some(&tok),
            json!([{"username": "dave", "password": "x"}, {"username": "bob", "password": "x"}, {"username": "dave"}]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entities"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["entities"][0]["username"], "dave");
    let refused: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["username"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["bob", "dave"], "{body}");
    assert!(body["data"][0]["registerUserFailReason"]
        .as_str()
        .unwrap()
        .contains("bob"));
    assert_eq!(t.get("/users/dave", &tok).await.0, 200);
    // Without a password: created, but no password logs in.
    let (status, body) = t.post("/users", Some(&tok), json!({"username": "nopw"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = t
        .post(
            "/token",
            None,
            json!({"grant_type": "password", "username": "nopw", "password": ""}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");

    // Paging with a cursor.
    for name in ["u1", "u2", "u3"] {
        t.user(name).await;
    }
    let (mut names, mut path, mut pages) = (Vec::new(), "/users?limit=2".to_string(), 0);
    loop {
        let (status, page) = t.get(&path, &tok).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for user in page["entities"].as_array().unwrap() {
            names.push(user["username"].as_str().unwrap().to_string());
        }
        // The cursor is there while a page is full; the platform leaves it out at the end.
        match page.get("cursor") {
            Some(cursor) => path = format!("/users?limit=2&cursor={}", cursor.as_str().unwrap()),
            None => break,
        }
    }
    assert_eq!(names, ["alice", "bob", "dave", "nopw", "u1", "u2", "u3"]);
    assert_eq!(pages, 4);
    assert_eq!(t.get("/users?limit=0", &tok).await.0, 400);

    // Update nickname and metadata; validation of metadata.
    let (status, body) = t
        .put(
            "/users/bob",
            &tok,
            json!({"nickname": "Bobby", "metadata": {"avatar": "https://x/y.png"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entities"][0]["nickname"], "Bobby");
    assert_eq!(body["entities"][0]["metadata"]["avatar"], "https://x/y.png");
    assert_eq!(t.put("/users/bob", &tok, json!({"metadata": {"n": 1}})).await.0, 400);
    assert_eq!(t.put("/users/nobody", &tok, json!({"nickname": "x"})).await.0, 404);

    // Delete; the user's password no longer works.
    assert_eq!(t.delete("/users/bob", &tok).await.0, 200);
    assert_eq!(t.get("/users/bob", &tok).await.0, 404);
    let (status, _) = t
        .post(
            "/token",
            None,
            json!({"grant_type": "password", "username": "bob", "password": "pw"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(t.delete("/users/bob", &tok).await.0, 404);
}

on_both_backends!(tokens_and_tenants, users_crud_and_validation);
