//! RECALL against a real node: the sender takes a message back within the window, every other
//! device of both users is told, the stored message becomes a tombstone everywhere it is read
//! (HISTORY, SYNC, CONTACTS), a retransmission changes nothing, and each refusal has its code;
//! the same in groups under write and read diffusion, where the owner and admins may also
//! recall members' messages.

use std::time::Duration;

use tern_protocol::{
    Body, Contacts, Conv, Direction, ErrorCode, Frame, GroupCreate, GroupMembers, History,
    HistoryPage, MemberOp, MessageFlags, MessageKind, MsgId, Recall, Send, SendAck, Sync,
};
use tern_tests::{assert_silent, recv_until, Node, WAIT};
use tern_tools::{Connection, ConnectionError};

fn id(n: u8) -> MsgId {
    MsgId([n; 16])
}

fn send(conn: &mut Connection, to: &str, msg: MsgId, text: &str) -> SendAck {
    let body = Body::Send(Send {
        to: Conv::direct(to.to_owned()),
        msg_id: msg,
        kind: MessageKind::TEXT,
        body: text.as_bytes().to_vec().into(),
    });
    match conn.request(body, WAIT) {
        Ok(Frame {
            body: Body::SendAck(a),
            ..
        }) => a,
        other => panic!("{text}: expected SEND_ACK, got {other:?}"),
    }
}

fn recall(
    conn: &mut Connection,
    with: &str,
    conv_seq: u64,
    msg: MsgId,
) -> Result<SendAck, ErrorCode> {
    let body = Body::Recall(Recall {
        conv: Conv::direct(with.to_owned()),
        conv_seq,
        msg_id: msg,
    });
    match conn.request(body, WAIT) {
        Ok(Frame {
            body: Body::SendAck(a),
            ..
        }) => Ok(a),
        Err(ConnectionError::Server { code, .. }) => Err(code),
        other => panic!("expected SEND_ACK or ERROR, got {other:?}"),
    }
}

/// The conversation with `with` from its start (up to 10 messages).
fn history(conn: &mut Connection, with: &str) -> HistoryPage<'static> {
    match conn.request(
        Body::History(History {
            conv: Conv::direct(with.to_owned()),
            direction: Direction::AFTER,
            seq: 0,
            limit: 10,
        }),
        WAIT,
    ) {
        Ok(Frame {
            body: Body::HistoryPage(p),
            ..
        }) => p,
        other => panic!("expected HISTORY_PAGE, got {other:?}"),
    }
}

/// Waits for the PUSH of the recall event `msg`; returns its body and conv_seq.
fn expect_event(conn: &mut Connection, msg: MsgId) -> (Vec<u8>, u64) {
    let (f, _) = recv_until(
        conn,
        |f| matches!(&f.body, Body::Push(m) if m.msg_id == msg),
    );
    let Body::Push(m) = f.body else {
        unreachable!()
    };
    assert_eq!(m.kind, MessageKind::RECALL);
    assert_eq!(m.sender.as_ref(), "alice");
    (m.body.into_owned(), m.conv_seq)
}

