//! The byte streams devices reach the gate over: plain TCP, TLS, and WebSocket (binary
//! frames carrying MQTT, as MQTT.js and browsers speak it), plain or over TLS.

use std::io;

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// One device connection's transport.
pub enum ClientIo {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WebSocketStream<TokioAdapter<TcpStream>>>),
    Wss(Box<WebSocketStream<TokioAdapter<TlsStream<TcpStream>>>>),
}

impl ClientIo {
    /// Reads what is available into `buf`; `Ok(0)` means the device closed the connection.
    /// Cancel-safe: nothing read is lost if the future is dropped. `buf` may be empty and
    /// hold no memory while the device is silent: it grows only when bytes arrive.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ClientIo::Tcp(s) => read_through_stack(s, buf).await,
            ClientIo::Tls(s) => read_through_stack(s, buf).await,
            ClientIo::Ws(ws) => ws_read(ws, buf).await,
            ClientIo::Wss(ws) => ws_read(ws, buf).await,
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            ClientIo::Tcp(s) => s.write_all(bytes).await,
            ClientIo::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            ClientIo::Ws(ws) => ws_write(ws, bytes).await,
            ClientIo::Wss(ws) => ws_write(ws, bytes).await,
        }
    }

    pub async fn close(&mut self) {
        let _ = match self {
            ClientIo::Tcp(s) => s.shutdown().await,
            ClientIo::Tls(s) => s.shutdown().await,
            ClientIo::Ws(ws) => ws.close(None).await.map_err(io::Error::other),
            ClientIo::Wss(ws) => ws.close(None).await.map_err(io::Error::other),
        };
    }
}

/// The most one read takes from a TCP or TLS stream.
const READ_CHUNK: usize = 8 * 1024;

/// Reads into a buffer on the stack and copies what came into `buf`. Reading straight into
/// `buf` would need room in it before anything arrives, and most connections wait for
/// their next packet most of the time: held that way, the room is memory every idle
/// connection pays for. The copy is of bytes that were just read, and small.
async fn read_through_stack<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        std::task::Poll::Ready(Ok(read.filled().len()))
    })
    .await
}

async fn ws_read<S>(ws: &mut WebSocketStream<TokioAdapter<S>>, buf: &mut BytesMut) -> io::Result<usize>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(0),
            Some(Ok(Message::Binary(data))) if data.is_empty() => continue,
            Some(Ok(Message::Binary(data))) => {
                buf.extend_from_slice(&data);
                return Ok(data.len());
            }
            // Pings are answered by the WebSocket layer itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(_))) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "MQTT over WebSocket needs binary frames",
                ))
            }
            Some(Err(e)) => return Err(io::Error::other(e)),
        }
    }
}

async fn ws_write<S>(ws: &mut WebSocketStream<TokioAdapter<S>>, bytes: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::binary(bytes.to_vec())).await.map_err(io::Error::other)
}
