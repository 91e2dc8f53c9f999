//! Panics only, both directions of `store::compact`, without the round-trip property of
//! the `compact` target (which stops at its first finding, see README.md):
//! `to_json` on arbitrary bytes (what a compact device publishes) and `from_json` on
//! arbitrary bytes (the JSON the server sends to a compact device), then `to_json` of
//! what `from_json` gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::compact::{from_json, to_json};

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = to_json(data) {
        serde_json::from_slice::<serde_json::Value>(&json).ok();
        let _ = from_json(&json);
    }
    if let Some(compact) = from_json(data) {
        let _ = to_json(&compact);
    }
});
