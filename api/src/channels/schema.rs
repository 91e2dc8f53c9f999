//! The answers' shapes, for the OpenAPI document (`crate::openapi`). Groups and chatrooms
//! share these: where the platform names a field differently for the two (`groupid` or
//! `id`), both are optional.

#![allow(dead_code)]
use utoipa::ToSchema;

/// The new channel's id: `groupid` (a group) or `id` (a chatroom).
#[derive(ToSchema)]
pub struct ChannelId {
    groupid: Option<String>,
    id: Option<String>,
}

#[derive(ToSchema)]
pub struct ChannelCreated {
    data: ChannelId,
}

/// A channel in a list. Groups: `groupid`, `groupname`, `owner` as `{org}#{app}_{name}`,
/// `affiliations` (the member count), `type`, `public`, `lastModified`; chatrooms: `id`,
/// `name`, `owner`, `affiliations_count`.
#[derive(ToSchema)]
pub struct ChannelSummary {
    groupid: Option<String>,
    groupname: Option<String>,
    id: Option<String>,
    name: Option<String>,
    owner: String,
    affiliations: Option<i64>,
    affiliations_count: Option<i64>,
    /// `group`.
    #[serde(rename = "type")]
    kind: Option<String>,
    public: Option<bool>,
    description: String,
    /// Milliseconds since 1970.
    created: i64,
    /// Milliseconds since 1970, as a string.
    #[serde(rename = "lastModified")]
    last_modified: Option<String>,
}

/// A page of channels, and a `cursor` while more follow.
#[derive(ToSchema)]
pub struct ChannelList {
    data: Vec<ChannelSummary>,
    count: u64,
    cursor: Option<String>,
}

/// A channel a user is in: `groupid` and `groupname` (groups), `id`, `name` and
/// `disabled` (chatrooms).
#[derive(ToSchema)]
pub struct JoinedChannel {
    groupid: Option<String>,
    groupname: Option<String>,
    id: Option<String>,
    name: Option<String>,
    /// `"true"` or `"false"`.
    disabled: Option<String>,
}

#[derive(ToSchema)]
pub struct JoinedChannels {
    data: Vec<JoinedChannel>,
    count: u64,
    /// Always empty.
    #[schema(value_type = Object)]
    properties: serde_json::Map<String, serde_json::Value>,
}

#[derive(ToSchema)]
pub struct ChannelIsJoined {
    data: bool,
}

/// A member: `{"owner": name}` for the owner, `{"member": name}` for anyone else.
#[derive(ToSchema)]
pub struct ChannelAffiliation {
    owner: Option<String>,
    member: Option<String>,
}

/// A channel's settings and members.
#[derive(ToSchema)]
pub struct ChannelDetail {
    id: String,
    name: String,
    description: String,
    membersonly: bool,
    allowinvites: bool,
    maxusers: i64,
    owner: String,
    created: i64,
    custom: String,
    avatar: String,
    /// Everyone but the owner, the admins and the allow list is muted.
    mute: bool,
    disabled: bool,
    announcement: String,
    affiliations_count: u64,
    affiliations: Vec<ChannelAffiliation>,
    public: bool,
}

#[derive(ToSchema)]
pub struct ChannelDetails {
    data: Vec<ChannelDetail>,
    count: u64,
}

/// Each field that may be changed, `true` if the request changed it; or `newowner`
/// alone after a transfer.
#[derive(ToSchema)]
pub struct ChannelChanges {
    newowner: Option<bool>,
    groupname: Option<bool>,
    description: Option<bool>,
    avatar: Option<bool>,
    invite_need_confirm: Option<bool>,
    public: Option<bool>,
    membersonly: Option<bool>,
    allowinvites: Option<bool>,
    maxusers: Option<bool>,
    custom: Option<bool>,
}

#[derive(ToSchema)]
pub struct ChannelUpdated {
    data: ChannelChanges,
}

#[derive(ToSchema)]
pub struct ChannelDissolvedData {
    groupid: Option<String>,
    id: Option<String>,
    success: bool,
}

#[derive(ToSchema)]
pub struct ChannelDissolved {
    data: ChannelDissolvedData,
}

#[derive(ToSchema)]
pub struct ChannelAnnouncedData {
    id: String,
    result: bool,
}

#[derive(ToSchema)]
pub struct ChannelAnnounced {
    data: ChannelAnnouncedData,
}

#[derive(ToSchema)]
pub struct ChannelAnnouncementData {
    announcement: String,
}

#[derive(ToSchema)]
pub struct ChannelAnnouncement {
    data: ChannelAnnouncementData,
}

#[derive(ToSchema)]
pub struct ChannelDisabledData {
    disabled: bool,
}

/// `data.disabled`: the channel's state now.
#[derive(ToSchema)]
pub struct ChannelDisabled {
    data: ChannelDisabledData,
}

/// Users' names, and how many.
#[derive(ToSchema)]
pub struct ChannelNames {
    data: Vec<String>,
    count: u64,
}

/// A chatroom message as members receive it.
#[derive(ToSchema)]
pub struct RoomMessage {
    /// `msg`.
    op: String,
    id: String,
    /// `r:{room id}`.
    conv: String,
    seq: i64,
    ts: i64,
    /// `room`.
    chat: String,
    from: String,
    /// The chatroom's id.
    to: String,
    #[serde(rename = "type")]
    kind: String,
    /// The message's body, as sent.
    body: serde_json::Value,
    ext: Option<serde_json::Value>,
}

#[derive(ToSchema)]
pub struct RoomMessages {
    entities: Vec<RoomMessage>,
    count: u64,
}
