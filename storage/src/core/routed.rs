//! The writer's side of cross-node delivery (see the `remote` module): a one-to-one append of
//! which one user is served by another node, the application of such a half on the node
//! serving that user, and the removal of acknowledged outbox entries.
//!
//! A routed append is `append_direct` for one side: the conversation row, the local user's
//! inbox entry and counters, the dedup row (the remote side's inbox seq is zero: that node
//! assigns it) and, in the same batch, the remote side's half as an `outbox` row. The entries a
//! batch creates are handed to the driver with the batch (`take_outbox`), which passes them on
//! once the batch is durable, so a node sends only what it will still hold after a crash.

use std::mem;

use crate::engine::{Cf, KvEngine};
use crate::error::OpError;
use crate::ids::{MessageFlags, MessageKind, Seq, UserId};
use crate::keys::{self, decode_conv};
use crate::records::{
    access, bad, ArchivedMessageRecord, DedupRecordRef, MessageRecord, MessageRecordRef,
};
use crate::remote::{outbox_key, ApplyResult, OutboxEntry, OutboxRecord, RemoteSide, RemoteWrite};
use crate::types::{AppendResult, DirectMessage};

use super::{PendingAppend, WriterCore};

/// The writer's outbox state.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// The last outbox seq assigned (loaded on first use).
    last: Option<u64>,
    /// Entries added to the open batch.
    created: Vec<OutboxEntry>,
    /// While a routed relation change runs: the relation rows it writes (`None`: deleted), so
    /// that the other node's user's rows can be sent on (`relations` module).
    pub(super) relation_log: Option<Vec<RelationLogEntry>>,
}

/// A relation row written by a change: user, kind, other, and since/note (`None`: deleted).
pub(super) type RelationLogEntry = (UserId, u8, UserId, Option<(u64, String)>);

impl<E: KvEngine> WriterCore<E> {
    /// Takes the outbox entries the batch just sealed created; hand them on once it is durable.
    pub(crate) fn take_outbox(&mut self) -> Vec<OutboxEntry> {
        mem::take(&mut self.outbox.created)
    }

    /// Forgets the outbox state of the open batch. The last seq assigned is kept: reloading
    /// it from the store would find the highest entry *still stored*, and entries above it
    /// that were acknowledged and deleted would have their seqs assigned again, which the
    /// link core (that saw those seqs already) would never load. A seq of a failed batch kept
    /// here only leaves a gap, which the link core reads over.
    pub(super) fn reset_outbox(&mut self) {
        let last = self.outbox.last;
        self.outbox = Outbox::default();
        self.outbox.last = last;
    }

    pub(super) fn outbox_last(&mut self) -> Result<u64, OpError> {
        if let Some(last) = self.outbox.last {
            return Ok(last);
        }
        let last = crate::remote::outbox_last(&*self.engine)?;
        self.outbox.last = Some(last);
        Ok(last)
    }

    /// The result first assigned to this (sender, client msg id), if any: from a batch in
    /// flight or from the dedup row.
    fn original(
        &mut self,
        sender_u: u32,
        sender: &UserId,
        id: crate::ids::ClientMsgId,
    ) -> Result<Option<AppendResult>, OpError> {
        if let Some(p) = self.pending_dedup.get(&(sender_u, id.0)) {
            let p = *p;
            let conv = decode_conv(self.convs.key(p.conv)).map_err(|e| bad(Cf::Messages, e))?;
            return Ok(Some(AppendResult {
                conv,
                conv_seq: p.conv_seq,
                sender_inbox_seq: p.sender_inbox_seq,
                recipient_inbox_seq: p.recipient_inbox_seq,
                time_ms: p.time_ms,
                duplicate: true,
            }));
        }
        let mut key = Vec::new();
        keys::dedup_key(&mut key, sender, id);
        Ok(self.stored_dedup(&key)?)
    }

    fn put_message(
        &mut self,
        conv_bytes: &[u8],
        seq: Seq,
        row: &MessageRecordRef<'_>,
    ) -> Result<(), OpError> {
        let mut key = mem::take(&mut self.k5);
        key.clear();
        key.extend_from_slice(conv_bytes);
        keys::put_seq(&mut key, seq);
        let r = self.put(Cf::Messages, &key, row);
        self.k5 = key;
        r
    }

