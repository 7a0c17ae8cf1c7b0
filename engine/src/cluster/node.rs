//! The node's side of the cluster: the thin adapter that runs [`Membership`] on a UDP socket,
//! turns each membership view into the owner table the cores read, and answers the questions
//! the session layer and the admin API ask about ownership.
//!
//! One dedicated thread owns the socket, the timer heap and the [`Membership`] instance
//! (membership logic stays sans-io in `membership.rs`): it blocks on the socket until the next
//! timer is due, feeds datagrams and due timers in, sends what comes out, and on every
//! [`MembershipEvent::ViewChanged`] computes the ring and publishes a new [`OwnerTable`] through
//! [`SharedOwners`]. A plain thread rather than a monoio core because gossip is a few small
//! datagrams per second and must keep its timing when the cores are busy with clients.
//!
//! `POST /cluster/drain` ([`ClusterState::request_drain`]) has the gossip thread mark this node
//! draining; the slots then move by `cluster::handoff`. Requests that would need another node
//! and that the links do not carry are refused with `UNAVAILABLE` ([`remote_refusal`]) instead
//! of being stored on the wrong node.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tern_protocol::{Body, ErrorCode, Frame, Transport};
use tern_storage::ConvKey;
use tracing::{debug, info, warn};

use super::membership::{
    next_generation, ClientAddr, Membership, MembershipConfig, MembershipEvent, MembershipStats,
    MembershipTimer, NodeId, NodeIdentity, Outputs, MAX_CLIENT_ADDRS,
};
use super::ring::{conversation_slot, AssignmentCache, Ring};
use crate::config::ClusterSettings;
use crate::metrics::{set, METRICS};
use crate::session::{Plan, SessionInfo};
use crate::slots::{Owner, OwnerTable, RemoteOwner, SharedOwners, SlotId, SLOTS};

/// The file in the data dir that keeps the node's cluster identity across restarts.
pub const IDENTITY_FILE: &str = "cluster-identity.json";

/// Longest the cluster thread blocks on its socket, so a due timer is never late by more
/// than a scheduling delay even if the heap's head was computed before a new timer arrived.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// Largest datagram read (the membership drops anything above its configured maximum).
const RECV_BUF: usize = 2048;

/// Whether this process runs a gossip thread, and whether it has said goodbye. One cluster
/// membership per process (what `ternd` runs); process-wide so that `ternd` can wait for the
/// goodbye after draining without the node handle carrying the cluster.
static GOSSIP_RUNNING: AtomicBool = AtomicBool::new(false);
static GOODBYE_SENT: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Waits (at most `timeout`) until the gossip thread has sent its goodbye after SIGTERM or
/// SIGINT, so that a node exiting right after its drain still leaves the cluster at once.
/// Returns at once when the process runs no cluster.
pub fn wait_for_goodbye(timeout: Duration) -> bool {
    if !GOSSIP_RUNNING.load(Ordering::Relaxed) {
        return true;
    }
    let (lock, cv) = &GOODBYE_SENT;
    let sent = lock.lock().unwrap_or_else(|e| e.into_inner());
    let (sent, _) = cv
        .wait_timeout_while(sent, timeout, |sent| !*sent)
        .unwrap_or_else(|e| e.into_inner());
    *sent
}

