//! The reliable client: a worker thread owns the connection and implements the client's half of
//! the six-packet model; the application talks to it through [`Client`] and reads [`Event`]s.
//!
//! - Sending: every message gets a local, increasing sequence number and a message id made of a
//!   per-client random prefix and that sequence. It stays in the send queue until its SEND_ACK
//!   arrives, and is retransmitted (same message id, RETRANSMIT flag) every
//!   [`ClientConfig::retransmit_after`] and after every reconnect. The server de-duplicates by
//!   message id, so a lost SEND_ACK never creates a second message.
//! - Receiving: messages (PUSH or SYNC_PAGE) are handed out once, de-duplicated by
//!   (conversation, conversation sequence). The device's inbox position advances only over
//!   contiguous inbox sequences; a gap that PUSHes do not fill within
//!   [`ClientConfig::gap_grace`] triggers a SYNC. The position is acknowledged with PUSH_ACK in
//!   batches and saved to [`ClientConfig::state_path`].
//! - Connecting: every (re)connect walks the transport ladder ([`Endpoints`]), starting with the
//!   rung that worked last (remembered in memory and in the state file). After every connect
//!   the client SYNCs from its saved position, then retransmits its queue. Failed connects back
//!   off exponentially up to [`ClientConfig::backoff_max`]; auth failures stop the client (a new
//!   token is needed).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tern_protocol::{
    Body, Close, CloseReason, Conv, ErrorCode, Flags, Frame, FrameType, Message, MessageKind,
    MsgId, Mute, Ping, Presence, PresenceStatus, PushAck, PushToken, Recall, Receipt, Relation,
    RelationEntry, RelationKind, RelationList, RelationOp, RelationPage, Send, SendAck,
    SendWithMentions, SubOp, Subscribe, Sync, Typing, TypingState,
};

use crate::connection::{Connection, ConnectionError, HelloParams};
use crate::endpoint::Endpoints;
use crate::group::GroupEvent;
use crate::state::DeviceState;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server addresses as [`Endpoints::parse`] reads them (one rung URL, `host:port`, a
    /// comma-separated list, a bare host for the default ladder); ignored when `endpoints` is
    /// set.
    pub addr: String,
    /// The ladder, with its TLS and proxy options; `None`: parsed from `addr`, each rung
    /// getting `connect_timeout`.
    pub endpoints: Option<Endpoints>,
    pub token: String,
    pub device: String,
    /// Where the device's inbox position is kept; `None` keeps it in memory only.
    pub state_path: Option<PathBuf>,
    pub retransmit_after: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// PUSH_ACKs are batched: at most one per this interval.
    pub ack_delay: Duration,
    /// How long a gap in the inbox sequence may wait for a late PUSH before a SYNC fills it.
    pub gap_grace: Duration,
    /// Messages per SYNC page.
    pub sync_page: u16,
}

impl ClientConfig {
    pub fn new(
        addr: impl Into<String>,
        token: impl Into<String>,
        device: impl Into<String>,
    ) -> ClientConfig {
        ClientConfig {
            addr: addr.into(),
            endpoints: None,
            token: token.into(),
            device: device.into(),
            state_path: None,
            retransmit_after: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ack_delay: Duration::from_millis(200),
            gap_grace: Duration::from_millis(300),
            sync_page: 200,
        }
    }

