//! The store's threads: one group-commit writer and a small pool of readers, fed by bounded
//! queues, so no RocksDB call ever runs on an io core. Callers get a [`Completion`] they can
//! `.await` (io cores) or `wait()` on (tests, tools).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};

use crate::core::{Applied, Complete, CoreConfig, WriteCmd, WriterCore};
use crate::engine::{Cf, EngineError, KvEngine, WriteBatch};
use crate::error::{OpError, OpenError, SubmitError};
use crate::group_read;
use crate::ids::{ConvKey, DeviceId, GroupId, Seq, UserId};
use crate::keys::{META_NODE_ID, META_SCHEMA_VERSION};
use crate::read;
use crate::records::{
    access, dedup_time_of, encode, inbox_time_of, ArchivedNodeRecord, ArchivedSchemaRecord,
    NodeRecord, SchemaRecord, SCHEMA_VERSION,
};
use crate::remote::{self, ApplyResult, OutboxEntry, RemoteSide, RemoteWrite, RoutedRelation};
use crate::types::{
    AppendResult, CursorUpdate, DevicePosition, DevicePositionEntry, DirectMessage,
    GroupAppendResult, GroupCursor, GroupInfo, GroupLimits, GroupMessage, GroupOutcome,
    GroupReaders, GroupReceipts, GroupRequest, GroupSyncPage, GroupUpdate, HistoryDirection,
    InboxMessage, MarkRead, Member, MemberUpdate, Membership, PositionUpdate, ReadState, Recall,
    RecallResult, RecentCursor, RecentList, RecentPage, Relation, RelationChange, RelationKind,
    RelationOutcome, StoredMessage,
};

/// Where the writer gets the time it stamps on messages and derives expiry cutoffs from. The
/// timeline logic never reads a clock itself.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }

    /// Sets the time.
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// When a write counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Completion after the batch's WAL is fsynced: survives power loss. The only mode for
    /// serving.
    Synced,
    /// Completion after the batch is in the WAL's OS buffers, not fsynced: a crash of the machine
    /// loses acknowledged messages. For benchmarks that want to separate fsync cost; never serve
    /// with it.
    UnsyncedForBenchmarksOnly,
}

/// Store configuration.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Write requests that may wait for the writer; beyond it `submit` fails with `Busy`.
    pub write_queue_capacity: usize,
    /// Most operations in one group-commit batch.
    pub max_batch_ops: usize,
    /// Reader threads.
    pub readers: usize,
    /// Read requests that may wait for a reader; beyond it reads fail with `Busy`.
    pub read_queue_capacity: usize,
    /// When writes complete.
    pub durability: Durability,
    /// Inbox entries older than this are removed in the background.
    pub inbox_max_age: Duration,
    /// Retransmissions within this window of the original are recognised as duplicates.
    pub dedup_window: Duration,
    /// Entries the writer caches (sequence heads, unread counters, positions) before it drops
    /// them all and reloads lazily.
    pub max_cached_entries: usize,
    /// Identity of the node owning the database; recorded on first open and checked afterwards.
    pub node_id: Option<String>,
    /// Group sizes: the member limit and where write diffusion ends.
    pub groups: GroupLimits,
    /// Lower member limits for the groups of some tenants (tenant id → members), applied to
    /// groups whose id is scoped by that tenant.
    pub tenant_group_max_members: std::collections::BTreeMap<String, u32>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            write_queue_capacity: 65_536,
            max_batch_ops: 4_096,
            readers: 2,
            read_queue_capacity: 4_096,
            durability: Durability::Synced,
            inbox_max_age: Duration::from_secs(30 * 24 * 3600),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            max_cached_entries: 1_000_000,
            node_id: None,
            groups: GroupLimits::default(),
            tenant_group_max_members: Default::default(),
        }
    }
}

/// The eventual result of a submitted operation: `.await` it on an io core, or [`wait`] for it
/// on a thread that may block.
///
/// [`wait`]: Completion::wait
#[derive(Debug)]
#[must_use = "a completion reports whether the operation succeeded"]
pub struct Completion<T> {
    rx: oneshot::Receiver<Result<T, OpError>>,
}

/// Completes a [`Completion`] made by [`Completion::detached`].
#[derive(Debug)]
pub struct Resolver<T> {
    tx: oneshot::Sender<Result<T, OpError>>,
}

impl<T> Resolver<T> {
    /// Completes the operation (nothing happens if the waiter is gone).
    pub fn resolve(self, result: Result<T, OpError>) {
        let _ = self.tx.send(result);
    }
}

impl<T> Completion<T> {
    /// A completion resolved by the caller instead of the store: for an operation that a
    /// store of another node carries out (cross-node delivery), awaited like a local one.
    /// Dropping the resolver completes it with [`OpError::Closed`].
    pub fn detached() -> (Resolver<T>, Completion<T>) {
        let (tx, rx) = oneshot::channel();
        (Resolver { tx }, Completion { rx })
    }

    /// Blocks until the operation completes.
    pub fn wait(self) -> Result<T, OpError> {
        self.rx.recv().unwrap_or(Err(OpError::Closed))
    }

