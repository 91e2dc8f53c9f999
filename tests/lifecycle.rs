//! The life of a message: receipts, unread counts and the conversation list, recall, edit,
//! delete for me, reactions, cmd messages, messages sent by the backend, and search.

mod common;

use std::time::Duration;

use common::{msg_texts, spawn_app, Backend};
use serde_json::json;

async fn receipts_unread_and_conversation_list(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol] = [t.user("alice").await, t.user("bob").await, t.user("carol").await];
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let mut bob_phone = t.device("bob", &bob, "b-phone").await;
    let mut bob_tablet = t.device("bob", &bob, "b-tablet").await;

    for i in 1..=3 {
        alice_dev.send_text(&format!("m{i}"), "bob", &format!("m{i}")).await;
        alice_dev.next_op("ack").await;
    }
    let (status, list) = t.get("/users/bob/conversations", &bob).await;
    assert_eq!(status, 200, "{list}");
    let entry = &list["entities"][0];
    assert_eq!(
        (entry["conv"].as_str(), entry["with"].as_str(), entry["unread"].as_i64()),
        (Some("u:alice:bob"), Some("alice"), Some(3))
    );
    assert_eq!(entry["last_message"]["body"]["msg"], "m3");
    assert_eq!(list["total_unread"], 3);
    // The sender has nothing unread in it.
    assert_eq!(t.get("/users/alice/unread", &alice).await.1["data"]["total_unread"], 0);

    // Bob reads up to 2 on his phone: alice is told, his tablet follows, the count drops.
    bob_phone
        .publish(json!({"op": "read", "conv": "u:alice:bob", "seq": 2}))
        .await;
    let receipt = alice_dev.next_op("receipt").await;
    assert_eq!(
        (
            receipt["type"].as_str(),
            receipt["seq"].as_i64(),
            receipt["by"].as_str()
        ),
        (Some("read"), Some(2), Some("bob"))
    );
    let synced = bob_tablet.next_op("read_sync").await;
    assert_eq!(
        (synced["conv"].as_str(), synced["seq"].as_i64()),
        (Some("u:alice:bob"), Some(2))
    );
    assert_eq!(t.get("/users/bob/unread", &bob).await.1["data"]["total_unread"], 1);
    // Positions never go back, and a position past the end stops at the end.
    bob_phone
        .publish(json!({"op": "read", "conv": "u:alice:bob", "seq": 1}))
        .await;
    bob_phone
        .publish(json!({"op": "read", "conv": "u:alice:bob", "seq": 99}))
        .await;
    assert_eq!(alice_dev.next_op("receipt").await["seq"], 3);
    assert_eq!(t.get("/users/bob/unread", &bob).await.1["data"]["total_unread"], 0);
    bob_phone
        .publish(json!({"op": "read", "conv": "u:alice:carol", "seq": 1}))
        .await;
    assert_eq!(bob_phone.next_op("error").await["code"], "not_found");
    bob_phone.publish(json!({"op": "read", "conv": "u:alice:bob"})).await;
    assert_eq!(bob_phone.next_op("error").await["code"], "invalid");

    // A group: unread per member, read receipts to the sender, and who has read it.
    let (_, created) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"name": "g", "owner": "alice", "members": ["bob", "carol"]}),
        )
        .await;
    let gid = created["data"]["groupid"].as_str().unwrap().to_string();
    alice_dev.send_to("group", "g1", &gid, "group news").await;
    let ack = alice_dev.next_op("ack").await;
    let id = ack["id"].as_str().unwrap().to_string();
    let (_, list) = t.get("/users/bob/conversations", &bob).await;
    assert_eq!(
        list["entities"][0]["conv"],
        format!("g:{gid}"),
        "most recent first: {list}"
    );
    assert_eq!(list["entities"][0]["unread"], 1);
    assert_eq!(t.get(&format!("/messages/{id}/readers"), &alice).await.1["count"], 0);
    bob_phone
        .publish(json!({"op": "read", "conv": format!("g:{gid}"), "seq": 1}))
        .await;
    let receipt = alice_dev.next_op("receipt").await;
    assert_eq!(
        (receipt["conv"].as_str(), receipt["by"].as_str()),
        (Some(format!("g:{gid}").as_str()), Some("bob"))
    );
    let (_, readers) = t.get(&format!("/messages/{id}/readers"), &alice).await;
    assert_eq!(readers["entities"], json!(["bob"]));
    assert_eq!(
        t.get(&format!("/messages/{id}/readers"), &carol).await.0,
        403,
        "a non-sender saw the read list"
    );
    // Group read receipts can be turned off.
    assert_eq!(
        t.put("/settings", &t.app_token, json!({"group_read_receipts": false}))
            .await
            .0,
        200
    );
    assert_eq!(t.get(&format!("/messages/{id}/readers"), &alice).await.0, 403);
    let mut carol_dev = t.device("carol", &carol, "c").await;
    carol_dev
        .publish(json!({"op": "read", "conv": format!("g:{gid}"), "seq": 1}))
        .await;
    let _ = carol_dev.collect(Duration::from_millis(200)).await;
    let got = alice_dev.collect(Duration::from_millis(400)).await;
    assert!(got.iter().all(|m| m["op"] != "receipt"), "{got:?}");

    // Leaving a group takes it out of the conversation list (its unread would only grow).
    assert_eq!(t.get("/users/carol/conversations", &carol).await.1["count"], 1);
    assert_eq!(t.delete(&format!("/chatgroups/{gid}/users/carol"), &carol).await.0, 200);
    let (_, carols) = t.get("/users/carol/conversations", &carol).await;
    assert_eq!(
        (carols["count"].as_i64(), carols["total_unread"].as_i64()),
        (Some(0), Some(0)),
        "{carols}"
    );

    // Delivered receipts work the same way.
    alice_dev.send_text("m4", "bob", "m4").await;
    alice_dev.next_op("ack").await;
    bob_phone
        .publish(json!({"op": "delivered", "conv": "u:alice:bob", "seq": 4}))
        .await;
    let receipt = alice_dev.next_op("receipt").await;
    assert_eq!(
        (receipt["type"].as_str(), receipt["seq"].as_i64()),
        (Some("delivered"), Some(4))
    );
}

