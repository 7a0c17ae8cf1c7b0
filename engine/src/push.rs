//! Offline push, sans-io: the PUSH_TOKEN and MUTE requests (SPEC.md §7, Offline push), the
//! notification a message becomes when it reaches a user with no device online, and the
//! webhook's JSON body and signature. The thread that POSTs it is [`crate::webhook`].
//!
//! # The webhook call
//! `POST` to the configured URL, `Content-Type: application/json`, header
//! `X-Tern-Signature: sha256=<hex>`: HMAC-SHA256 of the exact body bytes under the configured
//! secret. The body:
//!
//! ```json
//! {"node":"tern-1","sent_at":1767225600000,"notifications":[
//!   {"user":"bob","conv":{"kind":"direct","id":"alice"},"sender":"alice","sender_device":"phone",
//!    "conv_seq":3,"msg_id":"0123…","kind":1,"time":1767225599000,"preview":"hi bob",
//!    "quiet":false,"devices":[{"device":"phone","platform":"fcm","token":"…"}]}]}
//! ```
//!
//! A user of a tenant other than the default one (token claim `tenant`) has a `"tenant"` field
//! in their notification, and `user`, `conv.id` and `sender` are the names as the tenant's
//! clients know them (without the tenant); the default tenant's notifications have no `tenant`.
//!
//! `quiet` is true when the user chose BUSY (do not disturb): the application sends the push
//! without sound or banner. `preview` is the beginning of a TEXT body (at most
//! [`PREVIEW_BYTES`]), empty for other kinds.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tern_protocol::{ConvKind, ErrorCode, MessageKind as WireKind, Mute, PushToken as WireToken};
use tern_storage::{
    AppendResult, ConvKey, DirectMessage, GroupAppendResult, GroupId, GroupMessage, PushToken,
    UserId,
};

use crate::auth::valid_id;
use crate::session::{error, Plan, SessionInfo};

/// Longest push token (bytes).
pub const MAX_TOKEN: usize = 4_096;
/// Longest platform name (bytes).
pub const MAX_PLATFORM: usize = 32;
/// Longest body preview in a notification (bytes, cut at a character boundary).
pub const PREVIEW_BYTES: usize = 200;

/// The plan for a PUSH_TOKEN.
pub fn plan_token(rid: u32, t: &WireToken<'_>) -> Plan {
    if t.token.len() > MAX_TOKEN || t.platform.len() > MAX_PLATFORM {
        return Plan::Reply(error(
            rid,
            ErrorCode::LIMIT_EXCEEDED,
            format!("push token above {MAX_TOKEN} bytes or platform above {MAX_PLATFORM}"),
        ));
    }
    if t.token.chars().any(char::is_control) || t.platform.chars().any(char::is_control) {
        return Plan::Reply(error(
            rid,
            ErrorCode::INVALID_ARGUMENT,
            "push token or platform has control characters",
        ));
    }
    //= SPEC.md#offline-push
    //# an empty `token` removes it (`platform` is then ignored)
    if t.token.is_empty() {
        return Plan::PushToken {
            platform: String::new(),
            token: String::new(),
        };
    }
    if t.platform.is_empty() {
        return Plan::Reply(error(
            rid,
            ErrorCode::INVALID_ARGUMENT,
            "a push token needs its platform",
        ));
    }
    Plan::PushToken {
        platform: t.platform.to_string(),
        token: t.token.to_string(),
    }
}

/// The plan for a MUTE.
pub fn plan_mute(s: &SessionInfo, rid: u32, m: &Mute<'_>) -> Plan {
    let invalid = |msg: &str| Plan::Reply(error(rid, ErrorCode::INVALID_ARGUMENT, msg));
    let conv = match m.conv.kind {
        ConvKind::DIRECT => match UserId::new(m.conv.id.as_ref()) {
            Ok(peer) if valid_id(&m.conv.id) => ConvKey::direct(&s.user, &peer),
            _ => return invalid("conversation id is not a valid user id"),
        },
        ConvKind::GROUP => match GroupId::new(m.conv.id.as_ref()) {
            Ok(g) => ConvKey::Group(g),
            Err(_) => return invalid("invalid group id"),
        },
        _ => return invalid("only direct and group conversations can be muted"),
    };
    Plan::Mute {
        conv,
        until_ms: m.until,
    }
}

/// A message for a user none of whose devices is online, on its way to the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushNote {
    pub user: UserId,
    /// The conversation, as stored (the mute key).
    pub conv: ConvKey,
    /// The conversation's kind and id as the user sees it (DIRECT: the other user).
    pub conv_kind: &'static str,
    pub conv_id: String,
    pub sender: String,
    pub sender_device: String,
    pub conv_seq: u64,
    pub msg_id: [u8; 16],
    pub kind: u8,
    pub time: u64,
    pub preview: String,
    /// The user chose BUSY: push without sound.
    pub quiet: bool,
}

