//! Ops on messages already sent: read and delivered receipts (with multi-device sync of
//! read state), recall, edit, delete-for-me, reactions; and `cmd` messages, which are
//! relayed but never stored.

use serde_json::{json, Value};

use crate::process::{store_refusal, Committer, Sender};
use store::channels::ChannelKind;
use store::envelope::{Ack, Change, ChangeOp, ChatType, MarkOp, MsgType, OpError, PushChange, PushOp, Route, SendOp};
use store::lifecycle::Receipt;
use store::messages::StoredMessage;

impl Committer {
    /// `read` / `delivered`: moves the user's position, tells their other devices, and tells
    /// the other side (the peer; in groups, the senders of the newly read messages).
    pub(crate) async fn mark(&self, from: &Sender, op: MarkOp, receipt: Receipt) {
        let (before, after) = match self
            .store
            .mark(&from.app_id, &from.user, &op.conv, op.seq, receipt)
            .await
        {
            Ok(positions) => positions,
            Err(e) => return self.reply(from, &store_refusal(None, e)),
        };
        if after <= before {
            return;
        }
        let kind = match receipt {
            Receipt::Read => "read",
            Receipt::Delivered => "delivered",
        };
        let own = json!({"op": format!("{kind}_sync"), "conv": op.conv, "seq": after});
        self.publish_json(from, &from.user, Route::Except(&from.device), &own);
        let event = json!({"op": "receipt", "type": kind, "conv": op.conv, "seq": after, "by": from.user});
        let others: Vec<String> = match op.conv.split(':').collect::<Vec<_>>()[..] {
            ["u", a, b] => vec![if a == from.user { b } else { a }.to_string()],
            ["g", _] if receipt == Receipt::Read => {
                let receipts_on = match self.store.app_settings(&from.app_id).await {
                    Ok(settings) => settings.group_read_receipts,
                    Err(_) => false,
                };
                if !receipts_on {
                    return;
                }
                self.store
                    .senders_between(&from.app_id, &op.conv, before, after, &from.user)
                    .await
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        for user in others.iter().filter(|u| **u != from.user) {
            self.publish_json(from, user, Route::All, &event);
        }
    }

    /// `recall`, `edit`, `delete`, `react`: changes a stored message and tells everyone
    /// who has it (for `delete`, only the user's own devices).
    pub(crate) async fn change(&self, from: &Sender, op: ChangeOp) {
        let store = &self.store;
        let (app, user) = (&from.app_id, &from.user);
        let result = match op.change {
            Change::Recall => {
                let limit = store
                    .app_settings(app)
                    .await
                    .map(|s| s.recall_limit_secs * 1000)
                    .unwrap_or(0);
                store.recall(app, &op.id, Some(user), limit).await.map(|m| {
                    let event = json!({"op": "recalled", "id": m.id, "conv": m.conv, "seq": m.seq, "by": user});
                    (m, event)
                })
            }
            Change::Edit(body) => match self.edit(from, &op.id, body).await {
                Ok(m) => Ok(m),
                Err(e) => return self.reply(from, &OpError { cid: op.cid, ..e }),
            },
            Change::Delete => match store.hide(app, user, &op.id).await {
                Ok(()) => {
                    let done = json!({"op": "deleted", "cid": op.cid, "id": op.id});
                    return self.publish_json(from, user, Route::All, &done);
                }
                Err(e) => Err(e),
            },
            Change::React { emoji, add } => store.react(app, &op.id, user, &emoji, add).await.map(|(m, reactions)| {
                let action = if add { "add" } else { "remove" };
                let event = json!({"op": "reaction", "id": m.id, "conv": m.conv, "seq": m.seq, "emoji": emoji,
                    "action": action, "by": user, "reactions": reactions});
                (m, event)
            }),
        };
        match result {
            Ok((msg, event)) => self.tell_holders(from, &msg, &event).await,
            Err(e) => self.reply(from, &store_refusal(op.cid, e)),
        }
    }

    async fn edit(&self, from: &Sender, id: &str, body: Value) -> Result<(StoredMessage, Value), OpError> {
        let refuse = |code, message: String| OpError::new(None, code, message);
        let current = self
            .store
            .message(&from.app_id, id)
            .await
            .map_err(|e| store_refusal(None, e))?;
        let kind =
            MsgType::parse(&current.kind).ok_or_else(|| refuse("invalid", "this message cannot be edited".into()))?;
        kind.validate_body(&body).map_err(|why| refuse("invalid", why))?;
        let settings = self
            .store
            .app_settings(&from.app_id)
            .await
            .map_err(|e| store_refusal(None, e))?;
        let mut send = SendOp {
            cid: String::new(),
            chat: ChatType::User,
            to: String::new(),
            kind,
            body,
            ext: None,
            destroy: None,
        };
        crate::rules::check_content(&settings, &mut send)?;
        let files = self.attach_files(from, &mut send, &settings).await?;
        let edited = self
            .store
            .edit(&from.app_id, id, &from.user, &send.body.to_string())
            .await
            .map_err(|e| store_refusal(None, e))?;
        if kind.carries_files() {
            let room = if current.chat == "room" {
                current.recipient.as_str()
            } else {
                ""
            };
            self.store
                .replace_file_refs(&edited.id, room, &files)
                .await
                .map_err(|e| store_refusal(None, e))?;
        }
        let event = json!({"op": "edited", "id": edited.id, "conv": edited.conv, "seq": edited.seq,
            "body": send.body, "edited": edited.edited_at, "by": from.user});
        Ok((edited, event))
    }

    /// Sends an event about a message to every device of everyone who has it.
    async fn tell_holders(&self, from: &Sender, msg: &StoredMessage, event: &Value) {
        let holders = self.store.holders(&from.app_id, &msg.id).await.unwrap_or_default();
        for user in holders {
            self.publish_json(from, &user, Route::All, event);
        }
    }

    /// A `cmd` message: checked like any send, delivered at once, stored nowhere and never
    /// counted as unread. Its ack has `seq` 0.
    pub(crate) async fn relay_command(&self, from: &Sender, op: SendOp) {
        let (app, user) = (&from.app_id, &from.user);
        let recipients: Result<Vec<String>, OpError> = match op.chat {
            ChatType::User => match (
                self.store.user_exists(app, &op.to).await,
                self.store.has_blocked(app, &op.to, user).await,
            ) {
                (Ok(false), _) => Err(OpError::new(
                    Some(op.cid.clone()),
                    "unknown_recipient",
                    format!("no user '{}' in this app", op.to),
                )),
                (Ok(true), Ok(true)) => Err(OpError::new(
                    Some(op.cid.clone()),
                    "blocked",
                    format!("{} does not accept your messages", op.to),
                )),
                (Ok(true), Ok(false)) => Ok(vec![op.to.clone(), user.clone()]),
                (Err(e), _) | (_, Err(e)) => Err(store_refusal(Some(op.cid.clone()), e)),
            },
            ChatType::Group | ChatType::Room => {
                let kind = if op.chat == ChatType::Group {
                    ChannelKind::Group
                } else {
                    ChannelKind::Room
                };
                match self.store.check_sender(app, kind, &op.to, user).await {
                    Ok(Ok(_)) if kind == ChannelKind::Room => Ok(Vec::new()),
                    Ok(Ok(_)) => match self.store.members(app, kind, &op.to).await {
                        Ok(members) => Ok(members.into_iter().map(|m| m.username).collect()),
                        Err(e) => Err(store_refusal(Some(op.cid.clone()), e)),
                    },
                    Ok(Err(refusal)) => Err(OpError::new(Some(op.cid.clone()), refusal.code, refusal.message)),
                    Err(e) => Err(store_refusal(Some(op.cid.clone()), e)),
                }
            }
        };
        let recipients = match recipients {
            Ok(r) => r,
            Err(e) => return self.reply(from, &e),
        };
        let conv = match op.chat {
            ChatType::User => store::messages::user_conv(user, &op.to),
            ChatType::Group => format!("g:{}", op.to),
            ChatType::Room => format!("r:{}", op.to),
        };
        let msg = StoredMessage {
            id: uuid_like(),
            conv,
            seq: 0,
            ts: store::now_ms(),
            chat: op.chat.as_str().into(),
            sender: user.clone(),
            sender_device: from.device.clone(),
            recipient: op.to.clone(),
            cid: op.cid.clone(),
            kind: "cmd".into(),
            body: op.body.to_string(),
            ext: op.ext.map(|e| e.to_string()),
            recalled: false,
            edited_at: 0,
            destroy: None,
            destroyed: false,
        };
        let ack = Ack {
            op: "ack".into(),
            cid: op.cid,
            id: msg.id.clone(),
            conv: msg.conv.clone(),
            seq: 0,
            ts: msg.ts,
            useq: None,
        };
        self.reply(from, &ack);
        if op.chat == ChatType::Room {
            return self.deliver_to_room(from, &msg);
        }
        for recipient in recipients {
            let route = if recipient == *user {
                Route::Except(&from.device)
            } else {
                Route::All
            };
            let json = serde_json::to_vec(&msg.delivered(&recipient, None)).unwrap_or_default();
            self.publish_inbox(from, &recipient, route, json);
        }
    }

    /// Push preferences over MQTT: bind or unbind this device's token, do-not-disturb,
    /// muting a conversation. Answered with `{"op":"ok","cid","of"}` or an `error`.
    pub(crate) async fn push_settings(&self, from: &Sender, op: PushOp) {
        let (app, user) = (&from.app_id, &from.user);
        let (result, of) = match op.change {
            PushChange::Bind {
                device_id,
                token,
                notifier,
            } => {
                let device = device_id.unwrap_or_else(|| from.device.clone());
                (
                    self.store.bind_push(app, user, &device, notifier, &token).await,
                    "push_bind",
                )
            }
            PushChange::Unbind { device_id } => {
                let device = device_id.unwrap_or_else(|| from.device.clone());
                (self.store.unbind_push(app, user, &device).await, "push_unbind")
            }
            PushChange::Dnd(dnd) => (self.store.set_dnd(app, user, &dnd).await, "dnd"),
            PushChange::Mute { conv, muted } => (
                self.store.set_conversation_muted(app, user, &conv, muted).await,
                "mute_conv",
            ),
        };
        match result {
            Ok(()) => self.reply(from, &json!({"op": "ok", "cid": op.cid, "of": of})),
            Err(e) => self.reply(from, &store_refusal(op.cid, e)),
        }
    }

    fn publish_json(&self, tenant: &Sender, user: &str, route: Route<'_>, body: &Value) {
        self.publish_inbox(tenant, user, route, serde_json::to_vec(body).unwrap_or_default());
    }
}

/// An id for a message that is never stored.
fn uuid_like() -> String {
    format!("cmd-{}-{}", store::now_ms(), store::tokens::random_secret(10))
}
