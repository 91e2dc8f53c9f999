//! Prometheus metrics at `GET /metrics`.
//!
//! Every crate records through the `metrics` facade (`metrics::counter!` and friends, each
//! name `chatd_…`); this module installs the process's one recorder
//! (`metrics-exporter-prometheus`, without its own HTTP listener) and renders it. Gauges
//! that are cheaper to read than to keep up to date (the database pool, the push queue)
//! are read at scrape time. docs/api.md lists every metric; labels are bounded (an op
//! class, a message type, a route pattern, a status class: never a user, a device or an
//! app id).
//!
//! Who may scrape: callers on the loopback interface, and anyone sending
//! `Authorization: Bearer <metrics.token>` when one is set. The numbers say how busy the
//! server is and how its apps use it, which is nobody else's business on a public port.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// Who may read `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    /// A bearer token that lets non-loopback callers scrape; `None`: loopback only.
    pub token: Option<String>,
}

/// Seconds buckets for latencies: from 100 µs (a commit on a fast disk) to 10 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch sizes, up to `bridge.max_batch` (1,024 by default) and beyond.
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// The process's recorder (one per process: tests start many servers in one, and they
/// share it). Installed on first use; its upkeep runs every 5 s.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZES))
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            })
            .expect("spawning the metrics upkeep thread");
        describe();
        handle
    })
}

/// What each metric means, shown as `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "chatd_mqtt_connections",
        "Device connections open, by transport and protocol version"
    );
    describe_counter!(
        "chatd_mqtt_connects_total",
        "CONNECTs by result: accepted, or why refused"
    );
    describe_counter!("chatd_mqtt_publishes_total", "Publishes from devices, by op class");
    describe_counter!("chatd_mqtt_deliveries_total", "Publishes written to devices");
    describe_counter!(
        "chatd_deliveries_dropped_total",
        "Live deliveries dropped (the device catches up with sync), by reason"
    );
    describe_counter!(
        "chatd_rate_limited_total",
        "Ops refused as over a device's budget, by op class"
    );
    describe_gauge!("chatd_bridge_waiting", "Publishes waiting for the bridge's next batch");
    describe_histogram!("chatd_bridge_batch_size", "Publishes per bridge batch");
    describe_histogram!(
        "chatd_bridge_batch_seconds",
        Unit::Seconds,
        "One bridge batch: checks, commit, acks and deliveries"
    );
    describe_histogram!(
        "chatd_bridge_commit_seconds",
        Unit::Seconds,
        "Storing one batch of messages (one transaction)"
    );
    describe_counter!("chatd_messages_stored_total", "Messages stored, by chat and type");
    describe_counter!(
        "chatd_messages_refused_total",
        "Sends and other ops refused, by error code"
    );
    describe_counter!("chatd_sync_pages_total", "Catch-up pages answered (sync)");
    describe_counter!("chatd_pushes_total", "Push notifications by provider and outcome");
    describe_gauge!("chatd_push_queue_depth", "Push jobs queued (read at scrape time)");
    describe_counter!(
        "chatd_webhooks_total",
        "Webhook attempts by event kind and outcome (delivered, failed, gone)"
    );
    describe_counter!(
        "chatd_webhooks_dropped_total",
        "Webhook events dropped after their last attempt"
    );
    describe_gauge!(
        "chatd_webhook_queue_depth",
        "Webhook events queued (read at scrape time)"
    );
    describe_counter!(
        "chatd_moderation_total",
        "Messages through apps' moderation, by outcome"
    );
    describe_histogram!(
        "chatd_moderation_seconds",
        Unit::Seconds,
        "One request to an app's moderation endpoint"
    );
    describe_gauge!(
        "chatd_db_pool_connections",
        "Database pool connections, by state (read at scrape time)"
    );
    describe_counter!(
        "chatd_http_requests_total",
        "REST requests by route pattern, method and status class"
    );
    describe_histogram!(
        "chatd_http_request_seconds",
        Unit::Seconds,
        "REST request handling time, by route pattern"
    );
}

pub(crate) fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(scrape))
}

/// The metrics in Prometheus's text format, from loopback or with the `metrics.token`.
#[utoipa::path(get, path = "/metrics", tag = "health",
    security(()),
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 403, description = "Neither from loopback nor with the metrics token", content_type = "text/plain", body = String),
        (status = 404, description = "Metrics are off (`metrics.enabled`)", content_type = "text/plain", body = String),
    ))]
async fn scrape(State(state): State<AppState>, peer: Option<ConnectInfo<SocketAddr>>, headers: HeaderMap) -> Response {
    let Some(settings) = &state.settings.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are off (metrics.enabled)").into_response();
    };
    let loopback = peer.is_some_and(|ConnectInfo(addr)| addr.ip().is_loopback());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !may_scrape(loopback, settings.token.as_deref(), bearer) {
        return (
            StatusCode::FORBIDDEN,
            "metrics: scrape from loopback, or send 'Authorization: Bearer <metrics.token>'",
        )
            .into_response();
    }
    let pool = state.store.pool();
    let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
    metrics::gauge!("chatd_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("chatd_db_pool_connections", "state" => "busy").set((size - idle).max(0.0));
    if let Ok(Ok(queued)) = tokio::time::timeout(Duration::from_secs(2), state.store.queued_pushes()).await {
        metrics::gauge!("chatd_push_queue_depth").set(queued as f64);
    }
    if let Ok(Ok(queued)) = tokio::time::timeout(Duration::from_secs(2), state.store.queued_webhook_events()).await {
        metrics::gauge!("chatd_webhook_queue_depth").set(queued as f64);
    }
    let handle = handle();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response()
}

/// Loopback callers may; others only with the configured token (compared in constant time).
fn may_scrape(loopback: bool, token: Option<&str>, bearer: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    loopback
        || match (token, bearer) {
            (Some(token), Some(given)) => bool::from(token.as_bytes().ct_eq(given.trim().as_bytes())),
            _ => false,
        }
}

/// Counts each REST request by its route pattern (`/:org/:app/users/:username`, never the
/// names in it), method and status class, and times it.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("chatd_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("chatd_http_request_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::may_scrape;

    #[test]
    fn only_loopback_or_the_token_may_scrape() {
        assert!(may_scrape(true, None, None));
        assert!(!may_scrape(false, None, None));
        assert!(!may_scrape(false, None, Some("anything")));
        assert!(!may_scrape(false, Some("s3cret"), None));
        assert!(!may_scrape(false, Some("s3cret"), Some("s3cre")));
        assert!(!may_scrape(false, Some("s3cret"), Some("s3cret-and-more")));
        assert!(may_scrape(false, Some("s3cret"), Some("s3cret")));
    }
}
