//! Serving group requests on a connection: each [`GroupPlan`] goes to storage (which checks
//! roles and membership in the batch that applies it), the answer goes back, and new timeline
//! entries are pushed to the members' online devices. Also the read-diffused part of SYNC: the
//! messages a page hands out are recorded as the device's position once the device shows it
//! holds them (its next SYNC or PUSH_ACK on this connection).

use tern_protocol::{Body, Capabilities, ErrorCode, Frame, MIN_MAX_BODY};
use tern_storage::{ConvKey, GroupId, GroupRequest, MarkRead};

use super::{Connection, Delivery, State};
use crate::groups::{self, GroupPlan};
use crate::push::GroupNote;
use crate::session::{self, SessionInfo};

/// Tries for a fresh group id before giving up (ids are 96 random bits: never in practice).
const ID_TRIES: usize = 3;

impl Connection {
    /// Routes the PUSHes of a new group timeline entry.
    fn push_group_entry(
        &self,
        fanout: &tern_storage::GroupFanout,
        except: Option<(&tern_storage::UserId, u64)>,
    ) {
        for p in groups::pushes(fanout, except) {
            self.core.deliver(Delivery {
                user: p.user,
                except_session: p.except_session,
                frame: p.frame,
            });
        }
    }

    /// Serves one group request.
    pub(super) async fn group(
        &mut self,
        frame: &Frame<'_>,
        plan: GroupPlan,
        info: &SessionInfo,
    ) -> bool {
        let rid = frame.request_id;
        let caps = self.session.as_ref().map_or(Capabilities::NONE, |s| s.caps);
        if let Some(refusal) = session::not_negotiated(caps, frame) {
            return self.write_frame(&refusal).await;
        }
        let store = std::sync::Arc::clone(&self.core.node.store);
        let open = |c: &Connection| c.conn.state() == State::Open;
        match plan {
            GroupPlan::Create { name, members } => {
                for _ in 0..ID_TRIES {
                    let bytes: [u8; 12] = rand::random();
                    let id: String = std::iter::once("g".to_owned())
                        .chain(bytes.iter().map(|b| format!("{b:02x}")))
                        .collect();
                    // A tenant's group is the tenant's: its id is scoped like its creator's.
                    let id = tern_storage::scoped(info.user.tenant(), &id);
                    let Ok(group) = GroupId::new(id) else {
                        break;
                    };
                    let req = GroupRequest {
                        group,
                        by: info.user.clone(),
                        by_device: info.device.clone(),
                        op: tern_storage::GroupOp::Create {
                            name: name.clone(),
                            members: members.clone(),
                        },
                    };
                    match store.change_group(req) {
                        Ok(c) => match c.await {
                            Err(tern_storage::OpError::Invalid(_)) => continue,
                            Err(e) => {
                                return self.write_frame(&session::op_error(rid, &e)).await;
                            }
                            Ok(outcome) => {
                                let members = store.group_info(
                                    outcome.info.id.clone(),
                                    None,
                                    groups::INFO_MEMBERS,
                                );
                                let Some((info_now, list)) = self.storage(rid, members).await
                                else {
                                    return open(self);
                                };
                                let ok = self
                                    .write_frame(&groups::info_frame(rid, &info_now, &list))
                                    .await;
                                if let Some(event) = &outcome.event {
                                    self.push_group_entry(event, None);
                                }
                                return ok;
                            }
                        },
                        Err(e) => return self.write_frame(&session::submit_error(rid, e)).await,
                    }
                }
                self.write_frame(&session::error(
                    rid,
                    ErrorCode::INTERNAL,
                    "could not pick a group id",
                ))
                .await
            }
            GroupPlan::Change { group, op } => {
                let req = GroupRequest {
                    group,
                    by: info.user.clone(),
                    by_device: info.device.clone(),
                    op,
                };
                let Some(outcome) = self.storage(rid, store.change_group(req)).await else {
                    return open(self);
                };
                let ok = self.write_frame(&Frame::new(rid, Body::Ok)).await;
                if let Some(event) = &outcome.event {
                    self.push_group_entry(event, None);
                }
                ok
            }
            GroupPlan::Send { mut msg, msg_id } => {
                //= SPEC.md#send
                //# a match either refuses the SEND with `CONTENT_REJECTED`
                let hooks = &self.core.node.hooks;
                let Some(body) = hooks.screen(msg.kind.0, std::mem::take(&mut msg.body)) else {
                    return self.write_frame(&super::notify::rejected(rid)).await;
                };
                msg.body = body;
                let note = hooks.push.is_some().then(|| GroupNote::new(&msg));
                let Some(r) = self.storage(rid, store.append_group(msg)).await else {
                    return open(self);
                };
                let ok = self.write_frame(&groups::send_ack(rid, msg_id, &r)).await;
                if let Some(fanout) = &r.fanout {
                    self.push_group_entry(fanout, Some((&info.user, info.session_id)));
                }
                if let Some(note) = note {
                    self.core.group_offline_push(&note, &r);
                }
                ok
            }
            GroupPlan::Recall { group, seq, msg_id } => {
                let req = tern_storage::Recall {
                    conv: ConvKey::Group(group),
                    seq,
                    by: info.user.clone(),
                    by_device: info.device.clone(),
                    client_msg_id: tern_storage::ClientMsgId(msg_id.0),
                    window_ms: self.core.node.cfg.limits.recall_window_ms,
                };
                let Some(r) = self.storage(rid, store.recall_group(req)).await else {
                    return open(self);
                };
                let ok = self.write_frame(&groups::send_ack(rid, msg_id, &r)).await;
                if let Some(fanout) = &r.fanout {
                    self.push_group_entry(fanout, Some((&info.user, info.session_id)));
                }
                ok
            }
            GroupPlan::History {
                group,
                anchor,
                direction,
                limit,
            } => {
                let q = store.group_history(
                    group.clone(),
                    info.user.clone(),
                    anchor,
                    direction,
                    limit + 1,
                );
                let Some(msgs) = self.storage(rid, q).await else {
                    return open(self);
                };
                let max_out = self.session.as_ref().map_or(MIN_MAX_BODY, |s| s.max_out);
                self.write_frame(&session::history_page(
                    rid,
                    &info.user,
                    tern_protocol::Conv::group(group.as_str().to_owned()),
                    direction,
                    msgs,
                    limit,
                    max_out,
                ))
                .await
            }
            GroupPlan::Read { group, up_to } => {
                let req = MarkRead {
                    user: info.user.clone(),
                    conv: tern_storage::ConvKey::Group(group.clone()),
                    up_to,
                };
                let Some(state) = self.storage(rid, store.mark_read(req)).await else {
                    return open(self);
                };
                let ok = self.write_frame(&Frame::new(rid, Body::Ok)).await;
                if state.read_seq > state.previous_read_seq {
                    // Who the READ is a receipt for; a failed lookup only loses the notices
                    // (GROUP_RECEIPTS still tells).
                    let senders = match store.group_read_senders(
                        group.clone(),
                        info.user.clone(),
                        state.previous_read_seq,
                        state.read_seq,
                        groups::RECEIPT_SCAN,
                    ) {
                        Ok(c) => c.await.unwrap_or_default(),
                        Err(_) => Vec::new(),
                    };
                    let receipts = groups::read_receipts(
                        info,
                        &group,
                        &senders,
                        state.read_seq,
                        super::now_ms(),
                    );
                    for p in receipts {
                        self.core.deliver(Delivery {
                            user: p.user,
                            except_session: p.except_session,
                            frame: p.frame,
                        });
                    }
                }
                ok
            }
            GroupPlan::Receipts {
                group,
                seqs,
                readers,
            } => {
                let q = store.group_receipts(group.clone(), info.user.clone(), seqs, readers);
                let Some(r) = self.storage(rid, q).await else {
                    return open(self);
                };
                self.write_frame(&groups::receipts_page(rid, &group, &r))
                    .await
            }
            GroupPlan::List { after, limit } => {
                let Some(all) = self.storage(rid, store.my_groups(info.user.clone())).await else {
                    return open(self);
                };
                self.write_frame(&groups::list_page(rid, &all, after.as_ref(), limit))
                    .await
            }
            GroupPlan::Get { group } => {
                let q = store.group_info(group, Some(info.user.clone()), groups::INFO_MEMBERS);
                let Some((g, members)) = self.storage(rid, q).await else {
                    return open(self);
                };
                self.write_frame(&groups::info_frame(rid, &g, &members))
                    .await
            }
        }
    }

