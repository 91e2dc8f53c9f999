//! `broker::gate::codec::read_packet` on arbitrary bytes: rumqttc's MQTT 3.1.1 and 5
//! decoders plus the gate's short MQTT 5 DISCONNECT forms. The first byte picks the
//! version (bit 0: 3.1.1 or 5) and the packet size limit (bit 1: 64 KiB or 128 bytes);
//! the rest is read packet after packet until the codec wants more bytes or gives up.
//! Every packet read must consume bytes (no endless loop in the session).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let (version, max) = chatd_fuzz::pick(first);
    let mut buf = BytesMut::from(rest);
    chatd_fuzz::drive_packets(version, &mut buf, max, false);
});
