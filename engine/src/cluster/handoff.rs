//! Handoff of session slots between nodes (CLUSTER.md, "Handoff by epoch fencing and per-slot
//! terms").
//!
//! Each node records, per slot, a **term** and whether it **holds** the slot (storage's
//! `SlotTerm` rows): only the holder writes to a slot. The ring says who *should* hold each
//! slot; when that changes (a node drains with `POST /cluster/drain`, or joins), the holder
//! hands the slot's data to the new owner:
//!
//! 1. the holder's write table already names the new owner, so it refuses writes for the slot
//!    (`UNAVAILABLE`, the SDK retries; outbox entries for its users are refused and follow the
//!    ring); it waits [`GRACE`] and puts a barrier through its writer, so every write it took
//!    before is durable;
//! 2. it exports the slot's rows (storage's `handoff_export`) and sends them in batches
//!    ([`Call::HandoffRows`](super::forward::Call::HandoffRows)); the new owner writes them
//!    through its store's writer thread;
//! 3. it records the slot as not held (term t), then sends `HandoffDone` with term t + 1; the
//!    new owner, if its ring gives it the slots, records them held at t + 1 (durable) and
//!    answers; from then on it takes writes for them;
//! 4. the old holder closes the slot's client sessions with CLOSE `REDIRECT`; they reconnect,
//!    are redirected to the new owner and SYNC from their last position there.
//!
//! Until a node holds a slot its ring gives it, its write table names [`MOVING`] as the
//! slot's owner: writes and the session user's own reads are refused (`UNAVAILABLE`), a
//! forwarded SEND or an outbox entry is refused and retried. So two nodes never write one
//! slot: the old holder stops before it exports, the new one starts after the import.
//!
//! A fresh node (no slot terms recorded) asks every live member which slots it holds and
//! takes, at term 1, those of its ring's slots that no one holds: all of them when a cluster
//! forms, none when it joins a running cluster (they come by handoff).
//!
//! The decisions are [`Holdings`] (plain data, unit-tested); [`drive`] runs them on the link
//! core and the store does the work on its threads.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tern_protocol::ErrorCode;
use tern_storage::{ExportCursor, HandoffRow, OpError, SlotTerm, UserFilter};
use tracing::{info, warn};

use super::forward::{refusal, refused, submit_error, Answering, Call, Done, Reply};
use super::links::Links;
use crate::metrics::{set, METRICS};
use crate::server::{CoreMsg, NodeShared, NodeStore};
use crate::slots::{Owner, OwnerTable, RemoteOwner, SlotId, SLOTS};

/// The owner a write table names for a slot whose data is on its way to this node (never a
/// node id: those are `A-Za-z0-9._-`).
pub const MOVING: &str = "(slot moving here)";

/// How long the old holder waits after its table changed before it exports: requests that
/// passed the previous table on some core reach the writer within it.
pub const GRACE: Duration = Duration::from_millis(300);

/// Rows per `HandoffRows` call, and bytes.
const ROWS_PER_CALL: usize = 2048;
const BYTES_PER_CALL: usize = 512 * 1024;

/// How often the driver looks for work.
const TICK: Duration = Duration::from_millis(250);

/// Whether a write table's owner is [`MOVING`].
pub fn is_moving(owner: &Owner) -> bool {
    matches!(owner, Owner::Remote(o) if o.node == MOVING)
}

fn moving_owner() -> Arc<RemoteOwner> {
    static OWNER: OnceLock<Arc<RemoteOwner>> = OnceLock::new();
    Arc::clone(OWNER.get_or_init(|| {
        Arc::new(RemoteOwner {
            node: MOVING.to_owned(),
            addrs: Vec::new(),
        })
    }))
}

// ---------------------------------------------------------------------------------------------
// The decisions (sans-io)
// ---------------------------------------------------------------------------------------------

/// The slots this node holds, and their terms.
#[derive(Debug, Clone)]
pub struct Holdings {
    /// (term, held) per slot.
    terms: Vec<(u64, bool)>,
    /// Slot terms have been recorded (a fresh node has none until it asked the others).
    initialized: bool,
}

