//! The timeline rules of the write path, written once against [`KvEngine`]: key layouts, sequence
//! allocation, de-duplication, unread counters. Run by the single writer thread; no clock, no
//! threads, no I/O of its own beyond the engine.
//!
//! # Why a single writer
//! Every write goes through one [`WriterCore`], which owns the only mutable copy of the counters it
//! caches (last seq per timeline, unread per conversation and per user, device positions). A
//! read-modify-write of an unread counter therefore cannot race with another one; a RocksDB merge
//! operator would also avoid lost updates, but the writer needs the resulting values anyway (to
//! return sequences, to decrement totals by the exact amount a mark-read clears), and a merge
//! operator would push that arithmetic into compaction callbacks with no way to report it back.
//!
//! # Batches
//! The driver calls [`begin`](WriterCore::begin) with the time, [`apply`](WriterCore::apply) for
//! each queued operation, [`seal`](WriterCore::seal) (which adds each counter row changed in the
//! batch once, with its final value) and [`take`](WriterCore::take)s the batch to a committer
//! thread, which writes it and completes the callers while the next batch is being built.
//! Within and across batches every operation sees the ones before it: the caches hold the newest
//! values, and `pending_dedup` holds the results of appends whose batches are not yet known
//! durable, so two transmissions of one client msg id get one message even if the first is
//! still in flight. The rare operations that must *read rows* written by a batch that may still
//! be in flight (a recall of a recent message, a partial mark-read recount, group edits) ask for
//! a barrier: `apply` hands the operation back, the driver drains the pipeline and re-applies it
//! in a fresh batch.
//!
//! # Failures
//! An operation that fails before changing anything (not found, not allowed, a failed read) fails
//! alone. A failure after it started changing the batch poisons the batch: it is not written,
//! every operation in it fails, and once the pipeline is drained the caches are dropped and
//! reloaded from what is durable. A failed write fails its batch and every batch built after it
//! on the same caches; the writer then drops its caches before building more.

mod group_recall;
mod groups;
mod handoff;
mod push;

pub(crate) use groups::{mention_all_key, mention_key};
mod relations;
mod routed;
mod topics;

use std::collections::HashMap;
use std::mem;
use std::sync::Arc;

use crate::engine::{Cf, Direction, EngineError, KvEngine, ScanRange, WriteBatch};
use crate::error::OpError;
use crate::ids::{ConvKey, DeviceId, DirectPair, GroupId, MessageFlags, MessageKind, Seq, UserId};
use crate::keys::{self, decode_conv};
use crate::read::{self, group_from, last_seq_in};
use crate::records::{
    access, bad, dedup_time_of, encode, inbox_time_of, ArchivedCursorRecord, ArchivedDedupRecord,
    ArchivedGroupRecord, ArchivedMemberRecord, ArchivedMessageRecord, ArchivedPositionRecord,
    ArchivedRecentRecord, ArchivedTotalUnreadRecord, CursorRecord, DedupRecordRef, GroupRecord,
    InboxHeadRecord, InboxRecordRef, MemberOfRecord, MemberRecord, MessageRecord, MessageRecordRef,
    PositionRecord, RecentRecord, TotalUnreadRecord,
};
use crate::remote::{ApplyResult, RemoteSide, RemoteWrite, RoutedRelation};
use crate::types::{
    AppendResult, CursorUpdate, DevicePosition, DirectMessage, GroupAppendResult, GroupCursor,
    GroupInfo, GroupLimits, GroupMessage, GroupOutcome, GroupRequest, GroupUpdate, MarkRead,
    Member, MemberUpdate, PositionUpdate, ReadState, Recall, RecallResult, RelationChange,
    RelationOutcome,
};

/// Where a write operation's result goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, OpError>>;

/// A write operation queued for the writer thread.
#[derive(Debug)]
pub(crate) enum WriteCmd {
    AppendDirect(DirectMessage, Reply<AppendResult>),
    UpdatePosition(PositionUpdate, Reply<DevicePosition>),
    MarkRead(MarkRead, Reply<ReadState>),
    Recall(Recall, Reply<RecallResult>),
    /// A recall in a group (`group_recall` module).
    RecallGroup(Recall, Reply<GroupAppendResult>),
    PutGroup(GroupUpdate, Reply<GroupInfo>),
    PutMember(MemberUpdate, Reply<Member>),
    RemoveMember(GroupId, UserId, Reply<bool>),
    PutCursor(CursorUpdate, Reply<GroupCursor>),
    Relate(RelationChange, Reply<RelationOutcome>),
    SetFriendsOnly(UserId, bool, Reply<bool>),
    /// A device's push token or a user's conversation mute (`push` module).
    SetPush(crate::push::PushSetting, Reply<()>),
    /// A group change with its checks and event (`groups` module).
    Group(GroupRequest, Reply<GroupOutcome>),
    /// A group message.
    AppendGroup(GroupMessage, Reply<GroupAppendResult>),
    /// A device's SYNC positions in read-diffused groups.
    GroupPositions(UserId, DeviceId, Vec<(GroupId, Seq)>, Reply<()>),
    /// Subscribe (with the limits to check) or unsubscribe (`None`) a user (`topics` module).
    TopicSub(
        crate::ids::TopicId,
        UserId,
        Option<crate::topics::TopicLimits>,
        Reply<bool>,
    ),
    /// A topic message.
    AppendTopic(
        crate::topics::TopicMessage,
        Reply<crate::topics::TopicAppendResult>,
    ),
    /// A device's SYNC positions in its topics.
    TopicPositions(UserId, DeviceId, Vec<(crate::ids::TopicId, Seq)>, Reply<()>),
    /// A one-to-one append whose given side another node (named) serves (`routed` module).
    AppendRouted(DirectMessage, RemoteSide, String, Reply<AppendResult>),
    /// The half of a message another node stored, for a user this node serves.
    ApplyRemote(RemoteWrite, Reply<ApplyResult>),
    /// A one-to-one recall whose given side another node (named) serves (`routed` module).
    RecallRouted(Recall, RemoteSide, String, Reply<RecallResult>),
    /// A relation change of which one user (the actor when `true`) is served by the named node
    /// (`relations` module).
    RelateRouted(RelationChange, bool, String, Reply<RoutedRelation>),
    /// Outbox entries the other node acknowledged.
    OutboxDone(Vec<u64>, Reply<()>),
    /// A slot handoff's rows and slot terms (`handoff` module).
    HandoffImport(
        Vec<crate::handoff::HandoffRow>,
        Vec<crate::handoff::SlotTerm>,
        Reply<()>,
    ),
}

/// A result waiting for its batch to be committed.
pub(crate) trait Complete: Send {
    /// Delivers the result, or the commit's failure for operations that had succeeded.
    fn complete(self: Box<Self>, commit: &Result<(), EngineError>);
}

struct Done<T> {
    tx: Reply<T>,
    result: Result<T, OpError>,
}

impl<T: Send> Complete for Done<T> {
    fn complete(self: Box<Self>, commit: &Result<(), EngineError>) {
        let result = match (commit, self.result) {
            (_, Err(e)) => Err(e),
            (Ok(()), Ok(v)) => Ok(v),
            (Err(e), Ok(_)) => Err(OpError::Engine(e.clone())),
        };
        // The caller may have given up waiting; that is its business.
        let _ = self.tx.send(result);
    }
}

fn done<T: Send + 'static>(tx: Reply<T>, result: Result<T, OpError>) -> Box<dyn Complete> {
    Box::new(Done { tx, result })
}

/// What [`WriterCore::apply`] did with an operation.
pub(crate) enum Applied {
    /// Added to the batch; complete it after the commit.
    Queued(Box<dyn Complete>),
    /// Needs a barrier: commit the batch, begin a new one, apply this again.
    Barrier(WriteCmd),
}

/// Limits and ages the core applies.
#[derive(Clone, Debug)]
pub(crate) struct CoreConfig {
    pub max_cached_entries: usize,
    pub inbox_max_age_ms: u64,
    pub dedup_window_ms: u64,
    pub groups: GroupLimits,
    /// Member limits of tenants that have their own (see [`crate::StoreConfig`]).
    pub tenant_group_max_members: std::collections::BTreeMap<String, u32>,
}

