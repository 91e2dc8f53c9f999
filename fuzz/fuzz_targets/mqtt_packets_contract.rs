//! Like `mqtt_packets`, and also checks the documented meaning of `Ok(None)` from
//! `read_packet` ("when it is not all there yet"): the buffer must be left untouched, since
//! the session appends the next bytes from the socket to it and reads again. Kept apart
//! from `mqtt_packets` so that a violation of this contract (a protocol desync, not a
//! crash) does not stop the search for panics there.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let (version, max) = chatd_fuzz::pick(first);
    let mut buf = BytesMut::from(rest);
    chatd_fuzz::drive_packets(version, &mut buf, max, true);
});
