//! One-to-one messages in the deterministic simulator (`sim.rs`): simulated clients send
//! messages between users of different nodes while the simulator loses, delays, reorders and
//! partitions node-to-node traffic and crashes nodes, and the node's own decisions say where
//! each message is sequenced and when it is acknowledged:
//!
//! - a client reaches the node that owns its user in the live ring (REDIRECT); that node
//!   refuses with the node's own checks — [`remote_refusal`] against the live table, then the
//!   quorum gate ([`quorum::writable`]) and [`remote_refusal`] against the fenced table writes
//!   follow ([`quorum::write_table`] over [`Absent`], fed by the membership events as the
//!   gossip thread feeds it);
//! - [`route::place`] decides Local / Routed / Forward; the conversation's node takes a
//!   forwarded SEND by [`route::take_forward`], an outbox entry by [`route::take_write`], and
//!   an entry it did not apply follows [`route::follow`]; entries are resent after
//!   [`RESEND_AFTER`] and held a second after a refusal, as the link core does;
//! - each node's durable state is a real [`Store`] over a [`MemEngine`] that survives the
//!   node's crashes (a crash drops the store, its writer cache and the in-memory outbox
//!   queue; the restart reopens the engine and reads the outbox back). A message counts as
//!   acknowledged when the client gets its SEND_ACK, which the node gives once the store
//!   completed the write (durable).
//!
//! Node-to-node items travel as simulator events with the gossip network's loss, duplication
//! and delay (so they reorder), are dropped across a partition, and never reach a process
//! that restarted after they were sent (its connections broke). Clients talk to nodes without
//! loss; a node that crashes drops what it was doing for them and they retransmit.
//!
//! [`check`] is run once the network is healed and settled, every client's messages are
//! acknowledged and every outbox is empty: every acknowledged message is stored exactly once
//! in the conversation on both users' nodes and in both users' inboxes, at the sequence its
//! SEND_ACK gave; no conversation has two messages under one sequence on any node, sequences
//! run 1..k without a gap; each sender's messages are in the conversation in the order it
//! sent them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rand010::rngs::Xoshiro256PlusPlus;
use rand010::{RngExt, SeedableRng};
use tern_protocol::{Body, Frame};
use tern_storage::{
    ClientMsgId, ConvKey, DeviceId, DirectMessage, DirectPair, HistoryDirection, ManualClock,
    MemEngine, MessageKind, OutboxEntry, RemoteSide, RemoteWrite, Seq, Store, StoreConfig, UserId,
};

use super::membership::{Membership, MembershipEvent, NodeId};
use super::quorum::{self, Absent};
use super::ring::{AssignmentCache, Ring, RingMember};
use super::route::{self, Placement};
use super::sim::Sim;
use crate::session::{self, SessionInfo};
use crate::slots::{Owner, OwnerTable};

/// What the link core waits before sending an unacknowledged outbox entry again (ms).
const RESEND_AFTER: u64 = super::links::RESEND_AFTER.as_millis() as u64;
/// How long an entry a node did not apply is held before it is sent again (ms).
const HOLD_AFTER_REFUSAL: u64 = 1_000;
/// The link core's tick (ms).
const TICK: u64 = 250;
/// A client's retransmission after a refusal (ms).
const CLIENT_RETRY: u64 = 500;
/// A client's retransmission when no answer came (ms).
const CLIENT_TIMEOUT: u64 = 3_000;
/// Wall-clock origin of the stores' virtual clock.
const EPOCH_MS: u64 = 1_700_000_000_000;

thread_local! {
    /// Ring assignments by member set: the simulator's node ids repeat from seed to seed.
    static RINGS: RefCell<AssignmentCache> = RefCell::new(AssignmentCache::default());
    /// Owner tables by (node, member ids). Slot owners depend on the ids only, and so does
    /// every decision taken here (none reads the table's epoch, which depends on the
    /// generations too): building a table per epoch cost more than the rest of a seed.
    static TABLES: RefCell<Tables> = RefCell::new(HashMap::new());
}

/// Owner tables by (node, sorted member ids).
type Tables = HashMap<(NodeId, Vec<NodeId>), Arc<OwnerTable>>;

/// Acknowledged messages with their sequence.
type Acked = Vec<(DirectMessage, Seq)>;

