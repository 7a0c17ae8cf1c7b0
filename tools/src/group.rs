//! Groups in the SDK (SPEC.md §7, Groups): the [`Client`] calls that create, change, list and
//! leave groups, send to them and page their history, and [`GroupEvent`], the decoded body of a
//! GROUP_EVENT message, which the client hands out as [`crate::Event::GroupEvent`].
//!
//! Group requests are answered on the current connection (like relations): when the client is
//! between connections they fail with [`SendError::NotConnected`] and the caller decides whether
//! to try again. Group messages go through the client's send queue, with the same
//! retransmission and de-duplication (one message id per message) as one-to-one messages.

use std::fmt;
use std::time::Duration;

use tern_protocol::wire::{BodyError, Reader, Wire};
use tern_protocol::{
    Body, Conv, ConvKind, Direction, GroupCreate, GroupInfo, GroupListPage, GroupMembers, GroupRef,
    GroupSummary, GroupTransfer, GroupUpdate, History, HistoryPage, ListRequest, MemberOp, Message,
    MessageKind, Role, SendAck,
};

use crate::client::{Client, PendingSend, SendError};

/// What a GROUP_EVENT message says happened (its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEventKind {
    Created,
    Updated,
    Added,
    Removed,
    Left,
    Muted,
    Unmuted,
    RoleSet,
    Transferred,
    Disbanded,
    /// A kind this revision of the protocol does not name; shown by its number.
    Other(u8),
}

impl GroupEventKind {
    pub fn from_wire(b: u8) -> GroupEventKind {
        match b {
            1 => GroupEventKind::Created,
            2 => GroupEventKind::Updated,
            3 => GroupEventKind::Added,
            4 => GroupEventKind::Removed,
            5 => GroupEventKind::Left,
            6 => GroupEventKind::Muted,
            7 => GroupEventKind::Unmuted,
            8 => GroupEventKind::RoleSet,
            9 => GroupEventKind::Transferred,
            10 => GroupEventKind::Disbanded,
            n => GroupEventKind::Other(n),
        }
    }

    pub fn to_wire(self) -> u8 {
        match self {
            GroupEventKind::Created => 1,
            GroupEventKind::Updated => 2,
            GroupEventKind::Added => 3,
            GroupEventKind::Removed => 4,
            GroupEventKind::Left => 5,
            GroupEventKind::Muted => 6,
            GroupEventKind::Unmuted => 7,
            GroupEventKind::RoleSet => 8,
            GroupEventKind::Transferred => 9,
            GroupEventKind::Disbanded => 10,
            GroupEventKind::Other(n) => n,
        }
    }

    /// A lower-case name for output (`created`, `role_set`…; `event_N` for unknown kinds).
    pub fn name(self) -> String {
        match self {
            GroupEventKind::Created => "created".into(),
            GroupEventKind::Updated => "updated".into(),
            GroupEventKind::Added => "added".into(),
            GroupEventKind::Removed => "removed".into(),
            GroupEventKind::Left => "left".into(),
            GroupEventKind::Muted => "muted".into(),
            GroupEventKind::Unmuted => "unmuted".into(),
            GroupEventKind::RoleSet => "role_set".into(),
            GroupEventKind::Transferred => "transferred".into(),
            GroupEventKind::Disbanded => "disbanded".into(),
            GroupEventKind::Other(n) => format!("event_{n}"),
        }
    }
}

/// The body of a GROUP_EVENT message: `event u8 · users list<string> · arg varint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    pub kind: GroupEventKind,
    /// The users the change is about (see the table in SPEC.md, Groups, "Events").
    pub users: Vec<String>,
    /// UPDATED: bits of the changed fields; MUTED: muted until (ms); ROLE_SET: the role.
    pub arg: u64,
}

/// UPDATED `arg` bits.
pub const UPDATED_NAME: u64 = 1;
pub const UPDATED_ANNOUNCEMENT: u64 = 2;
pub const UPDATED_AVATAR: u64 = 4;

impl GroupEvent {
    /// Decodes a GROUP_EVENT body.
    pub fn decode(body: &[u8]) -> Result<GroupEvent, BodyError> {
        let mut r = Reader::new(body);
        let kind = GroupEventKind::from_wire(u8::get(&mut r)?);
        let users: Vec<std::borrow::Cow<'_, str>> = Wire::get(&mut r)?;
        let arg = u64::get(&mut r)?;
        Ok(GroupEvent {
            kind,
            users: users.into_iter().map(|u| u.into_owned()).collect(),
            arg,
        })
    }

