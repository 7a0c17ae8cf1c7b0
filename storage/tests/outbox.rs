//! Cross-node delivery in storage: a routed append keeps the remote side's half in the outbox
//! (and hands it to the hook once durable), the other store applies it idempotently by message
//! id, acknowledged entries are deleted, and entries survive a reopen of the RocksDB store; a
//! routed recall owes the event the same way and its application flags the message's copy; a
//! routed relation change owes the other user's rows, applied as a state (a late copy changes
//! nothing), and a block held for a user of another node refuses messages to them.

use std::sync::{Arc, Mutex};

use tern_storage::{
    ClientMsgId, ConvKey, DeviceId, DirectMessage, HistoryDirection, ManualClock, MemEngine,
    MessageFlags, MessageKind, OutboxEntry, Recall, RelationChange, RelationKind, RelationNotice,
    RelationOp, RemoteSide, RemoteWrite, RocksConfig, RocksEngine, Seq, Store, StoreConfig, UserId,
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

#[test]
fn a_routed_append_owes_the_other_half_and_the_other_store_applies_it_once() {
    let a = mem_store();
    let b = mem_store();
    let seen: Arc<Mutex<Vec<OutboxEntry>>> = Arc::default();
    let hook = Arc::clone(&seen);
    assert!(a.set_outbox_hook(Box::new(move |e| hook.lock().expect("lock").extend(e))));
    assert!(!a.set_outbox_hook(Box::new(|_| {})), "one hook per store");

    // alice (here) writes to bob (node-b).
    let r = a
        .append_routed(
            msg("alice", "bob", 1),
            RemoteSide::Recipient,
            "node-b".into(),
        )
        .expect("submit")
        .wait()
        .expect("append");
    assert_eq!(
        (r.conv_seq, r.sender_inbox_seq, r.recipient_inbox_seq),
        (Seq(1), Seq(1), Seq(0))
    );
    let page = a.outbox_page(0, 10).expect("submit").wait().expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].dest_node, "node-b");
    assert_eq!(page[0].write.user().as_str(), "bob");
    assert_eq!(page[0].write.conv_seq, Seq(1));
    assert_eq!(
        *seen.lock().expect("lock"),
        page,
        "the hook got the durable entry"
    );
    // A retransmission gets the original result and owes nothing more.
    let again = a
        .append_routed(
            msg("alice", "bob", 1),
            RemoteSide::Recipient,
            "node-b".into(),
        )
        .expect("submit")
        .wait()
        .expect("append");
    assert!(again.duplicate);
    assert_eq!(again.conv_seq, Seq(1));
    assert_eq!(a.outbox_last().expect("submit").wait().expect("last"), 1);

    // bob's node applies it: inbox entry, unread; a second time writes nothing.
    let w = page[0].write.clone();
    let applied = b
        .apply_remote(w.clone())
        .expect("submit")
        .wait()
        .expect("apply");
    assert_eq!((applied.inbox_seq, applied.duplicate), (Seq(1), false));
    let repeat = b.apply_remote(w).expect("submit").wait().expect("apply");
    assert_eq!((repeat.inbox_seq, repeat.duplicate), (Seq(1), true));
    let inbox = b
        .inbox_page(UserId::new("bob").expect("user"), Seq(0), 10)
        .expect("submit")
        .wait()
        .expect("inbox");
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].message.seq, Seq(1));
    assert_eq!(inbox[0].message.body, b"m1");
    let recent = b
        .recent(UserId::new("bob").expect("user"), 10)
        .expect("submit")
        .wait()
        .expect("recent");
    assert_eq!(recent.total_unread, 1);

    // The other direction: bob's node forwards, the conversation's node (here b, holding the
    // timeline copy, plays the owner for "carol" < "dave") keeps the sender's half.
    let r2 = b
        .append_routed(msg("dave", "carol", 2), RemoteSide::Sender, "node-a".into())
        .expect("submit")
        .wait()
        .expect("append");
    assert_eq!(
        (r2.sender_inbox_seq, r2.recipient_inbox_seq),
        (Seq(0), Seq(1))
    );
    let owed = b.outbox_page(0, 10).expect("submit").wait().expect("page");
    assert_eq!(owed[0].write.side, RemoteSide::Sender);
    let mine = a
        .apply_remote(owed[0].write.clone())
        .expect("submit")
        .wait()
        .expect("apply");
    assert!(!mine.duplicate);

    // Acknowledged entries go.
    a.outbox_done(vec![1])
        .expect("submit")
        .wait()
        .expect("done");
    assert!(a
        .outbox_page(0, 10)
        .expect("submit")
        .wait()
        .expect("page")
        .is_empty());
}

