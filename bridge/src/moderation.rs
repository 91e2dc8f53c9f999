//! Pre-send moderation: an app may have every message its users send checked by its own
//! endpoint before it is stored (`moderation_url` in its settings). The endpoint answers,
//! for each message, allow, reject (with a reason the sender sees) or replace (a new body).
//!
//! Messages are sent to the endpoint in batches, never one round trip per message: each app
//! has its own lane (a task) that takes everything its users sent while its previous request
//! was out, in arrival order, and sends it in one signed request. Lanes run beside the
//! bridge's batches, not inside them: a slow or dead endpoint delays its own app's messages
//! (up to `moderation_timeout_ms`, then its `moderation_fail_open` decides), never other
//! apps'. Approved messages come back to the bridge ([`Moderation::approved`]) and are stored
//! in its next batch; each lane keeps its app's order, so one user's messages keep theirs.
//!
//! The request (`POST`, signed like webhooks: `X-Chatd-Timestamp`, `X-Chatd-Signature: v1=<hex
//! HMAC-SHA256(moderation_secret, "{timestamp}.{body}")>`):
//! `{"org","app","messages":[{"cid","from","device","chat","to","type","body","ext"}…]}`.
//! The answer: `{"results":[{"action":"allow"} | {"action":"reject","reason":"…"} |
//! {"action":"replace","body":{…}}, …]}`, one per message, in order, within 1 MiB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use store::envelope::{MsgType, OpError};
use store::live::Live;
use store::messages::NewMessage;
use store::tenants::AppSettings;

use crate::process::{PendingSend, Sender};

/// The most messages in one request.
const MAX_PER_REQUEST: usize = 200;
/// The largest answer read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The longest reason shown to a sender.
const MAX_REASON_CHARS: usize = 200;

/// An app's moderation settings, as they were when its messages were admitted.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub url: String,
    pub secret: String,
    pub timeout: Duration,
    pub fail_open: bool,
    pub max_message_bytes: usize,
}

impl Policy {
    /// The app's policy, if it moderates.
    pub fn of(settings: &AppSettings) -> Option<Arc<Policy>> {
        (!settings.moderation_url.is_empty()).then(|| {
            Arc::new(Policy {
                url: settings.moderation_url.clone(),
                secret: settings.moderation_secret.clone(),
                timeout: Duration::from_millis(settings.moderation_timeout_ms.max(1) as u64),
                fail_open: settings.moderation_fail_open,
                max_message_bytes: settings.max_message_bytes,
            })
        })
    }
}

/// A send waiting for its app's verdict.
pub(crate) struct Item {
    pub pending: PendingSend,
    pub message: NewMessage,
    pub policy: Arc<Policy>,
}

/// The lanes, and where approved messages come back.
pub(crate) struct Moderation {
    lanes: HashMap<String, mpsc::UnboundedSender<Item>>,
    approved_tx: mpsc::UnboundedSender<Vec<(PendingSend, NewMessage)>>,
    pub approved: mpsc::UnboundedReceiver<Vec<(PendingSend, NewMessage)>>,
    /// Sends handed to a lane and not yet back (stored or refused): a drain waits for them.
    in_flight: Arc<AtomicUsize>,
    live: Arc<dyn Live>,
    client: reqwest::Client,
    allow: hooks::guard::Allow,
}

impl Moderation {
    pub fn new(live: Arc<dyn Live>, allow: hooks::guard::Allow) -> Moderation {
        let (approved_tx, approved) = mpsc::unbounded_channel();
        Moderation {
            lanes: HashMap::new(),
            approved_tx,
            approved,
            in_flight: Arc::default(),
            live,
            // The longest policy timeout is 5 s; each request has its own below it.
            client: hooks::guard::client(allow, Duration::from_secs(10)),
            allow,
        }
    }

    /// Nothing is waiting for a verdict or to be stored.
    pub fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Hands a send to its app's lane.
    pub fn submit(&mut self, item: Item) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let app_id = item.message.app_id.clone();
        let lane = self.lanes.entry(app_id).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let lane = Lane {
                items: rx,
                approved: self.approved_tx.clone(),
                in_flight: self.in_flight.clone(),
                live: self.live.clone(),
                client: self.client.clone(),
                allow: self.allow,
            };
            tokio::spawn(lane.run());
            tx
        });
        if let Err(mpsc::error::SendError(item)) = lane.send(item) {
            // The lane is gone (it never ends on its own): refuse rather than lose.
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(app = %item.message.app_id, "moderation lane gone");
        }
    }

    /// Approved sends were stored (or refused by storage): no longer in flight.
    pub fn done(&self, count: usize) {
        self.in_flight.fetch_sub(count, Ordering::AcqRel);
    }
}

