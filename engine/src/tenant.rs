//! Tenants (SPEC.md §6 "Tenants"): one node serves several applications whose users
//! must never meet. A token's `tenant` claim puts its user in that tenant, and every id the
//! node holds for a tenant's user, group, room or topic is scoped by it (`tenant ‖ U+001F ‖
//! name`, [`tern_storage::scoped`]). Scoping happens at the two edges of a session and nowhere
//! else:
//!
//! - [`inbound`]: every name a client sends (a SEND's peer, group members, relation targets,
//!   room and topic names, cursors…) is resolved inside the sender's tenant. A name holding the
//!   separator is refused for every session, the default tenant's too, so no client can name
//!   an id of another tenant.
//! - [`outbound`]: every id in a frame for a tenant's client is shown without the tenant part,
//!   so a client never sees its tenant's prefix (nor could it see another tenant's ids: none
//!   can reach it, since everything it names is in its tenant).
//!
//! In between, storage keys, slot hashes, session registries, presence, relations, group
//! membership, room members, the push hook and node-to-node routes all work on the scoped ids
//! unchanged. The default tenant (no claim) has plain ids: its wire and storage are as before.
//!
//! Also here: per-tenant limits from configuration (`[tenants.<id>]`): connections per node,
//! SENDs per second per node, and the group member limit (enforced by the storage writer).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tern_protocol::wire::{put_varint, Reader, Wire};
use tern_protocol::{Body, ErrorCode, Frame, Message, MessageKind};
use tern_storage::{scoped, TENANT_SEP};

/// Limits of one tenant; `None` is no limit beyond the node's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Authenticated connections of the tenant's users on this node.
    pub max_connections: Option<u32>,
    /// SENDs (any conversation) per second from the tenant's users on this node, with a burst
    /// of `send_burst` (default: the rate) on top of an idle second.
    pub max_send_rate: Option<u32>,
    pub send_burst: Option<u32>,
    /// Most members a group of the tenant may have (at most the node's `group_max_members`).
    pub group_max_members: Option<u32>,
}

/// The tenants named in configuration, with their limits.
pub type TenantConfig = BTreeMap<String, TenantLimits>;

/// Live state of a configured tenant: its limits and the counters they are checked against,
/// shared by every core.
#[derive(Debug)]
pub struct TenantState {
    pub name: String,
    pub limits: TenantLimits,
    connections: AtomicU32,
    sends: Mutex<Bucket>,
}

/// A token bucket refilled per millisecond.
#[derive(Debug, Default)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn allow(&mut self, now_ms: u64, per_sec: u32, burst: u32) -> bool {
        let cap = f64::from(burst.max(1));
        if self.at_ms == 0 {
            self.tokens = cap;
        } else {
            let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
            self.tokens = (self.tokens + elapsed * f64::from(per_sec) / 1000.0).min(cap);
        }
        self.at_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Every configured tenant; tenants that are not configured have no limits of their own.
#[derive(Debug, Default)]
pub struct Tenants {
    map: BTreeMap<String, Arc<TenantState>>,
}

impl Tenants {
    pub fn new(cfg: &TenantConfig) -> Tenants {
        Tenants {
            map: cfg
                .iter()
                .map(|(name, limits)| {
                    let state = TenantState {
                        name: name.clone(),
                        limits: *limits,
                        connections: AtomicU32::new(0),
                        sends: Mutex::new(Bucket::default()),
                    };
                    (name.clone(), Arc::new(state))
                })
                .collect(),
        }
    }

    /// A seat for a new connection of `tenant`'s user, or why it is refused.
    pub fn seat(&self, tenant: Option<&str>) -> Result<Option<TenantSeat>, String> {
        let Some(state) = tenant.and_then(|t| self.map.get(t)) else {
            return Ok(None);
        };
        let max = state.limits.max_connections.unwrap_or(u32::MAX);
        let taken = state
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Some(TenantSeat(Arc::clone(state)))),
            Err(_) => Err(format!(
                "tenant {} has its {max} connections on this node",
                state.name
            )),
        }
    }
}

