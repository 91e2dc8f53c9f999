//! Throttling of credential guessing at `POST /{org}/{app}/token`, and of users registering
//! themselves (`POST /{org}/{app}/users` without a token, when an app allows it).
//!
//! Without it, 200 wrong passwords followed by the right one just worked. Each attempt
//! counts against keys: the user (app + username) or the client (app + client id), and the
//! caller's address (the TCP peer; no `X-Forwarded-For` is trusted). Past a number of free
//! failures a key is blocked for a backoff that doubles with each further failure (up to a
//! maximum); attempts on a blocked key are answered 429 without checking anything, whether
//! the password is right or not, and cost no argon2 work.
//!
//! An attempt on a user or client is counted when it starts, not when it fails, so a burst
//! of parallel guesses at one user cannot all slip through before the first failure is
//! recorded; a success clears the user's or client's key. The address counts failures
//! only, when they happen: many users logging in at once from behind one address (a NAT, a
//! backend) are not a burst of guesses, and parallel guesses at many users are bounded by
//! the argon2 semaphore until their failures block the address. A key with no attempt for
//! `login_max_backoff` is forgotten. The table holds at most `login_throttle_entries`
//! keys: when full, forgotten and unblocked keys go first, then the least recently used.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::whole_seconds;
use crate::{ApiError, ApiSettings};

/// What an attempt counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A user of an app: (app id, username).
    User(String, String),
    /// An app's client credentials: (app id, client id).
    Client(String, String),
    /// The caller's address.
    Address(IpAddr),
    /// Users registering themselves in an app from an address: (app id, address).
    Registration(String, IpAddr),
}

impl Key {
    /// What a blocked key is told: "too many {this}".
    fn describe(&self) -> String {
        match self {
            Key::User(_, user) => format!("failed attempts for user '{user}'"),
            Key::Client(..) => "failed attempts for this client_id".into(),
            Key::Address(_) => "failed attempts from your address".into(),
            Key::Registration(..) => "registrations from your address".into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Attempts counted (failed, or under way).
    attempts: u32,
    /// No attempt is checked before this.
    blocked_until: Instant,
    /// The last attempt.
    last: Instant,
}

/// The throttle: one per API server.
pub struct Throttle {
    free: u32,
    address_free: u32,
    backoff: Duration,
    max_backoff: Duration,
    capacity: usize,
    entries: Mutex<HashMap<Key, Entry>>,
}

/// An attempt in progress: [`Throttle::succeeded`] clears its user or client; otherwise
/// it stays counted against them. [`Throttle::failed`] also counts it against the address.
#[must_use]
pub struct Attempt {
    keys: Vec<Key>,
}

impl Throttle {
    pub fn new(settings: &ApiSettings) -> Throttle {
        Throttle {
            free: settings.login_free_failures,
            address_free: settings.login_address_free_failures,
            backoff: settings.login_backoff,
            max_backoff: settings.login_max_backoff.max(settings.login_backoff),
            capacity: settings.login_throttle_entries.max(16),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Starts an attempt on `keys`: refused with 429 if any of them is blocked, else counted
    /// against the user or client among them.
    pub fn attempt(&self, keys: Vec<Key>) -> Result<Attempt, ApiError> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in &keys {
            if let Some(entry) = entries.get(key) {
                if entry.blocked_until > now && !self.forgotten(entry, now) {
                    let retry_after = entry.blocked_until - now;
                    return Err(ApiError::TooManyAttempts {
                        message: format!("too many {}; retry in {} s", key.describe(), whole_seconds(retry_after)),
                        retry_after,
                    });
                }
            }
        }
        for key in keys.iter().filter(|k| !matches!(k, Key::Address(_))) {
            self.count(&mut entries, key, now);
        }
        Ok(Attempt { keys })
    }

    /// The credentials were wrong: the attempt counts against the address too.
    pub fn failed(&self, attempt: Attempt) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in attempt.keys.iter().filter(|k| matches!(k, Key::Address(_))) {
            self.count(&mut entries, key, now);
        }
    }

    /// The attempt succeeded: the user's or client's record is cleared.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in attempt.keys.iter().filter(|k| !matches!(k, Key::Address(_))) {
            entries.remove(key);
        }
    }

    /// One more attempt against `key`; blocks it once past its free ones.
    fn count(&self, entries: &mut HashMap<Key, Entry>, key: &Key, now: Instant) {
        if !entries.contains_key(key) && entries.len() >= self.capacity {
            self.evict(entries, now);
        }
        let free = self.free_for(key);
        let entry = entries.entry(key.clone()).or_insert(Entry {
            attempts: 0,
            blocked_until: now,
            last: now,
        });
        if self.forgotten(entry, now) {
            entry.attempts = 0;
        }
        entry.attempts += 1;
        entry.last = now;
        if entry.attempts >= free {
            entry.blocked_until = now + self.backoff_after(entry.attempts - free);
        }
    }

