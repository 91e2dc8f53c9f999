//! The API's one error type and its mapping to HTTP: a status and, in the platform's error
//! envelope, `{"error": code, "exception": …, "timestamp": …, "duration": …,
//! "error_description": text}` (the codes are the platform's: `illegal_argument`,
//! `duplicate_unique_property_exists`, `invalid_grant`, `unauthorized`, `forbidden_op`,
//! `service_resource_not_found`, …; the envelope's clock fields are added by
//! [`crate::envelope`]). Internal failures are logged in full and answered with a generic 500.
//!
//! Also the extractors every handler reads its input with, so that bad input gets an answer
//! in that shape naming what is wrong: [`JsonBody`] (the body, refused with 415 when sent as
//! something other than JSON, 413 when too large), [`parse_json`] and [`Query`] (errors
//! name the field: `body.limit: invalid type: string "abc", expected i64`).

use std::time::Duration;

use axum::async_trait;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// 400 `duplicate_unique_property_exists`, as the platform answers a name taken.
    #[error("{0}")]
    Conflict(String),
    /// 409 `conflict`: the request does not fit the resource's state (a tus upload's offset,
    /// the open uploads full); retrying after looking at the state may succeed.
    #[error("{0}")]
    OutOfStep(String),
    /// 400 `invalid_grant`: a wrong password or client secret at `POST /token`.
    #[error("{0}")]
    InvalidGrant(String),
    /// 405: the route exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the request (its body, or the handling of it) took longer than allowed.
    #[error("{0}")]
    RequestTimeout(String),
    /// 413: the body is larger than `max_body_bytes`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body was sent as something other than JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429 with `Retry-After`: too many failed attempts at a credential.
    #[error("{message}")]
    TooManyAttempts { message: String, retry_after: Duration },
    /// 503 with `Retry-After`: the server is at a limit it protects itself with.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        use store::Error as E;
        match e {
            E::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            E::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            e @ E::Invalid { .. } => ApiError::BadRequest(e.to_string()),
            E::Forbidden(why) | E::TooLate(why) => ApiError::Forbidden(why),
            E::BadCredentials => ApiError::InvalidGrant("invalid username or password".into()),
            E::BadToken(why) => ApiError::Unauthorized(format!("token {why}")),
            E::Database(e) => ApiError::Internal(e.to_string()),
            E::Sqlite(e) => ApiError::Internal(e.to_string()),
            E::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let (status, code) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "illegal_argument"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden_op"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "service_resource_not_found"),
            ApiError::Conflict(_) => (StatusCode::BAD_REQUEST, "duplicate_unique_property_exists"),
            ApiError::InvalidGrant(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            ApiError::OutOfStep(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "request_entity_too_large"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::TooManyAttempts { retry_after: after, .. } => {
                retry_after = Some(*after);
                (StatusCode::TOO_MANY_REQUESTS, "reach_limit")
            }
            ApiError::Unavailable(_) => {
                retry_after = Some(Duration::from_secs(1));
                (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error")
            }
        };
        let body = error_body(code, &self.to_string());
        let mut response = (status, Json(body)).into_response();
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(after)));
        }
        response
    }
}

impl ApiError {
    /// The error for an answer that came without a body (axum's 405, the connection
    /// layer's 413), so that it too gets the error envelope.
    pub fn from_status(status: StatusCode) -> ApiError {
        let reason = status.canonical_reason().unwrap_or("error").to_string();
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                ApiError::MethodNotAllowed("this route does not take this method (see the Allow header)".into())
            }
            StatusCode::NOT_FOUND => ApiError::NotFound("no such route".into()),
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the body is larger than this server accepts".into())
            }
            StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout(reason),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(reason),
            StatusCode::FORBIDDEN => ApiError::Forbidden(reason),
            StatusCode::INTERNAL_SERVER_ERROR => ApiError::Internal("an answer without a body".into()),
            s if s.is_server_error() => ApiError::Unavailable(reason),
            _ => ApiError::BadRequest(reason),
        }
    }
}

/// An error answer's body in the platform's error envelope; `duration` is 0 here and set by
/// [`crate::envelope`] for answers that pass through the router.
pub fn error_body(code: &str, description: &str) -> serde_json::Value {
    serde_json::json!({
        "error": code,
        "exception": exception(code),
        "timestamp": store::now_ms(),
        "duration": 0,
        "error_description": description,
    })
}

