//! The topic ACL: what a device may publish to and subscribe to.
//!
//! Rules are exact-match: a device publishes only to its own outbox, and subscribes only to
//! its own inbox, to other users' presence topics of its own app, named one by one, and to
//! chatrooms of its own app, named one by one. Any wildcard, `$share`/`$SYS` prefix or other
//! tenant's topic fails the match, so no filter can reach another user's or another
//! tenant's messages. Presence and chatroom filters need a further check against the
//! database (blocks, membership), which the session makes.

/// Who is on the other end of a connection, once their token has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub org: String,
    pub app: String,
    pub app_id: String,
    pub user: String,
    pub device: String,
    /// When the token the device connected with expires (seconds since the epoch).
    pub token_expires: i64,
}

impl Identity {
    pub fn outbox(&self) -> String {
        store::topics::outbox(&self.org, &self.app, &self.user)
    }

    pub fn inbox(&self) -> String {
        store::topics::inbox(&self.org, &self.app, &self.user)
    }
}

/// What a SUBSCRIBE filter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterAccess {
    /// The device's own inbox.
    Inbox,
    /// One user's presence: allowed unless that user blocked this one.
    Presence(String),
    /// One chatroom: allowed to its current members.
    Room(String),
    Denied,
}

/// Topics a connection may use, computed once at CONNECT.
#[derive(Debug, Clone)]
pub struct Acl {
    outbox: String,
    inbox: String,
    presence_prefix: String,
    room_prefix: String,
}

impl Acl {
    pub fn new(id: &Identity) -> Acl {
        Acl {
            outbox: id.outbox(),
            inbox: id.inbox(),
            presence_prefix: format!("chat/{}/{}/presence/", id.org, id.app),
            room_prefix: format!("chat/{}/{}/room/", id.org, id.app),
        }
    }

    /// Room and presence topics are delivered only while the connection's admission to
    /// them stands (see the session's `admitted`).
    pub fn needs_admission(&self, topic: &str) -> bool {
        topic.starts_with(&self.room_prefix) || topic.starts_with(&self.presence_prefix)
    }

    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    /// Devices publish only to their user's outbox.
    pub fn may_publish(&self, topic: &str) -> bool {
        topic == self.outbox
    }

    /// Devices subscribe to their user's inbox, to one user's presence at a time, and to
    /// one chatroom at a time.
    pub fn classify(&self, filter: &str) -> FilterAccess {
        let valid = |name: &str| store::names::validate_name("name", name).is_ok();
        if filter == self.inbox {
            FilterAccess::Inbox
        } else if let Some(user) = filter.strip_prefix(&self.presence_prefix).filter(|u| valid(u)) {
            FilterAccess::Presence(user.to_string())
        } else if let Some(room) = filter.strip_prefix(&self.room_prefix).filter(|r| valid(r)) {
            FilterAccess::Room(room.to_string())
        } else {
            FilterAccess::Denied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Acl {
        Acl::new(&Identity {
            org: "demo".into(),
            app: "chat".into(),
            app_id: "a1".into(),
            user: "alice".into(),
            device: "phone".into(),
            token_expires: i64::MAX,
        })
    }

    #[test]
    fn publishes_only_to_own_outbox() {
        let acl = alice();
        assert!(acl.may_publish("chat/demo/chat/u/alice/out"));
        for t in [
            "chat/demo/chat/u/bob/out",
            "chat/demo/chat/u/alice/in",
            "chat/demo/chat/presence/alice",
            "chat/acme/chat/u/alice/out",
            "chat/demo/chat/u/alice/out/x",
            "",
        ] {
            assert!(!acl.may_publish(t), "{t} allowed");
        }
    }

    #[test]
    fn refuses_wildcards_and_foreign_topics() {
        let acl = alice();
        assert_eq!(acl.classify("chat/demo/chat/u/alice/in"), FilterAccess::Inbox);
        assert_eq!(
            acl.classify("chat/demo/chat/presence/bob"),
            FilterAccess::Presence("bob".into())
        );
        assert_eq!(acl.classify("chat/demo/chat/room/r1"), FilterAccess::Room("r1".into()));
        for f in [
            "#",
            "+",
            "chat/#",
            "chat/demo/chat/u/+/in",
            "chat/demo/chat/u/bob/in",
            "chat/demo/chat/u/alice/out",
            "chat/demo/chat/u/alice/#",
            "chat/demo/chat/presence/+",
            "chat/demo/chat/presence/#",
            "chat/acme/chat/u/alice/in",
            "chat/acme/chat/presence/bob",
            "$share/g/chat/demo/chat/u/alice/in",
            "$SYS/#",
            "chat/+/chat/u/alice/in",
            "chat/demo/chat/room/+",
            "chat/demo/chat/room/#",
            "chat/acme/chat/room/r1",
            "chat/demo/chat/room/r1/x",
        ] {
            assert_eq!(acl.classify(f), FilterAccess::Denied, "{f} allowed");
        }
    }
}
