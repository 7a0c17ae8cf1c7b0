//! Frame bodies (SPEC.md §6–§7): one struct per frame type, fields in wire order, and the
//! [`Body`] enum that ties each struct to its [`FrameType`].

use std::borrow::Cow;

use crate::types::*;
use crate::wire::{wire_struct, BodyError, IntoOwned, Reader, Wire};

wire_struct! {
    /// A stored message as delivered to a device (SPEC.md §6.6).
    pub struct Message<'a> {
        pub conv: Conv<'a>,
        pub sender: Cow<'a, str>,
        pub sender_device: Cow<'a, str>,
        pub conv_seq: u64,
        /// The receiver's inbox sequence of this message, 0 when not read from an inbox.
        pub inbox_seq: u64,
        pub msg_id: MsgId,
        /// Server time, milliseconds since the Unix epoch.
        pub time: u64,
        pub kind: MessageKind,
        pub flags: MessageFlags,
        pub body: Cow<'a, [u8]>,
    }
}

wire_struct! {
    /// HELLO, client → server, the first frame of every connection (SPEC.md §6.1).
    pub struct Hello<'a> {
        pub protocol: u16,
        pub capabilities: Capabilities,
        pub max_frame: u32,
        pub token: Cow<'a, str>,
        pub device: Cow<'a, str>,
        pub resume_inbox_seq: u64,
        pub client: Cow<'a, str>,
    }
}

wire_struct! {
    /// WELCOME, server → client, accepts a HELLO (SPEC.md §6.1).
    pub struct Welcome<'a> {
        pub protocol: u16,
        pub capabilities: Capabilities,
        pub max_frame: u32,
        pub heartbeat_secs: u16,
        pub idle_timeout_secs: u16,
        pub user: Cow<'a, str>,
        pub session_id: u64,
        pub server_time: u64,
        pub inbox_head: u64,
        pub node: Cow<'a, str>,
    }
}

wire_struct! {
    /// One address in a REDIRECT.
    pub struct Addr<'a> {
        pub transport: Transport,
        pub addr: Cow<'a, str>,
    }
}

wire_struct! {
    /// REDIRECT, server → client: the user is served by another node (SPEC.md §6.2).
    pub struct Redirect<'a> {
        pub epoch: u64,
        pub addrs: Vec<Addr<'a>>,
    }
}

wire_struct! {
    /// CLOSE, either direction (SPEC.md §6.4).
    pub struct Close<'a> {
        pub reason: CloseReason,
        pub retry_after_ms: u32,
        pub message: Cow<'a, str>,
    }
}

wire_struct! {
    /// PING and PONG (SPEC.md §6.3): PONG echoes the PING's time.
    pub struct Ping {
        pub time: u64,
    }
}

wire_struct! {
    /// ERROR (SPEC.md §8).
    pub struct Error<'a> {
        pub code: ErrorCode,
        pub message: Cow<'a, str>,
    }
}

wire_struct! {
    /// SEND, client → server (SPEC.md §7.1).
    pub struct Send<'a> {
        pub to: Conv<'a>,
        pub msg_id: MsgId,
        pub kind: MessageKind,
        pub body: Cow<'a, [u8]>,
    }
}

wire_struct! {
    /// SEND with its trailing `mentions` field (SPEC.md §7.1): the members a group message
    /// mentions, an empty string standing for every member (@all). The decoder returns it for a
    /// SEND whose mention list is present and not empty, and [`Send`] for every other SEND, so
    /// code that builds the four-field SEND is unaffected by the appended field.
    pub struct SendWithMentions<'a> {
        pub to: Conv<'a>,
        pub msg_id: MsgId,
        pub kind: MessageKind,
        pub body: Cow<'a, [u8]>,
        pub mentions: Vec<Cow<'a, str>>,
    }
}

impl<'a> SendWithMentions<'a> {
    /// The four fields every SEND has.
    pub fn send(&self) -> Send<'a> {
        Send {
            to: self.to.clone(),
            msg_id: self.msg_id,
            kind: self.kind,
            body: self.body.clone(),
        }
    }
}

