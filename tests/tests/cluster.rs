//! Cluster tests with real `ternd` processes on 127.0.0.1 (issue 9): three nodes form a
//! cluster over authenticated gossip, a process with another secret cannot join, HELLO at a
//! node that does not own the user is redirected and the SDK follows, a message to a user of
//! another node is delivered over the node-to-node links (also across SIGKILLs, through the
//! durable outbox), and a node
//! killed with SIGKILL is declared down within 2 s and its slots move to the survivors (and back
//! when it restarts), and one stopped with SIGTERM leaves at once.
//!
//! The tests run one at a time (`serial`): each starts three nodes, and on a 2-CPU machine two
//! clusters at once would measure the scheduler rather than failure detection.

use std::time::{Duration, Instant};

use tern_protocol::{Body, Conv, ErrorCode, MessageKind, MsgId, Send, Sync};
use tern_tests::{expect_push, node_id, poll, send_text, serial, user_owned_by, Node, WAIT};
use tern_tools::{Connection, ConnectionError, HelloParams};

/// Membership must converge within this (a join is a few gossip rounds of 150-300 ms).
const CONVERGE: Duration = Duration::from_secs(10);

/// Issue 9: a SIGKILLed node is declared down within 2 s. The assertion allows 0.5 s more for
/// what the measurement adds on a busy 2-CPU test machine: the 20 ms polling of `/metrics` on
/// both survivors and scheduling delays of the node processes. The figure is printed.
const DETECTION_LIMIT: Duration = Duration::from_millis(2_500);

/// Three nodes, B and C joining through A; returns once every node sees three live members.
fn three_nodes() -> [Node; 3] {
    let a = Node::start_cluster(&[], &[]);
    let b = Node::start_cluster(&[&a.cluster], &[]);
    let c = Node::start_cluster(&[&a.cluster, &b.cluster], &[]);
    let nodes = [a, b, c];
    let formed = poll(CONVERGE, || {
        nodes
            .iter()
            .all(|n| n.metric("tern_cluster_members_alive") == Some(3))
            .then_some(())
    });
    if formed.is_none() {
        for n in &nodes {
            eprintln!("--- {} ---\n{}", n.cluster, n.log_text());
        }
        panic!("three nodes did not see each other within {CONVERGE:?}");
    }
    // Gossip converged on one view: one epoch everywhere.
    let epochs: Vec<String> = nodes
        .iter()
        .map(|n| n.admin_json("/cluster/members")["epoch"].to_string())
        .collect();
    // ... and takes writes: quorum, and each node has recorded which slots it holds.
    let settled = poll(CONVERGE, || {
        let e: Vec<String> = nodes
            .iter()
            .map(|n| n.admin_json("/cluster/members")["epoch"].to_string())
            .collect();
        (e.windows(2).all(|w| w[0] == w[1])
            && nodes
                .iter()
                .all(|n| n.metric("tern_cluster_quorum") == Some(1)))
        .then_some(())
    });
    assert!(settled.is_some(), "epochs differ or no quorum: {epochs:?}");
    nodes
}

fn hello(user: &str, device: &str) -> HelloParams {
    HelloParams::new(Node::cluster_token(user, device), device)
}

