//! Durable timelines for tern.
//!
//! Three layers, as in tikv's engine_traits:
//! - [`KvEngine`]: ordered key-value column families, atomic multi-family batches, bounded range
//!   scans, expiry by a time stored in values. Implemented by [`RocksEngine`] (one RocksDB per
//!   node) and [`MemEngine`] (BTreeMaps, for tests and the simulator); `tests/conformance.rs` runs
//!   one suite against both.
//! - The timeline rules (key layouts, sequence allocation, de-duplication, unread counters),
//!   written once against the trait: the write side in the single writer's core, the read side in
//!   plain query functions.
//! - [`Store`]: a group-commit writer and a pool of reader threads behind bounded queues. io
//!   cores only enqueue and await a [`Completion`]; a write completes once its batch's WAL is
//!   fsynced ([`Durability::Synced`]); a full queue fails fast with [`SubmitError::Busy`]. The
//!   writer is two threads in a pipeline: one drains the queue into a batch, applies the
//!   timeline rules and prepares the batch for the engine ([`KvEngine::prepare`]: sorted, in
//!   RocksDB's batch format), the other writes the previous batch (WAL + fsync, memtable
//!   insert) and completes its callers, so both cores of a small machine work on writes.
//!
//! # Key layouts
//! Notation: `id` = 1 length byte + UTF-8 bytes (ids are 1..=64 bytes, so an id's encoding is never
//! a prefix of another's); `seq` = u64 big-endian (byte order = numeric order); `conv` = kind byte
//! (1 direct, 2 group, 3 room, 4 topic) + `id`, except direct = `1 ‖ id(low) ‖ id(high)` with the two
//! user ids sorted, so both participants name one timeline; `‖` = concatenation.
//!
//! | family      | key                                | value (rkyv archive)                                               |
//! |-------------|------------------------------------|--------------------------------------------------------------------|
//! | `meta`      | `"schema_version"`, `"node_id"`    | schema version u32; node identity string                           |
//! | `messages`  | `conv ‖ seq`                       | sender, sender device, client msg id \[16\], server time ms, kind u8, flags u8 (recalled), body |
//! | `inbox`     | `id(user) ‖ seq`                   | reference: encoded `conv`, conv seq, time ms (not a copy of the body) |
//! | `inbox`     | `id(user)`                         | inbox head: last inbox seq ever assigned                           |
//! | `positions` | `id(user) ‖ id(device)`            | last pulled, last acked, last read inbox seq; updated ms           |
//! | `dedup`     | `id(sender) ‖ client msg id[16]`   | encoded `conv`, conv seq, sender inbox seq, recipient inbox seq, time ms |
//! | `recent`    | `id(user) ‖ conv`                  | last seq, last time, unread u32, read seq, mentioned, updated ms   |
//! | `recent`    | `id(user)`                         | total unread over all conversations                                |
//! | `groups`    | `id(group)`                        | name, announcement, avatar, owner, settings u64, diffusion u8, member count, created/updated ms |
//! | `members`   | `id(group) ‖ id(user)`             | role u8, muted until ms, joined ms                                 |
//! | `member_of` | `id(user) ‖ id(group)`             | role u8, joined ms (reverse index of `members`)                    |
//! | `cursors`   | `id(group) ‖ id(user)`             | last acked seq, last read seq (read-diffusion groups), updated ms, seq before the member joined |
//! | `cursors`   | `id(group) ‖ id(user) ‖ id(device)` | the device's SYNC position in the group's read-diffused messages  |
//! | `cursors`   | `id(group) ‖ id(user) ‖ 00`        | read-diffusion groups: seq of the last message mentioning the member |
//! | `cursors`   | `id(group) ‖ 00`                   | read-diffusion groups: seq of the last message mentioning everyone (@all) |
//! | `relations` | `id(user) ‖ kind u8 ‖ id(other)`   | since ms, note (kind: 1 following, 2 follower, 3 friend, 4 blocked, 5 pending request from `other`, 6 request sent to `other`) |
//! | `relations` | `id(user)`                         | relation settings: friends only, updated ms                        |
//! | `outbox`    | `seq` (u64 BE)                     | a write owed to another node of a cluster (module `remote`)        |
//! | `push`      | `id(user) ‖ 1 ‖ id(device)`        | the device's push token: platform, token, updated ms (module `push`) |
//! | `push`      | `id(user) ‖ 2 ‖ conv`              | the conversation is muted for offline push until ms, updated ms     |
//! | `topics`    | `01..04 ‖ …` (module `topics`)     | topic rows, subscriptions per topic and per user, devices' SYNC positions in topics |
//!
//! A user's rows in `inbox`, `positions`, `recent`, `member_of` and `relations` all start with
//! `id(user)`, so each is one prefix scan; a bare `id(user)` key (inbox head, total unread) sorts
//! before every row of that user.
//!
//! # Relations
//! A relation change writes every row it affects, on both users' sides, in one batch (a friend
//! accept removes `pending`/`requested` and adds two `friend` rows), so each list is a prefix
//! scan and no reader sees half a change. The writer checks one-to-one appends against the
//! recipient's rows before anything is written: a block or "friends only" refuses the message
//! with [`OpError::Blocked`] or [`OpError::NotFriend`]. Because the writer itself applies every
//! relation change, its per-user cache of "friends only" and "may have blocks" is exact, and most
//! appends (recipients without blocks or that setting) read no relation row at all.
//!
//! # Groups
//! A group change is checked against the member's role and applied with its GROUP_EVENT
//! message in one batch (module `core::groups`). Groups up to
//! [`GroupLimits::write_diffusion_max`] members get an inbox entry per member for every
//! message (write diffusion); larger ones store a message once, flagged read-diffused, with
//! its dedup row and the sender's cursor: three rows whatever the member count. Unread counts
//! of those come from cursors when the recent list is read, and SYNC serves their messages
//! from the timeline after each device's position (`group_read`).
//!
//! # Values
//! Values are rkyv 0.8 archives built with the `unaligned` format feature: archived types have
//! alignment 1, so [`rkyv::access`] validates and reads them in place in the slice RocksDB pins
//! (`get_pinned_cf`) or the iterator exposes, at whatever address it sits. The default aligned
//! format would need an `AlignedVec` copy of almost every value, since values sit at arbitrary
//! offsets inside blocks and memtable entries. The cost of that copy is measured by the
//! `rkyv_access` group of `benches/benches/storage.rs`. The feature is global to the build (cargo
//! unifies features): other crates archiving with rkyv get the same, consistent, format, and must
//! not enable rkyv's `aligned` feature (that fails to compile, by rkyv's design).
//!
//! # Sequences
//! Conversation and inbox sequences start at 1, are strictly increasing and never reused, also
//! across crashes: a sequence is only handed out by a completion, which comes after the batch with
//! its rows is durable. On first use after start the writer recovers a conversation's last seq
//! with one reverse seek on its `messages` prefix (messages never expire), and a user's last inbox
//! seq from the inbox head row (written in the same batch as the entries it covers, because inbox
//! entries expire and the last key alone could vanish).
//!
//! # Write cost
//! A one-to-one message writes the message row, two inbox entries and a dedup row, plus the
//! counter rows it changes (two inbox heads, two recent rows, the recipient's total). Counter rows
//! are written once per batch with their final value, so under load (large batches, users in
//! several conversations) a message costs about 6 rows instead of 9. RocksDB inserts each batch
//! sorted by (family, key), which lets every memtable skiplist reuse its previous search path;
//! in `storage_throughput` this made the same batches about 2.5x faster to write.
//!
//! # Concurrency of counters
//! Unread counters and positions are read-modify-write. One writer thread owns every write and
//! caches the current values (including values changed earlier in the same, not yet written,
//! batch), so no update can be lost; see the `core` module docs for why this beats a merge
//! operator here.
//!
//! # Expiry
//! Inbox entries older than [`StoreConfig::inbox_max_age`] (default 30 days) and dedup entries
//! older than [`StoreConfig::dedup_window`] (default 7 days) are removed by a RocksDB compaction
//! filter reading the time stored in the value; the writer advances the cutoff with every batch,
//! and periodic compaction makes sure quiet families are visited. [`Store::expire_now`] forces it
//! (a manual compaction; an explicit sweep in the memory engine). `messages` never expire.
//!
//! # Opening
//! [`Store::open`] refuses a database written by a newer schema ([`OpenError::NewerSchema`]), one
//! with unknown column families, or one whose files RocksDB finds damaged
//! ([`OpenError::Corrupted`], naming the file).

