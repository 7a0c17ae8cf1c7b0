//! The writer's side of relations: applying a change to both users' rows in one batch, and the
//! check every one-to-one append passes before anything of it is written.
//!
//! # The gate
//! Whether a message from S to R may be stored depends on R's settings row (friends only) and on
//! the rows `R ‖ blocked ‖ S` and `R ‖ friend ‖ S`. The writer caches per recipient a [`Gate`]:
//! "friends only" exactly, and "may have blocks" conservatively (set by a block, or when a block
//! row existed at load; an unblock leaves it set). Since every relation change goes through this
//! writer, the cache is updated by the change itself and cannot be stale; an append reads a
//! relation row only when the gate says it might matter. A gate is loaded before the first change
//! that affects it, so a gate absent from the cache means no change to it is in flight and the
//! engine's rows are current.
//!
//! # Rows changed by batches in flight
//! A change or an append that must read rows of the same pair of users that a batch not yet
//! durable changed asks for a barrier (the rows are not readable before the batch is written).

use crate::engine::{Cf, EngineError, KvEngine};
use crate::error::OpError;
use crate::ids::Seq;
use crate::ids::UserId;
use crate::keys;
use crate::read;
use crate::records::{RelationRecord, RelationSettingsRecord};
use crate::remote::{ApplyResult, RelationNotice, RemoteWrite, RoutedRelation};
use crate::types::{DirectMessage, RelationChange, RelationKind, RelationOp, RelationOutcome};

use super::WriterCore;

/// What a one-to-one message to a user is checked against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Gate {
    /// Only friends may send the user messages.
    friends_only: bool,
    /// The user may block someone: check the sender's block row.
    may_block: bool,
}

/// The row (under a kind no list asks for) holding the version of the last relation write
/// applied for a pair (`apply_relation`): since = the version.
const VERSION: RelationKind = RelationKind(0x7F);

/// Every kind of row one user can hold about another.
const ALL_KINDS: [RelationKind; 6] = [
    RelationKind::FOLLOWING,
    RelationKind::FOLLOWER,
    RelationKind::FRIEND,
    RelationKind::BLOCKED,
    RelationKind::PENDING,
    RelationKind::REQUESTED,
];

impl<E: KvEngine> WriterCore<E> {
    /// Whether a relation row of `user` about `other` was changed by a batch not yet durable.
    fn relation_in_flight(&mut self, user: &UserId, kind: RelationKind, other: &UserId) -> bool {
        self.k5.clear();
        self.k5.push(Cf::Relations.index() as u8);
        let mut key = std::mem::take(&mut self.k4);
        keys::relation_key(&mut key, user, kind.0, other);
        self.k5.extend_from_slice(&key);
        self.k4 = key;
        self.touched
            .get(&self.k5)
            .is_some_and(|gen| *gen > self.durable)
    }

    /// Whether any relation row between `a` and `b` (either side) is in a batch not yet durable.
    pub(super) fn pair_in_flight(&mut self, a: &UserId, b: &UserId) -> bool {
        if self.touched.is_empty() {
            return false;
        }
        ALL_KINDS
            .into_iter()
            .any(|kind| self.relation_in_flight(a, kind, b) || self.relation_in_flight(b, kind, a))
    }

    /// Whether an append must wait for a barrier: the rows its check may read are in flight.
    pub(super) fn append_gate_in_flight(&mut self, msg: &DirectMessage) -> bool {
        if self.touched.is_empty() || msg.sender == msg.recipient {
            return false;
        }
        self.relation_in_flight(&msg.recipient, RelationKind::BLOCKED, &msg.sender)
            || self.relation_in_flight(&msg.recipient, RelationKind::FRIEND, &msg.sender)
    }

    /// The gate of the user in slot `u`, loaded on first use.
    fn gate(&mut self, u: u32) -> Result<Gate, EngineError> {
        if let Some(gate) = self.users.get(u).gate {
            return Ok(gate);
        }
        let user_key = self.users.key(u);
        let friends_only = read::friends_only_at(&*self.engine, user_key)?;
        let mut prefix = std::mem::take(&mut self.k4);
        prefix.clear();
        prefix.extend_from_slice(user_key);
        prefix.push(RelationKind::BLOCKED.0);
        let may_block = read::any_with_prefix(&*self.engine, Cf::Relations, &prefix);
        self.k4 = prefix;
        let gate = Gate {
            friends_only,
            may_block: may_block?,
        };
        self.users.get_mut(u).gate = Some(gate);
        Ok(gate)
    }

