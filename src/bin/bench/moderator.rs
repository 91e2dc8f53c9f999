//! A moderation endpoint for `bench chatd --moderation`: allows every message, answering at
//! once over keep-alive HTTP/1.1, so a run measures what moderation costs chatd (a batched,
//! signed request per app and the wait for it), not what a real moderator's checks cost.

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts the endpoint on a free port; answers its URL.
pub async fn start() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/moderate", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                if let Err(e) = serve(stream).await {
                    eprintln!("moderator: {e:#}");
                }
            });
        }
    });
    Ok(url)
}

async fn serve(mut stream: TcpStream) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        // The header.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .context("no content-length")?
            .trim()
            .parse()?;
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 64 * 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let request: serde_json::Value = serde_json::from_slice(&buf[head_end..head_end + length])?;
        buf.drain(..head_end + length);
        let count = request["messages"].as_array().map_or(0, Vec::len);
        let results = vec![serde_json::json!({"action": "allow"}); count];
        let body = serde_json::json!({ "results": results }).to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await?;
    }
}
