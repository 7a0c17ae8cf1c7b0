//! The low-level storage trait: ordered key-value column families with point reads, bounded range
//! scans and atomic multi-family write batches.
//!
//! Everything above it (timelines, dedup, unread counters) is written once against [`KvEngine`]
//! and runs unchanged on [`crate::RocksEngine`] and [`crate::MemEngine`]; the conformance suite in
//! `tests/conformance.rs` runs against both.

use std::any::Any;
use std::fmt;

/// The column families, one per kind of record. Layouts are documented in the crate docs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Cf {
    /// Schema version, node identity.
    Meta,
    /// Storage timelines: every message of every conversation (never expired).
    Messages,
    /// Per-user sync timelines (write diffusion): references to messages. Expired by age.
    Inbox,
    /// Per-device pull / ack / read positions in the user's inbox.
    Positions,
    /// (sender, client msg id) → the result first assigned. Expired after the dedup window.
    Dedup,
    /// Recent conversations per user with unread counts; the bare user key holds the total.
    Recent,
    /// Group metadata.
    Groups,
    /// Group members.
    Members,
    /// Reverse index: the groups a user belongs to.
    MemberOf,
    /// Read-diffusion cursors per group member.
    Cursors,
    /// Relationship chain: follow / friend / block.
    Relations,
    /// Writes this node owes other nodes of a cluster (cross-node delivery), until acknowledged.
    Outbox,
    /// Offline push settings: device push tokens and muted conversations (module `push`).
    Push,
    /// Topic subscriptions, per topic and per user, and devices' SYNC positions (module
    /// `topics`).
    Topics,
}

impl Cf {
    /// Number of families.
    pub const COUNT: usize = 14;

    /// Every family, in index order.
    pub const ALL: [Cf; Cf::COUNT] = [
        Cf::Meta,
        Cf::Messages,
        Cf::Inbox,
        Cf::Positions,
        Cf::Dedup,
        Cf::Recent,
        Cf::Groups,
        Cf::Members,
        Cf::MemberOf,
        Cf::Cursors,
        Cf::Relations,
        Cf::Outbox,
        Cf::Push,
        Cf::Topics,
    ];

    /// The family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Messages => "messages",
            Cf::Inbox => "inbox",
            Cf::Positions => "positions",
            Cf::Dedup => "dedup",
            Cf::Recent => "recent",
            Cf::Groups => "groups",
            Cf::Members => "members",
            Cf::MemberOf => "member_of",
            Cf::Cursors => "cursors",
            Cf::Relations => "relations",
            Cf::Outbox => "outbox",
            Cf::Push => "push",
            Cf::Topics => "topics",
        }
    }

    /// Position in [`Cf::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The family called `name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.name() == name)
    }

    /// Families whose entries expire by the time stored in their values.
    pub fn is_expirable(self) -> bool {
        matches!(self, Cf::Inbox | Cf::Dedup)
    }
}

impl fmt::Display for Cf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Scan order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// Ascending key order.
    Forward,
    /// Descending key order.
    Backward,
}

/// Keys `k` with `start <= k < end` (`end: None` means no upper bound).
#[derive(Clone, Copy, Debug)]
pub struct ScanRange<'a> {
    /// Inclusive lower bound.
    pub start: &'a [u8],
    /// Exclusive upper bound.
    pub end: Option<&'a [u8]>,
}

impl ScanRange<'_> {
    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start && self.end.is_none_or(|end| key < end)
    }

    /// Whether no key can lie in the range.
    pub fn is_empty(&self) -> bool {
        self.end.is_some_and(|end| end <= self.start)
    }
}

/// The callback of [`KvEngine::scan`]: called with each key and value, in scan order.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), EngineError> + 'a;

/// Extracts the expiry time (ms since the epoch) from an entry of an expirable family, or `None`
/// for entries that never expire (e.g. counters kept in the same family).
pub type TimeOf = fn(key: &[u8], value: &[u8]) -> Option<u64>;

