//! The writer's side of topics (crate `topics` module has the row layout): subscriptions
//! checked against the caps and written per topic and per user in one batch, messages stored
//! once (read diffusion), read positions and devices' SYNC positions.
//!
//! # Cache
//! The writer applies every change to a topic's rows, so it keeps each topic it touched in
//! memory (its subscribers with their subscription points, and read positions once loaded):
//! a message gets its subscriber list without reading a row. As for groups, a topic that is not
//! cached but whose rows a batch in flight changed waits for a barrier before it is loaded; the
//! same goes for a user's subscription count.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::engine::{Cf, Direction, EngineError, KvEngine, ScanRange};
use crate::error::OpError;
use crate::ids::{ConvKey, DeviceId, MessageFlags, Seq, TopicId, UserId};
use crate::keys::{self, prefix_end, KeyReader};
use crate::records::{
    access, bad, ArchivedSubscriptionRecord, ArchivedTopicRecord, CursorRecord, DedupRecordRef,
    MessageRecordRef, SubscriptionRecord, TopicRecord,
};
use crate::topics::{
    device_key, subscriber_key, subscription_key, topic_key, TopicAppendResult, TopicLimits,
    TopicMessage,
};
use crate::types::{Diffusion, GroupFanout, MarkRead, ReadState, StoredMessage};

use super::{done, Applied, PendingAppend, Reply, WriteCmd, WriterCore};

/// The topics and users the writer has loaded.
#[derive(Debug, Default)]
pub(crate) struct TopicCache {
    topics: HashMap<TopicId, TopicState>,
    /// Subscription count per user, loaded when a subscription needs it.
    per_user: HashMap<UserId, u32>,
}

impl TopicCache {
    pub(crate) fn len(&self) -> usize {
        self.topics.len() + self.per_user.len()
    }

    pub(crate) fn clear(&mut self) {
        self.topics.clear();
        self.per_user.clear();
    }
}

#[derive(Debug)]
struct TopicState {
    created_ms: u64,
    subs: BTreeMap<UserId, Sub>,
    /// The subscriber ids, built when a message needs them and dropped on any change.
    list: Option<Arc<[UserId]>>,
}

#[derive(Debug, Clone, Copy)]
struct Sub {
    since: u64,
    subscribed_ms: u64,
    /// The read position, loaded on first use.
    read: Option<u64>,
}

fn topic_conv(topic: &TopicId) -> Vec<u8> {
    let mut conv = Vec::new();
    keys::conv_prefix(&mut conv, &ConvKey::Topic(topic.clone()));
    conv
}

impl<E: KvEngine> WriterCore<E> {
    /// Applies a topic command (see `WriterCore::apply`).
    pub(super) fn apply_topic(&mut self, cmd: WriteCmd) -> Applied {
        Applied::Queued(match cmd {
            WriteCmd::TopicSub(topic, user, limits, tx) => {
                if self.topic_in_flight(&topic)
                    || (limits.is_some() && self.user_topics_in_flight(&user))
                {
                    return Applied::Barrier(WriteCmd::TopicSub(topic, user, limits, tx));
                }
                let r = match limits {
                    Some(l) => self.subscribe(&topic, &user, l),
                    None => self.unsubscribe(&topic, &user),
                };
                done(tx, r)
            }
            WriteCmd::AppendTopic(msg, tx) => {
                if self.topic_in_flight(&msg.topic) {
                    return Applied::Barrier(WriteCmd::AppendTopic(msg, tx));
                }
                let r = self.append_topic(msg);
                done(tx, r)
            }
            WriteCmd::TopicPositions(user, device, positions, tx) => {
                if self.topic_positions_in_flight(&user, &device, &positions) {
                    return Applied::Barrier(WriteCmd::TopicPositions(user, device, positions, tx));
                }
                let r = self.put_topic_positions(&user, &device, &positions);
                done(tx, r)
            }
            // `apply` routes only the three above here.
            other => return Applied::Barrier(other),
        })
    }

    /// Applies a READ of a topic: the subscriber's read position moves (forward only).
    pub(super) fn apply_topic_read(&mut self, req: MarkRead, tx: Reply<ReadState>) -> Applied {
        let ConvKey::Topic(topic) = req.conv.clone() else {
            return Applied::Barrier(WriteCmd::MarkRead(req, tx));
        };
        if self.topic_in_flight(&topic) {
            return Applied::Barrier(WriteCmd::MarkRead(req, tx));
        }
        let r = self.mark_topic_read(&req, &topic);
        Applied::Queued(done(tx, r))
    }

