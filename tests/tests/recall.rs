//! RECALL against a real node: the sender takes a message back within the window, every other
//! device of both users is told, the stored message becomes a tombstone everywhere it is read
//! (HISTORY, SYNC, CONTACTS), a retransmission changes nothing, and each refusal has its code.

use std::time::Duration;

use tern_protocol::{
    Body, Contacts, Conv, Direction, ErrorCode, Frame, History, HistoryPage, MessageFlags,
    MessageKind, MsgId, Recall, Send, SendAck, Sync,
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
