//! What callers hand to the store and what they get back: owned, thread-crossing values (the
//! stored form lives in `records`).

use std::fmt;

use crate::ids::{
    named_u8, ClientMsgId, ConvKey, DeviceId, GroupId, MessageFlags, MessageKind, Seq, UserId,
};

/// A one-to-one message to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectMessage {
    /// Who sends it.
    pub sender: UserId,
    /// From which device.
    pub sender_device: DeviceId,
    /// To whom (may equal `sender`: a note to self).
    pub recipient: UserId,
    /// The client's id for de-duplication of retransmissions.
    pub client_msg_id: ClientMsgId,
    /// Content kind; must not be an event kind.
    pub kind: MessageKind,
    /// Opaque body (media travel as references).
    pub body: Vec<u8>,
}

/// What appending a message assigned. A retransmission gets the original assignment back with
/// `duplicate: true`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The conversation's canonical key.
    pub conv: ConvKey,
    /// Position in the conversation's storage timeline.
    pub conv_seq: Seq,
    /// Position in the sender's inbox (their other devices sync from it).
    pub sender_inbox_seq: Seq,
    /// Position in the recipient's inbox (equal to `sender_inbox_seq` for a note to self).
    pub recipient_inbox_seq: Seq,
    /// Server time assigned, ms since the Unix epoch.
    pub time_ms: u64,
    /// Whether this was a retransmission of an already stored message (nothing was written).
    pub duplicate: bool,
}

/// A message as stored in a conversation's timeline.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Conversation.
    pub conv: ConvKey,
    /// Position in the conversation.
    pub seq: Seq,
    /// Sender.
    pub sender: UserId,
    /// Sender's device.
    pub sender_device: DeviceId,
    /// Client message id (all zeros for server-generated events).
    pub client_msg_id: ClientMsgId,
    /// Server time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Kind.
    pub kind: MessageKind,
    /// Flags (recalled, ...).
    pub flags: MessageFlags,
    /// Body.
    pub body: Vec<u8>,
}

impl fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredMessage")
            .field("conv", &self.conv)
            .field("seq", &self.seq)
            .field("sender", &self.sender)
            .field("sender_device", &self.sender_device)
            .field("client_msg_id", &self.client_msg_id)
            .field("time_ms", &self.time_ms)
            .field("kind", &self.kind)
            .field("flags", &self.flags)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// One entry of a user's inbox, joined with the message it refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxMessage {
    /// Position in the user's inbox.
    pub inbox_seq: Seq,
    /// The message.
    pub message: StoredMessage,
}

/// A device's positions in its user's inbox. Each only moves forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevicePosition {
    /// Last inbox seq handed to the device in a pull.
    pub pulled: Seq,
    /// Last inbox seq the device acknowledged receiving.
    pub acked: Seq,
    /// Last inbox seq the device reported as read.
    pub read: Seq,
    /// When this was last changed, ms since the Unix epoch.
    pub updated_ms: u64,
}

/// A position change for one device; `None` fields are left as they are, lower values than the
/// stored ones are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PositionUpdate {
    /// User.
    pub user: UserId,
    /// Device.
    pub device: DeviceId,
    /// New pulled position.
    pub pulled: Option<Seq>,
    /// New acked position.
    pub acked: Option<Seq>,
    /// New read position.
    pub read: Option<Seq>,
}

/// A device's position, as listed for a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePositionEntry {
    /// Device.
    pub device: DeviceId,
    /// Its positions.
    pub position: DevicePosition,
}

/// Marks a conversation read up to `up_to` (a conversation seq) for `user`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkRead {
    /// Reader.
    pub user: UserId,
    /// Conversation.
    pub conv: ConvKey,
    /// Last conversation seq read (clamped to the conversation's last seq).
    pub up_to: Seq,
}

