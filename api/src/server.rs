//! The HTTP server loop: our own accept loop over hyper instead of `axum::serve`, because
//! `axum::serve` holds a connection for as long as the client likes. A client that sent
//! half a request header was kept forever (about 125 KB each); 20,000 of them exhausted the
//! process's open-files limit, and with it the MQTT listeners too.
//!
//! Limits (all in [`ApiSettings`]):
//!
//! - **connections**: at most `max_connections` at once. Over it, a new connection is
//!   accepted, answered `503` (`Connection: close`) at once and closed, so the listener's
//!   backlog keeps draining and nobody waits on a connection that will not be served;
//! - **header**: a request's header must arrive complete within `header_timeout`, counted
//!   from the connection's opening for its first request and from the first byte for later
//!   ones; else the connection is closed (there is nothing to answer yet);
//! - **request**: reading the body and handling the request must end within
//!   `request_timeout`; else `408` and the connection is closed. A file transfer
//!   (`/{org}/{app}/chatfiles…`) has `transfer_timeout` instead, counted until the last byte
//!   of its answer is written (a download is its answer's body);
//! - **idle**: a keep-alive connection with no request under way is closed after
//!   `idle_timeout`;
//! - **body**: at most `max_body_bytes` (`413`), enforced by the router;
//! - **header size**: hyper's read buffer is 64 KiB, so a header larger than that is
//!   refused (`431`).
//!
//! A watchdog per connection enforces header and idle times from what the connection does:
//! its reads (through [`Tracked`]) and the requests hyper hands to the router.
//!
//! https (`api.tls`) is the same server behind a TLS handshake, which must end within the
//! header timeout; both listeners share the connection cap.
//!
//! Shutdown: stop accepting, let each connection finish the request under way (idle ones
//! close at once), then return.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response};
use axum::response::IntoResponse;
use axum::Router;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::{ApiError, ApiSettings};

/// hyper's read buffer per connection, which also bounds a request's header.
const MAX_BUF: usize = 64 * 1024;
/// How long a connection that is being closed for a timeout may take to finish writing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` (and on `tls`, https, if given) within the limits of
/// `settings` until `shutdown` turns true, then finishes requests in flight. Both listeners
/// share the connection cap.
pub async fn run(
    listener: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
    router: Router,
    settings: ApiSettings,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let max = settings.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let limits = Arc::new(settings);
    let (tls_listener, acceptor) = match tls {
        Some((listener, acceptor)) => (Some(listener), Some(acceptor)),
        None => (None, None),
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted.map(|pair| (pair, false)),
            accepted = accept_opt(tls_listener.as_ref()) => accepted.map(|pair| (pair, true)),
            _ = stopped(&mut shutdown) => break,
        };
        let ((stream, peer), secure) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if secure {
                // Nothing can be said before a handshake that would cost what the cap saves.
                drop(stream);
            } else {
                refuse_busy(stream);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, limits, shutdown) = (router.clone(), limits.clone(), shutdown.clone());
        let acceptor = acceptor.clone().filter(|_| secure);
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(stream, peer, router, &limits, shutdown).await,
                // The handshake is part of the first request's header time.
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, router, &limits, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "API TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                },
            }
            drop(slot);
        });
    }
    drop(listener);
    drop(tls_listener);
    // Every connection gives its slot back when it ends.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// Accepts on `listener`, or waits for ever when there is none.
async fn accept_opt(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone). Holds no borrow of the
/// channel afterwards, so it can sit in a `select!` of a future that must be `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Over the connection cap: a 503 written without waiting, then close.
fn refuse_busy(stream: TcpStream) {
    let body = crate::error::error_body(
        "service_unavailable",
        "the server has too many connections open; retry later",
    )
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
    tracing::debug!("API connection refused: at max_connections");
}

/// What a connection is doing, for its watchdog.
const HEAD: u8 = 0;
const IDLE: u8 = 1;
const BUSY: u8 = 2;

