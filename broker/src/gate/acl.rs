//! The topic ACL: what a device may publish to and subscribe to.
//!
//! Rules are exact-match: a device publishes only to its own outbox, and subscribes only to
//! its own inbox, to other users' presence topics of its own app, named one by one, and to
//! chatrooms of its own app, named one by one. Any wildcard, `$share`/`$SYS` prefix or other
//! tenant's topic fails the match, so no filter can reach another user's or another
//! tenant's messages. Presence and chatroom filters need a further check against the
//! database (blocks, membership), which the session makes. The checks are methods of the
//! connection's [`Identity`].

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

    /// What follows `chat/{org}/{app}/` in a topic of this identity's app. The checks below
    /// read the topic against the identity's names rather than against topics formatted at
    /// CONNECT: an idle connection holds no copy of them.
    fn in_app<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix("chat/")?
            .strip_prefix(self.org.as_str())?
            .strip_prefix('/')?
            .strip_prefix(self.app.as_str())?
            .strip_prefix('/')
    }

    /// `rest` (what follows the app's prefix) is `u/{user}/{end}` of this identity's user.
    fn is_own(&self, rest: &str, end: &str) -> bool {
        rest.strip_prefix("u/")
            .and_then(|rest| rest.strip_suffix(end))
            .and_then(|rest| rest.strip_suffix('/'))
            == Some(self.user.as_str())
    }

    /// The user's own inbox.
    pub fn is_inbox(&self, topic: &str) -> bool {
        self.in_app(topic).is_some_and(|rest| self.is_own(rest, "in"))
    }

    /// Room and presence topics are delivered only while the connection's admission to
    /// them stands (see the session's `admitted`).
    pub fn needs_admission(&self, topic: &str) -> bool {
        self.in_app(topic)
            .is_some_and(|rest| rest.starts_with("room/") || rest.starts_with("presence/"))
    }

    /// Devices publish only to their user's outbox.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.in_app(topic).is_some_and(|rest| self.is_own(rest, "out"))
    }

    /// Devices subscribe to their user's inbox, to one user's presence at a time, and to
    /// one chatroom at a time.
    pub fn classify(&self, filter: &str) -> FilterAccess {
        let valid = |name: &str| store::names::validate_name("name", name).is_ok();
        let Some(rest) = self.in_app(filter) else {
            return FilterAccess::Denied;
        };
        if self.is_own(rest, "in") {
            FilterAccess::Inbox
        } else if let Some(user) = rest.strip_prefix("presence/").filter(|u| valid(u)) {
            FilterAccess::Presence(user.to_string())
        } else if let Some(room) = rest.strip_prefix("room/").filter(|r| valid(r)) {
            FilterAccess::Room(room.to_string())
        } else {
            FilterAccess::Denied
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            org: "demo".into(),
            app: "chat".into(),
            app_id: "a1".into(),
            user: "alice".into(),
            device: "phone".into(),
            token_expires: i64::MAX,
        }
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
            "chat/demo/chat/u/alicex/out",
            "chat/demo/chat/u/xalice/out",
            "chat/demo/chat/u//alice/out",
            "chat/demo/chatx/u/alice/out",
            "chat/demox/chat/u/alice/out",
            "chat/demo/u/alice/out",
            "chat/demo/chat/alice/out",
            "xchat/demo/chat/u/alice/out",
            "chat/demo/chat/u/alice/outx",
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
            "chat/demo/chat/u/alice/in/x",
            "chat/demo/chat/u/alice//in",
            "chat/demo/chat/presence/",
            "chat/demo/chat/room/",
            "chat/demo/chatroom/r1",
        ] {
            assert_eq!(acl.classify(f), FilterAccess::Denied, "{f} allowed");
        }
    }

    #[test]
    fn admission_is_needed_for_rooms_and_presence_of_the_own_app_only() {
        let acl = alice();
        assert!(acl.needs_admission("chat/demo/chat/room/r1"));
        assert!(acl.needs_admission("chat/demo/chat/presence/bob"));
        assert!(!acl.needs_admission("chat/demo/chat/u/alice/in"));
        assert!(!acl.needs_admission("chat/acme/chat/room/r1"));
        assert!(acl.is_inbox("chat/demo/chat/u/alice/in"));
        assert!(!acl.is_inbox("chat/demo/chat/u/bob/in"));
        assert!(!acl.is_inbox("chat/demo/chat/u/alice/out"));
    }
}
