//! The catalogue behind `protocol-spec/vectors/`: every frame type as a valid vector, plus
//! invalid inputs with the ERROR code each must produce (SPEC.md §10). The files are generated
//! from this catalogue (`TERN_BLESS=1 cargo test -p tern-protocol --test vectors`) and the codec
//! tests check that files, catalogue and codec agree. The dump tool reads the same files.

use std::borrow::Cow;

use crate::codec::{decode, frame_crc, Frame, HEADER_LEN};
use crate::frames::*;
use crate::types::*;

/// What decoding a vector must give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The bytes are exactly this frame.
    Frame(Frame<'static>),
    /// Decoding fails with this code. `TRUNCATED` means the decoder keeps asking for more bytes
    /// and the input ends inside the frame.
    Error(ErrorCode),
}

/// One test vector.
#[derive(Debug, Clone)]
pub struct Vector {
    pub name: &'static str,
    pub description: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

/// What decoding a whole byte string gives, as the vectors state it.
pub fn outcome(bytes: &[u8], max_body: u32) -> Result<Frame<'_>, ErrorCode> {
    match decode(bytes, max_body) {
        Ok(Some((f, used))) if used == bytes.len() => Ok(f),
        // A vector holds exactly one frame; extra bytes would be the start of another one.
        Ok(Some(_)) => Err(ErrorCode::BAD_FRAME),
        Ok(None) => Err(ErrorCode::TRUNCATED),
        Err(e) => Err(e.code()),
    }
}

fn s(v: &'static str) -> Cow<'static, str> {
    Cow::Borrowed(v)
}

fn id(n: u8) -> MsgId {
    let mut a = [0u8; 16];
    for (i, b) in a.iter_mut().enumerate() {
        *b = n.wrapping_mul(16).wrapping_add(i as u8);
    }
    MsgId(a)
}

fn msg(conv: Conv<'static>, conv_seq: u64, inbox_seq: u64, text: &'static str) -> Message<'static> {
    Message {
        conv,
        sender: s("alice"),
        sender_device: s("phone"),
        conv_seq,
        inbox_seq,
        msg_id: id(conv_seq as u8),
        time: 1_767_225_600_000 + conv_seq * 1000,
        kind: MessageKind::TEXT,
        flags: MessageFlags::NONE,
        body: Cow::Borrowed(text.as_bytes()),
    }
}

