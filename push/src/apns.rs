//! APNs with token authentication, through the `a2` crate. `a2`'s endpoints are Apple's
//! own, so what is tested here is our side: the payload and headers we build, and what
//! each APNs answer means.

use a2::request::notification::{DefaultNotificationBuilder, NotificationBuilder, NotificationOptions};
use a2::{Client, ClientConfig, Endpoint, Error, ErrorReason, Priority, PushType, Response};
use serde_json::Value;

use crate::config::ApnsConfig;
use crate::{Delivery, PushSender};

pub struct Apns {
    client: Client,
    topic: String,
}

/// An `a2` client for the app's key.
pub fn client(config: &ApnsConfig) -> Result<Client, Error> {
    let endpoint = if config.sandbox {
        Endpoint::Sandbox
    } else {
        Endpoint::Production
    };
    Client::token(
        config.key_pem.as_bytes(),
        &config.key_id,
        &config.team_id,
        ClientConfig::new(endpoint),
    )
}

impl Apns {
    pub fn new(config: &ApnsConfig) -> Result<Apns, Error> {
        Ok(Apns {
            client: client(config)?,
            topic: config.topic.clone(),
        })
    }
}

/// The APNs payload and headers for one push, as `a2` will send them.
pub fn payload<'a>(
    token: &'a str,
    topic: &'a str,
    push: &'a Value,
) -> Result<a2::request::payload::Payload<'a>, Error> {
    let mut builder = DefaultNotificationBuilder::new().set_sound("default");
    if let Some(title) = push["title"].as_str() {
        builder = builder.set_title(title);
    }
    if let Some(body) = push["body"].as_str() {
        builder = builder.set_body(body);
    }
    if let Some(badge) = push["badge"].as_u64() {
        builder = builder.set_badge(badge.min(u32::MAX as u64) as u32);
    }
    let options = NotificationOptions {
        apns_topic: Some(topic),
        apns_push_type: Some(PushType::Alert),
        apns_priority: Some(Priority::High),
        ..Default::default()
    };
    let mut payload = builder.build(token, options);
    payload.add_custom_data("data", &push["data"])?;
    Ok(payload)
}

/// What an APNs answer means for the push.
pub fn classify(result: Result<Response, Error>) -> Delivery {
    match result {
        Ok(_) => Delivery::Sent,
        Err(Error::ResponseError(response)) => {
            let reason = response
                .error
                .as_ref()
                .map(|e| format!("{:?}", e.reason))
                .unwrap_or_default();
            let invalid = matches!(
                response.error.as_ref().map(|e| &e.reason),
                Some(ErrorReason::BadDeviceToken | ErrorReason::Unregistered | ErrorReason::DeviceTokenNotForTopic)
            );
            match response.code {
                410 => Delivery::InvalidToken(format!("410 {reason}")),
                _ if invalid => Delivery::InvalidToken(format!("{} {reason}", response.code)),
                429 | 500..=599 => Delivery::Retry {
                    reason: format!("{} {reason}", response.code),
                    after: None,
                },
                code => Delivery::Failed(format!("{code} {reason}")),
            }
        }
        Err(Error::ConnectionError(e)) => Delivery::Retry {
            reason: format!("connection: {e}"),
            after: None,
        },
        Err(Error::ClientError(e)) => Delivery::Retry {
            reason: format!("client: {e}"),
            after: None,
        },
        Err(Error::RequestTimeout(s)) => Delivery::Retry {
            reason: format!("timeout after {s} s"),
            after: None,
        },
        Err(e) => Delivery::Failed(e.to_string()),
    }
}

#[async_trait::async_trait]
impl PushSender for Apns {
    async fn send(&self, token: &str, push: &Value) -> Delivery {
        match payload(token, &self.topic, push) {
            Ok(p) => classify(self.client.send(p).await),
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use a2::request::payload::PayloadLike;
    use a2::ErrorBody;
    use serde_json::json;

    fn answer(code: u16, reason: Option<ErrorReason>) -> Result<Response, Error> {
        let response = Response {
            error: reason.map(|reason| ErrorBody {
                reason,
                timestamp: None,
            }),
            apns_id: None,
            code,
        };
        if code == 200 {
            Ok(response)
        } else {
            Err(Error::ResponseError(response))
        }
    }

    #[test]
    fn maps_answers() {
        assert_eq!(classify(answer(200, None)), Delivery::Sent);
        assert!(matches!(
            classify(answer(410, Some(ErrorReason::Unregistered))),
            Delivery::InvalidToken(_)
        ));
        assert!(matches!(
            classify(answer(400, Some(ErrorReason::BadDeviceToken))),
            Delivery::InvalidToken(_)
        ));
        assert!(matches!(
            classify(answer(429, Some(ErrorReason::TooManyRequests))),
            Delivery::Retry { .. }
        ));
        assert!(matches!(
            classify(answer(503, Some(ErrorReason::ServiceUnavailable))),
            Delivery::Retry { .. }
        ));
        assert!(matches!(
            classify(answer(403, Some(ErrorReason::InvalidProviderToken))),
            Delivery::Failed(_)
        ));
        assert!(matches!(
            classify(Err(Error::RequestTimeout(20))),
            Delivery::Retry { .. }
        ));
    }

    #[test]
    fn builds_payload_and_topic() {
        let push =
            json!({"title": "alice", "body": "hi there", "badge": 5, "data": {"conv": "u:alice:bob", "id": "m1"}});
        let p = payload("devtoken", "com.example.chat", &push).unwrap();
        assert_eq!(p.options.apns_topic, Some("com.example.chat"));
        assert!(matches!(p.options.apns_push_type, Some(PushType::Alert)));
        assert!(matches!(p.options.apns_priority, Some(Priority::High)));
        assert_eq!(p.device_token, "devtoken");
        let json: Value = serde_json::from_str(&p.to_json_string().unwrap()).unwrap();
        assert_eq!(json["aps"]["alert"]["title"], "alice");
        assert_eq!(json["aps"]["alert"]["body"], "hi there");
        assert_eq!(json["aps"]["badge"], 5);
        assert_eq!(json["aps"]["sound"], "default");
        assert_eq!(json["data"]["conv"], "u:alice:bob");
    }
}
