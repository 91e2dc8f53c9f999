//! Other people's MQTT clients: Eclipse Mosquitto's `mosquitto_pub`/`mosquitto_sub`
//! (3.1.1 and 5), over TCP and TLS, against the gate. `scripts/test.sh` installs them.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Backend;
use serde_json::{json, Value};
use tokio::process::Command;

/// A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost:
/// (CA file, certificate, key).
fn test_certificates(dir: &std::path::Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).display().to_string();
    let (ca_key, ca, key, csr, cert, ext) = (
        path("ca.key"),
        path("ca.pem"),
        path("key.pem"),
        path("leaf.csr"),
        path("cert.pem"),
        path("leaf.ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=chatd test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (ca, cert, key)
}

async fn mosquitto_clients_over_tcp_and_tls(backend: Backend) {
    let db = common::fresh_database(backend).await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(certs.path());
    let mut config = common::test_config(&db.url);
    config.mqtt.tls = "127.0.0.1:0".into();
    config.mqtt.wss = "127.0.0.1:0".into();
    config.mqtt.tls_cert = cert;
    config.mqtt.tls_key = key;
    config.mqtt.handshake_timeout_secs = 2;
    let t = common::spawn_app_with(config, db).await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let tls_port = t.server.tls_addr.unwrap().port().to_string();
    let tcp_port = t.mqtt_port().to_string();

    // An idle connection on the TLS port must not hold up real handshakes.
    let _idle = tokio::net::TcpStream::connect(t.server.tls_addr.unwrap())
        .await
        .unwrap();

    // Bob listens with mosquitto_sub over TLS, MQTT 5, for one message.
    let tls = Endpoint {
        port: &tls_port,
        cafile: Some(&ca),
    };
    let tcp = Endpoint {
        port: &tcp_port,
        cafile: None,
    };
    let sub = mosquitto("mosquitto_sub", &tls, "mqttv5", "bob-cli", "bob", &bob)
        .args(["-q", "1", "-C", "1", "-t", &t.inbox("bob")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is installed");
    let waiting = tokio::spawn(sub.wait_with_output());

    // Alice sends with mosquitto_pub over plain TCP, MQTT 3.1.1, until bob's client has
    // subscribed and received one (mosquitto_sub gives no signal when it has subscribed).
    let mut attempt = 0;
    while !waiting.is_finished() {
        attempt += 1;
        assert!(attempt < 50, "mosquitto_sub never received a message");
        let envelope = json!({"op": "send", "cid": format!("cli{attempt}"), "chat": "user", "to": "bob", "type": "txt", "body": {"msg": "from mosquitto"}});
        let status = mosquitto("mosquitto_pub", &tcp, "mqttv311", "alice-cli", "alice", &alice)
            .args(["-q", "1", "-t", &t.outbox("alice"), "-m", &envelope.to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "mosquitto_pub failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let output = waiting.await.unwrap().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let msg: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (msg["op"].as_str(), msg["from"].as_str(), msg["body"]["msg"].as_str()),
        (Some("msg"), Some("alice"), Some("from mosquitto"))
    );

    // MQTT 5 over WebSocket over TLS, as a browser on https would connect.
    let mut web = common::raw::Raw::wss(t.server.wss_addr.unwrap().port(), &ca).await;
    assert_eq!(
        web.connect5("bob-web", "bob", &bob, 30).await.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );

    // Forbidden subscriptions are refused with a SUBACK the client understands.
    for version in ["mqttv311", "mqttv5"] {
        let out = mosquitto("mosquitto_sub", &tcp, version, "snoop", "alice", &alice)
            .args(["-W", "3", "-t", "chat/#"])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("denied"), "{version}: {stderr}");
    }
    // A bad token is refused at CONNECT, in words the client prints.
    let out = mosquitto("mosquitto_sub", &tls, "mqttv311", "forger", "alice", "forged")
        .args(["-W", "3", "-t", "x"])
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not authorised"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where a Mosquitto client connects: a port, with TLS if `cafile` is set.
struct Endpoint<'a> {
    port: &'a str,
    cafile: Option<&'a str>,
}

/// A Mosquitto client command with the connection arguments filled in.
fn mosquitto(program: &str, to: &Endpoint, version: &str, client_id: &str, user: &str, password: &str) -> Command {
    let mut command = Command::new(program);
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        to.port,
        "-V",
        version,
        "-i",
        client_id,
        "-u",
        user,
        "-P",
        password,
    ]);
    if let Some(cafile) = to.cafile {
        command.args(["--cafile", cafile]);
    }
    command
}

on_both_backends!(mosquitto_clients_over_tcp_and_tls);
