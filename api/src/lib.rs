//! The REST management API, in the resource model of the Agora/Easemob platform API:
//! everything lives under `/{org}/{app}/…`, JSON in and out, bearer tokens from
//! `POST /{org}/{app}/token`. See `docs/api.md` for every route.
//!
//! The port is open to anyone, so the server protects itself before any token is checked:
//! connection cap and header, body and idle timeouts ([`server`]), a body size limit,
//! throttled credential guessing ([`throttle`]) and a bound on concurrent argon2 work
//! (`store::tokens`).

mod auth;
pub(crate) mod channels;
pub mod cors;
mod envelope;
mod error;
mod export;
pub mod files;
pub mod health;
mod lifecycle;
mod messages;
mod moderation;
mod openapi;
mod paging;
pub mod prometheus;
mod push;
mod reactions;
mod sending;
mod server;
mod shared_files;
mod social;
mod throttle;
mod tokens;
mod uploads;
mod users;
pub mod web;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;

/// Token lifetimes and the limits the API protects itself with. Every field has a default
/// that suits a production server.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// A token's lifetime when the request names no `ttl`.
    pub app_token_ttl: Duration,
    pub user_token_ttl: Duration,
    /// The longest `ttl` a request may ask for (`None`: no limit, so `"ttl": 0` gives a
    /// token that does not expire, as on the platform).
    pub max_token_ttl: Option<Duration>,
    /// HTTP connections open at once; over it a new connection is answered 503 and closed.
    pub max_connections: usize,
    /// How long a request header may take to arrive complete (from the connection's
    /// opening for its first request, from its first byte for later ones).
    pub header_timeout: Duration,
    /// How long reading the body and handling a request may take (else 408).
    pub request_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// The largest request body (else 413).
    pub max_body_bytes: usize,
    /// Failed password or client-secret attempts per user or client before backoff.
    pub login_free_failures: u32,
    /// Failed attempts per caller address (whatever the user) before backoff.
    pub login_address_free_failures: u32,
    /// The first backoff; doubled with each further failure.
    pub login_backoff: Duration,
    /// The longest backoff; also how long a key is remembered after its last failure.
    pub login_max_backoff: Duration,
    /// The most users, clients and addresses the login throttle remembers.
    pub login_throttle_entries: usize,
    /// argon2 hashes or verifications at once in the process (19 MiB each).
    pub max_concurrent_hashes: usize,
    /// How long one credential check may take, its turn at the argon2 semaphore included
    /// (else 503).
    pub hash_timeout: Duration,
    /// Which web pages may call the API from a browser.
    pub cors: cors::CorsSettings,
    /// How long a file transfer (`/{org}/{app}/chatfiles…`) may take, instead of
    /// `request_timeout`; its body is streamed, under the files' own chunk timeout.
    pub transfer_timeout: Duration,
    /// The web chat app, when it is served.
    pub web: Option<web::WebSettings>,
    /// Prometheus metrics at `/metrics`, when on.
    pub metrics: Option<prometheus::MetricsSettings>,
    /// Where apps' webhooks may point (the operator's choice, checked on every URL).
    pub webhook_allow: hooks::guard::Allow,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            app_token_ttl: Duration::from_secs(24 * 3600),
            user_token_ttl: Duration::from_secs(7 * 24 * 3600),
            max_token_ttl: None,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            login_free_failures: 5,
            login_address_free_failures: 50,
            login_backoff: Duration::from_secs(1),
            login_max_backoff: Duration::from_secs(15 * 60),
            login_throttle_entries: 100_000,
            max_concurrent_hashes: store::tokens::DEFAULT_MAX_CONCURRENT_HASHES,
            hash_timeout: Duration::from_secs(5),
            transfer_timeout: Duration::from_secs(3600),
            cors: cors::CorsSettings::default(),
            web: None,
            metrics: None,
            webhook_allow: hooks::guard::Allow::default(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub tokens: store::tokens::Tokens,
    pub settings: ApiSettings,
    /// The live device connections: to close them, drop room subscriptions, send events.
    pub live: std::sync::Arc<dyn store::live::Live>,
    /// Where files are kept, their URLs and limits.
    pub files: files::Files,
    /// What readiness (`/health/ready`) looks at besides the database.
    pub health: Arc<health::Health>,
}

