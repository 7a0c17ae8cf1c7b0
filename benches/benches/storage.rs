//! Storage micro-benchmarks:
//! - `rkyv_access`: reading a stored message in place (what the store does, thanks to rkyv's
//!   `unaligned` format) vs copying it into an `AlignedVec` first (what the aligned format would
//!   force for a value at an arbitrary address, as RocksDB hands them out).
//! - `append_direct`: one-to-one messages through the group-commit writer, on RocksDB with the WAL
//!   fsynced per batch and on the memory engine, from one closed-loop submitter (4096 in flight,
//!   random pairs of 2000 users, so mostly first messages of a conversation): a latency-bound
//!   figure; the two-thread steady-state throughput is `storage_throughput`'s.
//! - `inbox_page`: 100-entry inbox pages joined with their messages, through the reader pool.
//!
//! The full-size numbers (1M-message store, p50/p99, comparison with a bare RocksDB loop) come
//! from `src/bin/storage_throughput.rs`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use tern_storage::testing::{read_message_copied, read_message_in_place, sample_message_archive};
use tern_storage::{
    AppendResult, ClientMsgId, Completion, DeviceId, DirectMessage, Durability, KvEngine,
    MemEngine, MessageKind, RocksConfig, RocksEngine, Seq, Store, StoreConfig, SystemClock, UserId,
};

fn user(n: u64) -> UserId {
    UserId::new(format!("user{n:06}")).expect("short id")
}

fn message(from: u64, to: u64, id: u64) -> DirectMessage {
    let mut cmid = [0u8; 16];
    cmid[8..].copy_from_slice(&id.to_be_bytes());
    DirectMessage {
        sender: user(from),
        sender_device: DeviceId::new("phone").expect("short id"),
        recipient: user(to),
        client_msg_id: ClientMsgId(cmid),
        kind: MessageKind::TEXT,
        body: vec![b'm'; 100],
    }
}

/// Sends `n` messages keeping up to 4096 in flight; ids continue from `next_id`.
fn send_many<E: KvEngine>(
    store: &Store<E>,
    n: u64,
    users: u64,
    next_id: &mut u64,
    rng: &mut impl Rng,
) {
    let mut in_flight: VecDeque<Completion<AppendResult>> = VecDeque::new();
    for _ in 0..n {
        let from = rng.random_range(0..users);
        let to = (from + rng.random_range(1..users)) % users;
        *next_id += 1;
        loop {
            match store.append_direct(message(from, to, *next_id)) {
                Ok(c) => {
                    in_flight.push_back(c);
                    break;
                }
                Err(_) => {
                    let c = in_flight.pop_front().expect("busy with nothing in flight");
                    black_box(c.wait().expect("append"));
                }
            }
        }
        if in_flight.len() >= 4096 {
            black_box(
                in_flight
                    .pop_front()
                    .expect("non-empty")
                    .wait()
                    .expect("append"),
            );
        }
    }
    for c in in_flight {
        black_box(c.wait().expect("append"));
    }
}

fn rkyv_access(c: &mut Criterion) {
    let archive = sample_message_archive(100);
    // Offset by one byte: a pinned RocksDB slice has no alignment guarantee.
    let mut buf = vec![0u8; 1];
    buf.extend_from_slice(&archive);
    let unaligned = &buf[1..];
    let mut g = c.benchmark_group("rkyv_access");
    g.bench_function("in_place", |b| {
        b.iter(|| read_message_in_place(black_box(unaligned)).expect("valid"))
    });
    g.bench_function("aligned_copy", |b| {
        b.iter(|| read_message_copied(black_box(unaligned)).expect("valid"))
    });
    g.finish();
}

fn append_direct(c: &mut Criterion) {
    const N: u64 = 4_000;
    let mut g = c.benchmark_group("append_direct");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));

    let dir = tempfile::tempdir().expect("tempdir");
    let engine = RocksEngine::open(dir.path(), &RocksConfig::default()).expect("open");
    let store = Store::open(engine, StoreConfig::default(), Arc::new(SystemClock)).expect("store");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut next_id = 0;
    g.bench_function("rocksdb_wal_synced_4000_msgs", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                send_many(&store, N, 2_000, &mut next_id, &mut rng);
            }
            start.elapsed()
        })
    });
    drop(store);

    let store = Store::open(
        MemEngine::new(),
        StoreConfig {
            durability: Durability::UnsyncedForBenchmarksOnly,
            ..StoreConfig::default()
        },
        Arc::new(SystemClock),
    )
    .expect("store");
    g.bench_function("memory_engine_4000_msgs", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                send_many(&store, N, 2_000, &mut next_id, &mut rng);
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn inbox_page(c: &mut Criterion) {
    const USERS: u64 = 100;
    const MESSAGES: u64 = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = RocksEngine::open(dir.path(), &RocksConfig::default()).expect("open");
    let config = StoreConfig {
        durability: Durability::UnsyncedForBenchmarksOnly,
        ..StoreConfig::default()
    };
    let store = Store::open(engine, config, Arc::new(SystemClock)).expect("store");
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut next_id = 0;
    send_many(&store, MESSAGES, USERS, &mut next_id, &mut rng);
    store.engine().flush().expect("flush");
    // Each message lands in two inboxes: about 2000 entries per user (a little fewer for some),
    // so pages starting in the first half are always full.
    let per_user = 2 * MESSAGES / USERS;

    let mut g = c.benchmark_group("inbox_page");
    g.throughput(Throughput::Elements(100));
    g.bench_function("100_entries_of_100k_msg_store", |b| {
        b.iter_batched(
            || {
                (
                    rng.random_range(0..USERS),
                    rng.random_range(0..per_user / 2),
                )
            },
            |(u, after)| {
                let page = store
                    .inbox_page(user(u), Seq(after), 100)
                    .expect("submit")
                    .wait()
                    .expect("read");
                assert_eq!(page.len(), 100);
                page
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, rkyv_access, append_direct, inbox_page);
criterion_main!(benches);
