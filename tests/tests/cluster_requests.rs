//! Requests that cross nodes (issue 9, routing; CLUSTER.md "Requests between nodes"), with
//! real `ternd` processes on 127.0.0.1: HISTORY asked of the conversation's node, READ with its
//! RECEIPT reaching the peer's devices on another node and the unread counts, RECALL stored by
//! the conversation's node with the other half through the outbox, in both placements, and
//! RELATION decided by the pair's node (lists on both sides, notices, a block that refuses
//! messages). The same script runs for two users of one node and for two users of two nodes, and both give
//! the same transcript (everything but server times). A HISTORY whose conversation's node does
//! not answer gets `UNAVAILABLE`.

use std::process::Command;
use std::time::{Duration, Instant};

use tern_protocol::{
    Body, Conv, Direction, ErrorCode, Frame, MessageKind, MsgId, ReceiptKind, RelationKind,
    RelationOp, Send,
};
use tern_tests::{node_id, poll, recv_until, serial, user_owned_by, Node, WAIT};
use tern_tools::{Connection, ConnectionError, HelloParams};

const CONVERGE: Duration = Duration::from_secs(10);

/// Three nodes that see each other, with every node-to-node link up.
fn three_nodes() -> [Node; 3] {
    let a = Node::start_cluster(&[], &[]);
    let b = Node::start_cluster(&[&a.cluster], &[]);
    let c = Node::start_cluster(&[&a.cluster, &b.cluster], &[]);
    let nodes = [a, b, c];
    let ready = poll(CONVERGE, || {
        let members = nodes
            .iter()
            .all(|n| n.metric("tern_cluster_members_alive") == Some(3));
        let epochs: Vec<String> = nodes
            .iter()
            .map(|n| n.admin_json("/cluster/members")["epoch"].to_string())
            .collect();
        let links = nodes
            .iter()
            .all(|n| n.metric("tern_cluster_links_connected") == Some(2));
        // Writes are taken once each node has recorded which slots it holds.
        let writable = nodes
            .iter()
            .all(|n| n.metric("tern_cluster_quorum") == Some(1));
        (members && links && writable && epochs.windows(2).all(|w| w[0] == w[1])).then_some(())
    });
    if ready.is_none() {
        for n in &nodes {
            eprintln!("--- {} ---\n{}", n.cluster, n.log_text());
        }
        panic!("three nodes with their links did not come up within {CONVERGE:?}");
    }
    nodes
}

fn connect(node: &Node, user: &str, device: &str) -> Connection {
    let hello = HelloParams::new(Node::cluster_token(user, device), device);
    let conn = Connection::connect(&node.native, &hello, WAIT)
        .unwrap_or_else(|e| panic!("{user}/{device}: {e}"));
    assert_eq!(
        conn.rung().authority(),
        node.native,
        "{user} is not served by the node the test placed them on"
    );
    conn
}

/// Two users and their devices: `u1` (the smaller id, so their node holds the conversation)
/// with a phone, `u2` with a phone and a tablet.
struct Pair {
    u1: String,
    u2: String,
    u1_phone: Connection,
    u2_phone: Connection,
    u2_tablet: Connection,
}

/// What a user sees, with the two user ids replaced by `u1`/`u2` and server times left out.
struct Transcript {
    u1: String,
    u2: String,
    lines: Vec<String>,
}

impl Transcript {
    fn name(&self, s: &str) -> String {
        if s == self.u1 {
            "u1".into()
        } else if s == self.u2 {
            "u2".into()
        } else {
            s.into()
        }
    }

    fn msg(&self, m: &tern_protocol::Message<'_>) -> String {
        format!(
            "conv={} sender={} conv_seq={} inbox_seq={} kind={} flags={} body={:?}",
            self.name(&m.conv.id),
            self.name(&m.sender),
            m.conv_seq,
            m.inbox_seq,
            m.kind.0,
            m.flags.0,
            String::from_utf8_lossy(&m.body)
        )
    }

    fn push(&mut self, line: String) {
        self.lines.push(line);
    }
}

fn id(n: u8) -> MsgId {
    MsgId([n; 16])
}

/// A SEND (or RECALL) answered with SEND_ACK: its conv_seq and inbox_seq.
fn acked(conn: &mut Connection, body: Body<'_>, what: &str) -> (u64, u64) {
    match conn.request(body, WAIT) {
        Ok(Frame {
            body: Body::SendAck(a),
            ..
        }) => (a.conv_seq, a.inbox_seq),
        other => panic!("{what}: expected SEND_ACK, got {other:?}"),
    }
}