impl CoreConfig {
    /// The group limits of `group`: the node's, with its tenant's member limit when lower.
    pub(crate) fn group_limits(&self, group: &crate::ids::GroupId) -> GroupLimits {
        let mut limits = self.groups;
        if let Some(max) = group
            .tenant()
            .and_then(|t| self.tenant_group_max_members.get(t))
        {
            limits.max_members = limits.max_members.min(*max);
        }
        limits
    }
}

/// A conversation's cached state.
#[derive(Clone, Copy, Debug)]
struct ConvState {
    last: Seq,
    /// Generation of the batch that last appended to the conversation.
    dirty_gen: u64,
    /// For a one-to-one conversation that has had an append: its participants' user and recent
    /// slots (index 0 the lower id), so the next append finds them without hashing their keys.
    direct: Option<DirectLinks>,
}

#[derive(Clone, Copy, Debug)]
struct DirectLinks {
    users: [u32; 2],
    recents: [u32; 2],
}

/// A user's cached counters, each loaded on first use.
#[derive(Clone, Copy, Debug, Default)]
struct UserState {
    /// Last inbox seq assigned.
    head: Option<Seq>,
    /// Total unread.
    total: Option<u64>,
    /// Generations of the batches that last changed `head` and `total`.
    head_gen: u64,
    total_gen: u64,
    /// What a one-to-one message to the user must be checked against (`relations` module).
    gate: Option<relations::Gate>,
}

/// A cached recent-conversation row (`None`: no row yet).
#[derive(Clone, Copy, Debug)]
struct RecentSlot {
    state: Option<RecentState>,
    dirty_gen: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct RecentState {
    last_seq: Seq,
    last_time_ms: u64,
    unread: u32,
    read_seq: Seq,
    mentioned: bool,
    updated_ms: u64,
}

impl RecentState {
    fn record(&self) -> RecentRecord {
        RecentRecord {
            last_seq: self.last_seq.0,
            last_time_ms: self.last_time_ms,
            unread: self.unread,
            read_seq: self.read_seq.0,
            mentioned: self.mentioned,
            updated_ms: self.updated_ms,
        }
    }
}

/// A counter row changed in the open batch, by slot; `seal` writes each once.
#[derive(Clone, Copy, Debug)]
enum Dirty {
    InboxHead(u32),
    Total(u32),
    Recent(u32),
}

/// Keys interned to slot indices that stay valid until `clear`. The batch's dirty list and a
/// conversation's links to its participants are plain indices, so the write path hashes a key
/// once per operation instead of once per access, and `seal` hashes nothing.
struct Slab<T> {
    index: HashMap<Box<[u8]>, u32>,
    keys: Vec<Box<[u8]>>,
    values: Vec<T>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            index: HashMap::new(),
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    fn find(&self, key: &[u8]) -> Option<u32> {
        self.index.get(key).copied()
    }

    fn insert(&mut self, key: &[u8], value: T) -> u32 {
        // Bounded far below u32::MAX by `max_cached_entries` (the driver resets past it).
        let i = self.values.len() as u32;
        self.index.insert(key.into(), i);
        self.keys.push(key.into());
        self.values.push(value);
        i
    }

    fn key(&self, i: u32) -> &[u8] {
        &self.keys[i as usize]
    }

    fn get(&self, i: u32) -> &T {
        &self.values[i as usize]
    }

