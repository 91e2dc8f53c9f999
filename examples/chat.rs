//! A terminal chat client for chatd: run it in two terminals and talk.
//!
//! ```text
//! cargo run --example chat -- --user alice --password pw --register <client_id> <client_secret>
//! cargo run --example chat -- --user bob --password pw --register <client_id> <client_secret>
//! ```
//!
//! `--register` creates the user first (with the app's credentials, which `chatd` prints on
//! first start); leave it out once the user exists. Then type `@bob hello` to send to bob,
//! or `/to bob` once and plain lines after it. `/file photo.jpg` sends a file to the current
//! peer (`/file @bob photo.jpg` to another): it is uploaded to `POST …/chatfiles` (streamed)
//! and sent as an `img` message if the server found it to be an image, else as a `file`.
//! Received files show as their URLs. `/quit` leaves.
//!
//! On connect the client catches up with everything it missed (the `sync` op), from the
//! inbox position it keeps in `.chat-<user>.useq`, so nothing is shown twice or skipped.

use std::time::Duration;

use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    /// Create the user first, with the app's client id and secret.
    #[arg(long, num_args = 2, value_names = ["CLIENT_ID", "CLIENT_SECRET"])]
    register: Option<Vec<String>>,
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    api: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 11883)]
    port: u16,
    #[arg(long, default_value = "demo")]
    org: String,
    #[arg(long, default_value = "chat")]
    app: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let base = format!("{}/{}/{}", args.api, args.org, args.app);
    if let Some(creds) = &args.register {
        let app_token = token(
            &http,
            &base,
            json!({"grant_type": "client_credentials", "client_id": creds[0], "client_secret": creds[1]}),
        )
        .await?;
        let resp = http
            .post(format!("{base}/users"))
            .bearer_auth(app_token)
            .json(&json!({"username": args.user, "password": args.password}))
            .send()
            .await?;
        println!("register {}: {}", args.user, resp.text().await?);
    }
    let user_token = token(
        &http,
        &base,
        json!({"grant_type": "password", "username": args.user, "password": args.password}),
    )
    .await?;

    let device = format!("terminal-{}", std::process::id());
    let mut options = MqttOptions::new(&device, &args.host, args.port);
    options.set_credentials(&args.user, &user_token);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let inbox = format!("chat/{}/{}/u/{}/in", args.org, args.app, args.user);
    let outbox = format!("chat/{}/{}/u/{}/out", args.org, args.app, args.user);
    let useq_file = format!(".chat-{}.useq", args.user);
    let mut last_useq: i64 = std::fs::read_to_string(&useq_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);

    println!(
        "connected as {} ({device}). '@peer text' sends, '/to peer' sets a default peer, '/quit' leaves.",
        args.user
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut peer: Option<String> = None;
    let mut counter = 0u64;
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(&inbox, QoS::AtLeastOnce).await?;
                    // Catch up from where this terminal left off.
                    client.publish(&outbox, QoS::AtLeastOnce, false, json!({"op": "sync", "after": last_useq}).to_string()).await?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                    match v["op"].as_str() {
                        Some("msg") => show(&v, &args.user, &mut last_useq, &useq_file, &client, &outbox).await?,
                        Some("synced") => {
                            for m in v["msgs"].as_array().into_iter().flatten() {
                                show(m, &args.user, &mut last_useq, &useq_file, &client, &outbox).await?;
                            }
                            if v["more"] == true {
                                client.publish(&outbox, QoS::AtLeastOnce, false, json!({"op": "sync", "after": v["last"]}).to_string()).await?;
                            }
                        }
                        Some("ack") => {
                            println!("  ✓ {} stored as #{}", v["cid"].as_str().unwrap_or("?"), v["seq"]);
                            // Our own message takes a place in our inbox too: step over it.
                            if v["useq"].as_i64() == Some(last_useq + 1) {
                                last_useq += 1;
                                let _ = std::fs::write(&useq_file, last_useq.to_string());
                            }
                        }
                        Some("error") => println!("  ✗ {}: {}", v["code"].as_str().unwrap_or("?"), v["message"].as_str().unwrap_or("")),
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    println!("connection: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line == "/quit" {
                    break;
                }
                if let Some(p) = line.strip_prefix("/to ") {
                    peer = Some(p.trim().to_string());
                    continue;
                }
                if let Some(rest) = line.strip_prefix("/file ") {
                    let (to, path) = match rest.trim().strip_prefix('@').and_then(|r| r.split_once(' ')) {
                        Some((to, path)) => (Some(to.to_string()), path.trim()),
                        None => (peer.clone(), rest.trim()),
                    };
                    let Some(to) = to else {
                        println!("  '/to peer' first, or '/file @peer path'");
                        continue;
                    };
                    match upload(&http, &base, &user_token, path).await {
                        Ok((kind, body)) => {
                            counter += 1;
                            let cid = format!("{device}-{counter}");
                            println!("  uploaded {path}: {}", body["url"].as_str().unwrap_or("?"));
                            let envelope = json!({"op": "send", "cid": cid, "chat": "user", "to": to, "type": kind, "body": body});
                            client.publish(&outbox, QoS::AtLeastOnce, false, envelope.to_string()).await?;
                        }
                        Err(e) => println!("  ✗ {path}: {e}"),
                    }
                    continue;
                }
                let (to, text) = match line.strip_prefix('@').and_then(|rest| rest.split_once(' ')) {
                    Some((to, text)) => (to.to_string(), text.to_string()),
                    None => match &peer {
                        Some(p) if !line.is_empty() => (p.clone(), line.to_string()),
                        _ => {
                            println!("  type '@peer text' or '/to peer' first");
                            continue;
                        }
                    },
                };
                counter += 1;
                let cid = format!("{device}-{counter}");
                let envelope = json!({"op": "send", "cid": cid, "chat": "user", "to": to, "type": "txt", "body": {"msg": text}});
                client.publish(&outbox, QoS::AtLeastOnce, false, envelope.to_string()).await?;
            }
        }
    }
    client.disconnect().await?;
    Ok(())
}