    fn topic_in_flight(&mut self, topic: &TopicId) -> bool {
        if self.topics.topics.contains_key(topic) {
            return false;
        }
        topic_key(&mut self.k1, topic);
        self.is_touched(Cf::Topics, 1)
    }

    fn user_topics_in_flight(&mut self, user: &UserId) -> bool {
        if self.topics.per_user.contains_key(user) {
            return false;
        }
        subscription_key(&mut self.k1, user, None);
        self.is_touched(Cf::Topics, 1)
    }

    fn topic_positions_in_flight(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        positions: &[(TopicId, Seq)],
    ) -> bool {
        if self.touched.is_empty() {
            return false;
        }
        positions.iter().any(|(topic, _)| {
            device_key(&mut self.k1, user, topic, device);
            self.is_touched(Cf::Topics, 1)
        })
    }

    /// Marks the rows of a topic and of a user's subscriptions changed by this batch.
    fn touch_topic(&mut self, topic: &TopicId, user: Option<&UserId>) {
        let mut key = Vec::new();
        topic_key(&mut key, topic);
        self.touch(Cf::Topics, &key);
        if let Some(u) = user {
            subscription_key(&mut key, u, None);
            self.touch(Cf::Topics, &key);
        }
    }

    /// Loads `topic` into the cache (an unknown topic is cached empty).
    fn load_topic(&mut self, topic: &TopicId) -> Result<(), EngineError> {
        if self.topics.topics.contains_key(topic) {
            return Ok(());
        }
        let mut key = Vec::new();
        topic_key(&mut key, topic);
        let created_ms = self
            .engine
            .get_with(Cf::Topics, &key, |v| {
                access::<ArchivedTopicRecord>(Cf::Topics, v).map(|r| r.created_ms.to_native())
            })?
            .transpose()?
            .unwrap_or(self.now);
        subscriber_key(&mut key, topic, None);
        let plen = key.len();
        let end = prefix_end(&key);
        let mut subs = BTreeMap::new();
        self.engine.scan(
            Cf::Topics,
            ScanRange {
                start: &key,
                end: end.as_deref(),
            },
            Direction::Forward,
            usize::MAX,
            &mut |k, v| {
                let mut r = KeyReader::new(&k[plen..]);
                let user = r.user().map_err(|e| bad(Cf::Topics, e))?;
                let rec = access::<ArchivedSubscriptionRecord>(Cf::Topics, v)?;
                subs.insert(
                    user,
                    Sub {
                        since: rec.since.to_native(),
                        subscribed_ms: rec.subscribed_ms.to_native(),
                        read: None,
                    },
                );
                Ok(())
            },
        )?;
        self.topics.topics.insert(
            topic.clone(),
            TopicState {
                created_ms,
                subs,
                list: None,
            },
        );
        Ok(())
    }

    /// How many topics `user` subscribes to (cached once counted).
    fn user_topic_count(&mut self, user: &UserId) -> Result<u32, EngineError> {
        if let Some(n) = self.topics.per_user.get(user) {
            return Ok(*n);
        }
        let mut key = Vec::new();
        subscription_key(&mut key, user, None);
        let end = prefix_end(&key);
        let n = self.engine.scan(
            Cf::Topics,
            ScanRange {
                start: &key,
                end: end.as_deref(),
            },
            Direction::Forward,
            usize::MAX,
            &mut |_, _| Ok(()),
        )?;
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.topics.per_user.insert(user.clone(), n);
        Ok(n)
    }

    /// The read position of a subscriber of a cached topic, loaded on first use.
    fn topic_read(&mut self, topic: &TopicId, user: &UserId) -> Result<u64, EngineError> {
        let Some(sub) = self
            .topics
            .topics
            .get(topic)
            .and_then(|t| t.subs.get(user))
            .copied()
        else {
            return Ok(0);
        };
        if let Some(read) = sub.read {
            return Ok(read);
        }
        let mut key = Vec::new();
        subscription_key(&mut key, user, Some(topic));
        let read = self
            .engine
            .get_with(Cf::Topics, &key, |v| {
                access::<ArchivedSubscriptionRecord>(Cf::Topics, v).map(|r| r.read.to_native())
            })?
            .transpose()?
            .unwrap_or(sub.since);
        if let Some(s) = self
            .topics
            .topics
            .get_mut(topic)
            .and_then(|t| t.subs.get_mut(user))
        {
            s.read = Some(read);
        }
        Ok(read)
    }

