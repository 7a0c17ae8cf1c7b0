//! Topics (SPEC.md, Topics): named publish/subscribe conversations stored by read diffusion.
//! A message is stored once in the topic's timeline (`messages`, conv kind TOPIC) with its dedup
//! row; subscribers keep a subscription point and a read position, never a row per message.
//!
//! # Rows (family `topics`)
//! | key | value |
//! |---|---|
//! | `01 ‖ id(topic)` | subscriber count, created and updated ms |
//! | `02 ‖ id(topic) ‖ id(user)` | the subscription (subscription point, subscribed ms): the topic's subscribers, one prefix scan |
//! | `03 ‖ id(user) ‖ id(topic)` | the same subscription with the user's read position: the user's topics, one prefix scan |
//! | `04 ‖ id(user) ‖ id(topic) ‖ id(device)` | the device's SYNC position in the topic (a cursor row) |
//!
//! The tag byte keeps each kind of row in its own key range. A message costs the message row,
//! its dedup row, and the publisher's subscription row when the publisher is subscribed (their
//! read position moves to what they publish): at most three rows whatever the subscriber count.
//! A subscription costs three rows (topic, `02`, `03`). Device positions are left behind by an
//! unsubscription: a later subscription point is past them, so they are never used again.
//!
//! Writes go through the single writer (`core::topics`); this module holds the read queries
//! (run on the reader threads) and the [`Store`] calls.

use crate::engine::{Cf, Direction, EngineError, KvEngine, ScanRange};
use crate::error::SubmitError;
use crate::ids::{ClientMsgId, ConvKey, DeviceId, MessageKind, Seq, TopicId, UserId};
use crate::keys::{self, prefix_end, KeyReader};
use crate::read::{self, last_seq_in};
use crate::records::{
    access, bad, stored_message, ArchivedCursorRecord, ArchivedMessageRecord,
    ArchivedSubscriptionRecord, ArchivedTopicRecord,
};
use crate::store::{Completion, Store};
use crate::types::{GroupFanout, HistoryDirection, RecentConversation, StoredMessage};

/// Tag of a topic's row.
pub(crate) const TAG_TOPIC: u8 = 1;
/// Tag of a subscription under its topic.
pub(crate) const TAG_SUBSCRIBER: u8 = 2;
/// Tag of a subscription under its user.
pub(crate) const TAG_SUBSCRIPTION: u8 = 3;
/// Tag of a device's SYNC position.
pub(crate) const TAG_DEVICE: u8 = 4;

/// Most messages a SYNC page's topic part scans per call per topic.
const SCAN_CHUNK: usize = 256;

/// `01 ‖ id(topic)`.
pub(crate) fn topic_key(out: &mut Vec<u8>, topic: &TopicId) {
    out.clear();
    out.push(TAG_TOPIC);
    keys::put_id(out, topic.as_str());
}

/// `02 ‖ id(topic) ‖ id(user)`; without `user`, the prefix of the topic's subscribers.
pub(crate) fn subscriber_key(out: &mut Vec<u8>, topic: &TopicId, user: Option<&UserId>) {
    out.clear();
    out.push(TAG_SUBSCRIBER);
    keys::put_id(out, topic.as_str());
    if let Some(u) = user {
        keys::put_id(out, u.as_str());
    }
}

/// `03 ‖ id(user) ‖ id(topic)`; without `topic`, the prefix of the user's subscriptions.
pub(crate) fn subscription_key(out: &mut Vec<u8>, user: &UserId, topic: Option<&TopicId>) {
    out.clear();
    out.push(TAG_SUBSCRIPTION);
    keys::put_id(out, user.as_str());
    if let Some(t) = topic {
        keys::put_id(out, t.as_str());
    }
}

/// `04 ‖ id(user) ‖ id(topic) ‖ id(device)`.
pub(crate) fn device_key(out: &mut Vec<u8>, user: &UserId, topic: &TopicId, device: &DeviceId) {
    out.clear();
    out.push(TAG_DEVICE);
    keys::put_id(out, user.as_str());
    keys::put_id(out, topic.as_str());
    keys::put_id(out, device.as_str());
}

