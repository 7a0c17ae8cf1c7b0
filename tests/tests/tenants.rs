//! Tenants end to end against real nodes, through the SDK: two tenants each with an "alice" and a
//! "bob" (and the default tenant's) exchange messages, contacts, sync, history, groups, rooms,
//! relations and presence without ever seeing each other; names holding another tenant's id
//! are refused; per-tenant limits (connections, SEND rate, group members) with their codes.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use tern_protocol::{
    Body, Contacts, Conv, ConvKind, ErrorCode, Frame, Message, MessageKind, MsgId, PresenceStatus,
    RelationKind, RoomJoin, Send, Sync,
};
use tern_tests::{ternd_bin, Node, WAIT};
use tern_tools::{
    Client, ClientConfig, Connection, ConnectionError, Event, HelloParams, SendError,
};

/// A token of `user` in `tenant` (`None`: the default tenant), minted by `ternd token`.
fn token(node: &Node, tenant: Option<&str>, user: &str) -> String {
    let mut cmd = Command::new(ternd_bin());
    cmd.args(["token", "--user", user, "--ttl", "3600", "--data-dir"])
        .arg(node.data_dir());
    if let Some(t) = tenant {
        cmd.args(["--tenant", t]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn start(node: &Node, tenant: Option<&str>, user: &str) -> Client {
    let mut cfg = ClientConfig::new(node.native.clone(), token(node, tenant, user), "phone");
    cfg.retransmit_after = Duration::from_millis(300);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(300);
    Client::start(cfg)
}

/// A started client once its session is open, with the user id WELCOME showed it.
fn client(node: &Node, tenant: Option<&str>, user: &str) -> Client {
    let c = start(node, tenant, user);
    let Some(Event::Connected { user: shown, .. }) =
        wait_event(&c, |e| matches!(e, Event::Connected { .. }))
    else {
        panic!("{tenant:?}/{user} did not connect")
    };
    // A client never sees its tenant's prefix, not even its own id.
    assert_eq!(shown, user);
    c
}

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

fn text(m: &Message<'_>) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// The next message (or group event) `c` receives.
fn next_message(c: &Client) -> Message<'static> {
    match wait_event(c, |e| {
        matches!(e, Event::Message(_) | Event::GroupEvent { .. })
    }) {
        Some(Event::Message(m)) => m,
        Some(Event::GroupEvent { message, .. }) => message,
        other => panic!("no message: {other:?}"),
    }
}

/// No message, group event, presence or relation notice reaches `c` for a while.
fn assert_nothing_arrives(c: &Client, who: &str) {
    for e in events_for(c, Duration::from_millis(700)) {
        assert!(
            !matches!(
                e,
                Event::Message(_)
                    | Event::GroupEvent { .. }
                    | Event::Presence(_)
                    | Event::Relation(_)
                    | Event::Typing(_)
            ),
            "{who} got {e:?}"
        );
    }
}

fn server_code<T: std::fmt::Debug>(r: Result<T, SendError>) -> ErrorCode {
    match r {
        Err(SendError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn say(c: &Client, to: &str, what: &str) {
    c.send_wait(to, MessageKind::TEXT, what.as_bytes().to_vec(), WAIT)
        .unwrap_or_else(|e| panic!("send to {to}: {e}"));
}

fn raw_send(c: &Client, to: Conv<'static>, n: u8) -> Result<Frame<'static>, SendError> {
    c.request(
        Body::Send(Send {
            to,
            msg_id: MsgId([n; 16]),
            kind: MessageKind::TEXT,
            body: vec![b'x'].into(),
        }),
        WAIT,
    )
}

fn history_texts(c: &Client, with: &str) -> Vec<(String, String)> {
    c.history(Conv::direct(with.to_owned()), 0, 0, WAIT)
        .unwrap()
        .messages
        .iter()
        .map(|m| (m.sender.to_string(), text(m)))
        .collect()
}

fn sync_texts(c: &Client) -> Vec<String> {
    match c
        .request(
            Body::Sync(Sync {
                after_inbox_seq: 0,
                limit: 0,
            }),
            WAIT,
        )
        .unwrap()
        .body
    {
        Body::SyncPage(p) => p.messages.iter().map(text).collect(),
        other => panic!("{other:?}"),
    }
}

fn contacts(c: &Client) -> Vec<(String, String)> {
    match c
        .request(
            Body::Contacts(Contacts {
                before_time: 0,
                limit: 0,
            }),
            WAIT,
        )
        .unwrap()
        .body
    {
        Body::ContactsPage(p) => p
            .entries
            .iter()
            .map(|e| {
                (
                    e.conv.id.to_string(),
                    e.last.as_ref().map(text).unwrap_or_default(),
                )
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn names(c: &Client, kind: RelationKind) -> Vec<String> {
    c.relations(kind, WAIT)
        .unwrap()
        .into_iter()
        .map(|e| e.user.into_owned())
        .collect()
}

#[test]
fn two_tenants_with_the_same_users_never_meet() {
    let node = Node::start();
    let acme_alice = client(&node, Some("acme"), "alice");
    let acme_bob = client(&node, Some("acme"), "bob");
    let globex_alice = client(&node, Some("globex"), "alice");
    let globex_bob = client(&node, Some("globex"), "bob");
    let alice = client(&node, None, "alice");
    let bob = client(&node, None, "bob");

    // One-to-one: each bob gets his own tenant's alice only, named as his tenant names her.
    say(&acme_alice, "bob", "hi from acme");
    let m = next_message(&acme_bob);
    assert_eq!(
        (m.sender.as_ref(), m.conv.id.as_ref(), text(&m).as_str()),
        ("alice", "alice", "hi from acme")
    );
    say(&globex_alice, "bob", "hi from globex");
    let m = next_message(&globex_bob);
    assert_eq!(
        (m.sender.as_ref(), text(&m).as_str()),
        ("alice", "hi from globex")
    );
    say(&alice, "bob", "hi from the default tenant");
    let m = next_message(&bob);
    assert_eq!(text(&m), "hi from the default tenant");
    say(&acme_bob, "alice", "acme reply");
    assert_eq!(text(&next_message(&acme_alice)), "acme reply");
    for (c, who) in [(&globex_bob, "globex bob"), (&bob, "bob")] {
        assert_nothing_arrives(c, who);
    }
    assert_nothing_arrives(&globex_alice, "globex alice");
    assert_nothing_arrives(&alice, "alice");

    // History, sync and contacts hold the tenant's conversation only.
    assert_eq!(
        history_texts(&acme_alice, "bob"),
        [
            ("alice".to_owned(), "hi from acme".to_owned()),
            ("bob".to_owned(), "acme reply".to_owned())
        ]
    );
    assert_eq!(
        history_texts(&globex_bob, "alice"),
        [("alice".to_owned(), "hi from globex".to_owned())]
    );
    assert_eq!(
        history_texts(&bob, "alice"),
        [("alice".to_owned(), "hi from the default tenant".to_owned())]
    );
    assert_eq!(sync_texts(&acme_bob), ["hi from acme", "acme reply"]);
    assert_eq!(sync_texts(&globex_bob), ["hi from globex"]);
    assert_eq!(
        contacts(&acme_bob),
        [("alice".to_owned(), "acme reply".to_owned())]
    );
    assert_eq!(
        contacts(&globex_alice),
        [("bob".to_owned(), "hi from globex".to_owned())]
    );

    // Naming another tenant's user is refused, for a tenant's client and the default one's,
    // and stores nothing.
    for (c, other) in [
        (&acme_alice, "globex\u{1f}bob"),
        (&alice, "acme\u{1f}bob"),
        (&globex_alice, "\u{1f}bob"),
    ] {
        let r = raw_send(c, Conv::direct(other.to_owned()), 1);
        assert_eq!(server_code(r), ErrorCode::INVALID_ARGUMENT);
    }
    assert_nothing_arrives(&acme_bob, "acme bob");
    assert_nothing_arrives(&globex_bob, "globex bob");
    assert_eq!(sync_texts(&globex_bob), ["hi from globex"]);

    // Groups: ids the node picks are shown without the tenant, and are the tenant's alone.
    let g = acme_alice
        .group_create("hikers", &["bob"], WAIT)
        .unwrap_or_else(|e| panic!("group create: {e}"));
    let gid = g.group.to_string();
    assert!(!gid.contains('\u{1f}'), "{gid:?}");
    assert_eq!(g.owner, "alice");
    let mut members: Vec<String> = g.members.iter().map(|m| m.user.to_string()).collect();
    members.sort();
    assert_eq!(members, ["alice", "bob"]);
    match wait_event(&acme_bob, |e| matches!(e, Event::GroupEvent { .. })) {
        Some(Event::GroupEvent { message, event }) => {
            assert_eq!(
                (message.conv.id.as_ref(), message.sender.as_ref()),
                (gid.as_str(), "alice")
            );
            assert!(
                event.users.iter().all(|u| !u.contains('\u{1f}')),
                "{event:?}"
            );
        }
        other => panic!("no group event: {other:?}"),
    }
    acme_alice
        .send_group_wait(&gid, MessageKind::TEXT, b"saturday?".to_vec(), WAIT)
        .unwrap();
    let m = next_message(&acme_bob);
    assert_eq!(
        (m.conv.id.as_ref(), text(&m).as_str()),
        (gid.as_str(), "saturday?")
    );
    // The same id in another tenant names nothing: no info, no history, no sending to it, no
    // adding oneself.
    for c in [&globex_alice, &globex_bob, &alice] {
        assert_eq!(server_code(c.group_get(&gid, WAIT)), ErrorCode::NOT_FOUND);
        let r = c.send_group_wait(&gid, MessageKind::TEXT, b"let me in".to_vec(), WAIT);
        assert_eq!(server_code(r), ErrorCode::NOT_FOUND);
        assert!(c.group_history(&gid, 0, 0, WAIT).is_err());
        assert!(c.group_add(&gid, &["alice"], WAIT).is_err());
    }
    assert!(globex_bob.group_list(WAIT).unwrap().is_empty());
    let listed: Vec<String> = acme_bob
        .group_list(WAIT)
        .unwrap()
        .iter()
        .map(|g| g.group.to_string())
        .collect();
    assert_eq!(listed, std::slice::from_ref(&gid));
    assert_nothing_arrives(&globex_bob, "globex bob");

    // Rooms: a room name is the tenant's; two tenants' "lobby" are two rooms.
    for c in [&acme_alice, &acme_bob, &globex_bob, &bob] {
        let r = c.request(
            Body::RoomJoin(RoomJoin {
                room: "lobby".into(),
                recent: 10,
            }),
            WAIT,
        );
        assert!(matches!(r.unwrap().body, Body::HistoryPage(_)));
    }
    let lobby = Conv {
        kind: ConvKind::ROOM,
        id: "lobby".into(),
    };
    acme_alice
        .send_to_wait(lobby, MessageKind::TEXT, b"hello lobby".to_vec(), WAIT)
        .unwrap();
    let m = next_message(&acme_bob);
    assert_eq!((m.conv.id.as_ref(), m.sender.as_ref()), ("lobby", "alice"));
    assert_nothing_arrives(&globex_bob, "globex bob");
    assert_nothing_arrives(&bob, "bob");

    // Relations: following and friend requests stay in the tenant.
    acme_alice.follow("bob", WAIT).unwrap();
    acme_alice.friend_request("bob", "hi", WAIT).unwrap();
    match wait_event(&acme_bob, |e| matches!(e, Event::Relation(_))) {
        Some(Event::Relation(r)) => assert_eq!(r.user, "alice"),
        other => panic!("no relation notice: {other:?}"),
    }
    assert_eq!(names(&acme_bob, RelationKind::FOLLOWERS), ["alice"]);
    assert_eq!(names(&acme_bob, RelationKind::PENDING), ["alice"]);
    assert!(names(&globex_bob, RelationKind::FOLLOWERS).is_empty());
    assert!(names(&globex_bob, RelationKind::PENDING).is_empty());
    assert!(names(&bob, RelationKind::FOLLOWERS).is_empty());
    assert_nothing_arrives(&globex_bob, "globex bob");
    // A block in one tenant does not block the same names in another.
    acme_bob.block("alice", WAIT).unwrap();
    assert_eq!(
        server_code(acme_alice.send_wait("bob", MessageKind::TEXT, b"?".to_vec(), WAIT)),
        ErrorCode::BLOCKED
    );
    say(&globex_alice, "bob", "still friends here");
    assert_eq!(text(&next_message(&globex_bob)), "still friends here");

    // Presence: a watcher of "alice" sees its own tenant's alice only.
    globex_bob.subscribe(&["alice"], WAIT).unwrap();
    match wait_event(&globex_bob, |e| matches!(e, Event::Presence(_))) {
        Some(Event::Presence(p)) => assert_eq!(p.user, "alice"),
        other => panic!("no presence: {other:?}"),
    }
    acme_alice
        .set_presence(PresenceStatus::BUSY, "acme meeting", WAIT)
        .unwrap();
    alice
        .set_presence(PresenceStatus::AWAY, "default lunch", WAIT)
        .unwrap();
    assert_nothing_arrives(&globex_bob, "globex bob");
    globex_alice
        .set_presence(PresenceStatus::BUSY, "globex call", WAIT)
        .unwrap();
    match wait_event(&globex_bob, |e| matches!(e, Event::Presence(_))) {
        Some(Event::Presence(p)) => {
            assert_eq!((p.user.as_ref(), p.text.as_ref()), ("alice", "globex call"))
        }
        other => panic!("no presence: {other:?}"),
    }

    for c in [acme_alice, acme_bob, globex_alice, globex_bob, alice, bob] {
        c.stop();
    }
}

#[test]
fn tenant_limits_are_enforced_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(
        &cfg,
        "[tenants.small]\nmax_connections = 2\nmax_send_rate = 5\nsend_burst = 5\n\
         group_max_members = 3\n",
    )
    .unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]);

    // Connections: the third of the tenant is refused with LIMIT_EXCEEDED; other tenants and
    // the default one are not counted against it.
    let alice = client(&node, Some("small"), "alice");
    let bob = client(&node, Some("small"), "bob");
    let hello = HelloParams::new(token(&node, Some("small"), "carol"), "phone");
    match Connection::connect(&node.native, &hello, WAIT) {
        Err(ConnectionError::Server { code, .. }) => assert_eq!(code, ErrorCode::LIMIT_EXCEEDED),
        other => panic!("expected LIMIT_EXCEEDED, got {:?}", other.map(|_| ())),
    }
    let others: Vec<Client> = (0..3)
        .map(|i| client(&node, Some("big"), &format!("u{i}")))
        .chain((0..3).map(|i| client(&node, None, &format!("u{i}"))))
        .collect();
    // The SDK keeps trying a refused session and gets it once a place is free.
    let carol = start(&node, Some("small"), "carol");
    match wait_event(&carol, |e| {
        matches!(e, Event::Disconnected { .. } | Event::Connected { .. })
    }) {
        Some(Event::Disconnected { reason }) => {
            assert!(reason.contains("LIMIT_EXCEEDED"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    bob.stop();
    assert!(
        wait_event(&carol, |e| matches!(e, Event::Connected { .. })).is_some(),
        "carol never got the freed place"
    );

    // Groups: at most 3 members in this tenant (the node's limit is 10,000).
    assert_eq!(
        server_code(alice.group_create("too big", &["bob", "carol", "dave"], WAIT)),
        ErrorCode::LIMIT_EXCEEDED
    );
    let g = alice.group_create("fits", &["bob", "carol"], WAIT).unwrap();
    assert_eq!(
        server_code(alice.group_add(&g.group, &["dave"], WAIT)),
        ErrorCode::LIMIT_EXCEEDED
    );
    let big = &others[0];
    let bg = big
        .group_create("big", &["a", "b", "c", "d", "e"], WAIT)
        .unwrap();
    assert_eq!(bg.member_count, 6);

    // SEND rate: a burst of 5, then 5 per second, for the whole tenant on this node. Seen on
    // the wire, through a plain connection in carol's place (the SDK's send queue would
    // retransmit the refused ones).
    carol.stop();
    let hello = HelloParams::new(token(&node, Some("small"), "carol"), "raw");
    let mut raw = tern_tests::poll(WAIT, || {
        Connection::connect(&node.native, &hello, WAIT).ok()
    })
    .unwrap_or_else(|| panic!("carol cannot connect"));
    let began = Instant::now();
    let mut codes = Vec::new();
    for n in 0..12u8 {
        let body = Body::Send(Send {
            to: Conv::direct("alice".to_owned()),
            msg_id: MsgId([n + 10; 16]),
            kind: MessageKind::TEXT,
            body: vec![b'x'].into(),
        });
        match raw.request(body, WAIT) {
            Ok(f) => {
                assert!(matches!(f.body, Body::SendAck(_)), "{f:?}");
                codes.push(None)
            }
            Err(ConnectionError::Server { code, .. }) => codes.push(Some(code)),
            Err(e) => panic!("{e}"),
        }
    }
    let acked = codes.iter().filter(|c| c.is_none()).count();
    let refilled = (began.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (5..=5 + refilled).contains(&acked) && acked < codes.len(),
        "{codes:?} in {:?}",
        began.elapsed()
    );
    assert!(
        codes
            .iter()
            .flatten()
            .all(|c| *c == ErrorCode::RATE_LIMITED),
        "{codes:?}"
    );
    // Other tenants are not slowed by it.
    for c in &others {
        c.send_wait(
            "u0",
            MessageKind::TEXT,
            b"fast".to_vec(),
            Duration::from_secs(1),
        )
        .unwrap();
    }
    raw.close();
    // The SDK's send queue retransmits a rate-limited message until it is taken.
    let sent: Vec<_> = (0..8)
        .map(|i| {
            alice
                .send("bob", MessageKind::TEXT, format!("queued {i}").into_bytes())
                .unwrap()
        })
        .collect();
    let mut acked = 0;
    let end = Instant::now() + WAIT;
    while acked < sent.len() && Instant::now() < end {
        match alice.next_event(Duration::from_millis(50)) {
            Some(Event::SendAcked { .. }) => acked += 1,
            Some(Event::SendFailed { code, .. }) => panic!("send failed: {code}"),
            _ => {}
        }
    }
    assert_eq!(acked, sent.len());

    // `ternd token` mints no token for an invalid tenant id (the node would refuse it with
    // AUTH_INVALID, see engine/src/auth.rs).
    let out = Command::new(ternd_bin())
        .args(["token", "--user", "zed", "--tenant", "a/b", "--data-dir"])
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());

    for c in others.into_iter().chain([alice]) {
        c.stop();
    }
}

#[test]
fn topics_are_scoped_by_tenant() {
    let node = Node::start();
    let acme_alice = client(&node, Some("acme"), "alice");
    let acme_bob = client(&node, Some("acme"), "bob");
    let globex_bob = client(&node, Some("globex"), "bob");
    for c in [&acme_bob, &globex_bob] {
        c.topic_subscribe("news", WAIT).unwrap();
    }
    acme_alice
        .publish_wait("news", MessageKind::TEXT, b"acme news".to_vec(), WAIT)
        .unwrap();
    let m = next_message(&acme_bob);
    assert_eq!(
        (m.conv.id.as_ref(), text(&m).as_str()),
        ("news", "acme news")
    );
    assert_eq!(m.sender.as_ref(), "alice", "names without the tenant");
    assert_nothing_arrives(&globex_bob, "globex's bob");
    // Each tenant lists its own "news", named as its clients named it.
    let listed = acme_bob.topic_list(WAIT).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].topic.as_ref(), "news");
    assert_eq!(
        listed[0].subscribers, 1,
        "acme's news has only acme's subscriber"
    );
    let listed = globex_bob.topic_list(WAIT).unwrap();
    assert_eq!((listed[0].topic.as_ref(), listed[0].last_seq), ("news", 0));
    // globex's history of "news" is its own topic's: empty.
    let page = globex_bob.topic_history("news", 0, 50, WAIT).unwrap();
    assert!(page.messages.is_empty(), "{page:?}");
}