impl PushNote {
    /// The note for the recipient of a newly stored one-to-one message; `None` for a message to
    /// oneself or a retransmission (nothing new reached anyone).
    pub fn direct(msg: &DirectMessage, r: &AppendResult) -> Option<PushNote> {
        if r.duplicate || msg.recipient == msg.sender {
            return None;
        }
        Some(PushNote {
            user: msg.recipient.clone(),
            conv: r.conv.clone(),
            conv_kind: "direct",
            conv_id: msg.sender.as_str().to_owned(),
            sender: msg.sender.as_str().to_owned(),
            sender_device: msg.sender_device.as_str().to_owned(),
            conv_seq: r.conv_seq.0,
            msg_id: msg.client_msg_id.0,
            kind: msg.kind.0,
            time: r.time_ms,
            preview: preview(msg.kind.0, &msg.body),
            quiet: false,
        })
    }
}

/// A group message's notification, made before the message goes to storage (which takes it);
/// [`for_member`](Self::for_member) completes it for each member to notify.
#[derive(Debug)]
pub struct GroupNote {
    template: PushNote,
    /// The members the message names and whether it names everyone (@all).
    mentions: Vec<UserId>,
    mention_all: bool,
}

impl GroupNote {
    pub fn new(msg: &GroupMessage) -> GroupNote {
        GroupNote {
            template: PushNote {
                user: msg.sender.clone(),
                conv: ConvKey::Group(msg.group.clone()),
                conv_kind: "group",
                conv_id: msg.group.as_str().to_owned(),
                sender: msg.sender.as_str().to_owned(),
                sender_device: msg.sender_device.as_str().to_owned(),
                conv_seq: 0,
                msg_id: msg.client_msg_id.0,
                kind: msg.kind.0,
                time: 0,
                preview: preview(msg.kind.0, &msg.body),
                quiet: false,
            },
            mentions: msg.mentions.clone(),
            mention_all: msg.mention_all,
        }
    }

    /// Who is told of the stored message `r`, before the online check at each one's core.
    ///
    //= SPEC.md#offline-push
    //# In a group above the write-diffusion threshold only the members the message mentions
    //# (every member for @all) are notified
    pub fn members(&self, r: &GroupAppendResult) -> Vec<UserId> {
        let Some(fanout) = r.fanout.as_ref().filter(|_| !r.duplicate) else {
            return Vec::new();
        };
        let sender = &self.template.user;
        if fanout.diffusion == tern_storage::Diffusion::WRITE {
            return fanout
                .inboxes
                .iter()
                .map(|(u, _)| u)
                .filter(|u| *u != sender)
                .cloned()
                .collect();
        }
        fanout
            .members
            .iter()
            .filter(|u| *u != sender && (self.mention_all || self.mentions.contains(u)))
            .cloned()
            .collect()
    }

    pub fn for_member(&self, user: UserId, r: &GroupAppendResult) -> PushNote {
        PushNote {
            user,
            conv_seq: r.conv_seq.0,
            time: r.time_ms,
            ..self.template.clone()
        }
    }
}

