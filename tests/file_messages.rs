//! Files in messages and what follows from them: recall keeps files other messages share,
//! orphans are swept, self-destructing messages take their files along, avatars, and who may
//! read files sent to chatrooms and groups. On SQLite with the directory store and on
//! PostgreSQL with S3 (see `files.rs`).

mod common;

use std::time::Duration;

use common::files::{files_app as app, png};
use common::Backend;
use serde_json::{json, Value};

async fn recall_keeps_shared_files_and_orphans_are_swept(backend: Backend) {
    let t = app(backend, |c| {
        c.files.orphan_after_secs = 2;
        c.files.sweep_interval_secs = 1;
    })
    .await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let shared = t.uploaded(&alice, "shared.pdf", b"%PDF-1.7 shared".to_vec()).await;
    let lonely = t.uploaded(&alice, "lonely.pdf", b"%PDF-1.7 lonely".to_vec()).await;
    let mut alice_dev = t.device("alice", &alice, "alice-phone").await;
    let _bob_dev = t.device("bob", &bob, "bob-phone").await;
    let mut ids = Vec::new();
    for cid in ["m1", "m2"] {
        alice_dev
            .publish(json!({"op": "send", "cid": cid, "chat": "user", "to": "bob", "type": "file", "body": {"url": shared["url"]}}))
            .await;
        ids.push(alice_dev.next_op("ack").await["id"].as_str().unwrap().to_string());
    }
    let (status, body) = t
        .post(&format!("/messages/{}/recall", ids[0]), Some(&t.app_token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let shared_url = shared["url"].as_str().unwrap();
    assert_eq!(t.fetch(shared_url, Some(&bob), &[]).await.0, 200, "still in m2");
    assert_eq!(
        t.fetch(lonely["url"].as_str().unwrap(), Some(&alice), &[]).await.0,
        404,
        "never referred to: swept"
    );
    let (status, body) = t
        .post(&format!("/messages/{}/recall", ids[1]), Some(&t.app_token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut gone = false;
    for _ in 0..60 {
        if t.fetch(shared_url, Some(&alice), &[]).await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "a file nothing refers to is removed");
}

async fn self_destructing_messages(backend: Backend) {
    let t = app(backend, |_| {}).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut alice_dev = t.device("alice", &alice, "alice-phone").await;
    let mut bob_dev = t.device("bob", &bob, "bob-phone").await;

    // Destroyed a second after bob reads it, not before.
    alice_dev
        .publish(
            json!({"op": "send", "cid": "s1", "chat": "user", "to": "bob", "type": "txt",
            "body": {"msg": "burn after reading"}, "destroy": {"after": 1, "from": "read"}}),
        )
        .await;
    let ack = alice_dev.next_op("ack").await;
    let msg = bob_dev.next_op("msg").await;
    assert_eq!(msg["destroy"], json!({"after": 1, "from": "read"}));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, body) = t.get("/users/bob/conversations/user/alice/messages", &bob).await;
    assert_eq!(body["entities"][0]["body"]["msg"], "burn after reading", "unread: kept");
    bob_dev
        .publish(json!({"op": "read", "conv": ack["conv"], "seq": ack["seq"]}))
        .await;
    let destroyed = bob_dev.next_op("destroyed").await;
    assert_eq!(destroyed["id"], ack["id"]);
    assert_eq!(alice_dev.next_op("destroyed").await["id"], ack["id"]);
    let (_, body) = t.get("/users/alice/conversations/user/bob/messages", &alice).await;
    assert_eq!(body["entities"][0]["destroyed"], true, "{body}");
    assert_eq!(body["entities"][0]["body"], Value::Null);

    // With a file, destroyed after sending: the file goes too.
    let photo = t.uploaded(&alice, "p.png", png(64, 64)).await;
    let url = photo["url"].as_str().unwrap();
    alice_dev
        .publish(
            json!({"op": "send", "cid": "s2", "chat": "user", "to": "bob", "type": "img",
            "body": {"url": url}, "destroy": {"after": 1, "from": "sent"}}),
        )
        .await;
    let ack = alice_dev.next_op("ack").await;
    assert_eq!(t.fetch(url, Some(&bob), &[]).await.0, 200);
    let destroyed = bob_dev.next_op("destroyed").await;
    assert_eq!(destroyed["id"], ack["id"]);
    assert_eq!(t.fetch(url, Some(&alice), &[]).await.0, 404);
    assert_eq!(
        t.fetch(photo["thumbnail"].as_str().unwrap(), Some(&alice), &[]).await.0,
        404
    );

    // The app's backend may send one too.
    let (status, body) = t
        .post(
            "/messages/users",
            Some(&t.app_token),
            json!({"from": "alice", "to": ["bob"], "type": "txt", "body": {"msg": "from the backend"},
                "destroy": {"after": 1, "from": "sent"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bob_dev.next_op("msg").await["destroy"]["from"], "sent");
    bob_dev.next_op("destroyed").await;
    let (status, body) = t
        .post(
            "/messages/chatgroups",
            Some(&t.app_token),
            json!({"from": "alice", "to": ["g1"], "type": "txt", "body": {"msg": "x"},
                "destroy": {"after": 1, "from": "read"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("destroy.from"),
        "{body}"
    );

    // What cannot self-destruct is refused, naming why.
    for (cid, chat, destroy) in [
        ("b1", "group", json!({"after": 5, "from": "read"})),
        ("b2", "room", json!({"after": 5, "from": "sent"})),
        ("b3", "user", json!({"after": 0, "from": "sent"})),
        ("b4", "user", json!({"after": 5, "from": "later"})),
    ] {
        alice_dev
            .publish(
                json!({"op": "send", "cid": cid, "chat": chat, "to": "bob", "type": "txt",
                "body": {"msg": "x"}, "destroy": destroy}),
            )
            .await;
        let error = alice_dev.next_op("error").await;
        assert_eq!(
            (error["cid"].as_str(), error["code"].as_str()),
            (Some(cid), Some("invalid")),
            "{error}"
        );
    }
}

async fn avatars(backend: Backend) {
    let t = app(backend, |_| {}).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let face = t.uploaded(&alice, "me.png", png(500, 500)).await;
    let (status, body) = t.put("/users/alice", &alice, json!({"avatar": face["url"]})).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = t.get("/users/alice", &t.app_token).await;
    let user = &body["entities"][0];
    assert_eq!(user["avatar"], face["url"]);
    assert_eq!(user["avatar_thumbnail"], face["thumbnail"]);
    // Any user of the app may see an avatar, and its thumbnail.
    assert_eq!(t.fetch(face["url"].as_str().unwrap(), Some(&bob), &[]).await.0, 200);
    assert_eq!(
        t.fetch(face["thumbnail"].as_str().unwrap(), Some(&bob), &[]).await.0,
        200
    );

    // Not a file that is not an image, nor another user's private file.
    let text = t.uploaded(&alice, "a.txt", b"words".to_vec()).await;
    let (status, body) = t.put("/users/alice", &alice, json!({"avatar": text["url"]})).await;
    assert_eq!(status, 400, "{body}");
    let private = t.uploaded(&alice, "private.png", png(10, 10)).await;
    let (status, body) = t.put("/users/bob", &bob, json!({"avatar": private["url"]})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("no chatfile"),
        "{body}"
    );
    let (status, _) = t
        .put("/users/bob", &bob, json!({"avatar": "https://evil.example/a.png"}))
        .await;
    assert_eq!(status, 400);
    // Removed with "".
    let (status, body) = t.put("/users/alice", &alice, json!({"avatar": ""})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["entities"][0].get("avatar").is_none(), "{body}");
}

/// Files sent to a chatroom are readable by its members, and to a group by its members; a
/// chatroom's file goes once its message has left the room's history.
async fn files_in_rooms_and_groups(backend: Backend) {
    let t = app(backend, |c| {
        c.files.orphan_after_secs = 1;
        c.files.sweep_interval_secs = 1;
    })
    .await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let carol = t.user("carol").await;
    let (status, body) = t
        .post(
            "/chatrooms",
            Some(&t.app_token),
            json!({"name": "lobby", "owner": "alice", "maxusers": 10}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room = body["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        t.post(&format!("/chatrooms/{room}/users/bob"), Some(&bob), json!({}))
            .await
            .0,
        200
    );
    let (status, body) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"groupname": "team", "owner": "alice", "members": ["carol"], "maxusers": 10}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let group = body["data"]["groupid"].as_str().unwrap().to_string();

    let mut alice_dev = t.device("alice", &alice, "alice-phone").await;
    let in_room = t.uploaded(&alice, "room.pdf", b"%PDF-1.7 room".to_vec()).await;
    let in_group = t.uploaded(&alice, "group.pdf", b"%PDF-1.7 group".to_vec()).await;
    for (cid, chat, to, file) in [("r1", "room", &room, &in_room), ("g1", "group", &group, &in_group)] {
        alice_dev
            .publish(
                json!({"op": "send", "cid": cid, "chat": chat, "to": to, "type": "file", "body": {"url": file["url"]}}),
            )
            .await;
        assert_eq!(alice_dev.next_op("ack").await["cid"], cid);
    }
    let read = |file: &Value| file["url"].as_str().unwrap().to_string();
    assert_eq!(
        t.fetch(&read(&in_room), Some(&bob), &[]).await.0,
        200,
        "a member of the room"
    );
    assert_eq!(
        t.fetch(&read(&in_room), Some(&carol), &[]).await.0,
        403,
        "not in the room"
    );
    assert_eq!(
        t.fetch(&read(&in_group), Some(&carol), &[]).await.0,
        200,
        "a member of the group"
    );
    assert_eq!(
        t.fetch(&read(&in_group), Some(&bob), &[]).await.0,
        403,
        "not in the group"
    );

    // Past a sweep, both are still referred to and kept.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(t.fetch(&read(&in_room), Some(&alice), &[]).await.0, 200);
    // The room keeps one message: the next pushes the file's message out of its history.
    t.settings(json!({"room_history": 1})).await;
    alice_dev.send_to("room", "r2", &room, "scrolling on").await;
    assert_eq!(alice_dev.next_op("ack").await["cid"], "r2");
    let mut gone = false;
    for _ in 0..50 {
        if t.fetch(&read(&in_room), Some(&alice), &[]).await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "a room's file goes when its message leaves the history");
    assert_eq!(
        t.fetch(&read(&in_group), Some(&alice), &[]).await.0,
        200,
        "the group's stays"
    );
}

on_both_backends!(
    recall_keeps_shared_files_and_orphans_are_swept,
    self_destructing_messages,
    avatars,
    files_in_rooms_and_groups,
);
