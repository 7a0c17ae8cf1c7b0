//! The adapter side of presence, offline push and the content filter: the cross-core messages
//! that keep each user's presence on the core owning their slot, the publication of a change to
//! watchers, friends and followers, the hand-off of offline notifications to the push hook's
//! thread, and the requests (PRESENCE, SUBSCRIBE, PUSH_TOKEN, MUTE) of a connection. The rules
//! themselves are in [`crate::presence`], [`crate::push`] and [`crate::filter`].

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tern_protocol::{Body, ErrorCode, Frame, PresenceStatus};
use tern_storage::{
    AppendResult, DirectMessage, GroupAppendResult, PushSetting, RelationKind, UserId,
};
use tracing::debug;

use super::{Connection, Core, CoreMsg, NodeShared, State};
use crate::filter::{ContentFilter, Verdict};
use crate::metrics::{inc, METRICS};
use crate::presence::{self, Shown, FANOUT_BATCH, MAX_FANOUT};
use crate::push::{GroupNote, PushNote};
use crate::server::{now_ms, ConnRef};
use crate::session::{self, Plan};
use crate::slots::Owner;

/// Optional parts of a node: the push hook's queue, the content filter and the tenants' limits.
#[derive(Debug, Default)]
pub struct Hooks {
    /// Where offline notifications go (the push hook's thread); `None`: no webhook configured.
    pub push: Option<flume::Sender<PushNote>>,
    pub filter: Option<Arc<ContentFilter>>,
    /// The tenants configured with limits (`[tenants.<id>]`).
    pub tenants: crate::tenant::Tenants,
}

impl Hooks {
    /// The body a content-kind message is stored with, or `None` when the filter refuses it.
    pub fn screen(&self, kind: u8, body: Vec<u8>) -> Option<Vec<u8>> {
        let Some(filter) = &self.filter else {
            return Some(body);
        };
        match filter.check(kind, &body) {
            Verdict::Pass => Some(body),
            Verdict::Masked(masked) => {
                inc(&METRICS.filter_masked_total);
                Some(masked)
            }
            Verdict::Reject => {
                inc(&METRICS.filter_rejected_total);
                None
            }
        }
    }
}

/// The ERROR for a message the content filter refuses.
pub(super) fn rejected(rid: u32) -> Frame<'static> {
    session::error(
        rid,
        ErrorCode::CONTENT_REJECTED,
        "the message contains a word this server does not accept; nothing was stored",
    )
}

/// A presence notice about `user`, encoded as its tenant's clients see it (everyone it goes to
/// named `user`, so is of the same tenant).
fn encode(frame: &Frame<'_>, user: &str) -> Option<Bytes> {
    let shown = crate::tenant::outbound_for(frame, user);
    shown
        .as_ref()
        .unwrap_or(frame)
        .to_bytes()
        .ok()
        .map(Bytes::from)
}

impl Core {
    /// The user's session count changed (a register or unregister at this, the owning, core).
    pub(super) fn presence_devices(&self, user: &Arc<str>) {
        let devices = self.sessions.borrow().get(user).map_or(0, Vec::len);
        let changed = self
            .presence
            .borrow_mut()
            .set_devices(user, devices, now_ms());
        if let Some(shown) = changed {
            self.publish_presence(user, &shown);
        }
    }

    /// PRESENCE from one of the user's devices, at the owning core.
    pub(super) fn presence_set(&self, user: &Arc<str>, status: PresenceStatus, text: String) {
        let changed = self.presence.borrow_mut().set(user, status, text);
        if let Some(shown) = changed {
            self.publish_presence(user, &shown);
        }
    }

