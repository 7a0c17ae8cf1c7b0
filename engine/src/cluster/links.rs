//! Node-to-node links and cross-node delivery: the runtime side of [`super::wire`].
//!
//! Each node dials every other live member on the TCP port of its cluster address (the same
//! number as the gossip UDP port) and keeps that connection for its own requests: SENDs it
//! forwards to the node that assigns their conversation's sequence, and the entries of its
//! durable outbox. The node at the other end answers on the same connection. So a pair of
//! nodes holds two connections, one per direction of requests. Both ends prove the cluster
//! secret at connect and authenticate every frame ([`super::wire`]).
//!
//! All of it runs as tasks on one core's monoio runtime (core 0, "the link core"): a task per
//! peer that dials, reconnects with backoff (100 ms doubling to 5 s, with jitter) and runs the
//! connection's writer and reader; the acceptor and a task per accepted connection; a ticker
//! (every 250 ms) that resends, expires and refills. Nothing blocks: storage work goes through
//! the store's queues and is awaited, deliveries to devices go to the owning core's queue.
//!
//! # The outbox
//! The writes another node must apply (CLUSTER.md, "Writes and the durable outbox") are rows
//! of the store's `outbox` family, written in the same batch as the message. The store's commit
//! thread hands each durable batch's new entries to [`Links::note_durable`]; the link core keeps
//! the entries not yet acknowledged in memory (up to [`MEMORY_CAP`]; beyond it, and after a
//! restart, it reads them back from the store in seq order), sends each to the node that held
//! the user's data when it was written, and deletes it from the store once that node says it is
//! durable there. An entry sent and not acknowledged within [`RESEND_AFTER`], or on a
//! connection that failed, is sent again: the receiver applies by message id, so a repeat
//! writes nothing. A node that answers "not served here" makes the entry follow the ring.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};
use tern_protocol::{Body, Conv, ConvKind as WireConvKind, ErrorCode, Frame, Message};
use tern_storage::{
    AppendResult, ApplyResult, ClientMsgId, Completion, ConvKey, DeviceId, DirectMessage,
    DirectPair, MessageKind, OpError, OutboxEntry, RemoteSide, RemoteWrite, Resolver, Seq,
    SubmitError, UserId,
};
use tracing::{debug, info, warn};

use super::node::{ClusterNode, ClusterState};
use super::route::NotHere;
use super::wire::{
    self, Batch, Challenge, Hello, Item, Opener, Proof, Role, Sealer, Transcript, WireError,
    WireMessage, WireResult, WireWrite, TAG_LEN,
};
use super::ClusterSecret;
use crate::metrics::{inc, set, METRICS};
use crate::server::{CoreMsg, NodeShared, NodeStore};
use crate::slots::{Owner, OwnerTable};

/// Outbox entries held in memory at most; the rest wait in the store.
pub const MEMORY_CAP: usize = 100_000;

/// An outbox entry sent without acknowledgement for this long is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(5);

/// A forwarded SEND without an answer for this long fails with UNAVAILABLE (the client
/// retransmits it; the conversation's node de-duplicates).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshake deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Dial deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const TICK: Duration = Duration::from_millis(250);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A batch is cut at this many payload bytes or items.
const BATCH_BYTES: usize = 256 * 1024;
const BATCH_ITEMS: usize = 4096;

/// Entries read back from the store per page.
const REFILL_PAGE: usize = 512;

/// The process's links (one cluster membership per process, as for gossip: `ternd` runs one
/// node), installed by [`install`] before the cores start.
static INSTALLED: OnceLock<Arc<Links>> = OnceLock::new();

/// Sets up the links of a cluster node: takes its link listener and has the store hand every
/// durable outbox entry to them. Call once, before the cores start; [`run`] then serves them
/// on the link core.
pub fn install(
    cluster: &mut ClusterNode,
    secret: &ClusterSecret,
    store: &NodeStore,
) -> anyhow::Result<Arc<Links>> {
    let listener = cluster
        .link_listener
        .take()
        .ok_or_else(|| anyhow::anyhow!("the cluster's link listener was taken already"))?;
    let links = Links::new(
        cluster.state.node_id().to_string(),
        secret,
        Arc::clone(&cluster.state),
        listener,
    );
    super::handoff::install(store)?;
    let hook = Arc::clone(&links);
    if !store.set_outbox_hook(Box::new(move |entries| hook.note_durable(entries))) {
        anyhow::bail!("the store's outbox hook was set already");
    }
    if INSTALLED.set(Arc::clone(&links)).is_err() {
        anyhow::bail!("node-to-node links are installed once per process");
    }
    Ok(links)
}

/// The process's links, when it runs in a cluster.
pub fn installed() -> Option<&'static Arc<Links>> {
    INSTALLED.get()
}

/// Commands from other threads to the link core.
#[derive(Debug)]
enum Cmd {
    /// Store this message on node `to` (it assigns the conversation's sequence).
    Forward {
        to: String,
        msg: DirectMessage,
        resolver: Resolver<AppendResult>,
    },
    /// Outbox entries just made durable.
    Durable(Vec<OutboxEntry>),
    /// Ask node `to` (`super::forward`).
    Call {
        to: String,
        call: super::forward::Call,
        done: super::forward::Done,
    },
    /// An encoded client frame for the devices of `user` at node `to`.
    Notify {
        to: String,
        user: String,
        frame: Vec<u8>,
    },
}

/// Per-peer figures for `/metrics`.
#[derive(Debug, Clone, Default)]
struct PeerGauges {
    connected: bool,
    /// Items queued for the connection's writer.
    queue: usize,
    /// Outbox entries for this peer not yet acknowledged (sent or waiting).
    outbox: usize,
    /// Forwarded SENDs waiting for their answer.
    forwards: usize,
}

/// The node's links: shared by every thread; the work happens on the link core.
#[derive(Debug)]
pub struct Links {
    me: String,
    link_key: [u8; 32],
    cluster: Arc<ClusterState>,
    cmds: flume::Sender<Cmd>,
    rx: Mutex<Option<flume::Receiver<Cmd>>>,
    listener: Mutex<Option<std::net::TcpListener>>,
    /// The highest outbox seq known durable.
    max_known: AtomicU64,
    gauges: Mutex<BTreeMap<String, PeerGauges>>,
}