    /// Connects through this ladder instead of `addr`.
    pub fn with_endpoints(mut self, endpoints: Endpoints) -> ClientConfig {
        self.endpoints = Some(endpoints);
        self
    }
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session is open.
    Connected {
        user: String,
        session_id: u64,
        /// The rung it runs on (its URL).
        via: String,
    },
    /// The connection ended; the client reconnects unless stopped.
    Disconnected {
        reason: String,
    },
    /// The server refused the session for good (bad or expired token…); the client stopped.
    Fatal {
        code: ErrorCode,
        message: String,
    },
    /// A message, delivered once.
    Message(Message<'static>),
    /// A change to a group (a GROUP_EVENT message of a group conversation, delivered once like
    /// a message), with its body decoded.
    GroupEvent {
        message: Message<'static>,
        event: GroupEvent,
    },
    /// A message of ours is durable on the server.
    SendAcked {
        local_seq: u64,
        ack: SendAck,
    },
    /// The server refused a message of ours.
    SendFailed {
        local_seq: u64,
        msg_id: MsgId,
        code: ErrorCode,
        message: String,
    },
    Receipt(Receipt<'static>),
    Typing(Typing<'static>),
    Presence(Presence<'static>),
    /// A relation notice from the node: someone asked to be friends (`FRIEND_REQUEST`, with
    /// the request's note) or accepted our request (`FRIEND_ACCEPT`).
    Relation(Relation<'static>),
    /// A SYNC finished: everything up to `inbox_seq` has been received.
    Synced {
        inbox_seq: u64,
    },
}

/// A message accepted into the send queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSend {
    pub local_seq: u64,
    pub msg_id: MsgId,
}

/// Why a call to the client failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the client has stopped")]
    Stopped,
    #[error("timed out")]
    Timeout,
    #[error("not connected")]
    NotConnected,
    #[error("server error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("the node answered with an unexpected {0}")]
    Unexpected(FrameType),
}

type Waiter<T> = mpsc::Sender<Result<T, SendError>>;

enum Cmd {
    Send {
        local_seq: u64,
        msg_id: MsgId,
        to: Conv<'static>,
        kind: MessageKind,
        body: Vec<u8>,
        /// SEND's mentions (group members, `""` for @all); empty: none.
        mentions: Vec<String>,
        waiter: Option<Waiter<SendAck>>,
    },
    Request {
        body: Body<'static>,
        reply: Waiter<Frame<'static>>,
    },
    /// A frame without an answer (TYPING): sent if connected, dropped otherwise.
    Notify {
        body: Body<'static>,
    },
    Stop,
}

/// A reliable tern client; see the module docs.
#[derive(Debug)]
pub struct Client {
    tx: mpsc::Sender<Cmd>,
    events: mpsc::Receiver<Event>,
    worker: Option<JoinHandle<()>>,
    prefix: [u8; 8],
    next_local: AtomicU64,
}

fn random_u64() -> u64 {
    // std's per-process random hasher keys plus the clock: unique enough for an id prefix,
    // without pulling an RNG into the SDK.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl Client {
    /// Starts the worker; it connects in the background.
    pub fn start(cfg: ClientConfig) -> Client {
        let (tx, cmds) = mpsc::channel();
        let (events_tx, events) = mpsc::channel();
        let state = cfg
            .state_path
            .as_ref()
            .and_then(|p| DeviceState::load(p).ok())
            .unwrap_or_default();
        let worker = Worker {
            cfg,
            events: events_tx,
            cmds,
            acked_sent: state.inbox_seq,
            state,
            received: BTreeSet::new(),
            gap_since: None,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            pending: BTreeMap::new(),
            by_msg_id: HashMap::new(),
            requests: HashMap::new(),
            subscriptions: BTreeSet::new(),
            sync_in_flight: None,
            group_page_held: false,
            synced_once: false,
            last_ack: Instant::now(),
            stopped: false,
        };
        let handle = std::thread::Builder::new()
            .name("tern-client".into())
            .spawn(move || worker.run())
            .ok();
        Client {
            tx,
            events,
            worker: handle,
            prefix: random_u64().to_be_bytes(),
            next_local: AtomicU64::new(1),
        }
    }

    /// Queues a message; it is sent (and retransmitted) until acknowledged.
    pub fn send(
        &self,
        to: &str,
        kind: MessageKind,
        body: Vec<u8>,
    ) -> Result<PendingSend, SendError> {
        self.enqueue(Conv::direct(to.to_owned()), kind, body, Vec::new(), None)
    }

    /// Queues a message to any conversation the node accepts SENDs for (DIRECT, GROUP); it is
    /// sent (and retransmitted) until acknowledged.
    pub fn send_to(
        &self,
        to: Conv<'static>,
        kind: MessageKind,
        body: Vec<u8>,
    ) -> Result<PendingSend, SendError> {
        self.enqueue(to, kind, body, Vec::new(), None)
    }

    /// [`Client::send_to`], waiting for the SEND_ACK.
    pub fn send_to_wait(
        &self,
        to: Conv<'static>,
        kind: MessageKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<SendAck, SendError> {
        let (tx, rx) = mpsc::channel();
        self.enqueue(to, kind, body, Vec::new(), Some(tx))?;
        rx.recv_timeout(timeout).map_err(|_| SendError::Timeout)?
    }

    /// Queues a message that mentions `mentions` (user ids of a group's members; `""` is
    /// @all, SPEC.md "Mentions"): it travels through the send queue like any other, its
    /// retransmissions carry the same mentions, and a SEND without mentions is sent when the
    /// list is empty. `waiter` gets the SEND_ACK or the refusal.
    pub(crate) fn enqueue_mentioning(
        &self,
        to: Conv<'static>,
        kind: MessageKind,
        body: Vec<u8>,
        mentions: Vec<String>,
        waiter: Option<Waiter<SendAck>>,
    ) -> Result<PendingSend, SendError> {
        self.enqueue(to, kind, body, mentions, waiter)
    }

    fn enqueue(
        &self,
        to: Conv<'static>,
        kind: MessageKind,
        body: Vec<u8>,
        mentions: Vec<String>,
        waiter: Option<Waiter<SendAck>>,
    ) -> Result<PendingSend, SendError> {
        let local_seq = self.next_local.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.prefix);
        id[8..].copy_from_slice(&local_seq.to_be_bytes());
        let msg_id = MsgId(id);
        self.tx
            .send(Cmd::Send {
                local_seq,
                msg_id,
                to,
                kind,
                body,
                mentions,
                waiter,
            })
            .map_err(|_| SendError::Stopped)?;
        Ok(PendingSend { local_seq, msg_id })
    }

    /// Sends and waits for the SEND_ACK (retransmitting meanwhile).
    pub fn send_wait(
        &self,
        to: &str,
        kind: MessageKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<SendAck, SendError> {
        self.send_to_wait(Conv::direct(to.to_owned()), kind, body, timeout)
    }

    /// Sends a request (HISTORY, CONTACTS, READ…) on the current connection and waits for the
    /// frame answering it.
    pub fn request(
        &self,
        body: Body<'static>,
        timeout: Duration,
    ) -> Result<Frame<'static>, SendError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Cmd::Request { body, reply: tx })
            .map_err(|_| SendError::Stopped)?;
        rx.recv_timeout(timeout).map_err(|_| SendError::Timeout)?
    }

    /// Recalls message `conv_seq` of the conversation with `with` (SPEC.md §7, RECALL) and
    /// returns the SEND_ACK of the recall event once the node has stored it.
    pub fn recall(
        &self,
        with: &str,
        conv_seq: u64,
        timeout: Duration,
    ) -> Result<SendAck, SendError> {
        self.recall_in(Conv::direct(with.to_owned()), conv_seq, timeout)
    }

    /// Recalls message `conv_seq` of `group` (ours, or a member's when we own or administer
    /// the group), as [`Client::recall`] does in a one-to-one conversation.
    pub fn recall_group(
        &self,
        group: &str,
        conv_seq: u64,
        timeout: Duration,
    ) -> Result<SendAck, SendError> {
        self.recall_in(Conv::group(group.to_owned()), conv_seq, timeout)
    }

    fn recall_in(
        &self,
        conv: Conv<'static>,
        conv_seq: u64,
        timeout: Duration,
    ) -> Result<SendAck, SendError> {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.prefix);
        id[8..].copy_from_slice(
            &self
                .next_local
                .fetch_add(1, Ordering::Relaxed)
                .to_be_bytes(),
        );
        let body = Body::Recall(Recall {
            conv,
            conv_seq,
            msg_id: MsgId(id),
        });
        match self.request(body, timeout)?.body {
            Body::SendAck(a) => Ok(a),
            other => Err(SendError::Unexpected(other.frame_type())),
        }
    }

    /// Changes a relation with `user` (SPEC.md §7, Relations) and waits for the node's OK, which
    /// comes once the change is durable: from then on every SEND obeys it. `note` goes with
    /// `FRIEND_REQUEST` only.
    pub fn relate(
        &self,
        op: RelationOp,
        user: &str,
        note: &str,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let body = Body::Relation(Relation {
            op,
            user: user.to_owned().into(),
            note: note.to_owned().into(),
        });
        match self.request(body, timeout)?.body {
            Body::Ok => Ok(()),
            other => Err(SendError::Unexpected(other.frame_type())),
        }
    }

    /// Follows `user` (one-way).
    pub fn follow(&self, user: &str, timeout: Duration) -> Result<(), SendError> {
        self.relate(RelationOp::FOLLOW, user, "", timeout)
    }

    /// Stops following `user`.
    pub fn unfollow(&self, user: &str, timeout: Duration) -> Result<(), SendError> {
        self.relate(RelationOp::UNFOLLOW, user, "", timeout)
    }

    /// Asks `user` to be friends; their devices get a notice with `note`.
    pub fn friend_request(
        &self,
        user: &str,
        note: &str,
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.relate(RelationOp::FRIEND_REQUEST, user, note, timeout)
    }

    /// Accepts `user`'s friend request.
    pub fn friend_accept(&self, user: &str, timeout: Duration) -> Result<(), SendError> {
        self.relate(RelationOp::FRIEND_ACCEPT, user, "", timeout)
    }

    /// Declines `user`'s friend request, or withdraws ours to `user`.
    pub fn friend_decline(&self, user: &str, timeout: Duration) -> Result<(), SendError> {
        self.relate(RelationOp::FRIEND_DECLINE, user, "", timeout)
    }

    /// Ends the friendship with `user`, for both.
    pub fn unfriend(&self, user: &str, timeout: Duration) -> Result<(), SendError> {
        self.relate(RelationOp::UNFRIEND, user, "", timeout)
    }

    /// Blocks `user`: their messages, follows and friend requests are refused.
    pub fn block(&self, user: &str, timeout: Duration) -> Result<(), SendError> {
        self.relate(RelationOp::BLOCK, user, "", timeout)
    }

    /// Ends the block of `user`.
    pub fn unblock(&self, user: &str, timeout: Duration) -> Result<(), SendError> {
        self.relate(RelationOp::UNBLOCK, user, "", timeout)
    }

    /// Accepts one-to-one messages from friends only (`true`) or from everyone not blocked.
    pub fn set_friends_only(&self, on: bool, timeout: Duration) -> Result<(), SendError> {
        let op = if on {
            RelationOp::SET_FRIENDS_ONLY
        } else {
            RelationOp::CLEAR_FRIENDS_ONLY
        };
        self.relate(op, "", "", timeout)
    }

    /// One page of a relation list; continue with the page's `next_cursor` until it is empty.
    pub fn relation_page(
        &self,
        kind: RelationKind,
        cursor: &str,
        limit: u16,
        timeout: Duration,
    ) -> Result<RelationPage<'static>, SendError> {
        let body = Body::RelationList(RelationList {
            kind,
            cursor: cursor.to_owned().into(),
            limit,
        });
        match self.request(body, timeout)?.body {
            Body::RelationPage(page) => Ok(page),
            other => Err(SendError::Unexpected(other.frame_type())),
        }
    }

    /// A whole relation list, paged with the node's default page size (at most 10,000 pages).
    pub fn relations(
        &self,
        kind: RelationKind,
        timeout: Duration,
    ) -> Result<Vec<RelationEntry<'static>>, SendError> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10_000 {
            let page = self.relation_page(kind, &cursor, 0, timeout)?;
            out.extend(page.users);
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor.into_owned();
        }
        Ok(out)
    }

    /// Sends a request whose only answer is OK.
    pub(crate) fn request_ok(
        &self,
        body: Body<'static>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        match self.request(body, timeout)?.body {
            Body::Ok => Ok(()),
            other => Err(SendError::Unexpected(other.frame_type())),
        }
    }

    /// Sets the user's presence (SPEC.md §7, PRESENCE): ONLINE, AWAY or BUSY with a status text;
    /// it applies to all the user's devices.
    pub fn set_presence(
        &self,
        status: PresenceStatus,
        text: &str,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let body = Body::Presence(Presence {
            user: "".into(),
            status,
            last_seen: 0,
            text: text.to_owned().into(),
        });
        self.request_ok(body, timeout)
    }

    /// Follows the presence of `users`: their current presence and every change arrive as
    /// [`Event::Presence`]. The subscriptions are repeated after every reconnect.
    pub fn subscribe(&self, users: &[&str], timeout: Duration) -> Result<(), SendError> {
        self.subscription(SubOp::ADD, users, timeout)
    }

    /// Stops following the presence of `users`.
    pub fn unsubscribe(&self, users: &[&str], timeout: Duration) -> Result<(), SendError> {
        self.subscription(SubOp::REMOVE, users, timeout)
    }

    fn subscription(&self, op: SubOp, users: &[&str], timeout: Duration) -> Result<(), SendError> {
        let body = Body::Subscribe(Subscribe {
            op,
            users: users.iter().map(|u| (*u).to_owned().into()).collect(),
        });
        self.request_ok(body, timeout)
    }

    /// Tells `to` that we are typing (or stopped); fire and forget, dropped when not connected.
    pub fn typing(&self, to: &str, typing: bool) -> Result<(), SendError> {
        let state = if typing {
            TypingState::TYPING
        } else {
            TypingState::STOPPED
        };
        let body = Body::Typing(Typing {
            conv: Conv::direct(to.to_owned()),
            user: "".into(),
            state,
        });
        self.tx
            .send(Cmd::Notify { body })
            .map_err(|_| SendError::Stopped)
    }

    /// Registers this device's push token for offline notifications (`platform`: e.g. `apns`,
    /// `fcm`); an empty token removes it.
    pub fn register_push_token(
        &self,
        platform: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let body = Body::PushToken(PushToken {
            platform: platform.to_owned().into(),
            token: token.to_owned().into(),
        });
        self.request_ok(body, timeout)
    }

    /// Mutes offline notifications of the conversation with `with` until `until_ms` (ms since
    /// the epoch; `u64::MAX`: until unmuted, 0: unmute).
    pub fn mute(&self, with: &str, until_ms: u64, timeout: Duration) -> Result<(), SendError> {
        let body = Body::Mute(Mute {
            conv: Conv::direct(with.to_owned()),
            until: until_ms,
        });
        self.request_ok(body, timeout)
    }

    /// The next event, waiting at most `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Stops the worker (saving the position) and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Pending {
    msg_id: MsgId,
    to: Conv<'static>,
    kind: MessageKind,
    body: Vec<u8>,
    mentions: Vec<String>,
    last_rid: u32,
    last_sent: Option<Instant>,
    attempts: u32,
    waiter: Option<Waiter<SendAck>>,
}