    /// Stores a one-to-one message whose `remote` side another node serves (`dest_node`): see
    /// the module docs. A retransmission gets the original result and writes nothing.
    pub(super) fn append_routed(
        &mut self,
        msg: DirectMessage,
        remote: RemoteSide,
        dest_node: &str,
    ) -> Result<AppendResult, OpError> {
        if msg.kind.is_event() {
            return Err(OpError::Invalid("event kinds cannot be sent as messages"));
        }
        if msg.sender == msg.recipient {
            return Err(OpError::Invalid("a note to self has no remote side"));
        }
        if remote == RemoteSide::Relation {
            return Err(OpError::Invalid("a message's remote side is a user"));
        }
        let mut conv_bytes = Vec::new();
        keys::direct_prefix(&mut conv_bytes, &msg.sender, &msg.recipient);
        // Everything that can fail without harm (loads into the caches) comes first.
        let c = self.conv_slot(&conv_bytes)?;
        let links = self.direct_links(c, &conv_bytes, &msg.sender, &msg.recipient)?;
        let (s, r) = if msg.sender <= msg.recipient {
            (0, 1)
        } else {
            (1, 0)
        };
        let (sender_u, recipient_u) = (links.users[s], links.users[r]);
        if let Some(original) = self.original(sender_u, &msg.sender, msg.client_msg_id)? {
            return Ok(original);
        }
        // The recipient's relation rows: here when this node serves the recipient; otherwise
        // this node (which decides the pair's relation changes) holds a copy of the rows the
        // recipient has about the sender, so a block applies too (a "friends only" setting is
        // the recipient's node's alone and is not checked here).
        self.check_gate(recipient_u, &msg.recipient, &msg.sender)?;
        let (local_u, local_r) = match remote {
            RemoteSide::Sender => (recipient_u, links.recents[r]),
            RemoteSide::Recipient | RemoteSide::Relation => (sender_u, links.recents[s]),
        };
        let local_last = self.inbox_last(local_u)?;
        let local_total = match remote {
            RemoteSide::Sender => Some(self.total(local_u)?),
            RemoteSide::Recipient | RemoteSide::Relation => None,
        };
        self.outbox_last()?;

        let now = self.now;
        let conv_seq = self.convs.get(c).last.next();
        self.set_conv_last(c, conv_seq);
        self.put_message(
            &conv_bytes,
            conv_seq,
            &MessageRecordRef {
                sender: msg.sender.as_str(),
                sender_device: msg.sender_device.as_str(),
                client_msg_id: msg.client_msg_id.0,
                time_ms: now,
                kind: msg.kind.0,
                flags: MessageFlags::NONE.0,
                body: &msg.body,
            },
        )?;
        let inbox_seq = self.push_inbox(local_u, local_last, &conv_bytes, conv_seq)?;
        let (sender_inbox_seq, recipient_inbox_seq) = match remote {
            RemoteSide::Sender => (Seq::ZERO, inbox_seq),
            RemoteSide::Recipient | RemoteSide::Relation => (inbox_seq, Seq::ZERO),
        };
        let mut dedup_key = Vec::new();
        keys::dedup_key(&mut dedup_key, &msg.sender, msg.client_msg_id);
        self.put(
            Cf::Dedup,
            &dedup_key,
            &DedupRecordRef {
                conv: &conv_bytes,
                conv_seq: conv_seq.0,
                sender_inbox_seq: sender_inbox_seq.0,
                recipient_inbox_seq: recipient_inbox_seq.0,
                time_ms: now,
            },
        )?;
        let mut state = self.recent(local_r).unwrap_or_default();
        state.last_seq = conv_seq;
        state.last_time_ms = now;
        state.updated_ms = now;
        if let Some(total) = local_total {
            state.unread = state.unread.saturating_add(1);
            self.set_total(local_u, total + 1);
        }
        self.set_recent(local_r, state);

        self.put_outbox(dest_node, RemoteWrite::of(&msg, remote, conv_seq, now))?;
        Ok(self.appended_direct(
            msg,
            c,
            sender_u,
            [conv_seq, sender_inbox_seq, recipient_inbox_seq],
        ))
    }

