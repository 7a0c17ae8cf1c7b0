//! Hashed session slots: every user id maps to one of [`SLOTS`] slots by a stable hash, and every
//! slot has an owner — today one of this node's cores, later possibly another node. A user's
//! sessions are registered at the owner of its slot, and delivery to the user goes there.
//!
//! The table is versioned by an epoch so that a future cluster layer can hand slots to other
//! nodes (REDIRECT carries the epoch); this version only ever builds the local table.

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
    /// Another node, by its advertised native address (reserved for the cluster layer).
    Remote { node: String, addr: String },
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

    /// Version of the table; bumped by every change of ownership.
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
            Owner::Remote {
                node: "n2".into(),
                addr: "10.0.0.2:14000".into(),
            },
        );
        assert_eq!(moved.epoch(), t.epoch() + 1);
        assert!(matches!(moved.owner(SlotId(4)), Owner::Remote { .. }));
        assert_eq!(
            OwnerTable::local(0).owner(SlotId(7)),
            &Owner::Local(CoreId(0))
        );
    }
}
