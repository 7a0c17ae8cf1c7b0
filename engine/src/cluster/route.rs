//! Where a one-to-one SEND is stored in a cluster (CLUSTER.md, "Who assigns sequences").
//!
//! The conversation's sequences are assigned by the node that owns the conversation's slot
//! (the slot of the smaller user id, [`conversation_slot`]), so for two users of different
//! nodes:
//! - the sender's node owns the conversation: it stores the message and its sender's half, and
//!   the recipient's half goes through the durable outbox to the recipient's node
//!   ([`Placement::Routed`]);
//! - the recipient's node owns it: the sender's node forwards the SEND over the link, the
//!   recipient's node stores it (with the recipient's half) and puts the sender's half in its
//!   outbox; the sender's node applies that half itself as soon as the answer comes (the
//!   outbox copy then finds it applied) and only then answers SEND_ACK ([`Placement::Forward`]).
//!
//! [`place`] is the decision (pure); [`submit_direct`] carries it out and returns a
//! [`Completion`] awaited like any local append, so the connection code does not change.
//! [`take_forward`], [`take_write`] and [`follow`] are the decisions of the other end and of
//! the outbox (pure too): the link core (`links.rs`) and the simulator (`sim_route.rs`) both
//! run them.

use std::sync::Arc;

use tern_storage::{
    AppendResult, Completion, ConvKey, DirectMessage, DirectPair, RemoteWrite, SubmitError,
};

use super::ring::conversation_slot;
use crate::server::NodeShared;
use crate::slots::{Owner, OwnerTable};

/// Where a one-to-one message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Both users (and so the conversation) are served here.
    Local,
    /// The conversation is served here, the recipient by node `dest`.
    Routed { dest: String },
    /// The conversation (and the recipient) are served by node `to`.
    Forward { to: String },
}

/// Where `msg` (from a user served here) is stored under `table`.
pub fn place(table: &OwnerTable, msg: &DirectMessage) -> Placement {
    let conv = ConvKey::Direct(DirectPair::new(msg.sender.clone(), msg.recipient.clone()));
    match table.owner(conversation_slot(&conv)) {
        Owner::Remote(o) => Placement::Forward { to: o.node.clone() },
        Owner::Local(_) => match table.owner_of_user(msg.recipient.as_str()) {
            Owner::Local(_) => Placement::Local,
            Owner::Remote(o) => Placement::Routed {
                dest: o.node.clone(),
            },
        },
    }
}

/// Why a node does not take a request of another node now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotHere {
    /// This node has no quorum: it assigns no sequence and applies nothing.
    NoQuorum,
    /// Under the table writes follow, this node serves the conversation or user.
    ServedBy(String),
}

/// Whether this node assigns the sequence of a SEND another node forwarded to it: only with
/// quorum (`quorum`), and only if it owns the conversation's slot in `table`, the fenced table
/// writes follow.
pub fn take_forward(quorum: bool, table: &OwnerTable, msg: &DirectMessage) -> Result<(), NotHere> {
    if !quorum {
        return Err(NotHere::NoQuorum);
    }
    let conv = ConvKey::Direct(DirectPair::new(msg.sender.clone(), msg.recipient.clone()));
    match table.owner(conversation_slot(&conv)) {
        Owner::Remote(o) => Err(NotHere::ServedBy(o.node.clone())),
        Owner::Local(_) => Ok(()),
    }
}

/// Whether this node applies an outbox entry another node sent it: only with quorum, and only
/// if it serves the entry's user in `table` (the fenced table: it holds the user's data).
/// Otherwise the entry stays in its sender's outbox.
pub fn take_write(quorum: bool, table: &OwnerTable, write: &RemoteWrite) -> Result<(), NotHere> {
    if !quorum {
        return Err(NotHere::NoQuorum);
    }
    match table.owner_of_user(write.user().as_str()) {
        Owner::Remote(o) => Err(NotHere::ServedBy(o.node.clone())),
        Owner::Local(_) => Ok(()),
    }
}

/// Where an outbox entry that node `target` did not apply goes next: the node `table` (the
/// fenced table) names for its user, if that is another node; never this node, which does
/// not hold the user's data. `None`: it stays with `target`.
pub fn follow(table: &OwnerTable, write: &RemoteWrite, target: &str) -> Option<String> {
    match table.owner_of_user(write.user().as_str()) {
        Owner::Remote(o) if o.node != target => Some(o.node.clone()),
        _ => None,
    }
}

/// Stores a one-to-one message of a session of this node wherever it belongs; the completion
/// resolves once it is durable on the node that assigned its sequence (and the sender's half
/// is durable here).
pub fn submit_direct(
    node: &NodeShared,
    msg: DirectMessage,
) -> Result<Completion<AppendResult>, SubmitError> {
    let Some(links) = super::links::installed() else {
        return node.store.append_direct(msg);
    };
    // Writes follow the fenced table: a slot whose node went away stays that node's.
    match place(&super::quorum::writes_table(node), &msg) {
        Placement::Local => node.store.append_direct(msg),
        // The recipient's "friends only" setting is asked of their node first (`admits`).
        Placement::Routed { dest } => Ok(super::admits::append_routed(node, links, msg, dest)),
        Placement::Forward { to } => Ok(Arc::clone(links).forward(to, msg)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::slots::{RemoteOwner, SlotId};
    use tern_protocol::Transport;
    use tern_storage::{ClientMsgId, DeviceId, MessageKind, UserId};

    fn msg(from: &str, to: &str) -> DirectMessage {
        DirectMessage {
            sender: UserId::new(from).unwrap(),
            sender_device: DeviceId::new("phone").unwrap(),
            recipient: UserId::new(to).unwrap(),
            client_msg_id: ClientMsgId([1; 16]),
            kind: MessageKind::TEXT,
            body: b"hi".to_vec(),
        }
    }

    #[test]
    fn the_owner_of_the_smaller_user_id_assigns_the_sequence() {
        let remote = Owner::Remote(Arc::new(RemoteOwner {
            node: "node-b".into(),
            addrs: vec![(Transport::NATIVE, "10.0.0.2:14000".into())],
        }));
        // "bob" is served by node-b, "alice" and "carol" here.
        let table = OwnerTable::local(2).with_owner(SlotId::of_user("bob"), remote);
        assert_eq!(place(&table, &msg("alice", "carol")), Placement::Local);
        // alice < bob: the conversation is alice's, so here; bob's half is routed.
        assert_eq!(
            place(&table, &msg("alice", "bob")),
            Placement::Routed {
                dest: "node-b".into()
            }
        );
        // bob < carol: the conversation is bob's, so node-b assigns the sequence.
        assert_eq!(
            place(&table, &msg("carol", "bob")),
            Placement::Forward {
                to: "node-b".into()
            }
        );
    }
}