    /// Records the read-diffused positions the last SYNC_PAGE of this connection handed out:
    /// the device asked for more (or acknowledged), so it holds them. Waits until they are
    /// stored, so that the page this SYNC reads next starts after them; a failure only means a
    /// later page repeats them (devices de-duplicate by conv_seq).
    pub(super) async fn ack_group_positions(&mut self, info: &SessionInfo) {
        let Some(pulled) = self
            .session
            .as_mut()
            .and_then(|s| s.seat.as_mut())
            .map(|seat| std::mem::take(&mut seat.group_pulled))
        else {
            return;
        };
        if pulled.is_empty() {
            return;
        }
        let submitted = self.core.node.store.put_group_positions(
            info.user.clone(),
            info.device.clone(),
            pulled,
        );
        if let Ok(done) = submitted {
            let _ = done.await;
        }
    }

    /// Completes a SYNC_PAGE whose inbox part is done with the device's read-diffused group
    /// messages (SPEC.md §SYNC: inbox entries first, then groups in id byte order).
    pub(super) async fn merge_group_sync(
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
            .group_sync(info.user.clone(), info.device.clone(), room);
        let Some(part) = self.storage(rid, q).await else {
            return false;
        };
        if part.messages.is_empty() {
            return true;
        }
        let taken = groups::merge_sync(page, &info.user, &part.messages, part.more, max_out);
        let reached = groups::reached(&part.messages, &part.positions, taken, |c| match c {
            ConvKey::Group(g) => Some(g),
            _ => None,
        });
        if let Some(s) = self.session.as_mut() {
            s.seat.get_or_insert_with(Box::default).group_pulled = reached;
        }
        true
    }
}
