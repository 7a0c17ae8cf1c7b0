//! The session rules of groups (SPEC.md, Groups), sans-io: GROUP_* frames, SEND, HISTORY and
//! READ on a GROUP conversation become a [`GroupPlan`] (or an immediate ERROR), and the builders
//! below turn storage results into the frames to answer and the PUSHes to route. Role checks
//! are not here: the storage writer makes them in the batch that applies a change, so a check
//! and its change cannot be separated by another change.

use std::borrow::Cow;

use tern_protocol::{
    Body, Conv, ConvKind, Diffusion as WireDiffusion, Direction, ErrorCode, Frame,
    GroupInfo as WireGroupInfo, GroupListPage, GroupMember, GroupReceiptsPage, GroupSummary,
    MemberOp, MessageKind as WireKind, MsgId, ReadCount, Receipt, ReceiptKind, Role, SendAck,
    SyncPage,
};
use tern_storage::{
    ClientMsgId, Diffusion, GroupAppendResult, GroupFanout, GroupId, GroupInfo, GroupMessage,
    GroupOp, HistoryDirection, Member, MemberRole, MessageKind, Seq, StoredMessage, UserId,
};

use crate::auth::valid_id;
use crate::session::{error, wire_message, Limits, Plan, SessionInfo};

/// Longest group name, in bytes.
pub const MAX_NAME: usize = 128;
/// Longest announcement, in bytes.
pub const MAX_ANNOUNCEMENT: usize = 4096;
/// Longest avatar reference, in bytes.
pub const MAX_AVATAR: usize = 1024;
/// Most users one GROUP_CREATE or GROUP_MEMBERS names.
pub const MAX_USERS_PER_REQUEST: usize = 1000;
/// Most members a GROUP_INFO lists (`member_count` is the total).
pub const INFO_MEMBERS: usize = 500;
/// Most messages one GROUP_RECEIPTS asks about, and most users one SEND mentions.
pub const MAX_RECEIPT_SEQS: usize = 100;
pub const MAX_MENTIONS: usize = 100;
/// Newest messages of a READ's range whose senders get a RECEIPT (SPEC.md, Groups, "Receipts").
pub const RECEIPT_SCAN: usize = 100;
/// GROUP_LIST page sizes.
pub const LIST_DEFAULT: usize = 100;
pub const LIST_MAX: usize = 500;

/// What a group request asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupPlan {
    /// Create a group (the node picks its id); answer GROUP_INFO.
    Create { name: String, members: Vec<UserId> },
    /// Any other change; answer OK.
    Change { group: GroupId, op: GroupOp },
    /// Store a group message; answer SEND_ACK and push it.
    Send { msg: GroupMessage, msg_id: MsgId },
    /// Recall message `seq` of a group (SPEC.md, RECALL); answer SEND_ACK for the RECALL event
    /// and push it like a group message.
    Recall {
        group: GroupId,
        seq: Seq,
        msg_id: MsgId,
    },
    /// A page of the group's timeline, for a member.
    History {
        group: GroupId,
        anchor: Seq,
        direction: HistoryDirection,
        limit: usize,
    },
    /// Mark the group read up to a seq; answer OK.
    Read { group: GroupId, up_to: Seq },
    /// The session user's groups after `after`.
    List {
        after: Option<GroupId>,
        limit: usize,
    },
    /// One group's metadata and members, for a member.
    Get { group: GroupId },
    /// Read receipts of some messages, for a member.
    Receipts {
        group: GroupId,
        seqs: Vec<Seq>,
        readers: bool,
    },
}

/// The group a plan acts on (`None` for GROUP_CREATE, whose id the node picks, and for
/// GROUP_LIST).
pub fn group_of(p: &GroupPlan) -> Option<&GroupId> {
    match p {
        GroupPlan::Change { group, .. }
        | GroupPlan::History { group, .. }
        | GroupPlan::Read { group, .. }
        | GroupPlan::Get { group }
        | GroupPlan::Receipts { group, .. }
        | GroupPlan::Recall { group, .. } => Some(group),
        GroupPlan::Send { msg, .. } => Some(&msg.group),
        GroupPlan::Create { .. } | GroupPlan::List { .. } => None,
    }
}

fn invalid(rid: u32, message: &str) -> Plan {
    Plan::Reply(error(rid, ErrorCode::INVALID_ARGUMENT, message))
}