/// What the endpoint said of one message.
#[derive(Debug, PartialEq)]
enum Verdict {
    Allow,
    Reject(String),
    Replace(Value),
}

struct Lane {
    items: mpsc::UnboundedReceiver<Item>,
    approved: mpsc::UnboundedSender<Vec<(PendingSend, NewMessage)>>,
    in_flight: Arc<AtomicUsize>,
    live: Arc<dyn Live>,
    client: reqwest::Client,
    allow: hooks::guard::Allow,
}

impl Lane {
    async fn run(mut self) {
        let mut batch = Vec::new();
        while let Some(first) = self.items.recv().await {
            batch.push(first);
            while batch.len() < MAX_PER_REQUEST {
                match self.items.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            self.moderate(std::mem::take(&mut batch)).await;
        }
    }

    async fn moderate(&self, batch: Vec<Item>) {
        let policy = batch[0].policy.clone();
        let started = Instant::now();
        let verdicts = self.ask(&policy, &batch).await;
        metrics::histogram!("chatd_moderation_seconds").record(started.elapsed().as_secs_f64());
        let mut approved = Vec::new();
        let mut refused = 0;
        match verdicts {
            Ok(verdicts) => {
                for (item, verdict) in batch.into_iter().zip(verdicts) {
                    match apply(item, verdict) {
                        Applied::Store(pending, message) => approved.push((pending, message)),
                        Applied::Refuse(pending, error) => {
                            refused += 1;
                            self.reply(&pending.from, &error);
                        }
                    }
                }
            }
            Err(why) => {
                tracing::warn!(app = %batch[0].message.app_id, %why, fail_open = policy.fail_open, "moderation endpoint failed");
                let outcome = if policy.fail_open {
                    "failed_open"
                } else {
                    "failed_closed"
                };
                metrics::counter!("chatd_moderation_total", "outcome" => outcome).increment(batch.len() as u64);
                for item in batch {
                    if policy.fail_open {
                        approved.push((item.pending, item.message));
                    } else {
                        refused += 1;
                        let error = OpError::new(
                            Some(item.pending.cid.clone()),
                            "moderation_unavailable",
                            "the app's moderation did not answer; not stored, retry with the same cid",
                        );
                        self.reply(&item.pending.from, &error);
                    }
                }
            }
        }
        self.in_flight.fetch_sub(refused, Ordering::AcqRel);
        if !approved.is_empty() {
            let count = approved.len();
            if self.approved.send(approved).is_err() {
                self.in_flight.fetch_sub(count, Ordering::AcqRel);
            }
        }
    }

    /// One signed request for the batch; the verdicts, one per message, or why not.
    async fn ask(&self, policy: &Policy, batch: &[Item]) -> Result<Vec<Verdict>, String> {
        let url = hooks::guard::check_url(&policy.url, self.allow)?;
        let first = &batch[0].pending.from;
        let messages: Vec<Value> = batch
            .iter()
            .map(|item| {
                let m = &item.message;
                json!({
                    "cid": m.cid,
                    "from": m.sender,
                    "device": m.sender_device,
                    "chat": m.chat.as_str(),
                    "to": m.to,
                    "type": m.kind.as_str(),
                    "body": serde_json::from_str::<Value>(&m.body).unwrap_or(Value::Null),
                    "ext": m.ext.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok()),
                })
            })
            .collect();
        let body = json!({"org": first.org, "app": first.app, "messages": messages})
            .to_string()
            .into_bytes();
        let timestamp = store::now_ms() / 1000;
        let request = self
            .client
            .post(url)
            .timeout(policy.timeout)
            .header("content-type", "application/json")
            .header("x-chatd-timestamp", timestamp.to_string())
            .header("x-chatd-signature", hooks::signature(&policy.secret, timestamp, &body))
            .body(body);
        let mut response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} ms", policy.timeout.as_millis())
            } else {
                "could not connect".to_string()
            }
        })?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = tokio::time::timeout(policy.timeout, response.chunk())
            .await
            .map_err(|_| "the answer was too slow".to_string())?
            .map_err(|_| "the answer was cut".to_string())?
        {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err("the answer is larger than 1 MiB".into());
            }
            answer.extend_from_slice(&chunk);
        }
        parse_verdicts(&answer, batch.len())
    }

    fn reply(&self, to: &Sender, error: &OpError) {
        crate::process::reply(self.live.as_ref(), to, error);
    }
}

