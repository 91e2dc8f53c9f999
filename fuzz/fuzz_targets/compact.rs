//! The compact envelope (MessagePack, `store::compact`) on arbitrary bytes, as a device
//! that asked for it publishes them:
//! - `to_json` must not panic, and what it gives must be JSON;
//! - round trip: `store::compact` documents that "every JSON envelope has a compact form
//!   and back, losslessly", so for the JSON `j` that `to_json` gave, if `from_json(j)`
//!   gives compact bytes (it may refuse what serde_json does not read, e.g. past its
//!   nesting limit), `to_json` of them must succeed and give JSON equal to `j`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use store::compact::{from_json, to_json};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = to_json(data) else { return };
    let Some(compact) = from_json(&json) else {
        return;
    };
    let first: Value = serde_json::from_slice(&json).expect("from_json read it, so it is JSON");
    let again = match to_json(&compact) {
        Ok(again) => again,
        Err(e) => panic!(
            "round trip: to_json(from_json(j)) failed: {e}\n j = {}\n compact = {:02x?}",
            String::from_utf8_lossy(&json),
            compact
        ),
    };
    let second: Value = serde_json::from_slice(&again).expect("to_json gives JSON");
    assert!(
        first == second,
        "round trip changed the envelope:\n j  = {}\n j' = {}",
        String::from_utf8_lossy(&json),
        String::from_utf8_lossy(&again)
    );
});
