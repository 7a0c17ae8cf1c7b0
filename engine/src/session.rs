//! The per-request rules of an authenticated session (SPEC.md §7), sans-io: a decoded frame goes
//! in, a [`Plan`] comes out — an immediate reply, or a storage operation whose result the
//! adapter feeds back through the builders below (`send_ack`, `sync_page`, …) to get the frames
//! to send and the deliveries to route. Nothing here touches a socket, a runtime, a clock or the
//! database, so every rule is unit-tested.

use std::borrow::Cow;

use tern_protocol::{
    Body, Capabilities, Contact, ContactsPage, Conv, ConvKind, Direction, Error as ErrorBody,
    ErrorCode, Frame, FrameType, HistoryPage, Message, MessageFlags as WireFlags,
    MessageKind as WireKind, Ping, Receipt, ReceiptKind, Relation as WireRelation, RelationEntry,
    RelationKind as WireRelationKind, RelationOp as WireRelationOp, RelationPage, SendAck,
    SyncPage, Typing,
};
use tern_storage::{
    AppendResult, ClientMsgId, ConvKey, DeviceId, DirectMessage, HistoryDirection, InboxMessage,
    MessageFlags, MessageKind, OpError, RecallResult, RecentConversation, Relation, RelationChange,
    RelationKind, RelationOp, RelationOutcome, Seq, StoredMessage, SubmitError, UserId,
};

use crate::auth::valid_id;

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub user: UserId,
    pub device: DeviceId,
    pub session_id: u64,
}

/// Page sizes: what a limit of 0 means, and the most a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    pub default: usize,
    pub max: usize,
}

/// Paging limits of the session requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub sync: PageLimits,
    pub history: PageLimits,
    pub contacts: PageLimits,
    pub relations: PageLimits,
    /// How old a message may be and still be recalled by its sender (ms).
    pub recall_window_ms: u64,
    /// TYPING frames one connection may send per second, and the burst on top; more are
    /// dropped.
    pub typing_per_sec: u32,
    pub typing_burst: u32,
}

/// The recall window when none is configured (SPEC.md §RECALL).
pub const DEFAULT_RECALL_WINDOW_MS: u64 = 120_000;

/// The TYPING rate when none is configured (SPEC.md §TYPING).
pub const DEFAULT_TYPING_PER_SEC: u32 = 5;
pub const DEFAULT_TYPING_BURST: u32 = 10;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            recall_window_ms: DEFAULT_RECALL_WINDOW_MS,
            //= SPEC.md#typing-presence-and-subscribe
            //# The server drops TYPING beyond 5 per second per connection (burst 10)
            typing_per_sec: DEFAULT_TYPING_PER_SEC,
            typing_burst: DEFAULT_TYPING_BURST,
            sync: PageLimits {
                default: 100,
                max: 500,
            },
            history: PageLimits {
                default: 50,
                max: 200,
            },
            contacts: PageLimits {
                default: 50,
                max: 200,
            },
            //= SPEC.md#relations
            //# 0 = the server's default, 100; the server caps it at 500
            relations: PageLimits {
                default: 100,
                max: 500,
            },
        }
    }
}

impl PageLimits {
    fn apply(self, asked: u16) -> usize {
        match asked {
            0 => self.default,
            n => usize::from(n).min(self.max),
        }
    }
}