/// A connection's state and since when (milliseconds after `epoch`).
struct Activity {
    epoch: Instant,
    state: AtomicU8,
    since_ms: AtomicU64,
    /// How long the request under way may take (the request or the transfer timeout).
    busy_limit_ms: AtomicU64,
    /// Wakes the watchdog when the state changes, so it sleeps to the right deadline.
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            // The first request's header is due from the moment the connection opens.
            state: AtomicU8::new(HEAD),
            since_ms: AtomicU64::new(0),
            busy_limit_ms: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn set(&self, state: u8) {
        self.since_ms.store(self.now_ms(), Ordering::SeqCst);
        self.state.store(state, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Bytes arrived: if the connection was idle, a request header has begun.
    fn read_some(&self) {
        if self.state.load(Ordering::SeqCst) == IDLE {
            self.since_ms.store(self.now_ms(), Ordering::SeqCst);
            self.state.store(HEAD, Ordering::SeqCst);
            self.changed.notify_one();
        }
    }

    /// The current state and when its time runs out.
    fn deadline(&self, limits: &ApiSettings) -> (u8, Instant) {
        let state = self.state.load(Ordering::SeqCst);
        let since = self.epoch + Duration::from_millis(self.since_ms.load(Ordering::SeqCst));
        let limit = match state {
            HEAD => limits.header_timeout,
            IDLE => limits.idle_timeout,
            // The handler is cut at its timeout (408); this only catches a connection stuck
            // after that.
            _ => Duration::from_millis(self.busy_limit_ms.load(Ordering::SeqCst)) + CLOSE_GRACE,
        };
        (state, since + limit)
    }
}

/// Marks a request as under way until dropped (the handler finished, or was dropped
/// with the connection).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>, limit: Duration) -> Busy {
        activity.busy_limit_ms.store(limit.as_millis() as u64, Ordering::SeqCst);
        activity.set(BUSY);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(IDLE);
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    limits: &Arc<ApiSettings>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let (activity, limits) = (activity.clone(), limits.clone());
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let transfer = crate::files::is_transfer(request.uri().path());
            let request_timeout = if transfer {
                limits.transfer_timeout
            } else {
                limits.request_timeout
            };
            let busy = Busy::start(&activity, request_timeout);
            let mut router = router.clone();
            async move {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                let answer =
                    tokio::time::timeout(request_timeout, tower_service::Service::call(&mut router, request)).await;
                let response = match answer {
                    // A download's body is the transfer: the request stays under way (and
                    // under the transfer timeout) until its last byte is written.
                    Ok(Ok(response)) if transfer => response.map(|body| holding(body, busy)),
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        let mut response = ApiError::RequestTimeout(format!(
                            "the request was not received and handled within {} ms",
                            request_timeout.as_millis()
                        ))
                        .into_response();
                        // The body may be half read: this connection cannot carry another.
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        response
                    }
                };
                Ok::<Response<axum::body::Body>, Infallible>(response)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(MAX_BUF)
        // The watchdog below times headers, so hyper needs no timer of its own.
        .header_read_timeout(None);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    loop {
        let (state, deadline) = activity.deadline(limits);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "API connection ended with an error");
                }
                return;
            }
            _ = activity.changed.notified() => continue,
            _ = tokio::time::sleep_until(deadline) => {
                // The state may have moved on while we slept: look again.
                if activity.deadline(limits) != (state, deadline) {
                    continue;
                }
                let what = match state { HEAD => "header", IDLE => "idle", _ => "request" };
                tracing::debug!(%peer, timeout = what, "API connection closed: timeout");
                if state == HEAD {
                    // Nothing can be answered to half a request: just close.
                    return;
                }
                break;
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    // Finish the request under way, if any, then close; an idle connection closes at once.
    connection.as_mut().graceful_shutdown();
    let grace = if *shutdown.borrow() {
        limits.request_timeout + CLOSE_GRACE
    } else {
        CLOSE_GRACE
    };
    let _ = tokio::time::timeout(grace, connection).await;
}

/// `body`, keeping `guard` alive until its last byte is taken (or the body is dropped with
/// its connection): for what a transfer holds while it lasts.
pub(crate) fn holding<G: Send + Sync + 'static>(body: axum::body::Body, guard: G) -> axum::body::Body {
    axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _ = &guard;
        chunk
    }))
}

/// The connection's socket (plain or TLS), telling its [`Activity`] when bytes arrive.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read_some();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
