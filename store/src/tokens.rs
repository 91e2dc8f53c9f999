//! Tokens and secrets: HS256 JWTs signed with a server key kept in the database, argon2
//! hashes for passwords and client secrets.
//!
//! An app token carries the app's `secret_version`, so rotating the client secret
//! revokes every app token issued before it. A token names its org and app, so a token of
//! one app is worthless in another.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The app's backend (client credentials): may manage everything in its app.
    App,
    /// One user (password grant): may connect over MQTT and manage its own data.
    User,
}

/// The claims inside every token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Username for user tokens, client id for app tokens.
    pub sub: String,
    pub org: String,
    pub app: String,
    pub role: Role,
    /// For app tokens: the app's secret version when the token was issued.
    #[serde(default)]
    pub ver: i64,
    pub iat: i64,
    pub exp: i64,
}

/// Signs and checks tokens. Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl Tokens {
    pub fn new(secret: &str) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is expired: no grace period.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Issues a token valid for `ttl_secs` seconds.
    pub fn issue(&self, sub: &str, org: &str, app: &str, role: Role, ver: i64, ttl_secs: i64) -> Result<String> {
        let iat = crate::now_ms() / 1000;
        let claims = Claims {
            sub: sub.to_string(),
            org: org.to_string(),
            app: app.to_string(),
            role,
            ver,
            iat,
            exp: iat + ttl_secs,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing a token: {e}")))
    }

    /// Checks signature and expiry. The caller checks org, app, role and subject.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Error::BadToken("expired".into()),
                _ => Error::BadToken("invalid".into()),
            })
    }
}

/// Hashes a password or client secret with argon2id and a random salt, on a blocking
/// thread: argon2 takes tens of milliseconds on purpose and must not stall the runtime.
pub async fn hash_secret_async(secret: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

/// Checks a password or client secret against its hash, on a blocking thread.
pub async fn verify_secret_async(secret: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || verify_secret(&secret, &hash))
        .await
        .unwrap_or(false)
}

/// Hashes a password or client secret with argon2id and a random salt.
pub fn hash_secret(secret: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing: {e}")))
}

/// Checks a password or client secret against its stored hash.
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

/// A random alphanumeric string of `len` characters from the OS generator.
pub fn random_secret(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let tokens = Tokens::new("k1");
        let t = tokens.issue("alice", "demo", "chat", Role::User, 0, 60).unwrap();
        let c = tokens.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.role), ("alice", Role::User));
        assert!(Tokens::new("k2").verify(&t).is_err(), "token from another key accepted");
        let expired = tokens.issue("alice", "demo", "chat", Role::User, 0, -1).unwrap();
        assert!(matches!(tokens.verify(&expired), Err(Error::BadToken(r)) if r == "expired"));
    }

    #[test]
    fn hashing() {
        let h = hash_secret("pw").unwrap();
        assert!(verify_secret("pw", &h));
        assert!(!verify_secret("pW", &h));
        assert!(!verify_secret("pw", "garbage"));
    }
}