/// What a request asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send this frame, nothing else to do.
    Reply(Frame<'static>),
    /// The frame is not one a client may send in an open session: close (UNEXPECTED_FRAME).
    Unexpected,
    /// The peer said goodbye or reported an error; nothing to answer.
    Ignore,
    /// Persist a one-to-one message, then answer with [`send_ack`] and route [`deliveries`].
    Append { msg: DirectMessage },
    /// Move the device's acked position; answer OK when `reply`.
    PushAck { inbox_seq: Seq, reply: bool },
    /// Acknowledge everything up to `after`, then page the inbox after it.
    Sync { after: Seq, limit: usize },
    /// Page a conversation's timeline.
    History {
        conv: ConvKey,
        peer: String,
        anchor: Seq,
        direction: HistoryDirection,
        limit: usize,
    },
    /// Page the recent-conversation list.
    Contacts { before_ms: u64, limit: usize },
    /// Mark a conversation read, answer OK, and route [`read_receipts`].
    Read {
        conv: ConvKey,
        peer: UserId,
        up_to: Seq,
    },
    /// Recall message `seq` of a one-to-one conversation; answer SEND_ACK for the recall event
    /// and route [`recall_deliveries`].
    Recall {
        conv: ConvKey,
        peer: UserId,
        seq: Seq,
        msg_id: tern_protocol::MsgId,
    },
    /// Forward a typing indicator to the peer's devices.
    Typing { peer: UserId, frame: Frame<'static> },
    /// Set the session user's chosen presence ([`crate::presence`]); answer OK when `reply`.
    SetPresence {
        status: tern_protocol::PresenceStatus,
        text: String,
        reply: bool,
    },
    /// Add or remove this connection's presence subscriptions; answer OK.
    Subscribe { add: bool, users: Vec<UserId> },
    /// Store (or, empty, remove) the session device's push token; answer OK.
    PushToken { platform: String, token: String },
    /// Mute (`until_ms` > 0) or unmute a conversation's offline pushes for the session user.
    Mute { conv: ConvKey, until_ms: u64 },
    /// Join a chat room on this connection and answer with its `recent` last messages.
    RoomJoin { room: String, recent: u16 },
    /// Leave a chat room, answer OK.
    RoomLeave { room: String },
    /// Post to a chat room the connection has joined; answer SEND_ACK.
    RoomSend {
        room: String,
        msg_id: tern_protocol::MsgId,
        kind: WireKind,
        body: Vec<u8>,
    },
    /// Change a relation, answer OK, and route [`relation_notices`].
    Relate { change: RelationChange },
    /// Set or clear the session user's "friends only" setting, answer OK.
    FriendsOnly { on: bool },
    /// A group request (`groups` module).
    Group(Box<crate::groups::GroupPlan>),
    /// A topic request (`topics` module).
    Topic(Box<crate::topics::TopicPlan>),
    /// Page one of the session user's relation lists; answer with [`relation_page`].
    RelationList {
        kind: RelationKind,
        after: Option<UserId>,
        limit: usize,
    },
}

/// Longest note a friend request may carry, in bytes.
pub const MAX_RELATION_NOTE: usize = 256;

/// The capability a frame the server sends needs, when it needs one the session must have
/// negotiated (SPEC.md §6): frames of other families are always sent.
pub fn outbound_allowed(caps: Capabilities, frame_type: FrameType) -> bool {
    match frame_type {
        //= SPEC.md#hello
        //# The server MUST NOT send a frame (or a RECEIPT kind) whose capability is not negotiated.
        FrameType::RELATION | FrameType::RELATION_PAGE => caps.contains(Capabilities::RELATIONS),
        FrameType::GROUP_INFO | FrameType::GROUP_LIST_PAGE | FrameType::GROUP_RECEIPTS_PAGE => {
            caps.contains(Capabilities::GROUPS)
        }
        //= SPEC.md#typing-presence-and-subscribe
        //# The server relays TYPING to the other participant's Open connections that
        //# negotiated TYPING.
        FrameType::TYPING => caps.contains(Capabilities::TYPING),
        FrameType::TOPIC_LIST_PAGE => caps.contains(Capabilities::TOPICS),
        FrameType::PRESENCE => caps.contains(Capabilities::PRESENCE),
        _ => true,
    }
}

/// The ERROR for a request whose family the session did not negotiate, if it is one.
pub fn not_negotiated(caps: Capabilities, frame: &Frame<'_>) -> Option<Frame<'static>> {
    let needed = match frame.body {
        Body::Relation(_) | Body::RelationList(_) => Capabilities::RELATIONS,
        Body::GroupCreate(_)
        | Body::GroupUpdate(_)
        | Body::GroupMembers(_)
        | Body::GroupLeave(_)
        | Body::GroupTransfer(_)
        | Body::GroupDisband(_)
        | Body::GroupList(_)
        | Body::GroupGet(_)
        | Body::GroupReceipts(_) => Capabilities::GROUPS,
        Body::TopicSub(_) | Body::TopicList(_) => Capabilities::TOPICS,
        Body::Typing(_) => Capabilities::TYPING,
        Body::Presence(_) | Body::Subscribe(_) => Capabilities::PRESENCE,
        Body::PushToken(_) | Body::Mute(_) => Capabilities::PUSH,
        _ => return None,
    };
    (!caps.contains(needed)).then(|| {
        error(
            frame.request_id,
            ErrorCode::INVALID_ARGUMENT,
            format!(
                "{} is not supported: capability not negotiated",
                frame.frame_type()
            ),
        )
    })
}

/// An ERROR frame.
pub fn error(request_id: u32, code: ErrorCode, message: impl Into<String>) -> Frame<'static> {
    Frame::new(
        request_id,
        Body::Error(ErrorBody {
            code,
            message: Cow::Owned(message.into()),
        }),
    )
}

fn invalid(request_id: u32, message: &str) -> Plan {
    Plan::Reply(error(request_id, ErrorCode::INVALID_ARGUMENT, message))
}

/// The peer of a one-to-one conversation named on the wire, or the error to answer (boxed: a
/// `Plan` is large and the error path is rare).
fn direct_peer(request_id: u32, conv: &Conv<'_>) -> Result<UserId, Box<Plan>> {
    if conv.kind != ConvKind::DIRECT {
        return Err(Box::new(invalid(
            request_id,
            "only direct conversations are served by this node version",
        )));
    }
    if !valid_id(&conv.id) {
        return Err(Box::new(invalid(
            request_id,
            "conversation id is not a valid user id",
        )));
    }
    UserId::new(conv.id.as_ref()).map_err(|e| Box::new(invalid(request_id, &e.to_string())))
}

/// Decides what a frame received in an open session asks for.
pub fn plan(s: &SessionInfo, frame: &Frame<'_>, limits: &Limits) -> Plan {
    let rid = frame.request_id;
    match &frame.body {
        //= SPEC.md#heartbeat
        //# A PING is answered with a PONG echoing its time.
        Body::Ping(p) => Plan::Reply(Frame::new(rid, Body::Pong(Ping { time: p.time }))),
        Body::Pong(_) | Body::Close(_) | Body::Error(_) => Plan::Ignore,
        _ if crate::groups::is_group_request(frame) => crate::groups::plan(s, frame, limits),
        _ if crate::topics::is_topic_request(frame) => crate::topics::plan(s, frame, limits),
        Body::Send(m) if m.to.kind == ConvKind::ROOM => {
            if !crate::rooms::valid_room(&m.to.id) {
                return invalid(rid, "invalid room name");
            }
            if m.kind.0 == 0 || m.kind.0 >= 0x40 {
                return invalid(rid, "message kind must be a content kind (1..=0x3f)");
            }
            Plan::RoomSend {
                room: m.to.id.to_string(),
                msg_id: m.msg_id,
                kind: m.kind,
                body: m.body.to_vec(),
            }
        }
        Body::RoomJoin(j) => {
            if !crate::rooms::valid_room(&j.room) {
                return invalid(rid, "invalid room name");
            }
            Plan::RoomJoin {
                room: j.room.to_string(),
                recent: j.recent,
            }
        }
        Body::RoomLeave(r) => Plan::RoomLeave {
            room: r.group.to_string(),
        },
        Body::Send(m) => {
            let peer = match direct_peer(rid, &m.to) {
                Ok(p) => p,
                Err(plan) => return *plan,
            };
            // Clients send content kinds only; 0x40 and above are system events.
            if m.kind.0 == 0 || m.kind.0 >= 0x40 {
                return invalid(rid, "message kind must be a content kind (1..=0x3f)");
            }
            Plan::Append {
                msg: DirectMessage {
                    sender: s.user.clone(),
                    sender_device: s.device.clone(),
                    recipient: peer,
                    client_msg_id: ClientMsgId(m.msg_id.0),
                    kind: MessageKind(m.kind.0),
                    body: m.body.to_vec(),
                },
            }
        }
        Body::PushAck(a) => Plan::PushAck {
            inbox_seq: Seq(a.inbox_seq),
            reply: rid != 0,
        },
        Body::Sync(q) => Plan::Sync {
            after: Seq(q.after_inbox_seq),
            limit: limits.sync.apply(q.limit),
        },
        Body::History(h) => {
            let peer = match direct_peer(rid, &h.conv) {
                Ok(p) => p,
                Err(plan) => return *plan,
            };
            let (direction, anchor) = match h.direction {
                //= SPEC.md#history
                //# BEFORE with seq 0 means "the newest messages".
                Direction::BEFORE if h.seq == 0 => (HistoryDirection::Before, Seq::MAX),
                Direction::BEFORE => (HistoryDirection::Before, Seq(h.seq)),
                Direction::AFTER => (HistoryDirection::After, Seq(h.seq)),
                _ => return invalid(rid, "unknown history direction"),
            };
            Plan::History {
                conv: ConvKey::direct(&s.user, &peer),
                peer: peer.as_str().to_owned(),
                anchor,
                direction,
                limit: limits.history.apply(h.limit),
            }
        }
        Body::Contacts(c) => Plan::Contacts {
            before_ms: c.before_time,
            limit: limits.contacts.apply(c.limit),
        },
        Body::Read(r) => match direct_peer(rid, &r.conv) {
            Ok(peer) => Plan::Read {
                conv: ConvKey::direct(&s.user, &peer),
                peer,
                up_to: Seq(r.conv_seq),
            },
            Err(plan) => *plan,
        },
        Body::Typing(t) => match direct_peer(rid, &t.conv) {
            Ok(peer) => Plan::Typing {
                frame: Frame::new(
                    0,
                    Body::Typing(Typing {
                        conv: Conv::direct(s.user.as_str().to_owned()),
                        user: Cow::Owned(s.user.as_str().to_owned()),
                        state: t.state,
                    }),
                ),
                peer,
            },
            Err(plan) => *plan,
        },
        Body::Recall(r) => match direct_peer(rid, &r.conv) {
            Ok(peer) => Plan::Recall {
                conv: ConvKey::direct(&s.user, &peer),
                peer,
                seq: Seq(r.conv_seq),
                msg_id: r.msg_id,
            },
            Err(plan) => *plan,
        },
        Body::Relation(r) => relation_plan(s, rid, r),
        Body::Presence(p) => crate::presence::plan_set(rid, p),
        Body::Subscribe(sub) => crate::presence::plan_subscribe(rid, sub),
        Body::PushToken(t) => crate::push::plan_token(rid, t),
        Body::Mute(m) => crate::push::plan_mute(s, rid, m),
        Body::RelationList(l) => {
            //= SPEC.md#relations
            //# An unknown `kind` or a cursor the server did not issue: `INVALID_ARGUMENT`.
            let kind = match l.kind.0 {
                1..=6 => RelationKind(l.kind.0),
                _ => return invalid(rid, "unknown relation list kind"),
            };
            let after = if l.cursor.is_empty() {
                None
            } else {
                match UserId::new(l.cursor.as_ref()) {
                    Ok(u) if valid_id(&l.cursor) => Some(u),
                    _ => return invalid(rid, "cursor was not issued by this server"),
                }
            };
            Plan::RelationList {
                kind,
                after,
                limit: limits.relations.apply(l.limit),
            }
        }
        // Frames only a server sends, and a second HELLO.
        Body::Hello(_)
        | Body::Welcome(_)
        | Body::Redirect(_)
        | Body::Ok
        | Body::SendAck(_)
        | Body::Push(_)
        | Body::SyncPage(_)
        | Body::HistoryPage(_)
        | Body::ContactsPage(_)
        | Body::Receipt(_)
        | Body::GroupListPage(_)
        | Body::GroupInfo(_)
        | Body::GroupReceiptsPage(_)
        | Body::TopicListPage(_)
        | Body::RelationPage(_) => Plan::Unexpected,
        // Valid requests of features this version does not serve yet (groups, rooms, topics,
        // relations, presence, recall): a non-closing error, so a client can degrade.
        _ => Plan::Reply(error(
            rid,
            ErrorCode::INVALID_ARGUMENT,
            format!(
                "{} is not supported by this node version",
                frame.frame_type()
            ),
        )),
    }
}

/// The ERROR for a request storage did not accept. Busy is OVERLOADED and keeps the connection.
pub fn submit_error(request_id: u32, e: SubmitError) -> Frame<'static> {
    match e {
        SubmitError::Busy => error(
            request_id,
            ErrorCode::OVERLOADED,
            "storage is busy, retry later",
        ),
        SubmitError::Closed => error(request_id, ErrorCode::SHUTTING_DOWN, "storage is shut down"),
    }
}