#[test]
fn a_recall_reaches_every_device_and_leaves_a_tombstone() {
    let node = Node::start();
    let mut alice = node.connect("alice", "phone");
    let mut alice_laptop = node.connect("alice", "laptop");
    let mut bob = node.connect("bob", "phone");

    let first = send(&mut alice, "bob", id(1), "first");
    let second = send(&mut alice, "bob", id(2), "second");
    assert_eq!((first.conv_seq, second.conv_seq), (1, 2));

    // Only the sender may recall.
    assert_eq!(
        recall(&mut bob, "alice", 1, id(50)),
        Err(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        recall(&mut alice, "bob", 99, id(51)),
        Err(ErrorCode::NOT_FOUND)
    );

    let ack = recall(&mut alice, "bob", 1, id(3)).expect("recall accepted");
    assert_eq!(ack.msg_id, id(3));
    assert_eq!(ack.conv_seq, 3, "the event follows the two messages");

    // The event reaches bob and alice's other device, not the device that recalled.
    let (body, seq) = expect_event(&mut bob, id(3));
    assert_eq!(
        (body, seq),
        (vec![1u8], 3),
        "body: the recalled conv_seq as a varint"
    );
    let (body, _) = expect_event(&mut alice_laptop, id(3));
    assert_eq!(body, vec![1u8]);

    // A retransmission gets the same SEND_ACK and tells nobody again.
    let again = recall(&mut alice, "bob", 1, id(3)).expect("retransmission answered");
    assert_eq!(again, ack);
    assert_silent(&mut bob, Duration::from_millis(300));
    // A second recall of the same message, and a recall of the event itself, are refused.
    assert_eq!(
        recall(&mut alice, "bob", 1, id(4)),
        Err(ErrorCode::INVALID_ARGUMENT)
    );
    assert_eq!(
        recall(&mut alice, "bob", 3, id(5)),
        Err(ErrorCode::INVALID_ARGUMENT)
    );

    // HISTORY: the tombstone (flag, no body), the untouched message, the event.
    let page = history(&mut bob, "alice");
    let msgs = &page.messages;
    assert_eq!(msgs.len(), 3);
    assert!(msgs[0].flags == MessageFlags::RECALLED);
    assert!(msgs[0].body.is_empty(), "a recalled message has no body");
    assert_eq!(msgs[1].flags, MessageFlags::NONE);
    assert_eq!(msgs[1].body.as_ref(), b"second");
    assert_eq!(msgs[2].kind, MessageKind::RECALL);

    // SYNC from the start: the same tombstone.
    let sync = match bob.request(
        Body::Sync(Sync {
            after_inbox_seq: 0,
            limit: 10,
        }),
        WAIT,
    ) {
        Ok(Frame {
            body: Body::SyncPage(p),
            ..
        }) => p,
        other => panic!("expected SYNC_PAGE, got {other:?}"),
    };
    let tomb = sync
        .messages
        .iter()
        .find(|m| m.msg_id == id(1))
        .expect("the recalled message is still in the inbox");
    assert!(tomb.flags == MessageFlags::RECALLED && tomb.body.is_empty());

    // CONTACTS: the recalled message no longer counts as unread, the event is the last one.
    let contacts = match bob.request(
        Body::Contacts(Contacts {
            before_time: 0,
            limit: 10,
        }),
        WAIT,
    ) {
        Ok(Frame {
            body: Body::ContactsPage(p),
            ..
        }) => p,
        other => panic!("expected CONTACTS_PAGE, got {other:?}"),
    };
    assert_eq!(contacts.total_unread, 1);
    let entry = &contacts.entries[0];
    assert_eq!(entry.unread, 1);
    assert_eq!(
        entry.last.as_ref().map(|m| (m.conv_seq, m.kind)),
        Some((3, MessageKind::RECALL))
    );
}

#[test]
fn a_recall_after_the_window_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tern.toml");
    std::fs::write(&config, "[limits]\nrecall_window_secs = 1\n").expect("config written");
    let config = config.to_string_lossy().into_owned();
    let node = Node::start_with(&["--config", &config]);
    let mut alice = node.connect("alice", "phone");
    let sent = send(&mut alice, "bob", id(1), "too late to take back");
    std::thread::sleep(Duration::from_millis(1_300));
    assert_eq!(
        recall(&mut alice, "bob", sent.conv_seq, id(2)),
        Err(ErrorCode::RECALL_EXPIRED)
    );
    // Nothing was written: the message is intact and no event follows it.
    let page = history(&mut alice, "bob");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].flags, MessageFlags::NONE);
}

/// Waits for the PUSH of group recall event `msg` by `by`; returns its body and conv_seq.
fn expect_group_event(conn: &mut Connection, by: &str, msg: MsgId) -> (Vec<u8>, u64) {
    let (f, _) = recv_until(
        conn,
        |f| matches!(&f.body, Body::Push(m) if m.msg_id == msg),
    );
    let Body::Push(m) = f.body else {
        unreachable!()
    };
    assert_eq!(m.kind, MessageKind::RECALL);
    assert_eq!(m.sender.as_ref(), by);
    (m.body.into_owned(), m.conv_seq)
}