/// A conversation's read state for one user after [`MarkRead`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// Read position in the conversation.
    pub read_seq: Seq,
    /// Unread messages left in the conversation.
    pub unread: u32,
    /// The user's unread total over all conversations.
    pub total_unread: u64,
    /// The read position before this READ (equal to `read_seq` when it moved nothing), so a
    /// caller can tell the senders of the messages it newly covers.
    pub previous_read_seq: Seq,
}

/// Recall of a message by its sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recall {
    /// Conversation.
    pub conv: ConvKey,
    /// The message to recall.
    pub seq: Seq,
    /// Who asks (must be the sender).
    pub by: UserId,
    /// From which device.
    pub by_device: DeviceId,
    /// The client's id for the recall event: a retransmission with the same id gets the first
    /// result back and changes nothing.
    pub client_msg_id: ClientMsgId,
    /// How old (ms) a message may be and still be recalled; 0: no limit.
    pub window_ms: u64,
}

/// What a recall wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecallResult {
    /// Conversation seq of the recall event appended to the timeline.
    pub event_seq: Seq,
    /// Server time of the event.
    pub time_ms: u64,
    /// Where the event went in the recaller's inbox.
    pub by_inbox_seq: Seq,
    /// Where it went in the other participant's inbox (equal to `by_inbox_seq` for a note to
    /// self).
    pub peer_inbox_seq: Seq,
    /// A retransmission of a recall already done (nothing was written).
    pub duplicate: bool,
}

/// One entry of a user's recent-conversation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentConversation {
    /// Conversation.
    pub conv: ConvKey,
    /// Last message (or event) in it.
    pub last_seq: Seq,
    /// Its time.
    pub last_time_ms: u64,
    /// The last message itself, when still stored.
    pub last_message: Option<StoredMessage>,
    /// Unread content messages from others.
    pub unread: u32,
    /// Read position.
    pub read_seq: Seq,
    /// Whether the user was mentioned since they last read it.
    pub mentioned: bool,
    /// Last change, ms since the Unix epoch.
    pub updated_ms: u64,
}

/// A user's recent conversations, most recently active first, and their unread total.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecentList {
    /// Conversations.
    pub conversations: Vec<RecentConversation>,
    /// Unread over all conversations (not only the listed ones).
    pub total_unread: u64,
}

/// A position in a user's recent-conversation list. The list is ordered by last activity, most
/// recent first, and by conversation key among conversations with the same time, so a position
/// needs both: paging by the time alone ("older than the last entry's time") skips the rest of a
/// tie whenever a page ends inside one, and several conversations often share a millisecond (one
/// batch stamps all its messages with one time).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecentCursor {
    /// Last activity of the position, ms since the Unix epoch.
    pub time_ms: u64,
    /// The conversation at the position; `None` stands past every conversation of `time_ms`, so
    /// a page after it starts with those strictly older (an exclusive time, as a client that only
    /// knows times asks).
    pub conv: Option<ConvKey>,
}

impl RecentCursor {
    /// The position of a listed conversation: a page after it continues right behind it. Pass
    /// the last entry of a page to get the next page.
    pub fn at(conversation: &RecentConversation) -> Self {
        RecentCursor {
            time_ms: conversation.last_time_ms,
            conv: Some(conversation.conv.clone()),
        }
    }

    /// The position past every conversation active at `time_ms` or later: a page after it holds
    /// the conversations strictly older than `time_ms`.
    pub fn before(time_ms: u64) -> Self {
        RecentCursor {
            time_ms,
            conv: None,
        }
    }
}

/// A page of a user's recent conversations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecentPage {
    /// Conversations after the requested position, most recently active first (then by
    /// conversation key).
    pub conversations: Vec<RecentConversation>,
    /// Unread over all conversations (not only the listed ones).
    pub total_unread: u64,
    /// Whether more conversations follow this page.
    pub more: bool,
}

impl RecentPage {
    /// Where the next page starts, if there is one.
    pub fn next(&self) -> Option<RecentCursor> {
        if self.more {
            self.conversations.last().map(RecentCursor::at)
        } else {
            None
        }
    }
}

