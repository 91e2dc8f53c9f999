//! Per-user budgets for what a user's devices publish, enforced by the gate on arrival.
//!
//! Every op costs the server something different: a `send` is a row or three, a `sync` is
//! a page read of up to 200 inbox entries, a `push_bind` creates a row. Counted when the
//! bridge gets round to it, a flood is already in the backlog, ahead of everyone else's
//! messages: 20,000 `sync` ops written in under a second held every other user's delivery
//! for half a minute. So the gate counts each op against a token bucket of its class for
//! that user the moment the publish arrives, and answers what is over budget itself with a
//! `rate_limited` error (and, in MQTT 5, a PUBACK with reason "quota exceeded"): the excess
//! never reaches rumqttd, the bridge or the database, and is never queued.
//!
//! The op is read from the envelope without validating it (that is the bridge's job): an
//! envelope that is not JSON, or has no known op, is counted as `other`.
//!
//! The buckets belong to the user, not to a connection: a device that reconnects, or a user
//! who connects many devices, gets no fresh burst (a flood that reconnected after every
//! disconnect got ten fresh `push_bind`s each time, forty times a second). Connecting is
//! budgeted too, so a reconnect loop is refused before it reaches the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// What an op costs, by class. Each has a budget of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// `send` (messages and commands).
    Send,
    /// `sync`: a page read from the inbox.
    Sync,
    /// `read` and `delivered` receipts.
    Receipt,
    /// `recall`, `edit`, `delete`, `react`.
    Change,
    /// `typing` (advisory: what is over budget is dropped without an answer).
    Typing,
    /// `join`, `leave`.
    Room,
    /// `push_bind`, `push_unbind`, `dnd`, `mute_conv`: rows in the push tables.
    Push,
    /// Anything else: unknown ops, envelopes that are not JSON.
    Other,
    /// Not an op: each filter of a SUBSCRIBE (a room or presence filter is checked against
    /// the database).
    Subscribe,
    /// Not an op: a CONNECT (a token check and database reads).
    Connect,
}

const CLASSES: usize = 10;

impl OpClass {
    pub fn of(op: &str) -> OpClass {
        match op {
            "send" => OpClass::Send,
            "sync" => OpClass::Sync,
            "read" | "delivered" => OpClass::Receipt,
            "recall" | "edit" | "delete" | "react" => OpClass::Change,
            "typing" => OpClass::Typing,
            "join" | "leave" => OpClass::Room,
            "push_bind" | "push_unbind" | "dnd" | "mute_conv" => OpClass::Push,
            _ => OpClass::Other,
        }
    }

    /// Its key in `mqtt.budgets` and its label in metrics (`op`).
    pub fn key(self) -> &'static str {
        match self {
            OpClass::Send => "send",
            OpClass::Sync => "sync",
            OpClass::Receipt => "receipt",
            OpClass::Change => "change",
            OpClass::Typing => "typing",
            OpClass::Room => "room",
            OpClass::Push => "push",
            OpClass::Other => "other",
            OpClass::Subscribe => "subscribe",
            OpClass::Connect => "connect",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OpClass::Send => "send",
            OpClass::Sync => "sync",
            OpClass::Receipt => "read/delivered",
            OpClass::Change => "recall/edit/delete/react",
            OpClass::Typing => "typing",
            OpClass::Room => "join/leave",
            OpClass::Push => "push settings",
            OpClass::Other => "unknown",
            OpClass::Subscribe => "subscribe",
            OpClass::Connect => "connect",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub const fn new(per_sec: f64, burst: f64) -> Rate {
        Rate { per_sec, burst }
    }
}

/// The budget of each op class, per user. Defaults leave room for what real clients do (a
/// reconnect's catch-up on a few devices, marking a screenful of conversations read, a
/// burst of queued sends after a tunnel) and refuse what only a flood does.
#[derive(Debug, Clone, PartialEq)]
pub struct OpBudgets {
    pub send: Rate,
    pub sync: Rate,
    pub receipt: Rate,
    pub change: Rate,
    pub typing: Rate,
    pub room: Rate,
    pub push: Rate,
    pub other: Rate,
    pub subscribe: Rate,
    pub connect: Rate,
}

impl Default for OpBudgets {
    fn default() -> Self {
        OpBudgets {
            send: Rate::new(100.0, 500.0),
            sync: Rate::new(10.0, 40.0),
            receipt: Rate::new(50.0, 200.0),
            change: Rate::new(20.0, 50.0),
            typing: Rate::new(5.0, 10.0),
            room: Rate::new(5.0, 20.0),
            push: Rate::new(2.0, 10.0),
            other: Rate::new(10.0, 20.0),
            subscribe: Rate::new(20.0, 1000.0),
            connect: Rate::new(2.0, 20.0),
        }
    }
}

impl OpBudgets {
    fn rate(&self, class: OpClass) -> Rate {
        match class {
            OpClass::Send => self.send,
            OpClass::Sync => self.sync,
            OpClass::Receipt => self.receipt,
            OpClass::Change => self.change,
            OpClass::Typing => self.typing,
            OpClass::Room => self.room,
            OpClass::Push => self.push,
            OpClass::Other => self.other,
            OpClass::Subscribe => self.subscribe,
            OpClass::Connect => self.connect,
        }
    }
}

/// Every user's buckets, shared by the gate's sessions: one short lock per op. A user whose
/// buckets have all refilled is the same as one never seen, so such entries are dropped
/// whenever the table passes its bound; users still busy are kept (forgetting one would
/// hand it a fresh burst), and they are bounded by the connection limit.
#[derive(Debug)]
pub struct UserBudgets {
    budgets: OpBudgets,
    users: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    users: HashMap<String, Buckets>,
    /// Past this many users the idle ones are dropped; doubled when most are busy, so
    /// pruning stays rare (amortised constant time per new user).
    prune_at: usize,
    floor: usize,
}

impl UserBudgets {
    pub fn new(budgets: OpBudgets, prune_at: usize) -> UserBudgets {
        let floor = prune_at.max(1024);
        UserBudgets {
            budgets,
            users: Mutex::new(Table {
                users: HashMap::new(),
                prune_at: floor,
                floor,
            }),
        }
    }

