//! Cross-node delivery in a cluster: what the node that assigns a one-to-one conversation's
//! sequences owes the node serving the conversation's other user, kept durably in the `outbox`
//! family until that node acknowledges it, and what the other node applies.
//!
//! A message between users of two nodes is stored by the conversation's owner (its timeline,
//! the owner-side user's inbox, the dedup row) together with one `outbox` row holding the other
//! user's half, in one batch ([`Store::append_routed`](crate::Store::append_routed)). The other
//! node applies that half ([`Store::apply_remote`](crate::Store::apply_remote)): a copy of the
//! message row under the same `conv ‖ seq`, the user's inbox entry, recent row and unread
//! counters, and a dedup row. Applying is idempotent by message id: a second application of the
//! same write (a retry after a lost acknowledgement, after a crash) finds the dedup row (or the
//! message row, once the dedup row has expired) and writes nothing.
//!
//! # Key layout
//! | family   | key              | value (rkyv archive)                                                           |
//! |----------|------------------|--------------------------------------------------------------------------------|
//! | `outbox` | `seq` (u64 BE)   | destination node, side, sender, sender device, recipient, client msg id, conv seq, time ms, kind, body, created ms |
//!
//! Outbox seqs are assigned by the writer (one reverse seek on first use), so a scan in key
//! order is the order the entries were written in.

use rkyv::{Archive, Serialize};

use crate::engine::{Cf, Direction, EngineError, KvEngine, ScanRange};
use crate::ids::{ClientMsgId, DeviceId, MessageKind, Seq, UserId};
use crate::records::{access, bad};
use crate::types::{DirectMessage, RelationKind};

/// Which user of a one-to-one message a remote write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemoteSide {
    /// The sender: the message goes into their inbox for their other devices (no unread).
    Sender,
    /// The recipient: inbox entry, unread +1, total unread +1.
    Recipient,
    /// Not a message: the relation rows of `recipient` about `sender`, as the node that decides
    /// the pair's relation changes left them (see [`RemoteWrite::relation`]).
    Relation,
}

impl RemoteSide {
    fn code(self) -> u8 {
        match self {
            RemoteSide::Sender => 1,
            RemoteSide::Recipient => 2,
            RemoteSide::Relation => 3,
        }
    }

    fn from_code(code: u8) -> Option<RemoteSide> {
        match code {
            1 => Some(RemoteSide::Sender),
            2 => Some(RemoteSide::Recipient),
            3 => Some(RemoteSide::Relation),
            _ => None,
        }
    }
}

/// One user's half of a one-to-one message whose sequence another node assigned: what the node
/// serving that user applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteWrite {
    /// Whose half this is.
    pub side: RemoteSide,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub recipient: UserId,
    pub client_msg_id: ClientMsgId,
    /// The sequence the conversation's owner assigned.
    pub conv_seq: Seq,
    /// The server time the conversation's owner assigned.
    pub time_ms: u64,
    pub kind: MessageKind,
    pub body: Vec<u8>,
}

impl RemoteWrite {
    /// The `side` half of `msg`, stored at `conv_seq` and `time_ms`.
    pub fn of(msg: &DirectMessage, side: RemoteSide, conv_seq: Seq, time_ms: u64) -> RemoteWrite {
        RemoteWrite {
            side,
            sender: msg.sender.clone(),
            sender_device: msg.sender_device.clone(),
            recipient: msg.recipient.clone(),
            client_msg_id: msg.client_msg_id,
            conv_seq,
            time_ms,
            kind: msg.kind,
            body: msg.body.clone(),
        }
    }

    /// The user whose inbox gets the entry (whose rows a relation write sets).
    pub fn user(&self) -> &UserId {
        match self.side {
            RemoteSide::Sender => &self.sender,
            RemoteSide::Recipient | RemoteSide::Relation => &self.recipient,
        }
    }

    /// The other user of the conversation.
    pub fn peer(&self) -> &UserId {
        match self.side {
            RemoteSide::Sender => &self.recipient,
            RemoteSide::Recipient | RemoteSide::Relation => &self.sender,
        }
    }

    /// The relation rows of `user` about `peer` (`rows`: kind, since ms, note) as of `version`
    /// (the pair's version at the deciding node: its clock, and always above the previous one;
    /// carried in `time_ms`); `notice` says what `user`'s devices are told (by `peer`):
    /// [`RelationNotice`]. Fields that have no meaning here are zero.
    pub fn relation(
        user: &UserId,
        peer: &UserId,
        rows: &[RelationRow],
        notice: RelationNotice,
        version: u64,
    ) -> RemoteWrite {
        let mut body = vec![rows.len() as u8];
        for (kind, since, note) in rows {
            body.push(kind.0);
            body.extend_from_slice(&since.to_be_bytes());
            let note = &note.as_bytes()[..note.len().min(u16::MAX as usize)];
            body.extend_from_slice(&(note.len() as u16).to_be_bytes());
            body.extend_from_slice(note);
        }
        RemoteWrite {
            side: RemoteSide::Relation,
            sender: peer.clone(),
            // A constant: a relation write comes from no device.
            sender_device: DeviceId::new("-").unwrap_or_else(|_| unreachable!("a valid id")),
            recipient: user.clone(),
            client_msg_id: ClientMsgId([0; 16]),
            conv_seq: Seq(0),
            time_ms: version,
            kind: MessageKind(notice as u8),
            body,
        }
    }