/// The endpoint's answer: exactly one verdict per message.
fn parse_verdicts(answer: &[u8], count: usize) -> Result<Vec<Verdict>, String> {
    let value: Value = serde_json::from_slice(answer).map_err(|_| "the answer is not JSON".to_string())?;
    let results = value["results"]
        .as_array()
        .ok_or_else(|| "the answer has no \"results\" list".to_string())?;
    if results.len() != count {
        return Err(format!("{} results for {count} messages", results.len()));
    }
    results
        .iter()
        .map(|r| match r["action"].as_str() {
            Some("allow") => Ok(Verdict::Allow),
            Some("reject") => Ok(Verdict::Reject(reason(r["reason"].as_str().unwrap_or("")))),
            Some("replace") => Ok(Verdict::Replace(r["body"].clone())),
            _ => Err("a result's action is not allow, reject or replace".to_string()),
        })
        .collect()
}

/// A reason as the sender is shown it: printable, at most [`MAX_REASON_CHARS`].
fn reason(raw: &str) -> String {
    let clean: String = raw.chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect();
    if clean.trim().is_empty() {
        "the app's moderation refused this message".into()
    } else {
        clean
    }
}

/// A verdict applied: the send to store (its body replaced if so), or the error its sender
/// gets. A replacement must be a valid body of the message's type and within the app's
/// size; file messages cannot be replaced (a new body could name files the sender may not
/// use), and a replacement that does not hold is refused rather than stored unchecked.
/// A verdict applied to one send.
enum Applied {
    Store(PendingSend, NewMessage),
    Refuse(PendingSend, OpError),
}

fn apply(item: Item, verdict: Verdict) -> Applied {
    let Item {
        pending,
        mut message,
        policy,
    } = item;
    let cid = Some(pending.cid.clone());
    match verdict {
        Verdict::Allow => {
            metrics::counter!("chatd_moderation_total", "outcome" => "allow").increment(1);
            Applied::Store(pending, message)
        }
        Verdict::Reject(reason) => {
            metrics::counter!("chatd_moderation_total", "outcome" => "reject").increment(1);
            Applied::Refuse(pending, OpError::new(cid, "moderated", reason))
        }
        Verdict::Replace(body) => {
            let text = crate::rules::json_text(&body);
            let fits = !message.kind.carries_files()
                && message.kind != MsgType::Cmd
                && message.kind.validate_body(&body).is_ok()
                && text.len() <= policy.max_message_bytes;
            if !fits {
                metrics::counter!("chatd_moderation_total", "outcome" => "reject").increment(1);
                tracing::warn!(app = %message.app_id, kind = message.kind.as_str(), "moderation replaced a body with one that does not hold; refused");
                return Applied::Refuse(
                    pending,
                    OpError::new(cid, "moderated", "the app's moderation could not accept this message"),
                );
            }
            metrics::counter!("chatd_moderation_total", "outcome" => "replace").increment(1);
            message.body = text;
            Applied::Store(pending, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_before_they_are_believed() {
        let ok = br#"{"results":[{"action":"allow"},{"action":"reject","reason":"no\u0007 spam"},{"action":"replace","body":{"msg":"x"}}]}"#;
        assert_eq!(
            parse_verdicts(ok, 3).unwrap(),
            vec![
                Verdict::Allow,
                Verdict::Reject("no spam".into()),
                Verdict::Replace(json!({"msg": "x"}))
            ]
        );
        assert!(parse_verdicts(ok, 2).is_err(), "a result per message");
        assert!(parse_verdicts(b"<html>", 1).is_err());
        assert!(parse_verdicts(br#"{"results":[{"action":"delete"}]}"#, 1).is_err());
        assert_eq!(reason(&"x".repeat(500)).len(), MAX_REASON_CHARS);
        assert_eq!(reason(""), "the app's moderation refused this message");
    }
}
