//! Requests a node makes of another node on behalf of its clients (CLUSTER.md, "Requests
//! between nodes"): what a client asks of the node that serves it but another node holds.
//!
//! - **HISTORY** of a one-to-one conversation whose slot another node owns: a [`Call`] to the
//!   conversation's node, answered with the page's messages; the client gets the same
//!   HISTORY_PAGE as from one node. No answer within [`CALL_TIMEOUT`], or no link to that node:
//!   `UNAVAILABLE`.
//! - **RECALL** in such a conversation: a [`Call`] to the conversation's node, which assigns the
//!   event's sequence, writes its own user's half and puts the recaller's half in its outbox;
//!   the recaller's node applies that half itself before answering (as a forwarded SEND does),
//!   so RECALL's SEND_ACK names the recaller's inbox seq. When the conversation is the
//!   recaller's node's, the other user's half goes through the outbox
//!   ([`tern_storage::Store::recall_routed`]); the node applying it pushes the event.
//! - **RELATION** with a user of another node: decided by the node of the pair's conversation,
//!   which keeps both users' rows about each other; the other user's rows, as the change left
//!   them, go to that user's node through the outbox (with the notice its devices get), or come
//!   back in the answer to the asking node's [`Call`], applied there before the OK.
//! - **Notices** (RECEIPT of a READ, relation notices, TYPING): frames for devices of a user
//!   another node serves go over the link as [`Item::Notify`](super::wire::Item::Notify) and are
//!   delivered there like local pushes; like a push to an offline device they are not stored.
//!
//! The link core keeps the pending calls ([`Calls`]); the serving side is [`serve`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rkyv::{Archive, Deserialize, Serialize};
use tern_protocol::{Body, ErrorCode};
use tern_storage::{
    ClientMsgId, Completion, ConvKey, DeviceId, DirectPair, HistoryDirection, MessageFlags,
    MessageKind, OpError, Recall, RecallResult, RelationChange, RelationKind, RelationNotice,
    RelationOp, RelationOutcome, RemoteSide, RemoteWrite, Seq, StoredMessage, SubmitError, UserId,
};

use super::ring::conversation_slot;
use crate::server::{CoreMsg, NodeShared};
use crate::session::Delivery;
use crate::slots::Owner;

/// A call without an answer for this long fails with `UNAVAILABLE`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to another node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Up to `limit` messages of the one-to-one conversation of `low` and `high` before
    /// (`after` false, newest first) or after `anchor`.
    History {
        low: String,
        high: String,
        anchor: u64,
        after: bool,
        limit: u32,
    },
    /// `user` changes their relation with `other` (`op`: [`op_code`], `note` for a request).
    Relate {
        user: String,
        other: String,
        op: u8,
        note: String,
    },
    /// `by` recalls message `seq` of their conversation with `peer`; `msg_id` is the recall's
    /// client message id.
    Recall {
        by: String,
        by_device: String,
        peer: String,
        seq: u64,
        msg_id: [u8; 16],
        window_ms: u64,
    },
    /// Whether `user`, served by the answering node, takes one-to-one messages from friends
    /// only (`super::admits`).
    FriendsOnly { user: String },
    /// Rows of slots the asking node hands to this one (`super::handoff`): (family, key,
    /// value) as stored.
    HandoffRows { rows: Vec<(u8, Vec<u8>, Vec<u8>)> },
    /// The asking node hands these slots to this one at these terms; their rows were sent.
    HandoffDone { slots: Vec<(u16, u64)> },
    /// Which slots does this node hold (`super::handoff`, a node's first start)?
    HeldSlots,
}

/// A message of a HISTORY answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireStored {
    pub seq: u64,
    pub sender: String,
    pub sender_device: String,
    pub msg_id: [u8; 16],
    pub time_ms: u64,
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

