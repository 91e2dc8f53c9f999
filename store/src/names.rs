//! Rules for the names that end up in topics and URLs: orgs, apps, usernames, device ids.
//!
//! They are strict on purpose: a name never contains an MQTT wildcard (`+`, `#`), a topic
//! separator (`/`) or the conversation-id separator (`:`), so a valid name can be put into a
//! topic or a key without escaping, and one user's topic can never match another's.

use crate::error::{Error, Result};

/// Usernames, orgs and apps: 1..=64 of `a-z 0-9 _ - .`, starting with a letter or digit.
/// Usernames are case-insensitive: they are lower-cased before they are checked (as the
/// Easemob platform does), so `Alice` and `alice` are one user.
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be 1-64 characters of a-z, 0-9, '_', '-', '.', starting with a letter or digit",
        ))
    }
}

/// Normalises and validates a username.
pub fn username(name: &str) -> Result<String> {
    let name = name.trim().to_ascii_lowercase();
    validate_name("username", &name)?;
    Ok(name)
}

/// Device (MQTT client) ids: 1..=128 printable ASCII characters other than space,
/// `/`, `+`, `#`: they travel inside internal frames and logs.
pub fn validate_device(id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic() && !b"/+#".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "client id",
            "must be 1-128 printable ASCII characters without '/', '+', '#'",
        ))
    }
}

/// Normalises and validates an id that goes into a topic (a group's or chatroom's).
pub fn id(field: &str, value: &str) -> Result<String> {
    let value = value.trim().to_ascii_lowercase();
    validate_name(field, &value)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("u", "alice").is_ok());
        assert!(validate_name("u", "a.b-c_1").is_ok());
        for bad in ["", "-a", "a/b", "a+b", "a#", "a:b", "A", &"x".repeat(65)] {
            assert!(validate_name("u", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(username(" Alice ").unwrap(), "alice");
    }

    #[test]
    fn devices() {
        assert!(validate_device("phone-1").is_ok());
        for bad in ["", "a b", "a/b", "a+", "#", &"x".repeat(129)] {
            assert!(validate_device(bad).is_err(), "{bad:?} accepted");
        }
    }
}