/// Decodes a SEND body: the four fields, then the optional `mentions` list (a body that ends
/// after `body` has none, SPEC.md §3 "Forward compatibility").
fn get_send<'a>(r: &mut Reader<'a>) -> Result<Body<'a>, BodyError> {
    let send = <Send<'a> as Wire<'a>>::get(r)?;
    if r.remaining() == 0 {
        return Ok(Body::Send(send));
    }
    let mentions = <Vec<Cow<'a, str>> as Wire<'a>>::get(r)?;
    if mentions.is_empty() {
        return Ok(Body::Send(send));
    }
    Ok(Body::SendWithMentions(SendWithMentions {
        to: send.to,
        msg_id: send.msg_id,
        kind: send.kind,
        body: send.body,
        mentions,
    }))
}

wire_struct! {
    /// SEND_ACK, server → client: the message is durable (SPEC.md §7.1).
    pub struct SendAck {
        pub msg_id: MsgId,
        pub conv_seq: u64,
        pub inbox_seq: u64,
        pub time: u64,
    }
}

wire_struct! {
    /// PUSH_ACK, client → server: every inbox entry up to `inbox_seq` is received.
    pub struct PushAck {
        pub inbox_seq: u64,
    }
}

wire_struct! {
    /// SYNC, client → server (SPEC.md §7.3).
    pub struct Sync {
        pub after_inbox_seq: u64,
        pub limit: u16,
    }
}

wire_struct! {
    /// SYNC_PAGE, server → client.
    pub struct SyncPage<'a> {
        pub head: u64,
        pub more: bool,
        pub messages: Vec<Message<'a>>,
    }
}

wire_struct! {
    /// HISTORY, client → server (SPEC.md §7.4).
    pub struct History<'a> {
        pub conv: Conv<'a>,
        pub direction: Direction,
        pub seq: u64,
        pub limit: u16,
    }
}

wire_struct! {
    /// HISTORY_PAGE, server → client, messages in ascending `conv_seq`.
    pub struct HistoryPage<'a> {
        pub conv: Conv<'a>,
        pub more: bool,
        pub messages: Vec<Message<'a>>,
    }
}

wire_struct! {
    /// CONTACTS, client → server (SPEC.md §7.5).
    pub struct Contacts {
        pub before_time: u64,
        pub limit: u16,
    }
}

wire_struct! {
    /// One recent conversation in a CONTACTS_PAGE.
    pub struct Contact<'a> {
        pub conv: Conv<'a>,
        pub unread: u64,
        pub read_seq: u64,
        pub mentioned: bool,
        pub time: u64,
        pub last: Option<Message<'a>>,
    }
}

wire_struct! {
    /// CONTACTS_PAGE, server → client, most recent first.
    pub struct ContactsPage<'a> {
        pub total_unread: u64,
        pub more: bool,
        pub entries: Vec<Contact<'a>>,
    }
}

wire_struct! {
    /// READ, client → server: read up to and including `conv_seq` (SPEC.md §7.6).
    pub struct Read<'a> {
        pub conv: Conv<'a>,
        pub conv_seq: u64,
    }
}

wire_struct! {
    /// RECEIPT, server → client: `user` received or read `conv` up to `conv_seq`.
    pub struct Receipt<'a> {
        pub conv: Conv<'a>,
        pub user: Cow<'a, str>,
        pub kind: ReceiptKind,
        pub conv_seq: u64,
        pub time: u64,
    }
}

wire_struct! {
    /// RECALL, client → server (SPEC.md §7.7).
    pub struct Recall<'a> {
        pub conv: Conv<'a>,
        pub conv_seq: u64,
        pub msg_id: MsgId,
    }
}

wire_struct! {
    /// TYPING, both directions; `user` is empty from a client.
    pub struct Typing<'a> {
        pub conv: Conv<'a>,
        pub user: Cow<'a, str>,
        pub state: TypingState,
    }
}

wire_struct! {
    /// PRESENCE, both directions; `user` is empty from a client.
    pub struct Presence<'a> {
        pub user: Cow<'a, str>,
        pub status: PresenceStatus,
        pub last_seen: u64,
        pub text: Cow<'a, str>,
    }
}