type SeenKey = (u8, String, u64);

struct Worker {
    cfg: ClientConfig,
    events: mpsc::Sender<Event>,
    cmds: mpsc::Receiver<Cmd>,
    state: DeviceState,
    acked_sent: u64,
    /// Inbox sequences received above `state.inbox_seq` (not contiguous yet).
    received: BTreeSet<u64>,
    gap_since: Option<Instant>,
    seen: HashSet<SeenKey>,
    seen_order: VecDeque<SeenKey>,
    pending: BTreeMap<u64, Pending>,
    by_msg_id: HashMap<MsgId, u64>,
    requests: HashMap<u32, Waiter<Frame<'static>>>,
    /// Users whose presence we follow: SUBSCRIBEd again after every reconnect (SPEC §9).
    subscriptions: BTreeSet<String>,
    /// Request id and `after` of the SYNC in flight.
    sync_in_flight: Option<(u32, u64)>,
    /// The last SYNC_PAGE carried read-diffused group messages (inbox seq 0): the node records
    /// them as held only on the next SYNC or PUSH_ACK, so one is due even if the inbox
    /// position did not move (SPEC.md, SYNC, "Order").
    group_page_held: bool,
    /// The SYNC started after WELCOME reached `more` = false; only then may PUSH_ACK be sent.
    synced_once: bool,
    last_ack: Instant,
    stopped: bool,
}

