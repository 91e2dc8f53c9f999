//! The platform's response envelope, added in one place so that no route can answer in
//! another shape.
//!
//! A backend written for the Agora Chat (Easemob) REST API reads every answer as
//!
//! ```json
//! {"action": "post", "application": "<app uuid>", "path": "/users",
//!  "uri": "http://host/org/app/users", "entities": [...], "data": {...},
//!  "timestamp": 1542795196515, "duration": 3,
//!  "organization": "org", "applicationName": "app"}
//! ```
//!
//! and every error as `{"error", "exception", "timestamp", "duration",
//! "error_description"}`. Handlers answer only their part (`entities`, `data`, `count`, …)
//! and [`wrap`] adds the rest to every JSON answer: `action` is the request's method unless
//! the handler named one, `path` the route below `/{org}/{app}`, `uri` the request's URL
//! under `api.public_url`, `params` the query string's parameters (each a list of values),
//! `duration` the milliseconds spent. An answer that is not JSON
//! (a file, a tus status, an empty 204) passes untouched, except that an error answered
//! without a body (axum's 405, a 413 from the connection layer) gets the error envelope.
//!
//! Not wrapped: a successful `POST /{org}/{app}/token`, which the platform
//! answers bare (`{"access_token", "expires_in", …}`). Health and the web app are routed
//! outside this layer (`health`, `web`).
//!
//! `application` is the app's id, known only once the caller's token or the token
//! route has found the app: they write it into the request's [`AppSlot`].

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::AppState;

/// Where the app's id is written by whoever finds the app while handling a request.
#[derive(Clone, Default)]
pub struct AppSlot(Arc<OnceLock<String>>);

impl AppSlot {
    pub fn set(&self, app_id: &str) {
        let _ = self.0.set(app_id.to_string());
    }
}

/// The middleware: see the module docs.
pub async fn wrap(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let full_path = req.uri().path().to_string();
    let params = req.uri().query().map(params);
    let slot = AppSlot::default();
    req.extensions_mut().insert(slot.clone());
    let response = next.run(req).await;

    let mut segments = full_path.trim_start_matches('/').splitn(3, '/');
    let (org, app, rest) = (segments.next(), segments.next(), segments.next());
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let failed = response.status().is_client_error() || response.status().is_server_error();
    if !is_json && !failed {
        return response;
    }
    if !failed && rest == Some("token") && method == Method::POST {
        return response;
    }
    if !is_json {
        // An error answered without our body (axum's 405, hyper's 413): give it the shape.
        // Its headers (Allow, Content-Range, tus's) stay.
        let status = response.status();
        let mut answer = crate::ApiError::from_status(status).into_response();
        *answer.status_mut() = status;
        for (name, value) in response.headers() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                answer.headers_mut().insert(name.clone(), value.clone());
            }
        }
        return finish_error(answer, started).await;
    }
    if failed {
        return finish_error(response, started).await;
    }

    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    answer
        .entry("action")
        .or_insert_with(|| json!(method.as_str().to_ascii_lowercase()));
    answer.entry("entities").or_insert_with(|| json!([]));
    answer.entry("properties").or_insert_with(|| json!({}));
    if let Some(id) = slot.0.get() {
        answer.insert("application".into(), json!(id));
    }
    if let (Some(org), Some(app)) = (org, app) {
        answer.insert("organization".into(), json!(org));
        answer.insert("applicationName".into(), json!(app));
        answer.insert("path".into(), json!(format!("/{}", rest.unwrap_or(""))));
    }
    answer.insert("uri".into(), json!(format!("{}{full_path}", state.files.links.base())));
    if let Some(params) = params {
        answer.entry("params").or_insert(params);
    }
    stamp(&mut answer, started);
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Adds `timestamp`, `duration` (and the `exception` named after the error code) to an
/// error answer.
async fn finish_error(response: Response, started: Instant) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let code = answer.get("error").and_then(Value::as_str).unwrap_or("").to_string();
    answer.insert("exception".into(), json!(crate::error::exception(&code)));
    answer.entry("error_description").or_insert_with(|| json!(""));
    stamp(&mut answer, started);
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
}

/// The query, as the platform echoes it: each parameter with the list of its values
/// (`{"limit": ["2"]}`).
fn params(query: &str) -> Value {
    let mut params = Map::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let values = params.entry(key.into_owned()).or_insert_with(|| json!([]));
        if let Value::Array(values) = values {
            values.push(json!(value.into_owned()));
        }
    }
    Value::Object(params)
}

fn stamp(answer: &mut Map<String, Value>, started: Instant) {
    answer.insert("timestamp".into(), json!(store::now_ms()));
    answer.insert("duration".into(), json!(started.elapsed().as_millis() as u64));
}