    /// The gate of `user`, by id.
    fn gate_of(&mut self, user: &UserId) -> Result<(u32, Gate), EngineError> {
        let mut key = std::mem::take(&mut self.k4);
        keys::user_key(&mut key, user);
        let u = self.user_slot(&key);
        self.k4 = key;
        Ok((u, self.gate(u)?))
    }

    /// Refuses a message from `sender` to `recipient` (slot `recipient_u`) that the recipient's
    /// relations do not let through.
    pub(super) fn check_gate(
        &mut self,
        recipient_u: u32,
        recipient: &UserId,
        sender: &UserId,
    ) -> Result<(), OpError> {
        let gate = self.gate(recipient_u)?;
        if gate.may_block
            && self
                .row(recipient, RelationKind::BLOCKED, sender)?
                .is_some()
        {
            return Err(OpError::Blocked);
        }
        if gate.friends_only && self.row(recipient, RelationKind::FRIEND, sender)?.is_none() {
            return Err(OpError::NotFriend);
        }
        Ok(())
    }

    /// A durable relation row: since ms and note.
    fn row(
        &mut self,
        user: &UserId,
        kind: RelationKind,
        other: &UserId,
    ) -> Result<Option<(u64, String)>, EngineError> {
        let mut key = std::mem::take(&mut self.k4);
        keys::relation_key(&mut key, user, kind.0, other);
        let r = read::relation_at(&*self.engine, &key);
        self.k4 = key;
        r
    }

    fn put_row(
        &mut self,
        user: &UserId,
        kind: RelationKind,
        other: &UserId,
        since_ms: u64,
        note: &str,
    ) -> Result<(), OpError> {
        let mut key = Vec::new();
        keys::relation_key(&mut key, user, kind.0, other);
        self.put(
            Cf::Relations,
            &key,
            &RelationRecord {
                since_ms,
                note: note.to_owned(),
            },
        )?;
        self.touch(Cf::Relations, &key);
        if let Some(log) = &mut self.outbox.relation_log {
            log.push((
                user.clone(),
                kind.0,
                other.clone(),
                Some((since_ms, note.to_owned())),
            ));
        }
        Ok(())
    }

    fn delete_row(&mut self, user: &UserId, kind: RelationKind, other: &UserId) {
        let mut key = Vec::new();
        keys::relation_key(&mut key, user, kind.0, other);
        self.batch.delete(Cf::Relations, &key);
        self.touch(Cf::Relations, &key);
        if let Some(log) = &mut self.outbox.relation_log {
            log.push((user.clone(), kind.0, other.clone(), None));
        }
    }

