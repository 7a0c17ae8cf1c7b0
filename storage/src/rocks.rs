//! The RocksDB engine: one database, one column family per [`Cf`], expiry through compaction
//! filters, and open-time checks that turn damaged files into a typed error naming the file.
//!
//! Option choices (see [`RocksConfig`] for the numbers):
//! - No `enable_pipelined_write`: it overlaps one writer's WAL write with another's memtable
//!   insert, but the store has a single writing thread, for which it only adds synchronisation
//!   (in `storage_throughput` the commit thread used slightly more CPU per message with it).
//!   `unordered_write` would let a reader see batch N+1 before batch N, so it is not used either.
//! - `max_open_files = -1`: every table file is opened, and its footer checked, when the database
//!   opens, so a damaged table is reported before serving starts rather than on first read.
//! - WAL recovery `TolerateCorruptedTailRecords`: a torn record at the very end of the WAL is the
//!   unacknowledged batch a crash interrupted and is dropped; corruption anywhere else fails the
//!   open instead of silently truncating acknowledged history (`PointInTime` would).
//! - Bloom filters everywhere (every hot read is a point lookup or a prefix scan), plus a
//!   memtable bloom on `dedup`, whose lookups on the write path almost always miss. Filters and
//!   indexes of level-0 files stay pinned in the block cache: every dedup lookup consults all
//!   of them, and pinning spares it a cache lookup per file (about 5% of the writer's CPU).
//! - LZ4 compression; 32 MiB write buffers: inserting into a memtable skiplist costs more the
//!   larger it is (more levels, more cache misses), and the commit thread spends most of its time
//!   there. In `storage_throughput` 32 MiB cost about 4.8 µs of commit-thread CPU per message
//!   against 6.2 µs at 64 MiB, while 16 MiB saved a little more there but doubled the background
//!   flush and compaction CPU. `max_total_wal_size` so rarely written families (`meta`,
//!   `groups`, ...) get flushed and do not pin old WAL files forever.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DBCompressionType, DBRecoveryMode, ErrorKind, Options, ReadOptions,
    WriteOptions, DB,
};

use crate::engine::{
    BatchEntry, Cf, Direction, EngineError, KvEngine, ScanRange, TimeOf, Visitor, WriteBatch,
};
use crate::error::OpenError;

/// Tuning of the RocksDB engine. The defaults suit a node with a few GiB for storage.
#[derive(Clone, Debug)]
pub struct RocksConfig {
    /// Memtable size per family before it is flushed.
    pub write_buffer_size: usize,
    /// Memtables per family (one active, the rest flushing).
    pub max_write_buffer_number: i32,
    /// Shared block cache.
    pub block_cache_bytes: usize,
    /// Background flush + compaction threads.
    pub background_jobs: i32,
    /// WAL size that forces a flush of the families pinning the oldest WAL file.
    pub max_total_wal_size: u64,
    /// Expirable families get every file compacted at least this often, so expiry happens even
    /// when a family receives few writes.
    pub periodic_compaction_secs: u64,
    /// Run compactions at the lowest CPU priority (the low-priority pool's threads get nice 19;
    /// flushes, which writes wait for when memtables fill, keep normal priority). Applies to
    /// the process-wide RocksDB environment, so to every database the process opens.
    pub low_priority_compaction: bool,
    /// Read every block of every family once at open, verifying checksums. Open always checks
    /// CURRENT, the MANIFEST, the WAL and every table's footer and size; this adds the data blocks,
    /// at the cost of reading the whole database.
    pub verify_on_open: bool,
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            // Smaller memtables (`[storage] memtable_mb`) make each insert a shallower skiplist
            // descent: with a compiler running beside the node, 8 MiB took the commit path from
            // 12-15 to 8-9.5 us of CPU per message at 20,000 messages/s. On a quiet machine they
            // gained nothing there and cost 9% of the saturated throughput (more flushes and
            // compactions), so 32 MiB stays the default.
            write_buffer_size: 32 << 20,
            max_write_buffer_number: 4,
            block_cache_bytes: 256 << 20,
            background_jobs: 2,
            max_total_wal_size: 512 << 20,
            periodic_compaction_secs: 24 * 3600,
            low_priority_compaction: false,
            verify_on_open: false,
        }
    }
}

struct ExpirySlot {
    time_of: OnceLock<TimeOf>,
    cutoff: AtomicU64,
}

/// Shared between the engine and the compaction filters RocksDB runs on its own threads.
struct ExpiryState {
    slots: [ExpirySlot; Cf::COUNT],
}

