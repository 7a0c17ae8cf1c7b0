//! Read receipts and mentions in groups against a real node: "read by k of n" and the readers
//! of a write-diffusion message, the RECEIPT its sender gets when a member reads, the member's
//! own position under read diffusion, mention flags in CONTACTS under both diffusions, and the
//! refusals (receipts of a group one is not in, mentions outside groups, malformed mentions).

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use tern_protocol::{
    Body, Contacts, Conv, Diffusion, ErrorCode, Frame, GroupCreate, GroupReceipts,
    GroupReceiptsPage, MessageKind, MsgId, Read, ReceiptKind, Send, SendAck, SendWithMentions,
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

fn create(conn: &mut Connection, members: &[&str]) -> String {
    match ask(
        conn,
        Body::GroupCreate(GroupCreate {
            name: "team".into(),
            members: members.iter().map(|m| (*m).to_owned().into()).collect(),
        }),
    ) {
        Ok(Frame {
            body: Body::GroupInfo(i),
            ..
        }) => i.group.into_owned(),
        other => panic!("expected GROUP_INFO, got {other:?}"),
    }
}

/// A group SEND, with mentions when `mentions` is not empty ("" is @all).
fn send(
    conn: &mut Connection,
    to: Conv<'static>,
    msg: MsgId,
    mentions: &[&str],
) -> Result<SendAck, ErrorCode> {
    let body = if mentions.is_empty() {
        Body::Send(Send {
            to,
            msg_id: msg,
            kind: MessageKind::TEXT,
            body: Cow::Borrowed(b"hello"),
        })
    } else {
        Body::SendWithMentions(SendWithMentions {
            to,
            msg_id: msg,
            kind: MessageKind::TEXT,
            body: Cow::Borrowed(b"hello @you"),
            mentions: mentions.iter().map(|m| (*m).to_owned().into()).collect(),
        })
    };
    match ask(conn, body)? {
        Frame {
            body: Body::SendAck(a),
            ..
        } => Ok(a),
        other => panic!("expected SEND_ACK, got {other:?}"),
    }
}

fn read(conn: &mut Connection, g: &str, seq: u64) {
    ask(
        conn,
        Body::Read(Read {
            conv: Conv::group(g.to_owned()),
            conv_seq: seq,
        }),
    )
    .unwrap();
}

fn receipts(
    conn: &mut Connection,
    g: &str,
    seqs: &[u64],
    readers: bool,
) -> Result<GroupReceiptsPage<'static>, ErrorCode> {
    match ask(
        conn,
        Body::GroupReceipts(GroupReceipts {
            group: g.to_owned().into(),
            seqs: seqs.to_vec(),
            readers,
        }),
    )? {
        Frame {
            body: Body::GroupReceiptsPage(p),
            ..
        } => Ok(p),
        other => panic!("expected GROUP_RECEIPTS_PAGE, got {other:?}"),
    }
}

/// The `mentioned` flag of group `g` in the user's CONTACTS.
fn mentioned(conn: &mut Connection, g: &str) -> bool {
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
        .find(|c| c.conv.id == g)
        .map(|c| c.mentioned)
        .unwrap()
}

fn config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, text).unwrap();
    let path = cfg.to_str().unwrap().to_owned();
    (dir, path)
}

#[test]
fn write_diffusion_receipts_and_mentions() {
    let node = Node::start();
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "laptop");
    let mut carol = node.connect("carol", "phone");
    let mut mallory = node.connect("mallory", "phone");
    let g = create(&mut alice, &["bob", "carol"]);
    let to = || Conv::group(g.clone());

    let m1 = send(&mut alice, to(), id(1, 1), &[]).unwrap().conv_seq;
    // Bob reads it: alice's device gets RECEIPT READ from bob, cumulative to m1.
    read(&mut bob, &g, m1);
    let (f, _) = recv_until(&mut alice, |f| matches!(&f.body, Body::Receipt(_)));
    let Body::Receipt(r) = f.body else {
        unreachable!()
    };
    assert_eq!((r.conv.id.as_ref(), r.user.as_ref()), (g.as_str(), "bob"));
    assert_eq!((r.kind, r.conv_seq), (ReceiptKind::READ, m1));

    // Read by 1 of 2, and who.
    let p = receipts(&mut alice, &g, &[m1], true).unwrap();
    assert_eq!(p.diffusion, Diffusion::WRITE);
    assert_eq!(p.messages.len(), 1);
    assert_eq!((p.messages[0].members, p.messages[0].read), (2, 1));
    assert_eq!(p.messages[0].readers, vec![Cow::Borrowed("bob")]);
    read(&mut carol, &g, m1);
    let p = receipts(&mut bob, &g, &[m1, 999], false).unwrap();
    assert_eq!(p.read_seq, m1);
    assert_eq!(p.messages.len(), 1, "a seq naming no message is left out");
    assert_eq!((p.messages[0].read, p.messages[0].readers.len()), (2, 0));

    // Refusals.
    assert_eq!(
        receipts(&mut mallory, &g, &[m1], false).unwrap_err(),
        ErrorCode::FORBIDDEN
    );
    assert_eq!(
        receipts(&mut alice, "gnothere", &[1], false).unwrap_err(),
        ErrorCode::NOT_FOUND
    );
    assert_eq!(
        receipts(&mut alice, &g, &[1, 2], true).unwrap_err(),
        ErrorCode::INVALID_ARGUMENT
    );
    let many: Vec<u64> = (1..=101).collect();
    assert_eq!(
        receipts(&mut alice, &g, &many, false).unwrap_err(),
        ErrorCode::LIMIT_EXCEEDED
    );

    // Mentions: carol is flagged until she reads; a non-member named is ignored.
    let m2 = send(&mut alice, to(), id(1, 2), &["carol", "mallory"])
        .unwrap()
        .conv_seq;
    assert!(mentioned(&mut carol, &g));
    assert!(!mentioned(&mut bob, &g));
    assert!(!mentioned(&mut alice, &g));
    read(&mut carol, &g, m2);
    assert!(!mentioned(&mut carol, &g));
    // @all from bob: everyone but bob.
    send(&mut bob, to(), id(2, 1), &[""]).unwrap();
    assert!(mentioned(&mut alice, &g));
    assert!(mentioned(&mut carol, &g));
    assert!(!mentioned(&mut bob, &g));

    // Mentions outside a group, malformed ones, and too many: refused, nothing stored.
    assert_eq!(
        send(&mut alice, Conv::direct("bob"), id(1, 3), &["bob"]).unwrap_err(),
        ErrorCode::INVALID_ARGUMENT
    );
    assert_eq!(
        send(&mut alice, to(), id(1, 4), &["bad\u{1}id"]).unwrap_err(),
        ErrorCode::INVALID_ARGUMENT
    );
    let crowd: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let crowd: Vec<&str> = crowd.iter().map(String::as_str).collect();
    assert_eq!(
        send(&mut alice, to(), id(1, 5), &crowd).unwrap_err(),
        ErrorCode::LIMIT_EXCEEDED
    );
    // A non-member cannot mention anyone: the SEND itself is refused.
    assert_eq!(
        send(&mut mallory, to(), id(9, 1), &["alice"]).unwrap_err(),
        ErrorCode::FORBIDDEN
    );
}

