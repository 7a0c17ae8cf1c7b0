//! Presence (SPEC.md §7, TYPING, PRESENCE and SUBSCRIBE), sans-io: what a user's PRESENCE is,
//! aggregated over their devices, and who watches it.
//!
//! The book lives on the core that owns the user's slot (`crate::slots`), next to the user's
//! session registrations, so the device count it aggregates is exact without any message
//! between cores: the registry tells the book how many sessions the user has after every
//! register and unregister. Away and busy are per user (the last PRESENCE from any device
//! wins), kept in memory only. A change of what is published comes back as [`Shown`]; the
//! adapter sends it to the watchers the book lists and to the user's friends and followers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tern_protocol::{
    Body, ErrorCode, Frame, Presence, PresenceStatus, SubOp, Subscribe as WireSubscribe,
};
use tern_storage::UserId;

use crate::auth::valid_id;
use crate::server::ConnRef;
use crate::session::{error, Plan};

/// Longest status text, in bytes (SPEC.md: at most 128 bytes).
pub const MAX_TEXT: usize = 128;
/// Most presence subscriptions one connection holds.
pub const MAX_SUBSCRIPTIONS: usize = 1_000;
/// Most friends and followers told about one change.
pub const MAX_FANOUT: usize = 10_000;
/// Friends and followers read and told per batch.
pub const FANOUT_BATCH: usize = 256;

/// A user's published presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub status: PresenceStatus,
    pub last_seen: u64,
    pub text: String,
}

impl Shown {
    /// The PRESENCE frame (request id 0) publishing it for `user`.
    pub fn frame(&self, user: &str) -> Frame<'static> {
        Frame::new(
            0,
            Body::Presence(Presence {
                user: Cow::Owned(user.to_owned()),
                status: self.status,
                last_seen: self.last_seen,
                text: Cow::Owned(self.text.clone()),
            }),
        )
    }
}

#[derive(Debug)]
struct Entry {
    /// The user's Open sessions on this node.
    devices: u32,
    /// ONLINE, AWAY or BUSY, as last chosen by one of the user's devices.
    chosen: PresenceStatus,
    /// What few users have: a status text, a last-seen time, subscribers. Boxed, so that the
    /// entry of every connected user (most of them plain ONLINE) stays 16 bytes.
    more: Option<Box<More>>,
}

#[derive(Debug, Default)]
struct More {
    text: String,
    /// When the last device closed (ms); 0: not since the node started.
    last_seen: u64,
    /// Connections subscribed to this user.
    watchers: Vec<ConnRef>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            devices: 0,
            chosen: PresenceStatus::ONLINE,
            more: None,
        }
    }
}

impl Entry {
    fn text(&self) -> &str {
        self.more.as_ref().map_or("", |m| m.text.as_str())
    }

    fn last_seen(&self) -> u64 {
        self.more.as_ref().map_or(0, |m| m.last_seen)
    }

    fn watchers(&self) -> &[ConnRef] {
        self.more.as_ref().map_or(&[], |m| m.watchers.as_slice())
    }

    fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    /// Drops the boxed part once it holds nothing.
    fn trim(&mut self) {
        if self
            .more
            .as_ref()
            .is_some_and(|m| m.text.is_empty() && m.last_seen == 0 && m.watchers.is_empty())
        {
            self.more = None;
        }
    }

    fn shown(&self) -> Shown {
        //= SPEC.md#typing-presence-and-subscribe
        //# a user is online as long as any of their devices is
        if self.devices == 0 {
            Shown {
                status: PresenceStatus::OFFLINE,
                last_seen: self.last_seen(),
                text: self.text().to_owned(),
            }
        } else {
            Shown {
                status: self.chosen,
                last_seen: 0,
                text: self.text().to_owned(),
            }
        }
    }

    /// Nothing worth keeping: no device, no watcher, nothing chosen, never seen.
    fn idle(&self) -> bool {
        self.devices == 0 && self.chosen == PresenceStatus::ONLINE && self.more.is_none()
    }
}