const SEEN_CAPACITY: usize = 50_000;

impl Worker {
    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// The ladder to walk, with the remembered rung first.
    fn endpoints(&self) -> Result<Endpoints, ConnectionError> {
        let mut e = match &self.cfg.endpoints {
            Some(e) => e.clone(),
            None => Endpoints::parse(&self.cfg.addr)?.with_rung_timeout(self.cfg.connect_timeout),
        };
        if let Some(rung) = &self.state.rung {
            e.remember(rung);
        }
        Ok(e)
    }

    fn run(mut self) {
        let mut endpoints = match self.endpoints() {
            Ok(e) => e,
            Err(e) => {
                let code = ErrorCode::INVALID_ARGUMENT;
                self.emit(Event::Fatal {
                    code,
                    message: e.to_string(),
                });
                self.fail_all_sends(code, &e.to_string());
                return;
            }
        };
        let mut attempt: u32 = 0;
        while !self.stopped {
            let mut hello = HelloParams::new(self.cfg.token.clone(), self.cfg.device.clone());
            hello.resume_inbox_seq = self.state.inbox_seq;
            match endpoints.connect(&hello) {
                Ok(conn) => {
                    attempt = 0;
                    let via = conn.rung().to_string();
                    if self.state.rung.as_deref() != Some(via.as_str()) {
                        self.state.rung = Some(via);
                        self.save_state();
                    }
                    let reason = self.serve(conn);
                    self.fail_requests();
                    self.emit(Event::Disconnected { reason });
                }
                Err(e) => {
                    // A closing ERROR at HELLO is final (bad token, protocol mismatch), except
                    // a node shutting down: SPEC §8 says reconnect with backoff.
                    if let Some(code) = e
                        .code()
                        .filter(|c| c.closes_connection() && *c != ErrorCode::SHUTTING_DOWN)
                    {
                        self.emit(Event::Fatal {
                            code,
                            message: e.to_string(),
                        });
                        self.stopped = true;
                        self.fail_all_sends(code, &e.to_string());
                        break;
                    }
                    self.emit(Event::Disconnected {
                        reason: e.to_string(),
                    });
                }
            }
            if self.stopped {
                break;
            }
            let exp = self.cfg.backoff_min.saturating_mul(1u32 << attempt.min(16));
            let jitter = Duration::from_millis(random_u64() % 100);
            let wait = exp.min(self.cfg.backoff_max) + jitter;
            attempt = attempt.saturating_add(1);
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.stopped {
                match self.cmds.recv_timeout(Duration::from_millis(20)) {
                    Ok(cmd) => self.offline_cmd(cmd),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => self.stopped = true,
                }
            }
        }
        self.save_state();
    }

