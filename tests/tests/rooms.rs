//! Chat rooms end to end: ephemeral membership per connection, the recent window on join,
//! delivery to online members only (on both cores), the member cap and the send rate limit.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tern_protocol::{
    Body, Conv, ConvKind, ErrorCode, Frame, GroupRef, MessageKind, MsgId, RoomJoin, Send, Sync,
};
use tern_tests::{assert_silent, recv_until, Node, WAIT};
use tern_tools::Connection;

fn room_conv(room: &str) -> Conv<'static> {
    Conv {
        kind: ConvKind::ROOM,
        id: room.to_owned().into(),
    }
}

/// The answer, with an ERROR turned back into a frame (the SDK reports it as an error).
fn answer(r: Result<Frame<'static>, tern_tools::ConnectionError>) -> Frame<'static> {
    match r {
        Ok(f) => f,
        Err(e) => {
            let code = e.code().unwrap_or_else(|| panic!("{e}"));
            Frame::new(
                0,
                Body::Error(tern_protocol::Error {
                    code,
                    message: e.to_string().into(),
                }),
            )
        }
    }
}

fn join(c: &mut Connection, room: &str, recent: u16) -> Frame<'static> {
    answer(c.request(
        Body::RoomJoin(RoomJoin {
            room: room.to_owned().into(),
            recent,
        }),
        WAIT,
    ))
}

fn post(c: &mut Connection, room: &str, id: u8, text: &str) -> Frame<'static> {
    answer(c.request(
        Body::Send(Send {
            to: room_conv(room),
            msg_id: MsgId([id; 16]),
            kind: MessageKind::TEXT,
            body: text.as_bytes().to_vec().into(),
        }),
        WAIT,
    ))
}

fn code(f: &Frame<'_>) -> ErrorCode {
    match &f.body {
        Body::Error(e) => e.code,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

fn core_of(c: &Connection) -> u64 {
    c.welcome().unwrap().session_id >> 32
}

#[test]
fn room_members_on_both_cores_get_messages_and_nothing_reaches_an_inbox() {
    let node = Node::start();
    // Connections until members sit on both cores (accepts are spread by the kernel).
    let mut members = Vec::new();
    for i in 0..40 {
        members.push(node.connect(&format!("user{i}"), "phone"));
        let cores: std::collections::HashSet<u64> = members.iter().map(core_of).collect();
        if members.len() >= 4 && cores.len() == 2 {
            break;
        }
    }
    let cores: std::collections::HashSet<u64> = members.iter().map(core_of).collect();
    assert_eq!(cores.len(), 2, "no connection landed on the second core");
    for m in &mut members {
        let page = join(m, "lobby", 10);
        let Body::HistoryPage(p) = page.body else {
            panic!("{page:?}")
        };
        assert_eq!(p.conv, room_conv("lobby"));
    }
    let (sender, others) = members.split_first_mut().unwrap();
    let ack = post(sender, "lobby", 1, "hello room");
    let Body::SendAck(a) = ack.body else {
        panic!("{ack:?}")
    };
    assert_eq!((a.conv_seq, a.inbox_seq), (1, 0));
    for o in others.iter_mut() {
        let (f, _) = recv_until(o, |f| matches!(f.body, Body::Push(_)));
        let Body::Push(m) = f.body else {
            unreachable!()
        };
        assert_eq!(m.conv, room_conv("lobby"));
        assert_eq!(
            (m.conv_seq, m.inbox_seq, m.sender.as_ref()),
            (1, 0, "user0")
        );
        assert_eq!(m.body.as_ref(), b"hello room");
    }
    // The sending connection does not get its own message back.
    assert_silent(sender, Duration::from_millis(300));
    // A retransmission gets the original acknowledgement and is not delivered again.
    let again = post(sender, "lobby", 1, "hello room");
    assert_eq!(again.body, Body::SendAck(a));
    assert_silent(&mut others[0], Duration::from_millis(300));
    // A later joiner gets the window; nothing is in anybody's inbox.
    let mut late = node.connect("late", "phone");
    let page = join(&mut late, "lobby", 0);
    let Body::HistoryPage(p) = page.body else {
        panic!("{page:?}")
    };
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.messages[0].body.as_ref(), b"hello room");
    let sync = others[0]
        .request(
            Body::Sync(Sync {
                after_inbox_seq: 0,
                limit: 0,
            }),
            WAIT,
        )
        .unwrap();
    let Body::SyncPage(s) = sync.body else {
        panic!("{sync:?}")
    };
    assert!(s.messages.is_empty(), "a room message reached an inbox");
    // After leaving, nothing more arrives.
    let left = others[0]
        .request(
            Body::RoomLeave(GroupRef {
                group: "lobby".into(),
            }),
            WAIT,
        )
        .unwrap();
    assert_eq!(left.body, Body::Ok);
    post(sender, "lobby", 2, "second");
    recv_until(&mut late, |f| matches!(f.body, Body::Push(_)));
    assert_silent(&mut others[0], Duration::from_millis(300));
}

#[test]
fn room_refusals_cap_rate_limit_and_non_members() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(
        &cfg,
        "[rooms]\nmember_cap = 2\nrate_per_sec = 1\nburst = 2\n",
    )
    .unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut a = node.connect("a", "phone");
    let mut b = node.connect("b", "phone");
    let mut c = node.connect("c", "phone");
    // Not a member: refused, nothing posted.
    assert_eq!(code(&post(&mut a, "den", 1, "x")), ErrorCode::FORBIDDEN);
    assert!(matches!(join(&mut a, "den", 0).body, Body::HistoryPage(_)));
    assert!(matches!(join(&mut b, "den", 0).body, Body::HistoryPage(_)));
    assert_eq!(code(&join(&mut c, "den", 0)), ErrorCode::LIMIT_EXCEEDED);
    // A member's connection ends: its seat is free again.
    drop(b);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match join(&mut c, "den", 0).body {
            Body::HistoryPage(_) => break,
            Body::Error(e) if e.code == ErrorCode::LIMIT_EXCEEDED => {
                assert!(std::time::Instant::now() < deadline, "seat never freed");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("{other:?}"),
        }
    }
    // Burst of 2, then the rate limit.
    assert!(matches!(post(&mut a, "den", 1, "1").body, Body::SendAck(_)));
    assert!(matches!(post(&mut a, "den", 2, "2").body, Body::SendAck(_)));
    assert_eq!(code(&post(&mut a, "den", 3, "3")), ErrorCode::RATE_LIMITED);
    // c got the two that were accepted, and not the refused one.
    for seq in 1..=2 {
        let (f, _) = recv_until(&mut c, |f| matches!(f.body, Body::Push(_)));
        let Body::Push(m) = f.body else {
            unreachable!()
        };
        assert_eq!(m.conv_seq, seq);
    }
    assert_silent(&mut c, Duration::from_millis(300));
}