    /// A relation change of which one user (the actor when `actor_remote`, else the other) is
    /// served by node `dest`. This node decides every change of the pair (it serves the
    /// conversation's slot, so also sequences their messages) and keeps both users' rows about
    /// each other; the remote user's rows, as the change leaves them, go to `dest` through the
    /// outbox (`RemoteWrite::relation`), with the notice that user's devices get when it is the
    /// one asked or befriended.
    pub(super) fn relate_routed(
        &mut self,
        change: RelationChange,
        actor_remote: bool,
        dest: &str,
    ) -> Result<RoutedRelation, OpError> {
        let (remote, local) = if actor_remote {
            (change.user.clone(), change.other.clone())
        } else {
            (change.other.clone(), change.user.clone())
        };
        // Reads first: the remote user's rows before the change, the outbox seq.
        let mut rows = std::collections::BTreeMap::new();
        for kind in ALL_KINDS {
            if let Some(row) = self.row(&remote, kind, &local)? {
                rows.insert(kind.0, row);
            }
        }
        // The pair's version: strictly increasing here, so that the other node can tell a late
        // copy from a newer state even within one millisecond.
        let last = self.row(&remote, VERSION, &local)?.map_or(0, |(v, _)| v);
        self.outbox_last()?;
        self.outbox.relation_log = Some(Vec::new());
        let result = self.relate(change.clone());
        let log = self.outbox.relation_log.take().unwrap_or_default();
        let outcome = result?;
        for (user, kind, other, row) in log {
            if user == remote && other == local {
                match row {
                    Some(r) => rows.insert(kind, r),
                    None => rows.remove(&kind),
                };
            }
        }
        let rows: Vec<(RelationKind, u64, String)> = rows
            .into_iter()
            .map(|(k, (since, note))| (RelationKind(k), since, note))
            .collect();
        let version = if outcome.changed {
            self.now.max(last + 1)
        } else {
            last
        };
        if outcome.changed {
            self.put_row(&remote, VERSION, &local, version, "")?;
            // The notice goes to `change.other`: through the outbox only when it is remote.
            let notice = match (actor_remote, outcome.befriended, outcome.requested) {
                (true, _, _) => RelationNotice::None,
                (false, true, _) => RelationNotice::Befriended,
                (false, false, true) => RelationNotice::Requested,
                (false, false, false) => RelationNotice::None,
            };
            let write = RemoteWrite::relation(&remote, &local, &rows, notice, version);
            self.put_outbox(dest, write)?;
        }
        Ok(RoutedRelation {
            outcome,
            rows,
            version,
        })
    }

    /// Applies a relation write (`RemoteWrite::relation`): the user's rows about the peer
    /// become the given ones. A write whose version is not above the last one applied for the
    /// pair writes nothing (`duplicate`): the rows are a state, not a change, and the deciding
    /// node's versions only grow, so a repeat or a late copy is harmless.
    pub(super) fn apply_relation(&mut self, w: &RemoteWrite) -> Result<ApplyResult, OpError> {
        let (user, peer) = (&w.recipient, &w.sender);
        if user == peer {
            return Err(OpError::Invalid("a relation needs two different users"));
        }
        let (rows, _) = w
            .relation_rows()
            .ok_or(OpError::Invalid("malformed relation write"))?;
        let applied = self.row(user, VERSION, peer)?.map(|(v, _)| v);
        if applied.is_some_and(|v| v >= w.time_ms) {
            return Ok(ApplyResult {
                inbox_seq: Seq::ZERO,
                duplicate: true,
            });
        }
        // Loaded before the rows change (the gate reads the engine).
        let (u, gate) = self.gate_of(user)?;
        for kind in ALL_KINDS {
            match rows.iter().find(|(k, _, _)| *k == kind) {
                Some((_, since, note)) => self.put_row(user, kind, peer, *since, note)?,
                None => self.delete_row(user, kind, peer),
            }
        }
        self.put_row(user, VERSION, peer, w.time_ms, "")?;
        if rows.iter().any(|(k, _, _)| *k == RelationKind::BLOCKED) {
            self.users.get_mut(u).gate = Some(Gate {
                may_block: true,
                ..gate
            });
        }
        Ok(ApplyResult {
            inbox_seq: Seq::ZERO,
            duplicate: false,
        })
    }

