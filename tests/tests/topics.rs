//! Topics against real nodes (SPEC.md, Topics): through the SDK, subscribers on both cores get
//! a publication online, a subscriber that was offline gets it from SYNC once, unsubscribing
//! stops delivery, CONTACTS counts unread from the read position, and TOPIC_LIST and HISTORY
//! answer; every refusal with its code (subscriber and per-user caps, a reserved prefix, the
//! publish rate, invalid ids, READ by a non-subscriber); `tern topic ...` with `--json`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tern_protocol::{
    Body, Contacts, ConvKind, ErrorCode, Frame, Message, MessageKind, MsgId, Read, Send, SubOp,
    TopicSub,
};
use tern_tests::{tern_bin, Node, WAIT};
use tern_tools::topic::topic_conv;
use tern_tools::{Client, ClientConfig, Connection, Event};

fn config(
    node: &Node,
    user: &str,
    device: &str,
    state: Option<std::path::PathBuf>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new(
        node.native.clone(),
        node.token(user, Some(device), 3600),
        device,
    );
    cfg.state_path = state;
    cfg.retransmit_after = Duration::from_millis(500);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    cfg.ack_delay = Duration::from_millis(50);
    cfg
}

/// Starts a client and waits for its first SYNC to end; returns it with its core.
fn start(cfg: ClientConfig) -> (Client, u64) {
    let client = Client::start(cfg);
    let end = Instant::now() + WAIT;
    let mut core = None;
    while Instant::now() < end {
        match client.next_event(Duration::from_millis(50)) {
            Some(Event::Connected { session_id, .. }) => core = Some(session_id >> 32),
            Some(Event::Synced { .. }) if core.is_some() => return (client, core.unwrap()),
            _ => {}
        }
    }
    panic!("no session");
}

/// The topic messages a client hands out within `within` (until `n` arrived).
fn topic_messages(c: &Client, n: usize, within: Duration) -> Vec<Message<'static>> {
    let end = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < end {
        if let Some(Event::Message(m)) = c.next_event(Duration::from_millis(50)) {
            if m.conv.kind == ConvKind::TOPIC {
                out.push(m);
            }
        }
    }
    out
}