/// A request answered by the frame or by the ERROR's code.
fn ask(conn: &mut Connection, body: Body<'_>) -> Result<Frame<'static>, ErrorCode> {
    match conn.request(body, WAIT) {
        Ok(f) => Ok(f),
        Err(ConnectionError::Server { code, .. }) => Err(code),
        Err(e) => panic!("request failed: {e}"),
    }
}

/// A new group of `owner` with `members`; returns its id.
fn create_group(owner: &mut Connection, members: &[&str]) -> String {
    match ask(
        owner,
        Body::GroupCreate(GroupCreate {
            name: "g".to_owned().into(),
            members: members.iter().map(|m| (*m).to_owned().into()).collect(),
        }),
    ) {
        Ok(Frame {
            body: Body::GroupInfo(i),
            ..
        }) => i.group.to_string(),
        other => panic!("expected GROUP_INFO, got {other:?}"),
    }
}

fn group_send(conn: &mut Connection, g: &str, msg: MsgId, text: &str) -> SendAck {
    match ask(
        conn,
        Body::Send(Send {
            to: Conv::group(g.to_owned()),
            msg_id: msg,
            kind: MessageKind::TEXT,
            body: text.as_bytes().to_vec().into(),
        }),
    ) {
        Ok(Frame {
            body: Body::SendAck(a),
            ..
        }) => a,
        other => panic!("{text}: expected SEND_ACK, got {other:?}"),
    }
}

fn group_recall(
    conn: &mut Connection,
    g: &str,
    seq: u64,
    msg: MsgId,
) -> Result<SendAck, ErrorCode> {
    match ask(
        conn,
        Body::Recall(Recall {
            conv: Conv::group(g.to_owned()),
            conv_seq: seq,
            msg_id: msg,
        }),
    )? {
        Frame {
            body: Body::SendAck(a),
            ..
        } => Ok(a),
        other => panic!("expected SEND_ACK, got {other:?}"),
    }
}

/// Checks that `conn`'s HISTORY of group `g` holds `recalled` as a tombstone and the RECALL
/// event at `event` naming it.
fn assert_group_tombstone(conn: &mut Connection, g: &str, recalled: u64, event: u64) {
    let page = match ask(
        conn,
        Body::History(History {
            conv: Conv::group(g.to_owned()),
            direction: Direction::AFTER,
            seq: 0,
            limit: 20,
        }),
    ) {
        Ok(Frame {
            body: Body::HistoryPage(p),
            ..
        }) => p,
        other => panic!("expected HISTORY_PAGE, got {other:?}"),
    };
    let m = page
        .messages
        .iter()
        .find(|m| m.conv_seq == recalled)
        .expect("recalled message listed");
    assert!(m.flags.0 & MessageFlags::RECALLED.0 != 0, "flag RECALLED");
    assert!(m.body.is_empty(), "a recalled message has no body");
    let e = page
        .messages
        .iter()
        .find(|m| m.conv_seq == event)
        .expect("event listed");
    assert_eq!(e.kind, MessageKind::RECALL);
    assert_eq!(
        e.body.as_ref(),
        [u8::try_from(recalled).expect("a one-byte seq")].as_slice()
    );
}

fn group_unread(conn: &mut Connection, g: &str) -> u64 {
    let page = match ask(
        conn,
        Body::Contacts(Contacts {
            before_time: 0,
            limit: 50,
        }),
    ) {
        Ok(Frame {
            body: Body::ContactsPage(p),
            ..
        }) => p,
        other => panic!("expected CONTACTS_PAGE, got {other:?}"),
    };
    page.entries
        .iter()
        .find(|c| c.conv.id == g)
        .map(|c| c.unread)
        .expect("group listed")
}

#[test]
fn a_group_sender_recalls_under_write_diffusion() {
    let node = Node::start();
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    let mut bob_laptop = node.connect("bob", "laptop");
    let mut carol = node.connect("carol", "phone");
    let mut dave = node.connect("dave", "phone");
    let g = create_group(&mut alice, &["bob", "carol"]);
    let sent = group_send(&mut bob, &g, id(1), "oops");
    assert_eq!(group_unread(&mut carol, &g), 1);

    // A plain member may not recall another's message, nor may a non-member.
    assert_eq!(
        group_recall(&mut carol, &g, sent.conv_seq, id(2)),
        Err(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        group_recall(&mut dave, &g, sent.conv_seq, id(3)),
        Err(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        group_recall(&mut bob, &g, 99, id(4)),
        Err(ErrorCode::NOT_FOUND)
    );

    let ack = group_recall(&mut bob, &g, sent.conv_seq, id(5)).expect("recall accepted");
    assert_eq!(ack.conv_seq, sent.conv_seq + 1);
    for conn in [&mut alice, &mut carol, &mut bob_laptop] {
        let (body, seq) = expect_group_event(conn, "bob", id(5));
        assert_eq!(
            (body, seq),
            (
                vec![u8::try_from(sent.conv_seq).expect("a one-byte seq")],
                ack.conv_seq
            )
        );
    }
    // A retransmission: the same SEND_ACK; a second recall and a recall of the event refused.
    assert_eq!(group_recall(&mut bob, &g, sent.conv_seq, id(5)), Ok(ack));
    assert_eq!(
        group_recall(&mut bob, &g, sent.conv_seq, id(6)),
        Err(ErrorCode::INVALID_ARGUMENT)
    );
    assert_eq!(
        group_recall(&mut bob, &g, ack.conv_seq, id(7)),
        Err(ErrorCode::INVALID_ARGUMENT)
    );
    // The recalled message no longer counts as unread, and the event does not count.
    assert_eq!(group_unread(&mut carol, &g), 0);
    for conn in [&mut alice, &mut bob, &mut bob_laptop, &mut carol] {
        assert_group_tombstone(conn, &g, sent.conv_seq, ack.conv_seq);
    }
}

#[test]
fn a_group_admin_recalls_under_read_diffusion_within_the_window() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        "[limits]\ngroup_write_diffusion_max = 1\nrecall_window_secs = 3\n",
    )
    .expect("config written");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let node = Node::start_with(&["--config", &config]);
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    let mut carol = node.connect("carol", "phone");
    let g = create_group(&mut alice, &["bob", "carol"]);
    ask(
        &mut alice,
        Body::GroupMembers(GroupMembers {
            group: g.clone().into(),
            op: MemberOp::SET_ROLE,
            users: vec!["carol".to_owned().into()],
            arg: 1,
        }),
    )
    .expect("carol made admin");
    let from_bob = group_send(&mut bob, &g, id(10), "bob's");
    let from_carol = group_send(&mut carol, &g, id(11), "carol's");

    // A plain member may not recall an admin's message.
    assert_eq!(
        group_recall(&mut bob, &g, from_carol.conv_seq, id(12)),
        Err(ErrorCode::FORBIDDEN)
    );
    // The admin recalls the member's message; every member is told.
    let ack = group_recall(&mut carol, &g, from_bob.conv_seq, id(13)).expect("admin recall");
    for conn in [&mut alice, &mut bob] {
        let (body, seq) = expect_group_event(conn, "carol", id(13));
        assert_eq!(
            (body, seq),
            (
                vec![u8::try_from(from_bob.conv_seq).expect("a one-byte seq")],
                ack.conv_seq
            )
        );
    }
    assert_eq!(
        group_recall(&mut carol, &g, from_bob.conv_seq, id(13)),
        Ok(ack)
    );
    for conn in [&mut alice, &mut bob, &mut carol] {
        assert_group_tombstone(conn, &g, from_bob.conv_seq, ack.conv_seq);
    }
    // Unread under read diffusion is the group's seq minus the member's read position: the
    // recaller has read up to the event; bob (read up to his message) has carol's message and
    // the event after it.
    assert_eq!(group_unread(&mut carol, &g), 0);
    assert_eq!(group_unread(&mut bob, &g), 2);

    // Past the window even the sender is refused.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        group_recall(&mut carol, &g, from_carol.conv_seq, id(14)),
        Err(ErrorCode::RECALL_EXPIRED)
    );
}

#[test]
fn the_sdk_recalls_a_group_message() {
    let node = Node::start();
    let alice = tern_tools::Client::start(tern_tools::ClientConfig::new(
        node.native.clone(),
        node.token("alice", Some("sdk"), 3600),
        "sdk",
    ));
    let mut bob = node.connect("bob", "phone");
    let g = alice
        .group_create("club", &["bob"], WAIT)
        .expect("group created")
        .group
        .to_string();
    let sent = alice
        .send_group_wait(&g, MessageKind::TEXT, b"oops".to_vec(), WAIT)
        .expect("sent");
    let event = alice
        .recall_group(&g, sent.conv_seq, WAIT)
        .expect("recalled");
    assert!(event.conv_seq > sent.conv_seq);
    assert_group_tombstone(&mut bob, &g, sent.conv_seq, event.conv_seq);
    // Recalled already: the node refuses a second recall.
    assert!(alice.recall_group(&g, sent.conv_seq, WAIT).is_err());
    alice.stop();
}
