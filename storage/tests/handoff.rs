//! Slot handoff in storage: the old holder exports the moving users' rows (a filtered scan),
//! the new holder imports them with slot terms; sequences continue where the old holder left
//! them (the writer's caches do not survive an import), a message row's RECALLED flag and each
//! side's inbox seq in a dedup row are merged, and the half of a message owed to a user who
//! now lives on the same node as the other side still applies once.

use std::sync::Arc;

use tern_storage::{
    ClientMsgId, ConvKey, DeviceId, DirectMessage, ExportCursor, HandoffRow, HistoryDirection,
    ManualClock, MemEngine, MessageKind, RemoteSide, RemoteWrite, Seq, SlotTerm, Store,
    StoreConfig, UserFilter, UserId,
};

fn msg(from: &str, to: &str, id: u8) -> DirectMessage {
    DirectMessage {
        sender: UserId::new(from).expect("user"),
        sender_device: DeviceId::new("phone").expect("device"),
        recipient: UserId::new(to).expect("user"),
        client_msg_id: ClientMsgId([id; 16]),
        kind: MessageKind::TEXT,
        body: format!("m{id}").into_bytes(),
    }
}

fn mem_store() -> Store<MemEngine> {
    Store::open(
        MemEngine::new(),
        StoreConfig::default(),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    )
    .expect("open")
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("user")
}

/// Every row of `moving`'s users, exported in small pages.
fn export_all(from: &Store<MemEngine>, moving: UserFilter) -> Vec<HandoffRow> {
    let mut rows = Vec::new();
    let mut cursor: Option<ExportCursor> = None;
    for _ in 0..1000 {
        let page = from
            .handoff_export(Arc::clone(&moving), cursor.take(), 3, 1 << 20)
            .expect("submit")
            .wait()
            .expect("export");
        rows.extend(page.rows);
        match page.next {
            Some(c) => cursor = Some(c),
            None => return rows,
        }
    }
    panic!("the export did not end");
}

#[test]
fn a_handed_off_user_continues_where_the_old_holder_left_off() {
    let a = mem_store();
    let n = mem_store();
    // On A: alice and carol (both moving) and dave (staying) talk; bob is served by N.
    for (i, (from, to)) in [
        ("alice", "carol"),
        ("carol", "alice"),
        ("alice", "dave"),
        ("alice", "carol"),
    ]
    .into_iter()
    .enumerate()
    {
        a.append_direct(msg(from, to, i as u8 + 1))
            .expect("submit")
            .wait()
            .expect("append");
    }
    // alice's conversation with bob (alice < bob: A sequences it), bob's half owed to N.
    let routed = a
        .append_routed(msg("alice", "bob", 9), RemoteSide::Recipient, "n".into())
        .expect("submit")
        .wait()
        .expect("append");
    // N applied bob's half (so N caches that conversation's last seq) before the handoff.
    let half = RemoteWrite::of(
        &msg("alice", "bob", 9),
        RemoteSide::Recipient,
        routed.conv_seq,
        routed.time_ms,
    );
    assert!(
        !n.apply_remote(half.clone())
            .expect("submit")
            .wait()
            .expect("apply")
            .duplicate
    );
    let alice_head = a
        .inbox_head(user("alice"))
        .expect("q")
        .wait()
        .expect("head");

    let moving: UserFilter = Arc::new(|u: &str| u == "alice" || u == "carol");
    let rows = export_all(&a, moving);
    assert!(
        rows.iter().all(|r| !r.key.is_empty()),
        "exported rows carry their keys"
    );
    n.handoff_import(rows, Vec::new())
        .expect("submit")
        .wait()
        .expect("import");
    n.handoff_import(
        Vec::new(),
        vec![SlotTerm {
            slot: 7,
            term: 2,
            held: true,
        }],
    )
    .expect("submit")
    .wait()
    .expect("terms");
    assert_eq!(
        n.slot_terms().expect("q").wait().expect("terms"),
        vec![SlotTerm {
            slot: 7,
            term: 2,
            held: true
        }]
    );

    // alice's inbox, head and conversations are on N as they were on A.
    let on = |s: &Store<MemEngine>| {
        s.inbox_page(user("alice"), Seq(0), 100)
            .expect("q")
            .wait()
            .expect("page")
            .into_iter()
            .map(|m| (m.inbox_seq, m.message.seq, m.message.body))
            .collect::<Vec<_>>()
    };
    assert_eq!(on(&n), on(&a));
    assert_eq!(on(&n).len(), 5);
    assert_eq!(
        n.inbox_head(user("alice"))
            .expect("q")
            .wait()
            .expect("head"),
        alice_head
    );
    let history = |s: &Store<MemEngine>, a: &str, b: &str| {
        s.history(
            ConvKey::direct(&user(a), &user(b)),
            Seq(0),
            HistoryDirection::After,
            100,
        )
        .expect("q")
        .wait()
        .expect("history")
        .into_iter()
        .map(|m| (m.seq, m.body))
        .collect::<Vec<_>>()
    };
    assert_eq!(history(&n, "alice", "carol"), history(&a, "alice", "carol"));
    assert_eq!(history(&n, "alice", "dave").len(), 1);

    // New messages continue the sequences (nothing cached before the import is used).
    let next = n
        .append_direct(msg("carol", "alice", 20))
        .expect("submit")
        .wait()
        .expect("append");
    assert_eq!(next.conv_seq, Seq(4), "after alice-carol's 3 messages");
    assert_eq!(next.recipient_inbox_seq, Seq(alice_head.0 + 1));
    let next = n
        .append_direct(msg("bob", "alice", 21))
        .expect("submit")
        .wait()
        .expect("append");
    assert_eq!(next.conv_seq, Seq(routed.conv_seq.0 + 1));
    // A retransmission of a message sent on A is recognised on N.
    let again = n
        .append_direct(msg("alice", "carol", 4))
        .expect("submit")
        .wait()
        .expect("append");
    assert!(again.duplicate);
    assert_eq!(again.conv_seq, Seq(3));
    // bob's half was applied on N before: applying it again changes nothing.
    assert!(
        n.apply_remote(half)
            .expect("submit")
            .wait()
            .expect("apply")
            .duplicate
    );
}

