//! The in-memory engine: one `BTreeMap` per column family behind a single lock, for tests, the
//! simulator and the conformance suite. Clones share the same data, which is how a test
//! "restarts" a store on it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::engine::{
    BatchEntry, Cf, Direction, EngineError, KvEngine, ScanRange, TimeOf, Visitor, WriteBatch,
};

type Family = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
struct Inner {
    // One lock over every family: a batch spans families and must become visible at once.
    families: RwLock<[Family; Cf::COUNT]>,
    expiry: Mutex<[Option<(TimeOf, u64)>; Cf::COUNT]>,
}

/// In-memory [`KvEngine`]. Nothing survives the process; `sync` is ignored.
#[derive(Clone, Default)]
pub struct MemEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let families = self.inner.families.read();
        let mut d = f.debug_struct("MemEngine");
        for cf in Cf::ALL {
            d.field(cf.name(), &families[cf.index()].len());
        }
        d.finish()
    }
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvEngine for MemEngine {
    fn get_with<R>(
        &self,
        cf: Cf,
        key: &[u8],
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, EngineError> {
        let families = self.inner.families.read();
        Ok(families[cf.index()].get(key).map(|v| visit(v)))
    }

    fn scan(
        &self,
        cf: Cf,
        range: ScanRange<'_>,
        direction: Direction,
        limit: usize,
        visit: &mut Visitor<'_>,
    ) -> Result<usize, EngineError> {
        if limit == 0 || range.is_empty() {
            return Ok(0);
        }
        let families = self.inner.families.read();
        let bounds = (
            Bound::Included(range.start),
            range.end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        let iter = families[cf.index()].range::<[u8], _>(bounds);
        let mut n = 0;
        let mut step = |(k, v): (&Vec<u8>, &Vec<u8>)| -> Result<bool, EngineError> {
            visit(k, v)?;
            n += 1;
            Ok(n < limit)
        };
        match direction {
            Direction::Forward => {
                for entry in iter {
                    if !step(entry)? {
                        break;
                    }
                }
            }
            Direction::Backward => {
                for entry in iter.rev() {
                    if !step(entry)? {
                        break;
                    }
                }
            }
        }
        Ok(n)
    }

    fn write(&self, batch: &WriteBatch, _sync: bool) -> Result<(), EngineError> {
        let mut families = self.inner.families.write();
        for entry in batch.iter() {
            match entry {
                BatchEntry::Put { cf, key, value } => {
                    families[cf.index()].insert(key.to_vec(), value.to_vec());
                }
                BatchEntry::Delete { cf, key } => {
                    families[cf.index()].remove(key);
                }
            }
        }
        Ok(())
    }

    fn set_expiry(&self, cf: Cf, time_of: TimeOf, cutoff_ms: u64) {
        let mut expiry = self.inner.expiry.lock();
        let slot = &mut expiry[cf.index()];
        let cutoff = slot.map_or(cutoff_ms, |(_, old)| old.max(cutoff_ms));
        *slot = Some((time_of, cutoff));
    }

    fn expire_now(&self, cf: Cf) -> Result<(), EngineError> {
        let Some((time_of, cutoff)) = self.inner.expiry.lock()[cf.index()] else {
            return Ok(());
        };
        let mut families = self.inner.families.write();
        families[cf.index()].retain(|k, v| time_of(k, v).is_none_or(|t| t >= cutoff));
        Ok(())
    }

    fn flush(&self) -> Result<(), EngineError> {
        Ok(())
    }
}