/// The ERROR for a storage operation that failed.
pub fn op_error(request_id: u32, e: &OpError) -> Frame<'static> {
    let code = match e {
        OpError::Blocked => ErrorCode::BLOCKED,
        OpError::NotFriend => ErrorCode::NOT_FRIEND,
        OpError::NotFound(_) => ErrorCode::NOT_FOUND,
        OpError::NotAllowed(_) => ErrorCode::FORBIDDEN,
        OpError::Invalid(_) | OpError::AlreadyRecalled => ErrorCode::INVALID_ARGUMENT,
        OpError::RecallExpired => ErrorCode::RECALL_EXPIRED,
        OpError::LimitExceeded(_) => ErrorCode::LIMIT_EXCEEDED,
        OpError::Closed => ErrorCode::SHUTTING_DOWN,
        OpError::Unavailable(_) => ErrorCode::UNAVAILABLE,
        OpError::Engine(_) => ErrorCode::INTERNAL,
    };
    error(request_id, code, e.to_string())
}

/// The plan for a RELATION request.
fn relation_plan(s: &SessionInfo, rid: u32, r: &WireRelation<'_>) -> Plan {
    if matches!(
        r.op,
        WireRelationOp::SET_FRIENDS_ONLY | WireRelationOp::CLEAR_FRIENDS_ONLY
    ) {
        //= SPEC.md#relations
        //# `user` MUST be empty.
        if !r.user.is_empty() {
            return invalid(rid, "the friends-only setting names no user");
        }
        return Plan::FriendsOnly {
            on: r.op == WireRelationOp::SET_FRIENDS_ONLY,
        };
    }
    let op = match r.op {
        WireRelationOp::FOLLOW => RelationOp::Follow,
        WireRelationOp::UNFOLLOW => RelationOp::Unfollow,
        WireRelationOp::FRIEND_REQUEST => {
            if r.note.len() > MAX_RELATION_NOTE {
                return invalid(rid, "friend request note longer than 256 bytes");
            }
            RelationOp::FriendRequest {
                note: r.note.to_string(),
            }
        }
        WireRelationOp::FRIEND_ACCEPT => RelationOp::FriendAccept,
        WireRelationOp::FRIEND_DECLINE => RelationOp::FriendDecline,
        WireRelationOp::UNFRIEND => RelationOp::Unfriend,
        WireRelationOp::BLOCK => RelationOp::Block,
        WireRelationOp::UNBLOCK => RelationOp::Unblock,
        _ => return invalid(rid, "unknown relation operation"),
    };
    let other = match UserId::new(r.user.as_ref()) {
        Ok(u) if valid_id(&r.user) => u,
        _ => return invalid(rid, "relation user is not a valid user id"),
    };
    //= SPEC.md#relations
    //# `user` equal to the sender's own id, or an invalid user id: `INVALID_ARGUMENT`.
    if other == s.user {
        return invalid(rid, "a relation needs another user");
    }
    Plan::Relate {
        change: RelationChange {
            user: s.user.clone(),
            other,
            op,
        },
    }
}