    /// Applies a relation change. Every read happens before the first change to the batch, so a
    /// refused change writes nothing.
    pub(super) fn relate(&mut self, change: RelationChange) -> Result<RelationOutcome, OpError> {
        use RelationKind as K;
        let RelationChange {
            user: a,
            other: b,
            op,
        } = change;
        if a == b {
            return Err(OpError::Invalid("a relation needs two different users"));
        }
        let now = self.now;
        let mut out = RelationOutcome::default();
        match op {
            RelationOp::Follow => {
                if self.row(&b, K::BLOCKED, &a)?.is_some() {
                    return Err(OpError::Blocked);
                }
                if self.row(&a, K::FOLLOWING, &b)?.is_none() {
                    self.put_row(&a, K::FOLLOWING, &b, now, "")?;
                    self.put_row(&b, K::FOLLOWER, &a, now, "")?;
                    out.changed = true;
                }
            }
            RelationOp::Unfollow => {
                if self.row(&a, K::FOLLOWING, &b)?.is_some() {
                    self.delete_row(&a, K::FOLLOWING, &b);
                    self.delete_row(&b, K::FOLLOWER, &a);
                    out.changed = true;
                }
            }
            RelationOp::FriendRequest { note } => {
                if self.row(&b, K::BLOCKED, &a)?.is_some() {
                    return Err(OpError::Blocked);
                }
                if self.row(&a, K::BLOCKED, &b)?.is_some() {
                    return Err(OpError::NotAllowed("the user is blocked; unblock first"));
                }
                if self.row(&a, K::FRIEND, &b)?.is_some() {
                    return Ok(out);
                }
                if self.row(&a, K::PENDING, &b)?.is_some() {
                    // Both asked: that is consent on both sides.
                    self.befriend(&a, &b)?;
                    out.changed = true;
                    out.befriended = true;
                } else {
                    let since = self.row(&a, K::REQUESTED, &b)?.map(|(since, _)| since);
                    self.put_row(&a, K::REQUESTED, &b, since.unwrap_or(now), &note)?;
                    self.put_row(&b, K::PENDING, &a, since.unwrap_or(now), &note)?;
                    out.changed = true;
                    out.requested = since.is_none();
                }
            }
            RelationOp::FriendAccept => {
                if self.row(&a, K::PENDING, &b)?.is_none() {
                    return Err(OpError::NotFound("friend request"));
                }
                self.befriend(&a, &b)?;
                out.changed = true;
                out.befriended = true;
            }
            RelationOp::FriendDecline => {
                out.changed = self.drop_requests(&a, &b)?;
            }
            RelationOp::Unfriend => {
                if self.row(&a, K::FRIEND, &b)?.is_some() {
                    self.delete_row(&a, K::FRIEND, &b);
                    self.delete_row(&b, K::FRIEND, &a);
                    out.changed = true;
                }
            }
            RelationOp::Block => {
                // Load the gate before the block row exists in the batch: it is read from the
                // engine, which does not see the batch.
                let (u, gate) = self.gate_of(&a)?;
                let blocked = self.row(&a, K::BLOCKED, &b)?.is_some();
                let followed = self.row(&b, K::FOLLOWING, &a)?.is_some();
                let dropped = self.drop_requests(&a, &b)?;
                if !blocked {
                    self.put_row(&a, K::BLOCKED, &b, now, "")?;
                }
                if followed {
                    self.delete_row(&b, K::FOLLOWING, &a);
                    self.delete_row(&a, K::FOLLOWER, &b);
                }
                self.users.get_mut(u).gate = Some(Gate {
                    may_block: true,
                    ..gate
                });
                out.changed = !blocked || followed || dropped;
            }
            RelationOp::Unblock => {
                if self.row(&a, K::BLOCKED, &b)?.is_some() {
                    self.delete_row(&a, K::BLOCKED, &b);
                    out.changed = true;
                }
            }
        }
        Ok(out)
    }

    /// Writes the friendship and removes the requests between `a` and `b`.
    fn befriend(&mut self, a: &UserId, b: &UserId) -> Result<(), OpError> {
        self.drop_requests(a, b)?;
        let now = self.now;
        self.put_row(a, RelationKind::FRIEND, b, now, "")?;
        self.put_row(b, RelationKind::FRIEND, a, now, "")
    }

    /// Removes pending requests between `a` and `b` in both directions; whether there were any.
    fn drop_requests(&mut self, a: &UserId, b: &UserId) -> Result<bool, OpError> {
        // Both reads before either delete: a failed read must leave the batch untouched.
        let pending = [
            self.row(a, RelationKind::PENDING, b)?.is_some(),
            self.row(b, RelationKind::PENDING, a)?.is_some(),
        ];
        for ((asked, asker), pending) in [(a, b), (b, a)].into_iter().zip(pending) {
            if pending {
                self.delete_row(asked, RelationKind::PENDING, asker);
                self.delete_row(asker, RelationKind::REQUESTED, asked);
            }
        }
        Ok(pending[0] || pending[1])
    }

