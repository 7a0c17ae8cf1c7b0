//! Read receipts and mentions in groups, in storage: "read by k of n" and the readers of a
//! write-diffusion message, the member's own position under read diffusion, the senders a READ
//! is a receipt for, and mention flags under both diffusions (members only, cleared by reading,
//! @all on a read-diffusion group costing one row whatever the member count).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tern_storage::{
    ClientMsgId, ConvKey, DeviceId, Diffusion, GroupAppendResult, GroupId, GroupLimits,
    GroupMessage, GroupOp, GroupRequest, KvEngine, ManualClock, MarkRead, MemEngine, MessageKind,
    OpError, ReadState, Seq, Store, StoreConfig, UserId,
};

const T0: u64 = 1_767_225_600_000;

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn gid(s: &str) -> GroupId {
    GroupId::new(s).unwrap()
}

fn open(write_diffusion_max: u32) -> (Store<MemEngine>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let config = StoreConfig {
        groups: GroupLimits {
            write_diffusion_max,
            ..GroupLimits::default()
        },
        ..StoreConfig::default()
    };
    (
        Store::open(MemEngine::new(), config, clock.clone()).unwrap(),
        clock,
    )
}

fn create<E: KvEngine>(store: &Store<E>, g: &str, owner: &str, members: &[&str]) -> Diffusion {
    store
        .change_group(GroupRequest {
            group: gid(g),
            by: user(owner),
            by_device: DeviceId::new("d").unwrap(),
            op: GroupOp::Create {
                name: g.into(),
                members: members.iter().map(|m| user(m)).collect(),
            },
        })
        .unwrap()
        .wait()
        .unwrap()
        .info
        .diffusion
}

fn send<E: KvEngine>(
    store: &Store<E>,
    g: &str,
    from: &str,
    id: u8,
    mentions: &[&str],
    mention_all: bool,
) -> GroupAppendResult {
    store
        .append_group(GroupMessage {
            group: gid(g),
            sender: user(from),
            sender_device: DeviceId::new("d").unwrap(),
            client_msg_id: ClientMsgId([id; 16]),
            kind: MessageKind::TEXT,
            body: vec![id],
            mentions: mentions.iter().map(|m| user(m)).collect(),
            mention_all,
        })
        .unwrap()
        .wait()
        .unwrap()
}

fn read<E: KvEngine>(store: &Store<E>, g: &str, who: &str, up_to: u64) -> ReadState {
    store
        .mark_read(MarkRead {
            user: user(who),
            conv: ConvKey::Group(gid(g)),
            up_to: Seq(up_to),
        })
        .unwrap()
        .wait()
        .unwrap()
}

/// The mention flag of `who`'s recent entry for the group.
fn mentioned<E: KvEngine>(store: &Store<E>, g: &str, who: &str) -> bool {
    store
        .recent(user(who), 50)
        .unwrap()
        .wait()
        .unwrap()
        .conversations
        .iter()
        .find(|c| c.conv == ConvKey::Group(gid(g)))
        .map(|c| c.mentioned)
        .unwrap()
}

#[test]
fn write_diffusion_counts_readers_per_message() {
    let (store, _) = open(200);
    assert_eq!(
        create(&store, "g", "alice", &["bob", "carol"]),
        Diffusion::WRITE
    );
    let m1 = send(&store, "g", "alice", 1, &[], false).conv_seq;
    let m2 = send(&store, "g", "bob", 2, &[], false).conv_seq;

    let r = read(&store, "g", "bob", m1.0);
    assert_eq!(r.previous_read_seq, Seq::ZERO);
    assert_eq!(r.read_seq, m1);
    let receipts = |who: &str, readers: bool| {
        store
            .group_receipts(gid("g"), user(who), vec![m1, m2, Seq(99)], readers)
            .unwrap()
            .wait()
    };
    let got = receipts("alice", true).unwrap();
    assert_eq!(got.diffusion, Diffusion::WRITE);
    assert_eq!(got.messages.len(), 2, "a seq naming no message is left out");
    assert_eq!(
        (
            got.messages[0].seq,
            got.messages[0].members,
            got.messages[0].read
        ),
        (m1, 2, 1)
    );
    assert_eq!(got.messages[0].readers, vec![user("bob")]);
    // Bob's own message: alice and carol are the others, neither has read it.
    assert_eq!((got.messages[1].members, got.messages[1].read), (2, 0));
    // Without readers only the counts.
    let got = receipts("alice", false).unwrap();
    assert!(got.messages[0].readers.is_empty());
    assert_eq!(got.messages[0].read, 1);

    read(&store, "g", "carol", m2.0);
    read(&store, "g", "alice", m2.0);
    let got = receipts("bob", true).unwrap();
    assert_eq!(got.my_read_seq, m1);
    assert_eq!((got.messages[0].read, got.messages[1].read), (2, 2));
    assert_eq!(got.messages[1].readers, vec![user("alice"), user("carol")]);

    // Refusals: a non-member, a group that does not exist.
    assert!(matches!(
        receipts("mallory", false),
        Err(OpError::NotAllowed(_))
    ));
    assert!(matches!(
        store
            .group_receipts(gid("nope"), user("alice"), vec![m1], false)
            .unwrap()
            .wait(),
        Err(OpError::NotFound(_))
    ));

    // Whom a READ is a receipt for: the senders of the content newly read, not the reader.
    let m3 = send(&store, "g", "alice", 3, &[], false).conv_seq;
    let m4 = send(&store, "g", "carol", 4, &[], false).conv_seq;
    let r = read(&store, "g", "bob", m4.0);
    assert_eq!(r.previous_read_seq, m1);
    let mut senders = store
        .group_read_senders(gid("g"), user("bob"), r.previous_read_seq, r.read_seq, 100)
        .unwrap()
        .wait()
        .unwrap();
    senders.sort();
    assert_eq!(senders, vec![user("alice"), user("carol")]);
    let senders = store
        .group_read_senders(gid("g"), user("bob"), m3, m3, 100)
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        senders.is_empty(),
        "a READ that moves nothing is no receipt"
    );
}