impl Links {
    /// The links of node `me`, accepting on `listener` (the cluster address's TCP port).
    pub fn new(
        me: String,
        secret: &ClusterSecret,
        cluster: Arc<ClusterState>,
        listener: std::net::TcpListener,
    ) -> Arc<Links> {
        let (tx, rx) = flume::bounded(65_536);
        Arc::new(Links {
            me,
            link_key: secret.derive_key(wire::LINK_KEY_PURPOSE),
            cluster,
            cmds: tx,
            rx: Mutex::new(Some(rx)),
            listener: Mutex::new(Some(listener)),
            max_known: AtomicU64::new(0),
            gauges: Mutex::new(BTreeMap::new()),
        })
    }

    /// Has node `to` store `msg` (a SEND of a session here whose conversation `to` serves);
    /// resolves with the result once the message is durable there and the sender's half is
    /// durable here.
    pub fn forward(self: Arc<Self>, to: String, msg: DirectMessage) -> Completion<AppendResult> {
        let (resolver, completion) = Completion::detached();
        if let Err(e) = self.cmds.try_send(Cmd::Forward { to, msg, resolver }) {
            let cmd = match e {
                flume::TrySendError::Full(c) | flume::TrySendError::Disconnected(c) => c,
            };
            if let Cmd::Forward { resolver, .. } = cmd {
                resolver.resolve(Err(OpError::Unavailable(
                    "the node-to-node link queue is full".into(),
                )));
            }
        }
        completion
    }

    /// Asks node `to`; `done` runs on the link core with the answer, or with `Unavailable`
    /// when the link is down, fails, or no answer comes within
    /// [`super::forward::CALL_TIMEOUT`].
    pub fn call(
        self: Arc<Self>,
        to: String,
        call: super::forward::Call,
        done: super::forward::Done,
    ) {
        if let Err(e) = self.cmds.try_send(Cmd::Call { to, call, done }) {
            let cmd = match e {
                flume::TrySendError::Full(c) | flume::TrySendError::Disconnected(c) => c,
            };
            if let Cmd::Call { done, .. } = cmd {
                done.run(Err(OpError::Unavailable(
                    "the node-to-node link queue is full".into(),
                )));
            }
        }
    }

    /// Sends an encoded client frame to the devices of `user` at node `to`: at most once, and
    /// not at all while the link is down (like a push to a device that is not connected).
    pub fn notify(&self, to: String, user: String, frame: Vec<u8>) {
        let _ = self.cmds.try_send(Cmd::Notify { to, user, frame });
    }

    /// Called by the store's commit thread with each durable batch's new outbox entries.
    pub fn note_durable(&self, entries: Vec<OutboxEntry>) {
        if let Some(last) = entries.last() {
            self.max_known.fetch_max(last.seq, Ordering::SeqCst);
        }
        // A full queue drops the fast path only: the entries are durable and `max_known`
        // tells the link core to read them back.
        let _ = self.cmds.try_send(Cmd::Durable(entries));
    }

    /// Per-peer gauges in the Prometheus text format (appended to `/metrics`).
    pub fn render_metrics(&self) -> String {
        let gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        let esc = |p: &str| p.replace(['"', '\\', '\n'], "_");
        type Field = fn(&PeerGauges) -> usize;
        let series: [(&str, &str, Field); 4] = [
            (
                "cluster_link_connected",
                "whether the link to the peer is up",
                |g| usize::from(g.connected),
            ),
            (
                "cluster_link_queue_depth",
                "items queued for the peer's link writer",
                |g| g.queue,
            ),
            (
                "cluster_link_outbox_entries",
                "outbox entries for the peer not yet acknowledged",
                |g| g.outbox,
            ),
            (
                "cluster_link_forwards_pending",
                "forwarded SENDs waiting for the peer's answer",
                |g| g.forwards,
            ),
        ];
        for (name, help, f) in series {
            s.push_str(&format!(
                "# HELP tern_{name} {help}\n# TYPE tern_{name} gauge\n"
            ));
            for (peer, g) in gauges.iter() {
                s.push_str(&format!("tern_{name}{{peer=\"{}\"}} {}\n", esc(peer), f(g)));
            }
        }
        s
    }

    /// The cluster's view.
    pub(super) fn cluster(&self) -> &Arc<ClusterState> {
        &self.cluster
    }