/// A connection's place in its tenant's connection count, given back when dropped.
#[derive(Debug)]
pub struct TenantSeat(Arc<TenantState>);

impl Drop for TenantSeat {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TenantSeat {
    /// Whether one more SEND fits the tenant's rate now.
    fn allow_send(&self, now_ms: u64) -> bool {
        let Some(rate) = self.0.limits.max_send_rate else {
            return true;
        };
        let burst = self.0.limits.send_burst.unwrap_or(rate);
        match self.0.sends.lock() {
            Ok(mut b) => b.allow(now_ms, rate, burst),
            // A panic elsewhere while holding the lock: do not stop the tenant's traffic.
            Err(poisoned) => poisoned.into_inner().allow(now_ms, rate, burst),
        }
    }
}

/// Connections of configured tenants open now (for tests and metrics).
pub fn connections(t: &Tenants, tenant: &str) -> u32 {
    t.map
        .get(tenant)
        .map_or(0, |s| s.connections.load(Ordering::Acquire))
}

/// Whether a visitor met only frame types it knows.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Known,
    Unknown,
}

/// Calls `f` on every identifier a frame body carries (user, group, room and topic ids and
/// the cursors made of them; not display names, texts, devices or tokens), the users inside
/// GROUP_EVENT message bodies included. Stops at the first `false`.
fn visit<'a>(body: &mut Body<'a>, f: &mut dyn FnMut(&mut Cow<'a, str>) -> bool) -> Option<Seen> {
    fn all<'a>(v: &mut [Cow<'a, str>], f: &mut dyn FnMut(&mut Cow<'a, str>) -> bool) -> Option<()> {
        v.iter_mut().all(f).then_some(())
    }
    fn msg<'a>(m: &mut Message<'a>, f: &mut dyn FnMut(&mut Cow<'a, str>) -> bool) -> Option<()> {
        if !(f(&mut m.conv.id) && f(&mut m.sender)) {
            return None;
        }
        if m.kind == MessageKind::GROUP_EVENT && !m.body.is_empty() {
            m.body = Cow::Owned(group_event_body(&m.body, f)?);
        }
        Some(())
    }
    let ok = |b: bool| b.then_some(());
    #[allow(unreachable_patterns)]
    match body {
        Body::Ok
        | Body::Hello(_)
        | Body::Redirect(_)
        | Body::Close(_)
        | Body::Ping(_)
        | Body::Pong(_)
        | Body::Error(_)
        | Body::SendAck(_)
        | Body::PushAck(_)
        | Body::Sync(_)
        | Body::Contacts(_)
        | Body::PushToken(_) => {}
        Body::Welcome(w) => ok(f(&mut w.user))?,
        Body::Send(s) => ok(f(&mut s.to.id))?,
        Body::SendWithMentions(s) => {
            ok(f(&mut s.to.id))?;
            all(&mut s.mentions, f)?;
        }
        Body::Push(m) => msg(m, f)?,
        Body::SyncPage(p) => p.messages.iter_mut().try_for_each(|m| msg(m, f))?,
        Body::History(h) => ok(f(&mut h.conv.id))?,
        Body::HistoryPage(p) => {
            ok(f(&mut p.conv.id))?;
            p.messages.iter_mut().try_for_each(|m| msg(m, f))?;
        }
        Body::ContactsPage(p) => {
            for c in &mut p.entries {
                ok(f(&mut c.conv.id))?;
                if let Some(m) = &mut c.last {
                    msg(m, f)?;
                }
            }
        }
        Body::Read(r) => ok(f(&mut r.conv.id))?,
        Body::Receipt(r) => ok(f(&mut r.conv.id) && f(&mut r.user))?,
        Body::Recall(r) => ok(f(&mut r.conv.id))?,
        Body::Typing(t) => ok(f(&mut t.conv.id) && f(&mut t.user))?,
        Body::Presence(p) => ok(f(&mut p.user))?,
        Body::Subscribe(s) => all(&mut s.users, f)?,
        Body::GroupCreate(g) => all(&mut g.members, f)?,
        Body::GroupUpdate(g) => ok(f(&mut g.group))?,
        Body::GroupMembers(g) => {
            ok(f(&mut g.group))?;
            all(&mut g.users, f)?;
        }
        Body::GroupLeave(g) | Body::GroupDisband(g) | Body::GroupGet(g) | Body::RoomLeave(g) => {
            ok(f(&mut g.group))?
        }
        Body::GroupTransfer(g) => ok(f(&mut g.group) && f(&mut g.owner))?,
        Body::GroupList(l) => ok(f(&mut l.cursor))?,
        Body::GroupListPage(p) => {
            ok(f(&mut p.next_cursor))?;
            for g in &mut p.groups {
                ok(f(&mut g.group))?;
            }
        }
        Body::GroupInfo(g) => {
            ok(f(&mut g.group) && f(&mut g.owner))?;
            for m in &mut g.members {
                ok(f(&mut m.user))?;
            }
        }
        Body::GroupReceipts(g) => ok(f(&mut g.group))?,
        Body::GroupReceiptsPage(p) => {
            ok(f(&mut p.group))?;
            for m in &mut p.messages {
                all(&mut m.readers, f)?;
            }
        }
        Body::RoomJoin(j) => ok(f(&mut j.room))?,
        Body::TopicSub(t) => ok(f(&mut t.topic))?,
        Body::TopicList(l) => ok(f(&mut l.cursor))?,
        Body::TopicListPage(p) => {
            ok(f(&mut p.next_cursor))?;
            for t in &mut p.topics {
                ok(f(&mut t.topic))?;
            }
        }
        Body::Relation(r) => ok(f(&mut r.user))?,
        Body::RelationList(l) => ok(f(&mut l.cursor))?,
        Body::RelationPage(p) => {
            ok(f(&mut p.next_cursor))?;
            for e in &mut p.users {
                ok(f(&mut e.user))?;
            }
        }
        Body::Mute(m) => ok(f(&mut m.conv.id))?,
        // A frame type added after this list: callers decide (refuse it from a tenant's client,
        // pass it on otherwise).
        _ => return Some(Seen::Unknown),
    }
    Some(Seen::Known)
}

