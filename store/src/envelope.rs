//! The JSON envelope on the wire (documented in `topics.md`), and the small binary frames
//! the gate and the bridge put around it inside the broker.
//!
//! Devices publish *client ops* (`send`, `sync`) on their outbox; the server answers with
//! *server ops* (`msg`, `ack`, `error`, `synced`) on their inbox. Parsing never panics and
//! turns every problem into an [`OpError`] with a stable `code` and a message that names
//! the problem.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest envelope a device may publish, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// The longest client message id (`cid`).
pub const MAX_CID_BYTES: usize = 128;
/// The most messages one `sync` reply carries.
pub const MAX_SYNC_LIMIT: i64 = 200;

/// The kind of conversation a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatType {
    /// One to one.
    User,
    /// A group: stored, in every member's inbox.
    Group,
    /// A chatroom: live to subscribed members, with a short recent history.
    Room,
}

impl ChatType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatType::User => "user",
            ChatType::Group => "group",
            ChatType::Room => "room",
        }
    }
}

/// Message types, as in the Agora/Easemob message formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MsgType {
    Txt,
    Img,
    Audio,
    Video,
    File,
    Loc,
    Cmd,
    Custom,
}

impl MsgType {
    pub fn as_str(self) -> &'static str {
        match self {
            MsgType::Txt => "txt",
            MsgType::Img => "img",
            MsgType::Audio => "audio",
            MsgType::Video => "video",
            MsgType::File => "file",
            MsgType::Loc => "loc",
            MsgType::Cmd => "cmd",
            MsgType::Custom => "custom",
        }
    }

    /// Whether a body of this type points at a file (`url`, and a video's `thumb`).
    pub fn carries_files(self) -> bool {
        matches!(self, MsgType::Img | MsgType::Audio | MsgType::Video | MsgType::File)
    }

    pub fn parse(s: &str) -> Option<MsgType> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    /// Checks the body against the type's required fields.
    pub fn validate_body(self, body: &Value) -> Result<(), String> {
        let obj = body.as_object().ok_or("body must be an object")?;
        let string = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let number = |k: &str| obj.get(k).and_then(Value::as_f64);
        let need = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        match self {
            MsgType::Txt => need(string("msg").is_some(), "txt body needs a non-empty string 'msg'"),
            MsgType::Img | MsgType::Audio | MsgType::Video | MsgType::File => {
                need(string("url").is_some(), "body needs a non-empty string 'url'")
            }
            MsgType::Loc => {
                let lat = number("lat").ok_or("loc body needs a number 'lat'")?;
                let lng = number("lng").ok_or("loc body needs a number 'lng'")?;
                need(
                    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng),
                    "loc 'lat' must be within ±90 and 'lng' within ±180",
                )
            }
            MsgType::Cmd => need(string("action").is_some(), "cmd body needs a non-empty string 'action'"),
            MsgType::Custom => need(
                string("customEvent").is_some(),
                "custom body needs a non-empty string 'customEvent'",
            ),
        }
    }
}

/// `{"op":"send",…}`: send a message.
#[derive(Debug, Clone, PartialEq)]
pub struct SendOp {
    pub cid: String,
    pub chat: ChatType,
    pub to: String,
    pub kind: MsgType,
    pub body: Value,
    pub ext: Option<Value>,
    /// A self-destructing message: erased this long after it is read, or sent.
    pub destroy: Option<Destroy>,
}

/// The longest a self-destructing message may live: 7 days.
pub const MAX_DESTROY_SECS: i64 = 7 * 24 * 3600;

/// `"destroy": {"after": 30, "from": "read"}`: the message's body (and its files) are
/// erased `after` seconds after the recipient reads it (one-to-one chats only), or after it
/// is sent (one-to-one and group chats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destroy {
    pub after: i64,
    pub from: DestroyFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestroyFrom {
    Read,
    Sent,
}

impl DestroyFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            DestroyFrom::Read => "read",
            DestroyFrom::Sent => "sent",
        }
    }
}

