//! One conformance suite, run against every engine: the raw `KvEngine` contract, then every store
//! operation (timelines, dedup, unread, recall, positions, groups, relations, expiry, restarts,
//! schema checks, back-pressure) through the real writer and reader threads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Barrier};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tern_storage::*;

const T0: u64 = 1_700_000_000_000;
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Something that yields engines over the same data: the first call a fresh database, later
/// calls the same database reopened (the previous engine must have been dropped).
trait Harness {
    type E: KvEngine;
    fn new() -> Self;
    fn engine(&self) -> Self::E;
}

struct Mem(MemEngine);

impl Harness for Mem {
    type E = MemEngine;
    fn new() -> Self {
        Mem(MemEngine::new())
    }
    fn engine(&self) -> MemEngine {
        self.0.clone()
    }
}

struct Rocks(tempfile::TempDir);

impl Harness for Rocks {
    type E = RocksEngine;
    fn new() -> Self {
        Rocks(tempfile::tempdir().expect("tempdir"))
    }
    fn engine(&self) -> RocksEngine {
        let config = RocksConfig {
            block_cache_bytes: 8 << 20,
            ..RocksConfig::default()
        };
        RocksEngine::open(self.0.path(), &config).expect("open rocksdb")
    }
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn device(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn group(s: &str) -> GroupId {
    GroupId::new(s).unwrap()
}

fn cmid(n: u64) -> ClientMsgId {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    ClientMsgId(id)
}

fn msg(from: &str, to: &str, id: u64) -> DirectMessage {
    DirectMessage {
        sender: user(from),
        sender_device: device("phone"),
        recipient: user(to),
        client_msg_id: cmid(id),
        kind: MessageKind::TEXT,
        body: format!("{from}->{to} #{id}").into_bytes(),
    }
}

fn open<H: Harness>(h: &H, clock: &Arc<ManualClock>) -> Store<H::E> {
    open_with(h, clock, StoreConfig::default())
}

fn open_with<H: Harness>(h: &H, clock: &Arc<ManualClock>, config: StoreConfig) -> Store<H::E> {
    Store::open(h.engine(), config, clock.clone()).expect("open store")
}

fn send<E: KvEngine>(store: &Store<E>, m: DirectMessage) -> AppendResult {
    store.append_direct(m).unwrap().wait().unwrap()
}

fn inbox<E: KvEngine>(store: &Store<E>, u: &str, after: u64, limit: usize) -> Vec<InboxMessage> {
    store
        .inbox_page(user(u), Seq(after), limit)
        .unwrap()
        .wait()
        .unwrap()
}

fn recent<E: KvEngine>(store: &Store<E>, u: &str) -> RecentList {
    store.recent(user(u), 100).unwrap().wait().unwrap()
}

// ---- the raw engine contract ---------------------------------------------------------------

fn collect(
    engine: &impl KvEngine,
    cf: Cf,
    start: &[u8],
    end: Option<&[u8]>,
    dir: Direction,
    limit: usize,
) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    engine
        .scan(cf, ScanRange { start, end }, dir, limit, &mut |k, _| {
            keys.push(k.to_vec());
            Ok(())
        })
        .unwrap();
    keys
}

fn engine_contract<H: Harness>() {
    let h = H::new();
    let e = h.engine();
    let mut b = WriteBatch::new();
    for k in [b"a1".as_slice(), b"a2", b"a3", b"b1"] {
        b.put(Cf::Messages, k, k);
    }
    b.put(Cf::Inbox, b"a2", b"other family");
    b.put(Cf::Messages, b"a2", b"second put wins");
    b.delete(Cf::Messages, b"a3");
    e.write(&b, true).unwrap();

    assert_eq!(
        e.get_with(Cf::Messages, b"a2", |v| v.to_vec()).unwrap(),
        Some(b"second put wins".to_vec())
    );
    assert_eq!(
        e.get_with(Cf::Inbox, b"a2", |v| v.to_vec()).unwrap(),
        Some(b"other family".to_vec())
    );
    assert_eq!(
        e.get_with(Cf::Messages, b"a3", |v| v.to_vec()).unwrap(),
        None
    );
    assert_eq!(e.get_with(Cf::Dedup, b"a1", |v| v.to_vec()).unwrap(), None);

    let fwd = collect(&e, Cf::Messages, b"a", Some(b"b"), Direction::Forward, 10);
    assert_eq!(fwd, vec![b"a1".to_vec(), b"a2".to_vec()]);
    let back = collect(&e, Cf::Messages, b"a", Some(b"b1"), Direction::Backward, 10);
    assert_eq!(
        back,
        vec![b"a2".to_vec(), b"a1".to_vec()],
        "end bound is exclusive"
    );
    let all_back = collect(&e, Cf::Messages, b"", None, Direction::Backward, 2);
    assert_eq!(
        all_back,
        vec![b"b1".to_vec(), b"a2".to_vec()],
        "limit applies"
    );
    assert!(collect(&e, Cf::Messages, b"a2", Some(b"a2"), Direction::Forward, 10).is_empty());
    assert!(collect(&e, Cf::Messages, b"c", None, Direction::Forward, 10).is_empty());
    assert_eq!(
        collect(&e, Cf::Messages, b"a15", None, Direction::Forward, 1),
        vec![b"a2".to_vec()]
    );

    // A failing visitor stops the scan and its error comes back.
    let err = e
        .scan(
            Cf::Messages,
            ScanRange {
                start: b"",
                end: None,
            },
            Direction::Forward,
            10,
            &mut |_, _| {
                Err(EngineError::BadRecord {
                    family: Cf::Messages,
                    detail: "stop".into(),
                })
            },
        )
        .unwrap_err();
    assert!(matches!(err, EngineError::BadRecord { .. }));

    // Batches are durable across a reopen.
    drop(e);
    let e = h.engine();
    assert_eq!(
        collect(&e, Cf::Messages, b"", None, Direction::Forward, 10).len(),
        3
    );
}

// ---- timelines -----------------------------------------------------------------------------

fn direct_messages_get_sequences<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&h, &clock);
    let a1 = send(&store, msg("alice", "bob", 1));
    clock.set(T0 + 5);
    let b1 = send(&store, msg("bob", "alice", 1)); // same client id, other sender: not a duplicate
    let a2 = send(&store, msg("alice", "bob", 2));
    let c1 = send(&store, msg("carol", "bob", 1));

    let conv = ConvKey::direct(&user("bob"), &user("alice"));
    assert_eq!(
        a1.conv, conv,
        "both directions map to one canonical conversation"
    );
    assert_eq!(b1.conv, conv);
    assert_eq!(
        (a1.conv_seq, b1.conv_seq, a2.conv_seq),
        (Seq(1), Seq(2), Seq(3))
    );
    assert_eq!(c1.conv_seq, Seq(1), "other conversation, own sequence");
    assert_eq!(
        (a1.sender_inbox_seq, a1.recipient_inbox_seq),
        (Seq(1), Seq(1))
    );
    assert_eq!(
        (b1.sender_inbox_seq, b1.recipient_inbox_seq),
        (Seq(2), Seq(2))
    );
    assert_eq!(
        c1.recipient_inbox_seq,
        Seq(4),
        "bob's inbox spans conversations"
    );
    assert_eq!(c1.sender_inbox_seq, Seq(1));
    assert_eq!(a1.time_ms, T0);
    assert_eq!(b1.time_ms, T0 + 5);
    assert!(!a1.duplicate && !c1.duplicate);

    // Bob's inbox: every message to or from him, in inbox order, joined with the message rows.
    let page = inbox(&store, "bob", 0, 100);
    let got: Vec<(u64, &[u8])> = page
        .iter()
        .map(|m| (m.inbox_seq.0, m.message.body.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, b"alice->bob #1".as_slice()),
            (2, b"bob->alice #1".as_slice()),
            (3, b"alice->bob #2".as_slice()),
            (4, b"carol->bob #1".as_slice()),
        ]
    );
    let m = &page[0].message;
    assert_eq!(
        (m.sender.as_str(), m.sender_device.as_str()),
        ("alice", "phone")
    );
    assert_eq!(
        (m.seq, m.client_msg_id, m.kind, m.flags),
        (Seq(1), cmid(1), MessageKind::TEXT, MessageFlags::NONE)
    );
    assert_eq!(
        page[3].message.conv,
        ConvKey::direct(&user("carol"), &user("bob"))
    );

    // Paging from a position, with a limit.
    let page = inbox(&store, "bob", 2, 1);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].inbox_seq, Seq(3));
    assert!(inbox(&store, "bob", 4, 10).is_empty());
    assert_eq!(inbox(&store, "alice", 0, 10).len(), 3);
    assert!(inbox(&store, "nobody", 0, 10).is_empty());

    // History before / after an anchor.
    let before = store
        .history(conv.clone(), Seq(3), HistoryDirection::Before, 10)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        before.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let after = store
        .history(conv.clone(), Seq(1), HistoryDirection::After, 10)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        after.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let latest = store
        .history(conv.clone(), Seq::MAX, HistoryDirection::Before, 1)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(latest[0].seq, Seq(3));
    let one = store
        .message(conv, Seq(2))
        .unwrap()
        .wait()
        .unwrap()
        .unwrap();
    assert_eq!(one.sender, user("bob"));
}

