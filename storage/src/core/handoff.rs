//! The writer's side of a slot handoff (module `handoff`): importing another node's rows of
//! the moving users, and recording slot terms.
//!
//! An import runs alone in its batch with nothing in flight: the writer's caches are dropped
//! before it (counters cached for a moved user or conversation would be stale once its rows
//! arrive) and every operation after it waits for its batch to be durable, then reloads what
//! it needs from the engine, rows included.

use crate::engine::{Cf, KvEngine};
use crate::error::OpError;
use crate::handoff::{merged, slot_term_key, slot_term_value, HandoffRow, SlotTerm, EXPORTED};

use super::WriterCore;

impl<E: KvEngine> WriterCore<E> {
    /// Whether an import may go into the open batch: it starts a batch of its own with no
    /// batch in flight (otherwise it waits for a barrier), and nothing follows it there.
    pub(super) fn import_alone(&self) -> bool {
        self.batch.is_empty()
            && self.dirty.is_empty()
            && self.durable + 1 >= self.gen
            && !self.import_in_batch
    }

    /// Writes a handoff's rows (merged with what is stored: `handoff::merged`) and slot terms.
    pub(super) fn import(
        &mut self,
        rows: &[HandoffRow],
        terms: &[SlotTerm],
    ) -> Result<(), OpError> {
        self.reset();
        self.import_in_batch = true;
        for row in rows {
            let cf = Cf::ALL
                .get(usize::from(row.family))
                .copied()
                .filter(|cf| EXPORTED.contains(cf))
                .ok_or(OpError::Invalid(
                    "a handoff row of a family that does not move",
                ))?;
            let value = match cf {
                Cf::Messages | Cf::Dedup => {
                    let stored = self.engine.get_with(cf, &row.key, |v| v.to_vec())?;
                    merged(cf, &row.value, stored.as_deref())?
                }
                _ => Some(row.value.clone()),
            };
            if let Some(v) = value {
                self.batch.put(cf, &row.key, &v);
            }
        }
        for t in terms {
            self.batch
                .put(Cf::Meta, &slot_term_key(t.slot), &slot_term_value(t));
        }
        Ok(())
    }
}
