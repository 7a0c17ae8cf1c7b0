//! Groups in storage: role checks that store nothing when they refuse, the rows a read-diffused
//! message costs, and devices that see every message exactly once while a group crosses the
//! write-diffusion size in both directions.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use tern_storage::{
    ClientMsgId, ConvKey, DeviceId, Diffusion, GroupAppendResult, GroupId, GroupLimits,
    GroupMessage, GroupOp, GroupOutcome, GroupRequest, HistoryDirection, KvEngine, ManualClock,
    MarkRead, MemEngine, MemberRole, MessageKind, OpError, Seq, Store, StoreConfig, UserId,
};

const T0: u64 = 1_767_225_600_000;

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn gid(s: &str) -> GroupId {
    GroupId::new(s).unwrap()
}

fn open(limits: GroupLimits) -> (Store<MemEngine>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let config = StoreConfig {
        groups: limits,
        ..StoreConfig::default()
    };
    (
        Store::open(MemEngine::new(), config, clock.clone()).unwrap(),
        clock,
    )
}

fn change<E: KvEngine>(
    store: &Store<E>,
    g: &str,
    by: &str,
    op: GroupOp,
) -> Result<GroupOutcome, OpError> {
    store
        .change_group(GroupRequest {
            group: gid(g),
            by: user(by),
            by_device: dev("d"),
            op,
        })
        .unwrap()
        .wait()
}

fn send<E: KvEngine>(
    store: &Store<E>,
    g: &str,
    from: &str,
    id: u8,
) -> Result<GroupAppendResult, OpError> {
    store
        .append_group(GroupMessage {
            group: gid(g),
            sender: user(from),
            sender_device: dev("d"),
            client_msg_id: ClientMsgId([id; 16]),
            kind: MessageKind::TEXT,
            body: vec![id],
            mentions: Vec::new(),
            mention_all: false,
        })
        .unwrap()
        .wait()
}

fn users(names: &[&str]) -> Vec<UserId> {
    names.iter().map(|n| user(n)).collect()
}

fn last_seq<E: KvEngine>(store: &Store<E>, g: &str) -> u64 {
    store
        .history(
            ConvKey::Group(gid(g)),
            Seq::MAX,
            HistoryDirection::Before,
            1,
        )
        .unwrap()
        .wait()
        .unwrap()
        .first()
        .map_or(0, |m| m.seq.0)
}

/// Rows the writer wrote for one operation (nothing else is in flight).
fn rows_of<E: KvEngine, T>(store: &Store<E>, op: impl FnOnce() -> T) -> (T, u64) {
    let before = store.writer_stats().rows;
    let r = op();
    (r, store.writer_stats().rows - before)
}

#[test]
fn refusals_store_nothing() {
    let (store, clock) = open(GroupLimits::default());
    change(
        &store,
        "g",
        "alice",
        GroupOp::Create {
            name: "hiking".into(),
            members: users(&["bob", "carol"]),
        },
    )
    .unwrap();
    let last = last_seq(&store, "g");
    let refused: Vec<(Result<(), OpError>, u64)> = vec![
        rows_of(&store, || send(&store, "g", "mallory", 1).map(|_| ())),
        rows_of(&store, || {
            change(&store, "g", "bob", GroupOp::Add(users(&["dave"]))).map(|_| ())
        }),
        rows_of(&store, || {
            change(&store, "g", "bob", GroupOp::Remove(users(&["carol"]))).map(|_| ())
        }),
        rows_of(&store, || {
            change(&store, "g", "bob", GroupOp::Disband).map(|_| ())
        }),
        rows_of(&store, || {
            change(&store, "g", "bob", GroupOp::Transfer(user("carol"))).map(|_| ())
        }),
        rows_of(&store, || {
            change(&store, "g", "alice", GroupOp::Leave).map(|_| ())
        }),
        rows_of(&store, || {
            change(&store, "nope", "alice", GroupOp::Add(users(&["bob"]))).map(|_| ())
        }),
        rows_of(&store, || send(&store, "nope", "alice", 2).map(|_| ())),
    ];
    let codes: Vec<_> = refused
        .iter()
        .map(|(r, rows)| (r.as_ref().err().cloned(), *rows))
        .collect();
    assert!(
        codes.iter().all(|(e, rows)| e.is_some() && *rows == 0),
        "{codes:?}"
    );
    assert!(matches!(codes[0].0, Some(OpError::NotAllowed(_))));
    assert!(matches!(codes[6].0, Some(OpError::NotFound(_))));

    // An admin manages members but not admins or the owner; a mute stops sending.
    change(
        &store,
        "g",
        "alice",
        GroupOp::SetRole {
            users: users(&["bob"]),
            role: MemberRole::ADMIN,
        },
    )
    .unwrap();
    change(
        &store,
        "g",
        "bob",
        GroupOp::Mute {
            users: users(&["carol"]),
            until_ms: T0 + 60_000,
        },
    )
    .unwrap();
    assert!(matches!(
        change(&store, "g", "bob", GroupOp::Remove(users(&["alice"]))),
        Err(OpError::NotAllowed(_))
    ));
    let (muted, rows) = rows_of(&store, || send(&store, "g", "carol", 3));
    assert!(matches!(muted, Err(OpError::NotAllowed(_))));
    assert_eq!(rows, 0);
    clock.set(T0 + 60_001);
    send(&store, "g", "carol", 3).unwrap();
    assert_eq!(last_seq(&store, "g"), last + 3, "two events and a message");
}