fn send(conn: &mut Connection, to: &str, n: u8, text: &str) -> (u64, u64) {
    acked(
        conn,
        Body::Send(Send {
            to: Conv::direct(to.to_owned()),
            msg_id: id(n),
            kind: MessageKind::TEXT,
            body: text.as_bytes().to_vec().into(),
        }),
        text,
    )
}

/// The PUSH of the message (or recall event) with client id `n`.
fn pushed(conn: &mut Connection, n: u8) -> tern_protocol::Message<'static> {
    let (f, _) = recv_until(
        conn,
        |f| matches!(&f.body, Body::Push(m) if m.msg_id == id(n)),
    );
    match f.body {
        Body::Push(m) => m,
        _ => unreachable!(),
    }
}

fn receipt(conn: &mut Connection) -> tern_protocol::Receipt<'static> {
    let (f, _) = recv_until(conn, |f| matches!(&f.body, Body::Receipt(_)));
    match f.body {
        Body::Receipt(r) => r,
        _ => unreachable!(),
    }
}

fn history(
    conn: &mut Connection,
    peer: &str,
    direction: Direction,
    seq: u64,
    limit: u16,
) -> Result<tern_protocol::HistoryPage<'static>, ConnectionError> {
    let f = conn.request(
        Body::History(tern_protocol::History {
            conv: Conv::direct(peer.to_owned()),
            direction,
            seq,
            limit,
        }),
        WAIT,
    )?;
    match f.body {
        Body::HistoryPage(p) => Ok(p),
        other => panic!("expected HISTORY_PAGE, got {other:?}"),
    }
}

fn contacts(conn: &mut Connection) -> tern_protocol::ContactsPage<'static> {
    let f = conn
        .request(
            Body::Contacts(tern_protocol::Contacts {
                before_time: 0,
                limit: 50,
            }),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("CONTACTS: {e}"));
    match f.body {
        Body::ContactsPage(p) => p,
        other => panic!("expected CONTACTS_PAGE, got {other:?}"),
    }
}

fn read(conn: &mut Connection, peer: &str, up_to: u64) {
    let f = conn
        .request(
            Body::Read(tern_protocol::Read {
                conv: Conv::direct(peer.to_owned()),
                conv_seq: up_to,
            }),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("READ: {e}"));
    assert!(matches!(f.body, Body::Ok), "READ: {f:?}");
}

fn recall(conn: &mut Connection, peer: &str, seq: u64, n: u8) -> (u64, u64) {
    acked(
        conn,
        Body::Recall(tern_protocol::Recall {
            conv: Conv::direct(peer.to_owned()),
            conv_seq: seq,
            msg_id: id(n),
        }),
        "RECALL",
    )
}