fn group_id(rid: u32, id: &str) -> Result<GroupId, Box<Plan>> {
    if !valid_id(id) {
        return Err(Box::new(invalid(rid, "invalid group id")));
    }
    GroupId::new(id).map_err(|e| Box::new(invalid(rid, &e.to_string())))
}

fn user_ids(rid: u32, users: &[Cow<'_, str>]) -> Result<Vec<UserId>, Box<Plan>> {
    if users.len() > MAX_USERS_PER_REQUEST {
        return Err(Box::new(Plan::Reply(error(
            rid,
            ErrorCode::LIMIT_EXCEEDED,
            format!("at most {MAX_USERS_PER_REQUEST} users per request"),
        ))));
    }
    users
        .iter()
        .map(|u| {
            if !valid_id(u) {
                return Err(Box::new(invalid(rid, "invalid user id")));
            }
            UserId::new(u.as_ref()).map_err(|e| Box::new(invalid(rid, &e.to_string())))
        })
        .collect()
}

fn text(rid: u32, v: &str, max: usize, what: &str) -> Result<String, Box<Plan>> {
    if v.len() > max {
        return Err(Box::new(invalid(
            rid,
            &format!("{what} is longer than {max} bytes"),
        )));
    }
    Ok(v.to_owned())
}

fn plan_of(p: GroupPlan) -> Plan {
    Plan::Group(Box::new(p))
}

/// The plan for a group frame, or for SEND / HISTORY / READ on a GROUP conversation.
pub fn plan(s: &SessionInfo, frame: &Frame<'_>, limits: &Limits) -> Plan {
    match plan_inner(s, frame, limits) {
        Ok(p) => p,
        Err(p) => *p,
    }
}

fn plan_inner(s: &SessionInfo, frame: &Frame<'_>, limits: &Limits) -> Result<Plan, Box<Plan>> {
    let rid = frame.request_id;
    Ok(match &frame.body {
        Body::GroupCreate(c) => plan_of(GroupPlan::Create {
            name: text(rid, &c.name, MAX_NAME, "name")?,
            members: user_ids(rid, &c.members)?,
        }),
        Body::GroupUpdate(u) => {
            let opt = |v: &Option<Cow<'_, str>>, max, what| -> Result<_, Box<Plan>> {
                v.as_ref().map(|v| text(rid, v, max, what)).transpose()
            };
            plan_of(GroupPlan::Change {
                group: group_id(rid, &u.group)?,
                op: GroupOp::Update {
                    name: opt(&u.name, MAX_NAME, "name")?,
                    announcement: opt(&u.announcement, MAX_ANNOUNCEMENT, "announcement")?,
                    avatar: opt(&u.avatar, MAX_AVATAR, "avatar")?,
                },
            })
        }
        Body::GroupMembers(m) => {
            let group = group_id(rid, &m.group)?;
            let users = user_ids(rid, &m.users)?;
            //= SPEC.md#groups
            //# GROUP_MEMBERS `op`: 1 ADD, 2 REMOVE, 3 MUTE (`arg` = muted until, ms since the epoch), 4 UNMUTE,
            //# 5 SET_ROLE (`arg` = role 0 MEMBER or 1 ADMIN)
            let op = match m.op {
                MemberOp::ADD => GroupOp::Add(users),
                MemberOp::REMOVE => GroupOp::Remove(users),
                MemberOp::MUTE => GroupOp::Mute {
                    users,
                    until_ms: m.arg,
                },
                MemberOp::UNMUTE => GroupOp::Unmute(users),
                MemberOp::SET_ROLE => match m.arg {
                    0 => GroupOp::SetRole {
                        users,
                        role: MemberRole::MEMBER,
                    },
                    1 => GroupOp::SetRole {
                        users,
                        role: MemberRole::ADMIN,
                    },
                    _ => return Err(Box::new(invalid(rid, "role must be 0 MEMBER or 1 ADMIN"))),
                },
                _ => return Err(Box::new(invalid(rid, "unknown member operation"))),
            };
            plan_of(GroupPlan::Change { group, op })
        }
        Body::GroupLeave(g) => plan_of(GroupPlan::Change {
            group: group_id(rid, &g.group)?,
            op: GroupOp::Leave,
        }),
        Body::GroupTransfer(t) => {
            let to = user_ids(rid, std::slice::from_ref(&t.owner))?;
            plan_of(GroupPlan::Change {
                group: group_id(rid, &t.group)?,
                op: GroupOp::Transfer(
                    to.into_iter()
                        .next()
                        .ok_or_else(|| Box::new(invalid(rid, "no new owner named")))?,
                ),
            })
        }
        Body::GroupDisband(g) => plan_of(GroupPlan::Change {
            group: group_id(rid, &g.group)?,
            op: GroupOp::Disband,
        }),
        Body::GroupList(l) => {
            let after = if l.cursor.is_empty() {
                None
            } else {
                match group_id(rid, &l.cursor) {
                    Ok(g) => Some(g),
                    Err(_) => {
                        return Err(Box::new(invalid(
                            rid,
                            "cursor was not issued by this server",
                        )))
                    }
                }
            };
            let limit = match l.limit {
                0 => LIST_DEFAULT,
                n => usize::from(n).min(LIST_MAX),
            };
            plan_of(GroupPlan::List { after, limit })
        }
        Body::GroupGet(g) => plan_of(GroupPlan::Get {
            group: group_id(rid, &g.group)?,
        }),
        Body::Send(m) => send_plan(rid, s, m, &[])?,
        Body::SendWithMentions(m) => {
            //= SPEC.md#groups
            //# `mentions` in a SEND to a conversation that is not a GROUP: `INVALID_ARGUMENT`.
            if m.to.kind != ConvKind::GROUP {
                return Err(Box::new(invalid(
                    rid,
                    "mentions are only for group conversations",
                )));
            }
            send_plan(rid, s, &m.send(), &m.mentions)?
        }
        Body::GroupReceipts(q) => {
            if q.seqs.len() > MAX_RECEIPT_SEQS {
                return Err(Box::new(Plan::Reply(error(
                    rid,
                    ErrorCode::LIMIT_EXCEEDED,
                    format!("at most {MAX_RECEIPT_SEQS} messages per request"),
                ))));
            }
            if q.readers && q.seqs.len() > 1 {
                return Err(Box::new(invalid(
                    rid,
                    "readers are listed for one message at a time",
                )));
            }
            plan_of(GroupPlan::Receipts {
                group: group_id(rid, &q.group)?,
                seqs: q.seqs.iter().map(|&n| Seq(n)).collect(),
                readers: q.readers,
            })
        }
        Body::History(h) => {
            let (direction, anchor) = match h.direction {
                Direction::BEFORE if h.seq == 0 => (HistoryDirection::Before, Seq::MAX),
                Direction::BEFORE => (HistoryDirection::Before, Seq(h.seq)),
                Direction::AFTER => (HistoryDirection::After, Seq(h.seq)),
                _ => return Err(Box::new(invalid(rid, "unknown history direction"))),
            };
            let limit = match h.limit {
                0 => limits.history.default,
                n => usize::from(n).min(limits.history.max),
            };
            plan_of(GroupPlan::History {
                group: group_id(rid, &h.conv.id)?,
                anchor,
                direction,
                limit,
            })
        }
        Body::Recall(r) => plan_of(GroupPlan::Recall {
            group: group_id(rid, &r.conv.id)?,
            seq: Seq(r.conv_seq),
            msg_id: r.msg_id,
        }),
        Body::Read(r) => plan_of(GroupPlan::Read {
            group: group_id(rid, &r.conv.id)?,
            up_to: Seq(r.conv_seq),
        }),
        _ => invalid(rid, "not a group request"),
    })
}

