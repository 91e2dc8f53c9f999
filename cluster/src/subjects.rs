//! NATS subjects for what crosses nodes. All of them start with the cluster's prefix
//! (`[cluster] prefix`, default `chatd`), so several clusters can share one NATS.
//!
//! | subject | carries |
//! |---|---|
//! | `{p}.in.{org}.{app}.{user}` | deliveries on `chat/{org}/{app}/u/{user}/in` |
//! | `{p}.room.{org}.{app}.{room}` | deliveries on `chat/{org}/{app}/room/{room}` |
//! | `{p}.presence` | each node's device-count changes |
//! | `{p}.hb` | heartbeats: which nodes are alive |
//! | `{p}.ctl` | controls: kick, room revocation, hidden presence |
//! | `{p}.snap.{node}` | asks a node for its snapshot |
//! | `{p}.snapto.{node}` | a snapshot, for the node that asked |
//!
//! Names become subject tokens through [`token`], which escapes everything but
//! `A-Z a-z 0-9 _ -`: a `.` in a name would otherwise split it into two tokens, and
//! `org=a.b, app=c` would share a subject with `org=a, app=b.c`.

use std::fmt::Write;

/// Escapes a name into one subject token: bytes outside `A-Z a-z 0-9 _ -` become `~XX`
/// (hex). Injective, so two names never share a token.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "~{b:02X}");
        }
    }
    out
}

/// Whether a prefix can start subjects: dot-separated tokens of `A-Z a-z 0-9 _ -`.
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .split('.')
            .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
}

/// The subject that carries deliveries on an MQTT topic, for the topics that cross nodes
/// (inbox and room topics).
pub fn for_topic(prefix: &str, topic: &str) -> Option<String> {
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["chat", org, app, "u", user, "in"] => Some(inbox(prefix, org, app, user)),
        ["chat", org, app, "room", name] => Some(room(prefix, org, app, name)),
        _ => None,
    }
}

/// The subject of `chat/{org}/{app}/u/{user}/in`.
pub fn inbox(prefix: &str, org: &str, app: &str, user: &str) -> String {
    format!("{prefix}.in.{}.{}.{}", token(org), token(app), token(user))
}

/// The subject of `chat/{org}/{app}/room/{room}`.
pub fn room(prefix: &str, org: &str, app: &str, room: &str) -> String {
    format!("{prefix}.room.{}.{}.{}", token(org), token(app), token(room))
}

pub fn presence(prefix: &str) -> String {
    format!("{prefix}.presence")
}

pub fn heartbeat(prefix: &str) -> String {
    format!("{prefix}.hb")
}

pub fn control(prefix: &str) -> String {
    format!("{prefix}.ctl")
}

pub fn snapshot_request(prefix: &str, node: &str) -> String {
    format!("{prefix}.snap.{}", token(node))
}

pub fn snapshot_reply(prefix: &str, node: &str) -> String {
    format!("{prefix}.snapto.{}", token(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_share_a_subject() {
        assert_eq!(
            for_topic("chatd", "chat/demo/chat/u/alice/in").as_deref(),
            Some("chatd.in.demo.chat.alice")
        );
        assert_eq!(
            for_topic("chatd", "chat/demo/chat/room/r1").as_deref(),
            Some("chatd.room.demo.chat.r1")
        );
        assert_ne!(
            for_topic("chatd", "chat/a.b/c/u/x/in"),
            for_topic("chatd", "chat/a/b.c/u/x/in")
        );
        assert_eq!(token("a.b~c*>"), "a~2Eb~7Ec~2A~3E");
        assert_eq!(for_topic("chatd", "chat/demo/chat/presence/alice"), None);
        assert_eq!(for_topic("chatd", "chat/demo/chat/u/alice/out"), None);
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("chatd"));
        assert!(valid_prefix("prod.chatd-1"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a..b"));
        assert!(!valid_prefix("a.*"));
        assert!(!valid_prefix("a b"));
    }
}