    /// Takes one op of `class` for `user` (a key naming the app and the user); `Err(ms)`
    /// says how long until one is allowed again.
    pub fn take(&self, user: &str, class: OpClass) -> Result<(), u64> {
        let now = Instant::now();
        let mut table = self.users.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(buckets) = table.users.get_mut(user) {
            return buckets.take_at(&self.budgets, class, now);
        }
        if table.users.len() >= table.prune_at {
            table.users.retain(|_, b| !b.is_full(&self.budgets, now));
            table.prune_at = (table.users.len() * 2).max(table.floor);
        }
        let mut buckets = Buckets::new(&self.budgets, now);
        let taken = buckets.take_at(&self.budgets, class, now);
        table.users.insert(user.to_string(), buckets);
        taken
    }
}

/// One user's buckets: the tokens left in each class and when they were last topped up.
#[derive(Debug)]
struct Buckets {
    tokens: [f64; CLASSES],
    at: [Instant; CLASSES],
}

impl Buckets {
    /// Full buckets: a user seen for the first time may use the whole burst.
    fn new(budgets: &OpBudgets, now: Instant) -> Buckets {
        let mut tokens = [0.0; CLASSES];
        for (i, class) in ALL.iter().enumerate() {
            tokens[i] = budgets.rate(*class).burst;
        }
        Buckets {
            tokens,
            at: [now; CLASSES],
        }
    }

    /// Whether every bucket has refilled to its burst by `now`.
    fn is_full(&self, budgets: &OpBudgets, now: Instant) -> bool {
        ALL.iter().enumerate().all(|(i, class)| {
            let rate = budgets.rate(*class);
            let elapsed = now.saturating_duration_since(self.at[i]).as_secs_f64();
            self.tokens[i] + elapsed * rate.per_sec >= rate.burst
        })
    }

    fn take_at(&mut self, budgets: &OpBudgets, class: OpClass, now: Instant) -> Result<(), u64> {
        let rate = budgets.rate(class);
        let i = class.index();
        let elapsed = now.saturating_duration_since(self.at[i]).as_secs_f64();
        self.at[i] = now;
        self.tokens[i] = (self.tokens[i] + elapsed * rate.per_sec).min(rate.burst);
        if self.tokens[i] >= 1.0 {
            self.tokens[i] -= 1.0;
            Ok(())
        } else if rate.per_sec <= 0.0 {
            Err(60_000)
        } else {
            Err((((1.0 - self.tokens[i]) / rate.per_sec) * 1000.0).ceil().max(1.0) as u64)
        }
    }
}

const ALL: [OpClass; CLASSES] = [
    OpClass::Send,
    OpClass::Sync,
    OpClass::Receipt,
    OpClass::Change,
    OpClass::Typing,
    OpClass::Room,
    OpClass::Push,
    OpClass::Other,
    OpClass::Subscribe,
    OpClass::Connect,
];

/// The op and cid of an envelope, read without validating anything else.
#[derive(Debug, Default, Deserialize)]
pub struct Peek {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default)]
    pub cid: Option<serde_json::Value>,
}

