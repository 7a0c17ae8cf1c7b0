//! Presence across nodes (CLUSTER.md, "Presence across nodes"), sans-io: the leases by which a
//! node watches a user another node serves, on both sides.
//!
//! A user's presence is kept by the core that owns the user's slot, on the node that serves the
//! user (`crate::presence`). A connection on another node that subscribes to that user is
//! registered in its own node's book, at the core the user's slot would have there, and that
//! node asks the user's node to tell it about changes: a SUBSCRIBE frame sent as a node-to-node
//! notice. The user's node keeps the asking node as a watcher for [`LEASE_MS`] and sends it
//! the current presence at once and every change after, as PRESENCE notices; the watching node
//! passes them to its connections. It renews the lease every [`RENEW_MS`] while it has
//! watchers, and ends it (SUBSCRIBE remove) when the last one goes.
//!
//! Notices cross at most once and not while the link is down (like typing), so the lease is
//! what recovers: a registration lost with a link or with a restart of the user's node is made
//! again by the next renewal, which also finds the user's node anew when the slot moved. A
//! change missed meanwhile shows at the next change or renewal (the user's node answers every
//! renewal with the current presence), at most [`RENEW_MS`] late.

use std::collections::HashMap;
use std::sync::Arc;

use crate::presence::Shown;

/// How long a registration of a watching node lasts without renewal.
pub const LEASE_MS: u64 = 90_000;

/// How often a watching node renews its registrations.
pub const RENEW_MS: u64 = 30_000;

/// At the watched user's node: which other nodes watch which of this core's users, each until
/// its lease ends.
#[derive(Debug, Default)]
pub struct NodeWatchers {
    by_user: HashMap<Arc<str>, Vec<(String, u64)>>,
}

impl NodeWatchers {
    /// Registers (or renews) `node` as a watcher of `user` until `now + LEASE_MS`.
    pub fn watch(&mut self, user: &Arc<str>, node: &str, now: u64) {
        let until = now.saturating_add(LEASE_MS);
        let nodes = self.by_user.entry(Arc::clone(user)).or_default();
        match nodes.iter_mut().find(|(n, _)| n == node) {
            Some(entry) => entry.1 = until,
            None => nodes.push((node.to_owned(), until)),
        }
    }

    /// Ends `node`'s registration for `user`.
    pub fn unwatch(&mut self, user: &str, node: &str) {
        if let Some(nodes) = self.by_user.get_mut(user) {
            nodes.retain(|(n, _)| n != node);
            if nodes.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    /// The nodes whose lease on `user` runs at `now`.
    pub fn nodes(&self, user: &str, now: u64) -> Vec<String> {
        self.by_user.get(user).map_or_else(Vec::new, |nodes| {
            nodes
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(n, _)| n.clone())
                .collect()
        })
    }

    /// Drops the leases that ended by `now`.
    pub fn expire(&mut self, now: u64) {
        self.by_user.retain(|_, nodes| {
            nodes.retain(|(_, until)| *until > now);
            !nodes.is_empty()
        });
    }
}

/// At a watching node: the users of other nodes that this core's connections watch, with the
/// last presence heard of each and when their registration was last sent.
#[derive(Debug, Default)]
pub struct Watched {
    users: HashMap<Arc<str>, Remote>,
}

#[derive(Debug)]
struct Remote {
    /// The last presence the user's node sent; `None` until it answers.
    shown: Option<Shown>,
    /// When the registration was last sent (ms).
    sent: u64,
}

/// What a watching core does when a local connection starts watching a remote user.
#[derive(Debug, PartialEq, Eq)]
pub enum OnWatch {
    /// The first watcher here: register with the user's node (it answers with the presence).
    Register,
    /// Others watch already: give the new watcher the presence heard last, if any.
    Known(Option<Shown>),
}

impl Watched {
    /// A local connection starts watching `user`, who another node serves.
    pub fn watch(&mut self, user: &Arc<str>, now: u64) -> OnWatch {
        match self.users.get(user) {
            Some(r) => OnWatch::Known(r.shown.clone()),
            None => {
                self.users.insert(
                    Arc::clone(user),
                    Remote {
                        shown: None,
                        sent: now,
                    },
                );
                OnWatch::Register
            }
        }
    }

    /// No local connection watches `user` any more: whether a registration was held (and
    /// should be ended at the user's node).
    pub fn unwatch(&mut self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }

    /// The user's node sent a presence; whether anyone here watches the user (if not, the
    /// notice is stale and dropped).
    pub fn heard(&mut self, user: &str, shown: Shown) -> bool {
        match self.users.get_mut(user) {
            Some(r) => {
                r.shown = Some(shown);
                true
            }
            None => false,
        }
    }

    /// The users whose registration is due for renewal at `now` (marked as sent).
    pub fn due(&mut self, now: u64) -> Vec<Arc<str>> {
        self.users
            .iter_mut()
            .filter(|(_, r)| now.saturating_sub(r.sent) >= RENEW_MS)
            .map(|(u, r)| {
                r.sent = now;
                Arc::clone(u)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_protocol::PresenceStatus;

    fn shown(status: PresenceStatus) -> Shown {
        Shown {
            status,
            last_seen: 0,
            text: String::new(),
        }
    }

    #[test]
    fn leases_run_out_unless_renewed() {
        let bob: Arc<str> = Arc::from("bob");
        let mut w = NodeWatchers::default();
        w.watch(&bob, "n1", 1_000);
        w.watch(&bob, "n2", 50_000);
        assert_eq!(w.nodes("bob", 2_000), vec!["n1", "n2"]);
        // n1 lets its lease run out, n2 renews.
        w.watch(&bob, "n2", 80_000);
        assert_eq!(w.nodes("bob", 1_000 + LEASE_MS), vec!["n2"]);
        w.expire(1_000 + LEASE_MS);
        assert_eq!(w.by_user["bob"].len(), 1);
        w.unwatch("bob", "n2");
        assert!(w.nodes("bob", 0).is_empty() && w.by_user.is_empty());
    }

    #[test]
    fn the_first_watcher_registers_and_later_ones_get_what_was_heard() {
        let bob: Arc<str> = Arc::from("bob");
        let mut w = Watched::default();
        assert_eq!(w.watch(&bob, 0), OnWatch::Register);
        assert_eq!(w.watch(&bob, 10), OnWatch::Known(None));
        assert!(w.heard("bob", shown(PresenceStatus::ONLINE)));
        assert_eq!(
            w.watch(&bob, 20),
            OnWatch::Known(Some(shown(PresenceStatus::ONLINE)))
        );
        assert!(
            !w.heard("carol", shown(PresenceStatus::ONLINE)),
            "nobody watches carol"
        );
        assert!(w.due(RENEW_MS - 1).is_empty());
        assert_eq!(w.due(RENEW_MS), vec![Arc::clone(&bob)]);
        assert!(w.due(RENEW_MS + 1).is_empty(), "renewed just now");
        assert!(w.unwatch("bob"));
        assert!(!w.unwatch("bob"));
        assert_eq!(w.watch(&bob, 0), OnWatch::Register, "registers again");
    }
}