    /// The rows and notice of a relation write (`None` if its body is malformed).
    pub fn relation_rows(&self) -> Option<(Vec<RelationRow>, RelationNotice)> {
        let (&count, mut rest) = self.body.split_first()?;
        let mut rows = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let (&kind, r) = rest.split_first()?;
            let since = u64::from_be_bytes(r.get(..8)?.try_into().ok()?);
            let len = usize::from(u16::from_be_bytes(r.get(8..10)?.try_into().ok()?));
            let note = String::from_utf8(r.get(10..10 + len)?.to_vec()).ok()?;
            rest = &r[10 + len..];
            rows.push((RelationKind(kind), since, note));
        }
        let notice = match self.kind.0 {
            0 => RelationNotice::None,
            1 => RelationNotice::Requested,
            2 => RelationNotice::Befriended,
            _ => return None,
        };
        Some((rows, notice))
    }
}

/// What a relation change of which one user another node serves did: the outcome, and that
/// user's rows about the other as they are now, and the pair's version (see
/// [`RemoteWrite::relation`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedRelation {
    pub outcome: crate::types::RelationOutcome,
    pub rows: Vec<RelationRow>,
    pub version: u64,
}

/// One relation row of a user about another: kind, since (ms), note.
pub type RelationRow = (RelationKind, u64, String);

/// What a relation write tells the devices of the user whose rows it sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationNotice {
    None = 0,
    /// The peer asked to be friends (the note is the PENDING row's).
    Requested = 1,
    /// The two became friends.
    Befriended = 2,
}

/// A durable outbox entry: a write owed to another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the outbox (the order of writing).
    pub seq: u64,
    /// The node that served the write's user when the entry was written (the one holding the
    /// user's data); opaque to the store.
    pub dest_node: String,
    /// When the entry was written, ms since the Unix epoch.
    pub created_ms: u64,
    pub write: RemoteWrite,
}

/// What applying a remote write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyResult {
    /// The entry's position in the user's inbox (for a duplicate: the original position, or
    /// zero when only the message row was left to recognise it by).
    pub inbox_seq: Seq,
    /// The write had been applied before; nothing was written.
    pub duplicate: bool,
}

/// `outbox` value.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct OutboxRecord {
    pub dest_node: String,
    pub side: u8,
    pub sender: String,
    pub sender_device: String,
    pub recipient: String,
    pub client_msg_id: [u8; 16],
    pub conv_seq: u64,
    pub time_ms: u64,
    pub kind: u8,
    pub body: Vec<u8>,
    pub created_ms: u64,
}

const _: () = assert!(std::mem::align_of::<ArchivedOutboxRecord>() == 1);

impl OutboxRecord {
    pub(crate) fn new(dest_node: &str, write: &RemoteWrite, created_ms: u64) -> OutboxRecord {
        OutboxRecord {
            dest_node: dest_node.to_owned(),
            side: write.side.code(),
            sender: write.sender.as_str().to_owned(),
            sender_device: write.sender_device.as_str().to_owned(),
            recipient: write.recipient.as_str().to_owned(),
            client_msg_id: write.client_msg_id.0,
            conv_seq: write.conv_seq.0,
            time_ms: write.time_ms,
            kind: write.kind.0,
            body: write.body.clone(),
            created_ms,
        }
    }
}

/// The `outbox` key of entry `seq`.
pub(crate) fn outbox_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn entry_from(key: &[u8], value: &[u8]) -> Result<OutboxEntry, EngineError> {
    let seq = key
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| bad(Cf::Outbox, "key is not a u64"))?;
    let r = access::<ArchivedOutboxRecord>(Cf::Outbox, value)?;
    let id = |s: &str| UserId::new(s).map_err(|e| bad(Cf::Outbox, e));
    Ok(OutboxEntry {
        seq,
        dest_node: r.dest_node.as_str().to_owned(),
        created_ms: r.created_ms.to_native(),
        write: RemoteWrite {
            side: RemoteSide::from_code(r.side).ok_or_else(|| bad(Cf::Outbox, "unknown side"))?,
            sender: id(r.sender.as_str())?,
            sender_device: DeviceId::new(r.sender_device.as_str())
                .map_err(|e| bad(Cf::Outbox, e))?,
            recipient: id(r.recipient.as_str())?,
            client_msg_id: ClientMsgId(r.client_msg_id),
            conv_seq: Seq(r.conv_seq.to_native()),
            time_ms: r.time_ms.to_native(),
            kind: MessageKind(r.kind),
            body: r.body.as_slice().to_vec(),
        },
    })
}

/// Up to `limit` outbox entries with a seq above `after`, in seq order.
pub(crate) fn outbox_page(
    engine: &impl KvEngine,
    after: u64,
    limit: usize,
) -> Result<Vec<OutboxEntry>, EngineError> {
    let Some(first) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let start = outbox_key(first);
    let mut out = Vec::new();
    engine.scan(
        Cf::Outbox,
        ScanRange {
            start: &start,
            end: None,
        },
        Direction::Forward,
        limit,
        &mut |k, v| {
            out.push(entry_from(k, v)?);
            Ok(())
        },
    )?;
    Ok(out)
}

/// The highest outbox seq in use (zero when the outbox is empty).
pub(crate) fn outbox_last(engine: &impl KvEngine) -> Result<u64, EngineError> {
    let mut last = 0;
    engine.scan(
        Cf::Outbox,
        ScanRange {
            start: &[],
            end: None,
        },
        Direction::Backward,
        1,
        &mut |k, _| {
            last = k
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| bad(Cf::Outbox, "key is not a u64"))?;
            Ok(())
        },
    )?;
    Ok(last)
}
