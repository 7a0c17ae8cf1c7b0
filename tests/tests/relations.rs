//! Relations end to end against real nodes, through the SDK and the `tern` CLI: follow, friend
//! request / accept / decline / remove, block / unblock, the friends-only setting, every list
//! with paging, the notices, SEND refusals that store nothing, and relations across a restart.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::io::{Read as _, Write as _};
use std::process::Command;
use std::time::{Duration, Instant};

use tern_protocol::{
    decode, Body, Capabilities, Contacts, Conv, Direction, ErrorCode, Frame, Hello, History,
    MessageKind, RelationKind, RelationList, RelationOp, Sync, DEFAULT_MAX_BODY, PROTOCOL,
};
use tern_tests::{tern_bin, terndump_bin, Node, WAIT};
use tern_tools::{Client, ClientConfig, Event, SendError};

fn client(node: &Node, user: &str) -> Client {
    let mut cfg = ClientConfig::new(
        node.native.clone(),
        node.token(user, Some("phone"), 3600),
        "phone",
    );
    cfg.retransmit_after = Duration::from_millis(500);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    let c = Client::start(cfg);
    wait_event(&c, |e| matches!(e, Event::Connected { .. }))
        .unwrap_or_else(|| panic!("{user} did not connect"));
    c
}

/// The first event matching `pred` within [`WAIT`].
fn wait_event(c: &Client, mut pred: impl FnMut(&Event) -> bool) -> Option<Event> {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if let Some(e) = c.next_event(Duration::from_millis(50)) {
            if pred(&e) {
                return Some(e);
            }
        }
    }
    None
}

/// Every event arriving within `quiet`.
fn events_for(c: &Client, quiet: Duration) -> Vec<Event> {
    let end = Instant::now() + quiet;
    let mut out = Vec::new();
    while Instant::now() < end {
        if let Some(e) = c.next_event(Duration::from_millis(20)) {
            out.push(e);
        }
    }
    out
}

fn names(c: &Client, kind: RelationKind) -> Vec<String> {
    c.relations(kind, WAIT)
        .unwrap()
        .into_iter()
        .map(|e| e.user.into_owned())
        .collect()
}

