//! An app's push configuration (`PUT /{org}/{app}/push/config`): credentials for FCM and
//! APNs, and the template pushes are built from.
//!
//! Where pushes go is the operator's business, never the app's: the FCM endpoint and
//! token URI are server settings (`WorkerSettings`), APNs is Apple's. A key file's
//! `token_uri` was once used as is, so an app could make the server POST to an internal
//! address and read the reply back in `last_result`; now any other `token_uri` than
//! Google's is refused, and the worker ignores it anyway.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The stored configuration. Secrets stay in the database and are never shown back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    #[serde(default)]
    pub template: Template,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fcm: Option<FcmConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsConfig>,
}

/// FCM HTTP v1: a Google service-account key (the JSON file as it is downloaded).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    pub service_account: ServiceAccount,
    /// The `notifier_name` devices bind with for FCM (on the platform, the name of the
    /// uploaded credential, often the sender id); `fcm` and the project id always work.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notifier_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
    /// Other fields of the key file, kept as they are.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// The `token_uri` of every Google service-account key file.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

fn default_token_uri() -> String {
    GOOGLE_TOKEN_URI.into()
}

/// APNs token authentication: the `.p8` key, its id, the team id, the app's bundle id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    pub key_pem: String,
    pub key_id: String,
    pub team_id: String,
    pub topic: String,
    #[serde(default)]
    pub sandbox: bool,
    /// The `notifier_name` devices bind with for APNs; `apns` and the topic always work.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notifier_name: String,
}

/// How a push reads. Placeholders: `{from}` (the sender's nickname, or username), `{group}`
/// (the group's name, empty for one-to-one), `{preview}` (the message text, or a word for
/// its type, or nothing when previews are off).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Template {
    pub title: String,
    pub group_title: String,
    pub body: String,
    pub show_preview: bool,
    /// The body when previews are off.
    pub hidden_body: String,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            title: "{from}".into(),
            group_title: "{from} in {group}".into(),
            body: "{preview}".into(),
            show_preview: true,
            hidden_body: "New message".into(),
        }
    }
}

impl PushConfig {
    /// Parses and checks what an app sends.
    pub fn parse(value: &Value) -> Result<PushConfig, String> {
        let config: PushConfig = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        if let Some(fcm) = &config.fcm {
            let sa = &fcm.service_account;
            if sa.project_id.is_empty() || sa.client_email.is_empty() {
                return Err("fcm.service_account needs project_id and client_email".into());
            }
            if sa.token_uri != GOOGLE_TOKEN_URI {
                return Err(format!(
                    "fcm.service_account.token_uri: must be {GOOGLE_TOKEN_URI} (as in Google's key files) or absent; \
                     the server exchanges tokens only with the endpoint its operator configured"
                ));
            }
            // The project id goes into the FCM URL's path.
            if sa.project_id.contains("..")
                || !sa
                    .project_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == ':')
            {
                return Err("fcm.service_account.project_id: letters, digits, '-', '_', '.' and ':' only".into());
            }
            jsonwebtoken::EncodingKey::from_rsa_pem(sa.private_key.as_bytes())
                .map_err(|e| format!("fcm.service_account.private_key: {e}"))?;
        }
        if let Some(apns) = &config.apns {
            if apns.key_id.is_empty() || apns.team_id.is_empty() || apns.topic.is_empty() {
                return Err("apns needs key_id, team_id and topic".into());
            }
            crate::apns::client(apns).map_err(|e| format!("apns.key_pem: {e}"))?;
        }
        Ok(config)
    }

    /// The configuration without its secrets, for showing back.
    pub fn redacted(&self) -> Value {
        serde_json::json!({
            "template": self.template,
            "fcm": self.fcm.as_ref().map(|f| serde_json::json!({
                "project_id": f.service_account.project_id,
                "client_email": f.service_account.client_email,
                "token_uri": f.service_account.token_uri,
                "notifier_name": f.notifier_name,
            })),
            "apns": self.apns.as_ref().map(|a| serde_json::json!({
                "key_id": a.key_id, "team_id": a.team_id, "topic": a.topic, "sandbox": a.sandbox,
                "notifier_name": a.notifier_name,
            })),
        })
    }
}