impl Destroy {
    /// Checks the timer and that `chat` can have it.
    pub fn validate(&self, chat: ChatType) -> Result<(), String> {
        if !(1..=MAX_DESTROY_SECS).contains(&self.after) {
            return Err(format!("'destroy.after' must be from 1 to {MAX_DESTROY_SECS} seconds"));
        }
        match (chat, self.from) {
            (ChatType::Room, _) => Err("chatroom messages cannot self-destruct".into()),
            (ChatType::Group, DestroyFrom::Read) => Err(
                "'destroy.from': \"read\" is for one-to-one chats; a group message can be destroyed after it is \"sent\""
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// `{"op":"sync","after":N,"limit":L}`: fetch inbox entries after `useq` N.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncOp {
    pub cid: Option<String>,
    pub after: i64,
    pub limit: i64,
}

/// `{"op":"typing","chat":"user"|"group","to":…}`: relayed, never stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TypingOp {
    pub chat: ChatType,
    pub to: String,
}

/// `{"op":"join"|"leave","room":…}`: enter or leave a chatroom.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomOp {
    pub cid: Option<String>,
    pub room: String,
}

/// `{"op":"read"|"delivered","conv":…,"seq":…}`: everything up to `seq` is read (delivered).
#[derive(Debug, Clone, PartialEq)]
pub struct MarkOp {
    pub conv: String,
    pub seq: i64,
}

/// What `{"op":"recall"|"edit"|"delete"|"react","id":…}` does to a stored message.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Recall,
    Edit(Value),
    /// Delete for me.
    Delete,
    React {
        emoji: String,
        add: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChangeOp {
    pub cid: Option<String>,
    pub id: String,
    pub change: Change,
}

/// Push preferences a device sets over MQTT.
#[derive(Debug, Clone, PartialEq)]
pub enum PushChange {
    /// `{"op":"push_bind","device_token","notifier_name":"apns"|"fcm","device_id"?}` (the device
    /// id defaults to the MQTT client id).
    Bind {
        device_id: Option<String>,
        token: String,
        notifier: crate::push::Notifier,
    },
    /// `{"op":"push_unbind","device_id"?}`
    Unbind { device_id: Option<String> },
    /// `{"op":"dnd","all_off","quiet_start","quiet_end","utc_offset_minutes"}`
    Dnd(crate::push::Dnd),
    /// `{"op":"mute_conv","conv","muted"}`
    Mute { conv: String, muted: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PushOp {
    pub cid: Option<String>,
    pub change: PushChange,
}

/// Something a device asks the server to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    Push(PushOp),
    Send(SendOp),
    Sync(SyncOp),
    Typing(TypingOp),
    Join(RoomOp),
    Leave(RoomOp),
    Read(MarkOp),
    Delivered(MarkOp),
    Change(ChangeOp),
}

/// Why a client op was refused: sent back as `{"op":"error","cid","code","message"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpError {
    pub op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    pub code: &'static str,
    pub message: String,
}

impl OpError {
    pub fn new(cid: Option<String>, code: &'static str, message: impl Into<String>) -> OpError {
        OpError {
            op: "error",
            cid,
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct RawSend {
    chat: ChatType,
    to: String,
    #[serde(rename = "type")]
    kind: MsgType,
    body: Value,
    #[serde(default)]
    ext: Option<Value>,
    #[serde(default)]
    destroy: Option<Destroy>,
}

/// The fields every envelope is routed by, read without building the rest: a send (nearly
/// everything a device publishes) is then read straight into [`RawSend`], never into a
/// [`Value`] tree of the whole envelope first (that tree and its copy into `RawSend` were 8%
/// of chatd's instructions per message).
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    op: Option<Value>,
    #[serde(default)]
    cid: Option<Value>,
}

/// Finds `"send"` in an envelope with memchr's SIMD search (a byte-by-byte scan of the
/// envelope cost each send 1.8k instructions; this costs it about a tenth of that).
static SPELLS_SEND: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#""send""#));

/// Parses what a device published on its outbox.
pub fn parse_client_op(payload: &[u8]) -> Result<ClientOp, OpError> {
    if payload.len() > MAX_ENVELOPE_BYTES {
        return Err(OpError::new(
            None,
            "too_large",
            format!("envelope is {} bytes; the limit is {MAX_ENVELOPE_BYTES}", payload.len()),
        ));
    }
    // The fast road, for a JSON object whose head reads cleanly. Anything else (not JSON, not
    // an object, a key given twice) takes the road below, which says what is wrong as it
    // always has. Checking for `{` first keeps a JSON array from being read as a struct; an
    // envelope that never spells `"send"` (a receipt, a sync) goes straight to the road below
    // rather than being read twice (one that spells it with escapes reads the same there).
    if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') && SPELLS_SEND.find(payload).is_some() {
        if let Ok(head) = serde_json::from_slice::<Head>(payload) {
            if head.op.as_ref().and_then(Value::as_str) == Some("send") {
                let cid = cid_of(head.cid.as_ref())?;
                return parse_send(cid, || serde_json::from_slice(payload));
            }
        }
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| OpError::new(None, "bad_json", format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| OpError::new(None, "bad_json", "the envelope must be a JSON object"))?;
    let cid = cid_of(obj.get("cid"))?;
    let invalid = |message: String| OpError::new(cid.clone(), "invalid", message);
    match obj.get("op").and_then(Value::as_str) {
        // `value` is not needed past this point: moved, not cloned.
        Some("send") => parse_send(cid, || serde_json::from_value(value)),
        Some("sync") => {
            let after = match obj.get("after") {
                None => 0,
                Some(v) => v
                    .as_i64()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| invalid("'after' must be a non-negative integer".into()))?,
            };
            let limit = match obj.get("limit") {
                None => 100,
                Some(v) => v
                    .as_i64()
                    .filter(|n| (1..=MAX_SYNC_LIMIT).contains(n))
                    .ok_or_else(|| invalid(format!("'limit' must be an integer from 1 to {MAX_SYNC_LIMIT}")))?,
            };
            Ok(ClientOp::Sync(SyncOp { cid, after, limit }))
        }
        Some("typing") => {
            let chat: ChatType = obj
                .get("chat")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .filter(|c| *c != ChatType::Room)
                .ok_or_else(|| invalid("'typing' needs 'chat': \"user\" or \"group\"".into()))?;
            let to = obj
                .get("to")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("'typing' needs 'to'".into()))?;
            let to = crate::names::username(to).map_err(|e| invalid(format!("'to': {e}")))?;
            Ok(ClientOp::Typing(TypingOp { chat, to }))
        }
        Some(op @ ("join" | "leave")) => {
            let room = obj
                .get("room")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("'{op}' needs 'room'")))?;
            let room = crate::names::id("room", room).map_err(|e| invalid(e.to_string()))?;
            let op_value = RoomOp { cid, room };
            Ok(if op == "join" {
                ClientOp::Join(op_value)
            } else {
                ClientOp::Leave(op_value)
            })
        }
        Some(op @ ("read" | "delivered")) => {
            let conv = obj
                .get("conv")
                .and_then(Value::as_str)
                .filter(|c| c.len() <= 200)
                .ok_or_else(|| invalid(format!("'{op}' needs 'conv'")))?
                .to_string();
            let seq = obj
                .get("seq")
                .and_then(Value::as_i64)
                .filter(|s| *s >= 0)
                .ok_or_else(|| invalid(format!("'{op}' needs a non-negative integer 'seq'")))?;
            let mark = MarkOp { conv, seq };
            Ok(if op == "read" {
                ClientOp::Read(mark)
            } else {
                ClientOp::Delivered(mark)
            })
        }
        Some(op @ ("recall" | "edit" | "delete" | "react")) => {
            let id = obj
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty() && id.len() <= 64)
                .ok_or_else(|| invalid(format!("'{op}' needs the message 'id'")))?
                .to_string();
            let change = match op {
                "recall" => Change::Recall,
                "delete" => Change::Delete,
                "edit" => Change::Edit(
                    obj.get("body")
                        .cloned()
                        .ok_or_else(|| invalid("'edit' needs 'body'".into()))?,
                ),
                _ => {
                    let emoji = obj
                        .get("emoji")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid("'react' needs 'emoji'".into()))?;
                    let add = match obj.get("action").and_then(Value::as_str) {
                        None | Some("add") => true,
                        Some("remove") => false,
                        Some(_) => return Err(invalid("'action' is \"add\" or \"remove\"".into())),
                    };
                    Change::React {
                        emoji: emoji.to_string(),
                        add,
                    }
                }
            };
            Ok(ClientOp::Change(ChangeOp { cid, id, change }))
        }
        Some(op @ ("push_bind" | "push_unbind" | "dnd" | "mute_conv")) => {
            let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_string);
            let change = match op {
                "push_bind" => PushChange::Bind {
                    device_id: text("device_id"),
                    token: text("device_token").ok_or_else(|| invalid("'push_bind' needs 'device_token'".into()))?,
                    // `notifier_name`, as on REST; `notifier` is what it was called before.
                    notifier: text("notifier_name")
                        .or_else(|| text("notifier"))
                        .and_then(|n| crate::push::Notifier::parse(&n))
                        .ok_or_else(|| invalid("'notifier_name' is \"apns\" or \"fcm\"".into()))?,
                },
                "push_unbind" => PushChange::Unbind {
                    device_id: text("device_id"),
                },
                "dnd" => {
                    let mut fields = obj.clone();
                    fields.remove("op");
                    fields.remove("cid");
                    PushChange::Dnd(serde_json::from_value(Value::Object(fields)).map_err(|e| invalid(e.to_string()))?)
                }
                _ => PushChange::Mute {
                    conv: text("conv").ok_or_else(|| invalid("'mute_conv' needs 'conv'".into()))?,
                    muted: obj.get("muted").and_then(Value::as_bool).unwrap_or(true),
                },
            };
            Ok(ClientOp::Push(PushOp { cid, change }))
        }
        Some(other) => Err(OpError::new(cid, "unknown_op", format!("unknown op '{other}'"))),
        None => Err(invalid("missing string field 'op'".into())),
    }
}

