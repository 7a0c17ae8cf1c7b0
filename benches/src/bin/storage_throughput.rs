//! Storage throughput and inbox-read latency.
//!
//! 1. One-to-one messages persisted through the store's group-commit writer with everything they
//!    touch (message row, two inbox entries and heads, dedup row, two recent rows, total unread),
//!    WAL fsynced per batch, submitted from `--threads` threads.
//! 2. Bare RocksDB `WriteBatch` loops on fresh databases with the same options, writing exactly
//!    the keys and values the store wrote, batch for batch (so the same batch sizes), each batch
//!    fsynced: one given the rows already in the (family, key) order the store writes them in
//!    (the strict baseline: it only copies rows into a RocksDB batch and writes it), one sorting
//!    each batch itself, and with `--naive-bare` one writing rows in queued order. The ratio is
//!    the cost of the store's logic.
//! 3. Inbox pages of `--page` entries (joined with their messages) read through the reader pool
//!    from a store of `--inbox-store-messages` messages: latency percentiles (hdrhistogram).
//!
//! Each run also reports the CPU time of its threads and the time they spent runnable but
//! waiting for a CPU: on a machine shared with other work, the store's pipeline of threads and
//! the bare loop's single thread are held up differently, which wall time alone hides.
//!
//! `cargo build --release --workspace --bins`, then
//! `$CARGO_TARGET_DIR/release/storage_throughput --help`

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tern_storage::{
    AppendResult, BatchEntry, Cf, ClientMsgId, Completion, DeviceId, DirectMessage, Direction,
    Durability, EngineError, KvEngine, MessageKind, RocksConfig, RocksEngine, ScanRange, Seq,
    Store, StoreConfig, SubmitError, SystemClock, TimeOf, UserId, Visitor, WriteBatch,
};

#[derive(Parser, Debug, Clone)]
#[command(
    about = "tern storage: group-commit throughput vs a bare RocksDB loop, and inbox-page latency"
)]
struct Args {
    /// Messages in the timed run.
    #[arg(long, default_value_t = 400_000)]
    messages: u64,
    /// Threads submitting messages.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Completions each submitting thread keeps in flight.
    #[arg(long, default_value_t = 8192)]
    window: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 2_000)]
    users: u64,
    /// Contacts per user (a message goes from a user to one of their contacts).
    #[arg(long, default_value_t = 10)]
    contacts: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 100)]
    body: usize,
    /// Most operations per group-commit batch.
    #[arg(long, default_value_t = 8192)]
    max_batch_ops: usize,
    /// Write queue capacity.
    #[arg(long, default_value_t = 65_536)]
    queue: usize,
    /// Skip the untimed warm-up that sends one message per (user, contact) pair first (so the
    /// timed run measures steady state, not first-touch cache loads).
    #[arg(long)]
    no_warmup: bool,
    /// Messages in the store the inbox pages are read from.
    #[arg(long, default_value_t = 1_000_000)]
    inbox_store_messages: u64,
    /// Users of that store.
    #[arg(long, default_value_t = 1_000)]
    inbox_users: u64,
    /// Entries per inbox page.
    #[arg(long, default_value_t = 100)]
    page: usize,
    /// Inbox pages measured.
    #[arg(long, default_value_t = 5_000)]
    page_samples: u64,
    /// Skip the inbox-page measurement.
    #[arg(long)]
    skip_inbox: bool,
    /// Skip the throughput measurement.
    #[arg(long)]
    skip_throughput: bool,
    /// Skip the bare RocksDB loops (for profiling the store alone).
    #[arg(long)]
    skip_bare: bool,
    /// Also run the naive bare loop writing rows in the order they were queued.
    #[arg(long)]
    naive_bare: bool,
    /// RocksDB memtable size per column family, MiB (default: the engine's default).
    #[arg(long)]
    write_buffer_mb: Option<usize>,
    /// Directory for the databases (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Forwards to RocksDB and keeps a copy of every batch prepared while `on` (the copy is charged
/// to the store's run, not to the bare loop).
struct Recording {
    inner: RocksEngine,
    on: Arc<AtomicBool>,
    batches: Arc<Mutex<Vec<WriteBatch>>>,
}

