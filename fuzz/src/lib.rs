//! Helpers shared by the fuzz targets in `fuzz_targets/` (see README.md).

use broker::gate::codec::{read_packet, DevicePacket, Version};
use bytes::BytesMut;

/// The packet size limit the MQTT targets use by default (the gate's order of magnitude).
pub const MAX_PACKET: usize = 64 * 1024;

/// Reads packets off `buf` the way the gate's session does, until the codec wants more
/// bytes (`Ok(None)`) or gives up (`Err`). Every packet read must consume bytes, or the
/// session would spin forever on the same buffer.
///
/// With `strict`, also checks the documented contract of `Ok(None)` ("when it is not all
/// there yet"): the buffer is left as it was, so that the session can append to it.
/// Returns the number of packets read.
pub fn drive_packets(version: Version, buf: &mut BytesMut, max_packet: usize, strict: bool) -> usize {
    let mut packets = 0;
    loop {
        let before = buf.len();
        let snapshot = strict.then(|| buf.clone());
        match read_packet(version, buf, max_packet) {
            Ok(Some(packet)) => {
                assert!(
                    buf.len() < before,
                    "read_packet({version:?}) returned {packet:?} without consuming bytes ({before} left)"
                );
                touch(&packet);
                packets += 1;
            }
            Ok(None) => {
                if let Some(snapshot) = snapshot {
                    assert!(
                        *buf == snapshot,
                        "read_packet({version:?}) returned Ok(None) (\"not all there yet\") but consumed {} of {} bytes: {:02x?}",
                        before - buf.len(),
                        before,
                        &snapshot[..snapshot.len().min(64)],
                    );
                }
                return packets;
            }
            Err(malformed) => {
                // The reason goes into logs and a DISCONNECT reason string.
                let _ = format!("{malformed:?}");
                return packets;
            }
        }
    }
}

/// Formats a packet the way the gate's logs would, to touch every field.
fn touch(packet: &DevicePacket) {
    let _ = format!("{packet:?}");
}

/// The version and packet size limit picked by a target's first byte: bit 0 picks MQTT
/// 3.1.1 (0) or 5 (1), bit 1 the default limit (0) or a small one (1), so that the
/// over-the-limit paths are reached with short inputs.
pub fn pick(byte: u8) -> (Version, usize) {
    let version = if byte & 1 == 0 { Version::V4 } else { Version::V5 };
    let max = if byte & 2 == 0 { MAX_PACKET } else { 128 };
    (version, max)
}
