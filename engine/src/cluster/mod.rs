//! The cluster layer (issue 9; design in `engine/CLUSTER.md`): who is in the cluster
//! ([`membership`], SWIM through the `foca` crate, authenticated with the cluster secret) and
//! which member owns each session slot ([`ring`]). Both are sans-io like the rest of the
//! engine's core: the node's runtime feeds datagrams, due timers and `now` in and sends what
//! comes out, and the deterministic simulator (`sim`, tests only) does the same over a
//! simulated network. [`node`] is that runtime, a thin adapter: the gossip socket and its
//! thread, the owner table it publishes to the cores, REDIRECT, and the refusal of requests
//! that another node must serve. [`route`] decides where a one-to-one message is stored,
//! [`wire`] is the node-to-node link protocol (sans-io) and [`links`] runs it: forwarded
//! SENDs and the durable outbox of cross-node writes; [`forward`] is what a node asks of
//! another for its clients (HISTORY, RECALL, notices to devices there).
//! [`handoff`] moves a slot's data when its owner changes (drain, join). [`presence`] keeps
//! the leases by which a node watches the presence of another node's users.
//! [`quorum`] decides which writes the node may take (quorum, and the fence that keeps an
//! absent node's slots its own); [`fault`] is the `--dev` fault injection the partition
//! tests use.

pub mod admits;
pub mod fault;
pub mod forward;
pub mod handoff;
pub mod links;
pub mod membership;
pub mod node;
pub mod presence;
pub mod quorum;
pub mod ring;
pub mod route;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_route;
pub mod wire;

pub use membership::{
    majority, next_generation, ClientAddr, ClusterSecret, Datagram, Membership, MembershipConfig,
    MembershipError, MembershipEvent, MembershipStats, MembershipTimer, NodeId, NodeIdentity,
    Outputs, ScheduledTimer, SecretError, DEV_CLUSTER_SECRET,
};
pub use ring::{conversation_slot, epoch_of, AssignmentCache, Ring, RingError, RingMember};