impl KvEngine for Recording {
    fn get_with<R>(
        &self,
        cf: Cf,
        key: &[u8],
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, EngineError> {
        self.inner.get_with(cf, key, visit)
    }
    fn scan(
        &self,
        cf: Cf,
        range: ScanRange<'_>,
        direction: Direction,
        limit: usize,
        visit: &mut Visitor<'_>,
    ) -> Result<usize, EngineError> {
        self.inner.scan(cf, range, direction, limit, visit)
    }
    fn prepare(&self, batch: &mut WriteBatch) {
        self.inner.prepare(batch);
        // Copied here, on the writer thread, rather than in `write` on the committer thread,
        // whose time is what the run measures; every prepared batch is written (nothing fails
        // in this benchmark), and empty batches are not written.
        if self.on.load(Ordering::Relaxed) && !batch.is_empty() {
            if let Ok(mut batches) = self.batches.lock() {
                batches.push(batch.clone());
            }
        }
    }
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), EngineError> {
        self.inner.write(batch, sync)
    }
    fn set_expiry(&self, cf: Cf, time_of: TimeOf, cutoff_ms: u64) {
        self.inner.set_expiry(cf, time_of, cutoff_ms)
    }
    fn expire_now(&self, cf: Cf) -> Result<(), EngineError> {
        self.inner.expire_now(cf)
    }
    fn flush(&self) -> Result<(), EngineError> {
        self.inner.flush()
    }
}

fn user(n: u64) -> UserId {
    // Ids are at most 64 bytes; this is about 10.
    UserId::new(format!("user{n:06}")).unwrap_or_else(|_| unreachable!("short id"))
}

fn message(sender: u64, recipient: u64, id: u64, body: usize) -> DirectMessage {
    let mut cmid = [0u8; 16];
    cmid[8..].copy_from_slice(&id.to_be_bytes());
    DirectMessage {
        sender: user(sender),
        sender_device: DeviceId::new("phone").unwrap_or_else(|_| unreachable!("short id")),
        recipient: user(recipient),
        client_msg_id: ClientMsgId(cmid),
        kind: MessageKind::TEXT,
        body: vec![b'm'; body],
    }
}

fn contact(args: &Args, u: u64, c: u64) -> u64 {
    (u + 1 + c * (args.users / (args.contacts + 1)).max(1)) % args.users
}

/// A message to send: (sender, recipient, client msg id).
type Spec = (u64, u64, u64);

/// Submits the messages `specs` describe from one thread, keeping up to `window` in flight, and
/// hands each result with its spec to `on_result`. A message is built once, on submission (and
/// rebuilt only for the retry after a `Busy`, which the default sizes never hit).
fn pump<E: KvEngine>(
    store: &Store<E>,
    specs: impl Iterator<Item = Spec>,
    body: usize,
    window: usize,
    mut on_result: impl FnMut(&AppendResult, Spec),
) -> Result<()> {
    let mut in_flight: VecDeque<(Completion<AppendResult>, Spec)> = VecDeque::with_capacity(window);
    let mut finish = |(c, spec): (Completion<AppendResult>, Spec)| -> Result<()> {
        on_result(&c.wait()?, spec);
        Ok(())
    };
    for spec in specs {
        loop {
            match store.append_direct(message(spec.0, spec.1, spec.2, body)) {
                Ok(c) => {
                    in_flight.push_back((c, spec));
                    break;
                }
                Err(SubmitError::Busy) => {
                    let oldest = in_flight
                        .pop_front()
                        .ok_or_else(|| anyhow!("busy with nothing in flight"))?;
                    finish(oldest)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if in_flight.len() >= window {
            if let Some(oldest) = in_flight.pop_front() {
                finish(oldest)?;
            }
        }
    }
    for c in in_flight {
        finish(c)?;
    }
    Ok(())
}

/// Nanoseconds each live thread spent on a CPU and runnable but waiting for one, by (name,
/// tid), from `/proc/self/task/*/schedstat`, and the whole process's CPU time (exited threads
/// included) under the name "" (Linux; empty elsewhere). Tells how busy the writer and
/// committer threads were, and how much other load on the machine held them up, which wall
/// time on a shared machine does not.
fn thread_cpu() -> BTreeMap<(String, u32), (u64, u64)> {
    let mut out = BTreeMap::new();
    // utime + stime, fields 14 and 15, in clock ticks (100 per second on Linux).
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after_name = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 10_000_000)
        });
    if let Some(ns) = process {
        out.insert((String::new(), 0), (ns, 0));
    }
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let times = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| {
                let mut f = s.split_whitespace().map(|n| n.parse::<u64>().ok());
                Some((f.next()??, f.next()??))
            });
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        if let Some(times) = times {
            out.insert((name.trim().to_string(), tid), times);
        }
    }
    out
}