    /// Blocks at most `timeout`; `None` if the operation is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<T, OpError>> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(oneshot::RecvTimeoutError::Timeout) => None,
            Err(oneshot::RecvTimeoutError::Disconnected) => Some(Err(OpError::Closed)),
        }
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T, OpError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(OpError::Closed)))
    }
}

type ReadJob<E> = Box<dyn FnOnce(&E) + Send>;

/// Called on the commit thread with the outbox entries of each batch once it is durable (see
/// [`Store::set_outbox_hook`]); it must only hand them on, never block.
pub type OutboxHook = Box<dyn Fn(Vec<OutboxEntry>) + Send + Sync>;

/// Counters of the group-commit writer, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Batches written (or failed).
    pub batches: u64,
    /// Operations completed, successfully or not.
    pub ops: u64,
    /// Rows (puts and deletes) written.
    pub rows: u64,
    /// Batches whose write failed.
    pub failed_batches: u64,
}

#[derive(Debug, Default)]
struct StatsCell {
    batches: AtomicU64,
    ops: AtomicU64,
    rows: AtomicU64,
    failed_batches: AtomicU64,
}

/// Durable timelines on any [`KvEngine`]: a group-commit writer thread and `readers` reader
/// threads. Share it between io cores behind an `Arc`; every method only queues work.
///
/// Dropping the store stops accepting work, lets the writer finish (and complete) everything
/// already queued, and joins the threads.
pub struct Store<E: KvEngine> {
    engine: Arc<E>,
    clock: Arc<dyn Clock>,
    config: StoreConfig,
    node_id: Option<String>,
    write_tx: Option<Sender<WriteCmd>>,
    read_tx: Option<Sender<ReadJob<E>>>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<StatsCell>,
    outbox_hook: Arc<OnceLock<OutboxHook>>,
}