    /// SUBSCRIBE of one user by `conn`, at the user's owning core: the current presence goes to
    /// the subscriber at once. For a user another node serves, at the core the user's slot has
    /// here: the subscription is kept here and that node is asked for the presence
    /// (`cluster::presence`).
    pub(super) fn presence_watch(&self, user: &Arc<str>, conn: ConnRef, add: bool) {
        let remote = match self.node.owners.load().owner_of_user(user) {
            Owner::Remote(o) => Some(o.node.clone()),
            Owner::Local(_) => None,
        };
        if !add {
            let mut book = self.presence.borrow_mut();
            book.unwatch(user, conn);
            let last = book.watchers(user).is_empty();
            drop(book);
            if last && self.watched.borrow_mut().unwatch(user) {
                if let Some(to) = remote {
                    send_watch(to, user, false);
                }
            }
            return;
        }
        let shown = self.presence.borrow_mut().watch(user, conn);
        let shown = match remote {
            None => shown,
            Some(to) => match self.watched.borrow_mut().watch(user, now_ms()) {
                crate::cluster::presence::OnWatch::Register => {
                    send_watch(to, user, true);
                    return;
                }
                crate::cluster::presence::OnWatch::Known(None) => return,
                crate::cluster::presence::OnWatch::Known(Some(shown)) => shown,
            },
        };
        if let Some(frame) = encode(&shown.frame(user), user) {
            inc(&METRICS.presence_notices_total);
            self.route(conn.core, CoreMsg::Push { conn, frame });
        }
    }

    /// At a user's owning core: node `node` starts (or renews) or ends watching the user. A
    /// registration is answered with the current presence.
    pub(super) fn presence_node_watch(&self, user: &Arc<str>, node: String, add: bool) {
        if !add {
            self.node_watchers.borrow_mut().unwatch(user, &node);
            return;
        }
        self.node_watchers.borrow_mut().watch(user, &node, now_ms());
        let shown = self.presence.borrow().shown(user);
        send_presence(node, user, &shown);
    }

    /// At the core a remote user's slot has here: that user's node sent their presence; it
    /// goes to the connections here that watch them.
    pub(super) fn presence_remote(&self, user: &Arc<str>, shown: Shown) {
        if !self.watched.borrow_mut().heard(user, shown.clone()) {
            return;
        }
        let Some(frame) = encode(&shown.frame(user), user) else {
            return;
        };
        self.tell_watchers(user, &frame);
    }

    /// Queues a presence frame about `user` to the connections subscribed to them here.
    fn tell_watchers(&self, user: &str, frame: &Bytes) {
        let watchers: Vec<ConnRef> = self.presence.borrow().watchers(user).to_vec();
        for conn in watchers {
            inc(&METRICS.presence_notices_total);
            self.route(
                conn.core,
                CoreMsg::Push {
                    conn,
                    frame: frame.clone(),
                },
            );
        }
    }

    /// Renews this core's registrations with other nodes and drops the leases other nodes let
    /// run out (every sweep; each renewal is due every `cluster::presence::RENEW_MS`).
    pub(super) fn presence_leases(&self, now: u64) {
        self.node_watchers.borrow_mut().expire(now);
        let due = self.watched.borrow_mut().due(now);
        if due.is_empty() {
            return;
        }
        let owners = self.node.owners.load();
        for user in due {
            if let Owner::Remote(o) = owners.owner_of_user(&user) {
                send_watch(o.node.clone(), &user, true);
            }
        }
    }

    /// Sends a changed presence to the user's watchers now, and to their online friends and
    /// followers from a task that reads those lists in pages.
    fn publish_presence(&self, user: &Arc<str>, shown: &Shown) {
        inc(&METRICS.presence_changes_total);
        let Some(frame) = encode(&shown.frame(user), user) else {
            return;
        };
        self.tell_watchers(user, &frame);
        for node in self.node_watchers.borrow().nodes(user, now_ms()) {
            send_presence(node, user, shown);
        }
        let Ok(user) = UserId::new(user.as_ref()) else {
            return;
        };
        // Friends and followers of other nodes get it as stored: their node shows it per tenant.
        let raw = match crate::cluster::links::installed() {
            Some(_) => shown.frame(user.as_str()).to_bytes().unwrap_or_default(),
            None => Vec::new(),
        };
        monoio::spawn(fan_out_presence(Arc::clone(&self.node), user, frame, raw));
    }

    /// A newly stored message: if the recipient has no device online at its owning core, the
    /// push hook is told (from that core, which knows).
    pub(super) fn offline_push(&self, msg: &DirectMessage, r: &AppendResult) {
        if self.node.hooks.push.is_none() {
            return;
        }
        // Another node serves the recipient and notifies for it.
        if matches!(
            self.node
                .owners
                .load()
                .owner_of_user(msg.recipient.as_str()),
            Owner::Remote(_)
        ) {
            return;
        }
        let Some(note) = PushNote::direct(msg, r) else {
            return;
        };
        let owner = self.owner_core(note.user.as_str());
        self.route(
            owner,
            CoreMsg::Offline {
                note: Box::new(note),
            },
        );
    }

