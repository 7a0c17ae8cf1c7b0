//! Parked connections (engine/src/park.rs): an idle native connection gives up its task and
//! must still get its pushes, answer requests, be replaced, and time out like any other.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tern_protocol::{Body, CloseReason, Conv, Frame, MessageKind, MsgId, Ping, Send, Sync};
use tern_tests::{is_push, recv_until, recv_until_closed, Node, WAIT};
use tern_tools::Connection;

/// A node whose connections park after 50 ms without traffic and time out after `idle_secs`
/// without input (the test connections send no heartbeats).
fn parking_node(dir: &tempfile::TempDir, idle_secs: u64) -> Node {
    let cfg = dir.path().join("parking.toml");
    std::fs::write(
        &cfg,
        format!("[timers]\npark_ms = 50\nheartbeat_secs = 1\nidle_secs = {idle_secs}\n"),
    )
    .unwrap();
    Node::start_with(&["--config", cfg.to_str().unwrap()])
}

fn metric(node: &Node, name: &str) -> u64 {
    let (_, body) = node.admin_get("/metrics");
    body.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// Waits until `n` connections are parked.
fn wait_parked(node: &Node, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let parked = metric(node, "tern_connections_parked");
        if parked == n {
            return;
        }
        assert!(Instant::now() < deadline, "{parked} parked, expected {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(conn: &mut Connection, to: &str, tag: u8, text: &str) {
    let rid = conn.next_request_id();
    let frame = Frame::new(
        rid,
        Body::Send(Send {
            to: Conv::direct(to.to_owned()),
            msg_id: MsgId([tag; 16]),
            kind: MessageKind::TEXT,
            body: text.as_bytes().to_vec().into(),
        }),
    );
    match conn.request_with(frame, WAIT).unwrap().body {
        Body::SendAck(_) => {}
        other => panic!("expected SEND_ACK, got {other:?}"),
    }
}

#[test]
fn parked_connections_get_pushes_answer_requests_and_park_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = parking_node(&dir, 60);
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    wait_parked(&node, 2);

    // A delivery wakes the parked recipient; the sender's own bytes wake the sender.
    send(&mut alice, "bob", 1, "while you were parked");
    let (f, _) = recv_until(&mut bob, is_push);
    let Body::Push(m) = f.body else {
        unreachable!()
    };
    assert_eq!(&m.body[..], b"while you were parked");
    wait_parked(&node, 2);

    // A request on a parked connection is answered.
    let page = bob
        .request(
            Body::Sync(Sync {
                after_inbox_seq: 0,
                limit: 10,
            }),
            WAIT,
        )
        .unwrap();
    let Body::SyncPage(p) = page.body else {
        panic!("expected SYNC_PAGE, got {page:?}")
    };
    assert_eq!(p.messages.len(), 1);
    let pong = bob.request(Body::Ping(Ping { time: 7 }), WAIT).unwrap();
    assert!(matches!(pong.body, Body::Pong(_)), "{pong:?}");
    wait_parked(&node, 2);

    // Several messages in a row to a parked device arrive in order.
    for i in 0..20u8 {
        send(&mut alice, "bob", 10 + i, &format!("m{i}"));
    }
    for i in 0..20u8 {
        let (f, _) = recv_until(&mut bob, is_push);
        let Body::Push(m) = f.body else {
            unreachable!()
        };
        assert_eq!(m.body.as_ref(), format!("m{i}").as_bytes());
    }
    assert_eq!(metric(&node, "tern_connections_open"), 2);
}

#[test]
fn a_parked_connection_is_replaced_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let node = parking_node(&dir, 3);
    let mut first = node.connect("carol", "phone");
    wait_parked(&node, 1);
    // The same device again: the parked session is kicked with REPLACED.
    let mut second = node.connect("carol", "phone");
    let frames = recv_until_closed(&mut first);
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Close(c) if c.reason == CloseReason::REPLACED)),
        "{frames:?}"
    );
    wait_parked(&node, 1);
    // Silent past the idle timeout (3 s): the parked connection is closed by its timer.
    let started = Instant::now();
    recv_until_closed(&mut second);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "closed after {waited:?}, before its idle timeout"
    );
    let deadline = Instant::now() + WAIT;
    while metric(&node, "tern_connections_open") != 0 {
        assert!(Instant::now() < deadline, "connection not released");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&node, "tern_connections_parked"), 0);
}