impl Holdings {
    /// The holdings recorded in the store.
    pub fn from_terms(terms: &[SlotTerm]) -> Holdings {
        let mut h = Holdings {
            terms: vec![(0, false); usize::from(SLOTS)],
            initialized: false,
        };
        h.apply(terms);
        h.initialized = !terms.is_empty();
        h
    }

    pub fn initialized(&self) -> bool {
        self.initialized
    }

    pub fn holds(&self, slot: u16) -> bool {
        self.terms.get(usize::from(slot)).is_some_and(|t| t.1)
    }

    pub fn term(&self, slot: u16) -> u64 {
        self.terms.get(usize::from(slot)).map_or(0, |t| t.0)
    }

    pub fn held_slots(&self) -> Vec<u16> {
        (0..SLOTS).filter(|s| self.holds(*s)).collect()
    }

    /// Records terms (made durable by the caller first).
    pub fn apply(&mut self, terms: &[SlotTerm]) {
        for t in terms {
            if let Some(e) = self.terms.get_mut(usize::from(t.slot)) {
                *e = (t.term, t.held);
            }
        }
        self.initialized = true;
    }

    /// The table writes follow: `home` (the fenced ring table) with every local slot this node
    /// does not hold (yet) owned by [`MOVING`]; all of them before initialization.
    pub fn overlay(&self, home: &OwnerTable) -> OwnerTable {
        let moving = moving_owner();
        let owners = (0..SLOTS)
            .map(|s| match home.owner(SlotId(s)) {
                Owner::Local(_) if !self.initialized || !self.holds(s) => {
                    Owner::Remote(Arc::clone(&moving))
                }
                o => o.clone(),
            })
            .collect();
        // One owner per slot by construction.
        OwnerTable::from_owners(home.epoch(), owners).unwrap_or_else(|| home.clone())
    }

    /// The slots to hand off: held here, owned by another node in `home`; by that node.
    pub fn outgoing(&self, home: &OwnerTable) -> BTreeMap<String, Vec<u16>> {
        let mut out: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for s in 0..SLOTS {
            if let Owner::Remote(o) = home.owner(SlotId(s)) {
                if self.holds(s) && o.node != MOVING {
                    out.entry(o.node.clone()).or_default().push(s);
                }
            }
        }
        out
    }

    /// A fresh node's first terms: term 1 for each slot `home` gives it that no other node
    /// holds (`held_elsewhere`), a known-not-held record for the others.
    pub fn claims(&self, home: &OwnerTable, held_elsewhere: &BTreeSet<u16>) -> Vec<SlotTerm> {
        let mut v: Vec<SlotTerm> = (0..SLOTS)
            .filter(|s| matches!(home.owner(SlotId(*s)), Owner::Local(_)))
            .map(|slot| {
                let free = !held_elsewhere.contains(&slot);
                SlotTerm {
                    slot,
                    term: u64::from(free),
                    held: free,
                }
            })
            .collect();
        if v.is_empty() {
            // Records that the node asked: nothing is its own.
            v.push(SlotTerm {
                slot: 0,
                term: self.term(0),
                held: false,
            });
        }
        v
    }

    /// Whether this node takes slots another node hands it (`offered`: slot, new term): every
    /// one must be its own in `home`, and offered above the term it knows (the same term once
    /// taken is a repeat: accepted again). The terms to record.
    pub fn accept(
        &self,
        home: &OwnerTable,
        offered: &[(u16, u64)],
    ) -> Result<Vec<SlotTerm>, String> {
        let mut v = Vec::with_capacity(offered.len());
        for &(slot, term) in offered {
            if slot >= SLOTS {
                return Err(format!("no slot {slot}"));
            }
            if !matches!(home.owner(SlotId(slot)), Owner::Local(_)) {
                return Err(format!(
                    "slot {slot} is not this node's in its view; retry once views agree"
                ));
            }
            let known = self.term(slot);
            if term < known || (term == known && !self.holds(slot)) {
                return Err(format!("slot {slot}: term {term} offered, {known} known"));
            }
            v.push(SlotTerm {
                slot,
                term,
                held: true,
            });
        }
        Ok(v)
    }