    /// A newly stored group message: each member to notify (see [`GroupNote::members`]) is
    /// told at their owning core if none of their devices is online there.
    pub(super) fn group_offline_push(&self, note: &GroupNote, r: &GroupAppendResult) {
        let owners = self.node.owners.load();
        for user in note.members(r) {
            // Another node serves the member and its Open connections.
            if matches!(owners.owner_of_user(user.as_str()), Owner::Remote(_)) {
                continue;
            }
            let owner = self.owner_core(user.as_str());
            self.route(
                owner,
                CoreMsg::Offline {
                    note: Box::new(note.for_member(user, r)),
                },
            );
        }
    }

    /// At the recipient's owning core: queue the note for the hook if no device is online.
    pub(super) fn offline(&self, mut note: PushNote) {
        let online = self
            .sessions
            .borrow()
            .get(note.user.as_str())
            .is_some_and(|regs| !regs.is_empty());
        let Some(tx) = &self.node.hooks.push else {
            return;
        };
        if online {
            return;
        }
        //= SPEC.md#offline-push
        //# a `quiet` flag, true when the user's chosen presence is BUSY
        note.quiet = self.presence.borrow().quiet(note.user.as_str());
        match tx.try_send(note) {
            Ok(()) => inc(&METRICS.push_queued_total),
            // The hook is behind or gone: the message is in the inbox either way.
            Err(_) => inc(&METRICS.push_dropped_total),
        }
    }
}

/// Tells the online friends and followers of `user` (at most [`MAX_FANOUT`], each once) in
/// pages of [`FANOUT_BATCH`]: one page read, one round of deliveries to the cores owning them.
async fn fan_out_presence(node: Arc<NodeShared>, user: UserId, frame: Bytes, raw: Vec<u8>) {
    let mut told: HashSet<UserId> = HashSet::new();
    for kind in [RelationKind::FRIEND, RelationKind::FOLLOWER] {
        let mut after: Option<UserId> = None;
        while told.len() < MAX_FANOUT {
            let page =
                match node
                    .store
                    .relation_page(user.clone(), kind, after.take(), FANOUT_BATCH)
                {
                    Ok(c) => match c.await {
                        Ok(p) => p,
                        Err(e) => {
                            debug!("presence of {user}: relation list failed: {e}");
                            return;
                        }
                    },
                    // The reader queue is full: this change reaches watchers only.
                    Err(_) => return,
                };
            let full = page.len() == FANOUT_BATCH;
            after = page.last().map(|r| r.other.clone());
            let owners = node.owners.load();
            for r in page {
                if told.len() >= MAX_FANOUT || !told.insert(r.other.clone()) {
                    continue;
                }
                let core = match owners.owner_of_user(r.other.as_str()) {
                    Owner::Local(core) => core,
                    // Their node passes it to their devices (`cluster::forward::notified`).
                    Owner::Remote(o) => {
                        if let (Some(links), false) =
                            (crate::cluster::links::installed(), raw.is_empty())
                        {
                            inc(&METRICS.presence_notices_total);
                            links.notify(o.node.clone(), r.other.as_str().to_owned(), raw.clone());
                        }
                        continue;
                    }
                };
                if let Some(tx) = node.peers.get(usize::from(core.0)) {
                    inc(&METRICS.presence_notices_total);
                    if tx
                        .try_send(CoreMsg::Deliver {
                            user: Arc::from(r.other.as_str()),
                            except: None,
                            frame: frame.clone(),
                        })
                        .is_err()
                    {
                        inc(&METRICS.core_queue_full_total);
                    }
                }
            }
            if !full {
                break;
            }
        }
    }
}