    fn free_for(&self, key: &Key) -> u32 {
        match key {
            Key::Address(_) | Key::Registration(..) => self.address_free.max(1),
            _ => self.free.max(1),
        }
    }

    /// How long a key is blocked after `extra` failures beyond the free ones (0: the first
    /// block): `backoff`, doubled each time, at most `max_backoff`.
    fn backoff_after(&self, extra: u32) -> Duration {
        self.backoff.saturating_mul(1u32 << extra.min(24)).min(self.max_backoff)
    }

    /// No attempt for `max_backoff` and not blocked: start over.
    fn forgotten(&self, entry: &Entry, now: Instant) -> bool {
        now >= entry.blocked_until && now.duration_since(entry.last) >= self.max_backoff
    }

    /// Makes room for a tenth of the capacity: first keys that are forgotten, then unblocked
    /// ones, then the least recently used.
    fn evict(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        let target = self.capacity - self.capacity / 10;
        entries.retain(|_, e| !self.forgotten(e, now));
        if entries.len() > target {
            entries.retain(|_, e| e.blocked_until > now);
        }
        if entries.len() > target {
            let mut by_age: Vec<(Instant, Key)> = entries.iter().map(|(k, e)| (e.last, k.clone())).collect();
            by_age.sort_by_key(|(last, _)| *last);
            for (_, key) in by_age.into_iter().take(entries.len() - target) {
                entries.remove(&key);
            }
        }
        tracing::warn!(
            kept = entries.len(),
            "login throttle table full: old entries evicted (api.login_throttle_entries)"
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(free: u32, backoff_ms: u64, capacity: usize) -> Throttle {
        Throttle::new(&ApiSettings {
            login_free_failures: free,
            login_address_free_failures: 100,
            login_backoff: Duration::from_millis(backoff_ms),
            login_max_backoff: Duration::from_secs(60),
            login_throttle_entries: capacity,
            ..ApiSettings::default()
        })
    }

    fn alice() -> Vec<Key> {
        vec![Key::User("app".into(), "alice".into())]
    }

    #[test]
    fn blocks_after_free_failures_and_doubles() {
        let t = throttle(3, 200, 100);
        for _ in 0..3 {
            drop(t.attempt(alice()).unwrap());
        }
        let Err(ApiError::TooManyAttempts { retry_after, message }) = t.attempt(alice()) else {
            panic!("a fourth attempt was let through")
        };
        assert!(retry_after <= Duration::from_millis(200), "{retry_after:?}");
        assert!(message.contains("user 'alice'"), "{message}");
        std::thread::sleep(Duration::from_millis(210));
        drop(t.attempt(alice()).unwrap());
        let Err(ApiError::TooManyAttempts { retry_after, .. }) = t.attempt(alice()) else {
            panic!("not blocked again")
        };
        assert!(
            retry_after > Duration::from_millis(200),
            "backoff did not double: {retry_after:?}"
        );
    }

    #[test]
    fn success_clears_the_user() {
        let t = throttle(3, 10_000, 100);
        drop(t.attempt(alice()).unwrap());
        drop(t.attempt(alice()).unwrap());
        t.succeeded(t.attempt(alice()).unwrap());
        for _ in 0..3 {
            drop(t.attempt(alice()).unwrap());
        }
        assert!(t.attempt(alice()).is_err());
    }

    #[test]
    fn address_counts_failures_only() {
        let t = Throttle::new(&ApiSettings {
            login_free_failures: 100,
            login_address_free_failures: 3,
            ..ApiSettings::default()
        });
        let from = |user: &str| {
            vec![
                Key::User("app".into(), user.into()),
                Key::Address("192.0.2.1".parse().unwrap()),
            ]
        };
        // Ten logins at once from one address, all good: no block.
        let attempts: Vec<_> = (0..10).map(|i| t.attempt(from(&format!("u{i}"))).unwrap()).collect();
        attempts.into_iter().for_each(|a| t.succeeded(a));
        for i in 0..3 {
            t.failed(t.attempt(from(&format!("v{i}"))).unwrap());
        }
        let Err(ApiError::TooManyAttempts { message, .. }) = t.attempt(from("w")) else {
            panic!("the address was not blocked")
        };
        assert!(message.contains("from your address"), "{message}");
    }

    #[test]
    fn table_is_bounded() {
        let t = throttle(3, 10_000, 100);
        for i in 0..1000 {
            drop(t.attempt(vec![Key::User("app".into(), format!("u{i}"))]).unwrap());
        }
        assert!(t.len() <= 100, "{} entries", t.len());
    }
}