/// Prints a message once (by inbox position) and remembers the position; a gap means
/// something was missed live, so it syncs.
async fn show(
    m: &Value,
    me: &str,
    last: &mut i64,
    file: &str,
    client: &AsyncClient,
    outbox: &str,
) -> anyhow::Result<()> {
    let Some(useq) = m["useq"].as_i64() else { return Ok(()) };
    if useq <= *last {
        return Ok(());
    }
    if useq > *last + 1 {
        client
            .publish(
                outbox,
                QoS::AtLeastOnce,
                false,
                json!({"op": "sync", "after": *last}).to_string(),
            )
            .await?;
        return Ok(());
    }
    *last = useq;
    let _ = std::fs::write(file, useq.to_string());
    let text = match (m["type"].as_str(), m["body"]["url"].as_str()) {
        _ if m["destroyed"] == true => "(destroyed)".to_string(),
        (Some(kind @ ("img" | "audio" | "video" | "file")), Some(url)) => format!(
            "[{kind}] {} ({} bytes) {url}",
            m["body"]["filename"].as_str().unwrap_or("file"),
            m["body"]["file_length"]
        ),
        _ => m["body"]["msg"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| m["body"].to_string()),
    };
    if m["from"] == me {
        println!("  (you → {}) {text}", m["to"].as_str().unwrap_or("?"));
    } else {
        println!("{}: {text}", m["from"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// Uploads a file, streamed from disk; answers the message type to send it as and its body
/// (the server completes the body's size, thumbnail and secret when the message is sent).
async fn upload(http: &reqwest::Client, base: &str, token: &str, path: &str) -> anyhow::Result<(&'static str, Value)> {
    let file = tokio::fs::File::open(path).await?;
    let length = file.metadata().await?.len();
    let name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into());
    let stream = tokio_util::io::ReaderStream::new(file);
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), length)
        .file_name(name.clone());
    let form = reqwest::multipart::Form::new().part("file", part);
    let resp = http
        .post(format!("{base}/chatfiles"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await?;
    let status = resp.status();
    let answer: Value = resp.json().await?;
    let file = &answer["entities"][0];
    let Some(url) = file["url"].as_str() else {
        anyhow::bail!(
            "upload refused ({status}): {}",
            answer["error_description"].as_str().unwrap_or("?")
        );
    };
    let kind = match file["content_type"].as_str().unwrap_or("") {
        t if file["thumbnail"].is_string() && t.starts_with("image/") => "img",
        t if t.starts_with("audio/") => "audio",
        t if t.starts_with("video/") => "video",
        _ => "file",
    };
    Ok((kind, json!({"url": url, "filename": name})))
}

async fn token(http: &reqwest::Client, base: &str, body: Value) -> anyhow::Result<String> {
    let resp = http.post(format!("{base}/token")).json(&body).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    match body["access_token"].as_str() {
        Some(t) => Ok(t.to_string()),
        None => anyhow::bail!("token request failed ({status}): {body}"),
    }
}
