//! A device: one MQTT client of one user, and what it keeps about its messages.
//!
//! This is the device model the checks are about. A [`Device`] sends one-to-one texts
//! (when its [`Spec`] says so), each with a `cid` it publishes again until its `ack` comes
//! (after every reconnect, and after `RETRY_AFTER` without one). It follows the catch-up
//! contract of `topics.md`: it records every inbox position (`useq`) it sees in acks, live
//! messages and `sync` pages ([`Device::note_position`]), and `sync`s from the highest
//! gap-free position, paging while `more`, on every connect and whenever it sees a gap.
//! Everything it received, sent and saw is kept for the checks in `main.rs`; the counters
//! the run prints and waits on are in [`Stats`]. What drives it, a [`Phase`] and the cuts
//! of the lossy link, comes from the test through a [`Control`] channel. Its connections
//! (connect, serve, reconnect) are in `connection.rs`, the MQTT codecs in `mqtt.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use crate::mqtt::Proto;
use crate::RETRY_AFTER;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connect and stay connected.
    Connect,
    /// Senders send.
    Send,
    /// No new messages; the unacked ones are retried until acked.
    Drain,
    /// Each storm sender sends one last message, expected live at its recipient.
    LiveRound,
    /// Every device syncs until there is no more.
    FinalSync,
    Done,
}

#[derive(Debug, Clone, Copy)]
pub struct Control {
    pub phase: Phase,
    /// Bumped when the lossy link is cut: lossy-link devices drop their connection.
    pub cut: u32,
}

/// What every device counts into (the numbers the run prints) and what the test waits on.
#[derive(Default)]
pub struct Stats {
    pub connected: AtomicUsize,
    pub tcp_attempts: AtomicU64,
    pub tcp_timeouts: AtomicU64,
    pub tcp_errors: AtomicU64,
    pub closed_before_connack: AtomicU64,
    pub connack_refused: AtomicU64,
    pub mqtt_timeouts: AtomicU64,
    /// Connections lost other than by the cut (read/write errors, ping timeouts), and why.
    pub lost: AtomicU64,
    pub lost_why: std::sync::Mutex<BTreeMap<String, u64>>,
    pub publishes: AtomicU64,
    pub retries: AtomicU64,
    pub doubles: AtomicU64,
    pub acked: AtomicU64,
    pub unacked: AtomicI64,
    pub syncs: AtomicU64,
    pub gap_syncs: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Retryable error ops by code and what they answered.
    pub retryable_why: std::sync::Mutex<BTreeMap<String, u64>>,
    pub storm_back: AtomicUsize,
    pub live_round_received: AtomicUsize,
    pub final_done: AtomicUsize,
}

/// Who a device is and how it behaves.
pub struct Spec {
    pub proto: Proto,
    pub user: String,
    pub token: String,
    pub client_id: String,
    /// Where it connects from and to.
    pub source: Ipv4Addr,
    pub server: SocketAddrV4,
    /// On the lossy link: drops its connection when the link is cut.
    pub lossy: bool,
    /// Whom it sends to and how often (none: receives only).
    pub sends: Option<(Duration, Recipients)>,
    /// Sends the last message of `Phase::LiveRound`.
    pub live_round: bool,
    pub start_delay: Duration,
    pub seed: u64,
}

#[derive(Clone)]
pub enum Recipients {
    /// A random one of these, never itself.
    Any(Arc<Vec<String>>),
    One(String),
}

/// One message a device sends: what, to whom, and what became of it.
pub struct Outgoing {
    pub cid: String,
    pub to: String,
    pub text: String,
    /// Published twice back to back on purpose.
    pub double: bool,
    /// The connection (by number) it was last published on, and when.
    pub published_on: u64,
    pub last_published: Option<Instant>,
    pub first_published: Option<Instant>,
    pub publishes: u32,
    /// Every ack's message id (a repeated cid gets its ack again).
    pub acks: Vec<String>,
    pub acked_at: Option<Instant>,
}

/// A message received from someone else.
pub struct Incoming {
    pub from: String,
    pub text: String,
    /// It first arrived live (a `msg` publish), not in a `synced` page.
    pub live: bool,
}

