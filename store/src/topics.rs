//! The MQTT topic contract (see `topics.md`), in one place.

/// Where a user's devices publish.
pub fn outbox(org: &str, app: &str, user: &str) -> String {
    format!("chat/{org}/{app}/u/{user}/out")
}

/// Where the server delivers to a user's devices.
pub fn inbox(org: &str, app: &str, user: &str) -> String {
    format!("chat/{org}/{app}/u/{user}/in")
}

/// A user's retained presence.
pub fn presence(org: &str, app: &str, user: &str) -> String {
    format!("chat/{org}/{app}/presence/{user}")
}

/// The shared subscription through which bridges consume every outbox; several bridges
/// (in one process or many) split the traffic between them.
pub const OUTBOX_SHARED_FILTER: &str = "$share/bridge/chat/+/+/u/+/out";

/// The filter all outbox traffic is routed under inside rumqttd (for segment sizing).
pub const OUTBOX_FILTER: &str = "chat/+/+/u/+/out";

/// Splits `chat/{org}/{app}/u/{user}/{leaf}` into its parts.
pub fn parse_user_topic(topic: &str) -> Option<(&str, &str, &str, &str)> {
    let mut parts = topic.split('/');
    let (chat, org, app, u, user, leaf) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if chat != "chat" || u != "u" || parts.next().is_some() {
        return None;
    }
    Some((org, app, user, leaf))
}

/// Where a chatroom's messages are delivered, by the broker, to subscribed members.
pub fn room(org: &str, app: &str, room: &str) -> String {
    format!("chat/{org}/{app}/room/{room}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_topics() {
        assert_eq!(
            parse_user_topic("chat/demo/chat/u/alice/out"),
            Some(("demo", "chat", "alice", "out"))
        );
        assert_eq!(parse_user_topic("chat/demo/chat/u/alice/out/x"), None);
        assert_eq!(parse_user_topic("chat/demo/chat/presence/alice"), None);
    }
}