fn server_code(r: Result<impl std::fmt::Debug, SendError>) -> ErrorCode {
    match r {
        Err(SendError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn send(c: &Client, to: &str, text: &str) -> Result<tern_protocol::SendAck, SendError> {
    c.send_wait(to, MessageKind::TEXT, text.as_bytes().to_vec(), WAIT)
}

/// Nothing of the conversation between `a` and `b` is stored: no timeline row (HISTORY), no
/// inbox entry (SYNC from the start) and no recent-list row (CONTACTS), for either user.
fn assert_nothing_stored(node: &Node, a: &str, b: &str) {
    for (me, peer) in [(a, b), (b, a)] {
        let mut conn = node.connect(me, "probe");
        let f = conn
            .request(
                Body::History(History {
                    conv: Conv::direct(peer),
                    direction: Direction::BEFORE,
                    seq: 0,
                    limit: 50,
                }),
                WAIT,
            )
            .unwrap();
        let Body::HistoryPage(h) = f.body else {
            panic!("{f:?}")
        };
        assert!(
            h.messages.is_empty(),
            "{me}: timeline rows {:?}",
            h.messages
        );
        let f = conn
            .request(
                Body::Sync(Sync {
                    after_inbox_seq: 0,
                    limit: 100,
                }),
                WAIT,
            )
            .unwrap();
        let Body::SyncPage(p) = f.body else {
            panic!("{f:?}")
        };
        assert!(
            p.messages.iter().all(|m| m.conv.id != peer),
            "{me}: inbox rows with {peer}: {:?}",
            p.messages
        );
        let f = conn
            .request(
                Body::Contacts(Contacts {
                    before_time: 0,
                    limit: 50,
                }),
                WAIT,
            )
            .unwrap();
        let Body::ContactsPage(c) = f.body else {
            panic!("{f:?}")
        };
        assert!(
            c.entries.iter().all(|e| e.conv.id != peer),
            "{me}: recent row with {peer}"
        );
    }
}

#[test]
fn follow_friend_block_each_list_and_the_notices() {
    let node = Node::start();
    let alice = client(&node, "alice");
    let bob = client(&node, "bob");
    let carol = client(&node, "carol");

    // Follow is one-way and listed on both sides.
    alice.follow("bob", WAIT).unwrap();
    alice.follow("bob", WAIT).unwrap();
    assert_eq!(names(&alice, RelationKind::FOLLOWING), ["bob"]);
    assert_eq!(names(&bob, RelationKind::FOLLOWERS), ["alice"]);
    assert!(names(&bob, RelationKind::FOLLOWING).is_empty());
    alice.unfollow("bob", WAIT).unwrap();
    assert!(names(&alice, RelationKind::FOLLOWING).is_empty());
    assert!(names(&bob, RelationKind::FOLLOWERS).is_empty());

    // A request reaches bob's device as a notice and waits in his PENDING list.
    alice
        .friend_request("bob", "from the meetup", WAIT)
        .unwrap();
    let Some(Event::Relation(n)) = wait_event(&bob, |e| matches!(e, Event::Relation(_))) else {
        panic!("no friend request notice")
    };
    assert_eq!(
        (n.op, n.user.as_ref(), n.note.as_ref()),
        (RelationOp::FRIEND_REQUEST, "alice", "from the meetup")
    );
    let pending = bob.relations(RelationKind::PENDING, WAIT).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].user.as_ref(), pending[0].note.as_ref()),
        ("alice", "from the meetup")
    );
    assert_eq!(names(&alice, RelationKind::REQUESTED), ["bob"]);

    // Declined: gone on both sides, and accepting it now finds nothing.
    bob.friend_decline("alice", WAIT).unwrap();
    assert!(names(&bob, RelationKind::PENDING).is_empty());
    assert!(names(&alice, RelationKind::REQUESTED).is_empty());
    assert_eq!(
        server_code(bob.friend_accept("alice", WAIT)),
        ErrorCode::NOT_FOUND
    );

    // Asked again and accepted: friends on both sides, alice told.
    alice.friend_request("bob", "again", WAIT).unwrap();
    let Some(Event::Relation(n)) = wait_event(&bob, |e| matches!(e, Event::Relation(_))) else {
        panic!("no second friend request notice")
    };
    assert_eq!(n.note.as_ref(), "again");
    bob.friend_accept("alice", WAIT).unwrap();
    let Some(Event::Relation(n)) = wait_event(&alice, |e| matches!(e, Event::Relation(_))) else {
        panic!("no accept notice")
    };
    assert_eq!((n.op, n.user.as_ref()), (RelationOp::FRIEND_ACCEPT, "bob"));
    assert_eq!(names(&alice, RelationKind::FRIENDS), ["bob"]);
    assert_eq!(names(&bob, RelationKind::FRIENDS), ["alice"]);
    assert!(names(&bob, RelationKind::PENDING).is_empty());

    // Removed: gone for both.
    alice.unfriend("bob", WAIT).unwrap();
    assert!(names(&alice, RelationKind::FRIENDS).is_empty());
    assert!(names(&bob, RelationKind::FRIENDS).is_empty());

    // A block ends the blocked user's follow and refuses new follows and requests.
    carol.follow("bob", WAIT).unwrap();
    bob.block("carol", WAIT).unwrap();
    assert_eq!(names(&bob, RelationKind::BLOCKED), ["carol"]);
    assert!(names(&bob, RelationKind::FOLLOWERS).is_empty());
    assert_eq!(server_code(carol.follow("bob", WAIT)), ErrorCode::BLOCKED);
    assert_eq!(
        server_code(carol.friend_request("bob", "please", WAIT)),
        ErrorCode::BLOCKED
    );
    assert_eq!(
        server_code(bob.friend_request("carol", "", WAIT)),
        ErrorCode::FORBIDDEN
    );
    bob.unblock("carol", WAIT).unwrap();
    assert!(names(&bob, RelationKind::BLOCKED).is_empty());
    carol.follow("bob", WAIT).unwrap();
    assert_eq!(names(&bob, RelationKind::FOLLOWERS), ["carol"]);

    // Invalid requests.
    assert_eq!(
        server_code(alice.follow("alice", WAIT)),
        ErrorCode::INVALID_ARGUMENT
    );
    assert_eq!(
        server_code(alice.relate(RelationOp::SET_FRIENDS_ONLY, "bob", "", WAIT)),
        ErrorCode::INVALID_ARGUMENT
    );
    assert_eq!(
        server_code(alice.relation_page(RelationKind(9), "", 0, WAIT)),
        ErrorCode::INVALID_ARGUMENT
    );
    // No notices beyond the ones above (refused requests notify nobody).
    assert!(!events_for(&bob, Duration::from_millis(200))
        .iter()
        .any(|e| matches!(e, Event::Relation(_))));
}