/// RELATION_PAGE from relations fetched with `limit + 1` rows (the extra one only tells whether
/// there is more), cut to fit a body of `max_body` bytes. The cursor is the last user listed.
pub fn relation_page(
    request_id: u32,
    kind: RelationKind,
    mut rows: Vec<Relation>,
    limit: usize,
    max_body: u32,
) -> Frame<'static> {
    // Page fields besides the entries: kind, cursor (one id) and the list count.
    const PAGE_OVERHEAD: usize = 16 + tern_storage::MAX_ID_LEN;
    // Per entry besides the id and the note: their length prefixes and `since`.
    const ENTRY_OVERHEAD: usize = 16;
    let mut more = rows.len() > limit;
    rows.truncate(limit);
    let budget = (max_body as usize).saturating_sub(PAGE_OVERHEAD);
    let mut used = 0;
    let mut fit = 0;
    for r in &rows {
        used += ENTRY_OVERHEAD + r.other.as_str().len() + r.note.len();
        if used > budget && fit > 0 {
            break;
        }
        fit += 1;
    }
    if fit < rows.len() {
        rows.truncate(fit);
        more = true;
    }
    let next_cursor = match rows.last() {
        Some(last) if more => last.other.as_str().to_owned(),
        _ => String::new(),
    };
    Frame::new(
        request_id,
        Body::RelationPage(RelationPage {
            kind: WireRelationKind(kind.0),
            next_cursor: Cow::Owned(next_cursor),
            users: rows
                .into_iter()
                .map(|r| RelationEntry {
                    user: Cow::Owned(r.other.as_str().to_owned()),
                    since: r.since_ms,
                    note: Cow::Owned(r.note),
                })
                .collect(),
        }),
    )
}

/// The RELATION notices a change sends the other user's devices: a new friend request, or a
/// friendship that began.
//= SPEC.md#relations
//# The server sends RELATION (request id 0, S→C) to every online device of a user when
//# another user asks them to be friends
pub fn relation_notices(change: &RelationChange, outcome: &RelationOutcome) -> Vec<Delivery> {
    let notice = |op, note: &str| Delivery {
        user: change.other.clone(),
        except_session: None,
        frame: Frame::new(
            0,
            Body::Relation(WireRelation {
                op,
                user: Cow::Owned(change.user.as_str().to_owned()),
                note: Cow::Owned(note.to_owned()),
            }),
        ),
    };
    if outcome.befriended {
        vec![notice(WireRelationOp::FRIEND_ACCEPT, "")]
    } else if outcome.requested {
        let note = match &change.op {
            RelationOp::FriendRequest { note } => note.as_str(),
            _ => "",
        };
        vec![notice(WireRelationOp::FRIEND_REQUEST, note)]
    } else {
        Vec::new()
    }
}

/// SEND_ACK for a stored (or de-duplicated) message.
pub fn send_ack(request_id: u32, msg: &DirectMessage, r: &AppendResult) -> Frame<'static> {
    Frame::new(
        request_id,
        Body::SendAck(SendAck {
            msg_id: tern_protocol::MsgId(msg.client_msg_id.0),
            conv_seq: r.conv_seq.0,
            inbox_seq: r.sender_inbox_seq.0,
            time: r.time_ms,
        }),
    )
}

/// A conversation as `viewer` names it on the wire.
pub fn wire_conv(conv: &ConvKey, viewer: &UserId) -> Conv<'static> {
    match conv {
        ConvKey::Direct(pair) => {
            let peer = pair.peer_of(viewer).unwrap_or(pair.high());
            Conv::direct(peer.as_str().to_owned())
        }
        ConvKey::Group(g) => Conv::group(g.as_str().to_owned()),
        ConvKey::Room(r) => Conv {
            kind: ConvKind::ROOM,
            id: Cow::Owned(r.as_str().to_owned()),
        },
        ConvKey::Topic(t) => Conv {
            kind: ConvKind::TOPIC,
            id: Cow::Owned(t.as_str().to_owned()),
        },
    }
}

/// A stored message as `viewer` sees it, with `inbox_seq` from the viewer's inbox (0 if none).
pub fn wire_message(m: &StoredMessage, viewer: &UserId, inbox_seq: Seq) -> Message<'static> {
    Message {
        conv: wire_conv(&m.conv, viewer),
        sender: Cow::Owned(m.sender.as_str().to_owned()),
        sender_device: Cow::Owned(m.sender_device.as_str().to_owned()),
        conv_seq: m.seq.0,
        inbox_seq: inbox_seq.0,
        msg_id: tern_protocol::MsgId(m.client_msg_id.0),
        time: m.time_ms,
        kind: WireKind(m.kind.0),
        flags: WireFlags(m.flags.0),
        //= SPEC.md#recall
        //# the recalled message is delivered with flag RECALLED and an empty body
        body: if m.flags.contains(MessageFlags::RECALLED) {
            Cow::Borrowed(&[])
        } else {
            Cow::Owned(m.body.clone())
        },
    }
}

/// The SEND_ACK of a recall: for the recall event, which is what the client's msg_id names.
pub fn recall_ack(
    request_id: u32,
    msg_id: tern_protocol::MsgId,
    r: &RecallResult,
) -> Frame<'static> {
    Frame::new(
        request_id,
        Body::SendAck(SendAck {
            msg_id,
            conv_seq: r.event_seq.0,
            inbox_seq: r.by_inbox_seq.0,
            time: r.time_ms,
        }),
    )
}

/// Who is told about a recall: the event goes like a message to every device of the other
/// participant and to the recaller's other devices. A retransmission goes to nobody.
pub fn recall_deliveries(
    s: &SessionInfo,
    peer: &UserId,
    conv: &ConvKey,
    recalled: Seq,
    msg_id: tern_protocol::MsgId,
    r: &RecallResult,
) -> Vec<Delivery> {
    if r.duplicate {
        return Vec::new();
    }
    let mut body = Vec::with_capacity(10);
    tern_protocol::wire::put_varint(&mut body, recalled.0);
    let event = StoredMessage {
        conv: conv.clone(),
        seq: r.event_seq,
        sender: s.user.clone(),
        sender_device: s.device.clone(),
        client_msg_id: ClientMsgId(msg_id.0),
        time_ms: r.time_ms,
        kind: MessageKind::RECALL_EVENT,
        flags: MessageFlags::NONE,
        body,
    };
    let push =
        |viewer: &UserId, seq: Seq| Frame::new(0, Body::Push(wire_message(&event, viewer, seq)));
    let mut out = Vec::with_capacity(2);
    if peer != &s.user {
        out.push(Delivery {
            user: peer.clone(),
            except_session: None,
            frame: push(peer, r.peer_inbox_seq),
        });
    }
    out.push(Delivery {
        user: s.user.clone(),
        except_session: Some(s.session_id),
        frame: push(&s.user, r.by_inbox_seq),
    });
    out
}

