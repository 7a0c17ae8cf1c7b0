//! The monoio adapter: one runtime per core, accepts spread over cores by SO_REUSEPORT, one task
//! per connection, and the cross-core plumbing that registers sessions at the core owning their
//! slot and routes deliveries there.
//!
//! Everything that decides something lives elsewhere — [`crate::conn`] (lifecycle and timers),
//! [`crate::session`] (request rules), [`crate::auth`] (tokens), [`crate::slots`] (ownership).
//! This module only moves bytes, awaits storage completions and reads the clock.
//!
//! # Density
//! An idle connection parks on socket readiness (`readable()`: a PollAdd under io_uring, the
//! epoll readiness otherwise) without a read buffer. When bytes arrive it borrows a buffer from
//! its core's [`BufPool`], decodes and handles every complete frame, keeps only the bytes of an
//! incomplete frame, and gives the buffer back. Request handling is boxed, so the future an idle
//! connection keeps is only the wait itself (`connection_future_is_small` prints its size).
//!
//! # Delivery across cores
//! A user's sessions are registered at the core that owns the user's slot ([`OwnerTable`]).
//! A delivery goes to that core (`Deliver`), which forwards it to the core of every session
//! (`Push`), which queues it on the connection. The queues between cores are bounded flume
//! channels (`recv_async` works across runtimes; monoio's `sync` feature makes its wakers
//! thread-safe); per-core state is `Rc`/`RefCell` without locks.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use monoio::io::AsyncReadRent;
use monoio::net::{TcpListener, TcpStream};
use tern_protocol::{
    decode, Body, Capabilities, Close, CloseReason, ErrorCode, Frame, Hello, Welcome,
    DEFAULT_MAX_BODY, HEADER_LEN, MIN_MAX_BODY, PROTOCOL,
};
use tern_storage::{
    AppendResult, Completion, DeviceId, DirectMessage, MarkRead, PositionUpdate, Recall,
    RecentCursor, RocksEngine, Seq, Store, StoreConfig, SubmitError, SystemClock, UserId,
};
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Authenticator};
use crate::config::{AuthKey, IoDriver, Settings};
use crate::conn::{classify, Conn, Effect, State, Timers, Trigger};
use crate::front::{ListenerKind, Opened};
use crate::link::{Down, Link, Read, TunnelShared};
use crate::metrics::{dec, inc, METRICS};
use crate::pool::BufPool;
use crate::rooms::{Post, Posted, RateLimit, Room, RoomConfig, RoomMsg};
use crate::session::{self, Delivery, Limits, Plan, SessionInfo};
use crate::slots::{Owner, OwnerTable, SharedOwners, SlotId};
use crate::transport::proxy::Cidr;
use crate::transport::tls::{self as tls, Reloadable};

mod group_serve;
mod notify;
mod topic_serve;
pub use notify::Hooks;

/// The store a node serves from.
pub type NodeStore = Store<RocksEngine>;

/// Capabilities this node serves.
const SERVED_CAPABILITIES: Capabilities = Capabilities(
    Capabilities::RECEIPTS.0
        | Capabilities::TYPING.0
        | Capabilities::PRESENCE.0
        | Capabilities::ROOMS.0
        | Capabilities::RELATIONS.0
        | Capabilities::GROUPS.0
        | Capabilities::TOPICS.0
        | Capabilities::PUSH.0,
);

/// Bytes of a pooled I/O buffer.
const POOL_BUF: usize = 16 * 1024;

/// How often a core checks its connections' deadlines.
const SWEEP_INTERVAL: Duration = Duration::from_millis(200);

/// How long a draining core waits for its connections to close.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Messages a core's inbound queue holds before senders see it full.
const CORE_QUEUE: usize = 65_536;

/// Milliseconds since the Unix epoch: the only clock of the node.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A connection, named across cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub core: u16,
    pub id: u32,
}

impl ConnRef {
    /// The session id sent in WELCOME: core and connection number.
    pub fn session_id(self) -> u64 {
        (u64::from(self.core) << 32) | u64::from(self.id)
    }

    pub fn from_session_id(id: u64) -> ConnRef {
        ConnRef {
            core: (id >> 32) as u16,
            id: id as u32,
        }
    }
}

/// Messages between cores.
#[derive(Debug)]
pub enum CoreMsg {
    /// To the slot owner: a session of `user` opened.
    Register {
        user: Arc<str>,
        device: Arc<str>,
        conn: ConnRef,
    },
    /// To the slot owner: a session closed.
    Unregister { user: Arc<str>, conn: ConnRef },
    /// To the slot owner: send `frame` to every session of `user` except one.
    Deliver {
        user: Arc<str>,
        except: Option<ConnRef>,
        frame: Bytes,
    },
    /// To a connection's core: queue `frame` on it.
    Push { conn: ConnRef, frame: Bytes },
    /// To a connection's core: close it.
    Kick { conn: ConnRef, reason: CloseReason },
    /// To every core: stop accepting, close every connection with CLOSE DRAIN.
    Drain,
    /// To every core: these slots were handed to another node (`cluster::handoff`); close
    /// their users' sessions registered here with CLOSE REDIRECT.
    SlotsMoved {
        slots: Arc<std::collections::HashSet<u16>>,
    },
    /// To the slot owner: one of the user's devices chose a presence.
    PresenceSet {
        user: Arc<str>,
        status: tern_protocol::PresenceStatus,
        text: String,
    },
    /// To the slot owner of `user`: `conn` subscribes to (or leaves) the user's presence.
    PresenceWatch {
        user: Arc<str>,
        conn: ConnRef,
        add: bool,
    },
    /// To the slot owner: node `node` starts, renews or ends watching the user's presence.
    PresenceNodeWatch {
        user: Arc<str>,
        node: String,
        add: bool,
    },
    /// To the core of a remote user's slot: the user's node sent their presence.
    PresenceRemote {
        user: Arc<str>,
        shown: crate::presence::Shown,
    },
    /// To the slot owner of the note's user: a message was stored for them; notify the push
    /// hook if none of their devices is online.
    Offline { note: Box<crate::push::PushNote> },
    /// To a room's owner: a member joins on `core`; the reply has the `recent` last messages.
    RoomJoin {
        room: Arc<str>,
        core: u16,
        recent: usize,
        reply: flume::Sender<Result<(Vec<RoomMsg>, bool), ErrorCode>>,
    },
    /// To a room's owner: a member on `core` left (or its connection ended).
    RoomLeave { room: Arc<str>, core: u16 },
    /// To a room's owner: number and fan out a message.
    RoomPost {
        room: Arc<str>,
        post: Post,
        except: ConnRef,
        reply: flume::Sender<Result<Posted, ErrorCode>>,
    },
    /// To a core with members of a room: queue the encoded PUSH on each of them (one message
    /// per core, one buffer for all its members).
    RoomFanout {
        room: Arc<str>,
        frame: Bytes,
        except: ConnRef,
    },
    /// To a tunnel session's core: an `up` body; the reply is the HTTP status.
    TunnelUp {
        conn: u32,
        secret: [u8; 16],
        n: u64,
        body: Bytes,
        reply: flume::Sender<u16>,
    },
    /// To a tunnel session's core: attach a downstream poller.
    TunnelPoll {
        conn: u32,
        secret: [u8; 16],
        reply: flume::Sender<Down>,
    },
    /// To a tunnel session's core: release the poller `reply` if it still waits.
    TunnelCancel {
        conn: u32,
        secret: [u8; 16],
        reply: flume::Sender<Down>,
    },
    /// To a tunnel session's core: 200 if the session is live, 403 if not.
    TunnelCheck {
        conn: u32,
        secret: [u8; 16],
        reply: flume::Sender<u16>,
    },
    /// To a tunnel session's core: the client ends the session.
    TunnelClose {
        conn: u32,
        secret: [u8; 16],
        reply: flume::Sender<u16>,
    },
}

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub timers: Timers,
    pub outbound_queue: usize,
    pub max_frame: u32,
    pub node_id: String,
    pub limits: Limits,
    pub rooms: RoomConfig,
    /// Topic settings and the per-user publish rate, shared by every core.
    pub topics: Arc<crate::topics::TopicService>,
}

/// What every core shares.
#[derive(Debug)]
pub struct NodeShared {
    pub store: Arc<NodeStore>,
    /// The TLS certificate, when a TLS listener runs.
    pub tls: Option<Arc<Reloadable>>,
    /// Sources allowed to send PROXY protocol headers.
    pub proxy_trusted: Vec<Cidr>,
    pub auth: Authenticator,
    /// Slot owners; the cluster thread replaces the table when the membership changes.
    pub owners: Arc<SharedOwners>,
    pub peers: Vec<flume::Sender<CoreMsg>>,
    pub cfg: ConnConfig,
    /// The push hook and the content filter, when configured.
    pub hooks: Hooks,
}

impl NodeShared {
    /// The core that registers `user`'s sessions and keeps their presence: the core owning
    /// the user's slot, or, when another node owns it, the core the slot has on this node
    /// (sessions registered before ownership moved, subscriptions to the remote user).
    pub(crate) fn user_core(&self, user: &str) -> u16 {
        match self.owners.load().owner_of_user(user) {
            Owner::Local(c) => c.0,
            Owner::Remote(_) => {
                OwnerTable::home_core(SlotId::of_user(user), self.peers.len() as u16).0
            }
        }
    }
}

/// The part of a connection other tasks of its core touch: the outbound queue and the kick.
#[derive(Debug, Default)]
pub struct ConnShared {
    queue: RefCell<PushQueue>,
    kick: Cell<Option<CloseReason>>,
    waiter: RefCell<Waiter>,
    /// When the connection last moved bytes (ms since the epoch): it parks after
    /// `Timers::park_ms` without traffic.
    active_ms: Cell<u64>,
    /// The connection's next timer deadline (ms since the epoch, 0: none), checked by the
    /// core's sweeper so that an idle connection does not keep a timer of its own.
    deadline_ms: Cell<u64>,
    /// Set by the sweeper when `deadline_ms` has passed.
    timer_due: Cell<bool>,
    /// Set when a tunnel session has upstream bytes (a socket's readiness says it otherwise).
    input: Cell<bool>,
}

/// Frames waiting for a connection's task. Boxed and dropped when the connection parks: an idle
/// connection then keeps 8 bytes here instead of a deque's 32 and the buffer its last burst
/// grew.
// The extra allocation clippy warns of is only made while frames wait; the box is what keeps
// an idle connection's share at one pointer.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
struct PushQueue(Option<Box<VecDeque<Bytes>>>);

impl PushQueue {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, frame: Bytes) {
        self.0.get_or_insert_with(Box::default).push_back(frame);
    }

    fn front(&self) -> Option<&Bytes> {
        self.0.as_ref()?.front()
    }

    fn pop_front(&mut self) -> Option<Bytes> {
        self.0.as_mut()?.pop_front()
    }

    /// Drops everything, the allocation included.
    fn clear(&mut self) {
        self.0 = None;
    }

    /// Gives back the allocation if nothing waits.
    fn release(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

/// What a connection that waits for something left behind to be woken with.
#[derive(Default)]
enum Waiter {
    #[default]
    None,
    /// Its task, waiting in `ConnShared::notified`.
    Task(Waker),
    /// Its whole state: the connection is parked ([`crate::park`]) and has no task.
    Parked(Box<Connection>),
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Waiter::None => "None",
            Waiter::Task(_) => "Task",
            Waiter::Parked(_) => "Parked",
        })
    }
}

impl ConnShared {
    /// Marks input ready (tunnel sessions) and wakes the connection.
    pub fn wake_input(&self) {
        self.input.set(true);
        self.wake();
    }

    /// Wakes the connection's task, or gives a parked connection a task again.
    fn wake(&self) {
        let waiter = std::mem::take(&mut *self.waiter.borrow_mut());
        match waiter {
            Waiter::None => {}
            Waiter::Task(w) => w.wake(),
            Waiter::Parked(c) => c.unpark(),
        }
    }

    /// Keeps a parked connection's state until something wakes it.
    fn park(&self, c: Box<Connection>) {
        *self.waiter.borrow_mut() = Waiter::Parked(c);
    }