    fn offline_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send {
                local_seq,
                msg_id,
                to,
                kind,
                body,
                mentions,
                waiter,
            } => self.queue(local_seq, msg_id, to, kind, body, mentions, waiter),
            Cmd::Notify { .. } => {}
            Cmd::Request { reply, .. } => {
                let _ = reply.send(Err(SendError::NotConnected));
            }
            Cmd::Stop => self.stopped = true,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn queue(
        &mut self,
        local_seq: u64,
        msg_id: MsgId,
        to: Conv<'static>,
        kind: MessageKind,
        body: Vec<u8>,
        mentions: Vec<String>,
        waiter: Option<Waiter<SendAck>>,
    ) {
        self.by_msg_id.insert(msg_id, local_seq);
        self.pending.insert(
            local_seq,
            Pending {
                msg_id,
                to,
                kind,
                body,
                mentions,
                last_rid: 0,
                last_sent: None,
                attempts: 0,
                waiter,
            },
        );
    }

    fn fail_requests(&mut self) {
        for (_, w) in self.requests.drain() {
            let _ = w.send(Err(SendError::NotConnected));
        }
        self.sync_in_flight = None;
    }

    fn fail_all_sends(&mut self, code: ErrorCode, message: &str) {
        for (local_seq, p) in std::mem::take(&mut self.pending) {
            if let Some(w) = p.waiter {
                let _ = w.send(Err(SendError::Server {
                    code,
                    message: message.to_owned(),
                }));
            }
            self.emit(Event::SendFailed {
                local_seq,
                msg_id: p.msg_id,
                code,
                message: message.to_owned(),
            });
        }
        self.by_msg_id.clear();
    }

