//! What the API and the bridge may ask of the live device connections. The gate implements
//! it (it holds the connections); the others only see this trait, so they do not depend on
//! the gate.

use serde_json::Value;

use crate::envelope::{frame_inbox, Route};

pub trait Live: Send + Sync {
    /// Closes every connection of a user (the user was deleted).
    fn disconnect_user(&self, org: &str, app: &str, user: &str);
    /// Stops delivering a chatroom to a user's connections (they left or were kicked).
    fn leave_room(&self, org: &str, app: &str, user: &str, room: &str);
    /// Stops delivering `owner`'s presence to `from`'s connections (`owner` blocked them).
    fn hide_presence(&self, org: &str, app: &str, owner: &str, from: &str);
    /// Whether any device of the user is connected (to this process).
    fn is_online(&self, org: &str, app: &str, user: &str) -> bool;
    /// Delivers a publish on a user's inbox topic to that user's devices connected to this
    /// process; `framed` carries its route ([`frame_inbox`]).
    fn deliver_inbox(&self, org: &str, app: &str, user: &str, framed: Vec<u8>);
    /// Delivers a chatroom publish to this process's devices subscribed to the room.
    fn deliver_room(&self, org: &str, app: &str, room: &str, payload: Vec<u8>);
    /// Delivers an event (a JSON object with an `op`) to every connected device of a user.
    fn notify(&self, org: &str, app: &str, user: &str, event: &Value) {
        self.deliver_inbox(org, app, user, frame_inbox(Route::All, event.to_string().as_bytes()));
    }
}
