//! The session rules of topics (SPEC.md, Topics), sans-io: TOPIC_SUB, TOPIC_LIST, and SEND,
//! HISTORY and READ on a TOPIC conversation become a [`TopicPlan`] (or an immediate ERROR);
//! who may publish (operator-reserved prefixes) and the per-user publish rate are decided here
//! from the configuration and a time the caller passes in. Delivery reuses the read-diffusion
//! machinery of groups: storage hands back a [`tern_storage::GroupFanout`] with the
//! subscribers, and [`crate::groups::pushes`] turns it into PUSHes.

use std::borrow::Cow;
use std::collections::HashMap;

use tern_protocol::{
    Body, Conv, ConvKind, Direction, ErrorCode, Frame, MsgId, SendAck, SubOp, TopicListPage,
    TopicSummary,
};
use tern_storage::{
    ClientMsgId, HistoryDirection, MessageKind, Seq, Subscription, TopicAppendResult, TopicId,
    TopicLimits, TopicMessage,
};

use crate::auth::valid_id;
use crate::session::{error, Limits, Plan, SessionInfo};

/// TOPIC_LIST page sizes.
pub const LIST_DEFAULT: usize = 100;
pub const LIST_MAX: usize = 500;

/// Publisher entries kept by the rate limiter before idle ones are dropped.
const LIMITER_ENTRIES: usize = 10_000;

/// The operator's topic settings (`[topics]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Most subscribers per topic.
    pub max_subscribers: u32,
    /// Most topics one user subscribes to.
    pub max_per_user: u32,
    /// Messages one user may publish per second, and the burst on top.
    pub posts_per_sec: u32,
    pub post_burst: u32,
    /// Reserved topic id prefixes and who may publish under each, longest prefix first.
    pub publishers: Vec<(String, Vec<String>)>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        let l = TopicLimits::default();
        TopicConfig {
            max_subscribers: l.max_subscribers,
            max_per_user: l.max_per_user,
            posts_per_sec: 10,
            post_burst: 20,
            publishers: Vec::new(),
        }
    }
}

impl TopicConfig {
    /// Orders the reserved prefixes longest first, so the first match is the longest.
    pub fn with_publishers(mut self, mut publishers: Vec<(String, Vec<String>)>) -> Self {
        publishers.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        self.publishers = publishers;
        self
    }

    /// The caps storage checks a subscription against.
    pub fn limits(&self) -> TopicLimits {
        TopicLimits {
            max_subscribers: self.max_subscribers,
            max_per_user: self.max_per_user,
        }
    }

    /// Whether `user` may publish to `topic`: anyone, unless the longest reserved prefix the
    /// topic id starts with lists other publishers.
    pub fn may_publish(&self, user: &str, topic: &str) -> bool {
        match self
            .publishers
            .iter()
            .find(|(p, _)| topic.starts_with(p.as_str()))
        {
            Some((_, users)) => users.iter().any(|u| u == user),
            None => true,
        }
    }
}

/// A token bucket (milli-tokens, so that rates below one per millisecond stay exact).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    last_ms: u64,
}

impl Bucket {
    fn full(burst: u32, now_ms: u64) -> Self {
        Bucket {
            milli: u64::from(burst.max(1)) * 1000,
            last_ms: now_ms,
        }
    }