    fn transmit(conn: &mut Connection, p: &mut Pending) -> Result<(), ConnectionError> {
        let rid = conn.next_request_id();
        let send = Send {
            to: p.to.clone(),
            msg_id: p.msg_id,
            kind: p.kind,
            body: p.body.as_slice().into(),
        };
        // Every transmission carries the mentions, so a retransmission is the same SEND.
        let body = if p.mentions.is_empty() {
            Body::Send(send)
        } else {
            Body::SendWithMentions(SendWithMentions {
                to: send.to,
                msg_id: send.msg_id,
                kind: send.kind,
                body: send.body,
                mentions: p.mentions.iter().map(|m| m.as_str().into()).collect(),
            })
        };
        let mut frame = Frame::new(rid, body);
        if p.attempts > 0 {
            frame.flags = Flags::RETRANSMIT;
        }
        p.last_rid = rid;
        p.last_sent = Some(Instant::now());
        p.attempts += 1;
        conn.send(&frame)
    }

    fn start_sync(&mut self, conn: &mut Connection) -> Result<(), ConnectionError> {
        let rid = conn.next_request_id();
        let after = self.state.inbox_seq;
        conn.send(&Frame::new(
            rid,
            Body::Sync(Sync {
                after_inbox_seq: after,
                limit: self.cfg.sync_page,
            }),
        ))?;
        // SYNC after X acknowledges X (and the previous page's group messages).
        self.acked_sent = self.acked_sent.max(after);
        self.group_page_held = false;
        self.sync_in_flight = Some((rid, after));
        Ok(())
    }

    /// Runs one connection; returns why it ended.
    fn serve(&mut self, mut conn: Connection) -> String {
        let (user, session_id, heartbeat) = match conn.welcome() {
            Some(w) => (
                w.user.to_string(),
                w.session_id,
                Duration::from_secs(u64::from(w.heartbeat_secs.max(1))),
            ),
            None => return "no WELCOME".into(),
        };
        self.emit(Event::Connected {
            user,
            session_id,
            via: conn.rung().to_string(),
        });
        self.synced_once = false;
        if let Err(e) = self.start_sync(&mut conn) {
            return e.to_string();
        }
        for p in self.pending.values_mut() {
            if let Err(e) = Self::transmit(&mut conn, p) {
                return e.to_string();
            }
        }
        if let Err(e) = self.resubscribe(&mut conn) {
            return e.to_string();
        }
        let mut last_out = Instant::now();
        let mut last_in = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        loop {
            loop {
                let cmd = match self.cmds.try_recv() {
                    Ok(cmd) => cmd,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => Cmd::Stop,
                };
                match cmd {
                    Cmd::Send {
                        local_seq,
                        msg_id,
                        to,
                        kind,
                        body,
                        mentions,
                        waiter,
                    } => {
                        self.queue(local_seq, msg_id, to, kind, body, mentions, waiter);
                        if let Some(p) = self.pending.get_mut(&local_seq) {
                            if let Err(e) = Self::transmit(&mut conn, p) {
                                return e.to_string();
                            }
                        }
                    }
                    Cmd::Notify { body } => {
                        if let Err(e) = conn.send(&Frame::new(0, body)) {
                            return e.to_string();
                        }
                    }
                    Cmd::Request { body, reply } => {
                        self.remember_subscription(&body);
                        let rid = conn.next_request_id();
                        if let Err(e) = conn.send(&Frame::new(rid, body)) {
                            let _ = reply.send(Err(SendError::NotConnected));
                            return e.to_string();
                        }
                        self.requests.insert(rid, reply);
                    }
                    Cmd::Stop => {
                        self.send_ack(&mut conn);
                        let close = Close {
                            reason: CloseReason::NORMAL,
                            retry_after_ms: 0,
                            message: "bye".into(),
                        };
                        let _ = conn.send(&Frame::new(0, Body::Close(close)));
                        conn.close();
                        self.stopped = true;
                        return "stopped".into();
                    }
                }
                last_out = Instant::now();
            }
            match conn.recv(Duration::from_millis(20)) {
                Ok(Some(f)) => {
                    last_in = Instant::now();
                    ping_sent = None;
                    if let Err(reason) = self.on_frame(&mut conn, f) {
                        return reason;
                    }
                }
                Ok(None) => {}
                Err(e) => return e.to_string(),
            }
            let now = Instant::now();
            for p in self.pending.values_mut() {
                //= SPEC.md#reliability-the-six-packet-model
                //# Retransmit SEND with the same msgid and flag RETRANSMIT until SEND_ACK or a
                //# permanent ERROR: on every reconnect, and after a timeout without answer.
                let interval = self
                    .cfg
                    .retransmit_after
                    .saturating_mul(1 << p.attempts.saturating_sub(1).min(5));
                if p.last_sent
                    .is_none_or(|t| now.duration_since(t) >= interval)
                {
                    if let Err(e) = Self::transmit(&mut conn, p) {
                        return e.to_string();
                    }
                    last_out = now;
                }
            }
            if self.synced_once
                && (self.state.inbox_seq > self.acked_sent || self.group_page_held)
                && now.duration_since(self.last_ack) >= self.cfg.ack_delay
            {
                self.send_ack(&mut conn);
                last_out = now;
            }
            if self.sync_in_flight.is_none()
                && self
                    .gap_since
                    .is_some_and(|t| now.duration_since(t) >= self.cfg.gap_grace)
            {
                if let Err(e) = self.start_sync(&mut conn) {
                    return e.to_string();
                }
                self.gap_since = Some(now);
            }
            //= SPEC.md#heartbeat
            //# A client sends PING at the interval WELCOME suggests when it has sent nothing else.
            if now.duration_since(last_out) >= heartbeat {
                let rid = conn.next_request_id();
                if let Err(e) = conn.send(&Frame::new(rid, Body::Ping(Ping { time: 0 }))) {
                    return e.to_string();
                }
                last_out = now;
                ping_sent.get_or_insert(now);
            }
            //# A client SHOULD treat the connection as dead if no frame arrives within
            //# `heartbeat_secs` after a PING it sent.
            if ping_sent.is_some_and(|t| now.duration_since(t) >= heartbeat && last_in < t) {
                return "no answer to PING: connection presumed dead".into();
            }
        }
    }