/// Why the persisted identity could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a cluster identity file ({source})")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: invalid node id {id:?}")]
    BadId { path: PathBuf, id: String },
    #[error("node id {asked:?} asked for, but this data dir belongs to node {stored:?}")]
    Mismatch { stored: String, asked: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct IdentityRecord {
    id: String,
    /// The last generation this node used (a restart starts above it).
    generation: u64,
}

/// The node's persisted cluster identity: its id (placement key of the ring) and its last
/// generation.
#[derive(Debug)]
pub struct PersistedIdentity {
    path: PathBuf,
    pub id: NodeId,
    pub last_generation: Option<u64>,
}

impl PersistedIdentity {
    /// Reads the identity of the node in `data_dir`; on first start, takes `asked` (the
    /// configured node id) or a random id. Nothing is written until [`PersistedIdentity::save`].
    pub fn load(
        data_dir: &Path,
        asked: Option<&str>,
    ) -> Result<PersistedIdentity, IdentityFileError> {
        let path = data_dir.join(IDENTITY_FILE);
        let (id, last_generation) = match std::fs::read(&path) {
            Ok(bytes) => {
                let rec: IdentityRecord =
                    serde_json::from_slice(&bytes).map_err(|source| IdentityFileError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                let id = NodeId::new(rec.id.clone()).map_err(|_| IdentityFileError::BadId {
                    path: path.clone(),
                    id: rec.id.clone(),
                })?;
                if let Some(asked) = asked.filter(|a| *a != id.as_str()) {
                    return Err(IdentityFileError::Mismatch {
                        stored: rec.id,
                        asked: asked.to_owned(),
                    });
                }
                (id, Some(rec.generation))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let id = match asked {
                    Some(a) => NodeId::new(a).map_err(|_| IdentityFileError::BadId {
                        path: path.clone(),
                        id: a.to_owned(),
                    })?,
                    None => NodeId::from_random(rand::random()),
                };
                (id, None)
            }
            Err(source) => return Err(IdentityFileError::Read { path, source }),
        };
        Ok(PersistedIdentity {
            path,
            id,
            last_generation,
        })
    }

    /// Records `generation` as the last one used (written to a temporary file, then renamed,
    /// so a crash leaves the old or the new record, never half of one).
    pub fn save(&mut self, generation: u64) -> Result<(), IdentityFileError> {
        let rec = IdentityRecord {
            id: self.id.to_string(),
            generation,
        };
        let tmp = self.path.with_extension("json.tmp");
        let write = |p: &Path, bytes: &[u8]| {
            std::fs::write(p, bytes).map_err(|source| IdentityFileError::Write {
                path: p.to_owned(),
                source,
            })
        };
        // Serialising two plain fields cannot fail.
        write(&tmp, &serde_json::to_vec(&rec).unwrap_or_default())?;
        std::fs::rename(&tmp, &self.path).map_err(|source| IdentityFileError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.last_generation = Some(generation);
        Ok(())
    }
}

/// The client-facing addresses a node advertises, in the order REDIRECT lists them: native,
/// TLS, WebSocket, HTTP tunnel (the plain HTTP listener serves the last two). A listener bound
/// to an unspecified address (0.0.0.0) is advertised with the cluster address's IP, the one
/// other nodes know this host by.
pub fn client_addrs(
    native: SocketAddr,
    tls: Option<SocketAddr>,
    http: Option<SocketAddr>,
    cluster_ip: std::net::IpAddr,
) -> Vec<ClientAddr> {
    let show = |mut a: SocketAddr| {
        if a.ip().is_unspecified() {
            a.set_ip(cluster_ip);
        }
        a.to_string()
    };
    let mut v = vec![ClientAddr {
        transport: Transport::NATIVE,
        addr: show(native),
    }];
    if let Some(a) = tls {
        v.push(ClientAddr {
            transport: Transport::TLS,
            addr: show(a),
        });
    }
    if let Some(a) = http {
        for transport in [Transport::WEBSOCKET, Transport::HTTP_TUNNEL] {
            v.push(ClientAddr {
                transport,
                addr: show(a),
            });
        }
    }
    v.truncate(MAX_CLIENT_ADDRS);
    v
}

/// The name of a transport in the admin API's JSON.
fn transport_name(t: Transport) -> String {
    match t {
        Transport::NATIVE => "native".into(),
        Transport::TLS => "tls".into(),
        Transport::WEBSOCKET => "websocket".into(),
        Transport::HTTP_TUNNEL => "http_tunnel".into(),
        other => format!("transport_{}", other.0),
    }
}

/// The low 53 bits of an epoch: what `tern_cluster_epoch` shows (exact as a float64).
pub fn epoch_gauge(epoch: u64) -> u64 {
    epoch & ((1 << 53) - 1)
}

/// The REDIRECT for a HELLO whose user `owner` serves (SPEC §REDIRECT).
pub fn redirect(request_id: u32, epoch: u64, owner: &RemoteOwner) -> Frame<'static> {
    Frame::new(
        request_id,
        Body::Redirect(tern_protocol::Redirect {
            epoch,
            addrs: owner
                .addrs
                .iter()
                .map(|(transport, addr)| tern_protocol::Addr {
                    transport: *transport,
                    addr: addr.clone().into(),
                })
                .collect(),
        }),
    )
}

/// Whether a request of an open session needs a user, conversation or room that another node
/// serves and that the node-to-node links do not carry (everything but a one-to-one SEND).
/// Such requests are refused with `UNAVAILABLE` (retry later): storing the data here would put
/// it on a node that does not own it (a second sequence authority, an inbox nobody reads).
pub fn remote_refusal(table: &OwnerTable, session: &SessionInfo, plan: &Plan) -> Option<String> {
    let user_owner = |user: &str| match table.owner_of_user(user) {
        Owner::Remote(o) => Some(o.node.clone()),
        Owner::Local(_) => None,
    };
    // Whether the request reads or writes the session user's own data, and what else it
    // needs (kind, name, the node that serves it when that is another node). Exhaustive on
    // purpose: every new kind of request has to say which slots it touches.
    let (own, other): (bool, Option<Needed>) = match plan {
        Plan::Reply(_) | Plan::Unexpected | Plan::Ignore => (false, None),
        Plan::PushAck { .. }
        | Plan::Sync { .. }
        | Plan::Contacts { .. }
        | Plan::FriendsOnly { .. }
        | Plan::RelationList { .. }
        | Plan::SetPresence { .. }
        | Plan::PushToken { .. }
        | Plan::Mute { .. } => (true, None),
        // A user's presence is kept by the node that serves them; this node watches it there
        // for its connections (`super::presence`).
        Plan::Subscribe { .. } => (false, None),
        // A one-to-one message to a user of another node is stored where its conversation
        // lives and crosses over the node-to-node links (`cluster::route`); so do a recall
        // (stored where the conversation lives, the other half through the outbox), HISTORY
        // (asked of the conversation's node) and a READ (the reader's rows are theirs; the
        // receipt crosses as a notice): `cluster::forward`.
        Plan::Append { .. } | Plan::Read { .. } | Plan::Recall { .. } | Plan::History { .. } => {
            (true, None)
        }
        // A relation with a user of another node is decided by the pair's node (`forward`).
        Plan::Relate { .. } => (true, None),
        // The server places a room at the slot of its name (like a user).
        Plan::RoomJoin { room, .. } | Plan::RoomSend { room, .. } => (
            false,
            Some(Needed::new("room", room.clone(), user_owner(room))),
        ),
        // Leaving a room this connection joined here stays here.
        Plan::RoomLeave { .. } => (false, None),
        // Ephemeral: reaches the peer's sessions on this node, if any, and is dropped
        // otherwise (nothing is stored).
        Plan::Typing { .. } => (false, None),
        // A group's timeline and rows live at the group's slot; its members' inboxes are
        // written there too, so a group is served only where its slot is (members served by
        // other nodes are not reached yet).
        Plan::Group(g) => match crate::groups::group_of(g) {
            Some(group) => {
                let conv = ConvKey::Group(group.clone());
                (
                    true,
                    Some(Needed::new(
                        "group",
                        group.as_str().to_owned(),
                        match table.owner(conversation_slot(&conv)) {
                            Owner::Remote(o) => Some(o.node.clone()),
                            Owner::Local(_) => None,
                        },
                    )),
                )
            }
            None => (true, None),
        },
        // A topic's timeline and subscriptions live at the topic's slot, like a group's.
        Plan::Topic(t) => match crate::topics::topic_of(t) {
            Some(topic) => {
                let conv = ConvKey::Topic(topic.clone());
                (
                    true,
                    Some(Needed::new(
                        "topic",
                        topic.as_str().to_owned(),
                        match table.owner(conversation_slot(&conv)) {
                            Owner::Remote(o) => Some(o.node.clone()),
                            Owner::Local(_) => None,
                        },
                    )),
                )
            }
            None => (true, None),
        },
    };
    // The session's own user: its slot moved away since HELLO (a membership change; handing
    // the session over is not implemented yet).
    if own {
        if let Some(node) = user_owner(session.user.as_str()) {
            return Some(format!(
                "user {} is now served by node {node}; reconnect",
                session.user
            ));
        }
    }
    let Needed { what, name, node } = other?;
    let node = node?;
    Some(format!(
        "{what} {name} is served by node {node}; this request between nodes is not supported yet, retry later"
    ))
}

/// What a request needs besides the session's own user.
struct Needed {
    what: &'static str,
    name: String,
    /// The node that serves it, when that is another node.
    node: Option<String>,
}

impl Needed {
    fn new(what: &'static str, name: String, node: Option<String>) -> Needed {
        Needed { what, name, node }
    }
}

/// The ERROR a refused request gets.
pub fn unavailable(request_id: u32, message: String) -> Frame<'static> {
    crate::session::error(request_id, ErrorCode::UNAVAILABLE, message)
}

// ---------------------------------------------------------------------------------------------
// The view the admin API reads
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct View {
    members: Vec<NodeIdentity>,
    ring: Ring,
    quorum: bool,
    stats: MembershipStats,
    /// Members gone away whose slots stay fenced for writes.
    absent: Vec<String>,
}

/// What the cluster thread last saw, for the admin API.
#[derive(Debug)]
pub struct ClusterState {
    me: NodeId,
    size: usize,
    bound: SocketAddr,
    view: RwLock<View>,
    /// Set by `POST /cluster/drain`: the gossip thread marks this node draining.
    drain: AtomicBool,
}

impl ClusterState {
    fn view(&self) -> View {
        // Poisoning cannot leave a half-written view: it is replaced whole.
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn publish(&self, view: View) {
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// Asks the gossip thread to drain this node (`POST /cluster/drain`): it gossips itself
    /// draining, every ring gives its slots to the other members, and it hands their data
    /// over (`handoff`). It stays a member (and serves nothing) until stopped.
    pub fn request_drain(&self) {
        self.drain.store(true, Ordering::SeqCst);
    }

    /// Whether this node was asked to drain.
    pub fn drain_requested(&self) -> bool {
        self.drain.load(Ordering::SeqCst)
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.me
    }

    /// The bound gossip address.
    pub fn bound(&self) -> SocketAddr {
        self.bound
    }

    /// The ids of the live members other than this node.
    pub fn peer_ids(&self) -> Vec<String> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        view.members
            .iter()
            .filter(|m| m.id != self.me)
            .map(|m| m.id.to_string())
            .collect()
    }

    /// The cluster address of live member `id` (its links listen on the same TCP port).
    pub fn member_addr(&self, id: &str) -> Option<SocketAddr> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        view.members
            .iter()
            .find(|m| m.id.as_str() == id)
            .map(|m| m.cluster_addr)
    }

    /// `GET /cluster/members`: this node's view.
    pub fn members_json(&self) -> serde_json::Value {
        let v = self.view();
        let members: Vec<serde_json::Value> = v
            .members
            .iter()
            .map(|m| {
                let addrs: serde_json::Map<String, serde_json::Value> = m
                    .client_addrs
                    .iter()
                    .map(|a| (transport_name(a.transport), a.addr.clone().into()))
                    .collect();
                serde_json::json!({
                    "id": m.id.as_str(),
                    "generation": m.generation,
                    "cluster_addr": m.cluster_addr.to_string(),
                    "client_addrs": addrs,
                    "draining": m.draining,
                    "slots": v.ring.slots_owned_by(&m.id),
                    "self": m.id == self.me,
                })
            })
            .collect();
        serde_json::json!({
            "node": self.me.as_str(),
            "epoch": format!("{:016x}", v.ring.epoch()),
            "alive": v.members.len(),
            "configured_size": self.size,
            "quorum": v.quorum,
            "writable": super::quorum::has_quorum(),
            "draining": self.drain_requested(),
            "handoff": super::handoff::status_json(),
            "absent": v.absent,
            "partitioned_from": super::fault::blocked_ids(),
            "gossip_dropped_unauthenticated": v.stats.dropped_unauthenticated,
            "members": members,
        })
    }

    /// `GET /cluster/owner?user=U`: the node that serves `user`.
    pub fn owner_json(&self, user: &str) -> serde_json::Value {
        let v = self.view();
        let slot = SlotId::of_user(user);
        let owner = v.ring.owner(slot);
        let addrs: serde_json::Map<String, serde_json::Value> = owner
            .map(|m| {
                m.client_addrs
                    .iter()
                    .map(|a| (transport_name(a.transport), a.addr.clone().into()))
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({
            "user": user,
            "slot": slot.0,
            "node": owner.map(|m| m.id.as_str()),
            "local": owner.is_some_and(|m| m.id == self.me),
            "epoch": format!("{:016x}", v.ring.epoch()),
            "client_addrs": addrs,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster thread
// ---------------------------------------------------------------------------------------------

/// Binds the gossip UDP socket and the link TCP listener on one address (the same port number).
/// With port 0 the UDP socket picks a port; if TCP cannot have the same number (another socket
/// holds it), both are bound again on a new one.
fn bind_gossip_and_links(addr: SocketAddr) -> anyhow::Result<(UdpSocket, std::net::TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let socket =
            UdpSocket::bind(addr).with_context(|| format!("binding cluster address {addr}"))?;
        let bound = socket.local_addr()?;
        match std::net::TcpListener::bind(bound) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return Ok((socket, l));
            }
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => {
                return Err(e).with_context(|| format!("binding the link listener on TCP {bound}"))
            }
        }
    }
    Err(anyhow::anyhow!(
        "no port free for both gossip (UDP) and links (TCP) on {}: {last_err:?}",
        addr.ip()
    ))
}

/// A bound cluster socket and a membership ready to join, before its thread starts.
#[derive(Debug)]
pub struct ClusterNode {
    socket: UdpSocket,
    /// The node-to-node link listener: TCP on the gossip address's port (taken by `links`).
    pub link_listener: Option<std::net::TcpListener>,
    membership: Membership,
    identity: PersistedIdentity,
    size: usize,
    pub state: Arc<ClusterState>,
}

impl ClusterNode {
    /// Binds the gossip socket and builds the membership: the identity's next generation is
    /// persisted before anything is sent, so a restart always starts above it.
    pub fn bind(
        settings: &ClusterSettings,
        mut identity: PersistedIdentity,
        client_addrs: Vec<ClientAddr>,
    ) -> anyhow::Result<ClusterNode> {
        if settings.bind.ip().is_unspecified() {
            anyhow::bail!(
                "--cluster {}: bind to the address other nodes reach this one at, not an unspecified address",
                settings.bind
            );
        }
        let (socket, link_listener) = bind_gossip_and_links(settings.bind)?;
        let bound = socket.local_addr()?;
        let generation = next_generation(identity.last_generation, crate::server::now_ms());
        identity
            .save(generation)
            .context("saving the cluster identity")?;
        let me = NodeIdentity::new(identity.id.clone(), generation, bound, client_addrs)
            .context("cluster identity")?;
        let membership = Membership::new(
            me.clone(),
            &settings.secret,
            MembershipConfig::lan(),
            &settings.join,
            rand::random(),
        )
        .context("cluster membership")?;
        let ring = Ring::new(membership.ring_members());
        let state = Arc::new(ClusterState {
            me: identity.id.clone(),
            size: settings.size,
            bound,
            view: RwLock::new(View {
                members: membership.live_members(),
                ring,
                quorum: membership.has_quorum(settings.size),
                stats: membership.stats(),
                absent: Vec::new(),
            }),
            drain: AtomicBool::new(false),
        });
        if settings.secret.is_dev() {
            warn!(
                "INSECURE: the cluster uses the public dev secret (--dev without --cluster-secret-file); anyone who reaches {bound} can join it and rewrite its membership"
            );
        }
        Ok(ClusterNode {
            socket,
            link_listener: Some(link_listener),
            membership,
            identity,
            size: settings.size,
            state,
        })
    }

    /// Starts the cluster thread; it publishes every new owner table to `owners` (this node's
    /// slots spread over `cores`). On SIGTERM or SIGINT (the node drains) it leaves the
    /// cluster, so the others move this node's slots at once instead of after failure
    /// detection.
    pub fn spawn(self, owners: Arc<SharedOwners>, cores: u16) -> anyhow::Result<JoinHandle<()>> {
        let leaving = Arc::new(AtomicBool::new(false));
        // A signal thread of its own (next to the node's drain handler; both see the signal):
        // it raises the flag and wakes the gossip thread, which may be blocked on its socket,
        // with an empty datagram.
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])
        .context("installing the cluster's signal handler")?;
        let flag = Arc::clone(&leaving);
        let wake_to = self.state.bound;
        std::thread::Builder::new()
            .name("tern-cluster-sig".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    flag.store(true, Ordering::Relaxed);
                    let from = SocketAddr::new(wake_to.ip(), 0);
                    if let Err(e) = UdpSocket::bind(from).and_then(|s| s.send_to(&[], wake_to)) {
                        // The gossip thread still sees the flag within MAX_WAIT.
                        debug!("cluster: cannot wake the gossip thread: {e}");
                    }
                }
            })
            .context("spawning the cluster's signal thread")?;
        GOSSIP_RUNNING.store(true, Ordering::Relaxed);
        // Writes are refused until the gossip thread has seen a quorum.
        if let Ok(table) =
            Ring::new(self.membership.ring_members()).owner_table(&self.state.me, cores)
        {
            super::quorum::install(self.size, table);
        }
        std::thread::Builder::new()
            .name("tern-cluster".into())
            .spawn(move || {
                let mut r = Runner {
                    clock: Instant::now(),
                    socket: self.socket,
                    m: self.membership,
                    identity: self.identity,
                    size: self.size,
                    state: self.state,
                    owners,
                    cores,
                    leaving,
                    cache: AssignmentCache::default(),
                    absent: super::quorum::Absent::default(),
                    timers: BinaryHeap::new(),
                    pending: HashMap::new(),
                    next_timer: 0,
                };
                r.run();
            })
            .context("spawning the cluster thread")
    }
}