impl ExpiryState {
    fn new() -> Self {
        ExpiryState {
            slots: std::array::from_fn(|_| ExpirySlot {
                time_of: OnceLock::new(),
                cutoff: AtomicU64::new(0),
            }),
        }
    }

    fn decide(&self, cf: Cf, key: &[u8], value: &[u8]) -> Decision {
        let slot = &self.slots[cf.index()];
        let cutoff = slot.cutoff.load(Ordering::Acquire);
        match slot.time_of.get() {
            Some(time_of) if cutoff > 0 => match time_of(key, value) {
                Some(t) if t < cutoff => Decision::Remove,
                _ => Decision::Keep,
            },
            _ => Decision::Keep,
        }
    }
}

/// A batch encoded by [`RocksEngine::prepare`]; `engine` tells which engine's column family
/// handles it was encoded with.
struct Prepared {
    engine: u64,
    batch: rocksdb::WriteBatch,
}

/// Size of a RocksDB batch header: sequence number (fixed64) and record count (fixed32).
const BATCH_HEADER: usize = 12;

/// The bytes a record of one family starts with in a RocksDB batch (type tag and family id).
#[derive(Debug, Default, Clone)]
struct RecordTags {
    put: Vec<u8>,
    delete: Vec<u8>,
}

/// RocksDB's length-prefixed slice: varint32 length, then the bytes.
fn put_varstring(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values come from a `WriteBatch`, whose offsets are u32.
    let mut n = bytes.len() as u32;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(bytes);
}

/// Learns each family's record tags from batches RocksDB encodes itself, so the encoder does not
/// hard-code type tags or family ids (ids are assigned when a family is created).
fn record_tags(db: &DB) -> Result<[RecordTags; Cf::COUNT], EngineError> {
    let mut tags: [RecordTags; Cf::COUNT] = Default::default();
    for cf in Cf::ALL {
        let handle = db
            .cf_handle(cf.name())
            .ok_or_else(|| EngineError::Backend {
                family: Some(cf),
                detail: "column family handle missing".into(),
            })?;
        let mut put = rocksdb::WriteBatch::default();
        put.put_cf(handle, b"", b"");
        let mut delete = rocksdb::WriteBatch::default();
        delete.delete_cf(handle, b"");
        // An empty key and value each encode as a single zero length byte.
        let (put, delete) = (put.data(), delete.data());
        let (Some(put), Some(delete)) = (
            put.get(BATCH_HEADER..put.len().saturating_sub(2)),
            delete.get(BATCH_HEADER..delete.len().saturating_sub(1)),
        ) else {
            return Err(EngineError::Backend {
                family: Some(cf),
                detail: "unexpected RocksDB batch encoding".into(),
            });
        };
        tags[cf.index()] = RecordTags {
            put: put.to_vec(),
            delete: delete.to_vec(),
        };
    }
    Ok(tags)
}

/// Distinguishes engines, so a batch prepared by one is never written by another.
static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);

/// RocksDB-backed [`KvEngine`].
pub struct RocksEngine {
    id: u64,
    db: DB,
    tags: [RecordTags; Cf::COUNT],
    /// Buffer the next batch is laid out in (only the writer thread encodes, so uncontended).
    rep: parking_lot::Mutex<Vec<u8>>,
    path: PathBuf,
    expiry: Arc<ExpiryState>,
    unknown_families: Vec<String>,
    sync_write: WriteOptions,
    async_write: WriteOptions,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(family: Option<Cf>, e: rocksdb::Error) -> EngineError {
    let detail = e.to_string();
    match e.kind() {
        ErrorKind::Corruption => EngineError::Corruption { family, detail },
        _ => EngineError::Backend { family, detail },
    }
}

/// File names RocksDB keeps in a database directory.
fn is_db_file_name(name: &str) -> bool {
    let numbered = |ext: &str| {
        name.strip_suffix(ext)
            .is_some_and(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))
    };
    name == "CURRENT"
        || name == "IDENTITY"
        || name.starts_with("MANIFEST-")
        || name.starts_with("OPTIONS-")
        || numbered(".sst")
        || numbered(".log")
        || numbered(".blob")
}

/// The first database file a RocksDB message mentions, as a path inside `dir`.
fn file_in_message(dir: &Path, message: &str) -> Option<PathBuf> {
    message
        .split(|c: char| {
            c.is_whitespace() || matches!(c, ':' | ',' | '(' | ')' | '\'' | '"' | '[' | ']')
        })
        .filter(|token| !token.is_empty())
        .find_map(|token| {
            let name = token.rsplit('/').next().unwrap_or(token);
            is_db_file_name(name).then(|| {
                if token.starts_with('/') {
                    PathBuf::from(token)
                } else {
                    dir.join(name)
                }
            })
        })
}

