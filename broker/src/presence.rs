//! Presence from the gate's own bookkeeping: rumqttd tells nobody about connects and
//! disconnects, but every device connection passes through the gate.
//!
//! A user is online while any of their devices is connected. Each change of a user's device
//! count is published, retained, on `chat/{org}/{app}/presence/{user}` as
//! `{"user","status":"online"|"offline","devices":N,"last_seen":ms}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rumqttc::{AsyncClient, QoS};

/// A user, as the gate knows them after CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserKey {
    pub org: String,
    pub app: String,
    pub user: String,
}

/// Counts connected devices per user and publishes changes.
#[derive(Clone)]
pub struct Presence {
    counts: Arc<Mutex<HashMap<UserKey, usize>>>,
    publisher: AsyncClient,
}

impl Presence {
    /// Starts the presence publisher: an internal MQTT client of the embedded broker.
    pub fn start(broker: &crate::EmbeddedBroker) -> Presence {
        let options = broker.client_options(&format!("chatd-presence-{}", store::tokens::random_secret(8)));
        let (publisher, mut eventloop) = AsyncClient::new(options, 10_000);
        tokio::spawn(async move {
            loop {
                if let Err(e) = eventloop.poll().await {
                    tracing::warn!(error = %e, "presence publisher lost the broker; reconnecting");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        });
        Presence {
            counts: Arc::default(),
            publisher,
        }
    }

    /// Records a device connection; the returned guard records the disconnection when it
    /// is dropped, however the connection ends.
    pub fn connected(&self, user: UserKey) -> PresenceGuard {
        self.change(&user, 1);
        PresenceGuard {
            presence: self.clone(),
            user,
        }
    }

    /// How many devices of a user are connected.
    pub fn devices(&self, user: &UserKey) -> usize {
        self.counts.lock().unwrap().get(user).copied().unwrap_or(0)
    }

    fn change(&self, user: &UserKey, delta: isize) {
        let mut counts = self.counts.lock().unwrap();
        let count = counts.entry(user.clone()).or_insert(0);
        *count = count.saturating_add_signed(delta);
        let devices = *count;
        if devices == 0 {
            counts.remove(user);
        }
        let payload = serde_json::json!({
            "user": user.user,
            "status": if devices > 0 { "online" } else { "offline" },
            "devices": devices,
            "last_seen": store::now_ms(),
        });
        // Published under the lock so that the retained value follows the count's order.
        let topic = store::topics::presence(&user.org, &user.app, &user.user);
        if let Err(e) = self
            .publisher
            .try_publish(topic, QoS::AtLeastOnce, true, payload.to_string())
        {
            tracing::warn!(error = %e, user = %user.user, "presence update dropped");
        }
    }
}

/// Marks one device connection; dropping it marks the disconnection.
pub struct PresenceGuard {
    presence: Presence,
    user: UserKey,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.change(&self.user, -1);
    }
}