    /// Handing `slots` over: what this node records (not held, current term) and what it
    /// offers (the next term).
    pub fn release(&self, slots: &[u16]) -> (Vec<SlotTerm>, Vec<(u16, u64)>) {
        let released = slots
            .iter()
            .map(|&slot| SlotTerm {
                slot,
                term: self.term(slot),
                held: false,
            })
            .collect();
        let offered = slots.iter().map(|&s| (s, self.term(s) + 1)).collect();
        (released, offered)
    }
}

// ---------------------------------------------------------------------------------------------
// The node's state (shared by the gossip thread, the link core and the admin API)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct State {
    holdings: Holdings,
    /// The latest fenced ring table (`quorum::write_table`) the gossip thread published.
    home: Option<OwnerTable>,
    /// Slots released to a node that has not confirmed yet: offered again (rows included)
    /// until it does.
    unconfirmed: BTreeMap<String, Vec<(u16, u64)>>,
    /// The membership view allows writes (quorum and every member known).
    view_writable: bool,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fn state() -> Option<std::sync::MutexGuard<'static, State>> {
    // Poisoning cannot leave half an update that matters: holdings change only after the
    // store made them durable, and are re-read on restart.
    STATE
        .get()
        .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Loads the slot terms recorded in the store (before the cores start: the wait is on the
/// main thread).
pub fn install(store: &NodeStore) -> anyhow::Result<()> {
    let terms = store
        .slot_terms()
        .map_err(|e| anyhow::anyhow!("reading slot terms: {e}"))?
        .wait()
        .map_err(|e| anyhow::anyhow!("reading slot terms: {e}"))?;
    let holdings = Holdings::from_terms(&terms);
    set(
        &METRICS.cluster_slots_held,
        holdings.held_slots().len() as u64,
    );
    STATE
        .set(Mutex::new(State {
            holdings,
            home: None,
            unconfirmed: BTreeMap::new(),
            view_writable: false,
        }))
        .map_err(|_| anyhow::anyhow!("slot holdings are installed once per process"))
}

/// Whether this node may take writes as far as handoff is concerned: it has recorded its slot
/// terms (always true without a cluster).
pub fn ready() -> bool {
    state().is_none_or(|s| s.holdings.initialized())
}

/// The gossip thread: whether the view allows writes (quorum, every member known).
pub fn note_writable(writable: bool) {
    if let Some(mut s) = state() {
        s.view_writable = writable;
    }
}

/// Publishes the fenced ring table `home` as the write table, with the slots this node does
/// not hold yet owned by [`MOVING`].
pub fn publish_home(home: OwnerTable) {
    match state() {
        // Published under the lock: a table built from older holdings or an older view must
        // never replace a newer one.
        Some(mut s) => {
            super::quorum::publish_write_table(s.holdings.overlay(&home));
            s.home = Some(home);
        }
        None => super::quorum::publish_write_table(home),
    }
}

/// Records durable terms and publishes the write table again.
fn record(terms: &[SlotTerm]) {
    let Some(mut s) = state() else { return };
    s.holdings.apply(terms);
    set(
        &METRICS.cluster_slots_held,
        s.holdings.held_slots().len() as u64,
    );
    if let Some(home) = &s.home {
        super::quorum::publish_write_table(s.holdings.overlay(home));
    }
}

/// The handoff part of `GET /cluster/members`.
pub fn status_json() -> serde_json::Value {
    match state() {
        Some(s) => serde_json::json!({
            "initialized": s.holdings.initialized(),
            "slots_held": s.holdings.held_slots().len(),
            "unconfirmed": s.unconfirmed.values().map(Vec::len).sum::<usize>(),
        }),
        None => serde_json::Value::Null,
    }
}

// ---------------------------------------------------------------------------------------------
// The receiving side (calls served on the link core)
// ---------------------------------------------------------------------------------------------

/// `HandoffRows`: writes the rows through the store's writer.
pub(super) fn serve_rows(node: Arc<NodeShared>, rows: Vec<(u8, Vec<u8>, Vec<u8>)>) -> Answering {
    let rows = rows
        .into_iter()
        .map(|(family, key, value)| HandoffRow { family, key, value })
        .collect();
    let submitted = node.store.handoff_import(rows, Vec::new());
    Box::pin(async move {
        match submitted {
            Ok(c) => match c.await {
                Ok(()) => Reply::Done,
                Err(e) => refusal(&e),
            },
            Err(e) => refusal(&submit_error(e)),
        }
    })
}

/// `HandoffDone`: takes the slots if this node's view gives them to it.
pub(super) fn serve_done(node: Arc<NodeShared>, peer: &str, offered: Vec<(u16, u64)>) -> Answering {
    if !super::quorum::has_quorum() {
        return Box::pin(async { refused(ErrorCode::NO_QUORUM, "no quorum here; retry") });
    }
    let checked = match state() {
        Some(s) => match &s.home {
            Some(home) => s.holdings.accept(home, &offered),
            None => Err("no view yet; retry".into()),
        },
        None => Err("this node keeps no slot terms".into()),
    };
    let terms = match checked {
        Ok(t) => t,
        Err(why) => return Box::pin(async move { refused(ErrorCode::UNAVAILABLE, why) }),
    };
    let submitted = node.store.handoff_import(Vec::new(), terms.clone());
    let peer = peer.to_owned();
    Box::pin(async move {
        let done = match submitted {
            Ok(c) => c.await,
            Err(e) => Err(submit_error(e)),
        };
        match done {
            Ok(()) => {
                record(&terms);
                info!(from = %peer, slots = terms.len(), "cluster: slots taken over");
                Reply::Done
            }
            Err(e) => refusal(&e),
        }
    })
}

/// `HeldSlots`.
pub(super) fn serve_held() -> Answering {
    let reply = match state() {
        Some(s) => Reply::Held {
            initialized: s.holdings.initialized(),
            slots: s.holdings.held_slots(),
        },
        None => Reply::Held {
            initialized: false,
            slots: Vec::new(),
        },
    };
    Box::pin(async move { reply })
}

// ---------------------------------------------------------------------------------------------
// The giving side (a task on the link core)
// ---------------------------------------------------------------------------------------------

/// Asks node `to` and waits for the answer.
async fn ask(links: &Arc<Links>, to: &str, call: Call) -> Result<Reply, OpError> {
    let (tx, rx) = flume::bounded(1);
    Arc::clone(links).call(
        to.to_owned(),
        call,
        Done::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_async()
        .await
        .unwrap_or_else(|_| Err(OpError::Unavailable("the link core stopped".into())))
}

fn expect_done(r: Result<Reply, OpError>) -> Result<(), String> {
    match r {
        Ok(Reply::Done) => Ok(()),
        Ok(Reply::Refused { code, message }) => Err(format!("refused ({code}): {message}")),
        Ok(_) => Err("unexpected answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs handoffs for as long as the process runs (spawned on the link core).
pub async fn drive(node: Arc<NodeShared>, links: Arc<Links>) {
    loop {
        monoio::time::sleep(TICK).await;
        let (initialized, writable, work, unconfirmed) = match state() {
            Some(s) => (
                s.holdings.initialized(),
                s.view_writable,
                s.home
                    .as_ref()
                    .map(|h| s.holdings.outgoing(h))
                    .unwrap_or_default(),
                s.unconfirmed.clone(),
            ),
            None => return,
        };
        if !writable {
            continue;
        }
        if !initialized {
            if let Err(why) = initialize(&node, &links).await {
                info!("cluster: slot terms not recorded yet ({why}); retrying");
            }
            continue;
        }
        // Slots released but not confirmed come first: nobody holds them.
        for (to, offered) in unconfirmed {
            let slots: Vec<u16> = offered.iter().map(|(s, _)| *s).collect();
            if let Err(why) = hand_off(&node, &links, &to, slots, Some(offered)).await {
                warn!(to = %to, "cluster: handoff not confirmed ({why}); retrying");
            }
        }
        for (to, slots) in work {
            if let Err(why) = hand_off(&node, &links, &to, slots, None).await {
                warn!(to = %to, "cluster: handoff not done ({why}); retrying");
            }
        }
    }
}

/// A fresh node's first terms (see the module docs).
async fn initialize(node: &Arc<NodeShared>, links: &Arc<Links>) -> Result<(), String> {
    let mut held = BTreeSet::new();
    for peer in links.cluster().peer_ids() {
        match ask(links, &peer, Call::HeldSlots).await {
            Ok(Reply::Held { slots, .. }) => held.extend(slots),
            Ok(_) => return Err(format!("{peer} answered something else")),
            Err(e) => return Err(format!("{peer}: {e}")),
        }
    }
    let terms = {
        let s = state().ok_or("no holdings")?;
        let home = s.home.as_ref().ok_or("no view yet")?;
        s.holdings.claims(home, &held)
    };
    let c = node
        .store
        .handoff_import(Vec::new(), terms.clone())
        .map_err(|e| e.to_string())?;
    c.await.map_err(|e| e.to_string())?;
    record(&terms);
    let taken = terms.iter().filter(|t| t.held).count();
    info!(
        taken,
        held_elsewhere = held.len(),
        "cluster: slot terms recorded"
    );
    Ok(())
}

/// Hands `slots` to node `to` (steps 1–4 of the module docs). `offered`: a handoff released
/// before and not confirmed, offered again at the same terms.
async fn hand_off(
    node: &Arc<NodeShared>,
    links: &Arc<Links>,
    to: &str,
    slots: Vec<u16>,
    offered: Option<Vec<(u16, u64)>>,
) -> Result<(), String> {
    set(&METRICS.cluster_handoffs_in_progress, slots.len() as u64);
    let r = hand_off_inner(node, links, to, &slots, offered).await;
    set(&METRICS.cluster_handoffs_in_progress, 0);
    r
}

async fn hand_off_inner(
    node: &Arc<NodeShared>,
    links: &Arc<Links>,
    to: &str,
    slots: &[u16],
    offered: Option<Vec<(u16, u64)>>,
) -> Result<(), String> {
    info!(to = %to, slots = slots.len(), "cluster: handing slots over");
    // 1. The write table names `to` already: let writes that passed the previous one reach
    //    the writer, then put a barrier through it.
    monoio::time::sleep(GRACE).await;
    let barrier = node
        .store
        .outbox_done(Vec::new())
        .map_err(|e| e.to_string())?;
    barrier.await.map_err(|e| e.to_string())?;
    // 2. The rows.
    let set_of: Arc<HashSet<u16>> = Arc::new(slots.iter().copied().collect());
    let filter_set = Arc::clone(&set_of);
    let filter: UserFilter = Arc::new(move |u: &str| filter_set.contains(&SlotId::of_user(u).0));
    let mut cursor: Option<ExportCursor> = None;
    let mut sent = 0usize;
    loop {
        let page = node
            .store
            .handoff_export(
                Arc::clone(&filter),
                cursor.take(),
                ROWS_PER_CALL,
                BYTES_PER_CALL,
            )
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        if !page.rows.is_empty() {
            sent += page.rows.len();
            let rows = page
                .rows
                .into_iter()
                .map(|r| (r.family, r.key, r.value))
                .collect();
            expect_done(ask(links, to, Call::HandoffRows { rows }).await)?;
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    // 3. Released here (durable) before offered there: at no time do both hold a slot.
    let offered = match offered {
        Some(o) => o,
        None => {
            let (released, offered) = {
                let s = state().ok_or("no holdings")?;
                // Still ours to give, and still theirs in our view?
                let home = s.home.as_ref().ok_or("no view")?;
                if slots.iter().any(|&sl| {
                    !s.holdings.holds(sl)
                        || !matches!(home.owner(SlotId(sl)), Owner::Remote(o) if o.node == to)
                }) {
                    return Err("the view changed meanwhile".into());
                }
                s.holdings.release(slots)
            };
            node.store
                .handoff_import(Vec::new(), released.clone())
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            record(&released);
            if let Some(mut s) = state() {
                s.unconfirmed.insert(to.to_owned(), offered.clone());
            }
            offered
        }
    };
    expect_done(
        ask(
            links,
            to,
            Call::HandoffDone {
                slots: offered.clone(),
            },
        )
        .await,
    )?;
    if let Some(mut s) = state() {
        s.unconfirmed.remove(to);
    }
    METRICS
        .cluster_handoff_slots_total
        .fetch_add(offered.len() as u64, std::sync::atomic::Ordering::Relaxed);
    // 4. The slots' sessions reconnect (to `to`, by REDIRECT at HELLO).
    for tx in &node.peers {
        let _ = tx.try_send(CoreMsg::SlotsMoved {
            slots: Arc::clone(&set_of),
        });
    }
    info!(to = %to, slots = offered.len(), rows = sent, "cluster: slots handed over");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_protocol::Transport;

    fn remote(node: &str) -> Owner {
        Owner::Remote(Arc::new(RemoteOwner {
            node: node.into(),
            addrs: vec![(Transport::NATIVE, "10.0.0.2:14000".into())],
        }))
    }

    fn held(slots: &[u16], term: u64) -> Vec<SlotTerm> {
        slots
            .iter()
            .map(|&slot| SlotTerm {
                slot,
                term,
                held: true,
            })
            .collect()
    }

    #[test]
    fn a_fresh_node_writes_nothing_until_it_recorded_terms() {
        let h = Holdings::from_terms(&[]);
        assert!(!h.initialized());
        let home = OwnerTable::local(2);
        let t = h.overlay(&home);
        assert!(is_moving(t.owner(SlotId(5))));
        assert_eq!(t.epoch(), home.epoch());
        // A cluster forming: nobody holds anything, it takes all its ring's slots.
        let claims = h.claims(&home, &BTreeSet::new());
        assert_eq!(claims.len(), usize::from(SLOTS));
        assert!(claims.iter().all(|c| c.held && c.term == 1));
        // Joining: the others hold slots 1 and 2; they will come by handoff.
        let claims = h.claims(&home, &[1, 2].into_iter().collect());
        let mut j = Holdings::from_terms(&[]);
        j.apply(&claims);
        assert!(j.initialized() && !j.holds(1) && !j.holds(2) && j.holds(3));
        assert!(is_moving(j.overlay(&home).owner(SlotId(1))));
        assert_eq!(j.overlay(&home).owner(SlotId(3)), home.owner(SlotId(3)));
    }

    #[test]
    fn the_holder_hands_what_its_ring_gives_another_node_and_the_taker_checks_it() {
        // A holds 1..=4; its ring now gives 2 and 3 to B (A drains, or B joined).
        let mut a = Holdings::from_terms(&held(&[1, 2, 3, 4], 1));
        let home_a = OwnerTable::local(1)
            .with_owner(SlotId(2), remote("b"))
            .with_owner(SlotId(3), remote("b"));
        let out = a.outgoing(&home_a);
        assert_eq!(out.len(), 1);
        assert_eq!(out["b"], vec![2, 3]);
        // A's write table refuses 2 and 3 (B's), B's refuses them until it holds them.
        let wa = a.overlay(&home_a);
        assert!(matches!(wa.owner(SlotId(2)), Owner::Remote(o) if o.node == "b"));
        let mut b = Holdings::from_terms(&[SlotTerm {
            slot: 9,
            term: 1,
            held: true,
        }]);
        let home_b = OwnerTable::local(1).with_owner(SlotId(1), remote("a"));
        assert!(is_moving(b.overlay(&home_b).owner(SlotId(2))));
        let (released, offered) = a.release(&[2, 3]);
        assert!(released.iter().all(|t| !t.held && t.term == 1));
        assert_eq!(offered, vec![(2, 2), (3, 2)]);
        a.apply(&released);
        assert!(a.outgoing(&home_a).is_empty());
        // B takes them only where its own view agrees.
        assert!(
            b.accept(&home_b, &[(1, 2)]).is_err(),
            "slot 1 is A's in B's view"
        );
        let terms = b.accept(&home_b, &offered).unwrap();
        b.apply(&terms);
        assert!(b.holds(2) && b.holds(3) && b.term(2) == 2);
        assert_eq!(b.overlay(&home_b).owner(SlotId(2)), home_b.owner(SlotId(2)));
        // A repeat of the same offer (its answer was lost) is accepted again; an older one not.
        assert!(b.accept(&home_b, &offered).is_ok());
        assert!(b.accept(&home_b, &[(2, 1)]).is_err());
        // Once B holds them, nothing moves back while the views stay.
        assert!(b.outgoing(&home_b).is_empty());
    }
}