    fn get_mut(&mut self, i: u32) -> &mut T {
        &mut self.values[i as usize]
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn clear(&mut self) {
        self.index.clear();
        self.keys.clear();
        self.values.clear();
    }
}

/// [`WriterCore::dedup_check`]'s answer.
pub(super) struct DedupCheck {
    /// The sender's user slot.
    pub(super) user: u32,
    /// The `dedup` key (sender ‖ client message id).
    pub(super) key: Vec<u8>,
    /// What the earlier write with this key was given, if there was one.
    pub(super) earlier: Option<Earlier>,
}

/// What an earlier write with the same sender and client message id was given.
#[derive(Clone, Copy, Debug)]
pub(super) struct Earlier {
    pub(super) conv_seq: Seq,
    pub(super) sender_inbox_seq: Seq,
    pub(super) time_ms: u64,
}

/// An append whose batch is not yet known durable, by (sender's user slot, client msg id).
#[derive(Clone, Copy, Debug)]
struct PendingAppend {
    conv: u32,
    conv_seq: Seq,
    sender_inbox_seq: Seq,
    recipient_inbox_seq: Seq,
    time_ms: u64,
    gen: u64,
}

/// A participant's state loaded before a recall changes anything.
struct Peer {
    is_recaller: bool,
    user: u32,
    last: Seq,
    recent: u32,
    total: u64,
}

/// See the module docs.
pub(crate) struct WriterCore<E: KvEngine> {
    engine: Arc<E>,
    config: CoreConfig,
    batch: WriteBatch,
    /// Batch generation; starts at 1 so a cache entry's 0 means "not touched by any batch".
    gen: u64,
    now: u64,
    poisoned: Option<EngineError>,
    convs: Slab<ConvState>,
    users: Slab<UserState>,
    recents: Slab<RecentSlot>,
    /// Counter rows changed in this batch, written once each by `seal`.
    dirty: Vec<Dirty>,
    positions: HashMap<Vec<u8>, DevicePosition>,
    /// The outbox of cross-node writes (`routed` module).
    outbox: routed::Outbox,
    pending_dedup: HashMap<(u32, [u8; 16]), PendingAppend>,
    /// Groups touched so far (`groups` module).
    groups: HashMap<GroupId, groups::GroupState>,
    /// Topics and users' subscription counts loaded so far (`topics` module).
    topics: topics::TopicCache,
    /// `cf ‖ key` of rows in rarely written families changed by this batch.
    touched: HashMap<Vec<u8>, u64>,
    /// Every batch up to this generation has been written (or failed).
    durable: u64,
    /// The open batch holds a handoff import: nothing else joins it (`handoff` module).
    import_in_batch: bool,
    // Scratch buffers reused across operations.
    k1: Vec<u8>,
    k2: Vec<u8>,
    k3: Vec<u8>,
    k4: Vec<u8>,
    k5: Vec<u8>,
}

impl<E: KvEngine> std::fmt::Debug for WriterCore<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterCore")
            .field("gen", &self.gen)
            .field("now", &self.now)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl<E: KvEngine> WriterCore<E> {
    pub(crate) fn new(engine: Arc<E>, config: CoreConfig) -> Self {
        WriterCore {
            engine,
            config,
            batch: WriteBatch::new(),
            gen: 1,
            now: 0,
            poisoned: None,
            convs: Slab::new(),
            users: Slab::new(),
            recents: Slab::new(),
            dirty: Vec::new(),
            positions: HashMap::new(),
            outbox: routed::Outbox::default(),
            pending_dedup: HashMap::new(),
            touched: HashMap::new(),
            groups: HashMap::new(),
            topics: topics::TopicCache::default(),
            durable: 0,
            import_in_batch: false,
            k1: Vec::new(),
            k2: Vec::new(),
            k3: Vec::new(),
            k4: Vec::new(),
            k5: Vec::new(),
        }
    }

    /// Starts a batch at time `now_ms` (never earlier than the previous batch's time, so message
    /// times are monotonic per process even if the wall clock steps back). Also advances the
    /// expiry cutoffs.
    ///
    /// `durable` is the generation of the newest batch the committer has finished with: rows of
    /// later batches may not be readable yet, so the core keeps their effects in memory.
    pub(crate) fn begin(&mut self, now_ms: u64, durable: u64) {
        self.durable = durable;
        if self.import_in_batch && durable + 1 >= self.gen {
            self.import_in_batch = false;
        }
        if !self.pending_dedup.is_empty() {
            self.pending_dedup.retain(|_, p| p.gen > durable);
        }
        if !self.touched.is_empty() {
            self.touched.retain(|_, gen| *gen > durable);
        }
        self.now = self.now.max(now_ms);
        self.engine.set_expiry(
            Cf::Inbox,
            inbox_time_of,
            self.now.saturating_sub(self.config.inbox_max_age_ms),
        );
        self.engine.set_expiry(
            Cf::Dedup,
            dedup_time_of,
            self.now.saturating_sub(self.config.dedup_window_ms),
        );
    }

    /// The batch built so far.
    #[cfg(test)]
    pub(crate) fn batch(&self) -> &WriteBatch {
        &self.batch
    }

    /// Why the batch must not be written, if it must not.
    pub(crate) fn poisoned(&self) -> Option<&EngineError> {
        self.poisoned.as_ref()
    }

    /// Adds the counter rows changed in this batch (inbox heads, recent rows, unread totals),
    /// each once with its final value: under load many operations of one batch hit the same
    /// rows, and the batch is atomic, so intermediate values need not be written. Call once,
    /// right before writing the batch.
    pub(crate) fn seal(&mut self) {
        let dirty = if self.poisoned.is_some() {
            &[][..]
        } else {
            &self.dirty[..]
        };
        for &dirty in dirty {
            let result = match dirty {
                Dirty::InboxHead(u) => match self.users.get(u).head {
                    Some(last) => self.batch.put_with(Cf::Inbox, self.users.key(u), |b| {
                        encode(b, &InboxHeadRecord { last_seq: last.0 })
                    }),
                    None => Ok(()),
                },
                Dirty::Total(u) => match self.users.get(u).total {
                    Some(total) => self.batch.put_with(Cf::Recent, self.users.key(u), |b| {
                        encode(b, &TotalUnreadRecord { total })
                    }),
                    None => Ok(()),
                },
                Dirty::Recent(r) => match self.recents.get(r).state {
                    Some(state) => self.batch.put_with(Cf::Recent, self.recents.key(r), |b| {
                        encode(b, &state.record())
                    }),
                    None => Ok(()),
                },
            };
            if let Err(e) = result {
                self.poisoned.get_or_insert(e);
                break;
            }
        }
        self.dirty.clear();
    }

    /// The generation of the batch being built.
    pub(crate) fn gen(&self) -> u64 {
        self.gen
    }

    /// Hands the sealed batch to the driver (leaving `spare`, cleared, to build the next one in)
    /// and moves to the next generation.
    pub(crate) fn take(&mut self, mut spare: WriteBatch) -> WriteBatch {
        spare.clear();
        let batch = mem::replace(&mut self.batch, spare);
        self.dirty.clear();
        self.poisoned = None;
        self.gen += 1;
        batch
    }

    /// Entries cached; beyond the configured limit the driver drains the pipeline and calls
    /// [`reset`](Self::reset).
    pub(crate) fn over_cache_limit(&self) -> bool {
        let cached = self.convs.len()
            + self.users.len()
            + self.recents.len()
            + self.positions.len()
            + self.groups.len()
            + self.topics.len();
        cached > self.config.max_cached_entries
    }

    /// Forgets every cached and pending value, to be reloaded from the engine. Only correct when
    /// no batch is in flight (all written or failed).
    pub(crate) fn reset(&mut self) {
        self.convs.clear();
        self.users.clear();
        self.recents.clear();
        self.positions.clear();
        self.pending_dedup.clear();
        self.touched.clear();
        self.groups.clear();
        self.topics.clear();
        self.reset_outbox();
    }

    /// Single-threaded driving for tests: ends the batch after it was written (`committed`) or
    /// not.
    #[cfg(test)]
    pub(crate) fn finish(&mut self, committed: bool) {
        let gen = self.gen;
        self.take(WriteBatch::new());
        self.durable = gen;
        if !committed {
            self.reset();
        }
    }

    /// Applies one operation to the batch, or hands it back when it needs a barrier (commit the
    /// batch, `begin` a new one, apply again).
    pub(crate) fn apply(&mut self, cmd: WriteCmd) -> Applied {
        if self.poisoned.is_some() || self.import_in_batch {
            // Nothing more goes into a batch that will not be written, nor after an import.
            return Applied::Barrier(cmd);
        }
        Applied::Queued(match cmd {
            WriteCmd::AppendDirect(msg, tx) => {
                if self.append_gate_in_flight(&msg) {
                    return Applied::Barrier(WriteCmd::AppendDirect(msg, tx));
                }
                let r = self.append_direct(msg);
                done(tx, r)
            }
            WriteCmd::UpdatePosition(update, tx) => {
                let r = self.update_position(update);
                done(tx, r)
            }
            WriteCmd::MarkRead(req, tx) if matches!(req.conv, ConvKey::Group(_)) => {
                return self.apply_group_read(req, tx)
            }
            WriteCmd::MarkRead(req, tx) if matches!(req.conv, ConvKey::Topic(_)) => {
                return self.apply_topic_read(req, tx)
            }
            WriteCmd::MarkRead(req, tx) => match self.mark_read_needs_barrier(&req) {
                Ok(true) => return Applied::Barrier(WriteCmd::MarkRead(req, tx)),
                Ok(false) => {
                    let r = self.mark_read(req);
                    done(tx, r)
                }
                Err(e) => done(tx, Err(e.into())),
            },
            WriteCmd::Recall(req, tx) => {
                if self.conv_dirty(&req.conv) {
                    return Applied::Barrier(WriteCmd::Recall(req, tx));
                }
                let r = self.recall(req, None);
                done(tx, r)
            }
            WriteCmd::PutGroup(update, tx) => {
                keys::group_key(&mut self.k1, &update.id);
                if self.is_touched(Cf::Groups, 1) {
                    return Applied::Barrier(WriteCmd::PutGroup(update, tx));
                }
                self.forget_group(&update.id);
                let r = self.put_group(update);
                done(tx, r)
            }
            WriteCmd::PutMember(update, tx) => {
                keys::group_key(&mut self.k1, &update.group);
                keys::member_key(&mut self.k2, &update.group, &update.user);
                if self.is_touched(Cf::Groups, 1) || self.is_touched(Cf::Members, 2) {
                    return Applied::Barrier(WriteCmd::PutMember(update, tx));
                }
                self.forget_group(&update.group);
                let r = self.put_member(update);
                done(tx, r)
            }
            WriteCmd::RemoveMember(group, user, tx) => {
                keys::group_key(&mut self.k1, &group);
                keys::member_key(&mut self.k2, &group, &user);
                if self.is_touched(Cf::Groups, 1) || self.is_touched(Cf::Members, 2) {
                    return Applied::Barrier(WriteCmd::RemoveMember(group, user, tx));
                }
                self.forget_group(&group);
                let r = self.remove_member(&group, &user);
                done(tx, r)
            }
            WriteCmd::PutCursor(update, tx) => {
                keys::member_key(&mut self.k1, &update.group, &update.user);
                keys::group_key(&mut self.k2, &update.group);
                if self.is_touched(Cf::Cursors, 1) || self.is_touched(Cf::Groups, 2) {
                    return Applied::Barrier(WriteCmd::PutCursor(update, tx));
                }
                self.forget_group(&update.group);
                let group_key = self.k2.clone();
                // The group cache loads cursors: one changed behind it must not be read from
                // the engine before this batch is durable.
                self.touch(Cf::Groups, &group_key);
                let r = self.put_cursor(update);
                done(tx, r)
            }
            WriteCmd::Relate(change, tx) => {
                if self.pair_in_flight(&change.user, &change.other) {
                    return Applied::Barrier(WriteCmd::Relate(change, tx));
                }
                let r = self.relate(change);
                done(tx, r)
            }
            WriteCmd::SetFriendsOnly(user, on, tx) => {
                let r = self.set_friends_only(&user, on);
                done(tx, r)
            }
            WriteCmd::SetPush(setting, tx) => {
                let r = self.set_push(setting);
                done(tx, r)
            }
            cmd @ (WriteCmd::Group(..)
            | WriteCmd::AppendGroup(..)
            | WriteCmd::RecallGroup(..)
            | WriteCmd::GroupPositions(..)) => return self.apply_group(cmd),
            cmd @ (WriteCmd::TopicSub(..)
            | WriteCmd::AppendTopic(..)
            | WriteCmd::TopicPositions(..)) => return self.apply_topic(cmd),
            WriteCmd::AppendRouted(msg, remote, dest, tx) => {
                if self.append_gate_in_flight(&msg) {
                    return Applied::Barrier(WriteCmd::AppendRouted(msg, remote, dest, tx));
                }
                let r = self.append_routed(msg, remote, &dest);
                done(tx, r)
            }
            WriteCmd::ApplyRemote(write, tx)
                if write.side == RemoteSide::Relation
                    && self.pair_in_flight(&write.recipient, &write.sender) =>
            {
                return Applied::Barrier(WriteCmd::ApplyRemote(write, tx));
            }
            WriteCmd::RelateRouted(change, actor_remote, dest, tx) => {
                if self.pair_in_flight(&change.user, &change.other) {
                    return Applied::Barrier(WriteCmd::RelateRouted(
                        change,
                        actor_remote,
                        dest,
                        tx,
                    ));
                }
                let r = self.relate_routed(change, actor_remote, &dest);
                done(tx, r)
            }
            WriteCmd::ApplyRemote(write, tx) => {
                // A recall's half reads the recalled message's row.
                if write.kind == MessageKind::RECALL_EVENT
                    && self.conv_dirty(&ConvKey::Direct(DirectPair::new(
                        write.sender.clone(),
                        write.recipient.clone(),
                    )))
                {
                    return Applied::Barrier(WriteCmd::ApplyRemote(write, tx));
                }
                let r = self.apply_remote(write);
                done(tx, r)
            }
            WriteCmd::RecallRouted(_, RemoteSide::Relation, _, tx) => done(
                tx,
                Err::<RecallResult, _>(OpError::Invalid("a recall's remote side is a user")),
            ),
            WriteCmd::RecallRouted(req, remote, dest, tx) => {
                if self.conv_dirty(&req.conv) {
                    return Applied::Barrier(WriteCmd::RecallRouted(req, remote, dest, tx));
                }
                let r = self.recall(req, Some((remote, &dest)));
                done(tx, r)
            }
            WriteCmd::OutboxDone(seqs, tx) => {
                self.outbox_done(&seqs);
                done(tx, Ok(()))
            }
            WriteCmd::HandoffImport(rows, terms, tx) => {
                if !self.import_alone() {
                    return Applied::Barrier(WriteCmd::HandoffImport(rows, terms, tx));
                }
                let r = self.import(&rows, &terms);
                done(tx, r)
            }
        })
    }

    // ---- helpers -------------------------------------------------------------------------

    /// Whether the key in scratch buffer `k` (1 or 2) of family `cf` was changed in this batch.
    fn is_touched(&mut self, cf: Cf, k: u8) -> bool {
        let key = if k == 1 { &self.k1 } else { &self.k2 };
        self.k5.clear();
        self.k5.push(cf.index() as u8);
        self.k5.extend_from_slice(key);
        self.touched
            .get(&self.k5)
            .is_some_and(|gen| *gen > self.durable)
    }

    fn touch(&mut self, cf: Cf, key: &[u8]) {
        let mut tagged = Vec::with_capacity(key.len() + 1);
        tagged.push(cf.index() as u8);
        tagged.extend_from_slice(key);
        self.touched.insert(tagged, self.gen);
    }

    fn conv_dirty(&mut self, conv: &ConvKey) -> bool {
        keys::conv_prefix(&mut self.k5, conv);
        self.convs
            .find(&self.k5)
            .is_some_and(|c| self.convs.get(c).dirty_gen > self.durable)
    }

    /// Records a failure that happened after the batch was changed.
    fn poison(&mut self, e: EngineError) -> OpError {
        self.poisoned.get_or_insert_with(|| e.clone());
        OpError::Engine(e)
    }

    fn put<T>(&mut self, cf: Cf, key: &[u8], value: &T) -> Result<(), OpError>
    where
        T: for<'a, 'b> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                &'b mut Vec<u8>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    {
        match self.batch.put_with(cf, key, |buf| encode(buf, value)) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.poison(e)),
        }
    }

    /// The slot of the conversation whose `messages` prefix is `conv_bytes`, loading its last
    /// seq on first use.
    fn conv_slot(&mut self, conv_bytes: &[u8]) -> Result<u32, EngineError> {
        if let Some(c) = self.convs.find(conv_bytes) {
            return Ok(c);
        }
        let last = last_seq_in(&*self.engine, Cf::Messages, conv_bytes)?;
        let state = ConvState {
            last,
            dirty_gen: 0,
            direct: None,
        };
        Ok(self.convs.insert(conv_bytes, state))
    }

    fn set_conv_last(&mut self, c: u32, last: Seq) {
        let gen = self.gen;
        let conv = self.convs.get_mut(c);
        conv.last = last;
        conv.dirty_gen = gen;
    }

    /// The slot of the user whose bare key is `user_key` (counters load on first use).
    fn user_slot(&mut self, user_key: &[u8]) -> u32 {
        match self.users.find(user_key) {
            Some(u) => u,
            None => self.users.insert(user_key, UserState::default()),
        }
    }

    fn inbox_last(&mut self, u: u32) -> Result<Seq, EngineError> {
        if let Some(last) = self.users.get(u).head {
            return Ok(last);
        }
        let user_key = self.users.key(u);
        // Entries expire, so the head row (never expired) is what keeps seqs from being reused.
        let last = read::inbox_head_at(&*self.engine, user_key)?;
        self.users.get_mut(u).head = Some(last);
        Ok(last)
    }

    /// Appends an inbox entry after `last` for user slot `u` and returns its seq.
    fn push_inbox(
        &mut self,
        u: u32,
        last: Seq,
        conv_bytes: &[u8],
        conv_seq: Seq,
    ) -> Result<Seq, OpError> {
        let seq = last.next();
        let mut key = mem::take(&mut self.k5);
        key.clear();
        key.extend_from_slice(self.users.key(u));
        keys::put_seq(&mut key, seq);
        let rec = InboxRecordRef {
            conv: conv_bytes,
            conv_seq: conv_seq.0,
            time_ms: self.now,
        };
        let r = self.put(Cf::Inbox, &key, &rec);
        self.k5 = key;
        r?;
        let gen = self.gen;
        let user = self.users.get_mut(u);
        user.head = Some(seq);
        if user.head_gen != gen {
            user.head_gen = gen;
            self.dirty.push(Dirty::InboxHead(u));
        }
        Ok(seq)
    }

    /// The slot of the recent row under `recent_key`, loading it on first use.
    fn recent_slot(&mut self, recent_key: &[u8]) -> Result<u32, EngineError> {
        if let Some(r) = self.recents.find(recent_key) {
            return Ok(r);
        }
        let state = self
            .engine
            .get_with(Cf::Recent, recent_key, |v| {
                access::<ArchivedRecentRecord>(Cf::Recent, v).map(|r| RecentState {
                    last_seq: Seq(r.last_seq.to_native()),
                    last_time_ms: r.last_time_ms.to_native(),
                    unread: r.unread.to_native(),
                    read_seq: Seq(r.read_seq.to_native()),
                    mentioned: r.mentioned,
                    updated_ms: r.updated_ms.to_native(),
                })
            })?
            .transpose()?;
        let slot = RecentSlot {
            state,
            dirty_gen: 0,
        };
        Ok(self.recents.insert(recent_key, slot))
    }

    fn recent(&self, r: u32) -> Option<RecentState> {
        self.recents.get(r).state
    }

    fn set_recent(&mut self, r: u32, state: RecentState) {
        let gen = self.gen;
        let slot = self.recents.get_mut(r);
        slot.state = Some(state);
        if slot.dirty_gen != gen {
            slot.dirty_gen = gen;
            self.dirty.push(Dirty::Recent(r));
        }
    }

    fn total(&mut self, u: u32) -> Result<u64, EngineError> {
        if let Some(total) = self.users.get(u).total {
            return Ok(total);
        }
        let total = self
            .engine
            .get_with(Cf::Recent, self.users.key(u), |v| {
                access::<ArchivedTotalUnreadRecord>(Cf::Recent, v).map(|r| r.total.to_native())
            })?
            .transpose()?
            .unwrap_or(0);
        self.users.get_mut(u).total = Some(total);
        Ok(total)
    }

    fn set_total(&mut self, u: u32, total: u64) {
        let gen = self.gen;
        let user = self.users.get_mut(u);
        user.total = Some(total);
        if user.total_gen != gen {
            user.total_gen = gen;
            self.dirty.push(Dirty::Total(u));
        }
    }

    // ---- operations ----------------------------------------------------------------------

    fn append_direct(&mut self, msg: DirectMessage) -> Result<AppendResult, OpError> {
        if msg.kind.is_event() {
            return Err(OpError::Invalid("event kinds cannot be sent as messages"));
        }
        let mut conv_bytes = mem::take(&mut self.k1);
        keys::direct_prefix(&mut conv_bytes, &msg.sender, &msg.recipient);
        let r = self.append_direct_inner(msg, &conv_bytes);
        self.k1 = conv_bytes;
        r
    }

    /// The user and recent slots of a one-to-one conversation's participants (lower id first).
    fn direct_links(
        &mut self,
        c: u32,
        conv_bytes: &[u8],
        a: &UserId,
        b: &UserId,
    ) -> Result<DirectLinks, EngineError> {
        if let Some(links) = self.convs.get(c).direct {
            return Ok(links);
        }
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let mut key = mem::take(&mut self.k2);
        let mut links = DirectLinks {
            users: [0; 2],
            recents: [0; 2],
        };
        let mut result = Ok(());
        for (i, user) in [low, high].into_iter().enumerate() {
            keys::user_key(&mut key, user);
            links.users[i] = self.user_slot(&key);
            key.extend_from_slice(conv_bytes);
            match self.recent_slot(&key) {
                Ok(r) => links.recents[i] = r,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.k2 = key;
        result?;
        self.convs.get_mut(c).direct = Some(links);
        Ok(links)
    }

    fn append_direct_inner(
        &mut self,
        msg: DirectMessage,
        conv_bytes: &[u8],
    ) -> Result<AppendResult, OpError> {
        // Everything that can fail without harm (loads into the caches) happens before the
        // first change to the batch.
        let c = self.conv_slot(conv_bytes)?;
        let links = self.direct_links(c, conv_bytes, &msg.sender, &msg.recipient)?;
        let (s, r) = if msg.sender <= msg.recipient {
            (0, 1)
        } else {
            (1, 0)
        };
        let (sender_u, recipient_u) = (links.users[s], links.users[r]);
        let (sender_r, recipient_r) = (links.recents[s], links.recents[r]);

        if let Some(p) = self.pending_dedup.get(&(sender_u, msg.client_msg_id.0)) {
            let p = *p;
            let conv = decode_conv(self.convs.key(p.conv)).map_err(|e| bad(Cf::Messages, e))?;
            return Ok(AppendResult {
                conv,
                conv_seq: p.conv_seq,
                sender_inbox_seq: p.sender_inbox_seq,
                recipient_inbox_seq: p.recipient_inbox_seq,
                time_ms: p.time_ms,
                duplicate: true,
            });
        }
        let mut dedup_key = mem::take(&mut self.k3);
        keys::dedup_key(&mut dedup_key, &msg.sender, msg.client_msg_id);
        let stored = self.stored_dedup(&dedup_key);
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                self.k3 = dedup_key;
                return Err(e.into());
            }
        };
        if let Some(original) = stored {
            self.k3 = dedup_key;
            return Ok(original);
        }
        //= SPEC.md#relations
        //# A SEND of a one-to-one message from S to R (R ≠ S) is refused, and nothing is stored
        if sender_u != recipient_u {
            if let Err(e) = self.check_gate(recipient_u, &msg.recipient, &msg.sender) {
                self.k3 = dedup_key;
                return Err(e);
            }
        }
        let r = self.append_new_direct(
            msg,
            c,
            conv_bytes,
            &dedup_key,
            [sender_u, recipient_u],
            [sender_r, recipient_r],
        );
        self.k3 = dedup_key;
        r
    }

    /// The rest of `append_direct` once the message is known not to be a retransmission.
    /// `users` and `recents` are the sender's and recipient's slots, in that order.
    fn append_new_direct(
        &mut self,
        msg: DirectMessage,
        c: u32,
        conv_bytes: &[u8],
        dedup_key: &[u8],
        [sender_u, recipient_u]: [u32; 2],
        [sender_r, recipient_r]: [u32; 2],
    ) -> Result<AppendResult, OpError> {
        let to_self = sender_u == recipient_u;
        let recipient_last = self.inbox_last(recipient_u)?;
        let sender_last = if to_self {
            recipient_last
        } else {
            self.inbox_last(sender_u)?
        };
        let recipient_total = if to_self { 0 } else { self.total(recipient_u)? };

        let now = self.now;
        let conv_seq = self.convs.get(c).last.next();
        self.set_conv_last(c, conv_seq);
        let mut key = mem::take(&mut self.k5);
        key.clear();
        key.extend_from_slice(conv_bytes);
        keys::put_seq(&mut key, conv_seq);
        let row = MessageRecordRef {
            sender: msg.sender.as_str(),
            sender_device: msg.sender_device.as_str(),
            client_msg_id: msg.client_msg_id.0,
            time_ms: now,
            kind: msg.kind.0,
            flags: MessageFlags::NONE.0,
            body: &msg.body,
        };
        let r = self.put(Cf::Messages, &key, &row);
        self.k5 = key;
        r?;

        let recipient_inbox_seq =
            self.push_inbox(recipient_u, recipient_last, conv_bytes, conv_seq)?;
        let sender_inbox_seq = if to_self {
            recipient_inbox_seq
        } else {
            self.push_inbox(sender_u, sender_last, conv_bytes, conv_seq)?
        };
        let dedup = DedupRecordRef {
            conv: conv_bytes,
            conv_seq: conv_seq.0,
            sender_inbox_seq: sender_inbox_seq.0,
            recipient_inbox_seq: recipient_inbox_seq.0,
            time_ms: now,
        };
        self.put(Cf::Dedup, dedup_key, &dedup)?;

        let mut state = self.recent(recipient_r).unwrap_or_default();
        state.last_seq = conv_seq;
        state.last_time_ms = now;
        state.updated_ms = now;
        if !to_self {
            state.unread = state.unread.saturating_add(1);
        }
        self.set_recent(recipient_r, state);
        if !to_self {
            self.set_total(recipient_u, recipient_total + 1);
            let mut state = self.recent(sender_r).unwrap_or_default();
            state.last_seq = conv_seq;
            state.last_time_ms = now;
            state.updated_ms = now;
            self.set_recent(sender_r, state);
        }

        Ok(self.appended_direct(
            msg,
            c,
            sender_u,
            [conv_seq, sender_inbox_seq, recipient_inbox_seq],
        ))
    }

    /// The result of a new one-to-one append, remembered until its batch is durable so that a
    /// retransmission in the meantime gets the same answer. `seqs`: the conversation's, the
    /// sender's inbox and the recipient's inbox sequences.
    fn appended_direct(
        &mut self,
        msg: DirectMessage,
        c: u32,
        sender_u: u32,
        [conv_seq, sender_inbox_seq, recipient_inbox_seq]: [Seq; 3],
    ) -> AppendResult {
        let now = self.now;
        self.pending_dedup.insert(
            (sender_u, msg.client_msg_id.0),
            PendingAppend {
                conv: c,
                conv_seq,
                sender_inbox_seq,
                recipient_inbox_seq,
                time_ms: now,
                gen: self.gen,
            },
        );
        AppendResult {
            conv: ConvKey::Direct(DirectPair::new(msg.sender, msg.recipient)),
            conv_seq,
            sender_inbox_seq,
            recipient_inbox_seq,
            time_ms: now,
            duplicate: false,
        }
    }

    fn update_position(&mut self, update: PositionUpdate) -> Result<DevicePosition, OpError> {
        let mut key = mem::take(&mut self.k1);
        keys::position_key(&mut key, &update.user, &update.device);
        let r = self.update_position_inner(&key, &update);
        self.k1 = key;
        r
    }

    fn update_position_inner(
        &mut self,
        key: &[u8],
        update: &PositionUpdate,
    ) -> Result<DevicePosition, OpError> {
        let current = match self.positions.get(key) {
            Some(p) => *p,
            None => self
                .engine
                .get_with(Cf::Positions, key, |v| {
                    access::<ArchivedPositionRecord>(Cf::Positions, v).map(|r| DevicePosition {
                        pulled: Seq(r.pulled.to_native()),
                        acked: Seq(r.acked.to_native()),
                        read: Seq(r.read.to_native()),
                        updated_ms: r.updated_ms.to_native(),
                    })
                })?
                .transpose()?
                .unwrap_or_default(),
        };
        let next = DevicePosition {
            pulled: current.pulled.max(update.pulled.unwrap_or(Seq::ZERO)),
            acked: current.acked.max(update.acked.unwrap_or(Seq::ZERO)),
            read: current.read.max(update.read.unwrap_or(Seq::ZERO)),
            updated_ms: self.now,
        };
        let rec = PositionRecord {
            pulled: next.pulled.0,
            acked: next.acked.0,
            read: next.read.0,
            updated_ms: next.updated_ms,
        };
        self.put(Cf::Positions, key, &rec)?;
        self.positions.insert(key.to_vec(), next);
        Ok(next)
    }

    fn mark_read_needs_barrier(&mut self, req: &MarkRead) -> Result<bool, EngineError> {
        if !self.conv_dirty(&req.conv) {
            return Ok(false);
        }
        keys::recent_key(&mut self.k4, &req.user, &req.conv);
        let key = mem::take(&mut self.k4);
        let slot = self.recent_slot(&key);
        self.k4 = key;
        // Only a partial read recounts rows, and only then must they be committed.
        Ok(self.recent(slot?).is_some_and(|s| req.up_to < s.last_seq))
    }

    /// Content messages from others, not recalled, in `(after, up_to]`.
    fn count_unread(
        &self,
        conv: &ConvKey,
        user: &UserId,
        after: Seq,
        up_to: Seq,
    ) -> Result<u32, EngineError> {
        let mut start = Vec::new();
        keys::message_key(&mut start, conv, after.next());
        let mut end = Vec::new();
        keys::message_key(&mut end, conv, up_to.next());
        let mut n = 0u32;
        self.engine.scan(
            Cf::Messages,
            ScanRange {
                start: &start,
                end: Some(&end),
            },
            Direction::Forward,
            usize::MAX,
            &mut |_, v| {
                let r = access::<ArchivedMessageRecord>(Cf::Messages, v)?;
                let counts = r.sender.as_str() != user.as_str()
                    && !MessageKind(r.kind).is_event()
                    && !MessageFlags(r.flags).contains(MessageFlags::RECALLED);
                n += u32::from(counts);
                Ok(())
            },
        )?;
        Ok(n)
    }

    fn mark_read(&mut self, req: MarkRead) -> Result<ReadState, OpError> {
        let mut recent_key = mem::take(&mut self.k4);
        let mut user_key = mem::take(&mut self.k2);
        keys::recent_key(&mut recent_key, &req.user, &req.conv);
        keys::user_key(&mut user_key, &req.user);
        let r = self.mark_read_inner(&req, &recent_key, &user_key);
        self.k4 = recent_key;
        self.k2 = user_key;
        r
    }

    fn mark_read_inner(
        &mut self,
        req: &MarkRead,
        recent_key: &[u8],
        user_key: &[u8],
    ) -> Result<ReadState, OpError> {
        let r = self.recent_slot(recent_key)?;
        let Some(mut state) = self.recent(r) else {
            return Err(OpError::NotFound("conversation"));
        };
        let u = self.user_slot(user_key);
        let total = self.total(u)?;
        let previous = state.read_seq;
        let read_seq = state.read_seq.max(req.up_to.min(state.last_seq));
        let unread = if read_seq >= state.last_seq {
            0
        } else {
            self.count_unread(&req.conv, &req.user, read_seq, state.last_seq)?
        };
        let total = (total + u64::from(unread)).saturating_sub(u64::from(state.unread));
        if read_seq != state.read_seq || unread != state.unread || state.mentioned {
            state.read_seq = read_seq;
            state.unread = unread;
            state.mentioned = false;
            state.updated_ms = self.now;
            self.set_recent(r, state);
            self.set_total(u, total);
        }
        Ok(ReadState {
            read_seq,
            unread,
            total_unread: total,
            previous_read_seq: previous,
        })
    }

    /// Looks up an earlier write by `sender` with client message id `id`, in the batch being
    /// built or stored: a retransmission is answered with what it was given and writes
    /// nothing. The user slot and dedup key come back for the write that records a new one.
    /// (One-to-one appends also need the recipient's side and read both maps themselves.)
    pub(super) fn dedup_check(
        &mut self,
        sender: &UserId,
        id: crate::ClientMsgId,
    ) -> Result<DedupCheck, EngineError> {
        let mut key = Vec::new();
        keys::user_key(&mut key, sender);
        let user = self.user_slot(&key);
        keys::dedup_key(&mut key, sender, id);
        let earlier = match self.pending_dedup.get(&(user, id.0)) {
            Some(p) => Some(Earlier {
                conv_seq: p.conv_seq,
                sender_inbox_seq: p.sender_inbox_seq,
                time_ms: p.time_ms,
            }),
            None => self.stored_dedup(&key)?.map(|r| Earlier {
                conv_seq: r.conv_seq,
                sender_inbox_seq: r.sender_inbox_seq,
                time_ms: r.time_ms,
            }),
        };
        Ok(DedupCheck { user, key, earlier })
    }

    /// The stored message at `key` (`conv ‖ seq` in `messages`), owned.
    pub(super) fn stored_message(&self, key: &[u8]) -> Result<Option<MessageRecord>, EngineError> {
        self.engine
            .get_with(
                Cf::Messages,
                key,
                |v| -> Result<MessageRecord, EngineError> {
                    let r = access::<ArchivedMessageRecord>(Cf::Messages, v)?;
                    Ok(MessageRecord {
                        sender: r.sender.as_str().to_owned(),
                        sender_device: r.sender_device.as_str().to_owned(),
                        client_msg_id: r.client_msg_id,
                        time_ms: r.time_ms.to_native(),
                        kind: r.kind,
                        flags: r.flags,
                        body: r.body.as_slice().to_vec(),
                    })
                },
            )
            .and_then(Option::transpose)
    }

    /// The result an earlier write with this dedup key (sender ‖ client message id) stored.
    fn stored_dedup(&self, key: &[u8]) -> Result<Option<AppendResult>, EngineError> {
        self.engine
            .get_with(Cf::Dedup, key, |v| -> Result<AppendResult, EngineError> {
                let r = access::<ArchivedDedupRecord>(Cf::Dedup, v)?;
                Ok(AppendResult {
                    conv: decode_conv(r.conv.as_slice()).map_err(|e| bad(Cf::Dedup, e))?,
                    conv_seq: Seq(r.conv_seq.to_native()),
                    sender_inbox_seq: Seq(r.sender_inbox_seq.to_native()),
                    recipient_inbox_seq: Seq(r.recipient_inbox_seq.to_native()),
                    time_ms: r.time_ms.to_native(),
                    duplicate: true,
                })
            })
            .and_then(Option::transpose)
    }

    /// A recall; with `remote`, that side's user (`Sender`: the recaller, `Recipient`: the
    /// other participant) is served by the named node and gets its half through the outbox.
    fn recall(
        &mut self,
        req: Recall,
        remote: Option<(RemoteSide, &str)>,
    ) -> Result<RecallResult, OpError> {
        let mut conv_bytes = mem::take(&mut self.k1);
        keys::conv_prefix(&mut conv_bytes, &req.conv);
        let r = self.recall_inner(&req, &conv_bytes, remote);
        self.k1 = conv_bytes;
        r
    }

    fn recall_inner(
        &mut self,
        req: &Recall,
        conv_bytes: &[u8],
        remote: Option<(RemoteSide, &str)>,
    ) -> Result<RecallResult, OpError> {
        // A recall is a barrier (applied after every earlier batch is durable), so the dedup
        // row of an earlier recall with this id is readable here.
        let mut dedup_key = Vec::new();
        keys::dedup_key(&mut dedup_key, &req.by, req.client_msg_id);
        if let Some(original) = self.stored_dedup(&dedup_key)? {
            return Ok(RecallResult {
                event_seq: original.conv_seq,
                time_ms: original.time_ms,
                by_inbox_seq: original.sender_inbox_seq,
                peer_inbox_seq: original.recipient_inbox_seq,
                duplicate: true,
            });
        }
        let mut key = conv_bytes.to_vec();
        keys::put_seq(&mut key, req.seq);
        let original = self
            .stored_message(&key)?
            .ok_or(OpError::NotFound("message"))?;
        if original.sender != req.by.as_str() {
            return Err(OpError::NotAllowed("only the sender may recall a message"));
        }
        if MessageKind(original.kind).is_event() {
            return Err(OpError::Invalid("events cannot be recalled"));
        }
        if MessageFlags(original.flags).contains(MessageFlags::RECALLED) {
            return Err(OpError::AlreadyRecalled);
        }
        if req.window_ms > 0 && self.now.saturating_sub(original.time_ms) > req.window_ms {
            return Err(OpError::RecallExpired);
        }

        // Loads first. Only one-to-one conversations have per-user inbox and recent rows today;
        // group timelines get theirs when group fan-out lands.
        let c = self.conv_slot(conv_bytes)?;
        let mut peers: Vec<Peer> = Vec::new();
        if let ConvKey::Direct(pair) = &req.conv {
            let users: &[&UserId] = if pair.low() == pair.high() {
                &[pair.low()]
            } else {
                &[pair.low(), pair.high()]
            };
            // The user another node serves has no rows here: its half goes to the outbox.
            let remote_user = remote.map(|(side, _)| match side {
                RemoteSide::Sender => &req.by,
                RemoteSide::Recipient | RemoteSide::Relation => {
                    pair.peer_of(&req.by).unwrap_or(pair.high())
                }
            });
            if remote.is_some() {
                self.outbox_last()?;
            }
            let mut key = Vec::new();
            for user in users {
                if Some(*user) == remote_user {
                    continue;
                }
                keys::user_key(&mut key, user);
                let u = self.user_slot(&key);
                let last = self.inbox_last(u)?;
                let total = self.total(u)?;
                key.extend_from_slice(conv_bytes);
                let recent = self.recent_slot(&key)?;
                peers.push(Peer {
                    is_recaller: **user == req.by,
                    user: u,
                    last,
                    recent,
                    total,
                });
            }
        }

        let now = self.now;
        let recalled = MessageRecord {
            flags: original.flags | MessageFlags::RECALLED.0,
            ..original
        };
        self.put(Cf::Messages, &key, &recalled)?;
        let event_seq = self.convs.get(c).last.next();
        self.set_conv_last(c, event_seq);
        key.truncate(conv_bytes.len());
        keys::put_seq(&mut key, event_seq);
        // The wire's body of a RECALL event: the recalled message's conv_seq as a varint.
        let event_body = {
            let mut b = Vec::with_capacity(10);
            tern_protocol::wire::put_varint(&mut b, req.seq.0);
            b
        };
        let event = MessageRecord {
            sender: req.by.as_str().to_owned(),
            sender_device: req.by_device.as_str().to_owned(),
            client_msg_id: req.client_msg_id.0,
            time_ms: now,
            kind: MessageKind::RECALL_EVENT.0,
            flags: 0,
            body: event_body.clone(),
        };
        self.put(Cf::Messages, &key, &event)?;
        let (mut by_inbox_seq, mut peer_inbox_seq) = (Seq(0), Seq(0));
        for Peer {
            is_recaller,
            user,
            last,
            recent,
            total,
        } in peers
        {
            let inbox_seq = self.push_inbox(user, last, conv_bytes, event_seq)?;
            if is_recaller {
                by_inbox_seq = inbox_seq;
            } else {
                peer_inbox_seq = inbox_seq;
            }
            let mut state = self.recent(recent).unwrap_or_default();
            state.last_seq = event_seq;
            state.last_time_ms = now;
            state.updated_ms = now;
            // The recalled message no longer counts as unread for whoever had not read it.
            if !is_recaller && req.seq > state.read_seq && state.unread > 0 {
                state.unread -= 1;
                self.set_total(user, total.saturating_sub(1));
            }
            self.set_recent(recent, state);
        }
        if let (Some((side, dest)), ConvKey::Direct(pair)) = (remote, &req.conv) {
            let peer = pair.peer_of(&req.by).unwrap_or(pair.high()).clone();
            self.put_outbox(
                dest,
                RemoteWrite {
                    side,
                    sender: req.by.clone(),
                    sender_device: req.by_device.clone(),
                    recipient: peer,
                    client_msg_id: req.client_msg_id,
                    conv_seq: event_seq,
                    time_ms: now,
                    kind: MessageKind::RECALL_EVENT,
                    body: event_body,
                },
            )?;
        } else if peer_inbox_seq == Seq(0) {
            peer_inbox_seq = by_inbox_seq;
        }
        let dedup = DedupRecordRef {
            conv: conv_bytes,
            conv_seq: event_seq.0,
            sender_inbox_seq: by_inbox_seq.0,
            recipient_inbox_seq: peer_inbox_seq.0,
            time_ms: now,
        };
        self.put(Cf::Dedup, &dedup_key, &dedup)?;
        Ok(RecallResult {
            event_seq,
            time_ms: now,
            by_inbox_seq,
            peer_inbox_seq,
            duplicate: false,
        })
    }

    fn put_group(&mut self, update: GroupUpdate) -> Result<GroupInfo, OpError> {
        let key = self.k1.clone();
        let existing = self
            .engine
            .get_with(Cf::Groups, &key, |v| {
                access::<ArchivedGroupRecord>(Cf::Groups, v).map(|r| {
                    (
                        r.member_count.to_native(),
                        r.created_ms.to_native(),
                        r.mode_since.to_native(),
                        r.read_until.to_native(),
                    )
                })
            })?
            .transpose()?;
        let (member_count, created_ms, mode_since, read_until) =
            existing.unwrap_or((0, self.now, 0, 0));
        let rec = GroupRecord {
            name: update.name,
            announcement: update.announcement,
            avatar: update.avatar,
            owner: update.owner.as_str().to_owned(),
            settings: update.settings,
            diffusion: update.diffusion.0,
            member_count,
            created_ms,
            updated_ms: self.now,
            mode_since,
            read_until,
        };
        self.put(Cf::Groups, &key, &rec)?;
        self.touch(Cf::Groups, &key);
        Ok(GroupInfo {
            id: update.id,
            name: rec.name,
            announcement: rec.announcement,
            avatar: rec.avatar,
            owner: update.owner,
            settings: rec.settings,
            diffusion: update.diffusion,
            member_count,
            created_ms,
            updated_ms: rec.updated_ms,
        })
    }

    fn load_group(
        &self,
        group: &GroupId,
        key: &[u8],
    ) -> Result<Option<(GroupInfo, GroupRecord)>, EngineError> {
        self.engine
            .get_with(Cf::Groups, key, |v| -> Result<_, EngineError> {
                let r = access::<ArchivedGroupRecord>(Cf::Groups, v)?;
                let info = group_from(group.clone(), r)?;
                let rec = GroupRecord {
                    name: info.name.clone(),
                    announcement: info.announcement.clone(),
                    avatar: info.avatar.clone(),
                    owner: info.owner.as_str().to_owned(),
                    settings: info.settings,
                    diffusion: info.diffusion.0,
                    member_count: info.member_count,
                    created_ms: info.created_ms,
                    updated_ms: info.updated_ms,
                    mode_since: r.mode_since.to_native(),
                    read_until: r.read_until.to_native(),
                };
                Ok((info, rec))
            })?
            .transpose()
    }

    fn put_member(&mut self, update: MemberUpdate) -> Result<Member, OpError> {
        let group_key = self.k1.clone();
        let member_key = self.k2.clone();
        let Some((_, mut group)) = self.load_group(&update.group, &group_key)? else {
            return Err(OpError::NotFound("group"));
        };
        let existing_joined = self
            .engine
            .get_with(Cf::Members, &member_key, |v| {
                access::<ArchivedMemberRecord>(Cf::Members, v).map(|r| r.joined_ms.to_native())
            })?
            .transpose()?;
        let joined_ms = existing_joined.unwrap_or(self.now);
        let rec = MemberRecord {
            role: update.role.0,
            muted_until_ms: update.muted_until_ms,
            joined_ms,
        };
        self.put(Cf::Members, &member_key, &rec)?;
        let mut of_key = Vec::new();
        keys::member_of_key(&mut of_key, &update.user, &update.group);
        self.put(
            Cf::MemberOf,
            &of_key,
            &MemberOfRecord {
                role: update.role.0,
                joined_ms,
            },
        )?;
        if existing_joined.is_none() {
            group.member_count = group.member_count.saturating_add(1);
            self.put(Cf::Groups, &group_key, &group)?;
            self.touch(Cf::Groups, &group_key);
        }
        self.touch(Cf::Members, &member_key);
        Ok(Member {
            user: update.user,
            role: update.role,
            muted_until_ms: update.muted_until_ms,
            joined_ms,
        })
    }

    fn remove_member(&mut self, group_id: &GroupId, user: &UserId) -> Result<bool, OpError> {
        let group_key = self.k1.clone();
        let member_key = self.k2.clone();
        let existed = self
            .engine
            .get_with(Cf::Members, &member_key, |_| ())?
            .is_some();
        if !existed {
            return Ok(false);
        }
        let group = self.load_group(group_id, &group_key)?;
        self.batch.delete(Cf::Members, &member_key);
        let mut of_key = Vec::new();
        keys::member_of_key(&mut of_key, user, group_id);
        self.batch.delete(Cf::MemberOf, &of_key);
        // The member's read-diffusion cursor goes with the membership.
        self.batch.delete(Cf::Cursors, &member_key);
        if let Some((_, mut rec)) = group {
            rec.member_count = rec.member_count.saturating_sub(1);
            self.put(Cf::Groups, &group_key, &rec)?;
            self.touch(Cf::Groups, &group_key);
        }
        self.touch(Cf::Members, &member_key);
        self.touch(Cf::Cursors, &member_key);
        Ok(true)
    }

    fn put_cursor(&mut self, update: CursorUpdate) -> Result<GroupCursor, OpError> {
        let key = self.k1.clone();
        let current = self
            .engine
            .get_with(Cf::Cursors, &key, |v| {
                access::<ArchivedCursorRecord>(Cf::Cursors, v).map(|r| {
                    (
                        Seq(r.acked.to_native()),
                        Seq(r.read.to_native()),
                        r.since.to_native(),
                    )
                })
            })?
            .transpose()?
            .unwrap_or_default();
        let cursor = GroupCursor {
            acked: current.0.max(update.acked.unwrap_or(Seq::ZERO)),
            read: current.1.max(update.read.unwrap_or(Seq::ZERO)),
            updated_ms: self.now,
        };
        let rec = CursorRecord {
            acked: cursor.acked.0,
            read: cursor.read.0,
            updated_ms: cursor.updated_ms,
            since: current.2,
        };
        self.put(Cf::Cursors, &key, &rec)?;
        self.touch(Cf::Cursors, &key);
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ids::{ClientMsgId, DeviceId};
    use crate::mem::MemEngine;

    fn core() -> (WriterCore<MemEngine>, MemEngine) {
        let engine = MemEngine::new();
        let config = CoreConfig {
            max_cached_entries: 1000,
            inbox_max_age_ms: 1_000_000,
            dedup_window_ms: 1_000_000,
            groups: GroupLimits::default(),
            tenant_group_max_members: Default::default(),
        };
        (WriterCore::new(Arc::new(engine.clone()), config), engine)
    }

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
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

    /// Applies `cmds` as one batch (no barrier expected), commits, and returns the receivers.
    fn run_batch(core: &mut WriterCore<MemEngine>, engine: &MemEngine, cmds: Vec<WriteCmd>) {
        let durable = core.gen() - 1;
        core.begin(1_000, durable);
        let mut waiting = Vec::new();
        for cmd in cmds {
            match core.apply(cmd) {
                Applied::Queued(w) => waiting.push(w),
                Applied::Barrier(_) => panic!("unexpected barrier"),
            }
        }
        core.seal();
        let result = engine.write(core.batch(), true);
        core.finish(result.is_ok());
        for w in waiting {
            w.complete(&result);
        }
    }

    #[test]
    fn two_transmissions_in_one_batch_store_one_message() {
        let (mut core, engine) = core();
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        run_batch(
            &mut core,
            &engine,
            vec![
                WriteCmd::AppendDirect(msg("a", "b", 1), tx1),
                WriteCmd::AppendDirect(msg("a", "b", 1), tx2),
            ],
        );
        let first = rx1.recv().unwrap().unwrap();
        let second = rx2.recv().unwrap().unwrap();
        assert!(!first.duplicate);
        assert!(second.duplicate);
        assert_eq!(
            AppendResult {
                duplicate: false,
                ..second
            },
            first
        );
        let page = crate::read::inbox_page(&engine, &user("b"), Seq::ZERO, 10).unwrap();
        assert_eq!(page.len(), 1);
    }

    #[test]
    fn counters_see_earlier_operations_of_the_same_batch() {
        let (mut core, engine) = core();
        let mut rxs = Vec::new();
        let mut cmds = Vec::new();
        for i in 0..5 {
            let (tx, rx) = oneshot::channel();
            cmds.push(WriteCmd::AppendDirect(msg("a", "b", i), tx));
            rxs.push(rx);
        }
        run_batch(&mut core, &engine, cmds);
        let seqs: Vec<u64> = rxs
            .into_iter()
            .map(|rx| rx.recv().unwrap().unwrap().conv_seq.0)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(crate::read::total_unread(&engine, &user("b")).unwrap(), 5);
    }

    #[test]
    fn recall_of_a_message_in_the_open_batch_needs_a_barrier() {
        let (mut core, _engine) = core();
        let durable = core.gen() - 1;
        core.begin(1_000, durable);
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(
            core.apply(WriteCmd::AppendDirect(msg("a", "b", 1), tx)),
            Applied::Queued(_)
        ));
        let (tx, _rx) = oneshot::channel();
        let recall = Recall {
            conv: ConvKey::direct(&user("a"), &user("b")),
            seq: Seq(1),
            by: user("a"),
            by_device: DeviceId::new("d").unwrap(),
            client_msg_id: ClientMsgId([9; 16]),
            window_ms: 0,
        };
        assert!(matches!(
            core.apply(WriteCmd::Recall(recall, tx)),
            Applied::Barrier(_)
        ));
    }

    #[test]
    fn a_failed_commit_drops_cached_counters() {
        let (mut core, engine) = core();
        let durable = core.gen() - 1;
        core.begin(1_000, durable);
        let (tx, rx) = oneshot::channel();
        let Applied::Queued(w) = core.apply(WriteCmd::AppendDirect(msg("a", "b", 1), tx)) else {
            panic!("barrier")
        };
        // Pretend the write failed: nothing reached the engine.
        let failed = Err(EngineError::Backend {
            family: None,
            detail: "disk on fire".into(),
        });
        core.finish(false);
        w.complete(&failed);
        assert!(matches!(rx.recv().unwrap(), Err(OpError::Engine(_))));
        // The next message must get seq 1 again: seq 1 was never handed out.
        let (tx, rx) = oneshot::channel();
        run_batch(
            &mut core,
            &engine,
            vec![WriteCmd::AppendDirect(msg("a", "b", 2), tx)],
        );
        assert_eq!(rx.recv().unwrap().unwrap().conv_seq, Seq(1));
    }
}
