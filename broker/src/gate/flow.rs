//! What a connection remembers between packets about the exchanges in progress: QoS 1
//! publishes the device has not acknowledged yet (and those held back until it does, MQTT 5
//! flow control), QoS 2 publishes it has not released, and the topic aliases either side
//! has set.
//!
//! An idle connection is usually in the middle of none of these, and there are many idle
//! connections: the session holds this state boxed, makes it on first use and lets it go
//! once nothing is in progress again ([`LazyFlow::release_if_idle`]), so a connection at
//! rest pays one pointer for it. Topic aliases are set for the connection's life, so a
//! connection that uses them keeps its box.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rumqttc::mqttbytes::QoS;

use crate::switchboard::Delivery;

/// The exchanges in progress on one connection.
#[derive(Default)]
pub(super) struct Flow {
    /// MQTT 5 topic aliases the device has set (alias -> topic).
    pub aliases: HashMap<u16, String>,
    /// The device's QoS 2 publishes received and not yet released (PUBREL): a repeat of one
    /// is answered, not forwarded again.
    pub incoming_qos2: HashSet<u16>,
    /// Packet ids of the QoS 1 publishes the device has not acknowledged yet.
    pub unacked: HashSet<u16>,
    /// The last packet id used towards the device.
    next_pkid: u16,
    /// QoS 1 publishes held back while the device's receive window is full.
    pub held: VecDeque<(Delivery, QoS)>,
    /// MQTT 5 topic aliases the gate has set towards the device (topic -> alias).
    pub device_aliases: HashMap<Arc<str>, u16>,
}

impl Flow {
    /// The next packet id not waiting for the device's PUBACK.
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.unacked.contains(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.aliases.is_empty()
            && self.incoming_qos2.is_empty()
            && self.unacked.is_empty()
            && self.held.is_empty()
            && self.device_aliases.is_empty()
    }
}

/// A [`Flow`] made on first use and let go when idle.
#[derive(Default)]
pub(super) struct LazyFlow(Option<Box<Flow>>);

impl LazyFlow {
    /// The state, if any exchange is in progress.
    pub fn get(&self) -> Option<&Flow> {
        self.0.as_deref()
    }

    /// The state, made if there was none.
    pub fn get_mut(&mut self) -> &mut Flow {
        self.0.get_or_insert_with(Box::default)
    }

    /// Unacknowledged QoS 1 publishes towards the device.
    pub fn unacked(&self) -> usize {
        self.get().map_or(0, |flow| flow.unacked.len())
    }

    /// The device acknowledged `pkid`; whether a publish was waiting for it. Answering
    /// what is not in progress makes no state.
    pub fn acked(&mut self, pkid: u16) -> bool {
        self.0.as_mut().is_some_and(|flow| flow.unacked.remove(&pkid))
    }

    /// The device's QoS 2 publish `pkid` is over (released, or refused).
    pub fn qos2_done(&mut self, pkid: u16) {
        if let Some(flow) = self.0.as_mut() {
            flow.incoming_qos2.remove(&pkid);
        }
    }

    /// The first publish held back, if any.
    pub fn pop_held(&mut self) -> Option<(Delivery, QoS)> {
        self.0.as_mut()?.held.pop_front()
    }

    /// Lets the state go if nothing is in progress. Packet ids start again from 1 then,
    /// which is allowed: none is in use.
    pub fn release_if_idle(&mut self) {
        if self.0.as_ref().is_some_and(|flow| flow.is_idle()) {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_those_in_use_and_wrap_past_zero() {
        let mut flow = Flow::default();
        assert_eq!(flow.next_packet_id(), 1);
        flow.unacked.insert(2);
        assert_eq!(flow.next_packet_id(), 3);
        flow.next_pkid = u16::MAX;
        flow.unacked.insert(1);
        assert_eq!(flow.next_packet_id(), 3, "1 and 2 are in use");
    }

    #[test]
    fn state_is_let_go_only_when_nothing_is_in_progress() {
        let mut lazy = LazyFlow::default();
        assert!(lazy.get().is_none());
        lazy.get_mut().unacked.insert(1);
        lazy.release_if_idle();
        assert_eq!(lazy.unacked(), 1);
        lazy.get_mut().unacked.remove(&1);
        lazy.get_mut().device_aliases.insert(Arc::from("t"), 1);
        lazy.release_if_idle();
        assert!(lazy.get().is_some(), "aliases last the connection's life");
        lazy.get_mut().device_aliases.clear();
        lazy.release_if_idle();
        assert!(lazy.get().is_none());
    }

    #[test]
    fn acks_and_releases_of_nothing_in_progress_make_no_state() {
        let mut lazy = LazyFlow::default();
        assert!(!lazy.acked(7));
        lazy.qos2_done(7);
        assert!(lazy.pop_held().is_none());
        assert!(lazy.get().is_none());
        lazy.get_mut().unacked.insert(7);
        assert!(lazy.acked(7));
        assert!(!lazy.acked(7));
    }
}