/// The plan of a SEND to a group, with the members it mentions (SPEC.md, Groups, "Mentions":
/// the empty string is @all).
fn send_plan(
    rid: u32,
    s: &SessionInfo,
    m: &tern_protocol::Send<'_>,
    mentions: &[Cow<'_, str>],
) -> Result<Plan, Box<Plan>> {
    if m.kind.0 == 0 || m.kind.0 >= 0x40 {
        return Err(Box::new(invalid(
            rid,
            "message kind must be a content kind (1..=0x3f)",
        )));
    }
    if mentions.len() > MAX_MENTIONS {
        return Err(Box::new(Plan::Reply(error(
            rid,
            ErrorCode::LIMIT_EXCEEDED,
            format!("at most {MAX_MENTIONS} mentions per message"),
        ))));
    }
    let mention_all = mentions.iter().any(|u| u.is_empty());
    let named: Vec<Cow<'_, str>> = mentions.iter().filter(|u| !u.is_empty()).cloned().collect();
    Ok(plan_of(GroupPlan::Send {
        msg: GroupMessage {
            group: group_id(rid, &m.to.id)?,
            sender: s.user.clone(),
            sender_device: s.device.clone(),
            client_msg_id: ClientMsgId(m.msg_id.0),
            kind: MessageKind(m.kind.0),
            body: m.body.to_vec(),
            mentions: user_ids(rid, &named)?,
            mention_all,
        },
        msg_id: m.msg_id,
    }))
}

/// Whether a frame is served by this module: a GROUP_* request, or a SEND, HISTORY or READ
/// naming a GROUP conversation.
pub fn is_group_request(frame: &Frame<'_>) -> bool {
    match &frame.body {
        Body::GroupCreate(_)
        | Body::GroupUpdate(_)
        | Body::GroupMembers(_)
        | Body::GroupLeave(_)
        | Body::GroupTransfer(_)
        | Body::GroupDisband(_)
        | Body::GroupList(_)
        | Body::GroupGet(_)
        | Body::GroupReceipts(_) => true,
        Body::Send(m) => m.to.kind == ConvKind::GROUP,
        // Mentions exist in groups only; `plan` refuses them elsewhere.
        Body::SendWithMentions(_) => true,
        Body::History(h) => h.conv.kind == ConvKind::GROUP,
        Body::Read(r) => r.conv.kind == ConvKind::GROUP,
        Body::Recall(r) => r.conv.kind == ConvKind::GROUP,
        _ => false,
    }
}

fn role(r: MemberRole) -> Role {
    Role(r.0)
}

/// GROUP_INFO for a group and (some of) its members.
pub fn info_frame(rid: u32, info: &GroupInfo, members: &[Member]) -> Frame<'static> {
    Frame::new(
        rid,
        Body::GroupInfo(WireGroupInfo {
            group: Cow::Owned(info.id.as_str().to_owned()),
            name: Cow::Owned(info.name.clone()),
            announcement: Cow::Owned(info.announcement.clone()),
            avatar: Cow::Owned(info.avatar.clone()),
            owner: Cow::Owned(info.owner.as_str().to_owned()),
            member_count: u64::from(info.member_count),
            members: members
                .iter()
                .map(|m| GroupMember {
                    user: Cow::Owned(m.user.as_str().to_owned()),
                    role: role(m.role),
                    muted_until: m.muted_until_ms,
                })
                .collect(),
        }),
    )
}

