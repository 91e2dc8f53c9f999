//! `mqtt_packets_contract` for MQTT 3.1.1 only (byte 0 bit 1 still picks the size limit),
//! so that the 3.1.1 decoder gets searched for the same contract violation once the MQTT 5
//! one is known (README.md, finding 2).
#![no_main]

use broker::gate::codec::Version;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let (_, max) = chatd_fuzz::pick(first);
    let mut buf = BytesMut::from(rest);
    chatd_fuzz::drive_packets(Version::V4, &mut buf, max, true);
});