/// An envelope's `cid`: absent or null, or a string of 1-[`MAX_CID_BYTES`] bytes.
fn cid_of(cid: Option<&Value>) -> Result<Option<String>, OpError> {
    match cid {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_CID_BYTES => Ok(Some(s.clone())),
        Some(_) => Err(OpError::new(
            None,
            "invalid",
            format!("'cid' must be a string of 1-{MAX_CID_BYTES} bytes"),
        )),
    }
}

/// A `send`, its fields read by `read` (from the envelope's bytes or from its parsed value).
fn parse_send(cid: Option<String>, read: impl FnOnce() -> serde_json::Result<RawSend>) -> Result<ClientOp, OpError> {
    let invalid = |message: String| OpError::new(cid.clone(), "invalid", message);
    let cid = cid
        .clone()
        .ok_or_else(|| invalid("'send' needs a 'cid' (the client's message id)".into()))?;
    let raw = read().map_err(|e| invalid(e.to_string()))?;
    raw.kind.validate_body(&raw.body).map_err(invalid)?;
    if let Some(destroy) = &raw.destroy {
        destroy.validate(raw.chat).map_err(invalid)?;
    }
    let to = match raw.chat {
        ChatType::User => crate::names::username(&raw.to),
        ChatType::Group | ChatType::Room => crate::names::id("to", &raw.to),
    }
    .map_err(|e| invalid(format!("'to': {e}")))?;
    Ok(ClientOp::Send(SendOp {
        cid,
        chat: raw.chat,
        to,
        kind: raw.kind,
        body: raw.body,
        ext: raw.ext.filter(|e| !e.is_null()),
        destroy: raw.destroy,
    }))
}