fn retransmissions_are_deduplicated<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&h, &clock);
    let first = send(&store, msg("alice", "bob", 7));
    clock.set(T0 + 1000);
    let again = send(&store, msg("alice", "bob", 7));
    assert!(again.duplicate);
    assert_eq!(
        AppendResult {
            duplicate: false,
            ..again
        },
        first,
        "the original assignment comes back"
    );

    // Many transmissions of one id in flight at once (most land in one batch): one message.
    let pending: Vec<_> = (0..50)
        .map(|_| store.append_direct(msg("alice", "bob", 8)).unwrap())
        .collect();
    let results: Vec<AppendResult> = pending.into_iter().map(|c| c.wait().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results
        .iter()
        .all(|r| r.conv_seq == Seq(2) && r.recipient_inbox_seq == Seq(2)));

    assert_eq!(
        inbox(&store, "bob", 0, 100).len(),
        2,
        "duplicates write nothing"
    );
    let r = recent(&store, "bob");
    assert_eq!(r.total_unread, 2);
    assert_eq!(r.conversations[0].unread, 2);
}

fn unread_counts_and_mark_read<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&h, &clock);
    for i in 1..=3 {
        clock.set(T0 + i);
        send(&store, msg("alice", "bob", i));
    }
    clock.set(T0 + 10);
    send(&store, msg("carol", "bob", 1));
    send(&store, msg("bob", "carol", 2));

    let r = recent(&store, "bob");
    assert_eq!(r.total_unread, 4);
    assert_eq!(r.conversations.len(), 2);
    let carol_conv = ConvKey::direct(&user("bob"), &user("carol"));
    let alice_conv = ConvKey::direct(&user("bob"), &user("alice"));
    assert_eq!(
        r.conversations[0].conv, carol_conv,
        "most recently active first"
    );
    assert_eq!(
        (r.conversations[0].unread, r.conversations[0].last_seq),
        (1, Seq(2))
    );
    assert_eq!(
        r.conversations[0].last_message.as_ref().unwrap().body,
        b"bob->carol #2"
    );
    assert_eq!(
        (r.conversations[1].unread, r.conversations[1].last_seq),
        (3, Seq(3))
    );
    let a = recent(&store, "alice");
    assert_eq!(
        (a.total_unread, a.conversations[0].unread),
        (0, 0),
        "own messages are not unread"
    );

    // Partial read: seqs 2 and 3 stay unread.
    let state = store
        .mark_read(MarkRead {
            user: user("bob"),
            conv: alice_conv.clone(),
            up_to: Seq(1),
        })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        state,
        ReadState {
            read_seq: Seq(1),
            unread: 2,
            total_unread: 3,
            previous_read_seq: Seq(0),
        }
    );
    // Reading past the end clamps to the last message and clears the conversation.
    let state = store
        .mark_read(MarkRead {
            user: user("bob"),
            conv: alice_conv.clone(),
            up_to: Seq(99),
        })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        state,
        ReadState {
            read_seq: Seq(3),
            unread: 0,
            total_unread: 1,
            previous_read_seq: Seq(1),
        }
    );
    // Read positions never move back.
    let state = store
        .mark_read(MarkRead {
            user: user("bob"),
            conv: alice_conv.clone(),
            up_to: Seq(1),
        })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(state.read_seq, Seq(3));
    // A new message counts again.
    send(&store, msg("alice", "bob", 4));
    let r = recent(&store, "bob");
    assert_eq!(r.total_unread, 2);
    let alice_row = r
        .conversations
        .iter()
        .find(|c| c.conv == alice_conv)
        .unwrap();
    assert_eq!((alice_row.unread, alice_row.read_seq), (1, Seq(3)));

    let missing = store
        .mark_read(MarkRead {
            user: user("bob"),
            conv: ConvKey::direct(&user("bob"), &user("zed")),
            up_to: Seq(1),
        })
        .unwrap()
        .wait();
    assert_eq!(missing, Err(OpError::NotFound("conversation")));
}