/// Asks node `to` to start (or renew) or end telling this node about `user`'s presence: a
/// SUBSCRIBE frame as a node-to-node notice (`cluster::presence`).
fn send_watch(to: String, user: &str, add: bool) {
    let Some(links) = crate::cluster::links::installed() else {
        return;
    };
    let frame = Frame::new(
        0,
        Body::Subscribe(tern_protocol::Subscribe {
            op: if add {
                tern_protocol::SubOp::ADD
            } else {
                tern_protocol::SubOp::REMOVE
            },
            users: vec![std::borrow::Cow::Borrowed(user)],
        }),
    );
    if let Ok(bytes) = frame.to_bytes() {
        links.notify(to, user.to_owned(), bytes);
    }
}

/// Sends `user`'s presence to node `to`, which watches them: a PRESENCE notice about the user
/// addressed to the user, with ids as stored (the watching node shows them per tenant).
fn send_presence(to: String, user: &str, shown: &Shown) {
    let Some(links) = crate::cluster::links::installed() else {
        return;
    };
    if let Ok(bytes) = shown.frame(user).to_bytes() {
        inc(&METRICS.presence_notices_total);
        links.notify(to, user.to_owned(), bytes);
    }
}

impl Connection {
    /// PRESENCE, SUBSCRIBE, PUSH_TOKEN and MUTE.
    pub(super) async fn notify_request(&mut self, frame: &Frame<'_>, plan: Plan) -> bool {
        let rid = frame.request_id;
        let Some(s) = self.session.as_ref() else {
            return false;
        };
        if let Some(refusal) = session::not_negotiated(s.caps, frame) {
            return self.write_frame(&refusal).await;
        }
        let user: Arc<str> = Arc::from(s.info.user.as_str());
        let ok = Frame::new(rid, Body::Ok);
        match plan {
            Plan::SetPresence {
                status,
                text,
                reply,
            } => {
                let owner = self.core.owner_core(&user);
                self.core
                    .route(owner, CoreMsg::PresenceSet { user, status, text });
                !reply || self.write_frame(&ok).await
            }
            Plan::Subscribe { add, users } => {
                let me = self.me;
                let Some(s) = self.session.as_mut() else {
                    return false;
                };
                let seat = s.seat.get_or_insert_with(Box::default);
                if add {
                    if presence::add_subscriptions(&mut seat.watching, &users).is_none() {
                        let msg = format!(
                            "at most {} presence subscriptions per connection",
                            presence::MAX_SUBSCRIPTIONS
                        );
                        return self
                            .write_frame(&session::error(rid, ErrorCode::LIMIT_EXCEEDED, msg))
                            .await;
                    }
                } else {
                    seat.watching
                        .retain(|w| !users.iter().any(|u| u.as_str() == w.as_ref()));
                }
                // The OK first: the current presences follow it (SPEC: "right after the OK").
                if !self.write_frame(&ok).await {
                    return false;
                }
                for u in users {
                    let watched: Arc<str> = Arc::from(u.as_str());
                    let owner = self.core.owner_core(&watched);
                    self.core.route(
                        owner,
                        CoreMsg::PresenceWatch {
                            user: watched,
                            conn: me,
                            add,
                        },
                    );
                }
                true
            }
            Plan::PushToken { platform, token } => {
                let setting = PushSetting::Token {
                    user: s.info.user.clone(),
                    device: s.info.device.clone(),
                    platform,
                    token,
                };
                self.store_setting(rid, setting).await
            }
            Plan::Mute { conv, until_ms } => {
                let setting = PushSetting::Mute {
                    user: s.info.user.clone(),
                    conv,
                    until_ms,
                };
                self.store_setting(rid, setting).await
            }
            _ => true,
        }
    }

    async fn store_setting(&mut self, rid: u32, setting: PushSetting) -> bool {
        let submitted = self.core.node.store.set_push(setting);
        if self.storage(rid, submitted).await.is_none() {
            return self.conn.state() == State::Open;
        }
        self.write_frame(&Frame::new(rid, Body::Ok)).await
    }

    /// Ends the connection's presence subscriptions (it is closing).
    pub(super) fn unwatch_all(&self, watching: &[Arc<str>]) {
        for user in watching {
            let owner = self.core.owner_core(user);
            self.core.route(
                owner,
                CoreMsg::PresenceWatch {
                    user: Arc::clone(user),
                    conn: self.me,
                    add: false,
                },
            );
        }
    }
}
