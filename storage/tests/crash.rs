//! Crash test: a child process (this test binary, re-executed) writes through the group-commit
//! writer and logs every completion it receives; the parent SIGKILLs it at a random moment, reopens
//! the database, and checks that every completed write is there exactly once, that
//! retransmissions across restarts get their original result, that timelines have no holes, and
//! that new sequences continue above everything handed out before. Twenty-plus rounds on one
//! data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use tern_storage::*;

const CHILD_ENV: &str = "TERN_STORAGE_CRASH_CHILD_DIR";
const ROUND_ENV: &str = "TERN_STORAGE_CRASH_ROUND";
const READY: &str = "TERN-CRASH-CHILD-READY";
const USERS: [&str; 4] = ["ann", "ben", "cat", "dan"];
const ROUNDS: u32 = 22;

/// Sender and recipient are a function of the message id, so a retransmission in a later round
/// rebuilds exactly the same message.
fn parties(id: u64) -> (usize, usize) {
    let s = (id % 4) as usize;
    let r = (s + 1 + ((id / 4) % 3) as usize) % 4;
    (s, r)
}

fn message(id: u64) -> DirectMessage {
    let (s, r) = parties(id);
    let mut cmid = [0u8; 16];
    cmid[8..].copy_from_slice(&id.to_be_bytes());
    DirectMessage {
        sender: UserId::new(USERS[s]).unwrap(),
        sender_device: DeviceId::new("dev").unwrap(),
        recipient: UserId::new(USERS[r]).unwrap(),
        client_msg_id: ClientMsgId(cmid),
        kind: MessageKind::TEXT,
        body: id.to_be_bytes().to_vec(),
    }
}

fn id_of(m: &StoredMessage) -> u64 {
    u64::from_be_bytes(m.client_msg_id.0[8..].try_into().unwrap())
}

fn engine(dir: &Path) -> RocksEngine {
    RocksEngine::open(
        dir,
        &RocksConfig {
            block_cache_bytes: 8 << 20,
            ..RocksConfig::default()
        },
    )
    .expect("open")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    round: u32,
    id: u64,
    conv_seq: u64,
    sender_inbox: u64,
    recipient_inbox: u64,
    time_ms: u64,
    duplicate: bool,
}

impl Record {
    fn parse(line: &str) -> Option<Record> {
        let f: Vec<u64> = line
            .split(' ')
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let [round, id, conv_seq, sender_inbox, recipient_inbox, time_ms, dup] = f[..] else {
            return None;
        };
        Some(Record {
            round: round as u32,
            id,
            conv_seq,
            sender_inbox,
            recipient_inbox,
            time_ms,
            duplicate: dup == 1,
        })
    }

    fn assignment(&self) -> (u64, u64, u64, u64) {
        (
            self.conv_seq,
            self.sender_inbox,
            self.recipient_inbox,
            self.time_ms,
        )
    }
}

fn read_log(path: &Path) -> Vec<Record> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    // Only a final, unterminated line may be torn by the kill; every terminated line must parse.
    complete
        .lines()
        .map(|l| Record::parse(l).unwrap_or_else(|| panic!("bad log line {l:?}")))
        .collect()
}

/// Whether a complete line was appended to `log` past byte `from`.
fn completed_since(log: &Path, from: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(log) else {
        return false;
    };
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(from))
        .and_then(|_| file.read_to_end(&mut tail))
        .is_ok_and(|_| tail.contains(&b'\n'))
}