fn unread_survives_concurrent_senders<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(open(&h, &clock));
    let threads = 4;
    let per_thread = 200u64;
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let sender = format!("sender{t}");
                let pending: Vec<_> = (0..per_thread)
                    .map(|i| store.append_direct(msg(&sender, "bob", i)).unwrap())
                    .collect();
                // Concurrent reads while counters move.
                let _ = store.recent(user("bob"), 10).unwrap().wait().unwrap();
                pending
                    .into_iter()
                    .map(|c| c.wait().unwrap().recipient_inbox_seq)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut inbox_seqs: Vec<Seq> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    inbox_seqs.sort();
    inbox_seqs.dedup();
    assert_eq!(
        inbox_seqs.len(),
        threads * per_thread as usize,
        "inbox seqs are unique"
    );
    assert_eq!(inbox_seqs.last(), Some(&Seq(threads as u64 * per_thread)));
    let r = recent(&store, "bob");
    assert_eq!(
        r.total_unread,
        threads as u64 * per_thread,
        "no lost unread updates"
    );
    assert!(r
        .conversations
        .iter()
        .all(|c| u64::from(c.unread) == per_thread));
}

fn recall_flags_and_appends_an_event<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&h, &clock);
    let conv = ConvKey::direct(&user("alice"), &user("bob"));
    send(&store, msg("alice", "bob", 1));
    send(&store, msg("alice", "bob", 2));
    let recall_with = |by: &str, seq: u64, id: u64, window_ms: u64| {
        store
            .recall(Recall {
                conv: conv.clone(),
                seq: Seq(seq),
                by: user(by),
                by_device: device("phone"),
                client_msg_id: cmid(1_000 + id),
                window_ms,
            })
            .unwrap()
            .wait()
    };
    let next_id = std::cell::Cell::new(0);
    let recall = |by: &str, seq: u64| {
        next_id.set(next_id.get() + 1);
        recall_with(by, seq, next_id.get(), 0)
    };
    assert_eq!(
        recall("bob", 1),
        Err(OpError::NotAllowed("only the sender may recall a message"))
    );
    assert_eq!(recall("alice", 9), Err(OpError::NotFound("message")));
    clock.set(T0 + 50);
    // Message 2 was sent at T0: past a 40 ms window, within a 60 ms one.
    assert_eq!(
        recall_with("alice", 2, 500, 40),
        Err(OpError::RecallExpired)
    );
    let r = recall_with("alice", 1, 501, 60).unwrap();
    assert_eq!(
        r,
        RecallResult {
            event_seq: Seq(3),
            time_ms: T0 + 50,
            by_inbox_seq: Seq(3),
            peer_inbox_seq: Seq(3),
            duplicate: false,
        }
    );
    // The same recall again (a retransmission): the first result, nothing written.
    clock.set(T0 + 70);
    assert_eq!(
        recall_with("alice", 1, 501, 60),
        Ok(RecallResult {
            duplicate: true,
            ..r
        })
    );
    assert_eq!(recall("alice", 1), Err(OpError::AlreadyRecalled));
    assert_eq!(
        recall("alice", 3),
        Err(OpError::Invalid("events cannot be recalled"))
    );

    let history = store
        .history(conv.clone(), Seq::ZERO, HistoryDirection::After, 10)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(history.len(), 3);
    assert!(history[0].flags.contains(MessageFlags::RECALLED));
    assert_eq!(
        history[0].body, b"alice->bob #1",
        "the body is kept for audit"
    );
    assert!(!history[1].flags.contains(MessageFlags::RECALLED));
    assert_eq!(history[2].kind, MessageKind::RECALL_EVENT);
    assert_eq!(history[2].body, [1u8], "the recalled conv_seq as a varint");
    assert_eq!(history[2].client_msg_id, cmid(1_501));
    // Both inboxes get the event; bob's unread drops by the recalled message.
    assert_eq!(
        inbox(&store, "bob", 0, 10).last().unwrap().message.kind,
        MessageKind::RECALL_EVENT
    );
    assert_eq!(inbox(&store, "alice", 0, 10).len(), 3);
    let r = recent(&store, "bob");
    assert_eq!(
        (
            r.total_unread,
            r.conversations[0].unread,
            r.conversations[0].last_seq
        ),
        (1, 1, Seq(3))
    );
    // A later partial mark-read recount also skips the recalled message and the event.
    let state = store
        .mark_read(MarkRead {
            user: user("bob"),
            conv: conv.clone(),
            up_to: Seq::ZERO,
        })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(state.unread, 1);

    // Events cannot be injected as messages.
    let mut event = msg("alice", "bob", 5);
    event.kind = MessageKind::RECALL_EVENT;
    assert!(matches!(
        store.append_direct(event).unwrap().wait(),
        Err(OpError::Invalid(_))
    ));
}