/// The valid frames of the catalogue, one or more per frame type.
pub fn valid_frames() -> Vec<(&'static str, &'static str, Frame<'static>)> {
    let f = |rid: u32, body: Body<'static>| Frame::new(rid, body);
    let bob = || Conv::direct("bob");
    let text_100 = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.";
    vec![
        (
            "hello",
            "HELLO with a JWT, device id and resume position",
            f(
                1,
                Body::Hello(Hello {
                    protocol: 1,
                    capabilities: Capabilities(
                        Capabilities::RECEIPTS.0
                            | Capabilities::TYPING.0
                            | Capabilities::PRESENCE.0,
                    ),
                    max_frame: 65_536,
                    token: s("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"),
                    device: s("phone"),
                    resume_inbox_seq: 41,
                    client: s("tern-sdk-rust/0.1"),
                }),
            ),
        ),
        (
            "welcome",
            "WELCOME answering request 1",
            f(
                1,
                Body::Welcome(Welcome {
                    protocol: 1,
                    capabilities: Capabilities(Capabilities::RECEIPTS.0 | Capabilities::TYPING.0),
                    max_frame: 1_048_576,
                    heartbeat_secs: 30,
                    idle_timeout_secs: 90,
                    user: s("alice"),
                    session_id: 0x1234_5678_9abc,
                    server_time: 1_767_225_600_000,
                    inbox_head: 57,
                    node: s("node-a"),
                }),
            ),
        ),
        (
            "redirect",
            "REDIRECT to the owner node over two transports",
            f(
                1,
                Body::Redirect(Redirect {
                    epoch: 7,
                    addrs: vec![
                        Addr {
                            transport: Transport::NATIVE,
                            addr: s("10.0.0.2:14000"),
                        },
                        Addr {
                            transport: Transport::TLS,
                            addr: s("im.example.com:443"),
                        },
                    ],
                }),
            ),
        ),
        (
            "close",
            "CLOSE for drain, retry after 5 s",
            f(
                0,
                Body::Close(Close {
                    reason: CloseReason::DRAIN,
                    retry_after_ms: 5000,
                    message: s("node draining"),
                }),
            ),
        ),
        (
            "ping",
            "PING carrying the sender's clock",
            f(9, Body::Ping(Ping { time: 123_456 })),
        ),
        (
            "pong",
            "PONG echoing it",
            f(9, Body::Pong(Ping { time: 123_456 })),
        ),
        (
            "error",
            "ERROR: not allowed, connection stays",
            f(
                12,
                Body::Error(Error {
                    code: ErrorCode::FORBIDDEN,
                    message: s("not a member of group g1"),
                }),
            ),
        ),
        (
            "error_unavailable",
            "ERROR: the recipient is owned by another node that cannot be reached; retry later",
            f(
                14,
                Body::Error(Error {
                    code: ErrorCode::UNAVAILABLE,
                    message: s("user bob is served by node-b"),
                }),
            ),
        ),
        (
            "error_not_friend",
            "ERROR: the recipient accepts messages from friends only",
            f(
                15,
                Body::Error(Error {
                    code: ErrorCode::NOT_FRIEND,
                    message: s("bob accepts messages from friends only"),
                }),
            ),
        ),
        (
            "error_content_rejected",
            "ERROR: the operator's content filter refuses the message; nothing was stored",
            f(
                16,
                Body::Error(Error {
                    code: ErrorCode::CONTENT_REJECTED,
                    message: s("the message contains a filtered word"),
                }),
            ),
        ),
        (
            "error_no_quorum",
            "ERROR: the node is cut off from a majority of the cluster and takes no writes",
            f(
                17,
                Body::Error(Error {
                    code: ErrorCode::NO_QUORUM,
                    message: s("this node sees 2 of 5 members; writes need 3"),
                }),
            ),
        ),
        ("ok", "OK answering request 13", f(13, Body::Ok)),
        (
            "send_text",
            "SEND of a 100-byte text to bob",
            f(
                2,
                Body::Send(Send {
                    to: bob(),
                    msg_id: id(1),
                    kind: MessageKind::TEXT,
                    body: Cow::Borrowed(text_100.as_bytes()),
                }),
            ),
        ),
        (
            "send_retransmit",
            "SEND marked as a retransmission (flag bit 0)",
            Frame {
                request_id: 2,
                flags: Flags::RETRANSMIT,
                body: Body::Send(Send {
                    to: bob(),
                    msg_id: id(1),
                    kind: MessageKind::TEXT,
                    body: Cow::Borrowed(b"hi"),
                }),
            },
        ),
        (
            "send_ack",
            "SEND_ACK: conversation seq 300, sender inbox seq 58",
            f(
                2,
                Body::SendAck(SendAck {
                    msg_id: id(1),
                    conv_seq: 300,
                    inbox_seq: 58,
                    time: 1_767_225_600_123,
                }),
            ),
        ),
        (
            "push",
            "PUSH of a text from alice to bob's device",
            f(
                0,
                Body::Push(msg(Conv::direct("alice"), 300, 77, "héllo ☃")),
            ),
        ),
        (
            "push_ack",
            "PUSH_ACK up to inbox seq 77",
            f(3, Body::PushAck(PushAck { inbox_seq: 77 })),
        ),
        (
            "sync",
            "SYNC after inbox seq 41, 100 per page",
            f(
                4,
                Body::Sync(Sync {
                    after_inbox_seq: 41,
                    limit: 100,
                }),
            ),
        ),
        (
            "sync_page",
            "SYNC_PAGE with two messages and more to come",
            f(
                4,
                Body::SyncPage(SyncPage {
                    head: 57,
                    more: true,
                    messages: vec![
                        msg(Conv::direct("alice"), 5, 42, "one"),
                        msg(Conv::group("g1"), 9, 43, "two"),
                    ],
                }),
            ),
        ),
        (
            "history",
            "HISTORY: 20 messages with bob before seq 300",
            f(
                5,
                Body::History(History {
                    conv: bob(),
                    direction: Direction::BEFORE,
                    seq: 300,
                    limit: 20,
                }),
            ),
        ),
        (
            "history_page",
            "HISTORY_PAGE with one recalled message",
            f(
                5,
                Body::HistoryPage(HistoryPage {
                    conv: bob(),
                    more: false,
                    messages: vec![Message {
                        flags: MessageFlags::RECALLED,
                        body: Cow::Borrowed(b""),
                        ..msg(bob(), 299, 0, "")
                    }],
                }),
            ),
        ),
        (
            "contacts",
            "CONTACTS: the 50 most recent",
            f(
                6,
                Body::Contacts(Contacts {
                    before_time: 0,
                    limit: 50,
                }),
            ),
        ),
        (
            "contacts_page",
            "CONTACTS_PAGE with one conversation and 3 unread",
            f(
                6,
                Body::ContactsPage(ContactsPage {
                    total_unread: 3,
                    more: false,
                    entries: vec![Contact {
                        conv: bob(),
                        unread: 3,
                        read_seq: 297,
                        mentioned: false,
                        time: 1_767_225_900_000,
                        last: Some(msg(bob(), 300, 0, "see you")),
                    }],
                }),
            ),
        ),
        (
            "read",
            "READ up to conversation seq 300",
            f(
                7,
                Body::Read(Read {
                    conv: bob(),
                    conv_seq: 300,
                }),
            ),
        ),
        (
            "receipt",
            "RECEIPT: bob read up to 300",
            f(
                0,
                Body::Receipt(Receipt {
                    conv: bob(),
                    user: s("bob"),
                    kind: ReceiptKind::READ,
                    conv_seq: 300,
                    time: 1_767_225_901_000,
                }),
            ),
        ),
        (
            "recall",
            "RECALL of seq 300",
            f(
                8,
                Body::Recall(Recall {
                    conv: bob(),
                    conv_seq: 300,
                    msg_id: id(2),
                }),
            ),
        ),
        (
            "typing",
            "TYPING from a client (user left empty)",
            f(
                0,
                Body::Typing(Typing {
                    conv: bob(),
                    user: s(""),
                    state: TypingState::TYPING,
                }),
            ),
        ),
        (
            "presence",
            "PRESENCE: bob is busy",
            f(
                0,
                Body::Presence(Presence {
                    user: s("bob"),
                    status: PresenceStatus::BUSY,
                    last_seen: 1_767_225_000_000,
                    text: s("in a meeting"),
                }),
            ),
        ),
        (
            "presence_set",
            "PRESENCE from a client: the user is busy, with a status text; OK answers it (request id 11)",
            f(
                11,
                Body::Presence(Presence {
                    user: s(""),
                    status: PresenceStatus::BUSY,
                    last_seen: 0,
                    text: s("in a meeting"),
                }),
            ),
        ),
        (
            "subscribe",
            "SUBSCRIBE to two users' presence",
            f(
                10,
                Body::Subscribe(Subscribe {
                    op: SubOp::ADD,
                    users: vec![s("bob"), s("carol")],
                }),
            ),
        ),
        (
            "group_create",
            "GROUP_CREATE with two members",
            f(
                20,
                Body::GroupCreate(GroupCreate {
                    name: s("hiking"),
                    members: vec![s("bob"), s("carol")],
                }),
            ),
        ),
        (
            "group_update",
            "GROUP_UPDATE changing the announcement only",
            f(
                21,
                Body::GroupUpdate(GroupUpdate {
                    group: s("g1"),
                    name: None,
                    announcement: Some(s("Saturday 8:00")),
                    avatar: None,
                }),
            ),
        ),
        (
            "group_members",
            "GROUP_MEMBERS: mute carol until a time",
            f(
                22,
                Body::GroupMembers(GroupMembers {
                    group: s("g1"),
                    op: MemberOp::MUTE,
                    users: vec![s("carol")],
                    arg: 1_767_300_000_000,
                }),
            ),
        ),
        (
            "group_leave",
            "GROUP_LEAVE",
            f(23, Body::GroupLeave(GroupRef { group: s("g1") })),
        ),
        (
            "group_transfer",
            "GROUP_TRANSFER to bob",
            f(
                24,
                Body::GroupTransfer(GroupTransfer {
                    group: s("g1"),
                    owner: s("bob"),
                }),
            ),
        ),
        (
            "group_disband",
            "GROUP_DISBAND",
            f(25, Body::GroupDisband(GroupRef { group: s("g1") })),
        ),
        (
            "group_list",
            "GROUP_LIST first page",
            f(
                26,
                Body::GroupList(ListRequest {
                    cursor: s(""),
                    limit: 100,
                }),
            ),
        ),
        (
            "group_list_page",
            "GROUP_LIST_PAGE, last page",
            f(
                26,
                Body::GroupListPage(GroupListPage {
                    next_cursor: s(""),
                    groups: vec![GroupSummary {
                        group: s("g1"),
                        name: s("hiking"),
                        members: 3,
                    }],
                }),
            ),
        ),
        (
            "group_get",
            "GROUP_GET",
            f(27, Body::GroupGet(GroupRef { group: s("g1") })),
        ),
        (
            "group_info",
            "GROUP_INFO with owner and a muted member",
            f(
                27,
                Body::GroupInfo(GroupInfo {
                    group: s("g1"),
                    name: s("hiking"),
                    announcement: s("Saturday 8:00"),
                    avatar: s("media:abc123"),
                    owner: s("alice"),
                    member_count: 2,
                    members: vec![
                        GroupMember {
                            user: s("alice"),
                            role: Role::OWNER,
                            muted_until: 0,
                        },
                        GroupMember {
                            user: s("carol"),
                            role: Role::MEMBER,
                            muted_until: 1_767_300_000_000,
                        },
                    ],
                }),
            ),
        ),
        (
            "group_receipts",
            "GROUP_RECEIPTS: who has read message 41 of g1",
            f(
                28,
                Body::GroupReceipts(GroupReceipts {
                    group: s("g1"),
                    seqs: vec![41],
                    readers: true,
                }),
            ),
        ),
        (
            "group_receipts_page",
            "GROUP_RECEIPTS_PAGE: message 41 read by 1 of 2 (carol); the asker has read up to 42",
            f(
                28,
                Body::GroupReceiptsPage(GroupReceiptsPage {
                    group: s("g1"),
                    diffusion: Diffusion::WRITE,
                    read_seq: 42,
                    messages: vec![ReadCount {
                        conv_seq: 41,
                        members: 2,
                        read: 1,
                        readers: vec![s("carol")],
                    }],
                }),
            ),
        ),
        (
            "send_mentions",
            "SEND to group g1 mentioning carol and everyone (@all, the empty string)",
            f(
                29,
                Body::SendWithMentions(SendWithMentions {
                    to: Conv::group("g1"),
                    msg_id: id(7),
                    kind: MessageKind::TEXT,
                    body: Cow::Borrowed(b"@carol @all lunch?"),
                    mentions: vec![s("carol"), s("")],
                }),
            ),
        ),
        (
            "room_join",
            "ROOM_JOIN asking for the last 50 messages",
            f(
                30,
                Body::RoomJoin(RoomJoin {
                    room: s("lobby"),
                    recent: 50,
                }),
            ),
        ),
        (
            "room_leave",
            "ROOM_LEAVE",
            f(31, Body::RoomLeave(GroupRef { group: s("lobby") })),
        ),
        (
            "topic_sub",
            "TOPIC_SUB subscribe",
            f(
                32,
                Body::TopicSub(TopicSub {
                    op: SubOp::ADD,
                    topic: s("news"),
                }),
            ),
        ),
        (
            "topic_unsub",
            "TOPIC_SUB unsubscribe",
            f(
                33,
                Body::TopicSub(TopicSub {
                    op: SubOp::REMOVE,
                    topic: s("news"),
                }),
            ),
        ),
        (
            "topic_list",
            "TOPIC_LIST first page, server default size",
            f(
                34,
                Body::TopicList(ListRequest {
                    cursor: s(""),
                    limit: 0,
                }),
            ),
        ),
        (
            "topic_list_page",
            "TOPIC_LIST_PAGE with two subscriptions and a next cursor",
            f(
                34,
                Body::TopicListPage(TopicListPage {
                    next_cursor: s("sports"),
                    topics: vec![
                        TopicSummary {
                            topic: s("news"),
                            subscribers: 1200,
                            last_seq: 300,
                            read_seq: 298,
                        },
                        TopicSummary {
                            topic: s("sports"),
                            subscribers: 7,
                            last_seq: 0,
                            read_seq: 0,
                        },
                    ],
                }),
            ),
        ),
        (
            "send_topic",
            "SEND to a topic",
            f(
                35,
                Body::Send(Send {
                    to: Conv {
                        kind: ConvKind::TOPIC,
                        id: s("news"),
                    },
                    msg_id: id(9),
                    kind: MessageKind::TEXT,
                    body: Cow::Borrowed(b"rates unchanged"),
                }),
            ),
        ),
        (
            "relation",
            "RELATION: friend request with a note",
            f(
                40,
                Body::Relation(Relation {
                    op: RelationOp::FRIEND_REQUEST,
                    user: s("bob"),
                    note: s("we met at the conference"),
                }),
            ),
        ),
        (
            "relation_decline",
            "RELATION: decline bob's friend request",
            f(
                42,
                Body::Relation(Relation {
                    op: RelationOp::FRIEND_DECLINE,
                    user: s("bob"),
                    note: s(""),
                }),
            ),
        ),
        (
            "relation_friends_only",
            "RELATION: accept messages from friends only (no user)",
            f(
                43,
                Body::Relation(Relation {
                    op: RelationOp::SET_FRIENDS_ONLY,
                    user: s(""),
                    note: s(""),
                }),
            ),
        ),
        (
            "relation_notice",
            "RELATION from the server: alice asks to be friends",
            f(
                0,
                Body::Relation(Relation {
                    op: RelationOp::FRIEND_REQUEST,
                    user: s("alice"),
                    note: s("hi, it's alice"),
                }),
            ),
        ),
        (
            "relation_list",
            "RELATION_LIST of friends",
            f(
                41,
                Body::RelationList(RelationList {
                    kind: RelationKind::FRIENDS,
                    cursor: s(""),
                    limit: 100,
                }),
            ),
        ),
        (
            "relation_page",
            "RELATION_PAGE with one friend and a next cursor",
            f(
                41,
                Body::RelationPage(RelationPage {
                    kind: RelationKind::FRIENDS,
                    next_cursor: s("bob"),
                    users: vec![RelationEntry {
                        user: s("bob"),
                        since: 1_767_000_000_000,
                        note: s(""),
                    }],
                }),
            ),
        ),
        (
            "relation_page_pending",
            "RELATION_PAGE of pending requests, the last page, with the request's note",
            f(
                44,
                Body::RelationPage(RelationPage {
                    kind: RelationKind::PENDING,
                    next_cursor: s(""),
                    users: vec![RelationEntry {
                        user: s("carol"),
                        since: 1_767_000_100_000,
                        note: s("from the climbing club"),
                    }],
                }),
            ),
        ),
        (
            "push_token",
            "PUSH_TOKEN: the device registers its FCM token",
            f(
                40,
                Body::PushToken(PushToken {
                    platform: s("fcm"),
                    token: s("dGVzdC10b2tlbg"),
                }),
            ),
        ),
        (
            "push_token_remove",
            "PUSH_TOKEN with an empty token: the device removes its token",
            f(
                41,
                Body::PushToken(PushToken {
                    platform: s(""),
                    token: s(""),
                }),
            ),
        ),
        (
            "mute",
            "MUTE the conversation with bob until 2026-01-01T01:00Z",
            f(
                42,
                Body::Mute(Mute {
                    conv: bob(),
                    until: 1_767_229_200_000,
                }),
            ),
        ),
    ]
}