/// Errors of the engine layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The backend found damaged data.
    #[error("corruption{}: {detail}", family.map(|f| format!(" in family {f}")).unwrap_or_default())]
    Corruption {
        /// The family being read or written, when known.
        family: Option<Cf>,
        /// The backend's message (names the file where the backend does).
        detail: String,
    },
    /// A stored record does not decode: corruption or a bug, never a caller error.
    #[error("undecodable record in family {family}: {detail}")]
    BadRecord {
        /// Where it was found.
        family: Cf,
        /// What is wrong with it.
        detail: String,
    },
    /// An I/O or other backend failure.
    #[error("storage backend error{}: {detail}", family.map(|f| format!(" in family {f}")).unwrap_or_default())]
    Backend {
        /// The family being accessed, when known.
        family: Option<Cf>,
        /// The backend's message.
        detail: String,
    },
}

#[derive(Clone, Copy, Debug)]
struct BatchOp {
    cf: Cf,
    key_start: u32,
    key_end: u32,
    /// `None` for a delete.
    value_end: Option<u32>,
}

/// An engine's own form of a batch, attached by [`KvEngine::prepare`] and taken by its `write`
/// (behind a lock only because `write` gets the batch by shared reference).
#[derive(Default)]
struct PreparedSlot(parking_lot::Mutex<Option<Box<dyn Any + Send>>>);

/// An ordered list of puts and deletes over any families, applied atomically by
/// [`KvEngine::write`]. Keys and values live in one growing buffer, so building a batch does not
/// allocate per row once the buffer has grown.
#[derive(Default)]
pub struct WriteBatch {
    data: Vec<u8>,
    ops: Vec<BatchOp>,
    /// Indices of `ops` in (family, key) order, computed by [`WriteBatch::sort`]; valid while
    /// `order.len() == ops.len()` (every change to the batch clears it).
    order: Vec<u32>,
    /// Dropped by every change to the batch, and not cloned.
    prepared: PreparedSlot,
}

impl Clone for WriteBatch {
    fn clone(&self) -> Self {
        WriteBatch {
            data: self.data.clone(),
            ops: self.ops.clone(),
            order: self.order.clone(),
            prepared: PreparedSlot::default(),
        }
    }
}