/// Seconds on a CPU and waiting for one, by thread group, between two [`thread_cpu`]
/// snapshots (groups with neither are left out). The last group's CPU is the process's total
/// minus the others (threads that exited before the second snapshot: the submitting threads);
/// its waiting time is not known.
fn cpu_by_group(
    before: &BTreeMap<(String, u32), (u64, u64)>,
    after: &BTreeMap<(String, u32), (u64, u64)>,
) -> Vec<(&'static str, f64, f64)> {
    let mut groups: Vec<(&'static str, f64, f64)> = vec![
        ("writer", 0.0, 0.0),
        ("committer", 0.0, 0.0),
        ("rocksdb background", 0.0, 0.0),
        ("main thread", 0.0, 0.0),
        ("other (submitters)", 0.0, 0.0),
    ];
    let spent = |key: &(String, u32), (run, wait): (u64, u64)| {
        let (run0, wait0) = before.get(key).copied().unwrap_or((0, 0));
        (
            run.saturating_sub(run0) as f64 / 1e9,
            wait.saturating_sub(wait0) as f64 / 1e9,
        )
    };
    let mut named = 0.0;
    let mut total = 0.0;
    for (key, times) in after {
        let name = key.0.as_str();
        let g = if name.is_empty() {
            total = spent(key, *times).0;
            continue;
        } else if name.starts_with("tern-storage-wr") {
            0
        } else if name.starts_with("tern-storage-co") {
            1
        } else if name.starts_with("rocksdb") {
            2
        } else if key.1 == std::process::id() {
            3
        } else {
            continue;
        };
        let (run, wait) = spent(key, *times);
        groups[g].1 += run;
        groups[g].2 += wait;
        named += run;
    }
    groups[4].1 = (total - named).max(0.0);
    groups.retain(|g| g.1 > 0.0 || g.2 > 0.0);
    groups
}

/// "name s (µs/msg, s waiting for a CPU)" for each thread group of a run.
fn cpu_line(r: &RunResult, messages: u64) -> String {
    let per_msg = |secs: f64| secs * 1e6 / messages as f64;
    let groups: Vec<String> = r
        .cpu
        .iter()
        .map(|(name, run, wait)| {
            let waited = if *wait > 0.0 {
                format!(", {wait:.2} s waiting for a CPU")
            } else {
                String::new()
            };
            format!("{name} {run:.2} s ({:.1} µs/msg{waited})", per_msg(*run))
        })
        .collect();
    groups.join("; ")
}

struct RunResult {
    secs: f64,
    /// Seconds on a CPU and waiting for one, by thread group, during the timed part (the
    /// store's run only).
    cpu: Vec<(&'static str, f64, f64)>,
    batches: u64,
    rows: u64,
}

fn store_run(args: &Args, dir: &Path, recorded: &Arc<Mutex<Vec<WriteBatch>>>) -> Result<RunResult> {
    let on = Arc::new(AtomicBool::new(false));
    let engine = Recording {
        inner: RocksEngine::open(dir, &rocks_config(args))?,
        on: on.clone(),
        batches: recorded.clone(),
    };
    let config = StoreConfig {
        write_queue_capacity: args.queue,
        max_batch_ops: args.max_batch_ops,
        ..StoreConfig::default()
    };
    let store = Arc::new(Store::open(engine, config, Arc::new(SystemClock))?);
    let id_base = AtomicU64::new(1 << 40);

    if !args.no_warmup {
        let warm = (0..args.users).flat_map(|u| (0..args.contacts).map(move |c| (u, c)));
        let specs = warm.map(|(u, c)| {
            (
                u,
                contact(args, u, c),
                id_base.fetch_add(1, Ordering::Relaxed),
            )
        });
        pump(&*store, specs, args.body, args.window, |_, _| {})?;
    }

    on.store(true, Ordering::SeqCst);
    let before = store.writer_stats();
    let cpu_before = thread_cpu();
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..args.threads as u64)
            .map(|t| {
                let store = store.clone();
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t + 1);
                    let per_thread = args.messages / args.threads as u64;
                    let msgs = (0..per_thread).map(move |i| {
                        let u = rng.random_range(0..args.users);
                        let c = rng.random_range(0..args.contacts);
                        (u, contact(args, u, c), (t << 32) | i)
                    });
                    pump(&*store, msgs, args.body, args.window, |_, _| {})
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("submitter panicked"))??;
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_by_group(&cpu_before, &thread_cpu());
    on.store(false, Ordering::SeqCst);
    let after = store.writer_stats();
    Ok(RunResult {
        secs,
        cpu,
        batches: after.batches - before.batches,
        rows: after.rows - before.rows,
    })
}