/// The presence of the users whose slots one core owns.
#[derive(Debug, Default)]
pub struct Book {
    users: HashMap<Arc<str>, Entry>,
}

impl Book {
    /// Applies `f` to the user's entry and returns what is published if it changed.
    fn change(&mut self, user: &Arc<str>, f: impl FnOnce(&mut Entry)) -> Option<Shown> {
        let e = self.users.entry(Arc::clone(user)).or_default();
        let before = e.shown();
        f(e);
        e.trim();
        let after = e.shown();
        if e.idle() {
            self.users.remove(user);
        }
        (after != before).then_some(after)
    }

    /// The user now has `devices` Open sessions (`now`: ms since the epoch).
    pub fn set_devices(&mut self, user: &Arc<str>, devices: usize, now: u64) -> Option<Shown> {
        self.change(user, |e| {
            if devices == 0 && e.devices > 0 {
                e.more().last_seen = now;
            }
            e.devices = u32::try_from(devices).unwrap_or(u32::MAX);
        })
    }

    /// One of the user's devices chose a status and text.
    pub fn set(&mut self, user: &Arc<str>, status: PresenceStatus, text: String) -> Option<Shown> {
        self.change(user, |e| {
            e.chosen = status;
            if !text.is_empty() || e.more.is_some() {
                e.more().text = text;
            }
        })
    }

    /// Subscribes `conn` to `user` (once) and returns the user's presence.
    pub fn watch(&mut self, user: &Arc<str>, conn: ConnRef) -> Shown {
        let e = self.users.entry(Arc::clone(user)).or_default();
        if !e.watchers().contains(&conn) {
            e.more().watchers.push(conn);
        }
        e.shown()
    }

    /// Ends a subscription (if any).
    pub fn unwatch(&mut self, user: &Arc<str>, conn: ConnRef) {
        if let Some(e) = self.users.get_mut(user) {
            if let Some(m) = e.more.as_mut() {
                m.watchers.retain(|c| *c != conn);
            }
            e.trim();
            if e.idle() {
                self.users.remove(user);
            }
        }
    }

    /// The connections subscribed to `user`.
    pub fn watchers(&self, user: &str) -> &[ConnRef] {
        self.users.get(user).map_or(&[], Entry::watchers)
    }

    /// Whether offline pushes to `user` are quiet: the user chose BUSY.
    pub fn quiet(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|e| e.chosen == PresenceStatus::BUSY)
    }

    /// The user's published presence.
    pub fn shown(&self, user: &str) -> Shown {
        self.users
            .get(user)
            .map_or_else(|| Entry::default().shown(), Entry::shown)
    }
}

/// The plan for a PRESENCE from a client.
pub fn plan_set(rid: u32, p: &Presence<'_>) -> Plan {
    //= SPEC.md#typing-presence-and-subscribe
    //# status OFFLINE or an unknown value, or a text with control characters:
    //# `INVALID_ARGUMENT`; a text longer than 128 bytes: `LIMIT_EXCEEDED`.
    match p.status {
        PresenceStatus::ONLINE | PresenceStatus::AWAY | PresenceStatus::BUSY => {}
        _ => {
            return Plan::Reply(error(
                rid,
                ErrorCode::INVALID_ARGUMENT,
                "presence status must be ONLINE, AWAY or BUSY",
            ))
        }
    }
    if p.text.len() > MAX_TEXT {
        return Plan::Reply(error(
            rid,
            ErrorCode::LIMIT_EXCEEDED,
            format!("status text is longer than {MAX_TEXT} bytes"),
        ));
    }
    if p.text.chars().any(char::is_control) {
        return Plan::Reply(error(
            rid,
            ErrorCode::INVALID_ARGUMENT,
            "status text has control characters",
        ));
    }
    Plan::SetPresence {
        status: p.status,
        text: p.text.to_string(),
        reply: rid != 0,
    }
}