#[test]
fn outbox_entries_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        Store::open(
            RocksEngine::open(dir.path(), &RocksConfig::default()).expect("rocks"),
            StoreConfig::default(),
            Arc::new(ManualClock::new(1_700_000_000_000)),
        )
        .expect("open")
    };
    {
        let s = open();
        for i in 1..=3 {
            s.append_routed(
                msg("alice", "bob", i),
                RemoteSide::Recipient,
                "node-b".into(),
            )
            .expect("submit")
            .wait()
            .expect("append");
        }
        s.outbox_done(vec![2])
            .expect("submit")
            .wait()
            .expect("done");
    }
    let s = open();
    let left: Vec<u64> = s
        .outbox_page(0, 10)
        .expect("submit")
        .wait()
        .expect("page")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, [1, 3]);
    let r = s
        .append_routed(
            msg("alice", "bob", 4),
            RemoteSide::Recipient,
            "node-b".into(),
        )
        .expect("submit")
        .wait()
        .expect("append");
    assert_eq!(r.conv_seq, Seq(4));
    assert_eq!(s.outbox_last().expect("submit").wait().expect("last"), 4);
}

#[test]
fn a_routed_recall_owes_the_event_and_the_other_store_flags_the_copy_once() {
    let a = mem_store();
    let b = mem_store();
    let (alice, bob) = (
        UserId::new("alice").expect("user"),
        UserId::new("bob").expect("user"),
    );
    // alice (here, the conversation's node) writes twice to bob (node-b); bob's node applies.
    for i in 1..=2 {
        a.append_routed(
            msg("alice", "bob", i),
            RemoteSide::Recipient,
            "node-b".into(),
        )
        .expect("submit")
        .wait()
        .expect("append");
    }
    for e in a.outbox_page(0, 10).expect("submit").wait().expect("page") {
        b.apply_remote(e.write)
            .expect("submit")
            .wait()
            .expect("apply");
    }
    let unread = |s: &Store<MemEngine>| {
        s.recent(bob.clone(), 10)
            .expect("submit")
            .wait()
            .expect("recent")
            .total_unread
    };
    assert_eq!(unread(&b), 2);

    // alice recalls message 2: the event is stored here, bob's half is owed to node-b.
    let recall = Recall {
        conv: ConvKey::direct(&alice, &bob),
        seq: Seq(2),
        by: alice.clone(),
        by_device: DeviceId::new("phone").expect("device"),
        client_msg_id: ClientMsgId([9; 16]),
        window_ms: 0,
    };
    let r = a
        .recall_routed(recall.clone(), RemoteSide::Recipient, "node-b".into())
        .expect("submit")
        .wait()
        .expect("recall");
    assert_eq!(
        (r.event_seq, r.by_inbox_seq, r.peer_inbox_seq),
        (Seq(3), Seq(3), Seq(0))
    );
    let again = a
        .recall_routed(recall, RemoteSide::Recipient, "node-b".into())
        .expect("submit")
        .wait()
        .expect("recall");
    assert!(again.duplicate);
    let owed = a.outbox_page(2, 10).expect("submit").wait().expect("page");
    assert_eq!(
        owed.len(),
        1,
        "one entry for the recall, none for its repeat"
    );
    let w = owed[0].write.clone();
    assert_eq!(
        (w.side, w.kind, w.conv_seq, w.body.as_slice()),
        (
            RemoteSide::Recipient,
            MessageKind::RECALL_EVENT,
            Seq(3),
            &[2u8][..]
        )
    );

    // bob's node: the copy reads as recalled, the event is in bob's inbox, unread drops by
    // one; a second application writes nothing.
    let applied = b
        .apply_remote(w.clone())
        .expect("submit")
        .wait()
        .expect("apply");
    assert_eq!((applied.inbox_seq, applied.duplicate), (Seq(3), false));
    assert!(
        b.apply_remote(w)
            .expect("submit")
            .wait()
            .expect("apply")
            .duplicate
    );
    assert_eq!(unread(&b), 1);
    let history = b
        .history(
            ConvKey::direct(&alice, &bob),
            Seq::MAX,
            HistoryDirection::Before,
            10,
        )
        .expect("submit")
        .wait()
        .expect("history");
    let flags: Vec<(u64, bool)> = history
        .iter()
        .map(|m| (m.seq.0, m.flags.contains(MessageFlags::RECALLED)))
        .collect();
    assert_eq!(flags, [(3, false), (2, true), (1, false)]);
}