impl fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBatch")
            .field("ops", &self.ops.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// One entry of a [`WriteBatch`], as handed to an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchEntry<'a> {
    /// Insert or overwrite.
    Put {
        /// Family.
        cf: Cf,
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Remove (no error if absent).
    Delete {
        /// Family.
        cf: Cf,
        /// Key.
        key: &'a [u8],
    },
}

impl BatchEntry<'_> {
    /// The entry's family.
    pub fn cf(&self) -> Cf {
        match *self {
            BatchEntry::Put { cf, .. } | BatchEntry::Delete { cf, .. } => cf,
        }
    }

    /// The entry's key.
    pub fn key(&self) -> &[u8] {
        match *self {
            BatchEntry::Put { key, .. } | BatchEntry::Delete { key, .. } => key,
        }
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    fn offset(&self) -> u32 {
        // A batch is bounded by the writer's `max_batch_ops`; 4 GiB would be a bug upstream.
        u32::try_from(self.data.len()).unwrap_or(u32::MAX)
    }

    /// Forgets what was derived from the entries (order, engine form) before they change.
    fn changing(&mut self) {
        self.order.clear();
        *self.prepared.0.get_mut() = None;
    }

    /// Queues a put.
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.changing();
        let key_start = self.offset();
        self.data.extend_from_slice(key);
        let key_end = self.offset();
        self.data.extend_from_slice(value);
        let value_end = Some(self.offset());
        self.ops.push(BatchOp {
            cf,
            key_start,
            key_end,
            value_end,
        });
    }

    /// Queues a put whose value `encode` appends to the buffer it is given; the value is what
    /// `encode` appended. Lets values be serialized straight into the batch.
    pub fn put_with<E>(
        &mut self,
        cf: Cf,
        key: &[u8],
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.changing();
        let key_start = self.offset();
        self.data.extend_from_slice(key);
        let key_end = self.offset();
        if let Err(e) = encode(&mut self.data) {
            self.data.truncate(key_start as usize);
            return Err(e);
        }
        let value_end = Some(self.offset());
        self.ops.push(BatchOp {
            cf,
            key_start,
            key_end,
            value_end,
        });
        Ok(())
    }

    /// Queues a delete.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.changing();
        let key_start = self.offset();
        self.data.extend_from_slice(key);
        let key_end = self.offset();
        self.ops.push(BatchOp {
            cf,
            key_start,
            key_end,
            value_end: None,
        });
    }

    /// Number of queued puts and deletes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values queued.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Forgets every entry, keeping the buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ops.clear();
        self.changing();
    }

    /// Attaches an engine's own form of this batch, for its [`KvEngine::write`] to take. The
    /// engine must recognise its own (e.g. by an identity inside) and rebuild anything else.
    pub fn set_prepared(&mut self, prepared: Box<dyn Any + Send>) {
        *self.prepared.0.get_mut() = Some(prepared);
    }

    /// Takes what [`set_prepared`](Self::set_prepared) attached, if the batch has not changed
    /// since.
    pub fn take_prepared(&self) -> Option<Box<dyn Any + Send>> {
        self.prepared.0.lock().take()
    }

    /// Computes the (family, key) order that [`sorted`](Self::sorted) walks, so an engine that
    /// writes in key order finds it ready: the writer sorts a batch on its own thread before
    /// handing it to the thread that writes it. Any later change to the batch discards the order.
    pub fn sort(&mut self) {
        if self.order.len() != self.ops.len() {
            self.order = self.compute_order();
        }
    }

    /// Whether [`sort`](Self::sort) has run since the last change.
    pub fn is_sorted(&self) -> bool {
        self.order.len() == self.ops.len()
    }

    fn key_of(&self, i: u32) -> &[u8] {
        let op = &self.ops[i as usize];
        &self.data[op.key_start as usize..op.key_end as usize]
    }

    fn compute_order(&self) -> Vec<u32> {
        // Sorting on a 32-byte prefix (family, then the key's first 31 bytes, zero-padded) as four
        // integers decides almost every comparison without a `memcmp` through two pointers into
        // the data (typical keys are shorter than that); the prefix order never contradicts key
        // order, so ties fall back to the keys. The index breaks remaining ties, keeping queued
        // order among puts to one key.
        let mut items: Vec<([u64; 4], u32)> = self
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let key = &self.data[op.key_start as usize..op.key_end as usize];
                let mut bytes = [0u8; 32];
                bytes[0] = op.cf.index() as u8;
                let n = key.len().min(31);
                bytes[1..=n].copy_from_slice(&key[..n]);
                let mut prefix = [0u64; 4];
                for (word, chunk) in prefix.iter_mut().zip(bytes.chunks_exact(8)) {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(chunk);
                    *word = u64::from_be_bytes(be);
                }
                // A batch never holds 2^32 rows: `offset` bounds its bytes to u32.
                (prefix, i as u32)
            })
            .collect();
        items.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| self.key_of(a.1).cmp(self.key_of(b.1)))
                .then(a.1.cmp(&b.1))
        });
        items.into_iter().map(|(_, i)| i).collect()
    }

    fn entry(&self, op: &BatchOp) -> BatchEntry<'_> {
        let key = &self.data[op.key_start as usize..op.key_end as usize];
        match op.value_end {
            Some(end) => BatchEntry::Put {
                cf: op.cf,
                key,
                value: &self.data[op.key_end as usize..end as usize],
            },
            None => BatchEntry::Delete { cf: op.cf, key },
        }
    }

    /// The entries ordered by (family, key); entries with the same family and key keep their
    /// queued order, so applying them in this order has the same effect as in queued order.
    /// Uses the order [`sort`](Self::sort) computed, or sorts now.
    pub fn sorted(&self) -> impl Iterator<Item = BatchEntry<'_>> + '_ {
        let order: std::borrow::Cow<'_, [u32]> = if self.is_sorted() {
            std::borrow::Cow::Borrowed(&self.order)
        } else {
            std::borrow::Cow::Owned(self.compute_order())
        };
        (0..order.len()).map(move |i| self.entry(&self.ops[order[i] as usize]))
    }

    /// [`sorted`](Self::sorted), collected.
    pub fn sorted_entries(&self) -> Vec<BatchEntry<'_>> {
        self.sorted().collect()
    }

    /// The entries in the order they were queued.
    pub fn iter(&self) -> impl Iterator<Item = BatchEntry<'_>> + '_ {
        self.ops.iter().map(move |op| self.entry(op))
    }
}

