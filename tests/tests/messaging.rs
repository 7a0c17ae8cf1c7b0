//! One-to-one messaging end to end: real `ternd` processes, real sockets, real RocksDB.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tern_protocol::{
    Body, Contacts, Conv, Direction, Flags, Frame, History, Message, MessageKind, MsgId, PushAck,
    Read, ReceiptKind, Send, SendAck, Sync,
};
use tern_tests::{assert_silent, is_push, recv_until, Node, WAIT};
use tern_tools::Connection;

fn msg_id(tag: u64) -> MsgId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&0x7465_726e_7465_7374u64.to_be_bytes());
    id[8..].copy_from_slice(&tag.to_be_bytes());
    MsgId(id)
}

fn send_frame(rid: u32, to: &str, id: MsgId, text: &str) -> Frame<'static> {
    Frame::new(
        rid,
        Body::Send(Send {
            to: Conv::direct(to.to_owned()),
            msg_id: id,
            kind: MessageKind::TEXT,
            body: text.as_bytes().to_vec().into(),
        }),
    )
}

fn send(conn: &mut Connection, to: &str, id: MsgId, text: &str) -> SendAck {
    let rid = conn.next_request_id();
    match conn
        .request_with(send_frame(rid, to, id, text), WAIT)
        .unwrap()
        .body
    {
        Body::SendAck(a) => {
            assert_eq!(a.msg_id, id);
            a
        }
        other => panic!("expected SEND_ACK, got {other:?}"),
    }
}

fn sync_all(conn: &mut Connection, mut after: u64) -> Vec<Message<'static>> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let f = conn
            .request(
                Body::Sync(Sync {
                    after_inbox_seq: after,
                    limit: 7,
                }),
                WAIT,
            )
            .unwrap();
        let Body::SyncPage(p) = f.body else {
            panic!("expected SYNC_PAGE, got {f:?}")
        };
        for m in p.messages {
            assert!(m.inbox_seq > after, "inbox order");
            after = m.inbox_seq;
            out.push(m);
        }
        if !p.more {
            assert_eq!(p.head, after);
            return out;
        }
    }
    panic!("sync did not end");
}

fn history(conn: &mut Connection, with: &str) -> Vec<Message<'static>> {
    let mut out = Vec::new();
    let mut before = 0;
    for _ in 0..1000 {
        let body = Body::History(History {
            conv: Conv::direct(with.to_owned()),
            direction: Direction::BEFORE,
            seq: before,
            limit: 9,
        });
        let f = conn.request(body, WAIT).unwrap();
        let Body::HistoryPage(p) = f.body else {
            panic!("expected HISTORY_PAGE, got {f:?}")
        };
        let mut page = p.messages;
        assert!(
            page.windows(2).all(|w| w[0].conv_seq < w[1].conv_seq),
            "ascending conv_seq"
        );
        before = page.first().map_or(0, |m| m.conv_seq);
        page.extend(out);
        out = page;
        if !p.more {
            return out;
        }
    }
    panic!("history did not end");
}

fn text(m: &Message<'_>) -> String {
    String::from_utf8(m.body.to_vec()).unwrap()
}

