//! Opening damaged or foreign RocksDB databases: the store must refuse to serve and say which file
//! (or family) is at fault.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_storage::*;

fn config() -> RocksConfig {
    RocksConfig {
        block_cache_bytes: 8 << 20,
        ..RocksConfig::default()
    }
}

fn open_store(dir: &Path) -> Result<Store<RocksEngine>, OpenError> {
    let engine = RocksEngine::open(dir, &config())?;
    Store::open(
        engine,
        StoreConfig::default(),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    )
}

/// A database with some messages, flushed to table files.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).unwrap();
    for i in 0..200u64 {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&i.to_be_bytes());
        store
            .append_direct(DirectMessage {
                sender: UserId::new("alice").unwrap(),
                sender_device: DeviceId::new("phone").unwrap(),
                recipient: UserId::new(format!("user{}", i % 7)).unwrap(),
                client_msg_id: ClientMsgId(id),
                kind: MessageKind::TEXT,
                body: vec![b'x'; 100],
            })
            .unwrap()
            .wait()
            .unwrap();
    }
    store.engine().flush().unwrap();
    drop(store);
    dir
}

fn files(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| pred(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    out.sort();
    out
}

fn expect_corrupted(dir: &Path, damaged: &Path) -> OpenError {
    let err = open_store(dir).expect_err("a damaged database must not open");
    match &err {
        OpenError::Corrupted {
            file: Some(file), ..
        } => {
            assert_eq!(file.file_name(), damaged.file_name(), "{err}");
        }
        other => panic!(
            "expected Corrupted naming {}, got {other:?}",
            damaged.display()
        ),
    }
    assert!(
        err.to_string()
            .contains(&*damaged.file_name().unwrap().to_string_lossy()),
        "{err}"
    );
    err
}

#[test]
fn healthy_database_reopens() {
    let dir = populated();
    let store = open_store(dir.path()).unwrap();
    let page = store
        .inbox_page(UserId::new("user3").unwrap(), Seq::ZERO, 1000)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(page.len(), 29);
}

#[test]
fn corrupted_current_is_reported() {
    let dir = populated();
    let current = dir.path().join("CURRENT");
    fs::write(&current, b"garbage-without-newline").unwrap();
    expect_corrupted(dir.path(), &current);
}

#[test]
fn missing_current_is_reported() {
    let dir = populated();
    let current = dir.path().join("CURRENT");
    fs::remove_file(&current).unwrap();
    expect_corrupted(dir.path(), &current);
}

#[test]
fn corrupted_manifest_is_reported() {
    let dir = populated();
    let manifest = files(dir.path(), |n| n.starts_with("MANIFEST-"))
        .pop()
        .unwrap();
    let mut bytes = fs::read(&manifest).unwrap();
    // Damage the payload of the record a third of the way in. Damage that lands on a record's
    // length field can make the record look cut off at the end of the file, which RocksDB
    // reads as a torn tail and tolerates; a payload that fails its checksum is corruption.
    let (start, len) = record_at(&bytes, bytes.len() / 3);
    for b in &mut bytes[start + len / 4..start + len / 4 + (len / 2).max(1)] {
        *b ^= 0x5A;
    }
    fs::write(&manifest, bytes).unwrap();
    expect_corrupted(dir.path(), &manifest);
}

/// The payload (offset, length) of the first record of a RocksDB log file (the MANIFEST's
/// format) that starts at or after `at`: 32 KiB blocks of records, each behind a 7-byte header
/// (checksum u32, length u16 little-endian, type u8); a block's last bytes that cannot hold a
/// header are padding.
fn record_at(log: &[u8], at: usize) -> (usize, usize) {
    const BLOCK: usize = 32 * 1024;
    const HEADER: usize = 7;
    let mut pos = 0;
    loop {
        let left_in_block = BLOCK - pos % BLOCK;
        if left_in_block < HEADER {
            pos += left_in_block;
            continue;
        }
        assert!(pos + HEADER <= log.len(), "no record at or after {at}");
        let len = u16::from_le_bytes([log[pos + 4], log[pos + 5]]) as usize;
        if pos >= at && len > 0 {
            return (pos + HEADER, len);
        }
        pos += HEADER + len;
    }
}

#[test]
fn corrupted_table_footer_is_reported() {
    let dir = populated();
    let table = files(dir.path(), |n| n.ends_with(".sst"))
        .pop()
        .expect("flush made table files");
    let mut bytes = fs::read(&table).unwrap();
    let len = bytes.len();
    // The footer (with the magic number) is the last 48 bytes.
    for b in &mut bytes[len - 48..] {
        *b = 0;
    }
    fs::write(&table, bytes).unwrap();
    expect_corrupted(dir.path(), &table);
}

#[test]
fn truncated_table_is_reported() {
    let dir = populated();
    let table = files(dir.path(), |n| n.ends_with(".sst")).remove(0);
    let bytes = fs::read(&table).unwrap();
    fs::write(&table, &bytes[..bytes.len() / 2]).unwrap();
    expect_corrupted(dir.path(), &table);
}

#[test]
fn corrupted_table_block_is_found_by_verification() {
    let dir = populated();
    // Damage the first data block of the `messages` table.
    let table = {
        let engine = RocksEngine::open(dir.path(), &config()).unwrap();
        let live = engine.db().live_files().unwrap();
        let file = live
            .iter()
            .find(|f| f.column_family_name == "messages")
            .expect("messages table");
        dir.path().join(file.name.trim_start_matches('/'))
    };
    let mut bytes = fs::read(&table).unwrap();
    for b in &mut bytes[20..40] {
        *b ^= 0xFF;
    }
    fs::write(&table, bytes).unwrap();
    let verified = RocksConfig {
        verify_on_open: true,
        ..config()
    };
    let err = RocksEngine::open(dir.path(), &verified).expect_err("verification must fail");
    match &err {
        OpenError::Corrupted {
            file: Some(file),
            family: Some(family),
            ..
        } => {
            assert_eq!(file.file_name(), table.file_name(), "{err}");
            assert_eq!(family, "messages", "{err}");
        }
        other => panic!("expected Corrupted naming the table and family, got {other:?}"),
    }
}

#[test]
fn unknown_families_are_refused_unless_a_newer_schema_explains_them() {
    let dir = populated();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let mut names = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        names.push("from_the_future".into());
        let db = rocksdb::DB::open_cf(&opts, dir.path(), &names).unwrap();
        drop(db);
    }
    let err = open_store(dir.path()).unwrap_err();
    assert!(
        matches!(&err, OpenError::UnknownFamilies(f) if f == &vec!["from_the_future".to_string()]),
        "{err:?}"
    );

    let engine = RocksEngine::open(dir.path(), &config()).unwrap();
    tern_storage::testing::write_schema_version(&engine, SCHEMA_VERSION + 1).unwrap();
    drop(engine);
    let err = open_store(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::NewerSchema { .. }), "{err:?}");
}
