//! A core's table of its connections' shared parts, by connection id.
//!
//! A slab rather than a hash map: ids are handed out here, so they can index a vector directly.
//! An entry costs 10 bytes where a `HashMap<u32, Rc<_>>` costs 17 and, right after it doubles,
//! twice that; the table is also walked by every timer sweep, which a vector does in order.
//! An id is a slot number plus the slot's generation, which changes each time the slot is
//! freed, so a message still addressed to a closed connection finds nothing instead of its
//! slot's next occupant; free slots are reused oldest first for the same reason.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::server::ConnShared;

/// Bits of an id that number the slot: 4,194,304 connections per core, more than a process
/// may have sockets open (`nr_open` defaults to 1,048,576).
const SLOT_BITS: u32 = 22;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// Generations run from 1, so that no id is 0.
const MAX_GEN: u16 = ((1u32 << (32 - SLOT_BITS)) - 1) as u16;

#[derive(Debug, Default)]
pub struct ConnTable {
    slots: Vec<Option<Rc<ConnShared>>>,
    gens: Vec<u16>,
    free: VecDeque<u32>,
    len: usize,
}

impl ConnTable {
    /// Reserves a slot and returns the id of the connection that will fill it (see
    /// [`insert`](Self::insert)); `None` when every slot is taken.
    pub fn alloc_id(&mut self) -> Option<u32> {
        let slot = match self.free.pop_front() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|s| *s <= SLOT_MASK)?;
                self.slots.push(None);
                self.gens.push(1);
                slot
            }
        };
        Some(u32::from(self.gens[slot as usize]) << SLOT_BITS | slot)
    }

    /// The slot of `id` if `id` is its current generation.
    fn slot(&self, id: u32) -> Option<usize> {
        let slot = (id & SLOT_MASK) as usize;
        (self.gens.get(slot).map(|g| u32::from(*g)) == Some(id >> SLOT_BITS)).then_some(slot)
    }

    /// Puts connection `id` (from [`alloc_id`](Self::alloc_id)) in its slot.
    pub fn insert(&mut self, id: u32, shared: Rc<ConnShared>) {
        if let Some(slot) = self.slot(id) {
            if self.slots[slot].replace(shared).is_none() {
                self.len += 1;
            }
        }
    }

    /// Frees connection `id`'s slot, which then gets a new generation.
    pub fn remove(&mut self, id: u32) -> Option<Rc<ConnShared>> {
        let slot = self.slot(id)?;
        let shared = self.slots[slot].take();
        if shared.is_some() {
            self.len -= 1;
        }
        let gen = self.gens[slot];
        self.gens[slot] = if gen >= MAX_GEN { 1 } else { gen + 1 };
        self.free.push_back(slot as u32);
        shared
    }

    pub fn get(&self, id: u32) -> Option<&Rc<ConnShared>> {
        self.slots[self.slot(id)?].as_ref()
    }

    pub fn values(&self) -> impl Iterator<Item = &Rc<ConnShared>> {
        self.slots.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_find_their_connection_and_no_later_one() {
        let mut t = ConnTable::default();
        let a = t.alloc_id().unwrap();
        let b = t.alloc_id().unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
        let sa = Rc::new(ConnShared::default());
        t.insert(a, Rc::clone(&sa));
        t.insert(b, Rc::new(ConnShared::default()));
        assert_eq!(t.len(), 2);
        assert!(Rc::ptr_eq(t.get(a).unwrap(), &sa));
        assert!(t.remove(a).is_some());
        assert!(t.get(a).is_none());
        assert!(t.remove(a).is_none(), "a stale id frees nothing");
        assert_eq!(t.len(), 1);
        // The freed slot comes back with another generation: the old id still finds nothing.
        let c = t.alloc_id().unwrap();
        assert_eq!(c & SLOT_MASK, a & SLOT_MASK);
        assert_ne!(c, a);
        t.insert(c, Rc::new(ConnShared::default()));
        assert!(t.get(a).is_none());
        assert!(t.get(c).is_some());
        assert_eq!(t.values().count(), 2);
    }

    #[test]
    fn freed_slots_are_reused_oldest_first_and_generations_wrap_past_zero() {
        let mut t = ConnTable::default();
        let ids: Vec<u32> = (0..3).map(|_| t.alloc_id().unwrap()).collect();
        t.remove(ids[2]);
        t.remove(ids[0]);
        assert_eq!(t.alloc_id().unwrap() & SLOT_MASK, ids[2] & SLOT_MASK);
        assert_eq!(t.alloc_id().unwrap() & SLOT_MASK, ids[0] & SLOT_MASK);
        let mut id = t.alloc_id().unwrap();
        for _ in 0..(2 * u32::from(MAX_GEN)) {
            t.remove(id);
            id = t.alloc_id().unwrap();
            assert_ne!(id, 0);
            assert_ne!(id >> SLOT_BITS, 0);
        }
    }
}
