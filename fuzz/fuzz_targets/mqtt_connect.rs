//! `broker::gate::codec::read_connect` on arbitrary bytes (the first bytes a device sends),
//! with a 64 KiB limit; after an accepted CONNECT, the rest of the buffer goes to
//! `read_packet` in the negotiated version, as in the `mqtt_packets` target.
//! `Incomplete` ("read more") must leave the buffer as it was: the session appends to it.
#![no_main]

use broker::gate::codec::{read_connect, ConnectRead};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    match read_connect(&mut buf, chatd_fuzz::MAX_PACKET) {
        ConnectRead::Incomplete => {
            assert_eq!(&buf[..], data, "read_connect returned Incomplete but changed the buffer");
        }
        ConnectRead::NotMqtt(why) => {
            let _ = why.len();
        }
        ConnectRead::Refused(version, refusal) => {
            let _ = format!("{version:?} {refusal:?}");
        }
        ConnectRead::Connect(req) => {
            assert!(buf.len() < data.len(), "read_connect accepted a CONNECT without consuming it");
            let _ = format!("{req:?}");
            chatd_fuzz::drive_packets(req.version, &mut buf, chatd_fuzz::MAX_PACKET, false);
        }
    }
});
