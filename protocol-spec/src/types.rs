//! Named wire values (SPEC.md §4–§9): frame types, flags, error codes, close reasons, message
//! kinds and the other enumerations, each a newtype over its wire integer so that values this
//! revision does not name still decode, print and round-trip.

use std::borrow::Cow;

use crate::wire::{wire_enum, wire_struct, BodyError, IntoOwned, Reader, Wire};

wire_enum! {
    /// Frame type, header byte 3 (SPEC.md §5).
    pub struct FrameType(u8) {
        HELLO = 0x01, WELCOME = 0x02, REDIRECT = 0x03, CLOSE = 0x04, PING = 0x05, PONG = 0x06,
        ERROR = 0x07, OK = 0x08,
        SEND = 0x10, SEND_ACK = 0x11, PUSH = 0x12, PUSH_ACK = 0x13, SYNC = 0x14, SYNC_PAGE = 0x15,
        HISTORY = 0x16, HISTORY_PAGE = 0x17, CONTACTS = 0x18, CONTACTS_PAGE = 0x19, READ = 0x1A,
        RECEIPT = 0x1B, RECALL = 0x1C, TYPING = 0x1D, PRESENCE = 0x1E, SUBSCRIBE = 0x1F,
        GROUP_CREATE = 0x30, GROUP_UPDATE = 0x31, GROUP_MEMBERS = 0x32, GROUP_LEAVE = 0x33,
        GROUP_TRANSFER = 0x34, GROUP_DISBAND = 0x35, GROUP_LIST = 0x36, GROUP_LIST_PAGE = 0x37,
        GROUP_GET = 0x38, GROUP_INFO = 0x39, GROUP_RECEIPTS = 0x3A, GROUP_RECEIPTS_PAGE = 0x3B,
        ROOM_JOIN = 0x40, ROOM_LEAVE = 0x41, TOPIC_SUB = 0x42, TOPIC_LIST = 0x43,
        TOPIC_LIST_PAGE = 0x44,
        RELATION = 0x48, RELATION_LIST = 0x49, RELATION_PAGE = 0x4A,
        PUSH_TOKEN = 0x50, MUTE = 0x51,
    }
}

wire_enum! {
    /// Header flags, byte 4 (SPEC.md §2.3). Bits 0–3 may be ignored by a receiver that does not
    /// know them; bits 4–7 are critical and make an unknowing receiver reject the frame.
    pub struct Flags(u8) {
        NONE = 0x00,
        /// The sender is retransmitting a request it sent before (same request and message id).
        RETRANSMIT = 0x01,
    }
}

impl Flags {
    /// Bits this revision defines.
    pub const DEFINED: u8 = 0x01;
    /// Bits a receiver must understand.
    pub const CRITICAL_MASK: u8 = 0xF0;

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Critical bits set that this revision does not define.
    pub fn unknown_critical(self) -> u8 {
        self.0 & Self::CRITICAL_MASK & !Self::DEFINED
    }
}

wire_enum! {
    /// ERROR frame code (SPEC.md §8).
    pub struct ErrorCode(u16) {
        BAD_FRAME = 1, BAD_CRC = 2, FRAME_TOO_LARGE = 3, UNKNOWN_FRAME_TYPE = 4,
        UNSUPPORTED_VERSION = 5, BAD_MAGIC = 6, UNSUPPORTED_FLAGS = 7, UNEXPECTED_FRAME = 8,
        TRUNCATED = 9,
        AUTH_INVALID = 100, AUTH_EXPIRED = 101, HANDSHAKE_TIMEOUT = 102,
        RATE_LIMITED = 200, OVERLOADED = 201, NOT_FOUND = 202, FORBIDDEN = 203,
        INVALID_ARGUMENT = 204, BLOCKED = 205, RECALL_EXPIRED = 206, LIMIT_EXCEEDED = 207,
        UNAVAILABLE = 208, NOT_FRIEND = 209, CONTENT_REJECTED = 210, NO_QUORUM = 211,
        INTERNAL = 500, SHUTTING_DOWN = 503,
    }
}

impl ErrorCode {
    //= SPEC.md#error-codes
    //# Codes 1 to 199 and 503 close the connection; every other code leaves it open.
    pub fn closes_connection(self) -> bool {
        (1..200).contains(&self.0) || self == ErrorCode::SHUTTING_DOWN
    }
}

wire_enum! {
    /// CLOSE reason (SPEC.md §6.4).
    pub struct CloseReason(u8) {
        NORMAL = 0, DRAIN = 1, REDIRECT = 2, AUTH_EXPIRED = 3, OVERLOAD = 4, IDLE_TIMEOUT = 5,
        SLOW_CONSUMER = 6, REPLACED = 7, PROTOCOL_ERROR = 8, SHUTDOWN = 9,
    }
}