/// Messages both ways, HISTORY from both sides and in both directions, READ with its
/// receipts and the unread counts, a recall by each user (one by the user whose node holds the
/// conversation, one by the other), and HISTORY again.
fn script(p: &mut Pair) -> Vec<String> {
    let (u1, u2) = (p.u1.clone(), p.u2.clone());
    let mut t = Transcript {
        u1: u1.clone(),
        u2: u2.clone(),
        lines: Vec::new(),
    };
    // u1 → u2 three times, u2 → u1 twice; every device of the recipient gets each PUSH.
    let mut seqs = Vec::new();
    for (n, text) in [(1, "one"), (2, "two"), (3, "three")] {
        let ack = send(&mut p.u1_phone, &u2, n, text);
        t.push(format!("u1 SEND {text}: {ack:?}"));
        seqs.push(ack.0);
        let m = pushed(&mut p.u2_phone, n);
        t.push(format!("u2 phone PUSH {}", t.msg(&m)));
        let m = pushed(&mut p.u2_tablet, n);
        t.push(format!("u2 tablet PUSH {}", t.msg(&m)));
    }
    for (n, text) in [(4, "four"), (5, "five")] {
        let ack = send(&mut p.u2_phone, &u1, n, text);
        t.push(format!("u2 SEND {text}: {ack:?}"));
        seqs.push(ack.0);
        let m = pushed(&mut p.u1_phone, n);
        t.push(format!("u1 PUSH {}", t.msg(&m)));
        let m = pushed(&mut p.u2_tablet, n);
        t.push(format!("u2 tablet PUSH {}", t.msg(&m)));
    }
    // HISTORY: the newest page, an older page from its anchor, and forward from the start.
    for (who, conn, peer) in [("u1", &mut p.u1_phone, &u2), ("u2", &mut p.u2_phone, &u1)] {
        for (direction, seq, limit) in [
            (Direction::BEFORE, 0, 3),
            (Direction::BEFORE, seqs[2], 10),
            (Direction::AFTER, 0, 4),
        ] {
            let page = history(conn, peer, direction, seq, limit)
                .unwrap_or_else(|e| panic!("{who} HISTORY: {e}"));
            t.push(format!(
                "{who} HISTORY {direction:?} {seq} {limit}: conv={} more={}",
                t.name(&page.conv.id),
                page.more
            ));
            for m in &page.messages {
                let line = format!("  {}", t.msg(m));
                t.push(line);
            }
        }
    }
    let unread = |t: &Transcript, who: &str, page: &tern_protocol::ContactsPage<'_>| {
        let mut s = format!("{who} CONTACTS total_unread={}", page.total_unread);
        for e in &page.entries {
            s.push_str(&format!(
                " [conv={} unread={} read_seq={} last_seq={}]",
                t.name(&e.conv.id),
                e.unread,
                e.read_seq,
                e.last.as_ref().map_or(0, |m| m.conv_seq)
            ));
        }
        s
    };
    let page = contacts(&mut p.u2_phone);
    t.push(unread(&t, "u2", &page));
    let page = contacts(&mut p.u1_phone);
    t.push(unread(&t, "u1", &page));

    // u2 reads up to "two": u1's device gets the RECEIPT, so does u2's other device.
    read(&mut p.u2_phone, &u1, seqs[1]);
    let r = receipt(&mut p.u1_phone);
    t.push(format!(
        "u1 RECEIPT conv={} user={} kind={:?} conv_seq={}",
        t.name(&r.conv.id),
        t.name(&r.user),
        r.kind,
        r.conv_seq
    ));
    assert_eq!(r.kind, ReceiptKind::READ);
    let r = receipt(&mut p.u2_tablet);
    t.push(format!(
        "u2 tablet RECEIPT conv={} user={} conv_seq={}",
        t.name(&r.conv.id),
        t.name(&r.user),
        r.conv_seq
    ));
    let page = contacts(&mut p.u2_phone);
    t.push(unread(&t, "u2", &page));
    // u1 reads everything: u2's devices get the RECEIPT.
    read(&mut p.u1_phone, &u2, seqs[4]);
    for (who, conn) in [
        ("u2 phone", &mut p.u2_phone),
        ("u2 tablet", &mut p.u2_tablet),
    ] {
        let r = receipt(conn);
        t.push(format!(
            "{who} RECEIPT conv={} user={} conv_seq={}",
            t.name(&r.conv.id),
            t.name(&r.user),
            r.conv_seq
        ));
    }
    let page = contacts(&mut p.u1_phone);
    t.push(unread(&t, "u1", &page));

    // u1 (whose node holds the conversation) recalls "three", which u2 has not read.
    let ack = recall(&mut p.u1_phone, &u2, seqs[2], 31);
    t.push(format!("u1 RECALL three: {ack:?}"));
    for (who, conn) in [
        ("u2 phone", &mut p.u2_phone),
        ("u2 tablet", &mut p.u2_tablet),
    ] {
        let m = pushed(conn, 31);
        t.push(format!("{who} PUSH {}", t.msg(&m)));
    }
    let page = contacts(&mut p.u2_phone);
    t.push(unread(&t, "u2", &page));
    // The same recall again: the first answer, nothing new.
    let again = recall(&mut p.u1_phone, &u2, seqs[2], 31);
    t.push(format!("u1 RECALL three again: {again:?}"));
    // Recalled twice under another id: refused the same way.
    match p.u1_phone.request(
        Body::Recall(tern_protocol::Recall {
            conv: Conv::direct(u2.clone()),
            conv_seq: seqs[2],
            msg_id: id(32),
        }),
        WAIT,
    ) {
        Err(ConnectionError::Server { code, .. }) => {
            t.push(format!("u1 RECALL three under a new id: {code:?}"))
        }
        other => panic!("expected an ERROR, got {other:?}"),
    }
    // u2 recalls "five" (the conversation is on u1's node when they are apart); u1 had read it.
    // Another id of u2's, and u2's own message "four" stays.
    let ack = recall(&mut p.u2_phone, &u1, seqs[4], 33);
    t.push(format!("u2 RECALL five: {ack:?}"));
    let m = pushed(&mut p.u1_phone, 33);
    t.push(format!("u1 PUSH {}", t.msg(&m)));
    let m = pushed(&mut p.u2_tablet, 33);
    t.push(format!("u2 tablet PUSH {}", t.msg(&m)));
    let again = recall(&mut p.u2_phone, &u1, seqs[4], 33);
    t.push(format!("u2 RECALL five again: {again:?}"));
    // Not the sender: refused.
    match p.u2_phone.request(
        Body::Recall(tern_protocol::Recall {
            conv: Conv::direct(u1.clone()),
            conv_seq: seqs[0],
            msg_id: id(34),
        }),
        WAIT,
    ) {
        Err(ConnectionError::Server { code, .. }) => {
            t.push(format!("u2 RECALL one (u1's): {code:?}"))
        }
        other => panic!("expected an ERROR, got {other:?}"),
    }
    for (who, conn, peer) in [("u1", &mut p.u1_phone, &u2), ("u2", &mut p.u2_phone, &u1)] {
        let page = history(conn, peer, Direction::BEFORE, 0, 50)
            .unwrap_or_else(|e| panic!("{who} HISTORY: {e}"));
        t.push(format!(
            "{who} HISTORY after the recalls: more={}",
            page.more
        ));
        for m in &page.messages {
            let line = format!("  {}", t.msg(m));
            t.push(line);
        }
    }
    let page = contacts(&mut p.u1_phone);
    t.push(unread(&t, "u1", &page));
    let page = contacts(&mut p.u2_phone);
    t.push(unread(&t, "u2", &page));
    relations(p, &mut t);
    t.lines
}