/// Runs `f` with the thread's ring assignments (shared by every seed a test thread runs).
pub(crate) fn with_rings<R>(f: impl FnOnce(&mut AssignmentCache) -> R) -> R {
    RINGS.with(|c| f(&mut c.borrow_mut()))
}

fn table_of(me: &NodeId, members: &[RingMember]) -> Option<Arc<OwnerTable>> {
    let mut ids: Vec<NodeId> = members.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    ids.dedup();
    let key = (me.clone(), ids);
    if let Some(t) = TABLES.with(|t| t.borrow().get(&key).cloned()) {
        return Some(t);
    }
    let ring = with_rings(|c| Ring::with_cache(members.to_vec(), c));
    let table = Arc::new(ring.owner_table(me, 1).ok()?);
    TABLES.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() > 256 {
            t.clear();
        }
        t.insert(key, Arc::clone(&table));
    });
    Some(table)
}

/// Node-to-node items (what `wire::Item` carries for one-to-one messages).
#[derive(Debug, Clone)]
pub(crate) enum LinkItem {
    Forward {
        id: u64,
        msg: DirectMessage,
    },
    Forwarded {
        id: u64,
        /// conv seq and time, or why not.
        result: Result<(Seq, u64), String>,
    },
    Write {
        seq: u64,
        write: RemoteWrite,
    },
    Acked {
        seq: u64,
    },
    NotApplied {
        seq: u64,
    },
}

/// Traffic events in the simulator's queue.
#[derive(Debug)]
pub(crate) enum TrafficEv {
    /// Client `c` sends (or retransmits) its current message; `attempt` must still be current.
    Client { c: usize, attempt: u64 },
    /// A link item from node `from` for node `to`'s process `process`.
    Link {
        to: usize,
        from: usize,
        process: u32,
        item: LinkItem,
    },
    /// Node `node`'s link-core tick.
    Tick { node: usize, process: u32 },
}

#[derive(Debug)]
struct Pending {
    entry: OutboxEntry,
    target: String,
    sent_at: Option<u64>,
    hold_until: u64,
}

struct TNode {
    id: NodeId,
    /// Durable: survives crashes.
    engine: MemEngine,
    store: Option<Store<MemEngine>>,
    hook: Arc<Mutex<Vec<OutboxEntry>>>,
    process: u32,
    absent: Absent,
    /// The inputs of the table writes follow, as of the last view change.
    home: Vec<RingMember>,
    outbox: BTreeMap<u64, Pending>,
    /// Forwarded SENDs awaiting their answer: client, message.
    forwards: BTreeMap<u64, (usize, DirectMessage)>,
}

struct Client {
    user: UserId,
    /// Messages still to send, in order.
    queue: VecDeque<DirectMessage>,
    attempt: u64,
    /// Messages acknowledged, in the order sent, with their conv seq.
    acked: Acked,
}

/// The routing layer's state for one seed.
pub(crate) struct Traffic {
    size: usize,
    nodes: Vec<TNode>,
    clients: Vec<Client>,
    clock: Arc<ManualClock>,
    next_id: u64,
    started: bool,
    rng: Xoshiro256PlusPlus,
    /// Transmissions by clients, retransmissions included.
    pub sent: u64,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.pending())
    }
}

fn conv_of(m: &DirectMessage) -> ConvKey {
    ConvKey::Direct(DirectPair::new(m.sender.clone(), m.recipient.clone()))
}

fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix('n')?.parse().ok()
}