/// Limits a subscription is checked against (configured by the node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicLimits {
    /// Most subscribers a topic may have.
    pub max_subscribers: u32,
    /// Most topics a user may subscribe to.
    pub max_per_user: u32,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits {
            max_subscribers: 100_000,
            max_per_user: 1_000,
        }
    }
}

/// A message published to a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMessage {
    pub topic: TopicId,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub client_msg_id: ClientMsgId,
    pub kind: MessageKind,
    pub body: Vec<u8>,
}

/// What publishing assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicAppendResult {
    /// Position in the topic's timeline.
    pub conv_seq: Seq,
    /// Server time.
    pub time_ms: u64,
    /// A retransmission: nothing was written and `fanout` is `None`.
    pub duplicate: bool,
    /// The stored message and the subscribers to push it to (read diffusion: `members`).
    pub fanout: Option<GroupFanout>,
}

/// One subscription of a user, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub topic: TopicId,
    /// The topic's current subscriber count.
    pub subscribers: u32,
    /// The topic's last seq.
    pub last_seq: Seq,
    /// The user's read position.
    pub read_seq: Seq,
    /// The subscription point.
    pub since: Seq,
    pub subscribed_ms: u64,
}

/// The topic part of a SYNC page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicSyncPage {
    /// Messages, topic by topic (in topic id byte order), each in seq order.
    pub messages: Vec<StoredMessage>,
    /// For each topic with messages on the page: the position the device reaches once it holds
    /// them.
    pub positions: Vec<(TopicId, Seq)>,
    /// More topic messages wait beyond this page.
    pub more: bool,
}

/// A subscription row: (since, read, subscribed ms).
fn subscription_at(
    engine: &impl KvEngine,
    key: &[u8],
) -> Result<Option<(u64, u64, u64)>, EngineError> {
    engine
        .get_with(Cf::Topics, key, |v| {
            access::<ArchivedSubscriptionRecord>(Cf::Topics, v).map(|r| {
                (
                    r.since.to_native(),
                    r.read.to_native(),
                    r.subscribed_ms.to_native(),
                )
            })
        })?
        .transpose()
}

/// The subscriber count of a topic (0 when it has no row).
pub(crate) fn subscriber_count(
    engine: &impl KvEngine,
    topic: &TopicId,
) -> Result<u32, EngineError> {
    let mut key = Vec::new();
    topic_key(&mut key, topic);
    Ok(engine
        .get_with(Cf::Topics, &key, |v| {
            access::<ArchivedTopicRecord>(Cf::Topics, v).map(|r| r.subscribers.to_native())
        })?
        .transpose()?
        .unwrap_or(0))
}

/// The last seq of a topic's timeline.
fn last_seq(engine: &impl KvEngine, topic: &TopicId) -> Result<Seq, EngineError> {
    let mut p = Vec::new();
    keys::conv_prefix(&mut p, &ConvKey::Topic(topic.clone()));
    last_seq_in(engine, Cf::Messages, &p)
}

/// Every subscription of `user`, in topic id byte order (keys sort by the id's length byte
/// first, so the scan order is re-sorted by bytes).
pub(crate) fn subscriptions(
    engine: &impl KvEngine,
    user: &UserId,
) -> Result<Vec<Subscription>, EngineError> {
    let mut prefix = Vec::new();
    subscription_key(&mut prefix, user, None);
    let plen = prefix.len();
    let end = prefix_end(&prefix);
    let mut subs = Vec::new();
    engine.scan(
        Cf::Topics,
        ScanRange {
            start: &prefix,
            end: end.as_deref(),
        },
        Direction::Forward,
        usize::MAX,
        &mut |k, v| {
            let mut r = KeyReader::new(&k[plen..]);
            let id = r.id().map_err(|e| bad(Cf::Topics, e))?;
            let topic = TopicId::new(id).map_err(|e| bad(Cf::Topics, e))?;
            let rec = access::<ArchivedSubscriptionRecord>(Cf::Topics, v)?;
            subs.push(Subscription {
                topic,
                subscribers: 0,
                last_seq: Seq::ZERO,
                read_seq: Seq(rec.read.to_native()),
                since: Seq(rec.since.to_native()),
                subscribed_ms: rec.subscribed_ms.to_native(),
            });
            Ok(())
        },
    )?;
    subs.sort_by(|a, b| a.topic.as_str().as_bytes().cmp(b.topic.as_str().as_bytes()));
    Ok(subs)
}