#[test]
fn every_list_pages_with_a_cursor() {
    let node = Node::start();
    let star = client(&node, "star");
    let fans: Vec<String> = (0..25).map(|i| format!("user{i:02}")).collect();
    let blocked: Vec<String> = (0..25).map(|i| format!("spam{i:02}")).collect();
    for (f, b) in fans.iter().zip(&blocked) {
        star.follow(f, WAIT).unwrap();
        star.friend_request(f, "hi", WAIT).unwrap();
        star.block(b, WAIT).unwrap();
    }
    for (kind, want) in [
        (RelationKind::FOLLOWING, &fans),
        (RelationKind::REQUESTED, &fans),
        (RelationKind::BLOCKED, &blocked),
    ] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut pages = 0;
        for _ in 0..10 {
            let page = star.relation_page(kind, &cursor, 10, WAIT).unwrap();
            assert_eq!(page.kind, kind);
            assert!(page.users.len() <= 10);
            pages += 1;
            seen.extend(page.users.into_iter().map(|e| e.user.into_owned()));
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor.into_owned();
        }
        assert_eq!(pages, 3, "{kind}: 25 entries in pages of 10");
        seen.sort();
        assert_eq!(&seen, want, "{kind}: every entry once");
    }
    // The reverse rows, on each fan's side.
    let fan = client(&node, "user07");
    assert_eq!(names(&fan, RelationKind::PENDING), ["star"]);
    assert_eq!(names(&fan, RelationKind::FOLLOWERS), ["star"]);
    // Paging FOLLOWERS and FRIENDS and PENDING from the other side.
    let others: Vec<String> = (0..12).map(|i| format!("fan{i:02}")).collect();
    for o in &others {
        let c = client(&node, o);
        c.follow("user07", WAIT).unwrap();
        c.friend_request("user07", o, WAIT).unwrap();
        c.stop();
    }
    let mut followers = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let page = fan
            .relation_page(RelationKind::FOLLOWERS, &cursor, 5, WAIT)
            .unwrap();
        followers.extend(page.users.into_iter().map(|e| e.user.into_owned()));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor.into_owned();
    }
    followers.sort();
    let mut want = others.clone();
    want.push("star".into());
    want.sort();
    assert_eq!(followers, want);
    let pending = fan.relations(RelationKind::PENDING, WAIT).unwrap();
    assert_eq!(pending.len(), 13);
    assert!(
        pending
            .iter()
            .all(|e| e.note == e.user || (e.user == "star" && e.note == "hi")),
        "notes kept per request"
    );
    for o in &others[..5] {
        fan.friend_accept(o, WAIT).unwrap();
    }
    let friends = names(&fan, RelationKind::FRIENDS);
    assert_eq!(friends, others[..5].to_vec());
    assert_eq!(fan.relations(RelationKind::PENDING, WAIT).unwrap().len(), 8);
}

#[test]
fn a_blocked_send_is_refused_stores_nothing_and_unblock_restores_it() {
    let node = Node::start();
    let alice = client(&node, "alice");
    let bob = client(&node, "bob");
    bob.block("alice", WAIT).unwrap();
    // The block applies from its OK on.
    assert_eq!(
        server_code(send(&alice, "bob", "can you hear me?")),
        ErrorCode::BLOCKED
    );
    assert!(!events_for(&bob, Duration::from_millis(300))
        .iter()
        .any(|e| matches!(e, Event::Message(_))));
    assert_nothing_stored(&node, "alice", "bob");
    assert_eq!(node.metric("tern_messages_stored_total"), Some(0));

    // Blocking is one-way: bob can still write to alice.
    send(&bob, "alice", "I blocked you").unwrap();
    bob.unblock("alice", WAIT).unwrap();
    let ack = send(&alice, "bob", "hello again").unwrap();
    assert!(ack.conv_seq >= 1);
    let Some(Event::Message(m)) = wait_event(
        &bob,
        |e| matches!(e, Event::Message(m) if m.sender == "alice"),
    ) else {
        panic!("bob did not get alice's message after the unblock")
    };
    assert_eq!(m.body.as_ref(), b"hello again");
}

