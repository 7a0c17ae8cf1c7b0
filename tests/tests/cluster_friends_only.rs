//! The "friends only" setting across nodes (CLUSTER.md, "Requests between nodes"), with real
//! `ternd` processes on 127.0.0.1: a user of one node who takes messages from friends only is
//! protected from a stranger of another node also when the stranger's node sequences their
//! conversation (the stranger has the smaller id), which asks the recipient's node for the
//! setting before storing; once the two are friends the message goes through, another
//! stranger is still refused, and with the setting off everyone gets through again.

use std::time::Duration;

use tern_protocol::{Body, Conv, ErrorCode, Frame, MessageKind, MsgId, RelationOp, Send};
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
        let links = nodes
            .iter()
            .all(|n| n.metric("tern_cluster_links_connected") == Some(2));
        let epochs: Vec<String> = nodes
            .iter()
            .map(|n| n.admin_json("/cluster/members")["epoch"].to_string())
            .collect();
        (members && links && epochs.windows(2).all(|w| w[0] == w[1])).then_some(())
    });
    if ready.is_none() {
        for n in &nodes {
            eprintln!("--- {} ---\n{}", n.cluster, n.log_text());
        }
        panic!("three nodes with their links did not come up within {CONVERGE:?}");
    }
    nodes
}

fn connect(node: &Node, user: &str) -> Connection {
    let hello = HelloParams::new(Node::cluster_token(user, "phone"), "phone");
    let conn =
        Connection::connect(&node.native, &hello, WAIT).unwrap_or_else(|e| panic!("{user}: {e}"));
    assert_eq!(
        conn.rung().authority(),
        node.native,
        "{user} is not served by the node the test placed them on"
    );
    conn
}

/// A SEND's outcome: "ACK" or the error code's name.
fn send(conn: &mut Connection, to: &str, n: u8, text: &str) -> String {
    match conn.request(
        Body::Send(Send {
            to: Conv::direct(to.to_owned()),
            msg_id: MsgId([n; 16]),
            kind: MessageKind::TEXT,
            body: text.as_bytes().to_vec().into(),
        }),
        WAIT,
    ) {
        Ok(Frame {
            body: Body::SendAck(_),
            ..
        }) => "ACK".into(),
        Err(ConnectionError::Server { code, .. }) => format!("{code:?}"),
        other => panic!("SEND {text}: {other:?}"),
    }
}

fn relate(conn: &mut Connection, op: RelationOp, user: &str) {
    match conn.request(
        Body::Relation(tern_protocol::Relation {
            op,
            user: user.to_owned().into(),
            note: "".into(),
        }),
        WAIT,
    ) {
        Ok(Frame { body: Body::Ok, .. }) => {}
        other => panic!("RELATION {op:?} {user}: {other:?}"),
    }
}

fn pushed(conn: &mut Connection, text: &str) {
    recv_until(
        conn,
        |f| matches!(&f.body, Body::Push(m) if m.body.as_ref() == text.as_bytes()),
    );
}

#[test]
fn friends_only_holds_when_the_strangers_node_sequences_the_conversation() {
    let _g = serial();
    let [a, b, _c] = three_nodes();
    let (id_a, id_b) = (node_id(&a), node_id(&b));
    // "fo-a-..." < "fo-b-...": the senders have the smaller ids, so their node (A) assigns the
    // conversations' sequences and the recipient's half travels through the outbox.
    let stranger = user_owned_by(&a, &id_a, "fo-a");
    let other = user_owned_by(&a, &id_a, "fo-a2");
    let bob = user_owned_by(&a, &id_b, "fo-b");
    assert!(stranger < bob && other < bob);
    let mut s = connect(&a, &stranger);
    let mut o = connect(&a, &other);
    let mut r = connect(&b, &bob);

    // Before the setting, a stranger's message goes through.
    assert_eq!(send(&mut s, &bob, 1, "hello"), "ACK");
    pushed(&mut r, "hello");

    relate(&mut r, RelationOp::SET_FRIENDS_ONLY, "");
    assert_eq!(
        send(&mut s, &bob, 2, "still there?"),
        format!("{:?}", ErrorCode::NOT_FRIEND),
        "a stranger of another node reached a friends-only user"
    );
    assert_eq!(
        send(&mut o, &bob, 3, "me too"),
        format!("{:?}", ErrorCode::NOT_FRIEND)
    );

    // Friends now (the pair's rows are on A, the conversation's node): the friend gets through,
    // the other stranger still does not.
    relate(&mut s, RelationOp::FRIEND_REQUEST, &bob);
    relate(&mut r, RelationOp::FRIEND_ACCEPT, &stranger);
    assert_eq!(send(&mut s, &bob, 4, "friends now"), "ACK");
    pushed(&mut r, "friends now");
    assert_eq!(
        send(&mut o, &bob, 5, "and me?"),
        format!("{:?}", ErrorCode::NOT_FRIEND)
    );

    // Setting off: everyone again.
    relate(&mut r, RelationOp::CLEAR_FRIENDS_ONLY, "");
    assert_eq!(send(&mut o, &bob, 6, "open again"), "ACK");
    pushed(&mut r, "open again");
}
