//! Process-wide counters of pushes sent, failed and dropped, per provider (also exported
//! as metrics).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};
use store::push::Notifier;

struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
}

impl Counters {
    const fn new() -> Counters {
        Counters {
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        }
    }
}

static APNS: Counters = Counters::new();
static FCM: Counters = Counters::new();

fn of(notifier: Notifier) -> &'static Counters {
    match notifier {
        Notifier::Apns => &APNS,
        Notifier::Fcm => &FCM,
    }
}

pub fn sent(n: Notifier) {
    of(n).sent.fetch_add(1, Ordering::Relaxed);
    outcome(n, "sent");
}

pub fn failed(n: Notifier) {
    of(n).failed.fetch_add(1, Ordering::Relaxed);
    outcome(n, "failed");
}

/// Not sent because the recipient came online first.
pub fn dropped(n: Notifier) {
    of(n).dropped.fetch_add(1, Ordering::Relaxed);
    outcome(n, "dropped");
}

pub fn retried(n: Notifier) {
    of(n).retried.fetch_add(1, Ordering::Relaxed);
    outcome(n, "retried");
}

/// The same counts for Prometheus: `chatd_pushes_total{provider, outcome}`.
fn outcome(n: Notifier, outcome: &'static str) {
    metrics::counter!("chatd_pushes_total", "provider" => n.as_str(), "outcome" => outcome).increment(1);
}

/// All counters, as `{"apns":{…},"fcm":{…}}`.
pub fn snapshot() -> Value {
    let one = |c: &Counters| {
        json!({
            "sent": c.sent.load(Ordering::Relaxed),
            "failed": c.failed.load(Ordering::Relaxed),
            "dropped": c.dropped.load(Ordering::Relaxed),
            "retried": c.retried.load(Ordering::Relaxed),
        })
    };
    json!({"apns": one(&APNS), "fcm": one(&FCM)})
}
