//! Bad input end to end: every refusal is a clear ERROR with its code, the connection is
//! closed, and nothing is stored.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tern_protocol::{
    Body, Capabilities, CloseReason, Conv, ErrorCode, Frame, Hello, MessageKind, MsgId, Send, Sync,
    DEFAULT_MAX_BODY, MAGIC, PROTOCOL, VERSION,
};
use tern_tests::{recv_until_closed, Node, WAIT};
use tern_tools::{Connection, ConnectionError};

fn expect_code(r: Result<Connection, ConnectionError>, code: ErrorCode) {
    match r {
        Err(ConnectionError::Server { code: c, message }) => {
            assert_eq!(c, code, "message: {message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected ERROR {code}, got {other:?}"),
    }
}

/// Sends raw bytes as the first thing on a connection; returns the frames before the close.
fn first_bytes(node: &Node, bytes: &[u8]) -> Vec<Frame<'static>> {
    let mut c = Connection::open(&node.native, WAIT).unwrap();
    c.send_raw(bytes).unwrap();
    recv_until_closed(&mut c)
}

fn error_code(frames: &[Frame<'_>]) -> ErrorCode {
    match frames {
        [Frame {
            body: Body::Error(e),
            ..
        }] => e.code,
        other => panic!("expected exactly one ERROR, got {other:?}"),
    }
}

fn nothing_stored(node: &Node) {
    let mut bob = node.connect("bob", "phone");
    let f = bob
        .request(
            Body::Sync(Sync {
                after_inbox_seq: 0,
                limit: 0,
            }),
            WAIT,
        )
        .unwrap();
    let Body::SyncPage(p) = f.body else {
        panic!("{f:?}")
    };
    assert!(p.messages.is_empty(), "stored: {:?}", p.messages);
    let (_, metrics) = node.admin_get("/metrics");
    assert!(
        metrics.contains("tern_messages_stored_total 0"),
        "{metrics}"
    );
}

#[test]
fn bad_tokens_are_refused_with_auth_errors() {
    let node = Node::start();
    expect_code(
        node.try_connect("not.a.jwt", "phone"),
        ErrorCode::AUTH_INVALID,
    );
    // Signed with another secret.
    let foreign = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    expect_code(node.try_connect(foreign, "phone"), ErrorCode::AUTH_INVALID);
    // Bound to another device.
    expect_code(
        node.try_connect(&node.token("alice", Some("phone"), 60), "laptop"),
        ErrorCode::AUTH_INVALID,
    );
    // Expired (ttl 0: exp is now).
    expect_code(
        node.try_connect(&node.token("alice", Some("phone"), 0), "phone"),
        ErrorCode::AUTH_EXPIRED,
    );
    // A token without a device claim is good for any device.
    assert!(node
        .try_connect(&node.token("alice", None, 60), "any-device")
        .is_ok());
    let (_, metrics) = node.admin_get("/metrics");
    assert!(metrics.contains("tern_auth_failures_total 4"), "{metrics}");
    nothing_stored(&node);
}

#[test]
fn garbage_oversize_and_early_frames_get_a_clear_error_and_close() {
    let node = Node::start();
    // Garbage first bytes.
    assert_eq!(
        error_code(&first_bytes(&node, b"\x00\x01 not a frame at all")),
        ErrorCode::BAD_MAGIC
    );
    // A header announcing a body over the 65,536 limit: refused before the body is read.
    let mut header = vec![MAGIC[0], MAGIC[1], VERSION, 0x10, 0];
    header.extend_from_slice(&(DEFAULT_MAX_BODY + 1).to_le_bytes()[..3]);
    header.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    header.extend(std::iter::repeat_n(0x41, 4096));
    assert_eq!(
        error_code(&first_bytes(&node, &header)),
        ErrorCode::FRAME_TOO_LARGE
    );
    // A SEND before HELLO.
    let send = Frame::new(
        1,
        Body::Send(Send {
            to: Conv::direct("bob"),
            msg_id: MsgId([9; 16]),
            kind: MessageKind::TEXT,
            body: b"sneaky".to_vec().into(),
        }),
    );
    assert_eq!(
        error_code(&first_bytes(&node, &send.to_bytes().unwrap())),
        ErrorCode::UNEXPECTED_FRAME
    );
    // A frame with a broken CRC.
    let mut bytes = send.to_bytes().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    assert_eq!(error_code(&first_bytes(&node, &bytes)), ErrorCode::BAD_CRC);
    // HELLO of another protocol revision.
    let hello = Frame::new(
        1,
        Body::Hello(Hello {
            protocol: PROTOCOL + 1,
            capabilities: Capabilities::NONE,
            max_frame: DEFAULT_MAX_BODY,
            token: node.token("alice", None, 60).into(),
            device: "phone".into(),
            resume_inbox_seq: 0,
            client: "".into(),
        }),
    );
    assert_eq!(
        error_code(&first_bytes(&node, &hello.to_bytes().unwrap())),
        ErrorCode::UNSUPPORTED_VERSION
    );

    // After HELLO: an oversize SEND closes the session with FRAME_TOO_LARGE; nothing is stored.
    let mut alice = node.connect("alice", "phone");
    let big = Frame::new(
        2,
        Body::Send(Send {
            to: Conv::direct("bob"),
            msg_id: MsgId([7; 16]),
            kind: MessageKind::TEXT,
            body: vec![b'x'; 70_000].into(),
        }),
    );
    alice.send(&big).unwrap();
    assert_eq!(
        error_code(&recv_until_closed(&mut alice)),
        ErrorCode::FRAME_TOO_LARGE
    );
    // A second HELLO is unexpected.
    let mut alice = node.connect("alice", "phone");
    alice.send(&hello).unwrap();
    assert_eq!(
        error_code(&recv_until_closed(&mut alice)),
        ErrorCode::UNEXPECTED_FRAME
    );
    // Refused requests keep the connection: kind 0, and a group that does not exist.
    let mut alice = node.connect("alice", "phone");
    for (to, kind, expected) in [
        (
            Conv::direct("bob"),
            MessageKind(0),
            ErrorCode::INVALID_ARGUMENT,
        ),
        (Conv::group("g1"), MessageKind::TEXT, ErrorCode::NOT_FOUND),
    ] {
        let f = Frame::new(
            0,
            Body::Send(Send {
                to,
                msg_id: MsgId([3; 16]),
                kind,
                body: b"x".to_vec().into(),
            }),
        );
        match alice.request(f.body, WAIT) {
            Err(ConnectionError::Server { code, .. }) => assert_eq!(code, expected),
            other => panic!("{other:?}"),
        }
    }
    nothing_stored(&node);
}

#[test]
fn handshake_and_idle_timeouts_free_half_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(
        &cfg,
        "[timers]\nhandshake_secs = 1\nheartbeat_secs = 1\nidle_secs = 2\n",
    )
    .unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]);
    // Connected, silent: ERROR HANDSHAKE_TIMEOUT after a second.
    let mut c = Connection::open(&node.native, WAIT).unwrap();
    assert_eq!(
        error_code(&recv_until_closed(&mut c)),
        ErrorCode::HANDSHAKE_TIMEOUT
    );
    // Authenticated, then silent: CLOSE IDLE_TIMEOUT.
    let mut alice = node.connect("alice", "phone");
    let w = alice.welcome().unwrap();
    assert_eq!((w.heartbeat_secs, w.idle_timeout_secs), (1, 2));
    let frames = recv_until_closed(&mut alice);
    match frames.as_slice() {
        [Frame {
            body: Body::Close(c),
            ..
        }] => assert_eq!(c.reason, CloseReason::IDLE_TIMEOUT),
        other => panic!("expected CLOSE IDLE_TIMEOUT, got {other:?}"),
    }
    // A client that PINGs stays connected past the idle timeout.
    let mut bob = node.connect("bob", "phone");
    for i in 0..6 {
        let f = bob
            .request(Body::Ping(tern_protocol::Ping { time: i }), WAIT)
            .unwrap();
        assert_eq!(f.body, Body::Pong(tern_protocol::Ping { time: i }));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, metrics) = node.admin_get("/metrics");
    assert!(metrics.contains("tern_connections_open 1"), "{metrics}");
}

#[test]
fn a_new_session_of_the_same_device_replaces_the_old_one() {
    let node = Node::start();
    let mut first = node.connect("alice", "phone");
    let _second = node.connect("alice", "phone");
    let frames = recv_until_closed(&mut first);
    match frames.as_slice() {
        [Frame {
            body: Body::Close(c),
            ..
        }] => assert_eq!(c.reason, CloseReason::REPLACED),
        other => panic!("expected CLOSE REPLACED, got {other:?}"),
    }
}

#[test]
fn a_session_ends_when_its_token_expires() {
    let node = Node::start();
    let token = node.token("alice", Some("phone"), 2);
    let mut alice = node.try_connect(&token, "phone").unwrap();
    let started = std::time::Instant::now();
    let frames = recv_until_closed(&mut alice);
    match frames.as_slice() {
        [Frame {
            body: Body::Close(c),
            ..
        }] => assert_eq!(c.reason, CloseReason::AUTH_EXPIRED),
        other => panic!("expected CLOSE AUTH_EXPIRED, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}
