//! TLS for the REST API (same certificate as MQTT) and reloading the certificate without a
//! restart: in process (`Server::reload_tls`) and as an operator does it, with SIGHUP to the
//! binary. The certificate a listener serves is read with `openssl s_client`.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{app_with, fresh_database, Backend};
use serde_json::Value;

/// A self-signed certificate for 127.0.0.1 named `name`, as `{name}.crt` and `{name}.key`.
fn certificate(dir: &Path, name: &str) {
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.crt")))
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
}

/// Puts `name`'s certificate where chatd reads it.
fn install(dir: &Path, name: &str) {
    std::fs::copy(dir.join(format!("{name}.crt")), dir.join("cert.pem")).unwrap();
    std::fs::copy(dir.join(format!("{name}.key")), dir.join("key.pem")).unwrap();
}

/// The subject of the certificate served at `addr`.
async fn served(addr: std::net::SocketAddr) -> String {
    let output = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no certificate from {addr}: {text}"))
        .to_string()
}

fn https() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_https_and_certificates_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "chatd-a");
    certificate(dir.path(), "chatd-b");
    install(dir.path(), "chatd-a");
    let t = app_with(Backend::Sqlite, |c| {
        c.mqtt.tls = "127.0.0.1:0".into();
        c.api.tls = "127.0.0.1:0".into();
        c.mqtt.tls_cert = dir.path().join("cert.pem").display().to_string();
        c.mqtt.tls_key = dir.path().join("key.pem").display().to_string();
    })
    .await;
    let api_tls = t.server.api_tls_addr.expect("https listener");
    let mqtt_tls = t.server.tls_addr.expect("MQTT TLS listener");
    assert!(served(api_tls).await.contains("chatd-a"));
    assert!(served(mqtt_tls).await.contains("chatd-a"));

    // The whole API over https: a token, then a call with it.
    let base = format!("https://{api_tls}/{}/{}", t.org, t.app);
    let grant = serde_json::json!({"grant_type": "client_credentials", "client_id": t.client_id, "client_secret": t.client_secret});
    let answer: Value = https()
        .post(format!("{base}/token"))
        .json(&grant)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["access_token"].as_str().unwrap();
    let users = https()
        .get(format!("{base}/users"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
    // Plain HTTP on the https port is a failed handshake, not an answer.
    assert!(t.http.get(format!("http://{api_tls}/health")).send().await.is_err());

    // A renewed certificate: new connections get it, on both listeners.
    install(dir.path(), "chatd-b");
    assert!(t.server.reload_tls().unwrap());
    assert!(served(api_tls).await.contains("chatd-b"));
    assert!(served(mqtt_tls).await.contains("chatd-b"));

    // A broken one (a key of another certificate, a half-written file) is refused and the
    // one in use stays.
    std::fs::copy(dir.path().join("chatd-a.key"), dir.path().join("key.pem")).unwrap();
    let error = format!("{:#}", t.server.reload_tls().unwrap_err());
    assert!(error.contains("does not belong"), "{error}");
    std::fs::write(dir.path().join("cert.pem"), "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
    assert!(t.server.reload_tls().is_err());
    assert!(served(api_tls).await.contains("chatd-b"));
}

/// What an operator does: replace the files, send SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "chatd-a");
    certificate(dir.path(), "chatd-b");
    install(dir.path(), "chatd-a");
    let db = fresh_database(Backend::Sqlite).await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let env = [
        ("CHATD_API__TLS", format!("127.0.0.1:{port}")),
        (
            "CHATD_MQTT__TLS_CERT",
            dir.path().join("cert.pem").display().to_string(),
        ),
        ("CHATD_MQTT__TLS_KEY", dir.path().join("key.pem").display().to_string()),
    ];
    let chatd = common::binary::start_chatd(&db.url, dir.path(), &env).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(served(addr).await.contains("chatd-a"));
    install(dir.path(), "chatd-b");
    let pid = chatd.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if served(addr).await.contains("chatd-b") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Still serving.
    let health = https().get(format!("https://{addr}/health/live")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

/// A client that opens the https port and never finishes (or never starts) its handshake
/// holds it no longer than the header timeout, and everyone else is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_on_the_https_port_is_cut_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "chatd-a");
    install(dir.path(), "chatd-a");
    let t = app_with(Backend::Sqlite, |c| {
        c.api.tls = "127.0.0.1:0".into();
        c.api.header_timeout_ms = 400;
        c.mqtt.tls_cert = dir.path().join("cert.pem").display().to_string();
        c.mqtt.tls_key = dir.path().join("key.pem").display().to_string();
    })
    .await;
    let addr = t.server.api_tls_addr.unwrap();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Half a ClientHello: a TLS record header promising more than is sent.
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let started = std::time::Instant::now();
    let health = https().get(format!("https://{addr}/health/live")).send().await.unwrap();
    assert_eq!(health.status(), 200, "served while two clients stall");
    for stream in [&mut silent, &mut half] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("closed within the header timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let after = started.elapsed();
    assert!(after < std::time::Duration::from_secs(3), "held for {after:?}");
}