    /// Adds `write` for node `dest_node` to the outbox in the open batch (call
    /// [`Self::outbox_last`] before the batch's first change, so that this cannot fail after it).
    pub(super) fn put_outbox(
        &mut self,
        dest_node: &str,
        write: RemoteWrite,
    ) -> Result<(), OpError> {
        let seq = self.outbox_last()? + 1;
        let now = self.now;
        self.put(
            Cf::Outbox,
            &outbox_key(seq),
            &OutboxRecord::new(dest_node, &write, now),
        )?;
        self.outbox.last = Some(seq);
        self.outbox.created.push(OutboxEntry {
            seq,
            dest_node: dest_node.to_owned(),
            created_ms: now,
            write,
        });
        Ok(())
    }

    /// Applies the half of a message another node stored: see the module docs. Idempotent by
    /// (sender, client msg id), and by the message row once the dedup row has expired.
    pub(super) fn apply_remote(&mut self, w: RemoteWrite) -> Result<ApplyResult, OpError> {
        if w.side == RemoteSide::Relation {
            return self.apply_relation(&w);
        }
        // A recall's half: the event, and the recalled message's copy flagged.
        let recalled = if w.kind == MessageKind::RECALL_EVENT {
            let seq = tern_protocol::wire::Reader::new(&w.body)
                .varint()
                .map_err(|_| OpError::Invalid("a recall event's body is the recalled seq"))?;
            Some(Seq(seq))
        } else if w.kind.is_event() {
            return Err(OpError::Invalid("event kinds are not applied remotely"));
        } else {
            None
        };
        if w.sender == w.recipient {
            return Err(OpError::Invalid("a note to self has no remote side"));
        }
        let side_seq = |sender: Seq, recipient: Seq| match w.side {
            RemoteSide::Sender => sender,
            RemoteSide::Recipient | RemoteSide::Relation => recipient,
        };
        let mut key = Vec::new();
        keys::user_key(&mut key, &w.sender);
        let sender_u = self.user_slot(&key);
        // The other side's inbox seq when only that side was applied here: a node that served
        // one user of the pair wrote zero for the other, and after a slot handoff both users
        // may be served here, so this side's half still applies (once: its seq is then set).
        let mut other_side = None;
        if let Some(original) = self.original(sender_u, &w.sender, w.client_msg_id)? {
            let mine = side_seq(original.sender_inbox_seq, original.recipient_inbox_seq);
            let theirs = match w.side {
                RemoteSide::Sender => original.recipient_inbox_seq,
                RemoteSide::Recipient | RemoteSide::Relation => original.sender_inbox_seq,
            };
            if mine != Seq::ZERO || theirs == Seq::ZERO || original.conv_seq != w.conv_seq {
                return Ok(ApplyResult {
                    inbox_seq: mine,
                    duplicate: true,
                });
            }
            other_side = Some(theirs);
        }
        let mut conv_bytes = Vec::new();
        keys::direct_prefix(&mut conv_bytes, &w.sender, &w.recipient);
        key.clear();
        key.extend_from_slice(&conv_bytes);
        keys::put_seq(&mut key, w.conv_seq);
        let row_here = self.engine.get_with(Cf::Messages, &key, |_| ())?.is_some();
        if row_here && other_side.is_none() {
            return Ok(ApplyResult {
                inbox_seq: Seq::ZERO,
                duplicate: true,
            });
        }
        let c = self.conv_slot(&conv_bytes)?;
        keys::user_key(&mut key, w.user());
        let u = self.user_slot(&key);
        key.extend_from_slice(&conv_bytes);
        let rslot = self.recent_slot(&key)?;
        let last = self.inbox_last(u)?;
        let total = match w.side {
            RemoteSide::Recipient => Some(self.total(u)?),
            RemoteSide::Sender | RemoteSide::Relation => None,
        };

        // This node keeps a copy of the conversation's rows, so it knows the last seq too.
        if self.convs.get(c).last < w.conv_seq {
            self.set_conv_last(c, w.conv_seq);
        }
        // A row already here (the other side's) may since have been flagged RECALLED.
        if !row_here {
            self.put_message(
                &conv_bytes,
                w.conv_seq,
                &MessageRecordRef {
                    sender: w.sender.as_str(),
                    sender_device: w.sender_device.as_str(),
                    client_msg_id: w.client_msg_id.0,
                    time_ms: w.time_ms,
                    kind: w.kind.0,
                    flags: MessageFlags::NONE.0,
                    body: &w.body,
                },
            )?;
        }
        // The copy of a recalled message, when it is here, reads as recalled.
        let mut recalled_was_unread = false;
        if let Some(seq) = recalled {
            key.clear();
            key.extend_from_slice(&conv_bytes);
            keys::put_seq(&mut key, seq);
            let copy = self
                .engine
                .get_with(Cf::Messages, &key, |v| {
                    access::<ArchivedMessageRecord>(Cf::Messages, v).map(|r| MessageRecord {
                        sender: r.sender.as_str().to_owned(),
                        sender_device: r.sender_device.as_str().to_owned(),
                        client_msg_id: r.client_msg_id,
                        time_ms: r.time_ms.to_native(),
                        kind: r.kind,
                        flags: r.flags,
                        body: r.body.as_slice().to_vec(),
                    })
                })?
                .transpose()?;
            if let Some(mut copy) = copy {
                if !MessageFlags(copy.flags).contains(MessageFlags::RECALLED) {
                    copy.flags |= MessageFlags::RECALLED.0;
                    recalled_was_unread = copy.sender != w.user().as_str();
                    self.put(Cf::Messages, &key, &copy)?;
                }
            }
        }
        let inbox_seq = self.push_inbox(u, last, &conv_bytes, w.conv_seq)?;
        let theirs = other_side.unwrap_or(Seq::ZERO);
        let (sender_inbox_seq, recipient_inbox_seq) = match w.side {
            RemoteSide::Sender => (inbox_seq, theirs),
            RemoteSide::Recipient | RemoteSide::Relation => (theirs, inbox_seq),
        };
        keys::dedup_key(&mut key, &w.sender, w.client_msg_id);
        self.put(
            Cf::Dedup,
            &key,
            &DedupRecordRef {
                conv: &conv_bytes,
                conv_seq: w.conv_seq.0,
                sender_inbox_seq: sender_inbox_seq.0,
                recipient_inbox_seq: recipient_inbox_seq.0,
                time_ms: w.time_ms,
            },
        )?;
        let mut state = self.recent(rslot).unwrap_or_default();
        // Halves of one conversation can arrive out of order (they come from the owner's
        // outbox and, for the sender's own messages, from the forwarding path).
        if w.conv_seq >= state.last_seq {
            state.last_seq = w.conv_seq;
            state.last_time_ms = w.time_ms;
        }
        state.updated_ms = self.now;
        match (total, recalled) {
            (Some(total), None) => {
                state.unread = state.unread.saturating_add(1);
                self.set_total(u, total + 1);
            }
            // The recalled message no longer counts as unread for whoever had not read it.
            (Some(total), Some(seq)) => {
                if recalled_was_unread && seq > state.read_seq && state.unread > 0 {
                    state.unread -= 1;
                    self.set_total(u, total.saturating_sub(1));
                }
            }
            (None, _) => {}
        }
        self.set_recent(rslot, state);
        self.pending_dedup.insert(
            (sender_u, w.client_msg_id.0),
            PendingAppend {
                conv: c,
                conv_seq: w.conv_seq,
                sender_inbox_seq,
                recipient_inbox_seq,
                time_ms: w.time_ms,
                gen: self.gen,
            },
        );
        Ok(ApplyResult {
            inbox_seq,
            duplicate: false,
        })
    }

    /// Removes acknowledged outbox entries.
    pub(super) fn outbox_done(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            self.batch.delete(Cf::Outbox, &outbox_key(seq));
        }
    }
}