#[test]
fn read_diffusion_receipts_and_mentions() {
    let (_cfg_dir, cfg) = config("[limits]\ngroup_write_diffusion_max = 2\n");
    let node = Node::start_with(&["--config", &cfg]);
    let mut alice = node.connect("alice", "phone");
    let mut bob = node.connect("bob", "laptop");
    let mut carol = node.connect("carol", "phone");
    let mut dave = node.connect("dave", "phone");
    let g = create(&mut alice, &["bob", "carol", "dave"]);
    let to = || Conv::group(g.clone());

    let m1 = send(&mut alice, to(), id(1, 1), &["bob"]).unwrap().conv_seq;
    assert!(mentioned(&mut bob, &g));
    assert!(!mentioned(&mut carol, &g));
    let all = send(&mut carol, to(), id(3, 1), &[""]).unwrap().conv_seq;
    assert!(mentioned(&mut dave, &g));
    assert!(mentioned(&mut alice, &g));
    assert!(
        !mentioned(&mut carol, &g),
        "the sender of @all is not flagged"
    );

    // Reading below the @all leaves the flag; reading past it clears it.
    read(&mut dave, &g, m1);
    assert!(mentioned(&mut dave, &g));
    read(&mut dave, &g, all);
    assert!(!mentioned(&mut dave, &g));

    // Receipts: the member's own read position only.
    let p = receipts(&mut dave, &g, &[m1], true).unwrap();
    assert_eq!(p.diffusion, Diffusion::READ);
    assert_eq!(p.read_seq, all);
    assert!(p.messages.is_empty());
    read(&mut bob, &g, all);
    assert!(!mentioned(&mut bob, &g));
}

#[test]
fn the_sdk_marks_read_and_asks_for_receipts() {
    use std::time::{Duration, Instant};
    use tern_tools::{Client, ClientConfig, Event};

    let node = Node::start();
    let client = |user: &str| {
        let mut cfg = ClientConfig::new(
            node.native.clone(),
            node.token(user, Some("phone"), 3600),
            "phone",
        );
        cfg.backoff_min = Duration::from_millis(50);
        cfg.backoff_max = Duration::from_millis(500);
        Client::start(cfg)
    };
    let wait_for = |c: &Client, pick: &dyn Fn(&Event) -> bool| {
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if let Some(e) = c.next_event(Duration::from_millis(50)) {
                if pick(&e) {
                    return Some(e);
                }
            }
        }
        None
    };
    let alice = client("alice");
    let bob = client("bob");
    for c in [&alice, &bob] {
        assert!(wait_for(c, &|e| matches!(e, Event::Synced { .. })).is_some());
    }
    let g = alice
        .group_create("team", &["bob"], WAIT)
        .unwrap()
        .group
        .to_string();
    let ack = alice
        .send_group_wait(&g, MessageKind::TEXT, b"hi".to_vec(), WAIT)
        .unwrap();
    bob.mark_read(Conv::group(g.clone()), ack.conv_seq, WAIT)
        .unwrap();
    let got = wait_for(
        &alice,
        &|e| matches!(e, Event::Receipt(r) if r.user == "bob"),
    );
    let Some(Event::Receipt(r)) = got else {
        panic!("alice gets bob's RECEIPT")
    };
    assert_eq!(r.conv_seq, ack.conv_seq);
    let p = alice
        .group_receipts(&g, &[ack.conv_seq], true, WAIT)
        .unwrap();
    assert_eq!((p.messages[0].members, p.messages[0].read), (1, 1));
    assert_eq!(p.messages[0].readers, vec![Cow::Borrowed("bob")]);
}
