//! Mentions from the client side against a real node: `tern send --group G --mention bob
//! --mention-all` and `tern group send --mention`, and the SDK's send queue carrying mentions,
//! retransmissions across a node restart included; the flag shows in each mentioned member's
//! CONTACTS entry until they read.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tern_protocol::{Body, Contacts, Conv, MessageKind};
use tern_tests::{tern_bin, Node, WAIT};
use tern_tools::{Client, ClientConfig, Event};

fn tern_run(node: &Node, token: &str, args: &[&str]) -> Output {
    Command::new(tern_bin())
        .args(["--server", &node.native, "--token", token, "--json"])
        .args(args)
        .output()
        .unwrap()
}

fn tern_ok(node: &Node, token: &str, args: &[&str]) {
    let out = tern_run(node, token, args);
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn client(node: &Node, user: &str) -> Client {
    let mut cfg = ClientConfig::new(
        node.native.clone(),
        node.token(user, Some("phone"), 3600),
        "phone",
    );
    cfg.retransmit_after = Duration::from_millis(300);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(300);
    let c = Client::start(cfg);
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if let Some(Event::Connected { .. }) = c.next_event(Duration::from_millis(50)) {
            return c;
        }
    }
    panic!("{user} did not connect")
}

/// Whether `c`'s CONTACTS entry for group `g` is flagged as mentioning them.
fn mentioned(c: &Client, g: &str) -> bool {
    let f = c
        .request(
            Body::Contacts(Contacts {
                before_time: 0,
                limit: 0,
            }),
            WAIT,
        )
        .unwrap();
    let Body::ContactsPage(p) = f.body else {
        panic!("{f:?}")
    };
    p.entries
        .iter()
        .find(|e| e.conv.id == g)
        .unwrap_or_else(|| panic!("no contact for {g}"))
        .mentioned
}

/// Reads the group up to its newest message (clearing the flag).
fn read_all(c: &Client, g: &str) {
    let page = c.group_history(g, 0, 1, WAIT).unwrap();
    let last = page.messages.last().unwrap().conv_seq;
    c.mark_read(Conv::group(g.to_owned()), last, WAIT).unwrap();
    assert!(!mentioned(c, g));
}

#[test]
fn cli_and_sdk_send_mentions() {
    let mut node = Node::start();
    let alice = client(&node, "alice");
    let bob = client(&node, "bob");
    let carol = client(&node, "carol");
    let g = alice
        .group_create("hikers", &["bob", "carol"], WAIT)
        .unwrap()
        .group
        .to_string();
    let a = node.token("alice", None, 3600);

    // `tern send --group --mention`: bob is flagged, carol is not.
    tern_ok(
        &node,
        &a,
        &["send", "--group", &g, "--mention", "bob", "hi @bob"],
    );
    assert!(mentioned(&bob, &g));
    assert!(!mentioned(&carol, &g));
    read_all(&bob, &g);

    // --mention-all flags everyone.
    tern_ok(
        &node,
        &a,
        &["send", "--group", &g, "--mention-all", "hi @all"],
    );
    assert!(mentioned(&bob, &g) && mentioned(&carol, &g));
    read_all(&bob, &g);
    read_all(&carol, &g);

    // `tern group send --mention` too; --mention without --group is refused by the CLI.
    tern_ok(
        &node,
        &a,
        &["group", "send", &g, "hi @carol", "--mention", "carol"],
    );
    assert!(mentioned(&carol, &g) && !mentioned(&bob, &g));
    read_all(&carol, &g);
    let out = tern_run(&node, &a, &["send", "--to", "bob", "--mention", "bob", "x"]);
    assert!(!out.status.success());

    // The SDK: a mention queued while the node is down is sent once it is back, mentions
    // included.
    node.kill();
    let pending = alice
        .send_group_mentioning(
            &g,
            MessageKind::TEXT,
            b"back @bob".to_vec(),
            &["bob"],
            false,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    node.restart();
    let end = Instant::now() + WAIT;
    let mut acked = false;
    while !acked && Instant::now() < end {
        if let Some(Event::SendAcked { local_seq, .. }) =
            alice.next_event(Duration::from_millis(50))
        {
            acked = local_seq == pending.local_seq;
        }
    }
    assert!(acked, "the queued mention was never acknowledged");
    // bob and carol reconnect by themselves.
    for c in [&bob, &carol] {
        let end = Instant::now() + WAIT;
        while !matches!(
            c.next_event(Duration::from_millis(50)),
            Some(Event::Connected { .. })
        ) {
            assert!(Instant::now() < end, "no reconnect");
        }
    }
    assert!(mentioned(&bob, &g));
    assert!(!mentioned(&carol, &g));
    let ack = alice
        .send_group_mentioning_wait(&g, MessageKind::TEXT, b"@all".to_vec(), &[], true, WAIT)
        .unwrap();
    assert!(ack.conv_seq > 0);
    assert!(mentioned(&carol, &g));
    for c in [alice, bob, carol] {
        c.stop();
    }
}

#[test]
fn a_mention_survives_the_group_shrinking_to_write_diffusion() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    // Up to 2 members: write diffusion; 3: read diffusion.
    std::fs::write(&cfg, "[limits]\ngroup_write_diffusion_max = 2\n").unwrap();
    let node = Node::start_with(&["--config", cfg.to_str().unwrap()]);
    let alice = client(&node, "alice");
    let bob = client(&node, "bob");
    let g = alice
        .group_create("trio", &["bob", "carol"], WAIT)
        .unwrap()
        .group
        .to_string();
    alice
        .send_group_mentioning_wait(
            &g,
            MessageKind::TEXT,
            b"hi bob".to_vec(),
            &["bob"],
            false,
            WAIT,
        )
        .unwrap();
    assert!(mentioned(&bob, &g), "read diffusion: flagged by the mark");
    // carol leaves the group's size at 2: write diffusion, the mark becomes bob's flag.
    alice.group_remove(&g, &["carol"], WAIT).unwrap();
    assert!(mentioned(&bob, &g), "the flag survives the switch");
    read_all(&bob, &g);
}
