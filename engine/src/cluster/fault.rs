//! Network fault injection for tests of a real cluster on one machine (CLUSTER.md, "How the
//! tests partition a cluster").
//!
//! Processes on loopback cannot be partitioned from outside without root (network namespaces,
//! packet filters), so a node run with `--dev` can cut itself off from chosen peers: the admin
//! API's `POST /cluster/partition?block=ID1,ID2` makes it drop every gossip datagram from and
//! to those nodes' cluster addresses (in the gossip thread's socket loop) and every
//! node-to-node link with them (no dial, accepted connections closed, live ones broken);
//! `DELETE /cluster/partition` heals. Applying the same cut on both sides of a partition gives
//! what a switch failure would: each side sees the other as silent. Without `--dev` the
//! endpoint does not exist and none of this can be switched on.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Set while any peer is blocked: the per-datagram check is one load when none is.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static BLOCKED: RwLock<Blocked> = RwLock::new(Blocked {
    ids: BTreeSet::new(),
    addrs: BTreeSet::new(),
});

#[derive(Debug)]
struct Blocked {
    ids: BTreeSet<String>,
    addrs: BTreeSet<SocketAddr>,
}

/// Allows fault injection (a `--dev` node).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// Blocks the nodes `ids` (whose cluster addresses are `addrs`) in both directions, in
/// addition to any already blocked. Refused unless enabled.
pub fn block(ids: &[String], addrs: &[SocketAddr]) -> bool {
    if !enabled() {
        return false;
    }
    let mut b = BLOCKED.write().unwrap_or_else(|e| e.into_inner());
    b.ids.extend(ids.iter().cloned());
    b.addrs.extend(addrs.iter().copied());
    ACTIVE.store(!b.ids.is_empty() || !b.addrs.is_empty(), Ordering::SeqCst);
    true
}

/// Lifts every block.
pub fn heal() {
    let mut b = BLOCKED.write().unwrap_or_else(|e| e.into_inner());
    b.ids.clear();
    b.addrs.clear();
    ACTIVE.store(false, Ordering::SeqCst);
}

/// Whether gossip to or from `addr` is dropped.
pub fn blocks_addr(addr: &SocketAddr) -> bool {
    ACTIVE.load(Ordering::Relaxed)
        && BLOCKED
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .addrs
            .contains(addr)
}

/// Whether links with node `id` are cut.
pub fn blocks_node(id: &str) -> bool {
    ACTIVE.load(Ordering::Relaxed)
        && BLOCKED
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .contains(id)
}

/// The blocked node ids (for the admin API).
pub fn blocked_ids() -> Vec<String> {
    BLOCKED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .ids
        .iter()
        .cloned()
        .collect()
}