    /// Keeps the set of presence subscriptions up to date with a SUBSCRIBE being sent.
    fn remember_subscription(&mut self, body: &Body<'_>) {
        if let Body::Subscribe(s) = body {
            for u in &s.users {
                if s.op == SubOp::ADD {
                    self.subscriptions.insert(u.to_string());
                } else {
                    self.subscriptions.remove(u.as_ref());
                }
            }
        }
    }

    /// Repeats the presence subscriptions on a new connection (their OKs are not awaited).
    fn resubscribe(&mut self, conn: &mut Connection) -> Result<(), ConnectionError> {
        let users: Vec<String> = self.subscriptions.iter().cloned().collect();
        for chunk in users.chunks(1_000) {
            let rid = conn.next_request_id();
            conn.send(&Frame::new(
                rid,
                Body::Subscribe(Subscribe {
                    op: SubOp::ADD,
                    users: chunk.iter().map(|u| u.clone().into()).collect(),
                }),
            ))?;
        }
        Ok(())
    }

    fn send_ack(&mut self, conn: &mut Connection) {
        if self.state.inbox_seq > self.acked_sent || self.group_page_held {
            let seq = self.state.inbox_seq;
            if conn
                .send(&Frame::new(0, Body::PushAck(PushAck { inbox_seq: seq })))
                .is_ok()
            {
                self.acked_sent = seq;
                self.group_page_held = false;
            }
        }
        self.last_ack = Instant::now();
        self.save_state();
    }

    fn save_state(&self) {
        if let Some(path) = &self.cfg.state_path {
            let _ = self.state.save(path);
        }
    }

    fn mark_received(&mut self, inbox_seq: u64) {
        if inbox_seq > self.state.inbox_seq {
            self.received.insert(inbox_seq);
        }
        self.advance();
    }

    fn advance(&mut self) {
        while self.received.remove(&(self.state.inbox_seq + 1)) {
            self.state.inbox_seq += 1;
        }
        let floor = self.state.inbox_seq;
        self.received.retain(|s| *s > floor);
        self.gap_since = if self.received.is_empty() {
            None
        } else {
            self.gap_since.or(Some(Instant::now()))
        };
    }

    fn on_message(&mut self, m: Message<'static>) {
        if m.inbox_seq != 0 {
            self.mark_received(m.inbox_seq);
        }
        let key = (m.conv.kind.0, m.conv.id.to_string(), m.conv_seq);
        if self.seen.insert(key.clone()) {
            self.seen_order.push_back(key);
            if self.seen_order.len() > SEEN_CAPACITY {
                if let Some(old) = self.seen_order.pop_front() {
                    self.seen.remove(&old);
                }
            }
            match GroupEvent::of(&m) {
                Some(event) => self.emit(Event::GroupEvent { message: m, event }),
                None => self.emit(Event::Message(m)),
            }
        }
    }

