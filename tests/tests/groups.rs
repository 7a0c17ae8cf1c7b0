//! Groups against real nodes: every operation and its refusals, pushes and SYNC under write and
//! read diffusion, a group crossing the write-diffusion size both ways, and a node killed with
//! SIGKILL in the middle of group sends.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use tern_protocol::{
    Body, Contacts, Conv, ConvKind, Direction, ErrorCode, Frame, GroupCreate, GroupInfo,
    GroupMembers, GroupRef, GroupTransfer, GroupUpdate, History, ListRequest, MemberOp, Message,
    MessageKind, MsgId, Read, Role, Send, SendAck, Sync,
};
use tern_tests::{recv_until, Node, WAIT};
use tern_tools::{Connection, ConnectionError};

fn id(a: u8, b: u8) -> MsgId {
    let mut m = [a; 16];
    m[15] = b;
    MsgId(m)
}

fn ask(conn: &mut Connection, body: Body<'_>) -> Result<Frame<'static>, ErrorCode> {
    match conn.request(body, WAIT) {
        Ok(f) => Ok(f),
        Err(ConnectionError::Server { code, .. }) => Err(code),
        Err(e) => panic!("request failed: {e}"),
    }
}

fn create(conn: &mut Connection, name: &str, members: &[&str]) -> GroupInfo<'static> {
    match ask(
        conn,
        Body::GroupCreate(GroupCreate {
            name: name.to_owned().into(),
            members: members.iter().map(|m| (*m).to_owned().into()).collect(),
        }),
    ) {
        Ok(Frame {
            body: Body::GroupInfo(i),
            ..
        }) => i,
        other => panic!("expected GROUP_INFO, got {other:?}"),
    }
}

fn members(
    conn: &mut Connection,
    g: &str,
    op: MemberOp,
    users: &[&str],
    arg: u64,
) -> Result<(), ErrorCode> {
    ask(
        conn,
        Body::GroupMembers(GroupMembers {
            group: g.to_owned().into(),
            op,
            users: users.iter().map(|u| (*u).to_owned().into()).collect(),
            arg,
        }),
    )
    .map(|_| ())
}

fn send(conn: &mut Connection, g: &str, msg: MsgId, text: &str) -> Result<SendAck, ErrorCode> {
    match ask(
        conn,
        Body::Send(Send {
            to: Conv::group(g.to_owned()),
            msg_id: msg,
            kind: MessageKind::TEXT,
            body: text.as_bytes().to_vec().into(),
        }),
    )? {
        Frame {
            body: Body::SendAck(a),
            ..
        } => Ok(a),
        other => panic!("expected SEND_ACK, got {other:?}"),
    }
}

fn get(conn: &mut Connection, g: &str) -> Result<GroupInfo<'static>, ErrorCode> {
    match ask(
        conn,
        Body::GroupGet(GroupRef {
            group: g.to_owned().into(),
        }),
    )? {
        Frame {
            body: Body::GroupInfo(i),
            ..
        } => Ok(i),
        other => panic!("expected GROUP_INFO, got {other:?}"),
    }
}

/// Waits for the PUSH of message `msg` of group `g`.
fn expect_push(conn: &mut Connection, g: &str, msg: MsgId) -> Message<'static> {
    let (f, _) = recv_until(
        conn,
        |f| matches!(&f.body, Body::Push(m) if m.msg_id == msg && m.conv.id == g),
    );
    let Body::Push(m) = f.body else {
        unreachable!()
    };
    m
}

/// Pulls everything with SYNC, as the spec's client does: pages until `more` is false, each
/// next page after the largest inbox seq seen. Returns the messages in arrival order.
fn sync_all(conn: &mut Connection, after: &mut u64) -> Vec<Message<'static>> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = match ask(
            conn,
            Body::Sync(Sync {
                after_inbox_seq: *after,
                limit: 7,
            }),
        ) {
            Ok(Frame {
                body: Body::SyncPage(p),
                ..
            }) => p,
            other => panic!("expected SYNC_PAGE, got {other:?}"),
        };
        for m in &page.messages {
            *after = (*after).max(m.inbox_seq);
        }
        out.extend(page.messages);
        if !page.more {
            return out;
        }
    }
    panic!("SYNC did not end within 1000 pages");
}