async fn recall_edit_delete_react_and_cmd(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob] = [t.user("alice").await, t.user("bob").await];
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let mut bob_dev = t.device("bob", &bob, "b").await;
    let mut ids = Vec::new();
    for (cid, text) in [("m1", "oops, wrong chat"), ("m2", "typo heer"), ("m3", "keep me")] {
        alice_dev.send_text(cid, "bob", text).await;
        ids.push(alice_dev.next_op("ack").await["id"].as_str().unwrap().to_string());
    }
    let [m1, m2, m3] = [ids[0].clone(), ids[1].clone(), ids[2].clone()];
    let _ = bob_dev.collect(Duration::from_millis(200)).await;

    // Recall: everyone who has it is told, the content is gone, history shows it recalled.
    bob_dev.publish(json!({"op": "recall", "cid": "r0", "id": m1})).await;
    assert_eq!(
        bob_dev.next_op("error").await["code"],
        "forbidden",
        "bob recalled alice's message"
    );
    alice_dev.publish(json!({"op": "recall", "cid": "r1", "id": m1})).await;
    let recalled = bob_dev.next_op("recalled").await;
    assert_eq!(
        (recalled["id"].as_str(), recalled["by"].as_str()),
        (Some(m1.as_str()), Some("alice"))
    );
    assert_eq!(alice_dev.next_op("recalled").await["id"], m1.as_str());
    let app = t.server.store.find_app("demo", "chat").await.unwrap();
    let stored = t.server.store.message(&app.id, &m1).await.unwrap();
    assert!(stored.recalled && stored.body == "{}", "content kept: {}", stored.body);
    let (_, history) = t.get("/users/bob/conversations/user/alice/messages", &bob).await;
    assert_eq!(
        (
            history["entities"][0]["recalled"].as_bool(),
            history["entities"][0]["body"].is_null()
        ),
        (Some(true), true)
    );

    // Edit: own messages only, validated, everyone told, history shows the edit.
    alice_dev
        .publish(json!({"op": "edit", "id": m2, "body": {"msg": "typo here"}}))
        .await;
    let edited = bob_dev.next_op("edited").await;
    assert_eq!(
        (edited["body"]["msg"].as_str(), edited["id"].as_str()),
        (Some("typo here"), Some(m2.as_str()))
    );
    assert!(edited["edited"].as_i64().unwrap() > 0);
    bob_dev
        .publish(json!({"op": "edit", "cid": "e1", "id": m2, "body": {"msg": "hijack"}}))
        .await;
    assert_eq!(bob_dev.next_op("error").await["code"], "forbidden");
    alice_dev
        .publish(json!({"op": "edit", "cid": "e2", "id": m2, "body": {}}))
        .await;
    let err = alice_dev.next_op("error").await;
    assert_eq!(
        (err["code"].as_str(), err["cid"].as_str()),
        (Some("invalid"), Some("e2"))
    );
    let (_, history) = t.get("/users/bob/conversations/user/alice/messages", &bob).await;
    assert_eq!(history["entities"][1]["body"]["msg"], "typo here");
    assert!(history["entities"][1]["edited"].as_i64().is_some());

    // Reactions: counts per emoji and who, as events and in history.
    bob_dev.publish(json!({"op": "react", "id": m3, "emoji": "👍"})).await;
    let r = alice_dev.next_op("reaction").await;
    assert_eq!(
        (
            r["emoji"].as_str(),
            r["by"].as_str(),
            r["reactions"][0]["count"].as_i64()
        ),
        (Some("👍"), Some("bob"), Some(1))
    );
    assert_eq!(
        bob_dev.next_op("reaction").await["by"],
        "bob",
        "everyone who has the message is told"
    );
    alice_dev.publish(json!({"op": "react", "id": m3, "emoji": "👍"})).await;
    assert_eq!(
        bob_dev.next_op("reaction").await["reactions"][0]["users"],
        json!(["bob", "alice"])
    );
    alice_dev
        .publish(json!({"op": "react", "id": m3, "emoji": "👍", "action": "remove"}))
        .await;
    assert_eq!(bob_dev.next_op("reaction").await["reactions"][0]["count"], 1);
    bob_dev
        .publish(json!({"op": "react", "cid": "x", "id": m3, "emoji": "a b"}))
        .await;
    assert_eq!(bob_dev.next_op("error").await["code"], "invalid");
    let (_, history) = t.get("/users/alice/conversations/user/bob/messages", &alice).await;
    assert_eq!(
        history["entities"][2]["reactions"],
        json!([{"emoji": "👍", "count": 1, "users": ["bob"]}])
    );

    // Delete for me: gone from bob's history only; his sync keeps the place, marked hidden.
    bob_dev.publish(json!({"op": "delete", "cid": "d1", "id": m3})).await;
    assert_eq!(bob_dev.next_op("deleted").await["id"], m3.as_str());
    let (_, bobs) = t.get("/users/bob/conversations/user/alice/messages", &bob).await;
    assert_eq!(bobs["count"], 2);
    let (_, alices) = t.get("/users/alice/conversations/user/bob/messages", &alice).await;
    assert_eq!(alices["count"], 3);
    let (_, inbox) = t.get("/users/bob/inbox", &bob).await;
    let last = inbox["msgs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["hidden"].as_bool(), last["body"].is_null()), (Some(true), true));
    assert_eq!(
        t.delete(&format!("/users/bob/messages/{m1}"), &bob).await.0,
        200,
        "REST delete for me"
    );
    assert_eq!(t.delete("/users/bob/messages/nope", &bob).await.0, 404);

    // Too late to recall: a clear error; the app may still recall.
    assert_eq!(
        t.put("/settings", &t.app_token, json!({"recall_limit_secs": 0}))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    alice_dev.publish(json!({"op": "recall", "cid": "r2", "id": m2})).await;
    let err = alice_dev.next_op("error").await;
    assert_eq!(err["code"], "too_late", "{err}");
    assert_eq!(
        t.post(&format!("/messages/{m2}/recall"), Some(&alice), json!({}))
            .await
            .0,
        403
    );
    assert_eq!(
        t.post(&format!("/messages/{m2}/recall"), Some(&t.app_token), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(bob_dev.next_op("recalled").await["by"], "admin");

    // cmd: delivered, acked with seq 0, never stored or counted as unread.
    let before = t.server.store.count_messages(&app.id).await.unwrap();
    let unread = t.get("/users/bob/unread", &bob).await.1["data"]["total_unread"].clone();
    alice_dev.publish(json!({"op": "send", "cid": "c1", "chat": "user", "to": "bob", "type": "cmd", "body": {"action": "refresh"}})).await;
    let ack = alice_dev.next_op("ack").await;
    assert_eq!((ack["cid"].as_str(), ack["seq"].as_i64()), (Some("c1"), Some(0)));
    let cmd = bob_dev.next_op("msg").await;
    assert_eq!(
        (cmd["type"].as_str(), cmd["body"]["action"].as_str()),
        (Some("cmd"), Some("refresh"))
    );
    assert_eq!(t.server.store.count_messages(&app.id).await.unwrap(), before);
    assert_eq!(t.get("/users/bob/unread", &bob).await.1["data"]["total_unread"], unread);

    // custom: app-defined fields within a size limit.
    let big = json!({"op": "send", "cid": "k1", "chat": "user", "to": "bob", "type": "custom",
        "body": {"customEvent": "gift", "customExts": {"note": "x".repeat(5000)}}});
    alice_dev.publish(big).await;
    assert_eq!(alice_dev.next_op("error").await["code"], "message_too_large");
    let ok = json!({"op": "send", "cid": "k2", "chat": "user", "to": "bob", "type": "custom",
        "body": {"customEvent": "gift", "customExts": {"item": "rose"}}});
    alice_dev.publish(ok).await;
    assert_eq!(alice_dev.next_op("ack").await["cid"], "k2");
    assert_eq!(bob_dev.next_op("msg").await["body"]["customExts"]["item"], "rose");
}

async fn server_sent_messages_and_search(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol] = [t.user("alice").await, t.user("bob").await, t.user("carol").await];
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let mut bob_dev = t.device("bob", &bob, "b").await;

    let (status, body) = t
        .post(
            "/messages/users",
            Some(&t.app_token),
            json!({"from": "alice", "to": ["bob", "ghost"], "type": "txt", "body": {"msg": "hello from the backend"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["bob"].is_string(), "{body}");
    assert_eq!(body["data"]["ghost"]["error"], "unknown_recipient");
    let msg = bob_dev.next_op("msg").await;
    assert_eq!(
        (msg["from"].as_str(), msg["body"]["msg"].as_str()),
        (Some("alice"), Some("hello from the backend"))
    );
    assert!(msg["useq"].as_i64().is_some());
    // The sender's devices get their copy too.
    assert_eq!(alice_dev.next_op("msg").await["to"], "bob");

    // Without `from`: from the app itself, named `admin` as on the platform; and to a group
    // the sender is not in (the app may).
    let (status, _) = t
        .post(
            "/messages/users",
            Some(&t.app_token),
            json!({"to": ["bob"], "type": "txt", "body": {"msg": "maintenance tonight"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(bob_dev.next_op("msg").await["from"], "admin");
    let (_, created) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"name": "g", "owner": "bob", "members": ["carol"]}),
        )
        .await;
    let gid = created["data"]["groupid"].as_str().unwrap().to_string();
    let (status, body) = t
        .post(
            "/messages/chatgroups",
            Some(&t.app_token),
            json!({"from": "alice", "to": [gid], "type": "txt", "body": {"msg": "backend to group"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = bob_dev.next_op("msg").await;
    assert_eq!(
        (got["chat"].as_str(), got["body"]["msg"].as_str()),
        (Some("group"), Some("backend to group"))
    );

    // Validation.
    for (bad, code) in [
        (
            json!({"to": ["bob"], "type": "txt", "body": {"msg": "x"}, "routetype": "ROUTE_SOMETIMES"}),
            400,
        ),
        (
            json!({"to": ["bob"], "type": "loc", "body": {"lat": "north", "lng": "1", "addr": "x"}}),
            400,
        ),
        (
            json!({"from": "alice", "to": [], "type": "txt", "body": {"msg": "x"}}),
            400,
        ),
        (json!({"from": "alice", "to": ["bob"], "type": "txt", "body": {}}), 400),
        (json!({"from": "alice", "to": ["bob"], "type": "cmd", "body": {}}), 400),
        (
            json!({"from": "ghost", "to": ["bob"], "type": "txt", "body": {"msg": "x"}}),
            404,
        ),
    ] {
        assert_eq!(
            t.post("/messages/users", Some(&t.app_token), bad.clone()).await.0,
            code,
            "{bad}"
        );
    }
    assert_eq!(
        t.post(
            "/messages/users",
            Some(&alice),
            json!({"from": "alice", "to": ["bob"], "type": "txt", "body": {"msg": "x"}})
        )
        .await
        .0,
        403
    );
    assert_eq!(t.post("/messages/rooms", Some(&t.app_token), json!({})).await.0, 404);

    // Search: in the user's own conversations only, recalled messages excluded.
    alice_dev.send_text("s1", "bob", "the Backend release is out").await;
    let id = alice_dev.next_op("ack").await["id"].as_str().unwrap().to_string();
    let (status, found) = t.get("/users/bob/messages/search?q=backend", &bob).await;
    assert_eq!(status, 200, "{found}");
    let texts = msg_texts(&found["entities"]);
    assert!(
        texts.contains(&"the Backend release is out".to_string())
            && texts.contains(&"hello from the backend".to_string()),
        "{texts:?}"
    );
    let (_, carols) = t.get("/users/carol/messages/search?q=release", &carol).await;
    assert_eq!(carols["count"], 0, "carol found a message not hers: {carols}");
    assert_eq!(t.get("/users/bob/messages/search?q=release", &alice).await.0, 403);
    assert_eq!(t.get("/users/bob/messages/search?q=", &bob).await.0, 400);
    // `%` and `_` are characters, not wildcards.
    for q in ["%25", "_", "back%25"] {
        let (status, none) = t.get(&format!("/users/bob/messages/search?q={q}"), &bob).await;
        assert_eq!((status, none["count"].as_i64()), (200, Some(0)), "{q}: {none}");
    }
    alice_dev.publish(json!({"op": "recall", "id": id})).await;
    alice_dev.next_op("recalled").await;
    let (_, after) = t.get("/users/bob/messages/search?q=release", &bob).await;
    assert_eq!(after["count"], 0, "{after}");
}

on_both_backends!(
    receipts_unread_and_conversation_list,
    recall_edit_delete_react_and_cmd,
    server_sent_messages_and_search
);