/// A device's whole state, kept across its connections and handed back at the end.
pub struct Device {
    pub spec: Spec,
    pub rng: StdRng,
    pub outbox: String,
    pub inbox_topic: String,
    pub out: Vec<Outgoing>,
    pub by_cid: HashMap<String, usize>,
    pub next_send: Option<Instant>,
    pub live_sent: bool,
    /// Inbox positions seen (from acks, live messages and sync pages): useq -> message id.
    pub inbox: BTreeMap<i64, String>,
    pub useq_of: HashMap<String, i64>,
    pub contiguous: i64,
    pub highest: i64,
    pub received: HashMap<String, Incoming>,
    /// `msg`s from others as they arrived, duplicates included.
    pub deliveries: u64,
    /// Its own messages as seen in its inbox: text -> message ids.
    pub own_seen: HashMap<String, HashSet<String>>,
    pub errors: Vec<String>,
    /// Connections made so far; connection number of the current one.
    pub connections: u64,
    /// The cut this device has last seen.
    pub cut_seen: u32,
    /// When it was first connected, and back after the cut.
    pub first_connected: Option<Instant>,
    pub storm_back: Option<Instant>,
    /// The connection it had when the live round began, if it had one then (subscribed
    /// before: that round's messages must come to it live).
    pub connection_at_live_round: Option<u64>,
    /// When its connections began (SUBACK), for the record.
    pub connected_at: Vec<Instant>,
    pub sync_pending: Option<(String, Instant)>,
    pub sync_at: Option<Instant>,
    pub syncs: u64,
    /// The first sync of the final catch-up, by number, and whether it finished.
    pub final_from: Option<u64>,
    pub final_done: bool,
    pub next_pkid: u16,
}