    /// Writes the topic's row with its current subscriber count.
    fn put_topic_row(&mut self, topic: &TopicId) -> Result<(), OpError> {
        let Some(t) = self.topics.topics.get_mut(topic) else {
            return Ok(());
        };
        t.list = None;
        let rec = TopicRecord {
            subscribers: t.subs.len() as u32,
            created_ms: t.created_ms,
            updated_ms: self.now,
        };
        let mut key = Vec::new();
        topic_key(&mut key, topic);
        self.put(Cf::Topics, &key, &rec)
    }

    /// Writes the user's subscription row (the one with the read position).
    fn put_subscription_row(
        &mut self,
        topic: &TopicId,
        user: &UserId,
        sub: Sub,
        read: u64,
    ) -> Result<(), OpError> {
        let rec = SubscriptionRecord {
            since: sub.since,
            read,
            subscribed_ms: sub.subscribed_ms,
            updated_ms: self.now,
        };
        let mut key = Vec::new();
        subscription_key(&mut key, user, Some(topic));
        self.put(Cf::Topics, &key, &rec)?;
        if let Some(s) = self
            .topics
            .topics
            .get_mut(topic)
            .and_then(|t| t.subs.get_mut(user))
        {
            s.read = Some(read);
        }
        Ok(())
    }

    /// Subscribes `user` to `topic` from its last seq; `false` when subscribed already.
    fn subscribe(
        &mut self,
        topic: &TopicId,
        user: &UserId,
        limits: TopicLimits,
    ) -> Result<bool, OpError> {
        self.load_topic(topic)?;
        let count = match self.topics.topics.get(topic) {
            Some(t) if t.subs.contains_key(user) => return Ok(false),
            Some(t) => t.subs.len() as u64,
            None => 0,
        };
        if count >= u64::from(limits.max_subscribers) {
            return Err(OpError::LimitExceeded("the topic has its most subscribers"));
        }
        let mine = self.user_topic_count(user)?;
        if mine >= limits.max_per_user {
            return Err(OpError::LimitExceeded(
                "subscribed to the most topics a user may",
            ));
        }
        let conv_bytes = topic_conv(topic);
        let c = self.conv_slot(&conv_bytes)?;
        let since = self.convs.get(c).last.0;
        let sub = Sub {
            since,
            subscribed_ms: self.now,
            read: Some(since),
        };
        if let Some(t) = self.topics.topics.get_mut(topic) {
            t.subs.insert(user.clone(), sub);
        }
        self.topics.per_user.insert(user.clone(), mine + 1);
        let rec = SubscriptionRecord {
            since,
            read: since,
            subscribed_ms: self.now,
            updated_ms: self.now,
        };
        let mut key = Vec::new();
        subscriber_key(&mut key, topic, Some(user));
        self.put(Cf::Topics, &key, &rec)?;
        self.put_subscription_row(topic, user, sub, since)?;
        self.put_topic_row(topic)?;
        self.touch_topic(topic, Some(user));
        Ok(true)
    }