    fn on_frame(&mut self, conn: &mut Connection, f: Frame<'static>) -> Result<(), String> {
        let rid = f.request_id;
        match f.body {
            // A RECALL is a request whose answer is a SEND_ACK (of the recall event).
            Body::SendAck(ack) if self.requests.contains_key(&rid) => {
                if let Some(w) = self.requests.remove(&rid) {
                    let _ = w.send(Ok(Frame::new(rid, Body::SendAck(ack))));
                }
            }
            Body::SendAck(ack) => {
                if let Some(local_seq) = self.by_msg_id.remove(&ack.msg_id) {
                    if let Some(p) = self.pending.remove(&local_seq) {
                        // Our own message: the sending device knows it, other devices get PUSHes.
                        self.seen
                            .insert((p.to.kind.0, p.to.id.to_string(), ack.conv_seq));
                        if let Some(w) = p.waiter {
                            let _ = w.send(Ok(ack));
                        }
                    }
                    self.mark_received(ack.inbox_seq);
                    self.emit(Event::SendAcked { local_seq, ack });
                }
            }
            Body::Push(m) => self.on_message(m),
            Body::SyncPage(page) if self.sync_in_flight.is_some_and(|(r, _)| r == rid) => {
                let from = self.sync_in_flight.take().map_or(0, |(_, after)| after);
                let mut last = from;
                for m in page.messages {
                    self.group_page_held |= m.inbox_seq == 0;
                    last = last.max(m.inbox_seq);
                    self.on_message(m);
                }
                // The page is authoritative for (from, last]: entries that are not there have
                // expired, so the position moves over them.
                if from <= self.state.inbox_seq && last > self.state.inbox_seq {
                    self.state.inbox_seq = last;
                    self.advance();
                }
                if page.more {
                    self.start_sync(conn).map_err(|e| e.to_string())?;
                } else {
                    self.synced_once = true;
                    self.emit(Event::Synced {
                        inbox_seq: self.state.inbox_seq,
                    });
                }
            }
            Body::Receipt(r) => self.emit(Event::Receipt(r)),
            Body::Typing(t) => self.emit(Event::Typing(t)),
            Body::Presence(p) => self.emit(Event::Presence(p)),
            Body::Relation(r) if rid == 0 => self.emit(Event::Relation(r)),
            Body::Ping(p) => {
                conn.send(&Frame::new(rid, Body::Pong(Ping { time: p.time })))
                    .map_err(|e| e.to_string())?;
            }
            Body::Close(c) => {
                //= SPEC.md#close
                //# REPLACED: MUST NOT reconnect automatically.
                if c.reason == CloseReason::REPLACED {
                    self.stopped = true;
                }
                return Err(format!(
                    "server closed the session ({}): {}",
                    c.reason, c.message
                ));
            }
            Body::Error(e) => {
                let closes = e.code.closes_connection();
                if let Some(w) = self.requests.remove(&rid) {
                    let _ = w.send(Err(SendError::Server {
                        code: e.code,
                        message: e.message.to_string(),
                    }));
                } else if self.sync_in_flight.is_some_and(|(r, _)| r == rid) {
                    self.sync_in_flight = None;
                } else if let Some((&local_seq, _)) = self
                    .pending
                    .iter()
                    .find(|(_, p)| p.last_rid == rid && rid != 0)
                {
                    // OVERLOADED, RATE_LIMITED, UNAVAILABLE and NO_QUORUM are retried by the
                    // timer; other refusals are final.
                    if ![
                        ErrorCode::OVERLOADED,
                        ErrorCode::RATE_LIMITED,
                        ErrorCode::UNAVAILABLE,
                        ErrorCode::NO_QUORUM,
                    ]
                    .contains(&e.code)
                    {
                        if let Some(p) = self.pending.remove(&local_seq) {
                            self.by_msg_id.remove(&p.msg_id);
                            if let Some(w) = p.waiter {
                                let _ = w.send(Err(SendError::Server {
                                    code: e.code,
                                    message: e.message.to_string(),
                                }));
                            }
                            self.emit(Event::SendFailed {
                                local_seq,
                                msg_id: p.msg_id,
                                code: e.code,
                                message: e.message.to_string(),
                            });
                        }
                    }
                }
                if closes {
                    if e.code == ErrorCode::AUTH_INVALID || e.code == ErrorCode::AUTH_EXPIRED {
                        self.stopped = true;
                        self.emit(Event::Fatal {
                            code: e.code,
                            message: e.message.to_string(),
                        });
                    }
                    return Err(format!("server error {}: {}", e.code, e.message));
                }
            }
            Body::Pong(_) => {}
            body => {
                if let Some(w) = self.requests.remove(&rid) {
                    let _ = w.send(Ok(Frame::new(rid, body)));
                }
            }
        }
        Ok(())
    }
}