/// Direction of a history page relative to its anchor seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryDirection {
    /// Messages with seq < anchor, newest first.
    Before,
    /// Messages with seq > anchor, oldest first.
    After,
}

named_u8! {
    /// How a group's messages reach its members.
    pub struct Diffusion {
        /// One inbox entry per member (small groups).
        WRITE = 1,
        /// Stored once; members keep a cursor (large groups, rooms).
        READ = 2,
    }
}

named_u8! {
    /// A member's role in a group.
    pub struct MemberRole {
        /// Ordinary member.
        MEMBER = 0,
        /// Administrator.
        ADMIN = 1,
        /// Owner.
        OWNER = 2,
    }
}

named_u8! {
    /// Kind of a relation row, as seen from the user who owns it. A two-way relation is stored
    /// on both sides, so every list is one prefix scan; the values are the wire's RELATION_LIST
    /// kinds.
    pub struct RelationKind {
        /// The user follows the other.
        FOLLOWING = 1,
        /// The other follows the user (reverse row of `FOLLOWING`).
        FOLLOWER = 2,
        /// Friends (both sides hold the row).
        FRIEND = 3,
        /// The user blocks the other.
        BLOCKED = 4,
        /// The other asked the user to be friends.
        PENDING = 5,
        /// The user asked the other to be friends (reverse row of `PENDING`).
        REQUESTED = 6,
    }
}

/// Group metadata to create or replace (the member count is maintained by the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupUpdate {
    /// Group.
    pub id: GroupId,
    /// Display name.
    pub name: String,
    /// Announcement text.
    pub announcement: String,
    /// Avatar reference.
    pub avatar: String,
    /// Owner.
    pub owner: UserId,
    /// Application-defined setting bits.
    pub settings: u64,
    /// Diffusion mode.
    pub diffusion: Diffusion,
}

/// Stored group metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// Group.
    pub id: GroupId,
    /// Display name.
    pub name: String,
    /// Announcement text.
    pub announcement: String,
    /// Avatar reference.
    pub avatar: String,
    /// Owner.
    pub owner: UserId,
    /// Application-defined setting bits.
    pub settings: u64,
    /// Diffusion mode.
    pub diffusion: Diffusion,
    /// Number of members.
    pub member_count: u32,
    /// Creation time.
    pub created_ms: u64,
    /// Last metadata change.
    pub updated_ms: u64,
}

/// Adds a member or changes their role / mute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberUpdate {
    /// Group (must exist).
    pub group: GroupId,
    /// User.
    pub user: UserId,
    /// Role.
    pub role: MemberRole,
    /// Muted until this time (0: not muted).
    pub muted_until_ms: u64,
}

/// A group member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// User.
    pub user: UserId,
    /// Role.
    pub role: MemberRole,
    /// Muted until (0: not muted).
    pub muted_until_ms: u64,
    /// When they joined.
    pub joined_ms: u64,
}

/// A group a user belongs to (reverse index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// Group.
    pub group: GroupId,
    /// Role.
    pub role: MemberRole,
    /// When they joined.
    pub joined_ms: u64,
}

/// Moves a member's read-diffusion cursor forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorUpdate {
    /// Group.
    pub group: GroupId,
    /// Member.
    pub user: UserId,
    /// New acknowledged conversation seq.
    pub acked: Option<Seq>,
    /// New read conversation seq.
    pub read: Option<Seq>,
}

/// A member's read-diffusion cursor in a group's timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCursor {
    /// Last acknowledged conversation seq.
    pub acked: Seq,
    /// Last read conversation seq.
    pub read: Seq,
    /// Last change.
    pub updated_ms: u64,
}

/// A relation row of one user toward another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The other user.
    pub other: UserId,
    /// Kind.
    pub kind: RelationKind,
    /// Since when.
    pub since_ms: u64,
    /// The friend request's note (`PENDING` and `REQUESTED` rows); empty otherwise.
    pub note: String,
}