/// A stored message as a device receives it: `{"op":"msg",…}` on the inbox, and the items
/// of `synced` replies and REST history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    #[serde(default = "op_msg")]
    pub op: String,
    /// Server message id.
    pub id: String,
    /// Conversation id, e.g. `u:alice:bob`.
    pub conv: String,
    /// Position in the conversation (1, 2, 3, … with no gaps).
    pub seq: i64,
    /// Position in the receiving user's inbox; absent in conversation history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub useq: Option<i64>,
    pub ts: i64,
    pub chat: String,
    pub from: String,
    /// The sending device (MQTT client id), on the sender's own copies only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_device: Option<String>,
    pub to: String,
    /// The sender's `cid`, on the sender's own copies only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub body: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext: Option<Value>,
    /// Recalled: the body is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
    /// When the sender last edited it (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<i64>,
    /// Deleted by this user for themselves (sync only shows the place it held).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
    /// Emoji reactions, in history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// A self-destructing message's timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy: Option<Destroy>,
    /// Self-destructed: the body (and its files) are gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub destroyed: bool,
}

/// One emoji's reactions to a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reaction {
    pub emoji: String,
    pub count: usize,
    pub users: Vec<String>,
}

fn op_msg() -> String {
    "msg".into()
}

/// `{"op":"ack",…}`: the message with this `cid` is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub op: String,
    pub cid: String,
    pub id: String,
    pub conv: String,
    pub seq: i64,
    pub ts: i64,
    /// The message's position in the sender's own inbox, so the sending device can move its
    /// sync position past it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub useq: Option<i64>,
}

