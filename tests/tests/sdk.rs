//! The client SDK against a real node: queueing, retransmission across a crash, reconnect with
//! resync, de-duplication, and the persisted inbox position.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tern_protocol::{Message, MessageKind};
use tern_tests::{Node, WAIT};
use tern_tools::{Client, ClientConfig, DeviceState, Event};

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

/// Collects message events until `n` distinct bodies arrived (bounded by `within`).
fn collect(client: &Client, n: usize, within: Duration) -> Vec<Message<'static>> {
    let end = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < end {
        if let Some(Event::Message(m)) = client.next_event(Duration::from_millis(50)) {
            out.push(m);
        }
    }
    out
}

#[test]
fn sdk_survives_a_node_crash_without_loss_or_duplicates() {
    let mut node = Node::start();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("bob-phone.json");
    let bob = Client::start(config(&node, "bob", "phone", Some(state.clone())));
    let alice = Client::start(config(&node, "alice", "phone", None));

    for i in 0..5 {
        alice
            .send_wait(
                "bob",
                MessageKind::TEXT,
                format!("before {i}").into_bytes(),
                WAIT,
            )
            .unwrap();
    }
    let got = collect(&bob, 5, WAIT);
    assert_eq!(got.len(), 5);

    // Crash the node; alice keeps sending into her queue meanwhile.
    node.kill();
    let pending: Vec<_> = (0..5)
        .map(|i| {
            alice
                .send("bob", MessageKind::TEXT, format!("during {i}").into_bytes())
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    node.restart();
    // Both clients reconnect on their own; alice's queue is retransmitted, bob resyncs.
    let mut acked = BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(20);
    while acked.len() < pending.len() && Instant::now() < end {
        if let Some(Event::SendAcked { local_seq, .. }) =
            alice.next_event(Duration::from_millis(50))
        {
            if pending.iter().any(|p| p.local_seq == local_seq) {
                acked.insert(local_seq);
            }
        }
    }
    assert_eq!(
        acked.len(),
        pending.len(),
        "every queued message acknowledged after the restart"
    );
    let got = collect(&bob, 5, Duration::from_secs(20));
    let texts: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(
        texts,
        (0..5).map(|i| format!("during {i}")).collect::<Vec<_>>()
    );
    // Nothing more arrives: no duplicates.
    assert!(collect(&bob, 1, Duration::from_millis(800)).is_empty());
    bob.stop();
    alice.stop();
    // The position is saved: 10 messages in bob's inbox.
    assert_eq!(DeviceState::load(&state).unwrap().inbox_seq, 10);

    // A restarted client resumes from the saved position: nothing is handed out again.
    let bob = Client::start(config(&node, "bob", "phone", Some(state.clone())));
    let end = Instant::now() + WAIT;
    let mut synced = false;
    while !synced && Instant::now() < end {
        match bob.next_event(Duration::from_millis(50)) {
            Some(Event::Synced { inbox_seq }) => {
                assert_eq!(inbox_seq, 10);
                synced = true;
            }
            Some(Event::Message(m)) => panic!("message handed out twice: {m:?}"),
            _ => {}
        }
    }
    assert!(synced);
}

#[test]
fn sdk_reports_a_bad_token_as_fatal() {
    let node = Node::start();
    let mut cfg = config(&node, "alice", "phone", None);
    cfg.token = node.token("alice", Some("other-device"), 3600);
    let client = Client::start(cfg);
    let end = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < end, "no Fatal event");
        if let Some(Event::Fatal { code, .. }) = client.next_event(Duration::from_millis(50)) {
            assert_eq!(code, tern_protocol::ErrorCode::AUTH_INVALID);
            break;
        }
    }
}