/// A PUSH for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub user: UserId,
    /// Skip this session (the sending device already has the message).
    pub except_session: Option<u64>,
    pub frame: Frame<'static>,
}

/// A newly stored one-to-one message as one user's devices receive it. It borrows the message:
/// fanning a message out copies nothing before the frame is encoded, once per user.
#[derive(Debug)]
pub struct Push<'a> {
    pub user: &'a UserId,
    /// Skip this session (the sending device already has the message).
    pub except_session: Option<u64>,
    pub frame: Frame<'a>,
}

/// Who is told about a newly stored message: every device of the recipient, and the sender's
/// other devices (multi-device roaming). A retransmission is delivered to nobody: the original
/// was, and anything missed is in the inboxes.
pub fn deliveries<'a>(s: &SessionInfo, msg: &'a DirectMessage, r: &AppendResult) -> Vec<Push<'a>> {
    if r.duplicate {
        return Vec::new();
    }
    // The same fields as `wire_message` of the stored message, borrowed; a direct conversation
    // is named by the viewer's peer.
    let push = |peer: &'a UserId, inbox_seq: Seq| {
        Frame::new(
            0,
            Body::Push(Message {
                conv: Conv {
                    kind: ConvKind::DIRECT,
                    id: Cow::Borrowed(peer.as_str()),
                },
                sender: Cow::Borrowed(msg.sender.as_str()),
                sender_device: Cow::Borrowed(msg.sender_device.as_str()),
                conv_seq: r.conv_seq.0,
                inbox_seq: inbox_seq.0,
                msg_id: tern_protocol::MsgId(msg.client_msg_id.0),
                time: r.time_ms,
                kind: WireKind(msg.kind.0),
                flags: WireFlags(MessageFlags::NONE.0),
                body: Cow::Borrowed(&msg.body),
            }),
        )
    };
    let mut out = Vec::with_capacity(2);
    if msg.recipient != msg.sender {
        out.push(Push {
            user: &msg.recipient,
            except_session: None,
            frame: push(&msg.sender, r.recipient_inbox_seq),
        });
    }
    out.push(Push {
        user: &msg.sender,
        except_session: Some(s.session_id),
        frame: push(&msg.recipient, r.sender_inbox_seq),
    });
    out
}

/// SYNC_PAGE from an inbox page fetched with `limit + 1` entries (the extra one only tells
/// whether there is more).
pub fn sync_page(
    request_id: u32,
    viewer: &UserId,
    after: Seq,
    mut entries: Vec<InboxMessage>,
    limit: usize,
    max_body: u32,
) -> Frame<'static> {
    let mut more = entries.len() > limit;
    entries.truncate(limit);
    //= SPEC.md#sync
    //# The server caps the limit to fit the client's max_frame.
    let fit = fitting(entries.iter().map(|e| &e.message), max_body);
    if fit < entries.len() {
        entries.truncate(fit);
        more = true;
    }
    // Without a head query in the store API, the head reported is the last entry seen (exact
    // when `more` is false; a lower bound otherwise, and the client keeps paging).
    let head = entries
        .last()
        .map_or(after.0, |e| e.inbox_seq.0.max(after.0));
    let messages = entries
        .iter()
        .map(|e| wire_message(&e.message, viewer, e.inbox_seq))
        .collect();
    Frame::new(
        request_id,
        Body::SyncPage(SyncPage {
            head,
            more,
            messages,
        }),
    )
}

/// HISTORY_PAGE from a history query fetched with `limit + 1` entries; ascending conv seq.
pub fn history_page(
    request_id: u32,
    viewer: &UserId,
    conv: Conv<'static>,
    direction: HistoryDirection,
    mut msgs: Vec<StoredMessage>,
    limit: usize,
    max_body: u32,
) -> Frame<'static> {
    let mut more = msgs.len() > limit;
    msgs.truncate(limit);
    // Storage order is nearest to the anchor first, so the messages kept are the nearest.
    let fit = fitting(msgs.iter(), max_body);
    if fit < msgs.len() {
        msgs.truncate(fit);
        more = true;
    }
    if direction == HistoryDirection::Before {
        msgs.reverse();
    }
    let messages = msgs
        .iter()
        .map(|m| wire_message(m, viewer, Seq::ZERO))
        .collect();
    Frame::new(
        request_id,
        Body::HistoryPage(HistoryPage {
            conv,
            more,
            messages,
        }),
    )
}

/// Page fields other than the messages: head/more or conv/more, and the list count.
pub const PAGE_OVERHEAD: usize = 160;

/// At most how many bytes `m` takes in a page: its ids and body, the fields besides them
/// (conv kind, varints, msgid, kind, flags: 80) and the conversation id.
pub fn message_size(m: &StoredMessage) -> usize {
    80 + m.body.len()
        + m.sender.as_str().len()
        + m.sender_device.as_str().len()
        + 2 * tern_storage::MAX_ID_LEN
}

