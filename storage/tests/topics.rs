//! Topics in storage: the rows a message costs whatever the subscriber count, subscription
//! points and caps, SYNC of a device across topics and unsubscription, read positions and the
//! recent list.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tern_storage::{
    ClientMsgId, ConvKey, DeviceId, HistoryDirection, KvEngine, ManualClock, MarkRead, MemEngine,
    MessageKind, OpError, Seq, Store, StoreConfig, TopicAppendResult, TopicId, TopicLimits,
    TopicMessage, UserId,
};

const T0: u64 = 1_767_225_600_000;

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn tid(s: &str) -> TopicId {
    TopicId::new(s).unwrap()
}

fn open() -> Store<MemEngine> {
    let clock = Arc::new(ManualClock::new(T0));
    Store::open(MemEngine::new(), StoreConfig::default(), clock).unwrap()
}

fn sub<E: KvEngine>(
    store: &Store<E>,
    t: &str,
    u: &str,
    limits: TopicLimits,
) -> Result<bool, OpError> {
    store
        .topic_subscribe(tid(t), user(u), limits)
        .unwrap()
        .wait()
}

fn unsub<E: KvEngine>(store: &Store<E>, t: &str, u: &str) -> bool {
    store
        .topic_unsubscribe(tid(t), user(u))
        .unwrap()
        .wait()
        .unwrap()
}

fn post<E: KvEngine>(store: &Store<E>, t: &str, from: &str, id: u16) -> TopicAppendResult {
    let mut msg_id = [0u8; 16];
    msg_id[..2].copy_from_slice(&id.to_be_bytes());
    msg_id[2..4].copy_from_slice(&(from.len() as u16).to_be_bytes());
    store
        .append_topic(TopicMessage {
            topic: tid(t),
            sender: user(from),
            sender_device: DeviceId::new("d").unwrap(),
            client_msg_id: ClientMsgId(msg_id),
            kind: MessageKind::TEXT,
            body: id.to_be_bytes().to_vec(),
        })
        .unwrap()
        .wait()
        .unwrap()
}

/// Rows the writer wrote for one operation (nothing else is in flight).
fn rows_of<E: KvEngine, T>(store: &Store<E>, op: impl FnOnce() -> T) -> (T, u64) {
    let before = store.writer_stats().rows;
    let r = op();
    (r, store.writer_stats().rows - before)
}

/// SYNC of a device's topic part until it ends, recording positions as a connection does.
fn sync_all<E: KvEngine>(store: &Store<E>, u: &str, d: &str, page: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    for _ in 0..1000 {
        let p = store
            .topic_sync(user(u), DeviceId::new(d).unwrap(), page)
            .unwrap()
            .wait()
            .unwrap();
        for m in &p.messages {
            let ConvKey::Topic(t) = &m.conv else {
                panic!("not a topic message")
            };
            got.push((t.as_str().to_owned(), m.seq.0));
        }
        store
            .put_topic_positions(user(u), DeviceId::new(d).unwrap(), p.positions.clone())
            .unwrap()
            .wait()
            .unwrap();
        if !p.more {
            return got;
        }
    }
    panic!("sync did not end");
}

#[test]
fn a_topic_message_costs_the_same_rows_whatever_the_subscriber_count() {
    let mut costs = Vec::new();
    for subscribers in [10usize, 1_000, 10_000] {
        let store = open();
        for i in 0..subscribers {
            assert!(sub(&store, "news", &format!("u{i}"), TopicLimits::default()).unwrap());
        }
        post(&store, "news", "editor", 0);
        let mut per_message = Vec::new();
        for i in 1..5u16 {
            let (r, rows) = rows_of(&store, || post(&store, "news", "editor", i));
            assert_eq!(r.fanout.as_ref().unwrap().members.len(), subscribers);
            per_message.push(rows);
        }
        // A subscribed publisher also moves their own read position.
        let (_, rows) = rows_of(&store, || post(&store, "news", "u1", 9));
        per_message.push(rows);
        costs.push((subscribers, per_message));
    }
    eprintln!("rows written per topic message: {costs:?}");
    for (_, c) in &costs {
        assert_eq!(&c[..4], &[2, 2, 2, 2], "{costs:?}");
        assert_eq!(c[4], 3, "{costs:?}");
    }
}