impl Peek {
    /// Reads `op` and `cid` from a JSON envelope; anything unreadable peeks as nothing.
    pub fn of(json: &[u8]) -> Peek {
        serde_json::from_slice(json).unwrap_or_default()
    }

    pub fn class(&self) -> OpClass {
        self.op.as_deref().map_or(OpClass::Other, OpClass::of)
    }

    /// The cid, when it is a string (anything else is the bridge's to refuse).
    pub fn cid(&self) -> Option<&str> {
        self.cid.as_ref().and_then(|c| c.as_str())
    }
}

/// A user's key in the gate's budgets.
pub(crate) fn budget_key(org: &str, app: &str, user: &str) -> String {
    format!("{org}/{app}/{user}")
}

/// Ops a device had refused as over budget in the last ten seconds or so (a window that
/// starts at the first refusal and is reset ten seconds later).
#[derive(Debug, Default)]
pub(crate) struct FloodWindow {
    started: Option<Instant>,
    refused: u32,
}

impl FloodWindow {
    const LENGTH: Duration = Duration::from_secs(10);
    /// Refusals in a window that get a `rate_limited` error op.
    pub(crate) const ANSWERED: u32 = 100;
    /// Refusals in a window past which the connection is closed.
    pub(crate) const DISCONNECT: u32 = 1000;

    /// Counts one refusal; returns the count in the current window.
    pub(crate) fn count(&mut self) -> u32 {
        let now = Instant::now();
        match self.started {
            Some(started) if now.duration_since(started) < Self::LENGTH => self.refused += 1,
            _ => {
                self.started = Some(now);
                self.refused = 1;
            }
        }
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_refill_at_their_rate_and_cap_at_the_burst() {
        let budgets = OpBudgets {
            sync: Rate::new(2.0, 3.0),
            ..OpBudgets::default()
        };
        let t0 = Instant::now();
        let mut b = Buckets::new(&budgets, t0);
        for _ in 0..3 {
            b.take_at(&budgets, OpClass::Sync, t0).unwrap();
        }
        let wait = b.take_at(&budgets, OpClass::Sync, t0).unwrap_err();
        assert_eq!(wait, 500);
        // Other classes are not touched.
        b.take_at(&budgets, OpClass::Send, t0).unwrap();
        // Half a second later one more; a minute later no more than the burst.
        b.take_at(&budgets, OpClass::Sync, t0 + Duration::from_millis(500))
            .unwrap();
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            b.take_at(&budgets, OpClass::Sync, later).unwrap();
        }
        assert!(b.take_at(&budgets, OpClass::Sync, later).is_err());
    }

    #[test]
    fn buckets_are_the_users_and_idle_users_are_forgotten() {
        let budgets = OpBudgets {
            push: Rate::new(1000.0, 2.0),
            ..OpBudgets::default()
        };
        let users = UserBudgets::new(budgets, 0);
        users.take("app/alice", OpClass::Push).unwrap();
        users.take("app/alice", OpClass::Push).unwrap();
        assert!(
            users.take("app/alice", OpClass::Push).is_err(),
            "one bucket for all her devices"
        );
        users.take("app/bob", OpClass::Push).unwrap();
        // Bob's bucket refills in a millisecond; a sync bucket in a tenth of a second.
        std::thread::sleep(Duration::from_millis(10));
        for i in 0..1100 {
            users.take(&format!("app/u{i}"), OpClass::Sync).unwrap();
        }
        // Past the bound (1,024), users whose buckets have refilled are dropped, busy ones kept.
        let table = users.users.lock().unwrap();
        assert!(!table.users.contains_key("app/bob"), "bob's bucket refilled: forgotten");
        assert!(
            table.users.contains_key("app/u0"),
            "u0's sync bucket is still refilling: kept"
        );
        assert_eq!(table.users.len(), 1100);
    }

    #[test]
    fn peeks_op_and_cid_of_anything() {
        let p = Peek::of(br#"{"op":"sync","cid":"s1","after":3}"#);
        assert_eq!((p.class(), p.cid()), (OpClass::Sync, Some("s1")));
        assert_eq!(Peek::of(b"\xff not json").class(), OpClass::Other);
        assert_eq!(Peek::of(br#"{"op":5,"cid":[1]}"#).class(), OpClass::Other);
        assert_eq!(Peek::of(br#"{"op":"push_bind","cid":7}"#).cid(), None);
        assert_eq!(OpClass::of("read"), OpClass::Receipt);
    }
}