#[test]
fn the_other_half_still_applies_once_both_users_live_together() {
    // bob (on B) sends to alice (on A); bob < alice? No: alice < bob, so A sequences the
    // conversation; here B forwarded it, A stored it with bob's half owed to B.
    let a = mem_store();
    let b = mem_store();
    let r = a
        .append_routed(msg("bob", "alice", 1), RemoteSide::Sender, "b".into())
        .expect("submit")
        .wait()
        .expect("append");
    assert_eq!(r.sender_inbox_seq, Seq(0));
    // B's user bob moves to A before bob's half reached B. Export bob's rows from B (none
    // about this message yet) into A, then bob's half (the outbox entry) reaches A itself.
    let moving: UserFilter = Arc::new(|u: &str| u == "bob");
    let rows = export_all(&b, moving);
    a.handoff_import(rows, Vec::new())
        .expect("submit")
        .wait()
        .expect("import");
    let half = RemoteWrite::of(
        &msg("bob", "alice", 1),
        RemoteSide::Sender,
        r.conv_seq,
        r.time_ms,
    );
    let applied = a
        .apply_remote(half.clone())
        .expect("submit")
        .wait()
        .expect("apply");
    assert!(
        !applied.duplicate,
        "bob's half had not been applied anywhere"
    );
    assert_eq!(applied.inbox_seq, Seq(1));
    let again = a.apply_remote(half).expect("submit").wait().expect("apply");
    assert!(again.duplicate);
    assert_eq!(again.inbox_seq, Seq(1));
    // A retransmission of the SEND now finds both sides' inbox seqs.
    let retry = a
        .append_direct(msg("bob", "alice", 1))
        .expect("submit")
        .wait()
        .expect("append");
    assert!(retry.duplicate);
    assert_eq!(
        (retry.sender_inbox_seq, retry.recipient_inbox_seq),
        (Seq(1), r.recipient_inbox_seq)
    );
    // alice's inbox has the message once.
    let inbox = a
        .inbox_page(user("alice"), Seq(0), 10)
        .expect("q")
        .wait()
        .expect("page");
    assert_eq!(inbox.len(), 1);
}
