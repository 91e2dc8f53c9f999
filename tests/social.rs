//! Contacts, blocklists, profiles, app settings and content rules, typing indicators.

mod common;

use std::time::Duration;

use common::{spawn_app, Backend};
use serde_json::json;

async fn contacts_blocks_and_profiles(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let carol = t.user("carol").await;

    // Contacts are mutual; a user manages only their own.
    let (status, body) = t.post("/users/alice/contacts/users/bob", Some(&alice), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        t.get("/users/alice/contacts/users", &alice).await.1["data"],
        json!(["bob"])
    );
    assert_eq!(
        t.get("/users/bob/contacts/users", &bob).await.1["data"],
        json!(["alice"])
    );
    assert_eq!(
        t.post("/users/bob/contacts/users/carol", Some(&alice), json!({}))
            .await
            .0,
        403
    );
    assert_eq!(
        t.post("/users/alice/contacts/users/nobody", Some(&alice), json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        t.post("/users/alice/contacts/users/alice", Some(&alice), json!({}))
            .await
            .0,
        400
    );

    // An app that wants contacts only.
    let (status, body) = t
        .put("/settings", &t.app_token, json!({"require_contacts": true}))
        .await;
    assert_eq!(
        (status, body["data"]["require_contacts"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let mut bob_dev = t.device("bob", &bob, "b").await;
    let mut carol_dev = t.device("carol", &carol, "c").await;
    carol_dev.send_text("c1", "alice", "hi, stranger").await;
    assert_eq!(carol_dev.next_op("error").await["code"], "not_contact");
    bob_dev.send_text("b1", "alice", "hi, friend").await;
    assert_eq!(bob_dev.next_op("ack").await["cid"], "b1");
    assert_eq!(alice_dev.next_op("msg").await["body"]["msg"], "hi, friend");
    assert_eq!(
        t.put("/settings", &t.app_token, json!({"require_contacts": false}))
            .await
            .0,
        200
    );

    // Carol watches alice's presence before she is blocked.
    let mut carol_watch = t.device("carol", &carol, "c-watch").await;
    assert!(carol_watch.subscribe("chat/demo/chat/presence/alice").await);
    let _ = carol_watch.collect(Duration::from_millis(200)).await;

    // Blocking: refused with a clear error, never stored or delivered; presence hidden.
    let (status, body) = t
        .post(
            "/users/alice/blocks/users",
            Some(&alice),
            json!({"usernames": ["carol"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        t.get("/users/alice/blocks/users", &alice).await.1["data"],
        json!(["carol"])
    );
    let app = t.server.store.find_app("demo", "chat").await.unwrap();
    let stored = t.server.store.count_messages(&app.id).await.unwrap();
    carol_dev.send_text("c2", "alice", "let me in").await;
    let err = carol_dev.next_op("error").await;
    assert_eq!(
        (err["code"].as_str(), err["cid"].as_str()),
        (Some("blocked"), Some("c2"))
    );
    assert_eq!(t.server.store.count_messages(&app.id).await.unwrap(), stored);
    assert!(
        !carol_dev.subscribe("chat/demo/chat/presence/alice").await,
        "a blocked user saw presence"
    );
    assert!(bob_dev.subscribe("chat/demo/chat/presence/alice").await);
    let _ = bob_dev.collect(Duration::from_millis(200)).await;
    // Alice's presence changes: bob sees it, carol (subscribed before the block) does not.
    let alice_tablet = t.device("alice", &alice, "a-tablet").await;
    let seen = bob_dev.collect(Duration::from_millis(500)).await;
    assert!(seen.iter().any(|p| p["devices"] == 2), "{seen:?}");
    let leaked = carol_watch.collect(Duration::from_millis(300)).await;
    assert!(leaked.is_empty(), "a blocked user still saw presence: {leaked:?}");
    drop(alice_tablet);
    // Alice still reaches carol: blocking is one-way.
    alice_dev.send_text("a1", "carol", "I can still talk").await;
    assert_eq!(alice_dev.next_op("ack").await["cid"], "a1");
    assert_eq!(carol_dev.next_op("msg").await["body"]["msg"], "I can still talk");
    let got = alice_dev.collect(Duration::from_millis(300)).await;
    assert!(got.iter().all(|m| m["from"] != "carol"), "{got:?}");
    // Unblocked: messages flow again.
    let (status, _) = t.delete("/users/alice/blocks/users/carol", &alice).await;
    assert_eq!(status, 200);
    assert_eq!(t.delete("/users/alice/blocks/users/carol", &alice).await.0, 404);
    carol_dev.send_text("c3", "alice", "thanks").await;
    assert_eq!(carol_dev.next_op("ack").await["cid"], "c3");
    for bad in [
        json!({"usernames": []}),
        json!({"users": ["x"]}),
        json!({"usernames": ["alice"]}),
        json!({"usernames": ["ghost"]}),
    ] {
        let (status, body) = t.post("/users/alice/blocks/users", Some(&alice), bad.clone()).await;
        assert!(status == 400 || status == 404, "{bad} -> {status} {body}");
    }

    // Profiles: set by the user, readable by other users of the app.
    let (status, body) = t
        .put(
            "/metadata/user/alice",
            &alice,
            json!({"avatarurl": "https://cdn.example/a.png", "sign": "on holiday"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = t.get("/metadata/user/alice", &bob).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        json!({"avatarurl": "https://cdn.example/a.png", "sign": "on holiday"}),
        "{body}"
    );
    // As the platform sends them: a form.
    let resp = t
        .http
        .put(t.url("/metadata/user/alice"))
        .bearer_auth(&alice)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("nickname=Ally&ext=a%26b")
        .send()
        .await
        .unwrap();
    let (status, body) = common::into_json(resp).await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!({"nickname": "Ally", "ext": "a&b"})),
        "{body}"
    );
    let (_, body) = t.get("/metadata/user/alice", &bob).await;
    assert_eq!(body["data"]["ext"], "a&b", "{body}");
    assert_eq!(
        body["data"]["sign"], "on holiday",
        "a form replaced what it did not name"
    );
    let (_, body) = t
        .post(
            "/metadata/user/get",
            Some(&bob),
            json!({"targets": ["alice", "ghost"], "properties": ["nickname"]}),
        )
        .await;
    assert_eq!(body["data"], json!({"alice": {"nickname": "Ally"}}), "{body}");
    assert_eq!(
        t.get("/metadata/user/capacity", &bob).await.0,
        403,
        "a user read the app's usage"
    );
    assert!(
        t.get("/metadata/user/capacity", &t.app_token).await.1["data"]
            .as_i64()
            .unwrap()
            > 0
    );
    assert_eq!(
        t.put("/metadata/user/alice", &bob, json!({"sign": "hacked"})).await.0,
        403
    );
    assert_eq!(
        t.put("/metadata/user/alice", &alice, json!({"avatarurl": "javascript:x"}))
            .await
            .0,
        400
    );
    assert_eq!(t.put("/metadata/user/alice", &alice, json!({"age": 3})).await.0, 400);
    assert_eq!(
        t.put("/metadata/user/alice", &alice, json!({"ext": "x".repeat(5000)}))
            .await
            .0,
        400
    );
    let (_, body) = t.put("/metadata/user/alice", &alice, json!({"sign": null})).await;
    assert_eq!(body["data"], json!({"sign": null}), "{body}");
    assert!(t.get("/metadata/user/alice", &bob).await.1["data"]
        .get("sign")
        .is_none());
    assert_eq!(t.delete("/metadata/user/alice", &bob).await.0, 403);
    assert_eq!(t.delete("/metadata/user/alice", &alice).await.1["data"], true);
    assert_eq!(t.get("/metadata/user/alice", &bob).await.1["data"], json!({}));
}

async fn content_rules_rate_limits_and_typing(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let mut bob_dev = t.device("bob", &bob, "b").await;

    // Settings are validated.
    for bad in [
        json!({"send_rate_per_sec": -1}),
        json!({"colour": "red"}),
        json!({"forbidden_action": "explode"}),
        json!([1]),
    ] {
        let (status, body) = t.put("/settings", &t.app_token, bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
    }
    assert_eq!(
        t.get("/settings", &alice).await.0,
        403,
        "a user read the app's settings"
    );

    let rules = json!({"max_message_bytes": 200, "forbidden_words": ["spam"], "forbidden_action": "reject"});
    assert_eq!(t.put("/settings", &t.app_token, rules).await.0, 200);
    alice_dev.send_text("w1", "bob", "buy SPAM now").await;
    assert_eq!(alice_dev.next_op("error").await["code"], "forbidden_content");
    alice_dev.send_text("w2", "bob", &"x".repeat(300)).await;
    assert_eq!(alice_dev.next_op("error").await["code"], "message_too_large");
    assert_eq!(
        t.put("/settings", &t.app_token, json!({"forbidden_action": "mask"}))
            .await
            .0,
        200
    );
    alice_dev.send_text("w3", "bob", "buy SPAM now").await;
    assert_eq!(alice_dev.next_op("ack").await["cid"], "w3");
    assert_eq!(bob_dev.next_op("msg").await["body"]["msg"], "buy **** now");

    // A per-user send rate: 3 at once, then refusals.
    let limits = json!({"send_rate_per_sec": 0.5, "send_burst": 3, "forbidden_words": []});
    assert_eq!(t.put("/settings", &t.app_token, limits).await.0, 200);
    for i in 0..5 {
        alice_dev.send_text(&format!("r{i}"), "bob", "quick").await;
    }
    // Refusals come at once, acks after the batch is stored: compare by cid.
    let mut codes = std::collections::BTreeMap::new();
    while codes.len() < 5 {
        let got = alice_dev.next_op_in(&["ack", "error"]).await;
        codes.insert(
            got["cid"].as_str().unwrap().to_string(),
            got["code"].as_str().unwrap_or("ok").to_string(),
        );
    }
    let codes: Vec<_> = codes.values().map(String::as_str).collect();
    assert_eq!(codes, ["ok", "ok", "ok", "rate_limited", "rate_limited"]);
    // Other users have their own allowance.
    bob_dev.send_text("b1", "alice", "fine").await;
    assert_eq!(bob_dev.next_op("ack").await["cid"], "b1");

    // Typing: relayed, never stored, at most one per conversation every two seconds.
    let app = t.server.store.find_app("demo", "chat").await.unwrap();
    let stored = t.server.store.count_messages(&app.id).await.unwrap();
    for _ in 0..3 {
        alice_dev
            .publish(json!({"op": "typing", "chat": "user", "to": "bob"}))
            .await;
    }
    let _ = alice_dev.collect(Duration::from_millis(100)).await;
    let got = bob_dev.collect(Duration::from_millis(600)).await;
    let typing: Vec<_> = got.iter().filter(|m| m["op"] == "typing").collect();
    assert_eq!(typing.len(), 1, "{got:?}");
    assert_eq!(
        (typing[0]["from"].as_str(), typing[0]["chat"].as_str()),
        (Some("alice"), Some("user"))
    );
    assert_eq!(t.server.store.count_messages(&app.id).await.unwrap(), stored);
    alice_dev
        .publish(json!({"op": "typing", "chat": "room", "to": "x"}))
        .await;
    assert_eq!(alice_dev.next_op("error").await["code"], "invalid");
}

impl common::Device {
    /// The next envelope whose op is one of `ops`.
    async fn next_op_in(&mut self, ops: &[&str]) -> serde_json::Value {
        let packet = self
            .wait_for(|p| {
                matches!(p, rumqttc::Packet::Publish(p)
                    if serde_json::from_slice::<serde_json::Value>(&p.payload).is_ok_and(|v| ops.iter().any(|op| v["op"] == *op)))
            })
            .await;
        let rumqttc::Packet::Publish(p) = packet else {
            unreachable!()
        };
        serde_json::from_slice(&p.payload).unwrap()
    }
}

on_both_backends!(contacts_blocks_and_profiles, content_rules_rate_limits_and_typing);