#[test]
fn member_limit_is_enforced() {
    let (store, _) = open(GroupLimits {
        write_diffusion_max: 200,
        max_members: 3,
    });
    let too_many = change(
        &store,
        "g",
        "alice",
        GroupOp::Create {
            name: "x".into(),
            members: users(&["b", "c", "d"]),
        },
    );
    assert!(matches!(too_many, Err(OpError::LimitExceeded(_))));
    change(
        &store,
        "g",
        "alice",
        GroupOp::Create {
            name: "x".into(),
            members: users(&["b"]),
        },
    )
    .unwrap();
    assert!(matches!(
        change(&store, "g", "alice", GroupOp::Add(users(&["c", "d"]))),
        Err(OpError::LimitExceeded(_))
    ));
    let info = change(&store, "g", "alice", GroupOp::Add(users(&["c"])))
        .unwrap()
        .info;
    assert_eq!(info.member_count, 3);
}

#[test]
fn a_read_diffused_message_costs_the_same_rows_whatever_the_member_count() {
    let mut costs = Vec::new();
    for members in [50usize, 500, 5_000] {
        let (store, _) = open(GroupLimits {
            write_diffusion_max: 20,
            max_members: 10_000,
        });
        let names: Vec<UserId> = (0..members).map(|i| user(&format!("u{i}"))).collect();
        let created = change(
            &store,
            "big",
            "owner",
            GroupOp::Create {
                name: "big".into(),
                members: names,
            },
        )
        .unwrap();
        assert_eq!(created.info.diffusion, Diffusion::READ);
        // The first message loads the sender's cursor; measure steady messages.
        send(&store, "big", "u1", 1).unwrap();
        let mut per_message = Vec::new();
        for i in 2..6u8 {
            let (r, rows) = rows_of(&store, || send(&store, "big", "u1", i));
            let r = r.unwrap();
            assert_eq!(r.sender_inbox_seq, Seq::ZERO, "no inbox entry");
            per_message.push(rows);
        }
        costs.push((members, per_message));
    }
    eprintln!("rows written per read-diffused message: {costs:?}");
    let all: Vec<u64> = costs.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    assert!(all.iter().all(|&r| r <= 3), "{costs:?}");
    assert!(all.windows(2).all(|w| w[0] == w[1]), "{costs:?}");
}

/// A device: its inbox position and everything it was handed, in arrival order.
struct Device {
    user: UserId,
    device: DeviceId,
    inbox: Seq,
    got: Vec<(ConvKey, u64)>,
}

impl Device {
    fn new(u: &str, d: &str) -> Device {
        Device {
            user: user(u),
            device: dev(d),
            inbox: Seq::ZERO,
            got: Vec::new(),
        }
    }

    /// SYNC as the node serves it: the inbox, then read-diffused group messages, each part
    /// acknowledged before the next page is asked for.
    fn sync<E: KvEngine>(&mut self, store: &Store<E>) {
        for _ in 0..100 {
            let page = store
                .inbox_page(self.user.clone(), self.inbox, 3)
                .unwrap()
                .wait()
                .unwrap();
            for e in &page {
                self.got.push((e.message.conv.clone(), e.message.seq.0));
                self.inbox = e.inbox_seq;
            }
            if page.len() < 3 {
                break;
            }
        }
        for _ in 0..100 {
            let page = store
                .group_sync(self.user.clone(), self.device.clone(), 2)
                .unwrap()
                .wait()
                .unwrap();
            for m in &page.messages {
                self.got.push((m.conv.clone(), m.seq.0));
            }
            store
                .put_group_positions(self.user.clone(), self.device.clone(), page.positions)
                .unwrap()
                .wait()
                .unwrap();
            if !page.more {
                break;
            }
        }
    }