impl Traffic {
    /// `users` users (names vary with the seed, so their placement does too), each with
    /// `per_user` messages to other users.
    pub(crate) fn new(seed: u64, n: usize, users: usize, per_user: usize) -> Traffic {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x726f_7574_6500);
        let names: Vec<UserId> = (0..users)
            .map(|k| UserId::new(format!("s{}u{k}", seed % 100_003)).expect("valid id"))
            .collect();
        let mut clients = Vec::new();
        for (k, user) in names.iter().enumerate() {
            let mut queue = VecDeque::new();
            for j in 0..per_user {
                let mut to = rng.random_range(0..users - 1);
                if to >= k {
                    to += 1;
                }
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&seed.to_be_bytes());
                id[8] = k as u8;
                id[9] = j as u8;
                queue.push_back(DirectMessage {
                    sender: user.clone(),
                    sender_device: DeviceId::new("phone").expect("valid id"),
                    recipient: names[to].clone(),
                    client_msg_id: ClientMsgId(id),
                    kind: MessageKind::TEXT,
                    body: format!("{k}.{j}").into_bytes(),
                });
            }
            clients.push(Client {
                user: user.clone(),
                queue,
                attempt: 0,
                acked: Vec::new(),
            });
        }
        let nodes = (0..n)
            .map(|i| TNode {
                id: NodeId::new(format!("n{i}")).expect("valid id"),
                engine: MemEngine::new(),
                store: None,
                hook: Arc::default(),
                process: 0,
                absent: Absent::default(),
                home: Vec::new(),
                outbox: BTreeMap::new(),
                forwards: BTreeMap::new(),
            })
            .collect();
        Traffic {
            size: n,
            nodes,
            clients,
            clock: Arc::new(ManualClock::new(EPOCH_MS)),
            next_id: 1,
            started: false,
            rng,
            sent: 0,
        }
    }

    /// Clients start sending, each at a random time within `spread` ms.
    pub(crate) fn start_clients(&mut self, sim: &mut Sim, spread: u64) {
        self.started = true;
        for c in 0..self.clients.len() {
            let at = sim.now + self.rng.random_range(0..=spread);
            sim.push_traffic(at, TrafficEv::Client { c, attempt: 0 });
        }
    }

    /// Whether every client's messages are acknowledged and every outbox is empty.
    pub(crate) fn drained(&self) -> bool {
        self.clients.iter().all(|c| c.queue.is_empty())
            && self
                .nodes
                .iter()
                .all(|n| n.store.is_some() && n.outbox.is_empty())
    }

    /// What is still pending, for a failure message.
    pub(crate) fn pending(&self) -> String {
        let clients: usize = self.clients.iter().map(|c| c.queue.len()).sum();
        let outbox: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.id, n.outbox.len()))
            .collect();
        format!(
            "{clients} messages unacknowledged, outboxes {}",
            outbox.join(" ")
        )
    }

    /// Node `i` (re)started: its store reopens on its engine, the outbox is read back.
    pub(crate) fn started(&mut self, sim: &mut Sim, i: usize) {
        let process = sim.nodes[i].process_id();
        let node = &mut self.nodes[i];
        // Small queues: a node's store is opened on every start, and the default write queue
        // (65,536 slots) cost more to allocate than the rest of a seed.
        let config = StoreConfig {
            readers: 1,
            write_queue_capacity: 64,
            read_queue_capacity: 64,
            max_batch_ops: 64,
            node_id: Some(node.id.to_string()),
            ..StoreConfig::default()
        };
        let store = Store::open(
            node.engine.clone(),
            config,
            Arc::clone(&self.clock) as Arc<dyn tern_storage::Clock>,
        )
        .expect("a memory store opens");
        let hook = Arc::new(Mutex::new(Vec::new()));
        let h = Arc::clone(&hook);
        store.set_outbox_hook(Box::new(move |e| {
            h.lock().unwrap_or_else(|e| e.into_inner()).extend(e)
        }));
        let left = store
            .outbox_page(0, usize::MAX)
            .expect("submit")
            .wait()
            .expect("outbox read");
        node.process = process;
        node.hook = hook;
        node.store = Some(store);
        node.absent = Absent::default();
        node.outbox.clear();
        node.forwards.clear();
        for e in left {
            node.outbox.insert(
                e.seq,
                Pending {
                    target: e.dest_node.clone(),
                    entry: e,
                    sent_at: None,
                    hold_until: 0,
                },
            );
        }
        sim.push_traffic(sim.now + TICK, TrafficEv::Tick { node: i, process });
    }

    /// Node `i` crashed: everything but its engine is gone.
    pub(crate) fn crashed(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.store = None;
        node.outbox.clear();
        node.forwards.clear();
        node.absent = Absent::default();
        node.home.clear();
    }

    /// A membership event of node `i`, followed as the gossip thread follows it.
    pub(crate) fn observe(&mut self, i: usize, event: &MembershipEvent) {
        let node = &mut self.nodes[i];
        let me = node.id.clone();
        node.absent.observe(event, &me);
    }

    /// Node `i`'s view changed (or it started): the table writes follow is recomputed from
    /// the live ring and the absent members, as `node.rs` publishes it.
    pub(crate) fn view_changed(&mut self, i: usize, m: &Membership) {
        let node = &mut self.nodes[i];
        let live: Vec<NodeId> = m.live_members().into_iter().map(|id| id.id).collect();
        node.absent.retain_absent(&live);
        let ring = with_rings(|c| node.absent.home_ring(&m.ring_members(), c));
        node.home = ring.members().to_vec();
    }

    fn live_table(sim: &Sim, i: usize) -> Option<Arc<OwnerTable>> {
        let m = sim.nodes[i].m.as_ref()?;
        table_of(&sim.nodes[i].id, &m.ring_members())
    }

    fn write_table(&self, i: usize) -> Option<Arc<OwnerTable>> {
        table_of(&self.nodes[i].id, &self.nodes[i].home)
    }

    fn writable(&self, sim: &Sim, i: usize) -> bool {
        sim.nodes[i]
            .m
            .as_ref()
            .is_some_and(|m| quorum::writable(m, &self.nodes[i].absent, self.size, sim.now))
    }

    fn send(&self, sim: &mut Sim, from: usize, to: usize, item: LinkItem) {
        if !sim.is_up(to) {
            return;
        }
        let process = sim.nodes[to].process_id();
        sim.send_link(from, to, process, item);
    }

    /// Handles one traffic event.
    pub(crate) fn handle(&mut self, sim: &mut Sim, ev: TrafficEv) {
        self.clock.set(EPOCH_MS + sim.now);
        match ev {
            TrafficEv::Client { c, attempt } => {
                if self.clients[c].attempt == attempt {
                    self.client_send(sim, c);
                }
            }
            TrafficEv::Link {
                to,
                from,
                process,
                item,
            } => {
                if sim.is_up(to) && sim.nodes[to].process_id() == process {
                    self.link(sim, to, from, item);
                }
            }
            TrafficEv::Tick { node, process } => {
                if sim.is_up(node) && sim.nodes[node].process_id() == process {
                    self.tick(sim, node);
                    sim.push_traffic(sim.now + TICK, TrafficEv::Tick { node, process });
                }
            }
        }
    }

    /// The client retries its current message after `after` ms.
    fn retry(&mut self, sim: &mut Sim, c: usize, after: u64) {
        let client = &mut self.clients[c];
        client.attempt += 1;
        let attempt = client.attempt;
        sim.push_traffic(sim.now + after, TrafficEv::Client { c, attempt });
    }

    /// SEND_ACK for client `c`'s current message.
    fn acked(&mut self, sim: &mut Sim, c: usize, msg: &DirectMessage, conv_seq: Seq) {
        let client = &mut self.clients[c];
        if client.queue.front() != Some(msg) {
            // An answer to an earlier transmission of a message acknowledged already.
            return;
        }
        client.queue.pop_front();
        client.acked.push((msg.clone(), conv_seq));
        client.attempt += 1;
        if !client.queue.is_empty() {
            let attempt = client.attempt;
            let gap = self.rng.random_range(0..=400);
            sim.push_traffic(sim.now + gap, TrafficEv::Client { c, attempt });
        }
    }

    fn client_send(&mut self, sim: &mut Sim, c: usize) {
        let Some(msg) = self.clients[c].queue.front().cloned() else {
            return;
        };
        self.sent += 1;
        // The next transmission unless an answer comes first.
        self.retry(sim, c, CLIENT_TIMEOUT);
        // The client connects to some node and follows REDIRECT to the user's owner there.
        let up: Vec<usize> = (0..sim.nodes.len()).filter(|&i| sim.is_up(i)).collect();
        if up.is_empty() {
            return;
        }
        let entry = up[self.rng.random_range(0..up.len())];
        let Some(table) = Self::live_table(sim, entry) else {
            return;
        };
        let k = match table.owner_of_user(msg.sender.as_str()) {
            Owner::Local(_) => entry,
            Owner::Remote(o) => match node_index(&o.node) {
                Some(k) if sim.is_up(k) => k,
                _ => return self.retry(sim, c, CLIENT_RETRY),
            },
        };
        if self.nodes[k].store.is_none() {
            return self.retry(sim, c, CLIENT_RETRY);
        }
        // The session's checks, in the node's order: the live table (REDIRECT lag), quorum,
        // the fence.
        let info = SessionInfo {
            user: msg.sender.clone(),
            device: msg.sender_device.clone(),
            session_id: 1,
        };
        let frame = Frame::new(
            1,
            Body::Send(tern_protocol::Send {
                to: tern_protocol::Conv::direct(msg.recipient.as_str().to_owned()),
                msg_id: tern_protocol::MsgId(msg.client_msg_id.0),
                kind: tern_protocol::MessageKind::TEXT,
                body: msg.body.clone().into(),
            }),
        );
        let plan = session::plan(&info, &frame, &session::Limits::default());
        let Some(live) = Self::live_table(sim, k) else {
            return self.retry(sim, c, CLIENT_RETRY);
        };
        if super::node::remote_refusal(&live, &info, &plan).is_some() {
            return self.retry(sim, c, CLIENT_RETRY);
        }
        if !self.writable(sim, k) {
            return self.retry(sim, c, CLIENT_RETRY);
        }
        let Some(writes) = self.write_table(k) else {
            return self.retry(sim, c, CLIENT_RETRY);
        };
        if super::node::remote_refusal(&writes, &info, &plan).is_some() {
            return self.retry(sim, c, CLIENT_RETRY);
        }
        let stored = match route::place(&writes, &msg) {
            Placement::Local => self.store(k).append_direct(msg.clone()),
            Placement::Routed { dest } => {
                self.store(k)
                    .append_routed(msg.clone(), RemoteSide::Recipient, dest)
            }
            Placement::Forward { to } => {
                let Some(r) = node_index(&to) else { return };
                // The link to a node out of the view is down: UNAVAILABLE at once.
                if !sim.view(k).iter().any(|id| id.as_str() == to) {
                    return self.retry(sim, c, CLIENT_RETRY);
                }
                let id = self.next_id;
                self.next_id += 1;
                self.nodes[k].forwards.insert(id, (c, msg.clone()));
                self.send(sim, k, r, LinkItem::Forward { id, msg });
                return;
            }
        };
        match stored.expect("submit").wait() {
            Ok(r) => {
                self.take_outbox(sim, k);
                self.acked(sim, c, &msg, r.conv_seq);
            }
            Err(_) => self.retry(sim, c, CLIENT_RETRY),
        }
    }

    fn store(&self, i: usize) -> &Store<MemEngine> {
        self.nodes[i]
            .store
            .as_ref()
            .expect("a node that runs has its store")
    }

    /// New durable outbox entries of node `i` (the store's hook) join its queue and go out.
    fn take_outbox(&mut self, sim: &mut Sim, i: usize) {
        let entries =
            std::mem::take(&mut *self.nodes[i].hook.lock().unwrap_or_else(|e| e.into_inner()));
        for e in entries {
            let seq = e.seq;
            self.nodes[i].outbox.insert(
                seq,
                Pending {
                    target: e.dest_node.clone(),
                    entry: e,
                    sent_at: None,
                    hold_until: 0,
                },
            );
            self.dispatch(sim, i, seq);
        }
    }

    /// Sends entry `seq` of node `i` if its target's link is up (the target is in the view).
    fn dispatch(&mut self, sim: &mut Sim, i: usize, seq: u64) {
        let Some(p) = self.nodes[i].outbox.get(&seq) else {
            return;
        };
        if p.sent_at.is_some() || p.hold_until > sim.now || p.target == self.nodes[i].id.as_str() {
            return;
        }
        let Some(to) = node_index(&p.target) else {
            return;
        };
        if !sim.view(i).iter().any(|id| id.as_str() == p.target) {
            return;
        }
        let write = p.entry.write.clone();
        if let Some(p) = self.nodes[i].outbox.get_mut(&seq) {
            p.sent_at = Some(sim.now);
        }
        self.send(sim, i, to, LinkItem::Write { seq, write });
    }

    fn tick(&mut self, sim: &mut Sim, i: usize) {
        let now = sim.now;
        let mut due = Vec::new();
        for (s, p) in self.nodes[i].outbox.iter_mut() {
            if let Some(at) = p.sent_at {
                if now - at < RESEND_AFTER {
                    continue;
                }
                p.sent_at = None;
            }
            due.push(*s);
        }
        for s in due {
            self.dispatch(sim, i, s);
        }
    }

    fn link(&mut self, sim: &mut Sim, at: usize, from: usize, item: LinkItem) {
        match item {
            LinkItem::Forward { id, msg } => {
                let writes = self.write_table(at);
                let writable = self.writable(sim, at);
                let result = match writes
                    .as_deref()
                    .map(|t| route::take_forward(writable, t, &msg))
                {
                    Some(Ok(())) => {
                        let sender_node = self.nodes[from].id.to_string();
                        match self
                            .store(at)
                            .append_routed(msg, RemoteSide::Sender, sender_node)
                            .expect("submit")
                            .wait()
                        {
                            Ok(r) => {
                                self.take_outbox(sim, at);
                                Ok((r.conv_seq, r.time_ms))
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Some(Err(e)) => Err(format!("{e:?}")),
                    None => Err("no table".into()),
                };
                self.send(sim, at, from, LinkItem::Forwarded { id, result });
            }
            LinkItem::Forwarded { id, result } => {
                let Some((c, msg)) = self.nodes[at].forwards.remove(&id) else {
                    return;
                };
                match result {
                    Ok((conv_seq, time_ms)) => {
                        // The sender's half here before SEND_ACK.
                        let w = RemoteWrite::of(&msg, RemoteSide::Sender, conv_seq, time_ms);
                        match self.store(at).apply_remote(w).expect("submit").wait() {
                            Ok(_) => self.acked(sim, c, &msg, conv_seq),
                            Err(_) => self.retry(sim, c, CLIENT_RETRY),
                        }
                    }
                    Err(_) => {
                        if self.clients[c].queue.front() == Some(&msg) {
                            self.retry(sim, c, CLIENT_RETRY);
                        }
                    }
                }
            }
            LinkItem::Write { seq, write } => {
                let writable = self.writable(sim, at);
                let taken = self
                    .write_table(at)
                    .is_some_and(|t| route::take_write(writable, &t, &write).is_ok());
                let applied = taken
                    && self
                        .store(at)
                        .apply_remote(write)
                        .expect("submit")
                        .wait()
                        .is_ok();
                let answer = if applied {
                    LinkItem::Acked { seq }
                } else {
                    LinkItem::NotApplied { seq }
                };
                self.send(sim, at, from, answer);
            }
            LinkItem::Acked { seq } => {
                if self.nodes[at].outbox.remove(&seq).is_some() {
                    // The link core does not await the deletion; a copy that survives a crash
                    // is sent again and applied as a duplicate.
                    drop(
                        self.store(at)
                            .outbox_done(vec![seq])
                            .expect("submit")
                            .wait(),
                    );
                }
            }
            LinkItem::NotApplied { seq } => {
                let writes = self.write_table(at);
                let Some(p) = self.nodes[at].outbox.get_mut(&seq) else {
                    return;
                };
                p.sent_at = None;
                p.hold_until = sim.now + HOLD_AFTER_REFUSAL;
                if let Some(node) = writes
                    .as_deref()
                    .and_then(|t| route::follow(t, &p.entry.write, &p.target))
                {
                    p.target = node;
                }
            }
        }
    }

    /// The invariants, once everything is delivered; `owner` maps a user to its node in the
    /// settled cluster.
    pub(crate) fn check(&self, owner: impl Fn(&UserId) -> usize) -> Result<(), String> {
        let n = self.nodes.len();
        // Every conversation any client wrote in, with its acknowledged messages.
        let mut convs: BTreeMap<Vec<u8>, (ConvKey, Acked)> = BTreeMap::new();
        for c in &self.clients {
            for (m, s) in &c.acked {
                let conv = conv_of(m);
                convs
                    .entry(format!("{conv:?}").into_bytes())
                    .or_insert_with(|| (conv.clone(), Vec::new()))
                    .1
                    .push((m.clone(), *s));
            }
        }
        let key = |sender: &UserId, id: &ClientMsgId| (sender.as_str().to_owned(), id.0);
        for (conv, acked) in convs.values() {
            let ConvKey::Direct(pair) = conv else {
                continue;
            };
            let homes = [owner(pair.low()), owner(pair.high())];
            // By sequence, over every node: one message per sequence.
            let mut by_seq: BTreeMap<u64, (String, [u8; 16])> = BTreeMap::new();
            for i in 0..n {
                let Some(store) = self.nodes[i].store.as_ref() else {
                    return Err(format!("n{i} is down at the end"));
                };
                let rows = store
                    .history(conv.clone(), Seq(0), HistoryDirection::After, 10_000)
                    .expect("submit")
                    .wait()
                    .map_err(|e| format!("history on n{i}: {e}"))?;
                if !homes.contains(&i) && !rows.is_empty() {
                    return Err(format!(
                        "n{i} holds {} messages of {conv:?}, whose users are on n{} and n{}",
                        rows.len(),
                        homes[0],
                        homes[1]
                    ));
                }
                let mut seen = BTreeMap::new();
                for r in &rows {
                    let k = key(&r.sender, &r.client_msg_id);
                    if let Some(other) = seen.insert(k.clone(), r.seq) {
                        return Err(format!(
                            "n{i}: message {k:?} stored twice in {conv:?}, at {other:?} and {:?}",
                            r.seq
                        ));
                    }
                    match by_seq.get(&r.seq.0) {
                        Some(prev) if *prev != k => {
                            return Err(format!(
                                "{conv:?} has two messages with sequence {}: {prev:?} and {k:?} (n{i})",
                                r.seq.0
                            ));
                        }
                        _ => {
                            by_seq.insert(r.seq.0, k);
                        }
                    }
                }
                if homes.contains(&i) {
                    // Both users' nodes hold every acknowledged message once, at its seq.
                    for (m, s) in acked {
                        let k = key(&m.sender, &m.client_msg_id);
                        if seen.get(&k) != Some(s) {
                            return Err(format!(
                                "n{i}: acknowledged message {k:?} of {conv:?} (seq {}) is {}",
                                s.0,
                                match seen.get(&k) {
                                    Some(at) => format!("at seq {}", at.0),
                                    None => "missing".into(),
                                }
                            ));
                        }
                    }
                    if rows.len() != acked.len() {
                        return Err(format!(
                            "n{i}: {conv:?} holds {} messages, {} acknowledged",
                            rows.len(),
                            acked.len()
                        ));
                    }
                }
            }
            // Sequences 1..k without a gap.
            if by_seq.keys().copied().ne(1..=by_seq.len() as u64) {
                return Err(format!(
                    "{conv:?} has sequences {:?}",
                    by_seq.keys().collect::<Vec<_>>()
                ));
            }
        }
        // Each sender's messages in the order sent; each user's inbox holds each of their
        // messages once.
        for c in &self.clients {
            let mut last: HashMap<String, Seq> = HashMap::new();
            for (m, s) in &c.acked {
                let peer = m.recipient.as_str().to_owned();
                if let Some(prev) = last.insert(peer.clone(), *s) {
                    if prev >= *s {
                        return Err(format!(
                            "{} sent to {peer} a message at seq {} after one at seq {}",
                            c.user, s.0, prev.0
                        ));
                    }
                }
            }
        }
        for c in &self.clients {
            let home = owner(&c.user);
            let store = self.nodes[home].store.as_ref().ok_or("home down")?;
            let inbox = store
                .inbox_page(c.user.clone(), Seq(0), 100_000)
                .expect("submit")
                .wait()
                .map_err(|e| format!("inbox on n{home}: {e}"))?;
            let mut count: HashMap<(String, [u8; 16]), usize> = HashMap::new();
            for e in &inbox {
                *count
                    .entry(key(&e.message.sender, &e.message.client_msg_id))
                    .or_default() += 1;
            }
            let mine = self.clients.iter().flat_map(|o| {
                o.acked
                    .iter()
                    .filter(|(m, _)| m.sender == c.user || m.recipient == c.user)
            });
            let mut expected = 0;
            for (m, _) in mine {
                expected += 1;
                let k = key(&m.sender, &m.client_msg_id);
                if count.get(&k) != Some(&1) {
                    return Err(format!(
                        "{}'s inbox on n{home} holds message {k:?} {} times",
                        c.user,
                        count.get(&k).copied().unwrap_or(0)
                    ));
                }
            }
            if inbox.len() != expected {
                return Err(format!(
                    "{}'s inbox on n{home} holds {} entries, {expected} expected",
                    c.user,
                    inbox.len()
                ));
            }
        }
        Ok(())
    }

    /// How many messages were acknowledged.
    pub(crate) fn acknowledged(&self) -> usize {
        self.clients.iter().map(|c| c.acked.len()).sum()
    }
}