    /// The event of a message, when it is a GROUP_EVENT of a group conversation whose body
    /// decodes.
    pub fn of(m: &Message<'_>) -> Option<GroupEvent> {
        if m.kind != MessageKind::GROUP_EVENT || m.conv.kind != ConvKind::GROUP {
            return None;
        }
        GroupEvent::decode(&m.body).ok()
    }

    /// One line for people, `sender` being who made the change: "alice added bob, carol".
    pub fn describe(&self, sender: &str) -> String {
        let users = self.users.join(", ");
        match self.kind {
            GroupEventKind::Created if users.is_empty() => format!("{sender} created the group"),
            GroupEventKind::Created => format!("{sender} created the group with {users}"),
            GroupEventKind::Updated => {
                let mut what = Vec::new();
                if self.arg & UPDATED_NAME != 0 {
                    what.push("name");
                }
                if self.arg & UPDATED_ANNOUNCEMENT != 0 {
                    what.push("announcement");
                }
                if self.arg & UPDATED_AVATAR != 0 {
                    what.push("avatar");
                }
                if what.is_empty() {
                    format!("{sender} updated the group")
                } else {
                    format!("{sender} changed the {}", what.join(", "))
                }
            }
            GroupEventKind::Added => format!("{sender} added {users}"),
            GroupEventKind::Removed => format!("{sender} removed {users}"),
            GroupEventKind::Left => format!("{users} left"),
            GroupEventKind::Muted => format!("{sender} muted {users} until {}", self.arg),
            GroupEventKind::Unmuted => format!("{sender} unmuted {users}"),
            GroupEventKind::RoleSet => {
                format!(
                    "{sender} made {users} {}",
                    role_name(Role(wire_role(self.arg)))
                )
            }
            GroupEventKind::Transferred => format!("{sender} made {users} the owner"),
            GroupEventKind::Disbanded => format!("{sender} disbanded the group"),
            GroupEventKind::Other(n) => format!("{sender}: group event {n} {users} {}", self.arg),
        }
    }
}

impl fmt::Display for GroupEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.users.join(","))
    }
}

fn wire_role(arg: u64) -> u8 {
    u8::try_from(arg).unwrap_or(u8::MAX)
}

/// A role as printed: `member`, `admin`, `owner`, or its number.
pub fn role_name(r: Role) -> String {
    r.name()
        .map_or_else(|| r.0.to_string(), str::to_ascii_lowercase)
}

/// Groups per page the SDK asks for when it lists them all (the node caps pages at 500).
const LIST_PAGE: u16 = 500;