mod core;
mod engine;
mod error;
mod group_read;
mod handoff;
mod ids;
mod keys;
mod mem;
mod push;
mod read;
mod records;
mod remote;
mod rocks;
mod store;
mod topics;
mod types;

pub use engine::{
    BatchEntry, Cf, Direction, EngineError, KvEngine, ScanRange, TimeOf, Visitor, WriteBatch,
};
pub use error::{OpError, OpenError, SubmitError};
pub use handoff::{ExportCursor, ExportPage, HandoffRow, SlotTerm, UserFilter, EXPORTED};
pub use ids::{
    scoped, split_scoped, tenant_of, valid_tenant, MAX_SCOPED_ID_LEN, MAX_TENANT_LEN, TENANT_SEP,
};
pub use ids::{
    ClientMsgId, ConvKey, ConvKind, DeviceId, DirectPair, GroupId, IdError, MessageFlags,
    MessageKind, RoomId, Seq, TopicId, UserId, MAX_ID_LEN,
};
pub use keys::KeyError;
pub use mem::MemEngine;
pub use push::{PushSetting, PushTargets, PushToken};
pub use records::SCHEMA_VERSION;
pub use remote::{
    ApplyResult, OutboxEntry, RelationNotice, RelationRow, RemoteSide, RemoteWrite, RoutedRelation,
};
pub use rocks::{RocksConfig, RocksEngine};
pub use store::{
    Clock, Completion, Durability, ManualClock, OutboxHook, Resolver, Store, StoreConfig,
    SystemClock, WriterStats,
};
pub use topics::{Subscription, TopicAppendResult, TopicLimits, TopicMessage, TopicSyncPage};
pub use types::{
    AppendResult, CursorUpdate, DevicePosition, DevicePositionEntry, Diffusion, DirectMessage,
    GroupAppendResult, GroupCursor, GroupEventKind, GroupFanout, GroupInfo, GroupLimits,
    GroupMessage, GroupOp, GroupOutcome, GroupReaders, GroupReceipts, GroupRequest, GroupSyncPage,
    GroupUpdate, HistoryDirection, InboxMessage, MarkRead, Member, MemberRole, MemberUpdate,
    Membership, MessageReads, PositionUpdate, ReadState, Recall, RecallResult, RecentConversation,
    RecentCursor, RecentList, RecentPage, Relation, RelationChange, RelationKind, RelationOp,
    RelationOutcome, StoredMessage,
};

