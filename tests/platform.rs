//! The routes a backend written for the Agora Chat (Easemob) REST API expects, beyond the
//! shapes the conformance suite checks: what they do over real sockets (account
//! administration reaching MQTT devices, messages to chatrooms and `cmd`s from the backend,
//! recall and rewrite reaching the holders, the hourly export), and what each refuses to a
//! caller that is not the app.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{spawn_app, try_device_on, Backend};
use serde_json::{json, Value};

/// Password, deactivation, status, offline counts, disconnect and batch delete; a user
/// token may use none of the app's account routes on another user.
async fn account_administration(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob] = [t.user("alice").await, t.user("bob").await];
    let app = t.app_token.clone();
    let mut alice_dev = t.device("alice", &alice, "alice-phone").await;

    // Status, one and a batch (unknown names are offline, as on the platform).
    assert_eq!(
        t.get("/users/alice/status", &app).await.1["data"],
        json!({"alice": "online"})
    );
    assert_eq!(
        t.get("/users/bob/status", &app).await.1["data"],
        json!({"bob": "offline"})
    );
    let (status, body) = t
        .post(
            "/users/batch/status",
            Some(&app),
            json!({"usernames": ["alice", "bob", "ghost"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!([{"alice": "online"}, {"bob": "offline"}, {"ghost": "offline"}])
    );
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    assert_eq!(
        t.post("/users/batch/status", Some(&app), json!({"usernames": many}))
            .await
            .0,
        400
    );
    assert_eq!(t.get("/users/ghost/status", &app).await.0, 404);

    // Offline messages: what bob has not read; the delivery state of one of them.
    for (cid, text) in [("c1", "one"), ("c2", "two")] {
        alice_dev.send_text(cid, "bob", text).await;
    }
    let first = alice_dev.next_op("ack").await;
    alice_dev.next_op("ack").await;
    assert_eq!(
        t.get("/users/bob/offline_msg_count", &app).await.1["data"],
        json!({"bob": 2})
    );
    let id = first["id"].as_str().unwrap();
    let state = |user: &'static str, id: String| {
        let t = &t;
        let app = app.clone();
        async move { t.get(&format!("/users/{user}/offline_msg_status/{id}"), &app).await.1["data"][&id].clone() }
    };
    assert_eq!(state("bob", id.to_string()).await, "undelivered");
    let bob_dev = t.device("bob", &bob, "bob-phone").await;
    bob_dev
        .publish(json!({"op": "delivered", "conv": first["conv"], "seq": first["seq"]}))
        .await;
    let mut delivered = Value::Null;
    for _ in 0..50 {
        delivered = state("bob", id.to_string()).await;
        if delivered == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(delivered, "delivered");
    assert_eq!(state("bob", "no-such-message".into()).await, "undelivered");

    // A user token may not administer another user (nor read the app's views).
    for (method, path, body) in [
        ("PUT", "/users/alice/password", json!({"newpassword": "mine now"})),
        ("POST", "/users/alice/deactivate", json!({})),
        ("POST", "/users/alice/activate", json!({})),
        ("GET", "/users/alice/status", json!(null)),
        ("GET", "/users/alice/offline_msg_count", json!(null)),
        ("GET", &format!("/users/alice/offline_msg_status/{id}"), json!(null)),
        ("POST", "/users/batch/status", json!({"usernames": ["alice"]})),
        ("GET", "/users/alice/disconnect", json!(null)),
        ("DELETE", "/users?limit=1", json!(null)),
    ] {
        let mut req = t.http.request(method.parse().unwrap(), t.url(path)).bearer_auth(&bob);
        if !body.is_null() {
            req = req.json(&body);
        }
        let (status, answer) = common::into_json(req.send().await.unwrap()).await;
        assert_eq!(status, 403, "{method} {path} with bob's token: {answer}");
        assert_eq!(answer["error"], "forbidden_op", "{answer}");
    }

    // A new password revokes every token and closes the devices.
    let (status, body) = t
        .put("/users/alice/password", &app, json!({"newpassword": "s3cret"}))
        .await;
    assert_eq!(
        (status, body["action"].as_str()),
        (200, Some("set user password")),
        "{body}"
    );
    assert!(
        alice_dev.closed_within(Duration::from_secs(5)).await,
        "alice's device stayed"
    );
    assert_eq!(t.get("/users/alice", &alice).await.0, 401, "an old token still works");
    let login = |password: &str| json!({"grant_type": "password", "username": "alice", "password": password});
    assert_eq!(t.post("/token", None, login("pw")).await.0, 400);
    let alice = t.token(login("s3cret")).await;
    // A user may change their own.
    assert_eq!(
        t.put("/users/bob/password", &bob, json!({"newpassword": "b0b"}))
            .await
            .0,
        200
    );
    assert_eq!(
        t.put("/users/bob/password", &app, json!({"newpassword": ""})).await.0,
        400
    );

    // Deactivated: tokens revoked, devices closed, no new token by password or by the app.
    let mut alice_dev = t.device("alice", &alice, "alice-phone").await;
    let (status, body) = t.post("/users/alice/deactivate", Some(&app), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entities"][0]["activated"], false, "{body}");
    assert!(alice_dev.closed_within(Duration::from_secs(5)).await);
    assert!(
        try_device_on(t.mqtt_port(), &t.org, &t.app, "alice", &alice, "alice-phone")
            .await
            .is_err(),
        "a deactivated user connected"
    );
    assert_eq!(t.post("/token", None, login("s3cret")).await.0, 403);
    let inherit = json!({"grant_type": "inherit", "username": "alice"});
    assert_eq!(t.post("/token", Some(&app), inherit.clone()).await.0, 403);
    assert_eq!(t.get("/users/alice", &app).await.1["entities"][0]["activated"], false);
    let (status, body) = t.post("/users/alice/activate", Some(&app), json!({})).await;
    assert_eq!(
        (status, body["action"].as_str()),
        (200, Some("activate user")),
        "{body}"
    );
    let alice = t.token(login("s3cret")).await;

    // Disconnect: the devices go, the token stays good.
    let mut alice_dev = t.device("alice", &alice, "alice-phone").await;
    let (status, body) = t.get("/users/alice/disconnect", &app).await;
    assert_eq!((status, &body["data"]), (200, &json!({"result": true})), "{body}");
    assert!(alice_dev.closed_within(Duration::from_secs(5)).await);
    assert_eq!(t.get("/users/alice", &alice).await.0, 200);

    // Batch delete: the oldest first, within 1 to 100.
    for bad in ["0", "101", "x"] {
        assert_eq!(t.delete(&format!("/users?limit={bad}"), &app).await.0, 400, "{bad}");
    }
    t.user("carol").await;
    let (status, body) = t.delete("/users?limit=2", &app).await;
    assert_eq!(status, 200, "{body}");
    let gone: Vec<&str> = body["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(gone, ["alice", "bob"]);
    assert_eq!(t.get("/users/alice", &app).await.0, 404);
    assert_eq!(t.get("/users/carol", &app).await.0, 200);

    // `inherit` may create the user, without a password.
    let (status, body) = t
        .post(
            "/token",
            Some(&app),
            json!({"grant_type": "inherit", "username": "dora", "autoCreateUser": true, "ttl": "600"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["user"]["username"].as_str(), body["expires_in"].as_i64()),
        (Some("dora"), Some(600))
    );
}

/// Messages from the backend: to chatrooms, `cmd`s, locations with string coordinates,
/// online-only routing; recall, rewrite, deleting a conversation, the hourly export.
async fn messages_from_the_backend(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol] = [t.user("alice").await, t.user("bob").await, t.user("carol").await];
    let app = t.app_token.clone();
    let app_id = t.server.store.find_app(&t.org, &t.app).await.unwrap().id;
    let count = || {
        let store = t.server.store.clone();
        let app_id = app_id.clone();
        async move { store.count_messages(&app_id).await.unwrap() }
    };
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let mut bob_dev = t.device("bob", &bob, "b").await;

    // To a chatroom: its present subscribers get it.
    let (_, room) = t
        .post(
            "/chatrooms",
            Some(&app),
            json!({"name": "lobby", "owner": "alice", "members": ["carol"]}),
        )
        .await;
    let room = room["data"]["id"].as_str().unwrap().to_string();
    let mut carol_dev = t.device("carol", &carol, "c").await;
    assert!(
        carol_dev
            .subscribe(&format!("chat/{}/{}/room/{room}", t.org, t.app))
            .await
    );
    let (status, body) = t
        .post(
            "/messages/chatrooms",
            Some(&app),
            json!({"from": "alice", "to": [room], "type": "txt", "body": {"msg": "welcome"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"][&room].is_string(), "{body}");
    let got = carol_dev.next_op("msg").await;
    assert_eq!(
        (got["chat"].as_str(), got["body"]["msg"].as_str()),
        (Some("room"), Some("welcome"))
    );

    // A cmd: relayed to bob's device, stored nowhere.
    let before = count().await;
    let (status, body) = t
        .post(
            "/messages/users",
            Some(&app),
            json!({"to": ["bob"], "type": "cmd", "body": {"action": "refresh"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let cmd = bob_dev.next_op("msg").await;
    assert_eq!(
        (cmd["type"].as_str(), cmd["from"].as_str()),
        (Some("cmd"), Some("admin"))
    );
    assert_eq!(count().await, before);

    // A location as the platform sends it: coordinates as strings, kept as numbers.
    let (status, body) = t
        .post(
            "/messages/users",
            Some(&app),
            json!({"from": "alice", "to": ["bob"], "type": "loc",
                   "body": {"lat": "39.966", "lng": "116.322", "addr": "Beijing"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let loc = bob_dev.next_op("msg").await;
    assert_eq!(
        (loc["body"]["lat"].as_f64(), loc["body"]["lng"].as_f64()),
        (Some(39.966), Some(116.322))
    );

    // Online only: carol is offline now, so nothing is kept for her; bob is online.
    drop(carol_dev);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = count().await;
    let (status, body) = t
        .post(
            "/messages/users",
            Some(&app),
            json!({"from": "alice", "to": ["carol", "bob"], "type": "txt", "body": {"msg": "now or never"},
                   "routetype": "ROUTE_ONLINE", "sync_device": true, "roam_ignore_users": []}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["data"]["carol"].is_string() && body["data"]["bob"].is_string(),
        "{body}"
    );
    assert_eq!(bob_dev.next_op("msg").await["body"]["msg"], "now or never");
    assert_eq!(count().await, before + 1, "only bob's copy is kept");

    // Recall by the platform's route: everyone who has it hears; a second time it is gone.
    alice_dev.send_text("r1", "bob", "oops").await;
    let sent = alice_dev.next_op("ack").await;
    let id = sent["id"].as_str().unwrap().to_string();
    bob_dev.next_op("msg").await;
    let recall = json!({"msg_id": id, "to": "bob", "from": "alice", "chat_type": "chat", "force": true});
    assert_eq!(
        t.post("/messages/msg_recall", Some(&alice), recall.clone()).await.0,
        403
    );
    let mismatch = json!({"msg_id": id, "to": "carol", "chat_type": "chat"});
    assert_eq!(t.post("/messages/msg_recall", Some(&app), mismatch).await.0, 400);
    let (status, body) = t.post("/messages/msg_recall", Some(&app), recall.clone()).await;
    assert_eq!(
        (status, body["data"]["recalled"].as_str()),
        (200, Some("yes")),
        "{body}"
    );
    assert_eq!(bob_dev.next_op("recalled").await["id"], id.as_str());
    let (status, body) = t.post("/messages/msg_recall", Some(&app), recall).await;
    assert_eq!(
        (status, body["msgs"][0]["recalled"].as_str()),
        (200, Some("not_found msg")),
        "{body}"
    );

    // Rewrite: a text stays a text; holders hear of it.
    alice_dev.send_text("w1", "bob", "teh plan").await;
    let id = alice_dev.next_op("ack").await["id"].as_str().unwrap().to_string();
    bob_dev.next_op("msg").await;
    let path = format!("/messages/rewrite/{id}");
    let rewrite = json!({"user": "alice", "new_msg": {"type": "txt", "msg": "the plan"}, "new_ext": {"k": "v"}});
    assert_eq!(
        t.put(&path, &alice, rewrite.clone()).await.0,
        403,
        "a user rewrote through the app's route"
    );
    let as_custom = json!({"new_msg": {"type": "custom", "customEvent": "x"}});
    assert_eq!(t.put(&path, &app, as_custom).await.0, 400);
    let (status, body) = t.put(&path, &app, rewrite).await;
    assert_eq!((status, &body["data"]), (200, &json!("success")), "{body}");
    let edited = bob_dev.next_op("edited").await;
    assert_eq!(
        (edited["body"]["msg"].as_str(), edited["ext"]["k"].as_str()),
        (Some("the plan"), Some("v"))
    );

    // Deleting a conversation for one user: off bob's list and out of his history.
    let conv_path = "/users/bob/user_channel";
    let delete = json!({"channel": "alice", "type": "chat", "delete_roam": true});
    let req = |token: &str, body: &Value| {
        t.http
            .delete(t.url(conv_path))
            .bearer_auth(token.to_string())
            .json(body)
            .send()
    };
    let (_, list) = t.get("/users/bob/conversations", &bob).await;
    assert!(
        list["entities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["with"] == "alice"),
        "{list}"
    );
    let (status, _) = common::into_json(req(&alice, &delete).await.unwrap()).await;
    assert_eq!(status, 403, "alice deleted bob's conversation");
    let (status, body) = common::into_json(req(&bob, &delete).await.unwrap()).await;
    assert_eq!((status, &body["data"]), (200, &json!({"result": "ok"})), "{body}");
    let (_, list) = t.get("/users/bob/conversations", &bob).await;
    assert!(
        list["entities"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["with"] != "alice"),
        "{list}"
    );
    let (_, history) = t.get("/users/bob/conversations/user/alice/messages", &bob).await;
    assert_eq!(history["count"], 0, "{history}");
    let (_, history) = t.get("/users/alice/conversations/user/bob/messages", &alice).await;
    assert!(history["count"].as_i64().unwrap() > 0, "alice lost her history too");

    // The hourly export: a gzip of one JSON object per message.
    let hour = {
        let out = std::process::Command::new("date")
            .args(["-u", "+%Y%m%d%H"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(t.get(&format!("/chatmessages/{hour}"), &alice).await.0, 403);
    for bad in ["2026", "2026023000", "9999123123", "abcdefghij"] {
        assert_eq!(t.get(&format!("/chatmessages/{bad}"), &app).await.0, 400, "{bad}");
    }
    let (status, body) = t.get(&format!("/chatmessages/{hour}"), &app).await;
    assert_eq!(status, 200, "{body}");
    let url = body["data"][0]["url"].as_str().unwrap();
    let gz = t.http.get(url).send().await.unwrap();
    assert_eq!(gz.status(), 200, "the export's URL did not download");
    let bytes = gz.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len() as i64, body["count"].as_i64().unwrap());
    let kinds: Vec<&str> = records.iter().map(|r| r["chat_type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"chat") && kinds.contains(&"chatroom"), "{kinds:?}");
    assert!(records
        .iter()
        .any(|r| r["payload"]["bodies"][0]["msg"] == "the plan" && r["payload"]["bodies"][0]["type"] == "txt"));
    assert_eq!(
        t.get("/chatmessages/2001010100", &app).await.1["data"],
        json!([]),
        "an hour with no messages"
    );

    // The overview's form, `POST /messages` with a target_type: the app's only, whatever
    // the body (a user token is 403 before its body is read).
    let (status, body) = t
        .post(
            "/messages",
            Some(&app),
            json!({"target_type": "users", "target": ["bob"], "msg": {"type": "txt", "msg": "by type"}, "from": "alice"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["bob"].is_string(), "{body}");
    // A recipient named twice (in any case) gets the message once.
    let before = count().await;
    let (status, body) = t
        .post(
            "/messages/users",
            Some(&app),
            json!({"from": "alice", "to": ["carol", " Carol"], "type": "txt", "body": {"msg": "once"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_object().unwrap().len(), 1, "{body}");
    assert_eq!(count().await, before + 1);
    let (status, body) = t.post("/messages", Some(&alice), json!({"nonsense": true})).await;
    assert_eq!(status, 403, "{body}");
}

/// Groups as the platform manages them: several at once, membership checks, batches that
/// do what they can, single bans, and the envelope on errors axum answers itself.
async fn groups_and_errors(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, _bob, carol] = [t.user("alice").await, t.user("bob").await, t.user("carol").await];
    let app = t.app_token.clone();
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let (status, body) = t
            .post(
                "/chatgroups",
                Some(&alice),
                json!({"groupname": name, "avatar": "https://cdn.example/g.png", "custom": "x=1", "members": ["bob"]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["data"]["groupid"].as_str().unwrap().to_string());
    }
    let (status, body) = t.get(&format!("/chatgroups/{},{}", ids[0], ids[1]), &app).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(
        (body["data"][0]["avatar"].as_str(), body["data"][0]["custom"].as_str()),
        (Some("https://cdn.example/g.png"), Some("x=1"))
    );
    let bad = json!({"groupname": "three", "avatar": "javascript:alert(1)"});
    assert_eq!(t.post("/chatgroups", Some(&alice), bad).await.0, 400);

    let g = |path: &str| format!("/chatgroups/{}{path}", ids[0]);
    assert_eq!(t.get(&g("/user/bob/is_joined"), &app).await.1["data"], true);
    assert_eq!(t.get(&g("/user/carol/is_joined"), &app).await.1["data"], false);

    // A batch add does what it can: the banned and the unknown are named in `failed`.
    assert_eq!(
        t.post(&g("/blocks/users/dave"), Some(&alice), json!({})).await.0,
        404,
        "banned a ghost"
    );
    let (status, body) = t.post(&g("/blocks/users/carol"), Some(&alice), json!({})).await;
    assert_eq!(
        (status, body["data"]["action"].as_str()),
        (200, Some("add_blocks")),
        "{body}"
    );
    assert_eq!(
        t.post(&g("/users"), Some(&carol), json!({"usernames": ["carol"]}))
            .await
            .0,
        403
    );
    t.user("erin").await;
    let (status, body) = t
        .post(
            &g("/users"),
            Some(&alice),
            json!({"usernames": ["carol", "ghost", "erin"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["newmembers"], json!(["erin"]), "{body}");
    let failed: Vec<&str> = body["data"]["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["user"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["carol", "ghost"]);

    // A batch removal answers each; one name answers an object or an error.
    let (status, body) = t.delete(&g("/users/erin,carol"), &alice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["data"][0]["result"].as_bool(), body["data"][1]["result"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(body["data"][1]["reason"].is_string());
    assert_eq!(t.delete(&g("/users/carol"), &alice).await.0, 404);

    // Errors axum answers itself come in the error envelope too.
    let resp = t.http.patch(t.url("/users")).bearer_auth(&app).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.headers().get("allow").is_some());
    let (_, body) = common::into_json(resp).await;
    assert_eq!(body["error"], "method_not_allowed", "{body}");
    for key in ["exception", "timestamp", "duration", "error_description"] {
        assert!(body.get(key).is_some(), "no {key} in {body}");
    }
    let (status, body) = t.get("/no/such/route", &app).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("service_resource_not_found")),
        "{body}"
    );
    // And every success in the platform's envelope.
    let (_, body) = t.get("/users?limit=1", &app).await;
    for key in [
        "action",
        "application",
        "path",
        "uri",
        "entities",
        "timestamp",
        "duration",
        "organization",
        "applicationName",
        "params",
    ] {
        assert!(body.get(key).is_some(), "no {key} in {body}");
    }
    assert_eq!(
        (body["path"].as_str(), body["params"]["limit"][0].as_str()),
        (Some("/users"), Some("1"))
    );
}

/// The app's moderation: global mutes bind devices, a disabled group takes nothing, the
/// allow list speaks while everyone is muted, only named users create chatrooms; broadcast
/// and import.
async fn moderation(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol] = [t.user("alice").await, t.user("bob").await, t.user("carol").await];
    let app = t.app_token.clone();
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let mut bob_dev = t.device("bob", &bob, "b").await;
    let mut carol_dev = t.device("carol", &carol, "c").await;
    let (_, group) = t
        .post(
            "/chatgroups",
            Some(&alice),
            json!({"groupname": "g", "members": ["bob", "carol"]}),
        )
        .await;
    let gid = group["data"]["groupid"].as_str().unwrap().to_string();
    let g = |path: &str| format!("/chatgroups/{gid}{path}");

    // Global mute: one-to-one only, for a while; the app still sends in her name.
    let mute = json!({"username": "alice", "chat": 100});
    assert_eq!(t.post("/mutes", Some(&alice), mute.clone()).await.0, 403);
    assert_eq!(
        t.post("/mutes", Some(&app), json!({"username": "alice", "chat": -5}))
            .await
            .0,
        400
    );
    assert_eq!(
        t.post("/mutes", Some(&app), json!({"username": "ghost", "chat": 5}))
            .await
            .0,
        404
    );
    assert_eq!(
        t.post("/mutes", Some(&app), mute).await.1["data"],
        json!({"result": "ok"})
    );
    alice_dev.send_text("m1", "bob", "hello?").await;
    assert_eq!(alice_dev.next_op("error").await["code"], "muted");
    alice_dev.send_to("group", "m2", &gid, "group is fine").await;
    assert_eq!(alice_dev.next_op("ack").await["cid"], "m2");
    let (_, shown) = t.get("/mutes/alice", &app).await;
    let left = shown["data"]["chat"].as_i64().unwrap();
    assert!((95..=100).contains(&left), "{shown}");
    assert_eq!(shown["data"]["groupchat"], 0);
    let (_, all) = t.get("/mutes?pageNum=1&pageSize=10", &app).await;
    assert_eq!(all["data"]["data"][0]["username"], "alice", "{all}");
    let sent = json!({"from": "alice", "to": ["bob"], "type": "txt", "body": {"msg": "from the app"}});
    assert!(t.post("/messages/users", Some(&app), sent).await.1["data"]["bob"].is_string());
    t.post("/mutes", Some(&app), json!({"username": "alice", "chat": 0}))
        .await;
    alice_dev.send_text("m3", "bob", "back").await;
    assert_eq!(alice_dev.next_op("ack").await["cid"], "m3");

    // Everyone muted but the allow list (members only).
    assert_eq!(t.post(&g("/white/users/bob"), Some(&bob), json!({})).await.0, 403);
    let (status, body) = t
        .post(&g("/white/users"), Some(&alice), json!({"usernames": ["bob", "erin"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["data"][0]["result"].as_bool(), body["data"][1]["result"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(t.get(&g("/white/users"), &alice).await.1["data"], json!(["bob"]));
    t.post(&g("/ban"), Some(&alice), json!({})).await;
    bob_dev.send_to("group", "b1", &gid, "allowed").await;
    assert_eq!(bob_dev.next_op("ack").await["cid"], "b1");
    carol_dev.send_to("group", "c1", &gid, "muted?").await;
    assert_eq!(carol_dev.next_op("error").await["code"], "muted");
    assert_eq!(
        t.delete(&g("/white/users/bob"), &alice).await.1["data"][0]["result"],
        true
    );
    bob_dev.send_to("group", "b2", &gid, "now muted").await;
    assert_eq!(bob_dev.next_op("error").await["code"], "muted");
    t.delete(&g("/ban"), &alice).await;

    // Disabled by the app: no messages, no members, until enabled.
    assert_eq!(
        t.post(&g("/disable"), Some(&alice), json!({})).await.0,
        403,
        "the owner disabled it"
    );
    assert_eq!(
        t.post(&g("/disable"), Some(&app), json!({})).await.1["data"],
        json!({"disabled": true})
    );
    bob_dev.send_to("group", "b3", &gid, "anyone?").await;
    assert_eq!(bob_dev.next_op("error").await["code"], "disabled");
    t.user("dave").await;
    assert_eq!(t.post(&g("/users/dave"), Some(&app), json!({})).await.0, 403);
    assert_eq!(t.get(&g(""), &app).await.1["data"][0]["disabled"], true);
    assert_eq!(
        t.post(&g("/enable"), Some(&app), json!({})).await.1["data"],
        json!({"disabled": false})
    );
    bob_dev.send_to("group", "b4", &gid, "back").await;
    assert_eq!(bob_dev.next_op("ack").await["cid"], "b4");

    // Chatroom super admins: once named, only they create chatrooms with their own token.
    let room = json!({"name": "r", "members": []});
    assert_eq!(
        t.post("/chatrooms/super_admin", Some(&bob), json!({"superadmin": "bob"}))
            .await
            .0,
        403
    );
    assert_eq!(
        t.post("/chatrooms/super_admin", Some(&app), json!({"superadmin": "ghost"}))
            .await
            .0,
        404
    );
    let (status, body) = t
        .post("/chatrooms/super_admin", Some(&app), json!({"superadmin": "alice"}))
        .await;
    assert_eq!(
        (status, body["data"]["result"].as_str()),
        (200, Some("success")),
        "{body}"
    );
    assert_eq!(
        t.get("/chatrooms/super_admin?pagenum=1&pagesize=10", &app).await.1["data"],
        json!(["alice"])
    );
    assert_eq!(t.post("/chatrooms", Some(&bob), room.clone()).await.0, 403);
    let (status, first) = t.post("/chatrooms", Some(&alice), room.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        t.delete("/chatrooms/super_admin/alice", &app).await.1["data"]["newSuperAdmin"],
        "alice"
    );
    let (status, second) = t.post("/chatrooms", Some(&bob), room).await;
    assert_eq!(status, 200, "{second}");

    // Broadcast to every chatroom: kept in each room's history (this app keeps ten).
    assert_eq!(t.put("/settings", &app, json!({"room_history": 10})).await.0, 200);
    let rooms = [
        first["data"]["id"].as_str().unwrap(),
        second["data"]["id"].as_str().unwrap(),
    ];
    for id in rooms {
        t.post(&format!("/chatrooms/{id}/users/carol"), Some(&app), json!({}))
            .await;
    }
    assert!(
        carol_dev
            .subscribe(&format!("chat/{}/{}/room/{}", t.org, t.app, rooms[0]))
            .await
    );
    let cast =
        json!({"msg": {"type": "txt", "msg": "maintenance at noon"}, "ext": {"k": "v"}, "chatroom_msg_level": "low"});
    assert_eq!(
        t.post("/messages/chatrooms/broadcast", Some(&alice), cast.clone())
            .await
            .0,
        403
    );
    let (status, body) = t.post("/messages/chatrooms/broadcast", Some(&app), cast).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["id"].is_i64(), "{body}");
    assert_eq!(carol_dev.next_op("msg").await["body"]["msg"], "maintenance at noon");
    for id in rooms {
        let (_, history) = t.get(&format!("/chatrooms/{id}/messages"), &carol).await;
        assert_eq!(
            history["entities"][0]["body"]["msg"], "maintenance at noon",
            "{history}"
        );
    }

    // Import: kept with its own time, in history and inbox, delivered to nobody live.
    let _ = bob_dev.collect(Duration::from_millis(300)).await;
    let long_ago = 1_656_906_628_428_i64;
    let import = json!({"target": "bob", "from": "alice", "type": "txt", "body": {"msg": "from the old service"},
                        "ext": {"k": "v"}, "is_ack_read": true, "msg_timestamp": long_ago});
    assert_eq!(
        t.post("/messages/users/import", Some(&alice), import.clone()).await.0,
        403
    );
    let (status, body) = t.post("/messages/users/import", Some(&app), import.clone()).await;
    assert_eq!(status, 200, "{body}");
    let imported = body["data"]["msg_id"].as_str().unwrap().to_string();
    let live = bob_dev.collect(Duration::from_millis(500)).await;
    assert!(
        live.iter().all(|m| m["op"] != "msg"),
        "an import was delivered live: {live:?}"
    );
    let (_, history) = t
        .get("/users/bob/conversations/user/alice/messages?limit=100", &bob)
        .await;
    let found = history["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == imported.as_str())
        .cloned();
    assert_eq!(found.map(|m| m["ts"].as_i64()), Some(Some(long_ago)), "{history}");
    let mut future = import;
    future["msg_timestamp"] = json!(store::now_ms() + 60_000);
    assert_eq!(t.post("/messages/users/import", Some(&app), future).await.0, 400);
    let to_group = json!({"target": gid, "from": "carol", "type": "txt", "body": {"msg": "old group talk"}, "msg_timestamp": long_ago});
    assert_eq!(t.post("/messages/chatgroups/import", Some(&app), to_group).await.0, 200);
}

/// What a group keeps for its members: attributes per member, and shared files only they
/// read.
async fn member_attributes_and_shared_files(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol, dave] = [
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
        t.user("dave").await,
    ];
    let (_, group) = t
        .post(
            "/chatgroups",
            Some(&alice),
            json!({"groupname": "g", "members": ["bob", "carol"]}),
        )
        .await;
    let gid = group["data"]["groupid"].as_str().unwrap().to_string();
    let attrs = |user: &str| format!("/metadata/chatgroup/{gid}/user/{user}");

    // Attributes: a member sets their own, the owner anyone's; members read them.
    let (status, body) = t
        .put(
            &attrs("bob"),
            &bob,
            json!({"metaData": {"role": "driver", "seat": "1"}}),
        )
        .await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!({"role": "driver", "seat": "1"})),
        "{body}"
    );
    assert_eq!(
        t.put(&attrs("bob"), &carol, json!({"metaData": {"role": "x"}})).await.0,
        403
    );
    assert_eq!(
        t.put(&attrs("bob"), &alice, json!({"metaData": {"seat": ""}})).await.1["data"],
        json!({"role": "driver"})
    );
    assert_eq!(t.put(&attrs("bob"), &bob, json!({"metaData": {"n": 1}})).await.0, 400);
    let big = json!({"metaData": {"x": "y".repeat(5000)}});
    assert_eq!(t.put(&attrs("bob"), &bob, big).await.0, 400);
    assert_eq!(
        t.put(&attrs("dave"), &alice, json!({"metaData": {"a": "b"}})).await.0,
        404,
        "not a member"
    );
    assert_eq!(t.get(&attrs("bob"), &carol).await.1["data"], json!({"role": "driver"}));
    assert_eq!(t.get(&attrs("bob"), &dave).await.0, 403, "an outsider read them");
    let many = json!({"targets": ["bob", "carol", "dave"], "properties": ["role"]});
    let (_, body) = t
        .post(&format!("/metadata/chatgroup/{gid}/get"), Some(&carol), many)
        .await;
    assert_eq!(body["data"], json!({"bob": {"role": "driver"}, "carol": {}}), "{body}");

    // Shared files: members upload and read; outsiders do neither.
    let files = format!("/chatgroups/{gid}/share_files");
    let upload = |token: &str| {
        let part = reqwest::multipart::Part::bytes(b"minutes of the meeting".to_vec())
            .file_name("minutes.txt")
            .mime_str("text/plain")
            .unwrap();
        t.http
            .post(t.url(&files))
            .bearer_auth(token.to_string())
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
    };
    let (status, _) = common::into_json(upload(&dave).await.unwrap()).await;
    assert_eq!(status, 403, "an outsider shared a file");
    let (status, body) = common::into_json(upload(&bob).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let file_id = body["data"]["file_id"].as_str().unwrap().to_string();
    let url = body["data"]["file_url"].as_str().unwrap().to_string();
    let (_, listed) = t.get(&format!("{files}?pagenum=1&pagesize=10"), &carol).await;
    assert_eq!(listed["data"][0]["file_owner"], "bob", "{listed}");
    assert_eq!(listed["data"][0]["file_size"], 22);
    assert_eq!(t.get(&files, &dave).await.0, 403);
    let got = t.http.get(&url).bearer_auth(&carol).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(&got.bytes().await.unwrap()[..], b"minutes of the meeting");
    let by_dave = t.http.get(&url).bearer_auth(&dave).send().await.unwrap();
    assert_eq!(by_dave.status(), 403);
    let direct = t
        .http
        .get(t.url(&format!("/chatfiles/{file_id}")))
        .bearer_auth(&dave)
        .send()
        .await
        .unwrap();
    assert_eq!(
        direct.status(),
        403,
        "an outsider read a shared file through /chatfiles"
    );
    let direct = t
        .http
        .get(t.url(&format!("/chatfiles/{file_id}")))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(
        direct.status(),
        200,
        "a member could not read a shared file through /chatfiles"
    );
    // Only its uploader, the owner or an admin deletes it.
    assert_eq!(t.delete(&format!("{files}/{file_id}"), &carol).await.0, 403);
    let (status, body) = t.delete(&format!("{files}/{file_id}"), &bob).await;
    assert_eq!((status, body["data"]["result"].as_bool()), (200, Some(true)), "{body}");
    assert_eq!(t.http.get(&url).bearer_auth(&carol).send().await.unwrap().status(), 404);
    assert_eq!(t.get(&files, &carol).await.1["data"], json!([]));
}

/// Reactions over REST are the ones devices make: the holders hear of them; only the
/// conversation's parties react; a message takes at most 20 different ones.
async fn reactions_over_rest(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol] = [t.user("alice").await, t.user("bob").await, t.user("carol").await];
    let mut alice_dev = t.device("alice", &alice, "a").await;
    let mut bob_dev = t.device("bob", &bob, "b").await;
    alice_dev.send_text("r1", "bob", "lunch?").await;
    let id = alice_dev.next_op("ack").await["id"].as_str().unwrap().to_string();
    bob_dev.next_op("msg").await;
    let add = |emoji: &str| json!({"msgId": id, "message": emoji});

    let (status, body) = t.post("/reaction/user/bob", Some(&bob), add("yum")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["requestStatusCode"].as_str(), body["data"]["msgType"].as_str()),
        (Some("ok"), Some("chat"))
    );
    let event = alice_dev.next_op("reaction").await;
    assert_eq!(
        (event["emoji"].as_str(), event["by"].as_str()),
        (Some("yum"), Some("bob"))
    );
    assert_eq!(
        t.post("/reaction/user/bob", Some(&bob), add("yum")).await.0,
        400,
        "the same reaction twice"
    );
    assert_eq!(
        t.post("/reaction/user/carol", Some(&t.app_token), add("yum")).await.0,
        400,
        "an outsider reacted"
    );
    assert_eq!(
        t.post("/reaction/user/alice", Some(&carol), add("yum")).await.0,
        403,
        "carol acted as alice"
    );
    for i in 0..19 {
        assert_eq!(
            t.post("/reaction/user/alice", Some(&alice), add(&format!("e{i}")))
                .await
                .0,
            200
        );
    }
    let (status, body) = t.post("/reaction/user/alice", Some(&alice), add("one-too-many")).await;
    assert_eq!(status, 400, "{body}");
    // Read: the first three users, and whether the reader added it.
    let (_, body) = t
        .get(
            &format!("/reaction/user/alice?msgIdList={id},{id}&msgType=chat"),
            &alice,
        )
        .await;
    assert_eq!(
        body["data"].as_array().unwrap().len(),
        1,
        "a message named twice is answered once: {body}"
    );
    // Thousands of distinct ids are refused like 21: past the limit nothing more is read.
    let many: Vec<String> = (0..8_000).map(|n| n.to_string()).collect();
    let (status, refused) = t
        .get(
            &format!("/reaction/user/alice?msgIdList={}&msgType=chat", many.join(",")),
            &alice,
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    let yum = body["data"][0]["reactionList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reaction"] == "yum")
        .unwrap()
        .clone();
    assert_eq!(
        (yum["count"].as_i64(), yum["state"].as_bool()),
        (Some(1), Some(false)),
        "{yum}"
    );
    let (_, detail) = t
        .get(&format!("/reaction/user/bob/detail?msgId={id}&message=yum"), &bob)
        .await;
    assert_eq!(
        (detail["data"]["userList"].clone(), detail["data"]["cursor"].clone()),
        (json!(["bob"]), json!(""))
    );
    // Remove: only one's own.
    let path = format!("/reaction/user/alice?msgId={id}&message=yum");
    assert_eq!(t.delete(&path, &alice).await.0, 400, "alice removed bob's reaction");
    let path = format!("/reaction/user/bob?msgId={id}&message=yum");
    assert_eq!(t.delete(&path, &bob).await.1["requestStatusCode"], "ok");
    let events = alice_dev.collect(Duration::from_millis(800)).await;
    assert!(
        events
            .iter()
            .any(|e| e["op"] == "reaction" && e["action"] == "remove" && e["emoji"] == "yum"),
        "{events:?}"
    );
}

/// A chatroom's attributes: each owned by the member who set it, told to the room's
/// subscribers, gone with their owner unless kept; only the app forces.
async fn chatroom_attributes(backend: Backend) {
    let t = spawn_app(backend).await;
    let [alice, bob, carol] = [t.user("alice").await, t.user("bob").await, t.user("carol").await];
    let app = t.app_token.clone();
    let (_, room) = t
        .post(
            "/chatrooms",
            Some(&app),
            json!({"name": "r", "owner": "alice", "members": ["bob"]}),
        )
        .await;
    let rid = room["data"]["id"].as_str().unwrap().to_string();
    let mut alice_dev = t.device("alice", &alice, "a").await;
    assert!(
        alice_dev
            .subscribe(&format!("chat/{}/{}/room/{rid}", t.org, t.app))
            .await
    );
    let user = |u: &str| format!("/metadata/chatroom/{rid}/user/{u}");

    let (status, body) = t
        .put(
            &user("bob"),
            &bob,
            json!({"metaData": {"topic": "jazz", "bad key": "x"}, "autoDelete": "DELETE"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["successKeys"], json!(["topic"]));
    assert!(body["data"]["errorKeys"]["bad key"].is_string(), "{body}");
    let event = alice_dev.next_event("attributes").await;
    assert_eq!(
        (event["set"]["topic"].as_str(), event["by"].as_str()),
        (Some("jazz"), Some("bob"))
    );
    // Another member may neither change nor remove it; nor act as someone else.
    let (_, body) = t
        .put(&user("alice"), &alice, json!({"metaData": {"topic": "rock"}}))
        .await;
    assert!(body["data"]["errorKeys"]["topic"].is_string(), "{body}");
    assert_eq!(
        t.put(&user("bob"), &alice, json!({"metaData": {"x": "y"}})).await.0,
        403
    );
    assert_eq!(
        t.put(&user("carol"), &carol, json!({"metaData": {"x": "y"}})).await.0,
        401,
        "an outsider set one"
    );
    assert_eq!(
        t.put(
            &format!("{}/forced", user("alice")),
            &alice,
            json!({"metaData": {"topic": "rock"}})
        )
        .await
        .0,
        403
    );
    let too_many: serde_json::Map<String, Value> = (0..11).map(|i| (format!("k{i}"), json!("v"))).collect();
    assert_eq!(t.put(&user("bob"), &bob, json!({"metaData": too_many})).await.0, 400);
    // The app forces; the key becomes alice's.
    let (_, body) = t
        .put(
            &format!("{}/forced", user("alice")),
            &app,
            json!({"metaData": {"topic": "rock"}}),
        )
        .await;
    assert_eq!(body["data"]["successKeys"], json!(["topic"]), "{body}");
    let read = |token: &str, keys: Value| {
        let token = token.to_string();
        let path = format!("/metadata/chatroom/{rid}");
        let t = &t;
        async move { t.post(&path, Some(&token), json!({"keys": keys})).await }
    };
    assert_eq!(read(&bob, json!([])).await.1["data"], json!({"topic": "rock"}));
    assert_eq!(read(&carol, json!([])).await.0, 403, "an outsider read them");
    // Bob's own, removed when he leaves (autoDelete); alice's kept (NO_DELETE).
    t.put(&user("bob"), &bob, json!({"metaData": {"mood": "happy"}})).await;
    t.put(
        &user("alice"),
        &alice,
        json!({"metaData": {"rules": "be nice"}, "autoDelete": "NO_DELETE"}),
    )
    .await;
    assert_eq!(t.delete(&format!("/chatrooms/{rid}/users/bob"), &bob).await.0, 200);
    assert_eq!(
        read(&alice, json!([])).await.1["data"],
        json!({"rules": "be nice", "topic": "rock"})
    );
    // Removing: one's own only, unless forced.
    let remove = |u: &str, token: &str, keys: Value, forced: bool| {
        let path = if forced { format!("{}/forced", user(u)) } else { user(u) };
        t.http
            .delete(t.url(&path))
            .bearer_auth(token.to_string())
            .json(&json!({"keys": keys}))
            .send()
    };
    let (status, body) = common::into_json(
        remove("alice", &alice, json!(["rules", "nothing"]), false)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");
    assert_eq!(
        (
            body["data"]["successKeys"].clone(),
            body["data"]["errorKeys"]["nothing"].is_string()
        ),
        (json!(["rules"]), true)
    );
    let (_, body) = common::into_json(remove("alice", &app, json!(["topic"]), true).await.unwrap()).await;
    assert_eq!(body["data"]["successKeys"], json!(["topic"]));
    assert_eq!(read(&alice, json!([])).await.1["data"], json!({}));
}

on_both_backends!(
    chatroom_attributes,
    reactions_over_rest,
    account_administration,
    messages_from_the_backend,
    groups_and_errors,
    moderation,
    member_attributes_and_shared_files
);