wire_enum! {
    /// Capability bits negotiated in HELLO/WELCOME (SPEC.md §6.1).
    pub struct Capabilities(u32) {
        NONE = 0, RECEIPTS = 1, DELIVERY_RECEIPTS = 2, TYPING = 4, PRESENCE = 8, GROUPS = 16,
        ROOMS = 32, TOPICS = 64, RELATIONS = 128, PUSH = 256,
    }
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities(0x1FF);

    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersect(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }
}

wire_enum! {
    /// Kind of conversation (SPEC.md §4).
    pub struct ConvKind(u8) { DIRECT = 1, GROUP = 2, ROOM = 3, TOPIC = 4 }
}

wire_enum! {
    /// Message kind (SPEC.md §6.6). Media kinds carry a reference to a file uploaded elsewhere.
    pub struct MessageKind(u8) {
        TEXT = 1, EMOJI = 2, IMAGE = 3, AUDIO = 4, VIDEO = 5, FILE = 6, LOCATION = 7, CUSTOM = 8,
        RECALL = 0x40, GROUP_EVENT = 0x41,
    }
}

wire_enum! {
    /// Per-message flags.
    pub struct MessageFlags(u8) { NONE = 0, RECALLED = 1 }
}

wire_enum! {
    /// Transport named in a REDIRECT address.
    pub struct Transport(u8) { NATIVE = 1, TLS = 2, HTTP_TUNNEL = 3, WEBSOCKET = 4 }
}

wire_enum! {
    /// HISTORY direction relative to the anchor sequence.
    pub struct Direction(u8) { BEFORE = 1, AFTER = 2 }
}

wire_enum! {
    /// RECEIPT kind.
    pub struct ReceiptKind(u8) { DELIVERED = 1, READ = 2 }
}

wire_enum! {
    /// TYPING state.
    pub struct TypingState(u8) { STOPPED = 0, TYPING = 1 }
}

wire_enum! {
    /// PRESENCE status.
    pub struct PresenceStatus(u8) { OFFLINE = 0, ONLINE = 1, AWAY = 2, BUSY = 3 }
}

wire_enum! {
    /// SUBSCRIBE and TOPIC_SUB operation.
    pub struct SubOp(u8) { ADD = 1, REMOVE = 2 }
}

wire_enum! {
    /// GROUP_MEMBERS operation.
    pub struct MemberOp(u8) { ADD = 1, REMOVE = 2, MUTE = 3, UNMUTE = 4, SET_ROLE = 5 }
}

wire_enum! {
    /// How a group delivers its messages (SPEC.md, Groups, "Diffusion").
    pub struct Diffusion(u8) { WRITE = 1, READ = 2 }
}

wire_enum! {
    /// Role of a group member.
    pub struct Role(u8) { MEMBER = 0, ADMIN = 1, OWNER = 2 }
}

wire_enum! {
    /// RELATION operation.
    pub struct RelationOp(u8) {
        FOLLOW = 1, UNFOLLOW = 2, FRIEND_REQUEST = 3, FRIEND_ACCEPT = 4, UNFRIEND = 5, BLOCK = 6,
        UNBLOCK = 7, FRIEND_DECLINE = 8, SET_FRIENDS_ONLY = 9, CLEAR_FRIENDS_ONLY = 10,
    }
}

wire_enum! {
    /// RELATION_LIST kind.
    pub struct RelationKind(u8) {
        FOLLOWING = 1, FOLLOWERS = 2, FRIENDS = 3, BLOCKED = 4, PENDING = 5, REQUESTED = 6,
    }
}

/// Client message id: 16 bytes chosen by the sending client, the key of de-duplication.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MsgId(pub [u8; 16]);

impl std::fmt::Debug for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl<'a> Wire<'a> for MsgId {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
    #[inline]
    fn get(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        Ok(MsgId(r.array()?))
    }
}

impl IntoOwned for MsgId {
    type Owned = MsgId;
    fn into_owned(self) -> MsgId {
        self
    }
}

wire_struct! {
    /// A conversation as seen by one user (SPEC.md §4): for DIRECT the id is the other user.
    pub struct Conv<'a> {
        pub kind: ConvKind,
        pub id: Cow<'a, str>,
    }
}

impl<'a> Conv<'a> {
    pub fn direct(peer: impl Into<Cow<'a, str>>) -> Self {
        Conv {
            kind: ConvKind::DIRECT,
            id: peer.into(),
        }
    }

    pub fn group(id: impl Into<Cow<'a, str>>) -> Self {
        Conv {
            kind: ConvKind::GROUP,
            id: id.into(),
        }
    }
}

impl std::fmt::Display for Conv<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind.name() {
            Some(n) => write!(f, "{}:{}", n.to_ascii_lowercase(), self.id),
            None => write!(f, "{}:{}", self.kind.0, self.id),
        }
    }
}