fn device_positions<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&h, &clock);
    let update = |dev: &str, pulled: Option<u64>, acked: Option<u64>, read: Option<u64>| {
        store
            .update_position(PositionUpdate {
                user: user("bob"),
                device: device(dev),
                pulled: pulled.map(Seq),
                acked: acked.map(Seq),
                read: read.map(Seq),
            })
            .unwrap()
    };
    // Several updates in flight at once still merge monotonically.
    let c1 = update("phone", Some(10), Some(5), None);
    let c2 = update("phone", Some(8), Some(7), Some(2));
    let c3 = update("laptop", Some(3), None, None);
    c1.wait().unwrap();
    let p = c2.wait().unwrap();
    c3.wait().unwrap();
    assert_eq!((p.pulled, p.acked, p.read), (Seq(10), Seq(7), Seq(2)));
    let phone = store
        .position(user("bob"), device("phone"))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        phone,
        DevicePosition {
            pulled: Seq(10),
            acked: Seq(7),
            read: Seq(2),
            updated_ms: T0
        }
    );
    let all = store.positions(user("bob")).unwrap().wait().unwrap();
    let names: Vec<&str> = all.iter().map(|p| p.device.as_str()).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"laptop") && names.contains(&"phone"));
    assert_eq!(
        store
            .position(user("bob"), device("tablet"))
            .unwrap()
            .wait()
            .unwrap(),
        DevicePosition::default()
    );
    assert!(
        store
            .positions(user("bo"))
            .unwrap()
            .wait()
            .unwrap()
            .is_empty(),
        "no prefix collisions"
    );
}

