//! Serving topic requests on a connection (SPEC.md, Topics): subscriptions and reads go to
//! storage, a published message is checked (reserved prefix, per-user rate, content filter),
//! stored once and pushed to every subscriber's online devices through the owner cores, as a
//! read-diffusion group message is. Also the topic part of SYNC, recorded as held like the
//! groups' part (`group_serve`).

use tern_protocol::{Body, Capabilities, ErrorCode, Frame, MIN_MAX_BODY};
use tern_storage::{ConvKey, MarkRead};

use super::{Connection, Delivery, State};
use crate::groups;
use crate::session::{self, SessionInfo};
use crate::topics::{self, TopicPlan};

impl Connection {
    /// Serves one topic request.
    pub(super) async fn topic(
        &mut self,
        frame: &Frame<'_>,
        plan: TopicPlan,
        info: &SessionInfo,
    ) -> bool {
        let rid = frame.request_id;
        let caps = self.session.as_ref().map_or(Capabilities::NONE, |s| s.caps);
        //= SPEC.md#topics
        //# Topics are served under the TOPICS capability
        if !caps.contains(Capabilities::TOPICS) {
            let refusal = session::error(
                rid,
                ErrorCode::INVALID_ARGUMENT,
                format!(
                    "{} on topics is not supported: capability not negotiated",
                    frame.frame_type()
                ),
            );
            return self.write_frame(&refusal).await;
        }
        let node = std::sync::Arc::clone(&self.core.node);
        let store = &node.store;
        let service = &node.cfg.topics;
        let open = |c: &Connection| c.conn.state() == State::Open;
        match plan {
            TopicPlan::Sub { topic, add } => {
                let q = if add {
                    store.topic_subscribe(topic, info.user.clone(), service.config.limits())
                } else {
                    store.topic_unsubscribe(topic, info.user.clone())
                };
                if self.storage(rid, q).await.is_none() {
                    return open(self);
                }
                self.write_frame(&Frame::new(rid, Body::Ok)).await
            }
            TopicPlan::List { after, limit } => {
                let q = store.topic_list(info.user.clone(), after, limit);
                let Some((subs, more)) = self.storage(rid, q).await else {
                    return open(self);
                };
                self.write_frame(&topics::list_page(rid, &subs, more)).await
            }
            TopicPlan::Send { mut msg, msg_id } => {
                if !service
                    .config
                    .may_publish(msg.sender.as_str(), msg.topic.as_str())
                {
                    let refusal = session::error(
                        rid,
                        ErrorCode::FORBIDDEN,
                        format!(
                            "only its reserved publishers publish to topic {}",
                            msg.topic
                        ),
                    );
                    return self.write_frame(&refusal).await;
                }
                if !service.allow_post(msg.sender.as_str(), super::now_ms()) {
                    let refusal = session::error(
                        rid,
                        ErrorCode::RATE_LIMITED,
                        "publishing too fast, retry later",
                    );
                    return self.write_frame(&refusal).await;
                }
                let Some(body) = node.hooks.screen(msg.kind.0, std::mem::take(&mut msg.body))
                else {
                    return self.write_frame(&super::notify::rejected(rid)).await;
                };
                msg.body = body;
                let Some(r) = self.storage(rid, store.append_topic(msg)).await else {
                    return open(self);
                };
                let ok = self.write_frame(&topics::send_ack(rid, msg_id, &r)).await;
                if let Some(fanout) = &r.fanout {
                    for p in crate::groups::pushes(fanout, Some((&info.user, info.session_id))) {
                        self.core.deliver(Delivery {
                            user: p.user,
                            except_session: p.except_session,
                            frame: p.frame,
                        });
                    }
                }
                ok
            }
            TopicPlan::History {
                topic,
                anchor,
                direction,
                limit,
            } => {
                let q = store.topic_history(topic.clone(), anchor, direction, limit + 1);
                let Some(msgs) = self.storage(rid, q).await else {
                    return open(self);
                };
                let max_out = self.session.as_ref().map_or(MIN_MAX_BODY, |s| s.max_out);
                self.write_frame(&session::history_page(
                    rid,
                    &info.user,
                    topics::conv(&topic),
                    direction,
                    msgs,
                    limit,
                    max_out,
                ))
                .await
            }
            TopicPlan::Read { topic, up_to } => {
                let req = MarkRead {
                    user: info.user.clone(),
                    conv: ConvKey::Topic(topic),
                    up_to,
                };
                if self.storage(rid, store.mark_read(req)).await.is_none() {
                    return open(self);
                }
                self.write_frame(&Frame::new(rid, Body::Ok)).await
            }
        }
    }

    /// Records the topic positions the last SYNC_PAGE of this connection handed out, once the
    /// device shows it holds them (its next SYNC or PUSH_ACK); as for groups, a failure only
    /// means a later page repeats them.
    pub(super) async fn ack_topic_positions(&mut self, info: &SessionInfo) {
        let Some(pulled) = self
            .session
            .as_mut()
            .and_then(|s| s.seat.as_mut())
            .map(|seat| std::mem::take(&mut seat.topic_pulled))
        else {
            return;
        };
        if pulled.is_empty() {
            return;
        }
        let submitted = self.core.node.store.put_topic_positions(
            info.user.clone(),
            info.device.clone(),
            pulled,
        );
        if let Ok(done) = submitted {
            let _ = done.await;
        }
    }

    /// Completes a SYNC_PAGE whose inbox and group parts are done with the device's topic
    /// messages (SPEC.md §SYNC: inbox, then groups, then topics).
    pub(super) async fn merge_topic_sync(
        &mut self,
        rid: u32,
        info: &SessionInfo,
        page: &mut Frame<'static>,
        limit: usize,
        max_out: u32,
    ) -> bool {
        let Body::SyncPage(p) = &page.body else {
            return true;
        };
        if p.more || p.messages.len() >= limit {
            return true;
        }
        let room = limit - p.messages.len();
        let q = self
            .core
            .node
            .store
            .topic_sync(info.user.clone(), info.device.clone(), room);
        let Some(part) = self.storage(rid, q).await else {
            return false;
        };
        if part.messages.is_empty() {
            return true;
        }
        let taken = groups::merge_sync(page, &info.user, &part.messages, part.more, max_out);
        let reached = groups::reached(&part.messages, &part.positions, taken, |c| match c {
            ConvKey::Topic(t) => Some(t),
            _ => None,
        });
        if let Some(s) = self.session.as_mut() {
            s.seat.get_or_insert_with(Box::default).topic_pulled = reached;
        }
        true
    }
}
