//! Cluster faults with real `ternd` processes on 127.0.0.1 (issue 9, items 6 and 7): a
//! five-node cluster partitioned 2+3 and healed, and a three-node cluster whose node is
//! SIGKILLed under load and restarted on a new gossip port. Users spread over every node send
//! through the SDK (queued, retransmitted until acknowledged). Afterwards every user's inbox,
//! read with SYNC from the start, and what every SDK device received are checked: no
//! acknowledged message lost, none duplicated, no conversation with two messages under one
//! sequence, both users of a conversation see it in the same order, and each sender's
//! messages in the order it sent them.
//!
//! The partition is made inside the nodes (CLUSTER.md, "How the tests partition a cluster"):
//! each `--dev` node is told through its admin API to drop gossip datagrams and node-to-node
//! links to and from the other side's nodes (`POST /cluster/partition?block=...`).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tern_protocol::{Body, Conv, ErrorCode, Message, MessageKind, MsgId, Send, SendAck, Sync};
use tern_tests::{node_id, poll, serial, user_owned_by, Node, WAIT};
use tern_tools::{Client, ClientConfig, Connection, ConnectionError, Event, HelloParams};

/// Membership changes (formation, failure detection, heal) must settle within this.
const CONVERGE: Duration = Duration::from_secs(20);

fn hello(user: &str, device: &str) -> HelloParams {
    HelloParams::new(Node::cluster_token(user, device), device)
}

/// Every node sees `n` members under one epoch, has quorum and links to the n - 1 others.
fn settled(nodes: &[&Node], n: u64) -> bool {
    let epochs: HashSet<String> = nodes
        .iter()
        .map(|x| x.admin_json("/cluster/members")["epoch"].to_string())
        .collect();
    epochs.len() == 1
        && nodes.iter().all(|x| {
            x.metric("tern_cluster_members_alive") == Some(n)
                && x.metric("tern_cluster_quorum") == Some(1)
                && x.metric("tern_cluster_links_connected") == Some(n - 1)
        })
}

/// `n` nodes of a cluster of configured size `n`, each joining through those before it.
fn cluster(n: usize) -> Vec<Node> {
    let size = n.to_string();
    let mut nodes: Vec<Node> = Vec::new();
    for _ in 0..n {
        let join: Vec<&str> = nodes.iter().map(|x| x.cluster.as_str()).collect();
        nodes.push(Node::start_cluster(&join, &["--cluster-size", &size]));
    }
    let all: Vec<&Node> = nodes.iter().collect();
    if poll(CONVERGE, || settled(&all, n as u64).then_some(())).is_none() {
        for x in &nodes {
            eprintln!(
                "--- {} ---\n{}",
                x.cluster,
                x.admin_json("/cluster/members")
            );
        }
        panic!("{n} nodes did not settle within {CONVERGE:?}");
    }
    nodes
}

/// Every entry of the user's inbox, paged with SYNC from the start.
fn sync_all(conn: &mut Connection) -> Vec<Message<'static>> {
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

/// One message queued in the SDK.
#[derive(Debug, Clone)]
struct Sent {
    from: usize,
    to: usize,
    body: String,
    msg_id: MsgId,
    /// Sent while every node was reachable and answered before the next round: its place in
    /// the sender's order is checked.
    ordered: bool,
}

/// A user with one SDK device connected to the user's node.
struct Device {
    user: String,
    client: Client,
    acks: HashMap<u64, SendAck>,
    got: Vec<Message<'static>>,
}

impl Device {
    fn start(addr: &str, user: &str) -> Device {
        let mut cfg = ClientConfig::new(addr.to_owned(), Node::cluster_token(user, "sdk"), "sdk");
        cfg.retransmit_after = Duration::from_millis(300);
        cfg.backoff_min = Duration::from_millis(50);
        cfg.backoff_max = Duration::from_millis(500);
        cfg.ack_delay = Duration::from_millis(50);
        Device {
            user: user.to_owned(),
            client: Client::start(cfg),
            acks: HashMap::new(),
            got: Vec::new(),
        }
    }

