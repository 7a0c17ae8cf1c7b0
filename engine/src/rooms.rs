//! Chat rooms (SPEC §7, "Rooms"): membership per connection that is never persisted,
//! a bounded window of recent messages, delivery to the members online now and nothing in any
//! inbox. A room's state lives on the core owning the room's slot; this module is that state's
//! logic and the per-member send limit, with no sockets and no clock.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tern_protocol::{
    Body, Conv, ConvKind, ErrorCode, Frame, HistoryPage, Message, MessageFlags, MessageKind, MsgId,
};

/// Room settings (`[rooms]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomConfig {
    /// Messages a room keeps for joiners.
    pub window: usize,
    /// Recent messages a join gets when it asks for 0.
    pub default_recent: u16,
    /// Members (connections) a room holds.
    pub member_cap: u32,
    /// Messages per second one member may send, and the burst above it.
    pub rate_per_sec: u32,
    pub burst: u32,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            window: 200,
            default_recent: 50,
            member_cap: 100_000,
            rate_per_sec: 20,
            burst: 40,
        }
    }
}

/// A message of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMsg {
    pub seq: u64,
    pub sender: Arc<str>,
    pub sender_device: Arc<str>,
    pub msg_id: MsgId,
    pub time: u64,
    pub kind: MessageKind,
    pub body: Bytes,
}

/// A message as a member sends it, before the room numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub sender: Arc<str>,
    pub sender_device: Arc<str>,
    pub msg_id: MsgId,
    pub kind: MessageKind,
    pub body: Bytes,
}

/// What posting did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub msg: RoomMsg,
    /// A retransmission of a message still in the window: nothing new was posted.
    pub duplicate: bool,
}

/// One room at its owning core.
#[derive(Debug, Default)]
pub struct Room {
    next_seq: u64,
    recent: VecDeque<RoomMsg>,
    members: u32,
    /// Members per core, so a message crosses to each core with members once.
    per_core: Vec<u32>,
}

impl Room {
    /// Adds a member on `core`; refused when the room is full.
    pub fn join(&mut self, core: u16, cap: u32) -> Result<(), ErrorCode> {
        if self.members >= cap {
            return Err(ErrorCode::LIMIT_EXCEEDED);
        }
        let i = usize::from(core);
        if self.per_core.len() <= i {
            self.per_core.resize(i + 1, 0);
        }
        self.per_core[i] += 1;
        self.members += 1;
        Ok(())
    }

    /// Removes a member on `core`; `true` when the room has no members left (it can go: an
    /// empty room keeps nothing, the next join starts it afresh).
    pub fn leave(&mut self, core: u16) -> bool {
        if let Some(n) = self.per_core.get_mut(usize::from(core)) {
            if *n > 0 {
                *n -= 1;
                self.members = self.members.saturating_sub(1);
            }
        }
        self.members == 0
    }

    pub fn members(&self) -> u32 {
        self.members
    }

    /// The cores with members.
    pub fn cores(&self) -> impl Iterator<Item = u16> + '_ {
        self.per_core
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, _)| i as u16)
    }

    /// The latest `n` messages, oldest first, and whether older ones exist in the window.
    pub fn recent(&self, n: usize) -> (Vec<RoomMsg>, bool) {
        let skip = self.recent.len().saturating_sub(n);
        (self.recent.iter().skip(skip).cloned().collect(), skip > 0)
    }

    /// Numbers and keeps a message. A retransmission (same sender and id) of a message still in
    /// the window gets the original back.
    pub fn post(&mut self, p: Post, now_ms: u64, window: usize) -> Posted {
        if let Some(m) = self
            .recent
            .iter()
            .rev()
            .find(|m| m.msg_id == p.msg_id && m.sender == p.sender)
        {
            return Posted {
                msg: m.clone(),
                duplicate: true,
            };
        }
        self.next_seq += 1;
        let msg = RoomMsg {
            seq: self.next_seq,
            sender: p.sender,
            sender_device: p.sender_device,
            msg_id: p.msg_id,
            time: now_ms,
            kind: p.kind,
            body: p.body,
        };
        self.recent.push_back(msg.clone());
        while self.recent.len() > window.max(1) {
            self.recent.pop_front();
        }
        Posted {
            msg,
            duplicate: false,
        }
    }
}

/// A token bucket: `rate` messages per second with `burst` on top, in milli-tokens so that slow
/// rates refill smoothly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    milli_tokens: u64,
    last_ms: u64,
    started: bool,
}