struct Runner {
    clock: Instant,
    socket: UdpSocket,
    m: Membership,
    identity: PersistedIdentity,
    size: usize,
    state: Arc<ClusterState>,
    owners: Arc<SharedOwners>,
    cores: u16,
    /// Set by SIGTERM/SIGINT: leave the cluster and stop.
    leaving: Arc<AtomicBool>,
    cache: AssignmentCache,
    /// Members gone away whose slots stay theirs for writes (`quorum`).
    absent: super::quorum::Absent,
    /// Deadlines (ms on `clock`) and keys into `pending`: `MembershipTimer` has no order.
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    pending: HashMap<u64, MembershipTimer>,
    next_timer: u64,
}

impl Runner {
    /// Milliseconds on the thread's monotonic clock (wall-clock steps must not fire or stall
    /// SWIM timers). Starts at 1 so that 0 never means "now".
    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64 + 1
    }

    fn run(&mut self) {
        self.publish_view();
        let out = self.m.join(self.now());
        self.apply(out);
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            if self.leaving.load(Ordering::Relaxed) {
                info!("cluster: leaving (the node is shutting down)");
                let out = self.m.leave(self.now());
                // Only the goodbye datagrams matter now: timers and events are for a member.
                for d in out.datagrams {
                    if let Err(e) = self.socket.send_to(&d.bytes, d.to) {
                        debug!("cluster: send to {} failed: {e}", d.to);
                    }
                }
                let (lock, cv) = &GOODBYE_SENT;
                *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
                cv.notify_all();
                return;
            }
            if self.state.drain_requested() && !self.m.identity().draining {
                info!("cluster: draining (asked by the admin API); the other members take this node's slots");
                let out = self.m.drain(self.now());
                self.apply(out);
            }
            let now = self.now();
            // The lease runs out by time alone, so this is evaluated on every pass (at least
            // every MAX_WAIT), not only on a view change.
            let writable = super::quorum::writable(&self.m, &self.absent, self.size, now);
            super::handoff::note_writable(writable);
            // A fresh node takes writes once it has recorded which slots it holds (`handoff`).
            super::quorum::publish_quorum(writable && super::handoff::ready());
            while let Some(&Reverse((at, key))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                if let Some(timer) = self.pending.remove(&key) {
                    let out = self.m.handle_timer(now, timer);
                    self.apply(out);
                }
            }
            let wait = self
                .timers
                .peek()
                .map_or(MAX_WAIT, |Reverse((at, _))| {
                    Duration::from_millis(at.saturating_sub(self.now()))
                })
                .clamp(Duration::from_millis(1), MAX_WAIT);
            if let Err(e) = self.socket.set_read_timeout(Some(wait)) {
                warn!("cluster socket: cannot set a timeout: {e}");
            }
            match self.socket.recv_from(&mut buf) {
                // Fault injection (`--dev` tests): a blocked peer is never heard.
                Ok((_, from)) if super::fault::blocks_addr(&from) => {}
                Ok((n, from)) => {
                    let out = self.m.handle_datagram(self.now(), from, &buf[..n]);
                    set(
                        &METRICS.cluster_gossip_unauthenticated_total,
                        self.m.stats().dropped_unauthenticated,
                    );
                    self.apply(out);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // ICMP errors of earlier sends (a peer's port closed) surface here on some
                // systems; they say nothing SWIM's probes do not.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    warn!("cluster socket: receive failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn apply(&mut self, out: Outputs) {
        for d in out.datagrams {
            if super::fault::blocks_addr(&d.to) {
                continue;
            }
            if let Err(e) = self.socket.send_to(&d.bytes, d.to) {
                // A peer that is gone is found by SWIM, not by the send.
                debug!("cluster: send to {} failed: {e}", d.to);
            }
        }
        for t in out.timers {
            let key = self.next_timer;
            self.next_timer += 1;
            self.pending.insert(key, t.timer);
            self.timers.push(Reverse((t.at, key)));
        }
        let mut changed = false;
        for e in out.events {
            self.absent.observe(&e, &self.state.me);
            match e {
                MembershipEvent::MemberUp(id) => {
                    info!(node = %id.id, generation = id.generation, addr = %id.cluster_addr, "cluster: member up")
                }
                MembershipEvent::MemberDown(id) => {
                    info!(node = %id.id, generation = id.generation, addr = %id.cluster_addr, "cluster: member down")
                }
                MembershipEvent::MemberRenewed { old, new } => {
                    info!(node = %new.id, old = old.generation, new = new.generation, "cluster: member renewed")
                }
                MembershipEvent::Connected => info!("cluster: connected to peers"),
                MembershipEvent::Alone => warn!("cluster: no live peer"),
                MembershipEvent::IdentityRenewed(id) => {
                    info!(
                        generation = id.generation,
                        "cluster: rejoined under a new generation"
                    );
                    if let Err(e) = self.identity.save(id.generation) {
                        warn!("cluster: {e}");
                    }
                }
                MembershipEvent::Defunct => {
                    warn!("cluster: declared down and cannot rejoin (generation exhausted)")
                }
                MembershipEvent::ViewChanged { .. } => changed = true,
            }
        }
        if changed {
            self.publish_view();
        }
    }

    /// Computes the ring of the current view and publishes its owner table, the gauges and
    /// the admin view.
    fn publish_view(&mut self) {
        let ring = Ring::with_cache(self.m.ring_members(), &mut self.cache);
        // A draining node is outside the ring: every slot is another member's.
        match ring.owner_table_of(&self.state.me, self.cores) {
            Ok(table) => {
                set(&METRICS.cluster_slots_owned, table.local_slots() as u64);
                set(&METRICS.cluster_epoch, epoch_gauge(table.epoch()));
                self.owners.store(table);
            }
            // Only for an empty ring, which `ring_members` rules out (this node is live); the
            // previous table stays in force.
            Err(e) => warn!("cluster: owner table not updated: {e}"),
        }
        let live: Vec<NodeId> = self.m.live_members().into_iter().map(|m| m.id).collect();
        self.absent.retain_absent(&live);
        if let Some(table) = super::quorum::write_table(
            &self.m.ring_members(),
            &self.absent,
            &self.state.me,
            self.cores,
            &mut self.cache,
        ) {
            // Writes also wait for the slots whose data is on its way here (`handoff`).
            super::handoff::publish_home(table);
        }
        if !self.absent.is_empty() {
            info!(absent = ?self.absent.ids(), "cluster: writes to absent members' slots wait for them");
        }
        let members = self.m.live_members();
        set(&METRICS.cluster_members_alive, members.len() as u64);
        info!(
            epoch = format!("{:016x}", ring.epoch()),
            members = members.len(),
            owned = ring.slots_owned_by(&self.state.me),
            of = SLOTS,
            "cluster: view changed"
        );
        self.state.publish(View {
            members,
            ring,
            quorum: self.m.has_quorum(self.size),
            stats: self.m.stats(),
            absent: self.absent.ids(),
        });
    }
}

/// Sets the cluster gauges of a node that runs alone (no `--cluster`).
pub fn publish_single_node(table: &OwnerTable) {
    set(&METRICS.cluster_members_alive, 1);
    set(&METRICS.cluster_slots_owned, table.local_slots() as u64);
    set(&METRICS.cluster_slots_held, table.local_slots() as u64);
    set(&METRICS.cluster_epoch, epoch_gauge(table.epoch()));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_storage::{DeviceId, UserId};

    fn remote(node: &str) -> Owner {
        Owner::Remote(Arc::new(RemoteOwner {
            node: node.into(),
            addrs: vec![(Transport::NATIVE, "10.0.0.2:14000".into())],
        }))
    }

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = PersistedIdentity::load(dir.path(), None).unwrap();
        assert!(first.id.as_str().starts_with("node-"));
        assert_eq!(first.last_generation, None);
        first.save(42).unwrap();
        let again = PersistedIdentity::load(dir.path(), None).unwrap();
        assert_eq!(
            (again.id.clone(), again.last_generation),
            (first.id.clone(), Some(42))
        );
        assert!(matches!(
            PersistedIdentity::load(dir.path(), Some("other")),
            Err(IdentityFileError::Mismatch { .. })
        ));
        let named = tempfile::tempdir().unwrap();
        assert_eq!(
            PersistedIdentity::load(named.path(), Some("edge-1"))
                .unwrap()
                .id
                .as_str(),
            "edge-1"
        );
        assert!(PersistedIdentity::load(named.path(), Some("bad id")).is_err());
        std::fs::write(named.path().join(IDENTITY_FILE), b"{").unwrap();
        assert!(matches!(
            PersistedIdentity::load(named.path(), None),
            Err(IdentityFileError::Parse { .. })
        ));
    }

    #[test]
    fn advertised_addresses_replace_unspecified_ips() {
        let ip = "10.1.2.3".parse().unwrap();
        let v = client_addrs(
            "0.0.0.0:14000".parse().unwrap(),
            Some("127.0.0.1:14443".parse().unwrap()),
            Some("0.0.0.0:8080".parse().unwrap()),
            ip,
        );
        let got: Vec<(Transport, &str)> =
            v.iter().map(|a| (a.transport, a.addr.as_str())).collect();
        assert_eq!(
            got,
            [
                (Transport::NATIVE, "10.1.2.3:14000"),
                (Transport::TLS, "127.0.0.1:14443"),
                (Transport::WEBSOCKET, "10.1.2.3:8080"),
                (Transport::HTTP_TUNNEL, "10.1.2.3:8080"),
            ]
        );
    }

    #[test]
    fn requests_needing_another_node_are_refused() {
        let info = SessionInfo {
            user: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            session_id: 1,
        };
        // Everything local except bob's slot.
        let table = OwnerTable::local(2).with_owner(SlotId::of_user("bob"), remote("node-b"));
        let limits = crate::session::Limits::default();
        let send = |to: &str| {
            Frame::new(
                1,
                Body::Send(tern_protocol::Send {
                    to: tern_protocol::Conv::direct(to.to_owned()),
                    msg_id: tern_protocol::MsgId([7; 16]),
                    kind: tern_protocol::MessageKind::TEXT,
                    body: b"hi".to_vec().into(),
                }),
            )
        };
        // A SEND to a user of another node crosses the links (`cluster::route`).
        let plan = crate::session::plan(&info, &send("bob"), &limits);
        assert_eq!(remote_refusal(&table, &info, &plan), None);
        let plan = crate::session::plan(&info, &send("carol"), &limits);
        assert_eq!(remote_refusal(&table, &info, &plan), None);
        // The session's own user moved away: its writes are refused too.
        let moved = OwnerTable::local(2).with_owner(SlotId::of_user("alice"), remote("node-c"));
        let plan = crate::session::plan(&info, &send("carol"), &limits);
        assert!(remote_refusal(&moved, &info, &plan)
            .unwrap()
            .contains("node-c"));
        let relate = |other: &str| Plan::Relate {
            change: tern_storage::RelationChange {
                user: info.user.clone(),
                other: UserId::new(other).unwrap(),
                op: tern_storage::RelationOp::Follow,
            },
        };
        // A relation with a user of another node is decided by the pair's node (`forward`).
        assert_eq!(remote_refusal(&table, &info, &relate("bob")), None);
        assert_eq!(remote_refusal(&table, &info, &relate("carol")), None);
        assert_eq!(remote_refusal(&table, &info, &Plan::Ignore), None);
        assert_eq!(epoch_gauge(u64::MAX), (1 << 53) - 1);
    }
}
