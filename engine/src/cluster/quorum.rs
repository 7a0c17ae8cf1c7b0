//! Which writes a cluster node may take (CLUSTER.md, "Quorum and split brain").
//!
//! Two rules keep a conversation from getting two messages with one sequence:
//!
//! - **Quorum.** A node takes writes only while it sees a majority of the configured cluster
//!   size live ([`Membership::has_quorum`](super::Membership::has_quorum)) *and* heard from
//!   that majority within the quorum lease
//!   ([`heard_from_majority`](super::Membership::heard_from_majority)). The small side of a
//!   partition therefore stops assigning sequences (ERROR `NO_QUORUM`) instead of writing
//!   beside the large side. The gossip thread re-evaluates it at least every 200 ms (the lease
//!   runs out by time alone) and publishes it here.
//! - **The fence.** Without handoff or replicas, a slot's data lives only on the node that
//!   owned it. When that node goes away (failure, partition, leave), the ring gives its slots
//!   to the others, who hold none of that data: assigning sequences there would start a
//!   conversation again at 1. So writes follow the *home* table: the ring over the live
//!   members plus those that went away ([`Absent`]), in which the absent node still owns its
//!   slots; a write that needs one of them is refused with `UNAVAILABLE` (or, for an outbox
//!   entry, waits) until that node is back. HELLO and REDIRECT keep following the live ring.
//!
//! Everything here is sans-io: the gossip thread feeds the events and the clock; the cores
//! read the published state. A node without `--cluster` installs nothing and every write is
//! allowed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tern_protocol::{ErrorCode, Frame};

use super::membership::{Membership, MembershipEvent, NodeId};
use super::ring::{AssignmentCache, Ring, RingMember};
use crate::metrics::{set, METRICS};
use crate::server::NodeShared;
use crate::session::{Plan, SessionInfo};
use crate::slots::{OwnerTable, SharedOwners};

/// The members that went away (declared down or left) and have not come back, as the ring
/// knew them. Their slots stay theirs for writes: their data is on them.
#[derive(Debug, Default, Clone)]
pub struct Absent {
    members: BTreeMap<NodeId, RingMember>,
}

impl Absent {
    /// Follows one membership event. A member that comes back under a new generation (or a
    /// new address) is present again.
    pub fn observe(&mut self, event: &MembershipEvent, me: &NodeId) {
        match event {
            MembershipEvent::MemberDown(id) if id.id != *me && !id.draining => {
                self.members.insert(id.id.clone(), id.ring_member());
            }
            MembershipEvent::MemberUp(id) => {
                self.members.remove(&id.id);
            }
            MembershipEvent::MemberRenewed { new, .. } => {
                self.members.remove(&new.id);
            }
            _ => {}
        }
    }

    /// Drops the members that are live again (under any identity): an old identity declared
    /// down after its successor came up does not make the node absent.
    pub fn retain_absent(&mut self, live: &[NodeId]) {
        self.members.retain(|id, _| !live.contains(id));
    }

    /// How many distinct members the home ring over `live` holds: the live ones and the
    /// absent ones.
    pub fn known(&self, live: &[RingMember]) -> usize {
        let mut ids: std::collections::BTreeSet<&NodeId> = live.iter().map(|m| &m.id).collect();
        ids.extend(self.members.keys());
        ids.len()
    }

