//! Reading what a device sends: its CONNECT, then its packets, in MQTT 3.1.1 or 5.
//!
//! Kept apart from the session and free of I/O, so that everything the gate does with a
//! device's untrusted bytes before it acts on them can be fuzzed on its own (`fuzz/`):
//! these functions take a buffer, consume whole packets from it, and never panic, whatever
//! the bytes. The codecs are rumqttc's; what is ours is the choice of version, the limits,
//! and the short MQTT 5 DISCONNECT forms rumqttc does not read.

use bytes::BytesMut;
use rumqttc::mqttbytes::{self, v4, QoS};
use rumqttc::v5::mqttbytes::v5;

/// The protocol version a device connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// Why a CONNECT is refused; each maps to a 3.1.1 and a 5 return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Protocol,
    ClientId,
    NotAuthorized,
    Busy,
    Unavailable,
    /// The user connects too often (a reconnect loop).
    TooOften,
}

impl Refusal {
    /// Its name in metrics (`chatd_mqtt_connects_total{result}`).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Protocol => "protocol",
            Refusal::ClientId => "client_id",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::Busy => "busy",
            Refusal::Unavailable => "unavailable",
            Refusal::TooOften => "too_often",
        }
    }
}

impl Version {
    /// Its name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Version::V4 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// The version-neutral part of a CONNECT that the gate acts on.
#[derive(Debug)]
pub struct ConnectRequest {
    pub version: Version,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub login: Option<(String, String)>,
    pub will: Option<v4::LastWill>,
    /// MQTT 5: how many QoS 1/2 publishes the device takes unacknowledged.
    pub receive_max: u16,
    /// MQTT 5: the largest packet the device takes.
    pub device_max_packet: usize,
    /// MQTT 5: how many topic aliases the device takes from the server.
    pub device_alias_max: u16,
    /// The device asked for the compact envelope (MessagePack) instead of JSON.
    pub compact: bool,
}

/// What the first bytes of a connection amount to so far.
#[derive(Debug)]
pub enum ConnectRead {
    /// Not a whole first packet yet: read more.
    Incomplete,
    /// Not MQTT, or not starting with CONNECT: close without answering.
    NotMqtt(String),
    /// A CONNECT the gate can act on.
    Connect(ConnectRequest),
    /// A CONNECT to refuse, answered in this version.
    Refused(Version, Refusal),
}

/// Reads the first packet of a connection from `buf`, if it is all there.
pub fn read_connect(buf: &mut BytesMut, max_packet: usize) -> ConnectRead {
    // Not MQTT (or not starting with CONNECT): no need to wait for the rest.
    if buf.first().is_some_and(|b| b >> 4 != 1) {
        return ConnectRead::NotMqtt("first packet is not CONNECT".into());
    }
    match mqttbytes::check(buf.iter(), max_packet) {
        Ok(_) => {}
        Err(mqttbytes::Error::InsufficientBytes(_)) => return ConnectRead::Incomplete,
        Err(e) => return ConnectRead::NotMqtt(e.to_string()),
    }
    match connect_level(buf) {
        Some(4) => match v4::Packet::read(buf, max_packet) {
            Ok(v4::Packet::Connect(c)) => {
                let (login, compact) = negotiate(c.login.map(|l| (l.username, l.password)), false);
                ConnectRead::Connect(ConnectRequest {
                    version: Version::V4,
                    client_id: c.client_id,
                    clean: c.clean_session,
                    keep_alive: c.keep_alive,
                    login,
                    will: c.last_will,
                    receive_max: u16::MAX,
                    device_max_packet: usize::MAX,
                    device_alias_max: 0,
                    compact,
                })
            }
            _ => ConnectRead::Refused(Version::V4, Refusal::Protocol),
        },
        Some(5) => match v5::Packet::read(buf, Some(max_packet as u32)) {
            Ok(v5::Packet::Connect(c, will, login)) => {
                let properties = c.properties.as_ref();
                let asked = properties
                    .is_some_and(|p| p.user_properties.iter().any(|(k, v)| k == ENCODING_KEY && v == COMPACT));
                let (login, compact) = negotiate(login.map(|l| (l.username, l.password)), asked);
                ConnectRead::Connect(ConnectRequest {
                    version: Version::V5,
                    compact,
                    device_alias_max: properties.and_then(|p| p.topic_alias_max).unwrap_or(0),
                    receive_max: properties
                        .and_then(|p| p.receive_maximum)
                        .filter(|n| *n > 0)
                        .unwrap_or(u16::MAX),
                    device_max_packet: properties
                        .and_then(|p| p.max_packet_size)
                        .map_or(usize::MAX, |n| n as usize),
                    client_id: c.client_id,
                    clean: c.clean_start,
                    keep_alive: c.keep_alive,
                    login,
                    will: will.and_then(|w| {
                        Some(v4::LastWill {
                            topic: String::from_utf8(w.topic.to_vec()).ok()?,
                            message: w.message,
                            qos: qos_v4(w.qos),
                            retain: w.retain,
                        })
                    }),
                })
            }
            _ => ConnectRead::Refused(Version::V5, Refusal::Protocol),
        },
        _ => ConnectRead::Refused(Version::V4, Refusal::Protocol),
    }
}

/// A packet from a connected device, in its version.
// Returned and consumed at once for every packet: boxing the larger variant would cost an
// allocation per packet to save stack space that is never held.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum DevicePacket {
    V4(v4::Packet),
    V5(v5::Packet),
}

/// A packet that cannot be read: the connection is closed with this reason.
#[derive(Debug)]
pub struct Malformed {
    pub why: String,
    /// Over the packet size limit (MQTT 5 reason 0x95 rather than 0x81).
    pub too_large: bool,
}

