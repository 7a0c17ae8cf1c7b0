//! Topics in the SDK (SPEC.md §7, Topics): subscribe to a named topic, list subscriptions,
//! publish to a topic and page its history. Subscriptions belong to the user and are kept by
//! the node across connections, so nothing is repeated after a reconnect; a topic's messages
//! arrive from [`Client::next_event`] as [`crate::Event::Message`] with conv kind TOPIC, online
//! by PUSH and after a reconnect by SYNC (de-duplicated like every message).
//!
//! Subscription requests are answered on the current connection (like group requests); a
//! publication goes through the client's send queue, with the same retransmission and
//! de-duplication as one-to-one messages.

use std::borrow::Cow;
use std::time::Duration;

use tern_protocol::{
    Body, Conv, ConvKind, HistoryPage, ListRequest, MessageKind, SendAck, SubOp, TopicListPage,
    TopicSub, TopicSummary,
};

use crate::client::{Client, PendingSend, SendError};

/// Topics per page the SDK asks for when it lists them all (the node caps pages at 500).
const LIST_PAGE: u16 = 500;

/// The wire name of a topic.
pub fn topic_conv(topic: &str) -> Conv<'static> {
    Conv {
        kind: ConvKind::TOPIC,
        id: Cow::Owned(topic.to_owned()),
    }
}

impl Client {
    /// Subscribes the user (all their devices) to `topic` from its next message on; already
    /// subscribed is fine. `LIMIT_EXCEEDED` (a full topic, or too many subscriptions) is
    /// [`SendError::Server`].
    pub fn topic_subscribe(&self, topic: &str, timeout: Duration) -> Result<(), SendError> {
        self.request_ok(sub(SubOp::ADD, topic), timeout)
    }

    /// Ends the user's subscription to `topic` (not subscribed is fine).
    pub fn topic_unsubscribe(&self, topic: &str, timeout: Duration) -> Result<(), SendError> {
        self.request_ok(sub(SubOp::REMOVE, topic), timeout)
    }

    /// One page of our subscriptions in topic id byte order; continue with the page's
    /// `next_cursor` until it is empty. `limit` 0: the node's default.
    pub fn topic_list_page(
        &self,
        cursor: &str,
        limit: u16,
        timeout: Duration,
    ) -> Result<TopicListPage<'static>, SendError> {
        let body = Body::TopicList(ListRequest {
            cursor: cursor.to_owned().into(),
            limit,
        });
        match self.request(body, timeout)?.body {
            Body::TopicListPage(page) => Ok(page),
            other => Err(SendError::Unexpected(other.frame_type())),
        }
    }

    /// All our subscriptions, page after page (at most 10,000 pages).
    pub fn topic_list(&self, timeout: Duration) -> Result<Vec<TopicSummary<'static>>, SendError> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        for _ in 0..10_000 {
            let page = self.topic_list_page(&cursor, LIST_PAGE, timeout)?;
            out.extend(page.topics);
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor.into_owned();
        }
        Ok(out)
    }

    /// Queues a message to a topic; it is sent (and retransmitted with the same message id)
    /// until acknowledged, like [`Client::send`].
    pub fn publish(
        &self,
        topic: &str,
        kind: MessageKind,
        body: Vec<u8>,
    ) -> Result<PendingSend, SendError> {
        self.send_to(topic_conv(topic), kind, body)
    }

    /// Publishes and waits for the SEND_ACK (retransmitting meanwhile); a refusal
    /// (`FORBIDDEN` under a reserved prefix, `RATE_LIMITED`…) is [`SendError::Server`].
    pub fn publish_wait(
        &self,
        topic: &str,
        kind: MessageKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<SendAck, SendError> {
        self.send_to_wait(topic_conv(topic), kind, body, timeout)
    }

    /// Marks a topic read up to `conv_seq` (subscribers only).
    pub fn topic_read(
        &self,
        topic: &str,
        conv_seq: u64,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let body = Body::Read(tern_protocol::Read {
            conv: topic_conv(topic),
            conv_seq,
        });
        self.request_ok(body, timeout)
    }

    /// One HISTORY page of a topic (see [`Client::history`]).
    pub fn topic_history(
        &self,
        topic: &str,
        before: u64,
        limit: u16,
        timeout: Duration,
    ) -> Result<HistoryPage<'static>, SendError> {
        self.history(topic_conv(topic), before, limit, timeout)
    }
}

fn sub(op: SubOp, topic: &str) -> Body<'static> {
    Body::TopicSub(TopicSub {
        op,
        topic: topic.to_owned().into(),
    })
}