    /// Takes the events that are there now (at most `max`).
    fn pump(&mut self, max: usize) {
        for _ in 0..max {
            match self.client.next_event(Duration::ZERO) {
                Some(Event::SendAcked { local_seq, ack }) => {
                    self.acks.insert(local_seq, ack);
                }
                Some(Event::Message(m)) => self.got.push(m),
                Some(Event::SendFailed { code, message, .. }) => {
                    panic!("{}: a SEND failed for good: {code:?} {message}", self.user)
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

/// The users and their devices, and everything they queued.
struct World {
    users: Vec<String>,
    devices: Vec<Device>,
    /// (sender's local seq) → what was sent, per sender.
    sent: Vec<BTreeMap<u64, Sent>>,
}

impl World {
    fn new(users: Vec<(String, String)>) -> World {
        let devices: Vec<Device> = users
            .iter()
            .map(|(user, addr)| Device::start(addr, user))
            .collect();
        World {
            users: users.into_iter().map(|(u, _)| u).collect(),
            sent: devices.iter().map(|_| BTreeMap::new()).collect(),
            devices,
        }
    }

    fn send(&mut self, from: usize, to: usize, tag: &str, ordered: bool) {
        let body = format!("{from}->{to} {tag}");
        let p = self.devices[from]
            .client
            .send(
                &self.users[to],
                MessageKind::TEXT,
                body.clone().into_bytes(),
            )
            .unwrap_or_else(|e| panic!("queueing {body}: {e}"));
        self.sent[from].insert(
            p.local_seq,
            Sent {
                from,
                to,
                body,
                msg_id: p.msg_id,
                ordered,
            },
        );
    }

    fn pump(&mut self) {
        for d in &mut self.devices {
            d.pump(10_000);
        }
    }

    /// Queued messages of `senders` not acknowledged yet.
    fn unacked(&self, senders: &[usize]) -> usize {
        senders
            .iter()
            .map(|&u| {
                self.sent[u]
                    .keys()
                    .filter(|s| !self.devices[u].acks.contains_key(s))
                    .count()
            })
            .sum()
    }

    /// Pumps until every message of `senders` is acknowledged, within `limit`.
    fn wait_acked(&mut self, senders: &[usize], limit: Duration, what: &str) {
        let end = Instant::now() + limit;
        loop {
            self.pump();
            let left = self.unacked(senders);
            if left == 0 {
                return;
            }
            assert!(
                Instant::now() < end,
                "{what}: {left} messages still unacknowledged after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every acknowledged message with its SEND_ACK.
    fn acked(&self) -> Vec<(Sent, SendAck)> {
        let mut out = Vec::new();
        for (u, sent) in self.sent.iter().enumerate() {
            for (local, s) in sent {
                if let Some(a) = self.devices[u].acks.get(local) {
                    out.push((s.clone(), *a));
                }
            }
        }
        out
    }

    /// The checks of the module doc, once every message is acknowledged; `connect(u)` opens
    /// a raw connection for user `u`'s inbox.
    fn verify(&mut self, connect: impl Fn(usize) -> Connection) {
        let acked = self.acked();
        let total: usize = self.sent.iter().map(BTreeMap::len).sum();
        assert_eq!(acked.len(), total, "every queued message is acknowledged");
        let n = self.users.len();
        // What each user's inbox must hold: the messages they sent and received.
        let mut want: Vec<HashMap<MsgId, (&Sent, &SendAck)>> = vec![HashMap::new(); n];
        for (s, a) in &acked {
            assert_eq!(a.msg_id, s.msg_id);
            want[s.from].insert(s.msg_id, (s, a));
            want[s.to].insert(s.msg_id, (s, a));
        }
        let inboxes: Vec<Vec<Message<'static>>> = (0..n)
            .map(|u| {
                let mut c = connect(u);
                poll(CONVERGE, || {
                    let inbox = sync_all(&mut c);
                    (inbox.len() >= want[u].len()).then_some(inbox)
                })
                .unwrap_or_else(|| {
                    let have: HashSet<MsgId> = sync_all(&mut c).iter().map(|m| m.msg_id).collect();
                    let missing: Vec<(&str, u64)> = want[u]
                        .values()
                        .filter(|(s, _)| !have.contains(&s.msg_id))
                        .map(|(s, a)| (s.body.as_str(), a.conv_seq))
                        .collect();
                    panic!(
                        "{}'s inbox never reached its {} messages; missing (body, conv seq): {missing:?}",
                        self.users[u],
                        want[u].len()
                    )
                })
            })
            .collect();
        // Conversation (pair of users) → conv_seq → msg_id, over everything anyone saw.
        let mut by_seq: HashMap<(usize, usize), BTreeMap<u64, MsgId>> = HashMap::new();
        for (u, inbox) in inboxes.iter().enumerate() {
            assert_eq!(
                inbox.len(),
                want[u].len(),
                "{}'s inbox holds {} entries, {} acknowledged messages involve them",
                self.users[u],
                inbox.len(),
                want[u].len()
            );
            let mut ids = HashSet::new();
            let mut seqs = HashSet::new();
            for m in inbox {
                assert!(ids.insert(m.msg_id), "{}: a message twice", self.users[u]);
                assert!(
                    seqs.insert((m.conv.id.to_string(), m.conv_seq)),
                    "{}: conversation with {} has two messages at seq {}",
                    self.users[u],
                    m.conv.id,
                    m.conv_seq
                );
                let (s, a) = want[u].get(&m.msg_id).unwrap_or_else(|| {
                    panic!("{}: a message nobody got a SEND_ACK for", self.users[u])
                });
                assert_eq!(m.conv_seq, a.conv_seq, "{}: {}", self.users[u], s.body);
                assert_eq!(m.body.as_ref(), s.body.as_bytes());
                let pair = (s.from.min(s.to), s.from.max(s.to));
                let prev = by_seq.entry(pair).or_default().insert(m.conv_seq, m.msg_id);
                assert!(
                    prev.is_none_or(|p| p == m.msg_id),
                    "conversation {}/{} has two messages at seq {}",
                    self.users[pair.0],
                    self.users[pair.1],
                    m.conv_seq
                );
            }
        }
        // Both users of a conversation see the same messages in the same order (each holds
        // every message of it), and each sender's ordered messages are in sending order.
        for ((a, b), seqs) in &by_seq {
            let count = |u: usize, peer: usize| {
                inboxes[u]
                    .iter()
                    .filter(|m| m.conv.id == self.users[peer].as_str())
                    .count()
            };
            assert_eq!(count(*a, *b), seqs.len());
            assert_eq!(count(*b, *a), seqs.len());
            for from in [*a, *b] {
                let order: Vec<u64> = self.sent[from]
                    .iter()
                    .filter(|(_, s)| s.ordered && s.to == if from == *a { *b } else { *a })
                    .map(|(local, _)| *local)
                    .collect();
                let by_local: Vec<u64> = order
                    .iter()
                    .map(|l| self.devices[from].acks[l].conv_seq)
                    .collect();
                assert!(
                    by_local.windows(2).all(|w| w[0] < w[1]),
                    "{}'s messages to the other out of order: {by_local:?}",
                    self.users[from]
                );
            }
        }
        // Every SDK device got each message for its user once (a PUSH or a SYNC page).
        let end = Instant::now() + CONVERGE;
        loop {
            self.pump();
            let missing: usize = (0..n)
                .map(|u| {
                    let got: HashSet<MsgId> =
                        self.devices[u].got.iter().map(|m| m.msg_id).collect();
                    want[u]
                        .values()
                        .filter(|(s, _)| s.to == u && !got.contains(&s.msg_id))
                        .count()
                })
                .sum();
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < end,
                "{missing} messages never reached their recipient's SDK device"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        self.pump();
        for d in &self.devices {
            let mut seen = HashSet::new();
            for m in &d.got {
                assert!(
                    seen.insert(m.msg_id),
                    "{}'s device got a message twice: {m:?}",
                    d.user
                );
            }
        }
    }

    fn stop(self) {
        for d in self.devices {
            d.client.stop();
        }
    }
}

/// Sends one SEND on a raw connection and returns the ERROR code it got, if any.
fn raw_send(conn: &mut Connection, to: &str, id: u8) -> Result<SendAck, ErrorCode> {
    match conn.request(
        Body::Send(Send {
            to: Conv::direct(to.to_owned()),
            msg_id: MsgId([id; 16]),
            kind: MessageKind::TEXT,
            body: b"raw".to_vec().into(),
        }),
        WAIT,
    ) {
        Ok(tern_protocol::Frame {
            body: Body::SendAck(a),
            ..
        }) => Ok(a),
        Err(ConnectionError::Server { code, .. }) => Err(code),
        other => panic!("SEND: {other:?}"),
    }
}

/// Issue 9, item 7: five nodes, two users on each. They exchange messages; the cluster is cut
/// into {D, E} and {A, B, C}. The minority side refuses writes with NO_QUORUM (reads still
/// work) while the majority side keeps accepting for the users it owns; messages queued
/// across the cut wait (in the SDK or in an outbox) and go through after the heal. Then:
/// nothing acknowledged lost, nothing twice, one message per sequence, order kept.
#[test]
fn a_five_node_cluster_partitioned_2_3_refuses_writes_on_the_minority_and_loses_nothing() {
    let _serial = serial();
    let started = Instant::now();
    let nodes = cluster(5);
    let ids: Vec<String> = nodes.iter().map(node_id).collect();
    let users: Vec<(String, String)> = (0..10)
        .map(|i| {
            let node = i / 2;
            (
                user_owned_by(&nodes[0], &ids[node], &format!("p{i}")),
                nodes[node].native.clone(),
            )
        })
        .collect();
    let node_of = |u: usize| u / 2;
    let mut world = World::new(users);
    let everyone: Vec<usize> = (0..10).collect();
    eprintln!("5 nodes settled after {:?}", started.elapsed());

    // Everyone writes to everyone, each round answered before the next.
    for round in 0..2 {
        for u in 0..10 {
            for v in (0..10).filter(|v| *v != u) {
                world.send(u, v, &format!("before #{round}"), true);
            }
        }
        world.wait_acked(&everyone, CONVERGE, "before the partition");
    }

    // The cut: D and E (nodes 3, 4) on one side.
    let (minority, majority) = ([3usize, 4], [0usize, 1, 2]);
    let block = |side: &[usize], others: &[usize]| {
        let list: Vec<&str> = others.iter().map(|&i| ids[i].as_str()).collect();
        for &i in side {
            let (status, body) = nodes[i].admin_call(
                "POST",
                &format!("/cluster/partition?block={}", list.join(",")),
            );
            assert!(status.contains("200"), "{status}: {body}");
        }
    };
    let cut_at = Instant::now();
    block(&minority, &majority);
    block(&majority, &minority);
    let split = poll(CONVERGE, || {
        (minority
            .iter()
            .all(|&i| nodes[i].metric("tern_cluster_quorum") == Some(0))
            && majority.iter().all(|&i| {
                nodes[i].metric("tern_cluster_members_alive") == Some(3)
                    && nodes[i].metric("tern_cluster_quorum") == Some(1)
            }))
        .then(|| cut_at.elapsed())
    });
    let Some(split) = split else {
        for n in &nodes {
            eprintln!(
                "--- {} ---\n{}",
                n.cluster,
                n.admin_json("/cluster/members")
            );
        }
        panic!("the partition did not settle within {CONVERGE:?}");
    };
    eprintln!("partition 2+3: minority without quorum, majority settled after {split:?}");
    let members = nodes[3].admin_json("/cluster/members");
    assert_eq!(members["writable"], false, "{members}");

    // The minority refuses writes, even between two of its own users, and still serves reads.
    let user = |u: usize| world.users[u].clone();
    let mut raw = Connection::connect(&nodes[3].native, &hello(&user(6), "raw"), WAIT)
        .unwrap_or_else(|e| panic!("a user of D during the partition: {e}"));
    assert_eq!(raw_send(&mut raw, &user(7), 1), Err(ErrorCode::NO_QUORUM));
    assert_eq!(raw_send(&mut raw, &user(0), 2), Err(ErrorCode::NO_QUORUM));
    assert_eq!(raw_send(&mut raw, &user(9), 3), Err(ErrorCode::NO_QUORUM));
    let inbox = sync_all(&mut raw);
    assert!(
        inbox.len() >= 2 * 2 * 9,
        "SYNC on the minority: {}",
        inbox.len()
    );
    drop(raw);

    // The majority keeps taking writes between the users it owns.
    let owned: Vec<usize> = (0..10).filter(|u| node_of(*u) < 3).collect();
    for round in 0..2 {
        for &u in &owned {
            for &v in owned.iter().filter(|v| **v != u) {
                world.send(u, v, &format!("during #{round}"), true);
            }
        }
        world.wait_acked(&owned, CONVERGE, "on the majority side");
    }
    // Messages across the cut are queued now; they may be acknowledged (a conversation the
    // majority owns keeps the recipient's half in its outbox) or wait in the SDK.
    for &u in &owned {
        for v in (6..10).filter(|v| *v != u) {
            world.send(u, v, "across", false);
        }
    }
    for u in 6..10 {
        for v in (0..10).filter(|v| *v != u) {
            world.send(u, v, "from the minority", false);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    world.pump();
    let waiting_minority = world.unacked(&[6, 7, 8, 9]);
    eprintln!(
        "during the partition: {} of the minority's 36 messages acknowledged, {} of the majority's 24 across",
        36 - waiting_minority,
        24 - world.unacked(&owned)
    );
    assert_eq!(
        waiting_minority, 36,
        "the minority acknowledged a message without quorum"
    );

    // Heal.
    let heal_at = Instant::now();
    for n in &nodes {
        let (status, body) = n.admin_call("DELETE", "/cluster/partition");
        assert!(status.contains("200"), "{status}: {body}");
    }
    let all: Vec<&Node> = nodes.iter().collect();
    if poll(CONVERGE, || settled(&all, 5).then_some(())).is_none() {
        for n in &nodes {
            eprintln!(
                "--- {} ---\n{}",
                n.cluster,
                n.admin_json("/cluster/members")
            );
        }
        panic!("the cluster did not heal within {CONVERGE:?}");
    }
    eprintln!("healed after {:?}", heal_at.elapsed());
    world.wait_acked(&everyone, CONVERGE * 2, "after the heal");
    eprintln!(
        "queued messages acknowledged {:?} after the heal",
        heal_at.elapsed()
    );
    for u in 0..10 {
        for v in (0..10).filter(|v| *v != u) {
            world.send(u, v, "after", true);
        }
    }
    world.wait_acked(&everyone, CONVERGE, "after the heal");
    let drained = poll(CONVERGE, || {
        nodes
            .iter()
            .all(|n| n.metric("tern_cluster_outbox_entries") == Some(0))
            .then_some(())
    });
    assert!(drained.is_some(), "an outbox did not empty");

    let natives: Vec<String> = (0..10).map(|u| nodes[node_of(u)].native.clone()).collect();
    let names = world.users.clone();
    world.verify(|u| {
        Connection::connect(&natives[u], &hello(&names[u], "check"), WAIT)
            .unwrap_or_else(|e| panic!("{} check: {e}", names[u]))
    });
    let total: usize = world.sent.iter().map(BTreeMap::len).sum();
    eprintln!(
        "{total} messages checked; partition test took {:?}",
        started.elapsed()
    );
    world.stop();
}

/// Issue 9, items 6 and the restart fix: three nodes, two users on each, sending without
/// pause; node C is SIGKILLed mid-way and restarted (on a new gossip port) a second later.
/// The others never list C twice, C's users' messages wait in their SDK, the others' messages
/// to C's users wait in an outbox or the SDK, and afterwards nothing is lost or duplicated.
#[test]
fn a_node_sigkilled_under_load_and_restarted_loses_and_duplicates_nothing() {
    let _serial = serial();
    let started = Instant::now();
    let mut nodes = cluster(3);
    let ids: Vec<String> = nodes.iter().map(node_id).collect();
    let users: Vec<(String, String)> = (0..6)
        .map(|i| {
            let node = i / 2;
            (
                user_owned_by(&nodes[0], &ids[node], &format!("k{i}")),
                nodes[node].native.clone(),
            )
        })
        .collect();
    let mut world = World::new(users);
    let everyone: Vec<usize> = (0..6).collect();
    let old_port = nodes[2].cluster.clone();
    for round in 0..10 {
        if round == 3 {
            nodes[2].kill();
            eprintln!("C killed after {:?}", started.elapsed());
        }
        if round == 5 {
            nodes[2].restart();
            eprintln!("C restarted after {:?}", started.elapsed());
        }
        for u in 0..6 {
            for v in (0..6).filter(|v| *v != u) {
                world.send(u, v, &format!("#{round}"), false);
            }
        }
        world.pump();
        std::thread::sleep(Duration::from_millis(300));
        if round >= 5 {
            // The restarted node is on a new gossip port; nobody lists it twice meanwhile.
            for n in &nodes {
                let m = n.admin_json("/cluster/members");
                let listed: Vec<&str> = m["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|x| x["id"].as_str())
                    .collect();
                let unique: HashSet<&&str> = listed.iter().collect();
                assert_eq!(unique.len(), listed.len(), "a node listed twice: {m}");
            }
        }
    }
    assert_ne!(
        nodes[2].cluster, old_port,
        "the restart binds a new gossip port"
    );
    assert_eq!(node_id(&nodes[2]), ids[2]);
    let all: Vec<&Node> = nodes.iter().collect();
    assert!(
        poll(CONVERGE, || settled(&all, 3).then_some(())).is_some(),
        "C did not rejoin"
    );
    world.wait_acked(&everyone, CONVERGE * 2, "after the restart");
    let drained = poll(CONVERGE, || {
        nodes
            .iter()
            .all(|n| n.metric("tern_cluster_outbox_entries") == Some(0))
            .then_some(())
    });
    assert!(drained.is_some(), "an outbox did not empty");
    let natives: Vec<String> = (0..6).map(|u| nodes[u / 2].native.clone()).collect();
    let names = world.users.clone();
    world.verify(|u| {
        Connection::connect(&natives[u], &hello(&names[u], "check"), WAIT)
            .unwrap_or_else(|e| panic!("{} check: {e}", names[u]))
    });
    let total: usize = world.sent.iter().map(BTreeMap::len).sum();
    eprintln!(
        "{total} messages checked; SIGKILL test took {:?}",
        started.elapsed()
    );
    world.stop();
}

/// Issue 9, item 5: three nodes, two users on each, sending without pause; node A is drained
/// with `POST /cluster/drain` mid-way. A's slots move to B and C with their data (handoff):
/// A's users are closed with CLOSE REDIRECT once their slot's data is durable on its new
/// node, reconnect there (following REDIRECT) and go on; writes of a moving slot get
/// UNAVAILABLE meanwhile and the SDK retransmits them. Afterwards A holds no slot, and
/// nothing acknowledged is lost or duplicated, every conversation in one order on every
/// device.
#[test]
fn a_node_drained_under_load_hands_its_slots_over_and_loses_nothing() {
    let _serial = serial();
    let started = Instant::now();
    let nodes = cluster(3);
    let ids: Vec<String> = nodes.iter().map(node_id).collect();
    let users: Vec<(String, String)> = (0..6)
        .map(|i| {
            let node = i / 2;
            (
                user_owned_by(&nodes[0], &ids[node], &format!("d{i}")),
                nodes[node].native.clone(),
            )
        })
        .collect();
    let mut world = World::new(users);
    let everyone: Vec<usize> = (0..6).collect();
    let held_before = nodes[0].metric("tern_cluster_slots_held").unwrap_or(0);
    assert!(held_before > 0, "A holds slots before the drain");
    let mut drained_at = None;
    for round in 0..10 {
        if round == 3 {
            let (status, body) = nodes[0].admin_call("POST", "/cluster/drain");
            assert!(status.contains("202"), "drain: {status} {body}");
            drained_at = Some(Instant::now());
            eprintln!("A drained after {:?}", started.elapsed());
        }
        for u in 0..6 {
            for v in (0..6).filter(|v| *v != u) {
                world.send(u, v, &format!("#{round}"), false);
            }
        }
        world.pump();
        std::thread::sleep(Duration::from_millis(300));
    }
    let drained_at = drained_at.unwrap();
    // A ends holding nothing: every slot was confirmed by its new holder.
    let moved = poll(CONVERGE, || {
        (nodes[0].metric("tern_cluster_slots_held") == Some(0)).then_some(())
    });
    assert!(
        moved.is_some(),
        "A still holds slots: {}",
        nodes[0].admin_json("/cluster/members")
    );
    eprintln!(
        "A's {held_before} slots handed over {:?} after the drain",
        drained_at.elapsed()
    );
    assert_eq!(nodes[0].metric("tern_cluster_slots_owned"), Some(0));
    assert_eq!(
        nodes[0].metric("tern_cluster_handoff_slots_total"),
        Some(held_before)
    );
    let held: u64 = nodes[1..]
        .iter()
        .map(|n| n.metric("tern_cluster_slots_held").unwrap_or(0))
        .sum();
    assert_eq!(held, 16_384, "B and C hold every slot between them");
    world.wait_acked(&everyone, CONVERGE * 2, "after the drain");
    eprintln!(
        "every message acknowledged {:?} after the drain",
        drained_at.elapsed()
    );
    // More messages once the slots have settled: A's former users send from their new nodes.
    for u in 0..6 {
        for v in (0..6).filter(|v| *v != u) {
            world.send(u, v, "after", true);
        }
    }
    world.wait_acked(&everyone, CONVERGE, "after the handoff");
    let empty = poll(CONVERGE, || {
        nodes
            .iter()
            .all(|n| n.metric("tern_cluster_outbox_entries") == Some(0))
            .then_some(())
    });
    assert!(empty.is_some(), "an outbox did not empty");
    // Each user's inbox is read where the user is served now.
    let native_of: HashMap<String, String> = ids
        .iter()
        .cloned()
        .zip(nodes.iter().map(|n| n.native.clone()))
        .collect();
    let natives: Vec<String> = world
        .users
        .iter()
        .map(|u| {
            let owner = nodes[1].admin_json(&format!("/cluster/owner?user={u}"));
            let id = owner["node"].as_str().unwrap().to_owned();
            eprintln!("{u} is served by {id} after the drain");
            assert_ne!(id, ids[0], "{u} is still served by the drained node");
            native_of[&id].clone()
        })
        .collect();
    let names = world.users.clone();
    world.verify(|u| {
        Connection::connect(&natives[u], &hello(&names[u], "check"), WAIT)
            .unwrap_or_else(|e| panic!("{} check: {e}", names[u]))
    });
    let total: usize = world.sent.iter().map(BTreeMap::len).sum();
    eprintln!(
        "{total} messages checked; drain test took {:?}",
        started.elapsed()
    );
    world.stop();
}

/// A node joins a cluster under load: two nodes (configured size 2, which any two of the three
/// nodes still make a majority of) serve twelve users who all send to each other every 300 ms;
/// a third node joins after the third round and the holders hand it the slots its ring gives
/// it, users included. Node ids are fixed, so the ring, and which users move, is the same in
/// every run. Then: the three nodes hold every slot once, no acknowledged message is lost or
/// duplicated, order holds on both sides and on every device, and the users that moved send
/// from the new node.
#[test]
fn a_node_joining_under_load_takes_its_slots_and_loses_nothing() {
    let _serial = serial();
    let started = Instant::now();
    let a = Node::start_cluster(&[], &["--cluster-size", "2", "--node-id", "join-a"]);
    let b = Node::start_cluster(
        &[a.cluster.as_str()],
        &["--cluster-size", "2", "--node-id", "join-b"],
    );
    let two = [&a, &b];
    assert!(
        poll(CONVERGE, || settled(&two, 2).then_some(())).is_some(),
        "two nodes did not settle"
    );
    let users: Vec<(String, String)> = (0..12)
        .map(|i| {
            let (id, node) = if i % 2 == 0 {
                ("join-a", &a)
            } else {
                ("join-b", &b)
            };
            (user_owned_by(&a, id, &format!("j{i}")), node.native.clone())
        })
        .collect();
    let mut world = World::new(users);
    let everyone: Vec<usize> = (0..12).collect();
    let mut c = None;
    let mut joined_at = None;
    for round in 0..10 {
        if round == 3 {
            c = Some(Node::start_cluster(
                &[a.cluster.as_str(), b.cluster.as_str()],
                &["--cluster-size", "2", "--node-id", "join-c"],
            ));
            joined_at = Some(Instant::now());
            eprintln!("C started after {:?}", started.elapsed());
        }
        for u in 0..12 {
            for v in (0..12).filter(|v| *v != u) {
                world.send(u, v, &format!("#{round}"), false);
            }
        }
        world.pump();
        std::thread::sleep(Duration::from_millis(300));
    }
    let (Some(c), Some(joined_at)) = (c, joined_at) else {
        unreachable!("C starts in round 3")
    };
    let nodes = [&a, &b, &c];
    // Every slot held exactly once, C's share included, and no handoff left running.
    let handed = poll(CONVERGE * 2, || {
        let held: Vec<u64> = nodes
            .iter()
            .map(|n| n.metric("tern_cluster_slots_held").unwrap_or(0))
            .collect();
        let idle = nodes
            .iter()
            .all(|n| n.metric("tern_cluster_handoffs_in_progress") == Some(0));
        (settled(&nodes, 3) && idle && held[2] > 0 && held.iter().sum::<u64>() == 16_384)
            .then_some(held)
    });
    let Some(held) = handed else {
        for n in nodes {
            eprintln!(
                "--- {} ---\n{}",
                n.cluster,
                n.admin_json("/cluster/members")
            );
        }
        panic!("the slots were not handed to C");
    };
    eprintln!(
        "slots held after the join (A, B, C): {held:?}, {:?} after C started",
        joined_at.elapsed()
    );
    world.wait_acked(&everyone, CONVERGE * 2, "after the join");
    for u in 0..12 {
        for v in (0..12).filter(|v| *v != u) {
            world.send(u, v, "after", true);
        }
    }
    world.wait_acked(&everyone, CONVERGE, "after the handoff");
    let empty = poll(CONVERGE, || {
        nodes
            .iter()
            .all(|n| n.metric("tern_cluster_outbox_entries") == Some(0))
            .then_some(())
    });
    assert!(empty.is_some(), "an outbox did not empty");
    let native_of: HashMap<&str, String> = [
        ("join-a", a.native.clone()),
        ("join-b", b.native.clone()),
        ("join-c", c.native.clone()),
    ]
    .into_iter()
    .collect();
    let mut moved = 0;
    let natives: Vec<String> = world
        .users
        .iter()
        .map(|u| {
            let owner = c.admin_json(&format!("/cluster/owner?user={u}"));
            let id = owner["node"].as_str().unwrap_or_default().to_owned();
            if id == "join-c" {
                moved += 1;
            }
            native_of[id.as_str()].clone()
        })
        .collect();
    assert!(moved > 0, "no user moved to the joining node");
    eprintln!("{moved} of 12 users moved to C");
    let names = world.users.clone();
    world.verify(|u| {
        Connection::connect(&natives[u], &hello(&names[u], "check"), WAIT)
            .unwrap_or_else(|e| panic!("{} check: {e}", names[u]))
    });
    let total: usize = world.sent.iter().map(BTreeMap::len).sum();
    eprintln!(
        "{total} messages checked; join test took {:?}",
        started.elapsed()
    );
    world.stop();
}