impl Device {
    pub fn new(spec: Spec) -> Device {
        let outbox = format!("chat/demo/chat/u/{}/out", spec.user);
        let inbox_topic = format!("chat/demo/chat/u/{}/in", spec.user);
        Device {
            rng: StdRng::seed_from_u64(spec.seed),
            spec,
            outbox,
            inbox_topic,
            out: Vec::new(),
            by_cid: HashMap::new(),
            next_send: None,
            live_sent: false,
            inbox: BTreeMap::new(),
            useq_of: HashMap::new(),
            contiguous: 0,
            highest: 0,
            received: HashMap::new(),
            deliveries: 0,
            own_seen: HashMap::new(),
            errors: Vec::new(),
            connections: 0,
            cut_seen: 0,
            first_connected: None,
            storm_back: None,
            connection_at_live_round: None,
            connected_at: Vec::new(),
            sync_pending: None,
            sync_at: None,
            syncs: 0,
            final_from: None,
            final_done: false,
            next_pkid: 0,
        }
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    fn publish(&mut self, out: &mut BytesMut, payload: String, stats: &Stats) {
        let pkid = self.pkid();
        self.spec.proto.publish(out, &self.outbox, pkid, payload);
        stats.publishes.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that inbox position `useq` holds message `id`; the same position must never
    /// name two messages, nor a message two positions.
    fn note_position(&mut self, useq: i64, id: &str) {
        if let Some(known) = self.inbox.get(&useq) {
            if known != id {
                self.errors.push(format!("useq {useq} was message {known}, now {id}"));
            }
            return;
        }
        if let Some(other) = self.useq_of.get(id) {
            self.errors
                .push(format!("message {id} at useq {other} and at useq {useq}"));
        }
        self.inbox.insert(useq, id.to_string());
        self.useq_of.insert(id.to_string(), useq);
        self.highest = self.highest.max(useq);
        while self.inbox.contains_key(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }

    /// A `msg`, live or from a `synced` page.
    fn on_msg(&mut self, m: &Value, live: bool, stats: &Stats) {
        let (Some(id), Some(useq), Some(from), Some(to), Some(text)) = (
            m["id"].as_str(),
            m["useq"].as_i64(),
            m["from"].as_str(),
            m["to"].as_str(),
            m["body"]["msg"].as_str(),
        ) else {
            self.errors.push(format!("unexpected msg {m}"));
            return;
        };
        self.note_position(useq, id);
        if from == self.spec.user {
            // Its own message, as its inbox shows it (sync).
            self.own_seen
                .entry(text.to_string())
                .or_default()
                .insert(id.to_string());
            return;
        }
        if to != self.spec.user || m["chat"] != "user" {
            self.errors.push(format!("a msg not for {}: {m}", self.spec.user));
            return;
        }
        self.deliveries += 1;
        match self.received.get(id) {
            Some(known) => {
                if known.from != from || known.text != text {
                    self.errors.push(format!("message {id} came back different: {m}"));
                }
            }
            None => {
                if text.starts_with("live:") {
                    stats.live_round_received.fetch_add(1, Ordering::Relaxed);
                }
                self.received.insert(
                    id.to_string(),
                    Incoming {
                        from: from.to_string(),
                        text: text.to_string(),
                        live,
                    },
                );
            }
        }
    }

    /// Everything the server sends on the inbox.
    pub fn on_inbox(&mut self, payload: &[u8], stats: &Stats, now: Instant) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            self.errors
                .push(format!("not JSON: {}", String::from_utf8_lossy(payload)));
            return;
        };
        match v["op"].as_str().unwrap_or_default() {
            "ack" => {
                let (Some(cid), Some(id)) = (v["cid"].as_str(), v["id"].as_str()) else {
                    self.errors.push(format!("bad ack {v}"));
                    return;
                };
                let Some(&i) = self.by_cid.get(cid) else {
                    self.errors.push(format!("ack for a cid never sent: {v}"));
                    return;
                };
                let o = &mut self.out[i];
                o.acks.push(id.to_string());
                self.own_seen.entry(o.text.clone()).or_default().insert(id.to_string());
                if o.acked_at.is_none() {
                    o.acked_at = Some(now);
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    stats.unacked.fetch_sub(1, Ordering::Relaxed);
                }
                if let Some(useq) = v["useq"].as_i64() {
                    self.note_position(useq, id);
                }
            }
            "msg" => {
                let useq = v["useq"].as_i64().unwrap_or(0);
                self.on_msg(&v, true, stats);
                // A gap: something was missed live (it was sent while this device was away).
                if useq > self.contiguous + 1 && self.sync_pending.is_none() && self.sync_at.is_none() {
                    self.sync_at = Some(now);
                    stats.gap_syncs.fetch_add(1, Ordering::Relaxed);
                }
            }
            "synced" => {
                let number = v["cid"]
                    .as_str()
                    .and_then(|c| c.rsplit_once("-s"))
                    .and_then(|(_, n)| n.parse::<u64>().ok());
                for m in v["msgs"].as_array().into_iter().flatten() {
                    self.on_msg(m, false, stats);
                }
                if self.sync_pending.as_ref().map(|(c, _)| c.as_str()) != v["cid"].as_str() {
                    // An answer to a sync given up on (re-sent after a timeout): its
                    // messages count, its paging does not.
                    return;
                }
                self.sync_pending = None;
                if v["more"] == true {
                    self.sync_at = Some(now);
                } else if self.highest > self.contiguous {
                    // A live message beyond what this page reached: ask again, shortly.
                    self.sync_at = Some(now + Duration::from_millis(300));
                } else if let Some(from) = self.final_from {
                    if number.is_some_and(|n| n >= from) {
                        if !self.final_done {
                            self.final_done = true;
                            stats.final_done.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        // This sync began before the final catch-up did.
                        self.sync_at = Some(now);
                    }
                }
            }
            "error" => {
                let cid = v["cid"].as_str().unwrap_or_default();
                let code = v["code"].as_str().unwrap_or_default();
                let retryable = matches!(code, "rate_limited" | "internal");
                if retryable {
                    stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let what = if self.by_cid.contains_key(cid) { "send" } else { "sync" };
                    let message = v["message"].as_str().unwrap_or_default();
                    *stats
                        .retryable_why
                        .lock()
                        .unwrap()
                        .entry(format!("{code} on {what}: {message}"))
                        .or_default() += 1;
                }
                if let Some(&i) = self.by_cid.get(cid).filter(|_| retryable) {
                    // Published again in about a second.
                    self.out[i].last_published = Some(now - RETRY_AFTER + Duration::from_secs(1));
                } else if self.sync_pending.as_ref().is_some_and(|(c, _)| c == cid) && retryable {
                    self.sync_pending = None;
                    self.sync_at = Some(now + Duration::from_millis(500));
                } else {
                    self.errors.push(format!("error from the server: {v}"));
                }
            }
            _ => self.errors.push(format!("unexpected op {v}")),
        }
    }

    /// New messages that are due, for a sender.
    fn make_messages(&mut self, phase: Phase, now: Instant, stats: &Stats) {
        let Some((every, recipients)) = self.spec.sends.clone() else {
            return;
        };
        let pick = |rng: &mut StdRng, me: &str| match &recipients {
            Recipients::One(to) => to.clone(),
            Recipients::Any(all) => loop {
                let to = &all[rng.gen_range(0..all.len())];
                if to != me {
                    return to.clone();
                }
            },
        };
        if phase == Phase::Send {
            let next = *self
                .next_send
                .get_or_insert_with(|| now + every.mul_f64(self.rng.gen_range(0.0..1.0)));
            let mut next = next;
            while next <= now {
                let n = self.out.len();
                let to = pick(&mut self.rng, &self.spec.user);
                let cid = format!("{}-m{n}", self.spec.client_id);
                self.add(cid, to, format!("{}#{n}", self.spec.client_id), n == 0, stats);
                next += every.mul_f64(self.rng.gen_range(0.8..1.2));
            }
            self.next_send = Some(next);
        }
        if phase == Phase::LiveRound && self.spec.live_round && !self.live_sent {
            self.live_sent = true;
            let to = pick(&mut self.rng, &self.spec.user);
            let n = self.out.len();
            let cid = format!("{}-m{n}", self.spec.client_id);
            self.add(cid, to, format!("live:{}", self.spec.client_id), false, stats);
        }
    }

    fn add(&mut self, cid: String, to: String, text: String, double: bool, stats: &Stats) {
        self.by_cid.insert(cid.clone(), self.out.len());
        self.out.push(Outgoing {
            cid,
            to,
            text,
            double,
            published_on: 0,
            last_published: None,
            first_published: None,
            publishes: 0,
            acks: Vec::new(),
            acked_at: None,
        });
        stats.unacked.fetch_add(1, Ordering::Relaxed);
    }

    /// What a connected device does every tick: send what is due, retry what is unacked,
    /// sync when it should.
    pub fn tick(&mut self, phase: Phase, now: Instant, out: &mut BytesMut, stats: &Stats) {
        self.make_messages(phase, now, stats);
        let connection = self.connections;
        let mut to_publish = Vec::new();
        for (i, o) in self.out.iter_mut().enumerate() {
            if o.acked_at.is_some() {
                continue;
            }
            let due =
                o.published_on != connection || o.last_published.is_some_and(|t| now.duration_since(t) >= RETRY_AFTER);
            if !due {
                continue;
            }
            if o.publishes > 0 {
                stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let times = if o.double && o.publishes == 0 { 2 } else { 1 };
            if times == 2 {
                stats.doubles.fetch_add(1, Ordering::Relaxed);
            }
            o.publishes += times;
            o.published_on = connection;
            o.last_published = Some(now);
            o.first_published.get_or_insert(now);
            for _ in 0..times {
                to_publish.push(i);
            }
        }
        for i in to_publish {
            let o = &self.out[i];
            let envelope =
                json!({"op": "send", "cid": o.cid, "chat": "user", "to": o.to, "type": "txt", "body": {"msg": o.text}});
            self.publish(out, envelope.to_string(), stats);
        }
        if phase == Phase::FinalSync && self.final_from.is_none() {
            // The final catch-up starts with a fresh sync (after whatever is pending).
            self.final_from = Some(self.syncs + 1);
            if self.sync_pending.is_none() {
                self.sync_at = Some(now);
            }
        }
        if self
            .sync_pending
            .as_ref()
            .is_some_and(|(_, at)| now.duration_since(*at) > Duration::from_secs(15))
        {
            self.sync_pending = None;
            self.sync_at = Some(now);
        }
        if self.sync_pending.is_none() && self.sync_at.is_some_and(|at| at <= now) {
            self.sync_at = None;
            self.syncs += 1;
            let cid = format!("{}-s{}", self.spec.client_id, self.syncs);
            let envelope = json!({"op": "sync", "cid": cid, "after": self.contiguous, "limit": 200});
            self.sync_pending = Some((cid, now));
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.publish(out, envelope.to_string(), stats);
        }
    }
}
