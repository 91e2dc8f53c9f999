//! The topic ACL: what a device may publish to and subscribe to.
//!
//! Rules are exact-match: a device publishes only to its own outbox, and subscribes only to
//! its own inbox and to other users' presence topics of its own app, named one by one. Any
//! wildcard, `$share`/`$SYS` prefix or other tenant's topic fails the match, so no filter can
//! reach another user's or another tenant's messages.

/// Who is on the other end of a connection, once their token has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub org: String,
    pub app: String,
    pub user: String,
    pub device: String,
}

impl Identity {
    pub fn outbox(&self) -> String {
        store::topics::outbox(&self.org, &self.app, &self.user)
    }

    pub fn inbox(&self) -> String {
        store::topics::inbox(&self.org, &self.app, &self.user)
    }
}

/// Topics a connection may use, computed once at CONNECT.
#[derive(Debug, Clone)]
pub struct Acl {
    outbox: String,
    inbox: String,
    presence_prefix: String,
}

impl Acl {
    pub fn new(id: &Identity) -> Acl {
        Acl {
            outbox: id.outbox(),
            inbox: id.inbox(),
            presence_prefix: format!("chat/{}/{}/presence/", id.org, id.app),
        }
    }

    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    /// Devices publish only to their user's outbox.
    pub fn may_publish(&self, topic: &str) -> bool {
        topic == self.outbox
    }

    /// Devices subscribe to their user's inbox, and to one user's presence at a time.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        filter == self.inbox
            || filter
                .strip_prefix(&self.presence_prefix)
                .is_some_and(|user| store::names::validate_name("user", user).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Acl {
        Acl::new(&Identity {
            org: "demo".into(),
            app: "chat".into(),
            user: "alice".into(),
            device: "phone".into(),
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
        assert!(acl.may_subscribe("chat/demo/chat/u/alice/in"));
        assert!(acl.may_subscribe("chat/demo/chat/presence/bob"));
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
        ] {
            assert!(!acl.may_subscribe(f), "{f} allowed");
        }
    }
}