/// The child: writes until killed.
#[test]
#[ignore = "run by crash_test_kills_the_writer_repeatedly as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let round: u32 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let earlier = read_log(&dir.join("completions.log"));
    let store = Arc::new(
        Store::open(
            engine(&dir.join("db")),
            StoreConfig {
                write_queue_capacity: 1024,
                ..StoreConfig::default()
            },
            Arc::new(SystemClock),
        )
        .expect("child open"),
    );
    let log = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("completions.log"))
            .unwrap(),
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(round) * 7919);
    // Retransmit some completed ids, and ids just past the last completion of the previous
    // round: those were likely in flight when it was killed (durable or not, we cannot know).
    let mut retransmit: Vec<u64> = Vec::new();
    if !earlier.is_empty() {
        for _ in 0..40 {
            retransmit.push(earlier[rng.random_range(0..earlier.len())].id);
        }
        let prev = earlier
            .iter()
            .filter(|r| r.round + 1 == round)
            .map(|r| r.id)
            .max();
        if let Some(prev) = prev {
            retransmit.extend(prev + 1..prev + 40);
        }
    }
    println!("{READY}");
    std::io::stdout().flush().unwrap();

    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let store = store.clone();
            let log = log.clone();
            let retransmit: Vec<u64> = retransmit
                .iter()
                .copied()
                .skip(t as usize)
                .step_by(2)
                .collect();
            std::thread::spawn(move || {
                let mut in_flight = std::collections::VecDeque::new();
                let mut next_new = (u64::from(round) << 32) | (t << 31);
                let mut retransmit = retransmit.into_iter();
                let complete = |(id, c): (u64, Completion<AppendResult>)| {
                    let r = c.wait().expect("append");
                    let line = format!(
                        "{round} {id} {} {} {} {} {}\n",
                        r.conv_seq.0,
                        r.sender_inbox_seq.0,
                        r.recipient_inbox_seq.0,
                        r.time_ms,
                        u8::from(r.duplicate)
                    );
                    // One write per line, after the completion arrived.
                    log.lock().write_all(line.as_bytes()).unwrap();
                };
                for n in 0u64.. {
                    let id =
                        if n % 5 == 0 { retransmit.next() } else { None }.unwrap_or_else(|| {
                            next_new += 1;
                            next_new
                        });
                    loop {
                        match store.append_direct(message(id)) {
                            Ok(c) => {
                                in_flight.push_back((id, c));
                                break;
                            }
                            Err(SubmitError::Busy) => complete(in_flight.pop_front().unwrap()),
                            Err(SubmitError::Closed) => panic!("closed"),
                        }
                    }
                    if in_flight.len() >= 200 {
                        complete(in_flight.pop_front().unwrap());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

struct Seen {
    /// Highest conv seq / inbox seq in any completion of earlier rounds.
    conv_max: HashMap<(usize, usize), u64>,
    inbox_max: [u64; 4],
}

fn conv_of(id: u64) -> (usize, usize) {
    let (s, r) = parties(id);
    (s.min(r), s.max(r))
}

fn verify(dir: &Path, records: &[Record], round: u32, seen: &mut Seen) -> usize {
    let store = Store::open(
        engine(&dir.join("db")),
        StoreConfig::default(),
        Arc::new(SystemClock),
    )
    .expect("reopen");

    // Every timeline is gap-free and holds each client msg id at most once.
    let mut timeline: HashMap<(usize, usize), BTreeMap<u64, u64>> = HashMap::new();
    for (a, name_a) in USERS.iter().enumerate() {
        for (b, name_b) in USERS.iter().enumerate().skip(a + 1) {
            let conv = ConvKey::direct(
                &UserId::new(*name_a).unwrap(),
                &UserId::new(*name_b).unwrap(),
            );
            let msgs = store
                .history(conv, Seq::ZERO, HistoryDirection::After, usize::MAX)
                .unwrap()
                .wait()
                .unwrap();
            let mut by_id = HashMap::new();
            let mut map = BTreeMap::new();
            for (i, m) in msgs.iter().enumerate() {
                assert_eq!(m.seq.0, i as u64 + 1, "conversation {a}-{b} has a hole");
                let id = id_of(m);
                assert_eq!(conv_of(id), (a, b));
                assert!(
                    by_id.insert(id, m.seq.0).is_none(),
                    "message {id} stored twice"
                );
                map.insert(m.seq.0, id);
            }
            timeline.insert((a, b), map);
        }
    }
    let mut inboxes: Vec<BTreeMap<u64, (ConvKey, u64)>> = Vec::new();
    for (u, name) in USERS.iter().enumerate() {
        let page = store
            .inbox_page(UserId::new(*name).unwrap(), Seq::ZERO, usize::MAX)
            .unwrap()
            .wait()
            .unwrap();
        let mut map = BTreeMap::new();
        for (i, e) in page.iter().enumerate() {
            assert_eq!(e.inbox_seq.0, i as u64 + 1, "inbox of {name} has a hole");
            map.insert(e.inbox_seq.0, (e.message.conv.clone(), e.message.seq.0));
        }
        assert!(
            map.len() as u64 >= seen.inbox_max[u],
            "inbox of {name} lost entries"
        );
        inboxes.push(map);
    }

    // Every completed write is present, with the assignment its completion reported, and every
    // completion of the same id (retransmissions, across restarts) reported the same one.
    let mut first: HashMap<u64, Record> = HashMap::new();
    for r in records {
        let original = *first.entry(r.id).or_insert(*r);
        assert_eq!(
            r.assignment(),
            original.assignment(),
            "retransmission of {} got a different result",
            r.id
        );
        let (s, rc) = parties(r.id);
        let conv = conv_of(r.id);
        assert_eq!(
            timeline[&conv].get(&r.conv_seq),
            Some(&r.id),
            "completed message {} missing",
            r.id
        );
        let conv_key = ConvKey::direct(
            &UserId::new(USERS[s]).unwrap(),
            &UserId::new(USERS[rc]).unwrap(),
        );
        assert_eq!(
            inboxes[s].get(&r.sender_inbox),
            Some(&(conv_key.clone(), r.conv_seq))
        );
        assert_eq!(
            inboxes[rc].get(&r.recipient_inbox),
            Some(&(conv_key, r.conv_seq))
        );
    }

    // Sequences handed out in this round continue above everything handed out before it.
    for r in records.iter().filter(|r| r.round == round && !r.duplicate) {
        let (s, rc) = parties(r.id);
        let before = seen.conv_max.get(&conv_of(r.id)).copied().unwrap_or(0);
        assert!(
            r.conv_seq > before,
            "conv seq {} reused (had {before})",
            r.conv_seq
        );
        assert!(r.sender_inbox > seen.inbox_max[s], "inbox seq reused");
        assert!(r.recipient_inbox > seen.inbox_max[rc], "inbox seq reused");
    }
    for r in records.iter().filter(|r| r.round == round) {
        let (s, rc) = parties(r.id);
        let m = seen.conv_max.entry(conv_of(r.id)).or_insert(0);
        *m = (*m).max(r.conv_seq);
        seen.inbox_max[s] = seen.inbox_max[s].max(r.sender_inbox);
        seen.inbox_max[rc] = seen.inbox_max[rc].max(r.recipient_inbox);
    }
    records.iter().filter(|r| r.round == round).count()
}

#[test]
fn crash_test_kills_the_writer_repeatedly() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut seen = Seen {
        conv_max: HashMap::new(),
        inbox_max: [0; 4],
    };
    let (mut total, mut dups) = (0, 0);
    let log = dir.path().join("completions.log");
    for round in 1..=ROUNDS {
        let logged = std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(READY) => break,
                Some(Ok(_)) => continue,
                other => panic!(
                    "child exited before it was ready: {other:?} {:?}",
                    child.wait()
                ),
            }
        }
        // Kill at a random moment after the round's first completion: on a loaded machine a
        // fixed delay after start can end a round before anything completed. Only this child
        // appends to the log, so its first completed line is the first newline past `logged`.
        let waiting = Instant::now();
        while !completed_since(&log, logged) {
            assert!(
                waiting.elapsed() < Duration::from_secs(30),
                "round {round} completed nothing in 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A child completes over a thousand writes per 10 ms; a short window keeps the history
        // that every round re-reads (and so the test) small.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..=60)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the child must have been killed, not finished"
        );

        // The kill may tear the line being written; cut it so the next child appends cleanly.
        if let Ok(text) = std::fs::read(&log) {
            let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if keep < text.len() {
                OpenOptions::new()
                    .write(true)
                    .open(&log)
                    .unwrap()
                    .set_len(keep as u64)
                    .unwrap();
            }
        }
        let records = read_log(&log);
        let this_round = verify(dir.path(), &records, round, &mut seen);
        assert!(
            this_round > 0,
            "round {round} completed nothing before the kill"
        );
        total += this_round;
        dups += records
            .iter()
            .filter(|r| r.round == round && r.duplicate)
            .count();
    }
    assert!(dups > 0, "retransmissions across restarts were exercised");
    eprintln!(
        "crash test: {ROUNDS} kills, {total} completions checked ({dups} duplicates), {:?}",
        started.elapsed()
    );
    // Keep the log writer honest: the file the child appends to is the one we read.
    drop(File::open(dir.path().join("completions.log")).unwrap());
}
