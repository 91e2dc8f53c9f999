//! Groups: REST management with roles, joining and invitations, and messages over MQTT
//! enforced by the bridge (members only, mutes, bans), with membership events.

mod common;

use std::time::Duration;

use common::{spawn_app, Backend};
use serde_json::{json, Value};

async fn group_management_and_roles(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol, dave, eve] = [
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
        t.user("dave").await,
        t.user("eve").await,
    ];
    let mut bob_dev = t.device("bob", &bob, "b").await;

    // Validation first.
    for (bad, status) in [
        (json!({"name": ""}), 400),
        (json!({"name": "x", "maxusers": 1}), 400),
        (json!({"name": "x", "members": ["ghost"]}), 404),
        (json!({"name": "x", "colour": 1}), 400),
        (json!({"name": "x", "owner": "bob"}), 403),
    ] {
        let (got, body) = t.post("/chatgroups", Some(&alice), bad.clone()).await;
        assert_eq!(got, status, "{bad} -> {body}");
    }

    // Alice creates an open public group with bob; bob hears he joined.
    let (status, body) = t
        .post(
            "/chatgroups",
            Some(&alice),
            json!({"groupname": "hikers", "desc": "weekend walks", "public": true, "maxusers": 10, "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let gid = body["data"]["groupid"].as_str().unwrap().to_string();
    let (_, shown) = t.get(&format!("/chatgroups/{gid}"), &alice).await;
    assert_eq!(
        (
            shown["data"][0]["owner"].as_str(),
            shown["data"][0]["affiliations_count"].as_i64()
        ),
        (Some("alice"), Some(2)),
        "{shown}"
    );
    let joined = bob_dev.next_event("joined").await;
    assert_eq!(
        (joined["id"].as_str(), joined["by"].as_str()),
        (Some(gid.as_str()), Some("alice"))
    );
    let g = |path: &str| format!("/chatgroups/{gid}{path}");

    // Anyone may join an open public group; members list shows roles.
    assert_eq!(t.post(&g("/users/carol"), Some(&carol), json!({})).await.0, 200);
    // As the platform lists them: `{"owner": name}` first, then `{"member": name}`.
    let (_, members) = t.get(&g("/users"), &bob).await;
    assert_eq!(
        members["data"],
        json!([{"owner": "alice"}, {"member": "bob"}, {"member": "carol"}]),
        "{members}"
    );
    assert_eq!(t.get("/users/carol/joined_chatgroups", &carol).await.1["count"], 1);
    assert_eq!(t.get(&g("/users"), &dave).await.0, 403, "outsider listed members");

    // Members may not moderate; admins may, but not the owner; only the owner appoints.
    assert_eq!(t.delete(&g("/users/carol"), &bob).await.0, 403);
    assert_eq!(
        t.post(&g("/admin"), Some(&bob), json!({"newadmin": "bob"})).await.0,
        403
    );
    assert_eq!(
        t.post(&g("/admin"), Some(&alice), json!({"newadmin": "bob"})).await.0,
        200
    );
    assert_eq!(bob_dev.next_event("role").await["role"], "admin");
    assert_eq!(t.get(&g("/admin"), &carol).await.1["data"], json!(["bob"]));
    assert_eq!(
        t.delete(&g("/users/alice"), &bob).await.0,
        403,
        "an admin removed the owner"
    );
    assert_eq!(t.delete(&g("/users/carol"), &bob).await.0, 200);
    assert_eq!(
        t.put(&g(""), &bob, json!({"desc": "weekday walks too"})).await.1["data"]["description"],
        true
    );
    assert_eq!(
        t.get(&g(""), &bob).await.1["data"][0]["description"],
        "weekday walks too"
    );
    assert_eq!(t.delete(&g(""), &bob).await.0, 403, "an admin dissolved the group");

    // Approval needed: dave asks, an admin approves.
    assert_eq!(t.put(&g(""), &alice, json!({"membersonly": true})).await.0, 200);
    let (status, body) = t.post(&g("/users/dave"), Some(&dave), json!({})).await;
    assert_eq!(
        (status, body["data"]["status"].as_str()),
        (202, Some("requested")),
        "{body}"
    );
    assert_eq!(bob_dev.next_event("join_request").await["applicant"], "dave");
    assert_eq!(t.get(&g("/join_requests"), &bob).await.1["data"], json!(["dave"]));
    assert_eq!(
        t.post(&g("/join_requests/dave/approve"), Some(&bob), json!({})).await.0,
        200
    );
    assert_eq!(
        t.post(&g("/join_requests/dave/approve"), Some(&bob), json!({})).await.0,
        404
    );

    // Private: only by invitation, accepted by the invitee.
    assert_eq!(t.put(&g(""), &alice, json!({"public": false})).await.0, 200);
    assert_eq!(t.post(&g("/users/eve"), Some(&eve), json!({})).await.0, 403);
    assert_eq!(
        t.post(&g("/invites"), Some(&dave), json!({"usernames": ["eve"]}))
            .await
            .0,
        403,
        "members may not invite"
    );
    assert_eq!(
        t.post(&g("/invites"), Some(&bob), json!({"usernames": ["eve"]}))
            .await
            .0,
        200
    );
    assert_eq!(t.post(&g("/invites/eve/accept"), Some(&dave), json!({})).await.0, 403);
    assert_eq!(t.post(&g("/invites/eve/accept"), Some(&eve), json!({})).await.0, 200);
    assert_eq!(t.get(&g(""), &eve).await.1["data"][0]["affiliations_count"], 4);
    assert_eq!(t.get(&g(""), &carol).await.0, 403, "outsider saw a private group");

    // Group blocklist: banned users are removed and cannot rejoin, even when invited.
    assert_eq!(
        t.post(&g("/blocks/users"), Some(&bob), json!({"usernames": ["eve"]}))
            .await
            .0,
        200
    );
    assert_eq!(t.get(&g("/blocks/users"), &bob).await.1["data"], json!(["eve"]));
    assert_eq!(
        t.post(&g("/invites"), Some(&bob), json!({"usernames": ["eve"]}))
            .await
            .0,
        403
    );
    assert_eq!(t.post(&g("/users/eve"), Some(&alice), json!({})).await.0, 403);
    assert_eq!(t.delete(&g("/blocks/users/eve"), &bob).await.0, 200);
    assert_eq!(t.post(&g("/users/eve"), Some(&alice), json!({})).await.0, 200);

    // Ownership moves to bob (`PUT /chatgroups/{id}` `{"newowner"}`, the owner only); the
    // old owner cannot dissolve, the new one can.
    assert_eq!(t.put(&g(""), &alice, json!({"newowner": "nobody"})).await.0, 400);
    assert_eq!(
        t.put(&g(""), &bob, json!({"newowner": "bob"})).await.0,
        403,
        "an admin took the group"
    );
    let (status, body) = t.put(&g(""), &alice, json!({"newowner": "bob"})).await;
    assert_eq!((status, &body["data"]), (200, &json!({"newowner": true})), "{body}");
    assert_eq!(bob_dev.next_event("role").await["role"], "owner");
    assert_eq!(t.delete(&g(""), &alice).await.0, 403);
    assert_eq!(
        t.delete(&g("/users/bob"), &bob).await.0,
        403,
        "the owner left without transferring"
    );
    assert_eq!(t.delete(&g(""), &bob).await.0, 200);
    assert_eq!(bob_dev.next_event("dissolved").await["id"], gid.as_str());
    assert_eq!(t.get(&g(""), &t.app_token).await.0, 404);
    let _ = dave;
}

/// Messages in a group: stored once with a per-group seq, in every member's inbox,
/// refused for outsiders, the muted and the banned.
async fn group_messages_over_mqtt(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol, dave] = [
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
        t.user("dave").await,
    ];
    let (_, body) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"name": "team", "owner": "alice", "members": ["bob", "carol"]}),
        )
        .await;
    let gid = body["data"]["groupid"].as_str().unwrap().to_string();
    let g = |path: &str| format!("/chatgroups/{gid}{path}");
    let mut phone = t.device("alice", &alice, "alice-phone").await;
    let mut laptop = t.device("alice", &alice, "alice-laptop").await;
    let mut bob_dev = t.device("bob", &bob, "b").await;
    let mut carol_dev = t.device("carol", &carol, "c").await;
    let mut dave_dev = t.device("dave", &dave, "d").await;

    phone.send_to("group", "g1", &gid, "hello team").await;
    let ack = phone.next_op("ack").await;
    assert_eq!(
        (ack["seq"].as_i64(), ack["conv"].as_str()),
        (Some(1), Some(format!("g:{gid}").as_str()))
    );
    for dev in [&mut bob_dev, &mut carol_dev] {
        let msg = dev.next_op("msg").await;
        assert_eq!(
            (msg["chat"].as_str(), msg["to"].as_str(), msg["from"].as_str()),
            (Some("group"), Some(gid.as_str()), Some("alice"))
        );
    }
    let echo = laptop.next_op("msg").await;
    assert_eq!(
        (echo["cid"].as_str(), echo["useq"].as_i64()),
        (Some("g1"), ack["useq"].as_i64())
    );
    bob_dev.send_to("group", "b1", &gid, "hi").await;
    assert_eq!(bob_dev.next_op("ack").await["seq"], 2);

    // Outsiders are refused and nothing reaches the members.
    dave_dev.send_to("group", "d1", &gid, "let me in").await;
    assert_eq!(dave_dev.next_op("error").await["code"], "not_member");
    dave_dev.send_to("group", "d2", "nosuchgroup", "?").await;
    assert_eq!(dave_dev.next_op("error").await["code"], "not_found");

    // Muted for a while: refused; unmuted: fine again.
    assert_eq!(
        t.post(
            &g("/mute"),
            Some(&alice),
            json!({"usernames": ["bob"], "mute_duration": 60000})
        )
        .await
        .0,
        200
    );
    assert!(bob_dev.next_event("muted").await["until"].as_i64().unwrap() > 0);
    bob_dev.send_to("group", "b2", &gid, "can I speak?").await;
    assert_eq!(bob_dev.next_op("error").await["code"], "muted");
    assert_eq!(t.get(&g("/mute"), &alice).await.1["count"], 1);
    assert_eq!(t.delete(&g("/mute/bob"), &alice).await.0, 200);
    bob_dev.send_to("group", "b3", &gid, "thanks").await;
    assert_eq!(bob_dev.next_op("ack").await["cid"], "b3");
    assert_eq!(
        t.post(
            &g("/mute"),
            Some(&bob),
            json!({"usernames": ["carol"], "mute_duration": 1000})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        t.post(
            &g("/mute"),
            Some(&alice),
            json!({"usernames": ["carol"], "mute_duration": 0})
        )
        .await
        .0,
        400
    );

    // Mute everyone: members are silenced, the owner is not.
    assert_eq!(
        t.post(&g("/ban"), Some(&carol), json!({})).await.0,
        403,
        "a member muted everyone"
    );
    let (status, body) = t.post(&g("/ban"), Some(&alice), json!({})).await;
    assert_eq!((status, &body["data"]), (200, &json!({"mute": true})), "{body}");
    carol_dev.send_to("group", "c1", &gid, "hm").await;
    assert_eq!(carol_dev.next_op("error").await["code"], "muted");
    phone.send_to("group", "g2", &gid, "owner speaking").await;
    assert_eq!(phone.next_op("ack").await["cid"], "g2");
    assert_eq!(t.delete(&g("/ban"), &alice).await.1["data"], json!({"mute": false}));

    // Announcement reaches members as an event.
    assert_eq!(
        t.post(
            &g("/announcement"),
            Some(&alice),
            json!({"announcement": "trip on Sunday"})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        carol_dev.next_event("announcement").await["announcement"],
        "trip on Sunday"
    );
    assert_eq!(
        t.get(&g("/announcement"), &carol).await.1["data"]["announcement"],
        "trip on Sunday"
    );
    assert_eq!(t.get(&g("/announcement"), &dave).await.0, 403, "an outsider read it");

    // Banned: removed, told, refused, and cannot rejoin.
    assert_eq!(
        t.post(&g("/blocks/users"), Some(&alice), json!({"usernames": ["carol"]}))
            .await
            .0,
        200
    );
    assert_eq!(carol_dev.next_event("banned").await["id"], gid.as_str());
    carol_dev.send_to("group", "c2", &gid, "still here?").await;
    assert_eq!(carol_dev.next_op("error").await["code"], "banned");
    assert_eq!(t.post(&g("/users/carol"), Some(&carol), json!({})).await.0, 403);

    // Typing in a group reaches the other members.
    phone.publish(json!({"op": "typing", "chat": "group", "to": gid})).await;
    let _ = phone.collect(Duration::from_millis(200)).await; // lets the client send it
    let typing = bob_dev.next_op("typing").await;
    assert_eq!(
        (typing["from"].as_str(), typing["to"].as_str()),
        (Some("alice"), Some(gid.as_str()))
    );

    // Members catch up on group messages like on any other: their inbox has them.
    let (_, inbox) = t.get("/users/bob/inbox?after=0", &bob).await;
    let texts: Vec<&str> = inbox["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"]["msg"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello team", "hi", "thanks", "owner speaking"]);
    let app = t.server.store.find_app("demo", "chat").await.unwrap();
    assert_eq!(
        t.server.store.count_messages(&app.id).await.unwrap(),
        4,
        "a refused message was stored"
    );
    let refused_leaks = dave_dev.collect(Duration::from_millis(200)).await;
    assert!(refused_leaks.iter().all(|m| m["op"] != "msg"), "{refused_leaks:?}");
}

/// A 60-member group: every member's inbox gets the message, and online members get it live.
async fn bigger_group_fan_out(backend: Backend) {
    let t = spawn_app(backend).await;
    let users: Vec<Value> = (0..60)
        .map(|i| json!({"username": format!("m{i}"), "password": "pw"}))
        .collect();
    assert_eq!(t.post("/users", Some(&t.app_token), Value::Array(users)).await.0, 200);
    let members: Vec<String> = (1..60).map(|i| format!("m{i}")).collect();
    let (status, body) = t
        .post(
            "/chatgroups",
            Some(&t.app_token),
            json!({"name": "big", "owner": "m0", "maxusers": 100, "members": members}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let gid = body["data"]["groupid"].as_str().unwrap().to_string();
    let mut online = Vec::new();
    for i in [1, 30, 59] {
        let token = t.user_token(&format!("m{i}")).await;
        online.push(t.device(&format!("m{i}"), &token, "d").await);
    }
    let token = t.user_token("m0").await;
    let mut sender = t.device("m0", &token, "d").await;
    sender.send_to("group", "x", &gid, "to all 60").await;
    assert_eq!(sender.next_op("ack").await["cid"], "x");
    for dev in &mut online {
        assert_eq!(dev.next_op("msg").await["body"]["msg"], "to all 60");
    }
    for i in 0..60 {
        let (_, inbox) = t.get(&format!("/users/m{i}/inbox"), &t.app_token).await;
        assert_eq!(inbox["msgs"].as_array().unwrap().len(), 1, "m{i} has no inbox entry");
    }
}

/// A decision that cannot be carried out (the group is full) loses nothing: the join
/// request or the invitation stays for later; an invitation list with a blocked user in it
/// invites nobody.
async fn refused_decisions_keep_requests_and_invitations(backend: Backend) {
    let t = spawn_app(backend).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let dave = t.user("dave").await;
    let eve = t.user("eve").await;
    let (status, body) = t
        .post(
            "/chatgroups",
            Some(&alice),
            json!({"groupname": "pair", "public": true, "membersonly": true, "maxusers": 2, "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["groupid"].as_str().unwrap().to_string();
    let g = |path: &str| format!("/chatgroups/{id}{path}");
    assert_eq!(t.post(&g("/users/dave"), Some(&dave), json!({})).await.0, 202);
    let (status, body) = t.post(&g("/join_requests/dave/approve"), Some(&alice), json!({})).await;
    assert_eq!(status, 403, "the group is full: {body}");
    assert_eq!(t.get(&g("/join_requests"), &alice).await.1["data"], json!(["dave"]));
    assert_eq!(
        t.post(&g("/invites"), Some(&alice), json!({"usernames": ["eve"]}))
            .await
            .0,
        200
    );
    assert_eq!(t.post(&g("/invites/eve/accept"), Some(&eve), json!({})).await.0, 403);
    // Room again: the kept request and invitation go through.
    assert_eq!(t.delete(&g("/users/bob"), &bob).await.0, 200);
    assert_eq!(
        t.post(&g("/join_requests/dave/approve"), Some(&alice), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(t.get(&g("/join_requests"), &alice).await.1["data"], json!([]));
    assert_eq!(t.put(&g(""), &alice, json!({"maxusers": 3})).await.0, 200);
    assert_eq!(t.post(&g("/invites/eve/accept"), Some(&eve), json!({})).await.0, 200);

    // One blocked name in an invitation list: nobody is invited.
    let carol = t.user("carol").await;
    assert_eq!(t.put(&g(""), &alice, json!({"maxusers": 10})).await.0, 200);
    let (status, body) = t
        .post(&g("/blocks/users"), Some(&alice), json!({"usernames": ["bob"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = t
        .post(&g("/invites"), Some(&alice), json!({"usernames": ["carol", "bob"]}))
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        t.post(&g("/invites/carol/accept"), Some(&carol), json!({})).await.0,
        404
    );
}

on_both_backends!(
    group_management_and_roles,
    group_messages_over_mqtt,
    bigger_group_fan_out,
    refused_decisions_keep_requests_and_invitations,
);