impl<E: KvEngine> std::fmt::Debug for Store<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn check_meta(engine: &impl KvEngine, config: &StoreConfig) -> Result<Option<String>, OpenError> {
    let version = engine
        .get_with(Cf::Meta, META_SCHEMA_VERSION, |v| {
            access::<ArchivedSchemaRecord>(Cf::Meta, v).map(|r| r.version.to_native())
        })?
        .transpose()?;
    if let Some(found) = version {
        if found > SCHEMA_VERSION {
            return Err(OpenError::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
    }
    if !engine.unknown_families().is_empty() {
        return Err(OpenError::UnknownFamilies(
            engine.unknown_families().to_vec(),
        ));
    }
    let stored_node = engine
        .get_with(Cf::Meta, META_NODE_ID, |v| {
            access::<ArchivedNodeRecord>(Cf::Meta, v).map(|r| r.id.as_str().to_owned())
        })?
        .transpose()?;
    let mut batch = WriteBatch::new();
    if version.is_none() {
        batch.put_with(Cf::Meta, META_SCHEMA_VERSION, |b| {
            encode(
                b,
                &SchemaRecord {
                    version: SCHEMA_VERSION,
                },
            )
        })?;
    }
    let node_id = match (stored_node, &config.node_id) {
        (Some(stored), Some(configured)) if &stored != configured => {
            return Err(OpenError::NodeMismatch {
                stored,
                configured: configured.clone(),
            });
        }
        (Some(stored), _) => Some(stored),
        (None, Some(configured)) => {
            batch.put_with(Cf::Meta, META_NODE_ID, |b| {
                encode(
                    b,
                    &NodeRecord {
                        id: configured.clone(),
                    },
                )
            })?;
            Some(configured.clone())
        }
        (None, None) => None,
    };
    if !batch.is_empty() {
        engine.write(&batch, true)?;
    }
    Ok(node_id)
}

struct WriterThread<E: KvEngine> {
    core: WriterCore<E>,
    engine: Arc<E>,
    rx: Receiver<WriteCmd>,
    clock: Arc<dyn Clock>,
    max_batch_ops: usize,
    sync: bool,
    stats: Arc<StatsCell>,
    outbox_hook: Arc<OnceLock<OutboxHook>>,
}

/// A batch on its way from the writer thread to the committer thread.
struct Sealed {
    batch: WriteBatch,
    waiting: Vec<Box<dyn Complete>>,
    gen: u64,
    /// The batch must not be written (an operation failed half-way through it).
    poisoned: Option<EngineError>,
    /// Built after the writer dropped its caches following a failed write.
    after_reset: bool,
    /// Signalled once the batch is written or failed.
    done: Option<oneshot::Sender<()>>,
    /// Outbox entries the batch creates, handed to the hook once it is durable.
    outbox: Vec<OutboxEntry>,
}

/// State shared by the writer and committer threads.
#[derive(Default)]
struct Pipeline {
    /// Generation of the newest batch the committer has finished with.
    durable: AtomicU64,
    /// Generation of the newest batch whose operations have all been completed.
    finished: AtomicU64,
    /// A write failed: the writer must drop its caches before building more.
    failed: std::sync::atomic::AtomicBool,
    /// The error of the failed write, for every batch built on the caches of before it, until
    /// one built after the reset. Only one batch is written at a time (by the committer, or by
    /// the writer while nothing is in flight), so the lock is never contended.
    broken: std::sync::Mutex<Option<EngineError>>,
}

/// Batches of at most this many operations are written by the writer thread itself when
/// nothing is in flight (see `writer_loop`).
const INLINE_MAX_OPS: usize = 64;

/// Writes one sealed batch and completes its operations; returns the emptied batch for reuse.
/// After a failed write it fails every batch built on the writer's then-stale caches, until
/// one built after the reset.
fn commit<E: KvEngine>(
    engine: &E,
    sealed: Sealed,
    pipeline: &Pipeline,
    sync: bool,
    stats: &StatsCell,
    outbox_hook: &OnceLock<OutboxHook>,
) -> WriteBatch {
    let Sealed {
        mut batch,
        waiting,
        gen,
        poisoned,
        after_reset,
        done,
        outbox,
    } = sealed;
    let mut broken = pipeline
        .broken
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if after_reset {
        *broken = None;
    }
    let result = match (&poisoned, &*broken) {
        (Some(e), _) | (None, Some(e)) => Err(e.clone()),
        (None, None) if batch.is_empty() => Ok(()),
        (None, None) => engine.write(&batch, sync),
    };
    if let (Err(e), None, None) = (&result, &poisoned, &*broken) {
        *broken = Some(e.clone());
        pipeline.failed.store(true, Ordering::SeqCst);
    }
    drop(broken);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.ops.fetch_add(waiting.len() as u64, Ordering::Relaxed);
    stats.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
    if result.is_err() {
        stats.failed_batches.fetch_add(1, Ordering::Relaxed);
    }
    pipeline.durable.store(gen, Ordering::SeqCst);
    if result.is_ok() && !outbox.is_empty() {
        if let Some(hook) = outbox_hook.get() {
            hook(outbox);
        }
    }
    for w in waiting {
        w.complete(&result);
    }
    pipeline.finished.store(gen, Ordering::SeqCst);
    if let Some(done) = done {
        let _ = done.send(());
    }
    batch.clear();
    batch
}

/// The committer: writes the batches the writer hands it, in order.
fn committer_loop<E: KvEngine>(
    engine: &E,
    rx: Receiver<Sealed>,
    spare: Sender<WriteBatch>,
    pipeline: &Pipeline,
    sync: bool,
    stats: &StatsCell,
    outbox_hook: &OnceLock<OutboxHook>,
) {
    while let Ok(sealed) = rx.recv() {
        let batch = commit(engine, sealed, pipeline, sync, stats, outbox_hook);
        let _ = spare.send(batch);
    }
}

/// The writer thread: drains the queue into batches and applies the timeline rules, while the
/// committer thread writes the previous batch, so the two halves of a write (logic, RocksDB
/// insert + fsync) run on two cores. At most one sealed batch waits for the committer.
///
/// A small batch sealed while nothing is in flight is written by the writer itself: under
/// moderate load most batches are like that, and handing one over costs a wake-up of the
/// committer and, on busy cores, a wait in the run queue before it runs, for no overlap (there
/// is nothing to overlap with). Under heavy load batches grow past [`INLINE_MAX_OPS`] or find
/// the previous one still in flight, and the pipeline runs as before.
fn writer_loop<E: KvEngine>(w: WriterThread<E>) {
    let WriterThread {
        mut core,
        engine,
        rx,
        clock,
        max_batch_ops,
        sync,
        stats,
        outbox_hook,
    } = w;
    let pipeline = Pipeline::default();
    let (commit_tx, commit_rx) = bounded::<Sealed>(1);
    let (spare_tx, spare_rx) = crossbeam_channel::unbounded::<WriteBatch>();
    let inline_spare = spare_tx.clone();
    std::thread::scope(|scope| {
        let committer = std::thread::Builder::new()
            .name("tern-storage-commit".into())
            .spawn_scoped(scope, || {
                committer_loop(
                    &*engine,
                    commit_rx,
                    spare_tx,
                    &pipeline,
                    sync,
                    &stats,
                    &outbox_hook,
                )
            });
        if committer.is_err() {
            // Without a committer nothing can become durable: fail everything queued.
            while let Ok(cmd) = rx.recv() {
                core.begin(clock.now_ms(), core.gen().saturating_sub(1));
                if let Applied::Queued(w) = core.apply(cmd) {
                    w.complete(&Err(EngineError::Backend {
                        family: None,
                        detail: "no commit thread".into(),
                    }));
                }
                let _ = core.take(WriteBatch::new());
            }
            return;
        }
        let mut after_reset = false;
        let mut waiting: Vec<Box<dyn Complete>> = Vec::with_capacity(max_batch_ops);
        // Seals the current batch and hands it to the committer; with `wait`, returns only once
        // it (and so every earlier batch) is written or failed.
        let send = |core: &mut WriterCore<E>,
                    waiting: &mut Vec<Box<dyn Complete>>,
                    after_reset: &mut bool,
                    wait: bool| {
            core.seal();
            let poisoned = core.poisoned().cloned();
            let gen = core.gen();
            let outbox = core.take_outbox();
            let mut batch = core.take(spare_rx.try_recv().unwrap_or_default());
            if poisoned.is_none() {
                // Sorting and encoding here rather than in the engine's write keeps them off the
                // committer, which is the busier thread of the two.
                engine.prepare(&mut batch);
            }
            if waiting.len() <= INLINE_MAX_OPS
                && pipeline.finished.load(Ordering::SeqCst) + 1 == gen
            {
                // Nothing in flight: every earlier batch is written and its operations
                // completed, so writing this one here keeps the order.
                let sealed = Sealed {
                    batch,
                    waiting: std::mem::take(waiting),
                    gen,
                    poisoned: poisoned.clone(),
                    after_reset: std::mem::take(after_reset),
                    done: None,
                    outbox,
                };
                let spare = commit(&*engine, sealed, &pipeline, sync, &stats, &outbox_hook);
                let _ = inline_spare.send(spare);
                if poisoned.is_some() || core.over_cache_limit() {
                    core.reset();
                }
                return;
            }
            let must_wait = wait || poisoned.is_some() || core.over_cache_limit();
            let (done, done_rx) = if must_wait {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let sealed = Sealed {
                batch,
                waiting: std::mem::take(waiting),
                gen,
                poisoned: poisoned.clone(),
                after_reset: std::mem::take(after_reset),
                done,
                outbox,
            };
            // Only fails if the committer is gone, and then its scope is ending anyway.
            let _ = commit_tx.send(sealed);
            if let Some(rx) = done_rx {
                let _ = rx.recv();
                if poisoned.is_some() || core.over_cache_limit() {
                    // Nothing is in flight now, so reloading from the engine is exact.
                    core.reset();
                }
            }
        };
        // Blocks only while the queue is empty: then there is nothing to batch.
        while let Ok(first) = rx.recv() {
            let begin = |core: &mut WriterCore<E>, after_reset: &mut bool| {
                if pipeline.failed.swap(false, Ordering::SeqCst) {
                    // Batches after the failed one are failed by the committer without being
                    // written, so the engine holds exactly what was acknowledged.
                    core.reset();
                    *after_reset = true;
                }
                core.begin(clock.now_ms(), pipeline.durable.load(Ordering::SeqCst));
            };
            begin(&mut core, &mut after_reset);
            let mut next = Some(first);
            let mut ops = 0;
            loop {
                let cmd = match next.take() {
                    Some(cmd) => cmd,
                    None if ops >= max_batch_ops => break,
                    None => match rx.try_recv() {
                        Ok(cmd) => cmd,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    },
                };
                match core.apply(cmd) {
                    Applied::Queued(w) => {
                        waiting.push(w);
                        ops += 1;
                    }
                    Applied::Barrier(cmd) => {
                        // The operation reads rows of batches still in flight: drain the
                        // pipeline, then retry on a fresh batch.
                        send(&mut core, &mut waiting, &mut after_reset, true);
                        begin(&mut core, &mut after_reset);
                        next = Some(cmd);
                        ops = 0;
                    }
                }
            }
            send(&mut core, &mut waiting, &mut after_reset, false);
        }
        drop(commit_tx);
    });
}

fn reader_loop<E: KvEngine>(engine: Arc<E>, rx: Receiver<ReadJob<E>>) {
    while let Ok(job) = rx.recv() {
        job(&engine);
    }
}

impl<E: KvEngine> Store<E> {
    /// Checks the database (schema version, unknown families, node identity), records the
    /// schema version on first use, and starts the writer and reader threads.
    pub fn open(engine: E, config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        if config.readers == 0 {
            return Err(OpenError::Config("readers must be at least 1"));
        }
        if config.write_queue_capacity == 0 || config.read_queue_capacity == 0 {
            return Err(OpenError::Config("queue capacities must be at least 1"));
        }
        if config.max_batch_ops == 0 {
            return Err(OpenError::Config("max_batch_ops must be at least 1"));
        }
        let engine = Arc::new(engine);
        let node_id = check_meta(&*engine, &config)?;
        let core_config = CoreConfig {
            max_cached_entries: config.max_cached_entries,
            inbox_max_age_ms: config.inbox_max_age.as_millis() as u64,
            dedup_window_ms: config.dedup_window.as_millis() as u64,
            groups: config.groups,
            tenant_group_max_members: config.tenant_group_max_members.clone(),
        };
        let (write_tx, write_rx) = bounded(config.write_queue_capacity);
        let (read_tx, read_rx) = bounded::<ReadJob<E>>(config.read_queue_capacity);
        let mut store = Store {
            engine: Arc::clone(&engine),
            clock: Arc::clone(&clock),
            config: config.clone(),
            node_id,
            write_tx: Some(write_tx),
            read_tx: Some(read_tx),
            threads: Vec::new(),
            stats: Arc::new(StatsCell::default()),
            outbox_hook: Arc::new(OnceLock::new()),
        };
        let core = WriterCore::new(Arc::clone(&engine), core_config);
        let sync = config.durability == Durability::Synced;
        let max_batch_ops = config.max_batch_ops;
        let writer = WriterThread {
            core,
            engine: Arc::clone(&engine),
            rx: write_rx,
            clock: Arc::clone(&clock),
            max_batch_ops,
            sync,
            stats: Arc::clone(&store.stats),
            outbox_hook: Arc::clone(&store.outbox_hook),
        };
        let writer = std::thread::Builder::new()
            .name("tern-storage-writer".into())
            .spawn(move || writer_loop(writer))
            .map_err(OpenError::Spawn)?;
        store.threads.push(writer);
        for i in 0..config.readers {
            let engine = Arc::clone(&engine);
            let rx = read_rx.clone();
            // On failure `store` is dropped, which closes the queues and joins what started.
            let reader = std::thread::Builder::new()
                .name(format!("tern-storage-reader-{i}"))
                .spawn(move || reader_loop(engine, rx))
                .map_err(OpenError::Spawn)?;
            store.threads.push(reader);
        }
        Ok(store)
    }

    /// The engine, for tools and tests (reads through it bypass the reader pool).
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The node identity recorded in the database.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The writer's counters so far.
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            ops: self.stats.ops.load(Ordering::Relaxed),
            rows: self.stats.rows.load(Ordering::Relaxed),
            failed_batches: self.stats.failed_batches.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, OpError>>) -> WriteCmd,
    ) -> Result<Completion<T>, SubmitError> {
        let tx = self.write_tx.as_ref().ok_or(SubmitError::Closed)?;
        let (reply, rx) = oneshot::channel();
        match tx.try_send(make(reply)) {
            Ok(()) => Ok(Completion { rx }),
            Err(TrySendError::Full(_)) => Err(SubmitError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    pub(crate) fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&E) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<Completion<T>, SubmitError> {
        let tx = self.read_tx.as_ref().ok_or(SubmitError::Closed)?;
        let (reply, rx) = oneshot::channel();
        let job: ReadJob<E> = Box::new(move |engine: &E| {
            let _ = reply.send(f(engine).map_err(OpError::Engine));
        });
        match tx.try_send(job) {
            Ok(()) => Ok(Completion { rx }),
            Err(TrySendError::Full(_)) => Err(SubmitError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    // ---- writes (group-committed; complete once durable) ---------------------------------

    /// Persists a one-to-one message with everything it touches: the message row in the
    /// conversation timeline, inbox entries for recipient and sender, the dedup row, both
    /// recent-conversation rows, the recipient's unread (+1) and total unread. A retransmission
    /// (same sender and client msg id within the dedup window) writes nothing and returns the
    /// original assignment with `duplicate: true`.
    pub fn append_direct(
        &self,
        msg: DirectMessage,
    ) -> Result<Completion<AppendResult>, SubmitError> {
        self.submit(|tx| WriteCmd::AppendDirect(msg, tx))
    }

    /// Moves a device's pulled / acked / read inbox positions forward.
    pub fn update_position(
        &self,
        update: PositionUpdate,
    ) -> Result<Completion<DevicePosition>, SubmitError> {
        self.submit(|tx| WriteCmd::UpdatePosition(update, tx))
    }

    /// Marks a conversation read up to a seq: sets the read seq, recounts the conversation's
    /// unread (zero when read to the end) and lowers the user's total by the difference.
    pub fn mark_read(&self, req: MarkRead) -> Result<Completion<ReadState>, SubmitError> {
        self.submit(|tx| WriteCmd::MarkRead(req, tx))
    }

    /// Flags a message as recalled and appends a recall event to its conversation (and to both
    /// inboxes of a one-to-one conversation). Only the sender may recall.
    pub fn recall(&self, req: Recall) -> Result<Completion<RecallResult>, SubmitError> {
        self.submit(|tx| WriteCmd::Recall(req, tx))
    }

    /// Creates or replaces a group's metadata (member count is kept).
    pub fn put_group(&self, update: GroupUpdate) -> Result<Completion<GroupInfo>, SubmitError> {
        self.submit(|tx| WriteCmd::PutGroup(update, tx))
    }

    /// Adds a member to an existing group, or changes their role / mute.
    pub fn put_member(&self, update: MemberUpdate) -> Result<Completion<Member>, SubmitError> {
        self.submit(|tx| WriteCmd::PutMember(update, tx))
    }

    /// Removes a member (and their cursor); completes with whether they were a member.
    pub fn remove_member(
        &self,
        group: GroupId,
        user: UserId,
    ) -> Result<Completion<bool>, SubmitError> {
        self.submit(|tx| WriteCmd::RemoveMember(group, user, tx))
    }

    /// Moves a member's read-diffusion cursor forward.
    pub fn put_cursor(&self, update: CursorUpdate) -> Result<Completion<GroupCursor>, SubmitError> {
        self.submit(|tx| WriteCmd::PutCursor(update, tx))
    }

    /// Applies a relation change to both users' rows atomically; completes once durable. Fails
    /// with [`OpError::Blocked`] (FOLLOW or a friend request toward a user who blocks `user`),
    /// [`OpError::NotAllowed`] (a friend request toward a user `user` blocks),
    /// [`OpError::NotFound`] (accepting a request that does not exist) or [`OpError::Invalid`]
    /// (`user` = `other`). From its completion on, every append obeys it.
    pub fn relate(
        &self,
        change: RelationChange,
    ) -> Result<Completion<RelationOutcome>, SubmitError> {
        self.submit(|tx| WriteCmd::Relate(change, tx))
    }

    /// Sets whether only friends may send `user` one-to-one messages; completes with whether the
    /// setting changed, once durable.
    pub fn set_friends_only(
        &self,
        user: UserId,
        on: bool,
    ) -> Result<Completion<bool>, SubmitError> {
        self.submit(|tx| WriteCmd::SetFriendsOnly(user, on, tx))
    }

    /// Stores a device's push token or a user's conversation mute (an empty token or an
    /// `until_ms` of 0 removes it); completes once durable.
    pub fn set_push(
        &self,
        setting: crate::push::PushSetting,
    ) -> Result<Completion<()>, SubmitError> {
        self.submit(|tx| WriteCmd::SetPush(setting, tx))
    }

    /// Stores a one-to-one message of which the `remote` side is served by node `dest_node`
    /// (a cluster): the message, this side's inbox entry and counters, the dedup row and an
    /// outbox entry with the other side's half, in one batch. The result's inbox seq of the
    /// remote side is zero. A retransmission gets the original result and writes nothing.
    /// Once the batch is durable the new entry goes to the [outbox hook](Self::set_outbox_hook).
    pub fn append_routed(
        &self,
        msg: DirectMessage,
        remote: RemoteSide,
        dest_node: String,
    ) -> Result<Completion<AppendResult>, SubmitError> {
        self.submit(|tx| WriteCmd::AppendRouted(msg, remote, dest_node, tx))
    }

    /// Applies the half of a message another node stored (the user of `write` is served here):
    /// the message row's copy, the user's inbox entry, recent row and counters. Idempotent by
    /// message id: a second application writes nothing and reports `duplicate`.
    pub fn apply_remote(&self, write: RemoteWrite) -> Result<Completion<ApplyResult>, SubmitError> {
        self.submit(|tx| WriteCmd::ApplyRemote(write, tx))
    }

    /// A recall in a one-to-one conversation stored here of which the `remote` side (`Sender`:
    /// the recaller, `Recipient`: the other participant) is served by node `dest_node`: as
    /// [`Self::recall`] for this side, and the other side's half (the event, with the recalled
    /// seq in its body) as an outbox entry in the same batch. The remote side's inbox seq in the
    /// result is zero.
    pub fn recall_routed(
        &self,
        req: Recall,
        remote: RemoteSide,
        dest_node: String,
    ) -> Result<Completion<RecallResult>, SubmitError> {
        self.submit(|tx| WriteCmd::RecallRouted(req, remote, dest_node, tx))
    }

    /// A relation change of which one user (the actor, `change.user`, when `actor_remote`; else
    /// `change.other`) is served by node `dest_node`, decided here (this node decides the
    /// pair's changes and holds both users' rows about each other): as [`Self::relate`], and
    /// when something changed, that user's rows about the other as an outbox entry in the same
    /// batch ([`RemoteWrite::relation`]). The result carries those rows.
    pub fn relate_routed(
        &self,
        change: RelationChange,
        actor_remote: bool,
        dest_node: String,
    ) -> Result<Completion<RoutedRelation>, SubmitError> {
        self.submit(|tx| WriteCmd::RelateRouted(change, actor_remote, dest_node, tx))
    }

    /// Removes outbox entries the destination acknowledged.
    pub fn outbox_done(&self, seqs: Vec<u64>) -> Result<Completion<()>, SubmitError> {
        self.submit(|tx| WriteCmd::OutboxDone(seqs, tx))
    }

    /// Writes rows a slot handoff brought (merged with what is stored, module `handoff`) and
    /// slot terms, in a batch of their own; completes once durable. Operations submitted
    /// after it see its rows.
    pub fn handoff_import(
        &self,
        rows: Vec<crate::handoff::HandoffRow>,
        terms: Vec<crate::handoff::SlotTerm>,
    ) -> Result<Completion<()>, SubmitError> {
        self.submit(|tx| WriteCmd::HandoffImport(rows, terms, tx))
    }

    /// Sets the function the commit thread calls with every durable batch's new outbox entries
    /// (once per store; `false` if one was set already). Entries written before it was set are
    /// read with [`Store::outbox_page`].
    pub fn set_outbox_hook(&self, hook: OutboxHook) -> bool {
        self.outbox_hook.set(hook).is_ok()
    }

    /// Applies a group change (create, update, members, leave, transfer, disband) after
    /// checking the asking member's role, with its GROUP_EVENT, in one batch; a refused change
    /// writes nothing. Fails with [`OpError::NotFound`], [`OpError::NotAllowed`],
    /// [`OpError::LimitExceeded`] or [`OpError::Invalid`].
    pub fn change_group(&self, req: GroupRequest) -> Result<Completion<GroupOutcome>, SubmitError> {
        self.submit(|tx| WriteCmd::Group(req, tx))
    }

    /// Persists a group message from a member who is not muted: write diffusion (an inbox
    /// entry per member) up to [`GroupLimits::write_diffusion_max`] members, read diffusion
    /// (stored once) above. A retransmission writes nothing and returns the original.
    pub fn append_group(
        &self,
        msg: GroupMessage,
    ) -> Result<Completion<GroupAppendResult>, SubmitError> {
        self.submit(|tx| WriteCmd::AppendGroup(msg, tx))
    }

    /// Recalls a group message (SPEC.md, RECALL): by its sender, the owner, or an admin for a
    /// plain member's message. The message is flagged RECALLED and a RECALL event is appended
    /// to the group's timeline under its diffusion, as [`Self::append_group`] does; a
    /// retransmission writes nothing and returns the original.
    pub fn recall_group(&self, req: Recall) -> Result<Completion<GroupAppendResult>, SubmitError> {
        self.submit(|tx| WriteCmd::RecallGroup(req, tx))
    }

    /// Records how far a device has fetched read-diffused group messages (forward only).
    pub fn put_group_positions(
        &self,
        user: UserId,
        device: DeviceId,
        positions: Vec<(GroupId, Seq)>,
    ) -> Result<Completion<()>, SubmitError> {
        self.submit(|tx| WriteCmd::GroupPositions(user, device, positions, tx))
    }

    // ---- reads (reader pool) ---------------------------------------------------------------

    fn query_op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&E) -> Result<Result<T, OpError>, EngineError> + Send + 'static,
    ) -> Result<Completion<T>, SubmitError> {
        let tx = self.read_tx.as_ref().ok_or(SubmitError::Closed)?;
        let (reply, rx) = oneshot::channel();
        let job: ReadJob<E> = Box::new(move |engine: &E| {
            let r = match f(engine) {
                Ok(r) => r,
                Err(e) => Err(OpError::Engine(e)),
            };
            let _ = reply.send(r);
        });
        match tx.try_send(job) {
            Ok(()) => Ok(Completion { rx }),
            Err(TrySendError::Full(_)) => Err(SubmitError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    /// Up to `limit` read-diffused group messages `device` of `user` has not fetched yet (the
    /// group part of SYNC).
    pub fn group_sync(
        &self,
        user: UserId,
        device: DeviceId,
        limit: usize,
    ) -> Result<Completion<GroupSyncPage>, SubmitError> {
        self.query(move |e| group_read::sync_page(e, &user, &device, limit))
    }

    /// A page of a group's history, for a member.
    pub fn group_history(
        &self,
        group: GroupId,
        user: UserId,
        anchor: Seq,
        direction: HistoryDirection,
        limit: usize,
    ) -> Result<Completion<Vec<StoredMessage>>, SubmitError> {
        self.query_op(move |e| group_read::history(e, &group, &user, anchor, direction, limit))
    }

    /// Group metadata and up to `max_members` members, for a member (`user`) or anyone.
    pub fn group_info(
        &self,
        group: GroupId,
        user: Option<UserId>,
        max_members: usize,
    ) -> Result<Completion<(GroupInfo, Vec<Member>)>, SubmitError> {
        self.query_op(move |e| group_read::info(e, &group, user.as_ref(), max_members))
    }

    /// The groups a user belongs to, with their metadata, in group id byte order.
    pub fn my_groups(&self, user: UserId) -> Result<Completion<Vec<GroupInfo>>, SubmitError> {
        self.query(move |e| group_read::groups_of(e, &user))
    }

    /// Who has read message `seq` of a group (write diffusion), and the member's own read seq.
    pub fn group_readers(
        &self,
        group: GroupId,
        user: UserId,
        seq: Seq,
    ) -> Result<Completion<GroupReaders>, SubmitError> {
        self.query_op(move |e| group_read::readers(e, &group, &user, seq))
    }

    /// Read receipts of messages `seqs` of a group, for a member (`with_readers`: who read
    /// each, not only how many).
    pub fn group_receipts(
        &self,
        group: GroupId,
        user: UserId,
        seqs: Vec<Seq>,
        with_readers: bool,
    ) -> Result<Completion<GroupReceipts>, SubmitError> {
        self.query_op(move |e| group_read::receipts(e, &group, &user, &seqs, with_readers))
    }

    /// The senders (but `reader`) of a write-diffusion group's content messages in
    /// `(after, up_to]`, among its `scan` newest there: whom `reader`'s READ is a receipt for.
    pub fn group_read_senders(
        &self,
        group: GroupId,
        reader: UserId,
        after: Seq,
        up_to: Seq,
        scan: usize,
    ) -> Result<Completion<Vec<UserId>>, SubmitError> {
        self.query(move |e| group_read::read_senders(e, &group, &reader, after, up_to, scan))
    }

    /// Up to `limit` outbox entries with a seq above `after`, in the order they were written.
    pub fn outbox_page(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Completion<Vec<OutboxEntry>>, SubmitError> {
        self.query(move |e| remote::outbox_page(e, after, limit))
    }

    /// The highest outbox seq in use (zero when the outbox is empty).
    pub fn outbox_last(&self) -> Result<Completion<u64>, SubmitError> {
        self.query(remote::outbox_last)
    }

    /// A page of the rows a slot handoff moves: those of the users `moving` accepts, from
    /// `from` on (module `handoff`: a filtered full scan, on a reader thread).
    pub fn handoff_export(
        &self,
        moving: crate::handoff::UserFilter,
        from: Option<crate::handoff::ExportCursor>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Completion<crate::handoff::ExportPage>, SubmitError> {
        self.query(move |e| crate::handoff::export_page(e, &*moving, from, max_rows, max_bytes))
    }

    /// Every slot term recorded here (module `handoff`).
    pub fn slot_terms(&self) -> Result<Completion<Vec<crate::handoff::SlotTerm>>, SubmitError> {
        self.query(crate::handoff::slot_terms)
    }

    /// Up to `limit` inbox entries after `after`, oldest first, joined with their messages.
    pub fn inbox_page(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
    ) -> Result<Completion<Vec<InboxMessage>>, SubmitError> {
        self.query(move |e| read::inbox_page(e, &user, after, limit))
    }

    /// The highest inbox seq assigned to `user` so far (zero if none): where their inbox ends, as
    /// a node reports it when a device connects. It covers every append whose completion has been
    /// delivered, and never goes back, also after the entries themselves expire.
    pub fn inbox_head(&self, user: UserId) -> Result<Completion<Seq>, SubmitError> {
        self.query(move |e| read::inbox_head(e, &user))
    }

    /// Up to `limit` messages of a conversation before (newest first) or after (oldest first)
    /// `anchor`.
    pub fn history(
        &self,
        conv: ConvKey,
        anchor: Seq,
        direction: HistoryDirection,
        limit: usize,
    ) -> Result<Completion<Vec<StoredMessage>>, SubmitError> {
        self.query(move |e| read::history(e, &conv, anchor, direction, limit))
    }

    /// One message.
    pub fn message(
        &self,
        conv: ConvKey,
        seq: Seq,
    ) -> Result<Completion<Option<StoredMessage>>, SubmitError> {
        self.query(move |e| read::message(e, &conv, seq))
    }

    /// Up to `limit` recent conversations, most recently active first, with unread counts and
    /// the user's total unread.
    pub fn recent(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Completion<RecentList>, SubmitError> {
        self.query(move |e| read::recent(e, &user, limit))
    }

    /// Up to `limit` recent conversations after `after` (from the most recent when `None`), in
    /// the list's order: most recently active first, then by conversation key. Continue with
    /// [`RecentPage::next`]; conversations sharing a time are never skipped between pages.
    pub fn recent_page(
        &self,
        user: UserId,
        after: Option<RecentCursor>,
        limit: usize,
    ) -> Result<Completion<RecentPage>, SubmitError> {
        self.query(move |e| read::recent_page(e, &user, after.as_ref(), limit))
    }

    /// One device's inbox positions.
    pub fn position(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Completion<DevicePosition>, SubmitError> {
        self.query(move |e| read::position(e, &user, &device))
    }

    /// Every device's inbox positions for a user.
    pub fn positions(
        &self,
        user: UserId,
    ) -> Result<Completion<Vec<DevicePositionEntry>>, SubmitError> {
        self.query(move |e| read::positions(e, &user))
    }

    /// Group metadata.
    pub fn group(&self, group: GroupId) -> Result<Completion<Option<GroupInfo>>, SubmitError> {
        self.query(move |e| read::group(e, &group))
    }

    /// A group's members.
    pub fn members(&self, group: GroupId) -> Result<Completion<Vec<Member>>, SubmitError> {
        self.query(move |e| read::members(e, &group))
    }

    /// The groups a user belongs to.
    pub fn groups_of(&self, user: UserId) -> Result<Completion<Vec<Membership>>, SubmitError> {
        self.query(move |e| read::groups_of(e, &user))
    }

    /// A member's read-diffusion cursor.
    pub fn cursor(
        &self,
        group: GroupId,
        user: UserId,
    ) -> Result<Completion<GroupCursor>, SubmitError> {
        self.query(move |e| read::cursor(e, &group, &user))
    }

    /// Up to `limit` of a user's relations of one kind, in key order, after the relation with
    /// `after` (`None`: from the first). Page by passing the last entry's `other` as `after`.
    pub fn relation_page(
        &self,
        user: UserId,
        kind: RelationKind,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Completion<Vec<Relation>>, SubmitError> {
        self.query(move |e| read::relation_page(e, &user, kind, after.as_ref(), limit))
    }

    /// Whether only friends may send `user` one-to-one messages.
    pub fn friends_only(&self, user: UserId) -> Result<Completion<bool>, SubmitError> {
        self.query(move |e| {
            let mut key = Vec::new();
            crate::keys::user_key(&mut key, &user);
            read::friends_only_at(e, &key)
        })
    }

    /// The push tokens of `user`'s devices and the mute of `conv` for them.
    pub fn push_targets(
        &self,
        user: UserId,
        conv: ConvKey,
    ) -> Result<Completion<crate::push::PushTargets>, SubmitError> {
        self.query(move |e| crate::push::targets(e, &user, &conv))
    }

    /// Removes expired inbox and dedup entries now, on a reader thread (RocksDB also does it in
    /// its background compactions as the writer advances the cutoffs). The cutoffs come from the
    /// store's clock.
    pub fn expire_now(&self) -> Result<Completion<()>, SubmitError> {
        let now = self.clock.now_ms();
        let inbox_cutoff = now.saturating_sub(self.config.inbox_max_age.as_millis() as u64);
        let dedup_cutoff = now.saturating_sub(self.config.dedup_window.as_millis() as u64);
        self.query(move |e| {
            e.set_expiry(Cf::Inbox, inbox_time_of, inbox_cutoff);
            e.set_expiry(Cf::Dedup, dedup_time_of, dedup_cutoff);
            e.expire_now(Cf::Inbox)?;
            e.expire_now(Cf::Dedup)
        })
    }
}

impl<E: KvEngine> Drop for Store<E> {
    fn drop(&mut self) {
        self.write_tx = None;
        self.read_tx = None;
        for t in self.threads.drain(..) {
            // A panicked storage thread has already failed its callers (their senders dropped).
            let _ = t.join();
        }
    }
}