fn rocks_config(args: &Args) -> RocksConfig {
    let default = RocksConfig::default();
    RocksConfig {
        write_buffer_size: args
            .write_buffer_mb
            .map_or(default.write_buffer_size, |mb| mb << 20),
        ..default
    }
}

/// The order a bare loop writes each batch's rows in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BareOrder {
    /// The (family, key) order the store's engine wrote them in, handed over ready: the loop
    /// only copies rows into a RocksDB batch and writes it (the strictest baseline).
    Store,
    /// Sorted by (family, key) inside the timed loop, from the order they were queued in.
    SortEach,
    /// The order they were queued in (the naive loop).
    Queued,
}

fn bare_run(
    args: &Args,
    dir: &Path,
    batches: &[WriteBatch],
    order: BareOrder,
) -> Result<RunResult> {
    let engine = RocksEngine::open(dir, &rocks_config(args))?;
    let db = engine.db();
    let handles = Cf::ALL.map(|cf| db.cf_handle(cf.name()));
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    // Copies without the store's precomputed order, made before the clock starts, so the
    // sorting loop pays for its own sort.
    let unsorted: Vec<WriteBatch> = if order == BareOrder::SortEach {
        batches
            .iter()
            .map(|b| {
                let mut copy = WriteBatch::new();
                for entry in b.iter() {
                    match entry {
                        BatchEntry::Put { cf, key, value } => copy.put(cf, key, value),
                        BatchEntry::Delete { cf, key } => copy.delete(cf, key),
                    }
                }
                copy
            })
            .collect()
    } else {
        Vec::new()
    };
    let cpu_before = thread_cpu();
    let start = Instant::now();
    let mut rows = 0;
    for (i, batch) in batches.iter().enumerate() {
        let mut wb =
            rocksdb::WriteBatch::with_capacity_bytes(batch.data_len() + 16 * batch.len() + 64);
        let mut add = |entry: BatchEntry<'_>| -> Result<()> {
            match entry {
                BatchEntry::Put { cf, key, value } => {
                    let h = handles[cf.index()].context("column family")?;
                    wb.put_cf(h, key, value);
                }
                BatchEntry::Delete { cf, key } => {
                    let h = handles[cf.index()].context("column family")?;
                    wb.delete_cf(h, key);
                }
            }
            rows += 1;
            Ok(())
        };
        match order {
            BareOrder::Store => batch.sorted().try_for_each(&mut add)?,
            BareOrder::SortEach => unsorted[i].sorted().try_for_each(&mut add)?,
            BareOrder::Queued => batch.iter().try_for_each(&mut add)?,
        }
        db.write_opt(wb, &opts)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(RunResult {
        secs,
        cpu: cpu_by_group(&cpu_before, &thread_cpu()),
        batches: batches.len() as u64,
        rows,
    })
}