/// The beginning of a TEXT body, cut at a character boundary; empty for other kinds.
pub fn preview(kind: u8, body: &[u8]) -> String {
    if kind != WireKind::TEXT.0 {
        return String::new();
    }
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        // A cut multi-byte character at the end still leaves the valid start.
        Err(e) => std::str::from_utf8(&body[..e.valid_up_to()]).unwrap_or_default(),
    };
    let mut end = text.len().min(PREVIEW_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The webhook body for a batch of notes, each with the tokens of the user's devices.
pub fn payload(node: &str, sent_at: u64, items: &[(PushNote, Vec<PushToken>)]) -> Vec<u8> {
    let notifications: Vec<serde_json::Value> = items
        .iter()
        .map(|(n, tokens)| {
            let (tenant, user) = tern_storage::split_scoped(n.user.as_str());
            let name = |id: &str| tern_storage::split_scoped(id).1.to_owned();
            let mut note = serde_json::json!({
                "user": user,
                "conv": {"kind": n.conv_kind, "id": name(&n.conv_id)},
                "sender": name(&n.sender),
                "sender_device": n.sender_device,
                "conv_seq": n.conv_seq,
                "msg_id": hex::encode(n.msg_id),
                "kind": n.kind,
                "time": n.time,
                "preview": n.preview,
                "quiet": n.quiet,
                "devices": tokens.iter().map(|t| serde_json::json!({
                    "device": t.device.as_str(),
                    "platform": t.platform,
                    "token": t.token,
                })).collect::<Vec<_>>(),
            });
            if let (Some(t), Some(obj)) = (tenant, note.as_object_mut()) {
                obj.insert("tenant".into(), t.into());
            }
            note
        })
        .collect();
    serde_json::json!({
        "node": node,
        "sent_at": sent_at,
        "notifications": notifications,
    })
    .to_string()
    .into_bytes()
}

/// The `X-Tern-Signature` header value: `sha256=` and the hex HMAC-SHA256 of `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How long to wait before retry number `attempt` (0 = the first retry): `min` doubling,
/// capped at `max`.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    min.saturating_mul(1u32 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_protocol::Conv;
    use tern_storage::{ClientMsgId, DeviceId, MessageKind, Seq};

    fn me() -> SessionInfo {
        SessionInfo {
            user: UserId::new("bob").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            session_id: 1,
        }
    }

    #[test]
    fn token_and_mute_requests_are_validated() {
        let tok = |platform: &str, token: &str| {
            plan_token(
                2,
                &WireToken {
                    platform: platform.to_owned().into(),
                    token: token.to_owned().into(),
                },
            )
        };
        assert_eq!(
            tok("fcm", "abc"),
            Plan::PushToken {
                platform: "fcm".into(),
                token: "abc".into()
            }
        );
        assert_eq!(
            tok("whatever", ""),
            Plan::PushToken {
                platform: String::new(),
                token: String::new()
            }
        );
        for bad in [
            tok("", "abc"),
            tok("fcm", "a\nb"),
            tok("fcm", &"t".repeat(MAX_TOKEN + 1)),
        ] {
            assert!(matches!(bad, Plan::Reply(_)), "{bad:?}");
        }
        let mute = |conv| plan_mute(&me(), 3, &Mute { conv, until: 9 });
        let Plan::Mute { conv, until_ms } = mute(Conv::direct("alice")) else {
            panic!()
        };
        assert_eq!(
            conv,
            ConvKey::direct(&UserId::new("alice").unwrap(), &me().user)
        );
        assert_eq!(until_ms, 9);
        assert!(matches!(mute(Conv::group("g1")), Plan::Mute { .. }));
        assert!(matches!(mute(Conv::direct("")), Plan::Reply(_)));
        assert!(matches!(
            mute(Conv {
                kind: ConvKind::ROOM,
                id: "r".into()
            }),
            Plan::Reply(_)
        ));
    }

    #[test]
    fn notes_carry_a_text_preview_and_skip_self_and_retransmissions() {
        let msg = DirectMessage {
            sender: UserId::new("alice").unwrap(),
            sender_device: DeviceId::new("laptop").unwrap(),
            recipient: UserId::new("bob").unwrap(),
            client_msg_id: ClientMsgId([7; 16]),
            kind: MessageKind::TEXT,
            body: "héllo".repeat(100).into_bytes(),
        };
        let r = AppendResult {
            conv: ConvKey::direct(&msg.sender, &msg.recipient),
            conv_seq: Seq(3),
            sender_inbox_seq: Seq(1),
            recipient_inbox_seq: Seq(2),
            time_ms: 99,
            duplicate: false,
        };
        let n = PushNote::direct(&msg, &r).unwrap();
        assert_eq!((n.user.as_str(), n.conv_id.as_str()), ("bob", "alice"));
        assert!(n.preview.len() <= PREVIEW_BYTES && n.preview.starts_with("héllo"));
        assert!(PushNote::direct(
            &msg,
            &AppendResult {
                duplicate: true,
                ..r.clone()
            }
        )
        .is_none());
        let to_self = DirectMessage {
            recipient: msg.sender.clone(),
            ..msg.clone()
        };
        assert!(PushNote::direct(&to_self, &r).is_none());
        // A tenant's note names its users as the tenant's clients do, and says the tenant.
        let scoped = |u: &str| UserId::new(tern_storage::scoped(Some("acme"), u)).unwrap();
        let t_msg = DirectMessage {
            sender: scoped("alice"),
            recipient: scoped("bob"),
            ..msg.clone()
        };
        let t_note = PushNote::direct(&t_msg, &r).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&payload("n1", 5, &[(t_note, Vec::new()), (n, Vec::new())]))
                .unwrap();
        let (t, plain) = (&v["notifications"][0], &v["notifications"][1]);
        assert_eq!(
            (&t["tenant"], &t["user"], &t["sender"], &t["conv"]["id"]),
            (
                &"acme".into(),
                &"bob".into(),
                &"alice".into(),
                &"alice".into()
            )
        );
        assert!(plain.get("tenant").is_none());
        assert_eq!(plain["user"], "bob");
        assert_eq!(preview(MessageKind::IMAGE.0, b"ref"), "");
        assert_eq!(
            preview(1, &[b'a', 0xC3]),
            "a",
            "a cut character is left out"
        );
    }

    #[test]
    fn payload_is_signed_over_its_exact_bytes() {
        let body = payload("n1", 5, &[]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["node"], "n1");
        assert_eq!(v["notifications"].as_array().unwrap().len(), 0);
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let d = Duration::from_millis(100);
        assert_eq!(backoff(0, d, Duration::from_secs(1)), d);
        assert_eq!(
            backoff(3, d, Duration::from_secs(1)),
            Duration::from_millis(800)
        );
        assert_eq!(
            backoff(30, d, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