/// A change of relations, made by `user` toward `other` and applied atomically to both users'
/// rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationChange {
    /// Who makes the change.
    pub user: UserId,
    /// Toward whom (must differ from `user`).
    pub other: UserId,
    /// What.
    pub op: RelationOp,
}

/// What a [`RelationChange`] does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelationOp {
    /// Start following (refused when `other` blocks `user`).
    Follow,
    /// Stop following.
    Unfollow,
    /// Ask to be friends; becomes friendship at once if `other` had asked `user`.
    FriendRequest {
        /// Shown to `other` with the request.
        note: String,
    },
    /// Accept `other`'s pending request.
    FriendAccept,
    /// Decline `other`'s request, or withdraw `user`'s own request to `other`.
    FriendDecline,
    /// End the friendship on both sides.
    Unfriend,
    /// Block `other`; also ends `other`'s follow of `user` and pending requests between them.
    Block,
    /// End the block.
    Unblock,
}

/// What a [`RelationChange`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelationOutcome {
    /// Some row was written or removed (false: it was already so).
    pub changed: bool,
    /// A new friend request now waits for `other`.
    pub requested: bool,
    /// The two users became friends (an accept, or crossing requests).
    pub befriended: bool,
}

/// Group sizes the writer enforces and switches diffusion at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLimits {
    /// Groups with at most this many members use write diffusion (an inbox entry per member);
    /// larger ones read diffusion.
    pub write_diffusion_max: u32,
    /// Most members a group may have.
    pub max_members: u32,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            write_diffusion_max: 200,
            max_members: 10_000,
        }
    }
}

/// A change to a group, made by `by` and checked against `by`'s role by the writer, in the same
/// batch that applies it: a refused change writes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRequest {
    /// Group.
    pub group: GroupId,
    /// Who asks.
    pub by: UserId,
    /// From which device (the event's sender device).
    pub by_device: DeviceId,
    /// What.
    pub op: GroupOp,
}

/// What a [`GroupRequest`] does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupOp {
    /// Creates the group with `by` as owner and `members` as members (the id must be new).
    Create {
        /// Display name.
        name: String,
        /// Members besides the creator.
        members: Vec<UserId>,
    },
    /// Changes the metadata (`None`: unchanged). Owner or admin.
    Update {
        /// New name.
        name: Option<String>,
        /// New announcement.
        announcement: Option<String>,
        /// New avatar reference.
        avatar: Option<String>,
    },
    /// Adds members (existing members are skipped). Owner or admin.
    Add(Vec<UserId>),
    /// Removes members. Owner or admin; an admin removes members only, nobody removes the owner.
    Remove(Vec<UserId>),
    /// Mutes members until a time (ms). Owner or admin, same rule as `Remove`.
    Mute {
        /// Members.
        users: Vec<UserId>,
        /// Until when.
        until_ms: u64,
    },
    /// Lifts a mute. Owner or admin.
    Unmute(Vec<UserId>),
    /// Sets members' role to MEMBER or ADMIN. Owner only.
    SetRole {
        /// Members.
        users: Vec<UserId>,
        /// New role (not OWNER: ownership moves with `Transfer`).
        role: MemberRole,
    },
    /// `by` leaves (the owner must transfer first, or disband).
    Leave,
    /// Makes another member the owner; the old owner becomes an admin. Owner only.
    Transfer(UserId),
    /// Ends the group: every membership goes, the timeline stays. Owner only.
    Disband,
}