#[test]
fn read_diffusion_reports_the_members_own_position_only() {
    let (store, _) = open(2);
    assert_eq!(
        create(&store, "big", "alice", &["bob", "carol"]),
        Diffusion::READ
    );
    let m = send(&store, "big", "alice", 1, &[], false).conv_seq;
    read(&store, "big", "bob", m.0);
    let got = store
        .group_receipts(gid("big"), user("bob"), vec![m], true)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(got.diffusion, Diffusion::READ);
    assert_eq!(got.my_read_seq, m);
    assert!(got.messages.is_empty());
    let senders = store
        .group_read_senders(gid("big"), user("bob"), Seq::ZERO, m, 100)
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        senders.is_empty(),
        "no receipts to senders under read diffusion"
    );
}

#[test]
fn mentions_under_write_diffusion_flag_members_until_they_read() {
    let (store, _) = open(200);
    create(&store, "g", "alice", &["bob", "carol"]);
    // "zed" is no member: ignored; alice mentioning herself: ignored.
    let m = send(&store, "g", "alice", 1, &["carol", "zed", "alice"], false).conv_seq;
    assert!(mentioned(&store, "g", "carol"));
    assert!(!mentioned(&store, "g", "bob"));
    assert!(!mentioned(&store, "g", "alice"));
    assert!(store
        .recent(user("zed"), 10)
        .unwrap()
        .wait()
        .unwrap()
        .conversations
        .is_empty());
    read(&store, "g", "carol", m.0);
    assert!(!mentioned(&store, "g", "carol"));

    send(&store, "g", "bob", 2, &[], true);
    assert!(mentioned(&store, "g", "alice"));
    assert!(mentioned(&store, "g", "carol"));
    assert!(
        !mentioned(&store, "g", "bob"),
        "the sender of @all is not mentioned"
    );
}

#[test]
fn mentions_under_read_diffusion_cost_one_row_per_mention_and_follow_the_cursor() {
    let (store, _) = open(2);
    let members: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    assert_eq!(create(&store, "big", "alice", &names), Diffusion::READ);

    let rows = |f: &dyn Fn()| {
        let before = store.writer_stats().rows;
        f();
        store.writer_stats().rows - before
    };
    let plain = rows(&|| {
        send(&store, "big", "alice", 1, &[], false);
    });
    let one = rows(&|| {
        send(&store, "big", "alice", 2, &["u1"], false);
    });
    let all = rows(&|| {
        send(&store, "big", "u2", 3, &[], true);
    });
    assert_eq!(plain, 3);
    assert_eq!(one, plain + 1, "a mention is one mark");
    assert_eq!(all, plain + 1, "@all is one mark, not one per member");

    // @all by u2 at the last seq: everyone but u2 is flagged.
    assert!(mentioned(&store, "big", "u1"));
    assert!(mentioned(&store, "big", "u7"));
    assert!(mentioned(&store, "big", "alice"));
    assert!(!mentioned(&store, "big", "u2"));

    // u7 reads up to just before @all: still flagged; past @all: cleared.
    let contacts = store.recent(user("u7"), 10).unwrap().wait().unwrap();
    let last_seq = contacts.conversations[0].last_seq;
    read(&store, "big", "u7", last_seq.0 - 1);
    assert!(mentioned(&store, "big", "u7"));
    read(&store, "big", "u7", last_seq.0);
    assert!(!mentioned(&store, "big", "u7"));

    // u1's own mark stays under @all's: reading past both clears it.
    read(&store, "big", "u1", last_seq.0);
    assert!(!mentioned(&store, "big", "u1"));

    // A member who leaves and comes back is not flagged by marks from before.
    store
        .change_group(GroupRequest {
            group: gid("big"),
            by: user("u9"),
            by_device: DeviceId::new("d").unwrap(),
            op: GroupOp::Leave,
        })
        .unwrap()
        .wait()
        .unwrap();
    store
        .change_group(GroupRequest {
            group: gid("big"),
            by: user("alice"),
            by_device: DeviceId::new("d").unwrap(),
            op: GroupOp::Add(vec![user("u9")]),
        })
        .unwrap()
        .wait()
        .unwrap();
    assert!(!mentioned(&store, "big", "u9"));
}