fn relate(conn: &mut Connection, op: RelationOp, other: &str, note: &str) -> String {
    match conn.request(
        Body::Relation(tern_protocol::Relation {
            op,
            user: other.to_owned().into(),
            note: note.to_owned().into(),
        }),
        WAIT,
    ) {
        Ok(Frame { body: Body::Ok, .. }) => "OK".into(),
        Err(ConnectionError::Server { code, .. }) => format!("{code:?}"),
        other => panic!("RELATION {op:?}: {other:?}"),
    }
}

/// A RELATION_LIST, as "user(since?) note" entries.
fn list(t: &Transcript, conn: &mut Connection, kind: RelationKind) -> String {
    let f = conn
        .request(
            Body::RelationList(tern_protocol::RelationList {
                kind,
                cursor: "".into(),
                limit: 100,
            }),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("RELATION_LIST: {e}"));
    let Body::RelationPage(page) = f.body else {
        panic!("expected RELATION_PAGE, got {f:?}")
    };
    let users: Vec<String> = page
        .users
        .iter()
        .map(|e| format!("{} {:?}", t.name(&e.user), e.note))
        .collect();
    format!("{kind:?}: {users:?}")
}

/// The next RELATION notice on a connection.
fn notice(t: &Transcript, conn: &mut Connection) -> String {
    let (f, _) = recv_until(conn, |f| matches!(&f.body, Body::Relation(_)));
    let Body::Relation(r) = f.body else {
        unreachable!()
    };
    format!("{:?} from {} {:?}", r.op, t.name(&r.user), r.note)
}

