//! Handing a cluster slot's data to another node (CLUSTER.md, "Handoff").
//!
//! A session slot of the cluster owns the users whose id hashes to it, and the one-to-one
//! conversations whose smaller user id does. When a slot moves, its old holder reads every row
//! that belongs to those users with [`export_page`] (reader threads) and the new holder writes
//! them with [`Store::handoff_import`](crate::Store::handoff_import) (the writer thread), then
//! both record the slot's **term** (`meta` rows `"slot" ‖ slot u16 BE` → term u64 BE ‖ held u8):
//! only the node holding the slot's current term writes to it.
//!
//! Keys carry no slot prefix, so the export is a full scan of each family filtered by the
//! slot of the user id the key starts with (a slot moves rarely; an index by slot would cost
//! every write). What moves, by family:
//!
//! | family      | rows exported                                   | on import                     |
//! |-------------|-------------------------------------------------|-------------------------------|
//! | `inbox`, `positions`, `recent`, `relations`, `member_of`, `push` | keys starting with a moving user | written as they are |
//! | `dedup`     | `sender ‖ msg id` of a moving sender, or of a one-to-one message to a moving user | merged: each side's inbox seq kept |
//! | `messages`  | one-to-one conversations with a moving user (either side: a user's inbox refers to the rows) | merged: the RECALLED flag kept |
//!
//! Not moved: groups, their members and cursors, rooms and topics (they live at the slot of
//! their own id and are not served across nodes yet), and the `outbox`, whose entries the old
//! holder keeps delivering (an entry for a moved user is refused there and follows the ring).
//!
//! Import is idempotent (puts and merges), so a handoff cut short is simply run again. The
//! writer drops its caches around an import: counters it cached for a moved user or
//! conversation would otherwise be stale.

use std::sync::Arc;

use crate::engine::{Cf, Direction, EngineError, KvEngine, ScanRange};
use crate::keys::KeyReader;
use crate::records::{access, ArchivedDedupRecord, ArchivedMessageRecord};

/// Whether a user id belongs to the slots being handed off.
pub type UserFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One row of a handoff: its family (index in [`Cf::ALL`]), key and value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffRow {
    pub family: u8,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Where an export continues: the family (index in [`EXPORTED`]) and the key to start at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCursor {
    pub family: u8,
    pub start: Vec<u8>,
}

/// A page of an export and where the next one starts (`None`: the export is complete).
#[derive(Debug, Clone, Default)]
pub struct ExportPage {
    pub rows: Vec<HandoffRow>,
    pub next: Option<ExportCursor>,
}

/// A slot's term as this node knows it, and whether this node holds it (writes to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotTerm {
    pub slot: u16,
    pub term: u64,
    pub held: bool,
}

/// The families a handoff moves, in export order.
pub const EXPORTED: [Cf; 8] = [
    Cf::Messages,
    Cf::Inbox,
    Cf::Positions,
    Cf::Dedup,
    Cf::Recent,
    Cf::Relations,
    Cf::MemberOf,
    Cf::Push,
];

/// Rows visited per page at most (a page may hold none of them).
const SCAN_PER_PAGE: usize = 8192;

pub(crate) const SLOT_TERM_PREFIX: &[u8] = b"slot";