fn family_in_message(message: &str) -> Option<String> {
    // RocksDB prefixes per-family log lines and some errors with "[name]" or "column family name".
    Cf::ALL.into_iter().map(Cf::name).find_map(|name| {
        (message.contains(&format!("[{name}]")) || message.contains(&format!("family {name}")))
            .then(|| name.to_string())
    })
}

fn open_error(dir: &Path, e: rocksdb::Error) -> OpenError {
    let detail = e.to_string();
    let file = file_in_message(dir, &detail);
    match e.kind() {
        ErrorKind::Corruption => OpenError::Corrupted {
            family: family_in_message(&detail),
            file,
            detail,
        },
        // A file the MANIFEST lists but that is missing or unreadable is damage too.
        ErrorKind::IOError if file.is_some() => OpenError::Corrupted {
            family: family_in_message(&detail),
            file,
            detail,
        },
        _ => OpenError::Engine(EngineError::Backend {
            family: None,
            detail,
        }),
    }
}

impl RocksEngine {
    /// Opens (or creates) the database in directory `path`.
    ///
    /// Fails with [`OpenError::Corrupted`] naming the damaged file when RocksDB's open-time checks
    /// (CURRENT, MANIFEST, WAL replay, table footers and sizes) find damage. Column families this
    /// version does not know are opened anyway so the store can read `meta` and report a newer
    /// schema; see [`KvEngine::unknown_families`].
    pub fn open(path: impl AsRef<Path>, config: &RocksConfig) -> Result<RocksEngine, OpenError> {
        let path = path.as_ref().to_path_buf();
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_paranoid_checks(true);
        db_opts.set_max_open_files(-1);
        db_opts.set_enable_pipelined_write(false);
        db_opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        db_opts.set_max_background_jobs(config.background_jobs);
        if config.low_priority_compaction {
            let mut env = rocksdb::Env::new().map_err(|e| open_error(&path, e))?;
            env.lower_thread_pool_cpu_priority();
            db_opts.set_env(&env);
        }
        db_opts.set_max_total_wal_size(config.max_total_wal_size);
        db_opts.set_keep_log_file_num(4);
        // Table files written by flushes and compactions are synced a megabyte at a time as
        // they grow, not in one fsync at the end: that final fsync would push tens of
        // megabytes to the disk at once, and the group commit's WAL fsync, queued behind it,
        // stalls every acknowledgement waiting on it.
        db_opts.set_bytes_per_sync(1 << 20);
        // Lets open notice a missing or truncated WAL file instead of replaying less.
        db_opts.set_track_and_verify_wals_in_manifest(true);

        let current = path.join("CURRENT");
        let existing = if current.exists() {
            DB::list_cf(&db_opts, &path).map_err(|e| open_error(&path, e))?
        } else {
            // Without CURRENT, RocksDB would create a fresh database next to the old files.
            if let Ok(entries) = std::fs::read_dir(&path) {
                let orphaned = entries.filter_map(Result::ok).any(|entry| {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("MANIFEST-") || name.ends_with(".sst")
                });
                if orphaned {
                    return Err(OpenError::Corrupted {
                        file: Some(current),
                        family: None,
                        detail: "CURRENT is missing but the directory holds database files".into(),
                    });
                }
            }
            Vec::new()
        };
        let unknown_families: Vec<String> = existing
            .iter()
            .filter(|name| name.as_str() != "default" && Cf::from_name(name).is_none())
            .cloned()
            .collect();

        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let expiry = Arc::new(ExpiryState::new());
        let mut descriptors: Vec<ColumnFamilyDescriptor> = Cf::ALL
            .into_iter()
            .map(|cf| {
                let mut table = BlockBasedOptions::default();
                table.set_block_cache(&cache);
                table.set_bloom_filter(10.0, false);
                table.set_cache_index_and_filter_blocks(true);
                table.set_pin_l0_filter_and_index_blocks_in_cache(true);
                table.set_format_version(5);
                let mut opts = Options::default();
                opts.set_block_based_table_factory(&table);
                opts.set_compression_type(DBCompressionType::Lz4);
                opts.set_write_buffer_size(config.write_buffer_size);
                opts.set_max_write_buffer_number(config.max_write_buffer_number);
                opts.set_level_compaction_dynamic_level_bytes(true);
                if cf == Cf::Dedup {
                    opts.set_memtable_whole_key_filtering(true);
                    opts.set_memtable_prefix_bloom_ratio(0.05);
                }
                if cf.is_expirable() {
                    let state = Arc::clone(&expiry);
                    opts.set_compaction_filter(
                        &format!("tern-expiry-{}", cf.name()),
                        move |_level, key, value| state.decide(cf, key, value),
                    );
                    opts.set_periodic_compaction_seconds(config.periodic_compaction_secs);
                }
                ColumnFamilyDescriptor::new(cf.name(), opts)
            })
            .collect();
        for name in &unknown_families {
            descriptors.push(ColumnFamilyDescriptor::new(name, Options::default()));
        }

        let db = DB::open_cf_descriptors(&db_opts, &path, descriptors)
            .map_err(|e| open_error(&path, e))?;
        let mut sync_write = WriteOptions::default();
        sync_write.set_sync(true);
        let mut async_write = WriteOptions::default();
        async_write.set_sync(false);
        let tags = record_tags(&db).map_err(OpenError::Engine)?;
        let engine = RocksEngine {
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            db,
            tags,
            rep: parking_lot::Mutex::new(Vec::new()),
            path,
            expiry,
            unknown_families,
            sync_write,
            async_write,
        };
        if config.verify_on_open {
            engine.verify().map_err(|e| match e {
                EngineError::Corruption { family, detail } => OpenError::Corrupted {
                    file: file_in_message(&engine.path, &detail),
                    family: family.map(|f| f.name().to_string()),
                    detail,
                },
                other => OpenError::Engine(other),
            })?;
        }
        Ok(engine)
    }

