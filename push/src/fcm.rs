//! FCM through the HTTP v1 API, with our own small OAuth2 client: a JWT signed with the
//! service account's key is exchanged for an access token (cached until shortly before it
//! expires), which authorizes `POST {endpoint}/v1/projects/{project}/messages:send`.
//! Both URLs are operator settings (`WorkerSettings::fcm_endpoint`, `fcm_token_uri`; tests
//! point them at a local fake), never taken from an app's key file.
//!
//! What a send comes to is shown to the app (`last_result` of a device binding), so it
//! carries the HTTP status and a code from a fixed list of Google's, never text of the
//! answer: whatever a server answers must not travel back to the tenant.

use std::time::{Duration, Instant};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::config::ServiceAccount;
use crate::{Delivery, PushSender};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
pub const DEFAULT_TOKEN_URI: &str = crate::config::GOOGLE_TOKEN_URI;

/// Error codes of FCM (`FcmError.errorCode`), of Google APIs (`error.status`) and of OAuth2
/// (`error`): the only words of an answer that may reach a result.
const KNOWN_CODES: &[&str] = &[
    "UNSPECIFIED_ERROR",
    "INVALID_ARGUMENT",
    "UNREGISTERED",
    "SENDER_ID_MISMATCH",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "THIRD_PARTY_AUTH_ERROR",
    "CANCELLED",
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "DATA_LOSS",
    "UNAUTHENTICATED",
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// `code` if it is one of [`KNOWN_CODES`], else nothing.
fn known(code: Option<&str>) -> &'static str {
    code.and_then(|c| KNOWN_CODES.iter().find(|k| **k == c))
        .copied()
        .unwrap_or("")
}

/// A network failure, by kind only (reqwest's message names the URL).
fn network(what: &str, e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    format!("{what}: {kind}")
}

pub struct Fcm {
    http: reqwest::Client,
    account: ServiceAccount,
    key: EncodingKey,
    endpoint: String,
    token_uri: String,
    token: Mutex<Option<(String, Instant)>>,
}

impl Fcm {
    /// A client for the app's service account, talking to the operator's `endpoint` and
    /// `token_uri` (the account's own `token_uri` is ignored).
    pub fn new(account: ServiceAccount, endpoint: &str, token_uri: &str) -> Result<Fcm, String> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Fcm {
            http,
            account,
            key,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token_uri: token_uri.to_string(),
            token: Mutex::new(None),
        })
    }

    /// A valid access token, from the cache or a fresh exchange.
    async fn access_token(&self) -> Result<String, Delivery> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let now = store::now_ms() / 1000;
        let claims = json!({"iss": self.account.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600});
        let assertion = encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| Delivery::Failed(format!("signing the OAuth2 assertion: {e}")))?;
        let response = self
            .http
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &assertion),
            ])
            .send()
            .await
            .map_err(|e| Delivery::Retry {
                reason: network("OAuth2 token exchange", &e),
                after: None,
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let code = known(body["error"].as_str());
            let reason = format!("OAuth2 token exchange: {status} {code}").trim_end().to_string();
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                Delivery::Retry { reason, after: None }
            } else {
                Delivery::Failed(reason)
            });
        }
        let token = body["access_token"]
            .as_str()
            .ok_or_else(|| Delivery::Failed("OAuth2 answer without access_token".into()))?;
        let ttl = body["expires_in"].as_u64().unwrap_or(3600).saturating_sub(60);
        *cached = Some((token.to_string(), Instant::now() + Duration::from_secs(ttl)));
        Ok(token.to_string())
    }
}

/// The v1 message for one token.
pub fn message(token: &str, push: &Value) -> Value {
    // FCM data values must be strings.
    let data: serde_json::Map<String, Value> = push["data"]
        .as_object()
        .map(|d| {
            d.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value::String(v.as_str().map_or_else(|| v.to_string(), str::to_string)),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let badge = push["badge"].as_u64().unwrap_or(0);
    json!({"message": {
        "token": token,
        "notification": {"title": push["title"], "body": push["body"]},
        "data": data,
        "android": {"notification": {"notification_count": badge}},
        "apns": {"payload": {"aps": {"badge": badge}}},
    }})
}

/// `403`, or `404 UNREGISTERED` when the answer had a known code.
fn answered(status: u16, code: &str) -> String {
    if code.is_empty() {
        status.to_string()
    } else {
        format!("{status} {code}")
    }
}

/// What an FCM answer means for the push.
pub fn classify(status: u16, body: &Value, retry_after: Option<Duration>) -> Delivery {
    let code = known(
        body["error"]["details"]
            .as_array()
            .and_then(|d| d.iter().find_map(|e| e["errorCode"].as_str()))
            .or_else(|| body["error"]["status"].as_str()),
    );
    match status {
        200..=299 => Delivery::Sent,
        429 | 500..=599 => Delivery::Retry {
            reason: answered(status, code),
            after: retry_after,
        },
        _ if code == "UNREGISTERED" || code == "INVALID_ARGUMENT" || status == 404 => {
            Delivery::InvalidToken(answered(status, code))
        }
        401 => Delivery::Retry {
            reason: "401: access token refused".into(),
            after: None,
        },
        _ => Delivery::Failed(answered(status, code)),
    }
}

#[async_trait::async_trait]
impl PushSender for Fcm {
    async fn send(&self, token: &str, push: &Value) -> Delivery {
        let access = match self.access_token().await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.endpoint, self.account.project_id
        );
        let response = match self
            .http
            .post(url)
            .bearer_auth(access)
            .json(&message(token, push))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Delivery::Retry {
                    reason: network("network", &e),
                    after: None,
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        if status == 401 {
            // The cached token may have been revoked: fetch a new one next time.
            *self.token.lock().await = None;
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        classify(status, &body, retry_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_answers() {
        let unregistered = json!({"error": {"status": "NOT_FOUND", "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}});
        assert!(matches!(classify(404, &unregistered, None), Delivery::InvalidToken(_)));
        assert!(matches!(
            classify(400, &json!({"error": {"status": "INVALID_ARGUMENT"}}), None),
            Delivery::InvalidToken(_)
        ));
        assert_eq!(classify(200, &json!({"name": "x"}), None), Delivery::Sent);
        let later = Some(Duration::from_secs(7));
        assert_eq!(
            classify(429, &json!({}), later),
            Delivery::Retry {
                reason: "429".into(),
                after: later
            }
        );
        assert!(matches!(classify(503, &json!({}), None), Delivery::Retry { .. }));
        assert!(matches!(
            classify(403, &json!({"error": {"status": "PERMISSION_DENIED"}}), None),
            Delivery::Failed(_)
        ));
    }

    #[test]
    fn answers_text_never_reaches_the_result() {
        let body =
            json!({"error": {"status": "secret-internal-data", "details": [{"errorCode": "db password hunter2"}]}});
        assert_eq!(classify(403, &body, None), Delivery::Failed("403".into()));
        assert_eq!(known(Some("UNREGISTERED")), "UNREGISTERED");
        assert_eq!(known(Some("unregistered, and more")), "");
    }

    #[test]
    fn builds_v1_messages() {
        let push = json!({"title": "alice", "body": "hi", "badge": 3, "data": {"conv": "u:alice:bob", "seq": 4}});
        let m = message("tok", &push);
        assert_eq!(m["message"]["token"], "tok");
        assert_eq!(m["message"]["data"]["seq"], "4", "data values must be strings");
        assert_eq!(m["message"]["android"]["notification"]["notification_count"], 3);
        assert_eq!(m["message"]["apns"]["payload"]["aps"]["badge"], 3);
    }
}