/// How often each conv_seq of group `g` appears among `msgs`.
fn seqs_of(msgs: &[Message<'_>], g: &str) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for m in msgs {
        if m.conv.kind == ConvKind::GROUP && m.conv.id == g {
            *out.entry(m.conv_seq).or_insert(0) += 1;
        }
    }
    out
}

fn contacts_entry(conn: &mut Connection, g: &str) -> Option<(u64, u64)> {
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
        .find(|c| c.conv.kind == ConvKind::GROUP && c.conv.id == g)
        .map(|c| (c.unread, page.total_unread))
}

fn config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, text).unwrap();
    let path = cfg.to_str().unwrap().to_owned();
    (dir, path)
}

#[test]
fn every_operation_and_every_refusal() {
    let (_cfg_dir, cfg) = config("[limits]\ngroup_max_members = 5\n");
    let node = Node::start_with(&["--config", &cfg]);
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "laptop");
    let mut carol = node.connect("carol", "tablet");
    let mut mallory = node.connect("mallory", "pc");
    assert!(alice
        .welcome()
        .unwrap()
        .capabilities
        .contains(tern_protocol::Capabilities::GROUPS));

    let info = create(&mut alice, "hiking", &["bob"]);
    let g = info.group.to_string();
    assert_eq!((info.owner.as_ref(), info.member_count), ("alice", 2));
    assert_eq!(
        info.members
            .iter()
            .find(|m| m.user == "alice")
            .unwrap()
            .role,
        Role::OWNER
    );
    // Bob's device is told with the CREATED event.
    let created = recv_until(
        &mut bob,
        |f| matches!(&f.body, Body::Push(m) if m.conv.id == g),
    )
    .0;
    let Body::Push(ev) = created.body else {
        unreachable!()
    };
    assert_eq!(ev.kind, MessageKind(0x41));
    assert!(ev.inbox_seq > 0, "write diffusion: an inbox entry");

    // Messages reach the other members' devices; the sender has SEND_ACK.
    let a1 = send(&mut alice, &g, id(1, 1), "hello group").unwrap();
    let pushed = expect_push(&mut bob, &g, id(1, 1));
    assert_eq!(
        (pushed.conv_seq, pushed.body.as_ref()),
        (a1.conv_seq, &b"hello group"[..])
    );
    // A retransmission gets the original SEND_ACK.
    assert_eq!(send(&mut alice, &g, id(1, 1), "hello group").unwrap(), a1);

    // Refusals, each storing nothing.
    assert_eq!(
        send(&mut mallory, &g, id(9, 1), "let me in"),
        Err(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        members(&mut bob, &g, MemberOp::ADD, &["carol"], 0),
        Err(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        ask(
            &mut bob,
            Body::GroupDisband(GroupRef {
                group: g.clone().into()
            })
        )
        .err(),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        ask(
            &mut bob,
            Body::GroupTransfer(GroupTransfer {
                group: g.clone().into(),
                owner: "bob".into()
            })
        )
        .err(),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        ask(
            &mut bob,
            Body::GroupUpdate(GroupUpdate {
                group: g.clone().into(),
                name: Some("mine".into()),
                announcement: None,
                avatar: None
            })
        )
        .err(),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(get(&mut mallory, &g).err(), Some(ErrorCode::FORBIDDEN));
    assert_eq!(get(&mut alice, "g-nope").err(), Some(ErrorCode::NOT_FOUND));
    assert_eq!(
        send(&mut alice, "g-nope", id(9, 2), "x"),
        Err(ErrorCode::NOT_FOUND)
    );
    assert_eq!(
        members(&mut alice, &g, MemberOp::ADD, &["c1", "c2", "c3", "c4"], 0),
        Err(ErrorCode::LIMIT_EXCEEDED)
    );
    assert_eq!(
        ask(
            &mut alice,
            Body::GroupLeave(GroupRef {
                group: g.clone().into()
            })
        )
        .err(),
        Some(ErrorCode::FORBIDDEN),
        "the owner transfers or disbands"
    );
    let history = |conn: &mut Connection| match ask(
        conn,
        Body::History(History {
            conv: Conv::group(g.clone()),
            direction: Direction::AFTER,
            seq: 0,
            limit: 50,
        }),
    ) {
        Ok(Frame {
            body: Body::HistoryPage(p),
            ..
        }) => p.messages,
        other => panic!("expected HISTORY_PAGE, got {other:?}"),
    };
    assert_eq!(
        history(&mut alice).len(),
        2,
        "CREATED and one message: the refusals stored nothing"
    );
    assert_eq!(
        ask(
            &mut mallory,
            Body::History(History {
                conv: Conv::group(g.clone()),
                direction: Direction::AFTER,
                seq: 0,
                limit: 5
            })
        )
        .err(),
        Some(ErrorCode::FORBIDDEN)
    );

    // Owner operations.
    ask(
        &mut alice,
        Body::GroupUpdate(GroupUpdate {
            group: g.clone().into(),
            name: Some("hiking club".into()),
            announcement: Some("Saturday 8:00".into()),
            avatar: Some("media:abc".into()),
        }),
    )
    .unwrap();
    members(&mut alice, &g, MemberOp::ADD, &["carol"], 0).unwrap();
    members(&mut alice, &g, MemberOp::SET_ROLE, &["bob"], 1).unwrap();
    // An admin mutes; the muted member cannot send until unmuted.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 600_000;
    members(&mut bob, &g, MemberOp::MUTE, &["carol"], until).unwrap();
    assert_eq!(
        send(&mut carol, &g, id(3, 1), "shh"),
        Err(ErrorCode::FORBIDDEN)
    );
    // An admin does not act on the owner.
    assert_eq!(
        members(&mut bob, &g, MemberOp::REMOVE, &["alice"], 0),
        Err(ErrorCode::FORBIDDEN)
    );
    members(&mut bob, &g, MemberOp::UNMUTE, &["carol"], 0).unwrap();
    send(&mut carol, &g, id(3, 2), "hi all").unwrap();
    expect_push(&mut alice, &g, id(3, 2));

    let info = get(&mut bob, &g).unwrap();
    assert_eq!(
        (
            info.name.as_ref(),
            info.announcement.as_ref(),
            info.avatar.as_ref()
        ),
        ("hiking club", "Saturday 8:00", "media:abc")
    );
    assert_eq!(info.member_count, 3);
    assert_eq!(
        info.members.iter().find(|m| m.user == "bob").unwrap().role,
        Role::ADMIN
    );

    // CONTACTS lists the group with its unread count; READ clears it.
    let (unread, _) = contacts_entry(&mut bob, &g).expect("bob's contacts list the group");
    assert_eq!(unread, 2, "alice's and carol's messages");
    let last = history(&mut bob).last().unwrap().conv_seq;
    ask(
        &mut bob,
        Body::Read(Read {
            conv: Conv::group(g.clone()),
            conv_seq: last,
        }),
    )
    .unwrap();
    assert_eq!(contacts_entry(&mut bob, &g).unwrap().0, 0);

    // Transfer, leave, list, disband.
    ask(
        &mut alice,
        Body::GroupTransfer(GroupTransfer {
            group: g.clone().into(),
            owner: "bob".into(),
        }),
    )
    .unwrap();
    assert_eq!(get(&mut carol, &g).unwrap().owner.as_ref(), "bob");
    ask(
        &mut alice,
        Body::GroupLeave(GroupRef {
            group: g.clone().into(),
        }),
    )
    .unwrap();
    assert_eq!(
        send(&mut alice, &g, id(1, 9), "still here?"),
        Err(ErrorCode::FORBIDDEN)
    );
    let other = create(&mut carol, "second", &[]);
    let list = match ask(
        &mut carol,
        Body::GroupList(ListRequest {
            cursor: "".into(),
            limit: 1,
        }),
    ) {
        Ok(Frame {
            body: Body::GroupListPage(p),
            ..
        }) => p,
        other => panic!("expected GROUP_LIST_PAGE, got {other:?}"),
    };
    assert_eq!(list.groups.len(), 1);
    assert!(!list.next_cursor.is_empty());
    let rest = match ask(
        &mut carol,
        Body::GroupList(ListRequest {
            cursor: list.next_cursor.clone(),
            limit: 10,
        }),
    ) {
        Ok(Frame {
            body: Body::GroupListPage(p),
            ..
        }) => p,
        other => panic!("expected GROUP_LIST_PAGE, got {other:?}"),
    };
    let mut names: Vec<String> = list
        .groups
        .iter()
        .chain(rest.groups.iter())
        .map(|s| s.group.to_string())
        .collect();
    names.sort();
    let mut want = vec![g.clone(), other.group.to_string()];
    want.sort();
    assert_eq!(names, want);
    assert!(rest.next_cursor.is_empty());

    // Every membership change is an event in the timeline, in order with the messages.
    let kinds: Vec<u8> = history(&mut bob).iter().map(|m| m.kind.0).collect();
    assert_eq!(kinds.iter().filter(|k| **k == 0x41).count(), 8, "{kinds:?}");

    ask(
        &mut bob,
        Body::GroupDisband(GroupRef {
            group: g.clone().into(),
        }),
    )
    .unwrap();
    assert_eq!(get(&mut bob, &g).err(), Some(ErrorCode::NOT_FOUND));
    assert_eq!(
        send(&mut carol, &g, id(3, 3), "anyone?"),
        Err(ErrorCode::NOT_FOUND)
    );
}

#[test]
fn crossing_the_write_diffusion_size_keeps_every_message_once_on_every_device() {
    let (_cfg_dir, cfg) = config("[limits]\ngroup_write_diffusion_max = 3\n");
    let node = Node::start_with(&["--config", &cfg]);
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    let info = create(&mut alice, "g", &["bob"]);
    let g = info.group.to_string();
    send(&mut alice, &g, id(1, 1), "w1").unwrap();
    // Up to four members: read diffusion; bob's online device still gets a PUSH (inbox seq 0).
    members(&mut alice, &g, MemberOp::ADD, &["carol", "dave"], 0).unwrap();
    send(&mut alice, &g, id(1, 2), "r1").unwrap();
    let p = expect_push(&mut bob, &g, id(1, 2));
    assert_eq!(p.inbox_seq, 0, "read diffusion: no inbox entry");
    let mut bob_pos = 0;
    let first = sync_all(&mut bob, &mut bob_pos);
    send(&mut bob, &g, id(2, 1), "r2").unwrap();
    // Down to three: write diffusion again.
    members(&mut alice, &g, MemberOp::REMOVE, &["dave"], 0).unwrap();
    send(&mut alice, &g, id(1, 3), "w2").unwrap();
    members(&mut alice, &g, MemberOp::ADD, &["erin"], 0).unwrap();
    send(&mut alice, &g, id(1, 4), "r3").unwrap();

    let last = match ask(
        &mut alice,
        Body::History(History {
            conv: Conv::group(g.clone()),
            direction: Direction::BEFORE,
            seq: 0,
            limit: 1,
        }),
    ) {
        Ok(Frame {
            body: Body::HistoryPage(p),
            ..
        }) => p.messages[0].conv_seq,
        other => panic!("{other:?}"),
    };
    let every: BTreeMap<u64, usize> = (1..=last).map(|s| (s, 1)).collect();
    // A device that synced half way, then again; fresh devices of alice and bob; carol.
    let mut second = first;
    second.extend(sync_all(&mut bob, &mut bob_pos));
    assert_eq!(seqs_of(&second, &g), every, "bob's phone");
    for (user, device) in [("alice", "laptop"), ("bob", "tablet")] {
        let mut c = node.connect(user, device);
        let mut pos = 0;
        let got = sync_all(&mut c, &mut pos);
        assert_eq!(seqs_of(&got, &g), every, "{user}/{device}");
        // Nothing is handed out twice on a later SYNC.
        let again = sync_all(&mut c, &mut pos);
        assert!(seqs_of(&again, &g).is_empty(), "{user}/{device}: {again:?}");
    }
    let mut carol = node.connect("carol", "c");
    let mut pos = 0;
    let got = seqs_of(&sync_all(&mut carol, &mut pos), &g);
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    assert_eq!(got.keys().last(), Some(&last));
}

#[test]
fn read_diffusion_unread_comes_from_the_cursor() {
    let (_cfg_dir, cfg) = config("[limits]\ngroup_write_diffusion_max = 1\n");
    let node = Node::start_with(&["--config", &cfg]);
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "phone");
    let g = create(&mut alice, "big", &["bob"]).group.to_string();
    for i in 0..3 {
        send(&mut alice, &g, id(1, i), "x").unwrap();
    }
    let (unread, total) = contacts_entry(&mut bob, &g).unwrap();
    // Group seq minus read cursor: three messages after bob's join (the CREATED event is read).
    assert_eq!((unread, total), (3, 3));
    ask(
        &mut bob,
        Body::Read(Read {
            conv: Conv::group(g.clone()),
            conv_seq: 3,
        }),
    )
    .unwrap();
    assert_eq!(contacts_entry(&mut bob, &g).unwrap(), (1, 1));
}

#[test]
fn kill_9_during_group_sends_keeps_every_acknowledged_message_once() {
    for (cfg_text, label) in [
        ("", "write diffusion"),
        (
            "[limits]\ngroup_write_diffusion_max = 1\n",
            "read diffusion",
        ),
    ] {
        let (_cfg_dir, cfg) = config(cfg_text);
        let mut node = Node::start_with(&["--config", &cfg]);
        let mut alice = node.connect("alice", "phone");
        let g = create(&mut alice, "crash", &["bob", "carol"])
            .group
            .to_string();
        // Pipelined SENDs; the node is killed while they are in flight.
        let total = 400u16;
        let mut rids = BTreeMap::new();
        for i in 0..total {
            let rid = alice.next_request_id();
            let mut m = [7u8; 16];
            m[14] = (i >> 8) as u8;
            m[15] = i as u8;
            rids.insert(rid, MsgId(m));
            alice
                .send(&Frame::new(
                    rid,
                    Body::Send(Send {
                        to: Conv::group(g.clone()),
                        msg_id: MsgId(m),
                        kind: MessageKind::TEXT,
                        body: vec![b'x'; 64].into(),
                    }),
                ))
                .unwrap();
            if i == total / 2 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let mut acked: HashSet<[u8; 16]> = HashSet::new();
        let deadline = Instant::now() + WAIT;
        while acked.len() < 20 && Instant::now() < deadline {
            if let Ok(Some(Frame {
                request_id,
                body: Body::SendAck(_),
                ..
            })) = alice.recv(Duration::from_millis(100))
            {
                acked.insert(rids[&request_id].0);
            }
        }
        node.kill();
        // Acknowledgements already on the wire count too.
        while let Ok(Some(f)) = alice.recv(Duration::from_millis(200)) {
            if let Frame {
                request_id,
                body: Body::SendAck(_),
                ..
            } = f
            {
                acked.insert(rids[&request_id].0);
            }
        }
        assert!(
            !acked.is_empty(),
            "{label}: nothing acknowledged before the kill"
        );
        node.restart();
        for (user, device) in [("alice", "tablet"), ("bob", "phone"), ("carol", "phone")] {
            let mut c = node.connect(user, device);
            let mut pos = 0;
            let got = sync_all(&mut c, &mut pos);
            let mut seen: BTreeMap<[u8; 16], usize> = BTreeMap::new();
            for m in got
                .iter()
                .filter(|m| m.conv.id == g && m.kind == MessageKind::TEXT)
            {
                *seen.entry(m.msg_id.0).or_insert(0) += 1;
            }
            for a in &acked {
                assert_eq!(
                    seen.get(a),
                    Some(&1),
                    "{label}: {user}/{device} lacks or repeats an acknowledged message"
                );
            }
            assert!(
                seen.values().all(|n| *n == 1),
                "{label}: {user}/{device} got a message twice"
            );
            let seqs = seqs_of(&got, &g);
            assert!(
                seqs.values().all(|n| *n == 1),
                "{label}: {user}/{device}: {seqs:?}"
            );
        }
        // Retransmitting everything after the restart stores nothing twice.
        let mut alice = node.connect("alice", "phone");
        for (i, m) in rids.values().enumerate().take(50) {
            let a = send(&mut alice, &g, *m, "x").unwrap();
            assert!(a.conv_seq > 0, "{label}: message {i}");
        }
        let mut bob = node.connect("bob", "laptop");
        let mut pos = 0;
        let got = sync_all(&mut bob, &mut pos);
        let seqs = seqs_of(&got, &g);
        assert!(seqs.values().all(|n| *n == 1), "{label}: {seqs:?}");
    }
}