/// The answer to a [`Call`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Messages(Vec<WireStored>),
    Recalled {
        event_seq: u64,
        time_ms: u64,
        peer_inbox_seq: u64,
        duplicate: bool,
    },
    /// The change was made; `rows` (kind, since, note) are the asking user's rows about the
    /// other as of `version`.
    Related {
        changed: bool,
        requested: bool,
        befriended: bool,
        rows: Vec<(u8, u64, String)>,
        version: u64,
    },
    /// The answer to [`Call::FriendsOnly`].
    FriendsOnly(bool),
    /// Refused with a wire error code (SPEC §8) and message.
    Refused {
        code: u16,
        message: String,
    },
    /// Done (handoff rows durable, slots taken).
    Done,
    /// The slots the answering node holds; `initialized`: it has recorded slot terms.
    Held {
        initialized: bool,
        slots: Vec<u16>,
    },
}

/// The number of a relation operation in a [`Call::Relate`].
pub fn op_code(op: &RelationOp) -> (u8, String) {
    match op {
        RelationOp::Follow => (1, String::new()),
        RelationOp::Unfollow => (2, String::new()),
        RelationOp::FriendRequest { note } => (3, note.clone()),
        RelationOp::FriendAccept => (4, String::new()),
        RelationOp::FriendDecline => (5, String::new()),
        RelationOp::Unfriend => (6, String::new()),
        RelationOp::Block => (7, String::new()),
        RelationOp::Unblock => (8, String::new()),
    }
}

fn op_of(code: u8, note: String) -> Option<RelationOp> {
    Some(match code {
        1 => RelationOp::Follow,
        2 => RelationOp::Unfollow,
        3 => RelationOp::FriendRequest { note },
        4 => RelationOp::FriendAccept,
        5 => RelationOp::FriendDecline,
        6 => RelationOp::Unfriend,
        7 => RelationOp::Block,
        8 => RelationOp::Unblock,
        _ => return None,
    })
}

/// What to do with a call's answer (runs on the link core).
pub struct Done(Box<dyn FnOnce(Result<Reply, OpError>) + Send>);

impl Done {
    pub fn new(f: impl FnOnce(Result<Reply, OpError>) + Send + 'static) -> Done {
        Done(Box::new(f))
    }

    pub fn run(self, r: Result<Reply, OpError>) {
        (self.0)(r)
    }
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Done")
    }
}

/// A call awaiting its answer.
struct Pending {
    peer: String,
    conn: u64,
    at: Instant,
    done: Done,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("peer", &self.peer)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// The calls of the link core awaiting answers.
#[derive(Debug, Default)]
pub struct Calls {
    pending: HashMap<u64, Pending>,
}

impl Calls {
    /// Records call `id` sent to `peer` on connection `conn`.
    pub fn start(&mut self, id: u64, peer: String, conn: u64, done: Done) {
        self.pending.insert(
            id,
            Pending {
                peer,
                conn,
                at: Instant::now(),
                done,
            },
        );
    }

    /// The answer to call `id`.
    pub fn answered(&mut self, id: u64, reply: Reply) {
        if let Some(p) = self.pending.remove(&id) {
            p.done.run(Ok(reply));
        }
    }

    /// Fails the calls sent on connection `conn` (it failed) or older than [`CALL_TIMEOUT`].
    pub fn fail(&mut self, conn: Option<u64>, now: Instant) {
        let failed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| Some(p.conn) == conn || now.duration_since(p.at) >= CALL_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some(p) = self.pending.remove(&id) {
                p.done.run(Err(OpError::Unavailable(format!(
                    "node {} did not answer; retry",
                    p.peer
                ))));
            }
        }
    }