/// Ordered key-value storage with column families.
///
/// Semantics every implementation guarantees (checked by the conformance suite):
/// - **Atomic batches.** [`write`](KvEngine::write) applies all entries of a batch or none, across
///   families; readers never observe part of a batch. Entries apply in order (a later put to the
///   same key wins).
/// - **Durability.** When `write(batch, sync = true)` returns `Ok`, the batch survives a process
///   crash and a power loss (the RocksDB WAL is fsynced). With `sync = false` it survives a
///   process crash only if the OS flushed it; the memory engine keeps nothing across processes.
/// - **Reads see completed writes.** A `get` or `scan` that starts after `write` returned sees the
///   batch. There are no snapshots: a scan running concurrently with writes may or may not see
///   them, but each entry it yields is a committed value.
/// - **Expiry.** In families where [`Cf::is_expirable`], an entry whose [`TimeOf`] is below the
///   family's cutoff may disappear at any moment after the cutoff is set, and will have
///   disappeared once [`expire_now`](KvEngine::expire_now) returns. No other entry is ever
///   removed except by a delete.
///
/// Callbacks passed to `get_with` and `scan` run while the engine holds the value (a pinned
/// RocksDB slice, or the memory engine's read lock): they must not call back into the engine.
pub trait KvEngine: Send + Sync + 'static {
    /// Calls `visit` with the value stored under `key`, without copying it, and returns what
    /// `visit` returned; `Ok(None)` if there is no such key.
    fn get_with<R>(
        &self,
        cf: Cf,
        key: &[u8],
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, EngineError>;

    /// Visits up to `limit` entries of `range` in `direction` order; stops early if `visit` fails
    /// and returns that error. Returns the number of entries visited.
    fn scan(
        &self,
        cf: Cf,
        range: ScanRange<'_>,
        direction: Direction,
        limit: usize,
        visit: &mut Visitor<'_>,
    ) -> Result<usize, EngineError>;

    /// Gets `batch` ready for [`write`](KvEngine::write) ahead of time (sorted, encoded in the
    /// engine's own format), so the thread that writes it later has less to do: the store's
    /// writer prepares each batch on its own thread before the committer thread writes it. Must
    /// not change what the batch means. Default: nothing.
    fn prepare(&self, _batch: &mut WriteBatch) {}

    /// Applies `batch` atomically; durable when `sync` is true and this returns `Ok`.
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), EngineError>;

    /// Installs the rule of an expirable family and raises its cutoff: entries with
    /// `time_of(..) < cutoff_ms` may be removed from then on. The cutoff never moves back (a lower
    /// value is ignored); the rule must be the same on every call.
    fn set_expiry(&self, cf: Cf, time_of: TimeOf, cutoff_ms: u64);

    /// Removes every expired entry of `cf` now (RocksDB: a manual compaction running the
    /// compaction filter; memory: a sweep).
    fn expire_now(&self, cf: Cf) -> Result<(), EngineError>;

    /// Persists memtables (RocksDB) so later opens replay less WAL; a no-op in memory.
    fn flush(&self) -> Result<(), EngineError>;

    /// Column families found in the database that this version does not know (a newer schema
    /// created them). The store refuses to serve while there are any.
    fn unknown_families(&self) -> &[String] {
        &[]
    }
}