#[test]
fn a_routed_relation_sends_the_other_users_rows_and_a_late_copy_changes_nothing() {
    let a = mem_store();
    let b = mem_store();
    let (alice, bob) = (
        UserId::new("alice").expect("user"),
        UserId::new("bob").expect("user"),
    );
    let rows_of = |s: &Store<MemEngine>, user: &UserId, kind: RelationKind| -> Vec<String> {
        s.relation_page(user.clone(), kind, None, 10)
            .expect("submit")
            .wait()
            .expect("page")
            .into_iter()
            .map(|r| format!("{} {}", r.other.as_str(), r.note))
            .collect()
    };
    // alice (here; this node decides the pair) asks bob (node-b) to be friends.
    let change = |user: &UserId, other: &UserId, op: RelationOp| RelationChange {
        user: user.clone(),
        other: other.clone(),
        op,
    };
    let request = RelationOp::FriendRequest { note: "hi".into() };
    let r = a
        .relate_routed(
            change(&alice, &bob, request.clone()),
            false,
            "node-b".into(),
        )
        .expect("submit")
        .wait()
        .expect("relate");
    assert!(r.outcome.changed && r.outcome.requested);
    assert_eq!(r.rows.len(), 1);
    assert_eq!(r.rows[0].0, RelationKind::PENDING);
    let owed = a.outbox_page(0, 10).expect("submit").wait().expect("page");
    assert_eq!(owed.len(), 1);
    let first = owed[0].write.clone();
    assert_eq!(first.side, RemoteSide::Relation);
    assert_eq!(first.user(), &bob);
    assert_eq!(
        first.relation_rows().expect("rows").1,
        RelationNotice::Requested
    );
    // Repeated: no new request (no notice); the rows are sent again, unchanged.
    let again = a
        .relate_routed(change(&alice, &bob, request), false, "node-b".into())
        .expect("submit")
        .wait()
        .expect("relate");
    assert!(!again.outcome.requested);
    assert_eq!(again.rows, r.rows);
    let owed = a.outbox_page(1, 10).expect("submit").wait().expect("page");
    assert_eq!(
        owed.iter()
            .map(|e| e.write.relation_rows().expect("rows").1)
            .collect::<Vec<_>>(),
        [RelationNotice::None]
    );
    let applied = b
        .apply_remote(first.clone())
        .expect("submit")
        .wait()
        .expect("apply");
    assert!(!applied.duplicate);
    assert_eq!(rows_of(&b, &bob, RelationKind::PENDING), ["alice hi"]);

    // bob blocks alice (asked through bob's node, decided here): bob's rows come back in the
    // result; here the block refuses alice's next message to bob.
    let r = a
        .relate_routed(
            change(&bob, &alice, RelationOp::Block),
            true,
            "node-b".into(),
        )
        .expect("submit")
        .wait()
        .expect("relate");
    let kinds: Vec<RelationKind> = r.rows.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(kinds, [RelationKind::BLOCKED], "the request was dropped");
    let blocked = a
        .append_routed(
            msg("alice", "bob", 1),
            RemoteSide::Recipient,
            "node-b".into(),
        )
        .expect("submit")
        .wait();
    assert_eq!(blocked, Err(tern_storage::OpError::Blocked));
    let second = RemoteWrite::relation(&bob, &alice, &r.rows, RelationNotice::None, r.version);
    assert!(
        !b.apply_remote(second.clone())
            .expect("submit")
            .wait()
            .expect("apply")
            .duplicate
    );
    assert_eq!(rows_of(&b, &bob, RelationKind::BLOCKED), ["alice "]);
    assert!(rows_of(&b, &bob, RelationKind::PENDING).is_empty());
    // The first write again (a late copy), and the second again: nothing changes.
    for w in [first, second] {
        let late = b.apply_remote(w).expect("submit").wait().expect("apply");
        assert!(late.duplicate);
    }
    assert_eq!(rows_of(&b, &bob, RelationKind::BLOCKED), ["alice "]);
    assert!(rows_of(&b, &bob, RelationKind::PENDING).is_empty());
}
