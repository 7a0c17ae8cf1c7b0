//! Hashed session slots: every user id maps to one of [`SLOTS`] slots by a stable hash, and every
//! slot has an owner — today one of this node's cores, later possibly another node. A user's
//! sessions are registered at the owner of its slot, and delivery to the user goes there.
//!
//! The table is versioned by an epoch (REDIRECT carries it). A single node builds the local
//! table; in a cluster the ring (`cluster::ring`) builds one per membership view and the cluster
//! thread publishes it through [`SharedOwners`], which every core reads per HELLO and routing.

use std::sync::{Arc, RwLock};

use tern_protocol::Transport;

/// Number of slots. Fixed forever: the slot of a user must not change between versions.
pub const SLOTS: u16 = 16_384;

/// One of the [`SLOTS`] session slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub u16);

impl SlotId {
    /// The slot of a user: CRC-32 (IEEE) of the user id's UTF-8 bytes, modulo [`SLOTS`].
    /// CRC-32 is stable across platforms and versions, unlike std's randomised hasher.
    pub fn of_user(user: &str) -> SlotId {
        SlotId((crc32fast::hash(user.as_bytes()) % u32::from(SLOTS)) as u16)
    }
}

/// A core of this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoreId(pub u16);

/// Who serves a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A core of this node.
    Local(CoreId),
    /// Another node (shared by all the slots it owns).
    Remote(Arc<RemoteOwner>),
}

/// Another node of the cluster as a REDIRECT names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOwner {
    /// Its node id.
    pub node: String,
    /// Its client-facing addresses, one per transport, in the order REDIRECT lists them.
    pub addrs: Vec<(Transport, String)>,
}

/// The current owner table, replaced as a whole when the cluster's view changes. Readers take
/// an `Arc` of the table in force, so a request sees one consistent table even if a new one is
/// published meanwhile.
#[derive(Debug)]
pub struct SharedOwners(RwLock<Arc<OwnerTable>>);

impl SharedOwners {
    pub fn new(table: OwnerTable) -> SharedOwners {
        SharedOwners(RwLock::new(Arc::new(table)))
    }

    /// The table in force.
    pub fn load(&self) -> Arc<OwnerTable> {
        // The lock only guards the swap of an `Arc`: a panic while holding it cannot leave a
        // half-written table, so a poisoned lock is still good to read.
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Publishes a new table.
    pub fn store(&self, table: OwnerTable) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }
}

/// The owner of every slot, at one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerTable {
    epoch: u64,
    owners: Vec<Owner>,
}

impl OwnerTable {
    /// Every slot owned by this node, spread over `cores` cores (slot % cores).
    pub fn local(cores: u16) -> OwnerTable {
        let cores = cores.max(1);
        OwnerTable {
            epoch: 1,
            owners: (0..SLOTS)
                .map(|s| Owner::Local(CoreId(s % cores)))
                .collect(),
        }
    }

    /// A table from the owner of every slot, in slot order, at `epoch` (the cluster ring builds
    /// these). `None` unless there is exactly one owner per slot.
    pub fn from_owners(epoch: u64, owners: Vec<Owner>) -> Option<OwnerTable> {
        (owners.len() == usize::from(SLOTS)).then_some(OwnerTable { epoch, owners })
    }

    /// Version of the table: changes with every change of ownership (compare for equality).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The owner of a slot.
    pub fn owner(&self, slot: SlotId) -> &Owner {
        // `owners` always has SLOTS entries and SlotId values are < SLOTS by construction; the
        // modulo keeps a hand-made SlotId from indexing out of bounds.
        &self.owners[usize::from(slot.0 % SLOTS)]
    }

    /// The owner of a user's slot.
    pub fn owner_of_user(&self, user: &str) -> &Owner {
        self.owner(SlotId::of_user(user))
    }

    /// The core of this node that serves `slot` whenever the slot is (or was) local: the
    /// same `slot % cores` rule as [`OwnerTable::local`] and the ring's tables, so a session
    /// registered under one table is found under the next.
    pub fn home_core(slot: SlotId, cores: u16) -> CoreId {
        CoreId(slot.0 % cores.max(1))
    }

    /// How many slots this node owns.
    pub fn local_slots(&self) -> usize {
        self.owners
            .iter()
            .filter(|o| matches!(o, Owner::Local(_)))
            .count()
    }

    /// A copy of the table with `slot` handed to `owner` at the next epoch.
    pub fn with_owner(&self, slot: SlotId, owner: Owner) -> OwnerTable {
        let mut next = self.clone();
        next.owners[usize::from(slot.0 % SLOTS)] = owner;
        next.epoch += 1;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_hash_is_stable() {
        // Pinned values: changing the hash would move every user to another slot.
        assert_eq!(
            SlotId::of_user("alice"),
            SlotId((crc32fast::hash(b"alice") % 16384) as u16)
        );
        assert_eq!(SlotId::of_user(""), SlotId(0));
        for u in ["a", "bob", "carol", "日本"] {
            assert!(SlotId::of_user(u).0 < SLOTS);
        }
    }

    #[test]
    fn local_table_spreads_over_cores_and_can_move_a_slot() {
        let t = OwnerTable::local(3);
        assert_eq!(t.owner(SlotId(0)), &Owner::Local(CoreId(0)));
        assert_eq!(t.owner(SlotId(4)), &Owner::Local(CoreId(1)));
        let moved = t.with_owner(
            SlotId(4),
            Owner::Remote(Arc::new(RemoteOwner {
                node: "n2".into(),
                addrs: vec![(Transport::NATIVE, "10.0.0.2:14000".into())],
            })),
        );
        assert_eq!(moved.epoch(), t.epoch() + 1);
        assert!(matches!(moved.owner(SlotId(4)), Owner::Remote(_)));
        assert_eq!(moved.local_slots(), usize::from(SLOTS) - 1);
        let shared = SharedOwners::new(t.clone());
        let before = shared.load();
        shared.store(moved.clone());
        assert_eq!(*before, t, "a reader keeps the table it loaded");
        assert_eq!(*shared.load(), moved);
        assert_eq!(OwnerTable::home_core(SlotId(4), 3), CoreId(1));
        assert_eq!(
            OwnerTable::local(0).owner(SlotId(7)),
            &Owner::Local(CoreId(0))
        );
    }
}