/// Re-seals a hand-made frame with a correct CRC, so that only the intended defect remains.
fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let crc = frame_crc(&b[..12], &b[HEADER_LEN..]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

fn encoded(frame: &Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    // Catalogue frames are small; encoding cannot exceed the 24-bit limit.
    if frame.encode(&mut v).is_err() {
        v.clear();
    }
    v
}

/// The whole catalogue: valid vectors, then invalid ones.
pub fn catalogue() -> Vec<Vector> {
    let mut out: Vec<Vector> = valid_frames()
        .into_iter()
        .map(|(name, description, frame)| Vector {
            name,
            description,
            bytes: encoded(&frame),
            expect: Expect::Frame(frame),
        })
        .collect();

    let ping = encoded(&Frame::new(9, Body::Ping(Ping { time: 5 })));
    let send = out
        .iter()
        .find(|v| v.name == "send_text")
        .map(|v| v.bytes.clone())
        .unwrap_or_default();

    // Forward compatibility: a PING with a field appended by a later revision decodes as PING.
    let mut trailing = ping.clone();
    trailing.extend_from_slice(&[0x2a, 0x00, 0x07]);
    trailing[5] += 3;
    out.push(Vector {
        name: "ping_trailing_field",
        description: "PING with 3 trailing bytes from a newer revision: they are ignored",
        bytes: reseal(trailing),
        expect: Expect::Frame(Frame::new(9, Body::Ping(Ping { time: 5 }))),
    });
    let mut ignorable = ping.clone();
    ignorable[4] = 0x08;
    out.push(Vector {
        name: "ping_unknown_ignorable_flag",
        description: "PING with unknown flag bit 3 (ignorable): accepted, flag kept",
        bytes: reseal(ignorable),
        expect: Expect::Frame(Frame {
            request_id: 9,
            flags: Flags(0x08),
            body: Body::Ping(Ping { time: 5 }),
        }),
    });

    let mut bad = |name, description, bytes: Vec<u8>, code| {
        out.push(Vector {
            name,
            description,
            bytes,
            expect: Expect::Error(code),
        })
    };
    let mut crc = send.clone();
    let last = crc.len() - 1;
    crc[last] ^= 0x01;
    bad(
        "invalid_bad_crc",
        "SEND with its last body byte flipped",
        crc,
        ErrorCode::BAD_CRC,
    );
    bad(
        "invalid_truncated_header",
        "the first 10 bytes of a SEND header",
        send[..10].to_vec(),
        ErrorCode::TRUNCATED,
    );
    bad(
        "invalid_truncated_body",
        "a SEND cut 20 bytes before its end",
        send[..send.len() - 20].to_vec(),
        ErrorCode::TRUNCATED,
    );
    let mut big = ping.clone();
    big[5..8].copy_from_slice(&[0x01, 0x00, 0x01]);
    bad(
        "invalid_oversize_length",
        "a header announcing a 65537-byte body (limit 65536)",
        big,
        ErrorCode::FRAME_TOO_LARGE,
    );
    let mut unknown = ping.clone();
    unknown[3] = 0x7f;
    bad(
        "invalid_unknown_type",
        "frame type 0x7f",
        reseal(unknown),
        ErrorCode::UNKNOWN_FRAME_TYPE,
    );
    let mut version = ping.clone();
    version[2] = 2;
    bad(
        "invalid_unsupported_version",
        "header version 2",
        reseal(version),
        ErrorCode::UNSUPPORTED_VERSION,
    );
    bad(
        "invalid_garbage",
        "an HTTP request line sent to the native port",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ErrorCode::BAD_MAGIC,
    );
    let mut flags = ping.clone();
    flags[4] = 0x10;
    bad(
        "invalid_critical_flag",
        "PING with unknown critical flag bit 4",
        reseal(flags),
        ErrorCode::UNSUPPORTED_FLAGS,
    );
    let mut utf8 = encoded(&Frame::new(9, Body::GroupGet(GroupRef { group: s("ab") })));
    utf8[HEADER_LEN + 1] = 0xff;
    bad(
        "invalid_bad_utf8",
        "GROUP_GET whose group id is not UTF-8",
        reseal(utf8),
        ErrorCode::BAD_FRAME,
    );
    let mut varint = ping.clone();
    varint[HEADER_LEN] = 0x85;
    varint.push(0x00);
    varint[5] += 1;
    bad(
        "invalid_nonminimal_varint",
        "PING whose time is the non-minimal varint 85 00",
        reseal(varint),
        ErrorCode::BAD_FRAME,
    );
    let short = {
        let mut v = ping.clone();
        v.truncate(HEADER_LEN);
        v[5] = 0;
        reseal(v)
    };
    bad(
        "invalid_missing_field",
        "PING with an empty body",
        short,
        ErrorCode::BAD_FRAME,
    );
    let mut boolean = encoded(&Frame::new(
        4,
        Body::SyncPage(SyncPage {
            head: 1,
            more: false,
            messages: vec![],
        }),
    ));
    boolean[HEADER_LEN + 1] = 2;
    bad(
        "invalid_bool",
        "SYNC_PAGE whose `more` is 2",
        reseal(boolean),
        ErrorCode::BAD_FRAME,
    );
    out
}

/// Renders a vector file: comment lines, then the bytes as hex, 16 per line.
pub fn render_file(v: &Vector) -> String {
    let mut t = String::new();
    t.push_str("# tern protocol v1 test vector (generated from protocol-spec/src/vectors.rs)\n");
    t.push_str(&format!("# name: {}\n# about: {}\n", v.name, v.description));
    match &v.expect {
        Expect::Frame(f) => {
            t.push_str(&format!("# expect: ok {}\n", f.frame_type()));
            for line in format!("{:?}", f.body).lines() {
                t.push_str(&format!(
                    "# frame: request_id={} flags={:#04x} {}\n",
                    f.request_id, f.flags.0, line
                ));
            }
        }
        Expect::Error(c) => t.push_str(&format!("# expect: error {} ({})\n", c, c.0)),
    }
    for chunk in v.bytes.chunks(16) {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        t.push_str(&hex.join(" "));
        t.push('\n');
    }
    t
}

/// Why a hex text could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HexError {
    #[error("line {line}: {source}")]
    Bad {
        line: usize,
        source: hex::FromHexError,
    },
}

/// Reads hex with `#` comments and any whitespace, the format of the vector files.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, HexError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let data = line.split('#').next().unwrap_or("");
        let compact: String = data.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = hex::decode(&compact).map_err(|source| HexError::Bad {
            line: i + 1,
            source,
        })?;
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}