/// A GROUP_EVENT body (`event u8 · users list<string> · arg varint`, then anything a later
/// revision appends) with `f` applied to its users; `None` when `f` refuses one. A body that
/// does not parse is left as it is.
fn group_event_body<'a>(
    body: &[u8],
    f: &mut dyn FnMut(&mut Cow<'a, str>) -> bool,
) -> Option<Vec<u8>> {
    let mut r = Reader::new(body);
    let parsed = (|| {
        let [event] = r.array::<1>().ok()?;
        let users = <Vec<Cow<'_, str>> as Wire>::get(&mut r).ok()?;
        let arg = r.varint().ok()?;
        Some((event, users, arg))
    })();
    let Some((event, users, arg)) = parsed else {
        return Some(body.to_vec());
    };
    let rest = &body[r.position()..];
    let mut out = Vec::with_capacity(body.len());
    out.push(event);
    put_varint(&mut out, users.len() as u64);
    for u in users {
        let mut u: Cow<'a, str> = Cow::Owned(u.into_owned());
        if !f(&mut u) {
            return None;
        }
        u.put(&mut out);
    }
    put_varint(&mut out, arg);
    out.extend_from_slice(rest);
    Some(out)
}

/// Resolves the names of a frame a client of `tenant` (`None`: the default tenant) sent inside
/// that tenant, in place; counts a SEND against the tenant's rate. `Err` is the ERROR to answer
/// instead of serving the frame.
//= SPEC.md#tenants
//# Every name a client sends is resolved inside its tenant
pub fn inbound(
    frame: &mut Frame<'_>,
    tenant: Option<&str>,
    seat: Option<&TenantSeat>,
    now_ms: u64,
) -> Result<(), Box<Frame<'static>>> {
    let rid = frame.request_id;
    let mut scope = |c: &mut Cow<'_, str>| {
        if c.is_empty() {
            // Empty means "none" (a cursor at the start, @all in mentions, the friends-only
            // setting's user): nothing to scope.
            return true;
        }
        if c.contains(TENANT_SEP) {
            return false;
        }
        if let Some(t) = tenant {
            *c = Cow::Owned(scoped(Some(t), c));
        }
        true
    };
    match visit(&mut frame.body, &mut scope) {
        None => {
            return Err(Box::new(crate::session::error(
                rid,
                ErrorCode::INVALID_ARGUMENT,
                "identifiers must not contain U+001F",
            )))
        }
        Some(Seen::Unknown) if tenant.is_some() => {
            return Err(Box::new(crate::session::error(
                rid,
                ErrorCode::INVALID_ARGUMENT,
                format!("{} is not served to tenants", frame.frame_type()),
            )))
        }
        Some(_) => {}
    }
    if matches!(frame.body, Body::Send(_) | Body::SendWithMentions(_)) {
        if let Some(seat) = seat {
            //= SPEC.md#tenants
            //# its SENDs per second on the node (a SEND beyond it: `RATE_LIMITED`, nothing stored
            if !seat.allow_send(now_ms) {
                return Err(Box::new(crate::session::error(
                    rid,
                    ErrorCode::RATE_LIMITED,
                    format!("tenant {} sends too fast, retry later", seat.0.name),
                )));
            }
        }
    }
    Ok(())
}