#[test]
fn subscriptions_are_idempotent_capped_and_start_at_the_subscription_point() {
    let store = open();
    post(&store, "t", "pub", 1);
    post(&store, "t", "pub", 2);
    let limits = TopicLimits {
        max_subscribers: 2,
        max_per_user: 2,
    };
    assert!(sub(&store, "t", "a", limits).unwrap());
    assert!(!sub(&store, "t", "a", limits).unwrap(), "second subscribe");
    assert!(sub(&store, "t", "b", limits).unwrap());
    let (r, rows) = rows_of(&store, || sub(&store, "t", "c", limits));
    assert!(matches!(r, Err(OpError::LimitExceeded(_))), "{r:?}");
    assert_eq!(rows, 0);
    assert!(sub(&store, "u", "a", limits).unwrap());
    let r = sub(&store, "v", "a", limits);
    assert!(matches!(r, Err(OpError::LimitExceeded(_))), "{r:?}");
    // Dropping one makes room for another.
    assert!(unsub(&store, "u", "a"));
    assert!(!unsub(&store, "u", "a"), "second unsubscribe");
    assert!(sub(&store, "v", "a", limits).unwrap());

    post(&store, "t", "pub", 3);
    // Only what came after the subscription point.
    assert_eq!(sync_all(&store, "a", "phone", 100), vec![("t".into(), 3)]);
    assert!(sync_all(&store, "a", "phone", 100).is_empty(), "held");
    // History is the whole timeline.
    let h = store
        .topic_history(tid("t"), Seq::MAX, HistoryDirection::Before, 10)
        .unwrap()
        .wait()
        .unwrap();
    let mut seqs: Vec<u64> = h.iter().map(|m| m.seq.0).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3]);
    let (list, more) = store
        .topic_list(user("a"), None, 10)
        .unwrap()
        .wait()
        .unwrap();
    assert!(!more);
    let names: Vec<_> = list
        .iter()
        .map(|s| (s.topic.as_str().to_owned(), s.subscribers, s.last_seq.0))
        .collect();
    assert_eq!(names, vec![("t".into(), 2, 3), ("v".into(), 1, 0)]);
}

#[test]
fn sync_pages_across_topics_and_stops_after_unsubscribing() {
    let store = open();
    for t in ["b", "a"] {
        sub(&store, t, "reader", TopicLimits::default()).unwrap();
    }
    for i in 0..7u16 {
        post(&store, "a", "p", i);
        post(&store, "b", "p", 100 + i);
    }
    let got = sync_all(&store, "reader", "phone", 3);
    let want: Vec<(String, u64)> = (1..=7)
        .map(|s| ("a".to_owned(), s))
        .chain((1..=7).map(|s| ("b".to_owned(), s)))
        .collect();
    assert_eq!(got, want);
    // Another device starts from the subscription point too.
    assert_eq!(sync_all(&store, "reader", "laptop", 500).len(), 14);
    unsub(&store, "b", "reader");
    post(&store, "a", "p", 50);
    post(&store, "b", "p", 150);
    assert_eq!(
        sync_all(&store, "reader", "phone", 100),
        vec![("a".into(), 8)]
    );
    // Subscribing again starts after what was stored meanwhile.
    sub(&store, "b", "reader", TopicLimits::default()).unwrap();
    post(&store, "b", "p", 151);
    assert_eq!(
        sync_all(&store, "reader", "phone", 100),
        vec![("b".into(), 9)]
    );
}

#[test]
fn unread_comes_from_the_read_position() {
    let store = open();
    sub(&store, "t", "r", TopicLimits::default()).unwrap();
    for i in 0..5u16 {
        post(&store, "t", "p", i);
    }
    let page = store
        .recent_page(user("r"), None, 10)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(page.total_unread, 5);
    assert_eq!(page.conversations.len(), 1);
    assert_eq!(page.conversations[0].unread, 5);
    assert_eq!(page.conversations[0].last_seq, Seq(5));
    let read = |up_to: u64| {
        store
            .mark_read(MarkRead {
                user: user("r"),
                conv: ConvKey::Topic(tid("t")),
                up_to: Seq(up_to),
            })
            .unwrap()
            .wait()
    };
    assert_eq!(read(3).unwrap().unread, 2);
    assert_eq!(read(1).unwrap().read_seq, Seq(3), "forward only");
    let page = store
        .recent_page(user("r"), None, 10)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!((page.total_unread, page.conversations[0].unread), (2, 2));
    let r = store
        .mark_read(MarkRead {
            user: user("stranger"),
            conv: ConvKey::Topic(tid("t")),
            up_to: Seq(3),
        })
        .unwrap()
        .wait();
    assert!(matches!(r, Err(OpError::NotAllowed(_))), "{r:?}");
    // A retransmission is de-duplicated.
    let again = post(&store, "t", "p", 4);
    assert!(again.duplicate);
    assert_eq!(again.conv_seq, Seq(5));
}
