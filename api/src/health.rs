//! Health for load balancers and orchestrators, without a token and outside the envelope:
//!
//! - `GET /health`: a fixed `{"status":"ok"}` (kept for existing checks; touches nothing);
//! - `GET /health/live`: the process serves HTTP (200, or nothing at all): restart it if not;
//! - `GET /health/ready`: 200 when it can do its work, 503 naming what is wrong otherwise:
//!   the database answers a query within [`DATABASE_TIMEOUT`], every component that must
//!   run does (the gate, the bridge, and in a cluster the link to NATS), and the server is
//!   not shutting down. Send traffic to it only while ready.
//!
//! The components report themselves through [`Health`]: each is a flag its task raises when
//! it runs and lowers when it stops, so a component that died shows at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;

use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// The longest the readiness check waits for the database.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness looks at besides the database.
#[derive(Default)]
pub struct Health {
    components: std::sync::Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
    shutting_down: AtomicBool,
    checks: std::sync::Mutex<Vec<(&'static str, Check)>>,
}

/// A condition asked on each readiness check.
type Check = Box<dyn Fn() -> bool + Send + Sync>;

impl Health {
    /// A component that must run for the server to be ready; raise the flag it answers while
    /// it runs ([`Running`] lowers it when dropped).
    pub fn component(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, flag.clone()));
        flag
    }

    /// A condition asked on each readiness check (a cluster's link to NATS).
    pub fn check(&self, name: &'static str, ok: impl Fn() -> bool + Send + Sync + 'static) {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, Box::new(ok)));
    }

    /// From now on the server is not ready (it is draining to stop).
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Each component and check: `ok`, or what is wrong.
    fn report(&self) -> Vec<(&'static str, Result<(), String>)> {
        let mut report = Vec::new();
        for (name, flag) in self.components.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let state = if flag.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not running".to_string())
            };
            report.push((*name, state));
        }
        for (name, ok) in self.checks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            report.push((*name, if ok() { Ok(()) } else { Err("down".to_string()) }));
        }
        if self.shutting_down.load(Ordering::Relaxed) {
            report.push(("shutdown", Err("shutting down".to_string())));
        }
        report
    }
}

/// Holds a component's flag raised while alive: lowered when the component's task ends,
/// however it ends.
pub struct Running(Arc<AtomicBool>);

impl Running {
    pub fn new(flag: Arc<AtomicBool>) -> Running {
        flag.store(true, Ordering::Relaxed);
        Running(flag)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(live))
        .routes(routes!(ready))
}

/// What `/health` and `/health/live` answer.
#[derive(Serialize, ToSchema)]
struct HealthStatus {
    /// `ok` (`/health`), `live` (`/health/live`).
    status: String,
}

/// What `/health/ready` answers.
#[derive(Serialize, ToSchema)]
struct Readiness {
    /// `ready` or `not ready`.
    status: String,
    /// Each component: `ok`, or why it is not.
    #[schema(value_type = std::collections::HashMap<String, String>)]
    checks: Map<String, Value>,
}

/// Answers `ok` without touching the database (the oldest check; kept for existing probes).
#[utoipa::path(get, path = "/health", tag = "health", security(()),
    responses((status = 200, description = "The process answers", body = HealthStatus)))]
async fn health() -> Json<HealthStatus> {
    Json(HealthStatus { status: "ok".into() })
}

/// Liveness: the process answers HTTP; restart it if not.
#[utoipa::path(get, path = "/health/live", tag = "health", security(()),
    responses((status = 200, description = "The process answers", body = HealthStatus)))]
async fn live() -> Json<HealthStatus> {
    Json(HealthStatus { status: "live".into() })
}

/// Readiness: the database answers, the gate and the bridge run, and the server is not
/// shutting down; a load balancer sends no traffic while it answers 503.
#[utoipa::path(get, path = "/health/ready", tag = "health", security(()),
    responses(
        (status = 200, description = "Ready for traffic", body = Readiness),
        (status = 503, description = "Not ready: the checks say why", body = Readiness),
    ))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database = match tokio::time::timeout(DATABASE_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            // The cause goes to the log; the open port says only that it failed.
            tracing::warn!(error = %e, "readiness: the database does not answer");
            Err("unreachable".to_string())
        }
        Err(_) => Err(format!("no answer within {} s", DATABASE_TIMEOUT.as_secs())),
    };
    let mut checks = Map::new();
    let mut ready = true;
    for (name, state) in std::iter::once(("database", database)).chain(state.health.report()) {
        ready &= state.is_ok();
        checks.insert(name.to_string(), json!(state.err().unwrap_or_else(|| "ok".to_string())));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if ready { "ready" } else { "not ready" };
    let status_word = word.to_string();
    (
        status,
        Json(Readiness {
            status: status_word,
            checks,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_that_stops_and_a_shutdown_make_it_not_ready() {
        let health = Health::default();
        let flag = health.component("bridge");
        assert_eq!(health.report(), vec![("bridge", Err("not running".to_string()))]);
        let running = Running::new(flag);
        assert_eq!(health.report(), vec![("bridge", Ok(()))]);
        drop(running);
        assert_eq!(health.report()[0].1, Err("not running".to_string()));

        let health = Health::default();
        health.check("cluster", || true);
        assert_eq!(health.report(), vec![("cluster", Ok(()))]);
        health.shutting_down();
        assert_eq!(
            health.report(),
            vec![("cluster", Ok(())), ("shutdown", Err("shutting down".to_string()))]
        );
    }
}