    /// Refills for the time since the last call, then takes one token if there is one.
    fn take(&mut self, now_ms: u64, rate: u32, burst: u32) -> bool {
        let cap = u64::from(burst.max(1)) * 1000;
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.milli = (self.milli + elapsed * u64::from(rate)).min(cap);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// The topic settings with the per-user publish rate, shared by every core (a user's
/// connections may sit on different cores; the rate is per user).
#[derive(Debug, Default)]
pub struct TopicService {
    pub config: TopicConfig,
    posts: std::sync::Mutex<HashMap<String, Bucket>>,
}

impl TopicService {
    pub fn new(config: TopicConfig) -> Self {
        TopicService {
            config,
            posts: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Takes one post from `user`'s allowance at `now_ms`; false when it is used up.
    pub fn allow_post(&self, user: &str, now_ms: u64) -> bool {
        let (rate, burst) = (self.config.posts_per_sec, self.config.post_burst);
        // A panic elsewhere while holding the lock leaves buckets that are still valid.
        let mut posts = self
            .posts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if posts.len() >= LIMITER_ENTRIES && !posts.contains_key(user) {
            // A publisher idle for a full refill is at its burst again: forgetting it
            // changes nothing.
            let full_ms = u64::from(burst.max(1)) * 1000 / u64::from(rate.max(1));
            posts.retain(|_, b| now_ms.saturating_sub(b.last_ms) < full_ms);
        }
        posts
            .entry(user.to_owned())
            .or_insert_with(|| Bucket::full(burst, now_ms))
            .take(now_ms, rate, burst)
    }
}

/// What a topic request asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPlan {
    /// Subscribe (`add`) the session user to a topic or unsubscribe them; answer OK.
    Sub { topic: TopicId, add: bool },
    /// The session user's subscriptions after `after`.
    List {
        after: Option<TopicId>,
        limit: usize,
    },
    /// Publish a message; answer SEND_ACK and push it to the subscribers.
    Send { msg: TopicMessage, msg_id: MsgId },
    /// A page of the topic's timeline.
    History {
        topic: TopicId,
        anchor: Seq,
        direction: HistoryDirection,
        limit: usize,
    },
    /// Move the subscriber's read position; answer OK.
    Read { topic: TopicId, up_to: Seq },
}

/// The topic a plan acts on (`None` for TOPIC_LIST).
pub fn topic_of(p: &TopicPlan) -> Option<&TopicId> {
    match p {
        TopicPlan::Sub { topic, .. }
        | TopicPlan::History { topic, .. }
        | TopicPlan::Read { topic, .. } => Some(topic),
        TopicPlan::Send { msg, .. } => Some(&msg.topic),
        TopicPlan::List { .. } => None,
    }
}

fn invalid(rid: u32, message: &str) -> Box<Plan> {
    Box::new(Plan::Reply(error(
        rid,
        ErrorCode::INVALID_ARGUMENT,
        message,
    )))
}

fn topic_id(rid: u32, id: &str) -> Result<TopicId, Box<Plan>> {
    //= SPEC.md#topics
    //# A topic id is 1..=64 bytes of UTF-8 without control characters
    if !valid_id(id) {
        return Err(invalid(rid, "invalid topic id"));
    }
    TopicId::new(id).map_err(|e| invalid(rid, &e.to_string()))
}

fn plan_of(p: TopicPlan) -> Plan {
    Plan::Topic(Box::new(p))
}

/// Whether a frame is served by this module: TOPIC_SUB, TOPIC_LIST, or a SEND, HISTORY or READ
/// naming a TOPIC conversation.
pub fn is_topic_request(frame: &Frame<'_>) -> bool {
    match &frame.body {
        Body::TopicSub(_) | Body::TopicList(_) => true,
        Body::Send(m) => m.to.kind == ConvKind::TOPIC,
        Body::History(h) => h.conv.kind == ConvKind::TOPIC,
        Body::Read(r) => r.conv.kind == ConvKind::TOPIC,
        _ => false,
    }
}

/// The plan for a topic frame.
pub fn plan(s: &SessionInfo, frame: &Frame<'_>, limits: &Limits) -> Plan {
    match plan_inner(s, frame, limits) {
        Ok(p) => p,
        Err(p) => *p,
    }
}

fn plan_inner(s: &SessionInfo, frame: &Frame<'_>, limits: &Limits) -> Result<Plan, Box<Plan>> {
    let rid = frame.request_id;
    Ok(match &frame.body {
        Body::TopicSub(t) => {
            let add = match t.op {
                SubOp::ADD => true,
                SubOp::REMOVE => false,
                _ => return Err(invalid(rid, "unknown topic operation")),
            };
            plan_of(TopicPlan::Sub {
                topic: topic_id(rid, &t.topic)?,
                add,
            })
        }
        Body::TopicList(l) => {
            let after = if l.cursor.is_empty() {
                None
            } else {
                match topic_id(rid, &l.cursor) {
                    Ok(t) => Some(t),
                    Err(_) => return Err(invalid(rid, "cursor was not issued by this server")),
                }
            };
            let limit = match l.limit {
                0 => LIST_DEFAULT,
                n => usize::from(n).min(LIST_MAX),
            };
            plan_of(TopicPlan::List { after, limit })
        }
        Body::Send(m) => {
            if m.kind.0 == 0 || m.kind.0 >= 0x40 {
                return Err(invalid(
                    rid,
                    "message kind must be a content kind (1..=0x3f)",
                ));
            }
            plan_of(TopicPlan::Send {
                msg: TopicMessage {
                    topic: topic_id(rid, &m.to.id)?,
                    sender: s.user.clone(),
                    sender_device: s.device.clone(),
                    client_msg_id: ClientMsgId(m.msg_id.0),
                    kind: MessageKind(m.kind.0),
                    body: m.body.to_vec(),
                },
                msg_id: m.msg_id,
            })
        }
        Body::History(h) => {
            let (direction, anchor) = match h.direction {
                Direction::BEFORE if h.seq == 0 => (HistoryDirection::Before, Seq::MAX),
                Direction::BEFORE => (HistoryDirection::Before, Seq(h.seq)),
                Direction::AFTER => (HistoryDirection::After, Seq(h.seq)),
                _ => return Err(invalid(rid, "unknown history direction")),
            };
            let limit = match h.limit {
                0 => limits.history.default,
                n => usize::from(n).min(limits.history.max),
            };
            plan_of(TopicPlan::History {
                topic: topic_id(rid, &h.conv.id)?,
                anchor,
                direction,
                limit,
            })
        }
        Body::Read(r) => plan_of(TopicPlan::Read {
            topic: topic_id(rid, &r.conv.id)?,
            up_to: Seq(r.conv_seq),
        }),
        _ => return Err(invalid(rid, "not a topic request")),
    })
}

/// The wire name of a topic conversation.
pub fn conv(topic: &TopicId) -> Conv<'static> {
    Conv {
        kind: ConvKind::TOPIC,
        id: Cow::Owned(topic.as_str().to_owned()),
    }
}

/// TOPIC_LIST_PAGE from a page of subscriptions.
pub fn list_page(rid: u32, subs: &[Subscription], more: bool) -> Frame<'static> {
    let next = match (more, subs.last()) {
        (true, Some(last)) => last.topic.as_str().to_owned(),
        _ => String::new(),
    };
    Frame::new(
        rid,
        Body::TopicListPage(TopicListPage {
            next_cursor: Cow::Owned(next),
            topics: subs
                .iter()
                .map(|s| TopicSummary {
                    topic: Cow::Owned(s.topic.as_str().to_owned()),
                    subscribers: u64::from(s.subscribers),
                    last_seq: s.last_seq.0,
                    read_seq: s.read_seq.0.max(s.since.0).min(s.last_seq.0),
                })
                .collect(),
        }),
    )
}

/// SEND_ACK of a topic message (`inbox_seq` 0: topics have no inbox entries).
pub fn send_ack(rid: u32, msg_id: MsgId, r: &TopicAppendResult) -> Frame<'static> {
    Frame::new(
        rid,
        Body::SendAck(SendAck {
            msg_id,
            conv_seq: r.conv_seq.0,
            inbox_seq: 0,
            time: r.time_ms,
        }),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_protocol::{ListRequest, Send, TopicSub};
    use tern_storage::{DeviceId, UserId};

    fn me() -> SessionInfo {
        SessionInfo {
            user: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            session_id: 1,
        }
    }

    fn code(p: Plan) -> ErrorCode {
        match p {
            Plan::Reply(f) => match f.body {
                Body::Error(e) => e.code,
                other => panic!("not an error: {other:?}"),
            },
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn requests_are_validated() {
        let l = Limits::default();
        let sub = |op, topic: &'static str| {
            plan(
                &me(),
                &Frame::new(
                    3,
                    Body::TopicSub(TopicSub {
                        op,
                        topic: Cow::Borrowed(topic),
                    }),
                ),
                &l,
            )
        };
        assert_eq!(code(sub(SubOp(9), "news")), ErrorCode::INVALID_ARGUMENT);
        assert_eq!(code(sub(SubOp::ADD, "")), ErrorCode::INVALID_ARGUMENT);
        assert_eq!(
            code(sub(SubOp::ADD, "a\u{7}b")),
            ErrorCode::INVALID_ARGUMENT
        );
        assert!(
            matches!(sub(SubOp::REMOVE, "news"), Plan::Topic(p) if matches!(*p, TopicPlan::Sub { add: false, .. }))
        );
        let list = plan(
            &me(),
            &Frame::new(
                4,
                Body::TopicList(ListRequest {
                    cursor: Cow::Borrowed(""),
                    limit: 9000,
                }),
            ),
            &l,
        );
        assert!(
            matches!(list, Plan::Topic(p) if *p == TopicPlan::List { after: None, limit: LIST_MAX })
        );
        let event = plan(
            &me(),
            &Frame::new(
                5,
                Body::Send(Send {
                    to: Conv {
                        kind: ConvKind::TOPIC,
                        id: Cow::Borrowed("news"),
                    },
                    msg_id: MsgId([1; 16]),
                    kind: tern_protocol::MessageKind(0x41),
                    body: Cow::Borrowed(b"x"),
                }),
            ),
            &l,
        );
        assert_eq!(code(event), ErrorCode::INVALID_ARGUMENT);
    }

    #[test]
    fn reserved_prefixes_name_their_publishers() {
        let c = TopicConfig::default().with_publishers(vec![
            ("news/".into(), vec!["newsroom".into()]),
            ("news/local/".into(), vec!["town".into()]),
        ]);
        assert!(c.may_publish("anyone", "chat"));
        assert!(c.may_publish("newsroom", "news/world"));
        assert!(!c.may_publish("anyone", "news/world"));
        // The longest prefix decides.
        assert!(c.may_publish("town", "news/local/fair"));
        assert!(!c.may_publish("newsroom", "news/local/fair"));
    }

    #[test]
    fn the_publish_rate_is_per_user() {
        let s = TopicService::new(TopicConfig {
            posts_per_sec: 1,
            post_burst: 2,
            ..TopicConfig::default()
        });
        assert!(s.allow_post("a", 1000));
        assert!(s.allow_post("a", 1000));
        assert!(!s.allow_post("a", 1000));
        assert!(s.allow_post("b", 1000), "another user has their own");
        assert!(s.allow_post("a", 2000), "refilled");
    }
}