fn groups_members_cursors_relations<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&h, &clock);
    let g = group("rustaceans");
    let no_group = store
        .put_member(MemberUpdate {
            group: g.clone(),
            user: user("alice"),
            role: MemberRole::OWNER,
            muted_until_ms: 0,
        })
        .unwrap()
        .wait();
    assert_eq!(no_group, Err(OpError::NotFound("group")));

    let update = GroupUpdate {
        id: g.clone(),
        name: "Rustaceans".into(),
        announcement: "be kind".into(),
        avatar: "media://avatar/1".into(),
        owner: user("alice"),
        settings: 0b101,
        diffusion: Diffusion::READ,
    };
    let info = store.put_group(update.clone()).unwrap().wait().unwrap();
    assert_eq!((info.member_count, info.created_ms), (0, T0));
    // Members added in one burst (one batch) still count correctly.
    let adds: Vec<_> = ["alice", "bob", "carol", "bob"]
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let role = if i == 0 {
                MemberRole::OWNER
            } else {
                MemberRole::MEMBER
            };
            store
                .put_member(MemberUpdate {
                    group: g.clone(),
                    user: user(u),
                    role,
                    muted_until_ms: 0,
                })
                .unwrap()
        })
        .collect();
    for c in adds {
        c.wait().unwrap();
    }
    clock.set(T0 + 100);
    store
        .put_member(MemberUpdate {
            group: g.clone(),
            user: user("bob"),
            role: MemberRole::ADMIN,
            muted_until_ms: T0 + 9,
        })
        .unwrap()
        .wait()
        .unwrap();
    let info = store
        .put_group(GroupUpdate {
            name: "Crabs".into(),
            ..update
        })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        (info.member_count, info.created_ms, info.updated_ms),
        (3, T0, T0 + 100)
    );
    let stored = store.group(g.clone()).unwrap().wait().unwrap().unwrap();
    assert_eq!(stored, info);
    assert_eq!(stored.diffusion, Diffusion::READ);

    let members = store.members(g.clone()).unwrap().wait().unwrap();
    assert_eq!(members.len(), 3);
    let bob = members.iter().find(|m| m.user == user("bob")).unwrap();
    assert_eq!(
        (bob.role, bob.muted_until_ms, bob.joined_ms),
        (MemberRole::ADMIN, T0 + 9, T0)
    );
    let of = store.groups_of(user("bob")).unwrap().wait().unwrap();
    assert_eq!(
        of,
        vec![Membership {
            group: g.clone(),
            role: MemberRole::ADMIN,
            joined_ms: T0
        }]
    );

    let cursor = |acked: Option<u64>, read: Option<u64>| {
        store
            .put_cursor(CursorUpdate {
                group: g.clone(),
                user: user("carol"),
                acked: acked.map(Seq),
                read: read.map(Seq),
            })
            .unwrap()
            .wait()
            .unwrap()
    };
    cursor(Some(10), Some(4));
    let c = cursor(Some(6), None);
    assert_eq!((c.acked, c.read), (Seq(10), Seq(4)));
    assert_eq!(
        store
            .cursor(g.clone(), user("carol"))
            .unwrap()
            .wait()
            .unwrap(),
        c
    );

    assert!(store
        .remove_member(g.clone(), user("carol"))
        .unwrap()
        .wait()
        .unwrap());
    assert!(!store
        .remove_member(g.clone(), user("carol"))
        .unwrap()
        .wait()
        .unwrap());
    assert_eq!(
        store
            .group(g.clone())
            .unwrap()
            .wait()
            .unwrap()
            .unwrap()
            .member_count,
        2
    );
    assert!(store
        .groups_of(user("carol"))
        .unwrap()
        .wait()
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .cursor(g.clone(), user("carol"))
            .unwrap()
            .wait()
            .unwrap(),
        GroupCursor::default()
    );
    assert_eq!(store.group(group("nope")).unwrap().wait().unwrap(), None);

    let relate = |u: &str, op: RelationOp, other: &str| {
        store
            .relate(RelationChange {
                user: user(u),
                other: user(other),
                op,
            })
            .unwrap()
            .wait()
    };
    let list = |u: &str, kind: RelationKind| -> Vec<String> {
        store
            .relation_page(user(u), kind, None, 100)
            .unwrap()
            .wait()
            .unwrap()
            .into_iter()
            .map(|r| r.other.as_str().to_owned())
            .collect()
    };
    assert!(relate("alice", RelationOp::Follow, "bob").unwrap().changed);
    clock.set(T0 + 200);
    assert!(!relate("alice", RelationOp::Follow, "bob").unwrap().changed);
    let following = store
        .relation_page(user("alice"), RelationKind::FOLLOWING, None, 10)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(following[0].since_ms, T0 + 100, "since is kept");
    assert_eq!(list("bob", RelationKind::FOLLOWER), vec!["alice"]);
    let asked = RelationOp::FriendRequest {
        note: "hello".into(),
    };
    assert!(relate("alice", asked, "carol").unwrap().requested);
    let pending = store
        .relation_page(user("carol"), RelationKind::PENDING, None, 10)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(pending[0].note, "hello");
    assert!(
        relate("carol", RelationOp::FriendAccept, "alice")
            .unwrap()
            .befriended
    );
    assert_eq!(list("alice", RelationKind::FRIEND), vec!["carol"]);
    assert_eq!(list("carol", RelationKind::FRIEND), vec!["alice"]);
    assert!(list("carol", RelationKind::PENDING).is_empty());
    assert!(relate("bob", RelationOp::Block, "alice").unwrap().changed);
    assert!(
        list("bob", RelationKind::FOLLOWER).is_empty(),
        "a block ends the follow"
    );
    assert_eq!(
        relate("alice", RelationOp::Follow, "bob"),
        Err(OpError::Blocked)
    );
    let refused = store
        .append_direct(DirectMessage {
            sender: user("alice"),
            sender_device: DeviceId::new("phone").unwrap(),
            recipient: user("bob"),
            client_msg_id: ClientMsgId([42; 16]),
            kind: MessageKind::TEXT,
            body: b"hi".to_vec(),
        })
        .unwrap()
        .wait();
    assert_eq!(refused, Err(OpError::Blocked));
    assert!(inbox(&store, "bob", 0, 10).is_empty(), "nothing stored");
}

// ---- restarts, expiry, open checks, back-pressure --------------------------------------------

fn sequences_continue_after_restart<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let (first, note) = {
        let store = open(&h, &clock);
        send(&store, msg("alice", "bob", 1));
        let note = send(&store, msg("alice", "alice", 2));
        assert_eq!(
            (note.sender_inbox_seq, note.recipient_inbox_seq),
            (Seq(2), Seq(2))
        );
        (send(&store, msg("alice", "bob", 3)), note)
    };
    let store = open(&h, &clock);
    let next = send(&store, msg("bob", "alice", 1));
    assert_eq!(next.conv_seq, Seq(3));
    assert_eq!(
        (next.sender_inbox_seq, next.recipient_inbox_seq),
        (Seq(3), Seq(4))
    );
    let retransmit = send(&store, msg("alice", "bob", 3));
    assert_eq!(
        AppendResult {
            duplicate: false,
            ..retransmit
        },
        first,
        "dedup survives restarts"
    );
    assert_eq!(recent(&store, "bob").total_unread, 2);
    let to_self = recent(&store, "alice");
    let self_conv = to_self
        .conversations
        .iter()
        .find(|c| c.conv == note.conv)
        .unwrap();
    assert_eq!(self_conv.unread, 0, "notes to self are never unread");
}