/// GROUP_LIST_PAGE: the groups after `after` (the list is in group id byte order), at most
/// `limit`, with a cursor when more follow.
pub fn list_page(
    rid: u32,
    groups: &[GroupInfo],
    after: Option<&GroupId>,
    limit: usize,
) -> Frame<'static> {
    let start = after.map_or(0, |a| {
        groups
            .iter()
            .position(|g| g.id.as_str().as_bytes() > a.as_str().as_bytes())
            .unwrap_or(groups.len())
    });
    let page: Vec<&GroupInfo> = groups[start..].iter().take(limit).collect();
    let more = start + page.len() < groups.len();
    let next = match (more, page.last()) {
        (true, Some(last)) => last.id.as_str().to_owned(),
        _ => String::new(),
    };
    Frame::new(
        rid,
        Body::GroupListPage(GroupListPage {
            next_cursor: Cow::Owned(next),
            groups: page
                .iter()
                .map(|g| GroupSummary {
                    group: Cow::Owned(g.id.as_str().to_owned()),
                    name: Cow::Owned(g.name.clone()),
                    members: u64::from(g.member_count),
                })
                .collect(),
        }),
    )
}

/// SEND_ACK of a group message.
pub fn send_ack(rid: u32, msg_id: MsgId, r: &GroupAppendResult) -> Frame<'static> {
    Frame::new(
        rid,
        Body::SendAck(SendAck {
            msg_id,
            conv_seq: r.conv_seq.0,
            inbox_seq: r.sender_inbox_seq.0,
            time: r.time_ms,
        }),
    )
}

/// One PUSH to route: to every session of `user` but `except`.
#[derive(Debug)]
pub struct GroupPush {
    pub user: UserId,
    pub except_session: Option<u64>,
    pub frame: Frame<'static>,
}