/// A page of `user`'s subscriptions after `after` (topic id byte order), with each topic's
/// subscriber count and last seq; the flag says whether more follow.
pub(crate) fn list(
    engine: &impl KvEngine,
    user: &UserId,
    after: Option<&TopicId>,
    limit: usize,
) -> Result<(Vec<Subscription>, bool), EngineError> {
    let all = subscriptions(engine, user)?;
    let mut page: Vec<Subscription> = all
        .into_iter()
        .filter(|s| after.is_none_or(|a| s.topic.as_str().as_bytes() > a.as_str().as_bytes()))
        .take(limit.saturating_add(1))
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    for s in &mut page {
        s.subscribers = subscriber_count(engine, &s.topic)?;
        s.last_seq = last_seq(engine, &s.topic)?;
    }
    Ok((page, more))
}

/// The topic messages `device` of `user` has not fetched: topic by topic in id byte order,
/// each after the later of the subscription point and the device's position. At most `limit`.
pub(crate) fn sync_page(
    engine: &impl KvEngine,
    user: &UserId,
    device: &DeviceId,
    limit: usize,
) -> Result<TopicSyncPage, EngineError> {
    let mut page = TopicSyncPage::default();
    let mut key = Vec::new();
    for sub in subscriptions(engine, user)? {
        if page.messages.len() >= limit {
            page.more = true;
            break;
        }
        device_key(&mut key, user, &sub.topic, device);
        let position = engine
            .get_with(Cf::Topics, &key, |v| {
                access::<ArchivedCursorRecord>(Cf::Topics, v).map(|r| r.acked.to_native())
            })?
            .transpose()?
            .unwrap_or(0);
        let start = position.max(sub.since.0);
        let conv = ConvKey::Topic(sub.topic.clone());
        let mut from = Vec::new();
        keys::message_key(&mut from, &conv, Seq(start).next());
        let mut p = Vec::new();
        keys::conv_prefix(&mut p, &conv);
        let plen = p.len();
        let end = prefix_end(&p);
        // A bounded scan per topic and call: what is left is the next page's.
        let want = (limit - page.messages.len()).min(SCAN_CHUNK);
        let mut reached = start;
        let mut taken = 0usize;
        engine.scan(
            Cf::Messages,
            ScanRange {
                start: &from,
                end: end.as_deref(),
            },
            Direction::Forward,
            want + 1,
            &mut |k, v| {
                if taken >= want {
                    page.more = true;
                    return Ok(());
                }
                let seq = KeyReader::new(&k[plen..])
                    .seq()
                    .map_err(|e| bad(Cf::Messages, e))?;
                let rec = access::<ArchivedMessageRecord>(Cf::Messages, v)?;
                page.messages.push(stored_message(conv.clone(), seq, rec)?);
                reached = seq.0;
                taken += 1;
                Ok(())
            },
        )?;
        if reached > start {
            page.positions.push((sub.topic.clone(), Seq(reached)));
        }
        if page.more {
            break;
        }
    }
    Ok(page)
}

/// Recent-list entries of `user`'s topics, with unread from cursors (the topic's last seq minus
/// the later of the read position and the subscription point), and their sum.
pub(crate) fn recent(
    engine: &impl KvEngine,
    user: &UserId,
) -> Result<(Vec<RecentConversation>, u64), EngineError> {
    let mut out = Vec::new();
    let mut total = 0u64;
    for sub in subscriptions(engine, user)? {
        let conv = ConvKey::Topic(sub.topic.clone());
        let last = last_seq(engine, &sub.topic)?;
        let read_seq = sub.read_seq.0.max(sub.since.0).min(last.0);
        let unread = u32::try_from(last.0 - read_seq).unwrap_or(u32::MAX);
        total += u64::from(unread);
        let last_time_ms = if last > Seq::ZERO {
            read::message(engine, &conv, last)?.map_or(sub.subscribed_ms, |m| m.time_ms)
        } else {
            sub.subscribed_ms
        };
        out.push(RecentConversation {
            conv,
            last_seq: last,
            last_time_ms,
            last_message: None,
            unread,
            read_seq: Seq(read_seq),
            mentioned: false,
            updated_ms: last_time_ms,
        });
    }
    Ok((out, total))
}

