//! The content filter against real nodes: reject mode refuses a matching SEND with
//! CONTENT_REJECTED and stores nothing; mask mode stores and delivers the message masked; the
//! word list is reloaded on SIGHUP; room and group messages are filtered too.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use tern_protocol::{Body, Conv, Direction, ErrorCode, History, MessageKind};
use tern_tests::{recv_until, Node, WAIT};
use tern_tools::ConnectionError;

fn send(
    conn: &mut tern_tools::Connection,
    to: &str,
    n: u8,
    text: &str,
) -> Result<tern_protocol::Frame<'static>, ConnectionError> {
    conn.request(
        Body::Send(tern_protocol::Send {
            to: Conv::direct(to.to_owned()),
            msg_id: tern_protocol::MsgId([n; 16]),
            kind: MessageKind::TEXT,
            body: text.as_bytes().to_vec().into(),
        }),
        WAIT,
    )
}

/// Waits for a PUSH whose body is `text`.
fn expect_push_text(conn: &mut tern_tools::Connection, text: &str) {
    recv_until(
        conn,
        |f| matches!(&f.body, Body::Push(m) if m.body.as_ref() == text.as_bytes()),
    );
}

fn history_texts(conn: &mut tern_tools::Connection, with: &str) -> Vec<String> {
    let f = conn
        .request(
            Body::History(History {
                conv: Conv::direct(with.to_owned()),
                direction: Direction::AFTER,
                seq: 0,
                limit: 0,
            }),
            WAIT,
        )
        .unwrap();
    let Body::HistoryPage(p) = f.body else {
        panic!("{f:?}")
    };
    p.messages
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect()
}

fn code(r: Result<tern_protocol::Frame<'static>, ConnectionError>) -> ErrorCode {
    match r {
        Err(ConnectionError::Server { code, .. }) => code,
        other => panic!("expected an ERROR, got {other:?}"),
    }
}

#[test]
fn reject_mode_refuses_and_stores_nothing_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "# test list\ndarn\n").unwrap();
    let node = Node::start_logged(
        &["--filter-words", words.to_str().unwrap()],
        "tern_engine=info",
    );
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    assert_eq!(
        code(send(&mut alice, "bob", 1, "oh DARN it")),
        ErrorCode::CONTENT_REJECTED
    );
    assert!(
        history_texts(&mut bob, "alice").is_empty(),
        "nothing stored"
    );
    send(&mut alice, "bob", 2, "all fine").unwrap();
    expect_push_text(&mut bob, "all fine");
    // A new list on SIGHUP: the old word passes, the new one is refused.
    std::fs::write(&words, "heck\n").unwrap();
    let ok = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    node.wait_log_line(WAIT, |l| l.contains("content filter reloaded (1 words"))
        .expect("reload logged");
    send(&mut alice, "bob", 3, "darn works now").unwrap();
    assert_eq!(
        code(send(&mut alice, "bob", 4, "what the Heck")),
        ErrorCode::CONTENT_REJECTED
    );
    // An unreadable list keeps the old one.
    std::fs::remove_file(&words).unwrap();
    Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap();
    node.wait_log_line(WAIT, |l| l.contains("content filter not reloaded"))
        .expect("failed reload logged");
    assert_eq!(
        code(send(&mut alice, "bob", 5, "heck")),
        ErrorCode::CONTENT_REJECTED
    );
    assert_eq!(
        history_texts(&mut bob, "alice"),
        ["all fine", "darn works now"]
    );
    assert!(node.metric("tern_filter_rejected_total").unwrap() >= 3);
}

#[test]
fn mask_mode_stores_and_delivers_the_masked_text() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "darn\nbäd\n").unwrap();
    let node = Node::start_with(&[
        "--filter-words",
        words.to_str().unwrap(),
        "--filter-mode",
        "mask",
    ]);
    let mut alice = node.connect("alice", "phone");
    let mut laptop = node.connect("alice", "laptop");
    let mut bob = node.connect("bob", "phone");
    let ack = send(&mut alice, "bob", 1, "Darn, that is bäd").unwrap();
    assert!(matches!(ack.body, Body::SendAck(_)), "{ack:?}");
    expect_push_text(&mut bob, "****, that is ***");
    expect_push_text(&mut laptop, "****, that is ***");
    assert_eq!(history_texts(&mut alice, "bob"), ["****, that is ***"]);
    // Rooms are filtered too.
    let join = |c: &mut tern_tools::Connection| {
        c.request(
            Body::RoomJoin(tern_protocol::RoomJoin {
                room: "lobby".into(),
                recent: 0,
            }),
            WAIT,
        )
        .unwrap()
    };
    join(&mut alice);
    join(&mut bob);
    alice
        .request(
            Body::Send(tern_protocol::Send {
                to: Conv {
                    kind: tern_protocol::ConvKind::ROOM,
                    id: "lobby".into(),
                },
                msg_id: tern_protocol::MsgId([9; 16]),
                kind: MessageKind::TEXT,
                body: b"darn room".to_vec().into(),
            }),
            WAIT,
        )
        .unwrap();
    expect_push_text(&mut bob, "**** room");
    assert!(node.metric("tern_filter_masked_total").unwrap() >= 2);
}

#[test]
fn group_messages_are_filtered_too() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "darn\n").unwrap();
    let node = Node::start_with(&["--filter-words", words.to_str().unwrap()]);
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    let f = alice
        .request(
            Body::GroupCreate(tern_protocol::GroupCreate {
                name: "g".into(),
                members: vec!["bob".into()],
            }),
            WAIT,
        )
        .unwrap();
    let Body::GroupInfo(info) = f.body else {
        panic!("{f:?}")
    };
    let g = info.group.to_string();
    let send_group = |conn: &mut tern_tools::Connection, n: u8, text: &str| {
        conn.request(
            Body::Send(tern_protocol::Send {
                to: Conv::group(g.clone()),
                msg_id: tern_protocol::MsgId([n; 16]),
                kind: MessageKind::TEXT,
                body: text.as_bytes().to_vec().into(),
            }),
            WAIT,
        )
    };
    assert_eq!(
        code(send_group(&mut alice, 1, "darn it all")),
        ErrorCode::CONTENT_REJECTED
    );
    send_group(&mut alice, 2, "all fine").unwrap();
    expect_push_text(&mut bob, "all fine");
    let f = bob
        .request(
            Body::History(History {
                conv: Conv::group(g.clone()),
                direction: Direction::AFTER,
                seq: 0,
                limit: 0,
            }),
            WAIT,
        )
        .unwrap();
    let Body::HistoryPage(p) = f.body else {
        panic!("{f:?}")
    };
    let texts: Vec<&[u8]> = p
        .messages
        .iter()
        .filter(|m| m.kind == MessageKind::TEXT)
        .map(|m| m.body.as_ref())
        .collect();
    assert_eq!(
        texts,
        [b"all fine".as_slice()],
        "the refused message is not stored"
    );
}