fn expiry_keeps_the_storage_timeline<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let config = StoreConfig {
        inbox_max_age: 30 * DAY,
        dedup_window: 7 * DAY,
        ..StoreConfig::default()
    };
    let store = open_with(&h, &clock, config.clone());
    let old: Vec<_> = (1..=3)
        .map(|i| send(&store, msg("alice", "bob", i)))
        .collect();
    store.engine().flush().unwrap();

    // After 8 days only the dedup window has passed.
    clock.set(T0 + (8 * DAY).as_millis() as u64);
    store.expire_now().unwrap().wait().unwrap();
    assert_eq!(inbox(&store, "bob", 0, 10).len(), 3);
    let resent = send(&store, msg("alice", "bob", 1));
    assert!(
        !resent.duplicate,
        "outside the dedup window a retransmission is a new message"
    );
    assert_eq!(resent.conv_seq, Seq(4));

    // After 31 days the old inbox entries go; the new one and the whole history stay.
    clock.set(T0 + (31 * DAY).as_millis() as u64);
    let fresh = send(&store, msg("alice", "bob", 100));
    store.expire_now().unwrap().wait().unwrap();
    let page = inbox(&store, "bob", 0, 10);
    assert_eq!(
        page.iter().map(|m| m.message.seq.0).collect::<Vec<_>>(),
        vec![4, 5]
    );
    let history = store
        .history(old[0].conv.clone(), Seq::ZERO, HistoryDirection::After, 10)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(history.len(), 5, "messages never expire");
    assert_eq!(fresh.recipient_inbox_seq, Seq(5));

    // Expire everything of carol's inbox, then restart: her inbox seqs still move forward.
    let c = send(&store, msg("carol", "dave", 1));
    drop(store);
    clock.set(T0 + (70 * DAY).as_millis() as u64);
    let store = open_with(&h, &clock, config);
    store.expire_now().unwrap().wait().unwrap();
    assert!(inbox(&store, "carol", 0, 10).is_empty());
    let c2 = send(&store, msg("carol", "dave", 2));
    assert!(
        c2.sender_inbox_seq > c.sender_inbox_seq,
        "inbox seqs are never reused after expiry"
    );
    assert_eq!(c2.conv_seq, Seq(2));
}

fn head<E: KvEngine>(store: &Store<E>, u: &str) -> u64 {
    store.inbox_head(user(u)).unwrap().wait().unwrap().0
}

fn inbox_head_is_the_last_assigned_inbox_seq<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let config = StoreConfig {
        inbox_max_age: 30 * DAY,
        ..StoreConfig::default()
    };
    let store = open_with(&h, &clock, config.clone());
    assert_eq!(head(&store, "alice"), 0, "nothing assigned yet");

    for i in 1..=3 {
        send(&store, msg("alice", "bob", i));
    }
    assert_eq!((head(&store, "alice"), head(&store, "bob")), (3, 3));
    let note = send(&store, msg("alice", "alice", 10));
    assert_eq!(head(&store, "alice"), note.sender_inbox_seq.0);
    assert_eq!((head(&store, "alice"), head(&store, "bob")), (4, 3));
    let last = send(&store, msg("bob", "alice", 1));
    assert_eq!(head(&store, "alice"), last.recipient_inbox_seq.0);
    assert_eq!(head(&store, "bob"), last.sender_inbox_seq.0);
    let page = inbox(&store, "alice", 0, 100);
    assert_eq!(
        page.last().map(|m| m.inbox_seq.0),
        Some(head(&store, "alice")),
        "the head is the newest entry of a full inbox page"
    );

    // A retransmission assigns nothing; a recall event is an inbox entry for both.
    send(&store, msg("bob", "alice", 1));
    assert_eq!((head(&store, "alice"), head(&store, "bob")), (5, 4));
    let recall = Recall {
        conv: last.conv.clone(),
        seq: last.conv_seq,
        by: user("bob"),
        by_device: device("phone"),
        client_msg_id: cmid(900),
        window_ms: 0,
    };
    store.recall(recall).unwrap().wait().unwrap();
    assert_eq!((head(&store, "alice"), head(&store, "bob")), (6, 5));

    // The head outlives its entries and restarts.
    drop(store);
    clock.set(T0 + (40 * DAY).as_millis() as u64);
    let store = open_with(&h, &clock, config);
    store.expire_now().unwrap().wait().unwrap();
    assert!(inbox(&store, "alice", 0, 100).is_empty());
    assert_eq!((head(&store, "alice"), head(&store, "bob")), (6, 5));
    let next = send(&store, msg("carol", "alice", 1));
    assert_eq!(next.recipient_inbox_seq, Seq(7));
    assert_eq!((head(&store, "alice"), head(&store, "carol")), (7, 1));
}

fn recent_pages_do_not_skip_equal_times<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&h, &clock);
    // Seven conversations last active in the same millisecond, two a millisecond later.
    let senders = ["s1", "s2", "s3", "s4", "s5", "s6", "s7"];
    for (i, s) in senders.iter().enumerate() {
        send(&store, msg(s, "alice", i as u64));
    }
    clock.set(T0 + 1);
    send(&store, msg("t2", "alice", 1));
    send(&store, msg("alice", "t1", 1));

    let page = |after: Option<RecentCursor>, limit: usize| {
        store
            .recent_page(user("alice"), after, limit)
            .unwrap()
            .wait()
            .unwrap()
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let p = page(after.clone(), 3);
        assert_eq!(p.total_unread, 8, "the total covers every conversation");
        assert!(p.conversations.len() <= 3);
        seen.extend(
            p.conversations
                .iter()
                .map(|c| (c.last_time_ms, c.conv.clone())),
        );
        match p.next() {
            Some(next) => after = Some(next),
            None => {
                assert!(!p.more);
                break;
            }
        }
    }
    let all = recent(&store, "alice");
    let expected: Vec<_> = all
        .conversations
        .iter()
        .map(|c| (c.last_time_ms, c.conv.clone()))
        .collect();
    assert_eq!(expected.len(), 9);
    assert_eq!(
        seen, expected,
        "every conversation once, in the list's order"
    );
    // Most recent first; equal times by conversation key.
    let mut sorted = expected.clone();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    assert_eq!(expected, sorted);
    assert_eq!(expected[0].0, T0 + 1);
    assert!(all.conversations[0].last_message.is_some());

    // A page ending inside the tie continues inside it.
    let first = page(None, 4);
    assert!(first.more);
    assert_eq!(first.conversations[3].last_time_ms, T0);
    let second = page(first.next(), 100);
    assert_eq!(second.conversations.len(), 5);
    assert!(!second.more);
    assert_eq!(second.next(), None);

    // A time-only cursor means "strictly older than".
    let older = page(Some(RecentCursor::before(T0 + 1)), 100);
    assert_eq!(older.conversations.len(), 7);
    assert!(older.conversations.iter().all(|c| c.last_time_ms == T0));
    assert!(page(Some(RecentCursor::before(T0)), 100)
        .conversations
        .is_empty());
    let everything = page(Some(RecentCursor::before(T0 + 2)), 100);
    assert_eq!(everything.conversations.len(), 9);
}