/// Whether `user` is subscribed to `topic`.
pub(crate) fn is_subscribed(
    engine: &impl KvEngine,
    user: &UserId,
    topic: &TopicId,
) -> Result<bool, EngineError> {
    let mut key = Vec::new();
    subscription_key(&mut key, user, Some(topic));
    Ok(subscription_at(engine, &key)?.is_some())
}

impl<E: KvEngine> Store<E> {
    /// Subscribes `user` to `topic` (durably, from the topic's last seq) within `limits`;
    /// `Ok(false)` when the user was subscribed already (nothing changes).
    pub fn topic_subscribe(
        &self,
        topic: TopicId,
        user: UserId,
        limits: TopicLimits,
    ) -> Result<Completion<bool>, SubmitError> {
        self.submit(|tx| crate::core::WriteCmd::TopicSub(topic, user, Some(limits), tx))
    }

    /// Ends `user`'s subscription to `topic`; `Ok(false)` when there was none.
    pub fn topic_unsubscribe(
        &self,
        topic: TopicId,
        user: UserId,
    ) -> Result<Completion<bool>, SubmitError> {
        self.submit(|tx| crate::core::WriteCmd::TopicSub(topic, user, None, tx))
    }

    /// Stores a topic message once (read diffusion) and returns the subscribers to push it to.
    /// A retransmission writes nothing and returns the original.
    pub fn append_topic(
        &self,
        msg: TopicMessage,
    ) -> Result<Completion<TopicAppendResult>, SubmitError> {
        self.submit(|tx| crate::core::WriteCmd::AppendTopic(msg, tx))
    }

    /// Records how far a device has fetched its topics' messages (forward only).
    pub fn put_topic_positions(
        &self,
        user: UserId,
        device: DeviceId,
        positions: Vec<(TopicId, Seq)>,
    ) -> Result<Completion<()>, SubmitError> {
        self.submit(|tx| crate::core::WriteCmd::TopicPositions(user, device, positions, tx))
    }

    /// Up to `limit` topic messages `device` of `user` has not fetched (the topic part of SYNC).
    pub fn topic_sync(
        &self,
        user: UserId,
        device: DeviceId,
        limit: usize,
    ) -> Result<Completion<TopicSyncPage>, SubmitError> {
        self.query(move |e| sync_page(e, &user, &device, limit))
    }

    /// A page of `user`'s subscriptions after `after`, and whether more follow.
    pub fn topic_list(
        &self,
        user: UserId,
        after: Option<TopicId>,
        limit: usize,
    ) -> Result<Completion<(Vec<Subscription>, bool)>, SubmitError> {
        self.query(move |e| list(e, &user, after.as_ref(), limit))
    }

    /// A page of a topic's timeline (open to every user).
    pub fn topic_history(
        &self,
        topic: TopicId,
        anchor: Seq,
        direction: HistoryDirection,
        limit: usize,
    ) -> Result<Completion<Vec<StoredMessage>>, SubmitError> {
        self.query(move |e| read::history(e, &ConvKey::Topic(topic), anchor, direction, limit))
    }

    /// A topic's subscriber count.
    pub fn topic_subscribers(&self, topic: TopicId) -> Result<Completion<u32>, SubmitError> {
        self.query(move |e| subscriber_count(e, &topic))
    }

    /// Whether `user` is subscribed to `topic`.
    pub fn topic_subscribed(
        &self,
        user: UserId,
        topic: TopicId,
    ) -> Result<Completion<bool>, SubmitError> {
        self.query(move |e| is_subscribed(e, &user, &topic))
    }
}