    /// The absent members' ids.
    pub fn ids(&self) -> Vec<String> {
        self.members.keys().map(|id| id.to_string()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The home ring: `live` (the ring's input of the current view) plus the absent members
    /// that are not live again under another identity (`cache`: assignments of member sets
    /// seen before).
    pub fn home_ring(&self, live: &[RingMember], cache: &mut AssignmentCache) -> Ring {
        let mut all: Vec<RingMember> = live.to_vec();
        for (id, m) in &self.members {
            if !live.iter().any(|l| l.id == *id) {
                all.push(m.clone());
            }
        }
        Ring::with_cache(all, cache)
    }
}

/// Whether a node takes writes now: it sees a majority of the configured `size` live, heard
/// from such a majority within the quorum lease, and knows `size` members — live, or absent
/// since it saw them (evaluated by the gossip thread on every pass, and by the simulator).
///
/// The last rule is the fence's: a member this process has not seen since it started is not
/// in its absent set, so the ring it writes by would give that member's slots to others. A
/// node that restarted (the absent set is in memory) or a cluster still forming therefore
/// writes only once every configured member has been seen; the simulator found the case of a
/// restarted node that reached a majority before it heard of the third node and assigned
/// sequences in that node's conversations.
pub fn writable(m: &Membership, absent: &Absent, size: usize, now_ms: u64) -> bool {
    // Draining members are live and known, though outside the ring.
    let live: Vec<RingMember> = m
        .live_members()
        .iter()
        .map(super::NodeIdentity::ring_member)
        .collect();
    m.has_quorum(size) && m.heard_from_majority(size, now_ms) && absent.known(&live) >= size
}

/// The table writes follow: the home ring's owner table of node `me` (its own slots local,
/// an absent node's slots remote to that node; every slot remote while `me` drains).
pub fn write_table(
    live: &[RingMember],
    absent: &Absent,
    me: &NodeId,
    cores: u16,
    cache: &mut AssignmentCache,
) -> Option<OwnerTable> {
    absent.home_ring(live, cache).owner_table_of(me, cores).ok()
}

/// What the gossip thread publishes for the cores.
#[derive(Debug)]
pub struct Gate {
    writable: AtomicBool,
    /// The table writes follow (`write_table`).
    writes: SharedOwners,
    /// Why there is no quorum, for the ERROR message.
    size: usize,
}

static GATE: OnceLock<Gate> = OnceLock::new();

/// Installs the gate of a cluster node (once per process, before the cores start): no quorum
/// until the gossip thread has seen one.
pub fn install(configured_size: usize, table: OwnerTable) -> bool {
    set(&METRICS.cluster_quorum, 0);
    GATE.set(Gate {
        writable: AtomicBool::new(false),
        writes: SharedOwners::new(table),
        size: configured_size,
    })
    .is_ok()
}

/// Publishes the quorum state (the gossip thread, at least every 200 ms).
pub fn publish_quorum(quorum: bool) {
    if let Some(g) = GATE.get() {
        if g.writable.swap(quorum, Ordering::SeqCst) != quorum {
            set(&METRICS.cluster_quorum, u64::from(quorum));
            if quorum {
                tracing::info!("cluster: quorum regained; writes accepted");
            } else {
                tracing::warn!(
                    "cluster: no quorum (fewer than {} of {} members reachable); writes refused",
                    super::majority(g.size),
                    g.size
                );
            }
        }
    }
}

/// Publishes the table writes follow.
pub fn publish_write_table(table: OwnerTable) {
    if let Some(g) = GATE.get() {
        g.writes.store(table);
    }
}

/// Whether this node takes writes now (always without a cluster).
pub fn has_quorum() -> bool {
    GATE.get().is_none_or(|g| g.writable.load(Ordering::SeqCst))
}

/// The table writes follow: the fenced home table in a cluster, the node's owner table
/// otherwise.
pub fn writes_table(node: &NodeShared) -> Arc<OwnerTable> {
    match GATE.get() {
        Some(g) => g.writes.load(),
        None => node.owners.load(),
    }
}

/// Whether a request writes (assigns a sequence, changes stored or shared state). Reads, the
/// device's own delivery positions (SYNC, PUSH_ACK) and ephemeral traffic are not writes: a
/// node cut off from the majority still lets its users read what it holds. Every kind is
/// listed; one added later is a write until it is classified.
pub fn writes(plan: &Plan) -> bool {
    match plan {
        Plan::Append { .. }
        | Plan::Read { .. }
        | Plan::Recall { .. }
        | Plan::PushToken { .. }
        | Plan::Mute { .. }
        | Plan::Relate { .. }
        | Plan::FriendsOnly { .. } => true,
        Plan::Group(g) => !matches!(
            **g,
            crate::groups::GroupPlan::History { .. }
                | crate::groups::GroupPlan::List { .. }
                | crate::groups::GroupPlan::Get { .. }
                | crate::groups::GroupPlan::Receipts { .. }
        ),
        Plan::Reply(_)
        | Plan::Unexpected
        | Plan::Ignore
        | Plan::PushAck { .. }
        | Plan::Sync { .. }
        | Plan::History { .. }
        | Plan::Contacts { .. }
        | Plan::Typing { .. }
        | Plan::SetPresence { .. }
        | Plan::Subscribe { .. }
        | Plan::RoomJoin { .. }
        | Plan::RoomLeave { .. }
        | Plan::RelationList { .. } => false,
        // A room keeps its recent messages in memory only, on the one node its name is
        // placed at: nothing durable to diverge, like TYPING.
        Plan::RoomSend { .. } => false,
        // A kind of request added without being classified here counts as a write: refused
        // without quorum, which is safe (unreachable while every kind is listed above).
        #[allow(unreachable_patterns)]
        _ => true,
    }
}

/// The ERROR for a write this node must not take now: `NO_QUORUM` without quorum,
/// `UNAVAILABLE` when the write needs a slot whose data is on an absent node (checked after
/// `node::remote_refusal` with the live table, so a refusal here is the fence's).
pub fn refusal(request_id: u32, info: &SessionInfo, plan: &Plan) -> Option<Frame<'static>> {
    let gate = GATE.get()?;
    if !writes(plan) {
        // Reads of a slot whose data is still on its way here (handoff) wait for it too: an
        // empty answer now would look like a gap.
        let table = gate.writes.load();
        if super::handoff::is_moving(table.owner_of_user(info.user.as_str())) {
            return super::node::remote_refusal(&table, info, plan)
                .map(|why| crate::session::error(request_id, ErrorCode::UNAVAILABLE, why));
        }
        return None;
    }
    if !gate.writable.load(Ordering::SeqCst) {
        return Some(no_quorum(request_id, gate.size));
    }
    let table = gate.writes.load();
    super::node::remote_refusal(&table, info, plan).map(|why| {
        crate::session::error(
            request_id,
            ErrorCode::UNAVAILABLE,
            format!("{why} (the node that holds this data is not reachable now)"),
        )
    })
}

/// The ERROR `NO_QUORUM`.
pub fn no_quorum(request_id: u32, size: usize) -> Frame<'static> {
    crate::session::error(
        request_id,
        ErrorCode::NO_QUORUM,
        format!(
            "this node reaches fewer than {} of the cluster's {size} nodes; it takes no writes until it does, retry later",
            super::majority(size)
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cluster::membership::NodeIdentity;
    use crate::slots::{Owner, SlotId, SLOTS};

    fn member(id: &str, generation: u64) -> NodeIdentity {
        NodeIdentity::new(
            NodeId::new(id).unwrap(),
            generation,
            format!("10.0.0.{}:7946", id.len()).parse().unwrap(),
            Vec::new(),
        )
        .unwrap()
    }

    #[test]
    fn an_absent_nodes_slots_stay_its_own_for_writes_until_it_returns() {
        let (a, b, c) = (member("a", 1), member("bb", 1), member("ccc", 1));
        let me = a.id.clone();
        let all: Vec<RingMember> = [&a, &b, &c].iter().map(|m| m.ring_member()).collect();
        let full = Ring::new(all.clone());
        let mut absent = Absent::default();
        absent.observe(&MembershipEvent::MemberDown(c.clone()), &me);
        // c is gone from the view: the live ring gives its slots to a and bb …
        let live: Vec<RingMember> = all[..2].to_vec();
        let live_table = Ring::new(live.clone()).owner_table(&me, 2).unwrap();
        // … but writes keep them at c, and every other slot where the full ring had it.
        let writes = write_table(&live, &absent, &me, 2, &mut AssignmentCache::default()).unwrap();
        let full_table = full.owner_table(&me, 2).unwrap();
        assert_eq!(writes, full_table);
        let c_slots = (0..SLOTS)
            .filter(|s| full.owner(SlotId(*s)).unwrap().id == c.id)
            .count();
        assert!(c_slots > 4_000);
        let fenced = (0..SLOTS)
            .filter(|s| {
                matches!(writes.owner(SlotId(*s)), Owner::Remote(o) if o.node == "ccc")
                    && !matches!(live_table.owner(SlotId(*s)), Owner::Remote(o) if o.node == "ccc")
            })
            .count();
        assert_eq!(fenced, c_slots);
        // c returns under a new generation: nothing is fenced any more.
        absent.observe(&MembershipEvent::MemberUp(member("ccc", 2)), &me);
        assert!(absent.is_empty());
        let back: Vec<RingMember> = vec![
            a.ring_member(),
            b.ring_member(),
            member("ccc", 2).ring_member(),
        ];
        let writes = write_table(&back, &absent, &me, 2, &mut AssignmentCache::default()).unwrap();
        assert_eq!(writes, Ring::new(back).owner_table(&me, 2).unwrap());
        // This node's own down event (an old identity of itself) fences nothing.
        absent.observe(&MembershipEvent::MemberDown(member("a", 1)), &me);
        assert!(absent.is_empty());
    }

    #[test]
    fn reads_and_positions_are_not_writes() {
        let info = SessionInfo {
            user: tern_storage::UserId::new("alice").unwrap(),
            device: tern_storage::DeviceId::new("phone").unwrap(),
            session_id: 1,
        };
        let limits = crate::session::Limits::default();
        let send = Frame::new(
            1,
            tern_protocol::Body::Send(tern_protocol::Send {
                to: tern_protocol::Conv::direct("bob".to_owned()),
                msg_id: tern_protocol::MsgId([7; 16]),
                kind: tern_protocol::MessageKind::TEXT,
                body: b"hi".to_vec().into(),
            }),
        );
        assert!(writes(&crate::session::plan(&info, &send, &limits)));
        let sync = Frame::new(
            2,
            tern_protocol::Body::Sync(tern_protocol::Sync {
                after_inbox_seq: 0,
                limit: 10,
            }),
        );
        assert!(!writes(&crate::session::plan(&info, &sync, &limits)));
        assert!(!writes(&Plan::Ignore));
        let f = no_quorum(9, 5);
        match f.body {
            tern_protocol::Body::Error(e) => {
                assert_eq!(e.code, ErrorCode::NO_QUORUM);
                assert!(!e.code.closes_connection());
                assert!(e.message.contains("3 of the cluster's 5"));
            }
            other => panic!("{other:?}"),
        }
    }
}