fn seqs(msgs: &[Message<'_>]) -> Vec<u64> {
    msgs.iter().map(|m| m.conv_seq).collect()
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

fn code(f: &Frame<'_>) -> ErrorCode {
    match &f.body {
        Body::Error(e) => e.code,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

fn sub(c: &mut Connection, op: SubOp, topic: &str) -> Frame<'static> {
    answer(c.request(
        Body::TopicSub(TopicSub {
            op,
            topic: topic.to_owned().into(),
        }),
        WAIT,
    ))
}

fn post(c: &mut Connection, topic: &str, id: u8, text: &str) -> Frame<'static> {
    answer(c.request(
        Body::Send(Send {
            to: topic_conv(topic),
            msg_id: MsgId([id; 16]),
            kind: MessageKind::TEXT,
            body: text.as_bytes().to_vec().into(),
        }),
        WAIT,
    ))
}

/// The CONTACTS entry of a topic: (unread, read_seq), and the total unread.
fn topic_unread(c: &mut Connection, topic: &str) -> (Option<(u64, u64)>, u64) {
    let f = answer(c.request(
        Body::Contacts(Contacts {
            before_time: 0,
            limit: 0,
        }),
        WAIT,
    ));
    let Body::ContactsPage(p) = f.body else {
        panic!("{f:?}")
    };
    let entry = p
        .entries
        .iter()
        .find(|e| e.conv == topic_conv(topic))
        .map(|e| (e.unread, e.read_seq));
    (entry, p.total_unread)
}

#[test]
fn subscribers_on_both_cores_get_posts_online_and_from_sync_until_they_unsubscribe() {
    let node = Node::start();
    // Subscribers until their connections sit on both cores (accepts are spread by the kernel).
    let mut subs: Vec<(String, Client)> = Vec::new();
    let mut cores = HashSet::new();
    for i in 0..16 {
        let user = format!("sub{i}");
        let (c, core) = start(config(&node, &user, "phone", None));
        c.topic_subscribe("news", WAIT).unwrap();
        cores.insert(core);
        subs.push((user, c));
        if subs.len() >= 4 && cores.len() == 2 {
            break;
        }
    }
    assert_eq!(cores.len(), 2, "no subscriber landed on the second core");
    // A second device of the first subscriber gets it too: the subscription is the user's.
    let (laptop, _) = start(config(&node, &subs[0].0, "laptop", None));
    // A subscriber that goes offline, with its position kept in a state file.
    let dir = tempfile::tempdir().unwrap();
    let late_state = dir.path().join("late.state");
    let (late, _) = start(config(&node, "late", "tablet", Some(late_state.clone())));
    late.topic_subscribe("news", WAIT).unwrap();

    let (editor, _) = start(config(&node, "editor", "desk", None));
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let ack = editor
            .publish_wait("news", MessageKind::TEXT, text.as_bytes().to_vec(), WAIT)
            .unwrap();
        assert_eq!((ack.conv_seq, ack.inbox_seq), (i as u64 + 1, 0));
    }
    for (user, c) in &subs {
        let got = topic_messages(c, 3, WAIT);
        assert_eq!(seqs(&got), vec![1, 2, 3], "{user}");
        assert!(got
            .iter()
            .all(|m| m.inbox_seq == 0 && m.conv == topic_conv("news")));
        assert_eq!(&*got[0].body, b"one");
    }
    assert_eq!(seqs(&topic_messages(&laptop, 3, WAIT)), vec![1, 2, 3]);
    assert_eq!(seqs(&topic_messages(&late, 3, WAIT)), vec![1, 2, 3]);
    // The publisher is not subscribed: nothing for its own devices.
    assert!(topic_messages(&editor, 1, Duration::from_millis(300)).is_empty());

    // Offline, then back: what was published meanwhile comes by SYNC, once.
    late.stop();
    for text in ["four", "five"] {
        editor
            .publish_wait("news", MessageKind::TEXT, text.as_bytes().to_vec(), WAIT)
            .unwrap();
    }
    let late = Client::start(config(&node, "late", "tablet", Some(late_state.clone())));
    // What the device got by PUSH before may come again (SPEC: receivers de-duplicate by
    // conv_seq; the position only moves with SYNC); what it missed comes in order.
    let got = topic_messages(&late, 5, WAIT);
    let got = seqs(&got);
    assert!(got.ends_with(&[4, 5]), "{got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    // Held once synced: another restart hands out nothing again.
    std::thread::sleep(Duration::from_millis(300));
    late.stop();
    let late = Client::start(config(&node, "late", "tablet", Some(late_state)));
    assert!(topic_messages(&late, 1, Duration::from_secs(1)).is_empty());
    late.stop();

    // Unread from the read position; READ moves it.
    let mut raw = node.connect("late", "raw");
    let (entry, total) = topic_unread(&mut raw, "news");
    assert_eq!(entry, Some((5, 0)));
    assert_eq!(total, 5);
    let ok = answer(raw.request(
        Body::Read(Read {
            conv: topic_conv("news"),
            conv_seq: 4,
        }),
        WAIT,
    ));
    assert_eq!(ok.body, Body::Ok);
    assert_eq!(topic_unread(&mut raw, "news"), (Some((1, 4)), 1));

    // TOPIC_LIST and HISTORY (open to a user who is not subscribed).
    let list = subs[0].1.topic_list(WAIT).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].topic, "news");
    assert_eq!(list[0].subscribers, subs.len() as u64 + 1);
    assert_eq!(list[0].last_seq, 5);
    let h = editor.topic_history("news", 0, 0, WAIT).unwrap();
    assert_eq!(seqs(&h.messages), vec![1, 2, 3, 4, 5]);

    // Unsubscribing stops delivery to every device of that user only.
    for (user, c) in &subs[1..3] {
        assert_eq!(seqs(&topic_messages(c, 2, WAIT)), vec![4, 5], "{user}");
    }
    let (gone, gone_client) = &subs[1];
    gone_client.topic_unsubscribe("news", WAIT).unwrap();
    gone_client.topic_unsubscribe("news", WAIT).unwrap();
    editor
        .publish_wait("news", MessageKind::TEXT, b"six".to_vec(), WAIT)
        .unwrap();
    assert_eq!(seqs(&topic_messages(&subs[2].1, 1, WAIT)), vec![6]);
    assert!(
        topic_messages(gone_client, 1, Duration::from_secs(1)).is_empty(),
        "{gone} still gets the topic"
    );
    assert!(gone_client.topic_list(WAIT).unwrap().is_empty());
    for (_, c) in subs {
        c.stop();
    }
    laptop.stop();
    editor.stop();
}