wire_struct! {
    /// SUBSCRIBE, client → server: presence subscriptions.
    pub struct Subscribe<'a> {
        pub op: SubOp,
        pub users: Vec<Cow<'a, str>>,
    }
}

wire_struct! {
    /// GROUP_CREATE (SPEC.md §7.9).
    pub struct GroupCreate<'a> {
        pub name: Cow<'a, str>,
        pub members: Vec<Cow<'a, str>>,
    }
}

wire_struct! {
    /// GROUP_UPDATE: absent fields are left unchanged.
    pub struct GroupUpdate<'a> {
        pub group: Cow<'a, str>,
        pub name: Option<Cow<'a, str>>,
        pub announcement: Option<Cow<'a, str>>,
        pub avatar: Option<Cow<'a, str>>,
    }
}

wire_struct! {
    /// GROUP_MEMBERS: add, remove, mute, unmute or set the role of members.
    pub struct GroupMembers<'a> {
        pub group: Cow<'a, str>,
        pub op: MemberOp,
        pub users: Vec<Cow<'a, str>>,
        pub arg: u64,
    }
}

wire_struct! {
    /// GROUP_LEAVE, GROUP_DISBAND, GROUP_GET, ROOM_LEAVE: a body naming one group or room.
    pub struct GroupRef<'a> {
        pub group: Cow<'a, str>,
    }
}

wire_struct! {
    /// GROUP_TRANSFER: make `owner` the owner.
    pub struct GroupTransfer<'a> {
        pub group: Cow<'a, str>,
        pub owner: Cow<'a, str>,
    }
}

wire_struct! {
    /// GROUP_LIST, TOPIC_LIST and RELATION_LIST paging request.
    pub struct ListRequest<'a> {
        pub cursor: Cow<'a, str>,
        pub limit: u16,
    }
}

wire_struct! {
    /// One group in a GROUP_LIST_PAGE.
    pub struct GroupSummary<'a> {
        pub group: Cow<'a, str>,
        pub name: Cow<'a, str>,
        pub members: u64,
    }
}

wire_struct! {
    /// GROUP_LIST_PAGE.
    pub struct GroupListPage<'a> {
        pub next_cursor: Cow<'a, str>,
        pub groups: Vec<GroupSummary<'a>>,
    }
}

wire_struct! {
    /// One member in a GROUP_INFO.
    pub struct GroupMember<'a> {
        pub user: Cow<'a, str>,
        pub role: Role,
        pub muted_until: u64,
    }
}

wire_struct! {
    /// GROUP_INFO, the reply to GROUP_CREATE and GROUP_GET.
    pub struct GroupInfo<'a> {
        pub group: Cow<'a, str>,
        pub name: Cow<'a, str>,
        pub announcement: Cow<'a, str>,
        pub avatar: Cow<'a, str>,
        pub owner: Cow<'a, str>,
        pub member_count: u64,
        pub members: Vec<GroupMember<'a>>,
    }
}

wire_struct! {
    /// ROOM_JOIN: join a chat room and receive its `recent` last messages.
    pub struct RoomJoin<'a> {
        pub room: Cow<'a, str>,
        pub recent: u16,
    }
}

wire_struct! {
    /// TOPIC_SUB: subscribe to or unsubscribe from a topic.
    pub struct TopicSub<'a> {
        pub op: SubOp,
        pub topic: Cow<'a, str>,
    }
}

wire_struct! {
    /// One subscription in a TOPIC_LIST_PAGE.
    pub struct TopicSummary<'a> {
        pub topic: Cow<'a, str>,
        /// Current subscribers of the topic.
        pub subscribers: u64,
        /// The topic's last `conv_seq` (0 = no message yet).
        pub last_seq: u64,
        /// The user's read position in the topic.
        pub read_seq: u64,
    }
}

wire_struct! {
    /// TOPIC_LIST_PAGE: the user's topic subscriptions, in topic id byte order.
    pub struct TopicListPage<'a> {
        pub next_cursor: Cow<'a, str>,
        pub topics: Vec<TopicSummary<'a>>,
    }
}