/// `meta` key of a slot's term.
pub(crate) fn slot_term_key(slot: u16) -> Vec<u8> {
    let mut k = SLOT_TERM_PREFIX.to_vec();
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

/// `meta` value of a slot's term.
pub(crate) fn slot_term_value(t: &SlotTerm) -> Vec<u8> {
    let mut v = t.term.to_be_bytes().to_vec();
    v.push(u8::from(t.held));
    v
}

/// Whether a row of family `cf` belongs to a moving user (`moving`), and whether it is a row
/// the import merges rather than overwrites. Undecodable keys are not moved.
fn belongs(cf: Cf, key: &[u8], value: &[u8], moving: &dyn Fn(&str) -> bool) -> bool {
    let mut r = KeyReader::new(key);
    match cf {
        Cf::Messages => direct_with_moving(key, moving),
        // A moving user's own dedup rows, and those of messages sent to them: the message rows
        // move with the recipient, and without the dedup row the recipient's half arriving
        // later through the outbox would find the row and be taken for a duplicate (a join
        // under load lost such messages).
        Cf::Dedup => {
            r.id().is_ok_and(moving)
                || access::<ArchivedDedupRecord>(cf, value)
                    .is_ok_and(|d| direct_with_moving(d.conv.as_slice(), moving))
        }
        _ => r.id().is_ok_and(moving),
    }
}

/// Whether `key` starts with a one-to-one conversation (`1 ‖ id(low) ‖ id(high)`) one of whose
/// users moves; only one-to-one conversations move.
fn direct_with_moving(key: &[u8], moving: &dyn Fn(&str) -> bool) -> bool {
    let mut r = KeyReader::new(key);
    if r.u8().ok() != Some(crate::ids::ConvKind::DIRECT.0) {
        return false;
    }
    match (r.id(), r.id()) {
        (Ok(low), Ok(high)) => moving(low) || moving(high),
        _ => false,
    }
}

/// Up to `max_rows` rows (about `max_bytes`) of the moving users' data from `from` on (the
/// start when `None`), in [`EXPORTED`] order then key order. Run on a reader thread.
pub(crate) fn export_page(
    engine: &impl KvEngine,
    moving: &dyn Fn(&str) -> bool,
    from: Option<ExportCursor>,
    max_rows: usize,
    max_bytes: usize,
) -> Result<ExportPage, EngineError> {
    let (mut family, mut start) = match from {
        Some(c) => (usize::from(c.family), c.start),
        None => (0, Vec::new()),
    };
    let mut page = ExportPage::default();
    let mut bytes = 0;
    while family < EXPORTED.len() {
        let cf = EXPORTED[family];
        let mut last: Option<Vec<u8>> = None;
        let mut full = false;
        let visited = engine.scan(
            cf,
            ScanRange {
                start: &start,
                end: None,
            },
            Direction::Forward,
            SCAN_PER_PAGE,
            &mut |k, v| {
                if full {
                    return Ok(());
                }
                last = Some(k.to_vec());
                if belongs(cf, k, v, moving) {
                    bytes += k.len() + v.len();
                    page.rows.push(HandoffRow {
                        family: cf.index() as u8,
                        key: k.to_vec(),
                        value: v.to_vec(),
                    });
                    full = page.rows.len() >= max_rows || bytes >= max_bytes;
                }
                Ok(())
            },
        )?;
        match last {
            // More may follow in this family: continue right after the last key taken.
            Some(mut k) if full || visited >= SCAN_PER_PAGE => {
                k.push(0);
                page.next = Some(ExportCursor {
                    family: family as u8,
                    start: k,
                });
                return Ok(page);
            }
            _ => {
                family += 1;
                start = Vec::new();
            }
        }
    }
    Ok(page)
}

/// Every slot term recorded here.
pub(crate) fn slot_terms(engine: &impl KvEngine) -> Result<Vec<SlotTerm>, EngineError> {
    let mut out = Vec::new();
    let end = crate::keys::prefix_end(SLOT_TERM_PREFIX);
    engine.scan(
        Cf::Meta,
        ScanRange {
            start: SLOT_TERM_PREFIX,
            end: end.as_deref(),
        },
        Direction::Forward,
        usize::MAX,
        &mut |k, v| {
            let rest = &k[SLOT_TERM_PREFIX.len()..];
            if let (Ok(slot), Some(term), Some(&held)) = (
                <[u8; 2]>::try_from(rest),
                v.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                v.get(8),
            ) {
                out.push(SlotTerm {
                    slot: u16::from_be_bytes(slot),
                    term: u64::from_be_bytes(term),
                    held: held != 0,
                });
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// The value to store for an imported row: `Some(value)` to write, `None` to keep what is
/// stored. `stored` is the row's current value here, if any. Message rows keep a RECALLED flag
/// either side set (their content never changes otherwise); dedup rows keep each side's inbox
/// seq (each is assigned by the node serving that side, and a node that served only one side
/// wrote zero for the other).
pub(crate) fn merged(
    cf: Cf,
    incoming: &[u8],
    stored: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, EngineError> {
    let Some(stored) = stored else {
        return Ok(Some(incoming.to_vec()));
    };
    match cf {
        Cf::Messages => {
            let new = access::<ArchivedMessageRecord>(cf, incoming)?;
            let old = access::<ArchivedMessageRecord>(cf, stored)?;
            if new.flags | old.flags == old.flags {
                return Ok(None);
            }
            let rec = crate::records::MessageRecord {
                sender: new.sender.as_str().to_owned(),
                sender_device: new.sender_device.as_str().to_owned(),
                client_msg_id: new.client_msg_id,
                time_ms: new.time_ms.to_native(),
                kind: new.kind,
                flags: new.flags | old.flags,
                body: new.body.as_slice().to_vec(),
            };
            let mut out = Vec::new();
            crate::records::encode(&mut out, &rec)?;
            Ok(Some(out))
        }
        Cf::Dedup => {
            let new = access::<ArchivedDedupRecord>(cf, incoming)?;
            let old = access::<ArchivedDedupRecord>(cf, stored)?;
            let rec = crate::records::DedupRecord {
                conv: new.conv.as_slice().to_vec(),
                conv_seq: new.conv_seq.to_native(),
                sender_inbox_seq: new
                    .sender_inbox_seq
                    .to_native()
                    .max(old.sender_inbox_seq.to_native()),
                recipient_inbox_seq: new
                    .recipient_inbox_seq
                    .to_native()
                    .max(old.recipient_inbox_seq.to_native()),
                time_ms: new.time_ms.to_native(),
            };
            let mut out = Vec::new();
            crate::records::encode(&mut out, &rec)?;
            Ok(Some(out))
        }
        _ => Ok(Some(incoming.to_vec())),
    }
}