    fn take_rx(&self) -> Option<flume::Receiver<Cmd>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn take_listener(&self) -> Option<std::net::TcpListener> {
        self.listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions between storage values and wire messages
// ---------------------------------------------------------------------------------------------

fn wire_message(m: &DirectMessage) -> WireMessage {
    WireMessage {
        sender: m.sender.as_str().to_owned(),
        sender_device: m.sender_device.as_str().to_owned(),
        recipient: m.recipient.as_str().to_owned(),
        msg_id: m.client_msg_id.0,
        kind: m.kind.0,
        body: m.body.clone(),
    }
}

fn direct_message(m: WireMessage) -> Option<DirectMessage> {
    Some(DirectMessage {
        sender: UserId::new(m.sender).ok()?,
        sender_device: DeviceId::new(m.sender_device).ok()?,
        recipient: UserId::new(m.recipient).ok()?,
        client_msg_id: ClientMsgId(m.msg_id),
        kind: MessageKind(m.kind),
        body: m.body,
    })
}

fn wire_write(w: &RemoteWrite) -> WireWrite {
    WireWrite {
        side: match w.side {
            RemoteSide::Sender => 1,
            RemoteSide::Recipient => 2,
            RemoteSide::Relation => 3,
        },
        sender: w.sender.as_str().to_owned(),
        sender_device: w.sender_device.as_str().to_owned(),
        recipient: w.recipient.as_str().to_owned(),
        msg_id: w.client_msg_id.0,
        conv_seq: w.conv_seq.0,
        time_ms: w.time_ms,
        kind: w.kind.0,
        body: w.body.clone(),
    }
}

fn remote_write(w: WireWrite) -> Option<RemoteWrite> {
    Some(RemoteWrite {
        side: match w.side {
            1 => RemoteSide::Sender,
            2 => RemoteSide::Recipient,
            3 => RemoteSide::Relation,
            _ => return None,
        },
        sender: UserId::new(w.sender).ok()?,
        sender_device: DeviceId::new(w.sender_device).ok()?,
        recipient: UserId::new(w.recipient).ok()?,
        client_msg_id: ClientMsgId(w.msg_id),
        conv_seq: Seq(w.conv_seq),
        time_ms: w.time_ms,
        kind: MessageKind(w.kind),
        body: w.body,
    })
}

/// The wire code and message of a storage failure, as a client would get it.
fn refusal(e: &OpError) -> WireResult {
    let code = match crate::session::op_error(0, e).body {
        Body::Error(err) => err.code,
        _ => ErrorCode::INTERNAL,
    };
    WireResult::Refused {
        code: code.0,
        message: e.to_string(),
    }
}

/// The storage failure a forwarding node reports for a refusal from the conversation's node,
/// so that its client gets the same code.
pub(super) fn op_error_of(code: u16, message: String) -> OpError {
    match ErrorCode(code) {
        ErrorCode::BLOCKED => OpError::Blocked,
        ErrorCode::NOT_FRIEND => OpError::NotFriend,
        ErrorCode::NOT_FOUND => OpError::NotFound("recipient"),
        ErrorCode::FORBIDDEN => OpError::NotAllowed("refused by the conversation's node"),
        ErrorCode::INVALID_ARGUMENT => OpError::Invalid("refused by the conversation's node"),
        _ => OpError::Unavailable(message),
    }
}

/// The PUSH of `w` to its user's devices.
fn push_frame(w: &RemoteWrite, inbox_seq: Seq) -> Frame<'_> {
    Frame::new(
        0,
        Body::Push(Message {
            conv: Conv {
                kind: WireConvKind::DIRECT,
                id: w.peer().as_str().into(),
            },
            sender: w.sender.as_str().into(),
            sender_device: w.sender_device.as_str().into(),
            conv_seq: w.conv_seq.0,
            inbox_seq: inbox_seq.0,
            msg_id: tern_protocol::MsgId(w.client_msg_id.0),
            time: w.time_ms,
            kind: tern_protocol::MessageKind(w.kind.0),
            flags: tern_protocol::MessageFlags::NONE,
            body: w.body.as_slice().into(),
        }),
    )
}

/// Pushes `w` (a half stored here) to its user's devices here.
pub(super) fn push_write(node: &NodeShared, w: &RemoteWrite, inbox_seq: Seq) {
    deliver_local(node, w.user(), &push_frame(w, inbox_seq));
}

/// Queues `frame` for every open session of `user` on this node, through the core that
/// registers the user's sessions.
pub(super) fn deliver_local(node: &NodeShared, user: &UserId, frame: &Frame<'_>) {
    let shown = crate::tenant::outbound_for(frame, user.as_str());
    let frame = shown.as_ref().unwrap_or(frame);
    let mut buf = Vec::new();
    if frame.encode(&mut buf).is_err() {
        return;
    }
    if let Some(tx) = node.peers.get(usize::from(node.user_core(user.as_str()))) {
        let msg = CoreMsg::Deliver {
            user: Arc::from(user.as_str()),
            except: None,
            frame: Bytes::from(buf),
        };
        if tx.try_send(msg).is_err() {
            // The entry is in the inbox: the device gets it with its next SYNC.
            inc(&METRICS.core_queue_full_total);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames on a socket
// ---------------------------------------------------------------------------------------------

async fn read_n<R: AsyncReadRent>(r: &mut R, n: usize) -> std::io::Result<Vec<u8>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let buf = Vec::with_capacity(n);
    let (res, slice) = r.read_exact(buf.slice_mut(0..n)).await;
    res?;
    Ok(slice.into_inner())
}

fn invalid(e: WireError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Reads a handshake frame's payload.
async fn read_plain<R: AsyncReadRent>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let header = read_n(r, 4).await?;
    let len = wire::frame_len([header[0], header[1], header[2], header[3]]).map_err(invalid)?;
    read_n(r, len).await
}

/// Reads and authenticates a batch.
async fn read_batch<R: AsyncReadRent>(r: &mut R, opener: &mut Opener) -> std::io::Result<Batch> {
    let header = read_n(r, 4).await?;
    let len = wire::frame_len([header[0], header[1], header[2], header[3]]).map_err(invalid)?;
    let frame = read_n(r, len + TAG_LEN).await?;
    let (payload, tag) = frame.split_at(len);
    opener.open(payload, tag).map_err(invalid)?;
    wire::decode_batch(payload).map_err(invalid)
}

async fn write_all<W: AsyncWriteRent>(w: &mut W, buf: Vec<u8>) -> std::io::Result<()> {
    let (res, _) = w.write_all(buf).await;
    res.map(|_| ())
}

/// Encodes and seals `items` as one frame.
fn seal_batch(sealer: &mut Sealer, items: Vec<Item>) -> std::io::Result<Vec<u8>> {
    let mut payload = Vec::new();
    wire::encode_into(&mut payload, &Batch { items }).map_err(invalid)?;
    let mut out = Vec::with_capacity(payload.len() + 4 + TAG_LEN);
    sealer.seal(&payload, &mut out).map_err(invalid)?;
    Ok(out)
}

/// The dialer's side of the handshake; the acceptor must be `expect`.
async fn dial(
    links: &Links,
    addr: SocketAddr,
    expect: &str,
) -> std::io::Result<(TcpStream, Sealer, Opener)> {
    let mut stream = monoio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    let handshake = async {
        let nonce: [u8; 32] = rand::random();
        let hello = Hello {
            magic: wire::MAGIC,
            node: links.me.clone(),
            nonce,
        };
        write_all(&mut stream, wire::plain_frame(&hello).map_err(invalid)?).await?;
        let challenge = wire::decode_challenge(&read_plain(&mut stream).await?).map_err(invalid)?;
        let t = Transcript::new(&links.me, &nonce, &challenge.node, &challenge.nonce);
        t.verify(&links.link_key, Role::Acceptor, &challenge.proof)
            .map_err(invalid)?;
        if challenge.node != expect {
            return Err(std::io::Error::other(format!(
                "{addr} is node {}, not {expect}",
                challenge.node
            )));
        }
        let proof = Proof {
            proof: t.dialer_proof(&links.link_key),
        };
        write_all(&mut stream, wire::plain_frame(&proof).map_err(invalid)?).await?;
        Ok::<_, std::io::Error>(t.session(&links.link_key, Role::Dialer))
    };
    let (sealer, opener) = monoio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    Ok((stream, sealer, opener))
}

/// The acceptor's side of the handshake: the authenticated peer's node id.
async fn accept_handshake(
    links: &Links,
    stream: &mut TcpStream,
) -> std::io::Result<(String, Sealer, Opener)> {
    let handshake = async {
        let hello = wire::decode_hello(&read_plain(stream).await?).map_err(invalid)?;
        let nonce: [u8; 32] = rand::random();
        let t = Transcript::new(&hello.node, &hello.nonce, &links.me, &nonce);
        let challenge = Challenge {
            node: links.me.clone(),
            nonce,
            proof: t.acceptor_proof(&links.link_key),
        };
        write_all(stream, wire::plain_frame(&challenge).map_err(invalid)?).await?;
        let proof = wire::decode_proof(&read_plain(stream).await?).map_err(invalid)?;
        t.verify(&links.link_key, Role::Dialer, &proof.proof)
            .map_err(invalid)?;
        let (sealer, opener) = t.session(&links.link_key, Role::Acceptor);
        Ok::<_, std::io::Error>((hello.node, sealer, opener))
    };
    monoio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

// ---------------------------------------------------------------------------------------------
// The link core
// ---------------------------------------------------------------------------------------------

/// An outgoing link to one peer.
#[derive(Debug)]
struct Peer {
    node: String,
    queue: RefCell<VecDeque<Item>>,
    waker: RefCell<Option<Waker>>,
    /// The current connection's number; 0 while disconnected.
    conn: Cell<u64>,
    /// Set when the current connection failed (wakes the writer to end it).
    broken: Cell<bool>,
}

impl Peer {
    fn push(&self, item: Item) {
        self.queue.borrow_mut().push_back(item);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// An outbox entry not yet acknowledged.
#[derive(Debug)]
struct Pending {
    entry: Rc<OutboxEntry>,
    /// The node it goes to (the entry's destination, or the node the ring names after a "not
    /// served here").
    target: String,
    /// Sent on this connection at this time, awaiting the acknowledgement.
    sent: Option<(u64, Instant)>,
    /// Not to be sent before this (after a refusal).
    hold_until: Option<Instant>,
}

/// A forwarded SEND awaiting its answer.
#[derive(Debug)]
struct Forwarded {
    msg: DirectMessage,
    resolver: Resolver<AppendResult>,
    peer: String,
    conn: u64,
    at: Instant,
}

#[derive(Debug)]
struct Manager {
    node: Arc<NodeShared>,
    links: Arc<Links>,
    peers: RefCell<HashMap<String, Rc<Peer>>>,
    outbox: RefCell<BTreeMap<u64, Pending>>,
    /// Every entry up to this seq has been loaded (and may since have been acknowledged).
    loaded_upto: Cell<u64>,
    refilling: Cell<bool>,
    forwards: RefCell<HashMap<u64, Forwarded>>,
    /// Calls awaiting answers (`super::forward`); ids from `next_id` too.
    calls: RefCell<super::forward::Calls>,
    next_id: Cell<u64>,
    /// Acknowledged entries still to be deleted from the store.
    to_delete: RefCell<Vec<u64>>,
}

/// Runs the node's links on the current core (the link core) until the process ends.
pub async fn run(node: Arc<NodeShared>, links: Arc<Links>) {
    let (Some(rx), Some(listener)) = (links.take_rx(), links.take_listener()) else {
        return;
    };
    let m = Rc::new(Manager {
        node,
        links,
        peers: RefCell::new(HashMap::new()),
        outbox: RefCell::new(BTreeMap::new()),
        loaded_upto: Cell::new(0),
        refilling: Cell::new(false),
        forwards: RefCell::new(HashMap::new()),
        calls: RefCell::new(super::forward::Calls::default()),
        next_id: Cell::new(1),
        to_delete: RefCell::new(Vec::new()),
    });
    // What a previous run left in the outbox.
    if let Ok(c) = m.node.store.outbox_last() {
        if let Ok(last) = c.await {
            m.links.max_known.fetch_max(last, Ordering::SeqCst);
        }
    }
    match TcpListener::from_std(listener) {
        Ok(l) => {
            monoio::spawn(accept_loop(Rc::clone(&m), l));
        }
        Err(e) => warn!("cluster links: cannot register the listener: {e}"),
    }
    let ticker = Rc::clone(&m);
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(TICK).await;
            ticker.tick();
        }
    });
    m.tick();
    monoio::spawn(super::handoff::drive(
        Arc::clone(&m.node),
        Arc::clone(&m.links),
    ));
    while let Ok(cmd) = rx.recv_async().await {
        match cmd {
            Cmd::Forward { to, msg, resolver } => m.forward(to, msg, resolver),
            Cmd::Durable(entries) => m.durable(entries),
            Cmd::Call { to, call, done } => m.call(to, call, done),
            Cmd::Notify { to, user, frame } => {
                let peer = m.peer(&to);
                if peer.conn.get() != 0 {
                    peer.push(Item::Notify { user, frame });
                }
            }
        }
    }
}

impl Manager {
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// The link to `node`, started on first use.
    fn peer(self: &Rc<Self>, node: &str) -> Rc<Peer> {
        if let Some(p) = self.peers.borrow().get(node) {
            return Rc::clone(p);
        }
        let p = Rc::new(Peer {
            node: node.to_owned(),
            queue: RefCell::new(VecDeque::new()),
            waker: RefCell::new(None),
            conn: Cell::new(0),
            broken: Cell::new(false),
        });
        self.peers
            .borrow_mut()
            .insert(node.to_owned(), Rc::clone(&p));
        monoio::spawn(peer_loop(Rc::clone(self), Rc::clone(&p)));
        p
    }

    fn forward(self: &Rc<Self>, to: String, msg: DirectMessage, resolver: Resolver<AppendResult>) {
        let peer = self.peer(&to);
        let conn = peer.conn.get();
        if conn == 0 {
            resolver.resolve(Err(OpError::Unavailable(format!(
                "the conversation is served by node {to}, which this node cannot reach now"
            ))));
            return;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        peer.push(Item::Forward {
            id,
            msg: wire_message(&msg),
        });
        inc(&METRICS.cluster_forwarded_total);
        self.forwards.borrow_mut().insert(
            id,
            Forwarded {
                msg,
                resolver,
                peer: to,
                conn,
                at: self.now(),
            },
        );
    }

    fn call(self: &Rc<Self>, to: String, call: super::forward::Call, done: super::forward::Done) {
        let peer = self.peer(&to);
        let conn = peer.conn.get();
        if conn == 0 {
            done.run(Err(OpError::Unavailable(format!(
                "node {to} serves this and cannot be reached now; retry"
            ))));
            return;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        peer.push(Item::Call { id, call });
        self.calls.borrow_mut().start(id, to, conn, done);
    }

    /// The answer to a forwarded SEND: on success the sender's half is applied here before
    /// the client's SEND_ACK (its inbox seq is in the SEND_ACK).
    fn forwarded(&self, id: u64, result: WireResult) {
        let Some(f) = self.forwards.borrow_mut().remove(&id) else {
            return;
        };
        match result {
            WireResult::Refused { code, message } => {
                f.resolver.resolve(Err(op_error_of(code, message)));
            }
            WireResult::Stored {
                conv_seq,
                recipient_inbox_seq,
                time_ms,
                duplicate,
            } => {
                // The sender's slot was handed to another node meanwhile (handoff): its half
                // goes there through the conversation node's outbox; the client retransmits
                // to the new node and gets the original SEND_ACK from there.
                if !matches!(
                    super::quorum::writes_table(&self.node).owner_of_user(f.msg.sender.as_str()),
                    Owner::Local(_)
                ) {
                    f.resolver.resolve(Err(OpError::Unavailable(
                        "the sender's slot moved to another node; retry".into(),
                    )));
                    return;
                }
                let store = Arc::clone(&self.node.store);
                monoio::spawn(async move {
                    let write = RemoteWrite::of(&f.msg, RemoteSide::Sender, Seq(conv_seq), time_ms);
                    let applied = match store.apply_remote(write) {
                        Ok(c) => c.await,
                        Err(SubmitError::Busy) => {
                            Err(OpError::Unavailable("storage is busy; retry".into()))
                        }
                        Err(SubmitError::Closed) => Err(OpError::Closed),
                    };
                    f.resolver
                        .resolve(applied.map(|a: ApplyResult| AppendResult {
                            conv: ConvKey::Direct(DirectPair::new(
                                f.msg.sender.clone(),
                                f.msg.recipient.clone(),
                            )),
                            conv_seq: Seq(conv_seq),
                            sender_inbox_seq: a.inbox_seq,
                            recipient_inbox_seq: Seq(recipient_inbox_seq),
                            time_ms,
                            // Applied before by the outbox copy: its PUSH reached every device.
                            duplicate: duplicate || a.duplicate,
                        }));
                });
            }
        }
    }

    /// New durable outbox entries from the commit thread.
    fn durable(self: &Rc<Self>, entries: Vec<OutboxEntry>) {
        let contiguous = entries
            .first()
            .is_some_and(|e| e.seq == self.loaded_upto.get() + 1);
        if !contiguous || self.outbox.borrow().len() + entries.len() > MEMORY_CAP {
            // Read back from the store in order instead (`refill`).
            return;
        }
        for e in entries {
            self.loaded_upto.set(e.seq);
            self.add(e);
        }
    }

    fn add(self: &Rc<Self>, e: OutboxEntry) {
        let seq = e.seq;
        let target = e.dest_node.clone();
        self.outbox.borrow_mut().insert(
            seq,
            Pending {
                entry: Rc::new(e),
                target,
                sent: None,
                hold_until: None,
            },
        );
        self.dispatch(seq);
    }

    /// Sends entry `seq` if its target's link is up.
    fn dispatch(self: &Rc<Self>, seq: u64) {
        let target = match self.outbox.borrow().get(&seq) {
            Some(p) if p.sent.is_none() => p.target.clone(),
            _ => return,
        };
        if target == self.links.me {
            // The user's slot came here (handoff): the entry is applied here, once this node
            // holds the slot; until then it waits.
            self.apply_here(seq);
            return;
        }
        let peer = self.peer(&target);
        let conn = peer.conn.get();
        if conn == 0 {
            return;
        }
        let mut outbox = self.outbox.borrow_mut();
        let Some(p) = outbox.get_mut(&seq) else {
            return;
        };
        p.sent = Some((conn, self.now()));
        p.hold_until = None;
        peer.push(Item::Write {
            seq,
            write: wire_write(&p.entry.write),
        });
    }

    /// Applies entry `seq`, whose user this node now serves, to its own store.
    fn apply_here(self: &Rc<Self>, seq: u64) {
        let write = {
            let mut outbox = self.outbox.borrow_mut();
            let Some(p) = outbox.get_mut(&seq) else {
                return;
            };
            let table = super::quorum::writes_table(&self.node);
            if p.sent.is_some()
                || p.hold_until.is_some_and(|h| h > self.now())
                || !matches!(
                    table.owner_of_user(p.entry.write.user().as_str()),
                    Owner::Local(_)
                )
            {
                return;
            }
            // Marked sent on no connection: the resend timer retries it if this fails.
            p.sent = Some((0, self.now()));
            p.entry.write.clone()
        };
        let m = Rc::clone(self);
        monoio::spawn(async move {
            let done = match m.node.store.apply_remote(write.clone()) {
                Ok(c) => c.await,
                Err(_) => return,
            };
            match done {
                Ok(r) => {
                    if !r.duplicate {
                        inc(&METRICS.cluster_outbox_applied_total);
                        if write.side == RemoteSide::Relation {
                            if let Some(f) = super::forward::relation_notice(&write) {
                                deliver_local(&m.node, write.user(), &f);
                            }
                        } else {
                            deliver_local(&m.node, write.user(), &push_frame(&write, r.inbox_seq));
                        }
                    }
                    m.acked(vec![seq]);
                }
                Err(e) => m.not_applied(vec![seq], &format!("storage: {e}")),
            }
        });
    }

    fn acked(&self, seqs: Vec<u64>) {
        {
            let mut outbox = self.outbox.borrow_mut();
            for s in &seqs {
                outbox.remove(s);
            }
        }
        self.to_delete.borrow_mut().extend(seqs);
        self.flush_deletes();
    }

    fn flush_deletes(&self) {
        let seqs = std::mem::take(&mut *self.to_delete.borrow_mut());
        if seqs.is_empty() {
            return;
        }
        match self.node.store.outbox_done(seqs.clone()) {
            // The deletion need not be awaited: an entry that comes back after a crash is
            // sent again and applied as a duplicate (nothing written).
            Ok(c) => drop(c),
            Err(_) => self.to_delete.borrow_mut().extend(seqs),
        }
    }

    /// The peer did not apply these entries: follow the ring, retry a little later.
    fn not_applied(&self, seqs: Vec<u64>, reason: &str) {
        // The fenced table: an entry never follows the ring to a node without the user's data.
        let table = super::quorum::writes_table(&self.node);
        let later = self.now() + Duration::from_secs(1);
        let mut outbox = self.outbox.borrow_mut();
        for s in seqs {
            if let Some(p) = outbox.get_mut(&s) {
                p.sent = None;
                p.hold_until = Some(later);
                if let Some(node) = super::route::follow(&table, &p.entry.write, &p.target) {
                    debug!(seq = s, from = %p.target, to = %node, "outbox entry follows the ring ({reason})");
                    p.target = node;
                } else if matches!(
                    table.owner_of_user(p.entry.write.user().as_str()),
                    Owner::Local(_)
                ) {
                    // The user's slot was handed to this node: the entry is applied here.
                    p.target = self.links.me.clone();
                }
            }
        }
    }

    fn connected(self: &Rc<Self>, peer: &Peer) {
        let seqs: Vec<u64> = self
            .outbox
            .borrow()
            .iter()
            .filter(|(_, p)| p.target == peer.node && p.sent.is_none())
            .map(|(s, _)| *s)
            .collect();
        for s in seqs {
            self.dispatch(s);
        }
    }

    fn disconnected(&self, peer: &Peer, conn: u64) {
        peer.queue.borrow_mut().clear();
        self.calls.borrow_mut().fail(Some(conn), self.now());
        for p in self.outbox.borrow_mut().values_mut() {
            if p.sent.is_some_and(|(c, _)| c == conn) {
                p.sent = None;
            }
        }
        let failed: Vec<u64> = self
            .forwards
            .borrow()
            .iter()
            .filter(|(_, f)| f.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some(f) = self.forwards.borrow_mut().remove(&id) {
                f.resolver.resolve(Err(OpError::Unavailable(format!(
                    "the link to node {} failed; retry",
                    f.peer
                ))));
            }
        }
    }

    /// Periodic work: links to new members, resends, expiries, refills, deletions, gauges.
    fn tick(self: &Rc<Self>) {
        // Every live member gets a link before anything needs it, so that the first forwarded
        // SEND does not find it down.
        for id in self.links.cluster.peer_ids() {
            self.peer(&id);
        }
        // Fault injection: a link to a peer blocked since it came up is broken now.
        for p in self.peers.borrow().values() {
            if p.conn.get() != 0 && super::fault::blocks_node(&p.node) {
                p.broken.set(true);
                p.wake();
            }
        }
        let now = self.now();
        let due: Vec<u64> = self
            .outbox
            .borrow_mut()
            .iter_mut()
            .filter_map(|(s, p)| {
                if let Some((_, at)) = p.sent {
                    if now.duration_since(at) >= RESEND_AFTER {
                        p.sent = None;
                    } else {
                        return None;
                    }
                }
                p.hold_until.is_none_or(|h| h <= now).then_some(*s)
            })
            .collect();
        for s in due {
            self.dispatch(s);
        }
        self.calls.borrow_mut().fail(None, now);
        let expired: Vec<u64> = self
            .forwards
            .borrow()
            .iter()
            .filter(|(_, f)| now.duration_since(f.at) >= FORWARD_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(f) = self.forwards.borrow_mut().remove(&id) {
                f.resolver.resolve(Err(OpError::Unavailable(format!(
                    "node {} did not answer in time; retry",
                    f.peer
                ))));
            }
        }
        self.flush_deletes();
        if !self.refilling.get()
            && self.loaded_upto.get() < self.links.max_known.load(Ordering::SeqCst)
            && self.outbox.borrow().len() < MEMORY_CAP
        {
            self.refilling.set(true);
            monoio::spawn(refill(Rc::clone(self)));
        }
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        let mut gauges: BTreeMap<String, PeerGauges> = BTreeMap::new();
        let mut queued = 0;
        for (id, p) in self.peers.borrow().iter() {
            let g = gauges.entry(id.clone()).or_default();
            g.connected = p.conn.get() != 0;
            g.queue = p.queue.borrow().len();
            queued += g.queue;
        }
        for p in self.outbox.borrow().values() {
            gauges.entry(p.target.clone()).or_default().outbox += 1;
        }
        for f in self.forwards.borrow().values() {
            gauges.entry(f.peer.clone()).or_default().forwards += 1;
        }
        for peer in self.calls.borrow().per_peer() {
            gauges.entry(peer.to_owned()).or_default().forwards += 1;
        }
        let unloaded = self
            .links
            .max_known
            .load(Ordering::SeqCst)
            .saturating_sub(self.loaded_upto.get());
        set(
            &METRICS.cluster_outbox_entries,
            self.outbox.borrow().len() as u64 + unloaded,
        );
        set(&METRICS.cluster_link_queue_depth, queued as u64);
        set(
            &METRICS.cluster_links_connected,
            gauges.values().filter(|g| g.connected).count() as u64,
        );
        *self.links.gauges.lock().unwrap_or_else(|e| e.into_inner()) = gauges;
    }
}

/// Reads outbox entries back from the store, in seq order, until memory is full or every
/// durable entry is loaded.
async fn refill(m: Rc<Manager>) {
    loop {
        let upto = m.loaded_upto.get();
        if upto >= m.links.max_known.load(Ordering::SeqCst) || m.outbox.borrow().len() >= MEMORY_CAP
        {
            break;
        }
        let page = match m.node.store.outbox_page(upto, REFILL_PAGE) {
            Ok(c) => c.await,
            Err(_) => break,
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                warn!("cluster outbox: reading entries failed: {e}");
                break;
            }
        };
        if page.is_empty() {
            break;
        }
        for e in page {
            // Entries loaded meanwhile by the commit thread's notice are skipped.
            if e.seq <= m.loaded_upto.get() {
                continue;
            }
            m.loaded_upto.set(e.seq);
            m.add(e);
        }
    }
    m.refilling.set(false);
}

/// Dials `peer` for as long as the process runs, reconnecting with backoff.
async fn peer_loop(m: Rc<Manager>, peer: Rc<Peer>) {
    static CONNS: AtomicU64 = AtomicU64::new(1);
    let mut backoff = BACKOFF_MIN;
    loop {
        let blocked = super::fault::blocks_node(&peer.node);
        if let Some(addr) = m.links.cluster.member_addr(&peer.node).filter(|_| !blocked) {
            match dial(&m.links, addr, &peer.node).await {
                Ok((stream, sealer, opener)) => {
                    backoff = BACKOFF_MIN;
                    let conn = CONNS.fetch_add(1, Ordering::Relaxed);
                    info!(peer = %peer.node, %addr, "cluster link up");
                    inc(&METRICS.cluster_link_connects_total);
                    peer.broken.set(false);
                    peer.conn.set(conn);
                    m.connected(&peer);
                    let why = run_dialed(&m, &peer, stream, sealer, opener).await;
                    peer.conn.set(0);
                    m.disconnected(&peer, conn);
                    info!(peer = %peer.node, "cluster link down: {why}");
                }
                Err(e) => debug!(peer = %peer.node, %addr, "cluster link: {e}"),
            }
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        monoio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs one dialed connection: the writer sends the peer's queue in batches, the reader takes
/// the answers. Ends when either fails.
async fn run_dialed(
    m: &Rc<Manager>,
    peer: &Rc<Peer>,
    stream: TcpStream,
    mut sealer: Sealer,
    mut opener: Opener,
) -> String {
    let (mut rd, mut wr) = stream.into_split();
    let writer = async {
        loop {
            poll_fn(|cx| {
                if peer.broken.get() || !peer.queue.borrow().is_empty() {
                    Poll::Ready(())
                } else {
                    *peer.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            if peer.broken.get() {
                return "closed".to_owned();
            }
            let items = take_batch(&mut peer.queue.borrow_mut());
            let frame = match seal_batch(&mut sealer, items) {
                Ok(f) => f,
                Err(e) => return format!("encoding: {e}"),
            };
            if let Err(e) = write_all(&mut wr, frame).await {
                return format!("write: {e}");
            }
        }
    };
    let reader = async {
        loop {
            let batch = match read_batch(&mut rd, &mut opener).await {
                Ok(b) => b,
                Err(e) => return format!("read: {e}"),
            };
            for item in batch.items {
                match item {
                    Item::Forwarded { id, result } => m.forwarded(id, result),
                    Item::Acked { seqs } => m.acked(seqs),
                    Item::NotApplied { seqs, reason } => m.not_applied(seqs, &reason),
                    Item::Reply { id, reply } => m.calls.borrow_mut().answered(id, reply),
                    Item::Forward { .. }
                    | Item::Write { .. }
                    | Item::Call { .. }
                    | Item::Notify { .. } => return "the acceptor sent a request".to_owned(),
                }
            }
        }
    };
    let why = monoio::select! {
        w = writer => w,
        r = reader => r,
    };
    peer.broken.set(true);
    why
}

/// Takes up to one batch's worth of items off a queue.
fn take_batch(queue: &mut VecDeque<Item>) -> Vec<Item> {
    let mut items = Vec::new();
    let mut bytes = 0;
    while let Some(item) = queue.pop_front() {
        bytes += match &item {
            Item::Forward { msg, .. } => msg.body.len() + 96,
            Item::Write { write, .. } => write.body.len() + 112,
            Item::Notify { frame, .. } => frame.len() + 64,
            _ => 32,
        };
        items.push(item);
        if bytes >= BATCH_BYTES || items.len() >= BATCH_ITEMS {
            break;
        }
    }
    items
}

async fn accept_loop(m: Rc<Manager>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(serve_inbound(Rc::clone(&m), stream, from));
            }
            Err(e) => {
                warn!("cluster links: accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A request of an accepted connection whose answer is pending.
enum Answer {
    Now(Item),
    Forward {
        id: u64,
        msg: DirectMessage,
        done: Completion<AppendResult>,
    },
    Write {
        seq: u64,
        write: RemoteWrite,
        done: Completion<ApplyResult>,
    },
    Call {
        id: u64,
        reply: super::forward::Answering,
    },
}

/// Serves a connection another node dialed: its requests are submitted to the store as they
/// arrive and answered in order, each batch of answers in one frame.
async fn serve_inbound(m: Rc<Manager>, mut stream: TcpStream, from: SocketAddr) {
    let (peer, mut sealer, mut opener) = match accept_handshake(&m.links, &mut stream).await {
        Ok(x) => x,
        Err(e) => {
            inc(&METRICS.cluster_link_refused_total);
            warn!(%from, "cluster link refused: {e}");
            return;
        }
    };
    debug!(%peer, %from, "cluster link accepted");
    if super::fault::blocks_node(&peer) {
        debug!(%peer, "cluster link from a blocked peer closed (fault injection)");
        return;
    }
    let (mut rd, mut wr) = stream.into_split();
    let answers: RefCell<VecDeque<Answer>> = RefCell::new(VecDeque::new());
    let waker: RefCell<Option<Waker>> = RefCell::new(None);
    let reader = async {
        loop {
            let batch = match read_batch(&mut rd, &mut opener).await {
                Ok(b) => b,
                Err(e) => return format!("read: {e}"),
            };
            if super::fault::blocks_node(&peer) {
                return "partitioned (fault injection)".to_owned();
            }
            // Writes follow the fenced table (`quorum`).
            let table = super::quorum::writes_table(&m.node);
            for item in batch.items {
                if let Item::Notify { user, frame } = &item {
                    super::forward::notified(&m.node, &peer, user, frame);
                    continue;
                }
                let answer = m.request(&peer, &table, item);
                answers.borrow_mut().push_back(answer);
            }
            if let Some(w) = waker.borrow_mut().take() {
                w.wake();
            }
        }
    };
    let writer = async {
        loop {
            poll_fn(|cx| {
                if answers.borrow().is_empty() {
                    *waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            let mut out = Vec::new();
            let mut acked = Vec::new();
            loop {
                let next = answers.borrow_mut().pop_front();
                let Some(answer) = next else {
                    break;
                };
                match m.answer(answer).await {
                    Item::Acked { seqs } => acked.extend(seqs),
                    item => out.push(item),
                }
                if out.len() + acked.len() >= BATCH_ITEMS {
                    break;
                }
            }
            if !acked.is_empty() {
                out.push(Item::Acked { seqs: acked });
            }
            let frame = match seal_batch(&mut sealer, out) {
                Ok(f) => f,
                Err(e) => return format!("encoding: {e}"),
            };
            if let Err(e) = write_all(&mut wr, frame).await {
                return format!("write: {e}");
            }
        }
    };
    let why = monoio::select! {
        r = reader => r,
        w = writer => w,
    };
    debug!(%peer, "cluster link from peer ended: {why}");
}

impl Manager {
    /// Submits a request from node `peer`.
    fn request(&self, peer: &str, table: &OwnerTable, item: Item) -> Answer {
        let store = &self.node.store;
        match item {
            Item::Forward { id, msg } => {
                let refuse = |code: ErrorCode, message: String| {
                    Answer::Now(Item::Forwarded {
                        id,
                        result: WireResult::Refused {
                            code: code.0,
                            message,
                        },
                    })
                };
                let Some(msg) = direct_message(msg) else {
                    return refuse(ErrorCode::INVALID_ARGUMENT, "invalid message".into());
                };
                // Cut off from the majority: assign no sequence (the forwarding node's client
                // gets UNAVAILABLE and retransmits).
                match super::route::take_forward(super::quorum::has_quorum(), table, &msg) {
                    Ok(()) => {}
                    Err(NotHere::NoQuorum) => {
                        return refuse(
                            ErrorCode::NO_QUORUM,
                            "the conversation's node has no quorum; retry".into(),
                        )
                    }
                    Err(NotHere::ServedBy(node)) => {
                        return refuse(
                            ErrorCode::UNAVAILABLE,
                            format!("the conversation is now served by node {node}; retry"),
                        )
                    }
                }
                // The sender's half goes to the node that forwarded: it serves the sender.
                match store.append_routed(msg.clone(), RemoteSide::Sender, peer.to_owned()) {
                    Ok(done) => Answer::Forward { id, msg, done },
                    Err(e) => refuse(ErrorCode::OVERLOADED, format!("storage: {e}")),
                }
            }
            Item::Write { seq, write } => {
                let not_applied = |reason: String| {
                    Answer::Now(Item::NotApplied {
                        seqs: vec![seq],
                        reason,
                    })
                };
                let Some(write) = remote_write(write) else {
                    // Undecodable ids never become valid: drop it rather than retry forever.
                    warn!(%peer, seq, "cluster link: invalid outbox entry acknowledged unapplied");
                    return Answer::Now(Item::Acked { seqs: vec![seq] });
                };
                // The entry stays in the sender's outbox and comes again (never dropped).
                match super::route::take_write(super::quorum::has_quorum(), table, &write) {
                    Ok(()) => {}
                    Err(NotHere::NoQuorum) => return not_applied("no quorum here; retry".into()),
                    Err(NotHere::ServedBy(node)) => {
                        return not_applied(format!("user served by node {node}"))
                    }
                }
                match store.apply_remote(write.clone()) {
                    Ok(done) => Answer::Write { seq, write, done },
                    Err(e) => not_applied(format!("storage: {e}")),
                }
            }
            Item::Call { id, call } => Answer::Call {
                id,
                reply: super::forward::serve(Arc::clone(&self.node), peer, call),
            },
            // Taken by the reader.
            Item::Notify { .. } => Answer::Now(Item::Acked { seqs: Vec::new() }),
            Item::Forwarded { .. }
            | Item::Acked { .. }
            | Item::NotApplied { .. }
            | Item::Reply { .. } => Answer::Now(Item::NotApplied {
                seqs: Vec::new(),
                reason: "answers do not belong on this connection".into(),
            }),
        }
    }

    /// Awaits a request's storage work, delivers what it stored, and returns the answer.
    async fn answer(&self, answer: Answer) -> Item {
        match answer {
            Answer::Now(item) => item,
            Answer::Forward { id, msg, done } => match done.await {
                Ok(r) => {
                    if r.duplicate {
                        inc(&METRICS.messages_duplicate_total);
                    } else {
                        inc(&METRICS.messages_stored_total);
                        let w = RemoteWrite::of(&msg, RemoteSide::Recipient, r.conv_seq, r.time_ms);
                        deliver_local(
                            &self.node,
                            &w.recipient,
                            &push_frame(&w, r.recipient_inbox_seq),
                        );
                    }
                    Item::Forwarded {
                        id,
                        result: WireResult::Stored {
                            conv_seq: r.conv_seq.0,
                            recipient_inbox_seq: r.recipient_inbox_seq.0,
                            time_ms: r.time_ms,
                            duplicate: r.duplicate,
                        },
                    }
                }
                Err(e) => Item::Forwarded {
                    id,
                    result: refusal(&e),
                },
            },
            Answer::Call { id, reply } => Item::Reply {
                id,
                reply: reply.await,
            },
            Answer::Write { seq, write, done } => match done.await {
                Ok(r) => {
                    if !r.duplicate {
                        inc(&METRICS.cluster_outbox_applied_total);
                        if write.side == RemoteSide::Relation {
                            if let Some(f) = super::forward::relation_notice(&write) {
                                deliver_local(&self.node, write.user(), &f);
                            }
                        } else {
                            deliver_local(
                                &self.node,
                                write.user(),
                                &push_frame(&write, r.inbox_seq),
                            );
                        }
                    }
                    Item::Acked { seqs: vec![seq] }
                }
                Err(e) => Item::NotApplied {
                    seqs: vec![seq],
                    reason: format!("storage: {e}"),
                },
            },
        }
    }
}