/// The PUSHes of a new group timeline entry: under write diffusion each recipient's with their
/// inbox seq; under read diffusion one frame with inbox seq 0 for every member. `except` is
/// the session that sent it (it has the SEND_ACK).
pub fn pushes(fanout: &GroupFanout, except: Option<(&UserId, u64)>) -> Vec<GroupPush> {
    let m = &fanout.message;
    let frame = |inbox_seq: Seq| {
        // A group is named alike for every member, so any viewer will do.
        Frame::new(0, Body::Push(wire_message(m, &m.sender, inbox_seq)))
    };
    let except_for = |u: &UserId| except.and_then(|(eu, sid)| (eu == u).then_some(sid));
    if fanout.diffusion == Diffusion::READ {
        let f = frame(Seq::ZERO);
        fanout
            .members
            .iter()
            .map(|u| GroupPush {
                user: u.clone(),
                except_session: except_for(u),
                frame: f.clone(),
            })
            .collect()
    } else {
        fanout
            .inboxes
            .iter()
            .map(|(u, seq)| GroupPush {
                user: u.clone(),
                except_session: except_for(u),
                frame: frame(*seq),
            })
            .collect()
    }
}

/// Adds the read-diffused group messages to a SYNC_PAGE whose inbox part is complete, as many
/// as fit `max_body`; the page's `more` then also covers the messages left.
pub fn merge_sync(
    page: &mut Frame<'static>,
    viewer: &UserId,
    part: &[StoredMessage],
    part_more: bool,
    max_body: u32,
) -> usize {
    let Body::SyncPage(SyncPage { more, messages, .. }) = &mut page.body else {
        return 0;
    };
    // The same estimate as the inbox part's (`session::message_size`); the inbox messages are
    // already wire messages, with the same fields.
    let mut used: usize = crate::session::PAGE_OVERHEAD
        + messages
            .iter()
            .map(|m| {
                80 + m.body.len()
                    + m.sender.len()
                    + m.sender_device.len()
                    + 2 * tern_storage::MAX_ID_LEN
            })
            .sum::<usize>();
    let mut added = 0;
    for m in part {
        used += crate::session::message_size(m);
        if used > max_body as usize && !messages.is_empty() {
            *more = true;
            return added;
        }
        messages.push(wire_message(m, viewer, Seq::ZERO));
        added += 1;
    }
    *more |= part_more;
    added
}

/// The positions a device reaches once it holds the first `taken` messages of a read-diffused
/// SYNC part (groups' or topics'): each conversation's last message among them. `positions` is
/// the whole part's; `id` picks a message's conversation id of the part's kind.
pub fn reached<K: Clone + PartialEq>(
    messages: &[StoredMessage],
    positions: &[(K, Seq)],
    taken: usize,
    id: impl Fn(&tern_storage::ConvKey) -> Option<&K>,
) -> Vec<(K, Seq)> {
    if taken >= messages.len() {
        return positions.to_vec();
    }
    let mut out: Vec<(K, Seq)> = Vec::new();
    for m in &messages[..taken] {
        let Some(k) = id(&m.conv) else {
            continue;
        };
        match out.last_mut() {
            Some((last, seq)) if last == k => *seq = m.seq,
            _ => out.push((k.clone(), m.seq)),
        }
    }
    out
}

/// GROUP_RECEIPTS_PAGE from storage's receipts.
pub fn receipts_page(rid: u32, group: &GroupId, r: &tern_storage::GroupReceipts) -> Frame<'static> {
    Frame::new(
        rid,
        Body::GroupReceiptsPage(GroupReceiptsPage {
            group: Cow::Owned(group.as_str().to_owned()),
            diffusion: WireDiffusion(r.diffusion.0),
            read_seq: r.my_read_seq.0,
            messages: r
                .messages
                .iter()
                .map(|m| ReadCount {
                    conv_seq: m.seq.0,
                    members: u64::from(m.members),
                    read: u64::from(m.read),
                    readers: m
                        .readers
                        .iter()
                        .map(|u| Cow::Owned(u.as_str().to_owned()))
                        .collect(),
                })
                .collect(),
        }),
    )
}