/// Relations between the two: each user acts once where the pair is theirs' node and once
/// where it is the other's; lists on both sides, notices, and a block that refuses messages.
fn relations(p: &mut Pair, t: &mut Transcript) {
    let (u1, u2) = (p.u1.clone(), p.u2.clone());
    let r = relate(&mut p.u2_phone, RelationOp::FOLLOW, &u1, "");
    t.push(format!("u2 FOLLOW u1: {r}"));
    let l = list(t, &mut p.u1_phone, RelationKind::FOLLOWERS);
    t.push(format!("u1 {l}"));
    let l = list(t, &mut p.u2_phone, RelationKind::FOLLOWING);
    t.push(format!("u2 {l}"));
    let r = relate(
        &mut p.u1_phone,
        RelationOp::FRIEND_REQUEST,
        &u2,
        "hi, it's u1",
    );
    t.push(format!("u1 FRIEND_REQUEST u2: {r}"));
    for (who, conn) in [
        ("u2 phone", &mut p.u2_phone),
        ("u2 tablet", &mut p.u2_tablet),
    ] {
        let n = notice(t, conn);
        t.push(format!("{who} RELATION {n}"));
    }
    let l = list(t, &mut p.u2_phone, RelationKind::PENDING);
    t.push(format!("u2 {l}"));
    let l = list(t, &mut p.u1_phone, RelationKind::REQUESTED);
    t.push(format!("u1 {l}"));
    // A request repeated: no change, no notice.
    let r = relate(
        &mut p.u1_phone,
        RelationOp::FRIEND_REQUEST,
        &u2,
        "hi, it's u1",
    );
    t.push(format!("u1 FRIEND_REQUEST u2 again: {r}"));
    let r = relate(&mut p.u2_phone, RelationOp::FRIEND_ACCEPT, &u1, "");
    t.push(format!("u2 FRIEND_ACCEPT u1: {r}"));
    let n = notice(t, &mut p.u1_phone);
    t.push(format!("u1 RELATION {n}"));
    let r = relate(&mut p.u2_phone, RelationOp::FRIEND_ACCEPT, &u1, "");
    t.push(format!("u2 FRIEND_ACCEPT u1 again: {r}"));
    for (who, conn) in [("u1", &mut p.u1_phone), ("u2", &mut p.u2_phone)] {
        for kind in [
            RelationKind::FRIENDS,
            RelationKind::PENDING,
            RelationKind::REQUESTED,
        ] {
            let l = list(t, conn, kind);
            t.push(format!("{who} {l}"));
        }
    }
    // u2 blocks u1: u1's messages and follow are refused, u2's follow of u1 stays.
    let r = relate(&mut p.u2_phone, RelationOp::BLOCK, &u1, "");
    t.push(format!("u2 BLOCK u1: {r}"));
    let l = list(t, &mut p.u2_phone, RelationKind::BLOCKED);
    t.push(format!("u2 {l}"));
    match p.u1_phone.request(
        Body::Send(Send {
            to: Conv::direct(u2.clone()),
            msg_id: id(40),
            kind: MessageKind::TEXT,
            body: b"blocked?".to_vec().into(),
        }),
        WAIT,
    ) {
        Err(ConnectionError::Server { code, .. }) => t.push(format!("u1 SEND to u2: {code:?}")),
        other => panic!("expected an ERROR, got {other:?}"),
    }
    let r = relate(&mut p.u1_phone, RelationOp::FOLLOW, &u2, "");
    t.push(format!("u1 FOLLOW u2: {r}"));
    let r = relate(&mut p.u1_phone, RelationOp::FRIEND_REQUEST, &u2, "again?");
    t.push(format!("u1 FRIEND_REQUEST u2: {r}"));
    // Unblocked, u1 writes again.
    let r = relate(&mut p.u2_phone, RelationOp::UNBLOCK, &u1, "");
    t.push(format!("u2 UNBLOCK u1: {r}"));
    let ack = send(&mut p.u1_phone, &u2, 41, "after the block");
    t.push(format!("u1 SEND after the block: {ack:?}"));
    let m = pushed(&mut p.u2_phone, 41);
    t.push(format!("u2 phone PUSH {}", t.msg(&m)));
    // u1 (whose node decides the pair) unfriends; u2's rows follow through the outbox (on two
    // nodes), so u2's list is read until it no longer names u1 as a friend (bounded).
    let r = relate(&mut p.u1_phone, RelationOp::UNFRIEND, &u2, "");
    t.push(format!("u1 UNFRIEND u2: {r}"));
    let l = list(t, &mut p.u1_phone, RelationKind::FRIENDS);
    t.push(format!("u1 {l}"));
    let deadline = Instant::now() + WAIT;
    let l = loop {
        let l = list(t, &mut p.u2_phone, RelationKind::FRIENDS);
        if !l.contains("u1") || Instant::now() > deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    t.push(format!("u2 {l}"));
    for (who, conn) in [("u1", &mut p.u1_phone), ("u2", &mut p.u2_phone)] {
        for kind in [RelationKind::FOLLOWING, RelationKind::FOLLOWERS] {
            let l = list(t, conn, kind);
            t.push(format!("{who} {l}"));
        }
    }
}

/// Issue 9: HISTORY, READ and RECALL between users of two nodes give exactly what they give
/// between two users of one node.
#[test]
fn history_read_and_recall_across_nodes_answer_as_on_one_node() {
    let _serial = serial();
    let started = Instant::now();
    let [a, b, _c] = three_nodes();
    let (id_a, id_b) = (node_id(&a), node_id(&b));

    // "ann-…" < "bob-…": the conversation lives on ann's node.
    let local = {
        let (u1, u2) = (
            user_owned_by(&a, &id_a, "ann"),
            user_owned_by(&a, &id_a, "bob"),
        );
        Pair {
            u1_phone: connect(&a, &u1, "phone"),
            u2_phone: connect(&a, &u2, "phone"),
            u2_tablet: connect(&a, &u2, "tablet"),
            u1,
            u2,
        }
    };
    let apart = {
        let (u1, u2) = (
            user_owned_by(&a, &id_a, "amy"),
            user_owned_by(&a, &id_b, "bea"),
        );
        Pair {
            u1_phone: connect(&a, &u1, "phone"),
            u2_phone: connect(&b, &u2, "phone"),
            u2_tablet: connect(&b, &u2, "tablet"),
            u1,
            u2,
        }
    };
    let (mut local, mut apart) = (local, apart);
    let one_node = script(&mut local);
    let two_nodes = script(&mut apart);
    for (i, (x, y)) in one_node.iter().zip(&two_nodes).enumerate() {
        assert_eq!(x, y, "line {i} differs (one node, then two nodes)");
    }
    assert_eq!(one_node.len(), two_nodes.len());
    // The calls went over the links.
    assert!(b.metric("tern_cluster_forwarded_total").unwrap_or(0) >= 2);
    eprintln!(
        "{} transcript lines alike on one node and on two, in {:?}",
        one_node.len(),
        started.elapsed()
    );
    for l in &two_nodes {
        eprintln!("{l}");
    }
    // What crossing costs: HISTORY of the newest 20 messages, asked by the user whose node does
    // not hold the conversation (the asking node's call to the other node) against the same
    // request on one node; printed, not asserted (a shared 2-CPU test machine).
    for round in 0..4 {
        let (name, pair) = if round % 2 == 0 {
            ("one node", &mut local)
        } else {
            ("two nodes", &mut apart)
        };
        let peer = pair.u1.clone();
        let mut took: Vec<Duration> = (0..200)
            .map(|_| {
                let at = Instant::now();
                history(&mut pair.u2_phone, &peer, Direction::BEFORE, 0, 20).expect("HISTORY");
                at.elapsed()
            })
            .collect();
        took.sort();
        eprintln!(
            "HISTORY of 20 on {name}: p50 {:?}, p99 {:?} (200 requests)",
            took[100], took[197]
        );
    }
}

/// Issue 9: a HISTORY whose conversation's node does not answer gets `UNAVAILABLE` (not an
/// empty page) within the call timeout; once the node answers again, HISTORY works.
#[test]
fn history_from_an_unresponsive_node_is_unavailable() {
    let _serial = serial();
    let [a, b, _c] = three_nodes();
    let (id_a, id_b) = (node_id(&a), node_id(&b));
    let u1 = user_owned_by(&a, &id_a, "amy");
    let u2 = user_owned_by(&a, &id_b, "bea");
    let mut u1_phone = connect(&a, &u1, "phone");
    let mut u2_phone = connect(&b, &u2, "phone");
    send(&mut u1_phone, &u2, 1, "hello");
    pushed(&mut u2_phone, 1);
    let page = history(&mut u2_phone, &u1, Direction::BEFORE, 0, 10).expect("HISTORY");
    assert_eq!(page.messages.len(), 1);

    // A stops answering (its socket stays open), then is let go again.
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &a.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let asked = Instant::now();
    let answer = history(&mut u2_phone, &u1, Direction::BEFORE, 0, 10);
    let took = asked.elapsed();
    signal("-CONT");
    match answer {
        Err(ConnectionError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::UNAVAILABLE, "{message}");
            assert!(!code.closes_connection());
        }
        other => panic!("expected ERROR UNAVAILABLE, got {other:?}"),
    }
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    eprintln!("UNAVAILABLE after {took:?}");
}