impl Client {
    /// Creates a group named `name` with `members` (user ids besides us; we become its owner)
    /// and returns it as the node stored it, with the id the node chose.
    pub fn group_create(
        &self,
        name: &str,
        members: &[&str],
        timeout: Duration,
    ) -> Result<GroupInfo<'static>, SendError> {
        let body = Body::GroupCreate(GroupCreate {
            name: name.to_owned().into(),
            members: owned_list(members),
        });
        expect_info(self.request(body, timeout)?.body)
    }

    /// Changes a group's name, announcement or avatar reference (`None`: unchanged); owner and
    /// admins only.
    pub fn group_update(
        &self,
        group: &str,
        name: Option<&str>,
        announcement: Option<&str>,
        avatar: Option<&str>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let body = Body::GroupUpdate(GroupUpdate {
            group: group.to_owned().into(),
            name: name.map(|s| s.to_owned().into()),
            announcement: announcement.map(|s| s.to_owned().into()),
            avatar: avatar.map(|s| s.to_owned().into()),
        });
        self.request_ok(body, timeout)
    }

    fn group_members(
        &self,
        group: &str,
        op: MemberOp,
        users: &[&str],
        arg: u64,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let body = Body::GroupMembers(GroupMembers {
            group: group.to_owned().into(),
            op,
            users: owned_list(users),
            arg,
        });
        self.request_ok(body, timeout)
    }

    /// Adds `users` to a group (members already in it are skipped); owner and admins only.
    pub fn group_add(
        &self,
        group: &str,
        users: &[&str],
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.group_members(group, MemberOp::ADD, users, 0, timeout)
    }

    /// Removes members from a group; owner and admins only (an admin removes members only).
    pub fn group_remove(
        &self,
        group: &str,
        users: &[&str],
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.group_members(group, MemberOp::REMOVE, users, 0, timeout)
    }

    /// Mutes members (they may not SEND) until `until_ms`, ms since the epoch.
    pub fn group_mute(
        &self,
        group: &str,
        users: &[&str],
        until_ms: u64,
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.group_members(group, MemberOp::MUTE, users, until_ms, timeout)
    }

    /// Ends the mute of members.
    pub fn group_unmute(
        &self,
        group: &str,
        users: &[&str],
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.group_members(group, MemberOp::UNMUTE, users, 0, timeout)
    }

    /// Makes members admins ([`Role::ADMIN`]) or plain members ([`Role::MEMBER`]); owner only.
    pub fn group_set_role(
        &self,
        group: &str,
        users: &[&str],
        role: Role,
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.group_members(group, MemberOp::SET_ROLE, users, u64::from(role.0), timeout)
    }

    /// Leaves a group (the owner transfers or disbands instead).
    pub fn group_leave(&self, group: &str, timeout: Duration) -> Result<(), SendError> {
        let body = Body::GroupLeave(GroupRef {
            group: group.to_owned().into(),
        });
        self.request_ok(body, timeout)
    }

    /// Makes `owner` the group's owner (we become an admin); owner only.
    pub fn group_transfer(
        &self,
        group: &str,
        owner: &str,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let body = Body::GroupTransfer(GroupTransfer {
            group: group.to_owned().into(),
            owner: owner.to_owned().into(),
        });
        self.request_ok(body, timeout)
    }

    /// Disbands a group: every membership ends, the timeline stays; owner only.
    pub fn group_disband(&self, group: &str, timeout: Duration) -> Result<(), SendError> {
        let body = Body::GroupDisband(GroupRef {
            group: group.to_owned().into(),
        });
        self.request_ok(body, timeout)
    }

    /// A group's name, announcement, owner and members (at most 500 of them listed).
    pub fn group_get(
        &self,
        group: &str,
        timeout: Duration,
    ) -> Result<GroupInfo<'static>, SendError> {
        let body = Body::GroupGet(GroupRef {
            group: group.to_owned().into(),
        });
        expect_info(self.request(body, timeout)?.body)
    }

    /// One page of our groups in the byte order of their ids; continue with the page's
    /// `next_cursor` until it is empty. `limit` 0: the node's default.
    pub fn group_list_page(
        &self,
        cursor: &str,
        limit: u16,
        timeout: Duration,
    ) -> Result<GroupListPage<'static>, SendError> {
        let body = Body::GroupList(ListRequest {
            cursor: cursor.to_owned().into(),
            limit,
        });
        match self.request(body, timeout)?.body {
            Body::GroupListPage(page) => Ok(page),
            other => Err(SendError::Unexpected(other.frame_type())),
        }
    }

    /// All our groups, page after page (at most 10,000 pages).
    pub fn group_list(&self, timeout: Duration) -> Result<Vec<GroupSummary<'static>>, SendError> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10_000 {
            let page = self.group_list_page(&cursor, LIST_PAGE, timeout)?;
            out.extend(page.groups);
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor.into_owned();
        }
        Ok(out)
    }

    /// Queues a message to a group; it is sent (and retransmitted with the same message id)
    /// until acknowledged, like [`Client::send`].
    pub fn send_group(
        &self,
        group: &str,
        kind: MessageKind,
        body: Vec<u8>,
    ) -> Result<PendingSend, SendError> {
        self.send_to(Conv::group(group.to_owned()), kind, body)
    }

    /// Sends to a group and waits for the SEND_ACK (retransmitting meanwhile); a refusal
    /// (`FORBIDDEN` for a non-member or a muted member, `NOT_FOUND`…) is
    /// [`SendError::Server`].
    pub fn send_group_wait(
        &self,
        group: &str,
        kind: MessageKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<SendAck, SendError> {
        self.send_to_wait(Conv::group(group.to_owned()), kind, body, timeout)
    }

    /// Queues a message to a group that mentions `users` (members' ids) and, with `all`,
    /// everyone (@all): each mentioned member's CONTACTS entry for the group is flagged until
    /// they read it (SPEC.md "Mentions"). Sent and retransmitted, mentions included, like
    /// [`Client::send_group`].
    pub fn send_group_mentioning(
        &self,
        group: &str,
        kind: MessageKind,
        body: Vec<u8>,
        users: &[&str],
        all: bool,
    ) -> Result<PendingSend, SendError> {
        let mentions = mention_list(users, all);
        self.enqueue_mentioning(Conv::group(group.to_owned()), kind, body, mentions, None)
    }

    /// [`Client::send_group_mentioning`], waiting for the SEND_ACK; a refusal (a malformed
    /// mention is `INVALID_ARGUMENT`, more than 100 `LIMIT_EXCEEDED`) is [`SendError::Server`].
    pub fn send_group_mentioning_wait(
        &self,
        group: &str,
        kind: MessageKind,
        body: Vec<u8>,
        users: &[&str],
        all: bool,
        timeout: Duration,
    ) -> Result<SendAck, SendError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mentions = mention_list(users, all);
        self.enqueue_mentioning(
            Conv::group(group.to_owned()),
            kind,
            body,
            mentions,
            Some(tx),
        )?;
        rx.recv_timeout(timeout).map_err(|_| SendError::Timeout)?
    }

    /// One HISTORY page of a conversation: the `limit` messages before `before` (0: the newest),
    /// in ascending `conv_seq`. `limit` 0: the node's default.
    pub fn history(
        &self,
        conv: Conv<'static>,
        before: u64,
        limit: u16,
        timeout: Duration,
    ) -> Result<HistoryPage<'static>, SendError> {
        let body = Body::History(History {
            conv,
            direction: Direction::BEFORE,
            seq: before,
            limit,
        });
        match self.request(body, timeout)?.body {
            Body::HistoryPage(page) => Ok(page),
            other => Err(SendError::Unexpected(other.frame_type())),
        }
    }

    /// One HISTORY page of a group (see [`Client::history`]).
    pub fn group_history(
        &self,
        group: &str,
        before: u64,
        limit: u16,
        timeout: Duration,
    ) -> Result<HistoryPage<'static>, SendError> {
        self.history(Conv::group(group.to_owned()), before, limit, timeout)
    }
}