    /// Queues a frame; a full queue marks the connection a slow consumer (it is closed, the
    /// messages stay in the inbox for its next SYNC).
    fn enqueue(&self, frame: Bytes, cap: usize) {
        if self.kick.get().is_some() {
            return;
        }
        let mut q = self.queue.borrow_mut();
        if q.len() >= cap {
            q.clear();
            drop(q);
            inc(&METRICS.slow_consumers_total);
            self.kick.set(Some(CloseReason::SLOW_CONSUMER));
        } else {
            q.push_back(frame);
            drop(q);
        }
        self.wake();
    }

    fn kick(&self, reason: CloseReason) {
        if self.kick.get().is_none() {
            self.kick.set(Some(reason));
        }
        self.wake();
    }

    /// Resolves when the connection is kicked.
    async fn kicked(&self) {
        poll_fn(|cx| {
            if self.kick.get().is_some() {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Waiter::Task(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Marks the timer due if the deadline has passed; `true` if it did.
    fn sweep(&self, now_ms: u64) -> bool {
        let d = self.deadline_ms.get();
        if d != 0 && d <= now_ms && !self.timer_due.get() {
            self.timer_due.set(true);
            self.wake();
            return true;
        }
        false
    }

    /// Resolves when something is queued, the connection is kicked or its timer is due.
    async fn notified(&self) {
        poll_fn(|cx| {
            if self.kick.get().is_some()
                || self.timer_due.get()
                || self.input.get()
                || !self.queue.borrow().is_empty()
            {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Waiter::Task(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

#[derive(Debug)]
struct Registration {
    device: Arc<str>,
    conn: ConnRef,
}

/// One core: its connections, the sessions of the slots it owns, its buffer pool.
#[derive(Debug)]
pub struct Core {
    pub(crate) id: u16,
    pub(crate) node: Arc<NodeShared>,
    conns: RefCell<crate::conns::ConnTable>,
    sessions: RefCell<HashMap<Arc<str>, Vec<Registration>>>,
    /// HTTP tunnel sessions of this core, by connection id.
    pub(crate) tunnels: RefCell<HashMap<u32, Rc<TunnelShared>>>,
    /// Rooms whose slot this core owns.
    rooms: RefCell<HashMap<Arc<str>, Room>>,
    /// This core's connections joined to each room (connection ids).
    room_members: RefCell<HashMap<Arc<str>, Vec<u32>>>,
    /// Presence of the users whose slots this core owns.
    presence: RefCell<crate::presence::Book>,
    /// Other nodes watching the presence of this core's users (`cluster::presence`).
    node_watchers: RefCell<crate::cluster::presence::NodeWatchers>,
    /// Users of other nodes watched by connections here, at their slot's core.
    watched: RefCell<crate::cluster::presence::Watched>,
    /// Set once the node drains: accepts stop, connections close.
    draining: Cell<bool>,
    /// Wakes `core_main` when draining starts.
    drained: RefCell<Option<Waker>>,
    pub(crate) pool: BufPool,
    /// Where frames for other connections are encoded before being copied out at their exact
    /// size: encoding into a fresh vector grows it several times per frame.
    scratch: RefCell<Vec<u8>>,
    /// Where idle native connections wait without a task; `None` when parking is off
    /// (`park_ms` 0) or the epoll instance could not be made.
    parking: Option<crate::park::Parking>,
}

impl Core {
    pub fn new(id: u16, node: Arc<NodeShared>) -> Core {
        let parking = if node.cfg.timers.park_ms > 0 {
            crate::park::Parking::new()
                .map_err(|e| tracing::warn!("core {id}: idle connections cannot park: {e}"))
                .ok()
        } else {
            None
        };
        Core {
            id,
            node,
            conns: RefCell::default(),
            sessions: RefCell::new(HashMap::new()),
            tunnels: RefCell::new(HashMap::new()),
            rooms: RefCell::new(HashMap::new()),
            room_members: RefCell::new(HashMap::new()),
            presence: RefCell::new(crate::presence::Book::default()),
            node_watchers: RefCell::default(),
            watched: RefCell::default(),
            draining: Cell::new(false),
            drained: RefCell::new(None),
            pool: BufPool::new(POOL_BUF, 64),
            scratch: RefCell::new(Vec::with_capacity(1024)),
            parking,
        }
    }

    fn owner_core(&self, user: &str) -> u16 {
        self.node.user_core(user)
    }

    /// Sends a message to a core; to this one it is handled at once.
    fn route(&self, core: u16, msg: CoreMsg) {
        if core == self.id {
            self.handle(msg);
            return;
        }
        let Some(tx) = self.node.peers.get(usize::from(core)) else {
            return;
        };
        if let Err(flume::TrySendError::Full(_)) = tx.try_send(msg) {
            // A dropped push is not a lost message: it is in the inbox, the device syncs it.
            inc(&METRICS.core_queue_full_total);
        }
    }

    /// Whether `core` is one of this node's cores.
    pub(crate) fn has_core(&self, core: u16) -> bool {
        core == self.id || usize::from(core) < self.node.peers.len()
    }

    /// Sends a message that needs its reply: `false` if the core does not exist or its queue
    /// is full (the caller answers "unavailable" instead of waiting forever).
    pub(crate) fn send_to(&self, core: u16, msg: CoreMsg) -> bool {
        if core == self.id {
            self.handle(msg);
            return true;
        }
        match self.node.peers.get(usize::from(core)) {
            Some(tx) => tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// Handles a message from a core (this one included).
    pub fn handle(&self, msg: CoreMsg) {
        match msg {
            CoreMsg::Register { user, device, conn } => {
                let mut replaced = Vec::new();
                {
                    let mut sessions = self.sessions.borrow_mut();
                    // Most users have one device online: room for one, not the four a first push reserves.
                    let regs = sessions
                        .entry(Arc::clone(&user))
                        .or_insert_with(|| Vec::with_capacity(1));
                    //= SPEC.md#close
                    //# A new session of the same user and device replaces the old one (REPLACED).
                    regs.retain(|r| {
                        let same = r.device == device && r.conn != conn;
                        if same {
                            replaced.push(r.conn);
                        }
                        !same
                    });
                    regs.push(Registration { device, conn });
                }
                for old in replaced {
                    self.route(
                        old.core,
                        CoreMsg::Kick {
                            conn: old,
                            reason: CloseReason::REPLACED,
                        },
                    );
                }
                self.presence_devices(&user);
            }
            CoreMsg::Unregister { user, conn } => {
                {
                    let mut sessions = self.sessions.borrow_mut();
                    if let Some(regs) = sessions.get_mut(&user) {
                        regs.retain(|r| r.conn != conn);
                        if regs.is_empty() {
                            sessions.remove(&user);
                        }
                    }
                }
                self.presence_devices(&user);
            }
            CoreMsg::Deliver {
                user,
                except,
                frame,
            } => {
                // Pushing never touches `sessions`, so the borrow can span the loop; the last
                // target takes the frame itself, so a user with one device costs no clone.
                let sessions = self.sessions.borrow();
                let mut targets = sessions
                    .get(&user)
                    .into_iter()
                    .flatten()
                    .map(|r| r.conn)
                    .filter(|c| Some(*c) != except)
                    .peekable();
                let mut frame = Some(frame);
                while let Some(conn) = targets.next() {
                    let frame = match targets.peek() {
                        Some(_) => frame.clone(),
                        None => frame.take(),
                    };
                    let Some(frame) = frame else { break };
                    self.route(conn.core, CoreMsg::Push { conn, frame });
                }
            }
            CoreMsg::Push { conn, frame } => {
                let shared = self.conns.borrow().get(conn.id).cloned();
                if let Some(shared) = shared {
                    inc(&METRICS.pushes_total);
                    shared.enqueue(frame, self.node.cfg.outbound_queue);
                }
            }
            CoreMsg::Kick { conn, reason } => {
                let shared = self.conns.borrow().get(conn.id).cloned();
                if let Some(shared) = shared {
                    shared.kick(reason);
                }
            }
            CoreMsg::RoomJoin {
                room,
                core,
                recent,
                reply,
            } => {
                let cap = self.node.cfg.rooms.member_cap;
                let mut rooms = self.rooms.borrow_mut();
                let r = rooms.entry(room).or_default();
                let res = r.join(core, cap).map(|()| r.recent(recent));
                let _ = reply.try_send(res);
            }
            CoreMsg::RoomLeave { room, core } => {
                let mut rooms = self.rooms.borrow_mut();
                if rooms.get_mut(&room).is_some_and(|r| r.leave(core)) {
                    rooms.remove(&room);
                }
            }
            CoreMsg::RoomPost {
                room,
                post,
                except,
                reply,
            } => {
                let window = self.node.cfg.rooms.window;
                let mut fanout = Vec::new();
                let res = match self.rooms.borrow_mut().get_mut(&room) {
                    None => Err(ErrorCode::NOT_FOUND),
                    Some(r) => {
                        let posted = r.post(post, now_ms(), window);
                        if !posted.duplicate {
                            let frame = crate::rooms::push_bytes(&room, &posted.msg);
                            fanout.extend(r.cores().map(|c| (c, frame.clone())));
                        }
                        Ok(posted)
                    }
                };
                for (core, frame) in fanout {
                    self.route(
                        core,
                        CoreMsg::RoomFanout {
                            room: Arc::clone(&room),
                            frame,
                            except,
                        },
                    );
                }
                let _ = reply.try_send(res);
            }
            CoreMsg::RoomFanout {
                room,
                frame,
                except,
            } => {
                let cap = self.node.cfg.outbound_queue;
                let members = self.room_members.borrow();
                let conns = self.conns.borrow();
                for id in members.get(&room).into_iter().flatten() {
                    if except.core == self.id && except.id == *id {
                        continue;
                    }
                    if let Some(c) = conns.get(*id) {
                        inc(&METRICS.room_deliveries_total);
                        c.enqueue(frame.clone(), cap);
                    }
                }
            }
            CoreMsg::Drain => {
                self.draining.set(true);
                let conns: Vec<Rc<ConnShared>> = self.conns.borrow().values().cloned().collect();
                for c in conns {
                    c.kick(CloseReason::DRAIN);
                }
                if let Some(w) = self.drained.borrow_mut().take() {
                    w.wake();
                }
            }
            CoreMsg::SlotsMoved { slots } => {
                let moved: Vec<ConnRef> = self
                    .sessions
                    .borrow()
                    .iter()
                    .filter(|(user, _)| slots.contains(&crate::slots::SlotId::of_user(user).0))
                    .flat_map(|(_, regs)| regs.iter().map(|r| r.conn))
                    .collect();
                for conn in moved {
                    self.route(
                        conn.core,
                        CoreMsg::Kick {
                            conn,
                            reason: CloseReason::REDIRECT,
                        },
                    );
                }
            }
            CoreMsg::PresenceSet { user, status, text } => self.presence_set(&user, status, text),
            CoreMsg::PresenceWatch { user, conn, add } => self.presence_watch(&user, conn, add),
            CoreMsg::PresenceNodeWatch { user, node, add } => {
                self.presence_node_watch(&user, node, add)
            }
            CoreMsg::PresenceRemote { user, shown } => self.presence_remote(&user, shown),
            CoreMsg::Offline { note } => self.offline(*note),
            tunnel @ (CoreMsg::TunnelUp { .. }
            | CoreMsg::TunnelPoll { .. }
            | CoreMsg::TunnelCancel { .. }
            | CoreMsg::TunnelCheck { .. }
            | CoreMsg::TunnelClose { .. }) => crate::tunnel::handle(self, tunnel),
        }
    }

    /// Routes a delivery to the core owning the user's slot.
    fn deliver(&self, d: Delivery) {
        // A user another node serves gets it there too (`cluster::forward`).
        crate::cluster::forward::deliver_remote(&self.node, &d);
        self.push_to(&d.user, d.except_session, &d.frame);
    }

    /// Sends `frame` to every session of `user` (but `except`), through the core that owns the
    /// user's slot.
    fn push_to(&self, user: &UserId, except: Option<u64>, frame: &Frame<'_>) {
        let shown = crate::tenant::outbound_for(frame, user.as_str());
        let frame = shown.as_ref().unwrap_or(frame);
        let frame = {
            let mut scratch = self.scratch.borrow_mut();
            scratch.clear();
            if frame.encode(&mut scratch).is_err() {
                return;
            }
            Bytes::copy_from_slice(&scratch)
        };
        let user: Arc<str> = Arc::from(user.as_str());
        let owner = self.owner_core(&user);
        let except = except.map(ConnRef::from_session_id);
        self.route(
            owner,
            CoreMsg::Deliver {
                user,
                except,
                frame,
            },
        );
    }

    /// Fires the due timers of this core's connections. One pass over the connections per
    /// [`SWEEP_INTERVAL`] replaces a timer per connection: idle connections stay small, and
    /// timeouts are precise to the interval, which is plenty for seconds-long timers.
    pub fn sweep(&self, now_ms: u64) -> usize {
        self.conns
            .borrow()
            .values()
            .filter(|c| c.sweep(now_ms))
            .count()
    }

    /// Takes connection `id` out of a room's members on this core.
    fn drop_room_member(&self, room: &Arc<str>, id: u32) {
        let mut members = self.room_members.borrow_mut();
        if let Some(v) = members.get_mut(room) {
            v.retain(|c| *c != id);
            if v.is_empty() {
                members.remove(room);
            }
        }
    }

    /// Sends a room request to the room's owner and awaits its one answer; OVERLOADED when the
    /// owner's queue is full.
    async fn ask_room_owner<T>(
        &self,
        room: &str,
        msg: CoreMsg,
        rx: flume::Receiver<Result<T, ErrorCode>>,
    ) -> Result<T, ErrorCode> {
        if !self.send_to(self.owner_core(room), msg) {
            return Err(ErrorCode::OVERLOADED);
        }
        rx.recv_async().await.unwrap_or(Err(ErrorCode::OVERLOADED))
    }

    /// Takes connection `id` out of a room's local members and tells the room's owner.
    fn leave_room(&self, room: Arc<str>, id: u32) {
        self.drop_room_member(&room, id);
        let owner = self.owner_core(&room);
        self.route(
            owner,
            CoreMsg::RoomLeave {
                room,
                core: self.id,
            },
        );
    }

    /// A new connection id (see [`crate::conns`]); `None` when the core has no slot left.
    pub(crate) fn alloc_id(&self) -> Option<u32> {
        self.conns.borrow_mut().alloc_id()
    }
}

/// An authenticated session; boxed, so a connection awaiting HELLO does not pay for it.
#[derive(Debug)]
/// A SEND submitted to storage whose SEND_ACK is still to be sent.
struct PendingSend {
    rid: u32,
    msg: DirectMessage,
    submitted: Result<Completion<AppendResult>, SubmitError>,
}

/// A SEND to a room whose post is with the room's owner core, or its refusal.
struct PendingRoom {
    rid: u32,
    msg_id: tern_protocol::MsgId,
    asked: Result<flume::Receiver<Result<Posted, ErrorCode>>, (ErrorCode, &'static str)>,
}

struct Session {
    info: SessionInfo,
    /// Largest body the client accepts (HELLO.max_frame, raised to the protocol minimum).
    max_out: u32,
    /// Rooms joined on this connection; allocated on the first join.
    seat: Option<Box<Seat>>,
    /// Capabilities negotiated in HELLO/WELCOME.
    caps: Capabilities,
    /// The connection's place in its tenant's limits (a configured tenant only).
    tenant: Option<crate::tenant::TenantSeat>,
}

/// What a session needs once it uses rooms or typing: kept out of the common session so an idle
/// connection does not pay for it.
#[derive(Debug, Default)]
struct Seat {
    rooms: Vec<Arc<str>>,
    /// Read-diffused group positions the last SYNC_PAGE handed out, recorded once the device
    /// shows it holds them (`group_serve`).
    group_pulled: Vec<(tern_storage::GroupId, Seq)>,
    /// The same for topics (`topic_serve`).
    topic_pulled: Vec<(tern_storage::TopicId, Seq)>,
    limit: RateLimit,
    typing: RateLimit,
    /// Users whose presence this connection subscribed to.
    watching: Vec<Arc<str>>,
}

enum Event {
    Readable(bool),
    Notified,
}

/// One connection's task state.
struct Connection {
    core: Rc<Core>,
    link: Link,
    shared: Rc<ConnShared>,
    me: ConnRef,
    conn: Conn,
    session: Option<Box<Session>>,
    /// Bytes of an incomplete frame; empty (no allocation) between frames.
    partial: Vec<u8>,
    /// The peer closed its side: nothing to drain when we close.
    peer_closed: bool,
    /// `run` returned to park the connection, not because it ended.
    parking: bool,
    /// Parking failed once (the epoll registration): this connection keeps its task.
    park_off: bool,
}

/// An accepted socket on its way through the front door.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub kind: ListenerKind,
}

/// Serves one accepted connection to its end: the front door decides its transport, then it
/// runs as a connection (or was served there: tunnel requests, refusals).
///
/// The socket comes boxed and the connection goes to the heap, so the future an idle
/// connection keeps holds neither twice (a future keeps room for its arguments and for every
/// local that lives across an await).
pub async fn serve(core: Rc<Core>, accepted: Box<Accepted>) {
    inc(&METRICS.connections_accepted_total);
    let Some(c) = Box::pin(front_door(core, accepted)).await else {
        return;
    };
    c.drive().await;
}

async fn front_door(core: Rc<Core>, a: Box<Accepted>) -> Option<Box<Connection>> {
    let Accepted { stream, peer, kind } = *a;
    let opened = crate::front::open(Rc::clone(&core), stream, peer, kind).await?;
    let Some(id) = core.alloc_id() else {
        tracing::error!(
            "core {}: no connection slot left: connection closed",
            core.id
        );
        return None;
    };
    Some(Connection::new(
        core,
        id,
        Rc::new(ConnShared::default()),
        opened,
    ))
}

/// Runs a connection that did not come through [`serve`] (a tunnel session) to its end.
pub(crate) async fn run_conn(core: Rc<Core>, id: u32, shared: Rc<ConnShared>, opened: Opened) {
    Connection::new(core, id, shared, opened).drive().await;
}

impl Connection {
    fn new(core: Rc<Core>, id: u32, shared: Rc<ConnShared>, opened: Opened) -> Box<Connection> {
        core.conns.borrow_mut().insert(id, Rc::clone(&shared));
        inc(&METRICS.connections_open);
        let me = ConnRef { core: core.id, id };
        let now = now_ms();
        shared.active_ms.set(now);
        let conn = Conn::new(now, &core.node.cfg.timers);
        // The client's address (from a PROXY header when a trusted balancer sent one) is logged
        // here and not kept: an idle connection would carry its 32 bytes for nothing.
        debug!(session = me.session_id(), peer = %opened.peer, "connection open");
        Box::new(Connection {
            core,
            link: opened.link,
            shared,
            me,
            conn,
            session: None,
            // The bytes the front door read: the first frames.
            partial: opened.initial,
            peer_closed: false,
            parking: false,
            park_off: false,
        })
    }

    async fn drive(mut self: Box<Self>) {
        if !self.partial.is_empty() && !Box::pin(self.on_initial()).await {
            self.conn.apply(Trigger::PeerClose);
        }
        self.live().await;
    }

    /// Runs the connection until it ends or parks.
    async fn live(mut self: Box<Self>) {
        loop {
            self.run().await;
            if !self.parking {
                break;
            }
            self.parking = false;
            match self.try_park() {
                Ok(()) => return,
                Err(c) => self = c,
            }
        }
        Box::pin(self.finish()).await;
        let core = Rc::clone(&self.core);
        let me = self.me;
        core.conns.borrow_mut().remove(me.id);
        if let Some(s) = self.session.take() {
            if let Some(seat) = &s.seat {
                self.unwatch_all(&seat.watching);
            }
            for room in s.seat.map(|seat| seat.rooms).unwrap_or_default() {
                core.leave_room(room, me.id);
            }
            let user: Arc<str> = Arc::from(s.info.user.as_str());
            let owner = core.owner_core(&user);
            core.route(owner, CoreMsg::Unregister { user, conn: me });
        }
        dec(&METRICS.connections_open);
    }
}

/// Wakes the parked connections whose sockets became ready.
async fn unpark_loop(core: Rc<Core>, watch: TcpStream) {
    let Some(parking) = &core.parking else {
        return;
    };
    let mut ids = Vec::new();
    loop {
        if let Err(e) = watch.readable(false).await {
            tracing::error!("core {}: parked connections unwatched: {e}", core.id);
            return;
        }
        ids.clear();
        if let Err(e) = parking.ready(&mut ids) {
            tracing::error!("core {}: parked connections unwatched: {e}", core.id);
            return;
        }
        for id in &ids {
            let shared = core.conns.borrow().get(*id).cloned();
            if let Some(shared) = shared {
                shared.wake();
            }
        }
    }
}

impl Connection {
    /// Registers the socket with the core's parking and leaves the state with the shared
    /// part; gives the connection back (it keeps its task from now on) when that fails.
    fn try_park(mut self: Box<Self>) -> Result<(), Box<Self>> {
        let (Some(parking), Some(fd)) = (&self.core.parking, self.link.plain_fd()) else {
            self.park_off = true;
            return Err(self);
        };
        if let Err(e) = parking.add(fd, self.me.id) {
            tracing::debug!("connection {}: cannot park: {e}", self.me.id);
            self.park_off = true;
            return Err(self);
        }
        inc(&METRICS.connections_parked);
        let shared = Rc::clone(&self.shared);
        shared.queue.borrow_mut().release();
        shared.park(self);
        Ok(())
    }

    /// Gives a parked connection a task again (its socket is ready, or something was queued
    /// for it, or its timer is due).
    fn unpark(self: Box<Self>) {
        if let (Some(parking), Some(fd)) = (&self.core.parking, self.link.plain_fd()) {
            parking.remove(fd);
        }
        dec(&METRICS.connections_parked);
        // Whatever woke it is traffic: without this, the connection would park again before
        // reading what its socket holds.
        self.shared.active_ms.set(now_ms());
        monoio::spawn(self.live());
    }

    /// When this connection may park: a native connection past its handshake, holding no
    /// partial frame or held output, once `park_ms` passed without traffic.
    fn park_at(&self) -> Option<u64> {
        let park_ms = self.core.node.cfg.timers.park_ms;
        if park_ms == 0
            || self.park_off
            || self.core.parking.is_none()
            || self.conn.state() != State::Open
            || self.link.plain_fd().is_none()
            || !self.partial.is_empty()
            || self.link.has_held()
        {
            return None;
        }
        Some(self.shared.active_ms.get().saturating_add(park_ms))
    }

    async fn run(&mut self) {
        loop {
            if self.conn.state() == State::Closed {
                return;
            }
            // The kick stays set: pushes that arrive while the connection closes are dropped
            // by `enqueue` instead of overflowing the queue (and counting) a second time.
            if let Some(reason) = self.shared.kick.get() {
                let trigger = match reason {
                    CloseReason::SLOW_CONSUMER => Trigger::OutboundFull,
                    CloseReason::REPLACED => Trigger::Replaced,
                    CloseReason::REDIRECT => Trigger::SlotMoved,
                    _ => Trigger::Drain,
                };
                Box::pin(self.transition(trigger, 0, "closed by the node")).await;
                return;
            }
            if self.shared.input.replace(false) {
                if !Box::pin(self.on_readable()).await {
                    return;
                }
                self.shared.active_ms.set(now_ms());
                continue;
            }
            if !self.shared.queue.borrow().is_empty() {
                if !Box::pin(self.flush_queue()).await {
                    return;
                }
                self.shared.active_ms.set(now_ms());
                continue;
            }
            if self.shared.timer_due.replace(false) {
                if let Some(row) = self.conn.poll_timers(now_ms()) {
                    let msg = match row.trigger {
                        Trigger::HandshakeTimeout => "no HELLO in time",
                        Trigger::IdleTimeout => "nothing received within the idle timeout",
                        Trigger::TokenExpired => "token expired",
                        _ => "",
                    };
                    Box::pin(self.effect(row.effect, 0, msg)).await;
                    continue;
                }
            }
            let Some(deadline) = self.conn.next_deadline() else {
                return;
            };
            // The sweeper also marks the moment to park (see `park_at`).
            let park_at = self.park_at();
            self.shared
                .deadline_ms
                .set(park_at.map_or(deadline, |at| deadline.min(at)));
            // Boxed: this future is part of every idle connection's state.
            if self.link.has_held() && Box::pin(self.flush_held()).await.is_err() {
                self.peer_closed = true;
                self.conn.apply(Trigger::PeerClose);
                return;
            }
            if self.park_at().is_some_and(|at| at <= now_ms()) {
                // Parked, only the connection's own timers need the sweeper.
                self.shared.deadline_ms.set(deadline);
                self.parking = true;
                return;
            }
            // No timer of our own: the core's sweeper marks the deadline due (see `sweep`).
            let shared = Rc::clone(&self.shared);
            let ev = match self.link.socket() {
                Some(stream) => monoio::select! {
                    r = stream.readable(false) => Event::Readable(r.is_ok()),
                    _ = shared.notified() => Event::Notified,
                },
                // A tunnel's input wakes it through `shared` (see `ConnShared::wake_input`).
                None => {
                    shared.notified().await;
                    Event::Notified
                }
            };
            match ev {
                Event::Readable(false) => return,
                Event::Readable(true) => {
                    if !Box::pin(self.on_readable()).await {
                        return;
                    }
                    self.shared.active_ms.set(now_ms());
                }
                Event::Notified => {}
            }
        }
    }

    fn max_in(&self) -> u32 {
        if self.conn.state() == State::Open {
            self.core.node.cfg.max_frame
        } else {
            DEFAULT_MAX_BODY
        }
    }

    async fn flush_held(&mut self) -> std::io::Result<()> {
        let core = Rc::clone(&self.core);
        self.link.flush_held(&core.pool).await
    }

    /// Handles the bytes that came with the connection (read by the front door).
    async fn on_initial(&mut self) -> bool {
        let pooled = std::mem::take(&mut self.partial);
        // HELLO waits for the token check and the inbox head: a copy of its few hundred bytes
        // lets the pooled buffer go back at once. In a connection storm, buffers kept over
        // those waits are allocated past the pool and freed later between long-lived
        // connection state, and the holes stay in the node's memory.
        let buf = pooled.clone();
        self.core.pool.put(pooled);
        self.handle_bytes(&buf).await
    }

    /// Reads what is there, handles every complete frame; `false` once the connection ends.
    async fn on_readable(&mut self) -> bool {
        let core = Rc::clone(&self.core);
        let mut buf = core.pool.take();
        if !self.partial.is_empty() {
            buf.extend_from_slice(&self.partial);
            self.partial = Vec::new();
        }
        // Room for the whole frame in progress when its header says how long it is (its
        // length was checked against the limit when the header arrived).
        let want = if buf.len() >= 8 {
            HEADER_LEN + u32::from_le_bytes([buf[5], buf[6], buf[7], 0]) as usize
        } else {
            0
        };
        let room = want.max(buf.len() + 4096).max(core.pool.buf_size());
        buf.reserve(room.saturating_sub(buf.len()));
        let (res, buf) = self.link.read(buf, &core.pool).await;
        let keep_going = match res {
            Ok(Read::Eof) => {
                self.peer_closed = true;
                self.conn.apply(Trigger::PeerClose);
                false
            }
            Err(e) => {
                debug!(conn = ?self.me, "read failed: {e}");
                self.peer_closed = true;
                self.conn.apply(Trigger::PeerClose);
                false
            }
            Ok(_) => self.handle_bytes(&buf).await,
        };
        core.pool.put(buf);
        keep_going
    }

    async fn handle_bytes(&mut self, buf: &[u8]) -> bool {
        let mut pos = 0;
        // SENDs that arrived together are submitted to the group-commit writer together and
        // acknowledged in order afterwards: one connection then has as many messages in one
        // batch as its client pipelined, instead of one per fsync.
        let mut pending: Vec<PendingSend> = Vec::new();
        // Room SENDs likewise go to the room's owner together: its core then numbers and fans
        // them out in one go, and each member gets them in one write instead of one each.
        let mut rooms: Vec<PendingRoom> = Vec::new();
        loop {
            match decode(&buf[pos..], self.max_in()) {
                Ok(None) => break,
                Ok(Some((mut frame, used))) => {
                    pos += used;
                    if let Err(refusal) = self.scope(&mut frame) {
                        if !self.finish_sends(&mut pending).await
                            || !Box::pin(self.finish_room_sends(&mut rooms)).await
                            || !self.write_frame(&refusal).await
                        {
                            return false;
                        }
                        continue;
                    }
                    if let Some(p) = self.submit_send(&frame) {
                        pending.push(p);
                        continue;
                    }
                    if let Some(p) = self.submit_room_send(&frame) {
                        rooms.push(p);
                        continue;
                    }
                    if !self.finish_sends(&mut pending).await
                        || !Box::pin(self.finish_room_sends(&mut rooms)).await
                    {
                        return false;
                    }
                    if !self.on_frame(frame).await {
                        return false;
                    }
                }
                Err(e) => {
                    if !self.finish_sends(&mut pending).await
                        || !Box::pin(self.finish_room_sends(&mut rooms)).await
                    {
                        return false;
                    }
                    //= SPEC.md#decoding-order
                    //# A frame that fails its check, is too large or unknown gets an ERROR
                    //# with the matching code and the connection is closed.
                    inc(&METRICS.decode_errors_total);
                    debug!(conn = ?self.me, "decode error: {e}");
                    if let Some(row) = self.conn.apply(Trigger::DecodeError) {
                        if row.effect == Effect::DecodeErrorCode {
                            let f = session::error(0, e.code(), e.to_string());
                            let _ = self.write_frame(&f).await;
                        }
                    }
                    return false;
                }
            }
        }
        if !self.finish_sends(&mut pending).await
            || !Box::pin(self.finish_room_sends(&mut rooms)).await
        {
            return false;
        }
        if pos < buf.len() {
            self.partial = buf[pos..].to_vec();
        }
        true
    }

    /// Resolves the names of an open session's frame inside its tenant (`crate::tenant`);
    /// `Err` is the ERROR to answer instead.
    fn scope(&self, frame: &mut Frame<'_>) -> Result<(), Box<Frame<'static>>> {
        match self.session.as_ref() {
            Some(s) if self.conn.state() == State::Open => {
                let now = s.tenant.as_ref().map_or(0, |_| now_ms());
                crate::tenant::inbound(frame, s.info.user.tenant(), s.tenant.as_ref(), now)
            }
            _ => Ok(()),
        }
    }

    /// Submits a SEND of an open session to storage without waiting; `None` for every other
    /// frame (and for a SEND the session rules answer directly, e.g. an invalid one).
    fn submit_send(&mut self, frame: &Frame<'_>) -> Option<PendingSend> {
        if !matches!(frame.body, Body::Send(_)) || self.conn.state() != State::Open {
            return None;
        }
        let s = self.session.as_ref()?;
        let plan = session::plan(&s.info, frame, &self.core.node.cfg.limits);
        // A SEND another node must take is answered (refused) on the one-request path.
        if crate::cluster::node::remote_refusal(&self.core.node.owners.load(), &s.info, &plan)
            .is_some()
            || crate::cluster::quorum::refusal(frame.request_id, &s.info, &plan).is_some()
        {
            return None;
        }
        let Plan::Append { mut msg } = plan else {
            return None;
        };
        // A message the content filter refuses is answered on the one-request path.
        msg.body = self
            .core
            .node
            .hooks
            .screen(msg.kind.0, std::mem::take(&mut msg.body))?;
        inc(&METRICS.frames_in_total);
        self.conn.inbound(now_ms());
        let submitted = crate::cluster::route::submit_direct(&self.core.node, msg.clone());
        Some(PendingSend {
            rid: frame.request_id,
            msg,
            submitted,
        })
    }

    /// Awaits the pending SENDs in order, answering each with SEND_ACK (or ERROR) and
    /// delivering it; `false` once the connection ends.
    async fn finish_sends(&mut self, pending: &mut Vec<PendingSend>) -> bool {
        if pending.is_empty() {
            return true;
        }
        // One copy of the session per batch, not per message: `write_frame` borrows `self`.
        let Some(info) = self.session.as_ref().map(|s| s.info.clone()) else {
            return false;
        };
        // The batch's SEND_ACKs go out in one write (responses may come in any order, §2, so
        // an ERROR answered on the way may precede them).
        let core = Rc::clone(&self.core);
        let mut acks = core.pool.take();
        for p in pending.drain(..) {
            if self.conn.state() != State::Open {
                core.pool.put(acks);
                return false;
            }
            //= SPEC.md#send
            //# SEND_ACK is sent only after the message is durable.
            let Some(r) = self.storage(p.rid, p.submitted).await else {
                continue;
            };
            if r.duplicate {
                inc(&METRICS.messages_duplicate_total);
            } else {
                inc(&METRICS.messages_stored_total);
                self.core.offline_push(&p.msg, &r);
            }
            if session::send_ack(p.rid, &p.msg, &r)
                .encode(&mut acks)
                .is_ok()
            {
                inc(&METRICS.frames_out_total);
            }
            for d in session::deliveries(&info, &p.msg, &r) {
                self.core.push_to(d.user, d.except_session, &d.frame);
            }
        }
        self.write_encoded(acks).await && self.conn.state() == State::Open
    }

    /// Writes frames already encoded into a pooled buffer (nothing if it is empty).
    async fn write_encoded(&mut self, buf: Vec<u8>) -> bool {
        let core = Rc::clone(&self.core);
        if buf.is_empty() {
            core.pool.put(buf);
            return true;
        }
        let (res, buf) = self.link.write_all(buf, &core.pool).await;
        core.pool.put(buf);
        res.is_ok()
    }

    /// Posts a SEND to a room without waiting for the owner core's answer, or refuses it; `None`
    /// for any other frame.
    fn submit_room_send(&mut self, frame: &Frame<'_>) -> Option<PendingRoom> {
        match &frame.body {
            Body::Send(m) if m.to.kind == tern_protocol::ConvKind::ROOM => {}
            _ => return None,
        }
        if self.conn.state() != State::Open {
            return None;
        }
        let s = self.session.as_ref()?;
        let Plan::RoomSend {
            room,
            msg_id,
            kind,
            body,
        } = session::plan(&s.info, frame, &self.core.node.cfg.limits)
        else {
            return None;
        };
        inc(&METRICS.frames_in_total);
        self.conn.inbound(now_ms());
        Some(self.post_room(frame.request_id, room, msg_id, kind, body))
    }

    /// Checks a room SEND against the connection's membership and rate, and posts it to the
    /// room's owner core.
    fn post_room(
        &mut self,
        rid: u32,
        room: String,
        msg_id: tern_protocol::MsgId,
        kind: tern_protocol::MessageKind,
        body: Vec<u8>,
    ) -> PendingRoom {
        let now = now_ms();
        let room: Arc<str> = Arc::from(room);
        let cfg = self.core.node.cfg.rooms;
        let Some(s) = self.session.as_mut() else {
            return PendingRoom {
                rid,
                msg_id,
                asked: Err((ErrorCode::FORBIDDEN, "join the room before sending to it")),
            };
        };
        let verdict = match s.seat.as_mut() {
            Some(seat) if seat.rooms.contains(&room) => {
                if seat.limit.allow(now, cfg.rate_per_sec, cfg.burst) {
                    Ok(())
                } else {
                    Err((ErrorCode::RATE_LIMITED, "sending too fast in this room"))
                }
            }
            _ => Err((ErrorCode::FORBIDDEN, "join the room before sending to it")),
        };
        let (verdict, body) = match verdict {
            Ok(()) => match self.core.node.hooks.screen(kind.0, body) {
                Some(body) => (Ok(()), body),
                None => (
                    Err((
                        ErrorCode::CONTENT_REJECTED,
                        "the message contains a word this server does not accept",
                    )),
                    Vec::new(),
                ),
            },
            Err(e) => (Err(e), body),
        };
        let post = Post {
            sender: Arc::from(s.info.user.as_str()),
            sender_device: Arc::from(s.info.device.as_str()),
            msg_id,
            kind,
            body: Bytes::from(body),
        };
        let asked = verdict.and_then(|()| {
            let (tx, rx) = flume::bounded(1);
            let ask = CoreMsg::RoomPost {
                room: Arc::clone(&room),
                post,
                except: self.me,
                reply: tx,
            };
            if self.core.send_to(self.core.owner_core(&room), ask) {
                Ok(rx)
            } else {
                Err((ErrorCode::OVERLOADED, "the room is unavailable, retry"))
            }
        });
        PendingRoom { rid, msg_id, asked }
    }

    /// Awaits the room owner's answers in order and writes every SEND_ACK (or ERROR) in one go.
    async fn finish_room_sends(&mut self, pending: &mut Vec<PendingRoom>) -> bool {
        if pending.is_empty() {
            return true;
        }
        let core = Rc::clone(&self.core);
        let mut out = core.pool.take();
        for p in pending.drain(..) {
            let answer = match p.asked {
                Ok(rx) => rx
                    .recv_async()
                    .await
                    .unwrap_or(Err(ErrorCode::OVERLOADED))
                    .map_err(|code| (code, "the room is unavailable, retry")),
                Err(refused) => Err(refused),
            };
            let frame = match answer {
                Ok(posted) => Frame::new(
                    p.rid,
                    Body::SendAck(tern_protocol::SendAck {
                        msg_id: p.msg_id,
                        conv_seq: posted.msg.seq,
                        inbox_seq: 0,
                        time: posted.msg.time,
                    }),
                ),
                Err((code, msg)) => session::error(p.rid, code, msg),
            };
            if frame.encode(&mut out).is_ok() {
                inc(&METRICS.frames_out_total);
            }
        }
        self.write_encoded(out).await
    }

    async fn on_frame(&mut self, frame: Frame<'_>) -> bool {
        inc(&METRICS.frames_in_total);
        let now = now_ms();
        self.conn.inbound(now);
        let rid = frame.request_id;
        match classify(self.conn.state(), frame.frame_type()) {
            Trigger::HelloAccepted => match &frame.body {
                Body::Hello(h) => self.on_hello(rid, h, now).await,
                _ => {
                    self.transition(Trigger::UnexpectedFrame, rid, "first frame must be HELLO")
                        .await
                }
            },
            Trigger::Request => self.on_request(&frame, now).await,
            Trigger::UnexpectedFrame => {
                let msg = format!(
                    "{} not allowed in state {:?}",
                    frame.frame_type(),
                    self.conn.state()
                );
                self.transition(Trigger::UnexpectedFrame, rid, &msg).await
            }
            other => self.transition(other, rid, "").await,
        }
    }

    async fn on_hello(&mut self, rid: u32, h: &Hello<'_>, now: u64) -> bool {
        if h.protocol != PROTOCOL {
            let msg = format!(
                "protocol {} not supported, this node speaks {PROTOCOL}",
                h.protocol
            );
            return self
                .transition(Trigger::HelloUnsupportedProtocol, rid, &msg)
                .await;
        }
        let node = Arc::clone(&self.core.node);
        let id = match node.auth.verify(&h.token, &h.device, now) {
            Ok(id) => id,
            Err(e) => {
                inc(&METRICS.auth_failures_total);
                let trigger = if e == AuthError::Expired {
                    Trigger::HelloExpiredToken
                } else {
                    Trigger::HelloBadToken
                };
                return self.transition(trigger, rid, &e.to_string()).await;
            }
        };
        let (Ok(user), Ok(device)) = (UserId::new(id.user), DeviceId::new(id.device)) else {
            return self
                .transition(Trigger::HelloBadToken, rid, "invalid user or device id")
                .await;
        };
        //= SPEC.md#redirect
        //# If the user is served by another node: REDIRECT, then CLOSE REDIRECT.
        let owners = node.owners.load();
        if let Owner::Remote(owner) = owners.owner_of_user(user.as_str()) {
            let redirect = crate::cluster::node::redirect(rid, owners.epoch(), owner);
            if self.conn.apply(Trigger::HelloOtherNode).is_some() {
                let _ = self.write_frame(&redirect).await;
                let close = Close {
                    reason: CloseReason::REDIRECT,
                    retry_after_ms: 0,
                    message: "user served by another node".into(),
                };
                let _ = self.write_frame(&Frame::new(0, Body::Close(close))).await;
            }
            return false;
        }
        //= SPEC.md#hello
        //# a HELLO beyond its tenant's connection limit gets ERROR `LIMIT_EXCEEDED`
        let tenant = match node.hooks.tenants.seat(id.tenant.as_deref()) {
            Ok(seat) => seat,
            Err(why) => {
                return self.transition(Trigger::HelloTenantFull, rid, &why).await;
            }
        };
        if self.conn.accept(now, id.expires_ms).is_none() {
            return false;
        }
        inc(&METRICS.sessions_authenticated_total);
        //= SPEC.md#hello
        //# The server MAY use `resume_inbox_seq` to record the device's position.
        if h.resume_inbox_seq > 0 {
            let _ = node.store.update_position(PositionUpdate {
                user: user.clone(),
                device: device.clone(),
                pulled: None,
                acked: Some(Seq(h.resume_inbox_seq)),
                read: None,
            });
        }
        let user_key: Arc<str> = Arc::from(user.as_str());
        let info = SessionInfo {
            user,
            device,
            session_id: self.me.session_id(),
        };
        let owner = self.core.owner_core(&user_key);
        self.core.route(
            owner,
            CoreMsg::Register {
                user: Arc::clone(&user_key),
                device: Arc::from(info.device.as_str()),
                conn: self.me,
            },
        );
        //= SPEC.md#hello
        //# inbox_head: The user's latest inbox seq; 0 = not known to the server.
        // A read on the storage pool; a full read queue only costs the hint (0: "SYNC to find
        // out"), not the session.
        let inbox_head = match node.store.inbox_head(info.user.clone()) {
            Ok(c) => c.await.map_or(0, |s| s.0),
            Err(_) => 0,
        };
        let cfg = &node.cfg;
        let welcome = Frame::new(
            rid,
            Body::Welcome(Welcome {
                protocol: PROTOCOL,
                capabilities: h.capabilities.intersect(SERVED_CAPABILITIES),
                max_frame: cfg.max_frame,
                heartbeat_secs: (cfg.timers.heartbeat_ms / 1000).clamp(1, u64::from(u16::MAX))
                    as u16,
                idle_timeout_secs: (cfg.timers.idle_ms / 1000).clamp(1, u64::from(u16::MAX)) as u16,
                user: info.user.as_str().to_owned().into(),
                session_id: info.session_id,
                server_time: now,
                inbox_head,
                node: cfg.node_id.clone().into(),
            }),
        );
        debug!(session = self.me.session_id(), user = %info.user, device = %info.device, max_frame = h.max_frame.max(MIN_MAX_BODY), "session open");
        let max_out = h.max_frame.clamp(MIN_MAX_BODY, tern_protocol::ABS_MAX_BODY);
        // The session keeps no copy of the registry's key: an idle connection pays for one
        // user id, and the Unregister at the end builds its own.
        let caps = h.capabilities.intersect(SERVED_CAPABILITIES);
        self.session = Some(Box::new(Session {
            caps,
            info,
            max_out,
            seat: None,
            tenant,
        }));
        self.write_frame(&welcome).await
    }

    /// Awaits a storage operation; on failure answers the request with the matching ERROR.
    async fn storage<T>(
        &mut self,
        rid: u32,
        submitted: Result<Completion<T>, SubmitError>,
    ) -> Option<T> {
        let completion = match submitted {
            Ok(c) => c,
            Err(SubmitError::Busy) => {
                inc(&METRICS.storage_busy_total);
                let _ = self
                    .write_frame(&session::submit_error(rid, SubmitError::Busy))
                    .await;
                return None;
            }
            Err(SubmitError::Closed) => {
                self.transition(Trigger::ShuttingDown, rid, "storage is shut down")
                    .await;
                return None;
            }
        };
        match completion.await {
            Ok(v) => Some(v),
            Err(e) => {
                // A refusal (not found, not allowed, blocked...) is the client's business; a
                // failing engine is the operator's.
                if matches!(e, tern_storage::OpError::Engine(_)) {
                    warn!(conn = ?self.me, "storage operation failed: {e}");
                } else {
                    debug!(conn = ?self.me, "storage refused: {e}");
                }
                let _ = self.write_frame(&session::op_error(rid, &e)).await;
                None
            }
        }
    }

    async fn on_request(&mut self, frame: &Frame<'_>, now: u64) -> bool {
        let Some(s) = self.session.as_ref() else {
            return false;
        };
        let info = s.info.clone();
        let max_out = s.max_out;
        let node = Arc::clone(&self.core.node);
        let rid = frame.request_id;
        let store = &node.store;
        let plan = session::plan(&info, frame, &node.cfg.limits);
        // SPEC §8 UNAVAILABLE: a request that needs a user, conversation or room another node
        // serves is refused before anything is stored here.
        if let Some(why) = crate::cluster::node::remote_refusal(&node.owners.load(), &info, &plan) {
            return self
                .write_frame(&crate::cluster::node::unavailable(rid, why))
                .await;
        }
        // SPEC §8 NO_QUORUM: a cluster node cut off from the majority takes no writes.
        if let Some(refused) = crate::cluster::quorum::refusal(rid, &info, &plan) {
            return self.write_frame(&refused).await;
        }
        match plan {
            Plan::Reply(f) => self.write_frame(&f).await,
            Plan::Ignore => true,
            Plan::Unexpected => {
                let msg = format!("{} is not a client frame", frame.frame_type());
                self.transition(Trigger::UnexpectedFrame, rid, &msg).await
            }
            // SENDs of an open session are taken by `submit_send` before they get here; one
            // that does arrives through the same path.
            Plan::Append { mut msg } => {
                //= SPEC.md#send
                //# a match either refuses the SEND with `CONTENT_REJECTED`
                let Some(body) = node.hooks.screen(msg.kind.0, std::mem::take(&mut msg.body))
                else {
                    return self.write_frame(&notify::rejected(rid)).await;
                };
                msg.body = body;
                let submitted = crate::cluster::route::submit_direct(&node, msg.clone());
                let mut one = vec![PendingSend {
                    rid,
                    msg,
                    submitted,
                }];
                self.finish_sends(&mut one).await
            }
            Plan::PushAck { inbox_seq, reply } => {
                self.ack_group_positions(&info).await;
                self.ack_topic_positions(&info).await;
                let update = PositionUpdate {
                    user: info.user.clone(),
                    device: info.device.clone(),
                    pulled: None,
                    acked: Some(inbox_seq),
                    read: None,
                };
                if self
                    .storage(rid, store.update_position(update))
                    .await
                    .is_none()
                {
                    return self.conn.state() == State::Open;
                }
                !reply || self.write_frame(&Frame::new(rid, Body::Ok)).await
            }
            Plan::Sync { after, limit } => {
                self.ack_group_positions(&info).await;
                self.ack_topic_positions(&info).await;
                //= SPEC.md#sync
                //# Asking for the page after X acknowledges everything up to X.
                // The page does not wait for the position to be durable, and a full write queue
                // does not fail the read: positions only move forward, the next SYNC or
                // PUSH_ACK records it again.
                if after > Seq::ZERO {
                    let update = PositionUpdate {
                        user: info.user.clone(),
                        device: info.device.clone(),
                        pulled: None,
                        acked: Some(after),
                        read: None,
                    };
                    if let Err(SubmitError::Busy) = store.update_position(update) {
                        inc(&METRICS.storage_busy_total);
                    }
                }
                let Some(entries) = self
                    .storage(rid, store.inbox_page(info.user.clone(), after, limit + 1))
                    .await
                else {
                    return self.conn.state() == State::Open;
                };
                let mut page = session::sync_page(rid, &info.user, after, entries, limit, max_out);
                if !self
                    .merge_group_sync(rid, &info, &mut page, limit, max_out)
                    .await
                    || !self
                        .merge_topic_sync(rid, &info, &mut page, limit, max_out)
                        .await
                {
                    return self.conn.state() == State::Open;
                }
                if let Body::SyncPage(p) = &page.body {
                    if let Some(last) = p.messages.last() {
                        // Recording what was handed out is bookkeeping; the reply need not wait.
                        let _ = store.update_position(PositionUpdate {
                            user: info.user.clone(),
                            device: info.device.clone(),
                            pulled: Some(Seq(last.inbox_seq)),
                            acked: None,
                            read: None,
                        });
                    }
                }
                self.write_frame(&page).await
            }
            Plan::History {
                conv,
                peer,
                anchor,
                direction,
                limit,
            } => {
                let submitted =
                    crate::cluster::forward::history(&node, conv, anchor, direction, limit + 1);
                let Some(msgs) = self.storage(rid, submitted).await else {
                    return self.conn.state() == State::Open;
                };
                self.write_frame(&session::history_page(
                    rid,
                    &info.user,
                    tern_protocol::Conv::direct(peer.to_string()),
                    direction,
                    msgs,
                    limit,
                    max_out,
                ))
                .await
            }
            Plan::Contacts { before_ms, limit } => {
                let first = (before_ms > 0).then(|| RecentCursor::before(before_ms));
                let Some(mut page) = self
                    .storage(rid, store.recent_page(info.user.clone(), first, limit + 1))
                    .await
                else {
                    return self.conn.state() == State::Open;
                };
                // A page ending inside a run of equal times is completed from the store, so
                // that the client's next page (strictly older) skips nothing.
                while page.more && session::contacts_run_open(&page.conversations, limit) {
                    let next = page.next();
                    let Some(more) = self
                        .storage(rid, store.recent_page(info.user.clone(), next, 64))
                        .await
                    else {
                        return self.conn.state() == State::Open;
                    };
                    page.more = more.more;
                    page.conversations.extend(more.conversations);
                }
                self.write_frame(&session::contacts_page(
                    rid,
                    &info.user,
                    &page.conversations,
                    page.total_unread,
                    page.more,
                    limit,
                ))
                .await
            }
            Plan::Read { conv, peer, up_to } => {
                let req = MarkRead {
                    user: info.user.clone(),
                    conv,
                    up_to,
                };
                let Some(state) = self.storage(rid, store.mark_read(req)).await else {
                    return self.conn.state() == State::Open;
                };
                let ok = self.write_frame(&Frame::new(rid, Body::Ok)).await;
                for d in session::read_receipts(&info, &peer, state.read_seq, now) {
                    self.core.deliver(d);
                }
                ok
            }
            Plan::Recall {
                conv,
                peer,
                seq,
                msg_id,
            } => {
                let req = Recall {
                    conv: conv.clone(),
                    seq,
                    by: info.user.clone(),
                    by_device: info.device.clone(),
                    client_msg_id: tern_storage::ClientMsgId(msg_id.0),
                    window_ms: self.core.node.cfg.limits.recall_window_ms,
                };
                let submitted = crate::cluster::forward::recall(&node, req, &peer);
                let Some(r) = self.storage(rid, submitted).await else {
                    return self.conn.state() == State::Open;
                };
                let ok = self
                    .write_frame(&session::recall_ack(rid, msg_id, &r))
                    .await;
                for d in session::recall_deliveries(&info, &peer, &conv, seq, msg_id, &r) {
                    // A user another node serves gets the event from that node's half.
                    if crate::cluster::forward::user_node(&node, &d.user).is_none() {
                        self.core.push_to(&d.user, d.except_session, &d.frame);
                    }
                }
                ok
            }
            Plan::RoomJoin { room, recent } => Box::pin(self.room_join(rid, room, recent)).await,
            Plan::RoomLeave { room } => {
                let room: Arc<str> = Arc::from(room);
                let joined = self
                    .session
                    .as_mut()
                    .and_then(|s| s.seat.as_mut())
                    .and_then(|seat| {
                        let i = seat.rooms.iter().position(|r| *r == room)?;
                        Some(seat.rooms.swap_remove(i))
                    });
                match joined {
                    Some(room) => {
                        self.core.leave_room(room, self.me.id);
                        self.write_frame(&Frame::new(rid, Body::Ok)).await
                    }
                    None => {
                        self.write_frame(&session::error(
                            rid,
                            ErrorCode::NOT_FOUND,
                            "not in this room",
                        ))
                        .await
                    }
                }
            }
            Plan::RoomSend {
                room,
                msg_id,
                kind,
                body,
            } => {
                let mut one = vec![self.post_room(rid, room, msg_id, kind, body)];
                Box::pin(self.finish_room_sends(&mut one)).await
            }
            plan @ (Plan::SetPresence { .. }
            | Plan::Subscribe { .. }
            | Plan::PushToken { .. }
            | Plan::Mute { .. }) => Box::pin(self.notify_request(frame, plan)).await,
            plan @ (Plan::Relate { .. } | Plan::FriendsOnly { .. } | Plan::RelationList { .. }) => {
                Box::pin(self.relation(frame, plan, &info, max_out)).await
            }
            Plan::Group(g) => Box::pin(self.group(frame, *g, &info)).await,
            Plan::Topic(t) => Box::pin(self.topic(frame, *t, &info)).await,
            Plan::Typing { peer, frame: relay } => {
                let caps = self.session.as_ref().map_or(Capabilities::NONE, |s| s.caps);
                if let Some(refusal) = session::not_negotiated(caps, frame) {
                    return self.write_frame(&refusal).await;
                }
                // Per connection, at the configured rate; beyond it TYPING is dropped.
                let limits = &self.core.node.cfg.limits;
                let (rate, burst) = (limits.typing_per_sec, limits.typing_burst);
                let allowed = self.session.as_mut().is_some_and(|s| {
                    s.seat
                        .get_or_insert_with(Box::default)
                        .typing
                        .allow(now, rate, burst)
                });
                if !allowed {
                    inc(&METRICS.typing_dropped_total);
                    return true;
                }
                self.core.deliver(Delivery {
                    user: peer,
                    except_session: None,
                    frame: relay,
                });
                true
            }
        }
    }

    /// RELATION and RELATION_LIST: the change (durable before the OK, which is what makes a
    /// block apply to every later SEND: the store checks appends against the same rows) and its
    /// notices, or a page of a list.
    async fn relation(
        &mut self,
        frame: &Frame<'_>,
        plan: Plan,
        info: &SessionInfo,
        max_out: u32,
    ) -> bool {
        let rid = frame.request_id;
        let caps = self.session.as_ref().map_or(Capabilities::NONE, |s| s.caps);
        if let Some(refusal) = session::not_negotiated(caps, frame) {
            return self.write_frame(&refusal).await;
        }
        let store = Arc::clone(&self.core.node.store);
        match plan {
            Plan::Relate { change } => {
                let submitted = crate::cluster::forward::relate(&self.core.node, change.clone());
                let Some(outcome) = self.storage(rid, submitted).await else {
                    return self.conn.state() == State::Open;
                };
                let ok = self.write_frame(&Frame::new(rid, Body::Ok)).await;
                for d in session::relation_notices(&change, &outcome) {
                    // A user another node serves gets it from the node applying their rows.
                    if crate::cluster::forward::user_node(&self.core.node, &d.user).is_none() {
                        self.core.deliver(d);
                    }
                }
                ok
            }
            Plan::FriendsOnly { on } => {
                let submitted = store.set_friends_only(info.user.clone(), on);
                if self.storage(rid, submitted).await.is_none() {
                    return self.conn.state() == State::Open;
                }
                self.write_frame(&Frame::new(rid, Body::Ok)).await
            }
            Plan::RelationList { kind, after, limit } => {
                let submitted = store.relation_page(info.user.clone(), kind, after, limit + 1);
                let Some(rows) = self.storage(rid, submitted).await else {
                    return self.conn.state() == State::Open;
                };
                self.write_frame(&session::relation_page(rid, kind, rows, limit, max_out))
                    .await
            }
            _ => true,
        }
    }

    /// ROOM_JOIN: registers the connection on its core first, so that no message posted after
    /// the owner counts the member can pass this core by; then asks the owner.
    async fn room_join(&mut self, rid: u32, room: String, recent: u16) -> bool {
        let room: Arc<str> = Arc::from(room);
        let cfg = self.core.node.cfg.rooms;
        let recent = match recent {
            0 => usize::from(cfg.default_recent),
            n => usize::from(n),
        }
        .min(cfg.window);
        let already = self
            .session
            .as_ref()
            .and_then(|s| s.seat.as_ref())
            .is_some_and(|seat| seat.rooms.contains(&room));
        if !already {
            self.core
                .room_members
                .borrow_mut()
                .entry(Arc::clone(&room))
                .or_default()
                .push(self.me.id);
        }
        let (tx, rx) = flume::bounded(1);
        let owner = self.core.owner_core(&room);
        let ask = CoreMsg::RoomJoin {
            room: Arc::clone(&room),
            core: self.core.id,
            recent,
            reply: tx,
        };
        let answer = self.core.ask_room_owner(&room, ask, rx).await;
        match answer {
            Ok((msgs, more)) => {
                if already {
                    // A repeated join only re-reads the window: the owner counted it again.
                    self.core.route(
                        owner,
                        CoreMsg::RoomLeave {
                            room: Arc::clone(&room),
                            core: self.core.id,
                        },
                    );
                } else if let Some(s) = self.session.as_mut() {
                    s.seat
                        .get_or_insert_with(Box::default)
                        .rooms
                        .push(Arc::clone(&room));
                }
                let page = crate::rooms::join_page(rid, &room, &msgs, more);
                self.write_frame(&page).await
            }
            Err(code) => {
                if !already {
                    self.core.drop_room_member(&room, self.me.id);
                }
                let msg = match code {
                    ErrorCode::LIMIT_EXCEEDED => "the room is full",
                    _ => "the room is unavailable, retry",
                };
                self.write_frame(&session::error(rid, code, msg)).await
            }
        }
    }

    /// Takes a transition of the table and sends its effect; `true` while still open.
    async fn transition(&mut self, trigger: Trigger, rid: u32, message: &str) -> bool {
        if let Some(row) = self.conn.apply(trigger) {
            self.effect(row.effect, rid, message).await;
        }
        self.conn.state() != State::Closed
    }

    async fn effect(&mut self, effect: Effect, rid: u32, message: &str) {
        let frame = match effect {
            Effect::Error(code) => session::error(rid, code, message),
            Effect::Close(reason) => Frame::new(
                0,
                Body::Close(Close {
                    reason,
                    retry_after_ms: 0,
                    message: message.to_owned().into(),
                }),
            ),
            Effect::Nothing
            | Effect::Welcome
            | Effect::Respond
            | Effect::DecodeErrorCode
            | Effect::Redirect => return,
        };
        let _ = self.write_frame(&frame).await;
    }

    /// Encodes and writes one frame; `false` if the socket failed.
    async fn write_frame(&mut self, frame: &Frame<'_>) -> bool {
        let shown = self
            .session
            .as_ref()
            .and_then(|s| crate::tenant::outbound_for(frame, s.info.user.as_str()));
        let frame = shown.as_ref().unwrap_or(frame);
        let core = Rc::clone(&self.core);
        let mut buf = core.pool.take();
        if frame.encode(&mut buf).is_err() {
            core.pool.put(buf);
            return true;
        }
        inc(&METRICS.frames_out_total);
        let (res, buf) = self.link.write_all(buf, &core.pool).await;
        core.pool.put(buf);
        res.is_ok()
    }

    /// Writes queued pushes, coalesced into pooled buffers.
    async fn flush_queue(&mut self) -> bool {
        let core = Rc::clone(&self.core);
        let caps = self.session.as_ref().map_or(Capabilities::NONE, |s| s.caps);
        loop {
            let mut buf = core.pool.take();
            {
                let mut q = self.shared.queue.borrow_mut();
                while let Some(f) = q.front() {
                    // Pushes go to every session of a user; a session that did not negotiate
                    // a frame's family does not get it.
                    let kind = tern_protocol::FrameType(f.get(3).copied().unwrap_or(0));
                    if !session::outbound_allowed(caps, kind) {
                        q.pop_front();
                        continue;
                    }
                    if !buf.is_empty() && buf.len() + f.len() > core.pool.buf_size() {
                        break;
                    }
                    buf.extend_from_slice(f);
                    q.pop_front();
                    inc(&METRICS.frames_out_total);
                }
            }
            if buf.is_empty() {
                core.pool.put(buf);
                return true;
            }
            // A peer that stops reading blocks this write while pushes keep coming; the queue
            // then overflows and the kick must end the connection even though the write never
            // completes.
            let shared = Rc::clone(&self.shared);
            let written = monoio::select! {
                r = self.link.write_all(buf, &core.pool) => Some(r),
                _ = shared.kicked() => None,
            };
            match written {
                Some((res, buf)) => {
                    core.pool.put(buf);
                    if res.is_err() {
                        return false;
                    }
                }
                None => {
                    // A frame is half written: no CLOSE can follow it, the socket is closed.
                    let trigger = match self.shared.kick.get() {
                        Some(CloseReason::REPLACED) => Trigger::Replaced,
                        Some(CloseReason::SLOW_CONSUMER) => Trigger::OutboundFull,
                        Some(CloseReason::REDIRECT) => Trigger::SlotMoved,
                        _ => Trigger::Drain,
                    };
                    self.conn.apply(trigger);
                    return false;
                }
            }
        }
    }

    /// Closes our side, then drains what the peer still sends for a moment, so that the kernel
    /// ends the connection with FIN rather than RST and the peer gets to read our last frame.
    async fn finish(&mut self) {
        let core = Rc::clone(&self.core);
        self.link.shutdown(&core.pool).await;
        if self.peer_closed {
            return;
        }
        let Some(stream) = self.link.socket() else {
            return;
        };
        let deadline = monoio::time::Instant::now() + Duration::from_millis(500);
        for _ in 0..64 {
            let ready = monoio::select! {
                r = stream.readable(false) => r.is_ok(),
                _ = monoio::time::sleep_until(deadline) => false,
            };
            if !ready {
                return;
            }
            let buf = core.pool.take();
            let (res, buf) = stream.read(buf).await;
            core.pool.put(buf);
            if !matches!(res, Ok(n) if n > 0) {
                return;
            }
        }
    }
}

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    pub native: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// SHA-256 of the TLS certificate when the TLS listener runs.
    pub tls_fingerprint: Option<String>,
    threads: Vec<JoinHandle<()>>,
    peers: Vec<flume::Sender<CoreMsg>>,
    store: Arc<NodeStore>,
}

impl RunningNode {
    /// Blocks while the node runs: until every core has drained (after [`RunningNode::drain`] or
    /// SIGTERM/SIGINT), then lets the store finish its queued writes.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        drop(self.store);
    }

    /// Starts draining: every core stops accepting and closes its connections with CLOSE DRAIN.
    pub fn drain(&self) {
        drain_cores(&self.peers);
    }
}

fn drain_cores(peers: &[flume::Sender<CoreMsg>]) {
    for p in peers {
        let _ = p.send(CoreMsg::Drain);
    }
}

/// SIGTERM or SIGINT drains the node; a second one ends the process at once.
fn spawn_drain_on_signals(peers: Vec<flume::Sender<CoreMsg>>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing SIGTERM handler")?;
    std::thread::Builder::new()
        .name("tern-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen > 1 {
                    warn!("second signal {sig}: exiting without draining");
                    std::process::exit(130);
                }
                info!("signal {sig}: draining (connections get CLOSE DRAIN)");
                drain_cores(&peers);
            }
        })
        .context("spawning the signal thread")?;
    Ok(())
}

/// Binds `cores` listening sockets to one address with SO_REUSEPORT, so the kernel spreads
/// accepts over the cores. With port 0, the first socket picks the port and the others join it.
fn bind_reuseport(addr: SocketAddr, cores: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(cores);
    let mut addr = addr;
    for _ in 0..cores {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())
            .with_context(|| format!("binding {addr}"))?;
        s.listen(4096)?;
        let l: std::net::TcpListener = s.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

fn build_authenticator(key: &AuthKey) -> anyhow::Result<Authenticator> {
    Ok(match key {
        AuthKey::Secret { secret, .. } => Authenticator::hs256(secret),
        AuthKey::PublicKey { algorithm, pem } => {
            Authenticator::public_key(crate::auth::parse_algorithm(algorithm)?, pem)?
        }
    })
}

/// Name of the file a node writes its bound addresses to.
pub const PORTS_FILE: &str = "ports.json";

/// Opens the store, binds the listeners, writes `ports.json` and starts the cores and the admin
/// endpoint.
pub fn start(settings: &Settings) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    // In a cluster the node's name is its persisted cluster id (the ring places slots by it).
    let mut named = settings.clone();
    let cluster_identity = match &settings.cluster {
        Some(c) => {
            let id = crate::cluster::node::PersistedIdentity::load(
                &settings.data_dir,
                c.node_id.as_deref(),
            )?;
            named.node_id = id.id.to_string();
            Some(id)
        }
        None => None,
    };
    let settings = &named;
    let ports_path = settings.data_dir.join(PORTS_FILE);
    let _ = std::fs::remove_file(&ports_path);

    let db_path = settings.data_dir.join("db");
    let engine = RocksEngine::open(&db_path, &settings.rocks)
        .with_context(|| format!("opening database {}", db_path.display()))?;
    let store_config = StoreConfig {
        write_queue_capacity: settings.storage_write_queue,
        read_queue_capacity: settings.storage_read_queue,
        node_id: Some(settings.node_id.clone()),
        groups: settings.groups,
        tenant_group_max_members: settings
            .tenants
            .iter()
            .filter_map(|(t, l)| Some((t.clone(), l.group_max_members?)))
            .collect(),
        ..StoreConfig::default()
    };
    let store = Arc::new(
        Store::open(engine, store_config, Arc::new(SystemClock)).context("opening store")?,
    );

    let cores = settings.cores;
    let native_listeners = bind_reuseport(settings.native, cores)?;
    let native = native_listeners[0].local_addr()?;
    let mut per_core: Vec<Vec<(std::net::TcpListener, ListenerKind)>> = native_listeners
        .into_iter()
        .map(|l| vec![(l, ListenerKind::Plain)])
        .collect();
    let mut http = None;
    if let Some(addr) = settings.http {
        let ls = bind_reuseport(addr, cores)?;
        http = Some(ls[0].local_addr()?);
        for (v, l) in per_core.iter_mut().zip(ls) {
            v.push((l, ListenerKind::Plain));
        }
    }
    let mut tls_addr = None;
    let mut tls_setup = None;
    let mut tls_fingerprint = None;
    if let Some(addr) = settings.tls {
        let files = match &settings.tls_files {
            Some(f) => f.clone(),
            None => {
                let f = tls::dev_cert_files(&settings.data_dir);
                if tls::ensure_dev_cert(&f).context("making the dev TLS certificate")? {
                    info!("made a self-signed TLS certificate in {}", f.cert.display());
                }
                f
            }
        };
        let (reloadable, fingerprint) = Reloadable::new(files.clone())
            .with_context(|| format!("loading TLS certificate {}", files.cert.display()))?;
        let ls = bind_reuseport(addr, cores)?;
        tls_addr = Some(ls[0].local_addr()?);
        for (v, l) in per_core.iter_mut().zip(ls) {
            v.push((l, ListenerKind::Tls));
        }
        tls_setup = Some(Arc::new(reloadable));
        tls_fingerprint = Some(fingerprint);
    }
    let admin_listener = std::net::TcpListener::bind(settings.admin)
        .with_context(|| format!("binding admin {}", settings.admin))?;
    let admin = admin_listener.local_addr()?;
    let cluster = match (&settings.cluster, cluster_identity) {
        (Some(c), Some(identity)) => {
            let addrs = crate::cluster::node::client_addrs(native, tls_addr, http, c.bind.ip());
            crate::cluster::fault::set_enabled(settings.dev);
            let mut node = crate::cluster::node::ClusterNode::bind(c, identity, addrs)?;
            crate::cluster::links::install(&mut node, &c.secret, &store)?;
            Some(node)
        }
        _ => None,
    };
    let owners = Arc::new(SharedOwners::new(OwnerTable::local(cores as u16)));
    crate::cluster::node::publish_single_node(&owners.load());

    let mut senders = Vec::with_capacity(cores);
    let mut receivers = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (tx, rx) = flume::bounded(CORE_QUEUE);
        senders.push(tx);
        receivers.push(rx);
    }
    let hooks = build_hooks(settings, &store)?;
    let filter = hooks.filter.clone();
    let node = Arc::new(NodeShared {
        hooks,
        store: Arc::clone(&store),
        tls: tls_setup.clone(),
        proxy_trusted: settings.proxy_trusted.clone(),
        auth: build_authenticator(&settings.auth)?,
        owners: Arc::clone(&owners),
        peers: senders,
        cfg: ConnConfig {
            timers: settings.timers,
            outbound_queue: settings.outbound_queue,
            max_frame: settings.max_frame,
            node_id: settings.node_id.clone(),
            limits: Limits {
                recall_window_ms: settings.recall_window_ms,
                typing_per_sec: settings.typing_per_sec,
                typing_burst: settings.typing_burst,
                ..Limits::default()
            },
            rooms: settings.rooms,
            topics: Arc::new(crate::topics::TopicService::new(settings.topics.clone())),
        },
    });

    let mut threads = Vec::with_capacity(cores);
    let driver = settings.io_driver;
    for (i, (listeners, rx)) in per_core.into_iter().zip(receivers).enumerate() {
        let node = Arc::clone(&node);
        let t = std::thread::Builder::new()
            .name(format!("tern-core-{i}"))
            .spawn(move || run_core(i as u16, listeners, rx, node, driver))
            .context("spawning core thread")?;
        threads.push(t);
    }
    let cluster_state = cluster.as_ref().map(|c| Arc::clone(&c.state));
    let cluster_addr = cluster.as_ref().map(|c| c.state.bound());
    if let Some(c) = cluster {
        c.spawn(owners, cores as u16)?;
    }
    let info = crate::admin::AdminInfo {
        node_id: settings.node_id.clone(),
        cores,
        cluster: cluster_state,
    };
    // The admin endpoint lives as long as the process; it is not joined on drain.
    std::thread::Builder::new()
        .name("tern-admin".into())
        .spawn(move || crate::admin::serve(admin_listener, info))
        .context("spawning admin thread")?;
    let peers = node.peers.clone();
    spawn_drain_on_signals(peers.clone())?;

    if tls_setup.is_some() || filter.is_some() {
        spawn_reloader(tls_setup, filter)?;
    }
    let mut ports = serde_json::json!({ "native": native.to_string(), "admin": admin.to_string() });
    if let Some(a) = tls_addr {
        ports["tls"] = a.to_string().into();
    }
    if let Some(a) = http {
        ports["http"] = a.to_string().into();
    }
    if let Some(a) = cluster_addr {
        ports["cluster"] = a.to_string().into();
    }
    let tmp = settings.data_dir.join("ports.json.tmp");
    std::fs::write(&tmp, ports.to_string()).context("writing ports.json")?;
    std::fs::rename(&tmp, &ports_path).context("writing ports.json")?;
    Ok(RunningNode {
        native,
        admin,
        tls: tls_addr,
        http,
        tls_fingerprint,
        threads,
        peers,
        store,
    })
}

/// The push hook's thread and the content filter, as configured.
fn build_hooks(settings: &Settings, store: &Arc<NodeStore>) -> anyhow::Result<Hooks> {
    let push = match &settings.push {
        Some(p) => {
            let url = crate::webhook::WebhookUrl::parse(&p.webhook)?;
            let cfg =
                crate::webhook::HookConfig::new(url, p.secret.clone(), settings.node_id.clone());
            Some(crate::webhook::spawn(cfg, Arc::clone(store)).context("starting the push hook")?)
        }
        None => None,
    };
    let filter = match &settings.filter {
        Some(f) => {
            let filter = crate::filter::ContentFilter::load(&f.words, f.mode)?;
            info!(
                "content filter: {} words from {}, {:?} mode",
                filter.list().len(),
                f.words.display(),
                f.mode
            );
            Some(Arc::new(filter))
        }
        None => None,
    };
    Ok(Hooks {
        push,
        filter,
        tenants: crate::tenant::Tenants::new(&settings.tenants),
    })
}

/// Reloads the TLS certificate and the content filter's word list on SIGHUP; a failed reload
/// keeps the old one.
fn spawn_reloader(
    tls: Option<Arc<Reloadable>>,
    filter: Option<Arc<crate::filter::ContentFilter>>,
) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .context("installing the SIGHUP handler")?;
    std::thread::Builder::new()
        .name("tern-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                if let Some(reloadable) = &tls {
                    match reloadable.reload() {
                        Ok(fp) => info!("SIGHUP: TLS certificate reloaded (SHA-256 {fp})"),
                        Err(e) => {
                            warn!("SIGHUP: TLS certificate not reloaded, keeping the old one: {e}")
                        }
                    }
                }
                if let Some(filter) = &filter {
                    match filter.reload() {
                        Ok(n) => info!(
                            "SIGHUP: content filter reloaded ({n} words from {})",
                            filter.path().display()
                        ),
                        Err(e) => {
                            warn!("SIGHUP: content filter not reloaded, keeping the old list: {e}")
                        }
                    }
                }
            }
        })
        .context("spawning the SIGHUP thread")?;
    Ok(())
}

fn run_core(
    i: u16,
    listeners: Vec<(std::net::TcpListener, ListenerKind)>,
    rx: flume::Receiver<CoreMsg>,
    node: Arc<NodeShared>,
    driver: IoDriver,
) {
    let fut = core_main(i, listeners, rx, node);
    let built = match driver {
        IoDriver::Auto => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| {
                let name = match &rt {
                    monoio::FusionRuntime::Uring(_) => "io_uring",
                    monoio::FusionRuntime::Legacy(_) => "epoll (legacy)",
                };
                info!("core {i}: monoio runtime with the {name} driver");
                rt.block_on(fut)
            }),
        IoDriver::IoUring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| {
                info!("core {i}: monoio runtime with the io_uring driver (forced)");
                rt.block_on(fut)
            }),
        IoDriver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| {
                info!("core {i}: monoio runtime with the epoll (legacy) driver (forced)");
                rt.block_on(fut)
            }),
    };
    if let Err(e) = built {
        tracing::error!("core {i}: cannot build the {driver:?} runtime: {e}");
    }
}

async fn core_main(
    i: u16,
    listeners: Vec<(std::net::TcpListener, ListenerKind)>,
    rx: flume::Receiver<CoreMsg>,
    node: Arc<NodeShared>,
) {
    let core = Rc::new(Core::new(i, node));
    // Node-to-node links run on core 0 (`cluster::links`).
    if let (0, Some(links)) = (i, crate::cluster::links::installed()) {
        monoio::spawn(crate::cluster::links::run(
            Arc::clone(&core.node),
            Arc::clone(links),
        ));
    }
    let inbox_core = Rc::clone(&core);
    monoio::spawn(async move {
        while let Ok(msg) = rx.recv_async().await {
            inbox_core.handle(msg);
        }
    });
    let sweep_core = Rc::clone(&core);
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(SWEEP_INTERVAL).await;
            let now = now_ms();
            sweep_core.sweep(now);
            sweep_core.presence_leases(now);
        }
    });
    if let Some(parking) = &core.parking {
        // The runtime waits on the epoll instance like on a socket: its descriptor only needs
        // to poll readable, which an epoll descriptor does when a registered socket is ready.
        match parking
            .watch_fd()
            .and_then(|fd| TcpStream::from_std(std::net::TcpStream::from(fd)))
        {
            Ok(watch) => {
                monoio::spawn(unpark_loop(Rc::clone(&core), watch));
            }
            Err(e) => tracing::error!("core {i}: cannot watch parked connections: {e}"),
        }
    }
    let mut accepting = Vec::new();
    for (listener, kind) in listeners {
        match TcpListener::from_std(listener) {
            Ok(l) => accepting.push(monoio::spawn(accept_loop(i, Rc::clone(&core), l, kind))),
            Err(e) => tracing::error!("core {i}: cannot register listener: {e}"),
        }
    }
    // Serve until the node drains, then give connections a moment to send their CLOSE.
    poll_fn(|cx| {
        if core.draining.get() {
            Poll::Ready(())
        } else {
            *core.drained.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    drop(accepting);
    let deadline = monoio::time::Instant::now() + DRAIN_GRACE;
    while !core.conns.borrow().is_empty() && monoio::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    info!(
        "core {i}: drained, {} connections left",
        core.conns.borrow().len()
    );
}

async fn accept_loop(i: u16, core: Rc<Core>, listener: TcpListener, kind: ListenerKind) {
    loop {
        match listener.accept().await {
            Ok(_) if core.draining.get() => return,
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let accepted = Box::new(Accepted { stream, peer, kind });
                monoio::spawn(serve(Rc::clone(&core), accepted));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("core {i}: accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_push_queue_gives_its_memory_back_once_released_empty() {
        let mut q = PushQueue::default();
        assert!(q.0.is_none() && q.is_empty());
        q.push_back(Bytes::from_static(b"a"));
        q.push_back(Bytes::from_static(b"b"));
        q.release();
        assert_eq!(q.len(), 2, "kept while frames wait");
        assert_eq!(q.pop_front().as_deref(), Some(&b"a"[..]));
        assert_eq!(q.front().map(|f| f.as_ref()), Some(&b"b"[..]));
        q.pop_front();
        assert!(
            q.0.is_some(),
            "popping keeps the allocation for the next burst"
        );
        q.release();
        assert!(q.0.is_none());
        q.push_back(Bytes::from_static(b"c"));
        q.clear();
        assert!(q.0.is_none() && q.pop_front().is_none());
    }

    #[test]
    fn session_ids_name_core_and_connection() {
        let c = ConnRef { core: 3, id: 77 };
        assert_eq!(ConnRef::from_session_id(c.session_id()), c);
    }

    #[test]
    fn sweeper_marks_due_deadlines_once() {
        let s = ConnShared::default();
        assert!(!s.sweep(100));
        s.deadline_ms.set(1_000);
        assert!(!s.sweep(999));
        assert!(s.sweep(1_000));
        assert!(!s.sweep(2_000), "already due");
        assert!(s.timer_due.get());
    }

    #[test]
    fn outbound_queue_overflow_kicks_as_slow_consumer() {
        let s = ConnShared::default();
        for _ in 0..3 {
            s.enqueue(Bytes::from_static(b"x"), 3);
        }
        assert!(s.kick.get().is_none());
        s.enqueue(Bytes::from_static(b"x"), 3);
        assert_eq!(s.kick.get(), Some(CloseReason::SLOW_CONSUMER));
        assert!(s.queue.borrow().is_empty());
    }

    fn test_node(owners: OwnerTable) -> (tempfile::TempDir, Arc<NodeShared>) {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path(), &tern_storage::RocksConfig::default()).unwrap();
        let store =
            Arc::new(Store::open(engine, StoreConfig::default(), Arc::new(SystemClock)).unwrap());
        let node = Arc::new(NodeShared {
            store,
            tls: None,
            proxy_trusted: Vec::new(),
            auth: Authenticator::hs256(b"0123456789abcdef"),
            owners: Arc::new(SharedOwners::new(owners)),
            peers: Vec::new(),
            cfg: ConnConfig {
                timers: Timers::default(),
                outbound_queue: 8,
                max_frame: DEFAULT_MAX_BODY,
                node_id: "t".into(),
                limits: Limits::default(),
                rooms: RoomConfig::default(),
                topics: Arc::default(),
            },
            hooks: Hooks::default(),
        });
        (dir, node)
    }

    /// A user whose slot another node owns is redirected there, with every address the owner
    /// advertises.
    #[test]
    fn hello_for_a_user_owned_elsewhere_is_redirected() {
        use crate::slots::SlotId;
        use std::io::{Read, Write};
        let owners = OwnerTable::local(1).with_owner(
            SlotId::of_user("alice"),
            Owner::Remote(Arc::new(crate::slots::RemoteOwner {
                node: "n2".into(),
                addrs: vec![
                    (tern_protocol::Transport::NATIVE, "10.1.2.3:14000".into()),
                    (tern_protocol::Transport::TLS, "10.1.2.3:14443".into()),
                ],
            })),
        );
        let (_dir, node) = test_node(owners);
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let frames = rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let token =
                crate::auth::mint_hs256(b"0123456789abcdef", "alice", None, 60, now_ms() / 1000)
                    .unwrap();
            let client = std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let hello = Frame::new(
                    9,
                    Body::Hello(Hello {
                        protocol: PROTOCOL,
                        capabilities: Capabilities::NONE,
                        max_frame: DEFAULT_MAX_BODY,
                        token: token.into(),
                        device: "phone".into(),
                        resume_inbox_seq: 0,
                        client: "".into(),
                    }),
                );
                s.write_all(&hello.to_bytes().unwrap()).unwrap();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).unwrap();
                tern_protocol::FrameIter::new(&buf, DEFAULT_MAX_BODY)
                    .map(|f| f.unwrap().into_owned())
                    .collect::<Vec<_>>()
            });
            let (stream, peer) = listener.accept().await.unwrap();
            let accepted = Box::new(Accepted {
                stream,
                peer,
                kind: ListenerKind::Plain,
            });
            serve(Rc::new(Core::new(0, node)), accepted).await;
            client.join().unwrap()
        });
        match frames.as_slice() {
            [Frame {
                request_id: 9,
                body: Body::Redirect(r),
                ..
            }, Frame {
                body: Body::Close(c),
                ..
            }] => {
                assert_eq!(r.epoch, 2);
                assert_eq!(r.addrs[0].addr, "10.1.2.3:14000");
                assert_eq!(r.addrs[1].transport, tern_protocol::Transport::TLS);
                assert_eq!(c.reason, CloseReason::REDIRECT);
            }
            other => panic!("expected REDIRECT + CLOSE, got {other:?}"),
        }
    }

    /// The future an idle connection keeps alive, measured on a real socket.
    #[test]
    fn connection_future_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path(), &tern_storage::RocksConfig::default()).unwrap();
        let store =
            Arc::new(Store::open(engine, StoreConfig::default(), Arc::new(SystemClock)).unwrap());
        let node = Arc::new(NodeShared {
            store,
            tls: None,
            proxy_trusted: Vec::new(),
            auth: Authenticator::hs256(b"0123456789abcdef"),
            owners: Arc::new(SharedOwners::new(OwnerTable::local(1))),
            peers: Vec::new(),
            cfg: ConnConfig {
                timers: Timers::default(),
                outbound_queue: 8,
                max_frame: DEFAULT_MAX_BODY,
                node_id: "t".into(),
                limits: Limits::default(),
                rooms: RoomConfig::default(),
                topics: Arc::default(),
            },
            hooks: Hooks::default(),
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let _client = std::net::TcpStream::connect(addr).unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let core = Rc::new(Core::new(0, node));
            let accepted = Box::new(Accepted {
                stream,
                peer,
                kind: ListenerKind::Plain,
            });
            let fut = serve(core, accepted);
            // The connection itself lives on the heap next to the future.
            let size = std::mem::size_of_val(&fut) + std::mem::size_of::<Connection>();
            println!(
                "connection future: {size} bytes; Connection: {} bytes; Link: {}; TcpStream: {}",
                std::mem::size_of::<Connection>(),
                std::mem::size_of::<Link>(),
                std::mem::size_of::<TcpStream>(),
            );
            assert!(size <= 512, "connection future is {size} bytes");
        });
    }
}