wire_struct! {
    /// RELATION: follow, befriend, block… (C→S); S→C, the notice of a friend request or
    /// acceptance.
    pub struct Relation<'a> {
        pub op: RelationOp,
        pub user: Cow<'a, str>,
        pub note: Cow<'a, str>,
    }
}

wire_struct! {
    /// RELATION_LIST.
    pub struct RelationList<'a> {
        pub kind: RelationKind,
        pub cursor: Cow<'a, str>,
        pub limit: u16,
    }
}

wire_struct! {
    /// One entry of a RELATION_PAGE.
    pub struct RelationEntry<'a> {
        pub user: Cow<'a, str>,
        pub since: u64,
        pub note: Cow<'a, str>,
    }
}

wire_struct! {
    /// RELATION_PAGE.
    pub struct RelationPage<'a> {
        pub kind: RelationKind,
        pub next_cursor: Cow<'a, str>,
        pub users: Vec<RelationEntry<'a>>,
    }
}

wire_struct! {
    /// PUSH_TOKEN, client → server: the sending device's token for offline push notifications
    /// (SPEC.md §7, Offline push); an empty `token` removes it.
    pub struct PushToken<'a> {
        pub platform: Cow<'a, str>,
        pub token: Cow<'a, str>,
    }
}

wire_struct! {
    /// MUTE, client → server: no offline push for `conv` until `until` (ms since the epoch; 0
    /// unmutes, u64::MAX mutes until unmuted).
    pub struct Mute<'a> {
        pub conv: Conv<'a>,
        pub until: u64,
    }
}

wire_struct! {
    /// GROUP_RECEIPTS, client → server: read receipts of messages of a group (SPEC.md, Groups,
    /// "Receipts").
    pub struct GroupReceipts<'a> {
        pub group: Cow<'a, str>,
        pub seqs: Vec<u64>,
        pub readers: bool,
    }
}

wire_struct! {
    /// How many members have read one message, and who when asked.
    pub struct ReadCount<'a> {
        pub conv_seq: u64,
        pub members: u64,
        pub read: u64,
        pub readers: Vec<Cow<'a, str>>,
    }
}

wire_struct! {
    /// GROUP_RECEIPTS_PAGE, the reply to GROUP_RECEIPTS.
    pub struct GroupReceiptsPage<'a> {
        pub group: Cow<'a, str>,
        pub diffusion: Diffusion,
        pub read_seq: u64,
        pub messages: Vec<ReadCount<'a>>,
    }
}

/// Declares [`Body`]: one variant per frame type, with its type code and body struct.
macro_rules! bodies {
    ($( $variant:ident($ty:ty) = $ft:ident ),* $(,)?) => {
        /// A frame body, tagged by frame type.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize))]
        #[cfg_attr(feature = "serde", serde(untagged))]
        pub enum Body<'a> {
            /// OK has no body.
            Ok,
            /// A SEND that carries mentions (frame type SEND).
            SendWithMentions(SendWithMentions<'a>),
            $( $variant($ty), )*
        }

        impl<'a> Body<'a> {
            pub fn frame_type(&self) -> FrameType {
                match self {
                    Body::Ok => FrameType::OK,
                    Body::SendWithMentions(_) => FrameType::SEND,
                    $( Body::$variant(_) => FrameType::$ft, )*
                }
            }

            pub(crate) fn put(&self, out: &mut Vec<u8>) {
                match self {
                    Body::Ok => {}
                    Body::SendWithMentions(b) => b.put(out),
                    $( Body::$variant(b) => b.put(out), )*
                }
            }

            /// Parses a body of a known type; `None` for a type this revision does not know.
            #[inline]
            pub(crate) fn get(ft: FrameType, r: &mut Reader<'a>) -> Option<Result<Self, BodyError>> {
                if ft == FrameType::SEND {
                    return Some(get_send(r));
                }
                Some(match ft {
                    FrameType::OK => Ok(Body::Ok),
                    $( FrameType::$ft => <$ty as Wire<'a>>::get(r).map(Body::$variant), )*
                    _ => return None,
                })
            }

            /// A random body of a random known type, for property tests.
            #[cfg(test)]
            pub(crate) fn arb(g: &mut crate::wire::arb::Gen) -> Body<'static> {
                use crate::wire::arb::Arb;
                let all = FrameType::KNOWN;
                let ft = all[g.below(all.len() as u64) as usize];
                if ft == FrameType::SEND && g.below(2) == 0 {
                    let mut m = <SendWithMentions<'static> as Arb>::arb(g);
                    if m.mentions.is_empty() {
                        m.mentions.push(Cow::Borrowed(""));
                    }
                    return Body::SendWithMentions(m);
                }
                match ft {
                    $( FrameType::$ft => Body::$variant(<$ty as Arb>::arb(g).into_owned()), )*
                    _ => Body::Ok,
                }
            }

            /// Detaches the body from the receive buffer.
            pub fn into_owned(self) -> Body<'static> {
                match self {
                    Body::Ok => Body::Ok,
                    Body::SendWithMentions(b) => Body::SendWithMentions(IntoOwned::into_owned(b)),
                    $( Body::$variant(b) => Body::$variant(IntoOwned::into_owned(b)), )*
                }
            }
        }
    };
}

