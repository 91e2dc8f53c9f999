//! The platform's notification settings (`/users/{u}/notification/{chattype}/{key}`): for
//! the user as a whole (the app level) and per conversation, which messages push (`ALL`,
//! only mentions: `AT`, none: `NONE`; a conversation may follow the app level: `DEFAULT`),
//! a daily quiet window (app level) and a silence until a time. They apply on top of
//! chatd's own do-not-disturb and muted conversations (`push`): a push goes out only if
//! none of them silences it.
//!
//! A message mentions a user when its `ext.em_at_list` names them, or is `"all"`, as the
//! platform's clients write it.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::Store;

/// The longest silence one setting asks for (7 days), in ms.
pub const MAX_IGNORE_MS: i64 = 7 * 24 * 3600 * 1000;

/// Which messages push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A conversation following the app level.
    Default,
    All,
    /// Only messages that mention the user.
    At,
    None,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "DEFAULT" => Some(Mode::Default),
            "ALL" => Some(Mode::All),
            "AT" => Some(Mode::At),
            "NONE" => Some(Mode::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Default => "DEFAULT",
            Mode::All => "ALL",
            Mode::At => "AT",
            Mode::None => "NONE",
        }
    }
}

/// One setting: for the app level (`target` empty) or a conversation (`u:a:b`, `g:id`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Setting {
    pub mode: Option<Mode>,
    /// `(start, end)` in minutes after local midnight; equal: the whole day.
    pub quiet: Option<(i64, i64)>,
    /// Silenced until this time (ms); 0: not.
    pub ignore_until: i64,
}

/// `"HH:MM-HH:MM"` as minutes after midnight.
pub fn parse_interval(text: &str) -> Option<(i64, i64)> {
    let minutes = |hm: &str| -> Option<i64> {
        let (h, m) = hm.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
    };
    let (start, end) = text.split_once('-')?;
    Some((minutes(start)?, minutes(end)?))
}

pub fn format_interval((start, end): (i64, i64)) -> String {
    format!("{:02}:{:02}-{:02}:{:02}", start / 60, start % 60, end / 60, end % 60)
}

/// Whether `ext` (a message's, as JSON text) mentions `user`.
pub fn mentions(ext: Option<&str>, user: &str) -> bool {
    let Some(ext) = ext.and_then(|e| serde_json::from_str::<Value>(e).ok()) else {
        return false;
    };
    match &ext["em_at_list"] {
        Value::String(all) => all.eq_ignore_ascii_case("all"),
        Value::Array(names) => names.iter().any(|n| n.as_str() == Some(user)),
        _ => false,
    }
}

impl Setting {
    /// Whether this setting, at `local_minute` (the user's local time of day) and `now`,
    /// silences a push.
    fn silent_at(&self, now: i64, local_minute: i64) -> bool {
        if self.ignore_until > now {
            return true;
        }
        match self.quiet {
            Some((start, end)) if start == end => true,
            Some((start, end)) if start < end => (start..end).contains(&local_minute),
            Some((start, end)) => local_minute >= start || local_minute < end,
            None => false,
        }
    }
}

impl Store {
    pub async fn notification_setting(&self, app_id: &str, user: &str, target: &str) -> Result<Setting> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT mode, quiet, ignore_until FROM push_prefs WHERE app_id = $1 AND username = $2 AND target = $3",
        )
        .bind(app_id)
        .bind(user)
        .bind(target)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map_or_else(Setting::default, |(mode, quiet, ignore_until)| Setting {
                mode: Mode::parse(&mode),
                quiet: parse_interval(&quiet),
                ignore_until,
            }),
        )
    }

    pub async fn set_notification_setting(
        &self,
        app_id: &str,
        user: &str,
        target: &str,
        setting: &Setting,
    ) -> Result<()> {
        if setting.ignore_until < 0 {
            return Err(Error::invalid("ignoreDuration", "must not be negative"));
        }
        sqlx::query(
            "INSERT INTO push_prefs (app_id, username, target, mode, quiet, ignore_until) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (app_id, username, target) DO UPDATE SET mode = $4, quiet = $5, ignore_until = $6",
        )
        .bind(app_id)
        .bind(user)
        .bind(target)
        .bind(setting.mode.map_or("", Mode::as_str))
        .bind(setting.quiet.map(format_interval).unwrap_or_default())
        .bind(setting.ignore_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether the user's notification settings silence a push for a message of `conv`
    /// (with its `ext`), at `now` and `local_minute` (their local time of day).
    pub async fn notification_silences(
        &self,
        app_id: &str,
        user: &str,
        conv: &str,
        ext: Option<&str>,
        now: i64,
        local_minute: i64,
    ) -> Result<bool> {
        let app = self.notification_setting(app_id, user, "").await?;
        let chat = self.notification_setting(app_id, user, conv).await?;
        if app.silent_at(now, local_minute) || chat.ignore_until > now {
            return Ok(true);
        }
        let mode = match chat.mode {
            Some(Mode::Default) | None => app.mode.unwrap_or(Mode::All),
            Some(mode) => mode,
        };
        Ok(match mode {
            Mode::None => true,
            Mode::At => !mentions(ext, user),
            Mode::All | Mode::Default => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("21:30-08:00"), Some((1290, 480)));
        assert_eq!(parse_interval("00:00-00:00"), Some((0, 0)));
        for bad in ["", "21:30", "24:00-01:00", "1:00-02:00", "10:60-11:00", "aa:bb-cc:dd"] {
            assert_eq!(parse_interval(bad), None, "{bad}");
        }
        assert_eq!(format_interval((1290, 480)), "21:30-08:00");
    }

    #[test]
    fn quiet_windows_and_silences() {
        let night = Setting {
            quiet: Some((1290, 480)),
            ..Setting::default()
        };
        assert!(night.silent_at(0, 1300) && night.silent_at(0, 100) && !night.silent_at(0, 600));
        let day = Setting {
            quiet: Some((480, 600)),
            ..Setting::default()
        };
        assert!(day.silent_at(0, 500) && !day.silent_at(0, 600));
        assert!(Setting {
            quiet: Some((0, 0)),
            ..Setting::default()
        }
        .silent_at(0, 700));
        let until = Setting {
            ignore_until: 100,
            ..Setting::default()
        };
        assert!(until.silent_at(99, 0) && !until.silent_at(100, 0));
    }

    #[test]
    fn mentions_by_ext() {
        assert!(mentions(Some(r#"{"em_at_list":["bob","carol"]}"#), "bob"));
        assert!(mentions(Some(r#"{"em_at_list":"ALL"}"#), "bob"));
        assert!(!mentions(Some(r#"{"em_at_list":["carol"]}"#), "bob"));
        assert!(!mentions(Some("{}"), "bob") && !mentions(None, "bob"));
    }
}