named_u8! {
    /// What a GROUP_EVENT message says happened (the first byte of its body).
    pub struct GroupEventKind {
        /// The group was created (users: the initial members besides the creator).
        CREATED = 1,
        /// Metadata changed (arg: bit 0 name, bit 1 announcement, bit 2 avatar).
        UPDATED = 2,
        /// Members were added.
        ADDED = 3,
        /// Members were removed.
        REMOVED = 4,
        /// The sender left.
        LEFT = 5,
        /// Members were muted (arg: until, ms).
        MUTED = 6,
        /// Members were unmuted.
        UNMUTED = 7,
        /// Members' role was set (arg: the role).
        ROLE_SET = 8,
        /// Ownership moved to the user listed.
        TRANSFERRED = 9,
        /// The group was disbanded.
        DISBANDED = 10,
    }
}

/// A new group message to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMessage {
    /// Group.
    pub group: GroupId,
    /// Sender (must be a member, not muted).
    pub sender: UserId,
    /// Sender's device.
    pub sender_device: DeviceId,
    /// The client's id for de-duplication.
    pub client_msg_id: ClientMsgId,
    /// Content kind; must not be an event kind.
    pub kind: MessageKind,
    /// Opaque body.
    pub body: Vec<u8>,
    /// Members the message mentions (SPEC.md, Groups, "Mentions"): each raises their mention
    /// flag until they read past it. Users who are not members, and the sender, are skipped.
    pub mentions: Vec<UserId>,
    /// The message mentions every member (@all).
    pub mention_all: bool,
}

/// How a new group timeline entry (a message or an event) reaches the members' devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupFanout {
    /// The stored entry.
    pub message: StoredMessage,
    /// The diffusion it was stored under.
    pub diffusion: Diffusion,
    /// Write diffusion: every recipient and the inbox seq the entry got in their inbox.
    pub inboxes: Vec<(UserId, Seq)>,
    /// Read diffusion: who to push it to (no inbox entries exist).
    pub members: std::sync::Arc<[UserId]>,
}

/// What appending a group message assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupAppendResult {
    /// Position in the group's timeline.
    pub conv_seq: Seq,
    /// The sender's inbox seq of it (0 under read diffusion).
    pub sender_inbox_seq: Seq,
    /// Server time.
    pub time_ms: u64,
    /// A retransmission: nothing was written, `fanout` is `None`.
    pub duplicate: bool,
    /// Where it goes.
    pub fanout: Option<GroupFanout>,
}

/// What a group change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOutcome {
    /// The group after the change (before it, for a disband).
    pub info: GroupInfo,
    /// The event appended to the timeline; `None` when nothing changed (e.g. adding members
    /// who all were members already).
    pub event: Option<GroupFanout>,
}

/// A device's read-diffused group messages, as the read side of SYNC serves them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSyncPage {
    /// Messages, group by group (in group id byte order), each group in seq order.
    pub messages: Vec<StoredMessage>,
    /// For each group with messages on the page: the position the device reaches once it holds
    /// them.
    pub positions: Vec<(GroupId, Seq)>,
    /// More read-diffused messages wait beyond this page.
    pub more: bool,
}

/// Read receipts of some messages of a group, for a member (SPEC.md, GROUP_RECEIPTS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupReceipts {
    /// Diffusion of the group: per-message counts exist under write diffusion only.
    pub diffusion: Diffusion,
    /// The asking member's own read position.
    pub my_read_seq: Seq,
    /// One entry per asked seq that names a message, in the order asked (write diffusion).
    pub messages: Vec<MessageReads>,
}

/// Who has read one message of a write-diffusion group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageReads {
    /// The message.
    pub seq: Seq,
    /// Current members besides the message's sender.
    pub members: u32,
    /// How many of them have a read position at or past the message.
    pub read: u32,
    /// Those readers, when asked for (member id byte order).
    pub readers: Vec<UserId>,
}

/// Who has read a message of a write-diffusion group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupReaders {
    /// Diffusion of the group: readers are known under write diffusion only.
    pub diffusion: Diffusion,
    /// Members besides the message's sender.
    pub others: u32,
    /// Those of them whose read position reaches the message.
    pub readers: Vec<UserId>,
    /// The asking member's own read position.
    pub my_read_seq: Seq,
}