    /// Reads every entry of every family with checksum verification, without filling the block
    /// cache. Reports the first damage found, with its family (the message names the file).
    pub fn verify(&self) -> Result<(), EngineError> {
        for cf in Cf::ALL {
            let handle = self.handle(cf)?;
            let mut opts = ReadOptions::default();
            opts.set_verify_checksums(true);
            opts.fill_cache(false);
            let mut iter = self.db.raw_iterator_cf_opt(handle, opts);
            iter.seek_to_first();
            while iter.valid() {
                iter.next();
            }
            iter.status().map_err(|e| backend(Some(cf), e))?;
        }
        Ok(())
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying database, for tools and benchmarks that need RocksDB itself.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// `batch` as a RocksDB batch, rows in (family, key) order: inserting in key order lets each
    /// memtable's skiplist reuse the search path of the previous insert (RocksDB's sequential
    /// splice) instead of a cache-missing descent from the top per row, which dominated write
    /// cost. Only the order among different keys changes, so the batch means the same.
    ///
    /// The batch is laid out in RocksDB's own batch format in a reused buffer and handed over
    /// whole, which costs one copy instead of a call across the FFI (and three string appends)
    /// per row.
    fn encode(&self, batch: &WriteBatch) -> rocksdb::WriteBatch {
        let mut rep = self.rep.lock();
        rep.clear();
        rep.extend_from_slice(&[0; BATCH_HEADER]);
        let mut count: u32 = 0;
        for entry in batch.sorted() {
            let tags = &self.tags[entry.cf().index()];
            match entry {
                BatchEntry::Put { key, value, .. } => {
                    rep.extend_from_slice(&tags.put);
                    put_varstring(&mut rep, key);
                    put_varstring(&mut rep, value);
                }
                BatchEntry::Delete { key, .. } => {
                    rep.extend_from_slice(&tags.delete);
                    put_varstring(&mut rep, key);
                }
            }
            count += 1;
        }
        rep[BATCH_HEADER - 4..BATCH_HEADER].copy_from_slice(&count.to_le_bytes());
        rocksdb::WriteBatch::from_data(&rep)
    }

    fn handle(&self, cf: Cf) -> Result<&ColumnFamily, EngineError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| EngineError::Backend {
                family: Some(cf),
                detail: "column family handle missing".into(),
            })
    }
}