/// Test and benchmark support: writes raw records the way an older or newer version would.
#[doc(hidden)]
pub mod testing {
    use crate::engine::{Cf, EngineError, KvEngine, WriteBatch};
    use crate::keys::META_SCHEMA_VERSION;
    use crate::records::{encode, SchemaRecord};

    /// The archive of a typical message row with a `body_len`-byte body.
    pub fn sample_message_archive(body_len: usize) -> Vec<u8> {
        let rec = crate::records::MessageRecord {
            sender: "user-000123".into(),
            sender_device: "ios-7f3a".into(),
            client_msg_id: [7; 16],
            time_ms: 1_700_000_000_000,
            kind: 1,
            flags: 0,
            body: vec![b'x'; body_len],
        };
        let mut out = Vec::new();
        // Infallible for this in-memory writer; an empty archive would fail the readers loudly.
        let _ = encode(&mut out, &rec);
        out
    }

    /// Validates and reads a message archive where it lies (the store's read path).
    pub fn read_message_in_place(bytes: &[u8]) -> Result<u64, EngineError> {
        let rec =
            crate::records::access::<crate::records::ArchivedMessageRecord>(Cf::Messages, bytes)?;
        Ok(rec.time_ms.to_native() + rec.body.len() as u64 + rec.sender.len() as u64)
    }

    /// The same read preceded by the `AlignedVec` copy that rkyv's aligned format would force
    /// for a value at an arbitrary address.
    pub fn read_message_copied(bytes: &[u8]) -> Result<u64, EngineError> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        read_message_in_place(&aligned)
    }

    /// Records `version` as the database's schema version.
    pub fn write_schema_version(engine: &impl KvEngine, version: u32) -> Result<(), EngineError> {
        let mut batch = WriteBatch::new();
        batch.put_with(Cf::Meta, META_SCHEMA_VERSION, |b| {
            encode(b, &SchemaRecord { version })
        })?;
        engine.write(&batch, true)
    }
}