/// All routes. Each router has its own login throttle.
pub fn router(state: AppState) -> Router {
    let throttle = Arc::new(throttle::Throttle::new(&state.settings));
    let max_body = state.settings.max_body_bytes;
    let cors = state.settings.cors.layer();
    let web = state
        .settings
        .web
        .clone()
        .map(|settings| web::routes(settings).with_state(state.clone()));
    let (routes, document) = api_routes().split_for_parts();
    let (outside, outside_document) = outside_routes().split_for_parts();
    let document = Arc::new(openapi::document(document.merge_from(outside_document)));
    let health = outside.layer(Extension(document)).with_state(state.clone());
    let routes = routes
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn(prometheus::track))
        .layer(Extension(throttle))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), envelope::wrap))
        .with_state(state);
    // Health and the web app first, outside the envelope and CORS; everything else is the API.
    let api = with_cors(routes, cors);
    let outside = match web {
        Some(web) => health.merge(web),
        None => health,
    };
    outside.merge(api)
}

/// The API's routes, each with its description (`openapi`).
fn api_routes() -> OpenApiRouter<AppState> {
    api_modules()
        .into_iter()
        .fold(OpenApiRouter::new(), OpenApiRouter::merge)
}

/// The API's routes, a router per domain.
fn api_modules() -> Vec<OpenApiRouter<AppState>> {
    vec![
        tokens::routes(),
        webhooks::routes(),
        users::routes(),
        social::routes(),
        messages::routes(),
        lifecycle::routes(),
        sending::routes(),
        export::routes(),
        push::routes(),
        moderation::routes(),
        reactions::routes(),
        file_routes(),
        channels::routes(store::channels::ChannelKind::Group),
        channels::routes(store::channels::ChannelKind::Room),
    ]
}

/// Health, metrics and the document itself: outside the envelope, CORS and tokens.
fn outside_routes() -> OpenApiRouter<AppState> {
    outside_modules()
        .into_iter()
        .fold(OpenApiRouter::new(), OpenApiRouter::merge)
}

fn outside_modules() -> Vec<OpenApiRouter<AppState>> {
    vec![health::routes(), prometheus::routes(), openapi::routes()]
}

/// The OpenAPI 3.1 document of every route, as served at `/openapi.json`.
pub fn openapi_document() -> serde_json::Value {
    openapi::document(api_routes().into_openapi().merge_from(outside_routes().into_openapi()))
}

/// Puts CORS in front of `routes`: preflights (`OPTIONS` with
/// `Access-Control-Request-Method`) are answered before routing and every answer carries
/// the CORS headers. A bare `OPTIONS` (tus's discovery request) is not a preflight and
/// reaches its route: the CORS layer would take any `OPTIONS` for one.
fn with_cors(routes: Router, cors: tower_http::cors::CorsLayer) -> Router {
    use tower::ServiceExt;
    let guarded = routes.clone().layer(cors);
    Router::new().fallback(move |request: axum::extract::Request| {
        let (plain, guarded) = (routes.clone(), guarded.clone());
        async move {
            let preflight = request.method() == axum::http::Method::OPTIONS
                && request
                    .headers()
                    .contains_key(axum::http::header::ACCESS_CONTROL_REQUEST_METHOD);
            let bare_options = request.method() == axum::http::Method::OPTIONS && !preflight;
            let answer = if bare_options {
                plain.oneshot(request).await
            } else {
                guarded.oneshot(request).await
            };
            match answer {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    })
}

/// The file routes stream their bodies under their own limits (the app's largest file, the
/// quota, the chunk timeout), so the router's body limit does not apply to them.
fn file_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(files::routes())
        .merge(uploads::routes())
        .merge(shared_files::routes())
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(close_after_refusal))
}

/// A file route may refuse an upload before reading its body (a wrong offset, a full quota):
/// the connection then cannot carry another request, and the answer says so, so a client
/// does not send its next request on a connection the server is about to close.
async fn close_after_refusal(mut response: axum::response::Response) -> axum::response::Response {
    if response.status().is_client_error() || response.status().is_server_error() {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Serves the API on `listener` within the limits of `state.settings` until `shutdown`
/// turns true, finishing requests in flight. Also sets the process-wide argon2 limit.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    state: AppState,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    store::tokens::set_max_concurrent_hashes(state.settings.max_concurrent_hashes);
    let settings = state.settings.clone();
    server::run(listener, tls, router(state), settings, shutdown).await
}