/// `frame` as a client of `tenant` sees it: every id without the tenant part, and the tenant
/// part taken out of ERROR and CLOSE texts. `None` when there is nothing to change (the
/// default tenant).
pub fn outbound(frame: &Frame<'_>, tenant: Option<&str>) -> Option<Frame<'static>> {
    let t = tenant?;
    let prefix = scoped(Some(t), "");
    let mut out = frame.clone().into_owned();
    let mut strip = |c: &mut Cow<'static, str>| {
        if let Some(rest) = c.strip_prefix(prefix.as_str()) {
            *c = Cow::Owned(rest.to_owned());
        }
        true
    };
    visit(&mut out.body, &mut strip);
    match &mut out.body {
        Body::Error(e) if e.message.contains(TENANT_SEP) => {
            e.message = Cow::Owned(e.message.replace(&prefix, ""));
        }
        Body::Close(c) if c.message.contains(TENANT_SEP) => {
            c.message = Cow::Owned(c.message.replace(&prefix, ""));
        }
        _ => {}
    }
    Some(out)
}

/// `frame` as the clients of `user` (an id held inside the node) see it; see [`outbound`].
pub fn outbound_for(frame: &Frame<'_>, user: &str) -> Option<Frame<'static>> {
    outbound(frame, tern_storage::tenant_of(user))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_protocol::{
        Conv, GroupInfo, GroupMember, MessageFlags, MsgId, Role, Send, SendWithMentions,
    };

    fn send(to: &str) -> Frame<'static> {
        Frame::new(
            7,
            Body::Send(Send {
                to: Conv::direct(to.to_owned()),
                msg_id: MsgId([1; 16]),
                kind: MessageKind::TEXT,
                body: Cow::Borrowed(b"hi"),
            }),
        )
    }

    #[test]
    fn names_a_client_sends_resolve_in_its_tenant() {
        let mut f = send("bob");
        inbound(&mut f, Some("acme"), None, 0).unwrap();
        let Body::Send(s) = &f.body else { panic!() };
        assert_eq!(s.to.id, "acme\u{1f}bob");
        // The default tenant's names are left alone.
        let mut f = send("bob");
        inbound(&mut f, None, None, 0).unwrap();
        let Body::Send(s) = &f.body else { panic!() };
        assert_eq!(s.to.id, "bob");
        // No one names another tenant's id.
        for tenant in [None, Some("acme")] {
            let mut f = send("other\u{1f}bob");
            let e = inbound(&mut f, tenant, None, 0).unwrap_err();
            let Body::Error(e) = e.body else { panic!() };
            assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
        }
        // @all (the empty mention) stays empty.
        let mut f = Frame::new(
            1,
            Body::SendWithMentions(SendWithMentions {
                to: Conv::group("g1".to_owned()),
                msg_id: MsgId([1; 16]),
                kind: MessageKind::TEXT,
                body: Cow::Borrowed(b"hi"),
                mentions: vec![Cow::Borrowed("bob"), Cow::Borrowed("")],
            }),
        );
        inbound(&mut f, Some("acme"), None, 0).unwrap();
        let Body::SendWithMentions(s) = &f.body else {
            panic!()
        };
        assert_eq!(s.to.id, "acme\u{1f}g1");
        assert_eq!(s.mentions, ["acme\u{1f}bob", ""]);
    }

    #[test]
    fn ids_a_client_gets_are_shown_without_the_tenant() {
        let mut event = vec![3u8];
        put_varint(&mut event, 2);
        for u in ["acme\u{1f}bob", "acme\u{1f}carol"] {
            Cow::Borrowed(u).put(&mut event);
        }
        put_varint(&mut event, 0);
        let push = Frame::new(
            0,
            Body::Push(Message {
                conv: Conv::group("acme\u{1f}g1".to_owned()),
                sender: Cow::Borrowed("acme\u{1f}alice"),
                sender_device: Cow::Borrowed("phone"),
                conv_seq: 1,
                inbox_seq: 1,
                msg_id: MsgId([0; 16]),
                time: 1,
                kind: MessageKind::GROUP_EVENT,
                flags: MessageFlags::NONE,
                body: Cow::Owned(event),
            }),
        );
        assert!(outbound(&push, None).is_none());
        let shown = outbound_for(&push, "acme\u{1f}bob").unwrap();
        let Body::Push(m) = &shown.body else { panic!() };
        assert_eq!((m.conv.id.as_ref(), m.sender.as_ref()), ("g1", "alice"));
        let mut expect = vec![3u8];
        put_varint(&mut expect, 2);
        for u in ["bob", "carol"] {
            Cow::Borrowed(u).put(&mut expect);
        }
        put_varint(&mut expect, 0);
        assert_eq!(m.body.as_ref(), expect.as_slice());

        let info = Frame::new(
            3,
            Body::GroupInfo(GroupInfo {
                group: "acme\u{1f}g1".into(),
                name: "hikers".into(),
                announcement: "".into(),
                avatar: "".into(),
                owner: "acme\u{1f}alice".into(),
                member_count: 1,
                members: vec![GroupMember {
                    user: "acme\u{1f}alice".into(),
                    role: Role::OWNER,
                    muted_until: 0,
                }],
            }),
        );
        let Body::GroupInfo(g) = outbound(&info, Some("acme")).unwrap().body else {
            panic!()
        };
        assert_eq!((g.group.as_ref(), g.owner.as_ref()), ("g1", "alice"));
        assert_eq!(g.members[0].user, "alice");
        let err = crate::session::error(1, ErrorCode::NOT_FOUND, "no user acme\u{1f}zed");
        let Body::Error(e) = outbound(&err, Some("acme")).unwrap().body else {
            panic!()
        };
        assert_eq!(e.message, "no user zed");
    }

    #[test]
    fn connection_and_send_limits() {
        let mut cfg = TenantConfig::new();
        cfg.insert(
            "acme".into(),
            TenantLimits {
                max_connections: Some(2),
                max_send_rate: Some(10),
                send_burst: Some(3),
                ..TenantLimits::default()
            },
        );
        let t = Tenants::new(&cfg);
        assert!(t.seat(None).unwrap().is_none());
        assert!(t.seat(Some("other")).unwrap().is_none());
        let a = t.seat(Some("acme")).unwrap().unwrap();
        let b = t.seat(Some("acme")).unwrap().unwrap();
        assert!(t.seat(Some("acme")).is_err());
        drop(b);
        assert_eq!(connections(&t, "acme"), 1);
        let _c = t.seat(Some("acme")).unwrap().unwrap();
        // A burst of 3, then 10 per second.
        let now = 1_000_000;
        let sent: Vec<bool> = (0..4)
            .map(|_| inbound(&mut send("bob"), Some("acme"), Some(&a), now).is_ok())
            .collect();
        assert_eq!(sent, [true, true, true, false]);
        assert!(inbound(&mut send("bob"), Some("acme"), Some(&a), now + 50).is_err());
        assert!(inbound(&mut send("bob"), Some("acme"), Some(&a), now + 100).is_ok());
    }
}
