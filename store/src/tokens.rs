//! Tokens and secrets: HS256 JWTs signed with a server key kept in the database, argon2
//! hashes for passwords and client secrets.
//!
//! An app token carries the app's `secret_version`, so rotating the client secret
//! revokes every app token issued before it. A user token carries the user's
//! `token_generation`, so deleting and re-creating the user, or revoking their tokens,
//! invalidates every user token issued before. A token names its org and app, so a token of
//! one app is worthless in another.
//!
//! argon2 (the default parameters: 19 MiB, 2 passes) is slow and memory-hungry on purpose,
//! which makes it a lever for whoever can make the server hash: 200 parallel login attempts
//! once took the process to 1 GB resident. So every hash and verification in the process
//! goes through one semaphore ([`set_max_concurrent_hashes`]); the permit is held by the
//! blocking thread doing the work, so a caller that gives up waiting (a timeout, a closed
//! connection) cannot free a slot while its hash still runs. The 19 MiB of work memory is
//! kept and reused (at most one buffer per slot) rather than allocated per hash: allocating
//! it each time left glibc holding 1.2 GB after 200 verifications even four at a time (after
//! the first free it raises its mmap threshold and keeps freed blocks in its heaps). And
//! checking a secret of an unknown user costs one verification against a fixed dummy hash,
//! exactly like a known one, so answer times do not tell which usernames exist.

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::{Algorithm as Argon2Algorithm, Argon2, Block, Params, Version};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

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
    /// For app tokens: the app's secret version when the token was issued; for user
    /// tokens: the user's token generation.
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

/// How many argon2 computations may run at once in this process unless
/// [`set_max_concurrent_hashes`] says otherwise: 4 × 19 MiB.
pub const DEFAULT_MAX_CONCURRENT_HASHES: usize = 4;

/// The process-wide hashing semaphore and its size.
static HASHING: Mutex<Option<(usize, Arc<Semaphore>)>> = Mutex::new(None);

/// Sets how many argon2 hashes or verifications may run at once in this process (at least
/// 1); the others wait their turn. Work already running keeps its permit of the old limit.
pub fn set_max_concurrent_hashes(max: usize) {
    let max = max.max(1);
    let mut slot = HASHING.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().map(|(n, _)| *n) != Some(max) {
        *slot = Some((max, Arc::new(Semaphore::new(max))));
    }
}

fn hashing() -> Arc<Semaphore> {
    let mut slot = HASHING.lock().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| {
        (
            DEFAULT_MAX_CONCURRENT_HASHES,
            Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENT_HASHES)),
        )
    })
    .1
    .clone()
}

/// Runs one argon2 computation on a blocking thread (it takes tens of milliseconds on
/// purpose and must not stall the runtime) once the hashing semaphore lets it. The permit
/// moves into the blocking closure, so it is released when the work ends, not when the
/// caller stops waiting.
async fn limited<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let permit = hashing()
        .acquire_owned()
        .await
        .map_err(|e| Error::Internal(format!("hashing semaphore: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let result = work();
        drop(permit);
        result
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))
}

/// Hashes a password or client secret with argon2id and a random salt, within the hashing
/// limit.
pub async fn hash_secret_async(secret: String) -> Result<String> {
    limited(move || hash_secret(&secret)).await?
}

/// Checks a password or client secret against its hash, within the hashing limit. With no
/// hash (no such user) it verifies against a fixed dummy hash and answers false, so that
/// costs the same time and memory as a wrong password of a real user.
pub async fn verify_secret_async(secret: String, hash: Option<String>) -> Result<bool> {
    limited(move || match hash {
        Some(hash) => verify_secret(&secret, &hash),
        None => {
            let _ = verify_secret(&secret, dummy_hash());
            false
        }
    })
    .await
}

/// A hash of a random secret, made once with the same parameters as every other hash.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_secret(&random_secret(32)).unwrap_or_default())
}

/// Work memory of finished hashes, for the next ones.
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// Runs `work` with `blocks` blocks of argon2 work memory, taken from [`MEMORY`] (or
/// allocated) and put back after, unless as many buffers as hashing slots are kept already.
fn with_memory<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    let mut memory = MEMORY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let result = work(&mut memory[..blocks]);
    let slots = HASHING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or(DEFAULT_MAX_CONCURRENT_HASHES, |(n, _)| *n);
    let mut pool = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < slots {
        pool.push(memory);
    }
    result
}

/// The argon2 output of `secret` with `salt` under `argon`, `len` bytes, in reused memory.
fn argon2_output(argon: &Argon2<'_>, secret: &str, salt: &SaltString, len: usize) -> Option<Output> {
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_bytes).ok()?;
    with_memory(argon.params().block_count(), |memory| {
        Output::init_with(len, |out| {
            argon
                .hash_password_into_with_memory(secret.as_bytes(), salt_bytes, out, memory)
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
    })
    .ok()
}

/// Hashes a password or client secret with argon2id (default parameters) and a random salt,
/// as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash_secret(secret: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let argon = Argon2::default();
    let output = argon2_output(&argon, secret, &salt, Params::DEFAULT_OUTPUT_LEN)
        .ok_or_else(|| Error::Internal("hashing failed".into()))?;
    let hash = PasswordHash {
        algorithm: Argon2Algorithm::default().ident(),
        version: Some(Version::default().into()),
        params: ParamsString::try_from(argon.params()).map_err(|e| Error::Internal(format!("hashing: {e}")))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Checks a password or client secret against its stored hash (with the algorithm, version
/// and parameters the hash names), comparing in constant time.
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let algorithm = Argon2Algorithm::try_from(parsed.algorithm);
    let version = parsed.version.map(Version::try_from).transpose();
    let params = Params::try_from(&parsed);
    let (Ok(algorithm), Ok(version), Ok(params)) = (algorithm, version, params) else {
        return false;
    };
    let Ok(salt) = SaltString::from_b64(salt.as_str()) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version.unwrap_or_default(), params);
    argon2_output(&argon, secret, &salt, expected.len()).is_some_and(|computed| computed == expected)
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
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_secret("pw", &h));
        assert!(!verify_secret("pW", &h));
        assert!(!verify_secret("pw", "garbage"));
        // Hashes made the usual way (as stored before work memory was reused) still verify,
        // and ours verify the usual way.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let salt = SaltString::generate(&mut OsRng);
        let usual = Argon2::default().hash_password(b"pw", &salt).unwrap().to_string();
        assert!(verify_secret("pw", &usual));
        assert!(!verify_secret("px", &usual));
        let ours = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &ours).is_ok());
    }

    #[tokio::test]
    async fn unknown_user_costs_a_verification() {
        // The dummy is a real argon2 hash, so verifying against it does the full work.
        assert!(PasswordHash::new(dummy_hash()).is_ok());
        let h = hash_secret_async("pw".into()).await.unwrap();
        assert!(verify_secret_async("pw".into(), Some(h)).await.unwrap());
        assert!(!verify_secret_async("pw".into(), None).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_is_bounded() {
        // Count how many computations overlap while 12 run through the semaphore.
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NOW: AtomicUsize = AtomicUsize::new(0);
        static PEAK: AtomicUsize = AtomicUsize::new(0);
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                tokio::spawn(limited(|| {
                    let n = NOW.fetch_add(1, Ordering::SeqCst) + 1;
                    PEAK.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    NOW.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let peak = PEAK.load(Ordering::SeqCst);
        assert!(
            (1..=DEFAULT_MAX_CONCURRENT_HASHES).contains(&peak),
            "{peak} computations at once"
        );
    }
}