#[test]
fn refusals_carry_their_codes_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(
        &cfg,
        "[topics]\nmax_subscribers = 2\nmax_per_user = 2\nposts_per_sec = 1\npost_burst = 2\n\
         [topics.publishers]\n\"news/\" = [\"newsroom\"]\n",
    )
    .unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut a = node.connect("a", "d");
    let mut b = node.connect("b", "d");
    let mut c = node.connect("c", "d");
    assert_eq!(sub(&mut a, SubOp::ADD, "t1").body, Body::Ok);
    assert_eq!(sub(&mut a, SubOp::ADD, "t1").body, Body::Ok, "again");
    assert_eq!(sub(&mut b, SubOp::ADD, "t1").body, Body::Ok);
    assert_eq!(
        code(&sub(&mut c, SubOp::ADD, "t1")),
        ErrorCode::LIMIT_EXCEEDED
    );
    assert_eq!(sub(&mut a, SubOp::ADD, "t2").body, Body::Ok);
    assert_eq!(
        code(&sub(&mut a, SubOp::ADD, "t3")),
        ErrorCode::LIMIT_EXCEEDED
    );
    assert_eq!(sub(&mut c, SubOp::REMOVE, "never").body, Body::Ok);
    assert_eq!(
        code(&sub(&mut a, SubOp::ADD, "")),
        ErrorCode::INVALID_ARGUMENT
    );
    assert_eq!(
        code(&sub(&mut a, SubOp(7), "t1")),
        ErrorCode::INVALID_ARGUMENT
    );

    // A reserved prefix: its publishers only.
    let mut mallory = node.connect("mallory", "d");
    assert_eq!(
        code(&post(&mut mallory, "news/world", 1, "fake")),
        ErrorCode::FORBIDDEN
    );
    let mut newsroom = node.connect("newsroom", "d");
    let Body::SendAck(ack) = post(&mut newsroom, "news/world", 1, "real").body else {
        panic!("newsroom refused")
    };
    assert_eq!(ack.conv_seq, 1);

    // The publish rate per user: a burst of 2, then RATE_LIMITED, over two connections.
    let mut r1 = node.connect("rater", "one");
    let mut r2 = node.connect("rater", "two");
    assert!(matches!(
        post(&mut r1, "chat", 1, "a").body,
        Body::SendAck(_)
    ));
    assert!(matches!(
        post(&mut r2, "chat", 2, "b").body,
        Body::SendAck(_)
    ));
    assert_eq!(
        code(&post(&mut r1, "chat", 3, "c")),
        ErrorCode::RATE_LIMITED
    );
    assert_eq!(
        code(&post(&mut r2, "chat", 4, "d")),
        ErrorCode::RATE_LIMITED
    );
    // Another user has an allowance of their own.
    assert!(matches!(
        post(&mut c, "chat", 5, "e").body,
        Body::SendAck(_)
    ));

    // READ of a topic by a non-subscriber; nothing refused was stored.
    let read = answer(c.request(
        Body::Read(Read {
            conv: topic_conv("chat"),
            conv_seq: 1,
        }),
        WAIT,
    ));
    assert_eq!(code(&read), ErrorCode::FORBIDDEN);
    let f = answer(c.request(
        Body::History(tern_protocol::History {
            conv: topic_conv("chat"),
            direction: tern_protocol::Direction::BEFORE,
            seq: 0,
            limit: 0,
        }),
        WAIT,
    ));
    let Body::HistoryPage(p) = f.body else {
        panic!("{f:?}")
    };
    let bodies: BTreeSet<Vec<u8>> = p.messages.iter().map(|m| m.body.to_vec()).collect();
    assert_eq!(bodies, [b"a".to_vec(), b"b".to_vec(), b"e".to_vec()].into());
    let f = answer(c.request(
        Body::History(tern_protocol::History {
            conv: topic_conv("news/world"),
            direction: tern_protocol::Direction::BEFORE,
            seq: 0,
            limit: 0,
        }),
        WAIT,
    ));
    let Body::HistoryPage(p) = f.body else {
        panic!("{f:?}")
    };
    assert_eq!(seqs(&p.messages), vec![1]);
}

fn tern_run(node: &Node, token: &str, args: &[&str]) -> Output {
    Command::new(tern_bin())
        .args(["--server", &node.native, "--token", token, "--json"])
        .args(args)
        .output()
        .unwrap()
}

fn tern(node: &Node, token: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = tern_run(node, token, args);
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn cli_subscribes_lists_posts_and_reads_history() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(&cfg, "[topics.publishers]\n\"ops/\" = [\"oncall\"]\n").unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]);
    let alice = node.token("alice", Some("cli"), 3600);
    let bob = node.token("bob", Some("cli"), 3600);
    let sub = tern(&node, &alice, &["topic", "sub", "weather"]);
    assert_eq!(sub[0]["type"], "ok");
    assert_eq!(sub[0]["op"], "subscribed");
    let ack = tern(&node, &bob, &["topic", "post", "weather", "rain at noon"]);
    assert_eq!(ack[0]["type"], "send_ack");
    assert_eq!(ack[0]["conv_seq"], 1);
    let list = tern(&node, &alice, &["topic", "list"]);
    assert_eq!(list[0]["type"], "topic");
    assert_eq!(list[0]["topic"], "weather");
    assert_eq!(list[0]["subscribers"], 1);
    assert_eq!(list[0]["last_seq"], 1);
    assert_eq!(list[1]["type"], "topics_end");
    assert_eq!(list[1]["count"], 1);
    let h = tern(&node, &bob, &["topic", "history", "weather"]);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["conv_seq"], 1);
    assert_eq!(h[0]["sender"], "bob");
    // A refused post: exit status 3 and the code.
    let out = tern_run(&node, &bob, &["topic", "post", "ops/alerts", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("FORBIDDEN"), "{stderr}");
    let unsub = tern(&node, &alice, &["topic", "unsub", "weather"]);
    assert_eq!(unsub[0]["op"], "unsubscribed");
    let list = tern(&node, &alice, &["topic", "list"]);
    assert_eq!(list[0]["type"], "topics_end");
    assert_eq!(list[0]["count"], 0);
}