impl KvEngine for RocksEngine {
    fn get_with<R>(
        &self,
        cf: Cf,
        key: &[u8],
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, EngineError> {
        let handle = self.handle(cf)?;
        let pinned = self
            .db
            .get_pinned_cf(handle, key)
            .map_err(|e| backend(Some(cf), e))?;
        Ok(pinned.map(|value| visit(&value)))
    }

    fn scan(
        &self,
        cf: Cf,
        range: ScanRange<'_>,
        direction: Direction,
        limit: usize,
        visit: &mut Visitor<'_>,
    ) -> Result<usize, EngineError> {
        if limit == 0 || range.is_empty() {
            return Ok(0);
        }
        let handle = self.handle(cf)?;
        let mut opts = ReadOptions::default();
        // Bounds let RocksDB stop at the range's edge instead of stepping over deleted keys
        // beyond it.
        opts.set_iterate_lower_bound(range.start);
        if let Some(end) = range.end {
            opts.set_iterate_upper_bound(end);
        }
        let mut iter = self.db.raw_iterator_cf_opt(handle, opts);
        match (direction, range.end) {
            (Direction::Forward, _) => iter.seek(range.start),
            (Direction::Backward, Some(end)) => iter.seek_for_prev(end),
            (Direction::Backward, None) => iter.seek_to_last(),
        }
        let mut n = 0;
        while n < limit {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            // seek_for_prev lands on `end` itself when it exists; the range excludes it.
            if range.contains(key) {
                visit(key, value)?;
                n += 1;
            } else if direction == Direction::Forward || key < range.start {
                break;
            }
            match direction {
                Direction::Forward => iter.next(),
                Direction::Backward => iter.prev(),
            }
        }
        iter.status().map_err(|e| backend(Some(cf), e))?;
        Ok(n)
    }

    fn prepare(&self, batch: &mut WriteBatch) {
        batch.sort();
        let rocks = self.encode(batch);
        batch.set_prepared(Box::new(Prepared {
            engine: self.id,
            batch: rocks,
        }));
    }

    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), EngineError> {
        let prepared = batch
            .take_prepared()
            .and_then(|p| p.downcast::<Prepared>().ok())
            .filter(|p| p.engine == self.id);
        let rocks = match prepared {
            Some(p) => p.batch,
            None => self.encode(batch),
        };
        let opts = if sync {
            &self.sync_write
        } else {
            &self.async_write
        };
        self.db.write_opt(rocks, opts).map_err(|e| backend(None, e))
    }

    fn set_expiry(&self, cf: Cf, time_of: TimeOf, cutoff_ms: u64) {
        let slot = &self.expiry.slots[cf.index()];
        let _ = slot.time_of.set(time_of);
        slot.cutoff.fetch_max(cutoff_ms, Ordering::AcqRel);
    }

    fn expire_now(&self, cf: Cf) -> Result<(), EngineError> {
        let handle = self.handle(cf)?;
        let mut opts = CompactOptions::default();
        // The filter must also run over files already in the bottommost level.
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(handle, None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }

    fn flush(&self) -> Result<(), EngineError> {
        for cf in Cf::ALL {
            let handle = self.handle(cf)?;
            self.db.flush_cf(handle).map_err(|e| backend(Some(cf), e))?;
        }
        Ok(())
    }

    fn unknown_families(&self) -> &[String] {
        &self.unknown_families
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn encodes_batches_as_rocksdb_does() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap();
        let mut batch = WriteBatch::new();
        let long = vec![7u8; 300];
        batch.put(Cf::Inbox, b"b", b"v1");
        batch.put(Cf::Messages, b"a", &long);
        batch.delete(Cf::Recent, &long);
        batch.put(Cf::Inbox, b"a", b"");
        batch.put(Cf::Inbox, b"a", b"again");
        let mut expected = rocksdb::WriteBatch::default();
        for entry in batch.sorted() {
            let handle = engine.handle(entry.cf()).unwrap();
            match entry {
                BatchEntry::Put { key, value, .. } => expected.put_cf(handle, key, value),
                BatchEntry::Delete { key, .. } => expected.delete_cf(handle, key),
            }
        }
        assert_eq!(engine.encode(&batch).data(), expected.data());
        // And it writes: the later put to one key wins.
        engine.write(&batch, true).unwrap();
        let got = engine.get_with(Cf::Inbox, b"a", |v| v.to_vec()).unwrap();
        assert_eq!(got.as_deref(), Some(&b"again"[..]));
    }

    #[test]
    fn finds_files_in_messages() {
        let dir = Path::new("/data/db");
        assert_eq!(
            file_in_message(
                dir,
                "Corruption: Bad table magic number in /data/db/000012.sst"
            ),
            Some(PathBuf::from("/data/db/000012.sst"))
        );
        assert_eq!(
            file_in_message(dir, "Corruption: CURRENT file corrupted"),
            Some(PathBuf::from("/data/db/CURRENT"))
        );
        assert_eq!(
            file_in_message(
                dir,
                "Corruption: checksum mismatch in MANIFEST-000005, offset 3"
            ),
            Some(PathBuf::from("/data/db/MANIFEST-000005"))
        );
        assert_eq!(file_in_message(dir, "IO error: disk full"), None);
    }
}