/// The plan for a SUBSCRIBE.
pub fn plan_subscribe(rid: u32, s: &WireSubscribe<'_>) -> Plan {
    let add = match s.op {
        SubOp::ADD => true,
        SubOp::REMOVE => false,
        _ => {
            return Plan::Reply(error(
                rid,
                ErrorCode::INVALID_ARGUMENT,
                "unknown subscribe operation",
            ))
        }
    };
    if s.users.len() > MAX_SUBSCRIPTIONS {
        return Plan::Reply(error(
            rid,
            ErrorCode::LIMIT_EXCEEDED,
            format!("at most {MAX_SUBSCRIPTIONS} presence subscriptions per connection"),
        ));
    }
    let mut users = Vec::with_capacity(s.users.len());
    for u in &s.users {
        match UserId::new(u.as_ref()) {
            Ok(id) if valid_id(u) => {
                if !users.contains(&id) {
                    users.push(id);
                }
            }
            _ => {
                return Plan::Reply(error(
                    rid,
                    ErrorCode::INVALID_ARGUMENT,
                    format!("invalid user id {u:?}"),
                ))
            }
        }
    }
    Plan::Subscribe { add, users }
}

/// A connection's subscriptions after an ADD of `users`, or `None` if they would exceed
/// [`MAX_SUBSCRIPTIONS`] (then nothing is added). Returns the users newly added.
pub fn add_subscriptions(have: &mut Vec<Arc<str>>, users: &[UserId]) -> Option<Vec<Arc<str>>> {
    let new: Vec<Arc<str>> = users
        .iter()
        .filter(|u| !have.iter().any(|h| h.as_ref() == u.as_str()))
        .map(|u| Arc::from(u.as_str()))
        .collect();
    //= SPEC.md#typing-presence-and-subscribe
    //# an ADD that would exceed it is refused with `LIMIT_EXCEEDED` and adds none of its users.
    if have.len() + new.len() > MAX_SUBSCRIPTIONS {
        return None;
    }
    have.extend(new.iter().cloned());
    Some(new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn conn(id: u32) -> ConnRef {
        ConnRef { core: 0, id }
    }

    #[test]
    fn the_entry_of_a_plain_online_user_stays_small() {
        // Every connected user has one: the per-connection memory target counts it.
        assert!(std::mem::size_of::<Entry>() <= 16);
    }

    #[test]
    fn presence_is_online_while_any_device_is_and_offline_with_last_seen() {
        let mut b = Book::default();
        let bob: Arc<str> = Arc::from("bob");
        assert_eq!(b.shown("bob").status, PresenceStatus::OFFLINE);
        let s = b.set_devices(&bob, 1, 10).unwrap();
        assert_eq!((s.status, s.last_seen), (PresenceStatus::ONLINE, 0));
        assert_eq!(
            b.set_devices(&bob, 2, 20),
            None,
            "a second device changes nothing"
        );
        assert_eq!(b.set_devices(&bob, 1, 30), None, "still one device online");
        let s = b.set_devices(&bob, 0, 40).unwrap();
        assert_eq!((s.status, s.last_seen), (PresenceStatus::OFFLINE, 40));
        // The last-seen time is kept for later subscribers.
        assert_eq!(b.watch(&bob, conn(1)).last_seen, 40);
    }

    #[test]
    fn busy_is_per_user_sticky_and_makes_pushes_quiet() {
        let mut b = Book::default();
        let bob: Arc<str> = Arc::from("bob");
        b.set_devices(&bob, 1, 1);
        let s = b
            .set(&bob, PresenceStatus::BUSY, "in a meeting".into())
            .unwrap();
        assert_eq!(
            (s.status, s.text.as_str()),
            (PresenceStatus::BUSY, "in a meeting")
        );
        assert_eq!(
            b.set(&bob, PresenceStatus::BUSY, "in a meeting".into()),
            None,
            "unchanged"
        );
        assert!(b.quiet("bob"));
        // Offline: shown OFFLINE with the text, still quiet; back online: still BUSY.
        let s = b.set_devices(&bob, 0, 5).unwrap();
        assert_eq!(
            (s.status, s.text.as_str()),
            (PresenceStatus::OFFLINE, "in a meeting")
        );
        assert!(b.quiet("bob"));
        assert_eq!(
            b.set_devices(&bob, 1, 6).unwrap().status,
            PresenceStatus::BUSY
        );
        b.set(&bob, PresenceStatus::AWAY, String::new());
        assert!(!b.quiet("bob"));
        assert_eq!(b.shown("bob").status, PresenceStatus::AWAY);
    }

    #[test]
    fn watchers_are_kept_once_and_idle_entries_dropped() {
        let mut b = Book::default();
        let carol: Arc<str> = Arc::from("carol");
        b.watch(&carol, conn(1));
        b.watch(&carol, conn(1));
        b.watch(&carol, conn(2));
        assert_eq!(b.watchers("carol"), &[conn(1), conn(2)]);
        b.unwatch(&carol, conn(1));
        b.unwatch(&carol, conn(2));
        assert!(b.watchers("carol").is_empty());
        assert!(b.users.is_empty(), "nothing left to remember");
    }

    #[test]
    fn requests_are_validated() {
        let set = |status, text: &str| {
            plan_set(
                3,
                &Presence {
                    user: "".into(),
                    status,
                    last_seen: 0,
                    text: text.to_owned().into(),
                },
            )
        };
        assert_eq!(
            set(PresenceStatus::BUSY, "meeting"),
            Plan::SetPresence {
                status: PresenceStatus::BUSY,
                text: "meeting".into(),
                reply: true
            }
        );
        let code = |p: Plan| match p {
            Plan::Reply(f) => match f.body {
                Body::Error(e) => e.code,
                _ => panic!(),
            },
            _ => panic!(),
        };
        assert_eq!(
            code(set(PresenceStatus::OFFLINE, "")),
            ErrorCode::INVALID_ARGUMENT
        );
        assert_eq!(
            code(set(PresenceStatus(9), "")),
            ErrorCode::INVALID_ARGUMENT
        );
        assert_eq!(
            code(set(PresenceStatus::AWAY, &"x".repeat(129))),
            ErrorCode::LIMIT_EXCEEDED
        );
        assert_eq!(
            code(set(PresenceStatus::AWAY, "a\nb")),
            ErrorCode::INVALID_ARGUMENT
        );
        let sub = |op, users: &[&str]| {
            plan_subscribe(
                4,
                &WireSubscribe {
                    op,
                    users: users.iter().map(|u| Cow::Owned(u.to_string())).collect(),
                },
            )
        };
        let Plan::Subscribe { add, users } = sub(SubOp::ADD, &["bob", "carol", "bob"]) else {
            panic!()
        };
        assert!(add);
        assert_eq!(users.len(), 2, "duplicates collapse");
        assert_eq!(code(sub(SubOp(7), &["bob"])), ErrorCode::INVALID_ARGUMENT);
        assert_eq!(code(sub(SubOp::ADD, &[""])), ErrorCode::INVALID_ARGUMENT);
    }

    #[test]
    fn subscriptions_are_bounded_per_connection() {
        let mut have = Vec::new();
        let users: Vec<UserId> = (0..MAX_SUBSCRIPTIONS)
            .map(|i| UserId::new(format!("u{i}")).unwrap())
            .collect();
        assert_eq!(
            add_subscriptions(&mut have, &users).unwrap().len(),
            MAX_SUBSCRIPTIONS
        );
        assert_eq!(
            add_subscriptions(&mut have, &users[..5]).unwrap().len(),
            0,
            "existing ones are not new"
        );
        let one_more = [UserId::new("extra").unwrap()];
        assert!(add_subscriptions(&mut have, &one_more).is_none());
        assert_eq!(have.len(), MAX_SUBSCRIPTIONS);
    }
}