fn inbox_run(args: &Args, dir: &Path) -> Result<()> {
    let engine = RocksEngine::open(dir, &rocks_config(args))?;
    let config = StoreConfig {
        write_queue_capacity: args.queue,
        max_batch_ops: args.max_batch_ops,
        // Filling is not what is measured here.
        durability: Durability::UnsyncedForBenchmarksOnly,
        ..StoreConfig::default()
    };
    let store = Arc::new(Store::open(engine, config, Arc::new(SystemClock))?);
    let heads: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.inbox_users).map(|_| AtomicU64::new(0)).collect());
    let fill_start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..args.threads as u64)
            .map(|t| {
                let store = store.clone();
                let heads = heads.clone();
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(100 + t);
                    let per_thread = args.inbox_store_messages / args.threads as u64;
                    let users = args.inbox_users;
                    let msgs = (0..per_thread).map(move |i| {
                        let from = rng.random_range(0..users);
                        let to = (from + rng.random_range(1..users)) % users;
                        (from, to, (t << 32) | i)
                    });
                    pump(&*store, msgs, args.body, args.window, |r, (from, to, _)| {
                        heads[from as usize].fetch_max(r.sender_inbox_seq.0, Ordering::Relaxed);
                        heads[to as usize].fetch_max(r.recipient_inbox_seq.0, Ordering::Relaxed);
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("filler panicked"))??;
        }
        Ok(())
    })?;
    let fill_secs = fill_start.elapsed().as_secs_f64();
    store.engine().flush()?;

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut entries = 0u64;
    let warmup = args.page_samples / 10;
    for i in 0..warmup + args.page_samples {
        let u = rng.random_range(0..args.inbox_users);
        let len = heads[u as usize].load(Ordering::Relaxed);
        let after = rng.random_range(0..=len.saturating_sub(args.page as u64));
        let start = Instant::now();
        let page = store.inbox_page(user(u), Seq(after), args.page)?.wait()?;
        let micros = start.elapsed().as_micros() as u64;
        if i >= warmup {
            hist.record(micros.max(1))?;
            entries += page.len() as u64;
        }
    }
    let total_entries: u64 = heads.iter().map(|h| h.load(Ordering::Relaxed)).sum();
    println!();
    println!(
        "inbox page: {} pages of up to {} entries (joined with message rows) via the reader pool",
        args.page_samples, args.page
    );
    println!(
        "  store: {} messages, {} users, {} inbox entries (~{} per user), filled in {:.1} s (unsynced fill), then flushed",
        args.inbox_store_messages,
        args.inbox_users,
        total_entries,
        total_entries / args.inbox_users.max(1),
        fill_secs
    );
    println!(
        "  mean entries per page: {:.1}",
        entries as f64 / args.page_samples as f64
    );
    println!("| percentile | latency (µs) |");
    println!("|-----------:|-------------:|");
    for (name, q) in [
        ("p50", 0.50),
        ("p90", 0.90),
        ("p99", 0.99),
        ("p99.9", 0.999),
    ] {
        println!("| {name:>10} | {:>12} |", hist.value_at_quantile(q));
    }
    println!("| {:>10} | {:>12} |", "max", hist.max());
    println!("| {:>10} | {:>12.1} |", "mean", hist.mean());
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!("tern storage throughput");
    println!(
        "parameters: messages={} threads={} window/thread={} users={} contacts/user={} body={}B max_batch_ops={} queue={} warmup={} write_buffer={}MiB durability=WAL fsync per batch cores={}",
        args.messages,
        args.threads,
        args.window,
        args.users,
        args.contacts,
        args.body,
        args.max_batch_ops,
        args.queue,
        !args.no_warmup,
        rocks_config(&args).write_buffer_size >> 20,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    if !args.skip_throughput {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let ours = store_run(&args, &dir.join("store"), &recorded)?;
        let batches = std::mem::take(&mut *recorded.lock().map_err(|_| anyhow!("poisoned"))?);
        println!("CPU, store run: {}", cpu_line(&ours, args.messages));
        if args.skip_bare {
            println!(
                "store: {:.0} msgs/s ({} batches)",
                args.messages as f64 / ours.secs,
                ours.batches
            );
            return Ok(());
        }
        let mut runs = vec![("store: group-commit writer", ours)];
        runs.push((
            "bare loop, rows in the store's order",
            bare_run(
                &args,
                &dir.join("bare-store-order"),
                &batches,
                BareOrder::Store,
            )?,
        ));
        runs.push((
            "bare loop, sorting each batch",
            bare_run(
                &args,
                &dir.join("bare-sort-each"),
                &batches,
                BareOrder::SortEach,
            )?,
        ));
        if args.naive_bare {
            runs.push((
                "bare loop, queued order",
                bare_run(&args, &dir.join("bare-queued"), &batches, BareOrder::Queued)?,
            ));
        }
        drop(batches);
        let n = args.messages as f64;
        println!();
        println!("| run                                  | messages | seconds | msgs/s    | batches | msgs/batch | rows/msg |");
        println!("|--------------------------------------|---------:|--------:|----------:|--------:|-----------:|---------:|");
        for (name, r) in &runs {
            println!(
                "| {name:<36} | {:>8} | {:>7.2} | {:>9.0} | {:>7} | {:>10.1} | {:>8.2} |",
                args.messages,
                r.secs,
                n / r.secs,
                r.batches,
                n / r.batches.max(1) as f64,
                r.rows as f64 / n
            );
        }
        // The store writes each batch in (family, key) order, so the bare loop given the rows in
        // that order for free is the strict like-for-like baseline.
        for (name, r) in &runs[1..] {
            println!("CPU, {name}: {}", cpu_line(r, args.messages));
        }
        let ours = &runs[0].1;
        println!(
            "ratio store/bare: {:.1}% of the bare loop in the store's order, {:.1}% of the bare loop sorting each batch",
            100.0 * runs[1].1.secs / ours.secs,
            100.0 * runs[2].1.secs / ours.secs,
        );
    }
    if !args.skip_inbox {
        inbox_run(&args, &dir.join("inbox"))?;
    }
    Ok(())
}