fn newer_schema_is_refused<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    drop(open(&h, &clock));
    {
        let engine = h.engine();
        tern_storage::testing::write_schema_version(&engine, SCHEMA_VERSION + 1).unwrap();
    }
    let err = Store::open(h.engine(), StoreConfig::default(), clock.clone()).unwrap_err();
    assert!(
        matches!(err, OpenError::NewerSchema { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer"));
}

fn node_identity_is_checked<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let config = |id: &str| StoreConfig {
        node_id: Some(id.into()),
        ..StoreConfig::default()
    };
    let store = Store::open(h.engine(), config("node-a"), clock.clone()).unwrap();
    assert_eq!(store.node_id(), Some("node-a"));
    drop(store);
    let store = Store::open(h.engine(), StoreConfig::default(), clock.clone()).unwrap();
    assert_eq!(store.node_id(), Some("node-a"));
    drop(store);
    let err = Store::open(h.engine(), config("node-b"), clock.clone()).unwrap_err();
    assert!(matches!(err, OpenError::NodeMismatch { .. }), "{err:?}");
}

/// Wraps an engine so a test can hold the writer inside `write`.
struct Gated<E> {
    inner: E,
    state: Arc<(Mutex<(bool, bool)>, Condvar)>, // (closed, writer waiting)
}

impl<E: KvEngine> KvEngine for Gated<E> {
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
        visit: &mut tern_storage::Visitor<'_>,
    ) -> Result<usize, EngineError> {
        self.inner.scan(cf, range, direction, limit, visit)
    }
    fn prepare(&self, batch: &mut WriteBatch) {
        self.inner.prepare(batch)
    }
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), EngineError> {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock();
        s.1 = true;
        cv.notify_all();
        while s.0 {
            cv.wait(&mut s);
        }
        drop(s);
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

/// Opens the gate when dropped, so a failed assertion cannot leave the writer stuck (and the
/// store's drop waiting for it forever).
struct OpenOnDrop(Arc<(Mutex<(bool, bool)>, Condvar)>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        let (lock, cv) = &*self.0;
        lock.lock().0 = false;
        cv.notify_all();
    }
}

fn full_queue_is_busy<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let state = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let engine = Gated {
        inner: h.engine(),
        state: state.clone(),
    };
    let config = StoreConfig {
        write_queue_capacity: 2,
        ..StoreConfig::default()
    };
    let store = Store::open(engine, config, clock).unwrap();
    let gate = OpenOnDrop(state.clone());
    *state.0.lock() = (true, false);
    let first = store.append_direct(msg("a", "b", 1)).unwrap();
    {
        let (lock, cv) = &*state;
        let mut s = lock.lock();
        while !s.1 {
            cv.wait(&mut s);
        }
    }
    // The committer is stuck writing the first batch. The writer can seal one more batch and
    // build another before it has to wait; after that the queue (2 slots) fills and submissions
    // fail fast.
    let mut queued = Vec::new();
    let mut busy = false;
    for i in 2..10_000 {
        match store.append_direct(msg("a", "b", i)) {
            Ok(c) => queued.push(c),
            Err(e) => {
                assert_eq!(e, SubmitError::Busy);
                busy = true;
                break;
            }
        }
    }
    assert!(
        busy,
        "a stuck writer must make the bounded queue report Busy"
    );
    assert!(
        first.wait_timeout(Duration::from_millis(20)).is_none(),
        "not durable yet, not complete"
    );
    drop(gate);
    assert_eq!(first.wait().unwrap().conv_seq, Seq(1));
    let seqs: Vec<u64> = queued
        .into_iter()
        .map(|c| c.wait().unwrap().conv_seq.0)
        .collect();
    let expected: Vec<u64> = (2..2 + seqs.len() as u64).collect();
    assert_eq!(seqs, expected);
    drop(store);
}

/// Wraps an engine so a test can make writes fail, or take at least `delay` (a slow fsync).
struct Flaky<E> {
    inner: E,
    fail: Arc<std::sync::atomic::AtomicBool>,
    delay: Duration,
}

impl<E: KvEngine> KvEngine for Flaky<E> {
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
        visit: &mut tern_storage::Visitor<'_>,
    ) -> Result<usize, EngineError> {
        self.inner.scan(cf, range, direction, limit, visit)
    }
    fn prepare(&self, batch: &mut WriteBatch) {
        self.inner.prepare(batch)
    }
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), EngineError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EngineError::Backend {
                family: None,
                detail: "injected".into(),
            });
        }
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

