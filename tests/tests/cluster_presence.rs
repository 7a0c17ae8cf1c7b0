//! Presence across nodes (CLUSTER.md, "Presence across nodes"), with real `ternd` processes on
//! 127.0.0.1: alice is served by one node; her friend, her follower, a subscriber and a
//! stranger by the other. Every change of alice's presence reaches the friend, the follower and
//! the subscriber on the other node (and not the stranger); the subscriber gets her current
//! presence at once; an unsubscribed watcher stops hearing.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tern_protocol::PresenceStatus;
use tern_tests::{
    node_id, poll, presence_of, presences_for, user_owned_by, wait_event, Node, WAIT,
};
use tern_tools::{Client, ClientConfig, Event};

const CONVERGE: Duration = Duration::from_secs(10);

/// Two nodes that see each other, with their node-to-node links up and writes taken.
fn two_nodes() -> [Node; 2] {
    let a = Node::start_cluster(&[], &[]);
    let b = Node::start_cluster(&[&a.cluster], &[]);
    let nodes = [a, b];
    let ready = poll(CONVERGE, || {
        nodes
            .iter()
            .all(|n| {
                n.metric("tern_cluster_members_alive") == Some(2)
                    && n.metric("tern_cluster_links_connected") == Some(1)
                    && n.metric("tern_cluster_quorum") == Some(1)
            })
            .then_some(())
    });
    if ready.is_none() {
        for n in &nodes {
            eprintln!("--- {} ---\n{}", n.cluster, n.log_text());
        }
        panic!("two nodes with their links did not come up within {CONVERGE:?}");
    }
    nodes
}

fn client(node: &Node, user: &str, device: &str) -> Client {
    let mut cfg = ClientConfig::new(
        node.native.clone(),
        Node::cluster_token(user, device),
        device,
    );
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    let c = Client::start(cfg);
    let connected = wait_event(&c, |e| matches!(e, Event::Connected { .. }));
    assert!(connected.is_some(), "{user} did not connect");
    c
}

#[test]
fn presence_reaches_friends_followers_and_subscribers_on_another_node() {
    let [a, b] = two_nodes();
    let (a_id, b_id) = (node_id(&a), node_id(&b));
    // alice on node b; everyone who hears of her on node a.
    let alice_id = user_owned_by(&a, &b_id, "alice");
    let [bob_id, carol_id, dave_id, eve_id] =
        ["bob", "carol", "dave", "eve"].map(|p| user_owned_by(&a, &a_id, p));

    let alice = client(&b, &alice_id, "phone");
    let bob = client(&a, &bob_id, "phone");
    let carol = client(&a, &carol_id, "phone");
    let dave = client(&a, &dave_id, "phone");
    let eve = client(&a, &eve_id, "phone");
    bob.friend_request(&alice_id, "hi", WAIT).unwrap();
    alice.friend_accept(&bob_id, WAIT).unwrap();
    carol.follow(&alice_id, WAIT).unwrap();
    // The relation rows reach alice's node through the outbox.
    let rows = poll(WAIT, || {
        (b.metric("tern_cluster_outbox_entries") == Some(0)
            && a.metric("tern_cluster_outbox_entries") == Some(0))
        .then_some(())
    });
    assert!(rows.is_some(), "the relation rows did not settle");

    // A subscriber on the other node gets alice's current presence at once.
    dave.subscribe(&[alice_id.as_str()], WAIT).unwrap();
    assert_eq!(presence_of(&dave, &alice_id).status, PresenceStatus::ONLINE);

    // Her last device closing: OFFLINE with a last-seen time, for the friend, the follower and
    // the subscriber.
    alice.stop();
    for c in [&bob, &carol, &dave] {
        let p = presence_of(c, &alice_id);
        assert_eq!((p.status, p.last_seen > 0), (PresenceStatus::OFFLINE, true));
    }
    let phone = client(&b, &alice_id, "phone");
    for c in [&bob, &carol, &dave] {
        let p = presence_of(c, &alice_id);
        assert_eq!((p.status, p.last_seen), (PresenceStatus::ONLINE, 0));
    }
    phone
        .set_presence(PresenceStatus::BUSY, "in a meeting", WAIT)
        .unwrap();
    for c in [&bob, &carol, &dave] {
        let p = presence_of(c, &alice_id);
        assert_eq!(
            (p.status, p.text.as_ref()),
            (PresenceStatus::BUSY, "in a meeting")
        );
    }
    // A second subscriber on the same node gets what that node heard last, at once.
    let dave2 = client(&a, &dave_id, "laptop");
    dave2.subscribe(&[alice_id.as_str()], WAIT).unwrap();
    assert_eq!(presence_of(&dave2, &alice_id).status, PresenceStatus::BUSY);

    // The stranger heard nothing; unsubscribed watchers stop hearing.
    assert!(presences_for(&eve, Duration::from_millis(100)).is_empty());
    dave.unsubscribe(&[alice_id.as_str()], WAIT).unwrap();
    dave2.unsubscribe(&[alice_id.as_str()], WAIT).unwrap();
    phone.set_presence(PresenceStatus::AWAY, "", WAIT).unwrap();
    assert_eq!(presence_of(&bob, &alice_id).status, PresenceStatus::AWAY);
    assert_eq!(presence_of(&carol, &alice_id).status, PresenceStatus::AWAY);
    assert!(presences_for(&dave, Duration::from_millis(500)).is_empty());
    assert!(presences_for(&dave2, Duration::from_millis(100)).is_empty());
}
