//! The JSON envelope parser and the binary frames around it inside the broker:
//! - `store::envelope::parse_client_op` on the whole input (what a device publishes);
//! - `unframe_outbox` / `unframe_inbox` on the whole input, and back: a frame that reads
//!   must be rebuilt byte for byte by `frame_outbox` / `frame_outbox_unreadable` /
//!   `frame_inbox` from what was read (the inbox `All` route carries no device);
//! - `frame_outbox` → `unframe_outbox` (and `frame_inbox` → `unframe_inbox`) round trip
//!   for a device id and payload split from the input: byte 0 is the device id's length,
//!   the device id must be UTF-8 (frames carry at most 255 bytes of it, so every id the
//!   input can give fits), the rest is the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::envelope::{
    frame_inbox, frame_outbox, frame_outbox_unreadable, parse_client_op, unframe_inbox, unframe_outbox, Route,
};

fuzz_target!(|data: &[u8]| {
    match parse_client_op(data) {
        Ok(op) => {
            let _ = format!("{op:?}");
        }
        Err(e) => {
            // Sent back to the device as an `error` op.
            serde_json::to_vec(&e).expect("an OpError serialises");
        }
    }

    match unframe_outbox(data) {
        Some((device, Ok(json))) => assert_eq!(frame_outbox(device, json), data, "outbox frame does not re-frame"),
        Some((device, Err(why))) => {
            if std::str::from_utf8(&data[2 + device.len()..]).is_ok() {
                assert_eq!(frame_outbox_unreadable(device, why), data, "unreadable frame does not re-frame");
            }
        }
        None => {}
    }
    match unframe_inbox(data) {
        Some((Route::All, json)) => {
            assert_eq!(data[0], 0);
            assert_eq!(&frame_inbox(Route::All, json)[2..], json);
        }
        Some((route, json)) => assert_eq!(frame_inbox(route, json), data, "inbox frame does not re-frame"),
        None => {}
    }

    // Round trip from a device id and a payload.
    let Some((&len, rest)) = data.split_first() else { return };
    let len = usize::from(len).min(rest.len());
    let (device, payload) = rest.split_at(len);
    let Ok(device) = std::str::from_utf8(device) else { return };
    let framed = frame_outbox(device, payload);
    assert_eq!(unframe_outbox(&framed), Some((device, Ok(payload))), "outbox round trip");
    let route = match payload.first().map(|b| b % 3) {
        Some(1) => Route::Only(device),
        Some(2) => Route::Except(device),
        _ => Route::All,
    };
    let framed = frame_inbox(route, payload);
    assert_eq!(unframe_inbox(&framed), Some((route, payload)), "inbox round trip");
});