#[test]
fn three_nodes_form_a_cluster_and_a_process_without_the_secret_cannot_join() {
    let _serial = serial();
    let started = Instant::now();
    let nodes = three_nodes();
    eprintln!("three nodes formed a cluster in {:?}", started.elapsed());
    let ids: Vec<String> = nodes.iter().map(node_id).collect();
    for n in &nodes {
        let view = n.admin_json("/cluster/members");
        let mut seen: Vec<String> = view["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        seen.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(seen, want);
        // Every slot has one owner: the three nodes' shares add up to all of them.
        let slots: u64 = view["members"]
            .as_array()
            .map(|m| m.iter().map(|m| m["slots"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0);
        assert_eq!(slots, 16_384);
        // Each member advertises where clients reach it.
        for m in view["members"].as_array().into_iter().flatten() {
            assert!(m["client_addrs"]["native"].is_string(), "{m}");
        }
    }
    let owned: u64 = nodes
        .iter()
        .map(|n| n.metric("tern_cluster_slots_owned").unwrap_or(0))
        .sum();
    assert_eq!(owned, 16_384);
    assert!(
        nodes[0].log_text().contains("INSECURE"),
        "the dev secret is announced loudly"
    );

    // An outsider with a secret of its own joins through A and B.
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "not-the-cluster-secret-0123456789\n").expect("write secret");
    let secret = secret.to_string_lossy().into_owned();
    let outsider = Node::start_cluster(
        &[&nodes[0].cluster, &nodes[1].cluster],
        &["--cluster-secret-file", &secret],
    );
    assert!(!outsider.log_text().contains("INSECURE"));
    // Its announces reach A (and are counted as unauthenticated) ...
    let dropped = poll(WAIT, || {
        nodes[0]
            .metric("tern_cluster_gossip_unauthenticated_total")
            .filter(|d| *d > 0)
    });
    assert!(dropped.is_some(), "A never heard the outsider");
    // ... for 3 s (more than a rejoin period and a full probe round), during which nothing
    // changes: the cluster keeps 3 members, the outsider sees no one.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for n in &nodes {
            assert_eq!(n.metric("tern_cluster_members_alive"), Some(3));
        }
        assert_eq!(outsider.metric("tern_cluster_members_alive"), Some(1));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        outsider.admin_json("/cluster/members")["members"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn hello_at_a_non_owner_is_redirected_and_remote_messages_cross_the_link() {
    let _serial = serial();
    let [a, b, c] = three_nodes();
    let (id_a, id_b, id_c) = (node_id(&a), node_id(&b), node_id(&c));

    // The owner table is the same on every node.
    let bob = user_owned_by(&a, &id_b, "bob");
    for n in [&b, &c] {
        assert_eq!(
            n.admin_json(&format!("/cluster/owner?user={bob}"))["node"],
            id_b.as_str()
        );
    }

    // A plain HELLO at A gets REDIRECT with B's addresses, per transport.
    let raw = Connection::connect_rung(
        &tern_tools::Rung::parse(&a.native).expect("rung"),
        &tern_tools::TransportOptions::default(),
        &hello(&bob, "phone"),
        WAIT,
    );
    match raw {
        Err(ConnectionError::Redirected { addrs, .. }) => {
            let find = |t: tern_protocol::Transport| {
                addrs.iter().find(|(x, _)| *x == t).map(|(_, a)| a.as_str())
            };
            assert_eq!(
                find(tern_protocol::Transport::NATIVE),
                Some(b.native.as_str())
            );
            assert_eq!(find(tern_protocol::Transport::TLS), Some(b.tls.as_str()));
            assert_eq!(
                find(tern_protocol::Transport::WEBSOCKET),
                Some(b.http.as_str())
            );
            assert_eq!(
                find(tern_protocol::Transport::HTTP_TUNNEL),
                Some(b.http.as_str())
            );
        }
        other => panic!("expected REDIRECT, got {other:?}"),
    }

    // The SDK follows it and ends WELCOMEd on B.
    let mut bob_phone = Connection::connect(&a.native, &hello(&bob, "phone"), WAIT)
        .unwrap_or_else(|e| panic!("bob via A: {e}"));
    let welcome = bob_phone.welcome().expect("welcome").clone();
    assert_eq!(welcome.node, id_b.as_str());
    assert_eq!(bob_phone.rung().authority(), b.native);
    // Over WebSocket too: the redirect keeps the client's transport.
    let bob_ws = Connection::connect(
        &format!("ws://{}/tern/ws", c.http),
        &hello(&bob, "laptop"),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("bob via C's WebSocket: {e}"));
    assert_eq!(bob_ws.welcome().expect("welcome").node, id_b.as_str());
    assert_eq!(bob_ws.rung().authority(), b.http);
    drop(bob_ws);

    // Two users of B talk as on a single node.
    let ann = user_owned_by(&a, &id_b, "ann");
    let mut ann_phone = Connection::connect(&b.native, &hello(&ann, "phone"), WAIT)
        .unwrap_or_else(|e| panic!("ann at B: {e}"));
    let local = MsgId([1; 16]);
    send_text(&mut bob_phone, &ann, local, "hello from B to B");
    expect_push(&mut ann_phone, local, "hello from B to B");

    // A message to a user another node serves crosses the node-to-node link: SEND_ACK, PUSH
    // at the other node, and the entry in both inboxes.
    links_up(&[&a, &b, &c]);
    let carl = user_owned_by(&a, &id_c, "carl");
    let mut carl_phone = Connection::connect(&c.native, &hello(&carl, "phone"), WAIT)
        .unwrap_or_else(|e| panic!("carl at C: {e}"));
    let remote = MsgId([2; 16]);
    send_text(&mut bob_phone, &carl, remote, "to another node");
    expect_push(&mut carl_phone, remote, "to another node");
    let mine = sync_all(&mut bob_phone);
    assert!(mine.iter().any(|m| m.msg_id == remote));
    assert!(mine.iter().any(|m| m.msg_id == local));
    assert!(sync_all(&mut carl_phone).iter().any(|m| m.msg_id == remote));

    // A request the links do not carry (joining a room placed on another node): UNAVAILABLE,
    // nothing stored, the connection stays.
    let answer = bob_phone.request(
        Body::RoomJoin(tern_protocol::RoomJoin {
            room: carl.clone().into(),
            recent: 0,
        }),
        WAIT,
    );
    match answer {
        Err(ConnectionError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::UNAVAILABLE);
            assert!(!code.closes_connection());
            assert!(message.contains(&id_c), "{message}");
        }
        other => panic!("expected ERROR UNAVAILABLE, got {other:?}"),
    }
    let page = bob_phone
        .request(
            Body::Sync(Sync {
                after_inbox_seq: 0,
                limit: 100,
            }),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("SYNC after the refusal: {e}"));
    assert!(matches!(page.body, Body::SyncPage(_)));
    let _ = id_a;
}

#[test]
fn a_sigkilled_node_is_declared_down_within_two_seconds_gets_its_slots_back_on_restart_and_a_sigtermed_one_leaves_at_once(
) {
    let _serial = serial();
    let [a, b, mut c] = three_nodes();
    let id_c = node_id(&c);
    let before = a.admin_json("/cluster/members")["epoch"].to_string();
    let orphan = user_owned_by(&a, &id_c, "olga");

    let killed = Instant::now();
    c.kill();
    let mut seen_a = None;
    let mut seen_b = None;
    let detected = poll(WAIT, || {
        if seen_a.is_none() && a.metric("tern_cluster_members_alive") == Some(2) {
            seen_a = Some(killed.elapsed());
        }
        if seen_b.is_none() && b.metric("tern_cluster_members_alive") == Some(2) {
            seen_b = Some(killed.elapsed());
        }
        seen_a.zip(seen_b)
    });
    let Some((ta, tb)) = detected else {
        panic!("C not declared down within {WAIT:?} (A: {seen_a:?}, B: {seen_b:?})");
    };
    eprintln!("SIGKILL -> declared down: A after {ta:?}, B after {tb:?}");
    assert!(
        ta < DETECTION_LIMIT && tb < DETECTION_LIMIT,
        "detection took A {ta:?}, B {tb:?}"
    );

    // The survivors agree on a new epoch and share every slot; C's users now belong to them.
    let after = poll(CONVERGE, || {
        let ea = a.admin_json("/cluster/members")["epoch"].to_string();
        let eb = b.admin_json("/cluster/members")["epoch"].to_string();
        (ea == eb && ea != before).then_some(ea)
    });
    assert!(after.is_some(), "no common new epoch");
    let owned = a.metric("tern_cluster_slots_owned").unwrap_or(0)
        + b.metric("tern_cluster_slots_owned").unwrap_or(0);
    assert_eq!(owned, 16_384);
    let new_owner = a.admin_json(&format!("/cluster/owner?user={orphan}"))["node"].clone();
    assert_ne!(new_owner, id_c.as_str());
    // Olga reconnects through A and is served by her new owner.
    let olga = Connection::connect(&a.native, &hello(&orphan, "phone"), WAIT)
        .unwrap_or_else(|e| panic!("olga after C died: {e}"));
    assert_eq!(
        olga.welcome().expect("welcome").node,
        new_owner.as_str().unwrap_or_default()
    );
    drop(olga);

    // C restarts (same data dir, a higher generation): it rejoins, and since the ring places
    // slots by node id, Olga's slot goes back to it.
    let generation = |n: &Node, id: &str| {
        n.admin_json("/cluster/members")["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == id))
            .and_then(|m| m["generation"].as_u64())
    };
    let old_generation = generation(&a, &id_c);
    c.restart();
    assert_eq!(node_id(&c), id_c, "the node id is kept in the data dir");
    let back = poll(CONVERGE, || {
        [&a, &b, &c]
            .iter()
            .all(|n| n.metric("tern_cluster_members_alive") == Some(3))
            .then_some(())
    });
    assert!(back.is_some(), "C did not rejoin");
    assert!(generation(&a, &id_c) > old_generation.or(Some(0)));
    let home = poll(CONVERGE, || {
        let o = a.admin_json(&format!("/cluster/owner?user={orphan}"))["node"].clone();
        (o == id_c.as_str()).then_some(o)
    });
    assert!(home.is_some(), "Olga's slot did not return to C");

    // A node stopped with SIGTERM says goodbye: A does not wait for failure detection.
    let stopping = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &b.pid().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let left = poll(WAIT, || {
        (a.metric("tern_cluster_members_alive") == Some(2)).then(|| stopping.elapsed())
    })
    .expect("B never left A's view");
    eprintln!("SIGTERM -> left A's view after {left:?}");
    assert!(
        left < Duration::from_millis(700),
        "B's leave took {left:?}: as long as failure detection"
    );
    let owned = a.metric("tern_cluster_slots_owned").unwrap_or(0)
        + poll(CONVERGE, || {
            c.metric("tern_cluster_members_alive")
                .filter(|n| *n == 2)
                .and_then(|_| c.metric("tern_cluster_slots_owned"))
        })
        .unwrap_or(0);
    assert_eq!(owned, 16_384);
}

#[test]
fn a_node_without_cluster_serves_every_slot() {
    let _serial = serial();
    let node = Node::start();
    assert!(node.cluster.is_empty(), "no cluster address in ports.json");
    assert_eq!(node.metric("tern_cluster_members_alive"), Some(1));
    assert_eq!(node.metric("tern_cluster_slots_owned"), Some(16_384));
    assert_eq!(node.metric("tern_cluster_epoch"), Some(1));
    let (status, body) = node.admin_get("/cluster/members");
    assert!(status.contains("404"), "{status}: {body}");
    assert!(body.contains("--cluster"), "{body}");
    // Any user is served here, as before clusters existed.
    let mut c = node.connect("zoe", "phone");
    assert_eq!(
        c.welcome().map(|w| w.user.to_string()),
        Some("zoe".to_owned())
    );
    let _ = c
        .request(
            Body::Sync(Sync {
                after_inbox_seq: 0,
                limit: 1,
            }),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("SYNC: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Cross-node delivery (node-to-node links and the durable outbox)

/// Every node's links to the two others are up.
fn links_up(nodes: &[&Node]) {
    let up = poll(CONVERGE, || {
        nodes
            .iter()
            .all(|n| n.metric("tern_cluster_links_connected") == Some(nodes.len() as u64 - 1))
            .then_some(())
    });
    assert!(up.is_some(), "node-to-node links did not come up");
}

/// A message id that names its sender, recipient and round.
fn msg_id(from: usize, to: usize, round: usize) -> MsgId {
    let mut id = [0u8; 16];
    id[0] = 0xC1;
    id[1] = from as u8;
    id[2] = to as u8;
    id[3..11].copy_from_slice(&(round as u64).to_be_bytes());
    MsgId(id)
}

/// Every entry of the connection's user's inbox, paged with SYNC from the start.
fn sync_all(conn: &mut Connection) -> Vec<tern_protocol::Message<'static>> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..1_000 {
        let page = conn
            .request(
                Body::Sync(Sync {
                    after_inbox_seq: after,
                    limit: 500,
                }),
                WAIT,
            )
            .unwrap_or_else(|e| panic!("SYNC: {e}"));
        let Body::SyncPage(p) = page.body else {
            panic!("expected SYNC_PAGE, got {page:?}")
        };
        if let Some(last) = p.messages.last() {
            after = last.inbox_seq;
        }
        let more = p.more;
        out.extend(p.messages);
        if !more {
            return out;
        }
    }
    panic!("SYNC never reached the end of the inbox");
}

/// A SEND retransmitted (same msgid) while the answer is a transient refusal; the SEND_ACK.
fn send_acked(conn: &mut Connection, to: &str, id: MsgId, text: &str) -> tern_protocol::SendAck {
    for _ in 0..50 {
        let answer = conn.request(
            Body::Send(Send {
                to: Conv::direct(to.to_owned()),
                msg_id: id,
                kind: MessageKind::TEXT,
                body: text.as_bytes().to_vec().into(),
            }),
            WAIT,
        );
        match answer {
            Ok(tern_protocol::Frame {
                body: Body::SendAck(a),
                ..
            }) => {
                assert_eq!(a.msg_id, id);
                return a;
            }
            Err(ConnectionError::Server { code, .. }) if !code.closes_connection() => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => panic!("{text}: expected SEND_ACK, got {other:?}"),
        }
    }
    panic!("{text}: no SEND_ACK after 50 transmissions");
}

/// Issue 9: users of all three nodes write to each other (every pair, both directions, one
/// device sending, another online). Every acknowledged message is in both users' inboxes
/// exactly once, with the conversation sequence its SEND_ACK named; each conversation reads
/// the same on both sides when ordered by `conv_seq` (SPEC §9 rule 5), each sender's messages
/// in the order they were sent; every online device got each of its user's entries as exactly
/// one PUSH; and every outbox empties.
#[test]
fn users_of_three_nodes_exchange_messages_none_lost_none_duplicated_in_order() {
    let _serial = serial();
    let started = Instant::now();
    let nodes = three_nodes();
    links_up(&[&nodes[0], &nodes[1], &nodes[2]]);
    let ids: Vec<String> = nodes.iter().map(node_id).collect();
    // Two users per node.
    let users: Vec<String> = (0..6)
        .map(|i| user_owned_by(&nodes[0], &ids[i / 2], &format!("x{i}")))
        .collect();
    let node_of = |u: usize| &nodes[u / 2];
    // A second device of every user stays online and collects PUSHes.
    let mut tabs: Vec<Connection> = (0..6)
        .map(|u| {
            Connection::connect(&node_of(u).native, &hello(&users[u], "tab"), WAIT)
                .unwrap_or_else(|e| panic!("{} tab: {e}", users[u]))
        })
        .collect();
    const ROUNDS: usize = 12;
    let acks: Vec<Vec<(usize, usize, tern_protocol::SendAck)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|u| {
                let users = &users;
                let addr = node_of(u).native.clone();
                s.spawn(move || {
                    let mut phone = Connection::connect(&addr, &hello(&users[u], "phone"), WAIT)
                        .unwrap_or_else(|e| panic!("{} phone: {e}", users[u]));
                    let mut acks = Vec::new();
                    for round in 0..ROUNDS {
                        for v in (0..6).filter(|v| *v != u) {
                            let text = format!("{u}->{v} #{round}");
                            let a = send_acked(&mut phone, &users[v], msg_id(u, v, round), &text);
                            acks.push((v, round, a));
                        }
                    }
                    acks
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .collect()
    });
    let sent = 6 * 5 * ROUNDS;
    eprintln!(
        "{sent} messages between users of 3 nodes acknowledged after {:?}",
        started.elapsed()
    );

    // Inboxes, read by a fresh device of each user.
    let inboxes: Vec<Vec<tern_protocol::Message<'static>>> = (0..6)
        .map(|u| {
            let mut c = Connection::connect(&node_of(u).native, &hello(&users[u], "check"), WAIT)
                .unwrap_or_else(|e| panic!("{} check: {e}", users[u]));
            // Outbox entries may still be on their way: wait until the inbox is complete.
            let want = 2 * 5 * ROUNDS;
            poll(CONVERGE, || {
                let inbox = sync_all(&mut c);
                (inbox.len() >= want).then_some(inbox)
            })
            .unwrap_or_else(|| panic!("{}'s inbox never reached {want} entries", users[u]))
        })
        .collect();
    for (u, inbox) in inboxes.iter().enumerate() {
        assert_eq!(
            inbox.len(),
            2 * 5 * ROUNDS,
            "{}: {} entries",
            users[u],
            inbox.len()
        );
        let mut seen = std::collections::HashSet::new();
        for m in inbox {
            assert!(
                seen.insert((m.conv.id.to_string(), m.conv_seq)),
                "{} holds ({}, {}) twice",
                users[u],
                m.conv.id,
                m.conv_seq
            );
        }
        let ids: std::collections::HashSet<MsgId> = inbox.iter().map(|m| m.msg_id).collect();
        assert_eq!(ids.len(), inbox.len(), "{}: a msgid twice", users[u]);
    }
    // Every acknowledged message is in both inboxes with its acknowledged conv_seq.
    for (u, list) in acks.iter().enumerate() {
        for (v, round, a) in list {
            for holder in [u, *v] {
                let m = inboxes[holder]
                    .iter()
                    .find(|m| m.msg_id == a.msg_id)
                    .unwrap_or_else(|| {
                        panic!("{u}->{v} #{round} missing from {}'s inbox", users[holder])
                    });
                assert_eq!(m.conv_seq, a.conv_seq, "{u}->{v} #{round} at {holder}");
                assert_eq!(m.body.as_ref(), format!("{u}->{v} #{round}").as_bytes());
            }
        }
    }
    // Each conversation, ordered by conv_seq, reads the same on both sides, and each sender's
    // messages are in sending order.
    for u in 0..6 {
        for v in (u + 1)..6 {
            let view = |holder: usize, peer: usize| {
                let mut c: Vec<(u64, MsgId)> = inboxes[holder]
                    .iter()
                    .filter(|m| m.conv.id == users[peer].as_str())
                    .map(|m| (m.conv_seq, m.msg_id))
                    .collect();
                c.sort();
                c
            };
            let (a, b) = (view(u, v), view(v, u));
            assert_eq!(a.len(), 2 * ROUNDS);
            assert_eq!(a, b, "conversation {u}/{v} differs between its users");
            for from in [u, v] {
                let rounds: Vec<u64> = a
                    .iter()
                    .filter(|(_, id)| id.0[1] == from as u8)
                    .map(|(_, id)| u64::from_be_bytes(id.0[3..11].try_into().expect("8 bytes")))
                    .collect();
                assert!(
                    rounds.windows(2).all(|w| w[0] < w[1]),
                    "conversation {u}/{v}: {from}'s messages out of order: {rounds:?}"
                );
            }
        }
    }
    // Every online device got each of its user's entries as one PUSH.
    for (u, tab) in tabs.iter_mut().enumerate() {
        let mut pushes = std::collections::HashMap::new();
        let deadline = Instant::now() + CONVERGE;
        while pushes.len() < 2 * 5 * ROUNDS && Instant::now() < deadline {
            match tab.recv(Duration::from_millis(200)) {
                Ok(Some(f)) => {
                    if let Body::Push(m) = f.body {
                        let n = pushes
                            .entry((m.conv.id.to_string(), m.conv_seq))
                            .or_insert(0);
                        *n += 1;
                    }
                }
                Ok(None) => {}
                Err(e) => panic!("{} tab: {e}", users[u]),
            }
        }
        // Anything still in flight would show up now.
        while let Ok(Some(f)) = tab.recv(Duration::from_millis(300)) {
            if let Body::Push(m) = f.body {
                *pushes
                    .entry((m.conv.id.to_string(), m.conv_seq))
                    .or_insert(0) += 1;
            }
        }
        assert_eq!(pushes.len(), 2 * 5 * ROUNDS, "{}'s tab", users[u]);
        assert!(
            pushes.values().all(|n| *n == 1),
            "{}'s tab got a PUSH twice",
            users[u]
        );
    }
    let drained = poll(CONVERGE, || {
        nodes
            .iter()
            .all(|n| n.metric("tern_cluster_outbox_entries") == Some(0))
            .then_some(())
    });
    assert!(drained.is_some(), "an outbox did not empty");
    let forwarded: u64 = nodes
        .iter()
        .map(|n| n.metric("tern_cluster_forwarded_total").unwrap_or(0))
        .sum();
    let applied: u64 = nodes
        .iter()
        .map(|n| n.metric("tern_cluster_outbox_applied_total").unwrap_or(0))
        .sum();
    eprintln!(
        "forwarded SENDs: {forwarded}, outbox entries applied: {applied}, total {:?}",
        started.elapsed()
    );
    assert!(forwarded > 0 && applied > 0);
    let (_, metrics) = nodes[0].admin_get("/metrics");
    assert!(
        metrics.contains("tern_cluster_link_queue_depth{peer="),
        "{metrics}"
    );
}

/// Issue 9: the recipient's node is SIGKILLed, the sender's node acknowledges messages for it
/// (durable in its outbox), is SIGKILLed too, and both restart: every message reaches the
/// recipient's inbox exactly once, in order, and the outbox empties.
#[test]
fn outbox_entries_survive_sigkill_of_both_nodes_and_are_delivered_once() {
    let _serial = serial();
    let started = Instant::now();
    let [a, mut b, mut c] = three_nodes();
    links_up(&[&a, &b, &c]);
    let (id_b, id_c) = (node_id(&b), node_id(&c));
    // Alice on B writes to bob on C; "alice" < "bob" in every pair of names used here, so the
    // conversation (and its sequence) is B's and bob's half goes through B's outbox.
    let alice = user_owned_by(&a, &id_b, "alice");
    let bob = user_owned_by(&a, &id_c, "bob");
    assert!(alice < bob);
    let mut alice_phone = Connection::connect(&b.native, &hello(&alice, "phone"), WAIT)
        .unwrap_or_else(|e| panic!("alice at B: {e}"));
    let mut bob_phone = Connection::connect(&c.native, &hello(&bob, "phone"), WAIT)
        .unwrap_or_else(|e| panic!("bob at C: {e}"));
    let mut acked = Vec::new();
    for i in 0..10 {
        let id = msg_id(1, 2, i);
        acked.push(send_acked(&mut alice_phone, &bob, id, &format!("live {i}")));
        expect_push(&mut bob_phone, id, &format!("live {i}"));
    }
    drop(bob_phone);

    c.kill();
    for i in 10..40 {
        acked.push(send_acked(
            &mut alice_phone,
            &bob,
            msg_id(1, 2, i),
            &format!("queued {i}"),
        ));
    }
    // The gauge is refreshed every 250 ms.
    let pending = poll(WAIT, || {
        b.metric("tern_cluster_outbox_entries").filter(|n| *n >= 30)
    });
    eprintln!("B's outbox holds {pending:?} entries with C down");
    assert!(
        pending.is_some(),
        "B's outbox did not hold the 30 messages for C"
    );
    drop(alice_phone);
    b.kill();
    // The restarts bind new gossip ports; the old identities are let go first (a node that
    // comes back under a new address while its old identity is still live in the others'
    // views keeps the old one alive, see the report in CLUSTER.md).
    let alone = poll(WAIT, || {
        (a.metric("tern_cluster_members_alive") == Some(1)).then_some(())
    });
    assert!(alone.is_some(), "A did not declare B and C down");
    b.restart();
    c.restart();
    let back = poll(CONVERGE, || {
        [&a, &b, &c]
            .iter()
            .all(|n| n.metric("tern_cluster_members_alive") == Some(3))
            .then_some(())
    });
    if back.is_none() {
        for n in [&a, &b, &c] {
            eprintln!(
                "--- {} ---\n{}",
                n.cluster,
                n.admin_json("/cluster/members")
            );
        }
        panic!("B and C did not rejoin");
    }
    let mut bob_again = Connection::connect(&c.native, &hello(&bob, "phone"), WAIT)
        .unwrap_or_else(|e| panic!("bob at C after the restarts: {e}"));
    let inbox = poll(CONVERGE, || {
        let inbox = sync_all(&mut bob_again);
        (inbox.len() >= acked.len()).then_some(inbox)
    })
    .unwrap_or_else(|| panic!("bob's inbox never got all {} messages", acked.len()));
    assert_eq!(inbox.len(), acked.len(), "bob's inbox: {inbox:?}");
    for (m, a) in inbox.iter().zip(&acked) {
        assert_eq!(m.msg_id, a.msg_id, "bob's inbox order");
        assert_eq!(m.conv_seq, a.conv_seq);
    }
    assert!(inbox.windows(2).all(|w| w[0].conv_seq < w[1].conv_seq));
    let drained = poll(CONVERGE, || {
        (b.metric("tern_cluster_outbox_entries") == Some(0)).then_some(())
    });
    assert!(drained.is_some(), "B's outbox did not empty");
    // Alice's own inbox on B holds each message once too.
    let mut alice_again = Connection::connect(&b.native, &hello(&alice, "tab"), WAIT)
        .unwrap_or_else(|e| panic!("alice at B after the restart: {e}"));
    let mine = sync_all(&mut alice_again);
    assert_eq!(mine.len(), acked.len());
    eprintln!("outbox crash test took {:?}", started.elapsed());
}
