//! Chatrooms: live delivery by the broker to subscribed members only, a bounded recent
//! history, joining and leaving over MQTT and REST, moderation, and kicked members losing
//! the room even while still subscribed.

mod common;

use std::time::Duration;

use common::{spawn_app, Backend};
use serde_json::json;

async fn chatrooms(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol, dave] = [
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
        t.user("dave").await,
    ];
    assert_eq!(
        t.put("/settings", &t.app_token, json!({"room_history": 3})).await.0,
        200
    );
    let (status, body) = t
        .post(
            "/chatrooms",
            Some(&t.app_token),
            json!({"name": "lobby", "description": "say hi", "owner": "alice", "maxusers": 100}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room = body["data"]["id"].as_str().unwrap().to_string();
    let topic = format!("chat/demo/chat/room/{room}");
    let r = |path: &str| format!("/chatrooms/{room}{path}");
    assert_eq!(t.get("/chatrooms", &bob).await.1["count"], 1, "users list chatrooms");

    let mut alice_dev = t.device("alice", &alice, "a").await;
    let mut bob_dev = t.device("bob", &bob, "b").await;
    let mut carol_dev = t.device("carol", &carol, "c").await;
    let mut dave_dev = t.device("dave", &dave, "d").await;
    assert!(alice_dev.subscribe(&topic).await);

    // Not a member: the gate refuses the subscription. Join over MQTT, then subscribe.
    assert!(!bob_dev.subscribe(&topic).await);
    bob_dev.publish(json!({"op": "join", "cid": "j1", "room": room})).await;
    let joined = bob_dev.next_op("joined").await;
    assert_eq!(
        (joined["room"].as_str(), joined["cid"].as_str()),
        (Some(room.as_str()), Some("j1"))
    );
    assert!(bob_dev.subscribe(&topic).await);
    // Join over REST too.
    assert_eq!(t.post(&r("/users/carol"), Some(&carol), json!({})).await.0, 200);
    assert!(carol_dev.subscribe(&topic).await);
    assert!(!dave_dev.subscribe(&topic).await);
    assert_eq!(t.get("/users/bob/joined_chatrooms", &bob).await.1["count"], 1);

    // A message goes to every subscribed member, through the broker, once.
    alice_dev.send_to("room", "m1", &room, "welcome").await;
    assert_eq!(alice_dev.next_op("ack").await["seq"], 1);
    for dev in [&mut bob_dev, &mut carol_dev] {
        let msg = dev.next_op("msg").await;
        assert_eq!(
            (msg["chat"].as_str(), msg["to"].as_str(), msg["body"]["msg"].as_str()),
            (Some("room"), Some(room.as_str()), Some("welcome"))
        );
    }
    // Outsiders cannot send.
    dave_dev.send_to("room", "d1", &room, "hey").await;
    assert_eq!(dave_dev.next_op("error").await["code"], "not_member");

    // Bounded history: the last 3 of 5.
    for i in 2..=5 {
        alice_dev
            .send_to("room", &format!("m{i}"), &room, &format!("n{i}"))
            .await;
        alice_dev.next_op("ack").await;
    }
    let (status, history) = t.get(&r("/messages"), &bob).await;
    assert_eq!(status, 200);
    let texts: Vec<&str> = history["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"]["msg"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["n3", "n4", "n5"]);
    assert_eq!(t.get(&r("/messages"), &dave).await.0, 403);
    // No offline delivery: room messages are not in anyone's inbox.
    assert_eq!(t.get("/users/bob/inbox", &bob).await.1["msgs"], json!([]));

    // Muted: refused.
    assert_eq!(
        t.post(
            &r("/mute"),
            Some(&alice),
            json!({"usernames": ["carol"], "mute_duration": -1})
        )
        .await
        .0,
        200
    );
    carol_dev.send_to("room", "c1", &room, "hello?").await;
    assert_eq!(carol_dev.next_op("error").await["code"], "muted");

    // Kicked: told, and the room stops reaching them although they are still subscribed.
    let _ = bob_dev.collect(Duration::from_millis(100)).await;
    assert_eq!(t.delete(&r("/users/bob"), &alice).await.0, 200);
    assert_eq!(bob_dev.next_event("removed").await["id"], room.as_str());
    alice_dev.send_to("room", "m6", &room, "after the kick").await;
    alice_dev.next_op("ack").await;
    assert_eq!(carol_dev.next_op("msg").await["body"]["msg"], "after the kick");
    let leaked = bob_dev.collect(Duration::from_millis(500)).await;
    assert!(
        leaked.iter().all(|m| m["op"] != "msg"),
        "a kicked member still got room messages: {leaked:?}"
    );
    bob_dev.send_to("room", "b1", &room, "I'm back?").await;
    assert_eq!(bob_dev.next_op("error").await["code"], "not_member");

    // Leaving over MQTT works the same way.
    carol_dev.publish(json!({"op": "leave", "room": room})).await;
    assert_eq!(carol_dev.next_op("left").await["room"], room.as_str());
    alice_dev.send_to("room", "m7", &room, "bye carol").await;
    alice_dev.next_op("ack").await;
    let leaked = carol_dev.collect(Duration::from_millis(500)).await;
    assert!(leaked.iter().all(|m| m["op"] != "msg"), "{leaked:?}");

    // Banned users cannot join again, over MQTT or REST.
    assert_eq!(
        t.post(&r("/blocks/users"), Some(&alice), json!({"usernames": ["dave"]}))
            .await
            .0,
        200
    );
    dave_dev.publish(json!({"op": "join", "room": room})).await;
    let err = dave_dev.next_op("error").await;
    assert_eq!(err["code"], "forbidden", "{err}");
    assert_eq!(t.post(&r("/users/dave"), Some(&dave), json!({})).await.0, 403);
    dave_dev.publish(json!({"op": "join", "room": "nosuchroom"})).await;
    assert_eq!(dave_dev.next_op("error").await["code"], "not_found");

    // Admins, updates, and dissolving.
    assert_eq!(
        t.post(&r("/admin"), Some(&alice), json!({"newadmin": "carol"})).await.0,
        404,
        "carol left; not a member"
    );
    // The platform reports a chatroom's new name as `groupname`.
    assert_eq!(
        t.put(&r(""), &alice, json!({"name": "main lobby"})).await.1["data"]["groupname"],
        true
    );
    assert_eq!(t.get(&r(""), &bob).await.1["data"][0]["name"], "main lobby");
    assert_eq!(t.put(&r(""), &bob, json!({"name": "mine"})).await.0, 403);
    assert_eq!(t.delete(&r(""), &alice).await.0, 200);
    assert_eq!(t.get(&r(""), &alice).await.0, 404);
}

on_both_backends!(chatrooms);