    /// Calls per peer (for the gauges).
    pub fn per_peer(&self) -> impl Iterator<Item = &str> {
        self.pending.values().map(|p| p.peer.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// The asking side (any core)
// ---------------------------------------------------------------------------------------------

/// The node that owns `conv`'s slot, when that is another node and links are up to reach it.
fn remote_owner(node: &NodeShared, conv: &ConvKey) -> Option<String> {
    super::links::installed()?;
    match node.owners.load().owner(conversation_slot(conv)) {
        Owner::Remote(o) => Some(o.node.clone()),
        Owner::Local(_) => None,
    }
}

/// The node serving `user`, when that is another node.
pub fn user_node(node: &NodeShared, user: &UserId) -> Option<String> {
    super::links::installed()?;
    match node.owners.load().owner_of_user(user.as_str()) {
        Owner::Remote(o) => Some(o.node.clone()),
        Owner::Local(_) => None,
    }
}

/// HISTORY of a conversation, from this node's store or from the node that owns it.
pub fn history(
    node: &NodeShared,
    conv: ConvKey,
    anchor: Seq,
    direction: HistoryDirection,
    limit: usize,
) -> Result<Completion<Vec<StoredMessage>>, SubmitError> {
    let (Some(to), ConvKey::Direct(pair), Some(links)) =
        (remote_owner(node, &conv), &conv, super::links::installed())
    else {
        return node.store.history(conv, anchor, direction, limit);
    };
    let call = Call::History {
        low: pair.low().as_str().to_owned(),
        high: pair.high().as_str().to_owned(),
        anchor: anchor.0,
        after: direction == HistoryDirection::After,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
    };
    let (resolver, completion) = Completion::detached();
    let done = Done::new(move |reply| {
        resolver.resolve(reply.and_then(|r| match r {
            Reply::Messages(msgs) => {
                Ok(msgs.into_iter().filter_map(|m| stored(&conv, m)).collect())
            }
            other => Err(unexpected(other)),
        }));
    });
    Arc::clone(links).call(to, call, done);
    Ok(completion)
}

/// RECALL of a one-to-one message: stored here, or by the conversation's node with the
/// recaller's half applied here (see the module docs). `peer_node` is the node serving the
/// other participant when it is not this one.
pub fn recall(
    node: &NodeShared,
    req: Recall,
    peer: &UserId,
) -> Result<Completion<RecallResult>, SubmitError> {
    let Some(links) = super::links::installed() else {
        return node.store.recall(req);
    };
    let Some(to) = remote_owner(node, &req.conv) else {
        return match user_node(node, peer) {
            Some(dest) => node.store.recall_routed(req, RemoteSide::Recipient, dest),
            None => node.store.recall(req),
        };
    };
    let call = Call::Recall {
        by: req.by.as_str().to_owned(),
        by_device: req.by_device.as_str().to_owned(),
        peer: peer.as_str().to_owned(),
        seq: req.seq.0,
        msg_id: req.client_msg_id.0,
        window_ms: req.window_ms,
    };
    let (resolver, completion) = Completion::detached();
    let store = Arc::clone(&node.store);
    let peer = peer.clone();
    let done = Done::new(move |reply| {
        let (event_seq, time_ms, peer_inbox_seq, duplicate) = match reply {
            Ok(Reply::Recalled {
                event_seq,
                time_ms,
                peer_inbox_seq,
                duplicate,
            }) => (event_seq, time_ms, peer_inbox_seq, duplicate),
            Ok(other) => return resolver.resolve(Err(unexpected(other))),
            Err(e) => return resolver.resolve(Err(e)),
        };
        // The recaller's half, applied before the answer (the outbox copy then finds it).
        let write = recall_write(&req, &peer, RemoteSide::Sender, Seq(event_seq), time_ms);
        let applied = match store.apply_remote(write) {
            Ok(c) => c,
            Err(e) => return resolver.resolve(Err(submit_error(e))),
        };
        monoio::spawn(async move {
            resolver.resolve(applied.await.map(|a| RecallResult {
                event_seq: Seq(event_seq),
                time_ms,
                by_inbox_seq: a.inbox_seq,
                peer_inbox_seq: Seq(peer_inbox_seq),
                duplicate: duplicate || a.duplicate,
            }));
        });
    });
    Arc::clone(links).call(to, call, done);
    Ok(completion)
}

/// RELATION between a user of this node and `change.other`: decided by the node that serves
/// the pair's conversation (CLUSTER.md, "Requests between nodes"). Here when that is this node
/// (the other user's rows go through the outbox when they are another node's); otherwise a
/// call to that node, whose answer carries this user's rows, applied here before the answer.
pub fn relate(
    node: &NodeShared,
    change: RelationChange,
) -> Result<Completion<RelationOutcome>, SubmitError> {
    let (Some(links), Some(other_node)) =
        (super::links::installed(), user_node(node, &change.other))
    else {
        return node.store.relate(change);
    };
    let (resolver, completion) = Completion::detached();
    let pair = ConvKey::direct(&change.user, &change.other);
    let Some(to) = remote_owner(node, &pair) else {
        // This node decides: the other user's rows go to their node through the outbox.
        let submitted = node.store.relate_routed(change, false, other_node)?;
        monoio::spawn(async move {
            resolver.resolve(submitted.await.map(|r| r.outcome));
        });
        return Ok(completion);
    };
    let (op, note) = op_code(&change.op);
    let call = Call::Relate {
        user: change.user.as_str().to_owned(),
        other: change.other.as_str().to_owned(),
        op,
        note,
    };
    let store = Arc::clone(&node.store);
    let done = Done::new(move |reply| {
        let (outcome, rows, version) = match reply {
            Ok(Reply::Related {
                changed,
                requested,
                befriended,
                rows,
                version,
            }) => (
                RelationOutcome {
                    changed,
                    requested,
                    befriended,
                },
                rows,
                version,
            ),
            Ok(other) => return resolver.resolve(Err(unexpected(other))),
            Err(e) => return resolver.resolve(Err(e)),
        };
        // This user's rows, as the deciding node left them (its outbox copy finds them).
        let rows: Vec<(RelationKind, u64, String)> = rows
            .into_iter()
            .map(|(k, since, note)| (RelationKind(k), since, note))
            .collect();
        let write = RemoteWrite::relation(
            &change.user,
            &change.other,
            &rows,
            RelationNotice::None,
            version,
        );
        let applied = match store.apply_remote(write) {
            Ok(c) => c,
            Err(e) => return resolver.resolve(Err(submit_error(e))),
        };
        monoio::spawn(async move {
            resolver.resolve(applied.await.map(|_| outcome));
        });
    });
    Arc::clone(links).call(to, call, done);
    Ok(completion)
}

/// The RELATION notice a relation write brings to its user's devices, if any.
pub fn relation_notice(w: &RemoteWrite) -> Option<tern_protocol::Frame<'static>> {
    let (rows, notice) = w.relation_rows()?;
    let (op, note) = match notice {
        RelationNotice::None => return None,
        RelationNotice::Befriended => (tern_protocol::RelationOp::FRIEND_ACCEPT, String::new()),
        RelationNotice::Requested => (
            tern_protocol::RelationOp::FRIEND_REQUEST,
            rows.into_iter()
                .find(|(k, _, _)| *k == RelationKind::PENDING)
                .map(|(_, _, note)| note)
                .unwrap_or_default(),
        ),
    };
    Some(tern_protocol::Frame::new(
        0,
        Body::Relation(tern_protocol::Relation {
            op,
            user: w.peer().as_str().to_owned().into(),
            note: note.into(),
        }),
    ))
}

/// Whether a frame may cross to another node as a notice: RECEIPT, RELATION, TYPING (never a
/// PUSH: see `deliver_remote`).
fn is_notice(body: &Body<'_>) -> bool {
    matches!(body, Body::Receipt(_) | Body::Relation(_) | Body::Typing(_))
}

/// Sends the notice `d` (RECEIPT, RELATION, TYPING) to the node serving its user when that is
/// another node (nothing otherwise, and nothing for other frames); whether it went.
pub fn deliver_remote(node: &NodeShared, d: &Delivery) -> bool {
    // Only notices cross this way. A PUSH names an inbox seq of the node that stored it, which
    // means nothing to a device of another node's inbox (a message's half reaches that node
    // through the outbox and is pushed from there), so stored messages never go as notices.
    if !is_notice(&d.frame.body) {
        return false;
    }
    let (Some(links), Some(to)) = (super::links::installed(), user_node(node, &d.user)) else {
        return false;
    };
    // Encoded as the user's tenant shows it: the other node queues the bytes as they are.
    let shown = crate::tenant::outbound_for(&d.frame, d.user.as_str());
    let mut frame = Vec::new();
    if shown
        .as_ref()
        .unwrap_or(&d.frame)
        .encode(&mut frame)
        .is_err()
    {
        return false;
    }
    links.notify(to, d.user.as_str().to_owned(), frame);
    true
}

pub(super) fn submit_error(e: SubmitError) -> OpError {
    match e {
        SubmitError::Busy => OpError::Unavailable("storage is busy; retry".into()),
        SubmitError::Closed => OpError::Closed,
    }
}

fn unexpected(r: Reply) -> OpError {
    match r {
        Reply::Refused { code, message } => super::links::op_error_of(code, message),
        _ => OpError::Unavailable("the other node answered with something else; retry".into()),
    }
}

fn stored(conv: &ConvKey, m: WireStored) -> Option<StoredMessage> {
    Some(StoredMessage {
        conv: conv.clone(),
        seq: Seq(m.seq),
        sender: UserId::new(m.sender).ok()?,
        sender_device: DeviceId::new(m.sender_device).ok()?,
        client_msg_id: ClientMsgId(m.msg_id),
        time_ms: m.time_ms,
        kind: MessageKind(m.kind),
        flags: MessageFlags(m.flags),
        body: m.body,
    })
}

fn wire_stored(m: StoredMessage) -> WireStored {
    WireStored {
        seq: m.seq.0,
        sender: m.sender.as_str().to_owned(),
        sender_device: m.sender_device.as_str().to_owned(),
        msg_id: m.client_msg_id.0,
        time_ms: m.time_ms,
        kind: m.kind.0,
        flags: m.flags.0,
        body: m.body,
    }
}

/// One user's half of a recall event (the body is the recalled seq, as on the wire).
pub fn recall_write(
    req: &Recall,
    peer: &UserId,
    side: RemoteSide,
    event_seq: Seq,
    time_ms: u64,
) -> RemoteWrite {
    let mut body = Vec::with_capacity(10);
    tern_protocol::wire::put_varint(&mut body, req.seq.0);
    RemoteWrite {
        side,
        sender: req.by.clone(),
        sender_device: req.by_device.clone(),
        recipient: peer.clone(),
        client_msg_id: req.client_msg_id,
        conv_seq: event_seq,
        time_ms,
        kind: MessageKind::RECALL_EVENT,
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// The serving side (the link core)
// ---------------------------------------------------------------------------------------------

/// The answer to a call, awaited by the connection's writer.
pub type Answering = Pin<Box<dyn Future<Output = Reply>>>;

pub(super) fn refused(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Refused {
        code: code.0,
        message: message.into(),
    }
}

pub(super) fn refusal(e: &OpError) -> Reply {
    let code = match crate::session::op_error(0, e).body {
        Body::Error(err) => err.code,
        _ => ErrorCode::INTERNAL,
    };
    refused(code, e.to_string())
}

/// Serves a call from node `peer`.
pub fn serve(node: Arc<NodeShared>, peer: &str, call: Call) -> Answering {
    let table = node.owners.load();
    // Writes (a recall's sequence, a relation change) follow the quorum rules as a forwarded
    // SEND does (`quorum`): none without quorum, and only for slots the fenced table gives
    // this node.
    let writes = super::quorum::writes_table(&node);
    if matches!(call, Call::Recall { .. } | Call::Relate { .. }) && !super::quorum::has_quorum() {
        return Box::pin(async {
            refused(
                ErrorCode::NO_QUORUM,
                "the conversation's node has no quorum; retry",
            )
        });
    }
    let user = |s: String| UserId::new(s).ok();
    match call {
        Call::HandoffRows { rows } => super::handoff::serve_rows(node, rows),
        Call::HandoffDone { slots } => super::handoff::serve_done(node, peer, slots),
        Call::HeldSlots => super::handoff::serve_held(),
        Call::FriendsOnly { user } => super::admits::serve(node, user),
        Call::History {
            low,
            high,
            anchor,
            after,
            limit,
        } => {
            let (Some(low), Some(high)) = (user(low), user(high)) else {
                return Box::pin(async { refused(ErrorCode::INVALID_ARGUMENT, "invalid user id") });
            };
            let conv = ConvKey::Direct(DirectPair::new(low, high));
            if let Owner::Remote(o) = table.owner(conversation_slot(&conv)) {
                let m = format!("the conversation is served by node {}; retry", o.node);
                return Box::pin(async move { refused(ErrorCode::UNAVAILABLE, m) });
            }
            let direction = if after {
                HistoryDirection::After
            } else {
                HistoryDirection::Before
            };
            let submitted = node
                .store
                .history(conv, Seq(anchor), direction, limit as usize);
            Box::pin(async move {
                match submitted {
                    Ok(c) => match c.await {
                        Ok(msgs) => Reply::Messages(msgs.into_iter().map(wire_stored).collect()),
                        Err(e) => refusal(&e),
                    },
                    Err(e) => refusal(&submit_error(e)),
                }
            })
        }
        Call::Relate {
            user: actor,
            other,
            op,
            note,
        } => {
            let (Some(actor), Some(other), Some(op)) = (user(actor), user(other), op_of(op, note))
            else {
                return Box::pin(async {
                    refused(ErrorCode::INVALID_ARGUMENT, "invalid relation")
                });
            };
            let change = RelationChange {
                user: actor,
                other,
                op,
            };
            if let Owner::Remote(o) = writes.owner(conversation_slot(&ConvKey::direct(
                &change.user,
                &change.other,
            ))) {
                let m = format!("the pair is served by node {}; retry", o.node);
                return Box::pin(async move { refused(ErrorCode::UNAVAILABLE, m) });
            }
            // The asking user's rows go to the node that asked: it serves that user.
            let submitted = node
                .store
                .relate_routed(change.clone(), true, peer.to_owned());
            Box::pin(async move {
                let r = match submitted {
                    Ok(c) => c.await,
                    Err(e) => Err(submit_error(e)),
                };
                match r {
                    Ok(r) => {
                        // The other user is served here: their devices get the notice.
                        for d in crate::session::relation_notices(&change, &r.outcome) {
                            super::links::deliver_local(&node, &d.user, &d.frame);
                        }
                        Reply::Related {
                            changed: r.outcome.changed,
                            requested: r.outcome.requested,
                            befriended: r.outcome.befriended,
                            rows: r
                                .rows
                                .into_iter()
                                .map(|(k, since, note)| (k.0, since, note))
                                .collect(),
                            version: r.version,
                        }
                    }
                    Err(e) => refusal(&e),
                }
            })
        }
        Call::Recall {
            by,
            by_device,
            peer: other,
            seq,
            msg_id,
            window_ms,
        } => {
            let (Some(by), Some(other), Ok(by_device)) =
                (user(by), user(other), DeviceId::new(by_device))
            else {
                return Box::pin(async { refused(ErrorCode::INVALID_ARGUMENT, "invalid id") });
            };
            let req = Recall {
                conv: ConvKey::direct(&by, &other),
                seq: Seq(seq),
                by,
                by_device,
                client_msg_id: ClientMsgId(msg_id),
                window_ms,
            };
            if let Owner::Remote(o) = writes.owner(conversation_slot(&req.conv)) {
                let m = format!("the conversation is served by node {}; retry", o.node);
                return Box::pin(async move { refused(ErrorCode::UNAVAILABLE, m) });
            }
            // The recaller's half goes to the node that asked: it serves the recaller.
            let submitted =
                node.store
                    .recall_routed(req.clone(), RemoteSide::Sender, peer.to_owned());
            Box::pin(async move {
                let r = match submitted {
                    Ok(c) => c.await,
                    Err(e) => Err(submit_error(e)),
                };
                match r {
                    Ok(r) => {
                        if !r.duplicate {
                            // The other participant is served here: their devices get the
                            // event as after a local recall.
                            let w = recall_write(
                                &req,
                                &other,
                                RemoteSide::Recipient,
                                r.event_seq,
                                r.time_ms,
                            );
                            super::links::push_write(&node, &w, r.peer_inbox_seq);
                        }
                        Reply::Recalled {
                            event_seq: r.event_seq.0,
                            time_ms: r.time_ms,
                            peer_inbox_seq: r.peer_inbox_seq.0,
                            duplicate: r.duplicate,
                        }
                    }
                    Err(e) => refusal(&e),
                }
            })
        }
    }
}

/// Delivers a frame another node sent for `user`'s devices here.
pub fn notified(node: &NodeShared, peer: &str, user: &str, bytes: &[u8]) {
    let Ok(Some((frame, _))) = tern_protocol::decode(bytes, tern_protocol::ABS_MAX_BODY) else {
        return;
    };
    let Ok(user) = UserId::new(user) else {
        return;
    };
    match &frame.body {
        // Presence across nodes (`super::presence`): node `peer` watches `user`, served here.
        Body::Subscribe(s) => {
            let add = s.op == tern_protocol::SubOp::ADD;
            route_presence(
                node,
                &user,
                CoreMsg::PresenceNodeWatch {
                    user: Arc::from(user.as_str()),
                    node: peer.to_owned(),
                    add,
                },
            );
        }
        // The presence of a user `peer` serves, for the connections here that watch them
        // (addressed to the user it is about; a friend's or follower's copy is addressed to
        // them and goes to their devices below).
        Body::Presence(p) if p.user.as_ref() == user.as_str() => {
            let shown = crate::presence::Shown {
                status: p.status,
                last_seen: p.last_seen,
                text: p.text.to_string(),
            };
            route_presence(
                node,
                &user,
                CoreMsg::PresenceRemote {
                    user: Arc::from(user.as_str()),
                    shown,
                },
            );
        }
        // Only a well-formed notice is passed on to devices (as `deliver_remote` and the
        // presence fan-out send).
        body if is_notice(body) || matches!(body, Body::Presence(_)) => {
            super::links::deliver_local(node, &user, &frame);
        }
        _ => {}
    }
}

/// Hands a presence message to the core of `user`'s slot (the owning core, or the one the
/// slot has here when another node serves the user), where the presence book keeps them.
fn route_presence(node: &NodeShared, user: &UserId, msg: CoreMsg) {
    if let Some(tx) = node.peers.get(usize::from(node.user_core(user.as_str()))) {
        if tx.try_send(msg).is_err() {
            // Presence is refreshed by the next change or lease renewal.
            crate::metrics::inc(&crate::metrics::METRICS.core_queue_full_total);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_notices_cross_and_relation_ops_keep_their_meaning() {
        let receipt = Body::Receipt(tern_protocol::Receipt {
            conv: tern_protocol::Conv::direct("bob".to_owned()),
            user: "bob".into(),
            kind: tern_protocol::ReceiptKind::READ,
            conv_seq: 3,
            time: 1,
        });
        assert!(is_notice(&receipt));
        let push = Body::Push(tern_protocol::Message {
            conv: tern_protocol::Conv::direct("bob".to_owned()),
            sender: "bob".into(),
            sender_device: "phone".into(),
            conv_seq: 1,
            inbox_seq: 7,
            msg_id: tern_protocol::MsgId([1; 16]),
            time: 1,
            kind: tern_protocol::MessageKind::TEXT,
            flags: tern_protocol::MessageFlags::NONE,
            body: b"hi".to_vec().into(),
        });
        assert!(
            !is_notice(&push),
            "an inbox seq of this node must not reach another's device"
        );
        for op in [
            RelationOp::Follow,
            RelationOp::Unfollow,
            RelationOp::FriendRequest { note: "hi".into() },
            RelationOp::FriendAccept,
            RelationOp::FriendDecline,
            RelationOp::Unfriend,
            RelationOp::Block,
            RelationOp::Unblock,
        ] {
            let (code, note) = op_code(&op);
            assert_eq!(op_of(code, note), Some(op));
        }
        assert_eq!(op_of(0, String::new()), None);
    }

    #[test]
    fn a_relation_write_carries_its_notice_to_the_asked_user() {
        let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
        let rows = vec![(RelationKind::PENDING, 5, "hi, it's alice".to_owned())];
        let w = RemoteWrite::relation(&bob, &alice, &rows, RelationNotice::Requested, 9);
        assert_eq!((w.user(), w.peer()), (&bob, &alice));
        let Some(frame) = relation_notice(&w) else {
            panic!("no notice")
        };
        let Body::Relation(r) = frame.body else {
            panic!("{frame:?}")
        };
        assert_eq!(
            (r.op, r.user.as_ref(), r.note.as_ref()),
            (
                tern_protocol::RelationOp::FRIEND_REQUEST,
                "alice",
                "hi, it's alice"
            )
        );
        let quiet = RemoteWrite::relation(&bob, &alice, &rows, RelationNotice::None, 10);
        assert!(relation_notice(&quiet).is_none());
    }
}