#[test]
fn online_and_offline_delivery_two_users_three_devices() {
    let node = Node::start();
    let mut alice_phone = node.connect("alice", "phone");
    let mut alice_laptop = node.connect("alice", "laptop");
    let mut bob_phone = node.connect("bob", "phone");
    let w = alice_phone.welcome().unwrap();
    assert_eq!(w.user, "alice");
    assert!(w.heartbeat_secs > 0 && w.idle_timeout_secs > w.heartbeat_secs);

    // Online: bob's device and alice's other device get a PUSH; the sending device does not.
    let ack = send(&mut alice_phone, "bob", msg_id(1), "hello bob");
    assert_eq!(ack.conv_seq, 1);
    let (f, _) = recv_until(&mut bob_phone, is_push);
    let Body::Push(m) = f.body else {
        unreachable!()
    };
    assert_eq!(
        (
            m.conv.id.as_ref(),
            m.sender.as_ref(),
            m.sender_device.as_ref()
        ),
        ("alice", "alice", "phone")
    );
    assert_eq!((m.conv_seq, text(&m)), (1, "hello bob".to_owned()));
    assert_eq!(m.msg_id, msg_id(1));
    assert!(m.inbox_seq >= 1);
    let (f, _) = recv_until(&mut alice_laptop, is_push);
    let Body::Push(m) = f.body else {
        unreachable!()
    };
    assert_eq!(
        (m.conv.id.as_ref(), m.conv_seq, m.inbox_seq),
        ("bob", 1, ack.inbox_seq)
    );
    assert_silent(&mut alice_phone, Duration::from_millis(300));

    // bob answers; both alice devices get it.
    let back = send(&mut bob_phone, "alice", msg_id(2), "hi alice");
    assert_eq!(back.conv_seq, 2);
    for c in [&mut alice_phone, &mut alice_laptop] {
        let (f, _) = recv_until(c, is_push);
        let Body::Push(m) = f.body else {
            unreachable!()
        };
        assert_eq!((m.conv.id.as_ref(), m.conv_seq), ("bob", 2));
    }

    // bob acknowledges what he has, goes offline; alice sends three more.
    let pos = sync_all(&mut bob_phone, 0).last().unwrap().inbox_seq;
    bob_phone
        .request(Body::PushAck(PushAck { inbox_seq: pos }), WAIT)
        .unwrap();
    drop(bob_phone);
    for i in 0..3 {
        send(
            &mut alice_phone,
            "bob",
            msg_id(10 + i),
            &format!("offline {i}"),
        );
    }
    // Offline: bob's new device pulls them from his position, in order.
    let mut bob_tablet = node.connect("bob", "tablet");
    let pulled = sync_all(&mut bob_tablet, pos);
    let texts: Vec<_> = pulled.iter().map(text).collect();
    assert_eq!(texts, ["offline 0", "offline 1", "offline 2"]);
    assert_eq!(
        pulled.iter().map(|m| m.conv_seq).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    // Everything from the start, on a fresh device: the whole timeline once.
    let all = sync_all(&mut bob_tablet, 0);
    assert_eq!(all.len(), 5);
    let hist = history(&mut alice_laptop, "bob");
    assert_eq!(
        hist.iter().map(|m| m.conv_seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );

    // The admin endpoint reports health and counters.
    let (status, body) = node.admin_get("/healthz");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok\n");
    let (status, metrics) = node.admin_get("/metrics");
    assert!(status.contains("200"));
    assert!(
        metrics.contains("tern_messages_stored_total 5"),
        "{metrics}"
    );
}

#[test]
fn read_moves_the_read_position_and_notifies_the_peer() {
    let node = Node::start();
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    for i in 0..3 {
        send(&mut alice, "bob", msg_id(i), &format!("m{i}"));
    }
    let contacts = |c: &mut Connection| {
        let f = c
            .request(
                Body::Contacts(Contacts {
                    before_time: 0,
                    limit: 0,
                }),
                WAIT,
            )
            .unwrap();
        let Body::ContactsPage(p) = f.body else {
            panic!("{f:?}")
        };
        p
    };
    let page = contacts(&mut bob);
    assert_eq!(page.total_unread, 3);
    assert_eq!(page.entries.len(), 1);
    assert_eq!(
        (page.entries[0].conv.id.as_ref(), page.entries[0].unread),
        ("alice", 3)
    );
    assert_eq!(text(page.entries[0].last.as_ref().unwrap()), "m2");
    let f = bob
        .request(
            Body::Read(Read {
                conv: Conv::direct("alice"),
                conv_seq: 3,
            }),
            WAIT,
        )
        .unwrap();
    assert_eq!(f.body, Body::Ok);
    let (f, _) = recv_until(&mut alice, |f| matches!(f.body, Body::Receipt(_)));
    let Body::Receipt(r) = f.body else {
        unreachable!()
    };
    assert_eq!(
        (r.conv.id.as_ref(), r.user.as_ref(), r.kind, r.conv_seq),
        ("bob", "bob", ReceiptKind::READ, 3)
    );
    let page = contacts(&mut bob);
    assert_eq!(
        (
            page.total_unread,
            page.entries[0].unread,
            page.entries[0].read_seq
        ),
        (0, 0, 3)
    );
    let page = contacts(&mut alice);
    assert_eq!(page.entries[0].conv.id, "bob");
    assert_eq!(page.entries[0].unread, 0);
}

#[test]
fn sigkill_between_send_ack_and_pull_keeps_the_message() {
    let mut node = Node::start();
    let mut alice = node.connect("alice", "phone");
    let ack = send(&mut alice, "bob", msg_id(1), "survives a crash");
    drop(alice);
    node.restart(); // SIGKILL, then start on the same data dir
    let mut bob = node.connect("bob", "phone");
    let pulled = sync_all(&mut bob, 0);
    assert_eq!(pulled.len(), 1);
    assert_eq!(text(&pulled[0]), "survives a crash");
    assert_eq!(
        (pulled[0].conv_seq, pulled[0].time),
        (ack.conv_seq, ack.time)
    );
    // Sequences continue after the restart instead of being reused.
    let mut alice = node.connect("alice", "phone");
    assert_eq!(send(&mut alice, "bob", msg_id(2), "after").conv_seq, 2);
}

#[test]
fn lost_send_ack_and_retransmission_store_exactly_one_message() {
    let node = Node::start();
    let mut bob = node.connect("bob", "phone");
    // The SEND goes out, the connection dies before the client reads SEND_ACK.
    let mut alice = node.connect("alice", "phone");
    alice
        .send(&send_frame(5, "bob", msg_id(42), "once"))
        .unwrap();
    let (f, _) = recv_until(&mut bob, is_push); // stored and delivered
    let Body::Push(first) = f.body else {
        unreachable!()
    };
    alice.shutdown();
    drop(alice);
    // The client retransmits on a new connection: same msgid, RETRANSMIT flag.
    let mut alice = node.connect("alice", "phone");
    let mut again = send_frame(1, "bob", msg_id(42), "once");
    again.flags = Flags::RETRANSMIT;
    let Body::SendAck(ack) = alice.request_with(again, WAIT).unwrap().body else {
        panic!()
    };
    assert_eq!((ack.conv_seq, ack.time), (first.conv_seq, first.time));
    // ...and a second retransmission on the same connection gets the same answer.
    let ack2 = send(&mut alice, "bob", msg_id(42), "once");
    assert_eq!(ack2, ack);
    // Nothing new was created or pushed.
    assert_silent(&mut bob, Duration::from_millis(300));
    assert_eq!(history(&mut bob, "alice").len(), 1);
    assert_eq!(sync_all(&mut bob, 0).len(), 1);
}

#[test]
fn two_devices_of_one_user_sending_concurrently_see_one_order_everywhere() {
    let node = Node::start();
    const N: u64 = 40;
    let mut handles = Vec::new();
    for (d, device) in ["phone", "laptop"].into_iter().enumerate() {
        let mut c = node.connect("alice", device);
        handles.push(std::thread::spawn(move || {
            (0..N)
                .map(|i| {
                    send(
                        &mut c,
                        "bob",
                        msg_id(d as u64 * 1000 + i),
                        &format!("{device}-{i}"),
                    )
                    .conv_seq
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut seqs: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=2 * N).collect::<Vec<_>>(),
        "every message got its own conv_seq, no gaps"
    );

    let order = |ms: &[Message<'_>]| {
        ms.iter()
            .map(|m| (m.conv_seq, m.msg_id))
            .collect::<Vec<_>>()
    };
    let mut bob = node.connect("bob", "phone");
    let bob_sync = sync_all(&mut bob, 0);
    let mut alice_tablet = node.connect("alice", "tablet");
    let alice_sync = sync_all(&mut alice_tablet, 0);
    let bob_hist = history(&mut bob, "alice");
    let alice_hist = history(&mut alice_tablet, "bob");
    assert_eq!(bob_sync.len() as u64, 2 * N);
    // The inbox order is the conversation order, for both users, and history agrees.
    assert!(bob_sync.windows(2).all(|w| w[0].conv_seq < w[1].conv_seq));
    assert_eq!(order(&bob_sync), order(&alice_sync));
    assert_eq!(order(&bob_sync), order(&bob_hist));
    assert_eq!(order(&bob_hist), order(&alice_hist));
    // Each device's own messages keep the order it sent them in.
    for device in ["phone", "laptop"] {
        let mine: Vec<String> = bob_hist
            .iter()
            .filter(|m| m.sender_device == device)
            .map(text)
            .collect();
        let expected: Vec<String> = (0..N).map(|i| format!("{device}-{i}")).collect();
        assert_eq!(mine, expected);
    }
}

#[test]
fn storage_busy_answers_overloaded_and_keeps_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, "[limits]\nstorage_write_queue = 1\n").unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]);
    // Many devices pipeline SENDs at once into a one-slot write queue.
    let mut handles = Vec::new();
    for t in 0..8u64 {
        let mut c = node.connect("alice", &format!("d{t}"));
        handles.push(std::thread::spawn(move || {
            let (mut acked, mut overloaded) = (0, 0);
            for i in 0..30u64 {
                let rid = c.next_request_id();
                match c.request_with(send_frame(rid, "bob", msg_id(t * 100 + i), "x"), WAIT) {
                    Ok(Frame {
                        body: Body::SendAck(_),
                        ..
                    }) => acked += 1,
                    Err(tern_tools::ConnectionError::Server { code, .. }) => {
                        assert_eq!(code, tern_protocol::ErrorCode::OVERLOADED);
                        overloaded += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            // The connection is still open after OVERLOADED.
            let pong = c
                .request(Body::Ping(tern_protocol::Ping { time: 1 }), WAIT)
                .unwrap();
            assert!(matches!(pong.body, Body::Pong(_)));
            (acked, overloaded)
        }));
    }
    let (mut acked, mut overloaded) = (0, 0);
    for h in handles {
        let (a, o) = h.join().unwrap();
        acked += a;
        overloaded += o;
    }
    println!("acked {acked}, overloaded {overloaded}");
    assert!(acked > 0);
    // Every acknowledged message is stored, and only those.
    let mut bob = node.connect("bob", "phone");
    assert_eq!(sync_all(&mut bob, 0).len(), acked);
    let (_, metrics) = node.admin_get("/metrics");
    let busy: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tern_storage_busy_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(busy >= overloaded as u64, "{metrics}");
}

#[test]
fn the_epoll_driver_serves_the_same_protocol() {
    let node = Node::start_with(&["--io-driver", "legacy"]);
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    let ack = send(&mut alice, "bob", msg_id(1), "over epoll");
    let (f, _) = recv_until(&mut bob, is_push);
    let Body::Push(m) = f.body else {
        unreachable!()
    };
    assert_eq!(
        (m.conv_seq, text(&m)),
        (ack.conv_seq, "over epoll".to_owned())
    );
    assert_eq!(sync_all(&mut bob, 0).len(), 1);
}

#[test]
fn a_device_that_stops_reading_is_closed_and_its_messages_stay_in_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, "[limits]\noutbound_queue = 4\n").unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut bob = node.connect("bob", "phone"); // never reads while alice sends
    let mut alice = node.connect("alice", "phone");
    const N: u64 = 400;
    let body = "x".repeat(32 * 1024);
    for i in 0..N {
        send(&mut alice, "bob", msg_id(i), &body);
    }
    // bob finds the frames the kernel buffered, then the end of the connection.
    let frames = tern_tests::recv_until_closed(&mut bob);
    let pushes = frames.iter().filter(|f| is_push(f)).count() as u64;
    assert!(
        pushes < N,
        "all {pushes} delivered: the slow consumer was not detected"
    );
    let (_, metrics) = node.admin_get("/metrics");
    assert!(metrics.contains("tern_slow_consumers_total 1"), "{metrics}");
    // Nothing was lost: a new session pulls every message from the inbox.
    let mut bob = node.connect("bob", "phone");
    assert_eq!(sync_all(&mut bob, 0).len() as u64, N);
}

#[test]
fn sigterm_drains_sessions_with_close_drain_and_keeps_what_was_acknowledged() {
    let mut node = Node::start();
    let mut alice = node.connect("alice", "phone");
    let ack = send(&mut alice, "bob", msg_id(1), "before the drain");
    let status = node.terminate();
    assert!(status.success(), "ternd exited with {status}");
    let frames = tern_tests::recv_until_closed(&mut alice);
    match frames.as_slice() {
        [Frame {
            body: Body::Close(c),
            ..
        }] => assert_eq!(c.reason, tern_protocol::CloseReason::DRAIN),
        other => panic!("expected CLOSE DRAIN, got {other:?}"),
    }
    node.restart();
    let mut bob = node.connect("bob", "phone");
    let pulled = sync_all(&mut bob, 0);
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].conv_seq, ack.conv_seq);
}

#[test]
fn typing_reaches_the_peer_and_a_flood_is_cut_to_the_rate_limit() {
    let node = Node::start();
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    let typing = |state| {
        Frame::new(
            0,
            Body::Typing(tern_protocol::Typing {
                conv: Conv::direct("bob"),
                user: "".into(),
                state,
            }),
        )
    };
    for _ in 0..40 {
        alice
            .send(&typing(tern_protocol::TypingState::TYPING))
            .unwrap();
    }
    let mut got = 0;
    while let Ok(Some(f)) = bob.recv(Duration::from_millis(500)) {
        if let Body::Typing(t) = f.body {
            assert_eq!((t.user.as_ref(), t.conv), ("alice", Conv::direct("alice")));
            got += 1;
        }
    }
    // A burst of 10, plus what 5/s refilled while the flood was sent.
    assert!(
        (10..=13).contains(&got),
        "{got} of 40 TYPING frames relayed"
    );
    // The limit refills: a later TYPING goes through.
    std::thread::sleep(Duration::from_millis(400));
    alice
        .send(&typing(tern_protocol::TypingState::STOPPED))
        .unwrap();
    let (f, _) = recv_until(&mut bob, |f| matches!(f.body, Body::Typing(_)));
    let Body::Typing(t) = f.body else {
        unreachable!()
    };
    assert_eq!(t.state, tern_protocol::TypingState::STOPPED);
    // Nothing was stored.
    assert!(sync_all(&mut bob, 0).is_empty());
}

#[test]
fn welcome_names_the_users_inbox_head() {
    let node = Node::start();
    let fresh = node.connect("bob", "tablet");
    assert_eq!(fresh.welcome().unwrap().inbox_head, 0);
    let mut alice = node.connect("alice", "phone");
    for i in 1..=3 {
        send(&mut alice, "bob", msg_id(i), "hi");
    }
    let bob = node.connect("bob", "phone");
    assert_eq!(bob.welcome().unwrap().inbox_head, 3);
    // The sender's inbox holds its own messages too (multi-device roaming).
    let laptop = node.connect("alice", "laptop");
    assert_eq!(laptop.welcome().unwrap().inbox_head, 3);
}

#[test]
fn contacts_pages_cover_every_conversation_when_times_tie() {
    let node = Node::start();
    let mut alice = node.connect("alice", "phone");
    // Pipelined SENDs to twelve users land in one storage batch and share its time.
    let mut bytes = Vec::new();
    for i in 0..12u32 {
        send_frame(i + 1, &format!("peer{i:02}"), msg_id(u64::from(i)), "hi")
            .encode(&mut bytes)
            .unwrap();
    }
    alice.send_raw(&bytes).unwrap();
    let mut acks = 0;
    while acks < 12 {
        let (f, _) = recv_until(&mut alice, |f| matches!(f.body, Body::SendAck(_)));
        assert!(matches!(f.body, Body::SendAck(_)));
        acks += 1;
    }
    let mut seen = Vec::new();
    let mut times = Vec::new();
    let mut before = 0;
    for _ in 0..12 {
        let f = alice
            .request(
                Body::Contacts(Contacts {
                    before_time: before,
                    limit: 5,
                }),
                WAIT,
            )
            .unwrap();
        let Body::ContactsPage(p) = f.body else {
            panic!("{f:?}")
        };
        seen.extend(p.entries.iter().map(|c| c.conv.id.to_string()));
        times.extend(p.entries.iter().map(|c| c.time));
        if !p.more {
            break;
        }
        before = p.entries.last().unwrap().time;
    }
    let distinct: std::collections::HashSet<u64> = times.iter().copied().collect();
    assert!(
        distinct.len() < times.len(),
        "no tie to page across: {times:?}"
    );
    seen.sort();
    let expected: Vec<String> = (0..12).map(|i| format!("peer{i:02}")).collect();
    assert_eq!(seen, expected, "every conversation exactly once");
}