/// A burst larger than the writer writes itself goes through the committer in batches of
/// more than 64 operations, one in flight while the next is built; a trickle is written by the
/// writer one small batch at a time. Both keep every conversation's order and every count.
fn bursts_and_trickles_keep_order<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Flaky {
        inner: h.engine(),
        fail: Arc::default(),
        delay: Duration::from_millis(3),
    };
    let store = Store::open(engine, StoreConfig::default(), clock).unwrap();
    const SENDERS: u64 = 20;
    const EACH: u64 = 100;
    let pending: Vec<_> = (0..EACH)
        .flat_map(|i| (0..SENDERS).map(move |s| (s, i)))
        .map(|(s, i)| {
            let m = msg(&format!("s{s}"), "bob", i + 1);
            (s, i, store.append_direct(m).unwrap())
        })
        .collect();
    for (s, i, c) in pending {
        let r = c.wait().unwrap();
        assert_eq!(r.conv_seq, Seq(i + 1), "sender {s}, message {i}");
        assert_eq!(r.sender_inbox_seq, Seq(i + 1));
    }
    let burst = store.writer_stats();
    assert!(
        burst.ops / burst.batches > 64,
        "the burst went through the pipeline: {burst:?}"
    );
    // A trickle: one operation at a time, each written by the writer itself.
    for i in 0..10 {
        let r = send(&store, msg("s0", "bob", EACH + 1 + i));
        assert_eq!(r.conv_seq, Seq(EACH + 1 + i));
    }
    let after = store.writer_stats();
    assert_eq!(
        (after.ops - burst.ops, after.batches - burst.batches),
        (10, 10)
    );
    let inbox = inbox(&store, "bob", 0, 5000);
    assert_eq!(inbox.len() as u64, SENDERS * EACH + 10);
    assert!(inbox
        .iter()
        .enumerate()
        .all(|(k, m)| m.inbox_seq == Seq(k as u64 + 1)));
    assert_eq!(recent(&store, "bob").total_unread, SENDERS * EACH + 10);
}

fn failed_writes_fail_their_operations_and_recover<H: Harness>() {
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let engine = Flaky {
        inner: h.engine(),
        fail: fail.clone(),
        delay: Duration::ZERO,
    };
    let store = Store::open(engine, StoreConfig::default(), clock).unwrap();
    assert_eq!(send(&store, msg("alice", "bob", 1)).conv_seq, Seq(1));
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed: Vec<_> = (2..=20)
        .map(|i| store.append_direct(msg("alice", "bob", i)).unwrap())
        .collect();
    for c in failed {
        assert!(matches!(c.wait(), Err(OpError::Engine(_))));
    }
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    // Nothing of the failed batches was acknowledged or written: the timeline continues at 2,
    // counters were reloaded, and a retransmission of a failed message is new, not a duplicate.
    let next = send(&store, msg("alice", "bob", 5));
    assert_eq!(
        (next.conv_seq, next.recipient_inbox_seq, next.duplicate),
        (Seq(2), Seq(2), false)
    );
    assert_eq!(inbox(&store, "bob", 0, 100).len(), 2);
    assert_eq!(recent(&store, "bob").total_unread, 2);
}

fn completions_are_futures<H: Harness>() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Wake, Waker};

    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let h = H::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&h, &clock);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(store.append_direct(msg("a", "b", 1)).unwrap());
    let result = loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => break r,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(100)),
        }
    };
    assert_eq!(result.unwrap().conv_seq, Seq(1));
}

macro_rules! conformance {
    ($module:ident, $harness:ty) => {
        mod $module {
            use super::*;
            #[test]
            fn engine_contract() {
                super::engine_contract::<$harness>();
            }
            #[test]
            fn direct_messages_get_sequences() {
                super::direct_messages_get_sequences::<$harness>();
            }
            #[test]
            fn retransmissions_are_deduplicated() {
                super::retransmissions_are_deduplicated::<$harness>();
            }
            #[test]
            fn unread_counts_and_mark_read() {
                super::unread_counts_and_mark_read::<$harness>();
            }
            #[test]
            fn unread_survives_concurrent_senders() {
                super::unread_survives_concurrent_senders::<$harness>();
            }
            #[test]
            fn recall_flags_and_appends_an_event() {
                super::recall_flags_and_appends_an_event::<$harness>();
            }
            #[test]
            fn device_positions() {
                super::device_positions::<$harness>();
            }
            #[test]
            fn groups_members_cursors_relations() {
                super::groups_members_cursors_relations::<$harness>();
            }
            #[test]
            fn sequences_continue_after_restart() {
                super::sequences_continue_after_restart::<$harness>();
            }
            #[test]
            fn expiry_keeps_the_storage_timeline() {
                super::expiry_keeps_the_storage_timeline::<$harness>();
            }
            #[test]
            fn inbox_head_is_the_last_assigned_inbox_seq() {
                super::inbox_head_is_the_last_assigned_inbox_seq::<$harness>();
            }
            #[test]
            fn recent_pages_do_not_skip_equal_times() {
                super::recent_pages_do_not_skip_equal_times::<$harness>();
            }
            #[test]
            fn newer_schema_is_refused() {
                super::newer_schema_is_refused::<$harness>();
            }
            #[test]
            fn node_identity_is_checked() {
                super::node_identity_is_checked::<$harness>();
            }
            #[test]
            fn full_queue_is_busy() {
                super::full_queue_is_busy::<$harness>();
            }
            #[test]
            fn failed_writes_fail_their_operations_and_recover() {
                super::failed_writes_fail_their_operations_and_recover::<$harness>();
            }
            #[test]
            fn completions_are_futures() {
                super::completions_are_futures::<$harness>();
            }
            #[test]
            fn bursts_and_trickles_keep_order() {
                super::bursts_and_trickles_keep_order::<$harness>();
            }
        }
    };
}

conformance!(mem, Mem);
conformance!(rocks, Rocks);