impl RateLimit {
    pub fn allow(&mut self, now_ms: u64, rate: u32, burst: u32) -> bool {
        let cap = u64::from(burst.max(1)) * 1000;
        if !self.started {
            self.started = true;
            self.milli_tokens = cap;
            self.last_ms = now_ms;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.milli_tokens = (self.milli_tokens + elapsed * u64::from(rate)).min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// Whether a room name is acceptable: 1..=128 bytes, no control characters (checked on the
/// name a client gave, without the tenant scoping it).
pub fn valid_room(name: &str) -> bool {
    let (tenant, name) = tern_storage::split_scoped(name);
    tenant.is_none_or(tern_storage::valid_tenant)
        && !name.is_empty()
        && name.len() <= 128
        && !name.chars().any(char::is_control)
}

fn wire(room: &str, m: &RoomMsg) -> Message<'static> {
    Message {
        conv: Conv {
            kind: ConvKind::ROOM,
            id: Cow::Owned(room.to_owned()),
        },
        sender: Cow::Owned(m.sender.to_string()),
        sender_device: Cow::Owned(m.sender_device.to_string()),
        conv_seq: m.seq,
        inbox_seq: 0,
        msg_id: m.msg_id,
        time: m.time,
        kind: m.kind,
        flags: MessageFlags::NONE,
        body: Cow::Owned(m.body.to_vec()),
    }
}

/// The PUSH of a room message, encoded once for every member.
pub fn push_bytes(room: &str, m: &RoomMsg) -> Bytes {
    let mut buf = Vec::new();
    // Encoding fails only for bodies over the absolute limit, which SEND could not carry.
    let frame = Frame::new(0, Body::Push(wire(room, m)));
    // Every member joined the room by naming it inside its tenant: they all see it the same.
    let shown = crate::tenant::outbound_for(&frame, room);
    let _ = shown.as_ref().unwrap_or(&frame).encode(&mut buf);
    Bytes::from(buf)
}

/// The HISTORY_PAGE answering ROOM_JOIN.
pub fn join_page(request_id: u32, room: &str, msgs: &[RoomMsg], more: bool) -> Frame<'static> {
    Frame::new(
        request_id,
        Body::HistoryPage(HistoryPage {
            conv: Conv {
                kind: ConvKind::ROOM,
                id: Cow::Owned(room.to_owned()),
            },
            more,
            messages: msgs.iter().map(|m| wire(room, m)).collect(),
        }),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn post(sender: &str, id: u8) -> Post {
        Post {
            sender: sender.into(),
            sender_device: "d".into(),
            msg_id: MsgId([id; 16]),
            kind: MessageKind::TEXT,
            body: Bytes::from_static(b"hi"),
        }
    }

    #[test]
    fn members_are_counted_per_core_and_capped() {
        let mut r = Room::default();
        r.join(1, 3).unwrap();
        r.join(1, 3).unwrap();
        r.join(0, 3).unwrap();
        assert_eq!(r.join(0, 3), Err(ErrorCode::LIMIT_EXCEEDED));
        assert_eq!(r.cores().collect::<Vec<_>>(), vec![0, 1]);
        assert!(!r.leave(1));
        assert!(!r.leave(0));
        assert_eq!(r.cores().collect::<Vec<_>>(), vec![1]);
        assert!(!r.leave(3), "a core without members changes nothing");
        assert!(r.leave(1));
        assert_eq!(r.members(), 0);
    }

    #[test]
    fn posts_are_numbered_windowed_and_deduplicated() {
        let mut r = Room::default();
        for i in 1..=5 {
            let p = r.post(post("a", i), 100 + u64::from(i), 3);
            assert_eq!((p.msg.seq, p.duplicate), (u64::from(i), false));
        }
        let (recent, more) = r.recent(10);
        assert_eq!(recent.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(!more, "the window holds 3; all of them were asked for");
        let (two, more) = r.recent(2);
        assert_eq!(two.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(more);
        // Same id from the same sender: the original; from another sender: a new message.
        let again = r.post(post("a", 5), 999, 3);
        assert_eq!(
            (again.msg.seq, again.msg.time, again.duplicate),
            (5, 105, true)
        );
        assert_eq!(r.post(post("b", 5), 999, 3).msg.seq, 6);
    }

    #[test]
    fn rate_limit_allows_the_burst_then_the_rate() {
        let mut l = RateLimit::default();
        let allowed = (0..10).filter(|_| l.allow(1_000, 2, 4)).count();
        assert_eq!(allowed, 4);
        assert!(!l.allow(1_100, 2, 4));
        assert!(l.allow(1_500, 2, 4), "half a second at 2/s refills one");
        assert!(!l.allow(1_500, 2, 4));
        assert!(
            l.allow(1_000_000, 2, 4),
            "a clock step is capped at the burst"
        );
    }

    #[test]
    fn frames_carry_the_room_conversation_and_no_inbox_sequence() {
        let mut r = Room::default();
        let m = r.post(post("a", 1), 7, 10).msg;
        let bytes = push_bytes("lobby", &m);
        let (f, _) = tern_protocol::decode(&bytes, 1 << 20).unwrap().unwrap();
        let Body::Push(p) = f.body else { panic!() };
        assert_eq!((p.conv.kind, p.conv.id.as_ref()), (ConvKind::ROOM, "lobby"));
        assert_eq!((p.conv_seq, p.inbox_seq), (1, 0));
        assert!(valid_room("lobby") && !valid_room("") && !valid_room("a\nb"));
    }
}