/// `{"op":"synced",…}`: one page of a device's catch-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Synced {
    pub op: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// The `after` the device asked for.
    pub after: i64,
    /// The highest `useq` in this page (equal to `after` when the page is empty):
    /// the next request's `after`.
    pub last: i64,
    /// True when more entries follow this page.
    pub more: bool,
    pub msgs: Vec<Delivered>,
}

/// Who among a user's connected devices gets an inbox publish; the gate applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    All,
    Only(&'a str),
    Except(&'a str),
}

/// Wraps an inbox payload with its route: `[kind][len][device][json]`.
pub fn frame_inbox(route: Route<'_>, json: &[u8]) -> Vec<u8> {
    let (kind, device) = match route {
        Route::All => (0u8, ""),
        Route::Only(d) => (1, d),
        Route::Except(d) => (2, d),
    };
    frame(kind, device, json)
}

/// Splits an inbox frame into its route and JSON.
pub fn unframe_inbox(payload: &[u8]) -> Option<(Route<'_>, &[u8])> {
    let (kind, device, json) = unframe(payload)?;
    let route = match kind {
        0 => Route::All,
        1 => Route::Only(device),
        2 => Route::Except(device),
        _ => return None,
    };
    Some((route, json))
}

/// Wraps an outbox payload with the device that published it (the gate knows; the
/// bridge cannot tell from the topic).
pub fn frame_outbox(device: &str, json: &[u8]) -> Vec<u8> {
    frame(0x10, device, json)
}

/// Wraps why the gate could not read what a device published (a compact envelope that is
/// not one), for the bridge to answer with an `error` op.
pub fn frame_outbox_unreadable(device: &str, why: &str) -> Vec<u8> {
    frame(0x11, device, why.as_bytes())
}

/// Splits an outbox frame into the sending device and the JSON the device published, or
/// why the gate could not read it.
pub fn unframe_outbox(payload: &[u8]) -> Option<(&str, Result<&[u8], &str>)> {
    match unframe(payload)? {
        (0x10, device, json) => Some((device, Ok(json))),
        (0x11, device, why) => Some((device, Err(std::str::from_utf8(why).unwrap_or("unreadable")))),
        _ => None,
    }
}

fn frame(kind: u8, device: &str, json: &[u8]) -> Vec<u8> {
    let device = &device.as_bytes()[..device.len().min(255)];
    let mut out = Vec::with_capacity(2 + device.len() + json.len());
    out.push(kind);
    out.push(device.len() as u8);
    out.extend_from_slice(device);
    out.extend_from_slice(json);
    out
}

fn unframe(payload: &[u8]) -> Option<(u8, &str, &[u8])> {
    let kind = *payload.first()?;
    let len = *payload.get(1)? as usize;
    let device = std::str::from_utf8(payload.get(2..2 + len)?).ok()?;
    Some((kind, device, &payload[2 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(payload: &str) -> OpError {
        parse_client_op(payload.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_send() {
        let op =
            parse_client_op(br#"{"op":"send","cid":"c1","chat":"user","to":"Bob","type":"txt","body":{"msg":"hi"}}"#)
                .unwrap();
        let ClientOp::Send(send) = op else { panic!("not a send") };
        assert_eq!(
            (send.cid.as_str(), send.to.as_str(), send.kind),
            ("c1", "bob", MsgType::Txt)
        );
    }

    #[test]
    fn refuses_bad_input_with_codes() {
        assert_eq!(err("{not json").code, "bad_json");
        assert_eq!(err("[1]").code, "bad_json");
        let e = err(r#"{"op":"dance","cid":"c9"}"#);
        assert_eq!((e.code, e.cid.as_deref()), ("unknown_op", Some("c9")));
        let e = err(r#"{"op":"send","cid":"c2","chat":"user","to":"bob","type":"txt","body":{}}"#);
        assert_eq!((e.code, e.cid.as_deref()), ("invalid", Some("c2")));
        assert!(e.message.contains("msg"), "{}", e.message);
        assert_eq!(
            err(r#"{"op":"send","chat":"user","to":"bob","type":"txt","body":{"msg":"x"}}"#).code,
            "invalid"
        );
        assert_eq!(
            err(r#"{"op":"send","cid":"c","chat":"user","to":"b/#","type":"txt","body":{"msg":"x"}}"#).code,
            "invalid"
        );
        assert_eq!(
            err(r#"{"op":"send","cid":"c","chat":"user","to":"b","type":"gif","body":{"msg":"x"}}"#).code,
            "invalid"
        );
        assert_eq!(
            err(r#"{"op":"send","cid":"c","chat":"user","to":"b","type":"loc","body":{"lat":91,"lng":0}}"#).code,
            "invalid"
        );
        let big = format!(
            r#"{{"op":"send","cid":"c","chat":"user","to":"b","type":"txt","body":{{"msg":"{}"}}}}"#,
            "x".repeat(MAX_ENVELOPE_BYTES)
        );
        assert_eq!(err(&big).code, "too_large");
        assert_eq!(err(r#"{"op":"sync","after":-1}"#).code, "invalid");
    }

    /// A send read straight from its bytes is the send the parsed value gives, and the
    /// envelopes the fast road cannot read are answered as they always were.
    #[test]
    fn a_send_read_from_bytes_is_the_send_read_from_its_value() {
        let envelopes = [
            r#"{"op":"send","cid":"c1","chat":"user","to":"Bob","type":"txt","body":{"msg":"hi \u00e9\n"},"ext":{"b":[1,2.5,null],"a":"x"}}"#,
            r#" {"body":{"msg":"hi"},"type":"txt","to":"g1","chat":"group","cid":"c2","op":"send","extra":{"x":[1]}}"#,
            r#"{"op":"send","cid":"c3","chat":"user","to":"bob","type":"txt","body":{"msg":"x"},"ext":null,"destroy":{"after":30,"from":"read"}}"#,
            r#"{"op":"send","cid":"c4","chat":"user","to":"bob","type":"loc","body":{"lat":1.5,"lng":-2}}"#,
        ];
        for envelope in envelopes {
            let fast = parse_client_op(envelope.as_bytes()).unwrap();
            let value: Value = serde_json::from_str(envelope).unwrap();
            let cid = cid_of(value.get("cid")).unwrap();
            let slow = parse_send(cid, || serde_json::from_value(value)).unwrap();
            assert_eq!(fast, slow, "{envelope}");
        }
        // `send` spelled with an escape skips the fast road and reads the same on the other.
        let plain =
            parse_client_op(br#"{"op":"send","cid":"c8","chat":"user","to":"bob","type":"txt","body":{"msg":"x"}}"#);
        let escaped = parse_client_op(
            br#"{"op":"se\u006ed","cid":"c8","chat":"user","to":"bob","type":"txt","body":{"msg":"x"}}"#,
        );
        assert!(matches!(plain, Ok(ClientOp::Send(_))), "{plain:?}");
        assert_eq!(plain, escaped);
        // An array is not an envelope, even one whose items would fill a send's fields in order.
        let e = err(r#"["user","bob","txt",{"msg":"x"}]"#);
        assert_eq!(
            (e.code, e.message.as_str()),
            ("bad_json", "the envelope must be a JSON object")
        );
        // `op` given twice: the last one counts, as in any JSON object read whole.
        let Ok(ClientOp::Sync(_)) = parse_client_op(br#"{"op":"send","op":"sync","cid":"c5"}"#) else {
            panic!("the last op should count");
        };
        let Ok(ClientOp::Send(send)) = parse_client_op(
            br#"{"op":"sync","op":"send","cid":"c6","chat":"user","to":"bob","type":"txt","body":{"msg":"x"}}"#,
        ) else {
            panic!("the last op should count");
        };
        assert_eq!(send.cid, "c6");
        // A field of the send given twice is refused, not read as either.
        let e = err(r#"{"op":"send","cid":"c7","chat":"user","to":"bob","to":"eve","type":"txt","body":{"msg":"x"}}"#);
        assert_eq!((e.code, e.cid.as_deref()), ("invalid", Some("c7")));
        assert!(e.message.contains("duplicate field `to`"), "{}", e.message);
        // A cid that is not a string, and a send without one, on the fast road.
        assert_eq!(err(r#"{"op":"send","cid":7,"chat":"user"}"#).code, "invalid");
        let e = err(r#"{"op":"send","chat":"user","to":"bob","type":"txt","body":{"msg":"x"}}"#);
        assert!(e.message.contains("needs a 'cid'"), "{}", e.message);
    }

    /// An envelope nested as deep as the size limit allows neither overflows the stack nor
    /// reaches storage: in a field nobody reads it is skipped without recursion (serde_json
    /// skips iteratively), like any unknown field; in the body it is refused at serde_json's
    /// recursion limit.
    #[test]
    fn deep_nesting_is_skipped_or_refused() {
        let depth = MAX_ENVELOPE_BYTES / 2 - 100;
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let skipped = format!(
            r#"{{"op":"send","cid":"c1","x":{deep},"chat":"user","to":"bob","type":"txt","body":{{"msg":"x"}}}}"#
        );
        let Ok(ClientOp::Send(send)) = parse_client_op(skipped.as_bytes()) else {
            panic!("an unknown field is skipped, however deep");
        };
        assert_eq!(send.body, serde_json::json!({"msg": "x"}));
        let body = format!(
            r#"{{"op":"send","cid":"c2","chat":"user","to":"bob","type":"txt","body":{{"msg":"x","y":{deep}}}}}"#
        );
        let e = err(&body);
        assert_eq!((e.code, e.cid.as_deref()), ("invalid", Some("c2")));
        assert!(e.message.contains("recursion limit"), "{}", e.message);
    }

    #[test]
    fn frames_round_trip() {
        let f = frame_inbox(Route::Except("phone"), b"{}");
        assert_eq!(unframe_inbox(&f), Some((Route::Except("phone"), &b"{}"[..])));
        let f = frame_outbox("tab", b"{\"op\":1}");
        assert_eq!(unframe_outbox(&f), Some(("tab", Ok(&b"{\"op\":1}"[..]))));
        let f = frame_outbox_unreadable("tab", "not a compact envelope");
        assert_eq!(unframe_outbox(&f), Some(("tab", Err("not a compact envelope"))));
        assert_eq!(unframe_outbox(b"{}"), None);
        assert_eq!(unframe_inbox(&[0, 9, b'a']), None);
    }
}