/// The `exception` field of an error answer: the class name the platform reports for
/// each code, so that clients that switch on it keep working.
pub fn exception(code: &str) -> &'static str {
    match code {
        "illegal_argument" => "java.lang.IllegalArgumentException",
        "duplicate_unique_property_exists" => {
            "org.apache.usergrid.persistence.exceptions.DuplicateUniquePropertyExistsException"
        }
        "invalid_grant" => "EasemobSecurityException",
        "unauthorized" => "EasemobSecurityException",
        "forbidden_op" => "com.easemob.group.exception.ForbiddenOpException",
        "service_resource_not_found" => "org.apache.usergrid.services.exceptions.ServiceResourceNotFoundException",
        "method_not_allowed" => "javax.ws.rs.NotAllowedException",
        "conflict" => "javax.ws.rs.ClientErrorException",
        "request_entity_too_large" => "javax.ws.rs.WebApplicationException",
        "unsupported_media_type" => "javax.ws.rs.NotSupportedException",
        "reach_limit" => "com.easemob.ratelimit.RateLimitException",
        "request_timeout" => "java.util.concurrent.TimeoutException",
        "service_unavailable" => "com.easemob.common.ServiceUnavailableException",
        _ => "java.lang.RuntimeException",
    }
}

/// A duration in whole seconds, rounded up (a `Retry-After` of 0 would invite a retry
/// that is refused again).
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Parses a JSON body, with an error that says what is wrong with it and where:
/// `body.limit: invalid type: string "abc", expected i64`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("a JSON body is required".into()));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            ApiError::BadRequest(format!("{}: {inner}", field("body", &path)))
        } else {
            ApiError::BadRequest(format!("invalid JSON body: {inner}"))
        }
    })?;
    json.end()
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// `body.limit`, `body.users[2].name`, or `body` for the whole.
fn field(root: &str, path: &str) -> String {
    match path {
        "." | "" => root.to_string(),
        p if p.starts_with('[') => format!("{root}{p}"),
        p => format!("{root}.{p}"),
    }
}

/// The request body, for routes that take JSON. A body sent with a `Content-Type` that is
/// not JSON (`application/json`, or any `…+json`) is refused with 415; a body without a
/// `Content-Type` is read as JSON. Larger than the router's body limit: 413.
pub struct JsonBody(pub Bytes);

#[async_trait]
impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(kind) = req.headers().get(header::CONTENT_TYPE) {
            let has_body = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_none_or(|len| len.as_bytes() != b"0");
            if has_body && !is_json(kind) {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "the body must be JSON (Content-Type: application/json), not {}",
                    kind.to_str().unwrap_or("(unreadable)")
                )));
            }
        }
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the body is larger than this server accepts".into())
            } else {
                ApiError::BadRequest(format!("reading the body: {}", e.body_text()))
            }
        })?;
        Ok(JsonBody(body))
    }
}

/// A body sent as JSON or, as the platform's metadata routes take it, as a form
/// (`application/x-www-form-urlencoded`: each field a string). Either way an object.
pub struct FormOrJson(pub serde_json::Map<String, serde_json::Value>);

#[async_trait]
impl<S: Send + Sync> FromRequest<S> for FormOrJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        if !form {
            let JsonBody(body) = JsonBody::from_request(req, state).await?;
            return parse_json(&body).map(FormOrJson);
        }
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the body is larger than this server accepts".into())
            } else {
                ApiError::BadRequest(format!("reading the body: {}", e.body_text()))
            }
        })?;
        Ok(FormOrJson(
            form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
                .collect(),
        ))
    }
}

/// `application/json`, `application/foo+json`, with any parameters (`; charset=utf-8`).
fn is_json(kind: &HeaderValue) -> bool {
    let Ok(kind) = kind.to_str() else { return false };
    let essence = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The query string, parsed into `T`, with errors that name the parameter:
/// `query.limit: invalid digit found in string`.
pub struct Query<T>(pub T);

#[async_trait]
impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let parser = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(parser).map(Query).map_err(|e| {
            let path = e.path().to_string();
            ApiError::BadRequest(format!("{}: {}", field("query", &path), e.into_inner()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Page {
        limit: i64,
        inner: Option<Vec<Inner>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse_json::<Page>(br#"{"limit":"abc"}"#).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"body.limit: invalid type: string "abc", expected i64 at line 1 column 14"#
        );
        let err = parse_json::<Page>(br#"{"limit":1,"inner":[{"name":1}]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("body.inner[0].name: invalid type: integer `1`"),
            "{err}"
        );
        let err = parse_json::<Page>(br#""x""#).unwrap_err().to_string();
        assert!(err.starts_with("body: invalid type: string \"x\""), "{err}");
        let err = parse_json::<Page>(b"{oops").unwrap_err().to_string();
        assert!(err.starts_with("invalid JSON body: "), "{err}");
        let err = parse_json::<Page>(br#"{"limit":1} x"#).unwrap_err().to_string();
        assert!(err.starts_with("invalid JSON body: trailing characters"), "{err}");
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
        ] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }
}