    /// Sets the user's "friends only" setting; whether it changed.
    pub(super) fn set_friends_only(&mut self, user: &UserId, on: bool) -> Result<bool, OpError> {
        let (u, gate) = self.gate_of(user)?;
        if gate.friends_only == on {
            return Ok(false);
        }
        let mut key = Vec::new();
        keys::user_key(&mut key, user);
        let rec = RelationSettingsRecord {
            friends_only: on,
            updated_ms: self.now,
        };
        self.put(Cf::Relations, &key, &rec)?;
        self.users.get_mut(u).gate = Some(Gate {
            friends_only: on,
            ..gate
        });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use crate::engine::KvEngine;
    use crate::error::OpError;
    use crate::ids::{ClientMsgId, ConvKey, DeviceId, MessageKind, Seq, UserId};
    use crate::mem::MemEngine;
    use crate::rocks::{RocksConfig, RocksEngine};
    use crate::store::{ManualClock, Store, StoreConfig};
    use crate::types::{
        AppendResult, DirectMessage, HistoryDirection, RelationChange, RelationKind, RelationOp,
        RelationOutcome,
    };

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn store<E: KvEngine>(engine: E) -> Store<E> {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        Store::open(engine, StoreConfig::default(), clock).unwrap()
    }

    fn change(u: &str, op: RelationOp, other: &str) -> RelationChange {
        RelationChange {
            user: user(u),
            other: user(other),
            op,
        }
    }

    fn relate<E: KvEngine>(
        s: &Store<E>,
        u: &str,
        op: RelationOp,
        other: &str,
    ) -> Result<RelationOutcome, OpError> {
        s.relate(change(u, op, other)).unwrap().wait()
    }

    fn msg(from: &str, to: &str, id: u8) -> DirectMessage {
        DirectMessage {
            sender: user(from),
            sender_device: DeviceId::new("d").unwrap(),
            recipient: user(to),
            client_msg_id: ClientMsgId([id; 16]),
            kind: MessageKind::TEXT,
            body: vec![id],
        }
    }

    fn send<E: KvEngine>(
        s: &Store<E>,
        from: &str,
        to: &str,
        id: u8,
    ) -> Result<AppendResult, OpError> {
        s.append_direct(msg(from, to, id)).unwrap().wait()
    }

    fn list<E: KvEngine>(s: &Store<E>, u: &str, kind: RelationKind) -> Vec<String> {
        s.relation_page(user(u), kind, None, 1000)
            .unwrap()
            .wait()
            .unwrap()
            .into_iter()
            .map(|r| r.other.as_str().to_owned())
            .collect()
    }

    /// Nothing of a conversation between `a` and `b` is stored anywhere.
    fn nothing_stored<E: KvEngine>(s: &Store<E>, a: &str, b: &str) {
        let conv = ConvKey::direct(&user(a), &user(b));
        let history = s
            .history(conv, Seq::MAX, HistoryDirection::Before, 10)
            .unwrap()
            .wait()
            .unwrap();
        assert!(history.is_empty(), "timeline rows: {history:?}");
        for u in [a, b] {
            let inbox = s
                .inbox_page(user(u), Seq::ZERO, 10)
                .unwrap()
                .wait()
                .unwrap();
            assert!(inbox.is_empty(), "inbox rows of {u}: {inbox:?}");
            let recent = s.recent(user(u), 10).unwrap().wait().unwrap();
            assert!(recent.conversations.is_empty(), "recent rows of {u}");
        }
    }

    #[test]
    fn a_block_queued_before_a_message_refuses_it_in_the_same_batch() {
        let s = store(MemEngine::new());
        // Submitted back to back, so the writer very likely takes both into one batch: the
        // append must see the block that is not yet written.
        let block = s.relate(change("bob", RelationOp::Block, "alice")).unwrap();
        let sent = s.append_direct(msg("alice", "bob", 1)).unwrap();
        assert!(block.wait().unwrap().changed);
        assert_eq!(sent.wait(), Err(OpError::Blocked));
        nothing_stored(&s, "alice", "bob");
        // The blocker may still write to the blocked user; the block is one-way.
        assert!(send(&s, "bob", "alice", 2).is_ok());
        // An unblock queued before the next message lets it through.
        let unblock = s
            .relate(change("bob", RelationOp::Unblock, "alice"))
            .unwrap();
        let sent = s.append_direct(msg("alice", "bob", 3)).unwrap();
        assert!(unblock.wait().unwrap().changed);
        assert!(sent.wait().is_ok());
    }

    #[test]
    fn a_retransmission_of_a_message_stored_before_the_block_gets_its_original_result() {
        let s = store(MemEngine::new());
        let first = send(&s, "alice", "bob", 1).unwrap();
        relate(&s, "bob", RelationOp::Block, "alice").unwrap();
        let again = send(&s, "alice", "bob", 1).unwrap();
        assert!(again.duplicate);
        assert_eq!(again.conv_seq, first.conv_seq);
        assert_eq!(send(&s, "alice", "bob", 2), Err(OpError::Blocked));
        let inbox = s
            .inbox_page(user("bob"), Seq::ZERO, 10)
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(inbox.len(), 1, "only the message from before the block");
    }

    #[test]
    fn friends_only_admits_friends_and_refuses_everyone_else() {
        let s = store(MemEngine::new());
        assert!(s
            .set_friends_only(user("bob"), true)
            .unwrap()
            .wait()
            .unwrap());
        assert!(!s
            .set_friends_only(user("bob"), true)
            .unwrap()
            .wait()
            .unwrap());
        assert!(s.friends_only(user("bob")).unwrap().wait().unwrap());
        assert_eq!(send(&s, "alice", "bob", 1), Err(OpError::NotFriend));
        nothing_stored(&s, "alice", "bob");
        // A note to self is never refused.
        assert!(send(&s, "bob", "bob", 2).is_ok());
        let asked = relate(
            &s,
            "alice",
            RelationOp::FriendRequest { note: "hi".into() },
            "bob",
        )
        .unwrap();
        assert!(asked.requested && !asked.befriended);
        assert_eq!(send(&s, "alice", "bob", 3), Err(OpError::NotFriend));
        let accepted = relate(&s, "bob", RelationOp::FriendAccept, "alice").unwrap();
        assert!(accepted.befriended);
        assert!(send(&s, "alice", "bob", 4).is_ok());
        relate(&s, "alice", RelationOp::Unfriend, "bob").unwrap();
        assert!(list(&s, "bob", RelationKind::FRIEND).is_empty());
        assert_eq!(send(&s, "alice", "bob", 5), Err(OpError::NotFriend));
        assert!(s
            .set_friends_only(user("bob"), false)
            .unwrap()
            .wait()
            .unwrap());
        assert!(send(&s, "alice", "bob", 6).is_ok());
        // A block wins over a friendship.
        relate(
            &s,
            "alice",
            RelationOp::FriendRequest {
                note: String::new(),
            },
            "bob",
        )
        .unwrap();
        relate(&s, "bob", RelationOp::FriendAccept, "alice").unwrap();
        relate(&s, "bob", RelationOp::Block, "alice").unwrap();
        assert_eq!(send(&s, "alice", "bob", 7), Err(OpError::Blocked));
        assert_eq!(list(&s, "bob", RelationKind::FRIEND), vec!["alice"]);
    }

    #[test]
    fn requests_accept_decline_and_the_rows_of_both_sides() {
        let s = store(MemEngine::new());
        assert_eq!(
            relate(&s, "a", RelationOp::Follow, "a"),
            Err(OpError::Invalid("a relation needs two different users"))
        );
        assert_eq!(
            relate(&s, "a", RelationOp::FriendAccept, "b"),
            Err(OpError::NotFound("friend request"))
        );
        let note = |n: &str| RelationOp::FriendRequest { note: n.into() };
        let first = relate(&s, "a", note("one"), "b").unwrap();
        assert!(first.requested);
        // Asking again changes the note but is not a new request.
        let again = relate(&s, "a", note("two"), "b").unwrap();
        assert!(!again.requested);
        let pending = s
            .relation_page(user("b"), RelationKind::PENDING, None, 10)
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(
            (pending[0].other.as_str(), pending[0].note.as_str()),
            ("a", "two")
        );
        assert_eq!(list(&s, "a", RelationKind::REQUESTED), vec!["b"]);
        // Declined: gone from both sides.
        assert!(
            relate(&s, "b", RelationOp::FriendDecline, "a")
                .unwrap()
                .changed
        );
        assert!(list(&s, "b", RelationKind::PENDING).is_empty());
        assert!(list(&s, "a", RelationKind::REQUESTED).is_empty());
        assert!(
            !relate(&s, "b", RelationOp::FriendDecline, "a")
                .unwrap()
                .changed
        );
        // Crossing requests make friends.
        relate(&s, "a", note(""), "b").unwrap();
        let crossed = relate(&s, "b", note(""), "a").unwrap();
        assert!(crossed.befriended);
        assert_eq!(list(&s, "a", RelationKind::FRIEND), vec!["b"]);
        assert_eq!(list(&s, "b", RelationKind::FRIEND), vec!["a"]);
        assert!(list(&s, "a", RelationKind::PENDING).is_empty());
        assert!(list(&s, "b", RelationKind::REQUESTED).is_empty());
        // Follows are one-way, listed on both sides; a block ends the blocked user's follow and
        // refuses new ones and requests.
        relate(&s, "c", RelationOp::Follow, "a").unwrap();
        relate(&s, "a", RelationOp::Follow, "c").unwrap();
        assert_eq!(list(&s, "a", RelationKind::FOLLOWER), vec!["c"]);
        relate(&s, "c", note("?"), "a").unwrap();
        relate(&s, "a", RelationOp::Block, "c").unwrap();
        assert!(list(&s, "a", RelationKind::FOLLOWER).is_empty());
        assert!(list(&s, "c", RelationKind::FOLLOWING).is_empty());
        assert!(list(&s, "a", RelationKind::PENDING).is_empty());
        assert_eq!(list(&s, "a", RelationKind::FOLLOWING), vec!["c"]);
        assert_eq!(list(&s, "a", RelationKind::BLOCKED), vec!["c"]);
        assert_eq!(
            relate(&s, "c", RelationOp::Follow, "a"),
            Err(OpError::Blocked)
        );
        assert_eq!(relate(&s, "c", note(""), "a"), Err(OpError::Blocked));
        assert!(matches!(
            relate(&s, "a", note(""), "c"),
            Err(OpError::NotAllowed(_))
        ));
    }

    #[test]
    fn lists_page_after_a_cursor_without_gaps_or_repeats() {
        let s = store(MemEngine::new());
        let names: Vec<String> = (0..23).map(|i| format!("fan{i:02}")).collect();
        for n in &names {
            relate(&s, n, RelationOp::Follow, "star").unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..10 {
            let page = s
                .relation_page(user("star"), RelationKind::FOLLOWER, after.clone(), 5)
                .unwrap()
                .wait()
                .unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|r| r.other.clone());
            seen.extend(page.into_iter().map(|r| r.other.as_str().to_owned()));
        }
        assert_eq!(seen, names);
    }

    #[test]
    fn relations_and_the_setting_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap();
            let s = store(engine);
            relate(&s, "bob", RelationOp::Block, "mallory").unwrap();
            s.set_friends_only(user("bob"), true)
                .unwrap()
                .wait()
                .unwrap();
            relate(
                &s,
                "alice",
                RelationOp::FriendRequest {
                    note: String::new(),
                },
                "bob",
            )
            .unwrap();
            relate(&s, "bob", RelationOp::FriendAccept, "alice").unwrap();
        }
        let engine = RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap();
        let s = store(engine);
        // The writer's gate is loaded from disk after the reopen.
        assert_eq!(send(&s, "mallory", "bob", 1), Err(OpError::Blocked));
        assert_eq!(send(&s, "carol", "bob", 2), Err(OpError::NotFriend));
        assert!(send(&s, "alice", "bob", 3).is_ok());
        assert_eq!(list(&s, "bob", RelationKind::BLOCKED), vec!["mallory"]);
        assert_eq!(list(&s, "alice", RelationKind::FRIEND), vec!["bob"]);
    }
}