bodies! {
    Hello(Hello<'a>) = HELLO,
    Welcome(Welcome<'a>) = WELCOME,
    Redirect(Redirect<'a>) = REDIRECT,
    Close(Close<'a>) = CLOSE,
    Ping(Ping) = PING,
    Pong(Ping) = PONG,
    Error(Error<'a>) = ERROR,
    Send(Send<'a>) = SEND,
    SendAck(SendAck) = SEND_ACK,
    Push(Message<'a>) = PUSH,
    PushAck(PushAck) = PUSH_ACK,
    Sync(Sync) = SYNC,
    SyncPage(SyncPage<'a>) = SYNC_PAGE,
    History(History<'a>) = HISTORY,
    HistoryPage(HistoryPage<'a>) = HISTORY_PAGE,
    Contacts(Contacts) = CONTACTS,
    ContactsPage(ContactsPage<'a>) = CONTACTS_PAGE,
    Read(Read<'a>) = READ,
    Receipt(Receipt<'a>) = RECEIPT,
    Recall(Recall<'a>) = RECALL,
    Typing(Typing<'a>) = TYPING,
    Presence(Presence<'a>) = PRESENCE,
    Subscribe(Subscribe<'a>) = SUBSCRIBE,
    GroupCreate(GroupCreate<'a>) = GROUP_CREATE,
    GroupUpdate(GroupUpdate<'a>) = GROUP_UPDATE,
    GroupMembers(GroupMembers<'a>) = GROUP_MEMBERS,
    GroupLeave(GroupRef<'a>) = GROUP_LEAVE,
    GroupTransfer(GroupTransfer<'a>) = GROUP_TRANSFER,
    GroupDisband(GroupRef<'a>) = GROUP_DISBAND,
    GroupList(ListRequest<'a>) = GROUP_LIST,
    GroupListPage(GroupListPage<'a>) = GROUP_LIST_PAGE,
    GroupGet(GroupRef<'a>) = GROUP_GET,
    GroupInfo(GroupInfo<'a>) = GROUP_INFO,
    GroupReceipts(GroupReceipts<'a>) = GROUP_RECEIPTS,
    GroupReceiptsPage(GroupReceiptsPage<'a>) = GROUP_RECEIPTS_PAGE,
    RoomJoin(RoomJoin<'a>) = ROOM_JOIN,
    RoomLeave(GroupRef<'a>) = ROOM_LEAVE,
    TopicSub(TopicSub<'a>) = TOPIC_SUB,
    TopicList(ListRequest<'a>) = TOPIC_LIST,
    TopicListPage(TopicListPage<'a>) = TOPIC_LIST_PAGE,
    Relation(Relation<'a>) = RELATION,
    RelationList(RelationList<'a>) = RELATION_LIST,
    RelationPage(RelationPage<'a>) = RELATION_PAGE,
    PushToken(PushToken<'a>) = PUSH_TOKEN,
    Mute(Mute<'a>) = MUTE,
}