/// How many of `msgs`, in order, fit in a page body of at most `max_body` bytes (at least one,
/// so that paging always advances; a client whose limit is below one message cannot receive it
/// in any form).
fn fitting<'m>(msgs: impl Iterator<Item = &'m StoredMessage>, max_body: u32) -> usize {
    let budget = (max_body as usize).saturating_sub(PAGE_OVERHEAD);
    let mut used = 0;
    let mut n = 0;
    for m in msgs {
        used += message_size(m);
        if used > budget && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

/// Most entries one CONTACTS_PAGE holds when a run of conversations sharing one time is
/// longer than the asked limit.
pub const CONTACTS_RUN_CAP: usize = 1_000;

/// How many of `convs` (most recent first) go on a page of `limit`: `limit`, extended to the end
/// of a run of conversations with the time of the last one, so that the next page — which
/// continues strictly before that time — skips none of them.
//= SPEC.md#contacts
//# A page never ends inside a run of conversations with the same `time`
pub fn contacts_cut(convs: &[RecentConversation], limit: usize) -> usize {
    let limit = limit.max(1);
    if convs.len() <= limit {
        return convs.len();
    }
    let edge = convs[limit - 1].last_time_ms;
    let run = convs[limit..]
        .iter()
        .take_while(|c| c.last_time_ms == edge)
        .count();
    (limit + run).min(CONTACTS_RUN_CAP.max(limit))
}

/// Whether `convs` ends inside the run that a page of `limit` must complete (more entries of
/// that time may follow in the store).
pub fn contacts_run_open(convs: &[RecentConversation], limit: usize) -> bool {
    let limit = limit.max(1);
    convs.len() > limit
        && convs.len() < CONTACTS_RUN_CAP
        && convs.last().map(|c| c.last_time_ms) == Some(convs[limit - 1].last_time_ms)
}

/// CONTACTS_PAGE from the conversations fetched after the request's position (most recent
/// first), cut by [`contacts_cut`]; `more_stored` says the store has entries past `convs`.
pub fn contacts_page(
    request_id: u32,
    viewer: &UserId,
    convs: &[RecentConversation],
    total_unread: u64,
    more_stored: bool,
    limit: usize,
) -> Frame<'static> {
    let cut = contacts_cut(convs, limit);
    let entries = convs[..cut]
        .iter()
        .map(|c| Contact {
            conv: wire_conv(&c.conv, viewer),
            unread: u64::from(c.unread),
            read_seq: c.read_seq.0,
            mentioned: c.mentioned,
            time: c.last_time_ms,
            last: c
                .last_message
                .as_ref()
                .map(|m| wire_message(m, viewer, Seq::ZERO)),
        })
        .collect::<Vec<_>>();
    Frame::new(
        request_id,
        Body::ContactsPage(ContactsPage {
            total_unread,
            more: cut < convs.len() || more_stored,
            entries,
        }),
    )
}

/// RECEIPT(READ) deliveries after `reader` read `peer`'s conversation up to `read_seq`: to the
/// peer's devices, and to the reader's other devices so their unread counts follow.
pub fn read_receipts(s: &SessionInfo, peer: &UserId, read_seq: Seq, now_ms: u64) -> Vec<Delivery> {
    let receipt = |conv_peer: &UserId| {
        Frame::new(
            0,
            Body::Receipt(Receipt {
                conv: Conv::direct(conv_peer.as_str().to_owned()),
                user: Cow::Owned(s.user.as_str().to_owned()),
                kind: ReceiptKind::READ,
                conv_seq: read_seq.0,
                time: now_ms,
            }),
        )
    };
    let mut out = Vec::with_capacity(2);
    if *peer != s.user {
        out.push(Delivery {
            user: peer.clone(),
            except_session: None,
            frame: receipt(&s.user),
        });
    }
    out.push(Delivery {
        user: s.user.clone(),
        except_session: Some(s.session_id),
        frame: receipt(peer),
    });
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stored_event_kinds_are_the_wire_kinds() {
        // Stored kinds go on the wire unchanged, so the two numberings must agree.
        assert_eq!(MessageKind::RECALL_EVENT.0, WireKind::RECALL.0);
        assert_eq!(MessageKind::GROUP_EVENT.0, WireKind::GROUP_EVENT.0);
        assert!(!MessageKind(WireKind::CUSTOM.0).is_event());
    }
    use tern_protocol::{Contacts, History, MsgId, PushAck, Read, Send, Sync};

    fn me() -> SessionInfo {
        SessionInfo {
            user: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            session_id: 7,
        }
    }

    fn send(to: &str, kind: u8) -> Frame<'static> {
        Frame::new(
            3,
            Body::Send(Send {
                to: Conv::direct(to.to_owned()),
                msg_id: MsgId([1; 16]),
                kind: WireKind(kind),
                body: Cow::Borrowed(b"hi"),
            }),
        )
    }

    fn result(dup: bool) -> AppendResult {
        AppendResult {
            conv: ConvKey::direct(&UserId::new("alice").unwrap(), &UserId::new("bob").unwrap()),
            conv_seq: Seq(4),
            sender_inbox_seq: Seq(10),
            recipient_inbox_seq: Seq(20),
            time_ms: 99,
            duplicate: dup,
        }
    }

    #[test]
    fn send_plans_an_append_and_validates() {
        let l = Limits::default();
        let Plan::Append { msg } = plan(&me(), &send("bob", 1), &l) else {
            panic!()
        };
        assert_eq!(msg.recipient.as_str(), "bob");
        assert_eq!(msg.body, b"hi");
        for bad in [
            send("", 1),
            send("bob", 0),
            send("bob", 0x40),
            send(&"x".repeat(65), 1),
        ] {
            let Plan::Reply(f) = plan(&me(), &bad, &l) else {
                panic!()
            };
            let Body::Error(e) = f.body else { panic!() };
            assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
            assert_eq!(f.request_id, 3);
        }
        let group = Frame::new(
            1,
            Body::Send(Send {
                to: Conv::group("g"),
                msg_id: MsgId([1; 16]),
                kind: WireKind::TEXT,
                body: Cow::Borrowed(b""),
            }),
        );
        // Groups are served: a SEND to one is a group send, stored by the group's writer.
        assert!(matches!(
            plan(&me(), &group, &l),
            Plan::Group(p) if matches!(*p, crate::groups::GroupPlan::Send { .. })
        ));
    }

    #[test]
    fn ack_and_deliveries_follow_the_append_result() {
        let l = Limits::default();
        let Plan::Append { msg } = plan(&me(), &send("bob", 1), &l) else {
            panic!()
        };
        let ack = send_ack(3, &msg, &result(false));
        let Body::SendAck(a) = ack.body else { panic!() };
        assert_eq!((a.conv_seq, a.inbox_seq, a.time), (4, 10, 99));
        let d = deliveries(&me(), &msg, &result(false));
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].user.as_str(), "bob");
        let Body::Push(p) = &d[0].frame.body else {
            panic!()
        };
        assert_eq!(
            (p.conv.id.as_ref(), p.inbox_seq, p.sender.as_ref()),
            ("alice", 20, "alice")
        );
        assert_eq!(d[1].except_session, Some(7));
        let Body::Push(p) = &d[1].frame.body else {
            panic!()
        };
        assert_eq!((p.conv.id.as_ref(), p.inbox_seq), ("bob", 10));
        assert!(deliveries(&me(), &msg, &result(true)).is_empty());
    }

    #[test]
    fn note_to_self_is_delivered_once() {
        let Plan::Append { msg } = plan(&me(), &send("alice", 1), &Limits::default()) else {
            panic!()
        };
        let mut r = result(false);
        r.conv = ConvKey::direct(&msg.sender, &msg.sender);
        let d = deliveries(&me(), &msg, &r);
        assert_eq!(d.len(), 1);
        let Body::Push(p) = &d[0].frame.body else {
            panic!()
        };
        assert_eq!(p.conv.id.as_ref(), "alice");
    }

    #[test]
    fn paging_requests_apply_limits() {
        let l = Limits::default();
        let f = Frame::new(
            1,
            Body::Sync(Sync {
                after_inbox_seq: 5,
                limit: 0,
            }),
        );
        assert_eq!(
            plan(&me(), &f, &l),
            Plan::Sync {
                after: Seq(5),
                limit: 100
            }
        );
        let f = Frame::new(
            1,
            Body::Sync(Sync {
                after_inbox_seq: 5,
                limit: 60_000,
            }),
        );
        assert_eq!(
            plan(&me(), &f, &l),
            Plan::Sync {
                after: Seq(5),
                limit: 500
            }
        );
        let f = Frame::new(
            1,
            Body::History(History {
                conv: Conv::direct("bob"),
                direction: Direction::BEFORE,
                seq: 0,
                limit: 10,
            }),
        );
        let Plan::History {
            anchor,
            direction,
            limit,
            ..
        } = plan(&me(), &f, &l)
        else {
            panic!()
        };
        assert_eq!(
            (anchor, direction, limit),
            (Seq::MAX, HistoryDirection::Before, 10)
        );
        let f = Frame::new(
            1,
            Body::Contacts(Contacts {
                before_time: 0,
                limit: 0,
            }),
        );
        assert_eq!(
            plan(&me(), &f, &l),
            Plan::Contacts {
                before_ms: 0,
                limit: 50
            }
        );
        let f = Frame::new(0, Body::PushAck(PushAck { inbox_seq: 9 }));
        assert_eq!(
            plan(&me(), &f, &l),
            Plan::PushAck {
                inbox_seq: Seq(9),
                reply: false
            }
        );
        let f = Frame::new(
            2,
            Body::Read(Read {
                conv: Conv::direct("bob"),
                conv_seq: 3,
            }),
        );
        assert!(matches!(
            plan(&me(), &f, &l),
            Plan::Read { up_to: Seq(3), .. }
        ));
    }

    #[test]
    fn relation_requests_are_validated_and_planned() {
        use tern_protocol::{Relation as R, RelationList};
        let l = Limits::default();
        let rel = |op, user: &str, note: &str| {
            Frame::new(
                4,
                Body::Relation(R {
                    op,
                    user: Cow::Owned(user.to_owned()),
                    note: Cow::Owned(note.to_owned()),
                }),
            )
        };
        let Plan::Relate { change } = plan(&me(), &rel(WireRelationOp::BLOCK, "bob", ""), &l)
        else {
            panic!()
        };
        assert_eq!(
            (change.user.as_str(), change.other.as_str()),
            ("alice", "bob")
        );
        assert_eq!(change.op, RelationOp::Block);
        let Plan::Relate { change } = plan(
            &me(),
            &rel(WireRelationOp::FRIEND_REQUEST, "bob", "hey"),
            &l,
        ) else {
            panic!()
        };
        assert_eq!(change.op, RelationOp::FriendRequest { note: "hey".into() });
        assert_eq!(
            plan(&me(), &rel(WireRelationOp::SET_FRIENDS_ONLY, "", ""), &l),
            Plan::FriendsOnly { on: true }
        );
        assert_eq!(
            plan(&me(), &rel(WireRelationOp::CLEAR_FRIENDS_ONLY, "", ""), &l),
            Plan::FriendsOnly { on: false }
        );
        for bad in [
            rel(WireRelationOp::FOLLOW, "alice", ""),
            rel(WireRelationOp::FOLLOW, "", ""),
            rel(WireRelationOp(99), "bob", ""),
            rel(WireRelationOp::SET_FRIENDS_ONLY, "bob", ""),
            rel(WireRelationOp::FRIEND_REQUEST, "bob", &"n".repeat(257)),
        ] {
            let Plan::Reply(f) = plan(&me(), &bad, &l) else {
                panic!("{bad:?}")
            };
            let Body::Error(e) = f.body else { panic!() };
            assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
        }
        let list = |kind, cursor: &str, limit| {
            Frame::new(
                5,
                Body::RelationList(RelationList {
                    kind: WireRelationKind(kind),
                    cursor: Cow::Owned(cursor.to_owned()),
                    limit,
                }),
            )
        };
        assert_eq!(
            plan(&me(), &list(2, "", 0), &l),
            Plan::RelationList {
                kind: RelationKind::FOLLOWER,
                after: None,
                limit: 100
            }
        );
        assert_eq!(
            plan(&me(), &list(6, "carol", 9_999), &l),
            Plan::RelationList {
                kind: RelationKind::REQUESTED,
                after: Some(UserId::new("carol").unwrap()),
                limit: 500
            }
        );
        assert!(matches!(plan(&me(), &list(7, "", 0), &l), Plan::Reply(_)));
        // Without the capability the family is refused; with it, it is not.
        let f = list(3, "", 0);
        assert!(not_negotiated(Capabilities::RECEIPTS, &f).is_some());
        assert!(not_negotiated(Capabilities::RELATIONS, &f).is_none());
        assert!(!outbound_allowed(Capabilities::NONE, FrameType::RELATION));
        assert!(outbound_allowed(Capabilities::NONE, FrameType::PUSH));
    }

    #[test]
    fn relation_pages_carry_a_cursor_only_when_more_follow() {
        let row = |u: &str| Relation {
            other: UserId::new(u).unwrap(),
            kind: RelationKind::FRIEND,
            since_ms: 7,
            note: String::new(),
        };
        let f = relation_page(
            1,
            RelationKind::FRIEND,
            vec![row("a"), row("b"), row("c")],
            2,
            65_536,
        );
        let Body::RelationPage(p) = f.body else {
            panic!()
        };
        assert_eq!(p.users.len(), 2);
        assert_eq!(p.next_cursor, "b");
        let f = relation_page(1, RelationKind::FRIEND, vec![row("a")], 2, 65_536);
        let Body::RelationPage(p) = f.body else {
            panic!()
        };
        assert_eq!((p.users.len(), p.next_cursor.as_ref()), (1, ""));
        // Long notes are cut to the client's frame size, and the page says there is more.
        let long = |u: &str| Relation {
            note: "x".repeat(256),
            kind: RelationKind::PENDING,
            ..row(u)
        };
        let rows: Vec<_> = (0..40).map(|i| long(&format!("u{i}"))).collect();
        let f = relation_page(1, RelationKind::PENDING, rows, 100, 4096);
        assert!(f.to_bytes().unwrap().len() <= 4096 + tern_protocol::HEADER_LEN);
        let Body::RelationPage(p) = f.body else {
            panic!()
        };
        assert!(p.users.len() < 40 && !p.next_cursor.is_empty());
    }

    #[test]
    fn friend_notices_go_to_the_other_user() {
        let change = RelationChange {
            user: UserId::new("alice").unwrap(),
            other: UserId::new("bob").unwrap(),
            op: RelationOp::FriendRequest { note: "hi".into() },
        };
        let asked = RelationOutcome {
            changed: true,
            requested: true,
            befriended: false,
        };
        let d = relation_notices(&change, &asked);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].user.as_str(), "bob");
        let Body::Relation(r) = &d[0].frame.body else {
            panic!()
        };
        assert_eq!(
            (r.op, r.user.as_ref(), r.note.as_ref()),
            (WireRelationOp::FRIEND_REQUEST, "alice", "hi")
        );
        let friends = RelationOutcome {
            changed: true,
            requested: false,
            befriended: true,
        };
        let Body::Relation(r) = &relation_notices(&change, &friends)[0].frame.body else {
            panic!()
        };
        assert_eq!(r.op, WireRelationOp::FRIEND_ACCEPT);
        assert!(relation_notices(&change, &RelationOutcome::default()).is_empty());
    }

    #[test]
    fn typing_and_presence_need_their_capabilities() {
        let typing = Frame::new(
            6,
            Body::Typing(Typing {
                conv: Conv::direct("bob"),
                user: Cow::Borrowed(""),
                state: tern_protocol::TypingState::TYPING,
            }),
        );
        let refused = not_negotiated(Capabilities::RELATIONS, &typing).unwrap();
        let Body::Error(e) = refused.body else {
            panic!()
        };
        assert_eq!(
            (refused.request_id, e.code),
            (6, ErrorCode::INVALID_ARGUMENT)
        );
        assert!(not_negotiated(Capabilities::TYPING, &typing).is_none());
        // A peer that did not negotiate TYPING or PRESENCE is not sent them.
        assert!(!outbound_allowed(
            Capabilities::RELATIONS,
            FrameType::TYPING
        ));
        assert!(outbound_allowed(Capabilities::TYPING, FrameType::TYPING));
        assert!(!outbound_allowed(Capabilities::TYPING, FrameType::PRESENCE));
        assert!(outbound_allowed(
            Capabilities::PRESENCE,
            FrameType::PRESENCE
        ));
    }

    #[test]
    fn server_frames_from_a_client_are_unexpected() {
        let f = Frame::new(0, Body::Ok);
        assert_eq!(plan(&me(), &f, &Limits::default()), Plan::Unexpected);
    }

    #[test]
    fn sync_page_reports_more_and_head() {
        let stored = |seq| InboxMessage {
            inbox_seq: Seq(seq),
            message: StoredMessage {
                conv: result(false).conv,
                seq: Seq(seq),
                sender: UserId::new("bob").unwrap(),
                sender_device: DeviceId::new("d").unwrap(),
                client_msg_id: ClientMsgId([0; 16]),
                time_ms: 1,
                kind: MessageKind::TEXT,
                flags: MessageFlags::NONE,
                body: vec![],
            },
        };
        let f = sync_page(
            1,
            &me().user,
            Seq(0),
            vec![stored(1), stored(2), stored(3)],
            2,
            65_536,
        );
        let Body::SyncPage(p) = f.body else { panic!() };
        assert!(p.more);
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.head, 2);
        assert_eq!(p.messages[0].conv.id, "bob");
        let f = sync_page(1, &me().user, Seq(7), vec![], 2, 65_536);
        let Body::SyncPage(p) = f.body else { panic!() };
        assert_eq!((p.more, p.head), (false, 7));
        // Pages are cut to the client's max_frame; the encoded frame stays below it.
        let big = |seq| {
            let mut m = stored(seq);
            m.message.body = vec![b'x'; 1500];
            m
        };
        let f = sync_page(1, &me().user, Seq(0), (1..=5).map(big).collect(), 100, 4096);
        assert!(f.to_bytes().unwrap().len() <= 4096 + tern_protocol::HEADER_LEN);
        let Body::SyncPage(p) = f.body else { panic!() };
        assert!(p.more);
        assert_eq!(p.messages.len(), 2);
        let f = sync_page(1, &me().user, Seq(7), vec![], 2, 65_536);
        let Body::SyncPage(p) = f.body else { panic!() };
        assert_eq!((p.more, p.head), (false, 7));
    }

    #[test]
    fn read_receipts_go_to_the_peer_and_my_other_devices() {
        let bob = UserId::new("bob").unwrap();
        let r = read_receipts(&me(), &bob, Seq(5), 1);
        assert_eq!(r.len(), 2);
        let Body::Receipt(x) = &r[0].frame.body else {
            panic!()
        };
        assert_eq!(
            (x.conv.id.as_ref(), x.user.as_ref(), x.conv_seq),
            ("alice", "alice", 5)
        );
    }

    #[test]
    fn a_contacts_page_never_ends_inside_a_run_of_one_time() {
        use tern_storage::{ConvKey, RecentConversation};
        let conv = |peer: &str, t: u64| RecentConversation {
            conv: ConvKey::direct(&me().user, &UserId::new(peer).unwrap()),
            last_seq: Seq(1),
            last_time_ms: t,
            last_message: None,
            unread: 0,
            read_seq: Seq::ZERO,
            mentioned: false,
            updated_ms: t,
        };
        let list = [
            conv("a", 9),
            conv("b", 7),
            conv("c", 7),
            conv("d", 7),
            conv("e", 5),
        ];
        assert_eq!(contacts_cut(&list, 1), 1);
        assert_eq!(contacts_cut(&list, 2), 4, "b, c, d share a time");
        assert_eq!(contacts_cut(&list, 4), 4);
        assert_eq!(contacts_cut(&list, 9), 5);
        assert!(
            contacts_run_open(&list[..3], 2),
            "the run may go on in the store"
        );
        assert!(!contacts_run_open(&list, 2), "e ends the run");
        let f = contacts_page(3, &me().user, &list, 4, false, 2);
        let Body::ContactsPage(p) = f.body else {
            panic!("{f:?}")
        };
        assert_eq!(p.entries.len(), 3 + 1);
        assert!(p.more);
        assert_eq!(p.total_unread, 4);
    }
}