#[test]
fn friends_only_refuses_strangers_until_a_request_is_accepted() {
    let node = Node::start();
    let alice = client(&node, "alice");
    let bob = client(&node, "bob");
    let carol = client(&node, "carol");
    bob.set_friends_only(true, WAIT).unwrap();
    assert_eq!(
        server_code(send(&alice, "bob", "hi stranger")),
        ErrorCode::NOT_FRIEND
    );
    assert_nothing_stored(&node, "alice", "bob");
    // A pending request is not a friendship.
    alice.friend_request("bob", "let me in", WAIT).unwrap();
    assert_eq!(
        server_code(send(&alice, "bob", "still?")),
        ErrorCode::NOT_FRIEND
    );
    assert_nothing_stored(&node, "alice", "bob");
    bob.friend_accept("alice", WAIT).unwrap();
    send(&alice, "bob", "friends now").unwrap();
    assert!(wait_event(
        &bob,
        |e| matches!(e, Event::Message(m) if m.body.as_ref() == b"friends now")
    )
    .is_some());
    // Others are still refused, until the setting is cleared.
    assert_eq!(
        server_code(send(&carol, "bob", "me too")),
        ErrorCode::NOT_FRIEND
    );
    bob.set_friends_only(false, WAIT).unwrap();
    send(&carol, "bob", "me too").unwrap();
    // A block wins over the friendship.
    bob.block("alice", WAIT).unwrap();
    assert_eq!(server_code(send(&alice, "bob", "?")), ErrorCode::BLOCKED);
}

#[test]
fn relations_survive_a_restart_of_the_node() {
    let mut node = Node::start();
    {
        let alice = client(&node, "alice");
        let bob = client(&node, "bob");
        let carol = client(&node, "carol");
        let dave = client(&node, "dave");
        bob.block("mallory", WAIT).unwrap();
        bob.set_friends_only(true, WAIT).unwrap();
        alice.friend_request("bob", "", WAIT).unwrap();
        bob.friend_accept("alice", WAIT).unwrap();
        carol.friend_request("bob", "remember me", WAIT).unwrap();
        dave.follow("bob", WAIT).unwrap();
        for c in [alice, bob, carol, dave] {
            c.stop();
        }
    }
    node.restart();
    let alice = client(&node, "alice");
    let bob = client(&node, "bob");
    let carol = client(&node, "carol");
    let mallory = client(&node, "mallory");
    assert_eq!(names(&bob, RelationKind::BLOCKED), ["mallory"]);
    assert_eq!(names(&bob, RelationKind::FRIENDS), ["alice"]);
    assert_eq!(names(&alice, RelationKind::FRIENDS), ["bob"]);
    assert_eq!(names(&bob, RelationKind::FOLLOWERS), ["dave"]);
    let pending = bob.relations(RelationKind::PENDING, WAIT).unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|e| (e.user.as_ref(), e.note.as_ref()))
            .collect::<Vec<_>>(),
        [("carol", "remember me")]
    );
    // The refusals too: they are checked against what is on disk.
    assert_eq!(server_code(send(&mallory, "bob", "hi")), ErrorCode::BLOCKED);
    assert_eq!(
        server_code(send(&carol, "bob", "hi")),
        ErrorCode::NOT_FRIEND
    );
    send(&alice, "bob", "still friends").unwrap();
}

#[test]
fn without_the_capability_relations_are_not_served() {
    let node = Node::start();
    let token = node.token("alice", Some("raw"), 3600);
    let mut s = std::net::TcpStream::connect(&node.native).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let hello = Frame::new(
        1,
        Body::Hello(Hello {
            protocol: PROTOCOL,
            capabilities: Capabilities::RECEIPTS,
            max_frame: DEFAULT_MAX_BODY,
            token: Cow::Owned(token),
            device: Cow::Borrowed("raw"),
            resume_inbox_seq: 0,
            client: Cow::Borrowed("relations-test"),
        }),
    );
    let list = Frame::new(
        2,
        Body::RelationList(RelationList {
            kind: RelationKind::FRIENDS,
            cursor: Cow::Borrowed(""),
            limit: 0,
        }),
    );
    s.write_all(&hello.to_bytes().unwrap()).unwrap();
    s.write_all(&list.to_bytes().unwrap()).unwrap();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let end = Instant::now() + WAIT;
    while got.len() < 2 && Instant::now() < end {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "node closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        while let Some((f, used)) = decode(&buf, DEFAULT_MAX_BODY).unwrap() {
            got.push(f.into_owned());
            buf.drain(..used);
        }
    }
    let Body::Welcome(w) = &got[0].body else {
        panic!("{:?}", got[0])
    };
    assert!(!w.capabilities.contains(Capabilities::RELATIONS));
    let Body::Error(e) = &got[1].body else {
        panic!("{:?}", got[1])
    };
    assert_eq!(
        (got[1].request_id, e.code),
        (2, ErrorCode::INVALID_ARGUMENT)
    );
}