/// SEND's mentions: the users, then the empty string for @all.
fn mention_list(users: &[&str], all: bool) -> Vec<String> {
    let mut v: Vec<String> = users.iter().map(|u| (*u).to_owned()).collect();
    if all {
        v.push(String::new());
    }
    v
}

fn owned_list(users: &[&str]) -> Vec<std::borrow::Cow<'static, str>> {
    users.iter().map(|u| (*u).to_owned().into()).collect()
}

fn expect_info(body: Body<'static>) -> Result<GroupInfo<'static>, SendError> {
    match body {
        Body::GroupInfo(info) => Ok(info),
        other => Err(SendError::Unexpected(other.frame_type())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::wire::put_varint;

    fn body(kind: u8, users: &[&str], arg: u64) -> Vec<u8> {
        let mut b = vec![kind];
        put_varint(&mut b, users.len() as u64);
        for u in users {
            put_varint(&mut b, u.len() as u64);
            b.extend_from_slice(u.as_bytes());
        }
        put_varint(&mut b, arg);
        b
    }

    #[test]
    fn decodes_every_event_kind() {
        for k in 1..=10u8 {
            let e = GroupEvent::decode(&body(k, &["bob", "carol"], 300)).expect("decodes");
            assert_eq!(e.kind.to_wire(), k);
            assert_eq!(e.users, ["bob", "carol"]);
            assert_eq!(e.arg, 300);
            assert!(!matches!(e.kind, GroupEventKind::Other(_)));
        }
        let e = GroupEvent::decode(&body(42, &[], 0)).expect("decodes");
        assert_eq!(e.kind, GroupEventKind::Other(42));
        assert_eq!(e.kind.name(), "event_42");
    }

    #[test]
    fn refuses_truncated_bodies() {
        let full = body(3, &["bob"], 0);
        for cut in 0..full.len() {
            assert!(GroupEvent::decode(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn describes_events_for_people() {
        let d = |k, users: &[&str], arg| {
            GroupEvent::decode(&body(k, users, arg))
                .expect("decodes")
                .describe("alice")
        };
        assert_eq!(d(1, &["bob"], 0), "alice created the group with bob");
        assert_eq!(d(1, &[], 0), "alice created the group");
        assert_eq!(d(2, &[], 3), "alice changed the name, announcement");
        assert_eq!(d(3, &["bob", "carol"], 0), "alice added bob, carol");
        assert_eq!(d(5, &["bob"], 0), "bob left");
        assert_eq!(d(8, &["bob"], 1), "alice made bob admin");
        assert_eq!(d(9, &["bob"], 0), "alice made bob the owner");
        assert_eq!(d(10, &[], 0), "alice disbanded the group");
    }

    #[test]
    fn only_group_event_messages_of_groups_decode() {
        let mut m = Message {
            conv: Conv::group("g1"),
            sender: "alice".into(),
            sender_device: "phone".into(),
            conv_seq: 1,
            inbox_seq: 0,
            msg_id: tern_protocol::MsgId::default(),
            time: 0,
            kind: MessageKind::GROUP_EVENT,
            flags: tern_protocol::MessageFlags::NONE,
            body: body(3, &["bob"], 0).into(),
        };
        assert_eq!(
            GroupEvent::of(&m).map(|e| e.kind),
            Some(GroupEventKind::Added)
        );
        m.kind = MessageKind::TEXT;
        assert_eq!(GroupEvent::of(&m), None);
        m.kind = MessageKind::GROUP_EVENT;
        m.conv = Conv::direct("bob");
        assert_eq!(GroupEvent::of(&m), None);
    }
}