    /// Ends `user`'s subscription to `topic`; `false` when there was none.
    fn unsubscribe(&mut self, topic: &TopicId, user: &UserId) -> Result<bool, OpError> {
        self.load_topic(topic)?;
        let removed = self
            .topics
            .topics
            .get_mut(topic)
            .and_then(|t| t.subs.remove(user))
            .is_some();
        if !removed {
            return Ok(false);
        }
        if let Some(n) = self.topics.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
        }
        let mut key = Vec::new();
        subscriber_key(&mut key, topic, Some(user));
        self.batch.delete(Cf::Topics, &key);
        subscription_key(&mut key, user, Some(topic));
        self.batch.delete(Cf::Topics, &key);
        self.put_topic_row(topic)?;
        self.touch_topic(topic, Some(user));
        Ok(true)
    }

    /// Stores a topic message once and hands back its subscribers.
    fn append_topic(&mut self, msg: TopicMessage) -> Result<TopicAppendResult, OpError> {
        if msg.kind.is_event() || msg.kind.0 == 0 {
            return Err(OpError::Invalid("event kinds cannot be sent as messages"));
        }
        let seen = self.dedup_check(&msg.sender, msg.client_msg_id)?;
        if let Some(e) = seen.earlier {
            return Ok(TopicAppendResult {
                conv_seq: e.conv_seq,
                time_ms: e.time_ms,
                duplicate: true,
                fanout: None,
            });
        }
        self.load_topic(&msg.topic)?;
        let sender_sub = self
            .topics
            .topics
            .get(&msg.topic)
            .and_then(|t| t.subs.get(&msg.sender))
            .copied();
        if sender_sub.is_some() {
            // Loaded before the batch changes, so a failed read fails this message alone.
            self.topic_read(&msg.topic, &msg.sender)?;
        }
        let conv_bytes = topic_conv(&msg.topic);
        let c = self.conv_slot(&conv_bytes)?;
        let seq = self.convs.get(c).last.next();
        let now = self.now;
        let mut key = Vec::with_capacity(conv_bytes.len() + 8);
        key.extend_from_slice(&conv_bytes);
        keys::put_seq(&mut key, seq);
        let row = MessageRecordRef {
            sender: msg.sender.as_str(),
            sender_device: msg.sender_device.as_str(),
            client_msg_id: msg.client_msg_id.0,
            time_ms: now,
            kind: msg.kind.0,
            flags: MessageFlags::READ_DIFFUSED.0,
            body: &msg.body,
        };
        self.put(Cf::Messages, &key, &row)?;
        self.set_conv_last(c, seq);
        let dedup = DedupRecordRef {
            conv: &conv_bytes,
            conv_seq: seq.0,
            sender_inbox_seq: 0,
            recipient_inbox_seq: 0,
            time_ms: now,
        };
        self.put(Cf::Dedup, &seen.key, &dedup)?;
        if let Some(sub) = sender_sub {
            // A subscriber has read what they publish.
            self.put_subscription_row(&msg.topic, &msg.sender, sub, seq.0)?;
            self.touch_topic(&msg.topic, None);
        }
        self.pending_dedup.insert(
            (seen.user, msg.client_msg_id.0),
            PendingAppend {
                conv: c,
                conv_seq: seq,
                sender_inbox_seq: Seq::ZERO,
                recipient_inbox_seq: Seq::ZERO,
                time_ms: now,
                gen: self.gen,
            },
        );
        let members = match self.topics.topics.get_mut(&msg.topic) {
            Some(t) => t
                .list
                .get_or_insert_with(|| t.subs.keys().cloned().collect())
                .clone(),
            None => Arc::from(Vec::new()),
        };
        let message = StoredMessage {
            conv: ConvKey::Topic(msg.topic.clone()),
            seq,
            sender: msg.sender,
            sender_device: msg.sender_device,
            client_msg_id: msg.client_msg_id,
            time_ms: now,
            kind: msg.kind,
            flags: MessageFlags::NONE,
            body: msg.body,
        };
        Ok(TopicAppendResult {
            conv_seq: seq,
            time_ms: now,
            duplicate: false,
            fanout: Some(GroupFanout {
                message,
                diffusion: Diffusion::READ,
                inboxes: Vec::new(),
                members,
            }),
        })
    }

    /// Moves a subscriber's read position (forward only, at most to the topic's last seq).
    fn mark_topic_read(&mut self, req: &MarkRead, topic: &TopicId) -> Result<ReadState, OpError> {
        self.load_topic(topic)?;
        let Some(sub) = self
            .topics
            .topics
            .get(topic)
            .and_then(|t| t.subs.get(&req.user))
            .copied()
        else {
            return Err(OpError::NotAllowed("not subscribed to the topic"));
        };
        let current = self.topic_read(topic, &req.user)?;
        let c = self.conv_slot(&topic_conv(topic))?;
        let last = self.convs.get(c).last;
        let read = current.max(req.up_to.0.min(last.0));
        if read != current {
            self.put_subscription_row(topic, &req.user, sub, read)?;
            self.touch_topic(topic, None);
        }
        Ok(ReadState {
            read_seq: Seq(read),
            unread: u32::try_from(last.0.saturating_sub(read.max(sub.since))).unwrap_or(u32::MAX),
            total_unread: 0,
            previous_read_seq: Seq(current),
        })
    }

    /// Records a device's SYNC positions in its topics (positions only move forward).
    fn put_topic_positions(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        positions: &[(TopicId, Seq)],
    ) -> Result<(), OpError> {
        let mut key = Vec::new();
        for (topic, seq) in positions {
            device_key(&mut key, user, topic, device);
            let current = self
                .engine
                .get_with(Cf::Topics, &key, |v| {
                    access::<crate::records::ArchivedCursorRecord>(Cf::Topics, v)
                        .map(|r| r.acked.to_native())
                })?
                .transpose()?
                .unwrap_or(0);
            if seq.0 <= current {
                continue;
            }
            let rec = CursorRecord {
                acked: seq.0,
                read: 0,
                updated_ms: self.now,
                since: 0,
            };
            self.put(Cf::Topics, &key, &rec)?;
            self.touch(Cf::Topics, &key);
        }
        Ok(())
    }
}
