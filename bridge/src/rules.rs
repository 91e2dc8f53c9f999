//! Per-app content rules applied to every `send` before it is stored: message size,
//! forbidden words (refuse or mask) and a per-user send rate; and the typing-indicator
//! rate limit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use store::envelope::{MsgType, OpError, SendOp};
use store::tenants::{AppSettings, ForbiddenAction};

/// A send's body and ext as they are stored: compact JSON text.
pub struct ContentText {
    pub body: String,
    pub ext: Option<String>,
}

/// Applies the app's content rules; may rewrite the body (masking). Answers the body and ext
/// as text to store: the size checked is the size of that text, and it is written once.
pub fn check_content(settings: &AppSettings, op: &mut SendOp) -> Result<ContentText, OpError> {
    let mut text = ContentText {
        body: json_text(&op.body),
        ext: op.ext.as_ref().map(json_text),
    };
    let size = text.body.len() + text.ext.as_ref().map_or(0, String::len);
    if size > settings.max_message_bytes {
        return Err(OpError::new(
            Some(op.cid.clone()),
            "message_too_large",
            format!(
                "the message is {size} bytes; this app allows {}",
                settings.max_message_bytes
            ),
        ));
    }
    if let Some(exts) = op.body.get("customExts").filter(|_| op.kind == MsgType::Custom) {
        let size = exts.to_string().len();
        if size > settings.max_custom_bytes {
            return Err(OpError::new(
                Some(op.cid.clone()),
                "message_too_large",
                format!(
                    "customExts is {size} bytes; this app allows {}",
                    settings.max_custom_bytes
                ),
            ));
        }
    }
    if op.kind != MsgType::Txt || settings.forbidden_words.is_empty() {
        return Ok(text);
    }
    let Some(msg) = op.body.get("msg").and_then(Value::as_str) else {
        return Ok(text);
    };
    let (masked, found) = mask_words(msg, &settings.forbidden_words);
    if !found {
        return Ok(text);
    }
    match settings.forbidden_action {
        ForbiddenAction::Reject => Err(OpError::new(
            Some(op.cid.clone()),
            "forbidden_content",
            "the message contains a word this app does not allow",
        )),
        ForbiddenAction::Mask => {
            op.body["msg"] = Value::String(masked);
            text.body = json_text(&op.body);
            Ok(text)
        }
    }
}

/// A JSON value as compact text, by serde_json's writer rather than `Display` (the same text,
/// without a `fmt::Write` call per token: `Display` took 4% of chatd's instructions per
/// message here).
pub(crate) fn json_text(value: &Value) -> String {
    // Writing a `Value` to a `Vec` cannot fail: its keys are strings, its numbers finite.
    serde_json::to_string(value).unwrap_or_default()
}

/// Replaces each forbidden word (case-insensitively) with as many `*` as it has characters.
pub fn mask_words(text: &str, words: &[String]) -> (String, bool) {
    let lower = text.to_lowercase();
    // Lower-casing can change byte lengths outside ASCII; then match the text as it is.
    let haystack = if lower.len() == text.len() {
        lower
    } else {
        text.to_string()
    };
    let mut masked: Vec<char> = Vec::new();
    let mut hidden = vec![false; text.len()];
    let mut found = false;
    for word in words {
        let needle = word.to_lowercase();
        if needle.is_empty() {
            continue;
        }
        let mut from = 0;
        while let Some(at) = haystack[from..].find(&needle) {
            let start = from + at;
            hidden[start..start + needle.len()].iter_mut().for_each(|h| *h = true);
            found = true;
            from = start + needle.len();
        }
    }
    for (i, c) in text.char_indices() {
        masked.push(if hidden[i] { '*' } else { c });
    }
    (masked.into_iter().collect(), found)
}

/// Token buckets per user, refilled at the app's rate.
#[derive(Default)]
pub struct SendRates {
    buckets: HashMap<(String, String), (f64, Instant)>,
}

impl SendRates {
    /// Takes one token for `user`, or says how long until one is free.
    pub fn take(&mut self, app_id: &str, user: &str, settings: &AppSettings) -> Result<(), Duration> {
        let now = Instant::now();
        if self.buckets.len() > 100_000 {
            // Forget buckets that have refilled: they hold no state worth keeping.
            let full = settings.send_burst;
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * settings.send_rate_per_sec < full
            });
        }
        let (tokens, at) = self
            .buckets
            .entry((app_id.to_string(), user.to_string()))
            .or_insert((settings.send_burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * settings.send_rate_per_sec).min(settings.send_burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / settings.send_rate_per_sec))
        }
    }
}

/// At most one typing indicator per sender and conversation every `TYPING_INTERVAL`.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct TypingLimits {
    last: HashMap<(String, String, String), Instant>,
}

impl TypingLimits {
    /// True if this indicator may go out now.
    pub fn allow(&mut self, app_id: &str, user: &str, target: &str) -> bool {
        let now = Instant::now();
        if self.last.len() > 100_000 {
            self.last.retain(|_, at| now.duration_since(*at) < TYPING_INTERVAL);
        }
        let key = (app_id.to_string(), user.to_string(), target.to_string());
        match self.last.get(&key) {
            Some(at) if now.duration_since(*at) < TYPING_INTERVAL => false,
            _ => {
                self.last.insert(key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_case_insensitively() {
        let words = vec!["spam".to_string(), "Bad Word".to_string()];
        assert_eq!(
            mask_words("SPAM and bad word, spam!", &words),
            ("**** and ********, ****!".into(), true)
        );
        assert_eq!(mask_words("clean", &words), ("clean".into(), false));
        assert_eq!(mask_words("ünïcode spam", &words).0, "ünïcode ****");
    }

    #[test]
    fn rate_limits_after_the_burst() {
        let settings = AppSettings {
            send_rate_per_sec: 1.0,
            send_burst: 3.0,
            ..AppSettings::default()
        };
        let mut rates = SendRates::default();
        for _ in 0..3 {
            assert!(rates.take("a", "u", &settings).is_ok());
        }
        assert!(rates.take("a", "u", &settings).is_err());
        assert!(rates.take("a", "other", &settings).is_ok(), "buckets are per user");
    }

    #[test]
    fn typing_is_throttled_per_conversation() {
        let mut typing = TypingLimits::default();
        assert!(typing.allow("a", "u", "bob"));
        assert!(!typing.allow("a", "u", "bob"));
        assert!(typing.allow("a", "u", "carol"));
    }
}