/// Takes the next whole packet off `buf`; `Ok(None)` when it is not all there yet.
pub fn read_packet(version: Version, buf: &mut BytesMut, max_packet: usize) -> Result<Option<DevicePacket>, Malformed> {
    let before = buf.len();
    let read = read_packet_unchecked(version, buf, max_packet);
    // rumqttc takes a whole packet off the buffer before parsing it, and a packet whose
    // contents are shorter than its fields say (an MQTT 5 PUBLISH without its properties'
    // length, found by fuzzing) comes back as "not enough bytes": the packet is gone, and
    // waiting for more would parse the next packet from the wrong place.
    if matches!(read, Ok(None)) && buf.len() != before {
        return Err(Malformed {
            why: "a packet is shorter than its own fields say".into(),
            too_large: false,
        });
    }
    read
}

fn read_packet_unchecked(
    version: Version,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<DevicePacket>, Malformed> {
    match version {
        Version::V4 => match v4::Packet::read(buf, max_packet) {
            Ok(packet) => Ok(Some(DevicePacket::V4(packet))),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(Malformed {
                too_large: matches!(e, mqttbytes::Error::PayloadSizeLimitExceeded(_)),
                why: e.to_string(),
            }),
        },
        Version::V5 => {
            // MQTT 5 lets a DISCONNECT omit its properties, or its reason code too (as
            // Mosquitto's clients do); rumqttc's codec rejects both short forms.
            if let Some((len, code)) = short_disconnect(buf) {
                let _ = buf.split_to(len);
                let reason = if code == v5::DisconnectReasonCode::DisconnectWithWillMessage as u8 {
                    v5::DisconnectReasonCode::DisconnectWithWillMessage
                } else {
                    v5::DisconnectReasonCode::NormalDisconnection
                };
                return Ok(Some(DevicePacket::V5(v5::Packet::Disconnect(v5::Disconnect::new(
                    reason,
                )))));
            }
            match v5::Packet::read(buf, Some(max_packet as u32)) {
                Ok(packet) => Ok(Some(DevicePacket::V5(packet))),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(Malformed {
                    too_large: matches!(e, rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }),
                    why: e.to_string(),
                }),
            }
        }
    }
}

/// The CONNECT user property (MQTT 5) that asks for an encoding, and its compact value.
const ENCODING_KEY: &str = "enc";
const COMPACT: &str = "compact";

/// Whether the device asked for the compact envelope, by the MQTT 5 user property
/// `enc: compact` (`asked`) or, in any version, a username ending in `?enc=compact`, which
/// is cut off before authentication.
fn negotiate(login: Option<(String, String)>, asked: bool) -> (Option<(String, String)>, bool) {
    const SUFFIX: &str = "?enc=compact";
    match login {
        Some((user, pass)) if user.ends_with(SUFFIX) => {
            (Some((user[..user.len() - SUFFIX.len()].to_string(), pass)), true)
        }
        login => (login, asked),
    }
}

/// The protocol level byte of a CONNECT: after the fixed header, `00 04 'MQTT'`, then the level.
fn connect_level(buf: &[u8]) -> Option<u8> {
    // Fixed header: one type byte, then 1-4 bytes of remaining length (last has bit 7 clear).
    let length_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let start = 1 + length_bytes;
    let vh = buf.get(start..start + 7)?;
    (vh[..6] == *b"\x00\x04MQTT").then_some(vh[6])
}

/// An MQTT 5 DISCONNECT without properties: `E0 00` (normal) or `E0 01 <reason>`; returns
/// its length and reason code.
fn short_disconnect(buf: &[u8]) -> Option<(usize, u8)> {
    match buf {
        [0xE0, 0x00, ..] => Some((2, 0)),
        [0xE0, 0x01, code, ..] => Some((3, *code)),
        _ => None,
    }
}

pub(crate) fn qos_v4(qos: rumqttc::v5::mqttbytes::QoS) -> QoS {
    match qos {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/regressions/mqtt_packets_contract/`): an MQTT 5 PUBLISH whose
    /// remaining length covers its topic but not its properties' length. It was taken off
    /// the buffer and reported as incomplete.
    #[test]
    fn a_packet_shorter_than_its_fields_is_malformed_not_incomplete() {
        let mut buf = BytesMut::from(&[0x31, 0x03, 0x00, 0x01, 0x10][..]);
        assert!(read_packet(Version::V5, &mut buf, 1024).is_err());
        // A packet really cut short is still just incomplete, and nothing is taken.
        let mut buf = BytesMut::from(&[0x30, 0x0A, 0x00, 0x03, b'a'][..]);
        assert!(matches!(read_packet(Version::V5, &mut buf, 1024), Ok(None)));
        assert_eq!(buf.len(), 5);
        let mut buf = BytesMut::from(&[0x30, 0x0A, 0x00, 0x03, b'a'][..]);
        assert!(matches!(read_packet(Version::V4, &mut buf, 1024), Ok(None)));
        assert_eq!(buf.len(), 5);
    }

    #[test]
    fn short_mqtt5_disconnects_are_read() {
        for (bytes, reason) in [
            (&[0xE0, 0x00][..], v5::DisconnectReasonCode::NormalDisconnection),
            (
                &[0xE0, 0x01, 0x04][..],
                v5::DisconnectReasonCode::DisconnectWithWillMessage,
            ),
        ] {
            let mut buf = BytesMut::from(bytes);
            match read_packet(Version::V5, &mut buf, 1024) {
                Ok(Some(DevicePacket::V5(v5::Packet::Disconnect(d)))) => assert_eq!(d.reason_code, reason),
                other => panic!("{other:?}"),
            }
            assert!(buf.is_empty());
        }
    }
}