/// RECEIPT(READ) deliveries after `reader` read a group up to `read_seq`: to the senders of
/// the messages newly read (write diffusion; `senders` from storage) and to the reader's other
/// devices (SPEC.md, Groups, "Receipts").
pub fn read_receipts(
    s: &SessionInfo,
    group: &GroupId,
    senders: &[UserId],
    read_seq: Seq,
    now_ms: u64,
) -> Vec<GroupPush> {
    let frame = Frame::new(
        0,
        Body::Receipt(Receipt {
            conv: Conv::group(group.as_str().to_owned()),
            user: Cow::Owned(s.user.as_str().to_owned()),
            kind: ReceiptKind::READ,
            conv_seq: read_seq.0,
            time: now_ms,
        }),
    );
    let mut out: Vec<GroupPush> = senders
        .iter()
        .filter(|u| **u != s.user)
        .map(|u| GroupPush {
            user: u.clone(),
            except_session: None,
            frame: frame.clone(),
        })
        .collect();
    out.push(GroupPush {
        user: s.user.clone(),
        except_session: Some(s.session_id),
        frame,
    });
    out
}

/// The wire kind of a group event.
pub const GROUP_EVENT: WireKind = WireKind(0x41);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_protocol::{GroupCreate, GroupMembers, GroupRef, Send};
    use tern_storage::DeviceId;

    fn me() -> SessionInfo {
        SessionInfo {
            user: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            session_id: 7,
        }
    }

    fn planned(body: Body<'static>) -> Plan {
        plan(&me(), &Frame::new(3, body), &Limits::default())
    }

    fn code(p: Plan) -> ErrorCode {
        let Plan::Reply(f) = p else {
            panic!("expected an error, got {p:?}")
        };
        let Body::Error(e) = f.body else { panic!() };
        e.code
    }

    #[test]
    fn group_requests_are_validated() {
        assert_eq!(
            code(planned(Body::GroupMembers(GroupMembers {
                group: "g".into(),
                op: MemberOp(9),
                users: vec!["bob".into()],
                arg: 0,
            }))),
            ErrorCode::INVALID_ARGUMENT
        );
        assert_eq!(
            code(planned(Body::GroupMembers(GroupMembers {
                group: "g".into(),
                op: MemberOp::SET_ROLE,
                users: vec!["bob".into()],
                arg: 2,
            }))),
            ErrorCode::INVALID_ARGUMENT
        );
        assert_eq!(
            code(planned(Body::GroupCreate(GroupCreate {
                name: "n".repeat(MAX_NAME + 1).into(),
                members: vec![],
            }))),
            ErrorCode::INVALID_ARGUMENT
        );
        assert_eq!(
            code(planned(Body::GroupLeave(GroupRef { group: "".into() }))),
            ErrorCode::INVALID_ARGUMENT
        );
        let Plan::Group(p) = planned(Body::Send(Send {
            to: Conv::group("g1".to_owned()),
            msg_id: MsgId([1; 16]),
            kind: WireKind::TEXT,
            body: b"hi".to_vec().into(),
        })) else {
            panic!()
        };
        assert!(matches!(*p, GroupPlan::Send { .. }));
        assert_eq!(
            code(planned(Body::Send(Send {
                to: Conv::group("g1".to_owned()),
                msg_id: MsgId([1; 16]),
                kind: GROUP_EVENT,
                body: b"hi".to_vec().into(),
            }))),
            ErrorCode::INVALID_ARGUMENT
        );
    }

    #[test]
    fn list_pages_carry_a_cursor_when_more_follow() {
        let g = |id: &str| GroupInfo {
            id: GroupId::new(id).unwrap(),
            name: id.into(),
            announcement: String::new(),
            avatar: String::new(),
            owner: UserId::new("alice").unwrap(),
            settings: 0,
            diffusion: Diffusion::WRITE,
            member_count: 2,
            created_ms: 0,
            updated_ms: 0,
        };
        let all = vec![g("a"), g("b"), g("c")];
        let Body::GroupListPage(p) = list_page(1, &all, None, 2).body else {
            panic!()
        };
        assert_eq!((p.groups.len(), p.next_cursor.as_ref()), (2, "b"));
        let after = GroupId::new("b").unwrap();
        let Body::GroupListPage(p) = list_page(1, &all, Some(&after), 2).body else {
            panic!()
        };
        assert_eq!((p.groups.len(), p.next_cursor.as_ref()), (1, ""));
    }
}
