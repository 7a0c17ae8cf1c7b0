//! Presence and typing end to end against real nodes: a user's presence aggregated over their
//! devices reaches subscribers, friends and followers (and nobody else) on every change; busy is
//! per user and sticky; SUBSCRIBE and PRESENCE refusals; the configured TYPING rate; a peer that
//! did not negotiate TYPING gets none; the `tern presence set` and `tern watch` commands.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::process::Command;
use std::time::Duration;

use tern_protocol::{
    Body, Capabilities, Conv, ErrorCode, Frame, Hello, PresenceStatus, SubOp, Subscribe, Typing,
    TypingState, DEFAULT_MAX_BODY, PROTOCOL,
};
use tern_tests::{presence_of, presences_for, tern_bin, wait_event, Node, WAIT};
use tern_tools::{Client, ClientConfig, Event, SendError};

fn client(node: &Node, user: &str, device: &str) -> Client {
    let mut cfg = ClientConfig::new(
        node.native.clone(),
        node.token(user, Some(device), 3600),
        device,
    );
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    let c = Client::start(cfg);
    wait_event(&c, |e| matches!(e, Event::Connected { .. }))
        .unwrap_or_else(|| panic!("{user} did not connect"));
    c
}

fn server_code<T: std::fmt::Debug>(r: Result<T, SendError>) -> ErrorCode {
    match r {
        Err(SendError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn presence_follows_devices_and_reaches_subscribers_friends_and_followers_only() {
    let node = Node::start();
    // Relations first: bob is alice's friend, carol follows her; dave will subscribe; eve is a
    // stranger.
    let alice = client(&node, "alice", "phone");
    let bob = client(&node, "bob", "phone");
    let carol = client(&node, "carol", "phone");
    let dave = client(&node, "dave", "phone");
    let eve = client(&node, "eve", "phone");
    bob.friend_request("alice", "hi", WAIT).unwrap();
    alice.friend_accept("bob", WAIT).unwrap();
    carol.follow("alice", WAIT).unwrap();
    alice.stop();
    // The last device closing makes alice OFFLINE for her friend and follower.
    for c in [&bob, &carol] {
        let p = presence_of(c, "alice");
        assert_eq!(p.status, PresenceStatus::OFFLINE);
        assert!(p.last_seen > 0);
    }
    // A subscriber gets the current presence at once.
    dave.subscribe(&["alice"], WAIT).unwrap();
    let p = presence_of(&dave, "alice");
    assert_eq!((p.status, p.last_seen > 0), (PresenceStatus::OFFLINE, true));

    let phone = client(&node, "alice", "phone");
    for c in [&bob, &carol, &dave] {
        let p = presence_of(c, "alice");
        assert_eq!((p.status, p.last_seen), (PresenceStatus::ONLINE, 0));
    }
    phone
        .set_presence(PresenceStatus::BUSY, "in a meeting", WAIT)
        .unwrap();
    for c in [&bob, &carol, &dave] {
        let p = presence_of(c, "alice");
        assert_eq!(
            (p.status, p.text.as_ref()),
            (PresenceStatus::BUSY, "in a meeting")
        );
    }
    // A second device changes nothing; busy is per user, so it is busy too; one of two
    // devices closing changes nothing either.
    let laptop = client(&node, "alice", "laptop");
    phone.stop();
    assert!(
        presences_for(&bob, Duration::from_millis(600)).is_empty(),
        "alice is still online on her laptop"
    );
    laptop.stop();
    for c in [&bob, &carol, &dave] {
        let p = presence_of(c, "alice");
        assert_eq!(
            (p.status, p.text.as_ref(), p.last_seen > 0),
            (PresenceStatus::OFFLINE, "in a meeting", true)
        );
    }
    // Coming back, alice is still busy (sticky per user).
    let again = client(&node, "alice", "tablet");
    for c in [&bob, &carol, &dave] {
        assert_eq!(presence_of(c, "alice").status, PresenceStatus::BUSY);
    }
    // The stranger heard nothing of it all; an unsubscribed watcher stops hearing.
    assert!(presences_for(&eve, Duration::from_millis(100)).is_empty());
    dave.unsubscribe(&["alice"], WAIT).unwrap();
    again.set_presence(PresenceStatus::AWAY, "", WAIT).unwrap();
    assert_eq!(presence_of(&bob, "alice").status, PresenceStatus::AWAY);
    assert!(presences_for(&dave, Duration::from_millis(500)).is_empty());
    assert!(node.metric("tern_presence_changes_total").unwrap() >= 5);
}

#[test]
fn presence_and_subscribe_refusals() {
    let node = Node::start();
    let alice = client(&node, "alice", "phone");
    assert_eq!(
        server_code(alice.set_presence(PresenceStatus::AWAY, &"x".repeat(129), WAIT)),
        ErrorCode::LIMIT_EXCEEDED
    );
    assert_eq!(
        server_code(alice.set_presence(PresenceStatus::OFFLINE, "", WAIT)),
        ErrorCode::INVALID_ARGUMENT
    );
    assert_eq!(
        server_code(alice.subscribe(&["ok", ""], WAIT)),
        ErrorCode::INVALID_ARGUMENT
    );
    let names: Vec<String> = (0..1_000).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    alice.subscribe(&refs, WAIT).unwrap();
    // Adding the same ones again is fine; one more is not, and adds nothing.
    alice.subscribe(&refs[..10], WAIT).unwrap();
    assert_eq!(
        server_code(alice.subscribe(&["one-more"], WAIT)),
        ErrorCode::LIMIT_EXCEEDED
    );
    alice.unsubscribe(&refs[..1], WAIT).unwrap();
    alice.subscribe(&["one-more"], WAIT).unwrap();

    // Without the PRESENCE capability, PRESENCE and SUBSCRIBE are refused and the session
    // stays open.
    let mut raw = raw_session(&node, "frank", Capabilities::TYPING);
    let f = raw
        .request(
            Body::Subscribe(Subscribe {
                op: SubOp::ADD,
                users: vec![Cow::Borrowed("alice")],
            }),
            WAIT,
        )
        .unwrap_err();
    assert!(
        matches!(&f, tern_tools::ConnectionError::Server { code, .. } if *code == ErrorCode::INVALID_ARGUMENT),
        "{f:?}"
    );
    let pong = raw
        .request(Body::Ping(tern_protocol::Ping { time: 1 }), WAIT)
        .unwrap();
    assert!(matches!(pong.body, Body::Pong(_)));
}

/// A session that negotiated only `caps`, through a raw HELLO.
fn raw_session(node: &Node, user: &str, caps: Capabilities) -> tern_tools::Connection {
    let token = node.token(user, Some("raw"), 3600);
    let mut c = tern_tools::Connection::open(&node.native, WAIT).unwrap();
    let welcome = c
        .request(
            Body::Hello(Hello {
                protocol: PROTOCOL,
                capabilities: caps,
                max_frame: DEFAULT_MAX_BODY,
                token: token.into(),
                device: "raw".into(),
                resume_inbox_seq: 0,
                client: "".into(),
            }),
            WAIT,
        )
        .unwrap();
    let Body::Welcome(w) = welcome.body else {
        panic!("{welcome:?}")
    };
    assert_eq!(w.capabilities, caps);
    c
}

#[test]
fn typing_is_cut_to_the_configured_rate_and_skips_peers_without_the_capability() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, "[limits]\ntyping_per_sec = 1\ntyping_burst = 3\n").unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    let mut bob_old = raw_session(&node, "bob", Capabilities::RECEIPTS);
    let typing = Frame::new(
        0,
        Body::Typing(Typing {
            conv: Conv::direct("bob"),
            user: "".into(),
            state: TypingState::TYPING,
        }),
    );
    for _ in 0..20 {
        alice.send(&typing).unwrap();
    }
    let mut got = 0;
    while let Ok(Some(f)) = bob.recv(Duration::from_millis(500)) {
        if matches!(f.body, Body::Typing(_)) {
            got += 1;
        }
    }
    assert!((3..=4).contains(&got), "{got} of 20 TYPING relayed");
    // bob's session without TYPING got none of them.
    while let Ok(Some(f)) = bob_old.recv(Duration::from_millis(200)) {
        assert!(!matches!(f.body, Body::Typing(_)), "{f:?}");
    }
    assert!(node.metric("tern_typing_dropped_total").unwrap() >= 16);
    // Nothing reaches an offline user later, and nothing is stored.
    drop(bob);
    drop(bob_old);
    alice.send(&typing).unwrap();
    let mut bob = node.connect("bob", "phone");
    let page = bob
        .request(
            Body::Sync(tern_protocol::Sync {
                after_inbox_seq: 0,
                limit: 0,
            }),
            WAIT,
        )
        .unwrap();
    let Body::SyncPage(p) = page.body else {
        panic!()
    };
    assert!(p.messages.is_empty());
}

#[test]
fn cli_sets_presence_and_watch_prints_presence_and_typing() {
    let node = Node::start();
    let bob_token = node.token("bob", Some("laptop"), 3600);
    let alice_token = node.token("alice", Some("cli"), 3600);
    let watch = Command::new(tern_bin())
        .args([
            "--server",
            &node.native,
            "--token",
            &bob_token,
            "--json",
            "watch",
            "--presence",
            "alice",
            "--seconds",
            "6",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    let out = Command::new(tern_bin())
        .args([
            "--server",
            &node.native,
            "--token",
            &alice_token,
            "presence",
            "set",
            "busy",
            "in a meeting",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(tern_bin())
        .args([
            "--server",
            &node.native,
            "--token",
            &alice_token,
            "typing",
            "bob",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let busy = lines.iter().any(|v| {
        v["type"] == "presence"
            && v["user"] == "alice"
            && v["status"] == "busy"
            && v["text"] == "in a meeting"
    });
    assert!(busy, "{text}");
    let typing = lines
        .iter()
        .any(|v| v["type"] == "typing" && v["user"] == "alice");
    assert!(typing, "{text}");
}