fn tern(node: &Node, token: &str, args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(tern_bin())
        .args(["--server", &node.native, "--token", token, "--json"])
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tern_ok(node: &Node, token: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let (ok, lines, err) = tern(node, token, args);
    assert!(ok, "tern {args:?}: {err}");
    lines
}

fn listed(node: &Node, token: &str, kind: &str) -> Vec<String> {
    let lines = tern_ok(node, token, &["relations", "--kind", kind, "--limit", "2"]);
    let end = lines.last().unwrap();
    assert_eq!(end["type"], "relations_end");
    assert_eq!(end["count"].as_u64().unwrap() as usize, lines.len() - 1);
    lines[..lines.len() - 1]
        .iter()
        .map(|l| l["user"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_cli_covers_every_operation_and_terndump_prints_the_frames() {
    let node = Node::start();
    let alice = node.token("alice", Some("cli"), 3600);
    let bob = node.token("bob", Some("cli"), 3600);
    let carol = node.token("carol", Some("cli"), 3600);

    let out = tern_ok(&node, &alice, &["follow", "bob"]);
    assert_eq!(out[0]["op"], "follow");
    assert_eq!(listed(&node, &bob, "followers"), ["alice"]);
    tern_ok(&node, &carol, &["follow", "bob"]);
    tern_ok(&node, &carol, &["friend", "request", "bob", "--note", "hi"]);
    // Three followers in pages of two.
    tern_ok(&node, &bob, &["follow", "carol"]);
    let dave = node.token("dave", Some("cli"), 3600);
    tern_ok(&node, &dave, &["follow", "bob"]);
    let mut followers = listed(&node, &bob, "followers");
    followers.sort();
    assert_eq!(followers, ["alice", "carol", "dave"]);
    assert_eq!(listed(&node, &bob, "pending"), ["carol"]);
    let one = tern_ok(
        &node,
        &bob,
        &[
            "relations",
            "--kind",
            "followers",
            "--limit",
            "1",
            "--one-page",
        ],
    );
    assert_eq!(one.len(), 2);
    assert!(!one[1]["next_cursor"].as_str().unwrap().is_empty());
    tern_ok(&node, &alice, &["unfollow", "bob"]);
    assert_eq!(listed(&node, &alice, "following"), Vec::<String>::new());

    tern_ok(&node, &bob, &["friend", "decline", "carol"]);
    assert!(listed(&node, &carol, "requested").is_empty());
    tern_ok(&node, &carol, &["friend", "request", "bob"]);
    tern_ok(&node, &bob, &["friend", "accept", "carol"]);
    assert_eq!(listed(&node, &bob, "friends"), ["carol"]);
    tern_ok(&node, &carol, &["friend", "remove", "bob"]);
    assert!(listed(&node, &bob, "friends").is_empty());

    tern_ok(&node, &bob, &["block", "alice"]);
    assert_eq!(listed(&node, &bob, "blocked"), ["alice"]);
    let (ok, _, err) = tern(&node, &alice, &["send", "--to", "bob", "blocked?"]);
    assert!(!ok && err.contains("BLOCKED"), "{err}");
    tern_ok(&node, &bob, &["unblock", "alice"]);
    tern_ok(&node, &alice, &["send", "--to", "bob", "unblocked"]);

    let out = tern_ok(&node, &bob, &["friends-only", "on"]);
    assert_eq!(out[0]["op"], "friends_only_on");
    let (ok, _, err) = tern(&node, &alice, &["send", "--to", "bob", "stranger"]);
    assert!(!ok && err.contains("NOT_FRIEND"), "{err}");
    tern_ok(&node, &bob, &["friends-only", "off"]);
    tern_ok(&node, &alice, &["send", "--to", "bob", "welcome back"]);
    let (ok, _, err) = tern(&node, &bob, &["friend", "accept", "nobody"]);
    assert!(!ok && err.contains("NOT_FOUND"), "{err}");

    // terndump names the operations, kinds and the new error code.
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol-spec/vectors");
    let out = Command::new(terndump_bin())
        .arg("--no-summary")
        .arg("decode")
        .args(
            [
                "relation_decline.hex",
                "relation_friends_only.hex",
                "relation_notice.hex",
                "relation_page_pending.hex",
                "error_not_friend.hex",
            ]
            .map(|v| vectors.join(v)),
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "RELATION #42 op=FRIEND_DECLINE user=bob",
        "op=SET_FRIENDS_ONLY",
        "RELATION #0 op=FRIEND_REQUEST user=alice",
        "RELATION_PAGE #44 kind=PENDING",
        "note=\"from the climbing club\"",
        "code=NOT_FRIEND",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
}