    fn seqs(&self, g: &str) -> BTreeMap<u64, usize> {
        let conv = ConvKey::Group(gid(g));
        let mut out = BTreeMap::new();
        for (c, s) in &self.got {
            if *c == conv {
                *out.entry(*s).or_insert(0) += 1;
            }
        }
        out
    }
}

#[test]
fn crossing_the_threshold_both_ways_keeps_every_message_once_on_every_device() {
    let (store, _) = open(GroupLimits {
        write_diffusion_max: 3,
        max_members: 100,
    });
    let mut alice = Device::new("alice", "a");
    let mut bob_phone = Device::new("bob", "phone");
    let mut bob_laptop = Device::new("bob", "laptop");
    let mut carol = Device::new("carol", "c");

    let created = change(
        &store,
        "g",
        "alice",
        GroupOp::Create {
            name: "g".into(),
            members: users(&["bob"]),
        },
    )
    .unwrap();
    assert_eq!(created.info.diffusion, Diffusion::WRITE);
    send(&store, "g", "alice", 1).unwrap();
    send(&store, "g", "bob", 2).unwrap();
    bob_phone.sync(&store);

    // Four members: read diffusion from the ADDED event on.
    let added = change(
        &store,
        "g",
        "alice",
        GroupOp::Add(users(&["carol", "dave"])),
    )
    .unwrap();
    assert_eq!(added.info.diffusion, Diffusion::READ);
    let event = added.event.unwrap();
    assert_eq!(event.diffusion, Diffusion::READ);
    assert!(event.inboxes.is_empty());
    send(&store, "g", "alice", 3).unwrap();
    send(&store, "g", "carol", 4).unwrap();
    let r = send(&store, "g", "carol", 4).unwrap();
    assert!(r.duplicate, "a retransmission stores nothing");
    bob_phone.sync(&store);
    carol.sync(&store);

    // Back to three: write diffusion from the REMOVED event on.
    let removed = change(&store, "g", "alice", GroupOp::Remove(users(&["dave"]))).unwrap();
    assert_eq!(removed.info.diffusion, Diffusion::WRITE);
    assert_eq!(
        removed.event.unwrap().inboxes.len(),
        4,
        "dave sees his removal"
    );
    send(&store, "g", "bob", 5).unwrap();
    // And up again, and messages while devices are offline.
    change(&store, "g", "alice", GroupOp::Add(users(&["erin"]))).unwrap();
    send(&store, "g", "erin", 6).unwrap();

    for d in [&mut alice, &mut bob_phone, &mut bob_laptop, &mut carol] {
        d.sync(&store);
    }
    let last = last_seq(&store, "g");
    assert_eq!(last, 10);
    let every: BTreeMap<u64, usize> = (1..=last).map(|s| (s, 1)).collect();
    assert_eq!(alice.seqs("g"), every);
    assert_eq!(bob_phone.seqs("g"), every);
    assert_eq!(bob_laptop.seqs("g"), every);
    // Carol joined with the event at seq 4.
    let since_join: BTreeMap<u64, usize> = (4..=last).map(|s| (s, 1)).collect();
    assert_eq!(carol.seqs("g"), since_join);

    // Unread under read diffusion is the group seq minus the read cursor.
    let contacts = store.recent(user("carol"), 10).unwrap().wait().unwrap();
    let entry = contacts
        .conversations
        .iter()
        .find(|c| c.conv == ConvKey::Group(gid("g")))
        .unwrap();
    assert_eq!(entry.last_seq, Seq(last));
    assert_eq!(contacts.total_unread, u64::from(entry.unread));
    store
        .mark_read(MarkRead {
            user: user("carol"),
            conv: ConvKey::Group(gid("g")),
            up_to: Seq(last),
        })
        .unwrap()
        .wait()
        .unwrap();
    let contacts = store.recent(user("carol"), 10).unwrap().wait().unwrap();
    assert_eq!(contacts.total_unread, 0);
}
